//! Real clients against the `registry-server` binary on loopback: skopeo, docker, podman
//! and containerd's ctr push and pull unchanged. Each test fails under `CI=true` when its
//! peer is missing, and is skipped (with a SKIP line) otherwise.

use crate::common::Proc;
use strata_fixtures::peers::{self, skopeo_ok};
use strata_fixtures::{BUSYBOX_HELLO, Flavor, LayerCompression, busybox, multi_platform, small_image};

fn store_fsck(root: &std::path::Path) {
    let out = peers::output(
        std::process::Command::new(peers::bin("store"))
            .arg("--root")
            .arg(root)
            .arg("fsck"),
    );
    assert!(out.status.success(), "store fsck: {}", peers::format_output(&out));
}

#[test]
fn skopeo_copy_both_ways_list_tags_delete_and_copy_all() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let reg = Proc::start(&root, &[]);
    let img = busybox(Flavor::Oci, LayerCompression::Gzip);
    let layout = tmp.path().join("layout");
    strata_fixtures::write_oci_layout(&layout, &[(&img, Some("1"))]);
    let dest = format!("docker://{}/t/busybox:1", reg.addr());
    // Plain HTTP: skopeo tries TLS first and must fall back.
    skopeo_ok([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", layout.display()),
        &dest,
    ]);
    skopeo_ok([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", layout.display()),
        &format!("docker://{}/t/busybox:2", reg.addr()),
    ]);
    let tags = skopeo_ok([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/t/busybox", reg.addr()),
    ]);
    let tags: serde_json::Value = serde_json::from_str(&tags).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["1", "2"]));
    let raw = skopeo_ok(["inspect", "--raw", "--tls-verify=false", &dest]);
    assert_eq!(
        raw.as_bytes(),
        img.manifest.bytes.as_slice(),
        "byte-exact manifest"
    );
    // And back.
    let back = tmp.path().join("back");
    skopeo_ok([
        "copy",
        "--src-tls-verify=false",
        &dest,
        &format!("oci:{}:x", back.display()),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], img.manifest.digest);
    // Delete by tag reference (skopeo resolves it to the digest).
    skopeo_ok([
        "delete",
        "--tls-verify=false",
        &format!("docker://{}/t/busybox:2", reg.addr()),
    ]);
    let out = peers::skopeo(["inspect", "--raw", "--tls-verify=false", &dest]);
    assert!(!out.status.success(), "deleted manifest still served");

    // An index with --all.
    let (index, images) = multi_platform(Flavor::Oci);
    let multi = tmp.path().join("multi");
    strata_fixtures::write_oci_layout_index(&multi, &index, &images, Some("m"));
    let mdest = format!("docker://{}/t/multi:m", reg.addr());
    skopeo_ok([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:m", multi.display()),
        &mdest,
    ]);
    let raw = skopeo_ok(["inspect", "--raw", "--tls-verify=false", &mdest]);
    assert_eq!(raw.as_bytes(), index.bytes.as_slice());
    let back = tmp.path().join("multi-back");
    skopeo_ok([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &mdest,
        &format!("oci:{}:m", back.display()),
    ]);
    for i in &images {
        assert!(back.join("blobs/sha256").join(i.manifest.hex()).is_file());
    }
    assert!(reg.stop().success());
    store_fsck(&root);
}

#[test]
fn docker_push_pull_run_round_trip() {
    let Some(d) = peers::Dockerd::shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let reg = Proc::start(&root, &[]);
    let img = busybox(Flavor::Docker, LayerCompression::Gzip);
    let name = format!("{}/t/busybox:1", reg.addr());
    let archive = tmp.path().join("bb.tar");
    strata_fixtures::write_docker_save(&archive, &[(&img, &[name.as_str()])]);
    d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
    let out = d.docker_ok(["push", &name]);
    assert!(out.contains("digest: sha256:"), "{out}");
    d.docker_ok(["rmi", &name]);
    d.docker_ok(["pull", &name]);
    let out = d.docker_ok(["run", "--rm", "--network", "none", &name]);
    assert!(out.contains(BUSYBOX_HELLO), "{out}");
    d.docker_ok(["rmi", &name]);
    assert!(reg.stop().success());
    // The pushed tag is in the store under the registry's name.
    let out = peers::run_ok(
        std::process::Command::new(peers::bin("store"))
            .arg("--root")
            .arg(&root)
            .args(["ls", "--json"]),
    );
    assert!(out.contains("t/busybox"), "{out}");
    store_fsck(&root);
}

