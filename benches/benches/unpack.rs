//! Layer extraction: strata's `unpack_layer` against GNU `tar -x` / `tar -xz` on the
//! same bytes, written into the same filesystem.
//!
//! Layers: (a) 20,000 files of 1–16 KiB in 200 directories, (b) 4 files of 64 MiB;
//! plain tar and gzip (level 6). Text-like content (compresses about 2.4:1). Both
//! tools read the layer from a file in `$STRATA_BENCH_DIR` (default
//! `/var/tmp/strata-bench-unpack`, ext4 here) and extract into a fresh directory under
//! `$STRATA_BENCH_OUT` (default `/dev/shm/strata-bench-unpack`, tmpfs); the previous
//! output is deleted and the filesystem synced outside the timed part. As root both
//! restore owners, modes and mtimes. Also measured: (a) with the dedup pool at its
//! default threshold and with every file pooled, to justify the threshold; and the plain
//! layer as the store unpacks a blob it verified at ingest (`plain-verified-blob`: the
//! blob digest is the diff ID, no second hash).
//!
//! Why tmpfs by default: on ext4, creating 20,000 files right after deleting the
//! previous run's 20,000 makes ext4's inode allocator skip "recently deleted" inodes
//! (`recently_deleted` + `find_get_block_common` were 55% of `tar -x`'s kernel time in
//! `perf`), which then measures the allocator, not the extractor, and varies 3x from
//! run to run. Set `STRATA_BENCH_OUT=/var/tmp/...` for ext4 (fine for the big files).
//!
//! Run: `cargo bench -p strata-benches --bench unpack` (`STRATA_BENCH_QUICK=1` for a
//! small smoke run; `STRATA_UNPACK_ONESHOT=LAYER:DEST` runs one unpack, for profilers,
//! with `STRATA_UNPACK_POOL=DIR` and `STRATA_UNPACK_POOL_MIN=BYTES` for the dedup pool).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strata_store::{UnpackOptions, unpack_layer};

struct Layer {
    name: &'static str,
    files: u64,
    bytes: u64,
    tar: PathBuf,
    gz: PathBuf,
}

fn quick() -> bool {
    std::env::var_os("STRATA_BENCH_QUICK").is_some()
}

/// Where the layer files live (generated once, then reused).
fn layer_dir() -> PathBuf {
    std::env::var_os("STRATA_BENCH_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp/strata-bench-unpack"), PathBuf::from)
}

/// Where both tools extract to.
fn out_dir() -> PathBuf {
    std::env::var_os("STRATA_BENCH_OUT")
        .map_or_else(|| PathBuf::from("/dev/shm/strata-bench-unpack"), PathBuf::from)
}

/// Text-like bytes: words from a fixed vocabulary, skewed towards the common ones.
struct Text {
    rng: ChaCha8Rng,
    words: Vec<Vec<u8>>,
}

