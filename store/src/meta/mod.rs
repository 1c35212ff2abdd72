//! Metadata: one keyspace (column family) per kind of record, JSON records, a
//! schema-version key, behind the [`MetaEngine`] seam (RocksDB embedded, PostgreSQL shared).
//!
//! Blob files are the source of truth for content; everything here describes or links
//! content (manifests, images, tags, repository links, layers, containers, leases) and
//! `fsck` can check it against the blobs in both directions.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::digest::Digest;

#[cfg(feature = "scale-out")]
mod postgres;
mod rocks;

/// The on-disk schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
pub(crate) const SCHEMA_KEY: &str = "schema-version";

/// Errors from the metadata database.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("metadata database unavailable: {0}")]
    Unavailable(String),
    #[error("metadata database: {0}")]
    Backend(String),
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
    /// Where blobs are in a shared blob backend (S3): digest → object key and size.
    Objects,
    Meta,
}

impl Cf {
    pub const ALL: [Cf; 11] = [
        Cf::Blobs,
        Cf::Manifests,
        Cf::Images,
        Cf::Tags,
        Cf::RepoLinks,
        Cf::Layers,
        Cf::Containers,
        Cf::Uploads,
        Cf::Leases,
        Cf::Objects,
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
            Cf::Objects => "objects",
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
    /// Layer blobs of an image manifest; for an index, its entries that are blobs, not
    /// manifests (BuildKit's cache export lists its layers and cache config so).
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
    /// The layer's size as docker counts it (`crate::unpack::DiffSize`); `None` in
    /// records written before it was counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_size: Option<u64>,
}

/// A lease protects content from GC while work (a pull, an upload, a load) is under way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseRecord {
    pub digests: Vec<Digest>,
    /// Unix seconds after which the lease no longer protects anything.
    pub expires: i64,
    pub holder: String,
}

/// One write of an atomic batch.
#[derive(Debug, Clone)]
pub enum Op {
    Put(Cf, String, Vec<u8>),
    Delete(Cf, String),
}

/// The seam every metadata backend implements (as tikv's `engine_traits`): an ordered
/// key-value store with one keyspace per [`Cf`], point reads, prefix scans in key order
/// and atomic, durable batches. Records are opaque bytes here; [`Meta`] types them.
///
/// Invariants every backend keeps (checked by the backend test suite): a batch is applied
/// entirely or not at all and is durable when `write` returns; a scan returns the keys with
/// the prefix in byte order; `insert_if_absent` is atomic against concurrent writers,
/// including writers in other processes and on other machines.
pub trait MetaEngine: Send + Sync + std::fmt::Debug {
    fn get(&self, cf: Cf, key: &str) -> Result<Option<Vec<u8>>>;
    /// Keys with `prefix`, in byte order, with their values unless `keys_only`.
    fn scan(&self, cf: Cf, prefix: &str, keys_only: bool) -> Result<Vec<(String, Vec<u8>)>>;
    fn write(&self, ops: Vec<Op>) -> Result<()>;
    /// Stores `value` unless `key` is present; true if it stored it.
    fn insert_if_absent(&self, cf: Cf, key: &str, value: Vec<u8>) -> Result<bool> {
        self.compare_and_swap(cf, key, None, Some(value))
    }
    /// Replaces `key`'s value only if it is still `expected` (None: absent); true if it did.
    fn compare_and_swap(
        &self,
        cf: Cf,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<Vec<u8>>,
    ) -> Result<bool>;
    fn is_read_only(&self) -> bool;
    /// Shared by several processes or machines (then nothing may be cached in memory
    /// across requests as if this process were the only writer).
    fn is_shared(&self) -> bool {
        false
    }
}

/// The metadata database: typed JSON records over a [`MetaEngine`].
#[derive(Debug)]
pub struct Meta {
    engine: Box<dyn MetaEngine>,
}

impl Meta {
    /// Opens the embedded RocksDB database read-write. The caller holds the store's write
    /// lock: RocksDB admits one writer process.
    pub fn open(path: &Path) -> Result<Meta> {
        Ok(Meta::with_engine(Box::new(rocks::Rocks::open(path)?)))
    }

    /// Opens the embedded database as a RocksDB secondary instance: a consistent read view
    /// that works while another process has the database open for writing.
    pub fn open_read_only(path: &Path, scratch: &Path) -> Result<Meta> {
        Ok(Meta::with_engine(Box::new(rocks::Rocks::open_read_only(
            path, scratch,
        )?)))
    }