#[test]
fn podman_push_pull() {
    let Some(p) = peers::Podman::new() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let reg = Proc::start(&root, &[]);
    let img = small_image(11, 2, true);
    let archive = tmp.path().join("img.tar");
    let name = format!("{}/p/small:1", reg.addr());
    strata_fixtures::write_docker_save(&archive, &[(&img, &[name.as_str()])]);
    p.podman_ok(["load", "-i", archive.to_str().unwrap()]);
    p.podman_ok(["push", "--tls-verify=false", &name]);
    p.podman_ok(["rmi", "-f", &name]);
    p.podman_ok(["pull", "--tls-verify=false", &name]);
    let out = p.podman_ok(["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(out.contains("p/small:1"), "{out}");
    assert!(reg.stop().success());
    store_fsck(&root);
}

#[test]
fn containerd_ctr_pull_and_push() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(c) = peers::Containerd::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let reg = Proc::start(&root, &[]);
    let img = small_image(12, 2, true);
    let layout = tmp.path().join("layout");
    strata_fixtures::write_oci_layout(&layout, &[(&img, Some("1"))]);
    let name = format!("{}/c/small:1", reg.addr());
    skopeo_ok([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", layout.display()),
        &format!("docker://{name}"),
    ]);
    c.ctr_ok(["images", "pull", "--plain-http", &name]);
    let pushed = format!("{}/c/pushed:2", reg.addr());
    c.ctr_ok(["images", "tag", &name, &pushed]);
    c.ctr_ok(["images", "push", "--plain-http", &pushed]);
    let raw = skopeo_ok([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{pushed}"),
    ]);
    assert_eq!(raw.as_bytes(), img.manifest.bytes.as_slice());
    assert!(reg.stop().success());
    store_fsck(&root);
}

#[test]
fn docker_pulls_through_the_cache_and_from_cache_when_the_upstream_is_gone() {
    let Some(d) = peers::Dockerd::shared() else { return };
    let Some(dist) = peers::Distribution::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let img = busybox(Flavor::Docker, LayerCompression::Gzip);
    let upstream_name = format!("{}/t/cached:1", dist.addr());
    let archive = tmp.path().join("bb.tar");
    strata_fixtures::write_docker_save(&archive, &[(&img, &[upstream_name.as_str()])]);
    d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
    d.docker_ok(["push", &upstream_name]);
    d.docker_ok(["rmi", &upstream_name]);

    let proxy = Proc::start(&root, &["--proxy-remote-url", &dist.url()]);
    let name = format!("{}/t/cached:1", proxy.addr());
    d.docker_ok(["pull", &name]);
    let out = d.docker_ok(["run", "--rm", "--network", "none", &name]);
    assert!(out.contains(BUSYBOX_HELLO), "{out}");
    d.docker_ok(["rmi", &name]);

    // The upstream is gone: the cache serves the pull.
    drop(dist);
    d.docker_ok(["pull", &name]);
    let out = d.docker_ok(["run", "--rm", "--network", "none", &name]);
    assert!(out.contains(BUSYBOX_HELLO), "{out}");
    // Pushes to a cache are refused.
    d.docker_ok(["tag", &name, &format!("{}/t/pushed:1", proxy.addr())]);
    d.docker_ok(["rmi", &name]);
    let out = d.docker(["push", &format!("{}/t/pushed:1", proxy.addr())]);
    assert!(!out.status.success(), "a push to a pull-through cache must fail");
    d.docker_ok(["rmi", &format!("{}/t/pushed:1", proxy.addr())]);
    assert!(proxy.stop().success());
    store_fsck(&root);
}

/// `registry-server`'s counter of upload bytes read beside hyper (`direct`).
fn direct_bytes(reg: &Proc) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(reg.addr()).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("strata_registry_direct_received_bytes_total "))
        .unwrap()
        .parse()
        .unwrap()
}

