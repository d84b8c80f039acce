//! Faults one at a time: a failed fsync, a full disk, bit rot, damaged index files, power
//! lost in the middle of defrag; plus group commit, defrag under concurrent writes and
//! iteration resumed across a restart. The random-crash model is in `model.rs`.

use apsis_storage::blob::format::{IndexHeader, RecordHeader};
use apsis_storage::blob::scan::Scanner;
use apsis_storage::*;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn key(i: u64) -> Key {
    Key::from_name(b"faults", format!("k{i}").as_bytes())
}

fn put(b: &dyn Backend, i: u64, data: &[u8]) -> Result<RecordInfo> {
    b.write(
        &key(i),
        &WriteRequest {
            data,
            timestamp: Timestamp::new(1000 + i, 0),
            ..Default::default()
        },
    )
}

fn get(b: &dyn Backend, i: u64) -> Result<Vec<u8>> {
    b.read(&key(i), &ReadRequest::default()).map(|r| r.data)
}

fn value(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect()
}

fn sim(cfg: BlobConfig) -> (SimDir, BlobBackend) {
    let dir = SimDir::new();
    let b = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap().0;
    (dir, b)
}

/// Bases of 64 KiB: a few records each, so tests span many bases.
fn small_bases(sync: i64) -> BlobConfig {
    BlobConfig {
        blob_size: 64 << 10,
        ..quiet(sync)
    }
}

fn quiet(sync: i64) -> BlobConfig {
    BlobConfig {
        sync,
        blob_size: 1 << 20,
        background: false,
        defrag_rate_bytes: 0,
        ..Default::default()
    }
}

/// The flusher's write of the buffer (without the writer lock) fails: the backend refuses
/// writes from then on, and the records it held are still read from the handed-over buffer.
#[test]
fn a_failed_background_flush_poisons_and_its_records_stay_readable() {
    let (dir, b) = sim(quiet(-1));
    put(&b, 1, &value(1, 500)).unwrap();
    b.maintenance().unwrap(); // on the device
    put(&b, 2, &value(2, 500)).unwrap(); // only in the buffer
    dir.power_off();
    let e = b.maintenance().unwrap_err();
    assert!(matches!(e, StorageError::Poisoned(_)), "{e:?}");
    assert!(b.stats().poisoned.is_some());
    assert_eq!(get(&b, 1).unwrap(), value(1, 500));
    assert_eq!(get(&b, 2).unwrap(), value(2, 500));
    assert!(matches!(
        put(&b, 3, b"x").unwrap_err(),
        StorageError::Poisoned(_)
    ));
    assert!(matches!(b.sync().unwrap_err(), StorageError::Poisoned(_)));
    // Nothing of it claimed durable; a restart serves what reached the device.
    drop(b);
    let mut rng = fastrand::Rng::with_seed(3);
    dir.crash(&mut |n| rng.u64(..n.max(1)), false);
    let b = BlobBackend::open(Arc::new(dir.clone()), quiet(-1))
        .unwrap()
        .0;
    assert!(matches!(get(&b, 3), Err(StorageError::NotFound)));
    put(&b, 4, b"after").unwrap();
}

/// A sync writes the buffer the same way (handed over, written without the writer lock):
/// when that write fails, the sync fails, nothing after it is acknowledged, and the records
/// the buffer held are still read from it.
#[test]
fn a_failed_buffer_write_at_a_sync_poisons_and_its_records_stay_readable() {
    let (dir, b) = sim(quiet(-1));
    put(&b, 1, &value(1, 700)).unwrap();
    b.sync().unwrap();
    put(&b, 2, &value(2, 700)).unwrap(); // only in the buffer
    dir.power_off();
    assert!(matches!(b.sync().unwrap_err(), StorageError::Poisoned(_)));
    assert!(b.stats().poisoned.is_some());
    assert_eq!(get(&b, 1).unwrap(), value(1, 700));
    assert_eq!(get(&b, 2).unwrap(), value(2, 700));
    assert!(matches!(
        put(&b, 3, b"x").unwrap_err(),
        StorageError::Poisoned(_)
    ));
    drop(b);
    let b = BlobBackend::open(Arc::new(dir.clone()), quiet(-1))
        .unwrap()
        .0;
    assert_eq!(
        get(&b, 1).unwrap(),
        value(1, 700),
        "synced before the failure"
    );
}

#[test]
fn a_failed_fsync_poisons_the_backend_and_reads_go_on() {
    let (dir, b) = sim(quiet(0));
    put(&b, 1, b"before").unwrap();
    dir.fail_next_sync();
    let e = put(&b, 2, b"lost?").unwrap_err();
    assert!(matches!(e, StorageError::Poisoned(_)), "{e:?}");
    assert_eq!(e.errno(), -5);
    // Every later write is refused, even when fsync would work again.
    assert!(matches!(
        put(&b, 3, b"x").unwrap_err(),
        StorageError::Poisoned(_)
    ));
    assert!(matches!(b.sync().unwrap_err(), StorageError::Poisoned(_)));
    assert!(b.stats().poisoned.is_some());
    assert_eq!(get(&b, 1).unwrap(), b"before");
    // A restart (the operator's fix) serves everything acknowledged.
    drop(b);
    let b = BlobBackend::open(Arc::new(dir.clone()), quiet(0))
        .unwrap()
        .0;
    assert_eq!(get(&b, 1).unwrap(), b"before");
    put(&b, 4, b"after").unwrap();
}

