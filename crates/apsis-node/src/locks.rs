//! Per-key serialisation: requests without NOLOCK on the same (id, group) run one at a time.
//!
//! Keys hash onto a fixed number of stripes (bounded memory whatever the key count); two keys
//! on one stripe are serialised too, which costs a little concurrency and never correctness.
//!
//! A stripe is one 32-bit word (held bit, and twice the number of waiting tasks), so the 4096
//! stripes take 16 KiB and stay in the CPU's caches: each request touches one at random, and
//! with a `tokio::sync::Mutex` per stripe (a separate allocation each, ~320 KiB in all) that
//! touch was a cache miss, 7 % of the server's user time under a 1 KiB GET load. Waiting tasks
//! park on the stripe's `Notify`, which only contention touches. A guard owns a reference to
//! the table, so a mutation can keep its lock until its group commit.

use std::sync::atomic::{AtomicU32, Ordering::AcqRel, Ordering::Acquire};
use std::sync::Arc;
use tokio::sync::Notify;

const STRIPES: usize = 4096;
const HELD: u32 = 1;
const WAITER: u32 = 2;

struct Table {
    /// Per stripe: [`HELD`], plus [`WAITER`] for each task waiting for it.
    state: Box<[AtomicU32]>,
    /// Where the waiters of each stripe park.
    wake: Box<[Notify]>,
}

pub struct KeyLocks {
    table: Arc<Table>,
}

impl Default for KeyLocks {
    fn default() -> Self {
        KeyLocks {
            table: Arc::new(Table {
                state: (0..STRIPES).map(|_| AtomicU32::new(0)).collect(),
                wake: (0..STRIPES).map(|_| Notify::new()).collect(),
            }),
        }
    }
}

/// A held key lock; dropping it releases the stripe and wakes a waiter, if there is one.
pub struct KeyGuard {
    table: Arc<Table>,
    stripe: usize,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let prev = self.table.state[self.stripe].fetch_and(!HELD, AcqRel);
        if prev >= WAITER {
            self.table.wake[self.stripe].notify_one();
        }
    }
}

/// Counts a task as waiting for a stripe for as long as it lives (also when the wait is
/// cancelled).
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(WAITER, AcqRel);
    }
}

impl KeyLocks {
    /// The key's lock.
    pub async fn lock(&self, id: &[u8; 64], group: u32) -> KeyGuard {
        let h = u64::from_le_bytes(id[8..16].try_into().expect("8 bytes"))
            ^ (group as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let stripe = (h % STRIPES as u64) as usize;
        if self.table.state[stripe].fetch_or(HELD, Acquire) & HELD == 0 {
            return self.guard(stripe);
        }
        // Boxed: rare, and its future would otherwise be part of (and moved with) every
        // request's.
        Box::pin(self.wait(stripe)).await
    }

    fn guard(&self, stripe: usize) -> KeyGuard {
        KeyGuard {
            table: self.table.clone(),
            stripe,
        }
    }

    /// Waits until the stripe is free and takes it. A waiter is counted before it tries, and
    /// registered with the `Notify` before each try, so a holder that releases after a failed
    /// try sees the count and its `notify_one` reaches a registered waiter (or is kept as a
    /// permit for the next registration). A notified waiter can lose the stripe to a request
    /// that took it without waiting; it then waits again, and that request's release wakes it.
    async fn wait(&self, stripe: usize) -> KeyGuard {
        let state = &self.table.state[stripe];
        let _waiting = Waiting(state);
        state.fetch_add(WAITER, AcqRel);
        loop {
            let notified = self.table.wake[stripe].notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if state.fetch_or(HELD, AcqRel) & HELD == 0 {
                return self.guard(stripe);
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::time::Duration;

    fn id(n: u8) -> [u8; 64] {
        let mut id = [0u8; 64];
        id[8] = n;
        id
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_holder_per_key_under_contention() {
        let locks = Arc::new(KeyLocks::default());
        let inside = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (locks, inside, done) = (locks.clone(), inside.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..500 {
                    let _g = locks.lock(&id(1), 1).await;
                    assert!(!inside.swap(true, SeqCst), "two holders at once");
                    tokio::task::yield_now().await;
                    inside.store(false, SeqCst);
                    done.fetch_add(1, SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(done.load(SeqCst), 16 * 500);
        let s = &locks.table.state;
        assert!(
            s.iter().all(|w| w.load(SeqCst) == 0),
            "a stripe left held or counted"
        );
    }

    #[tokio::test]
    async fn other_keys_and_groups_do_not_wait_and_a_cancelled_waiter_passes_the_lock_on() {
        let locks = Arc::new(KeyLocks::default());
        let g = locks.lock(&id(1), 1).await;
        // Another group's copy of the key is another lock.
        let other = tokio::time::timeout(Duration::from_secs(1), locks.lock(&id(1), 2)).await;
        assert!(other.is_ok());
        drop(other);
        // A waiter that gives up (timeout) leaves no trace.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), locks.lock(&id(1), 1)).await;
        assert!(gave_up.is_err());
        // Two waiters; the first is woken by the release and cancelled before it runs: the
        // wake-up must pass on to the second.
        let (l1, l2) = (locks.clone(), locks.clone());
        let first = tokio::spawn(async move { drop(l1.lock(&id(1), 1).await) });
        tokio::task::yield_now().await;
        let second = tokio::spawn(async move { drop(l2.lock(&id(1), 1).await) });
        tokio::task::yield_now().await;
        drop(g);
        first.abort();
        let second = tokio::time::timeout(Duration::from_secs(1), second).await;
        assert!(second.is_ok(), "the lock was not passed on");
        let s = &locks.table.state;
        assert!(
            s.iter().all(|w| w.load(SeqCst) == 0),
            "a stripe left held or counted"
        );
    }
}
