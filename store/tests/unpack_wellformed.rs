//! Well-formed layers: built by GNU `tar` (posix and gnu formats, sparse files) and by
//! the `tar` crate, unpacked by us and by `tar -x`, compared field by field (modes incl.
//! setuid/setgid/sticky, owners, mtimes with nanoseconds, link targets, hardlink
//! groups, devices, xattrs, content); diff IDs compared with `sha256sum`; plain, gzip
//! and zstd.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};
use sha2::{Digest as _, Sha256};
use strata_store::{Compression, UnpackOptions, UnpackReport, unpack_layer};

use crate::common::kind_of;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Pseudo-random bytes (sha256 in counter mode).
fn noise(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest([&[seed][..], &i.to_le_bytes()].concat()));
        i += 1;
    }
    out.truncate(len);
    out
}

/// A directory tree with everything a layer can hold.
fn build_tree(src: &Path) {
    let p = |rel: &str| src.join(rel);
    fs::create_dir_all(src).unwrap();
    fs::write(p("file.txt"), "hello\n").unwrap();
    fs::write(p("empty"), "").unwrap();
    fs::write(p("exec.sh"), "#!/bin/sh\necho hi\n").unwrap();
    chmod(&p("exec.sh"), 0o755);
    fs::write(p("setuid-bin"), noise(5000, 1)).unwrap();
    chmod(&p("setuid-bin"), 0o4755);
    fs::write(p("setgid-bin"), noise(100, 2)).unwrap();
    chmod(&p("setgid-bin"), 0o2711);
    fs::create_dir(p("sgid-dir")).unwrap();
    fs::write(p("sgid-dir/inner"), "inner\n").unwrap();
    chmod(&p("sgid-dir"), 0o2775);
    fs::create_dir(p("tmp")).unwrap();
    chmod(&p("tmp"), 0o1777);
    fs::write(p("owned"), "owned\n").unwrap();
    chmod(&p("owned"), 0o640);
    fs::write(p("xattr.txt"), "x\n").unwrap();
    xattr::set(p("xattr.txt"), "user.note", b"va\nlue\0with=bytes").unwrap();
    fs::create_dir(p("xdir")).unwrap();
    xattr::set(p("xdir"), "user.dirnote", b"d").unwrap();
    fs::create_dir(p("sub")).unwrap();
    fs::write(p("hard-a"), noise(70_000, 3)).unwrap();
    fs::hard_link(p("hard-a"), p("sub/hard-b")).unwrap();
    std::os::unix::fs::symlink("file.txt", p("sym-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", p("sym-abs")).unwrap();
    std::os::unix::fs::symlink("../file.txt", p("sub/sym-up")).unwrap();
    std::os::unix::fs::symlink("nowhere", p("sym-dangling")).unwrap();
    rustix::fs::mknodat(CWD, p("fifo"), FileType::Fifo, Mode::from_raw_mode(0o620), 0).unwrap();
    let long_dir = format!("long/{}/{}", "d".repeat(90), "e".repeat(120));
    fs::create_dir_all(p(&long_dir)).unwrap();
    fs::write(p(&format!("{long_dir}/{}", "n".repeat(150))), "long\n").unwrap();
    fs::write(p("héllo wörld ✓.txt"), "unicode\n").unwrap();
    fs::write(p("new\nline"), "newline\n").unwrap();
    fs::create_dir(p("empty-dir")).unwrap();
    chmod(&p("empty-dir"), 0o700);
    fs::create_dir(p("readonly")).unwrap();
    fs::write(p("readonly/ro-file"), "ro\n").unwrap();
    chmod(&p("readonly/ro-file"), 0o444);
    chmod(&p("readonly"), 0o555);
    fs::write(p("big"), noise(3 << 20, 4)).unwrap();
    // Whiteouts, as an image builder writes them.
    fs::write(p(".wh.deleted"), "").unwrap();
    fs::create_dir(p("opaque")).unwrap();
    fs::write(p("opaque/.wh..wh..opq"), "").unwrap();
    fs::write(p("opaque/kept"), "kept\n").unwrap();
    fs::write(p("sub/.wh.gone-dir"), "").unwrap();
    if is_root() {
        xattr::set(p("xattr.txt"), "trusted.secret", b"t").unwrap();
        std::os::unix::fs::chown(p("owned"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::chown(p("setgid-bin"), Some(0), Some(50)).unwrap();
        chmod(&p("setgid-bin"), 0o2711);
        rustix::fs::mknodat(
            CWD,
            p("dev-null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
    }
    // Distinct mtimes with nanoseconds; directories last, deepest first.
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(src)
        .into_iter()
        .map(|e| e.unwrap().path().to_path_buf())
        .collect();
    paths.sort_by_key(|p| {
        (
            p.is_dir() && !p.is_symlink(),
            std::cmp::Reverse(p.components().count()),
        )
    });
    for (i, path) in paths.iter().enumerate() {
        set_mtime(path, 1_600_000_000 + i as i64 * 1000, 123_456_789 + i as i64);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<(i64, i64)>,
    content: Option<String>,
    link: Option<PathBuf>,
    rdev: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Tree {
    nodes: BTreeMap<PathBuf, Node>,
    /// Groups of paths sharing an inode (hardlinks), as sorted sets.
    links: BTreeSet<Vec<PathBuf>>,
}

fn read_tree(root: &Path) -> Tree {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
        let md = fs::symlink_metadata(entry.path()).unwrap();
        let kind = kind_of(md.file_type());
        let mut xattrs: Vec<(String, Vec<u8>)> = if kind == "symlink" {
            Vec::new()
        } else {
            xattr::list(entry.path())
                .unwrap()
                .filter(|n| n.to_string_lossy() != "security.selinux")
                .map(|n| {
                    (
                        n.to_string_lossy().into_owned(),
                        xattr::get(entry.path(), &n).unwrap().unwrap(),
                    )
                })
                .collect()
        };
        xattrs.sort();
        if kind != "dir" {
            inodes.entry(md.ino()).or_default().push(rel.clone());
        }
        nodes.insert(
            rel,
            Node {
                kind,
                mode: if kind == "symlink" { 0 } else { md.mode() & 0o7777 },
                uid: md.uid(),
                gid: md.gid(),
                mtime: Some((md.mtime(), md.mtime_nsec())),
                content: (kind == "file")
                    .then(|| hex::encode(Sha256::digest(fs::read(entry.path()).unwrap()))),
                link: (kind == "symlink").then(|| fs::read_link(entry.path()).unwrap()),
                rdev: md.rdev(),
                xattrs,
            },
        );
    }
    let links = inodes.into_values().filter(|v| v.len() > 1).map(|mut v| {
        v.sort();
        v
    });
    Tree {
        nodes,
        links: links.collect(),
    }
}

/// What `tar -x` produced, with OCI whiteouts converted the way we convert them.
fn expected_from_reference(reference: &Path) -> Tree {
    let mut tree = read_tree(reference);
    let whiteouts: Vec<PathBuf> = tree
        .nodes
        .keys()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".wh."))
        })
        .cloned()
        .collect();
    for path in whiteouts {
        tree.nodes.remove(&path);
        let parent = path.parent().unwrap().to_path_buf();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == ".wh..wh..opq" {
            let dir = tree.nodes.get_mut(&parent).unwrap();
            dir.xattrs.push(("trusted.overlay.opaque".into(), b"y".to_vec()));
            dir.xattrs.sort();
        } else {
            let target = parent.join(&name[4..]);
            tree.nodes.insert(
                target,
                Node {
                    kind: "char",
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    mtime: None,
                    content: None,
                    link: None,
                    rdev: 0,
                    xattrs: Vec::new(),
                },
            );
        }
    }
    tree
}

/// Compares a tree with the expectation; the root's own metadata only when the layer
/// has a `./` entry (`with_root`), since otherwise both roots are simply "now".
fn assert_same(ours: &Path, expected: &Tree, what: &str, with_root: bool) {
    let got = read_tree(ours);
    let got_paths: BTreeSet<_> = got.nodes.keys().collect();
    let want_paths: BTreeSet<_> = expected.nodes.keys().collect();
    assert_eq!(got_paths, want_paths, "{what}: different paths");
    for (path, want) in &expected.nodes {
        let mut have = got.nodes[path].clone();
        if want.mtime.is_none() {
            // A whiteout: a 0/0 character device; nothing else about it matters.
            assert_eq!((have.kind, have.rdev), ("char", 0), "{what}: {path:?}");
            continue;
        }
        if path.as_os_str().is_empty() {
            // The root: the caller made it; only what `./` says is compared.
            have.xattrs.clone_from(&want.xattrs);
            if !with_root {
                continue;
            }
        }
        assert_eq!(&have, want, "{what}: {path:?}");
    }
    assert_eq!(got.links, expected.links, "{what}: hardlink groups");
}

fn reference_extract(layer: &Path, into: &Path, flag: &str) {
    fs::create_dir_all(into).unwrap();
    let mut cmd = Command::new("tar");
    cmd.arg(flag)
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(into)
        .arg("-f")
        .arg(layer);
    run(&mut cmd);
}

fn ours(layer: &Path, into: &Path) -> UnpackReport {
    fs::create_dir_all(into).unwrap();
    unpack_layer(fs::File::open(layer).unwrap(), into, &UnpackOptions::default()).unwrap()
}

fn check_gnu_tar_format(format: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    build_tree(&t.join("src"));
    let layer = t.join("layer.tar");
    let mut cmd = Command::new("tar");
    cmd.arg(format!("--format={format}"))
        .args(["--numeric-owner", "--sort=name", "-C"])
        .arg(t.join("src"));
    if format == "posix" {
        cmd.args(["--xattrs", "--xattrs-include=*"]);
    }
    run(cmd.arg("-cf").arg(&layer).arg("."));
    let diff_id = sha256sum(&layer);

    reference_extract(&layer, &t.join("ref"), "-x");
    let expected = expected_from_reference(&t.join("ref"));
    // The posix format kept the xattrs; make sure the comparison would see them.
    if format == "posix" {
        let x = &expected.nodes[Path::new("xattr.txt")].xattrs;
        assert!(x.iter().any(|(n, _)| n == "user.note"), "{x:?}");
    }

    let report = ours(&layer, &t.join("plain"));
    assert_eq!(report.diff_id.hex(), diff_id);
    assert_eq!(report.compression, Compression::None);
    assert_eq!(report.uncompressed_size, fs::metadata(&layer).unwrap().len());
    assert_eq!(report.whiteouts, 2);
    assert_eq!(report.opaque_dirs, 1);
    assert_same(&t.join("plain"), &expected, &format!("{format} plain"), true);

    run(Command::new("sh").arg("-c").arg(format!(
        "gzip -n -c {0} > {0}.gz && zstd -q -c {0} > {0}.zst",
        layer.display()
    )));
    for (ext, compression, flag) in [
        ("gz", Compression::Gzip, "-xz"),
        ("zst", Compression::Zstd, "--zstd"),
    ] {
        let compressed = t.join(format!("layer.tar.{ext}"));
        let report = ours(&compressed, &t.join(ext));
        assert_eq!(report.diff_id.hex(), diff_id, "{ext}");
        assert_eq!(report.compression, compression);
        assert_same(&t.join(ext), &expected, &format!("{format} {ext}"), true);
        // And against `tar -x` reading the compressed layer itself.
        let reference = t.join(format!("ref-{ext}"));
        if flag == "--zstd" {
            reference_extract(&compressed, &reference, "-x");
        } else {
            reference_extract(&compressed, &reference, flag);
        }
        let what = format!("{format} {ext} vs tar");
        assert_same(&t.join(ext), &expected_from_reference(&reference), &what, true);
    }
}

#[test]
fn gnu_tar_posix_format_matches_tar_x() {
    check_gnu_tar_format("posix");
}

#[test]
fn gnu_tar_gnu_format_matches_tar_x() {
    check_gnu_tar_format("gnu");
}

#[test]
fn sparse_files_keep_their_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    fs::create_dir(&src).unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(src.join("sparse")).unwrap();
        f.write_all(&noise(4096, 5)).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(&noise(8192, 6)).unwrap();
        f.set_len(32 << 20).unwrap();
    }
    let want = fs::read(src.join("sparse")).unwrap();
    for (format, version) in [
        ("gnu", None),
        ("posix", Some("0.0")),
        ("posix", Some("0.1")),
        ("posix", Some("1.0")),
    ] {
        let layer = t.join(format!("{format}-{}.tar", version.unwrap_or("old")));
        let mut cmd = Command::new("tar");
        cmd.arg(format!("--format={format}")).arg("-S");
        if let Some(v) = version {
            cmd.arg(format!("--sparse-version={v}"));
        }
        run(cmd.arg("-C").arg(&src).arg("-cf").arg(&layer).arg("sparse"));
        let out = t.join(format!("out-{format}-{}", version.unwrap_or("old")));
        let report = ours(&layer, &out);
        assert_eq!(report.diff_id.hex(), sha256sum(&layer));
        let md = fs::metadata(out.join("sparse")).unwrap();
        assert_eq!(md.len(), 32 << 20, "{format} {version:?}");
        assert!(
            md.blocks() * 512 < (1 << 20),
            "{format} {version:?}: holes were filled ({} blocks)",
            md.blocks()
        );
        assert!(
            fs::read(out.join("sparse")).unwrap() == want,
            "{format} {version:?}: content differs"
        );
    }
}

