//! The composition root: [`Node::start`] opens the store, brings up the QUIC
//! endpoint and every Raft group, and returns a [`NodeHandle`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_actors::brain::{Brain, Orchestrators};
use agentd_actors::model::{ModelProvider, Models, RetryPolicy};
use agentd_protocol::ids::{GroupId, NodeId};
use agentd_protocol::sync::lock;
use agentd_raft::balance::BalanceState;
use agentd_raft::host::RaftHost;
use agentd_raft::identity::Identities;
use agentd_raft::peers::Peers;
use agentd_raft::placement;
use agentd_raft::store::Db;
use anyhow::{bail, Context, Result};
use openraft::async_runtime::watch::WatchReceiver;
use quinn::Runtime as _;
use tokio::task::JoinHandle;

use crate::bootstrap::{create_identity, init_cluster, request_admission};
use crate::clock::Clock;
use crate::hands::{reap_idle_sandboxes, HostProvisioner, LocalHands, Provisioner};
use crate::health;
use crate::identity::{DataDir, Stored};
use crate::leader::{drive_shards, LocalSessionLog, LogObserver};
use crate::options::{Bootstrap, NodeOptions};
use crate::serve::{self, Admission};
use crate::service::Service;

/// How often the placement reconciler runs.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);
/// How often the node looks for a Raft group that stopped on a fatal error.
const FAILURE_POLL: Duration = Duration::from_millis(100);
/// How often term changes and led groups are counted for the metrics.
const TERM_OBSERVE_INTERVAL: Duration = Duration::from_secs(1);

pub struct Node;

/// A running node. Dropping it does not stop the node; call [`NodeHandle::shutdown`].
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    node_id: NodeId,
    advertise: String,
    endpoint: quinn::Endpoint,
    host: RaftHost,
    service: Service,
    orchestrators: Orchestrators,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The seams between a node and the world. [`Node::start`] builds the
/// production ones (RocksDB in the data directory, a UDP socket, the host's
/// sandbox drivers, the system clock, OS randomness); the simulator passes
/// its own (an in-memory disk, a simulated socket, a fake sandbox, a
/// scripted model, simulated time and seeded randomness).
pub struct NodeIo {
    pub db: Db,
    /// The socket the node's QUIC endpoint runs on.
    pub socket: Arc<dyn quinn::AsyncUdpSocket>,
    /// The QUIC endpoint's configuration (its randomness seed, among others).
    pub endpoint_config: quinn::EndpointConfig,
    pub identity: Stored,
    /// The node runs its bootstrap (`Init` or `Join`) instead of
    /// restarting: its store holds no cluster state yet, or its join was
    /// cut off before the cluster admitted it.
    pub fresh: bool,
    pub provisioner: Arc<dyn Provisioner>,
    /// Model providers served by name before the configuration is consulted.
    pub models: Vec<(String, Arc<dyn ModelProvider>)>,
    pub clock: Clock,
    /// Seeds openraft's randomness (election timeouts).
    pub seed: u64,
    /// Where session sandboxes live.
    pub sandbox_dir: PathBuf,
    /// Told of every committed epoch claim and runtime append (the
    /// simulator's epoch checker).
    pub log_observer: Option<Arc<dyn LogObserver>>,
}

impl Node {
    /// Starts a node on this host: identity and RocksDB store in the data
    /// directory, a UDP socket on `options.listen`.
    pub async fn start(options: NodeOptions) -> Result<NodeHandle> {
        Node::start_with_models(options, Vec::new()).await
    }

