//! Pull-through cache mode (Distribution's `proxy.remoteurl`): reads the store cannot
//! answer are fetched from the upstream registry, served, and kept. A manifest by tag asks
//! the upstream for the tag's current digest (the cached tag is served when the upstream
//! is unreachable); a missing manifest is served as fetched and cached in the background
//! once everything it references is stored (an image's blobs, an index's children); a
//! missing blob is streamed into the store (digest checked by the ingest) and linked.
//! One download per digest at a time (a map of in-flight downloads), which publishes its
//! progress on a watch channel: a full GET of an uncached blob is answered at once (once
//! the upstream announced the size) with a body that follows the partial ingest file as
//! it grows, holding back the last byte until the digest verified and cutting the body
//! if the download fails. HEAD and Range requests fetch first. Pushes are refused.
//!
//! Only the router (`api/mod.rs`) calls in here; the proxy downloads with `strata_client`
//! and answers through the resource handlers (`api::manifests`, `api::blobs`) once the
//! store has what was asked.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use strata_client::{BlobProgress, Client, ClientError, Credentials, FetchedManifest};
use strata_store::{Digest, InFlight, Manifest, PoolError};
use tokio::sync::watch;

use crate::api::blobs::{self, BLOB_READ_CHUNK, read_chunk};
use crate::api::manifests::{self, Reference, parse_reference};
use crate::api::shared::{Shared, blocking};
use crate::config::ProxyConfig;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::names::Route;
use crate::sendfile::SendfileSlot;

/// Blobs of one manifest fetched at once while caching it.
const CACHE_JOBS: usize = 3;

/// Why content could not be had from the upstream (cloneable, for every waiter).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("not found upstream")]
    NotFound,
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("store: {0}")]
    Store(String),
}

impl From<ClientError> for FetchError {
    fn from(e: ClientError) -> FetchError {
        if e.is_not_found() {
            FetchError::NotFound
        } else {
            FetchError::Upstream(e.to_string())
        }
    }
}

fn flatten(r: Result<(), PoolError<FetchError>>) -> Result<(), FetchError> {
    match r {
        Ok(()) => Ok(()),
        Err(PoolError::Failed(e)) => Err(e),
        Err(PoolError::Abandoned) => Err(FetchError::Store("fetch abandoned".into())),
    }
}

/// A blob fetched for a repository.
#[derive(Debug, Clone)]
struct Fetched {
    repository: String,
}

/// One in-flight blob download: for the repository that started it, its progress (what
/// a streaming body follows) and its result (once stored and linked).
#[derive(Clone)]
struct Download {
    repository: String,
    progress: watch::Receiver<BlobProgress>,
    result: watch::Receiver<Option<Result<Fetched, FetchError>>>,
}

type Downloads = Arc<Mutex<HashMap<Digest, Download>>>;

/// Removes a download from the map when its task ends, however it ends.
struct Unregister {
    downloads: Downloads,
    digest: Digest,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        let mut map = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&self.digest);
    }
}

/// The pull-through cache: the registry it fills (what the resource handlers share), the
/// upstream client and the in-flight work.
pub struct Proxy {
    shared: Shared,
    client: Client,
    downloads: Downloads,
    manifests: InFlight<(String, Digest), (), FetchError>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("client", &self.client).finish()
    }
}

impl Proxy {
    pub fn new(config: &ProxyConfig, shared: Shared) -> Result<Proxy, ClientError> {
        let credentials = match (&config.username, &config.password) {
            (Some(u), Some(p)) => Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }),
            _ => None,
        };
        Ok(Proxy {
            shared,
            client: Client::new(&config.remote_url, credentials)?,
            downloads: Downloads::default(),
            manifests: InFlight::new(),
        })
    }
}

/// Whether a request would write to the registry (refused in proxy mode).
pub fn is_push(method: &Method, route: &Route) -> bool {
    match route {
        Route::Uploads { .. } | Route::Upload { .. } => true,
        Route::Manifest { .. } | Route::Blob { .. } => !matches!(*method, Method::GET | Method::HEAD),
        _ => false,
    }
}

pub fn push_refused() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        "this registry is a pull-through cache: pushes are refused",
    )
}

