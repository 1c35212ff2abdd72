//! Online GC: collections run back to back while another thread ingests blobs under a
//! lease and records manifests that reference them. No manifest ever loses content, and
//! fsck is clean at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strata_store::{Digest, GcOptions, Store};

fn manifest_for(config: &Digest, config_len: usize, layer: &Digest, layer_len: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": layer_len}],
    }))
    .unwrap()
}

#[test]
fn gc_while_ingesting_never_removes_referenced_or_leased_content() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("s")).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let gc = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                store
                    .gc(&GcOptions {
                        grace: Duration::ZERO,
                        ..GcOptions::default()
                    })
                    .unwrap();
                runs += 1;
            }
            runs
        })
    };
    let mut manifests = Vec::new();
    for i in 0..200u32 {
        let layer = format!("layer content {i}").repeat(500).into_bytes();
        let layer_d = Digest::of(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_d.to_string()]},
        }))
        .unwrap();
        let config_d = Digest::of(&config);
        // The lease goes first: a GC may run between any two of these steps.
        let lease = store
            .create_lease("test", vec![layer_d, config_d], Duration::from_secs(60))
            .unwrap();
        store
            .ingest_blob(&layer_d, Some(layer.len() as u64), &layer[..])
            .unwrap();
        store
            .ingest_blob(&config_d, Some(config.len() as u64), &config[..])
            .unwrap();
        let (m, _) = store
            .add_manifest(
                &manifest_for(&config_d, config.len(), &layer_d, layer.len()),
                None,
                None,
            )
            .unwrap();
        store.release_lease(&lease).unwrap();
        manifests.push((m, config_d, layer_d));
        // Unleased garbage for the GC to find.
        store
            .ingest_blob(&Digest::of(&layer[1..]), None, &layer[1..])
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let runs = gc.join().unwrap();
    assert!(runs > 1, "gc ran only {runs} times");
    // GC keeps anything written in the last second (file-time slack), even at grace 0.
    std::thread::sleep(Duration::from_millis(1100));
    store
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        })
        .unwrap();
    for (m, c, l) in &manifests {
        for d in [m, c, l] {
            assert!(store.blobs().contains(d), "{d} was collected while referenced");
        }
    }
    // Everything unreferenced is gone: 3 blobs per image remain.
    assert_eq!(store.blobs().list().unwrap().len(), manifests.len() * 3);
    let report = store.fsck(false).unwrap();
    assert!(report.faults.is_empty(), "{:?}", report.faults);
}
