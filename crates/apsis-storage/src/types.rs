//! The vocabulary shared by every backend: keys, timestamps, record flags, requests and answers.

use sha2::{Digest, Sha512};

/// Size of a key (an Elliptics id) in bytes.
pub const KEY_SIZE: usize = 64;

/// A 64-byte record id: by default sha512 of the key name (see [`Key::from_name`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; KEY_SIZE]);

/// Byte order (memcmp order), compared 8 bytes at a time: ids are random, so the first
/// word almost always decides, and merges and sorts of millions of keys (restart) avoid a
/// `memcmp` call per comparison.
impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
            let a = u64::from_be_bytes(a.try_into().expect("8 bytes"));
            let b = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            if a != b {
                return a.cmp(&b);
            }
        }
        std::cmp::Ordering::Equal
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Key {
    /// The id Elliptics computes for a name: sha512(name), or sha512(namespace ‖ 0 ‖ name).
    pub fn from_name(namespace: &[u8], name: &[u8]) -> Key {
        let mut h = Sha512::new();
        if !namespace.is_empty() {
            h.update(namespace);
            h.update([0u8]);
        }
        h.update(name);
        Key(h.finalize().into())
    }

    /// The lowest key.
    pub const MIN: Key = Key([0; KEY_SIZE]);
    /// The highest key.
    pub const MAX: Key = Key([0xff; KEY_SIZE]);

    /// First 8 bytes, big-endian: the in-memory index fingerprint. Ids are uniformly
    /// distributed (sha512), and keys that share a fingerprint sort next to each other.
    #[inline]
    pub fn fingerprint(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    /// A second, independent 16-bit hash used to pick lock stripes and index shards.
    #[inline]
    pub(crate) fn stripe_bits(&self) -> usize {
        u16::from_le_bytes([self.0[8], self.0[9]]) as usize
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…")
    }
}

/// A record timestamp as Elliptics keeps it: seconds and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub sec: u64,
    pub nsec: u32,
}

impl Timestamp {
    pub const fn new(sec: u64, nsec: u32) -> Timestamp {
        Timestamp { sec, nsec }
    }

    /// Wall-clock now.
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            sec: d.as_secs(),
            nsec: d.subsec_nanos(),
        }
    }
}

/// Record flags as stored and as reported on the wire (eblob's values).
pub mod record_flags {
    /// The record is a tombstone.
    pub const REMOVE: u64 = 1;
    /// Written without data checksums; reads are not verified.
    pub const NOCSUM: u64 = 2;
    /// The record was last written by APPEND.
    pub const APPEND: u64 = 16;
    /// Elliptics' extended header marker; reported for compatibility, not stored.
    pub const EXTHDR: u64 = 64;
    /// Prepared (reserved) and not yet committed: invisible to reads.
    pub const UNCOMMITTED: u64 = 128;
    /// Data is covered by per-chunk checksums.
    pub const CHUNKED_CSUM: u64 = 256;
    /// A prepared record dropped by recovery's clean-up of stale reservations (always with
    /// UNCOMMITTED): it is never loaded again and defrag reclaims it.
    pub const ABORTED: u64 = 512;
    /// The flags an engine stores; anything else in a header is a format error.
    pub const STORED_MASK: u64 = REMOVE | NOCSUM | APPEND | UNCOMMITTED | CHUNKED_CSUM | ABORTED;
}

/// What a write does, decoded from Elliptics' ioflags by the caller.
///
/// The combinations follow Elliptics: `prepare`, `plain` and `commit` may be combined
/// (write_data chunking sends PREPARE with the first chunk, PLAIN_WRITE with the middle ones
/// and COMMIT with the last); `append` stands alone.
#[derive(Clone, Debug, Default)]
pub struct WriteRequest<'a> {
    /// The bytes to write.
    pub data: &'a [u8],
    /// Where in the object `data` goes. For a plain write, 0 replaces the object and N > 0
    /// patches it (growing it when needed).
    pub offset: u64,
    /// APPEND: add `data` after the current end (creating the object when missing).
    pub append: bool,
    /// PREPARE: reserve this many bytes in a new, uncommitted record and write `data` into it.
    pub prepare: Option<u64>,
    /// PLAIN_WRITE: write `data` into the prepared reservation.
    pub plain: bool,
    /// COMMIT: publish the prepared record with this final size.
    pub commit: Option<u64>,
    /// The record's timestamp.
    pub timestamp: Timestamp,
    /// The record's user flags.
    pub user_flags: u64,
    /// COMPARE_AND_SWAP: succeed only if sha512 of the stored data equals this
    /// (a missing key always passes).
    pub cas_checksum: Option<[u8; 64]>,
    /// CAS_TIMESTAMP: succeed only if the stored timestamp is not newer than `timestamp`.
    pub cas_timestamp: bool,
    /// NOCSUM: store without data checksums.
    pub nocsum: bool,
}

