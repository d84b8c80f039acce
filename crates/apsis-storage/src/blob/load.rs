//! Loading the index at start: a merge of sorted runs, split by key range across threads.
//!
//! Each closed base has a sorted index file; the open base's entries come from its scan (or
//! its checkpoint), sorted in memory. For each key the newest committed record or tombstone
//! goes to the in-memory index, and a prepared record newer than it to the pending map; a
//! later base wins over an earlier one, so the runs are merged by (key, base).
//!
//! The merge is split into parts by key range (the ids are sha512, so equal ranges of the
//! first two bytes hold about equal numbers of keys). Each part finds where its range starts
//! in every run (a binary search over the index file's fixed-size entries), merges its range
//! on its own thread into its own batches and counters, and the index is then filled shard by
//! shard, the shards spread over the same threads. An index file's checksum covers all its
//! entries: each part checksums the entries it read, and the parts' checksums, combined in
//! order, are checked against the file's footer, so a damaged file is caught whatever the
//! split (and rebuilt from its base by the caller).

use super::format::*;
use super::index::{Batch, Index, Loc};
use super::{index_name, record_flags, scan, Base, Inner, LiveCounts};
use crate::device::Device;
use crate::error::{Result, StorageError};
use crate::types::Key;
use std::collections::BinaryHeap;
use std::io::{BufReader, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Below this many entries a load runs on one thread (threads would cost more than they save).
const PARALLEL_FROM: usize = 1 << 18;
/// At most this many parts, however many CPUs.
const MAX_PARTS: usize = 16;

/// A sorted run of index entries.
pub(super) enum Run {
    /// A closed base's index file, its header checked, holding this many entries.
    File { dev: Arc<dyn Device>, entries: u64 },
    /// The open base's entries, sorted by (key, offset), newest per key only.
    Mem(Arc<Vec<IndexEntry>>),
}

pub(super) struct Source {
    pub base: Arc<Base>,
    pub run: Run,
}

/// What one part found.
#[derive(Default)]
struct PartOut {
    /// By index shard: (fingerprint, location) of keys whose newest record is committed.
    batches: Vec<Batch>,
    /// Prepared records newer than any committed one.
    pending: Vec<(Key, Loc)>,
    /// By source: what of it is current.
    counts: Vec<LiveCounts>,
    /// By source (index files): the checksum of the entries this part read.
    crcs: Vec<u32>,
}

/// `Read` over a device from a starting offset.
struct DevReader {
    dev: Arc<dyn Device>,
    pos: u64,
    end: u64,
}

impl Read for DevReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.end - self.pos) as usize;
        self.dev.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// One part's position in one run.
enum Cursor<'a> {
    File {
        reader: BufReader<DevReader>,
        remaining: u64,
        /// Boxed: a running checksum carries its algorithm's tables (~250 bytes).
        crc: Box<Crc>,
    },
    Mem(std::slice::Iter<'a, IndexEntry>),
}

impl Cursor<'_> {
    fn next(&mut self, base: u64) -> Result<Option<IndexEntry>> {
        match self {
            Cursor::Mem(it) => Ok(it.next().copied()),
            Cursor::File { remaining: 0, .. } => Ok(None),
            Cursor::File {
                reader,
                remaining,
                crc,
            } => {
                let mut b = [0u8; INDEX_ENTRY_SIZE as usize];
                reader.read_exact(&mut b)?;
                crc.update(&b);
                *remaining -= 1;
                IndexEntry::decode(&b)
                    .map(Some)
                    .ok_or_else(|| bad_entry(base))
            }
        }
    }
}

fn bad_entry(base: u64) -> StorageError {
    StorageError::Corrupt(format!("bad entry in index of base {base}"))
}

/// Where entry `i` of an index file starts.
fn entry_pos(i: u64) -> u64 {
    INDEX_HEADER_SIZE + i * INDEX_ENTRY_SIZE
}

/// The first key of part `p` of `parts` (part 0 starts at the smallest key).
fn part_start(p: usize, parts: usize) -> Key {
    let mut k = [0u8; 64];
    let prefix = (p * 65536 / parts) as u16;
    k[..2].copy_from_slice(&prefix.to_be_bytes());
    Key(k)
}

