//! Uploads that survive a restart, many concurrent pushes of overlapping images, and
//! garbage collection while pushes run.

use std::time::Duration;

use crate::common::{Proc, Reg};
use axum::body::Body;
use http::{Method, StatusCode};
use strata_fixtures::{peers, small_image};
use strata_store::{Digest, GcOptions};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_resumes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = Digest::of(&data).to_string();
    let half = data.len() / 2;
    let http = client();

    let reg = Proc::start(&root, &[]);
    let base = format!("http://{}", reg.addr());
    let r = http
        .post(format!("{base}/v2/r/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = http
        .patch(format!("{base}{loc}"))
        .header("content-range", format!("0-{}", half - 1))
        .body(data[..half].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(reg.stop().success(), "graceful stop");

    // A new process over the same store picks the session up where it was.
    let reg = Proc::start(&root, &[]);
    let base = format!("http://{}", reg.addr());
    let r = http.get(format!("{base}{loc}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], format!("0-{}", half - 1).as_str());
    // A chunk that does not continue the upload is refused.
    let r = http
        .patch(format!("{base}{loc}"))
        .header("content-range", "5-10")
        .body(vec![0u8; 6])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = http
        .patch(format!("{base}{loc}"))
        .header("content-range", format!("{half}-{}", data.len() - 1))
        .body(data[half..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = http
        .put(format!("{base}{loc}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = http
        .get(format!("{base}/v2/r/blobs/{digest}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == data[..]);
    assert!(reg.stop().success());
}

async fn push_image(http: &reqwest::Client, base: &str, repo: &str, tag: &str, img: &strata_fixtures::Image) {
    for b in std::iter::once(&img.config).chain(&img.layers) {
        // Probe first like real clients do, then a monolithic upload.
        let head = http
            .head(format!("{base}/v2/{repo}/blobs/{}", b.digest))
            .send()
            .await
            .unwrap();
        if head.status() == 200 {
            continue;
        }
        let r = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let r = http
            .put(format!("{base}{loc}?digest={}", b.digest))
            .body(b.bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", &img.manifest.media_type)
        .body(img.manifest.bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_overlapping_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let reg = Proc::start(&root, &[]);
    let base = format!("http://{}", reg.addr());
    let http = client();
    // 20 distinct images sharing a base layer, each pushed 10 times into 10 repositories.
    let images: Vec<_> = (0..20).map(|s| small_image(s, 2, true)).collect();
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let http = http.clone();
        let base = base.clone();
        let img = images[i % 20].clone();
        tasks.push(tokio::spawn(async move {
            push_image(
                &http,
                &base,
                &format!("load/r{}", i % 10),
                &format!("t{}", i % 20),
                &img,
            )
            .await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..images.len() {
        let r = http
            .get(format!("{base}/v2/load/r{}/manifests/t{i}", i % 10))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(reg.stop().success());
    // Every distinct blob stored exactly once.
    let mut distinct = std::collections::BTreeSet::new();
    for img in &images {
        for b in img.blobs() {
            distinct.insert(b.hex().to_string());
        }
    }
    let files: std::collections::BTreeSet<String> = std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, distinct);
    let leftovers: Vec<_> = std::fs::read_dir(root.join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let out = peers::output(
        std::process::Command::new(peers::bin("store"))
            .arg("--root")
            .arg(&root)
            .arg("fsck"),
    );
    assert!(out.status.success(), "store fsck: {}", peers::format_output(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_while_pushing_keeps_in_flight_content() {
    let reg = Reg::new();
    let old = small_image(100, 2, false);
    reg.push_image("g", "old", &old).await;
    let r = reg
        .req(
            Method::DELETE,
            &format!("/v2/g/manifests/{}", old.manifest.digest),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // An upload in progress, its first chunk written.
    let r = reg
        .req(Method::POST, "/v2/g/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap().to_string();
    let pending: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
    reg.req(Method::PATCH, &loc, &[], pending[..50_000].to_vec())
        .await;
    // Older than the GC's grace (1 s) plus the store's timestamp slack (1 s).
    tokio::time::sleep(Duration::from_millis(2600)).await;

    let store = reg.state.store().clone();
    let gc = tokio::task::spawn_blocking(move || {
        let mut reports = Vec::new();
        for _ in 0..5 {
            reports.push(
                store
                    .gc(&GcOptions {
                        grace: Duration::from_secs(1),
                        ..GcOptions::default()
                    })
                    .unwrap(),
            );
        }
        reports
    });
    // Pushes while the GCs run.
    let fresh: Vec<_> = (200..208).map(|s| small_image(s, 2, true)).collect();
    for (i, img) in fresh.iter().enumerate() {
        reg.push_image("g", &format!("new{i}"), img).await;
    }
    let reports = gc.await.unwrap();
    assert!(
        reports.iter().map(|r| r.blobs_removed).sum::<u64>() >= 3,
        "{reports:?}"
    );
    // The deleted image's content is gone; everything pushed during the GC is whole.
    assert!(
        !reg.state
            .store()
            .blobs()
            .contains(&old.layers[1].digest.parse().unwrap())
    );
    for (i, img) in fresh.iter().enumerate() {
        let r = reg.get(&format!("/v2/g/manifests/new{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        for b in std::iter::once(&img.config).chain(&img.layers) {
            assert_eq!(
                reg.get(&format!("/v2/g/blobs/{}", b.digest)).await.status,
                StatusCode::OK
            );
        }
    }
    // The upload in progress survives and completes.
    let d = Digest::of(&pending).to_string();
    let r = reg
        .req(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[],
            pending[50_000..].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
}

#[tokio::test]
async fn abandoned_uploads_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.uploads.expiry = Duration::from_secs(1);
    let reg = Reg::with_config(dir, cfg);
    let r = reg
        .req(Method::POST, "/v2/x/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap().to_string();
    reg.req(Method::PATCH, &loc, &[], b"partial".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let st = reg.state.clone();
    let n = tokio::task::spawn_blocking(move || st.expire_uploads().unwrap())
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(reg.get(&loc).await.code(), "BLOB_UPLOAD_UNKNOWN");
    assert!(reg.state.store().blobs().list_partials().unwrap().is_empty());
}

#[tokio::test]
async fn store_gc_asks_the_running_server_to_collect_now() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[gc]\ngrace = 0\n").unwrap();
    let proc = crate::common::Proc::start(&root, &["--config", config.to_str().unwrap()]);
    // An uploaded blob no manifest references: garbage once the grace period (0) is over.
    let blob = b"unreferenced".to_vec();
    let digest = Digest::of(&blob);
    let client = reqwest::Client::new();
    let base = format!("http://{}", proc.addr());
    let r = client
        .post(format!("{base}/v2/t/gc/blobs/uploads/?digest={digest}"))
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let path = root.join("blobs/sha256").join(digest.hex());
    assert!(path.is_file());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The server holds the store while it runs.
    assert_eq!(
        strata_store::Store::writer(&root).map(|(_, program)| program),
        Some("registry-server".to_string())
    );
    // `store gc` asks the server (SIGUSR1) instead of waiting for it to stop.
    let mut gc = std::process::Command::new(peers::bin("store"))
        .arg("--root")
        .arg(&root)
        .arg("gc")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gc.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = gc.kill();
            panic!("store gc waited for the server instead of asking it to collect");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = gc.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("asked it to collect garbage now"), "{stdout}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!path.exists(), "SIGUSR1 did not collect the unreferenced blob");
    let r = client.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the server keeps serving after a collection");
    assert!(proc.stop().success());
}

#[tokio::test]
async fn a_push_onto_a_full_disk_fails_cleanly_and_the_server_recovers() {
    let Some(fs) = strata_fixtures::SmallFs::mount(24 << 20) else {
        return;
    };
    let root = fs.path().join("root");
    let proc = Proc::start(&root, &[]);
    let base = format!("http://{}", proc.addr());
    let client = reqwest::Client::new();
    let free_before = fs.free();

    // 32 MiB into 24 MiB of disk, chunked, as docker pushes.
    let big: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let r = client
        .post(format!("{base}/v2/t/full/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let r = client
        .patch(&loc)
        .header("Content-Type", "application/octet-stream")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("No space left on device"), "unclear error: {body}");
    // What the upload kept is cut back to what was hashed: a resume stays sound. Cancel.
    let r = client.delete(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let given_back = fs.free() as i64 - free_before as i64;
    assert!(
        given_back.abs() < (2 << 20),
        "the failed push kept {} bytes",
        -given_back
    );

    // The server goes on: a push that fits succeeds and reads back.
    let small = b"fits".to_vec();
    let digest = Digest::of(&small);
    let r = client
        .post(format!("{base}/v2/t/full/blobs/uploads/?digest={digest}"))
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .get(format!("{base}/v2/t/full/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), small);
    assert!(proc.stop().success());
    let out = std::process::Command::new(peers::bin("store"))
        .arg("--root")
        .arg(&root)
        .arg("fsck")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn gc_keeps_old_content_pushed_again_until_its_manifest_arrives() {
    let reg = Reg::new();
    let img = small_image(300, 2, false);
    reg.push_image("a", "1", &img).await;
    let r = reg
        .req(
            Method::DELETE,
            &format!("/v2/a/manifests/{}", img.manifest.digest),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // The content is unreferenced now, and older than the grace period below.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    // A push of the same image to another repository: blobs first (the store already has
    // them, unreferenced), and a cross-repository mount of one of them.
    reg.push_blob("b", &img.config.bytes).await;
    reg.push_blob("b", &img.layers[0].bytes).await;
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/b/blobs/uploads/?mount={}&from=a", img.layers[1].digest),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    // A GC between the blobs and the manifest keeps them.
    let report = reg
        .state
        .store()
        .gc(&GcOptions {
            grace: Duration::from_secs(1),
            ..GcOptions::default()
        })
        .unwrap();
    let store = reg.state.store();
    for b in std::iter::once(&img.config).chain(&img.layers) {
        assert!(store.blobs().contains(&b.digest.parse().unwrap()), "{report:?}");
    }
    // (The deleted manifest's own blob, which nothing re-pushed, is collected.)
    assert!(!store.blobs().contains(&img.manifest.digest.parse().unwrap()));
    let r = reg
        .put_manifest("b", "1", &img.manifest.media_type, &img.manifest.bytes)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
}

#[tokio::test]
async fn gc_keeps_old_content_a_client_found_with_head_until_its_manifest_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.gc.grace = Duration::from_secs(1);
    let reg = Reg::with_config(dir, cfg);
    let img = small_image(301, 2, false);
    reg.push_image("h", "1", &img).await;
    let r = reg
        .req(
            Method::DELETE,
            &format!("/v2/h/manifests/{}", img.manifest.digest),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    // A client pushing the image again finds every blob with HEAD and skips uploading.
    for b in std::iter::once(&img.config).chain(&img.layers) {
        let r = reg
            .req(
                Method::HEAD,
                &format!("/v2/h/blobs/{}", b.digest),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    reg.state
        .store()
        .gc(&GcOptions {
            grace: Duration::from_secs(1),
            ..GcOptions::default()
        })
        .unwrap();
    let r = reg
        .put_manifest("h", "1", &img.manifest.media_type, &img.manifest.bytes)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
}
