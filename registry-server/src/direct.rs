//! Blob upload bodies received beside hyper on plain HTTP/1 connections: the bytes go
//! from the socket into the upload's own aligned buffers, which the store writes with
//! `O_DIRECT`, instead of through hyper's read buffer and the page cache (one copy in
//! all, where the ordinary path makes three).
//!
//! How: [`Inbound`], the read side of every plain connection, reads the request heads
//! before hyper does and follows the message boundaries (heads, `Content-Length`
//! bodies). A blob upload — `PUT`, `PATCH` or `POST` under `/blobs/uploads/`, HTTP/1.1,
//! with a `Content-Length` of at least [`DIRECT_MIN`] or a chunked body (docker, podman
//! and skopeo stream layers as chunked `PATCH`es) — is handed to hyper without its
//! `Content-Length`, `Transfer-Encoding` and `Expect` headers, so hyper sees a request
//! without a body. The body becomes a [`DirectBody`] in the connection's [`DirectSlot`];
//! the request picks it up as it is dispatched (matched by its sequence number on the
//! connection), with `Content-Length` restored. A chunked body is decoded in place, in
//! the buffer it was read into. While the body is unread, hyper's reads wait. When the
//! [`DirectBody`] is dropped, bytes it read past its end go back to the connection, and
//! what the handler left unread of a `Content-Length` body is drained (up to
//! [`DRAIN_LIMIT`]); a chunked body left unfinished closes the connection.
//!
//! Anything unusual — another transfer coding, an upgrade, HTTP/2, a head that does not
//! parse or is too large — switches the connection to plain pass-through for good: hyper
//! then reads the socket as it always would.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

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
/// Most bytes read at a time for a chunked body, so that decoding in place (moving the
/// data over the framing) happens while they are still in the CPU's cache. Larger reads
/// mean fewer reads and window updates; 256 KiB (L2-sized here) measured no better.
const CHUNKED_READ: usize = 1 << 20;
/// Longest chunk-size line, and most trailer bytes, of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 << 10;
/// Most unread request body bytes drained after a handler gave up on a body, here and
/// in `uploads` (so that the client reads the error response instead of a reset); past
/// this the connection is closed.
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
    /// Body bytes still on the socket when the body was dropped (`u64::MAX`: unknown).
    unread: u64,
    /// Bytes the body read past its end (the start of the next request), or, for a
    /// chunked body left unfinished, the undecoded bytes it holds.
    leftover: Bytes,
    /// The decoder of a chunked body left unfinished, to drain the rest with.
    unfinished: Option<ChunkDecoder>,
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
    framing: Framing,
    /// Send `100 Continue` before the first read from the socket.
    expect_continue: bool,
    /// Bytes read past the end of a chunked body.
    leftover: Bytes,
    /// Given up on (a client too slow): the connection closes after the response
    /// instead of draining the rest.
    abandoned: bool,
}

enum Framing {
    /// `Content-Length`: this many bytes in all, and `remaining` still on the socket.
    Length {
        len: u64,
        remaining: u64,
    },
    Chunked(ChunkDecoder),
}

impl std::fmt::Debug for DirectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectBody")
            .field("content_length", &self.content_length())
            .finish()
    }
}

impl DirectBody {
    /// The body's `Content-Length`; `None` for a chunked body.
    pub fn content_length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length { len, .. } => Some(len),
            Framing::Chunked(_) => None,
        }
    }

    /// Reads the next body bytes into `buf`; `Ok(0)` only at the end of the body. A
    /// connection that ends early, or chunked framing that does not parse, is an error.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let want = match &self.framing {
                Framing::Length { remaining, .. } if self.prefix.is_empty() && *remaining == 0 => {
                    return Ok(0);
                }
                Framing::Length { remaining, .. } => {
                    (buf.len() as u64).min(*remaining + self.prefix.len() as u64)
                }
                Framing::Chunked(d) if d.is_done() => return Ok(0),
                Framing::Chunked(d) => {
                    d.check()?;
                    buf.len().min(CHUNKED_READ) as u64
                }
            } as usize;
            let n = self.read_raw(&mut buf[..want]).await?;
            let data = match &mut self.framing {
                Framing::Length { .. } => n,
                Framing::Chunked(d) => {
                    let (data, used) = d.decode_in_place(&mut buf[..n])?;
                    if used < n {
                        self.leftover = Bytes::copy_from_slice(&buf[used..n]);
                    }
                    data
                }
            };
            if data > 0 || n == 0 {
                return Ok(data);
            }
            // Only framing so far: read on.
        }
    }

    /// Gives up on the rest of the body: once the response is sent, the connection
    /// closes rather than wait for a slow client's remaining bytes.
    pub fn abandon(&mut self) {
        self.abandoned = true;
    }

    /// Bytes as they arrive: the prefix first, then the socket.
    async fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.len());
            buf[..n].copy_from_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Ok(n);
        }
        if self.expect_continue {
            // What hyper would have sent when the body is first polled.
            self.expect_continue = false;
            self.tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let n = self.tcp.read(buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the request body",
            ));
        }
        if let Framing::Length { remaining, .. } = &mut self.framing {
            *remaining -= n as u64;
        }
        Ok(n)
    }
}

