//! Zero-copy blob GETs on plain HTTP/1 connections: the file goes from the page cache to
//! the socket with `sendfile(2)`, as nginx does, while hyper still frames the response.
//!
//! How: every plain connection's socket is wrapped in [`PlainIo`], and each request
//! on it carries that connection's [`SendfileSlot`]. A blob GET answers with a
//! [`SendfileBody`], which first puts the open file into the slot and then yields, as
//! its data, slices of one static placeholder buffer ([`PLACEHOLDER`]) adding up to the
//! response length. hyper queues body data as it gets it (the server forces its
//! vectored "queue" write strategy, so nothing is copied) and hands it to
//! `PlainIo::poll_write_vectored`, which recognises placeholder slices by address and
//! sends that many bytes from the file instead. The placeholder's own bytes are never
//! written: without a file in the slot the write fails (the connection closes) rather
//! than send them.
//!
//! Not used for TLS (the bytes must pass through rustls) or HTTP/2 (h2 frames and copies
//! the data), which take the ordinary streaming body.

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::direct::{DirectSlot, Inbound};

/// Size of the placeholder: the largest body frame a blob GET yields.
const PLACEHOLDER_LEN: usize = 1 << 20;

/// The placeholder body data: recognised by address, never sent.
static PLACEHOLDER: [u8; PLACEHOLDER_LEN] = [0; PLACEHOLDER_LEN];

fn is_placeholder(bytes: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let p = bytes.as_ptr() as usize;
    !bytes.is_empty() && p >= start && p + bytes.len() <= start + PLACEHOLDER_LEN
}

/// What the next placeholder bytes on a connection stand for.
struct Job {
    file: Arc<File>,
    offset: u64,
    remaining: u64,
}

/// One connection's hand-over point between its response bodies and its socket.
#[derive(Clone, Default)]
pub struct SendfileSlot {
    job: Arc<Mutex<Option<Job>>>,
    sent: Arc<AtomicU64>,
}

impl SendfileSlot {
    /// A slot that adds the bytes it sends to `sent`.
    pub fn new(sent: Arc<AtomicU64>) -> SendfileSlot {
        SendfileSlot {
            job: Arc::default(),
            sent,
        }
    }

    fn set(&self, job: Job) {
        *self.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
    }
}

/// A response body of `count` bytes of `file` from `offset`, sent by the connection's
/// [`PlainIo`].
pub struct SendfileBody {
    slot: SendfileSlot,
    job: Option<Job>,
    remaining: u64,
}

impl SendfileBody {
    pub fn new(slot: SendfileSlot, file: Arc<File>, offset: u64, count: u64) -> SendfileBody {
        SendfileBody {
            slot,
            job: Some(Job {
                file,
                offset,
                remaining: count,
            }),
            remaining: count,
        }
    }
}

impl Body for SendfileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(job) = self.job.take() {
            // Before any placeholder byte can reach the socket.
            self.slot.set(job);
        }
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(PLACEHOLDER_LEN as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&PLACEHOLDER[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A plain TCP connection as hyper sees it: writes send placeholder slices from the
/// slot's file; reads go through [`Inbound`], which takes large blob upload bodies aside
/// (see `direct`).
pub struct PlainIo {
    tcp: TcpStream,
    slot: SendfileSlot,
    inbound: Inbound,
}

impl PlainIo {
    /// A connection whose request heads must arrive within `head_timeout` once begun.
    pub fn new(tcp: TcpStream, slot: SendfileSlot, direct: DirectSlot, head_timeout: Duration) -> PlainIo {
        PlainIo {
            tcp,
            slot,
            inbound: Inbound::new(direct, head_timeout),
        }
    }

    /// Sends up to `max` bytes of the current job's file.
    fn poll_sendfile(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut guard = self.slot.job.lock().unwrap_or_else(|p| p.into_inner());
            let Some(job) = guard.as_mut() else {
                return Poll::Ready(Err(io::Error::other("blob body without a file to send")));
            };
            let want = (max as u64).min(job.remaining) as usize;
            if want == 0 {
                return Poll::Ready(Err(io::Error::other("blob body longer than its file range")));
            }
            let file = job.file.clone();
            let mut offset = job.offset;
            let result = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &*file, Some(&mut offset), want).map_err(io::Error::from)
            });
            match result {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file ended early",
                    )));
                }
                Ok(n) => {
                    job.offset += n as u64;
                    job.remaining -= n as u64;
                    if job.remaining == 0 {
                        *guard = None;
                    }
                    self.slot.sent.fetch_add(n as u64, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for PlainIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.inbound.poll_read(&mut this.tcp, cx, buf)
    }
}

impl AsyncWrite for PlainIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if is_placeholder(buf) {
            self.poll_sendfile(cx, buf.len())
        } else {
            Pin::new(&mut self.tcp).poll_write(cx, buf)
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Ordinary bytes up to the first placeholder go out as one writev; a leading
        // placeholder goes out by sendfile. A short count is fine: hyper writes the rest.
        match bufs.iter().position(|b| is_placeholder(b)) {
            Some(0) => {
                let len = bufs[0].len();
                self.poll_sendfile(cx, len)
            }
            Some(k) => Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..k]),
            None => Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test]
    async fn placeholder_bytes_are_sent_from_the_file_and_others_as_they_are() {
        let (mut client, server) = pair().await;
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&content).unwrap();
        let slot = SendfileSlot::default();
        let mut io = PlainIo::new(
            server,
            slot.clone(),
            DirectSlot::default(),
            Duration::from_secs(5),
        );
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // A range of the file, framed by ordinary bytes, as hyper would queue it.
        let (start, count) = (1000u64, 2_500_000u64);
        let mut body = SendfileBody::new(slot.clone(), Arc::new(file), start, count);
        io.write_all(b"HEAD:").await.unwrap();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.iter().all(|b| *b == 0));
            let slices = [io::IoSlice::new(b"|"), io::IoSlice::new(&data)];
            let mut done = 0;
            while done < 1 + data.len() {
                let n = if done == 0 {
                    io.write_vectored(&slices).await.unwrap()
                } else {
                    io.write(&data[done - 1..]).await.unwrap()
                };
                done += n;
            }
        }
        io.write_all(b":END").await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let got = reader.await.unwrap();
        let want = &content[start as usize..(start + count) as usize];
        assert_eq!(&got[..5], b"HEAD:");
        assert_eq!(&got[got.len() - 4..], b":END");
        let body = &got[5..got.len() - 4];
        // Strip the "|" separators: one per frame, before each frame's bytes.
        let mut stripped = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            assert_eq!(rest[0], b'|');
            let n = (rest.len() - 1).min(PLACEHOLDER_LEN);
            stripped.extend_from_slice(&rest[1..1 + n]);
            rest = &rest[1 + n..];
        }
        assert_eq!(stripped.len(), want.len());
        assert!(stripped == want, "sent bytes differ from the file range");
        assert_eq!(slot.sent.load(Ordering::Relaxed), count);
    }

    #[tokio::test]
    async fn placeholder_without_a_file_is_an_error_not_zeros() {
        let (mut client, server) = pair().await;
        let mut io = PlainIo::new(
            server,
            SendfileSlot::default(),
            DirectSlot::default(),
            Duration::from_secs(5),
        );
        let err = io.write(&PLACEHOLDER[..10]).await.unwrap_err();
        assert!(err.to_string().contains("without a file"), "{err}");
        drop(io);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
    }
}
