//! Online defrag: rewrites a closed base without its dead records.
//!
//! One base at a time, so the extra space needed is at most one base's live bytes. The open
//! base is never touched. While a base is being rewritten, writers append instead of
//! rewriting its records in place, and each record is copied under its key's read lock, so
//! nothing written concurrently is lost. The rewritten base keeps its number (write order)
//! and gets a new generation; it is installed in a new slot and every index entry is moved
//! only if it still points at the old copy. Tombstones older than `tombstone_ttl_secs` are
//! dropped, but only when no older base still holds a record of that key (which would
//! otherwise come back at the next restart). Everything is made durable before the rewritten
//! base replaces the old one, so a dropped record's successor cannot be lost in a crash.

use super::format::*;
use super::index::Loc;
use super::{base_name, index_name, random_u64, Base, Inner};
use crate::error::{Result, StorageError};
use crate::types::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Moved {
    key: Key,
    old_off: u64,
    new_off: Option<u64>,
    pending: bool,
    hdr: RecordHeader,
}

/// Keeps defrag's I/O under a byte rate.
struct Throttle {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    fn consume(&mut self, n: u64) {
        if self.rate == 0 {
            return;
        }
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let spent = self.start.elapsed();
        if due > spent {
            std::thread::sleep(due - spent);
        }
    }
}

struct Flag<'a>(&'a AtomicBool);
impl Drop for Flag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Inner {
    /// Defrags every closed base whose dead fraction is at least `threshold`.
    pub(crate) fn defrag(&self, threshold: f64) -> Result<crate::types::DefragReport> {
        self.defrag_settled(threshold, Duration::ZERO)
    }

    /// [`Inner::defrag`] of the bases closed at least `settled` ago (the background pass
    /// waits [`super::INDEX_DELAY`], as index builds do: a base closed a moment ago may be
    /// dropped whole within a second, and rewriting it first is wasted).
    pub(crate) fn defrag_settled(
        &self,
        threshold: f64,
        settled: Duration,
    ) -> Result<crate::types::DefragReport> {
        let Some(_g) = self.defrag_lock.try_lock() else {
            return Err(StorageError::AlreadyRunning("defrag"));
        };
        self.check_writable()?;
        // A stop asked for before this pass began does not cancel it (cleared before the
        // pass shows as running, so a stop that sees it running is never lost).
        self.defrag_stop.store(false, Ordering::Release);
        self.defrag_running.store(true, Ordering::Release);
        let _running = Flag(&self.defrag_running);
        // Closed bases need their index files (the tombstone rule reads them); those still
        // waiting for theirs are left for a later pass.
        self.build_indexes(settled)?;
        let waiting: Vec<u64> = self
            .index_queue
            .lock()
            .iter()
            .map(|(b, _)| b.number)
            .collect();
        let mut report = crate::types::DefragReport::default();
        let mut bases: Vec<Arc<Base>> = self
            .bases
            .read()
            .iter()
            .flatten()
            .filter(|b| !b.open.load(Ordering::Acquire) && !waiting.contains(&b.number))
            .cloned()
            .collect();
        bases.sort_by_key(|b| b.number);
        let now = Timestamp::now();
        for b in bases {
            let st = b.stats();
            let body = st.size_bytes.saturating_sub(BASE_HEADER_SIZE);
            let has_old_tombstones = st.removed_records > 0;
            if body == 0 || (st.dead_bytes == 0 && !has_old_tombstones) {
                continue;
            }
            if (st.dead_bytes as f64) < threshold * body as f64
                && !(threshold == 0.0 && has_old_tombstones)
            {
                continue;
            }
            if self.defrag_stop.load(Ordering::Acquire) {
                report.stopped = true;
                break;
            }
            self.defrag_base(&b, now, &mut report)?;
            if report.stopped {
                break;
            }
        }
        self.not_droppable.lock().clear();
        self.defrag_completed.fetch_add(1, Ordering::Relaxed);
        Ok(report)
    }

