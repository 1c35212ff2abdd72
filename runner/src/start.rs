//! Starting a container. [`prepare`] runs in `runner start`: it resolves the image, makes
//! sure its layers are unpacked, and records the container. [`run_supervisor`] runs in
//! `runner __init`, already inside the container's new namespaces: it mounts the overlay,
//! sets the hostname, runs the command as the first process of the new PID namespace,
//! and returns its exit code.

use std::path::Path;
use std::process::Command;

use strata_store::{Store, StoreError};

use crate::cgroup::{Cgroup, CgroupError, Limits};
use crate::container::{self, Container, ContainerError, ContainerState, SeccompChoice, Security, Status};
use crate::seccomp::{self, Profile, SeccompError};
use crate::sys;

/// Largest `/etc/passwd` or `/etc/group` read from an image.
const MAX_ID_FILE: u64 = 4 << 20;

/// What the user asked of the container's confinement (docker's flags).
#[derive(Debug, Clone, Default)]
pub struct SecurityOptions {
    /// `--privileged`.
    pub privileged: bool,
    /// `--cap-add` and `--cap-drop`: names with or without `CAP_`, or `ALL`.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `--security-opt seccomp=unconfined` (`Some(None)`) or `seccomp=FILE`
    /// (`Some(Some(profile JSON))`); `None` for docker's default profile.
    pub seccomp: Option<Option<String>>,
}

impl SecurityOptions {
    /// The container's confinement: docker's default capabilities with the additions
    /// and removals applied (`ALL` first, as docker does), and its seccomp choice.
    pub fn resolve(&self) -> Result<Security, StartError> {
        let mut caps: Vec<String> = if self.privileged {
            sys::ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect()
        } else {
            Security::default().capabilities
        };
        let canon = |name: &str| -> Result<Option<String>, StartError> {
            if name.eq_ignore_ascii_case("ALL") {
                return Ok(None);
            }
            let n =
                sys::capability_number(name).ok_or_else(|| StartError::BadCapability(name.to_string()))?;
            Ok(Some(sys::ALL_CAPABILITIES[n as usize].to_string()))
        };
        for d in &self.cap_drop {
            match canon(d)? {
                None => caps.clear(),
                Some(n) => caps.retain(|c| *c != n),
            }
        }
        for a in &self.cap_add {
            match canon(a)? {
                None => caps = sys::ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
                Some(n) if !caps.contains(&n) => caps.push(n),
                Some(_) => {}
            }
        }
        let seccomp = match (&self.seccomp, self.privileged) {
            (_, true) | (Some(None), _) => SeccompChoice::Unconfined,
            (Some(Some(json)), _) => {
                Profile::from_json(json.as_bytes())?;
                SeccompChoice::Profile(json.clone())
            }
            (None, false) => SeccompChoice::Default,
        };
        Ok(Security {
            privileged: self.privileged,
            capabilities: caps,
            seccomp,
        })
    }
}

/// The store's cache of compiled seccomp programs, from a container's directory
/// (`<root>/containers/<id>`).
pub(crate) fn seccomp_cache(dir: &Path) -> std::path::PathBuf {
    dir.parent()
        .and_then(Path::parent)
        .unwrap_or(dir)
        .join("cache")
        .join("seccomp")
}

/// The confinement a container's first process gets: capability numbers and the
/// compiled seccomp program (from the store's cache of compiled programs, `cache`).
pub(crate) fn confinement(security: &Security, cache: &Path) -> Result<sys::Confinement, StartError> {
    let capabilities = security
        .capabilities
        .iter()
        .map(|n| sys::capability_number(n).ok_or_else(|| StartError::BadCapability(n.clone())))
        .collect::<Result<Vec<u32>, _>>()?;
    let names: Vec<&str> = security.capabilities.iter().map(String::as_str).collect();
    let seccomp = match security.seccomp.source() {
        Some(source) => {
            let filter = seccomp::compile_cached(cache, source, &names)?;
            Some((filter.program().to_vec(), filter.flags()))
        }
        None => None,
    };
    Ok(sys::Confinement {
        capabilities,
        seccomp,
        privileged: security.privileged,
    })
}

