//! The model test: random operations against the blob backend and a `BTreeMap` model, with
//! random crash points on the simulated device (dropped, torn and bit-flipped unsynced
//! writes, power lost in the middle of an operation).
//!
//! What it proves:
//! - without a crash, every read returns exactly the model's value, and iteration and the
//!   record count agree with it;
//! - after a crash and recovery, every key holds a value it may hold: under `sync = 0` the
//!   last acknowledged one (or the one in flight when power went); under `sync = -1` one
//!   acknowledged since the last successful `sync()` (or in flight);
//! - nothing corrupt is ever returned: a read either returns one of those values or (only
//!   with in-place overwrite on, for a key whose rewrite was torn) fails with EILSEQ.
//!
//! Failing seeds are printed; rerun one with `APSIS_MODEL_SEED=<seed>`.

use apsis_storage::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const KEYS: u32 = 24;

#[derive(Clone, Copy, Debug)]
struct Setup {
    sync: i64,
    buffer: usize,
    in_place: bool,
}

/// What the model knows about one key.
#[derive(Clone, Debug)]
struct KeyState {
    /// The value a read must return now.
    cur: Option<Vec<u8>>,
    /// Values a read may return after a crash.
    allowed: Vec<Option<Vec<u8>>>,
    /// An in-place rewrite of this key may have been torn by the next crash.
    may_tear: bool,
    /// Every value the key ever had (or was being given). A torn in-place rewrite makes
    /// recovery fall back to an older record of the key, which may be any of these.
    history: Vec<Option<Vec<u8>>>,
}

impl KeyState {
    fn new() -> Self {
        KeyState {
            cur: None,
            allowed: vec![None],
            may_tear: false,
            history: vec![None],
        }
    }
}

struct Run {
    setup: Setup,
    rng: fastrand::Rng,
    dir: SimDir,
    cfg: BlobConfig,
    backend: Option<BlobBackend>,
    keys: BTreeMap<u32, KeyState>,
    clock: u64,
    seed: u64,
    crashes: u32,
    op: &'static str,
}

fn key(i: u32) -> Key {
    Key::from_name(b"model", format!("key-{i}").as_bytes())
}

fn value(rng: &mut fastrand::Rng, tag: u64) -> Vec<u8> {
    let len = match rng.u32(0..20) {
        0 => 0,
        1 => rng.usize(60_000..140_000), // spans several 64 KiB checksum chunks
        _ => rng.usize(1..3000),
    };
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    // The first bytes tell versions apart even when lengths match.
    for (i, b) in tag.to_le_bytes().iter().enumerate() {
        if i < v.len() {
            v[i] = *b;
        }
    }
    v
}

impl Run {
    fn new(setup: Setup, seed: u64) -> Run {
        let cfg = BlobConfig {
            sync: setup.sync,
            write_buffer_bytes: setup.buffer,
            overwrite_in_place: setup.in_place,
            blob_size: 256 << 10,
            background: false,
            defrag_rate_bytes: 0,
            // Every restart loads the index on 1, 2 or 3 threads (key ranges split).
            load_threads: 1 + (seed % 3) as usize,
            ..Default::default()
        };
        let dir = SimDir::new();
        let backend = BlobBackend::open(Arc::new(dir.clone()), cfg.clone())
            .expect("open")
            .0;
        Run {
            setup,
            rng: fastrand::Rng::with_seed(seed),
            dir,
            cfg,
            backend: Some(backend),
            keys: (0..KEYS).map(|i| (i, KeyState::new())).collect(),
            clock: 1,
            seed,
            crashes: 0,
            op: "",
        }
    }

    fn b(&self) -> &BlobBackend {
        self.backend.as_ref().expect("backend")
    }

    fn ts(&mut self) -> Timestamp {
        self.clock += 1;
        Timestamp::new(self.clock, 0)
    }

    /// Records the outcome of a mutation of key `k` whose result would be `new`.
    fn settle(&mut self, k: u32, new: Option<Vec<u8>>, acked: bool, in_place_possible: bool) {
        if std::env::var_os("APSIS_MODEL_TRACE").is_some() {
            eprintln!(
                "t={} {} key {k} -> {:?} acked={acked}",
                self.clock,
                self.op,
                new.as_ref().map(|v| v.len())
            );
        }
        let durable = self.setup.sync == 0;
        let st = self.keys.get_mut(&k).expect("key");
        if in_place_possible && self.setup.in_place {
            st.may_tear = st.may_tear || !acked || !durable;
        }
        if !st.history.contains(&new) {
            st.history.push(new.clone());
        }
        if acked {
            st.cur = new.clone();
            if durable {
                st.allowed = vec![new];
                if !self.setup.in_place {
                    st.may_tear = false;
                }
            } else {
                st.allowed.push(new);
            }
        } else {
            // Failed in the middle: it may or may not have reached the disk.
            st.allowed.push(new);
        }
    }

