//! What the puller's tests share: the `puller` and `store` commands on a store, and the
//! check that a command succeeded.

use std::path::Path;
use std::process::{Command, Output};

use strata_fixtures::peers;

/// `puller --root ROOT ARGS...`, run to the end.
pub fn puller(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_puller"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

/// `store --root ROOT ARGS...` (the workspace's `store` binary), run to the end.
pub fn store(root: &Path, args: &[&str]) -> Output {
    Command::new(peers::bin("store"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

/// Panics (naming `what`, with the status, stdout and stderr) unless `out` succeeded;
/// returns stdout.
pub fn ok(out: Output, what: &str) -> String {
    peers::assert_ok(&out, what)
}

/// [`store`] that must succeed; its stdout.
pub fn store_ok(root: &Path, args: &[&str]) -> String {
    ok(store(root, args), &format!("store {args:?}"))
}
