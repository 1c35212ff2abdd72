//! What the resource handlers share: `Shared` (the store, the configuration, upload
//! sessions, the manifest cache, metrics) and small helpers — the blocking pool, digest
//! and query parsing, the `Docker-Content-Digest` and `Location` headers, the delete switch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use strata_store::{Digest, Store};

use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::shared_uploads::SharedUploads;
use crate::uploads::Uploads;

const MANIFEST_CACHE_BYTES: usize = 8 << 20;

/// The state every resource handler works on: the store, the configuration, upload
/// sessions, the manifest cache and metrics. (The router's `AppState` adds the
/// authenticator and, in proxy mode, the pull-through cache.)
#[derive(Clone)]
pub(crate) struct Shared {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) store: Arc<Store>,
    pub(super) config: Config,
    pub(super) registry: String,
    pub(super) uploads: Uploads,
    /// Upload sessions in shared storage, when the blob backend is shared (S3).
    pub(super) shared_uploads: Option<SharedUploads>,
    pub(super) cache: ManifestCache,
    pub(super) metrics: Arc<Metrics>,
}

impl Shared {
    pub(super) fn new(store: Arc<Store>, config: Config) -> Shared {
        let metrics = Arc::new(Metrics::default());
        Shared {
            inner: Arc::new(Inner {
                uploads: Uploads::new(store.clone(), config.limits.max_upload_sessions, metrics.clone()),
                shared_uploads: store
                    .content()
                    .local()
                    .is_none()
                    .then(|| SharedUploads::new(store.clone())),
                registry: config.registry_name(),
                store,
                config,
                cache: ManifestCache::default(),
                metrics,
            }),
        }
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }
    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
    /// The name tags are stored under (`<registry>/<repo>:<tag>`).
    pub(crate) fn registry_name(&self) -> &str {
        &self.inner.registry
    }
}

/// Small manifests by digest, so a manifest GET reads neither RocksDB scans nor files.
#[derive(Default)]
pub(super) struct ManifestCache {
    map: RwLock<HashMap<Digest, Arc<Cached>>>,
    bytes: AtomicUsize,
}

pub(super) struct Cached {
    pub(super) media_type: String,
    pub(super) body: Bytes,
}

impl ManifestCache {
    pub(super) fn get(&self, d: &Digest) -> Option<Arc<Cached>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).get(d).cloned()
    }
    pub(super) fn put(&self, d: Digest, media_type: String, body: Bytes) -> Arc<Cached> {
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

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Waits for a blob backend's future from blocking code (inside [`blocking`]: the blocking
/// pool's threads may block on the runtime; its async workers may not).
pub(crate) fn wait<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

/// The `stored_before` for `BlobBackend::keep` when a client is about to reference a blob:
/// a blob stored (or kept) within half the GC grace period is left as it is, an older or
/// condemned one is kept again.
pub(crate) fn keep_threshold(gc: &crate::config::GcConfig) -> i64 {
    crate::uploads::now() - (gc.grace / 2).as_secs() as i64
}

pub(super) fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::digest_invalid(format!("invalid digest {s:?}: {e}")))
}

pub(super) fn query_get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub(super) fn set_digest(h: &mut HeaderMap, d: &Digest) {
    if let Ok(v) = HeaderValue::from_str(&d.to_string()) {
        h.insert("Docker-Content-Digest", v);
    }
}

pub(super) fn set_location(h: &mut HeaderMap, loc: &str) {
    if let Ok(v) = HeaderValue::from_str(loc) {
        h.insert(header::LOCATION, v);
    }
}

pub(super) fn check_delete(st: &Shared) -> ApiResult<()> {
    if st.inner.config.delete_enabled {
        Ok(())
    } else {
        Err(ApiError::unsupported("deletes are disabled on this registry"))
    }
}
