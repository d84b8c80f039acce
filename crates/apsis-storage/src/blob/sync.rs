//! Getting bytes to the OS and to the disk: the write buffer, group commit, the background
//! thread, and poisoning after a failed write or fsync.
//!
//! Group commit: a writer under `sync = 0` waits until the durable sequence number passes its
//! own. If no sync is running it becomes the leader: it takes the writer lock just long enough
//! to flush the buffer and note the sequence number, then fsyncs without any lock while
//! others keep appending; everyone whose write was covered wakes up together, and the leader
//! syncs again at once if more writes arrived meanwhile.

use super::{Inner, Writer};
use crate::error::{Result, StorageError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most fsyncs a leader runs back to back before handing over (bounds its own latency).
const LEADER_ROUNDS: u32 = 8;

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
        self.is_poisoned.store(true, Ordering::Release);
        self.sync_cv.notify_all();
    }

    /// Hands the write buffer to the device.
    pub(crate) fn flush_buffer(&self, w: &mut Writer) -> Result<()> {
        if w.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = w.open.dev.write_at(&w.buf, w.buf_start) {
            // Acknowledged (buffered) records could not be written: stop accepting writes.
            let err = StorageError::from_io(e, "flushing the write buffer");
            self.poison(&format!("write buffer flush failed: {err}"));
            return Err(StorageError::Poisoned(err.to_string()));
        }
        w.buf.clear();
        w.buf_start = w.tail;
        w.open.flushed.store(w.tail, Ordering::Release);
        Ok(())
    }

    pub(crate) fn after_write(&self, seq: u64) -> Result<()> {
        if self.cfg.sync == 0 {
            self.wait_durable(seq)
        } else {
            Ok(())
        }
    }

    /// Blocks until every mutation up to `seq` is on disk (group commit).
    ///
    /// The first waiter with no fsync running becomes the leader. After each fsync it wakes
    /// everyone covered, and if more writes arrived meanwhile it syncs again at once (up to
    /// [`LEADER_ROUNDS`] fsyncs, then it hands over), so the disk syncs back to back while the
    /// writers just woken append their next records: the fsync of one group overlaps the
    /// wake-up and append of the next.
    pub(crate) fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut st = self.sync_state();
        loop {
            if self.is_poisoned.load(Ordering::Acquire) {
                return Err(StorageError::Poisoned(
                    self.poisoned.lock().clone().unwrap_or_default(),
                ));
            }
            if st.durable_seq >= seq {
                return Ok(());
            }
            if st.leader {
                st = self.sync_cv.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.leader = true;
            drop(st);
            let mut rounds = 0;
            loop {
                let r = self.flush_and_sync();
                rounds += 1;
                let mut st = self.sync_state();
                let done = match r {
                    Ok(done) => done,
                    Err(e) => {
                        self.poison(&format!("fsync failed: {e}"));
                        st.leader = false;
                        self.sync_cv.notify_all();
                        break;
                    }
                };
                st.durable_seq = st.durable_seq.max(done);
                self.sync_cv.notify_all();
                let more = self.writer.lock().seq > done;
                if !more || (rounds >= LEADER_ROUNDS && st.durable_seq >= seq) {
                    st.leader = false;
                    if more {
                        // Someone still waits: one of them takes over.
                        self.sync_cv.notify_all();
                    }
                    break;
                }
            }
            st = self.sync_state();
        }
    }

    /// Flushes the buffer and fsyncs every base written since the last sync; returns the
    /// sequence number now durable.
    fn flush_and_sync(&self) -> Result<u64> {
        let (seq, mut bases) = {
            let mut w = self.writer.lock();
            self.flush_buffer(&mut w)?;
            let mut bases = std::mem::take(&mut w.dirty);
            bases.push(w.open.clone());
            (w.seq, bases)
        };
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
        self.wait_durable(seq)
    }

    pub(crate) fn wake_background(&self) {
        self.shutdown_cv.notify_all();
    }

    /// One round of background work.
    pub(crate) fn maintenance(&self, now: bool) -> Result<()> {
        {
            let mut w = self.writer.lock();
            if !w.buf.is_empty() && !self.is_poisoned.load(Ordering::Acquire) {
                self.flush_buffer(&mut w)?;
            }
        }
        if self.cfg.sync > 0 || (now && self.cfg.sync == 0) {
            let due =
                self.last_sync.lock().elapsed() >= Duration::from_secs(self.cfg.sync.max(0) as u64);
            if now || due {
                self.sync_all()?;
                *self.last_sync.lock() = Instant::now();
            }
        }
        self.build_pending_indexes()?;
        Ok(())
    }
}

/// Starts the background thread: flushes the buffer every `flush_interval_ms`, syncs every
/// `sync` seconds, writes the indexes of closed bases, and defrags bases past the threshold.
pub(crate) fn spawn_background(inner: Arc<Inner>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("apsis-blob-bg".into())
        .spawn(move || {
            let interval = Duration::from_millis(inner.cfg.flush_interval_ms.max(1));
            let mut last_defrag_check = Instant::now();
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
                if last_defrag_check.elapsed() >= Duration::from_secs(10) {
                    last_defrag_check = Instant::now();
                    if let Err(e) = inner.defrag(inner.cfg.defrag_threshold) {
                        if !matches!(e, StorageError::AlreadyRunning(_)) {
                            tracing::warn!(error = %e, "blob background defrag failed");
                        }
                    }
                }
            }
        })
        .expect("spawning the blob background thread")
}
