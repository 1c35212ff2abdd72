//! A container on disk: `<root>/containers/<id>/` holds `config.json` (what to run, fixed
//! at creation), `state.json` (status, supervisor PID, exit code), and the overlay's
//! `upper/`, `work/` and mount point `rootfs/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::Limits;

/// Errors reading or writing containers.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad container record {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("container prefix {0:?} is ambiguous")]
    Ambiguous(String),
    #[error("container {0} is running")]
    Running(String),
    #[error("container {0} is not running")]
    NotRunning(String),
}

type Result<T, E = ContainerError> = std::result::Result<T, E>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let context = context.into();
    move |source| ContainerError::Io { context, source }
}

/// What a container runs, fixed when it is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The image as the user named it, and its ID.
    pub image: String,
    pub image_id: String,
    pub created: String,
    /// Program and arguments (the image's entrypoint and command, or what was given).
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// `user[:group]`, names or numbers, resolved in the container's `/etc/passwd` and
    /// `/etc/group` when it starts; empty for root.
    #[serde(default)]
    pub user: String,
    pub hostname: String,
    /// The image's unpacked layers, bottom first.
    pub layers: Vec<PathBuf>,
    /// Remove the container when its process exits.
    pub remove: bool,
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// How far the container is confined (docker's defaults unless asked otherwise).
    #[serde(default)]
    pub security: Security,
    /// `--read-only`: its root filesystem is mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// `-t`: its process runs on a pseudo-terminal (foreground containers only).
    #[serde(default)]
    pub tty: bool,
    /// Host directories, volumes and tmpfs mounted into it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::volumes::MountSpec>,
    /// `--network`.
    #[serde(default = "crate::network::NetworkMode::legacy")]
    pub network: crate::network::NetworkMode,
    /// `-p`: ports published on the host (bridge network only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::network::PortSpec>,
    /// The bridge's subnet it asks for (`--bridge-subnet`); the default when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
}

/// A container's confinement, fixed when it is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Security {
    /// `--privileged`: every capability, no seccomp, no masked or read-only paths, every
    /// device.
    #[serde(default)]
    pub privileged: bool,
    /// The capabilities it keeps, by name (`CAP_CHOWN`…).
    pub capabilities: Vec<String>,
    pub seccomp: SeccompChoice,
}

/// Which seccomp filter a container runs under.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SeccompChoice {
    /// docker's default profile.
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A profile in docker's JSON format, as given (`--security-opt seccomp=FILE`).
    Profile(String),
}

impl SeccompChoice {
    /// The profile's source in docker's JSON format; `None` for unconfined.
    pub fn source(&self) -> Option<&[u8]> {
        match self {
            SeccompChoice::Unconfined => None,
            SeccompChoice::Default => Some(crate::seccomp::docker_default_source()),
            SeccompChoice::Profile(json) => Some(json.as_bytes()),
        }
    }
}

