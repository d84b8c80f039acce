//! One backend's job: which peers and ranges to compare, the digest comparison, chunks,
//! copies, the hand-off of merge, the clean-up of stale prepared records and verification.

use super::side::{hand_off_drop, Side, Versions};
use super::{JobSpec, Progress};
use crate::backends::Slot;
use crate::Ctx;
use apsis_proto::recovery::{self as rp, Digest, JobKind, RangeRequest, Version};
use apsis_proto::{errno, IdRange};
use apsis_ring::{intersect, next_id, Route};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::mpsc::Sender;

/// Buckets of the first comparison (the top 12 bits of the id), and the finer split of a
/// bucket too big for one chunk (the top 24 bits).
const TOP_BITS: u32 = 12;
const FINE_BITS: u32 = rp::MAX_BITS;
/// Bucket ranges gathered into one chunk at most (bounds the ranges of a LIST request).
const CHUNK_BUCKETS: usize = 64;

/// Where an interrupted on-demand job stands: per work item, the last id done.
#[derive(Default, Serialize, Deserialize)]
struct ResumeState {
    since: (u64, u64),
    done: BTreeMap<String, String>,
}

struct Chunk {
    ranges: Vec<IdRange>,
    /// Every bucket in it has equal digests on both sides.
    same: bool,
    buckets: u64,
}

struct Run<'a> {
    ctx: &'a Arc<Ctx>,
    spec: &'a JobSpec,
    slot: Arc<Slot>,
    local: Side,
    p: Progress,
    reported: Progress,
    tx: Option<&'a Sender<Progress>>,
    resume: ResumeState,
    resume_path: std::path::PathBuf,
    items_total: usize,
    items_done: usize,
    buckets_done: u64,
    started: std::time::Instant,
}

fn kind_name(k: JobKind) -> &'static str {
    match k {
        JobKind::Merge => "merge",
        JobKind::Dc => "dc",
    }
}

/// The part of `ranges` after `done` (ids ≤ `done` are finished).
fn after(ranges: Vec<IdRange>, done: Option<&[u8; 64]>) -> Vec<IdRange> {
    let Some(done) = done else { return ranges };
    let Some(from) = next_id(done) else {
        return Vec::new();
    };
    intersect(
        &ranges,
        &[IdRange {
            begin: from,
            end: [0xff; 64],
        }],
    )
}

fn group_by_route(v: Vec<(IdRange, Route)>) -> BTreeMap<Route, Vec<IdRange>> {
    let mut m: BTreeMap<Route, Vec<IdRange>> = BTreeMap::new();
    for (r, route) in v {
        m.entry(route).or_default().push(r);
    }
    m
}

fn hex(id: &[u8; 64]) -> String {
    apsis_proto::hex(id)
}

fn unhex(s: &str) -> Option<[u8; 64]> {
    if s.len() != 128 {
        return None;
    }
    apsis_proto::id_from_hex(s, 0)
}

/// Runs `spec` on one backend.
pub async fn run_backend(
    ctx: &Arc<Ctx>,
    spec: &JobSpec,
    slot: Arc<Slot>,
    tx: Option<&Sender<Progress>>,
) -> Result<Progress, i32> {
    let kind = kind_name(spec.kind);
    let resume_path = slot.cfg.dir.join(format!("recovery-{kind}.state"));
    let since = (spec.since.sec, spec.since.nsec);
    let resume = if spec.on_demand && spec.resume {
        std::fs::read(&resume_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<ResumeState>(&b).ok())
            .filter(|s| s.since == since)
            .unwrap_or_default()
    } else {
        ResumeState::default()
    };
    let mut run = Run {
        ctx,
        spec,
        local: Side::Local(slot.clone()),
        p: Progress {
            backend: slot.cfg.id,
            kind,
            dry_run: spec.dry_run,
            phase: "start".into(),
            ..Default::default()
        },
        reported: Progress::default(),
        slot,
        tx,
        resume: ResumeState { since, ..resume },
        resume_path,
        items_total: 0,
        items_done: 0,
        buckets_done: 0,
        started: std::time::Instant::now(),
    };
    match spec.kind {
        JobKind::Merge => run.merge().await?,
        JobKind::Dc => run.dc().await?,
    }
    run.p.phase = "done".into();
    run.p.done = true;
    run.p.fraction = 1.0;
    run.report().await?;
    if spec.on_demand {
        let _ = std::fs::remove_file(&run.resume_path);
    }
    Ok(run.p)
}

