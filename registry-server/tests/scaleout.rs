//! Scale-out: `registry-server` replicas sharing SeaweedFS's S3 gateway (blobs) and a
//! private PostgreSQL (metadata), behind an HAProxy that sends each request to the next
//! replica. Real clients push and pull through the balancer; chunks of one upload land on
//! different replicas; a replica killed mid-push does not lose what was acknowledged.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use strata_fixtures::peers::{self, skopeo_ok};
use strata_fixtures::scaleout::{LoadBalancer, Postgres, Seaweed};
use strata_fixtures::{Flavor, LayerCompression, busybox, small_image};

#[allow(dead_code)]
fn _common_is_shared_with_the_other_suites(_: common::Proc) {}

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
            c.add_replica(i, storage_extra);
        }
        if n > 1 {
            let addrs: Vec<SocketAddr> = c.replicas.iter().map(|r| r.addr).collect();
            c.lb = Some(LoadBalancer::start(&addrs)?);
        }
        Some(c)
    }

    fn add_replica(&mut self, i: usize, storage_extra: &str) {
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
}

fn spawn_replica(addr: SocketAddr, config: &Path) -> Replica {
    let child = std::process::Command::new(peers::bin("registry-server"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env_remove("AWS_CA_BUNDLE")
        .spawn()
        .expect("spawn registry-server");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut r = Replica {
        child,
        addr,
        config: config.to_path_buf(),
    };
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
    let _ = &mut r;
    r
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
    let _ = Path::new(&c.replicas[0].config);
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
    let dirs: Vec<_> = images
        .iter()
        .map(|img| {
            let d = tempfile::tempdir().unwrap();
            strata_fixtures::write_oci_layout(d.path(), &[(img, Some("x"))]);
            d
        })
        .collect();
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
    let mut distinct = std::collections::BTreeSet::new();
    for img in &images {
        for l in &img.layers {
            distinct.insert(l.digest.clone());
        }
        distinct.insert(img.config.digest.clone());
        distinct.insert(img.manifest.digest.clone());
    }
    let objects = c.objects();
    assert_eq!(objects.len(), distinct.len(), "objects: {objects:?}");
}
