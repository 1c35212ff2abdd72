//! The OCI Distribution v1.1 API over the store: routing, every endpoint, and the shared
//! state. `app(state)` is the whole service as an axum `Router`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use strata_store::{
    DOCKER_LIST, DOCKER_MANIFEST, Digest, Manifest, OCI_INDEX, OCI_MANIFEST, Platform, Referrer, Store,
};

use crate::auth::{Action, Auth, AuthError, Need, form_pairs};
use crate::config::Config;
use crate::direct::DirectRequestBody;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::metrics::Metrics;
use crate::names::{Route, parse_route, valid_name, valid_tag};
use crate::proxy::{self, Proxy};
use crate::sendfile::{SendfileBody, SendfileSlot};
use crate::uploads::UploadBody;
use crate::uploads::Uploads;

const API_VERSION: &str = "registry/2.0";
const MANIFEST_CACHE_BYTES: usize = 8 << 20;
pub(crate) const BLOB_READ_CHUNK: usize = 1 << 20;
/// Blob bodies at least this long go out by `sendfile` where the connection allows.
const SENDFILE_MIN: u64 = 64 << 10;
/// Chunks of a blob GET read ahead of the socket.
const BLOB_READ_AHEAD: usize = 2;

/// The server's shared state: the store, the configuration, upload sessions, the
/// manifest cache, metrics and the authenticator.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    config: Config,
    registry: String,
    uploads: Uploads,
    cache: ManifestCache,
    metrics: Arc<Metrics>,
    auth: Option<Auth>,
    proxy: Option<Arc<Proxy>>,
}

/// Errors setting up the server state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("proxy upstream: {0}")]
    Proxy(#[from] strata_client::ClientError),
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.inner.store)
            .field("registry", &self.inner.registry)
            .finish()
    }
}

impl AppState {
    /// Builds the state over an open store (reads the htpasswd file if auth is set; sets
    /// up the upstream client in proxy mode).
    pub fn new(store: Arc<Store>, config: Config) -> Result<AppState, StateError> {
        let metrics = Arc::new(Metrics::default());
        let auth = config.auth.clone().map(Auth::new).transpose()?;
        let proxy = config.proxy.as_ref().map(Proxy::new).transpose()?.map(Arc::new);
        Ok(AppState {
            inner: Arc::new(Inner {
                uploads: Uploads::new(store.clone(), config.limits.max_upload_sessions, metrics.clone()),
                registry: config.registry_name(),
                store,
                config,
                cache: ManifestCache::default(),
                metrics,
                auth,
                proxy,
            }),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
    /// The pull-through cache, in proxy mode.
    pub(crate) fn proxy(&self) -> Option<&Arc<Proxy>> {
        self.inner.proxy.as_ref()
    }
    /// The name tags are stored under (`<registry>/<repo>:<tag>`).
    pub fn registry_name(&self) -> &str {
        &self.inner.registry
    }

    /// Drops abandoned upload sessions (blocking).
    pub fn expire_uploads(&self) -> Result<usize, strata_store::StoreError> {
        self.inner.uploads.expire(self.inner.config.uploads.expiry)
    }
}

/// Small manifests by digest, so a manifest GET reads neither RocksDB scans nor files.
#[derive(Default)]
struct ManifestCache {
    map: RwLock<HashMap<Digest, Arc<Cached>>>,
    bytes: AtomicUsize,
}

struct Cached {
    media_type: String,
    body: Bytes,
}

impl ManifestCache {
    fn get(&self, d: &Digest) -> Option<Arc<Cached>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).get(d).cloned()
    }
    fn put(&self, d: Digest, media_type: String, body: Bytes) -> Arc<Cached> {
        let c = Arc::new(Cached { media_type, body });
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if self.bytes.load(Ordering::Relaxed) + c.body.len() > MANIFEST_CACHE_BYTES {
            map.clear();
            self.bytes.store(0, Ordering::Relaxed);
        }
        if map.insert(d, c.clone()).is_none() {
            self.bytes.fetch_add(c.body.len(), Ordering::Relaxed);
        }
        c
    }
}

/// The whole service.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/token", get(token))
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Request log, metrics, and the API version header on every response.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static(API_VERSION),
    );
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    st.inner.metrics.observe(method.as_str(), status, elapsed);
    tracing::info!(
        target: "strata_registry::access",
        method = %method,
        path = %path,
        status,
        micros = elapsed.as_micros() as u64,
        "request"
    );
    resp
}