impl Run<'_> {
    fn me(&self) -> Route {
        Route {
            addr: self.ctx.cluster.me(),
            backend_id: self.slot.cfg.id as i32,
        }
    }

    fn side(&self, route: Route, group: u32) -> Option<Side> {
        Side::at(self.ctx, route, group)
    }

    /// The ranges this backend owns in its group now (empty when it is not in the table).
    fn mine(&self) -> Vec<IdRange> {
        let me = self.me();
        let g = self.slot.cfg.group;
        self.ctx.cluster.client.with_routes(|t| {
            t.ranges(g)
                .into_iter()
                .filter(|(_, r)| *r == me)
                .map(|(x, _)| x)
                .collect()
        })
    }

    /// Counts what happened since the last report into the node's counters, and sends the
    /// progress to the operator (an error when they went away: the job stops, resumable).
    async fn report(&mut self) -> Result<(), i32> {
        let secs = self.started.elapsed().as_secs_f64();
        self.p.elapsed_secs = secs;
        self.p.keys_per_sec = self.p.copied_keys as f64 / secs.max(1e-3);
        self.p.bytes_per_sec = self.p.copied_bytes as f64 / secs.max(1e-3);
        let c = &self.ctx.recovery.counters;
        let (p, r) = (&self.p, &self.reported);
        c.buckets_compared.fetch_add(p.buckets - r.buckets, Relaxed);
        c.buckets_differing
            .fetch_add(p.buckets_differing - r.buckets_differing, Relaxed);
        c.keys_compared
            .fetch_add(p.keys_compared - r.keys_compared, Relaxed);
        c.copied_keys
            .fetch_add(p.copied_keys - r.copied_keys, Relaxed);
        c.copied_bytes
            .fetch_add(p.copied_bytes - r.copied_bytes, Relaxed);
        c.handed_off.fetch_add(p.handed_off - r.handed_off, Relaxed);
        c.prepared_dropped
            .fetch_add(p.prepared_dropped - r.prepared_dropped, Relaxed);
        c.repaired.fetch_add(p.repaired - r.repaired, Relaxed);
        c.errors.fetch_add(p.errors - r.errors, Relaxed);
        self.reported = self.p.clone();
        self.ctx.recovery.set_current(Some(self.p.clone()));
        if let Some(tx) = self.tx {
            tx.send(self.p.clone())
                .await
                .map_err(|_| -errno::ECONNRESET)?;
        }
        Ok(())
    }

    fn save_resume(&self) {
        if !self.spec.on_demand || self.spec.dry_run {
            return;
        }
        if let Ok(b) = serde_json::to_vec(&self.resume) {
            let tmp = self.resume_path.with_extension("tmp");
            if std::fs::write(&tmp, b).is_ok() {
                let _ = std::fs::rename(&tmp, &self.resume_path);
            }
        }
    }

    /// Counts an error on one key (logged at debug: a storm must not flood the log).
    fn error(&mut self, what: &str, e: i32) {
        self.p.errors += 1;
        tracing::debug!(backend = self.slot.cfg.id, peer = %self.p.peer, errno = e, "recovery: {what}");
    }

    /// Counts an error that cost a whole chunk or peer (logged at warn).
    fn failed(&mut self, what: &str, e: i32) {
        self.p.errors += 1;
        tracing::warn!(backend = self.slot.cfg.id, peer = %self.p.peer, errno = e, "recovery: {what}");
    }

    async fn merge(&mut self) -> Result<(), i32> {
        let me = self.me();
        let g = self.slot.cfg.group;
        let table = self.ctx.cluster.client.with_routes(|t| t.ranges(g));
        if !table.iter().any(|(_, r)| *r == me) {
            // Not in the table (yet): everything would look foreign. Hand nothing off.
            return Ok(());
        }
        let foreign = group_by_route(table.into_iter().filter(|(_, r)| *r != me).collect());
        self.items_total = foreign.len();
        for (owner, ranges) in foreign {
            if let Some(peer) = self.side(owner, g) {
                let key = format!("merge:{}:{}", owner.addr, owner.backend_id);
                self.item(key, &peer, ranges).await?;
            }
            self.items_done += 1;
        }
        Ok(())
    }

    async fn dc(&mut self) -> Result<(), i32> {
        let me = self.me();
        let g = self.slot.cfg.group;
        let mine = self.mine();
        if mine.is_empty() {
            return Ok(());
        }
        let mut items = Vec::new();
        self.ctx.cluster.client.with_routes(|t| {
            for g2 in t.groups().into_iter().filter(|x| *x != g) {
                let mut split = Vec::new();
                for (r, route) in t.ranges(g2) {
                    for x in intersect(&mine, &[r]) {
                        split.push((x, route));
                    }
                }
                for (route, ranges) in group_by_route(split) {
                    // Each pair once: the smaller (address, backend) leads it, unless an
                    // operator asked for this backend explicitly.
                    if self.spec.on_demand || me < route {
                        items.push((g2, route, ranges));
                    }
                }
            }
        });
        self.items_total = items.len();
        for (g2, route, ranges) in items {
            if let Some(peer) = self.side(route, g2) {
                let key = format!("dc:{g2}:{}:{}", route.addr, route.backend_id);
                self.item(key, &peer, ranges).await?;
            }
            self.items_done += 1;
        }
        if !self.spec.dry_run {
            self.drop_stale_prepared().await?;
        }
        if self.spec.verify {
            self.verify(&mine).await?;
        }
        Ok(())
    }

    /// Compares this backend with `peer` over `ranges` and converges them.
    async fn item(&mut self, key: String, peer: &Side, ranges: Vec<IdRange>) -> Result<(), i32> {
        let done = self.resume.done.get(&key).and_then(|s| unhex(s));
        let ranges = after(ranges, done.as_ref());
        if ranges.is_empty() {
            return Ok(());
        }
        self.p.peer = peer.describe();
        self.p.phase = "digest".into();
        self.report().await?;
        let chunks = match self.plan(peer, &ranges).await {
            Ok(c) => c,
            Err(e) => {
                self.failed("digest failed", e);
                return self.report().await;
            }
        };
        let total: u64 = chunks.iter().map(|c| c.buckets).sum();
        self.buckets_done = 0;
        self.p.phase = if self.spec.dry_run { "compare" } else { "copy" }.into();
        for c in &chunks {
            if let Err(e) = self.chunk(peer, c).await {
                self.failed("chunk failed", e);
            }
            self.buckets_done += c.buckets;
            if let Some(last) = c.ranges.last() {
                self.resume.done.insert(key.clone(), hex(&last.end));
                self.save_resume();
            }
            self.progress_fraction(total);
            self.report().await?;
        }
        self.resume.done.insert(key, hex(&[0xff; 64]));
        self.save_resume();
        Ok(())
    }

    fn progress_fraction(&mut self, total: u64) {
        let inner = if total == 0 {
            1.0
        } else {
            self.buckets_done as f64 / total as f64
        };
        self.p.fraction =
            ((self.items_done as f64 + inner) / self.items_total.max(1) as f64).min(1.0);
    }

    /// Digests of both sides at `bits`: the buckets to look at, with a size estimate and
    /// whether both sides agree on them.
    async fn compare(
        &mut self,
        peer: &Side,
        ranges: &[IdRange],
        bits: u32,
    ) -> Result<Vec<(u32, u64, bool)>, i32> {
        let req = RangeRequest {
            bits,
            since: self.spec.since,
            ranges: ranges.to_vec(),
        };
        let (l, r) = tokio::join!(
            self.local.digests(self.ctx, &req),
            peer.digests(self.ctx, &req)
        );
        let mut m: BTreeMap<u32, (Digest, Digest)> = BTreeMap::new();
        for d in l? {
            m.entry(d.bucket).or_default().0 = d;
        }
        for d in r? {
            m.entry(d.bucket).or_default().1 = d;
        }
        self.p.buckets += m.len() as u64;
        let merge = self.spec.kind == JobKind::Merge;
        let out: Vec<(u32, u64, bool)> = m
            .into_iter()
            .filter(|(_, (l, r))| if merge { l.count > 0 } else { l != r })
            .map(|(b, (l, r))| (b, l.count.max(r.count), l == r))
            .collect();
        self.p.buckets_differing += out.iter().filter(|x| !x.2).count() as u64;
        Ok(out)
    }

    /// The chunks to list: differing buckets gathered up to `chunk_keys` versions, a bucket
    /// too big for one chunk split into finer buckets.
    async fn plan(&mut self, peer: &Side, ranges: &[IdRange]) -> Result<Vec<Chunk>, i32> {
        let limit = self.ctx.recovery.cfg.chunk_keys.max(1) as u64;
        let mut b = ChunkBuilder::new(limit, ranges);
        for (bucket, size, same) in self.compare(peer, ranges, TOP_BITS).await? {
            let br = rp::bucket_range(bucket, TOP_BITS);
            if size > limit {
                b.flush();
                let sub = intersect(ranges, &[br]);
                for (sb, ssize, ssame) in self.compare(peer, &sub, FINE_BITS).await? {
                    b.add(rp::bucket_range(sb, FINE_BITS), ssize, ssame);
                }
                b.flush();
            } else {
                b.add(br, size, same);
            }
        }
        b.flush();
        Ok(b.chunks)
    }

    async fn chunk(&mut self, peer: &Side, c: &Chunk) -> Result<(), i32> {
        let ctx = self.ctx;
        let merge = self.spec.kind == JobKind::Merge;
        let req = RangeRequest {
            bits: 0,
            since: self.spec.since,
            ranges: c.ranges.clone(),
        };
        let local = self.local.list(ctx, &req).await?;
        let remote_owned: Versions;
        let remote = if c.same {
            // Equal digests: the peer holds exactly these versions.
            &local
        } else {
            remote_owned = peer.list(ctx, &req).await?;
            &remote_owned
        };
        self.p.keys_compared += local.len() as u64;
        let mut push: Vec<([u8; 64], Version)> = Vec::new();
        let mut confirmed: Vec<([u8; 64], Version)> = Vec::new();
        for (id, lv) in &local {
            match remote.get(id) {
                Some(rv) if !lv.newer_than(rv) => confirmed.push((*id, *lv)),
                _ => push.push((*id, *lv)),
            }
        }
        let mut pull: Vec<([u8; 64], Version)> = Vec::new();
        if !merge {
            for (id, rv) in remote {
                if local.get(id).is_none_or(|lv| rv.newer_than(lv)) {
                    pull.push((*id, *rv));
                }
            }
        }
        if self.spec.dry_run {
            self.p.would_copy += (push.len() + pull.len()) as u64;
            if merge {
                self.p.would_hand_off += local.len() as u64;
            }
            return Ok(());
        }
        for (id, lv, r) in copy_all(ctx, &self.local, peer, push).await {
            match r {
                Ok(n) => {
                    self.count_copy(n);
                    confirmed.push((id, lv))
                }
                Err(e) if e == -errno::ENOENT => {}
                Err(e) if e == -errno::EILSEQ && !merge => {
                    // Our copy is corrupt: take the peer's, if it has one.
                    if let Some(rv) = remote.get(&id) {
                        pull.push((id, *rv));
                    } else {
                        self.error("local copy corrupt and the peer has none", e);
                    }
                }
                Err(e) => self.error("copy to peer failed", e),
            }
        }
        for (_, _, r) in copy_all(ctx, peer, &self.local, pull).await {
            match r {
                Ok(n) => self.count_copy(n),
                Err(e) if e == -errno::ENOENT => {}
                Err(e) => self.error("copy from peer failed", e),
            }
        }
        if merge && !confirmed.is_empty() {
            // The owner makes its copies durable before ours go.
            if let Err(e) = peer.sync(ctx).await {
                self.failed("owner sync failed; keeping our copies", e);
                return Ok(());
            }
            self.p.phase = "hand-off".into();
            for (id, lv) in confirmed {
                match hand_off_drop(ctx, &self.slot, id, &lv).await {
                    Ok(()) => self.p.handed_off += 1,
                    // Written meanwhile: the next round looks again.
                    Err(e) if e == -errno::EBADFD => {}
                    Err(e) => self.error("dropping a handed-off copy failed", e),
                }
            }
            self.p.phase = "copy".into();
        }
        Ok(())
    }

    fn count_copy(&mut self, bytes: Option<u64>) {
        if let Some(n) = bytes {
            self.p.copied_keys += 1;
            self.p.copied_bytes += n;
        }
    }

    /// Drops prepared records older than `prepare_timeout_secs` (abandoned uploads).
    async fn drop_stale_prepared(&mut self) -> Result<(), i32> {
        let Some(engine) = self.slot.engine() else {
            return Ok(());
        };
        let timeout = self.ctx.recovery.cfg.prepare_timeout_secs;
        let now = apsis_storage::Timestamp::now();
        let cutoff = apsis_storage::Timestamp::new(now.sec.saturating_sub(timeout), now.nsec);
        let dropped = tokio::task::spawn_blocking(move || -> Result<u64, i32> {
            let req = apsis_storage::IterRequest {
                include_uncommitted: true,
                time_range: Some((apsis_storage::Timestamp::new(0, 0), cutoff)),
                ..Default::default()
            };
            let mut cursor = None;
            let mut n = 0;
            loop {
                use apsis_storage::Backend;
                let batch = engine
                    .iterate(&req, cursor.as_ref())
                    .map_err(|e| e.errno())?;
                for it in batch.items.iter().filter(|i| i.info.is_uncommitted()) {
                    if engine
                        .drop_prepared(&it.info.key, cutoff)
                        .map_err(|e| e.errno())?
                    {
                        n += 1;
                    }
                }
                match batch.next {
                    Some(c) => cursor = Some(c),
                    None => return Ok(n),
                }
            }
        })
        .await
        .unwrap_or(Err(-errno::EIO));
        match dropped {
            Ok(n) => self.p.prepared_dropped += n,
            Err(e) => self.error("dropping stale prepared records failed", e),
        }
        Ok(())
    }

    /// Reads every local record in `mine` (checksums verified) and repairs corrupt ones from
    /// the first other group that has a good copy.
    async fn verify(&mut self, mine: &[IdRange]) -> Result<(), i32> {
        let Some(engine) = self.slot.engine() else {
            return Ok(());
        };
        self.p.phase = "verify".into();
        self.p.peer = String::new();
        self.report().await?;
        let req = apsis_storage::IterRequest {
            key_ranges: mine
                .iter()
                .map(|r| apsis_storage::KeyRange {
                    start: apsis_storage::Key(r.begin),
                    end: apsis_storage::Key(r.end),
                })
                .collect(),
            with_data: true,
            batch_records: 256,
            batch_bytes: 4 << 20,
            ..Default::default()
        };
        let mut cursor = None;
        loop {
            let e2 = engine.clone();
            let (r2, c2) = (req.clone(), cursor.clone());
            let batch = tokio::task::spawn_blocking(move || {
                use apsis_storage::Backend;
                e2.iterate(&r2, c2.as_ref()).map_err(|e| e.errno())
            })
            .await
            .unwrap_or(Err(-errno::EIO))?;
            let bytes: u64 = batch
                .items
                .iter()
                .map(|i| i.data.as_ref().map_or(0, |d| d.len() as u64))
                .sum();
            self.ctx.recovery.pace(bytes).await;
            for it in batch.items.iter().filter(|i| i.corrupt) {
                self.repair(it.info.key.0).await;
            }
            self.p.keys_compared += batch.items.len() as u64;
            match batch.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        self.report().await
    }

    /// Rewrites a corrupt local copy from another group.
    async fn repair(&mut self, id: [u8; 64]) {
        if self.spec.dry_run {
            self.p.would_copy += 1;
            return;
        }
        let g = self.slot.cfg.group;
        let owners: Vec<(u32, Route)> = self.ctx.cluster.client.with_routes(|t| {
            t.groups()
                .into_iter()
                .filter(|x| *x != g)
                .filter_map(|g2| t.owner(g2, &id).map(|r| (g2, r)))
                .collect()
        });
        for (g2, route) in owners {
            let Some(peer) = self.side(route, g2) else {
                continue;
            };
            if let Ok(o) = peer.read(self.ctx, id).await {
                match self.local.write(self.ctx, id, &o).await {
                    Err(e) if e != -errno::EBADFD => self.error("repair write failed", e),
                    _ => {
                        self.p.repaired += 1;
                        return;
                    }
                }
            }
        }
        self.error("no other group has a good copy", -errno::EILSEQ);
    }
}

