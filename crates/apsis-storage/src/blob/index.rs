//! The in-memory key index: 16 bytes per key plus the hash table's control byte.
//!
//! Each shard maps a key's 64-bit fingerprint (its first 8 bytes; ids are sha512, so these are
//! uniform) to a packed location `slot:16 | offset:48`. The full key is not kept in RAM: every
//! reader checks the key in the record header it reads. Two different keys with the same
//! fingerprint (about 1 in 3·10^6 at 10 million keys) are resolved exactly: the second one
//! goes to a small `overflow` map of full keys, which lookups consult first.

use crate::types::Key;
use hashbrown::HashMap;
use parking_lot::RwLock;
use std::hash::{BuildHasherDefault, Hasher};

/// A packed record location: which base slot, and the record's byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc(u64);

pub const OFFSET_BITS: u32 = 48;
pub const OFFSET_MAX: u64 = (1 << OFFSET_BITS) - 1;

impl Loc {
    pub fn new(slot: u16, offset: u64) -> Loc {
        debug_assert!(offset <= OFFSET_MAX);
        Loc(((slot as u64) << OFFSET_BITS) | offset)
    }
    pub fn slot(self) -> u16 {
        (self.0 >> OFFSET_BITS) as u16
    }
    pub fn offset(self) -> u64 {
        self.0 & OFFSET_MAX
    }
}

/// The fingerprint is already uniformly random: hash it by using it.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);
impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | *b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}
type FpMap = HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>;
/// A map by full key, hashed by the key's own (random) bytes.
pub type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<IdentityHasher>>;

/// Keys to load into one shard: `(fingerprint, location)`.
pub type Batch = Vec<(u64, Loc)>;

#[derive(Default)]
struct Shard {
    by_fingerprint: FpMap,
    overflow: KeyMap<Loc>,
}

const SHARDS: usize = 64;

/// Sharded fingerprint index. Shards are chosen by key bytes 8..10, independent of the
/// fingerprint, so every shard's hash table still sees 64 random bits.
pub struct Index {
    shards: Box<[RwLock<Shard>]>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
        }
    }
}

/// Answers "is the record at this location the key I mean?" by reading its header.
/// Called only when a fingerprint is shared, so almost never.
pub type SameKey<'a> = &'a mut dyn FnMut(Loc) -> bool;

impl Index {
    fn shard(&self, key: &Key) -> &RwLock<Shard> {
        &self.shards[key.stripe_bits() % SHARDS]
    }

    /// Which shard holds `key` (for [`Index::bulk_load`]).
    pub fn shard_of(key: &Key) -> usize {
        key.stripe_bits() % SHARDS
    }

    /// Empty per-shard batches for [`Index::bulk_load`], sized for about `keys` keys.
    pub fn new_batches(keys: usize) -> Vec<Batch> {
        let each = keys / SHARDS + keys / SHARDS / 8 + 16;
        (0..SHARDS).map(|_| Vec::with_capacity(each)).collect()
    }

    /// Loads many keys at once (the restart path). `parts[p][shard]` holds `(fingerprint,
    /// location)` of distinct keys not yet in the index (each part a key range, so a key is in
    /// one part only). Each shard's table is sized once and filled in bucket order, so its
    /// memory is written sequentially: inserting 10 million keys in key order is otherwise
    /// one cache and TLB miss per key, and that dominated restart time. Shards are filled on
    /// up to `threads` threads. A fingerprint already present belongs to another key; that
    /// key goes to the overflow map with its full id from `key_of` (which reads the record
    /// header).
    pub fn bulk_load(
        &self,
        parts: Vec<Vec<Batch>>,
        key_of: &(dyn Fn(Loc) -> Option<Key> + Sync),
        threads: usize,
    ) {
        // By shard, each shard's batches from every part.
        let mut by_shard: Vec<Vec<Batch>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for part in parts {
            for (shard, batch) in part.into_iter().enumerate() {
                if !batch.is_empty() {
                    by_shard[shard].push(batch);
                }
            }
        }
        let threads = threads.clamp(1, SHARDS);
        if threads == 1 {
            for (shard, batches) in by_shard.into_iter().enumerate() {
                self.load_shard(shard, batches, key_of);
            }
            return;
        }
        // Shards are about equal (keys are uniform): deal them out round robin.
        let mut work: Vec<Vec<(usize, Vec<Batch>)>> = (0..threads).map(|_| Vec::new()).collect();
        for (shard, batches) in by_shard.into_iter().enumerate() {
            work[shard % threads].push((shard, batches));
        }
        std::thread::scope(|sc| {
            for w in work {
                sc.spawn(move || {
                    for (shard, batches) in w {
                        self.load_shard(shard, batches, key_of);
                    }
                });
            }
        });
    }

