//! Metadata in RocksDB: one column family per kind, JSON records, a schema-version key.
//!
//! Blob files are the source of truth for content; everything here describes or links
//! content (manifests, images, tags, repository links, layers, containers, leases) and
//! `fsck` can check it against the blobs in both directions.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::digest::Digest;

/// The on-disk schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema-version";

/// Errors from the metadata database.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt metadata record {cf}/{key}: {source}")]
    Corrupt {
        cf: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("store schema version {found} is not supported by this build (expects {SCHEMA_VERSION})")]
    Schema { found: String },
    #[error("metadata database is open read-only")]
    ReadOnly,
}

type Result<T, E = MetaError> = std::result::Result<T, E>;

/// The column families (one per kind of record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    Blobs,
    Manifests,
    Images,
    Tags,
    RepoLinks,
    Layers,
    Containers,
    Uploads,
    Leases,
    Meta,
}

impl Cf {
    pub const ALL: [Cf; 10] = [
        Cf::Blobs,
        Cf::Manifests,
        Cf::Images,
        Cf::Tags,
        Cf::RepoLinks,
        Cf::Layers,
        Cf::Containers,
        Cf::Uploads,
        Cf::Leases,
        Cf::Meta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Blobs => "blobs",
            Cf::Manifests => "manifests",
            Cf::Images => "images",
            Cf::Tags => "tags",
            Cf::RepoLinks => "repo_links",
            Cf::Layers => "layers",
            Cf::Containers => "containers",
            Cf::Uploads => "uploads",
            Cf::Leases => "leases",
            Cf::Meta => "meta",
        }
    }
}

/// A blob the store holds (the file under `blobs/` is the truth; this records it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    pub stored: i64,
}

/// A manifest (image manifest, index, Docker manifest or list) the store knows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    /// Image config (image manifests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Digest>,
    /// Layer blobs (image manifests only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Digest>,
    /// Child manifests (indexes only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Unix seconds when first stored.
    pub stored: i64,
}

/// An image: keyed by its ID, the digest of its config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// `created` from the config, as written there (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub diff_ids: Vec<Digest>,
    /// Chain ID of the top layer (`None` for an image without layers).
    pub top_layer: Option<Digest>,
    /// Uncompressed bytes of all layers.
    pub size: u64,
    /// Manifests that reference this config.
    pub manifests: Vec<Digest>,
    pub stored: i64,
}

/// A tag: a normalised `name:tag` pointing at a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagRecord {
    pub manifest: Digest,
    pub media_type: String,
    pub updated: i64,
}

/// A layer in the layer store, keyed by chain ID.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRecord {
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    /// Bytes of regular files in the layer.
    pub size: u64,
    /// The (possibly compressed) blob it was unpacked from, if known.
    #[serde(default)]
    pub blob: Option<Digest>,
    pub stored: i64,
}

/// A lease protects content from GC while work (a pull, an upload, a load) is under way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseRecord {
    pub digests: Vec<Digest>,
    /// Unix seconds after which the lease no longer protects anything.
    pub expires: i64,
    pub holder: String,
}

/// The metadata database.
pub struct Meta {
    db: DB,
    read_only: bool,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta")
            .field("path", &self.db.path())
            .field("read_only", &self.read_only)
            .finish()
    }
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_keep_log_file_num(4);
    opts.set_max_log_file_size(1 << 20);
    opts.set_max_open_files(256);
    opts
}

impl Meta {
    /// Opens read-write. The caller holds the store's write lock: RocksDB admits one
    /// writer process.
    pub fn open(path: &Path) -> Result<Meta> {
        let opts = db_options();
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let meta = Meta { db, read_only: false };
        meta.check_schema(true)?;
        Ok(meta)
    }

