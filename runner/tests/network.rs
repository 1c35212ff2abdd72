//! `runner start --network bridge|host|none` and `-p`: a server in a container reached
//! through a published port on 127.0.0.1, containers reaching each other on the bridge,
//! what `none` and `host` see, and leases of killed supervisors reclaimed. Traffic goes
//! only to 127.0.0.1 and to the containers the tests start.

use std::path::Path;
use std::time::{Duration, Instant};

use strata_fixtures::peers;

use crate::common::{runner, store_with_busybox};

/// A port nothing listens on now (the kernel's choice for an ephemeral bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A detached busybox `httpd` serving `text` as `/index.html` on port 80, with `args`
/// (`-p`, `--name`) before the image. Returns its ID.
fn start_web(root: &Path, args: &[&str], text: &str) -> String {
    let script = format!("mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www");
    let mut cmd = runner(root);
    cmd.args(["start", "-d"])
        .args(args)
        .args(["bb:1", "--", "/bin/sh", "-c", &script]);
    peers::run_ok(&mut cmd).trim().to_string()
}

/// `curl` from the host until it answers (the server starts after the container).
fn curl(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = peers::output(std::process::Command::new("curl").args(["-sS", "--max-time", "2", url]));
        if out.status.success() || Instant::now() > deadline {
            assert!(out.status.success(), "{}", peers::format_output(&out));
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn inspect(root: &Path, id: &str) -> serde_json::Value {
    let out = peers::run_ok(runner(root).args(["inspect", id]));
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

/// The interfaces of a `/proc/net/dev`.
fn interfaces(net_dev: &str) -> Vec<String> {
    let mut names: Vec<String> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .collect();
    names.sort();
    names
}

fn leases() -> Vec<String> {
    match std::fs::read_dir(strata_runner::network_state_dir().join("leases")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The bridge is there only while some container holds a lease (other tests start
/// bridged containers meanwhile: checked a few times).
fn assert_bridge_goes_with_the_last_lease() {
    // Removed a grace second after the last container stops.
    for _ in 0..50 {
        let bridge = Path::new("/sys/class/net").join(strata_runner::BRIDGE).exists();
        if !bridge || !leases().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} is left with no container on it", strata_runner::BRIDGE);
}

/// `-p 127.0.0.1:PORT:80`: curl from the host gets the container's page; a second
/// container reaches the first by its address on the bridge and sees docker's
/// `/etc/hosts` and a `resolv.conf` without loopback servers; stopping gives back the
/// address, the port and the veth.
#[test]
fn a_published_port_and_containers_on_the_bridge() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let id = start_web(&root, &["--name", "web", "-p", &publish], "hello-from-web");
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/")), "hello-from-web\n");
    let state = inspect(&root, "web");
    assert_eq!(state["network"], "bridge");
    let address = state["state"]["address"].as_str().unwrap().to_string();
    assert!(address.starts_with("10.89."), "{address}");
    assert!(leases().contains(&address));
    let veth = format!("sv{}", &id[..12]);
    assert!(Path::new("/sys/class/net").join(&veth).exists());
    // The same port again is refused while the first container holds it.
    let out = peers::output(runner(&root).args(["start", "--rm", "-p", &publish, "bb:1", "--", "true"]));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already published"),
        "{}",
        peers::format_output(&out)
    );
    // A port a host process has is refused, as docker's proxy cannot bind it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = format!("127.0.0.1:{}:80", held.local_addr().unwrap().port());
    let out = peers::output(runner(&root).args(["start", "--rm", "-p", &taken, "bb:1", "--", "true"]));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot publish"),
        "{}",
        peers::format_output(&out)
    );
    drop(held);
    let script = format!(
        "wget -qO- http://{address}/ && hostname && grep -c \"$(hostname)\" /etc/hosts \
         && grep -c '^nameserver 127' /etc/resolv.conf; cat /proc/net/dev"
    );
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "--hostname",
        "client",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("hello-from-web\nclient\n1\n0\n"),
        "{}",
        peers::format_output(&out)
    );
    let net_dev = text.split_once("0\n").map(|(_, d)| d).unwrap_or("");
    let net_dev = &net_dev[net_dev.find("Inter").unwrap_or(0)..];
    assert_eq!(interfaces(net_dev), ["eth0", "lo"], "{text}");
    peers::run_ok(runner(&root).args(["stop", "-t", "1", "web"]));
    // The veth goes with the container's network namespace (the kernel's cleanup runs
    // in the background).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new("/sys/class/net").join(&veth).exists() {
        assert!(Instant::now() < deadline, "{veth} is still there");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = peers::output(std::process::Command::new("curl").args([
        "-sS",
        "--max-time",
        "1",
        &format!("http://127.0.0.1:{port}/"),
    ]));
    assert!(!out.status.success(), "{}", peers::format_output(&out));
    assert_bridge_goes_with_the_last_lease();
}

/// `--network none` has only `lo` (up); `--network host` sees the host's interfaces;
/// `-p` without the bridge is refused.
#[test]
fn none_has_only_loopback_and_host_shares_the_hosts_network() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "--network",
        "none",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        "cat /proc/net/dev; ping -c1 -W1 127.0.0.1 >/dev/null && echo lo-up",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(interfaces(&text), ["lo"], "{}", peers::format_output(&out));
    assert!(text.ends_with("lo-up\n"), "{}", peers::format_output(&out));
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "--network",
        "host",
        "bb:1",
        "--",
        "cat",
        "/proc/net/dev",
    ]));
    let inside = interfaces(&String::from_utf8_lossy(&out.stdout));
    let host = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    // Veths of other tests' containers come and go meanwhile.
    let stable = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|n| !n.starts_with("sv") && !n.starts_with("veth"))
            .cloned()
            .collect()
    };
    assert!(inside.len() > 1, "{}", peers::format_output(&out));
    assert_eq!(stable(&inside), stable(&host), "{}", peers::format_output(&out));
    for mode in ["none", "host"] {
        let out = peers::output(runner(&root).args([
            "start",
            "--rm",
            "--network",
            mode,
            "-p",
            "8080:80",
            "bb:1",
            "--",
            "true",
        ]));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("need the bridge network"),
            "{}",
            peers::format_output(&out)
        );
    }
    let out = peers::output(runner(&root).args(["start", "--rm", "--network", "nat", "bb:1", "--", "true"]));
    assert!(!out.status.success(), "{}", peers::format_output(&out));
}

