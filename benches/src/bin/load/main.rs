//! `load`: many concurrent clients against one registry for a bounded time — pushes of
//! overlapping images (shared base layers and unique ones; monolithic `POST ?digest=`,
//! `POST`+`PUT`, chunked `PATCH`es with `Content-Range`, and streamed chunked-encoding
//! `PATCH`es; then the manifest), pulls (manifest, then every blob, digests checked), tag
//! lists and HEADs — reporting latency percentiles per kind of request, every error, and
//! the server's RSS and open descriptors before, during and after (`/proc/PID`).
//!
//! `benches/scripts/load.sh` builds and starts a release `registry-server` and runs this.

mod cli;
mod slow;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use rand::{Rng, SeedableRng};
use sha2::{Digest as _, Sha256};

use cli::Settings;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Shared base layers every pushed image takes two of (so pushes overlap).
const BASES: usize = 8;
const BASE_LEN: usize = 2 << 20;
/// Chunk size of chunked uploads: 1 MiB `PATCH`es go through the server's direct path.
const CHUNK: usize = 1 << 20;
/// Pushed images the pulls choose from (the oldest are replaced beyond this).
const KEEP_PUSHED: usize = 4000;

#[derive(Clone)]
struct Blob {
    digest: String,
    bytes: Bytes,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
            bytes: Bytes::from(bytes),
        }
    }
}

/// An image some client pushed and the registry acknowledged.
#[derive(Clone)]
struct Pushed {
    repo: String,
    tag: String,
    manifest_digest: String,
    blobs: Vec<(String, usize)>,
}

/// Latencies (µs) and errors per kind of request.
#[derive(Default)]
struct Stats {
    latencies: Mutex<BTreeMap<&'static str, Vec<u32>>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    error_samples: Mutex<Vec<String>>,
    requests: AtomicU64,
}

impl Stats {
    fn record(&self, kind: &'static str, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let us = took.as_micros().min(u32::MAX as u128) as u32;
        self.latencies.lock().unwrap().entry(kind).or_default().push(us);
    }

    fn error(&self, kind: &'static str, what: String) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
        let mut s = self.error_samples.lock().unwrap();
        if s.len() < 30 {
            s.push(format!("{kind}: {what}"));
        }
    }
}

struct World {
    base: String,
    repos: Vec<String>,
    bases: Vec<Blob>,
    pushed: RwLock<Vec<Pushed>>,
    stats: Stats,
    stop: AtomicBool,
}

/// One request, timed until its whole body is read; an unexpected status or a transport
/// error is counted as an error of its kind (and `None` returned).
async fn call(
    w: &World,
    kind: &'static str,
    req: reqwest::RequestBuilder,
    expect: &[u16],
) -> Option<(reqwest::StatusCode, reqwest::header::HeaderMap, Bytes)> {
    let started = Instant::now();
    let result = async {
        let r = req.send().await?;
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.bytes().await?;
        Ok::<_, reqwest::Error>((status, headers, body))
    }
    .await;
    let took = started.elapsed();
    match result {
        Ok((status, headers, body)) => {
            w.stats.record(kind, took);
            if expect.contains(&status.as_u16()) {
                Some((status, headers, body))
            } else {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                w.stats.error(kind, format!("status {status}: {text}"));
                None
            }
        }
        Err(e) => {
            w.stats.record(kind, took);
            let mut what = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                what.push_str(&format!(": {s}"));
                source = s.source();
            }
            w.stats.error(kind, what);
            None
        }
    }
}

fn location(w: &World, headers: &reqwest::header::HeaderMap) -> Option<String> {
    let loc = headers.get("location")?.to_str().ok()?;
    Some(if loc.starts_with("http") {
        loc.to_string()
    } else {
        format!("{}{loc}", w.base)
    })
}

fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