/// A read of a whole object or of a range of it.
#[derive(Clone, Debug, Default)]
pub struct ReadRequest {
    /// First byte; at or past the end of a non-empty object is `OutOfRange` (-E2BIG).
    pub offset: u64,
    /// Bytes wanted; 0 means to the end; past the end is clipped.
    pub size: u64,
    /// NOCSUM: do not verify the data checksums.
    pub nocsum: bool,
}

/// What a lookup, read or write reports about a record (the Elliptics file info).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    pub key: Key,
    /// Size of the object's data (0 while uncommitted).
    pub size: u64,
    /// Bytes reserved for the data on disk.
    pub capacity: u64,
    pub timestamp: Timestamp,
    pub user_flags: u64,
    /// See [`record_flags`].
    pub record_flags: u64,
    /// Which base (data file) holds it; 0 for the memory backend.
    pub base: u64,
    /// Byte offset of the data inside the base.
    pub offset: u64,
    /// sha512 of the data, when asked for (lookup with checksum).
    pub checksum: Option<[u8; 64]>,
}

impl RecordInfo {
    pub fn is_removed(&self) -> bool {
        self.record_flags & record_flags::REMOVE != 0
    }
    pub fn is_uncommitted(&self) -> bool {
        self.record_flags & record_flags::UNCOMMITTED != 0
    }
}

/// A read's answer.
#[derive(Clone, Debug)]
pub struct ReadResult {
    pub info: RecordInfo,
    /// The offset the data starts at, inside the object.
    pub offset: u64,
    pub data: Vec<u8>,
}

/// A read's answer with its bytes borrowed where the engine has them
/// ([`BlobBackend::read_with`](crate::BlobBackend::read_with)).
pub struct ReadView<'a> {
    pub info: RecordInfo,
    /// The offset the data starts at, inside the object.
    pub offset: u64,
    pub data: &'a [u8],
    /// Where `data` starts in its base, when it may be shared from the base's memory map
    /// (`ReadView::share` checks that it is in the map).
    pub(crate) map: Option<(&'a std::sync::Arc<crate::blob::Base>, usize)>,
}

/// A read's answer whose bytes need not be copied out: a read from a base's memory map shares
/// the map, which the bytes keep alive, however long they take to send
/// ([`BlobBackend::read_shared`](crate::BlobBackend::read_shared)).
pub struct SharedRead {
    pub info: RecordInfo,
    /// The offset the data starts at, inside the object.
    pub offset: u64,
    pub data: bytes::Bytes,
}

/// A removal: the tombstone's timestamp, and whether to record it even when the key is
/// missing (recovery propagates deletes to replicas that never saw the key).
#[derive(Clone, Debug, Default)]
pub struct RemoveRequest {
    pub timestamp: Timestamp,
    /// Record a tombstone even if the key is missing; never replaces a newer tombstone.
    pub always_record: bool,
    /// Refuse (`CasMismatch`, the EBADFD case) when the stored record, live or tombstone, is
    /// newer than `timestamp`: a delete propagated by recovery never removes a newer write.
    pub cas_timestamp: bool,
    /// Only when the current record (live or tombstone) has exactly this timestamp, else
    /// `CasMismatch`; a missing key never matches. Recovery's hand-off drops a copy this way,
    /// so a write that arrived meanwhile is never lost. Overrides the rules above.
    pub expect: Option<Timestamp>,
}

/// An inclusive key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Key,
    pub end: Key,
}

impl KeyRange {
    pub fn contains(&self, k: &Key) -> bool {
        *k >= self.start && *k <= self.end
    }
}