impl Drop for DirectBody {
    fn drop(&mut self) {
        let mut s = lock(&self.job.state);
        s.done = true;
        match &mut self.framing {
            Framing::Length { remaining, .. } => s.unread = *remaining,
            Framing::Chunked(d) => {
                // Undecoded bytes go back in stream order: those read past the end (or
                // not yet decoded), then the rest of what came with the head.
                let mut back = BytesMut::from(&self.leftover[..]);
                back.extend_from_slice(&self.prefix);
                s.leftover = back.freeze();
                if !d.is_done() {
                    s.unfinished = Some(std::mem::take(d));
                }
            }
        }
        if self.abandoned {
            s.unread = u64::MAX;
        }
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
    /// request its direct body, if it has one, and restores its `Content-Length` (a
    /// chunked body has none).
    pub fn attach<B>(&self, req: &mut http::Request<B>) {
        let mut s = lock(&self.inner);
        let seq = s.dispatched;
        s.dispatched += 1;
        match s.waiting.take() {
            Some((n, body)) if n == seq => {
                if let Some(len) = body.content_length() {
                    req.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
                }
                req.extensions_mut()
                    .insert(DirectRequestBody(Arc::new(Mutex::new(Some(body)))));
            }
            Some((n, body)) if n > seq => s.waiting = Some((n, body)),
            // A body no request claimed: dropping it drains it (or closes the connection).
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
    /// Discarding the rest of a chunked body (decoder, data bytes dropped so far).
    DrainChunked(ChunkDecoder, u64),
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
    /// How long a request head may take to arrive once it has begun, and the first one
    /// from the connection's start. hyper's own header timeout cannot see a head this
    /// reader holds back, and before the first request hyper-util's protocol detection
    /// waits without one.
    head_timeout: Duration,
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Inbound {
    pub fn new(slot: DirectSlot, head_timeout: Duration) -> Inbound {
        Inbound {
            slot,
            mode: Mode::Heads,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            heads: 0,
            head_timeout,
            head_deadline: None,
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
                    let leftover = std::mem::take(&mut s.leftover);
                    let unfinished = s.unfinished.take();
                    drop(s);
                    if unread > DRAIN_LIMIT {
                        self.mode = Mode::PassThrough;
                        return Poll::Ready(Err(io::Error::other(
                            "request body left unread is too large to drain; closing",
                        )));
                    }
                    if !leftover.is_empty() {
                        let mut raw = BytesMut::from(&leftover[..]);
                        raw.extend_from_slice(&self.raw);
                        self.raw = raw;
                    }
                    self.mode = match unfinished {
                        Some(d) => Mode::DrainChunked(d, 0),
                        None => Mode::Drain(unread),
                    };
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
                Mode::DrainChunked(..) => {
                    if self.raw.is_empty() && ready!(self.fill_raw(tcp, cx))? == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let Mode::DrainChunked(d, drained) = &mut self.mode else {
                        unreachable!("matched above")
                    };
                    let mut chunk = self.raw.split();
                    let (data, used) = d.decode_in_place(&mut chunk)?;
                    *drained += data as u64;
                    if *drained > DRAIN_LIMIT {
                        self.mode = Mode::PassThrough;
                        return Poll::Ready(Err(io::Error::other(
                            "request body left unread is too large to drain; closing",
                        )));
                    }
                    if d.is_done() {
                        chunk.advance(used);
                        self.raw = chunk;
                        self.mode = Mode::Heads;
                    }
                }
                Mode::Heads => match self.take_head(tcp) {
                    Some(()) => self.head_deadline = None,
                    None if self.raw.len() >= MAX_HEAD => self.mode = Mode::PassThrough,
                    None => match self.fill_raw(tcp, cx)? {
                        Poll::Ready(0) if self.raw.is_empty() => return Poll::Ready(Ok(())),
                        Poll::Ready(0) => self.mode = Mode::PassThrough,
                        Poll::Ready(_) => {}
                        Poll::Pending => {
                            // A head under way, or the connection's first (hyper's own
                            // timer covers idle keep-alive connections).
                            if !self.raw.is_empty() || self.heads == 0 {
                                let timeout = self.head_timeout;
                                let deadline = self
                                    .head_deadline
                                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                                if deadline.as_mut().poll(cx).is_ready() {
                                    return Poll::Ready(Err(io::Error::new(
                                        io::ErrorKind::TimedOut,
                                        "request head not received in time",
                                    )));
                                }
                            }
                            return Poll::Pending;
                        }
                    },
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
            // The head without its body's headers, then the body aside.
            head.write_for_hyper(&self.raw[..end], &mut self.out);
            self.raw.advance(end);
            let (prefix, framing) = if head.chunked {
                // Where a chunked body ends is known only by decoding it: all of it goes
                // to the body, which gives back what follows its end.
                (
                    self.raw.split().freeze(),
                    Framing::Chunked(ChunkDecoder::default()),
                )
            } else {
                let in_raw = (self.raw.len() as u64).min(head.length) as usize;
                let remaining = head.length - in_raw as u64;
                (
                    self.raw.split_to(in_raw).freeze(),
                    Framing::Length {
                        len: head.length,
                        remaining,
                    },
                )
            };
            let job = Arc::new(Job::default());
            let body = DirectBody {
                job: job.clone(),
                tcp: body_tcp,
                expect_continue: head.expect_continue && prefix.is_empty(),
                prefix,
                framing,
                leftover: Bytes::new(),
                abandoned: false,
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
    /// Body length (0 without a body, or when chunked).
    length: u64,
    chunked: bool,
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
        let mut chunked = false;
        let mut expect_continue = false;
        let mut drop_lines = Vec::new();
        let base = raw.as_ptr() as usize;
        for h in req.headers.iter() {
            let name = h.name;
            let is_length = name.eq_ignore_ascii_case("content-length");
            let is_expect = name.eq_ignore_ascii_case("expect");
            let is_coding = name.eq_ignore_ascii_case("transfer-encoding");
            if name.eq_ignore_ascii_case("upgrade") {
                return None;
            }
            if is_coding {
                // Only a body that is just chunked is followed; one coding header.
                if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return None;
                }
                chunked = true;
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
            if is_length || is_expect || is_coding {
                let start = h.name.as_ptr() as usize - base;
                let value_end = h.value.as_ptr() as usize - base + h.value.len();
                let stop = value_end + raw[value_end..].iter().position(|b| *b == b'\n')? + 1;
                drop_lines.push((start, stop));
            }
        }
        if chunked && length.is_some() {
            return None; // hyper refuses these
        }
        let length = length.unwrap_or(0);
        let path = path.split('?').next().unwrap_or("");
        let direct = req.version == Some(1)
            && (chunked || length >= DIRECT_MIN)
            && matches!(method, "PUT" | "PATCH" | "POST")
            && path.starts_with("/v2/")
            && path.contains("/blobs/uploads/");
        if chunked && !direct {
            return None; // a chunked body the reader does not take: hyper's to follow
        }
        Some(Head {
            length,
            chunked,
            direct,
            expect_continue,
            drop_lines,
        })
    }
}

impl Head {
    /// Appends `raw` (this head's bytes) to `out` without the lines in `drop_lines`.
    fn write_for_hyper(&self, raw: &[u8], out: &mut BytesMut) {
        let mut at = 0;
        for (start, stop) in &self.drop_lines {
            out.extend_from_slice(&raw[at..*start]);
            at = *stop;
        }
        out.extend_from_slice(&raw[at..]);
    }
}

/// Decodes `Transfer-Encoding: chunked` in place: data moves to the front of the buffer
/// it was read into, over the framing.
#[derive(Default)]
struct ChunkDecoder {
    state: ChunkState,
    /// The framing line being read (it may span reads).
    line: Vec<u8>,
    trailer_bytes: usize,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk: this many data bytes to go.
    Data(u64),
    /// Reading the line break after a chunk's data.
    DataEnd,
    /// After the last chunk: reading trailer lines up to an empty one.
    Trailers,
    Done,
    /// The framing broke (the data before the break was still handed out).
    Failed(&'static str),
}

fn framing_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("chunked request body: {what}"),
    )
}

type Framed<T> = Result<T, &'static str>;

impl ChunkDecoder {
    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The framing error met, if any.
    fn check(&self) -> io::Result<()> {
        match self.state {
            ChunkState::Failed(what) => Err(framing_error(what)),
            _ => Ok(()),
        }
    }

    /// Decodes `buf` (bytes just read): returns how many data bytes now sit at its front
    /// and how many of its bytes were used (fewer than all only when the body ended).
    /// Broken framing is an error, at once when no data came before it in `buf`, else
    /// on the next call (the data before the break is good).
    fn decode_in_place(&mut self, buf: &mut [u8]) -> io::Result<(usize, usize)> {
        self.check()?;
        let (mut r, mut w) = (0, 0);
        while r < buf.len() {
            match self.state {
                ChunkState::Done | ChunkState::Failed(_) => break,
                ChunkState::Data(left) => {
                    let k = ((buf.len() - r) as u64).min(left) as usize;
                    if r != w {
                        buf.copy_within(r..r + k, w);
                    }
                    r += k;
                    w += k;
                    self.state = match left - k as u64 {
                        0 => ChunkState::DataEnd,
                        more => ChunkState::Data(more),
                    };
                }
                _ => {
                    let b = buf[r];
                    r += 1;
                    if b != b'\n' {
                        if self.line.len() >= MAX_CHUNK_LINE {
                            self.state = ChunkState::Failed("framing line too long");
                        }
                        self.line.push(b);
                        continue;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.state = self.end_line(&line).unwrap_or_else(ChunkState::Failed);
                }
            }
        }
        if w == 0 {
            self.check()?;
        }
        Ok((w, r))
    }

    fn end_line(&mut self, line: &[u8]) -> Framed<ChunkState> {
        Ok(match self.state {
            ChunkState::Size => {
                let size = line.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
                if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
                    return Err("bad chunk size");
                }
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or("bad chunk size")?;
                if size == 0 {
                    ChunkState::Trailers
                } else {
                    ChunkState::Data(size)
                }
            }
            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
            ChunkState::DataEnd => return Err("chunk longer than its size"),
            ChunkState::Trailers if line.is_empty() => ChunkState::Done,
            ChunkState::Trailers => {
                self.trailer_bytes += line.len();
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err("trailers too large");
                }
                ChunkState::Trailers
            }
            state @ (ChunkState::Data(_) | ChunkState::Done | ChunkState::Failed(_)) => state,
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

/// Fuzz target bodies for the head reader and the chunked decoder (see `crate::fuzzing`).
pub(crate) mod fuzz {
    use super::*;

    /// A head as [`Inbound`] follows it: classified, and for a direct body rewritten for
    /// hyper. The rewritten head parses to the same request without the body's headers.
    pub fn http_head(data: &[u8]) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(end)) = req.parse(data) else {
            return;
        };
        let Some(head) = Head::classify(&req, &data[..end]) else {
            return;
        };
        let mut at = 0;
        for (start, stop) in &head.drop_lines {
            assert!(
                at <= *start && start < stop && *stop <= end,
                "{:?}",
                head.drop_lines
            );
            at = *stop;
        }
        assert!(
            !head.chunked || head.direct,
            "a chunked body not taken is hyper's"
        );
        if !head.direct {
            return;
        }
        let mut out = BytesMut::new();
        head.write_for_hyper(&data[..end], &mut out);
        let mut headers2 = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut again = httparse::Request::new(&mut headers2);
        let parsed = again.parse(&out);
        assert!(
            matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
            "rewritten head does not parse: {parsed:?}"
        );
        assert_eq!(
            (again.method, again.path, again.version),
            (req.method, req.path, req.version)
        );
        let kept: Vec<_> = req
            .headers
            .iter()
            .filter(|h| {
                !["content-length", "transfer-encoding", "expect"]
                    .iter()
                    .any(|n| h.name.eq_ignore_ascii_case(n))
            })
            .map(|h| (h.name, h.value))
            .collect();
        let got: Vec<_> = again.headers.iter().map(|h| (h.name, h.value)).collect();
        assert_eq!(got, kept, "the rewritten head lost or kept the wrong lines");
    }

    /// What decoding `wire` in reads of `read` bytes gave: the data, the outcome and
    /// (when done) the bytes after the body's end.
    pub(super) fn decode_all(wire: &[u8], read: usize) -> (Vec<u8>, &'static str, Vec<u8>) {
        let mut d = ChunkDecoder::default();
        let (mut data, mut rest) = (Vec::new(), Vec::new());
        for piece in wire.chunks(read) {
            if d.is_done() {
                rest.extend_from_slice(piece);
                continue;
            }
            let mut buf = piece.to_vec();
            match d.decode_in_place(&mut buf) {
                Ok((n, used)) => {
                    assert!(n <= used && used <= buf.len());
                    let failed = d.check().is_err();
                    assert!(
                        used == buf.len() || d.is_done() || failed,
                        "bytes left before the end"
                    );
                    data.extend_from_slice(&buf[..n]);
                    if d.is_done() {
                        rest.extend_from_slice(&buf[used..]);
                    }
                }
                Err(_) => return (data, "failed", rest),
            }
        }
        let outcome = match d.decode_in_place(&mut []) {
            Err(_) => "failed",
            Ok(_) if d.is_done() => "done",
            Ok(_) => "unfinished",
        };
        (data, outcome, rest)
    }

    /// The chunked decoder: the first byte picks a read size; the rest decoded in reads
    /// of that size gives what decoding it in one read gives.
    pub fn chunked(data: &[u8]) {
        let Some((first, wire)) = data.split_first() else {
            return;
        };
        let read = usize::from(*first) + 1;
        let whole = decode_all(wire, wire.len().max(1));
        let pieces = decode_all(wire, read);
        assert_eq!(whole, pieces, "reads of {read}");
    }
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
            &b"PUT /v2/a/blobs/uploads/x HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n"[..],
            b"PUT /v2/a/blobs/uploads/x HTTP/1.1\r\ncontent-length: -5\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse(raw).is_none(), "{}", String::from_utf8_lossy(raw));
        }
    }

    /// `data` chunked in pieces of `sizes` (cycled), with a chunk extension and a trailer.
    fn chunked(data: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        for &n in sizes.iter().cycle() {
            if at == data.len() {
                break;
            }
            let n = n.min(data.len() - at);
            out.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
            out.extend_from_slice(&data[at..at + n]);
            out.extend_from_slice(b"\r\n");
            at += n;
        }
        out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
        out
    }

    /// Decodes `wire` delivered in reads of `read` bytes; returns the data and what was
    /// left after the end.
    fn decode(wire: &[u8], read: usize) -> (Vec<u8>, Vec<u8>) {
        let (data, outcome, rest) = fuzz::decode_all(wire, read);
        assert_eq!(outcome, "done", "body not finished");
        (data, rest)
    }

    #[test]
    fn chunked_bodies_decode_in_place_however_the_reads_fall() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for sizes in [&[32768usize][..], &[1, 2, 3, 4093], &[70_000]] {
            let mut wire = chunked(&data, sizes);
            wire.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            for read in [1, 2, 7, 4096, 65536, wire.len()] {
                let (got, rest) = decode(&wire, read);
                assert!(got == data, "sizes {sizes:?}, reads of {read}");
                assert_eq!(
                    rest, b"GET /next HTTP/1.1\r\n\r\n",
                    "sizes {sizes:?}, reads of {read}"
                );
            }
        }
        let (got, rest) = decode(b"0\r\n\r\n", 3);
        assert!(got.is_empty() && rest.is_empty());
    }

    #[test]
    fn hostile_chunked_framing_is_an_error() {
        let long_size = format!("{}\r\n", "1".repeat(16));
        let long_line = format!("5;{}\r\n", "x".repeat(MAX_CHUNK_LINE));
        for wire in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"\r\nabc\r\n0\r\n\r\n",
            b"+3\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabcdef\r\n0\r\n\r\n",
            long_size.as_bytes(),
            long_line.as_bytes(),
        ] {
            // At once, or on the next call when good data came before the break.
            let mut d = ChunkDecoder::default();
            let err = match d.decode_in_place(&mut wire.to_vec()) {
                Err(e) => e,
                Ok((data, _)) => {
                    assert!(data > 0);
                    d.decode_in_place(&mut []).unwrap_err()
                }
            };
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidData,
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut d = ChunkDecoder::default();
        let trailers = format!("0\r\n{}", "X-T: 0123456789abcdef\r\n".repeat(4000));
        assert!(d.decode_in_place(&mut trailers.into_bytes()).is_err());
    }

    #[test]
    fn chunked_uploads_go_direct_other_codings_do_not() {
        let h = parse(b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(h.direct && h.chunked);
        assert_eq!(h.drop_lines.len(), 1);
        for raw in [
            &b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"[..],
            b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            b"PUT /v2/a/manifests/x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
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