    fn defrag_base(
        &self,
        old: &Arc<Base>,
        now: Timestamp,
        report: &mut crate::types::DefragReport,
    ) -> Result<()> {
        let live = old.live_bytes.load(Ordering::Relaxed);
        let free = self.dir.free_space()?;
        if free < live + (1 << 20) {
            return Err(StorageError::NoSpace(format!(
                "defrag of base {} needs {live} free bytes, {free} are free",
                old.number
            )));
        }
        old.defragging.store(true, Ordering::Release);
        let _flag = Flag(&old.defragging);
        if self.holds_nothing_current(old) {
            return self.drop_whole(old, report);
        }
        let tmp = format!("{}.tmp", base_name(old.number));
        // The copy goes into the kept file when there is one (its pages are cached, see
        // `reuse_bases`): written over from its start and cut at its last record, so nothing
        // of its earlier life stays in the closed base.
        let (dev, reused) = match self.recycle(&tmp, None) {
            Some(kept) => (kept.dev, true),
            None => (self.dir.open(&tmp, true)?, false),
        };
        let generation = random_u64();
        // `Ok(None)`: stopped part way; the old base stays as it was.
        let result = (|| -> Result<Option<(Vec<Moved>, u64)>> {
            if !reused {
                dev.set_len(0)?;
            }
            dev.allocate(live + BASE_HEADER_SIZE)
                .map_err(|e| StorageError::from_io(e, "defrag"))?;
            dev.write_at(
                &BaseHeader {
                    number: old.number,
                    generation,
                    tagged: true,
                }
                .encode(),
                0,
            )
            .map_err(|e| StorageError::from_io(e, "defrag"))?;
            let mut moves = Vec::new();
            let mut out = BASE_HEADER_SIZE;
            let mut throttle = Throttle {
                rate: self.cfg.defrag_rate_bytes,
                start: Instant::now(),
                bytes: 0,
            };
            let end = old.end.load(Ordering::Acquire);
            let mut sc = old.scanner(BASE_HEADER_SIZE, end);
            while let Some((off, h)) = sc.next_record()? {
                if self.defrag_stop.load(Ordering::Acquire) {
                    return Ok(None);
                }
                let loc = Loc::new(old.slot, off);
                let _g = self.key_lock(&h.key).read();
                let pending = self.pending.lock().get(&h.key) == Some(&loc);
                if !pending && self.index.get(&h.key) != Some(loc) {
                    continue; // dead
                }
                // Re-read under the lock: the record may have been rewritten in place
                // before this base was marked.
                let mut rec = vec![0u8; h.disk_size() as usize];
                old.dev.read_at(&mut rec, off)?;
                let hdr = old
                    .record_header(&rec)
                    .filter(|x| x.key == h.key && x.disk_size() == h.disk_size())
                    .unwrap_or(h);
                let expired = hdr.is_removed()
                    && now.sec.saturating_sub(hdr.timestamp.sec) >= self.cfg.tombstone_ttl_secs;
                if !pending && expired && !self.older_base_has(&hdr.key, old.number)? {
                    moves.push(Moved {
                        key: hdr.key,
                        old_off: off,
                        new_off: None,
                        pending,
                        hdr,
                    });
                    continue;
                }
                // The copy is the new file's record: its tag (the old base may be untagged).
                let stamped = RecordHeader {
                    tag: record_tag(old.number),
                    ..hdr
                };
                rec[..RECORD_HEADER_SIZE as usize].copy_from_slice(&stamped.encode());
                dev.write_at(&rec, out)
                    .map_err(|e| StorageError::from_io(e, "defrag"))?;
                moves.push(Moved {
                    key: hdr.key,
                    old_off: off,
                    new_off: Some(out),
                    pending,
                    hdr,
                });
                out += rec.len() as u64;
                throttle.consume(2 * rec.len() as u64);
            }
            if reused {
                dev.set_len(out)?;
            }
            dev.sync()?;
            Ok(Some((moves, out)))
        })();
        let (moves, new_end) = match result {
            Ok(Some(r)) => r,
            Ok(None) => {
                report.stopped = true;
                let _ = self.dir.remove(&tmp);
                return Ok(());
            }
            Err(e) => {
                let _ = self.dir.remove(&tmp);
                return Err(e);
            }
        };
        let map = super::map_base(&self.cfg, &dev, new_end);
        let new_base = self.install_base(|slot| Base {
            number: old.number,
            generation,
            tag: record_tag(old.number),
            slot,
            map,
            dev: dev.clone(),
            end: AtomicU64::new(new_end),
            flushed: AtomicU64::new(new_end),
            live_bytes: AtomicU64::new(0),
            live_records: AtomicU64::new(0),
            removed_records: AtomicU64::new(0),
            open: AtomicBool::new(false),
            defragging: AtomicBool::new(false),
            written_here: true,
        })?;
        // Move index entries that still point at the old copies.
        for m in &moves {
            let _g = self.key_lock(&m.key).write();
            let old_loc = Loc::new(old.slot, m.old_off);
            let new_loc = m.new_off.map(|o| Loc::new(new_base.slot, o));
            if m.pending {
                let mut p = self.pending.lock();
                if let (Some(cur), Some(n)) = (p.get_mut(&m.key), new_loc) {
                    if *cur == old_loc {
                        *cur = n;
                        new_base
                            .live_bytes
                            .fetch_add(m.hdr.disk_size(), Ordering::Relaxed);
                    }
                }
            } else if self.index.replace_if(&m.key, old_loc, new_loc) {
                match new_loc {
                    Some(_) => new_base.add_live(&m.hdr),
                    None => report.tombstones_dropped += 1,
                }
            }
        }
        // Every record left out was superseded by a newer version; before the old copies
        // disappear from disk, those versions must be durable too (under `sync != 0` they
        // may not be yet), or a crash would lose both.
        self.sync_all()?;
        // Swap the files: data first, then its index (a mismatch is rebuilt at start).
        self.dir.rename(&tmp, &base_name(old.number))?;
        self.dir.sync_dir()?;
        let old_end = old.end.load(Ordering::Acquire);
        let empty = new_base.live_bytes.load(Ordering::Relaxed) == 0;
        if empty {
            // Nothing refers to it any more: remove the base entirely.
            self.delete_base(&new_base, report)?;
        } else {
            self.write_index(&new_base)?;
        }
        self.bases.write()[old.slot as usize] = None;
        report.bases_rewritten += 1;
        report.records_copied += moves.iter().filter(|m| m.new_off.is_some()).count() as u64;
        report.bytes_reclaimed += old_end.saturating_sub(if empty { 0 } else { new_end });
        Ok(())
    }

