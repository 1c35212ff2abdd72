//! The layer store: layers unpacked once per chain ID into `<root>/layers/<hex>/diff`
//! (overlay lowerdirs), built in `.tmp` and renamed into place so a layer directory is
//! either complete or absent, serialised across threads and processes by `flock`, with
//! identical files shared through a hardlink pool (`.pool`).
//!
//! Layout under `<store root>/layers/`:
//! - `<chain-id-hex>/diff/` — the unpacked layer; `<chain-id-hex>/layer.json` — its
//!   [`UnpackReport`].
//! - `.tmp/<unique>/` — unpacks in progress, each `flock`ed by its owner; unlocked ones
//!   are debris of a killed process and are removed by [`LayerStore::clean_tmp`].
//! - `.locks/<chain-id-hex>.lock` — one per chain ID; removed only by
//!   [`LayerStore::remove`] while held (lockers re-check the inode after locking).
//! - `.pool/<key-hex>` — one link of every deduplicated file; the key hashes content,
//!   mode, owner, mtime and xattrs, so only files identical in every respect share an
//!   inode (lower layers are read-only under overlayfs, so the inode never changes).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::digest::Digest;
use crate::unpack::{UnpackError, UnpackOptions, UnpackReport, unpack_layer_tracked};

const TMP: &str = ".tmp";
const LOCKS: &str = ".locks";
const POOL: &str = ".pool";
const DIFF: &str = "diff";
const META: &str = "layer.json";

/// The OCI image-spec ChainID: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))` over the `sha256:...`
/// strings.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => *diff_id,
        Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
    }
}

