//! Safe, streaming extraction of one layer (tar, tar+gzip, tar+zstd) into a directory:
//! computes the diff ID in the same pass, converts OCI whiteouts to overlayfs form and
//! never writes outside the destination.
//!
//! Design:
//! - Three stages. The calling thread reads the input, sniffs the compression from its
//!   first bytes (never a media type), decompresses and enforces `max_bytes`; it hands
//!   1 MiB chunks (shared, not copied) over bounded channels to a hasher thread, which
//!   computes the diff ID over the whole uncompressed stream (including any bytes after
//!   the end-of-archive blocks), and to a writer thread. SHA-256 alone runs at about
//!   the speed `tar -x` writes, so it must not share a core with decompression or
//!   writing.
//! - The writer thread parses tar headers (`tar::Header` for field access; numeric
//!   fields, PAX records, GNU long names and sparse maps are read here, with size caps,
//!   because the `tar` crate's reader buffers extension headers without limit) and
//!   writes straight from the chunks, never holding a whole file in memory.
//! - Every parent directory is opened with `openat2(RESOLVE_BENEATH | NO_SYMLINKS |
//!   NO_MAGICLINKS | NO_XDEV)` relative to a dirfd of the destination, so a symlink
//!   planted by an earlier entry is never followed. Leaf names are created with
//!   `O_EXCL | O_NOFOLLOW` (or `mkdirat`/`symlinkat`/`mknodat`/`linkat`, which never
//!   follow the last component); an existing leaf is unlinked first, never written
//!   through. Directory fds are cached by path (and dropped whenever a directory is
//!   removed), so most entries cost one `openat` for the file itself.
//! - A regular file costs `openat`, `write`, `futimens`, `close`: `fchown` and
//!   `fchmod` are skipped when creation already gave the right owner and mode (we know
//!   our ids, the umask, and whether the directory is setgid or has a default ACL).
//! - Directory modes and mtimes are applied at the end, deepest first.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, SeekFrom, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, Hasher};
use crate::tar_headers::{
    BLOCK, BlockSource, Fields, HeaderLimits, HeaderReader, Pax, SparseVersion, TarEntry, padding,
    parse_decimal,
};

/// Size of the chunks the reader thread hands to the writer thread.
const CHUNK: usize = 1 << 20;
/// Chunks in flight from the reader to each of the hasher and the writer.
const IN_FLIGHT: usize = 4;
/// Buffer in front of a decompressor.
const INPUT_BUFFER: usize = 256 << 10;
/// Open directory fds kept for parent lookups.
const DIR_CACHE: usize = 64;

const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";

