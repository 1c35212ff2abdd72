//! Resource limits through cgroups, v2 (the unified hierarchy) or v1 (one hierarchy per
//! controller), whichever the host mounts at `/sys/fs/cgroup`. A container's group is
//! `strata/<id>` under each hierarchy it uses (v1: devices and freezer always, memory
//! and pids when limited); the supervisor joins it before it spawns the container's
//! process, so everything the container starts is inside, leaves it at once, and removes
//! it when the container has exited. The devices controller enforces docker's device
//! allowlist; the freezer pauses a container for `runner commit -p`. Cgroup v2 has no
//! devices controller: there the same allowlist is an eBPF program (`devices.rs`) attached
//! to the container's group ([`confine_devices`]).
//!
//! `STRATA_CGROUP_V2_ROOT`, when set (to a cgroup2 mount such as `/sys/fs/cgroup/unified`
//! on a hybrid host), makes containers use v2 at that root whatever `/sys/fs/cgroup` is:
//! a test aid for v2 on a v1 host. Memory and pids limits then need their controllers
//! enabled at that root; the device program works on any cgroup2 directory.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::devices::DevicePolicy;
use crate::sys;

/// Errors setting up or removing a container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy with the {0} controller at /sys/fs/cgroup")]
    NoController(&'static str),
    #[error("cgroup {path}: device program: {source}")]
    DeviceProgram {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, CgroupError>;

/// A container's limits.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Memory in bytes (swap included where the host accounts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Most processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// CPU time, in thousandths of a CPU (`--cpus 1.5` is 1500): a CFS quota per
    /// 100 ms period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_milli: Option<u64>,
}

/// The CFS period the CPU quota is given in (docker's).
const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.pids.is_none() && self.cpus_milli.is_none()
    }

    /// The CFS quota in microseconds per [`CPU_PERIOD_US`].
    fn cpu_quota_us(&self) -> Option<u64> {
        self.cpus_milli.map(|m| (m * CPU_PERIOD_US / 1000).max(1000))
    }
}

const ROOT: &str = "/sys/fs/cgroup";

/// The environment variable naming a cgroup2 mount to use instead of `/sys/fs/cgroup`.
pub const V2_ROOT_ENV: &str = "STRATA_CGROUP_V2_ROOT";

