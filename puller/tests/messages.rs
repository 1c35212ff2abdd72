//! Messages a person can act on: `puller load` of a file that is no archive says so
//! (without quoting the file), a refused connection is reported once, and `store gc`
//! says what its grace period kept and how to collect it now.

use crate::common::{ok, puller, store, store_ok};
use strata_fixtures as fx;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn load_of_a_file_that_is_not_an_archive_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "SECRET-LOOKING TEXT that is not an archive\n".repeat(50)).unwrap();
    let out = puller(&root, &["load", text.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("not an image archive: neither a tar file nor a gzip or zstd compressed one"),
        "{err}"
    );
    assert!(
        !err.contains("SECRET-LOOKING"),
        "the message quotes the file: {err}"
    );
}

#[test]
fn a_refused_connection_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = puller(&root, &["fetch", &format!("127.0.0.1:{port}/x/y:1")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("cannot connect: Connection refused"), "{line}");
    assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
    assert_eq!(
        line.matches(&format!("127.0.0.1:{port}/v2/")).count(),
        1,
        "{line}"
    );
    assert!(!line.contains("error sending request"), "{line}");
}

#[test]
fn store_gc_says_what_the_grace_period_kept_and_how_to_collect_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let img = fx::small_image(5, 2, false);
    let archive = dir.path().join("img.tar");
    fx::write_docker_save(&archive, &[(&img, &["strata/gc-note:1"][..])]);
    ok(puller(&root, &["load", archive.to_str().unwrap()]), "puller load");
    store_ok(&root, &["rm", "strata/gc-note:1"]);
    let out = store_ok(&root, &["gc"]);
    let blobs = 1 + img.layers.len() + 1; // config, layers, manifest
    assert!(
        out.contains(&format!("kept {blobs} unreferenced blobs (")),
        "{out}"
    );
    assert!(
        out.contains("younger than the grace period of 1h; `store gc --grace 0` collects them now"),
        "{out}"
    );
    // The collector allows a second of slack for the file system's coarse clock.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = store_ok(&root, &["gc", "--grace", "0"]);
    assert!(out.contains(&format!("removed {blobs} blobs")), "{out}");
    assert!(!out.contains("grace period"), "{out}");
    let _ = store(&root, &["fsck"]);
}

#[test]
fn load_of_an_8_gib_gnu_long_name_is_refused_within_1_gib_of_address_space() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let bomb = dir.path().join("bomb.tar.gz");
    std::fs::write(&bomb, fx::hostile::gzip_long_name_bomb(8 << 30)).unwrap();
    // RLIMIT_AS of 1 GiB: a reader that buffered the declared name would abort on its
    // allocation instead of answering.
    let out = std::process::Command::new("prlimit")
        .arg("--as=1073741824")
        .arg(env!("CARGO_BIN_EXE_puller"))
        .arg("--root")
        .arg(&root)
        .args(["load", bomb.to_str().unwrap()])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("GNU long name header") && err.contains("longer than the limit of 4096 bytes"),
        "{err}"
    );
}
