//! Lookup, read (whole or ranged, checksum-verified; the bytes lent where they lie, or shared
//! out of the base's memory map with [`ReadView::share`]) and iteration.

use super::format::*;
use super::index::Loc;
use super::write::{record_info, Current, Located};
use super::Inner;
use crate::backend::{data_checksum, read_range};
use crate::error::{Result, StorageError};
use crate::types::*;
use std::borrow::Cow;
use std::sync::atomic::Ordering;

impl ReadView<'_> {
    /// The bytes, owned: shared out of the base's memory map where they are there (no copy,
    /// however large), copied otherwise (the open base's write buffer, a base without a map,
    /// or a backend that rewrites records in place). Shared bytes keep their base's map alive
    /// however long they take to send; a base deleted meanwhile (defrag) only loses its
    /// file's name, so the map stays valid.
    pub fn share(&self) -> bytes::Bytes {
        match self.map {
            Some((base, start)) if Inner::mapped(base, start as u64, self.data.len()).is_some() => {
                bytes::Bytes::from_owner(MapSlice {
                    base: base.clone(),
                    start,
                    len: self.data.len(),
                })
            }
            _ => bytes::Bytes::copy_from_slice(self.data),
        }
    }
}

/// A stretch of a base's memory map, owned by the bytes handed out for it
/// ([`ReadView::share`]): it keeps the base, and so the map, alive.
struct MapSlice {
    base: std::sync::Arc<super::Base>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        // Checked in the map when made (`ReadView::share`), and a base's map never changes.
        self.base
            .map
            .as_deref()
            .and_then(|m| m.get(self.start..self.start + self.len))
            .unwrap_or_default()
    }
}

/// Bytes read speculatively with the header, so small records cost one read.
const PREFETCH: u64 = 2048;
/// Largest single read answer (callers read bigger objects in ranges).
pub const READ_SIZE_MAX: u64 = 1 << 32;

impl Inner {
    /// The committed, live record of `key`.
    fn live(&self, key: &Key, prefetch: u64) -> Result<Current> {
        match self.locate(key, prefetch)? {
            Located::Found(c) if !c.hdr.is_removed() && !c.hdr.is_uncommitted() => Ok(c),
            Located::Found(_) | Located::Absent => Err(StorageError::NotFound),
            Located::Damaged(_) => Err(StorageError::Corrupt(
                "the record's header fails its checksum".into(),
            )),
        }
    }

    pub(crate) fn read(&self, key: &Key, req: &ReadRequest) -> Result<ReadResult> {
        self.read_with(key, req, |v| ReadResult {
            info: v.info,
            offset: v.offset,
            data: v.data.to_vec(),
        })
    }

