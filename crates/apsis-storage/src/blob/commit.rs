//! Group commit for callers that must not block a thread per write: [`Committer`].
//!
//! The engine's own `sync = 0` path ([`BlobConfig::sync`](super::BlobConfig::sync)) serves
//! callers that block: each writer thread waits for the fsync that covers it, and one of them
//! leads it. An asynchronous server would need a thread per concurrent write for that. A
//! [`Committer`] serves
//! instead callers that hand over a *waiter* (a reply to send, a task to wake) and go on: the
//! engine runs with `sync = -1`, a caller writes, then [`Committer::submit`]s its waiter, and
//! one thread per engine syncs and settles every waiter the sync covered, in one call.
//!
//! Gathering: the writers a sync settles are likely to write again right away, so before the
//! next sync the thread waits (at most half the last sync's time) until as many waiters have
//! come as the last sync settled, yielding the CPU in a loop rather than sleeping (the waiter
//! that completes the batch then costs no cross-CPU wake-up); the writers only queue. Only an
//! idle committer, or one whose window passed, sleeps and is woken.

use super::BlobBackend;
use crate::error::{Result, StorageError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// One engine's sync thread and the waiters it settles (see the module doc).
pub struct Committer<W> {
    shared: Arc<Shared<W>>,
}

struct Shared<W> {
    state: Mutex<State<W>>,
    wake: Condvar,
    /// `state.waiters.len()`, readable without the lock (for the gathering spin).
    queued: AtomicUsize,
}

struct State<W> {
    waiters: Vec<W>,
    /// The thread sleeps until this many waiters have queued (0: it is syncing, not asleep).
    wake_at: usize,
    /// No more waiters: settle the queued ones and stop.
    closed: bool,
}

impl<W: Send + 'static> Committer<W> {
    /// Starts the sync thread for `engine` (opened with `sync = -1`; the thread keeps only a
    /// weak reference, so the engine closes when its owners drop it). `settle` receives each
    /// sync's waiters with its outcome; a sync after the engine is gone fails with
    /// [`StorageError::Poisoned`].
    pub fn start(
        engine: &Arc<BlobBackend>,
        name: String,
        mut settle: impl FnMut(Vec<W>, Result<()>) + Send + 'static,
    ) -> std::io::Result<Committer<W>> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiters: Vec::new(),
                wake_at: 1,
                closed: false,
            }),
            wake: Condvar::new(),
            queued: 0.into(),
        });
        let engine: Weak<BlobBackend> = Arc::downgrade(engine);
        let s = shared.clone();
        std::thread::Builder::new().name(name).spawn(move || {
            let mut expect = 1;
            let mut last = Duration::ZERO;
            while let Some(batch) = s.next_batch(expect, last / 2) {
                let began = Instant::now();
                let r = match engine.upgrade() {
                    Some(e) => crate::Backend::sync(&*e),
                    None => Err(StorageError::Poisoned("the backend was closed".into())),
                };
                last = began.elapsed();
                expect = batch.len();
                settle(batch, r);
            }
        })?;
        Ok(Committer { shared })
    }

    /// Queues `w`, to be settled once everything written before this call is durable.
    pub fn submit(&self, w: W) {
        let mut st = self.shared.lock();
        st.waiters.push(w);
        self.shared
            .queued
            .store(st.waiters.len(), Ordering::Release);
        if st.wake_at != 0 && st.waiters.len() >= st.wake_at {
            st.wake_at = 0;
            drop(st);
            self.shared.wake.notify_one();
        }
    }
}

impl<W> Shared<W> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<W>> {
        // Nothing panics under this lock; a poisoned one still holds a consistent queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next sync's waiters: up to `gather` from now (right after the last sync was
    /// settled, when its writers are writing again) for `expect` of them; after that, the
    /// first that comes. `None` once closed with none left.
    fn next_batch(&self, expect: usize, gather: Duration) -> Option<Vec<W>> {
        let until = Instant::now() + gather;
        if expect > 1 {
            // Under a steady load the batch completes within the window: wait for it by
            // yielding the CPU in a loop rather than sleeping, so the waiter that completes
            // it costs no wake-up of this thread (on a VM a cross-CPU wake-up takes tens of
            // microseconds, a sizeable part of a fast fsync). Yielding lets any runnable
            // thread have the CPU; RocksDB's write thread waits for its group the same way.
            while self.queued.load(Ordering::Acquire) < expect && Instant::now() < until {
                std::thread::yield_now();
            }
        }
        let mut st = self.lock();
        loop {
            let n = st.waiters.len();
            let open = Instant::now() < until;
            if n >= expect || (n > 0 && (!open || st.closed)) {
                break;
            }
            if st.closed {
                return None;
            }
            if open {
                st.wake_at = expect;
                let left = until.saturating_duration_since(Instant::now());
                st = self
                    .wake
                    .wait_timeout(st, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            } else {
                // Idle: the first waiter to come is synced at once.
                st.wake_at = 1;
                st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        st.wake_at = 0;
        self.queued.store(0, Ordering::Release);
        Some(std::mem::take(&mut st.waiters))
    }
}

impl<W> Drop for Committer<W> {
    /// The thread settles what is queued (one more sync) and stops.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}