#[test]
fn a_full_disk_is_enospc_and_nothing_is_half_written() {
    for buffer in [0usize, 1 << 20] {
        let cfg = BlobConfig {
            blob_size: 256 << 10,
            write_buffer_bytes: buffer,
            ..quiet(0)
        };
        let dir = SimDir::new();
        dir.set_capacity(Some(900 << 10));
        let b = BlobBackend::open(Arc::new(dir.clone()), cfg.clone())
            .unwrap()
            .0;
        let mut acked = Vec::new();
        let mut err = None;
        for i in 0..1000 {
            match put(&b, i, &value(i, 20_000)) {
                Ok(_) => acked.push(i),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let e = err.expect("the disk fills up");
        assert!(
            matches!(e, StorageError::NoSpace(_)),
            "buffer {buffer}: {e:?}"
        );
        assert_eq!(e.errno(), -28);
        assert!(acked.len() > 10);
        // The backend is not poisoned: reads work, and so do writes that fit.
        assert!(b.stats().poisoned.is_none());
        for &i in &acked {
            assert_eq!(get(&b, i).unwrap(), value(i, 20_000));
        }
        // Freeing space (here: more capacity) lets writes go on.
        dir.set_capacity(None);
        put(&b, 5000, b"room again").unwrap();
        drop(b);
        let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap();
        assert_eq!(report.damaged_records, 0, "{report:?}");
        for &i in &acked {
            assert_eq!(get(&b, i).unwrap(), value(i, 20_000));
        }
        assert_eq!(get(&b, 5000).unwrap(), b"room again");
    }
}

/// A disk with less room than one whole base (`blob_size`): the backend still opens and takes
/// records until the disk is really full, reserving space record by record. Buffered records
/// are reserved before they are acknowledged, so the flush never meets ENOSPC and the backend
/// is never poisoned.
#[test]
fn a_disk_smaller_than_a_base_fills_record_by_record() {
    for (sync, buffer) in [(-1, 1usize << 20), (0, 0)] {
        let cfg = BlobConfig {
            blob_size: 64 << 20,
            write_buffer_bytes: buffer,
            ..quiet(sync)
        };
        let dir = SimDir::new();
        dir.set_capacity(Some(2 << 20));
        let b = BlobBackend::open(Arc::new(dir.clone()), cfg.clone())
            .expect("a backend opens on a disk smaller than one base")
            .0;
        let mut acked = Vec::new();
        let e = loop {
            let i = acked.len() as u64;
            match put(&b, i, &value(i, 10_000)) {
                Ok(_) => acked.push(i),
                Err(e) => break e,
            }
        };
        assert!(matches!(e, StorageError::NoSpace(_)), "sync {sync}: {e:?}");
        // Nearly all of the 2 MiB holds records (8 MiB steps could not be reserved).
        assert!(
            acked.len() > 150,
            "sync {sync}: only {} records",
            acked.len()
        );
        b.sync().unwrap();
        assert!(b.stats().poisoned.is_none(), "sync {sync}");
        for &i in &acked {
            assert_eq!(get(&b, i).unwrap(), value(i, 10_000));
        }
        dir.set_capacity(Some(4 << 20));
        put(&b, 9999, b"room again").unwrap();
        drop(b);
        // A restart on the still nearly full disk serves everything.
        let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap();
        assert_eq!(report.damaged_records, 0, "{report:?}");
        for &i in &acked {
            assert_eq!(get(&b, i).unwrap(), value(i, 10_000));
        }
        assert_eq!(get(&b, 9999).unwrap(), b"room again");
    }
}

#[test]
fn a_size_limit_is_enospc_too() {
    let (_dir, b) = sim(BlobConfig {
        size_limit_bytes: 300 << 10,
        ..quiet(-1)
    });
    let mut n = 0;
    let e = loop {
        match put(&b, n, &value(n, 10_000)) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(e, StorageError::NoSpace(_)), "{e:?}");
    assert!(n >= 25, "{n} records fit under a 300 KiB limit");
}

#[test]
fn bit_rot_in_data_is_eilseq_and_never_returned() {
    let (dir, b) = sim(quiet(0));
    let data = value(7, 200_000); // four checksum chunks
    let info = put(&b, 7, &data).unwrap();
    put(&b, 8, b"neighbour").unwrap();
    // Flip one bit in the third chunk.
    dir.flip_bit("data-00000001.blob", info.offset + 150_000, 3);
    let e = get(&b, 7).unwrap_err();
    assert!(matches!(e, StorageError::Corrupt(_)), "{e:?}");
    assert_eq!(e.errno(), -84);
    // Ranges that avoid the damaged chunk still read; ones that touch it do not.
    let r = b
        .read(
            &key(7),
            &ReadRequest {
                offset: 0,
                size: 100_000,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.data, &data[..100_000]);
    assert!(b
        .read(
            &key(7),
            &ReadRequest {
                offset: 140_000,
                size: 20_000,
                ..Default::default()
            }
        )
        .is_err());
    // A plain lookup answers; a lookup with checksum is EILSEQ (the Elliptics rule).
    assert_eq!(b.lookup(&key(7), false).unwrap().size, 200_000);
    assert!(matches!(
        b.lookup(&key(7), true),
        Err(StorageError::Corrupt(_))
    ));
    // NOCSUM reads skip verification and return the stored bytes.
    let raw = b
        .read(
            &key(7),
            &ReadRequest {
                nocsum: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_ne!(raw.data, data);
    assert_eq!(get(&b, 8).unwrap(), b"neighbour");
    // Iteration reports the damaged record instead of returning it.
    let batch = b.iterate(&IterRequest::default(), None).unwrap();
    let it = batch.items.iter().find(|i| i.info.key == key(7)).unwrap();
    assert!(it.corrupt);
    // A rewrite heals the key.
    put(&b, 7, b"fresh").unwrap();
    assert_eq!(get(&b, 7).unwrap(), b"fresh");
}

#[test]
fn bit_rot_in_a_header_loses_only_that_record() {
    let (dir, b) = sim(quiet(0));
    let infos: Vec<_> = (0..5)
        .map(|i| put(&b, i, &value(i, 500)).unwrap())
        .collect();
    // The header starts 128 + 8 bytes before the data (one checksum, padded).
    let header = infos[2].offset - 136;
    dir.flip_bit("data-00000001.blob", header + 90, 1);
    assert!(matches!(get(&b, 2), Err(StorageError::Corrupt(_))));
    drop(b);
    dir.power_off();
    dir.crash(&mut |n| n - 1, false);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), quiet(0)).unwrap();
    // The scan skips the damaged header and finds the records after it.
    assert_eq!(report.open_base_records, 4, "{report:?}");
    for i in [0, 1, 3, 4] {
        assert_eq!(get(&b, i).unwrap(), value(i, 500));
    }
    assert!(matches!(get(&b, 2), Err(StorageError::NotFound)));
}

/// A base found at start may hold a record damaged before the crash; recovery leaves it out,
/// and so must the base's index when the base is closed later (records written since start
/// are not checked again: no crash can have torn them).
#[test]
fn a_damaged_record_found_at_start_stays_out_of_its_base_index() {
    let (dir, b) = sim(quiet(0));
    put(&b, 1, &value(1, 500)).unwrap();
    b.rotate().unwrap();
    let torn = put(&b, 1, &value(2, 500)).unwrap();
    put(&b, 2, &value(3, 500)).unwrap();
    dir.flip_bit("data-00000002.blob", torn.offset + 10, 4);
    dir.power_off();
    drop(b);
    dir.crash(&mut |n| n - 1, false);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), quiet(0)).unwrap();
    assert_eq!(report.damaged_records, 1, "{report:?}");
    assert_eq!(get(&b, 1).unwrap(), value(1, 500));
    // Closed now, by a process that did not write the damaged record.
    put(&b, 3, &value(4, 500)).unwrap();
    b.rotate().unwrap();
    put(&b, 4, &value(5, 500)).unwrap();
    b.rotate().unwrap();
    drop(b);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), quiet(0)).unwrap();
    assert_eq!(report.indexes_rebuilt, 0, "{report:?}");
    assert_eq!(get(&b, 1).unwrap(), value(1, 500));
    for (i, v) in [(2, 3), (3, 4), (4, 5)] {
        assert_eq!(get(&b, i).unwrap(), value(v, 500));
    }
}

#[test]
fn damaged_or_stale_index_files_are_rebuilt() {
    let cfg = small_bases(-1);
    let (dir, b) = sim(cfg.clone());
    for i in 0..100 {
        put(&b, i, &value(i, 3000)).unwrap();
    }
    drop(b);
    let indexes: Vec<String> = dir
        .files()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.ends_with(".index"))
        .collect();
    assert!(indexes.len() >= 3, "{indexes:?}");
    // Damage one index body and one index header.
    dir.flip_bit(&indexes[0], 100, 0);
    dir.flip_bit(&indexes[1], 3, 0);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap();
    assert!(report.indexes_rebuilt >= 1, "{report:?}");
    for i in 0..100 {
        assert_eq!(get(&b, i).unwrap(), value(i, 3000), "key {i}");
    }
}

