//! The data commands: LOOKUP, READ, WRITE, DEL, BULK_READ.
//!
//! READ, WRITE and BULK_READ key off `io_attr.id`; LOOKUP and DEL off `cmd.id`, as Elliptics
//! does. Writes and deletes on a `sync = 0` backend are acknowledged only after the backend's
//! group-commit syncer has made them durable (see `backends::Syncer`). On a backend with a
//! cache, every command looks in the cache first and the CACHE / CACHE_ONLY ioflags write to
//! it (see [`crate::cache`]); a mutation that bypasses the cache settles the key's entry first.

use super::HResult;
use crate::backends::Slot;
use crate::cache::{patch, Cache, Cached, Put};
use crate::locks::KeyGuard;
use crate::reply::Out;
use crate::Ctx;
use apsis_proto::{
    cflags, errno, ioflags, record_flags, FileInfo, Header, IoAttr, LookupReply, Time,
};
use apsis_storage::{
    data_checksum, read_range, Backend, BlobBackend, Key, ReadRequest, RecordInfo, RemoveRequest,
    StorageError, Timestamp, WriteRequest,
};
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The backend dispatch resolved for this request, with its open engine. None is −ENOTSUP
/// (Elliptics' answer for a group or backend this node does not serve).
pub fn backend_for(out: &Out<'_>) -> Result<(Arc<Slot>, Arc<BlobBackend>), i32> {
    let slot = out.slot.as_deref().cloned().ok_or(-errno::ENOTSUP)?;
    let engine = slot.engine().ok_or(-errno::ENOTSUP)?;
    Ok((slot, engine))
}

/// A request's timestamp; none given (zero or Elliptics' "empty") means now.
fn ts_in(t: Time) -> Timestamp {
    if t == Time::default() || t == Time::EMPTY {
        Timestamp::now()
    } else {
        ts_exact(t)
    }
}

/// A wire timestamp as the engine stores it, exactly (recovery copies keep theirs, even zero).
pub(crate) fn ts_exact(t: Time) -> Timestamp {
    Timestamp::new(t.sec, t.nsec.min(999_999_999) as u32)
}

pub(crate) fn ts_out(t: Timestamp) -> Time {
    Time {
        sec: t.sec,
        nsec: t.nsec as u64,
    }
}

/// Record flags as eblob reports them: every record has the extended header.
fn wire_flags(info: &RecordInfo) -> u64 {
    info.record_flags | record_flags::EXTHDR
}

fn lookup_reply(ctx: &Ctx, slot: &Slot, info: &RecordInfo, size: u64) -> Vec<u8> {
    LookupReply {
        addr: ctx.first_addr(),
        info: FileInfo {
            flen: 0,
            checksum: info.checksum.unwrap_or([0; 64]),
            record_flags: wire_flags(info),
            size,
            offset: info.offset,
            mtime: ts_out(info.timestamp),
        },
        path: slot.base_path(info.base),
    }
    .encode()
}

fn storage_errno(e: StorageError) -> i32 {
    e.errno()
}

pub(crate) fn node_writable(ctx: &Ctx, slot: &Slot) -> Result<(), i32> {
    if ctx.read_only.load(Relaxed) || slot.state.lock().read_only {
        return Err(-errno::EROFS);
    }
    Ok(())
}

/// Before a mutation that bypasses the cache: the key's cache entry is written back if dirty
/// and dropped, so the engine holds the newest data and no stale entry outlives the write.
pub(crate) fn settle_cache(slot: &Slot, key: &Key) -> Result<(), i32> {
    match slot.cache() {
        Some(c) => c.settle(key).map_err(storage_errno),
        None => Ok(()),
    }
}

/// A lookup or write reply for an object that lives in the cache (no file: empty path).
fn cached_reply(ctx: &Ctx, timestamp: Timestamp, size: u64, checksum: [u8; 64]) -> Vec<u8> {
    LookupReply {
        addr: ctx.first_addr(),
        info: FileInfo {
            flen: 0,
            checksum,
            // Not a blob record: no flags, as Elliptics' cache answers (vector 27).
            record_flags: 0,
            size,
            offset: 0,
            mtime: ts_out(timestamp),
        },
        path: Vec::new(),
    }
    .encode()
}

