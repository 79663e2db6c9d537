//! Group commit: one `fsync` of the write-ahead log for many writers.
//!
//! Writers put their batch into RocksDB unsynced (so it is readable at once)
//! and then hand a [`SyncWaiter`] to the syncer. A dedicated OS thread takes
//! the first waiter, drains every other waiter already queued, syncs the WAL
//! once and completes them all. Every waiter was enqueued after its write, and
//! RocksDB has a single WAL, so one sync makes all of their writes durable:
//! concurrent appends of every group on the node share one `fsync`.
//!
//! The thread is a plain OS thread rather than a tokio task because the sync
//! blocks for the duration of a disk flush.

use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use agentd_protocol::limits::WRITE_QUEUE_DEPTH_MAX;
use rocksdb::DB;
use tokio::sync::mpsc;

use super::disk::SyncWaiter;

/// The handle of the syncer thread. Dropping it closes the queue and joins
/// the thread after it has completed every waiter still queued.
pub(crate) struct Syncer {
    sender: Option<mpsc::Sender<SyncWaiter>>,
    thread: Option<JoinHandle<()>>,
}

/// The first write or sync of the store that failed, if one did. After
/// that the store takes no more writes and syncs nothing: RocksDB's WAL
/// writer must not be used again once a write to it failed (its build in
/// Debian asserts on a sync after a failed write, aborting the process, as
/// a full disk showed), and what failed to be written can never be
/// acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Failure(Mutex<Option<String>>);

impl Failure {
    pub(crate) fn get(&self) -> Option<String> {
        agentd_protocol::sync::lock(&self.0).clone()
    }

    /// Records `error` unless an earlier failure is recorded already.
    pub(crate) fn record(&self, error: &str) {
        let mut failure = agentd_protocol::sync::lock(&self.0);
        if failure.is_none() {
            tracing::error!(%error, "a write to the store failed: it takes no more writes until the node restarts");
            *failure = Some(error.to_string());
        }
    }
}

impl Syncer {
    pub(crate) fn start(db: Arc<DB>, failure: Arc<Failure>) -> io::Result<Syncer> {
        let (sender, receiver) = mpsc::channel(WRITE_QUEUE_DEPTH_MAX);
        let thread = std::thread::Builder::new()
            .name("agentd-storage-sync".into())
            .spawn(move || run(&db, &failure, receiver))?;
        Ok(Syncer { sender: Some(sender), thread: Some(thread) })
    }

    /// Queues a waiter. A full queue slows the caller down rather than
    /// growing without bound.
    pub(crate) async fn enqueue(&self, waiter: SyncWaiter) {
        let Some(sender) = &self.sender else {
            unreachable!("the sender lives until the syncer is dropped");
        };
        if let Err(mpsc::error::SendError(waiter)) = sender.send(waiter).await {
            // Only a panicked syncer thread closes the queue while a handle exists.
            waiter.complete(&Err("the storage syncer thread has stopped".to_string()));
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the queue lets the thread finish; joining it releases its
        // handle on the database, so the caller can reopen the same directory.
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the storage syncer thread panicked");
            }
        }
    }
}

fn run(db: &DB, failure: &Failure, mut receiver: mpsc::Receiver<SyncWaiter>) {
    let mut waiters = Vec::new();
    while let Some(first) = receiver.blocking_recv() {
        waiters.push(first);
        while waiters.len() < WRITE_QUEUE_DEPTH_MAX {
            match receiver.try_recv() {
                Ok(waiter) => waiters.push(waiter),
                Err(_) => break,
            }
        }
        if let Some(error) = failure.get() {
            let result = Err(format!("an earlier write failed ({error})"));
            for waiter in waiters.drain(..) {
                waiter.complete(&result);
            }
            continue;
        }
        let started = Instant::now();
        let result = db.flush_wal(true).map_err(|error| error.to_string());
        if let Err(error) = &result {
            failure.record(error);
        }
        metrics::histogram!("agentd_storage_sync_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("agentd_storage_syncs_total").increment(1);
        metrics::histogram!("agentd_storage_sync_batch_size").record(waiters.len() as f64);
        if let Err(error) = &result {
            tracing::error!(%error, waiters = waiters.len(), "syncing the write-ahead log failed");
        }
        for waiter in waiters.drain(..) {
            waiter.complete(&result);
        }
    }
}