async fn health(State(st): State<AppState>) -> Response {
    let store = st.store().clone();
    match tokio::task::spawn_blocking(move || store.get_upload("health-probe")).await {
        Ok(Ok(_)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"ok\"}",
        )
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"status\":\"store unavailable\"}",
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let store = st.store().clone();
    let storage = tokio::task::spawn_blocking(move || {
        store
            .blobs()
            .list()
            .ok()
            .map(|l| (l.len() as u64, l.iter().map(|b| b.size).sum::<u64>()))
    })
    .await
    .ok()
    .flatten();
    let text = st.inner.metrics.render(storage);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn token(State(st): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let Some(auth) = st.inner.auth.as_ref().filter(|a| a.token_enabled()) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            "no token service here",
        )
        .into_response();
    };
    let _ = auth;
    let query = uri.query().unwrap_or("").to_string();
    let st2 = st.clone();
    let result = tokio::task::spawn_blocking(move || {
        st2.inner
            .auth
            .as_ref()
            .map(|a| a.issue(&headers, &query))
            .unwrap_or_else(|| Err(ApiError::internal("no auth")))
    })
    .await;
    match result {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn dispatch(State(st): State<AppState>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    // A large blob upload's body, read beside hyper (see `direct`).
    let body = match parts
        .extensions
        .remove::<DirectRequestBody>()
        .and_then(|d| d.take())
    {
        Some(d) => UploadBody::Direct(d),
        None => UploadBody::Stream(body),
    };
    // Zero-copy blob bodies only on plain HTTP/1 connections (see `sendfile`).
    let slot = parts
        .extensions
        .remove::<SendfileSlot>()
        .filter(|_| matches!(parts.version, Version::HTTP_10 | Version::HTTP_11));
    match handle(&st, parts.method, parts.uri, parts.headers, body, slot).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await?
}

fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::digest_invalid(format!("invalid digest {s:?}: {e}")))
}

fn query_get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn need_for(method: &Method, route: &Route, q: &[(String, String)]) -> Need {
    let Some(name) = route.name() else {
        return Need::default();
    };
    let action = match *method {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE => Action::Delete,
        _ => Action::Push,
    };
    let mut need = Need {
        access: vec![(name.to_string(), action)],
    };
    if let (Route::Uploads { .. }, Some(from)) = (route, query_get(q, "from"))
        && query_get(q, "mount").is_some()
        && from != name
    {
        need.access.push((from.to_string(), Action::Pull));
    }
    need
}

