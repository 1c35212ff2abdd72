//! Blob upload bodies received beside hyper on plain HTTP/1 connections: the bytes go
//! from the socket into the upload's own aligned buffers, which the store writes with
//! `O_DIRECT`, instead of through hyper's read buffer and the page cache (one copy in
//! all, where the ordinary path makes three).
//!
//! How: [`Inbound`], the read side of every plain connection, reads the request heads
//! before hyper does and follows the message boundaries (heads, `Content-Length`
//! bodies). A blob upload — `PUT`, `PATCH` or `POST` under `/blobs/uploads/`, HTTP/1.1,
//! with a `Content-Length` of at least [`DIRECT_MIN`] — is handed to hyper without its
//! `Content-Length` and `Expect` headers, so hyper sees a request without a body. The
//! body becomes a [`DirectBody`] in the connection's [`DirectSlot`]; the request picks
//! it up as it is dispatched (matched by its sequence number on the connection), with
//! `Content-Length` restored. While the body is unread, hyper's reads wait. When the
//! [`DirectBody`] is dropped, what the handler left unread is drained (up to
//! [`DRAIN_LIMIT`]) and reading goes on with the next request.
//!
//! Anything unusual — a chunked body, an upgrade, HTTP/2, a head that does not parse or
//! is too large — switches the connection to plain pass-through for good: hyper then
//! reads the socket as it always would.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Smallest upload body taken beside hyper; smaller ones are not worth a second path.
pub const DIRECT_MIN: u64 = 1 << 20;
/// Largest request head followed; a larger one is left to hyper (which refuses it).
const MAX_HEAD: usize = 64 << 10;
/// Most header lines looked at; more are left to hyper.
const MAX_HEADERS: usize = 128;
/// How much the head reader asks the socket for at a time.
const READ_CHUNK: usize = 16 << 10;
/// Most unread body bytes drained after a handler gave up on a body (so that the client
/// reads the error response instead of a reset); past this the connection is closed.
pub const DRAIN_LIMIT: u64 = 256 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The state one direct body shares with its connection's reader.
#[derive(Default)]
struct Job {
    state: Mutex<JobState>,
}

#[derive(Default)]
struct JobState {
    done: bool,
    /// Body bytes still on the socket when the body was dropped.
    unread: u64,
    /// hyper's read, waiting for the body to be done with.
    waker: Option<Waker>,
}

/// A blob upload's request body, read straight from the socket.
pub struct DirectBody {
    job: Arc<Job>,
    /// A second handle (a `dup`) on the connection's socket.
    tcp: TcpStream,
    /// Body bytes that arrived with the head.
    prefix: Bytes,
    /// Body bytes still on the socket.
    remaining: u64,
    len: u64,
    /// Send `100 Continue` before the first read from the socket.
    expect_continue: bool,
}

