//! `load`: reads a docker-save tar, an OCI archive tar or an OCI layout directory (tars
//! optionally gzip/zstd compressed) into the store, verifying every digest.
//!
//! Entries are staged (hashed, invisible) first; only after the archive's structure and
//! digests check out are blobs committed, layers unpacked (verifying diff IDs) and
//! metadata recorded. On failure, what this load added is removed again.

use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde_json::json;

use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ArchiveError, DockerSaveEntry};
use crate::blobs::Staged;
use crate::digest::Digest;
use crate::index::IdKind;
use crate::layers::chain_id;
use crate::manifest::{self, Config, MAX_MANIFEST_BYTES, Manifest, Platform};
use crate::meta::Cf;
use crate::reference::ImageRef;
use crate::store::Store;
use crate::tar_headers::{BlockSource, HeaderLimits, HeaderReader, ReadSource, padding};
use crate::unpack::Compression;

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// How a load runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Largest single archive entry accepted.
    pub max_entry_bytes: u64,
    /// Most tar headers (entries plus PAX / GNU long-name headers) accepted in one archive.
    pub max_entries: u64,
    /// Longest entry path or link target, in bytes.
    pub max_path_len: usize,
    /// Largest PAX extended header accepted, in bytes.
    pub max_pax_len: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_entry_bytes: 64 << 30,
            max_entries: 100_000,
            max_path_len: 4096,
            max_pax_len: 1 << 20,
        }
    }
}

/// An image the load stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadedImage {
    /// Image ID (config digest); `None` for an index.
    pub id: Option<Digest>,
    pub manifest: Digest,
    pub tags: Vec<String>,
}

/// What a load did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub images: Vec<LoadedImage>,
    pub blobs_written: u64,
    pub blobs_existing: u64,
    pub bytes_written: u64,
    pub layers_unpacked: u64,
}

/// Loads an archive file or OCI layout directory into the store.
pub fn load(store: &Store, path: &Path, opts: &LoadOptions) -> Result<LoadReport> {
    let (dir, staged, links) = if path.is_dir() {
        (Some(path.to_path_buf()), HashMap::new(), HashMap::new())
    } else {
        let (files, links) = scan_tar(store, path, opts)?;
        (None, files, links)
    };
    let mut loader = Loader {
        store,
        dir,
        staged,
        links,
        opts,
        new_blobs: Vec::new(),
        new_layers: Vec::new(),
        manifests: Vec::new(),
        report: LoadReport::default(),
    };
    match loader.run() {
        Ok(()) => Ok(loader.report),
        Err(e) => {
            loader.roll_back();
            Err(e)
        }
    }
}

/// Normalises an archive path; refuses absolute paths and `..`.
fn clean_path(raw: &str) -> Result<Option<String>> {
    let mut parts = Vec::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => {
                parts.push(p.to_str().ok_or_else(|| ArchiveError::UnsafePath(raw.into()))?)
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::UnsafePath(raw.into()));
            }
        }
    }
    Ok(if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    })
}

/// Reads every entry of a (possibly compressed) tar into the staging area.
type Entries = (HashMap<String, Staged>, HashMap<String, String>);

