//! The `store` binary end to end: ls, inspect by prefix (unique and ambiguous), history, tag, rm, gc, du.

use std::path::Path;
use std::process::Command;

use strata_fixtures as fx;
use strata_store::{LoadOptions, Store, load};

fn store_cmd(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_store"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let out = store_cmd(root, args);
    assert!(
        out.status.success(),
        "store {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Loads small distinct images until two image IDs share their first hex digit.
fn populate(root: &Path) -> Vec<String> {
    let store = Store::open(root).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut ids: Vec<String> = Vec::new();
    for seed in 0..40u64 {
        let img = fx::small_image(100 + seed, 1, false);
        let path = dir.path().join(format!("{seed}.tar"));
        let tag = format!("img{seed}:v1");
        fx::write_docker_save(&path, &[(&img, &[tag.as_str()][..])]);
        load(&store, &path, &LoadOptions::default()).unwrap();
        ids.push(img.id().trim_start_matches("sha256:").to_string());
        let first: Vec<char> = ids.iter().map(|i| i.chars().next().unwrap()).collect();
        if seed >= 3 && first.iter().any(|c| first.iter().filter(|d| *d == c).count() > 1) {
            break;
        }
    }
    ids
}

#[test]
fn ls_json_lists_images_with_full_ids() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let ids = populate(&root);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&ok(&root, &["ls", "--json"])).unwrap();
    assert_eq!(rows.len(), ids.len());
    for key in ["repository", "tag", "id", "digest", "created", "size"] {
        assert!(rows[0].get(key).is_some(), "missing {key}");
    }
    let listed: Vec<&str> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().trim_start_matches("sha256:"))
        .collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()));
    }
    let table = ok(&root, &["ls"]);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(table.contains(&ids[0][..12]));
}

#[test]
fn inspect_takes_unique_prefixes_and_names_ambiguous_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let ids = populate(&root);
    for id in &ids {
        let v: serde_json::Value = serde_json::from_str(&ok(&root, &["inspect", &id[..12]])).unwrap();
        assert_eq!(v["id"].as_str().unwrap(), format!("sha256:{id}"));
    }
    let c = ids
        .iter()
        .map(|i| &i[..1])
        .find(|p| ids.iter().filter(|i| i.starts_with(*p)).count() > 1)
        .unwrap();
    let n = ids.iter().filter(|i| i.starts_with(c)).count();
    let out = store_cmd(&root, &["inspect", c]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains(&format!("ambiguous prefix \"{c}\": matches")),
        "{err}"
    );
    // At least the image IDs (manifest IDs may share the prefix too).
    let count: usize = err
        .split("matches ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(count >= n, "{err}");
    let out = store_cmd(&root, &["inspect", "ffffffffffff0000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image"));
}

#[test]
fn tag_rm_gc_and_du() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let ids = populate(&root);
    ok(&root, &["tag", "img0:v1", "127.0.0.1:5000/t/copy:9"]);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&root, &["inspect", "127.0.0.1:5000/t/copy:9"])).unwrap();
    assert_eq!(v["id"].as_str().unwrap(), format!("sha256:{}", ids[0]));
    let du_before: serde_json::Value = serde_json::from_str(&ok(&root, &["du", "--json"])).unwrap();
    ok(&root, &["rm", "img0:v1"]);
    // Still tagged as the copy: nothing to collect yet.
    ok(&root, &["gc", "--grace", "0s"]);
    let du_mid: serde_json::Value = serde_json::from_str(&ok(&root, &["du", "--json"])).unwrap();
    assert_eq!(du_mid["blobs"], du_before["blobs"]);
    ok(&root, &["rm", &ids[0][..12]]);
    // `tag` touched the image's blobs (in use again): GC keeps what was touched within
    // its one second of clock slack, even with no grace.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&root, &["gc", "--grace", "0s"]);
    let du_after: serde_json::Value = serde_json::from_str(&ok(&root, &["du", "--json"])).unwrap();
    // config + layer + manifest gone, and the layer dir.
    assert_eq!(
        du_after["blobs"].as_u64().unwrap(),
        du_before["blobs"].as_u64().unwrap() - 3
    );
    assert_eq!(
        du_after["layers"].as_u64().unwrap(),
        du_before["layers"].as_u64().unwrap() - 1
    );
    ok(&root, &["fsck"]);
    let out = store_cmd(&root, &["inspect", &ids[0][..12]]);
    assert!(!out.status.success());
}

