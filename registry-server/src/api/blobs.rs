//! Blobs: GET/HEAD (linked into the repository; single `Range`s; bodies by `sendfile` on
//! plain HTTP/1 connections, else read ahead chunk by chunk with `pread`; a HEAD keeps an
//! unreferenced blob for the push that will reference it) and DELETE (the repository's
//! link).

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use strata_store::Digest;

use super::shared::{Shared, blocking, check_delete, keep_threshold, parse_digest, set_digest};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::sendfile::{SendfileBody, SendfileSlot};

/// Blob bodies are read this many bytes at a time.
pub(crate) const BLOB_READ_CHUNK: usize = 1 << 20;
/// Blob bodies at least this long go out by `sendfile` where the connection allows.
const SENDFILE_MIN: u64 = 64 << 10;
/// Chunks of a blob GET read ahead of the socket.
const BLOB_READ_AHEAD: usize = 2;

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
    st: &Shared,
    name: String,
    digest: String,
    headers: &HeaderMap,
    head: bool,
    slot: Option<SendfileSlot>,
) -> ApiResult {
    let d = parse_digest(&digest)?;
    if st.store().content().local().is_none() {
        return get_shared_blob(st, name, d, headers, head).await;
    }
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
    let (status, start, count) = plan_range(range, len)?;
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
    Ok(blob_response(body, status, &d, start, count, len))
}

/// The response to a blob GET or HEAD: `count` bytes of `len` from `start`.
fn blob_response(body: Body, status: StatusCode, d: &Digest, start: u64, count: u64, len: u64) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    set_digest(h, d);
    if let Ok(v) = HeaderValue::from_str(&format!("\"{d}\"")) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    resp
}

/// `(status, first byte, byte count)` of a GET with this `Range` header, or a 416.
pub(crate) fn plan_range(range: Option<&str>, len: u64) -> ApiResult<(StatusCode, u64, u64)> {
    match range {
        None => Ok((StatusCode::OK, 0, len)),
        Some(r) => match parse_range(r, len) {
            Some((a, b)) => Ok((StatusCode::PARTIAL_CONTENT, a, b - a + 1)),
            None => Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeInvalid,
                "invalid range",
            )
            .with_header(header::CONTENT_RANGE, &format!("bytes */{len}"))),
        },
    }
}

/// How long a presigned URL given in a redirect stays valid.
const REDIRECT_TTL: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// A blob GET/HEAD over a shared backend (S3): the link and the size from the metadata,
/// the bytes streamed from the backend — or, with `redirect = true`, a 307 to a presigned
/// URL so the client reads the object store directly.
async fn get_shared_blob(st: &Shared, name: String, d: Digest, headers: &HeaderMap, head: bool) -> ApiResult {
    let store = st.store().clone();
    if !blocking(move || Ok(store.is_linked(&name, &d)?)).await? {
        return Err(ApiError::blob_unknown(d));
    }
    let content = st.store().content();
    let len = content
        .stat(&d)
        .await
        .map_err(strata_store::StoreError::from)?
        .ok_or_else(|| ApiError::blob_unknown(d))?;
    if head {
        // A client that finds a blob with HEAD will reference it next: keep it from a GC
        // (a write only when it nears the end of its grace period or was condemned).
        content
            .keep(&d, keep_threshold(&st.inner.config.gc))
            .await
            .map_err(strata_store::StoreError::from)?;
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    if !head
        && st.inner.config.storage.redirect
        && let Some(url) = content
            .presigned_url(&d, REDIRECT_TTL)
            .await
            .map_err(strata_store::StoreError::from)?
    {
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&url) {
            h.insert(header::LOCATION, v);
        }
        set_digest(h, &d);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        return Ok(resp);
    }
    let (status, start, count) = plan_range(range, len)?;
    let body = if head || count == 0 {
        Body::empty()
    } else {
        st.inner.metrics.add_bytes_out(count);
        if count <= SHARED_RANGE {
            let part = (status == StatusCode::PARTIAL_CONTENT).then(|| (start, start + count - 1));
            let stream = content
                .read(&d, part)
                .await
                .map_err(strata_store::StoreError::from)?;
            Body::from_stream(stream)
        } else {
            ranged_body(content.clone(), d, start, count)
        }
    };
    Ok(blob_response(body, status, &d, start, count, len))
}

/// Bytes per ranged read of a large blob from a shared backend.
const SHARED_RANGE: u64 = 8 << 20;
/// Ranged reads in flight per blob GET (memory: this many ranges per client).
const SHARED_RANGES_AHEAD: usize = 3;

/// A large blob from a shared backend as consecutive ranges fetched a few at a time (one
/// object-store GET per range, in order): one GET stream is bound by one connection's
/// round trips; several keep the object store busy. A failed range cuts the body.
fn ranged_body(content: Arc<dyn strata_store::BlobBackend>, d: Digest, start: u64, count: u64) -> Body {
    use futures::{StreamExt, TryStreamExt};
    let ranges = count.div_ceil(SHARED_RANGE);
    let stream = futures::stream::iter(0..ranges)
        .map(move |i| {
            let content = content.clone();
            let first = start + i * SHARED_RANGE;
            let last = (first + SHARED_RANGE).min(start + count) - 1;
            async move {
                let s = content
                    .read(&d, Some((first, last)))
                    .await
                    .map_err(std::io::Error::other)?;
                let chunks: Vec<Bytes> = s.try_collect().await?;
                let mut buf = bytes::BytesMut::with_capacity((last - first + 1) as usize);
                for c in chunks {
                    buf.extend_from_slice(&c);
                }
                if buf.len() as u64 != last - first + 1 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("range {first}-{last} of {d} came back with {} bytes", buf.len()),
                    ));
                }
                Ok::<Bytes, std::io::Error>(buf.freeze())
            }
        })
        .buffered(SHARED_RANGES_AHEAD);
    Body::from_stream(stream)
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

pub(super) async fn delete_blob(st: &Shared, name: String, digest: String) -> ApiResult {
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
}
