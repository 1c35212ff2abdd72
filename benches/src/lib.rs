//! Shared helpers for strata's benchmarks: seeded data and scratch directories on disk.

use rand::{RngCore, SeedableRng};

/// `len` bytes of seeded random data (incompressible, like real layer content).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A scratch directory on the disk under test (`STRATA_BENCH_DIR`, default `/var/tmp`),
/// not tmpfs, so fsync costs what it costs for a store.
pub fn scratch_dir() -> tempfile::TempDir {
    let base = std::env::var_os("STRATA_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into());
    tempfile::Builder::new()
        .prefix("strata-bench-")
        .tempdir_in(base)
        .expect("create bench dir")
}
