//! `puller load` / `puller save` against the real peers: the Docker engine (`docker save`,
//! `docker load`, `docker run`), skopeo (`docker-archive:`, `oci-archive:`) and umoci.

use std::path::Path;
use std::process::Command;

use strata_fixtures as fx;
use strata_fixtures::peers;

use crate::common::{ok, puller, store};

fn ls(root: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(store(root, &["ls", "--json"]), "store ls")).unwrap()
}

/// A fixture image loaded into the shared Docker engine under `tag`.
fn docker_with_fixture(tag: &str) -> Option<&'static peers::Dockerd> {
    let d = peers::Dockerd::shared()?;
    let dir = tempfile::tempdir().unwrap();
    let img = fx::busybox(fx::Flavor::Docker, fx::LayerCompression::None);
    let archive = dir.path().join("fixture.tar");
    fx::write_docker_save(&archive, &[(&img, &[tag][..])]);
    ok(
        d.docker(["load", "-i", archive.to_str().unwrap()]),
        "docker load fixture",
    );
    Some(d)
}

#[test]
fn docker_save_loads_and_lists_with_dockers_image_id() {
    let Some(d) = docker_with_fixture("strata/dsave:1") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let archive = dir.path().join("docker-saved.tar");
    ok(
        d.docker(["save", "-o", archive.to_str().unwrap(), "strata/dsave:1"]),
        "docker save",
    );
    let docker_id = ok(
        d.docker(["image", "inspect", "-f", "{{.Id}}", "strata/dsave:1"]),
        "docker inspect",
    );
    ok(puller(&root, &["load", archive.to_str().unwrap()]), "puller load");
    let rows = ls(&root);
    let row = rows
        .iter()
        .find(|r| r["repository"] == "strata/dsave" && r["tag"] == "1")
        .expect("listed");
    assert_eq!(row["id"].as_str().unwrap(), docker_id.trim());
    ok(store(&root, &["fsck"]), "store fsck");
}

#[test]
fn puller_save_is_accepted_by_docker_load_and_runs() {
    let Some(d) = docker_with_fixture("strata/psave:1") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let from_docker = dir.path().join("from-docker.tar");
    ok(
        d.docker(["save", "-o", from_docker.to_str().unwrap(), "strata/psave:1"]),
        "docker save",
    );
    ok(
        puller(&root, &["load", from_docker.to_str().unwrap()]),
        "puller load",
    );
    ok(
        store(&root, &["tag", "strata/psave:1", "strata/roundtrip:2"]),
        "store tag",
    );
    let saved = dir.path().join("saved.tar");
    ok(
        puller(
            &root,
            &["save", "strata/roundtrip:2", "--output", saved.to_str().unwrap()],
        ),
        "puller save",
    );
    let _ = d.docker(["rmi", "-f", "strata/roundtrip:2"]);
    let out = ok(
        d.docker(["load", "-i", saved.to_str().unwrap()]),
        "docker load of puller save",
    );
    assert!(out.contains("strata/roundtrip:2"), "{out}");
    let run = ok(
        d.docker(["run", "--rm", "--network", "none", "strata/roundtrip:2"]),
        "docker run",
    );
    assert_eq!(run.trim(), fx::BUSYBOX_HELLO);
    // The whiteouts in the fixture's upper layers took effect in docker's rootfs too.
    let script = "test -e /etc/deleteme || test -e /data/dir || echo whiteouts-ok";
    let run = ok(
        d.docker([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
            "strata/roundtrip:2",
            "-c",
            script,
        ]),
        "docker run sh",
    );
    assert_eq!(run.trim(), "whiteouts-ok");
}

#[test]
fn skopeo_reads_saved_archive_as_docker_archive_and_oci_archive() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let img = fx::busybox(fx::Flavor::Oci, fx::LayerCompression::Gzip);
    let layout = dir.path().join("layout");
    fx::write_oci_layout(&layout, &[(&img, Some("docker.io/strata/sk:3"))]);
    ok(puller(&root, &["load", layout.to_str().unwrap()]), "puller load");
    let saved = dir.path().join("saved.tar");
    ok(
        puller(
            &root,
            &["save", "strata/sk:3", "--output", saved.to_str().unwrap()],
        ),
        "puller save",
    );
    let d1 = dir.path().join("d1");
    ok(
        peers::skopeo([
            "copy",
            &format!("docker-archive:{}", saved.display()),
            &format!("dir:{}", d1.display()),
        ]),
        "skopeo docker-archive",
    );
    let d2 = dir.path().join("d2");
    ok(
        peers::skopeo([
            "copy",
            &format!("oci-archive:{}:3", saved.display()),
            &format!("dir:{}", d2.display()),
        ]),
        "skopeo oci-archive",
    );
    // skopeo copied the same config both ways.
    let cfg = img.config.digest.trim_start_matches("sha256:");
    assert!(d1.join(cfg).is_file() && d2.join(cfg).is_file());
}

#[test]
fn umoci_unpacks_the_saved_layout_with_whiteouts_applied() {
    if peers::require("umoci").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let img = fx::busybox(fx::Flavor::Docker, fx::LayerCompression::None);
    let archive = dir.path().join("in.tar");
    fx::write_docker_save(&archive, &[(&img, &["strata/um:1"][..])]);
    ok(puller(&root, &["load", archive.to_str().unwrap()]), "puller load");
    let saved = dir.path().join("saved.tar");
    ok(
        puller(
            &root,
            &["save", "strata/um:1", "--output", saved.to_str().unwrap()],
        ),
        "puller save",
    );
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&saved)
            .arg("-C")
            .arg(&layout)
            .output()
            .unwrap(),
        "tar -x",
    );
    let bundle = dir.path().join("bundle");
    ok(
        peers::umoci([
            "unpack",
            "--image",
            &format!("{}:1", layout.display()),
            bundle.to_str().unwrap(),
        ]),
        "umoci unpack",
    );
    let rootfs = bundle.join("rootfs");
    assert!(rootfs.join("bin/busybox").is_file());
    assert!(!rootfs.join("etc/deleteme").exists(), "whiteout not applied");
    assert!(
        !rootfs.join("data/dir").exists(),
        "directory whiteout not applied"
    );
}
