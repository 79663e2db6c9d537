//! The cluster-wide list of a workspace's sessions over real nodes: every
//! session once, newest first, across every shard, while more are being
//! created; another workspace's sessions never; and the keys that decide
//! which workspace a call is in (a member key manages no keys; a revoked
//! key is refused).

use agentd_client::{Client, ClientError};
use agentd_protocol::ids::SessionId;
use agentd_protocol::resource::{CreatedWithin, Order, SessionQuery};
use agentd_protocol::tenancy::Role;
use agentd_protocol::ApiError;
use agentd_tests::Cluster;

fn query(after: Option<agentd_protocol::resource::CreationCursor>) -> SessionQuery {
    SessionQuery {
        agent: None,
        agent_version: None,
        statuses: vec![],
        include_archived: false,
        created: CreatedWithin::default(),
        order: Order::Descending,
        after,
        limit: 7,
    }
}

/// Pages through `client`'s sessions, creating one more after every page.
async fn page_through(client: &Client, creator: &Client) -> anyhow::Result<Vec<(u64, SessionId)>> {
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = client.list_sessions(query(after)).await?;
        anyhow::ensure!(page.sessions.len() <= 7, "a page of {} sessions", page.sessions.len());
        seen.extend(page.sessions.iter().map(|view| (view.info.created_at_ms, view.info.session_id)));
        creator.create_session().await?;
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(seen),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_once_per_workspace_across_shards() -> anyhow::Result<()> {
    let cluster = Cluster::start(agentd_tests::agentd_binary!(), 3, &["--shards", "8"]).await?;
    let admin = cluster.client()?;
    let (member_key, member_info) = admin.create_api_key("team-b".into(), "ci".into(), Role::Member).await?;
    let member = cluster.client_of(cluster.addrs())?.with_api_key(member_key.clone());

    let mut created = Vec::new();
    for _ in 0..30 {
        created.push(admin.create_session().await?.session_id);
    }
    let theirs = member.create_session().await?.session_id;

    let seen = page_through(&admin, &admin).await?;
    let mut ids: Vec<SessionId> = seen.iter().map(|(_, id)| *id).collect();
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "sessions come newest first");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), seen.len(), "a session came twice");
    for session in &created {
        assert!(ids.contains(session), "session {session} was never listed");
    }
    assert!(!ids.contains(&theirs), "another workspace's session was listed");
    let their_list = member.list_sessions(query(None)).await?;
    assert_eq!(their_list.sessions.iter().map(|view| view.info.session_id).collect::<Vec<_>>(), vec![theirs]);

    // Another workspace's session is not found; a member manages no keys.
    let hidden = member.get_session(created[0]).await;
    assert!(matches!(hidden, Err(ClientError::Api(ApiError::NotFound { .. }))), "{hidden:?}");
    let denied = member.create_api_key("team-b".into(), "more".into(), Role::Member).await;
    assert!(matches!(denied, Err(ClientError::Api(ApiError::PermissionDenied { .. }))), "{denied:?}");

    // A revoked key is refused on every node, as soon as the node has
    // applied the revocation (the metadata group's replication).
    admin.revoke_api_key(member_info.id).await?;
    for addr in cluster.addrs() {
        let client = cluster.client_of(vec![addr.clone()])?.with_api_key(member_key.clone());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match client.get_session(theirs).await {
                Err(ClientError::Api(ApiError::Unauthenticated { .. })) => break,
                other if std::time::Instant::now() > deadline => {
                    panic!("{addr} still accepts a revoked key: {other:?}")
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }
    Ok(())
}
