//! Upload sessions over a shared blob backend (S3 + PostgreSQL): stateless replicas.
//! Everything a session is — repository, the backend's multipart upload and parts, the
//! SHA-256 midstate — lives in the session's store record, so each request of an upload
//! may reach any replica. One request at a time writes a session: it takes a short lease in
//! the record (compare-and-swap), renews it as parts go out, and saves the new state with
//! the same compare-and-swap, so a second writer — or a replica that lost its lease while
//! stalled — can never interleave parts.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use strata_store::{BlobBackend, Committed, ContentError, Digest, Store, UploadRecord, UploadState};

use crate::error::{ApiError, ApiResult};
use crate::pace::{BodyPace, TooSlow};
use crate::uploads::{UploadBody, new_id, now};

/// How long a request holds a session without renewing its lease (a replica killed
/// mid-request blocks the session this long at most).
const LEASE: Duration = Duration::from_secs(10);
/// Bytes read at a time from a direct body.
const READ_CHUNK: usize = 1 << 20;

/// The shared sessions of one replica (nothing of them is in memory between requests).
#[derive(Debug, Clone)]
pub struct SharedUploads {
    store: Arc<Store>,
}

/// A session a request holds: its record, as last stored (the compare-and-swap base).
#[derive(Debug)]
pub struct SharedSlot {
    pub id: String,
    pub repository: String,
    record: UploadRecord,
    stored: Vec<u8>,
    state: UploadState,
}

impl From<ContentError> for ApiError {
    fn from(e: ContentError) -> ApiError {
        ApiError::from(strata_store::StoreError::Content(e))
    }
}

fn lost() -> ApiError {
    ApiError::upload_invalid("the upload was changed by another request")
}

impl SharedUploads {
    pub fn new(store: Arc<Store>) -> SharedUploads {
        SharedUploads { store }
    }