/// Uploads one blob the way `how` says.
async fn upload(w: &World, http: &reqwest::Client, repo: &str, blob: &Blob, how: u32) -> bool {
    let base = &w.base;
    let len = blob.bytes.len();
    match how {
        // Monolithic: one POST with the digest and the body.
        0 => call(
            w,
            "upload_monolithic",
            http.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={}", blob.digest))
                .header("content-type", "application/octet-stream")
                .body(blob.bytes.clone()),
            &[201],
        )
        .await
        .is_some(),
        // POST, then one PUT with the whole body.
        1 => {
            let Some((_, h, _)) = call(
                w,
                "upload_start",
                http.post(format!("{base}/v2/{repo}/blobs/uploads/")),
                &[202],
            )
            .await
            else {
                return false;
            };
            let Some(loc) = location(w, &h) else { return false };
            call(
                w,
                "upload_put",
                http.put(with_digest(&loc, &blob.digest))
                    .header("content-type", "application/octet-stream")
                    .body(blob.bytes.clone()),
                &[201],
            )
            .await
            .is_some()
        }
        // Chunked: PATCHes of CHUNK bytes with Content-Range, then an empty PUT.
        2 => {
            let Some((_, h, _)) = call(
                w,
                "upload_start",
                http.post(format!("{base}/v2/{repo}/blobs/uploads/")),
                &[202],
            )
            .await
            else {
                return false;
            };
            let Some(mut loc) = location(w, &h) else {
                return false;
            };
            let mut off = 0;
            while off < len {
                let end = (off + CHUNK).min(len);
                let Some((_, h, _)) = call(
                    w,
                    "upload_patch",
                    http.patch(&loc)
                        .header("content-type", "application/octet-stream")
                        .header("content-range", format!("{off}-{}", end - 1))
                        .body(blob.bytes.slice(off..end)),
                    &[202],
                )
                .await
                else {
                    return false;
                };
                loc = location(w, &h).unwrap_or(loc);
                off = end;
            }
            call(w, "upload_put", http.put(with_digest(&loc, &blob.digest)), &[201])
                .await
                .is_some()
        }
        // Streamed: one PATCH in chunked transfer encoding (no length), then PUT.
        _ => {
            let Some((_, h, _)) = call(
                w,
                "upload_start",
                http.post(format!("{base}/v2/{repo}/blobs/uploads/")),
                &[202],
            )
            .await
            else {
                return false;
            };
            let Some(loc) = location(w, &h) else { return false };
            let pieces: Vec<Result<Bytes, std::io::Error>> = (0..len)
                .step_by(256 << 10)
                .map(|o| Ok(blob.bytes.slice(o..(o + (256 << 10)).min(len))))
                .collect();
            let body = reqwest::Body::wrap_stream(futures::stream::iter(pieces));
            let Some((_, h, _)) = call(
                w,
                "upload_patch_streamed",
                http.patch(&loc)
                    .header("content-type", "application/octet-stream")
                    .body(body),
                &[202],
            )
            .await
            else {
                return false;
            };
            let loc = location(w, &h).unwrap_or(loc);
            call(w, "upload_put", http.put(with_digest(&loc, &blob.digest)), &[201])
                .await
                .is_some()
        }
    }
}

/// Pushes an image of two shared base layers, one unique layer and a unique config.
async fn push(w: &World, http: &reqwest::Client, rng: &mut impl Rng, repo: &str, client: usize, n: u64) {
    let repo = repo.to_string();
    let tag = format!("c{client}-{n}");
    let a = rng.random_range(0..BASES);
    let b = (a + rng.random_range(1..BASES)) % BASES;
    let unique_len = rng.random_range(16 << 10..=64 << 10);
    let mut unique = vec![0u8; unique_len];
    rng.fill(&mut unique[..]);
    let unique = Blob::new(unique);
    let config = Blob::new(
        format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{\"Env\":[\"C={client}\",\"N={n}\"]}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[]}}}}"
        )
        .into_bytes(),
    );
    let layers = [w.bases[a].clone(), w.bases[b].clone(), unique];
    for blob in std::iter::once(&config).chain(layers.iter()) {
        // Mostly ask first, as clients do; sometimes upload anyway, so that uploads of
        // the same content race.
        if rng.random_bool(0.7) {
            let Some((status, _, _)) = call(
                w,
                "blob_head",
                http.head(format!("{}/v2/{repo}/blobs/{}", w.base, blob.digest)),
                &[200, 404],
            )
            .await
            else {
                return;
            };
            if status == 200 {
                continue;
            }
        }
        let how = if blob.bytes.len() >= CHUNK {
            rng.random_range(0..4)
        } else {
            rng.random_range(0..2)
        };
        if !upload(w, http, &repo, blob, how).await {
            return;
        }
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.bytes.len()},
        "layers": layers.iter().map(|l| serde_json::json!(
            {"mediaType": OCI_LAYER, "digest": l.digest, "size": l.bytes.len()})).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(serde_json::to_vec(&manifest).unwrap());
    let put = http
        .put(format!("{}/v2/{repo}/manifests/{tag}", w.base))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.bytes.clone());
    let Some((_, h, _)) = call(w, "manifest_put", put, &[201]).await else {
        return;
    };
    let digest = h
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if digest != manifest.digest {
        w.stats
            .error("manifest_put", format!("digest {digest} for {}", manifest.digest));
        return;
    }
    let entry = Pushed {
        repo,
        tag,
        manifest_digest: manifest.digest,
        blobs: std::iter::once(&config)
            .chain(layers.iter())
            .map(|b| (b.digest.clone(), b.bytes.len()))
            .collect(),
    };
    let mut pushed = w.pushed.write().unwrap();
    if pushed.len() < KEEP_PUSHED {
        pushed.push(entry);
    } else {
        let i = rng.random_range(0..pushed.len());
        pushed[i] = entry;
    }
}

