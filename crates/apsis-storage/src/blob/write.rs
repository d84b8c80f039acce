//! Every write mode, tombstones, and appending records to the open base.
//!
//! Writers hold the key's stripe lock (exclusive) for the whole read-modify-write, and the
//! writer lock only while bytes go into the buffer or the device. The new location enters the
//! index after the bytes are in place, so a reader never sees an index entry without its data.

use super::format::*;
use super::index::{Loc, OFFSET_MAX};
use super::{Base, Inner, Writer};
use crate::backend::*;
use crate::error::{Result, StorageError};
use crate::types::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The record a key currently resolves to, with the first bytes of it already read.
pub(crate) struct Current {
    pub base: Arc<Base>,
    pub loc: Loc,
    pub hdr: RecordHeader,
    /// The record's first bytes as read with the header (empty when the header was decoded
    /// in the base's memory map).
    pub head: Vec<u8>,
}

/// What the index says about a key.
pub(crate) enum Located {
    Absent,
    Found(Current),
    /// The index points at a record whose header fails its checksum.
    Damaged(Loc),
}

/// Starts loading every cache line of `src` into the CPU's caches, all at once: a record read
/// from the map for the first time then costs about one memory latency, instead of one for
/// its header and then more as the data's checksum walks into it (a 1 KiB GET's largest cost
/// on the server was these waits). Prefetches, not loads: the CPU does not wait for them, so
/// the header is decoded while the rest arrives (loads of each line held the request until
/// the last had come).
fn warm(src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        // From the start of the first line, so that the last line, however `src` straddles
        // line boundaries, is loaded too.
        let skew = src.as_ptr() as usize % 64;
        let first = src.as_ptr().wrapping_sub(skew);
        for off in (0..skew + src.len()).step_by(64) {
            // SAFETY: a prefetch only hints the cache and never faults, whatever the address
            // (this one is on a line that holds bytes of `src`).
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    first.wrapping_add(off).cast(),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut x = 0u8;
        for b in src.iter().step_by(64) {
            x ^= *b;
        }
        std::hint::black_box(x);
    }
}