/// Runs an engine mutation, then, on a `sync = 0` backend, waits for the group commit that
/// makes it durable.
pub(crate) async fn run<T>(
    slot: &Slot,
    f: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, i32> {
    let r = f().map_err(storage_errno)?;
    durable(slot).await?;
    Ok(r)
}

/// [`run`] for a request's own mutation: its acknowledgement waits for the group commit. A
/// request answered inline by the connection's reader does not wait here: it holds its
/// replies ([`Out::hold_until`]) and the reader moves on.
pub(crate) async fn run_acked<T>(
    out: &Out<'_>,
    slot: &Slot,
    f: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, i32> {
    let syncer = slot.syncer();
    match syncer {
        Some(s) if out.is_inline() => {
            let r = f().map_err(storage_errno)?;
            out.hold_until(s);
            Ok(r)
        }
        _ => run(slot, f).await,
    }
}

/// On a `sync = 0` backend, waits for the group commit that makes every mutation made so far
/// durable; at once elsewhere.
pub(crate) async fn durable(slot: &Slot) -> Result<(), i32> {
    let syncer = slot.syncer();
    match syncer {
        Some(s) => s.wait().await,
        None => Ok(()),
    }
}

pub async fn lookup(ctx: &Arc<Ctx>, out: &mut Out<'_>) -> HResult {
    out.no_ack();
    let hdr = out.req;
    let (slot, engine) = backend_for(out)?;
    let _g = lock(ctx, &hdr, &hdr.id).await;
    let key = apsis_storage::Key(hdr.id);
    let checksum = hdr.flags & cflags::CHECKSUM != 0;
    if let Some(c) = slot.cache().and_then(|c| c.get(&key)) {
        if c.dirty || c.cache_only {
            let sum = if checksum {
                data_checksum(&c.data)
            } else {
                [0; 64]
            };
            let p = cached_reply(ctx, c.timestamp, c.data.len() as u64, sum);
            out.data(&[&p], false).await;
            return Ok(());
        }
    }
    let info = engine.lookup(&key, checksum).map_err(storage_errno)?;
    if info.is_uncommitted() || info.is_removed() || info.size == 0 {
        return Err(-errno::ENOENT);
    }
    let p = lookup_reply(ctx, &slot, &info, info.size);
    out.data(&[&p], false).await;
    Ok(())
}

pub(crate) async fn lock<'a>(ctx: &'a Ctx, hdr: &Header, key: &[u8; 64]) -> Option<KeyGuard<'a>> {
    if hdr.flags & cflags::NOLOCK != 0 {
        None
    } else {
        Some(ctx.locks.lock(key, hdr.group).await)
    }
}

/// A data command's io_attr and what follows it. On a node with Elliptics' NO_CSUM flag the
/// io_attr gets NOCSUM, as Elliptics sets it: no checksum verified or written.
pub(crate) fn io_attr<'a>(ctx: &Ctx, payload: &'a [u8]) -> Result<(IoAttr, &'a [u8]), i32> {
    if payload.len() < IoAttr::SIZE {
        return Err(-errno::EINVAL);
    }
    let (io, rest) = IoAttr::split(payload).map_err(|_| -errno::EINVAL)?;
    Ok((node_io(ctx, io), rest))
}

/// `io` as this node runs it: with NOCSUM on a node with the NO_CSUM flag.
fn node_io(ctx: &Ctx, mut io: IoAttr) -> IoAttr {
    if ctx.cfg.flags & apsis_proto::node_flags::NO_CSUM != 0 {
        io.flags |= ioflags::NOCSUM;
    }
    io
}

/// The READ reply for a request: from the cache when the key is there (or CACHE asks to
/// bring it in), else from the engine (its bytes shared out of the base's map, not copied).
pub(crate) fn read_one(
    cache: Option<&Cache>,
    engine: &BlobBackend,
    io: &IoAttr,
) -> Result<(IoAttr, Bytes), i32> {
    let key = apsis_storage::Key(io.id);
    let req = read_request(io);
    let hit = match cache {
        Some(c) => match c.get(&key) {
            Some(h) => Some(h),
            None if io.flags & ioflags::CACHE_ONLY != 0 => return Err(-errno::ENOENT),
            None if io.flags & ioflags::CACHE != 0 => cache_in(c, engine, &key)?,
            None => None,
        },
        None => None,
    };
    match hit {
        Some(h) => {
            let (off, len) = read_range(h.data.len() as u64, &req).map_err(storage_errno)?;
            let data = Bytes::copy_from_slice(&h.data[off as usize..(off + len) as usize]);
            let served = Served {
                offset: off,
                total: h.data.len() as u64,
                timestamp: h.timestamp,
                user_flags: h.user_flags,
                record_flags: 0,
            };
            Ok((reply_io(io, &served, &data), data))
        }
        None => {
            let r = engine.read_shared(&key, &req).map_err(storage_errno)?;
            let rio = reply_io(io, &Served::record(&r.info, r.offset), &r.data);
            Ok((rio, r.data))
        }
    }
}

