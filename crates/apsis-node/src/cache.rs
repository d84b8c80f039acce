//! The backend cache: Elliptics' CACHE, CACHE_ONLY and CACHE_REMOVE_FROM_DISK ioflags, with TTL.
//!
//! One cache per backend that configures `cache_size`, in 16 shards, each an LRU bounded by
//! bytes (data plus a fixed per-entry overhead). What goes in:
//! - a WRITE with CACHE: the object lives in the cache and is *dirty*; it is written back to
//!   the backend after `cache_sync_timeout` seconds, when it is evicted, when the backend is
//!   disabled and at shutdown. On a `sync = 0` backend a CACHE write is written through
//!   instead (acknowledged once durable, as `sync = 0` promises) and cached clean;
//! - a WRITE with CACHE_ONLY: the object lives only in the cache and never reaches the disk;
//! - a READ with CACHE that misses: the object is read from the backend and cached clean.
//!
//! A TTL (`io.start` seconds on the write) expires the entry: it leaves the cache (a dirty
//! entry is written back first) and, when the write had CACHE_REMOVE_FROM_DISK, the object is
//! also removed from the backend.
//!
//! Unlike Elliptics, the cache is coherent with the backend: every read looks in the cache
//! first (a plain read never returns an older disk copy of a dirty entry), and a write or
//! delete that bypasses the cache first writes back and drops the key's entry. Iterators and
//! recovery see the backend only: dirty and cache-only objects are not in them.

use apsis_storage::{
    Backend, BlobBackend, Key, RemoveRequest, StorageError, Timestamp, WriteRequest,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Bytes an entry costs beyond its data (map slot, LRU slot, entry fields).
pub const ENTRY_OVERHEAD: u64 = 192;

/// A cached object, as readers get it.
#[derive(Clone, Debug)]
pub struct Cached {
    pub data: Arc<Vec<u8>>,
    pub timestamp: Timestamp,
    pub user_flags: u64,
    /// Newer than the backend's copy (not written back yet).
    pub dirty: bool,
    pub cache_only: bool,
}

/// What a write puts in the cache.
pub struct Put {
    pub data: Arc<Vec<u8>>,
    pub timestamp: Timestamp,
    pub user_flags: u64,
    pub ttl: Option<Duration>,
    pub remove_from_disk: bool,
    pub cache_only: bool,
    /// Needs writing back (false: the backend has it already).
    pub dirty: bool,
}

struct Entry {
    c: Cached,
    expires: Option<Instant>,
    remove_from_disk: bool,
    dirty_since: Option<Instant>,
    tick: u64,
}

impl Entry {
    fn cost(&self) -> u64 {
        self.c.data.len() as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Entry>,
    /// Access order: tick → key (smallest = least recently used).
    lru: BTreeMap<u64, Key>,
    bytes: u64,
    tick: u64,
}

impl Shard {
    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let e = self.map.remove(key)?;
        self.lru.remove(&e.tick);
        self.bytes -= e.cost();
        Some(e)
    }

    fn touch(&mut self, key: &Key) {
        self.tick += 1;
        let t = self.tick;
        if let Some(e) = self.map.get_mut(key) {
            self.lru.remove(&e.tick);
            e.tick = t;
            self.lru.insert(t, *key);
        }
    }
}

/// Counters for the monitor.
#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
    pub expired: AtomicU64,
    pub written_back: AtomicU64,
    pub writeback_errors: AtomicU64,
}

/// A backend's cache. It holds the backend's engine, so whatever is dirty when the last
/// reference goes (the backend was disabled while requests were in flight) is written back
/// on drop.
pub struct Cache {
    engine: Arc<BlobBackend>,
    shards: Vec<Mutex<Shard>>,
    shard_bytes: u64,
    sync_timeout: Duration,
    pub stats: CacheStats,
}

