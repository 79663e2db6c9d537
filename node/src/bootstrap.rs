//! How a node comes up the first time: the identity it creates (`--init`)
//! or obtains with a join token (`--join`), the first cluster's metadata,
//! and the admission of a joining node.

use std::collections::BTreeMap;
use std::time::Duration;

use agentd_protocol::cluster::{ClusterRequest, ClusterResponse, JoinRequest, JoinResponse};
use agentd_protocol::command::Command;
use agentd_protocol::ids::{GroupId, NodeId, ShardId};
use agentd_protocol::limits::JOIN_FRAME_BYTES_MAX;
use agentd_protocol::tenancy::{parse_api_key, secret_sha256, ApiKeyRecord, Role, DEFAULT_WORKSPACE};
use agentd_protocol::{ApiError, CLUSTER_PROTOCOL_VERSION};
use agentd_raft::host::RaftHost;
use agentd_raft::types::NodeInfo;
use agentd_raft::{placement, propose};
use agentd_transport::dial::{host_of, resolve};
use agentd_transport::tls::{client_config, ClusterCa, NodeIdentity, ServerTrust};
use agentd_transport::wire::{read_frame, write_frame};
use anyhow::{anyhow, bail, Context, Result};
use openraft::async_runtime::watch::WatchReceiver;

use crate::credentials::ClusterCredentials;
use crate::identity::{DataDir, JoinToken, Stored};
use crate::options::{Bootstrap, NodeOptions};

/// How long a joining node keeps asking to be admitted.
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one call of a joining node to a member may take.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new cluster's first node may take to become its leader.
const FIRST_LEADERSHIP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a joining node waits between requests to be admitted.
const ADMISSION_RETRY_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) async fn create_identity(options: &NodeOptions, data: &DataDir, advertise: &str) -> Result<Stored> {
    let host_part = host_of(advertise);
    let stored = match &options.bootstrap {
        Bootstrap::Restart => bail!(
            "{} is not initialised: start the first node with --init, others with --join HOST:PORT --token TOKEN",
            data.root().display()
        ),
        Bootstrap::Init { credentials, .. } => {
            let credentials = match credentials {
                Some(credentials) => credentials.clone(),
                None => ClusterCredentials::generate()?,
            };
            let ca = credentials.ca()?;
            let identity = ca.issue_node(options.node_id, host_part)?;
            let secrets_key = crate::vault::SecretsKey::generate()?;
            let (token, admin_key) = (credentials.token().clone(), Some(credentials.admin_key().to_string()));
            Stored { identity, ca, token, secrets_key, admin_key }
        }
        Bootstrap::Join { seed, token } => {
            let token = JoinToken::parse(token)?;
            join_when_reachable(seed, &token, options.node_id, advertise).await?
        }
    };
    // A joining node records its seed until it is admitted, so that a
    // restart before then asks again instead of waiting as a non-member.
    let joining = match &options.bootstrap {
        Bootstrap::Join { seed, .. } => Some(seed.as_str()),
        _ => None,
    };
    data.save(options.node_id, &stored, joining)?;
    Ok(stored)
}

/// [`join`], retried while the seed cannot be reached (it may be starting
/// at the same time as this node, as the pods of a StatefulSet do) until
/// [`ADMISSION_TIMEOUT`]. A seed that answers and refuses is not asked again.
async fn join_when_reachable(seed: &str, token: &JoinToken, node_id: NodeId, advertise: &str) -> Result<Stored> {
    let deadline = tokio::time::Instant::now() + ADMISSION_TIMEOUT;
    loop {
        match join(seed, token, node_id, advertise).await {
            Err(JoinError::Unreachable(error)) if tokio::time::Instant::now() < deadline => {
                tracing::info!(%seed, %error, "the seed is not reachable yet; retrying");
                tokio::time::sleep(ADMISSION_RETRY_INTERVAL).await;
            }
            Err(JoinError::Unreachable(error)) => {
                return Err(error.context(format!("cannot join through {seed} within {ADMISSION_TIMEOUT:?}")))
            }
            Err(JoinError::Failed(error)) => return Err(error),
            Ok(stored) => return Ok(stored),
        }
    }
}

