//! Cluster tests: real `apsis server` processes started by `apsis-testkit`, faults done to
//! them while a workload runs, and the recorded history checked afterwards.
//!
//! The 3-group layout has 6 nodes, three of which serve backends of two groups:
//! n0 {1,2}, n1 {2,3}, n2 {3,1}, n3 {1}, n4 {2}, n5 {3}. Every group has three backends.

use apsis_client::{Checker, Client, ClientError, Session};
use apsis_proto::{cflags, cmd, errno, Header, IoAttr, MonitorStatRequest};
use apsis_testkit::{corrupt_copy, Cluster, ClusterSpec, History, Kind, Net, Outcome};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_apsis");

fn six_nodes_three_groups(net: Net) -> ClusterSpec {
    ClusterSpec::new(
        vec![
            vec![1, 2],
            vec![2, 3],
            vec![3, 1],
            vec![1],
            vec![2],
            vec![3],
        ],
        net,
    )
}

fn session(c: &Client, groups: Vec<u32>, checker: Checker) -> Session {
    let mut s = c.session(groups);
    s.checker = checker;
    s.timeout = Duration::from_secs(1);
    s
}

/// Workers doing quorum writes, plain reads and newest-copy reads on their own keys until
/// `stop`; every operation goes into `history`. One worker owns each key, so a key's writes
/// are sequential and every value names its write.
fn workload(
    s: Session,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    workers: usize,
    keys_per_worker: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let (s, h, stop) = (s.clone(), history.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // A steady load, not a saturating one: on two cores a saturated box turns
                    // healthy nodes' replies into timeouts, which is another fault.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    seq += 1;
                    let key = format!("w{w}-k{}", seq as usize % keys_per_worker);
                    let k = key.as_bytes();
                    let t = Instant::now();
                    match seq % 3 {
                        0 | 1 => {
                            let v = format!("{key}=v{seq}-{}", "x".repeat(100)).into_bytes();
                            let (o, note) = match s.write(k, &v).await {
                                Ok(w) => (Outcome::Ok(None), groups_note(&w.groups)),
                                Err(e) => (Outcome::Failed(e.to_string()), String::new()),
                            };
                            h.push_noted(k, Kind::Write(v), t, o, note);
                        }
                        _ => {
                            let latest = seq % 2 == 0;
                            let r = if latest {
                                s.read_latest(k).await
                            } else {
                                s.read(k, 0, 0).await
                            };
                            let kind = if latest { Kind::ReadLatest } else { Kind::Read };
                            let note = r
                                .as_ref()
                                .map(|r| format!("from group {}", r.group))
                                .unwrap_or_default();
                            h.push_noted(k, kind, t, outcome(r.map(|r| r.data.to_vec())), note);
                        }
                    }
                }
            })
        })
        .collect()
}

