//! The `memory` backend: the same data semantics as the blob engine, kept in a `BTreeMap`.
//!
//! Nothing survives the process; `sync` is a no-op. It exists for tests, for caches of
//! short-lived data, and as the reference the conformance suite holds the blob engine to.

use crate::backend::*;
use crate::error::{Result, StorageError};
use crate::types::*;
use parking_lot::RwLock;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
struct MemRecord {
    data: Vec<u8>,
    capacity: u64,
    timestamp: Timestamp,
    user_flags: u64,
    flags: u64,
}

impl MemRecord {
    fn info(&self, key: &Key) -> RecordInfo {
        RecordInfo {
            key: *key,
            size: if self.flags & record_flags::UNCOMMITTED != 0 {
                0
            } else {
                self.data.len() as u64
            },
            capacity: self.capacity,
            timestamp: self.timestamp,
            user_flags: self.user_flags,
            record_flags: self.flags,
            base: 0,
            offset: 0,
            checksum: None,
        }
    }
    fn live(&self) -> bool {
        self.flags & record_flags::REMOVE == 0
    }
}

#[derive(Default)]
struct State {
    /// Committed records and tombstones.
    records: BTreeMap<Key, MemRecord>,
    /// Prepared reservations (data is the whole reservation).
    pending: BTreeMap<Key, MemRecord>,
}

/// An in-memory backend.
#[derive(Default)]
pub struct MemoryBackend {
    state: RwLock<State>,
    read_only: std::sync::atomic::AtomicBool,
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StorageError::ReadOnly);
        }
        Ok(())
    }
}

fn base_flags(req: &WriteRequest<'_>) -> u64 {
    if req.nocsum {
        record_flags::NOCSUM
    } else {
        record_flags::CHUNKED_CSUM
    }
}

impl Backend for MemoryBackend {
    fn write(&self, key: &Key, req: &WriteRequest<'_>) -> Result<RecordInfo> {
        self.check_writable()?;
        let op = WriteOp::classify(req)?;
        let mut st = self.state.write();
        let stored = st.records.get(key).map(|r| (r.timestamp, !r.live()));
        let cur = st.records.get(key).filter(|r| r.live()).cloned();
        check_cas(req, stored, || {
            Ok(data_checksum(cur.as_ref().map_or(&[][..], |r| &r.data[..])))
        })?;
        let flags = base_flags(req);
        let publish = |st: &mut State, mut rec: MemRecord, commit: Option<u64>| -> RecordInfo {
            match commit {
                Some(size) => {
                    rec.data.resize(size as usize, 0);
                    rec.flags &= !record_flags::UNCOMMITTED;
                    rec.timestamp = req.timestamp;
                    rec.user_flags = req.user_flags;
                    st.pending.remove(key);
                    let info = rec.info(key);
                    st.records.insert(*key, rec);
                    info
                }
                None => {
                    let info = rec.info(key);
                    st.pending.insert(*key, rec);
                    info
                }
            }
        };
        let info = match op {
            WriteOp::Replace => {
                let rec = MemRecord {
                    data: req.data.to_vec(),
                    capacity: req.data.len() as u64,
                    timestamp: req.timestamp,
                    user_flags: req.user_flags,
                    flags,
                };
                let info = rec.info(key);
                st.records.insert(*key, rec);
                st.pending.remove(key);
                info
            }
            WriteOp::Patch { .. } | WriteOp::Append => {
                st.pending.remove(key);
                let existed = cur.is_some();
                let mut data = cur.map(|r| r.data).unwrap_or_default();
                let at = match op {
                    WriteOp::Patch { offset } => offset as usize,
                    _ => data.len(),
                };
                let end = at + req.data.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[at..end].copy_from_slice(req.data);
                let append = if op == WriteOp::Append && existed {
                    record_flags::APPEND
                } else {
                    0
                };
                let rec = MemRecord {
                    capacity: data.len() as u64,
                    data,
                    timestamp: req.timestamp,
                    user_flags: req.user_flags,
                    flags: flags | append,
                };
                let info = rec.info(key);
                st.records.insert(*key, rec);
                info
            }
            WriteOp::Prepare {
                reserve,
                offset,
                commit,
            } => {
                check_reservation(reserve, offset, req.data.len() as u64, commit)?;
                let mut data = vec![0; reserve as usize];
                data[offset as usize..offset as usize + req.data.len()].copy_from_slice(req.data);
                let rec = MemRecord {
                    data,
                    capacity: reserve,
                    timestamp: req.timestamp,
                    user_flags: req.user_flags,
                    flags: flags | record_flags::UNCOMMITTED,
                };
                publish(&mut st, rec, commit)
            }
            WriteOp::Plain { offset, commit } => {
                let mut rec = st.pending.get(key).cloned().ok_or(StorageError::NotFound)?;
                check_reservation(rec.capacity, offset, req.data.len() as u64, commit)?;
                rec.data[offset as usize..offset as usize + req.data.len()]
                    .copy_from_slice(req.data);
                if commit.is_none() {
                    rec.timestamp = req.timestamp;
                }
                publish(&mut st, rec, commit)
            }
        };
        Ok(info)
    }

