//! Partial pulls: blob GETs with several ranges answered `206` with a
//! `multipart/byteranges` body (RFC 9110 §14.6) — through `app()` on the embedded store and
//! on shared backends, and byte-exact against curl's multi-range requests over a socket.

use crate::common::{Reg, Served};
use axum::body::Body;
use http::{Method, StatusCode};

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// The parts of a `multipart/byteranges` body: `(content-type, content-range, bytes)`.
fn parts(content_type: &str, body: &[u8]) -> Vec<(String, String, Vec<u8>)> {
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("content-type {content_type:?}"));
    let delimiter = format!("--{boundary}");
    let close = format!("\r\n--{boundary}--\r\n");
    assert!(
        body.starts_with(delimiter.as_bytes()),
        "body starts with the boundary"
    );
    assert!(
        body.ends_with(close.as_bytes()),
        "body ends with the close delimiter"
    );
    let inner = &body[delimiter.len()..body.len() - close.len()];
    let separator = format!("\r\n--{boundary}");
    let mut out = Vec::new();
    let mut rest = inner;
    loop {
        let end = find(rest, separator.as_bytes()).unwrap_or(rest.len());
        let part = &rest[..end];
        let part = part.strip_prefix(b"\r\n").expect("CRLF after the boundary");
        let split = find(part, b"\r\n\r\n").expect("part headers end");
        let head = std::str::from_utf8(&part[..split]).unwrap();
        let mut ct = String::new();
        let mut cr = String::new();
        for line in head.split("\r\n") {
            let (k, v) = line.split_once(": ").unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-type" => ct = v.to_string(),
                "content-range" => cr = v.to_string(),
                other => panic!("unexpected part header {other}"),
            }
        }
        out.push((ct, cr, part[split + 4..].to_vec()));
        if end == rest.len() {
            break;
        }
        rest = &rest[end + separator.len()..];
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks a multipart answer against the blob: one part per expected range, in order.
fn check_parts(content_type: &str, body: &[u8], data: &[u8], expected: &[(usize, usize)]) {
    let got = parts(content_type, body);
    let ranges: Vec<&String> = got.iter().map(|(_, cr, _)| cr).collect();
    assert_eq!(got.len(), expected.len(), "{ranges:?}");
    for ((ct, cr, bytes), (a, b)) in got.iter().zip(expected) {
        assert_eq!(ct, "application/octet-stream");
        assert_eq!(cr, &format!("bytes {a}-{b}/{}", data.len()));
        assert!(bytes[..] == data[*a..=*b], "part {a}-{b} differs");
    }
}

#[tokio::test]
async fn several_ranges_are_answered_multipart_byteranges() {
    several_ranges_on().await;
}

/// [`several_ranges_are_answered_multipart_byteranges`] with two replicas on shared
/// backends (S3, PostgreSQL).
#[tokio::test]
async fn several_ranges_are_answered_multipart_byteranges_on_shared_backends() {
    if crate::common::shared_mode() {
        several_ranges_on().await;
    }
}

async fn several_ranges_on() {
    let reg = Reg::new();
    let data = blob(300_000);
    let d = reg.push_blob("p/q", &data).await;
    let uri = format!("/v2/p/q/blobs/{d}");
    let get = |range: &'static str| {
        let uri = uri.clone();
        let reg = &reg;
        async move {
            reg.req(Method::GET, &uri, &[("range", range)], Body::empty())
                .await
        }
    };

    let r = get("bytes=0-9,100-199").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.header("content-range").is_none());
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    let ct = r.header("content-type").unwrap().to_string();
    check_parts(&ct, &r.body, &data, &[(0, 9), (100, 199)]);

    // Order as asked; a suffix range; an open-ended one; big parts on both paths.
    let r = get("bytes=250000-259999,-5, 1000-200999").await;
    check_parts(
        r.header("content-type").unwrap(),
        &r.body,
        &data,
        &[(250_000, 259_999), (299_995, 299_999), (1000, 200_999)],
    );
    // Overlap: coalesced into ascending, disjoint parts — no byte twice.
    let r = get("bytes=0-,0-,0-").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, data, "coalesced to one range: a plain 206");
    assert_eq!(r.header("content-range"), Some("bytes 0-299999/300000"));
    let r = get("bytes=500-600,0-9,10-20,550-700").await;
    check_parts(
        r.header("content-type").unwrap(),
        &r.body,
        &data,
        &[(0, 20), (500, 700)],
    );
    // Unsatisfiable ranges are dropped while one is left; none left is a 416.
    let r = get("bytes=0-1,400000-500000,7-8").await;
    check_parts(
        r.header("content-type").unwrap(),
        &r.body,
        &data,
        &[(0, 1), (7, 8)],
    );
    let r = get("bytes=400000-,500000-600000").await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));
    // Too many ranges is refused, whatever they ask for.
    let many = format!(
        "bytes={}",
        (0..101)
            .map(|i| format!("{}-{}", 10 * i, 10 * i))
            .collect::<Vec<_>>()
            .join(",")
    );
    let r = reg
        .req(Method::GET, &uri, &[("range", many.as_str())], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // A HEAD announces the same multipart length, with no body.
    let g = get("bytes=0-9,100-199").await;
    let h = reg
        .req(
            Method::HEAD,
            &uri,
            &[("range", "bytes=0-9,100-199")],
            Body::empty(),
        )
        .await;
    assert_eq!(h.status, StatusCode::PARTIAL_CONTENT);
    assert!(h.body.is_empty());
    assert_eq!(h.header("content-length"), g.header("content-length"));
    assert!(
        h.header("content-type")
            .unwrap()
            .starts_with("multipart/byteranges; boundary=")
    );
}

