//! The fault plan: every fault of a run, derived from the run's seed before
//! it starts, so that a seed names one exact run.
//!
//! Separate random streams (workload, network, disk, process, clock,
//! sandbox) are derived from the seed, so that adding a fault of one kind
//! does not shift the draws of the others.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The kinds of fault a run may inject; `--faults` takes a comma list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Kill a node (its unsynced writes lost or partly kept, the last one
    /// torn) and restart it later.
    Crash,
    /// Kill a node and wipe its disk; the machine comes back empty under a
    /// new node id, and the old id is drained and removed (as an operator
    /// replaces a failed server).
    Wipe,
    /// Kill every node at once (a power cut), then restart them.
    PowerLoss,
    /// Cut two nodes apart, both ways.
    Partition,
    /// Drop one direction between two nodes only.
    OneWay,
    /// Cut one node off from everyone.
    Isolate,
    /// Message latency and reordering: a random per-run maximum latency.
    Delay,
    /// Drop a share of the messages on every link for a while.
    Loss,
    /// fsync errors and read corruption (checksummed) on the disks.
    Disk,
    /// Clock offsets and jumps on a node's wall clock.
    Clock,
    /// Ask a shard leader to hand leadership to another replica.
    LeaderTransfer,
    /// Make a node build a snapshot of a group now.
    Snapshot,
    /// Wake a session's orchestrator twice, on two nodes at once.
    DuplicateWake,
    /// Sandboxes crash in the middle of tool calls.
    SandboxCrash,
    /// Datagrams are sent twice, for a while.
    Duplicate,
    /// A shard loses one replica (a voter removed by a placement change)
    /// and gets it back later.
    Membership,
    /// A node's data disk falls under its free-space floor, then has room
    /// again: it must stop taking writes and leading, then resume.
    DiskFull,
}

