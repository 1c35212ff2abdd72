//! Blob upload sessions. A session is a record in the store's `uploads` family plus the
//! resumable ingest `upload-<id>`: both survive a restart, so a chunked upload resumes
//! where the last accepted chunk ended. While the server runs, the open ingest (file and
//! hash state) stays in memory, so a chunk is hashed once however many requests it took.
//! Request bodies stream through a bounded channel to a blocking writer: no blob is ever
//! held whole in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use strata_store::{Committed, DIRECT_ALIGN, Digest, Ingest, IngestKey, Store, UploadRecord};
use tokio::sync::OwnedMutexGuard;

use crate::direct::{DRAIN_LIMIT, DirectBody};
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::pace::BodyPace;

const WRITE_BATCH: usize = 1 << 20;
/// Size of the aligned buffers a direct body is read into (a multiple of `DIRECT_ALIGN`).
const DIRECT_CHUNK: usize = 2 << 20;

/// An upload request's body: hyper's stream, or a large body read beside hyper straight
/// into aligned buffers (see `direct`).
pub enum UploadBody {
    Stream(Body),
    Direct(DirectBody),
}

impl UploadBody {
    /// The body as hyper's stream. A direct body has no such stream (only blob uploads
    /// get one): it is dropped, which drains it, and the stream is empty.
    pub fn into_stream(self) -> Body {
        match self {
            UploadBody::Stream(b) => b,
            UploadBody::Direct(_) => Body::empty(),
        }
    }
}

/// One session's in-memory state.
#[derive(Debug)]
pub struct Slot {
    pub id: String,
    pub repository: String,
    ingest: Option<Ingest>,
    /// Set once the session is finished or cancelled; a waiter that then gets the lock
    /// must treat the session as unknown.
    closed: bool,
    /// Set when an idle session was let go of (see `release_idle`): a waiter that then
    /// gets the lock looks the session up again.
    released: bool,
    /// When a request last worked on the session.
    last_used: Instant,
}

/// Sessions no request touched for this long close their files (the next request
/// reopens them), so abandoned uploads hold no descriptors.
pub const RELEASE_IDLE: Duration = Duration::from_secs(60);

/// The open upload sessions.
pub struct Uploads {
    store: Arc<Store>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    max_sessions: usize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads").field("open", &self.open()).finish()
    }
}

/// A locked session: one request at a time works on an upload.
pub type Locked = OwnedMutexGuard<Slot>;