/// The cgroup2 root [`V2_ROOT_ENV`] names, if set.
fn v2_root_override() -> Option<PathBuf> {
    std::env::var_os(V2_ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The cgroup2 hierarchy to use: [`V2_ROOT_ENV`]'s, or `/sys/fs/cgroup` when it is one;
/// `None` for v1.
fn v2_root() -> Option<PathBuf> {
    let root = Path::new(ROOT);
    v2_root_override().or_else(|| {
        root.join("cgroup.controllers")
            .exists()
            .then(|| root.to_path_buf())
    })
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn create(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The device rules of a confined container, in the devices cgroup's (v1) syntax:
/// everything denied, then device nodes may be created (`m`) but only these opened —
/// docker's default allowlist (null, zero, full, random, urandom, tty, console, ptmx and
/// the container's own pseudo-terminals).
pub const DEVICE_ALLOW: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// A container's cgroup: `strata/<id>` in each hierarchy it uses.
#[derive(Debug)]
pub struct Cgroup {
    /// The container's group directories (one per hierarchy), and the hierarchy roots.
    groups: Vec<(PathBuf, PathBuf)>,
}

impl Cgroup {
    /// Creates `strata/<id>` with `limits` and the device allowlist (all devices when
    /// `all_devices`), and moves the calling process into it, so that the container's
    /// process it spawns next starts inside; then call [`Cgroup::release_self`].
    pub fn join(id: &str, limits: &Limits, all_devices: bool) -> Result<Cgroup> {
        match v2_root() {
            Some(root) => Self::join_v2(&root, id, limits, all_devices),
            None => Self::join_v1(Path::new(ROOT), id, limits, all_devices),
        }
    }

    fn join_v2(root: &Path, id: &str, limits: &Limits, all_devices: bool) -> Result<Cgroup> {
        let parent = root.join("strata");
        create(&parent)?;
        let wanted: Vec<&str> = [
            limits.memory.map(|_| "memory"),
            limits.pids.map(|_| "pids"),
            limits.cpus_milli.map(|_| "cpu"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for dir in [root, parent.as_path()] {
            let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            for c in &wanted {
                if !available.split_whitespace().any(|a| a == *c) {
                    return Err(CgroupError::NoController(c));
                }
                write(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
            }
        }
        let group = parent.join(id);
        create(&group)?;
        if let Some(m) = limits.memory {
            write(&group.join("memory.max"), &m.to_string())?;
            // No swap beyond the limit, as docker's --memory alone does not allow either
            // when swap accounting is on; absent without swap accounting.
            let swap = group.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        if let Some(p) = limits.pids {
            write(&group.join("pids.max"), &p.to_string())?;
        }
        if let Some(q) = limits.cpu_quota_us() {
            write(&group.join("cpu.max"), &format!("{q} {CPU_PERIOD_US}"))?;
        }
        if !all_devices && let Err(e) = confine_devices(&group) {
            let _ = std::fs::remove_dir(&group);
            return Err(e);
        }
        write(&group.join("cgroup.procs"), &std::process::id().to_string())?;
        Ok(Cgroup {
            groups: vec![(group, root.to_path_buf())],
        })
    }

    fn join_v1(root: &Path, id: &str, limits: &Limits, all_devices: bool) -> Result<Cgroup> {
        let mut cg = Cgroup { groups: Vec::new() };
        let mut setup = |controller: &'static str, files: Vec<(&str, String)>| -> Result<()> {
            let hierarchy = root.join(controller);
            if !hierarchy.join("cgroup.procs").exists() {
                return Err(CgroupError::NoController(controller));
            }
            let group = hierarchy.join("strata").join(id);
            create(&group)?;
            cg.groups.push((group.clone(), hierarchy));
            for (file, value) in files {
                write(&group.join(file), &value)?;
            }
            write(&group.join("cgroup.procs"), &std::process::id().to_string())?;
            Ok(())
        };
        let mut devices = vec![("devices.deny", "a".to_string())];
        if all_devices {
            devices.push(("devices.allow", "a".into()));
        } else {
            devices.extend(DEVICE_ALLOW.iter().map(|r| ("devices.allow", r.to_string())));
        }
        setup("devices", devices)?;
        setup("freezer", Vec::new())?;
        if let Some(m) = limits.memory {
            setup("memory", vec![("memory.limit_in_bytes", m.to_string())])?;
        }
        if let Some(p) = limits.pids {
            setup("pids", vec![("pids.max", p.to_string())])?;
        }
        if let Some(q) = limits.cpu_quota_us() {
            setup(
                "cpu",
                vec![
                    ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", q.to_string()),
                ],
            )?;
        }
        Ok(cg)
    }

    /// Moves the calling process (the supervisor) back to each hierarchy's root: only
    /// the container's processes stay in its groups.
    pub fn release_self(&self) -> Result<()> {
        for (_, hierarchy) in &self.groups {
            write(&hierarchy.join("cgroup.procs"), &std::process::id().to_string())?;
        }
        Ok(())
    }

    /// Removes the container's groups (all its processes have exited by then; a
    /// group whose last process is still being torn down is retried briefly).
    pub fn remove(self) -> Result<()> {
        for (group, _) in &self.groups {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(group) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(16) && tries < 200 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(source) => {
                        return Err(CgroupError::Io {
                            path: group.clone(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Confines the processes of the cgroup2 group `group` (a directory of a cgroup2 mount) to
/// docker's device allowlist, [`DEVICE_ALLOW`]: the policy's eBPF program, attached to
/// the group (with the programs of its ancestors, if any, still in force). What
/// [`Cgroup::join`] does on v2 for a container that is not privileged.
pub fn confine_devices(group: &Path) -> Result<()> {
    let program = DevicePolicy::docker().program();
    let failed = |source| CgroupError::DeviceProgram {
        path: group.to_path_buf(),
        source,
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(group)
        .map_err(|source| CgroupError::Io {
            path: group.to_path_buf(),
            source,
        })?;
    let prog = sys::load_device_program(&program).map_err(failed)?;
    // The group holds the program from here on; it goes with the group.
    sys::attach_device_program(&dir, &prog).map_err(failed)
}

/// Moves the calling process into the running container `id`'s groups, in every
/// hierarchy where it has one (`runner exec`: what it starts is limited, counted and
/// device-confined as the container is).
pub fn join_existing(id: &str) -> Result<()> {
    let root = Path::new(ROOT);
    let v2 = v2_root();
    let groups: Vec<PathBuf> = match v2 {
        Some(v2) => vec![v2.join("strata").join(id)],
        None => ["devices", "freezer", "memory", "pids", "cpu"]
            .iter()
            .map(|c| root.join(c).join("strata").join(id))
            .filter(|g| g.is_dir())
            .collect(),
    };
    for g in groups {
        write(&g.join("cgroup.procs"), &std::process::id().to_string())?;
    }
    Ok(())
}

/// The file in a container's directory held (`flock`ed) while `runner commit -p` keeps
/// it frozen.
pub const FROZEN_MARKER: &str = "frozen.lock";

/// A frozen container: its processes are thawed when this is dropped.
#[derive(Debug)]
pub struct Frozen {
    file: PathBuf,
    thaw: &'static str,
    marker: PathBuf,
    _held: std::fs::File,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.file, self.thaw);
        let _ = std::fs::remove_file(&self.marker);
    }
}

/// Container `id`'s freezer: the file that freezes and thaws it, the values for each, and
/// the file and line that say it is frozen.
fn freezer(id: &str) -> (PathBuf, &'static str, &'static str, PathBuf, &'static str) {
    match v2_root() {
        Some(v2) => {
            let group = v2.join("strata").join(id);
            (
                group.join("cgroup.freeze"),
                "1",
                "0",
                group.join("cgroup.events"),
                "frozen 1",
            )
        }
        None => {
            let state = Path::new(ROOT)
                .join("freezer")
                .join("strata")
                .join(id)
                .join("freezer.state");
            (state.clone(), "FROZEN", "THAWED", state, "FROZEN")
        }
    }
}

/// Freezes every process of container `id` (the v1 freezer, or v2's `cgroup.freeze`)
/// and waits until they are all stopped. `marker` (a file in the container's directory)
/// is created and `flock`ed first and held while frozen: a process killed meanwhile
/// leaves it unlocked, and [`thaw_orphaned`] thaws the container.
pub fn freeze(id: &str, marker: &Path) -> Result<Frozen> {
    let (file, on, thaw, check, want) = freezer(id);
    let io = |source| CgroupError::Io {
        path: marker.to_path_buf(),
        source,
    };
    let held = std::fs::File::create(marker).map_err(io)?;
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).map_err(|e| io(e.into()))?;
    write(&file, on)?;
    let frozen = Frozen {
        file,
        thaw,
        marker: marker.to_path_buf(),
        _held: held,
    };
    for _ in 0..2000 {
        if std::fs::read_to_string(&check).is_ok_and(|s| s.lines().any(|l| l.trim() == want)) {
            return Ok(frozen);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(CgroupError::Io {
        path: frozen.file.clone(),
        source: std::io::Error::other("the container did not freeze within 10 s"),
    })
}

/// Thaws container `id` if a process that froze it (see [`freeze`]) died holding it
/// frozen (`runner commit -p` killed). True when it did.
pub fn thaw_orphaned(id: &str, marker: &Path) -> bool {
    let Ok(held) = std::fs::File::open(marker) else {
        return false;
    };
    if rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return false; // its freezer is alive
    }
    let (file, _, thaw, _, _) = freezer(id);
    let thawed = std::fs::write(&file, thaw).is_ok();
    let _ = std::fs::remove_file(marker);
    thawed
}

/// Parses a byte count: digits with an optional `b`, `k`, `m` or `g` suffix (powers of
/// 1024), as docker's `--memory` takes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (digits, shift) = match s.chars().last()? {
        'b' => (&s[..s.len() - 1], 0),
        'k' => (&s[..s.len() - 1], 10),
        'm' => (&s[..s.len() - 1], 20),
        'g' => (&s[..s.len() - 1], 30),
        _ => (s.as_str(), 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_docker_suffixes() {
        assert_eq!(parse_bytes("64m"), Some(64 << 20));
        assert_eq!(parse_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_bytes("512k"), Some(512 << 10));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("10b"), Some(10));
        for bad in ["", "m", "-1m", "0", "1.5g", "99999999999g", "1t"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }
}
