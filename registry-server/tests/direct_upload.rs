//! Large blob upload bodies read beside hyper (`direct`): byte-exact at any offset,
//! `Expect: 100-continue`, pipelining, bodies a handler leaves unread, clients that go
//! away mid-body — all over a raw keep-alive connection, so the test sees exactly what a
//! client sees.

use crate::common::{Reg, Served};
use strata_store::Digest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn random(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One raw HTTP/1.1 keep-alive connection.
struct Conn {
    io: BufReader<TcpStream>,
}

impl Conn {
    async fn open(s: &Served) -> Conn {
        Conn {
            io: BufReader::new(TcpStream::connect(s.addr).await.unwrap()),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads one response (status line, headers, `Content-Length` body).
    async fn response(&mut self) -> Resp {
        let mut line = String::new();
        self.io.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("HTTP/1.1 "), "status line {line:?}");
        let status: u16 = line[9..12].parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            self.io.read_line(&mut l).await.unwrap();
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut r = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = r.header("content-length").map_or(0, |v| v.parse().unwrap());
        r.body = vec![0u8; len];
        self.io.read_exact(&mut r.body).await.unwrap();
        r
    }

    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Resp {
        self.send(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        self.send(body).await;
        self.response().await
    }

    /// Starts an upload session; returns its path.
    async fn start_upload(&mut self, repo: &str) -> String {
        let r = self
            .request("POST", &format!("/v2/{repo}/blobs/uploads/"), b"")
            .await;
        assert_eq!(r.status, 202);
        r.header("location").unwrap().to_string()
    }

    async fn direct_bytes(&mut self) -> u64 {
        let r = self.request("GET", "/metrics", b"").await;
        let text = String::from_utf8(r.body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("strata_registry_direct_received_bytes_total "))
            .unwrap()
            .parse()
            .unwrap()
    }
}

fn with_digest(location: &str, d: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={d}")
}

#[tokio::test]
async fn a_large_put_is_stored_byte_exact_and_the_connection_goes_on() {
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    let mut c = Conn::open(&served).await;
    let blob = random(3_000_000, 1);
    let d = Digest::of(&blob);
    let loc = c.start_upload("direct/a").await;
    // The head, then the body in pieces with pauses: the reader must follow.
    c.send(
        format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            with_digest(&loc, &d),
            blob.len()
        )
        .as_bytes(),
    )
    .await;
    for piece in blob.chunks(700_001) {
        c.send(piece).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = c.response().await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("docker-content-digest"), Some(d.to_string().as_str()));
    assert_eq!(
        c.direct_bytes().await,
        blob.len() as u64,
        "the body did not take the direct path"
    );
    // Same connection: the blob comes back whole.
    let r = c.request("GET", &format!("/v2/direct/a/blobs/{d}"), b"").await;
    assert_eq!(r.status, 200);
    assert!(r.body == blob, "stored bytes differ");
    served.stop().await;
}

#[tokio::test]
async fn chunks_at_unaligned_offsets_direct_or_not_add_up() {
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    let mut c = Conn::open(&served).await;
    let blob = random(1_500_001 + 700_000 + 2_000_003 + 1_048_577, 2);
    let d = Digest::of(&blob);
    let mut loc = c.start_upload("direct/b").await;
    let sizes = [1_500_001usize, 700_000, 2_000_003];
    let mut at = 0;
    for n in sizes {
        let r = c.request("PATCH", &loc, &blob[at..at + n]).await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        at += n;
        assert_eq!(r.header("range"), Some(format!("0-{}", at - 1).as_str()));
        loc = r.header("location").unwrap().to_string();
    }
    let r = c.request("PUT", &with_digest(&loc, &d), &blob[at..]).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // All but the 700,000-byte chunk (under the threshold) went direct.
    assert_eq!(c.direct_bytes().await, (blob.len() - 700_000) as u64);
    let r = c.request("GET", &format!("/v2/direct/b/blobs/{d}"), b"").await;
    assert!(r.status == 200 && r.body == blob);
    served.stop().await;
}

#[tokio::test]
async fn expect_continue_gets_100_before_the_body_is_sent() {
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    let mut c = Conn::open(&served).await;
    let blob = random(2_000_000, 3);
    let d = Digest::of(&blob);
    let loc = c.start_upload("direct/c").await;
    c.send(
        format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            with_digest(&loc, &d),
            blob.len()
        )
        .as_bytes(),
    )
    .await;
    let mut line = String::new();
    let wait = std::time::Duration::from_secs(10);
    tokio::time::timeout(wait, c.io.read_line(&mut line))
        .await
        .expect("no 100 Continue while the client waits for it")
        .unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    line.clear();
    c.io.read_line(&mut line).await.unwrap();
    assert_eq!(line, "\r\n");
    c.send(&blob).await;
    let r = c.response().await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    served.stop().await;
}

#[tokio::test]
async fn a_request_pipelined_behind_a_direct_body_is_answered_in_order() {
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    let mut c = Conn::open(&served).await;
    let blob = random(1_100_000, 4);
    let d = Digest::of(&blob);
    let loc = c.start_upload("direct/d").await;
    let mut all = format!(
        "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        with_digest(&loc, &d),
        blob.len()
    )
    .into_bytes();
    all.extend_from_slice(&blob);
    all.extend_from_slice(format!("HEAD /v2/direct/d/blobs/{d} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    c.send(&all).await;
    let r = c.response().await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // A HEAD response has a Content-Length but no body: read the head only.
    let mut line = String::new();
    c.io.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim_end(), "HTTP/1.1 200 OK");
    loop {
        line.clear();
        c.io.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    assert_eq!(c.request("GET", "/v2/", b"").await.status, 200);
    served.stop().await;
}

#[tokio::test]
async fn bodies_a_handler_refuses_are_drained_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.limits.max_blob_bytes = Some(2_500_000);
    let reg = Reg::with_config(dir, cfg);
    let served = Served::start(reg.state.clone()).await;
    let mut c = Conn::open(&served).await;
    let blob = random(3_000_000, 5);
    let d = Digest::of(&blob);
    // An upload that does not exist: 404 before any body byte is read.
    let r = c
        .request(
            "PUT",
            &format!("/v2/direct/e/blobs/uploads/nosuchupload?digest={d}"),
            &blob,
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(c.request("GET", "/v2/", b"").await.status, 200);
    // Over the configured blob size limit: refused before reading.
    let loc = c.start_upload("direct/e").await;
    let r = c.request("PUT", &with_digest(&loc, &d), &blob).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("SIZE_INVALID"));
    assert_eq!(c.request("GET", "/v2/", b"").await.status, 200);
    // Read in full, then refused: the wrong digest. Nothing becomes visible.
    let small = &blob[..2_000_000];
    let loc = c.start_upload("direct/e").await;
    let r = c.request("PUT", &with_digest(&loc, &d), small).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("DIGEST_INVALID"));
    assert_eq!(c.request("GET", "/v2/", b"").await.status, 200);
    assert!(!reg.state.store().blobs().contains(&Digest::of(small)));
    assert!(!reg.state.store().blobs().contains(&d));
    served.stop().await;
}

#[tokio::test]
async fn a_client_gone_mid_body_leaves_an_upload_that_resumes() {
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    let blob = random(3_000_000, 6);
    let d = Digest::of(&blob);
    let mut c = Conn::open(&served).await;
    let loc = c.start_upload("direct/f").await;
    let sent = 1_600_000;
    c.send(
        format!(
            "PATCH {loc} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            blob.len()
        )
        .as_bytes(),
    )
    .await;
    c.send(&blob[..sent]).await;
    drop(c);
    // The server keeps what arrived (a few moments to notice the end of the stream).
    let mut c = Conn::open(&served).await;
    let mut offset = 0;
    for _ in 0..100 {
        let r = c.request("GET", &loc, b"").await;
        assert_eq!(r.status, 204);
        offset = r
            .header("range")
            .unwrap()
            .split_once('-')
            .unwrap()
            .1
            .parse::<usize>()
            .unwrap()
            + 1;
        if offset == sent {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(offset, sent);
    let r = c.request("PATCH", &loc, &blob[sent..2_700_000]).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let r = c.request("PUT", &with_digest(&loc, &d), &blob[2_700_000..]).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = c.request("GET", &format!("/v2/direct/f/blobs/{d}"), b"").await;
    assert!(r.status == 200 && r.body == blob);
    served.stop().await;
}

/// `data` in HTTP/1.1 chunked framing, pieces of `size` bytes, with a trailer.
fn chunked(data: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Checksum: none\r\n\r\n");
    out
}

#[tokio::test]
async fn chunked_patches_are_read_direct_and_a_pipelined_request_follows() {
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    let mut c = Conn::open(&served).await;
    let blob = random(2_500_000, 7);
    let d = Digest::of(&blob);
    let loc = c.start_upload("direct/g").await;
    // As docker, podman and skopeo send layers: 32 KiB chunks (and an odd second PATCH).
    let (first, second) = blob.split_at(1_700_001);
    let mut wire =
        format!("PATCH {loc} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    wire.extend_from_slice(&chunked(first, 32 << 10));
    wire.extend_from_slice(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(&wire).await;
    let r = c.response().await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("range"), Some("0-1700000"));
    assert_eq!(c.response().await.status, 200, "the pipelined request");
    let loc = r.header("location").unwrap().to_string();
    let mut wire =
        format!("PATCH {loc} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    wire.extend_from_slice(&chunked(second, 4093));
    c.send(&wire).await;
    let r = c.response().await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let r = c.request("PUT", &with_digest(&loc, &d), b"").await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        c.direct_bytes().await,
        blob.len() as u64,
        "the bodies did not take the direct path"
    );
    let r = c.request("GET", &format!("/v2/direct/g/blobs/{d}"), b"").await;
    assert!(r.status == 200 && r.body == blob);
    served.stop().await;
}

#[tokio::test]
async fn a_chunked_body_a_handler_refuses_is_drained_and_the_connection_goes_on() {
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    let mut c = Conn::open(&served).await;
    let blob = random(1_000_000, 8);
    let mut wire =
        b"PATCH /v2/direct/h/blobs/uploads/nosuchupload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    wire.extend_from_slice(&chunked(&blob, 32 << 10));
    c.send(&wire).await;
    assert_eq!(c.response().await.status, 404);
    assert_eq!(c.request("GET", "/v2/", b"").await.status, 200);
    served.stop().await;
}

#[tokio::test]
async fn broken_chunked_framing_keeps_only_the_good_chunks() {
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    let mut c = Conn::open(&served).await;
    let blob = random(200_000, 9);
    let loc = c.start_upload("direct/i").await;
    let mut wire =
        format!("PATCH {loc} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    wire.extend_from_slice(format!("{:x}\r\n", blob.len()).as_bytes());
    wire.extend_from_slice(&blob);
    wire.extend_from_slice(b"\r\nzz-not-a-size\r\n");
    c.send(&wire).await;
    // The server refuses the body (a 400 or a closed connection), and keeps serving.
    let mut any = [0u8; 1];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), c.io.read(&mut any)).await;
    let mut c = Conn::open(&served).await;
    let r = c.request("GET", &loc, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("range"), Some(format!("0-{}", blob.len() - 1).as_str()));
    served.stop().await;
}

#[tokio::test]
async fn a_head_sent_too_slowly_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.limits.header_timeout = std::time::Duration::from_millis(500);
    let reg = Reg::with_config(dir, cfg);
    let served = Served::start(reg.state.clone()).await;
    let mut c = Conn::open(&served).await;
    // The reader holds back an incomplete head; hyper's header timeout must still fire.
    let started = std::time::Instant::now();
    let mut closed = false;
    for piece in b"PATCH /v2/direct/j/blobs/uploads/x HTTP/1.1\r\nHost: t\r\nX-Slow: ".iter() {
        if c.io.get_mut().write_all(&[*piece]).await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(std::time::Duration::from_millis(100), c.io.read(&mut b)).await {
            // A 408 or the end of the stream: the server gave up on the head.
            assert!(matches!(r, Ok(0) | Ok(1) | Err(_)));
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a head trickled over {:?} was still awaited",
        started.elapsed()
    );
    // A connection that never sends a byte is closed too.
    let mut idle = Conn::open(&served).await;
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), idle.io.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection was kept: {r:?}"
    );
    let mut c = Conn::open(&served).await;
    assert_eq!(c.request("GET", "/v2/", b"").await.status, 200);
    served.stop().await;
}

/// What a scripted request should get back.
struct Expect {
    status: u16,
    head: bool,
}

/// Many seeded mixes of requests — small and large `PATCH`es, chunked or with a length,
/// bodies refused unread, `GET`s and `HEAD`s — pipelined on one connection and written in
/// pieces of random sizes: every response comes back in order with the right status, and
/// the upload ends as exactly the bytes sent.
#[tokio::test]
async fn pipelined_mixes_written_in_random_pieces_keep_every_message_boundary() {
    use rand::{Rng, SeedableRng};
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    for seed in 0..6u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let repo = format!("direct/mix{seed}");
        let loc = Conn::open(&served).await.start_upload(&repo).await;
        let mut wire = Vec::new();
        let mut expect = Vec::new();
        let mut blob = Vec::new();
        for i in 0..8 {
            match rng.random_range(0..5) {
                0 => {
                    wire.extend_from_slice(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n");
                    expect.push(Expect {
                        status: 200,
                        head: false,
                    });
                }
                1 => {
                    wire.extend_from_slice(b"HEAD /v2/ HTTP/1.1\r\nHost: t\r\n\r\n");
                    expect.push(Expect {
                        status: 200,
                        head: true,
                    });
                }
                k => {
                    // k == 2: refused (an upload that does not exist), else appended. A
                    // refused body hyper reads itself (under 1 MiB, not chunked) makes it
                    // close the connection after the response, so those are all direct.
                    let len = rng.random_range(1..1_600_000);
                    let part = random(len, seed * 100 + i);
                    let path = if k == 2 {
                        format!("/v2/{repo}/blobs/uploads/gone{i}")
                    } else {
                        loc.clone()
                    };
                    if rng.random_bool(0.5) || (k == 2 && len < 1 << 20) {
                        wire.extend_from_slice(
                            format!("PATCH {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
                                .as_bytes(),
                        );
                        wire.extend_from_slice(&chunked(&part, rng.random_range(1..100_000)));
                    } else {
                        wire.extend_from_slice(
                            format!("PATCH {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n")
                                .as_bytes(),
                        );
                        wire.extend_from_slice(&part);
                    }
                    if k == 2 {
                        expect.push(Expect {
                            status: 404,
                            head: false,
                        });
                    } else {
                        blob.extend_from_slice(&part);
                        expect.push(Expect {
                            status: 202,
                            head: false,
                        });
                    }
                }
            }
        }
        let d = Digest::of(&blob);
        wire.extend_from_slice(
            format!(
                "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
                with_digest(&loc, &d)
            )
            .as_bytes(),
        );
        expect.push(Expect {
            status: 201,
            head: false,
        });
        let tcp = TcpStream::connect(served.addr).await.unwrap();
        let (rd, mut wr) = tcp.into_split();
        let pieces: Vec<usize> = (0..wire.len()).map(|_| rng.random_range(1..200_000)).collect();
        let writer = tokio::spawn(async move {
            let mut at = 0;
            for n in pieces {
                if at == wire.len() {
                    break;
                }
                let n = n.min(wire.len() - at);
                wr.write_all(&wire[at..at + n]).await.unwrap();
                at += n;
            }
            wr
        });
        let mut io = BufReader::new(rd);
        for (i, e) in expect.iter().enumerate() {
            let mut line = String::new();
            io.read_line(&mut line).await.unwrap();
            assert!(
                line.starts_with("HTTP/1.1 "),
                "seed {seed} #{i}: status line {line:?}"
            );
            let status: u16 = line[9..12].parse().unwrap();
            assert_eq!(status, e.status, "seed {seed} response #{i}");
            let mut len = 0usize;
            loop {
                let mut l = String::new();
                io.read_line(&mut l).await.unwrap();
                if l == "\r\n" {
                    break;
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            if !e.head {
                let mut body = vec![0u8; len];
                io.read_exact(&mut body).await.unwrap();
            }
        }
        drop(writer.await.unwrap());
        let mut c = Conn::open(&served).await;
        let r = c.request("GET", &format!("/v2/{repo}/blobs/{d}"), b"").await;
        assert!(
            r.status == 200 && r.body == blob,
            "seed {seed}: stored bytes differ"
        );
    }
    served.stop().await;
}
