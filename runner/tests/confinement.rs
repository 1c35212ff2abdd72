//! A hostile image's attacks, run inside a container (`probe`, `fixtures/probe/probe.c`)
//! and, side by side, under `docker run` of the same image on this machine's Docker
//! engine: each must be refused by both. The probe's report (capabilities, seccomp,
//! session, masked and read-only paths, refused syscalls, `/dev`, descriptors) must be
//! the same under both, `no_new_privs` aside (always on here, off in docker).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use strata_fixtures::{Flavor, LayerBuilder, peers, probe_image};

use crate::common::{can_run, load, runner};

const PROBE: &str = "/usr/local/bin/probe";

/// A store (under a world-traversable directory, as `/var/lib` is) with the probe image
/// as `probe:1`, plus what `extra` adds to its layer as `hostile:1` when given.
fn store_with_probe(dir: &Path, extra: Option<&dyn Fn(&mut LayerBuilder)>) -> Option<PathBuf> {
    if !can_run() {
        return None;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.join("store");
    load(&root, &probe_image(Flavor::Docker, |_| {}), "probe:1");
    if let Some(extra) = extra {
        load(&root, &probe_image(Flavor::Docker, extra), "hostile:1");
    }
    Some(root)
}

/// The probe image in the shared Docker engine, as `strata-probe:1`.
fn docker_with_probe(dir: &Path) -> Option<&'static peers::Dockerd> {
    let d = peers::Dockerd::shared()?;
    let archive = dir.join("probe-docker.tar");
    strata_fixtures::write_docker_save(
        &archive,
        &[(&probe_image(Flavor::Docker, |_| {}), &["strata-probe:1"])],
    );
    d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
    Some(d)
}

fn docker_probe(d: &peers::Dockerd, args: &[&str]) -> String {
    let mut all = vec!["run", "--rm", "--network", "none", "strata-probe:1", PROBE];
    all.extend_from_slice(args);
    d.docker_ok(all)
}

fn runner_probe(root: &Path, args: &[&str]) -> String {
    peers::run_ok(
        runner(root)
            .args(["start", "--rm", "probe:1", "--", PROBE])
            .args(args),
    )
}