    /// Like [`Node::start`], and serves each `(model, provider)` of `models`
    /// in process: an agent whose model string is exactly `model` calls
    /// `provider` (behind the node's retries and circuit breaker) instead of
    /// a provider resolved from `options.models`. A session runs on its
    /// shard's leader, so every node that may lead a shard needs the same
    /// providers (see `docs/embedding.md`).
    pub async fn start_with_models(
        options: NodeOptions,
        models: Vec<(String, Arc<dyn ModelProvider>)>,
    ) -> Result<NodeHandle> {
        options.validate()?;
        let data = DataDir::new(&options.data_dir);
        std::fs::create_dir_all(data.root()).with_context(|| format!("cannot create {}", data.root().display()))?;
        let advertise = options.advertise_addr();
        let fresh = !data.is_initialised();
        let stored = if fresh {
            create_identity(&options, &data, &advertise).await?
        } else {
            if !matches!(options.bootstrap, Bootstrap::Restart) {
                tracing::info!(dir = %data.root().display(), "data directory already initialised; restarting the existing member");
            }
            data.load(options.node_id)?
        };
        // A join is pending from its certificate to its admission. One cut
        // off in between (the process stopped, or the seed was down for
        // longer than admission waits) is asked again at this start, through
        // the seed given now if any, else the one recorded.
        let pending_admission = data.pending_admission()?;
        let mut options = options;
        if let (false, Some(recorded)) = (fresh, &pending_admission) {
            let seed = match &options.bootstrap {
                Bootstrap::Join { seed, .. } => seed.clone(),
                _ => recorded.clone(),
            };
            tracing::info!(%seed, "this node's join was not admitted yet; asking again");
            options.bootstrap = Bootstrap::Join { seed, token: String::new() };
        }
        let db = Db::open(&data.db_path()).map_err(|error| match error {
            agentd_raft::Error::Corrupt { what, message } => {
                anyhow::anyhow!(damaged_store(options.node_id, &what, &message))
            }
            other => {
                anyhow::Error::new(other).context(format!("cannot open the store in {}", data.db_path().display()))
            }
        })?;
        let socket = std::net::UdpSocket::bind(options.listen)
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        let socket = quinn::TokioRuntime
            .wrap_udp_socket(socket)
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        let sandbox_dir = options.sandbox_dir.clone().unwrap_or_else(|| data.root().join("sandboxes"));
        let io = NodeIo {
            db,
            socket,
            endpoint_config: quinn::EndpointConfig::default(),
            identity: stored,
            fresh: fresh || pending_admission.is_some(),
            provisioner: Arc::new(HostProvisioner::new(sandbox_dir.clone())),
            models,
            clock: Clock::System,
            seed: os_seed(),
            sandbox_dir,
            log_observer: None,
        };
        let announce_init = fresh && matches!(options.bootstrap, Bootstrap::Init { .. });
        let handle = Node::start_with(options, io).await?;
        if pending_admission.is_some() {
            data.mark_admitted()?;
        }
        if announce_init {
            eprintln!(
                "agentd: cluster initialised; join token in {}, admin API key in {}",
                data.token_path().display(),
                data.admin_key_path().display()
            );
        }
        Ok(handle)
    }