/// A supervisor killed with SIGKILL cannot give back its address and port: the next
/// `runner rm` (or start) does, and the port can be published again.
#[test]
fn a_killed_supervisors_address_and_port_are_reclaimed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    start_web(&root, &["--name", "k1", "-p", &publish], "first");
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/")), "first\n");
    let state = inspect(&root, "k1");
    let address = state["state"]["address"].as_str().unwrap().to_string();
    let supervisor = state["state"]["pid"].as_u64().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(supervisor).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{supervisor}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // (Another test's start may have reclaimed it already: the next start or rm does.)
    peers::run_ok(runner(&root).args(["rm", "k1"]));
    let _ = address;
    start_web(&root, &["--name", "k2", "-p", &publish], "second");
    assert_eq!(curl(&format!("http://127.0.0.1:{port}/")), "second\n");
    peers::run_ok(runner(&root).args(["stop", "-t", "1", "k2"]));
}

/// `route_localnet` is on for the bridge (127.0.0.1 traffic to a published port leaves
/// through it): a container that routes 127.0.0.1 through the gateway (privileged, so that
/// it can turn `route_localnet` on inside and drop its own loopback address) still cannot
/// reach a host service bound to 127.0.0.1 (kube-proxy's CVE-2020-8558): the table drops
/// packets from the bridge to 127.0.0.0/8. (Without that rule this test reads the secret.)
#[test]
fn a_container_cannot_reach_the_hosts_loopback_services() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let served = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok((mut c, _)) = listener.accept() {
                let _ = c.write_all(b"host-secret\n");
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let script = format!(
        "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet; \
         echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet; \
         gw=$(ip route | awk '/^default/ {{ print $3 }}'); \
         ip addr del 127.0.0.1/8 dev lo && ip route add 127.0.0.1/32 via $gw dev eth0 && echo routed; \
         echo hi | nc -w 2 127.0.0.1 {port}; true"
    );
    let out = peers::output(runner(&root).args([
        "start",
        "--rm",
        "--privileged",
        "bb:1",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("routed"), "{}", peers::format_output(&out));
    assert!(!text.contains("host-secret"), "{}", peers::format_output(&out));
    // Unblock the accept loop's wait: a connection of the test's own.
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let _ = served.join();
}
