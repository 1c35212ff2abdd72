//! A container's network (`--network bridge|host|none`, `-p`): the `strata0` bridge, a
//! veth pair per container, addresses leased from the bridge's subnet, the nftables
//! table `strata` (outbound masquerade, published ports as DNAT), and the `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname` a container sees. The host side is set up by
//! the standard tools (`ip` from iproute2, `nft` from nftables), run by the supervisor
//! before the container's first process starts; the leases, and what the host holds
//! for them, live in [`state_dir`] under one lock, and go with the last container.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::container::Container;
use crate::sys;

/// The bridge every `--network bridge` container is attached to.
pub const BRIDGE: &str = "strata0";
/// The nftables table (family `ip`) holding the NAT and the published ports.
pub const TABLE: &str = "strata";
/// The bridge's subnet unless `--bridge-subnet` (`STRATA_BRIDGE_SUBNET`) says otherwise:
/// next to docker's 172.17.0.0/16 and podman's 10.88.0.0/16, colliding with neither.
pub const DEFAULT_SUBNET: &str = "10.89.0.0/16";
/// Where the leases and the lock live (host-wide, like the bridge they describe, and
/// gone at reboot with it); `STRATA_NETWORK_DIR` overrides it.
const STATE_DIR: &str = "/run/strata/network";

/// Errors setting up or tearing down a container's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid published port {0:?} (want [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp])")]
    BadPort(String),
    #[error("invalid subnet {0:?} (want an IPv4 CIDR with a prefix of /8 to /30, e.g. 10.89.0.0/16)")]
    BadSubnet(String),
    #[error("unknown network {0:?} (bridge, host or none)")]
    BadMode(String),
    #[error("published ports need the bridge network (not --network {0})")]
    PortsWithoutBridge(&'static str),
    #[error("port {0} is already published by container {1}")]
    PortInUse(String, String),
    #[error("cannot publish {port}: {source} (a host process has it, or the address is not the host's)")]
    PortUnavailable {
        port: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free address left in {0}")]
    Exhausted(String),
    #[error("the {BRIDGE} bridge has subnet {have}, not {want}: stop its containers to change it")]
    SubnetMismatch { have: String, want: String },
    #[error("{command}: {message}")]
    Tool { command: String, message: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = NetworkError> = std::result::Result<T, E>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let context = context.into();
    move |source| NetworkError::Io { context, source }
}

/// Which network a container has (docker's `--network`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own network namespace with `eth0` on the `strata0` bridge (docker's default).
    #[default]
    Bridge,
    /// The host's network namespace.
    Host,
    /// Its own network namespace with only `lo`.
    None,
}

impl NetworkMode {
    pub fn parse(s: &str) -> Result<NetworkMode> {
        match s {
            "bridge" | "default" => Ok(NetworkMode::Bridge),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            _ => Err(NetworkError::BadMode(s.to_string())),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        }
    }

    /// Containers recorded before networks were chosen had a loopback-only namespace.
    pub(crate) fn legacy() -> NetworkMode {
        NetworkMode::None
    }
}

/// `-p [IP:]HOSTPORT:CONTAINERPORT[/udp]`: traffic to the host's `IP:HOSTPORT` (any
/// local address without an IP) goes to the container's `CONTAINERPORT`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub udp: bool,
}

impl PortSpec {
    pub fn parse(s: &str) -> Result<PortSpec> {
        let bad = || NetworkError::BadPort(s.to_string());
        let (addr, proto) = match s.rsplit_once('/') {
            Some((a, "tcp")) => (a, false),
            Some((a, "udp")) => (a, true),
            Some(_) => return Err(bad()),
            None => (s, false),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        let parts: Vec<&str> = addr.split(':').collect();
        let (host_ip, host_port, container_port) = match parts[..] {
            [h, c] => (None, port(h)?, port(c)?),
            [ip, h, c] => {
                let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
                (Some(ip).filter(|ip| !ip.is_unspecified()), port(h)?, port(c)?)
            }
            _ => return Err(bad()),
        };
        Ok(PortSpec {
            host_ip,
            host_port,
            container_port,
            udp: proto,
        })
    }

    fn proto(&self) -> &'static str {
        if self.udp { "udp" } else { "tcp" }
    }

