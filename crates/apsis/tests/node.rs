//! The node through the client: every data-semantics rule, the iterator, admin commands,
//! restart and crash durability, and garbage on the socket. Each test runs its own real
//! `apsis server` process on an ephemeral port.

mod common;

use apsis_proto::{action, cflags, cmd, errno, ioflags, IdRange, NodeStatus, Time};
use apsis_testkit::corrupt_copy;
use common::{session, Server};
use sha2::{Digest, Sha512};
use std::io::{Read, Write};
use std::time::Duration;

fn sha(b: &[u8]) -> [u8; 64] {
    Sha512::digest(b).into()
}

fn status(e: apsis_client::ClientError) -> i32 {
    e.errno()
}

/// `apsis server -c` with one backend (id 1, group 1, in `<d>/b1`) whose section also has
/// `backend_extra` (TOML lines).
fn one_backend_server(d: &std::path::Path, backend_extra: &str) -> Server {
    let cfg = d.join("apsis.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\naddresses = [\"127.0.0.1:0\"]\n\n[[backend]]\nid = 1\ngroup = 1\n\
             dir = \"{}\"\n{backend_extra}\n",
            d.join("b1").display()
        ),
    )
    .unwrap();
    Server::spawn(
        d,
        vec!["server".into(), "-c".into(), cfg.display().to_string()],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_semantics() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &[]);
    let s = session(&srv, vec![1]).await;

    // Whole write and read; the reply is the file info.
    let w = s.write(b"k1", b"hello world").await.unwrap();
    let l = w.groups[0].result.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(l.info.size, 11);
    assert_eq!(l.info.record_flags, 0x140);
    assert_eq!(s.read(b"k1", 0, 0).await.unwrap().data, &b"hello world"[..]);

    // A reply too large to gather into the connection's buffer (64 KiB) goes out from its
    // own; whole and in a range that starts and ends inside checksum chunks.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    s.write(b"big", &big).await.unwrap();
    assert_eq!(s.read(b"big", 0, 0).await.unwrap().data, &big[..]);
    let r = s.read(b"big", 70_001, 100_003).await.unwrap();
    assert_eq!(r.data, &big[70_001..170_004]);
    assert_eq!((r.io.offset, r.io.total_size), (70_001, 300_000));

    // Write at an offset overlays and grows.
    s.write_with(b"k1", b"HELLO", 0, 6).await.unwrap();
    assert_eq!(s.read(b"k1", 0, 0).await.unwrap().data, &b"hello HELLO"[..]);
    s.write_with(b"k1", b"!!", 0, 11).await.unwrap();
    assert_eq!(
        s.read(b"k1", 0, 0).await.unwrap().data,
        &b"hello HELLO!!"[..]
    );

    // Partial reads: clipping past the end, E2BIG at or after the end.
    let r = s.read(b"k1", 6, 100).await.unwrap();
    assert_eq!(r.data, &b"HELLO!!"[..]);
    assert_eq!(r.io.total_size, 13);
    assert_eq!(r.io.offset, 6);
    assert_eq!(
        status(s.read(b"k1", 13, 0).await.unwrap_err()),
        -errno::E2BIG
    );
    assert_eq!(
        status(s.read(b"k1", 100, 1).await.unwrap_err()),
        -errno::E2BIG
    );

    // APPEND creates, then appends; the reply size is the appended chunk.
    let w = s
        .write_with(b"k6", b"abc", ioflags::APPEND, 0)
        .await
        .unwrap();
    assert_eq!(
        w.groups[0]
            .result
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap()
            .info
            .size,
        3
    );
    let w = s
        .write_with(b"k6", b"def", ioflags::APPEND, 0)
        .await
        .unwrap();
    let l = w.groups[0].result.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(l.info.size, 3);
    assert_eq!(l.info.record_flags & 0x10, 0x10, "APPEND flag");
    assert_eq!(s.read(b"k6", 0, 0).await.unwrap().data, &b"abcdef"[..]);

    // PREPARE / PLAIN_WRITE / COMMIT: invisible until commit.
    let w = s.write_prepare(b"k8", b"aaaa", 0, 12).await.unwrap();
    let l = w.groups[0].result.as_ref().unwrap().as_ref().unwrap();
    assert_eq!(l.info.record_flags, 0x1c0);
    assert_eq!(l.info.size, 0);
    assert_eq!(
        status(s.read(b"k8", 0, 0).await.unwrap_err()),
        -errno::ENOENT
    );
    assert_eq!(status(s.lookup(b"k8").await.unwrap_err()), -errno::ENOENT);
    s.write_plain(b"k8", b"bbbb", 4).await.unwrap();
    assert_eq!(
        status(s.read(b"k8", 0, 0).await.unwrap_err()),
        -errno::ENOENT
    );
    let w = s.write_commit(b"k8", b"cccc", 8, 12).await.unwrap();
    assert_eq!(
        w.groups[0]
            .result
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap()
            .info
            .record_flags,
        0x140
    );
    assert_eq!(
        s.read(b"k8", 0, 0).await.unwrap().data,
        &b"aaaabbbbcccc"[..]
    );

    // Compare-and-swap on the data checksum: a mismatch is EBADFD and changes nothing.
    s.write(b"k9", b"original").await.unwrap();
    let e = s
        .write_cas(b"k9", b"replacement", [1; 64])
        .await
        .unwrap_err();
    assert_eq!(status(e), -errno::EBADFD);
    assert_eq!(s.read(b"k9", 0, 0).await.unwrap().data, &b"original"[..]);
    s.write_cas(b"k9", b"replacement", sha(b"original"))
        .await
        .unwrap();
    assert_eq!(s.read(b"k9", 0, 0).await.unwrap().data, &b"replacement"[..]);
    s.write_cas(b"k9-missing", b"new", [7; 64])
        .await
        .expect("a missing key always passes");

    // CAS_TIMESTAMP: an older write than the stored record is refused.
    let mut s2 = s.clone();
    s2.timestamp = Some(Time {
        sec: 2_000_000_000,
        nsec: 0,
    });
    s2.write(b"kt", b"new").await.unwrap();
    s2.timestamp = Some(Time {
        sec: 1_000_000_000,
        nsec: 0,
    });
    let e = s2
        .write_with(b"kt", b"old", ioflags::CAS_TIMESTAMP, 0)
        .await
        .unwrap_err();
    assert_eq!(status(e), -errno::EBADFD);
    assert_eq!(s.read(b"kt", 0, 0).await.unwrap().data, &b"new"[..]);

    // user_flags and timestamps travel with the record.
    let mut s3 = s.clone();
    s3.user_flags = 0x1122334455667788;
    s3.timestamp = Some(Time {
        sec: 1_500_000_000,
        nsec: 123_456_789,
    });
    s3.write(b"meta", b"m").await.unwrap();
    let r = s.read(b"meta", 0, 0).await.unwrap();
    assert_eq!(r.io.user_flags, 0x1122334455667788);
    assert_eq!(
        r.io.timestamp,
        Time {
            sec: 1_500_000_000,
            nsec: 123_456_789
        }
    );

    // Checksums: READ with CHECKSUM returns sha512 in parent; LOOKUP with CHECKSUM fills it.
    s.write(b"ck", b"checksum me").await.unwrap();
    let mut sc = s.clone();
    sc.ioflags = ioflags::CHECKSUM;
    assert_eq!(
        sc.read(b"ck", 0, 0).await.unwrap().io.parent,
        sha(b"checksum me")
    );
    let mut sl = s.clone();
    sl.cflags = cflags::CHECKSUM;
    assert_eq!(
        sl.lookup(b"ck").await.unwrap().1.info.checksum,
        sha(b"checksum me")
    );

    // WRITE_NO_FILE_INFO: an empty reply.
    let mut sn = s.clone();
    sn.ioflags = ioflags::WRITE_NO_FILE_INFO;
    let w = sn.write(b"nf", b"x").await.unwrap();
    assert!(w.groups[0].result.as_ref().unwrap().is_none());

    // Remove: a tombstone; reads then say ENOENT, and removing again too.
    s.remove(b"k1").await.unwrap();
    assert_eq!(
        status(s.read(b"k1", 0, 0).await.unwrap_err()),
        -errno::ENOENT
    );
    assert_eq!(status(s.remove(b"k1").await.unwrap_err()), -errno::ENOENT);

    // Bulk read: found keys in order, a missing one reported in its position.
    let keys = vec![b"k6".to_vec(), b"missing".to_vec(), b"k9".to_vec()];
    let r = s.bulk_read(&keys).await;
    assert_eq!(r[0].as_ref().unwrap().data, &b"abcdef"[..]);
    assert_eq!(status(r[1].clone().unwrap_err()), -errno::ENOENT);
    assert_eq!(r[2].as_ref().unwrap().data, &b"replacement"[..]);

    // Bulk write and remove, more keys than a bulk keeps in flight: results in order.
    let n = 3 * apsis_client::session::BULK_IN_FLIGHT + 7;
    let items: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("bulk-{i}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    assert!(s.bulk_write(&items).await.iter().all(|r| r.is_ok()));
    let keys: Vec<Vec<u8>> = items.iter().map(|(k, _)| k.clone()).collect();
    let r = s.bulk_read(&keys).await;
    assert!((0..n).all(|i| r[i].as_ref().unwrap().data == items[i].1));
    let mut gone = keys.clone();
    gone.push(b"never-written".to_vec());
    let r = s.bulk_remove(&gone).await;
    assert!(r[..n].iter().all(|r| r.is_ok()));
    assert_eq!(status(r[n].clone().unwrap_err()), -errno::ENOENT);
    let r = s.bulk_read(&keys).await;
    assert!(r
        .iter()
        .all(|r| status(r.clone().unwrap_err()) == -errno::ENOENT));

    // A group this node does not serve: no route on the client (ENXIO), nothing sent.
    let s9 = s.client().session(vec![9]);
    assert_eq!(
        status(s9.read(b"k6", 0, 0).await.unwrap_err()),
        -errno::ENXIO
    );

    // A large object goes in PREPARE/PLAIN/COMMIT chunks and reads back whole.
    let mut sb = s.clone();
    sb.chunk_size = 64 << 10;
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    sb.write(b"big", &big).await.unwrap();
    assert_eq!(s.read(b"big", 0, 0).await.unwrap().data, big);
    // Under the chunk size it is one WRITE frame, its io_attr and data written as they are.
    s.write(b"whole", &big).await.unwrap();
    assert_eq!(s.read(b"whole", 0, 0).await.unwrap().data, big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iterator_ranges_and_control() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &[]);
    let mut s = session(&srv, vec![1]).await;
    let n = 300;
    for i in 0..n {
        s.timestamp = Some(Time {
            sec: 1000 + i as u64,
            nsec: 0,
        });
        s.write(format!("it-{i}").as_bytes(), format!("v{i}").as_bytes())
            .await
            .unwrap();
    }
    let route = s.client().routes().entries()[0].1;
    let all = IdRange {
        begin: [0; 64],
        end: [0xff; 64],
    };
    let collect = |opts: apsis_client::IterOptions| {
        let s = s.clone();
        async move {
            let mut it = s.iterator(1, route, opts).await.unwrap();
            let mut v = Vec::new();
            while let Some(x) = it.next().await {
                v.push(x.unwrap());
            }
            v
        }
    };
    let items = collect(apsis_client::IterOptions {
        ranges: vec![all],
        time: None,
        data: true,
        ..Default::default()
    })
    .await;
    assert_eq!(items.len(), n);
    assert!(items
        .iter()
        .all(|x| x.data == format!("v{}", x.resp.timestamp.sec - 1000).into_bytes()));
    // A time range: 1100..=1149 → 50 records, no data.
    let t = (Time { sec: 1100, nsec: 0 }, Time { sec: 1149, nsec: 0 });
    let items = collect(apsis_client::IterOptions {
        ranges: vec![],
        time: Some(t),
        data: false,
        ..Default::default()
    })
    .await;
    assert_eq!(items.len(), 50);
    assert!(items.iter().all(|x| x.data.is_empty() && x.resp.size > 0));
    // A key range: only keys inside it.
    let mut mid = [0u8; 64];
    mid[0] = 0x80;
    let items = collect(apsis_client::IterOptions {
        ranges: vec![IdRange {
            begin: [0; 64],
            end: mid,
        }],
        time: None,
        data: false,
        ..Default::default()
    })
    .await;
    assert!(!items.is_empty() && items.len() < n);
    assert!(items.iter().all(|x| x.resp.key <= mid));

    // Pause, continue and cancel by iterator id, on a second connection. The records carry
    // enough data (12 MiB) that the iterator cannot finish into socket buffers before the
    // client reads: it is still running when the controls arrive.
    let big = vec![7u8; 4096];
    let puts: Vec<_> = (0..3000)
        .map(|i| {
            let s = s.clone();
            let big = big.clone();
            async move { s.write(format!("big-{i}").as_bytes(), &big).await.unwrap() }
        })
        .collect();
    apsis_client::session::join_all(puts).await;
    let total = n + 3000;
    let opts = apsis_client::IterOptions {
        ranges: vec![],
        time: None,
        data: true,
        ..Default::default()
    };
    let mut it = s.iterator(1, route, opts).await.unwrap();
    let first = it.next().await.unwrap().unwrap();
    let id = first.resp.id;
    let ctl = session(&srv, vec![1]).await;
    assert_eq!(
        ctl.iterator_control(srv.addr, 1, route, id, action::PAUSE)
            .await
            .unwrap(),
        0
    );
    // Pausing twice is an invalid transition: status +1.
    assert_eq!(
        ctl.iterator_control(srv.addr, 1, route, id, action::PAUSE)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ctl.iterator_control(srv.addr, 1, route, id, action::CONTINUE)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        ctl.iterator_control(srv.addr, 1, route, id, action::PAUSE)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        ctl.iterator_control(srv.addr, 1, route, id, action::CANCEL)
            .await
            .unwrap(),
        0
    );
    let mut got = 1;
    let end = loop {
        match it.next().await {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => break e.errno(),
            None => break 0,
        }
    };
    // Cancelled before the end: the records already queued arrive, then ENOEXEC.
    assert_eq!(end, -errno::ENOEXEC, "after {got} of {total}");
    assert!(got < total);
    let e = ctl
        .iterator_control(srv.addr, 1, route, 999, action::PAUSE)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), -errno::ENOENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_switches_and_backend_control() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &[]);
    let s = session(&srv, vec![1]).await;
    s.write(b"a", b"1").await.unwrap();
    let ro = apsis_client::Session::backend_command("read-only").unwrap();
    let rw = apsis_client::Session::backend_command("writable").unwrap();
    let st = s.backend_control(srv.addr, 1, ro, vec![]).await.unwrap();
    assert!(st.read_only);
    assert_eq!(
        s.backend_control(srv.addr, 1, ro, vec![])
            .await
            .unwrap_err()
            .errno(),
        -errno::EALREADY
    );
    assert_eq!(
        s.write(b"a", b"2").await.unwrap_err().errno(),
        -errno::EROFS
    );
    assert_eq!(s.remove(b"a").await.unwrap_err().errno(), -errno::EROFS);
    assert_eq!(
        s.read(b"a", 0, 0).await.unwrap().data,
        &b"1"[..],
        "reads still work"
    );
    s.backend_control(srv.addr, 1, rw, vec![]).await.unwrap();
    s.write(b"a", b"2").await.unwrap();

    // Node-wide read-only through STATUS.
    let st = s
        .node_status(
            srv.addr,
            NodeStatus {
                nflags: -1,
                status_flags: NodeStatus::RO,
                log_level: u32::MAX,
            },
        )
        .await
        .unwrap();
    assert_eq!(st.status_flags & NodeStatus::RO, NodeStatus::RO);
    assert_eq!(
        s.write(b"a", b"3").await.unwrap_err().errno(),
        -errno::EROFS
    );
    s.node_status(
        srv.addr,
        NodeStatus {
            nflags: -1,
            status_flags: 0,
            log_level: 0,
        },
    )
    .await
    .unwrap();
    s.write(b"a", b"3").await.unwrap();

    // Disable: the backend leaves the routes (UPDATE_IDS) and requests get ENOTSUP/ENXIO.
    let dis = apsis_client::Session::backend_command("disable").unwrap();
    let en = apsis_client::Session::backend_command("enable").unwrap();
    let st = s.backend_control(srv.addr, 1, dis, vec![]).await.unwrap();
    assert_eq!(st.state, 0);
    assert_eq!(
        s.backend_control(srv.addr, 1, dis, vec![])
            .await
            .unwrap_err()
            .errno(),
        -errno::EALREADY
    );
    let st = s.backend_control(srv.addr, 1, en, vec![]).await.unwrap();
    assert_eq!(st.state, 1);
    // Data survives disable/enable; routes come back with UPDATE_IDS.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.read(b"a", 0, 0).await.unwrap().data, &b"3"[..]);
    let list = s.backend_status(srv.addr).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].backend_id, 1);
    // Unknown backend: EINVAL.
    assert_eq!(
        s.backend_control(srv.addr, 7, ro, vec![])
            .await
            .unwrap_err()
            .errno(),
        -errno::EINVAL
    );
    // Defrag runs in the background.
    let df = apsis_client::Session::backend_command("defrag").unwrap();
    s.backend_control(srv.addr, 1, df, vec![]).await.unwrap();

    // Monitor stats over the protocol.
    let v = s.monitor_stat(srv.addr, 0xf7).await.unwrap();
    assert_eq!(v["backends"]["1"]["backend"]["config"]["group"], 1);
    assert!(
        v["commands"]["WRITE"]["disk"]["outside"]["successes"]
            .as_u64()
            .unwrap()
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_kill9_keeps_durable_writes() {
    let d = tempfile::tempdir().unwrap();
    // Graceful restart with sync = -1: SIGTERM flushes.
    let mut srv = Server::start(d.path(), &["--sync", "-1"]);
    {
        let s = session(&srv, vec![1]).await;
        for i in 0..200 {
            s.write(format!("r{i}").as_bytes(), format!("value {i}").as_bytes())
                .await
                .unwrap();
        }
        s.remove(b"r7").await.unwrap();
    }
    // An idle client connection is told to stop too: the node does not wait out its 10 s
    // drain limit for it.
    let idle = session(&srv, vec![1]).await;
    let t = std::time::Instant::now();
    assert!(srv.stop().success());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "graceful stop with an idle connection took {:?}",
        t.elapsed()
    );
    drop(idle);
    srv.restart();
    let s = session(&srv, vec![1]).await;
    for i in 0..200 {
        let r = s.read(format!("r{i}").as_bytes(), 0, 0).await;
        if i == 7 {
            assert_eq!(
                r.unwrap_err().errno(),
                -errno::ENOENT,
                "the delete survives restart"
            );
        } else {
            assert_eq!(r.unwrap().data, format!("value {i}").into_bytes());
        }
    }
    drop(s);
    srv.kill9();

    // sync = 0: every acknowledged write survives kill -9.
    let d2 = tempfile::tempdir().unwrap();
    let mut srv = Server::start(d2.path(), &["--sync", "0"]);
    let s = session(&srv, vec![1]).await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..50 {
                    let k = format!("d{w}-{i}");
                    if s.write(k.as_bytes(), k.as_bytes()).await.is_ok() {
                        acked.push(k);
                    }
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert_eq!(acked.len(), 400);
    // Every acknowledged write waited for an fsync, and concurrent writers shared them.
    let v = s.monitor_stat(srv.addr, 0x10).await.unwrap();
    let fsyncs = v["backends"]["1"]["backend"]["global_stats"]["fsyncs"]
        .as_u64()
        .unwrap();
    assert!(
        (1..400).contains(&fsyncs),
        "fsyncs {fsyncs} for 400 concurrent durable writes"
    );
    srv.kill9();
    srv.restart();
    let s = session(&srv, vec![1]).await;
    for k in acked {
        assert_eq!(
            s.read(k.as_bytes(), 0, 0).await.unwrap().data,
            k.into_bytes()
        );
    }
}

/// Elliptics' NO_CSUM node flag (TOML `no_csum`, value 8 of `options.flags` in the JSON): every
/// data command runs as with the NOCSUM ioflag. A byte flipped on disk is −EILSEQ on a node
/// without it and read back as it is on the same data with it; writes store no checksums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_no_csum_flag_turns_checksums_off_as_in_elliptics() {
    let d = tempfile::tempdir().unwrap();
    let mut srv = one_backend_server(d.path(), "sync = 0");
    let s = session(&srv, vec![1]).await;
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    s.write(b"rotten", &data).await.unwrap();
    corrupt_copy(&s, b"rotten").await.unwrap();
    let e = s.read(b"rotten", 0, 0).await.unwrap_err();
    assert_eq!(status(e), -errno::EILSEQ);
    drop(s);
    srv.stop();

    let cfg = d.path().join("apsis.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("[node]\n", "[node]\nno_csum = true\n")).unwrap();
    srv.restart();
    let mut s = session(&srv, vec![1]).await;
    s.read_repair = false;
    let got = s.read(b"rotten", 0, 0).await.unwrap().data;
    let differ = got.iter().zip(&data).filter(|(a, b)| a != b).count();
    assert_eq!(
        (got.len(), differ),
        (data.len(), 1),
        "the flipped byte, as stored"
    );
    s.write(b"fresh", b"no sums").await.unwrap();
    let (_, l) = s.lookup(b"fresh").await.unwrap();
    assert_ne!(l.info.record_flags & apsis_proto::record_flags::NOCSUM, 0);
    assert_eq!(&s.read(b"fresh", 0, 0).await.unwrap().data[..], b"no sums");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_requests_in_flight_on_one_connection_share_fsyncs() {
    // sync = 0: the connection's reader applies each write and reads on; the replies go out
    // after the group commit. 300 requests in flight on one connection share fsyncs, and each
    // is acknowledged only once it is durable.
    let d = tempfile::tempdir().unwrap();
    let mut srv = Server::start(d.path(), &["--sync", "0"]);
    let s = session(&srv, vec![1]).await;
    let fsyncs = |v: serde_json::Value| {
        v["backends"]["1"]["backend"]["global_stats"]["fsyncs"]
            .as_u64()
            .unwrap()
    };
    let before = fsyncs(s.monitor_stat(srv.addr, 0x10).await.unwrap());
    let writes = (0..300).map(|i| {
        let s = s.clone();
        async move {
            let k = format!("m{i}");
            s.write(k.as_bytes(), k.as_bytes()).await.map(|_| k)
        }
    });
    let acked: Vec<String> = apsis_client::session::join_all(writes)
        .await
        .into_iter()
        .map(|r| r.expect("durable write"))
        .collect();
    let used = fsyncs(s.monitor_stat(srv.addr, 0x10).await.unwrap()) - before;
    // A reader that waited for each fsync would need exactly 300.
    assert!(
        (1..300).contains(&used),
        "{used} fsyncs for 300 writes in flight on one connection"
    );
    // Writes and deletes of one key, back to back on the one connection: each waits for the
    // one before (the key lock is held until the reply), and a read sees the last.
    for round in 0..20 {
        let v = format!("v{round}");
        s.write(b"m0", v.as_bytes()).await.unwrap();
        assert_eq!(s.read(b"m0", 0, 0).await.unwrap().data, v.as_bytes());
    }
    s.remove(b"m1").await.unwrap();
    assert_eq!(
        status(s.read(b"m1", 0, 0).await.unwrap_err()),
        -errno::ENOENT
    );
    srv.kill9();
    srv.restart();
    let s = session(&srv, vec![1]).await;
    for k in &acked[2..] {
        assert_eq!(s.read(k.as_bytes(), 0, 0).await.unwrap().data, k.as_bytes());
    }
    assert_eq!(s.read(b"m0", 0, 0).await.unwrap().data, &b"v19"[..]);
    assert_eq!(
        status(s.read(b"m1", 0, 0).await.unwrap_err()),
        -errno::ENOENT
    );
}

/// The server's soft and hard open-file limits, from `/proc/PID/limits`.
fn open_file_limits(srv: &Server) -> (u64, u64) {
    let pid = srv.child.as_ref().unwrap().id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

/// At start a node raises its open-file limit to the hard one; and it accepts only the
/// connections that fit under that limit beside its files, so a burst of clients cannot take
/// the descriptors its engine needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_and_connections_fit_under_it() {
    let d = tempfile::tempdir().unwrap();
    // Raised from 64 to the hard limit, 300, which leaves room for few connections.
    let srv = Server::start_with_nofile(d.path(), 64, 300);
    assert_eq!(open_file_limits(&srv), (300, 300));
    let s = session(&srv, vec![1]).await;
    let stat = s.monitor_stat(srv.addr, 0x2).await.unwrap();
    let limit = stat["io"]["connections"]["limit"].as_u64().unwrap();
    assert!(
        (16..300 - 256).contains(&limit),
        "300 descriptors, 256 kept for the engine: {stat}"
    );
    // Fill the limit: the session's connection and these.
    let mut held = Vec::new();
    for _ in 1..limit {
        held.push(std::net::TcpStream::connect(srv.addr).unwrap());
    }
    let open = || async {
        let v = s.monitor_stat(srv.addr, 0x2).await.unwrap();
        v["io"]["connections"]["open"].as_u64().unwrap()
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while open().await < limit && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open().await, limit);
    // One more is closed at once.
    let mut extra = std::net::TcpStream::connect(srv.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        extra.read(&mut b).unwrap(),
        0,
        "refused: closed by the node"
    );
    // The node still serves the connections it holds, and its engine still opens files.
    s.write(b"after-the-burst", b"v").await.unwrap();
    assert_eq!(
        &s.read(b"after-the-burst", 0, 0).await.unwrap().data[..],
        b"v"
    );
    drop(held);
}

fn raw_request(c: i32, flags: u64, payload: &[u8]) -> Vec<u8> {
    let mut h = apsis_proto::Header::new(c, flags);
    h.trans = 77;
    h.group = 1;
    h.size = payload.len() as u64;
    let mut v = Vec::new();
    h.encode_into(&mut v);
    v.extend_from_slice(payload);
    v
}

/// A whole WRITE frame of `data` under `id`, in group 1, with `flags` and `trans`.
fn raw_write(id: [u8; 64], data: &[u8], flags: u64, trans: u64) -> Vec<u8> {
    let io = apsis_proto::IoAttr {
        id,
        size: data.len() as u64,
        ..Default::default()
    }
    .encode();
    let mut h = apsis_proto::Header::new(cmd::WRITE, flags);
    (h.id, h.group, h.trans) = (id, 1, trans);
    h.size = (io.len() + data.len()) as u64;
    let mut v = h.encode().to_vec();
    v.extend_from_slice(&io);
    v.extend_from_slice(data);
    v
}

fn read_frame(sock: &mut std::net::TcpStream) -> std::io::Result<apsis_proto::Frame> {
    let mut h = [0u8; apsis_proto::HEADER_SIZE];
    sock.read_exact(&mut h)?;
    let hdr = apsis_proto::Header::decode(&h).unwrap();
    let mut p = vec![0u8; hdr.size as usize];
    sock.read_exact(&mut p)?;
    Ok(apsis_proto::Frame {
        header: hdr,
        payload: p.into(),
    })
}

/// The node's anonymous (heap) memory, from `/proc/PID/status`: pages of mapped files, such
/// as the bases read through their maps, are not in it.
fn rss_anon_bytes(srv: &Server) -> u64 {
    let pid = srv.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

/// A large READ or BULK_READ reply is written to the socket straight from the base's memory
/// map: readers that leave their replies unread hold no copy of the object in the node's
/// memory, however many they are (each held a copy before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_reads_are_sent_from_the_map_not_copied() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &[]);
    let s = session(&srv, vec![1]).await;
    let big: Vec<u8> = (0..24usize << 20)
        .map(|i| (i * 7 + i / 4093) as u8)
        .collect();
    s.write(b"big", &big).await.unwrap();
    let id = s.id(b"big");
    let frame = |c: i32, payload: &[u8]| {
        let mut h = apsis_proto::Header::new(c, 0);
        h.id = id;
        h.group = 1;
        h.size = payload.len() as u64;
        let mut v = Vec::new();
        h.encode_into(&mut v);
        v.extend_from_slice(payload);
        v
    };
    let whole = apsis_proto::IoAttr {
        id,
        parent: id,
        ..Default::default()
    };
    let request = frame(cmd::READ, &whole.encode());
    // And as a BULK_READ, whose replies go through the connection's writer task.
    let bulk = frame(
        cmd::BULK_READ,
        &apsis_proto::BulkRead { keys: vec![whole] }.encode(),
    );
    let before = rss_anon_bytes(&srv);
    // Readers that do not take their replies: the node blocks writing each.
    let mut readers = Vec::new();
    for r in [&request, &request, &bulk, &bulk] {
        let mut c = std::net::TcpStream::connect(srv.addr).unwrap();
        c.write_all(r).unwrap();
        readers.push(c);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss_anon_bytes(&srv);
    assert!(
        during < before + (40 << 20),
        "4 unread 24 MiB replies took {} MiB of the node's heap",
        (during.saturating_sub(before)) >> 20
    );
    // Then each gets the whole object, taken in the order they connected: a reader whose
    // reply is unread does not hold the key's lock for the others.
    for mut c in readers {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let f = read_frame(&mut c).unwrap();
        assert_eq!((f.header.cmd, f.header.status), (cmd::READ, 0));
        assert!(f.payload[apsis_proto::IoAttr::SIZE..] == big[..]);
    }
}

/// A connection that sent one large frame does not keep a buffer of its size: once the frame
/// is done with, the node's memory for it is freed while the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_leaves_no_large_buffer_behind() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &[]);
    let id = sha(b"one-large-write");
    let data: Vec<u8> = (0..48usize << 20).map(|i| (i % 251) as u8).collect();
    let frame = raw_write(id, &data, 0, 0);
    drop(data);
    let before = rss_anon_bytes(&srv);
    let mut c = std::net::TcpStream::connect(srv.addr).unwrap();
    c.write_all(&frame).unwrap();
    let f = read_frame(&mut c).unwrap();
    assert_eq!((f.header.cmd, f.header.status), (cmd::WRITE, 0));
    // The connection stays open, idle.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut after = rss_anon_bytes(&srv);
    while after > before + (16 << 20) && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss_anon_bytes(&srv);
    }
    assert!(
        after < before + (16 << 20),
        "an idle connection still holds {} MiB after a 48 MiB frame",
        (after - before) >> 20
    );
    drop(c);
}

/// Large frames being received share one node-wide budget (`frame_memory`): a frame that
/// does not fit waits, unread, while small requests go on; and a frame that stops arriving
/// half-way, or only trickles, closes its connection (`frame_timeout_secs`), which frees its
/// part of the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_wait_for_the_node_budget_and_stalled_ones_are_dropped() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("apsis.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\naddresses = [\"127.0.0.1:0\"]\nmax_frame_bytes = 1048576\n\
             frame_memory = \"2M\"\nframe_timeout_secs = 4\n\n\
             [[backend]]\nid = 1\ngroup = 1\ndir = \"{}\"\n",
            d.path().join("b1").display()
        ),
    )
    .unwrap();
    let srv = Server::spawn(
        d.path(),
        vec!["server".into(), "-c".into(), cfg.display().to_string()],
    );
    let s = session(&srv, vec![1]).await;
    // A WRITE of 900 KiB: two fit the 2 MiB budget, a third does not.
    let write = |key: &[u8]| {
        let id = sha(key);
        let data: Vec<u8> = (0..900usize << 10).map(|i| (i % 253) as u8).collect();
        (raw_write(id, &data, cflags::NEED_ACK, 0), data)
    };
    let io_stat = || async {
        let v = s.monitor_stat(srv.addr, 0x2).await.unwrap();
        v["io"].clone()
    };
    // Two senders send their header and 100 KiB: each holds its whole frame's part. One then
    // stops; the other trickles a byte every 300 ms, far below the 64 KiB it must bring per
    // timeout, so it counts as stalled too.
    let mut stalled = Vec::new();
    let mut trickler = None;
    for k in [&b"stalls-1"[..], b"stalls-2"] {
        let (frame, _) = write(k);
        let mut c = std::net::TcpStream::connect(srv.addr).unwrap();
        c.write_all(&frame[..100 << 10]).unwrap();
        if k == b"stalls-2" {
            let mut t = c.try_clone().unwrap();
            trickler = Some(std::thread::spawn(move || {
                for b in &frame[100 << 10..] {
                    std::thread::sleep(Duration::from_millis(300));
                    if t.write_all(std::slice::from_ref(b)).is_err() {
                        return;
                    }
                }
            }));
        }
        stalled.push(c);
    }
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while io_stat().await["frame_memory"]["used"].as_u64().unwrap() < 1800 << 10 {
        assert!(std::time::Instant::now() < until, "{}", io_stat().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A whole frame now waits: no reply while the budget is held.
    let (frame, data) = write(b"waits");
    let mut waiting = std::net::TcpStream::connect(srv.addr).unwrap();
    let sent = std::time::Instant::now();
    let writer = {
        let mut c = waiting.try_clone().unwrap();
        std::thread::spawn(move || c.write_all(&frame))
    };
    // Small requests do not wait for the budget.
    for i in 0..20u32 {
        let k = format!("small-{i}");
        let t = std::time::Instant::now();
        s.write(k.as_bytes(), b"v").await.unwrap();
        assert_eq!(s.read(k.as_bytes(), 0, 0).await.unwrap().data, &b"v"[..]);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
    }
    let st = io_stat().await;
    assert_eq!(st["frame_memory"]["waits"], 1, "{st}");
    assert_eq!(st["frame_memory"]["limit"], 2 << 20, "{st}");
    // The stalled senders are closed 4 s after their frames began; the waiting frame is
    // then admitted and written.
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let f = read_frame(&mut waiting).unwrap();
    assert_eq!((f.header.cmd, f.header.status), (cmd::WRITE, 0));
    assert!(
        sent.elapsed() >= Duration::from_millis(3000),
        "the third frame was not held: {:?}",
        sent.elapsed()
    );
    writer.join().unwrap().unwrap();
    for mut c in stalled {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        // Closed: an orderly end, or a reset where the trickle met the closed socket.
        let r = c.read(&mut b);
        assert!(
            matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "a stalled connection is closed: {r:?}"
        );
    }
    trickler.unwrap().join().unwrap();
    assert_eq!(s.read(b"waits", 0, 0).await.unwrap().data, &data[..]);
    for k in [&b"stalls-1"[..], b"stalls-2"] {
        assert_eq!(status(s.read(k, 0, 0).await.unwrap_err()), -errno::ENOENT);
    }
    let st = io_stat().await;
    assert_eq!(st["frames_stalled"], 2, "{st}");
    assert_eq!(st["frame_memory"]["used"], 0, "{st}");
}

/// Answers a node's request `f` as an Elliptics node at `me` (backend 1 in group 2, one ring
/// point) would: REVERSE_LOOKUP, ROUTE_LIST, and AUTH with `auth_status`; others go unanswered.
fn answer_as_elliptics(
    c: &mut std::net::TcpStream,
    f: &apsis_proto::Frame,
    me: std::net::SocketAddr,
    auth_status: i32,
) {
    use apsis_proto::{Addr, BackendIds, NodeInfo, RouteList};
    let h = f.header;
    let mut r = h.reply(0, 0, false);
    r.flags = cflags::NOLOCK | cflags::REPLY;
    let p = match h.cmd {
        cmd::REVERSE_LOOKUP => {
            r.set_version(apsis_proto::VERSION);
            r.group = 2;
            NodeInfo {
                addrs: vec![Addr(me)],
                backends: vec![BackendIds {
                    backend_id: 1,
                    group: 2,
                    flags: 0,
                    ids: vec![[0x22; 64]],
                }],
            }
            .encode()
        }
        cmd::ROUTE_LIST => RouteList {
            node_addr_num: 1,
            addrs: vec![Addr(me)],
        }
        .encode(),
        cmd::AUTH => {
            r.flags = cflags::DIRECT | cflags::REPLY;
            r.status = auth_status;
            Vec::new()
        }
        _ => return,
    };
    r.size = p.len() as u64;
    let mut v = r.encode().to_vec();
    v.extend_from_slice(&p);
    c.write_all(&v).unwrap();
}

/// Plays an Elliptics node in group 2 that a node (started here, with it as its remote,
/// `auth_cookie = "c1"` and the `[node]` lines `node_extra`) connects to: answers the node's REVERSE_LOOKUP, ROUTE_LIST and AUTH
/// (with `auth_status`) until the AUTH has been answered. Returns the server, the connection
/// the node opened, and a function that answers the node's requests on it.
fn elliptics_peer_joined_by_a_node(
    d: &std::path::Path,
    auth_status: i32,
    node_extra: &str,
) -> (
    Server,
    std::net::TcpStream,
    impl Fn(&mut std::net::TcpStream, &apsis_proto::Frame),
) {
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let cfg = d.join("apsis.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\naddresses = [\"127.0.0.1:0\"]\nremotes = [\"{peer_addr}\"]\n\
             auth_cookie = \"c1\"\n{node_extra}\n\n[[backend]]\nid = 1\ngroup = 1\ndir = \"{}\"\n",
            d.join("b1").display()
        ),
    )
    .unwrap();
    let srv = Server::spawn(
        d,
        vec!["server".into(), "-c".into(), cfg.display().to_string()],
    );
    let (mut c, _) = peer.accept().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let answer = move |c: &mut std::net::TcpStream, f: &apsis_proto::Frame| {
        answer_as_elliptics(c, f, peer_addr, auth_status)
    };
    loop {
        let f = read_frame(&mut c).unwrap();
        if !f.header.is_reply() {
            answer(&mut c, &f);
            if f.header.cmd == cmd::AUTH {
                let a = apsis_proto::Auth::decode(&f.payload).unwrap();
                assert_eq!(a.cookie, b"c1", "the node's own cookie");
                break;
            }
        }
    }
    (srv, c, answer)
}