/// How the layer stream was compressed (sniffed from its first bytes, never from a
/// media type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Recognises gzip (`1f 8b`) and zstd (`28 b5 2f fd`); anything else is plain tar.
    pub fn detect(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits and policies for [`unpack_layer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Most tar headers (entries plus PAX / long-name headers) accepted.
    pub max_entries: u64,
    /// Most bytes of uncompressed stream accepted (the tar, including trailing bytes).
    pub max_bytes: u64,
    /// Longest entry path or link target, in bytes.
    pub max_path_len: usize,
    /// Largest PAX extended header accepted, in bytes (xattrs live there).
    pub max_pax_len: usize,
    /// Create character and block device nodes (needs root). Default: running as root.
    pub allow_devices: bool,
    /// When devices are not allowed, skip them (counted in the report) instead of
    /// failing the unpack.
    pub skip_devices: bool,
    /// Share identical regular files through hardlinks into this directory (must be on
    /// the destination's filesystem). See [`UnpackOptions::dedup_min_size`].
    pub dedup_pool: Option<PathBuf>,
    /// Regular files smaller than this are never deduplicated.
    pub dedup_min_size: u64,
    /// The input is a blob the store verified at ingest, with this digest and size. If it
    /// turns out uncompressed, its bytes are the layer's tar, so its diff ID is that
    /// digest: the stream is not hashed a second time (only its length is checked).
    pub verified_blob: Option<(Digest, u64)>,
}

/// Default for [`UnpackOptions::dedup_min_size`]: 16 KiB. Pooling a file costs a
/// second SHA-256 over its content (on a thread of its own) and three syscalls
/// (`fstat`, `fstatat`, `linkat`; a duplicate adds `linkat` + `renameat`) on the
/// writer's critical path, about 17 µs of CPU per file; in `benches/benches/unpack.rs`
/// pooling all 20,000 files of a 1–16 KiB layer made its unpack ~1.5x slower. Files
/// under 16 KiB are most of a typical image's files but a small share of its bytes.
pub const DEFAULT_DEDUP_MIN_SIZE: u64 = 16 << 10;

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            max_entries: 1_000_000,
            max_bytes: 64 << 30,
            max_path_len: 4096,
            max_pax_len: 1 << 20,
            allow_devices: rustix::process::geteuid().is_root(),
            skip_devices: false,
            verified_blob: None,
            dedup_pool: None,
            dedup_min_size: DEFAULT_DEDUP_MIN_SIZE,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnpackReport {
    /// SHA-256 of the whole uncompressed stream.
    pub diff_id: Digest,
    pub compression: Compression,
    /// Length of the uncompressed stream.
    pub uncompressed_size: u64,
    /// Entries in the archive (not counting PAX / GNU long-name headers).
    pub entries: u64,
    /// Regular files written (hardlinks not counted).
    pub files: u64,
    /// Regular file bytes written.
    pub bytes: u64,
    /// Regular files that ended up sharing an inode already in the dedup pool.
    pub deduped_files: u64,
    pub deduped_bytes: u64,
    /// `.wh.NAME` entries converted to 0/0 character devices.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries converted to the opaque xattr.
    pub opaque_dirs: u64,
    /// Opaque directories were marked with `user.overlay.opaque` (not privileged):
    /// mount the overlay with `userxattr`.
    pub overlay_userxattr: bool,
    /// Device nodes skipped (see [`UnpackOptions::skip_devices`]).
    pub skipped_devices: u64,
    /// Extended attributes not applied: `*.overlay.*` names from the archive (only
    /// whiteout conversion may set those), or refused for lack of privilege.
    pub skipped_xattrs: u64,
    /// Set by the layer store when the layer was already unpacked and nothing was read.
    #[serde(default)]
    pub already_unpacked: bool,
    /// The layer's size as docker's overlay2 driver counts it (what `docker history`
    /// shows): see `DiffSize`. `None` in reports written before it was counted.
    #[serde(default)]
    pub diff_size: Option<u64>,
}

/// Errors from [`unpack_layer`]. A failed unpack leaves a partial destination that the
/// caller deletes.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading layer: {0}")]
    Read(#[source] io::Error),
    #[error("corrupt or truncated {compression} stream: {source}")]
    Decompress {
        compression: Compression,
        #[source]
        source: io::Error,
    },
    #[error("layer exceeds the limit of {limit} uncompressed bytes")]
    TooLarge { limit: u64 },
    #[error("layer exceeds the limit of {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("tar stream truncated {context}")]
    Truncated { context: String },
    #[error("corrupt tar header at offset {offset}: {reason}")]
    BadHeader { offset: u64, reason: String },
    #[error("entry {path:?}: absolute paths are not allowed")]
    AbsolutePath { path: String },
    #[error("entry {path:?}: `..` path components are not allowed")]
    DotDot { path: String },
    #[error("entry {path:?}: path longer than the limit of {limit} bytes")]
    PathTooLong { path: String, limit: usize },
    #[error("entry {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("entry {path:?}: parent {parent:?} is a symlink or goes through one; refusing to follow it")]
    SymlinkInPath { path: String, parent: String },
    #[error("entry {path:?}: parent {parent:?} is not a directory")]
    NotADirectory { path: String, parent: String },
    #[error("entry {path:?}: resolves outside the layer")]
    Escape { path: String },
    #[error("entry {path:?}: hardlink target {target:?} {reason}")]
    BadHardlink {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("entry {path:?}: device nodes are not allowed here (they need root and allow_devices)")]
    DeviceNotAllowed { path: String },
    #[error("entry {path:?}: invalid whiteout: {reason}")]
    BadWhiteout { path: String, reason: &'static str },
    #[error("entry {path:?}: unsupported entry type {kind:?}")]
    Unsupported { path: String, kind: char },
    #[error("entry {path:?}: bad sparse map: {reason}")]
    BadSparse { path: String, reason: String },
    #[error("entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("destination {path}: {reason}: {source}")]
    Destination {
        path: PathBuf,
        reason: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("starting the extraction thread: {0}")]
    Thread(#[source] io::Error),
}

/// Unpacks one layer stream into `dest` (created if missing). See the module docs.
pub fn unpack_layer(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let mut new_pool_keys = Vec::new();
    unpack_layer_tracked(reader, dest, opts, &mut new_pool_keys)
}

/// Creates `path` (and parents) and opens it as a directory fd with `extra` flags.
fn create_and_open_dir(
    path: &Path,
    extra: OFlags,
    creating: &'static str,
    opening: &'static str,
) -> Result<OwnedFd, UnpackError> {
    let err = |reason, source| UnpackError::Destination {
        path: path.to_path_buf(),
        reason,
        source,
    };
    std::fs::create_dir_all(path).map_err(|e| err(creating, e))?;
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )
    .map_err(|e| err(opening, e.into()))
}

/// Like [`unpack_layer`], recording the dedup pool entries this unpack created (so the
/// layer store can remove them again if the layer is rejected).
pub(crate) fn unpack_layer_tracked(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
    new_pool_keys: &mut Vec<[u8; 32]>,
) -> Result<UnpackReport, UnpackError> {
    let dest_err = |reason, source| UnpackError::Destination {
        path: dest.to_path_buf(),
        reason,
        source,
    };
    let root = create_and_open_dir(dest, OFlags::NOFOLLOW, "creating", "opening")?;
    let pool = match &opts.dedup_pool {
        None => None,
        Some(path) => {
            let err = |reason, source| UnpackError::Destination {
                path: path.clone(),
                reason,
                source,
            };
            let pool =
                create_and_open_dir(path, OFlags::empty(), "creating dedup pool", "opening dedup pool")?;
            let pool_dev = rustix::fs::fstat(&pool)
                .map_err(|e| err("dedup pool", e.into()))?
                .st_dev;
            let dest_dev = rustix::fs::fstat(&root)
                .map_err(|e| dest_err("stat", e.into()))?
                .st_dev;
            if pool_dev != dest_dev {
                return Err(err(
                    "dedup pool",
                    io::Error::other("not on the destination's filesystem"),
                ));
            }
            Some(pool)
        }
    };

    // Sniff the compression from the first bytes.
    let mut reader = reader;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(UnpackError::Read(e)),
        }
    }
    let compression = Compression::detect(&magic[..got]);
    let source_failed = Rc::new(Cell::new(false));
    let source = Source {
        inner: io::Cursor::new(magic[..got].to_vec()).chain(reader),
        failed: source_failed.clone(),
    };
    let decoder: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(source),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(
            INPUT_BUFFER,
            source,
        ))),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(INPUT_BUFFER, source))
                .map_err(|source| UnpackError::Decompress { compression, source })?,
        ),
    };

    // An uncompressed blob the store already verified is its own diff ID.
    let known_diff_id = match (compression, opts.verified_blob) {
        (Compression::None, Some(blob)) => Some(blob),
        _ => None,
    };
    let (to_writer, from_reader) = sync_channel::<Piece>(IN_FLIGHT);
    let (to_hasher, hasher_rx) = sync_channel::<Piece>(IN_FLIGHT);
    let (recycle_tx, recycle_rx) = channel::<Arc<Vec<u8>>>();
    let hasher_recycle = recycle_tx.clone();
    let stream = Stream {
        rx: from_reader,
        recycle: recycle_tx,
        buf: Arc::new(Vec::new()),
        len: 0,
        pos: 0,
        offset: 0,
    };

    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("strata-unpack".into())
            .stack_size(8 << 20)
            .spawn_scoped(scope, move || {
                let mut writer = Writer::new(stream, root, pool, opts, new_pool_keys);
                let result = writer.run();
                // Dropping the writer closes the channel, which stops the reader early
                // on error.
                drop(writer);
                result
            })
            .map_err(UnpackError::Thread)?;
        let hasher = std::thread::Builder::new()
            .name("strata-diff-id".into())
            .spawn_scoped(scope, move || {
                let mut hasher = Hasher::new();
                for piece in hasher_rx {
                    if known_diff_id.is_none() {
                        hasher.update(&piece.buf[..piece.len]);
                    }
                    let _ = hasher_recycle.send(piece.buf);
                }
                hasher
            });
        let hasher = match hasher {
            Ok(h) => h,
            Err(e) => {
                // Let the writer finish (it sees the end of its input) before failing.
                drop((to_writer, to_hasher));
                let _ = writer.join();
                return Err(UnpackError::Thread(e));
            }
        };

        let produced = produce(decoder, to_writer, to_hasher, recycle_rx, opts.max_bytes);
        let written = match writer.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let hashed = match hasher.join() {
            Ok(h) => h,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let uncompressed_size = match produced {
            Ok(len) => len,
            Err(ProduceError::WriterGone) => {
                // The writer stopped reading: it failed, and says why.
                return Err(written.err().unwrap_or_else(|| UnpackError::Truncated {
                    context: "(extraction stopped early)".into(),
                }));
            }
            Err(ProduceError::TooLarge) => {
                return Err(UnpackError::TooLarge {
                    limit: opts.max_bytes,
                });
            }
            Err(ProduceError::Io(e)) => {
                return Err(if source_failed.get() || compression == Compression::None {
                    UnpackError::Read(e)
                } else {
                    UnpackError::Decompress {
                        compression,
                        source: e,
                    }
                });
            }
        };
        let c = written?;
        let diff_id = match known_diff_id {
            None => hashed.finish(),
            Some((digest, size)) if size == uncompressed_size => digest,
            Some((digest, size)) => {
                return Err(UnpackError::Truncated {
                    context: format!("(blob {digest} is {uncompressed_size} bytes, not {size})"),
                });
            }
        };
        Ok(UnpackReport {
            diff_id,
            compression,
            uncompressed_size,
            entries: c.entries,
            files: c.files,
            bytes: c.bytes,
            deduped_files: c.deduped_files,
            deduped_bytes: c.deduped_bytes,
            whiteouts: c.whiteouts,
            opaque_dirs: c.opaque_dirs,
            overlay_userxattr: c.overlay_userxattr,
            skipped_devices: c.skipped_devices,
            skipped_xattrs: c.skipped_xattrs,
            already_unpacked: false,
            diff_size: Some(c.diff_size.0),
        })
    })
}

// ---------------------------------------------------------------------------------
// Reader side: decompress, hash, limit, hand over.

/// Marks errors that come from the underlying reader rather than the decompressor.
struct Source<R> {
    inner: R,
    failed: Rc<Cell<bool>>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.inner.read(buf);
        if matches!(&r, Err(e) if e.kind() != io::ErrorKind::Interrupted) {
            self.failed.set(true);
        }
        r
    }
}

enum ProduceError {
    Io(io::Error),
    TooLarge,
    WriterGone,
}

/// A chunk of the uncompressed stream, shared by the hasher and the writer.
struct Piece {
    buf: Arc<Vec<u8>>,
    len: usize,
}

/// Reads and decompresses the input into chunks for the hasher and the writer, and
/// enforces `max_bytes`. Returns the length of the uncompressed stream.
fn produce(
    mut input: impl Read,
    to_writer: SyncSender<Piece>,
    to_hasher: SyncSender<Piece>,
    recycle: Receiver<Arc<Vec<u8>>>,
    max_bytes: u64,
) -> Result<u64, ProduceError> {
    let mut total = 0u64;
    let mut spare: Vec<Vec<u8>> = Vec::new();
    loop {
        // A chunk comes back twice (hasher and writer); the last one returned is free.
        while let Ok(returned) = recycle.try_recv() {
            if let Ok(buf) = Arc::try_unwrap(returned) {
                spare.push(buf);
            }
        }
        let mut buf = spare.pop().unwrap_or_else(|| vec![0u8; CHUNK]);
        let mut n = 0;
        // Fill the chunk, but hand over early after a short read: a slow source (a
        // network stream) should not leave the writer idle.
        while n < buf.len() {
            let want = buf.len() - n;
            match input.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    if k < want {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ProduceError::Io(e)),
            }
        }
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > max_bytes {
            return Err(ProduceError::TooLarge);
        }
        let buf = Arc::new(buf);
        // The hasher never stops early; the writer does when it fails.
        let _ = to_hasher.send(Piece {
            buf: buf.clone(),
            len: n,
        });
        if to_writer.send(Piece { buf, len: n }).is_err() {
            return Err(ProduceError::WriterGone);
        }
    }
}

// ---------------------------------------------------------------------------------
// Writer side: the chunk stream.

struct Stream {
    rx: Receiver<Piece>,
    recycle: Sender<Arc<Vec<u8>>>,
    buf: Arc<Vec<u8>>,
    len: usize,
    pos: usize,
    /// Bytes of the tar stream consumed so far.
    offset: u64,
}

enum StreamError {
    Eof,
    Io(io::Error),
}

impl Stream {
    /// Makes sure unread bytes are buffered; false at the end of the stream.
    fn refill(&mut self) -> bool {
        while self.pos == self.len {
            match self.rx.recv() {
                Ok(piece) => {
                    let old = std::mem::replace(&mut self.buf, piece.buf);
                    if !old.is_empty() {
                        let _ = self.recycle.send(old);
                    }
                    self.len = piece.len;
                    self.pos = 0;
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Reads one block; `Ok(false)` on a clean end of stream before any byte.
    fn read_block(&mut self, out: &mut [u8; BLOCK as usize]) -> Result<bool, StreamError> {
        let mut got = 0;
        while got < out.len() {
            if !self.refill() {
                return if got == 0 {
                    Ok(false)
                } else {
                    Err(StreamError::Eof)
                };
            }
            let n = (out.len() - got).min(self.len - self.pos);
            out[got..got + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            self.offset += n as u64;
            got += n;
        }
        Ok(true)
    }

    /// Feeds the next `n` bytes to `f`, in slices.
    fn consume(&mut self, n: u64, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> Result<(), StreamError> {
        self.consume_shared(n, |buf, start, end| f(&buf[start..end]))
    }

    /// Like `consume`, handing out the shared chunk and the range instead of a slice.
    fn consume_shared(
        &mut self,
        mut n: u64,
        mut f: impl FnMut(&Arc<Vec<u8>>, usize, usize) -> io::Result<()>,
    ) -> Result<(), StreamError> {
        while n > 0 {
            if !self.refill() {
                return Err(StreamError::Eof);
            }
            let take = ((self.len - self.pos) as u64).min(n) as usize;
            f(&self.buf, self.pos, self.pos + take).map_err(StreamError::Io)?;
            self.pos += take;
            self.offset += take as u64;
            n -= take as u64;
        }
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), StreamError> {
        self.consume(n, |_| Ok(()))
    }

    fn read_vec(&mut self, n: usize) -> Result<Vec<u8>, StreamError> {
        let mut v = Vec::with_capacity(n);
        self.consume(n as u64, |s| {
            v.extend_from_slice(s);
            Ok(())
        })?;
        Ok(v)
    }

    /// Discards the rest (the reader side still hashes it).
    fn drain(&mut self) {
        self.pos = self.len;
        while let Ok(piece) = self.rx.recv() {
            let _ = self.recycle.send(piece.buf);
        }
    }
}

impl BlockSource for Stream {
    fn position(&self) -> u64 {
        self.offset
    }

    fn next_block(&mut self, out: &mut [u8; BLOCK as usize]) -> io::Result<bool> {
        self.read_block(out).map_err(StreamError::into_io)
    }

    fn take_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        self.read_vec(n).map_err(StreamError::into_io)
    }

    fn skip_bytes(&mut self, n: u64) -> io::Result<()> {
        self.skip(n).map_err(StreamError::into_io)
    }
}

impl StreamError {
    fn into_io(self) -> io::Error {
        match self {
            StreamError::Eof => io::ErrorKind::UnexpectedEof.into(),
            StreamError::Io(e) => e,
        }
    }
}

// ---------------------------------------------------------------------------------
// Writer side: entries.

#[derive(Default)]
struct Counters {
    entries: u64,
    files: u64,
    bytes: u64,
    deduped_files: u64,
    deduped_bytes: u64,
    whiteouts: u64,
    opaque_dirs: u64,
    overlay_userxattr: bool,
    skipped_devices: u64,
    skipped_xattrs: u64,
    diff_size: crate::diff_size::DiffSize,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: Timespec,
    mtime: Timespec,
}

/// Work for the dedup hashing thread: the slices of a file as they are written, then
/// its end.
enum DedupMsg {
    Data {
        id: u64,
        buf: Arc<Vec<u8>>,
        start: usize,
        end: usize,
    },
    End {
        id: u64,
    },
}

/// Batches in flight to the dedup hashing thread. Messages go in batches (one
/// wake-up per batch, not per file: per-message channel traffic cost more than the
/// hashing); a batch is sent at `DEDUP_BATCH` messages or `DEDUP_BATCH_BYTES` of data,
/// which also bounds the chunks and pinned fds held by pending files.
const DEDUP_IN_FLIGHT: usize = 4;
const DEDUP_BATCH: usize = 32;
const DEDUP_BATCH_BYTES: usize = 4 << 20;

/// Hashes file contents for the pool keys, off the writer's critical path.
fn dedup_hasher(rx: Receiver<Vec<DedupMsg>>, results: Sender<DedupDone>) {
    let mut open: HashMap<u64, Sha256> = HashMap::new();
    for batch in rx {
        let mut done = Vec::new();
        for msg in batch {
            match msg {
                DedupMsg::Data { id, buf, start, end } => {
                    open.entry(id).or_default().update(&buf[start..end])
                }
                DedupMsg::End { id } => {
                    done.push((id, open.remove(&id).unwrap_or_default().finalize().into()));
                }
            }
        }
        if !done.is_empty() && results.send(done).is_err() {
            return;
        }
    }
}

/// Content digests of finished files, by dedup id.
type DedupDone = Vec<(u64, [u8; 32])>;

/// Device and inode numbers (their C types differ between targets).
#[allow(clippy::unnecessary_cast)]
fn dev_ino(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// A file written for the pool, waiting for its content digest. Its fd stays open
/// until then: that pins the inode, so an inode number seen at the path later is this
/// file and not a new one that reused a freed number.
struct PendingDedup {
    _pin: OwnedFd,
    parent_rel: Vec<u8>,
    name: Vec<u8>,
    dev: u64,
    ino: u64,
    meta: Meta,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    size: u64,
    display: String,
}

enum SparseKind {
    /// Map known up front (old GNU `S` headers, PAX 0.0 and 0.1).
    Map(Vec<(u64, u64)>),
    /// PAX 1.0: the map is at the start of the entry's data.
    InData,
}

struct Sparse {
    real_size: u64,
    kind: SparseKind,
}

enum Kind {
    File,
    Directory,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
    Skip,
}

struct Writer<'a> {
    stream: Stream,
    opts: &'a UnpackOptions,
    root: Rc<Dir>,
    pool: Option<OwnedFd>,
    privileged: bool,
    /// Our effective ids and umask: what a new file gets without chown/chmod.
    euid: u32,
    egid: u32,
    umask: Option<u32>,
    cache: HashMap<Vec<u8>, Rc<Dir>>,
    /// Directory metadata applied at the end (deepest first), keyed by path.
    dirs: HashMap<Vec<u8>, Meta>,
    root_meta: Option<Meta>,
    c: Counters,
    new_pool_keys: &'a mut Vec<[u8; 32]>,
    tmp_counter: u64,
    /// To the dedup hashing thread, and its results; set while it runs.
    dedup_tx: Option<SyncSender<Vec<DedupMsg>>>,
    dedup_results: Option<Receiver<DedupDone>>,
    dedup_batch: Vec<DedupMsg>,
    dedup_batch_bytes: usize,
    next_dedup_id: u64,
    /// Files written and waiting for their content digest.
    pending_dedup: HashMap<u64, PendingDedup>,
    /// Header blocks read after the entry header but outside its data (GNU sparse
    /// extension headers).
    pre_data: u64,
}

/// A path for messages: lossy UTF-8, the middle of very long ones elided.
pub(crate) fn lossy(bytes: &[u8]) -> String {
    const KEEP: usize = 120;
    if bytes.len() > 2 * KEEP + 16 {
        let head = String::from_utf8_lossy(&bytes[..KEEP]);
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - KEEP..]);
        return format!("{head}…({} bytes)…{tail}", bytes.len());
    }
    String::from_utf8_lossy(bytes).into_owned()
}

fn io_err(path: &str, op: &'static str, e: impl Into<io::Error>) -> UnpackError {
    UnpackError::Io {
        path: path.to_string(),
        op,
        source: e.into(),
    }
}

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
}

/// Opens a directory below `dir` without following any symlink or leaving `dir`.
fn open_dir_beneath(dir: BorrowedFd<'_>, path: &[u8]) -> rustix::io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            dir,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        ) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

enum PathIssue {
    Absolute,
    DotDot,
    TooLong,
    Nul,
}

/// Turns an archive path into a clean relative path (`a/b/c`, no `.` or empty
/// components). The empty result names the layer root.
fn normalise(raw: &[u8], max: usize) -> Result<Vec<u8>, PathIssue> {
    if raw.len() > max {
        return Err(PathIssue::TooLong);
    }
    if raw.contains(&0) {
        return Err(PathIssue::Nul);
    }
    if raw.first() == Some(&b'/') {
        return Err(PathIssue::Absolute);
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(PathIssue::DotDot),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Ok(out)
}

fn path_error(issue: PathIssue, path: &str, limit: usize) -> UnpackError {
    let path = path.to_string();
    match issue {
        PathIssue::Absolute => UnpackError::AbsolutePath { path },
        PathIssue::DotDot => UnpackError::DotDot { path },
        PathIssue::TooLong => UnpackError::PathTooLong { path, limit },
        PathIssue::Nul => UnpackError::BadPath {
            path,
            reason: "path contains a NUL byte",
        },
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes `name` under `parent`, recursively if it is a directory, never following
/// symlinks.
fn remove_tree_at(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) => return Ok(()),
        Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    let mut it = rustix::fs::Dir::read_from(&dir)?;
    while let Some(entry) = it.read() {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        match rustix::fs::unlinkat(&dir, n.as_slice(), AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::ISDIR) => remove_tree_at(dir.as_fd(), &n)?,
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// The dedup pool key: content digest plus every piece of metadata an inode carries.
fn dedup_key(content: &[u8], meta: &Meta, xattrs: &[(Vec<u8>, Vec<u8>)]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"strata-dedup-v1\0");
    h.update(content);
    h.update(meta.mode.to_le_bytes());
    h.update(meta.uid.to_le_bytes());
    h.update(meta.gid.to_le_bytes());
    h.update(meta.mtime.tv_sec.to_le_bytes());
    h.update(meta.mtime.tv_nsec.to_le_bytes());
    let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = xattrs.iter().collect();
    sorted.sort();
    h.update((sorted.len() as u64).to_le_bytes());
    for (name, value) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name);
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    }
    h.finalize().into()
}

fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

impl<'a> Writer<'a> {
    fn new(
        stream: Stream,
        root: OwnedFd,
        pool: Option<OwnedFd>,
        opts: &'a UnpackOptions,
        new_pool_keys: &'a mut Vec<[u8; 32]>,
    ) -> Writer<'a> {
        Writer {
            stream,
            opts,
            root: Rc::new(Dir::new(root)),
            pool,
            privileged: rustix::process::geteuid().is_root(),
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            umask: current_umask(),
            cache: HashMap::new(),
            dirs: HashMap::new(),
            root_meta: None,
            c: Counters::default(),
            new_pool_keys,
            tmp_counter: 0,
            dedup_tx: None,
            dedup_results: None,
            dedup_batch: Vec::new(),
            dedup_batch_bytes: 0,
            next_dedup_id: 0,
            pending_dedup: HashMap::new(),
            pre_data: 0,
        }
    }

    fn run(&mut self) -> Result<Counters, UnpackError> {
        if self.pool.is_none() {
            self.entries()?;
        } else {
            std::thread::scope(|scope| {
                let (tx, rx) = sync_channel(DEDUP_IN_FLIGHT);
                let (results_tx, results_rx) = channel();
                let hasher = std::thread::Builder::new()
                    .name("strata-dedup".into())
                    .spawn_scoped(scope, move || dedup_hasher(rx, results_tx))
                    .map_err(UnpackError::Thread)?;
                self.dedup_tx = Some(tx);
                self.dedup_results = Some(results_rx);
                let result = self.entries();
                self.flush_dedup_batch();
                // Closing the channel lets the thread finish; then the rest applies.
                self.dedup_tx = None;
                let result = result.and_then(|()| self.apply_dedup_results(true));
                self.dedup_results = None;
                if let Err(panic) = hasher.join() {
                    std::panic::resume_unwind(panic);
                }
                result
            })?;
        }
        self.finish_dirs()?;
        Ok(std::mem::take(&mut self.c))
    }

    /// Reads and writes every entry, then drains the stream.
    fn entries(&mut self) -> Result<(), UnpackError> {
        let mut reader = HeaderReader::new(HeaderLimits {
            max_headers: self.opts.max_entries,
            max_path_len: self.opts.max_path_len,
            max_pax_len: self.opts.max_pax_len,
        });
        while let Some(entry) = reader.next(&mut self.stream)? {
            self.entry(entry)?;
            self.apply_dedup_results(false)?;
        }
        self.stream.drain();
        Ok(())
    }

    fn entry(&mut self, e: TarEntry) -> Result<(), UnpackError> {
        let header_offset = e.offset;
        let bad = |reason: String| UnpackError::BadHeader {
            offset: header_offset,
            reason,
        };
        let size = e.size;
        // Refuse a bomb from its header, before writing a byte of it.
        if self.stream.offset.saturating_add(size) > self.opts.max_bytes {
            return Err(UnpackError::TooLarge {
                limit: self.opts.max_bytes,
            });
        }
        let display = lossy(&e.path);
        self.c.entries += 1;

        let data_start = self.stream.offset;
        self.pre_data = 0;
        self.entry_body(&e, &display).map_err(|e| match e {
            UnpackError::BadHeader { reason, .. } => bad(reason),
            e => e,
        })?;
        // Skip whatever the handler did not consume, then the padding.
        let consumed = self.stream.offset - data_start - self.pre_data;
        let rest = size.saturating_sub(consumed) + padding(size);
        self.stream.skip(rest).map_err(|_| UnpackError::Truncated {
            context: format!("in entry {display:?}"),
        })
    }

    fn entry_body(&mut self, e: &TarEntry, display: &str) -> Result<(), UnpackError> {
        let (header, pax, raw_path, size) = (&e.header, &e.pax, &e.path[..], e.size);
        let max = self.opts.max_path_len;
        let rel = normalise(raw_path, max).map_err(|i| path_error(i, display, max))?;
        let bad = |reason: String| UnpackError::BadHeader { offset: 0, reason };
        let fields = Fields(header.as_bytes());
        let id = |v: u64, what: &'static str| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or(UnpackError::BadPath {
                    path: display.to_string(),
                    reason: what,
                })
        };
        let mtime = match pax.mtime {
            Some(t) => t,
            None => Timespec {
                tv_sec: i64::try_from(fields.mtime().map_err(bad)?).unwrap_or(i64::MAX),
                tv_nsec: 0,
            },
        };
        let meta = Meta {
            mode: (fields.mode().map_err(bad)? & 0o7777) as u32,
            uid: id(
                pax.uid.map_or_else(|| fields.uid(), Ok).map_err(bad)?,
                "uid out of range",
            )?,
            gid: id(
                pax.gid.map_or_else(|| fields.gid(), Ok).map_err(bad)?,
                "gid out of range",
            )?,
            atime: pax.atime.unwrap_or(mtime),
            mtime,
        };
        let (parent_rel, name) = split_parent(&rel);
        let leaf = Leaf {
            parent_rel,
            name,
            display,
        };

        let kind = match e.kind {
            b'0' | b'\0' | b'7' | b'S' => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' | b'D' => Kind::Directory,
            b'6' => Kind::Fifo,
            // Volume labels carry no file.
            b'V' => Kind::Skip,
            other => {
                return Err(UnpackError::Unsupported {
                    path: display.to_string(),
                    kind: char::from(other),
                });
            }
        };
        if matches!(kind, Kind::Skip) {
            return Ok(());
        }
        if rel.is_empty() {
            if !matches!(kind, Kind::Directory) {
                return Err(UnpackError::BadPath {
                    path: display.to_string(),
                    reason: "names the layer root but is not a directory",
                });
            }
            self.root_meta = Some(meta);
            let root = self.root.clone();
            return self.set_xattrs(XattrTarget::Fd(root.as_fd()), &pax.xattrs, display);
        }
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent_rel, name, display);
        }

        match kind {
            Kind::File => {
                let sparse = self.sparse_info(header, pax, display)?;
                self.regular(leaf, size, &meta, &pax.xattrs, sparse)
            }
            Kind::Directory => self.directory(&rel, parent_rel, name, meta, &pax.xattrs, display),
            Kind::Symlink => {
                let target = e.link.clone();
                if target.is_empty() || target.contains(&0) {
                    return Err(UnpackError::BadPath {
                        path: display.to_string(),
                        reason: "symlink with an empty or invalid target",
                    });
                }
                self.c.diff_size.symlink(&target);
                self.symlink(parent_rel, name, &target, &meta, &pax.xattrs, display)
            }
            Kind::Hardlink => {
                let target = e.link.clone();
                self.hardlink(&rel, parent_rel, name, &target, display)
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let file_type = match kind {
                    Kind::Char => FileType::CharacterDevice,
                    Kind::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if !matches!(kind, Kind::Fifo) && !self.opts.allow_devices {
                    if self.opts.skip_devices {
                        self.c.skipped_devices += 1;
                        return Ok(());
                    }
                    return Err(UnpackError::DeviceNotAllowed {
                        path: display.to_string(),
                    });
                }
                let (major, minor) = fields.device().map_err(bad)?;
                let dev = if matches!(kind, Kind::Fifo) {
                    0
                } else {
                    rustix::fs::makedev(major, minor)
                };
                self.node(leaf, file_type, dev, &meta, &pax.xattrs)
            }
            Kind::Skip => Ok(()),
        }
    }

    fn sparse_info(
        &mut self,
        header: &tar::Header,
        pax: &Pax,
        display: &str,
    ) -> Result<Option<Sparse>, UnpackError> {
        let bad = |reason: String| UnpackError::BadSparse {
            path: display.to_string(),
            reason,
        };
        if header.entry_type().is_gnu_sparse() {
            let gnu = header
                .as_gnu()
                .ok_or_else(|| bad("sparse entry without a GNU header".into()))?;
            let real_size = gnu.real_size().map_err(|e| bad(e.to_string()))?;
            let mut map = Vec::new();
            let push = |map: &mut Vec<(u64, u64)>, s: &tar::GnuSparseHeader| -> Result<(), UnpackError> {
                if !s.is_empty() {
                    map.push((
                        s.offset().map_err(|e| bad(e.to_string()))?,
                        s.length().map_err(|e| bad(e.to_string()))?,
                    ));
                }
                Ok(())
            };
            for s in &gnu.sparse {
                push(&mut map, s)?;
            }
            let mut extended = gnu.is_extended();
            while extended {
                if map.len() > 1 << 20 {
                    return Err(bad("too many sparse regions".into()));
                }
                let mut ext = tar::GnuExtSparseHeader::new();
                let mut block = [0u8; BLOCK as usize];
                if !matches!(self.stream.read_block(&mut block), Ok(true)) {
                    return Err(UnpackError::Truncated {
                        context: format!("in the sparse map of {display:?}"),
                    });
                }
                self.pre_data += BLOCK;
                ext.as_mut_bytes().copy_from_slice(&block);
                for s in &ext.sparse {
                    push(&mut map, s)?;
                }
                extended = ext.is_extended();
            }
            return Ok(Some(Sparse {
                real_size,
                kind: SparseKind::Map(map),
            }));
        }
        // As Go's reader decides it: an unknown version is a plain file.
        let Some(version) = pax.sparse_version() else {
            return Ok(None);
        };
        let real_size = pax
            .sparse_realsize
            .ok_or_else(|| bad("pax sparse entry without a real size".into()))?;
        match version {
            SparseVersion::V1 => Ok(Some(Sparse {
                real_size,
                kind: SparseKind::InData,
            })),
            SparseVersion::V0 => {
                let nums: Vec<u64> = if let Some(map) = &pax.sparse_map {
                    map.split(|b| *b == b',')
                        .map(parse_decimal)
                        .collect::<Option<_>>()
                        .ok_or_else(|| bad("bad GNU.sparse.map".into()))?
                } else {
                    if pax.sparse_offsets.len() != pax.sparse_numbytes.len() {
                        return Err(bad("unpaired GNU.sparse.offset/numbytes".into()));
                    }
                    pax.sparse_offsets
                        .iter()
                        .zip(&pax.sparse_numbytes)
                        .flat_map(|(o, n)| [*o, *n])
                        .collect()
                };
                if !nums.len().is_multiple_of(2) {
                    return Err(bad("odd number of values in the sparse map".into()));
                }
                if pax.sparse_numblocks != Some(nums.len() as u64 / 2) {
                    return Err(bad("GNU.sparse.numblocks does not match the map".into()));
                }
                Ok(Some(Sparse {
                    real_size,
                    kind: SparseKind::Map(nums.chunks(2).map(|p| (p[0], p[1])).collect()),
                }))
            }
        }
    }

    /// Reads a PAX 1.0 sparse map from the start of the data; returns the map and the
    /// bytes it took (a multiple of 512).
    fn read_sparse_map_in_data(
        &mut self,
        size: u64,
        display: &str,
    ) -> Result<(Vec<(u64, u64)>, u64), UnpackError> {
        let bad = |reason: &str| UnpackError::BadSparse {
            path: display.to_string(),
            reason: reason.to_string(),
        };
        let mut text: Vec<u8> = Vec::new();
        let mut numbers: Vec<u64> = Vec::new();
        let mut want: Option<u64> = None;
        let mut consumed = 0u64;
        let mut line_start = 0usize;
        loop {
            if want.is_some_and(|w| numbers.len() as u64 == 1 + 2 * w) {
                break;
            }
            if consumed + BLOCK > size || text.len() > self.opts.max_pax_len {
                return Err(bad("sparse map too long or truncated"));
            }
            let mut block = [0u8; BLOCK as usize];
            if !matches!(self.stream.read_block(&mut block), Ok(true)) {
                return Err(UnpackError::Truncated {
                    context: format!("in the sparse map of {display:?}"),
                });
            }
            consumed += BLOCK;
            text.extend_from_slice(&block);
            while let Some(nl) = text[line_start..].iter().position(|b| *b == b'\n') {
                let line = &text[line_start..line_start + nl];
                numbers.push(parse_decimal(line).ok_or_else(|| bad("bad number in sparse map"))?);
                line_start += nl + 1;
                if want.is_none() {
                    let count = numbers[0];
                    if count > (1 << 20) {
                        return Err(bad("too many sparse regions"));
                    }
                    want = Some(count);
                }
                if want.is_some_and(|w| numbers.len() as u64 == 1 + 2 * w) {
                    break;
                }
            }
        }
        let map = numbers[1..].chunks(2).map(|p| (p[0], p[1])).collect();
        Ok((map, consumed))
    }

    fn regular(
        &mut self,
        leaf: Leaf<'_>,
        size: u64,
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        sparse: Option<Sparse>,
    ) -> Result<(), UnpackError> {
        let Leaf {
            parent_rel,
            name,
            display,
        } = leaf;
        self.c
            .diff_size
            .file(sparse.as_ref().map_or(size, |s| s.real_size));
        let parent = self.dir_at(parent_rel, true, display)?;
        let fd = self.create_file(&parent, parent_rel, name, meta.mode & 0o777, display)?;
        let truncated = |e: StreamError| match e {
            StreamError::Eof => UnpackError::Truncated {
                context: format!("in entry {display:?}"),
            },
            StreamError::Io(e) => io_err(display, "writing", e),
        };
        // Files for the pool are hashed by the dedup thread, from the very slices
        // written here.
        let dedup_id = match (&sparse, &self.dedup_tx) {
            (None, Some(_)) if size >= self.opts.dedup_min_size => {
                self.next_dedup_id += 1;
                Some(self.next_dedup_id)
            }
            _ => None,
        };
        match sparse {
            None => {
                let fdb = fd.as_fd();
                let mut batch = std::mem::take(&mut self.dedup_batch);
                let written = self.stream.consume_shared(size, |buf, start, end| {
                    if let Some(id) = dedup_id {
                        batch.push(DedupMsg::Data {
                            id,
                            buf: buf.clone(),
                            start,
                            end,
                        });
                    }
                    write_all(fdb, &buf[start..end])
                });
                self.dedup_batch = batch;
                written.map_err(truncated)?;
            }
            Some(sparse) => {
                let (map, map_bytes) = match sparse.kind {
                    SparseKind::Map(map) => (map, 0),
                    SparseKind::InData => self.read_sparse_map_in_data(size, display)?,
                };
                let mut end = 0u64;
                let mut total = 0u64;
                for (offset, len) in &map {
                    let region_end = offset.checked_add(*len);
                    if *offset < end || region_end.is_none_or(|e| e > sparse.real_size) {
                        return Err(UnpackError::BadSparse {
                            path: display.to_string(),
                            reason: "regions out of order, overlapping or past the end".into(),
                        });
                    }
                    end = region_end.unwrap_or(end);
                    total += len;
                }
                if total + map_bytes != size {
                    return Err(UnpackError::BadSparse {
                        path: display.to_string(),
                        reason: format!(
                            "regions hold {total} bytes but the entry has {}",
                            size - map_bytes
                        ),
                    });
                }
                for (offset, len) in map {
                    rustix::fs::seek(&fd, SeekFrom::Start(offset))
                        .map_err(|e| io_err(display, "seeking", e))?;
                    let fdb = fd.as_fd();
                    self.stream
                        .consume(len, |chunk| write_all(fdb, chunk))
                        .map_err(truncated)?;
                }
                rustix::fs::ftruncate(&fd, sparse.real_size)
                    .map_err(|e| io_err(display, "setting the size", e))?;
            }
        }
        let needs = self.needs(&parent, meta);
        self.apply_fd_meta(fd.as_fd(), meta, xattrs, needs, display)?;
        let inode = match dedup_id {
            Some(_) => {
                let st = rustix::fs::fstat(&fd).map_err(|e| io_err(display, "inspecting", e))?;
                let (dev, ino) = dev_ino(&st);
                Some((dev, ino, fd))
            }
            None => None,
        };
        self.c.files += 1;
        self.c.bytes += size;
        if let (Some(id), Some(st)) = (dedup_id, inode) {
            self.dedup_batch.push(DedupMsg::End { id });
            self.dedup_batch_bytes += size as usize;
            if self.dedup_batch.len() >= DEDUP_BATCH || self.dedup_batch_bytes >= DEDUP_BATCH_BYTES {
                self.flush_dedup_batch();
            }
            self.pending_dedup.insert(
                id,
                PendingDedup {
                    _pin: st.2,
                    parent_rel: parent_rel.to_vec(),
                    name: name.to_vec(),
                    dev: st.0,
                    ino: st.1,
                    meta: *meta,
                    xattrs: xattrs.to_vec(),
                    size,
                    display: display.to_string(),
                },
            );
        }
        Ok(())
    }

    /// Hands the collected dedup work to the hashing thread.
    fn flush_dedup_batch(&mut self) {
        self.dedup_batch_bytes = 0;
        let batch = std::mem::take(&mut self.dedup_batch);
        if let (false, Some(tx)) = (batch.is_empty(), &self.dedup_tx) {
            // A send fails only if the thread is gone; the files then stay unshared.
            let _ = tx.send(batch);
        }
    }

    /// Applies the dedup results that are ready (`wait`: all of them).
    fn apply_dedup_results(&mut self, wait: bool) -> Result<(), UnpackError> {
        loop {
            let Some(rx) = &self.dedup_results else {
                return Ok(());
            };
            let done = if wait {
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                }
            } else {
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                }
            };
            for (id, content) in done {
                self.apply_dedup(id, content)?;
            }
        }
    }

    /// Links one written file with the pool, if its path still holds the inode we wrote
    /// (a later entry may have replaced it, or its directory, meanwhile).
    fn apply_dedup(&mut self, id: u64, content: [u8; 32]) -> Result<(), UnpackError> {
        let Some(p) = self.pending_dedup.remove(&id) else {
            return Ok(());
        };
        let Ok(parent) = self.dir_at(&p.parent_rel, false, &p.display) else {
            return Ok(());
        };
        match rustix::fs::statat(&*parent, p.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if dev_ino(&st) == (p.dev, p.ino) => {}
            _ => return Ok(()),
        }
        let key = dedup_key(&content, &p.meta, &p.xattrs);
        self.dedup(&parent, &p.name, key, p.size, &p.display)
    }

    /// Shares the just-written file with an identical one in the pool, or puts it there.
    fn dedup(
        &mut self,
        parent: &Dir,
        name: &[u8],
        key: [u8; 32],
        size: u64,
        display: &str,
    ) -> Result<(), UnpackError> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let hex_key = hex::encode(key);
        for _ in 0..4 {
            match rustix::fs::linkat(parent, name, pool, hex_key.as_str(), AtFlags::empty()) {
                Ok(()) => {
                    self.new_pool_keys.push(key);
                    return Ok(());
                }
                Err(Errno::EXIST) => {}
                // The link limit of the inode, or a filesystem without hardlinks: keep
                // our own copy.
                Err(Errno::MLINK) | Err(Errno::PERM) => return Ok(()),
                Err(e) => return Err(io_err(display, "linking into the dedup pool", e)),
            }
            // The pool has this content: link it beside ours under a fresh name, then
            // rename it over ours (atomic; our file is never missing).
            loop {
                self.tmp_counter += 1;
                let tmp = format!(".strata-dedup-{}", self.tmp_counter);
                match rustix::fs::linkat(pool, hex_key.as_str(), parent, tmp.as_str(), AtFlags::empty()) {
                    Ok(()) => {
                        rustix::fs::renameat(parent, tmp.as_str(), parent, name)
                            .map_err(|e| io_err(display, "replacing with the pooled copy", e))?;
                        self.c.deduped_files += 1;
                        self.c.deduped_bytes += size;
                        return Ok(());
                    }
                    Err(Errno::EXIST) => continue,
                    // Removed by a concurrent pool GC: try to put ours in again.
                    Err(Errno::NOENT) => break,
                    Err(Errno::MLINK) => return Ok(()),
                    Err(e) => return Err(io_err(display, "linking from the dedup pool", e)),
                }
            }
        }
        Ok(())
    }

    fn create_file(
        &mut self,
        parent: &Dir,
        parent_rel: &[u8],
        name: &[u8],
        mode: u32,
        display: &str,
    ) -> Result<OwnedFd, UnpackError> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // Created with its final permission bits (we hold the fd, so even 000 is fine
        // to write); `needs` decides whether a chmod must follow.
        let mode = Mode::from_raw_mode(mode);
        match rustix::fs::openat(parent, name, flags, mode) {
            Ok(fd) => Ok(fd),
            Err(Errno::EXIST) => {
                self.remove_existing(parent.as_fd(), parent_rel, name, display)?;
                rustix::fs::openat(parent, name, flags, mode).map_err(|e| io_err(display, "creating file", e))
            }
            Err(e) => Err(io_err(display, "creating file", e)),
        }
    }

    /// Removes whatever is at `name` (never following it); directories recursively.
    fn remove_existing(
        &mut self,
        parent: BorrowedFd<'_>,
        parent_rel: &[u8],
        name: &[u8],
        display: &str,
    ) -> Result<(), UnpackError> {
        match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) => {
                remove_tree_at(parent, name)
                    .map_err(|e| io_err(display, "removing the directory it replaces", e))?;
                self.cache.clear();
                let mut rel = parent_rel.to_vec();
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(name);
                let mut prefix = rel.clone();
                prefix.push(b'/');
                self.dirs.retain(|p, _| *p != rel && !p.starts_with(&prefix));
                Ok(())
            }
            Err(e) => Err(io_err(display, "removing the file it replaces", e)),
        }
    }

    /// What an entry just created in `dir` with permission bits `meta.mode & 0o777`
    /// still needs: no chown when it already has the owner (ours, or the setgid
    /// directory's group), no chmod when the umask (and no default ACL) left the mode
    /// as asked and there are no setuid/setgid/sticky bits. Saves two of six syscalls
    /// per file in the common case.
    fn needs(&self, dir: &Dir, meta: &Meta) -> Needs {
        let owner_ok = meta.uid == self.euid && meta.gid == dir.setgid_gid.unwrap_or(self.egid);
        let mode_ok =
            meta.mode & 0o7000 == 0 && !dir.default_acl && self.umask.is_some_and(|u| meta.mode & u == 0);
        Needs {
            chown: self.privileged && !owner_ok,
            chmod: !mode_ok,
        }
    }

    fn apply_fd_meta(
        &mut self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        needs: Needs,
        display: &str,
    ) -> Result<(), UnpackError> {
        // Order matters: chown clears setuid/setgid and file capabilities, so chmod and
        // xattrs come after it; timestamps last.
        if self.privileged && needs.chown {
            rustix::fs::fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
                .map_err(|e| io_err(display, "setting owner", e))?;
        }
        if needs.chmod {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| io_err(display, "setting mode", e))?;
        }
        self.set_xattrs(XattrTarget::Fd(fd), xattrs, display)?;
        rustix::fs::futimens(fd, &timestamps(meta)).map_err(|e| io_err(display, "setting times", e))?;
        Ok(())
    }

    fn set_xattrs(
        &mut self,
        target: XattrTarget<'_>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        display: &str,
    ) -> Result<(), UnpackError> {
        for (name, value) in xattrs {
            if is_overlay_xattr(name) {
                let (entry, xattr) = (display, lossy(name));
                tracing::warn!(entry, xattr, "ignoring overlay xattr from the archive");
                self.c.skipped_xattrs += 1;
                continue;
            }
            let r = match &target {
                XattrTarget::Fd(fd) => rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty()),
                XattrTarget::At(dir, leaf) => {
                    // No `lsetxattrat`: go through the directory fd's magic link, which
                    // names exactly the directory we hold; the leaf is not followed.
                    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
                    path.extend_from_slice(leaf);
                    rustix::fs::lsetxattr(path.as_slice(), name.as_slice(), value, XattrFlags::empty())
                }
            };
            match r {
                Ok(()) => {}
                Err(Errno::PERM) | Err(Errno::ACCESS) if !self.privileged => {
                    self.c.skipped_xattrs += 1;
                }
                Err(e) => return Err(io_err(display, "setting xattr", e)),
            }
        }
        Ok(())
    }

    fn directory(
        &mut self,
        rel: &[u8],
        parent_rel: &[u8],
        name: &[u8],
        meta: Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        display: &str,
    ) -> Result<(), UnpackError> {
        let parent = self.dir_at(parent_rel, true, display)?;
        let mode = Mode::from_raw_mode(0o700);
        match rustix::fs::mkdirat(&parent, name, mode) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(display, "inspecting existing path", e))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    self.remove_existing(parent.as_fd(), parent_rel, name, display)?;
                    rustix::fs::mkdirat(&parent, name, mode)
                        .map_err(|e| io_err(display, "creating directory", e))?;
                }
            }
            Err(e) => return Err(io_err(display, "creating directory", e)),
        }
        self.dirs.insert(rel.to_vec(), meta);
        if !xattrs.is_empty() {
            let dir = self.dir_at(rel, false, display)?;
            self.set_xattrs(XattrTarget::Fd(dir.as_fd()), xattrs, display)?;
        }
        Ok(())
    }

    fn symlink(
        &mut self,
        parent_rel: &[u8],
        name: &[u8],
        target: &[u8],
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        display: &str,
    ) -> Result<(), UnpackError> {
        let parent = self.dir_at(parent_rel, true, display)?;
        match rustix::fs::symlinkat(target, &parent, name) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                self.remove_existing(parent.as_fd(), parent_rel, name, display)?;
                rustix::fs::symlinkat(target, &parent, name)
                    .map_err(|e| io_err(display, "creating symlink", e))?;
            }
            Err(e) => return Err(io_err(display, "creating symlink", e)),
        }
        let needs = Needs {
            chmod: false,
            ..self.needs(&parent, meta)
        };
        self.apply_at_meta(&parent, name, meta, xattrs, needs, display)
    }

    fn node(
        &mut self,
        leaf: Leaf<'_>,
        file_type: FileType,
        dev: u64,
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), UnpackError> {
        let Leaf {
            parent_rel,
            name,
            display,
        } = leaf;
        let parent = self.dir_at(parent_rel, true, display)?;
        let mode = Mode::from_raw_mode(meta.mode & 0o777);
        let make = |parent: &Dir| rustix::fs::mknodat(parent, name, file_type, mode, dev);
        let made = match make(&parent) {
            Err(Errno::EXIST) => {
                self.remove_existing(parent.as_fd(), parent_rel, name, display)?;
                make(&parent)
            }
            r => r,
        };
        match made {
            Ok(()) => {}
            Err(Errno::PERM) if file_type != FileType::Fifo => {
                return Err(UnpackError::DeviceNotAllowed {
                    path: display.to_string(),
                });
            }
            Err(e) => return Err(io_err(display, "creating node", e)),
        }
        let needs = self.needs(&parent, meta);
        self.apply_at_meta(&parent, name, meta, xattrs, needs, display)
    }

    /// Metadata for things we cannot open (symlinks, device nodes, fifos).
    fn apply_at_meta(
        &mut self,
        parent: &Dir,
        name: &[u8],
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        needs: Needs,
        display: &str,
    ) -> Result<(), UnpackError> {
        if self.privileged && needs.chown {
            rustix::fs::chownat(
                parent,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(display, "setting owner", e))?;
        }
        if needs.chmod {
            // Only for nodes we just created ourselves (never a symlink).
            rustix::fs::chmodat(parent, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(|e| io_err(display, "setting mode", e))?;
        }
        if !xattrs.is_empty() {
            self.set_xattrs(XattrTarget::At(parent.as_fd(), name), xattrs, display)?;
        }
        rustix::fs::utimensat(parent, name, &timestamps(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(display, "setting times", e))?;
        Ok(())
    }

    fn hardlink(
        &mut self,
        rel: &[u8],
        parent_rel: &[u8],
        name: &[u8],
        raw_target: &[u8],
        display: &str,
    ) -> Result<(), UnpackError> {
        let target_display = lossy(raw_target);
        let bad = |reason: &'static str| UnpackError::BadHardlink {
            path: display.to_string(),
            target: target_display.clone(),
            reason,
        };
        if raw_target.first() == Some(&b'/') {
            return Err(bad("is absolute"));
        }
        let target = match normalise(raw_target, self.opts.max_path_len) {
            Ok(t) => t,
            Err(PathIssue::DotDot) => return Err(bad("has a `..` component")),
            Err(PathIssue::Absolute) => return Err(bad("is absolute")),
            Err(PathIssue::TooLong) => return Err(bad("is too long")),
            Err(PathIssue::Nul) => return Err(bad("contains a NUL byte")),
        };
        if target.is_empty() {
            return Err(bad("names the layer root"));
        }
        if target == rel {
            // A link to itself: nothing to do.
            return Ok(());
        }
        let (target_parent_rel, target_name) = split_parent(&target);
        let target_parent = match self.dir_at(target_parent_rel, false, display) {
            Ok(fd) => fd,
            Err(UnpackError::SymlinkInPath { .. }) => return Err(bad("goes through a symlink")),
            Err(UnpackError::NotADirectory { .. }) => return Err(bad("is not in the layer")),
            Err(UnpackError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(bad("is not in the layer"));
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&target_parent, target_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(bad("is a directory"));
            }
            Ok(_) => {}
            Err(Errno::NOENT) => return Err(bad("is not in the layer")),
            Err(e) => return Err(io_err(display, "inspecting hardlink target", e)),
        }
        let parent = self.dir_at(parent_rel, true, display)?;
        // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never its target.
        let link =
            |parent: &Dir| rustix::fs::linkat(&target_parent, target_name, parent, name, AtFlags::empty());
        match link(&parent) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => {
                self.remove_existing(parent.as_fd(), parent_rel, name, display)?;
                link(&parent).map_err(|e| io_err(display, "creating hardlink", e))
            }
            Err(e) => Err(io_err(display, "creating hardlink", e)),
        }
    }

    fn whiteout(&mut self, parent_rel: &[u8], name: &[u8], display: &str) -> Result<(), UnpackError> {
        let parent = self.dir_at(parent_rel, true, display)?;
        if name == OPAQUE_WHITEOUT {
            let set = |xattr: &str| rustix::fs::fsetxattr(parent.as_fd(), xattr, b"y", XattrFlags::empty());
            match set("trusted.overlay.opaque") {
                Ok(()) => {}
                Err(Errno::PERM) | Err(Errno::ACCESS) if !self.privileged => {
                    set("user.overlay.opaque").map_err(|e| io_err(display, "marking directory opaque", e))?;
                    self.c.overlay_userxattr = true;
                }
                Err(e) => return Err(io_err(display, "marking directory opaque", e)),
            }
            self.c.opaque_dirs += 1;
            return Ok(());
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            // Other `.wh..wh.` names are aufs bookkeeping with no meaning here.
            return Ok(());
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        let bad = |reason| UnpackError::BadWhiteout {
            path: display.to_string(),
            reason,
        };
        match target {
            b"" => return Err(bad("no name after `.wh.`")),
            b"." | b".." => return Err(bad("`.` or `..` after `.wh.`")),
            _ => {}
        }
        let make = |parent: &Dir| {
            rustix::fs::mknodat(
                parent,
                target,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
        };
        match make(&parent) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                self.remove_existing(parent.as_fd(), parent_rel, target, display)?;
                make(&parent).map_err(|e| io_err(display, "creating whiteout", e))?;
            }
            Err(e) => return Err(io_err(display, "creating whiteout", e)),
        }
        self.c.whiteouts += 1;
        Ok(())
    }

    /// Opens (and with `create`, makes) the directory `rel` below the root without
    /// following symlinks.
    fn dir_at(&mut self, rel: &[u8], create: bool, display: &str) -> Result<Rc<Dir>, UnpackError> {
        if rel.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some(fd) = self.cache.get(rel) {
            return Ok(fd.clone());
        }
        let fd = match open_dir_beneath(self.root.as_fd(), rel) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => self.make_dirs(rel, display)?,
            Err(e) => return Err(resolve_error(self.root.as_fd(), display, rel, e)),
        };
        if self.cache.len() >= DIR_CACHE {
            self.cache.clear();
        }
        let fd = Rc::new(Dir::new(fd));
        self.cache.insert(rel.to_vec(), fd.clone());
        Ok(fd)
    }

    /// Creates missing parents one component at a time (mode 0755, like `tar`).
    fn make_dirs(&mut self, rel: &[u8], display: &str) -> Result<OwnedFd, UnpackError> {
        let mut cur: Option<OwnedFd> = None;
        let mut end = 0usize;
        for comp in rel.split(|b| *b == b'/') {
            end += comp.len();
            let prefix = &rel[..end];
            end += 1;
            let base = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let next = match open_dir_beneath(base, comp) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(base, comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_err(display, "creating parent directory", e)),
                    }
                    open_dir_beneath(base, comp)
                        .map_err(|e| resolve_error(self.root.as_fd(), display, prefix, e))?
                }
                Err(e) => return Err(resolve_error(self.root.as_fd(), display, prefix, e)),
            };
            cur = Some(next);
        }
        cur.ok_or_else(|| UnpackError::BadPath {
            path: display.to_string(),
            reason: "empty parent path",
        })
    }

    /// Applies directory metadata now that their contents are written: deepest first,
    /// so modes that deny writing or searching cannot get in the way.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        self.cache.clear();
        let mut dirs: Vec<(Vec<u8>, Meta)> = self.dirs.drain().collect();
        dirs.sort_by_key(|(p, _)| Reverse(p.iter().filter(|b| **b == b'/').count()));
        for (rel, meta) in dirs {
            let display = lossy(&rel);
            let fd = match open_dir_beneath(self.root.as_fd(), &rel) {
                Ok(fd) => fd,
                // Replaced by a later entry.
                Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => continue,
                Err(e) => return Err(io_err(&display, "opening directory", e)),
            };
            self.apply_fd_meta(fd.as_fd(), &meta, &[], Needs::ALL, &display)?;
        }
        if let Some(meta) = self.root_meta.take() {
            let root = self.root.clone();
            self.apply_fd_meta(root.as_fd(), &meta, &[], Needs::ALL, ".")?;
        }
        Ok(())
    }
}

/// An open directory of the layer, and what an entry created in it inherits.
struct Dir {
    fd: OwnedFd,
    /// The group new entries get from a setgid directory.
    setgid_gid: Option<u32>,
    /// A default ACL (not the umask) decides new entries' modes.
    default_acl: bool,
}

impl Dir {
    fn new(fd: OwnedFd) -> Dir {
        let (setgid_gid, mut default_acl) = match rustix::fs::fstat(&fd) {
            Ok(st) if st.st_mode & 0o2000 != 0 => (Some(st.st_gid), false),
            Ok(_) => (None, false),
            // Unknown: assume the worst, so chown and chmod always happen.
            Err(_) => (None, true),
        };
        let probe: &mut [u8] = &mut [];
        match rustix::fs::fgetxattr(&fd, "system.posix_acl_default", probe) {
            Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) => {}
            _ => default_acl = true,
        }
        Dir {
            fd,
            setgid_gid,
            default_acl,
        }
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The process umask, from `/proc/self/status` (reading it with `umask(2)` would
/// change it under other threads).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Which metadata calls a freshly created entry still needs.
#[derive(Clone, Copy)]
struct Needs {
    chown: bool,
    chmod: bool,
}

impl Needs {
    const ALL: Needs = Needs {
        chown: true,
        chmod: true,
    };
}

/// Where an entry goes: its parent directory (relative to the root), its name, and
/// how errors name it.
#[derive(Clone, Copy)]
struct Leaf<'p> {
    parent_rel: &'p [u8],
    name: &'p [u8],
    display: &'p str,
}

enum XattrTarget<'f> {
    Fd(BorrowedFd<'f>),
    At(BorrowedFd<'f>, &'f [u8]),
}

fn timestamps(meta: &Meta) -> Timestamps {
    Timestamps {
        last_access: meta.atime,
        last_modification: meta.mtime,
    }
}

/// Explains why `parent` could not be opened below `root`: names the first component
/// that is a symlink or not a directory. The walk stats one prefix at a time with
/// `AT_SYMLINK_NOFOLLOW` and stops at the first non-directory, so it never follows a
/// symlink either.
fn resolve_error(root: BorrowedFd<'_>, display: &str, parent: &[u8], e: Errno) -> UnpackError {
    let path = display.to_string();
    if matches!(e, Errno::LOOP | Errno::NOTDIR) {
        let mut end = 0usize;
        for comp in parent.split(|b| *b == b'/') {
            end += comp.len();
            let prefix = &parent[..end];
            end += 1;
            let Ok(st) = rustix::fs::statat(root, prefix, AtFlags::SYMLINK_NOFOLLOW) else {
                break;
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {}
                FileType::Symlink => {
                    return UnpackError::SymlinkInPath {
                        path,
                        parent: lossy(prefix),
                    };
                }
                _ => {
                    return UnpackError::NotADirectory {
                        path,
                        parent: lossy(prefix),
                    };
                }
            }
        }
    }
    let parent = lossy(parent);
    match e {
        Errno::LOOP => UnpackError::SymlinkInPath { path, parent },
        Errno::NOTDIR => UnpackError::NotADirectory { path, parent },
        Errno::XDEV => UnpackError::Escape { path },
        e => UnpackError::Io {
            path,
            op: "opening parent directory",
            source: e.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_compression() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(Compression::detect(b"etc/"), Compression::None);
        assert_eq!(Compression::detect(&[0x1f]), Compression::None);
        assert_eq!(Compression::detect(&[]), Compression::None);
    }

    #[test]
    fn normalises_paths() {
        let ok = |raw: &[u8]| normalise(raw, 4096).ok();
        assert_eq!(ok(b"./a/b/"), Some(b"a/b".to_vec()));
        assert_eq!(ok(b"a//./b"), Some(b"a/b".to_vec()));
        assert_eq!(ok(b"./"), Some(Vec::new()));
        assert_eq!(ok(b"."), Some(Vec::new()));
        assert!(matches!(normalise(b"/etc/x", 4096), Err(PathIssue::Absolute)));
        assert!(matches!(normalise(b"a/../../x", 4096), Err(PathIssue::DotDot)));
        assert!(matches!(normalise(b"..", 4096), Err(PathIssue::DotDot)));
        assert!(matches!(normalise(b"a/..", 4096), Err(PathIssue::DotDot)));
        assert!(matches!(normalise(b"a\0b", 4096), Err(PathIssue::Nul)));
        assert!(matches!(normalise(&[b'a'; 20], 10), Err(PathIssue::TooLong)));
        // `...` and `..x` are ordinary names.
        assert_eq!(ok(b".../..x"), Some(b".../..x".to_vec()));
    }

    #[test]
    fn dedup_key_covers_metadata() {
        let meta = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime: Timespec::default(),
            mtime: Timespec {
                tv_sec: 5,
                tv_nsec: 0,
            },
        };
        let base = dedup_key(b"c", &meta, &[]);
        assert_eq!(
            base,
            dedup_key(
                b"c",
                &Meta {
                    atime: meta.mtime,
                    ..meta
                },
                &[]
            )
        );
        assert_ne!(base, dedup_key(b"d", &meta, &[]));
        assert_ne!(base, dedup_key(b"c", &Meta { mode: 0o755, ..meta }, &[]));
        assert_ne!(base, dedup_key(b"c", &Meta { uid: 1, ..meta }, &[]));
        assert_ne!(base, dedup_key(b"c", &Meta { gid: 1, ..meta }, &[]));
        let later = Timespec {
            tv_sec: 5,
            tv_nsec: 1,
        };
        assert_ne!(base, dedup_key(b"c", &Meta { mtime: later, ..meta }, &[]));
        let x = vec![(b"user.a".to_vec(), b"1".to_vec())];
        assert_ne!(base, dedup_key(b"c", &meta, &x));
        let ab = vec![
            (b"user.a".to_vec(), b"1".to_vec()),
            (b"user.b".to_vec(), b"2".to_vec()),
        ];
        let ba = vec![ab[1].clone(), ab[0].clone()];
        assert_eq!(dedup_key(b"c", &meta, &ab), dedup_key(b"c", &meta, &ba));
    }
}