impl FaultKind {
    pub const ALL: [FaultKind; 17] = [
        FaultKind::Crash,
        FaultKind::Wipe,
        FaultKind::PowerLoss,
        FaultKind::Partition,
        FaultKind::OneWay,
        FaultKind::Isolate,
        FaultKind::Delay,
        FaultKind::Loss,
        FaultKind::Disk,
        FaultKind::Clock,
        FaultKind::LeaderTransfer,
        FaultKind::Snapshot,
        FaultKind::DuplicateWake,
        FaultKind::SandboxCrash,
        FaultKind::Duplicate,
        FaultKind::Membership,
        FaultKind::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Wipe => "wipe",
            FaultKind::PowerLoss => "power-loss",
            FaultKind::Partition => "partition",
            FaultKind::OneWay => "one-way",
            FaultKind::Isolate => "isolate",
            FaultKind::Delay => "delay",
            FaultKind::Loss => "loss",
            FaultKind::Disk => "disk",
            FaultKind::Clock => "clock",
            FaultKind::LeaderTransfer => "leader-transfer",
            FaultKind::Snapshot => "snapshot",
            FaultKind::DuplicateWake => "duplicate-wake",
            FaultKind::SandboxCrash => "sandbox-crash",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Membership => "membership",
            FaultKind::DiskFull => "disk-full",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The kinds a run uses when `--faults` is not given: all of them.
    pub fn defaults() -> BTreeSet<FaultKind> {
        FaultKind::ALL.into_iter().collect()
    }
}

/// Parses `--faults`: `all`, `none`, `default`, or a comma list of names.
pub fn parse_faults(text: &str) -> Result<BTreeSet<FaultKind>, String> {
    match text.trim() {
        "all" => return Ok(FaultKind::ALL.into_iter().collect()),
        "none" | "" => return Ok(BTreeSet::new()),
        "default" => return Ok(FaultKind::defaults()),
        _ => {}
    }
    text.split(',')
        .map(|name| {
            FaultKind::parse(name.trim()).ok_or_else(|| {
                let known: Vec<&str> = FaultKind::ALL.iter().map(|kind| kind.name()).collect();
                format!("unknown fault {name:?}; known: all, none, default, {}", known.join(", "))
            })
        })
        .collect()
}

/// The seed of one named random stream of a run.
pub fn stream_seed(seed: u64, stream: &str) -> u64 {
    let mut hash = seed ^ 0xcbf2_9ce4_8422_2325;
    for byte in stream.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^ (hash >> 32)
}

/// A random stream of a run.
pub fn stream(seed: u64, name: &str) -> StdRng {
    StdRng::seed_from_u64(stream_seed(seed, name))
}

/// One scheduled action of the fault plan. Nodes are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Crash {
        node: u64,
        keep_unsynced: bool,
    },
    Wipe {
        node: u64,
    },
    Restart {
        node: u64,
    },
    PowerLoss,
    RestartAll,
    Partition {
        a: u64,
        b: u64,
    },
    OneWay {
        from: u64,
        to: u64,
    },
    Isolate {
        node: u64,
    },
    Heal,
    Delay {
        max: Duration,
    },
    Loss {
        per_mille: u32,
    },
    LossEnd,
    DiskFaults {
        node: u64,
        fsync_per_million: u32,
        read_per_million: u32,
    },
    DiskFaultsEnd {
        node: u64,
    },
    ClockJump {
        node: u64,
        delta_ms: i64,
    },
    LeaderTransfer {
        shard: u32,
    },
    Snapshot {
        node: u64,
    },
    DuplicateWake {
        node: u64,
    },
    Duplicate {
        per_mille: u32,
    },
    DuplicateEnd,
    /// The shard's replicas become every node but `without`.
    ShrinkShard {
        shard: u32,
        without: u64,
    },
    /// The shard is placed on its original replicas again.
    RestoreShard {
        shard: u32,
    },
    DiskFull {
        node: u64,
    },
    DiskRoom {
        node: u64,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Crash { node, keep_unsynced } => {
                let tail = if *keep_unsynced {
                    "a prefix of unsynced writes kept, the next torn"
                } else {
                    "unsynced writes lost"
                };
                write!(formatter, "crash n{node} ({tail})")
            }
            Fault::Wipe { node } => write!(formatter, "crash n{node} and wipe its disk"),
            Fault::Restart { node } => write!(formatter, "restart n{node}"),
            Fault::PowerLoss => write!(formatter, "power loss: every node crashes, unsynced writes lost"),
            Fault::RestartAll => write!(formatter, "power back: restart every node"),
            Fault::Partition { a, b } => write!(formatter, "partition n{a} <-/-> n{b}"),
            Fault::OneWay { from, to } => write!(formatter, "drop n{from} -> n{to} (one way)"),
            Fault::Isolate { node } => write!(formatter, "isolate n{node}"),
            Fault::Heal => write!(formatter, "heal every partition"),
            Fault::Delay { max } => write!(formatter, "message latency up to {}ms", max.as_millis()),
            Fault::Loss { per_mille } => write!(formatter, "drop {per_mille}/1000 of messages"),
            Fault::LossEnd => write!(formatter, "stop dropping messages"),
            Fault::DiskFaults { node, fsync_per_million, read_per_million } => write!(
                formatter,
                "disk faults on n{node}: fsync errors {fsync_per_million}/1e6, read corruption {read_per_million}/1e6"
            ),
            Fault::DiskFaultsEnd { node } => write!(formatter, "disk faults on n{node} end"),
            Fault::ClockJump { node, delta_ms } => write!(formatter, "clock of n{node} jumps {delta_ms:+}ms"),
            Fault::LeaderTransfer { shard } => write!(formatter, "transfer leadership of shard-{shard}"),
            Fault::Snapshot { node } => write!(formatter, "snapshot every group of n{node}"),
            Fault::DuplicateWake { node } => write!(formatter, "duplicate orchestrator wakes on n{node}"),
            Fault::Duplicate { per_mille } => write!(formatter, "send {per_mille}/1000 of datagrams twice"),
            Fault::DuplicateEnd => write!(formatter, "stop duplicating datagrams"),
            Fault::ShrinkShard { shard, without } => {
                write!(formatter, "remove n{without} from shard-{shard}'s replicas")
            }
            Fault::RestoreShard { shard } => write!(formatter, "restore shard-{shard}'s replicas"),
            Fault::DiskFull { node } => write!(formatter, "disk of n{node} under its free-space floor"),
            Fault::DiskRoom { node } => write!(formatter, "disk of n{node} has room again"),
        }
    }
}

/// The plan's shape: how many nodes and shards, and for how long faults run.
#[derive(Debug, Clone)]
pub struct PlanShape {
    pub nodes: u64,
    pub shards: u32,
    pub safety: Duration,
    pub kinds: BTreeSet<FaultKind>,
}

/// Every fault of the safety phase, by time since the start, in order.
/// Each fault that takes something away is undone later in the phase (by
/// its end at the latest); faults may overlap, so a majority of nodes can
/// be down or cut off at once.
pub fn plan(seed: u64, shape: &PlanShape) -> Vec<(Duration, Fault)> {
    let mut rng = stream(seed, "faults");
    let kinds: Vec<FaultKind> = shape.kinds.iter().copied().collect();
    let mut plan = Vec::new();
    if kinds.is_empty() || shape.nodes == 0 {
        return plan;
    }
    let end = shape.safety.as_millis() as u64;
    // Faults start after the cluster formed and the workload began.
    let mut at = 1_500 + rng.random_range(0..500);
    while at + 600 < end {
        let kind = kinds[rng.random_range(0..kinds.len())];
        let span = rng.random_range(300..2_000).min(end.saturating_sub(at + 100));
        let later = Duration::from_millis(at + span);
        let now = Duration::from_millis(at);
        plan.extend(faults_of(kind, &mut rng, shape, now, later));
        at += rng.random_range(200..1_200);
    }
    plan.sort_by_key(|(at, _)| *at);
    plan
}