/// `key: value` lines as a map.
fn report(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A loop device over a file holding a marker: a block device the host can read.
struct Loop {
    dev: String,
    major: u32,
    minor: u32,
}

impl Loop {
    fn new(dir: &Path) -> Loop {
        let img = dir.join("disk.img");
        let mut bytes = vec![0u8; 1 << 20];
        bytes[..16].copy_from_slice(b"strata-hostdisk!");
        std::fs::write(&img, bytes).unwrap();
        let dev = peers::run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&img))
            .trim()
            .to_string();
        let rdev = std::fs::metadata(&dev)
            .map(|m| std::os::unix::fs::MetadataExt::rdev(&m))
            .unwrap();
        let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
        // The host reads it: the attack below is real.
        let head = std::fs::read(&dev).map(|b| b[..16].to_vec()).unwrap();
        assert_eq!(head, b"strata-hostdisk!");
        Loop { dev, major, minor }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// The report of a container matches docker's, and says what docker's defaults are:
/// docker's capabilities, seccomp in filter mode, a session of its own, every masked
/// path masked and read-only path read-only, the escape syscalls refused, no
/// descriptor of the caller's inherited (fd 3 is open in the caller), no inheritable
/// or ambient capability of the caller's, and docker's open-file limit.
#[test]
fn a_container_is_confined_as_docker_confines_it() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_probe(tmp.path(), None) else {
        return;
    };
    // The caller leaves fd 3 open, has inheritable and ambient capabilities and a low
    // open-file limit: none of it may reach the container.
    let script = format!(
        "exec 3</etc; exec prlimit --nofile=64:64 setpriv --inh-caps +net_admin --ambient-caps +net_admin \
         {} --root {} start --rm probe:1 -- {PROBE} report",
        peers::bin("runner").display(),
        root.display()
    );
    let ours = peers::run_ok(Command::new("bash").args(["-c", &script]));
    let r = report(&ours);
    let expect = |k: &str, v: &str| assert_eq!(r.get(k).map(String::as_str), Some(v), "{k} in\n{ours}");
    expect("CapBnd", "00000000a80425fb");
    expect("CapEff", "00000000a80425fb");
    expect("CapInh", "0000000000000000");
    expect("CapAmb", "0000000000000000");
    expect("Seccomp", "2");
    expect("NoNewPrivs", "1");
    expect("own session", "yes");
    expect("SigBlk", "0000000000000000");
    expect("fds", "0 1 2");
    for p in strata_runner::MASKED_PATHS {
        let p = p.to_str().unwrap();
        let state = r.get(&format!("masked {p}")).map(String::as_str);
        assert!(
            matches!(state, Some("masked" | "absent")),
            "{p}: {state:?}\n{ours}"
        );
    }
    for p in strata_runner::READONLY_PATHS {
        let p = p.to_str().unwrap();
        let state = r.get(&format!("readonly {p}")).map(String::as_str);
        // This kernel may lack /proc/sysrq-trigger (CONFIG_MAGIC_SYSRQ off).
        assert!(
            matches!(state, Some("ro")) || (p.ends_with("sysrq-trigger") && state == Some("absent")),
            "{p}: {state:?}"
        );
    }
    expect("write /proc/sys/kernel/core_pattern", "EROFS");
    let sysrq = r["write /proc/sysrq-trigger"].as_str();
    assert!(matches!(sysrq, "EROFS" | "ENOENT"), "{ours}");
    for call in [
        "keyctl",
        "add_key",
        "request_key",
        "mount",
        "bpf",
        "kexec_load",
        "init_module",
        "userfaultfd",
    ] {
        expect(&format!("syscall {call}"), "EPERM");
    }
    expect("syscall clone3", "ENOSYS");
    expect("unshare user", "EPERM");
    expect("unshare mount", "EPERM");
    let dev = "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero";
    let dev = if Path::new("/proc/kcore").exists() {
        format!("core {dev}")
    } else {
        dev.to_string()
    };
    expect("dev", &dev);

    let Some(d) = docker_with_probe(tmp.path()) else {
        return;
    };
    let theirs = docker_probe(d, &["report"]);
    let mut t = report(&theirs);
    let mut o = r.clone();
    // Always on here, off by default in docker.
    assert_eq!(t.remove("NoNewPrivs").as_deref(), Some("0"), "{theirs}");
    o.remove("NoNewPrivs");
    // Masked here as in docker since 28 (GHSA-6fw5-f8r9-fgfm); older engines show it.
    let interrupts = "masked /proc/interrupts";
    assert!(
        matches!(
            t.remove(interrupts).as_deref(),
            Some("masked" | "visible" | "absent")
        ),
        "{theirs}"
    );
    assert!(
        matches!(o.remove(interrupts).as_deref(), Some("masked" | "absent")),
        "{ours}"
    );
    // docker's client does not pass descriptors at all: compare the container's view.
    assert_eq!(o, t, "runner:\n{ours}\ndocker:\n{theirs}");
}

/// A block device the host can read (a loop device) cannot be read from a container,
/// neither through a node it makes with mknod (CAP_MKNOD is kept, as in docker) nor
/// through one its image ships with mode 0666.
#[test]
fn host_devices_cannot_be_read() {
    let tmp = tempfile::tempdir().unwrap();
    if !can_run() {
        return;
    }
    let lo = Loop::new(tmp.path());
    let (major, minor) = (lo.major, lo.minor);
    let extra = move |l: &mut LayerBuilder| {
        l.device("hostdisk", true, major, minor, 0o666);
    };
    let root = store_with_probe(tmp.path(), Some(&extra)).unwrap();
    let (maj, min) = (major.to_string(), minor.to_string());
    let ours = runner_probe(&root, &["disk", &maj, &min]);
    assert!(ours.contains("mknod: ok"), "{ours}");
    assert!(
        ours.contains("open: EPERM") || ours.contains("open: EACCES"),
        "{ours}"
    );
    let shipped =
        peers::run_ok(runner(&root).args(["start", "--rm", "hostile:1", "--", PROBE, "open", "/hostdisk"]));
    assert!(
        shipped.contains("open: EPERM") || shipped.contains("open: EACCES"),
        "{shipped}"
    );
    // --privileged is what it says: the host's devices.
    let privileged = peers::run_ok(runner(&root).args([
        "start",
        "--rm",
        "--privileged",
        "probe:1",
        "--",
        PROBE,
        "disk",
        &maj,
        &min,
    ]));
    assert!(privileged.contains("read: ok"), "{privileged}");
    // Nor from a process `runner exec` starts in a running container (its cgroup's
    // device rules).
    let id = peers::run_ok(runner(&root).args([
        "start",
        "-d",
        "--network",
        "none",
        "probe:1",
        "--",
        "/bin/sleep",
        "300",
    ]));
    let id = id.trim();
    let execd = peers::run_ok(runner(&root).args(["exec", id, PROBE, "disk", &maj, &min]));
    peers::run_ok(runner(&root).args(["stop", "-t", "0", id]));
    assert!(
        execd.contains("mknod: ok") && (execd.contains("open: EPERM") || execd.contains("open: EACCES")),
        "{execd}"
    );

    let Some(d) = docker_with_probe(tmp.path()) else {
        return;
    };
    let theirs = docker_probe(d, &["disk", &maj, &min]);
    assert!(
        theirs.contains("mknod: ok") && theirs.contains("open: EPERM"),
        "{theirs}"
    );
}

