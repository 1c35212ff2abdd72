//! Tar parity with Go's `archive/tar` (what docker, containerd and image scanners read):
//! layers whose names depend on which extension header a reader believes are unpacked by
//! strata and by umoci (Go) and the trees compared; and the outer archive of `load` keeps
//! the unpacker's caps (a gzipped 8 GiB GNU long name is refused at its header).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use strata_fixtures as fx;
use strata_fixtures::hostile::{self, Parity};
use strata_fixtures::peers;
use strata_store::{ArchiveError, LoadOptions, Store, UnpackOptions, load, unpack_layer};

use crate::common::kind_of;

/// Kind, content (files) and target (symlinks) of everything under `root`.
fn tree(root: &Path) -> BTreeMap<PathBuf, (&'static str, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
        let kind = kind_of(entry.file_type());
        let detail = match kind {
            "file" => Some(fs::read(entry.path()).unwrap()),
            "symlink" => Some(
                fs::read_link(entry.path())
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            ),
            _ => None,
        };
        out.insert(rel, (kind, detail));
    }
    out
}

/// Unpacks `layer` with umoci (Go's archive/tar); `None` if umoci refuses it.
fn umoci_unpack(work: &Path, layer: &[u8]) -> Option<PathBuf> {
    let image = fx::ImageBuilder::new(fx::Flavor::Oci)
        .compression(fx::LayerCompression::None)
        .layer(layer.to_vec(), "ambiguous")
        .build();
    let layout = work.join("layout");
    fx::write_oci_layout(&layout, &[(&image, Some("t"))]);
    let rootfs = work.join("umoci-rootfs");
    let out = peers::umoci([
        "raw",
        "unpack",
        "--image",
        &format!("{}:t", layout.display()),
        rootfs.to_str().unwrap(),
    ]);
    if out.status.success() {
        Some(rootfs)
    } else {
        eprintln!("umoci refused: {}", String::from_utf8_lossy(&out.stderr).trim());
        None
    }
}

#[test]
fn ambiguous_names_unpack_as_go_archive_tar_reads_them() {
    if peers::require("umoci").is_none() {
        return;
    }
    let cases = hostile::ambiguous_names();
    assert!(cases.len() >= 15);
    for case in cases {
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("strata");
        let ours = unpack_layer(&case.layer[..], &dest, &UnpackOptions::default());
        let go = umoci_unpack(work.path(), &case.layer);
        let observed = match (&ours, &go) {
            (Ok(_), Some(rootfs)) => {
                assert_eq!(tree(&dest), tree(rootfs), "{}: strata and Go disagree", case.name);
                Parity::Same
            }
            (Err(_), None) => Parity::BothRefuse,
            (Err(_), Some(_)) => Parity::StrataRefuses,
            (Ok(_), None) => Parity::ToolRefuses,
        };
        assert_eq!(observed, case.parity, "{}: {ours:?}", case.name);
        if observed == Parity::Same {
            // The tree shows which header won: never the plain header's name when an
            // extension header named the entry.
            let names: Vec<_> = tree(&dest).into_keys().collect();
            assert!(!names.is_empty(), "{}", case.name);
        }
    }
}

#[test]
fn strata_picks_the_names_go_picks() {
    // Without umoci: the expected names spelled out, so a regression names the case.
    let expect: &[(&str, &str)] = &[
        ("pax-path-then-gnu-long-name", "from-gnu-long-name"),
        ("gnu-long-name-then-pax-path", "from-gnu-long-name"),
        ("gnu-long-name-over-ustar-prefix", "from-gnu-long-name"),
        ("sparse-name-on-a-plain-file", "from-pax"),
        ("sparse-name-with-unknown-sparse-version", "from-pax"),
        ("sparse-name-on-a-sparse-1.0-file", "from-sparse-name"),
        ("empty-pax-path", "from-header"),
        ("empty-gnu-long-name-and-pax-path", "from-pax"),
        ("pax-path-repeated-last-empty", "from-header"),
        ("global-header-after-pax-path", "from-header"),
        ("ustar-prefix-with-odd-version", "prefix/name"),
    ];
    let cases = hostile::ambiguous_names();
    for (name, path) in expect {
        let case = cases.iter().find(|c| c.name == *name).unwrap();
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("d");
        unpack_layer(&case.layer[..], &dest, &UnpackOptions::default()).unwrap();
        assert!(dest.join(path).is_file(), "{name}: {:?}", tree(&dest).keys());
    }
    let symlink = |name: &str| {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("d");
        unpack_layer(&case.layer[..], &dest, &UnpackOptions::default()).unwrap();
        fs::read_link(dest.join("link")).unwrap()
    };
    assert_eq!(
        symlink("pax-linkpath-then-gnu-long-link"),
        Path::new("from-gnu-long-link")
    );
    assert_eq!(symlink("empty-pax-linkpath"), Path::new("from-header"));
}

#[test]
fn load_refuses_a_gzipped_8_gib_long_name_at_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let path = dir.path().join("bomb.tar.gz");
    fs::write(&path, hostile::gzip_long_name_bomb(8 << 30)).unwrap();
    let err = load(&store, &path, &LoadOptions::default()).expect_err("bomb loaded");
    let text = err.to_string();
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{text}");
    assert!(
        text.contains("GNU long name") && text.contains("limit of 4096 bytes"),
        "{text}"
    );
}

#[test]
fn load_says_a_file_that_is_no_archive_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    for (name, bytes) in [
        ("text.txt", b"this is not an archive, just some text\n".repeat(40)),
        ("short.txt", b"hello".to_vec()),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, &bytes).unwrap();
        let err = load(&store, &path, &LoadOptions::default()).expect_err(name);
        assert!(matches!(err, ArchiveError::NotATar), "{name}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("not an image archive") && !text.contains("this is not"),
            "{text}"
        );
    }
}
