//! Criterion micro-benchmarks: one 1 KiB put (no fsync) and one warm 1 KiB get, on the Apsis
//! blob engine, fjall and redb. The load tool (`storage-bench`) gives the side-by-side
//! throughput figures; this gives per-operation latency distributions.
//! Run: `cargo bench -p apsis-storage-bench`.

use apsis_storage_bench::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn engines(dir: &std::path::Path) -> Vec<Box<dyn Engine>> {
    let d = |n: &str| {
        let p = dir.join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    vec![
        Box::new(Apsis::open(&d("apsis"), -1)),
        Box::new(Fjall::open(&d("fjall"))),
        Box::new(Redb::open(&d("redb"))),
    ]
}

fn put_get(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let val = value(1024, 1);
    let preload = keys(50_000, 2);
    let mut g = c.benchmark_group("1KiB");
    g.throughput(Throughput::Elements(1));
    for e in engines(dir.path()) {
        for k in &preload {
            e.put(k, &val);
        }
        let mut rng = fastrand::Rng::with_seed(3);
        let mut k = [0u8; 64];
        g.bench_function(format!("put/{}", e.name()), |b| {
            b.iter(|| {
                rng.fill(&mut k);
                e.put(&k, &val)
            })
        });
        let mut i = 0usize;
        g.bench_function(format!("get/{}", e.name()), |b| {
            b.iter(|| {
                i = (i + 7919) % preload.len();
                e.get(&preload[i])
            })
        });
    }
    g.finish();
}

criterion_group!(benches, put_get);
criterion_main!(benches);