impl Inner {
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.is_poisoned.load(Ordering::Acquire) {
            let msg = self.poisoned.lock().clone().unwrap_or_default();
            return Err(StorageError::Poisoned(msg));
        }
        if self.read_only.load(Ordering::Acquire) {
            return Err(StorageError::ReadOnly);
        }
        Ok(())
    }

    /// Resolves a key through the index, confirming the full key in the record header, and
    /// reads up to `prefetch` bytes of the record. Retries when defrag moved it meanwhile.
    pub(crate) fn locate(&self, key: &Key, prefetch: u64) -> Result<Located> {
        self.locate_in(key, prefetch, false)
    }

    /// The same for the prepared (uncommitted) reservation of a key.
    pub(crate) fn locate_pending(&self, key: &Key) -> Result<Located> {
        self.locate_in(key, RECORD_HEADER_SIZE, true)
    }

    fn locate_in(&self, key: &Key, prefetch: u64, pending: bool) -> Result<Located> {
        for _ in 0..64 {
            let loc = if pending {
                self.pending.lock().get(key).copied()
            } else {
                self.index.get(key)
            };
            let Some(loc) = loc else {
                return Ok(Located::Absent);
            };
            let moved = || {
                let now = if pending {
                    self.pending.lock().get(key).copied()
                } else {
                    self.index.get(key)
                };
                now != Some(loc)
            };
            let Some(base) = self.base(loc.slot()) else {
                continue;
            };
            let end = base.end.load(Ordering::Acquire);
            // From a memory map a second read costs no system call: read just the header,
            // but load what a read will use first, all at once.
            let prefetch = match base.map {
                Some(_) => {
                    if prefetch > RECORD_HEADER_SIZE {
                        let want = prefetch.min(end.saturating_sub(loc.offset()));
                        if let Some(lines) = Self::mapped(&base, loc.offset(), want as usize) {
                            warm(lines);
                        }
                    }
                    RECORD_HEADER_SIZE
                }
                None => prefetch,
            };
            let len = prefetch
                .max(RECORD_HEADER_SIZE)
                .min(end.saturating_sub(loc.offset()));
            // From the map, the header is decoded where it lies and no copy is kept.
            let mapped = Self::mapped(&base, loc.offset(), len as usize)
                .filter(|_| len >= RECORD_HEADER_SIZE);
            let read = if let Some(src) = mapped {
                Ok((base.record_header(src), Vec::new()))
            } else if len < RECORD_HEADER_SIZE {
                Err(StorageError::Corrupt(
                    "the base ends inside the record".into(),
                ))
            } else {
                self.read_vec(&base, loc.offset(), len as usize)
                    .map(|head| (base.record_header(&head), head))
            };
            let (decoded, head) = match read {
                Ok(h) => h,
                Err(_) if moved() => continue,
                // The disk failed to read (EIO): that is not a damaged record, and the
                // caller must see the disk's error, not EILSEQ.
                Err(StorageError::Io(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                    return Err(StorageError::Io(e))
                }
                Err(_) => return Ok(Located::Damaged(loc)),
            };
            match decoded {
                Some(hdr) if hdr.key == *key => {
                    return Ok(Located::Found(Current {
                        base,
                        loc,
                        hdr,
                        head,
                    }))
                }
                Some(_) if !moved() => return Ok(Located::Absent), // another key's fingerprint
                None if !moved() => return Ok(Located::Damaged(loc)),
                _ => continue,
            }
        }
        Err(StorageError::Io(std::io::Error::other(
            "record kept moving during lookup",
        )))
    }

    /// Reads `buf.len()` bytes of a base at `off`, from the write buffer where they still are.
    pub(crate) fn read_region(&self, base: &Base, off: u64, buf: &mut [u8]) -> Result<()> {
        let end = off + buf.len() as u64;
        if !base.open.load(Ordering::Acquire) || end <= base.flushed.load(Ordering::Acquire) {
            if let Some(src) = Self::mapped(base, off, buf.len()) {
                buf.copy_from_slice(src);
                return Ok(());
            }
            return base.dev.read_at(buf, off).map_err(Into::into);
        }
        let w = self.writer.lock();
        read_region_locked(&w, base, off, buf)
    }

    /// `len` bytes at `off` straight from the base's read map, when they are on the device
    /// (a closed base, or the flushed part of the open one) and the base is mapped.
    pub(crate) fn mapped(base: &Base, off: u64, len: usize) -> Option<&[u8]> {
        let end = off.checked_add(len as u64)?;
        if base.open.load(Ordering::Acquire) && end > base.flushed.load(Ordering::Acquire) {
            return None;
        }
        base.map.as_ref()?.get(off as usize..end as usize)
    }

    /// [`Inner::read_region`] into a new buffer: copied once from the map when it can be
    /// (no zero-fill first).
    pub(crate) fn read_vec(&self, base: &Base, off: u64, len: usize) -> Result<Vec<u8>> {
        if let Some(src) = Self::mapped(base, off, len) {
            return Ok(src.to_vec());
        }
        let mut b = vec![0u8; len];
        self.read_region(base, off, &mut b)?;
        Ok(b)
    }

    /// Writes a whole-or-part request (see [`WriteOp`]); waits for durability under `sync = 0`.
    pub(crate) fn write(&self, key: &Key, req: &WriteRequest<'_>) -> Result<RecordInfo> {
        self.check_writable()?;
        let op = WriteOp::classify(req)?;
        let (info, seq) = {
            let _g = self.key_lock(key).write();
            let done = self.write_locked(key, req, op)?;
            if matches!(
                op,
                WriteOp::Replace | WriteOp::Patch { .. } | WriteOp::Append
            ) {
                // A committed write supersedes a prepared reservation of the key (the map
                // is nearly always empty: then not even hashed).
                let p = {
                    let mut pending = self.pending.lock();
                    if pending.is_empty() {
                        None
                    } else {
                        pending.remove(key)
                    }
                };
                if let Some(b) = p.and_then(|p| self.base(p.slot()).map(|b| (b, p))) {
                    self.forget_pending(&b.0, b.1);
                }
            }
            done
        };
        self.after_write(seq)?;
        Ok(info)
    }

    fn write_locked(
        &self,
        key: &Key,
        req: &WriteRequest<'_>,
        op: WriteOp,
    ) -> Result<(RecordInfo, u64)> {
        let located = self.locate(key, RECORD_HEADER_SIZE)?;
        let (cur, damaged) = match located {
            Located::Found(c) => (Some(c), None),
            Located::Damaged(l) => (None, Some(l)),
            Located::Absent => (None, None),
        };
        let live = cur.as_ref().filter(|c| !c.hdr.is_removed());
        let stored = cur.as_ref().map(|c| (c.hdr.timestamp, c.hdr.is_removed()));
        // The stored object is hashed where it lies, not copied out first.
        check_cas(req, stored, || match live {
            Some(c) => self.with_data(c, 0, c.hdr.data_size, true, data_checksum),
            None => Ok(data_checksum(&[])),
        })?;
        // Checksums are always stored; NOCSUM is remembered for the client's sake.
        let csum_flag = record_flags::CHUNKED_CSUM | nocsum_flag(req);
        let new_header = |flags: u64, data_size: u64, capacity: u64| RecordHeader {
            key: *key,
            flags,
            data_size,
            capacity,
            timestamp: req.timestamp,
            user_flags: req.user_flags,
            chunk_log2: self.cfg.chunk_log2,
            // Stamped where the header is written (`append_locked`, `write_header_locked`).
            tag: 0,
        };
        let len = req.data.len() as u64;
        match op {
            WriteOp::Replace => {
                if let Some(c) = live.filter(|c| self.can_rewrite(c, len)) {
                    let h = new_header(csum_flag, len, c.hdr.capacity);
                    return self.rewrite_in_place(c, h, 0, req.data, 0);
                }
                let h = new_header(csum_flag, len, len);
                self.append_version(key, cur.as_ref(), damaged, h, 0, req.data)
            }
            WriteOp::Patch { .. } | WriteOp::Append => {
                let old_size = live.map_or(0, |c| c.hdr.data_size);
                let (at, extra) = match op {
                    WriteOp::Patch { offset } => (offset, 0),
                    // As eblob: an APPEND that creates the object is a plain record; only
                    // appending to an existing one marks it APPEND.
                    _ => (
                        old_size,
                        if live.is_some() {
                            record_flags::APPEND
                        } else {
                            0
                        },
                    ),
                };
                let new_size = old_size.max(at + len);
                if let Some(c) = live.filter(|c| self.can_rewrite(c, new_size)) {
                    let h = new_header(csum_flag | extra, new_size, c.hdr.capacity);
                    return self.rewrite_in_place(c, h, at, req.data, old_size);
                }
                check_object_size(new_size)?;
                let mut data = match live {
                    Some(c) => self.read_data(c, 0, old_size, true)?,
                    None => Vec::new(),
                };
                data.resize(new_size as usize, 0);
                data[at as usize..(at + len) as usize].copy_from_slice(req.data);
                // Appended objects tend to grow again: reserve room so the next appends
                // land in place.
                let capacity = if extra != 0 {
                    (new_size * 2).min(new_size + (64 << 20))
                } else {
                    new_size
                };
                let h = new_header(csum_flag | extra, new_size, capacity);
                self.append_version(key, cur.as_ref(), damaged, h, 0, &data)
            }
            WriteOp::Prepare {
                reserve,
                offset,
                commit,
            } => {
                check_reservation(reserve, offset, len, commit)?;
                check_object_size(reserve)?;
                let h = new_header(csum_flag | record_flags::UNCOMMITTED, 0, reserve);
                let (info, seq) =
                    self.append_version(key, cur.as_ref(), damaged, h, offset, req.data)?;
                match commit {
                    Some(size) => {
                        let p = self.expect_pending(key)?;
                        self.commit_locked(key, &p, cur.as_ref(), damaged, req, size)
                    }
                    None => Ok((info, seq)),
                }
            }
            WriteOp::Plain { offset, commit } => {
                let p = self.expect_pending(key)?;
                check_reservation(p.hdr.capacity, offset, len, commit)?;
                let seq = {
                    let mut w = self.writer.lock();
                    let at = p.loc.offset() + p.hdr.data_start() + offset;
                    self.write_region_locked(&mut w, &p.base, at, req.data)?;
                    w.seq += 1;
                    w.seq
                };
                match commit {
                    Some(size) => self.commit_locked(key, &p, cur.as_ref(), damaged, req, size),
                    // The reply carries this write's timestamp, as eblob stamps each plain
                    // write; the record itself is stamped at commit.
                    None => {
                        let mut info = record_info(&p.hdr, &p.base, p.loc);
                        info.timestamp = req.timestamp;
                        Ok((info, seq))
                    }
                }
            }
        }
    }

    fn expect_pending(&self, key: &Key) -> Result<Current> {
        match self.locate_pending(key)? {
            Located::Found(p) => Ok(p),
            Located::Absent => Err(StorageError::NotFound),
            Located::Damaged(_) => Err(StorageError::Corrupt(
                "the prepared record's header fails its checksum".into(),
            )),
        }
    }

    /// Publishes a prepared record with its final size: checksums, then the header, then the
    /// index. Its previous committed version (if any) becomes dead.
    fn commit_locked(
        &self,
        key: &Key,
        p: &Current,
        cur: Option<&Current>,
        damaged: Option<Loc>,
        req: &WriteRequest<'_>,
        size: u64,
    ) -> Result<(RecordInfo, u64)> {
        let mut h = p.hdr;
        h.flags &= !(record_flags::UNCOMMITTED | record_flags::NOCSUM | record_flags::CHUNKED_CSUM);
        h.flags |= record_flags::CHUNKED_CSUM | nocsum_flag(req);
        h.data_size = size;
        h.timestamp = req.timestamp;
        h.user_flags = req.user_flags;
        let seq = {
            let mut w = self.writer.lock();
            self.write_checksums_locked(&mut w, p, &h, 0)?;
            self.write_header_locked(&mut w, &p.base, p.loc.offset(), &h)?;
            w.seq += 1;
            w.seq
        };
        self.pending.lock().remove(key);
        p.base.live_records.fetch_add(1, Ordering::Relaxed);
        self.index_replace(key, p.loc, cur, damaged);
        Ok((record_info(&h, &p.base, p.loc), seq))
    }

    fn can_rewrite(&self, c: &Current, new_size: u64) -> bool {
        self.cfg.overwrite_in_place
            && !c.hdr.is_uncommitted()
            && new_size <= c.hdr.capacity
            && !c.base.defragging.load(Ordering::Acquire)
    }

    /// Rewrites a record inside its reservation: `data` at `at`, zeros over any gap after the
    /// old end, checksums of the chunks that changed, and the header last.
    fn rewrite_in_place(
        &self,
        c: &Current,
        h: RecordHeader,
        at: u64,
        data: &[u8],
        old_size: u64,
    ) -> Result<(RecordInfo, u64)> {
        let mut w = self.writer.lock();
        let data_off = c.loc.offset() + h.data_start();
        if at > old_size {
            let zeros = vec![0u8; (at - old_size).min(1 << 20) as usize];
            let mut pos = old_size;
            while pos < at {
                let n = (at - pos).min(zeros.len() as u64) as usize;
                self.write_region_locked(&mut w, &c.base, data_off + pos, &zeros[..n])?;
                pos += n as u64;
            }
        }
        self.write_region_locked(&mut w, &c.base, data_off + at, data)?;
        if h.verifies() {
            let first_chunk = if c.hdr.verifies() {
                at.min(old_size) / h.chunk_size()
            } else {
                0
            };
            if at == 0 && data.len() as u64 == h.data_size {
                let area = encode_checksums(&h, data);
                self.write_region_locked(
                    &mut w,
                    &c.base,
                    c.loc.offset() + RECORD_HEADER_SIZE,
                    &area[..(h.chunk_count() * 4) as usize],
                )?;
            } else {
                self.write_checksums_locked(&mut w, c, &h, first_chunk)?;
            }
        }
        self.write_header_locked(&mut w, &c.base, c.loc.offset(), &h)?;
        w.seq += 1;
        Ok((record_info(&h, &c.base, c.loc), w.seq))
    }

    /// Recomputes the checksums of chunks `first..` of a record from the bytes now stored.
    fn write_checksums_locked(
        &self,
        w: &mut Writer,
        c: &Current,
        h: &RecordHeader,
        first: u64,
    ) -> Result<()> {
        if !h.verifies() || h.data_size == 0 {
            return Ok(());
        }
        let chunk = h.chunk_size();
        let last = h.data_size.div_ceil(chunk);
        let data_off = c.loc.offset() + h.data_start();
        let mut sums = Vec::with_capacity(((last - first.min(last)) * 4) as usize);
        let mut buf = vec![0u8; chunk as usize];
        for i in first..last {
            let n = chunk.min(h.data_size - i * chunk) as usize;
            read_region_locked(w, &c.base, data_off + i * chunk, &mut buf[..n])?;
            sums.extend_from_slice(&crc(&buf[..n]).to_le_bytes());
        }
        self.write_region_locked(
            w,
            &c.base,
            c.loc.offset() + RECORD_HEADER_SIZE + first * 4,
            &sums,
        )
    }

    /// Appends a new record for `key` and makes it current (or pending, when uncommitted).
    fn append_version(
        &self,
        key: &Key,
        cur: Option<&Current>,
        damaged: Option<Loc>,
        h: RecordHeader,
        data_at: u64,
        data: &[u8],
    ) -> Result<(RecordInfo, u64)> {
        let csums = if h.is_uncommitted() {
            vec![0u8; h.csum_area() as usize]
        } else {
            encode_checksums(&h, data)
        };
        // Counted and described under the writer lock: no reference to the open base is
        // taken (its count is one cache line every writer would bounce between CPUs).
        let (loc, seq, info) = {
            let mut w = self.writer.lock();
            let loc = self.append_locked(&mut w, &h, &csums, data_at, data)?;
            w.open.add_live(&h);
            (loc, w.seq, record_info(&h, &w.open, loc))
        };
        if h.is_uncommitted() {
            let old = self.pending.lock().insert(*key, loc);
            if let Some(old) = old {
                if let Some(b) = self.base(old.slot()) {
                    self.forget_pending(&b, old);
                }
            }
        } else {
            self.index_replace(key, loc, cur, damaged);
        }
        Ok((info, seq))
    }

    /// Points the index at `loc` and counts the key's previous record as dead.
    fn index_replace(&self, key: &Key, loc: Loc, cur: Option<&Current>, damaged: Option<Loc>) {
        let known = cur.map(|c| c.loc).or(damaged);
        self.index.insert(key, loc, &mut |l| {
            Some(l) == known || self.key_at(l) == Some(*key)
        });
        if let Some(c) = cur {
            if c.loc != loc {
                c.base.sub_live(&c.hdr);
            }
        } else if let Some(b) = damaged.and_then(|d| self.base(d.slot())) {
            // A record whose header no longer decodes (a torn in-place rewrite, or bit rot)
            // was counted live when loaded. Its size is unknown now: its bytes stay counted
            // until defrag rewrites the base.
            let _ = b
                .live_records
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(1))
                });
        }
    }

    fn forget_pending(&self, b: &Base, loc: Loc) {
        let mut hb = [0u8; RECORD_HEADER_SIZE as usize];
        if self.read_region(b, loc.offset(), &mut hb).is_ok() {
            if let Some(h) = b.record_header(&hb) {
                let _ = b
                    .live_bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        Some(v.saturating_sub(h.disk_size()))
                    });
            }
        }
    }

    /// The key of the record at `loc`, if its header is valid.
    pub(crate) fn key_at(&self, loc: Loc) -> Option<Key> {
        let base = self.base(loc.slot())?;
        let mut hb = [0u8; RECORD_HEADER_SIZE as usize];
        self.read_region(&base, loc.offset(), &mut hb).ok()?;
        base.record_header(&hb).map(|h| h.key)
    }

    /// Drops the key's prepared record if it was stamped before `older_than`: its header is
    /// marked ABORTED in place (so a restart never loads it) and it leaves the pending map.
    pub(crate) fn drop_prepared(&self, key: &Key, older_than: Timestamp) -> Result<bool> {
        self.check_writable()?;
        let seq = {
            let _g = self.key_lock(key).write();
            let p = match self.locate_pending(key)? {
                Located::Found(p) if p.hdr.timestamp < older_than => p,
                _ => return Ok(false),
            };
            let mut h = p.hdr;
            h.flags |= record_flags::ABORTED;
            let seq = {
                let mut w = self.writer.lock();
                self.write_header_locked(&mut w, &p.base, p.loc.offset(), &h)?;
                w.seq += 1;
                w.seq
            };
            self.pending.lock().remove(key);
            self.forget_pending(&p.base, p.loc);
            seq
        };
        self.after_write(seq)?;
        Ok(true)
    }

    /// Writes a tombstone.
    pub(crate) fn remove(&self, key: &Key, req: &RemoveRequest) -> Result<RecordInfo> {
        self.check_writable()?;
        let (info, seq) = {
            let _g = self.key_lock(key).write();
            let (cur, damaged) = match self.locate(key, RECORD_HEADER_SIZE)? {
                Located::Found(c) => (Some(c), None),
                Located::Damaged(l) => (None, Some(l)),
                Located::Absent => (None, None),
            };
            let had_pending = self.pending.lock().get(key).copied();
            let stored = cur.as_ref().map(|c| (c.hdr.timestamp, c.hdr.is_removed()));
            crate::backend::check_remove(req, stored, damaged.is_some() || had_pending.is_some())?;
            if let Some(p) = had_pending {
                self.pending.lock().remove(key);
                if let Some(b) = self.base(p.slot()) {
                    self.forget_pending(&b, p);
                }
            }
            let h = RecordHeader {
                key: *key,
                flags: record_flags::REMOVE,
                data_size: 0,
                capacity: 0,
                timestamp: req.timestamp,
                user_flags: 0,
                chunk_log2: self.cfg.chunk_log2,
                tag: 0,
            };
            self.append_version(key, cur.as_ref(), damaged, h, 0, &[])?
        };
        self.after_write(seq)?;
        Ok(info)
    }

    /// Appends one record to the open base (rotating first when it is full). `data` goes at
    /// `data_at` inside the record's data area; the rest of the reservation reads as zeros.
    pub(crate) fn append_locked(
        &self,
        w: &mut Writer,
        h: &RecordHeader,
        csums: &[u8],
        data_at: u64,
        data: &[u8],
    ) -> Result<Loc> {
        let size = h.disk_size();
        let full = w.tail + size > self.cfg.blob_size
            || (self.cfg.records_in_blob > 0 && w.open_records >= self.cfg.records_in_blob);
        if full && w.tail > BASE_HEADER_SIZE {
            self.rotate(w)?;
            self.wake_background();
        }
        if w.tail + size > OFFSET_MAX {
            return Err(StorageError::Limit("record does not fit in a base".into()));
        }
        if self.cfg.size_limit_bytes > 0 {
            let mut used = self.disk_bytes();
            // A kept file gives its room to data.
            if used + size > self.cfg.size_limit_bytes && self.discard_kept() {
                used = self.disk_bytes();
            }
            if used + size > self.cfg.size_limit_bytes {
                return Err(StorageError::NoSpace(format!(
                    "the backend holds {used} bytes and its size limit is {}",
                    self.cfg.size_limit_bytes
                )));
            }
        }
        let off = w.tail;
        // Disk space first: a full disk fails this write here, with nothing written.
        self.reserve_for(w, off + size)?;
        self.zero_ahead_locked(w, off, off + size);
        let data_start = h.data_start();
        // The open base's tag: the record is this base's, and no other life's.
        let hdr = RecordHeader {
            tag: w.open.tag,
            ..*h
        }
        .encode();
        let buffered =
            self.cfg.write_buffer_bytes > 0 && size as usize <= self.cfg.write_buffer_bytes / 2;
        if buffered {
            debug_assert_eq!(w.buf_start + w.buf.len() as u64, off);
            // Header, checksums, data; zeros only in the gaps (not the whole record first).
            let s = w.buf.len();
            w.buf.extend_from_slice(&hdr);
            w.buf.extend_from_slice(csums);
            w.buf.resize(s + (data_start + data_at) as usize, 0);
            w.buf.extend_from_slice(data);
            w.buf.resize(s + size as usize, 0);
            w.tail = off + size;
            w.open.end.store(w.tail, Ordering::Release);
            if w.buf.len() >= self.cfg.write_buffer_bytes {
                if self.cfg.background && w.buf.len() < 2 * self.cfg.write_buffer_bytes {
                    // The flusher thread writes it without the writer lock; writers go on
                    // meanwhile. Past twice the size, the writer flushes it itself.
                    if !self.flush_requested.swap(true, Ordering::AcqRel) {
                        let _g = self.shutdown.lock();
                        self.flush_cv.notify_one();
                    }
                } else {
                    self.flush_buffer(w)?;
                }
            }
        } else {
            self.flush_buffer(w)?;
            let mut head = Vec::with_capacity(data_start as usize);
            head.extend_from_slice(&hdr);
            head.extend_from_slice(csums);
            head.resize(data_start as usize, 0);
            let dev = w.open.dev.clone();
            let data_end = data_start + data_at + data.len() as u64;
            let pad = [0u8; RECORD_ALIGN as usize];
            let res = if data_at == 0 && size - data_end < RECORD_ALIGN {
                // The usual case: header, checksums, data and padding in one system call.
                let tail = &pad[..(size - data_end) as usize];
                dev.write_all_vectored_at(&[&head, data, tail], off)
            } else {
                let written = w.zeroed;
                (|| {
                    // Gaps over bytes already in the file (a reused file's earlier life) read
                    // as zeros, as in a new file.
                    let gaps = [
                        (off + data_start, off + data_start + data_at),
                        (off + data_end, off + size),
                    ];
                    for (from, to) in gaps {
                        super::write_zeros(&*dev, from, to.min(written)).map_err(|(_, e)| e)?;
                    }
                    dev.write_at(&head, off)?;
                    dev.write_at(data, off + data_start + data_at)?;
                    if data_end < size {
                        // Make the file cover the whole reservation, so a scan sees the record.
                        dev.write_at(&[0u8; 1], off + size - 1)?;
                    }
                    Ok::<(), std::io::Error>(())
                })()
            };
            if let Err(e) = res {
                let _ = dev.set_len(off);
                w.zeroed = w.zeroed.min(off);
                let err = StorageError::from_io(e, "appending a record");
                if !matches!(err, StorageError::NoSpace(_)) {
                    self.poison(&format!("append failed: {err}"));
                }
                return Err(err);
            }
            w.tail = off + size;
            w.buf_start = w.tail;
            w.open.end.store(w.tail, Ordering::Release);
            w.open.flushed.store(w.tail, Ordering::Release);
        }
        w.open_records += 1;
        w.seq += 1;
        Ok(Loc::new(w.open.slot, off))
    }

    /// Rewrites the header of the record at `off` of `base`, with that base's tag.
    fn write_header_locked(
        &self,
        w: &mut Writer,
        base: &Arc<Base>,
        off: u64,
        h: &RecordHeader,
    ) -> Result<()> {
        let h = RecordHeader {
            tag: base.tag,
            ..*h
        };
        self.write_region_locked(w, base, off, &h.encode())
    }

    /// Writes bytes inside an existing record, in the buffer or on the device.
    pub(crate) fn write_region_locked(
        &self,
        w: &mut Writer,
        base: &Arc<Base>,
        off: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let in_open = Arc::ptr_eq(&w.open, base);
        if let Some((s, _)) = &w.inflight {
            if in_open && off + bytes.len() as u64 > *s && off < w.buf_start {
                // Bytes a background flush is writing: let it finish, then write over them.
                self.flush_buffer(w)?;
            }
        }
        if in_open && off + bytes.len() as u64 > w.buf_start {
            if off < w.buf_start {
                self.flush_buffer(w)?;
            } else {
                let s = (off - w.buf_start) as usize;
                w.buf[s..s + bytes.len()].copy_from_slice(bytes);
                return Ok(());
            }
        }
        if let Err(e) = base.dev.write_at(bytes, off) {
            let err = StorageError::from_io(e, "rewriting a record");
            self.poison(&format!("in-place write failed: {err}"));
            return Err(err);
        }
        if !in_open && !w.dirty.iter().any(|b| Arc::ptr_eq(b, base)) {
            w.dirty.push(base.clone());
        }
        Ok(())
    }
}