async fn handle(
    st: &AppState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: UploadBody,
    slot: Option<SendfileSlot>,
) -> ApiResult {
    let Some(route) = parse_route(uri.path()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            "not found",
        ));
    };
    if let Some(name) = route.name()
        && !valid_name(name, st.inner.config.limits.max_name_len)
    {
        return Err(ApiError::name_invalid(name));
    }
    let q = form_pairs(uri.query().unwrap_or(""));
    if st.inner.auth.is_some() {
        let need = need_for(&method, &route, &q);
        let st2 = st.clone();
        let h = headers.clone();
        let tls = st.inner.config.tls.is_some();
        blocking(move || match &st2.inner.auth {
            Some(a) => a.authorize(&h, tls, &need).map(|_| ()),
            None => Ok(()),
        })
        .await?;
    }
    let head = method == Method::HEAD;
    let proxying = st.inner.proxy.is_some();
    if proxying && proxy::is_push(&method, &route) {
        return Err(proxy::push_refused());
    }
    match (&method, route) {
        (&Method::GET | &Method::HEAD, Route::Base) => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response())
        }
        (&Method::GET, Route::Catalog) => catalog(st, &q).await,
        (&Method::GET, Route::Tags { name }) => tags(st, name, &q).await,
        (&Method::GET | &Method::HEAD, Route::Manifest { name, reference }) if proxying => {
            proxy::get_manifest(st, name, reference, &headers, head).await
        }
        (&Method::GET | &Method::HEAD, Route::Manifest { name, reference }) => {
            get_manifest(st, name, reference, &headers, head).await
        }
        (&Method::PUT, Route::Manifest { name, reference }) => {
            put_manifest(st, name, reference, &headers, body.into_stream()).await
        }
        (&Method::DELETE, Route::Manifest { name, reference }) => delete_manifest(st, name, reference).await,
        (&Method::GET | &Method::HEAD, Route::Blob { name, digest }) => {
            if proxying {
                proxy::get_blob(st, name, digest, &headers, head, slot).await
            } else {
                get_blob(st, name, digest, &headers, head, slot).await
            }
        }
        (&Method::DELETE, Route::Blob { name, digest }) => delete_blob(st, name, digest).await,
        (&Method::POST, Route::Uploads { name }) => start_upload(st, name, &q, &headers, body).await,
        (&Method::GET, Route::Upload { name, id }) => upload_status(st, name, id).await,
        (&Method::PATCH, Route::Upload { name, id }) => patch_upload(st, name, id, &headers, body).await,
        (&Method::PUT, Route::Upload { name, id }) => put_upload(st, name, id, &q, &headers, body).await,
        (&Method::DELETE, Route::Upload { name, id }) => cancel_upload(st, name, id).await,
        (&Method::GET, Route::Referrers { name, digest }) => referrers(st, name, digest, &q).await,
        _ => Err(ApiError::unsupported(format!("{method} is not supported here"))),
    }
}

/// `n` and `last` pagination over a sorted list, with the `Link` for the next page.
fn paginate(
    items: Vec<String>,
    q: &[(String, String)],
    max: usize,
    path: &str,
) -> ApiResult<(Vec<String>, Option<String>)> {
    let n = match query_get(q, "n") {
        Some(s) => Some(
            s.parse::<usize>()
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, "invalid n"))?,
        ),
        None => None,
    };
    let last = query_get(q, "last");
    let mut it: Vec<String> = match last {
        Some(l) => items.into_iter().filter(|t| t.as_str() > l).collect(),
        None => items,
    };
    let limit = n.unwrap_or(usize::MAX).min(max);
    let mut link = None;
    if it.len() > limit {
        it.truncate(limit);
        if let Some(l) = it.last() {
            link = Some(format!("<{path}?n={limit}&last={l}>; rel=\"next\""));
        }
    }
    Ok((it, link))
}

async fn catalog(st: &AppState, q: &[(String, String)]) -> ApiResult {
    let store = st.store().clone();
    let repos = blocking(move || Ok(store.repositories()?)).await?;
    let (page, link) = paginate(repos, q, st.inner.config.limits.max_page, "/v2/_catalog")?;
    let mut resp = axum::Json(serde_json::json!({ "repositories": page })).into_response();
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, l);
    }
    Ok(resp)
}

async fn tags(st: &AppState, name: String, q: &[(String, String)]) -> ApiResult {
    let store = st.store().clone();
    let registry = st.inner.registry.clone();
    let n2 = name.clone();
    let (mut tags, exists) = blocking(move || {
        let tags = store.repo_tags(&registry, &n2)?;
        let exists = !tags.is_empty() || store.repo_exists(&n2)?;
        Ok((tags, exists))
    })
    .await?;
    // A pull-through cache lists the upstream's tags too (its own, cached, when the
    // upstream cannot be reached).
    let upstream = match st.proxy() {
        Some(p) => proxy::upstream_tags(p, &name).await,
        None => None,
    };
    if upstream.is_none() && !exists {
        return Err(ApiError::name_unknown(&name));
    }
    if let Some(up) = upstream {
        tags.extend(up);
        tags.sort();
        tags.dedup();
    }
    let path = format!("/v2/{name}/tags/list");
    let (page, link) = paginate(tags, q, st.inner.config.limits.max_page, &path)?;
    let mut resp = axum::Json(serde_json::json!({ "name": name, "tags": page })).into_response();
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, l);
    }
    Ok(resp)
}

