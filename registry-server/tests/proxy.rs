//! Pull-through cache mode against real upstreams: CNCF Distribution (open and behind
//! htpasswd) and a strata registry issuing bearer tokens. skopeo pulls through the proxy,
//! the content lands in the proxy's store and is served from there when the upstream is
//! gone; concurrent GETs of one uncached blob download it once; an uncached blob is
//! streamed to its clients while it downloads (behind a throttling upstream), and one
//! that fails to verify cuts their bodies and stores nothing; pushes are refused.
//! Tests that need a peer fail under `CI=true` when it is missing, and skip otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Proc, Reg, Served};
use axum::body::Body;
use http::{Method, StatusCode};
use strata_fixtures::peers::{self, Distribution};
use strata_fixtures::{Flavor, Image, multi_platform, small_image};
use strata_registry::{AppState, AuthConfig, Config, ProxyConfig};
use strata_store::{Digest, Store};

fn proxy_config(dir: &std::path::Path, upstream: &str, creds: Option<(&str, &str)>) -> Config {
    Config {
        proxy: Some(ProxyConfig {
            remote_url: upstream.to_string(),
            username: creds.map(|c| c.0.to_string()),
            password: creds.map(|c| c.1.to_string()),
        }),
        ..crate::common::config(dir)
    }
}

/// Runs skopeo off the async runtime.
async fn skopeo(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || peers::skopeo_ok(args))
        .await
        .unwrap()
}

/// Pushes `img` into a Distribution as `repo:tag` with skopeo (from an OCI layout).
async fn push_with_skopeo(dist: &Distribution, img: &Image, repo: &str, tag: &str, dir: &std::path::Path) {
    let layout = dir.join(format!("push-{tag}"));
    strata_fixtures::write_oci_layout(&layout, &[(img, Some(tag))]);
    let mut args = vec!["copy".to_string(), "--dest-tls-verify=false".to_string()];
    if let Some((u, p)) = dist.credentials() {
        args.push(format!("--dest-creds={u}:{p}"));
    }
    args.push(format!("oci:{}:{tag}", layout.display()));
    args.push(format!("docker://{}/{repo}:{tag}", dist.addr()));
    skopeo(args).await;
}