/// An iteration over the live records (and optionally tombstones and prepared records).
#[derive(Clone, Debug)]
pub struct IterRequest {
    /// Only keys inside one of these ranges; empty means every key.
    pub key_ranges: Vec<KeyRange>,
    /// Only records whose timestamp is inside this inclusive range.
    pub time_range: Option<(Timestamp, Timestamp)>,
    /// Return the data with each record.
    pub with_data: bool,
    /// Also return tombstones.
    pub include_removed: bool,
    /// Also return prepared, uncommitted records.
    pub include_uncommitted: bool,
    /// Most records in one batch (at least 1).
    pub batch_records: usize,
    /// Most data bytes in one batch (a single larger record still goes alone).
    pub batch_bytes: usize,
}

impl Default for IterRequest {
    fn default() -> Self {
        IterRequest {
            key_ranges: Vec::new(),
            time_range: None,
            with_data: false,
            include_removed: false,
            include_uncommitted: false,
            batch_records: 1024,
            batch_bytes: 8 << 20,
        }
    }
}

impl IterRequest {
    pub(crate) fn wants(&self, info: &RecordInfo) -> bool {
        if info.is_removed() && !self.include_removed {
            return false;
        }
        if info.is_uncommitted() && !self.include_uncommitted {
            return false;
        }
        if !self.key_ranges.is_empty() && !self.key_ranges.iter().any(|r| r.contains(&info.key)) {
            return false;
        }
        if let Some((lo, hi)) = self.time_range {
            if info.timestamp < lo || info.timestamp > hi {
                return false;
            }
        }
        true
    }
}

/// One record from an iteration.
#[derive(Clone, Debug)]
pub struct IterItem {
    pub info: RecordInfo,
    /// The data when asked for (never for tombstones or corrupt records).
    pub data: Option<Vec<u8>>,
    /// The record failed its checksum; it is reported so recovery can repair it.
    pub corrupt: bool,
}

/// Where an iteration stands; opaque, and may be stored to resume later (even after a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IterCursor(pub Vec<u8>);

/// One batch of an iteration; `next` is `None` when the iteration is complete.
#[derive(Clone, Debug)]
pub struct IterBatch {
    pub items: Vec<IterItem>,
    pub next: Option<IterCursor>,
}

/// Per-base (data file) statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseStats {
    pub number: u64,
    pub size_bytes: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    pub live_records: u64,
    pub removed_records: u64,
    pub open: bool,
}

/// Backend statistics.
#[derive(Clone, Debug, Default)]
pub struct BackendStats {
    /// Live, committed records.
    pub records: u64,
    /// Tombstones still kept.
    pub removed_records: u64,
    /// Prepared, uncommitted records.
    pub uncommitted_records: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    /// RAM used by the key index.
    pub index_memory_bytes: u64,
    pub bases: Vec<BaseStats>,
    pub read_only: bool,
    /// Set when a failed fsync or write has made the backend refuse writes.
    pub poisoned: Option<String>,
    pub defrag_running: bool,
    pub defrag_completed: u64,
    /// Group fsyncs done so far (durable writes per fsync = writes / this under `sync = 0`).
    pub fsyncs: u64,
    /// Bases written into the file of a base defrag dropped (`BlobConfig::reuse_bases`): new
    /// bases, and defrag's copies of bases it rewrites.
    pub bases_reused: u64,
}

/// What a defrag pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefragReport {
    pub bases_rewritten: u64,
    pub bases_deleted: u64,
    pub bytes_reclaimed: u64,
    pub records_copied: u64,
    pub tombstones_dropped: u64,
    /// The pass was stopped (`BlobBackend::stop_defrag`) before it had gone through every
    /// base; the base being rewritten then was left as it was.
    pub stopped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_byte_order() {
        let mut rng = 12345u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..10_000 {
            let mut a = [0u8; KEY_SIZE];
            let mut b = [0u8; KEY_SIZE];
            for i in 0..KEY_SIZE {
                a[i] = (next() % 3) as u8; // small alphabet: long common prefixes
                b[i] = (next() % 3) as u8;
            }
            assert_eq!(Key(a).cmp(&Key(b)), a.cmp(&b));
            assert_eq!(Key(a).cmp(&Key(a)), std::cmp::Ordering::Equal);
        }
    }
}
