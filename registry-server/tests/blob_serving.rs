//! Blob GETs over a real socket: whole blobs and ranges, big (sent with `sendfile`) and
//! small (streamed), mixed on one keep-alive connection and from curl, are byte-exact;
//! the metrics show the zero-copy path ran, and TLS serves the same bytes without it.

use crate::common::{Reg, Served};
use rand::{RngCore, SeedableRng};
use strata_store::Digest;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

async fn sendfile_bytes(client: &reqwest::Client, base: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("strata_registry_sendfile_bytes_total "))
        .expect("sendfile counter in /metrics")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_gets_are_byte_exact_on_every_path() {
    let reg = Reg::new();
    let big = random((5 << 20) + 12_345, 1);
    let small = random(10_000, 2);
    let (big_digest, small_digest) = (
        reg.push_blob("t/a", &big).await,
        reg.push_blob("t/a", &small).await,
    );
    let served = Served::start(reg.state.clone()).await;
    let base = format!("http://{}", served.addr);
    // One connection for everything: bodies of both kinds follow each other on it.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let before = sendfile_bytes(&client, &base).await;

    let get = |digest: &str, range: Option<String>| {
        let mut r = client.get(format!("{base}/v2/t/a/blobs/{digest}"));
        if let Some(range) = range {
            r = r.header("Range", range);
        }
        r.send()
    };
    for _ in 0..2 {
        let r = get(&big_digest, None).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.content_length(), Some(big.len() as u64));
        let body = r.bytes().await.unwrap();
        assert_eq!(Digest::of(&body).to_string(), big_digest);

        let r = get(&small_digest, None).await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), small);

        let (a, b) = (1_000_003usize, 4_500_000usize);
        let r = get(&big_digest, Some(format!("bytes={a}-{b}"))).await.unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap(), big[a..=b]);

        let r = client
            .head(format!("{base}/v2/t/a/blobs/{big_digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-length"], big.len().to_string().as_str());
    }
    let expected = 2 * (big.len() as u64 + (4_500_000 - 1_000_003 + 1));
    assert_eq!(sendfile_bytes(&client, &base).await - before, expected);

    // A real client, not reqwest: curl's download is the blob.
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = std::process::Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(out.path())
        .arg(format!("{base}/v2/t/a/blobs/{big_digest}"))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        Digest::of(&std::fs::read(out.path()).unwrap()).to_string(),
        big_digest
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_same_bytes_without_sendfile() {
    let (reg, _) = Reg::with_tls();
    let big = random(3 << 20, 3);
    let digest = reg.push_blob("t/b", &big).await;
    let served = Served::start(reg.state.clone()).await;
    let base = format!("https://{}", served.addr);
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let body = client
        .get(format!("{base}/v2/t/b/blobs/{digest}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(Digest::of(&body).to_string(), digest);
    assert_eq!(sendfile_bytes(&client, &base).await, 0);
    served.stop().await;
}
