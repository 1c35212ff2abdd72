//! Every syscall-level step of the container process model — namespaces, mounts,
//! `pivot_root`, masked and read-only paths, capabilities, rlimits, the session keyring,
//! seccomp, signal forwarding — and the only `unsafe` in the runner: the closures that
//! run in a forked child between `fork` and `exec`, and the few raw syscalls rustix does
//! not wrap. Everything the child needs is prepared before the fork (C strings, the
//! seccomp program), so that the child allocates nothing.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Pid, Resource, Rlimit, Signal};
use rustix::thread::{CapabilitySet, UnshareFlags};

/// The namespaces every supervisor starts in: mount, UTS and IPC. The supervisor then
/// makes the network namespace its `--network` asks for ([`new_net_namespace`]), and a
/// PID namespace for its child, the container's first process ([`unshare_pid`]), which
/// also takes a cgroup namespace of its own once it is in its cgroup.
fn namespaces() -> UnshareFlags {
    UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC
}

/// Makes a new network namespace and returns to the caller's: `(host, container)`
/// descriptors of both (the supervisor configures the host side, then enters the
/// container's with [`enter_net_namespace`]).
pub fn new_net_namespace() -> io::Result<(OwnedFd, OwnedFd)> {
    let open = || {
        rustix::fs::open(
            "/proc/thread-self/ns/net",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let host = open()?;
    // SAFETY: CLONE_NEWNET alone changes only this thread's network namespace, which
    // the next line reads back; no descriptor table or file system state is detached.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }?;
    let container = open()?;
    enter_net_namespace(&host)?;
    Ok((host, container))
}

/// Moves the calling thread into the network namespace `ns`.
pub fn enter_net_namespace(ns: &OwnedFd) -> io::Result<()> {
    rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
    Ok(())
}

/// The caller's next child starts a new PID namespace, as its first process (after
/// this the caller can start no thread). Returns the caller's own PID namespace, for
/// [`children_in_pid_namespace`] once that first process is gone (no other child can
/// start in a PID namespace whose first process has exited).
pub fn unshare_pid() -> io::Result<OwnedFd> {
    let own = rustix::fs::open(
        "/proc/self/ns/pid",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: CLONE_NEWPID only sets the namespace the caller's future children get; the
    // caller's own state is unchanged.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWPID) }?;
    Ok(own)
}

/// The caller's next children start in the PID namespace `ns` (its own, from
/// [`unshare_pid`]).
pub fn children_in_pid_namespace(ns: &OwnedFd) -> io::Result<()> {
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::ProcessID),
    )?;
    Ok(())
}

/// How a re-executed supervisor stands towards the caller's terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupervisorGroup {
    /// A session of its own, away from the terminal (`--detach`).
    Detached,
    /// A process group of its own: the caller forwards the terminal's signals to it,
    /// once.
    OwnGroup,
    /// The caller's process group: it uses the terminal itself (`-t`, raw mode), which a
    /// background group may not.
    CallersGroup,
}

/// Spawns the container's supervisor (`runner __init`) in new namespaces, in the
/// session or process group `group` says.
pub fn spawn_supervisor(mut cmd: Command, group: SupervisorGroup) -> io::Result<Child> {
    // SAFETY: this runs in the forked child before exec. It only calls setsid(2) or
    // setpgid(2) and unshare(2), which allocate nothing and take no lock; the child has a
    // single thread, so what unshare detaches cannot be observed by another thread.
    unsafe {
        cmd.pre_exec(move || {
            match group {
                SupervisorGroup::Detached => drop(rustix::process::setsid()?),
                SupervisorGroup::OwnGroup => rustix::process::setpgid(None, None)?,
                SupervisorGroup::CallersGroup => {}
            }
            rustix::thread::unshare_unsafe(namespaces())?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// Whether the calling process has one thread (the condition for [`enter_namespaces`]).
pub fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
        s.rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(17)?.parse::<u32>().ok())
    }) == Some(1)
}

/// Moves the calling process into the container's new mount, UTS and IPC namespaces:
/// the supervisor without a re-exec. The process must be single-threaded.
pub fn enter_namespaces() -> io::Result<()> {
    if !single_threaded() {
        return Err(io::Error::other(
            "enter namespaces: the process has several threads",
        ));
    }
    // SAFETY: checked just above: the process has one thread, so the unshared file
    // system attributes and namespaces cannot be observed half-changed by another.
    unsafe { rustix::thread::unshare_unsafe(namespaces()) }?;
    Ok(())
}

/// A process's start time (clock ticks after boot, field 22 of `/proc/PID/stat`), which
/// tells a PID's process from a later one that reuses the number.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` is still a container's first process that started at `started`: the
/// same start time (clock ticks: two processes can share one), and a PID namespace other
/// than the caller's (a container's first process has one of its own; a host process
/// that reused the number does not).
fn is_container_init(pid: u32, started: Option<u64>) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    started.is_none_or(|s| start_time(pid) == Some(s))
        && matches!((ns(&pid.to_string()), ns("self")), (Some(theirs), Some(ours)) if theirs != ours)
}

