//! Slow clients on a real socket, with small configured timeouts: slowloris heads (a byte
//! at a time), stalled and trickled request bodies (both the streamed and the direct
//! upload paths, and manifests), and readers that never read a large blob response. Each
//! is dropped once its timeout has passed, and a crowd of them does not stop ordinary
//! clients from being served meanwhile.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Reg, Served};

fn slow_config(header_timeout: u64) -> Reg {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.limits.header_timeout = Duration::from_secs(header_timeout);
    cfg.limits.body_idle_timeout = Duration::from_secs(1);
    cfg.limits.min_body_rate = 2000;
    cfg.limits.send_timeout = Duration::from_secs(1);
    Reg::with_config(dir, cfg)
}

/// Reads what the server sends for up to `wait` (into `got`); true once it closed the
/// connection (EOF or reset), false if it is still open.
async fn closed_within(s: &mut TcpStream, wait: Duration, got: &mut Vec<u8>) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Ordinary clients, while the slow ones hang on: pings, a blob pushed and read back.
async fn ordinary_traffic(base: &str, rounds: usize) {
    let http = reqwest::Client::new();
    for i in 0..rounds {
        let r = http.get(format!("{base}/v2/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let bytes = format!("ordinary blob {i}").into_bytes();
        let digest = strata_store::Digest::of(&bytes).to_string();
        let r = http
            .post(format!("{base}/v2/ordinary/blobs/uploads/?digest={digest}"))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        let r = http
            .get(format!("{base}/v2/ordinary/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), bytes);
    }
}

/// 200 connections trickle a request head a byte every 100 ms; each is closed before its
/// head is complete (1 s header timeout; the head would take 20 s), and other clients are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_off() {
    let reg = slow_config(1);
    let served = Served::start(reg.state.clone()).await;
    let addr = served.addr;
    let head = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(180)
    );
    let mut slow = Vec::new();
    for _ in 0..200 {
        let head = head.clone().into_bytes();
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            for b in &head {
                if s.write_all(std::slice::from_ref(b)).await.is_err() {
                    return (true, got);
                }
                if closed_within(&mut s, Duration::from_millis(100), &mut got).await {
                    return (true, got);
                }
            }
            (false, got)
        }));
    }
    ordinary_traffic(&format!("http://{addr}"), 10).await;
    for t in slow {
        let (closed, got) = t.await.unwrap();
        assert!(closed, "a slowloris head was read to its end");
        assert!(
            !String::from_utf8_lossy(&got).contains("200 OK"),
            "a slowloris head was answered"
        );
    }
    ordinary_traffic(&format!("http://{addr}"), 2).await;
    served.stop().await;
}

/// What the server answered a body it gave up on: the status line, if any.
async fn send_slowly(
    addr: std::net::SocketAddr,
    head: String,
    body: Vec<u8>,
    step: usize,
    pause: Duration,
) -> (bool, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    // Far past the timeouts: a body still being taken by then has not been cut off.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(8);
    for piece in body.chunks(step) {
        if tokio::time::Instant::now() > give_up {
            return (false, String::from_utf8_lossy(&got).into_owned());
        }
        if s.write_all(piece).await.is_err() {
            break;
        }
        if pause.is_zero() {
            continue;
        }
        if closed_within(&mut s, pause, &mut got).await {
            return (true, String::from_utf8_lossy(&got).into_owned());
        }
    }
    // All sent (or the write failed): the rest of the answer.
    let closed = closed_within(&mut s, Duration::from_secs(5), &mut got).await;
    (closed, String::from_utf8_lossy(&got).into_owned())
}

async fn new_session(base: &str, repo: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.headers()["location"].to_str().unwrap().to_string()
}

