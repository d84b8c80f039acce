//! The blob backend: an eblob-style append-only engine.
//!
//! # Layout
//! - [`format`](mod@format): the bytes on disk (base header, record header, checksums, sorted index).
//! - [`index`]: the compact in-memory index (fingerprint → packed location).
//! - [`scan`]: sequential reading of a base, shared by recovery, index builds, iteration, defrag.
//! - `open` (this file): configuration, the engine's state, recovery at start, space
//!   reservation, the zeros written ahead of the open base (`zero_ahead_bytes`), and the file
//!   of a dropped base kept to become the next base (`reuse_bases`).
//! - `load`: loading the index at start, a merge of the bases' sorted indexes split by key
//!   range across threads.
//! - `write`: every write mode, tombstones, appending records and rotating bases.
//! - `read`: lookup, read, iteration.
//! - `sync`: the write buffer and its flusher thread, group commit for blocking writers, the
//!   background thread, the thread that makes the next base ahead, and poisoning.
//! - `commit`: [`Committer`], group commit for callers that do not block a thread per write.
//! - `defrag`: online compaction of closed bases, and the prompt drop of bases whose every
//!   record was superseded.
//!
//! # How it works
//! A backend directory holds numbered bases `data-NNNNNNNN.blob`. The last one is *open* and
//! takes appends; the others are *closed* and each has a sorted index `data-NNNNNNNN.index`
//! written soon after it closed, so a restart reads indexes instead of data. A later base wins
//! over an earlier one for the same key, and inside a base a later offset wins; defrag rewrites
//! a base under the same number, so this order is never disturbed. Every record carries its
//! base's number (its tag), so a base made from a dropped base's file never reads the file's
//! earlier records as its own.
//!
//! Small records are gathered in a write buffer (default 1 MiB) and reach the OS in one
//! `pwrite`; what `sync` promises is in [`BlobConfig::sync`].

pub mod format;
pub mod index;
pub mod scan;

mod commit;
mod defrag;
mod load;
mod read;
mod sync;
mod write;

pub use self::commit::Committer;
use self::format::*;
use self::index::{Index, Loc};
pub use self::read::READ_SIZE_MAX;
use crate::device::{Device, Dir, FileDir};
use crate::error::{Result, StorageError};
use crate::types::*;
use parking_lot::{Condvar, Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// How the blob backend behaves. The defaults suit a general object store.
#[derive(Clone, Debug)]
pub struct BlobConfig {
    /// A base is closed once it holds this many bytes (eblob `blob_size`). Default 1 GiB; this
    /// is also the most extra space defrag needs and the most a restart scans.
    pub blob_size: u64,
    /// A base is closed once it holds this many records (eblob `records_in_blob`); 0 = no limit.
    pub records_in_blob: u64,
    /// Durability (eblob `sync`): `0` = a write is acknowledged only after fsync, and
    /// concurrent writers share one fsync (group commit); `N > 0` = fsync every N seconds;
    /// `-1` = never fsync (data reaches the OS within `flush_interval_ms`).
    pub sync: i64,
    /// Small records are gathered into a buffer of this size before reaching the OS; 0 hands
    /// every write to the OS before acknowledging it. A full buffer is handed to the flusher
    /// thread, which writes it without the writer lock while writers fill the next one (a
    /// writer flushes itself only past twice this size). A process crash loses at most what
    /// the buffers held, and never anything acknowledged under `sync = 0`.
    pub write_buffer_bytes: usize,
    /// The flusher thread hands buffered writes to the OS at least this often.
    pub flush_interval_ms: u64,
    /// Defrag rewrites a closed base once this fraction of it is dead (removed/overwritten).
    pub defrag_threshold: f64,
    /// Defrag reads and writes at most this many bytes per second; 0 = unthrottled.
    pub defrag_rate_bytes: u64,
    /// Tombstones are kept at least this long, so recovery can propagate deletes.
    pub tombstone_ttl_secs: u64,
    /// The backend refuses writes (ENOSPC) beyond this many bytes on disk; 0 = the disk's size.
    pub size_limit_bytes: u64,
    /// Rewrite a record in place when the new data fits its reservation (eblob's behaviour;
    /// off by default). In-place rewrites are not atomic under power loss: a crash in the
    /// middle of one destroys the version before it too (it then reads as -EILSEQ, never as
    /// wrong data), so with this on, `sync = 0` no longer guarantees that an acknowledged
    /// version survives an unacknowledged rewrite. Off, every change appends a new version
    /// and the old one stays intact until the new one is complete.
    pub overwrite_in_place: bool,
    /// log2 of the checksum chunk size (default 16 = 64 KiB).
    pub chunk_log2: u8,
    /// Run the background threads (flushing; periodic sync, index builds, defrag). Tests that want
    /// determinism turn it off and call [`BlobBackend::maintenance`].
    pub background: bool,
    /// Serve reads from a read-only memory map of each base instead of `pread` (no system
    /// call per read: warm small reads are several times faster). The cost: a disk error
    /// while reading through the map kills the process (SIGBUS) instead of failing one read
    /// with EIO. Devices that cannot be mapped use `pread` regardless.
    pub mmap_reads: bool,
    /// Keep the open base written with zeros this far past its last record, so that an
    /// fdatasync after an append writes data only: appending past a file's end, or into
    /// space reserved with `fallocate`, changes metadata (size, extents) that the filesystem
    /// must journal on every sync. Bytes are written twice (zeros, then the records), so this
    /// pays off only where syncs are frequent. `None` = [`ZERO_AHEAD_DEFAULT`] under
    /// `sync = 0`, off otherwise; `Some(0)` = off.
    pub zero_ahead_bytes: Option<u64>,
    /// Threads that load the index at start (each merges one key range of every base's
    /// sorted index). 0 = one per CPU for large loads, one for small ones.
    pub load_threads: usize,
    /// Keep the file of one base that defrag drops whole (every record superseded) and make
    /// it the next new base, written over from its start, instead of deleting it and growing
    /// a new file (`docs/format.md`, "Reused files"). Its pages are still in the page cache:
    /// appends copy into them, instead of into pages the kernel must allocate (and zero, on
    /// a VM whose host reclaims freed guest memory). Costs up to `blob_size` of disk while
    /// kept; not kept when the disk has less than `blob_size` free besides it, or past
    /// `size_limit_bytes`, which counts it.
    pub reuse_bases: bool,
}

/// How far the open base is zero-filled ahead of its records under `sync = 0` (see
/// [`BlobConfig::zero_ahead_bytes`]).
pub const ZERO_AHEAD_DEFAULT: u64 = 1 << 20;

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig {
            blob_size: 1 << 30,
            records_in_blob: 0,
            sync: 0,
            write_buffer_bytes: 1 << 20,
            flush_interval_ms: 10,
            defrag_threshold: 0.25,
            defrag_rate_bytes: 128 << 20,
            tombstone_ttl_secs: 3 * 24 * 3600,
            size_limit_bytes: 0,
            overwrite_in_place: false,
            chunk_log2: DEFAULT_CHUNK_LOG2,
            background: true,
            mmap_reads: true,
            zero_ahead_bytes: None,
            load_threads: 0,
            reuse_bases: true,
        }
    }
}

/// The file of a base defrag dropped, kept under [`KEPT_NAME`] until the next new base
/// takes it over ([`Inner::recycle`]).
pub(crate) struct KeptFile {
    pub(crate) dev: Arc<dyn Device>,
    /// Its length: bytes of its earlier life, which the new base writes over.
    len: u64,
}

/// The kept file's name while it waits: a `.tmp`, so a restart deletes it.
const KEPT_NAME: &str = "spare-base.tmp";

