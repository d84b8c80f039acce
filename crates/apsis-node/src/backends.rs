//! The backends a node serves: their engines, states, ring ids, and the local route table.
//!
//! Each backend is a slot that is enabled (engine open), disabled, or in between. Its ring ids
//! live in `<history>/ids` (64-byte random ids, generated at first start and kept, as Elliptics
//! does). The local route table maps (group, id) to the backend that owns it: the backend with
//! the largest ring id ≤ the key, wrapping around.

use crate::cache::Cache;
use crate::config::BackendConfig;
use apsis_proto::{backend_state, BackendIds, BackendStatus, Time};
use apsis_storage::blob::Committer;
use apsis_storage::{Backend, BlobBackend, BlobConfig, StorageError};
use arc_swap::ArcSwapOption;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

/// Size of a ring id.
pub const ID_SIZE: usize = 64;
/// Most ring ids one backend may have.
pub const IDS_MAX: usize = 4096;

/// A backend's mutable state.
pub struct SlotState {
    /// One of [`backend_state`].
    pub state: i32,
    pub ids: Vec<[u8; ID_SIZE]>,
    pub read_only: bool,
    pub last_start: Time,
    pub last_start_err: i32,
    pub defrag_running: bool,
}

/// What an enabled backend serves requests with, published as one value ([`Slot::live`]).
pub struct Live {
    pub engine: Arc<BlobBackend>,
    /// For `sync = 0`: the group-commit syncer writes wait on before they are acknowledged.
    pub syncer: Option<Arc<Syncer>>,
    /// The backend's cache (`cache_size` > 0), created with the engine.
    pub cache: Option<Arc<Cache>>,
}

/// Group commit for `sync = 0` backends: the engine's [`Committer`].
///
/// The engine runs without a per-write fsync; every acknowledged write or delete waits on
/// this syncer, whose thread takes every waiter that has queued, calls the engine's `sync()`
/// (which makes everything written before it durable), and answers them all, gathering each
/// batch as the committer does (see `apsis_storage::blob::Committer`). Waiters are async
/// tasks or held replies, so hundreds of concurrent writers cost no thread each and share one
/// fsync. The held replies of one sync go out from one task on the runtime (one wake-up per
/// sync, not one per request) while the thread starts the next sync.
pub struct Syncer {
    committer: Option<Committer<Waiter>>,
}

enum Waiter {
    Task(tokio::sync::oneshot::Sender<Result<(), i32>>),
    Reply(crate::reply::Deferred),
}

impl Syncer {
    fn start(engine: &Arc<BlobBackend>, backend: u32) -> Arc<Syncer> {
        let settle = |batch: Vec<Waiter>, r: apsis_storage::Result<()>| {
            let r = r.map_err(|e| e.errno());
            let mut replies = Vec::new();
            for w in batch {
                match w {
                    Waiter::Task(t) => {
                        let _ = t.send(r);
                    }
                    Waiter::Reply(d) => replies.push(d),
                }
            }
            if let Some(d) = replies.first() {
                let rt = d.runtime().clone();
                rt.spawn(async move { crate::reply::send_settled(replies, r) });
            }
        };
        let committer = Committer::start(engine, format!("apsis-sync-{backend}"), settle);
        if let Err(e) = &committer {
            tracing::error!(backend, %e, "cannot start the syncer thread; writes will fail");
        }
        Arc::new(Syncer {
            committer: committer.ok(),
        })
    }

    /// Waits until everything written before this call is durable.
    pub async fn wait(&self) -> Result<(), i32> {
        let (t, r) = tokio::sync::oneshot::channel();
        self.committer
            .as_ref()
            .ok_or(-apsis_proto::errno::EIO)?
            .submit(Waiter::Task(t));
        r.await.unwrap_or(Err(-apsis_proto::errno::EIO))
    }

    /// Sends held replies once everything written before this call is durable (the error
    /// instead if the sync fails; without a syncer thread they are dropped, which answers
    /// −EIO).
    pub fn defer(&self, d: crate::reply::Deferred) {
        if let Some(c) = &self.committer {
            c.submit(Waiter::Reply(d));
        }
    }
}

/// One configured backend.
pub struct Slot {
    pub cfg: BackendConfig,
    pub state: Mutex<SlotState>,
    /// The engine, syncer and cache of an enabled backend (`None` otherwise). Outside `state`,
    /// and read without a lock or a reference count taken ([`Slot::live`]): every request
    /// reads it, and a lock or a count shared by all of them is a cache line every request
    /// moves between CPUs. Changed only under `state`'s lock.
    live: ArcSwapOption<Live>,
    /// BACKEND_CONTROL CTL's delay before every command, in ms. Outside `state`: every
    /// request reads it, and the state's lock is a cache line shared by all of them.
    pub delay_ms: AtomicU32,
    /// The directory as lookup replies report it, with its separator: a base's path is this
    /// and the base's file name.
    path_prefix: Vec<u8>,
}

