//! The OCI Distribution v1.1 API over the store: `AppState`, `app(state)` (the whole
//! service as an axum `Router`), the middleware, the endpoints outside the API (health,
//! metrics, token) and the dispatcher — route, name check, authorization — in front of
//! the resource handlers: `manifests`, `blobs`, `uploads`, `tags` (and the catalog),
//! `referrers`, over `shared`. Only this module knows the pull-through cache (`proxy`):
//! in proxy mode it sends manifest and blob reads there, and the proxy reads through the
//! same handlers; resource handlers never import it.

pub(crate) mod blobs;
pub(crate) mod manifests;
mod referrers;
pub(crate) mod shared;
mod tags;
pub(crate) mod uploads;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use strata_client::ClientError;
use strata_store::Store;

use self::shared::{Shared, blocking, query_get};
use crate::auth::{Action, Auth, AuthError, Need, form_pairs};
use crate::config::Config;
use crate::direct::DirectRequestBody;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::metrics::Metrics;
use crate::names::{Route, parse_route, valid_name};
use crate::proxy::{self, Proxy};
use crate::sendfile::SendfileSlot;
use crate::uploads::UploadBody;

const API_VERSION: &str = "registry/2.0";

/// The server's state: what the resource handlers share (the store, the configuration,
/// upload sessions, the manifest cache, metrics), the authenticator and, in proxy mode,
/// the pull-through cache.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Shared,
    auth: Option<Auth>,
    proxy: Option<Arc<Proxy>>,
}

/// Errors setting up the server state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("proxy upstream: {0}")]
    Proxy(#[from] ClientError),
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", self.store())
            .field("registry", &self.registry_name())
            .finish()
    }
}

impl AppState {
    /// Builds the state over an open store (reads the htpasswd file if auth is set; sets
    /// up the upstream client in proxy mode).
    pub fn new(store: Arc<Store>, config: Config) -> Result<AppState, StateError> {
        let auth = config.auth.clone().map(Auth::new).transpose()?;
        let shared = Shared::new(store, config);
        let proxy = match &shared.config().proxy {
            Some(c) => Some(Arc::new(Proxy::new(c, shared.clone())?)),
            None => None,
        };
        Ok(AppState {
            inner: Arc::new(Inner { shared, auth, proxy }),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        self.inner.shared.store()
    }
    pub fn config(&self) -> &Config {
        self.inner.shared.config()
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.inner.shared.metrics()
    }
    /// The name tags are stored under (`<registry>/<repo>:<tag>`).
    pub fn registry_name(&self) -> &str {
        self.inner.shared.registry_name()
    }

    /// Closes the files of upload sessions idle for a minute (blocking); they reopen on
    /// their next request.
    pub fn release_idle_uploads(&self) -> usize {
        let shared = &self.inner.shared.inner;
        match &shared.shared_uploads {
            Some(_) => 0,
            None => shared.uploads.release_idle(crate::uploads::RELEASE_IDLE),
        }
    }

    /// Drops abandoned upload sessions (blocking).
    pub fn expire_uploads(&self) -> Result<usize, strata_store::StoreError> {
        let shared = &self.inner.shared.inner;
        match &shared.shared_uploads {
            Some(su) => shared::wait(su.expire(shared.config.uploads.expiry)),
            None => shared.uploads.expire(shared.config.uploads.expiry),
        }
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
    st.metrics().observe(method.as_str(), status, elapsed);
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
        // A shared backend's totals are not this replica's to count on every scrape.
        store
            .content()
            .local()?
            .list()
            .ok()
            .map(|l| (l.len() as u64, l.iter().map(|b| b.size).sum::<u64>()))
    })
    .await
    .ok()
    .flatten();
    let text = st.metrics().render(storage);
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

fn need_for(method: &Method, route: &Route, q: &[(String, String)]) -> Need {
    if matches!(route, Route::Catalog) {
        return Need {
            catalog: true,
            ..Need::default()
        };
    }
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
        ..Need::default()
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
    let shared = &st.inner.shared;
    if let Some(name) = route.name()
        && !valid_name(name, shared.config().limits.max_name_len)
    {
        return Err(ApiError::name_invalid(name));
    }
    let q = form_pairs(uri.query().unwrap_or(""));
    if st.inner.auth.is_some() {
        let need = need_for(&method, &route, &q);
        let st2 = st.clone();
        let h = headers.clone();
        let tls = shared.config().tls.is_some();
        blocking(move || match &st2.inner.auth {
            Some(a) => a.authorize(&h, tls, &need).map(|_| ()),
            None => Ok(()),
        })
        .await?;
    }
    let head = method == Method::HEAD;
    // The pull-through cache, in proxy mode: it answers manifest and blob reads (through
    // the resource handlers, once it has what was asked) and adds the upstream's tags.
    let cache = st.inner.proxy.as_ref();
    if cache.is_some() && proxy::is_push(&method, &route) {
        return Err(proxy::push_refused());
    }
    match (&method, route) {
        (&Method::GET | &Method::HEAD, Route::Base) => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response())
        }
        (&Method::GET, Route::Catalog) => tags::catalog(shared, &q).await,
        (&Method::GET, Route::Tags { name }) => {
            // A pull-through cache lists the upstream's tags too (its own, cached, when the
            // upstream cannot be reached).
            let upstream_name = name.clone();
            let upstream = async {
                match cache {
                    Some(p) => proxy::upstream_tags(p, &upstream_name).await,
                    None => None,
                }
            };
            tags::tags(shared, name, &q, upstream).await
        }
        (&Method::GET | &Method::HEAD, Route::Manifest { name, reference }) => match cache {
            Some(p) => proxy::get_manifest(p, name, reference, &headers, head).await,
            None => manifests::get_manifest(shared, name, reference, &headers, head).await,
        },
        (&Method::PUT, Route::Manifest { name, reference }) => {
            manifests::put_manifest(shared, name, reference, &headers, body.into_stream()).await
        }
        (&Method::DELETE, Route::Manifest { name, reference }) => {
            manifests::delete_manifest(shared, name, reference).await
        }
        (&Method::GET | &Method::HEAD, Route::Blob { name, digest }) => match cache {
            Some(p) => proxy::get_blob(p, name, digest, &headers, head, slot).await,
            None => blobs::get_blob(shared, name, digest, &headers, head, slot).await,
        },
        (&Method::DELETE, Route::Blob { name, digest }) => blobs::delete_blob(shared, name, digest).await,
        (&Method::POST, Route::Uploads { name }) => {
            uploads::start_upload(shared, name, &q, &headers, body).await
        }
        (&Method::GET, Route::Upload { name, id }) => uploads::upload_status(shared, name, id).await,
        (&Method::PATCH, Route::Upload { name, id }) => {
            uploads::patch_upload(shared, name, id, &headers, body).await
        }
        (&Method::PUT, Route::Upload { name, id }) => {
            uploads::put_upload(shared, name, id, &q, &headers, body).await
        }
        (&Method::DELETE, Route::Upload { name, id }) => uploads::cancel_upload(shared, name, id).await,
        (&Method::GET, Route::Referrers { name, digest }) => {
            referrers::referrers(shared, name, digest, &q).await
        }
        _ => Err(ApiError::unsupported(format!("{method} is not supported here"))),
    }
}
