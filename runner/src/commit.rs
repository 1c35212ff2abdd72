//! `runner commit`: a container's changes become a new image. The overlay's upper
//! directory is written as one more layer — an uncompressed tar, with overlayfs
//! whiteouts (0/0 character devices, `trusted.overlay.opaque` directories) turned into
//! OCI ones (`.wh.<name>`, `.wh..wh..opq`) — on top of the image's layers; the config
//! gets its diff ID, a history entry, and docker's `--change` instructions; the
//! manifest keeps the image's media types. All of it goes into the store through its
//! verified ingest, and `REF` is tagged.
//!
//! The upper directory belongs to the container, which may be hostile: it is walked by
//! descriptor only. Every directory is opened with `openat(parent, name, O_NOFOLLOW)`,
//! every entry is `fstat`ed after it is opened and must be the inode `statat` saw, and
//! nothing is ever resolved by path, so a directory swapped for a symlink to the host
//! between the readdir and the open is an error ("changed while committing"), never a
//! way to put the host's files into the image. A running container is committed only
//! frozen (`CommitOptions::pause`).

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use serde_json::Value;
use strata_store::{Digest, ImageRef, Store, StoreError};

use crate::container::{Container, ContainerError, Status};

/// Errors committing a container.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("invalid reference {0:?}: {1}")]
    Reference(String, String),
    #[error("the image {0} is no longer in the store")]
    NoImage(String),
    #[error("bad image metadata: {0}")]
    Metadata(String),
    #[error("container {0} is running: stop it, or pause it while committing (--pause)")]
    Running(String),
    #[error("invalid change {change:?}: {reason}")]
    Change { change: String, reason: String },
    #[error("{0} changed while committing")]
    Changed(String),
    #[error("{0}: a file whose name starts with .wh. would be a whiteout in the image")]
    WhiteoutName(String),
    #[error("{0}: directories nested deeper than {MAX_DEPTH} levels")]
    TooDeep(String),
    #[error("{0}: {1} cannot be committed")]
    Unsupported(String, &'static str),
    #[error("write the layer at {path}: {source}")]
    Layer {
        path: String,
        #[source]
        source: io::Error,
    },
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const MAX_METADATA: u64 = 4 << 20;
/// Deepest directory nesting in the upper directory (one descriptor is open per level).
const MAX_DEPTH: usize = 4096;

/// What `runner commit` may add, as docker's `commit` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOptions {
    /// The image's `author` (`-a`); the parent's when `None`.
    pub author: Option<String>,
    /// The history entry's `comment` (`-m`).
    pub message: Option<String>,
    /// Dockerfile instructions applied to the config (`-c`): `CMD`, `ENTRYPOINT`, `ENV`,
    /// `EXPOSE`, `LABEL`, `ONBUILD`, `STOPSIGNAL`, `USER`, `VOLUME`, `WORKDIR`.
    pub changes: Vec<String>,
    /// Freeze a running container while its upper directory is read (`-p`); without it
    /// a running container is refused.
    pub pause: bool,
}

/// What a commit made.
#[derive(Debug, Clone)]
pub struct CommitReport {
    pub manifest: Digest,
    pub image_id: Digest,
    pub layer: Digest,
    pub layer_size: u64,
    /// Entries left out of the layer (sockets, as docker leaves them out), as paths in
    /// the container.
    pub skipped: Vec<String>,
}

/// Commits container `c` (its directory `dir`) as `reference`. Nothing is stored when
/// the reference or a change is invalid, or the container is running and not paused.
pub fn commit(
    store: &Store,
    c: &Container,
    dir: &Path,
    reference: &str,
    opts: &CommitOptions,
) -> Result<CommitReport, CommitError> {
    let reference =
        ImageRef::parse(reference).map_err(|e| CommitError::Reference(reference.into(), e.to_string()))?;
    let report = commit_untagged(store, c, dir, opts, None, None)?;
    store.tag(&reference, &report.manifest)?;
    Ok(report)
}

