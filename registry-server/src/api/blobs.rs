//! Blobs: GET/HEAD (linked into the repository; a `Range` of one or several ranges, the
//! latter answered `multipart/byteranges`; bodies by `sendfile` on
//! plain HTTP/1 connections, else read ahead chunk by chunk with `pread`; a HEAD keeps an
//! unreferenced blob for the push that will reference it) and DELETE (the repository's
//! link).

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
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

/// Most ranges one `Range` header may ask for (more is refused: each part costs a read
/// and headers, and a hostile client could ask for the same bytes many times).
pub(crate) const MAX_RANGES: usize = 100;

/// Why a `Range` header cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeError {
    /// Not a `bytes=` range set this server understands.
    Malformed,
    /// No range starts inside the blob.
    Unsatisfiable,
    /// More than [`MAX_RANGES`] ranges.
    TooMany,
}

/// Parses one range spec against a blob of `len` bytes: `Ok(Some((start, end)))`
/// inclusive, `Ok(None)` when well-formed but outside the blob.
fn parse_spec(spec: &str, len: u64) -> Result<Option<(u64, u64)>, RangeError> {
    let (a, b) = spec.split_once('-').ok_or(RangeError::Malformed)?;
    let num = |t: &str| -> Result<u64, RangeError> {
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(RangeError::Malformed);
        }
        // More digits than a u64 holds is still a position past any blob.
        Ok(t.parse().unwrap_or(u64::MAX))
    };
    if a.is_empty() {
        let n = num(b)?;
        if n == 0 || len == 0 {
            return Ok(None);
        }
        return Ok(Some((len.saturating_sub(n), len - 1)));
    }
    let start = num(a)?;
    let end = if b.is_empty() { u64::MAX } else { num(b)? };
    if end < start {
        return Err(RangeError::Malformed);
    }
    if start >= len {
        return Ok(None);
    }
    Ok(Some((start, end.min(len - 1))))
}

/// Parses a `bytes=` range set (RFC 9110 §14.1.2) against a blob of `len` bytes: the
/// satisfiable ranges, inclusive, in the order asked — or, if any overlap, sorted with
/// overlapping and adjacent ones coalesced (so no byte is sent twice).
fn parse_ranges(v: &str, len: u64) -> Result<Vec<(u64, u64)>, RangeError> {
    let (unit, set) = v.trim().split_once('=').ok_or(RangeError::Malformed)?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Err(RangeError::Malformed);
    }
    let mut specs = 0;
    let mut out = Vec::new();
    for spec in set.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        specs += 1;
        if specs > MAX_RANGES {
            return Err(RangeError::TooMany);
        }
        if let Some(r) = parse_spec(spec, len)? {
            out.push(r);
        }
    }
    if specs == 0 {
        return Err(RangeError::Malformed);
    }
    if out.is_empty() {
        return Err(RangeError::Unsatisfiable);
    }
    let mut sorted = out.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[1].0 <= w[0].1) {
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (a, b) in sorted {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        return Ok(merged);
    }
    Ok(out)
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
    let (status, parts) = plan_range(range, len)?;
    if let [(start, count)] = parts[..] {
        let body = if head || count == 0 {
            Body::empty()
        } else {
            st.inner.metrics.add_bytes_out(count);
            match slot {
                Some(slot) if count >= SENDFILE_MIN => {
                    Body::new(SendfileBody::new(slot, Arc::new(file), start, count))
                }
                _ => Body::from_stream(file_stream(Arc::new(file), start, count)),
            }
        };
        return Ok(blob_response(body, status, &d, start, count, len));
    }
    let file = Arc::new(file);
    Ok(multipart_response(st, &d, len, &parts, head, |start, count| {
        file_stream(file.clone(), start, count).boxed()
    }))
}

/// A stream of blob bytes.
type ByteStream = futures::stream::BoxStream<'static, std::io::Result<Bytes>>;

/// A `206` answering several ranges: a `multipart/byteranges` body (RFC 9110 §14.6), one
/// part per range with its own `Content-Type` and `Content-Range`, under a random
/// boundary (blob bytes are the pusher's: a fixed one could be planted in them).
fn multipart_response(
    st: &Shared,
    d: &Digest,
    len: u64,
    parts: &[(u64, u64)],
    head: bool,
    part_body: impl Fn(u64, u64) -> ByteStream,
) -> Response {
    let boundary = format!("strata-{}", hex::encode(rand::random::<[u8; 16]>()));
    let part_head = |start: u64, count: u64, first: bool| {
        Bytes::from(format!(
            "{}--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{}/{len}\r\n\r\n",
            if first { "" } else { "\r\n" },
            start + count - 1
        ))
    };
    let trailer = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let data: u64 = parts.iter().map(|(_, c)| c).sum();
    let total = data
        + parts
            .iter()
            .enumerate()
            .map(|(i, (s, c))| part_head(*s, *c, i == 0).len() as u64)
            .sum::<u64>()
        + trailer.len() as u64;
    let body = if head {
        Body::empty()
    } else {
        st.inner.metrics.add_bytes_out(data);
        st.inner.metrics.add_range_parts(parts.len());
        let mut pieces: Vec<ByteStream> = Vec::with_capacity(2 * parts.len() + 1);
        for (i, (start, count)) in parts.iter().enumerate() {
            pieces.push(futures::stream::iter([Ok(part_head(*start, *count, i == 0))]).boxed());
            pieces.push(part_body(*start, *count));
        }
        pieces.push(futures::stream::iter([Ok(trailer)]).boxed());
        Body::from_stream(futures::stream::iter(pieces).flatten())
    };
    let mut resp = blob_response(body, StatusCode::PARTIAL_CONTENT, d, 0, total, len);
    let h = resp.headers_mut();
    h.remove(header::CONTENT_RANGE);
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}")) {
        h.insert(header::CONTENT_TYPE, v);
    }
    resp
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

