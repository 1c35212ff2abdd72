//! `kill -9` at random points during `puller load`, 20 times: afterwards `store fsck` is
//! clean every time and a re-run completes with the image intact.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use strata_fixtures as fx;

use crate::common::{puller, store};

fn fsck_clean(root: &Path, round: usize) {
    let out = store(root, &["fsck"]);
    assert!(
        out.status.success(),
        "round {round}: fsck after kill -9 found faults:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kill_9_during_load_never_corrupts_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    // Three big random layers (plus many small files), so a load takes a while.
    let mut builder = fx::ImageBuilder::new(fx::Flavor::Docker);
    for seed in 0..3u64 {
        let path = dir.path().join(format!("layer{seed}.tar"));
        fx::random_layer_file(&path, seed, 32 << 20, 200);
        builder = builder.layer(std::fs::read(&path).unwrap(), "random");
    }
    let image = builder.build();
    let archive = dir.path().join("big.tar");
    fx::write_docker_save(&archive, &[(&image, &["strata/big:1"][..])]);

    // How long an uninterrupted load takes here, to aim the kills inside it.
    let calibrate = dir.path().join("calibrate");
    let t = Instant::now();
    let out = puller(&calibrate, &["load", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut full = t.elapsed();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let mut killed = 0;
    for round in 0..20 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_puller"))
            .arg("--root")
            .arg(&root)
            .arg("load")
            .arg(&archive)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = full.mul_f64(rng.random_range(0.02..1.1));
        std::thread::sleep(at.min(Duration::from_secs(30)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        } else {
            // Finished first: loads here are quicker than the calibration (a fresh store,
            // no partial ingests to resume), so aim earlier from now on.
            full = full.mul_f64(0.7);
        }
        child.wait().unwrap();
        fsck_clean(&root, round);
        // Start each round from an empty store again, so every load does the full work
        // (and GC after a crash is exercised too).
        let _ = store(&root, &["rm", "strata/big:1"]);
        // GC keeps a second of slack on file times: wait it out, or a quick round leaves
        // blobs behind and the next load has less to do (and is seldom interrupted).
        std::thread::sleep(Duration::from_millis(1100));
        let gc = store(&root, &["gc", "--grace", "0s"]);
        assert!(
            gc.status.success(),
            "round {round}: gc: {}",
            String::from_utf8_lossy(&gc.stderr)
        );
        fsck_clean(&root, round);
    }
    assert!(
        killed >= 10,
        "only {killed} of 20 loads were interrupted; the test did not test"
    );
    let out = puller(&root, &["load", archive.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "re-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fsck_clean(&root, 20);
    let ls = store(&root, &["ls", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"].as_str().unwrap(), image.id());
}
