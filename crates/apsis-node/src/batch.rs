//! Replies written in one go when a worker thread runs out of tasks, as Redis writes its
//! replies just before its event loop sleeps.
//!
//! A connection's reader, done with the frames it had, does not write its replies at once: it
//! queues its `ConnWriter` on the worker thread it runs on ([`defer`]), and the thread writes
//! every queued connection's replies when it is about to park ([`install`] hooks the runtime's
//! `on_thread_park`), when [`MAX_CONNS`] connections wait, or when requests keep coming and
//! find the queue older than [`MAX_WAIT`] (the clock is read at every 16th). The readers that
//! were ready together are answered together, so their clients' replies arrive in a burst
//! too, and both sides handle many sockets per wake-up: under 50 clients of 1 KiB GETs this
//! took 0.5 µs of CPU off each request (both sides together) and SETs went 12 % faster
//! (`docs/benchmarks.md`).
//!
//! A thread batches only once it has parked the first time: only a runtime's worker threads
//! park, so a reader polled anywhere else (a `block_on` thread, a runtime without the hook,
//! as in tests that run a node in-process) writes its replies at once, as before.

use crate::reply::ConnWriter;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most connections waiting on one thread: past this, they are written at once.
pub const MAX_CONNS: usize = 64;
/// Longest a queue waits for its thread to park while requests keep coming.
pub const MAX_WAIT: Duration = Duration::from_micros(200);

/// One thread's waiting connections, and when the first was queued.
#[derive(Default)]
struct Queue {
    conns: Vec<Arc<ConnWriter>>,
    since: Option<Instant>,
    /// Deferrals since the queue was last written: the clock is read on every 16th.
    defers: u32,
    /// Traded for each connection's pending replies as they are written (one buffer moves
    /// along instead of each going back under its connection's lock).
    spare: Vec<u8>,
}

thread_local! {
    /// Whether this thread writes queued replies when it parks (set at its first park).
    static PARKS: Cell<bool> = const { Cell::new(false) };
    static QUEUE: RefCell<Queue> = RefCell::new(Queue::default());
}

/// Has the runtime's worker threads write the queued replies before each park.
pub fn install(rt: &mut tokio::runtime::Builder) {
    rt.on_thread_park(|| {
        PARKS.with(|p| p.set(true));
        flush_all();
    });
}

/// Queues `cw`'s replies for this thread's next write of them; false (nothing queued) on a
/// thread that does not park with [`install`]'s hook: the caller writes them itself.
pub(crate) fn defer(cw: &Arc<ConnWriter>) -> bool {
    if !PARKS.with(|p| p.get()) {
        return false;
    }
    let now = QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        if !q.conns.iter().any(|c| Arc::ptr_eq(c, cw)) {
            q.conns.push(cw.clone());
        }
        let since = *q.since.get_or_insert_with(Instant::now);
        q.defers += 1;
        q.conns.len() >= MAX_CONNS || (q.defers % 16 == 0 && since.elapsed() >= MAX_WAIT)
    });
    if now {
        flush_all();
    }
    true
}

/// Writes every connection queued on this thread (without waiting: what a socket does not
/// take at once is written by a task of its own).
fn flush_all() {
    let (conns, mut spare) = QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        (q.since, q.defers) = (None, 0);
        (std::mem::take(&mut q.conns), std::mem::take(&mut q.spare))
    });
    if conns.is_empty() {
        return;
    }
    for cw in &conns {
        cw.flush_nowait_trading(&mut spare);
    }
    // The vector and the buffer go back for the next queue (no allocation per batch).
    let mut conns = conns;
    conns.clear();
    QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        if q.conns.capacity() == 0 {
            q.conns = conns;
        }
        q.spare = spare;
    });
}
