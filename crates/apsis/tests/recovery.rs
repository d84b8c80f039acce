//! Recovery tests: real clusters (apsis-testkit), a fault, then recovery — background or
//! started with `apsis recovery` — and a comparison of every key in every group: each group
//! must hold the newest copy (same data and timestamp), no acknowledged write may be lost and
//! no deleted key may come back.

use apsis_client::{Checker, Client, Session};
use apsis_proto::{cflags, Time};
use apsis_testkit::process::http_get;
use apsis_testkit::{corrupt_copy, Cluster, ClusterSpec, Net};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_apsis");

/// Background recovery every second, unthrottled, small chunks (so chunking is exercised).
const AUTO: &str =
    "auto = true\ninterval_secs = 1\nrate_keys = 0\nrate_bytes = \"0\"\nchunk_keys = 64";

fn spec(nodes: Vec<Vec<u32>>, recovery: &str) -> ClusterSpec {
    ClusterSpec {
        recovery: recovery.into(),
        ..ClusterSpec::new(nodes, Net::Loopback)
    }
}

fn session(c: &Client, groups: Vec<u32>) -> Session {
    let mut s = c.session(groups);
    s.checker = Checker::All;
    s.timeout = Duration::from_secs(2);
    s
}

/// What group `g` holds for each key: read at the owner only (DIRECT: no forwarding, no
/// previous-owner fallback), without read-repair, so divergence is seen as it is.
async fn snapshot(c: &Client, g: u32, keys: &[String]) -> Vec<Option<(Time, Vec<u8>)>> {
    let mut s = c.session(vec![g]);
    s.read_repair = false;
    s.cflags = cflags::DIRECT;
    s.timeout = Duration::from_secs(2);
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        out.push(match s.read(k.as_bytes(), 0, 0).await {
            Ok(r) => Some((r.io.timestamp, r.data.to_vec())),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("group {g} key {k}: {e}"),
        });
    }
    out
}