impl std::fmt::Debug for DirectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectBody")
            .field("len", &self.len)
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl DirectBody {
    /// The body's length (its `Content-Length`).
    pub fn content_length(&self) -> u64 {
        self.len
    }

    /// Reads the next body bytes into `buf`; `Ok(0)` only at the end of the body. A
    /// connection that ends early is an `UnexpectedEof` error.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.len());
            buf[..n].copy_from_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Ok(n);
        }
        if self.remaining == 0 {
            return Ok(0);
        }
        if self.expect_continue {
            // What hyper would have sent when the body is first polled.
            self.expect_continue = false;
            self.tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = self.tcp.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the request body",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl Drop for DirectBody {
    fn drop(&mut self) {
        let mut s = lock(&self.job.state);
        s.done = true;
        s.unread = self.remaining;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

/// A request's direct body, in its extensions, for the handler to take.
#[derive(Clone)]
pub struct DirectRequestBody(Arc<Mutex<Option<DirectBody>>>);

impl DirectRequestBody {
    pub fn take(&self) -> Option<DirectBody> {
        lock(&self.0).take()
    }
}

/// One connection's hand-over point between its reader and its requests.
#[derive(Clone, Default)]
pub struct DirectSlot {
    inner: Arc<Mutex<SlotState>>,
}

#[derive(Default)]
struct SlotState {
    /// Requests dispatched so far on the connection.
    dispatched: u64,
    /// A body waiting for the request with this sequence number.
    waiting: Option<(u64, DirectBody)>,
}

impl DirectSlot {
    fn offer(&self, seq: u64, body: DirectBody) {
        lock(&self.inner).waiting = Some((seq, body));
    }

    /// Called for each request hyper dispatches on the connection, in order: gives the
    /// request its direct body, if it has one, and restores its `Content-Length`.
    pub fn attach<B>(&self, req: &mut http::Request<B>) {
        let mut s = lock(&self.inner);
        let seq = s.dispatched;
        s.dispatched += 1;
        match s.waiting.take() {
            Some((n, body)) if n == seq => {
                req.headers_mut().insert(
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from(body.content_length()),
                );
                req.extensions_mut()
                    .insert(DirectRequestBody(Arc::new(Mutex::new(Some(body)))));
            }
            Some((n, body)) if n > seq => s.waiting = Some((n, body)),
            // A body no request claimed: dropping it drains it.
            Some(_) | None => {}
        }
    }
}

enum Mode {
    /// Reading request heads.
    Heads,
    /// Inside a body hyper reads: this many bytes to go.
    Body(u64),
    /// A direct body is out; hyper waits until it is done with.
    Direct(Arc<Job>),
    /// Discarding this many unread body bytes.
    Drain(u64),
    /// No more following: hyper reads the socket as it is.
    PassThrough,
}

/// The read side of a plain HTTP/1 connection (see the module docs).
pub struct Inbound {
    slot: DirectSlot,
    mode: Mode,
    /// Bytes read from the socket and not yet handed on.
    raw: BytesMut,
    /// Bytes ready for hyper (heads, possibly rewritten).
    out: BytesMut,
    /// Request heads handed to hyper so far.
    heads: u64,
}

impl Inbound {
    pub fn new(slot: DirectSlot) -> Inbound {
        Inbound {
            slot,
            mode: Mode::Heads,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            heads: 0,
        }
    }

    /// hyper's read: fills `buf` with what hyper should see of the connection.
    pub fn poll_read(
        &mut self,
        tcp: &mut TcpStream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.out.is_empty() {
                let n = self.out.len().min(buf.remaining());
                buf.put_slice(&self.out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match &mut self.mode {
                Mode::PassThrough => {
                    if !self.raw.is_empty() {
                        let n = self.raw.len().min(buf.remaining());
                        buf.put_slice(&self.raw.split_to(n));
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(tcp).poll_read(cx, buf);
                }
                Mode::Body(0) => self.mode = Mode::Heads,
                Mode::Body(left) => {
                    if !self.raw.is_empty() {
                        let n = (self.raw.len() as u64).min(*left).min(buf.remaining() as u64) as usize;
                        buf.put_slice(&self.raw.split_to(n));
                        *left -= n as u64;
                        return Poll::Ready(Ok(()));
                    }
                    if buf.remaining() as u64 <= *left {
                        let before = buf.filled().len();
                        ready!(Pin::new(tcp).poll_read(cx, buf))?;
                        *left -= (buf.filled().len() - before) as u64;
                        return Poll::Ready(Ok(()));
                    }
                    // The body ends inside hyper's buffer: read aside, to stop at its end.
                    if ready!(self.fill_raw(tcp, cx))? == 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Mode::Direct(job) => {
                    let mut s = lock(&job.state);
                    if !s.done {
                        s.waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    let unread = s.unread;
                    drop(s);
                    if unread > DRAIN_LIMIT {
                        self.mode = Mode::PassThrough;
                        return Poll::Ready(Err(io::Error::other(
                            "request body left unread is too large to drain; closing",
                        )));
                    }
                    self.mode = Mode::Drain(unread);
                }
                Mode::Drain(0) => self.mode = Mode::Heads,
                Mode::Drain(left) => {
                    let left = *left;
                    if self.raw.is_empty() && ready!(self.fill_raw(tcp, cx))? == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let n = (self.raw.len() as u64).min(left) as usize;
                    self.raw.advance(n);
                    self.mode = Mode::Drain(left - n as u64);
                }
                Mode::Heads => match self.take_head(tcp) {
                    Some(()) => {}
                    None if self.raw.len() >= MAX_HEAD => self.mode = Mode::PassThrough,
                    None => {
                        if ready!(self.fill_raw(tcp, cx))? == 0 {
                            if self.raw.is_empty() {
                                return Poll::Ready(Ok(()));
                            }
                            self.mode = Mode::PassThrough;
                        }
                    }
                },
            }
        }
    }

    /// Reads what the socket has into `raw`; `0` at the end of the stream.
    fn fill_raw(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.raw.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(tcp), cx, &mut self.raw)
    }

    /// Moves a complete request head from `raw` on (to `out`, and a direct body to the
    /// slot) and sets the mode for what follows it. `None` when `raw` holds no complete
    /// head yet; a head that cannot be followed switches to pass-through.
    fn take_head(&mut self, tcp: &TcpStream) -> Option<()> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let end = match req.parse(&self.raw) {
            Ok(httparse::Status::Complete(end)) => end,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => {
                self.mode = Mode::PassThrough;
                return Some(());
            }
        };
        let head = Head::classify(&req, &self.raw[..end]);
        let Some(head) = head else {
            self.mode = Mode::PassThrough;
            return Some(());
        };
        let seq = self.heads;
        self.heads += 1;
        if head.direct
            && let Ok(body_tcp) = dup(tcp)
        {
            // The head without `Content-Length` and `Expect`, then the body aside.
            let mut at = 0;
            for (start, stop) in &head.drop_lines {
                self.out.extend_from_slice(&self.raw[at..*start]);
                at = *stop;
            }
            self.out.extend_from_slice(&self.raw[at..end]);
            self.raw.advance(end);
            let in_raw = (self.raw.len() as u64).min(head.length) as usize;
            let prefix = self.raw.split_to(in_raw).freeze();
            let job = Arc::new(Job::default());
            let body = DirectBody {
                job: job.clone(),
                tcp: body_tcp,
                expect_continue: head.expect_continue && prefix.is_empty(),
                prefix,
                remaining: head.length - in_raw as u64,
                len: head.length,
            };
            self.slot.offer(seq, body);
            self.mode = Mode::Direct(job);
            return Some(());
        }
        self.out.extend_from_slice(&self.raw[..end]);
        self.raw.advance(end);
        self.mode = Mode::Body(head.length);
        Some(())
    }
}

/// What the reader needs to know of a request head.
struct Head {
    /// Body length (0 without a body).
    length: u64,
    direct: bool,
    expect_continue: bool,
    /// Byte ranges of the header lines to leave out for hyper when `direct`.
    drop_lines: Vec<(usize, usize)>,
}

impl Head {
    /// `None` for a head whose body the reader cannot follow.
    fn classify(req: &httparse::Request<'_, '_>, raw: &[u8]) -> Option<Head> {
        let method = req.method?;
        let path = req.path?;
        if method.eq_ignore_ascii_case("CONNECT") {
            return None;
        }
        let mut length = None;
        let mut expect_continue = false;
        let mut drop_lines = Vec::new();
        let base = raw.as_ptr() as usize;
        for h in req.headers.iter() {
            let name = h.name;
            let is_length = name.eq_ignore_ascii_case("content-length");
            let is_expect = name.eq_ignore_ascii_case("expect");
            if name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("upgrade") {
                return None;
            }
            if is_length {
                let v: u64 = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
                if length.replace(v).is_some() {
                    return None;
                }
            }
            if is_expect {
                expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
            }
            if is_length || is_expect {
                let start = h.name.as_ptr() as usize - base;
                let value_end = h.value.as_ptr() as usize - base + h.value.len();
                let stop = value_end + raw[value_end..].iter().position(|b| *b == b'\n')? + 1;
                drop_lines.push((start, stop));
            }
        }
        let length = length.unwrap_or(0);
        let path = path.split('?').next().unwrap_or("");
        let direct = req.version == Some(1)
            && length >= DIRECT_MIN
            && matches!(method, "PUT" | "PATCH" | "POST")
            && path.starts_with("/v2/")
            && path.contains("/blobs/uploads/");
        Some(Head {
            length,
            direct,
            expect_continue,
            drop_lines,
        })
    }
}

/// A second tokio handle on the same socket (for the handler's task to read the body).
fn dup(tcp: &TcpStream) -> io::Result<TcpStream> {
    use std::os::fd::AsFd;
    let fd = tcp.as_fd().try_clone_to_owned()?;
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Option<Head> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let end = match req.parse(raw).unwrap() {
            httparse::Status::Complete(end) => end,
            httparse::Status::Partial => panic!("partial"),
        };
        Head::classify(&req, &raw[..end])
    }

    #[test]
    fn only_large_blob_uploads_with_a_length_go_direct() {
        let h = parse(b"PUT /v2/a/b/blobs/uploads/x?digest=sha256:1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert!(h.direct && h.expect_continue);
        assert_eq!(h.length, 2_000_000);
        assert_eq!(h.drop_lines.len(), 2);
        let h = parse(b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\ncontent-length: 1048576\r\n\r\n").unwrap();
        assert!(h.direct && !h.expect_continue);
        // Too small, not an upload, HTTP/1.0, no length: followed, not direct.
        for raw in [
            &b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\ncontent-length: 1048575\r\n\r\n"[..],
            b"PUT /v2/a/manifests/latest HTTP/1.1\r\ncontent-length: 3000000\r\n\r\n",
            b"PUT /v2/a/blobs/uploads/x HTTP/1.0\r\ncontent-length: 3000000\r\n\r\n",
            b"GET /v2/a/blobs/uploads/x HTTP/1.1\r\n\r\n",
        ] {
            assert!(!parse(raw).unwrap().direct, "{}", String::from_utf8_lossy(raw));
        }
        // Not followed at all: hyper reads these itself.
        for raw in [
            &b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"PUT /v2/a/blobs/uploads/x HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            b"PUT /v2/a/blobs/uploads/x HTTP/1.1\r\ncontent-length: -5\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse(raw).is_none(), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn the_dropped_lines_are_exactly_the_length_and_expect_headers() {
        let raw = b"PUT /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: h\r\nContent-Length:  2000000 \r\nX-A: 1\r\nExpect: 100-continue\r\n\r\n";
        let h = parse(raw).unwrap();
        let mut kept = Vec::new();
        let mut at = 0;
        for (s, e) in &h.drop_lines {
            kept.extend_from_slice(&raw[at..*s]);
            at = *e;
        }
        kept.extend_from_slice(&raw[at..]);
        assert_eq!(
            String::from_utf8(kept).unwrap(),
            "PUT /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
        );
    }
}
