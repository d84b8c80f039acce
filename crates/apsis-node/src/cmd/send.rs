//! SEND (server_send): this node copies keys of one of its backends to other groups.
//!
//! The request names keys and target groups; it is served by the backend owning its
//! `cmd.id` in `cmd.group` (the client sends it to the owner of the first key). For each key
//! the node reads its copy (a dirty cache entry is written back first) and WRITEs it, with its
//! timestamp and user flags, to the owner in every target group, in parallel, over the
//! node's own connections (or straight to the engine when that owner is local), under
//! CAS_TIMESTAMP so a newer copy there is kept (−EBADFD) unless OVERWRITE is asked. With MOVE
//! the local copy is then removed, but only if every target took it and it is still the
//! version sent (a write that arrived meanwhile stays).
//!
//! Each key is answered with a SEND reply (MORE) carrying a `dnet_iterator_response`: id =
//! the backend, the key, its status (0, or the first failure: −ENOENT when this backend does
//! not hold it, −ENXIO when a target group has no route, the target's error), the local
//! record's timestamp, user flags, size and flags, `iterated_keys` = its index and
//! `total_keys` = the number of keys. The ack is 0 once every key has been answered.

use super::io::{backend_for, node_writable, settle_cache, ts_exact, ts_out};
use super::HResult;
use crate::backends::Slot;
use crate::recovery::side::{Object, Side};
use crate::reply::Out;
use crate::Ctx;
use apsis_proto::{errno, iflags, record_flags, IteratorResponse, ServerSend, Time};
use apsis_storage::{Backend, BlobBackend, Key, ReadRequest, RecordInfo, RemoveRequest, Timestamp};
use std::sync::Arc;
use std::time::Duration;

pub async fn handle(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let req = ServerSend::decode(payload).map_err(|_| -errno::EINVAL)?;
    let (slot, engine) = backend_for(out)?;
    if req.flags & !(iflags::MOVE | iflags::OVERWRITE) != 0 {
        return Err(-errno::ENOTSUP);
    }
    if req.groups.contains(&slot.cfg.group) {
        // A copy onto itself (and, with MOVE, its removal) is never what was meant.
        return Err(-errno::EINVAL);
    }
    let moving = req.flags & iflags::MOVE != 0;
    if moving {
        node_writable(ctx, &slot)?;
    }
    let timeout = Duration::from_secs(req.timeout_secs.clamp(1, 3600).into());
    let total = req.ids.len() as u64;
    for (i, id) in req.ids.iter().enumerate() {
        let to = Targets {
            groups: &req.groups,
            flags: req.flags,
            timeout,
        };
        let (status, info) = match send_one(ctx, &slot, &engine, *id, &to).await {
            Ok(info) => (0, Some(info)),
            Err((e, info)) => (e, info),
        };
        let resp = IteratorResponse {
            id: slot.cfg.id.into(),
            key: *id,
            status,
            timestamp: info
                .as_ref()
                .map_or(Time::default(), |x| ts_out(x.timestamp)),
            user_flags: info.as_ref().map_or(0, |x| x.user_flags),
            size: info.as_ref().map_or(0, |x| x.size),
            iterated_keys: i as u64,
            total_keys: total,
            record_flags: info
                .as_ref()
                .map_or(0, |x| x.record_flags | record_flags::EXTHDR),
        };
        let mut head = Vec::with_capacity(IteratorResponse::SIZE);
        resp.encode_into(&mut head);
        if !out.data(&[&head], true).await {
            return Err(-errno::ECONNRESET);
        }
    }
    Ok(())
}

/// Where SEND (and the SERVER_SEND iterator) copy keys.
pub(crate) struct Targets<'a> {
    pub groups: &'a [u32],
    /// `iflags::MOVE`, `iflags::OVERWRITE`.
    pub flags: u64,
    /// For each copy.
    pub timeout: Duration,
}

/// Copies one key to every target group (and removes it here with MOVE). The local record's
/// info comes back with the result, when there is a record.
pub(crate) async fn send_one(
    ctx: &Arc<Ctx>,
    slot: &Slot,
    engine: &Arc<BlobBackend>,
    id: [u8; 64],
    req: &Targets<'_>,
) -> Result<RecordInfo, (i32, Option<RecordInfo>)> {
    let timeout = req.timeout;
    let key = Key(id);
    settle_cache(slot, &key).map_err(|e| (e, None))?;
    let r = engine
        .read_shared(&key, &ReadRequest::default())
        .map_err(|e| (e.errno(), None))?;
    let info = r.info.clone();
    let o = Object {
        data: r.data,
        ts: ts_out(r.info.timestamp),
        user_flags: r.info.user_flags,
    };
    let cas = req.flags & iflags::OVERWRITE == 0;
    let o = &o;
    let copies = req.groups.iter().map(|&g| async move {
        let route = ctx.cluster.client.with_routes(|t| t.owner(g, &id));
        let side = route
            .and_then(|r| Side::at(ctx, r, g))
            .ok_or(-errno::ENXIO)?;
        match tokio::time::timeout(timeout, side.write_with(ctx, id, o, cas)).await {
            Ok(r) => r,
            Err(_) => Err(-errno::ETIMEDOUT),
        }
    });
    let results = apsis_client::session::join_all(copies).await;
    if let Some(e) = results.into_iter().find_map(|r| r.err()) {
        return Err((e, Some(info)));
    }
    if req.flags & iflags::MOVE != 0 {
        let _g = ctx.locks.lock(&id, slot.cfg.group).await;
        settle_cache(slot, &key).map_err(|e| (e, Some(info.clone())))?;
        let rm = RemoveRequest {
            timestamp: Timestamp::now(),
            expect: Some(ts_exact(o.ts)),
            ..RemoveRequest::default()
        };
        super::io::run(slot, || engine.remove(&key, &rm))
            .await
            .map_err(|e| (e, Some(info.clone())))?;
    }
    Ok(info)
}
