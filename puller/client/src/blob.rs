//! Blobs from a registry straight into a store ingest keyed by their digest: the body
//! streams through a bounded queue to a blocking writer (never held whole in memory; the
//! ingest checks the digest and the announced size at commit), an interrupted ingest is
//! resumed with a Range request, and the progress can be published on a watch channel so
//! that readers follow the partial file while it is written.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{Method, Response, StatusCode};
use strata_store::{BlobError, BlobStore, Committed, Digest, Ingest, IngestKey};
use tokio::sync::watch;

use crate::client::Client;
use crate::error::{ClientError, Result};

/// Chunks of a blob download queued for the writer thread.
const BLOB_QUEUE: usize = 16;
/// The writer batches queued chunks up to this many bytes per `writev`.
const WRITE_BATCH: usize = 1 << 20;

/// How far a blob download has got, published on a `watch` channel by
/// [`Client::fetch_blob_following`]: a reader may `pread` bytes `0..written` of `file`
/// while the download runs, and the rest once `done` is `Some(Ok(()))` (the digest and
/// size verified, the blob committed).
#[derive(Debug, Clone, Default)]
pub struct BlobProgress {
    /// The partial ingest file, read-only, once the body is flowing into it (it becomes
    /// the stored blob on commit). `None` when nothing is downloaded (already stored).
    pub file: Option<Arc<File>>,
    /// The blob's size as the registry announced it (checked at commit), if it did.
    pub size: Option<u64>,
    /// Bytes of the blob written to `file` so far (from offset 0, resumed bytes included).
    pub written: u64,
    /// `Some(Ok(()))` once committed (or found stored), `Some(Err(why))` if it failed.
    pub done: Option<Result<(), String>>,
}

impl Client {
    /// `GET` of a blob (from `offset` with a Range request when non-zero). The response
    /// is checked; its body is the byte stream.
    pub async fn get_blob(&self, name: &str, digest: &Digest, offset: u64) -> Result<Response> {
        let url = format!("{}/v2/{name}/blobs/{digest}", self.base());
        let range;
        let headers: &[(&str, String)] = if offset > 0 {
            range = [(RANGE.as_str(), format!("bytes={offset}-"))];
            &range
        } else {
            &[]
        };
        let resp = self.send(Method::GET, &url, &Self::scope(name), headers).await?;
        self.check(resp, &url).await
    }

    /// Downloads a blob into `blobs` through an ingest keyed by its digest: the body
    /// streams through a bounded queue to a blocking writer, which commits only if the
    /// content hashes to `digest` (and has the registry's announced size). An interrupted
    /// earlier ingest is resumed with a Range request. Returns without downloading when
    /// the blob is already stored (`written: false`).
    pub async fn fetch_blob(&self, name: &str, digest: &Digest, blobs: &BlobStore) -> Result<Committed> {
        self.fetch_blob_following(name, digest, blobs, watch::Sender::new(BlobProgress::default()))
            .await
    }

