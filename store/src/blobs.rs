//! The blob store: immutable files under `blobs/sha256/<hex>`, written only by an ingest.
//!
//! An ingest streams into `ingest/<key>.partial` while hashing, holds an exclusive `flock`
//! on `ingest/<key>.lock` so that one process (or thread) at a time writes a given key,
//! checks size and digest, fsyncs, renames into place and fsyncs the directory. A blob is
//! therefore either absent or complete; a killed ingest leaves a partial file that the
//! next ingest of the same key resumes from its length. Staged content (digest learnt
//! while reading) goes to `ingest/stage-<random>.partial`, `flock`ed by its writer; the
//! next `BlobStore::open` removes the ones a killed process left.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::digest::{Digest, Hasher};

const COPY_BUF: usize = 1 << 20;
/// Alignment of file offsets, lengths and memory for `O_DIRECT` writes: the page size,
/// which covers the logical block size of the disks and filesystems the store runs on.
pub const DIRECT_ALIGN: usize = 4096;
/// Bytes written between two writeback kicks (see `start_writeback`).
const WRITEBACK_WINDOW: u64 = 8 << 20;

/// Errors from the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(Digest),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob exceeds the size limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("invalid ingest key {0:?}")]
    InvalidKey(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl BlobError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> BlobError {
        let context = context.into();
        move |source| BlobError::Io { context, source }
    }
}

type Result<T, E = BlobError> = std::result::Result<T, E>;

/// What an ingest writes: a blob of known digest (resumable, deduplicated), or an upload
/// session whose digest is only known at the end (a registry upload).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IngestKey {
    Digest(Digest),
    Upload(String),
}

impl IngestKey {
    fn file_stem(&self) -> Result<String> {
        match self {
            IngestKey::Digest(d) => Ok(format!("sha256-{}", d.hex())),
            IngestKey::Upload(id) => {
                if valid_upload_id(id) {
                    Ok(format!("upload-{id}"))
                } else {
                    Err(BlobError::InvalidKey(id.clone()))
                }
            }
        }
    }
}

/// Whether `id` can name an upload: 1 to 128 letters, digits, `-` and `_` (it becomes part
/// of file names and object keys).
pub fn valid_upload_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// File names of staged content in the ingest directory (`stage-<random>.partial`).
const STAGE_PREFIX: &str = "stage-";

/// A blob store rooted at a store directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

/// The outcome of committing an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub digest: Digest,
    pub size: u64,
    /// False when the blob was already present and nothing was written.
    pub written: bool,
}

