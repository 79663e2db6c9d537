//! Every bound in agentd, in one place. Units are last in names.

/// Largest frame a client may send or receive (a page of events fits easily).
pub const CLIENT_FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest frame between nodes. Snapshots travel in one frame, so this also
/// bounds the size of one shard's snapshot.
pub const CLUSTER_FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Largest encoded event payload accepted from a client.
pub const EVENT_PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// Most events returned by one read.
pub const EVENTS_PER_PAGE_MAX: u32 = 1000;
/// Default page size for reads that do not name one.
pub const EVENTS_PER_PAGE_DEFAULT: u32 = 100;
/// Most shards a cluster can be created with.
pub const SHARDS_MAX: u32 = 4096;
/// Default number of shards chosen at cluster init.
pub const SHARDS_DEFAULT: u32 = 64;
/// Default replicas per shard.
pub const REPLICATION_FACTOR_DEFAULT: u32 = 3;
/// Most voters in the metadata group; further nodes join it as learners.
pub const METADATA_VOTERS_MAX: usize = 5;
/// Most new replicas a node catches up at once for the groups it leads
/// (replica moves, joins, drains, rebalances). Further moves wait for one
/// of these to finish, so that a drain of a node with many replicas does
/// not saturate the leaders' disks and links (and with them the heartbeats
/// that keep every group's leadership). With leaders spread evenly, a
/// cluster of N nodes runs at most N times this many catch-ups at once.
pub const REPLICA_CATCH_UPS_PER_NODE_MAX: usize = 4;
/// A new replica counts as caught up, and joins the voters, once its log is
/// within this many entries of the leader's.
pub const REPLICA_CATCH_UP_LAG_MAX: u64 = 64;
/// Longest text field (names, messages) in a request.
pub const TEXT_BYTES_MAX: usize = 256 * 1024;
/// Most entries the log store writes in one RocksDB batch (group commit).
pub const WRITE_BATCH_ENTRIES_MAX: usize = 4096;
/// Most appends waiting for the log writer before callers are slowed down.
pub const WRITE_QUEUE_DEPTH_MAX: usize = 8192;
/// Most concurrent streams one client connection may open.
pub const CLIENT_STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Events buffered per shard for live followers before a slow follower is
/// told to re-read from the store.
pub const FOLLOW_BUFFER_EVENTS_MAX: usize = 4096;
/// Events per batch when a follower catches up from the store.
pub const FOLLOW_PAGE_EVENTS: u32 = 256;
/// Largest frame of the join exchange (a certificate request and its answer).
pub const JOIN_FRAME_BYTES_MAX: usize = 64 * 1024;
/// How long a peer or client may take to send the request frame of a stream.
pub const REQUEST_READ_TIMEOUT_MS: u64 = 30_000;
/// Most Raft RPCs carried in one batch to a peer.
pub const RAFT_BATCH_CALLS_MAX: usize = 512;
/// Batches in flight to one peer at a time; further RPCs wait and join the
/// next batch, which is what makes batches form under load.
pub const RAFT_BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Raft RPCs queued for one peer before senders are slowed down.
pub const RAFT_QUEUE_DEPTH_MAX: usize = 8192;
/// Longest name of an agent, environment or model.
pub const NAME_BYTES_MAX: usize = 256;
/// Most model calls an agent may make in one turn.
pub const MODEL_CALLS_PER_TURN_MAX: u32 = 1000;
/// Model calls per turn when the agent does not say.
pub const MODEL_CALLS_PER_TURN_DEFAULT: u32 = 50;
/// Longest wall-clock time of one tool call.
pub const TOOL_TIMEOUT_MS_MAX: u64 = 30 * 60 * 1000;
/// Tool time limit when the environment does not say.
pub const TOOL_TIMEOUT_MS_DEFAULT: u64 = 120_000;
/// Bounds of the resource limits an environment may set for its sandboxes.
pub const SANDBOX_MEMORY_MIB_MIN: u64 = 64;
pub const SANDBOX_MEMORY_MIB_MAX: u64 = 256 * 1024;
pub const SANDBOX_PROCESSES_MIN: u64 = 8;
pub const SANDBOX_PROCESSES_MAX: u64 = 65_536;
pub const SANDBOX_CPU_MILLICORES_MIN: u64 = 10;
pub const SANDBOX_CPU_MILLICORES_MAX: u64 = 1_024_000;
/// Entries of one environment's egress allowlist.
pub const ALLOWED_HOSTS_MAX: usize = 256;
/// The same tool with the same input this many turns in a row stops the agent.
pub const STUCK_REPEATS_MAX: usize = 3;
/// Events a session actor keeps in memory to serve reads.
pub const SESSION_TAIL_EVENTS_MAX: usize = 256;
/// Largest frame between a node and a sandbox agent (`write` carries a whole
/// file; outputs are capped far lower by the sandbox's output limit).
pub const HANDS_FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most concurrent streams one connection to a sandbox agent may open (calls
/// run one at a time; the rest wait).
pub const HANDS_STREAMS_PER_CONNECTION_MAX: u32 = 64;
/// Longest a sandbox may take to boot and answer its first ping.
pub const SANDBOX_BOOT_TIMEOUT_MS: u64 = 60_000;
/// Size of a microVM session's workspace disk (a sparse file: it takes only
/// what is written), and so the most its workspace can hold.
pub const MICROVM_WORKSPACE_DISK_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Longest workspace name.
pub const WORKSPACE_NAME_BYTES_MAX: usize = 64;
/// Longest name of an API key.
pub const API_KEY_NAME_BYTES_MAX: usize = 128;
/// Client-chosen labels of one object: pairs, and the bytes of a key and of a value.
pub const METADATA_PAIRS_MAX: usize = 16;
pub const METADATA_KEY_BYTES_MAX: usize = 64;
pub const METADATA_VALUE_BYTES_MAX: usize = 512;
/// Longest description of an agent or environment, and title of a session.
pub const DESCRIPTION_BYTES_MAX: usize = 2048;
/// Credentials one vault holds, and vaults one session uses.
pub const VAULT_CREDENTIALS_MAX: usize = 64;
pub const SESSION_VAULTS_MAX: usize = 16;
/// Objects one list request returns, and how many when it does not say.
pub const LIST_LIMIT_MAX: u32 = 100;
pub const LIST_LIMIT_DEFAULT: u32 = 20;
/// Index entries or events one list request reads on one group at most; a
/// page with filters that match rarely may come back short, with a cursor.
pub const LIST_SCAN_BUDGET: usize = 1000;
/// Events one send request may carry.
pub const EVENTS_PER_SEND_MAX: usize = 50;
/// Largest HTTP request body.
pub const HTTP_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Requests one API key may make per second on one node, sustained, and in a burst.
pub const API_KEY_REQUESTS_PER_SECOND: u32 = 500;
pub const API_KEY_REQUESTS_BURST: u32 = 1000;
/// How often an idle SSE stream carries a ping.
pub const SSE_PING_INTERVAL_MS: u64 = 15_000;
/// Longest a held sandbox's health check may take before the sandbox counts as
/// unhealthy and is replaced.
pub const SANDBOX_HEALTH_TIMEOUT_MS: u64 = 5_000;
/// Clock differences between nodes past this are logged, and flagged by
/// `agentd cluster status`. Event timestamps never go backwards within a
/// session whatever the skew; past about an hour TLS certificates of peers
/// start to look not yet valid.
pub const CLOCK_SKEW_WARN_MS: u64 = 1_000;
/// How often each node measures its peers' clocks.
pub const CLOCK_CHECK_INTERVAL_MS: u64 = 15_000;

/// Client requests a node runs at once, from all its front doors together
/// (QUIC and HTTP; follow streams, once started, are not counted). One more
/// is refused at once with `Overloaded`, before its body is read, so a
/// node past its capacity keeps a bounded latency for what it admits and
/// flat memory. At the point where more concurrent requests stop
/// adding throughput (the knee, at about 256 concurrent appends on the
/// 2-core machine of BENCHMARKS.md, where 512 add 3%).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// The shortest pause an `Overloaded` answer suggests before a retry. The
/// hint grows with how many requests the node refused in the last second
/// (per admitted slot), so that clients that honour it come back no faster
/// than the node can take them; it never passes
/// [`OVERLOADED_RETRY_AFTER_MAX_MS`].
pub const OVERLOADED_RETRY_AFTER_MS: u64 = 50;
pub const OVERLOADED_RETRY_AFTER_MAX_MS: u64 = 5_000;

/// A process that speaks as a node is refused while another process of the
/// same node (another incarnation) was heard from within this long.
pub const IDENTITY_LEASE_MS: u64 = 5_000;
/// A node refused as a duplicate this long without a break stops itself:
/// it is a copy, and the original is alive. Longer than the lease, so a
/// restart refused until its previous process's lease ran out is not taken
/// for a copy.
pub const IDENTITY_REFUSED_EXIT_MS: u64 = 15_000;

/// The default free-space floor of a node's data disk (`--min-free-disk`):
/// below it the node takes no new writes, steps down from leadership and
/// answers writes with `StorageFull`, keeping the rest as headroom for what
/// it must still write (applying entries already in its log, RocksDB's
/// memtable flushes and compactions), so it never meets a full disk.
pub const DISK_FREE_FLOOR_DEFAULT: u64 = 256 * 1024 * 1024;
/// A node that stopped taking writes takes them again once its free space
/// is back above the floor plus this fraction of it (1/4), so it does not
/// flap around the floor.
pub const DISK_FREE_RESUME_DIVISOR: u64 = 4;
/// How often a node measures its data disk's free space (a `statvfs`, a few
/// microseconds): often enough that only a disk filled faster than the floor
/// per interval (256 MiB in 200 ms by default) reaches RocksDB as a failed write.
pub const DISK_CHECK_INTERVAL_MS: u64 = 200;
/// Connections a node's QUIC endpoint holds at once, handshakes included
/// (clients, peers and joining nodes); past it new ones are refused before
/// any handshake work.
pub const CONNECTIONS_MAX: usize = 1280;
/// Client connections (ALPN `agentd/1`) at once, and from one IP address.
/// A held QUIC connection costs the node about 170 KiB (`agentd bench
/// flood`), so clients hold at most about 175 MiB of a node's memory
/// whatever they attempt.
pub const CLIENT_CONNECTIONS_MAX: usize = 1024;
pub const CLIENT_CONNECTIONS_PER_ADDRESS_MAX: usize = 256;
/// New connections per second past which a node asks unvalidated ones to
/// prove their address first (a QUIC Retry: one more round trip).
pub const HANDSHAKES_PER_SECOND_BEFORE_RETRY: u32 = 200;
/// A client connection with no open stream for this long is closed (QUIC
/// keep-alives alone do not keep it), unless `--client-idle-secs` says otherwise.
pub const CLIENT_IDLE_SECS_DEFAULT: u64 = 60;
/// MCP servers one agent may list (the hosted API's bound).
pub const MCP_SERVERS_MAX: usize = 20;
/// Tools one MCP server's `tools/list` may give the model.
pub const MCP_TOOLS_PER_SERVER_MAX: usize = 256;
/// Rules in one workspace's approval policy.
pub const APPROVAL_RULES_MAX: usize = 64;