impl Slot {
    /// What the enabled backend serves with, for the length of a request, without taking a
    /// reference count (see the field's doc); `None` inside when it is not enabled.
    pub fn live(&self) -> arc_swap::Guard<Option<Arc<Live>>> {
        self.live.load()
    }

    /// The open engine, or `None` when the backend is not enabled.
    pub fn engine(&self) -> Option<Arc<BlobBackend>> {
        self.live().as_ref().map(|l| l.engine.clone())
    }

    /// The cache, when the backend has one and is enabled.
    pub fn cache(&self) -> Option<Arc<Cache>> {
        self.live().as_ref().and_then(|l| l.cache.clone())
    }

    /// The group-commit syncer of an enabled `sync = 0` backend.
    pub fn syncer(&self) -> Option<Arc<Syncer>> {
        self.live().as_ref().and_then(|l| l.syncer.clone())
    }

    /// Writes back every dirty cache entry (shutdown; blocking).
    pub fn flush_cache(&self) {
        if let Some(c) = self.cache() {
            c.flush(true);
        }
    }

    pub fn status(&self) -> BackendStatus {
        let s = self.state.lock();
        BackendStatus {
            backend_id: self.cfg.id,
            state: s.state,
            defrag_state: s.defrag_running as u32,
            last_start: s.last_start,
            last_start_err: s.last_start_err,
            read_only: s.read_only,
            delay_ms: self.delay_ms.load(Relaxed),
        }
    }

    /// The file of a base as lookup replies report it: the real blob file (data at the reply's offset).
    pub fn base_path(&self, base: u64) -> Vec<u8> {
        let mut p = Vec::with_capacity(self.path_prefix.len() + 24);
        p.extend_from_slice(&self.path_prefix);
        apsis_storage::push_base_name(&mut p, base);
        p
    }
}

/// One group's ring: sorted (ring id, slot index) of its enabled backends.
type GroupRing = Vec<([u8; ID_SIZE], usize)>;

/// Every backend of the node and the local route table.
pub struct Backends {
    slots: Vec<Arc<Slot>>,
    /// (backend id, slot index), sorted by id: every data request looks its backend up here,
    /// and a binary search of a few entries costs a fraction of hashing the id with SipHash
    /// (~120 instructions per request). Ids are unique (`NodeConfig::validate`).
    by_id: Box<[(u32, usize)]>,
    /// group → sorted (ring id, slot index) of enabled backends.
    routes: RwLock<HashMap<u32, GroupRing>>,
}

/// Why a key has no backend here.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No enabled backend of that group (or that id) on this node: −ENOTSUP, as Elliptics.
    NotServed,
}

impl Backends {
    /// Creates the slots (nothing is opened yet; see [`Backends::enable`]).
    pub fn new(cfgs: &[BackendConfig]) -> Backends {
        let mut slots = Vec::new();
        let mut by_id = Vec::new();
        for c in cfgs {
            by_id.push((c.id, slots.len()));
            slots.push(Arc::new(Slot {
                path_prefix: c.dir.join("").into_os_string().into_encoded_bytes(),
                delay_ms: AtomicU32::new(0),
                cfg: c.clone(),
                live: ArcSwapOption::empty(),
                state: Mutex::new(SlotState {
                    state: backend_state::DISABLED,
                    ids: Vec::new(),
                    read_only: c.read_only,
                    last_start: Time::default(),
                    last_start_err: 0,
                    defrag_running: false,
                }),
            }));
        }
        by_id.sort_unstable();
        Backends {
            slots,
            by_id: by_id.into(),
            routes: RwLock::new(HashMap::new()),
        }
    }

    pub fn slots(&self) -> &[Arc<Slot>] {
        &self.slots
    }

    pub fn get(&self, id: u32) -> Option<&Arc<Slot>> {
        let i = self.by_id.binary_search_by_key(&id, |&(b, _)| b).ok()?;
        Some(&self.slots[self.by_id[i].1])
    }

