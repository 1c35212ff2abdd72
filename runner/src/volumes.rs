//! What a container mounts besides its image: host directories (`-v /host:/ctr[:ro]`),
//! named volumes kept in the store (`-v NAME:/ctr`, `<root>/volumes/<name>/_data`) and
//! tmpfs (`--tmpfs /ctr`); and `runner volume create/ls/rm`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors with mounts and volumes.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume {0:?} (want SOURCE:/TARGET[:ro|rw], SOURCE a host path or a volume name)")]
    BadSpec(String),
    #[error("invalid volume name {0:?} (letters, digits, _ . -; a letter or digit first)")]
    BadName(String),
    #[error("no such volume: {0}")]
    NoVolume(String),
    #[error("volume {name} is used by container {container}")]
    InUse { name: String, container: String },
    #[error("host path {path}: {source}")]
    HostPath {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, VolumeError>;

/// One mount of a container, fixed when it is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountSpec {
    /// Absolute path inside the container.
    pub target: String,
    /// The host path bound (a host directory or file, or a volume's `_data`); `None` for
    /// a tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// The named volume, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default)]
    pub read_only: bool,
}

fn volumes_dir(store_root: &Path) -> PathBuf {
    store_root.join("volumes")
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> VolumeError {
    move |source| VolumeError::Io { context, source }
}

/// Creates the named volume (if missing) and returns its data directory.
pub fn create_volume(store_root: &Path, name: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    if !valid_name(name) {
        return Err(VolumeError::BadName(name.to_string()));
    }
    let dir = volumes_dir(store_root);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(format!("create {}", dir.display())))?;
    let data = dir.join(name).join("_data");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&data)
        .map_err(io(format!("create {}", data.display())))?;
    Ok(data)
}

/// The named volumes, sorted.
pub fn list_volumes(store_root: &Path) -> Result<Vec<String>> {
    let dir = volumes_dir(store_root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("read {}", dir.display()))(e)),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| valid_name(n))
        .collect();
    names.sort();
    Ok(names)
}

/// Removes a named volume and its data; refused while a container (running or not)
/// mounts it.
pub fn remove_volume(store_root: &Path, name: &str) -> Result<()> {
    if !valid_name(name) {
        return Err(VolumeError::BadName(name.to_string()));
    }
    let path = volumes_dir(store_root).join(name);
    if !path.is_dir() {
        return Err(VolumeError::NoVolume(name.to_string()));
    }
    let containers = crate::container::list(store_root).map_err(|e| VolumeError::Io {
        context: "list containers".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if let Some((c, _)) = containers
        .iter()
        .find(|(c, _)| c.mounts.iter().any(|m| m.volume.as_deref() == Some(name)))
    {
        return Err(VolumeError::InUse {
            name: name.to_string(),
            container: c.id[..12].to_string(),
        });
    }
    std::fs::remove_dir_all(&path).map_err(io(format!("remove {}", path.display())))
}

/// Parses `-v` and `--tmpfs` values into mounts, creating named volumes on first use.
pub fn parse_mounts(store_root: &Path, volumes: &[String], tmpfs: &[String]) -> Result<Vec<MountSpec>> {
    let mut out = Vec::new();
    for v in volumes {
        let parts: Vec<&str> = v.split(':').collect();
        let (src, target, mode) = match parts[..] {
            [s, t] => (s, t, "rw"),
            [s, t, m] => (s, t, m),
            _ => return Err(VolumeError::BadSpec(v.clone())),
        };
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            _ => return Err(VolumeError::BadSpec(v.clone())),
        };
        if !target.starts_with('/') || src.is_empty() {
            return Err(VolumeError::BadSpec(v.clone()));
        }
        let (source, volume) = if src.starts_with('/') {
            let p = std::fs::canonicalize(src).map_err(|source| VolumeError::HostPath {
                path: src.into(),
                source,
            })?;
            (p, None)
        } else {
            (create_volume(store_root, src)?, Some(src.to_string()))
        };
        out.push(MountSpec {
            target: target.to_string(),
            source: Some(source),
            volume,
            read_only,
        });
    }
    for t in tmpfs {
        let target = t.split(':').next().unwrap_or_default();
        if !target.starts_with('/') {
            return Err(VolumeError::BadSpec(t.clone()));
        }
        out.push(MountSpec {
            target: target.to_string(),
            source: None,
            volume: None,
            read_only: false,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_docker_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let host = root.join("host");
        std::fs::create_dir(&host).unwrap();
        let h = host.to_str().unwrap();
        let m = parse_mounts(
            root,
            &[format!("{h}:/data:ro"), "cache:/var/cache".into()],
            &["/tmp".into()],
        )
        .unwrap();
        assert_eq!(m[0].source.as_deref(), Some(host.as_path()));
        assert!(m[0].read_only && m[0].volume.is_none());
        assert_eq!(m[1].volume.as_deref(), Some("cache"));
        assert!(root.join("volumes/cache/_data").is_dir());
        assert_eq!((m[2].target.as_str(), m[2].source.is_none()), ("/tmp", true));
        assert_eq!(list_volumes(root).unwrap(), ["cache"]);
        for bad in ["/x", "a:b", "a:/b:rx", ":/b", "a:/b:ro:x"] {
            assert!(parse_mounts(root, &[bad.into()], &[]).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_mounts(root, &["../x:/b".into()], &[]),
            Err(VolumeError::BadName(_))
        ));
        assert!(matches!(
            parse_mounts(root, &["/no/such/dir:/b".into()], &[]),
            Err(VolumeError::HostPath { .. })
        ));
        remove_volume(root, "cache").unwrap();
        assert!(list_volumes(root).unwrap().is_empty());
        assert!(matches!(
            remove_volume(root, "cache"),
            Err(VolumeError::NoVolume(_))
        ));
    }
}
