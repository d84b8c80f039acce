//! Dispatch: one `match` on the command number, then one module per command family.
//!
//! A handler returns `Ok(())` when it has sent what the command answers (the final ack, if
//! the request still wants one, is sent here), or `Err(-errno)`, which always produces an ack
//! carrying that status.

pub mod backend;
pub mod io;
pub mod iterator;
pub mod monitor;
pub mod range;
pub mod recovery;
pub mod send;
pub mod system;

use crate::backends::Slot;
use crate::reply::{Out, Sink};
use crate::Ctx;
use apsis_proto::recovery::cmd as rp;
use apsis_proto::{cflags, cmd, errno, Header};
use bytes::Bytes;
use std::borrow::Cow;
use std::sync::Arc;

pub type HResult = Result<(), i32>;

/// The connection a request came on.
#[derive(Clone, Copy, Debug)]
pub enum Origin {
    /// One the node accepted, by its id.
    Accepted(u64),
    /// One the node opened to the peer at this address (see `conn::peer_requests`).
    Opened(std::net::SocketAddr),
}

/// A request's payload: owned by a request in its own task, or borrowed from the connection's
/// read buffer by one answered inline (no reference count written per request). Only a
/// request relayed to another node needs it owned, and copies a borrowed one then.
pub trait Payload: std::ops::Deref<Target = [u8]> {
    fn into_bytes(self) -> Bytes;
}

impl Payload for Bytes {
    fn into_bytes(self) -> Bytes {
        self
    }
}

impl Payload for &[u8] {
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

pub async fn dispatch(
    ctx: &Arc<Ctx>,
    hdr: Header,
    payload: impl Payload,
    tx: Sink<'_>,
    from: Origin,
) {
    let started = std::time::Instant::now();
    let mut out = Out::new(tx, hdr);
    if matches!(hdr.cmd, cmd::LOOKUP | cmd::READ | cmd::WRITE | cmd::DEL) {
        ctx.cluster.wait_joined().await;
    }
    // One route lookup decides both: forward to another node, or which backend serves here.
    let owner = ctx.cluster.owner(&hdr);
    let local = match owner {
        Some(r) if !ctx.cluster.is_local(r.addr) => {
            relay(ctx, r.addr, hdr, payload.into_bytes(), out, started);
            return;
        }
        Some(r) => ctx
            .backends
            .get(r.backend_id as u32)
            .map(|s| (r.backend_id, Some(Cow::Borrowed(s)))),
        None => None,
    };
    let (backend_id, slot) = local.unwrap_or_else(|| serving_backend(ctx, &hdr));
    out.req.backend_id = backend_id;
    if let Some(slot) = &slot {
        // BACKEND_CONTROL CTL's delay: every command the backend serves waits first.
        let ms = slot.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        if ms > 0 {
            Box::pin(tokio::time::sleep(std::time::Duration::from_millis(
                ms.into(),
            )))
            .await;
        }
    }
    out.slot = slot;
    let size = payload.len() as u64;
    let mut r = serve(ctx, &mut out, &payload, from).await;
    if r == Err(-errno::ENOENT) {
        // A miss right after a ring change: the previous owner may still hold the key.
        let backend = out.slot.as_ref().map(|s| s.cfg.id as i32);
        if let Some(prev) = backend.and_then(|b| ctx.cluster.previous_owner(&hdr, b)) {
            if !ctx.cluster.is_local(prev.addr) {
                relay(ctx, prev.addr, hdr, payload.into_bytes(), out, started);
                return;
            }
            if let Some(s) = ctx.backends.get(prev.backend_id as u32) {
                out.slot = Some(Cow::Borrowed(s));
                r = serve(ctx, &mut out, &payload, from).await;
            }
        }
    }
    let status = match r {
        Ok(()) => 0,
        Err(e) => e,
    };
    out.finish(status).await;
    // Replies held for a group commit are counted when they go out.
    if !out.release(started, size) {
        ctx.stats.record(
            hdr.cmd,
            status == 0,
            started.elapsed().as_micros() as u64,
            size,
        );
    }
}

/// Sends a request on to the node at `addr` and relays its replies. From the reader (a
/// `Direct` sink) this runs in its own task: the reader never waits on another node.
fn relay(
    ctx: &Arc<Ctx>,
    addr: std::net::SocketAddr,
    hdr: Header,
    payload: Bytes,
    out: Out<'_>,
    started: std::time::Instant,
) {
    let ctx = ctx.clone();
    let out = out.into_static();
    let job = async move {
        let r = crate::cluster::relay(&ctx, addr, hdr, &payload, &out).await;
        let status = r.err().unwrap_or(0);
        if status != 0 {
            out.finish(status).await;
        }
        out.flush().await;
        ctx.stats.record(
            hdr.cmd,
            status == 0,
            started.elapsed().as_micros() as u64,
            payload.len() as u64,
        );
    };
    tokio::spawn(job);
}

async fn serve(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8], from: Origin) -> HResult {
    let hdr = out.req;
    let out = &mut *out;
    // The hot commands' futures are part of every request's future (built and moved once per
    // request); the others are boxed, so their larger state is not (a request's future was
    // 4.5 KiB with them inline, 2.3 KiB without).
    match hdr.cmd {
        cmd::LOOKUP => io::lookup(ctx, out).await,
        cmd::READ => io::read(ctx, out, payload).await,
        cmd::WRITE => io::write(ctx, out, payload).await,
        cmd::DEL => io::del(ctx, out, payload).await,
        _ => Box::pin(serve_other(ctx, out, payload, from)).await,
    }
}