/// The status and `(first byte, byte count)` parts of a GET with this `Range` header: 200
/// and the whole blob without one, 206 and one or more parts with one, or a 416.
pub(crate) fn plan_range(range: Option<&str>, len: u64) -> ApiResult<(StatusCode, Vec<(u64, u64)>)> {
    let Some(r) = range else {
        return Ok((StatusCode::OK, vec![(0, len)]));
    };
    match parse_ranges(r, len) {
        Ok(parts) => Ok((
            StatusCode::PARTIAL_CONTENT,
            parts.into_iter().map(|(a, b)| (a, b - a + 1)).collect(),
        )),
        Err(e) => {
            let message = match e {
                RangeError::Malformed => "invalid range".to_string(),
                RangeError::Unsatisfiable => format!("no range starts inside the blob of {len} bytes"),
                RangeError::TooMany => format!("more than {MAX_RANGES} ranges"),
            };
            Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeInvalid,
                message,
            )
            .with_header(header::CONTENT_RANGE, &format!("bytes */{len}")))
        }
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
    let (status, parts) = plan_range(range, len)?;
    if let [(start, count)] = parts[..] {
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
                Body::from_stream(ranged_stream(content.clone(), d, start, count))
            }
        };
        return Ok(blob_response(body, status, &d, start, count, len));
    }
    let content = content.clone();
    Ok(multipart_response(
        st,
        &d,
        len,
        &parts,
        head,
        move |start, count| ranged_stream(content.clone(), d, start, count).boxed(),
    ))
}

/// Bytes per ranged read of a large blob from a shared backend.
const SHARED_RANGE: u64 = 8 << 20;
/// Ranged reads in flight per blob GET (memory: this many ranges per client).
const SHARED_RANGES_AHEAD: usize = 3;

/// A large blob from a shared backend as consecutive ranges fetched a few at a time (one
/// object-store GET per range, in order): one GET stream is bound by one connection's
/// round trips; several keep the object store busy. A failed range cuts the body.
fn ranged_stream(
    content: Arc<dyn strata_store::BlobBackend>,
    d: Digest,
    start: u64,
    count: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    use futures::TryStreamExt;
    let ranges = count.div_ceil(SHARED_RANGE);
    futures::stream::iter(0..ranges)
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
        .buffered(SHARED_RANGES_AHEAD)
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
fn file_stream(
    file: Arc<std::fs::File>,
    start: u64,
    count: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let chunks = count.div_ceil(BLOB_READ_CHUNK as u64);
    futures::stream::iter(0..chunks)
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
        .buffered(BLOB_READ_AHEAD)
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
        let one = |v: &str| match parse_ranges(v, 100) {
            Ok(r) if r.len() == 1 => Some(r[0]),
            _ => None,
        };
        assert_eq!(one("bytes=0-9"), Some((0, 9)));
        assert_eq!(one("bytes=90-"), Some((90, 99)));
        assert_eq!(one("bytes=-10"), Some((90, 99)));
        assert_eq!(one("bytes=50-500"), Some((50, 99)));
        assert_eq!(one("bytes=-500"), Some((0, 99)));
        assert_eq!(parse_ranges("bytes=100-", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_ranges("bytes=-0", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_ranges("bytes=5-1", 100), Err(RangeError::Malformed));
        assert_eq!(parse_ranges("items=0-1", 100), Err(RangeError::Malformed));
        assert_eq!(parse_ranges("bytes=", 100), Err(RangeError::Malformed));
        assert_eq!(parse_ranges("bytes=+1-2", 100), Err(RangeError::Malformed));
        assert_eq!(parse_ranges("bytes=0-0", 0), Err(RangeError::Unsatisfiable));
    }

    #[test]
    fn several_ranges_keep_their_order_unless_they_overlap() {
        assert_eq!(
            parse_ranges("bytes=0-9,100-199", 1000),
            Ok(vec![(0, 9), (100, 199)])
        );
        assert_eq!(
            parse_ranges("bytes=100-199, 0-9", 1000),
            Ok(vec![(100, 199), (0, 9)])
        );
        // Unsatisfiable ones are dropped; the rest is served.
        assert_eq!(parse_ranges("bytes=0-1,5000-6000", 1000), Ok(vec![(0, 1)]));
        // Overlapping and adjacent ones coalesce: no byte goes out twice.
        assert_eq!(parse_ranges("bytes=0-,0-,0-", 1000), Ok(vec![(0, 999)]));
        assert_eq!(
            parse_ranges("bytes=50-60,0-9,10-20,55-70", 1000),
            Ok(vec![(0, 20), (50, 70)])
        );
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(parse_ranges(&many, 1000), Err(RangeError::TooMany));
        let most = (0..MAX_RANGES)
            .map(|i| format!("{}-{}", 2 * i, 2 * i))
            .collect::<Vec<_>>();
        assert_eq!(
            parse_ranges(&format!("bytes={}", most.join(",")), 1000).map(|r| r.len()),
            Ok(MAX_RANGES)
        );
    }
}