    /// Drops `old`, a closed base whose every record was superseded, without reading it
    /// (nothing can come to point into a closed base that nothing points into). The versions
    /// that superseded them must be durable before the old copies go.
    fn drop_whole(&self, old: &Arc<Base>, report: &mut crate::types::DefragReport) -> Result<()> {
        // Its own bytes need not reach the disk: only those of the versions after them.
        self.writer.lock().dirty.retain(|d| !Arc::ptr_eq(d, old));
        self.sync_all()?;
        let old_end = old.end.load(Ordering::Acquire);
        self.delete_base(old, report)?;
        report.bases_rewritten += 1;
        report.bytes_reclaimed += old_end;
        Ok(())
    }

    /// Drops every closed base that holds nothing current, between defrag passes (the
    /// background thread asks every second): its disk space comes back sooner, and its file
    /// can become the next base ([`Inner::recycle`]) while its pages are still cached. Does
    /// nothing while a defrag pass runs (it drops them itself).
    pub(crate) fn drop_superseded(&self) -> Result<crate::types::DefragReport> {
        let mut report = crate::types::DefragReport::default();
        let skip = self.not_droppable.lock().clone();
        let candidates: Vec<Arc<Base>> = self
            .bases
            .read()
            .iter()
            .flatten()
            .filter(|b| {
                !b.open.load(Ordering::Acquire)
                    && !skip.contains(&b.number)
                    && b.end.load(Ordering::Acquire) > BASE_HEADER_SIZE
                    && b.counts_nothing()
            })
            .cloned()
            .collect();
        if candidates.is_empty() || self.check_writable().is_err() {
            return Ok(report);
        }
        let Some(_g) = self.defrag_lock.try_lock() else {
            return Ok(report);
        };
        for b in candidates {
            if !self.holds_nothing_current(&b) {
                self.not_droppable.lock().push(b.number);
                continue;
            }
            // Dropped: no index is needed (and the queue would hold the base).
            self.unqueue_index(&b);
            b.defragging.store(true, Ordering::Release);
            let _flag = Flag(&b.defragging);
            self.drop_whole(&b, &mut report)?;
        }
        Ok(report)
    }

    /// Retires base `b` from its slot and removes its data and index files (the data file
    /// may be kept to become the next base instead: [`Inner::keep_file`]).
    fn delete_base(&self, b: &Arc<Base>, report: &mut crate::types::DefragReport) -> Result<()> {
        self.bases.write()[b.slot as usize] = None;
        if !self.keep_file(b) {
            self.dir.remove(&base_name(b.number))?;
        }
        let _ = self.dir.remove(&index_name(b.number));
        self.dir.sync_dir()?;
        report.bases_deleted += 1;
        Ok(())
    }

    /// Whether no key's current record, tombstone or reservation is in `b`: its counters say
    /// so, and the index and the pending map confirm it (the counters decide when to look).
    fn holds_nothing_current(&self, b: &Base) -> bool {
        b.counts_nothing()
            && !self.pending.lock().values().any(|l| l.slot() == b.slot)
            && !self.index.points_into(b.slot)
    }

    /// Whether a base older than `number` may hold a record of `key` (then a tombstone for
    /// it must stay). Reads the older bases' sorted indexes by binary search.
    fn older_base_has(&self, key: &Key, number: u64) -> Result<bool> {
        let older: Vec<Arc<Base>> = self
            .bases
            .read()
            .iter()
            .flatten()
            .filter(|b| b.number < number)
            .cloned()
            .collect();
        for b in older {
            let Some(dev) = self.dir.open(&index_name(b.number), false).ok() else {
                return Ok(true);
            };
            let mut hb = [0u8; INDEX_HEADER_SIZE as usize];
            if dev.read_at(&mut hb, 0).is_err() {
                return Ok(true);
            }
            let Ok(h) = IndexHeader::decode(&hb) else {
                return Ok(true);
            };
            if h.base_generation != b.generation {
                return Ok(true);
            }
            let (mut lo, mut hi) = (0u64, h.entries);
            let mut kb = [0u8; KEY_SIZE];
            while lo < hi {
                let mid = (lo + hi) / 2;
                dev.read_at(&mut kb, INDEX_HEADER_SIZE + mid * INDEX_ENTRY_SIZE)?;
                match kb.cmp(&key.0) {
                    std::cmp::Ordering::Equal => return Ok(true),
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                }
            }
        }
        Ok(false)
    }
}