    /// Opens as a RocksDB secondary instance: a consistent read view that works while
    /// another process has the database open for writing.
    pub fn open_read_only(path: &Path, scratch: &Path) -> Result<Meta> {
        let mut opts = db_options();
        opts.set_max_open_files(-1);
        let names: Vec<&str> = Cf::ALL.iter().map(|c| c.name()).collect();
        let db = DB::open_cf_as_secondary(&opts, path, scratch, names)?;
        db.try_catch_up_with_primary()?;
        let meta = Meta { db, read_only: true };
        meta.check_schema(false)?;
        Ok(meta)
    }

    fn check_schema(&self, write_if_missing: bool) -> Result<()> {
        let cf = self.cf(Cf::Meta);
        match self.db.get_cf(cf, SCHEMA_KEY)? {
            Some(v) if v == SCHEMA_VERSION.to_string().as_bytes() => Ok(()),
            Some(v) => Err(MetaError::Schema {
                found: String::from_utf8_lossy(&v).into_owned(),
            }),
            None if write_if_missing => {
                self.db.put_cf(cf, SCHEMA_KEY, SCHEMA_VERSION.to_string())?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every family in `Cf::ALL` is created at open.
        self.db
            .cf_handle(cf.name())
            .expect("column family opened at start")
    }

    pub fn get<T: DeserializeOwned>(&self, cf: Cf, key: &str) -> Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(cf), key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| MetaError::Corrupt {
                    cf: cf.name(),
                    key: key.to_string(),
                    source,
                }),
        }
    }

    pub fn contains(&self, cf: Cf, key: &str) -> Result<bool> {
        Ok(self.db.get_pinned_cf(self.cf(cf), key.as_bytes())?.is_some())
    }

    pub fn put<T: Serialize>(&self, cf: Cf, key: &str, value: &T) -> Result<()> {
        let mut b = self.batch();
        b.put(cf, key, value);
        self.write(b)
    }

    pub fn delete(&self, cf: Cf, key: &str) -> Result<()> {
        let mut b = self.batch();
        b.delete(cf, key);
        self.write(b)
    }

    /// All records of a family, in key order.
    pub fn scan<T: DeserializeOwned>(&self, cf: Cf) -> Result<Vec<(String, T)>> {
        self.scan_prefix(cf, "")
    }

    /// Records whose key starts with `prefix`, in key order.
    pub fn scan_prefix<T: DeserializeOwned>(&self, cf: Cf, prefix: &str) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        let mode = IteratorMode::From(prefix.as_bytes(), rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(cf), mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = serde_json::from_slice(&v).map_err(|source| MetaError::Corrupt {
                cf: cf.name(),
                key: key.clone(),
                source,
            })?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Keys of a family (values unread), in key order.
    pub fn keys(&self, cf: Cf, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mode = IteratorMode::From(prefix.as_bytes(), rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(cf), mode) {
            let (k, _) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            meta: self,
            inner: WriteBatch::default(),
        }
    }

    /// Applies a batch atomically and durably (synced WAL).
    pub fn write(&self, batch: Batch<'_>) -> Result<()> {
        if self.read_only {
            return Err(MetaError::ReadOnly);
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch.inner, &opts)?;
        Ok(())
    }
}

/// An atomic group of writes.
pub struct Batch<'a> {
    meta: &'a Meta,
    inner: WriteBatch,
}

impl Batch<'_> {
    pub fn put<T: Serialize>(&mut self, cf: Cf, key: &str, value: &T) {
        // Serialising our own record types cannot fail (no maps with non-string keys).
        let bytes = serde_json::to_vec(value).expect("metadata record serialises");
        self.inner.put_cf(self.meta.cf(cf), key.as_bytes(), bytes);
    }

    pub fn delete(&mut self, cf: Cf, key: &str) {
        self.inner.delete_cf(self.meta.cf(cf), key.as_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// Key for a repository link: `<repository>@<digest>`.
pub fn repo_link_key(repository: &str, digest: &Digest) -> String {
    format!("{repository}@{digest}")
}