/// A base made ahead of its turn ([`Inner::prepare_next`]): its file has its name, its
/// header is durable and its room reserved, so the rotation that opens it waits on no
/// filesystem call. Empty (or holding a kept file's earlier life): found after a crash, it
/// is the newest base and holds nothing, and the one before it is rebuilt as closed.
pub(crate) struct NextBase {
    number: u64,
    generation: u64,
    dev: Arc<dyn Device>,
    /// Bytes of a kept file's earlier life, which appends write over (else the header's).
    written: u64,
    /// The end of its reservation.
    reserved: u64,
}

/// One base (data file).
pub(crate) struct Base {
    number: u64,
    generation: u64,
    /// The tag its records carry ([`BaseHeader::tag`]); a header with another is not one of
    /// its records (a reused file's earlier life, see [`Inner::recycle`]).
    tag: u32,
    slot: u16,
    dev: Arc<dyn Device>,
    /// End of the records (for the open base: including buffered ones).
    end: AtomicU64,
    /// Bytes handed to the device; `end` minus this is in the write buffer.
    flushed: AtomicU64,
    live_bytes: AtomicU64,
    live_records: AtomicU64,
    removed_records: AtomicU64,
    open: AtomicBool,
    defragging: AtomicBool,
    /// The base mapped for reads (see [`BlobConfig::mmap_reads`]).
    map: Option<memmap2::Mmap>,
    /// Every record in it was written by this process (a base created since start, or a
    /// defrag's copy), so none can have been torn by a crash; a base found at start may
    /// hold damaged records, which its index build must leave out.
    written_here: bool,
}

impl Base {
    /// Whether its counters say it holds no current record, tombstone or reservation (the
    /// index and the pending map confirm: `holds_nothing_current`).
    fn counts_nothing(&self) -> bool {
        self.live_records.load(Ordering::Acquire) == 0
            && self.removed_records.load(Ordering::Acquire) == 0
            && self.live_bytes.load(Ordering::Acquire) == 0
    }

    /// The record header in `b`, if it is valid and one of this base's records (its tag).
    fn record_header(&self, b: &[u8]) -> Option<RecordHeader> {
        RecordHeader::decode(b).filter(|h| h.tag == self.tag)
    }

    /// A scanner of `[start, end)`: through the map where reads may use it
    /// ([`Inner::mapped`]), otherwise with `pread`.
    fn scanner(&self, start: u64, end: u64) -> scan::Scanner<'_> {
        let map = usize::try_from(end)
            .ok()
            .and_then(|len| Inner::mapped(self, 0, len));
        match map {
            Some(m) => scan::Scanner::mapped(&*self.dev, m, self.tag, start, end),
            None => scan::Scanner::new(&*self.dev, self.tag, start, end),
        }
    }

    fn stats(&self) -> BaseStats {
        let size = self.end.load(Ordering::Acquire);
        let live = self.live_bytes.load(Ordering::Relaxed);
        BaseStats {
            number: self.number,
            size_bytes: size,
            live_bytes: live,
            dead_bytes: size.saturating_sub(BASE_HEADER_SIZE).saturating_sub(live),
            live_records: self.live_records.load(Ordering::Relaxed),
            removed_records: self.removed_records.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
        }
    }
    /// Counts a record that became current in this base.
    fn add_live(&self, h: &RecordHeader) {
        let mut c = LiveCounts::default();
        c.add(h.disk_size(), h.flags);
        self.add_counts(&c);
    }
    fn add_counts(&self, c: &LiveCounts) {
        for (n, to) in [
            (c.bytes, &self.live_bytes),
            (c.records, &self.live_records),
            (c.removed, &self.removed_records),
        ] {
            if n > 0 {
                to.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
    /// Counts a record of this base that stopped being current.
    fn sub_live(&self, h: &RecordHeader) {
        let _ = self
            .live_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(h.disk_size()))
            });
        let c = if h.is_removed() {
            &self.removed_records
        } else {
            &self.live_records
        };
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }
}

/// What is current in a base: bytes (of records, tombstones and reservations), live records,
/// tombstones.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LiveCounts {
    bytes: u64,
    records: u64,
    removed: u64,
}

impl LiveCounts {
    /// Counts one current record (a prepared one counts its bytes only).
    pub(crate) fn add(&mut self, disk_size: u64, flags: u64) {
        self.bytes += disk_size;
        if flags & record_flags::UNCOMMITTED == 0 {
            if flags & record_flags::REMOVE != 0 {
                self.removed += 1;
            } else {
                self.records += 1;
            }
        }
    }
}

/// The file name of base `number` inside the backend directory.
pub fn base_name(number: u64) -> String {
    file_name(number, b".blob")
}

/// [`base_name`] appended to `out` (a reply's path, built without a `String` or `PathBuf`).
pub fn push_base_name(out: &mut Vec<u8>, number: u64) {
    push_file_name(out, number, b".blob");
}

pub(crate) fn index_name(number: u64) -> String {
    file_name(number, b".index")
}

fn file_name(number: u64, ext: &[u8]) -> String {
    let mut name = Vec::new();
    push_file_name(&mut name, number, ext);
    String::from_utf8(name).expect("ASCII")
}

/// `data-NNNNNNNN` (the number zero-padded to 8 digits) and `ext`. By hand: `format!`'s
/// zero padding costs a call per fill character, and a write's reply names its base.
fn push_file_name(out: &mut Vec<u8>, number: u64, ext: &[u8]) {
    let mut digits = [b'0'; 20];
    let (mut n, mut at) = (number, digits.len());
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(b"data-");
    out.extend_from_slice(&digits[at.min(digits.len() - 8)..]);
    out.extend_from_slice(ext);
}

/// State guarded by the writer lock: the open base and its write buffer.
pub(crate) struct Writer {
    open: Arc<Base>,
    /// Logical end of the open base.
    tail: u64,
    /// Buffered bytes, which belong at `buf_start..tail` of the open base.
    buf: Vec<u8>,
    buf_start: u64,
    /// A buffer the flusher thread writes to the device without holding the writer lock
    /// (see [`Inner::flush_in_background`]): it belongs at `inflight.0..buf_start` of the open
    /// base, and reads take those bytes from here. Whoever holds the writer lock and then
    /// `flush_lock` knows that write is over and may drop it.
    inflight: Option<(u64, Arc<Vec<u8>>)>,
    /// A cleared buffer kept for reuse.
    spare: Vec<u8>,
    /// Records appended to the open base.
    open_records: u64,
    /// How far the open base's disk space is reserved (fallocate): appends below it cannot
    /// meet a full disk, so a buffered record is never lost to ENOSPC at flush time.
    reserved: u64,
    /// How far the open base's file is written (records, then zeros, or a reused file's
    /// earlier life): its length. Moves past `tail` with [`BlobConfig::zero_ahead_bytes`],
    /// and is the reused file's length after [`Inner::recycle`]. Below it the gaps of a
    /// record written straight to the device are written with zeros (they may hold the
    /// earlier life), as they would read in a new file.
    zeroed: u64,
    /// Every mutation gets the next sequence number; group commit makes a prefix durable.
    seq: u64,
    /// Closed bases written to (in place) or closed since the last sync.
    dirty: Vec<Arc<Base>>,
    /// Whether the open base has asked for the next one to be made ([`Inner::prepare_next`]).
    next_asked: bool,
    /// When the open base opened (its fill rate: [`Inner::ask_next`]).
    opened: std::time::Instant,
}

pub(crate) struct SyncState {
    durable_seq: u64,
    leader: bool,
    /// Writers waiting until their sequence number is durable (or until one of them is
    /// handed the lead): each is woken by name, only when there is something for it to do.
    waiters: Vec<(u64, Arc<sync::Waiter>)>,
    /// The sequence number reached once the writers the last fsync woke have all appended
    /// again; a leader waits for it before its fsync (see `Inner::lead`).
    expect: u64,
    /// The leader, while it waits for `expect`.
    gathering: Option<Arc<sync::Waiter>>,
    /// How long the last fsync took (bounds that wait).
    last_sync: std::time::Duration,
}

