//! READ_RANGE and DEL_RANGE: the objects of one backend whose ids lie in an inclusive range
//! (`io.id` ..= `io.parent`), in id order.
//!
//! `io.start` keys are skipped and at most `io.num` (0 = no limit) are read or removed; every
//! object is read at `io.offset` / `io.size` (an object too short for the offset is passed
//! over, as Elliptics does), and NODATA counts without reading. Each object goes out as a READ
//! reply with MORE (id = the key), then one READ reply carrying the request's io_attr with
//! `num` = how many objects were read or removed and `start` = how much of the skip was left
//! over (so a client walking several backends carries the skip on), then the ack.
//!
//! The engine's index is a hash, so the keys are put in order here: each pass scans the
//! range's record headers (on the blocking pool) and keeps the smallest keys after the last
//! one answered, at most [`PASS_KEYS`] of them. A range of any size is answered with bounded
//! memory, in as many passes as it has multiples of [`PASS_KEYS`] keys (fewer when `num` is
//! small). Dirty cache entries are written back first, so the range sees them.

use super::io::{backend_for, io_attr, lock, node_writable, read_one};
use super::HResult;
use crate::reply::Out;
use crate::Ctx;
use apsis_proto::{cmd, errno, ioflags, IoAttr};
use apsis_storage::{Backend, BlobBackend, IterRequest, Key, KeyRange, RemoveRequest, Timestamp};
use std::collections::BinaryHeap;
use std::sync::Arc;

/// Most keys one pass keeps in memory (64 bytes each).
pub const PASS_KEYS: usize = 65_536;