    /// Connects to PostgreSQL (`postgres://...`), applying the schema migrations.
    #[cfg(feature = "scale-out")]
    pub fn connect_postgres(url: &str) -> Result<Meta> {
        Ok(Meta::with_engine(Box::new(postgres::Postgres::connect(url)?)))
    }

    pub fn with_engine(engine: Box<dyn MetaEngine>) -> Meta {
        Meta { engine }
    }

    pub fn engine(&self) -> &dyn MetaEngine {
        &*self.engine
    }

    pub fn is_read_only(&self) -> bool {
        self.engine.is_read_only()
    }

    pub fn is_shared(&self) -> bool {
        self.engine.is_shared()
    }

    fn decode<T: DeserializeOwned>(cf: Cf, key: &str, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|source| MetaError::Corrupt {
            cf: cf.name(),
            key: key.to_string(),
            source,
        })
    }

    pub fn get<T: DeserializeOwned>(&self, cf: Cf, key: &str) -> Result<Option<T>> {
        match self.engine.get(cf, key)? {
            None => Ok(None),
            Some(bytes) => Self::decode(cf, key, &bytes).map(Some),
        }
    }

    /// The raw bytes of a record (for records that are not JSON).
    pub fn get_raw(&self, cf: Cf, key: &str) -> Result<Option<Vec<u8>>> {
        self.engine.get(cf, key)
    }

    pub fn contains(&self, cf: Cf, key: &str) -> Result<bool> {
        Ok(self.engine.get(cf, key)?.is_some())
    }

    pub fn put<T: Serialize>(&self, cf: Cf, key: &str, value: &T) -> Result<()> {
        let mut b = self.batch();
        b.put(cf, key, value);
        self.write(b)
    }

    pub fn put_raw(&self, cf: Cf, key: &str, value: Vec<u8>) -> Result<()> {
        self.engine.write(vec![Op::Put(cf, key.to_string(), value)])
    }

    pub fn delete(&self, cf: Cf, key: &str) -> Result<()> {
        let mut b = self.batch();
        b.delete(cf, key);
        self.write(b)
    }

    /// Stores `value` unless `key` is present (atomically, across every writer); true if
    /// it stored it.
    pub fn insert_if_absent<T: Serialize>(&self, cf: Cf, key: &str, value: &T) -> Result<bool> {
        self.engine.insert_if_absent(cf, key, encode(value))
    }

    /// Replaces a record only if it still has the value read as `expected`.
    pub fn compare_and_swap<T: Serialize>(
        &self,
        cf: Cf,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&T>,
    ) -> Result<bool> {
        self.engine
            .compare_and_swap(cf, key, expected, value.map(|v| encode(v)))
    }

    /// All records of a family, in key order.
    pub fn scan<T: DeserializeOwned>(&self, cf: Cf) -> Result<Vec<(String, T)>> {
        self.scan_prefix(cf, "")
    }

    /// Records whose key starts with `prefix`, in key order.
    pub fn scan_prefix<T: DeserializeOwned>(&self, cf: Cf, prefix: &str) -> Result<Vec<(String, T)>> {
        self.engine
            .scan(cf, prefix, false)?
            .into_iter()
            .map(|(k, v)| {
                let value = Self::decode(cf, &k, &v)?;
                Ok((k, value))
            })
            .collect()
    }

    /// Keys of a family (values unread), in key order.
    pub fn keys(&self, cf: Cf, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .engine
            .scan(cf, prefix, true)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    pub fn batch(&self) -> Batch {
        Batch { ops: Vec::new() }
    }

    /// Applies a batch atomically and durably.
    pub fn write(&self, batch: Batch) -> Result<()> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        self.engine.write(batch.ops)
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own record types cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).expect("metadata record serialises")
}

/// An atomic group of writes.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn put<T: Serialize>(&mut self, cf: Cf, key: &str, value: &T) {
        self.ops.push(Op::Put(cf, key.to_string(), encode(value)));
    }

    pub fn delete(&mut self, cf: Cf, key: &str) {
        self.ops.push(Op::Delete(cf, key.to_string()));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Key for a repository link: `<repository>@<digest>`.
pub fn repo_link_key(repository: &str, digest: &Digest) -> String {
    format!("{repository}@{digest}")
}