/// An image whose second layer is a few MiB (uncompressed random bytes): big enough for
/// the direct upload path.
fn large_layer_image(seed: u64) -> strata_fixtures::Image {
    use rand::{RngCore, SeedableRng};
    let mut data = vec![0u8; 3 << 20];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    let mut l = strata_fixtures::LayerBuilder::new();
    l.file("big.bin", 0o644, data);
    strata_fixtures::ImageBuilder::new(Flavor::Oci)
        .layer_with(
            small_image(seed, 1, true).uncompressed_layer(0),
            LayerCompression::Gzip,
            "base",
        )
        .layer_with(l.build(), LayerCompression::None, "ADD big.bin")
        .build()
}

/// Every real client's upload of a big layer is read beside hyper (`direct`): docker,
/// podman and skopeo send chunked `PATCH`es, containerd a `PUT` with a length. Each
/// client pushes its own image (no blob is already there to mount).
#[test]
fn real_clients_push_large_layers_through_the_direct_path() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let reg = Proc::start(&root, &[]);
    let big = 3_000_000;
    let pushed = |what: &str, before: u64| {
        let n = direct_bytes(&reg) - before;
        eprintln!("{what}: {n} upload bytes read direct");
        assert!(n >= big, "{what}: only {n} upload bytes went direct");
    };
    let img = large_layer_image(21);
    let layout = tmp.path().join("layout");
    strata_fixtures::write_oci_layout(&layout, &[(&img, Some("1"))]);
    let before = direct_bytes(&reg);
    skopeo_ok([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", layout.display()),
        &format!("docker://{}/big/skopeo:1", reg.addr()),
    ]);
    pushed("skopeo", before);
    if let Some(c) = peers::Containerd::start() {
        // Pulled from a second registry, so containerd has nothing to mount from.
        let other = Proc::start(&tmp.path().join("other"), &[]);
        let img = large_layer_image(22);
        let layout = tmp.path().join("layout-c");
        strata_fixtures::write_oci_layout(&layout, &[(&img, Some("1"))]);
        let source = format!("{}/big/src:1", other.addr());
        skopeo_ok([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:1", layout.display()),
            &format!("docker://{source}"),
        ]);
        c.ctr_ok(["images", "pull", "--plain-http", &source]);
        let name = format!("{}/big/ctr:1", reg.addr());
        c.ctr_ok(["images", "tag", &source, &name]);
        let before = direct_bytes(&reg);
        c.ctr_ok(["images", "push", "--plain-http", &name]);
        pushed("ctr", before);
        assert!(other.stop().success());
    }
    if let Some(p) = peers::Podman::new() {
        let archive = tmp.path().join("img-p.tar");
        let name = format!("{}/big/podman:1", reg.addr());
        strata_fixtures::write_docker_save(&archive, &[(&large_layer_image(23), &[name.as_str()])]);
        p.podman_ok(["load", "-i", archive.to_str().unwrap()]);
        let before = direct_bytes(&reg);
        p.podman_ok(["push", "--tls-verify=false", &name]);
        pushed("podman", before);
        p.podman_ok(["rmi", "-f", &name]);
    }
    if let Some(d) = peers::Dockerd::shared() {
        let archive = tmp.path().join("img-d.tar");
        let name = format!("{}/big/docker:1", reg.addr());
        strata_fixtures::write_docker_save(&archive, &[(&large_layer_image(24), &[name.as_str()])]);
        d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
        let before = direct_bytes(&reg);
        d.docker_ok(["push", &name]);
        pushed("docker", before);
        d.docker_ok(["rmi", &name]);
        // And back.
        d.docker_ok(["pull", &name]);
        d.docker_ok(["rmi", &name]);
    }
    assert!(reg.stop().success());
    store_fsck(&root);
}