/// Pulls `repo:tag` from `addr` into an OCI layout; returns the manifest digest it holds.
async fn pull_with_skopeo(addr: &str, repo: &str, tag: &str, out: &std::path::Path) -> String {
    skopeo(vec![
        "copy".into(),
        "--src-tls-verify=false".into(),
        format!("docker://{addr}/{repo}:{tag}"),
        format!("oci:{}:{tag}", out.display()),
    ])
    .await;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_string()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tagged(store: &Store, repo: &str, tag: &str) -> Option<Digest> {
    store.repo_tag("reg.test", repo, tag).unwrap().map(|t| t.manifest)
}

fn digest(s: &str) -> Digest {
    s.parse().unwrap()
}

fn assert_image_stored(store: &Store, repo: &str, img: &Image) {
    for b in std::iter::once(&img.config).chain(&img.layers) {
        let d = digest(&b.digest);
        assert!(store.blobs().contains(&d), "blob {d} not in the proxy's store");
        assert!(
            store.is_linked(repo, &d).unwrap(),
            "blob {d} not linked into {repo}"
        );
    }
    assert!(
        store
            .get_manifest(&digest(&img.manifest.digest))
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_the_cache_and_from_cache_when_the_upstream_is_gone() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(dist) = Distribution::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let img = small_image(11, 3, false);
    push_with_skopeo(&dist, &img, "t/img", "1", tmp.path()).await;
    let (index, images) = multi_platform(Flavor::Oci);
    let multi = tmp.path().join("multi");
    strata_fixtures::write_oci_layout_index(&multi, &index, &images, Some("m"));
    skopeo(vec![
        "copy".into(),
        "--all".into(),
        "--dest-tls-verify=false".into(),
        format!("oci:{}:m", multi.display()),
        format!("docker://{}/t/multi:m", dist.addr()),
    ])
    .await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(dir.path(), &dist.url(), None);
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let state = AppState::new(store.clone(), cfg).unwrap();
    let proxy = Served::start(state).await;
    let addr = proxy.addr.to_string();

    // An image: byte-exact manifest, all blobs, then cached in the store and tagged.
    let got = pull_with_skopeo(&addr, "t/img", "1", &tmp.path().join("pull1")).await;
    assert_eq!(got, img.manifest.digest);
    for b in std::iter::once(&img.config).chain(&img.layers) {
        let path = tmp.path().join("pull1/blobs/sha256").join(b.hex());
        assert_eq!(std::fs::read(path).unwrap(), b.bytes);
    }
    wait_for("the tag to be cached", || tagged(&store, "t/img", "1").is_some()).await;
    assert_eq!(
        tagged(&store, "t/img", "1").unwrap().to_string(),
        img.manifest.digest
    );
    assert_image_stored(&store, "t/img", &img);

    // An index (skopeo takes the host's child): the whole index is cached.
    let raw = skopeo(vec![
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
        format!("docker://{addr}/t/multi:m"),
    ])
    .await;
    assert_eq!(raw.as_bytes(), index.bytes.as_slice());
    pull_with_skopeo(&addr, "t/multi", "m", &tmp.path().join("pull-multi")).await;
    wait_for("the index to be cached", || {
        tagged(&store, "t/multi", "m").is_some()
    })
    .await;
    for i in &images {
        assert_image_stored(&store, "t/multi", i);
    }

    // The upstream goes away: pulls are served from the cache.
    drop(dist);
    let got = pull_with_skopeo(&addr, "t/img", "1", &tmp.path().join("pull2")).await;
    assert_eq!(got, img.manifest.digest);
    for b in &img.layers {
        assert!(tmp.path().join("pull2/blobs/sha256").join(b.hex()).is_file());
    }
    let raw = skopeo(vec![
        "inspect".into(),
        "--raw".into(),
        "--tls-verify=false".into(),
        format!("docker://{addr}/t/multi:m"),
    ])
    .await;
    assert_eq!(raw.as_bytes(), index.bytes.as_slice());
    // What was never cached: the upstream's unavailability is reported.
    let r = reqwest::get(format!("http://{addr}/v2/t/img/manifests/never"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    proxy.stop().await;
    drop(store);
    let report = Store::open(dir.path()).unwrap().fsck(false).unwrap();
    assert!(report.faults.is_empty(), "fsck: {:?}", report.faults);
}

/// A reverse proxy in front of `upstream` that counts blob GETs.
async fn counting_proxy(upstream: String) -> (SocketAddr, Arc<AtomicUsize>) {
    shaping_proxy(upstream, Shaping::default()).await
}

/// What a `shaping_proxy` does to blob GET bodies.
#[derive(Debug, Clone, Copy, Default)]
struct Shaping {
    /// Forward the body in 64 KiB pieces with this pause before each.
    pause: Option<Duration>,
    /// Flip a bit in the middle of the body (same length, wrong digest).
    corrupt: bool,
}

const PIECE: usize = 64 << 10;

/// `counting_proxy` that also throttles or corrupts blob GET bodies.
async fn shaping_proxy(upstream: String, shaping: Shaping) -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let counter = count.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: http::Uri, headers: http::HeaderMap, body: bytes::Bytes| {
            let (client, counter, upstream) = (client.clone(), counter.clone(), upstream.clone());
            async move {
                let blob_get = method == Method::GET && uri.path().contains("/blobs/sha256:");
                if blob_get {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let mut rb = client.request(method, format!("{upstream}{uri}"));
                for (k, v) in &headers {
                    if k != http::header::HOST {
                        rb = rb.header(k, v);
                    }
                }
                let r = rb.body(body).send().await.unwrap();
                let mut resp = http::Response::builder().status(r.status());
                for (k, v) in r.headers() {
                    if k != http::header::TRANSFER_ENCODING && k != http::header::CONNECTION {
                        resp = resp.header(k, v);
                    }
                }
                let ok = r.status() == StatusCode::OK;
                let mut bytes = r.bytes().await.unwrap().to_vec();
                if !(blob_get && ok) {
                    return resp.body(Body::from(bytes)).unwrap();
                }
                if shaping.corrupt && !bytes.is_empty() {
                    let mid = bytes.len() / 2;
                    bytes[mid] ^= 1;
                }
                let Some(pause) = shaping.pause else {
                    return resp.body(Body::from(bytes)).unwrap();
                };
                let bytes = bytes::Bytes::from(bytes);
                let pieces: Vec<bytes::Bytes> = (0..bytes.len())
                    .step_by(PIECE)
                    .map(|i| bytes.slice(i..(i + PIECE).min(bytes.len())))
                    .collect();
                let stream = futures::StreamExt::then(futures::stream::iter(pieces), move |p| async move {
                    tokio::time::sleep(pause).await;
                    Ok::<_, std::io::Error>(p)
                });
                resp.body(Body::from_stream(stream)).unwrap()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, count)
}

/// Pushes a blob straight to a registry (POST, then PUT with the digest).
async fn push_blob(base: &str, repo: &str, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with('/') {
        format!("{base}{loc}")
    } else {
        loc
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = client
        .put(format!("{loc}{sep}digest={d}"))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_of_an_uncached_blob_download_it_once() {
    let Some(dist) = Distribution::start() else { return };
    let mut blob = vec![0u8; 8 << 20];
    for (i, b) in blob.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let d = push_blob(&dist.url(), "t/big", &blob).await;
    let (counter_addr, count) = counting_proxy(dist.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(dir.path(), &format!("http://{counter_addr}"), None);
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let proxy = Served::start(AppState::new(store.clone(), cfg).unwrap()).await;
    let url = format!("http://{}/v2/t/big/blobs/{d}", proxy.addr);
    let client = reqwest::Client::new();
    let gets = (0..8).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        })
    });
    for got in futures::future::join_all(gets).await {
        assert!(got.unwrap() == blob.as_slice(), "wrong blob content");
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the blob was downloaded more than once"
    );
    assert!(store.blobs().contains(&d));
    assert!(store.is_linked("t/big", &d).unwrap());
    // Cached: HEAD and GET go no further.
    let r = client.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], (8 << 20).to_string().as_str());
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // Another repository of the upstream that lacks the blob does not get it.
    let r = client
        .get(format!("http://{}/v2/t/other/blobs/{d}", proxy.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(!store.is_linked("t/other", &d).unwrap());
    proxy.stop().await;
}

#[tokio::test]
async fn pushes_are_refused_with_405() {
    // The upstream is a closed port: nothing here needs it.
    let port = peers::free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(dir.path(), &format!("http://127.0.0.1:{port}"), None);
    let reg = Reg::with_config(dir, cfg);
    let d = Digest::of(b"x");
    for (method, uri) in [
        (Method::POST, "/v2/t/a/blobs/uploads/".to_string()),
        (Method::POST, format!("/v2/t/a/blobs/uploads/?digest={d}")),
        (Method::PATCH, "/v2/t/a/blobs/uploads/abc".to_string()),
        (Method::PUT, format!("/v2/t/a/blobs/uploads/abc?digest={d}")),
        (Method::PUT, "/v2/t/a/manifests/1".to_string()),
        (Method::DELETE, "/v2/t/a/manifests/1".to_string()),
        (Method::DELETE, format!("/v2/t/a/blobs/{d}")),
    ] {
        let r = reg.req(method.clone(), &uri, &[], Body::from("x")).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert_eq!(r.code(), "UNSUPPORTED");
    }
    // Reads with an unreachable upstream and nothing cached: a bad gateway.
    let r = reg.get("/v2/t/a/manifests/1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.code() == "UNKNOWN"
            && r.json()["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1"),
        "{r:?}"
    );
    let r = reg.get(&format!("/v2/t/a/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_upstream_with_credentials_from_the_command_line() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(dist) = Distribution::start_with_htpasswd("user", "s3cret pw") else {
        return;
    };
    assert_eq!(dist.probe(), Some(401));
    let tmp = tempfile::tempdir().unwrap();
    let img = small_image(12, 2, false);
    push_with_skopeo(&dist, &img, "t/priv", "1", tmp.path()).await;

    // The binary, configured by flags.
    let root = tmp.path().join("store");
    let url = dist.url();
    let proc = Proc::start(
        &root,
        &[
            "--proxy-remote-url",
            &url,
            "--proxy-username",
            "user",
            "--proxy-password",
            "s3cret pw",
        ],
    );
    let got = pull_with_skopeo(&proc.addr(), "t/priv", "1", &tmp.path().join("pull")).await;
    assert_eq!(got, img.manifest.digest);
    for b in &img.layers {
        assert!(tmp.path().join("pull/blobs/sha256").join(b.hex()).is_file());
    }
    // Pushes through the binary are refused too.
    let r = reqwest::Client::new()
        .post(format!("http://{}/v2/t/priv/blobs/uploads/", proc.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Without credentials the upstream refuses the proxy: a bad gateway, not a leak.
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(dir.path(), &url, None);
    let anon = Reg::with_config(dir, cfg);
    let r = anon.get("/v2/t/priv/manifests/1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    let r = anon
        .get(&format!("/v2/t/priv/blobs/{}", img.layers[0].digest))
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    // Wrong credentials: the same.
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(dir.path(), &url, Some(("user", "wrong")));
    let wrong = Reg::with_config(dir, cfg);
    let r = wrong.get("/v2/t/priv/manifests/1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    drop(proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_upstream() {
    // The upstream: a strata registry with the token flow (no peer needed).
    let img = small_image(13, 2, false);
    let reg = Reg::new();
    reg.push_image("t/tok", "1", &img).await;
    let up_dir = reg.into_dir(); // closes the store
    let htpasswd = up_dir.path().join("htpasswd");
    let hash = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let up_cfg = Config {
        auth: Some(AuthConfig {
            htpasswd: Some(htpasswd),
            token: true,
            ..AuthConfig::default()
        }),
        ..crate::common::config(up_dir.path())
    };
    let up_store = Arc::new(Store::open(up_dir.path()).unwrap());
    let upstream = Served::start(AppState::new(up_store, up_cfg).unwrap()).await;
    let r = reqwest::get(format!("http://{}/v2/t/tok/manifests/1", upstream.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer ")
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(
        dir.path(),
        &format!("http://{}", upstream.addr),
        Some(("alice", "pw")),
    );
    let proxy = Reg::with_config(dir, cfg);
    let r = proxy.get("/v2/t/tok/manifests/1").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body, img.manifest.bytes);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.manifest.digest.as_str())
    );
    for b in std::iter::once(&img.config).chain(&img.layers) {
        let r = proxy.get(&format!("/v2/t/tok/blobs/{}", b.digest)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, b.bytes);
    }
    let store = proxy.state.store().clone();
    wait_for("the tag to be cached", || tagged(&store, "t/tok", "1").is_some()).await;
    // By digest, once cached, without the upstream.
    upstream.stop().await;
    let r = proxy
        .get(&format!("/v2/t/tok/manifests/{}", img.manifest.digest))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, img.manifest.bytes);
    let r = proxy.get("/v2/t/tok/manifests/1").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_resumes_an_interrupted_blob_download_with_a_range_request() {
    // The upstream: a strata registry (it answers Range requests with 206).
    let up = Reg::new();
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let d: Digest = up.push_blob("t/r", &blob).await.parse().unwrap();
    let upstream = Served::start(up.state.clone()).await;
    let client = strata_client::Client::new(&format!("http://{}", upstream.addr), None).unwrap();
    client.ping().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let blobs = strata_store::BlobStore::open(dir.path()).unwrap();
    // An earlier download stopped after 1 MB (the partial ingest stays for a resume).
    let mut ingest = blobs.begin(strata_store::IngestKey::Digest(d)).unwrap().unwrap();
    ingest.write_all(&blob[..1_000_000]).unwrap();
    drop(ingest);
    let c = client.fetch_blob("t/r", &d, &blobs).await.unwrap();
    assert!(c.written);
    assert_eq!(c.size, blob.len() as u64);
    assert_eq!(std::fs::read(blobs.path(&d)).unwrap(), blob);
    // Stored already: nothing to do.
    assert!(!client.fetch_blob("t/r", &d, &blobs).await.unwrap().written);
    // Unknown upstream: not found.
    let missing = Digest::of(b"missing");
    let e = client.fetch_blob("t/r", &missing, &blobs).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(
        blobs.list_partials().unwrap().is_empty(),
        "a partial ingest was left behind"
    );
    upstream.stop().await;
}

/// Deterministic, incompressible-looking test content.
fn blob_of(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A proxy (over a `shaping_proxy` over Distribution) and an uncached blob `t/s` holds.
struct Streaming {
    proxy: Served,
    store: Arc<Store>,
    count: Arc<AtomicUsize>,
    blob: Vec<u8>,
    digest: Digest,
    url: String,
    _dir: tempfile::TempDir,
    _dist: Distribution,
}

async fn streaming_setup(len: usize, shaping: Shaping) -> Option<Streaming> {
    let dist = Distribution::start()?;
    let blob = blob_of(len, 7);
    let digest = push_blob(&dist.url(), "t/s", &blob).await;
    let (addr, count) = shaping_proxy(dist.url(), shaping).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(dir.path(), &format!("http://{addr}"), None);
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let proxy = Served::start(AppState::new(store.clone(), cfg).unwrap()).await;
    let url = format!("http://{}/v2/t/s/blobs/{digest}", proxy.addr);
    Some(Streaming {
        proxy,
        store,
        count,
        blob,
        digest,
        url,
        _dir: dir,
        _dist: dist,
    })
}

fn sha256_digest(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncached_blob_streams_to_the_client_while_it_downloads() {
    // 4 MiB in 64 pieces, 30 ms apart: about 2 s upstream.
    let shaping = Shaping {
        pause: Some(Duration::from_millis(30)),
        corrupt: false,
    };
    let Some(s) = streaming_setup(4 << 20, shaping).await else {
        return;
    };
    let started = Instant::now();
    let mut r = reqwest::get(&s.url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(s.blob.len() as u64));
    assert_eq!(
        r.headers()["docker-content-digest"],
        s.digest.to_string().as_str()
    );
    let first = r.chunk().await.unwrap().expect("a first chunk");
    let first_at = started.elapsed();
    assert!(!first.is_empty());
    assert!(
        !s.store.blobs().contains(&s.digest),
        "the first bytes came only after the download was stored"
    );
    let mut got = first.to_vec();
    while let Some(c) = r.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    let total = started.elapsed();
    assert_eq!(got.len(), s.blob.len());
    assert_eq!(sha256_digest(&got), s.digest);
    assert!(
        first_at * 4 < total,
        "first bytes after {first_at:?}, whole blob after {total:?}"
    );
    assert!(
        total >= Duration::from_millis(64 * 30),
        "the upstream was not throttled"
    );
    // Stored and linked; later requests are served locally.
    wait_for("the blob to be linked", || {
        s.store.is_linked("t/s", &s.digest).unwrap()
    })
    .await;
    let again = reqwest::get(&s.url).await.unwrap().bytes().await.unwrap();
    assert!(again == s.blob.as_slice());
    assert_eq!(s.count.load(Ordering::SeqCst), 1);
    assert!(s.store.blobs().list_partials().unwrap().is_empty());
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_follow_one_throttled_download() {
    let shaping = Shaping {
        pause: Some(Duration::from_millis(20)),
        corrupt: false,
    };
    let Some(s) = streaming_setup(3 << 20, shaping).await else {
        return;
    };
    let client = reqwest::Client::new();
    let get = |client: reqwest::Client, url: String| {
        tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        })
    };
    // Three at once, then three more once the first bytes are flowing.
    let mut gets: Vec<_> = (0..3).map(|_| get(client.clone(), s.url.clone())).collect();
    let mut r = client.get(&s.url).send().await.unwrap();
    let mut late = r.chunk().await.unwrap().unwrap().to_vec();
    assert!(!s.store.blobs().contains(&s.digest), "already downloaded");
    gets.extend((0..3).map(|_| get(client.clone(), s.url.clone())));
    while let Some(c) = r.chunk().await.unwrap() {
        late.extend_from_slice(&c);
    }
    assert!(
        late == s.blob,
        "wrong content for the client that read chunk by chunk"
    );
    for got in futures::future::join_all(gets).await {
        assert!(got.unwrap() == s.blob.as_slice(), "wrong blob content");
    }
    assert_eq!(
        s.count.load(Ordering::SeqCst),
        1,
        "the blob was downloaded more than once"
    );
    wait_for("the blob to be linked", || {
        s.store.is_linked("t/s", &s.digest).unwrap()
    })
    .await;
    assert_eq!(std::fs::read(s.store.blobs().path(&s.digest)).unwrap(), s.blob);
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_does_not_verify_cuts_the_streamed_body_and_stores_nothing() {
    for pause in [Some(Duration::from_millis(5)), None] {
        let shaping = Shaping { pause, corrupt: true };
        let Some(s) = streaming_setup(2 << 20, shaping).await else {
            return;
        };
        let client = reqwest::Client::new();
        let gets = (0..3).map(|_| {
            let (client, url) = (client.clone(), s.url.clone());
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                if r.status() != StatusCode::OK {
                    return Err((false, format!("status {}", r.status())));
                }
                r.bytes()
                    .await
                    .map(|b| b.len())
                    .map_err(|e| (true, e.to_string()))
            })
        });
        let mut cut = 0;
        for got in futures::future::join_all(gets).await {
            let got = got.unwrap();
            assert!(
                got.is_err(),
                "a corrupt blob was served whole ({pause:?}): {got:?}"
            );
            cut += got.unwrap_err().0 as usize;
        }
        if pause.is_some() {
            // Throttled: the clients were answered 200 at once and their bodies were cut.
            assert_eq!(cut, 3, "bodies were not cut");
        }
        assert!(!s.store.blobs().contains(&s.digest), "a corrupt blob was stored");
        assert!(!s.store.is_linked("t/s", &s.digest).unwrap());
        wait_for("the failed ingest to be discarded", || {
            s.store.blobs().list_partials().unwrap().is_empty()
        })
        .await;
        s.proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_lists_come_from_the_upstream_and_from_the_cache_when_it_is_gone() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(dist) = Distribution::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let img = small_image(41, 1, false);
    for tag in ["b", "a", "c"] {
        push_with_skopeo(&dist, &img, "t/tags", tag, tmp.path()).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let state = AppState::new(store.clone(), proxy_config(dir.path(), &dist.url(), None)).unwrap();
    let proxy = Served::start(state).await;
    let base = format!("http://{}", proxy.addr);
    let list = |n: &str| {
        let url = format!("{base}/v2/t/tags/tags/list{n}");
        async move { reqwest::get(url).await.unwrap() }
    };
    // Nothing cached yet: the upstream's tags, sorted, paginated here.
    let body: serde_json::Value = list("").await.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["a", "b", "c"]));
    let r = list("?n=2").await;
    assert!(r.headers().contains_key("link"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["a", "b"]));
    let out = skopeo(vec![
        "list-tags".into(),
        "--tls-verify=false".into(),
        format!("docker://{}/t/tags", proxy.addr),
    ])
    .await;
    assert!(out.contains("\"c\""), "{out}");

    // Pull one tag through the cache, then lose the upstream: the cached tag is listed.
    pull_with_skopeo(&proxy.addr.to_string(), "t/tags", "b", &tmp.path().join("pull")).await;
    wait_for("the tag to be cached", || tagged(&store, "t/tags", "b").is_some()).await;
    drop(dist);
    let body: serde_json::Value = list("").await.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["b"]));
    assert_eq!(
        reqwest::get(format!("{base}/v2/t/never/tags/list"))
            .await
            .unwrap()
            .status(),
        404
    );
    proxy.stop().await;
}
