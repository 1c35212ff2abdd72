//! Slow clients beside the load: each loops until the run ends — connect, misbehave, and
//! time how long the server holds the connection before it cuts it off.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the slow clients saw: how long each connection the server cut off was held,
/// those still open when the run ended (and for how long), and anything else (a slow
/// request answered normally, a failed setup).
#[derive(Default)]
pub struct SlowStats {
    pub held: Mutex<Vec<(&'static str, f64)>>,
    pub open_at_end: Mutex<Vec<(&'static str, f64)>>,
    pub not_cut: Mutex<Vec<(&'static str, String)>>,
}

/// Reads until the server closes; false if `stop` came first.
async fn until_closed(s: &mut TcpStream, stop: &AtomicBool, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => {
                if got.len() < 4096 {
                    got.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

async fn session(addr: &str, repo: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .map(|l| l.trim().to_string())
}

/// A request head, one byte a second.
pub async fn slowloris(addr: String, stop: &AtomicBool, stats: &SlowStats) {
    let head = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(4000)
    );
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            continue;
        };
        let t = Instant::now();
        let got = Vec::new();
        let mut cut = false;
        for b in head.as_bytes() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if s.write_all(std::slice::from_ref(b)).await.is_err() {
                cut = true;
                break;
            }
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut [0u8; 512])).await {
                Err(_) => {}
                Ok(Ok(0)) | Ok(Err(_)) => {
                    cut = true;
                    break;
                }
                Ok(Ok(_)) => {}
            }
        }
        record(stats, "slowloris", t, cut, &got);
    }
}

/// An upload `PATCH` declaring 1 MiB (the direct path) whose body trickles at `rate`
/// bytes a second (0: a first 1000 bytes, then nothing).
pub async fn slow_body(addr: String, rate: usize, stop: &AtomicBool, stats: &SlowStats) {
    let kind = if rate == 0 {
        "stalled body"
    } else {
        "trickled body"
    };
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let Some(loc) = session(&addr, &format!("slow/{}", n % 10)).await else {
            stats
                .not_cut
                .lock()
                .unwrap()
                .push((kind, "no upload session".into()));
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            continue;
        };
        let head = format!(
            "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            1 << 20
        );
        let t = Instant::now();
        let mut got = Vec::new();
        if s.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        let cut = if rate == 0 {
            let _ = s.write_all(&[1u8; 1000]).await;
            until_closed(&mut s, stop, &mut got).await
        } else {
            let piece = vec![2u8; rate / 10];
            let mut cut = false;
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(&piece).await.is_err() {
                    cut = true;
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut [0u8; 4096])).await {
                    Err(_) => {}
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        cut = true;
                        break;
                    }
                    Ok(Ok(_)) => {
                        // The error answer: the server closes next.
                        cut = until_closed(&mut s, stop, &mut got).await;
                        break;
                    }
                }
            }
            cut
        };
        record(stats, kind, t, cut, &got);
    }
}

/// A GET of a large blob whose answer is never read.
pub async fn stalled_reader(addr: String, path: String, len: usize, stop: &AtomicBool, stats: &SlowStats) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
            return;
        };
        let _ = sock.set_recv_buffer_size(4096);
        let Ok(addr) = addr.parse() else { return };
        let Ok(mut s) = sock.connect(addr).await else {
            continue;
        };
        let t = Instant::now();
        if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .is_err()
        {
            continue;
        }
        // Not a byte read until the server gave up: watch the socket's state instead.
        let closed = loop {
            if stop.load(Ordering::Relaxed) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if peer_closed(&s) {
                break true;
            }
        };
        let held = t.elapsed().as_secs_f64();
        // Then read what was sent: less than the blob.
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            got += n;
        }
        if closed && got < len {
            stats.held.lock().unwrap().push(("stalled reader", held));
        } else if closed {
            stats
                .not_cut
                .lock()
                .unwrap()
                .push(("stalled reader", format!("read all {got} bytes")));
        } else {
            stats.open_at_end.lock().unwrap().push(("stalled reader", held));
        }
    }
}

/// Whether the server closed its end of `s`: its socket (local port the server's, remote
/// port ours, in `/proc/net/tcp`) has left ESTABLISHED (FIN_WAIT1 with the unread data
/// still queued behind our zero window, or gone).
fn peer_closed(s: &TcpStream) -> bool {
    let (Ok(local), Ok(peer)) = (s.local_addr(), s.peer_addr()) else {
        return true;
    };
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let server = format!("0100007F:{:04X}", peer.port());
    let client = format!("0100007F:{:04X}", local.port());
    let state = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[1] == server && f[2] == client).then(|| f[3].to_string())
    });
    state.is_none_or(|st| st != "01")
}

fn record(stats: &SlowStats, kind: &'static str, t: Instant, cut: bool, got: &[u8]) {
    let held = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(got);
    if cut && !text.contains(" 200 ") && !text.contains(" 202 ") {
        stats.held.lock().unwrap().push((kind, held));
    } else if cut {
        stats
            .not_cut
            .lock()
            .unwrap()
            .push((kind, format!("answered {}", text.lines().next().unwrap_or(""))));
    } else {
        stats.open_at_end.lock().unwrap().push((kind, held));
    }
}