pub(crate) struct Inner {
    cfg: BlobConfig,
    dir: Arc<dyn Dir>,
    index: Index,
    /// Prepared, uncommitted reservations.
    pending: Mutex<index::KeyMap<Loc>>,
    /// Slot → base. Defrag installs the rewritten base in a new slot and retires the old one.
    bases: RwLock<Vec<Option<Arc<Base>>>>,
    writer: Mutex<Writer>,
    /// Held through a background flush's write (taken after the writer lock, never before).
    flush_lock: Mutex<()>,
    /// The write buffer is full and the flusher thread was asked to write it.
    flush_requested: AtomicBool,
    /// Group commit: the durable sequence number, who leads, who waits (see `sync.rs`).
    sync_state: std::sync::Mutex<SyncState>,
    /// Per-key locks (striped): writers exclusive, readers shared.
    locks: Box<[RwLock<()>]>,
    poisoned: Mutex<Option<String>>,
    is_poisoned: AtomicBool,
    read_only: AtomicBool,
    /// Closed bases whose sorted index is still to be written, with when they closed.
    index_queue: Mutex<Vec<(Arc<Base>, std::time::Instant)>>,
    defrag_lock: Mutex<()>,
    defrag_running: AtomicBool,
    /// Asks the running defrag pass to stop (checked between records).
    defrag_stop: AtomicBool,
    defrag_completed: AtomicU64,
    /// Bases whose counters said they hold nothing current but the index disagreed: the
    /// prompt drop (`drop_superseded`) does not look at them again (a look scans the index);
    /// defrag passes do, and clear this.
    not_droppable: Mutex<Vec<u64>>,
    shutdown: Mutex<bool>,
    shutdown_cv: Condvar,
    /// Wakes the flusher thread (with the `shutdown` mutex).
    flush_cv: Condvar,
    last_sync: Mutex<std::time::Instant>,
    /// Group fsyncs done (for stats).
    fsyncs: AtomicU64,
    /// A dropped base's file kept to become the next base ([`Inner::recycle`]).
    kept: Mutex<Option<KeptFile>>,
    /// Bases made from a kept file (for stats).
    bases_reused: AtomicU64,
    /// The next base, made ahead by the thread that prepares it; its lock is held while a
    /// base is made, so one base is never made twice.
    next: Mutex<Option<NextBase>>,
    /// The number the next base takes: changed under the writer lock (when a base opens),
    /// read without it by the thread that makes the next base.
    next_number: AtomicU64,
    /// Asks the thread that prepares the next base to make one (with the `shutdown` mutex).
    next_wanted: AtomicBool,
    next_cv: Condvar,
}

const LOCK_STRIPES: usize = 4096;

/// How long the background thread lets a closed base wait before writing its index (see
/// [`Inner::build_indexes`]).
pub(crate) const INDEX_DELAY: std::time::Duration = std::time::Duration::from_secs(3);

/// How long before the open base fills, at its rate, the next base is asked for at the latest
/// ([`Inner::ask_next`]).
const NEXT_LEAD: std::time::Duration = std::time::Duration::from_secs(1);

/// How much more of the open base is reserved at once when the whole base could not be.
const RESERVE_STEP: u64 = 8 << 20;

/// The blob backend. Dropping it flushes and syncs everything.
pub struct BlobBackend {
    inner: Arc<Inner>,
    /// The background thread and the flusher (none when `background` is off).
    background: Vec<std::thread::JoinHandle<()>>,
}

/// What the start-up recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub bases: u64,
    pub indexes_rebuilt: u64,
    pub open_base_records: u64,
    /// Bytes cut from the end of the open base (a torn tail; zeros past the last record,
    /// and a reused file's earlier life, are not counted).
    pub truncated_bytes: u64,
    /// Bytes cut from the end of the open base that were a reused file's earlier life
    /// ([`BlobConfig::reuse_bases`]): everything past the last record when a record with
    /// another base's tag lies there.
    pub reused_tail_bytes: u64,
    /// Records of the open base skipped because their data failed its checksum.
    pub damaged_records: u64,
    /// The open base's index from the last clean shutdown was used.
    pub open_base_checkpoint: bool,
    /// Bytes of the open base scanned (and verified) record by record.
    pub scanned_bytes: u64,
}

