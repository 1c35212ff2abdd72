//! `puller fetch` against a real registry (CNCF Distribution, images pushed into it with
//! skopeo): the image lands in the store with the image ID the registry's config has,
//! layers unpacked; a platform is picked from an index; two fetches at once download each
//! blob once between them; `--output` writes an archive that `docker load` takes and
//! `docker run` runs.

use std::path::Path;
use std::process::Command;

use strata_fixtures::peers::{self, Distribution};
use strata_fixtures::{BUSYBOX_HELLO, Flavor, Image, LayerCompression, busybox, multi_platform};

use crate::common::{ok, puller, store_ok};

fn push(dist: &Distribution, img: &Image, repo: &str, tag: &str, dir: &Path) {
    let layout = dir.join(format!("push-{}-{tag}", repo.replace('/', "-")));
    strata_fixtures::write_oci_layout(&layout, &[(img, Some(tag))]);
    peers::skopeo_ok([
        "copy".to_string(),
        "--dest-tls-verify=false".to_string(),
        format!("oci:{}:{tag}", layout.display()),
        format!("docker://{}/{repo}:{tag}", dist.addr()),
    ]);
}

#[test]
fn fetch_stores_the_image_unpacked_and_saves_it_for_docker() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(dist) = Distribution::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let img = busybox(Flavor::Oci, LayerCompression::Gzip);
    push(&dist, &img, "t/busybox", "1", tmp.path());

    let reference = format!("{}/t/busybox:1", dist.addr());
    let out = ok(puller(&root, &["fetch", &reference]), "fetch");
    assert!(out.contains(&img.id()), "{out}");
    let ls = store_ok(&root, &["ls", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tag"] == "1")
        .unwrap_or_else(|| panic!("{ls}"));
    assert_eq!(row["id"], img.id());
    assert_eq!(row["digest"], img.digest());
    // Every layer is unpacked (a second fetch has nothing to do).
    let again = puller(&root, &["fetch", &reference]);
    let err = String::from_utf8_lossy(&again.stderr).into_owned();
    ok(again, "fetch again");
    assert!(err.contains("0 blobs fetched"), "{err}");
    store_ok(&root, &["fsck"]);

    // Straight to an archive, then into a real Docker engine.
    let Some(d) = peers::Dockerd::shared() else { return };
    let archive = tmp.path().join("bb.tar");
    let root2 = tmp.path().join("store2");
    ok(
        puller(
            &root2,
            &["fetch", &reference, "--output", archive.to_str().unwrap()],
        ),
        "fetch --output",
    );
    d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
    let out = d.docker_ok(["run", "--rm", "--network", "none", &reference]);
    assert!(out.contains(BUSYBOX_HELLO), "{out}");
    d.docker_ok(["rmi", &reference]);
}

#[test]
fn fetch_picks_the_platform_from_an_index_and_refuses_a_missing_one() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(dist) = Distribution::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (index, images) = multi_platform(Flavor::Oci);
    let layout = tmp.path().join("multi");
    strata_fixtures::write_oci_layout_index(&layout, &index, &images, Some("m"));
    peers::skopeo_ok([
        "copy".to_string(),
        "--all".to_string(),
        "--dest-tls-verify=false".to_string(),
        format!("oci:{}:m", layout.display()),
        format!("docker://{}/t/multi:m", dist.addr()),
    ]);
    let reference = format!("{}/t/multi:m", dist.addr());
    for img in &images {
        let (os, arch) = &img.platform;
        let mut platform = format!("{os}/{arch}");
        if let Some(v) = &img.variant {
            platform.push('/');
            platform.push_str(v);
        }
        let root = tmp.path().join(format!("store-{}", platform.replace('/', "-")));
        let out = ok(
            puller(&root, &["fetch", &reference, "--platform", &platform]),
            &format!("fetch --platform {platform}"),
        );
        assert!(out.contains(&img.id()), "{platform}: {out}");
        assert!(store_ok(&root, &["inspect", &img.id()]).contains(&img.digest()));
    }
    let out = puller(&root, &["fetch", &reference, "--platform", "plan9/mips"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no image for plan9/mips"), "{err}");
}

#[test]
fn two_fetches_at_once_download_each_blob_once_between_them() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(dist) = Distribution::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let img = busybox(Flavor::Oci, LayerCompression::Zstd);
    push(&dist, &img, "t/twice", "1", tmp.path());
    let reference = format!("{}/t/twice:1", dist.addr());
    // Both download side by side (only their metadata step takes the store's write
    // lock); a blob both want is written by exactly one of them.
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_puller"))
                .arg("--root")
                .arg(&root)
                .args(["fetch", &reference, "--jobs", "2"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut written = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let n: usize = err
            .split(" blobs fetched")
            .next()
            .and_then(|s| s.rsplit(char::is_whitespace).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {err}"));
        written += n;
    }
    assert_eq!(written, 1 + img.layers.len(), "each blob downloaded by one fetch");
    let blobs = std::fs::read_dir(root.join("blobs/sha256")).unwrap().count();
    // config + layers + the manifest
    assert_eq!(blobs, 2 + img.layers.len());
    store_ok(&root, &["fsck"]);
}