/// What `runner start` was asked for.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The image: a reference, a digest, or an ID prefix.
    pub image: String,
    pub name: Option<String>,
    /// Arguments replacing the image's `Cmd` (its `Entrypoint` stays), as docker does.
    pub command: Vec<String>,
    /// `KEY=VALUE` pairs added to (or replacing in) the image's environment.
    pub env: Vec<String>,
    pub hostname: Option<String>,
    /// `user[:group]` replacing the image's `User`.
    pub user: Option<String>,
    pub remove: bool,
    pub limits: Limits,
    pub security: SecurityOptions,
    /// `--entrypoint`: replaces the image's `Entrypoint` (and drops its `Cmd`, as
    /// docker does); empty for none.
    pub entrypoint: Option<String>,
    /// `-w`: the working directory instead of the image's.
    pub workdir: Option<String>,
    /// `--read-only`: the container's root filesystem mounted read-only.
    pub read_only: bool,
    /// `-t`: a pseudo-terminal for the container (foreground only).
    pub tty: bool,
    /// `-v SOURCE:TARGET[:ro]` and `--tmpfs TARGET`.
    pub volumes: Vec<String>,
    pub tmpfs: Vec<String>,
    /// `--network` (bridge by default, as docker).
    pub network: crate::network::NetworkMode,
    /// `-p`: ports to publish (bridge only).
    pub ports: Vec<crate::network::PortSpec>,
    /// The bridge's subnet (`--bridge-subnet`), when not the default.
    pub subnet: Option<String>,
}

/// Errors starting a container.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("unknown capability {0:?}")]
    BadCapability(String),
    #[error("the image's /etc/{file}: {message}")]
    IdFile { file: &'static str, message: String },
    #[error("no image {0} in the store")]
    NoImage(String),
    #[error("image config of {image}: {message}")]
    Config { image: String, message: String },
    #[error("no command: the image has no entrypoint or command, and none was given")]
    NoCommand,
    #[error("invalid environment entry {0:?} (want KEY=VALUE)")]
    BadEnv(String),
    #[error("unknown {what} {name:?} in the container's /etc/{file}")]
    UnknownId {
        what: &'static str,
        name: String,
        file: &'static str,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let context = context.into();
    move |source| StartError::Io { context, source }
}

/// Resolves the image, unpacks its layers, and records a new container (status
/// `created`). An image whose answer the store has cached (its layers unpacked, the
/// metadata unchanged since) is found without opening the metadata database; otherwise
/// the store is opened, holding its write lock only meanwhile.
pub fn prepare(store_root: &Path, opts: &StartOptions) -> Result<Container, StartError> {
    let image = match strata_store::cached_runnable(store_root, &opts.image) {
        Some(image) => image,
        None => Store::open(store_root)?
            .runnable_image(&opts.image)
            .map_err(|e| match e {
                StoreError::NoSuchImage(_) => StartError::NoImage(opts.image.clone()),
                e => e.into(),
            })?,
    };
    prepare_runnable(store_root, opts, image)
}

/// [`prepare`] for an image already resolved (`runner build`, which holds the store open).
pub(crate) fn prepare_runnable(
    store_root: &Path,
    opts: &StartOptions,
    image: strata_store::RunnableImage,
) -> Result<Container, StartError> {
    let (image_id, layers, config) = (image.image_id, image.layers, image.config);
    let bad = |message: String| StartError::Config {
        image: opts.image.clone(),
        message,
    };
    let runtime = &config["config"];
    let strings = |v: &serde_json::Value| -> Result<Vec<String>, StartError> {
        match v {
            serde_json::Value::Null => Ok(Vec::new()),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("not a string: {s}")))
                })
                .collect(),
            other => Err(bad(format!("not a list of strings: {other}"))),
        }
    };
    let mut command = match &opts.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => strings(&runtime["Entrypoint"])?,
    };
    if !opts.command.is_empty() {
        command.extend(opts.command.iter().cloned());
    } else if opts.entrypoint.is_none() {
        command.extend(strings(&runtime["Cmd"])?);
    }
    if command.is_empty() {
        return Err(StartError::NoCommand);
    }
    let env = merge_env(strings(&runtime["Env"])?, &opts.env)?;
    let workdir = match &opts.workdir {
        Some(w) if !w.starts_with('/') => {
            return Err(bad(format!("the working directory {w:?} is not absolute")));
        }
        Some(w) => w.clone(),
        None => runtime["WorkingDir"].as_str().unwrap_or("").to_string(),
    };
    let user = match &opts.user {
        Some(u) => u.clone(),
        None => runtime["User"].as_str().unwrap_or("").to_string(),
    };
    let security = opts.security.resolve()?;
    let mounts = crate::volumes::parse_mounts(store_root, &opts.volumes, &opts.tmpfs)?;
    if let Some(s) = &opts.subnet {
        crate::network::Subnet::parse(s)?;
    }
    if !opts.ports.is_empty() && opts.network != crate::network::NetworkMode::Bridge {
        return Err(crate::network::NetworkError::PortsWithoutBridge(opts.network.name()).into());
    }
    let id = new_id();
    let c = Container {
        hostname: opts.hostname.clone().unwrap_or_else(|| id[..12].to_string()),
        id,
        name: opts.name.clone(),
        image: opts.image.clone(),
        image_id: image_id.to_string(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        command,
        env,
        workdir: if workdir.is_empty() { "/".into() } else { workdir },
        user,
        layers,
        remove: opts.remove,
        limits: opts.limits,
        security,
        read_only: opts.read_only,
        tty: opts.tty,
        mounts,
        network: opts.network,
        ports: opts.ports.clone(),
        subnet: opts.subnet.clone(),
    };
    c.create(store_root)?;
    Ok(c)
}