impl Text {
    fn new(seed: u64) -> Text {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let words = (0..4096)
            .map(|_| {
                let len = rng.random_range(2..10);
                (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect()
            })
            .collect();
        Text { rng, words }
    }

    fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        out.clear();
        while out.len() < len {
            // Squaring a uniform pick favours low indices (a rough Zipf).
            let r: f64 = self.rng.random();
            let word = &self.words[((r * r) * self.words.len() as f64) as usize];
            out.extend_from_slice(word);
            out.push(if self.rng.random_range(0..12) == 0 {
                b'\n'
            } else {
                b' '
            });
        }
        out.truncate(len);
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn build(dir: &Path, name: &'static str, files: &[(String, usize)]) -> Layer {
    let tar_path = dir.join(format!("{name}.tar"));
    let gz_path = dir.join(format!("{name}.tar.gz"));
    let bytes: u64 = files.iter().map(|(_, s)| *s as u64).sum();
    if !(tar_path.exists() && gz_path.exists()) {
        let mut text = Text::new(7);
        let mut b = tar::Builder::new(BufWriter::with_capacity(
            1 << 20,
            fs::File::create(&tar_path).unwrap(),
        ));
        let mut made_dirs = std::collections::BTreeSet::new();
        let mut buf = Vec::new();
        for (path, size) in files {
            if let Some((parent, _)) = path.rsplit_once('/')
                && made_dirs.insert(parent.to_string())
            {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                b.append_data(&mut h, format!("{parent}/"), &[][..]).unwrap();
            }
            text.fill(&mut buf, *size);
            let mut h = header(tar::EntryType::Regular, 0o644, *size as u64);
            b.append_data(&mut h, path, &buf[..]).unwrap();
        }
        b.into_inner().unwrap().flush().unwrap();
        let mut enc = flate2::write::GzEncoder::new(
            BufWriter::with_capacity(1 << 20, fs::File::create(&gz_path).unwrap()),
            flate2::Compression::new(6),
        );
        std::io::copy(&mut fs::File::open(&tar_path).unwrap(), &mut enc).unwrap();
        enc.finish().unwrap().flush().unwrap();
    }
    Layer {
        name,
        files: files.len() as u64,
        bytes,
        tar: tar_path,
        gz: gz_path,
    }
}

fn layers(dir: &Path) -> Vec<Layer> {
    let (n_small, big_size) = if quick() {
        (2_000, 8 << 20)
    } else {
        (20_000, 64 << 20)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let small: Vec<(String, usize)> = (0..n_small)
        .map(|i| {
            (
                format!("d{:03}/f{i:05}.txt", i / 100),
                rng.random_range(1024..=16 * 1024),
            )
        })
        .collect();
    let big: Vec<(String, usize)> = (0..4).map(|i| (format!("big/blob{i}"), big_size)).collect();
    let (small_name, big_name) = if quick() {
        ("small-quick", "big-quick")
    } else {
        ("small-20k", "big-4x64MiB")
    };
    vec![build(dir, small_name, &small), build(dir, big_name, &big)]
}

/// A fresh output directory, deleted (outside the timing) when dropped.
struct Out(PathBuf);

impl Drop for Out {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn fresh(dir: &Path) -> Out {
    static N: AtomicU64 = AtomicU64::new(0);
    let out = dir.join(format!("out-{}", N.fetch_add(1, Ordering::Relaxed)));
    fs::create_dir_all(&out).unwrap();
    // Start every run with nothing dirty from the previous one.
    let _ = Command::new("sync").status();
    Out(out)
}

fn gnu_tar(args: &[&str], layer: &Path, dest: &Path) {
    let status = Command::new("tar")
        .args(args)
        .arg("-f")
        .arg(layer)
        .arg("-C")
        .arg(dest)
        .status()
        .unwrap();
    assert!(status.success());
}

fn bench_unpack(c: &mut Criterion) {
    let layers_at = layer_dir();
    fs::create_dir_all(&layers_at).unwrap();
    let dir = out_dir();
    fs::create_dir_all(&dir).unwrap();
    for layer in layers(&layers_at) {
        let mut group = c.benchmark_group(format!("unpack/{}", layer.name));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(15));
        if layer.files > 100 {
            group.throughput(Throughput::Elements(layer.files));
        } else {
            group.throughput(Throughput::Bytes(layer.bytes));
        }
        let opts = UnpackOptions::default();
        let strata = |path: &Path, dest: &Path, opts: &UnpackOptions| {
            let report = unpack_layer(fs::File::open(path).unwrap(), dest, opts).unwrap();
            assert_eq!(report.files, layer.files);
        };
        group.bench_function("strata/plain", |b| {
            b.iter_batched(
                || fresh(&dir),
                |out| {
                    strata(&layer.tar, &out.0, &opts);
                    out
                },
                BatchSize::PerIteration,
            )
        });
        // How the store unpacks an uncompressed layer blob it verified at ingest: the
        // blob's digest is the diff ID, so the stream is not hashed again.
        let verified = UnpackOptions {
            verified_blob: Some((
                strata_store::Digest::of(&fs::read(&layer.tar).unwrap()),
                fs::metadata(&layer.tar).unwrap().len(),
            )),
            ..opts.clone()
        };
        group.bench_function("strata/plain-verified-blob", |b| {
            b.iter_batched(
                || fresh(&dir),
                |out| {
                    strata(&layer.tar, &out.0, &verified);
                    out
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("tar-x/plain", |b| {
            b.iter_batched(
                || fresh(&dir),
                |out| {
                    gnu_tar(&["-x"], &layer.tar, &out.0);
                    out
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("strata/gzip", |b| {
            b.iter_batched(
                || fresh(&dir),
                |out| {
                    strata(&layer.gz, &out.0, &opts);
                    out
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("tar-xz/gzip", |b| {
            b.iter_batched(
                || fresh(&dir),
                |out| {
                    gnu_tar(&["-xz"], &layer.gz, &out.0);
                    out
                },
                BatchSize::PerIteration,
            )
        });
        if layer.files > 100 {
            // The dedup pool (fresh per run: every file is inserted), at the default
            // threshold and with every file pooled.
            for (label, min) in [
                ("strata/plain+dedup-default", opts.dedup_min_size),
                ("strata/plain+dedup-all", 0),
            ] {
                group.bench_function(label, |b| {
                    b.iter_batched(
                        || {
                            let out = fresh(&dir);
                            let pool = out.0.join("pool");
                            let opts = UnpackOptions {
                                dedup_pool: Some(pool),
                                dedup_min_size: min,
                                ..opts.clone()
                            };
                            (out, opts)
                        },
                        |(out, opts)| {
                            strata(&layer.tar, &out.0.join("layer"), &opts);
                            out
                        },
                        BatchSize::PerIteration,
                    )
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_unpack);

/// `criterion_main!`, plus a one-shot mode for profilers (`perf stat`, `strace -c`):
/// `STRATA_UNPACK_ONESHOT=LAYER:DEST target/release/deps/unpack-*` unpacks once and
/// prints the report.
fn main() {
    if let Some(spec) = std::env::var_os("STRATA_UNPACK_ONESHOT") {
        let spec = spec.to_string_lossy().into_owned();
        let (layer, dest) = spec.split_once(':').expect("STRATA_UNPACK_ONESHOT=LAYER:DEST");
        let opts = UnpackOptions {
            dedup_pool: std::env::var_os("STRATA_UNPACK_POOL").map(PathBuf::from),
            dedup_min_size: std::env::var("STRATA_UNPACK_POOL_MIN")
                .map_or(strata_store::DEFAULT_DEDUP_MIN_SIZE, |v| v.parse().unwrap()),
            ..UnpackOptions::default()
        };
        let started = std::time::Instant::now();
        let report = unpack_layer(fs::File::open(layer).unwrap(), Path::new(dest), &opts);
        println!("{:?} in {:?}", report.unwrap(), started.elapsed());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
