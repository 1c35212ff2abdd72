//! Whiteouts proven with a real overlay mount: layer 2 deletes a file and a directory
//! and makes a directory opaque; the mounted view of layer 2 over layer 1 hides them.

use std::fs;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};
use strata_fixtures::hostile::RawTar;
use strata_store::{Digest, LayerStore, chain_id};

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
    }
}

fn mount_overlay(lower: &[&Path], upper: Option<(&Path, &Path)>, at: &Path) -> Mounted {
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let mut data = format!("lowerdir={}", lowers.join(":"));
    if let Some((upper, work)) = upper {
        data.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    let flags = if upper.is_some() {
        MountFlags::empty()
    } else {
        MountFlags::RDONLY
    };
    let data = std::ffi::CString::new(data).unwrap();
    rustix::mount::mount("overlay", at, "overlay", flags, data.as_c_str()).unwrap();
    Mounted(at.to_path_buf())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn layers() -> (Vec<u8>, Vec<u8>) {
    let l1 = RawTar::new()
        .file(b"keep", b"keep")
        .file(b"delete-me", b"bye")
        .dir(b"dir-gone/")
        .file(b"dir-gone/a", b"a")
        .dir(b"dir-gone/deep/")
        .file(b"dir-gone/deep/b", b"b")
        .dir(b"opaque/")
        .file(b"opaque/old-1", b"1")
        .file(b"opaque/old-2", b"2")
        .dir(b"mixed/")
        .file(b"mixed/stay", b"stay")
        .file(b"mixed/go", b"go")
        .finish();
    let l2 = RawTar::new()
        .file(b".wh.delete-me", b"")
        .file(b".wh.dir-gone", b"")
        .dir(b"opaque/")
        .file(b"opaque/.wh..wh..opq", b"")
        .file(b"opaque/new", b"new")
        .dir(b"mixed/")
        .file(b"mixed/.wh.go", b"")
        .file(b"mixed/added", b"added")
        .finish();
    (l1, l2)
}

#[test]
fn whiteouts_hide_lower_content_in_a_real_overlay() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting an overlay needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = LayerStore::open(&tmp.path().join("store"))
        .unwrap()
        .with_sync(false);
    let (l1, l2) = layers();
    let d1 = Digest::of(&l1);
    let d2 = Digest::of(&l2);
    let c1 = chain_id(None, &d1);
    let c2 = chain_id(Some(&c1), &d2);
    store.unpack(&c1, &d1, &l1[..]).unwrap();
    let r2 = store.unpack(&c2, &d2, &l2[..]).unwrap();
    assert_eq!((r2.whiteouts, r2.opaque_dirs), (3, 1));
    assert!(!r2.overlay_userxattr);
    // No `.wh.` file survives in the diff.
    for entry in walkdir::WalkDir::new(store.diff_path(&c2)) {
        let entry = entry.unwrap();
        assert!(
            !entry.file_name().to_string_lossy().starts_with(".wh."),
            "{:?}",
            entry.path()
        );
    }

    // Read-only view (two lowerdirs, upper first).
    let view = tmp.path().join("view");
    fs::create_dir(&view).unwrap();
    {
        let _m = mount_overlay(&[&store.diff_path(&c2), &store.diff_path(&c1)], None, &view);
        assert_eq!(names(&view), ["keep", "mixed", "opaque"]);
        assert_eq!(names(&view.join("opaque")), ["new"]);
        assert_eq!(names(&view.join("mixed")), ["added", "stay"]);
        assert_eq!(fs::read(view.join("keep")).unwrap(), b"keep");
        assert!(fs::symlink_metadata(view.join("delete-me")).is_err());
        assert!(fs::symlink_metadata(view.join("dir-gone/a")).is_err());
    }

    // A container-style mount (upper + work) sees the same and can recreate a deleted
    // name.
    let (upper, work, root) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("root"),
    );
    for d in [&upper, &work, &root] {
        fs::create_dir(d).unwrap();
    }
    let _m = mount_overlay(
        &[&store.diff_path(&c2), &store.diff_path(&c1)],
        Some((&upper, &work)),
        &root,
    );
    assert_eq!(names(&root), ["keep", "mixed", "opaque"]);
    fs::create_dir(root.join("dir-gone")).unwrap();
    assert!(names(&root.join("dir-gone")).is_empty());
}
