//! What lives outside the simulated hosts: their disks, the sandbox world,
//! identities, clocks, and the record of the run (history and trace); and
//! the stand-ins for the world around a cluster: a simulated UDP socket for
//! quinn (`net.rs`), a fake sandbox with an effect ledger (`sandbox.rs`) and a
//! scripted model (`model.rs`).

pub mod model;
pub mod net;
pub mod sandbox;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentd_node::identity::{JoinToken, Stored, ADMIN_KEY_NAME};
use agentd_node::leader::LogObserver;
use agentd_node::vault::SecretsKey;
use agentd_node::NodeHandle;
use agentd_protocol::ids::{GroupId, SessionId};
use agentd_protocol::sync::lock;
use agentd_protocol::tenancy::{new_api_key, Role, DEFAULT_WORKSPACE};
use agentd_raft::store::memory_disk::DiskFaults;
use agentd_raft::store::MemoryDisk;
use agentd_transport::tls::{ClusterCa, NodeIdentity};
use anyhow::Result;
use rand::Rng;
use tokio::sync::mpsc;

use crate::checkers::{Acked, EpochObservation, Leadership, Terminated};
use crate::faults::{stream, stream_seed};
use crate::harness::SimOptions;
use sandbox::{EffectLedger, SandboxBehaviour};

/// Asks a running node to do something from inside its host.
pub(crate) enum HostCommand {
    TransferLeader {
        shard: u32,
    },
    /// Propose a new placement of a shard (only the metadata leader's proposal counts).
    Place {
        shard: u32,
        replicas: Vec<u64>,
    },
    Snapshot,
    DuplicateWake,
    /// As an operator replacing a dead machine does: drain node `old` (its
    /// replicas go to live nodes, the machine's new id among them), then
    /// remove it. Only the metadata leader's host acts; it records the
    /// removal in the world once it is done.
    Replace {
        old: u64,
    },
}

/// Everything a run records, in the order it happened.
#[derive(Default)]
pub(crate) struct Record {
    pub trace: Vec<String>,
    pub acked: Vec<Acked>,
    /// Sessions a client terminated, at the acknowledged sequence number.
    pub terminated: Vec<Terminated>,
    pub leaderships: BTreeSet<Leadership>,
    pub epochs: Vec<EpochObservation>,
    pub clients_done: usize,
    pub agent_sessions: Vec<SessionId>,
    pub agent_sessions_finished: BTreeSet<SessionId>,
}

pub(crate) struct World {
    pub options: SimOptions,
    pub disks: BTreeMap<u64, Arc<MemoryDisk>>,
    pub ledger: Arc<EffectLedger>,
    pub clocks: BTreeMap<u64, Arc<AtomicI64>>,
    /// Datagrams sent twice, per million (the `duplicate` fault).
    pub duplicate_per_million: Arc<std::sync::atomic::AtomicU32>,
    /// Every shard's replicas once the cluster formed (what `membership` restores).
    pub placements: Mutex<BTreeMap<u32, Vec<u64>>>,
    pub secret: String,
    ca_cert_pem: String,
    ca_key_pem: String,
    /// Certificates by node id (a machine gets a new id after a wipe).
    identities: Mutex<BTreeMap<u64, NodeIdentity>>,
    /// The node id each machine (`n1`..`nN`, the hosts the fault plan
    /// names) runs now: its own number, until its disk is wiped and it
    /// comes back under a new id.
    node_ids: Mutex<BTreeMap<u64, u64>>,
    /// Node ids drained and removed after their machine was wiped.
    pub removed: Mutex<BTreeSet<u64>>,
    token: JoinToken,
    secrets_key_hex: String,
    /// The cluster's admin key (made when n1 creates it), which the workload's clients use.
    pub admin_key: String,
    pub handles: Mutex<BTreeMap<u64, NodeHandle>>,
    pub commands: Mutex<BTreeMap<u64, mpsc::UnboundedSender<HostCommand>>>,
    pub initialised: Mutex<BTreeSet<u64>>,
    pub boots: Mutex<BTreeMap<u64, u64>>,
    record: Mutex<Record>,
}