fn scan_tar(store: &Store, path: &Path, opts: &LoadOptions) -> Result<Entries> {
    let file = fs_err::File::open(path).map_err(ArchiveError::io("open archive"))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = {
        use std::io::BufRead;
        reader
            .fill_buf()
            .map_err(ArchiveError::io("read archive"))?
            .to_vec()
    };
    let decoded: Box<dyn Read> = match Compression::detect(&head) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(ArchiveError::io("zstd"))?)
        }
        Compression::None => Box::new(reader),
    };
    let mut src = ReadSource::new(decoded);
    let mut reader = HeaderReader::new(HeaderLimits {
        max_headers: opts.max_entries,
        max_path_len: opts.max_path_len,
        max_pax_len: opts.max_pax_len,
    });
    let mut files = HashMap::new();
    let mut links = HashMap::new();
    loop {
        let entry = match reader.next(&mut src) {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(e) => return Err(tar_error(e, src.position())),
        };
        let raw = String::from_utf8_lossy(&entry.path).into_owned();
        let name = clean_path(&raw)?;
        let data = entry.size;
        let mut consumed = 0;
        match (name, entry.kind) {
            (Some(name), b'0' | b'\0' | b'7') => {
                if entry.pax.sparse_version().is_some() {
                    return Err(ArchiveError::Corrupt(format!(
                        "{name}: sparse entries are not supported"
                    )));
                }
                if data > opts.max_entry_bytes {
                    return Err(ArchiveError::Corrupt(format!(
                        "{name}: entry of {data} bytes is over the limit"
                    )));
                }
                let staged = store
                    .blobs()
                    .stage(io::Read::take(&mut src, data), Some(opts.max_entry_bytes))
                    .map_err(|e| match e {
                        crate::blobs::BlobError::Io { source, .. }
                            if source.kind() == io::ErrorKind::UnexpectedEof =>
                        {
                            ArchiveError::Corrupt(format!("{name}: {source}"))
                        }
                        other => other.into(),
                    })?;
                if staged.size != data {
                    return Err(ArchiveError::Corrupt(format!(
                        "{name}: truncated ({} of {data} bytes)",
                        staged.size
                    )));
                }
                consumed = data;
                files.insert(name, staged);
            }
            (Some(name), kind @ (b'1' | b'2')) => {
                let target = String::from_utf8_lossy(&entry.link).into_owned();
                if target.is_empty() {
                    return Err(ArchiveError::Corrupt(format!("{name}: link without target")));
                }
                let resolved = if kind == b'2' {
                    // Relative to the link's directory.
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    if target.starts_with('/') {
                        return Err(ArchiveError::UnsafePath(format!("{name} -> {target}")));
                    }
                    resolve_relative(dir, &target)
                        .ok_or_else(|| ArchiveError::UnsafePath(format!("{name} -> {target}")))?
                } else {
                    clean_path(&target)?
                        .ok_or_else(|| ArchiveError::UnsafePath(format!("{name} -> {target}")))?
                };
                links.insert(name, resolved);
            }
            (_, b'S') => {
                return Err(ArchiveError::Corrupt(format!(
                    "{raw}: sparse entries are not supported"
                )));
            }
            _ => {}
        }
        let skip = data - consumed + padding(data);
        src.skip_bytes(skip)
            .map_err(|e| ArchiveError::Corrupt(format!("{raw}: {e}")))?;
    }
    Ok((files, links))
}

/// An error of the outer tar: the first header failing to parse means the file is no tar.
fn tar_error(e: crate::unpack::UnpackError, position: u64) -> ArchiveError {
    use crate::unpack::UnpackError;
    match e {
        UnpackError::BadHeader { offset: 0, .. } | UnpackError::Truncated { .. } if position <= 512 => {
            ArchiveError::NotATar
        }
        UnpackError::Read(source) => ArchiveError::Io {
            context: "read archive".into(),
            source,
        },
        other => ArchiveError::Corrupt(other.to_string()),
    }
}

/// Joins a relative link target onto `dir`, refusing to climb out of the archive.
fn resolve_relative(dir: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

struct Loader<'a> {
    store: &'a Store,
    /// The OCI layout directory, when loading from one (else everything is staged).
    dir: Option<PathBuf>,
    staged: HashMap<String, Staged>,
    links: HashMap<String, String>,
    opts: &'a LoadOptions,
    new_blobs: Vec<Digest>,
    new_layers: Vec<Digest>,
    /// Manifests to record, in order.
    manifests: Vec<(Vec<u8>, String)>,
    report: LoadReport,
}