impl Default for Security {
    /// docker's defaults: its capability set and seccomp profile.
    fn default() -> Security {
        Security {
            privileged: false,
            capabilities: crate::sys::DEFAULT_CAPABILITIES
                .iter()
                .map(|(n, _)| n.to_string())
                .collect(),
            seccomp: SeccompChoice::Default,
        }
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// A container's changing state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerState {
    pub status: Status,
    /// The supervisor's PID while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The container's first process, by its host PID, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<u32>,
    /// The first process's start time (see `sys::start_time`): a reused PID is not it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Its address on the bridge while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
}

/// Where supervisors mount their container's root (`containers/.rootfs`): one directory
/// for all, since each mounts it in a mount namespace of its own.
pub const ROOTFS_MOUNT_POINT: &str = ".rootfs";

impl ContainerState {
    /// Exited with `code`.
    pub fn exited(code: i32) -> ContainerState {
        ContainerState {
            status: Status::Exited,
            pid: None,
            init_pid: None,
            init_start: None,
            exit_code: Some(code),
            address: None,
        }
    }
}

/// `<root>/containers`.
pub fn containers_dir(store_root: &Path) -> PathBuf {
    store_root.join("containers")
}

/// Creates `<root>/containers` readable by root only: containers hold device nodes,
/// setuid files and the secrets given with `--env`.
fn create_containers_dir(store_root: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = containers_dir(store_root);
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        Ok(()) => {}
        Err(e) => return Err(io(format!("create {}", dir.display()))(e)),
    }
    let mode = std::fs::metadata(&dir)
        .map_err(io(format!("stat {}", dir.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", dir.display())))?;
    }
    Ok(dir)
}

impl Container {
    pub fn dir(&self, store_root: &Path) -> PathBuf {
        containers_dir(store_root).join(&self.id)
    }

    /// Creates the container's directory and records (status `created`).
    pub fn create(&self, store_root: &Path) -> Result<PathBuf> {
        create_containers_dir(store_root)?;
        let dir = self.dir(store_root);
        let mount_point = dir.parent().unwrap_or(&dir).join(ROOTFS_MOUNT_POINT);
        std::fs::create_dir_all(&mount_point).map_err(io(format!("create {}", mount_point.display())))?;
        for d in ["upper", "work"] {
            std::fs::create_dir_all(dir.join(d)).map_err(io(format!("create {}", dir.join(d).display())))?;
        }
        write_json(&dir.join("config.json"), self)?;
        write_state(
            &dir,
            &ContainerState {
                status: Status::Created,
                pid: None,
                init_pid: None,
                init_start: None,
                exit_code: None,
                address: None,
            },
        )?;
        Ok(dir)
    }

    /// Reads a container's record from its directory.
    pub fn load(dir: &Path) -> Result<Container> {
        read_json(&dir.join("config.json"))
    }
}

/// Reads a container's state.
pub fn read_state(dir: &Path) -> Result<ContainerState> {
    read_json(&dir.join("state.json"))
}

/// Replaces a container's state atomically.
pub fn write_state(dir: &Path, state: &ContainerState) -> Result<()> {
    write_json(&dir.join("state.json"), state)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(io(format!("read {}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|source| ContainerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| ContainerError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(&tmp, bytes).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("rename {}", path.display())))
}

/// The one container an ID, unique ID prefix or name names, with its state.
pub fn find(store_root: &Path, t: &str) -> Result<(Container, ContainerState)> {
    let all = list(store_root)?;
    // As docker: a full ID or a name first, then an ID prefix (a name like "b2" is not
    // made ambiguous by an ID that happens to start with it).
    let exact = all
        .iter()
        .position(|(c, _)| c.id == t || c.name.as_deref() == Some(t));
    let mut matches: Vec<(Container, ContainerState)> = match exact {
        Some(i) => vec![all.into_iter().nth(i).expect("index from position")],
        None => all.into_iter().filter(|(c, _)| c.id.starts_with(t)).collect(),
    };
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(ContainerError::NotFound(t.to_string())),
        _ => Err(ContainerError::Ambiguous(t.to_string())),
    }
}

/// Every container in the store, with its state, oldest first.
pub fn list(store_root: &Path) -> Result<Vec<(Container, ContainerState)>> {
    let dir = containers_dir(store_root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("read {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(format!("read {}", dir.display())))?;
        let path = entry.path();
        if let (Ok(c), Ok(s)) = (Container::load(&path), read_state(&path)) {
            out.push((c, s));
        }
    }
    out.sort_by(|a, b| a.0.created.cmp(&b.0.created));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_full_ids_win_over_id_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let make = |id: &str, name: &str| Container {
            id: id.to_string(),
            name: Some(name.to_string()),
            image: "bb:1".into(),
            image_id: String::new(),
            created: id.to_string(),
            command: vec!["/bin/true".into()],
            env: Vec::new(),
            workdir: "/".into(),
            user: String::new(),
            hostname: "h".into(),
            layers: Vec::new(),
            remove: false,
            limits: Limits::default(),
            security: Security::default(),
            read_only: false,
            tty: false,
            mounts: Vec::new(),
            network: crate::network::NetworkMode::None,
            ports: Vec::new(),
            subnet: None,
        };
        make("b2aaaa", "other").create(dir.path()).unwrap();
        make("ccbbbb", "b2").create(dir.path()).unwrap();
        make("b2cccc", "third").create(dir.path()).unwrap();
        assert_eq!(find(dir.path(), "b2").unwrap().0.id, "ccbbbb");
        assert_eq!(find(dir.path(), "b2cccc").unwrap().0.id, "b2cccc");
        assert!(matches!(find(dir.path(), "b2c"), Ok((c, _)) if c.id == "b2cccc"));
        assert!(matches!(find(dir.path(), "b2a"), Ok((c, _)) if c.id == "b2aaaa"));
        assert!(matches!(find(dir.path(), "b"), Err(ContainerError::Ambiguous(_))));
        assert!(matches!(find(dir.path(), "zz"), Err(ContainerError::NotFound(_))));
    }
}