/// [`commit`] without a tag: the image is stored (untagged); `created_by` replaces the
/// history entry's text (the container's command) and `created` the time (now) when
/// given (`runner build`'s `RUN`, `SOURCE_DATE_EPOCH`).
pub(crate) fn commit_untagged(
    store: &Store,
    c: &Container,
    dir: &Path,
    opts: &CommitOptions,
    created_by: Option<&str>,
    created: Option<&str>,
) -> Result<CommitReport, CommitError> {
    let image_id: Digest = c
        .image_id
        .parse()
        .map_err(|e| CommitError::Metadata(format!("image id: {e}")))?;
    let image = store
        .get_image(&image_id)?
        .ok_or_else(|| CommitError::NoImage(c.image_id.clone()))?;
    let parent_manifest = *image
        .manifests
        .first()
        .ok_or_else(|| CommitError::NoImage(c.image_id.clone()))?;
    let json = |d: &Digest| -> Result<Value, CommitError> {
        let bytes = store
            .blobs()
            .read_small(d, MAX_METADATA)
            .map_err(StoreError::from)?;
        serde_json::from_slice(&bytes).map_err(|e| CommitError::Metadata(format!("{d}: {e}")))
    };
    let mut manifest = json(&parent_manifest)?;
    let mut config = json(&image_id)?;
    if !config.is_object() || !manifest.is_object() {
        return Err(CommitError::Metadata(
            "config or manifest is not a JSON object".into(),
        ));
    }
    // Every change is checked (applied to the config) before anything is stored.
    apply_changes(&mut config, &opts.changes)?;

    let marker = dir.join(crate::cgroup::FROZEN_MARKER);
    crate::cgroup::thaw_orphaned(&c.id, &marker);
    let state = crate::container::read_state(dir)?;
    let running = state.status == Status::Running && state.pid.is_some_and(crate::sys::alive);
    let frozen = if running {
        if !opts.pause {
            return Err(CommitError::Running(c.id[..12].to_string()));
        }
        Some(crate::cgroup::freeze(&c.id, &marker)?)
    } else {
        None
    };

    // The layer: the upper directory as a tar, hashed as it is staged.
    let upper = dir.join("upper");
    let (reader, mut writer) = io::pipe().map_err(|source| CommitError::Layer {
        path: "/".into(),
        source,
    })?;
    let (staged, written) = std::thread::scope(|s| {
        let writing = s.spawn(move || {
            let r = write_layer(&upper, &mut writer);
            drop(writer);
            r
        });
        let staged = store.blobs().stage(reader, None);
        (
            staged,
            writing.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    });
    drop(frozen);
    let (skipped, mut staged) = match (written, staged) {
        (Ok(skipped), Ok(staged)) => (skipped, staged),
        // The store stopped reading: its error is the one to report.
        (Err(CommitError::Layer { source, .. }), Err(e)) if source.kind() == io::ErrorKind::BrokenPipe => {
            return Err(StoreError::from(e).into());
        }
        (Err(e), _) => return Err(e),
        (Ok(_), Err(e)) => return Err(StoreError::from(e).into()),
    };
    let layer = store
        .blobs()
        .commit_staged(&mut staged)
        .map_err(StoreError::from)?;
    store.record_blob(&layer.digest, layer.size)?;

    // The config: one more diff ID (the tar is uncompressed: its digest) and history, as
    // docker writes them (`created_by` is the container's command).
    let now = created.map_or_else(
        || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        str::to_string,
    );
    config["created"] = now.clone().into();
    if let Some(a) = &opts.author {
        config["author"] = a.clone().into();
    }
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| CommitError::Metadata("config without rootfs.diff_ids".into()))?
        .push(layer.digest.to_string().into());
    let created_by = created_by.map_or_else(|| c.command.join(" "), str::to_string);
    let mut entry = serde_json::json!({"created": now, "created_by": created_by});
    if let Some(a) = config["author"].as_str().filter(|a| !a.is_empty()) {
        entry["author"] = a.into();
    }
    if let Some(m) = opts.message.as_deref().filter(|m| !m.is_empty()) {
        entry["comment"] = m.into();
    }
    match config["history"].as_array_mut() {
        Some(h) => h.push(entry),
        None => config["history"] = serde_json::json!([entry]),
    }
    let config_bytes = serde_json::to_vec(&config).map_err(|e| CommitError::Metadata(e.to_string()))?;
    let config_blob = store.blobs().put_bytes(&config_bytes).map_err(StoreError::from)?;
    store.record_blob(&config_blob.digest, config_blob.size)?;

    // The manifest, in the image's own family (OCI or Docker schema 2).
    let media_type = manifest["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string();
    let layer_type = if media_type.contains("docker") {
        DOCKER_LAYER
    } else {
        OCI_LAYER
    };
    manifest["config"]["digest"] = config_blob.digest.to_string().into();
    manifest["config"]["size"] = config_blob.size.into();
    manifest["layers"]
        .as_array_mut()
        .ok_or_else(|| CommitError::Metadata("manifest without layers".into()))?
        .push(serde_json::json!({
            "mediaType": layer_type,
            "digest": layer.digest.to_string(),
            "size": layer.size,
        }));
    if let Some(m) = manifest.as_object_mut() {
        m.remove("annotations");
    }
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| CommitError::Metadata(e.to_string()))?;
    let (manifest_digest, _) = store.add_manifest(&manifest_bytes, Some(&media_type), None)?;
    Ok(CommitReport {
        manifest: manifest_digest,
        image_id: config_blob.digest,
        layer: layer.digest,
        layer_size: layer.size,
        skipped,
    })
}

// ---------------------------------------------------------------------------------------
// The layer

/// Writes `upper` as an OCI layer tar: entries in name order, ownership, modes and mtimes
/// as they are, hard links as links, devices and FIFOs as such, overlayfs whiteouts as
/// OCI whiteouts, `security.capability` and `user.*` extended attributes of files and
/// directories as PAX `SCHILY.xattr.*` records. Walks by descriptor only (see the module
/// documentation). Returns the sockets left out.
fn write_layer<W: Write>(upper: &Path, out: W) -> Result<Vec<String>, CommitError> {
    raise_open_files_limit();
    let root = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| CommitError::Layer {
        path: "/".into(),
        source: e.into(),
    })?;
    let mut w = LayerWriter {
        tar: tar::Builder::new(out),
        links: HashMap::new(),
        skipped: Vec::new(),
    };
    /// A directory being written: its descriptor, path, and the names not yet written.
    struct Level {
        dir: OwnedFd,
        rel: PathBuf,
        names: std::vec::IntoIter<CString>,
    }
    let names = read_names(&root, Path::new(""))?;
    let mut stack = vec![Level {
        dir: root,
        rel: PathBuf::new(),
        names: names.into_iter(),
    }];
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.names.next() else {
            stack.pop();
            continue;
        };
        let rel = level.rel.join(OsStr::from_bytes(name.to_bytes()));
        if let Some(sub) = w.entry(level.dir.as_fd(), &name, &rel)? {
            // `stack.len()` is the new directory's nesting level.
            if stack.len() > MAX_DEPTH {
                return Err(CommitError::TooDeep(shown(&rel)));
            }
            let names = read_names(&sub, &rel)?;
            stack.push(Level {
                dir: sub,
                rel,
                names: names.into_iter(),
            });
        }
    }
    w.tar
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|source| CommitError::Layer {
            path: "/".into(),
            source,
        })?;
    Ok(w.skipped)
}

/// One descriptor is open per directory level: make room for `MAX_DEPTH` of them when
/// the hard limit allows (as Go programs do at start-up).
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let want = MAX_DEPTH as u64 + 256;
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(current) = limit.current.filter(|c| *c < want) {
        let raised = limit.maximum.map_or(want, |m| m.min(want));
        if raised > current {
            limit.current = Some(raised);
            let _ = setrlimit(Resource::Nofile, limit);
        }
    }
}

