//! Getting bytes to the OS and to the disk: the write buffer, group commit, the background
//! threads, and poisoning after a failed write or fsync.
//!
//! The write buffer reaches the OS through the flusher thread (every `flush_interval_ms`, and
//! when it fills): it takes the buffer under the writer lock, leaves a fresh one, and writes
//! without the lock ([`Inner::flush_in_background`]), so a `pwrite` that waits in the kernel
//! (milliseconds under writeback) no longer holds up every writer. Anything that needs the
//! bytes on the device ([`Inner::flush_buffer`]: group commit, rotation, iteration, in-place
//! rewrites of those bytes) waits for that write first.
//!
//! Group commit: a writer under `sync = 0` waits until the durable sequence number passes its
//! own. If no sync is running it becomes the leader: it takes the writer lock just long enough
//! to hand the buffer over and note the sequence number, then writes the buffer and fsyncs
//! without any lock while others keep appending. Then it wakes exactly the writers that fsync
//! covered (each parked writer is woken by name, never to find it must sleep again) and hands
//! the lead to a writer still waiting. The next leader first waits (briefly) for the writers just woken to append
//! again, so each fsync carries every writer instead of alternating half groups.
//!
//! Waiting: when fsyncs are fast (under a millisecond), a writer yields the CPU in a loop,
//! checking its flag, for up to two fsyncs before it parks ([`Waiter`]); the gathering leader
//! does the same for its whole window. Waking a thread that has not parked costs a store and
//! no futex call, and the thread runs at its next turn on a CPU instead of after a cross-CPU
//! wake-up; on a 2-vCPU VM those wake-ups, fifteen per fsync, were what bounded 16 writers.

use super::{Inner, Writer};
use crate::error::{Result, StorageError};
use parking_lot::Condvar;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writers yield in a loop (for up to two fsyncs) before they park only when an fsync takes
/// less than this: against a slower disk a wake-up's cost is lost in the fsync's time, and
/// the CPU would be burnt for nothing.
const SPIN_BELOW: Duration = Duration::from_millis(1);

/// A thread waiting in group commit, woken by name (see the module doc).
pub(crate) struct Waiter {
    thread: std::thread::Thread,
    woken: AtomicBool,
}

thread_local! {
    static ME: Arc<Waiter> = Arc::new(Waiter {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
    });
}

impl Waiter {
    /// The calling thread's waiter, its flag cleared (call under the sync state lock, before
    /// registering it, so a wake-up meant for an earlier wait cannot be taken for this one).
    fn me() -> Arc<Waiter> {
        let me = ME.with(Arc::clone);
        me.woken.store(false, Ordering::Relaxed);
        me
    }

    pub(crate) fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        // No futex call unless the thread has parked.
        self.thread.unpark();
    }

    /// Waits until woken, yielding the CPU in a loop until `spin_until`, then parked (until
    /// `park_until` when given). Returns whether it was woken.
    fn wait(&self, spin_until: Instant, park_until: Option<Instant>) -> bool {
        loop {
            if self.woken.swap(false, Ordering::Acquire) {
                return true;
            }
            let now = Instant::now();
            if now < spin_until {
                std::thread::yield_now();
                continue;
            }
            match park_until {
                None => std::thread::park(),
                Some(t) if now < t => std::thread::park_timeout(t - now),
                Some(_) => return false,
            }
        }
    }
}

/// A write buffer taken out from under the writer lock, to be written to the device without
/// it ([`Inner::hand_over`]). Readers take its bytes from `Writer::inflight` meanwhile;
/// whoever needs them on the device waits for `flush_lock`, held here until the write is over.
struct Handover<'a> {
    base: Arc<super::Base>,
    start: u64,
    data: Arc<Vec<u8>>,
    _flush: parking_lot::MutexGuard<'a, ()>,
}

impl Handover<'_> {
    /// Writes the bytes where they belong ([`Inner::write_buffer`]).
    fn write(self, inner: &Inner) -> Result<()> {
        inner.write_buffer(&self.base, &self.data, self.start)?;
        self.base
            .flushed
            .fetch_max(self.start + self.data.len() as u64, Ordering::Release);
        Ok(())
    }
}