/// curl's multi-range request (`-r 0-9,100-199,...`) over a real socket: the parts are the
/// blob's bytes, the length is what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_multi_range_gets_are_byte_exact() {
    let reg = Reg::new();
    let data = blob((2 << 20) + 123);
    let d = reg.push_blob("p/c", &data).await;
    let served = Served::start(reg.state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (body, headers) = (dir.path().join("body"), dir.path().join("headers"));
    let ranges = [
        (0usize, 9usize),
        (100, 199),
        (65_536, 1_200_000),
        (2_000_000, (2 << 20) + 122),
    ];
    let spec = ranges
        .iter()
        .map(|(a, b)| format!("{a}-{b}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new("curl")
        .args(["-sSf", "-r", &spec, "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .arg(format!("http://{}/v2/p/c/blobs/{d}", served.addr))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let head = std::fs::read_to_string(&headers).unwrap();
    let body = std::fs::read(&body).unwrap();
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    };
    assert_eq!(header("content-length"), body.len().to_string());
    check_parts(&header("content-type"), &body, &data, &ranges);
    served.stop().await;
}

/// Ranges the registry has sent as multipart parts, from `/metrics`.
fn range_parts_sent(addr: &str) -> u64 {
    let out = std::process::Command::new("curl")
        .args(["-sSf", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("strata_registry_multipart_range_parts_total "))
        .expect("range parts counter in /metrics")
        .parse()
        .unwrap()
}

/// podman (containers/image and containers/storage) pulls a `zstd:chunked` image partially
/// when partial images are enabled: it asks for the chunks with multi-range GETs, and
/// the image it assembles from the parts is the one pushed.
#[test]
fn podman_partial_pull_of_a_zstd_chunked_image() {
    use rand::{RngCore, SeedableRng};
    let Some(podman) = strata_fixtures::peers::Podman::new() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let reg = crate::common::Proc::start(&tmp.path().join("store"), &[]);
    let addr = reg.addr();
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("data")).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for i in 0..24 {
        let mut v = vec![0u8; 50_000 + i * 1000];
        rng.fill_bytes(&mut v);
        std::fs::write(rootfs.join(format!("data/f{i}")), v).unwrap();
    }
    let tar = tmp.path().join("rootfs.tar");
    let out = std::process::Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    // containers/storage only pulls partially with `enable_partial_images`.
    let storage_conf = tmp.path().join("storage.conf");
    std::fs::write(
        &storage_conf,
        format!(
            "[storage]\ndriver = \"overlay\"\nrunroot = \"{run}\"\ngraphroot = \"{root}\"\n\
             [storage.options]\npull_options = {{enable_partial_images = \"true\", use_hard_links = \"false\"}}\n",
            run = podman.dir().join("run").display(),
            root = podman.dir().join("root").display(),
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut c = podman.command(args);
        c.env("CONTAINERS_STORAGE_CONF", &storage_conf);
        let out = strata_fixtures::peers::output(&mut c);
        strata_fixtures::peers::assert_ok(&out, &format!("podman {args:?}"))
    };
    let remote = format!("{addr}/pp:1");
    run(&["import", tar.to_str().unwrap(), "localhost/pp:1"]);
    run(&[
        "push",
        "--tls-verify=false",
        "--compression-format",
        "zstd:chunked",
        "localhost/pp:1",
        &remote,
    ]);
    run(&["rmi", "localhost/pp:1"]);
    let before = range_parts_sent(&addr);
    run(&["pull", "--tls-verify=false", &remote]);
    let parts = range_parts_sent(&addr) - before;
    eprintln!("podman's partial pull: {parts} ranges in multipart answers");
    assert!(parts >= 2, "podman sent no multi-range GET ({parts} parts)");
    let mount = run(&["image", "mount", &remote]);
    let out = std::process::Command::new("diff")
        .arg("-r")
        .arg(&rootfs)
        .arg(mount.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the partially pulled image differs: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    run(&["image", "umount", &remote]);
}
