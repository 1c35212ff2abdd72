//! Scale-out: `registry-server` replicas sharing SeaweedFS's S3 gateway (blobs) and a
//! private PostgreSQL (metadata), behind an HAProxy that sends each request to the next
//! replica. Real clients push and pull through the balancer; chunks of one upload land on
//! different replicas; a replica killed mid-push does not lose what was acknowledged.

use std::net::SocketAddr;
use std::path::Path;

use strata_fixtures::peers::{self, skopeo_ok};
use strata_fixtures::scaleout::{LoadBalancer, Postgres, Seaweed};
use strata_fixtures::{Flavor, LayerCompression, busybox, small_image};

/// The shared backends and N replicas over them.
struct Cluster {
    seaweed: Seaweed,
    postgres: Postgres,
    bucket: String,
    dir: tempfile::TempDir,
    replicas: Vec<Replica>,
    lb: Option<LoadBalancer>,
}

struct Replica {
    child: std::process::Child,
    addr: SocketAddr,
    config: std::path::PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(
    listen: SocketAddr,
    root: &Path,
    seaweed: &Seaweed,
    bucket: &str,
    db_url: &str,
    extra: &str,
    tail: &str,
) -> String {
    format!(
        r#"listen = "{listen}"
root = "{root}"
[storage]
backend = "s3"
endpoint = "{endpoint}"
region = "us-east-1"
bucket = "{bucket}"
prefix = "strata"
path_style = true
access_key = "{ak}"
secret_key = "{sk}"
{extra}
[metadata]
backend = "postgres"
url = "{db_url}"
{tail}
"#,
        root = root.display(),
        endpoint = seaweed.endpoint(),
        ak = seaweed.access_key(),
        sk = seaweed.secret_key(),
    )
}

impl Cluster {
    /// Starts the backends and `n` replicas, with a balancer when `n > 1`. None: a peer is
    /// missing on a workstation (a SKIP line was printed).
    fn start(n: usize, storage_extra: &str) -> Option<Cluster> {
        Cluster::start_with(n, storage_extra, "")
    }

    /// [`Cluster::start`] with more TOML after the `[metadata]` table (e.g. `[gc]`).
    fn start_with(n: usize, storage_extra: &str, tail: &str) -> Option<Cluster> {
        let postgres = Postgres::start()?;
        let seaweed = Seaweed::start()?;
        let bucket = "registry".to_string();
        seaweed.create_bucket(&bucket);
        postgres.create_database("registry");
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cluster {
            seaweed,
            postgres,
            bucket,
            dir,
            replicas: Vec::new(),
            lb: None,
        };
        for i in 0..n {
            c.add_replica(i, storage_extra, tail);
        }
        if n > 1 {
            let addrs: Vec<SocketAddr> = c.replicas.iter().map(|r| r.addr).collect();
            c.lb = Some(LoadBalancer::start(&addrs)?);
        }
        Some(c)
    }

    fn add_replica(&mut self, i: usize, storage_extra: &str, tail: &str) {
        let port = peers::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let root = self.dir.path().join(format!("replica-{i}"));
        let config = self.dir.path().join(format!("replica-{i}.toml"));
        std::fs::write(
            &config,
            config_text(
                addr,
                &root,
                &self.seaweed,
                &self.bucket,
                &self.postgres.url("registry"),
                storage_extra,
                tail,
            ),
        )
        .unwrap();
        let r = spawn_replica(addr, &config);
        self.replicas.push(r);
    }

    /// Where clients connect: the balancer, or the one replica.
    fn addr(&self) -> String {
        match &self.lb {
            Some(lb) => lb.addr().to_string(),
            None => self.replicas[0].addr.to_string(),
        }
    }

    fn objects(&self) -> Vec<String> {
        self.seaweed.list_keys(&self.bucket, "strata/")
    }

    /// `store ARGS --config <replica 0's config>`: the admin tool on the shared backends.
    fn store(&self, args: &[&str]) -> std::process::Output {
        peers::output(
            std::process::Command::new(peers::bin("store"))
                .args(args)
                .arg("--config")
                .arg(&self.replicas[0].config)
                .env_remove("AWS_CA_BUNDLE"),
        )
    }