fn upstream_error(e: FetchError, unknown: impl FnOnce() -> ApiError) -> ApiError {
    match e {
        FetchError::NotFound => unknown(),
        FetchError::Upstream(m) => ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::Internal, m),
        FetchError::Store(m) => ApiError::internal(m),
    }
}

/// The upstream's tags of `name`; `None` when it cannot say (unreachable, refused, no
/// such repository), so the caller lists what is cached.
pub async fn upstream_tags(proxy: &Proxy, name: &str) -> Option<Vec<String>> {
    match proxy.client.tags(name).await {
        Ok(tags) => Some(tags),
        Err(e) => {
            tracing::debug!("tags of {name} from the upstream: {e}");
            None
        }
    }
}

/// Makes sure blob `digest` is linked into `name`, fetching it from the upstream first
/// when it is not (the blob GET/HEAD path).
pub async fn ensure_blob(proxy: &Arc<Proxy>, name: &str, digest: &str) -> ApiResult<()> {
    let Ok(d) = digest.parse::<Digest>() else {
        return Ok(()); // the normal path reports the bad digest
    };
    if proxy.shared.store().is_linked(name, &d)? {
        return Ok(());
    }
    fetch_blob(proxy, name, d)
        .await
        .map_err(|e| upstream_error(e, || ApiError::blob_unknown(d)))
}

/// The download of `d`: the one in flight, or a new one started for `name` on its own
/// task (it goes on if the caller goes away). Once per digest however many ask.
fn start(proxy: &Arc<Proxy>, name: &str, d: Digest) -> Download {
    let mut map = proxy.downloads.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dl) = map.get(&d) {
        return dl.clone();
    }
    let (progress_tx, progress) = watch::channel(BlobProgress::default());
    let (result_tx, result) = watch::channel(None);
    let dl = Download {
        repository: name.to_string(),
        progress,
        result,
    };
    map.insert(d, dl.clone());
    let guard = Unregister {
        downloads: proxy.downloads.clone(),
        digest: d,
    };
    let (proxy, name) = (proxy.clone(), name.to_string());
    tokio::spawn(async move {
        let out = download(proxy, name, d, progress_tx).await;
        // Unregister first: a caller arriving after this point finds the blob linked
        // (or starts afresh after a failure).
        drop(guard);
        result_tx.send_replace(Some(out));
    });
    dl
}

/// Fetches `d` for `name` unless it is linked there, once per digest however many ask.
async fn fetch_blob(proxy: &Arc<Proxy>, name: &str, d: Digest) -> Result<(), FetchError> {
    let dl = start(proxy, name, d);
    finish(proxy, name, d, dl).await
}

/// Waits for `dl` to end; when it was for another repository, checks that the upstream
/// has the blob in `name` too and links it there.
async fn finish(proxy: &Proxy, name: &str, d: Digest, dl: Download) -> Result<(), FetchError> {
    let mut result = dl.result;
    let fetched = match result.wait_for(Option::is_some).await {
        Ok(r) => match r.as_ref() {
            Some(r) => r.clone()?,
            None => return Err(FetchError::Store("fetch abandoned".into())),
        },
        Err(_) => return Err(FetchError::Store("fetch abandoned".into())),
    };
    if fetched.repository != name {
        let size = proxy
            .client
            .blob_size(name, &d)
            .await?
            .ok_or(FetchError::NotFound)?;
        record(&proxy.shared, name, d, size).await?;
    }
    Ok(())
}

