//! `runner build`: a Dockerfile and a context directory in, an image in the store out, as
//! docker's classic builder makes it: one image per step (intermediate images are
//! ordinary, untagged store images: `store gc` keeps them, as every image, until `store rm`
//! removes them), one history entry per
//! instruction with the classic builder's `created_by` text, metadata instructions as
//! config changes with `empty_layer`, `COPY`/`ADD` of context files as a layer built here
//! (entries sorted, owned by root unless `--chown`), `RUN` in a container confined as
//! `runner start` confines it (on the bridge network unless `--network none|host`), its
//! changes committed as `runner commit` commits them.
//!
//! The cache: each step's result is recorded under `<root>/cache/build/<key>` (the image
//! ID it made), the key hashing the parent image's ID, the instruction after substitution
//! with the build arguments in scope, and for `COPY`/`ADD` every source's path, type,
//! mode, owner, content and link target — never its mtime. A record whose image is gone
//! is a miss. `--no-cache` neither reads nor writes records.
//!
//! `COPY --from` reads a stage's or a stored image's files from its unpacked layers
//! (whiteouts and opaque directories applied), owned by root unless `--chown` as the
//! classic builder makes them.
//!
//! `ADD` of a local tar (plain or gzip-compressed) extracts it when the step runs, through
//! the store's layer unpacker (streamed, capped, nothing written outside its scratch
//! directory): the archive's modes and owners, hard links kept (within the archive).
//! Layers being written and extracted archives live in the build's scratch directory,
//! `cache/build/.work-*/` (see [`Scratch`]).
//!
//! A base image's `ONBUILD` triggers run right after its `FROM`, each parsed and resolved
//! as an instruction of the new stage; the new image does not keep them.
//!
//! `FROM` an image that is not in the store and whose reference names a registry
//! (`HOST[:PORT]/…`, `localhost/…`) fetches it through the puller first.
//!
//! `--platform` and `FROM --platform=` take this host's platform only, with BuildKit's
//! automatic platform ARGs (`BUILDPLATFORM`, `TARGETARCH`, …) predefined.
//!
//! Not supported yet (clear errors): `ADD` of URLs and of bzip2 or xz archives, `FROM` an
//! image that is not in the store and names no registry, another platform than the
//! host's, heredocs and `RUN --mount`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use strata_store::{Digest, ImageRef, Store, StoreError};