/// A path in the container, for messages.
fn shown(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// The names in directory `dir`, sorted (bytewise, as the tar's order).
fn read_names(dir: &OwnedFd, rel: &Path) -> Result<Vec<CString>, CommitError> {
    let err = |e: Errno| CommitError::Layer {
        path: shown(rel),
        source: e.into(),
    };
    let mut d = Dir::read_from(dir).map_err(err)?;
    let mut names = Vec::new();
    while let Some(e) = d.read() {
        let name = e.map_err(err)?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// An error opening or reading an entry: one that shows the entry is no longer what it
/// was (gone, or turned into a symlink or another type) is `Changed`.
fn entry_error(rel: &Path, e: Errno) -> CommitError {
    match e {
        Errno::NOENT | Errno::LOOP | Errno::NOTDIR => CommitError::Changed(shown(rel)),
        e => CommitError::Layer {
            path: shown(rel),
            source: e.into(),
        },
    }
}

/// The marker of a file that is not the size its header says (inside an `io::Error`).
#[derive(Debug)]
struct SizeChanged;

impl std::fmt::Display for SizeChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("file size changed")
    }
}

impl std::error::Error for SizeChanged {}

/// An error appending to the tar.
fn append_error(rel: &Path, e: io::Error) -> CommitError {
    if e.get_ref().is_some_and(|inner| inner.is::<SizeChanged>()) {
        CommitError::Changed(shown(rel))
    } else {
        CommitError::Layer {
            path: shown(rel),
            source: e,
        }
    }
}

/// Same inode, same type: what `statat` saw is what was opened.
fn same(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev
        && a.st_ino == b.st_ino
        && FileType::from_raw_mode(a.st_mode) == FileType::from_raw_mode(b.st_mode)
}

/// Files the runner binds into every container (see `network::etc_files`).
const RUNTIME_FILES: [&str; 3] = ["etc/hosts", "etc/hostname", "etc/resolv.conf"];

struct LayerWriter<W: Write> {
    tar: tar::Builder<W>,
    /// Regular files with more than one link, by device and inode: the first path.
    links: HashMap<(u64, u64), PathBuf>,
    skipped: Vec<String>,
}

impl<W: Write> LayerWriter<W> {
    /// Writes entry `name` of directory `dir` (at `rel` in the layer). Returns the
    /// descriptor of a directory to descend into.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
    ) -> Result<Option<OwnedFd>, CommitError> {
        if name.to_bytes().starts_with(b".wh.") {
            return Err(CommitError::WhiteoutName(shown(rel)));
        }
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| entry_error(rel, e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::CharacterDevice if st.st_rdev == 0 => {
                // An overlayfs whiteout: the lower file is deleted.
                let mut wh = OsString::from(".wh.");
                wh.push(OsStr::from_bytes(name.to_bytes()));
                self.append_marker(&rel.with_file_name(wh), &st)?;
            }
            FileType::Socket => self.skipped.push(shown(rel)),
            // The mount points of the container's own hosts, hostname and resolv.conf
            // (made when the image has none): what is bound there is not the image's,
            // as docker leaves them out of a commit.
            FileType::RegularFile if st.st_size == 0 && RUNTIME_FILES.iter().any(|f| rel == Path::new(f)) => {
            }
            FileType::RegularFile => self.file(dir, name, rel, &st)?,
            FileType::Directory => return self.directory(dir, name, rel, &st).map(Some),
            FileType::Symlink => {
                let (fd, st) = pin(dir, name, OFlags::PATH, &st, rel)?;
                // An empty path: the symlink the O_PATH descriptor is.
                let target = rustix::fs::readlinkat(&fd, c"", Vec::new()).map_err(|e| entry_error(rel, e))?;
                let mut h = header(&st, tar::EntryType::Symlink, 0);
                self.tar
                    .append_link(&mut h, rel, OsStr::from_bytes(target.as_bytes()))
                    .map_err(|e| append_error(rel, e))?;
            }
            kind @ (FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo) => {
                // Pinned but never opened for reading: opening a device runs its driver.
                let (_, st) = pin(dir, name, OFlags::PATH, &st, rel)?;
                let entry_type = match kind {
                    FileType::CharacterDevice => tar::EntryType::Char,
                    FileType::BlockDevice => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                };
                let mut h = header(&st, entry_type, 0);
                h.set_device_major(rustix::fs::major(st.st_rdev))
                    .and_then(|()| h.set_device_minor(rustix::fs::minor(st.st_rdev)))
                    .map_err(|e| append_error(rel, e))?;
                self.tar
                    .append_data(&mut h, rel, io::empty())
                    .map_err(|e| append_error(rel, e))?;
            }
            FileType::Unknown => return Err(CommitError::Unsupported(shown(rel), "a file of unknown type")),
        }
        Ok(None)
    }

    fn directory(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        rel: &Path,
        st: &Stat,
    ) -> Result<OwnedFd, CommitError> {
        let (fd, st) = pin(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, st, rel)?;
        let (xattrs, opaque) = xattrs(fd.as_fd(), rel)?;
        self.pax(&xattrs, rel)?;
        let mut h = header(&st, tar::EntryType::Directory, 0);
        self.tar
            .append_data(&mut h, rel, io::empty())
            .map_err(|e| append_error(rel, e))?;
        if opaque {
            // Everything below in lower layers is hidden.
            self.append_marker(&rel.join(".wh..wh..opq"), &st)?;
        }
        Ok(fd)
    }

    fn file(&mut self, dir: BorrowedFd<'_>, name: &CStr, rel: &Path, st: &Stat) -> Result<(), CommitError> {
        // Pinned with O_PATH first, and opened for reading only once it is known to be a
        // regular file: a name swapped for a device node is never opened.
        let (pinned, st) = pin(dir, name, OFlags::PATH, st, rel)?;
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&key) {
                let mut h = header(&st, tar::EntryType::Link, 0);
                self.tar
                    .append_link(&mut h, rel, first)
                    .map_err(|e| append_error(rel, e))?;
                return Ok(());
            }
            self.links.insert(key, rel.to_path_buf());
        }
        // The magic link reopens the very inode pinned, whatever its name is now (so an
        // error here is not the container's doing: no /proc, say).
        let proc_fd = format!("/proc/self/fd/{}", pinned.as_raw_fd());
        let file = rustix::fs::open(
            proc_fd.as_str(),
            OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| CommitError::Layer {
            path: shown(rel),
            source: io::Error::other(format!("reopen {proc_fd}: {e}")),
        })?;
        let opened = rustix::fs::fstat(&file).map_err(|e| entry_error(rel, e))?;
        if !same(&st, &opened) {
            return Err(CommitError::Changed(shown(rel)));
        }
        let (xattrs, _) = xattrs(file.as_fd(), rel)?;
        self.pax(&xattrs, rel)?;
        let size = u64::try_from(opened.st_size).unwrap_or(0);
        let mut h = header(&opened, tar::EntryType::Regular, size);
        let data = Exact {
            file: std::fs::File::from(file),
            left: size,
        };
        self.tar
            .append_data(&mut h, rel, data)
            .map_err(|e| append_error(rel, e))
    }

    /// An empty regular file entry (a whiteout marker), timed like `st`.
    fn append_marker(&mut self, path: &Path, st: &Stat) -> Result<(), CommitError> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
        self.tar
            .append_data(&mut h, path, io::empty())
            .map_err(|e| append_error(path, e))
    }

    /// A PAX extended header with `records` for the next entry (none when empty).
    fn pax(&mut self, records: &[(Vec<u8>, Vec<u8>)], rel: &Path) -> Result<(), CommitError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (key, value) in records {
            // "<length> <key>=<value>\n", the length counting its own digits.
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while rest + len.to_string().len() != len {
                len = rest + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} ").as_bytes());
            data.extend_from_slice(key);
            data.push(b'=');
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_path("././@PaxHeader").map_err(|e| append_error(rel, e))?;
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        self.tar
            .append(&h, data.as_slice())
            .map_err(|e| append_error(rel, e))
    }
}

