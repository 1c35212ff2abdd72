//! `runner start` end to end, as root: the image's busybox runs as PID 1 of its own PID
//! namespace in an overlay of the store's unpacked layers, with its own hostname,
//! network and mounts, `no_new_privs`, and its exit code passed through.

use std::path::Path;
use std::process::Command;

use strata_fixtures::peers;

use crate::common::{runner, store_with_busybox};

#[test]
fn a_container_runs_as_pid_1_in_its_own_namespaces_and_passes_its_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let script = "echo pid=$$; hostname; echo foo=$FOO; pwd; grep -e NoNewPrivs -e CapBnd -e CapEff /proc/self/status; \
                  ls /sys/class/net; ls -a /; ls /dev; echo cg=$(grep :devices: /proc/self/cgroup | cut -d: -f3); exit 7";
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "--hostname",
        "box",
        "--env",
        "FOO=bar",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{}", peers::format_output(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..4], ["pid=1", "box", "foo=bar", "/data"], "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    // docker's default capabilities, no more.
    assert!(stdout.contains("CapBnd:\t00000000a80425fb"), "{stdout}");
    assert!(stdout.contains("CapEff:\t00000000a80425fb"), "{stdout}");
    // Its own network namespace: eth0 on the bridge (the default network) and lo.
    assert_eq!(lines[7..9], ["eth0", "lo"], "{stdout}");
    // The image's root, not the host's: no host directories, no pivot leftovers.
    assert!(
        stdout.contains("\nbin\n") && stdout.contains("\ndata\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("strata-old-root") && !stdout.contains("\nwork\n"),
        "{stdout}"
    );
    assert!(stdout.contains("null") && stdout.contains("urandom"), "{stdout}");
    // A cgroup namespace rooted at the container's own group.
    assert!(stdout.contains("\ncg=/\n"), "{stdout}");
    // --rm: nothing left but the shared (empty) mount point, and no mount on the host.
    let left: Vec<_> = std::fs::read_dir(root.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, [".rootfs"]);
    assert_eq!(
        std::fs::read_dir(root.join("containers/.rootfs"))
            .unwrap()
            .count(),
        0
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(root.to_str().unwrap()), "{mounts}");
}