/// Errors from the layer store.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("diff id mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
    #[error("unpacking layer {chain_id}: {source}")]
    Unpack {
        chain_id: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("layer {chain_id}: unreadable {META}: {reason}")]
    Corrupt { chain_id: Digest, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Disk usage of the layer store (see [`LayerStore::du`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerUsage {
    /// Unpacked layers.
    pub layers: u64,
    /// Sum of regular file sizes over every path in every layer, as if nothing were
    /// shared.
    pub apparent_bytes: u64,
    /// Blocks allocated (`st_blocks * 512`) under `layers/`, each inode counted once.
    pub actual_bytes: u64,
    /// Blocks of inodes reached by more than one layer path (the shared storage).
    pub shared_bytes: u64,
    /// Blocks saved by sharing: for each shared inode, its blocks times (paths - 1).
    pub saved_bytes: u64,
    /// Entries in the dedup pool.
    pub pool_entries: u64,
}

/// Unpacked layers by chain ID. Cheap to clone; all state is on disk.
#[derive(Debug, Clone)]
pub struct LayerStore {
    dir: PathBuf,
    opts: UnpackOptions,
    dedup: bool,
    sync: bool,
}

/// An exclusive `flock` on a chain ID's lock file.
struct ChainLock {
    file: File,
    path: PathBuf,
}

/// A `.tmp` directory owned (and `flock`ed) by this unpack; removed on drop unless
/// kept.
struct TmpDir {
    path: PathBuf,
    _lock: File,
    keep: bool,
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = remove_tree(&self.path);
        }
    }
}

fn flock_retry(file: &File, op: FlockOperation) -> io::Result<()> {
    loop {
        match rustix::fs::flock(file, op) {
            Err(Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

fn same_inode(file: &File, path: &Path) -> io::Result<bool> {
    let held = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a tree without following symlinks; makes directories writable first if a
/// plain removal is refused (unprivileged runs, read-only directories from a layer).
fn remove_tree(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            for entry in walkdir::WalkDir::new(path).follow_links(false) {
                let Ok(entry) = entry else { continue };
                if entry.file_type().is_dir() {
                    let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
                }
            }
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

impl LayerStore {
    /// Opens (creating) `<store_root>/layers` and removes debris of killed unpacks.
    pub fn open(store_root: &Path) -> Result<LayerStore, LayerError> {
        let dir = store_root.join("layers");
        for sub in [TMP, LOCKS] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        // Unpacked layers hold what images ship (setuid files, device nodes): only the
        // store's owner may reach them, as docker keeps its overlay2 directory.
        let mode = fs::metadata(&dir)
            .map_err(io_err("reading", &dir))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting mode of", &dir))?;
        }
        let pool = dir.join(POOL);
        if let Err(e) = fs::create_dir(&pool) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(io_err("creating", &pool)(e));
            }
        } else {
            // Pool links are the layers' own inodes; nobody needs to browse them.
            fs::set_permissions(&pool, fs::Permissions::from_mode(0o700))
                .map_err(io_err("setting mode of", &pool))?;
        }
        let store = LayerStore {
            dir,
            opts: UnpackOptions::default(),
            dedup: true,
            sync: true,
        };
        store.clean_tmp()?;
        Ok(store)
    }

    /// Limits and policies for later unpacks (`dedup_pool` is set by the store).
    pub fn with_unpack_options(mut self, opts: UnpackOptions) -> LayerStore {
        self.opts = opts;
        self
    }

    /// Share identical files between layers through the pool (default: on).
    pub fn with_dedup(mut self, dedup: bool) -> LayerStore {
        self.dedup = dedup;
        self
    }

    /// `syncfs` before publishing a layer and `fsync` of the directory after (default:
    /// on). Without it a layer survives `kill -9` but not a power loss.
    pub fn with_sync(mut self, sync: bool) -> LayerStore {
        self.sync = sync;
        self
    }

    /// `<store root>/layers`.
    pub fn root(&self) -> &Path {
        &self.dir
    }

    pub fn pool_dir(&self) -> PathBuf {
        self.dir.join(POOL)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join(TMP)
    }

    fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.dir.join(chain_id.hex())
    }

    /// The overlay lowerdir of a layer: `<root>/layers/<chain-id-hex>/diff`.
    pub fn diff_path(&self, chain_id: &Digest) -> PathBuf {
        self.layer_dir(chain_id).join(DIFF)
    }

    pub fn is_unpacked(&self, chain_id: &Digest) -> bool {
        fs::symlink_metadata(self.diff_path(chain_id)).is_ok_and(|m| m.is_dir())
    }

    /// The report recorded when the layer was unpacked (`already_unpacked` set).
    pub fn report(&self, chain_id: &Digest) -> Result<Option<UnpackReport>, LayerError> {
        if !self.is_unpacked(chain_id) {
            return Ok(None);
        }
        let path = self.layer_dir(chain_id).join(META);
        let bytes = fs::read(&path).map_err(|e| LayerError::Corrupt {
            chain_id: *chain_id,
            reason: e.to_string(),
        })?;
        let mut report: UnpackReport = serde_json::from_slice(&bytes).map_err(|e| LayerError::Corrupt {
            chain_id: *chain_id,
            reason: e.to_string(),
        })?;
        report.already_unpacked = true;
        Ok(Some(report))
    }

    fn existing(
        &self,
        chain_id: &Digest,
        expected_diff_id: &Digest,
    ) -> Result<Option<UnpackReport>, LayerError> {
        match self.report(chain_id)? {
            Some(r) if r.diff_id != *expected_diff_id => Err(LayerError::DiffIdMismatch {
                expected: *expected_diff_id,
                actual: r.diff_id,
            }),
            other => Ok(other),
        }
    }

    /// Takes the chain ID's lock, waiting for another holder (thread or process).
    fn lock(&self, chain_id: &Digest) -> Result<ChainLock, LayerError> {
        let path = self.dir.join(LOCKS).join(format!("{}.lock", chain_id.hex()));
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(io_err("opening lock", &path))?;
            flock_retry(&file, FlockOperation::LockExclusive).map_err(io_err("locking", &path))?;
            // `remove` unlinks lock files while holding them: if ours is no longer the
            // one at the path, lock the new one.
            if same_inode(&file, &path).map_err(io_err("checking lock", &path))? {
                return Ok(ChainLock { file, path });
            }
        }
    }

    fn create_tmp(&self) -> Result<TmpDir, LayerError> {
        let base = self.tmp_dir();
        loop {
            let path = base.join(unique_name());
            match fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("creating", &path)(e)),
            }
            let dir = File::open(&path).map_err(io_err("opening", &path))?;
            flock_retry(&dir, FlockOperation::LockExclusive).map_err(io_err("locking", &path))?;
            // A concurrent `clean_tmp` may have taken it between mkdir and flock.
            if same_inode(&dir, &path).map_err(io_err("checking", &path))? {
                return Ok(TmpDir {
                    path,
                    _lock: dir,
                    keep: false,
                });
            }
        }
    }

    /// Unpacks a layer once per chain ID. Returns at once (with `already_unpacked`) if
    /// it is there; otherwise waits for any other unpack of the same chain ID, then
    /// unpacks into `.tmp`, checks the diff ID and renames into place. Blocking: call
    /// it from a blocking thread in async code.
    pub fn unpack(
        &self,
        chain_id: &Digest,
        expected_diff_id: &Digest,
        reader: impl Read,
    ) -> Result<UnpackReport, LayerError> {
        self.unpack_from(chain_id, expected_diff_id, None, reader)
    }

    /// Like [`LayerStore::unpack`], reading a blob the store verified at ingest (digest
    /// and size): an uncompressed layer is then not hashed again for its diff ID.
    pub fn unpack_blob(
        &self,
        chain_id: &Digest,
        expected_diff_id: &Digest,
        blob: (Digest, u64),
        reader: impl Read,
    ) -> Result<UnpackReport, LayerError> {
        self.unpack_from(chain_id, expected_diff_id, Some(blob), reader)
    }

    fn unpack_from(
        &self,
        chain_id: &Digest,
        expected_diff_id: &Digest,
        verified_blob: Option<(Digest, u64)>,
        reader: impl Read,
    ) -> Result<UnpackReport, LayerError> {
        if let Some(report) = self.existing(chain_id, expected_diff_id)? {
            return Ok(report);
        }
        let _lock = self.lock(chain_id)?;
        if let Some(report) = self.existing(chain_id, expected_diff_id)? {
            return Ok(report);
        }

        let mut tmp = self.create_tmp()?;
        let diff = tmp.path.join(DIFF);
        let mut opts = self.opts.clone();
        opts.dedup_pool = self.dedup.then(|| self.pool_dir());
        opts.verified_blob = verified_blob;
        let mut new_keys = Vec::new();
        let outcome = unpack_layer_tracked(reader, &diff, &opts, &mut new_keys);
        let report = match outcome {
            Ok(report) if report.diff_id == *expected_diff_id => report,
            Ok(report) => {
                self.discard(tmp, &new_keys);
                return Err(LayerError::DiffIdMismatch {
                    expected: *expected_diff_id,
                    actual: report.diff_id,
                });
            }
            Err(source) => {
                self.discard(tmp, &new_keys);
                return Err(LayerError::Unpack {
                    chain_id: *chain_id,
                    source,
                });
            }
        };

        if let Err(e) = self.write_meta(&tmp.path, &report) {
            self.discard(tmp, &new_keys);
            return Err(e);
        }
        let dest = self.layer_dir(chain_id);
        match fs::rename(&tmp.path, &dest) {
            Ok(()) => tmp.keep = true,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
                // Someone published it without the lock (should not happen): theirs wins.
                self.discard(tmp, &new_keys);
                return self
                    .existing(chain_id, expected_diff_id)?
                    .ok_or_else(|| io_err("publishing", &dest)(e));
            }
            Err(e) => return Err(io_err("publishing", &dest)(e)),
        }
        if self.sync {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing", &self.dir))?;
        }
        Ok(report)
    }

    /// Records the report beside `diff` and, with `sync`, makes the whole layer durable.
    fn write_meta(&self, dir: &Path, report: &UnpackReport) -> Result<(), LayerError> {
        let path = dir.join(META);
        let json = serde_json::to_vec_pretty(report).map_err(|e| LayerError::Io {
            op: "encoding",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let mut meta = File::create(&path).map_err(io_err("creating", &path))?;
        meta.write_all(&json).map_err(io_err("writing", &path))?;
        if self.sync {
            // One syncfs flushes every file of the layer (and whatever else is dirty on
            // that filesystem) far faster than an fsync per file.
            rustix::fs::syncfs(&meta).map_err(|e| io_err("syncing", dir)(e.into()))?;
        }
        Ok(())
    }

    /// Deletes a failed unpack (still holding its `.tmp` lock) and the pool entries
    /// only it referenced.
    fn discard(&self, mut tmp: TmpDir, new_keys: &[[u8; 32]]) {
        if let Err(e) = remove_tree(&tmp.path) {
            tracing::warn!(path = %tmp.path.display(), error = %e, "removing failed unpack");
        }
        tmp.keep = true;
        drop(tmp);
        let pool = self.pool_dir();
        for key in new_keys {
            let entry = pool.join(hex::encode(key));
            if fs::symlink_metadata(&entry).is_ok_and(|m| m.nlink() == 1) {
                let _ = fs::remove_file(&entry);
            }
        }
    }

    /// Removes an unpacked layer. Its pooled files stay in the pool until
    /// [`LayerStore::gc_pool`]. Returns whether it was there.
    pub fn remove(&self, chain_id: &Digest) -> Result<bool, LayerError> {
        let lock = self.lock(chain_id)?;
        let dir = self.layer_dir(chain_id);
        let present = match fs::symlink_metadata(&dir) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err("inspecting", &dir)(e)),
        };
        if present {
            // Disappear atomically first (into a `.tmp` directory we hold, so no
            // `clean_tmp` deletes it under our feet), then delete.
            let mut tmp = self.create_tmp()?;
            let doomed = tmp.path.join("layer");
            fs::rename(&dir, &doomed).map_err(io_err("removing", &dir))?;
            remove_tree(&tmp.path).map_err(io_err("removing", &tmp.path))?;
            tmp.keep = true;
        }
        // Unlink the lock while holding it: waiters notice the inode change.
        let _ = fs::remove_file(&lock.path);
        drop(lock.file);
        Ok(present)
    }

    /// Chain IDs of the unpacked layers, sorted.
    pub fn list(&self) -> Result<Vec<Digest>, LayerError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                continue;
            };
            if self.is_unpacked(&digest) {
                out.push(digest);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes `.tmp` entries nobody holds (left by a killed unpack). Returns how many.
    pub fn clean_tmp(&self) -> Result<u64, LayerError> {
        let base = self.tmp_dir();
        let mut removed = 0;
        for entry in fs::read_dir(&base).map_err(io_err("listing", &base))? {
            let entry = entry.map_err(io_err("listing", &base))?;
            let path = entry.path();
            let opened = rustix::fs::open(
                &path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            let dir = match opened {
                Ok(fd) => File::from(fd),
                Err(Errno::NOENT) => continue,
                Err(_) => {
                    // Not a directory: nobody's unpack.
                    let _ = fs::remove_file(&path);
                    removed += 1;
                    continue;
                }
            };
            match rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    remove_tree(&path).map_err(io_err("removing", &path))?;
                    removed += 1;
                }
                Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => {}
                Err(e) => return Err(io_err("locking", &path)(e.into())),
            }
        }
        Ok(removed)
    }

    /// Removes pool entries no layer uses any more (link count 1). Returns how many.
    pub fn gc_pool(&self) -> Result<u64, LayerError> {
        let pool = self.pool_dir();
        let mut removed = 0;
        for entry in fs::read_dir(&pool).map_err(io_err("listing", &pool))? {
            let entry = entry.map_err(io_err("listing", &pool))?;
            let path = entry.path();
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("inspecting", &path)(e)),
            };
            if md.nlink() <= 1 {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("removing", &path)(e)),
                }
            }
        }
        Ok(removed)
    }

    /// Disk usage: what the layers would take unshared versus what they take.
    pub fn du(&self) -> Result<LayerUsage, LayerError> {
        let mut usage = LayerUsage::default();
        // Inodes with more than one link: (dev, ino) -> (layer paths, bytes).
        let mut multi: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
        for chain in self.list()? {
            usage.layers += 1;
            if let Ok(md) = fs::symlink_metadata(self.layer_dir(&chain).join(META)) {
                usage.actual_bytes += md.blocks() * 512;
            }
            let dir = self.diff_path(&chain);
            for entry in walkdir::WalkDir::new(&dir).follow_links(false) {
                let entry = match entry {
                    Ok(e) => e,
                    // Removed while we walk.
                    Err(e) if e.io_error().is_some_and(|e| e.kind() == io::ErrorKind::NotFound) => {
                        continue;
                    }
                    Err(e) => {
                        return Err(LayerError::Io {
                            op: "walking",
                            path: dir.clone(),
                            source: e.into(),
                        });
                    }
                };
                let Ok(md) = entry.metadata() else { continue };
                let bytes = md.blocks() * 512;
                if md.is_file() {
                    usage.apparent_bytes += md.len();
                }
                if !md.is_dir() && md.nlink() > 1 {
                    multi.entry((md.dev(), md.ino())).or_insert((0, bytes)).0 += 1;
                } else {
                    usage.actual_bytes += bytes;
                }
            }
        }
        let pool = self.pool_dir();
        for entry in fs::read_dir(&pool).map_err(io_err("listing", &pool))? {
            let entry = entry.map_err(io_err("listing", &pool))?;
            usage.pool_entries += 1;
            let Ok(md) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if !multi.contains_key(&(md.dev(), md.ino())) {
                usage.actual_bytes += md.blocks() * 512;
            }
        }
        for (paths, bytes) in multi.into_values() {
            usage.actual_bytes += bytes;
            if paths > 1 {
                usage.shared_bytes += bytes;
                usage.saved_bytes += (paths - 1) * bytes;
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let l0 = Digest::of(b"layer0");
        let l1 = Digest::of(b"layer1");
        assert_eq!(chain_id(None, &l0), l0);
        let c1 = chain_id(Some(&l0), &l1);
        let expected = Digest::of(format!("{l0} {l1}").as_bytes());
        assert_eq!(c1, expected);
        // Checked against `printf "sha256:<hello> sha256:<world>" | sha256sum`.
        let a: Digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
            .parse()
            .ok()
            .unwrap();
        let b: Digest = "sha256:486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7"
            .parse()
            .ok()
            .unwrap();
        assert_eq!(
            chain_id(Some(&a), &b).to_string(),
            "sha256:462b80aef093b60913b788d01bd83e40bea09cc1131c723ef41e7720c211e8bf"
        );
    }
}