    /// The nftables map the port is an element of, and its key.
    fn key(&self) -> (&'static str, String) {
        match self.host_ip {
            Some(ip) => (
                "published",
                format!("{ip} . {} . {}", self.proto(), self.host_port),
            ),
            None => ("published_any", format!("{} . {}", self.proto(), self.host_port)),
        }
    }

    /// Fails when the host cannot bind the port (in the host's network namespace).
    fn check_free(&self) -> Result<()> {
        let addr = (self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), self.host_port);
        let bound = if self.udp {
            std::net::UdpSocket::bind(addr).map(drop)
        } else {
            std::net::TcpListener::bind(addr).map(drop)
        };
        bound.map_err(|source| NetworkError::PortUnavailable {
            port: self.to_string(),
            source,
        })
    }

    /// Whether both take the same traffic.
    fn overlaps(&self, other: &PortSpec) -> bool {
        self.udp == other.udp
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(f, "{ip}:{}/{}", self.host_port, self.proto())
    }
}

/// An IPv4 subnet: the bridge takes its first address, containers the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Subnet> {
        let bad = || NetworkError::BadSubnet(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            base: u32::from(addr) & mask,
            prefix,
        })
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// The addresses containers may have: after the gateway, before the broadcast.
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        (self.base + 2..self.base + size - 1).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// The leases, the lock and what was changed on the host (see the module's comment).
pub fn state_dir() -> PathBuf {
    std::env::var_os("STRATA_NETWORK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(STATE_DIR))
}

/// A container's address, held until it stops: `leases/<ip>` in [`state_dir`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    container: String,
    /// The supervisor holding it, and its start time: a lease whose supervisor is gone
    /// (killed) is stale, and reclaimed by the next start or `runner rm`.
    supervisor: u32,
    started: Option<u64>,
    veth: String,
    ports: Vec<PortSpec>,
}

impl Lease {
    fn live(&self) -> bool {
        sys::alive(self.supervisor) && sys::start_time(self.supervisor) == self.started
    }
}

/// The exclusive lock over the leases and the host's bridge and table, held while it
/// lives.
struct Locked {
    dir: PathBuf,
    _file: std::fs::File,
}

fn lock() -> Result<Locked> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = state_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("leases"))
        .map_err(io(format!("create {}", dir.display())))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("open {}", path.display())))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(format!("lock {}", path.display()))(e.into()))?;
    Ok(Locked { dir, _file: file })
}