impl BlobBackend {
    /// [`Backend::read`](crate::Backend::read) handing `f` the record's bytes where the
    /// engine has them (the memory map, verified, under the key's lock) instead of in a new
    /// vector: a server copies them once, into its reply.
    pub fn read_with<R>(
        &self,
        key: &Key,
        req: &ReadRequest,
        f: impl FnOnce(ReadView<'_>) -> R,
    ) -> Result<R> {
        self.inner.read_with(key, req, f)
    }

    /// Why the engine refuses writes after a failed sync, if it does: what
    /// `stats().poisoned` says, without gathering the rest of the statistics.
    pub fn poisoned(&self) -> Option<String> {
        if !self.inner.is_poisoned.load(Ordering::Acquire) {
            return None;
        }
        self.inner.poisoned.lock().clone()
    }

    /// [`Backend::read`](crate::Backend::read) without copying the bytes out of the base's
    /// memory map where they are in it: the answer shares the map (see `Inner::read_shared`),
    /// so a large read costs no memory of its own.
    pub fn read_shared(&self, key: &Key, req: &ReadRequest) -> Result<SharedRead> {
        self.inner.read_shared(key, req)
    }

    /// Opens (or creates) a backend in a directory on the filesystem.
    pub fn open_path(path: impl AsRef<std::path::Path>, cfg: BlobConfig) -> Result<BlobBackend> {
        let dir = FileDir::open(path).map_err(|e| StorageError::Open(e.to_string()))?;
        BlobBackend::open(Arc::new(dir), cfg).map(|(b, _)| b)
    }

    /// Opens (or creates) a backend on any [`Dir`], recovering the open base.
    pub fn open(dir: Arc<dyn Dir>, cfg: BlobConfig) -> Result<(BlobBackend, RecoveryReport)> {
        if !(CHUNK_LOG2_MIN..=CHUNK_LOG2_MAX).contains(&cfg.chunk_log2) {
            return Err(StorageError::InvalidArgument(format!(
                "chunk_log2 must be in {CHUNK_LOG2_MIN}..={CHUNK_LOG2_MAX}"
            )));
        }
        if cfg.blob_size < 1 << 16 || cfg.blob_size > index::OFFSET_MAX {
            return Err(StorageError::InvalidArgument(
                "blob_size must be between 64 KiB and 256 TiB".into(),
            ));
        }
        let (inner, report) = Inner::open(dir, cfg)?;
        let inner = Arc::new(inner);
        let background = if inner.cfg.background {
            sync::spawn_background(inner.clone())
        } else {
            Vec::new()
        };
        Ok((BlobBackend { inner, background }, report))
    }

    /// Runs one round of background work now: hands buffered writes to the OS, writes
    /// pending base indexes, and syncs when the `sync` period says so.
    pub fn maintenance(&self) -> Result<()> {
        self.inner.maintenance(true)
    }

    /// Closes the open base and starts a new one (normally done when a base is full).
    pub fn rotate(&self) -> Result<()> {
        let mut w = self.inner.writer.lock();
        self.inner.rotate(&mut w)?;
        drop(w);
        self.inner.build_pending_indexes()
    }

    /// Defrags every closed base whose dead fraction is at least `threshold` (0 = all that
    /// have anything dead).
    pub fn defrag_with_threshold(&self, threshold: f64) -> Result<DefragReport> {
        self.inner.defrag(threshold)
    }

    /// Stops a running defrag pass at its next record: the base it is rewriting stays as it
    /// was (its partial copy is deleted), bases already rewritten stay rewritten. Returns
    /// whether a pass was running.
    pub fn stop_defrag(&self) -> bool {
        let running = self.inner.defrag_running.load(Ordering::Acquire);
        if running {
            self.inner.defrag_stop.store(true, Ordering::Release);
        }
        running
    }
}

impl Drop for BlobBackend {
    fn drop(&mut self) {
        {
            *self.inner.shutdown.lock() = true;
            self.inner.shutdown_cv.notify_all();
            self.inner.flush_cv.notify_all();
            self.inner.next_cv.notify_all();
        }
        for h in self.background.drain(..) {
            let _ = h.join();
        }
        // Otherwise the next start would take the empty base made ahead for the open one.
        self.inner.discard_next();
        if !self.inner.is_poisoned.load(Ordering::Acquire) {
            let trimmed = self.inner.trim_open_locked(&mut self.inner.writer.lock());
            match trimmed.and_then(|()| self.inner.sync_all()) {
                Ok(()) => {
                    let _ = self.inner.build_pending_indexes();
                    // An index of the open base spares the next start its scan.
                    let open = self.inner.writer.lock().open.clone();
                    if open.end.load(Ordering::Acquire) > BASE_HEADER_SIZE {
                        if let Err(e) = self.inner.write_index(&open) {
                            tracing::warn!(error = %e, "blob: could not checkpoint the open base");
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "blob backend: final sync failed"),
            }
        }
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

impl Inner {
    fn open(dir: Arc<dyn Dir>, cfg: BlobConfig) -> Result<(Inner, RecoveryReport)> {
        let mut report = RecoveryReport::default();
        let open_err = |e: std::io::Error| StorageError::Open(e.to_string());
        let mut numbers = Vec::new();
        for name in dir.list().map_err(open_err)? {
            if name.ends_with(".tmp") {
                dir.remove(&name).map_err(open_err)?;
                continue;
            }
            if let Some(n) = name
                .strip_prefix("data-")
                .and_then(|r| r.strip_suffix(".blob"))
            {
                if let Ok(n) = n.parse::<u64>() {
                    numbers.push(n);
                }
            }
        }
        numbers.sort_unstable();
        let mut bases = Vec::new();
        for (i, &n) in numbers.iter().enumerate() {
            let dev = dir.open(&base_name(n), false).map_err(open_err)?;
            let len = dev.len().map_err(open_err)?;
            let mut hb = [0u8; BASE_HEADER_SIZE as usize];
            let hdr = if len >= BASE_HEADER_SIZE {
                dev.read_at(&mut hb, 0).map_err(open_err)?;
                BaseHeader::decode(&hb)
            } else {
                Err("base file is shorter than its header".into())
            };
            let hdr = match hdr {
                Ok(h) if h.number == n => h,
                Ok(_) => {
                    return Err(StorageError::Open(format!(
                        "{} holds a different base number",
                        base_name(n)
                    )))
                }
                // A base whose header never became durable can only be the newest one,
                // created just before a crash: it holds nothing.
                Err(_) if i + 1 == numbers.len() && len <= BASE_HEADER_SIZE => {
                    dir.remove(&base_name(n)).map_err(open_err)?;
                    continue;
                }
                Err(e) => return Err(StorageError::Open(format!("{}: {e}", base_name(n)))),
            };
            // The newest base stays open and grows: map room for it to fill.
            let map_len = if i + 1 == numbers.len() {
                len.max(cfg.blob_size)
            } else {
                len
            };
            bases.push(Arc::new(Base {
                number: n,
                generation: hdr.generation,
                tag: hdr.tag(),
                slot: bases.len() as u16,
                map: map_base(&cfg, &dev, map_len),
                dev,
                end: AtomicU64::new(len),
                flushed: AtomicU64::new(len),
                live_bytes: AtomicU64::new(0),
                live_records: AtomicU64::new(0),
                removed_records: AtomicU64::new(0),
                open: AtomicBool::new(false),
                defragging: AtomicBool::new(false),
                written_here: false,
            }));
        }
        if bases.len() > u16::MAX as usize / 2 {
            return Err(StorageError::Open(
                "too many bases (more than 32767)".into(),
            ));
        }
        report.bases = bases.len() as u64;

        let inner_dir = dir.clone();
        let next_number = bases.last().map_or(1, |b| b.number + 1);
        // The newest base is the open one: scan it, verify every record, cut a torn tail.
        let mut open_entries = Vec::new();
        if let Some(open) = bases.last() {
            let end = open.dev.len().map_err(open_err)?;
            // A clean shutdown left an index of the open base: scan only past it.
            let mut scan_from = BASE_HEADER_SIZE;
            if let Some((entries, covered)) = load_checkpoint(&*dir, open, end) {
                open_entries = entries;
                scan_from = covered;
                report.open_base_checkpoint = true;
            }
            report.scanned_bytes = end - scan_from;
            let mut sc = scan::Scanner::new(&*open.dev, open.tag, scan_from, end);
            while let Some((off, h)) = sc.next_record()? {
                if !h.is_uncommitted() && sc.verify(off, &h)?.is_err() {
                    // Damaged or torn: the key keeps its previous version.
                    report.damaged_records += 1;
                    continue;
                }
                open_entries.push(IndexEntry {
                    key: h.key,
                    offset: off,
                    flags: h.flags,
                    disk_size: h.disk_size(),
                });
            }
            let valid_end = sc.valid_end;
            if valid_end < end {
                // Zeros past the last record are the zero-filled room ahead of it
                // (`zero_ahead_bytes`), and records with another base's tag a reused
                // file's earlier life (`reuse_bases`): neither is damage.
                // Past the last record, a reused file holds the rest of the earlier record
                // the last append wrote over, then the earlier life's records: all of it
                // counts as the earlier life's (a record torn there counts with it).
                let torn_end = if sc.foreign_at.is_some() {
                    valid_end
                } else {
                    end
                };
                report.reused_tail_bytes = end - torn_end;
                report.truncated_bytes =
                    nonzero_extent(&*open.dev, valid_end, torn_end).map_err(open_err)?;
                open.dev.set_len(valid_end).map_err(open_err)?;
                open.dev.sync().map_err(open_err)?;
            }
            open.end.store(valid_end, Ordering::Release);
            open.flushed.store(valid_end, Ordering::Release);
            open.open.store(true, Ordering::Release);
            report.open_base_records = open_entries.len() as u64;
            // Sorted there; a checkpoint alone is sorted already, which pdqsort notices.
            newest_per_key(&mut open_entries);
        }
        let open_entries = Arc::new(open_entries);

        // Recovery cut the open base at its last record: nothing lies past its end yet.
        let open_end = bases
            .last()
            .map_or(BASE_HEADER_SIZE, |b| b.end.load(Ordering::Acquire));
        let mut inner = Inner {
            index: Index::default(),
            pending: Mutex::new(Default::default()),
            bases: RwLock::new(bases.iter().cloned().map(Some).collect()),
            writer: Mutex::new(Writer {
                open: bases
                    .last()
                    .cloned()
                    .unwrap_or_else(|| bases_placeholder(&dir)),
                tail: open_end,
                buf: Vec::new(),
                buf_start: 0,
                inflight: None,
                spare: Vec::new(),
                open_records: open_entries.len() as u64,
                reserved: 0,
                zeroed: open_end,
                seq: 0,
                dirty: Vec::new(),
                next_asked: false,
                opened: std::time::Instant::now(),
            }),
            sync_state: std::sync::Mutex::new(SyncState {
                durable_seq: 0,
                leader: false,
                waiters: Vec::new(),
                expect: 0,
                gathering: None,
                last_sync: std::time::Duration::ZERO,
            }),
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            poisoned: Mutex::new(None),
            is_poisoned: AtomicBool::new(false),
            read_only: AtomicBool::new(false),
            index_queue: Mutex::new(Vec::new()),
            defrag_lock: Mutex::new(()),
            flush_lock: Mutex::new(()),
            flush_requested: AtomicBool::new(false),
            defrag_running: AtomicBool::new(false),
            defrag_stop: AtomicBool::new(false),
            defrag_completed: AtomicU64::new(0),
            not_droppable: Mutex::new(Vec::new()),
            shutdown: Mutex::new(false),
            shutdown_cv: Condvar::new(),
            flush_cv: Condvar::new(),
            last_sync: Mutex::new(std::time::Instant::now()),
            fsyncs: AtomicU64::new(0),
            kept: Mutex::new(None),
            bases_reused: AtomicU64::new(0),
            next: Mutex::new(None),
            next_number: AtomicU64::new(next_number),
            next_wanted: AtomicBool::new(false),
            next_cv: Condvar::new(),
            dir: inner_dir,
            cfg,
        };

        // Closed bases: their sorted index, rebuilt from the data when missing or damaged.
        let closed = bases.len().saturating_sub(1);
        loop {
            let mut sources = Vec::new();
            let mut total = open_entries.len() as u64;
            for b in &bases[..closed] {
                let run = match inner.index_run(b)? {
                    Some(r) => r,
                    None => {
                        inner.write_index(b)?;
                        report.indexes_rebuilt += 1;
                        inner.index_run(b)?.ok_or_else(|| {
                            StorageError::Open("index just written is unreadable".into())
                        })?
                    }
                };
                if let load::Run::File { entries, .. } = &run {
                    total += entries;
                }
                sources.push(load::Source {
                    base: b.clone(),
                    run,
                });
            }
            if let Some(open) = bases.last() {
                sources.push(load::Source {
                    base: open.clone(),
                    run: load::Run::Mem(open_entries.clone()),
                });
            }
            match inner.merge(sources, total as usize) {
                Ok(()) => break,
                Err(StorageError::Corrupt(msg)) => {
                    // A damaged index file: drop it, rebuild from data, and load again.
                    tracing::warn!(%msg, "blob: rebuilding a damaged base index");
                    for b in &bases[..closed] {
                        if inner.index_run(b).is_err()
                            || msg.contains(&format!("base {}", b.number))
                        {
                            let _ = inner.dir.remove(&index_name(b.number));
                        }
                    }
                    inner.reset_loaded_state();
                }
                Err(e) => return Err(e),
            }
        }
        {
            let mut w = inner.writer.lock();
            if bases.is_empty() {
                inner.create_open_base(&mut w)?;
            } else {
                let open = w.open.clone();
                // A full disk must not keep a backend from opening: reads go on, and each
                // write reserves what it needs (ENOSPC then).
                w.reserved = inner.reserve_base(&*open.dev, w.tail).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "blob: no space reserved for the open base");
                    w.tail
                });
                w.buf_start = w.tail;
            }
        }
        Ok((inner, report))
    }

    fn reset_loaded_state(&mut self) {
        self.index = Index::default();
        self.pending.lock().clear();
        for b in self.bases.read().iter().flatten() {
            b.live_bytes.store(0, Ordering::Relaxed);
            b.live_records.store(0, Ordering::Relaxed);
            b.removed_records.store(0, Ordering::Relaxed);
        }
    }

    /// Scans a closed base and writes its sorted index (via a temporary file and rename).
    fn write_index(&self, b: &Base) -> Result<()> {
        let end = b.end.load(Ordering::Acquire);
        // Records this process wrote and flushed were not torn by a crash: only a base found
        // at start (or a backend whose writes failed) needs its data checked.
        let check = !b.written_here || self.is_poisoned.load(Ordering::Acquire);
        // At least this many (overwritten records come on top).
        let live =
            b.live_records.load(Ordering::Relaxed) + b.removed_records.load(Ordering::Relaxed);
        let mut entries = Vec::with_capacity(live.min(end / RECORD_HEADER_SIZE) as usize);
        let mut sc = b.scanner(BASE_HEADER_SIZE, end);
        while let Some((off, h)) = sc.next_record()? {
            if check && !h.is_uncommitted() && sc.verify(off, &h)?.is_err() {
                // Torn by a crash before the base was synced: the key keeps its previous
                // version.
                tracing::warn!(
                    base = b.number,
                    offset = off,
                    "blob: skipping a damaged record"
                );
                continue;
            }
            entries.push(IndexEntry {
                key: h.key,
                offset: off,
                flags: h.flags,
                disk_size: h.disk_size(),
            });
        }
        newest_per_key(&mut entries);
        let hdr = IndexHeader {
            base_number: b.number,
            base_generation: b.generation,
            entries: entries.len() as u64,
            covered_end: end,
        };
        let tmp = format!("{}.tmp", index_name(b.number));
        let dev = self.dir.open(&tmp, true)?;
        dev.set_len(0)?;
        let mut pos = 0;
        encode_index_with(&hdr, &entries, 1 << 20, |piece| {
            dev.write_at(piece, pos)?;
            pos += piece.len() as u64;
            Ok(())
        })
        .map_err(|e| StorageError::from_io(e, "writing a base index"))?;
        dev.sync()?;
        self.dir.rename(&tmp, &index_name(b.number))?;
        self.dir.sync_dir()?;
        Ok(())
    }

    /// Writes the indexes of bases closed since the last call.
    fn build_pending_indexes(&self) -> Result<()> {
        self.build_indexes(std::time::Duration::ZERO)
    }

    /// Writes the sorted index of every base closed at least `settled` ago (after an fsync
    /// of the base). The background thread waits [`INDEX_DELAY`]: a base that every record
    /// of is superseded by then is dropped without one (`drop_superseded`), as under an
    /// overwrite load most are, instead of being synced, scanned and sorted for nothing.
    pub(crate) fn build_indexes(&self, settled: std::time::Duration) -> Result<()> {
        let due: Vec<_> = {
            let mut q = self.index_queue.lock();
            let (due, wait) = std::mem::take(&mut *q)
                .into_iter()
                .partition(|(_, closed)| closed.elapsed() >= settled);
            *q = wait;
            due
        };
        let mut due = due.into_iter();
        while let Some((b, closed)) = due.next() {
            if let Err(e) = b
                .dev
                .sync()
                .map_err(StorageError::from)
                .and_then(|_| self.write_index(&b))
            {
                // Not fatal: a restart rebuilds a missing index from the data.
                tracing::warn!(base = b.number, error = %e, "blob: could not write a base index");
                let mut q = self.index_queue.lock();
                q.push((b, closed));
                q.extend(due);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes `b` out of the index queue (it is being dropped: no index is needed).
    pub(crate) fn unqueue_index(&self, b: &Arc<Base>) {
        self.index_queue.lock().retain(|(q, _)| !Arc::ptr_eq(q, b));
    }

    pub(crate) fn base(&self, slot: u16) -> Option<Arc<Base>> {
        self.bases.read().get(slot as usize).and_then(|b| b.clone())
    }

    fn key_lock(&self, key: &Key) -> &RwLock<()> {
        &self.locks[(key.fingerprint() as usize ^ key.stripe_bits()) % LOCK_STRIPES]
    }

    /// Installs a base in a free slot.
    fn install_base(&self, make: impl FnOnce(u16) -> Base) -> Result<Arc<Base>> {
        let mut t = self.bases.write();
        let slot = match t.iter().position(|b| b.is_none()) {
            Some(s) => s,
            None if t.len() < u16::MAX as usize => {
                t.push(None);
                t.len() - 1
            }
            None => return Err(StorageError::Limit("no free base slots".into())),
        };
        let b = Arc::new(make(slot as u16));
        t[slot] = Some(b.clone());
        Ok(b)
    }

    /// Makes the next base the open one: the one made ahead ([`Inner::prepare_next`]) when
    /// it is there, else made now.
    fn create_open_base(&self, w: &mut Writer) -> Result<()> {
        let number = self.next_number.load(Ordering::Acquire);
        let made = {
            // Waits while the preparing thread is making it.
            let mut next = self.next.lock();
            match next.take() {
                Some(n) if n.number == number => n,
                stale => {
                    if let Some(n) = stale {
                        self.remove_made(&n);
                    }
                    self.make_base(number)?
                }
            }
        };
        let NextBase {
            number,
            generation,
            dev,
            written,
            reserved,
        } = made;
        let map = map_base(&self.cfg, &dev, self.cfg.blob_size);
        let base = self.install_base(|slot| Base {
            number,
            generation,
            tag: record_tag(number),
            slot,
            map,
            dev,
            end: AtomicU64::new(BASE_HEADER_SIZE),
            flushed: AtomicU64::new(BASE_HEADER_SIZE),
            live_bytes: AtomicU64::new(0),
            live_records: AtomicU64::new(0),
            removed_records: AtomicU64::new(0),
            open: AtomicBool::new(true),
            defragging: AtomicBool::new(false),
            written_here: true,
        })?;
        debug_assert!(w.buf.is_empty() && w.inflight.is_none());
        w.open = base;
        w.tail = BASE_HEADER_SIZE;
        w.zeroed = written.max(BASE_HEADER_SIZE);
        w.reserved = reserved;
        w.buf_start = BASE_HEADER_SIZE;
        w.open_records = 0;
        w.next_asked = false;
        w.opened = std::time::Instant::now();
        self.next_number.store(number + 1, Ordering::Release);
        Ok(())
    }

    /// Asks for the next base while the open one fills (the flusher thread looks every
    /// `flush_interval_ms`): once it is half full, late enough for the base before it to
    /// have been dropped and its file kept (made at once when a base opens, it was always a
    /// new file); or earlier when, at the rate it has filled, it would be full within
    /// [`NEXT_LEAD`]: under 1 MiB writes a base fills in under a second, and the other half
    /// was less time than making the next one can take while another thread fsyncs a GiB
    /// (the rotation then waited for it).
    pub(crate) fn ask_next(&self, w: &mut Writer) {
        if w.next_asked {
            return;
        }
        let half = w.tail >= self.cfg.blob_size / 2
            || (self.cfg.records_in_blob > 0 && w.open_records >= self.cfg.records_in_blob / 2);
        let filled = w.tail.saturating_sub(BASE_HEADER_SIZE) as f64;
        let left = self.cfg.blob_size.saturating_sub(w.tail) as f64;
        let soon = filled > 0.0
            && left * w.opened.elapsed().as_secs_f64() < filled * NEXT_LEAD.as_secs_f64();
        if half || soon {
            w.next_asked = true;
            self.want_next();
        }
    }

    /// Wakes the thread that makes the next base.
    pub(crate) fn want_next(&self) {
        self.next_wanted.store(true, Ordering::Release);
        let _g = self.shutdown.lock();
        self.next_cv.notify_one();
    }

    /// Makes base `number`'s file: the kept file when there is one, else a new file; its
    /// header durable, its room reserved, its name durable. Each step may wait on the
    /// filesystem's journal (hundreds of milliseconds while another thread deletes or
    /// fsyncs a GiB), which is why a base is made ahead where it can be.
    fn make_base(&self, number: u64) -> Result<NextBase> {
        let name = base_name(number);
        let generation = random_u64();
        let header = BaseHeader {
            number,
            generation,
            tagged: true,
        }
        .encode();
        // A kept file holds its earlier life's bytes up to `written`: appends write over them.
        // (A kept file's header is written by `recycle`.)
        let (dev, written, fresh) = match self.recycle(&name, Some(&header)) {
            Some(kept) => (kept.dev, kept.len, false),
            None => {
                let dev = self
                    .dir
                    .open(&name, true)
                    .map_err(|e| StorageError::from_io(e, "creating a base"))?;
                (dev, BASE_HEADER_SIZE, true)
            }
        };
        let setup = self
            .reserve_base(&*dev, BASE_HEADER_SIZE)
            .and_then(|reserved| {
                (|| {
                    if fresh {
                        dev.write_durable_at(&header, 0)?;
                    }
                    self.dir.sync_dir()
                })()
                .map_err(|e| StorageError::from_io(e, "creating a base"))
                .map(|()| reserved)
            });
        match setup {
            Ok(reserved) => Ok(NextBase {
                number,
                generation,
                dev,
                written,
                reserved,
            }),
            Err(e) => {
                let _ = self.dir.remove(&name);
                Err(e)
            }
        }
    }

    /// Makes the next base ahead of its turn, unless it is made already (the thread that
    /// prepares it calls this when the open base asks: [`Inner::ask_next`]). Not on a backend that
    /// refuses writes, nor on a disk short of room for two bases, nor under a size limit
    /// (the rotation makes it then).
    pub(crate) fn prepare_next(&self) {
        let mut next = self.next.lock();
        let number = self.next_number.load(Ordering::Acquire);
        if next.as_ref().is_some_and(|n| n.number == number) || self.check_writable().is_err() {
            return;
        }
        // A new file reserves a whole base: only where the disk has that besides the open
        // base's room, or the reservation would take room the open base's records need. And
        // not under a size limit, which counts a kept file and deletes it for room: a base
        // made from it would hold that room out of reach.
        let room = self.kept.lock().is_some()
            || self
                .dir
                .free_space()
                .is_ok_and(|free| free >= self.cfg.blob_size.saturating_mul(2));
        if !room || self.cfg.size_limit_bytes > 0 {
            return;
        }
        if let Some(stale) = next.take() {
            self.remove_made(&stale);
        }
        match self.make_base(number) {
            Ok(n) => *next = Some(n),
            Err(e) => tracing::warn!(error = %e, "blob: could not make the next base ahead"),
        }
    }

    /// Deletes the base made ahead, if any (at shutdown: a start finds no empty base).
    pub(crate) fn discard_next(&self) {
        if let Some(n) = self.next.lock().take() {
            self.remove_made(&n);
            if let Err(e) = self.dir.sync_dir() {
                tracing::warn!(error = %e, "blob: could not sync the removal of the next base");
            }
        }
    }

    fn remove_made(&self, n: &NextBase) {
        if let Err(e) = self.dir.remove(&base_name(n.number)) {
            tracing::warn!(base = n.number, error = %e, "blob: could not delete a base made ahead");
        }
    }

    /// Reserves disk space for the open base `dev`, whose records end at `tail`: the whole
    /// base (`blob_size`) when the disk has room, else as much as the next record needs
    /// ([`Inner::reserve_for`] grows it then). A disk too full for a whole base still takes
    /// small records; only a disk with no room at all for `tail` is ENOSPC. Returns the end
    /// of the reservation.
    fn reserve_base(&self, dev: &dyn Device, tail: u64) -> Result<u64> {
        match dev.allocate(self.cfg.blob_size) {
            Ok(()) => Ok(self.cfg.blob_size.max(tail)),
            Err(e) => {
                tracing::warn!(error = %e, blob_size = self.cfg.blob_size,
                    "blob: cannot reserve a whole base; reserving record by record");
                dev.allocate(tail)
                    .map_err(|e| StorageError::from_io(e, "reserving space for a base"))?;
                Ok(tail)
            }
        }
    }

    /// Makes sure the open base has disk space reserved up to `end` before a record is
    /// placed below it: it reserves [`RESERVE_STEP`] more at once where the disk has it, or
    /// exactly `end`. A full disk is ENOSPC here, before anything is written or buffered.
    pub(crate) fn reserve_for(&self, w: &mut Writer, end: u64) -> Result<()> {
        if end <= w.reserved {
            return Ok(());
        }
        let step = (end + RESERVE_STEP).min(self.cfg.blob_size.max(end));
        let dev = &w.open.dev;
        if dev.allocate(step).is_ok() {
            w.reserved = step;
            return Ok(());
        }
        dev.allocate(end)
            .map_err(|e| StorageError::from_io(e, "reserving space for a record"))?;
        w.reserved = end;
        Ok(())
    }

    /// How far past its records the open base is kept zero-filled (0 = not at all).
    fn zero_ahead(&self) -> u64 {
        let auto = if self.cfg.sync == 0 {
            ZERO_AHEAD_DEFAULT
        } else {
            0
        };
        self.cfg.zero_ahead_bytes.unwrap_or(auto)
    }

    /// Before a record is placed at `off..end`: if that passes the zero-filled part of the
    /// open base, writes zeros up to [`Inner::zero_ahead`] past `end` (within the space
    /// reserved), so the fdatasyncs of the small records that follow have no size or extent
    /// change to journal. Large records (over an eighth of the step) are not zeroed for:
    /// their fsync is mostly data, and zeros ahead of them would double what they write.
    /// Best effort: a failed zero write costs speed, not data (the record's own write
    /// reports errors).
    pub(crate) fn zero_ahead_locked(&self, w: &mut Writer, off: u64, end: u64) {
        let step = self.zero_ahead();
        if step == 0 || end <= w.zeroed {
            return;
        }
        if end - off > step / 8 {
            w.zeroed = end;
            return;
        }
        let from = w.zeroed.max(off);
        let to = (end + step).min(w.reserved);
        if let Err((at, e)) = write_zeros(&*w.open.dev, from, to) {
            tracing::warn!(error = %e, "blob: could not zero-fill ahead of the open base");
            w.zeroed = w.zeroed.max(at).max(end);
            return;
        }
        w.zeroed = to.max(end);
    }

    /// Bytes counted against `size_limit_bytes`: the bases' records and the kept file.
    pub(crate) fn disk_bytes(&self) -> u64 {
        let bases: u64 = self
            .bases
            .read()
            .iter()
            .flatten()
            .map(|b| b.end.load(Ordering::Relaxed))
            .sum();
        bases + self.kept.lock().as_ref().map_or(0, |k| k.len)
    }

    /// Deletes the kept file, if any, so its room goes to data; returns whether there was one.
    pub(crate) fn discard_kept(&self) -> bool {
        // The slot's lock is held through the file's removal, as through every change of
        // the kept file's name, so the name and the slot always agree.
        let mut slot = self.kept.lock();
        if slot.take().is_none() {
            return false;
        }
        if let Err(e) = self.dir.remove(KEPT_NAME) {
            tracing::warn!(error = %e, "blob: could not delete the kept base file");
        }
        true
    }

    /// Takes the kept file ([`BlobConfig::reuse_bases`]) out of its slot and gives it the
    /// name `name`. For a new base, its `header` is written over the old one and made durable
    /// first, so a base's name never carries another base's header (defrag's `.tmp` name is
    /// never loaded: no header). The records of its earlier life stay, and are written over:
    /// they carry another base's tag, so a scan after a crash ends at the first of them
    /// (`scan`). `None` (a new file is made) when no file is kept or taking it fails (the
    /// file is then deleted).
    pub(crate) fn recycle(&self, name: &str, header: Option<&[u8]>) -> Option<KeptFile> {
        // Held until the file has its new name: a base dropped meanwhile cannot take
        // `KEPT_NAME` from under the rename.
        let mut slot = self.kept.lock();
        let kept = slot.take()?;
        let res = (|| {
            // Durable before the new name is: the earlier life's header under it would
            // tag its records as the new base's. Only the header is written back, not
            // the earlier life's dirty pages (up to a GiB, with `sync = -1`).
            if let Some(header) = header {
                kept.dev.write_durable_at(header, 0)?;
            }
            self.dir.rename(KEPT_NAME, name)
        })();
        match res {
            Ok(()) => {
                self.bases_reused.fetch_add(1, Ordering::Relaxed);
                Some(kept)
            }
            Err(e) => {
                tracing::warn!(error = %e, "blob: could not reuse a kept base file; a new one is made");
                let _ = self.dir.remove(KEPT_NAME);
                None
            }
        }
    }

    /// Keeps the file of `b`, a base defrag drops whole and has taken out of its slot, for
    /// [`Inner::recycle`], when nothing else holds the base (a read sharing its map, an
    /// iteration), the disk has `blob_size` free besides it, and the bases and it fit in
    /// `size_limit_bytes`. Returns whether it was kept; otherwise the caller deletes it.
    fn keep_file(&self, b: &Arc<Base>) -> bool {
        if !self.cfg.reuse_bases || Arc::strong_count(b) > 1 {
            return false;
        }
        let Ok(len) = b.dev.len() else {
            return false;
        };
        if len <= BASE_HEADER_SIZE
            || !self
                .dir
                .free_space()
                .is_ok_and(|free| free >= self.cfg.blob_size)
        {
            return false;
        }
        // The kept file counts against the backend's size limit like a base (and gives its
        // room back when an append needs it).
        if self.cfg.size_limit_bytes > 0 && self.disk_bytes() + len > self.cfg.size_limit_bytes {
            return false;
        }
        let mut kept = self.kept.lock();
        // Renamed over an older kept file, which goes: the newer one's pages are warmer.
        if self.dir.rename(&base_name(b.number), KEPT_NAME).is_err() {
            return false;
        }
        *kept = Some(KeptFile {
            dev: b.dev.clone(),
            len,
        });
        true
    }

    /// Cuts the zeros past the open base's last record (buffer flushed first) and makes
    /// that durable, so a cleanly shut down base ends at its last record: only the open
    /// base is ever scanned for its end.
    pub(crate) fn trim_open_locked(&self, w: &mut Writer) -> Result<()> {
        if self.cut_open_tail(w)? {
            if let Err(e) = w.open.dev.sync() {
                // As after any failed fsync, dirty pages may be gone.
                let err = StorageError::from_io(e, "trimming the open base");
                self.poison(&format!("{err}"));
                return Err(err);
            }
        }
        Ok(())
    }

    /// Flushes the buffer and cuts the zeros past the open base's last record; returns
    /// whether there were any. Not synced: see [`Inner::rotate`].
    fn cut_open_tail(&self, w: &mut Writer) -> Result<bool> {
        self.flush_buffer(w)?;
        if w.zeroed <= w.tail {
            return Ok(false);
        }
        if let Err(e) = w.open.dev.set_len(w.tail) {
            let err = StorageError::from_io(e, "trimming the open base");
            self.poison(&format!("{err}"));
            return Err(err);
        }
        w.zeroed = w.tail;
        Ok(true)
    }

    /// Closes the open base (its index is written by the background thread or the next
    /// maintenance call) and opens a new one.
    ///
    /// The closed base is not synced here, under the writer lock: with `sync = -1` it can
    /// hold a GiB of dirty pages, whose writeback stalled every write of the backend for
    /// half a second. It joins the dirty bases, which the next group commit syncs (`sync
    /// = 0`, before any later write is acknowledged) or the periodic sync does (`sync > 0`),
    /// and the background thread syncs it before it writes its index. A crash before then
    /// may leave its zeros uncut or its last records torn: a closed base without an index
    /// is scanned on start, which skips zeros, stops at another life's records and checks
    /// every record found.
    fn rotate(&self, w: &mut Writer) -> Result<()> {
        self.cut_open_tail(w)?;
        let old = w.open.clone();
        self.create_open_base(w)?;
        old.open.store(false, Ordering::Release);
        w.dirty.push(old.clone());
        self.index_queue
            .lock()
            .push((old, std::time::Instant::now()));
        Ok(())
    }
}

/// Writes zeros over `[from, to)` of `dev`, up to 4 MiB per system call; on failure, where
/// it stopped and why.
fn write_zeros(
    dev: &dyn Device,
    from: u64,
    to: u64,
) -> std::result::Result<(), (u64, std::io::Error)> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = from;
    while at < to {
        let chunks: Vec<&[u8]> = (0..64)
            .map(|i| at + i * ZEROS.len() as u64)
            .take_while(|&o| o < to)
            .map(|o| &ZEROS[..(to - o).min(ZEROS.len() as u64) as usize])
            .collect();
        let n: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        dev.write_all_vectored_at(&chunks, at)
            .map_err(|e| (at, e))?;
        at += n;
    }
    Ok(())
}

/// How many bytes of `[from, end)` of `dev` come before its trailing zeros.
fn nonzero_extent(dev: &dyn Device, from: u64, end: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; (end - from).min(1 << 20) as usize];
    let mut hi = end;
    while hi > from {
        let lo = hi.saturating_sub(buf.len() as u64).max(from);
        let win = &mut buf[..(hi - lo) as usize];
        dev.read_at(win, lo)?;
        if let Some(i) = win.iter().rposition(|&b| b != 0) {
            return Ok(lo + i as u64 + 1 - from);
        }
        hi = lo;
    }
    Ok(0)
}

/// The index of the open base written at the last clean shutdown, if it belongs to this base
/// exactly as it is: its entries (sorted) and the offset it covers up to.
fn load_checkpoint(dir: &dyn Dir, base: &Base, len: u64) -> Option<(Vec<IndexEntry>, u64)> {
    let dev = dir.open(&index_name(base.number), false).ok()?;
    let size = dev.len().ok()?;
    if !(INDEX_HEADER_SIZE..=(INDEX_ENTRIES_MAX + 1) * INDEX_ENTRY_SIZE).contains(&size) {
        return None;
    }
    let mut bytes = vec![0u8; size as usize];
    dev.read_at(&mut bytes, 0).ok()?;
    let (h, entries) = decode_index(&bytes).ok()?;
    let fits = h.base_number == base.number
        && h.base_generation == base.generation
        && (BASE_HEADER_SIZE..=len).contains(&h.covered_end)
        && entries
            .iter()
            .all(|e| e.offset + e.disk_size <= h.covered_end);
    fits.then_some((entries, h.covered_end))
}

/// Maps a base for reads when the configuration and the device allow it.
fn map_base(cfg: &BlobConfig, dev: &Arc<dyn Device>, len: u64) -> Option<memmap2::Mmap> {
    if !cfg.mmap_reads {
        return None;
    }
    match dev.map(len) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "blob: cannot map a base; reading with pread");
            None
        }
    }
}