/// Sends `sig` to the process `pid` only if it is still the process that started at
/// `started` (see [`start_time`]): through a pidfd, so the check and the signal name the
/// same process even if the PID is reused in between. `Ok(false)` when it is gone.
pub fn signal_checked(pid: u32, started: Option<u64>, sig: i32) -> io::Result<bool> {
    let Some(fd) = open_container_init(pid, started)? else {
        return Ok(false);
    };
    let sig = Signal::from_named_raw(sig).ok_or_else(|| io::Error::other(format!("bad signal {sig}")))?;
    match rustix::process::pidfd_send_signal(&fd, sig) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A pidfd on a container's first process `pid`, if it is still the process that
/// started at `started` (checked after the pidfd pins it, see [`is_container_init`]).
fn open_container_init(pid: u32, started: Option<u64>) -> io::Result<Option<OwnedFd>> {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return Ok(None);
    };
    let fd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(is_container_init(pid, started).then_some(fd))
}

/// Whether a process is still there (and not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// In the supervisor: detaches the container's rootfs mount (before removing it).
pub fn unmount(target: &Path) -> io::Result<()> {
    rustix::mount::unmount(target, UnmountFlags::DETACH)?;
    Ok(())
}

/// In the supervisor: stops mount events from propagating back to the host.
pub fn make_mounts_private() -> io::Result<()> {
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)?;
    Ok(())
}

/// In the supervisor: mounts the overlay of `lower` (bottom first) under `upper` at
/// `target`, `nodev` unless `devices` (a layer's device node never opens).
pub fn mount_overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    devices: bool,
) -> io::Result<()> {
    // overlayfs lists the top layer first.
    let lower: Vec<String> = lower.iter().rev().map(|p| escape(p)).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        escape(upper),
        escape(work)
    );
    if data.len() >= 4096 {
        return Err(io::Error::other(format!(
            "overlay mount options too long ({} bytes, {} layers)",
            data.len(),
            lower.len()
        )));
    }
    let data = CString::new(data).map_err(|_| io::Error::other("overlay options with a NUL byte"))?;
    let flags = if devices {
        MountFlags::empty()
    } else {
        MountFlags::NODEV
    };
    rustix::mount::mount("overlay", target, "overlay", flags, Some(data.as_c_str()))?;
    Ok(())
}