/// A container cannot type into its caller's terminal: its first process is in a
/// session of its own, so TIOCSTI on the terminal it was given is refused. The caller
/// here is a session whose controlling terminal is a pseudo-terminal.
#[test]
fn a_container_cannot_type_into_the_callers_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_probe(tmp.path(), None) else {
        return;
    };
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    // setsid --ctty: a new session whose controlling terminal is the pty on stdin.
    let out = peers::output(
        Command::new("setsid")
            .args(["--ctty", "--wait"])
            .arg(peers::bin("runner"))
            .arg("--root")
            .arg(&root)
            .args(["start", "--rm", "probe:1", "--", PROBE, "tiocsti"])
            .stdin(Stdio::from(slave)),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tiocsti: EPERM"),
        "{}",
        peers::format_output(&out)
    );
    // Nor a process `runner exec` (without -t) starts in a running container.
    let id = peers::run_ok(runner(&root).args([
        "start",
        "-d",
        "--network",
        "none",
        "probe:1",
        "--",
        "/bin/sleep",
        "300",
    ]));
    let out = peers::output(
        Command::new("setsid")
            .args(["--ctty", "--wait"])
            .arg(peers::bin("runner"))
            .arg("--root")
            .arg(&root)
            .args(["exec", "-i", id.trim(), PROBE, "tiocsti"])
            .stdin(Stdio::from(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(name.to_str().unwrap())
                    .unwrap(),
            )),
    );
    peers::run_ok(runner(&root).args(["stop", "-t", "0", id.trim()]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tiocsti: EPERM"),
        "{}",
        peers::format_output(&out)
    );
    drop(master);

    let Some(d) = docker_with_probe(tmp.path()) else {
        return;
    };
    let theirs = docker_probe(d, &["tiocsti"]);
    assert!(!theirs.contains("tiocsti: ok"), "{theirs}");
}

/// The store's `containers/` and `layers/` are root's only: another local user can
/// neither read a container's config (its `--env` secrets) nor reach its files or the
/// unpacked layers.
#[test]
fn other_users_cannot_reach_containers_or_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_probe(tmp.path(), None) else {
        return;
    };
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    peers::run_ok(runner(&root).args([
        "start",
        "--name",
        "secret",
        "-e",
        "TOKEN=hunter2",
        "probe:1",
        "--",
        "/bin/true",
    ]));
    for d in ["containers", "layers"] {
        let mode = std::fs::metadata(root.join(d)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{d}");
    }
    let id = std::fs::read_dir(root.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .find(|n| !n.to_string_lossy().starts_with('.'))
        .unwrap();
    let config = root.join("containers").join(&id).join("config.json");
    let layer = std::fs::read_dir(root.join("layers"))
        .unwrap()
        .flatten()
        .find(|e| e.path().join("diff/bin").exists())
        .unwrap()
        .path()
        .join("diff/bin/busybox");
    for target in [&config, &layer] {
        let out = peers::output(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
                .arg(target),
        );
        assert!(!out.status.success(), "nobody read {}", target.display());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            peers::format_output(&out)
        );
    }
}

