//! Fuzz target bodies for the store's untrusted-input parsers (manifests, configs,
//! references, layer tars, archives): called by the cargo-fuzz targets in
//! `fixtures/fuzz` and by the corpus-replay test on stable. Each panics only on a bug.

use std::collections::BTreeSet;
use std::path::Path;

use crate::digest::Digest;
use crate::manifest::{Config, DOCKER_LIST, DOCKER_MANIFEST, Manifest, OCI_INDEX, OCI_MANIFEST, Platform};
use crate::reference::ImageRef;
use crate::unpack::{UnpackOptions, unpack_layer};

/// `Manifest::parse` (with every content type a PUT may carry) and the queries callers
/// make of a parsed manifest.
pub fn manifest(data: &[u8]) {
    let hints = [
        None,
        Some(OCI_MANIFEST),
        Some(OCI_INDEX),
        Some(DOCKER_MANIFEST),
        Some(DOCKER_LIST),
        Some("application/octet-stream"),
    ];
    for hint in hints {
        let Ok(m) = Manifest::parse(data, hint) else {
            continue;
        };
        let mt = m.media_type().to_string();
        assert!(crate::manifest::is_manifest_media_type(&mt), "parsed as {mt:?}");
        for r in m.references() {
            let again: Digest = r
                .digest
                .to_string()
                .parse()
                .expect("a parsed digest prints parseable");
            assert_eq!(again, r.digest);
        }
        let _ = m.subject();
        let _ = m.select_platform(&Platform::host());
    }
}

/// `Config::parse`: an image config's platform and diff IDs.
pub fn config(data: &[u8]) {
    if let Ok(c) = Config::parse(data) {
        let shown = c.platform.to_string();
        assert!(shown.starts_with(&c.platform.os));
        for d in &c.diff_ids {
            assert_eq!(d.to_string().parse::<Digest>().ok(), Some(*d));
        }
    }
}

/// `ImageRef::parse`: a parsed reference prints as one that parses to itself.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(r) = ImageRef::parse(s) else { return };
    let shown = r.to_string();
    let again = ImageRef::parse(&shown).unwrap_or_else(|e| panic!("{s:?} printed as {shown:?}: {e}"));
    assert_eq!(again, r, "{s:?} printed as {shown:?}");
    if let Some(key) = r.tag_key() {
        let (name, tag) = crate::reference::split_tag_key(&key).expect("a tag key splits");
        assert_eq!((name, Some(tag)), (r.name().as_str(), r.tag.as_deref()));
    }
    let _ = r.familiar_name();
    let _ = r.is_loopback_registry();
}

/// Limits for fuzzed layers: small, so that one input cannot run for minutes.
fn unpack_options(pool: &Path) -> UnpackOptions {
    UnpackOptions {
        max_entries: 1_000,
        // Past this a compression bomb is refused; larger spends the run hashing zeros.
        max_bytes: 1 << 20,
        dedup_pool: Some(pool.to_path_buf()),
        dedup_min_size: 0,
        ..UnpackOptions::default()
    }
}

/// Names in `dir` (not recursive).
fn names(dir: &Path) -> BTreeSet<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
        .unwrap_or_default()
}

/// `unpack_layer` of an arbitrary (possibly compressed) tar into `tmp/root`, with a
/// dedup pool in `tmp/pool`: afterwards `tmp` holds only those two and `/` has gained
/// nothing, whatever the layer's paths, links and headers said.
pub fn unpack(data: &[u8]) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("root");
    let pool = tmp.path().join("pool");
    let slash = names(Path::new("/"));
    let _ = unpack_layer(data, &root, &unpack_options(&pool));
    let left: Vec<_> = names(tmp.path())
        .into_iter()
        .filter(|n| n != "root" && n != "pool")
        .collect();
    assert!(left.is_empty(), "unpack wrote beside its destination: {left:?}");
    let gained: Vec<_> = names(Path::new("/")).difference(&slash).cloned().collect();
    assert!(gained.is_empty(), "unpack wrote into /: {gained:?}");
    // Let the temp dir go even where the layer made it hard (read-only dirs).
    make_removable(tmp.path());
}

/// Gives the owner write and search rights on every directory under `dir`.
fn make_removable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if e.file_type().is_dir()
            && let Ok(m) = e.metadata()
        {
            let mode = m.permissions().mode();
            if mode & 0o700 != 0o700 {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode | 0o700));
            }
        }
    }
}

/// `load` (what `puller load` runs) of an arbitrary archive file into `store`, with
/// small entry limits (the tar header caps are the defaults); `scratch` is a directory
/// for the archive file.
#[cfg(feature = "meta")]
pub fn archive_load(store: &crate::store::Store, scratch: &Path, data: &[u8]) {
    let file = scratch.join("archive");
    std::fs::write(&file, data).expect("write the archive");
    let opts = crate::archive::LoadOptions {
        max_entry_bytes: 1 << 20,
        max_entries: 1_000,
        ..crate::archive::LoadOptions::default()
    };
    let _ = crate::archive::load(store, &file, &opts);
}