/// Escapes what overlayfs's option parser treats specially in a path.
fn escape(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

/// In the supervisor: the container's hostname (its own UTS namespace).
pub fn set_hostname(name: &str) -> io::Result<()> {
    rustix::system::sethostname(name.as_bytes())?;
    Ok(())
}

/// Opens `path` (absolute, as seen inside the container) beneath `root` for reading:
/// symlinks resolve as if `root` were `/` (never to the host), and only a regular file
/// is accepted (a FIFO or device never blocks or has side effects: the open is
/// `O_PATH`). `Ok(None)` when it does not exist.
pub fn open_in_root(root: &Path, path: &str) -> io::Result<Option<std::fs::File>> {
    use rustix::fs::ResolveFlags;
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
    let fd = match rustix::fs::openat2(
        &dir,
        path.trim_start_matches('/'),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        how,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::other(format!(
            "{path} in the image is not a regular file"
        )));
    }
    // Reopen the pinned inode for reading through its descriptor.
    let file = rustix::fs::openat(
        &dir,
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    Ok(Some(std::fs::File::from(file)))
}

/// What to mount at a path inside the container.
#[derive(Debug, Clone, Copy)]
pub enum MountSource<'a> {
    /// A host directory or file, bound.
    Bind(&'a Path),
    /// A fresh tmpfs (`nosuid`, `nodev`, `noexec`, as docker's `--tmpfs`).
    Tmpfs,
}

/// In the supervisor, with the container's root mounted at `root`: mounts `source` on
/// `target` (absolute, as seen inside the container), read-only when asked. The target
/// is resolved beneath the root (`RESOLVE_IN_ROOT`: the image's symlinks and `..` stay
/// inside it) and made when missing (directories, or an empty file for a file bind); the
/// mount goes on the descriptor so resolved (`/proc/self/fd/N`), never on a path that
/// could be swapped meanwhile. The container's first process inherits the mount with
/// its copy of the supervisor's mount namespace.
pub fn mount_in_root(root: &Path, target: &str, source: MountSource<'_>, read_only: bool) -> io::Result<()> {
    use rustix::fs::ResolveFlags;
    let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut comps: Vec<String> = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect();
    if comps.is_empty() || comps.iter().any(|c| c == "..") {
        return Err(io::Error::other(format!(
            "mount target {target:?}: want an absolute path without .."
        )));
    }
    let file_target = matches!(source, MountSource::Bind(p) if !p.is_dir());
    let open = |path: &str, dir_only: bool| {
        let flags = OFlags::PATH
            | OFlags::CLOEXEC
            | if dir_only {
                OFlags::DIRECTORY
            } else {
                OFlags::empty()
            };
        rustix::fs::openat2(&dir, path, flags, Mode::empty(), how)
    };
    // Make each missing component, beneath the root. A dangling symlink on the way is
    // followed as the kernel would (inside the root): its target is made instead.
    let mut i = 1;
    let mut links = 0;
    while i <= comps.len() {
        let last = i == comps.len();
        match open(&comps[..i].join("/"), !(last && file_target)) {
            Ok(_) => {
                i += 1;
                continue;
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io::Error::other(format!("mount target {target}: {e}"))),
        }
        let parent = open(&comps[..i - 1].join("/"), true).or_else(|_| {
            rustix::fs::openat(
                &dir,
                ".",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        })?;
        // Through /proc/self/fd: the parent descriptor is an O_PATH one.
        let parent_path = format!("/proc/self/fd/{}", parent.as_raw_fd());
        let parent = rustix::fs::open(
            &parent_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let name = comps[i - 1].as_str();
        let made = if last && file_target {
            rustix::fs::openat(
                &parent,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(&parent, name, Mode::from(0o755))
        };
        match made {
            Ok(()) => i += 1,
            Err(rustix::io::Errno::EXIST) => {
                // A dangling symlink: continue along its target, clamped to the root.
                links += 1;
                let link = rustix::fs::readlinkat(&parent, name, Vec::new())?;
                if links > 40 {
                    return Err(io::Error::other(format!(
                        "mount target {target}: too many symlinks"
                    )));
                }
                let link = link.to_string_lossy().into_owned();
                let mut next: Vec<String> = if link.starts_with('/') {
                    Vec::new()
                } else {
                    comps[..i - 1].to_vec()
                };
                for c in link.split('/').chain(comps[i..].iter().map(String::as_str)) {
                    match c {
                        "" | "." => {}
                        ".." => {
                            next.pop();
                        }
                        c => next.push(c.to_string()),
                    }
                }
                if next.is_empty() {
                    return Err(io::Error::other(format!(
                        "mount target {target}: resolves to the root"
                    )));
                }
                comps = next;
                i = 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let path = comps.join("/");
    let fd = open(&path, !file_target)?;
    let at = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let hardened = MountFlags::NOSUID | MountFlags::NODEV;
    match source {
        MountSource::Bind(src) => rustix::mount::mount_bind_recursive(src, &at)?,
        MountSource::Tmpfs => rustix::mount::mount(
            "tmpfs",
            &at,
            "tmpfs",
            hardened | MountFlags::NOEXEC,
            Some(c"mode=1777,size=65536k"),
        )?,
    }
    if read_only {
        // The new mount is on top now: find it again, and remount it read-only.
        let fd = open(&path, !file_target)?;
        let at = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let extra = if matches!(source, MountSource::Tmpfs) {
            hardened | MountFlags::NOEXEC
        } else {
            MountFlags::empty()
        };
        rustix::mount::mount_remount(&at, MountFlags::BIND | MountFlags::RDONLY | extra, c"")?;
    }
    Ok(())
}

/// The capabilities a container keeps by default, docker's default set, by name and
/// number. Everything else leaves the bounding set before exec, so the command (root or
/// not) can never hold it; `runner export` writes the same names into the bundle.
pub const DEFAULT_CAPABILITIES: [(&str, u32); 14] = [
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_MKNOD", 27),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_SETFCAP", 31),
];

/// Every capability the kernel knows, by name and number.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of a capability name (`CAP_` prefix optional, any case).
pub fn capability_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    ALL_CAPABILITIES.iter().position(|c| *c == full).map(|i| i as u32)
}

/// Device nodes bind-mounted from the host into the container's `/dev` (the devices
/// cgroup allows these and denies the rest).
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// `/proc` and `/sys` paths hidden from the container, as docker hides them.
pub const MASKED_PATHS: [&CStr; 12] = [
    c"/proc/acpi",
    c"/proc/asound",
    c"/proc/interrupts",
    c"/proc/kcore",
    c"/proc/keys",
    c"/proc/latency_stats",
    c"/proc/sched_debug",
    c"/proc/scsi",
    c"/proc/timer_list",
    c"/proc/timer_stats",
    c"/sys/devices/virtual/powercap",
    c"/sys/firmware",
];

/// `/proc` paths the container may read but not write, as docker mounts them.
pub const READONLY_PATHS: [&CStr; 5] = [
    c"/proc/bus",
    c"/proc/fs",
    c"/proc/irq",
    c"/proc/sys",
    c"/proc/sysrq-trigger",
];

/// The resource limits a container starts with, whatever its caller had: docker's
/// open-file limit, no core dumps by default, the kernel's defaults elsewhere (each
/// capped by the runner's own hard limit). `(resource, soft, hard)`, `None` for
/// unlimited.
const RLIMITS: [(Resource, Option<u64>, Option<u64>); 6] = [
    (Resource::Nofile, Some(1_048_576), Some(1_048_576)),
    (Resource::Core, Some(0), None),
    (Resource::Stack, Some(8 << 20), None),
    (Resource::Memlock, Some(8 << 20), Some(8 << 20)),
    (Resource::Cpu, None, None),
    (Resource::Fsize, None, None),
];

/// How much a container is confined (docker's defaults unless the user asked for less).
#[derive(Debug, Clone)]
pub struct Confinement {
    /// Capability numbers kept in the bounding set (and effective for root).
    pub capabilities: Vec<u32>,
    /// The compiled seccomp program and its `seccomp(2)` flags, installed last before
    /// exec; `None` for unconfined.
    pub seccomp: Option<(Vec<libc::sock_filter>, u32)>,
    /// `--privileged`: no masked or read-only paths, `/sys` writable, the host's devices.
    pub privileged: bool,
}

/// What the container's first process does before exec, with every path ready.
pub struct Rootfs {
    rootfs: CString,
    proc_dir: CString,
    dev_dir: CString,
    pts_dir: CString,
    shm_dir: CString,
    mqueue_dir: CString,
    sys_dir: CString,
    /// Host device, and the file to bind it on.
    devices: Vec<(CString, CString)>,
    /// `/dev/fd`, `/dev/stdin`, `/dev/ptmx`… symlinks: (target, link).
    links: Vec<(CString, CString)>,
    workdir: CString,
    masked: Vec<&'static CStr>,
    readonly: Vec<&'static CStr>,
    /// The kernel's highest capability number.
    last_cap: u32,
    keep: CapabilitySet,
    seccomp: Option<(Vec<libc::sock_filter>, u32)>,
    privileged: bool,
    read_only: bool,
    /// `runner exec`: the running container's first process (a pidfd), whose mount,
    /// UTS, IPC, network and cgroup namespaces are joined instead of made.
    join: Option<OwnedFd>,
    /// Standard input is a pseudo-terminal the process takes as its controlling one.
    tty: bool,
    uid: rustix::process::Uid,
    gid: rustix::process::Gid,
    /// Supplementary groups, ready for setgroups(2).
    supplementary: Vec<rustix::process::Gid>,
}

fn c(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes()).map_err(|_| io::Error::other("path with a NUL byte"))
}

impl Rootfs {
    /// Prepares the steps for a container whose root is the mounted `rootfs`, to start
    /// in `workdir` (a path inside it) as `uid`, `gid` and supplementary `groups`, confined
    /// as `confinement` says. Creates the mount points it needs.
    pub fn new(
        rootfs: &Path,
        workdir: &str,
        ids: (u32, u32, &[u32]),
        confinement: Confinement,
        read_only: bool,
    ) -> io::Result<Rootfs> {
        for d in ["proc", "dev", "sys"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        let dev = rootfs.join("dev");
        let privileged = confinement.privileged;
        let mut r = Rootfs::new_unmounted(workdir, ids, confinement)?;
        r.rootfs = c(rootfs)?;
        r.proc_dir = c(rootfs.join("proc"))?;
        r.dev_dir = c(&dev)?;
        r.pts_dir = c(dev.join("pts"))?;
        r.shm_dir = c(dev.join("shm"))?;
        r.mqueue_dir = c(dev.join("mqueue"))?;
        r.sys_dir = c(rootfs.join("sys"))?;
        r.read_only = read_only;
        if !privileged {
            r.devices = DEVICES
                .iter()
                .map(|d| Ok((c(format!("/dev/{d}"))?, c(dev.join(d))?)))
                .collect::<io::Result<_>>()?;
            r.masked = MASKED_PATHS.to_vec();
            r.readonly = READONLY_PATHS.to_vec();
        }
        r.links = [
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
            ("/proc/kcore", "core"),
            ("pts/ptmx", "ptmx"),
        ]
        .iter()
        .filter(|(_, l)| !privileged || !matches!(*l, "ptmx" | "core"))
        // As runc: `/dev/core` only where the kernel has a `/proc/kcore`.
        .filter(|(_, l)| *l != "core" || Path::new("/proc/kcore").exists())
        .map(|(t, l)| Ok((c(t)?, c(dev.join(l))?)))
        .collect::<io::Result<_>>()?;
        Ok(r)
    }

    /// The steps for a process `runner exec` starts in the running container whose first
    /// process is `pidfd`: its namespaces joined, in `workdir`, as `ids`, confined as
    /// `confinement` says. The caller has joined its PID namespace ([`join_pid_namespace`]).
    pub fn for_exec(
        pidfd: OwnedFd,
        workdir: &str,
        ids: (u32, u32, &[u32]),
        confinement: Confinement,
    ) -> io::Result<Rootfs> {
        let mut steps = Rootfs::new_unmounted(workdir, ids, confinement)?;
        steps.join = Some(pidfd);
        Ok(steps)
    }

    fn new_unmounted(workdir: &str, ids: (u32, u32, &[u32]), confinement: Confinement) -> io::Result<Rootfs> {
        let (uid, gid, groups) = ids;
        let mut keep = CapabilitySet::empty();
        for n in &confinement.capabilities {
            if *n < 64 {
                keep |= CapabilitySet::from_bits_retain(1 << n);
            }
        }
        let none = c("")?;
        Ok(Rootfs {
            rootfs: none.clone(),
            proc_dir: none.clone(),
            dev_dir: none.clone(),
            pts_dir: none.clone(),
            shm_dir: none.clone(),
            mqueue_dir: none.clone(),
            sys_dir: none,
            devices: Vec::new(),
            links: Vec::new(),
            workdir: c(if workdir.is_empty() { "/" } else { workdir })?,
            masked: Vec::new(),
            readonly: Vec::new(),
            last_cap: std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(40),
            keep,
            seccomp: confinement.seccomp,
            privileged: confinement.privileged,
            read_only: false,
            join: None,
            tty: false,
            uid: rustix::process::Uid::from_raw(uid),
            gid: rustix::process::Gid::from_raw(gid),
            supplementary: groups
                .iter()
                .map(|g| rustix::process::Gid::from_raw(*g))
                .collect(),
        })
    }

    /// The process's standard input is a pseudo-terminal ([`Pty`]), to take as its
    /// controlling terminal in its new session.
    pub fn with_tty(mut self) -> Rootfs {
        self.tty = true;
        self
    }

    /// Runs in the container's first process before exec (see `spawn_init`).
    fn enter(&self) -> io::Result<()> {
        use rustix::mount::mount;
        // Die with the supervisor; a session of its own, without the caller's terminal
        // as controlling terminal (no TIOCSTI into the caller's shell).
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        // The supervisor blocks the signals it forwards; the container starts with none
        // blocked (a forked child inherits the mask).
        // SAFETY: an empty local set; sets this thread's mask only.
        let r = unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        rustix::process::setsid()?;
        if self.tty {
            rustix::process::ioctl_tiocsctty(std::io::stdin())?;
        }
        if let Some(pidfd) = &self.join {
            // The container's namespaces (its PID namespace was joined by the caller,
            // for its children); the mount namespace's root is the container's.
            use rustix::thread::ThreadNameSpaceType as T;
            let all = T::MOUNT
                | T::HOST_NAME_AND_NIS_DOMAIN_NAME
                | T::INTER_PROCESS_COMMUNICATION
                | T::NETWORK
                | T::CONTROL_GROUP;
            rustix::thread::move_into_thread_name_spaces(pidfd.as_fd(), all)?;
            rustix::process::chdir(&*self.workdir)?;
            return self.confine();
        }
        // A mount namespace of its own: `pivot_root` moves the root of every process in
        // the namespace, and the supervisor must keep the host's view. A cgroup
        // namespace rooted at the container's cgroup, which it is in by now.
        // SAFETY: a single-threaded child between fork and exec; no file table is
        // unshared, so no other thread can observe a changed descriptor table.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS | UnshareFlags::NEWCGROUP) }?;
        let hardened = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        mount(c"proc", &*self.proc_dir, c"proc", hardened, None)?;
        if self.privileged {
            rustix::mount::mount_bind_recursive(c"/dev", &*self.dev_dir)?;
        } else {
            mount(
                c"tmpfs",
                &*self.dev_dir,
                c"tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV | MountFlags::STRICTATIME,
                Some(c"mode=755,size=65536k"),
            )?;
            for (host, inside) in &self.devices {
                drop(rustix::fs::open(
                    &**inside,
                    OFlags::CREATE | OFlags::WRONLY,
                    Mode::from(0o666),
                )?);
                rustix::mount::mount_bind(&**host, &**inside)?;
            }
            rustix::fs::mkdir(&*self.pts_dir, Mode::from(0o755))?;
            mount(
                c"devpts",
                &*self.pts_dir,
                c"devpts",
                MountFlags::NOSUID | MountFlags::NOEXEC,
                Some(c"newinstance,ptmxmode=0666,mode=0620,gid=5"),
            )?;
            for (target, link) in &self.links {
                rustix::fs::symlink(&**target, &**link)?;
            }
            rustix::fs::mkdir(&*self.shm_dir, Mode::from(0o1777))?;
            mount(
                c"shm",
                &*self.shm_dir,
                c"tmpfs",
                hardened,
                Some(c"mode=1777,size=65536k"),
            )?;
            rustix::fs::mkdir(&*self.mqueue_dir, Mode::from(0o755))?;
            mount(c"mqueue", &*self.mqueue_dir, c"mqueue", hardened, None)?;
        }
        let sys_flags = if self.privileged {
            hardened
        } else {
            hardened | MountFlags::RDONLY
        };
        mount(c"sysfs", &*self.sys_dir, c"sysfs", sys_flags, None)?;
        // pivot_root(".", "."), as runc does: the old root is stacked under the new one
        // and detached at once, with no directory left in the container for it.
        rustix::process::chdir(&*self.rootfs)?;
        rustix::process::pivot_root(c".", c".")?;
        rustix::mount::unmount(c".", UnmountFlags::DETACH)?;
        rustix::process::chdir(c"/")?;
        for p in &self.masked {
            mask(p)?;
        }
        for p in &self.readonly {
            read_only(p)?;
        }
        if self.read_only {
            // `--read-only`: the root itself; /dev, /dev/shm, /proc… stay as mounted.
            let dev = if self.privileged {
                MountFlags::empty()
            } else {
                MountFlags::NODEV
            };
            rustix::mount::mount_remount(c"/", MountFlags::BIND | MountFlags::RDONLY | dev, c"")?;
        }
        rustix::process::chdir(&*self.workdir)?;
        self.confine()
    }

    /// The process-level confinement, last before exec: rlimits, capabilities and user,
    /// a session keyring, descriptors, `no_new_privs`, seccomp.
    fn confine(&self) -> io::Result<()> {
        // Before the capabilities go: raising a hard limit takes CAP_SYS_RESOURCE.
        for (resource, soft, hard) in RLIMITS {
            // Never above the hard limit the runner itself has (raising it takes
            // CAP_SYS_RESOURCE, which not every host gives root).
            let cap = rustix::process::getrlimit(resource).maximum;
            let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, None) | (None, a) => a,
            };
            let maximum = min(hard, cap);
            rustix::process::setrlimit(
                resource,
                Rlimit {
                    current: min(soft, maximum),
                    maximum,
                },
            )?;
        }
        self.drop_privileges()?;
        // A session keyring of its own: the host's keys are not the container's.
        // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL) reads no memory of ours.
        let r = unsafe { libc::syscall(libc::SYS_keyctl, libc::KEYCTL_JOIN_SESSION_KEYRING, 0usize) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // No descriptor of the caller's reaches the command (CVE-2024-21626's class);
        // close-on-exec rather than closed, so std's exec-error pipe keeps working.
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
        let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        rustix::thread::set_no_new_privs(true)?;
        if let Some((program, flags)) = &self.seccomp {
            install_seccomp(program, *flags)?;
        }
        Ok(())
    }

    /// Capabilities and identity: docker's bounding set, no inheritable or ambient
    /// capabilities, securebits reset, then the user; root keeps the bounding set as its
    /// effective set, any other user none.
    fn drop_privileges(&self) -> io::Result<()> {
        use rustix::thread::{self as t, CapabilitiesSecureBits};
        t::set_capabilities_secure_bits(CapabilitiesSecureBits::empty())?;
        for cap in 0..=self.last_cap.min(63) {
            let set = CapabilitySet::from_bits_retain(1 << cap);
            if !self.keep.contains(set) {
                t::remove_capability_from_bounding_set(set)?;
            }
        }
        // Keep the permitted set across the change of user, so that setuid works even
        // when CAP_SETUID is not one the container keeps; the sets are cut right after.
        t::set_keep_capabilities(true)?;
        t::set_thread_groups(&self.supplementary)?;
        t::set_thread_res_gid(self.gid, self.gid, self.gid)?;
        t::set_thread_res_uid(self.uid, self.uid, self.uid)?;
        t::set_keep_capabilities(false)?;
        // What the runner itself holds bounds what it can grant (a host may withhold some
        // capabilities from root).
        let held = t::capabilities(None)?.permitted;
        let granted = if self.uid.is_root() {
            self.keep & held
        } else {
            CapabilitySet::empty()
        };
        t::set_capabilities(
            None,
            t::CapabilitySets {
                effective: granted,
                permitted: granted,
                inheritable: CapabilitySet::empty(),
            },
        )?;
        t::clear_ambient_capability_set()?;
        Ok(())
    }
}

/// Hides a path: an empty read-only tmpfs over a directory, `/dev/null` over a file.
fn mask(path: &CStr) -> io::Result<()> {
    match rustix::fs::stat(path) {
        Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory => {
            rustix::mount::mount(c"tmpfs", path, c"tmpfs", MountFlags::RDONLY, None)?;
        }
        Ok(_) => rustix::mount::mount_bind(c"/dev/null", path)?,
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Makes a path read-only: a bind mount of itself, remounted read-only.
fn read_only(path: &CStr) -> io::Result<()> {
    match rustix::mount::mount_bind_recursive(path, path) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    rustix::mount::mount_remount(
        path,
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"",
    )?;
    Ok(())
}

/// Installs a classic-BPF seccomp program for this thread (after `no_new_privs`).
fn install_seccomp(program: &[libc::sock_filter], flags: u32) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| io::Error::other("seccomp program too long"))?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags as usize,
            &prog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a pidfd on the running container's first process `pid`, if it is still the
/// process that started at `started`, and moves the caller's future children into its
/// PID namespace (`runner exec`).
pub fn join_pid_namespace(pid: u32, started: Option<u64>) -> io::Result<Option<OwnedFd>> {
    let Some(fd) = open_container_init(pid, started)? else {
        return Ok(None);
    };
    rustix::thread::move_into_thread_name_spaces(
        fd.as_fd(),
        rustix::thread::ThreadNameSpaceType::PROCESS_ID,
    )?;
    Ok(Some(fd))
}

/// Spawns the container's first process: `cmd` (already given its environment and
/// arguments) after `rootfs`'s steps. Called by the supervisor, whose children are in
/// the container's new PID namespace.
pub fn spawn_init(mut cmd: Command, rootfs: Rootfs) -> io::Result<Child> {
    // SAFETY: this runs in the forked child before exec. The supervisor that forks is
    // single-threaded, and the closure only makes syscalls through rustix and libc on C
    // strings and a seccomp program prepared before the fork: it allocates nothing and
    // takes no lock.
    unsafe {
        cmd.pre_exec(move || rootfs.enter());
    }
    cmd.spawn()
}

/// A pseudo-terminal for a container (`-t`): the supervisor keeps the master, the
/// container's process gets the slave as its standard streams and controlling terminal.
pub struct Pty {
    pub master: std::fs::File,
    pub slave: std::fs::File,
}

impl Pty {
    pub fn open() -> io::Result<Pty> {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?;
        Ok(Pty {
            master: std::fs::File::from(master),
            slave,
        })
    }
}

/// The caller's terminal in raw mode while a container has it (`-t`); restored when
/// dropped. `None` when standard input is not a terminal.
pub struct RawTerminal(rustix::termios::Termios);

impl RawTerminal {
    pub fn enter() -> Option<RawTerminal> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, &self.0);
    }
}

/// Copies the caller's terminal size (standard input) to `pty`'s master, if it has one.
pub fn copy_window_size(master: &std::fs::File) {
    if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stdin()) {
        let _ = rustix::termios::tcsetwinsize(master, size);
    }
}

/// A process's exit as a shell reports it: its exit code, or 128 + the signal that
/// ended it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Runs a container on a pseudo-terminal to its end, in the supervisor's one thread (a
/// process that made a PID namespace for its children can make no thread): standard
/// input is copied to the pty's `master` and the master to standard output, SIGWINCH
/// copies the caller's window size, the other forwarded signals go to `child`. The
/// signals must be blocked ([`block_signals`]). Standard input is not read unless
/// `input`. Returns the exit code (128 + signal).
pub fn attach_pty(child: &mut Child, master: &std::fs::File, input: bool) -> io::Result<i32> {
    use rustix::event::{PollFd, PollFlags, poll};
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    let set = signal_set(true);
    // SAFETY: signalfd(-1, set, flags) makes a new descriptor from a valid local set.
    let raw = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor this function owns from here.
    let mut sigfd = unsafe { std::fs::File::from_raw_fd(raw) };
    let stdin = std::io::stdin();
    let mut stdin_open = input;
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 16 << 10];
    let mut master_r = master;
    let mut master_w = master;
    let pid = child.id();
    let finish =
        |child: &mut Child, master_r: &mut &std::fs::File, out: &mut std::io::Stdout| -> io::Result<i32> {
            // What the container wrote last (the master reads EIO once its side is closed).
            let _ = rustix::fs::fcntl_setfl(*master_r, rustix::fs::OFlags::NONBLOCK);
            let mut buf = [0u8; 16 << 10];
            while let Ok(n) = master_r.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = out.flush();
            Ok(exit_code(child.wait()?))
        };
    loop {
        if child.try_wait()?.is_some() {
            return finish(child, &mut master_r, &mut out);
        }
        let (mut fds, stdin_at) = {
            let mut fds = vec![
                PollFd::new(master, PollFlags::IN),
                PollFd::new(&sigfd, PollFlags::IN),
            ];
            let at = if stdin_open {
                fds.push(PollFd::new(&stdin, PollFlags::IN));
                Some(2)
            } else {
                None
            };
            (fds, at)
        };
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let master_ev = fds[0].revents();
        let sig_ev = fds[1].revents();
        let stdin_ev = stdin_at
            .map(|i| fds[i].revents())
            .unwrap_or_else(PollFlags::empty);
        drop(fds);
        if master_ev.intersects(PollFlags::IN) {
            match master_r.read(&mut buf) {
                Ok(n) if n > 0 => {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
                _ => return finish(child, &mut master_r, &mut out),
            }
        } else if master_ev.intersects(PollFlags::HUP | PollFlags::ERR) {
            return finish(child, &mut master_r, &mut out);
        }
        if stdin_ev.intersects(PollFlags::IN | PollFlags::HUP) {
            match stdin.lock().read(&mut buf) {
                Ok(n) if n > 0 => master_w.write_all(&buf[..n])?,
                _ => stdin_open = false,
            }
        }
        if sig_ev.intersects(PollFlags::IN) {
            let mut info = [0u8; 128];
            if sigfd.read(&mut info)? == 128 {
                let sig = i32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                if sig == libc::SIGWINCH {
                    copy_window_size(master);
                } else if sig != libc::SIGCHLD
                    && let (Some(p), Some(s)) = (Pid::from_raw(pid as i32), Signal::from_named_raw(sig))
                {
                    let _ = rustix::process::kill_process(p, s);
                }
            }
        }
    }
}

/// The signals a supervisor passes on to its container (as `docker run`'s proxy does).
const FORWARDED: [i32; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

fn signal_set(with_child: bool) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset write only the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        if with_child {
            libc::sigaddset(&mut set, libc::SIGCHLD);
        }
        set
    }
}

/// Blocks the forwarded signals (and SIGCHLD) in the calling process, so that
/// [`forward_signals_until_exit`] receives them synchronously. The container's first
/// process unblocks them before exec (`Rootfs::enter`); a re-executed supervisor
/// blocks them again itself.
pub fn block_signals() -> io::Result<()> {
    let set = signal_set(true);
    // SAFETY: sets the calling thread's mask from a valid local set.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Waits for `child` to exit, passing every forwarded signal the caller receives on to
/// it; returns its wait status as `(exit code, or 128 + signal)`. The signals must be
/// blocked ([`block_signals`]) before `child` was spawned.
pub fn forward_signals_until_exit(child: &mut Child) -> io::Result<i32> {
    let set = signal_set(true);
    let pid = child.id();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(exit_code(status));
        }
        // SAFETY: `info` is a valid out-parameter; `set` a valid signal set.
        let sig = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let timeout = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            libc::sigtimedwait(&set, &mut info, &timeout)
        };
        if sig < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        if sig != libc::SIGCHLD
            && let Some(p) = Pid::from_raw(pid as i32)
            && let Some(s) = Signal::from_named_raw(sig)
        {
            let _ = rustix::process::kill_process(p, s);
        }
    }
}

