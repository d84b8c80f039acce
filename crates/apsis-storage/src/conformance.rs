//! The conformance suite every [`Backend`] must pass: the Elliptics data semantics, rule by
//! rule. `tests/conformance.rs` runs it against the memory backend and the blob backend (on a
//! real directory and on the simulated device, with and without the write buffer).
//!
//! Each check is a function named after the rule it checks; it panics with that rule's name.

use crate::backend::{data_checksum, Backend};
use crate::error::StorageError;
use crate::types::*;

/// A named check.
pub type Check = (&'static str, fn(&dyn Backend));

/// Every check, in order.
pub const CHECKS: &[Check] = &[
    (
        "write_then_read_returns_data_timestamp_and_user_flags",
        write_then_read,
    ),
    ("shorter_overwrite_replaces_the_object", shorter_overwrite),
    ("longer_overwrite_replaces_the_object", longer_overwrite),
    ("write_at_offset_patches_and_grows", write_at_offset),
    (
        "write_at_offset_on_missing_key_zero_fills",
        write_at_offset_missing,
    ),
    ("read_ranges_clip_and_e2big", read_ranges),
    ("append_concatenates_and_creates", append),
    (
        "prepare_plain_commit_publishes_only_at_commit",
        prepare_plain_commit,
    ),
    (
        "prepare_keeps_the_old_version_visible_until_commit",
        prepare_over_existing,
    ),
    (
        "commit_can_truncate_within_the_reservation",
        commit_truncates,
    ),
    ("writes_past_the_reservation_fail", past_reservation),
    (
        "plain_or_commit_without_prepare_is_enoent",
        commit_without_prepare,
    ),
    ("prepare_and_commit_in_one_request", prepare_commit_together),
    (
        "a_committed_write_discards_a_reservation",
        write_discards_reservation,
    ),
    ("cas_on_checksum", cas_checksum),
    ("cas_on_timestamp", cas_timestamp),
    ("remove_is_a_timestamped_tombstone", remove),
    (
        "remove_of_missing_key_is_enoent_unless_recorded",
        remove_missing,
    ),
    ("conditional_removes_for_recovery", conditional_remove),
    ("stale_prepared_records_are_dropped", drop_prepared),
    ("lookup_reports_file_info_and_checksum", lookup),
    ("nocsum_records_read_back", nocsum),
    ("large_objects_span_many_checksum_chunks", large_object),
    ("iterate_all_in_bounded_batches_and_resume", iterate_batches),
    ("iterate_by_key_range_and_time_range", iterate_ranges),
    (
        "iterate_tombstones_and_uncommitted_on_request",
        iterate_flags,
    ),
    ("read_only_refuses_writes_and_serves_reads", read_only),
    ("stats_count_records_and_tombstones", stats),
    ("empty_object_reads_empty", empty_object),
    ("oversized_requests_are_refused", oversized),
];

/// Runs every check against a fresh backend from `make`.
pub fn run_all(make: &dyn Fn() -> Box<dyn Backend>) {
    for (name, check) in CHECKS {
        let b = make();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&*b)));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("conformance check `{name}` failed: {msg}");
        }
    }
}

fn k(name: &str) -> Key {
    Key::from_name(b"", name.as_bytes())
}

fn ts(sec: u64) -> Timestamp {
    Timestamp::new(sec, 7)
}

fn put(b: &dyn Backend, key: &Key, data: &[u8], t: u64) -> RecordInfo {
    b.write(
        key,
        &WriteRequest {
            data,
            timestamp: ts(t),
            ..Default::default()
        },
    )
    .expect("write")
}

fn get(b: &dyn Backend, key: &Key) -> Result<Vec<u8>, StorageError> {
    b.read(key, &ReadRequest::default()).map(|r| r.data)
}

fn is_enoent<T: std::fmt::Debug>(r: Result<T, StorageError>) -> bool {
    matches!(r, Err(StorageError::NotFound))
}

