//! Unprivileged unpacks, from a thread that dropped to `nobody` (credentials are
//! per-thread on Linux and the writer thread inherits them): our owner is kept, device
//! nodes are refused or skipped, `trusted.*` xattrs are skipped and counted, opaque
//! directories fall back to `user.overlay.opaque`, read-only and mode-000 directories
//! still get their contents, and the layer store can remove what it made.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::process::{Gid, Uid};
use strata_fixtures::hostile::{RawHeader, RawTar};
use strata_store::{Digest, LayerStore, UnpackOptions, chain_id, unpack_layer};

const NOBODY: u32 = 65534;

fn as_nobody<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let (uid, gid) = (Uid::from_raw(NOBODY), Gid::from_raw(NOBODY));
            rustix::thread::set_thread_groups(&[]).unwrap();
            rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
            rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
            assert!(!rustix::process::geteuid().is_root());
            f()
        })
        .join()
        .unwrap()
    })
}

fn layer() -> Vec<u8> {
    let h = |name: &'static [u8], kind: u8, mode: u32| RawHeader {
        name,
        kind,
        mode,
        uid: 1234,
        gid: 1234,
        ..Default::default()
    };
    RawTar::new()
        .entry(h(b"ro/", b'5', 0o555), b"")
        .entry(h(b"ro/inside", b'0', 0o444), b"inside")
        .entry(h(b"locked/", b'5', 0o000), b"")
        .entry(h(b"locked/f", b'0', 0o600), b"f")
        .entry(h(b"setuid", b'0', 0o4755), b"#!")
        .pax(&[
            ("SCHILY.xattr.user.keep", b"1"),
            ("SCHILY.xattr.trusted.secret", b"2"),
        ])
        .entry(h(b"x", b'0', 0o644), b"x")
        .entry(h(b"opq/", b'5', 0o755), b"")
        .file(b"opq/.wh..wh..opq", b"")
        .file(b".wh.gone", b"")
        .device(b"dev/null", b'3', 1, 3)
        .entry(h(b"fifo", b'6', 0o600), b"")
        .finish()
}

fn owned_by_nobody(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir_in(dir).unwrap();
    std::os::unix::fs::chown(tmp.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    tmp
}

#[test]
fn unprivileged_unpack_keeps_our_owner_and_falls_back() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to drop to nobody");
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    fs::set_permissions(outer.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tmp = owned_by_nobody(outer.path());
    let dest = tmp.path().join("layer");
    let layer = layer();

    let refused =
        as_nobody(|| unpack_layer(&layer[..], &tmp.path().join("refused"), &UnpackOptions::default()));
    let err = refused.unwrap_err().to_string();
    assert!(err.contains("device"), "{err}");

    let report = as_nobody(|| {
        let opts = UnpackOptions::default();
        assert!(!opts.allow_devices, "devices default to off when not root");
        unpack_layer(
            &layer[..],
            &dest,
            &UnpackOptions {
                skip_devices: true,
                ..opts
            },
        )
        .unwrap()
    });
    assert_eq!(report.skipped_devices, 1);
    assert_eq!(report.skipped_xattrs, 1, "trusted.secret");
    assert!(report.overlay_userxattr);
    assert_eq!((report.whiteouts, report.opaque_dirs), (1, 1));

    for entry in walkdir::WalkDir::new(&dest) {
        let md = fs::symlink_metadata(entry.unwrap().path()).unwrap();
        assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY));
    }
    let mode = |rel: &str| fs::symlink_metadata(dest.join(rel)).unwrap().mode() & 0o7777;
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(mode("ro/inside"), 0o444);
    assert_eq!(mode("locked"), 0o000);
    assert_eq!(fs::read(dest.join("locked/f")).unwrap(), b"f");
    assert_eq!(mode("setuid"), 0o4755);
    assert_eq!(
        xattr::get(dest.join("x"), "user.keep").unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(xattr::get(dest.join("x"), "trusted.secret").unwrap(), None);
    assert_eq!(
        xattr::get(dest.join("opq"), "user.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(
        xattr::get(dest.join("opq"), "trusted.overlay.opaque").unwrap(),
        None
    );
    let gone = fs::symlink_metadata(dest.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert!(fs::symlink_metadata(dest.join("dev/null")).is_err());
    assert!(
        fs::symlink_metadata(dest.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(!dest.join(".wh.gone").exists() && !dest.join("opq/.wh..wh..opq").exists());
}

#[test]
fn unprivileged_layer_store_removes_read_only_trees() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to drop to nobody");
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    fs::set_permissions(outer.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tmp = owned_by_nobody(outer.path());
    let layer = layer();
    let diff = Digest::of(&layer);
    let chain = chain_id(None, &diff);
    as_nobody(|| {
        let opts = UnpackOptions {
            skip_devices: true,
            dedup_min_size: 0,
            ..Default::default()
        };
        let store = LayerStore::open(tmp.path()).unwrap().with_unpack_options(opts);
        let report = store.unpack(&chain, &diff, &layer[..]).unwrap();
        assert!(report.overlay_userxattr);
        // Mode 000 now: not even its owner can look inside.
        let locked = fs::symlink_metadata(store.diff_path(&chain).join("locked")).unwrap();
        assert_eq!(locked.mode() & 0o777, 0);
        assert!(fs::read_dir(store.diff_path(&chain).join("locked")).is_err());
        assert!(store.remove(&chain).unwrap());
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(store.root().join(".tmp")).unwrap().count(), 0);
        assert!(store.gc_pool().unwrap() > 0);
        // A failed unpack of a read-only tree is cleaned up too.
        let err = store
            .unpack(&chain, &Digest::of(b"wrong"), &layer[..])
            .unwrap_err();
        assert!(err.to_string().contains("diff id mismatch"), "{err}");
        assert_eq!(fs::read_dir(store.root().join(".tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(store.pool_dir()).unwrap().count(), 0);
    });
}