/// The engine's read request for a READ's io_attr.
fn read_request(io: &IoAttr) -> ReadRequest {
    ReadRequest {
        offset: io.offset,
        size: io.size,
        nocsum: io.flags & ioflags::NOCSUM != 0,
    }
}

/// What a read reply says about the bytes it carries, from the cache or the engine.
struct Served {
    offset: u64,
    total: u64,
    timestamp: Timestamp,
    user_flags: u64,
    record_flags: u64,
}

impl Served {
    fn record(info: &RecordInfo, offset: u64) -> Served {
        Served {
            offset,
            total: info.size,
            timestamp: info.timestamp,
            user_flags: info.user_flags,
            record_flags: wire_flags(info),
        }
    }
}

/// A read reply's io_attr: the request's, with what was served.
fn reply_io(io: &IoAttr, s: &Served, data: &[u8]) -> IoAttr {
    let mut rio = *io;
    if io.flags & ioflags::CHECKSUM != 0 {
        rio.parent = data_checksum(data);
    }
    rio.offset = s.offset;
    rio.size = data.len() as u64;
    rio.total_size = s.total;
    rio.timestamp = ts_out(s.timestamp);
    rio.user_flags = s.user_flags;
    rio.record_flags = s.record_flags;
    rio
}

/// A READ with CACHE that missed: the whole object comes from the engine (verified) and is
/// cached clean, unless it is too big for the cache (then `None`: read it from disk).
fn cache_in(c: &Cache, engine: &BlobBackend, key: &Key) -> Result<Option<Cached>, i32> {
    let info = engine.lookup(key, false).map_err(storage_errno)?;
    if info.is_uncommitted() || info.is_removed() {
        return Err(-errno::ENOENT);
    }
    if info.size > c.max_object() {
        return Ok(None);
    }
    let r = engine
        .read(key, &ReadRequest::default())
        .map_err(storage_errno)?;
    let data = std::sync::Arc::new(r.data);
    let put = Put {
        data: data.clone(),
        timestamp: r.info.timestamp,
        user_flags: r.info.user_flags,
        ttl: None,
        remove_from_disk: false,
        cache_only: false,
        dirty: false,
    };
    c.put(key, put).map_err(storage_errno)?;
    Ok(Some(Cached {
        data,
        timestamp: r.info.timestamp,
        user_flags: r.info.user_flags,
        dirty: false,
        cache_only: false,
    }))
}

pub async fn read(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    out.no_ack();
    let (io, _) = io_attr(ctx, payload)?;
    let hdr = out.req;
    // Borrowed for the request, not counted (backend_for's clones): every READ would write
    // the slot's and the engine's reference counts, lines shared by all requests.
    let live = out.slot.as_deref().ok_or(-errno::ENOTSUP)?.live();
    let live = live.as_ref().ok_or(-errno::ENOTSUP)?;
    let (engine, cache) = (&live.engine, live.cache.as_deref());
    // Held while the bytes are taken, not while they are sent: a reader slow to take a
    // large reply must not hold up every other request for the key (Elliptics too queues
    // the data for its network thread and releases the lock).
    let g = lock(ctx, &hdr, &io.id).await;
    if cache.is_none() && out.is_inline() {
        // Without a cache, the bytes go from the engine's map straight into the
        // connection's reply buffer: one copy, no vector per read.
        let req = read_request(&io);
        let sent = engine
            .read_with(&apsis_storage::Key(io.id), &req, |v| {
                let head = reply_io(&io, &Served::record(&v.info, v.offset), v.data).encode();
                // Too large to gather: shared out of the map (not copied, however large)
                // and written from there after the key's lock is released.
                out.gather_data(&[&head, v.data])
                    .ok_or_else(|| (head.to_vec(), v.share()))
            })
            .map_err(storage_errno)?;
        drop(g);
        match sent {
            Ok(true) => out.flush().await,
            Ok(false) => {}
            Err((head, data)) => {
                out.data(&[&head, &data], false).await;
            }
        }
        return Ok(());
    }
    let (rio, data) = read_one(cache, engine, &io)?;
    drop(g);
    let head = rio.encode();
    out.data(&[&head, &data], false).await;
    Ok(())
}