/// A layer written by the `tar` crate (GNU headers, base-256 uid, long names through
/// `L` entries, PAX xattrs, hardlinks, fifos).
#[test]
fn tar_crate_layer_matches_tar_x() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, uid: u64, mtime: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid / 2);
        h.set_mtime(mtime);
        h.set_size(0);
        h
    };
    let mut h = header(tar::EntryType::Directory, 0o755, 0, 1_500_000_000);
    b.append_data(&mut h, "etc/", &[][..]).unwrap();
    let body = noise(200_000, 7);
    let mut h = header(tar::EntryType::Regular, 0o644, 3_000_000, 1_500_000_001);
    h.set_size(body.len() as u64);
    b.append_data(&mut h, "etc/big-uid", &body[..]).unwrap();
    let long_dir = format!("etc/{}/", "x".repeat(120));
    let mut h = header(tar::EntryType::Directory, 0o750, 0, 1_500_000_000);
    b.append_data(&mut h, &long_dir, &[][..]).unwrap();
    let long = format!("{long_dir}{}", "y".repeat(140));
    let mut h = header(tar::EntryType::Regular, 0o600, 1000, 1_500_000_002);
    h.set_size(4);
    b.append_data(&mut h, &long, &b"long"[..]).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.crate", &b"made by tar-rs"[..])])
        .unwrap();
    let mut h = header(tar::EntryType::Regular, 0o4750, 0, 1_500_000_003);
    h.set_size(3);
    b.append_data(&mut h, "etc/suid", &b"abc"[..]).unwrap();
    let mut h = header(tar::EntryType::Link, 0o4750, 0, 1_500_000_003);
    b.append_link(&mut h, "etc/suid-link", "etc/suid").unwrap();
    let mut h = header(tar::EntryType::Symlink, 0o777, 0, 1_500_000_004);
    b.append_link(&mut h, "etc/sym", "../etc/big-uid").unwrap();
    let mut h = header(tar::EntryType::Fifo, 0o600, 0, 1_500_000_005);
    b.append_data(&mut h, "etc/fifo", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 0, 1_500_000_006);
    b.append_data(&mut h, "etc/.wh.removed", &[][..]).unwrap();
    let layer_bytes = b.into_inner().unwrap();
    let layer = t.join("crate.tar");
    fs::write(&layer, &layer_bytes).unwrap();

    reference_extract(&layer, &t.join("ref"), "-x");
    let expected = expected_from_reference(&t.join("ref"));
    let report = ours(&layer, &t.join("ours"));
    assert_eq!(report.diff_id.hex(), sha256sum(&layer));
    assert_eq!(report.files, 3);
    assert_eq!(report.bytes, 200_000 + 4 + 3);
    assert_same(&t.join("ours"), &expected, "tar crate", false);
    if is_root() {
        let md = fs::metadata(t.join("ours/etc/big-uid")).unwrap();
        assert_eq!((md.uid(), md.gid()), (3_000_000, 1_500_000));
    }
}