impl BlobStore {
    /// Opens (creating if needed) the blob directories under `root`.
    pub fn open(root: &Path) -> Result<BlobStore> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        for dir in [&blobs, &ingest] {
            fs_err::create_dir_all(dir).map_err(BlobError::io("create blob directories"))?;
        }
        let store = BlobStore { blobs, ingest };
        if let Err(e) = store.remove_dead_stages() {
            tracing::warn!("cleaning staging files: {e}");
        }
        Ok(store)
    }

    /// Removes the staging files of processes that died (a killed `puller load` or
    /// `runner commit`): each live one is `flock`ed by its writer, from before the ingest
    /// directory's shared lock is released (see [`BlobStore::stage`]), so a file this
    /// takes the lock of under the directory's exclusive lock has no writer. Also removes
    /// lock files nobody holds whose partial is gone.
    fn remove_dead_stages(&self) -> Result<u64> {
        let dir = lock_dir(&self.ingest, rustix::fs::FlockOperation::LockExclusive)?;
        let mut removed = 0;
        for entry in fs_err::read_dir(&self.ingest).map_err(BlobError::io("list ingests"))? {
            let entry = entry.map_err(BlobError::io("list ingests"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stage = name.starts_with(STAGE_PREFIX) && name.ends_with(".partial");
            // A lock file without its partial: left by a process killed between taking
            // the lock and unlinking it (unlinking it under the lock is safe, see
            // `lock_file`).
            let lock = name
                .strip_suffix(".lock")
                .is_some_and(|stem| !self.ingest.join(format!("{stem}.partial")).exists());
            if !(stage || lock) {
                continue;
            }
            let Ok(file) = File::open(entry.path()) else {
                continue;
            };
            if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        drop(dir);
        Ok(removed)
    }

    /// The blob store of an existing root, creating nothing (read-only views).
    pub fn open_existing(root: &Path) -> BlobStore {
        BlobStore {
            blobs: root.join("blobs").join("sha256"),
            ingest: root.join("ingest"),
        }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn ingest_dir(&self) -> &Path {
        &self.ingest
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Size of a stored blob, or `None` if absent.
    pub fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        match std::fs::metadata(self.path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::io(format!("stat blob {digest}"))(e)),
        }
    }

    /// Opens a stored blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        match File::open(self.path(digest)) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::NotFound(*digest)),
            Err(e) => Err(BlobError::io(format!("open blob {digest}"))(e)),
        }
    }

    /// Reads a whole blob; only for small blobs (manifests, configs) — checks `limit`.
    pub fn read_small(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let f = self.open_blob(digest)?;
        let len = f.metadata().map_err(BlobError::io("stat blob"))?.len();
        if len > limit {
            return Err(BlobError::TooLarge { limit });
        }
        let mut out = Vec::with_capacity(len as usize);
        f.take(limit + 1)
            .read_to_end(&mut out)
            .map_err(BlobError::io(format!("read blob {digest}")))?;
        Ok(out)
    }

    /// Begins (or resumes) an ingest. Blocks while another process or thread holds the
    /// same key. For a digest key, returns `None` when the blob is already stored (or
    /// an interrupted ingest had written all of it: it is committed now).
    pub fn begin(&self, key: IngestKey) -> Result<Option<Ingest>> {
        let stem = key.file_stem()?;
        let lock_path = self.ingest.join(format!("{stem}.lock"));
        let lock = lock_file(&lock_path)?;
        if let IngestKey::Digest(d) = &key
            && self.contains(d)
        {
            // Unlinking under the lock is safe (see `lock_file`).
            let _ = std::fs::remove_file(&lock_path);
            return Ok(None);
        }
        let partial_path = self.ingest.join(format!("{stem}.partial"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial_path)
            .map_err(BlobError::io(format!("open {}", partial_path.display())))?;
        // Rebuild the hash state from what an earlier, interrupted ingest wrote.
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(BlobError::io("read partial ingest"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        file.seek(SeekFrom::End(0))
            .map_err(BlobError::io("seek partial ingest"))?;
        let complete = match &key {
            IngestKey::Digest(d) => hasher.clone().finish() == *d,
            IngestKey::Upload(_) => false,
        };
        let ingest = Ingest {
            store: self.clone(),
            key,
            partial_path,
            file,
            kicked: hasher.len(),
            hasher,
            direct: None,
            _lock: lock,
        };
        if complete && let IngestKey::Digest(d) = ingest.key.clone() {
            // A process killed after the last byte and before its commit: the partial is
            // the blob (a resumed download would ask for the bytes past its end).
            ingest.commit(&d, None)?;
            return Ok(None);
        }
        Ok(Some(ingest))
    }

    /// Ingests a blob of known digest from `reader` (which starts at byte 0). Resumes an
    /// interrupted ingest by skipping the bytes already written. Returns without reading
    /// when the blob is already stored.
    pub fn put_verified(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
        mut reader: impl Read,
    ) -> Result<Committed> {
        let Some(mut ingest) = self.begin(IngestKey::Digest(*expected))? else {
            let size = self.size(expected)?.ok_or(BlobError::NotFound(*expected))?;
            return Ok(Committed {
                digest: *expected,
                size,
                written: false,
            });
        };
        let offset = ingest.offset();
        if offset > 0 {
            let skipped = io::copy(&mut (&mut reader).take(offset), &mut io::sink())
                .map_err(BlobError::io("skip resumed bytes"))?;
            if skipped < offset {
                ingest.discard()?;
                return Err(BlobError::SizeMismatch {
                    digest: *expected,
                    expected: offset,
                    actual: skipped,
                });
            }
        }
        ingest.copy_from(reader, expected_size)?;
        ingest.commit(expected, expected_size)
    }

    /// Ingests bytes whose digest is computed here (generated content such as a manifest
    /// written by `save` or `commit`).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Committed> {
        // Staged rather than ingested by digest: a process killed half-way leaves a staging
        // file the next open removes, not a partial no one will ask to resume.
        let mut staged = self.stage(bytes, None)?;
        self.commit_staged(&mut staged)
    }

    /// Sets a stored blob's modification time to now, so GC's grace period counts from
    /// this new use (a re-pushed or newly linked blob that no manifest references yet).
    /// Best effort: a blob that is gone is not an error here.
    pub fn touch(&self, digest: &Digest) {
        if let Ok(f) = OpenOptions::new().write(true).open(self.path(digest)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Removes a blob (GC and fsck repair only).
    pub fn remove(&self, digest: &Digest) -> Result<bool> {
        match std::fs::remove_file(self.path(digest)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BlobError::io(format!("remove blob {digest}"))(e)),
        }
    }

    /// Moves a blob out of the store into `dir` (fsck `--repair`).
    pub fn quarantine(&self, digest: &Digest, dir: &Path) -> Result<PathBuf> {
        fs_err::create_dir_all(dir).map_err(BlobError::io("create quarantine directory"))?;
        let dest = dir.join(digest.hex());
        fs_err::rename(self.path(digest), &dest).map_err(BlobError::io("quarantine blob"))?;
        Ok(dest)
    }

    /// Every stored blob with its size and modification time. Stray files are skipped.
    pub fn list(&self) -> Result<Vec<BlobEntry>> {
        let mut out = Vec::new();
        let dir = fs_err::read_dir(&self.blobs).map_err(BlobError::io("list blobs"))?;
        for entry in dir {
            let entry = entry.map_err(BlobError::io("list blobs"))?;
            let Some(digest) = entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(BlobError::io("stat blob")(e)),
            };
            out.push(BlobEntry {
                digest,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                blocks: meta.blocks() * 512,
            });
        }
        out.sort_by_key(|e| e.digest);
        Ok(out)
    }

    /// Partial ingests and upload sessions: `(file stem, size, modified)`.
    pub fn list_partials(&self) -> Result<Vec<(String, u64, SystemTime)>> {
        let mut out = Vec::new();
        for entry in fs_err::read_dir(&self.ingest).map_err(BlobError::io("list ingests"))? {
            let entry = entry.map_err(BlobError::io("list ingests"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".partial")
                && let Ok(meta) = entry.metadata()
            {
                out.push((
                    stem.to_string(),
                    meta.len(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ));
            }
        }
        Ok(out)
    }

    /// Writes `bytes` at `offset` of upload `id`'s partial ingest (what lies past `offset`,
    /// left by an interrupted write, is cut first) without re-reading what is there: for
    /// callers that keep the hash state themselves. `commit` through [`BlobStore::begin`]
    /// re-reads and checks everything once.
    pub fn append_upload(&self, id: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let stem = IngestKey::Upload(id.to_string()).file_stem()?;
        let _lock = lock_file(&self.ingest.join(format!("{stem}.lock")))?;
        let partial_path = self.ingest.join(format!("{stem}.partial"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial_path)
            .map_err(BlobError::io(format!("open {}", partial_path.display())))?;
        let len = file
            .metadata()
            .map_err(BlobError::io("stat partial ingest"))?
            .len();
        if len < offset {
            return Err(BlobError::SizeMismatch {
                digest: Digest::empty(),
                expected: offset,
                actual: len,
            });
        }
        file.set_len(offset)
            .map_err(BlobError::io("truncate partial ingest"))?;
        {
            use std::os::unix::fs::FileExt;
            file.write_all_at(bytes, offset)
                .map_err(BlobError::io("write partial ingest"))?;
        }
        file.sync_data().map_err(BlobError::io("fsync partial ingest"))
    }

    /// Removes a partial ingest if no one holds it (expired uploads, GC).
    pub fn remove_partial(&self, stem: &str) -> Result<bool> {
        let lock_path = self.ingest.join(format!("{stem}.lock"));
        let Some(lock) = try_lock_file(&lock_path)? else {
            return Ok(false);
        };
        let removed = std::fs::remove_file(self.ingest.join(format!("{stem}.partial"))).is_ok();
        let _ = std::fs::remove_file(&lock_path);
        drop(lock);
        Ok(removed)
    }
}

/// Content written to the ingest area and hashed, not yet visible as a blob. Dropping it
/// removes the file; [`BlobStore::commit_staged`] makes it a blob.
pub struct Staged {
    file: Option<tempfile::NamedTempFile>,
    pub digest: Digest,
    pub size: u64,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .finish()
    }
}

impl Staged {
    /// Whether [`BlobStore::commit_staged`] has made this content a blob.
    pub fn is_committed(&self) -> bool {
        self.file.is_none()
    }

    /// Reopens the staged content for reading.
    pub fn reopen(&self) -> Result<File> {
        match &self.file {
            Some(f) => f.reopen().map_err(BlobError::io("reopen staged content")),
            None => Err(BlobError::NotFound(self.digest)),
        }
    }
}

impl BlobStore {
    /// Streams `reader` into the ingest area while hashing it; nothing becomes visible.
    /// Used when the digest is only known (or trusted) after reading, e.g. archive entries.
    pub fn stage(&self, reader: impl Read, limit: Option<u64>) -> Result<Staged> {
        let dir = lock_dir(&self.ingest, rustix::fs::FlockOperation::LockShared)?;
        let mut file = tempfile::Builder::new()
            .prefix(STAGE_PREFIX)
            .suffix(".partial")
            .tempfile_in(&self.ingest)
            .map_err(BlobError::io("create staging file"))?;
        // Held while the file is: a process that dies leaves a file nobody holds, which
        // the next `BlobStore::open` removes.
        rustix::fs::flock(
            file.as_file(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(|e| BlobError::io("lock staging file")(e.into()))?;
        drop(dir);
        let (hasher, result) = copy_hashing(reader, file.as_file_mut(), Hasher::new(), limit);
        result?;
        let size = hasher.len();
        Ok(Staged {
            file: Some(file),
            digest: hasher.finish(),
            size,
        })
    }

    /// Makes staged content a blob (durably), unless that blob already exists.
    pub fn commit_staged(&self, staged: &mut Staged) -> Result<Committed> {
        let stem = IngestKey::Digest(staged.digest).file_stem()?;
        let lock_path = self.ingest.join(format!("{stem}.lock"));
        let _lock = lock_file(&lock_path)?;
        let done = |written| Committed {
            digest: staged.digest,
            size: staged.size,
            written,
        };
        if self.contains(&staged.digest) {
            let _ = std::fs::remove_file(&lock_path);
            return Ok(done(false));
        }
        let Some(file) = staged.file.take() else {
            return Err(BlobError::NotFound(staged.digest));
        };
        file.as_file()
            .sync_all()
            .map_err(BlobError::io("fsync staged blob"))?;
        file.persist(self.path(&staged.digest))
            .map_err(|e| BlobError::io("commit staged blob")(e.error))?;
        sync_dir(&self.blobs)?;
        let _ = std::fs::remove_file(&lock_path);
        Ok(done(true))
    }
}

/// One stored blob, as listed.
#[derive(Debug, Clone)]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
    /// Bytes allocated on disk.
    pub blocks: u64,
}

/// An ingest in progress. Dropping it without `commit` keeps the partial file for a later
/// resume; `discard` removes it.
pub struct Ingest {
    store: BlobStore,
    key: IngestKey,
    partial_path: PathBuf,
    file: File,
    hasher: Hasher,
    /// Offset up to which writeback has been started (see `start_writeback`).
    kicked: u64,
    /// The partial file opened with `O_DIRECT`, once `write_all_direct` has used it;
    /// `Err` when the filesystem refused it (then everything goes through `file`).
    direct: Option<std::result::Result<File, ()>>,
    _lock: LockedFile,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("key", &self.key)
            .field("offset", &self.offset())
            .finish()
    }
}

impl Ingest {
    /// Bytes already written (the resume offset).
    pub fn offset(&self) -> u64 {
        self.hasher.len()
    }

    pub fn key(&self) -> &IngestKey {
        &self.key
    }

    /// Opens the partial file read-only, for a reader that follows the writer (serving
    /// a blob while it is ingested). The handle stays valid when the ingest commits (the
    /// file is renamed into place) or is discarded (unlinked); it sees bytes as soon as
    /// `write_all` returns. Only the first `offset()` bytes are meaningful.
    pub fn reader(&self) -> Result<File> {
        File::open(&self.partial_path).map_err(BlobError::io(format!("open {}", self.partial_path.display())))
    }

    /// Appends bytes.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all_vectored(&[bytes])
    }

    /// Appends several buffers in order, with as few `writev` calls as the kernel allows
    /// (no copy into one buffer first). On error the partial file is cut back to what
    /// the hash state covers, so a later resume stays sound.
    pub fn write_all_vectored<B: AsRef<[u8]>>(&mut self, bufs: &[B]) -> Result<()> {
        let start = self.offset();
        let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b.as_ref())).collect();
        let mut rest = &mut slices[..];
        IoSlice::advance_slices(&mut rest, 0); // drops leading empty buffers
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => return Err(self.cut_back(start, io::ErrorKind::WriteZero.into())),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.cut_back(start, e)),
            }
        }
        for b in bufs {
            self.hasher.update(b.as_ref());
        }
        let written = self.offset();
        if written - self.kicked >= WRITEBACK_WINDOW {
            start_writeback(&self.file, self.kicked, written - self.kicked);
            self.kicked = written;
        }
        Ok(())
    }

    /// Appends bytes, writing whole aligned blocks with `O_DIRECT` (see [`DIRECT_ALIGN`]):
    /// the device reads them straight from `bytes`, with no copy into the page cache
    /// and no writeback later. That needs `bytes` to sit in memory at the same offset
    /// modulo `DIRECT_ALIGN` as in the file (a caller that reads a stream into aligned
    /// buffers starts its first buffer at `offset() % DIRECT_ALIGN`); the unaligned
    /// head and tail, misaligned memory, and filesystems without `O_DIRECT` go through
    /// the page cache as `write_all` does. Same error contract as `write_all_vectored`.
    pub fn write_all_direct(&mut self, bytes: &[u8]) -> Result<()> {
        let start = self.offset();
        let align = DIRECT_ALIGN as u64;
        if (bytes.as_ptr() as u64) % align != start % align {
            return self.write_all(bytes);
        }
        let head = (((align - start % align) % align) as usize).min(bytes.len());
        let middle = (bytes.len() - head) / DIRECT_ALIGN * DIRECT_ALIGN;
        if middle == 0 {
            return self.write_all(bytes);
        }
        self.write_all(&bytes[..head])?;
        let at = start + head as u64;
        let block = &bytes[head..head + middle];
        if self.direct_file().is_none() {
            return self.write_all(&bytes[head..]);
        }
        // The disk reads the block while another thread hashes it.
        let (written, hasher) = std::thread::scope(|s| {
            let hashing = s.spawn(|| {
                let mut h = self.hasher.clone();
                h.update(block);
                h
            });
            let direct = self.direct.as_ref().and_then(|d| d.as_ref().ok());
            let written = direct.map(|d| std::os::unix::fs::FileExt::write_all_at(d, block, at));
            (written, hashing.join())
        });
        let hasher = hasher.unwrap_or_else(|p| std::panic::resume_unwind(p));
        match written {
            Some(Ok(())) => {}
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Refused after all (an odd device alignment): page cache from now on.
                self.direct = Some(Err(()));
                return self.write_all(&bytes[head..]);
            }
            Some(Err(e)) => return Err(self.cut_back(start, e)),
            None => return self.write_all(&bytes[head..]),
        }
        if let Err(e) = self.file.seek(SeekFrom::Start(at + middle as u64)) {
            return Err(self.cut_back(start, e));
        }
        self.hasher = hasher;
        self.kicked = self.offset();
        self.write_all(&bytes[head + middle..])
    }

    /// The `O_DIRECT` handle on the partial file, opened on first use.
    fn direct_file(&mut self) -> Option<&File> {
        if self.direct.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            let opened = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&self.partial_path);
            self.direct = Some(opened.map_err(|_| ()));
        }
        self.direct.as_ref().and_then(|d| d.as_ref().ok())
    }

    fn cut_back(&mut self, len: u64, e: io::Error) -> BlobError {
        let _ = self.file.set_len(len);
        let _ = self.file.seek(SeekFrom::Start(len));
        BlobError::io("write ingest")(e)
    }

    /// Appends everything from `reader`; stops with `TooLarge` past `limit` total bytes.
    pub fn copy_from(&mut self, reader: impl Read, limit: Option<u64>) -> Result<u64> {
        let hasher = std::mem::take(&mut self.hasher);
        let (hasher, result) = copy_hashing(reader, &mut self.file, hasher, limit);
        self.hasher = hasher;
        self.kicked = self.offset();
        if result.is_err() {
            // Keep the partial file exactly what the hash state covers, so a resume is sound.
            let _ = self.file.set_len(self.hasher.len());
            let _ = self.file.seek(SeekFrom::End(0));
        }
        result
    }

    /// Checks size and digest, makes the blob durable and visible. On mismatch the partial
    /// data is discarded and nothing becomes visible.
    pub fn commit(mut self, expected: &Digest, expected_size: Option<u64>) -> Result<Committed> {
        let size = self.offset();
        let actual = self.hasher.clone().finish();
        if let Some(expected_size) = expected_size
            && size != expected_size
        {
            self.discard_in_place();
            return Err(BlobError::SizeMismatch {
                digest: *expected,
                expected: expected_size,
                actual: size,
            });
        }
        if actual != *expected {
            self.discard_in_place();
            return Err(BlobError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        let dest = self.store.path(expected);
        // An upload commits under its digest's ingest lock, which a digest-keyed ingest holds
        // for its whole life: of two writers of the same content, one renames into place
        // and the other finds it there (one copy, `written` true once).
        let digest_lock = match &self.key {
            IngestKey::Upload(_) => {
                let stem = IngestKey::Digest(*expected).file_stem()?;
                Some((lock_file(&self.store.ingest.join(format!("{stem}.lock")))?, stem))
            }
            IngestKey::Digest(_) => None,
        };
        let unlock = |lock: Option<(LockedFile, String)>| {
            if let Some((lock, stem)) = lock {
                // Unlinking under the lock is safe (see `lock_file`).
                let _ = std::fs::remove_file(self.store.ingest.join(format!("{stem}.lock")));
                drop(lock);
            }
        };
        if dest.is_file() {
            // Another writer under a different key (an upload) committed the same content.
            // It is in use again: restart its grace period.
            unlock(digest_lock);
            self.discard_in_place();
            self.store.touch(expected);
            return Ok(Committed {
                digest: actual,
                size,
                written: false,
            });
        }
        // The blob's age (what GC's grace period counts) starts now, not at the partial's
        // last write: a resumed upload's last chunk may be older than the grace period.
        let _ = self.file.set_modified(SystemTime::now());
        let renamed = self
            .file
            .sync_all()
            .map_err(BlobError::io("fsync ingest"))
            .and_then(|()| fs_err::rename(&self.partial_path, &dest).map_err(BlobError::io("commit blob")))
            .and_then(|()| sync_dir(&self.store.blobs));
        unlock(digest_lock);
        renamed?;
        self.remove_lock_file();
        Ok(Committed {
            digest: actual,
            size,
            written: true,
        })
    }

    /// Drops the partial data.
    pub fn discard(mut self) -> Result<()> {
        self.discard_in_place();
        Ok(())
    }

    fn discard_in_place(&mut self) {
        let _ = std::fs::remove_file(&self.partial_path);
        self.remove_lock_file();
    }

    fn remove_lock_file(&self) {
        // Waiters that already opened this lock file re-check its inode after locking
        // (see `lock_file`), so unlinking while we hold the lock is safe.
        if let Ok(stem) = self.key.file_stem() {
            let _ = std::fs::remove_file(self.store.ingest.join(format!("{stem}.lock")));
        }
    }
}

/// Copies `reader` to the end of `file` while a second thread hashes what was written, so
/// hashing overlaps reading and writing (an ingest then costs about the slower of the two,
/// not their sum). Stops with `TooLarge` before the hasher's total would pass `limit`.
/// Returns the hasher, covering exactly the bytes written, and the count copied.
fn copy_hashing(
    mut reader: impl Read,
    file: &mut File,
    hasher: Hasher,
    limit: Option<u64>,
) -> (Hasher, Result<u64>) {
    use std::sync::mpsc;
    let start = hasher.len();
    let (to_hash, hash_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(3);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let hashing = s.spawn(move || {
            let mut hasher = hasher;
            for (buf, n) in hash_rx {
                hasher.update(&buf[..n]);
                let _ = recycle_tx.send(buf);
            }
            hasher
        });
        let mut total = 0u64;
        let mut kicked = 0u64;
        let result = loop {
            let mut buf = recycle_rx.try_recv().unwrap_or_else(|_| vec![0u8; COPY_BUF]);
            let n = match reader.read(&mut buf) {
                Ok(0) => break Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(BlobError::io("read blob source")(e)),
            };
            if let Some(limit) = limit
                && start + total + n as u64 > limit
            {
                // More bytes than declared: the source is not the blob we were promised.
                break Err(BlobError::TooLarge { limit });
            }
            if let Err(e) = file.write_all(&buf[..n]) {
                break Err(BlobError::io("write ingest")(e));
            }
            total += n as u64;
            if total - kicked >= WRITEBACK_WINDOW {
                start_writeback(file, start + kicked, total - kicked);
                kicked = total;
            }
            if to_hash.send((buf, n)).is_err() {
                break Ok(total);
            }
        };
        drop(to_hash);
        let hasher = hashing.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (hasher, result)
    })
}