pub(crate) enum Reference {
    Tag(String),
    Digest(Digest),
}

/// Parses a manifest reference. A malformed tag is `MANIFEST_INVALID` (400) on a push, but
/// on a read or delete it names nothing that can exist, so it is `MANIFEST_UNKNOWN` (404),
/// as the spec's conformance suite expects.
pub(crate) fn parse_reference(reference: &str, push: bool) -> ApiResult<Reference> {
    if reference.contains(':') {
        return Ok(Reference::Digest(parse_digest(reference)?));
    }
    if !valid_tag(reference) {
        if !push {
            return Err(ApiError::manifest_unknown(reference));
        }
        return Err(
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid, "invalid tag")
                .with_detail(serde_json::json!({ "tag": reference })),
        );
    }
    Ok(Reference::Tag(reference.to_string()))
}

/// Media types an `Accept` header admits (`None`: anything).
fn accepted(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for v in headers.get_all(header::ACCEPT) {
        for part in v.to_str().unwrap_or("").split(',') {
            let t = part.split(';').next().unwrap_or("").trim();
            if t == "*/*" {
                return None;
            }
            if !t.is_empty() {
                out.push(t.to_string());
            }
        }
    }
    if out.is_empty() || !out.iter().any(|t| strata_store::is_manifest_media_type(t)) {
        None
    } else {
        Some(out)
    }
}

/// Loads a manifest linked into `name` (cache first).
fn load_manifest(st: &AppState, name: &str, digest: &Digest) -> ApiResult<Arc<Cached>> {
    let store = st.store();
    if !store.is_linked(name, digest)? {
        return Err(ApiError::manifest_unknown(&digest.to_string()));
    }
    if let Some(c) = st.inner.cache.get(digest) {
        return Ok(c);
    }
    let Some(record) = store.get_manifest(digest)? else {
        return Err(ApiError::manifest_unknown(&digest.to_string()));
    };
    let bytes = store
        .blobs()
        .read_small(digest, strata_store::MAX_MANIFEST_BYTES)?;
    Ok(st.inner.cache.put(*digest, record.media_type, Bytes::from(bytes)))
}

pub(crate) async fn get_manifest(
    st: &AppState,
    name: String,
    reference: String,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    let r = parse_reference(&reference, false)?;
    let accept = accepted(headers);
    let st2 = st;
    // Point reads (RocksDB, usually from memory, and the manifest cache) run inline: a hop
    // to the blocking pool costs more than they do, and under load it sets the tail
    // latency (see `benches/RESULTS.md`).
    let (digest, m) = (move || {
        let digest = match r {
            Reference::Digest(d) => d,
            Reference::Tag(t) => match st2.store().repo_tag(&st2.inner.registry, &name, &t)? {
                Some(rec) => rec.manifest,
                None => return Err(ApiError::manifest_unknown(&t)),
            },
        };
        let m = load_manifest(st2, &name, &digest)?;
        // An index to a client that does not take indexes: its manifest for this platform.
        if let Some(accept) = &accept
            && matches!(m.media_type.as_str(), OCI_INDEX | DOCKER_LIST)
            && !accept.iter().any(|a| *a == m.media_type)
            && accept.iter().any(|a| a == OCI_MANIFEST || a == DOCKER_MANIFEST)
            && let Ok(parsed) = Manifest::parse(&m.body, Some(&m.media_type))
            && let Some(child) = parsed.select_platform(&Platform::host())
            && let Ok(c) = load_manifest(st2, &name, &child.digest)
        {
            return Ok((child.digest, c));
        }
        Ok((digest, m))
    })()?;
    let mut resp = if head {
        Body::empty()
    } else {
        Body::from(m.body.clone())
    }
    .into_response();
    if !head {
        st.inner.metrics.add_bytes_out(m.body.len() as u64);
    }
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&m.media_type).unwrap_or(HeaderValue::from_static(OCI_MANIFEST)),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.body.len()));
    set_digest(h, &digest);
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{digest}\"")).unwrap_or(HeaderValue::from_static("")),
    );
    Ok(resp)
}