/// Waits until every group holds exactly `expect` (value or absence) for every key.
async fn wait_converged(
    c: &Client,
    groups: &[u32],
    keys: &[String],
    expect: &HashMap<String, Option<Vec<u8>>>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let mut bad = Vec::new();
        let mut ts: HashMap<&str, Time> = HashMap::new();
        for &g in groups {
            for (k, got) in keys.iter().zip(snapshot(c, g, keys).await) {
                let want = &expect[k];
                let data = got.as_ref().map(|x| &x.1);
                if data != want.as_ref() {
                    let show = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
                    bad.push(match &got {
                        Some((t, v)) => format!(
                            "group {g} {k}: {:?} written at {t:?}, want {:?}",
                            show(v),
                            want.as_deref().map(show)
                        ),
                        None => format!("group {g} {k}: missing"),
                    });
                } else if let Some((t, _)) = got {
                    // Same copy everywhere: the timestamps agree too.
                    if *ts.entry(k).or_insert(t) != t {
                        bad.push(format!("group {g} {k}: timestamp differs"));
                    }
                }
            }
        }
        if bad.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not converged after {within:?}: {} differences, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn recovery_stats(s: &Session, addr: std::net::SocketAddr) -> serde_json::Value {
    s.monitor_stat(addr, apsis_proto::MonitorStatRequest::STATS)
        .await
        .expect("monitor")["recovery"]
        .clone()
}

/// How many records (removed ones too) a node's backends hold.
async fn records(s: &Session, addr: std::net::SocketAddr) -> u64 {
    let v = s
        .monitor_stat(addr, apsis_proto::MonitorStatRequest::BACKEND)
        .await
        .expect("monitor");
    let backends = v["backends"].as_object().expect("backends");
    backends
        .values()
        .map(|b| {
            b["backend"]["summary_stats"]["records_total"]
                .as_u64()
                .expect("records_total")
        })
        .sum()
}

/// Runs `apsis ARGS -r REMOTE`; the command must succeed. Returns what it printed.
fn cli(remote: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["-r", remote])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Writes every key to every group, then removes every tenth: the expected final state.
async fn populate(s: &Session, keys: &[String]) -> HashMap<String, Option<Vec<u8>>> {
    let mut expect = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let v = format!("{k}={}", "v".repeat(200)).into_bytes();
        s.write(k.as_bytes(), &v).await.expect("write");
        expect.insert(k.clone(), Some(v));
        if i % 10 == 0 {
            s.remove(k.as_bytes()).await.expect("remove");
            expect.insert(k.clone(), None);
        }
    }
    expect
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_refilled_and_deletes_stay_deleted() {
    let mut c = Cluster::start(BIN, spec(vec![vec![1], vec![2], vec![3]], AUTO)).unwrap();
    let client = c.client().await;
    let s = session(&client, vec![1, 2, 3]);
    let ks = keys("wipe", 300);
    let mut expect = populate(&s, &ks).await;
    c.kill(2);
    c.wipe(2).unwrap();
    // While it is away: more writes and deletes reach groups 1 and 2 only.
    let mut s2 = s.clone();
    s2.checker = Checker::AtLeastOne;
    for k in ks.iter().skip(1).step_by(7) {
        let v = format!("{k}=second").into_bytes();
        s2.write(k.as_bytes(), &v).await.expect("write while down");
        expect.insert(k.clone(), Some(v));
    }
    for k in ks.iter().skip(2).step_by(9) {
        let _ = s2.remove(k.as_bytes()).await;
        expect.insert(k.clone(), None);
    }
    c.restart(2).unwrap();
    let client = c.client().await;
    wait_converged(&client, &[1, 2, 3], &ks, &expect, Duration::from_secs(40)).await;
    let st = recovery_stats(&session(&client, vec![1]), c.nodes[0].addr).await;
    assert!(st["rounds"].as_u64().unwrap() > 0, "{st}");
    // Node 0 (the smaller address of its pairs, or node 1) copied the missing keys.
    let copied: u64 = {
        let mut n = 0;
        for node in &c.nodes {
            n += recovery_stats(&session(&client, vec![1]), node.addr).await["copied_keys"]
                .as_u64()
                .unwrap();
        }
        n
    };
    assert!(copied >= 250, "copied {copied} keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_kill_converge_after_restart() {
    let mut c = Cluster::start(BIN, spec(vec![vec![1], vec![2], vec![3]], AUTO)).unwrap();
    let client = c.client().await;
    let s = session(&client, vec![1, 2, 3]);
    let ks = keys("kill", 120);
    let mut expect = populate(&s, &ks).await;
    let mut q = s.clone();
    q.checker = Checker::Quorum;
    // Load while node 1 dies: every quorum write acknowledged must survive.
    let load = {
        let q = q.clone();
        let ks = ks.clone();
        tokio::spawn(async move {
            let mut acked = HashMap::new();
            for round in 0..6 {
                for k in ks.iter().skip(round % 3).step_by(3) {
                    let v = format!("{k}=r{round}").into_bytes();
                    match q.write(k.as_bytes(), &v).await {
                        Ok(_) => {
                            acked.insert(k.clone(), Some(v));
                        }
                        // Unacknowledged: either value may win; recovery must still make
                        // the groups agree, checked below against what they hold.
                        Err(_) => {
                            acked.remove(k);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.kill(1);
    let acked = load.await.unwrap();
    c.restart(1).unwrap();
    for (k, v) in acked {
        expect.insert(k, v);
    }
    let client = c.client().await;
    wait_converged(&client, &[1, 2, 3], &ks, &expect, Duration::from_secs(40)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_hands_keys_to_a_new_node_with_dry_run_first() {
    // Background recovery off: the operator runs merge with the CLI.
    let mut c = Cluster::start(BIN, spec(vec![vec![1]], "auto = false")).unwrap();
    let client = c.client().await;
    let s = session(&client, vec![1]);
    let ks = keys("merge", 300);
    let expect = populate(&s, &ks).await;
    c.add_node(vec![1]).unwrap();
    let client = c.client().await;
    let remote = c.nodes[0].addr.to_string();
    let cli = |args: &[&str]| cli(&remote, &[args, &["-g", "1"]].concat());
    let dry = cli(&["recovery", "merge", "--node", &remote, "--dry-run"]);
    assert!(dry.contains("would copy"), "{dry}");
    let would: u64 = dry
        .split("hand off ")
        .nth(1)
        .and_then(|x| x.trim().parse().ok())
        .unwrap_or_else(|| panic!("{dry}"));
    assert!(would > 0, "the new node owns part of the ring: {dry}");
    // Nothing moved yet: the new node holds no record. (Asked of the node itself: reading its
    // keys through the route table proved nothing when a loaded machine made the client drop
    // the new node's routes for a moment and every read went to node 0.)
    assert_eq!(records(&s, c.nodes[1].addr).await, 0);
    let out = cli(&["recovery", "merge"]);
    assert!(out.contains("handed off"), "{out}");
    // Every key is at its owner now, and node 0 keeps none of the new node's keys.
    wait_converged(&client, &[1], &ks, &expect, Duration::from_secs(5)).await;
    let st = recovery_stats(&s, c.nodes[0].addr).await;
    assert_eq!(st["handed_off"].as_u64(), Some(would), "{st}");
    assert!(records(&s, c.nodes[1].addr).await > 0);
    // A second run finds nothing to do.
    let again = cli(&["recovery", "merge", "--json"]);
    assert!(again.contains("\"handed_off\":0"), "{again}");
    // dc with --since in the future compares nothing.
    let since = cli(&["recovery", "dc", "--since", "4102444800"]);
    assert!(since.contains("copied 0 keys"), "{since}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_replica_is_repaired_by_verify_and_prepared_leftovers_go() {
    let cluster_spec = ClusterSpec {
        sync: 0,
        ..spec(
            vec![vec![1], vec![2]],
            "auto = false\nprepare_timeout_secs = 1",
        )
    };
    let c = Cluster::start(BIN, cluster_spec).unwrap();
    let client = c.client().await;
    let s = session(&client, vec![1, 2]);
    let ks = keys("corrupt", 20);
    let expect = populate(&s, &ks).await;
    let g1 = session(&client, vec![1]);
    corrupt_copy(&g1, ks[3].as_bytes()).await.unwrap();
    // An abandoned upload: prepared, never committed.
    s.write_prepare(b"abandoned", b"part", 0, 4096)
        .await
        .expect("prepare");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut js = client.session(vec![1]);
    js.timeout = Duration::from_secs(30);
    let req = apsis_proto::recovery::JobRequest {
        kind: apsis_proto::recovery::JobKind::Dc,
        flags: apsis_proto::recovery::job_flags::VERIFY,
        since: Time::default(),
    };
    let mut reports = Vec::new();
    let mut stream = js.recovery_job(c.nodes[0].addr, None, &req).await.unwrap();
    while let Some(p) = stream.next().await {
        reports.push(p.unwrap());
    }
    let last = reports.last().expect("a final report");
    assert_eq!(last["done"], true);
    assert_eq!(last["repaired"].as_u64(), Some(1), "{last}");
    assert_eq!(last["prepared_dropped"].as_u64(), Some(1), "{last}");
    assert_eq!(last["errors"].as_u64(), Some(0), "{last}");
    wait_converged(&client, &[1, 2], &ks, &expect, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_converges_with_writes_from_both_sides() {
    let spec = ClusterSpec {
        recovery: AUTO.into(),
        ..ClusterSpec::new(vec![vec![1], vec![2], vec![3]], Net::Namespaces)
    };
    let Some(c) = Cluster::start_in_namespaces(BIN, spec) else {
        return;
    };
    let client = c.client().await;
    c.wait_mesh(&client, Duration::from_secs(20)).await;
    let s = session(&client, vec![1, 2, 3]);
    let ks = keys("part", 60);
    let mut expect = populate(&s, &ks).await;
    let t0 = Instant::now();
    c.partition(2).unwrap();
    // The majority side: quorum writes and deletes that node 2 misses.
    let mut q = s.clone();
    q.checker = Checker::Quorum;
    let deadline = Instant::now() + Duration::from_secs(15);
    for k in ks.iter().skip(1).step_by(4) {
        let v = format!("{k}=majority").into_bytes();
        loop {
            // Until failure detection drops node 2, a write may time out on it.
            if q.write(k.as_bytes(), &v).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "quorum writes failed");
        }
        expect.insert(k.clone(), Some(v));
    }
    eprintln!("majority writes done at {:?}", t0.elapsed());
    // The minority side: a client in node 2's namespace writes to group 3 through node 2,
    // later than the majority's writes, so its keys win where both sides wrote.
    let ns = c.netns(2).unwrap();
    // One CLI process per key, all at once: each first tries the nodes node 2 still lists.
    let mut children = Vec::new();
    for (i, k) in ks.iter().skip(1).step_by(8).enumerate() {
        let v = format!("{k}=minority-{i}");
        let mut ch = Command::new("ip")
            .args(["netns", "exec", &ns, BIN, "write", k, "-"])
            .args([
                "-r",
                &c.nodes[2].addr.to_string(),
                "-g",
                "3",
                "--timeout",
                "2",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(v.as_bytes()).unwrap();
        }
        children.push(ch);
        expect.insert(k.clone(), Some(v.into_bytes()));
    }
    let both = children.len();
    for ch in children {
        let out = ch.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "minority write: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(both > 0);
    eprintln!("minority writes done at {:?}", t0.elapsed());
    // The majority's first write to node 2 is still in the client's socket queue, unsent;
    // the client gave up on that connection, so it must not arrive now, over the minority's
    // later write to the same key (`Conn::kill` resets instead of closing).
    c.heal(2).unwrap();
    let client = c.client().await;
    eprintln!("healed, client ready at {:?}", t0.elapsed());
    wait_converged(&client, &[1, 2, 3], &ks, &expect, Duration::from_secs(60)).await;
    eprintln!("converged at {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_job_resumes_where_it_stopped() {
    // Slow copies and small chunks, so the job is interrupted part way.
    let c = Cluster::start(
        BIN,
        spec(
            vec![vec![1], vec![2]],
            "auto = false\nrate_keys = 300\nchunk_keys = 8",
        ),
    )
    .unwrap();
    let client = c.client().await;
    let ks = keys("resume", 300);
    let g1 = session(&client, vec![1]);
    let mut expect = HashMap::new();
    for k in &ks {
        g1.write(k.as_bytes(), k.as_bytes()).await.unwrap();
        expect.insert(k.clone(), Some(k.as_bytes().to_vec()));
    }
    let node = c.nodes[0].addr.to_string();
    let remote = ["-r", node.as_str()];
    let final_report = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["recovery", "dc", "--node", &node, "--json"])
            .args(args)
            .args(remote)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .expect("reports");
        last["progress"].clone()
    };
    let full = final_report(&["--dry-run"]);
    assert_eq!(full["would_copy"].as_u64(), Some(300), "{full}");
    // Start the real job and interrupt it (the operator's Ctrl-C: the connection goes).
    let mut child = Command::new(BIN)
        .args(["recovery", "dc", "--node", &node])
        .args(remote)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = c.nodes[0].dir.join("b1").join("recovery-dc.state");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !state.exists() {
        assert!(Instant::now() < deadline, "no resume state written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().unwrap();
    let _ = child.wait();
    // The node stops the job at its next report; the state file stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(state.exists(), "an interrupted job keeps its position");
    let resumed = final_report(&["--resume"]);
    let done_before = 300 - resumed["copied_keys"].as_u64().unwrap();
    assert!(
        resumed["buckets"].as_u64() < full["buckets"].as_u64(),
        "the resumed job compared only what was left: {resumed} vs {full}"
    );
    assert!(done_before > 0, "{resumed}");
    assert!(!state.exists(), "a finished job removes its state");
    wait_converged(&client, &[1, 2], &ks, &expect, Duration::from_secs(5)).await;
}

/// Starts `spec`, whose `faulty_disks` need root and FUSE (see [`Cluster::start_as_root`]).
fn start_with_faulty_disks(spec: ClusterSpec) -> Option<Cluster> {
    Cluster::start_as_root(BIN, spec, "faulty disks (FUSE)")
}

/// `(group, errno)` of every group a write did not reach (0 = it did).
fn group_errors(r: &apsis_client::WriteResult) -> Vec<(u32, i32)> {
    r.groups
        .iter()
        .map(|g| (g.group, g.result.as_ref().err().map_or(0, |e| e.errno())))
        .collect()
}

/// A backend's `poisoned` reason from the node's monitor (null while it takes writes).
async fn poisoned(s: &Session, addr: std::net::SocketAddr) -> serde_json::Value {
    let v = s
        .monitor_stat(addr, apsis_proto::MonitorStatRequest::BACKEND)
        .await
        .expect("monitor");
    v["backends"]["1"]["backend"]["global_stats"]["poisoned"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_only_its_group_and_dc_fills_it_once_space_is_freed() {
    // Node 2 (group 3) keeps its backend on a disk that fills up; small bases, so the disk
    // fills across base rotations and record-by-record reservations.
    let Some(c) = start_with_faulty_disks(ClusterSpec {
        faulty_disks: vec![2],
        backend_extra: "blob_size = \"2M\"".into(),
        ..spec(vec![vec![1], vec![2], vec![3]], "auto = false")
    }) else {
        return;
    };
    let client = c.client().await;
    let mut s = session(&client, vec![1, 2, 3]);
    s.checker = Checker::Quorum;
    let value = |k: &str| k.as_bytes().repeat((64 << 10) / k.len());
    let ks = keys("full", 160);
    let mut expect = HashMap::new();
    for k in &ks[..20] {
        let r = s.write(k.as_bytes(), &value(k)).await.unwrap();
        assert_eq!(group_errors(&r), vec![(1, 0), (2, 0), (3, 0)], "{k}");
        expect.insert(k.clone(), Some(value(k)));
    }
    let disk = c.disk(2);
    disk.set_capacity(Some(disk.used_bytes() + (3 << 20)));
    let mut refused = Vec::new();
    for k in &ks[20..] {
        let r = s
            .write(k.as_bytes(), &value(k))
            .await
            .expect("quorum writes go on while one disk is full");
        match group_errors(&r)[..] {
            [(1, 0), (2, 0), (3, 0)] => {}
            [(1, 0), (2, 0), (3, -28)] => refused.push(k.clone()),
            ref other => panic!("{k}: {other:?}"),
        }
        expect.insert(k.clone(), Some(value(k)));
    }
    let took = ks.len() - 20 - refused.len();
    assert!(took >= 20, "the disk took what it had room for: {took}");
    // (Less than the 140 - 48 the 3 MiB leave: the open base's room and the next base's,
    // made ahead, were reserved before the disk filled.)
    assert!(refused.len() >= 30, "then refused: {}", refused.len());
    assert!(disk.injected_errors() > 0);
    // A refused write left nothing behind; what the full disk holds it still serves; and
    // ENOSPC does not fence the backend.
    let g3 = snapshot(&client, 3, &ks).await;
    for (k, got) in ks.iter().zip(&g3) {
        match got {
            None => assert!(refused.contains(k), "{k} lost in group 3"),
            Some((_, d)) => assert_eq!(d, &value(k), "{k}"),
        }
    }
    assert!(poisoned(&s, c.nodes[2].addr).await.is_null());
    // Space is freed: writes reach all three groups again, with no restart or operator step.
    disk.set_capacity(None);
    let r = s.write(b"full-after", b"room again").await.unwrap();
    assert_eq!(group_errors(&r), vec![(1, 0), (2, 0), (3, 0)]);
    // dc copies what group 3 missed.
    let out = cli(&c.nodes[2].addr.to_string(), &["recovery", "dc"]);
    assert!(out.contains("copied"), "{out}");
    wait_converged(&client, &[1, 2, 3], &ks, &expect, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_errors_read_from_another_group_and_a_failed_fsync_fences_the_backend() {
    // Node 0 (group 1) keeps its backend on a disk that fails; every write waits for fsync.
    let Some(c) = start_with_faulty_disks(ClusterSpec {
        faulty_disks: vec![0],
        sync: 0,
        monitor: true,
        ..spec(vec![vec![1], vec![2], vec![3]], "auto = false")
    }) else {
        return;
    };
    let client = c.client().await;
    let mut s = session(&client, vec![1, 2, 3]);
    s.checker = Checker::Quorum;
    let ks = keys("eio", 40);
    let mut expect = HashMap::new();
    for k in &ks[..20] {
        let r = s.write(k.as_bytes(), k.as_bytes()).await.unwrap();
        assert_eq!(group_errors(&r), vec![(1, 0), (2, 0), (3, 0)], "{k}");
        expect.insert(k.clone(), Some(k.as_bytes().to_vec()));
    }
    let disk = c.disk(0);

    // Read errors: group 1 answers EIO (and keeps serving); the session reads the next group.
    disk.fail_reads(true);
    let mut direct = client.session(vec![1]);
    direct.cflags = cflags::DIRECT;
    direct.read_repair = false;
    let e = direct.read(ks[0].as_bytes(), 0, 0).await.unwrap_err();
    assert_eq!(e.errno(), -5, "{e}");
    for k in &ks[..20] {
        let r = s.read(k.as_bytes(), 0, 0).await.expect("read falls back");
        assert_eq!(r.data, k.as_bytes());
        assert_ne!(r.group, 1);
    }
    disk.fail_reads(false);
    let r = direct.read(ks[0].as_bytes(), 0, 0).await.unwrap();
    assert_eq!(r.data, ks[0].as_bytes());

    // A failed fsync: that write fails in group 1 and the backend refuses every later write,
    // even once the disk answers again, since the kernel may have dropped the unsynced pages.
    disk.fail_syncs(true);
    let r = s.write(ks[20].as_bytes(), ks[20].as_bytes()).await.unwrap();
    assert_eq!(group_errors(&r), vec![(1, -5), (2, 0), (3, 0)]);
    expect.insert(ks[20].clone(), Some(ks[20].as_bytes().to_vec()));
    disk.fail_syncs(false);
    for k in &ks[21..30] {
        let r = s.write(k.as_bytes(), k.as_bytes()).await.unwrap();
        assert_eq!(group_errors(&r), vec![(1, -5), (2, 0), (3, 0)], "{k}");
        expect.insert(k.clone(), Some(k.as_bytes().to_vec()));
    }
    let why = poisoned(&s, c.nodes[0].addr).await;
    assert!(why.as_str().is_some_and(|w| w.contains("fsync")), "{why}");
    // The node says it is not ready, and why, to whatever watches its health.
    let ready = |i: usize| http_get(c.nodes[i].monitor.unwrap(), "/health/ready").unwrap();
    let (code, body) = ready(0);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("backend 1 (group 1) is poisoned"), "{body}");
    assert_eq!(ready(1).0, 200);
    // Reads of what was durable before go on from the fenced backend.
    let r = direct.read(ks[5].as_bytes(), 0, 0).await.unwrap();
    assert_eq!(r.data, ks[5].as_bytes());

    // The operator re-opens the backend from what is on disk; writes reach group 1 again.
    let node = c.nodes[0].addr.to_string();
    cli(&node, &["backend", "disable", "1"]);
    cli(&node, &["backend", "enable", "1"]);
    assert!(poisoned(&s, c.nodes[0].addr).await.is_null());
    assert_eq!(ready(0).0, 200, "{}", ready(0).1);
    for k in &ks[30..] {
        let r = s.write(k.as_bytes(), k.as_bytes()).await.unwrap();
        assert_eq!(group_errors(&r), vec![(1, 0), (2, 0), (3, 0)], "{k}");
        expect.insert(k.clone(), Some(k.as_bytes().to_vec()));
    }
    // dc brings group 1 the writes it refused.
    cli(&node, &["recovery", "dc"]);
    wait_converged(&client, &[1, 2, 3], &ks, &expect, Duration::from_secs(10)).await;
}