/// Asks the kernel to start writing back a range just written, without waiting, so the
/// disk works while we go on reading and hashing and the final fsync has little left to
/// do. On Linux `POSIX_FADV_DONTNEED` starts writeback of dirty pages in the range (and
/// drops only pages that are already clean). Advice only: errors are ignored.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

/// Fsyncs a directory so a rename in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BlobError::io(format!("fsync {}", dir.display())))
}

/// An open file holding an exclusive `flock`; released on drop.
#[derive(Debug)]
pub(crate) struct LockedFile {
    _file: File,
}

impl LockedFile {
    /// Writes who holds the lock (`PID PROGRAM`) into the lock file, for the message of
    /// whoever waits for it next. Best effort.
    pub(crate) fn record_holder(&self) {
        let program = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let line = format!("{} {program}\n", std::process::id());
        let _ = self._file.set_len(0);
        let _ = std::os::unix::fs::FileExt::write_all_at(&self._file, line.as_bytes(), 0);
    }
}

/// Who holds the lock at `path`, as recorded by [`LockedFile::record_holder`]: the PID
/// and the program name.
pub(crate) fn lock_holder(path: &Path) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (pid, program) = text.trim().split_once(' ')?;
    Some((pid.parse().ok()?, program.to_string()))
}

/// Takes an exclusive lock on `path`, blocking (in the kernel, not polling) until free.
/// The lock file may be unlinked by its holder: after locking, check that the path still
/// names the file we locked, and retry otherwise.
pub(crate) fn lock_file(path: &Path) -> Result<LockedFile> {
    loop {
        let file = open_lock(path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| BlobError::io(format!("lock {}", path.display()))(e.into()))?;
        if same_file(&file, path) {
            return Ok(LockedFile { _file: file });
        }
    }
}

