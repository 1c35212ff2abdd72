//! A load onto a full disk fails with a clear error and loses nothing: the store lists
//! what it listed before, fsck is clean, the space is given back, and the next load
//! that fits succeeds.

use strata_fixtures as fx;

use crate::common::{ok, puller, store_ok};

#[test]
fn load_onto_a_full_disk_fails_cleanly_and_loses_nothing() {
    let Some(fs) = fx::SmallFs::mount(40 << 20) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = fs.path().join("store");

    let small = |seed: u64, name: &str| {
        let path = dir.path().join(format!("small{seed}.tar"));
        fx::write_docker_save(&path, &[(&fx::small_image(seed, 2, true), &[name][..])]);
        path
    };
    ok(
        puller(&root, &["load", small(1, "strata/first:1").to_str().unwrap()]),
        "puller load",
    );
    let listed = store_ok(&root, &["ls", "--json"]);
    let free_before = fs.free();

    // 48 MiB of incompressible layer into 40 MiB of disk.
    let layer = dir.path().join("big-layer.tar");
    fx::random_layer_file(&layer, 7, 48 << 20, 20);
    let image = fx::ImageBuilder::new(fx::Flavor::Docker)
        .layer(std::fs::read(&layer).unwrap(), "big")
        .build();
    let archive = dir.path().join("big.tar");
    fx::write_docker_save(&archive, &[(&image, &["strata/big:1"][..])]);
    let out = puller(&root, &["load", archive.to_str().unwrap()]);
    assert!(!out.status.success(), "the load cannot fit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("No space left on device"),
        "unclear error: {stderr}"
    );

    assert_eq!(store_ok(&root, &["ls", "--json"]), listed);
    store_ok(&root, &["fsck"]);
    let given_back = fs.free() as i64 - free_before as i64;
    assert!(
        given_back.abs() < (2 << 20),
        "the failed load kept {} bytes",
        -given_back
    );
    ok(
        puller(&root, &["load", small(2, "strata/second:1").to_str().unwrap()]),
        "puller load",
    );
    let after = store_ok(&root, &["ls"]);
    assert!(
        after.contains("strata/first") && after.contains("strata/second"),
        "{after}"
    );
    store_ok(&root, &["fsck"]);
}
