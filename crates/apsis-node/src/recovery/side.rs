//! One side of a comparison: a backend of this node, or a backend on a peer reached with the
//! recovery commands and DIRECT|DIRECT_BACKEND data requests. Both offer the same operations,
//! so the job logic never asks where a backend lives.
//!
//! The local scans ([`local_digests`], [`local_list`]) also answer peers' DIGEST and LIST
//! requests. They read record headers only (the engine's iterator without data), skip
//! hand-off marks (timestamp-zero tombstones) and never hold more than one iterator batch
//! plus the digests or one chunk's versions.

use crate::backends::Slot;
use crate::cmd::io::{ts_exact as ts_in, ts_out as ts_of};
use crate::Ctx;
use apsis_proto::recovery::{self as rp, Digest, Entry, RangeRequest, Version};
use apsis_proto::{cflags, cmd, errno, ioflags, Header, IoAttr, Time};
use apsis_ring::Route;
use apsis_storage::{
    Backend, BlobBackend, IterRequest, KeyRange, ReadRequest, RemoveRequest, Timestamp,
    WriteRequest,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Versions of one chunk, by id.
pub type Versions = HashMap<[u8; 64], Version>;

/// A whole object as recovery copies it.
pub struct Object {
    /// Shared where it already is: a local object in its base's memory map, a remote one in
    /// the connection's read buffer. Copying an object between nodes copies no whole object.
    pub data: bytes::Bytes,
    pub ts: Time,
    pub user_flags: u64,
}

#[derive(Clone)]
pub enum Side {
    Local(Arc<Slot>),
    Remote { route: Route, group: u32 },
}

fn iter_request(req: &RangeRequest, with_data: bool) -> IterRequest {
    IterRequest {
        key_ranges: req
            .ranges
            .iter()
            .map(|r| KeyRange {
                start: apsis_storage::Key(r.begin),
                end: apsis_storage::Key(r.end),
            })
            .collect(),
        time_range: (req.since != Time::default())
            .then(|| (ts_in(req.since), Timestamp::new(u64::MAX, 999_999_999))),
        with_data,
        include_removed: true,
        include_uncommitted: false,
        batch_records: 4096,
        batch_bytes: 8 << 20,
    }
}

/// Walks a backend's committed records and tombstones in `req`'s ranges, batch by batch.
fn scan(
    engine: &BlobBackend,
    req: &RangeRequest,
    mut f: impl FnMut(&[u8; 64], Version) -> Result<(), i32>,
) -> Result<(), i32> {
    if req.ranges.is_empty() {
        return Ok(());
    }
    let ir = iter_request(req, false);
    let mut cursor = None;
    loop {
        let batch = engine
            .iterate(&ir, cursor.as_ref())
            .map_err(|e| e.errno())?;
        for it in &batch.items {
            let v = Version {
                ts: ts_of(it.info.timestamp),
                size: if it.info.is_removed() {
                    0
                } else {
                    it.info.size
                },
                removed: it.info.is_removed(),
            };
            if !v.is_handed_off() {
                f(&it.info.key.0, v)?;
            }
        }
        match batch.next {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}

/// Per-bucket digests of the records in `req` (non-empty buckets only, in bucket order).
pub fn local_digests(engine: &BlobBackend, req: &RangeRequest) -> Result<Vec<Digest>, i32> {
    let mut m: BTreeMap<u32, Digest> = BTreeMap::new();
    scan(engine, req, |id, v| {
        let b = rp::bucket(id, req.bits);
        m.entry(b)
            .or_insert(Digest {
                bucket: b,
                ..Default::default()
            })
            .add(id, &v);
        Ok(())
    })?;
    Ok(m.into_values().collect())
}

/// Every version in `req`, handed to `f` in batches of at most [`rp::LIST_BATCH`].
pub fn local_list(
    engine: &BlobBackend,
    req: &RangeRequest,
    mut f: impl FnMut(Vec<Entry>) -> Result<(), i32>,
) -> Result<(), i32> {
    let mut batch = Vec::with_capacity(rp::LIST_BATCH);
    scan(engine, req, |id, version| {
        batch.push(Entry { id: *id, version });
        if batch.len() == rp::LIST_BATCH {
            f(std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        f(batch)?;
    }
    Ok(())
}

/// How long one recovery request to a peer may take: a digest of a large backend scans it.
pub fn peer_timeout(ctx: &Ctx) -> Duration {
    (ctx.cluster.wait_timeout * 10).max(Duration::from_secs(60))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, i32> + Send + 'static,
) -> Result<T, i32> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(-errno::EIO))
}

impl Side {
    /// The backend `route` points at in `group`: one of ours (None when it is gone), or a
    /// peer's.
    pub fn at(ctx: &Ctx, route: Route, group: u32) -> Option<Side> {
        if ctx.cluster.is_local(route.addr) {
            let s = ctx.backends.get(route.backend_id as u32)?;
            Some(Side::Local(s.clone()))
        } else {
            Some(Side::Remote { route, group })
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Side::Local(s) => format!("local backend {}", s.cfg.id),
            Side::Remote { route, .. } => format!("{}/{}", route.addr, route.backend_id),
        }
    }

    fn engine(slot: &Slot) -> Result<Arc<BlobBackend>, i32> {
        slot.engine().ok_or(-errno::ENOTSUP)
    }

    /// Sends a request with DIRECT|DIRECT_BACKEND to the remote backend; the reply frames,
    /// or the final status when it is an error.
    async fn call(
        ctx: &Ctx,
        route: &Route,
        group: u32,
        c: i32,
        id: [u8; 64],
        payload: &[&[u8]],
    ) -> Result<Vec<apsis_proto::Frame>, i32> {
        let mut h = Header::new(
            c,
            cflags::NEED_ACK | cflags::DIRECT | cflags::DIRECT_BACKEND | cflags::NOLOCK,
        );
        h.group = group;
        h.id = id;
        h.backend_id = route.backend_id;
        let frames = ctx
            .cluster
            .client
            .request_parts(route.addr, &h, payload, peer_timeout(ctx))
            .await
            .map_err(|e| e.errno())?;
        match frames.last() {
            Some(f) if f.header.status != 0 => Err(f.header.status),
            Some(_) => Ok(frames),
            None => Err(-errno::EPROTO),
        }
    }

    pub async fn digests(&self, ctx: &Ctx, req: &RangeRequest) -> Result<Vec<Digest>, i32> {
        match self {
            Side::Local(slot) => {
                let engine = Self::engine(slot)?;
                let req = req.clone();
                blocking(move || local_digests(&engine, &req)).await
            }
            Side::Remote { route, group } => {
                let frames = Self::call(
                    ctx,
                    route,
                    *group,
                    rp::cmd::DIGEST,
                    [0; 64],
                    &[&req.encode()],
                )
                .await?;
                let mut out = Vec::new();
                for f in frames.iter().filter(|f| !f.payload.is_empty()) {
                    out.extend(rp::decode_digests(&f.payload).map_err(|e| e.errno())?);
                }
                Ok(out)
            }
        }
    }

    pub async fn list(&self, ctx: &Ctx, req: &RangeRequest) -> Result<Versions, i32> {
        match self {
            Side::Local(slot) => {
                let engine = Self::engine(slot)?;
                let req = req.clone();
                blocking(move || {
                    let mut m = Versions::new();
                    local_list(&engine, &req, |batch| {
                        m.extend(batch.into_iter().map(|e| (e.id, e.version)));
                        Ok(())
                    })?;
                    Ok(m)
                })
                .await
            }
            Side::Remote { route, group } => {
                let frames =
                    Self::call(ctx, route, *group, rp::cmd::LIST, [0; 64], &[&req.encode()])
                        .await?;
                let mut m = Versions::new();
                for f in frames.iter().filter(|f| !f.payload.is_empty()) {
                    let entries = rp::decode_entries(&f.payload).map_err(|e| e.errno())?;
                    m.extend(entries.into_iter().map(|e| (e.id, e.version)));
                }
                Ok(m)
            }
        }
    }

    /// The whole committed object (checksums verified).
    pub async fn read(&self, ctx: &Ctx, id: [u8; 64]) -> Result<Object, i32> {
        match self {
            Side::Local(slot) => {
                let engine = Self::engine(slot)?;
                blocking(move || {
                    let r = engine
                        .read_shared(&apsis_storage::Key(id), &ReadRequest::default())
                        .map_err(|e| e.errno())?;
                    Ok(Object {
                        data: r.data,
                        ts: ts_of(r.info.timestamp),
                        user_flags: r.info.user_flags,
                    })
                })
                .await
            }
            Side::Remote { route, group } => {
                let io = IoAttr {
                    id,
                    ..Default::default()
                };
                let mut p = Vec::with_capacity(IoAttr::SIZE);
                io.encode_into(&mut p);
                let frames = Self::call(ctx, route, *group, cmd::READ, id, &[&p]).await?;
                let f = frames
                    .iter()
                    .find(|f| f.payload.len() >= IoAttr::SIZE)
                    .ok_or(-errno::EPROTO)?;
                let (rio, data) = IoAttr::split(&f.payload).map_err(|e| e.errno())?;
                let data = f.payload.slice(IoAttr::SIZE..IoAttr::SIZE + data.len());
                Ok(Object {
                    data,
                    ts: rio.timestamp,
                    user_flags: rio.user_flags,
                })
            }
        }
    }

    /// Writes a copy under CAS_TIMESTAMP: a newer record there wins (−EBADFD).
    pub async fn write(&self, ctx: &Arc<Ctx>, id: [u8; 64], o: &Object) -> Result<(), i32> {
        self.write_with(ctx, id, o, true).await
    }

    /// Writes a copy with the object's timestamp and user flags; with `cas` (CAS_TIMESTAMP)
    /// a newer record there wins (−EBADFD), without it the copy replaces whatever is there.
    pub async fn write_with(
        &self,
        ctx: &Arc<Ctx>,
        id: [u8; 64],
        o: &Object,
        cas: bool,
    ) -> Result<(), i32> {
        match self {
            Side::Local(slot) => {
                let engine = Self::engine(slot)?;
                crate::cmd::io::node_writable(ctx, slot)?;
                let _g = ctx.locks.lock(&id, slot.cfg.group).await;
                crate::cmd::io::settle_cache(slot, &apsis_storage::Key(id))?;
                let req = WriteRequest {
                    data: &o.data,
                    timestamp: ts_in(o.ts),
                    user_flags: o.user_flags,
                    cas_timestamp: cas,
                    ..Default::default()
                };
                crate::cmd::io::run(slot, || engine.write(&apsis_storage::Key(id), &req)).await?;
                Ok(())
            }
            Side::Remote { route, group } => {
                let io = IoAttr {
                    id,
                    timestamp: o.ts,
                    user_flags: o.user_flags,
                    flags: if cas { ioflags::CAS_TIMESTAMP } else { 0 }
                        | ioflags::WRITE_NO_FILE_INFO,
                    size: o.data.len() as u64,
                    ..Default::default()
                };
                // The io_attr and the data as they are: not copied into one frame first.
                let io = io.encode();
                Self::call(ctx, route, *group, cmd::WRITE, id, &[&io, &o.data]).await?;
                Ok(())
            }
        }
    }

    /// Records a tombstone at `ts` unless something newer is there (CAS_TIMESTAMP); an equal
    /// or newer tombstone already there is success.
    pub async fn tombstone(&self, ctx: &Arc<Ctx>, id: [u8; 64], ts: Time) -> Result<(), i32> {
        let r = match self {
            Side::Local(slot) => {
                let engine = Self::engine(slot)?;
                crate::cmd::io::node_writable(ctx, slot)?;
                let _g = ctx.locks.lock(&id, slot.cfg.group).await;
                crate::cmd::io::settle_cache(slot, &apsis_storage::Key(id))?;
                let req = RemoveRequest {
                    timestamp: ts_in(ts),
                    always_record: true,
                    cas_timestamp: true,
                    expect: None,
                };
                crate::cmd::io::run(slot, || engine.remove(&apsis_storage::Key(id), &req))
                    .await
                    .map(|_| ())
            }
            Side::Remote { route, group } => {
                let io = IoAttr {
                    id,
                    timestamp: ts,
                    flags: ioflags::CAS_TIMESTAMP,
                    ..Default::default()
                };
                let mut p = Vec::with_capacity(IoAttr::SIZE);
                io.encode_into(&mut p);
                Self::call(ctx, route, *group, cmd::DEL, id, &[&p])
                    .await
                    .map(|_| ())
            }
        };
        match r {
            Err(e) if e == -errno::ENOENT => Ok(()),
            r => r,
        }
    }

    /// Makes everything the backend acknowledged durable.
    pub async fn sync(&self, ctx: &Ctx) -> Result<(), i32> {
        match self {
            Side::Local(slot) => {
                let engine = Self::engine(slot)?;
                blocking(move || engine.sync().map_err(|e| e.errno())).await
            }
            Side::Remote { route, group } => {
                Self::call(ctx, route, *group, rp::cmd::SYNC, [0; 64], &[])
                    .await
                    .map(|_| ())
            }
        }
    }
}

/// Drops a local copy that was handed off: replaced by a timestamp-zero tombstone, only if
/// the record is still the version `v` (a write that arrived meanwhile is kept).
pub async fn hand_off_drop(
    ctx: &Arc<Ctx>,
    slot: &Slot,
    id: [u8; 64],
    v: &Version,
) -> Result<(), i32> {
    let engine = slot.engine().ok_or(-errno::ENOTSUP)?;
    crate::cmd::io::node_writable(ctx, slot)?;
    let _g = ctx.locks.lock(&id, slot.cfg.group).await;
    crate::cmd::io::settle_cache(slot, &apsis_storage::Key(id))?;
    let req = RemoveRequest {
        timestamp: Timestamp::new(0, 0),
        always_record: true,
        cas_timestamp: false,
        expect: Some(ts_in(v.ts)),
    };
    crate::cmd::io::run(slot, || engine.remove(&apsis_storage::Key(id), &req))
        .await
        .map(|_| ())
}