    /// Starts a node over the given seams (see [`NodeIo`]).
    pub async fn start_with(options: NodeOptions, io: NodeIo) -> Result<NodeHandle> {
        options.validate()?;
        let advertise = options.advertise_addr();
        let NodeIo {
            db,
            socket,
            endpoint_config,
            identity: stored,
            fresh,
            provisioner,
            models,
            clock,
            seed,
            sandbox_dir,
            log_observer,
        } = io;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(stored.identity.server_config()?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .with_context(|| format!("cannot listen on {}", options.listen))?;
        // This process of the node: a number drawn at each start (from the
        // node's seed, so the simulator's runs repeat).
        let identities = Arc::new(Identities::new(options.node_id, seed, advertise.clone()));
        let peers = Peers::new(identities, endpoint.clone(), stored.identity.cluster_client_config()?);
        let host =
            RaftHost::new(options.node_id, db, peers, options.raft.openraft_config()?, seed, options.min_free_disk);
        // A node restarted on a full disk opens its groups taking no writes.
        host.check_disk_space(&mut Default::default());
        // Every node replicates the metadata group (as voter or learner).
        host.open_group(GroupId::Metadata).await?;
        let admin_key = stored.admin_key.clone();
        let now_ms = clock.now_ms();
        let secrets_key = Arc::new(stored.secrets_key);
        let service =
            Service::new(host.clone(), advertise.clone(), secrets_key.clone(), clock, options.requests_in_flight_max);
        let admission = Arc::new(Admission { ca: stored.ca, secret: stored.token.secret.clone(), secrets_key });

        // A new cluster is fully initialised before this node serves anyone:
        // a node admitted half-way through would have its shard placement
        // overwritten by the initial one (the simulator found this race).
        if fresh {
            if let Bootstrap::Init { shards, replication_factor, .. } = &options.bootstrap {
                init_cluster(&host, &advertise, *shards, *replication_factor, admin_key.as_deref(), now_ms).await?;
            }
        }
        let mut tasks =
            vec![tokio::spawn(serve::serve(endpoint.clone(), service.clone(), admission, options.client_idle))];
        if fresh {
            match &options.bootstrap {
                Bootstrap::Init { .. } => {}
                Bootstrap::Join { seed, .. } => request_admission(&host, seed, &advertise).await?,
                Bootstrap::Restart => bail!("a restart needs an initialised store"),
            }
        }
        tasks.push(tokio::spawn(reconcile_loop(host.clone(), options.raft.balance_leaders)));
        let parts = BrainParts { sandbox_dir, provisioner, models, log_observer };
        let orchestrators = start_brain(&options, &service, parts, &mut tasks);
        tasks.push(tokio::spawn(observe_terms(host.clone())));
        tasks.push(tokio::spawn(service.clone().watch_clock_skew()));
        tasks.push(tokio::spawn(host.clone().watch_disk_space()));
        tracing::info!(node = options.node_id, listen = %options.listen, "node started");
        Ok(NodeHandle {
            inner: Arc::new(NodeInner {
                node_id: options.node_id,
                advertise,
                endpoint,
                host,
                service,
                orchestrators,
                tasks: Mutex::new(tasks),
            }),
        })
    }
}

/// Why a node with a damaged store refuses to start, and the repair. It may
/// have acknowledged and voted on entries it no longer holds, so it must
/// not come back as the same voter.
fn damaged_store(node_id: u64, what: &str, message: &str) -> String {
    format!(
        "the {what} is damaged ({message}); node {node_id} refuses to start, because it may have acknowledged \
         Raft entries it no longer holds, and rejoining as the same voter could lose committed events. \
         Repair: keep this data directory for inspection, start this machine with an empty --data-dir and a new \
         --node-id joining the cluster (--join ADDR --token TOKEN), and never start node {node_id} again. The other \
         replicas keep serving meanwhile; node {node_id} stays a member until it is removed (removal is an operator \
         command still to come; until then the cluster counts it as a down voter)."
    )
}

/// The seams the brain and the hands are built from.
struct BrainParts {
    sandbox_dir: PathBuf,
    provisioner: Arc<dyn Provisioner>,
    models: Vec<(String, Arc<dyn ModelProvider>)>,
    log_observer: Option<Arc<dyn LogObserver>>,
}

/// The agent loop of this node: models, hands, the session log, one
/// orchestrator per session with work, and the watchers of led shards.
fn start_brain(
    options: &NodeOptions,
    service: &Service,
    parts: BrainParts,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Orchestrators {
    let mut models = Models::new(options.models.clone(), RetryPolicy::default(), options.node_id);
    for (model, provider) in parts.models {
        models = models.with_provider(&model, provider);
    }
    let hands = Arc::new(LocalHands::new(parts.sandbox_dir, service.clone(), parts.provisioner));
    tasks.push(tokio::spawn(reap_idle_sandboxes(hands.clone(), options.sandbox_idle)));
    let log = Arc::new(LocalSessionLog::new(service.clone()).with_observer(parts.log_observer));
    // MCP servers are called by the node itself, with the HTTP client the
    // model providers use (its TLS set up without a process-wide provider).
    let mcp = crate::mcp::NodeMcp::new(service.clone(), agentd_actors::model::HttpClient::new(None));
    let orchestrators = Orchestrators::new(Arc::new(Brain::new(log, hands, models).with_mcp(mcp)));
    let host = service.host().clone();
    tasks.push(tokio::spawn(drive_shards(host, orchestrators.clone(), service.sessions().clone())));
    orchestrators
}

/// Production's seed for openraft's randomness (the simulator passes one
/// drawn from the run's seed to `Node::start_with`).
#[allow(clippy::disallowed_methods, reason = "Node::start is production's entry point; the simulator seeds start_with")]
fn os_seed() -> u64 {
    rand::random()
}

impl NodeHandle {
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn advertise_addr(&self) -> &str {
        &self.inner.advertise
    }

    pub fn local_addr(&self) -> Result<std::net::SocketAddr> {
        Ok(self.inner.endpoint.local_addr()?)
    }

    /// Every client operation of this node, as one typed API.
    pub fn service(&self) -> &Service {
        &self.inner.service
    }

    pub fn host(&self) -> &RaftHost {
        &self.inner.host
    }

    pub fn orchestrators(&self) -> &Orchestrators {
        &self.inner.orchestrators
    }

    /// Resolves when a Raft group of this node stopped on a fatal error
    /// (a failed fsync or an unreadable log): the node cannot serve that
    /// group any more and must be restarted. Says which group and why. Also
    /// when the cluster refuses this process as a copy of its node (see
    /// `agentd_raft::identity`): it must stop.
    pub async fn failed(&self) -> String {
        loop {
            if let Some(failure) = self.failure() {
                return failure;
            }
            tokio::time::sleep(FAILURE_POLL).await;
        }
    }

    /// Why this node has failed, if it has (see [`NodeHandle::failed`]).
    fn failure(&self) -> Option<String> {
        if let Some(refused) = self.inner.host.peers().identities().refused_for_good() {
            return Some(refused);
        }
        self.inner.host.groups().iter().find_map(|group| match &group.raft.metrics().borrow_watched().running_state {
            Err(fatal) => Some(format!("{} stopped: {fatal}", group.group)),
            Ok(()) => None,
        })
    }

    /// Whether this node is ready to take requests, and if not, why (see
    /// [`crate::health`]). Reads only this node's own state.
    pub fn readiness(&self) -> health::Readiness {
        let node_id = self.inner.node_id;
        let groups = self.inner.host.groups();
        let membership = match groups.iter().find(|group| group.group == GroupId::Metadata) {
            None => health::Membership::Unknown,
            Some(metadata) => match (metadata.state.is_removed(node_id), metadata.state.nodes()) {
                (Ok(true), _) => health::Membership::Removed,
                (Ok(false), Ok(nodes)) if nodes.iter().any(|(node, _)| *node == node_id) => health::Membership::Member,
                (Ok(false), Ok(_)) => health::Membership::NotListed,
                (Err(_), _) | (_, Err(_)) => health::Membership::Unknown,
            },
        };
        let leaderless = groups
            .iter()
            .filter(|group| group.raft.metrics().borrow_watched().current_leader.is_none())
            .map(|group| group.group)
            .collect();
        health::readiness(&health::ReadinessFacts { node_id, failure: self.failure(), membership, leaderless })
    }

    /// Stops accepting calls, stops every group and closes connections.
    pub async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for task in tasks {
            task.abort();
        }
        self.inner.orchestrators.stop_all();
        self.inner.service.sessions().stop_all();
        self.inner.host.shutdown().await;
        self.inner.endpoint.close(0u32.into(), b"node shutting down");
        self.inner.endpoint.wait_idle().await;
    }
}

/// Moves replicas towards their placement and, with `balance_leaders`,
/// leaderships towards an even spread, every [`RECONCILE_INTERVAL`].
async fn reconcile_loop(host: RaftHost, balance_leaders: bool) {
    let mut balance = BalanceState::default();
    loop {
        if let Err(error) = placement::reconcile(&host).await {
            tracing::warn!(%error, "placement pass failed");
        }
        if balance_leaders {
            host.balance_leaders(&mut balance);
        }
        tokio::time::sleep(RECONCILE_INTERVAL).await;
    }
}

/// Counts term changes (elections) and tracks how many groups this node leads.
async fn observe_terms(host: RaftHost) {
    let mut terms: BTreeMap<GroupId, u64> = BTreeMap::new();
    loop {
        let mut leading = 0u64;
        for group in host.groups() {
            let metrics = group.raft.metrics().borrow_watched().clone();
            if metrics.current_leader == Some(host.node_id()) {
                leading += 1;
            }
            let previous = terms.insert(group.group, metrics.current_term);
            if previous.is_some_and(|previous| previous != metrics.current_term) {
                metrics::counter!("agentd_raft_term_changes_total").increment(1);
            }
        }
        metrics::gauge!("agentd_groups_led").set(leading as f64);
        metrics::gauge!("agentd_groups_hosted").set(terms.len() as f64);
        tokio::time::sleep(TERM_OBSERVE_INTERVAL).await;
    }
}
