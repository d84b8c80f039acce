//! Replies written in one go once a worker thread has run the tasks it had ready, as Redis
//! writes its replies just before its event loop sleeps.
//!
//! A connection's reader, done with the frames it had, does not write its replies at once: it
//! queues its `ConnWriter` on a queue of the worker thread it runs on ([`defer`]). The first
//! reader to queue on an empty queue becomes its flusher: it yields with
//! `tokio::task::yield_now`, which tokio resumes only once the worker has no other task ready
//! or at its periodic look at the I/O driver (every 61 tasks), and then writes every queued
//! connection's replies ([`flush`]). A queue of [`MAX_CONNS`] connections is written at once.
//!
//! The readers that were ready together are answered together, so their clients' replies
//! arrive in a burst too, and both sides handle many sockets per wake-up. Under 50 clients of
//! 1 KiB GETs, a first version (written from tokio's park hook) took ~0.5 µs of CPU off each
//! request (both sides together) and SETs went 12 % faster; this one gives ~2 % of that back
//! (`docs/benchmarks.md`, eighteenth session). It costs one more poll of one reader per batch,
//! not per request, and the queue's lock.
//!
//! The queue is behind a mutex, not a thread-local cell: the flusher may be resumed on another
//! worker (stolen), and a worker kept busy by other tasks still resumes it at its periodic look
//! at the driver, so no reply waits for the worker to run out of work.

use crate::reply::ConnWriter;
use parking_lot::Mutex;
use std::sync::Arc;

/// Most connections waiting on one queue: past this, they are written at once.
pub(crate) const MAX_CONNS: usize = 64;

/// One thread's waiting connections.
#[derive(Default)]
pub(crate) struct Queue {
    conns: Vec<Arc<ConnWriter>>,
    /// Traded for each connection's pending replies as they are written (one buffer moves
    /// along instead of each going back under its connection's lock).
    spare: Vec<u8>,
}

thread_local! {
    static MINE: Arc<Mutex<Queue>> = Arc::default();
}

/// Queues `cw`'s replies on this thread's queue. `Some(queue)` when the caller is the queue's
/// flusher: it must `yield_now` and then [`flush`] it.
pub(crate) fn defer(cw: &Arc<ConnWriter>) -> Option<Arc<Mutex<Queue>>> {
    MINE.with(|mine| {
        let mut q = mine.lock();
        let first = q.conns.is_empty();
        if !q.conns.iter().any(|c| Arc::ptr_eq(c, cw)) {
            q.conns.push(cw.clone());
        }
        if q.conns.len() >= MAX_CONNS {
            drop(q);
            // Its flusher finds it empty, or what was queued since.
            flush(mine);
            return None;
        }
        first.then(|| mine.clone())
    })
}

/// Writes every connection queued (without waiting: what a socket does not take at once is
/// written by a task of its own).
pub(crate) fn flush(queue: &Mutex<Queue>) {
    let (conns, mut spare) = {
        let mut q = queue.lock();
        (std::mem::take(&mut q.conns), std::mem::take(&mut q.spare))
    };
    if conns.is_empty() {
        return;
    }
    for cw in &conns {
        cw.flush_nowait_trading(&mut spare);
    }
    // The vector and the buffer go back for the next batch (no allocation per batch).
    let mut conns = conns;
    conns.clear();
    let mut q = queue.lock();
    if q.conns.capacity() == 0 {
        q.conns = conns;
    }
    if q.spare.capacity() == 0 {
        q.spare = spare;
    }
}
