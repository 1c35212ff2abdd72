//! What the store's tests share: a file's kind by name, and the name of a test for running
//! this binary again as a child process with just that test.

use std::fs;
use std::os::unix::fs::FileTypeExt;

/// The kind of a file, as the snapshots compare it.
pub fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "other"
    }
}

/// The name libtest gives the test function `name` of the module whose `module_path!()` is
/// `module`: its path below the crate root (`unpack_layers::child_process_helper`), which is
/// what `--exact` matches when a test runs this binary again as a child process.
pub fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}