    fn load_shard(
        &self,
        shard: usize,
        mut batches: Vec<Batch>,
        key_of: &(dyn Fn(Loc) -> Option<Key> + Sync),
    ) {
        let mut batch = match batches.len() {
            0 => return,
            1 => batches.pop().expect("one batch"),
            _ => batches.concat(),
        };
        let mut s = self.shards[shard].write();
        s.by_fingerprint.reserve(batch.len());
        // hashbrown places a hash at `hash & mask`; the identity hasher makes that the
        // fingerprint's low bits.
        let mask = ((s.by_fingerprint.capacity() * 8 / 7).next_power_of_two() - 1) as u64;
        batch.sort_unstable_by_key(|&(fp, _)| fp & mask);
        for (fp, loc) in batch {
            if let Some(prev) = s.by_fingerprint.insert(fp, loc.0) {
                s.by_fingerprint.insert(fp, prev);
                match key_of(loc) {
                    Some(k) => {
                        s.overflow.insert(k, loc);
                    }
                    None => tracing::warn!("blob index: unreadable record header at load"),
                }
            }
        }
    }

    /// Pre-sizes for `n` keys in total (restart loads without rehashing).
    pub fn reserve(&self, n: usize) {
        for s in self.shards.iter() {
            s.write().by_fingerprint.reserve(n / SHARDS + 1);
        }
    }

    /// The candidate location for `key`: exact when it comes from the overflow map; otherwise
    /// the caller must confirm the key in the record header (a different key there means
    /// `key` is absent).
    pub fn get(&self, key: &Key) -> Option<Loc> {
        let s = self.shard(key).read();
        if !s.overflow.is_empty() {
            if let Some(l) = s.overflow.get(key) {
                return Some(*l);
            }
        }
        s.by_fingerprint.get(&key.fingerprint()).map(|v| Loc(*v))
    }

    /// Sets `key`'s location. `same_key` is asked only when another location holds the same
    /// fingerprint.
    pub fn insert(&self, key: &Key, loc: Loc, same_key: SameKey<'_>) {
        let mut s = self.shard(key).write();
        if let Some(l) = s.overflow.get_mut(key) {
            *l = loc;
            return;
        }
        let fp = key.fingerprint();
        match s.by_fingerprint.get_mut(&fp) {
            None => {
                s.by_fingerprint.insert(fp, loc.0);
            }
            Some(v) if same_key(Loc(*v)) => *v = loc.0,
            Some(_) => {
                s.overflow.insert(*key, loc);
            }
        }
    }

    /// Replaces `key`'s location only if it is still `expect` (defrag moving a record while
    /// writers may have replaced it). Returns whether it did.
    pub fn replace_if(&self, key: &Key, expect: Loc, new: Option<Loc>) -> bool {
        let mut s = self.shard(key).write();
        if let Some(l) = s.overflow.get(key).copied() {
            if l != expect {
                return false;
            }
            match new {
                Some(n) => s.overflow.insert(*key, n),
                None => s.overflow.remove(key),
            };
            return true;
        }
        let fp = key.fingerprint();
        match s.by_fingerprint.get(&fp).copied() {
            Some(v) if v == expect.0 => {
                match new {
                    Some(n) => s.by_fingerprint.insert(fp, n.0),
                    None => s.by_fingerprint.remove(&fp),
                };
                true
            }
            _ => false,
        }
    }

