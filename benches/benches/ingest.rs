//! Ingest throughput against the floors it cannot beat: SHA-256 alone, and write+fsync alone.

use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_benches::{random_bytes, scratch_dir};
use strata_store::{BlobStore, Digest};

const SIZE: usize = 256 << 20;

fn ingest(c: &mut Criterion) {
    let data = random_bytes(1, SIZE);
    let digest = Digest::of(&data);
    let mut g = c.benchmark_group("ingest_256MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.bench_function("sha256_only", |b| b.iter(|| Digest::of(&data)));
    g.bench_function("write_fsync_only", |b| {
        let dir = scratch_dir();
        b.iter(|| {
            let path = dir.path().join("f");
            let mut f = std::fs::File::create(&path).unwrap();
            for chunk in data.chunks(1 << 20) {
                f.write_all(chunk).unwrap();
            }
            f.sync_all().unwrap();
            std::fs::remove_file(&path).unwrap();
        })
    });
    g.bench_function("store_ingest", |b| {
        let dir = scratch_dir();
        let store = BlobStore::open(dir.path()).unwrap();
        b.iter(|| {
            let c = store.put_verified(&digest, Some(SIZE as u64), &data[..]).unwrap();
            assert!(c.written);
            store.remove(&digest).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
