//! `puller fetch` against a flaky registry: a blob GET that fails with 503, and one that
//! breaks off halfway, are retried (the second resumed with a Range request), and the
//! image arrives whole and verified.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use strata_fixtures::{Image, small_image};

#[derive(Clone)]
struct Flaky {
    image: Arc<Image>,
    /// GETs seen per blob digest.
    gets: Arc<Mutex<HashMap<String, u32>>>,
    /// Range headers received.
    ranges: Arc<Mutex<Vec<String>>>,
}

async fn manifest(State(f): State<Flaky>) -> Response {
    (
        [
            (header::CONTENT_TYPE, f.image.manifest.media_type.clone()),
            (
                header::HeaderName::from_static("docker-content-digest"),
                f.image.digest(),
            ),
        ],
        f.image.manifest.bytes.clone(),
    )
        .into_response()
}

async fn blob(State(f): State<Flaky>, Path(digest): Path<String>, headers: HeaderMap) -> Response {
    let Some(b) = f.image.blobs().find(|b| b.digest == digest).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let n = {
        let mut gets = f.gets.lock().unwrap();
        let n = gets.entry(digest).or_default();
        *n += 1;
        *n
    };
    match n {
        1 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        2 => {
            // Half the body, then the connection breaks.
            let half = b.bytes[..b.bytes.len() / 2].to_vec();
            // (The pause lets the first half reach the client before the break.)
            let stream = futures::StreamExt::chain(
                futures::stream::iter(vec![Ok::<_, std::io::Error>(half)]),
                futures::stream::once(async {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    Err(std::io::Error::other("connection lost"))
                }),
            );
            (
                [(header::CONTENT_LENGTH, b.bytes.len().to_string())],
                Body::from_stream(stream),
            )
                .into_response()
        }
        _ => {
            let range = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let Some(r) = &range {
                f.ranges.lock().unwrap().push(r.clone());
                let from: usize = r
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                let len = b.bytes.len();
                return (
                    StatusCode::PARTIAL_CONTENT,
                    [(header::CONTENT_RANGE, format!("bytes {from}-{}/{len}", len - 1))],
                    b.bytes[from..].to_vec(),
                )
                    .into_response();
            }
            b.bytes.clone().into_response()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_retries_and_resumes_against_a_flaky_registry() {
    // Layers big enough that half of one is a real partial ingest.
    let image = Arc::new(small_image(31, 2, false));
    let flaky = Flaky {
        image: image.clone(),
        gets: Arc::default(),
        ranges: Arc::default(),
    };
    let app = Router::new()
        .route("/v2/", get(|| async { "{}" }))
        .route("/v2/t/flaky/manifests/{reference}", get(manifest))
        .route("/v2/t/flaky/blobs/{digest}", get(blob))
        .with_state(flaky.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let reference = format!("{addr}/t/flaky:1");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_puller"))
            .arg("--root")
            .arg(&root)
            .args(["fetch", &reference])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&image.id()));
    assert!(stderr.contains("retrying"), "{stderr}");
    let gets = flaky.gets.lock().unwrap().clone();
    for b in std::iter::once(&image.config).chain(&image.layers) {
        assert_eq!(
            gets.get(&b.digest),
            Some(&3),
            "{}: 503, broken, then whole",
            b.digest
        );
    }
    let ranges = flaky.ranges.lock().unwrap().clone();
    assert!(
        ranges.iter().any(|r| r != "bytes=0-"),
        "a broken download resumes where it stopped: {ranges:?}"
    );
}