/// A node pushes its backend changes (UPDATE_IDS) to a node it joined that routes to it over
/// the joining connection (an Elliptics node: it never connects back), on that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_changes_reach_a_joined_elliptics_node_on_the_joining_connection() {
    let d = tempfile::tempdir().unwrap();
    let (srv, mut c, _) = elliptics_peer_joined_by_a_node(d.path(), 0, "");
    let s = session(&srv, vec![1]).await;
    let dis = apsis_client::Session::backend_command("disable").unwrap();
    s.backend_control(srv.addr, 1, dis, vec![]).await.unwrap();
    let f = tokio::task::spawn_blocking(move || loop {
        let f = read_frame(&mut c).expect("an UPDATE_IDS on the joining connection");
        if f.header.cmd == cmd::UPDATE_IDS {
            return f;
        }
    })
    .await
    .unwrap();
    let mut r = apsis_proto::wire::Reader::new(&f.payload, "update ids");
    let b = apsis_proto::decode_backends(&mut r).unwrap();
    assert_eq!(b.len(), 1);
    // As Elliptics sends a disable: the backend, the flag, no group and no ids.
    assert_eq!(
        (b[0].backend_id, b[0].flags),
        (1, apsis_proto::BackendIds::FLAG_DISABLE)
    );
}

/// A node that joined us (an Elliptics node in group 2, played here) is connected back as a
/// client connects, without JOIN or AUTH: an Elliptics node refuses a second DHT connection
/// from a node it already has one with (−EEXIST). Requests for its group are forwarded on that
/// connection, and the pushes it sends there change the routes: once its only backend is
/// disabled, a request for its group is no longer forwarded to it.
#[test]
fn a_joiner_is_connected_back_without_join_and_its_pushes_change_the_routes() {
    use apsis_proto::{Addr, BackendIds, Header, NodeInfo};
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let me = listener.local_addr().unwrap();
    let send = |c: &mut std::net::TcpStream, mut h: Header, p: &[u8]| {
        h.size = p.len() as u64;
        let mut v = h.encode().to_vec();
        v.extend_from_slice(p);
        c.write_all(&v).unwrap();
    };
    // Join the node, as an Elliptics node in group 2 does.
    let mut x = std::net::TcpStream::connect(srv.addr).unwrap();
    x.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut h = Header::new(cmd::REVERSE_LOOKUP, cflags::DIRECT | cflags::NOLOCK);
    h.set_version(apsis_proto::VERSION);
    send(&mut x, h, &[]);
    assert_eq!(read_frame(&mut x).unwrap().header.status, 0);
    let backend = |flags| BackendIds {
        backend_id: 1,
        group: 2,
        flags,
        ids: vec![[0x22; 64]],
    };
    let info = NodeInfo {
        addrs: vec![Addr(me)],
        backends: vec![backend(0)],
    };
    send(
        &mut x,
        Header::new(cmd::JOIN, cflags::DIRECT | cflags::NOLOCK),
        &info.encode(),
    );
    // The node connects back. What it sends there is answered; a READ it forwards is
    // returned.
    let (mut y, _) = listener.accept().unwrap();
    y.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let forwarded_read = |y: &mut std::net::TcpStream| loop {
        let Ok(f) = read_frame(y) else {
            return None;
        };
        assert!(
            !matches!(f.header.cmd, cmd::JOIN | cmd::AUTH),
            "a node that joined us is not joined back: {:?}",
            f.header
        );
        if f.header.cmd == cmd::READ {
            send(y, f.header.reply(-errno::ENOENT, 0, false), &[]);
            return Some(f);
        }
        answer_as_elliptics(y, &f, me, 0);
    };
    let id = sha(b"in-group-2");
    let read = |trans: u64| {
        let mut h = Header::new(cmd::READ, cflags::NEED_ACK);
        (h.id, h.group, h.trans) = (id, 2, trans);
        let io = apsis_proto::IoAttr {
            id,
            ..Default::default()
        };
        (h, io.encode())
    };
    let mut client = std::net::TcpStream::connect(srv.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Forwarded once the node has routed us (a READ before that is answered by the node).
    let mut forwarded = false;
    for trans in 1..100 {
        let (h, p) = read(trans);
        send(&mut client, h, &p);
        forwarded = forwarded_read(&mut y).is_some();
        read_frame(&mut client).unwrap();
        if forwarded {
            break;
        }
    }
    assert!(forwarded, "a READ in group 2 is forwarded to the joiner");
    // The joiner's backend goes away: UPDATE_IDS on the node's connection, as Elliptics
    // pushes to every connection it sent its ids on. Then READs are answered by the node.
    let mut p = Vec::new();
    apsis_proto::encode_backends(&[backend(BackendIds::FLAG_DISABLE)], &mut p);
    send(
        &mut y,
        Header::new(cmd::UPDATE_IDS, cflags::DIRECT | cflags::NOLOCK),
        &p,
    );
    let mut answered_by_the_node = false;
    for trans in 100..200 {
        let (h, p) = read(trans);
        send(&mut client, h, &p);
        let fwd = forwarded_read(&mut y);
        let f = read_frame(&mut client).unwrap();
        if fwd.is_none() {
            assert!(f.header.status < 0, "{:?}", f.header);
            answered_by_the_node = true;
            break;
        }
    }
    assert!(
        answered_by_the_node,
        "the push took the joiner out of the routes"
    );
}

/// A node joining an Elliptics node sends AUTH after JOIN, as Elliptics' nodes do, and gives
/// the connection up when the peer refuses its cookie (−EPERM): nodes of different clusters
/// do not join each other.
#[test]
fn a_peer_that_refuses_the_auth_cookie_is_given_up() {
    let d = tempfile::tempdir().unwrap();
    let (_srv, mut c, _) = elliptics_peer_joined_by_a_node(d.path(), -1, "");
    let mut b = [0u8; 1];
    assert_eq!(
        c.read(&mut b).unwrap_or(0),
        0,
        "the node closes the connection"
    );
}

/// A request a peer sends on a connection the node opened is bounded as on an accepted one
/// (`max_frame_bytes`, 256 MiB here): a larger one closes that connection before it is read.
#[test]
fn an_oversized_request_on_an_opened_connection_closes_it() {
    let d = tempfile::tempdir().unwrap();
    let (_srv, mut c, _) = elliptics_peer_joined_by_a_node(d.path(), 0, "");
    let mut h = apsis_proto::Header::new(cmd::WRITE, cflags::DIRECT);
    h.group = 1;
    h.size = 300 << 20;
    c.write_all(&h.encode()).unwrap();
    c.write_all(&[0u8; 4096]).unwrap();
    let mut b = [0u8; 64];
    loop {
        match c.read(&mut b) {
            Ok(0) => break,
            // The node's own requests, sent before it saw ours.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the node did not close the connection: {e}"),
        }
    }
}

/// A large request a peer sends on a connection the node opened takes its part of the node's
/// frame budget before it is read, as on an accepted connection: with the budget held by two
/// stalled senders it waits, and is written once they are closed.
#[test]
fn a_large_request_on_an_opened_connection_waits_for_the_frame_budget() {
    let d = tempfile::tempdir().unwrap();
    let (srv, mut c, answer) = elliptics_peer_joined_by_a_node(
        d.path(),
        0,
        "max_frame_bytes = 1048576\nframe_memory = \"2M\"\nframe_timeout_secs = 3",
    );
    let data: Vec<u8> = (0..900usize << 10).map(|i| (i % 241) as u8).collect();
    // Two clients hold 1 800 KiB of the 2 MiB with frames they do not finish.
    let mut stalled = Vec::new();
    for k in [&b"held-1"[..], b"held-2"] {
        let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
        s.write_all(&raw_write(sha(k), &data, cflags::NEED_ACK, 1)[..100 << 10])
            .unwrap();
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let id = sha(b"from-the-peer");
    let sent = std::time::Instant::now();
    c.write_all(&raw_write(
        id,
        &data,
        cflags::DIRECT | cflags::NEED_ACK,
        7001,
    ))
    .unwrap();
    let reply = loop {
        let f = read_frame(&mut c).expect("the write is answered once the budget frees");
        if !f.header.is_reply() {
            answer(&mut c, &f);
        } else if f.header.trans == 7001 && !f.header.has_more() {
            break f;
        }
    };
    assert_eq!(reply.header.status, 0);
    assert!(
        sent.elapsed() >= Duration::from_millis(2000),
        "the peer's frame was not held: {:?}",
        sent.elapsed()
    );
    drop(stalled);
}

/// A connection runs both ways, as in Elliptics: a peer the node connected to and JOINed
/// routes to it over that same connection (Elliptics' capture 14: n2 sends its ROUTE_LIST
/// refreshes to n1 on n1's connection). Here the test plays that peer, an Elliptics node in
/// group 2: the node answers its ROUTE_LIST, WRITE, READ and REVERSE_LOOKUP on the
/// connection the node opened; they went unanswered before.
#[test]
fn a_joined_peer_is_answered_on_the_connection_the_node_opened() {
    use apsis_proto::{Header, RouteList};
    let d = tempfile::tempdir().unwrap();
    let (srv, mut c, answer) = elliptics_peer_joined_by_a_node(d.path(), 0, "");
    let frame = |h: Header, p: &[u8]| {
        let mut h = h;
        h.size = p.len() as u64;
        let mut v = h.encode().to_vec();
        v.extend_from_slice(p);
        v
    };
    // Now the peer's own requests, on the same connection.
    let id = sha(b"over-the-joined-connection");
    let mut rl = Header::new(cmd::ROUTE_LIST, cflags::DIRECT | cflags::NOLOCK);
    rl.trans = 5000;
    c.write_all(&frame(rl, &[])).unwrap();
    c.write_all(&raw_write(
        id,
        b"hello",
        cflags::DIRECT | cflags::NEED_ACK,
        5001,
    ))
    .unwrap();
    // Requests on a connection run concurrently, as in Elliptics: the READ goes once the
    // WRITE is acknowledged.
    let mut got = std::collections::HashMap::new();
    while !got.contains_key(&5001) {
        let f = read_frame(&mut c).expect("the node answers its peer on this connection");
        if !f.header.is_reply() {
            answer(&mut c, &f);
        } else if !f.header.has_more() {
            got.insert(f.header.trans, f);
        }
    }
    let read = apsis_proto::IoAttr {
        id,
        ..Default::default()
    };
    let mut r = Header::new(cmd::READ, cflags::DIRECT | cflags::NEED_ACK);
    (r.id, r.group, r.trans) = (id, 1, 5002);
    c.write_all(&frame(r, &read.encode())).unwrap();
    // And a handshake, as a peer refreshing what it knows of the node would send.
    let mut rl = Header::new(cmd::REVERSE_LOOKUP, cflags::DIRECT | cflags::NOLOCK);
    rl.set_version(apsis_proto::VERSION);
    rl.trans = 5003;
    c.write_all(&frame(rl, &[])).unwrap();
    while got.len() < 4 {
        let f = read_frame(&mut c).expect("the node answers its peer on this connection");
        if !f.header.is_reply() {
            answer(&mut c, &f);
            continue;
        }
        if f.header.has_more() && f.header.cmd != cmd::READ {
            continue;
        }
        got.entry(f.header.trans).or_insert(f);
    }
    let l = RouteList::decode(&got[&5000].payload).unwrap();
    assert!(
        l.addrs.iter().any(|a| a.0 == srv.addr),
        "the node lists itself: {:?}",
        l.addrs
    );
    assert_eq!(got[&5001].header.status, 0);
    let f = &got[&5002];
    assert_eq!((f.header.cmd, f.header.status), (cmd::READ, 0));
    assert_eq!(&f.payload[apsis_proto::IoAttr::SIZE..], b"hello");
    let info = apsis_proto::NodeInfo::decode(&got[&5003].payload).unwrap();
    assert_eq!(info.addrs[0].0, srv.addr);
    assert_eq!(
        (info.backends[0].backend_id, info.backends[0].group),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_connection() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &[]);
    let s = session(&srv, vec![1]).await;
    s.write(b"safe", b"data").await.unwrap();
    let timeout = Some(Duration::from_secs(5));

    // Random bytes whose "size" field is huge: closed without buffering.
    let mut g = std::net::TcpStream::connect(srv.addr).unwrap();
    g.set_read_timeout(timeout).unwrap();
    let mut junk = vec![0xa5u8; 120];
    junk[112..120].copy_from_slice(&u64::MAX.to_le_bytes());
    g.write_all(&junk).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(g.read(&mut b).unwrap_or(0), 0, "closed");

    // A version mismatch on REVERSE_LOOKUP: closed with no reply.
    let mut v = std::net::TcpStream::connect(srv.addr).unwrap();
    v.set_read_timeout(timeout).unwrap();
    let mut h = apsis_proto::Header::new(cmd::REVERSE_LOOKUP, cflags::DIRECT | cflags::NOLOCK);
    h.set_version([2, 26, 11, 1]);
    v.write_all(&h.encode()).unwrap();
    assert_eq!(v.read(&mut b).unwrap_or(0), 0, "closed without a reply");

    // Bad sizes and unknown commands get an error ack and the connection stays usable.
    let mut c = std::net::TcpStream::connect(srv.addr).unwrap();
    c.set_read_timeout(timeout).unwrap();
    c.write_all(&raw_request(cmd::READ, cflags::NEED_ACK, &[0u8; 100]))
        .unwrap();
    assert_eq!(read_frame(&mut c).unwrap().header.status, -errno::EINVAL);
    c.write_all(&raw_request(99, cflags::NEED_ACK, &[]))
        .unwrap();
    assert_eq!(read_frame(&mut c).unwrap().header.status, -errno::ENOTSUP);
    c.write_all(&raw_request(
        cmd::MONITOR_STAT,
        cflags::NEED_ACK,
        &[0u8; 43],
    ))
    .unwrap();
    assert_eq!(read_frame(&mut c).unwrap().header.status, -errno::EINVAL);
    c.write_all(&raw_request(cmd::ITERATOR, cflags::NEED_ACK, &[1u8; 50]))
        .unwrap();
    assert_eq!(read_frame(&mut c).unwrap().header.status, -errno::EINVAL);
    // A WRITE whose io_attr claims more data than the frame carries.
    let mut io = apsis_proto::IoAttr {
        size: 1000,
        ..Default::default()
    };
    io.id = [3; 64];
    let mut p = Vec::new();
    io.encode_into(&mut p);
    p.extend_from_slice(b"short");
    c.write_all(&raw_request(cmd::WRITE, cflags::NEED_ACK, &p))
        .unwrap();
    assert_eq!(read_frame(&mut c).unwrap().header.status, -errno::EINVAL);
    // Random frames with valid sizes never crash the node.
    let mut rng = 0x1234_5678_u64;
    for _ in 0..300 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let len = (rng % 600) as usize;
        let payload: Vec<u8> = (0..len).map(|i| (rng >> (i % 56)) as u8).collect();
        let c_num = (rng % 30) as i32;
        if c_num == cmd::REVERSE_LOOKUP
            || c_num == cmd::JOIN
            || c_num == cmd::STATUS
            || c_num == cmd::BACKEND_CONTROL
        {
            continue;
        }
        c.write_all(&raw_request(c_num, rng & 0x1f & !cflags::MORE, &payload))
            .unwrap();
    }
    // The node still serves everyone, this connection included.
    assert_eq!(s.read(b"safe", 0, 0).await.unwrap().data, &b"data"[..]);
    let s2 = session(&srv, vec![1]).await;
    assert_eq!(s2.read(b"safe", 0, 0).await.unwrap().data, &b"data"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_http_and_dnet_json_config() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("ioserv.json");
    // Port 0 in an Elliptics address: bind an ephemeral port (advertised as bound).
    let json = serde_json::json!({
        "logger": {"level": "info", "root": [{"type": "blocking", "formatter": {"type": "string", "pattern": "{message}"},
                                             "sinks": [{"type": "file", "path": d.path().join("log/ioserv.log"), "flush": 1}]}]},
        "options": {
            "address": ["127.0.0.1:0:2-0"], "remote": [], "join": true, "flags": 4, "auth_cookie": "secret",
            "io_thread_num": 4, "nonblocking_io_thread_num": 4, "net_thread_num": 2,
            "wait_timeout": 60, "check_timeout": 60, "monitor": {"port": 0}, "mystery": 1
        },
        "backends": [{"backend_id": 1, "type": "blob", "group": 3, "history": d.path().join("history"),
                      "data": d.path().join("data/data"), "sync": "30", "blob_size": "10G", "records_in_blob": "1000000",
                      "periodic_timeout": 15}]
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let srv = Server::spawn(
        d.path(),
        vec!["server".into(), "-c".into(), cfg.display().to_string()],
    );
    let s = session(&srv, vec![3]).await;
    s.write(b"cfg", b"ok").await.unwrap();
    let (_, l) = s.lookup(b"cfg").await.unwrap();
    // The reply names the real blob file, under the configured data directory.
    let path = String::from_utf8_lossy(&l.path).to_string();
    assert!(
        path.contains("data/data") && path.ends_with(".blob"),
        "{path}"
    );
    assert!(std::path::Path::new(&path).exists(), "{path}");
    assert!(d.path().join("history/ids").exists());
    // The log goes where the logger's file sink says (its directory made), as dnet_ioserv's
    // does: here the warning about the key Apsis does not know.
    let log = std::fs::read_to_string(d.path().join("log/ioserv.log")).unwrap();
    assert!(log.contains("options.mystery (unknown)"), "{log}");

    // HTTP monitor on an Apsis TOML config.
    let d2 = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let srv2 = Server::start(d2.path(), &["--monitor-port", &port.to_string()]);
    let s2 = session(&srv2, vec![1]).await;
    s2.write(b"m", b"1").await.unwrap();
    let m = srv2.monitor.unwrap();
    let get = |path: &str| apsis_testkit::process::http_get(m, path).unwrap();
    let (_, metrics) = get("/metrics");
    assert!(
        metrics.contains("apsis_commands_total{cmd=\"WRITE\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("apsis_backend_records{backend=\"1\",group=\"1\"} 1"),
        "{metrics}"
    );
    let (_, body) = get("/?categories=16");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["backends"]["1"]["backend"]["summary_stats"]["records_total"],
        1
    );
    assert_eq!(get("/nope").0, 404);
}

/// The monitor's health endpoints follow the node: not ready while it still joins a remote
/// that does not answer, ready once that round ends; ready but not writable under STATUS RO
/// (so `?writable` refuses); not ready with no backend enabled; `apsis_ready` and
/// `apsis_writable` in the metrics say the same. Liveness answers throughout.
#[test]
fn health_endpoints_follow_the_node() {
    let d = tempfile::tempdir().unwrap();
    // Accepts and never answers: the node's first round of joining lasts until it gives up.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = d.path().join("apsis.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\naddresses = [\"127.0.0.1:0\"]\nremotes = [\"{}\"]\nwait_timeout_secs = 4\n\
             log_file = \"{}\"\n\n[[backend]]\nid = 1\ngroup = 1\ndir = \"{}\"\n",
            silent.local_addr().unwrap(),
            d.path().join("apsis.log").display(),
            d.path().join("b1").display()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let srv = Server::spawn(
        d.path(),
        vec![
            "server".into(),
            "-c".into(),
            cfg.display().to_string(),
            "--monitor-port".into(),
            port.to_string(),
        ],
    );
    let m = srv.monitor.unwrap();
    let get = |path: &str| apsis_testkit::process::http_get(m, path).unwrap();
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();
    assert_eq!(get("/health/live"), (200, "ok\n".to_string()));
    let (code, body) = get("/health/ready");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("still joining its remotes"),
        "{body} after {:?}",
        started.elapsed()
    );
    assert!(get("/metrics").1.contains("apsis_ready 0\n"));
    let t = std::time::Instant::now();
    while get("/health/ready").0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{:?}",
            get("/health/ready")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The TOML's log_file has the node's warning about the remote that never answered.
    let log = std::fs::read_to_string(d.path().join("apsis.log")).unwrap();
    assert!(log.contains("no remote answered yet"), "{log}");
    let v = json(&get("/health/ready").1);
    assert_eq!(v["ready"], true);
    assert_eq!(v["writable"], true);
    assert_eq!(v["backends"]["1"]["state"], "enabled");
    assert_eq!(get("/health/ready?writable").0, 200);
    let metrics = get("/metrics").1;
    assert!(
        metrics.contains("apsis_ready 1\n") && metrics.contains("apsis_writable 1\n"),
        "{metrics}"
    );

    let cli = |args: &[&str]| {
        let o = common::apsis()
            .args(args)
            .args(["-r", &srv.remote()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // Read-only: still ready (reads are served), not writable.
    cli(&["status", "--ro"]);
    let (code, body) = get("/health/ready");
    assert_eq!(
        (code, json(&body)["writable"].clone()),
        (200, false.into()),
        "{body}"
    );
    let (code, body) = get("/health/ready?writable");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("read-only (STATUS RO)"), "{body}");
    assert!(get("/metrics").1.contains("apsis_writable 0\n"));
    cli(&["status", "--rw"]);
    assert_eq!(get("/health/ready?writable").0, 200);
    // No backend enabled: nothing to serve.
    cli(&["backend", "disable", "1"]);
    let (code, body) = get("/health/ready");
    assert_eq!(code, 503, "{body}");
    let v = json(&body);
    assert_eq!(v["backends"]["1"]["state"], "disabled");
    assert!(body.contains("no backend is enabled"), "{body}");
    assert_eq!(get("/health/live").0, 200);
    cli(&["backend", "enable", "1"]);
    assert_eq!(get("/health/ready").0, 200);

    // Stopping: while a request in flight drains (the backend delays it 1.5 s), the node is
    // alive but not ready.
    cli(&["backend", "delay", "1", "1500"]);
    let mut c = std::net::TcpStream::connect(srv.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&raw_request(cmd::LOOKUP, cflags::NEED_ACK, &[]))
        .unwrap();
    // Read by the node (its reader then waits out the delay) before the signal comes.
    std::thread::sleep(Duration::from_millis(200));
    let pid = srv.child.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let t = std::time::Instant::now();
    loop {
        let (code, body) = get("/health/ready");
        if body.contains("the node is stopping") {
            assert_eq!(code, 503);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(1), "{code} {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get("/health/live").0, 200);
    // The request in flight is answered before the connection closes.
    let f = read_frame(&mut c).unwrap();
    assert_eq!(
        (f.header.cmd, f.header.status),
        (cmd::LOOKUP, -errno::ENOENT)
    );
    drop(silent);
}

/// `daemon = true` (Elliptics' `daemon`): `apsis server` returns once the node serves, with
/// where it listens and its pid, and the node goes on in the background, reopens its log on
/// SIGHUP and stops on SIGTERM; a node that cannot start makes the command fail with the
/// reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_returns_once_the_node_serves() {
    let d = tempfile::tempdir().unwrap();
    let config = |addr: &str| {
        let cfg = d.path().join("apsis.toml");
        std::fs::write(
            &cfg,
            format!(
                "[node]\naddresses = [\"{addr}\"]\ndaemon = true\nlog_file = \"{}\"\n\n\
                 [[backend]]\nid = 1\ngroup = 1\ndir = \"{}\"\n",
                d.path().join("apsis.log").display(),
                d.path().join("b1").display()
            ),
        )
        .unwrap();
        cfg
    };
    let cfg = config("127.0.0.1:0");
    let o = common::apsis()
        .args(["server", "-c"])
        .arg(&cfg)
        .env("APSIS_LOG", "info")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let line = |p: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("no {p:?} in {out:?}"))
            .to_string()
    };
    let pid: u32 = line("pid ").parse().unwrap();
    /// Kills the daemon if the test fails before it stops it.
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
    let _reap = Reap(pid);
    let addr: std::net::SocketAddr = line("listening ").parse().unwrap();
    // The command has returned and the node serves.
    let client = apsis_client::Client::connect(&[addr], Default::default())
        .await
        .unwrap();
    let s = client.session(vec![1]);
    s.write(b"bg", b"daemon").await.unwrap();
    assert_eq!(s.read(b"bg", 0, 0).await.unwrap().data, &b"daemon"[..]);
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
    };
    let (log, rotated) = (d.path().join("apsis.log"), d.path().join("apsis.log.1"));
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    // Log rotation as logrotate does it for dnet_ioserv: move the file, SIGHUP. The node
    // lives on and writes a new file where the old one was.
    std::fs::rename(&log, &rotated).unwrap();
    signal("-HUP");
    let t = std::time::Instant::now();
    while !read(&log).contains("log file reopened") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no new log after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alive());
    s.write(b"bg2", b"after").await.unwrap();
    // SIGTERM stops it as it stops a foreground node.
    signal("-TERM");
    let t = std::time::Instant::now();
    while alive() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (old, new) = (read(&rotated), read(&log));
    assert!(
        old.contains("node started") && !old.contains("node stopped"),
        "{old}"
    );
    assert!(
        new.contains("node stopped") && !new.contains("node started"),
        "{new}"
    );

    // A node that cannot start (its address is taken): the command says why and fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(&taken.local_addr().unwrap().to_string());
    let o = common::apsis()
        .args(["server", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn cli_object_and_admin_commands() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &[]);
    let r = srv.remote();
    let run = |args: &[&str], input: Option<&[u8]>| {
        let mut c = common::apsis();
        c.args(args).args(["-r", &r]);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(i) = input {
            child.stdin.take().unwrap().write_all(i).unwrap();
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().unwrap()
    };
    let f = d.path().join("in.bin");
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    std::fs::write(&f, &data).unwrap();
    let o = run(&["write", "obj", f.to_str().unwrap(), "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["bytes"], 100_000);
    let o = run(&["read", "obj"], None);
    assert_eq!(o.stdout, data);
    let o = run(&["write", "piped", "-"], Some(b"from stdin"));
    assert!(o.status.success());
    let o = run(&["read", "piped", "--offset", "5"], None);
    assert_eq!(o.stdout, b"stdin");
    let o = run(&["lookup", "obj", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["size"], 100_000);
    let o = run(&["ls", "--json"], None);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
    // Output into a pipe its reader closed (`apsis ls | head -0`): SIGPIPE ends the
    // command quietly, as it ends Unix tools, instead of a panic in println!.
    let mut c = common::apsis();
    c.args(["ls", "-r", &r])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&["range", "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1], "in id order: {ids:?}");
    let o = run(&["range", "--count", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["count"], 2);
    let o = run(&["range", "--to", "00", "--json"], None);
    assert!(o.stdout.is_empty(), "no id lies in 00..=00ff..ff here");
    let o = run(&["remove", "obj"], None);
    assert!(o.status.success());
    let o = run(&["read", "obj"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("ENOENT"));
    let o = run(&["backend", "status", "--json"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"state\":\"enabled\""));
    // A backend delay shows in the status and slows every command until it is turned off.
    let o = run(&["backend", "delay", "1", "200"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("delay 200 ms"));
    let t = std::time::Instant::now();
    assert!(run(&["lookup", "piped"], None).status.success());
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    let o = run(&["backend", "delay", "1", "0", "--json"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"delay_ms\":0"));
    let o = run(&["routes"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&r));
    let o = run(&["stat", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["commands"]["WRITE"].is_object());
    let o = run(&["stat"], None);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("large frames 0 of 1073741824 B held, 0 waits, 0 stalled"),
        "{out}"
    );
    // Several keys at once, each reported under its name; one not there fails the command.
    assert!(run(&["write", "one-of-two", "-"], Some(b"1"))
        .status
        .success());
    let o = run(&["remove", "one-of-two", "obj"], None);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("one-of-two: group 1: removed"), "{out}");
    assert!(out.contains("obj: ") && out.contains("ENOENT"), "{out}");
    let o = run(&["status", "--ro"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("read-only"));
    let o = run(&["write", "x", "-"], Some(b"1"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("EROFS"));
    let o = run(
        &[
            "bench",
            "--connections",
            "2",
            "--duration",
            "0.5",
            "--keys",
            "20",
            "--write-ratio",
            "0",
            "--json",
        ],
        None,
    );
    assert!(
        !o.status.success(),
        "bench writes fail on a read-only node, reads then find nothing"
    );
    run(&["status", "--rw"], None);
    let pid = srv.child.as_ref().expect("running").id().to_string();
    let o = run(
        &[
            "bench",
            "--connections",
            "2",
            "--duration",
            "0.5",
            "--keys",
            "20",
            "--write-ratio",
            "0.5",
            "--server-pid",
            &pid,
            "--json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["ops"].as_u64().unwrap() > 0);
    assert_eq!(v["errors"], 0);
    // CPU per operation, the tool's and the server's: both present; in clock ticks, so user
    // or system alone may be 0 in a short run, never both, never negative.
    // And how often each side's threads slept per operation (a server waiting for requests
    // sleeps at times), and the host's idle share over the run.
    for side in ["tool", "server"] {
        let c = &v["cpu_us_per_op"][side];
        let (u, s) = (c["user"].as_f64().unwrap(), c["sys"].as_f64().unwrap());
        assert!(u >= 0.0 && s >= 0.0 && u + s > 0.0, "{side}: {c}");
        assert!(c["sleeps"].as_f64().unwrap() > 0.0, "{side}: {c}");
    }
    let idle = v["host_idle"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&idle), "{v}");
    assert_eq!(v["client"], "session");
    // The plain protocol loop: the same requests written and read back on each connection.
    // Its reads check each reply's data against its io_attr; every operation must have moved
    // a whole value (reads their data, writes theirs). 2 KiB values are copied into the
    // batch; 80 KiB ones are written from the tool's buffer after their headers.
    let plain = |value: &str, bytes: f64| {
        let o = run(
            &[
                "bench",
                "--client",
                "plain",
                "--connections",
                "3",
                "--inflight",
                "2",
                "--duration",
                "0.5",
                "--keys",
                "40",
                "--value-size",
                value,
                "--write-ratio",
                "0.3",
                "--json",
            ],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["client"], "plain");
        let ops = v["ops"].as_u64().unwrap();
        assert!(ops > 0);
        assert_eq!(v["errors"], 0);
        let mib = v["mib_per_sec"].as_f64().unwrap() * v["seconds"].as_f64().unwrap();
        assert!(
            (mib * 1024.0 * 1024.0 / (ops as f64 * bytes) - 1.0).abs() < 0.01,
            "{v}"
        );
    };
    plain("2K", 2048.0);
    plain("80K", 81920.0);
    // A miss is a failed request, counted, and the loop goes on with the connection.
    let o = run(
        &[
            "bench",
            "--client",
            "plain",
            "--connections",
            "1",
            "--duration",
            "0.3",
            "--keys",
            "1000000000",
            "--no-prefill",
            "--json",
        ],
        None,
    );
    assert!(!o.status.success(), "only misses: every request failed");
    // One node, one group: a session over two groups is refused up front.
    let o = run(
        &[
            "bench",
            "--client",
            "plain",
            "--groups",
            "1,2",
            "--duration",
            "0.1",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("one group"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&["bench", "--duration", "0.1", "--server-pid", "0"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--server-pid 0"));
}

/// A redis-server of its own (Debian's; `.ci/run` installs it where it can), on a free
/// loopback port, killed when dropped. `None` where there is no `redis-server`.
struct Redis {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        let dir = tempfile::tempdir().unwrap();
        // A port found free and then taken by another test before redis binds it: another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(std::process::Stdio::null())
                .spawn();
            let Ok(mut child) = child else {
                return None; // not installed
            };
            let addr = format!("127.0.0.1:{port}");
            for _ in 0..100 {
                if std::net::TcpStream::connect(&addr).is_ok() {
                    return Some(Redis {
                        child,
                        addr,
                        _dir: dir,
                    });
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on any of five ports");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `apsis bench --target redis`: the RESP loop against a real Redis, its writer and reader
/// tasks on each connection. Every operation moves a whole value (reads their data, writes
/// theirs) and none fails; `--inflight` pipelines requests.
#[test]
fn bench_drives_redis_with_the_resp_loop() {
    let Some(redis) = Redis::start() else {
        eprintln!("no redis-server here: the RESP loop is not tested");
        return;
    };
    let bench = |args: &[&str]| {
        common::apsis()
            .args([
                "bench",
                "--target",
                "redis",
                "--redis",
                &redis.addr,
                "--json",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    for (ratio, inflight) in [("0.3", "3"), ("0", "1"), ("1", "1")] {
        let o = bench(&[
            "--connections=3",
            &format!("--inflight={inflight}"),
            "--duration=0.5",
            "--keys=40",
            "--value-size=2K",
            &format!("--write-ratio={ratio}"),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["client"], "resp");
        let ops = v["ops"].as_u64().unwrap();
        assert!(ops > 0, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
        let bytes = v["mib_per_sec"].as_f64().unwrap() * v["seconds"].as_f64().unwrap();
        assert!(
            (bytes * 1024.0 * 1024.0 / (ops as f64 * 2048.0) - 1.0).abs() < 0.01,
            "{v}"
        );
    }
    // Reads of keys never written get nil: failed requests, counted; the run fails.
    let o = bench(&[
        "--connections=1",
        "--duration=0.3",
        "--keys=1000000000",
        "--no-prefill",
    ]);
    assert!(!o.status.success(), "only misses: every request failed");
}

/// A backend with a cache: CACHE_ONLY never reaches the disk, CACHE writes are written back
/// after `cache_sync_timeout` (and at shutdown), offset writes and appends patch the cached
/// object, a write that bypasses the cache sees the newest data, TTL with
/// CACHE_REMOVE_FROM_DISK removes the object everywhere, and eviction writes back first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_ioflags_write_back_ttl_and_coherence() {
    let d = tempfile::tempdir().unwrap();
    let mut srv = one_backend_server(
        d.path(),
        "sync = -1\ncache_size = \"1M\"\ncache_sync_timeout = 1",
    );
    let s = session(&srv, vec![1]).await;
    let with = |flags: u32| {
        let mut x = s.clone();
        x.ioflags = flags;
        x
    };
    let read = |k: &'static [u8]| {
        let s = s.clone();
        async move { s.read(k, 0, 0).await.map(|r| r.data) }
    };

    // CACHE_ONLY: served from memory (to plain reads too), never on disk.
    with(ioflags::CACHE_ONLY)
        .write_cache(b"volatile", b"in memory", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(read(b"volatile").await.unwrap(), &b"in memory"[..]);

    // CACHE: dirty in the cache; offset writes and APPEND patch the cached object.
    s.write_cache(b"hot", b"v1", Duration::ZERO).await.unwrap();
    s.write_with(b"hot", b"2", ioflags::CACHE, 1).await.unwrap();
    s.write_with(b"hot", b"+", ioflags::CACHE | ioflags::APPEND, 0)
        .await
        .unwrap();
    assert_eq!(read(b"hot").await.unwrap(), &b"v2+"[..]);
    let (_, l) = s.lookup(b"hot").await.unwrap();
    assert_eq!(l.info.size, 3, "lookup sees the cached object");

    // A plain offset write applies to the cached (newest) bytes, not the older disk copy.
    s.write(b"bypass", b"disk-1").await.unwrap();
    s.write_cache(b"bypass", b"cache-2", Duration::ZERO)
        .await
        .unwrap();
    s.write_with(b"bypass", b"X", 0, 1).await.unwrap();
    assert_eq!(read(b"bypass").await.unwrap(), &b"cXche-2"[..]);

    // TTL with CACHE_REMOVE_FROM_DISK: gone from the cache and from the disk.
    s.write(b"ephemeral", b"on disk").await.unwrap();
    with(ioflags::CACHE_REMOVE_FROM_DISK)
        .write_cache(b"ephemeral", b"short-lived", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(read(b"ephemeral").await.unwrap(), &b"short-lived"[..]);

    // DEL drops a dirty entry that never reached the disk.
    s.write_cache(b"gone", b"x", Duration::ZERO).await.unwrap();
    s.remove(b"gone").await.unwrap();
    assert_eq!(status(read(b"gone").await.unwrap_err()), -errno::ENOENT);

    // Eviction (1 MiB in 16 shards, 32 KiB objects) writes dirty entries back first.
    let big = |i: u8| vec![i; 32 << 10];
    for i in 0..40u8 {
        s.write_cache(format!("big{i}").as_bytes(), &big(i), Duration::ZERO)
            .await
            .unwrap();
    }
    for i in 0..40u8 {
        let r = s.read(format!("big{i}").as_bytes(), 0, 0).await.unwrap();
        assert_eq!(r.data, big(i), "big{i}");
    }

    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status(read(b"ephemeral").await.unwrap_err()),
        -errno::ENOENT
    );
    let stats = s
        .monitor_stat(srv.addr, apsis_proto::MonitorStatRequest::BACKEND)
        .await
        .unwrap();
    let c = &stats["backends"]["1"]["cache"];
    assert!(c["evictions"].as_u64() > Some(0), "{c}");
    assert_eq!(
        c["dirty"].as_u64(),
        Some(0),
        "written back after the timeout: {c}"
    );
    assert!(c["written_back"].as_u64() > Some(0), "{c}");
    assert!(c["hits"].as_u64() > Some(0), "{c}");

    // Written at the last moment: SIGTERM writes it back.
    s.write_cache(b"last", b"flushed at shutdown", Duration::ZERO)
        .await
        .unwrap();
    assert!(srv.stop().success());
    srv.restart();
    let s = session(&srv, vec![1]).await;
    let get = |k: &'static [u8]| {
        let s = s.clone();
        async move { s.read(k, 0, 0).await.map(|r| r.data) }
    };
    assert_eq!(get(b"hot").await.unwrap(), &b"v2+"[..]);
    assert_eq!(get(b"bypass").await.unwrap(), &b"cXche-2"[..]);
    assert_eq!(get(b"last").await.unwrap(), &b"flushed at shutdown"[..]);
    for k in [&b"volatile"[..], b"ephemeral", b"gone"] {
        let e = s.read(k, 0, 0).await.unwrap_err();
        assert_eq!(status(e), -errno::ENOENT, "{}", String::from_utf8_lossy(k));
    }
    for i in 0..40u8 {
        let r = s.read(format!("big{i}").as_bytes(), 0, 0).await.unwrap();
        assert_eq!(r.data, big(i), "big{i} after restart");
    }
}

/// READ_RANGE and DEL_RANGE through the client: id order, skip and limit, offset and size,
/// NODATA counts, a removed range is gone and its neighbours stay, a sub-range boundary is
/// inclusive, and a cache's dirty objects are part of the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_range_and_del_range() {
    let d = tempfile::tempdir().unwrap();
    let srv = one_backend_server(d.path(), "cache_size = \"1M\"\ncache_sync_timeout = 600");
    let s = session(&srv, vec![1]).await;
    let mut ids = Vec::new();
    for i in 0..300u32 {
        let key = format!("range-{i}");
        s.write(key.as_bytes(), format!("value-{i:04}").as_bytes())
            .await
            .unwrap();
        ids.push((sha(key.as_bytes()), i));
    }
    // One more, dirty in the cache only (written back after 600 s).
    s.write_cache(b"range-cached", b"value-cach", Duration::ZERO)
        .await
        .unwrap();
    ids.push((sha(b"range-cached"), 9999));
    ids.sort();
    let all = |o: apsis_client::RangeOptions| {
        let s = s.clone();
        async move { s.read_range(1, [0; 64], [0xff; 64], o).await.unwrap() }
    };
    let r = all(Default::default()).await;
    assert_eq!(r.count, 301);
    let got: Vec<[u8; 64]> = r.items.iter().map(|x| x.io.id).collect();
    let want: Vec<[u8; 64]> = ids.iter().map(|x| x.0).collect();
    assert!(got == want, "every object, in id order");
    for (item, (_, i)) in r.items.iter().zip(&ids) {
        let v = if *i == 9999 {
            "value-cach".to_string()
        } else {
            format!("value-{i:04}")
        };
        assert_eq!(item.data, v.as_bytes());
        assert_eq!(item.io.total_size, 10);
    }
    // Skip and limit; offset and size apply to every object.
    let r = all(apsis_client::RangeOptions {
        skip: 10,
        limit: 5,
        offset: 6,
        size: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(r.count, 5);
    let got: Vec<[u8; 64]> = r.items.iter().map(|x| x.io.id).collect();
    assert!(got == want[10..15], "keys 10..15 of the range");
    assert!(r
        .items
        .iter()
        .all(|x| x.data.len() == 2 && x.io.offset == 6));
    // NODATA counts; an offset past every object passes them all over.
    let r = all(apsis_client::RangeOptions {
        nodata: true,
        ..Default::default()
    })
    .await;
    assert_eq!((r.count, r.items.len()), (301, 0));
    let r = all(apsis_client::RangeOptions {
        offset: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(r.count, 0);
    // Bounds are inclusive.
    let r = s
        .read_range(1, want[3], want[7], Default::default())
        .await
        .unwrap();
    assert_eq!(r.count, 5);
    // DEL_RANGE removes exactly its range (after the skip, up to the limit).
    let n = s
        .remove_range(
            1,
            want[100],
            want[199],
            apsis_client::RangeOptions {
                skip: 1,
                limit: 98,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 98);
    let r = all(Default::default()).await;
    assert_eq!(r.count, 301 - 98);
    let left: Vec<[u8; 64]> = r.items.iter().map(|x| x.io.id).collect();
    let mut expect = want.clone();
    expect.drain(101..199);
    assert!(left == expect, "101..199 removed, 100 and 199 kept");
    let gone = ids.iter().position(|x| x.0 == want[150]).unwrap();
    let key = format!("range-{}", ids[gone].1);
    assert_eq!(
        status(s.read(key.as_bytes(), 0, 0).await.unwrap_err()),
        -errno::ENOENT
    );
    // Begin after end.
    assert_eq!(
        status(
            s.read_range(1, [1; 64], [0; 64], Default::default())
                .await
                .unwrap_err()
        ),
        -errno::ERANGE
    );
}

/// BACKEND_CONTROL STOP_DEFRAG stops a throttled pass part way; nothing is lost, a second
/// stop is −EALREADY, and a new pass can start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_defrag_stops_a_running_pass() {
    let d = tempfile::tempdir().unwrap();
    let srv = one_backend_server(
        d.path(),
        "blob_size = \"1M\"\ndefrag_percentage = 10\ndefrag_rate = \"100k\"",
    );
    let s = session(&srv, vec![1]).await;
    let value = |i: u32, round: u32| vec![(i + round) as u8; 4000];
    for i in 0..600 {
        s.write(format!("d{i}").as_bytes(), &value(i, 0))
            .await
            .unwrap();
    }
    for i in (0..600).step_by(2) {
        s.write(format!("d{i}").as_bytes(), &value(i, 1))
            .await
            .unwrap();
    }
    let cmd = |name| apsis_client::Session::backend_command(name).unwrap();
    let stop = cmd("stop-defrag");
    assert_eq!(
        status(
            s.backend_control(srv.addr, 1, stop, vec![])
                .await
                .unwrap_err()
        ),
        -errno::EALREADY,
        "nothing to stop"
    );
    let st = s
        .backend_control(srv.addr, 1, cmd("defrag"), vec![])
        .await
        .unwrap();
    assert_eq!(st.defrag_state, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.backend_control(srv.addr, 1, stop, vec![]).await.unwrap();
    let t = std::time::Instant::now();
    loop {
        let st = s.backend_status(srv.addr).await.unwrap();
        if st[0].defrag_state == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "defrag did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..600 {
        let want = value(i, (i % 2 == 0) as u32);
        assert_eq!(
            s.read(format!("d{i}").as_bytes(), 0, 0).await.unwrap().data,
            want
        );
    }
    let tmp = std::fs::read_dir(d.path().join("b1"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(tmp, 0, "the partial copy is removed");
    s.backend_control(srv.addr, 1, cmd("defrag"), vec![])
        .await
        .unwrap();
}

/// Many requests multiplexed on one connection are each answered, with some of them cancelled
/// while they wait (their late replies are discarded, not given to another request), and a
/// connection left idle still sees the node go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_share_one_connection_and_an_idle_one_sees_the_node_go() {
    let d = tempfile::tempdir().unwrap();
    let mut srv = Server::start(d.path(), &[]);
    let s = session(&srv, vec![1]).await;
    for i in 0..64u32 {
        s.write(format!("k{i}").as_bytes(), &i.to_le_bytes())
            .await
            .unwrap();
    }
    let read_all = |cancel: bool| {
        let mut set = tokio::task::JoinSet::new();
        for n in 0..256u32 {
            let s = s.clone();
            set.spawn(async move {
                let key = format!("k{}", n % 64);
                if cancel && n % 3 == 0 {
                    // Dropped part way: before its frame is sent, or while it waits.
                    let wait = Duration::from_micros(u64::from(n) * 7 % 400);
                    let _ = tokio::time::timeout(wait, s.read(key.as_bytes(), 0, 0)).await;
                    return;
                }
                let r = s.read(key.as_bytes(), 0, 0).await.unwrap();
                assert_eq!(r.data, &(n % 64).to_le_bytes()[..]);
            });
        }
        set
    };
    for cancel in [false, true, false, true] {
        let all = tokio::time::timeout(Duration::from_secs(20), read_all(cancel).join_all());
        all.await.expect("every request answered");
    }
    assert_eq!(s.client().nodes(), vec![srv.addr]);

    // Idle now: nothing is waiting on the connection. The node going away still closes it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.kill9();
    let gone = async {
        while !s.client().nodes().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), gone)
        .await
        .expect("the idle connection saw the node go");
}

/// Replies wait for their worker thread to run the tasks it had ready and go out together
/// (`batch`): on a node with one worker, 150 connections (more than a batch takes) each
/// pipeline writes and reads of keys of their own, and every reply comes back, right; then,
/// with the node idle, a lone request is answered at once, not when something else happens.
#[test]
fn batched_replies_all_go_out_and_a_lone_request_does_not_wait() {
    let d = tempfile::tempdir().unwrap();
    // One worker: every connection queues on the same thread.
    let cfg = d.path().join("apsis.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\naddresses = [\"127.0.0.1:0\"]\nworker_threads = 1\n\n[[backend]]\n\
             id = 1\ngroup = 1\ndir = \"{}\"\n",
            d.path().join("b1").display()
        ),
    )
    .unwrap();
    let srv = Server::spawn(
        d.path(),
        vec!["server".into(), "-c".into(), cfg.display().to_string()],
    );
    let read_req = |id: [u8; 64], trans: u64| {
        let io = apsis_proto::IoAttr {
            id,
            parent: id,
            ..Default::default()
        };
        let mut h = apsis_proto::Header::new(cmd::READ, 0);
        (h.id, h.group, h.trans) = (id, 1, trans);
        h.size = apsis_proto::IoAttr::SIZE as u64;
        let mut v = h.encode().to_vec();
        v.extend_from_slice(&io.encode());
        v
    };
    let addr = srv.addr;
    let clients: Vec<_> = (0..150u64)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let ids: Vec<_> = (0..4u64)
                    .map(|k| sha(format!("{c}/{k}").as_bytes()))
                    .collect();
                let mut batch = Vec::new();
                for (k, id) in ids.iter().enumerate() {
                    batch.extend(raw_write(*id, format!("v{c}/{k}").as_bytes(), 0, k as u64));
                }
                for (k, id) in ids.iter().enumerate() {
                    batch.extend(read_req(*id, 100 + k as u64));
                }
                s.write_all(&batch).unwrap();
                let mut got = std::collections::BTreeMap::new();
                while got.len() < 8 {
                    let f = read_frame(&mut s).expect("every reply comes back");
                    assert_eq!(f.header.status, 0);
                    if f.header.flags & cflags::MORE == 0 {
                        got.insert(f.header.trans, f);
                    }
                }
                for k in 0..4u64 {
                    let f = &got[&(100 + k)];
                    assert_eq!(
                        &f.payload[apsis_proto::IoAttr::SIZE..],
                        format!("v{c}/{k}").as_bytes()
                    );
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // Idle: nothing else is ready, so the reply's batch is written at once.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = std::time::Instant::now();
    s.write_all(&read_req(sha(b"0/0"), 7)).unwrap();
    let f = read_frame(&mut s).unwrap();
    assert_eq!((f.header.trans, f.header.status), (7, 0));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "a lone request took {:?}",
        t.elapsed()
    );
}