    fn fsck_clean(&self) {
        let out = self.store(&["fsck"]);
        assert!(
            out.status.success(),
            "store fsck --config: {}",
            peers::format_output(&out)
        );
    }
}

fn spawn_replica(addr: SocketAddr, config: &Path) -> Replica {
    let child = std::process::Command::new(peers::bin("registry-server"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env_remove("AWS_CA_BUNDLE")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn registry-server");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let r = Replica {
        child,
        addr,
        config: config.to_path_buf(),
    };
    let mut r = r;
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = r.child.try_wait() {
            panic!("registry-server replica exited at start: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica on {addr} did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    r
}

/// Each image as an OCI layout (tag `x`) in a directory of its own.
fn oci_layouts(images: &[strata_fixtures::Image]) -> Vec<tempfile::TempDir> {
    images
        .iter()
        .map(|img| {
            let d = tempfile::tempdir().unwrap();
            strata_fixtures::write_oci_layout(d.path(), &[(img, Some("x"))]);
            d
        })
        .collect()
}

/// The distinct blobs (layers, configs, manifests) of `images`: one object each in the bucket.
fn blob_digests(images: &[strata_fixtures::Image]) -> std::collections::BTreeSet<String> {
    let mut all = std::collections::BTreeSet::new();
    for img in images {
        all.extend(img.layers.iter().map(|l| l.digest.clone()));
        all.insert(img.config.digest.clone());
        all.insert(img.manifest.digest.clone());
    }
    all
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    strata_store::Digest::of(data).hex()
}

#[test]
fn skopeo_pushes_and_pulls_through_three_replicas_including_an_index() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(c) = Cluster::start(3, "") else { return };
    let src = tempfile::tempdir().unwrap();
    let img = busybox(Flavor::Oci, LayerCompression::Gzip);
    strata_fixtures::write_oci_layout(src.path(), &[(&img, Some("1"))]);
    let dest = format!("docker://{}/t/busybox:1", c.addr());
    skopeo_ok([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", src.path().display()),
        &dest,
    ]);
    // Every replica answers for it (the balancer rotates; ask each one directly too).
    for r in &c.replicas {
        let raw = skopeo_ok([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/t/busybox:1", r.addr),
        ]);
        assert_eq!(raw.as_bytes(), img.manifest.bytes.as_slice());
    }
    let out = tempfile::tempdir().unwrap();
    skopeo_ok([
        "copy",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:back", out.path().display()),
    ]);
    let tags = skopeo_ok([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/t/busybox", c.addr()),
    ]);
    assert!(tags.contains("\"1\""), "{tags}");
    // One object per blob (layers, config, manifest), all under the prefix.
    let objects = c.objects();
    assert_eq!(objects.len(), img.layers.len() + 2, "{objects:?}");
    assert!(objects.iter().all(|k| k.starts_with("strata/")), "{objects:?}");
    // An index with its platform manifests, copied whole.
    let (index, images) = strata_fixtures::multi_platform(Flavor::Oci);
    let msrc = tempfile::tempdir().unwrap();
    strata_fixtures::write_oci_layout_index(msrc.path(), &index, &images, Some("m"));
    skopeo_ok([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:m", msrc.path().display()),
        &format!("docker://{}/t/multi:m", c.addr()),
    ]);
    let raw = skopeo_ok([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/t/multi:m", c.addr()),
    ]);
    assert_eq!(raw.as_bytes(), index.bytes.as_slice());
}

/// A chunked upload whose POST, PATCHes and PUT each reach a different replica.
#[test]
fn one_upload_moves_across_replicas_chunk_by_chunk() {
    let Some(c) = Cluster::start(3, "") else { return };
    let client = http();
    // 12 MiB + a bit: two full 5 MiB parts, then a tail smaller than a part; chunks of
    // odd sizes so parts and chunks never line up.
    let data: Vec<u8> = (0..(12 << 20) + 12345u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let digest = format!("sha256:{}", sha256_hex(&data));
    let r0 = c.replicas[0].addr;
    let resp = client
        .post(format!("http://{r0}/v2/t/chunked/blobs/uploads/"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    let mut location = resp.headers()["location"].to_str().unwrap().to_string();
    let chunks = [3 << 20, 1 << 20, 4 << 20, 7, (12 << 20) + 12345 - (8 << 20) - 7];
    let mut at = 0usize;
    for (i, len) in chunks.iter().enumerate() {
        let r = c.replicas[(i + 1) % 3].addr;
        let resp = client
            .patch(format!("http://{r}{location}"))
            .header("Content-Range", format!("{}-{}", at, at + len - 1))
            .header("Content-Type", "application/octet-stream")
            .body(data[at..at + len].to_vec())
            .send()
            .unwrap();
        assert_eq!(
            resp.status(),
            202,
            "chunk {i} on {r}: {}",
            resp.text().unwrap_or_default()
        );
        at += len;
        let range = resp.headers()["range"].to_str().unwrap().to_string();
        assert_eq!(range, format!("0-{}", at - 1));
        location = resp.headers()["location"].to_str().unwrap().to_string();
    }
    // A chunk that does not start at the offset: 416, from yet another replica.
    let resp = client
        .patch(format!("http://{}{location}", c.replicas[2].addr))
        .header("Content-Range", "5-9")
        .body(vec![0u8; 5])
        .send()
        .unwrap();
    assert_eq!(resp.status(), 416);
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = client
        .put(format!(
            "http://{}{location}{sep}digest={digest}",
            c.replicas[1].addr
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap_or_default());
    for r in &c.replicas {
        let got = client
            .get(format!("http://{}/v2/t/chunked/blobs/{digest}", r.addr))
            .send()
            .unwrap();
        assert_eq!(got.status(), 200);
        let body = got.bytes().unwrap();
        assert_eq!(body.len(), data.len());
        assert!(body[..] == data[..], "blob bytes differ through {}", r.addr);
        let part = client
            .get(format!("http://{}/v2/t/chunked/blobs/{digest}", r.addr))
            .header("Range", "bytes=5242870-5242889")
            .send()
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(&part.bytes().unwrap()[..], &data[5242870..5242890]);
    }
    // The multipart upload is complete (none left open) and is the blob's one object.
    assert_eq!(c.seaweed.list_multipart_uploads(&c.bucket), 0);
    let objects = c.objects();
    assert_eq!(objects.len(), 1, "{objects:?}");

    // A wrong digest: refused, nothing visible, the multipart upload aborted.
    let resp = client
        .post(format!("http://{r0}/v2/t/chunked/blobs/uploads/"))
        .send()
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = client
        .patch(format!("http://{}{loc}", c.replicas[1].addr))
        .body(data[..(6 << 20)].to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let wrong = format!("sha256:{}", sha256_hex(b"something else"));
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp = client
        .put(format!("http://{}{loc}{sep}digest={wrong}", c.replicas[2].addr))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().unwrap().contains("DIGEST_INVALID"));
    let head = client
        .head(format!(
            "http://{}/v2/t/chunked/blobs/{wrong}",
            c.replicas[0].addr
        ))
        .send()
        .unwrap();
    assert_eq!(head.status(), 404);
    assert_eq!(c.seaweed.list_multipart_uploads(&c.bucket), 0);
}

/// `redirect = true`: a blob GET is a 307 to a presigned URL the object store serves.
#[test]
fn blob_gets_redirect_to_presigned_urls() {
    let Some(c) = Cluster::start(1, "redirect = true") else {
        return;
    };
    let client = http();
    let data = b"presigned content".to_vec();
    let digest = format!("sha256:{}", sha256_hex(&data));
    let resp = client
        .post(format!(
            "http://{}/v2/t/r/blobs/uploads/?digest={digest}",
            c.addr()
        ))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = client
        .get(format!("http://{}/v2/t/r/blobs/{digest}", c.addr()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 307);
    let url = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(url.starts_with(&c.seaweed.endpoint()), "{url}");
    let got = client.get(&url).send().unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().unwrap().to_vec(), data);
    // HEAD is answered by the registry itself.
    let head = client
        .head(format!("http://{}/v2/t/r/blobs/{digest}", c.addr()))
        .send()
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], data.len().to_string().as_str());
}

/// PostgreSQL restarts: requests meanwhile get 503 with the spec's error body, and the
/// replica reconnects by itself.
#[test]
fn a_postgres_restart_is_a_503_then_recovered() {
    let Some(mut c) = Cluster::start(1, "") else {
        return;
    };
    let client = http();
    let img = small_image(7, 2, false);
    let src = tempfile::tempdir().unwrap();
    strata_fixtures::write_oci_layout(src.path(), &[(&img, Some("a"))]);
    if peers::require("skopeo").is_none() {
        return;
    }
    skopeo_ok([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:a", src.path().display()),
        &format!("docker://{}/t/pg:a", c.addr()),
    ]);
    c.postgres.stop();
    let resp = client
        .get(format!("http://{}/v2/t/pg/tags/list", c.addr()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().unwrap();
    assert!(
        body.contains("\"errors\"") && body.contains("UNAVAILABLE"),
        "{body}"
    );
    c.postgres.start_again();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let resp = client
            .get(format!("http://{}/v2/t/pg/tags/list", c.addr()))
            .send()
            .unwrap();
        if resp.status() == 200 {
            assert!(resp.text().unwrap().contains("\"a\""));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery: {}",
            resp.status()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Three replicas, concurrent pushes of overlapping images and of one tag: one object per
/// digest, the tag at one of the pushed digests.
#[test]
fn concurrent_pushes_of_overlapping_images_through_three_replicas() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(c) = Cluster::start(3, "") else { return };
    let images: Vec<_> = (0..4).map(|i| small_image(100 + i, 3, true)).collect();
    let dirs = oci_layouts(&images);
    let addr = c.addr();
    std::thread::scope(|s| {
        for (i, d) in dirs.iter().enumerate() {
            let addr = addr.clone();
            s.spawn(move || {
                let src = format!("oci:{}:x", d.path().display());
                skopeo_ok([
                    "copy",
                    "--dest-tls-verify=false",
                    &src,
                    &format!("docker://{addr}/t/img{i}:1"),
                ]);
                skopeo_ok([
                    "copy",
                    "--dest-tls-verify=false",
                    &src,
                    &format!("docker://{addr}/t/same:tag"),
                ]);
            });
        }
    });
    let raw = skopeo_ok([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{addr}/t/same:tag"),
    ]);
    assert!(
        images.iter().any(|i| i.manifest.bytes == raw.as_bytes()),
        "the tag points at a manifest no one pushed: {raw}"
    );
    // One object per distinct blob (shared base layers included).
    let distinct = blob_digests(&images);
    let objects = c.objects();
    assert_eq!(objects.len(), distinct.len(), "objects: {objects:?}");
    c.fsck_clean();
}

fn push_oci(dir: &Path, tag: &str, dest: &str) {
    skopeo_ok([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", dir.display()),
        &format!("docker://{dest}"),
    ]);
}

/// GC runs on the replicas (one at a time, by the lease) while clients push through the
/// balancer: no push fails, everything pushed stays pullable, and blobs nothing references
/// are gone from the bucket once past the grace period. The admin tool works on the same
/// backends.
#[test]
fn gc_on_shared_backends_while_replicas_take_pushes() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let gc = "[gc]\ninterval = 1\ngrace = 4\nsettle = 2\n";
    let Some(c) = Cluster::start_with(3, "", gc) else {
        return;
    };
    let client = http();
    // Orphans: blobs uploaded and linked, which no manifest references.
    let mut orphans = Vec::new();
    for i in 0..5u8 {
        let data = vec![i; 1000 + usize::from(i)];
        let digest = format!("sha256:{}", sha256_hex(&data));
        let resp = client
            .post(format!(
                "http://{}/v2/t/orphans/blobs/uploads/?digest={digest}",
                c.addr()
            ))
            .body(data)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 201);
        orphans.push(digest);
    }
    let images: Vec<_> = (0..6).map(|i| small_image(300 + i, 2, true)).collect();
    let dirs = oci_layouts(&images);
    let addr = c.addr();
    // Pushes for about ten seconds, through several GC runs (each image twice, a second
    // apart, so blobs found by HEAD are referenced again while a GC may be condemning).
    std::thread::scope(|s| {
        for (i, d) in dirs.iter().enumerate() {
            let addr = addr.clone();
            s.spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(700 * i as u64));
                push_oci(d.path(), "x", &format!("{addr}/t/gc{i}:1"));
                std::thread::sleep(std::time::Duration::from_secs(5));
                push_oci(d.path(), "x", &format!("{addr}/t/gc{i}:2"));
            });
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let objects = c.objects();
        let left: Vec<_> = orphans
            .iter()
            .filter(|d| {
                let head = client
                    .head(format!("http://{}/v2/t/orphans/blobs/{d}", c.addr()))
                    .send()
                    .unwrap();
                head.status() == 200
            })
            .collect();
        if left.is_empty() {
            // Gone from the bucket too: what is left is exactly what the images use.
            let used = blob_digests(&images);
            assert_eq!(objects.len(), used.len(), "{objects:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "orphans still stored: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    for (i, img) in images.iter().enumerate() {
        for tag in ["1", "2"] {
            let raw = skopeo_ok([
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{addr}/t/gc{i}:{tag}"),
            ]);
            assert_eq!(raw.as_bytes(), img.manifest.bytes.as_slice());
        }
        let out = tempfile::tempdir().unwrap();
        skopeo_ok([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{addr}/t/gc{i}:2"),
            &format!("oci:{}:back", out.path().display()),
        ]);
    }
    // Some replica collected, and says so in /metrics.
    let runs: u64 = c
        .replicas
        .iter()
        .map(|r| {
            let text = client
                .get(format!("http://{}/metrics", r.addr))
                .send()
                .unwrap()
                .text()
                .unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("strata_registry_gc_removed_blobs_total "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(runs, orphans.len() as u64);
    c.fsck_clean();
    let ls = c.store(&["ls", "--json"]);
    assert!(ls.status.success(), "{}", peers::format_output(&ls));
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains("t/gc5") && ls.contains("\"2\""), "{ls}");
    let du = c.store(&["du", "--json"]);
    assert!(du.status.success(), "{}", peers::format_output(&du));
    let du: serde_json::Value = serde_json::from_slice(&du.stdout).unwrap();
    assert_eq!(du["blobs"].as_u64(), Some(c.objects().len() as u64));
}

/// A body that sends `data` slowly, so a test can kill the replica reading it.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let n = buf.len().min(256 << 10).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        self.sent.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        Ok(n)
    }
}

/// kill -9 of the replica reading a chunk: what was acknowledged before is kept, the
/// client resumes through another replica and completes; fsck is clean.
#[test]
fn a_replica_killed_mid_upload_loses_nothing_acknowledged() {
    let Some(mut c) = Cluster::start(3, "") else {
        return;
    };
    let client = http();
    let data: Vec<u8> = (0..(16u32 << 20))
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect();
    let digest = format!("sha256:{}", sha256_hex(&data));
    let (a, b, cc) = (c.replicas[0].addr, c.replicas[1].addr, c.replicas[2].addr);
    let resp = client
        .post(format!("http://{a}/v2/t/kill/blobs/uploads/"))
        .send()
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let acked = 6 << 20;
    let resp = client
        .patch(format!("http://{a}{loc}"))
        .header("Content-Range", format!("0-{}", acked - 1))
        .body(data[..acked].to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    // The rest, trickled to replica B, which is killed partway through.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = Trickle {
        data: data[acked..].to_vec(),
        at: 0,
        sent: sent.clone(),
    };
    let url = format!("http://{b}{loc}");
    let patch = std::thread::spawn(move || {
        http()
            .patch(url)
            .body(reqwest::blocking::Body::new(body))
            .send()
            .map(|r| r.status().as_u16())
    });
    while sent.load(std::sync::atomic::Ordering::SeqCst) < (3 << 20) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    c.replicas[1].child.kill().unwrap();
    c.replicas[1].child.wait().unwrap();
    let result = patch.join().unwrap();
    assert!(
        !matches!(result, Ok(202)),
        "the killed replica cannot have accepted the chunk"
    );
    // The client asks another replica where the upload stands and resumes from there.
    let status = client.get(format!("http://{cc}{loc}")).send().unwrap();
    assert_eq!(status.status(), 204);
    let offset = status.headers()["range"].to_str().unwrap().to_string();
    assert_eq!(
        offset,
        format!("0-{}", acked - 1),
        "acknowledged bytes kept, nothing more"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let resp = client
            .patch(format!("http://{cc}{loc}"))
            .header("Content-Range", format!("{acked}-{}", data.len() - 1))
            .body(data[acked..].to_vec())
            .send()
            .unwrap();
        if resp.status() == 202 {
            break;
        }
        // The killed replica's lease on the session runs out within seconds.
        assert_eq!(resp.status(), 400, "{}", resp.text().unwrap_or_default());
        assert!(std::time::Instant::now() < deadline, "the session stayed busy");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp = client
        .put(format!("http://{a}{loc}{sep}digest={digest}"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap_or_default());
    let got = client
        .get(format!("http://{cc}/v2/t/kill/blobs/{digest}"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(got[..] == data[..]);
    c.fsck_clean();
}

/// docker push/pull/run, podman push/pull and ctr pull/push, all through the balancer.
#[test]
fn docker_podman_and_ctr_through_the_balancer() {
    let Some(c) = Cluster::start(3, "") else { return };
    let addr = c.addr();
    let tmp = tempfile::tempdir().unwrap();
    if let Some(d) = peers::Dockerd::shared() {
        let img = busybox(Flavor::Docker, LayerCompression::Gzip);
        let name = format!("{addr}/t/docker:1");
        let archive = tmp.path().join("bb.tar");
        strata_fixtures::write_docker_save(&archive, &[(&img, &[name.as_str()])]);
        d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
        let out = d.docker_ok(["push", &name]);
        assert!(out.contains("digest: sha256:"), "{out}");
        d.docker_ok(["rmi", &name]);
        d.docker_ok(["pull", &name]);
        let out = d.docker_ok(["run", "--rm", "--network", "none", &name]);
        assert!(out.contains(strata_fixtures::BUSYBOX_HELLO), "{out}");
        d.docker_ok(["rmi", &name]);
    }
    if let Some(p) = peers::Podman::new() {
        let img = small_image(21, 2, true);
        let archive = tmp.path().join("img.tar");
        let name = format!("{addr}/p/small:1");
        strata_fixtures::write_docker_save(&archive, &[(&img, &[name.as_str()])]);
        p.podman_ok(["load", "-i", archive.to_str().unwrap()]);
        p.podman_ok(["push", "--tls-verify=false", &name]);
        p.podman_ok(["rmi", "-f", &name]);
        p.podman_ok(["pull", "--tls-verify=false", &name]);
        let out = p.podman_ok(["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert!(out.contains("p/small:1"), "{out}");
    }
    if peers::require("skopeo").is_some()
        && let Some(ctr) = peers::Containerd::start()
    {
        let img = small_image(22, 2, true);
        let layout = tmp.path().join("layout");
        strata_fixtures::write_oci_layout(&layout, &[(&img, Some("1"))]);
        let name = format!("{addr}/c/small:1");
        push_oci(&layout, "1", &name);
        ctr.ctr_ok(["images", "pull", "--plain-http", &name]);
        let pushed = format!("{addr}/c/pushed:2");
        ctr.ctr_ok(["images", "tag", &name, &pushed]);
        ctr.ctr_ok(["images", "push", "--plain-http", &pushed]);
        let raw = skopeo_ok([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{pushed}"),
        ]);
        assert_eq!(raw.as_bytes(), img.manifest.bytes.as_slice());
    }
    c.fsck_clean();
}

/// The OCI distribution-spec's conformance workflows, request by request, through the
/// balancer: every request may reach another replica.
#[test]
fn oci_conformance_workflows_through_the_balancer() {
    let Some(c) = Cluster::start(3, "") else { return };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::oci_workflows::all_workflows_against(&c.addr()));
    c.fsck_clean();
}

/// Pull-through cache replicas on shared backends: three replicas asked at once for the
/// same image download each blob from the upstream once between them.
#[test]
fn cache_replicas_download_each_blob_from_the_upstream_once() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up_port = peers::free_port();
    let up_log = tmp.path().join("upstream.log");
    let mut upstream = Replica {
        child: std::process::Command::new(peers::bin("registry-server"))
            .arg("--root")
            .arg(tmp.path().join("upstream"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{up_port}"))
            .env("RUST_LOG", "warn,strata_registry::access=info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&up_log).unwrap())
            .spawn()
            .unwrap(),
        addr: format!("127.0.0.1:{up_port}").parse().unwrap(),
        config: Default::default(),
    };
    let up = format!("127.0.0.1:{up_port}");
    while std::net::TcpStream::connect(&up).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let img = small_image(500, 3, false);
    let src = tmp.path().join("src");
    strata_fixtures::write_oci_layout(&src, &[(&img, Some("1"))]);
    push_oci(&src, "1", &format!("{up}/t/cached:1"));
    let tail = format!("[proxy]\nremote_url = \"http://{up}\"\n");
    let Some(c) = Cluster::start_with(3, "", &tail) else {
        return;
    };
    let outs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("out{i}"))).collect();
    std::thread::scope(|s| {
        for (r, out) in c.replicas.iter().zip(&outs) {
            let addr = r.addr;
            s.spawn(move || {
                skopeo_ok([
                    "copy",
                    "--src-tls-verify=false",
                    &format!("docker://{addr}/t/cached:1"),
                    &format!("oci:{}:1", out.display()),
                ]);
            });
        }
    });
    for out in &outs {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], img.manifest.digest.as_str());
    }
    let log = std::fs::read_to_string(&up_log).unwrap();
    for blob in img.layers.iter().chain([&img.config]) {
        let gets = log
            .lines()
            .filter(|l| l.contains("GET") && l.contains(&format!("/blobs/{}", blob.digest)))
            .count();
        assert_eq!(gets, 1, "{} fetched {gets} times from the upstream", blob.digest);
    }
    // Cached: served with the upstream gone.
    let _ = upstream.child.kill();
    let _ = upstream.child.wait();
    let raw = skopeo_ok([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/t/cached@{}", c.addr(), img.manifest.digest),
    ]);
    assert_eq!(raw.as_bytes(), img.manifest.bytes.as_slice());
    c.fsck_clean();
}

/// The object store goes away: blob reads and uploads get 503 UNAVAILABLE with the spec's
/// error body (not 500s, not hangs); what needs only PostgreSQL still works.
#[test]
fn s3_gone_is_a_503() {
    let Some(c) = Cluster::start(1, "") else { return };
    let client = http();
    let data = vec![7u8; 10_000];
    let digest = format!("sha256:{}", sha256_hex(&data));
    let resp = client
        .post(format!(
            "http://{}/v2/t/s3/blobs/uploads/?digest={digest}",
            c.addr()
        ))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    c.seaweed.kill();
    let started = std::time::Instant::now();
    let resp = client
        .get(format!("http://{}/v2/t/s3/blobs/{digest}", c.addr()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.text().unwrap().contains("UNAVAILABLE"));
    let other = vec![8u8; 10_000];
    let resp = client
        .post(format!(
            "http://{}/v2/t/s3/blobs/uploads/?digest=sha256:{}",
            c.addr(),
            sha256_hex(&other)
        ))
        .body(other)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 503, "{}", resp.text().unwrap_or_default());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Metadata-only requests still answer.
    let resp = client
        .head(format!("http://{}/v2/t/s3/blobs/{digest}", c.addr()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Token auth with the signing secret shared by config: a token one replica issued is
/// good on the others, so docker logs in and pushes through the balancer; a token is
/// still scoped to its repository on every replica.
#[test]
fn tokens_from_one_replica_are_good_on_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let pw = crate::security::htpasswd(tmp.path());
    let auth = format!(
        "[auth]\nhtpasswd = \"{}\"\ntoken = true\nsecret = \"one-secret-for-all-replicas\"\n",
        pw.display()
    );
    let Some(c) = Cluster::start_with(3, "", &auth) else {
        return;
    };
    let client = http();
    let token = client
        .get(format!(
            "http://{}/token?service=strata-registry&scope=repository:team/app:pull,push",
            c.replicas[0].addr
        ))
        .basic_auth("alice", Some("wonderland"))
        .send()
        .unwrap();
    assert_eq!(token.status(), 200);
    let token: serde_json::Value = token.json().unwrap();
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    for r in &c.replicas[1..] {
        let resp = client
            .post(format!("http://{}/v2/team/app/blobs/uploads/", r.addr))
            .header("authorization", &bearer)
            .send()
            .unwrap();
        assert_eq!(
            resp.status(),
            202,
            "replica {} refused a token of replica 0",
            r.addr
        );
        let resp = client
            .post(format!("http://{}/v2/team/other/blobs/uploads/", r.addr))
            .header("authorization", &bearer)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 401, "a token for team/app opened team/other");
    }
    if let Some(d) = peers::Dockerd::shared() {
        let addr = c.addr();
        let img = small_image(41, 1, false);
        let name = format!("{addr}/team/app:1");
        let archive = tmp.path().join("img.tar");
        strata_fixtures::write_docker_save(&archive, &[(&img, &[name.as_str()])]);
        d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
        d.docker_ok(["login", "-u", "alice", "-p", "wonderland", &addr]);
        d.docker_ok(["push", &name]);
        d.docker_ok(["rmi", &name]);
        d.docker_ok(["pull", &name]);
        d.docker_ok(["rmi", &name]);
        d.docker_ok(["logout", &addr]);
    }
}
