//! What a node does for the shards it leads: gives the brain its session
//! log over the local replica (`session_log.rs`), and watches each led shard
//! to wake sessions when clients write to them, when leadership arrives
//! (failover) and to release a terminated session's sandbox
//! (`shard_watch.rs`).

mod session_log;
mod shard_watch;

pub(crate) use session_log::bounded;
pub use session_log::{LocalSessionLog, LogObserver};
pub use shard_watch::drive_shards;