async fn serve_other(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8], from: Origin) -> HResult {
    match out.req.cmd {
        cmd::BULK_READ => io::bulk_read(ctx, out, payload).await,
        cmd::READ_RANGE | cmd::DEL_RANGE => range::handle(ctx, out, payload).await,
        cmd::SEND => send::handle(ctx, out, payload).await,
        cmd::ITERATOR => iterator::handle(ctx, out, payload).await,
        cmd::ROUTE_LIST => system::route_list(ctx, out, from).await,
        cmd::AUTH => system::auth(ctx, out, payload).await,
        cmd::STATUS => system::status(ctx, out, payload).await,
        cmd::MONITOR_STAT => monitor::handle(ctx, out, payload).await,
        cmd::BACKEND_CONTROL => backend::control(ctx, out, payload).await,
        cmd::BACKEND_STATUS => backend::status(ctx, out).await,
        rp::DIGEST => recovery::digest(ctx, out, payload).await,
        rp::LIST => recovery::list(ctx, out, payload).await,
        rp::SYNC => recovery::sync(ctx, out).await,
        rp::JOB => recovery::job(ctx, out, payload).await,
        other => {
            tracing::debug!(cmd = other, "unsupported command");
            Err(-errno::ENOTSUP)
        }
    }
}

/// The backend that serves a request, and the `backend_id` its replies carry, as Elliptics
/// fills it in: the local backend owning `cmd.id` in `cmd.group` (`cmd.backend_id` itself with
/// DIRECT_BACKEND), −1 for the system commands and for keys this node does not serve, and 0
/// for ROUTE_LIST, whose reply is built from scratch (vectors 04, 11, 12, 15, 24).
fn serving_backend<'a>(ctx: &'a Ctx, hdr: &Header) -> (i32, Option<Cow<'a, Arc<Slot>>>) {
    match hdr.cmd {
        cmd::ROUTE_LIST => (0, None),
        cmd::AUTH
        | cmd::STATUS
        | cmd::MONITOR_STAT
        | cmd::BACKEND_CONTROL
        | cmd::BACKEND_STATUS
        | rp::JOB => (-1, None),
        _ if hdr.flags & cflags::DIRECT_BACKEND != 0 => (
            hdr.backend_id,
            ctx.backends.get(hdr.backend_id as u32).map(Cow::Borrowed),
        ),
        _ => match ctx.backends.route(hdr.group, &hdr.id) {
            Ok(s) => (s.cfg.id as i32, Some(Cow::Owned(s))),
            Err(_) => (-1, None),
        },
    }
}