pub async fn write(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    out.no_ack();
    let (io, rest) = io_attr(ctx, payload)?;
    if io.size > rest.len() as u64 {
        return Err(-errno::EINVAL);
    }
    let hdr = out.req;
    let (slot, engine) = backend_for(out)?;
    node_writable(ctx, &slot)?;
    let data = &rest[..io.size as usize];
    let f = io.flags;
    let prepare = f & ioflags::PREPARE != 0;
    let append = f & ioflags::APPEND != 0;
    let data_len = data.len() as u64;
    let req = WriteRequest {
        data,
        offset: io.offset,
        append,
        prepare: prepare.then_some(io.num.max(io.offset.saturating_add(data_len))),
        plain: f & ioflags::PLAIN_WRITE != 0,
        commit: (f & ioflags::COMMIT != 0).then_some(if prepare {
            io.offset.saturating_add(data_len)
        } else {
            io.num
        }),
        timestamp: ts_in(io.timestamp),
        user_flags: io.user_flags,
        cas_checksum: (f & ioflags::COMPARE_AND_SWAP != 0).then_some(io.parent),
        cas_timestamp: f & ioflags::CAS_TIMESTAMP != 0,
        nocsum: f & ioflags::NOCSUM != 0,
    };
    let key = apsis_storage::Key(io.id);
    // Held until the reply goes out: under `sync = 0`, until the write is durable.
    out.key_lock = lock(ctx, &hdr, &io.id).await.map(KeyGuard::into_owned);
    if let Some(c) = slot.cache() {
        let to_cache = f & (ioflags::CACHE | ioflags::CACHE_ONLY) != 0;
        let whole_or_patch = req.prepare.is_none()
            && !req.plain
            && req.commit.is_none()
            && req.cas_checksum.is_none()
            && !req.cas_timestamp;
        if to_cache && whole_or_patch {
            if let Some(size) = write_cached(out, &slot, &engine, &c, &io, data).await? {
                if f & ioflags::WRITE_NO_FILE_INFO != 0 {
                    out.data(&[], false).await;
                } else {
                    let p = cached_reply(ctx, req.timestamp, size, [0; 64]);
                    out.data(&[&p], false).await;
                }
                return Ok(());
            }
        } else if f & ioflags::CACHE_ONLY != 0 {
            // PREPARE / PLAIN_WRITE / COMMIT / CAS build records on disk; the cache holds
            // whole objects only.
            return Err(-errno::ENOTSUP);
        }
        c.settle(&key).map_err(storage_errno)?;
    }
    let info = run_acked(out, &slot, || engine.write(&key, &req)).await?;
    if f & ioflags::WRITE_NO_FILE_INFO != 0 {
        out.data(&[], false).await;
        return Ok(());
    }
    let size = if append { data_len } else { info.size };
    let p = lookup_reply(ctx, &slot, &info, size);
    out.data(&[&p], false).await;
    Ok(())
}