    /// [`Client::fetch_blob`], publishing its progress on `progress`: the partial file and
    /// the announced size when the body starts, the bytes written after each write, and
    /// the outcome at the end (a dropped sender, e.g. a cancelled download, also ends it).
    pub async fn fetch_blob_following(
        &self,
        name: &str,
        digest: &Digest,
        blobs: &BlobStore,
        progress: watch::Sender<BlobProgress>,
    ) -> Result<Committed> {
        let result = self.fetch_blob_inner(name, digest, blobs, &progress).await;
        progress.send_modify(|p| {
            p.done = Some(match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            })
        });
        result
    }

    async fn fetch_blob_inner(
        &self,
        name: &str,
        digest: &Digest,
        blobs: &BlobStore,
        progress: &watch::Sender<BlobProgress>,
    ) -> Result<Committed> {
        let d = *digest;
        let store_err = move |source| ClientError::Store { digest: d, source };
        let bs = blobs.clone();
        let begun = tokio::task::spawn_blocking(move || bs.begin(IngestKey::Digest(d)))
            .await
            .map_err(|e| ClientError::Writer(e.to_string()))?
            .map_err(store_err)?;
        let Some(mut ingest) = begun else {
            return already_stored(blobs, digest);
        };
        let offset = ingest.offset();
        let resp = match self.get_blob(name, digest, offset).await {
            Ok(r) => r,
            Err(e) => {
                if offset == 0 {
                    // Leave no empty partial behind for a blob that never came.
                    let _ = tokio::task::spawn_blocking(move || ingest.discard()).await;
                }
                return Err(e);
            }
        };
        let url = resp.url().to_string();
        let mut total = None;
        if offset > 0 {
            let resumed = resp.status() == StatusCode::PARTIAL_CONTENT
                && resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range)
                    .is_some_and(|(start, len)| {
                        total = len;
                        start == offset
                    });
            if !resumed {
                // The registry sent the whole blob: start the ingest afresh.
                let bs = blobs.clone();
                let again = tokio::task::spawn_blocking(move || {
                    ingest.discard()?;
                    bs.begin(IngestKey::Digest(d))
                })
                .await
                .map_err(|e| ClientError::Writer(e.to_string()))?
                .map_err(store_err)?;
                let Some(i) = again else {
                    return already_stored(blobs, digest);
                };
                ingest = i;
                total = resp.content_length();
            }
        } else {
            total = resp.content_length();
        }
        let file = Arc::new(ingest.reader().map_err(store_err)?);
        progress.send_modify(|p| {
            p.file = Some(file);
            p.size = total;
            p.written = ingest.offset();
        });
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(BLOB_QUEUE);
        let writer_progress = progress.clone();
        let writer =
            tokio::task::spawn_blocking(move || write_ingest(ingest, rx, &d, total, &writer_progress));
        let mut stream = resp.bytes_stream();
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    if tx.send(Ok(c)).await.is_err() {
                        break; // the writer stopped; its error says why
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = writer.await.map_err(|e| ClientError::Writer(e.to_string()))?;
        if let Some(source) = failed {
            return Err(ClientError::Http { url, error: source });
        }
        written
    }
}

fn already_stored(blobs: &BlobStore, digest: &Digest) -> Result<Committed> {
    let d = *digest;
    let size = blobs
        .size(digest)
        .map_err(|source| ClientError::Store { digest: d, source })?
        .ok_or(ClientError::Store {
            digest: d,
            source: BlobError::NotFound(d),
        })?;
    Ok(Committed {
        digest: d,
        size,
        written: false,
    })
}

/// The blocking side of a blob download: appends queued chunks (batched into one
/// `writev` up to `WRITE_BATCH`, each then published as progress), then commits. A
/// download error leaves the partial ingest in place for a resume.
fn write_ingest(
    mut ingest: Ingest,
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    digest: &Digest,
    total: Option<u64>,
    progress: &watch::Sender<BlobProgress>,
) -> Result<Committed> {
    let store_err = |source| ClientError::Store {
        digest: *digest,
        source,
    };
    let mut batch: Vec<Bytes> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut size = 0;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Ok(b) => {
                    size += b.len();
                    batch.push(b);
                }
                Err(e) => {
                    // Keep what arrived before the failure: a retry resumes after it.
                    let _ = ingest.write_all_vectored(&batch);
                    return Err(ClientError::Writer(format!("download of {digest} failed: {e}")));
                }
            }
            if size < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        ingest.write_all_vectored(&batch).map_err(store_err)?;
        batch.clear();
        let written = ingest.offset();
        progress.send_modify(|p| p.written = written);
    }
    ingest.commit(digest, total).map_err(store_err)
}

/// `bytes START-END/TOTAL` → (START, TOTAL if known).
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let spec = v.trim().strip_prefix("bytes")?.trim();
    let (range, total) = spec.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 10-99/100"), Some((10, Some(100))));
        assert_eq!(parse_content_range("bytes 10-99/*"), Some((10, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