#[test]
fn writes_stay_in_their_container_and_ps_and_rm_manage_it() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let out = peers::output(runner(&root).args([
        "start",
        "--name",
        "writer",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        "echo x > /data/keep.txt; echo y > /new",
    ]));
    assert!(out.status.success(), "{}", peers::format_output(&out));
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        "cat /data/keep.txt; ls /new",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kept\n",
        "{}",
        peers::format_output(&out)
    );
    assert_ne!(out.status.code(), Some(0), "/new leaked into another container");
    let ps = peers::run_ok(runner(&root).args(["ps", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&ps).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{ps}");
    assert_eq!(rows[0]["name"], "writer");
    assert_eq!(rows[0]["status"], "exited");
    assert_eq!(rows[0]["exit_code"], 0);
    let id = rows[0]["id"].as_str().unwrap();
    // The container's own writes are in its upper directory.
    let upper = root.join("containers").join(id).join("upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("data/keep.txt")).unwrap(),
        "x\n"
    );
    peers::run_ok(runner(&root).args(["rm", "writer"]));
    assert!(!root.join("containers").join(id).exists());
    let out = peers::output(runner(&root).args(["rm", "writer"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such container"));
}

#[test]
fn unknown_images_and_missing_programs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let out = peers::output(runner(&root).args(["start", "--rm", "nosuch:1"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("nosuch"), "{err}");
    let out = peers::output(runner(&root).args(["start", "--rm", "bb:1", "--", "/no/such/program"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/program"), "{err}");
}

#[test]
fn memory_and_pids_limits_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    // dd touches every page of its 256 MiB buffer: over a 32 MiB limit it is killed.
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "--memory",
        "32m",
        "bb:1",
        "--",
        "/bin/dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=256M",
        "count=1",
    ]));
    assert_eq!(out.status.code(), Some(137), "{}", peers::format_output(&out));
    // The same without a limit succeeds.
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "bb:1",
        "--",
        "/bin/dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=256M",
        "count=1",
    ]));
    assert!(out.status.success(), "{}", peers::format_output(&out));
    // Eight processes at most: starting twenty fails.
    let script = "n=0; for i in $(seq 20); do sleep 2 & n=$((n+1)); done; wait; echo started";
    let out = peers::output(runner(&root).args([
        "start", "--rm", "--pids", "8", "bb:1", "--", "/bin/sh", "-c", script,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("can't fork") || stderr.contains("Resource temporarily unavailable"),
        "{}",
        peers::format_output(&out)
    );
    // The container's groups are gone afterwards.
    for h in [
        "/sys/fs/cgroup/strata",
        "/sys/fs/cgroup/memory/strata",
        "/sys/fs/cgroup/pids/strata",
    ] {
        if let Ok(entries) = std::fs::read_dir(h) {
            let left: Vec<_> = entries.flatten().filter(|e| e.path().is_dir()).collect();
            assert!(left.is_empty(), "cgroups left in {h}: {left:?}");
        }
    }
    // Bad values are refused before anything starts.
    let out = peers::output(runner(&root).args(["start", "--rm", "--memory", "lots", "bb:1"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid byte count"));
}

#[test]
fn detached_containers_run_in_the_background_and_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let id = peers::run_ok(runner(&root).args([
        "start",
        "--detach",
        "--name",
        "bg",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        "echo up; exec sleep 300",
    ]));
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let ps = peers::run_ok(runner(&root).args(["ps", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&ps).unwrap();
    assert_eq!(rows[0]["status"], "running", "{ps}");
    // Its output goes to the log.
    let log = root.join("containers").join(&id).join("log");
    for _ in 0..100 {
        if std::fs::read_to_string(&log).unwrap_or_default().contains("up") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "up\n");
    let out = peers::output(runner(&root).args(["rm", "bg"]));
    assert!(!out.status.success(), "removed a running container");
    // sleep, as the PID namespace's init, has no SIGTERM handler: SIGKILL after 1 s.
    peers::run_ok(runner(&root).args(["stop", "--time", "1", &id[..12]]));
    let ps = peers::run_ok(runner(&root).args(["ps", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&ps).unwrap();
    assert_eq!(rows[0]["status"], "exited", "{ps}");
    assert_eq!(rows[0]["exit_code"], 137, "{ps}");
    peers::run_ok(runner(&root).args(["rm", "bg"]));
    // --detach --rm: gone after it stops.
    let id = peers::run_ok(runner(&root).args(["start", "-d", "--rm", "bb:1", "--", "/bin/sleep", "300"]));
    peers::run_ok(runner(&root).args(["stop", "-t", "0", id.trim()]));
    for _ in 0..100 {
        if !root.join("containers").join(id.trim()).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!root.join("containers").join(id.trim()).exists());
}

#[test]
fn a_container_runs_as_the_user_asked_for_without_capabilities() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let script = "id -u; id -g; echo $HOME; grep CapEff /proc/self/status; touch /etc/x 2>&1 || echo denied";
    let out = peers::output(runner(&root).args([
        "start", "--rm", "--user", "nobody", "bb:1", "--", "/bin/sh", "-c", script,
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", peers::format_output(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..3], ["65534", "65534", "/nonexistent"], "{stdout}");
    assert_eq!(lines[3], "CapEff:\t0000000000000000", "{stdout}");
    assert!(stdout.trim_end().ends_with("denied"), "{stdout}");
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "-u",
        "1234:5678",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        "id -u; id -g",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1234\n5678\n",
        "{}",
        peers::format_output(&out)
    );
    let out = peers::output(runner(&root).args(["start", "--rm", "-u", "nosuch", "bb:1"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown user \"nosuch\""),
        "{}",
        peers::format_output(&out)
    );
}

#[test]
fn commit_makes_an_image_of_a_containers_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    // A new file, a hard link, a deleted file (a whiteout), and a directory replaced
    // (an opaque directory).
    let script = "set -e; echo new > /data/new.txt; ln /data/new.txt /data/hard.txt; rm /data/layer2.txt; \
                  rm -r /opaque; mkdir /opaque; echo fresh > /opaque/only.txt";
    peers::run_ok(runner(&root).args(["start", "--name", "c1", "bb:1", "--", "/bin/sh", "-c", script]));
    let id = peers::run_ok(runner(&root).args(["commit", "c1", "committed:1"]));
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let check = "cat /data/new.txt /data/hard.txt; ls /data/layer2.txt 2>/dev/null || echo gone; ls /opaque; \
                 cat /data/keep.txt";
    let out =
        peers::output(runner(&root).args(["start", "--rm", "committed:1", "--", "/bin/sh", "-c", check]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "new\nnew\ngone\nonly.txt\nkept\n",
        "{}",
        peers::format_output(&out)
    );
    // The original image is untouched, and the store is consistent.
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        "ls /opaque /data/layer2.txt",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/data/layer2.txt\n\n/opaque:\nnew.txt\n",
        "{}",
        peers::format_output(&out)
    );
    peers::run_ok(
        Command::new(peers::bin("store"))
            .arg("--root")
            .arg(&root)
            .arg("fsck"),
    );
    let inspect = peers::run_ok(
        Command::new(peers::bin("store"))
            .arg("--root")
            .arg(&root)
            .args(["inspect", "committed:1"]),
    );
    assert!(inspect.contains(id.trim()), "{inspect}");
}

/// A committed image is a real image: `puller save` → `docker load` → `docker run`.
#[test]
fn docker_runs_a_committed_image() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let Some(d) = peers::Dockerd::shared() else { return };
    peers::run_ok(runner(&root).args([
        "start",
        "--name",
        "c2",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        "echo committed by strata > /data/note.txt",
    ]));
    peers::run_ok(runner(&root).args(["commit", "c2", "strata-committed:1"]));
    let archive = tmp.path().join("committed.tar");
    peers::run_ok(
        Command::new(peers::bin("puller"))
            .arg("--root")
            .arg(&root)
            .args(["save", "strata-committed:1", "--output"])
            .arg(&archive),
    );
    d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
    let out = d.docker_ok([
        "run",
        "--rm",
        "--network",
        "none",
        "strata-committed:1",
        "cat",
        "/data/note.txt",
    ]);
    assert_eq!(out.trim(), "committed by strata");
    d.docker_ok(["rmi", "strata-committed:1"]);
}

/// An exported container is a bundle runc and crun run as `runner start` would: the
/// same command and working directory, on the container's own files.
#[test]
fn runc_and_crun_run_an_exported_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    if peers::require("runc").is_none() {
        return;
    }
    let script = "cat note.txt 2>/dev/null || echo none; echo written by $(hostname) > note.txt; \
                  grep Seccomp: /proc/self/status";
    let out = peers::run_ok(runner(&root).args([
        "start",
        "--name",
        "b2",
        "--hostname",
        "bee",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]));
    assert_eq!(out, "none\nSeccomp:\t2\n");
    let bundle = tmp.path().join("bundle");
    peers::run_ok(runner(&root).args(["export", "b2"]).arg(&bundle));
    let out = peers::output(
        Command::new("runc")
            .arg("--root")
            .arg(tmp.path().join("runc-state"))
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg("strata-b2"),
    );
    let _ = rustix::mount::unmount(
        bundle.join("rootfs").as_path(),
        rustix::mount::UnmountFlags::DETACH,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "written by bee\nSeccomp:\t2\n",
        "{}",
        peers::format_output(&out)
    );
    // Exporting a running container is refused.
    let out =
        peers::output(runner(&root).args(["start", "-d", "--name", "up", "bb:1", "--", "/bin/sleep", "300"]));
    assert!(out.status.success(), "{}", peers::format_output(&out));
    let refused = peers::output(runner(&root).args(["export", "up"]).arg(tmp.path().join("b3")));
    peers::run_ok(runner(&root).args(["stop", "-t", "0", "up"]));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is running"),
        "{}",
        peers::format_output(&refused)
    );
    // crun needs the unified cgroup hierarchy out of its way on this hybrid host (PEERS.md).
    if peers::require("crun").is_some() {
        peers::run_ok(runner(&root).args(["export", "b2"]).arg(&bundle));
        let crun = format!(
            "umount /sys/fs/cgroup/unified 2>/dev/null; crun --root {} run --bundle {} strata-b2c",
            tmp.path().join("crun-state").display(),
            bundle.display()
        );
        let out = peers::output(Command::new("unshare").args(["-m", "sh", "-c", &crun]));
        let _ = rustix::mount::unmount(
            bundle.join("rootfs").as_path(),
            rustix::mount::UnmountFlags::DETACH,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "written by bee\nSeccomp:\t2\n",
            "{}",
            peers::format_output(&out)
        );
    }
}

/// `runner start` finds an unpacked image without opening the metadata database, from
/// the store's cache: a tag moved or an image removed since is seen at once.
#[test]
fn a_moved_tag_or_a_removed_image_is_seen_by_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let run = |check: &str| {
        peers::output(runner(&root).args(["start", "--rm", "bb:1", "--", "/bin/sh", "-c", check]))
    };
    // Twice: the second start comes from the cache.
    for _ in 0..2 {
        let out = run("cat /data/keep.txt");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "kept\n",
            "{}",
            peers::format_output(&out)
        );
    }
    assert!(root.join("cache/runnable").read_dir().unwrap().next().is_some());
    // bb:1 now names another image (the probe image has no /data).
    crate::common::load(
        &root,
        &strata_fixtures::probe_image(strata_fixtures::Flavor::Docker, |_| {}),
        "bb:1",
    );
    let out = run("ls /usr/local/bin/probe /data 2>&1; true");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/usr/local/bin/probe") && stdout.contains("No such file"),
        "{}",
        peers::format_output(&out)
    );
    peers::run_ok(
        Command::new(peers::bin("store"))
            .arg("--root")
            .arg(&root)
            .args(["rm", "bb:1"]),
    );
    let out = run("true");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bb:1"),
        "{}",
        peers::format_output(&out)
    );
}

/// Signals sent to `runner start` in the foreground reach the container's first process
/// (which is in a session of its own, away from the caller's terminal).
#[test]
fn signals_to_a_foreground_start_reach_the_container() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let script = "trap 'echo got TERM; exit 3' TERM; echo ready; sleep 100 & wait";
    let mut child = runner(&root)
        .args(["start", "--rm", "bb:1", "--", "/bin/sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "got TERM\n");
    assert_eq!(status.code(), Some(3));
}

/// A container keeps what it runs on: after its image's tag is removed, `store gc`
/// leaves the container's layers and image config, and the container still exports
/// and runs (as docker keeps an image while a container uses it).
#[test]
fn gc_keeps_the_layers_of_containers() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    peers::run_ok(runner(&root).args(["start", "--name", "keep", "bb:1", "--", "/bin/true"]));
    let store = |args: &[&str]| {
        peers::run_ok(
            Command::new(peers::bin("store"))
                .arg("--root")
                .arg(&root)
                .args(args),
        )
    };
    store(&["rm", "bb:1"]);
    // Past GC's second of slack on file times: only the container keeps the image now.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    store(&["gc", "--grace", "0s"]);
    let ps = peers::run_ok(runner(&root).args(["ps", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&ps).unwrap();
    let id = rows[0]["id"].as_str().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("containers").join(id).join("config.json")).unwrap())
            .unwrap();
    for l in config["layers"].as_array().unwrap() {
        assert!(
            Path::new(l.as_str().unwrap()).join("bin").exists() || Path::new(l.as_str().unwrap()).is_dir(),
            "{l}"
        );
    }
    let image = config["image_id"].as_str().unwrap().trim_start_matches("sha256:");
    assert!(root.join("blobs/sha256").join(image).is_file());
    store(&["fsck"]);
    // Once the container is gone, so is what only it kept.
    peers::run_ok(runner(&root).args(["rm", "keep"]));
    // GC keeps a second of slack on file times.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    store(&["gc", "--grace", "0s"]);
    assert!(!root.join("blobs/sha256").join(image).exists());
}

/// `kill -s`, `logs [-f]`, `wait` and `inspect` on a detached container, as docker's.
#[test]
fn kill_logs_wait_and_inspect_a_detached_container() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let script = "trap 'echo got USR1; exit 5' USR1; echo started; while :; do sleep 0.1; done";
    let id = peers::run_ok(runner(&root).args([
        "start", "-d", "--name", "lc", "bb:1", "--", "/bin/sh", "-c", script,
    ]));
    let id = id.trim();
    // Its first line, then follow until it exits.
    for _ in 0..100 {
        if peers::run_ok(runner(&root).args(["logs", "lc"])) == "started\n" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let follow = runner(&root)
        .args(["logs", "-f", "lc"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let inspect = peers::run_ok(runner(&root).args(["inspect", &id[..12]]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["id"], id);
    assert_eq!(v[0]["name"], "lc");
    assert_eq!(v[0]["state"]["status"], "running");
    let waiter = runner(&root)
        .args(["wait", "lc"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    peers::run_ok(runner(&root).args(["kill", "-s", "USR1", "lc"]));
    let waited = waiter.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&waited.stdout), "5\n");
    let followed = follow.wait_with_output().unwrap();
    assert!(followed.status.success());
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "started\ngot USR1\n");
    // Not running any more: kill is an error; a bad signal too.
    let out = peers::output(runner(&root).args(["kill", "lc"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{}",
        peers::format_output(&out)
    );
    let out = peers::output(runner(&root).args(["kill", "-s", "NOPE", "lc"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown signal"),
        "{}",
        peers::format_output(&out)
    );
    // A foreground container has no log.
    peers::run_ok(runner(&root).args(["start", "--name", "fg", "bb:1", "--", "/bin/true"]));
    let out = peers::output(runner(&root).args(["logs", "fg"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no log"),
        "{}",
        peers::format_output(&out)
    );
}

/// `--entrypoint`, `-w`, `--read-only` and `--cpus`, as `docker run` takes them.
#[test]
fn entrypoint_workdir_read_only_and_cpus() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let run = |args: &[&str]| peers::output(runner(&root).args(["start", "--rm"]).args(args));
    let out = run(&["--entrypoint", "/bin/echo", "bb:1", "--", "from", "entrypoint"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from entrypoint\n",
        "{}",
        peers::format_output(&out)
    );
    // The image's Cmd goes with its entrypoint: /bin/echo alone prints an empty line.
    let out = run(&["--entrypoint", "/bin/echo", "bb:1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\n",
        "{}",
        peers::format_output(&out)
    );
    let out = run(&["-w", "/usr/share", "bb:1", "--", "/bin/pwd"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/usr/share\n",
        "{}",
        peers::format_output(&out)
    );
    let out = run(&["-w", "relative", "bb:1"]);
    assert!(!out.status.success());
    let script = "touch /data/x 2>&1; touch /dev/shm/y && echo shm ok";
    let out = run(&["--read-only", "bb:1", "--", "/bin/sh", "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Read-only file system") && stdout.contains("shm ok"),
        "{}",
        peers::format_output(&out)
    );
    // Without --read-only the same write works.
    let out = run(&["bb:1", "--", "/bin/sh", "-c", "touch /data/x && echo written"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "written\n");
    // Half a CPU: a CFS quota of 50 ms per 100 ms period on the container's group.
    let id = peers::run_ok(runner(&root).args([
        "start",
        "-d",
        "--rm",
        "--cpus",
        "0.5",
        "bb:1",
        "--",
        "/bin/sleep",
        "30",
    ]));
    let id = id.trim();
    let quota = ["/sys/fs/cgroup/strata", "/sys/fs/cgroup/cpu/strata"]
        .iter()
        .find_map(|h| {
            let g = Path::new(h).join(id);
            std::fs::read_to_string(g.join("cpu.max"))
                .or_else(|_| std::fs::read_to_string(g.join("cpu.cfs_quota_us")))
                .ok()
        })
        .unwrap_or_default();
    peers::run_ok(runner(&root).args(["stop", "-t", "0", id]));
    assert!(
        quota.trim() == "50000" || quota.trim() == "50000 100000",
        "{quota:?}"
    );
    let out = run(&["--cpus", "lots", "bb:1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid number of CPUs"));
}

/// `-v` binds (read-write and read-only), named volumes that outlive containers, and
/// `--tmpfs`; a mount target is resolved inside the image, whose symlinks cannot send it
/// to the host.
#[test]
fn volumes_binds_and_tmpfs() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let host = tmp.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("in.txt"), "from the host\n").unwrap();
    let h = host.to_str().unwrap();
    let run = |args: &[&str], script: &str| {
        peers::output(
            runner(&root)
                .args(["start", "--rm"])
                .args(args)
                .args(["bb:1", "--", "/bin/sh", "-c", script]),
        )
    };
    let out = run(
        &["-v", &format!("{h}:/mnt/shared")],
        "cat /mnt/shared/in.txt; echo out > /mnt/shared/out.txt",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from the host\n",
        "{}",
        peers::format_output(&out)
    );
    assert_eq!(std::fs::read_to_string(host.join("out.txt")).unwrap(), "out\n");
    let out = run(
        &["-v", &format!("{h}:/mnt/shared:ro")],
        "cat /mnt/shared/in.txt; touch /mnt/shared/no 2>&1",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("from the host") && stdout.contains("Read-only file system"),
        "{stdout}"
    );
    assert!(!host.join("no").exists());
    // A named volume keeps its data across containers.
    run(&["-v", "keep:/keep"], "echo kept > /keep/file");
    let out = run(&["-v", "keep:/elsewhere"], "cat /elsewhere/file");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kept\n",
        "{}",
        peers::format_output(&out)
    );
    assert_eq!(peers::run_ok(runner(&root).args(["volume", "ls"])), "keep\n");
    // In use by a stopped container: not removable until the container is gone.
    peers::run_ok(runner(&root).args([
        "start",
        "--name",
        "user",
        "-v",
        "keep:/keep",
        "bb:1",
        "--",
        "/bin/true",
    ]));
    let out = peers::output(runner(&root).args(["volume", "rm", "keep"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is used by container"),
        "{}",
        peers::format_output(&out)
    );
    peers::run_ok(runner(&root).args(["rm", "user"]));
    peers::run_ok(runner(&root).args(["volume", "rm", "keep"]));
    // --tmpfs: a tmpfs, gone with the container.
    let out = run(
        &["--tmpfs", "/scratch"],
        "grep ' /scratch ' /proc/mounts | cut -d' ' -f3",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tmpfs\n",
        "{}",
        peers::format_output(&out)
    );
    // /data/escape -> ../../../../<host dir>: resolved inside the container's root.
    let outside = tmp.path().join("outside");
    let target = format!("../../../../../../../..{}", outside.display());
    peers::run_ok(runner(&root).args([
        "start",
        "--name",
        "mk",
        "bb:1",
        "--",
        "/bin/ln",
        "-s",
        &target,
        "/data/escape",
    ]));
    peers::run_ok(runner(&root).args(["commit", "mk", "bb:escape"]));
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "-v",
        &format!("{h}:/data/escape/x"),
        "bb:escape",
        "--",
        "/bin/ls",
        "/data/escape/x",
    ]));
    assert!(out.status.success(), "{}", peers::format_output(&out));
    assert!(!outside.exists(), "a mount target left the container's root");
}

/// `start -it`: the container's shell runs on a pseudo-terminal of its own (its
/// controlling terminal), driven from the caller's terminal, itself a pty here.
#[test]
fn an_interactive_shell_on_a_terminal() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap()
    };
    let mut child = Command::new("setsid")
        .args(["--ctty", "--wait"])
        .arg(peers::bin("runner"))
        .arg("--root")
        .arg(&root)
        .args(["start", "--rm", "-it", "bb:1", "--", "/bin/sh"])
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(master);
    let mut reader = master.try_clone().unwrap();
    let read = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&all).contains("done-4") {
                break;
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    master
        .write_all(b"echo term=$TERM; [ -t 0 ] && echo is-a-tty; echo done-$((2+2)); exit 4\n")
        .unwrap();
    let status = child.wait().unwrap();
    let out = read.join().unwrap();
    assert!(out.contains("term=xterm") && out.contains("is-a-tty"), "{out}");
    assert_eq!(status.code(), Some(4), "{out}");
}

/// `exec -it` under tmux (a real terminal): an interactive shell in a running container,
/// on a terminal of its own with the caller's window size, resized with it (SIGWINCH).
#[test]
fn exec_it_runs_an_interactive_shell_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let id = peers::run_ok(runner(&root).args([
        "start",
        "-d",
        "--network",
        "none",
        "--name",
        "tty",
        "bb:1",
        "--",
        "sleep",
        "300",
    ]));
    let socket = format!("strata-exec-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let out = peers::output(Command::new("tmux").arg("-L").arg(&socket).args(args));
        assert!(out.status.success(), "{}", peers::format_output(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let exec = format!(
        "{} --root {} exec -it tty /bin/sh; echo exec-exited-$?; sleep 30",
        peers::bin("runner").display(),
        root.display()
    );
    tmux(&["new-session", "-d", "-x", "100", "-y", "30", "-s", "t", &exec]);
    let screen = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = tmux(&["capture-pane", "-p", "-t", "t"]);
            if text.contains(want) || std::time::Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    tmux(&[
        "send-keys",
        "-t",
        "t",
        "[ -t 0 ] && echo tty-$((6*7)); stty size; cat /proc/1/cmdline; echo",
        "Enter",
    ]);
    let text = screen("sleep300");
    assert!(text.contains("tty-42") && text.contains("30 100"), "{text}");
    tmux(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    tmux(&["send-keys", "-t", "t", "stty size; exit 7", "Enter"]);
    let text = screen("exec-exited-7");
    let _ = Command::new("tmux")
        .arg("-L")
        .arg(&socket)
        .arg("kill-server")
        .status();
    assert!(
        text.contains("40 120") && text.contains("exec-exited-7"),
        "{text}"
    );
    peers::run_ok(runner(&root).args(["stop", "-t", "0", id.trim()]));
}