/// The index load split by key range over threads finds exactly what one thread finds (the
/// newest version of each key across bases, tombstones, prepared records, per-base counts),
/// and a damaged index file is still caught (its checksum spans all parts) and rebuilt.
#[test]
fn an_index_load_split_over_threads_matches_a_single_threaded_one() {
    let cfg = small_bases(-1);
    let (dir, b) = sim(cfg.clone());
    // Versions of each key spread over many bases; some removed; some prepared only.
    for round in 0..3 {
        for i in 0..400 {
            if (i + round) % 3 != 0 {
                put(&b, i, &value(i * 10 + round, 400)).unwrap();
            }
        }
    }
    for i in (0..400).step_by(7) {
        let req = RemoveRequest {
            timestamp: Timestamp::new(5000, 0),
            ..Default::default()
        };
        b.remove(&key(i), &req).unwrap();
    }
    for i in 1000..1010 {
        let req = WriteRequest {
            data: b"reserved",
            prepare: Some(4096),
            timestamp: Timestamp::new(6000, 0),
            ..Default::default()
        };
        b.write(&key(i), &req).unwrap();
    }
    drop(b);
    let load = |threads: usize| {
        let cfg = BlobConfig {
            load_threads: threads,
            ..cfg.clone()
        };
        let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap();
        let reads: Vec<_> = (0..400)
            .chain(1000..1010)
            .map(|i| format!("{:?}", get(&b, i)))
            .collect();
        let st = b.stats();
        let counts = (st.records, st.removed_records, st.uncommitted_records);
        (reads, counts, st.bases, report.indexes_rebuilt)
    };
    let one = load(1);
    assert!(one.2.len() >= 8, "{} bases", one.2.len());
    assert!(
        one.1 .0 > 200 && one.1 .1 > 40 && one.1 .2 == 10,
        "{:?}",
        one.1
    );
    for threads in [2, 3, 7] {
        assert_eq!(load(threads), one, "{threads} threads");
    }
    // Damage an entry in the middle of an index file: caught whatever part read it.
    let index = dir
        .files()
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| n.ends_with(".index") && !n.contains(&format!("{:08}", one.2.len())))
        .expect("a closed base's index");
    dir.flip_bit(&index, 64 + 80 * 20 + 70, 3);
    let (reads, counts, bases, rebuilt) = load(3);
    assert_eq!(rebuilt, 1);
    assert_eq!((reads, counts, bases), (one.0, one.1, one.2));
}

/// A closed base whose every record was superseded is dropped without being read, and only
/// after the versions that superseded its records are durable: power lost right after the
/// defrag (under `sync = -1`) loses nothing.
#[test]
fn defrag_drops_wholly_superseded_bases_and_a_crash_after_loses_nothing() {
    let cfg = small_bases(-1);
    let (dir, b) = sim(cfg.clone());
    for i in 0..100 {
        put(&b, i, &value(i, 3000)).unwrap();
    }
    let old_bases = b.stats().bases.len();
    // Every key rewritten: the first bases now hold nothing current.
    for i in 0..100 {
        put(&b, i, &value(i + 1000, 3000)).unwrap();
    }
    // A tombstone in a base that otherwise holds only superseded records keeps it.
    let req = RemoveRequest {
        timestamp: Timestamp::new(9000, 0),
        ..Default::default()
    };
    b.remove(&key(5), &req).unwrap();
    let report = b.defrag_with_threshold(0.1).unwrap();
    assert!(
        report.bases_deleted as usize >= old_bases - 2,
        "{report:?} of {old_bases} bases"
    );
    let left: Vec<String> = dir.files().into_iter().map(|(n, _)| n).collect();
    assert!(!left.iter().any(|n| n == "data-00000001.blob"), "{left:?}");
    dir.power_off();
    drop(b);
    let mut rng = fastrand::Rng::with_seed(5);
    dir.crash(&mut |n| rng.u64(..n.max(1)), true);
    let b = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap().0;
    for i in (0..100).filter(|&i| i != 5) {
        assert_eq!(get(&b, i).unwrap(), value(i + 1000, 3000), "key {i}");
    }
    assert!(matches!(get(&b, 5), Err(StorageError::NotFound)));
}

