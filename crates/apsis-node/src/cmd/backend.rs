//! BACKEND_CONTROL and BACKEND_STATUS.

use super::HResult;
use crate::reply::Out;
use crate::Ctx;
use apsis_proto::{backend_command as bc, errno, BackendControl, BackendIds, BackendStatusList};
use apsis_storage::Backend;
use std::sync::Arc;

pub async fn status(ctx: &Arc<Ctx>, out: &mut Out<'_>) -> HResult {
    out.no_ack();
    let list = BackendStatusList {
        backends: ctx.backends.slots().iter().map(|s| s.status()).collect(),
    };
    let p = list.encode(ctx.backends.id_slots());
    out.data(&[&p], false).await;
    Ok(())
}

pub async fn control(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let req = BackendControl::decode(payload).map_err(|_| -errno::EINVAL)?;
    let slot = ctx
        .backends
        .get(req.backend_id)
        .cloned()
        .ok_or(-errno::EINVAL)?;
    let id = req.backend_id;
    let c = ctx.clone();
    let result: Result<(), i32> = match req.command {
        bc::ENABLE => {
            let r = tokio::task::spawn_blocking(move || c.backends.enable(id))
                .await
                .unwrap_or(Err(-errno::EIO));
            if r.is_ok() {
                announce_ids(ctx, id).await;
            }
            r
        }
        bc::DISABLE => {
            let r = tokio::task::spawn_blocking(move || c.backends.disable(id))
                .await
                .unwrap_or(Err(-errno::EIO));
            if r.is_ok() {
                let b = BackendIds {
                    backend_id: id as i32,
                    group: 0,
                    flags: BackendIds::FLAG_DISABLE,
                    ids: Vec::new(),
                };
                super::system::push_update_ids(ctx, b).await;
            }
            r
        }
        bc::START_DEFRAG => match slot.engine() {
            None => Err(-errno::ENOTSUP),
            Some(engine) => {
                {
                    let mut s = slot.state.lock();
                    if s.defrag_running {
                        return Err(-errno::EALREADY);
                    }
                    s.defrag_running = true;
                }
                let slot2 = slot.clone();
                // Defrag runs in the background; BACKEND_STATUS shows its state.
                tokio::task::spawn_blocking(move || {
                    match engine.defrag() {
                        Ok(r) => tracing::info!(backend = id, ?r, "defrag done"),
                        Err(e) => tracing::warn!(backend = id, %e, "defrag failed"),
                    }
                    slot2.state.lock().defrag_running = false;
                });
                Ok(())
            }
        },
        // The pass stops at its next record; BACKEND_STATUS shows it when it has.
        bc::STOP_DEFRAG => match slot.engine() {
            None => Err(-errno::ENOTSUP),
            Some(engine) if engine.stop_defrag() => Ok(()),
            Some(_) => Err(-errno::EALREADY),
        },
        bc::SET_IDS => {
            let r = ctx.backends.set_ids(id, req.ids.clone());
            if r.is_ok() {
                announce_ids(ctx, id).await;
            }
            r
        }
        bc::READ_ONLY | bc::WRITEABLE => {
            let want = req.command == bc::READ_ONLY;
            let mut s = slot.state.lock();
            if s.read_only == want {
                Err(-errno::EALREADY)
            } else {
                s.read_only = want;
                if let Some(l) = &*slot.live() {
                    l.engine.set_read_only(want);
                }
                Ok(())
            }
        }
        bc::CTL => {
            slot.delay_ms
                .store(req.delay_ms, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        _ => Err(-errno::ENOTSUP),
    };
    let list = BackendStatusList {
        backends: vec![slot.status()],
    };
    let p = list.encode(1);
    match result {
        Ok(()) => {
            out.no_ack();
            out.data(&[&p], false).await;
            Ok(())
        }
        Err(e) => {
            out.data(&[&p], true).await;
            Err(e)
        }
    }
}

/// Pushes a backend's current ids (UPDATE_IDS) after it was enabled or got new ids.
async fn announce_ids(ctx: &Ctx, id: u32) {
    let ids = ctx
        .backends
        .backend_ids()
        .into_iter()
        .find(|b| b.backend_id == id as i32);
    if let Some(b) = ids {
        super::system::push_update_ids(ctx, b).await;
    }
}
