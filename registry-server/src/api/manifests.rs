//! Manifests: GET/HEAD by tag or digest (from the manifest cache; an index to a client
//! that does not take indexes is answered with its manifest for this platform), PUT
//! (every reference linked into the repository first; the tag; the referrers index for a
//! manifest with a subject) and DELETE.

use std::sync::Arc;

use axum::body::Body;
use axum::response::IntoResponse;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use strata_store::{
    DOCKER_LIST, DOCKER_MANIFEST, Digest, Manifest, OCI_INDEX, OCI_MANIFEST, Platform, Referrer,
};

use super::shared::{
    Cached, Shared, blocking, check_delete, keep_threshold, parse_digest, set_digest, set_location, wait,
};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::names::valid_tag;

/// A manifest reference: a tag or a digest.
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
fn load_manifest(st: &Shared, name: &str, digest: &Digest) -> ApiResult<Arc<Cached>> {
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
    let bytes = match store.content().local() {
        Some(blobs) => blobs.read_small(digest, strata_store::MAX_MANIFEST_BYTES)?,
        // A shared backend is read only from the blocking pool (see `get_manifest`).
        None => wait(
            store
                .content()
                .read_small(digest, strata_store::MAX_MANIFEST_BYTES),
        )
        .map_err(strata_store::StoreError::from)?,
    };
    Ok(st.inner.cache.put(*digest, record.media_type, Bytes::from(bytes)))
}

pub(crate) async fn get_manifest(
    st: &Shared,
    name: String,
    reference: String,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    let r = parse_reference(&reference, false)?;
    let accept = accepted(headers);
    let st2 = st.clone();
    // Point reads (RocksDB, usually from memory, and the manifest cache) run inline: a hop
    // to the blocking pool costs more than they do, and under load it sets the tail
    // latency (see `benches/RESULTS.md`).
    let lookup = move || {
        let digest = match r {
            Reference::Digest(d) => d,
            Reference::Tag(t) => match st2.store().repo_tag(&st2.inner.registry, &name, &t)? {
                Some(rec) => rec.manifest,
                None => return Err(ApiError::manifest_unknown(&t)),
            },
        };
        let m = load_manifest(&st2, &name, &digest)?;
        // An index to a client that does not take indexes: its manifest for this platform.
        if let Some(accept) = &accept
            && matches!(m.media_type.as_str(), OCI_INDEX | DOCKER_LIST)
            && !accept.iter().any(|a| *a == m.media_type)
            && accept.iter().any(|a| a == OCI_MANIFEST || a == DOCKER_MANIFEST)
            && let Ok(parsed) = Manifest::parse(&m.body, Some(&m.media_type))
            && let Some(child) = parsed.select_platform(&Platform::host())
            && let Ok(c) = load_manifest(&st2, &name, &child.digest)
        {
            return Ok((child.digest, c));
        }
        Ok((digest, m))
    };
    // With shared metadata and blobs, reads cross the network: off the async workers.
    let (digest, m) = if st.store().is_shared() {
        blocking(lookup).await?
    } else {
        lookup()?
    };
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

/// Reads a small body (a manifest) into memory, refusing more than `limit` bytes.
async fn read_limited(body: Body, limit: u64, pace: crate::pace::BodyPace) -> ApiResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    let mut meter = pace.meter();
    let too_slow = |e: crate::pace::TooSlow| ApiError::manifest_invalid(e.to_string());
    loop {
        let next = meter
            .next(futures::StreamExt::next(&mut stream))
            .await
            .map_err(too_slow)?;
        match next {
            None => return Ok(out),
            Some(Ok(chunk)) => {
                meter.received(chunk.len()).map_err(too_slow)?;
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

pub(super) async fn put_manifest(
    st: &Shared,
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
    let bytes = read_limited(body, limit, st.inner.config.limits.body_pace()).await?;
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
        let (digest, manifest) = if store.content().local().is_some() {
            store.add_manifest(&bytes, content_type.as_deref(), Some(&n2))?
        } else {
            add_manifest_shared(store, &bytes, content_type.as_deref(), &n2, &st2.inner.config.gc)?
        };
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

/// `Store::add_manifest` over a shared blob backend: every referenced blob *kept* (a GC
/// on another replica that condemned it is overruled, see `strata_store::gc_shared`), the
/// manifest written through the backend, then the metadata recorded — within half the
/// GC's settling time of the first keep, else a 503 the client retries. Runs on the
/// blocking pool.
pub(crate) fn add_manifest_shared(
    store: &strata_store::Store,
    bytes: &[u8],
    media_type: Option<&str>,
    repository: &str,
    gc: &crate::config::GcConfig,
) -> ApiResult<(Digest, Manifest)> {
    let content = store.content();
    let manifest = Manifest::parse(bytes, media_type).map_err(strata_store::StoreError::from)?;
    let digest = Digest::of(bytes);
    let started = std::time::Instant::now();
    let recent = keep_threshold(gc);
    store.check_references(&manifest, &digest, |d| Ok(wait(content.keep(d, recent))?))?;
    wait(content.write(&digest, Bytes::copy_from_slice(bytes))).map_err(strata_store::StoreError::from)?;
    let config = match strata_store::image_config(&manifest) {
        Some(c) => Some(
            wait(content.read_small(&c, strata_store::MAX_MANIFEST_BYTES))
                .map_err(strata_store::StoreError::from)?,
        ),
        None => None,
    };
    if started.elapsed() > gc.settle / 2 {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "storing the manifest took too long to be safe from a concurrent GC; retry",
        ));
    }
    store.record_manifest(bytes, &manifest, config.as_deref(), Some(repository))?;
    Ok((digest, manifest))
}

pub(super) async fn delete_manifest(st: &Shared, name: String, reference: String) -> ApiResult {
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