impl Locked {
    fn leases(&self) -> Result<Vec<(Ipv4Addr, Lease)>> {
        let dir = self.dir.join("leases");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(format!("read {}", dir.display())))? {
            let entry = entry.map_err(io(format!("read {}", dir.display())))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            match std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Lease>(&b).ok())
            {
                Some(l) => out.push((ip, l)),
                // Half-written by a killed start: nothing on the host refers to it yet.
                None => drop(std::fs::remove_file(entry.path())),
            }
        }
        Ok(out)
    }

    fn write_lease(&self, ip: Ipv4Addr, lease: &Lease) -> Result<()> {
        let path = self.dir.join("leases").join(ip.to_string());
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(lease).expect("a lease serializes");
        std::fs::write(&tmp, bytes).map_err(io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("write {}", path.display())))
    }

    /// Takes back what `lease` holds on the host (its published ports, its veth if it
    /// is still there and `veth`) and the lease itself. The veth goes with the
    /// container's network namespace anyway, once its last process has left it (the
    /// kernel's cleanup runs in the background; deleting it here would wait for it).
    fn release(&self, ip: Ipv4Addr, lease: &Lease, veth: bool) {
        let mut script = String::new();
        for p in &lease.ports {
            let (map, key) = p.key();
            script.push_str(&format!("delete element ip {TABLE} {map} {{ {key} }}\n"));
        }
        if !script.is_empty() {
            let _ = run("nft", &["-f", "-"], Some(&script));
        }
        if veth && Path::new("/sys/class/net").join(&lease.veth).exists() {
            let _ = run("ip", &["link", "del", &lease.veth], None);
        }
        let _ = std::fs::remove_file(self.dir.join("leases").join(ip.to_string()));
    }

    /// Releases the leases of supervisors that are gone; with `teardown`, removes the
    /// bridge, the table and what was set on the host when no lease is left.
    fn reclaim(&self, teardown: bool) -> Result<Vec<(Ipv4Addr, Lease)>> {
        let mut live = Vec::new();
        for (ip, lease) in self.leases()? {
            if lease.live() {
                live.push((ip, lease));
            } else {
                self.release(ip, &lease, true);
            }
        }
        if live.is_empty() && teardown {
            self.teardown();
        }
        Ok(live)
    }

    /// Removes the bridge, the nftables table and the sysctl the first container set.
    fn teardown(&self) {
        let recorded = self.dir.join("subnet");
        if !recorded.exists() && !bridge_exists() {
            return;
        }
        if bridge_exists() {
            let _ = run("ip", &["link", "del", BRIDGE], None);
        }
        let _ = run(
            "nft",
            &["-f", "-"],
            Some(&format!("table ip {TABLE}\ndelete table ip {TABLE}\n")),
        );
        let marker = self.dir.join("ip_forward_was_0");
        if marker.exists() {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "0");
            let _ = std::fs::remove_file(&marker);
        }
        let _ = std::fs::remove_file(recorded);
    }

    /// Makes the bridge, its sysctls and the nftables table when they are missing.
    fn ensure_host(&self, subnet: Subnet) -> Result<()> {
        let recorded = self.dir.join("subnet");
        if bridge_exists() {
            let have = std::fs::read_to_string(&recorded).unwrap_or_default();
            if !have.is_empty() && have.trim() != subnet.to_string() {
                return Err(NetworkError::SubnetMismatch {
                    have: have.trim().to_string(),
                    want: subnet.to_string(),
                });
            }
            return Ok(());
        }
        // Recorded first: a start killed half-way leaves something teardown removes.
        std::fs::write(&recorded, subnet.to_string()).map_err(io(format!("write {}", recorded.display())))?;
        let ruleset = format!(
            "table ip {TABLE}\ndelete table ip {TABLE}\n{}",
            RULESET
                .replace("@BRIDGE@", BRIDGE)
                .replace("@SUBNET@", &subnet.to_string())
        );
        run("nft", &["-f", "-"], Some(&ruleset))?;
        let gw = format!("{}/{}", subnet.gateway(), subnet.prefix);
        run(
            "ip",
            &["-batch", "-"],
            Some(&format!(
                "link add {BRIDGE} type bridge\naddr add {gw} dev {BRIDGE}\nlink set {BRIDGE} up\n"
            )),
        )?;
        // Loopback-sourced traffic to a published port leaves through the bridge (after
        // DNAT and masquerade): the kernel drops it as martian without route_localnet.
        let sysctl = |path: String, value: &str| {
            std::fs::write(&path, value).map_err(io(format!("write {value} to {path}")))
        };
        sysctl(format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet"), "1")?;
        let forward = "/proc/sys/net/ipv4/ip_forward";
        if std::fs::read_to_string(forward)
            .map_err(io(format!("read {forward}")))?
            .trim()
            == "0"
        {
            std::fs::write(self.dir.join("ip_forward_was_0"), "")
                .map_err(io("record the host's ip_forward"))?;
            sysctl(forward.to_string(), "1")?;
        }
        Ok(())
    }
}