/// The download task: stream the blob into the store (or, when another repository
/// already brought it, check that the upstream has it in this one), then record and link
/// it. Progress goes out on `progress` (ended by the client, or here when there is
/// nothing to download).
async fn download(
    proxy: Arc<Proxy>,
    name: String,
    d: Digest,
    progress: watch::Sender<BlobProgress>,
) -> Result<Fetched, FetchError> {
    let Some(blobs) = proxy.shared.store().content().local() else {
        let out = download_shared(&proxy, &name, d).await;
        progress.send_modify(|p| p.done = Some(out.as_ref().map(|_| ()).map_err(|e| e.to_string())));
        let size = out?;
        record(&proxy.shared, &name, d, size).await?;
        return Ok(Fetched { repository: name });
    };
    let size = if blobs.contains(&d) {
        let size = async {
            proxy
                .client
                .blob_size(&name, &d)
                .await?
                .ok_or(FetchError::NotFound)?;
            blobs
                .size(&d)
                .map_err(|e| FetchError::Store(e.to_string()))?
                .ok_or_else(|| FetchError::Store(format!("blob {d} vanished")))
        }
        .await;
        progress.send_modify(|p| p.done = Some(size.as_ref().map(|_| ()).map_err(|e| e.to_string())));
        size?
    } else {
        let c = proxy
            .client
            .fetch_blob_following(&name, &d, blobs, progress)
            .await?;
        tracing::info!(repository = %name, digest = %d, size = c.size, written = c.written, "cached blob from upstream");
        c.size
    };
    record(&proxy.shared, &name, d, size).await?;
    Ok(Fetched { repository: name })
}

/// How long a replica's claim on an upstream download lasts without renewal.
const CLAIM_TTL: i64 = 30;

/// The download of `d` on shared backends: one replica at a time downloads a digest (a
/// claim in the metadata); the others wait for the blob to be stored. The bytes stream
/// from the upstream into a backend upload, which commits only if they hash to `d`.
/// Returns the blob's size.
async fn download_shared(proxy: &Proxy, name: &str, d: Digest) -> Result<u64, FetchError> {
    let store = proxy.shared.store().clone();
    let content = store.content().clone();
    let store_err = |e: strata_store::StoreError| FetchError::Store(e.to_string());
    let holder = format!("{} pid {}", proxy.shared.config().listen, std::process::id());
    loop {
        if let Some(size) = content.stat(&d).await.map_err(|e| store_err(e.into()))? {
            proxy
                .client
                .blob_size(name, &d)
                .await?
                .ok_or(FetchError::NotFound)?;
            return Ok(size);
        }
        let (s2, h2) = (store.clone(), holder.clone());
        let claimed = blocking(move || Ok(s2.claim(&format!("proxy-fetch/{d}"), &h2, CLAIM_TTL)?))
            .await
            .map_err(|e| FetchError::Store(e.message.clone()))?;
        if !claimed {
            // Another replica is downloading it: wait for the blob (or for its claim to
            // lapse, then try to claim it here).
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        }
        let result = async {
            let resp = proxy.client.get_blob(name, &d, 0).await?;
            let id = format!("proxy-{}", hex::encode(rand::random::<[u8; 12]>()));
            let mut state = content.upload_begin(&id).await.map_err(|e| store_err(e.into()))?;
            let mut body = resp.bytes_stream();
            let mut last_renewal = std::time::Instant::now();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| FetchError::Upstream(e.to_string()))?;
                if let Err(e) = content.upload_append(&mut state, chunk).await {
                    let _ = content.upload_abort(state).await;
                    return Err(store_err(e.into()));
                }
                if last_renewal.elapsed() > std::time::Duration::from_secs(CLAIM_TTL as u64 / 3) {
                    let (s2, h2) = (store.clone(), holder.clone());
                    let _ = blocking(move || Ok(s2.claim(&format!("proxy-fetch/{d}"), &h2, CLAIM_TTL)?)).await;
                    last_renewal = std::time::Instant::now();
                }
            }
            let committed = content
                .upload_commit(state, &d)
                .await
                .map_err(|e| store_err(e.into()))?;
            tracing::info!(repository = %name, digest = %d, size = committed.size, "cached blob from upstream");
            Ok(committed.size)
        }
        .await;
        let (s2, h2) = (store.clone(), holder.clone());
        let _ = blocking(move || Ok(s2.release_claim(&format!("proxy-fetch/{d}"), &h2)?)).await;
        return result;
    }
}