    /// One random mutation. Returns whether it was acknowledged.
    fn mutate(&mut self) -> bool {
        let k = self.rng.u32(0..KEYS);
        let id = key(k);
        let cur = self.keys[&k].cur.clone();
        let ts = self.ts();
        let tag = self.clock;
        let b = self.backend.as_ref().expect("backend");
        match self.rng.u32(0..10) {
            0..=3 => {
                self.op = "put";
                let v = value(&mut self.rng, tag);
                let r = b.write(
                    &id,
                    &WriteRequest {
                        data: &v,
                        timestamp: ts,
                        ..Default::default()
                    },
                );
                let ok = r.is_ok();
                self.settle(k, Some(v), ok, true);
                ok
            }
            4 => {
                self.op = "patch";
                let old = cur.clone().unwrap_or_default();
                let off = self.rng.usize(0..=old.len() + 10);
                let mut patch = vec![0u8; self.rng.usize(1..200)];
                self.rng.fill(&mut patch);
                // Offset 0 is a whole write (Elliptics: a write replaces the object unless
                // it has an offset).
                let mut new = if off == 0 { Vec::new() } else { old };
                if new.len() < off + patch.len() {
                    new.resize(off + patch.len(), 0);
                }
                new[off..off + patch.len()].copy_from_slice(&patch);
                let r = b.write(
                    &id,
                    &WriteRequest {
                        data: &patch,
                        offset: off as u64,
                        timestamp: ts,
                        ..Default::default()
                    },
                );
                let ok = r.is_ok();
                self.settle(k, Some(new), ok, true);
                ok
            }
            5 => {
                self.op = "append";
                let mut tail = vec![0u8; self.rng.usize(1..500)];
                self.rng.fill(&mut tail);
                let mut new = cur.clone().unwrap_or_default();
                new.extend_from_slice(&tail);
                let r = b.write(
                    &id,
                    &WriteRequest {
                        data: &tail,
                        append: true,
                        timestamp: ts,
                        ..Default::default()
                    },
                );
                let ok = r.is_ok();
                self.settle(k, Some(new), ok, true);
                ok
            }
            6 => {
                self.op = "remove";
                let r = b.remove(
                    &id,
                    &RemoveRequest {
                        timestamp: ts,
                        always_record: false,
                        ..Default::default()
                    },
                );
                match r {
                    Ok(_) => {
                        self.settle(k, None, true, false);
                        true
                    }
                    Err(StorageError::NotFound) if cur.is_none() => true,
                    Err(e) => {
                        assert!(cur.is_some() || !is_enoent(&e), "remove: {e}");
                        self.settle(k, None, false, false);
                        false
                    }
                }
            }
            7 | 8 => {
                self.op = "prepare";
                // PREPARE, PLAIN_WRITE pieces, COMMIT (sometimes to a smaller final size).
                let v = value(&mut self.rng, tag);
                let reserve = v.len() as u64 + self.rng.u64(0..4096);
                let pieces = 1 + self.rng.usize(0..4);
                let step = v.len().div_ceil(pieces).max(1);
                let mut res = b.write(
                    &id,
                    &WriteRequest {
                        data: &v[..step.min(v.len())],
                        prepare: Some(reserve),
                        timestamp: ts,
                        ..Default::default()
                    },
                );
                let mut at = step.min(v.len());
                while res.is_ok() && at < v.len() {
                    let end = (at + step).min(v.len());
                    res = b.write(
                        &id,
                        &WriteRequest {
                            data: &v[at..end],
                            offset: at as u64,
                            plain: true,
                            timestamp: ts,
                            ..Default::default()
                        },
                    );
                    at = end;
                }
                let commit_now = self.rng.u32(0..8) != 0;
                if res.is_ok() && commit_now {
                    res = b.write(
                        &id,
                        &WriteRequest {
                            data: &[],
                            commit: Some(v.len() as u64),
                            timestamp: ts,
                            ..Default::default()
                        },
                    );
                }
                let ok = res.is_ok();
                if std::env::var_os("APSIS_MODEL_TRACE").is_some() {
                    eprintln!(
                        "t={} prepare key {k}: {} bytes reserve {reserve} commit={commit_now} -> {:?}",
                        self.clock,
                        v.len(),
                        res.as_ref()
                            .map(|i| (i.size, i.offset))
                            .map_err(|e| e.to_string())
                    );
                }
                if commit_now || !ok {
                    // A failed sequence may have committed (the COMMIT reached the disk).
                    self.settle(k, Some(v), ok && commit_now, false);
                }
                ok
            }
            _ => {
                self.op = "empty";
                let r = b.write(
                    &id,
                    &WriteRequest {
                        data: b"",
                        timestamp: ts,
                        ..Default::default()
                    },
                );
                let ok = r.is_ok();
                self.settle(k, Some(Vec::new()), ok, true);
                ok
            }
        }
    }