/// A WRITE with CACHE or CACHE_ONLY (whole object, offset write or APPEND) into the cache.
/// Returns the size to report, or `None` when the object is too big for the cache and the
/// write goes to the engine instead (never for CACHE_ONLY: that is −E2BIG).
async fn write_cached(
    out: &Out<'_>,
    slot: &Slot,
    engine: &BlobBackend,
    c: &Cache,
    io: &IoAttr,
    data: &[u8],
) -> Result<Option<u64>, i32> {
    let key = Key(io.id);
    let f = io.flags;
    let cache_only = f & ioflags::CACHE_ONLY != 0;
    let append = f & ioflags::APPEND != 0;
    let too_big = |end: u64| {
        if end > c.max_object() {
            Err(if cache_only { -errno::E2BIG } else { 0 })
        } else {
            Ok(())
        }
    };
    let len = data.len() as u64;
    let checked = too_big(io.offset.saturating_add(len)).and_then(|()| {
        // An offset write or APPEND applies to the newest bytes: the cache's, else the disk's.
        if io.offset == 0 && !append {
            return Ok(Vec::new());
        }
        let current = match c.get(&key) {
            Some(h) => h.data.to_vec(),
            None if cache_only => Vec::new(),
            None => match engine.read(&key, &ReadRequest::default()) {
                Ok(r) => r.data,
                Err(StorageError::NotFound) => Vec::new(),
                Err(e) => return Err(storage_errno(e)),
            },
        };
        if append {
            too_big(current.len() as u64 + len)?;
        }
        Ok(current)
    });
    let current = match checked {
        Ok(v) => v,
        Err(0) => {
            c.settle(&key).map_err(storage_errno)?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let new = patch(current, data, io.offset, append);
    let size = if append { len } else { new.len() as u64 };
    let timestamp = ts_in(io.timestamp);
    // `sync = 0` promises durability at acknowledgement: write through, cache clean.
    let through = !cache_only && slot.cfg.sync == 0;
    if through {
        let req = WriteRequest {
            data: &new,
            timestamp,
            user_flags: io.user_flags,
            ..Default::default()
        };
        run_acked(out, slot, || engine.write(&key, &req)).await?;
    }
    let put = Put {
        data: std::sync::Arc::new(new),
        timestamp,
        user_flags: io.user_flags,
        ttl: (io.start > 0).then(|| std::time::Duration::from_secs(io.start)),
        remove_from_disk: f & ioflags::CACHE_REMOVE_FROM_DISK != 0,
        cache_only,
        dirty: !through && !cache_only,
    };
    c.put(&key, put).map_err(storage_errno)?;
    Ok(Some(size))
}

pub async fn del(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let (io, _) = io_attr(ctx, payload)?;
    let hdr = out.req;
    let (slot, engine) = backend_for(out)?;
    node_writable(ctx, &slot)?;
    out.key_lock = lock(ctx, &hdr, &hdr.id).await.map(KeyGuard::into_owned);
    let key = apsis_storage::Key(hdr.id);
    // CAS_TIMESTAMP on DEL (an Apsis extension, what recovery sends): record the tombstone
    // at the request's timestamp even where the key is missing, unless something newer is
    // stored (−EBADFD).
    let cas = io.flags & ioflags::CAS_TIMESTAMP != 0;
    let mut cached = false;
    if let Some(c) = slot.cache() {
        if cas {
            // A conditional delete compares with the newest data: write it back first.
            c.settle(&key).map_err(storage_errno)?;
        } else {
            cached = c.discard(&key);
            if io.flags & ioflags::CACHE_ONLY != 0 {
                return if cached { Ok(()) } else { Err(-errno::ENOENT) };
            }
        }
    }
    let req = RemoveRequest {
        timestamp: ts_in(io.timestamp),
        always_record: cas,
        cas_timestamp: cas,
        expect: None,
    };
    match run_acked(out, &slot, move || engine.remove(&key, &req)).await {
        // It lived only in the cache (CACHE_ONLY, or dirty and never written back).
        Err(e) if e == -errno::ENOENT && cached => Ok(()),
        r => r.map(|_| ()),
    }
}

pub async fn bulk_read(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let req = apsis_proto::BulkRead::decode(payload).map_err(|_| -errno::EINVAL)?;
    let hdr = out.req;
    let mut first_err = 0;
    let mut any_ok = false;
    // Every key goes to the request's backend: the client groups keys by owner.
    let backend = backend_for(out);
    for k in &req.keys {
        let r = match &backend {
            Ok((slot, engine)) => {
                let _g = lock(ctx, &hdr, &k.id).await;
                read_one(slot.cache().as_deref(), engine, &node_io(ctx, *k))
            }
            Err(e) => Err(*e),
        };
        let mut h = hdr;
        h.cmd = apsis_proto::cmd::READ;
        match r {
            Ok((rio, data)) => {
                any_ok = true;
                h.id = k.id;
                let head = rio.encode();
                if !out.data_as_shared(h, 0, &head, data, true).await {
                    return Err(-errno::ECONNRESET);
                }
            }
            Err(e) => {
                if first_err == 0 {
                    first_err = e;
                }
                // As Elliptics: the error reply carries the first key's id; its position says
                // which key failed.
                out.data_as(h, e, &[], true).await;
            }
        }
    }
    if any_ok || req.keys.is_empty() {
        Ok(())
    } else {
        Err(first_err)
    }
}

#[cfg(test)]
mod tests {
    /// A node's largest READ answer fits what its own cluster client (and every Apsis client)
    /// accepts: a larger reply would close the connection and every request on it.
    #[test]
    fn a_client_accepts_the_largest_read_a_node_answers() {
        let reply = apsis_storage::blob::READ_SIZE_MAX + apsis_proto::IoAttr::SIZE as u64;
        assert!(apsis_client::conn::MAX_REPLY_BYTES >= reply);
    }
}