/// A new upload session id (shared sessions use the same form).
pub(crate) fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Uploads {
    pub fn new(store: Arc<Store>, max_sessions: usize, metrics: Arc<Metrics>) -> Uploads {
        Uploads {
            store,
            slots: Mutex::new(HashMap::new()),
            max_sessions,
            metrics,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Slot>>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions open in this process.
    pub fn open(&self) -> usize {
        self.slots().len()
    }

    /// Starts a session for `repository`, locked for the caller. At the limit of open
    /// sessions, the least recently used idle one is let go of first (its upload goes
    /// on, reopened by its next request): only sessions requests are working on at this
    /// moment count against the limit, so abandoned uploads cannot lock pushes out.
    pub async fn create(&self, repository: &str) -> ApiResult<Locked> {
        if self.open() >= self.max_sessions && self.release_least_recent() == 0 {
            return Err(ApiError::too_many("too many upload sessions in progress"));
        }
        let id = new_id();
        let record = UploadRecord {
            repository: repository.to_string(),
            started: now(),
            updated: now(),
            state: None,
            busy_until: 0,
        };
        let store = self.store.clone();
        let rid = id.clone();
        tokio::task::spawn_blocking(move || store.put_upload(&rid, &record)).await??;
        let slot = Arc::new(tokio::sync::Mutex::new(Slot {
            id: id.clone(),
            repository: repository.to_string(),
            ingest: None,
            closed: false,
            released: false,
            last_used: Instant::now(),
        }));
        let guard = slot.clone().lock_owned().await;
        self.slots().insert(id, slot);
        self.metrics.set_uploads(self.open());
        Ok(guard)
    }

    /// Locks an existing session of `repository` (recovering it from the store after a
    /// restart).
    pub async fn lock(&self, repository: &str, id: &str) -> ApiResult<Locked> {
        loop {
            let mut guard = self.lock_once(id).await?;
            if guard.released {
                continue;
            }
            if guard.closed || guard.repository != repository {
                return Err(ApiError::upload_unknown());
            }
            guard.last_used = Instant::now();
            return Ok(guard);
        }
    }

    async fn lock_once(&self, id: &str) -> ApiResult<Locked> {
        let existing = self.slots().get(id).cloned();
        let slot = match existing {
            Some(s) => s,
            None => {
                let store = self.store.clone();
                let rid = id.to_string();
                if !strata_store::valid_upload_id(id) {
                    return Err(ApiError::upload_unknown());
                }
                let record = tokio::task::spawn_blocking(move || store.get_upload(&rid)).await??;
                let Some(record) = record else {
                    return Err(ApiError::upload_unknown());
                };
                let slot = Arc::new(tokio::sync::Mutex::new(Slot {
                    id: id.to_string(),
                    repository: record.repository,
                    ingest: None,
                    closed: false,
                    released: false,
                    last_used: Instant::now(),
                }));
                let mut slots = self.slots();
                let s = slots.entry(id.to_string()).or_insert(slot).clone();
                drop(slots);
                self.metrics.set_uploads(self.open());
                s
            }
        };
        Ok(slot.lock_owned().await)
    }

    /// Lets go of sessions no request has worked on for `idle`: their ingest files close
    /// (the data and the record stay; the next request reopens them). Returns how many.
    pub fn release_idle(&self, idle: Duration) -> usize {
        let idle_slots: Vec<(String, Locked)> = self
            .slots()
            .iter()
            .filter_map(|(id, s)| Some((id.clone(), s.clone().try_lock_owned().ok()?)))
            .filter(|(_, g)| g.last_used.elapsed() >= idle)
            .collect();
        let n = idle_slots.len();
        for (id, guard) in idle_slots {
            self.release(&id, guard);
        }
        n
    }

    /// Lets go of the idle session used least recently; 0 when every one is busy.
    fn release_least_recent(&self) -> usize {
        let oldest = self
            .slots()
            .iter()
            .filter_map(|(id, s)| Some((id.clone(), s.clone().try_lock_owned().ok()?)))
            .min_by_key(|(_, g)| g.last_used);
        match oldest {
            Some((id, guard)) => {
                self.release(&id, guard);
                1
            }
            None => 0,
        }
    }

    fn release(&self, id: &str, mut guard: Locked) {
        guard.released = true;
        drop(guard.ingest.take());
        self.slots().remove(id);
        self.metrics.set_uploads(self.open());
    }

    /// Opens (or resumes) the session's ingest if needed.
    async fn ingest(&self, slot: &mut Locked) -> ApiResult<Ingest> {
        if let Some(i) = slot.ingest.take() {
            return Ok(i);
        }
        let store = self.store.clone();
        let key = IngestKey::Upload(slot.id.clone());
        let ingest = tokio::task::spawn_blocking(move || store.blobs().begin(key)).await??;
        ingest.ok_or_else(|| ApiError::internal("upload ingest unexpectedly complete"))
    }

    /// Bytes received so far.
    pub async fn offset(&self, slot: &mut Locked) -> ApiResult<u64> {
        let ingest = self.ingest(slot).await?;
        let off = ingest.offset();
        slot.ingest = Some(ingest);
        Ok(off)
    }

    /// Appends a request body; returns the new offset.
    pub async fn append(
        &self,
        slot: &mut Locked,
        body: UploadBody,
        pace: BodyPace,
        limit: Option<u64>,
    ) -> ApiResult<u64> {
        let ingest = self.ingest(slot).await?;
        let metrics = self.metrics.clone();
        let (ingest, result) = match body {
            UploadBody::Stream(body) => write_body(ingest, body, pace, limit, metrics).await,
            UploadBody::Direct(body) => write_direct(ingest, body, pace, limit, metrics).await,
        };
        let off = ingest.as_ref().map(Ingest::offset);
        slot.ingest = ingest;
        slot.last_used = Instant::now();
        result.and_then(|_| off.ok_or_else(|| ApiError::internal("upload writer lost its ingest")))
    }

    /// Verifies and commits the upload as blob `digest`, ending the session either way
    /// when the content was wrong.
    pub async fn finish(&self, mut slot: Locked, digest: Digest) -> ApiResult<Committed> {
        let ingest = self.ingest(&mut slot).await?;
        let store = self.store.clone();
        let repo = slot.repository.clone();
        let id = slot.id.clone();
        let result = tokio::task::spawn_blocking(move || -> ApiResult<Committed> {
            let committed = ingest.commit(&digest, None);
            // Commit discards the data on mismatch: the session ends either way.
            let _ = store.delete_upload(&id);
            let committed = committed?;
            store.record_uploaded_blob(&repo, &committed.digest, committed.size)?;
            Ok(committed)
        })
        .await?;
        self.close(slot);
        result
    }

    /// Cancels the session and drops its data.
    pub async fn cancel(&self, mut slot: Locked) -> ApiResult<()> {
        let ingest = self.ingest(&mut slot).await?;
        let store = self.store.clone();
        let id = slot.id.clone();
        tokio::task::spawn_blocking(move || -> ApiResult<()> {
            ingest.discard()?;
            store.delete_upload(&id)?;
            Ok(())
        })
        .await??;
        self.close(slot);
        Ok(())
    }

    fn close(&self, mut slot: Locked) {
        slot.closed = true;
        self.slots().remove(&slot.id);
        self.metrics.set_uploads(self.open());
    }

    /// Removes sessions untouched for `expiry` (their data and record). Returns how many.
    pub fn expire(&self, expiry: Duration) -> Result<usize, strata_store::StoreError> {
        let cutoff = now() - expiry.as_secs() as i64;
        let partials: HashMap<String, SystemTime> = self
            .store
            .blobs()
            .list_partials()?
            .into_iter()
            .filter_map(|(stem, _, m)| Some((stem.strip_prefix("upload-")?.to_string(), m)))
            .collect();
        let mut removed = 0;
        for (id, record) in self.store.uploads()? {
            let touched = partials
                .get(&id)
                .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(record.updated, |d| (d.as_secs() as i64).max(record.updated));
            if touched >= cutoff {
                continue;
            }
            // Skip sessions a request is working on right now.
            let slot = self.slots().get(&id).cloned();
            let guard = match &slot {
                Some(s) => match s.clone().try_lock_owned() {
                    Ok(g) => Some(g),
                    Err(_) => continue,
                },
                None => None,
            };
            if let Some(mut g) = guard {
                g.closed = true;
                if let Some(i) = g.ingest.take() {
                    let _ = i.discard();
                }
                self.slots().remove(&id);
            }
            self.store.blobs().remove_partial(&format!("upload-{id}"))?;
            self.store.delete_upload(&id)?;
            removed += 1;
        }
        // Partials of sessions that have no record (a crash between the two writes).
        for (id, modified) in partials {
            let old = modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
                < cutoff;
            if old
                && self.store.get_upload(&id)?.is_none()
                && self.store.blobs().remove_partial(&format!("upload-{id}"))?
            {
                removed += 1;
            }
        }
        self.metrics.set_uploads(self.open());
        Ok(removed)
    }
}

/// Streams `body` into `ingest` on a blocking thread. The request's chunks go over in
/// batches of about `WRITE_BATCH` bytes (few wake-ups), written with one `writev` each
/// (no copy); small chunks are first gathered into one buffer so a client sending tiny
/// chunks cannot make a batch of millions of slices. Always hands the ingest back (its
/// offset then says what was kept).
async fn write_body(
    ingest: Ingest,
    body: Body,
    pace: BodyPace,
    limit: Option<u64>,
    metrics: Arc<Metrics>,
) -> (Option<Ingest>, ApiResult<()>) {
    let idle = pace.idle;
    let mut meter = pace.meter();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(4);
    let writer = tokio::task::spawn_blocking(move || {
        let mut ingest = ingest;
        let mut result: ApiResult<()> = Ok(());
        while let Some(batch) = rx.blocking_recv() {
            let len: usize = batch.iter().map(Bytes::len).sum();
            if let Some(limit) = limit
                && ingest.offset() + len as u64 > limit
            {
                result = Err(ApiError::size_invalid(format!(
                    "blob exceeds the limit of {limit} bytes"
                )));
                break;
            }
            if let Err(e) = ingest.write_all_vectored(&batch) {
                result = Err(e.into());
                break;
            }
        }
        (ingest, result)
    });
    let mut body = body.into_data_stream();
    let mut read_result: ApiResult<()> = Ok(());
    let mut batch = Batch::default();
    loop {
        let next = match meter.next(futures::StreamExt::next(&mut body)).await {
            Ok(n) => n,
            Err(e) => {
                read_result = Err(ApiError::upload_invalid(e.to_string()));
                break;
            }
        };
        match next {
            None => break,
            Some(Ok(chunk)) => {
                metrics.add_bytes_in(chunk.len() as u64);
                if let Err(e) = meter.received(chunk.len()) {
                    read_result = Err(ApiError::upload_invalid(e.to_string()));
                    break;
                }
                if let Some(full) = batch.push(chunk)
                    && tx.send(full).await.is_err()
                {
                    // The writer stopped (its result says why). Read on, discarding, so
                    // the client is still listening when the error response comes.
                    drain(&mut body, idle).await;
                    break;
                }
            }
            Some(Err(e)) => {
                read_result = Err(ApiError::upload_invalid(format!("reading request body: {e}")));
                break;
            }
        }
    }
    if let Some(rest) = batch.finish() {
        let _ = tx.send(rest).await;
    }
    drop(tx);
    match writer.await {
        Ok((ingest, write_result)) => (Some(ingest), write_result.and(read_result)),
        Err(e) => (None, Err(e.into())),
    }
}

/// A page-aligned buffer of `DIRECT_CHUNK` bytes (aligned by slicing a larger vector).
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new() -> AlignedBuf {
        let storage = vec![0u8; DIRECT_CHUNK + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { storage, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + DIRECT_CHUNK]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + DIRECT_CHUNK]
    }
}

/// Receives a direct body into aligned buffers and has a blocking writer hash them and
/// write them with `O_DIRECT` (`Ingest::write_all_direct`): the bytes are copied once,
/// from the socket, and hashed once. Each buffer's data sits at the same offset modulo
/// `DIRECT_ALIGN` as in the file, so every whole block goes out directly. Always hands
/// the ingest back, like `write_body`; after a failed write or past the size limit the
/// rest of the body is read and dropped (up to `DRAIN_LIMIT`), so that the client reads
/// the error response.
async fn write_direct(
    ingest: Ingest,
    mut body: DirectBody,
    pace: BodyPace,
    limit: Option<u64>,
    metrics: Arc<Metrics>,
) -> (Option<Ingest>, ApiResult<()>) {
    let idle = pace.idle;
    let mut meter = pace.meter();
    let too_large = |limit: u64| ApiError::size_invalid(format!("blob exceeds the limit of {limit} bytes"));
    let start = ingest.offset();
    if let (Some(limit), Some(len)) = (limit, body.content_length())
        && start + len > limit
    {
        // Refused before reading: dropping the body drains it.
        return (Some(ingest), Err(too_large(limit)));
    }
    let mut lead = (start % DIRECT_ALIGN as u64) as usize;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(AlignedBuf, usize, usize)>(2);
    let (recycle, recycled) = std::sync::mpsc::channel::<AlignedBuf>();
    let writer = tokio::task::spawn_blocking(move || {
        let mut ingest = ingest;
        let mut result: ApiResult<()> = Ok(());
        while let Some((buf, from, to)) = rx.blocking_recv() {
            if let Err(e) = ingest.write_all_direct(&buf.bytes()[from..to]) {
                result = Err(e.into());
                break;
            }
            let _ = recycle.send(buf);
        }
        (ingest, result)
    });
    let mut read_result: ApiResult<()> = Ok(());
    let mut received = 0u64;
    let mut done = false;
    let mut drain = false;
    while !done {
        let mut buf = recycled.try_recv().unwrap_or_else(|_| AlignedBuf::new());
        let mut fill = lead;
        while fill < DIRECT_CHUNK {
            match meter.next(body.read(&mut buf.bytes_mut()[fill..])).await {
                Ok(Ok(0)) => {
                    done = true;
                    break;
                }
                Ok(Ok(n)) => {
                    metrics.add_bytes_in(n as u64);
                    metrics.add_direct_bytes_in(n as u64);
                    received += n as u64;
                    if let Err(e) = meter.received(n) {
                        read_result = Err(ApiError::upload_invalid(e.to_string()));
                        body.abandon();
                        done = true;
                        break;
                    }
                    if let Some(limit) = limit
                        && start + received > limit
                    {
                        read_result = Err(too_large(limit));
                        (done, drain) = (true, true);
                        fill = lead; // keep none of it
                        break;
                    }
                    fill += n;
                }
                Ok(Err(e)) => {
                    read_result = Err(ApiError::upload_invalid(format!("reading request body: {e}")));
                    done = true;
                    break;
                }
                Err(e) => {
                    read_result = Err(ApiError::upload_invalid(e.to_string()));
                    body.abandon();
                    done = true;
                    break;
                }
            }
        }
        if fill > lead && tx.send((buf, lead, fill)).await.is_err() {
            drain = true; // the writer stopped: its result says why
            break;
        }
        lead = 0;
    }
    drop(tx);
    let (ingest, result) = match writer.await {
        Ok((ingest, write_result)) => (Some(ingest), write_result.and(read_result)),
        Err(e) => (None, Err(e.into())),
    };
    if drain {
        drain_direct(&mut body, idle).await;
    }
    (ingest, result)
}

/// Reads and drops the rest of a direct body (up to `DRAIN_LIMIT`, each read within
/// `idle`).
async fn drain_direct(body: &mut DirectBody, idle: Duration) {
    let mut scratch = vec![0u8; 64 << 10];
    let mut drained = 0u64;
    while drained < DRAIN_LIMIT {
        match tokio::time::timeout(idle, body.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => drained += n as u64,
            _ => return,
        }
    }
}

/// Reads and drops the rest of a request body (up to `DRAIN_LIMIT`, each read within
/// `idle`).
async fn drain(body: &mut axum::body::BodyDataStream, idle: Duration) {
    let mut drained = 0u64;
    while drained < DRAIN_LIMIT {
        match tokio::time::timeout(idle, futures::StreamExt::next(body)).await {
            Ok(Some(Ok(chunk))) => drained += chunk.len() as u64,
            _ => return,
        }
    }
}

/// Request chunks gathered for one write: chunks of `SMALL_CHUNK` bytes or more are kept
/// as they are; smaller ones are copied together.
#[derive(Default)]
struct Batch {
    parts: Vec<Bytes>,
    small: BytesMut,
    len: usize,
}

/// Chunks below this size are copied into a shared buffer rather than kept as slices.
const SMALL_CHUNK: usize = 32 << 10;

impl Batch {
    /// Adds a chunk; returns a full batch to write.
    fn push(&mut self, chunk: Bytes) -> Option<Vec<Bytes>> {
        self.len += chunk.len();
        if chunk.len() >= SMALL_CHUNK {
            self.seal_small();
            self.parts.push(chunk);
        } else {
            self.small.extend_from_slice(&chunk);
        }
        (self.len >= WRITE_BATCH).then(|| self.take())
    }

    fn seal_small(&mut self) {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
    }

    fn take(&mut self) -> Vec<Bytes> {
        self.seal_small();
        self.len = 0;
        std::mem::take(&mut self.parts)
    }

    /// What is left at the end of the body, if anything.
    fn finish(mut self) -> Option<Vec<Bytes>> {
        (self.len > 0).then(|| self.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn batches_keep_order_and_gather_tiny_chunks() {
        let mut batch = Batch::default();
        let mut sent = Vec::new();
        let mut expected = Vec::new();
        // A hostile client: a million one-byte chunks, then big ones.
        for i in 0..1_000_000u32 {
            let chunk = Bytes::from(vec![i as u8]);
            expected.push(i as u8);
            if let Some(full) = batch.push(chunk) {
                assert!(full.len() <= 2, "tiny chunks are gathered, not kept as slices");
                sent.push(full);
            }
        }
        for i in 0..5u8 {
            let chunk = Bytes::from(vec![i; 300 << 10]);
            expected.extend_from_slice(&chunk);
            if let Some(full) = batch.push(chunk) {
                sent.push(full);
            }
        }
        sent.extend(batch.finish());
        for full in &sent[..sent.len() - 1] {
            assert!(full.iter().map(Bytes::len).sum::<usize>() >= WRITE_BATCH);
        }
        let got: Vec<u8> = sent.iter().flat_map(|b| concat(b)).collect();
        assert_eq!(got, expected);
        assert!(Batch::default().finish().is_none());
    }
}
