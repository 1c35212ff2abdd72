//! `runner commit` end to end, as root: docker's commit options (`-a`, `-m`, `-c`) land
//! in the new image's config and history, an invalid change stores nothing, special
//! files survive, and a running container is committed only when paused (`-p`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use strata_fixtures::peers;

use crate::common::{runner, store_with_busybox};

fn inspect(root: &Path, image: &str) -> serde_json::Value {
    let out = peers::run_ok(
        Command::new(peers::bin("store"))
            .arg("--root")
            .arg(root)
            .args(["inspect", image]),
    );
    serde_json::from_str(&out).unwrap()
}

/// The store's blobs, by name.
fn blobs(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn commit_options_set_the_author_message_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let script = "set -e; echo kept > /data/new.txt; mkfifo /data/fifo; mknod /data/null c 1 3";
    peers::run_ok(runner(&root).args(["start", "--name", "c1", "bb:1", "--", "/bin/sh", "-c", script]));
    let id = peers::run_ok(runner(&root).args([
        "commit",
        "-a",
        "me",
        "-m",
        "msg",
        "-c",
        r#"CMD ["/bin/echo","hi"]"#,
        "-c",
        "ENV A=1",
        "-c",
        "EXPOSE 8080",
        "c1",
        "x:1",
    ]));
    let out = peers::output(runner(&root).args(["start", "--rm", "x:1"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "{}",
        peers::format_output(&out)
    );
    // The container's files, special ones included.
    let check =
        "cat /data/new.txt; test -p /data/fifo && echo fifo; test -c /data/null && echo null; echo $A";
    let out = peers::output(runner(&root).args(["start", "--rm", "x:1", "--", "/bin/sh", "-c", check]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kept\nfifo\nnull\n1\n",
        "{}",
        peers::format_output(&out)
    );
    let v = inspect(&root, "x:1");
    assert_eq!(v["id"].as_str(), Some(id.trim()), "{v:#}");
    let config = &v["config"];
    assert_eq!(config["author"], "me", "{config:#}");
    assert!(
        config["config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&"A=1".into()),
        "{config:#}"
    );
    assert_eq!(
        config["config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}})
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/echo", "hi"]));
    let last = config["history"].as_array().unwrap().last().unwrap();
    assert_eq!(last["comment"], "msg", "{last:#}");
    assert_eq!(last["author"], "me", "{last:#}");
    // As docker: the container's command.
    assert_eq!(last["created_by"], format!("/bin/sh -c {script}"), "{last:#}");
    // The original is untouched.
    let bb = inspect(&root, "bb:1");
    assert_eq!(bb["config"]["author"], "strata fixtures", "{bb:#}");
    assert!(bb["config"]["config"].get("ExposedPorts").is_none(), "{bb:#}");
    peers::run_ok(
        Command::new(peers::bin("store"))
            .arg("--root")
            .arg(&root)
            .arg("fsck"),
    );
}

#[test]
fn an_invalid_change_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    peers::run_ok(runner(&root).args([
        "start",
        "--name",
        "c2",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        "echo x > /x",
    ]));
    let before = blobs(&root);
    for (change, expected) in [
        ("RUN rm -rf /", "RUN is not a valid change instruction"),
        ("EXPOSE http", "invalid port"),
    ] {
        let out = peers::output(runner(&root).args(["commit", "-c", "ENV OK=1", "-c", change, "c2", "y:1"]));
        assert!(!out.status.success(), "{}", peers::format_output(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    assert_eq!(blobs(&root), before, "a refused commit stored blobs");
    let out = peers::output(
        Command::new(peers::bin("store"))
            .arg("--root")
            .arg(&root)
            .args(["inspect", "y:1"]),
    );
    assert!(!out.status.success(), "{}", peers::format_output(&out));
}

/// Stops a detached container when the test ends, passed or not.
struct Stop<'a>(&'a Path, &'static str);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = peers::output(runner(self.0).args(["stop", "-t", "0", self.1]));
    }
}

#[test]
fn a_running_container_is_committed_only_paused() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let id = peers::run_ok(runner(&root).args([
        "start",
        "-d",
        "--name",
        "up",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        "echo live > /data/live.txt; exec sleep 300",
    ]));
    let _stop = Stop(&root, "up");
    let written = root
        .join("containers")
        .join(id.trim())
        .join("upper/data/live.txt");
    for _ in 0..200 {
        if std::fs::read_to_string(&written).is_ok_and(|s| s == "live\n") {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let out = peers::output(runner(&root).args(["commit", "up", "r:1"]));
    assert!(!out.status.success(), "{}", peers::format_output(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("running"), "{stderr}");

    peers::run_ok(runner(&root).args(["commit", "-p", "up", "r:1"]));
    // Thawed afterwards: it still runs, and stops on a signal.
    let ps = peers::run_ok(runner(&root).args(["ps", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&ps).unwrap();
    assert_eq!(rows[0]["status"], "running", "{ps}");
    peers::run_ok(runner(&root).args(["stop", "-t", "0", "up"]));
    let out = peers::output(runner(&root).args(["start", "--rm", "r:1", "--", "/bin/cat", "/data/live.txt"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "live\n",
        "{}",
        peers::format_output(&out)
    );
}

#[test]
fn a_container_a_killed_commit_left_frozen_is_thawed_by_stop() {
    // `runner commit -p` SIGKILLed while the container was frozen left it frozen for good:
    // signals wait for a thaw, so `runner stop` gave up. The crash point, set up directly:
    // the freezer on, and the committer's marker there but unlocked (its holder died).
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let id = peers::run_ok(runner(&root).args([
        "start",
        "-d",
        "--name",
        "frozen",
        "bb:1",
        "--",
        "/bin/sleep",
        "300",
    ]));
    let id = id.trim();
    let _stop = Stop(&root, "frozen");
    let v1 = Path::new("/sys/fs/cgroup/freezer/strata")
        .join(id)
        .join("freezer.state");
    let (file, on) = if v1.exists() {
        (v1, "FROZEN")
    } else {
        (
            Path::new("/sys/fs/cgroup/strata").join(id).join("cgroup.freeze"),
            "1",
        )
    };
    std::fs::write(
        root.join("containers")
            .join(id)
            .join(strata_runner::FROZEN_MARKER),
        b"",
    )
    .unwrap();
    std::fs::write(&file, on).unwrap();

    peers::run_ok(runner(&root).args(["stop", "-t", "0", "frozen"]));
    let ps = peers::run_ok(runner(&root).args(["ps", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&ps).unwrap();
    assert_eq!(rows[0]["status"], "exited", "{ps}");
}
