//! Request deadlines on a coarse clock.
//!
//! A tokio timer per request (a `Sleep` put into the timer wheel and taken out again, the
//! clock read for each) was ~6 % of a busy client's user time, and 96 bytes of every request's
//! future. Instead, a request notes the tick by which its final reply must arrive, and one
//! task per client, the sweeper, advances the tick every [`TICK`] and fails the requests
//! whose deadline passed (their [`crate::conn::Replies`] end with a timeout). A request times
//! out between its timeout and its timeout plus two ticks, and one that does is forgotten as
//! before: late replies are discarded.
//!
//! Each connection keeps the earliest deadline of its requests beside them, so a tick looks
//! at a connection's requests only when one of them may be due (about once per timeout under
//! steady load), not at every tick. The sweeper sleeps while no request waits anywhere; the
//! first new request wakes it.

use crate::conn::Conn;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// How often the sweeper looks for requests past their deadline.
pub const TICK: Duration = Duration::from_millis(10);

/// A deadline that never comes (a stream's request: its items have their own timeouts).
pub const NEVER: u64 = u64::MAX;

/// The coarse clock and the connections the sweeper looks at.
pub struct Clock {
    tick: AtomicU64,
    /// Set by the sweeper before it looks for waiting requests; still set when it found none
    /// and went to sleep. A request that finds it set clears it and wakes the sweeper.
    idle: AtomicBool,
    wake: Arc<Notify>,
    conns: Mutex<Vec<Weak<Conn>>>,
}

impl Clock {
    /// A clock and its sweeper (a tokio task; it ends when the clock is dropped).
    pub fn start() -> Arc<Clock> {
        let wake = Arc::new(Notify::new());
        let clock = Arc::new(Clock {
            tick: AtomicU64::new(0),
            idle: AtomicBool::new(false),
            wake: wake.clone(),
            conns: Mutex::new(Vec::new()),
        });
        tokio::spawn(sweep(Arc::downgrade(&clock), wake));
        clock
    }

    /// The tick by which a request sent now with `timeout` must be answered.
    pub fn deadline(&self, timeout: Duration) -> u64 {
        let ticks = timeout.as_nanos().div_ceil(TICK.as_nanos());
        // +1: the current tick is already partly over.
        self.tick
            .load(Relaxed)
            .saturating_add(u64::try_from(ticks).unwrap_or(NEVER))
            .saturating_add(1)
    }

    /// Called after a request with a deadline was registered on its connection (under the
    /// connection's lock, which orders it against the sweeper's look): wakes a sleeping
    /// sweeper.
    pub fn note_waiting(&self) {
        if self.idle.load(Relaxed) && self.idle.swap(false, Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Puts a new connection under the sweeper's watch.
    pub fn watch(&self, conn: &Arc<Conn>) {
        let mut conns = self.conns.lock();
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Arc::downgrade(conn));
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        // A sleeping sweeper wakes to find the clock gone and ends.
        self.wake.notify_one();
    }
}

async fn sweep(clock: Weak<Clock>, wake: Arc<Notify>) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(c) = clock.upgrade() else {
            return;
        };
        let now = c.tick.fetch_add(1, Relaxed) + 1;
        // Idle first, then look: a request registered after a connection was looked at sees
        // the flag (the connection's lock orders the two) and wakes the sweeper.
        c.idle.store(true, Relaxed);
        let conns: Vec<Arc<Conn>> = c.conns.lock().iter().filter_map(Weak::upgrade).collect();
        let mut waiting = false;
        for conn in &conns {
            waiting |= conn.expire(now);
        }
        drop(conns);
        if waiting {
            c.idle.store(false, Relaxed);
            continue;
        }
        drop(c);
        wake.notified().await;
    }
}