/// Reads a base region while holding the writer lock (so the buffers cannot move): from the
/// device below the open base's buffers, then from the buffer a background flush is writing,
/// then from the write buffer.
pub(crate) fn read_region_locked(w: &Writer, base: &Base, off: u64, buf: &mut [u8]) -> Result<()> {
    let end = off + buf.len() as u64;
    let same = std::ptr::eq(Arc::as_ptr(&w.open), base);
    let dev_end = match &w.inflight {
        _ if !same => u64::MAX,
        Some((s, _)) => *s,
        None => w.buf_start,
    };
    if end <= dev_end {
        return base.dev.read_at(buf, off).map_err(Into::into);
    }
    let dev_part = dev_end.saturating_sub(off).min(buf.len() as u64) as usize;
    if dev_part > 0 {
        base.dev.read_at(&mut buf[..dev_part], off)?;
    }
    let mut pos = off + dev_part as u64;
    let pieces = w
        .inflight
        .iter()
        .map(|(s, d)| (*s, &d[..]))
        .chain(std::iter::once((w.buf_start, &w.buf[..])));
    for (s, d) in pieces {
        let e = s + d.len() as u64;
        if pos >= end || pos >= e || pos < s {
            continue;
        }
        let n = (end.min(e) - pos) as usize;
        let from = (pos - s) as usize;
        let to = (pos - off) as usize;
        buf[to..to + n].copy_from_slice(&d[from..from + n]);
        pos += n as u64;
    }
    if pos < end {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "read past the end of the open base",
        )
        .into());
    }
    Ok(())
}

fn nocsum_flag(req: &WriteRequest<'_>) -> u64 {
    if req.nocsum {
        record_flags::NOCSUM
    } else {
        0
    }
}

fn check_object_size(size: u64) -> Result<()> {
    if size > OBJECT_SIZE_MAX {
        return Err(StorageError::Limit("object larger than 1 TiB".into()));
    }
    Ok(())
}

pub(crate) fn record_info(h: &RecordHeader, base: &Base, loc: Loc) -> RecordInfo {
    RecordInfo {
        key: h.key,
        size: h.data_size,
        capacity: h.capacity,
        timestamp: h.timestamp,
        user_flags: h.user_flags,
        record_flags: h.flags,
        base: base.number,
        offset: loc.offset() + h.data_start(),
        checksum: None,
    }
}