/// The table: published ports (`dnat` from two maps the containers add to and take
/// from), masquerade of the subnet's outbound traffic and of loopback-sourced traffic
/// to published ports, no packet to 127.0.0.0/8 from the bridge (route_localnet is on
/// for it), and no new connection into the bridge from elsewhere except to a published
/// port.
const RULESET: &str = r#"table ip strata {
  map published { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
  map published_any { type inet_proto . inet_service : ipv4_addr . inet_service; }
  chain guard {
    type filter hook prerouting priority raw; policy accept;
    iifname "@BRIDGE@" ip daddr 127.0.0.0/8 drop
  }
  chain publish_in {
    type nat hook prerouting priority dstnat; policy accept;
    dnat ip to ip daddr . meta l4proto . th dport map @published
    fib daddr type local dnat ip to meta l4proto . th dport map @published_any
  }
  chain publish_out {
    type nat hook output priority -100; policy accept;
    dnat ip to ip daddr . meta l4proto . th dport map @published
    fib daddr type local dnat ip to meta l4proto . th dport map @published_any
  }
  chain masq {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @SUBNET@ oifname != "@BRIDGE@" masquerade
    oifname "@BRIDGE@" ip saddr 127.0.0.0/8 masquerade
  }
  chain isolate {
    type filter hook forward priority filter; policy accept;
    oifname "@BRIDGE@" iifname != "@BRIDGE@" ct state established,related accept
    oifname "@BRIDGE@" iifname != "@BRIDGE@" ct status dnat accept
    oifname "@BRIDGE@" iifname != "@BRIDGE@" drop
  }
}
"#;

fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

