//! Recovery: keeping replicas converged, continuously and on demand.
//!
//! Two kinds, as Elliptics' `dnet_recovery` had, but run inside the server:
//! - **merge** (inside a group): a backend hands every key it holds but no longer owns (the
//!   ring changed) to the key's owner — copying only when the owner's copy is missing or older
//!   — and drops its own copy only after the owner has synced (so it holds a durable
//!   newer-or-equal copy) and only if the local record is still the version handed off.
//! - **dc** (across groups): for every range a backend owns and every other group, the
//!   backend and that group's owner of the range exchange per-bucket digests; only buckets
//!   that differ are listed record by record, and each side gets the newer version (timestamp,
//!   then size; a tombstone wins a tie) under CAS_TIMESTAMP, so a delete is never undone and a
//!   write racing the copy is never overwritten. dc also drops prepared records older than
//!   `prepare_timeout_secs`, repairs a local copy that fails its checksum when it is read for
//!   copying, and, with `verify` (on demand, or every `scrub_interval_secs`), reads every local
//!   record and repairs the corrupt ones from the other groups.
//!
//! Memory is bounded by `chunk_keys` versions per side whatever the number of keys: buckets
//! are grouped into chunks by their digest counts, and a bucket bigger than a chunk is split
//! into finer buckets.
//!
//! **Automatic**: every `interval_secs` the node runs merge (when its group's ring changed since
//! the last successful merge) and dc on each of its backends, once the route table has stayed
//! the same for a whole interval (a flapping peer does not start a copy storm). For each pair
//! of backends only the one with the smaller (address, backend) runs dc, so work is not done
//! twice. Copies are paced by `rate_keys` and `rate_bytes`.
//!
//! **On demand**: the JOB command (`apsis recovery merge|dc`) runs the same code on one or all
//! backends of a node, streams progress, supports dry runs, `since`, and resumes from a
//! per-backend state file after an interruption.
//!
//! # Layout
//! - this file: [`RecoveryConfig`], the shared [`Recovery`] state (counters, pacing, the job
//!   lock), the automatic loop and [`run_job`].
//! - [`side`]: a local or remote backend behind one interface; the local digest and list scans.
//! - `job`: the comparison itself (digests, chunks, copies, hand-off, clean-up, verify).

mod job;
pub mod side;

use crate::Ctx;
use apsis_proto::recovery::JobKind;
use apsis_proto::Time;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How recovery runs (`[recovery]` in the TOML config).
#[derive(Clone, Debug, PartialEq)]
pub struct RecoveryConfig {
    /// Run merge and dc in the background.
    pub auto: bool,
    /// Seconds between background rounds (and the time the route table must stay unchanged).
    pub interval_secs: u64,
    /// Most keys copied per second (0 = no limit).
    pub rate_keys: u64,
    /// Most bytes copied per second (0 = no limit).
    pub rate_bytes: u64,
    /// Prepared, uncommitted records older than this are dropped by dc.
    pub prepare_timeout_secs: u64,
    /// Background dc reads and verifies every record this often (0 = never).
    pub scrub_interval_secs: u64,
    /// Most record versions one side holds in memory at once.
    pub chunk_keys: usize,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            auto: true,
            interval_secs: 60,
            rate_keys: 20_000,
            rate_bytes: 64 << 20,
            prepare_timeout_secs: 24 * 3600,
            scrub_interval_secs: 7 * 24 * 3600,
            chunk_keys: 131_072,
        }
    }
}

/// Counters since start (monitor JSON `recovery`, Prometheus `apsis_recovery_*`).
#[derive(Default)]
pub struct Counters {
    pub rounds: AtomicU64,
    pub jobs: AtomicU64,
    pub buckets_compared: AtomicU64,
    pub buckets_differing: AtomicU64,
    pub keys_compared: AtomicU64,
    pub copied_keys: AtomicU64,
    pub copied_bytes: AtomicU64,
    pub handed_off: AtomicU64,
    pub prepared_dropped: AtomicU64,
    pub repaired: AtomicU64,
    pub errors: AtomicU64,
    pub last_round_ms: AtomicU64,
}