/// The image's `/etc/passwd` is read inside the image: a symlink to a device gives a
/// clear error (not an endless read), and a symlink to a host file does not read the
/// host's file.
#[test]
fn the_images_passwd_is_read_inside_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    if !can_run() {
        return;
    }
    let host_passwd = tmp.path().join("host-passwd");
    std::fs::write(&host_passwd, "evil:x:4242:4242::/:/bin/sh\n").unwrap();
    let to_zero = |l: &mut LayerBuilder| {
        l.device("dev/zero", false, 1, 5, 0o666)
            .symlink("etc/passwd", "/dev/zero");
    };
    let root = store_with_probe(tmp.path(), Some(&to_zero)).unwrap();
    let out = peers::output(runner(&root).args(["start", "--rm", "hostile:1", "--", "/bin/true"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/etc/passwd") && err.contains("not a regular file"),
        "{err}"
    );

    let target = host_passwd.to_str().unwrap().to_string();
    let to_host = move |l: &mut LayerBuilder| {
        l.symlink("etc/passwd", &target);
    };
    load(&root, &probe_image(Flavor::Docker, to_host), "hostile:2");
    let out =
        peers::output(runner(&root).args(["start", "--rm", "-u", "evil", "hostile:2", "--", "/bin/true"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown user \"evil\""),
        "{}",
        peers::format_output(&out)
    );
    // Root needs no passwd entry.
    peers::run_ok(runner(&root).args(["start", "--rm", "hostile:2", "--", "/bin/true"]));
}

/// `--cap-add`, `--cap-drop`, `--security-opt seccomp=unconfined` and `--privileged`
/// loosen (or tighten) exactly what they say.
#[test]
fn security_options_change_what_they_name() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_probe(tmp.path(), None) else {
        return;
    };
    let run = |opts: &[&str]| {
        let mut c = runner(&root);
        c.args(["start", "--rm"])
            .args(opts)
            .args(["probe:1", "--", PROBE, "report"]);
        report(&peers::run_ok(&mut c))
    };
    let r = run(&["--cap-drop", "ALL"]);
    assert_eq!(r["CapBnd"], "0000000000000000");
    assert_eq!(r["syscall keyctl"], "EPERM");
    let r = run(&["--cap-drop", "net_raw", "--cap-add", "CAP_SYS_PTRACE"]);
    assert_eq!(
        r["CapBnd"],
        format!("{:016x}", 0xa80425fbu64 & !(1 << 13) | (1 << 19))
    );
    let r = run(&["--security-opt", "seccomp=unconfined"]);
    assert_eq!(r["Seccomp"], "0");
    assert_eq!(r["masked /proc/keys"], "masked");
    let r = run(&["--privileged"]);
    assert_eq!(r["Seccomp"], "0");
    assert_eq!(r["CapBnd"].trim_start_matches('0').len(), 11, "{r:?}");
    assert_eq!(r["readonly /proc/sys"], "rw");
    assert_eq!(r["unshare user"], "ok");
    let out = peers::output(runner(&root).args(["start", "--rm", "--cap-add", "CAP_NOPE", "probe:1"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown capability"),
        "{}",
        peers::format_output(&out)
    );
    let out = peers::output(runner(&root).args(["start", "--rm", "--security-opt", "apparmor=x", "probe:1"]));
    assert!(!out.status.success());
}

/// `runner stop` signals the container's process only while it is the process that
/// started: a recorded PID now used by another process is left alone.
#[test]
fn stop_never_signals_a_reused_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_probe(tmp.path(), None) else {
        return;
    };
    let id = peers::run_ok(runner(&root).args([
        "start",
        "-d",
        "--name",
        "s",
        "probe:1",
        "--",
        "/bin/sleep",
        "300",
    ]));
    let dir = root.join("containers").join(id.trim());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert!(state["init_start"].as_u64().is_some(), "{state}");
    // A bystander takes the place of the container's process in the record, as if the
    // container's PID had been reused.
    let mut bystander = Command::new("sleep").arg("300").spawn().unwrap();
    let mut forged = state.clone();
    forged["init_pid"] = bystander.id().into();
    std::fs::write(dir.join("state.json"), serde_json::to_vec(&forged).unwrap()).unwrap();
    let _ = peers::output(runner(&root).args(["stop", "-t", "1", "s"]));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "runner stop killed a process that was not its container's"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    // Put the truth back and stop it for real.
    std::fs::write(dir.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    peers::run_ok(runner(&root).args(["stop", "-t", "1", "s"]));
}

/// On cgroup v2 the device allowlist is an eBPF program attached to the container's group
/// (`STRATA_CGROUP_V2_ROOT` puts containers on the unified hierarchy of a hybrid host). A
/// process in a group with the program cannot read a host block device (a loop device,
/// through the host's `/dev`, which is not `nodev`: the refusal is the program's) but
/// reads `/dev/zero`; a container started on v2 runs with a usable `/dev`, may mknod, and
/// its group refuses the loop device to a process that joins it.
#[test]
fn cgroup_v2_devices_follow_dockers_allowlist() {
    let tmp = tempfile::tempdir().unwrap();
    if !can_run() {
        return;
    }
    let v2 = [Path::new("/sys/fs/cgroup/unified"), Path::new("/sys/fs/cgroup")]
        .into_iter()
        .find(|p| p.join("cgroup.controllers").exists());
    let Some(v2) = v2 else {
        eprintln!("SKIP: no cgroup2 hierarchy mounted");
        return;
    };
    let lo = Loop::new(tmp.path());
    // `sh` joins `group` (its cwd), then execs `head` on the device.
    let read_in = |group: &Path, dev: &str| {
        peers::output(
            Command::new("sh")
                .args(["-c", "echo $$ > cgroup.procs && exec head -c 16 \"$0\"", dev])
                .current_dir(group),
        )
    };

    /// A cgroup of the test's own, removed (once its processes are gone) on drop.
    struct Group(PathBuf);
    impl Drop for Group {
        fn drop(&mut self) {
            for _ in 0..200 {
                if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    let group = Group(v2.join(format!("strata-test-{}", std::process::id())));
    std::fs::create_dir(&group.0).unwrap();
    strata_runner::confine_devices(&group.0).unwrap();
    let out = read_in(&group.0, &lo.dev);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        peers::format_output(&out)
    );
    let out = read_in(&group.0, "/dev/zero");
    assert_eq!(out.stdout, [0u8; 16], "{}", peers::format_output(&out));
    drop(group);

    // Containers on v2: docker's devices work, and mknod is allowed (the open of the node
    // is refused, by the mount's nodev first).
    let root = store_with_probe(tmp.path(), None).unwrap();
    let on_v2 = |args: &[&str]| {
        let mut c = runner(&root);
        c.env(strata_runner::V2_ROOT_ENV, v2).args(args);
        peers::run_ok(&mut c)
    };
    on_v2(&["start", "--rm", "probe:1", "--", "/bin/true"]);
    let out = on_v2(&[
        "start",
        "--rm",
        "probe:1",
        "--",
        "/bin/sh",
        "-c",
        "echo x > /dev/null && head -c 5 /dev/zero | wc -c && head -c 6 /dev/urandom | wc -c \
         && head -c 7 /dev/full | wc -c",
    ]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["5", "6", "7"],
        "{out}"
    );
    let (maj, min) = (lo.major.to_string(), lo.minor.to_string());
    let out = on_v2(&["start", "--rm", "probe:1", "--", PROBE, "disk", &maj, &min]);
    assert!(out.contains("mknod: ok") && out.contains("open: E"), "{out}");

    // The container's own group carries the program.
    let id = on_v2(&[
        "start",
        "-d",
        "--name",
        "v2",
        "probe:1",
        "--",
        "/bin/sleep",
        "300",
    ]);
    let group = v2.join("strata").join(id.trim());
    assert!(group.join("cgroup.procs").exists(), "{}", group.display());
    let out = read_in(&group, &lo.dev);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        peers::format_output(&out)
    );
    on_v2(&["stop", "-t", "1", "v2"]);
    for _ in 0..500 {
        if !group.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!group.exists(), "{} left behind", group.display());
}

/// A process `runner exec` starts in a running container is in the container (its
/// hostname, files, PID namespace) and confined exactly as the container's first process:
/// the probe's report is the same.
#[test]
fn exec_runs_inside_the_container_and_as_confined() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_probe(tmp.path(), None) else {
        return;
    };
    let first = report(&runner_probe(&root, &["report"]));
    let id = peers::run_ok(runner(&root).args([
        "start",
        "-d",
        "--name",
        "ex",
        "--hostname",
        "exbox",
        "probe:1",
        "--",
        "/bin/sleep",
        "300",
    ]));
    let id = id.trim().to_string();
    let exec = |args: &[&str]| peers::output(runner(&root).args(["exec"]).args(args));
    let out = exec(&[
        "ex",
        "/bin/sh",
        "-c",
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; id -u",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "exbox\n/bin/sleep 300 \n0\n",
        "{}",
        peers::format_output(&out)
    );
    let out = exec(&["ex", PROBE, "report"]);
    let exec_report = report(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(exec_report, first, "{}", peers::format_output(&out));
    // -u, -e, -w, and the exit code.
    let out = exec(&[
        "-u",
        "nobody",
        "-e",
        "X=1",
        "-w",
        "/tmp",
        "ex",
        "/bin/sh",
        "-c",
        "id -u; echo $X; pwd; exit 3",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "65534\n1\n/tmp\n",
        "{}",
        peers::format_output(&out)
    );
    assert_eq!(out.status.code(), Some(3));
    peers::run_ok(runner(&root).args(["stop", "-t", "0", &id]));
    let out = exec(&["ex", "/bin/true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{}",
        peers::format_output(&out)
    );
}