    fn read(&self, k: u32) -> Result<Option<Vec<u8>>, StorageError> {
        match self.b().read(&key(k), &ReadRequest::default()) {
            Ok(r) => Ok(Some(r.data)),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Without a crash, the backend agrees with the model exactly.
    fn check_exact(&self, when: &str) {
        let mut live = 0;
        for (&k, st) in &self.keys {
            let got = self
                .read(k)
                .unwrap_or_else(|e| panic!("seed {} {when}: key {k} read fails: {e}", self.seed));
            if got != st.cur && std::env::var_os("APSIS_MODEL_TRACE").is_some() {
                for j in 0..KEYS {
                    if let Ok(i) = self.b().lookup(&key(j), false) {
                        eprintln!(
                            "key {j}: base {} data at {} size {} capacity {}",
                            i.base, i.offset, i.size, i.capacity
                        );
                    }
                }
            }
            assert!(
                got == st.cur,
                "seed {} {when}: key {k} reads {:?} bytes, model has {:?}",
                self.seed,
                got.as_ref().map(|v| v.len()),
                st.cur.as_ref().map(|v| v.len())
            );
            live += st.cur.is_some() as u64;
        }
        // Iteration sees exactly the live keys, with their data.
        let mut seen = BTreeMap::new();
        let mut cursor = None;
        loop {
            let batch = self
                .b()
                .iterate(
                    &IterRequest {
                        with_data: true,
                        batch_records: 7,
                        ..Default::default()
                    },
                    cursor.as_ref(),
                )
                .expect("iterate");
            for it in batch.items {
                assert!(
                    !it.corrupt,
                    "seed {} {when}: iterator reports corruption",
                    self.seed
                );
                assert!(
                    seen.insert(it.info.key, it.data.unwrap_or_default())
                        .is_none(),
                    "seed {} {when}: a key iterated twice",
                    self.seed
                );
            }
            match batch.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let expected: BTreeMap<Key, Vec<u8>> = self
            .keys
            .iter()
            .filter_map(|(&k, st)| st.cur.clone().map(|v| (key(k), v)))
            .collect();
        assert!(
            seen == expected,
            "seed {} {when}: iteration disagrees with the model",
            self.seed
        );
        if self.b().stats().records != live && std::env::var_os("APSIS_MODEL_TRACE").is_some() {
            for b in self.b().stats().bases {
                eprintln!("base {b:?}");
            }
            for j in 0..KEYS {
                if let Ok(i) = self.b().lookup(&key(j), false) {
                    eprintln!(
                        "key {j}: base {} data at {} size {}",
                        i.base, i.offset, i.size
                    );
                }
            }
        }
        assert_eq!(
            self.b().stats().records,
            live,
            "seed {} {when}: record count",
            self.seed
        );
    }

    /// Power fails now (possibly `writes_left` writes into the next operation), the process
    /// dies, unsynced writes are dropped, torn or bit-flipped, and the backend reopens.
    fn crash_and_recover(&mut self, mid_op: bool) {
        if mid_op {
            let n = self.rng.u64(0..6);
            self.dir.lose_power_after_writes(n);
            self.mutate();
        }
        self.dir.power_off();
        drop(self.backend.take());
        let mut r = self.rng.clone();
        self.dir.crash(&mut |n| r.u64(0..n), true);
        self.rng = r;
        self.crashes += 1;
        let (b, _report) = BlobBackend::open(Arc::new(self.dir.clone()), self.cfg.clone())
            .unwrap_or_else(|e| panic!("seed {}: reopen after crash fails: {e}", self.seed));
        self.backend = Some(b);
        for k in 0..KEYS {
            let st = self.keys[&k].clone();
            let mut torn = false;
            let got = match self.read(k) {
                Ok(v) => v,
                Err(StorageError::Corrupt(msg)) if st.may_tear => {
                    // A torn in-place rewrite: refused, never returned. Clear it so the
                    // rest of the run goes on.
                    let _ = msg;
                    self.b()
                        .remove(
                            &key(k),
                            &RemoveRequest {
                                timestamp: Timestamp::new(self.clock + 1, 0),
                                always_record: true,
                                ..Default::default()
                            },
                        )
                        .expect("remove a torn key");
                    torn = true;
                    None
                }
                Err(e) => panic!(
                    "seed {} crash {}: key {k} unreadable after recovery: {e}",
                    self.seed, self.crashes
                ),
            };
            assert!(
                st.allowed.contains(&got) || (st.may_tear && st.history.contains(&got)),
                "seed {} crash {} ({:?}): key {k} recovered {:?} bytes; allowed lengths {:?}",
                self.seed,
                self.crashes,
                self.setup,
                got.as_ref().map(|v| v.len()),
                st.allowed
                    .iter()
                    .map(|v| v.as_ref().map(|v| v.len()))
                    .collect::<Vec<_>>()
            );
            let st = self.keys.get_mut(&k).expect("key");
            st.cur = got.clone();
            st.allowed = vec![got];
            // The tombstone over a torn record is not durable under `sync != 0`: a crash may
            // lose it and show the torn record again.
            st.may_tear = torn && self.setup.sync != 0;
        }
        self.check_exact("after recovery");
    }

    fn run(&mut self, steps: u32) {
        for step in 0..steps {
            let what = self.rng.u32(0..100);
            if let Some(dk) = std::env::var("APSIS_MODEL_DEBUG_KEY")
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
            {
                eprintln!(
                    "step {step} key {dk}: {:?}",
                    self.b()
                        .lookup(&key(dk), false)
                        .map(|i| (i.base, i.offset, i.size, i.capacity))
                );
                let all = self
                    .b()
                    .iterate(
                        &IterRequest {
                            include_removed: true,
                            include_uncommitted: true,
                            batch_records: 100000,
                            ..Default::default()
                        },
                        None,
                    )
                    .unwrap();
                for it in all.items.iter().filter(|it| it.info.key == key(dk)) {
                    eprintln!(
                        "   iter: base {} off {} flags {:#x} size {} corrupt {}",
                        it.info.base,
                        it.info.offset,
                        it.info.record_flags,
                        it.info.size,
                        it.corrupt
                    );
                }
            }
            if std::env::var_os("APSIS_MODEL_TRACE").is_some() && what < 12 {
                eprintln!("step {step}: event {what}");
            }
            match what {
                0 | 1 => self.crash_and_recover(false),
                2 | 3 => self.crash_and_recover(true),
                4 => {
                    // A clean restart loses nothing.
                    drop(self.backend.take());
                    let (b, report) =
                        BlobBackend::open(Arc::new(self.dir.clone()), self.cfg.clone())
                            .expect("reopen");
                    // Damage left by an earlier crash stays skipped; none may be new.
                    assert!(
                        self.crashes > 0
                            || (report.damaged_records, report.truncated_bytes) == (0, 0),
                        "seed {}: a clean restart found damage: {report:?}",
                        self.seed
                    );
                    self.backend = Some(b);
                    for st in self.keys.values_mut() {
                        st.allowed = vec![st.cur.clone()];
                        st.may_tear = false;
                    }
                    self.check_exact("after a clean restart");
                }
                5 => {
                    self.b().sync().expect("sync");
                    for st in self.keys.values_mut() {
                        st.allowed = vec![st.cur.clone()];
                        st.may_tear = false;
                    }
                }
                6 => self.b().maintenance().expect("maintenance"),
                7 => {
                    self.b().defrag_with_threshold(0.0).expect("defrag");
                    self.check_exact("after defrag");
                }
                8..=11 => self.check_exact(&format!("at step {step}")),
                _ => {
                    assert!(
                        self.mutate(),
                        "seed {}: a mutation failed with power on",
                        self.seed
                    );
                    if std::env::var_os("APSIS_MODEL_PARANOID").is_some() {
                        self.check_exact(&format!("after the mutation at step {step}"));
                    }
                }
            }
        }
        self.check_exact("at the end");
    }
}

fn is_enoent(e: &StorageError) -> bool {
    matches!(e, StorageError::NotFound)
}

fn seeds(default_count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("APSIS_MODEL_SEED") {
        return vec![s.parse().expect("APSIS_MODEL_SEED is a number")];
    }
    let count = std::env::var("APSIS_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_count);
    let base = fastrand::u64(..);
    (0..count).map(|i| base.wrapping_add(i)).collect()
}

fn run_setup(setup: Setup) {
    for seed in seeds(12) {
        let r = std::panic::catch_unwind(|| {
            let mut run = Run::new(setup, seed);
            run.run(300);
            run.crashes
        });
        if let Err(e) = r {
            eprintln!("failing seed: APSIS_MODEL_SEED={seed} ({setup:?})");
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn model_sync0_buffered() {
    run_setup(Setup {
        sync: 0,
        buffer: 1 << 20,
        in_place: false,
    });
}

#[test]
fn model_sync0_unbuffered() {
    run_setup(Setup {
        sync: 0,
        buffer: 0,
        in_place: false,
    });
}

#[test]
fn model_no_sync_buffered() {
    run_setup(Setup {
        sync: -1,
        buffer: 64 << 10,
        in_place: false,
    });
}

#[test]
fn model_sync0_in_place() {
    run_setup(Setup {
        sync: 0,
        buffer: 1 << 20,
        in_place: true,
    });
}

#[test]
fn model_no_sync_in_place() {
    run_setup(Setup {
        sync: -1,
        buffer: 0,
        in_place: true,
    });
}
