//! Blob uploads: POST (a cross-repository mount, a monolithic upload with `?digest=`, or
//! a new session), GET of a session's status, PATCH chunks (`Content-Range` checked
//! against the offset), PUT with `?digest=` to finish, DELETE to cancel. The sessions
//! themselves (a store record plus a resumable ingest) are `crate::uploads`.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use strata_store::Digest;

use super::shared::{Shared, blocking, parse_digest, query_get, set_digest, set_location};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::names::valid_name;
use crate::uploads::UploadBody;

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

pub(super) async fn start_upload(
    st: &Shared,
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
            let from = from.to_string();
            let linked = blocking(move || Ok(store.is_linked(&from, &d)?)).await?;
            // Kept, not just looked at: the mounted blob is about to be referenced.
            let content = st.store().content();
            let size = if linked
                && content
                    .keep(&d, 0)
                    .await
                    .map_err(strata_store::StoreError::from)?
            {
                content.stat(&d).await.map_err(strata_store::StoreError::from)?
            } else {
                None
            };
            if let Some(size) = size {
                let store = st.store().clone();
                let to = name.clone();
                blocking(move || Ok(store.record_uploaded_blob(&to, &d, size)?)).await?;
                return Ok(blob_created(&name, &d));
            }
        }
    }
    let limits = &st.inner.config.limits;
    if let Some(su) = &st.inner.shared_uploads {
        let mut slot = su.create(&name).await?;
        if let Some(digest) = query_get(q, "digest") {
            let d = parse_digest(digest)?;
            check_length(headers, limits.max_blob_bytes)?;
            if let Err(e) = su
                .append(&mut slot, body, limits.body_pace(), limits.max_blob_bytes)
                .await
            {
                let _ = su.cancel(slot).await;
                return Err(e);
            }
            su.finish(slot, d).await?;
            return Ok(blob_created(&name, &d));
        }
        let id = slot.id.clone();
        su.release(slot).await;
        return Ok(upload_response(StatusCode::ACCEPTED, &name, &id, 0));
    }
    if let Some(digest) = query_get(q, "digest") {
        let d = parse_digest(digest)?;
        check_length(headers, limits.max_blob_bytes)?;
        let mut slot = st.inner.uploads.create(&name).await?;
        if let Err(e) = st
            .inner
            .uploads
            .append(&mut slot, body, limits.body_pace(), limits.max_blob_bytes)
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

pub(super) async fn upload_status(st: &Shared, name: String, id: String) -> ApiResult {
    if let Some(su) = &st.inner.shared_uploads {
        let offset = su.status(&name, &id).await?;
        return Ok(upload_response(StatusCode::NO_CONTENT, &name, &id, offset));
    }
    let mut slot = st.inner.uploads.lock(&name, &id).await?;
    let offset = st.inner.uploads.offset(&mut slot).await?;
    Ok(upload_response(StatusCode::NO_CONTENT, &name, &id, offset))
}

/// Checks `Content-Range: <start>-<end>` against the current offset (416 when the chunk
/// is not the next one).
pub(crate) fn check_content_range(headers: &HeaderMap, offset: u64, name: &str, id: &str) -> ApiResult<()> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(());
    };
    // A value that is not visible ASCII names no start: refused like any other that does
    // not parse, not taken for an absent header (found by fuzzing).
    let v = v.to_str().unwrap_or_default();
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

pub(super) async fn patch_upload(
    st: &Shared,
    name: String,
    id: String,
    headers: &HeaderMap,
    body: UploadBody,
) -> ApiResult {
    let limits = &st.inner.config.limits;
    if let Some(su) = &st.inner.shared_uploads {
        let mut slot = su.lock(&name, &id).await?;
        if let Err(e) = check_content_range(headers, su.offset(&slot), &name, &id) {
            su.release(slot).await;
            return Err(e);
        }
        let result = su
            .append(&mut slot, body, limits.body_pace(), limits.max_blob_bytes)
            .await;
        su.release(slot).await;
        let offset = result?;
        return Ok(upload_response(StatusCode::ACCEPTED, &name, &id, offset));
    }
    let mut slot = st.inner.uploads.lock(&name, &id).await?;
    let offset = st.inner.uploads.offset(&mut slot).await?;
    check_content_range(headers, offset, &name, &id)?;
    let offset = st
        .inner
        .uploads
        .append(&mut slot, body, limits.body_pace(), limits.max_blob_bytes)
        .await?;
    Ok(upload_response(StatusCode::ACCEPTED, &name, &id, offset))
}

pub(super) async fn put_upload(
    st: &Shared,
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
    if let Some(su) = &st.inner.shared_uploads {
        let mut slot = su.lock(&name, &id).await?;
        if let Err(e) = check_content_range(headers, su.offset(&slot), &name, &id) {
            su.release(slot).await;
            return Err(e);
        }
        if let Err(e) = su
            .append(&mut slot, body, limits.body_pace(), limits.max_blob_bytes)
            .await
        {
            su.release(slot).await;
            return Err(e);
        }
        su.finish(slot, d).await?;
        return Ok(blob_created(&name, &d));
    }
    let mut slot = st.inner.uploads.lock(&name, &id).await?;
    let offset = st.inner.uploads.offset(&mut slot).await?;
    check_content_range(headers, offset, &name, &id)?;
    st.inner
        .uploads
        .append(&mut slot, body, limits.body_pace(), limits.max_blob_bytes)
        .await?;
    st.inner.uploads.finish(slot, d).await?;
    Ok(blob_created(&name, &d))
}

pub(super) async fn cancel_upload(st: &Shared, name: String, id: String) -> ApiResult {
    if let Some(su) = &st.inner.shared_uploads {
        let slot = su.lock(&name, &id).await?;
        su.cancel(slot).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let slot = st.inner.uploads.lock(&name, &id).await?;
    st.inner.uploads.cancel(slot).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