/// `flock`s a directory (`op`: shared or exclusive), released when the result drops.
fn lock_dir(dir: &Path, op: rustix::fs::FlockOperation) -> Result<File> {
    let file = File::open(dir).map_err(BlobError::io(format!("open {}", dir.display())))?;
    rustix::fs::flock(&file, op).map_err(|e| BlobError::io(format!("lock {}", dir.display()))(e.into()))?;
    Ok(file)
}

/// Like `lock_file` but returns `None` instead of waiting.
pub(crate) fn try_lock_file(path: &Path) -> Result<Option<LockedFile>> {
    loop {
        let file = open_lock(path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(BlobError::io(format!("lock {}", path.display()))(e.into())),
        }
        if same_file(&file, path) {
            return Ok(Some(LockedFile { _file: file }));
        }
    }
}

fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(BlobError::io(format!("open lock {}", path.display())))
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_verifies_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"some layer bytes".repeat(1000);
        let d = Digest::of(&data);
        let c = store
            .put_verified(&d, Some(data.len() as u64), &data[..])
            .unwrap();
        assert!(c.written);
        let again = store
            .put_verified(&d, Some(data.len() as u64), &data[..])
            .unwrap();
        assert!(!again.written);
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), data);
        // Nothing left in the ingest dir.
        assert_eq!(std::fs::read_dir(store.ingest_dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_reader_follows_the_ingest_across_commit() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data = b"0123456789".repeat(100);
        let d = Digest::of(&data);
        let mut ingest = store.begin(IngestKey::Digest(d)).unwrap().unwrap();
        let reader = ingest.reader().unwrap();
        ingest.write_all(&data[..400]).unwrap();
        let mut buf = vec![0u8; 400];
        reader.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, data[..400]);
        ingest.write_all(&data[400..]).unwrap();
        ingest.commit(&d, Some(data.len() as u64)).unwrap();
        // Renamed into place: the same handle reads the whole blob.
        let mut buf = vec![0u8; data.len()];
        reader.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, data);
        assert!(reader.write_at(b"x", 0).is_err(), "the reader is read-only");
    }

    /// A slice of `len` bytes whose address is `phase` past a `DIRECT_ALIGN` boundary.
    fn placed(storage: &mut Vec<u8>, phase: usize, len: usize) -> &mut [u8] {
        storage.resize(len + 2 * DIRECT_ALIGN, 0);
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN) + phase;
        &mut storage[start..start + len]
    }

    #[test]
    fn direct_writes_keep_content_and_hash_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let content: Vec<u8> = (0..5_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let digest = Digest::of(&content);
        let mut ingest = store.begin(IngestKey::Upload("d1".into())).unwrap().unwrap();
        let mut storage = Vec::new();
        // Chunks that start aligned, unaligned, misplaced in memory, tiny and large.
        let mut pos = 0;
        for (i, len) in [1_048_576usize, 1_000_001, 3, 8191, 2_000_000, 17]
            .into_iter()
            .enumerate()
        {
            let chunk = &content[pos..pos + len];
            let phase = if i == 3 { 7 } else { pos % DIRECT_ALIGN };
            let buf = placed(&mut storage, phase, len);
            buf.copy_from_slice(chunk);
            ingest.write_all_direct(buf).unwrap();
            pos += len;
            assert_eq!(ingest.offset(), pos as u64);
        }
        ingest.write_all_direct(&content[pos..]).unwrap();
        let committed = ingest.commit(&digest, Some(content.len() as u64)).unwrap();
        assert!(committed.written);
        assert_eq!(std::fs::read(store.path(&digest)).unwrap(), content);
    }

    #[test]
    fn direct_writes_resume_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(&content);
        let mut storage = Vec::new();
        let first = 1_234_567;
        {
            let mut ingest = store.begin(IngestKey::Upload("d2".into())).unwrap().unwrap();
            let buf = placed(&mut storage, 0, first);
            buf.copy_from_slice(&content[..first]);
            ingest.write_all_direct(buf).unwrap();
        }
        let mut ingest = store.begin(IngestKey::Upload("d2".into())).unwrap().unwrap();
        assert_eq!(ingest.offset(), first as u64);
        let rest = &content[first..];
        let buf = placed(&mut storage, first % DIRECT_ALIGN, rest.len());
        buf.copy_from_slice(rest);
        ingest.write_all_direct(buf).unwrap();
        ingest.commit(&digest, None).unwrap();
        assert_eq!(std::fs::read(store.path(&digest)).unwrap(), content);
    }

    #[test]
    fn mismatch_leaves_nothing_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let wrong = Digest::of(b"other");
        let err = store.put_verified(&wrong, None, &b"data"[..]).unwrap_err();
        assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err}");
        assert!(!store.contains(&wrong));
        let err = store
            .put_verified(&Digest::of(b"data"), Some(3), &b"data"[..])
            .unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { .. }), "{err}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn interrupted_ingest_resumes_from_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        {
            let mut ing = store.begin(IngestKey::Digest(d)).unwrap().unwrap();
            ing.write_all(&data[..1_234_567]).unwrap();
            // dropped without commit: as if the process died
        }
        let ing = store.begin(IngestKey::Digest(d)).unwrap().unwrap();
        assert_eq!(ing.offset(), 1_234_567);
        drop(ing);
        // A reader that fails if asked for the first bytes again would still work: the
        // resumed ingest skips them; here we count what is actually written.
        let c = store
            .put_verified(&d, Some(data.len() as u64), &data[..])
            .unwrap();
        assert!(c.written);
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), data);
    }

    #[test]
    fn concurrent_writers_of_one_digest_end_with_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let d = Digest::of(&data);
        let written: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.put_verified(&d, None, &data[..]).unwrap().written))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap() as usize).sum()
        });
        assert_eq!(written, 1);
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn refuses_hostile_upload_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        for bad in ["../x", "", "a/b", "a.b"] {
            assert!(store.begin(IngestKey::Upload(bad.into())).is_err(), "{bad}");
        }
    }
}
