//! MONITOR_STAT: the statistics JSON for the asked categories, zlib-compressed.
//!
//! Elliptics answers `{"monitor_status":"disabled"}` unless an HTTP monitor port is configured;
//! Apsis always answers with the statistics (they cost nothing to build on demand), and the
//! monitor port only controls the HTTP listener.

use super::HResult;
use crate::reply::Out;
use crate::Ctx;
use apsis_proto::{errno, MonitorStatRequest};
use std::io::Write;
use std::sync::Arc;

pub async fn handle(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let req = MonitorStatRequest::decode(payload).map_err(|_| -errno::EINVAL)?;
    let c = ctx.clone();
    let json = tokio::task::spawn_blocking(move || crate::monitor::json(&c, req.categories))
        .await
        .map_err(|_| -errno::EIO)?;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(json.to_string().as_bytes())
        .map_err(|_| -errno::EIO)?;
    let p = z.finish().map_err(|_| -errno::EIO)?;
    out.data(&[&p], false).await;
    Ok(())
}
