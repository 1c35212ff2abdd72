//! Archive loads and saves through the library: formats, dedup, round trips, and refusal
//! of tampered, truncated and hostile archives leaving the store as it was.

use std::path::Path;

use strata_fixtures as fx;
use strata_store::{ArchiveError, Digest, LoadOptions, Store, load, save};

fn open(dir: &Path) -> Store {
    Store::open(&dir.join("store")).unwrap()
}

fn blob_set(store: &Store) -> Vec<Digest> {
    store
        .blobs()
        .list()
        .unwrap()
        .into_iter()
        .map(|b| b.digest)
        .collect()
}

/// Everything a user could observe about a store's content.
fn snapshot(store: &Store) -> (Vec<Digest>, String, Vec<Digest>) {
    (
        blob_set(store),
        serde_json::to_string(&store.images().unwrap()).unwrap(),
        store.layers().list().unwrap(),
    )
}

#[test]
fn docker_save_loads_with_docker_image_id_and_unpacks_layers() {
    let dir = tempfile::tempdir().unwrap();
    let image = fx::busybox(fx::Flavor::Docker, fx::LayerCompression::None);
    let archive = dir.path().join("bb.tar");
    fx::write_docker_save(&archive, &[(&image, &["busybox:fixture"][..])]);
    let store = open(dir.path());
    let report = load(&store, &archive, &LoadOptions::default()).unwrap();
    assert_eq!(report.images.len(), 1);
    assert_eq!(report.images[0].id.unwrap().to_string(), image.id());
    assert_eq!(
        report.images[0].tags,
        vec!["docker.io/library/busybox:fixture".to_string()]
    );
    assert_eq!(report.layers_unpacked as usize, image.layers.len());
    let rows = store.images().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].repository.as_str(), rows[0].tag.as_str()),
        ("busybox", "fixture")
    );
    assert_eq!(rows[0].id, image.id());
    // The unpacked top layer shows the whiteouts in overlay form.
    let chains = store.ensure_unpacked(&image.id().parse().unwrap()).unwrap();
    assert_eq!(chains.len(), image.layers.len());
    assert!(store.fsck(false).unwrap().faults.is_empty());
}

#[test]
fn loading_twice_or_sharing_layers_stores_each_blob_and_layer_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = fx::small_image(1, 3, true);
    let b = fx::small_image(2, 3, true);
    let archive_a = dir.path().join("a.tar");
    let archive_ab = dir.path().join("ab.tar");
    fx::write_docker_save(&archive_a, &[(&a, &["a:1"][..])]);
    fx::write_docker_save(&archive_ab, &[(&a, &["a:1"][..]), (&b, &["b:1"][..])]);
    let store = open(dir.path());
    load(&store, &archive_a, &LoadOptions::default()).unwrap();
    let first = store.usage().unwrap();
    let again = load(&store, &archive_a, &LoadOptions::default()).unwrap();
    assert_eq!(again.blobs_written, 0);
    assert_eq!(again.layers_unpacked, 0);
    assert_eq!(store.usage().unwrap(), first);
    load(&store, &archive_ab, &LoadOptions::default()).unwrap();
    let u = store.usage().unwrap();
    // a: config + 3 layers + manifest; b shares its base layer: config + 2 layers + manifest.
    assert_eq!(u.blobs, first.blobs + 4);
    assert_eq!(u.layers, 6 - 1);
    assert!(store.fsck(false).unwrap().faults.is_empty());
    // Both images from one archive into an empty store: the shared layer once.
    let fresh = Store::open(&dir.path().join("fresh")).unwrap();
    let r = load(&fresh, &archive_ab, &LoadOptions::default()).unwrap();
    assert_eq!(r.images.len(), 2);
    assert_eq!(r.layers_unpacked, 5);
    assert_eq!(fresh.usage().unwrap().blobs, u.blobs);
}

