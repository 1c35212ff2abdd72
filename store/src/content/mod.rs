//! The blob-content seam, after containerd's `content.Provider` and `Ingester`: what every
//! blob backend does — stat, stream (with ranges), write small content of known digest,
//! remove, and uploads whose digest is learnt at the end — whatever holds the bytes (local
//! files, S3 objects). Callers never see a backend's files, keys or paths.
//!
//! Upload state ([`UploadState`]) is plain data the caller saves between requests (the
//! registry keeps it in its upload record), so each chunk of one upload may reach another
//! process or machine: the SHA-256 state travels with it ([`ResumableSha256`]).

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::blobs::{BlobError, BlobStore, Committed, valid_upload_id};
use crate::digest::Digest;
use crate::meta::MetaError;

mod local;
#[cfg(feature = "scale-out")]
mod s3;
mod sha256;

pub use local::LocalBlobs;
#[cfg(feature = "scale-out")]
pub use s3::{S3Blobs, S3Config};
pub use sha256::ResumableSha256;

/// A stored blob, as a backend lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// Unix seconds it was stored (or last kept).
    pub stored: i64,
    /// Condemned by a GC that has not removed it yet.
    pub condemned: bool,
}

/// A blob's bytes (or a range of them) as they arrive.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Errors from a blob backend.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("blob {0} not found")]
    NotFound(Digest),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob exceeds the size limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("invalid upload id {0:?}")]
    InvalidUpload(String),
    #[error("object storage unavailable: {0}")]
    Unavailable(String),
    #[error("object storage: {0}")]
    Backend(String),
    #[error(transparent)]
    Blob(BlobError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// The files backend's errors, in the seam's terms where the seam has them.
impl From<BlobError> for ContentError {
    fn from(e: BlobError) -> ContentError {
        match e {
            BlobError::NotFound(d) => ContentError::NotFound(d),
            BlobError::DigestMismatch { expected, actual } => {
                ContentError::DigestMismatch { expected, actual }
            }
            BlobError::TooLarge { limit } => ContentError::TooLarge { limit },
            other => ContentError::Blob(other),
        }
    }
}

impl ContentError {
    /// The backend (not the request) failed in a way that may pass: worth a 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ContentError::Unavailable(_) | ContentError::Meta(MetaError::Unavailable(_))
        )
    }
}

pub type Result<T, E = ContentError> = std::result::Result<T, E>;

/// An upload in progress, as saved between requests. `offset()` bytes have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    pub id: String,
    pub hash: ResumableSha256,
    /// The backend's multipart upload, once one was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipart: Option<String>,
    /// The parts uploaded so far, in order (backend tokens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
    /// Bytes accepted but not yet in a part (kept by the backend between requests).
    #[serde(default)]
    pub pending: u64,
    /// What is buffered in this process for the next part (never serialised: `suspend`
    /// hands it to the backend).
    #[serde(skip)]
    pub(crate) buffer: Vec<u8>,
}

impl UploadState {
    fn new(id: &str) -> UploadState {
        UploadState {
            id: id.to_string(),
            hash: ResumableSha256::new(),
            multipart: None,
            parts: Vec::new(),
            pending: 0,
            buffer: Vec::new(),
        }
    }

    /// Bytes accepted so far.
    pub fn offset(&self) -> u64 {
        self.hash.len()
    }
}

/// Upload ids are chosen by the caller (see [`valid_upload_id`]).
fn check_upload_id(id: &str) -> Result<()> {
    if valid_upload_id(id) {
        Ok(())
    } else {
        Err(ContentError::InvalidUpload(id.to_string()))
    }
}

/// Checks that `bytes` hash to `digest` (content written whole by a backend).
fn check_digest(digest: &Digest, bytes: &[u8]) -> Result<()> {
    let actual = Digest::of(bytes);
    if actual == *digest {
        Ok(())
    } else {
        Err(ContentError::DigestMismatch {
            expected: *digest,
            actual,
        })
    }
}

