//! What a container runtime needs of an image — its ID, its unpacked layers' directories
//! and its config — and a cache of that answer which is read without opening the
//! metadata database, so that starting a container from an unpacked image costs a few
//! file reads. A cache entry holds the metadata's fingerprint (the names, sizes and
//! modification times of the database's files): any write to the metadata since
//! changes it, and the entry is then ignored.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Largest cache entry read (configs are capped at 4 MiB where they are read).
const MAX_ENTRY: u64 = 8 << 20;

/// An image ready to run: every layer unpacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnableImage {
    /// The image ID (its config's digest).
    pub image_id: Digest,
    /// The unpacked layers' directories (overlayfs lower directories), bottom first.
    pub layers: Vec<PathBuf>,
    /// The image config, as stored.
    pub config: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    fingerprint: String,
    image: RunnableImage,
}

fn cache_dir(root: &Path) -> PathBuf {
    root.join("cache").join("runnable")
}

fn entry_path(root: &Path, name: &str) -> PathBuf {
    cache_dir(root).join(hex::encode(Sha256::digest(name.as_bytes())))
}

/// The metadata's fingerprint: every file of `meta/` but RocksDB's text log, with its
/// size and modification time. Any write to the database changes it (its WAL grows, or
/// new tables and manifests appear).
pub(crate) fn fingerprint(root: &Path) -> io::Result<String> {
    let dir = root.join("meta");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "LOCK" || name.starts_with("LOG") {
            continue;
        }
        let m = match e.metadata() {
            Ok(m) => m,
            // A file removed while listing: the database changed; the caller's view is stale.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        files.push(format!("{name}:{}:{}.{}", m.len(), m.mtime(), m.mtime_nsec()));
    }
    files.sort();
    Ok(hex::encode(Sha256::digest(files.join("\n").as_bytes())))
}

/// The cached answer for `name` (as the user typed it), when the metadata has not
/// changed since it was recorded and every layer is still unpacked. Never opens the
/// database; any doubt is a `None`.
pub fn cached_runnable(root: &Path, name: &str) -> Option<RunnableImage> {
    use std::io::Read;
    let file = std::fs::File::open(entry_path(root, name)).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_ENTRY).read_to_end(&mut bytes).ok()?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    if entry.name != name || entry.fingerprint != fingerprint(root).ok()? {
        return None;
    }
    let layers_dir = root.join("layers");
    for l in &entry.image.layers {
        if !l.starts_with(&layers_dir) || !std::fs::symlink_metadata(l).is_ok_and(|m| m.is_dir()) {
            return None;
        }
    }
    Some(entry.image)
}

/// Answers to record once the metadata database is closed (opening and closing it
/// changes its files, so the fingerprint is taken after), while the store's write lock
/// is still held (so nothing else wrote meanwhile). Part of a writable `Store`, dropped
/// between the two.
pub(crate) struct Remembered {
    root: Option<PathBuf>,
    pending: std::sync::Mutex<Vec<(String, RunnableImage)>>,
}

impl Remembered {
    pub(crate) fn new(root: &Path) -> Remembered {
        Remembered {
            root: Some(root.to_path_buf()),
            pending: Default::default(),
        }
    }

    /// For read-only views, which record nothing.
    pub(crate) fn disabled() -> Remembered {
        Remembered {
            root: None,
            pending: Default::default(),
        }
    }

    pub(crate) fn add(&self, name: &str, image: &RunnableImage) {
        if self.root.is_some() {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.retain(|(n, _)| n != name);
            p.push((name.to_string(), image.clone()));
        }
    }
}

impl Drop for Remembered {
    fn drop(&mut self) {
        let pending = std::mem::take(self.pending.get_mut().unwrap_or_else(|e| e.into_inner()));
        if let (Some(root), false) = (&self.root, pending.is_empty()) {
            for (name, image) in &pending {
                remember(root, name, image);
            }
        }
    }
}

/// Records `image` as the answer for `name` at the metadata's current state. Best
/// effort: a cache that cannot be written only costs the next start a database open.
fn remember(root: &Path, name: &str, image: &RunnableImage) {
    use std::os::unix::fs::DirBuilderExt;
    let Ok(fingerprint) = fingerprint(root) else {
        return;
    };
    let dir = cache_dir(root);
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .is_err()
    {
        return;
    }
    let entry = Entry {
        name: name.to_string(),
        fingerprint,
        image: image.clone(),
    };
    let Ok(bytes) = serde_json::to_vec(&entry) else {
        return;
    };
    let path = entry_path(root, name);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, &path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
