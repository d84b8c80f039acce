//! Replies written in one go when a worker thread runs out of tasks, as Redis writes its
//! replies just before its event loop sleeps.
//!
//! A connection's reader, done with the frames it had, does not write its replies at once: it
//! queues its `ConnWriter` on a queue of the worker thread it runs on ([`defer`]). The queue is
//! written ([`flush`]):
//!
//! - when the thread is about to park, out of tasks ([`install`] hooks the runtime's
//!   `on_thread_park`): the usual case, one write per connection per wake-up of the thread,
//!   just before it waits on the I/O driver;
//! - when a connection already queued queues again: its reader was polled again, so the
//!   thread went round its ready readers once, and their replies go before it goes round
//!   again (a client pipelining on a thread that never runs dry still gets its replies);
//! - when [`MAX_CONNS`] connections wait;
//! - by the sweeper task ([`sweeper`], one per node) when it finds a queue holding the same
//!   batch two looks in a row, [`SWEEP`] apart: a thread kept busy by tasks that queue no
//!   replies (a long iterator, many writer tasks) takes tokio's `park_yield` path, which
//!   skips the park hook, and its queued replies would otherwise wait for it to run dry; and
//!   a thread the OS took the CPU from (on a machine whose cores the node shares) would keep
//!   them until it runs again.
//!
//! The readers that were ready together are answered together, so their clients' replies
//! arrive in a burst too, and both sides handle many sockets per wake-up. Under 50 clients of
//! 1 KiB GETs this took ~0.5 µs of CPU off each request (both sides together) and SETs went
//! 12 % faster (`docs/benchmarks.md`, eighteenth session).
//!
//! A thread without the hook (a runtime [`install`] was not called on: tests that run a node
//! in-process) batches another way: the first reader to queue on its empty queue yields
//! (`tokio::task::yield_now`, resumed once the thread has no other task ready) and then
//! writes the queue. That costs one more poll of one reader and one more look at the I/O
//! driver per batch, ~2 % of a GET. The queues are behind a mutex (uncontended but for the
//! sweeper, or a yielded reader resumed on another thread).

use crate::reply::ConnWriter;
use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Most connections waiting on one queue: past this, they are written at once.
pub(crate) const MAX_CONNS: usize = 64;
/// How long the sweeper sleeps between looks at the queues. tokio's timers tick every
/// millisecond, so this ends at the next tick: a look every 0.25–1 ms, and a batch a busy
/// thread holds waits at most about two ticks. A whole millisecond (a look every 1–2 ms) left
/// the GET p99 at 2.6–3.2 ms on a node sharing its two cores with its load, this at 1.4–2.0 ms
/// (`docs/benchmarks.md`, nineteenth session).
pub(crate) const SWEEP: Duration = Duration::from_micros(250);

/// One thread's waiting connections.
#[derive(Default)]
pub(crate) struct Queue {
    conns: Vec<Arc<ConnWriter>>,
    /// Traded for each connection's pending replies as they are written (one buffer moves
    /// along instead of each going back under its connection's lock).
    spare: Vec<u8>,
    /// Batches begun on this queue (counted when a connection queues on it empty).
    batch: u64,
    /// The batch the sweeper saw here at its last look.
    swept: u64,
}

type Shared = Arc<Mutex<Queue>>;

thread_local! {
    static MINE: Shared = Arc::default();
    /// Whether this thread writes its queue before it parks (set at its first park, when
    /// the queue is listed in [`QUEUES`]).
    static PARKS: Cell<bool> = const { Cell::new(false) };
}

/// The queues of the threads that park with the hook: what the sweeper looks at (weak: a
/// thread that ends takes its queue along).
static QUEUES: Mutex<Vec<Weak<Mutex<Queue>>>> = Mutex::new(Vec::new());
/// Set by the sweeper before it looks; still set when it found every queue empty and went to
/// sleep. The first reader to queue on an empty queue clears it and wakes the sweeper
/// ([`WAKE`]), as requests wake the client's deadline sweeper (`apsis_client::clock`).
static ASLEEP: AtomicBool = AtomicBool::new(false);
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();
/// Queues the sweeper wrote (their thread stayed a timer tick and more without parking).
static SWEPT: AtomicU64 = AtomicU64::new(0);

/// How many queues of replies the sweeper has written in this process: each is a worker thread
/// that stayed busy a timer tick or more with replies waiting on it (the monitor's
/// `io.replies_swept`). Rising steadily, the node's threads have more work than they get
/// through between two waits on the network.
pub(crate) fn swept() -> u64 {
    SWEPT.load(Ordering::Relaxed)
}

/// Has the runtime's worker threads write their queued replies before each park (see the
/// module doc). Without it, replies are still batched, at a small cost per batch.
pub fn install(rt: &mut tokio::runtime::Builder) {
    rt.on_thread_park(|| {
        // `try_with`: a hook never panics, even on a thread whose locals are going.
        let _ = MINE.try_with(|mine| {
            if !PARKS.with(Cell::get) {
                PARKS.with(|p| p.set(true));
                QUEUES.lock().push(Arc::downgrade(mine));
            }
            flush(mine);
        });
    });
}

