//! Image archives: docker-save tars (classic, and the OCI-inside layout of newer docker),
//! OCI image layout directories and OCI archive tars, read into and written from the store.
//! `save` writes one tar that is at once a docker-save archive and an OCI image layout.

mod load;
mod save;

pub use load::{LoadOptions, LoadReport, LoadedImage, load};
pub use save::{SaveReport, save};

use crate::blobs::BlobError;
use crate::digest::Digest;
use crate::store::StoreError;

/// Errors from reading or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not an image archive: found neither manifest.json nor index.json")]
    NotAnArchive,
    #[error("not an image archive: neither a tar file nor a gzip or zstd compressed one")]
    NotATar,
    #[error("malformed {file}: {detail}")]
    Malformed { file: String, detail: String },
    #[error("archive entry {0:?} has an unsafe path")]
    UnsafePath(String),
    #[error("archive is missing {0}")]
    Missing(String),
    #[error("{path}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        path: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{path}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("image {image}: layer {index}: diff id mismatch: config says {expected}, layer is {actual}")]
    DiffIdMismatch {
        image: Digest,
        index: usize,
        expected: Digest,
        actual: Digest,
    },
    #[error("truncated or corrupt archive: {0}")]
    Corrupt(String),
    #[error("{0} is not a tagged image reference")]
    NotTagged(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ArchiveError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArchiveError {
        let context = context.into();
        move |source| ArchiveError::Io { context, source }
    }
}

/// One entry of docker-save's `manifest.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DockerSaveEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

/// Annotation naming the image (full reference), as containerd and docker write it.
pub(crate) const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI annotation naming a manifest in an index (a tag, or a full reference).
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