/// Up to `limit` keys of `range` greater than `after`, ascending, from one scan of the
/// backend's committed records; and whether the range holds more keys after them.
fn smallest_keys(
    engine: &BlobBackend,
    range: KeyRange,
    after: Option<Key>,
    limit: usize,
) -> Result<(Vec<Key>, bool), i32> {
    let req = IterRequest {
        key_ranges: vec![range],
        batch_records: 4096,
        ..IterRequest::default()
    };
    let mut heap: BinaryHeap<Key> = BinaryHeap::with_capacity(limit.min(PASS_KEYS) + 1);
    let mut more = false;
    let mut cursor = None;
    loop {
        let batch = engine
            .iterate(&req, cursor.as_ref())
            .map_err(|e| e.errno())?;
        for item in batch.items {
            let k = item.info.key;
            if after.is_some_and(|a| k <= a) {
                continue;
            }
            if heap.len() < limit {
                heap.push(k);
            } else if heap.peek().is_some_and(|top| k < *top) {
                heap.pop();
                heap.push(k);
                more = true;
            } else {
                more = true;
            }
        }
        match batch.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    // A key rewritten while the scan ran can be met twice (its old record, then its new one).
    let mut keys = heap.into_sorted_vec();
    keys.dedup();
    Ok((keys, more))
}

pub async fn handle(ctx: &Arc<Ctx>, out: &mut Out<'_>, payload: &[u8]) -> HResult {
    let (io, _) = io_attr(ctx, payload)?;
    let hdr = out.req;
    let del = hdr.cmd == cmd::DEL_RANGE;
    let (slot, engine) = backend_for(out)?;
    if io.id > io.parent {
        return Err(-errno::ERANGE);
    }
    if del {
        node_writable(ctx, &slot)?;
    }
    if let Some(c) = slot.cache() {
        tokio::task::spawn_blocking(move || c.flush(true))
            .await
            .map_err(|_| -errno::EIO)?;
    }
    let range = KeyRange {
        start: Key(io.id),
        end: Key(io.parent),
    };
    let nodata = io.flags & ioflags::NODATA != 0;
    let mut skip = io.start;
    let limit = if io.num == 0 { u64::MAX } else { io.num };
    let mut done = 0u64;
    let mut after: Option<Key> = None;
    'passes: while done < limit {
        let want = skip.saturating_add(limit - done).min(PASS_KEYS as u64) as usize;
        let e = engine.clone();
        let (keys, more) =
            tokio::task::spawn_blocking(move || smallest_keys(&e, range, after, want))
                .await
                .map_err(|_| -errno::EIO)??;
        for key in keys {
            after = Some(key);
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if done == limit {
                break 'passes;
            }
            let _g = lock(ctx, &hdr, &key.0).await;
            if del {
                if let Some(c) = slot.cache() {
                    c.discard(&key);
                }
                let req = RemoveRequest {
                    timestamp: Timestamp::now(),
                    ..RemoveRequest::default()
                };
                match engine.remove(&key, &req) {
                    Ok(_) => done += 1,
                    // Removed since the scan.
                    Err(e) if e.errno() == -errno::ENOENT => {}
                    Err(e) => return Err(e.errno()),
                }
                continue;
            }
            if nodata {
                done += 1;
                continue;
            }
            let kio = IoAttr {
                id: key.0,
                parent: io.parent,
                offset: io.offset,
                size: io.size,
                flags: io.flags & ioflags::NOCSUM,
                ..IoAttr::default()
            };
            // Elliptics answers each key under a fresh id (reserved zero).
            let mut h = hdr;
            h.cmd = cmd::READ;
            h.id = key.0;
            h.reserved = 0;
            match read_one(slot.cache().as_deref(), &engine, &kio) {
                Ok((rio, data)) => {
                    done += 1;
                    let head = rio.encode();
                    if !out.data_as_shared(h, 0, &head, data, true).await {
                        return Err(-errno::ECONNRESET);
                    }
                }
                // Removed since the scan, or too short for the offset: passed over.
                Err(e) if e == -errno::ENOENT || e == -errno::E2BIG => {}
                // A damaged object is reported under its id; the range goes on.
                Err(e) => {
                    out.data_as(h, e, &[], true).await;
                }
            }
        }
        if !more {
            break;
        }
    }
    if del && done > 0 {
        super::io::durable(&slot).await?;
    }
    let mut sum = io;
    sum.num = done;
    sum.start = skip;
    let head = sum.encode();
    let mut h = hdr;
    h.cmd = cmd::READ;
    h.reserved = 0;
    out.data_as(h, 0, &[&head], true).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apsis_storage::{BlobConfig, WriteRequest};

    /// Passes of 64 keys walk a range of 1000 in order, each key once, tombstones left out.
    #[test]
    fn passes_walk_the_range_in_order() {
        let d = tempfile::tempdir().unwrap();
        let cfg = BlobConfig {
            blob_size: 1 << 20,
            background: false,
            ..BlobConfig::default()
        };
        let b = BlobBackend::open_path(d.path(), cfg).unwrap();
        let mut keys: Vec<Key> = (0..1000u32)
            .map(|i| Key::from_name(b"", format!("k{i}").as_bytes()))
            .collect();
        for k in &keys {
            let req = WriteRequest {
                data: b"x",
                ..Default::default()
            };
            b.write(k, &req).unwrap();
        }
        for k in keys.iter().step_by(10) {
            b.remove(k, &RemoveRequest::default()).unwrap();
        }
        let removed: std::collections::HashSet<Key> = keys.iter().step_by(10).copied().collect();
        keys.retain(|k| !removed.contains(k));
        keys.sort();
        let range = KeyRange {
            start: Key([0; 64]),
            end: Key([0xff; 64]),
        };
        let mut got = Vec::new();
        let mut after = None;
        let mut passes = 0;
        loop {
            let (batch, more) = smallest_keys(&b, range, after, 64).unwrap();
            passes += 1;
            after = batch.last().copied();
            got.extend(batch);
            if !more {
                break;
            }
        }
        assert!(got == keys, "every live key once, in order");
        assert_eq!(passes, 900usize.div_ceil(64));
        // A sub-range, and an empty one.
        let sub = KeyRange {
            start: keys[100],
            end: keys[199],
        };
        let (v, more) = smallest_keys(&b, sub, None, 1000).unwrap();
        assert!(v == keys[100..200] && !more);
        let (v, more) = smallest_keys(&b, sub, Some(keys[199]), 10).unwrap();
        assert!(v.is_empty() && !more);
    }
}