/// Queues `cw`'s replies on this thread's queue. `Some(queue)` on a thread without the park
/// hook when the caller is the queue's flusher: it must `yield_now` and then [`flush`] it.
pub(crate) fn defer(cw: &Arc<ConnWriter>) -> Option<Shared> {
    MINE.with(|mine| {
        let parks = PARKS.with(Cell::get);
        let mut q = mine.lock();
        let first = q.conns.is_empty();
        let again = !first && q.conns.iter().any(|c| Arc::ptr_eq(c, cw));
        if again && parks {
            // A round of this thread's readers is over: their replies go now (this
            // connection's new ones with them).
            drop(q);
            flush(mine);
            return None;
        }
        if !again {
            q.conns.push(cw.clone());
        }
        if q.conns.len() >= MAX_CONNS {
            drop(q);
            // A yielded flusher finds it empty, or what was queued since.
            flush(mine);
            return None;
        }
        if first {
            q.batch += 1;
        }
        drop(q);
        if !parks {
            return first.then(|| mine.clone());
        }
        if first {
            // Pairs with the sweeper's fence: it sees this batch, or this sees it asleep.
            fence(Ordering::SeqCst);
            if ASLEEP.load(Ordering::Relaxed) && ASLEEP.swap(false, Ordering::Relaxed) {
                WAKE.notify_one();
            }
        }
        None
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

/// One look at every listed queue: writes those that hold the batch they held at the last
/// look. Returns whether any queue held replies.
fn sweep() -> bool {
    let queues: Vec<Shared> = {
        let mut list = QUEUES.lock();
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    };
    let mut busy = false;
    for queue in &queues {
        let mut q = queue.lock();
        if q.conns.is_empty() {
            continue;
        }
        busy = true;
        if q.batch == q.swept {
            drop(q);
            SWEPT.fetch_add(1, Ordering::Relaxed);
            flush(queue);
        } else {
            q.swept = q.batch;
        }
    }
    busy
}

/// The sweeper (see the module doc): a node runs one for as long as it runs. It looks every
/// [`SWEEP`] while replies wait anywhere, and sleeps once a look finds every queue empty
/// until a batch begins.
pub(crate) async fn sweeper() {
    loop {
        tokio::time::sleep(SWEEP).await;
        ASLEEP.store(true, Ordering::Relaxed);
        // Pairs with `defer`'s fence: a batch begun before this is seen by the look below,
        // and one begun after it finds ASLEEP set and wakes this.
        fence(Ordering::SeqCst);
        if sweep() {
            ASLEEP.store(false, Ordering::Relaxed);
            continue;
        }
        // A wake-up that came before this wait is kept by `Notify` as a permit.
        WAKE.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use apsis_proto::{cmd, errno, Header, IoAttr, HEADER_SIZE};
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    /// A READ of a key nobody wrote, and its reply's status.
    fn miss(s: &mut std::net::TcpStream, trans: u64) -> i32 {
        let mut h = Header::new(cmd::READ, 0);
        (h.id, h.group, h.trans) = ([7; 64], 1, trans);
        h.size = IoAttr::SIZE as u64;
        let io = IoAttr {
            id: h.id,
            parent: h.id,
            ..Default::default()
        };
        let mut frame = h.encode().to_vec();
        frame.extend_from_slice(&io.encode());
        s.write_all(&frame).unwrap();
        let mut head = [0u8; HEADER_SIZE];
        s.read_exact(&mut head).unwrap();
        let reply = Header::decode(&head).unwrap();
        let mut rest = vec![0u8; reply.size as usize];
        s.read_exact(&mut rest).unwrap();
        assert_eq!(reply.trans, trans);
        reply.status
    }

    /// A worker thread kept from parking by a task that always has more to do (it yields to
    /// tokio again and again, so tokio takes its `park_yield` path, which skips the park
    /// hook) still sends the replies queued on it: the sweeper writes them within a few
    /// milliseconds, not once the busy task is done. Without the sweeper this reply waits the
    /// busy task's 1.5 s.
    #[test]
    fn a_reply_queued_on_a_thread_that_never_parks_goes_out() {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(1);
        super::install(&mut b);
        let rt = b.enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::NodeConfig::single("127.0.0.1:0".parse().unwrap(), dir.path());
        let node = rt.block_on(crate::Node::start(cfg, None)).unwrap();
        let mut s = std::net::TcpStream::connect(node.listen[0]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Answered while the worker is idle (it has parked, so its queue is listed).
        assert_eq!(miss(&mut s, 1), -errno::ENOENT);
        let busy = rt.spawn(async {
            let end = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < end {
                tokio::task::yield_now().await;
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        let asked = Instant::now();
        assert_eq!(miss(&mut s, 2), -errno::ENOENT);
        let waited = asked.elapsed();
        assert!(
            !busy.is_finished(),
            "the busy task ended first: the test proves nothing"
        );
        assert!(
            waited < Duration::from_millis(500),
            "the reply waited {waited:?} for its thread to park"
        );
        assert!(super::swept() > 0, "the sweeper did not count its write");
        rt.block_on(busy).unwrap();
        rt.block_on(node.shutdown());
    }
}