impl Inner {
    fn sync_state(&self) -> std::sync::MutexGuard<'_, super::SyncState> {
        // Nothing panics while holding it; a poisoned lock still holds consistent numbers.
        self.sync_state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses all further writes (reads go on): after a failed fsync the kernel may have
    /// dropped dirty pages, so pretending otherwise would acknowledge lost data.
    pub(crate) fn poison(&self, why: &str) {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            tracing::error!(reason = why, "blob backend refuses writes from now on");
            *p = Some(why.to_string());
        }
        // Parked writers learn it from the leader, which checks after every fsync.
        self.is_poisoned.store(true, Ordering::Release);
    }

    /// Writes buffered records at `start` of `base`. Acknowledged (buffered) records that
    /// could not be written stop the backend accepting writes: a failure poisons it.
    fn write_buffer(&self, base: &super::Base, data: &[u8], start: u64) -> Result<()> {
        base.dev.write_at(data, start).map_err(|e| {
            let err = StorageError::from_io(e, "flushing the write buffer");
            self.poison(&format!("write buffer flush failed: {err}"));
            StorageError::Poisoned(err.to_string())
        })
    }

    /// Hands the write buffer to the device; once it returns, everything up to the open
    /// base's tail is there (a background flush still writing is waited for).
    pub(crate) fn flush_buffer(&self, w: &mut Writer) -> Result<()> {
        if w.inflight.is_some() {
            let _flush = self.flush_lock.lock();
            self.settle_inflight(w)?;
        }
        if w.buf.is_empty() {
            return Ok(());
        }
        self.write_buffer(&w.open, &w.buf, w.buf_start)?;
        w.buf.clear();
        w.buf_start = w.tail;
        w.open.flushed.store(w.tail, Ordering::Release);
        Ok(())
    }

    /// Drops the background flush's buffer once its write is over (call with the writer lock
    /// and then `flush_lock` held); after a failed write the bytes stay for readers, and the
    /// backend is poisoned.
    fn settle_inflight(&self, w: &mut Writer) -> Result<()> {
        let Some((start, data)) = &w.inflight else {
            return Ok(());
        };
        if w.open.flushed.load(Ordering::Acquire) < start + data.len() as u64 {
            self.check_poison()?;
            return Err(StorageError::Poisoned("a write buffer flush failed".into()));
        }
        if let Some((_, data)) = w.inflight.take() {
            if let Ok(mut v) = Arc::try_unwrap(data) {
                v.clear();
                w.spare = v;
            }
        }
        Ok(())
    }

    /// Hands the write buffer to the device without holding the writer lock through the
    /// write (the flusher thread's way): appends go on into a fresh buffer meanwhile. Under
    /// writeback a `pwrite` of a megabyte into the page cache can wait milliseconds in the
    /// kernel, and with the lock held every writer waited with it. Readers of the bytes
    /// being written take them from the buffer handed over (`Writer::inflight`); anything
    /// that needs them on the device ([`Inner::flush_buffer`]) waits for `flush_lock`.
    pub(crate) fn flush_in_background(&self) -> Result<()> {
        let mut w = self.writer.lock();
        self.flush_requested.store(false, Ordering::Release);
        if self.is_poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.cfg.background {
            self.ask_next(&mut w);
        }
        let Some(h) = self.hand_over(&mut w)? else {
            return Ok(());
        };
        drop(w);
        h.write(self)
    }

    /// Takes the write buffer out from under the writer lock (held by the caller) for
    /// [`Handover::write`], leaving a fresh one; `None` when it is empty. The handover holds
    /// `flush_lock` until its write is over.
    fn hand_over(&self, w: &mut Writer) -> Result<Option<Handover<'_>>> {
        if w.buf.is_empty() {
            return Ok(None);
        }
        let flush = self.flush_lock.lock();
        self.settle_inflight(w)?;
        let fresh = if w.spare.capacity() > 0 {
            std::mem::take(&mut w.spare)
        } else {
            Vec::with_capacity(self.cfg.write_buffer_bytes)
        };
        let data = Arc::new(std::mem::replace(&mut w.buf, fresh));
        let start = w.buf_start;
        w.inflight = Some((start, data.clone()));
        w.buf_start = w.tail;
        Ok(Some(Handover {
            base: w.open.clone(),
            start,
            data,
            _flush: flush,
        }))
    }

    pub(crate) fn after_write(&self, seq: u64) -> Result<()> {
        if self.cfg.sync == 0 {
            self.wait_durable(seq, true)
        } else {
            Ok(())
        }
    }

    /// Blocks until every mutation up to `seq` is on disk (group commit). `writer`: the caller
    /// is a writer that will likely write again (see [`Inner::lead`]).
    ///
    /// The first waiter with no fsync running becomes the leader ([`Inner::lead`]); the others
    /// park until they are woken by name: when their write is durable, when they are handed
    /// the lead, or when the backend is poisoned.
    pub(crate) fn wait_durable(&self, seq: u64, writer: bool) -> Result<()> {
        let mut st = self.sync_state();
        loop {
            if let Err(e) = self.check_poison() {
                // Whoever sees it first wakes the rest, so no one stays parked without a leader.
                let rest = std::mem::take(&mut st.waiters);
                drop(st);
                rest.into_iter().for_each(|(_, w)| w.wake());
                return Err(e);
            }
            if st.durable_seq >= seq {
                return Ok(());
            }
            if seq >= st.expect {
                // The writers the last fsync woke are all back: a gathering leader can sync.
                if let Some(leader) = st.gathering.take() {
                    leader.wake();
                }
            }
            if st.leader {
                let me = Waiter::me();
                st.waiters.push((seq, me.clone()));
                let spin = if st.last_sync < SPIN_BELOW {
                    st.last_sync * 2
                } else {
                    Duration::ZERO
                };
                drop(st);
                // Wake-ups may be spurious; the state is checked again either way.
                me.wait(Instant::now() + spin, None);
                st = self.sync_state();
                st.waiters.retain(|(_, w)| !Arc::ptr_eq(w, &me));
                continue;
            }
            st.leader = true;
            drop(st);
            self.lead(writer);
            st = self.sync_state();
        }
    }

    /// One leader's turn: one fsync, which covers the leader's own write.
    ///
    /// - Before it: if the previous fsync woke writers that have not appended their next
    ///   records yet, the leader waits for them (the last one back wakes it), at most half an
    ///   fsync, so this fsync carries them instead of the one after.
    /// - After it: it wakes exactly the writers it covered (a wake-up costs a context switch,
    ///   which on a small machine is what bounds group commit, so writers not yet covered stay
    ///   parked), and hands the lead to one of those still waiting, if any. Then it returns to
    ///   its caller, whose next write (when the leader is a `writer`) joins the next fsync.
    fn lead(&self, writer: bool) {
        let mut st = self.sync_state();
        if self.writer.lock().seq < st.expect {
            let me = Waiter::me();
            st.gathering = Some(me.clone());
            let until = Instant::now() + st.last_sync / 2;
            drop(st);
            me.wait(until, Some(until));
            st = self.sync_state();
            st.gathering = None;
        }
        drop(st);
        let began = Instant::now();
        let r = self.flush_and_sync();
        let took = began.elapsed();
        if let Err(e) = &r {
            self.poison(&format!("fsync failed: {e}"));
        }
        let mut st = self.sync_state();
        st.leader = false;
        st.last_sync = took;
        let mut wake = Vec::new();
        if self.is_poisoned.load(Ordering::Acquire) {
            wake.extend(st.waiters.drain(..).map(|(_, w)| w));
        } else if let Ok(done) = r {
            st.durable_seq = st.durable_seq.max(done);
            let durable = st.durable_seq;
            let mut i = 0;
            while i < st.waiters.len() {
                if st.waiters[i].0 <= durable {
                    wake.push(st.waiters.swap_remove(i).1);
                } else {
                    i += 1;
                }
            }
            // The writers woken (and this one) are expected back with their next records.
            st.expect = self.writer.lock().seq + wake.len() as u64 + writer as u64;
            // A writer still waiting takes over. (One that appends later finds no leader and
            // leads itself.)
            wake.extend(st.waiters.first().map(|(_, w)| w.clone()));
        }
        drop(st);
        wake.into_iter().for_each(|w| w.wake());
    }

    /// Flushes the buffer and fsyncs every base written since the last sync; returns the
    /// sequence number now durable.
    ///
    /// The buffer is handed over under the writer lock and written without it, as the
    /// flusher does: with the `pwrite` under the lock, every request appending meanwhile
    /// spun and yielded on it (under durable load, a quarter of the workers' time went to
    /// yields of ~250 µs each on two vCPUs).
    fn flush_and_sync(&self) -> Result<u64> {
        let (seq, mut bases, handed) = {
            let mut w = self.writer.lock();
            let handed = self.hand_over(&mut w)?;
            let mut bases = std::mem::take(&mut w.dirty);
            bases.push(w.open.clone());
            (w.seq, bases, handed)
        };
        if let Some(h) = handed {
            h.write(self)?;
        }
        bases.dedup_by(|a, b| Arc::ptr_eq(a, b));
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        for b in &bases {
            if let Err(e) = b.dev.sync() {
                // Keep them dirty; the backend is poisoned anyway.
                return Err(e.into());
            }
        }
        Ok(seq)
    }

    /// Everything acknowledged so far, durable.
    pub(crate) fn sync_all(&self) -> Result<()> {
        // Every mutation (including in-place rewrites of closed bases) takes a sequence
        // number, so waiting for the current one covers everything.
        let seq = self.writer.lock().seq;
        self.wait_durable(seq, false)
    }

    pub(crate) fn wake_background(&self) {
        self.shutdown_cv.notify_one();
    }

    /// One round of background work.
    pub(crate) fn maintenance(&self, now: bool) -> Result<()> {
        if now {
            // Otherwise the flusher thread does it.
            self.flush_in_background()?;
        }
        if self.cfg.sync > 0 || (now && self.cfg.sync == 0) {
            let due =
                self.last_sync.lock().elapsed() >= Duration::from_secs(self.cfg.sync.max(0) as u64);
            if now || due {
                self.sync_all()?;
                *self.last_sync.lock() = Instant::now();
            }
        }
        // Asked for now (tests, shutdown paths), every index; in the background, those of
        // bases closed a while ago (`INDEX_DELAY`).
        self.build_indexes(if now {
            Duration::ZERO
        } else {
            super::INDEX_DELAY
        })?;
        Ok(())
    }
}

