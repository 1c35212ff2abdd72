//! `store gc --grace 0s` run from other processes while `puller load` runs: the load's
//! image survives whole (GC and load take turns on the store's write lock, waiting in the
//! kernel), GC removes only what no image uses, and fsck is clean.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use strata_fixtures as fx;

use crate::common::store_ok;

fn blob_exists(root: &Path, digest: &str) -> bool {
    root.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .is_file()
}

#[test]
fn gc_from_other_processes_during_a_load_keeps_the_loading_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let base = dir.path().join("base.tar");
    fx::random_layer_file(&base, 9, 8 << 20, 50);
    let base = std::fs::read(&base).unwrap();
    let layer_file = |seed: u64, size: u64| {
        let path = dir.path().join(format!("layer{seed}.tar"));
        fx::random_layer_file(&path, seed, size, 100);
        std::fs::read(&path).unwrap()
    };
    // Y: loaded, then removed, so its blobs are garbage — except the base it shares with X.
    let y = fx::ImageBuilder::new(fx::Flavor::Docker)
        .layer(base.clone(), "base")
        .layer(layer_file(2, 1 << 20), "y")
        .build();
    // X: big enough that its load overlaps many GC runs.
    let x = fx::ImageBuilder::new(fx::Flavor::Docker)
        .layer(base, "base")
        .layer(layer_file(3, 48 << 20), "x1")
        .layer(layer_file(4, 48 << 20), "x2")
        .build();
    let (archive_x, archive_y) = (dir.path().join("x.tar"), dir.path().join("y.tar"));
    fx::write_docker_save(&archive_x, &[(&x, &["strata/x:1"][..])]);
    fx::write_docker_save(&archive_y, &[(&y, &["strata/y:1"][..])]);

    let puller = env!("CARGO_BIN_EXE_puller");
    let loaded = Command::new(puller)
        .arg("--root")
        .arg(&root)
        .arg("load")
        .arg(&archive_y)
        .status()
        .unwrap();
    assert!(loaded.success());
    store_ok(&root, &["rm", "strata/y:1"]);
    let y_written = std::time::Instant::now();

    let mut load = Command::new(puller)
        .arg("--root")
        .arg(&root)
        .arg("load")
        .arg(&archive_x)
        .spawn()
        .unwrap();
    let mut gc_runs = 0;
    let status = loop {
        store_ok(&root, &["gc", "--grace", "0s"]);
        gc_runs += 1;
        if let Some(status) = load.try_wait().unwrap() {
            break status;
        }
    };
    assert!(status.success(), "load failed while GC ran");
    // One writer process at a time: the first GC waited for the load's lock, so the runs
    // fall before and after it, never inside a half-recorded load.
    assert!(gc_runs >= 1);
    // GC keeps a second of slack on file times: Y's blobs are garbage once older than it
    // (a fast load can end sooner).
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(y_written.elapsed()));
    store_ok(&root, &["gc", "--grace", "0s"]);

    let ls = store_ok(&root, &["ls", "--json"]);
    assert!(ls.contains("strata/x"), "{ls}");
    assert!(!ls.contains("strata/y"), "{ls}");
    let inspect = store_ok(&root, &["inspect", "strata/x:1"]);
    assert!(inspect.contains(&x.id()));
    // docker-save carries layers uncompressed: the stored layer blobs are the diff IDs.
    for digest in std::iter::once(&x.config.digest).chain(&x.diff_ids) {
        assert!(
            blob_exists(&root, digest),
            "GC removed {digest} of the loaded image"
        );
    }
    assert!(!blob_exists(&root, &y.diff_ids[1]), "Y's own layer is garbage");
    assert!(!blob_exists(&root, &y.config.digest), "Y's config is garbage");
    store_ok(&root, &["fsck"]);
}
