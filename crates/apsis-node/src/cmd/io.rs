//! The data commands: LOOKUP, READ, WRITE, DEL, BULK_READ.
//!
//! READ, WRITE and BULK_READ key off `io_attr.id`; LOOKUP and DEL off `cmd.id`, as Elliptics
//! does. Writes and deletes on a `sync = 0` backend are acknowledged only after the backend's
//! group-commit syncer has made them durable (see `backends::Syncer`).

use super::HResult;
use crate::backends::Slot;
use crate::reply::Out;
use crate::Ctx;
use apsis_proto::{
    cflags, errno, ioflags, record_flags, FileInfo, Header, IoAttr, LookupReply, Time,
};
use apsis_storage::{
    data_checksum, Backend, BlobBackend, ReadRequest, RecordInfo, RemoveRequest, StorageError,
    Timestamp, WriteRequest,
};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The backend dispatch resolved for this request, with its open engine. None is −ENOTSUP
/// (Elliptics' answer for a group or backend this node does not serve).
pub fn backend_for(out: &Out) -> Result<(Arc<Slot>, Arc<BlobBackend>), i32> {
    let slot = out.slot.clone().ok_or(-errno::ENOTSUP)?;
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

/// Runs an engine mutation, then, on a `sync = 0` backend, waits for the group commit that
/// makes it durable before it is acknowledged.
pub(crate) async fn run<T>(
    slot: &Slot,
    f: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, i32> {
    let r = f().map_err(storage_errno)?;
    let syncer = slot.state.lock().syncer.clone();
    if let Some(s) = syncer {
        s.wait().await?;
    }
    Ok(r)
}

pub async fn lookup(ctx: &Arc<Ctx>, out: &mut Out) -> HResult {
    out.no_ack();
    let hdr = out.req;
    let (slot, engine) = backend_for(out)?;
    let _g = lock(ctx, &hdr, &hdr.id).await;
    let key = apsis_storage::Key(hdr.id);
    let checksum = hdr.flags & cflags::CHECKSUM != 0;
    let info = engine.lookup(&key, checksum).map_err(storage_errno)?;
    if info.is_uncommitted() || info.is_removed() || info.size == 0 {
        return Err(-errno::ENOENT);
    }
    let p = lookup_reply(ctx, &slot, &info, info.size);
    out.data(&[&p], false).await;
    Ok(())
}

async fn lock<'a>(
    ctx: &'a Ctx,
    hdr: &Header,
    key: &[u8; 64],
) -> Option<tokio::sync::MutexGuard<'a, ()>> {
    if hdr.flags & cflags::NOLOCK != 0 {
        None
    } else {
        Some(ctx.locks.lock(key, hdr.group).await)
    }
}

fn io_attr(payload: &[u8]) -> Result<(IoAttr, &[u8]), i32> {
    if payload.len() < IoAttr::SIZE {
        return Err(-errno::EINVAL);
    }
    IoAttr::split(payload).map_err(|_| -errno::EINVAL)
}

/// Reads one key and builds its READ reply payload (io_attr + data).
fn read_one(engine: &BlobBackend, io: &IoAttr) -> Result<(IoAttr, Vec<u8>), i32> {
    let req = ReadRequest {
        offset: io.offset,
        size: io.size,
        nocsum: io.flags & ioflags::NOCSUM != 0,
    };
    let r = engine
        .read(&apsis_storage::Key(io.id), &req)
        .map_err(storage_errno)?;
    let mut rio = *io;
    if io.flags & ioflags::CHECKSUM != 0 {
        rio.parent = data_checksum(&r.data);
    }
    rio.offset = r.offset;
    rio.size = r.data.len() as u64;
    rio.total_size = r.info.size;
    rio.timestamp = ts_out(r.info.timestamp);
    rio.user_flags = r.info.user_flags;
    rio.record_flags = wire_flags(&r.info);
    Ok((rio, r.data))
}

pub async fn read(ctx: &Arc<Ctx>, out: &mut Out, payload: &[u8]) -> HResult {
    out.no_ack();
    let (io, _) = io_attr(payload)?;
    let hdr = out.req;
    let (_slot, engine) = backend_for(out)?;
    let _g = lock(ctx, &hdr, &io.id).await;
    let (rio, data) = read_one(&engine, &io)?;
    let mut head = Vec::with_capacity(IoAttr::SIZE);
    rio.encode_into(&mut head);
    out.data(&[&head, &data], false).await;
    Ok(())
}

pub async fn write(ctx: &Arc<Ctx>, out: &mut Out, payload: &[u8]) -> HResult {
    out.no_ack();
    let (io, rest) = io_attr(payload)?;
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
    let _g = lock(ctx, &hdr, &io.id).await;
    let info = run(&slot, || engine.write(&key, &req)).await?;
    if f & ioflags::WRITE_NO_FILE_INFO != 0 {
        out.data(&[], false).await;
        return Ok(());
    }
    let size = if append { data_len } else { info.size };
    let p = lookup_reply(ctx, &slot, &info, size);
    out.data(&[&p], false).await;
    Ok(())
}

pub async fn del(ctx: &Arc<Ctx>, out: &mut Out, payload: &[u8]) -> HResult {
    let (io, _) = io_attr(payload)?;
    let hdr = out.req;
    let (slot, engine) = backend_for(out)?;
    node_writable(ctx, &slot)?;
    let _g = lock(ctx, &hdr, &hdr.id).await;
    let key = apsis_storage::Key(hdr.id);
    // CAS_TIMESTAMP on DEL (an Apsis extension, what recovery sends): record the tombstone
    // at the request's timestamp even where the key is missing, unless something newer is
    // stored (−EBADFD).
    let cas = io.flags & ioflags::CAS_TIMESTAMP != 0;
    let req = RemoveRequest {
        timestamp: ts_in(io.timestamp),
        always_record: cas,
        cas_timestamp: cas,
        expect: None,
    };
    run(&slot, move || engine.remove(&key, &req)).await?;
    Ok(())
}

pub async fn bulk_read(ctx: &Arc<Ctx>, out: &mut Out, payload: &[u8]) -> HResult {
    let req = apsis_proto::BulkRead::decode(payload).map_err(|_| -errno::EINVAL)?;
    let hdr = out.req;
    let mut first_err = 0;
    let mut any_ok = false;
    // Every key goes to the request's backend: the client groups keys by owner.
    let backend = backend_for(out);
    for k in &req.keys {
        let r = match &backend {
            Ok((_slot, engine)) => {
                let _g = lock(ctx, &hdr, &k.id).await;
                read_one(engine, k)
            }
            Err(e) => Err(*e),
        };
        let mut h = hdr;
        h.cmd = apsis_proto::cmd::READ;
        match r {
            Ok((rio, data)) => {
                any_ok = true;
                h.id = k.id;
                let mut head = Vec::with_capacity(IoAttr::SIZE);
                rio.encode_into(&mut head);
                if !out.data_as(h, 0, &[&head, &data], true).await {
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