/// Writes a dirty entry to the backend (whole object, its own timestamp and user flags).
fn write_back(engine: &BlobBackend, key: &Key, c: &Cached) -> Result<(), StorageError> {
    engine.write(
        key,
        &WriteRequest {
            data: &c.data,
            offset: 0,
            append: false,
            prepare: None,
            plain: false,
            commit: None,
            timestamp: c.timestamp,
            user_flags: c.user_flags,
            cas_checksum: None,
            cas_timestamp: false,
            nocsum: false,
        },
    )?;
    Ok(())
}

impl Cache {
    /// A cache of `size` bytes in front of `engine`, whose dirty entries are written back
    /// after `sync_timeout`.
    pub fn new(engine: Arc<BlobBackend>, size: u64, sync_timeout: Duration) -> Cache {
        Cache {
            engine,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_bytes: (size / SHARDS as u64).max(ENTRY_OVERHEAD),
            sync_timeout,
            stats: CacheStats::default(),
        }
    }

    /// The largest object the cache holds (bigger ones go to the backend).
    pub fn max_object(&self) -> u64 {
        self.shard_bytes - ENTRY_OVERHEAD
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        // Ids are sha512 digests: any byte is uniform.
        &self.shards[key.0[7] as usize % SHARDS]
    }

    /// Writes back (if dirty) and forgets an entry that left the cache; with
    /// `remove_from_disk` (an expired CACHE_REMOVE_FROM_DISK entry) removes the object too.
    fn retire(&self, key: &Key, e: &Entry, drop_from_disk: bool) {
        let engine = &*self.engine;
        let r = if drop_from_disk && !e.c.cache_only {
            engine
                .remove(
                    key,
                    &RemoveRequest {
                        timestamp: Timestamp::now(),
                        always_record: false,
                        cas_timestamp: false,
                        expect: None,
                    },
                )
                .map(|_| ())
                .or_else(|err| match err {
                    StorageError::NotFound => Ok(()),
                    err => Err(err),
                })
        } else if e.dirty_since.is_some() && !e.c.cache_only {
            write_back(engine, key, &e.c).map(|()| {
                self.stats.written_back.fetch_add(1, Relaxed);
            })
        } else {
            Ok(())
        };
        if let Err(err) = r {
            self.stats.writeback_errors.fetch_add(1, Relaxed);
            tracing::error!(%err, "cache: writing an entry back to the backend failed");
        }
    }

    /// The key's cached object; an expired entry is retired on the way and reads as absent.
    pub fn get(&self, key: &Key) -> Option<Cached> {
        let mut s = self.shard(key).lock();
        match s.map.get(key) {
            None => {
                self.stats.misses.fetch_add(1, Relaxed);
                None
            }
            Some(e) if e.expires.is_some_and(|t| t <= Instant::now()) => {
                let e = s.remove(key).expect("present");
                self.stats.expired.fetch_add(1, Relaxed);
                self.retire(key, &e, e.remove_from_disk);
                self.stats.misses.fetch_add(1, Relaxed);
                None
            }
            Some(e) => {
                let c = e.c.clone();
                s.touch(key);
                self.stats.hits.fetch_add(1, Relaxed);
                Some(c)
            }
        }
    }