use crate::commit::{CommitError, CommitOptions};
use crate::dockerfile::{
    Base, Command, CommandLine, CopyArgs, DockerfileError, ResolvedInstruction, Resolver,
};
use crate::dockerignore::{DockerIgnore, DockerIgnoreError, Verdict};
use crate::start::{StartError, StartOptions};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MAX_METADATA: u64 = 4 << 20;
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// What `runner build` was asked for.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The context directory.
    pub context: PathBuf,
    /// The Dockerfile; `CONTEXT/Dockerfile` when `None`.
    pub dockerfile: Option<PathBuf>,
    /// References to tag the final image as.
    pub tags: Vec<String>,
    /// `--build-arg K=V`.
    pub build_args: BTreeMap<String, String>,
    /// `--target`: the stage to build; the last one when `None`.
    pub target: Option<String>,
    /// `--no-cache`: run every step, record nothing.
    pub no_cache: bool,
    /// `--network`: the network of `RUN` steps' containers (the bridge by default, as
    /// docker's classic builder).
    pub network: crate::network::NetworkMode,
    /// `--platform`: the platform to build for; only this host's is accepted (there is no
    /// emulation). `None` is this host's.
    pub platform: Option<String>,
    /// The runner program, run as `PROGRAM --root ROOT __init DIR` to supervise a `RUN`
    /// step's container.
    pub supervisor: PathBuf,
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub image_id: Digest,
    pub manifest: Digest,
    /// Steps run (`FROM` lines included), and of them those answered by the cache.
    pub steps: usize,
    pub cached: usize,
    /// `RUN` steps whose container ran.
    pub runs: usize,
}

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("dockerfile: {0}")]
    Dockerfile(#[from] DockerfileError),
    #[error(".dockerignore: {0}")]
    Ignore(#[from] DockerIgnoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("invalid reference {0:?}: {1}")]
    Reference(String, String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("line {line}: {message}")]
    Step { line: usize, message: String },
    #[error("line {line}: the command {command:?} returned a non-zero code: {code}")]
    Run { line: usize, command: String, code: i32 },
    #[error("bad image metadata: {0}")]
    Metadata(String),
    #[error("--platform={0}")]
    Platform(String),
    #[error("line {line}: fetch {reference}: {source}")]
    Fetch {
        line: usize,
        reference: String,
        #[source]
        source: Box<strata_puller::FetchError>,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

fn step_err(line: usize, message: impl Into<String>) -> BuildError {
    BuildError::Step {
        line,
        message: message.into(),
    }
}

/// Fetches, through the puller, the images the `needed` stages are built `FROM` that name
/// a registry (`HOST[:PORT]/…` or `localhost/…`) and are not in the store, at the stage's
/// `--platform` or this host's. References without a registry are left to the store.
fn fetch_missing_bases(
    store_root: &Path,
    df: &crate::dockerfile::Dockerfile,
    dry: &[crate::dockerfile::ResolvedStage],
    needed: &BTreeSet<usize>,
    out: &mut dyn Write,
) -> Result<(), BuildError> {
    let mut missing = Vec::new();
    // The store is opened only when a stage names a registry.
    if needed
        .iter()
        .any(|&i| matches!(&dry[i].base, Base::Image(r) if names_registry(r)))
    {
        let store = Store::open(store_root)?;
        for &i in needed {
            let Base::Image(r) = &dry[i].base else { continue };
            if !names_registry(r) || missing.iter().any(|(_, m, _)| m == r) {
                continue;
            }
            match store.resolve(r) {
                Ok(res) if res.image.is_some() => {}
                Ok(_) | Err(StoreError::NoSuchImage(_)) => {
                    missing.push((df.stages[i].line, r.clone(), dry[i].platform.clone()));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io_err("start the async runtime"))?;
    for (line, r, platform) in missing {
        let fetch_err = |source: strata_puller::FetchError| BuildError::Fetch {
            line,
            reference: r.clone(),
            source: Box::new(source),
        };
        let image = ImageRef::parse(&r).map_err(|e| BuildError::Reference(r.clone(), e.to_string()))?;
        let platform = match &platform {
            Some(p) => strata_store::Platform::parse(p)
                .ok_or_else(|| step_err(line, format!("FROM --platform={p}: not OS/ARCH[/VARIANT]")))?,
            None => strata_store::Platform::host(),
        };
        writeln!(out, "Fetching {image}").map_err(io_err("write progress"))?;
        let opts = strata_puller::FetchOptions {
            platform,
            credentials: strata_puller::credentials_for(&image.registry),
            ..Default::default()
        };
        let report = runtime
            .block_on(strata_puller::fetch(store_root, &image, &opts))
            .map_err(fetch_err)?;
        writeln!(
            out,
            " ---> {} ({} layers)",
            &report.image_id.hex()[..12],
            report.layers
        )
        .map_err(io_err("write progress"))?;
    }
    Ok(())
}

/// The platform ARGs BuildKit predefines in the global scope (`BUILDPLATFORM`, `BUILDOS`,
/// `BUILDARCH`, `BUILDVARIANT` and the same for `TARGET`): this host's on both sides, the
/// only platform built here.
fn automatic_args() -> Vec<(String, String)> {
    let host = strata_store::Platform::host();
    let variant = host.variant.clone().unwrap_or_default();
    let mut args = Vec::new();
    for side in ["BUILD", "TARGET"] {
        args.push((format!("{side}PLATFORM"), host.to_string()));
        args.push((format!("{side}OS"), host.os.clone()));
        args.push((format!("{side}ARCH"), host.architecture.clone()));
        args.push((format!("{side}VARIANT"), variant.clone()));
    }
    args
}

/// Accepts this host's platform (`OS[/ARCH[/VARIANT]]`, docker's architecture aliases
/// such as `x86_64` taken), refuses any other: nothing here emulates another CPU.
fn check_platform(p: &str) -> Result<(), String> {
    let host = strata_store::Platform::host();
    let lower = p.to_ascii_lowercase();
    let mut parts = lower.split('/');
    let os = parts.next().unwrap_or_default();
    let arch = match parts.next() {
        None => host.architecture.as_str(),
        Some("x86_64" | "x86-64") => "amd64",
        Some("aarch64") => "arm64",
        Some(a) => a,
    };
    let variant = parts.next();
    if os.is_empty() || arch.is_empty() || parts.next().is_some() {
        return Err("not OS[/ARCH[/VARIANT]]".into());
    }
    let same_variant =
        variant.is_none_or(|v| Some(v) == host.variant.as_deref() || (arch == "amd64" && v == "v1"));
    if os == host.os && arch == host.architecture && same_variant {
        Ok(())
    } else {
        Err(format!(
            "only this host's platform ({host}) can be built here: there is no emulation"
        ))
    }
}

/// Whether a reference's first component names a registry, as docker decides it.
fn names_registry(r: &str) -> bool {
    r.split_once('/')
        .is_some_and(|(first, _)| first.contains(['.', ':']) || first == "localhost")
}

/// One image in the making: the stored image it is (`None` before `FROM scratch`'s first
/// step), its config and manifest.
#[derive(Debug, Clone)]
struct State {
    id: Option<Digest>,
    manifest_digest: Option<Digest>,
    config: Value,
    manifest: Value,
    /// Whether this stage set `CMD` (an `ENTRYPOINT` after it keeps it).
    cmd_set: bool,
}

impl State {
    fn scratch() -> State {
        State {
            id: None,
            manifest_digest: None,
            config: json!({
                "architecture": host_arch(),
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            }),
            manifest: json!({
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "size": 0, "digest": ""},
                "layers": [],
            }),
            cmd_set: false,
        }
    }

    fn parent_key(&self) -> String {
        self.id.map_or_else(|| "scratch".to_string(), |d| d.to_string())
    }

    fn runtime(&mut self) -> &mut serde_json::Map<String, Value> {
        if !self.config["config"].is_object() {
            self.config["config"] = json!({});
        }
        self.config["config"].as_object_mut().expect("set above")
    }

    fn shell(&self) -> Vec<String> {
        strings(&self.config["config"]["Shell"])
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect())
    }

    fn env(&self) -> Vec<String> {
        strings(&self.config["config"]["Env"]).unwrap_or_default()
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A file or directory of the context (after `.dockerignore`).
#[derive(Debug, Clone)]
struct ContextEntry {
    /// Where it is on the host.
    host: PathBuf,
    kind: Kind,
    mode: u32,
    mtime: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink(String),
}

/// The context directory's entries, by path relative to it (`a/b`), without those the
/// `.dockerignore` leaves out (and without the `.dockerignore` and Dockerfile it names
/// being special: docker sends them too unless ignored).
fn read_context(root: &Path, ignore: &DockerIgnore) -> Result<BTreeMap<String, ContextEntry>, BuildError> {
    let mut out = BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let rd = std::fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))?;
        for e in rd {
            let e = e.map_err(io_err(format!("read {}", dir.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let md = std::fs::symlink_metadata(e.path()).map_err(io_err(format!("stat {path}")))?;
            let kind = if md.is_dir() {
                Kind::Dir
            } else if md.is_file() {
                Kind::File
            } else if md.file_type().is_symlink() {
                let target = std::fs::read_link(e.path()).map_err(io_err(format!("read link {path}")))?;
                Kind::Symlink(target.to_string_lossy().into_owned())
            } else {
                continue;
            };
            let is_dir = kind == Kind::Dir;
            match ignore.check(&path, is_dir) {
                Verdict::SkipDir => continue,
                Verdict::Exclude => {
                    if is_dir {
                        todo.push(path);
                    }
                    continue;
                }
                Verdict::Include => {}
            }
            if is_dir {
                todo.push(path.clone());
            }
            out.insert(
                path,
                ContextEntry {
                    host: e.path(),
                    kind,
                    mode: md.permissions().mode() & 0o7777,
                    mtime: md.mtime().max(0) as u64,
                },
            );
        }
    }
    // A directory left out with something below it let back in (`!dir/keep`) is there
    // as the parent of what is in, as docker sends it.
    let parents: BTreeSet<String> = out
        .keys()
        .flat_map(|p| {
            let mut v = Vec::new();
            let mut cur = p.as_str();
            while let Some((parent, _)) = cur.rsplit_once('/') {
                v.push(parent.to_string());
                cur = parent;
            }
            v
        })
        .filter(|p| !out.contains_key(p))
        .collect();
    for p in parents {
        let host = root.join(&p);
        let md = std::fs::symlink_metadata(&host).map_err(io_err(format!("stat {p}")))?;
        out.insert(
            p,
            ContextEntry {
                host,
                kind: Kind::Dir,
                mode: md.permissions().mode() & 0o7777,
                mtime: md.mtime().max(0) as u64,
            },
        );
    }
    Ok(out)
}

/// The files of an image whose unpacked layers (overlay form: whiteouts are 0/0 character
/// devices, opaque directories carry `trusted.overlay.opaque` or `user.overlay.opaque`)
/// are `layers`, bottom first, by path (`a/b`): what `COPY --from` reads.
fn merged_view(layers: &[PathBuf]) -> Result<BTreeMap<String, ContextEntry>, BuildError> {
    use std::os::unix::fs::FileTypeExt;
    let mut view: BTreeMap<String, ContextEntry> = BTreeMap::new();
    let remove_below = |view: &mut BTreeMap<String, ContextEntry>, rel: &str| {
        let prefix = format!("{rel}/");
        let below: Vec<String> = view
            .range(prefix.clone()..)
            .map(|(k, _)| k.clone())
            .take_while(|k| k.starts_with(&prefix))
            .collect();
        for k in below {
            view.remove(&k);
        }
    };
    for layer in layers {
        let mut todo = vec![String::new()];
        while let Some(rel) = todo.pop() {
            let dir = layer.join(&rel);
            let rd = std::fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))?;
            let mut names: Vec<String> = Vec::new();
            for e in rd {
                let e = e.map_err(io_err(format!("read {}", dir.display())))?;
                names.push(e.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            for name in names {
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let host = layer.join(&path);
                let md =
                    std::fs::symlink_metadata(&host).map_err(io_err(format!("stat {}", host.display())))?;
                if md.file_type().is_char_device() && md.rdev() == 0 {
                    view.remove(&path);
                    remove_below(&mut view, &path);
                    continue;
                }
                let kind = if md.is_dir() {
                    let opaque = ["trusted.overlay.opaque", "user.overlay.opaque"].iter().any(|x| {
                        let mut buf = [0u8; 4];
                        rustix::fs::lgetxattr(&host, *x, &mut buf).is_ok_and(|n| buf[..n] == *b"y")
                    });
                    if opaque || !view.get(&path).is_some_and(|e| e.kind == Kind::Dir) {
                        remove_below(&mut view, &path);
                    }
                    todo.push(path.clone());
                    Kind::Dir
                } else if md.is_file() {
                    remove_below(&mut view, &path);
                    Kind::File
                } else if md.file_type().is_symlink() {
                    remove_below(&mut view, &path);
                    let target =
                        std::fs::read_link(&host).map_err(io_err(format!("read link {}", host.display())))?;
                    Kind::Symlink(target.to_string_lossy().into_owned())
                } else {
                    // Devices, FIFOs and sockets are not copied.
                    continue;
                };
                view.insert(
                    path,
                    ContextEntry {
                        host,
                        kind,
                        mode: md.permissions().mode() & 0o7777,
                        mtime: md.mtime().max(0) as u64,
                    },
                );
            }
        }
    }
    Ok(view)
}

/// Go's `filepath.Match` for one path component: `*`, `?`, `[...]` (`^` negates, ranges),
/// `\` escaping.
fn match_component(pattern: &[char], name: &[char]) -> bool {
    // Two pointers and one backtracking point, the last `*`: on a mismatch that star takes
    // one more character. At most len(pattern) × len(name) steps, whatever the pattern (a
    // recursive matcher is exponential in the stars of `*a*a*a…b`, which a Dockerfile
    // from anywhere may hold).
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if pattern.get(p) == Some(&'*') {
            p += 1;
            star = Some((p, n));
            continue;
        }
        if let Some(len) = match_one(&pattern[p..], name[n]) {
            p += len;
            n += 1;
            continue;
        }
        match star {
            Some((after, taken)) => {
                p = after;
                n = taken + 1;
                star = Some((after, taken + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// How many pattern characters the element at the start of `pattern` spans if it matches
/// `c`: `?`, a class (`[a-z]`, `[!x]`, `[^x]`), an escaped or a literal character. `None`
/// when it does not match, when `pattern` is empty or starts with `*`, or for a class
/// without its `]`.
fn match_one(pattern: &[char], c: char) -> Option<usize> {
    match pattern.first()? {
        '*' => None,
        '?' => Some(1),
        '[' => {
            let mut i = 1;
            let negate = matches!(pattern.get(1), Some('^') | Some('!'));
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < pattern.len() && (first || pattern[i] != ']') {
                first = false;
                let lo = pattern[i];
                if pattern.get(i + 1) == Some(&'-') && pattern.get(i + 2).is_some_and(|h| *h != ']') {
                    if lo <= c && c <= pattern[i + 2] {
                        matched = true;
                    }
                    i += 3;
                } else {
                    if lo == c {
                        matched = true;
                    }
                    i += 1;
                }
            }
            (i < pattern.len() && matched != negate).then_some(i + 1)
        }
        '\\' if pattern.len() > 1 => (pattern[1] == c).then_some(2),
        p => (*p == c).then_some(1),
    }
}

fn match_path(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let n: Vec<&str> = path.split('/').collect();
    p.len() == n.len()
        && p.iter()
            .zip(&n)
            .all(|(p, n)| match_component(&p.chars().collect::<Vec<_>>(), &n.chars().collect::<Vec<_>>()))
}

/// A source of `COPY` as a path relative to the context (`""` for its root); `..` that
/// would leave the context is an error.
fn context_path(src: &str, line: usize) -> Result<String, BuildError> {
    let mut parts: Vec<&str> = Vec::new();
    for part in src.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(step_err(
                        line,
                        format!("forbidden path outside the build context: {src}"),
                    ));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// What a `COPY`/`ADD` step writes, and what keys and names it.
struct CopyPlan {
    entries: Vec<LayerEntry>,
    /// The sources' hash, part of the step's cache key.
    content: String,
    /// The step's history text.
    text: String,
    /// Local archives `ADD` extracts: their entries are in `entries` only when
    /// `copy_entries` was given a scratch directory to extract them into.
    archives: usize,
}

/// One entry of a layer made here.
#[derive(Debug, Clone)]
struct LayerEntry {
    /// Path in the image, without the leading `/`.
    path: String,
    kind: LayerKind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

#[derive(Debug, Clone)]
enum LayerKind {
    Dir,
    /// A file of the context, by its path on the host, and its content's SHA-256.
    File(PathBuf, String),
    /// A file `ADD` extracted from a local archive into the build's scratch directory, by
    /// its path there (its hard links to other extracted files are kept).
    Extracted(PathBuf),
    Symlink(String),
}

/// Writes `entries` (sorted by path here) as an uncompressed tar. With `keep_links`
/// (sources from the context), files that are hard links of one another stay so (the
/// later ones as links to the first), as the classic builder copies them; an image's
/// unpacked layers share inodes of their own (the store's dedup pool) and never keep them.
fn layer_tar<W: Write>(entries: &mut [LayerEntry], keep_links: bool, out: W) -> Result<W, BuildError> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut tar = tar::Builder::new(out);
    // The first path written of each linked file, by device and inode.
    let mut linked: std::collections::HashMap<(u64, u64), String> = std::collections::HashMap::new();
    for e in entries.iter() {
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        let err = io_err(format!("write /{} into the layer", e.path));
        let link_key = match &e.kind {
            LayerKind::File(src, _) if keep_links => {
                let md = std::fs::symlink_metadata(src).map_err(io_err(format!("stat {}", src.display())))?;
                (md.nlink() > 1).then(|| (md.dev(), md.ino()))
            }
            LayerKind::Extracted(src) => {
                let md = std::fs::symlink_metadata(src).map_err(io_err(format!("stat {}", src.display())))?;
                (md.nlink() > 1).then(|| (md.dev(), md.ino()))
            }
            _ => None,
        };
        if let Some(key) = link_key {
            match linked.entry(key) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    tar.append_link(&mut h, &e.path, first.get()).map_err(err)?;
                    continue;
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(e.path.clone());
                }
            }
        }
        match &e.kind {
            LayerKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, format!("{}/", e.path), io::empty())
                    .map_err(err)?;
            }
            LayerKind::File(src, _) | LayerKind::Extracted(src) => {
                let f = std::fs::File::open(src).map_err(io_err(format!("open {}", src.display())))?;
                let len = f
                    .metadata()
                    .map_err(io_err(format!("stat {}", src.display())))?
                    .len();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(len);
                tar.append_data(&mut h, &e.path, f.take(len)).map_err(err)?;
            }
            LayerKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, &e.path, target).map_err(err)?;
            }
        }
    }
    tar.into_inner().map_err(io_err("finish the layer"))
}

/// A build's scratch directory in the store's cache, `cache/build/.work-<random>/`: the
/// layers it writes and the archives `ADD` extracts. While the build runs it holds
/// `cache/build/.work-<random>.lock` `flock`ed; dropped, it removes both. A build killed
/// meanwhile leaves them unlocked, and the next build that needs scratch space removes them.
struct Scratch {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: std::fs::File,
    next: std::cell::Cell<u64>,
}

impl Scratch {
    fn open(store_root: &Path) -> Result<Scratch, BuildError> {
        use rustix::fs::{FlockOperation, flock};
        let cache = store_root.join("cache").join("build");
        std::fs::create_dir_all(&cache).map_err(io_err("make the build cache directory"))?;
        // What killed builds left: unlocked `.work-*.lock` files and their directories.
        if let Ok(rd) = std::fs::read_dir(&cache) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".lock").filter(|n| n.starts_with(".work-")) else {
                    continue;
                };
                let Ok(f) = std::fs::File::open(e.path()) else {
                    continue;
                };
                if flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
                    let _ = std::fs::remove_dir_all(cache.join(stem));
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let stem = format!(".work-{}", hex::encode(rand::random::<[u8; 8]>()));
        let lock_path = cache.join(format!("{stem}.lock"));
        let lock = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&lock_path)
            .map_err(io_err(format!("create {}", lock_path.display())))?;
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock the build's scratch directory")(e.into()))?;
        let dir = cache.join(&stem);
        std::fs::create_dir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        Ok(Scratch {
            dir,
            lock_path,
            _lock: lock,
            next: std::cell::Cell::new(0),
        })
    }

    /// A new path in the scratch directory.
    fn path(&self, what: &str) -> PathBuf {
        let n = self.next.get();
        self.next.set(n + 1);
        self.dir.join(format!("{what}-{n}"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// A layer written to a file in the build's scratch directory rather than held in memory,
/// however large the files it copies (removed when dropped).
struct TempLayer {
    path: PathBuf,
    file: std::fs::File,
}

impl TempLayer {
    /// `entries` as a layer tar (see [`layer_tar`]), ready to be read from its start.
    fn write(
        scratch: &Scratch,
        entries: &mut [LayerEntry],
        keep_links: bool,
    ) -> Result<TempLayer, BuildError> {
        use std::io::Seek;
        let path = scratch.path("layer");
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(format!("create {}", path.display())))?;
        let mut layer = TempLayer { path, file };
        let out = layer_tar(entries, keep_links, io::BufWriter::new(&layer.file))?;
        out.into_inner()
            .map_err(|e| io_err("write the layer")(e.into_error()))?;
        layer.file.rewind().map_err(io_err("read the layer back"))?;
        Ok(layer)
    }
}

impl Drop for TempLayer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn sha256_file(path: &Path) -> Result<String, BuildError> {
    let mut f = std::fs::File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(io_err(format!("read {}", path.display())))?;
    Ok(hex::encode(h.finalize()))
}

/// What identifies a file's content without reading it: size, mtime and ctime (ns),
/// device and inode. Any write changes the ctime; `touch` changes both times (the file is
/// then hashed again, and its hash — the cache key — is the same).
type StatKey = (u64, i64, i64, u64, u64);

fn stat_key(md: &std::fs::Metadata) -> StatKey {
    (
        md.len(),
        md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        md.dev(),
        md.ino(),
    )
}

/// SHA-256 of the context's files, remembered across builds in
/// `<root>/cache/build/files-<hash of the context's path>` by their [`StatKey`]: a file whose
/// stat is unchanged is not read again. Entries whose ctime is within a second of when the
/// record was written are not trusted (a write in the same clock tick as the hashing
/// would leave the ctime as it was), so a stale hash is never used.
struct FileHashes {
    path: PathBuf,
    /// When the record was written (ns since the epoch).
    written: i64,
    old: std::collections::HashMap<PathBuf, (StatKey, String)>,
    used: std::cell::RefCell<std::collections::HashMap<PathBuf, (StatKey, String)>>,
    hits: std::cell::Cell<usize>,
}

impl FileHashes {
    fn open(store_root: &Path, context: &Path) -> FileHashes {
        let id = hex::encode(Sha256::digest(context.as_os_str().as_encoded_bytes()));
        let path = store_root
            .join("cache")
            .join("build")
            .join(format!("files-{}", &id[..32]));
        let mut old = std::collections::HashMap::new();
        let mut written = 0;
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut lines = text.lines();
            written = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
            for l in lines {
                let mut f = l.splitn(7, ' ');
                let mut num = || f.next().and_then(|x| x.parse::<i64>().ok());
                let (Some(size), Some(mtime), Some(ctime), Some(dev), Some(ino)) =
                    (num(), num(), num(), num(), num())
                else {
                    continue;
                };
                let (Some(hash), Some(p)) = (f.next(), f.next()) else {
                    continue;
                };
                let key = (size as u64, mtime, ctime, dev as u64, ino as u64);
                old.insert(PathBuf::from(p), (key, hash.to_string()));
            }
        }
        FileHashes {
            path,
            written,
            old,
            used: Default::default(),
            hits: Default::default(),
        }
    }

    /// The SHA-256 of the regular file at `path`.
    fn hash(&self, path: &Path) -> Result<String, BuildError> {
        let md = std::fs::symlink_metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
        let key = stat_key(&md);
        if let Some((k, h)) = self.old.get(path)
            && *k == key
            && key.2 < self.written - 1_000_000_000
        {
            self.hits.set(self.hits.get() + 1);
            self.used
                .borrow_mut()
                .insert(path.to_path_buf(), (key, h.clone()));
            return Ok(h.clone());
        }
        let h = sha256_file(path)?;
        // What was hashed must be what was stat'ed, or the entry is not kept.
        let after = std::fs::symlink_metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
        if stat_key(&after) == key {
            self.used
                .borrow_mut()
                .insert(path.to_path_buf(), (key, h.clone()));
        }
        Ok(h)
    }

    /// Records the hashes this build used (nothing when every one came from the record).
    fn save(&self) {
        if self.used.borrow().is_empty() {
            return;
        }
        let used = self.used.borrow();
        if self.hits.get() == used.len() && used.len() == self.old.len() {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let mut text = format!("{now}\n");
        for (p, ((size, mtime, ctime, dev, ino), h)) in used.iter() {
            let Some(p) = p.to_str().filter(|p| !p.contains('\n')) else {
                continue;
            };
            text.push_str(&format!("{size} {mtime} {ctime} {dev} {ino} {h} {p}\n"));
        }
        let tmp = self.path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::create_dir_all(self.path.parent().unwrap_or(Path::new(".")));
        if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, &self.path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

impl Drop for FileHashes {
    fn drop(&mut self) {
        self.save();
    }
}

/// What a path is in an image whose unpacked layers (overlay form) are `layers`, bottom
/// first: its metadata, or `None` when it is absent or whited out. A path through a
/// symlink of the image counts as absent: it is never resolved on the host.
fn lookup(layers: &[PathBuf], path: &str) -> Option<std::fs::Metadata> {
    use std::os::unix::fs::FileTypeExt;
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return layers.last().and_then(|l| std::fs::symlink_metadata(l).ok());
    }
    for layer in layers.iter().rev() {
        // A whiteout of the path or of one of its parents in this layer hides it.
        let mut prefix = PathBuf::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for (i, comp) in comps.iter().enumerate() {
            prefix.push(comp);
            match std::fs::symlink_metadata(layer.join(&prefix)) {
                Ok(md) if md.file_type().is_char_device() && md.rdev() == 0 => return None,
                Ok(md) if !md.is_dir() && i + 1 < comps.len() => return None,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if let Ok(md) = std::fs::symlink_metadata(layer.join(rel)) {
            return Some(md);
        }
    }
    None
}

/// `user[:group]` of `--chown` as numbers, names looked up in the image's `/etc/passwd`
/// and `/etc/group`.
fn chown_ids(spec: &str, layers: &[PathBuf], line: usize) -> Result<(u64, u64), BuildError> {
    let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
    if let (Ok(uid), Ok(gid)) = (u.parse::<u64>(), g.parse::<u64>()) {
        return Ok((uid, gid));
    }
    if g.is_empty()
        && let Ok(uid) = u.parse::<u64>()
    {
        return Ok((uid, uid));
    }
    // The image's id files, copied into a directory of their own for `resolve_user`.
    let tmp = tempfile_dir().map_err(io_err("make a temporary directory"))?;
    std::fs::create_dir(tmp.join("etc")).map_err(io_err("make a temporary directory"))?;
    for file in ["passwd", "group"] {
        // Only a real `etc` directory's regular file: nothing is resolved through the
        // image's symlinks on the host.
        let found = layers
            .iter()
            .rev()
            .filter(|l| std::fs::symlink_metadata(l.join("etc")).is_ok_and(|m| m.is_dir()))
            .map(|l| l.join("etc").join(file))
            .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
        if let Some(p) = found {
            std::fs::copy(&p, tmp.join("etc").join(file)).map_err(io_err(format!("read /etc/{file}")))?;
        }
    }
    let user = crate::start::resolve_user(&format!("{u}{}{g}", if g.is_empty() { "" } else { ":" }), &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    let user = user.map_err(|e| step_err(line, format!("--chown={spec}: {e}")))?;
    // A user without a group: docker gives the user's own ID as the group too when the
    // user is a number, else the primary group.
    Ok((u64::from(user.uid), u64::from(user.gid)))
}

fn tempfile_dir() -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("strata-build-{}", hex::encode(rand::random::<[u8; 8]>())));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// The cache of steps: `<root>/cache/build/<key>` holds the image ID a step made.
struct Cache {
    dir: PathBuf,
    enabled: bool,
}

impl Cache {
    fn key(parts: &[&str]) -> String {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        hex::encode(h.finalize())
    }

    fn get(&self, store: &Store, key: &str) -> Option<Digest> {
        if !self.enabled {
            return None;
        }
        let text = std::fs::read_to_string(self.dir.join(key)).ok()?;
        let id: Digest = text.trim().parse().ok()?;
        store.get_image(&id).ok().flatten().map(|_| id)
    }

    fn put(&self, key: &str, id: &Digest) -> Result<(), BuildError> {
        if !self.enabled {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(io_err("make the build cache directory"))?;
        let tmp = self.dir.join(format!(".{key}.tmp"));
        std::fs::write(&tmp, id.to_string()).map_err(io_err("write the build cache"))?;
        std::fs::rename(&tmp, self.dir.join(key)).map_err(io_err("write the build cache"))
    }
}

/// Go's `%q` of a `[]string`, as docker's history texts print lists: `["a" "b"]`.
fn go_quoted(list: &[String]) -> String {
    let quoted: Vec<String> = list
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Builds the image `opts` describes in the store at `store_root`, writing one line per
/// step (and the `RUN` steps' output, which goes to this process's standard output and
/// error) to `out`. A Dockerfile that cannot be parsed or resolved, a bad `.dockerignore`
/// or a bad tag is refused before anything is stored.
pub fn build(store_root: &Path, opts: &BuildOptions, out: &mut dyn Write) -> Result<BuildReport, BuildError> {
    let dockerfile_path = opts
        .dockerfile
        .clone()
        .unwrap_or_else(|| opts.context.join("Dockerfile"));
    let text = std::fs::read_to_string(&dockerfile_path)
        .map_err(io_err(format!("read {}", dockerfile_path.display())))?;
    let df = crate::dockerfile::parse(&text)?;
    // Every stage resolved once without base environments: a malformed Dockerfile is
    // refused here, before anything is stored.
    if let Some(p) = &opts.platform {
        check_platform(p).map_err(|m| BuildError::Platform(format!("{p}: {m}")))?;
    }
    let automatic = automatic_args();
    let dry = crate::dockerfile::resolve_with(&df, &opts.build_args, &automatic)?;
    let target = match &opts.target {
        Some(t) => df.stage_index(t)?,
        None => df.stages.len() - 1,
    };
    let needed = crate::dockerfile::needed_stages(&dry, target);
    for &i in &needed {
        if let Some(p) = &dry[i].platform {
            check_platform(p)
                .map_err(|m| step_err(df.stages[i].line, format!("FROM --platform={p}: {m}")))?;
        }
    }
    let tags = opts
        .tags
        .iter()
        .map(|t| ImageRef::parse(t).map_err(|e| BuildError::Reference(t.clone(), e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let ignore = match std::fs::read_to_string(opts.context.join(".dockerignore")) {
        Ok(text) => DockerIgnore::parse(&text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
        Err(e) => return Err(io_err("read .dockerignore")(e)),
    };
    let context = read_context(&opts.context, &ignore)?;

    fetch_missing_bases(store_root, &df, &dry, &needed, out)?;

    let stores = Stores::open(store_root, opts.no_cache)?;
    let cache = Cache {
        dir: store_root.join("cache").join("build"),
        enabled: !opts.no_cache,
    };
    let total: usize = needed.iter().map(|i| dry[*i].instructions.len() + 1).sum();
    let mut b = Builder {
        stores: &stores,
        store_root,
        opts,
        cache,
        context,
        hashes: FileHashes::open(store_root, &opts.context),
        out,
        step: 0,
        total,
        cached: 0,
        runs: 0,
        scratch: std::cell::OnceCell::new(),
    };
    let mut resolver = Resolver::new(&df, &opts.build_args, &automatic)?;
    let mut results: Vec<Option<State>> = Vec::new();
    for i in 0..=target {
        let (base, _) = resolver.base(i)?;
        if !needed.contains(&i) {
            let env: Vec<(String, String)> = Vec::new();
            resolver.stage(i, &env)?;
            results.push(None);
            continue;
        }
        let from = &df.stages[i];
        let started = Instant::now();
        b.begin(&format!(
            "FROM {}",
            from.original
                .split_once(char::is_whitespace)
                .map_or("", |(_, r)| r.trim())
        ))?;
        let state = match &base {
            Base::Scratch => State::scratch(),
            Base::Image(r) => b.load_reference(r, from.line)?,
            Base::Stage(j) => {
                let mut s = results[*j]
                    .clone()
                    .ok_or_else(|| step_err(from.line, "the stage it is built on was not built"))?;
                s.cmd_set = false;
                s
            }
        };
        // The base's ONBUILD triggers run first, as the classic builder runs them, and the
        // new image does not keep them.
        let mut state = state;
        let triggers = strings(&state.config["config"]["OnBuild"]).unwrap_or_default();
        if !triggers.is_empty() {
            // Stored without them (no history entry): a `RUN` commits on the stored config.
            state.runtime().remove("OnBuild");
            state = b.store_image(state, None)?;
            let n = triggers.len();
            b.say(&format!(
                "# Executing {n} build trigger{}",
                if n == 1 { "" } else { "s" }
            ))?;
            state = b.triggers(state, &triggers, from.line, &automatic)?;
        }
        b.done(&state, started)?;
        let env: Vec<(String, String)> = state
            .env()
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        let resolved = resolver.stage(i, &env)?;
        for (ins, parsed) in resolved.instructions.iter().zip(&from.instructions) {
            let started = Instant::now();
            b.begin(&ins.original)?;
            let from = match &ins.copy_from {
                None => None,
                Some(Base::Scratch) => Some(State::scratch()),
                Some(Base::Image(r)) => Some(b.load_reference(r, ins.line)?),
                Some(Base::Stage(j)) => Some(
                    results
                        .get(*j)
                        .cloned()
                        .flatten()
                        .ok_or_else(|| step_err(ins.line, "COPY --from: that stage was not built"))?,
                ),
            };
            state = b.step(state, ins, &parsed.command, from.as_ref())?;
            b.done(&state, started)?;
        }
        results.push(Some(state));
    }
    let mut last = results
        .pop()
        .flatten()
        .ok_or_else(|| BuildError::Metadata("the target stage was not built".into()))?;
    if last.id.is_none() {
        // `FROM scratch` alone: an image without layers.
        last = b.store_image(last, None)?;
    }
    let (image_id, manifest) = (
        last.id.expect("stored above"),
        last.manifest_digest.expect("stored above"),
    );
    for (t, name) in tags.iter().zip(&opts.tags) {
        // A rebuild that changed nothing tags nothing: the store stays read-only.
        if stores.read().resolve(name).ok().and_then(|r| r.manifest) != Some(manifest) {
            stores.write()?.tag(t, &manifest)?;
        }
    }
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(io_err("write the progress"));
    w(b.out, format!("Successfully built {}", &image_id.hex()[..12]))?;
    for t in &opts.tags {
        w(b.out, format!("Successfully tagged {t}"))?;
    }
    Ok(BuildReport {
        image_id,
        manifest,
        steps: b.step,
        cached: b.cached,
        runs: b.runs,
    })
}

/// The store, open read-only (a RocksDB secondary: no lock taken, nothing written) until a
/// step has to write, then read-write: a rebuild that changes nothing never opens the
/// database for writing (which costs several fsyncs).
struct Stores<'r> {
    root: &'r Path,
    current: std::cell::RefCell<std::rc::Rc<Store>>,
    writable: std::cell::Cell<bool>,
}

impl<'r> Stores<'r> {
    /// Read-only when the store exists and `writing` is false, else read-write.
    fn open(root: &'r Path, writing: bool) -> Result<Stores<'r>, BuildError> {
        let ro = if writing {
            None
        } else {
            Store::open_read_only(root).ok()
        };
        let writable = ro.is_none();
        let store = match ro {
            Some(s) => s,
            None => Store::open(root)?,
        };
        Ok(Stores {
            root,
            current: std::cell::RefCell::new(std::rc::Rc::new(store)),
            writable: std::cell::Cell::new(writable),
        })
    }

    fn read(&self) -> std::rc::Rc<Store> {
        self.current.borrow().clone()
    }

    /// The store, read-write (reopened so the first time).
    fn write(&self) -> Result<std::rc::Rc<Store>, BuildError> {
        if !self.writable.get() {
            *self.current.borrow_mut() = std::rc::Rc::new(Store::open(self.root)?);
            self.writable.set(true);
        }
        Ok(self.read())
    }
}

struct Builder<'a> {
    stores: &'a Stores<'a>,
    store_root: &'a Path,
    opts: &'a BuildOptions,
    cache: Cache,
    context: BTreeMap<String, ContextEntry>,
    hashes: FileHashes,
    out: &'a mut dyn Write,
    step: usize,
    total: usize,
    cached: usize,
    runs: usize,
    /// Made when a step first needs it (a no-op rebuild writes nothing).
    scratch: std::cell::OnceCell<Scratch>,
}

impl Builder<'_> {
    fn scratch(&self) -> Result<&Scratch, BuildError> {
        if let Some(s) = self.scratch.get() {
            return Ok(s);
        }
        let made = Scratch::open(self.store_root)?;
        Ok(self.scratch.get_or_init(|| made))
    }

    fn say(&mut self, s: &str) -> Result<(), BuildError> {
        writeln!(self.out, "{s}")
            .and_then(|_| self.out.flush())
            .map_err(io_err("write the progress"))
    }

    fn begin(&mut self, text: &str) -> Result<(), BuildError> {
        self.step += 1;
        let line = format!("Step {}/{} : {}", self.step, self.total, text);
        self.say(&line)
    }

    fn done(&mut self, state: &State, started: Instant) -> Result<(), BuildError> {
        let id = state
            .id
            .map_or_else(|| "scratch".to_string(), |d| d.hex()[..12].to_string());
        let line = format!(" ---> {id} ({:.3}s)", started.elapsed().as_secs_f64());
        self.say(&line)
    }

    fn json(&self, d: &Digest) -> Result<Value, BuildError> {
        let bytes = self
            .stores
            .read()
            .blobs()
            .read_small(d, MAX_METADATA)
            .map_err(StoreError::from)?;
        serde_json::from_slice(&bytes).map_err(|e| BuildError::Metadata(format!("{d}: {e}")))
    }

    /// The stored image `id` as a state.
    fn load(&self, id: &Digest) -> Result<State, BuildError> {
        let image = self
            .stores
            .read()
            .get_image(id)?
            .ok_or_else(|| StoreError::NoSuchImage(id.to_string()))?;
        let manifest_digest = *image
            .manifests
            .first()
            .ok_or_else(|| StoreError::NoSuchImage(id.to_string()))?;
        let config = self.json(id)?;
        let manifest = self.json(&manifest_digest)?;
        if !config.is_object() || !manifest.is_object() {
            return Err(BuildError::Metadata(format!("{id}: not a JSON object")));
        }
        Ok(State {
            id: Some(*id),
            manifest_digest: Some(manifest_digest),
            config,
            manifest,
            cmd_set: false,
        })
    }

    fn load_reference(&self, r: &str, line: usize) -> Result<State, BuildError> {
        let id = match self.stores.read().resolve(r) {
            Ok(res) => res.image,
            Err(StoreError::NoSuchImage(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let id = id.ok_or_else(|| {
            step_err(
                line,
                format!(
                    "FROM {r}: no such image in the store, and runner build does not go to Docker Hub: \
                     fetch it first (puller fetch REGISTRY/{r}) or name its registry in FROM (HOST[:PORT]/NAME)"
                ),
            )
        })?;
        self.load(&id)
    }

    /// Stores `state`'s config (and `layer`, a tar, on top of its layers) as an image.
    fn store_image(&self, mut state: State, layer: Option<TempLayer>) -> Result<State, BuildError> {
        let store = self.stores.write()?;
        if let Some(tar) = layer {
            let mut staged = store.blobs().stage(&tar.file, None).map_err(StoreError::from)?;
            let blob = store
                .blobs()
                .commit_staged(&mut staged)
                .map_err(StoreError::from)?;
            store.record_blob(&blob.digest, blob.size)?;
            state.config["rootfs"]["diff_ids"]
                .as_array_mut()
                .ok_or_else(|| BuildError::Metadata("config without rootfs.diff_ids".into()))?
                .push(blob.digest.to_string().into());
            let media_type = state.manifest["mediaType"].as_str().unwrap_or(DOCKER_MANIFEST);
            let layer_type = if media_type.contains("docker") {
                DOCKER_LAYER
            } else {
                OCI_LAYER
            };
            state.manifest["layers"]
                .as_array_mut()
                .ok_or_else(|| BuildError::Metadata("manifest without layers".into()))?
                .push(json!({"mediaType": layer_type, "digest": blob.digest.to_string(), "size": blob.size}));
        }
        let config = serde_json::to_vec(&state.config).map_err(|e| BuildError::Metadata(e.to_string()))?;
        let blob = store.blobs().put_bytes(&config).map_err(StoreError::from)?;
        store.record_blob(&blob.digest, blob.size)?;
        state.manifest["config"]["digest"] = blob.digest.to_string().into();
        state.manifest["config"]["size"] = blob.size.into();
        if let Some(m) = state.manifest.as_object_mut() {
            m.remove("annotations");
        }
        let media_type = state.manifest["mediaType"]
            .as_str()
            .unwrap_or(DOCKER_MANIFEST)
            .to_string();
        let bytes =
            serde_json::to_vec_pretty(&state.manifest).map_err(|e| BuildError::Metadata(e.to_string()))?;
        let (digest, _) = store.add_manifest(&bytes, Some(&media_type), None)?;
        state.id = Some(blob.digest);
        state.manifest_digest = Some(digest);
        Ok(state)
    }

    /// Appends a history entry and stores the image.
    fn commit(
        &self,
        mut state: State,
        created_by: String,
        layer: Option<TempLayer>,
    ) -> Result<State, BuildError> {
        let now = created();
        state.config["created"] = now.clone().into();
        let mut entry = json!({"created": now, "created_by": created_by});
        if layer.is_none() {
            entry["empty_layer"] = true.into();
        }
        match state.config["history"].as_array_mut() {
            Some(h) => h.push(entry),
            None => state.config["history"] = json!([entry]),
        }
        self.store_image(state, layer)
    }

    /// `#(nop)` history text, with the two spaces of the classic builder's `withCmdComment`
    /// (`spaced`) or the one of `withCmdCommentString`.
    fn nop(state: &State, text: &str, spaced: bool) -> String {
        let sep = if spaced { "#(nop)  " } else { "#(nop) " };
        format!("{} {sep}{text}", state.shell().join(" "))
    }

    /// Runs a base image's `ONBUILD` triggers (the `FROM` on `line`) on `s`, each parsed and
    /// resolved as an instruction of its own with the image's environment in scope.
    fn triggers(
        &mut self,
        mut s: State,
        triggers: &[String],
        line: usize,
        automatic: &[(String, String)],
    ) -> Result<State, BuildError> {
        let bad = |m: String| step_err(line, format!("ONBUILD trigger of the base image: {m}"));
        let text = format!("FROM scratch\n{}\n", triggers.join("\n"));
        let df = crate::dockerfile::parse(&text).map_err(|e| bad(e.to_string()))?;
        if df.stages.len() != 1 || df.stages[0].instructions.len() != triggers.len() {
            return Err(bad("each trigger must be one instruction".into()));
        }
        let env: Vec<(String, String)> = s
            .env()
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        let mut resolver =
            Resolver::new(&df, &self.opts.build_args, automatic).map_err(|e| bad(e.to_string()))?;
        let resolved = resolver.stage(0, &env).map_err(|e| bad(e.to_string()))?;
        for (ins, parsed) in resolved.instructions.iter().zip(&df.stages[0].instructions) {
            if ins.copy_from.is_some() {
                return Err(bad(format!(
                    "{}: COPY --from in a trigger is not supported",
                    ins.original
                )));
            }
            let ins = ResolvedInstruction { line, ..ins.clone() };
            s = self.step(s, &ins, &parsed.command, None)?;
        }
        Ok(s)
    }

    /// Runs one instruction on `state` (or takes its result from the cache).
    fn step(
        &mut self,
        state: State,
        ins: &ResolvedInstruction,
        parsed: &Command,
        from: Option<&State>,
    ) -> Result<State, BuildError> {
        let line = ins.line;
        // COPY/ADD: the sources, whose content is part of the key.
        let copy = match &ins.command {
            Command::Copy(c) | Command::Add(c) => {
                let view = match from {
                    Some(f) => Some(merged_view(&self.layers(f)?)?),
                    None => None,
                };
                let sources = view.as_ref().unwrap_or(&self.context);
                Some(self.copy_entries(&state, c, ins, sources, None)?)
            }
            _ => None,
        };
        let content = copy.as_ref().map_or(String::new(), |p| p.content.clone());
        let key = Cache::key(&[
            &state.parent_key(),
            &format!("{:?}", ins.command),
            &format!("{:?}", ins.args),
            &content,
        ]);
        if let Some(id) = self.cache.get(&self.stores.read(), &key) {
            self.cached += 1;
            self.say(" ---> Using cache")?;
            let mut s = self.load(&id)?;
            s.cmd_set = state.cmd_set || matches!(ins.command, Command::Cmd(_));
            return Ok(s);
        }
        let cmd_set = state.cmd_set;
        let mut s = state;
        let next = match &ins.command {
            Command::Env(pairs) => {
                let mut env = s.env();
                for kv in pairs {
                    let entry = format!("{}={}", kv.key, kv.value);
                    match env
                        .iter_mut()
                        .find(|e| e.split_once('=').map(|(k, _)| k) == Some(&kv.key))
                    {
                        Some(slot) => *slot = entry,
                        None => env.push(entry),
                    }
                }
                s.runtime().insert("Env".into(), json!(env));
                let text: Vec<String> = pairs
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect();
                let by = Self::nop(&s, &format!("ENV {}", text.join(" ")), true);
                self.commit(s, by, None)?
            }
            Command::Label(pairs) => {
                let labels = s.runtime().entry("Labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                for kv in pairs {
                    labels[&kv.key] = kv.value.clone().into();
                }
                let text: Vec<String> = pairs
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect();
                let by = Self::nop(&s, &format!("LABEL {}", text.join(" ")), true);
                self.commit(s, by, None)?
            }
            Command::Expose(ports) => {
                let mut all = Vec::new();
                for p in ports {
                    all.extend(crate::commit::port_spec(p).map_err(|m| step_err(line, m))?);
                }
                let exposed = s.runtime().entry("ExposedPorts").or_insert_with(|| json!({}));
                if !exposed.is_object() {
                    *exposed = json!({});
                }
                for p in all {
                    exposed[&p] = json!({});
                }
                // The classic builder lists the ports as written, sorted.
                let mut sorted = ports.clone();
                sorted.sort();
                let by = Self::nop(&s, &format!("EXPOSE {}", sorted.join(" ")), true);
                self.commit(s, by, None)?
            }
            Command::User(u) => {
                s.runtime().insert("User".into(), u.clone().into());
                let by = Self::nop(&s, &format!("USER {u}"), true);
                self.commit(s, by, None)?
            }
            Command::StopSignal(sig) => {
                s.runtime().insert("StopSignal".into(), sig.clone().into());
                let by = Self::nop(&s, &format!("STOPSIGNAL {sig}"), true);
                self.commit(s, by, None)?
            }
            Command::Volume(vols) => {
                let v = s.runtime().entry("Volumes").or_insert_with(|| json!({}));
                if !v.is_object() {
                    *v = json!({});
                }
                for vol in vols {
                    if vol.trim().is_empty() {
                        return Err(step_err(line, "VOLUME specified can not be an empty string"));
                    }
                    v[vol] = json!({});
                }
                let by = Self::nop(&s, &format!("VOLUME [{}]", vols.join(" ")), true);
                self.commit(s, by, None)?
            }
            Command::Cmd(cl) | Command::Entrypoint(cl) => {
                let argv = match cl {
                    CommandLine::Shell(c) => {
                        let mut a = s.shell();
                        a.push(c.clone());
                        a
                    }
                    CommandLine::Exec(a) => a.clone(),
                };
                let is_cmd = matches!(ins.command, Command::Cmd(_));
                let name = if is_cmd { "Cmd" } else { "Entrypoint" };
                s.runtime().insert(name.into(), json!(argv));
                if !is_cmd && !cmd_set {
                    s.runtime().insert("Cmd".into(), Value::Null);
                }
                let keyword = if is_cmd { "CMD" } else { "ENTRYPOINT" };
                let by = Self::nop(&s, &format!("{keyword} {}", go_quoted(&argv)), true);
                s.cmd_set = cmd_set || is_cmd;
                self.commit(s, by, None)?
            }
            Command::Shell(sh) => {
                // Written with the new shell, as the classic builder does.
                s.runtime().insert("Shell".into(), json!(sh));
                let by = Self::nop(&s, &format!("SHELL [{}]", sh.join(" ")), true);
                self.commit(s, by, None)?
            }
            Command::Arg(resolved) => {
                // The classic builder writes the defaults as the Dockerfile has them.
                let args = match parsed {
                    Command::Arg(a) => a,
                    _ => resolved,
                };
                let text: Vec<String> = args
                    .iter()
                    .map(|a| match &a.default {
                        Some(v) => format!("{}={v}", a.name),
                        None => a.name.clone(),
                    })
                    .collect();
                let by = Self::nop(&s, &format!("ARG {}", text.join(" ")), true);
                self.commit(s, by, None)?
            }
            Command::Onbuild { expression, .. } => {
                let list = s.runtime().entry("OnBuild").or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                list.as_array_mut()
                    .expect("set above")
                    .push(expression.clone().into());
                let by = Self::nop(&s, &format!("ONBUILD {expression}"), true);
                self.commit(s, by, None)?
            }
            Command::Maintainer(m) => {
                s.config["author"] = m.clone().into();
                let by = Self::nop(&s, &format!("MAINTAINER {m}"), true);
                self.commit(s, by, None)?
            }
            Command::Healthcheck(hc) => {
                let value = match hc {
                    None => json!({"Test": ["NONE"]}),
                    Some(h) => {
                        let test = match &h.test {
                            CommandLine::Shell(c) => json!(["CMD-SHELL", c]),
                            CommandLine::Exec(a) => {
                                let mut t = vec!["CMD".to_string()];
                                t.extend(a.iter().cloned());
                                json!(t)
                            }
                        };
                        let mut v = json!({"Test": test});
                        for (k, d) in [
                            ("Interval", h.interval),
                            ("Timeout", h.timeout),
                            ("StartPeriod", h.start_period),
                            ("StartInterval", h.start_interval),
                        ] {
                            if !d.is_zero() {
                                v[k] = (d.as_nanos() as u64).into();
                            }
                        }
                        if let Some(r) = h.retries {
                            v["Retries"] = r.into();
                        }
                        v
                    }
                };
                s.runtime().insert("Healthcheck".into(), value);
                let rest = ins
                    .original
                    .split_once(char::is_whitespace)
                    .map_or("", |(_, r)| r.trim());
                let by = Self::nop(&s, &format!("HEALTHCHECK {rest}"), true);
                self.commit(s, by, None)?
            }
            Command::Workdir(w) => {
                let current = s.config["config"]["WorkingDir"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let dir = if w.starts_with('/') {
                    crate::commit::clean_path(w)
                } else {
                    crate::commit::clean_path(&format!(
                        "{}/{w}",
                        if current.is_empty() { "/" } else { &current }
                    ))
                };
                s.runtime().insert("WorkingDir".into(), dir.clone().into());
                let layers = self.layers(&s)?;
                let layer = if lookup(&layers, &dir).is_some_and(|m| m.is_dir()) {
                    None
                } else {
                    let mut entries = Vec::new();
                    self.parents(&layers, &dir, true, (0, 0), &mut entries);
                    Some(TempLayer::write(self.scratch()?, &mut entries, false)?)
                };
                let by = Self::nop(&s, &format!("WORKDIR {dir}"), false);
                self.commit(s, by, layer)?
            }
            Command::Copy(c) | Command::Add(c) => {
                let CopyPlan {
                    mut entries,
                    text,
                    archives,
                    ..
                } = copy.expect("computed above");
                if archives > 0 {
                    // Local archives are extracted only now that the step runs (their
                    // own hashes made the key).
                    entries = self
                        .copy_entries(&s, c, ins, &self.context, Some(self.scratch()?))?
                        .entries;
                }
                let tar = TempLayer::write(self.scratch()?, &mut entries, from.is_none())?;
                let by = Self::nop(&s, &text, false);
                self.commit(s, by, Some(tar))?
            }
            Command::Run(cl) => self.run(s, cl, ins)?,
        };
        let mut next = next;
        next.cmd_set = cmd_set || matches!(ins.command, Command::Cmd(_));
        if let Some(id) = &next.id {
            self.cache.put(&key, id)?;
        }
        Ok(next)
    }

    /// The image's unpacked layer directories (unpacked now when they are not).
    fn layers(&self, s: &State) -> Result<Vec<PathBuf>, BuildError> {
        match &s.id {
            None => Ok(Vec::new()),
            // Read-only when every layer is unpacked and recorded; else unpacked now.
            Some(id) => match self.stores.read().runnable_image(&id.to_string()) {
                Ok(image) => Ok(image.layers),
                Err(_) => Ok(self.stores.write()?.runnable_image(&id.to_string())?.layers),
            },
        }
    }

    /// Directory entries for `dir` and its parents: those the image has keep its metadata;
    /// missing ones are made 0755, owned by `ids` (the last, `dir` itself, only when
    /// `include_self`).
    fn parents(
        &self,
        layers: &[PathBuf],
        dir: &str,
        include_self: bool,
        ids: (u64, u64),
        entries: &mut Vec<LayerEntry>,
    ) {
        let comps: Vec<&str> = dir
            .trim_matches('/')
            .split('/')
            .filter(|c| !c.is_empty())
            .collect();
        let n = if include_self {
            comps.len()
        } else {
            comps.len().saturating_sub(1)
        };
        for i in 0..n {
            let path = comps[..=i].join("/");
            if entries.iter().any(|e| e.path == path) {
                continue;
            }
            let e = match lookup(layers, &path) {
                Some(md) => LayerEntry {
                    path,
                    kind: LayerKind::Dir,
                    mode: md.mode() & 0o7777,
                    uid: u64::from(md.uid()),
                    gid: u64::from(md.gid()),
                    mtime: md.mtime().max(0) as u64,
                },
                None => LayerEntry {
                    path,
                    kind: LayerKind::Dir,
                    mode: 0o755,
                    uid: ids.0,
                    gid: ids.1,
                    mtime: epoch_now(),
                },
            };
            entries.push(e);
        }
    }

    /// A `COPY`/`ADD`'s layer entries, the hash of what they hold (paths, types, modes,
    /// owners, contents, link targets), and its history text.
    fn copy_entries(
        &self,
        s: &State,
        c: &CopyArgs,
        ins: &ResolvedInstruction,
        sources: &BTreeMap<String, ContextEntry>,
        extract: Option<&Scratch>,
    ) -> Result<CopyPlan, BuildError> {
        let line = ins.line;
        let is_add = matches!(ins.command, Command::Add(_));
        let layers = self.layers(s)?;
        let ids = match &c.chown {
            Some(spec) => chown_ids(spec, &layers, line)?,
            None => (0, 0),
        };
        let chmod = match &c.chmod {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| step_err(line, format!("invalid --chmod={m}: want an octal mode")))?,
            ),
            None => None,
        };
        // The sources, as context paths.
        let mut matched: Vec<String> = Vec::new();
        for src in &c.sources {
            if is_add
                && (src.starts_with("http://") || src.starts_with("https://") || src.starts_with("git@"))
            {
                return Err(step_err(
                    line,
                    format!(
                        "ADD {src}: URLs are not supported (nothing is downloaded during a build): \
                         download it into the context and ADD or COPY the file"
                    ),
                ));
            }
            let rel = context_path(src, line)?;
            if rel.contains(['*', '?', '[']) {
                let hits: Vec<String> = sources.keys().filter(|p| match_path(&rel, p)).cloned().collect();
                if hits.is_empty() {
                    return Err(step_err(line, format!("no source files were specified: {src}")));
                }
                matched.extend(hits);
            } else if rel.is_empty() || sources.contains_key(&rel) {
                matched.push(rel);
            } else {
                return Err(step_err(
                    line,
                    format!(
                        "COPY failed: file not found in build context or excluded by .dockerignore: {src}"
                    ),
                ));
            }
        }
        let workdir = s.config["config"]["WorkingDir"]
            .as_str()
            .unwrap_or("/")
            .to_string();
        let dest_raw = if c.dest.starts_with('/') {
            c.dest.clone()
        } else {
            format!("{}/{}", if workdir.is_empty() { "/" } else { &workdir }, c.dest)
        };
        let dest_is_dir = c.dest.ends_with('/')
            || c.dest == "."
            || matched.len() > 1
            || lookup(&layers, &crate::commit::clean_path(&dest_raw)).is_some_and(|m| m.is_dir());
        if matched.len() > 1 && !c.dest.ends_with('/') {
            return Err(step_err(
                line,
                "When using COPY with more than one source file, the destination must be a directory and end with a /",
            ));
        }
        let dest = crate::commit::clean_path(&dest_raw);
        let dest_rel = dest.trim_start_matches('/').to_string();
        let mut entries: Vec<LayerEntry> = Vec::new();
        // Positions in `entries` by path (see `upsert`).
        let mut positions = std::collections::HashMap::new();
        let mut hashes: Vec<String> = Vec::new();
        let mut kinds = BTreeSet::new();
        // The one file source's own hash (an archive's, not its entries').
        let mut file_hash = None;
        // Local archives `ADD` extracts, by their own hash and destination (their entries
        // are only there when `extract` is given, and never part of the content hash).
        let mut archives: Vec<String> = Vec::new();
        let join = |a: &str, b: &str| {
            if a.is_empty() {
                b.to_string()
            } else if b.is_empty() {
                a.to_string()
            } else {
                format!("{a}/{b}")
            }
        };
        for src in &matched {
            let is_dir = src.is_empty() || sources.get(src).is_some_and(|e| e.kind == Kind::Dir);
            // (context path, path in the image)
            let mut items: Vec<(String, String)> = Vec::new();
            if is_dir {
                kinds.insert("dir");
                self.parents(&layers, &dest, true, ids, &mut entries);
                if let Some(last) = entries.iter_mut().rev().find(|e| e.path == dest_rel)
                    && lookup(&layers, &dest).is_none()
                    && let Some(e) = sources.get(src)
                {
                    last.mode = chmod.unwrap_or(e.mode);
                }
                let prefix = if src.is_empty() {
                    String::new()
                } else {
                    format!("{src}/")
                };
                for p in sources.keys().filter(|p| p.starts_with(&prefix) && !p.is_empty()) {
                    items.push((p.clone(), join(&dest_rel, &p[prefix.len()..])));
                }
            } else {
                kinds.insert("file");
                if let Some(e) = sources.get(src)
                    && e.kind == Kind::File
                {
                    let hash = self.hashes.hash(&e.host)?;
                    file_hash = Some(hash.clone());
                    // ADD of a local archive: its entries, in the destination directory.
                    if is_add && is_archive(&e.host, line)? {
                        self.parents(&layers, &dest, true, (0, 0), &mut entries);
                        archives.push(format!("{dest_rel}\0archive {hash}\n"));
                        if let Some(scratch) = extract {
                            for x in extract_archive(&e.host, scratch, &dest_rel, line)? {
                                upsert(&mut entries, &mut positions, x);
                            }
                        }
                        continue;
                    }
                }
                let name = src.rsplit('/').next().unwrap_or(src);
                let target = if dest_is_dir {
                    self.parents(&layers, &dest, true, ids, &mut entries);
                    join(&dest_rel, name)
                } else {
                    self.parents(&layers, &dest, false, ids, &mut entries);
                    dest_rel.clone()
                };
                items.push((src.clone(), target));
            }
            for (from, to) in items {
                let e = &sources[&from];
                let host = e.host.clone();
                let kind = match &e.kind {
                    Kind::Dir => LayerKind::Dir,
                    Kind::File => LayerKind::File(host.clone(), self.hashes.hash(&host)?),
                    Kind::Symlink(t) => LayerKind::Symlink(t.clone()),
                };
                let mode = match (&kind, chmod) {
                    (LayerKind::Symlink(_), _) => 0o777,
                    (_, Some(m)) => m,
                    _ => e.mode,
                };
                let entry = LayerEntry {
                    path: to,
                    kind,
                    mode,
                    uid: ids.0,
                    gid: ids.1,
                    mtime: clamp(e.mtime),
                };
                upsert(&mut entries, &mut positions, entry);
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let mut content = Sha256::new();
        for a in &archives {
            content.update(a.as_bytes());
        }
        for e in &entries {
            let what = match &e.kind {
                LayerKind::Dir => "dir".to_string(),
                LayerKind::File(_, h) => format!("file {h}"),
                LayerKind::Extracted(_) => continue,
                LayerKind::Symlink(t) => format!("link {t}"),
            };
            let rec = format!("{}\0{what}\0{:o}\0{}\0{}\n", e.path, e.mode, e.uid, e.gid);
            content.update(rec.as_bytes());
            if let LayerKind::File(_, h) = &e.kind {
                hashes.push(h.clone());
            }
        }
        let content = hex::encode(content.finalize());
        let source = if let (1, Some(h)) = (matched.len(), &file_hash) {
            format!("file:{h}")
        } else if matched.len() == 1 && kinds.contains("file") && hashes.len() == 1 {
            format!("file:{}", hashes[0])
        } else if matched.len() == 1 {
            format!("dir:{content}")
        } else {
            format!("multi:{content}")
        };
        let keyword = if is_add { "ADD" } else { "COPY" };
        // As the classic builder writes it: the destination as given, and `--chown` glued
        // to the source's hash.
        let chown = c
            .chown
            .as_deref()
            .map_or(String::new(), |o| format!("--chown={o}"));
        let text = format!("{keyword} {chown}{source} in {} ", c.dest);
        Ok(CopyPlan {
            entries,
            content,
            text,
            archives: archives.len(),
        })
    }

    /// `RUN`: a container from the current image runs the command (through the `SHELL`
    /// for the shell form), its build arguments in its environment; its changes become
    /// one layer.
    fn run(&mut self, s: State, cl: &CommandLine, ins: &ResolvedInstruction) -> Result<State, BuildError> {
        let line = ins.line;
        let s = if s.id.is_none() {
            self.store_image(s, None)?
        } else {
            s
        };
        let id = s.id.expect("stored above");
        let argv = match cl {
            CommandLine::Shell(c) => {
                let mut a = s.shell();
                a.push(c.clone());
                a
            }
            CommandLine::Exec(a) => a.clone(),
        };
        if argv.is_empty() {
            return Err(step_err(line, "RUN: no command"));
        }
        // The build arguments a RUN sees: those with a value, not replaced by an ENV.
        let env = s.env();
        let args: Vec<(String, String)> = ins
            .args
            .iter()
            .filter(|(k, _)| {
                !env.iter()
                    .any(|e| e.split_once('=').map(|(ek, _)| ek) == Some(k.as_str()))
            })
            .cloned()
            .collect();
        let mut created_by = argv.join(" ");
        if !args.is_empty() {
            let mut sorted = args.clone();
            sorted.sort();
            let kv: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
            created_by = format!("|{} {} {created_by}", sorted.len(), kv.join(" "));
        }
        let image = self.stores.write()?.runnable_image(&id.to_string())?;
        let start = StartOptions {
            image: id.to_string(),
            command: argv.clone(),
            entrypoint: Some(String::new()),
            env: args.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            network: self.opts.network,
            ..StartOptions::default()
        };
        let c = crate::start::prepare_runnable(self.store_root, &start, image)?;
        let dir = c.dir(self.store_root);
        let _remove = RemoveDir(dir.clone());
        self.say(&format!(" ---> Running in {}", &c.id[..12]))?;
        let mut cmd = std::process::Command::new(&self.opts.supervisor);
        cmd.arg("--root")
            .arg(self.store_root)
            .arg("__init")
            .arg(&dir)
            .stdin(std::process::Stdio::null());
        let mut child = crate::sys::spawn_supervisor(cmd, crate::sys::SupervisorGroup::OwnGroup)
            .map_err(io_err("start the RUN container's supervisor"))?;
        let status = child.wait().map_err(io_err("wait for the RUN container"))?;
        self.runs += 1;
        let code = crate::container::read_state(&dir)
            .ok()
            .and_then(|st| st.exit_code)
            .unwrap_or_else(|| status.code().unwrap_or(128));
        if code != 0 || !status.success() {
            return Err(BuildError::Run {
                line,
                command: argv.join(" "),
                code: if code != 0 {
                    code
                } else {
                    status.code().unwrap_or(1)
                },
            });
        }
        let epoch = source_date_epoch();
        if let Some(e) = epoch {
            clamp_tree(&dir.join("upper"), e).map_err(io_err("clamp the RUN's mtimes"))?;
        }
        let report = crate::commit::commit_untagged(
            self.stores.write()?.as_ref(),
            &c,
            &dir,
            &CommitOptions::default(),
            Some(&created_by),
            epoch.map(|_| created()).as_deref(),
        )?;
        let mut next = self.load(&report.image_id)?;
        next.cmd_set = s.cmd_set;
        Ok(next)
    }
}

/// Clamps the mtimes under `root` (a stopped container's upper directory: nothing changes
/// it meanwhile) to `epoch`, never following a symlink.
fn clamp_tree(root: &Path, epoch: u64) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir)? {
            let path = e?.path();
            let md = std::fs::symlink_metadata(&path)?;
            if md.is_dir() {
                todo.push(path.clone());
            }
            if md.mtime() > epoch as i64 {
                let at = Timespec {
                    tv_sec: epoch as i64,
                    tv_nsec: 0,
                };
                let times = Timestamps {
                    last_access: at,
                    last_modification: at,
                };
                rustix::fs::utimensat(CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
    }
    Ok(())
}

/// Removes a RUN container's directory when the step ends, however it ends.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `ADD` extracts this context file: a tar archive, plain or gzip-compressed
/// (bzip2 and xz are refused); any other file is copied as it is.
fn is_archive(host: &Path, line: usize) -> Result<bool, BuildError> {
    let mut head = Vec::new();
    std::fs::File::open(host)
        .and_then(|f| f.take(262).read_to_end(&mut head))
        .map_err(io_err(format!("read {}", host.display())))?;
    let is_tar = |h: &[u8]| h.len() >= 262 && &h[257..262] == b"ustar";
    if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(step_err(
            line,
            format!(
                "ADD of a bzip2 or xz archive ({}) is not supported yet",
                host.display()
            ),
        ));
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        let f = std::fs::File::open(host).map_err(io_err(format!("read {}", host.display())))?;
        let mut inner = Vec::new();
        let ok = flate2::read::GzDecoder::new(f)
            .take(262)
            .read_to_end(&mut inner)
            .is_ok();
        return Ok(ok && is_tar(&inner));
    }
    Ok(is_tar(&head))
}

/// The entries `ADD` makes of a local archive under `dest_rel`: the archive is unpacked
/// into the build's scratch directory by the store's layer unpacker (streamed, its caps on
/// headers, names and sizes, nothing written outside its directory) and the tree read
/// back. Entries keep the archive's modes and owners and its hard links; devices and
/// FIFOs are left out; a `.wh.` name, which would be a whiteout in the image, fails the step.
fn extract_archive(
    host: &Path,
    scratch: &Scratch,
    dest_rel: &str,
    line: usize,
) -> Result<Vec<LayerEntry>, BuildError> {
    let bad = |m: String| step_err(line, format!("ADD {}: {m}", host.display()));
    let dir = scratch.path("add");
    let f = std::fs::File::open(host).map_err(io_err(format!("read {}", host.display())))?;
    let opts = strata_store::UnpackOptions {
        allow_devices: false,
        skip_devices: true,
        ..Default::default()
    };
    let report =
        strata_store::unpack_layer(io::BufReader::new(f), &dir, &opts).map_err(|e| bad(e.to_string()))?;
    if report.whiteouts > 0 || report.opaque_dirs > 0 {
        return Err(bad(
            "the archive has a name starting with .wh., which would be a whiteout".to_string(),
        ));
    }
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(&dir).min_depth(1).sort_by_file_name() {
        let e = e.map_err(|e| bad(e.to_string()))?;
        let md = e.metadata().map_err(|e| bad(e.to_string()))?;
        let rel = e
            .path()
            .strip_prefix(&dir)
            .map_err(|_| bad("a path outside the extraction".to_string()))?
            .to_string_lossy()
            .into_owned();
        let kind = if md.is_dir() {
            LayerKind::Dir
        } else if md.is_file() {
            LayerKind::Extracted(e.path().to_path_buf())
        } else if md.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).map_err(|e| bad(e.to_string()))?;
            LayerKind::Symlink(target.to_string_lossy().into_owned())
        } else {
            continue;
        };
        let mode = if matches!(kind, LayerKind::Symlink(_)) {
            0o777
        } else {
            md.mode() & 0o7777
        };
        out.push(LayerEntry {
            path: if dest_rel.is_empty() {
                rel
            } else {
                format!("{dest_rel}/{rel}")
            },
            kind,
            mode,
            uid: u64::from(md.uid()),
            gid: u64::from(md.gid()),
            mtime: clamp(md.mtime().max(0) as u64),
        });
    }
    Ok(out)
}

/// Adds `e` to `entries`, replacing the entry of the same path. `positions` indexes the
/// first `positions.len()` entries by path (paths are unique; entries are only ever
/// appended or replaced, so the rest are indexed here first).
fn upsert(
    entries: &mut Vec<LayerEntry>,
    positions: &mut std::collections::HashMap<String, usize>,
    e: LayerEntry,
) {
    for (i, x) in entries.iter().enumerate().skip(positions.len()) {
        positions.insert(x.path.clone(), i);
    }
    match positions.get(&e.path) {
        Some(&i) => entries[i] = e,
        None => {
            positions.insert(e.path.clone(), entries.len());
            entries.push(e);
        }
    }
}

/// `SOURCE_DATE_EPOCH`, when set.
fn source_date_epoch() -> Option<u64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.parse().ok()
}

/// A file's mtime, clamped to `SOURCE_DATE_EPOCH`.
fn clamp(mtime: u64) -> u64 {
    source_date_epoch().map_or(mtime, |e| mtime.min(e))
}

fn epoch_now() -> u64 {
    source_date_epoch().unwrap_or_else(|| chrono::Utc::now().timestamp().max(0) as u64)
}

/// The images' `created`: now, or `SOURCE_DATE_EPOCH`.
fn created() -> String {
    let at = match source_date_epoch() {
        Some(e) => chrono::DateTime::from_timestamp(e as i64, 0).unwrap_or_else(chrono::Utc::now),
        None => chrono::Utc::now(),
    };
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_one_component_each() {
        assert!(match_path("*.txt", "a.txt"));
        assert!(!match_path("*.txt", "d/a.txt"));
        assert!(match_path("d/?.txt", "d/a.txt"));
        assert!(match_path("[ab]*", "beta"));
        assert!(!match_path("[^ab]*", "beta"));
        assert!(match_path("f[0-9]", "f7"));
        assert!(!match_path("f[0-9]", "fx"));
        assert!(match_path("*", ""));
        assert!(match_path("a*b*c", "aXbYbZc"));
        assert!(!match_path("a*b*c", "aXbYbZ"));
        assert!(match_path("*.tar.*", "x.tar.gz"));
        assert!(match_path("\\*x", "*x"));
        assert!(!match_path("\\*x", "ax"));
        assert!(!match_path("*[ab", "xa"));
        assert!(match_path("**b", "aab"));
        // Stars against a long name that almost matches: a recursive matcher takes
        // C(60, 20) steps here; this one len(pattern) × len(name).
        let name = "a".repeat(60);
        let pattern = format!("{}b", "*a".repeat(20));
        assert!(!match_path(&pattern, &name));
        assert!(match_path(&pattern, &format!("{name}b")));
    }

    #[test]
    fn sources_stay_in_the_context() {
        assert_eq!(context_path("./a/../b/", 1).unwrap(), "b");
        assert_eq!(context_path("/x", 1).unwrap(), "x");
        assert_eq!(context_path(".", 1).unwrap(), "");
        assert!(
            context_path("../etc/passwd", 3)
                .unwrap_err()
                .to_string()
                .contains("line 3")
        );
    }

    #[test]
    fn lookups_never_go_through_an_images_symlinks() {
        let tmp = std::env::temp_dir().join(format!("strata-build-lookup-{}", std::process::id()));
        let (lower, upper) = (tmp.join("lower"), tmp.join("upper"));
        std::fs::create_dir_all(lower.join("real/dir")).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        std::os::unix::fs::symlink("/etc", upper.join("lnk")).unwrap();
        std::os::unix::fs::symlink("/", lower.join("root-link")).unwrap();
        let layers = [lower.clone(), upper.clone()];
        assert!(lookup(&layers, "/real/dir").is_some_and(|m| m.is_dir()));
        assert!(lookup(&layers, "/lnk").is_some_and(|m| m.file_type().is_symlink()));
        for through in ["/lnk/passwd", "/root-link/etc", "/lnk/."] {
            assert!(lookup(&layers, through).is_none(), "{through}");
        }
        assert!(lookup(&layers, "/missing/x").is_none());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn file_hashes_are_remembered_by_stat_and_never_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, ctx) = (tmp.path().join("store"), tmp.path().join("ctx"));
        std::fs::create_dir_all(&ctx).unwrap();
        let f = ctx.join("a.txt");
        std::fs::write(&f, "one").unwrap();
        let one = sha256_file(&f).unwrap();
        // Written over a second ago: its record is trusted.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let hashes = FileHashes::open(&root, &ctx);
        assert_eq!(hashes.hash(&f).unwrap(), one);
        assert_eq!(hashes.hits.get(), 0);
        drop(hashes);
        let hashes = FileHashes::open(&root, &ctx);
        assert_eq!(hashes.hash(&f).unwrap(), one);
        assert_eq!(hashes.hits.get(), 1);
        drop(hashes);
        // Same size, the mtime put back: the ctime tells, and the new content is hashed.
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::fs::write(&f, "two").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let hashes = FileHashes::open(&root, &ctx);
        assert_eq!(hashes.hash(&f).unwrap(), sha256_file(&f).unwrap());
        assert_ne!(hashes.hash(&f).unwrap(), one);
        assert_eq!(hashes.hits.get(), 0);
    }

    #[test]
    fn only_the_hosts_platform_is_built() {
        let host = strata_store::Platform::host().to_string();
        for ok in [
            host.as_str(),
            "linux",
            "LINUX/AMD64",
            "linux/x86_64",
            "linux/amd64/v1",
        ] {
            if host == "linux/amd64" || ok == host || ok == "linux" {
                assert_eq!(check_platform(ok), Ok(()), "{ok}");
            }
        }
        for bad in [
            "linux/arm64",
            "windows/amd64",
            "linux/s390x",
            "linux/amd64/v3/x",
            "/amd64",
        ] {
            if bad != host {
                assert!(check_platform(bad).is_err(), "{bad}");
            }
        }
        assert!(
            check_platform("linux/arm64")
                .unwrap_err()
                .contains("no emulation")
        );
        let args = automatic_args();
        let get = |k: &str| args.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("TARGETPLATFORM"), Some(host.as_str()));
        assert_eq!(get("BUILDPLATFORM"), Some(host.as_str()));
        assert_eq!(get("TARGETOS"), Some("linux"));
        assert!(get("BUILDARCH").is_some_and(|a| host.ends_with(a)));
        assert_eq!(args.len(), 8);
    }

    #[test]
    fn layers_are_sorted_and_deterministic() {
        let tmp = std::env::temp_dir().join(format!("strata-build-test-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("f"), "hello").unwrap();
        let mk = || {
            vec![
                LayerEntry {
                    path: "b/f".into(),
                    kind: LayerKind::File(tmp.join("f"), String::new()),
                    mode: 0o644,
                    uid: 1,
                    gid: 2,
                    mtime: 5,
                },
                LayerEntry {
                    path: "a".into(),
                    kind: LayerKind::Symlink("b/f".into()),
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                    mtime: 5,
                },
                LayerEntry {
                    path: "b".into(),
                    kind: LayerKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 5,
                },
            ]
        };
        let one = layer_tar(&mut mk(), true, Vec::new()).unwrap();
        let two = layer_tar(&mut mk(), true, Vec::new()).unwrap();
        assert_eq!(one, two);
        let mut ar = tar::Archive::new(&one[..]);
        let paths: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(paths, ["a", "b/", "b/f"]);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
