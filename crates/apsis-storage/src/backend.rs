//! The `Backend` trait every engine implements, and the Elliptics data rules they share.
//!
//! The rules (what a write mode means, when a read is `-E2BIG`, how CAS decides) live here
//! once, in [`WriteOp::classify`], [`read_range`] and [`check_cas`], so the blob and memory
//! engines cannot drift apart; the conformance suite checks both against them.

use crate::error::{Result, StorageError};
use crate::types::*;
use sha2::{Digest, Sha512};

/// A storage engine instance (one Elliptics backend). Thread-safe: every method takes `&self`.
pub trait Backend: Send + Sync {
    /// Writes according to the request's mode; returns the record as stored.
    fn write(&self, key: &Key, req: &WriteRequest<'_>) -> Result<RecordInfo>;
    /// Reads a committed record's data (whole or a range), verifying checksums unless NOCSUM.
    fn read(&self, key: &Key, req: &ReadRequest) -> Result<ReadResult>;
    /// File info of a committed, live record; with `checksum` the data is read, verified and
    /// its sha512 returned in `RecordInfo::checksum`.
    fn lookup(&self, key: &Key, checksum: bool) -> Result<RecordInfo>;
    /// Replaces the record with a timestamped tombstone.
    fn remove(&self, key: &Key, req: &RemoveRequest) -> Result<RecordInfo>;
    /// One bounded batch of an iteration, starting at `cursor` (or the beginning).
    fn iterate(&self, req: &IterRequest, cursor: Option<&IterCursor>) -> Result<IterBatch>;
    /// Makes everything acknowledged so far durable.
    fn sync(&self) -> Result<()>;
    /// Counters and sizes.
    fn stats(&self) -> BackendStats;
    /// Switches the backend between read-only and writable.
    fn set_read_only(&self, read_only: bool);
    /// Reclaims space held by removed and overwritten records (online).
    fn defrag(&self) -> Result<DefragReport>;
    /// Drops the key's prepared, uncommitted record if it was stamped before `older_than`
    /// (recovery's clean-up of abandoned uploads); the committed version, if any, stays.
    /// Returns whether a record was dropped.
    fn drop_prepared(&self, key: &Key, older_than: Timestamp) -> Result<bool>;
}

/// A write request reduced to one of the modes Elliptics defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Offset 0, no mode flags: replace the object.
    Replace,
    /// Offset N > 0: overlay the data at N, growing the object (zero-filled) if needed.
    Patch { offset: u64 },
    /// Add the data after the current end.
    Append,
    /// Reserve `reserve` bytes in a new uncommitted record, write the data at `offset`, and
    /// publish it with `commit` bytes if a commit size is given.
    Prepare {
        reserve: u64,
        offset: u64,
        commit: Option<u64>,
    },
    /// Write into the existing reservation at `offset`, then publish with `commit` if given.
    Plain { offset: u64, commit: Option<u64> },
}

/// Largest object an engine accepts (data or reservation): 1 TiB.
pub const OBJECT_SIZE_MAX: u64 = 1 << 40;

impl WriteOp {
    /// Decodes and validates a request's mode, bounding every size before it is used.
    pub fn classify(req: &WriteRequest<'_>) -> Result<WriteOp> {
        let len = req.data.len() as u64;
        let end = req
            .offset
            .checked_add(len)
            .filter(|e| *e <= OBJECT_SIZE_MAX)
            .ok_or_else(|| {
                StorageError::Limit(format!(
                    "offset {} + size {len} exceeds the 1 TiB object limit",
                    req.offset
                ))
            })?;
        for (what, v) in [("prepare", req.prepare), ("commit", req.commit)] {
            if v.is_some_and(|v| v > OBJECT_SIZE_MAX) {
                return Err(StorageError::Limit(format!(
                    "{what} size exceeds the 1 TiB object limit"
                )));
            }
        }
        if req.append {
            if req.prepare.is_some() || req.plain || req.commit.is_some() {
                return Err(StorageError::InvalidArgument(
                    "APPEND cannot be combined with PREPARE, PLAIN_WRITE or COMMIT".into(),
                ));
            }
            return Ok(WriteOp::Append);
        }
        if let Some(reserve) = req.prepare {
            return Ok(WriteOp::Prepare {
                reserve: reserve.max(end),
                offset: req.offset,
                commit: req.commit,
            });
        }
        if req.plain || req.commit.is_some() {
            return Ok(WriteOp::Plain {
                offset: req.offset,
                commit: req.commit,
            });
        }
        if req.offset == 0 {
            Ok(WriteOp::Replace)
        } else {
            Ok(WriteOp::Patch { offset: req.offset })
        }
    }
}

