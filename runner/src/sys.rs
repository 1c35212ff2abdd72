//! Every syscall-level step of the container process model — namespaces, mounts,
//! `pivot_root`, hostname, `no_new_privs` — and the only `unsafe` in the runner: the two
//! closures that run in a forked child between `fork` and `exec`. Paths those closures
//! use are turned into C strings before the fork, so that the child allocates nothing.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::UnshareFlags;

/// The namespaces every container gets: mount, UTS, IPC and network for the supervisor
/// and its child, PID for the child (the first process of a new PID namespace).
fn namespaces() -> UnshareFlags {
    UnshareFlags::NEWNS
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWPID
}

/// Spawns the container's supervisor (`runner __init`) in new namespaces; `detach` also
/// puts it in a session of its own, away from the terminal.
pub fn spawn_supervisor(mut cmd: Command, detach: bool) -> io::Result<Child> {
    // SAFETY: this runs in the forked child before exec. It only calls unshare(2) and
    // setsid(2), which allocate nothing and take no lock; the child has a single thread,
    // so what unshare detaches (no file table here) cannot be observed by another thread.
    unsafe {
        cmd.pre_exec(move || {
            if detach {
                rustix::process::setsid()?;
            }
            rustix::thread::unshare_unsafe(namespaces())?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends `signal` (`TERM` or `KILL`) to a container's first process, by its host PID.
pub fn signal(pid: u32, kill: bool) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("bad pid"))?;
    let sig = if kill {
        rustix::process::Signal::KILL
    } else {
        rustix::process::Signal::TERM
    };
    rustix::process::kill_process(pid, sig)?;
    Ok(())
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
/// `target`.
pub fn mount_overlay(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
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
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(data.as_c_str()),
    )?;
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

/// The capabilities a container keeps, docker's default set, by name and number.
/// Everything else leaves the bounding set before exec, so the command (root or not)
/// can never hold it; `runner export` writes the same names into the bundle.
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

/// [`DEFAULT_CAPABILITIES`] as a bit mask (`0xa80425fb`, as `CapBnd` shows it).
const DEFAULT_CAPABILITY_MASK: u64 = {
    let mut mask = 0u64;
    let mut i = 0;
    while i < DEFAULT_CAPABILITIES.len() {
        mask |= 1 << DEFAULT_CAPABILITIES[i].1;
        i += 1;
    }
    mask
};

/// Device nodes bind-mounted from the host into the container's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// What the container's first process does before exec, with every path ready.
pub struct Rootfs {
    rootfs: CString,
    proc_dir: CString,
    dev_dir: CString,
    shm_dir: CString,
    sys_dir: CString,
    /// Host device, and the file to bind it on.
    devices: Vec<(CString, CString)>,
    /// `/dev/fd`, `/dev/stdin`… symlinks: (target, link).
    links: Vec<(CString, CString)>,
    put_old: CString,
    put_old_inside: CString,
    workdir: CString,
    /// The kernel's highest capability number.
    last_cap: u32,
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
    /// in `workdir` (a path inside it) as `uid`, `gid` and supplementary `groups`.
    /// Creates the mount points it needs.
    pub fn new(rootfs: &Path, workdir: &str, uid: u32, gid: u32, groups: &[u32]) -> io::Result<Rootfs> {
        for d in ["proc", "dev", "sys", ".strata-old-root"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        let dev = rootfs.join("dev");
        Ok(Rootfs {
            rootfs: c(rootfs)?,
            proc_dir: c(rootfs.join("proc"))?,
            dev_dir: c(&dev)?,
            shm_dir: c(dev.join("shm"))?,
            sys_dir: c(rootfs.join("sys"))?,
            devices: DEVICES
                .iter()
                .map(|d| Ok((c(format!("/dev/{d}"))?, c(dev.join(d))?)))
                .collect::<io::Result<_>>()?,
            links: [
                ("/proc/self/fd", "fd"),
                ("/proc/self/fd/0", "stdin"),
                ("/proc/self/fd/1", "stdout"),
                ("/proc/self/fd/2", "stderr"),
            ]
            .iter()
            .map(|(t, l)| Ok((c(t)?, c(dev.join(l))?)))
            .collect::<io::Result<_>>()?,
            put_old: c(rootfs.join(".strata-old-root"))?,
            put_old_inside: c("/.strata-old-root")?,
            workdir: c(if workdir.is_empty() { "/" } else { workdir })?,
            last_cap: std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(40),
            uid: rustix::process::Uid::from_raw(uid),
            gid: rustix::process::Gid::from_raw(gid),
            supplementary: groups
                .iter()
                .map(|g| rustix::process::Gid::from_raw(*g))
                .collect(),
        })
    }

    /// Runs in the container's first process before exec (see `spawn_init`).
    fn enter(&self) -> io::Result<()> {
        use rustix::mount::mount;
        // Die with the supervisor.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        // A mount namespace of its own: `pivot_root` moves the root of every process in
        // the namespace, and the supervisor must keep the host's view.
        // SAFETY: a single-threaded child between fork and exec; no file table is
        // unshared, so no other thread can observe a changed descriptor table.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }?;
        mount(
            rustix::cstr!("proc"),
            &*self.proc_dir,
            rustix::cstr!("proc"),
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )?;
        mount(
            rustix::cstr!("tmpfs"),
            &*self.dev_dir,
            rustix::cstr!("tmpfs"),
            MountFlags::NOSUID | MountFlags::STRICTATIME,
            Some(rustix::cstr!("mode=755,size=65536k")),
        )?;
        for (host, inside) in &self.devices {
            drop(rustix::fs::open(
                &**inside,
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from(0o666),
            )?);
            rustix::mount::mount_bind(&**host, &**inside)?;
        }
        for (target, link) in &self.links {
            rustix::fs::symlink(&**target, &**link)?;
        }
        rustix::fs::mkdir(&*self.shm_dir, Mode::from(0o1777))?;
        mount(
            rustix::cstr!("shm"),
            &*self.shm_dir,
            rustix::cstr!("tmpfs"),
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            Some(rustix::cstr!("mode=1777,size=65536k")),
        )?;
        mount(
            rustix::cstr!("sysfs"),
            &*self.sys_dir,
            rustix::cstr!("sysfs"),
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )?;
        rustix::process::pivot_root(&*self.rootfs, &*self.put_old)?;
        rustix::process::chdir(rustix::cstr!("/"))?;
        rustix::mount::unmount(&*self.put_old_inside, UnmountFlags::DETACH)?;
        rustix::fs::rmdir(&*self.put_old_inside)?;
        rustix::process::chdir(&*self.workdir)?;
        for cap in 0..=self.last_cap.min(63) {
            if DEFAULT_CAPABILITY_MASK & (1 << cap) == 0 {
                let set = rustix::thread::CapabilitySet::from_bits_retain(1 << cap);
                rustix::thread::remove_capability_from_bounding_set(set)?;
            }
        }
        rustix::thread::set_no_new_privs(true)?;
        // Last: a user other than root loses the capabilities it had.
        rustix::thread::set_thread_groups(&self.supplementary)?;
        rustix::thread::set_thread_res_gid(self.gid, self.gid, self.gid)?;
        rustix::thread::set_thread_res_uid(self.uid, self.uid, self.uid)?;
        Ok(())
    }
}

/// Spawns the container's first process: `cmd` (already given its environment and
/// arguments) after `rootfs`'s steps. Called by the supervisor, whose children are in
/// the container's new PID namespace.
pub fn spawn_init(mut cmd: Command, rootfs: Rootfs) -> io::Result<Child> {
    // SAFETY: this runs in the forked child before exec. The supervisor that forks is
    // single-threaded, and the closure only makes syscalls through rustix on C strings
    // prepared before the fork: it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || rootfs.enter());
    }
    cmd.spawn()
}