    /// A read that hands `f` the bytes where they are (in the map, under the key's lock,
    /// verified), so a caller copies them once, straight to where they go.
    pub(crate) fn read_with<R>(
        &self,
        key: &Key,
        req: &ReadRequest,
        f: impl FnOnce(ReadView<'_>) -> R,
    ) -> Result<R> {
        let _g = self.key_lock(key).read();
        let c = self.live(key, PREFETCH)?;
        let (off, len) = read_range(c.hdr.data_size, req)?;
        if len > READ_SIZE_MAX {
            return Err(StorageError::Limit(format!(
                "a read returns at most {READ_SIZE_MAX} bytes; read in ranges"
            )));
        }
        // Bytes in the map may be shared by the caller (`ReadView::share` checks they are in
        // it, off this path), unless records are rewritten in place, when they could change
        // while shared.
        let start = c.loc.offset() + c.hdr.data_start() + off;
        let map = (!self.cfg.overwrite_in_place)
            .then_some(&c.base)
            .zip(usize::try_from(start).ok());
        self.with_data(&c, off, len, !req.nocsum, |data| {
            f(ReadView {
                info: record_info(&c.hdr, &c.base, c.loc),
                offset: off,
                data,
                map,
            })
        })
    }

    /// A read whose bytes are shared out of the base's memory map where they are there
    /// ([`ReadView::share`]).
    pub(crate) fn read_shared(&self, key: &Key, req: &ReadRequest) -> Result<SharedRead> {
        self.read_with(key, req, |v| {
            let data = v.share();
            SharedRead {
                info: v.info,
                offset: v.offset,
                data,
            }
        })
    }

    pub(crate) fn lookup(&self, key: &Key, checksum: bool) -> Result<RecordInfo> {
        let _g = self.key_lock(key).read();
        let c = self.live(
            key,
            if checksum {
                PREFETCH
            } else {
                RECORD_HEADER_SIZE
            },
        )?;
        let mut info = record_info(&c.hdr, &c.base, c.loc);
        if checksum {
            // Hashed where the bytes are (the map): a large object is not copied first.
            info.checksum = Some(self.with_data(&c, 0, c.hdr.data_size, true, data_checksum)?);
        }
        Ok(info)
    }

    /// `len` bytes of a record's data from `off`, verified chunk by chunk when `verify`.
    pub(crate) fn read_data(
        &self,
        c: &Current,
        off: u64,
        len: u64,
        verify: bool,
    ) -> Result<Vec<u8>> {
        let (data, s) = self.verified(c, off, len, verify)?;
        let range = s..s + len as usize;
        Ok(match data {
            // Read into a buffer of its own (no map): kept, not copied again.
            Cow::Owned(mut v) => {
                v.truncate(range.end);
                v.drain(..range.start);
                v
            }
            Cow::Borrowed(b) => b[range].to_vec(),
        })
    }

    /// [`Inner::read_data`] handing the bytes to `f` where they are (the map, or what was
    /// read with the header) instead of copying them out.
    pub(crate) fn with_data<R>(
        &self,
        c: &Current,
        off: u64,
        len: u64,
        verify: bool,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let (data, s) = self.verified(c, off, len, verify)?;
        Ok(f(&data[s..s + len as usize]))
    }

    /// The verified stretch of a record's data that holds `len` bytes from `off` (whole
    /// checksum chunks when `verify`), borrowed where the bytes already are (the map, or what
    /// was read with the header), else read; and where the asked bytes start in it.
    fn verified<'a>(
        &'a self,
        c: &'a Current,
        off: u64,
        len: u64,
        verify: bool,
    ) -> Result<(Cow<'a, [u8]>, usize)> {
        let h = &c.hdr;
        let rec = c.loc.offset();
        let verify = verify && h.verifies() && len > 0;
        let (from, to) = if verify {
            let chunk = h.chunk_size();
            (
                (off / chunk) * chunk,
                ((off + len).div_ceil(chunk) * chunk).min(h.data_size),
            )
        } else {
            (off, off + len)
        };
        let region = |start: u64, n: u64| -> Result<Cow<'a, [u8]>> {
            let s = start - rec;
            if let Some(src) = Self::mapped(&c.base, start, n as usize) {
                Ok(src.into())
            } else if s + n <= c.head.len() as u64 {
                Ok(c.head[s as usize..(s + n) as usize].into())
            } else {
                self.read_vec(&c.base, start, n as usize).map(Into::into)
            }
        };
        let data = region(rec + h.data_start() + from, to - from)?;
        if verify {
            let first = from / h.chunk_size();
            let count = (to - from).div_ceil(h.chunk_size());
            let sums = region(rec + RECORD_HEADER_SIZE + first * 4, count * 4)?;
            verify_chunks(h, &sums, first, &data).map_err(|e| {
                StorageError::Corrupt(format!("base {} offset {}: {e}", c.base.number, rec))
            })?;
        }
        Ok((data, (off - from) as usize))
    }

    /// One batch of an iteration in storage order (base by base, record by record).
    /// Cursor: base number, base generation, offset (24 bytes).
    pub(crate) fn iterate(
        &self,
        req: &IterRequest,
        cursor: Option<&IterCursor>,
    ) -> Result<IterBatch> {
        let (mut start_number, start_gen, start_off) = match cursor {
            None => (0, 0, 0),
            Some(c) if c.0.len() == 24 => {
                let n = |i: usize| u64::from_le_bytes(c.0[i..i + 8].try_into().expect("8 bytes"));
                (n(0), n(8), n(16))
            }
            Some(_) => {
                return Err(StorageError::InvalidArgument(
                    "malformed iterator cursor".into(),
                ))
            }
        };
        let mut bases: Vec<_> = self.bases.read().iter().flatten().cloned().collect();
        bases.sort_by_key(|b| b.number);
        let batch_records = req.batch_records.max(1);
        let mut items: Vec<IterItem> = Vec::new();
        let mut bytes = 0usize;
        for base in bases {
            if base.number < start_number {
                continue;
            }
            if base.open.load(Ordering::Acquire) {
                let mut w = self.writer.lock();
                self.flush_buffer(&mut w)?;
            }
            let from = if base.number == start_number && base.generation == start_gen {
                start_off.max(BASE_HEADER_SIZE)
            } else {
                BASE_HEADER_SIZE
            };
            start_number = 0;
            let end = base.flushed.load(Ordering::Acquire);
            let mut sc = base.scanner(from, end);
            while let Some((off, h)) = sc.next_record()? {
                let loc = Loc::new(base.slot, off);
                let current = if h.is_uncommitted() {
                    self.pending.lock().get(&h.key) == Some(&loc)
                } else {
                    self.index.get(&h.key) == Some(loc)
                };
                if !current {
                    continue;
                }
                let mut info = record_info(&h, &base, loc);
                if !req.wants(&info) {
                    continue;
                }
                if items.len() >= batch_records || (bytes >= req.batch_bytes && !items.is_empty()) {
                    let mut c = Vec::with_capacity(24);
                    for v in [base.number, base.generation, off] {
                        c.extend_from_slice(&v.to_le_bytes());
                    }
                    return Ok(IterBatch {
                        items,
                        next: Some(IterCursor(c)),
                    });
                }
                let mut corrupt = false;
                let mut data = None;
                if req.with_data && !h.is_removed() && !h.is_uncommitted() {
                    // Through the normal read path: key lock, current header, verification.
                    match self.read(&h.key, &ReadRequest::default()) {
                        Ok(r) => {
                            info = r.info;
                            bytes += r.data.len();
                            data = Some(r.data);
                        }
                        Err(StorageError::Corrupt(_)) => corrupt = true,
                        Err(StorageError::NotFound) => continue, // removed meanwhile
                        Err(e) => return Err(e),
                    }
                } else if !h.is_removed() && !h.is_uncommitted() {
                    corrupt = sc.verify(off, &h)?.is_err();
                }
                items.push(IterItem {
                    info,
                    data,
                    corrupt,
                });
            }
        }
        Ok(IterBatch { items, next: None })
    }
}