    /// Puts an object in the cache (replacing the key's entry), evicting least recently used
    /// entries to make room; evicted dirty entries are written back first. An object larger
    /// than a shard is not cached: a dirty one is written to the backend at once instead.
    pub fn put(&self, key: &Key, p: Put) -> Result<(), StorageError> {
        let now = Instant::now();
        let mut e = Entry {
            c: Cached {
                data: p.data,
                timestamp: p.timestamp,
                user_flags: p.user_flags,
                dirty: p.dirty && !p.cache_only,
                cache_only: p.cache_only,
            },
            expires: p.ttl.map(|t| now + t),
            remove_from_disk: p.remove_from_disk,
            dirty_since: (p.dirty && !p.cache_only).then_some(now),
            tick: 0,
        };
        let mut s = self.shard(key).lock();
        s.remove(key);
        if e.cost() > self.shard_bytes {
            drop(s);
            if e.c.dirty {
                write_back(&self.engine, key, &e.c)?;
            }
            return Ok(());
        }
        while s.bytes + e.cost() > self.shard_bytes {
            let Some((_, victim)) = s.lru.pop_first() else {
                break;
            };
            if let Some(v) = s.map.remove(&victim) {
                s.bytes -= v.cost();
                self.stats.evictions.fetch_add(1, Relaxed);
                self.retire(&victim, &v, false);
            }
        }
        s.tick += 1;
        e.tick = s.tick;
        s.bytes += e.cost();
        s.lru.insert(e.tick, *key);
        s.map.insert(*key, e);
        self.stats.inserts.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Drops the key's entry without writing it back (DEL). Returns whether there was one.
    pub fn discard(&self, key: &Key) -> bool {
        self.shard(key).lock().remove(key).is_some()
    }

    /// Before a write that bypasses the cache: a dirty entry is written back (so an offset
    /// write or append applies to the newest data), then the entry is dropped.
    pub fn settle(&self, key: &Key) -> Result<(), StorageError> {
        let mut s = self.shard(key).lock();
        if let Some(e) = s.remove(key) {
            if e.c.dirty && !e.c.cache_only {
                if let Err(err) = write_back(&self.engine, key, &e.c) {
                    // Keep it: nothing is lost, and the write that wanted to pass fails.
                    let t = e.tick;
                    s.bytes += e.cost();
                    s.lru.insert(t, *key);
                    s.map.insert(*key, e);
                    return Err(err);
                }
                self.stats.written_back.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }

    /// Background pass: writes back entries dirty for `sync_timeout` and retires expired ones
    /// (`all`: writes back every dirty entry, for disable and shutdown).
    pub fn flush(&self, all: bool) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut s = shard.lock();
            let expired: Vec<Key> = s
                .map
                .iter()
                .filter(|(_, e)| e.expires.is_some_and(|t| t <= now))
                .map(|(k, _)| *k)
                .collect();
            for k in expired {
                if let Some(e) = s.remove(&k) {
                    self.stats.expired.fetch_add(1, Relaxed);
                    self.retire(&k, &e, e.remove_from_disk);
                }
            }
            let due: Vec<Key> = s
                .map
                .iter()
                .filter(|(_, e)| {
                    e.dirty_since
                        .is_some_and(|t| all || now.duration_since(t) >= self.sync_timeout)
                })
                .map(|(k, _)| *k)
                .collect();
            for k in due {
                let Some(e) = s.map.get_mut(&k) else { continue };
                match write_back(&self.engine, &k, &e.c) {
                    Ok(()) => {
                        e.dirty_since = None;
                        e.c.dirty = false;
                        self.stats.written_back.fetch_add(1, Relaxed);
                    }
                    Err(err) => {
                        self.stats.writeback_errors.fetch_add(1, Relaxed);
                        tracing::error!(%err, "cache: write-back failed; the entry stays dirty");
                    }
                }
            }
        }
    }

    /// Size, entries and counters for the monitor.
    pub fn json(&self) -> serde_json::Value {
        let (mut bytes, mut entries, mut dirty, mut cache_only) = (0u64, 0u64, 0u64, 0u64);
        for s in &self.shards {
            let s = s.lock();
            bytes += s.bytes;
            entries += s.map.len() as u64;
            for e in s.map.values() {
                dirty += e.c.dirty as u64;
                cache_only += e.c.cache_only as u64;
            }
        }
        let st = &self.stats;
        serde_json::json!({
            "size_bytes": bytes,
            "max_size_bytes": self.shard_bytes * SHARDS as u64,
            "entries": entries,
            "dirty": dirty,
            "cache_only": cache_only,
            "sync_timeout_secs": self.sync_timeout.as_secs(),
            "hits": st.hits.load(Relaxed),
            "misses": st.misses.load(Relaxed),
            "inserts": st.inserts.load(Relaxed),
            "evictions": st.evictions.load(Relaxed),
            "expired": st.expired.load(Relaxed),
            "written_back": st.written_back.load(Relaxed),
            "writeback_errors": st.writeback_errors.load(Relaxed),
        })
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.flush(true);
    }
}

/// Applies a write at `offset` (or appended) to an object's current bytes.
pub fn patch(mut base: Vec<u8>, data: &[u8], offset: u64, append: bool) -> Vec<u8> {
    let at = if append { base.len() } else { offset as usize };
    if base.len() < at + data.len() {
        base.resize(at + data.len(), 0);
    }
    base[at..at + data.len()].copy_from_slice(data);
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use apsis_storage::{BlobConfig, ReadRequest, SimDir};

    fn engine() -> Arc<BlobBackend> {
        let cfg = BlobConfig {
            blob_size: 1 << 20,
            ..BlobConfig::default()
        };
        Arc::new(BlobBackend::open(Arc::new(SimDir::new()), cfg).unwrap().0)
    }

    /// Keys that land in the same shard (byte 7 decides).
    fn key(i: u8) -> Key {
        let mut k = [0u8; 64];
        k[0] = i;
        Key(k)
    }

    fn put(data: &[u8], dirty: bool, ttl: Option<Duration>) -> Put {
        Put {
            data: Arc::new(data.to_vec()),
            timestamp: Timestamp::new(1, 0),
            user_flags: 0,
            ttl,
            remove_from_disk: false,
            cache_only: false,
            dirty,
        }
    }

    #[test]
    fn evicts_the_least_recently_used_and_writes_it_back() {
        let e = engine();
        // Room for three 1000-byte entries per shard.
        let c = Cache::new(
            e.clone(),
            16 * 3 * (1000 + ENTRY_OVERHEAD),
            Duration::from_secs(60),
        );
        for i in 0..3 {
            c.put(&key(i), put(&[i; 1000], true, None)).unwrap();
        }
        assert!(c.get(&key(0)).is_some()); // 0 is now the most recent; 1 the least
        c.put(&key(3), put(&[3; 1000], true, None)).unwrap();
        assert!(c.get(&key(1)).is_none(), "1 was evicted");
        for i in [0, 2, 3] {
            assert!(c.get(&key(i)).is_some(), "{i} stays");
        }
        // The evicted dirty entry reached the engine.
        let r = e.read(&key(1), &ReadRequest::default()).unwrap();
        assert_eq!(r.data, vec![1; 1000]);
        assert_eq!(c.stats.evictions.load(Relaxed), 1);
        assert_eq!(c.stats.written_back.load(Relaxed), 1);
    }

    #[test]
    fn expiry_writes_back_dirty_data_and_too_big_goes_to_disk() {
        let e = engine();
        let c = Cache::new(e.clone(), 16 << 10, Duration::from_secs(60));
        c.put(&key(1), put(b"short", true, Some(Duration::ZERO)))
            .unwrap();
        assert!(c.get(&key(1)).is_none(), "expired");
        let r = e.read(&key(1), &ReadRequest::default()).unwrap();
        assert_eq!(
            r.data, b"short",
            "a dirty entry is written back when it expires"
        );
        // Larger than a shard: written to the engine at once, not cached.
        c.put(&key(2), put(&[7; 2048], true, None)).unwrap();
        assert!(c.get(&key(2)).is_none());
        assert_eq!(
            e.read(&key(2), &ReadRequest::default()).unwrap().data,
            vec![7; 2048]
        );
        // flush(all) writes back and keeps the entry, clean.
        c.put(&key(3), put(b"dirty", true, None)).unwrap();
        c.flush(true);
        let h = c.get(&key(3)).unwrap();
        assert!(!h.dirty);
        assert_eq!(
            e.read(&key(3), &ReadRequest::default()).unwrap().data,
            b"dirty"
        );
    }
}
