//! Serving the app on a socket: plain HTTP or TLS (rustls), HTTP/1.1 and h2, a header
//! timeout and a send timeout against slow clients (slowloris heads, stalled readers), a TLS ClientHello on a plain port answered with a TLS
//! alert (skopeo and podman try HTTPS first, then fall back), background upkeep (expired
//! uploads, optional periodic GC), and graceful shutdown: stop accepting, let in-flight
//! requests finish.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::api::{AppState, app};
use crate::config::TlsConfig;
use crate::direct::DirectSlot;
use crate::sendfile::{PlainIo, SendfileSlot};

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);
/// A fatal TLS `protocol_version` alert, sent to a ClientHello on the plain port.
const TLS_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46];

/// Errors while serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("read TLS {what} {path}: {message}")]
    Tls {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("accept: {0}")]
    Accept(#[source] std::io::Error),
}

/// Builds the rustls acceptor for cert/key PEM files.
pub fn tls_acceptor(tls: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServeError::Tls {
            what: "certificate",
            path: tls.cert.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ServeError::Tls {
            what: "certificate",
            path: tls.cert.display().to_string(),
            message: "no certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| ServeError::Tls {
        what: "key",
        path: tls.key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Serves `state` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let config = state.config().clone();
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let upkeep = tokio::spawn(upkeep(state.clone()));
    let sendfile_counter = state.metrics().sendfile_counter();
    let router = app(state);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.limits.header_timeout)
        .keep_alive(true)
        // Queue body chunks as given, never copy them into one buffer: `PlainIo`
        // relies on seeing the blob bodies' placeholder slices.
        .writev(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let header_timeout = config.limits.header_timeout;
    let send_timeout = config.limits.send_timeout;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: log, pause, go on.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let sendfile_counter = sendfile_counter.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let accepted = tokio::time::timeout(header_timeout, acceptor.accept(stream)).await;
                    match accepted {
                        Ok(Ok(s)) => {
                            let svc = TowerToHyperService::new(router);
                            let io = FirstByteDeadline::new(s, header_timeout);
                            let io = TokioIo::new(SendDeadline::new(io, send_timeout));
                            let conn = builder.serve_connection_with_upgrades(io, svc);
                            let _ = watcher.watch(conn.into_owned()).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                }
                None => {
                    if is_tls_client_hello(&stream, header_timeout).await {
                        tracing::debug!("{peer} spoke TLS to the plain-HTTP port; sent an alert");
                        let mut stream = stream;
                        let _ = stream.write_all(&TLS_ALERT).await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                    let slot = SendfileSlot::new(sendfile_counter.clone());
                    let direct = DirectSlot::default();
                    let (for_requests, direct_for_requests) = (slot.clone(), direct.clone());
                    let svc = TowerToHyperService::new(router.map_request(
                        move |mut req: http::Request<hyper::body::Incoming>| {
                            req.extensions_mut().insert(for_requests.clone());
                            direct_for_requests.attach(&mut req);
                            req
                        },
                    ));
                    let io = PlainIo::new(stream, slot, direct, header_timeout);
                    let io = TokioIo::new(SendDeadline::new(io, send_timeout));
                    let conn = builder.serve_connection_with_upgrades(io, svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    upkeep.abort();
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still running after {DRAIN:?}; stopping anyway");
    }
    Ok(())
}

/// A stream whose first byte must arrive within a deadline: hyper-util's protocol
/// detection waits for it without one (hyper's header timeout starts after it). Plain
/// connections get the same from `direct::Inbound`.
struct FirstByteDeadline<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstByteDeadline<S> {
    fn new(inner: S, wait: Duration) -> Self {
        FirstByteDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(wait))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = self
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no request in time")));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream whose writes must make progress: a write that stays blocked (the client reads
/// nothing: its receive window and our send buffer are full) for `wait` fails, and the
/// connection with it. Forwards vectored writes unchanged (`PlainIo` recognises its
/// placeholder slices by address).
struct SendDeadline<S> {
    inner: S,
    wait: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> SendDeadline<S> {
    fn new(inner: S, wait: Duration) -> Self {
        SendDeadline {
            inner,
            wait,
            deadline: None,
        }
    }

    /// Clears the deadline on progress; on a blocked write, starts it (if not started)
    /// and fails once it has passed.
    fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let wait = self.wait;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing of the response in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether the first byte the client sends starts a TLS handshake record.
async fn is_tls_client_hello(stream: &TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(tokio::time::timeout(wait, stream.peek(&mut b)).await, Ok(Ok(1)) if b[0] == 0x16)
}

/// Periodic upkeep: expire abandoned uploads; run the configured GC.
async fn upkeep(state: AppState) {
    let config = state.config().clone();
    let upload_every = (config.uploads.expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    let mut upload_tick = tokio::time::interval(upload_every);
    let mut release_tick = tokio::time::interval(Duration::from_secs(15));
    let gc_every = config.gc.interval.unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let mut gc_tick = tokio::time::interval(gc_every);
    gc_tick.tick().await; // the first tick is immediate: skip it
    // `kill -USR1 PID` runs a collection now (`store gc` cannot while the server holds
    // the store, and says so).
    let mut gc_signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    let gc_requested = async |s: &mut Option<tokio::signal::unix::Signal>| match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    };
    loop {
        tokio::select! {
            _ = upload_tick.tick() => {
                let st = state.clone();
                match tokio::task::spawn_blocking(move || st.expire_uploads()).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!("expired {n} abandoned uploads"),
                    Ok(Err(e)) => tracing::warn!("expiring uploads: {e}"),
                    _ => {}
                }
            }
            _ = release_tick.tick() => {
                let st = state.clone();
                let _ = tokio::task::spawn_blocking(move || st.release_idle_uploads()).await;
            }
            _ = gc_tick.tick(), if config.gc.interval.is_some() => collect(&state).await,
            _ = gc_requested(&mut gc_signal) => {
                tracing::info!("SIGUSR1: collecting garbage now");
                collect(&state).await;
            }
        }
    }
}

/// One online GC run with the configured grace period.
async fn collect(state: &AppState) {
    let config = state.config();
    if state.store().is_shared() {
        let opts = strata_store::SharedGcOptions {
            gc: strata_store::GcOptions {
                grace: config.gc.grace,
                partial_expiry: config.uploads.expiry,
                dry_run: false,
            },
            settle: config.gc.settle,
        };
        let holder = format!("{} pid {}", config.listen, std::process::id());
        match state.store().gc_shared(&opts, &holder, &state.metrics().gc).await {
            Ok(Some(r)) => tracing::info!(
                blobs_removed = r.blobs_removed,
                bytes_removed = r.bytes_removed,
                blobs_kept = r.blobs_kept,
                young_blobs_kept = r.young_blobs_kept,
                young_bytes_kept = r.young_bytes_kept,
                "gc done (young_* were kept only for being younger than [gc] grace)"
            ),
            Ok(None) => tracing::info!("gc: another replica is collecting; skipped"),
            Err(e) => tracing::warn!("gc: {e}"),
        }
        return;
    }
    let opts = strata_store::GcOptions {
        grace: config.gc.grace,
        partial_expiry: config.uploads.expiry,
        dry_run: false,
    };
    let st = state.clone();
    match tokio::task::spawn_blocking(move || st.store().gc(&opts)).await {
        Ok(Ok(r)) => tracing::info!(
            blobs_removed = r.blobs_removed,
            bytes_removed = r.bytes_removed,
            blobs_kept = r.blobs_kept,
            young_blobs_kept = r.young_blobs_kept,
            young_bytes_kept = r.young_bytes_kept,
            "gc done (young_* were kept only for being younger than [gc] grace)"
        ),
        Ok(Err(e)) => tracing::warn!("gc: {e}"),
        Err(e) => tracing::warn!("gc task: {e}"),
    }
}