/// Runs a tool, its standard input `stdin`; its standard error is the error.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let shown = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Tool {
            command: shown(),
            message: format!("{e} (the bridge network needs iproute2's ip and nftables' nft)"),
        })?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .map_err(io(format!("write to {program}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io(format!("wait for {program}")))?;
    if !out.status.success() {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ");
        if let Some(text) = stdin {
            message = format!("{message} (input: {})", text.trim().replace('\n', "; "));
        }
        return Err(NetworkError::Tool {
            command: shown(),
            message,
        });
    }
    Ok(())
}

/// A container's network while it runs; [`Attached::detach`] gives back what it holds.
pub(crate) struct Attached {
    /// The host's network namespace, to release the lease from.
    host: Option<OwnedFd>,
    address: Option<(Ipv4Addr, Subnet)>,
}

/// In the supervisor, before the container's first process: gives it the network
/// `c.network` says, and leaves the supervisor in it. Bridge: a new namespace whose
/// `eth0` is one end of a veth pair on the bridge (made when missing, with the table),
/// with a leased address, a default route through the bridge, and `c.ports` published.
pub(crate) fn attach(c: &Container) -> Result<Attached> {
    match c.network {
        NetworkMode::Host => {
            if !c.ports.is_empty() {
                return Err(NetworkError::PortsWithoutBridge("host"));
            }
            Ok(Attached {
                host: None,
                address: None,
            })
        }
        NetworkMode::None => {
            if !c.ports.is_empty() {
                return Err(NetworkError::PortsWithoutBridge("none"));
            }
            let (_, container) = sys::new_net_namespace().map_err(io("make a network namespace"))?;
            sys::enter_net_namespace(&container).map_err(io("enter the network namespace"))?;
            run("ip", &["link", "set", "lo", "up"], None)?;
            Ok(Attached {
                host: None,
                address: None,
            })
        }
        NetworkMode::Bridge => attach_bridge(c),
    }
}

fn attach_bridge(c: &Container) -> Result<Attached> {
    let subnet = Subnet::parse(c.subnet.as_deref().unwrap_or(DEFAULT_SUBNET))?;
    let (host, container) = sys::new_net_namespace().map_err(io("make a network namespace"))?;
    let locked = lock()?;
    // No teardown here: this start is about to use the bridge.
    let live = locked.reclaim(false)?;
    for p in &c.ports {
        if let Some((_, l)) = live.iter().find(|(_, l)| l.ports.iter().any(|q| q.overlaps(p))) {
            return Err(NetworkError::PortInUse(
                p.to_string(),
                l.container[..12].to_string(),
            ));
        }
    }
    // As docker's proxy, which binds the port: a port a host process has, or an address
    // that is not the host's, is refused (DNAT would take its traffic silently).
    for p in &c.ports {
        p.check_free()?;
    }
    locked.ensure_host(subnet)?;
    let ip = subnet
        .hosts()
        .find(|ip| !live.iter().any(|(l, _)| l == ip))
        .ok_or_else(|| NetworkError::Exhausted(subnet.to_string()))?;
    let me = std::process::id();
    let lease = Lease {
        container: c.id.clone(),
        supervisor: me,
        started: sys::start_time(me),
        veth: format!("sv{}", &c.id[..12]),
        ports: c.ports.clone(),
    };
    locked.write_lease(ip, &lease)?;
    let attached = Attached {
        host: Some(host),
        address: Some((ip, subnet)),
    };
    let setup = || -> Result<()> {
        let netns = format!("/proc/{me}/fd/{}", container.as_raw_fd());
        run(
            "ip",
            &[
                "link",
                "add",
                &lease.veth,
                "master",
                BRIDGE,
                "up",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &netns,
            ],
            None,
        )?;
        let mut script = String::new();
        for p in &c.ports {
            let (map, key) = p.key();
            script.push_str(&format!(
                "add element ip {TABLE} {map} {{ {key} : {ip} . {} }}\n",
                p.container_port
            ));
        }
        if !script.is_empty() {
            run("nft", &["-f", "-"], Some(&script))?;
        }
        sys::enter_net_namespace(&container).map_err(io("enter the network namespace"))?;
        run(
            "ip",
            &["-batch", "-"],
            Some(&format!(
                "link set lo up\naddr add {ip}/{} dev eth0\nlink set eth0 up\nroute add default via {}\n",
                subnet.prefix,
                subnet.gateway()
            )),
        )
    };
    match setup() {
        Ok(()) => Ok(attached),
        Err(e) => {
            drop(locked);
            attached.detach();
            Err(e)
        }
    }
}

impl Attached {
    /// The container's address on the bridge.
    pub(crate) fn address(&self) -> Option<Ipv4Addr> {
        self.address.map(|(ip, _)| ip)
    }

    /// Gives back the lease and what it holds on the host. The last container's detach
    /// has the bridge and the table removed by a process of its own
    /// ([`RECLAIM_COMMAND`], not waited for: deleting them takes the kernel ~50 ms, which
    /// a container's exit need not wait for); [`RECLAIM_GRACE`] later it takes the lock
    /// and removes them only if no lease was taken meanwhile. Best effort: what is not removed now, the next start
    /// or `runner rm` reclaims.
    pub(crate) fn detach(self) {
        let (Some(host), Some((ip, _))) = (self.host, self.address) else {
            return;
        };
        if sys::enter_net_namespace(&host).is_err() {
            return;
        }
        let Ok(locked) = lock() else { return };
        let path = locked.dir.join("leases").join(ip.to_string());
        if let Some(lease) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Lease>(&b).ok())
            .filter(|l| l.supervisor == std::process::id())
        {
            locked.release(ip, &lease, false);
        }
        if let Ok(live) = locked.reclaim(false)
            && live.is_empty()
        {
            let spawned = std::env::current_exe().and_then(|exe| {
                use std::os::unix::process::CommandExt;
                Command::new(exe)
                    .arg(RECLAIM_COMMAND)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
            });
            if spawned.is_err() {
                locked.teardown();
            }
        }
    }
}

/// The runner's hidden subcommand that runs [`reclaim_network`] (spawned by the last
/// container's supervisor), after [`RECLAIM_GRACE`].
pub const RECLAIM_COMMAND: &str = "__reclaim-network";

/// How long the bridge and the table outlive the last container: one started meanwhile
/// uses them instead of waiting for their removal and making them again (~70 ms).
pub const RECLAIM_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Releases the leases of killed supervisors (and the bridge with the last): what
/// `runner rm` does before removing containers.
pub fn reclaim_network() -> Result<()> {
    if !state_dir().join("leases").exists() {
        return Ok(());
    }
    lock()?.reclaim(true).map(drop)
}

/// Writes the container's `hosts`, `resolv.conf` and `hostname` in its directory `dir`,
/// as docker does, and returns them with where they go (`/etc/...`). `resolv.conf` is
/// the host's, less its loopback name servers unless the network is the host's (docker's
/// fallback to Google's servers when none is left).
pub(crate) fn etc_files(
    c: &Container,
    dir: &Path,
    address: Option<Ipv4Addr>,
) -> Result<Vec<(String, PathBuf)>> {
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (hosts, resolv) = if c.network == NetworkMode::Host {
        (
            std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            host_resolv,
        )
    } else {
        let mut hosts = String::from(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
             ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
        );
        if let Some(ip) = address {
            hosts.push_str(&format!("{ip}\t{}\n", c.hostname));
        }
        (hosts, container_resolv_conf(&host_resolv))
    };
    let mut out = Vec::new();
    for (name, text) in [
        ("hosts", hosts),
        ("resolv.conf", resolv),
        ("hostname", format!("{}\n", c.hostname)),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
        out.push((format!("/etc/{name}"), path));
    }
    Ok(out)
}

/// The host's `resolv.conf` for a container with a network of its own: loopback name
/// servers dropped (they are the container's own loopback there).
fn container_resolv_conf(host: &str) -> String {
    let mut servers = 0;
    let mut out = String::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let loopback = words
                .next()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                .is_some_and(|a| a.is_loopback());
            if loopback {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ports_parse_as_docker_takes_them() {
        let p = PortSpec::parse("127.0.0.1:8080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.udp),
            (Some(Ipv4Addr::LOCALHOST), 8080, 80, false)
        );
        let p = PortSpec::parse("5353:53/udp").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.udp),
            (None, 5353, 53, true)
        );
        assert_eq!(PortSpec::parse("0.0.0.0:1:2/tcp").unwrap().host_ip, None);
        for bad in [
            "80",
            "a:80",
            "1:2:3:4",
            "0:80",
            "70000:80",
            "1:2/sctp",
            "::1:80:80",
            "1.2.3:4:5",
        ] {
            assert!(PortSpec::parse(bad).is_err(), "{bad}");
        }
        let any = PortSpec::parse("8080:80").unwrap();
        assert!(any.overlaps(&PortSpec::parse("127.0.0.1:8080:81").unwrap()));
        assert!(!any.overlaps(&PortSpec::parse("8080:80/udp").unwrap()));
        assert!(
            !PortSpec::parse("127.0.0.1:8080:80")
                .unwrap()
                .overlaps(&PortSpec::parse("127.0.0.2:8080:80").unwrap())
        );
    }

    #[test]
    fn subnets_give_the_gateway_first_and_never_the_broadcast() {
        let s = Subnet::parse("10.89.3.7/16").unwrap();
        assert_eq!(s.to_string(), "10.89.0.0/16");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 89, 0, 1));
        let small = Subnet::parse("192.168.5.0/30").unwrap();
        assert_eq!(small.hosts().collect::<Vec<_>>(), [Ipv4Addr::new(192, 168, 5, 2)]);
        for bad in ["10.0.0.0", "10.0.0.0/31", "10.0.0.0/4", "nope/16"] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_name_servers_stay_on_the_host() {
        let r = container_resolv_conf("search x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\noptions a\n");
        assert_eq!(r, "search x\nnameserver 10.0.0.2\noptions a\n");
        assert_eq!(
            container_resolv_conf("nameserver ::1\n"),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }
}
