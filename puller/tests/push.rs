//! `puller push` to a real registry (CNCF Distribution): what skopeo and docker then pull
//! is the stored image, byte for byte; a second push sends no blobs; credentials are
//! used for an htpasswd registry and a wrong password is refused; an index goes with
//! its images.

use std::path::Path;
use std::process::{Command, Output};

use strata_fixtures::peers::{self, Distribution};
use strata_fixtures::{BUSYBOX_HELLO, Flavor, LayerCompression, busybox, multi_platform};

fn puller(root: &Path, args: &[&str], creds: Option<(&str, &str)>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_puller"));
    cmd.arg("--root").arg(root).args(args);
    if let Some((u, p)) = creds {
        cmd.env("STRATA_REGISTRY_USER", u)
            .env("STRATA_REGISTRY_PASSWORD", p);
    }
    cmd.output().unwrap()
}

fn ok(out: Output, what: &str) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{what}: {stdout}{stderr}");
    (stdout, stderr)
}

#[test]
fn push_with_credentials_then_again_and_with_a_wrong_password() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(dist) = Distribution::start_with_htpasswd("pusher", "s3cret") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let img = busybox(Flavor::Oci, LayerCompression::Gzip);
    let name = format!("{}/t/pushed:1", dist.addr());
    let archive = tmp.path().join("img.tar");
    strata_fixtures::write_docker_save(&archive, &[(&img, &[name.as_str()])]);
    ok(puller(&root, &["load", archive.to_str().unwrap()], None), "load");

    let (out, err) = ok(
        puller(&root, &["push", &name], Some(("pusher", "s3cret"))),
        "push",
    );
    assert!(
        err.contains(&format!("{} blobs pushed", 1 + img.layers.len())),
        "{err}"
    );
    let digest = out.trim().rsplit("digest: ").next().unwrap().to_string();
    let inspect = peers::skopeo_ok([
        "inspect".to_string(),
        "--tls-verify=false".to_string(),
        "--creds=pusher:s3cret".to_string(),
        format!("docker://{name}"),
    ]);
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
    let config = peers::skopeo_ok([
        "inspect".to_string(),
        "--config".to_string(),
        "--raw".to_string(),
        "--tls-verify=false".to_string(),
        "--creds=pusher:s3cret".to_string(),
        format!("docker://{name}"),
    ]);
    assert_eq!(
        config.as_bytes(),
        img.config.bytes.as_slice(),
        "the config is the image's, byte for byte"
    );

    let (_, err) = ok(
        puller(&root, &["push", &name], Some(("pusher", "s3cret"))),
        "push again",
    );
    assert!(err.contains("0 blobs pushed"), "{err}");

    let out = puller(&root, &["push", &name], Some(("pusher", "wrong")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unauthorized"), "{err}");
    let out = puller(&root, &["push", &format!("{}/t/missing:1", dist.addr())], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not in the store"), "{err}");
}

#[test]
fn pushed_images_run_in_docker_and_an_index_goes_with_its_images() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(dist) = Distribution::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");

    // An index and its images, from an OCI layout.
    let (index, images) = multi_platform(Flavor::Oci);
    let layout = tmp.path().join("multi");
    let multi = format!("{}/t/multi:m", dist.addr());
    strata_fixtures::write_oci_layout_index(&layout, &index, &images, Some(multi.as_str()));
    ok(
        puller(&root, &["load", layout.to_str().unwrap()], None),
        "load index",
    );
    ok(puller(&root, &["push", &multi], None), "push index");
    let raw = peers::skopeo_ok([
        "inspect".to_string(),
        "--raw".to_string(),
        "--tls-verify=false".to_string(),
        format!("docker://{multi}"),
    ]);
    assert_eq!(raw.as_bytes(), index.bytes.as_slice());
    let copied = tmp.path().join("copied");
    peers::skopeo_ok([
        "copy".to_string(),
        "--all".to_string(),
        "--src-tls-verify=false".to_string(),
        format!("docker://{multi}"),
        format!("oci:{}:m", copied.display()),
    ]);
    for img in &images {
        assert!(copied.join("blobs/sha256").join(img.config.hex()).is_file());
    }

    // A Docker image, pulled and run by a real engine.
    let Some(d) = peers::Dockerd::shared() else { return };
    let img = busybox(Flavor::Docker, LayerCompression::Gzip);
    let name = format!("{}/t/runme:1", dist.addr());
    let archive = tmp.path().join("bb.tar");
    strata_fixtures::write_docker_save(&archive, &[(&img, &[name.as_str()])]);
    ok(puller(&root, &["load", archive.to_str().unwrap()], None), "load");
    ok(puller(&root, &["push", &name], None), "push");
    d.docker_ok(["pull", &name]);
    let out = d.docker_ok(["run", "--rm", "--network", "none", &name]);
    assert!(out.contains(BUSYBOX_HELLO), "{out}");
    d.docker_ok(["rmi", &name]);
}

#[test]
fn push_uses_what_docker_login_saved() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let Some(d) = peers::Dockerd::shared() else { return };
    let Some(dist) = Distribution::start_with_htpasswd("docker-user", "d0cker") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let img = busybox(Flavor::Oci, LayerCompression::Gzip);
    let name = format!("{}/t/login:1", dist.addr());
    let archive = tmp.path().join("img.tar");
    strata_fixtures::write_docker_save(&archive, &[(&img, &[name.as_str()])]);
    ok(puller(&root, &["load", archive.to_str().unwrap()], None), "load");
    d.docker_ok(["login", "-u", "docker-user", "-p", "d0cker", &dist.addr()]);
    let out = Command::new(env!("CARGO_BIN_EXE_puller"))
        .arg("--root")
        .arg(&root)
        .args(["push", &name])
        .env("DOCKER_CONFIG", d.client_config())
        .env_remove("STRATA_REGISTRY_USER")
        .env_remove("STRATA_REGISTRY_PASSWORD")
        .output()
        .unwrap();
    ok(out, "push with docker's saved login");
    d.docker_ok(["logout", &dist.addr()]);
    peers::skopeo_ok([
        "inspect".to_string(),
        "--tls-verify=false".to_string(),
        "--creds=docker-user:d0cker".to_string(),
        format!("docker://{name}"),
    ]);
}
