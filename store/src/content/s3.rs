//! The S3 blob backend (AWS S3, MinIO, Ceph RGW, SeaweedFS…), through `object_store`.
//!
//! Where a blob's bytes are is a record in the metadata's `objects` family (digest → object
//! key and size), so a stat is a metadata read and no request path lists bucket prefixes.
//! Content of known digest goes to `<prefix>/blobs/sha256/<hex>`. An upload streams into an
//! S3 multipart upload at `<prefix>/uploads/<id>` in fixed parts (chunks smaller than a part
//! wait in the metadata's `tail/<id>` record between requests), and on commit, after the
//! digest checked, that object *is* the blob: nothing is uploaded twice. Two uploads of one
//! digest racing: the first location record wins, the loser deletes its object.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};

use super::{BlobBackend, BlobInfo, ByteStream, ContentError, Result, UploadState};
use crate::blobs::Committed;
use crate::digest::Digest;
use crate::meta::{Cf, Meta};

/// Bytes per multipart part (every part but the last has this size: S3's minimum is
/// 5 MiB, and some stores want equal parts).
pub const PART_SIZE: usize = 5 << 20;

/// How to reach the bucket (the `[storage]` table of the registry's config).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http(s)://host:port` of an S3-compatible service; AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[serde(default)]
    pub prefix: String,
    /// `http://endpoint/bucket/key` rather than `http://bucket.endpoint/key`.
    #[serde(default)]
    pub path_style: bool,
    /// Else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
    #[serde(default)]
    pub access_key: Option<String>,
    #[serde(default)]
    pub secret_key: Option<String>,
}

/// Where a blob is: its object key (below the prefix) and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Location {
    key: String,
    size: u64,
    stored: i64,
    /// Unix seconds a GC condemned the blob; a `keep` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    condemned: Option<i64>,
}

/// Blobs as S3 objects, located through the metadata.
pub struct S3Blobs {
    s3: Arc<AmazonS3>,
    meta: Arc<Meta>,
    prefix: String,
    bucket: String,
}

impl std::fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Blobs")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn s3_err(e: object_store::Error) -> ContentError {
    match e {
        object_store::Error::Generic { .. } => ContentError::Unavailable(e.to_string()),
        other => ContentError::Backend(other.to_string()),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn tail_key(id: &str) -> String {
    format!("tail/{id}")
}

impl S3Blobs {
    pub fn new(config: &S3Config, meta: Arc<Meta>) -> Result<S3Blobs> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&config.bucket);
        if let Some(endpoint) = &config.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        b = b
            .with_region(config.region.as_deref().unwrap_or("us-east-1"))
            .with_virtual_hosted_style_request(!config.path_style)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(300))
                    .with_allow_http(
                        config
                            .endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    ),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
                ..RetryConfig::default()
            });
        if let Some(k) = &config.access_key {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &config.secret_key {
            b = b.with_secret_access_key(k);
        }
        let s3 = b
            .build()
            .map_err(|e| ContentError::Backend(format!("S3 configuration: {e}")))?;
        Ok(S3Blobs {
            s3: Arc::new(s3),
            meta,
            prefix: config.prefix.trim_matches('/').to_string(),
            bucket: config.bucket.clone(),
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn upload_key(id: &str) -> String {
        format!("uploads/{id}")
    }

    async fn meta<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Meta) -> std::result::Result<T, crate::meta::MetaError> + Send + 'static,
    ) -> Result<T> {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || f(&meta))
            .await
            .map_err(|e| ContentError::Backend(format!("blocking task: {e}")))?
            .map_err(ContentError::Meta)
    }

    async fn location(&self, digest: &Digest) -> Result<Option<Location>> {
        let key = digest.to_string();
        self.meta(move |m| m.get::<Location>(Cf::Objects, &key)).await
    }

    /// Records `key` as the blob's object unless another writer got there first; in that
    /// case our object is deleted (theirs has the same bytes). True if ours won.
    async fn claim(&self, digest: &Digest, key: &str, size: u64) -> Result<bool> {
        let loc = Location {
            key: key.to_string(),
            size,
            stored: now(),
            condemned: None,
        };
        let rkey = digest.to_string();
        let won = self
            .meta(move |m| m.insert_if_absent(Cf::Objects, &rkey, &loc))
            .await?;
        if !won {
            let existing = self.location(digest).await?;
            if existing.is_some_and(|l| l.key != key) {
                let _ = self.s3.delete(&self.path(key)).await;
            }
        }
        Ok(won)
    }

    async fn put_part(&self, state: &mut UploadState, part: Bytes) -> Result<()> {
        let path = self.path(&Self::upload_key(&state.id));
        let id = match &state.multipart {
            Some(id) => id.clone(),
            None => {
                let id = self.s3.create_multipart(&path).await.map_err(s3_err)?;
                state.multipart = Some(id.clone());
                id
            }
        };
        let part_idx = state.parts.len();
        let PartId { content_id } = self
            .s3
            .put_part(&path, &id, part_idx, PutPayload::from_bytes(part))
            .await
            .map_err(s3_err)?;
        state.parts.push(content_id);
        Ok(())
    }

    /// Replaces a location record only if it is still `old` (the compare-and-swap every
    /// GC step and every `keep` goes through).
    async fn swap(&self, digest: &Digest, old: &Location, new: Option<&Location>) -> Result<bool> {
        let rkey = digest.to_string();
        let expected = serde_json::to_vec(old).expect("location serialises");
        let new = new.cloned();
        self.meta(move |m| m.compare_and_swap(Cf::Objects, &rkey, Some(&expected), new.as_ref()))
            .await
    }
}

