//! The `Store` facade: one root directory holding blobs, metadata, the ID index and
//! unpacked layers, and the image-level operations over them (add a manifest, tag,
//! resolve a reference or ID prefix, list, inspect, remove, unpack an image's layers).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use crate::blobs::{self, BlobError, BlobStore, Committed, LockedFile};
use crate::content::{BlobBackend, LocalBlobs};
use crate::digest::Digest;
use crate::index::{IdIndex, IdKind, IndexError};
use crate::layers::{LayerError, LayerStore, chain_id};
use crate::manifest::{Config, MAX_MANIFEST_BYTES, Manifest, ManifestError, Platform};
use crate::meta::{
    BlobRecord, Cf, ImageRecord, LayerRecord, ManifestRecord, Meta, MetaError, TagRecord, repo_link_key,
};
use crate::reference::{ImageRef, ReferenceError, familiar_name, split_tag_key};
use crate::runnable::RunnableImage;

/// Errors from store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("image config of {image}: {message}")]
    BadConfig { image: Digest, message: String },
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("manifest {manifest} references {digest}, which is not in the store")]
    MissingReference { manifest: Digest, digest: Digest },
    #[error("image {image} has {diff_ids} diff ids but its manifest lists {layers} layers")]
    LayerCountMismatch {
        image: Digest,
        diff_ids: usize,
        layers: usize,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl StoreError {
    /// A shared backend (PostgreSQL, S3) could not be reached: the request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Meta(MetaError::Unavailable(_)) => true,
            StoreError::Content(c) => c.is_unavailable(),
            _ => false,
        }
    }
}

/// Where a store keeps its metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MetadataConfig {
    /// RocksDB under the root (one writer process).
    #[default]
    Rocksdb,
    /// A PostgreSQL database shared by any number of processes.
    #[cfg(feature = "scale-out")]
    Postgres { url: String },
}

/// Where a store keeps blob bytes.
#[derive(Debug, Clone, Default)]
pub enum StorageConfig {
    /// Files under the root.
    #[default]
    Filesystem,
    /// An S3-compatible bucket.
    #[cfg(feature = "scale-out")]
    S3(crate::content::S3Config),
}

/// How to open a store ([`Store::open_with`]).
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    pub root: PathBuf,
    pub metadata: MetadataConfig,
    pub storage: StorageConfig,
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The config blob of an image manifest whose bytes [`Store::record_manifest`] needs (an
/// image config, not an artifact's).
pub fn image_config(manifest: &Manifest) -> Option<Digest> {
    match manifest {
        Manifest::Image { config, .. } if is_image_config(&config.media_type) => Some(config.digest),
        _ => None,
    }
}

/// Whether an index entry of this media type is a blob rather than a manifest (BuildKit's
/// cache export lists layers and its cache config in an index); an entry without a media
/// type is taken for a manifest.
fn is_blob_entry(media_type: &str) -> bool {
    !media_type.is_empty() && !crate::manifest::is_manifest_media_type(media_type)
}

/// The default store root: `/var/lib/strata` for root, else `$XDG_DATA_HOME/strata`
/// (`~/.local/share/strata`).
pub fn default_root() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/strata");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("strata");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/strata")
}

/// What a user's string named: a tag, a manifest, an image, or several of these.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// The tag key (`registry/repo:tag`) when a tag was named.
    pub tag: Option<String>,
    pub manifest: Option<Digest>,
    /// The image ID (config digest), for the host platform when the manifest is an index.
    pub image: Option<Digest>,
}

/// One row of `store ls`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageSummary {
    pub repository: String,
    pub tag: String,
    pub id: String,
    pub digest: String,
    pub created: String,
    pub size: u64,
}

/// A store rooted at a directory.
pub struct Store {
    root: PathBuf,
    blobs: BlobStore,
    /// Where blob bytes live for the registry: `blobs` (local files) or a shared backend.
    content: Arc<dyn BlobBackend>,
    layers: LayerStore,
    meta: Arc<Meta>,
    index: RwLock<IdIndex>,
    gc_refs: Mutex<Option<HashSet<Digest>>>,
    /// Dropped after `meta` (closed) and before the write lock: records the runnable
    /// images answered meanwhile against the metadata as it is left.
    remembered: crate::runnable::Remembered,
    _write_lock: Option<LockedFile>,
    _scratch: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("read_only", &self.meta.is_read_only())
            .finish()
    }
}

