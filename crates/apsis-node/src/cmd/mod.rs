//! Dispatch: one `match` on the command number, then one module per command family.
//!
//! A handler returns `Ok(())` when it has sent what the command answers (the final ack, if
//! the request still wants one, is sent here), or `Err(-errno)`, which always produces an ack
//! carrying that status.

pub mod backend;
pub mod io;
pub mod iterator;
pub mod monitor;
pub mod system;

use crate::reply::{Out, Sink};
use crate::Ctx;
use apsis_proto::{cmd, errno, Header};
use bytes::Bytes;
use std::sync::Arc;

pub type HResult = Result<(), i32>;

pub async fn dispatch(ctx: &Arc<Ctx>, hdr: Header, payload: Bytes, tx: Sink) {
    let started = std::time::Instant::now();
    let mut out = Out::new(tx, hdr);
    let size = payload.len() as u64;
    let r = match hdr.cmd {
        cmd::LOOKUP => io::lookup(ctx, &mut out).await,
        cmd::READ => io::read(ctx, &mut out, &payload).await,
        cmd::WRITE => io::write(ctx, &mut out, &payload).await,
        cmd::DEL => io::del(ctx, &mut out, &payload).await,
        cmd::BULK_READ => io::bulk_read(ctx, &mut out, &payload).await,
        cmd::ITERATOR => iterator::handle(ctx, &mut out, &payload).await,
        cmd::ROUTE_LIST => system::route_list(ctx, &mut out).await,
        cmd::AUTH => system::auth(ctx, &mut out, &payload).await,
        cmd::STATUS => system::status(ctx, &mut out, &payload).await,
        cmd::MONITOR_STAT => monitor::handle(ctx, &mut out, &payload).await,
        cmd::BACKEND_CONTROL => backend::control(ctx, &mut out, &payload).await,
        cmd::BACKEND_STATUS => backend::status(ctx, &mut out).await,
        other => {
            tracing::debug!(cmd = other, "unsupported command");
            Err(-errno::ENOTSUP)
        }
    };
    let status = match r {
        Ok(()) => 0,
        Err(e) => e,
    };
    out.finish(status).await;
    ctx.stats.record(
        hdr.cmd,
        status == 0,
        started.elapsed().as_micros() as u64,
        size,
    );
}
