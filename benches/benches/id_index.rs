//! `IdIndex` at docker scale: building over 1,000,000 random sha256-hex ids, resolving
//! 12-character prefixes, and computing shortest unique prefixes.
//!
//! Run with `cargo bench -p strata-benches --bench id_index`. Before measuring it
//! prints the index's heap estimate and the process RSS growth per id.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strata_store::{IdIndex, IdKind};

const N: usize = 1_000_000;
/// Queries cycle through this many ids (a power of two), spread over the whole tree.
const QUERIES: usize = 1 << 16;

/// `n` random 64-digit lowercase hex ids, the same on every run.
fn random_ids(n: usize) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5157_a7a0);
    (0..n)
        .map(|_| {
            let mut bytes = [0u8; 32];
            rng.fill(&mut bytes);
            hex::encode(bytes)
        })
        .collect()
}

fn kind_of(i: usize) -> IdKind {
    IdKind::ALL[i % IdKind::ALL.len()]
}

/// Resident set size of this process, in bytes (Linux; 0 elsewhere).
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn report_memory(ids: &[String]) {
    let before = rss_bytes();
    let index = IdIndex::from_iter_bulk(ids.iter().enumerate().map(|(i, id)| (id.as_str(), kind_of(i))));
    let after = rss_bytes();
    eprintln!(
        "id_index: {} ids: heap estimate {:.1} B/id, RSS growth {:.1} B/id",
        index.len(),
        index.heap_bytes() as f64 / index.len() as f64,
        after.saturating_sub(before) as f64 / index.len() as f64,
    );
}

fn bench_id_index(c: &mut Criterion) {
    let ids = random_ids(N);
    report_memory(&ids);

    let mut build = c.benchmark_group("id_index/build_1m");
    build
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    build.bench_function("from_iter_bulk", |b| {
        b.iter(|| IdIndex::from_iter_bulk(ids.iter().enumerate().map(|(i, id)| (id.as_str(), kind_of(i)))))
    });
    build.bench_function("insert", |b| {
        b.iter(|| {
            let mut index = IdIndex::new();
            for (i, id) in ids.iter().enumerate() {
                index.insert(id, kind_of(i));
            }
            index
        })
    });
    build.finish();

    let index = IdIndex::from_iter_bulk(ids.iter().enumerate().map(|(i, id)| (id.as_str(), kind_of(i))));
    let step = N / QUERIES;
    let sample: Vec<&String> = (0..QUERIES).map(|i| &ids[i * step]).collect();
    let prefixes: Vec<&str> = sample.iter().map(|id| &id[..12]).collect();

    let mut query = c.benchmark_group("id_index/query_1m");
    let mut i = 0;
    query.bench_function("resolve_12", |b| {
        b.iter(|| {
            i = (i + 1) % QUERIES;
            index.resolve(black_box(prefixes[i]), None)
        })
    });
    query.bench_function("resolve_12_kind", |b| {
        b.iter(|| {
            i = (i + 1) % QUERIES;
            index.resolve(black_box(prefixes[i]), Some(IdKind::Image))
        })
    });
    query.bench_function("resolve_4_ambiguous", |b| {
        b.iter(|| {
            i = (i + 1) % QUERIES;
            index.resolve(black_box(&prefixes[i][..4]), None)
        })
    });
    query.bench_function("count_prefix_4", |b| {
        b.iter(|| {
            i = (i + 1) % QUERIES;
            index.count_prefix(black_box(&prefixes[i][..4]))
        })
    });
    query.bench_function("shortest_unique_12", |b| {
        b.iter(|| {
            i = (i + 1) % QUERIES;
            index.shortest_unique(black_box(sample[i]), 12)
        })
    });
    query.bench_function("contains", |b| {
        b.iter(|| {
            i = (i + 1) % QUERIES;
            index.contains(black_box(sample[i]))
        })
    });
    query.finish();
}

criterion_group!(benches, bench_id_index);
criterion_main!(benches);