/// Stalled and trickled upload bodies (a `Content-Length` body through hyper, a chunked
/// one through the direct path) and a trickled manifest: each is abandoned after its
/// timeout with an error, what arrived stays in the session, and other clients are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickled_bodies_are_abandoned() {
    // A long header timeout: the connection must close for the body's sake, not
    // because the next request head is late.
    let reg = slow_config(60);
    let served = Served::start(reg.state.clone()).await;
    let addr = served.addr;
    let base = format!("http://{addr}");
    let body = vec![7u8; 200_000];
    let mut cases = Vec::new();
    for i in 0..60 {
        let loc = new_session(&base, &format!("slow/{i}")).await;
        // 0, 1: stalled and trickled with a Content-Length under 1 MiB (through hyper);
        // 4, 5: the same declaring 4 MiB (the direct path); 2: chunked (direct), trickled;
        // 3: a trickled manifest.
        let kind = i % 6;
        let head = match kind {
            0 | 1 | 4 | 5 => format!(
                "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                if kind >= 4 { 4 << 20 } else { body.len() }
            ),
            2 => format!(
                "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            _ => format!(
                "PUT /v2/slow/{i}/manifests/m HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ),
        };
        let payload = match kind {
            // Stalled: 1000 bytes, then nothing.
            0 | 4 => body[..1000].to_vec(),
            // Trickled: 20 bytes every 50 ms (400 B/s, under the 2000 B/s minimum).
            1 | 3 | 5 => body.clone(),
            // Chunked, trickled in chunks of 20 bytes.
            _ => body
                .chunks(20)
                .flat_map(|c| {
                    let mut v = format!("{:x}\r\n", c.len()).into_bytes();
                    v.extend_from_slice(c);
                    v.extend_from_slice(b"\r\n");
                    v
                })
                .collect(),
        };
        let (step, pause) = match kind {
            0 | 4 => (1000, Duration::ZERO),
            2 => (25, Duration::from_millis(50)),
            _ => (20, Duration::from_millis(50)),
        };
        cases.push((
            kind,
            loc,
            tokio::spawn(send_slowly(addr, head, payload, step, pause)),
        ));
    }
    ordinary_traffic(&base, 10).await;
    let http = reqwest::Client::new();
    for (kind, loc, t) in cases {
        let (closed, answer) = t.await.unwrap();
        let status = answer.lines().next().unwrap_or_default().to_string();
        // Answered with an error (or not at all), and the connection closed: never
        // held open to drain the rest of a slow body.
        assert!(closed, "case {kind}: connection kept open after {answer:?}");
        assert!(
            status.contains(" 400 ") || status.is_empty(),
            "case {kind}: answered {answer:?}"
        );
        if kind != 3 {
            assert!(
                answer.contains("BLOB_UPLOAD_INVALID") || status.is_empty(),
                "{answer}"
            );
            // What arrived before the server gave up is kept; the session goes on.
            let r = http.get(format!("{base}{loc}")).send().await.unwrap();
            assert_eq!(r.status(), 204, "case {kind}");
            let range = r.headers()["range"].to_str().unwrap().to_string();
            let end: u64 = range.trim_start_matches("0-").parse().unwrap();
            assert!(end > 0 && end < 200_000, "case {kind}: {range}");
        } else {
            assert!(
                answer.contains("MANIFEST_INVALID") || status.is_empty(),
                "{answer}"
            );
        }
    }
    ordinary_traffic(&base, 2).await;
    served.stop().await;
}

/// Clients that ask for a 16 MiB blob and never read the answer are cut off after the
/// send timeout (1 s); other clients read the same blob in full meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_are_cut_off() {
    let reg = slow_config(1);
    let served = Served::start(reg.state.clone()).await;
    let addr = served.addr;
    let base = format!("http://{addr}");
    let blob: Vec<u8> = (0..16u32 << 20).map(|i| (i % 253) as u8).collect();
    let digest = strata_store::Digest::of(&blob).to_string();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v2/big/blobs/uploads/?digest={digest}"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        s.write_all(format!("GET /v2/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        stalled.push(s);
    }
    // Ordinary readers meanwhile, through both the sendfile path and a range.
    for _ in 0..3 {
        let got = http
            .get(format!("{base}/v2/big/blobs/{digest}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(got == blob, "an ordinary reader got other bytes");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Now read what the stalled ones were sent: the server gave up before the end.
    for mut s in stalled {
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => got += n,
            }
        };
        assert!(ended, "a stalled reader's connection was kept open");
        assert!(
            got < blob.len(),
            "a stalled reader was sent the whole blob ({got} bytes)"
        );
    }
    served.stop().await;
}