    /// One past the largest configured backend id (BACKEND_STATUS sends that many slots).
    pub fn id_slots(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.cfg.id as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// Opens a backend's engine (blocking: run it off the async workers).
    pub fn enable(&self, id: u32) -> Result<(), i32> {
        let slot = self.get(id).ok_or(-apsis_proto::errno::EINVAL)?.clone();
        {
            let mut s = slot.state.lock();
            match s.state {
                backend_state::ENABLED => return Err(-apsis_proto::errno::EALREADY),
                backend_state::ACTIVATING | backend_state::DEACTIVATING => {
                    return Err(-apsis_proto::errno::EINPROGRESS)
                }
                _ => s.state = backend_state::ACTIVATING,
            }
        }
        let opened = open_engine(&slot.cfg);
        let mut s = slot.state.lock();
        s.last_start = Time::now();
        match opened {
            Ok((engine, ids)) => {
                engine.set_read_only(s.read_only);
                let engine = Arc::new(engine);
                let syncer = (slot.cfg.sync == 0).then(|| Syncer::start(&engine, id));
                let cache = (slot.cfg.cache_size > 0).then(|| {
                    Arc::new(Cache::new(
                        engine.clone(),
                        slot.cfg.cache_size,
                        std::time::Duration::from_secs(slot.cfg.cache_sync_timeout_secs),
                    ))
                });
                slot.live.store(Some(Arc::new(Live {
                    engine,
                    syncer,
                    cache,
                })));
                s.ids = ids;
                s.state = backend_state::ENABLED;
                s.last_start_err = 0;
                drop(s);
                self.rebuild_routes();
                tracing::info!(backend = id, group = slot.cfg.group, dir = %slot.cfg.dir.display(), "backend enabled");
                Ok(())
            }
            Err(e) => {
                s.state = backend_state::DISABLED;
                s.last_start_err = e;
                tracing::error!(backend = id, errno = e, "backend failed to start");
                Err(e)
            }
        }
    }

    /// Closes a backend's engine after syncing it (blocking).
    pub fn disable(&self, id: u32) -> Result<(), i32> {
        let slot = self.get(id).ok_or(-apsis_proto::errno::EINVAL)?.clone();
        let engine = {
            let mut s = slot.state.lock();
            if s.state != backend_state::ENABLED {
                return Err(-apsis_proto::errno::EALREADY);
            }
            s.state = backend_state::DEACTIVATING;
            // The syncer settles what is queued and the cache writes back what is dirty when
            // their last user drops them (with the `Live`, here or at the end of a request in
            // flight).
            slot.live.swap(None).map(|l| l.engine.clone())
        };
        self.rebuild_routes();
        if let Some(e) = engine {
            if let Err(err) = e.sync() {
                tracing::error!(backend = id, %err, "sync at disable failed");
            }
            // The engine closes (writing its checkpoint) when the last in-flight request drops it.
            drop(e);
        }
        slot.state.lock().state = backend_state::DISABLED;
        tracing::info!(backend = id, "backend disabled");
        Ok(())
    }

    /// Replaces a backend's ring ids and stores them in its `ids` file.
    pub fn set_ids(&self, id: u32, ids: Vec<[u8; ID_SIZE]>) -> Result<(), i32> {
        let slot = self.get(id).ok_or(-apsis_proto::errno::EINVAL)?;
        if ids.is_empty() || ids.len() > IDS_MAX {
            return Err(-apsis_proto::errno::EINVAL);
        }
        write_ids(&slot.cfg.history, &ids).map_err(|_| -apsis_proto::errno::EIO)?;
        slot.state.lock().ids = ids;
        self.rebuild_routes();
        Ok(())
    }

    fn rebuild_routes(&self) {
        let mut routes: HashMap<u32, GroupRing> = HashMap::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let s = slot.state.lock();
            if s.state == backend_state::ENABLED {
                let r = routes.entry(slot.cfg.group).or_default();
                for id in &s.ids {
                    r.push((*id, i));
                }
            }
        }
        for r in routes.values_mut() {
            r.sort();
        }
        *self.routes.write() = routes;
    }

    /// The local backend that owns `key` in `group`.
    pub fn route(&self, group: u32, key: &[u8; ID_SIZE]) -> Result<Arc<Slot>, RouteError> {
        let routes = self.routes.read();
        let r = routes
            .get(&group)
            .filter(|r| !r.is_empty())
            .ok_or(RouteError::NotServed)?;
        Ok(self.slots[r[apsis_ring::owner_index(r, key)].1].clone())
    }

    /// The node's enabled backends with their ring ids (REVERSE_LOOKUP, JOIN).
    pub fn backend_ids(&self) -> Vec<BackendIds> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let s = slot.state.lock();
                (s.state == backend_state::ENABLED).then(|| BackendIds {
                    backend_id: slot.cfg.id as i32,
                    group: slot.cfg.group,
                    flags: 0,
                    ids: s.ids.clone(),
                })
            })
            .collect()
    }

    /// Syncs every enabled backend (shutdown).
    pub fn sync_all(&self) {
        for slot in &self.slots {
            slot.flush_cache();
            if let Some(e) = slot.engine() {
                if let Err(err) = e.sync() {
                    tracing::error!(backend = slot.cfg.id, %err, "sync failed");
                }
            }
        }
    }

    /// Closes every engine (shutdown; blocking).
    pub fn close_all(&self) {
        for slot in &self.slots {
            let e = {
                let mut s = slot.state.lock();
                s.state = backend_state::DISABLED;
                slot.live.swap(None)
            };
            drop(e);
        }
        self.rebuild_routes();
    }
}