/// The image's environment with `extra` (`KEY=VALUE`) added or replacing; a `PATH`
/// when there is none.
pub(crate) fn merge_env(mut env: Vec<String>, extra: &[String]) -> Result<Vec<String>, StartError> {
    for e in extra {
        let Some((key, _)) = e.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(StartError::BadEnv(e.clone()));
        };
        env.retain(|x| x.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(e.clone());
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    Ok(env)
}

/// A new container ID: 32 random bytes in hex, like docker's.
fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// The supervisor: enters the container's namespaces (when `enter`: the calling
/// process becomes the supervisor, without a re-exec; it must be single-threaded), mounts
/// the rootfs, runs the command in the container's cgroup as the PID namespace's first
/// process, passes signals on to it, records and returns its exit code (128 + the
/// signal's number when a signal ended it).
pub fn run_supervisor(dir: &Path, enter: bool) -> Result<i32, StartError> {
    if enter {
        sys::enter_namespaces().map_err(io("enter the container's namespaces"))?;
    }
    let c = Container::load(dir)?;
    let result = supervise(&c, dir);
    if result.is_err() {
        let _ = container::write_state(dir, &ContainerState::exited(127));
    }
    if c.remove {
        // The rootfs is mounted in this process's own namespace, on a mount point outside
        // the container's directory: nothing to unmount (a lazy unmount waits for an RCU
        // grace period; the namespace goes with the process).
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Mounts container `c`'s overlay (its image's layers under its own upper directory,
/// `dir/upper`) at `target`.
pub(crate) fn mount_rootfs(c: &Container, dir: &Path, target: &Path) -> Result<(), StartError> {
    sys::mount_overlay(
        &c.layers,
        &dir.join("upper"),
        &dir.join("work"),
        target,
        c.security.privileged,
    )
    .map_err(io(format!("mount the overlay at {}", target.display())))
}

fn supervise(c: &Container, dir: &Path) -> Result<i32, StartError> {
    // The network first: its tools run as children of the supervisor, before the PID
    // namespace whose first process the container's is.
    let net = crate::network::attach(c)?;
    let address = net.address();
    let own_pid = match sys::unshare_pid() {
        Ok(fd) => fd,
        Err(e) => {
            net.detach();
            return Err(io("make a PID namespace")(e));
        }
    };
    let mut net = Some(net);
    let result = crate::network::etc_files(c, dir, address)
        .map_err(StartError::from)
        .and_then(|etc| supervise_attached(c, dir, &etc, address, &mut net, &own_pid));
    give_back(net, &own_pid);
    result
}

/// Gives back the network's lease (its tools run in the supervisor's own PID namespace:
/// the container's is gone with its first process).
fn give_back(net: Option<crate::network::Attached>, own_pid: &std::os::fd::OwnedFd) {
    if let Some(net) = net {
        let _ = sys::children_in_pid_namespace(own_pid);
        net.detach();
    }
}

/// [`supervise`] once the network is there: gives it back (`net`) once the container's
/// first process has exited, before recording the exit (so that `runner stop` returns
/// with the address and ports free).
fn supervise_attached(
    c: &Container,
    dir: &Path,
    etc: &[(String, std::path::PathBuf)],
    address: Option<std::net::Ipv4Addr>,
    net: &mut Option<crate::network::Attached>,
    own_pid: &std::os::fd::OwnedFd,
) -> Result<i32, StartError> {
    // Every supervisor mounts its container's overlay on the same directory, each in a
    // mount namespace of its own.
    let rootfs = dir.parent().unwrap_or(dir).join(container::ROOTFS_MOUNT_POINT);
    sys::make_mounts_private().map_err(io("make mounts private"))?;
    mount_rootfs(c, dir, &rootfs)?;
    for (target, file) in etc {
        sys::mount_in_root(&rootfs, target, sys::MountSource::Bind(file), false)
            .map_err(io(format!("mount {target}")))?;
    }
    for m in &c.mounts {
        let source = match &m.source {
            Some(p) => sys::MountSource::Bind(p),
            None => sys::MountSource::Tmpfs,
        };
        sys::mount_in_root(&rootfs, &m.target, source, m.read_only)
            .map_err(io(format!("mount {}", m.target)))?;
    }
    sys::set_hostname(&c.hostname).map_err(io("set the hostname"))?;
    let ids = resolve_user(&c.user, &rootfs)?;
    let confined = confinement(&c.security, &seccomp_cache(dir))?;
    let steps = sys::Rootfs::new(
        &rootfs,
        &c.workdir,
        (ids.uid, ids.gid, &ids.groups),
        confined,
        c.read_only,
    )
    .map_err(io("prepare the rootfs"))?;
    let mut cmd = command(&c.command, &process_env(c, &ids));
    let pty = if c.tty {
        Some(sys::Pty::open().map_err(io("open a pseudo-terminal"))?)
    } else {
        None
    };
    let steps = match &pty {
        Some(p) => {
            let slave = || p.slave.try_clone().map_err(io("open a pseudo-terminal"));
            cmd.stdin(slave()?).stdout(slave()?).stderr(slave()?);
            if !c.env.iter().any(|e| e.starts_with("TERM=")) {
                cmd.env("TERM", "xterm");
            }
            steps.with_tty()
        }
        None => steps,
    };
    sys::block_signals().map_err(io("block signals"))?;
    // Joined first, so that the container's process and all it starts are inside; left
    // at once after, so that only the container is.
    let cgroup = Cgroup::join(&c.id, &c.limits, c.security.privileged)?;
    let spawned = sys::spawn_init(cmd, steps);
    let released = cgroup.release_self();
    let mut child = match (spawned, released) {
        (Ok(child), Ok(())) => child,
        (Err(e), _) => {
            let _ = cgroup.remove();
            return Err(io(format!("start {:?}", c.command[0]))(e));
        }
        (Ok(mut child), Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = cgroup.remove();
            return Err(e.into());
        }
    };
    container::write_state(
        dir,
        &ContainerState {
            status: Status::Running,
            pid: Some(std::process::id()),
            init_pid: Some(child.id()),
            init_start: sys::start_time(child.id()),
            exit_code: None,
            address,
        },
    )?;
    let code = match pty {
        None => sys::forward_signals_until_exit(&mut child).map_err(io("wait for the container"))?,
        Some(p) => attach(&mut child, p, true)?,
    };
    give_back(net.take(), own_pid);
    cgroup.remove()?;
    container::write_state(dir, &ContainerState::exited(code))?;
    Ok(code)
}

/// Runs a container (or an exec'd process) on a pseudo-terminal to its end, the
/// caller's terminal raw meanwhile, its standard input passed on when `input` (see
/// `sys::attach_pty`).
pub(crate) fn attach(child: &mut std::process::Child, pty: sys::Pty, input: bool) -> Result<i32, StartError> {
    drop(pty.slave);
    let raw = sys::RawTerminal::enter();
    sys::copy_window_size(&pty.master);
    let code = sys::attach_pty(child, &pty.master, input).map_err(io("run the container on its terminal"));
    drop(raw);
    code
}

/// `argv` to run with exactly the environment `env` (`KEY=VALUE`s).
pub(crate) fn command(argv: &[String], env: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear();
    for e in env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd
}

/// The container process's environment: the container's, plus `HOME` from the user's
/// `/etc/passwd` entry when it sets none (as docker does).
pub(crate) fn process_env(c: &Container, user: &User) -> Vec<String> {
    let mut env = c.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    env
}

/// Who the container's process runs as.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Supplementary groups: those of `/etc/group` that list the user.
    pub(crate) groups: Vec<u32>,
    pub(crate) home: String,
}

/// Reads the image's `/etc/<file>` beneath the rootfs (its symlinks resolve inside the
/// image, never to the host), at most [`MAX_ID_FILE`] bytes of a regular file; empty
/// when there is none, as docker takes it.
fn read_id_file(rootfs: &Path, file: &'static str) -> Result<String, StartError> {
    use std::io::Read;
    let bad = |message: String| StartError::IdFile { file, message };
    let Some(f) = sys::open_in_root(rootfs, &format!("/etc/{file}")).map_err(|e| bad(e.to_string()))? else {
        return Ok(String::new());
    };
    let mut bytes = Vec::new();
    f.take(MAX_ID_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_ID_FILE {
        return Err(bad(format!("larger than {MAX_ID_FILE} bytes")));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Resolves `user[:group]` (names or numbers; empty for root) against the container's
/// `/etc/passwd` and `/etc/group`, as docker does: a user without a group gets the
/// primary group from `/etc/passwd`, or 0 when it has no entry there.
pub(crate) fn resolve_user(spec: &str, rootfs: &Path) -> Result<User, StartError> {
    let (passwd, group) = (read_id_file(rootfs, "passwd")?, read_id_file(rootfs, "group")?);
    // name:x:uid:gid:gecos:home:shell
    let users: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    // name:x:gid:member,member
    let groups: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = if user_part.is_empty() {
        users.iter().find(|f| f[2] == "0")
    } else if let Ok(uid) = user_part.parse::<u32>() {
        users.iter().find(|f| f[2].parse::<u32>().ok() == Some(uid))
    } else {
        Some(
            users
                .iter()
                .find(|f| f[0] == user_part)
                .ok_or_else(|| StartError::UnknownId {
                    what: "user",
                    name: user_part.to_string(),
                    file: "passwd",
                })?,
        )
    };
    let uid = match user_part.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) if user_part.is_empty() => 0,
        Err(_) => entry.and_then(|f| f[2].parse().ok()).unwrap_or(0),
    };
    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| StartError::UnknownId {
                    what: "group",
                    name: g.to_string(),
                    file: "group",
                })?,
        },
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let name = entry.map(|f| f[0]);
    let supplementary = match name {
        Some(n) => groups
            .iter()
            .filter(|f| f[3].split(',').any(|m| m == n))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        None => Vec::new(),
    };
    Ok(User {
        uid,
        gid,
        groups: supplementary,
        home: entry.map_or("/", |f| f[5]).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_like_docker() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nappgrp:x:1001:\nextra:x:2000:app,bob\n",
        )
        .unwrap();
        let r = |s: &str| resolve_user(s, dir.path());
        let root = r("").unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let app = r("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.groups.clone(), app.home.as_str()),
            (1000, 1001, vec![2000], "/home/app")
        );
        assert_eq!(r("1000").unwrap(), app);
        let x = r("1000:extra").unwrap();
        assert_eq!((x.uid, x.gid), (1000, 2000));
        let n = r("4242:7").unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 7, "/"));
        assert!(matches!(
            r("nobody"),
            Err(StartError::UnknownId { what: "user", .. })
        ));
        assert!(matches!(
            r("app:nogroup"),
            Err(StartError::UnknownId { what: "group", .. })
        ));
    }

    #[test]
    fn extra_env_replaces_by_key_and_a_path_is_always_there() {
        let env = merge_env(vec!["A=1".into(), "B=2".into()], &["A=3".into(), "C=".into()]).unwrap();
        assert_eq!(env[..3], ["B=2", "A=3", "C="]);
        assert!(env[3].starts_with("PATH="));
        assert!(matches!(
            merge_env(vec![], &["=x".into()]),
            Err(StartError::BadEnv(_))
        ));
        assert!(matches!(
            merge_env(vec![], &["nokey".into()]),
            Err(StartError::BadEnv(_))
        ));
    }
}