impl Source {
    /// How many of this run's entries sort before `key`.
    fn position(&self, key: &Key) -> Result<u64> {
        match &self.run {
            Run::Mem(v) => Ok(v.partition_point(|e| e.key < *key) as u64),
            Run::File { dev, entries } => {
                let (mut lo, mut hi) = (0, *entries);
                let mut kb = [0u8; 64];
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    // An entry starts with its key.
                    dev.read_at(&mut kb, entry_pos(mid))?;
                    if kb < key.0 {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                Ok(lo)
            }
        }
    }

    /// A cursor over entries `from..to`.
    fn cursor(&self, from: u64, to: u64, buf_bytes: usize) -> Cursor<'_> {
        match &self.run {
            Run::Mem(v) => Cursor::Mem(v[from as usize..to as usize].iter()),
            Run::File { dev, .. } => Cursor::File {
                reader: BufReader::with_capacity(
                    buf_bytes,
                    DevReader {
                        dev: dev.clone(),
                        pos: entry_pos(from),
                        end: entry_pos(to),
                    },
                ),
                remaining: to - from,
                crc: Box::default(),
            },
        }
    }
}

impl Inner {
    /// How many parts a load of `total` entries is split into.
    fn load_parts(&self, total: usize) -> usize {
        match self.cfg.load_threads {
            0 if total < PARALLEL_FROM => 1,
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .clamp(1, MAX_PARTS)
    }

    /// Loads the index from sorted runs (see the module doc). A damaged index file is a
    /// [`StorageError::Corrupt`] naming its base.
    pub(super) fn merge(&self, sources: Vec<Source>, total_hint: usize) -> Result<()> {
        let parts = self.load_parts(total_hint);
        // starts[s][p]: where part p begins in source s; starts[s][parts]: its end.
        let mut starts = Vec::with_capacity(sources.len());
        for s in &sources {
            let mut v = vec![0];
            for p in 1..parts {
                // max: a damaged file need not be sorted; the parts must still cover it
                // exactly once, so that its checksum is checked over every entry.
                let at = s.position(&part_start(p, parts))?;
                v.push(at.max(v[p - 1]));
            }
            v.push(match &s.run {
                Run::File { entries, .. } => *entries,
                Run::Mem(m) => m.len() as u64,
            });
            starts.push(v);
        }
        // Read-ahead per file and part: 1 MiB, less when there are many.
        let buf_bytes = ((16usize << 20) / (sources.len() * parts).max(1)).clamp(64 << 10, 1 << 20);
        let hint = total_hint / parts + total_hint / parts / 8;
        let outs: Vec<Result<PartOut>> = if parts == 1 {
            vec![self.merge_part(&sources, &starts, 0, buf_bytes, hint)]
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = (0..parts)
                    .map(|p| {
                        let (sources, starts) = (&sources, &starts);
                        sc.spawn(move || self.merge_part(sources, starts, p, buf_bytes, hint))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            })
        };
        let outs = outs.into_iter().collect::<Result<Vec<_>>>()?;

        // Every index file's checksum: its parts' checksums, combined in order.
        for (i, s) in sources.iter().enumerate() {
            let Run::File { dev, entries } = &s.run else {
                continue;
            };
            let mut crc = 0;
            for (p, o) in outs.iter().enumerate() {
                let len = (starts[i][p + 1] - starts[i][p]) * INDEX_ENTRY_SIZE;
                if len > 0 {
                    crc = crc_combine(crc, o.crcs[i], len);
                }
            }
            let mut foot = [0u8; INDEX_FOOTER_SIZE as usize];
            dev.read_at(&mut foot, entry_pos(*entries))?;
            if u32::from_le_bytes(foot[..4].try_into().expect("4")) != crc
                || &foot[4..] != INDEX_FOOTER_MAGIC
            {
                return Err(StorageError::Corrupt(format!(
                    "index of base {} fails its checksum",
                    s.base.number
                )));
            }
        }

        let mut pending = self.pending.lock();
        let mut batches = Vec::with_capacity(parts);
        for o in outs {
            for (s, c) in sources.iter().zip(&o.counts) {
                s.base.add_counts(c);
            }
            pending.extend(o.pending);
            batches.push(o.batches);
        }
        drop(pending);
        // Keys arrived unique, so a shared fingerprint is always another key.
        self.index.bulk_load(batches, &|l| self.key_at(l), parts);
        Ok(())
    }

    /// Merges part `p`'s key range of every source.
    fn merge_part(
        &self,
        sources: &[Source],
        starts: &[Vec<u64>],
        p: usize,
        buf_bytes: usize,
        hint: usize,
    ) -> Result<PartOut> {
        // Heap of (key, base number) so equal keys come out newest first.
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        struct Head(std::cmp::Reverse<Key>, u64, usize);
        let mut cursors: Vec<Cursor> = sources
            .iter()
            .zip(starts)
            .map(|(s, st)| s.cursor(st[p], st[p + 1], buf_bytes))
            .collect();
        let mut out = PartOut {
            batches: Index::new_batches(hint),
            counts: vec![LiveCounts::default(); sources.len()],
            ..Default::default()
        };
        let mut heads: Vec<Option<IndexEntry>> = Vec::with_capacity(sources.len());
        let mut heap = BinaryHeap::new();
        for (i, c) in cursors.iter_mut().enumerate() {
            let e = c.next(sources[i].base.number)?;
            if let Some(e) = &e {
                heap.push(Head(std::cmp::Reverse(e.key), sources[i].base.number, i));
            }
            heads.push(e);
        }
        let mut cur_key: Option<Key> = None;
        let mut have_committed = false;
        let mut have_pending = false;
        while let Some(Head(_, _, i)) = heap.pop() {
            let e = heads[i].take().expect("a head for every heap entry");
            let base = &sources[i].base;
            if cur_key != Some(e.key) {
                cur_key = Some(e.key);
                have_committed = false;
                have_pending = false;
            }
            let loc = Loc::new(base.slot, e.offset);
            let mut flags = e.flags;
            if flags & record_flags::UNCOMMITTED != 0 {
                // Committed in place after its index was written? The header knows.
                let mut hb = [0u8; RECORD_HEADER_SIZE as usize];
                base.dev.read_at(&mut hb, e.offset)?;
                if let Some(h) = base.record_header(&hb).filter(|h| h.key == e.key) {
                    // The commit may have been torn (its data never reached the disk):
                    // only a verified record counts as committed.
                    let mut sc = scan::Scanner::new(
                        &*base.dev,
                        base.tag,
                        e.offset,
                        e.offset + h.disk_size(),
                    );
                    if h.is_uncommitted() || sc.verify(e.offset, &h)?.is_ok() {
                        flags = h.flags;
                    }
                }
            }
            let count = if flags & record_flags::ABORTED != 0 {
                // A reservation recovery dropped: never loaded, and its space is dead.
                false
            } else if flags & record_flags::UNCOMMITTED != 0 {
                let first = !have_committed && !have_pending;
                if first {
                    have_pending = true;
                    out.pending.push((e.key, loc));
                }
                first
            } else if !have_committed {
                have_committed = true;
                out.batches[Index::shard_of(&e.key)].push((e.key.fingerprint(), loc));
                true
            } else {
                false
            };
            if count {
                out.counts[i].add(e.disk_size, flags);
            }
            if let Some(n) = cursors[i].next(base.number)? {
                heap.push(Head(std::cmp::Reverse(n.key), base.number, i));
                heads[i] = Some(n);
            }
        }
        out.crcs = cursors
            .iter()
            .map(|c| match c {
                Cursor::File { crc, .. } => crc.value(),
                Cursor::Mem(_) => 0,
            })
            .collect();
        Ok(out)
    }

    /// A closed base's index file, when it exists and belongs to this generation of the
    /// base: its device and entry count (the entries' checksum is checked as they are read).
    pub(super) fn index_run(&self, b: &Base) -> Result<Option<Run>> {
        let dev = match self.dir.open(&index_name(b.number), false) {
            Ok(d) => d,
            Err(_) => return Ok(None),
        };
        let len = dev.len()?;
        let mut hb = [0u8; INDEX_HEADER_SIZE as usize];
        if len < INDEX_HEADER_SIZE {
            return Ok(None);
        }
        dev.read_at(&mut hb, 0)?;
        let Ok(h) = IndexHeader::decode(&hb) else {
            return Ok(None);
        };
        // An index of the base while it was open (a checkpoint) covers only part of it.
        let covers_all = h.covered_end == b.end.load(Ordering::Acquire);
        if h.base_number != b.number
            || h.base_generation != b.generation
            || h.file_size() != len
            || !covers_all
        {
            return Ok(None);
        }
        Ok(Some(Run::File {
            dev,
            entries: h.entries,
        }))
    }
}