#[test]
fn fsck_finds_and_repairs_a_corrupt_blob() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let ids = populate(&root);
    let layer_blob = {
        let store = Store::open_read_only(&root).unwrap();
        let img = store
            .get_image(&format!("sha256:{}", ids[0]).parse().unwrap())
            .unwrap()
            .unwrap();
        let m = store.get_manifest(&img.manifests[0]).unwrap().unwrap();
        store.blobs().path(&m.layers[0])
    };
    let mut perms = std::fs::metadata(&layer_blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&layer_blob, perms).unwrap();
    let mut bytes = std::fs::read(&layer_blob).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&layer_blob, bytes).unwrap();
    let out = store_cmd(&root, &["fsck"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("corrupt blob"), "{text}");
    let _ = store_cmd(&root, &["fsck", "--repair"]);
    assert!(root.join("quarantine").read_dir().unwrap().count() == 1);
}

#[test]
fn a_writer_waits_for_the_holder_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let held = Store::open(&root).unwrap();
    let (pid, program) = Store::writer(&root).expect("the lock names its holder");
    assert_eq!(pid, std::process::id());
    assert!(std::env::current_exe().unwrap().ends_with(&program), "{program}");

    let mut gc = Command::new(env!("CARGO_BIN_EXE_store"))
        .arg("--root")
        .arg(&root)
        .args(["gc", "--grace", "0s"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(
        gc.try_wait().unwrap().is_none(),
        "gc must wait while the store is held"
    );
    drop(held);
    let out = gc.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("in use by {program} (pid {pid}); waiting")),
        "{stderr}"
    );
    assert_eq!(Store::writer(&root), None);
}

#[test]
fn history_lists_steps_newest_first_as_json_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let image = fx::busybox(fx::Flavor::Docker, fx::LayerCompression::Gzip);
    {
        let store = Store::open(&root).unwrap();
        let path = dir.path().join("busybox.tar");
        fx::write_docker_save(&path, &[(&image, &["busybox:hist"][..])]);
        load(&store, &path, &LoadOptions::default()).unwrap();
    }
    let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
    let mut want = config["history"].as_array().unwrap().clone();
    want.reverse();
    assert!(want.iter().any(|w| w["empty_layer"] == true));

    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&root, &["history", "busybox:hist", "--json"])).unwrap();
    assert_eq!(rows.len(), want.len());
    for (i, (row, w)) in rows.iter().zip(&want).enumerate() {
        for key in ["id", "created", "created_by", "size", "comment", "empty_layer"] {
            assert!(row.get(key).is_some(), "row {i} lacks {key}: {row}");
        }
        assert_eq!(row["created_by"], w["created_by"], "row {i}");
        assert_eq!(row["created"], w["created"], "row {i}");
        let empty = w["empty_layer"] == true;
        assert_eq!(row["empty_layer"], empty, "row {i}");
        assert_eq!(row["size"].as_u64().unwrap() == 0, empty, "row {i}: {row}");
        let id = if i == 0 {
            image.id()
        } else {
            "<missing>".to_string()
        };
        assert_eq!(row["id"], id.as_str(), "row {i}");
    }
    // By ID prefix too.
    let hex = image.id().trim_start_matches("sha256:").to_string();
    let by_prefix: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&root, &["history", &hex[..10], "--json"])).unwrap();
    assert_eq!(by_prefix, rows);

    let table = ok(&root, &["history", "busybox:hist"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), want.len() + 1, "{table}");
    let head: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        head,
        ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        "{table}"
    );
    assert!(lines[1].starts_with(&hex[..12]), "{table}");
    assert!(lines[2..].iter().all(|l| l.starts_with("<missing>")), "{table}");
    assert!(lines[1..].iter().all(|l| l.contains(" ago")), "{table}");
    // The long RUN step is cut to 45 characters; --no-trunc shows it whole.
    let run = want
        .iter()
        .find_map(|w| w["created_by"].as_str().filter(|c| c.starts_with("RUN")))
        .unwrap();
    assert!(run.chars().count() > 45);
    let cut: String = run.chars().take(44).chain(['…']).collect();
    assert!(table.contains(&cut) && !table.contains(run), "{table}");
    assert!(table.contains("0B"), "{table}");
    let full = ok(&root, &["history", "--no-trunc", "busybox:hist"]);
    assert!(full.contains(run) && full.contains(&image.id()), "{full}");

    let out = store_cmd(&root, &["history", "nosuch:tag"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: no such image") && err.lines().count() == 1,
        "{err}"
    );
}