#[test]
fn oci_layouts_archives_compressed_and_indexes_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // OCI layout directory, zstd layers.
    let img = fx::busybox(fx::Flavor::Oci, fx::LayerCompression::Zstd);
    let layout = dir.path().join("layout");
    fx::write_oci_layout(&layout, &[(&img, Some("docker.io/library/bbz:1"))]);
    let r = load(&store, &layout, &LoadOptions::default()).unwrap();
    assert_eq!(r.images[0].manifest.to_string(), img.manifest.digest);
    // The same layout as a gzip-compressed oci-archive tar: nothing new to write.
    let tar = dir.path().join("layout.tar");
    fx::write_tar_of_dir(&layout, &tar);
    let gz = dir.path().join("layout.tar.gz");
    fx::compress_file(&tar, &gz, fx::LayerCompression::Gzip);
    let r = load(&store, &gz, &LoadOptions::default()).unwrap();
    assert_eq!(r.blobs_written, 0);
    assert_eq!(r.images[0].manifest.to_string(), img.manifest.digest);
    let zst = dir.path().join("layout.tar.zst");
    fx::compress_file(&tar, &zst, fx::LayerCompression::Zstd);
    let r = load(&store, &zst, &LoadOptions::default()).unwrap();
    assert_eq!(
        (r.blobs_written, r.images[0].tags.clone()),
        (0, vec!["docker.io/library/bbz:1".to_string()])
    );
    // A multi-platform index: the tag points at the index, ls shows the host's image.
    let (index, images) = fx::multi_platform(fx::Flavor::Oci);
    let mlayout = dir.path().join("multi");
    fx::write_oci_layout_index(&mlayout, &index, &images, Some("docker.io/library/multi:1"));
    load(&store, &mlayout, &LoadOptions::default()).unwrap();
    let resolved = store.resolve("multi:1").unwrap();
    assert_eq!(resolved.manifest.unwrap().to_string(), index.digest);
    let amd64 = images.iter().find(|i| i.platform.1 == "amd64").unwrap();
    assert_eq!(resolved.image.unwrap().to_string(), amd64.id());
    assert!(store.fsck(false).unwrap().faults.is_empty());
}

#[test]
fn save_then_load_into_a_fresh_store_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let img = fx::busybox(fx::Flavor::Oci, fx::LayerCompression::Gzip);
    let layout = dir.path().join("layout");
    fx::write_oci_layout(&layout, &[(&img, Some("example.com/team/app:2"))]);
    load(&store, &layout, &LoadOptions::default()).unwrap();
    let out = dir.path().join("saved.tar");
    let report = save(
        &store,
        &["example.com/team/app:2".to_string()],
        std::fs::File::create(&out).unwrap(),
    )
    .unwrap();
    assert_eq!(report.images, 1);
    drop(store);
    let other = Store::open(&dir.path().join("other")).unwrap();
    let r = load(&other, &out, &LoadOptions::default()).unwrap();
    assert_eq!(r.images[0].id.unwrap().to_string(), img.id());
    // An OCI manifest is saved byte for byte, so its digest survives the trip.
    assert_eq!(r.images[0].manifest.to_string(), img.manifest.digest);
    assert_eq!(r.images[0].tags, vec!["example.com/team/app:2".to_string()]);
}