/// Copies in flight at once: a copy is a read and a write, each a round trip, so one at a
/// time would cap recovery at a few thousand keys per second whatever the pacing allows.
const COPY_PARALLEL: usize = 16;

type Copied = ([u8; 64], Version, Result<Option<u64>, i32>);

/// Copies every item from one side to the other, [`COPY_PARALLEL`] at a time.
async fn copy_all(
    ctx: &Arc<Ctx>,
    from: &Side,
    to: &Side,
    items: Vec<([u8; 64], Version)>,
) -> Vec<Copied> {
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (id, v) in items {
        if set.len() >= COPY_PARALLEL {
            if let Some(Ok(r)) = set.join_next().await {
                out.push(r);
            }
        }
        let (ctx, from, to) = (ctx.clone(), from.clone(), to.clone());
        set.spawn(async move {
            let r = copy(&ctx, &from, &to, id, &v).await;
            (id, v, r)
        });
    }
    while let Some(r) = set.join_next().await {
        // A copy that panicked is neither confirmed nor counted: its key stays as it was.
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out
}

/// Copies version `v` of `id` from one side to the other under CAS_TIMESTAMP, paced: the
/// bytes copied, or `None` when the target already holds something newer (−EBADFD).
async fn copy(
    ctx: &Arc<Ctx>,
    from: &Side,
    to: &Side,
    id: [u8; 64],
    v: &Version,
) -> Result<Option<u64>, i32> {
    let r = if v.removed {
        ctx.recovery.pace(0).await;
        to.tombstone(ctx, id, v.ts).await.map(|_| 0)
    } else {
        let o = from.read(ctx, id).await?;
        ctx.recovery.pace(o.data.len() as u64).await;
        to.write(ctx, id, &o).await.map(|_| o.data.len() as u64)
    };
    match r {
        Ok(n) => Ok(Some(n)),
        Err(e) if e == -errno::EBADFD => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gathers bucket ranges into chunks of at most `limit` versions and [`CHUNK_BUCKETS`]
/// ranges, merging adjacent buckets, each cut to the item's ranges.
struct ChunkBuilder<'a> {
    limit: u64,
    item: &'a [IdRange],
    cur: Vec<IdRange>,
    keys: u64,
    same: bool,
    buckets: u64,
    chunks: Vec<Chunk>,
}

impl<'a> ChunkBuilder<'a> {
    fn new(limit: u64, item: &'a [IdRange]) -> Self {
        ChunkBuilder {
            limit,
            item,
            cur: Vec::new(),
            keys: 0,
            same: true,
            buckets: 0,
            chunks: Vec::new(),
        }
    }

    fn add(&mut self, r: IdRange, size: u64, same: bool) {
        if !self.cur.is_empty()
            && (self.keys + size > self.limit || self.cur.len() >= CHUNK_BUCKETS)
        {
            self.flush();
        }
        match self.cur.last_mut() {
            Some(last) if next_id(&last.end) == Some(r.begin) => last.end = r.end,
            _ => self.cur.push(r),
        }
        self.keys += size;
        self.same &= same;
        self.buckets += 1;
    }

    fn flush(&mut self) {
        if self.cur.is_empty() {
            return;
        }
        let ranges = intersect(self.item, &self.cur);
        for part in ranges.chunks(rp::MAX_RANGES) {
            self.chunks.push(Chunk {
                ranges: part.to_vec(),
                same: self.same,
                buckets: self.buckets,
            });
        }
        self.cur.clear();
        self.keys = 0;
        self.same = true;
        self.buckets = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_positions_cut_ranges() {
        let all = vec![IdRange {
            begin: [0; 64],
            end: [0xff; 64],
        }];
        assert_eq!(after(all.clone(), None), all);
        assert!(after(all.clone(), Some(&[0xff; 64])).is_empty());
        let mut mid = [0u8; 64];
        mid[0] = 0x80;
        let rest = after(all, Some(&mid));
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].begin[0], 0x80);
        assert_eq!(rest[0].begin[63], 1);
        assert_eq!(unhex(&hex(&mid)), Some(mid));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn chunks_respect_the_key_limit_and_merge_adjacent_buckets() {
        let item = [IdRange {
            begin: [0; 64],
            end: [0xff; 64],
        }];
        let mut b = ChunkBuilder::new(100, &item);
        for bucket in 0..10u32 {
            b.add(rp::bucket_range(bucket, TOP_BITS), 30, bucket != 4);
        }
        b.flush();
        // 3 buckets (90 versions) per chunk, the last with one.
        let sizes: Vec<u64> = b.chunks.iter().map(|c| c.buckets).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        assert!(
            b.chunks.iter().all(|c| c.ranges.len() == 1),
            "adjacent buckets merge"
        );
        assert!(!b.chunks[1].same && b.chunks[0].same);
    }
}