/// What one job did (per backend), streamed to `apsis recovery` and kept for the monitor.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Progress {
    pub backend: u32,
    pub kind: &'static str,
    pub dry_run: bool,
    /// What the job is doing now ("digest", "copy", "verify", "done", ...).
    pub phase: String,
    /// The backend being compared with.
    pub peer: String,
    pub buckets: u64,
    pub buckets_differing: u64,
    /// Ids done so far, as a fraction of the id space this backend compares (0..=1).
    pub fraction: f64,
    pub keys_compared: u64,
    pub copied_keys: u64,
    pub copied_bytes: u64,
    pub handed_off: u64,
    pub prepared_dropped: u64,
    pub repaired: u64,
    /// Dry run: what would be copied and handed off.
    pub would_copy: u64,
    pub would_hand_off: u64,
    pub errors: u64,
    /// Seconds since the job started on this backend, and its copy rate so far.
    pub elapsed_secs: f64,
    pub keys_per_sec: f64,
    pub bytes_per_sec: f64,
    pub done: bool,
}

/// A job request.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub kind: JobKind,
    /// One backend, or all of the node's.
    pub backend: Option<u32>,
    /// Only records stamped at or after this (zero: all).
    pub since: Time,
    pub dry_run: bool,
    pub resume: bool,
    pub verify: bool,
    /// Started by an operator: runs every pair (not only those this node leads) and keeps a
    /// resume file.
    pub on_demand: bool,
}

#[derive(Default)]
struct State {
    /// The route table's fingerprint at the last round, and per backend the fingerprint its
    /// last successful merge saw.
    last_table: Option<u64>,
    merged: HashMap<u32, u64>,
    last_scrub: Option<Instant>,
    /// The job running now, for the monitor.
    current: Option<Progress>,
}

/// Recovery's shared state in the node.
pub struct Recovery {
    pub cfg: RecoveryConfig,
    pub counters: Counters,
    /// One job at a time per node (background or on demand).
    job: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// The pacing clock: when the next copy may start.
    next_copy: Mutex<Instant>,
}

