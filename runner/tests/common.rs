//! What the runner's tests share: a store with an image in it, the `runner` command.

use std::path::{Path, PathBuf};
use std::process::Command;

use strata_fixtures::peers;
use strata_fixtures::{Flavor, Image, LayerCompression, busybox};

/// Whether the tests can run here: root (namespaces, mounts); outside CI a SKIP line
/// otherwise.
pub fn can_run() -> bool {
    if !rustix::process::geteuid().is_root() {
        assert!(!peers::ci(), "runner tests need root in CI");
        eprintln!("SKIP: runner tests need root");
        return false;
    }
    true
}

/// Loads `img` into the store at `root` (created when missing) as `tag`.
pub fn load(root: &Path, img: &Image, tag: &str) {
    let archive = root.with_extension(format!("{}.tar", tag.replace([':', '/'], "_")));
    strata_fixtures::write_docker_save(&archive, &[(img, &[tag])]);
    let store = strata_store::Store::open(root).unwrap();
    strata_store::load(&store, &archive, &strata_store::LoadOptions::default()).unwrap();
}

/// A store holding the busybox fixture as `bb:1`; `None` (a SKIP line) when not root
/// outside CI.
pub fn store_with_busybox(dir: &Path) -> Option<PathBuf> {
    if !can_run() {
        return None;
    }
    let root = dir.join("store");
    load(&root, &busybox(Flavor::Docker, LayerCompression::Gzip), "bb:1");
    Some(root)
}

/// `runner --root ROOT`.
pub fn runner(root: &Path) -> Command {
    let mut c = Command::new(peers::bin("runner"));
    c.arg("--root").arg(root);
    c
}
