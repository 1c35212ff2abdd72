//! The local-files blob backend: [`BlobStore`] behind the [`BlobBackend`] seam (blocking
//! file work on tokio's blocking pool). Callers that can use its fast paths ask `local()`.

use std::io::{Read, Seek, SeekFrom};

use bytes::Bytes;
use futures::StreamExt;

use super::{BlobBackend, BlobInfo, ByteStream, ContentError, Result, UploadState};
use crate::blobs::{BlobError, BlobStore, Committed, IngestKey};
use crate::digest::Digest;

/// Bytes read per chunk of a stream, and buffered per upload between ingest writes.
const CHUNK: usize = 1 << 20;

/// Blobs as files under `<root>/blobs/sha256/`, uploads as resumable ingests.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    blobs: BlobStore,
    /// Blobs a GC of this process condemned (the embedded store has one writer process,
    /// so the condemned marks need not be shared).
    condemned: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Digest>>>,
}

impl LocalBlobs {
    pub fn new(blobs: BlobStore) -> LocalBlobs {
        LocalBlobs {
            blobs,
            condemned: Default::default(),
        }
    }

    fn condemned(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Digest>> {
        self.condemned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ContentError::Backend(format!("blocking task: {e}")))?
}

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> ContentError + '_ {
    move |source| {
        ContentError::Blob(BlobError::Io {
            context: context.to_string(),
            source,
        })
    }
}

impl LocalBlobs {
    /// Writes the buffered bytes into the upload's ingest (resumed from its file).
    async fn flush(&self, state: &mut UploadState) -> Result<()> {
        if state.buffer.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut state.buffer);
        let blobs = self.blobs.clone();
        let id = state.id.clone();
        let offset = state.offset() - buf.len() as u64;
        blocking(move || Ok(blobs.append_upload(&id, offset, &buf)?)).await
    }
}

#[async_trait::async_trait]
impl BlobBackend for LocalBlobs {
    fn kind(&self) -> &'static str {
        "filesystem"
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.blobs.size(digest)?)
    }

    async fn read(&self, digest: &Digest, range: Option<(u64, u64)>) -> Result<ByteStream> {
        let blobs = self.blobs.clone();
        let d = *digest;
        let (file, start, count) = blocking(move || {
            let mut f = blobs.open_blob(&d)?;
            let len = f.metadata().map_err(io_err("stat blob"))?.len();
            let (start, count) = match range {
                None => (0, len),
                Some((a, b)) if a <= b && b < len => (a, b - a + 1),
                Some(_) => {
                    return Err(ContentError::Backend(format!(
                        "range outside the {len} bytes of {d}"
                    )));
                }
            };
            f.seek(SeekFrom::Start(start)).map_err(io_err("seek blob"))?;
            Ok((f, start, count))
        })
        .await?;
        let _ = start;
        let reader = file.take(count);
        let stream = futures::stream::unfold(Some(reader), |state| async move {
            let mut reader = state?;
            let res = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; CHUNK];
                let n = reader.read(&mut buf)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>((buf, reader))
            })
            .await;
            match res {
                Ok(Ok((buf, _))) if buf.is_empty() => None,
                Ok(Ok((buf, reader))) => Some((Ok(Bytes::from(buf)), Some(reader))),
                Ok(Err(e)) => Some((Err(e), None)),
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        });
        Ok(stream.boxed())
    }

    async fn write(&self, digest: &Digest, bytes: Bytes) -> Result<bool> {
        super::check_digest(digest, &bytes)?;
        let blobs = self.blobs.clone();
        blocking(move || Ok(blobs.put_bytes(&bytes)?.written)).await
    }

    async fn remove(&self, digest: &Digest) -> Result<bool> {
        let blobs = self.blobs.clone();
        let d = *digest;
        blocking(move || Ok(blobs.remove(&d)?)).await
    }

    async fn upload_resume(&self, _state: &mut UploadState) -> Result<()> {
        Ok(())
    }

    async fn upload_append(&self, state: &mut UploadState, chunk: Bytes) -> Result<()> {
        state.hash.update(&chunk);
        state.buffer.extend_from_slice(&chunk);
        if state.buffer.len() >= CHUNK {
            self.flush(state).await?;
        }
        Ok(())
    }

    async fn upload_suspend(&self, state: &mut UploadState) -> Result<()> {
        self.flush(state).await
    }

    async fn upload_commit(&self, mut state: UploadState, expected: &Digest) -> Result<Committed> {
        self.flush(&mut state).await?;
        let actual = state.hash.finish();
        let size = state.offset();
        let blobs = self.blobs.clone();
        let key = IngestKey::Upload(state.id.clone());
        let d = *expected;
        blocking(move || {
            let ingest = match blobs.begin(key)? {
                Some(ingest) => ingest,
                None => return Err(ContentError::Backend("upload ingest vanished".into())),
            };
            if actual != d {
                ingest.discard()?;
                return Err(ContentError::DigestMismatch { expected: d, actual });
            }
            Ok(ingest.commit(&d, Some(size))?)
        })
        .await
    }

    async fn upload_abort(&self, state: UploadState) -> Result<()> {
        let blobs = self.blobs.clone();
        blocking(move || {
            blobs.remove_partial(&format!("upload-{}", state.id))?;
            Ok(())
        })
        .await
    }

    async fn list(&self) -> Result<Vec<BlobInfo>> {
        let blobs = self.blobs.clone();
        let entries = blocking(move || Ok(blobs.list()?)).await?;
        let condemned = self.condemned();
        Ok(entries
            .into_iter()
            .map(|e| BlobInfo {
                digest: e.digest,
                size: e.size,
                stored: e
                    .modified
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
                condemned: condemned.contains(&e.digest),
            })
            .collect())
    }

    /// Files: a blob's time is its mtime; keeping one touches it.
    async fn keep(&self, digest: &Digest, _stored_before: i64) -> Result<bool> {
        let blobs = self.blobs.clone();
        let d = *digest;
        self.condemned().remove(&d);
        blocking(move || {
            if blobs.contains(&d) {
                blobs.touch(&d);
                Ok(true)
            } else {
                Ok(false)
            }
        })
        .await
    }

    async fn condemn(&self, digest: &Digest) -> Result<bool> {
        if !self.blobs.contains(digest) {
            return Ok(false);
        }
        self.condemned().insert(*digest);
        Ok(true)
    }

    async fn remove_condemned(&self, digest: &Digest) -> Result<Option<u64>> {
        let Some(size) = self.stat(digest).await? else {
            return Ok(None);
        };
        if !self.condemned().remove(digest) {
            return Ok(None);
        }
        Ok(self.remove(digest).await?.then_some(size))
    }

    fn local(&self) -> Option<&BlobStore> {
        Some(&self.blobs)
    }
}