impl Loader<'_> {
    fn run(&mut self) -> Result<()> {
        let index = self.read_json("index.json")?;
        let docker = self.read_json("manifest.json")?;
        if index.is_none() && docker.is_none() {
            return Err(ArchiveError::NotAnArchive);
        }
        let mut by_config: HashMap<Digest, Digest> = HashMap::new();
        let mut pending_tags: Vec<(ImageRef, Digest)> = Vec::new();
        if let Some(index) = index {
            let descriptors = index
                .get("manifests")
                .and_then(|m| m.as_array())
                .ok_or_else(|| malformed("index.json", "no manifests array"))?
                .clone();
            for d in descriptors {
                let (digest, size, media_type) = descriptor_fields(&d, "index.json")?;
                let Some(stored) = self.load_manifest_tree(&digest, size, &media_type, &mut by_config, 0)?
                else {
                    continue;
                };
                if !self.report.images.iter().any(|i| i.manifest == stored) {
                    self.report.images.push(LoadedImage {
                        id: None,
                        manifest: stored,
                        tags: Vec::new(),
                    });
                }
                if let Some(name) = image_name(&d) {
                    pending_tags.push((name, stored));
                }
            }
        }
        if let Some(docker) = docker {
            let entries: Vec<DockerSaveEntry> =
                serde_json::from_value(docker).map_err(|e| malformed("manifest.json", e))?;
            for entry in entries {
                let manifest = self.load_docker_entry(&entry, &by_config)?;
                for t in entry.repo_tags.iter().flatten() {
                    let r = ImageRef::parse(t).map_err(|e| malformed("manifest.json", e))?;
                    pending_tags.push((r, manifest));
                }
                if !self.report.images.iter().any(|i| i.manifest == manifest) {
                    self.report.images.push(LoadedImage {
                        id: None,
                        manifest,
                        tags: Vec::new(),
                    });
                }
            }
        }
        // Manifests once all content checked out (children before their index), tags last.
        for (bytes, media_type) in std::mem::take(&mut self.manifests) {
            self.store.add_manifest(&bytes, Some(&media_type), None)?;
        }
        for (r, manifest) in pending_tags {
            if r.tag.is_none() {
                continue;
            }
            self.store.tag(&r, &manifest)?;
            if let Some(img) = self.report.images.iter_mut().find(|i| i.manifest == manifest) {
                let t = r.to_string();
                if !img.tags.contains(&t) {
                    img.tags.push(t);
                }
            }
        }
        for img in &mut self.report.images {
            img.id = self.store.get_manifest(&img.manifest)?.and_then(|m| m.config);
        }
        Ok(())
    }

    /// Loads a manifest (and, for an index, its children) whose blob is in the archive.
    /// Returns the digest to tag: the manifest itself, or for an index whose children are
    /// not all in the archive, the child for this platform.
    fn load_manifest_tree(
        &mut self,
        digest: &Digest,
        size: u64,
        media_type: &str,
        by_config: &mut HashMap<Digest, Digest>,
        depth: usize,
    ) -> Result<Option<Digest>> {
        if depth > 4 {
            return Err(malformed("index.json", "indexes nested too deep"));
        }
        let path = blob_path(digest);
        let bytes = self.read_blob_small(&path, digest, size)?;
        let parsed = Manifest::parse(&bytes, Some(media_type)).map_err(|e| malformed(&path, e))?;
        match &parsed {
            Manifest::Image { config, layers, .. } => {
                self.need_blob(
                    &blob_path(&config.digest),
                    Some(&config.digest),
                    Some(config.size),
                )?;
                let layer_digests: Vec<Digest> = layers.iter().map(|l| l.digest).collect();
                for l in layers {
                    self.need_blob(&blob_path(&l.digest), Some(&l.digest), Some(l.size))?;
                }
                if is_config(&config.media_type) {
                    self.unpack_image(&config.digest, &layer_digests)?;
                }
                let stored = self.defer_manifest(bytes, media_type);
                by_config.insert(config.digest, stored);
                Ok(Some(stored))
            }
            Manifest::Index { manifests, .. } => {
                let mut present = Vec::new();
                for child in manifests {
                    let child_path = blob_path(&child.digest);
                    if !self.has(&child_path) && !self.store.blobs().contains(&child.digest) {
                        continue;
                    }
                    let loaded = self.load_manifest_tree(
                        &child.digest,
                        child.size,
                        &child.media_type,
                        by_config,
                        depth + 1,
                    )?;
                    if loaded == Some(child.digest) {
                        present.push(child.clone());
                    }
                }
                if present.len() == manifests.len() {
                    return Ok(Some(self.defer_manifest(bytes, media_type)));
                }
                // A partial index (e.g. one platform saved): tag the best child instead.
                let host = Platform::host();
                Ok(present
                    .iter()
                    .find(|c| c.platform.as_ref().is_some_and(|p| p.satisfies(&host)))
                    .or(present.first())
                    .map(|c| c.digest))
            }
        }
    }

    /// Loads one docker-save `manifest.json` entry, synthesising an OCI manifest unless the
    /// archive's OCI index already stored one for the same config.
    fn load_docker_entry(
        &mut self,
        entry: &DockerSaveEntry,
        by_config: &HashMap<Digest, Digest>,
    ) -> Result<Digest> {
        let config_path =
            clean_path(&entry.config)?.ok_or_else(|| malformed("manifest.json", "empty Config"))?;
        let expected_config = config_name_digest(&config_path);
        let config_digest = self.need_blob(&config_path, expected_config.as_ref(), None)?;
        if let Some(m) = by_config.get(&config_digest) {
            return Ok(*m);
        }
        let config_bytes = self
            .store
            .blobs()
            .read_small(&config_digest, MAX_MANIFEST_BYTES)
            .map_err(|e| malformed(&config_path, e))?;
        let config = Config::parse(&config_bytes).map_err(|e| malformed(&config_path, e))?;
        if config.diff_ids.len() != entry.layers.len() {
            return Err(malformed(
                "manifest.json",
                format!(
                    "{} layers listed, config has {} diff ids",
                    entry.layers.len(),
                    config.diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (i, raw) in entry.layers.iter().enumerate() {
            let path = clean_path(raw)?.ok_or_else(|| malformed("manifest.json", "empty layer path"))?;
            let (digest, size, compression) = self.peek_layer(&path)?;
            // An uncompressed layer's digest is its diff ID: check before committing.
            if compression == Compression::None && digest != config.diff_ids[i] {
                return Err(ArchiveError::DiffIdMismatch {
                    image: config_digest,
                    index: i,
                    expected: config.diff_ids[i],
                    actual: digest,
                });
            }
            let media_type = match compression {
                Compression::None => manifest::OCI_LAYER_TAR,
                Compression::Gzip => manifest::OCI_LAYER_GZIP,
                Compression::Zstd => manifest::OCI_LAYER_ZSTD,
            };
            layers.push((path, digest, size, media_type));
        }
        for (path, digest, size, _) in &layers {
            self.need_blob(path, Some(digest), Some(*size))?;
        }
        let layer_digests: Vec<Digest> = layers.iter().map(|l| l.1).collect();
        self.unpack_image(&config_digest, &layer_digests)?;
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": manifest::OCI_CONFIG, "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": layers.iter().map(|(_, d, s, mt)| json!({"mediaType": mt, "digest": d.to_string(), "size": s})).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&doc).map_err(|e| malformed("manifest.json", e))?;
        Ok(self.defer_manifest(bytes, manifest::OCI_MANIFEST))
    }

    /// Queues a manifest to record once the whole archive has checked out.
    fn defer_manifest(&mut self, bytes: Vec<u8>, media_type: &str) -> Digest {
        let digest = Digest::of(&bytes);
        if !self.manifests.iter().any(|(b, _)| Digest::of(b) == digest) {
            self.manifests.push((bytes, media_type.to_string()));
        }
        digest
    }

    /// Unpacks an image's layers (verifying every diff ID against the config) and records
    /// them; new layers are remembered for roll-back.
    fn unpack_image(&mut self, config: &Digest, layers: &[Digest]) -> Result<()> {
        let cfg_bytes = self.store.blobs().read_small(config, MAX_MANIFEST_BYTES)?;
        let cfg = Config::parse(&cfg_bytes).map_err(|e| malformed(&blob_path(config), e))?;
        if cfg.diff_ids.len() != layers.len() {
            return Err(malformed(
                &blob_path(config),
                format!("{} diff ids for {} layers", cfg.diff_ids.len(), layers.len()),
            ));
        }
        let mut parent: Option<Digest> = None;
        for (i, (blob, diff_id)) in layers.iter().zip(&cfg.diff_ids).enumerate() {
            let chain = chain_id(parent.as_ref(), diff_id);
            let key = chain.to_string();
            let recorded = self
                .store
                .meta()
                .contains(Cf::Layers, &key)
                .map_err(crate::store::StoreError::from)?;
            if !(recorded && self.store.layers().is_unpacked(&chain)) {
                let was_unpacked = self.store.layers().is_unpacked(&chain);
                self.store
                    .unpack_and_record(&chain, parent, diff_id, blob)
                    .map_err(|e| match e {
                        crate::store::StoreError::Layer(crate::layers::LayerError::DiffIdMismatch {
                            expected,
                            actual,
                        }) => ArchiveError::DiffIdMismatch {
                            image: *config,
                            index: i,
                            expected,
                            actual,
                        },
                        other => other.into(),
                    })?;
                if !was_unpacked {
                    self.new_layers.push(chain);
                    self.report.layers_unpacked += 1;
                }
            }
            parent = Some(chain);
        }
        Ok(())
    }

    /// Undoes what a failed load added: new layers and new blobs (no metadata refers to
    /// them: manifests are recorded only after their content checked out).
    fn roll_back(&mut self) {
        for chain in self.new_layers.drain(..) {
            let _ = self.store.layers().remove(&chain);
            let _ = self.store.meta().delete(Cf::Layers, &chain.to_string());
            self.store.index_remove(&chain, IdKind::Layer);
        }
        for d in self.new_blobs.drain(..) {
            let referenced = self
                .store
                .meta()
                .contains(Cf::Manifests, &d.to_string())
                .unwrap_or(true)
                || self
                    .store
                    .meta()
                    .contains(Cf::Images, &d.to_string())
                    .unwrap_or(true);
            if !referenced {
                let _ = self.store.blobs().remove(&d);
                let _ = self.store.meta().delete(Cf::Blobs, &d.to_string());
            }
        }
    }

    fn has(&self, path: &str) -> bool {
        match &self.dir {
            Some(dir) => dir.join(path).is_file(),
            None => self.resolve_link(path).is_some(),
        }
    }

    fn resolve_link(&self, path: &str) -> Option<String> {
        let mut name = path.to_string();
        for _ in 0..16 {
            if self.staged.contains_key(&name) {
                return Some(name);
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }

    /// Stages a file of a directory source (tar sources are staged by the scan).
    fn stage_path(&mut self, path: &str) -> Result<String> {
        if let Some(name) = self.resolve_link(path) {
            return Ok(name);
        }
        let Some(dir) = &self.dir else {
            return Err(ArchiveError::Missing(path.to_string()));
        };
        let full = dir.join(path);
        let file = std::fs::File::open(&full).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ArchiveError::Missing(path.to_string())
            } else {
                ArchiveError::io(format!("open {}", full.display()))(e)
            }
        })?;
        let staged = self.store.blobs().stage(
            BufReader::with_capacity(1 << 20, file),
            Some(self.opts.max_entry_bytes),
        )?;
        self.staged.insert(path.to_string(), staged);
        Ok(path.to_string())
    }

    /// Reads a small JSON file from the archive root, if present.
    fn read_json(&mut self, name: &str) -> Result<Option<serde_json::Value>> {
        if !self.has(name) {
            return Ok(None);
        }
        let key = self.stage_path(name)?;
        let bytes = self.read_staged_small(&key)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| malformed(name, e))
    }

    fn read_staged_small(&self, key: &str) -> Result<Vec<u8>> {
        let staged = self
            .staged
            .get(key)
            .ok_or_else(|| ArchiveError::Missing(key.to_string()))?;
        if staged.size > MAX_MANIFEST_BYTES {
            return Err(malformed(key, format!("larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let mut out = Vec::with_capacity(staged.size as usize);
        self.open_staged(staged)?
            .read_to_end(&mut out)
            .map_err(ArchiveError::io(format!("read {key}")))?;
        Ok(out)
    }

    /// Opens staged content, or the blob it became: entries that several images of one
    /// archive share are committed by the first.
    fn open_staged(&self, staged: &Staged) -> Result<std::fs::File> {
        if staged.is_committed() {
            Ok(self.store.blobs().open_blob(&staged.digest)?)
        } else {
            Ok(staged.reopen()?)
        }
    }

    /// Reads a manifest blob, from the store if it is there, else from the archive.
    fn read_blob_small(&mut self, path: &str, digest: &Digest, size: u64) -> Result<Vec<u8>> {
        if size > MAX_MANIFEST_BYTES {
            return Err(malformed(path, format!("larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        if self.store.blobs().contains(digest) {
            return Ok(self.store.blobs().read_small(digest, MAX_MANIFEST_BYTES)?);
        }
        let key = self.stage_path(path)?;
        let staged = &self.staged[&key];
        if staged.digest != *digest {
            return Err(ArchiveError::DigestMismatch {
                path: path.to_string(),
                expected: *digest,
                actual: staged.digest,
            });
        }
        if staged.size != size {
            return Err(ArchiveError::SizeMismatch {
                path: path.to_string(),
                expected: size,
                actual: staged.size,
            });
        }
        self.read_staged_small(&key)
    }

    /// Digest, size and compression of a staged layer file.
    fn peek_layer(&mut self, path: &str) -> Result<(Digest, u64, Compression)> {
        let key = self.stage_path(path)?;
        let staged = &self.staged[&key];
        let mut head = [0u8; 8];
        let mut f = self.open_staged(staged)?;
        let n = f
            .read(&mut head)
            .map_err(ArchiveError::io(format!("read {path}")))?;
        Ok((staged.digest, staged.size, Compression::detect(&head[..n])))
    }

    /// Makes sure the blob at `path` is in the store (committing staged content) and has
    /// digest `expected` and `size`, where given.
    fn need_blob(&mut self, path: &str, expected: Option<&Digest>, size: Option<u64>) -> Result<Digest> {
        if let Some(d) = expected
            && self.store.blobs().contains(d)
        {
            self.report.blobs_existing += 1;
            return Ok(*d);
        }
        let key = self.stage_path(path)?;
        let store = self.store;
        let staged = self
            .staged
            .get_mut(&key)
            .ok_or_else(|| ArchiveError::Missing(path.to_string()))?;
        if let Some(d) = expected
            && staged.digest != *d
        {
            return Err(ArchiveError::DigestMismatch {
                path: path.to_string(),
                expected: *d,
                actual: staged.digest,
            });
        }
        if let Some(s) = size
            && staged.size != s
        {
            return Err(ArchiveError::SizeMismatch {
                path: path.to_string(),
                expected: s,
                actual: staged.size,
            });
        }
        let committed = store.blobs().commit_staged(staged)?;
        store.record_blob(&committed.digest, committed.size)?;
        if committed.written {
            self.report.blobs_written += 1;
            self.report.bytes_written += committed.size;
            self.new_blobs.push(committed.digest);
        } else {
            self.report.blobs_existing += 1;
        }
        Ok(committed.digest)
    }
}

/// `<hex>.json` or `blobs/sha256/<hex>` names its content's digest.
fn config_name_digest(path: &str) -> Option<Digest> {
    let name = path.rsplit('/').next()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    Digest::from_hex(hex).ok()
}

fn is_config(media_type: &str) -> bool {
    matches!(media_type, manifest::OCI_CONFIG | manifest::DOCKER_CONFIG)
}

fn malformed(file: &str, detail: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Malformed {
        file: file.to_string(),
        detail: detail.to_string(),
    }
}

fn descriptor_fields(d: &serde_json::Value, file: &str) -> Result<(Digest, u64, String)> {
    let digest: Digest = d
        .get("digest")
        .and_then(|v| v.as_str())
        .ok_or_else(|| malformed(file, "descriptor without digest"))?
        .parse()
        .map_err(|e| malformed(file, e))?;
    let size = d
        .get("size")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| malformed(file, "descriptor without size"))?;
    let media_type = d
        .get("mediaType")
        .and_then(|v| v.as_str())
        .unwrap_or(manifest::OCI_MANIFEST)
        .to_string();
    Ok((digest, size, media_type))
}

/// The image name an index entry carries, if it is a full reference.
fn image_name(d: &serde_json::Value) -> Option<ImageRef> {
    let ann = d.get("annotations")?;
    if let Some(n) = ann.get(ANNOTATION_IMAGE_NAME).and_then(|v| v.as_str())
        && let Ok(r) = ImageRef::parse(n)
    {
        return Some(r);
    }
    let n = ann.get(ANNOTATION_REF_NAME).and_then(|v| v.as_str())?;
    // A bare tag ("1.0") names no repository.
    if n.contains('/') || n.contains(':') {
        ImageRef::parse(n).ok()
    } else {
        None
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}