/// Blob GET/HEAD in proxy mode. Linked blobs, HEADs and Range requests take the normal
/// path (after fetching an uncached blob whole); an uncached full GET is answered while
/// the blob downloads.
pub async fn get_blob(
    proxy: &Arc<Proxy>,
    name: String,
    digest: String,
    headers: &HeaderMap,
    head: bool,
    slot: Option<SendfileSlot>,
) -> ApiResult {
    let st = &proxy.shared;
    let Ok(d) = digest.parse::<Digest>() else {
        return blobs::get_blob(st, name, digest, headers, head, slot).await; // reports it
    };
    if head || headers.contains_key(header::RANGE) || st.store().is_linked(&name, &d)? {
        ensure_blob(proxy, &name, &digest).await?;
        return blobs::get_blob(st, name, digest, headers, head, slot).await;
    }
    let dl = start(proxy, &name, d);
    if let Some(resp) = follow(proxy, &name, d, &dl).await? {
        return Ok(resp);
    }
    // Nothing to follow (no announced size, or nothing downloaded): wait for the result.
    finish(proxy, &name, d, dl)
        .await
        .map_err(|e| upstream_error(e, || ApiError::blob_unknown(d)))?;
    blobs::get_blob(st, name, digest, headers, head, slot).await
}

/// A response whose body follows download `dl` of `d`, once the partial file and the
/// size are known; `None` when there is nothing to follow.
async fn follow(proxy: &Proxy, name: &str, d: Digest, dl: &Download) -> ApiResult<Option<Response>> {
    let mut progress = dl.progress.clone();
    let (file, size) = {
        let Ok(p) = progress
            .wait_for(|p| (p.file.is_some() && p.size.is_some()) || p.done.is_some())
            .await
        else {
            return Ok(None);
        };
        match (&p.file, p.size, &p.done) {
            (Some(file), Some(size), None | Some(Ok(()))) => (file.clone(), size),
            _ => return Ok(None),
        }
    };
    if dl.repository != name {
        // Joined a download for another repository: this one must have the blob upstream
        // too. It is linked here once the download is stored.
        let found = proxy
            .client
            .blob_size(name, &d)
            .await
            .map_err(|e| upstream_error(e.into(), || ApiError::blob_unknown(d)))?;
        if found.is_none() {
            return Err(ApiError::blob_unknown(d));
        }
        let (st, name, dl) = (proxy.shared.clone(), name.to_string(), dl.clone());
        tokio::spawn(async move {
            let mut result = dl.result;
            let stored = result
                .wait_for(Option::is_some)
                .await
                .is_ok_and(|r| matches!(r.as_ref(), Some(Ok(_))));
            if stored && let Err(e) = record(&st, &name, d, size).await {
                tracing::warn!(repository = %name, digest = %d, "linking a streamed blob failed: {e}");
            }
        });
    }
    proxy.shared.metrics().add_bytes_out(size);
    let mut resp = Response::new(follow_body(d, file, size, progress));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&d.to_string()) {
        h.insert("Docker-Content-Digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{d}\"")) {
        h.insert(header::ETAG, v);
    }
    Ok(Some(resp))
}

/// A reader of a blob being downloaded: `pread`s what the writer has published, waits on
/// the watch channel for more.
struct Follower {
    digest: Digest,
    file: Arc<File>,
    size: u64,
    offset: u64,
    progress: watch::Receiver<BlobProgress>,
}

impl Follower {
    /// The next chunk, `None` at the end. The last byte is only sent once the download
    /// committed (its digest verified), so a failed download never looks complete.
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            let (available, committed) = {
                let p = self.progress.borrow_and_update();
                match &p.done {
                    Some(Err(e)) => {
                        return Err(std::io::Error::other(format!(
                            "download of {} failed: {e}",
                            self.digest
                        )));
                    }
                    Some(Ok(())) => (self.size, true),
                    None => (p.written.min(self.size.saturating_sub(1)), false),
                }
            };
            if self.offset < available {
                let len = (available - self.offset).min(BLOB_READ_CHUNK as u64) as usize;
                let (file, offset) = (self.file.clone(), self.offset);
                let chunk = tokio::task::spawn_blocking(move || read_chunk(&file, offset, len))
                    .await
                    .map_err(std::io::Error::other)??;
                self.offset += chunk.len() as u64;
                return Ok(Some(chunk));
            }
            if committed {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                return Err(std::io::Error::other(format!(
                    "download of {} was abandoned",
                    self.digest
                )));
            }
        }
    }
}