impl Store {
    /// Opens (creating) a store for reading and writing. One process at a time writes
    /// metadata: this waits (in the kernel) while another process holds the store.
    pub fn open(root: &Path) -> Result<Store> {
        fs_err::create_dir_all(root).map_err(io_err("create store root"))?;
        let lock_path = root.join("store.lock");
        let lock = match blobs::try_lock_file(&lock_path)? {
            Some(lock) => lock,
            None => {
                let holder = match blobs::lock_holder(&lock_path) {
                    Some((pid, program)) => format!("{program} (pid {pid})"),
                    None => "another process".into(),
                };
                tracing::warn!("store {} is in use by {holder}; waiting for it", root.display());
                blobs::lock_file(&lock_path)?
            }
        };
        lock.record_holder();
        let blobs = BlobStore::open(root)?;
        let layers = LayerStore::open(root)?;
        let meta = Arc::new(Meta::open(&root.join("meta"))?);
        let content = Arc::new(LocalBlobs::new(blobs.clone()));
        let remembered = crate::runnable::Remembered::new(root);
        Store::assemble(root, blobs, content, layers, meta, remembered, Some(lock), None)
    }

    /// Opens a store as `config` says: the embedded default (RocksDB under the root, blobs
    /// as files) or shared backends (PostgreSQL metadata, S3 blobs) that several processes
    /// on several machines use at once. The root then holds only this process's local
    /// parts (unpacked layers, scratch), and no write lock is taken.
    pub fn open_with(config: &StoreConfig) -> Result<Store> {
        let root = &config.root;
        let meta = match &config.metadata {
            MetadataConfig::Rocksdb => {
                if matches!(config.storage, StorageConfig::Filesystem) {
                    return Store::open(root);
                }
                return Err(StoreError::Unsupported(
                    "S3 blob storage needs shared metadata ([metadata] backend = \"postgres\")".into(),
                ));
            }
            #[cfg(feature = "scale-out")]
            MetadataConfig::Postgres { url } => Arc::new(Meta::connect_postgres(url)?),
        };
        fs_err::create_dir_all(root).map_err(io_err("create store root"))?;
        let blobs = BlobStore::open(root)?;
        let content: Arc<dyn BlobBackend> = match &config.storage {
            StorageConfig::Filesystem => Arc::new(LocalBlobs::new(blobs.clone())),
            #[cfg(feature = "scale-out")]
            StorageConfig::S3(s3) => Arc::new(crate::content::S3Blobs::new(s3, meta.clone())?),
        };
        let layers = LayerStore::open(root)?;
        let remembered = crate::runnable::Remembered::disabled();
        Store::assemble(root, blobs, content, layers, meta, remembered, None, None)
    }

    /// The blob backend the registry serves from (see [`BlobBackend`]).
    pub fn content(&self) -> &Arc<dyn BlobBackend> {
        &self.content
    }

    /// Metadata and blobs are shared with other processes (PostgreSQL): nothing about them
    /// may be cached as if this process were the only writer.
    pub fn is_shared(&self) -> bool {
        self.meta.is_shared()
    }

    /// The process that holds the store for writing, if one does: its PID and program.
    pub fn writer(root: &Path) -> Option<(u32, String)> {
        let lock_path = root.join("store.lock");
        if !lock_path.exists() {
            return None;
        }
        match blobs::try_lock_file(&lock_path) {
            Ok(Some(_free)) => None,
            _ => blobs::lock_holder(&lock_path),
        }
    }