impl Recovery {
    pub fn new(cfg: RecoveryConfig) -> Recovery {
        Recovery {
            cfg,
            counters: Counters::default(),
            job: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
            next_copy: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this copy's turn under `rate_keys` and `rate_bytes`.
    pub async fn pace(&self, bytes: u64) {
        let per_key = match self.cfg.rate_keys {
            0 => Duration::ZERO,
            r => Duration::from_secs_f64(1.0 / r as f64),
        };
        let per_bytes = match self.cfg.rate_bytes {
            0 => Duration::ZERO,
            r => Duration::from_secs_f64(bytes as f64 / r as f64),
        };
        let wait = {
            let mut next = self.next_copy.lock();
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + per_key.max(per_bytes);
            start - now
        };
        if wait >= Duration::from_millis(1) {
            tokio::time::sleep(wait).await;
        }
    }

    /// The monitor's view: configuration, counters, the running job.
    pub fn json(&self) -> serde_json::Value {
        let c = &self.counters;
        let st = self.state.lock();
        serde_json::json!({
            "auto": self.cfg.auto,
            "interval_secs": self.cfg.interval_secs,
            "rate_keys": self.cfg.rate_keys,
            "rate_bytes": self.cfg.rate_bytes,
            "state": if st.current.is_some() { "running" } else { "idle" },
            "current": st.current,
            "rounds": c.rounds.load(Relaxed),
            "jobs": c.jobs.load(Relaxed),
            "buckets_compared": c.buckets_compared.load(Relaxed),
            "buckets_differing": c.buckets_differing.load(Relaxed),
            "keys_compared": c.keys_compared.load(Relaxed),
            "copied_keys": c.copied_keys.load(Relaxed),
            "copied_bytes": c.copied_bytes.load(Relaxed),
            "handed_off": c.handed_off.load(Relaxed),
            "prepared_dropped": c.prepared_dropped.load(Relaxed),
            "repaired": c.repaired.load(Relaxed),
            "errors": c.errors.load(Relaxed),
            "last_round_ms": c.last_round_ms.load(Relaxed),
        })
    }

    /// Whether a job is running now.
    pub fn running(&self) -> bool {
        self.state.lock().current.is_some()
    }

    fn set_current(&self, p: Option<Progress>) {
        self.state.lock().current = p;
    }
}

/// Runs a job on the chosen backends one after another; `progress` receives a report after
/// every chunk and a final one per backend. Returns the final reports.
pub async fn run_job(
    ctx: &Arc<Ctx>,
    spec: &JobSpec,
    progress: Option<tokio::sync::mpsc::Sender<Progress>>,
) -> Result<Vec<Progress>, i32> {
    let slots: Vec<_> = match spec.backend {
        Some(id) => vec![ctx
            .backends
            .get(id)
            .cloned()
            .ok_or(-apsis_proto::errno::ENOENT)?],
        None => ctx.backends.slots().to_vec(),
    };
    let _one = ctx.recovery.job.lock().await;
    ctx.recovery.counters.jobs.fetch_add(1, Relaxed);
    let mut reports = Vec::new();
    for slot in slots {
        if slot.engine().is_none() {
            continue;
        }
        let r = job::run_backend(ctx, spec, slot, progress.as_ref()).await;
        ctx.recovery.set_current(None);
        reports.push(r?);
    }
    Ok(reports)
}

fn table_fingerprint(ctx: &Ctx) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ctx.cluster.client.with_routes(|t| t.entries()).hash(&mut h);
    h.finish()
}

/// Starts the background loop (when `auto`).
pub fn start(ctx: &Arc<Ctx>) {
    if !ctx.recovery.cfg.auto {
        return;
    }
    let weak = Arc::downgrade(ctx);
    let period = Duration::from_secs(ctx.recovery.cfg.interval_secs.max(1));
    let mut shutdown = ctx.shutdown_rx();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => return,
            }
            let Some(ctx) = weak.upgrade() else { return };
            round(&ctx).await;
        }
    });
}

/// One background round: merge where the ring changed, then dc, on every backend.
async fn round(ctx: &Arc<Ctx>) {
    let fp = table_fingerprint(ctx);
    let rec = &ctx.recovery;
    {
        let mut st = rec.state.lock();
        if st.last_table != Some(fp) {
            // Changed since the last round: let it settle for one interval.
            st.last_table = Some(fp);
            return;
        }
    }
    let started = Instant::now();
    rec.counters.rounds.fetch_add(1, Relaxed);
    // A scrub (dc with verify) every scrub interval; the first one a whole interval after start.
    let verify = rec.cfg.scrub_interval_secs > 0 && {
        let mut st = rec.state.lock();
        let last = *st.last_scrub.get_or_insert_with(Instant::now);
        let due = last.elapsed() >= Duration::from_secs(rec.cfg.scrub_interval_secs);
        if due {
            st.last_scrub = Some(Instant::now());
        }
        due
    };
    for slot in ctx.backends.slots().to_vec() {
        if slot.engine().is_none() {
            continue;
        }
        let id = slot.cfg.id;
        let base = JobSpec {
            kind: JobKind::Merge,
            backend: Some(id),
            since: Time::default(),
            dry_run: false,
            resume: false,
            verify: false,
            on_demand: false,
        };
        if rec.state.lock().merged.get(&id) != Some(&fp) {
            match run_job(ctx, &base, None).await {
                Ok(r) if r.iter().all(|p| p.errors == 0) => {
                    rec.state.lock().merged.insert(id, fp);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(backend = id, errno = e, "background merge failed"),
            }
        }
        let dc = JobSpec {
            kind: JobKind::Dc,
            verify,
            ..base
        };
        if let Err(e) = run_job(ctx, &dc, None).await {
            tracing::warn!(backend = id, errno = e, "background dc failed");
        }
    }
    rec.counters
        .last_round_ms
        .store(started.elapsed().as_millis() as u64, Relaxed);
}