fn engine_config(cfg: &BackendConfig) -> BlobConfig {
    BlobConfig {
        blob_size: cfg.blob_size.max(1 << 20),
        records_in_blob: cfg.records_in_blob,
        // sync = 0 is group commit driven by the node's syncer (see [`Syncer`]): the engine
        // itself does not fsync per write.
        sync: if cfg.sync == 0 { -1 } else { cfg.sync },
        // The syncer fsyncs after every group of writes: keep the open base zero-filled
        // ahead so those fsyncs journal no size change.
        zero_ahead_bytes: Some(if cfg.sync == 0 {
            apsis_storage::ZERO_AHEAD_DEFAULT
        } else {
            0
        }),
        defrag_threshold: (cfg.defrag_percentage.clamp(1, 100) as f64) / 100.0,
        size_limit_bytes: cfg.size_limit_bytes,
        defrag_rate_bytes: cfg.defrag_rate_bytes,
        reuse_bases: cfg.reuse_bases,
        ..BlobConfig::default()
    }
}

fn open_engine(cfg: &BackendConfig) -> Result<(BlobBackend, Vec<[u8; ID_SIZE]>), i32> {
    std::fs::create_dir_all(&cfg.dir).map_err(|e| {
        tracing::error!(dir = %cfg.dir.display(), %e, "cannot create backend directory");
        -e.raw_os_error().unwrap_or(apsis_proto::errno::EIO)
    })?;
    let ids = load_or_create_ids(&cfg.history).map_err(|e| {
        tracing::error!(history = %cfg.history.display(), %e, "cannot read or create the ids file");
        -apsis_proto::errno::EIO
    })?;
    let engine =
        BlobBackend::open_path(&cfg.dir, engine_config(cfg)).map_err(|e: StorageError| {
            tracing::error!(dir = %cfg.dir.display(), %e, "cannot open backend");
            e.errno()
        })?;
    Ok((engine, ids))
}

/// Reads `<history>/ids`, or creates it with fresh random ring ids: one per 100 GiB of free
/// space plus one, as Elliptics does (at most [`IDS_MAX`]).
pub fn load_or_create_ids(history: &Path) -> std::io::Result<Vec<[u8; ID_SIZE]>> {
    let path = history.join("ids");
    match std::fs::read(&path) {
        Ok(b) if !b.is_empty() && b.len() % ID_SIZE == 0 && b.len() / ID_SIZE <= IDS_MAX => Ok(b
            .chunks_exact(ID_SIZE)
            .map(|c| c.try_into().expect("64 bytes"))
            .collect()),
        Ok(b) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: {} bytes is not a list of 64-byte ids",
                path.display(),
                b.len()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(history)?;
            let free = free_bytes(history).unwrap_or(0);
            let n = ((free / (100 << 30)) as usize + 1).min(IDS_MAX);
            let ids: Vec<[u8; ID_SIZE]> = (0..n).map(|_| random_id()).collect();
            write_ids(history, &ids)?;
            Ok(ids)
        }
        Err(e) => Err(e),
    }
}

fn write_ids(history: &Path, ids: &[[u8; ID_SIZE]]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(history)?;
    let tmp = history.join("ids.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    for id in ids {
        f.write_all(id)?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, history.join("ids"))?;
    std::fs::File::open(history)?.sync_all()
}

/// A random ring id: sha512 over time, pid, address entropy and a counter.
pub fn random_id() -> [u8; ID_SIZE] {
    use sha2::{Digest, Sha512};
    let mut h = Sha512::new();
    h.update(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    h.update(std::process::id().to_le_bytes());
    h.update(fastrand::u64(..).to_le_bytes());
    h.update(fastrand::u64(..).to_le_bytes());
    if let Ok(b) = std::fs::read("/proc/sys/kernel/random/uuid") {
        h.update(b);
    }
    h.finalize().into()
}

/// Free bytes on the file system holding `p`.
pub fn free_bytes(p: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(p).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_file_is_created_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create_ids(d.path()).unwrap();
        let b = load_or_create_ids(d.path()).unwrap();
        assert_eq!(a, b);
        assert!(!a.is_empty());
        std::fs::write(d.path().join("ids"), [1u8; 63]).unwrap();
        assert!(load_or_create_ids(d.path()).is_err());
    }
}