impl Inner {
    /// For a background thread: waits on `cv` (with the `shutdown` mutex) unless `asked` is
    /// set, at most `timeout` (`None`: until woken). Returns false once the backend shuts down.
    fn wait_asked(&self, asked: &AtomicBool, cv: &Condvar, timeout: Option<Duration>) -> bool {
        let mut stop = self.shutdown.lock();
        if !*stop && !asked.load(Ordering::Acquire) {
            match timeout {
                Some(t) => {
                    cv.wait_for(&mut stop, t);
                }
                None => cv.wait(&mut stop),
            }
        }
        !*stop
    }
}

/// Starts the background threads: the flusher, which hands the write buffer to the OS every
/// `flush_interval_ms` and whenever it fills; and the background thread, which syncs every
/// `sync` seconds, writes the indexes of closed bases, and defrags bases past the threshold;
/// and the thread that makes the next base while the open one fills ([`Inner::prepare_next`]).
/// Flushing and the next base have threads of their own so a long index build, defrag or
/// fsync never holds them up.
pub(crate) fn spawn_background(inner: Arc<Inner>) -> Vec<std::thread::JoinHandle<()>> {
    let interval = Duration::from_millis(inner.cfg.flush_interval_ms.max(1));
    let flusher = inner.clone();
    let flusher = std::thread::Builder::new()
        .name("apsis-blob-flush".into())
        .spawn(move || {
            while flusher.wait_asked(&flusher.flush_requested, &flusher.flush_cv, Some(interval)) {
                if let Err(e) = flusher.flush_in_background() {
                    tracing::warn!(error = %e, "blob: flushing the write buffer failed");
                }
            }
        })
        .expect("spawning the blob flusher thread");
    // Makes the next base while the open one fills: a rotation then only switches to it.
    let preparer = inner.clone();
    let preparer = std::thread::Builder::new()
        .name("apsis-blob-next".into())
        .spawn(move || {
            while preparer.wait_asked(&preparer.next_wanted, &preparer.next_cv, None) {
                if preparer.next_wanted.swap(false, Ordering::AcqRel) {
                    preparer.prepare_next();
                }
            }
        })
        .expect("spawning the blob next-base thread");
    let background = std::thread::Builder::new()
        .name("apsis-blob-bg".into())
        .spawn(move || {
            let mut last_defrag_check = Instant::now();
            let mut last_drop_check = Instant::now();
            loop {
                {
                    let mut stop = inner.shutdown.lock();
                    if *stop {
                        return;
                    }
                    inner.shutdown_cv.wait_for(&mut stop, interval);
                    if *stop {
                        return;
                    }
                }
                if inner.is_poisoned.load(Ordering::Acquire) {
                    continue;
                }
                if let Err(e) = inner.maintenance(false) {
                    tracing::warn!(error = %e, "blob background maintenance failed");
                }
                if last_drop_check.elapsed() >= Duration::from_secs(1) {
                    last_drop_check = Instant::now();
                    if let Err(e) = inner.drop_superseded() {
                        tracing::warn!(error = %e, "blob: dropping superseded bases failed");
                    }
                }
                if last_defrag_check.elapsed() >= Duration::from_secs(10) {
                    last_defrag_check = Instant::now();
                    let settled = super::INDEX_DELAY;
                    if let Err(e) = inner.defrag_settled(inner.cfg.defrag_threshold, settled) {
                        if !matches!(e, StorageError::AlreadyRunning(_)) {
                            tracing::warn!(error = %e, "blob background defrag failed");
                        }
                    }
                }
            }
        })
        .expect("spawning the blob background thread");
    vec![flusher, preparer, background]
}