/// The diff ID covers the whole uncompressed stream, including what follows the
/// end-of-archive blocks.
#[test]
fn diff_id_covers_trailing_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, "a", &b"hi"[..]).unwrap();
    let mut stream = b.into_inner().unwrap();
    stream.extend_from_slice(&[0u8; 4096]);
    stream.extend_from_slice(b"trailing bytes that some tools append");
    let report = unpack_layer(&stream[..], &tmp.path().join("d"), &UnpackOptions::default()).unwrap();
    assert_eq!(report.diff_id.hex(), hex::encode(Sha256::digest(&stream)));
    assert_eq!(report.uncompressed_size, stream.len() as u64);
    assert_eq!(fs::read(tmp.path().join("d/a")).unwrap(), b"hi");
}

/// Later entries replace earlier ones; directories merge; a file replacing a
/// directory removes the directory's tree.
#[test]
fn later_entries_replace_earlier_ones() {
    use strata_fixtures::hostile::RawTar;
    let tmp = tempfile::tempdir().unwrap();
    let layer = RawTar::new()
        .file(b"f", b"first")
        .file(b"f", b"second")
        .dir(b"d/")
        .file(b"d/one", b"1")
        .dir(b"d/")
        .file(b"d/two", b"2")
        .dir(b"gone/")
        .file(b"gone/inner", b"x")
        .file(b"gone", b"now a file")
        .symlink(b"s", b"f")
        .file(b"s", b"plain")
        .finish();
    let dest = tmp.path().join("d");
    let report = unpack_layer(&layer[..], &dest, &UnpackOptions::default()).unwrap();
    assert_eq!(report.entries, 11);
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"second");
    assert_eq!(fs::read(dest.join("d/one")).unwrap(), b"1");
    assert_eq!(fs::read(dest.join("d/two")).unwrap(), b"2");
    assert_eq!(fs::read(dest.join("gone")).unwrap(), b"now a file");
    assert!(fs::symlink_metadata(dest.join("s")).unwrap().is_file());
}