    fn content(&self) -> &Arc<dyn BlobBackend> {
        self.store.content()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, strata_store::StoreError> + Send + 'static,
    ) -> ApiResult<T> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
    }

    /// Stores `slot.record` with `slot.state`, if the stored record is still ours.
    async fn save(&self, slot: &mut SharedSlot, busy_until: i64) -> ApiResult<()> {
        slot.record.state = Some(slot.state.clone());
        slot.record.updated = now();
        slot.record.busy_until = busy_until;
        let (id, expected, record) = (slot.id.clone(), slot.stored.clone(), slot.record.clone());
        match self
            .blocking(move |s| s.swap_upload(&id, &expected, Some(&record)))
            .await?
        {
            Some(bytes) => {
                slot.stored = bytes;
                Ok(())
            }
            None => Err(lost()),
        }
    }

    /// Starts a session for `repository`, held by the caller.
    pub async fn create(&self, repository: &str) -> ApiResult<SharedSlot> {
        let id = new_id();
        let state = self.content().upload_begin(&id).await?;
        let record = UploadRecord {
            repository: repository.to_string(),
            started: now(),
            updated: now(),
            state: Some(state.clone()),
            busy_until: now() + LEASE.as_secs() as i64,
        };
        let (rid, r) = (id.clone(), record.clone());
        self.blocking(move |s| s.put_upload(&rid, &r)).await?;
        let stored = serde_json::to_vec(&record).map_err(ApiError::internal)?;
        Ok(SharedSlot {
            id,
            repository: repository.to_string(),
            record,
            stored,
            state,
        })
    }

    /// Takes a session of `repository` for this request.
    pub async fn lock(&self, repository: &str, id: &str) -> ApiResult<SharedSlot> {
        let rid = id.to_string();
        if !strata_store::valid_upload_id(id) {
            return Err(ApiError::upload_unknown());
        }
        let Some((record, stored)) = self.blocking(move |s| s.get_upload_raw(&rid)).await? else {
            return Err(ApiError::upload_unknown());
        };
        let Some(state) = record.state.clone() else {
            return Err(ApiError::upload_unknown());
        };
        if record.repository != repository {
            return Err(ApiError::upload_unknown());
        }
        if record.busy_until > now() {
            return Err(ApiError::upload_invalid(
                "another request is writing this upload; retry when it has finished",
            ));
        }
        let mut slot = SharedSlot {
            id: id.to_string(),
            repository: record.repository.clone(),
            record,
            stored,
            state,
        };
        self.save(&mut slot, now() + LEASE.as_secs() as i64).await?;
        self.content().upload_resume(&mut slot.state).await?;
        Ok(slot)
    }

    /// Bytes accepted so far.
    pub fn offset(&self, slot: &SharedSlot) -> u64 {
        slot.state.offset()
    }

    /// A session's offset, read without taking it (an upload status request).
    pub async fn status(&self, repository: &str, id: &str) -> ApiResult<u64> {
        let rid = id.to_string();
        let record = self.blocking(move |s| s.get_upload(&rid)).await?;
        match record {
            Some(r) if r.repository == repository => {
                r.state.map(|s| s.offset()).ok_or_else(ApiError::upload_unknown)
            }
            _ => Err(ApiError::upload_unknown()),
        }
    }

    /// Lets the session go without changing it (a refused request).
    pub async fn release(&self, mut slot: SharedSlot) {
        let _ = self.save(&mut slot, 0).await;
    }

    /// Appends a request body; returns the new offset. What arrived before a failure is
    /// kept, as with the embedded store.
    pub async fn append(
        &self,
        slot: &mut SharedSlot,
        body: UploadBody,
        pace: BodyPace,
        limit: Option<u64>,
    ) -> ApiResult<u64> {
        let result = self.copy_body(slot, body, pace, limit).await;
        let suspended = self.content().upload_suspend(&mut slot.state).await;
        self.save(slot, now() + LEASE.as_secs() as i64).await?;
        result?;
        suspended?;
        Ok(slot.state.offset())
    }

    async fn copy_body(
        &self,
        slot: &mut SharedSlot,
        body: UploadBody,
        pace: BodyPace,
        limit: Option<u64>,
    ) -> ApiResult<()> {
        let mut meter = pace.meter();
        let too_slow = |e: TooSlow| ApiError::upload_invalid(e.to_string());
        match body {
            UploadBody::Stream(body) => {
                let mut stream = Body::into_data_stream(body);
                loop {
                    let next = meter.next(stream.next()).await.map_err(too_slow)?;
                    match next {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(ApiError::upload_invalid(format!("request body: {e}"))),
                        Some(Ok(chunk)) => {
                            meter.received(chunk.len()).map_err(too_slow)?;
                            self.push(slot, chunk, limit).await?
                        }
                    }
                }
            }
            UploadBody::Direct(mut body) => loop {
                let mut buf = vec![0u8; READ_CHUNK];
                let n = match meter.next(body.read(&mut buf)).await {
                    Ok(read) => read.map_err(|e| ApiError::upload_invalid(format!("request body: {e}")))?,
                    Err(e) => {
                        body.abandon();
                        return Err(too_slow(e));
                    }
                };
                if n == 0 {
                    return Ok(());
                }
                meter.received(n).map_err(|e| {
                    body.abandon();
                    too_slow(e)
                })?;
                buf.truncate(n);
                self.push(slot, Bytes::from(buf), limit).await?;
            },
        }
    }

    async fn push(&self, slot: &mut SharedSlot, chunk: Bytes, limit: Option<u64>) -> ApiResult<()> {
        if let Some(limit) = limit
            && slot.state.offset() + chunk.len() as u64 > limit
        {
            return Err(ApiError::size_invalid(format!(
                "blob exceeds the limit of {limit} bytes"
            )));
        }
        let parts = slot.state.parts.len();
        self.content().upload_append(&mut slot.state, chunk).await?;
        if slot.state.parts.len() != parts {
            // A part went out: make what follows it durable too (a small tail), then renew
            // the lease and save the state — which proves the session is still ours. A
            // replica killed after this loses nothing acknowledged before it.
            self.content().upload_suspend(&mut slot.state).await?;
            self.save(slot, now() + LEASE.as_secs() as i64).await?;
        }
        Ok(())
    }

    /// Verifies and commits the upload as blob `digest`; the session ends either way.
    pub async fn finish(&self, slot: SharedSlot, digest: Digest) -> ApiResult<Committed> {
        let result = self.content().upload_commit(slot.state.clone(), &digest).await;
        if let Err(e) = &result
            && e.is_unavailable()
        {
            // The backend failed, not the upload: the client may try the PUT again.
            self.release(slot).await;
            return Err(result
                .err()
                .map(ApiError::from)
                .unwrap_or_else(|| ApiError::internal("")));
        }
        let (id, expected) = (slot.id.clone(), slot.stored.clone());
        self.blocking(move |s| s.swap_upload(&id, &expected, None))
            .await?;
        let committed = result?;
        let repo = slot.repository.clone();
        self.blocking(move |s| s.record_uploaded_blob(&repo, &committed.digest, committed.size))
            .await?;
        Ok(committed)
    }

    /// Cancels the session and drops its data.
    pub async fn cancel(&self, slot: SharedSlot) -> ApiResult<()> {
        self.content().upload_abort(slot.state.clone()).await?;
        let (id, expected) = (slot.id.clone(), slot.stored.clone());
        self.blocking(move |s| s.swap_upload(&id, &expected, None))
            .await?;
        Ok(())
    }

    /// Drops sessions untouched for `expiry` and not being written: the backend's upload
    /// (an S3 multipart upload is aborted) and the record. Returns how many.
    pub async fn expire(&self, expiry: Duration) -> Result<usize, strata_store::StoreError> {
        let cutoff = now() - expiry.as_secs() as i64;
        let store = self.store.clone();
        let records = tokio::task::spawn_blocking(move || store.uploads())
            .await
            .map_err(|e| strata_store::StoreError::Unsupported(e.to_string()))??;
        let mut removed = 0;
        for (id, record) in records {
            let Some(state) = record.state.clone() else {
                continue;
            };
            if record.updated >= cutoff || record.busy_until > now() {
                continue;
            }
            let store = self.store.clone();
            let rid = id.clone();
            let Some((current, stored)) = tokio::task::spawn_blocking(move || store.get_upload_raw(&rid))
                .await
                .map_err(|e| strata_store::StoreError::Unsupported(e.to_string()))??
            else {
                continue;
            };
            if current != record {
                continue;
            }
            let store = self.store.clone();
            let rid = id.clone();
            let gone = tokio::task::spawn_blocking(move || store.swap_upload(&rid, &stored, None))
                .await
                .map_err(|e| strata_store::StoreError::Unsupported(e.to_string()))??;
            if gone.is_some() {
                self.content().upload_abort(state).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