/// The body of a blob served while it downloads: ends with an error (the connection is
/// cut) if the download fails.
fn follow_body(digest: Digest, file: Arc<File>, size: u64, progress: watch::Receiver<BlobProgress>) -> Body {
    let follower = Follower {
        digest,
        file,
        size,
        offset: 0,
        progress,
    };
    let stream = futures::stream::unfold(Some(follower), |state| async move {
        let mut f = state?;
        match f.next().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(f))),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(digest = %f.digest, "streaming an uncached blob failed: {e}");
                Some((Err(e), None))
            }
        }
    });
    Body::from_stream(stream)
}

async fn record(st: &Shared, name: &str, d: Digest, size: u64) -> Result<(), FetchError> {
    let store = st.store().clone();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || store.record_uploaded_blob(&name, &d, size))
        .await
        .map_err(|e| FetchError::Store(e.to_string()))?
        .map_err(|e| FetchError::Store(e.to_string()))
}

/// Whether manifest `d` is stored and linked into `name`.
fn have_manifest(st: &Shared, name: &str, d: &Digest) -> ApiResult<bool> {
    Ok(st.store().is_linked(name, d)? && st.store().get_manifest(d)?.is_some())
}

/// Manifest GET/HEAD in proxy mode.
pub async fn get_manifest(
    proxy: &Arc<Proxy>,
    name: String,
    reference: String,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    let st = &proxy.shared;
    match parse_reference(&reference, false)? {
        Reference::Tag(tag) => match proxy.client.head_manifest(&name, &tag).await {
            Ok(h) => {
                if have_manifest(st, &name, &h.digest)? {
                    let store = st.store().clone();
                    let registry = st.registry_name().to_string();
                    let (n2, d) = (name.clone(), h.digest);
                    blocking(move || {
                        if store.repo_tag(&registry, &n2, &tag)?.map(|t| t.manifest) != Some(d) {
                            store.set_repo_tag(&registry, &n2, &tag, &d)?;
                        }
                        Ok(())
                    })
                    .await?;
                    return manifests::get_manifest(st, name, h.digest.to_string(), headers, head).await;
                }
                let m = proxy
                    .client
                    .get_manifest(&name, &h.digest.to_string())
                    .await
                    .map_err(|e| upstream_error(e.into(), || ApiError::manifest_unknown(&tag)))?;
                spawn_cache(proxy, &name, m.clone(), Some(tag));
                Ok(serve(&m, head))
            }
            Err(e) if e.is_not_found() => Err(ApiError::manifest_unknown(&tag)),
            Err(e) => {
                // Unreachable or refusing: the cached tag if there is one, else say why.
                let cached = st.store().repo_tag(st.registry_name(), &name, &tag)?;
                if cached.is_none() {
                    return Err(upstream_error(e.into(), || ApiError::manifest_unknown(&tag)));
                }
                tracing::warn!(repository = %name, %tag, "upstream unavailable ({e}); serving the cached tag");
                manifests::get_manifest(st, name, tag, headers, head).await
            }
        },
        Reference::Digest(d) => {
            if have_manifest(st, &name, &d)? {
                return manifests::get_manifest(st, name, reference, headers, head).await;
            }
            let m = proxy
                .client
                .get_manifest(&name, &reference)
                .await
                .map_err(|e| upstream_error(e.into(), || ApiError::manifest_unknown(&reference)))?;
            spawn_cache(proxy, &name, m.clone(), None);
            Ok(serve(&m, head))
        }
    }
}