    /// Whether any key's location is in base slot `slot` (a pass over the whole index: tens
    /// of milliseconds at 10 million keys).
    pub fn points_into(&self, slot: u16) -> bool {
        self.shards.iter().any(|s| {
            let s = s.read();
            s.by_fingerprint.values().any(|&v| Loc(v).slot() == slot)
                || s.overflow.values().any(|l| l.slot() == slot)
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.read();
                s.by_fingerprint.len() + s.overflow.len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes the index holds.
    pub fn memory_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let s = s.read();
                (s.by_fingerprint.allocation_size() + s.overflow.allocation_size()) as u64
            })
            .sum::<u64>()
            + std::mem::size_of::<RwLock<Shard>>() as u64 * SHARDS as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_with_fp(fp: u64, tail: u8) -> Key {
        let mut k = [tail; 64];
        k[..8].copy_from_slice(&fp.to_be_bytes());
        k[8] = 0;
        k[9] = 0;
        Key(k)
    }

    #[test]
    fn colliding_fingerprints_are_kept_apart() {
        let ix = Index::default();
        let a = key_with_fp(42, 1);
        let b = key_with_fp(42, 2);
        // The "disk": which key lives at which location.
        let owner = |l: Loc| if l.offset() < 100 { a } else { b };
        ix.insert(&a, Loc::new(0, 8), &mut |l| owner(l) == a);
        ix.insert(&b, Loc::new(0, 200), &mut |l| owner(l) == b);
        assert_eq!(ix.get(&a), Some(Loc::new(0, 8)));
        assert_eq!(ix.get(&b), Some(Loc::new(0, 200)));
        ix.insert(&a, Loc::new(0, 16), &mut |l| owner(l) == a);
        assert_eq!(ix.get(&a), Some(Loc::new(0, 16)));
        assert_eq!(ix.get(&b), Some(Loc::new(0, 200)));
        assert_eq!(ix.len(), 2);
        assert!(ix.replace_if(&b, Loc::new(0, 200), None));
        assert_eq!(ix.len(), 1);
        assert!(
            !ix.replace_if(&a, Loc::new(0, 8), None),
            "stale expectation must not apply"
        );
    }

    #[test]
    fn bulk_load_matches_single_inserts_and_keeps_collisions_apart() {
        let ix = Index::default();
        let mut batches = Index::new_batches(5002);
        let mut keys = Vec::new();
        for i in 0..5000u64 {
            let k = Key::from_name(b"bulk", &i.to_le_bytes());
            batches[Index::shard_of(&k)].push((k.fingerprint(), Loc::new(1, i * 8)));
            keys.push(k);
        }
        // Two keys sharing a fingerprint (and shard).
        let a = key_with_fp(7, 1);
        let b = key_with_fp(7, 2);
        batches[Index::shard_of(&a)].push((a.fingerprint(), Loc::new(2, 8)));
        batches[Index::shard_of(&b)].push((b.fingerprint(), Loc::new(2, 16)));
        let owner = |l: Loc| match l.offset() {
            8 if l.slot() == 2 => Some(a),
            16 if l.slot() == 2 => Some(b),
            _ => None,
        };
        ix.bulk_load(vec![batches], &owner, 1);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(ix.get(k), Some(Loc::new(1, i as u64 * 8)));
        }
        // One of the pair is in the table, the other in the overflow map; both resolve.
        assert_eq!(ix.get(&a), Some(Loc::new(2, 8)));
        assert_eq!(ix.get(&b), Some(Loc::new(2, 16)));
        assert_eq!(ix.len(), 5002);
    }

    #[test]
    fn loc_packs_slot_and_offset() {
        let l = Loc::new(65535, OFFSET_MAX);
        assert_eq!((l.slot(), l.offset()), (65535, OFFSET_MAX));
    }
}