/// What every blob backend does. The backend test suite (`store/tests/backends.rs`) runs
/// against each implementation.
///
/// Invariants: a blob becomes visible (`stat`, `read`) only once its digest is verified and
/// its bytes durable, and then all at once; one stored copy per digest, however many
/// writers race; an aborted or failed upload leaves no visible blob.
#[async_trait::async_trait]
pub trait BlobBackend: Send + Sync + std::fmt::Debug {
    /// A short name for messages and metrics (`filesystem`, `s3`).
    fn kind(&self) -> &'static str;

    /// The size of a stored blob, `None` if absent.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>>;

    /// The blob's bytes, or the inclusive byte range `(first, last)` of them.
    async fn read(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<ByteStream>;

    /// A whole small blob (manifests, configs), refused past `limit` bytes.
    async fn read_small(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        use futures::TryStreamExt;
        let size = self.stat(digest).await?.ok_or(ContentError::NotFound(*digest))?;
        if size > limit {
            return Err(ContentError::TooLarge { limit });
        }
        let mut out = Vec::with_capacity(size as usize);
        let mut stream = self.read(digest, None).await?;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| ContentError::Unavailable(e.to_string()))?
        {
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(ContentError::TooLarge { limit });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Stores small content whose digest the caller knows (checked here). False when the
    /// blob was already stored.
    async fn write(&self, digest: &Digest, bytes: Bytes) -> Result<bool>;

    /// Removes a blob (GC and repair only). False when it was not there.
    async fn remove(&self, digest: &Digest) -> Result<bool>;

    /// Starts an upload under `id` (unique per upload, chosen by the caller).
    async fn upload_begin(&self, id: &str) -> Result<UploadState> {
        check_upload_id(id)?;
        Ok(UploadState::new(id))
    }

    /// Takes up what a previous request left of the upload (`suspend`ed).
    async fn upload_resume(&self, state: &mut UploadState) -> Result<()>;

    /// Appends bytes. They count as accepted once `suspend` or `commit` returns.
    async fn upload_append(&self, state: &mut UploadState, chunk: Bytes) -> Result<()>;

    /// Makes what was appended durable, so another process can `resume` the upload from
    /// the state the caller saves next.
    async fn upload_suspend(&self, state: &mut UploadState) -> Result<()>;

    /// Checks the digest and makes the blob visible. On a mismatch nothing becomes visible
    /// and the upload is dropped.
    async fn upload_commit(&self, state: UploadState, expected: &Digest) -> Result<Committed>;

    /// Drops an upload and everything it stored.
    async fn upload_abort(&self, state: UploadState) -> Result<()>;

    /// A URL a client can GET the blob from directly for `ttl`, where the backend offers
    /// one (S3 presigned URLs with `redirect = true`).
    async fn presigned_url(&self, _digest: &Digest, _ttl: Duration) -> Result<Option<String>> {
        Ok(None)
    }

    /// Every stored blob, for GC, fsck and `du` (never on a request path).
    async fn list(&self) -> Result<Vec<BlobInfo>>;

    /// Keeps a stored blob for a client about to reference it: if it is condemned by a GC
    /// or was stored before `stored_before` (Unix seconds), it is pardoned and its grace
    /// period starts again. False when the blob is not (or no longer) stored.
    async fn keep(&self, digest: &Digest, stored_before: i64) -> Result<bool>;

    /// GC, step one: marks an unreferenced blob as condemned (if it is still stored and
    /// not pardoned since `seen_stored`). True if it is now condemned.
    async fn condemn(&self, digest: &Digest) -> Result<bool>;

    /// GC, step two: removes a blob only if it is still condemned (no [`keep`] came
    /// between). The size removed, or None.
    ///
    /// [`keep`]: BlobBackend::keep
    async fn remove_condemned(&self, digest: &Digest) -> Result<Option<u64>>;

    /// The local files backend, for its fast paths (`sendfile`, `O_DIRECT` uploads).
    fn local(&self) -> Option<&BlobStore> {
        None
    }
}