impl World {
    pub(crate) fn new(options: SimOptions) -> Result<World> {
        let seed = options.seed;
        let nodes: Vec<u64> = (1..=options.nodes).collect();
        let disk_faults = DiskFaults::default();
        let disks = nodes
            .iter()
            .map(|node| (*node, MemoryDisk::new(stream_seed(seed, &format!("disk-n{node}")), disk_faults.clone())))
            .collect();
        let behaviour = SandboxBehaviour {
            crashes_per_million: if options.faults.contains(&crate::faults::FaultKind::SandboxCrash) {
                50_000
            } else {
                0
            },
            reexecute_repeated_keys: options.bug == Some(crate::harness::Bug::ReexecuteRepeatedKey),
            skip_redaction: options.bug == Some(crate::harness::Bug::SkipRedaction),
        };
        let ledger = EffectLedger::new(stream_seed(seed, "sandbox"), behaviour);
        let clocks = nodes.iter().map(|node| (*node, Arc::new(AtomicI64::new(0)))).collect();
        // Certificates and keys carry OS randomness: they never reach the
        // trace, and every size that could shape a packet is fixed.
        let ca = ClusterCa::generate()?;
        let mut identities = BTreeMap::new();
        for node in &nodes {
            identities.insert(*node, ca.issue_node(*node, &net::node_ip(*node).to_string())?);
        }
        let token = JoinToken::generate(&ca);
        let secrets_key_hex = SecretsKey::generate()?.to_hex();
        let mut key_rng = stream(seed, "admin-key");
        let (admin_key, _) = new_api_key(
            key_rng.random(),
            key_rng.random(),
            ADMIN_KEY_NAME.into(),
            DEFAULT_WORKSPACE.into(),
            Role::Admin,
            0,
        );
        Ok(World {
            secret: format!("sim-secret-{:016x}", stream_seed(seed, "secret")),
            ca_cert_pem: ca.cert_pem(),
            ca_key_pem: ca.key_pem(),
            options,
            disks,
            ledger,
            clocks,
            duplicate_per_million: Arc::new(std::sync::atomic::AtomicU32::new(0)),
            placements: Mutex::new(BTreeMap::new()),
            identities: Mutex::new(identities),
            node_ids: Mutex::new(nodes.iter().map(|node| (*node, *node)).collect()),
            removed: Mutex::new(BTreeSet::new()),
            token,
            secrets_key_hex,
            admin_key,
            handles: Mutex::new(BTreeMap::new()),
            commands: Mutex::new(BTreeMap::new()),
            initialised: Mutex::new(BTreeSet::new()),
            boots: Mutex::new(BTreeMap::new()),
            record: Mutex::new(Record::default()),
        })
    }

    pub(crate) fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The identity of the node `machine` runs now, as its data directory
    /// would hold it (a new id's certificate is issued on first use).
    pub(crate) fn stored(&self, machine: u64) -> Result<Stored> {
        let node = self.node_id(machine);
        let ca = ClusterCa::from_pem(&self.ca_cert_pem, &self.ca_key_pem)?;
        let identity = {
            let mut identities = lock(&self.identities);
            match identities.get(&node) {
                Some(identity) => identity.clone(),
                None => {
                    let identity = ca.issue_node(node, &net::node_ip(machine).to_string())?;
                    identities.insert(node, identity.clone());
                    identity
                }
            }
        };
        Ok(Stored {
            identity,
            ca,
            token: self.token.clone(),
            secrets_key: SecretsKey::from_hex(&self.secrets_key_hex)?,
            admin_key: (node == 1).then(|| self.admin_key.clone()),
        })
    }

    /// The node id `machine` runs now.
    pub(crate) fn node_id(&self, machine: u64) -> u64 {
        lock(&self.node_ids).get(&machine).copied().unwrap_or(machine)
    }

