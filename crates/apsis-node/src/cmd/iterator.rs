//! ITERATOR: stream a backend's records (key and time ranges, with or without data), with
//! pause, continue and cancel by iterator id. The SERVER_SEND type copies each record it
//! walks to the request's groups instead (as SEND does, see [`super::send`]; MOVE and
//! OVERWRITE apply) and answers each with the copy's status.
//!
//! Records come from the engine in bounded batches read on the blocking pool, so an iterator
//! over any number of keys holds at most one batch in memory; the connection's bounded reply
//! queue paces it to the client's reading speed.

use super::HResult;
use crate::backends::Slot;
use crate::reply::Out;
use crate::Ctx;
use apsis_proto::{action, errno, iflags, itype, IteratorRequest, IteratorResponse, Time};
use apsis_storage::{Backend, IterCursor, IterRequest, Key, KeyRange, Timestamp};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IterState {
    Running,
    Paused,
    Cancelled,
}

/// Iterators running on this node, by id (the lowest free number, from 0, as Elliptics).
#[derive(Default)]
pub struct Registry {
    inner: Mutex<BTreeMap<u64, watch::Sender<IterState>>>,
}

impl Registry {
    fn start(&self) -> (u64, watch::Receiver<IterState>) {
        let mut m = self.inner.lock();
        let mut id = 0;
        while m.contains_key(&id) {
            id += 1;
        }
        let (tx, rx) = watch::channel(IterState::Running);
        m.insert(id, tx);
        (id, rx)
    }

    fn remove(&self, id: u64) {
        self.inner.lock().remove(&id);
    }

    /// Applies PAUSE / CONTINUE / CANCEL: −ENOENT for an unknown id, +1 for a transition that
    /// is not allowed (start→pause, start→cancel, pause→start, pause→cancel are).
    fn control(&self, id: u64, act: u32) -> Result<(), i32> {
        let m = self.inner.lock();
        let tx = m.get(&id).ok_or(-errno::ENOENT)?;
        let cur = *tx.borrow();
        let next = match (cur, act) {
            (IterState::Running, action::PAUSE) => IterState::Paused,
            (IterState::Paused, action::CONTINUE) | (IterState::Paused, action::START) => {
                IterState::Running
            }
            (IterState::Running | IterState::Paused, action::CANCEL) => IterState::Cancelled,
            _ => return Err(1),
        };
        let _ = tx.send(next);
        Ok(())
    }

    /// Ids and states, for the monitor.
    pub fn list(&self) -> Vec<(u64, IterState)> {
        self.inner
            .lock()
            .iter()
            .map(|(k, v)| (*k, *v.borrow()))
            .collect()
    }
}

fn ts(t: Time) -> Timestamp {
    Timestamp::new(t.sec, t.nsec.min(999_999_999) as u32)
}

pub async fn handle(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let req = IteratorRequest::decode(payload).map_err(|_| -errno::EINVAL)?;
    match req.action {
        action::START if req.id == 0 || ctx.iterators.control(req.id, action::START).is_err() => {}
        action::START => return Ok(()),
        action::PAUSE | action::CONTINUE | action::CANCEL => {
            return ctx.iterators.control(req.id, req.action)
        }
        _ => return Err(-errno::EINVAL),
    }
    if req.flags & !iflags::ALL != 0 {
        return Err(-errno::ENOTSUP);
    }
    let send = match req.itype {
        itype::NETWORK => false,
        itype::SERVER_SEND => true,
        // DISK iterators write to a server-side file in Elliptics and are not supported
        // there either.
        _ => return Err(-errno::ENOTSUP),
    };
    let mut key_ranges = Vec::with_capacity(req.ranges.len());
    for r in &req.ranges {
        if r.begin > r.end {
            return Err(-errno::ERANGE);
        }
        key_ranges.push(KeyRange {
            start: Key(r.begin),
            end: Key(r.end),
        });
    }
    let time_range = if req.flags & iflags::TS_RANGE != 0 {
        if req.time_begin > req.time_end {
            return Err(-errno::ERANGE);
        }
        Some((ts(req.time_begin), ts(req.time_end)))
    } else {
        None
    };
    let (slot, engine) = super::io::backend_for(out)?;
    let mut with_data = req.flags & iflags::DATA != 0;
    if send {
        if req.groups.is_empty() || req.groups.contains(&slot.cfg.group) {
            return Err(-errno::EINVAL);
        }
        if req.flags & iflags::MOVE != 0 {
            super::io::node_writable(ctx, &slot)?;
        }
        // The copies carry the data; the responses do not.
        with_data = false;
    }
    let ireq = IterRequest {
        key_ranges,
        time_range,
        with_data,
        include_removed: false,
        // A prepared record cannot be copied until it is committed.
        include_uncommitted: !send,
        batch_records: 256,
        batch_bytes: 4 << 20,
    };
    let total = engine.stats().records;
    let (id, mut state) = ctx.iterators.start();
    let targets = send.then(|| super::send::Targets {
        groups: &req.groups,
        flags: req.flags & (iflags::MOVE | iflags::OVERWRITE),
        timeout: std::time::Duration::from_secs(req.timeout_secs.clamp(1, 3600).into()),
    });
    let sender = targets.as_ref().map(|t| (ctx, &*slot, t));
    let r = stream(out, engine, ireq, id, total, &mut state, sender).await;
    ctx.iterators.remove(id);
    r
}

/// Where a SERVER_SEND iterator copies what it walks.
type Sender<'a> = (&'a Arc<Ctx>, &'a Slot, &'a super::send::Targets<'a>);

async fn stream(
    out: &Out<'_>,
    engine: Arc<apsis_storage::BlobBackend>,
    ireq: IterRequest,
    id: u64,
    total: u64,
    state: &mut watch::Receiver<IterState>,
    sender: Option<Sender<'_>>,
) -> HResult {
    let ireq = Arc::new(ireq);
    let mut cursor: Option<IterCursor> = None;
    let mut n = 0u64;
    loop {
        let (e, rq, c) = (engine.clone(), ireq.clone(), cursor.clone());
        let batch = tokio::task::spawn_blocking(move || e.iterate(&rq, c.as_ref()))
            .await
            .map_err(|_| -errno::EIO)?
            .map_err(|e| e.errno())?;
        for item in batch.items {
            loop {
                let s = *state.borrow_and_update();
                match s {
                    IterState::Running => break,
                    IterState::Cancelled => return Err(-errno::ENOEXEC),
                    IterState::Paused => {
                        if state.changed().await.is_err() {
                            return Err(-errno::ENOEXEC);
                        }
                    }
                }
            }
            n += 1;
            let info = &item.info;
            let mut status = if item.corrupt { -errno::EILSEQ } else { 0 };
            if let (Some((ctx, slot, to)), 0) = (sender, status) {
                let r = super::send::send_one(ctx, slot, &engine, info.key.0, to).await;
                status = r.err().map_or(0, |(e, _)| e);
            }
            let resp = IteratorResponse {
                id,
                key: info.key.0,
                status,
                timestamp: Time {
                    sec: info.timestamp.sec,
                    nsec: info.timestamp.nsec as u64,
                },
                user_flags: info.user_flags,
                size: info.size,
                iterated_keys: n,
                total_keys: total.max(n),
                record_flags: info.record_flags | apsis_proto::record_flags::EXTHDR,
            };
            let mut head = Vec::with_capacity(IteratorResponse::SIZE);
            resp.encode_into(&mut head);
            let data = item.data.as_deref().unwrap_or(&[]);
            if !out.data(&[&head, data], true).await {
                return Err(-errno::ECONNRESET);
            }
        }
        match batch.next {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}