fn assert_refused_and_unchanged(store: &Store, path: &Path, check: impl Fn(&ArchiveError) -> bool) {
    let before = snapshot(store);
    let err = load(store, path, &LoadOptions::default()).expect_err("hostile archive must be refused");
    assert!(check(&err), "unexpected error: {err}");
    assert_eq!(
        snapshot(store),
        before,
        "a refused load changed the store ({err})"
    );
    assert!(store.fsck(false).unwrap().faults.is_empty());
    // Staging files are gone too.
    let leftovers: Vec<_> = std::fs::read_dir(store.blobs().ingest_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn tampered_truncated_and_malformed_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Something is already in the store, and must stay exactly as it is.
    let good = fx::small_image(7, 2, false);
    let good_archive = dir.path().join("good.tar");
    fx::write_docker_save(&good_archive, &[(&good, &["good:1"][..])]);
    load(&store, &good_archive, &LoadOptions::default()).unwrap();

    // A config whose diff id does not match the layer's content.
    let mut bad = fx::small_image(8, 2, false);
    let wrong = Digest::of(b"not this layer").to_string();
    let cfg = String::from_utf8(bad.config.bytes.clone())
        .unwrap()
        .replace(&bad.diff_ids[1], &wrong);
    assert_ne!(cfg.as_bytes(), &bad.config.bytes[..]);
    bad.config = fx::Blob::new(&bad.config.media_type, cfg.into_bytes());
    let tampered = dir.path().join("tampered.tar");
    fx::write_docker_save(&tampered, &[(&bad, &["bad:1"][..])]);
    assert_refused_and_unchanged(&store, &tampered, |e| {
        matches!(e, ArchiveError::DiffIdMismatch { .. })
    });

    // An OCI blob whose content does not hash to its name.
    let oci = fx::small_image(9, 2, false);
    let layout = dir.path().join("oci-bad");
    fx::write_oci_layout(&layout, &[(&oci, Some("docker.io/library/x:1"))]);
    let victim = layout
        .join("blobs/sha256")
        .join(oci.layers[1].digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    assert_refused_and_unchanged(&store, &layout, |e| {
        matches!(e, ArchiveError::DigestMismatch { .. })
    });

    // Truncated archive.
    let whole = std::fs::read(&good_archive).unwrap();
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &whole[..whole.len() / 2 + 17]).unwrap();
    let fresh = Store::open(&dir.path().join("fresh")).unwrap();
    assert_refused_and_unchanged(&fresh, &cut, |e| {
        matches!(
            e,
            ArchiveError::Corrupt(_) | ArchiveError::Missing(_) | ArchiveError::NotAnArchive
        )
    });

    // Not an archive at all, and JSON that is not a manifest list.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(load(&store, &junk, &LoadOptions::default()).is_err());
}

/// A docker-save archive with one extra entry named `name`.
fn archive_with_entry(name: &[u8]) -> Vec<u8> {
    let img = fx::small_image(77, 1, false);
    let mut t = fx::hostile::RawTar::new();
    let manifest = serde_json::json!([{"Config": format!("{}.json", img.config.hex()), "RepoTags": ["evil:1"], "Layers": ["l/layer.tar"]}]);
    t.file(name, b"owned");
    t.file(format!("{}.json", img.config.hex()).as_bytes(), &img.config.bytes);
    t.file(b"l/layer.tar", &img.layers[0].bytes);
    t.file(b"manifest.json", manifest.to_string().as_bytes());
    t.finish()
}

#[test]
fn hostile_archives_are_refused_without_touching_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("traversal".into(), archive_with_entry(b"../../escape")),
        ("absolute".into(), archive_with_entry(b"/tmp/strata-escape")),
    ];
    // Every plain-tar hostile layer the corpus expects refused, carried in a docker-save.
    for case in fx::hostile::corpus() {
        let refused = matches!(case.expect, fx::hostile::Expect::Refused { .. });
        let plain =
            !case.layer.starts_with(&[0x1f, 0x8b]) && !case.layer.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        if refused && plain {
            let image = fx::ImageBuilder::new(fx::Flavor::Docker)
                .layer(case.layer.clone(), case.name)
                .build();
            let path = dir.path().join(format!("layer-{}.tar", case.name));
            fx::write_docker_save(&path, &[(&image, &["hostile:1"][..])]);
            cases.push((case.name.to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(cases.len() > 5, "hostile corpus too small: {}", cases.len());
    for (name, bytes) in cases {
        let path = dir.path().join(format!("{name}.hostile.tar"));
        std::fs::write(&path, &bytes).unwrap();
        assert_refused_and_unchanged(&store, &path, |_| true);
    }
    assert!(!std::path::Path::new("/tmp/strata-escape").exists());
    assert!(!dir.path().join("escape").exists() && !dir.path().parent().unwrap().join("escape").exists());
}