fn set_digest(h: &mut HeaderMap, d: &Digest) {
    if let Ok(v) = HeaderValue::from_str(&d.to_string()) {
        h.insert("Docker-Content-Digest", v);
    }
}

fn set_location(h: &mut HeaderMap, loc: &str) {
    if let Ok(v) = HeaderValue::from_str(loc) {
        h.insert(header::LOCATION, v);
    }
}

/// Reads a small body (a manifest) into memory, refusing more than `limit` bytes.
async fn read_limited(body: Body, limit: u64, idle: std::time::Duration) -> ApiResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::time::timeout(idle, futures::StreamExt::next(&mut stream))
            .await
            .map_err(|_| ApiError::manifest_invalid("client sent no data for too long"))?;
        match next {
            None => return Ok(out),
            Some(Ok(chunk)) => {
                if out.len() as u64 + chunk.len() as u64 > limit {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::SizeInvalid,
                        format!("manifest exceeds the limit of {limit} bytes"),
                    ));
                }
                out.extend_from_slice(&chunk);
            }
            Some(Err(e)) => return Err(ApiError::manifest_invalid(format!("reading request body: {e}"))),
        }
    }
}

async fn put_manifest(
    st: &AppState,
    name: String,
    reference: String,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let r = parse_reference(&reference, true)?;
    let limit = st.inner.config.limits.max_manifest_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::SizeInvalid,
            format!("manifest exceeds the limit of {limit} bytes"),
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .filter(|s| !s.is_empty());
    let bytes = read_limited(body, limit, st.inner.config.limits.body_idle_timeout).await?;
    let st2 = st.clone();
    let n2 = name.clone();
    let (digest, subject) = blocking(move || {
        let store = st2.store();
        let digest = Digest::of(&bytes);
        if let Reference::Digest(d) = &r
            && *d != digest
        {
            return Err(ApiError::digest_invalid(format!(
                "manifest digest is {digest}, not {d}"
            )));
        }
        let parsed =
            Manifest::parse(&bytes, content_type.as_deref()).map_err(strata_store::StoreError::from)?;
        for rf in parsed.references() {
            if !store.is_linked(&n2, &rf.digest)? {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::ManifestBlobUnknown,
                    "manifest references a blob or manifest unknown to the repository",
                )
                .with_detail(serde_json::json!({ "digest": rf.digest.to_string() })));
            }
        }
        let (digest, manifest) = store.add_manifest(&bytes, content_type.as_deref(), Some(&n2))?;
        if let Reference::Tag(t) = &r {
            store.set_repo_tag(&st2.inner.registry, &n2, t, &digest)?;
        }
        let subject = manifest.subject().map(|s| s.digest);
        if let Some(subject) = subject {
            let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let artifact_type = doc
                .get("artifactType")
                .and_then(|v| v.as_str())
                .or_else(|| doc.pointer("/config/mediaType").and_then(|v| v.as_str()))
                .map(str::to_string);
            let annotations = doc
                .get("annotations")
                .and_then(|a| serde_json::from_value(a.clone()).ok())
                .unwrap_or_default();
            let referrer = Referrer {
                media_type: manifest.media_type().to_string(),
                digest,
                size: bytes.len() as u64,
                artifact_type,
                annotations,
            };
            store.add_referrer(&n2, &subject, &referrer)?;
        }
        st2.inner
            .cache
            .put(digest, manifest.media_type().to_string(), Bytes::from(bytes));
        Ok((digest, subject))
    })
    .await?;
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    set_location(h, &format!("/v2/{name}/manifests/{digest}"));
    set_digest(h, &digest);
    if let Some(s) = subject
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        h.insert("OCI-Subject", v);
    }
    Ok(resp)
}

