//! Benchmarks of the Apsis blob engine against fjall (an LSM tree), redb (a copy-on-write
//! B-tree) and a plain sequential file write, on the same keys and values.
//!
//! # Layout
//! - this file: [`Engine`], one small put/get interface over the three stores, with the
//!   settings that make them comparable (no fsync per put: Apsis `sync = -1`, fjall's default
//!   journal buffering, redb `Durability::None`); key and value generators; RSS reading.
//! - `src/bin/storage-bench.rs`: the load tool that prints side-by-side tables
//!   (`cargo run --release -p apsis-storage-bench -- all`).
//! - `benches/engines.rs`: criterion micro-benchmarks of the same puts and gets.
//!
//! Figures and the commands that produce them are in `docs/benchmarks.md`.

use apsis_storage::{Backend, BlobBackend, BlobConfig, Key, ReadRequest, Timestamp, WriteRequest};
use std::path::Path;

/// One store under test.
pub trait Engine: Send + Sync {
    fn name(&self) -> &'static str;
    fn put(&self, key: &[u8; 64], value: &[u8]);
    /// Returns the value's length (so the read cannot be optimised away).
    fn get(&self, key: &[u8; 64]) -> usize;
    /// Makes everything written so far durable.
    fn sync(&self);
}

pub struct Apsis(pub BlobBackend);

impl Apsis {
    pub fn open(dir: &Path, sync: i64) -> Apsis {
        Apsis(
            BlobBackend::open_path(
                dir,
                BlobConfig {
                    sync,
                    ..Default::default()
                },
            )
            .expect("open apsis"),
        )
    }
}

impl Engine for Apsis {
    fn name(&self) -> &'static str {
        "apsis blob"
    }
    fn put(&self, key: &[u8; 64], value: &[u8]) {
        self.0
            .write(
                &Key(*key),
                &WriteRequest {
                    data: value,
                    timestamp: Timestamp::new(1, 0),
                    ..Default::default()
                },
            )
            .expect("apsis put");
    }
    fn get(&self, key: &[u8; 64]) -> usize {
        self.0
            .read(&Key(*key), &ReadRequest::default())
            .expect("apsis get")
            .data
            .len()
    }
    fn sync(&self) {
        self.0.sync().expect("apsis sync");
    }
}

pub struct Fjall {
    keyspace: fjall::Keyspace,
    part: fjall::PartitionHandle,
}

impl Fjall {
    pub fn open(dir: &Path) -> Fjall {
        let keyspace = fjall::Config::new(dir).open().expect("open fjall");
        let part = keyspace
            .open_partition("bench", fjall::PartitionCreateOptions::default())
            .expect("fjall partition");
        Fjall { keyspace, part }
    }
}

impl Engine for Fjall {
    fn name(&self) -> &'static str {
        "fjall"
    }
    fn put(&self, key: &[u8; 64], value: &[u8]) {
        self.part.insert(&key[..], value).expect("fjall put");
    }
    fn get(&self, key: &[u8; 64]) -> usize {
        self.part
            .get(&key[..])
            .expect("fjall get")
            .expect("fjall: key present")
            .len()
    }
    fn sync(&self) {
        self.keyspace
            .persist(fjall::PersistMode::SyncData)
            .expect("fjall persist");
    }
}

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("bench");

pub struct Redb(redb::Database);

impl Redb {
    pub fn open(dir: &Path) -> Redb {
        let db = redb::Database::create(dir.join("bench.redb")).expect("open redb");
        let txn = db.begin_write().expect("redb txn");
        txn.open_table(REDB_TABLE).expect("redb table");
        txn.commit().expect("redb commit");
        Redb(db)
    }
}

impl Engine for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }
    fn put(&self, key: &[u8; 64], value: &[u8]) {
        let mut txn = self.0.begin_write().expect("redb txn");
        txn.set_durability(redb::Durability::None);
        {
            let mut t = txn.open_table(REDB_TABLE).expect("redb table");
            t.insert(&key[..], value).expect("redb put");
        }
        txn.commit().expect("redb commit");
    }
    fn get(&self, key: &[u8; 64]) -> usize {
        let txn = self.0.begin_read().expect("redb read txn");
        let t = txn.open_table(REDB_TABLE).expect("redb table");
        let v = t
            .get(&key[..])
            .expect("redb get")
            .expect("redb: key present");
        v.value().len()
    }
    fn sync(&self) {
        let mut txn = self.0.begin_write().expect("redb txn");
        txn.set_durability(redb::Durability::Immediate);
        txn.commit().expect("redb commit");
    }
}

/// `n` random 64-byte ids (ids are sha512 digests, so random bytes are faithful).
pub fn keys(n: usize, seed: u64) -> Vec<[u8; 64]> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| {
            let mut k = [0u8; 64];
            rng.fill(&mut k);
            k
        })
        .collect()
}

/// A value of `len` bytes that does not compress (fjall compresses blocks with lz4).
pub fn value(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut v);
    v
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
