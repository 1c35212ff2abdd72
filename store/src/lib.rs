//! strata's store: content-addressed blobs, RocksDB metadata, the radix ID index,
//! unpacked layers, GC, fsck and image archives. Knows nothing of HTTP.

#[cfg(feature = "meta")]
mod archive;
mod blobs;
#[cfg(feature = "meta")]
mod config;
#[cfg(feature = "meta")]
mod content;
mod diff_size;
mod digest;
#[cfg(feature = "meta")]
mod fsck;
/// Fuzz target bodies (for `fixtures/fuzz` and its corpus-replay test); not an API.
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "meta")]
mod gc;
#[cfg(feature = "meta")]
mod gc_shared;
#[cfg(feature = "meta")]
mod history;
mod index;
mod layers;
mod manifest;
#[cfg(feature = "meta")]
mod meta;
mod pool;
mod reference;
#[cfg(feature = "meta")]
mod registry;
mod report;
mod runnable;
#[cfg(feature = "meta")]
mod store;
mod tar_headers;
mod unpack;

#[cfg(feature = "meta")]
pub use archive::{ArchiveError, LoadOptions, LoadReport, LoadedImage, SaveReport, load, save};
pub use blobs::{
    BlobEntry, BlobError, BlobStore, Committed, DIRECT_ALIGN, Ingest, IngestKey, Staged, valid_upload_id,
};
#[cfg(feature = "meta")]
pub use config::{MetadataSection, StorageSection, StoreFile};
#[cfg(feature = "meta")]
pub use content::{
    BlobBackend, BlobInfo, ByteStream, ContentError, LocalBlobs, ResumableSha256, UploadState,
};
#[cfg(feature = "scale-out")]
pub use content::{S3Blobs, S3Config};
pub use digest::{Digest, DigestError, Hasher, HashingReader, HashingWriter};
#[cfg(feature = "meta")]
pub use fsck::{Fault, FsckReport};
#[cfg(feature = "meta")]
pub use gc::{GcOptions, GcReport, Usage};
#[cfg(feature = "meta")]
pub use gc_shared::{GcProgress, SharedGcOptions};
#[cfg(feature = "meta")]
pub use history::{HistoryEntry, MISSING_ID};
pub use index::{IdIndex, IdKind, IndexError};
pub use layers::{LayerError, LayerStore, LayerUsage, chain_id};
pub use manifest::{
    Config, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LIST, DOCKER_MANIFEST, MAX_MANIFEST_BYTES, Manifest,
    ManifestError, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
    Platform, Ref, is_manifest_media_type,
};
#[cfg(feature = "meta")]
pub use meta::{
    BlobRecord, Cf, ImageRecord, LayerRecord, LeaseRecord, ManifestRecord, Meta, MetaEngine, MetaError, Op,
    SCHEMA_VERSION, TagRecord,
};
pub use pool::{InFlight, PoolError, Role};
pub use reference::{
    ImageRef, ReferenceError, familiar_name, split_tag_key, valid_name_component, valid_tag,
};
#[cfg(feature = "meta")]
pub use registry::{Referrer, UploadRecord, repo_tag_key};
pub use report::error_chain;
pub use runnable::{RunnableImage, cached_runnable};
#[cfg(feature = "meta")]
pub use store::{
    ImageSummary, MetadataConfig, Resolved, StorageConfig, Store, StoreConfig, StoreError, default_root,
    image_config,
};
pub use unpack::{
    Compression, DEFAULT_DEDUP_MIN_SIZE, UnpackError, UnpackOptions, UnpackReport, unpack_layer,
};