    /// Gives `machine` a new node id (the next unused one), as a wiped
    /// machine comes back; answers the old id and the new.
    pub(crate) fn renumber(&self, machine: u64) -> (u64, u64) {
        let mut node_ids = lock(&self.node_ids);
        let next = node_ids.values().copied().max().unwrap_or(0).max(self.options.nodes) + 1;
        let next = next.max(lock(&self.removed).iter().copied().max().unwrap_or(0) + 1);
        let old = node_ids.insert(machine, next).unwrap_or(machine);
        (old, next)
    }

    pub(crate) fn record(&self) -> MutexGuard<'_, Record> {
        lock(&self.record)
    }

    /// The trace so far, unless its lock is held (as it may be by a
    /// panicking thread).
    pub(crate) fn try_trace(&self) -> Option<Vec<String>> {
        match self.record.try_lock() {
            Ok(record) => Some(record.trace.clone()),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner().trace.clone()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Adds a line to the trace, stamped with simulated time.
    pub(crate) fn trace_at(&self, at: Duration, line: impl AsRef<str>) {
        let line = format!("{:>9.3}s {}", at.as_secs_f64(), line.as_ref());
        tracing::debug!(target: "agentd::sim", "{line}");
        self.record().trace.push(line);
    }

    /// Adds a line to the trace from inside a simulated host.
    pub(crate) fn trace(&self, line: impl AsRef<str>) {
        self.trace_at(turmoil::sim_elapsed().unwrap_or_default(), line);
    }

    pub(crate) fn placements(&self) -> MutexGuard<'_, BTreeMap<u32, Vec<u64>>> {
        lock(&self.placements)
    }

    /// Duplication for a socket named `name` (its own seeded generator).
    pub(crate) fn duplication(&self, name: &str) -> net::Duplication {
        net::Duplication {
            per_million: self.duplicate_per_million.clone(),
            seed: stream_seed(self.options.seed, &format!("duplicate-{name}")),
        }
    }

    pub(crate) fn handles(&self) -> MutexGuard<'_, BTreeMap<u64, NodeHandle>> {
        lock(&self.handles)
    }

    pub(crate) fn commands(&self) -> MutexGuard<'_, BTreeMap<u64, mpsc::UnboundedSender<HostCommand>>> {
        lock(&self.commands)
    }

    pub(crate) fn initialised(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        lock(&self.initialised)
    }

    /// Counts a boot of `node`; returns its number (0 for the first).
    pub(crate) fn boot(&self, node: u64) -> u64 {
        let mut boots = lock(&self.boots);
        let count = boots.entry(node).or_insert(0);
        *count += 1;
        *count - 1
    }

    pub(crate) fn leader_seen(&self, group: GroupId, term: u64, machine: u64, node: u64) {
        let leadership = Leadership { group: group.to_string(), term, node };
        let new = self.record().leaderships.insert(leadership);
        if new {
            self.trace(format!("{} leads {group} in term {term}", self.describe(machine, node)));
        }
    }

    /// How the trace names `machine` running `node`: `n3`, or `n3 (node 4)`
    /// once the machine came back under a new id.
    pub(crate) fn describe(&self, machine: u64, node: u64) -> String {
        if machine == node {
            format!("n{machine}")
        } else {
            format!("n{machine} (node {node})")
        }
    }

    /// Tells the node's host to do `command`; false if the node is down.
    pub(crate) fn send(&self, node: u64, command: HostCommand) -> bool {
        self.commands().get(&node).is_some_and(|sender| sender.send(command).is_ok())
    }
}

/// Records the brain's committed epoch claims and appends.
pub(crate) struct EpochRecorder {
    pub world: Arc<World>,
    pub node: u64,
}

impl LogObserver for EpochRecorder {
    fn claimed(&self, session_id: SessionId, epoch: u64, after_seq: u64) {
        self.world.record().epochs.push(EpochObservation::Claimed { session_id, epoch, after_seq });
        self.world.trace(format!("n{} claimed epoch {epoch} of {session_id}", self.node));
    }

    fn appended(&self, session_id: SessionId, epoch: u64, seq: u64) {
        self.world.record().epochs.push(EpochObservation::Appended { session_id, epoch, seq });
    }
}
