//! `puller push`: an image (or an index and its images) from the store to a registry —
//! the blobs the repository lacks (`--jobs` at a time, streamed from the store's files),
//! then the manifests, children before the index, the tag last.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use strata_client::{Client, ClientError, Credentials};
use strata_store::{Digest, ImageRef, MAX_MANIFEST_BYTES, Manifest, Store, StoreError};

use crate::fetch::registry_url;

/// What can go wrong in a push.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} is not in the store (tag it there first: store tag SRC {0})")]
    NotStored(String),
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: Digest,
        #[source]
        source: strata_store::ManifestError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub plain_http: bool,
    pub jobs: usize,
    pub credentials: Option<Credentials>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            plain_http: false,
            jobs: 4,
            credentials: None,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Default)]
pub struct PushReport {
    pub manifest: Option<Digest>,
    pub blobs_pushed: usize,
    pub bytes_pushed: u64,
    pub blobs_present: usize,
    pub manifests: usize,
}

/// Pushes the manifest `reference` names in the store (by tag or digest) to the
/// registry and repository the reference names.
pub async fn push(
    store: Arc<Store>,
    reference: &ImageRef,
    opts: &PushOptions,
) -> Result<PushReport, PushError> {
    let digest = match (&reference.digest, reference.tag_key()) {
        (Some(d), _) => *d,
        (None, Some(key)) => {
            store
                .get_tag(&key)?
                .ok_or_else(|| PushError::NotStored(reference.to_string()))?
                .manifest
        }
        (None, None) => return Err(PushError::NotStored(reference.to_string())),
    };
    let client = Client::new(
        &registry_url(reference, opts.plain_http),
        opts.credentials.clone(),
    )?;
    let mut report = PushReport::default();
    let (bytes, media_type, manifest) = load(&store, &digest)?;
    if let Manifest::Index { manifests, .. } = &manifest {
        for child in manifests {
            let (cb, cm, cp) = load(&store, &child.digest)?;
            push_image(&client, &store, reference, &cp, opts, &mut report).await?;
            client
                .put_manifest(&reference.repository, &child.digest.to_string(), &cm, cb)
                .await?;
            report.manifests += 1;
        }
    } else {
        push_image(&client, &store, reference, &manifest, opts, &mut report).await?;
    }
    let target = reference.tag.clone().unwrap_or_else(|| digest.to_string());
    let pushed = client
        .put_manifest(&reference.repository, &target, &media_type, bytes)
        .await?;
    report.manifests += 1;
    report.manifest = Some(pushed);
    Ok(report)
}

/// A stored manifest: bytes, media type, parsed.
fn load(store: &Store, digest: &Digest) -> Result<(Bytes, String, Manifest), PushError> {
    let record = store
        .get_manifest(digest)?
        .ok_or_else(|| PushError::NotStored(digest.to_string()))?;
    let bytes = store
        .blobs()
        .read_small(digest, MAX_MANIFEST_BYTES)
        .map_err(StoreError::from)?;
    let manifest =
        Manifest::parse(&bytes, Some(&record.media_type)).map_err(|source| PushError::Manifest {
            digest: *digest,
            source,
        })?;
    Ok((Bytes::from(bytes), record.media_type, manifest))
}

/// Uploads an image manifest's config and layers that the repository lacks.
async fn push_image(
    client: &Client,
    store: &Arc<Store>,
    reference: &ImageRef,
    manifest: &Manifest,
    opts: &PushOptions,
    report: &mut PushReport,
) -> Result<(), PushError> {
    let mut seen = std::collections::HashSet::new();
    let blobs: Vec<Digest> = manifest
        .references()
        .into_iter()
        .map(|r| r.digest)
        .filter(|d| seen.insert(*d))
        .collect();
    let repo = reference.repository.as_str();
    let results: Vec<Result<Option<u64>, PushError>> = futures::stream::iter(blobs)
        .map(|digest| async move {
            let file = store.blobs().open_blob(&digest).map_err(StoreError::from)?;
            let size = file
                .metadata()
                .map_err(|source| PushError::Io {
                    context: format!("stat blob {digest}"),
                    source,
                })?
                .len();
            let sent = client.push_blob(repo, &digest, size, file).await?;
            tracing::info!(%digest, bytes = size, sent, "blob");
            Ok(sent.then_some(size))
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    for r in results {
        match r? {
            Some(size) => {
                report.blobs_pushed += 1;
                report.bytes_pushed += size;
            }
            None => report.blobs_present += 1,
        }
    }
    Ok(())
}