fn check_delete(st: &AppState) -> ApiResult<()> {
    if st.inner.config.delete_enabled {
        Ok(())
    } else {
        Err(ApiError::unsupported("deletes are disabled on this registry"))
    }
}

async fn delete_manifest(st: &AppState, name: String, reference: String) -> ApiResult {
    check_delete(st)?;
    let r = parse_reference(&reference, false)?;
    let st2 = st.clone();
    blocking(move || {
        let store = st2.store();
        let found = match &r {
            Reference::Tag(t) => store.delete_repo_tag(&st2.inner.registry, &name, t)?,
            Reference::Digest(d) => store.delete_repo_manifest(&st2.inner.registry, &name, d)?,
        };
        if found {
            Ok(())
        } else {
            Err(ApiError::manifest_unknown(&reference))
        }
    })
    .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Parses a single `bytes=` range against a blob of `len` bytes: `(start, end)` inclusive.
fn parse_range(v: &str, len: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            len.checked_sub(1)?
        } else {
            b.parse::<u64>().ok()?.min(len.checked_sub(1)?)
        };
        (start, end)
    };
    (start <= end && start < len).then_some((start, end))
}

pub(crate) async fn get_blob(
    st: &AppState,
    name: String,
    digest: String,
    headers: &HeaderMap,
    head: bool,
    slot: Option<SendfileSlot>,
) -> ApiResult {
    let d = parse_digest(&digest)?;
    let store = st.store();
    let grace = st.inner.config.gc.grace;
    // Inline, like manifest reads: a link lookup, `open` and `fstat`.
    let (file, len) = (move || {
        if !store.is_linked(&name, &d)? {
            return Err(ApiError::blob_unknown(d));
        }
        let f = store.blobs().open_blob(&d)?;
        let meta = f
            .metadata()
            .map_err(|e| ApiError::internal(format!("stat blob: {e}")))?;
        if head {
            keep_for_a_push(store, &d, &meta, grace);
        }
        Ok((f, meta.len()))
    })()?;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match range {
        None => (StatusCode::OK, 0, len),
        Some(r) => match parse_range(r, len) {
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
            None => {
                return Err(ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::RangeInvalid,
                    "invalid range",
                )
                .with_header(header::CONTENT_RANGE, &format!("bytes */{len}")));
            }
        },
    };
    let body = if head || count == 0 {
        Body::empty()
    } else {
        st.inner.metrics.add_bytes_out(count);
        match slot {
            Some(slot) if count >= SENDFILE_MIN => {
                Body::new(SendfileBody::new(slot, Arc::new(file), start, count))
            }
            _ => file_body(file, start, count),
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    set_digest(h, &d);
    if let Ok(v) = HeaderValue::from_str(&format!("\"{d}\"")) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// A client that finds a blob with `HEAD` skips uploading it and will reference it from
/// the manifest it pushes next. If the blob is unreferenced and nearing the end of its
/// GC grace period (content whose manifest was deleted), protect it like a new link (a
/// running GC keeps it, the period restarts), so a GC between this `HEAD` and that
/// manifest does not take it: at most one `utimensat` per blob per half grace period.
fn keep_for_a_push(
    store: &strata_store::Store,
    d: &Digest,
    meta: &std::fs::Metadata,
    grace: std::time::Duration,
) {
    let age = meta
        .modified()
        .ok()
        .and_then(|m| std::time::SystemTime::now().duration_since(m).ok());
    if age.is_some_and(|age| age > grace / 2) {
        store.protect_linked(d);
    }
}

/// Streams `count` bytes of `file` from `start`. Each chunk is one `pread` straight into
/// the buffer that goes to the socket (no zeroing, no second copy), run on the blocking
/// pool; the next chunk is read while the current one is sent. A slow client holds at
/// most `BLOB_READ_AHEAD` chunks in memory and no thread.
fn file_body(file: std::fs::File, start: u64, count: u64) -> Body {
    use futures::StreamExt;
    let file = Arc::new(file);
    let chunks = count.div_ceil(BLOB_READ_CHUNK as u64);
    let stream = futures::stream::iter(0..chunks)
        .map(move |i| {
            let file = file.clone();
            let offset = start + i * BLOB_READ_CHUNK as u64;
            let len = (start + count - offset).min(BLOB_READ_CHUNK as u64) as usize;
            async move {
                tokio::task::spawn_blocking(move || read_chunk(&file, offset, len))
                    .await
                    .map_err(std::io::Error::other)?
            }
        })
        .buffered(BLOB_READ_AHEAD);
    Body::from_stream(stream)
}

/// Reads exactly `len` bytes at `offset` into a new buffer.
pub(crate) fn read_chunk(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        let want = len - buf.len();
        let n = match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("blob ends {want} bytes early"),
            ));
        }
    }
    buf.truncate(len); // the allocation may have had room for more than was asked
    Ok(Bytes::from(buf))
}