fn write_then_read(b: &dyn Backend) {
    let key = k("k1");
    let w = b
        .write(
            &key,
            &WriteRequest {
                data: b"hello",
                timestamp: ts(100),
                user_flags: 0xfeed,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(w.size, 5);
    let r = b.read(&key, &ReadRequest::default()).unwrap();
    assert_eq!(r.data, b"hello");
    assert_eq!(r.info.timestamp, ts(100));
    assert_eq!(r.info.user_flags, 0xfeed);
    assert_eq!(r.info.size, 5);
    assert!(is_enoent(get(b, &k("missing"))));
}

fn shorter_overwrite(b: &dyn Backend) {
    let key = k("ow");
    put(b, &key, b"new-data-long", 1);
    put(b, &key, b"short", 2);
    assert_eq!(get(b, &key).unwrap(), b"short");
    assert_eq!(b.lookup(&key, false).unwrap().size, 5);
}

fn longer_overwrite(b: &dyn Backend) {
    let key = k("ow2");
    put(b, &key, b"short", 1);
    let long = vec![b'x'; 100_000];
    put(b, &key, &long, 2);
    assert_eq!(get(b, &key).unwrap(), long);
}

fn write_at_offset(b: &dyn Backend) {
    let key = k("patch");
    put(b, &key, b"55555", 1);
    b.write(
        &key,
        &WriteRequest {
            data: b"43210",
            offset: 1,
            timestamp: ts(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"543210");
    let key = k("hello");
    put(b, &key, b"hello world", 1);
    b.write(
        &key,
        &WriteRequest {
            data: b"HELLO",
            offset: 6,
            timestamp: ts(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"hello HELLO");
    // A patch past the end leaves zeros in between, even where longer data once was.
    let key = k("gap");
    put(b, &key, b"abcdefghij", 1);
    put(b, &key, b"ab", 2);
    b.write(
        &key,
        &WriteRequest {
            data: b"Z",
            offset: 6,
            timestamp: ts(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"ab\0\0\0\0Z");
}

fn write_at_offset_missing(b: &dyn Backend) {
    let key = k("patch-missing");
    b.write(
        &key,
        &WriteRequest {
            data: b"xy",
            offset: 3,
            timestamp: ts(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"\0\0\0xy");
}

fn read_ranges(b: &dyn Backend) {
    let key = k("range");
    put(b, &key, b"0123456789", 1);
    let rd = |offset, size| {
        b.read(
            &key,
            &ReadRequest {
                offset,
                size,
                nocsum: false,
            },
        )
        .map(|r| (r.offset, r.data))
    };
    assert_eq!(rd(2, 3).unwrap(), (2, b"234".to_vec()));
    assert_eq!(
        rd(7, 100).unwrap().1,
        b"789",
        "a size past the end is clipped"
    );
    assert_eq!(rd(4, 0).unwrap().1, b"456789", "size 0 reads to the end");
    assert!(
        matches!(rd(10, 1), Err(StorageError::OutOfRange(_))),
        "offset at the end is E2BIG"
    );
    assert!(
        matches!(rd(100, 0), Err(StorageError::OutOfRange(_))),
        "offset past the end is E2BIG"
    );
    assert_eq!(StorageError::OutOfRange(String::new()).errno(), -7);
}

fn append(b: &dyn Backend) {
    let key = k("app");
    let w = b
        .write(
            &key,
            &WriteRequest {
                data: b"abc",
                append: true,
                timestamp: ts(1),
                ..Default::default()
            },
        )
        .unwrap();
    // An APPEND that creates the object is a plain record (eblob reports 0x140, not 0x150).
    assert_eq!(w.record_flags & record_flags::APPEND, 0);
    let w2 = b
        .write(
            &key,
            &WriteRequest {
                data: b"def",
                append: true,
                timestamp: ts(2),
                ..Default::default()
            },
        )
        .unwrap();
    assert_ne!(
        w2.record_flags & record_flags::APPEND,
        0,
        "appending to an existing object"
    );
    assert_eq!(get(b, &key).unwrap(), b"abcdef");
    for i in 0..50u8 {
        b.write(
            &key,
            &WriteRequest {
                data: &[b'0' + (i % 10)],
                append: true,
                timestamp: ts(3),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let got = get(b, &key).unwrap();
    assert_eq!(got.len(), 56);
    assert_eq!(&got[6..16], b"0123456789");
}

fn prepare_plain_commit(b: &dyn Backend) {
    let key = k("ppc");
    let p = b
        .write(
            &key,
            &WriteRequest {
                data: b"aaa",
                prepare: Some(9),
                timestamp: ts(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_ne!(p.record_flags & record_flags::UNCOMMITTED, 0);
    assert!(is_enoent(get(b, &key)), "a prepared record is invisible");
    assert!(is_enoent(b.lookup(&key, false)));
    b.write(
        &key,
        &WriteRequest {
            data: b"bbb",
            offset: 3,
            plain: true,
            timestamp: ts(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        is_enoent(get(b, &key)),
        "still invisible after a plain write"
    );
    let c = b
        .write(
            &key,
            &WriteRequest {
                data: b"ccc",
                offset: 6,
                commit: Some(9),
                timestamp: ts(5),
                user_flags: 3,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(c.record_flags & record_flags::UNCOMMITTED, 0);
    let r = b.read(&key, &ReadRequest::default()).unwrap();
    assert_eq!(r.data, b"aaabbbccc");
    assert_eq!((r.info.timestamp, r.info.user_flags), (ts(5), 3));
    assert!(
        is_enoent(b.write(
            &key,
            &WriteRequest {
                data: b"x",
                plain: true,
                timestamp: ts(6),
                ..Default::default()
            }
        )),
        "the reservation is gone after commit"
    );
}

fn prepare_over_existing(b: &dyn Backend) {
    let key = k("ppc-old");
    put(b, &key, b"old", 1);
    b.write(
        &key,
        &WriteRequest {
            data: b"new!",
            prepare: Some(4),
            timestamp: ts(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"old");
    b.write(
        &key,
        &WriteRequest {
            data: b"",
            commit: Some(4),
            timestamp: ts(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"new!");
}

fn commit_truncates(b: &dyn Backend) {
    let key = k("ppc-trunc");
    b.write(
        &key,
        &WriteRequest {
            data: b"0123456789",
            prepare: Some(100),
            timestamp: ts(1),
            ..Default::default()
        },
    )
    .unwrap();
    b.write(
        &key,
        &WriteRequest {
            data: b"",
            commit: Some(4),
            timestamp: ts(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"0123");
    let key = k("ppc-extend");
    b.write(
        &key,
        &WriteRequest {
            data: b"ab",
            prepare: Some(6),
            timestamp: ts(1),
            ..Default::default()
        },
    )
    .unwrap();
    b.write(
        &key,
        &WriteRequest {
            data: b"",
            commit: Some(6),
            timestamp: ts(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"ab\0\0\0\0");
}

fn past_reservation(b: &dyn Backend) {
    let key = k("ppc-past");
    b.write(
        &key,
        &WriteRequest {
            data: b"a",
            prepare: Some(4),
            timestamp: ts(1),
            ..Default::default()
        },
    )
    .unwrap();
    let r = b.write(
        &key,
        &WriteRequest {
            data: b"xyz",
            offset: 3,
            plain: true,
            timestamp: ts(1),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(StorageError::OutOfRange(_))), "{r:?}");
    let r = b.write(
        &key,
        &WriteRequest {
            data: b"",
            commit: Some(5),
            timestamp: ts(1),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(StorageError::OutOfRange(_))), "{r:?}");
    // The reservation is still usable.
    b.write(
        &key,
        &WriteRequest {
            data: b"bcd",
            offset: 1,
            commit: Some(4),
            timestamp: ts(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"abcd");
}

fn commit_without_prepare(b: &dyn Backend) {
    let key = k("nocommit");
    assert!(is_enoent(b.write(
        &key,
        &WriteRequest {
            data: b"x",
            commit: Some(1),
            timestamp: ts(1),
            ..Default::default()
        }
    )));
    assert!(is_enoent(b.write(
        &key,
        &WriteRequest {
            data: b"x",
            plain: true,
            timestamp: ts(1),
            ..Default::default()
        }
    )));
    put(b, &key, b"exists", 1);
    assert!(is_enoent(b.write(
        &key,
        &WriteRequest {
            data: b"x",
            commit: Some(1),
            timestamp: ts(1),
            ..Default::default()
        }
    )));
    assert_eq!(get(b, &key).unwrap(), b"exists");
}

fn prepare_commit_together(b: &dyn Backend) {
    let key = k("pc1");
    b.write(
        &key,
        &WriteRequest {
            data: b"whole",
            prepare: Some(5),
            commit: Some(5),
            timestamp: ts(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"whole");
}

fn cas_checksum(b: &dyn Backend) {
    let key = k("k9");
    let cas = |data: &[u8], sum: [u8; 64]| {
        b.write(
            &key,
            &WriteRequest {
                data,
                cas_checksum: Some(sum),
                timestamp: ts(2),
                ..Default::default()
            },
        )
    };
    cas(b"first", [1; 64]).expect("a missing key always passes CAS");
    put(b, &key, b"original", 1);
    let r = cas(b"replacement", [1; 64]);
    assert!(matches!(r, Err(StorageError::CasMismatch(_))), "{r:?}");
    assert_eq!(StorageError::CasMismatch("").errno(), -77);
    assert_eq!(get(b, &key).unwrap(), b"original");
    cas(b"replacement", data_checksum(b"original")).unwrap();
    assert_eq!(get(b, &key).unwrap(), b"replacement");
}

fn cas_timestamp(b: &dyn Backend) {
    let key = k("cas-ts");
    put(b, &key, b"at-10", 10);
    let w = |t: u64| {
        b.write(
            &key,
            &WriteRequest {
                data: b"x",
                cas_timestamp: true,
                timestamp: ts(t),
                ..Default::default()
            },
        )
    };
    assert!(
        matches!(w(9), Err(StorageError::CasMismatch(_))),
        "an older write must not replace a newer record"
    );
    assert_eq!(get(b, &key).unwrap(), b"at-10");
    w(10).expect("an equal timestamp passes");
    w(11).expect("a newer timestamp passes");
    // A newer delete is not undone by an older CAS_TIMESTAMP write (read-repair, recovery).
    b.remove(
        &key,
        &RemoveRequest {
            timestamp: ts(20),
            always_record: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        matches!(w(15), Err(StorageError::CasMismatch(_))),
        "an older copy must not resurrect a newer tombstone"
    );
    assert!(is_enoent(get(b, &key)));
    w(21).expect("a write newer than the tombstone passes");
    assert_eq!(get(b, &key).unwrap(), b"x");
}

fn remove(b: &dyn Backend) {
    let key = k("rm");
    put(b, &key, b"doomed", 1);
    let t = b
        .remove(
            &key,
            &RemoveRequest {
                timestamp: ts(9),
                always_record: false,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(t.is_removed());
    assert_eq!(t.timestamp, ts(9));
    assert!(is_enoent(get(b, &key)));
    assert!(is_enoent(b.lookup(&key, false)));
    assert!(
        is_enoent(b.remove(
            &key,
            &RemoveRequest {
                timestamp: ts(10),
                always_record: false,
                ..Default::default()
            }
        )),
        "removing twice"
    );
    put(b, &key, b"reborn", 11);
    assert_eq!(get(b, &key).unwrap(), b"reborn");
}

fn remove_missing(b: &dyn Backend) {
    let key = k("rm-missing");
    assert!(is_enoent(b.remove(
        &key,
        &RemoveRequest {
            timestamp: ts(1),
            always_record: false,
            ..Default::default()
        }
    )));
    b.remove(
        &key,
        &RemoveRequest {
            timestamp: ts(5),
            always_record: true,
            ..Default::default()
        },
    )
    .unwrap();
    let it = b
        .iterate(
            &IterRequest {
                include_removed: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    let t = it
        .items
        .iter()
        .find(|i| i.info.key == key)
        .expect("the tombstone is recorded");
    assert_eq!(t.info.timestamp, ts(5));
    // A recorded tombstone never replaces a newer one.
    assert!(is_enoent(b.remove(
        &key,
        &RemoveRequest {
            timestamp: ts(4),
            always_record: true,
            ..Default::default()
        }
    )));
}

fn conditional_remove(b: &dyn Backend) {
    let rm = |key: &Key, t: u64, cas: bool, expect: Option<u64>| {
        b.remove(
            key,
            &RemoveRequest {
                timestamp: ts(t),
                always_record: true,
                cas_timestamp: cas,
                expect: expect.map(ts),
            },
        )
    };
    // CAS_TIMESTAMP: a propagated delete never removes a newer write...
    let key = k("rm-cas");
    put(b, &key, b"new", 10);
    assert!(
        matches!(rm(&key, 9, true, None), Err(StorageError::CasMismatch(_))),
        "an older delete must not remove a newer record"
    );
    assert_eq!(get(b, &key).unwrap(), b"new");
    // ...and a newer one does, recording the tombstone's own timestamp.
    assert_eq!(rm(&key, 12, true, None).unwrap().timestamp, ts(12));
    assert!(is_enoent(get(b, &key)));
    // An equal or older tombstone is already there: ENOENT, nothing changes.
    assert!(is_enoent(rm(&key, 12, true, None)));
    assert!(matches!(
        rm(&key, 11, true, None),
        Err(StorageError::CasMismatch(_))
    ));
    // A missing key takes the tombstone (recovery propagates deletes to empty replicas).
    let fresh = k("rm-cas-missing");
    assert_eq!(rm(&fresh, 3, true, None).unwrap().timestamp, ts(3));
    assert!(is_enoent(get(b, &fresh)));
    // Expect: only the record with exactly that timestamp is replaced.
    let key = k("rm-expect");
    put(b, &key, b"v", 5);
    assert!(matches!(
        rm(&key, 0, false, Some(4)),
        Err(StorageError::CasMismatch(_))
    ));
    assert_eq!(get(b, &key).unwrap(), b"v");
    let t = rm(&key, 0, false, Some(5)).unwrap();
    assert_eq!(t.timestamp, ts(0));
    assert!(is_enoent(get(b, &key)));
    assert!(
        matches!(
            rm(&k("rm-expect-missing"), 0, false, Some(1)),
            Err(StorageError::CasMismatch(_))
        ),
        "a missing key never matches an expected timestamp"
    );
}

fn drop_prepared(b: &dyn Backend) {
    let key = k("stale-prep");
    put(b, &key, b"committed", 5);
    let prepare = |key: &Key, t: u64| {
        b.write(
            key,
            &WriteRequest {
                data: b"par",
                prepare: Some(10),
                timestamp: ts(t),
                ..Default::default()
            },
        )
        .expect("prepare")
    };
    prepare(&key, 20);
    assert_eq!(b.stats().uncommitted_records, 1);
    assert!(!b.drop_prepared(&key, ts(20)).unwrap(), "not older than 20");
    assert!(b.drop_prepared(&key, ts(21)).unwrap());
    assert_eq!(b.stats().uncommitted_records, 0);
    assert!(!b.drop_prepared(&key, ts(21)).unwrap(), "already gone");
    // The committed version is untouched, and a plain write finds no reservation.
    assert_eq!(get(b, &key).unwrap(), b"committed");
    assert!(is_enoent(b.write(
        &key,
        &WriteRequest {
            data: b"x",
            plain: true,
            commit: Some(1),
            timestamp: ts(30),
            ..Default::default()
        }
    )));
    let only = k("stale-prep-only");
    prepare(&only, 1);
    assert!(b.drop_prepared(&only, ts(2)).unwrap());
    assert!(is_enoent(get(b, &only)));
}

fn lookup(b: &dyn Backend) {
    let key = k("ck");
    put(b, &key, b"checksum me", 3);
    let l = b.lookup(&key, false).unwrap();
    assert_eq!((l.size, l.timestamp, l.checksum), (11, ts(3), None));
    let l = b.lookup(&key, true).unwrap();
    let expect = data_checksum(b"checksum me");
    assert_eq!(l.checksum, Some(expect));
    assert_eq!(
        &expect[..4],
        &[0x31, 0xb8, 0xef, 0xfa],
        "sha512('checksum me') as captured from Elliptics"
    );
    assert_eq!(data_checksum(b""), [0; 64]);
}

fn nocsum(b: &dyn Backend) {
    let key = k("nocsum");
    let w = b
        .write(
            &key,
            &WriteRequest {
                data: b"unchecked",
                nocsum: true,
                timestamp: ts(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_ne!(w.record_flags & record_flags::NOCSUM, 0);
    assert_eq!(get(b, &key).unwrap(), b"unchecked");
    b.write(
        &key,
        &WriteRequest {
            data: b"UN",
            timestamp: ts(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"UN");
    b.write(
        &key,
        &WriteRequest {
            data: b"ab",
            offset: 1,
            timestamp: ts(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(get(b, &key).unwrap(), b"Uab");
}

fn large_object(b: &dyn Backend) {
    let key = k("large");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i * 7 + i / 1000) as u8)
        .collect();
    put(b, &key, &data, 1);
    assert_eq!(get(b, &key).unwrap(), data);
    let r = b
        .read(
            &key,
            &ReadRequest {
                offset: 65_000,
                size: 200_000,
                nocsum: false,
            },
        )
        .unwrap();
    assert_eq!(r.data, &data[65_000..265_000]);
    // Patch across a chunk boundary, then read it back whole.
    b.write(
        &key,
        &WriteRequest {
            data: &[9u8; 1000],
            offset: 131_000,
            timestamp: ts(2),
            ..Default::default()
        },
    )
    .unwrap();
    let mut expect = data.clone();
    expect[131_000..132_000].fill(9);
    assert_eq!(get(b, &key).unwrap(), expect);
    assert_eq!(
        b.lookup(&key, true).unwrap().checksum,
        Some(data_checksum(&expect))
    );
}

fn iterate_all(b: &dyn Backend, req: &IterRequest) -> Vec<IterItem> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..100_000 {
        let batch = b.iterate(req, cursor.as_ref()).unwrap();
        assert!(
            batch.items.len() <= req.batch_records.max(1),
            "a batch holds at most batch_records"
        );
        out.extend(batch.items);
        match batch.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
    panic!("iteration did not end");
}

fn iterate_batches(b: &dyn Backend) {
    let mut keys = Vec::new();
    for i in 0..100u32 {
        let key = k(&format!("it{i}"));
        put(b, &key, format!("v{i}").as_bytes(), 1);
        keys.push(key);
    }
    put(b, &keys[0], b"v0-new", 2);
    let req = IterRequest {
        with_data: true,
        batch_records: 7,
        ..Default::default()
    };
    let items = iterate_all(b, &req);
    assert_eq!(
        items.len(),
        100,
        "every live key once, overwritten ones in their newest version"
    );
    let mut seen: Vec<Key> = items.iter().map(|i| i.info.key).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 100);
    let first = items.iter().find(|i| i.info.key == keys[0]).unwrap();
    assert_eq!(first.data.as_deref(), Some(&b"v0-new"[..]));
    assert!(items.iter().all(|i| !i.corrupt));
    let nodata = iterate_all(
        b,
        &IterRequest {
            batch_records: 1000,
            ..Default::default()
        },
    );
    assert!(nodata.iter().all(|i| i.data.is_none()));
}

fn iterate_ranges(b: &dyn Backend) {
    let mut keys: Vec<Key> = (0..60u32).map(|i| k(&format!("r{i}"))).collect();
    for (i, key) in keys.iter().enumerate() {
        put(b, key, b"x", 100 + i as u64);
    }
    keys.sort();
    let range = KeyRange {
        start: keys[10],
        end: keys[29],
    };
    let got = iterate_all(
        b,
        &IterRequest {
            key_ranges: vec![range],
            batch_records: 4,
            ..Default::default()
        },
    );
    let mut got: Vec<Key> = got.iter().map(|i| i.info.key).collect();
    got.sort();
    assert_eq!(got, keys[10..30].to_vec());
    let got = iterate_all(
        b,
        &IterRequest {
            time_range: Some((ts(110), ts(119))),
            ..Default::default()
        },
    );
    assert_eq!(got.len(), 10);
    assert!(got
        .iter()
        .all(|i| i.info.timestamp >= ts(110) && i.info.timestamp <= ts(119)));
}

fn iterate_flags(b: &dyn Backend) {
    let (a, r, p) = (k("live"), k("gone"), k("prep"));
    put(b, &a, b"a", 1);
    put(b, &r, b"r", 1);
    b.remove(
        &r,
        &RemoveRequest {
            timestamp: ts(2),
            always_record: false,
            ..Default::default()
        },
    )
    .unwrap();
    b.write(
        &p,
        &WriteRequest {
            data: b"p",
            prepare: Some(10),
            timestamp: ts(3),
            ..Default::default()
        },
    )
    .unwrap();
    let keys = |req: IterRequest| -> Vec<Key> {
        let mut v: Vec<Key> = iterate_all(b, &req).iter().map(|i| i.info.key).collect();
        v.sort();
        v
    };
    assert_eq!(keys(IterRequest::default()), vec![a]);
    let mut both = vec![a, r];
    both.sort();
    assert_eq!(
        keys(IterRequest {
            include_removed: true,
            ..Default::default()
        }),
        both
    );
    let mut both = vec![a, p];
    both.sort();
    assert_eq!(
        keys(IterRequest {
            include_uncommitted: true,
            ..Default::default()
        }),
        both
    );
}

fn read_only(b: &dyn Backend) {
    let key = k("ro");
    put(b, &key, b"kept", 1);
    b.set_read_only(true);
    let r = b.write(
        &key,
        &WriteRequest {
            data: b"no",
            timestamp: ts(2),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(StorageError::ReadOnly)), "{r:?}");
    assert_eq!(StorageError::ReadOnly.errno(), -30);
    assert!(matches!(
        b.remove(
            &key,
            &RemoveRequest {
                timestamp: ts(2),
                always_record: false,
                ..Default::default()
            }
        ),
        Err(StorageError::ReadOnly)
    ));
    assert_eq!(get(b, &key).unwrap(), b"kept");
    assert!(b.stats().read_only);
    b.set_read_only(false);
    put(b, &key, b"yes", 3);
    assert_eq!(get(b, &key).unwrap(), b"yes");
}

fn stats(b: &dyn Backend) {
    for i in 0..10u32 {
        put(b, &k(&format!("s{i}")), b"data", 1);
    }
    put(b, &k("s0"), b"data2", 2);
    b.remove(
        &k("s1"),
        &RemoveRequest {
            timestamp: ts(3),
            always_record: false,
            ..Default::default()
        },
    )
    .unwrap();
    let s = b.stats();
    assert_eq!(s.records, 9);
    assert_eq!(s.removed_records, 1);
}

fn empty_object(b: &dyn Backend) {
    let key = k("empty");
    put(b, &key, b"", 1);
    assert_eq!(get(b, &key).unwrap(), b"");
    assert_eq!(b.lookup(&key, false).unwrap().size, 0);
}

fn oversized(b: &dyn Backend) {
    let key = k("huge");
    let r = b.write(
        &key,
        &WriteRequest {
            data: b"x",
            offset: 1 << 41,
            timestamp: ts(1),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(StorageError::Limit(_))), "{r:?}");
    let r = b.write(
        &key,
        &WriteRequest {
            data: b"x",
            prepare: Some(u64::MAX),
            timestamp: ts(1),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(StorageError::Limit(_))), "{r:?}");
    let r = b.write(
        &key,
        &WriteRequest {
            data: b"x",
            offset: u64::MAX,
            timestamp: ts(1),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(StorageError::Limit(_))), "{r:?}");
    assert!(is_enoent(get(b, &key)));
}

fn write_discards_reservation(b: &dyn Backend) {
    let key = k("superseded");
    b.write(
        &key,
        &WriteRequest {
            data: b"abc",
            prepare: Some(10),
            timestamp: ts(1),
            ..Default::default()
        },
    )
    .unwrap();
    put(b, &key, b"whole", 2);
    let commit = b.write(
        &key,
        &WriteRequest {
            data: b"",
            commit: Some(3),
            timestamp: ts(3),
            ..Default::default()
        },
    );
    assert!(
        is_enoent(commit),
        "COMMIT after a whole write must find no reservation"
    );
    assert_eq!(get(b, &key).unwrap(), b"whole");
    assert_eq!(b.stats().uncommitted_records, 0);
}