/// Unprivileged runs keep our owner, skip what needs privilege and say so.
#[test]
fn empty_and_minimal_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = unpack_layer(&b""[..], &tmp.path().join("e"), &UnpackOptions::default()).unwrap();
    assert_eq!(empty.diff_id.hex(), hex::encode(Sha256::digest(b"")));
    assert_eq!(empty.entries, 0);
    let zeros = [0u8; 1024];
    let r = unpack_layer(&zeros[..], &tmp.path().join("z"), &UnpackOptions::default()).unwrap();
    assert_eq!(r.diff_id.hex(), hex::encode(Sha256::digest(zeros)));
}

/// A destination that is setgid with a default ACL must not leak its group or ACL
/// into the layer: entries still get exactly the archive's owner and mode.
#[test]
fn inherited_group_and_default_acl_do_not_leak_into_the_layer() {
    use strata_fixtures::hostile::{RawHeader, RawTar};
    if !is_root() {
        eprintln!("skipped: needs root to chown the destination");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    std::os::unix::fs::chown(&dest, Some(0), Some(50)).unwrap();
    chmod(&dest, 0o2775);
    // Default ACL user::rwx group::r-x other::--- (posix_acl_xattr format).
    let entry = |tag: u16, perm: u16| {
        [
            &tag.to_le_bytes()[..],
            &perm.to_le_bytes(),
            &u32::MAX.to_le_bytes(),
        ]
        .concat()
    };
    let acl = [
        2u32.to_le_bytes().to_vec(),
        entry(0x01, 7),
        entry(0x04, 5),
        entry(0x20, 0),
    ]
    .concat();
    xattr::set(&dest, "system.posix_acl_default", &acl).unwrap();
    let layer = RawTar::new()
        .file(b"f", b"f")
        .entry(
            RawHeader {
                name: b"d/",
                kind: b'5',
                mode: 0o755,
                ..Default::default()
            },
            b"",
        )
        .file(b"d/g", b"g")
        .symlink(b"s", b"f")
        .entry(
            RawHeader {
                name: b"fifo",
                kind: b'6',
                mode: 0o644,
                ..Default::default()
            },
            b"",
        )
        .finish();
    unpack_layer(&layer[..], &dest, &UnpackOptions::default()).unwrap();
    for (rel, mode) in [("f", 0o644), ("d", 0o755), ("d/g", 0o644), ("fifo", 0o644)] {
        let md = fs::symlink_metadata(dest.join(rel)).unwrap();
        assert_eq!((md.mode() & 0o7777, md.gid()), (mode, 0), "{rel}");
    }
    assert_eq!(fs::symlink_metadata(dest.join("s")).unwrap().gid(), 0);
}