/// Which groups acknowledged a write, and where each went: "g1@127.0.0.1:4001 ok, g2 …".
fn groups_note(g: &[apsis_client::GroupResult<Option<apsis_proto::LookupReply>>]) -> String {
    g.iter()
        .map(|r| match &r.result {
            Ok(Some(l)) => format!("g{}@{} ok", r.group, l.addr.0),
            Ok(None) => format!("g{} ok", r.group),
            Err(e) => format!("g{} {e}", r.group),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn outcome(r: Result<Vec<u8>, ClientError>) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(Some(v)),
        Err(e) if e.is_not_found() => Outcome::NotFound,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// After the faults: reads the newest copy of every key the history touched and checks it.
async fn verify(s: &Session, h: &History) {
    let mut keys: Vec<Vec<u8>> = h.ops().into_iter().map(|o| o.key).collect();
    keys.sort();
    keys.dedup();
    for k in &keys {
        let t = Instant::now();
        let r = s.read_latest(k).await;
        let note = r
            .as_ref()
            .map(|r| format!("final, from group {}", r.group))
            .unwrap_or_default();
        h.push_noted(
            k,
            Kind::ReadLatest,
            t,
            outcome(r.map(|r| r.data.to_vec())),
            note,
        );
    }
    let v = h.check();
    assert!(v.is_empty(), "history violations: {v:#?}");
}

/// Runs the workload through `fault`, which gets the cluster and returns the windows
/// (start, end) in which quorum writes must keep succeeding.
async fn run_with_faults(
    mut cluster: Cluster,
    fault: impl AsyncFnOnce(&mut Cluster) -> Vec<(Instant, Instant)>,
) {
    let client = cluster.client().await;
    cluster.wait_mesh(&client, Duration::from_secs(20)).await;
    let s = session(&client, vec![1, 2, 3], Checker::Quorum);
    let h = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = workload(s.clone(), h.clone(), stop.clone(), 6, 40);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let windows = fault(&mut cluster).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (wok, wfail, rok, rfail) = h.counts();
    eprintln!("writes {wok} ok / {wfail} failed, reads {rok} ok / {rfail} failed");
    assert!(wok > 100 && rok > 50, "the workload ran");
    for (a, b) in windows {
        let (ok, n) = h.writes_between(a, b);
        eprintln!("window {:?}: {ok}/{n} quorum writes acknowledged", b - a);
        assert!(n > 20, "writes were tried in the window");
        assert!(
            ok * 100 >= n * 95,
            "quorum writes kept going during the fault: {ok}/{n}"
        );
    }
    verify(&s, &h).await;
}

/// How long failure detection may take: stall_count timeouts of 1 s, then a 1 s ping.
const DETECT: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_groups_kill_and_restart_a_node_serving_two_groups() {
    let cluster = Cluster::start(BIN, six_nodes_three_groups(Net::Loopback)).unwrap();
    run_with_faults(cluster, async |c: &mut Cluster| {
        c.kill(0);
        // A killed node's connections close at once: no detection delay.
        let a = Instant::now() + Duration::from_millis(300);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let b = Instant::now();
        c.restart(0).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        vec![(a, b), (b + Duration::from_secs(2), Instant::now())]
    })
    .await;
}

/// One fault per cluster: without recovery (the next issue) a node that returned serves the
/// copies it had before it left, so a second fault on another group could leave a key with
/// only stale copies reachable. The history checker would rightly flag that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_groups_pause_a_node_serving_two_groups() {
    let cluster = Cluster::start(BIN, six_nodes_three_groups(Net::Loopback)).unwrap();
    run_with_faults(cluster, async |c: &mut Cluster| {
        // n1 serves groups 2 and 3: its ranges need failure detection (timeouts, then a
        // failed ping) before quorum writes to them succeed again.
        c.pause(1);
        let a = Instant::now();
        tokio::time::sleep(DETECT + Duration::from_secs(3)).await;
        let b = Instant::now();
        c.resume(1);
        tokio::time::sleep(Duration::from_secs(3)).await;
        vec![
            (a + DETECT, b),
            (b + Duration::from_secs(2), Instant::now()),
        ]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_groups_partition_a_node_in_namespaces() {
    let Some(cluster) = Cluster::start_in_namespaces(BIN, six_nodes_three_groups(Net::Namespaces))
    else {
        return;
    };
    run_with_faults(cluster, async |c: &mut Cluster| {
        // n2 serves groups 3 and 1; cut it off from every node and from the client.
        c.partition(2).unwrap();
        let a = Instant::now();
        tokio::time::sleep(DETECT + Duration::from_secs(3)).await;
        let b = Instant::now();
        c.heal(2).unwrap();
        // Healed: the refresh reconnects within a check_timeout or two.
        tokio::time::sleep(Duration::from_secs(3)).await;
        vec![(a + DETECT, b)]
    })
    .await;
}

/// Connections open on the node at `addr` besides the one this asks on.
async fn other_connections(addr: std::net::SocketAddr) -> u64 {
    let c = Client::connect(
        &[addr],
        apsis_client::ClientOptions {
            discover: false,
            check_timeout: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let v = c
        .session(vec![1])
        .monitor_stat(addr, MonitorStatRequest::IO)
        .await
        .unwrap();
    v["io"]["connections"]["open"].as_u64().unwrap() - 1
}

/// Polls [`other_connections`] until it is `want`; the last count seen otherwise.
async fn wait_other_connections(addr: std::net::SocketAddr, want: u64, within: Duration) -> u64 {
    let until = Instant::now() + within;
    loop {
        let n = other_connections(addr).await;
        if n == want || Instant::now() > until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client whose host vanishes (cut off: no FIN, no RST) is dropped by the node's TCP
/// keepalive, instead of holding its connection and a `max_connections` place for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_is_dropped_by_keepalive() {
    let mut spec = ClusterSpec::new(vec![vec![1]], Net::Namespaces);
    // Dropped after 1 s of silence and 2 unanswered probes 1 s apart: 3 s.
    spec.node_extra =
        "keepalive_idle_secs = 1\nkeepalive_interval_secs = 1\nkeepalive_count = 2".into();
    let Some(cluster) = Cluster::start_in_namespaces(BIN, spec) else {
        return;
    };
    let addr = cluster.addrs()[0];
    // A client that connected and went quiet.
    let quiet = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        wait_other_connections(addr, 1, Duration::from_secs(10)).await,
        1,
        "the quiet client is connected"
    );
    // Its replies and probes get no answer while the node is cut off, twice the 3 s limit.
    cluster.partition(0).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.heal(0).unwrap();
    assert_eq!(
        wait_other_connections(addr, 0, Duration::from_secs(10)).await,
        0,
        "the node still holds the connection of a client that vanished"
    );
    drop(quiet);
}

/// The other way round: a client's idle connection to a node that vanished ends by the
/// client's own keepalive, and the node leaves its route table, with no request to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_vanishes_leaves_an_idle_clients_routes() {
    let Some(cluster) =
        Cluster::start_in_namespaces(BIN, ClusterSpec::new(vec![vec![1]], Net::Namespaces))
    else {
        return;
    };
    let addr = cluster.addrs()[0];
    let c = Client::connect(
        &[addr],
        apsis_client::ClientOptions {
            // No refresh: only the connection itself can notice.
            check_timeout: Duration::ZERO,
            keepalive: Some(apsis_client::Keepalive::from_secs(1, 1, 2).unwrap()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(c.nodes(), vec![addr]);
    cluster.partition(0).unwrap();
    let until = Instant::now() + Duration::from_secs(8);
    while !c.nodes().is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.nodes().is_empty(), "the vanished node is still connected");
    assert!(
        c.routes().ranges(1).is_empty(),
        "the vanished node is still routed"
    );
    cluster.heal(0).unwrap();
}

/// A node that receives a request for a key it does not own forwards it to the owner, unless
/// DIRECT is set; a client that knows only one node learns the others from its route list.
/// Every established TCP socket on this host as the kernel reports it (`ss -p --tos`): its
/// local and peer addresses, the pid that holds it, and its type of service.
fn sockets_with_tos() -> Vec<(SocketAddr, SocketAddr, Option<u32>, u32)> {
    let out = std::process::Command::new("ss")
        .args(["-tnpH", "--tos", "state", "established"])
        .output()
        .expect("ss (iproute2; .ci/run installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let tos = f.iter().find_map(|x| x.strip_prefix("tos:"))?;
            let tos = match tos.strip_prefix("0x") {
                Some(h) => u32::from_str_radix(h, 16).ok()?,
                None => tos.parse().ok()?,
            };
            let pid = l
                .split("pid=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse().ok());
            Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?, pid, tos))
        })
        .collect()
}

/// Elliptics' `client_net_prio` and `server_net_prio`: a client's connection carries the
/// clients' type of service on the node's side; a connection a node opens to another node
/// carries the nodes', and so does the accepted end of a node's connection once it joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_carry_the_configured_type_of_service() {
    if std::process::Command::new("ss").arg("-V").output().is_err()
        && std::env::var_os("CI").is_none()
    {
        eprintln!("SKIPPED: needs ss (iproute2)");
        return;
    }
    let cluster = Cluster::start(
        BIN,
        ClusterSpec {
            node_extra: "client_net_prio = 32\nserver_net_prio = 72".into(),
            ..ClusterSpec::new(vec![vec![1], vec![2]], Net::Loopback)
        },
    )
    .unwrap();
    let full = cluster.client().await;
    cluster.wait_mesh(&full, Duration::from_secs(20)).await;
    let (a0, a1) = (cluster.addrs()[0], cluster.addrs()[1]);
    let pids = [cluster.nodes[0].pid(), cluster.nodes[1].pid()];
    let client = std::net::TcpStream::connect(a0).unwrap();
    let mine = client.local_addr().unwrap();
    let t = std::time::Instant::now();
    loop {
        let socks = sockets_with_tos();
        let tos_of =
            |l: SocketAddr, p: SocketAddr| socks.iter().find(|s| (s.0, s.1) == (l, p)).map(|s| s.3);
        // Connections a node opened to another node (the join, the connection back).
        let opened: Vec<_> = socks
            .iter()
            .filter(|s| pids.contains(&s.2) && (s.1 == a0 || s.1 == a1))
            .collect();
        // Node 1's joining connection, at node 0.
        let joined_end = opened
            .iter()
            .find(|s| s.2 == pids[1] && s.1 == a0)
            .and_then(|s| tos_of(a0, s.0));
        let ok = tos_of(a0, mine) == Some(32)
            && opened.len() >= 2
            && opened.iter().all(|s| s.3 == 72)
            && joined_end == Some(72);
        if ok {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "client end {:?}, opened by nodes {opened:?}, joined end {joined_end:?}",
            tos_of(a0, mine)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_forward_what_they_do_not_own() {
    let cluster = Cluster::start(
        BIN,
        ClusterSpec::new(vec![vec![1], vec![1], vec![1]], Net::Loopback),
    )
    .unwrap();
    let full = cluster.client().await;
    cluster.wait_mesh(&full, Duration::from_secs(20)).await;
    // Discovery: one remote is enough.
    let one = Client::connect(&[cluster.addrs()[2]], cluster.client_options())
        .await
        .unwrap();
    assert_eq!(one.nodes(), {
        let mut a = cluster.addrs();
        a.sort();
        a
    });
    let s = session(&full, vec![1], Checker::All);
    s.write(b"forward-me", b"payload").await.unwrap();
    let id = s.id(b"forward-me");
    let owner = full.with_routes(|t| t.owner(1, &id)).unwrap().addr;
    let other = *cluster.addrs().iter().find(|a| **a != owner).unwrap();
    let read_at = |flags: u64| {
        let s = s.clone();
        async move {
            let mut h = Header::new(cmd::READ, cflags::NEED_ACK | flags);
            h.group = 1;
            h.id = id;
            let io = IoAttr {
                id,
                parent: id,
                ..IoAttr::default()
            };
            let mut p = Vec::new();
            io.encode_into(&mut p);
            s.transact(other, &h, &p).await
        }
    };
    let frames = read_at(0).await.expect("forwarded read");
    let f = frames
        .iter()
        .find(|f| f.payload.len() > IoAttr::SIZE)
        .unwrap();
    assert_eq!(&f.payload[IoAttr::SIZE..], b"payload");
    let e = read_at(cflags::DIRECT)
        .await
        .expect_err("DIRECT is served locally");
    assert_eq!(e.errno(), -errno::ENOENT);
    let stat = s.monitor_stat(other, MonitorStatRequest::IO).await.unwrap();
    assert!(stat["io"]["forwarded"].as_u64().unwrap() >= 1, "{stat}");
}

/// Adding a node changes the ring: keys whose owner moved stay readable (the new owner
/// retries a miss on the previous owner) until recovery moves them. (1000 keys: the new
/// node's random share of the ring holds none of them about 1 time in 500.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_a_ring_change() {
    let mut cluster =
        Cluster::start(BIN, ClusterSpec::new(vec![vec![1], vec![1]], Net::Loopback)).unwrap();
    let c = cluster.client().await;
    let s = session(&c, vec![1], Checker::All);
    let keys: Vec<String> = (0..1000).map(|i| format!("ring-{i}")).collect();
    for k in &keys {
        s.write(k.as_bytes(), k.as_bytes()).await.unwrap();
    }
    let before = c.routes();
    let new = cluster.add_node(vec![1]).unwrap();
    let c2 = cluster.client().await;
    let s2 = session(&c2, vec![1], Checker::All);
    let new_addr = cluster.addrs()[new];
    let moved = keys
        .iter()
        .filter(|k| {
            let id = s2.id(k.as_bytes());
            c2.with_routes(|t| t.owner(1, &id)).unwrap().addr == new_addr
                && before.owner(1, &id).unwrap().addr != new_addr
        })
        .count();
    assert!(moved > 0, "the new node took over some keys");
    for k in &keys {
        let r = s2.read(k.as_bytes(), 0, 0).await.unwrap_or_else(|e| {
            panic!("{k} after the ring change: {e}");
        });
        assert_eq!(r.data, k.as_bytes());
    }
    // New writes go to the new owner and are read back from it.
    s2.write(b"after-change", b"new").await.unwrap();
    assert_eq!(
        s2.read(b"after-change", 0, 0).await.unwrap().data,
        &b"new"[..]
    );
    eprintln!("{moved} of {} keys moved to the new node", keys.len());
}

/// Read fallback, read-repair of missing and corrupt copies, and the lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_read_repair_and_lookups() {
    // sync=0: acknowledged data is in the blob files, where corrupt_copy damages it.
    let mut spec = ClusterSpec::new(vec![vec![1], vec![2], vec![3]], Net::Loopback);
    spec.sync = 0;
    let cluster = Cluster::start(BIN, spec).unwrap();
    let c = cluster.client().await;
    let all = session(&c, vec![1, 2, 3], Checker::All);
    let only = |g: u32| session(&c, vec![g], Checker::All);

    // Missing in group 1: the read falls back to group 2 and repairs group 1.
    session(&c, vec![2, 3], Checker::All)
        .write(b"missing", b"good copy")
        .await
        .unwrap();
    assert!(only(1)
        .read(b"missing", 0, 0)
        .await
        .unwrap_err()
        .is_not_found());
    let r = all.read(b"missing", 0, 0).await.unwrap();
    assert_eq!((r.group, &r.data[..]), (2, &b"good copy"[..]));
    wait_for(|| async { only(1).read(b"missing", 0, 0).await.is_ok() }).await;
    let repaired = only(1).read(b"missing", 0, 0).await.unwrap();
    assert_eq!(repaired.data, &b"good copy"[..]);
    assert_eq!(
        repaired.io.timestamp, r.io.timestamp,
        "repair keeps the timestamp"
    );

    // Corrupt in group 1: −EILSEQ there, the read falls back and repairs.
    all.write(b"rotten", b"0123456789abcdef").await.unwrap();
    corrupt_copy(&only(1), b"rotten").await.unwrap();
    let e = only(1).read(b"rotten", 0, 0).await.unwrap_err();
    assert_eq!(e.errno(), -errno::EILSEQ, "{e}");
    assert_eq!(
        all.read(b"rotten", 0, 0).await.unwrap().data,
        &b"0123456789abcdef"[..]
    );
    wait_for(|| async { only(1).read(b"rotten", 0, 0).await.is_ok() }).await;

    // Stale in group 3: read_latest returns the newest and repairs group 3.
    let mut old = session(&c, vec![1, 2, 3], Checker::All);
    old.timestamp = Some(apsis_proto::Time { sec: 100, nsec: 0 });
    old.write(b"stale", b"old").await.unwrap();
    let mut new = session(&c, vec![1, 2], Checker::All);
    new.timestamp = Some(apsis_proto::Time { sec: 200, nsec: 0 });
    new.write(b"stale", b"new").await.unwrap();
    assert_eq!(all.read_latest(b"stale").await.unwrap().data, &b"new"[..]);
    wait_for(|| async {
        only(3)
            .read(b"stale", 0, 0)
            .await
            .is_ok_and(|r| r.data == b"new"[..])
    })
    .await;

    // A repair never undoes a newer delete.
    all.write(b"deleted", b"v").await.unwrap();
    let mut del = session(&c, vec![1], Checker::All);
    del.timestamp = Some(apsis_proto::Time::now());
    del.remove(b"deleted").await.unwrap();
    all.read(b"deleted", 0, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(only(1)
        .read(b"deleted", 0, 0)
        .await
        .unwrap_err()
        .is_not_found());

    // parallel_lookup reports every group; quorum_lookup the copy most groups agree on.
    let mut two = session(&c, vec![1, 2], Checker::All);
    two.timestamp = Some(apsis_proto::Time { sec: 300, nsec: 0 });
    two.write(b"voted", b"majority").await.unwrap();
    let mut one = session(&c, vec![3], Checker::All);
    one.timestamp = Some(apsis_proto::Time { sec: 400, nsec: 0 });
    one.write(b"voted", b"minority").await.unwrap();
    let mut noread = all.clone();
    noread.read_repair = false;
    let p = noread.parallel_lookup(b"voted").await;
    assert_eq!(p.len(), 3);
    assert!(p.iter().all(|g| g.result.is_ok()));
    let q = noread.quorum_lookup(b"voted").await.unwrap();
    assert_eq!(q.iter().map(|g| g.group).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(q[0].result.as_ref().unwrap().info.size, 8);

    // A failing checker reports every group.
    let mut strict = session(&c, vec![1, 2, 9], Checker::All);
    strict.timestamp = None;
    let e = strict.write(b"k", b"v").await.unwrap_err();
    match &e {
        ClientError::Checker {
            ok, total, groups, ..
        } => {
            assert_eq!((*ok, *total), (2, 3));
            assert_eq!(groups.len(), 1);
            assert_eq!(groups[0].0, 9);
        }
        other => panic!("expected a checker error, got {other}"),
    }
    assert_eq!(e.errno(), -errno::ENXIO);
}

async fn wait_for<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < deadline, "condition not reached in 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The groups of a write are written in parallel: with every backend slowed down by 300 ms, a
/// write to three groups takes about as long as a write to one (sequential would be 900 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_writes_go_out_in_parallel() {
    let cluster = Cluster::start(
        BIN,
        ClusterSpec::new(vec![vec![1], vec![2], vec![3]], Net::Loopback),
    )
    .unwrap();
    let c = cluster.client().await;
    let mut s = session(&c, vec![1, 2, 3], Checker::All);
    s.timeout = Duration::from_secs(5);
    for a in cluster.addrs() {
        s.backend_delay(a, 1, 300).await.unwrap();
    }
    let t = Instant::now();
    let w = s.write(b"fan-out", b"v").await.unwrap();
    let took = t.elapsed();
    assert_eq!(w.groups.len(), 3);
    assert!(w.groups.iter().all(|g| g.result.is_ok()));
    assert!(
        took >= Duration::from_millis(300),
        "the delay applied: {took:?}"
    );
    assert!(
        took < Duration::from_millis(600),
        "3 groups in parallel: {took:?}"
    );
}

/// A request not answered within its session's timeout fails with a timeout close to that
/// time (the client's coarse clock: within two 10 ms ticks); its late reply is discarded, and
/// the connection serves the next request. The client was idle before the slow request, so
/// its deadline sweeper had gone to sleep and the request had to wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_times_out_on_time_and_its_late_reply_is_dropped() {
    let cluster = Cluster::start(BIN, ClusterSpec::new(vec![vec![1]], Net::Loopback)).unwrap();
    let c = cluster.client().await;
    let mut s = session(&c, vec![1], Checker::All);
    let a = cluster.addrs()[0];
    s.write(b"slow", b"v").await.unwrap();
    // Delays short enough that the client's route refresh (a handshake every second, on the
    // same connection, behind the delayed reads, with a 1 s timeout) still gets through.
    s.backend_delay(a, 1, 600).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.timeout = Duration::from_millis(300);
    let t = Instant::now();
    let e = s.read(b"slow", 0, 0).await.unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, ClientError::Timeout), "{e:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(500),
        "a 300 ms timeout fired after {took:?}"
    );
    // Requests with different timeouts on one connection: the short one times out, the long
    // one (due later) still gets its reply. (A successful request first: two timeouts in a
    // row would make the client ping the node, which this delay stalls, and reset it.)
    let mut patient = s.clone();
    patient.timeout = Duration::from_secs(5);
    patient.backend_delay(a, 1, 300).await.unwrap();
    // The timed-out read is still being served: let it finish first.
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.timeout = Duration::from_millis(100);
    let t = Instant::now();
    let (short, long) = tokio::join!(s.read(b"slow", 0, 0), patient.read(b"slow", 0, 0));
    assert!(matches!(short, Err(ClientError::Timeout)), "{short:?}");
    assert_eq!(&long.unwrap().data[..], b"v");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    s.timeout = Duration::from_secs(5);
    s.backend_delay(a, 1, 0).await.unwrap();
    // The timed-out reads' replies come in while these run, for trans nobody waits for.
    for _ in 0..3 {
        let r = s.read(b"slow", 0, 0).await.unwrap();
        assert_eq!(&r.data[..], b"v");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The command line against a cluster: a write to three groups through one remote (the others
/// come from its route list), the routes of every group, and a read that falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_against_a_cluster() {
    let mut cluster = Cluster::start(
        BIN,
        ClusterSpec::new(vec![vec![1], vec![2], vec![3]], Net::Loopback),
    )
    .unwrap();
    let c = cluster.client().await;
    cluster.wait_mesh(&c, Duration::from_secs(20)).await;
    let remote = cluster.addrs()[2].to_string();
    let apsis = |args: &[&str], stdin: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(BIN)
            .args(args)
            .args(["-r", &remote, "--timeout", "1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "apsis {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    apsis(
        &["write", "cli-key", "-", "-g", "1,2,3", "--checker", "all"],
        b"three copies",
    );
    let routes = apsis(&["routes", "--json"], b"");
    for g in 1..=3 {
        assert!(routes.contains(&format!("\"group\":{g}")), "{routes}");
    }
    cluster.kill(0);
    let out = apsis(&["read", "cli-key", "-g", "1,2,3"], b"");
    assert_eq!(out, "three copies");
    let out = apsis(&["read", "cli-key", "--latest", "-g", "1,2,3"], b"");
    assert_eq!(out, "three copies");
}

/// SEND: a node copies its keys to other groups itself — timestamps and user flags kept, a
/// newer copy there kept unless OVERWRITE, MOVE removes the source; per-key statuses for a
/// key it does not hold and a group with no route. READ_RANGE and DEL_RANGE over a group of
/// two nodes: the client splits the range at the route boundaries and carries skip and limit
/// from one backend to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_send_and_ranges_across_nodes() {
    let cluster = Cluster::start(
        BIN,
        ClusterSpec::new(vec![vec![1], vec![1], vec![2], vec![3]], Net::Loopback),
    )
    .unwrap();
    let c = cluster.client().await;
    cluster.wait_mesh(&c, Duration::from_secs(20)).await;
    let mut s1 = session(&c, vec![1], Checker::All);
    s1.timeout = Duration::from_secs(5);
    let s2 = session(&c, vec![2], Checker::All);
    let s3 = session(&c, vec![3], Checker::All);
    // 100 keys on each of group 1's two backends (whose shares of the ring are random).
    let mut per_owner: std::collections::HashMap<_, Vec<Vec<u8>>> = Default::default();
    for i in 0.. {
        let k = format!("send-{i}").into_bytes();
        let owner = c.with_routes(|t| t.owner(1, &s1.id(&k))).unwrap();
        per_owner.entry(owner).or_default().push(k);
        if per_owner.len() == 2 && per_owner.values().all(|v| v.len() >= 100) {
            break;
        }
    }
    let mut keys: Vec<Vec<u8>> = per_owner
        .into_values()
        .flat_map(|v| v.into_iter().take(100))
        .collect();
    keys.sort_by_key(|k| {
        let n: u64 = std::str::from_utf8(&k[5..]).unwrap().parse().unwrap();
        n
    });
    for k in &keys {
        s1.write(k, k).await.unwrap();
    }
    // Ranges across the two backends of group 1.
    let mut ids: Vec<[u8; 64]> = keys.iter().map(|k| s1.id(k)).collect();
    ids.sort();
    let whole = s1
        .read_range(1, [0; 64], [0xff; 64], Default::default())
        .await
        .unwrap();
    assert_eq!(whole.count, 200);
    let got: Vec<[u8; 64]> = whole.items.iter().map(|x| x.io.id).collect();
    assert!(got == ids, "every key once, in id order, from both nodes");
    for (skip, limit) in [(0, 150), (90, 20), (150, 0), (199, 5)] {
        let r = s1
            .read_range(
                1,
                [0; 64],
                [0xff; 64],
                apsis_client::RangeOptions {
                    skip,
                    limit,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let end = if limit == 0 {
            200
        } else {
            (skip + limit).min(200)
        } as usize;
        let got: Vec<[u8; 64]> = r.items.iter().map(|x| x.io.id).collect();
        assert!(got == ids[skip as usize..end], "skip {skip} limit {limit}");
    }

    // SEND the first 50 keys to groups 2 and 3.
    let first: Vec<Vec<u8>> = keys[..50].to_vec();
    let resp = s1.server_send(&first, &[2, 3], 0).await.unwrap();
    assert_eq!(resp.len(), 50);
    assert!(resp.iter().all(|r| r.status == 0), "{resp:?}");
    for k in &first {
        let src = s1.read(k, 0, 0).await.unwrap();
        for s in [&s2, &s3] {
            let r = s.read(k, 0, 0).await.unwrap();
            assert_eq!(r.data, *k);
            assert_eq!(
                r.io.timestamp, src.io.timestamp,
                "the copy keeps its timestamp"
            );
        }
    }
    // A newer copy at the target wins, unless OVERWRITE.
    s2.write(&keys[0], b"newer in group 2").await.unwrap();
    let r = s1.server_send(&keys[..1], &[2], 0).await.unwrap();
    assert_eq!(r[0].status, -errno::EBADFD);
    assert_eq!(
        s2.read(&keys[0], 0, 0).await.unwrap().data,
        &b"newer in group 2"[..]
    );
    let r = s1
        .server_send(&keys[..1], &[2], apsis_proto::iflags::OVERWRITE)
        .await
        .unwrap();
    assert_eq!(r[0].status, 0);
    assert_eq!(s2.read(&keys[0], 0, 0).await.unwrap().data, keys[0]);
    // MOVE: the source copies are removed.
    let moved: Vec<Vec<u8>> = keys[50..60].to_vec();
    let r = s1
        .server_send(&moved, &[3], apsis_proto::iflags::MOVE)
        .await
        .unwrap();
    assert!(r.iter().all(|r| r.status == 0), "{r:?}");
    for k in &moved {
        assert_eq!(s3.read(k, 0, 0).await.unwrap().data, *k);
        assert_eq!(s1.read(k, 0, 0).await.unwrap_err().errno(), -errno::ENOENT);
    }
    // A key the source does not hold; a group nobody serves.
    let r = s1.server_send(&[b"never".to_vec()], &[2], 0).await.unwrap();
    assert_eq!(r[0].status, -errno::ENOENT);
    let r = s1.server_send(&keys[60..61], &[9], 0).await.unwrap();
    assert_eq!(r[0].status, -errno::ENXIO);
    // A copy onto the source's own group is refused outright.
    let e = s1.server_send(&keys[60..61], &[1], 0).await.unwrap_err();
    assert_eq!(e.errno(), -errno::EINVAL);

    // A SERVER_SEND iterator over one backend of group 1 copies what it walks to group 3.
    let route = c.with_routes(|t| t.owner(1, &ids[150])).unwrap();
    let owned: Vec<apsis_proto::IdRange> = c
        .routes()
        .ranges(1)
        .into_iter()
        .filter(|(_, r)| *r == route)
        .map(|(r, _)| r)
        .collect();
    let mut it = s1
        .iterator(
            1,
            ids[150],
            apsis_client::IterOptions {
                ranges: owned,
                send_to: vec![3],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut sent = Vec::new();
    while let Some(item) = it.next().await {
        let item = item.unwrap();
        assert_eq!(item.resp.status, 0, "{:?}", item.resp);
        sent.push(item.resp.key);
    }
    let on_backend = keys
        .iter()
        .filter(|k| c.with_routes(|t| t.owner(1, &s1.id(k))).unwrap() == route)
        .filter(|k| !moved.contains(k))
        .count();
    assert_eq!(sent.len(), on_backend);
    for k in keys.iter().filter(|k| sent.contains(&s1.id(k))) {
        assert_eq!(s3.read(k, 0, 0).await.unwrap().data, *k);
    }

    // DEL_RANGE over both backends.
    let n = s1
        .remove_range(1, [0; 64], [0xff; 64], Default::default())
        .await
        .unwrap();
    assert_eq!(n, 190, "everything but the 10 moved keys");
    let r = s1
        .read_range(1, [0; 64], [0xff; 64], Default::default())
        .await
        .unwrap();
    assert_eq!(r.count, 0);
}