/// Opens `name` in `dir` (never following a symlink) with `flags`, and checks that it is
/// the inode `st` describes; returns it with its current metadata.
fn pin(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: OFlags,
    st: &Stat,
    rel: &Path,
) -> Result<(OwnedFd, Stat), CommitError> {
    let fd = rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| entry_error(rel, e))?;
    let now = rustix::fs::fstat(&fd).map_err(|e| entry_error(rel, e))?;
    if !same(st, &now) {
        return Err(CommitError::Changed(shown(rel)));
    }
    Ok((fd, now))
}

/// A tar header for `st`: type, permission bits, owner, mtime and size. No access or
/// change times (docker's layers have none either).
fn header(st: &Stat, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(size);
    h
}

/// A regular file's content, exactly as long as its header says: shorter or longer
/// means it changed after it was measured.
struct Exact {
    file: std::fs::File,
    left: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            return match self.file.read(&mut [0u8; 1])? {
                0 => Ok(0),
                _ => Err(io::Error::other(SizeChanged)),
            };
        }
        let max = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::other(SizeChanged));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// PAX records: keys and values, bytes.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// The extended attributes of a file or directory that go into the layer, as PAX
/// records (`security.capability` and `user.*`, never overlayfs' own), and whether it
/// is an opaque directory. Devices, FIFOs and symlinks carry none (the kernel allows no
/// `user.*` there, and a capability means nothing on them).
fn xattrs(fd: BorrowedFd<'_>, rel: &Path) -> Result<(PaxRecords, bool), CommitError> {
    let err = |e: Errno| CommitError::Layer {
        path: shown(rel),
        source: e.into(),
    };
    let names = list_xattrs(fd).map_err(err)?;
    let mut records = Vec::new();
    let mut opaque = false;
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        match name {
            b"trusted.overlay.opaque" => opaque = get_xattr(fd, name).map_err(err)?.as_deref() == Some(b"y"),
            b"trusted.overlay.redirect" => {
                return Err(CommitError::Unsupported(
                    shown(rel),
                    "an overlayfs redirected directory",
                ));
            }
            b"trusted.overlay.metacopy" => {
                return Err(CommitError::Unsupported(
                    shown(rel),
                    "an overlayfs metadata-only copy",
                ));
            }
            n if n.starts_with(b"trusted.overlay.") || n.starts_with(b"user.overlay.") => {}
            n if n == b"security.capability" || n.starts_with(b"user.") => {
                if let Some(value) = get_xattr(fd, n).map_err(err)? {
                    records.push(([b"SCHILY.xattr.", n].concat(), value));
                }
            }
            _ => {}
        }
    }
    records.sort();
    Ok((records, opaque))
}