fn pick(w: &World, rng: &mut impl Rng) -> Option<Pushed> {
    let pushed = w.pushed.read().unwrap();
    (!pushed.is_empty()).then(|| pushed[rng.random_range(0..pushed.len())].clone())
}

/// Pulls a pushed image: the manifest by tag, then each blob, every digest checked.
async fn pull(w: &World, http: &reqwest::Client, rng: &mut impl Rng) {
    let Some(p) = pick(w, rng) else { return };
    let Some((_, _, body)) = call(
        w,
        "manifest_get",
        http.get(format!("{}/v2/{}/manifests/{}", w.base, p.repo, p.tag))
            .header("accept", OCI_MANIFEST),
        &[200],
    )
    .await
    else {
        return;
    };
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    if got != p.manifest_digest {
        w.stats.error(
            "manifest_get",
            format!("{}:{} is {got}, pushed {}", p.repo, p.tag, p.manifest_digest),
        );
        return;
    }
    for (digest, size) in &p.blobs {
        let Some((_, _, body)) = call(
            w,
            "blob_get",
            http.get(format!("{}/v2/{}/blobs/{digest}", w.base, p.repo)),
            &[200],
        )
        .await
        else {
            return;
        };
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if got != *digest || body.len() != *size {
            w.stats
                .error("blob_get", format!("{digest}: got {got} ({} bytes)", body.len()));
            return;
        }
    }
}

async fn heads(w: &World, http: &reqwest::Client, rng: &mut impl Rng) {
    let Some(p) = pick(w, rng) else { return };
    let Some((_, h, _)) = call(
        w,
        "manifest_head",
        http.head(format!("{}/v2/{}/manifests/{}", w.base, p.repo, p.tag))
            .header("accept", OCI_MANIFEST),
        &[200],
    )
    .await
    else {
        return;
    };
    if h.get("docker-content-digest").and_then(|v| v.to_str().ok()) != Some(p.manifest_digest.as_str()) {
        w.stats
            .error("manifest_head", format!("{}:{}: wrong digest", p.repo, p.tag));
    }
    let (digest, _) = &p.blobs[rng.random_range(0..p.blobs.len())];
    call(
        w,
        "blob_head",
        http.head(format!("{}/v2/{}/blobs/{digest}", w.base, p.repo)),
        &[200],
    )
    .await;
}

async fn tags(w: &World, http: &reqwest::Client, rng: &mut impl Rng) {
    let repo = &w.repos[rng.random_range(0..w.repos.len())];
    call(
        w,
        "tags_list",
        http.get(format!("{}/v2/{repo}/tags/list?n=100", w.base)),
        &[200],
    )
    .await;
}

async fn client(w: Arc<World>, id: usize) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(300))
        .build()
        .expect("http client");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(id as u64);
    let mut n = 0u64;
    while !w.stop.load(Ordering::Relaxed) {
        n += 1;
        match rng.random_range(0..100) {
            0..25 => {
                let repo = w.repos[rng.random_range(0..w.repos.len())].clone();
                push(&w, &http, &mut rng, &repo, id, n).await
            }
            25..60 => pull(&w, &http, &mut rng).await,
            60..75 => tags(&w, &http, &mut rng).await,
            _ => heads(&w, &http, &mut rng).await,
        }
    }
}