/// Why a join did not succeed: worth retrying or not.
enum JoinError {
    /// The seed did not answer: no address yet, or no QUIC handshake in time.
    Unreachable(anyhow::Error),
    /// The seed answered and refused, or its answer was wrong.
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for JoinError {
    fn from(error: E) -> Self {
        JoinError::Failed(error.into())
    }
}

/// Obtains this node's certificate from a cluster member. The server is
/// trusted by the CA fingerprint inside the token, the node by the secret.
async fn join(seed: &str, token: &JoinToken, node_id: NodeId, advertise: &str) -> Result<Stored, JoinError> {
    let config = client_config(ServerTrust::Fingerprint(token.ca_fingerprint.clone()), agentd_protocol::JOIN_ALPN)?;
    let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let addr = resolve(seed).await.map_err(|error| JoinError::Unreachable(error.into()))?;
    let connection = match tokio::time::timeout(
        JOIN_CALL_TIMEOUT,
        endpoint.connect(addr, agentd_transport::tls::SERVER_NAME)?,
    )
    .await
    {
        Err(_) => return Err(JoinError::Unreachable(anyhow!("timed out connecting to {seed}"))),
        Ok(Err(quinn::ConnectionError::TimedOut)) => {
            return Err(JoinError::Unreachable(anyhow!("timed out connecting to {seed}")))
        }
        Ok(connected) => connected.with_context(|| format!("cannot join through {seed}"))?,
    };
    let (mut send, mut recv) = connection.open_bi().await?;
    let request = JoinRequest {
        version: CLUSTER_PROTOCOL_VERSION,
        secret: token.secret.clone(),
        node_id,
        addr: advertise.to_string(),
    };
    write_frame(&mut send, &request, JOIN_FRAME_BYTES_MAX).await?;
    send.finish()?;
    let response: JoinResponse = read_frame(&mut recv, JOIN_FRAME_BYTES_MAX)
        .await?
        .ok_or_else(|| anyhow!("{seed} closed the join stream without answering"))?;
    connection.close(0u32.into(), b"joined");
    match response {
        JoinResponse::Accepted { ca_cert_pem, ca_key_pem, node_cert_pem, node_key_pem, secrets_key_hex } => {
            let ca = ClusterCa::from_pem(&ca_cert_pem, &ca_key_pem)?;
            if ca.fingerprint() != token.ca_fingerprint {
                return Err(anyhow!("{seed} sent a CA that does not match the join token").into());
            }
            let identity = NodeIdentity { ca_cert_pem, cert_pem: node_cert_pem, key_pem: node_key_pem };
            let secrets_key = crate::vault::SecretsKey::from_hex(&secrets_key_hex)?;
            Ok(Stored { identity, ca, token: token.clone(), secrets_key, admin_key: None })
        }
        JoinResponse::Error(error) => Err(anyhow!("{seed} refused to admit node {node_id}: {error}").into()),
    }
}

/// Creates the cluster: this node leads the metadata group, fixes the shard
/// count, places every shard on itself, and stores the admin key.
pub(crate) async fn init_cluster(
    host: &RaftHost,
    advertise: &str,
    shards: u32,
    replication_factor: u32,
    admin_key: Option<&str>,
    now_ms: u64,
) -> Result<()> {
    let metadata = host.open_group(GroupId::Metadata).await?;
    let me = host.node_id();
    metadata
        .raft
        .initialize(BTreeMap::from([(me, NodeInfo { addr: advertise.to_string() })]))
        .await
        .map_err(|error| anyhow!("cannot initialise the metadata group: {error}"))?;
    wait_for_leadership(&metadata.raft, me).await?;
    propose(&metadata, Command::InitCluster { shards, replication_factor }).await?;
    propose(&metadata, Command::AddNode { node_id: me, addr: advertise.to_string() }).await?;
    for shard in 0..shards {
        propose(&metadata, Command::SetPlacement { shard: ShardId(shard), replicas: vec![me] }).await?;
    }
    if let Some(admin_key) = admin_key {
        let (key_id, secret) =
            parse_api_key(admin_key).ok_or_else(|| anyhow!("the admin key made for this cluster is malformed"))?;
        let record = ApiKeyRecord {
            id: key_id,
            name: crate::identity::ADMIN_KEY_NAME.into(),
            workspace: DEFAULT_WORKSPACE.into(),
            role: Role::Admin,
            secret_sha256: secret_sha256(secret),
            created_at_ms: now_ms,
            revoked_at_ms: None,
        };
        propose(&metadata, Command::PutApiKey(record)).await?;
    }
    placement::reconcile(host).await?;
    Ok(())
}

async fn wait_for_leadership(raft: &agentd_raft::types::Raft, me: NodeId) -> Result<()> {
    let mut metrics = raft.metrics();
    tokio::time::timeout(FIRST_LEADERSHIP_TIMEOUT, async {
        while metrics.borrow_watched().current_leader != Some(me) {
            if metrics.changed().await.is_err() {
                break;
            }
        }
    })
    .await
    .map_err(|_| anyhow!("this node did not become leader of its new cluster within {FIRST_LEADERSHIP_TIMEOUT:?}"))
}

/// Asks the cluster to add this node until it agrees (the seed may be
/// electing a leader, or briefly unreachable). Only the metadata leader
/// admits; a member that is not it names it, and is asked no more.
pub(crate) async fn request_admission(host: &RaftHost, seed: &str, advertise: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + ADMISSION_TIMEOUT;
    let request = ClusterRequest::AddNode { node_id: host.node_id(), addr: advertise.to_string() };
    let mut contact = seed.to_string();
    loop {
        // Unless the contact names the leader, the next attempt goes through the seed again.
        let mut next = seed.to_string();
        let error = match host.peers().call(&contact, request.clone(), JOIN_CALL_TIMEOUT).await {
            Ok(ClusterResponse::NodeAdded) => {
                tracing::info!(%contact, "admitted to the cluster");
                return Ok(());
            }
            Ok(ClusterResponse::Error(ApiError::NotLeader { leader: Some((_, leader)) })) => {
                next = leader;
                format!("{contact} is not the metadata leader; {next} is")
            }
            Ok(ClusterResponse::Error(error)) if !error.is_retryable() => {
                bail!("{contact} refused to add this node: {error}")
            }
            Ok(other) => format!("{other:?}"),
            Err(error) => error.to_string(),
        };
        if tokio::time::Instant::now() > deadline {
            bail!("not admitted within {ADMISSION_TIMEOUT:?}: {error}");
        }
        tracing::info!(%contact, %error, "admission pending; retrying");
        contact = next;
        tokio::time::sleep(ADMISSION_RETRY_INTERVAL).await;
    }
}