/// `flistxattr`: NUL-separated names (none where the file system has no xattrs).
fn list_xattrs(fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    for _ in 0..8 {
        let n = match rustix::fs::flistxattr_query(fd) {
            Ok(0) | Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; n];
        match rustix::fs::flistxattr(fd, &mut buf[..]) {
            Ok(got) => {
                buf.truncate(got);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

/// `fgetxattr`: `None` when the attribute is gone.
fn get_xattr(fd: BorrowedFd<'_>, name: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
    let name = CString::new(name).map_err(|_| Errno::INVAL)?;
    for _ in 0..8 {
        let n = match rustix::fs::fgetxattr_query(fd, &name) {
            Ok(n) => n,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; n];
        match rustix::fs::fgetxattr(fd, &name, &mut buf[..]) {
            Ok(got) => {
                buf.truncate(got);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::RANGE)
}

// ---------------------------------------------------------------------------------------
// docker's --change

/// The instructions `--change` takes, as docker's commit does (without HEALTHCHECK).
const CHANGE_INSTRUCTIONS: &str =
    "CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR";

/// Applies Dockerfile instructions to the image config's `config` object, in order, as
/// `docker commit --change` does. Each change is one or more Dockerfile lines.
fn apply_changes(config: &mut Value, changes: &[String]) -> Result<(), CommitError> {
    if changes.is_empty() {
        return Ok(());
    }
    if !config["config"].is_object() {
        config["config"] = Value::Object(Default::default());
    }
    let Value::Object(c) = &mut config["config"] else {
        unreachable!("set above");
    };
    let mut cmd_set = false;
    for line in instruction_lines(changes) {
        apply_change(c, &line, &mut cmd_set).map_err(|reason| CommitError::Change {
            change: line.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// The changes as Dockerfile lines: joined by newlines (as docker does), without blank
/// and comment lines, backslash continuations joined.
fn instruction_lines(changes: &[String]) -> Vec<String> {
    let text = changes.join("\n");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

type Config = serde_json::Map<String, Value>;

fn apply_change(c: &mut Config, line: &str, cmd_set: &mut bool) -> Result<(), String> {
    let line = line.trim();
    let (keyword, rest) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(k, r)| (k, r.trim()));
    let keyword = keyword.to_ascii_uppercase();
    let env = env_of(c);
    let needs_argument = || format!("{keyword} requires at least one argument");
    match keyword.as_str() {
        "CMD" | "ENTRYPOINT" => {
            if rest.is_empty() {
                return Err(needs_argument());
            }
            let args = match exec_form(rest) {
                Some(args) => args,
                None => {
                    let mut shell = string_array(c.get("Shell"))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
                    shell.push(rest.to_string());
                    shell
                }
            };
            if keyword == "CMD" {
                c.insert("Cmd".into(), args.into());
                *cmd_set = true;
            } else {
                c.insert("Entrypoint".into(), args.into());
                // A new entrypoint drops the old command, unless a CMD came with it.
                if !*cmd_set {
                    c.remove("Cmd");
                }
            }
        }
        "ENV" => {
            let pairs = name_values(&keyword, rest, &env)?;
            let mut list = string_array(c.get("Env")).unwrap_or_default();
            for (k, v) in pairs {
                let var = format!("{k}={v}");
                match list
                    .iter_mut()
                    .find(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == k)
                {
                    Some(e) => *e = var,
                    None => list.push(var),
                }
            }
            c.insert("Env".into(), list.into());
        }
        "LABEL" => {
            let pairs = name_values(&keyword, rest, &env)?;
            let labels = object_field(c, "Labels");
            for (k, v) in pairs {
                labels.insert(k, v.into());
            }
        }
        "EXPOSE" => {
            let mut ports = Vec::new();
            for word in split_words(rest)? {
                for spec in expand(&word, &env)?.split_whitespace() {
                    ports.extend(port_spec(spec)?);
                }
            }
            if ports.is_empty() {
                return Err(needs_argument());
            }
            let exposed = object_field(c, "ExposedPorts");
            for p in ports {
                exposed.insert(p, Value::Object(Default::default()));
            }
        }
        "USER" => {
            let user = expand(rest, &env)?;
            if user.is_empty() {
                return Err(needs_argument());
            }
            c.insert("User".into(), user.into());
        }
        "WORKDIR" => {
            let dir = expand(rest, &env)?;
            if dir.is_empty() {
                return Err(needs_argument());
            }
            let current = c.get("WorkingDir").and_then(Value::as_str).unwrap_or("");
            let joined = if dir.starts_with('/') {
                dir
            } else {
                format!("/{current}/{dir}")
            };
            c.insert("WorkingDir".into(), clean_path(&joined).into());
        }
        "VOLUME" => {
            let volumes = match exec_form(rest) {
                Some(list) => list,
                None => split_words(rest)?
                    .iter()
                    .map(|w| expand(w, &env))
                    .collect::<Result<_, _>>()?,
            };
            if volumes.is_empty() {
                return Err(needs_argument());
            }
            if volumes.iter().any(|v| v.trim().is_empty()) {
                return Err("VOLUME specified can not be an empty string".into());
            }
            let map = object_field(c, "Volumes");
            for v in volumes {
                map.insert(v, Value::Object(Default::default()));
            }
        }
        "STOPSIGNAL" => {
            let signal = expand(rest, &env)?;
            if !valid_signal(&signal) {
                return Err(format!("invalid signal {signal:?}"));
            }
            c.insert("StopSignal".into(), signal.into());
        }
        "ONBUILD" => {
            let trigger = rest.split_whitespace().next().ok_or_else(needs_argument)?;
            match trigger.to_ascii_uppercase().as_str() {
                "ONBUILD" => return Err("chaining ONBUILD via ONBUILD ONBUILD isn't allowed".into()),
                t @ ("FROM" | "MAINTAINER") => {
                    return Err(format!("{t} isn't allowed as an ONBUILD trigger"));
                }
                _ => {}
            }
            let list = c.entry("OnBuild").or_insert_with(|| Value::Array(Vec::new()));
            if !list.is_array() {
                *list = Value::Array(Vec::new());
            }
            if let Value::Array(list) = list {
                list.push(rest.into());
            }
        }
        _ => {
            return Err(format!(
                "{keyword} is not a valid change instruction (valid: {CHANGE_INSTRUCTIONS})"
            ));
        }
    }
    Ok(())
}

/// The config's environment (`Env`), for `$VAR` substitution.
fn env_of(c: &Config) -> Vec<String> {
    string_array(c.get("Env")).unwrap_or_default()
}

fn string_array(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// The object `c[key]`, created (or replacing a non-object) when needed.
fn object_field<'a>(c: &'a mut Config, key: &str) -> &'a mut Config {
    let v = c.entry(key).or_insert_with(|| Value::Object(Default::default()));
    if !v.is_object() {
        *v = Value::Object(Default::default());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

/// The JSON (exec) form `["a", "b"]`, if `rest` is one.
fn exec_form(rest: &str) -> Option<Vec<String>> {
    if !rest.starts_with('[') {
        return None;
    }
    serde_json::from_str(rest).ok()
}

/// `name=value …` pairs (or the legacy `name value` form), quotes removed and
/// variables substituted (all from the environment before this instruction).
fn name_values(keyword: &str, rest: &str, env: &[String]) -> Result<Vec<(String, String)>, String> {
    let words = split_words(rest)?;
    let Some(first) = words.first() else {
        return Err(format!("{keyword} requires at least one argument"));
    };
    let raw: Vec<(String, String)> = if !first.contains('=') {
        let (name, value) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{keyword} must have two arguments"))?;
        vec![(name.to_string(), value.trim_start().to_string())]
    } else {
        words
            .iter()
            .map(|w| {
                w.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| format!("can't find = in {w:?}: must be of the form name=value"))
            })
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for (k, v) in raw {
        let k = expand(&k, env)?;
        if k.is_empty() {
            return Err(format!("{keyword} names can not be blank"));
        }
        out.push((k, expand(&v, env)?));
    }
    Ok(out)
}

/// Splits on unquoted whitespace, keeping quotes and escapes in the words (the
/// Dockerfile parser's first pass).
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        match quote {
            None if ch.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            None if ch == '"' || ch == '\'' => quote = Some(ch),
            Some(q) if ch == q => quote = None,
            _ if ch == '\\' && quote != Some('\'') => {
                word.push(ch);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                continue;
            }
            _ => {}
        }
        word.push(ch);
    }
    if let Some(q) = quote {
        return Err(format!("unterminated {q} quote"));
    }
    if !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

/// The Dockerfile word processing: quotes removed, backslash escapes, `$NAME`,
/// `${NAME}`, `${NAME:-word}` and `${NAME:+word}` substituted from `env`.
fn expand(word: &str, env: &[String]) -> Result<String, String> {
    let lookup = |name: &str| -> Option<&str> {
        env.iter()
            .rev()
            .find_map(|e| e.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
    };
    let mut out = String::new();
    let mut chars = word.chars().peekable();
    let mut in_double = false;
    while let Some(ch) = chars.next() {
        match ch {
            '\'' if !in_double => loop {
                match chars.next() {
                    Some('\'') => break,
                    Some(c) => out.push(c),
                    None => return Err("unterminated ' quote".into()),
                }
            },
            '"' => in_double = !in_double,
            '\\' => match chars.next() {
                Some(c) if !in_double || matches!(c, '"' | '\\' | '$') => out.push(c),
                Some(c) => {
                    out.push('\\');
                    out.push(c);
                }
                None => out.push('\\'),
            },
            '$' => match chars.peek() {
                Some('{') => {
                    chars.next();
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => inner.push(c),
                            None => return Err("missing } in a ${...} substitution".into()),
                        }
                    }
                    let (name, modifier) =
                        match inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                            Some(i) => (&inner[..i], Some(&inner[i..])),
                            None => (inner.as_str(), None),
                        };
                    if name.is_empty() {
                        return Err(format!("bad substitution ${{{inner}}}"));
                    }
                    let value = lookup(name).filter(|v| !v.is_empty());
                    match modifier.map(|m| (m, m.strip_prefix(":-"), m.strip_prefix(":+"))) {
                        None => out.push_str(lookup(name).unwrap_or("")),
                        Some((_, Some(default), _)) => out.push_str(value.unwrap_or(default)),
                        Some((_, _, Some(alternative))) => {
                            if value.is_some() {
                                out.push_str(alternative);
                            }
                        }
                        Some((m, ..)) => {
                            return Err(format!("unsupported substitution modifier {m:?} in ${{{inner}}}"));
                        }
                    }
                }
                Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                    let mut name = String::new();
                    while let Some(c) = chars.peek().filter(|c| c.is_ascii_alphanumeric() || **c == '_') {
                        name.push(*c);
                        chars.next();
                    }
                    out.push_str(lookup(&name).unwrap_or(""));
                }
                _ => out.push('$'),
            },
            c => out.push(c),
        }
    }
    if in_double {
        return Err("unterminated \" quote".into());
    }
    Ok(out)
}

/// `EXPOSE` ports: `80`, `80/udp`, `8000-8010/tcp` → `"80/tcp"`… (a range is every port).
pub(crate) fn port_spec(spec: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "invalid protocol {proto:?} in {spec:?} (tcp, udp or sctp)"
        ));
    }
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {p:?} in {spec:?}"))
    };
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(ports)?, port(ports)?),
    };
    if first > last {
        return Err(format!("invalid port range {ports:?}"));
    }
    Ok((first..=last).map(|p| format!("{p}/{proto}")).collect())
}

/// A signal as docker's `STOPSIGNAL` takes it: a number, or a name with or without
/// `SIG` (`SIGRTMIN+3` too).
fn valid_signal(s: &str) -> bool {
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
        "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
        "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&name) {
        return true;
    }
    let offset = |rest: &str| rest.parse::<u32>().is_ok_and(|n| (1..=15).contains(&n));
    name.strip_prefix("RTMIN+").is_some_and(offset) || name.strip_prefix("RTMAX-").is_some_and(offset)
}