    fn read(&self, key: &Key, req: &ReadRequest) -> Result<ReadResult> {
        let st = self.state.read();
        let rec = st
            .records
            .get(key)
            .filter(|r| r.live())
            .ok_or(StorageError::NotFound)?;
        let (off, len) = read_range(rec.data.len() as u64, req)?;
        Ok(ReadResult {
            info: rec.info(key),
            offset: off,
            data: rec.data[off as usize..(off + len) as usize].to_vec(),
        })
    }

    fn lookup(&self, key: &Key, checksum: bool) -> Result<RecordInfo> {
        let st = self.state.read();
        let rec = st
            .records
            .get(key)
            .filter(|r| r.live())
            .ok_or(StorageError::NotFound)?;
        let mut info = rec.info(key);
        if checksum {
            info.checksum = Some(data_checksum(&rec.data));
        }
        Ok(info)
    }

    fn remove(&self, key: &Key, req: &RemoveRequest) -> Result<RecordInfo> {
        self.check_writable()?;
        let mut st = self.state.write();
        let cur = st.records.get(key).cloned();
        let stored = cur.as_ref().map(|r| (r.timestamp, !r.live()));
        crate::backend::check_remove(req, stored, st.pending.contains_key(key))?;
        st.pending.remove(key);
        let rec = MemRecord {
            data: Vec::new(),
            capacity: 0,
            timestamp: req.timestamp,
            user_flags: 0,
            flags: record_flags::REMOVE,
        };
        let info = rec.info(key);
        st.records.insert(*key, rec);
        Ok(info)
    }

    fn iterate(&self, req: &IterRequest, cursor: Option<&IterCursor>) -> Result<IterBatch> {
        // Cursor: the last key returned (committed map), then a 0/1 byte for the pending map.
        let (phase, after) = match cursor {
            None => (0u8, None),
            Some(c) if c.0.len() == 1 + KEY_SIZE => {
                let mut k = [0u8; KEY_SIZE];
                k.copy_from_slice(&c.0[1..]);
                (c.0[0], Some(Key(k)))
            }
            Some(_) => {
                return Err(StorageError::InvalidArgument(
                    "malformed iterator cursor".into(),
                ))
            }
        };
        let st = self.state.read();
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut last: Option<(u8, Key)> = None;
        let batch_records = req.batch_records.max(1);
        for p in phase..2 {
            if p == 1 && !req.include_uncommitted {
                break;
            }
            let map = if p == 0 { &st.records } else { &st.pending };
            let start = if p == phase { after } else { None };
            let range = match start {
                Some(k) => map.range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
                None => map.range(..),
            };
            for (k, rec) in range {
                let info = rec.info(k);
                if !req.wants(&info) {
                    continue;
                }
                if items.len() >= batch_records || (bytes >= req.batch_bytes && !items.is_empty()) {
                    let (lp, lk) = last.expect("a full batch has a last item");
                    let mut c = vec![lp];
                    c.extend_from_slice(&lk.0);
                    return Ok(IterBatch {
                        items,
                        next: Some(IterCursor(c)),
                    });
                }
                let data = (req.with_data && rec.live() && p == 0).then(|| rec.data.clone());
                bytes += data.as_ref().map_or(0, |d| d.len());
                items.push(IterItem {
                    info,
                    data,
                    corrupt: false,
                });
                last = Some((p, *k));
            }
        }
        Ok(IterBatch { items, next: None })
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn stats(&self) -> BackendStats {
        let st = self.state.read();
        let mut s = BackendStats::default();
        for r in st.records.values() {
            if r.live() {
                s.records += 1;
                s.live_bytes += r.data.len() as u64;
            } else {
                s.removed_records += 1;
            }
        }
        s.uncommitted_records = st.pending.len() as u64;
        s.read_only = self.read_only.load(std::sync::atomic::Ordering::Relaxed);
        s
    }

    fn set_read_only(&self, read_only: bool) {
        self.read_only
            .store(read_only, std::sync::atomic::Ordering::Relaxed);
    }

    fn defrag(&self) -> Result<DefragReport> {
        Ok(DefragReport::default())
    }
    fn drop_prepared(&self, key: &Key, older_than: Timestamp) -> Result<bool> {
        self.check_writable()?;
        let mut st = self.state.write();
        if st
            .pending
            .get(key)
            .is_some_and(|p| p.timestamp < older_than)
        {
            st.pending.remove(key);
            return Ok(true);
        }
        Ok(false)
    }
}