#[test]
fn power_lost_during_defrag_loses_nothing() {
    let cfg = small_bases(0);
    for writes_before_power_loss in [0u64, 1, 2, 3, 5, 8, 13] {
        let (dir, b) = sim(cfg.clone());
        for i in 0..60 {
            put(&b, i, &value(i, 2000)).unwrap();
        }
        for i in (0..60).step_by(2) {
            put(&b, i, &value(i + 1000, 1500)).unwrap();
        }
        for i in (1..60).step_by(6) {
            b.remove(
                &key(i),
                &RemoveRequest {
                    timestamp: Timestamp::new(5000, 0),
                    always_record: false,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        dir.lose_power_after_writes(writes_before_power_loss);
        let _ = b.defrag_with_threshold(0.0);
        dir.power_off();
        drop(b);
        let mut r = fastrand::Rng::with_seed(writes_before_power_loss);
        dir.crash(&mut |n| r.u64(0..n), true);
        let b = BlobBackend::open(Arc::new(dir.clone()), cfg.clone())
            .unwrap()
            .0;
        for i in 0..60 {
            let want = if i % 6 == 1 {
                None
            } else if i % 2 == 0 {
                Some(value(i + 1000, 1500))
            } else {
                Some(value(i, 2000))
            };
            let got = match get(&b, i) {
                Ok(v) => Some(v),
                Err(StorageError::NotFound) => None,
                Err(e) => panic!("key {i}: {e}"),
            };
            assert!(
                got == want,
                "power lost after {writes_before_power_loss} defrag writes: key {i}"
            );
        }
    }
}

#[test]
fn defrag_reclaims_space_while_writers_go_on() {
    let cfg = BlobConfig {
        blob_size: 256 << 10,
        ..quiet(-1)
    };
    let (dir, b) = sim(cfg.clone());
    let b = Arc::new(b);
    for i in 0..400 {
        put(&*b, i, &value(i, 2000)).unwrap();
    }
    for i in 0..300 {
        put(&*b, i, &value(i + 7, 2100)).unwrap();
    }
    b.rotate().unwrap();
    let before = b.stats();
    assert!(before.dead_bytes > 500_000, "{:?}", before.dead_bytes);
    let disk_before: u64 = dir.files().iter().map(|f| f.1).sum();
    let writer = {
        let b = b.clone();
        std::thread::spawn(move || {
            for round in 0..3u64 {
                for i in (0..400).step_by(3) {
                    put(&*b, i, &value(i + round * 100, 900)).unwrap();
                }
            }
        })
    };
    let report = b.defrag_with_threshold(0.1).unwrap();
    writer.join().unwrap();
    assert!(report.bases_rewritten >= 1, "{report:?}");
    assert!(report.bytes_reclaimed > 400_000, "{report:?}");
    let expect = |i: u64| {
        if i % 3 == 0 {
            value(i + 200, 900)
        } else if i < 300 {
            value(i + 7, 2100)
        } else {
            value(i, 2000)
        }
    };
    for i in 0..400 {
        assert_eq!(get(&*b, i).unwrap(), expect(i), "key {i}");
    }
    let b = Arc::try_unwrap(b).ok().expect("one owner");
    drop(b);
    let disk_after: u64 = dir.files().iter().map(|f| f.1).sum();
    let b = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap().0;
    for i in 0..400 {
        assert_eq!(get(&b, i).unwrap(), expect(i), "key {i} after restart");
    }
    let s = b.stats();
    assert_eq!(s.records, 400);
    assert!(
        disk_after < disk_before,
        "defrag must shrink the files: {disk_before} -> {disk_after}"
    );
}

#[test]
fn a_stopped_defrag_leaves_every_base_whole() {
    // 200 KB/s: the first base takes seconds, so the stop lands inside it.
    let cfg = BlobConfig {
        blob_size: 256 << 10,
        defrag_rate_bytes: 200_000,
        ..quiet(-1)
    };
    let (dir, b) = sim(cfg.clone());
    let b = Arc::new(b);
    assert!(!b.stop_defrag(), "nothing to stop");
    for i in 0..400 {
        put(&*b, i, &value(i, 2000)).unwrap();
    }
    for i in (0..400).step_by(2) {
        put(&*b, i, &value(i + 1, 2000)).unwrap();
    }
    b.rotate().unwrap();
    let pass = {
        let b = b.clone();
        std::thread::spawn(move || b.defrag_with_threshold(0.1))
    };
    let t = std::time::Instant::now();
    while !b.stats().defrag_running {
        assert!(t.elapsed() < Duration::from_secs(5), "defrag never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(b.stop_defrag());
    let report = pass.join().unwrap().unwrap();
    assert!(report.stopped, "{report:?}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the stop must not wait for the pass"
    );
    assert!(!b.stats().defrag_running);
    let expect = |i: u64| value(if i % 2 == 0 { i + 1 } else { i }, 2000);
    for i in 0..400 {
        assert_eq!(get(&*b, i).unwrap(), expect(i), "key {i}");
    }
    assert!(
        !dir.files().iter().any(|f| f.0.ends_with(".tmp")),
        "the partial copy is removed: {:?}",
        dir.files()
    );
    // A later pass runs to its end, and a restart finds everything.
    let b = Arc::try_unwrap(b).ok().expect("one owner");
    drop(b);
    let fast = BlobConfig {
        defrag_rate_bytes: 0,
        ..cfg
    };
    let b = BlobBackend::open(Arc::new(dir.clone()), fast).unwrap().0;
    let report = b.defrag_with_threshold(0.1).unwrap();
    assert!(!report.stopped && report.bases_rewritten >= 1, "{report:?}");
    for i in 0..400 {
        assert_eq!(get(&b, i).unwrap(), expect(i), "key {i} after restart");
    }
}

/// A directory that counts fsyncs, over real files.
struct CountingDir {
    inner: FileDir,
    syncs: Arc<AtomicU64>,
}
struct CountingDevice {
    inner: Arc<dyn Device>,
    syncs: Arc<AtomicU64>,
}
impl Device for CountingDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync()
    }
    /// Not counted: it writes back its own bytes, not the file's.
    fn write_durable_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_durable_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
}
impl Dir for CountingDir {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn Device>> {
        Ok(Arc::new(CountingDevice {
            inner: self.inner.open(name, create)?,
            syncs: self.syncs.clone(),
        }))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
    fn free_space(&self) -> io::Result<u64> {
        self.inner.free_space()
    }
}

#[test]
fn group_commit_shares_fsyncs_between_concurrent_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let syncs = Arc::new(AtomicU64::new(0));
    let dir = CountingDir {
        inner: FileDir::open(tmp.path()).unwrap(),
        syncs: syncs.clone(),
    };
    let b = Arc::new(
        BlobBackend::open(
            Arc::new(dir),
            BlobConfig {
                sync: 0,
                blob_size: 64 << 20,
                background: false,
                ..Default::default()
            },
        )
        .unwrap()
        .0,
    );
    let start = syncs.load(Ordering::Relaxed);
    let threads = 16;
    let per_thread = 40;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                for j in 0..per_thread {
                    put(&*b, t * 1000 + j, &[t as u8; 1024]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let used = syncs.load(Ordering::Relaxed) - start;
    let writes = threads * per_thread;
    // Every acknowledged write was covered by an fsync, and they were shared.
    assert!(used >= 1);
    assert!(
        used < writes * 3 / 4,
        "{used} fsyncs for {writes} concurrent durable writes"
    );
    for t in 0..threads {
        assert_eq!(get(&*b, t * 1000 + 7).unwrap(), vec![t as u8; 1024]);
    }
}

/// Group commit under `sync = 0` never acknowledges a write before the fsync that covers it:
/// 16 threads write until power fails under them, and after the crash every write any of
/// them saw acknowledged reads back whole.
#[test]
fn concurrent_durable_writes_survive_a_power_cut_under_them() {
    let (dir, b) = sim(quiet(0));
    let b = Arc::new(b);
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..16u64)
        .map(|t| {
            let (b, acked) = (b.clone(), acked.clone());
            std::thread::spawn(move || {
                for j in 0.. {
                    let i = t * 100_000 + j;
                    if put(&*b, i, &value(i, 300)).is_err() {
                        return;
                    }
                    acked.lock().unwrap().push(i);
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 2000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    dir.power_off();
    for h in handles {
        h.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(dir.sync_count() < acked.len() as u64, "fsyncs were shared");
    drop(b);
    let mut rng = fastrand::Rng::with_seed(11);
    dir.crash(&mut |n| rng.u64(..n.max(1)), true);
    let b = BlobBackend::open(Arc::new(dir.clone()), quiet(0))
        .unwrap()
        .0;
    for i in acked {
        assert_eq!(get(&b, i).unwrap(), value(i, 300), "acknowledged write {i}");
    }
}

/// Values that say which key and version they are, so a reader can tell a wrong, torn or
/// stale one.
fn versioned(k: u64, v: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len.max(16));
    out.extend_from_slice(&k.to_le_bytes());
    out.extend_from_slice(&v.to_le_bytes());
    out.extend((16..len.max(16)).map(|j| (k as usize * 7 + v as usize * 13 + j) as u8));
    out
}

/// The background thread flushes the write buffer without the writer lock while writers
/// append, rewrite in place and read: every read returns a whole value of its key, never older
/// than one the same reader saw before, and each key ends at its last version.
#[test]
fn background_flushes_never_show_a_reader_wrong_or_stale_data() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = BlobConfig {
        sync: -1,
        blob_size: 4 << 20,
        write_buffer_bytes: 64 << 10,
        flush_interval_ms: 1,
        overwrite_in_place: true,
        defrag_rate_bytes: 0,
        ..Default::default()
    };
    let b = Arc::new(
        BlobBackend::open(Arc::new(FileDir::open(tmp.path()).unwrap()), cfg)
            .unwrap()
            .0,
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..200).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let (b, last) = (b.clone(), last.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                for n in 1..=3000u64 {
                    let k = t * 50 + rng.u64(..50);
                    // Same size as before half the time: rewritten in place.
                    let len = if rng.bool() { 600 } else { rng.usize(16..3000) };
                    let req = WriteRequest {
                        data: &versioned(k, n, len),
                        timestamp: Timestamp::new(n, 0),
                        ..Default::default()
                    };
                    b.write(&key(k), &req).unwrap();
                    last[k as usize].store(n, Ordering::Release);
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2u64)
        .map(|r| {
            let (b, stop) = (b.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(100 + r);
                let mut seen = vec![0u64; 200];
                let mut reads = 0;
                while !stop.load(Ordering::Acquire) {
                    let k = rng.u64(..200);
                    let got = match get(&*b, k) {
                        Ok(got) => got,
                        Err(StorageError::NotFound) => continue,
                        Err(e) => panic!("key {k}: {e}"),
                    };
                    let v = u64::from_le_bytes(got[8..16].try_into().unwrap());
                    assert_eq!(
                        got,
                        versioned(k, v, got.len()),
                        "key {k}: a wrong or torn value"
                    );
                    assert!(
                        v >= seen[k as usize],
                        "key {k}: version {v} after {}",
                        seen[k as usize]
                    );
                    seen[k as usize] = v;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    for k in 0..200u64 {
        let v = last[k as usize].load(Ordering::Acquire);
        if v > 0 {
            let got = get(&*b, k).unwrap();
            assert_eq!(&got[8..16], &v.to_le_bytes(), "key {k}");
        }
    }
}

#[test]
fn iteration_resumes_across_a_restart() {
    let cfg = small_bases(-1);
    let (dir, b) = sim(cfg.clone());
    for i in 0..200 {
        put(&b, i, &value(i, 700)).unwrap();
    }
    let req = IterRequest {
        with_data: true,
        batch_records: 64,
        ..Default::default()
    };
    let first = b.iterate(&req, None).unwrap();
    assert_eq!(first.items.len(), 64);
    let cursor = first.next.clone().expect("more to come");
    drop(b);
    let b = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap().0;
    let mut seen: Vec<Key> = first.items.iter().map(|i| i.info.key).collect();
    let mut cursor = Some(cursor);
    while let Some(c) = cursor {
        let batch = b.iterate(&req, Some(&c)).unwrap();
        for it in &batch.items {
            assert_eq!(it.data.as_ref().unwrap().len(), 700);
            seen.push(it.info.key);
        }
        cursor = batch.next;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no record twice");
    assert_eq!(seen.len(), 200);
    // A malformed cursor is a clear error.
    assert!(matches!(
        b.iterate(&req, Some(&IterCursor(vec![1, 2, 3]))),
        Err(StorageError::InvalidArgument(_))
    ));
}

#[test]
fn decoders_survive_random_and_mutated_input() {
    let mut rng = fastrand::Rng::with_seed(42);
    let h = RecordHeader {
        key: key(1),
        flags: 256,
        data_size: 10,
        capacity: 16,
        timestamp: Timestamp::new(1, 2),
        user_flags: 3,
        chunk_log2: 16,
        tag: 4,
    }
    .encode();
    for _ in 0..20_000 {
        let mut b = vec![0u8; rng.usize(0..300)];
        rng.fill(&mut b);
        let _ = RecordHeader::decode(&b);
        let _ = IndexHeader::decode(&b);
        let _ = apsis_storage::blob::format::decode_index(&b);
        let mut m = h.to_vec();
        for _ in 0..rng.usize(1..4) {
            let i = rng.usize(0..m.len());
            m[i] = rng.u8(..);
        }
        if let Some(d) = RecordHeader::decode(&m) {
            // Only an unchanged header may decode (the CRC covers every byte).
            assert_eq!(d.encode().to_vec(), m);
        }
    }
    // The scanner over garbage finds nothing and does not panic.
    let dir = SimDir::new();
    let dev = dir.open("garbage", true).unwrap();
    let mut g = vec![0u8; 1 << 20];
    rng.fill(&mut g);
    dev.write_at(&g, 0).unwrap();
    let mut sc = Scanner::new(&*dev, 0, 0, g.len() as u64);
    assert!(sc.next_record().unwrap().is_none());
}

/// A read shared out of a base's memory map (no copy) returns what a copying read does, and
/// its bytes stay valid after defrag deleted the base they came from.
#[test]
fn a_shared_read_matches_a_copy_and_outlives_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let b = BlobBackend::open_path(tmp.path(), small_bases(-1)).unwrap();
    for i in 0..60 {
        put(&b, i, &value(i, 3000)).unwrap();
    }
    // A small record stays in the open base's write buffer.
    put(&b, 60, &value(60, 100)).unwrap();
    let whole = ReadRequest::default();
    let part = ReadRequest {
        offset: 10,
        ..Default::default()
    };
    // Key 0 is in the first (closed, mapped) base, key 59 in the open one, key 60 in its
    // write buffer.
    for (i, len) in [(0, 3000), (59, 3000), (60, 100)] {
        let shared = b.read_shared(&key(i), &whole).unwrap();
        assert_eq!(shared.data, value(i, len), "key {i}");
        let part = ReadRequest { size: 50, ..part };
        let copied = b.read(&key(i), &part).unwrap();
        let shared = b.read_shared(&key(i), &part).unwrap();
        assert_eq!((shared.offset, &shared.data[..]), (10, &copied.data[..]));
        assert_eq!(shared.info, copied.info);
    }
    let held = b.read_shared(&key(0), &whole).unwrap();
    // Shared, not copied: two reads of a mapped record point at the same bytes; a record
    // still in the write buffer is copied.
    let again = b.read_shared(&key(0), &whole).unwrap();
    assert_eq!(held.data.as_ptr(), again.data.as_ptr());
    let (one, two) = (
        b.read_shared(&key(60), &whole).unwrap(),
        b.read_shared(&key(60), &whole).unwrap(),
    );
    assert_ne!(one.data.as_ptr(), two.data.as_ptr());
    // Every key rewritten, then the old bases deleted.
    for i in 0..60 {
        put(&b, i, &value(i + 1000, 3000)).unwrap();
    }
    let report = b.defrag_with_threshold(0.1).unwrap();
    assert!(report.bases_deleted > 0, "{report:?}");
    let first = tmp.path().join("data-00000001.blob");
    assert!(!first.exists(), "the first base is deleted");
    assert_eq!(
        held.data,
        value(0, 3000),
        "the shared bytes outlive their base"
    );
    assert_eq!(
        b.read_shared(&key(0), &whole).unwrap().data,
        value(1000, 3000)
    );
    assert!(matches!(
        b.read_shared(&key(999), &whole),
        Err(StorageError::NotFound)
    ));
}

#[test]
fn a_real_directory_survives_restart_and_reports_its_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = BlobConfig {
        blob_size: 1 << 20,
        sync: -1,
        ..Default::default()
    };
    {
        let b = BlobBackend::open_path(tmp.path(), cfg.clone()).unwrap();
        for i in 0..1000 {
            put(&b, i, &value(i, 3000)).unwrap();
        }
        for i in 0..100 {
            b.remove(
                &key(i),
                &RemoveRequest {
                    timestamp: Timestamp::new(9999, 0),
                    always_record: false,
                    ..Default::default()
                },
            )
            .unwrap();
        }
    }
    let b = BlobBackend::open_path(tmp.path(), cfg).unwrap();
    let s = b.stats();
    assert_eq!(s.records, 900);
    assert_eq!(s.removed_records, 100);
    assert!(s.bases.len() >= 3);
    assert!(s.index_memory_bytes > 0);
    // The closed bases' indexes were built through their memory maps.
    for i in 0..100 {
        assert!(matches!(get(&b, i), Err(StorageError::NotFound)));
    }
    for i in 100..1000 {
        assert_eq!(get(&b, i).unwrap(), value(i, 3000));
    }
}

#[test]
fn a_clean_shutdown_checkpoints_the_open_base_and_a_stale_checkpoint_is_never_trusted() {
    let cfg = BlobConfig {
        blob_size: 128 << 10,
        ..quiet(0)
    };
    let (dir, b) = sim(cfg.clone());
    for i in 0..20 {
        put(&b, i, &value(i, 3000)).unwrap();
    }
    drop(b);
    // The restart reads the checkpoint and scans nothing.
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg.clone()).unwrap();
    assert!(report.open_base_checkpoint, "{report:?}");
    assert_eq!(report.scanned_bytes, 0);
    for i in 0..20 {
        assert_eq!(get(&b, i).unwrap(), value(i, 3000));
    }
    // More writes close that base; power fails before its full index is written, so the
    // checkpoint (covering only its first part) is still on disk.
    for i in 20..80 {
        put(&b, i, &value(i, 3000)).unwrap();
    }
    assert!(b.stats().bases.len() >= 2);
    dir.power_off();
    drop(b);
    dir.crash(&mut |n| n - 1, false);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg.clone()).unwrap();
    assert!(report.indexes_rebuilt >= 1, "{report:?}");
    for i in 0..80 {
        assert_eq!(get(&b, i).unwrap(), value(i, 3000), "key {i}");
    }
    // Records appended after a checkpoint are found by scanning past it.
    drop(b);
    let b = BlobBackend::open(Arc::new(dir.clone()), cfg.clone())
        .unwrap()
        .0;
    put(&b, 100, b"after the checkpoint").unwrap();
    dir.power_off();
    drop(b);
    dir.crash(&mut |n| n - 1, false);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap();
    assert!(
        report.open_base_checkpoint && report.scanned_bytes > 0,
        "{report:?}"
    );
    assert_eq!(get(&b, 100).unwrap(), b"after the checkpoint");
    assert_eq!(get(&b, 79).unwrap(), value(79, 3000));
}

#[test]
fn a_dropped_reservation_stays_dropped_after_restart() {
    // Small bases: the reservations end up in closed bases (sorted indexes) and in the open one.
    let cfg = small_bases(-1);
    let (dir, b) = sim(cfg.clone());
    let prepare = |b: &BlobBackend, i: u64, t: u64| {
        b.write(
            &key(i),
            &WriteRequest {
                data: b"part",
                prepare: Some(8192),
                timestamp: Timestamp::new(t, 0),
                ..Default::default()
            },
        )
        .unwrap();
    };
    for i in 0..20 {
        put(&b, i, &value(i, 100)).unwrap();
        prepare(&b, i, 100 + i);
    }
    assert_eq!(b.stats().uncommitted_records, 20);
    // Drop the even ones (stamped before 200); the odd ones are younger than the cut-off.
    for i in (0..20).step_by(2) {
        assert!(b.drop_prepared(&key(i), Timestamp::new(200, 0)).unwrap());
        assert!(!b
            .drop_prepared(&key(i + 1), Timestamp::new(100 + i, 0))
            .unwrap());
    }
    assert_eq!(b.stats().uncommitted_records, 10);
    b.sync().unwrap();
    drop(b);
    let b = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap().0;
    assert_eq!(
        b.stats().uncommitted_records,
        10,
        "dropped records stay dropped"
    );
    for i in 0..20 {
        assert_eq!(get(&b, i).unwrap(), value(i, 100), "committed data kept");
    }
    let prepared: Vec<Key> = b
        .iterate(
            &IterRequest {
                include_uncommitted: true,
                ..Default::default()
            },
            None,
        )
        .unwrap()
        .items
        .into_iter()
        .filter(|it| it.info.is_uncommitted())
        .map(|it| it.info.key)
        .collect();
    assert_eq!(prepared.len(), 10);
    assert!(prepared
        .iter()
        .all(|k| (0..20).step_by(2).all(|i| *k != key(i))));
}

#[test]
fn the_open_base_is_zero_filled_ahead_and_the_zeros_are_never_damage() {
    let base = "data-00000001.blob";
    let len = |dir: &SimDir| dir.files().into_iter().find(|(n, _)| n == base).unwrap().1;
    let cfg = BlobConfig {
        blob_size: 8 << 20,
        zero_ahead_bytes: Some(256 << 10),
        ..quiet(0)
    };
    let (dir, b) = sim(cfg.clone());
    let tail = |b: &BlobBackend| b.stats().bases.last().unwrap().size_bytes;
    for i in 0..20 {
        put(&b, i, &value(i, 1000)).unwrap();
    }
    let end = tail(&b);
    // Durable writes land in zeros written ahead of them (a step past the last record).
    let ahead = len(&dir);
    assert!(
        ahead > end + (200 << 10),
        "{ahead} bytes for records ending at {end}"
    );

    // A crash keeps the synced zeros; they are cut at restart and not reported as damage.
    dir.power_off();
    drop(b);
    dir.crash(&mut |n| n - 1, false);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg.clone()).unwrap();
    assert_eq!(
        (report.truncated_bytes, report.damaged_records),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(len(&dir), end);
    for i in 0..20 {
        assert_eq!(get(&b, i).unwrap(), value(i, 1000));
    }

    // Garbage in the zeros (a torn write) is cut and counted up to its last byte.
    put(&b, 20, &value(20, 1000)).unwrap();
    let end = tail(&b);
    dir.power_off();
    drop(b);
    dir.crash(&mut |n| n - 1, false);
    dir.flip_bit(base, end + 99, 3);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg.clone()).unwrap();
    assert_eq!(report.truncated_bytes, 100, "{report:?}");
    assert_eq!(get(&b, 20).unwrap(), value(20, 1000));

    // A clean shutdown leaves the base ending at its last record, so the restart scans
    // nothing and finds nothing to cut.
    put(&b, 21, &value(21, 1000)).unwrap();
    let end = tail(&b);
    assert!(len(&dir) > end);
    drop(b);
    assert_eq!(len(&dir), end);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg.clone()).unwrap();
    assert!(report.open_base_checkpoint, "{report:?}");
    assert_eq!(
        (report.truncated_bytes, report.scanned_bytes),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(get(&b, 21).unwrap(), value(21, 1000));

    // A large record gets no zeros ahead (they would double what it writes); the next small
    // one does.
    let (dir, b) = sim(cfg.clone());
    put(&b, 1, &value(1, 100 << 10)).unwrap();
    assert_eq!(len(&dir), tail(&b));
    put(&b, 2, &value(2, 1000)).unwrap();
    assert!(len(&dir) > tail(&b) + (200 << 10));

    // Without sync = 0 nothing is written ahead.
    let (dir, b) = sim(quiet(-1));
    put(&b, 1, &value(1, 1000)).unwrap();
    b.sync().unwrap();
    assert_eq!(len(&dir), tail(&b));
}

#[test]
fn a_failed_fsync_under_concurrent_writers_answers_every_one_of_them() {
    // Writers parked behind a leader whose fsync fails must all be woken with the error:
    // none may hang, and none may be told its write is durable.
    let (dir, b) = sim(quiet(0));
    let b = Arc::new(b);
    let acked = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let (b, acked) = (b.clone(), acked.clone());
            std::thread::spawn(move || {
                for j in 0.. {
                    match put(&*b, t * 100_000 + j, &value(j, 500)) {
                        Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            assert!(matches!(e, StorageError::Poisoned(_)), "{e:?}");
                            return j;
                        }
                    };
                }
                unreachable!()
            })
        })
        .collect();
    while acked.load(Ordering::Relaxed) < 200 {
        std::thread::sleep(Duration::from_millis(1));
    }
    dir.fail_next_sync();
    let written: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Everything acknowledged before the failure survives a crash.
    drop(Arc::try_unwrap(b).ok().unwrap());
    dir.crash(&mut |_| 0, false);
    let b = BlobBackend::open(Arc::new(dir.clone()), quiet(0))
        .unwrap()
        .0;
    for (t, n) in written.iter().enumerate() {
        for j in 0..*n {
            assert_eq!(get(&b, t as u64 * 100_000 + j).unwrap(), value(j, 500));
        }
    }
}

/// Writes keys `keys`, each with `value(i + version, len)`.
fn put_all(b: &dyn Backend, keys: std::ops::Range<u64>, version: u64, len: usize) {
    for i in keys {
        put(b, i, &value(i + version, len)).unwrap();
    }
}

/// A base defrag drops whole lends its file to the next base (`reuse_bases`): appends write
/// over the earlier life's records, which never come back. Not after a crash (the restart's
/// scan ends at the first record with the old base's tag, where an untagged scan would load
/// the superseded versions in the newest base), and not through a record's gaps (they read
/// as zeros, as in a new file).
#[test]
fn a_reused_base_file_never_shows_its_earlier_life() {
    let cfg = BlobConfig {
        blob_size: 256 << 10,
        // Every write goes to the device at once: the gaps are written, not buffered.
        write_buffer_bytes: 0,
        ..quiet(-1)
    };
    let (dir, b) = sim(cfg.clone());
    put_all(&b, 0..20, 0, 5000);
    b.rotate().unwrap();
    put_all(&b, 0..20, 100, 5000);
    // Base 1 holds nothing current: dropped, its file kept.
    let report = b.defrag_with_threshold(0.0).unwrap();
    assert_eq!(report.bases_deleted, 1, "{report:?}");
    assert!(dir.list().unwrap().contains(&"spare-base.tmp".to_string()));
    b.rotate().unwrap();
    assert_eq!(b.stats().bases_reused, 1);
    assert!(!dir.list().unwrap().contains(&"spare-base.tmp".to_string()));
    put(&b, 500, b"new").unwrap();
    // A reservation over the old bytes, written at its head and at 15 000, then committed.
    let part = |data: &'static [u8], offset, prepare, plain, commit| {
        b.write(
            &key(600),
            &WriteRequest {
                data,
                offset,
                prepare,
                plain,
                commit,
                timestamp: Timestamp::new(2000, 0),
                ..Default::default()
            },
        )
        .unwrap();
    };
    part(b"head", 0, Some(20_000), false, None);
    part(b"tail", 15_000, None, true, None);
    part(b"", 0, None, false, Some(20_000));
    let mut want = vec![0u8; 20_000];
    want[..4].copy_from_slice(b"head");
    want[15_000..15_004].copy_from_slice(b"tail");
    assert!(get(&b, 600).unwrap() == want, "the gaps read as zeros");
    // A process crash: no clean shutdown trims the open base.
    std::mem::forget(b);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap();
    for i in 0..20 {
        assert_eq!(get(&b, i).unwrap(), value(i + 100, 5000), "key {i}");
    }
    assert_eq!(get(&b, 500).unwrap(), b"new");
    assert!(get(&b, 600).unwrap() == want);
    assert_eq!(b.stats().records, 22);
    assert_eq!(
        (report.truncated_bytes, report.damaged_records),
        (0, 0),
        "an earlier life is not damage: {report:?}"
    );
    assert!(report.reused_tail_bytes > 0, "{report:?}");
}

/// Off, a dropped base's file is deleted, as before.
#[test]
fn without_reuse_a_dropped_base_file_is_deleted() {
    let cfg = BlobConfig {
        reuse_bases: false,
        ..small_bases(-1)
    };
    let (dir, b) = sim(cfg);
    put_all(&b, 0..5, 0, 5000);
    b.rotate().unwrap();
    put_all(&b, 0..5, 0, 5000);
    assert_eq!(b.defrag_with_threshold(0.0).unwrap().bases_deleted, 1);
    assert!(!dir.list().unwrap().iter().any(|n| n.ends_with(".tmp")));
    b.rotate().unwrap();
    assert_eq!(b.stats().bases_reused, 0);
}

/// A kept file counts against the backend's size limit, and gives its room back to data: a
/// write that fits only without it deletes it instead of failing with ENOSPC.
#[test]
fn a_kept_base_file_yields_its_room_to_data_under_a_size_limit() {
    let cfg = BlobConfig {
        blob_size: 256 << 10,
        size_limit_bytes: 150_000,
        ..quiet(-1)
    };
    let (dir, b) = sim(cfg);
    put_all(&b, 0..5, 0, 10_000);
    b.rotate().unwrap();
    put_all(&b, 0..5, 1, 10_000);
    assert_eq!(b.defrag_with_threshold(0.0).unwrap().bases_deleted, 1);
    let kept = "spare-base.tmp".to_string();
    assert!(dir.list().unwrap().contains(&kept));
    // ~51 KB in the open base, ~51 KB kept: 51 KB more fit only without the kept file.
    put_all(&b, 10..15, 0, 10_000);
    assert!(!dir.list().unwrap().contains(&kept));
    for i in 0..5 {
        assert_eq!(get(&b, i).unwrap(), value(i + 1, 10_000));
    }
}

/// Defrag's copy of a base it rewrites goes into the kept file too, cut at its last record:
/// the rewritten base holds exactly its live records, before and after a crash.
#[test]
fn a_defrag_copy_goes_into_the_kept_file_and_keeps_nothing_of_it() {
    let cfg = BlobConfig {
        blob_size: 1 << 20,
        ..quiet(-1)
    };
    let (dir, b) = sim(cfg.clone());
    put_all(&b, 0..40, 0, 5000);
    b.rotate().unwrap();
    // Base 1 all superseded; base 2 also holds keys of its own.
    put_all(&b, 0..40, 1, 5000);
    put_all(&b, 100..110, 0, 5000);
    b.rotate().unwrap();
    // Most of base 2 superseded: its copy is smaller than the kept file.
    put_all(&b, 0..35, 2, 5000);
    // Base 1 is dropped (its file kept), then base 2 is rewritten into that file.
    let report = b.defrag_with_threshold(0.0).unwrap();
    assert_eq!(report.bases_deleted, 1, "{report:?}");
    assert_eq!(report.records_copied, 15, "{report:?}");
    assert_eq!(b.stats().bases_reused, 1);
    let names = dir.list().unwrap();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    // Cut at its last record: the file is no longer than the base's records.
    let base2 = b
        .stats()
        .bases
        .iter()
        .find(|s| s.number == 2)
        .unwrap()
        .size_bytes;
    let len = dir
        .open("data-00000002.blob", false)
        .unwrap()
        .len()
        .unwrap();
    assert_eq!(len, base2);
    let want = |i: u64| match i {
        0..35 => value(i + 2, 5000),
        35..40 => value(i + 1, 5000),
        _ => value(i, 5000),
    };
    std::mem::forget(b);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap();
    assert_eq!(report.damaged_records, 0, "{report:?}");
    for i in (0..40).chain(100..110) {
        assert_eq!(get(&b, i).unwrap(), want(i), "key {i}");
    }
    assert_eq!(b.stats().records, 50);
}

/// Under `sync = -1` no write waits for a whole-file fsync, not even the one that closes a
/// base and opens the next (one in a kept file): a closed base is synced by the background
/// thread before its index is written, and a new base's header alone is made durable. (The
/// rotation's fsync wrote back the closed base's dirty pages, up to a GiB, under the writer
/// lock: every write of the backend stalled for half a second per base.) Crashes with the
/// closed bases unsynced are the model test's (`tests/model.rs`).
#[test]
fn rotating_bases_under_sync_minus_one_waits_for_no_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    let syncs = Arc::new(AtomicU64::new(0));
    let dir = || CountingDir {
        inner: FileDir::open(tmp.path()).unwrap(),
        syncs: syncs.clone(),
    };
    let cfg = small_bases(-1);
    let b = BlobBackend::open(Arc::new(dir()), cfg.clone()).unwrap().0;
    put_all(&b, 0..100, 0, 2000);
    assert!(b.stats().bases.len() >= 3, "{:?}", b.stats());
    assert_eq!(syncs.load(Ordering::Relaxed), 0, "fsyncs while rotating");
    // Overwritten: the first bases hold nothing current, and defrag keeps a file of theirs.
    b.rotate().unwrap();
    put_all(&b, 0..100, 1, 2000);
    b.defrag_with_threshold(0.5).unwrap();
    assert!(tmp.path().join("spare-base.tmp").exists());
    let before = (syncs.load(Ordering::Relaxed), b.stats().bases_reused);
    // Of another size: the base in the kept file ends short of its earlier life, whose
    // rest the rotation cuts off.
    put_all(&b, 0..100, 2, 1500);
    assert!(b.stats().bases_reused > before.1, "{:?}", b.stats());
    assert_eq!(
        syncs.load(Ordering::Relaxed),
        before.0,
        "fsyncs while rotating into kept files"
    );
    drop(b);
    let b = BlobBackend::open(Arc::new(dir()), cfg).unwrap().0;
    for i in 0..100 {
        assert!(get(&b, i).unwrap() == value(i + 2, 1500), "key {i}");
    }
}

fn base_file(n: u64) -> String {
    format!("data-{n:08}.blob")
}

/// Waits until `dir` holds `name` (made by a background thread).
fn wait_for_file(dir: &SimDir, name: &str) {
    let t = std::time::Instant::now();
    while !dir.list().unwrap().iter().any(|f| f == name) {
        assert!(t.elapsed() < Duration::from_secs(5), "{name} never made");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn open_base_stats(b: &BlobBackend) -> BaseStats {
    b.stats().bases.into_iter().find(|x| x.open).unwrap()
}

fn open_base(b: &BlobBackend) -> u64 {
    open_base_stats(b).number
}

/// Writes keys from `from` on (version 0) until the open base is half full, when the next one
/// is made; waits for it and returns the open base and the first key not written.
fn fill_half(b: &BlobBackend, dir: &SimDir, mut from: u64) -> (u64, u64) {
    while open_base_stats(b).size_bytes < (64 << 10) / 2 {
        put(b, from, &value(from, 2000)).unwrap();
        from += 1;
    }
    let open = open_base(b);
    wait_for_file(dir, &base_file(open + 1));
    (open, from)
}

/// The next base is made while the open one fills (the `apsis-blob-next` thread, once the
/// open base is half full), so a rotation only switches to it and waits on no filesystem
/// call. A clean shutdown deletes it; a crash leaves it as the newest base, empty, and loses
/// nothing acknowledged.
#[test]
fn the_next_base_is_made_ahead_and_a_restart_loses_nothing_by_it() {
    let cfg = BlobConfig {
        background: true,
        ..small_bases(0)
    };
    let (dir, b) = sim(cfg.clone());
    put_all(&b, 0..100, 0, 2000);
    let (open, end) = fill_half(&b, &dir, 100);
    assert!(open >= 4, "{:?}", b.stats());
    drop(b);
    assert!(!dir.list().unwrap().contains(&base_file(open + 1)));
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg.clone()).unwrap();
    assert_eq!(open_base(&b), open, "the open base is open again");
    assert!(report.open_base_records > 0, "{report:?}");
    for i in 0..end {
        assert!(get(&b, i).unwrap() == value(i, 2000), "key {i}");
    }
    // A crash with the next base made: it is the newest base after it, and holds nothing.
    put_all(&b, 0..10, 1, 2000);
    let (open, end) = fill_half(&b, &dir, end);
    dir.power_off();
    drop(b);
    let mut rng = fastrand::Rng::with_seed(7);
    dir.crash(&mut |n| rng.u64(..n), true);
    let (b, report) = BlobBackend::open(Arc::new(dir.clone()), cfg).unwrap();
    assert_eq!(open_base(&b), open + 1, "{report:?}");
    assert_eq!(report.open_base_records, 0, "{report:?}");
    for i in 0..end {
        let want = value(if i < 10 { i + 1 } else { i }, 2000);
        assert!(get(&b, i).unwrap() == want, "key {i}");
    }
}

/// A base filling fast asks for the next one before it is half full: at the rate it filled,
/// it would be full within a second (the flusher thread looks every `flush_interval_ms`).
#[test]
fn a_base_filling_fast_asks_for_the_next_one_early() {
    let cfg = BlobConfig {
        background: true,
        ..small_bases(-1)
    };
    let (dir, b) = sim(cfg);
    // 40 % of the first base, at once.
    put_all(&b, 0..13, 0, 2000);
    let open = open_base_stats(&b);
    assert_eq!(open.number, 1);
    assert!(open.size_bytes < (64 << 10) / 2, "{open:?}");
    wait_for_file(&dir, &base_file(2));
}
