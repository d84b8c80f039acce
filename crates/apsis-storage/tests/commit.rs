//! The asynchronous group commit ([`apsis_storage::blob::Committer`]): a waiter is settled
//! only once its write survives a crash; a failed sync fails the waiters it covered; syncs are
//! shared; dropping the committer settles what is queued.

use apsis_storage::blob::Committer;
use apsis_storage::*;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

fn key(i: u64) -> Key {
    Key::from_name(b"commit", format!("k{i}").as_bytes())
}

fn value(i: u64) -> Vec<u8> {
    (0..300).map(|j| (i as usize * 31 + j * 7) as u8).collect()
}

fn put(b: &BlobBackend, i: u64) {
    b.write(
        &key(i),
        &WriteRequest {
            data: &value(i),
            timestamp: Timestamp::new(1000 + i, 0),
            ..Default::default()
        },
    )
    .unwrap();
}

/// What the committer's thread would run under the node: `sync = -1`, no background thread.
fn open(dir: &SimDir) -> Arc<BlobBackend> {
    let cfg = BlobConfig {
        sync: -1,
        blob_size: 1 << 20,
        background: false,
        ..Default::default()
    };
    Arc::new(BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap().0)
}

/// A committer that reports each settled waiter with its sync's outcome.
fn committer(b: &Arc<BlobBackend>) -> (Committer<u64>, mpsc::Receiver<(u64, bool)>) {
    let (tx, rx) = mpsc::channel();
    let c = Committer::start(b, "commit-test".into(), move |batch: Vec<u64>, r| {
        for w in batch {
            let _ = tx.send((w, r.is_ok()));
        }
    })
    .unwrap();
    (c, rx)
}

#[test]
fn a_settled_write_survives_a_crash_and_syncs_are_shared() {
    let dir = SimDir::new();
    let b = open(&dir);
    let (c, rx) = committer(&b);
    // 8 writers, each writing then submitting, 40 times, concurrently.
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (b, c) = (&b, &c);
            s.spawn(move || {
                for i in 0..40 {
                    let n = t * 1000 + i;
                    put(b, n);
                    c.submit(n);
                }
            });
        }
    });
    let mut settled = Vec::new();
    for _ in 0..320 {
        let (n, ok) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(ok);
        settled.push(n);
    }
    let syncs = dir.sync_count();
    assert!((1..320).contains(&syncs), "{syncs} syncs for 320 waiters");
    // Power fails: whatever was not synced is dropped, torn or bit-flipped at random.
    dir.power_off();
    drop(c);
    drop(b);
    let mut rng = fastrand::Rng::with_seed(7);
    dir.crash(&mut |n| rng.u64(..n.max(1)), true);
    let b = open(&dir);
    for n in settled {
        let r = b.read(&key(n), &ReadRequest::default()).unwrap();
        assert_eq!(r.data, value(n), "settled write {n}");
    }
}

#[test]
fn a_failed_sync_fails_the_waiters_it_covered() {
    let dir = SimDir::new();
    let b = open(&dir);
    let (c, rx) = committer(&b);
    put(&b, 1);
    c.submit(1);
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), (1, true));
    dir.fail_next_sync();
    put(&b, 2);
    c.submit(2);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        (2, false)
    );
    // The backend refuses writes from then on; later waiters fail too.
    assert!(b.stats().poisoned.is_some());
    c.submit(3);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        (3, false)
    );
}

#[test]
fn dropping_the_committer_settles_what_is_queued() {
    let dir = SimDir::new();
    let b = open(&dir);
    let (c, rx) = committer(&b);
    for n in 0..5 {
        put(&b, n);
        c.submit(n);
    }
    drop(c);
    let mut got: Vec<u64> = (0..5)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .map(|(n, ok)| {
            assert!(ok);
            n
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    // The thread stopped (its end of the channel is gone).
    assert!(rx.recv_timeout(Duration::from_secs(10)).is_err());
    // With the engine gone, a sync fails instead of pretending.
    let (c, rx) = committer(&b);
    drop(b);
    c.submit(9);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        (9, false)
    );
}