#[async_trait::async_trait]
impl BlobBackend for S3Blobs {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.location(digest).await?.map(|l| l.size))
    }

    async fn read(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<ByteStream> {
        let loc = self
            .location(digest)
            .await?
            .ok_or(ContentError::NotFound(*digest))?;
        if loc.size == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let opts = GetOptions {
            range: range.map(|(a, b)| GetRange::Bounded(a..b + 1)),
            ..GetOptions::default()
        };
        let res = match self.s3.get_opts(&self.path(&loc.key), opts).await {
            Ok(res) => res,
            Err(object_store::Error::NotFound { .. }) => return Err(ContentError::NotFound(*digest)),
            Err(e) => return Err(s3_err(e)),
        };
        Ok(res.into_stream().map_err(std::io::Error::other).boxed())
    }

    async fn write(&self, digest: &Digest, bytes: Bytes) -> Result<bool> {
        super::check_digest(digest, &bytes)?;
        if self.keep(digest, now()).await? {
            return Ok(false);
        }
        let key = format!("blobs/sha256/{}", digest.hex());
        let size = bytes.len() as u64;
        self.s3
            .put(&self.path(&key), PutPayload::from_bytes(bytes))
            .await
            .map_err(s3_err)?;
        self.claim(digest, &key, size).await
    }

    async fn remove(&self, digest: &Digest) -> Result<bool> {
        let Some(loc) = self.location(digest).await? else {
            return Ok(false);
        };
        let removed = self.swap(digest, &loc, None).await?;
        if removed {
            match self.s3.delete(&self.path(&loc.key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s3_err(e)),
            }
        }
        Ok(removed)
    }

    async fn upload_resume(&self, state: &mut UploadState) -> Result<()> {
        state.buffer.clear();
        if state.pending == 0 {
            return Ok(());
        }
        let key = tail_key(&state.id);
        let tail = self
            .meta(move |m| m.get_raw(Cf::Objects, &key))
            .await?
            .unwrap_or_default();
        if tail.len() as u64 != state.pending {
            return Err(ContentError::Backend(format!(
                "upload {}: {} bytes kept between requests, {} expected",
                state.id,
                tail.len(),
                state.pending
            )));
        }
        state.buffer = tail;
        Ok(())
    }

    async fn upload_append(&self, state: &mut UploadState, chunk: Bytes) -> Result<()> {
        state.hash.update(&chunk);
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let take = (PART_SIZE - state.buffer.len()).min(rest.len());
            state.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if state.buffer.len() == PART_SIZE {
                let part = Bytes::from(std::mem::replace(
                    &mut state.buffer,
                    Vec::with_capacity(PART_SIZE),
                ));
                self.put_part(state, part).await?;
            }
        }
        state.pending = state.buffer.len() as u64;
        Ok(())
    }

    async fn upload_suspend(&self, state: &mut UploadState) -> Result<()> {
        let key = tail_key(&state.id);
        let tail = state.buffer.clone();
        state.pending = tail.len() as u64;
        if tail.is_empty() {
            self.meta(move |m| m.delete(Cf::Objects, &key)).await
        } else {
            self.meta(move |m| m.put_raw(Cf::Objects, &key, tail)).await
        }
    }

    async fn upload_commit(&self, mut state: UploadState, expected: &Digest) -> Result<Committed> {
        let actual = state.hash.finish();
        let size = state.offset();
        if actual != *expected {
            self.upload_abort(state).await?;
            return Err(ContentError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        if self.keep(expected, now()).await? {
            // Already stored (another upload of the same content): nothing to upload, and
            // a GC that condemned it meanwhile must not take it now.
            self.upload_abort(state).await?;
            return Ok(Committed {
                digest: *expected,
                size,
                written: false,
            });
        }
        let key = Self::upload_key(&state.id);
        let path = self.path(&key);
        let tail = Bytes::from(std::mem::take(&mut state.buffer));
        match state.multipart.clone() {
            None => {
                self.s3
                    .put(&path, PutPayload::from_bytes(tail))
                    .await
                    .map_err(s3_err)?;
            }
            Some(id) => {
                if !tail.is_empty() {
                    self.put_part(&mut state, tail).await?;
                }
                let parts = state
                    .parts
                    .iter()
                    .map(|p| PartId {
                        content_id: p.clone(),
                    })
                    .collect();
                self.s3
                    .complete_multipart(&path, &id, parts)
                    .await
                    .map_err(s3_err)?;
            }
        }
        let won = self.claim(expected, &key, size).await?;
        let tkey = tail_key(&state.id);
        self.meta(move |m| m.delete(Cf::Objects, &tkey)).await?;
        Ok(Committed {
            digest: *expected,
            size,
            written: won,
        })
    }

    async fn upload_abort(&self, state: UploadState) -> Result<()> {
        if let Some(id) = &state.multipart {
            let path = self.path(&Self::upload_key(&state.id));
            match self.s3.abort_multipart(&path, id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s3_err(e)),
            }
        }
        let tkey = tail_key(&state.id);
        self.meta(move |m| m.delete(Cf::Objects, &tkey)).await
    }

    async fn list(&self) -> Result<Vec<BlobInfo>> {
        let rows = self
            .meta(|m| m.scan_prefix::<Location>(Cf::Objects, "sha256:"))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, l)| {
                Some(BlobInfo {
                    digest: k.parse().ok()?,
                    size: l.size,
                    stored: l.stored,
                    condemned: l.condemned.is_some(),
                })
            })
            .collect())
    }

    async fn keep(&self, digest: &Digest, stored_before: i64) -> Result<bool> {
        loop {
            let Some(loc) = self.location(digest).await? else {
                return Ok(false);
            };
            if loc.condemned.is_none() && loc.stored >= stored_before {
                return Ok(true);
            }
            let kept = Location {
                stored: now(),
                condemned: None,
                ..loc.clone()
            };
            if self.swap(digest, &loc, Some(&kept)).await? {
                return Ok(true);
            }
            // Raced with a GC step or another keep: look again.
        }
    }

    async fn condemn(&self, digest: &Digest) -> Result<bool> {
        let Some(loc) = self.location(digest).await? else {
            return Ok(false);
        };
        if loc.condemned.is_some() {
            return Ok(true);
        }
        let condemned = Location {
            condemned: Some(now()),
            ..loc.clone()
        };
        self.swap(digest, &loc, Some(&condemned)).await
    }

    async fn remove_condemned(&self, digest: &Digest) -> Result<Option<u64>> {
        let Some(loc) = self.location(digest).await? else {
            return Ok(None);
        };
        if loc.condemned.is_none() || !self.swap(digest, &loc, None).await? {
            return Ok(None);
        }
        match self.s3.delete(&self.path(&loc.key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(Some(loc.size)),
            Err(e) => Err(s3_err(e)),
        }
    }

    async fn presigned_url(&self, digest: &Digest, ttl: Duration) -> Result<Option<String>> {
        let loc = self
            .location(digest)
            .await?
            .ok_or(ContentError::NotFound(*digest))?;
        let url = self
            .s3
            .signed_url(http::Method::GET, &self.path(&loc.key), ttl)
            .await
            .map_err(s3_err)?;
        Ok(Some(url.to_string()))
    }
}
