//! The hostile corpus against `unpack_layer` and the layer store: every case is refused
//! (or contained, where later entries legitimately replace earlier ones), and a
//! snapshot of everything around the destination is identical before and after.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use strata_fixtures::hostile::{self, Expect, HostileCase};
use strata_store::{Compression, Digest, LayerError, LayerStore, UnpackOptions, unpack_layer};

use crate::common::kind_of;

/// Everything observable about one path (ctime catches chmod/chown/xattr changes).
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    ino: u64,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Option<String>,
    link: Option<PathBuf>,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| e.path() != skip);
    for entry in walk {
        let entry = entry.unwrap();
        let path = entry.path();
        let md = fs::symlink_metadata(path).unwrap();
        let kind = kind_of(md.file_type());
        let content = (kind == "file").then(|| hex::encode(Sha256::digest(fs::read(path).unwrap())));
        let link = (kind == "symlink").then(|| fs::read_link(path).unwrap());
        let mut xattrs: Vec<(String, Vec<u8>)> = if kind == "symlink" {
            Vec::new()
        } else {
            xattr::list(path)
                .unwrap()
                .map(|n| {
                    let v = xattr::get(path, &n).unwrap().unwrap_or_default();
                    (n.to_string_lossy().into_owned(), v)
                })
                .collect()
        };
        xattrs.sort();
        out.insert(
            path.to_path_buf(),
            Node {
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: md.size(),
                ino: md.ino(),
                nlink: md.nlink(),
                mtime: (md.mtime(), md.mtime_nsec()),
                ctime: (md.ctime(), md.ctime_nsec()),
                content,
                link,
                xattrs,
            },
        );
    }
    out
}

/// `<tmp>/{canary, etc/passwd, root/canary, root/victim/keep, root/layer/}`.
fn arena() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fs::create_dir_all(t.join("etc")).unwrap();
    fs::create_dir_all(t.join("root/victim")).unwrap();
    fs::create_dir_all(t.join("root/layer")).unwrap();
    fs::write(t.join("canary"), "canary\n").unwrap();
    fs::write(t.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(t.join("root/canary"), "canary\n").unwrap();
    fs::write(t.join("root/victim/keep"), "keep\n").unwrap();
    let dest = t.join("root/layer");
    (tmp, dest)
}

fn options_for(case: &HostileCase) -> UnpackOptions {
    let mut opts = UnpackOptions::default();
    if let Expect::RefusedUnderLimits { limits, .. } = case.expect {
        if let Some(b) = limits.max_bytes {
            opts.max_bytes = b;
        }
        if let Some(e) = limits.max_entries {
            opts.max_entries = e;
        }
    }
    opts
}

fn assert_no_probes(name: &str) {
    for probe in hostile::ESCAPE_PROBES {
        assert!(fs::symlink_metadata(probe).is_err(), "{name}: {probe} exists");
    }
}

/// Runs one layer into a fresh arena and checks the expectation and the arena.
fn run_case(name: &str, layer: &[u8], expect: Expect, opts: &UnpackOptions) {
    let (tmp, dest) = arena();
    let before = snapshot(tmp.path(), &dest);
    let result = unpack_layer(layer, &dest, opts);
    match &result {
        Ok(r) => eprintln!("{name}: unpacked ({} entries)", r.entries),
        Err(e) => eprintln!("{name}: refused: {e}"),
    }
    match (expect, &result) {
        (Expect::Refused { error } | Expect::RefusedUnderLimits { error, .. }, Err(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains(error),
                "{name}: error {msg:?} does not mention {error:?}"
            );
        }
        (Expect::DeviceNodes, Err(e)) if !opts.allow_devices => {
            assert!(e.to_string().contains("device"), "{name}: {e}");
        }
        (Expect::DeviceNodes, Ok(_)) if opts.allow_devices => {}
        (Expect::Contained, Ok(_)) => {}
        (expect, result) => panic!("{name}: expected {expect:?}, got {result:?}"),
    }
    let after = snapshot(tmp.path(), &dest);
    assert_eq!(before, after, "{name}: something outside the destination changed");
    assert_no_probes(name);
    // Nothing inside the destination is a regular file holding hostile content at a
    // path that resolves outside it (walking never follows symlinks).
    for entry in walkdir::WalkDir::new(&dest).follow_links(false) {
        let entry = entry.unwrap();
        assert!(entry.path().starts_with(&dest));
    }
}