async fn delete_blob(st: &AppState, name: String, digest: String) -> ApiResult {
    check_delete(st)?;
    let d = parse_digest(&digest)?;
    let store = st.store().clone();
    blocking(move || {
        if store.unlink(&name, &d)? {
            Ok(())
        } else {
            Err(ApiError::blob_unknown(d))
        }
    })
    .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

fn upload_response(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    set_location(h, &format!("/v2/{name}/blobs/uploads/{id}"));
    let range = format!("0-{}", offset.saturating_sub(1));
    if let Ok(v) = HeaderValue::from_str(&range) {
        h.insert(header::RANGE, v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("Docker-Upload-UUID", v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

fn blob_created(name: &str, d: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    set_location(h, &format!("/v2/{name}/blobs/{d}"));
    set_digest(h, d);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

async fn start_upload(
    st: &AppState,
    name: String,
    q: &[(String, String)],
    headers: &HeaderMap,
    body: UploadBody,
) -> ApiResult {
    if let Some(mount) = query_get(q, "mount") {
        let d = parse_digest(mount)?;
        if let Some(from) = query_get(q, "from")
            && valid_name(from, st.inner.config.limits.max_name_len)
        {
            let store = st.store().clone();
            let (from, to) = (from.to_string(), name.clone());
            let mounted = blocking(move || {
                if store.is_linked(&from, &d)?
                    && let Some(size) = store.blobs().size(&d)?
                {
                    store.record_uploaded_blob(&to, &d, size)?;
                    return Ok(true);
                }
                Ok(false)
            })
            .await?;
            if mounted {
                return Ok(blob_created(&name, &d));
            }
        }
    }
    let limits = &st.inner.config.limits;
    if let Some(digest) = query_get(q, "digest") {
        let d = parse_digest(digest)?;
        check_length(headers, limits.max_blob_bytes)?;
        let mut slot = st.inner.uploads.create(&name).await?;
        if let Err(e) = st
            .inner
            .uploads
            .append(&mut slot, body, limits.body_idle_timeout, limits.max_blob_bytes)
            .await
        {
            let _ = st.inner.uploads.cancel(slot).await;
            return Err(e);
        }
        st.inner.uploads.finish(slot, d).await?;
        return Ok(blob_created(&name, &d));
    }
    let slot = st.inner.uploads.create(&name).await?;
    let resp = upload_response(StatusCode::ACCEPTED, &name, &slot.id, 0);
    Ok(resp)
}

fn check_length(headers: &HeaderMap, limit: Option<u64>) -> ApiResult<()> {
    if let Some(limit) = limit
        && let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::size_invalid(format!(
            "blob exceeds the limit of {limit} bytes"
        )));
    }
    Ok(())
}

async fn upload_status(st: &AppState, name: String, id: String) -> ApiResult {
    let mut slot = st.inner.uploads.lock(&name, &id).await?;
    let offset = st.inner.uploads.offset(&mut slot).await?;
    Ok(upload_response(StatusCode::NO_CONTENT, &name, &id, offset))
}

/// Checks `Content-Range: <start>-<end>` against the current offset (416 when the chunk
/// is not the next one).
fn check_content_range(headers: &HeaderMap, offset: u64, name: &str, id: &str) -> ApiResult<()> {
    let Some(v) = headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let spec = v
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches([' ', '=']);
    let spec = spec.split('/').next().unwrap_or("");
    let start = spec
        .split_once('-')
        .and_then(|(a, _)| a.trim().parse::<u64>().ok());
    match start {
        Some(s) if s == offset => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            format!("chunk does not start at the upload's offset {offset}"),
        )
        .with_header(header::LOCATION, &format!("/v2/{name}/blobs/uploads/{id}"))
        .with_header(header::RANGE, &format!("0-{}", offset.saturating_sub(1)))
        .with_header(http::HeaderName::from_static("docker-upload-uuid"), id)),
    }
}

async fn patch_upload(
    st: &AppState,
    name: String,
    id: String,
    headers: &HeaderMap,
    body: UploadBody,
) -> ApiResult {
    let limits = &st.inner.config.limits;
    let mut slot = st.inner.uploads.lock(&name, &id).await?;
    let offset = st.inner.uploads.offset(&mut slot).await?;
    check_content_range(headers, offset, &name, &id)?;
    let offset = st
        .inner
        .uploads
        .append(&mut slot, body, limits.body_idle_timeout, limits.max_blob_bytes)
        .await?;
    Ok(upload_response(StatusCode::ACCEPTED, &name, &id, offset))
}

async fn put_upload(
    st: &AppState,
    name: String,
    id: String,
    q: &[(String, String)],
    headers: &HeaderMap,
    body: UploadBody,
) -> ApiResult {
    let limits = &st.inner.config.limits;
    let Some(digest) = query_get(q, "digest") else {
        return Err(ApiError::digest_invalid("the digest query parameter is required"));
    };
    let d = parse_digest(digest)?;
    let mut slot = st.inner.uploads.lock(&name, &id).await?;
    let offset = st.inner.uploads.offset(&mut slot).await?;
    check_content_range(headers, offset, &name, &id)?;
    st.inner
        .uploads
        .append(&mut slot, body, limits.body_idle_timeout, limits.max_blob_bytes)
        .await?;
    st.inner.uploads.finish(slot, d).await?;
    Ok(blob_created(&name, &d))
}

async fn cancel_upload(st: &AppState, name: String, id: String) -> ApiResult {
    let slot = st.inner.uploads.lock(&name, &id).await?;
    st.inner.uploads.cancel(slot).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn referrers(st: &AppState, name: String, digest: String, q: &[(String, String)]) -> ApiResult {
    let d = parse_digest(&digest)?;
    let store = st.store().clone();
    let mut list = blocking(move || Ok(store.referrers(&name, &d)?)).await?;
    let filter = query_get(q, "artifactType");
    if let Some(f) = filter {
        list.retain(|r| r.artifact_type.as_deref() == Some(f));
    }
    let doc = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list });
    let mut resp = (StatusCode::OK, serde_json::to_vec(&doc).unwrap_or_default()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if filter.is_some() {
        h.insert("OCI-Filters-Applied", HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn pagination() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let q = vec![("n".to_string(), "2".to_string())];
        let (p, link) = paginate(items.clone(), &q, 100, "/x").unwrap();
        assert_eq!(p, ["a", "b"]);
        assert_eq!(link.unwrap(), "</x?n=2&last=b>; rel=\"next\"");
        let q = vec![
            ("n".to_string(), "2".to_string()),
            ("last".to_string(), "b".to_string()),
        ];
        let (p, link) = paginate(items, &q, 100, "/x").unwrap();
        assert_eq!(p, ["c", "d"]);
        assert!(link.is_none());
    }
}