    /// Opens a read-only view that works while another process writes the store.
    pub fn open_read_only(root: &Path) -> Result<Store> {
        if !root.join("meta").join("CURRENT").is_file() {
            return Err(StoreError::Io {
                context: format!("open store {}", root.display()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no store here"),
            });
        }
        let scratch = tempfile::Builder::new()
            .prefix("strata-ro-")
            .tempdir()
            .map_err(io_err("create scratch directory"))?;
        let meta = Arc::new(Meta::open_read_only(&root.join("meta"), scratch.path())?);
        let blobs = BlobStore::open_existing(root);
        let content = Arc::new(LocalBlobs::new(blobs.clone()));
        let layers = LayerStore::open(root)?;
        let remembered = crate::runnable::Remembered::disabled();
        Store::assemble(
            root,
            blobs,
            content,
            layers,
            meta,
            remembered,
            None,
            Some(scratch),
        )
    }

    /// The store from its parts, with the ID index built from the metadata.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        root: &Path,
        blobs: BlobStore,
        content: Arc<dyn BlobBackend>,
        layers: LayerStore,
        meta: Arc<Meta>,
        remembered: crate::runnable::Remembered,
        write_lock: Option<LockedFile>,
        scratch: Option<tempfile::TempDir>,
    ) -> Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
            blobs,
            content,
            layers,
            meta,
            index: RwLock::new(IdIndex::new()),
            gc_refs: Mutex::new(None),
            remembered,
            _write_lock: write_lock,
            _scratch: scratch,
        };
        store.rebuild_index()?;
        Ok(store)
    }

    fn rebuild_index(&self) -> Result<()> {
        let mut ids = Vec::new();
        for (cf, kind) in [
            (Cf::Images, IdKind::Image),
            (Cf::Manifests, IdKind::Manifest),
            (Cf::Layers, IdKind::Layer),
            (Cf::Containers, IdKind::Container),
        ] {
            for key in self.meta.keys(cf, "")? {
                let hex = key.strip_prefix("sha256:").unwrap_or(&key).to_string();
                ids.push((hex, kind));
            }
        }
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = IdIndex::from_iter_bulk(ids);
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }
    pub fn layers(&self) -> &LayerStore {
        &self.layers
    }
    pub fn meta(&self) -> &Meta {
        &self.meta
    }
    pub fn index(&self) -> RwLockReadGuard<'_, IdIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn gc_refs(&self) -> &Mutex<Option<HashSet<Digest>>> {
        &self.gc_refs
    }

    pub(crate) fn index_insert(&self, id: &Digest, kind: IdKind) {
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(&id.hex(), kind);
    }

    pub(crate) fn index_remove(&self, id: &Digest, kind: IdKind) {
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id.hex(), kind);
    }

    /// Ingests a blob of known digest (see [`BlobStore::put_verified`]) and records it.
    pub fn ingest_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
        reader: impl std::io::Read,
    ) -> Result<Committed> {
        let c = self.blobs.put_verified(digest, size, reader)?;
        self.record_blob(&c.digest, c.size)?;
        Ok(c)
    }

    /// Records a blob that is in the blob store (idempotent).
    pub fn record_blob(&self, digest: &Digest, size: u64) -> Result<()> {
        let key = digest.to_string();
        if !self.meta.contains(Cf::Blobs, &key)? {
            self.meta
                .put(Cf::Blobs, &key, &crate::meta::BlobRecord { size, stored: now() })?;
        }
        Ok(())
    }

    /// Protects `digests` from GC for `ttl` (work in progress: a pull, an upload, a load).
    /// Returns the lease ID to release.
    pub fn create_lease(
        &self,
        holder: &str,
        digests: Vec<Digest>,
        ttl: std::time::Duration,
    ) -> Result<String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!(
            "{}-{}-{}",
            std::process::id(),
            now(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let record = crate::meta::LeaseRecord {
            digests,
            expires: now() + ttl.as_secs() as i64,
            holder: holder.to_string(),
        };
        self.meta.put(Cf::Leases, &id, &record)?;
        Ok(id)
    }

    /// Ends a lease.
    pub fn release_lease(&self, id: &str) -> Result<()> {
        self.meta.delete(Cf::Leases, id)?;
        Ok(())
    }

    /// Links a blob or manifest into a repository (the registry's per-repo visibility).
    pub fn link(&self, repository: &str, digest: &Digest) -> Result<()> {
        self.protect_linked(digest);
        self.meta
            .put(Cf::RepoLinks, &repo_link_key(repository, digest), &())?;
        Ok(())
    }

    /// A blob newly linked into a repository is about to be referenced by a manifest
    /// (a push in progress): a GC running now keeps it, and later ones count their grace
    /// period from now, even when the file is old (content pushed before, unreferenced
    /// since, not yet collected).
    pub fn protect_linked(&self, digest: &Digest) {
        self.note_referenced([*digest]);
        self.blobs.touch(digest);
    }

    pub fn is_linked(&self, repository: &str, digest: &Digest) -> Result<bool> {
        Ok(self
            .meta
            .contains(Cf::RepoLinks, &repo_link_key(repository, digest))?)
    }

    /// Stores a manifest whose referenced content is already in the store: checks the
    /// references, writes the manifest blob, records manifest and (for an image manifest)
    /// image metadata, links it into `repository` if given.
    pub fn add_manifest(
        &self,
        bytes: &[u8],
        media_type_hint: Option<&str>,
        repository: Option<&str>,
    ) -> Result<(Digest, Manifest)> {
        let manifest = Manifest::parse(bytes, media_type_hint)?;
        let digest = Digest::of(bytes);
        self.note_referenced(manifest.references().iter().map(|r| r.digest).chain([digest]));
        self.check_references(&manifest, &digest, |d| Ok(self.blobs.contains(d)))?;
        self.blobs.put_bytes(bytes)?;
        let config_bytes = match image_config(&manifest) {
            Some(config) => Some(self.blobs.read_small(&config, MAX_MANIFEST_BYTES)?),
            None => None,
        };
        self.record_manifest(bytes, &manifest, config_bytes.as_deref(), repository)?;
        Ok((digest, manifest))
    }

    /// Checks that everything `manifest` references is stored: blobs (asked of
    /// `blob_present`) for an image manifest, manifests for an index — or blobs, for the
    /// entries of an index that are not manifests.
    pub fn check_references(
        &self,
        manifest: &Manifest,
        digest: &Digest,
        mut blob_present: impl FnMut(&Digest) -> Result<bool>,
    ) -> Result<()> {
        for r in manifest.references() {
            let present = match manifest {
                Manifest::Image { .. } => blob_present(&r.digest)?,
                Manifest::Index { .. } if is_blob_entry(&r.media_type) => blob_present(&r.digest)?,
                Manifest::Index { .. } => self.meta.contains(Cf::Manifests, &r.digest.to_string())?,
            };
            if !present {
                return Err(StoreError::MissingReference {
                    manifest: *digest,
                    digest: r.digest,
                });
            }
        }
        Ok(())
    }

    /// The metadata half of [`Store::add_manifest`], for callers that stored the manifest's
    /// bytes and checked its references through a [`BlobBackend`] themselves: records
    /// manifest, blobs and (with the config's bytes, see [`image_config`]) image, and links
    /// them into `repository` if given. One atomic batch.
    pub fn record_manifest(
        &self,
        bytes: &[u8],
        manifest: &Manifest,
        config_bytes: Option<&[u8]>,
        repository: Option<&str>,
    ) -> Result<Digest> {
        let manifest = manifest.clone();
        let digest = Digest::of(bytes);
        self.note_referenced(manifest.references().iter().map(|r| r.digest).chain([digest]));
        let mut batch = self.meta.batch();
        let stored = now();
        let blob_record = |size| crate::meta::BlobRecord { size, stored };
        batch.put(Cf::Blobs, &digest.to_string(), &blob_record(bytes.len() as u64));
        let mut record = ManifestRecord {
            media_type: manifest.media_type().to_string(),
            size: bytes.len() as u64,
            config: None,
            layers: Vec::new(),
            children: Vec::new(),
            subject: manifest.subject().map(|s| s.digest),
            artifact_type: None,
            stored,
        };
        let mut image_id = None;
        match &manifest {
            Manifest::Image {
                config,
                layers,
                artifact_type,
                ..
            } => {
                record.config = Some(config.digest);
                record.layers = layers.iter().map(|l| l.digest).collect();
                record.artifact_type = artifact_type.clone();
                for r in manifest.references() {
                    batch.put(Cf::Blobs, &r.digest.to_string(), &blob_record(r.size));
                }
                if let Some(cfg_bytes) = config_bytes.filter(|_| is_image_config(&config.media_type)) {
                    // A config whose diff IDs do not match the layers is still recorded:
                    // a registry must store what clients push (the distribution-spec
                    // conformance suite pushes one), and `ensure_unpacked` refuses to
                    // unpack such an image. Archive loads check the count themselves.
                    let cfg = Config::parse(cfg_bytes)?;
                    let key = config.digest.to_string();
                    let mut image = match self.meta.get::<ImageRecord>(Cf::Images, &key)? {
                        Some(existing) => existing,
                        None => ImageRecord {
                            created: cfg.created.clone(),
                            os: cfg.platform.os.clone(),
                            architecture: cfg.platform.architecture.clone(),
                            variant: cfg.platform.variant.clone(),
                            top_layer: top_chain_id(&cfg.diff_ids),
                            diff_ids: cfg.diff_ids.clone(),
                            size: layers.iter().map(|l| l.size).sum(),
                            manifests: Vec::new(),
                            stored,
                        },
                    };
                    if !image.manifests.contains(&digest) {
                        image.manifests.push(digest);
                    }
                    batch.put(Cf::Images, &key, &image);
                    image_id = Some(config.digest);
                }
            }
            Manifest::Index {
                manifests,
                artifact_type,
                ..
            } => {
                let (blobs, children): (Vec<_>, Vec<_>) =
                    manifests.iter().partition(|m| is_blob_entry(&m.media_type));
                record.children = children.iter().map(|m| m.digest).collect();
                record.layers = blobs.iter().map(|b| b.digest).collect();
                for b in blobs {
                    batch.put(Cf::Blobs, &b.digest.to_string(), &blob_record(b.size));
                }
                record.artifact_type = artifact_type.clone();
            }
        }
        batch.put(Cf::Manifests, &digest.to_string(), &record);
        if let Some(repo) = repository {
            batch.put(Cf::RepoLinks, &repo_link_key(repo, &digest), &());
            for r in manifest.references() {
                batch.put(Cf::RepoLinks, &repo_link_key(repo, &r.digest), &());
            }
        }
        self.meta.write(batch)?;
        self.index_insert(&digest, IdKind::Manifest);
        if let Some(id) = image_id {
            self.index_insert(&id, IdKind::Image);
        }
        Ok(digest)
    }

    /// Points `reference` (which must carry a tag) at a stored manifest.
    pub fn tag(&self, reference: &ImageRef, manifest: &Digest) -> Result<()> {
        let key = reference
            .tag_key()
            .ok_or_else(|| StoreError::NoSuchImage(format!("{reference} has no tag")))?;
        self.put_tag(&key, manifest)
    }

    /// Points the tag stored under `key` at a stored manifest.
    pub(crate) fn put_tag(&self, key: &str, manifest: &Digest) -> Result<()> {
        let record = self
            .get_manifest(manifest)?
            .ok_or_else(|| StoreError::NoSuchImage(manifest.to_string()))?;
        let tag = TagRecord {
            manifest: *manifest,
            media_type: record.media_type,
            updated: now(),
        };
        self.meta.put(Cf::Tags, key, &tag)?;
        Ok(())
    }

    pub fn get_tag(&self, key: &str) -> Result<Option<TagRecord>> {
        Ok(self.meta.get(Cf::Tags, key)?)
    }

    pub fn get_manifest(&self, digest: &Digest) -> Result<Option<ManifestRecord>> {
        Ok(self.meta.get(Cf::Manifests, &digest.to_string())?)
    }

    pub fn get_image(&self, id: &Digest) -> Result<Option<ImageRecord>> {
        Ok(self.meta.get(Cf::Images, &id.to_string())?)
    }

    /// The image a manifest stands for: itself for an image manifest, the child for
    /// `platform` (or the first child) for an index.
    pub fn image_for_manifest(&self, manifest: &Digest, platform: &Platform) -> Result<Option<Digest>> {
        let Some(record) = self.get_manifest(manifest)? else {
            return Ok(None);
        };
        if let Some(config) = record.config {
            return Ok(
                Some(config).filter(|c| self.meta.contains(Cf::Images, &c.to_string()).unwrap_or(false))
            );
        }
        if record.children.is_empty() {
            return Ok(None);
        }
        let bytes = self.blobs.read_small(manifest, MAX_MANIFEST_BYTES)?;
        let parsed = Manifest::parse(&bytes, Some(&record.media_type))?;
        let child = parsed
            .select_platform(platform)
            .map(|r| r.digest)
            .unwrap_or(record.children[0]);
        if child == *manifest {
            return Ok(None);
        }
        Ok(self.get_manifest(&child)?.and_then(|m| m.config))
    }

    /// Resolves a reference (`busybox`, `repo:tag`, `repo@sha256:…`), a digest, or an
    /// unambiguous prefix of an image, manifest or layer ID.
    pub fn resolve(&self, s: &str) -> Result<Resolved> {
        let host = Platform::host();
        let hexish = s.strip_prefix("sha256:").unwrap_or(s);
        let is_hex = !hexish.is_empty()
            && hexish
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        // A full ID or digest, or a tag.
        if !(is_hex && (hexish.len() == 64 || s.starts_with("sha256:")))
            && let Ok(r) = ImageRef::parse(s)
        {
            if let Some(d) = r.digest {
                if self.get_manifest(&d)?.is_some() {
                    return Ok(Resolved {
                        tag: None,
                        manifest: Some(d),
                        image: self.image_for_manifest(&d, &host)?,
                    });
                }
            } else if let Some(key) = r.tag_key()
                && let Some(t) = self.get_tag(&key)?
            {
                return Ok(Resolved {
                    image: self.image_for_manifest(&t.manifest, &host)?,
                    manifest: Some(t.manifest),
                    tag: Some(key),
                });
            }
            if !is_hex {
                return Err(StoreError::NoSuchImage(s.to_string()));
            }
        }
        if !is_hex {
            return Err(StoreError::NoSuchImage(s.to_string()));
        }
        let index = self.index();
        let id = match index.resolve(hexish, None) {
            Ok(id) => id,
            Err(IndexError::NotFound(_)) => return Err(StoreError::NoSuchImage(s.to_string())),
            Err(e) => return Err(e.into()),
        };
        let kinds = index.kinds(&id);
        drop(index);
        let digest = Digest::from_hex(&id).map_err(|_| StoreError::NoSuchImage(s.to_string()))?;
        let mut out = Resolved::default();
        if kinds.contains(&IdKind::Image) {
            out.image = Some(digest);
        }
        if kinds.contains(&IdKind::Manifest) {
            out.manifest = Some(digest);
            if out.image.is_none() {
                out.image = self.image_for_manifest(&digest, &host)?;
            }
        }
        if out.image.is_none() && out.manifest.is_none() {
            return Err(StoreError::NoSuchImage(format!(
                "{s} (names a layer or container, not an image)"
            )));
        }
        Ok(out)
    }

    /// Every tag, and every image no tag reaches, as `store ls` rows (sorted).
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        let host = Platform::host();
        let mut rows = Vec::new();
        let mut tagged = std::collections::HashSet::new();
        for (key, tag) in self.meta.scan::<TagRecord>(Cf::Tags)? {
            let Some((name, t)) = split_tag_key(&key) else {
                continue;
            };
            let image_id = self.image_for_manifest(&tag.manifest, &host)?;
            let image = match &image_id {
                Some(id) => self.get_image(id)?,
                None => None,
            };
            if let Some(id) = image_id {
                tagged.insert(id);
            }
            rows.push(ImageSummary {
                repository: familiar_name(name),
                tag: t.to_string(),
                id: image_id.map(|d| d.to_string()).unwrap_or_default(),
                digest: tag.manifest.to_string(),
                created: image.as_ref().and_then(|i| i.created.clone()).unwrap_or_default(),
                size: image.as_ref().map_or(0, |i| i.size),
            });
        }
        for (key, image) in self.meta.scan::<ImageRecord>(Cf::Images)? {
            let Ok(id) = key.parse::<Digest>() else { continue };
            if tagged.contains(&id) {
                continue;
            }
            rows.push(ImageSummary {
                repository: "<none>".into(),
                tag: "<none>".into(),
                id: id.to_string(),
                digest: image.manifests.first().map(|d| d.to_string()).unwrap_or_default(),
                created: image.created.clone().unwrap_or_default(),
                size: image.size,
            });
        }
        rows.sort_by(|a, b| (&a.repository, &a.tag, &a.id).cmp(&(&b.repository, &b.tag, &b.id)));
        Ok(rows)
    }

    /// Tags (keys) pointing at `manifest` or at an index containing it.
    pub fn tags_for_manifest(&self, manifest: &Digest) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (key, tag) in self.meta.scan::<TagRecord>(Cf::Tags)? {
            if tag.manifest == *manifest {
                out.push(key);
            } else if let Some(rec) = self.get_manifest(&tag.manifest)?
                && rec.children.contains(manifest)
            {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// A JSON description of what `s` names (for `store inspect`).
    pub fn inspect(&self, s: &str) -> Result<serde_json::Value> {
        let r = self.resolve(s)?;
        let mut out = serde_json::Map::new();
        if let Some(m) = r.manifest {
            let rec = self
                .get_manifest(&m)?
                .ok_or_else(|| StoreError::NoSuchImage(s.into()))?;
            out.insert(
                "manifest".into(),
                serde_json::json!({
                    "digest": m.to_string(),
                    "mediaType": rec.media_type,
                    "size": rec.size,
                    "children": rec.children.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                }),
            );
        }
        if let Some(id) = r.image {
            let image = self
                .get_image(&id)?
                .ok_or_else(|| StoreError::NoSuchImage(s.into()))?;
            let mut tags = Vec::new();
            let mut digests = Vec::new();
            for m in &image.manifests {
                for key in self.tags_for_manifest(m)? {
                    if !tags.contains(&key) {
                        tags.push(key);
                    }
                }
                digests.push(m.to_string());
            }
            let config: serde_json::Value =
                serde_json::from_slice(&self.blobs.read_small(&id, MAX_MANIFEST_BYTES)?)
                    .unwrap_or(serde_json::Value::Null);
            let mut layers = Vec::new();
            let mut parent = None;
            for diff_id in &image.diff_ids {
                let chain = chain_id(parent.as_ref(), diff_id);
                layers.push(serde_json::json!({
                    "diffId": diff_id.to_string(),
                    "chainId": chain.to_string(),
                    "unpacked": self.layers.is_unpacked(&chain),
                }));
                parent = Some(chain);
            }
            out.insert("id".into(), id.to_string().into());
            out.insert(
                "shortId".into(),
                self.index()
                    .shortest_unique(&id.hex(), 12)
                    .unwrap_or_default()
                    .into(),
            );
            out.insert("repoTags".into(), tags.into());
            out.insert("manifests".into(), digests.into());
            out.insert("created".into(), image.created.clone().into());
            out.insert("os".into(), image.os.clone().into());
            out.insert("architecture".into(), image.architecture.clone().into());
            if let Some(v) = &image.variant {
                out.insert("variant".into(), v.clone().into());
            }
            out.insert("size".into(), image.size.into());
            out.insert("layers".into(), layers.into());
            out.insert("config".into(), config);
        }
        if let Some(t) = r.tag {
            out.insert("tag".into(), t.into());
        }
        Ok(serde_json::Value::Object(out))
    }

    /// Removes a tag (and, when it was the last way to reach them, its manifest and
    /// image), or an image by ID with every tag and manifest for it. Content is
    /// reclaimed by the next GC.
    pub fn remove(&self, s: &str) -> Result<Vec<String>> {
        let r = self.resolve(s)?;
        let mut removed = Vec::new();
        let mut batch = self.meta.batch();
        let mut manifests: Vec<Digest> = Vec::new();
        if let Some(tag) = &r.tag {
            batch.delete(Cf::Tags, tag);
            removed.push(format!("untagged: {tag}"));
            let manifest = r.manifest.ok_or_else(|| StoreError::NoSuchImage(s.into()))?;
            let still_tagged = self.tags_for_manifest(&manifest)?.iter().any(|k| k != tag);
            if !still_tagged {
                manifests.push(manifest);
            }
        } else {
            if let Some(id) = r.image
                && let Some(image) = self.get_image(&id)?
            {
                manifests.extend(image.manifests.iter().copied());
            }
            manifests.extend(r.manifest);
            for m in manifests.clone() {
                for key in self.tags_for_manifest(&m)? {
                    batch.delete(Cf::Tags, &key);
                    removed.push(format!("untagged: {key}"));
                }
            }
        }
        // Expand indexes to their children, which go too unless another tag keeps them.
        let mut i = 0;
        while i < manifests.len() {
            if let Some(rec) = self.get_manifest(&manifests[i])? {
                for c in rec.children {
                    if !manifests.contains(&c) {
                        manifests.push(c);
                    }
                }
            }
            i += 1;
        }
        let mut images = Vec::new();
        for m in &manifests {
            let Some(rec) = self.get_manifest(m)? else {
                continue;
            };
            batch.delete(Cf::Manifests, &m.to_string());
            removed.push(format!("deleted: {m}"));
            if let Some(config) = rec.config
                && let Some(mut image) = self.get_image(&config)?
            {
                image.manifests.retain(|d| !manifests.contains(d));
                if image.manifests.is_empty() {
                    batch.delete(Cf::Images, &config.to_string());
                    removed.push(format!("deleted: {config}"));
                    images.push(config);
                } else {
                    batch.put(Cf::Images, &config.to_string(), &image);
                }
            }
        }
        self.meta.write(batch)?;
        for m in &manifests {
            self.index_remove(m, IdKind::Manifest);
        }
        for id in &images {
            self.index_remove(id, IdKind::Image);
        }
        Ok(removed)
    }

    /// Unpacks one layer (verifying its diff ID) and records it.
    pub(crate) fn unpack_and_record(
        &self,
        chain: &Digest,
        parent: Option<Digest>,
        diff_id: &Digest,
        blob: &Digest,
    ) -> Result<crate::unpack::UnpackReport> {
        let file = self.blobs.open_blob(blob)?;
        // A committed blob's content was checked against its digest at ingest (the
        // store's first invariant), so an uncompressed layer need not be hashed again for
        // its diff ID; its length is checked against the size recorded at ingest when
        // there is a record, else against the file's.
        let size = match self.meta.get::<BlobRecord>(Cf::Blobs, &blob.to_string())? {
            Some(record) => record.size,
            None => file.metadata().map_err(io_err("stat blob"))?.len(),
        };
        let file = std::io::BufReader::with_capacity(1 << 20, file);
        let report = self.layers.unpack_blob(chain, diff_id, (*blob, size), file)?;
        let record = LayerRecord {
            diff_id: *diff_id,
            parent,
            size: report.bytes,
            blob: Some(*blob),
            stored: now(),
            diff_size: report.diff_size,
        };
        self.meta.put(Cf::Layers, &chain.to_string(), &record)?;
        self.index_insert(chain, IdKind::Layer);
        Ok(report)
    }

    /// What a container runtime needs to run the image `s` (a reference, digest or ID
    /// prefix): its ID, its layers unpacked (done now when they are not) and its config.
    /// The answer is remembered for [`crate::cached_runnable`], which gives it without
    /// opening the database while the metadata stays unchanged.
    pub fn runnable_image(&self, s: &str) -> Result<RunnableImage> {
        let image_id = self
            .resolve(s)?
            .image
            .ok_or_else(|| StoreError::NoSuchImage(s.to_string()))?;
        let chains = self.ensure_unpacked(&image_id)?;
        let config = self.blobs.read_small(&image_id, MAX_RUNNABLE_CONFIG)?;
        let config = serde_json::from_slice(&config).map_err(|e| StoreError::BadConfig {
            image: image_id,
            message: e.to_string(),
        })?;
        let image = RunnableImage {
            image_id,
            layers: chains.iter().map(|c| self.layers.diff_path(c)).collect(),
            config,
        };
        self.remembered.add(s, &image);
        Ok(image)
    }

    /// Makes sure every layer of an image is unpacked in the layer store (verifying each
    /// diff ID), and returns the chain IDs, bottom first.
    pub fn ensure_unpacked(&self, image_id: &Digest) -> Result<Vec<Digest>> {
        let image = self
            .get_image(image_id)?
            .ok_or_else(|| StoreError::NoSuchImage(image_id.to_string()))?;
        let manifest_digest = *image
            .manifests
            .first()
            .ok_or_else(|| StoreError::NoSuchImage(image_id.to_string()))?;
        let manifest = self
            .get_manifest(&manifest_digest)?
            .ok_or_else(|| StoreError::NoSuchImage(manifest_digest.to_string()))?;
        if manifest.layers.len() != image.diff_ids.len() {
            return Err(StoreError::LayerCountMismatch {
                image: *image_id,
                diff_ids: image.diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }
        let mut chains = Vec::new();
        let mut parent: Option<Digest> = None;
        for (blob, diff_id) in manifest.layers.iter().zip(&image.diff_ids) {
            let chain = chain_id(parent.as_ref(), diff_id);
            let key = chain.to_string();
            if !self.layers.is_unpacked(&chain) || !self.meta.contains(Cf::Layers, &key)? {
                self.unpack_and_record(&chain, parent, diff_id, blob)?;
            }
            chains.push(chain);
            parent = Some(chain);
        }
        Ok(chains)
    }
}

/// Largest image config [`Store::runnable_image`] reads.
const MAX_RUNNABLE_CONFIG: u64 = 4 << 20;

fn is_image_config(media_type: &str) -> bool {
    matches!(
        media_type,
        crate::manifest::OCI_CONFIG | crate::manifest::DOCKER_CONFIG
    )
}

fn top_chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let mut parent: Option<Digest> = None;
    for d in diff_ids {
        parent = Some(chain_id(parent.as_ref(), d));
    }
    parent
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}