/// Loads `insns` as a cgroup device program (`BPF_PROG_TYPE_CGROUP_DEVICE`, see
/// `devices.rs`). When the kernel refuses it (`EINVAL`, `EACCES`), the load is tried once
/// more with a log buffer and the verifier's log goes into the error.
pub fn load_device_program(insns: &[crate::devices::BpfInsn]) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    /// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to the fields used, zero-padded
    /// (the kernel wants whatever it knows beyond the fields used to be zero).
    #[repr(C)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        zero: [u8; 64],
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    const _: () = assert!(std::mem::size_of::<ProgLoadAttr>() == 128);
    const _: () = assert!(std::mem::size_of::<crate::devices::BpfInsn>() == 8);
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"strata_dev");
    let load = |log: Option<&mut [u8]>| -> io::Result<OwnedFd> {
        let (log_level, log_size, log_buf) = match log {
            Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
            None => (0, 0, 0),
        };
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: u32::try_from(insns.len()).map_err(|_| io::Error::other("device program too long"))?,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size,
            log_buf,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            zero: [0; 64],
        };
        // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute of the size passed; the
        // instructions, the license and the log buffer it points at outlive the call (the
        // kernel copies the first two and writes at most `log_size` bytes into the last).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this new descriptor (close-on-exec), ours alone.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    match load(None) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EACCES)) => {
            let mut log = vec![0u8; 256 << 10];
            let again = load(Some(&mut log));
            let len = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..len]);
            match again {
                Ok(fd) => Ok(fd),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!(
                        "load the device program: {e}; the verifier says:\n{}",
                        log.trim_end()
                    ),
                )),
            }
        }
        other => other,
    }
}

/// Attaches a device program (from [`load_device_program`]) to the cgroup whose directory
/// `cgroup_dir` is open (`BPF_CGROUP_DEVICE`, with `BPF_F_ALLOW_MULTI`: the programs of
/// its ancestors still run, and every one of them must allow a device).
pub fn attach_device_program(cgroup_dir: &std::fs::File, prog: &std::os::fd::OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    /// The `BPF_PROG_ATTACH` member of `union bpf_attr`, up to the fields used, zero-padded.
    #[repr(C)]
    struct ProgAttachAttr {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
        zero: [u8; 112],
    }
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_CGROUP_DEVICE: u32 = 6;
    const BPF_F_ALLOW_MULTI: u32 = 2;
    const _: () = assert!(std::mem::size_of::<ProgAttachAttr>() == 128);
    let attr = ProgAttachAttr {
        target_fd: cgroup_dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        zero: [0; 112],
    };
    // SAFETY: `attr` is a valid BPF_PROG_ATTACH attribute of the size passed, naming two
    // descriptors that are open for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