/// A placeholder open base for a backend with no bases yet; replaced before `open` returns.
fn bases_placeholder(_dir: &Arc<dyn Dir>) -> Arc<Base> {
    Arc::new(Base {
        number: 0,
        generation: 0,
        tag: 0,
        slot: u16::MAX,
        map: None,
        dev: Arc::new(NullDevice),
        end: AtomicU64::new(BASE_HEADER_SIZE),
        flushed: AtomicU64::new(BASE_HEADER_SIZE),
        live_bytes: AtomicU64::new(0),
        live_records: AtomicU64::new(0),
        removed_records: AtomicU64::new(0),
        open: AtomicBool::new(false),
        defragging: AtomicBool::new(false),
        written_here: true,
    })
}

struct NullDevice;
impl Device for NullDevice {
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("no base"))
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("no base"))
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(0)
    }
    fn set_len(&self, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn allocate(&self, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sorts one base's entries by key, then offset (write order; offsets are unique in a base),
/// and keeps per key the newest committed record and, when a prepared record is newer than
/// it, that one too, first. A prepared record older than a committed one was superseded by it
/// (a committed write discards a key's reservation).
fn newest_per_key(v: &mut Vec<IndexEntry>) {
    v.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(a.offset.cmp(&b.offset)));
    // Compacts in place: what is kept of a group is written at or before the group's start.
    let mut w = 0;
    let mut i = 0;
    while i < v.len() {
        let j = i + v[i..].iter().take_while(|e| e.key == v[i].key).count();
        let group = &v[i..j];
        let uncommitted = |e: &IndexEntry| e.flags & record_flags::UNCOMMITTED != 0;
        let c = group.iter().rposition(|e| !uncommitted(e));
        let p = group
            .iter()
            .rposition(uncommitted)
            .filter(|&p| c.is_none_or(|c| p > c));
        // Copies: the group may be overwritten by them.
        let (prepared, committed) = (p.map(|p| group[p]), c.map(|c| group[c]));
        for e in prepared.into_iter().chain(committed) {
            v[w] = e;
            w += 1;
        }
        i = j;
    }
    v.truncate(w);
}

impl crate::backend::Backend for BlobBackend {
    fn write(&self, key: &Key, req: &WriteRequest<'_>) -> Result<RecordInfo> {
        self.inner.write(key, req)
    }
    fn read(&self, key: &Key, req: &ReadRequest) -> Result<ReadResult> {
        self.inner.read(key, req)
    }
    fn lookup(&self, key: &Key, checksum: bool) -> Result<RecordInfo> {
        self.inner.lookup(key, checksum)
    }
    fn remove(&self, key: &Key, req: &RemoveRequest) -> Result<RecordInfo> {
        self.inner.remove(key, req)
    }
    fn iterate(&self, req: &IterRequest, cursor: Option<&IterCursor>) -> Result<IterBatch> {
        self.inner.iterate(req, cursor)
    }
    fn sync(&self) -> Result<()> {
        self.inner.check_poison()?;
        self.inner.sync_all()
    }
    fn stats(&self) -> BackendStats {
        let i = &self.inner;
        let mut bases: Vec<BaseStats> =
            i.bases.read().iter().flatten().map(|b| b.stats()).collect();
        bases.sort_by_key(|b| b.number);
        let (pending_len, pending_cap) = {
            let p = i.pending.lock();
            (p.len(), p.capacity())
        };
        let mut s = BackendStats {
            uncommitted_records: pending_len as u64,
            index_memory_bytes: i.index.memory_bytes() + (pending_cap * (KEY_SIZE + 16)) as u64,
            read_only: i.read_only.load(Ordering::Relaxed),
            poisoned: i.poisoned.lock().clone(),
            defrag_running: i.defrag_running.load(Ordering::Relaxed),
            defrag_completed: i.defrag_completed.load(Ordering::Relaxed),
            fsyncs: i.fsyncs.load(Ordering::Relaxed),
            bases_reused: i.bases_reused.load(Ordering::Relaxed),
            ..Default::default()
        };
        for b in &bases {
            s.records += b.live_records;
            s.removed_records += b.removed_records;
            s.live_bytes += b.live_bytes;
            s.dead_bytes += b.dead_bytes;
        }
        s.bases = bases;
        s
    }
    fn set_read_only(&self, read_only: bool) {
        self.inner.read_only.store(read_only, Ordering::Release);
    }
    fn defrag(&self) -> Result<DefragReport> {
        self.inner.defrag(self.inner.cfg.defrag_threshold)
    }
    fn drop_prepared(&self, key: &Key, older_than: Timestamp) -> Result<bool> {
        self.inner.drop_prepared(key, older_than)
    }
}

impl Inner {
    fn check_poison(&self) -> Result<()> {
        if self.is_poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned(
                self.poisoned.lock().clone().unwrap_or_default(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base_names_are_zero_padded_to_eight_digits() {
        for (n, name) in [
            (0, "data-00000000.blob"),
            (7, "data-00000007.blob"),
            (12_345_678, "data-12345678.blob"),
            (123_456_789, "data-123456789.blob"),
            (u64::MAX, "data-18446744073709551615.blob"),
        ] {
            assert_eq!(super::base_name(n), name);
            assert_eq!(super::base_name(n), format!("data-{n:08}.blob"));
            assert_eq!(super::index_name(n), format!("data-{n:08}.index"));
        }
    }
}