/// The part of an object a read returns: `(offset, len)`, or `-E2BIG` when the offset is at
/// or past the end (an empty object read from offset 0 gives an empty answer).
pub fn read_range(size: u64, req: &ReadRequest) -> Result<(u64, u64)> {
    if req.offset >= size && !(req.offset == 0 && size == 0) {
        return Err(StorageError::OutOfRange(format!(
            "offset {} is past the object's end {size}",
            req.offset
        )));
    }
    let left = size - req.offset;
    let len = if req.size == 0 {
        left
    } else {
        req.size.min(left)
    };
    Ok((req.offset, len))
}

/// Applies CAS_TIMESTAMP (first) and COMPARE_AND_SWAP. `stored` is the stored record's
/// timestamp and whether it is a tombstone, `None` when the key was never written (which
/// passes both checks); `stored_data` reads the stored data, only when a checksum must be
/// compared.
///
/// A tombstone's timestamp counts for CAS_TIMESTAMP (Elliptics lets any write pass over a
/// removed key): an older copy written with CAS_TIMESTAMP — read-repair, recovery — can
/// never undo a newer delete. For COMPARE_AND_SWAP a removed key is missing and passes.
pub fn check_cas(
    req: &WriteRequest<'_>,
    stored: Option<(Timestamp, bool)>,
    stored_checksum: impl FnOnce() -> Result<[u8; 64]>,
) -> Result<()> {
    let Some((stored_ts, removed)) = stored else {
        return Ok(());
    };
    if req.cas_timestamp && stored_ts > req.timestamp {
        return Err(StorageError::CasMismatch("the stored record is newer"));
    }
    if removed {
        return Ok(());
    }
    if let Some(expected) = req.cas_checksum {
        if stored_checksum()? != expected {
            return Err(StorageError::CasMismatch(
                "the stored data's checksum differs",
            ));
        }
    }
    Ok(())
}

/// Whether a removal may write its tombstone, given the stored record's timestamp and
/// whether it is a tombstone (`None`: never written; `other_state`: a damaged header or a
/// prepared record exists). `CasMismatch` is the EBADFD case, `NotFound` the ENOENT one.
pub fn check_remove(
    req: &RemoveRequest,
    stored: Option<(Timestamp, bool)>,
    other_state: bool,
) -> Result<()> {
    if let Some(expected) = req.expect {
        return match stored {
            Some((ts, _)) if ts == expected => Ok(()),
            _ => Err(StorageError::CasMismatch(
                "the stored record is not the expected one",
            )),
        };
    }
    if let Some((ts, _)) = stored {
        if req.cas_timestamp && ts > req.timestamp {
            return Err(StorageError::CasMismatch("the stored record is newer"));
        }
    }
    let allowed = match stored {
        Some((_, false)) => true,
        Some((ts, true)) => req.always_record && ts < req.timestamp,
        None => req.always_record || other_state,
    };
    if allowed {
        Ok(())
    } else {
        Err(StorageError::NotFound)
    }
}

/// The checksum Elliptics reports and compares: sha512 of the data; all zeros for no data.
pub fn data_checksum(data: &[u8]) -> [u8; 64] {
    if data.is_empty() {
        return [0; 64];
    }
    Sha512::digest(data).into()
}

/// The first byte a commit or plain write would touch past a reservation: `-E2BIG` when
/// `offset + len` or the commit size does not fit.
pub fn check_reservation(capacity: u64, offset: u64, len: u64, commit: Option<u64>) -> Result<()> {
    if offset + len > capacity {
        return Err(StorageError::OutOfRange(format!(
            "write to {}..{} is past the {capacity}-byte reservation",
            offset,
            offset + len
        )));
    }
    if let Some(c) = commit {
        if c > capacity {
            return Err(StorageError::OutOfRange(format!(
                "commit size {c} is past the {capacity}-byte reservation"
            )));
        }
    }
    Ok(())
}