#[test]
fn every_hostile_case_is_refused_or_contained() {
    let corpus = hostile::corpus();
    assert!(corpus.len() >= 40, "corpus has {} cases", corpus.len());
    let root = rustix::process::geteuid().is_root();
    for case in &corpus {
        let opts = options_for(case);
        if case.expect == Expect::DeviceNodes {
            let refuse = UnpackOptions {
                allow_devices: false,
                ..opts.clone()
            };
            run_case(case.name, &case.layer, case.expect, &refuse);
            let skip = UnpackOptions {
                allow_devices: false,
                skip_devices: true,
                ..opts.clone()
            };
            let (_tmp, dest) = arena();
            let report = unpack_layer(&case.layer[..], &dest, &skip).unwrap();
            assert_eq!(report.skipped_devices, 1, "{}", case.name);
            if root {
                let allow = UnpackOptions {
                    allow_devices: true,
                    ..opts
                };
                run_case(case.name, &case.layer, case.expect, &allow);
            }
            continue;
        }
        run_case(case.name, &case.layer, case.expect, &opts);
    }
}

/// Plain-tar cases behave the same once compressed (the decompressors sit in front of
/// the same parser).
#[test]
fn compressed_variants_behave_the_same() {
    for case in hostile::corpus() {
        let plain = Compression::detect(&case.layer) == Compression::None;
        if !plain || case.layer.len() > (1 << 20) || case.expect == Expect::DeviceNodes {
            continue;
        }
        let opts = options_for(&case);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&case.layer).unwrap();
        let gz = gz.finish().unwrap();
        run_case(&format!("{}+gzip", case.name), &gz, case.expect, &opts);
        let zst = zstd::stream::encode_all(&case.layer[..], 3).unwrap();
        run_case(&format!("{}+zstd", case.name), &zst, case.expect, &opts);
    }
}

#[test]
fn contained_cases_end_up_inside() {
    let by_name = |n: &str| hostile::corpus().into_iter().find(|c| c.name == n).unwrap();
    let unpack = |n: &str| {
        let (tmp, dest) = arena();
        unpack_layer(&by_name(n).layer[..], &dest, &UnpackOptions::default()).unwrap();
        (tmp, dest)
    };

    let (_t, dest) = unpack("symlink-replaced-by-file");
    let md = fs::symlink_metadata(dest.join("x")).unwrap();
    assert!(md.is_file());
    assert_eq!(fs::read(dest.join("x")).unwrap(), b"pwned");

    let (t, dest) = unpack("symlink-replaced-by-dir");
    assert!(fs::symlink_metadata(dest.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(dest.join("d/f")).unwrap(), b"inside");
    assert!(!t.path().join("root/victim/f").exists());

    let (_t, dest) = unpack("hardlink-to-planted-symlink");
    assert!(
        fs::symlink_metadata(dest.join("s"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(fs::symlink_metadata(dest.join("h")).unwrap().is_file());
    assert_eq!(fs::read(dest.join("h")).unwrap(), b"pwned");

    let (_t, dest) = unpack("symlink-with-size-field");
    assert_eq!(fs::read_link(dest.join("link")).unwrap(), Path::new("target"));
    assert_eq!(fs::read(dest.join("smuggled")).unwrap(), b"seen by everyone");

    let (_t, dest) = unpack("overlay-xattr-smuggling");
    let names: Vec<_> = xattr::list(dest.join("d")).unwrap().collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().contains("overlay")),
        "{names:?}"
    );
    let (_t, dest) = arena();
    let report = unpack_layer(
        &by_name("overlay-xattr-smuggling").layer[..],
        &dest,
        &Default::default(),
    );
    assert_eq!(report.unwrap().skipped_xattrs, 3);
}

/// Through the layer store, a refused layer leaves nothing: no layer, no `.tmp`
/// debris, no pool entries.
#[test]
fn layer_store_leaves_nothing_behind_on_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(tmp.path()).unwrap().with_sync(false);
    for case in hostile::corpus() {
        if !matches!(case.expect, Expect::Refused { .. }) {
            continue;
        }
        let chain = Digest::of(case.name.as_bytes());
        let err = store.unpack(&chain, &chain, &case.layer[..]).unwrap_err();
        assert!(matches!(err, LayerError::Unpack { .. }), "{}: {err}", case.name);
        assert!(!store.is_unpacked(&chain), "{}", case.name);
        assert!(store.list().unwrap().is_empty());
        let debris: Vec<_> = fs::read_dir(store.root().join(".tmp")).unwrap().collect();
        assert!(debris.is_empty(), "{}: {debris:?}", case.name);
        let pooled: Vec<_> = fs::read_dir(store.pool_dir()).unwrap().collect();
        assert!(pooled.is_empty(), "{}: {pooled:?}", case.name);
    }
}

#[test]
fn default_limits_refuse_the_huge_entry_bomb_quickly() {
    let case = hostile::corpus()
        .into_iter()
        .find(|c| c.name == "bomb-zstd-huge-entry")
        .unwrap();
    let (_tmp, dest) = arena();
    let started = std::time::Instant::now();
    let err = unpack_layer(&case.layer[..], &dest, &UnpackOptions::default()).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Nothing of it was written.
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
}