/// A lexically cleaned absolute path (`.`, `..` and repeated slashes resolved).
pub(crate) fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rustix::fs::{RenameFlags, XattrFlags};

    /// Root, or a SKIP line (an error in CI).
    fn root() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert!(!strata_fixtures::peers::ci(), "commit tests need root in CI");
        eprintln!("SKIP: needs root");
        false
    }

    fn layer(upper: &Path) -> Result<(Vec<u8>, Vec<String>), CommitError> {
        let mut out = Vec::new();
        let skipped = write_layer(upper, &mut out)?;
        Ok((out, skipped))
    }

    /// A tar entry, read back.
    #[derive(Debug)]
    struct Got {
        path: String,
        kind: tar::EntryType,
        link: Option<String>,
        device: (u32, u32),
        mode: u32,
        data: Vec<u8>,
        xattrs: Vec<(String, Vec<u8>)>,
    }

    fn entries(tar_bytes: &[u8]) -> Vec<Got> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut out = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut xattrs = Vec::new();
            if let Some(pax) = e.pax_extensions().unwrap() {
                for r in pax {
                    let r = r.unwrap();
                    xattrs.push((r.key().unwrap().to_string(), r.value_bytes().to_vec()));
                }
            }
            let h = e.header().clone();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            out.push(Got {
                path: e.path().unwrap().to_string_lossy().into_owned(),
                kind: h.entry_type(),
                link: e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
                device: match h.entry_type() {
                    tar::EntryType::Char | tar::EntryType::Block => (
                        h.device_major().unwrap().unwrap(),
                        h.device_minor().unwrap().unwrap(),
                    ),
                    _ => (0, 0),
                },
                mode: h.mode().unwrap(),
                data,
                xattrs,
            });
        }
        out
    }

    fn find<'a>(entries: &'a [Got], path: &str) -> &'a Got {
        entries
            .iter()
            .find(|e| e.path.trim_end_matches('/') == path)
            .unwrap_or_else(|| panic!("no {path} in {entries:#?}"))
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_never_puts_host_files_in_the_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        let upper = tmp.path().join("upper");
        std::fs::create_dir_all(&host).unwrap();
        const MARKER: &[u8] = b"host-secret-7f3a9c";
        std::fs::write(host.join("SECRET"), MARKER).unwrap();
        std::fs::create_dir_all(upper.join("data/sub")).unwrap();
        std::fs::write(upper.join("data/inner.txt"), "inner").unwrap();
        std::fs::write(upper.join("data/sub/deep.txt"), "deep").unwrap();
        std::fs::write(upper.join("file.txt"), "visible").unwrap();
        std::os::unix::fs::symlink(&host, upper.join("data-swap")).unwrap();
        std::os::unix::fs::symlink(&host, upper.join("data/sub-swap")).unwrap();
        std::os::unix::fs::symlink(host.join("SECRET"), upper.join("file-swap")).unwrap();

        /// Stops the racing thread when the walks end, even by a failed assertion.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = AtomicBool::new(false);
        let (mut ok, mut changed) = (0, 0);
        std::thread::scope(|s| {
            let _stop = Stop(&stop);
            s.spawn(|| {
                let dir =
                    rustix::fs::open(&upper, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
                let data =
                    rustix::fs::openat(&dir, "data", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                        .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    for (d, a, b) in [
                        (&dir, "data", "data-swap"),
                        (&data, "sub", "sub-swap"),
                        (&dir, "file.txt", "file-swap"),
                    ] {
                        rustix::fs::renameat_with(d, a, d, b, RenameFlags::EXCHANGE).unwrap();
                    }
                }
            });
            for _ in 0..200 {
                match layer(&upper) {
                    Ok((tar_bytes, _)) => {
                        assert!(
                            !tar_bytes.windows(MARKER.len()).any(|w| w == MARKER),
                            "the host file's content is in the layer"
                        );
                        for e in entries(&tar_bytes) {
                            assert!(!e.path.ends_with("SECRET"), "a host file is in the layer: {e:?}");
                        }
                        ok += 1;
                    }
                    Err(e) => {
                        assert!(e.to_string().contains("changed while committing"), "{e}");
                        changed += 1;
                    }
                }
            }
        });
        eprintln!("{ok} walks completed, {changed} saw an entry change");
    }

    #[test]
    fn names_that_would_be_whiteouts_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("etc")).unwrap();
        std::fs::write(tmp.path().join("etc/.wh.passwd"), "x").unwrap();
        let err = layer(tmp.path()).unwrap_err();
        assert!(
            matches!(err, CommitError::WhiteoutName(ref p) if p == "/etc/.wh.passwd"),
            "{err}"
        );
        assert!(err.to_string().contains("would be a whiteout"), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join(".wh..wh..opq")).unwrap();
        assert!(matches!(layer(tmp.path()), Err(CommitError::WhiteoutName(_))));
    }

    #[test]
    fn sockets_are_skipped_and_reported_and_fifos_kept() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("run")).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(tmp.path().join("run/app.sock")).unwrap();
        let dir = rustix::fs::open(tmp.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        rustix::fs::mknodat(&dir, "pipe", FileType::Fifo, Mode::from_raw_mode(0o640), 0).unwrap();
        let (tar_bytes, skipped) = layer(tmp.path()).unwrap();
        assert_eq!(skipped, ["/run/app.sock"]);
        let entries = entries(&tar_bytes);
        assert!(
            !entries.iter().any(|e| e.path.contains("app.sock")),
            "{entries:#?}"
        );
        let fifo = find(&entries, "pipe");
        assert_eq!(fifo.kind, tar::EntryType::Fifo);
        assert_eq!(fifo.mode, 0o640);
    }

    #[test]
    fn devices_are_devices_and_only_0_0_is_a_whiteout() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = rustix::fs::open(tmp.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let mode = Mode::from_raw_mode(0o666);
        rustix::fs::mknodat(
            &dir,
            "null",
            FileType::CharacterDevice,
            mode,
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        rustix::fs::mknodat(
            &dir,
            "loop9",
            FileType::BlockDevice,
            mode,
            rustix::fs::makedev(7, 9),
        )
        .unwrap();
        rustix::fs::mknodat(&dir, "gone", FileType::CharacterDevice, mode, 0).unwrap();
        let (tar_bytes, _) = layer(tmp.path()).unwrap();
        let entries = entries(&tar_bytes);
        let null = find(&entries, "null");
        assert_eq!((null.kind, null.device), (tar::EntryType::Char, (1, 3)));
        let loop9 = find(&entries, "loop9");
        assert_eq!((loop9.kind, loop9.device), (tar::EntryType::Block, (7, 9)));
        let wh = find(&entries, ".wh.gone");
        assert_eq!(wh.kind, tar::EntryType::Regular);
        assert!(!entries.iter().any(|e| e.path == "gone"), "{entries:#?}");
    }

    #[test]
    fn capabilities_and_user_xattrs_are_kept_and_overlay_ones_are_not() {
        if !root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("ping");
        std::fs::write(&file, "#!/bin/true\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4755)).unwrap();
        // VFS_CAP_REVISION_2 with the effective bit; permitted CAP_NET_RAW (13).
        let mut cap = Vec::new();
        for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
            cap.extend_from_slice(&word.to_le_bytes());
        }
        rustix::fs::setxattr(&file, "security.capability", &cap[..], XattrFlags::empty()).unwrap();
        rustix::fs::setxattr(&file, "user.note", &b"hello"[..], XattrFlags::empty()).unwrap();
        rustix::fs::setxattr(&file, "user.overlay.origin", &b"x"[..], XattrFlags::empty()).unwrap();
        rustix::fs::setxattr(&file, "trusted.other", &b"t"[..], XattrFlags::empty()).unwrap();
        let opaque = tmp.path().join("opaque");
        std::fs::create_dir(&opaque).unwrap();
        std::fs::write(opaque.join("only.txt"), "only").unwrap();
        rustix::fs::setxattr(&opaque, "trusted.overlay.opaque", &b"y"[..], XattrFlags::empty()).unwrap();
        rustix::fs::setxattr(&opaque, "user.dir", &b"d"[..], XattrFlags::empty()).unwrap();
        let (tar_bytes, _) = layer(tmp.path()).unwrap();
        let entries = entries(&tar_bytes);
        let ping = find(&entries, "ping");
        assert_eq!(ping.mode, 0o4755);
        assert_eq!(ping.data, b"#!/bin/true\n");
        assert_eq!(
            ping.xattrs,
            [
                ("SCHILY.xattr.security.capability".to_string(), cap.clone()),
                ("SCHILY.xattr.user.note".to_string(), b"hello".to_vec()),
            ]
        );
        let dir = find(&entries, "opaque");
        assert_eq!(dir.kind, tar::EntryType::Directory);
        assert_eq!(dir.xattrs, [("SCHILY.xattr.user.dir".to_string(), b"d".to_vec())]);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.trim_end_matches('/')).collect();
        assert_eq!(
            paths,
            ["opaque", "opaque/.wh..wh..opq", "opaque/only.txt", "ping"]
        );
        assert!(
            !tar_bytes.windows(b"trusted.".len()).any(|w| w == b"trusted."),
            "a trusted.* xattr is in the layer"
        );
        // A redirect (a directory renamed by overlayfs) cannot be a layer.
        rustix::fs::setxattr(
            &opaque,
            "trusted.overlay.redirect",
            &b"/elsewhere"[..],
            XattrFlags::empty(),
        )
        .unwrap();
        assert!(matches!(layer(tmp.path()), Err(CommitError::Unsupported(..))));
    }

    #[test]
    fn hard_links_symlinks_and_order_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        std::fs::create_dir_all(t.join("b/c")).unwrap();
        std::fs::write(t.join("b/c/one"), "1").unwrap();
        std::fs::hard_link(t.join("b/c/one"), t.join("a-link")).unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", t.join("b/rel")).unwrap();
        let long = "x".repeat(150);
        std::fs::write(t.join(&long), "long").unwrap();
        let (first, _) = layer(t).unwrap();
        let (second, _) = layer(t).unwrap();
        assert_eq!(first, second, "the same directory gave two different tars");
        let entries = entries(&first);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.trim_end_matches('/')).collect();
        assert_eq!(paths, ["a-link", "b", "b/c", "b/c/one", "b/rel", long.as_str()]);
        assert_eq!(entries[0].kind, tar::EntryType::Regular);
        assert_eq!(entries[0].data, b"1");
        assert_eq!(entries[3].kind, tar::EntryType::Link);
        assert_eq!(entries[3].link.as_deref(), Some("a-link"));
        assert_eq!(entries[4].kind, tar::EntryType::Symlink);
        assert_eq!(entries[4].link.as_deref(), Some("../../etc/passwd"));
        assert_eq!(entries[5].data, b"long");
    }

    #[test]
    fn a_file_that_grows_or_shrinks_while_read_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "12345").unwrap();
        for (left, ok) in [(5, true), (3, false), (9, false)] {
            let mut data = Exact {
                file: std::fs::File::open(tmp.path().join("f")).unwrap(),
                left,
            };
            let r = io::copy(&mut data, &mut io::sink());
            assert_eq!(r.is_ok(), ok, "{left}: {r:?}");
            if let Err(e) = r {
                assert!(matches!(append_error(Path::new("f"), e), CommitError::Changed(p) if p == "/f"));
            }
        }
    }

    #[test]
    fn nesting_is_bounded() {
        // On tmpfs where there is one: thousands of directories are slow to remove on a
        // disk mounted with `discard`.
        let tmp = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        // MAX_DEPTH + 1 levels, with a descriptor for each (to remove them fast).
        raise_open_files_limit();
        let levels = MAX_DEPTH + 1;
        let mut fds =
            vec![rustix::fs::open(tmp.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()];
        for _ in 0..levels {
            let parent = fds.last().unwrap();
            rustix::fs::mkdirat(parent, "d", Mode::from_raw_mode(0o755)).unwrap();
            fds.push(
                rustix::fs::openat(parent, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap(),
            );
        }
        let err = write_layer(tmp.path(), io::sink()).unwrap_err();
        assert!(matches!(err, CommitError::TooDeep(_)), "{err}");
        // Not deeper than the limit: fine.
        fds.pop();
        rustix::fs::unlinkat(fds.last().unwrap(), "d", AtFlags::REMOVEDIR).unwrap();
        write_layer(tmp.path(), io::sink()).unwrap();
        while let Some(fd) = fds.pop() {
            drop(fd);
            if let Some(parent) = fds.last() {
                rustix::fs::unlinkat(parent, "d", AtFlags::REMOVEDIR).unwrap();
            }
        }
    }

    fn changed(changes: &[&str]) -> Result<Value, CommitError> {
        let mut config = serde_json::json!({
            "config": {
                "Env": ["PATH=/bin", "HOME=/root"],
                "Cmd": ["sh"],
                "WorkingDir": "/srv",
                "Labels": {"old": "1"},
            }
        });
        let changes: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply_changes(&mut config, &changes)?;
        Ok(config["config"].clone())
    }

    #[test]
    fn changes_edit_the_config_as_docker_does() {
        let c = changed(&[
            r#"CMD ["/bin/echo", "hi"]"#,
            "ENV A=1 B=\"two words\" PATH=$PATH:/opt/bin",
            "env LEGACY some value",
            "EXPOSE 80 53/udp 8000-8002",
            "LABEL version=2 \"com.example.name\"='my app'",
            "USER nobody:nogroup",
            "WORKDIR app/../data",
            "VOLUME /var/lib/x /cache",
            "STOPSIGNAL SIGQUIT",
            "ONBUILD RUN echo built",
        ])
        .unwrap();
        assert_eq!(c["Cmd"], serde_json::json!(["/bin/echo", "hi"]));
        assert_eq!(
            c["Env"],
            serde_json::json!([
                "PATH=/bin:/opt/bin",
                "HOME=/root",
                "A=1",
                "B=two words",
                "LEGACY=some value"
            ])
        );
        assert_eq!(
            c["ExposedPorts"],
            serde_json::json!({"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}})
        );
        assert_eq!(
            c["Labels"],
            serde_json::json!({"old": "1", "version": "2", "com.example.name": "my app"})
        );
        assert_eq!(c["User"], "nobody:nogroup");
        assert_eq!(c["WorkingDir"], "/srv/data");
        assert_eq!(c["Volumes"], serde_json::json!({"/var/lib/x": {}, "/cache": {}}));
        assert_eq!(c["StopSignal"], "SIGQUIT");
        assert_eq!(c["OnBuild"], serde_json::json!(["RUN echo built"]));

        // Shell forms; an ENTRYPOINT drops the image's CMD but not one given with it.
        let c = changed(&["ENTRYPOINT exec nginx -g 'daemon off;'"]).unwrap();
        assert_eq!(
            c["Entrypoint"],
            serde_json::json!(["/bin/sh", "-c", "exec nginx -g 'daemon off;'"])
        );
        assert!(c.get("Cmd").is_none(), "{c}");
        let c = changed(&[
            "CMD --verbose",
            r#"ENTRYPOINT ["/app"]"#,
            "WORKDIR /abs\nVOLUME [\"/v\"]",
        ])
        .unwrap();
        assert_eq!(c["Cmd"], serde_json::json!(["/bin/sh", "-c", "--verbose"]));
        assert_eq!(c["Entrypoint"], serde_json::json!(["/app"]));
        assert_eq!(c["WorkingDir"], "/abs");
        assert_eq!(c["Volumes"], serde_json::json!({"/v": {}}));
        // Substitutions see the environment from before the instruction.
        let c = changed(&[r#"ENV D=${UNSET:-dflt} E=${HOME:+set} F='$HOME' G="\$HOME" HOME=/h I=$HOME"#])
            .unwrap();
        let env = c["Env"].as_array().unwrap();
        for var in ["D=dflt", "E=set", "F=$HOME", "G=$HOME", "HOME=/h", "I=/root"] {
            assert!(env.contains(&var.into()), "{var} not in {env:?}");
        }
    }

    #[test]
    fn bad_changes_are_clear_errors() {
        for (change, expected) in [
            ("RUN rm -rf /", "RUN is not a valid change instruction"),
            ("FROM scratch", "FROM is not a valid change instruction"),
            (
                "HEALTHCHECK NONE",
                "HEALTHCHECK is not a valid change instruction",
            ),
            ("EXPOSE 99999", "invalid port"),
            ("EXPOSE 80/icmp", "invalid protocol"),
            ("ENV A=1 B", "can't find ="),
            ("ENV LONELY", "must have two arguments"),
            ("ENV A=\"unterminated", "unterminated"),
            ("STOPSIGNAL SIGNOPE", "invalid signal"),
            ("ONBUILD ONBUILD RUN x", "chaining ONBUILD"),
            ("ONBUILD FROM x", "FROM isn't allowed"),
            ("CMD", "CMD requires at least one argument"),
            ("VOLUME [\"\"]", "empty string"),
        ] {
            let err = changed(&[change]).unwrap_err();
            assert!(matches!(err, CommitError::Change { .. }), "{change}: {err}");
            assert!(err.to_string().contains(expected), "{change}: {err}");
        }
    }
}