/// A random node.
fn pick_node(rng: &mut StdRng, nodes: u64) -> u64 {
    rng.random_range(1..=nodes)
}

/// A random node other than `not`.
fn pick_other(rng: &mut StdRng, nodes: u64, not: u64) -> u64 {
    let pick = rng.random_range(1..nodes.max(2));
    if pick >= not {
        pick + 1
    } else {
        pick
    }
}

/// The fault of `kind` at `now` and, for a fault that takes something
/// away, what undoes it at `later`. The draws from `rng` are part of the
/// plan's definition: their order must not change, or seeds change meaning.
fn faults_of(
    kind: FaultKind,
    rng: &mut StdRng,
    shape: &PlanShape,
    now: Duration,
    later: Duration,
) -> Vec<(Duration, Fault)> {
    let mut faults = Vec::new();
    match kind {
        FaultKind::Crash => {
            let victim = pick_node(rng, shape.nodes);
            faults.push((now, Fault::Crash { node: victim, keep_unsynced: rng.random_bool(0.5) }));
            faults.push((later, Fault::Restart { node: victim }));
        }
        FaultKind::Wipe => {
            let victim = pick_node(rng, shape.nodes);
            faults.push((now, Fault::Wipe { node: victim }));
            faults.push((later, Fault::Restart { node: victim }));
        }
        FaultKind::PowerLoss => {
            faults.push((now, Fault::PowerLoss));
            faults.push((now + Duration::from_millis(200), Fault::RestartAll));
        }
        FaultKind::Partition if shape.nodes > 1 => {
            let a = pick_node(rng, shape.nodes);
            let b = pick_other(rng, shape.nodes, a);
            faults.push((now, Fault::Partition { a, b }));
            faults.push((later, Fault::Heal));
        }
        FaultKind::OneWay if shape.nodes > 1 => {
            let from = pick_node(rng, shape.nodes);
            let to = pick_other(rng, shape.nodes, from);
            faults.push((now, Fault::OneWay { from, to }));
            faults.push((later, Fault::Heal));
        }
        FaultKind::Isolate => {
            faults.push((now, Fault::Isolate { node: pick_node(rng, shape.nodes) }));
            faults.push((later, Fault::Heal));
        }
        FaultKind::Delay => {
            faults.push((now, Fault::Delay { max: Duration::from_millis(rng.random_range(5..80)) }));
            faults.push((later, Fault::Delay { max: Duration::from_millis(2) }));
        }
        FaultKind::Loss => {
            faults.push((now, Fault::Loss { per_mille: rng.random_range(20..200) }));
            faults.push((later, Fault::LossEnd));
        }
        FaultKind::Disk | FaultKind::DiskFull => faults.extend(disk_faults(kind, rng, shape, now, later)),
        FaultKind::Clock => {
            let delta_ms = rng.random_range(-120_000..120_000);
            faults.push((now, Fault::ClockJump { node: pick_node(rng, shape.nodes), delta_ms }));
        }
        FaultKind::LeaderTransfer => {
            faults.push((now, Fault::LeaderTransfer { shard: rng.random_range(0..shape.shards.max(1)) }));
        }
        FaultKind::Snapshot => faults.push((now, Fault::Snapshot { node: pick_node(rng, shape.nodes) })),
        FaultKind::DuplicateWake => faults.push((now, Fault::DuplicateWake { node: pick_node(rng, shape.nodes) })),
        FaultKind::Duplicate => {
            faults.push((now, Fault::Duplicate { per_mille: rng.random_range(20..300) }));
            faults.push((later, Fault::DuplicateEnd));
        }
        FaultKind::Membership if shape.nodes > 1 => {
            let shard = rng.random_range(0..shape.shards.max(1));
            faults.push((now, Fault::ShrinkShard { shard, without: pick_node(rng, shape.nodes) }));
            faults.push((later, Fault::RestoreShard { shard }));
        }
        // Sandbox crashes are a rate for the whole safety phase, not events.
        FaultKind::SandboxCrash | FaultKind::Partition | FaultKind::OneWay | FaultKind::Membership => {}
    }
    faults
}

/// The disk faults of `kind` (see [`faults_of`]), with the same draws.
fn disk_faults(
    kind: FaultKind,
    rng: &mut StdRng,
    shape: &PlanShape,
    now: Duration,
    later: Duration,
) -> [(Duration, Fault); 2] {
    let victim = pick_node(rng, shape.nodes);
    if kind == FaultKind::DiskFull {
        return [(now, Fault::DiskFull { node: victim }), (later, Fault::DiskRoom { node: victim })];
    }
    let fsync_per_million = rng.random_range(0..20_000);
    let read_per_million = rng.random_range(0..2_000);
    [
        (now, Fault::DiskFaults { node: victim, fsync_per_million, read_per_million }),
        (later, Fault::DiskFaultsEnd { node: victim }),
    ]
}
