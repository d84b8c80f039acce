//! The recovery commands (Apsis' own numbers, see `apsis_proto::recovery`): DIGEST and LIST
//! answer a peer comparing with one of our backends, SYNC makes a backend durable before a
//! peer drops its handed-off copies, and JOB runs a recovery job and streams its progress.

use super::io::backend_for;
use super::HResult;
use crate::recovery::{self, side, JobSpec};
use crate::reply::Out;
use crate::Ctx;
use apsis_proto::errno;
use apsis_proto::recovery::{self as rp, job_flags, JobRequest, RangeRequest};
use std::sync::Arc;

fn range_request(payload: &[u8]) -> Result<RangeRequest, i32> {
    RangeRequest::decode(payload).map_err(|e| {
        tracing::debug!(error = %e, "bad recovery request");
        e.errno()
    })
}

pub async fn digest(_ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let req = range_request(payload)?;
    let (_slot, engine) = backend_for(out)?;
    let d = tokio::task::spawn_blocking(move || side::local_digests(&engine, &req))
        .await
        .unwrap_or(Err(-errno::EIO))?;
    out.data(&[&rp::encode_digests(&d)], true).await;
    Ok(())
}

pub async fn list(_ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let req = range_request(payload)?;
    let (_slot, engine) = backend_for(out)?;
    // The scan runs on a blocking thread and hands batches over a small channel, so a slow
    // reader holds back the scan rather than filling memory.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<rp::Entry>>(2);
    let scan = tokio::task::spawn_blocking(move || {
        side::local_list(&engine, &req, |batch| {
            tx.blocking_send(batch).map_err(|_| -errno::ECONNRESET)
        })
    });
    while let Some(batch) = rx.recv().await {
        if !out.data(&[&rp::encode_entries(&batch)], true).await {
            break;
        }
    }
    drop(rx);
    scan.await.unwrap_or(Err(-errno::EIO))
}

pub async fn sync(_ctx: &Arc<Ctx>, out: &mut Out<'_>) -> HResult {
    let (_slot, engine) = backend_for(out)?;
    tokio::task::spawn_blocking(move || {
        use apsis_storage::Backend;
        engine.sync().map_err(|e| e.errno())
    })
    .await
    .unwrap_or(Err(-errno::EIO))
}

pub async fn job(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let req = JobRequest::decode(payload).map_err(|e| e.errno())?;
    let backend = out.req.backend_id;
    let spec = JobSpec {
        kind: req.kind,
        backend: (backend >= 0).then_some(backend as u32),
        since: req.since,
        dry_run: req.flags & job_flags::DRY_RUN != 0,
        resume: req.flags & job_flags::RESUME != 0,
        verify: req.flags & job_flags::VERIFY != 0,
        on_demand: true,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let c = ctx.clone();
    let run = tokio::spawn(async move { recovery::run_job(&c, &spec, Some(tx)).await });
    while let Some(p) = rx.recv().await {
        let j = serde_json::to_vec(&p).unwrap_or_default();
        if !out.data(&[&j], true).await {
            // The operator went away: the job stops at its next report (and can resume).
            break;
        }
        out.flush().await;
    }
    drop(rx);
    match run.await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(-errno::EIO),
    }
}