/// A manifest as the upstream sent it.
fn serve(m: &FetchedManifest, head: bool) -> Response {
    let mut resp = if head {
        Body::empty()
    } else {
        Body::from(m.bytes.clone())
    }
    .into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&m.media_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    if let Ok(v) = HeaderValue::from_str(&m.digest.to_string()) {
        h.insert("Docker-Content-Digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", m.digest)) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// Caches `m` (and what it references) in the background, then points `tag` at it.
fn spawn_cache(proxy: &Arc<Proxy>, name: &str, m: FetchedManifest, tag: Option<String>) {
    let proxy = proxy.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        let d = m.digest;
        let result = cache_manifest(proxy.clone(), name.clone(), m).await;
        let result = match (result, tag) {
            (Ok(()), Some(tag)) => {
                let store = proxy.shared.store().clone();
                let registry = proxy.shared.registry_name().to_string();
                let n2 = name.clone();
                tokio::task::spawn_blocking(move || store.set_repo_tag(&registry, &n2, &tag, &d))
                    .await
                    .map_err(|e| FetchError::Store(e.to_string()))
                    .and_then(|r| r.map_err(|e| FetchError::Store(e.to_string())))
            }
            (r, _) => r,
        };
        match result {
            Ok(()) => tracing::info!(repository = %name, digest = %d, "cached manifest from upstream"),
            Err(e) => tracing::warn!(repository = %name, digest = %d, "caching manifest failed: {e}"),
        }
    });
}

/// Stores `m` in `name` once everything it references is stored: an image manifest's
/// config and layers, an index's child manifests (recursively). Once per (repository,
/// manifest) at a time.
fn cache_manifest(
    proxy: Arc<Proxy>,
    name: String,
    m: FetchedManifest,
) -> BoxFuture<'static, Result<(), FetchError>> {
    Box::pin(async move {
        let key = (name.clone(), m.digest);
        let (res, _) = proxy
            .manifests
            .run(key, || cache_manifest_work(proxy.clone(), name, m))
            .await;
        flatten(res.map(|_| ()))
    })
}

async fn cache_manifest_work(proxy: Arc<Proxy>, name: String, m: FetchedManifest) -> Result<(), FetchError> {
    let st = &proxy.shared;
    if have_manifest(st, &name, &m.digest).map_err(|e| FetchError::Store(e.message.clone()))? {
        return Ok(());
    }
    let parsed =
        Manifest::parse(&m.bytes, Some(&m.media_type)).map_err(|e| FetchError::Upstream(e.to_string()))?;
    let refs: Vec<Digest> = parsed.references().iter().map(|r| r.digest).collect();
    match parsed {
        Manifest::Image { .. } => {
            futures::stream::iter(refs)
                .map(|d| {
                    let proxy = proxy.clone();
                    let name = name.clone();
                    async move {
                        if proxy
                            .shared
                            .store()
                            .is_linked(&name, &d)
                            .map_err(|e| FetchError::Store(e.to_string()))?
                        {
                            return Ok(());
                        }
                        fetch_blob(&proxy, &name, d).await
                    }
                })
                .buffer_unordered(CACHE_JOBS)
                .try_collect::<Vec<()>>()
                .await?;
        }
        Manifest::Index { .. } => {
            let client = &proxy.client;
            for d in refs {
                if have_manifest(st, &name, &d).map_err(|e| FetchError::Store(e.message.clone()))? {
                    continue;
                }
                let child = client.get_manifest(&name, &d.to_string()).await?;
                cache_manifest(proxy.clone(), name.clone(), child).await?;
            }
        }
    }
    let store = st.store().clone();
    let gc = st.config().gc.clone();
    blocking(move || {
        if store.content().local().is_some() {
            store.add_manifest(&m.bytes, Some(&m.media_type), Some(&name))?;
        } else {
            manifests::add_manifest_shared(&store, &m.bytes, Some(&m.media_type), &name, &gc)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| FetchError::Store(e.message.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_recognised() {
        let m = |name: &str| Route::Manifest {
            name: name.into(),
            reference: "1".into(),
        };
        assert!(is_push(&Method::PUT, &m("a")));
        assert!(is_push(&Method::DELETE, &m("a")));
        assert!(!is_push(&Method::GET, &m("a")));
        assert!(!is_push(&Method::HEAD, &m("a")));
        assert!(is_push(&Method::POST, &Route::Uploads { name: "a".into() }));
        assert!(is_push(
            &Method::GET,
            &Route::Upload {
                name: "a".into(),
                id: "x".into()
            }
        ));
        assert!(!is_push(&Method::GET, &Route::Catalog));
    }

    #[test]
    fn fetch_errors() {
        let e = upstream_error(FetchError::Upstream("down".into()), || {
            ApiError::blob_unknown("x")
        });
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        let e = upstream_error(FetchError::NotFound, || ApiError::blob_unknown("x"));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
    }
}