/// The server's resident memory (KiB) and open descriptors.
fn sample(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

#[derive(Default, Debug, Clone, Copy, serde::Serialize)]
struct Peak {
    rss_kib: u64,
    fds: usize,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let s = cli::Cli::parse().into_settings();
    run(s).await
}

async fn run(s: Settings) -> anyhow::Result<()> {
    let bases = (0..BASES)
        .map(|i| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1000 + i as u64);
            let mut v = vec![0u8; BASE_LEN];
            rng.fill(&mut v[..]);
            Blob::new(v)
        })
        .collect();
    let w = Arc::new(World {
        base: s.base.clone(),
        repos: (0..s.repos).map(|i| format!("load/r{i}")).collect(),
        bases,
        pushed: RwLock::new(Vec::new()),
        stats: Stats::default(),
        stop: AtomicBool::new(false),
    });
    let probe = reqwest::get(format!("{}/v2/", s.base))
        .await
        .with_context(|| format!("reach {}", s.base))?;
    if !probe.status().is_success() {
        bail!("{}/v2/ answered {}", s.base, probe.status());
    }
    // One image in every repository first, so that pulls and tag lists have targets.
    let http = reqwest::Client::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for (i, repo) in w.repos.iter().enumerate() {
        push(&w, &http, &mut rng, repo, usize::MAX, i as u64).await;
        if w.stats.errors.lock().unwrap().values().sum::<u64>() > 0 {
            bail!("seeding failed: {:?}", w.stats.error_samples.lock().unwrap());
        }
    }
    drop(http);
    w.stats.latencies.lock().unwrap().clear();
    w.stats.requests.store(0, Ordering::Relaxed);
    let before = s.pid.and_then(sample);
    eprintln!(
        "load: {} clients for {:?} against {} (server before: {:?})",
        s.clients, s.duration, s.base, before
    );
    // The sampler: peaks during the run, a line every 5 s.
    let during = Arc::new(Mutex::new(Peak::default()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = s.pid.map(|pid| {
        let (during, sampling, w) = (during.clone(), sampling.clone(), w.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last_print = Instant::now();
            while sampling.load(Ordering::Relaxed) {
                if let Some((rss, fds)) = sample(pid) {
                    let mut p = during.lock().unwrap();
                    p.rss_kib = p.rss_kib.max(rss);
                    p.fds = p.fds.max(fds);
                    if last_print.elapsed() >= Duration::from_secs(5) {
                        last_print = Instant::now();
                        eprintln!(
                            "  t={:>3}s requests={} errors={} rss={} MiB fds={}",
                            started.elapsed().as_secs(),
                            w.stats.requests.load(Ordering::Relaxed),
                            w.stats.errors.lock().unwrap().values().sum::<u64>(),
                            rss / 1024,
                            fds
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    // The slow clients, and a large blob for the stalled readers.
    let slow_stats = Arc::new(slow::SlowStats::default());
    let mut slow_tasks = Vec::new();
    if s.slow > 0 {
        let big = Blob::new({
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
            let mut v = vec![0u8; 64 << 20];
            rng.fill(&mut v[..]);
            v
        });
        let http = reqwest::Client::new();
        if !upload(&w, &http, "slow/big", &big, 0).await {
            bail!("uploading the stalled readers' blob failed");
        }
        let addr = s.base.trim_start_matches("http://").to_string();
        for _ in 0..s.slow {
            let (w1, st1, a1) = (w.clone(), slow_stats.clone(), addr.clone());
            slow_tasks.push(tokio::spawn(
                async move { slow::slowloris(a1, &w1.stop, &st1).await },
            ));
            let (w1, st1, a1) = (w.clone(), slow_stats.clone(), addr.clone());
            slow_tasks.push(tokio::spawn(async move {
                slow::slow_body(a1, 100, &w1.stop, &st1).await
            }));
            let (w1, st1, a1) = (w.clone(), slow_stats.clone(), addr.clone());
            slow_tasks.push(tokio::spawn(async move {
                slow::slow_body(a1, 0, &w1.stop, &st1).await
            }));
            let (w1, st1, a1) = (w.clone(), slow_stats.clone(), addr.clone());
            let path = format!("/v2/slow/big/blobs/{}", big.digest);
            let len = big.bytes.len();
            slow_tasks.push(tokio::spawn(async move {
                slow::stalled_reader(a1, path, len, &w1.stop, &st1).await
            }));
        }
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..s.clients)
        .map(|id| tokio::spawn(client(w.clone(), id)))
        .collect();
    tokio::time::sleep(s.duration).await;
    w.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed();
    for t in slow_tasks {
        t.await?;
    }
    sampling.store(false, Ordering::Relaxed);
    if let Some(t) = sampler {
        t.await?;
    }
    let peak = *during.lock().unwrap();
    // The clients are gone (their connections closed): the idle server.
    let mut after = None;
    if let Some(pid) = s.pid {
        let until = Instant::now() + s.settle;
        while Instant::now() < until {
            after = sample(pid);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        after = sample(pid).or(after);
    }
    report_slow(&slow_stats);
    report(&s, &w, elapsed, before, peak, after)
}

fn report_slow(st: &slow::SlowStats) {
    let held = st.held.lock().unwrap();
    let open = st.open_at_end.lock().unwrap();
    let other = st.not_cut.lock().unwrap();
    if held.is_empty() && open.is_empty() && other.is_empty() {
        return;
    }
    println!(
        "{:<16} {:>6} {:>11} {:>11} {:>11} {:>13}",
        "slow client", "cut", "held p50 s", "held p99 s", "held max s", "open at end"
    );
    for kind in ["slowloris", "trickled body", "stalled body", "stalled reader"] {
        let mut h: Vec<f64> = held.iter().filter(|(k, _)| *k == kind).map(|(_, t)| *t).collect();
        h.sort_by(f64::total_cmp);
        let q = |p: f64| {
            h.get(((h.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let o: Vec<f64> = open.iter().filter(|(k, _)| *k == kind).map(|(_, t)| *t).collect();
        let omax = o.iter().copied().fold(0.0, f64::max);
        println!(
            "{kind:<16} {:>6} {:>11.1} {:>11.1} {:>11.1} {:>6} (≤{omax:.0} s)",
            h.len(),
            q(0.5),
            q(0.99),
            q(1.0),
            o.len()
        );
    }
    for (kind, what) in other.iter().take(20) {
        println!("slow client not cut off: {kind}: {what}");
    }
}

fn report(
    s: &Settings,
    w: &World,
    elapsed: Duration,
    before: Option<(u64, usize)>,
    peak: Peak,
    after: Option<(u64, usize)>,
) -> anyhow::Result<()> {
    let latencies = w.stats.latencies.lock().unwrap();
    let errors = w.stats.errors.lock().unwrap();
    let total: usize = latencies.values().map(Vec::len).sum();
    let total_errors: u64 = errors.values().sum();
    println!(
        "{} clients, {:.0} s: {total} requests ({:.0}/s), {total_errors} errors",
        s.clients,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "{:<22} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "kind", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    let mut kinds = serde_json::Map::new();
    for (kind, v) in latencies.iter() {
        let mut v = v.clone();
        v.sort_unstable();
        let e = errors.get(kind).copied().unwrap_or(0);
        let (p50, p90, p99, max) = (
            percentile(&v, 0.5),
            percentile(&v, 0.9),
            percentile(&v, 0.99),
            percentile(&v, 1.0),
        );
        println!(
            "{kind:<22} {:>8} {e:>7} {p50:>9.1} {p90:>9.1} {p99:>9.1} {max:>9.1}",
            v.len()
        );
        kinds.insert(
            kind.to_string(),
            serde_json::json!({"requests": v.len(), "errors": e, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": max}),
        );
    }
    let mib = |k: u64| k as f64 / 1024.0;
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "server RSS: {:.0} MiB before, {:.0} MiB peak, {:.0} MiB {} s after; open fds: {} before, {} peak, {} after",
            mib(b.0),
            mib(peak.rss_kib),
            mib(a.0),
            s.settle.as_secs(),
            b.1,
            peak.fds,
            a.1
        );
    }
    for e in w.stats.error_samples.lock().unwrap().iter() {
        println!("error: {e}");
    }
    if let Some(path) = &s.json {
        let j = serde_json::json!({
            "clients": s.clients,
            "seconds": elapsed.as_secs_f64(),
            "requests": total,
            "errors": total_errors,
            "kinds": kinds,
            "rss_kib": {"before": before.map(|b| b.0), "peak": peak.rss_kib, "after": after.map(|a| a.0)},
            "fds": {"before": before.map(|b| b.1), "peak": peak.fds, "after": after.map(|a| a.1)},
            "error_samples": *w.stats.error_samples.lock().unwrap(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&j)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if total_errors > 0 {
        bail!("{total_errors} errors");
    }
    Ok(())
}
