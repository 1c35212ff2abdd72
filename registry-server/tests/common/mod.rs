//! Shared helpers for the registry tests: a registry over a temp store driven through
//! `app()` without a socket, or served on a real 127.0.0.1 socket.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use strata_fixtures::scaleout::{Postgres, Seaweed};
use strata_registry::{AppState, Config, app};
use strata_store::Store;
use tower::ServiceExt;

/// A registry over a fresh store. On shared backends ([`shared_mode`]) it is two replicas
/// over one PostgreSQL database and one bucket, and requests alternate between them.
pub struct Reg {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    replicas: Vec<AppState>,
    turn: std::sync::atomic::AtomicUsize,
}

thread_local! {
    static SHARED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// PostgreSQL and SeaweedFS for every shared-backend test of this process (stopped by
/// their watchdogs when it exits); each registry gets a database and a bucket of its own.
static BACKENDS: std::sync::OnceLock<Option<(Postgres, Seaweed)>> = std::sync::OnceLock::new();
static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Makes the registries this thread creates next run on shared backends (S3 on SeaweedFS,
/// PostgreSQL), as two replicas. False (after a SKIP line) when the peers are missing.
pub fn shared_mode() -> bool {
    let ok = BACKENDS
        .get_or_init(|| Some((Postgres::start()?, Seaweed::start()?)))
        .is_some();
    SHARED.with(|s| s.set(ok));
    ok
}

/// `cfg` pointed at a new database and bucket of the shared backends.
fn on_shared_backends(cfg: &mut Config) {
    let (pg, weed) = BACKENDS
        .get()
        .and_then(Option::as_ref)
        .expect("shared_mode() first");
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let name = format!("t{}x{n}", std::process::id());
    pg.create_database(&name);
    weed.create_bucket(&name);
    cfg.storage = strata_registry::StorageSection {
        backend: Some("s3".into()),
        endpoint: Some(weed.endpoint()),
        region: Some("us-east-1".into()),
        bucket: Some(name.clone()),
        prefix: Some("p".into()),
        path_style: true,
        access_key: Some(weed.access_key().into()),
        secret_key: Some(weed.secret_key().into()),
        redirect: false,
    };
    cfg.metadata = strata_registry::MetadataSection {
        backend: Some("postgres".into()),
        url: Some(pg.url(&name)),
    };
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    /// The spec error code of an error response.
    pub fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub fn config(dir: &std::path::Path) -> Config {
    Config {
        root: dir.to_path_buf(),
        registry_name: Some("reg.test".into()),
        ..Config::default()
    }
}

impl Reg {
    /// A registry serving TLS with a fresh self-signed certificate for localhost and
    /// 127.0.0.1; returns the certificate's PEM for clients to trust.
    pub fn with_tls() -> (Reg, String) {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let (cp, kp) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cp, cert.cert.pem()).unwrap();
        std::fs::write(&kp, cert.signing_key.serialize_pem()).unwrap();
        let mut cfg = config(dir.path());
        cfg.tls = Some(strata_registry::TlsConfig { cert: cp, key: kp });
        (Reg::with_config(dir, cfg), cert.cert.pem())
    }

    pub fn new() -> Reg {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        Reg::with_config(dir, cfg)
    }

    pub fn with_config(dir: tempfile::TempDir, mut cfg: Config) -> Reg {
        if !SHARED.with(|s| s.get()) {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let state = AppState::new(store, cfg).unwrap();
            return Reg {
                dir,
                state: state.clone(),
                replicas: vec![state],
                turn: Default::default(),
            };
        }
        on_shared_backends(&mut cfg);
        let replicas: Vec<AppState> = (0..2)
            .map(|i| {
                let mut c = cfg.clone();
                c.root = dir.path().join(format!("replica-{i}"));
                let store = Arc::new(Store::open_with(&c.store_config().unwrap()).unwrap());
                AppState::new(store, c).unwrap()
            })
            .collect();
        Reg {
            dir,
            state: replicas[0].clone(),
            replicas,
            turn: Default::default(),
        }
    }

    /// Closes the registry's stores (every replica's) and hands back its directory.
    pub fn into_dir(self) -> tempfile::TempDir {
        let Reg {
            dir, state, replicas, ..
        } = self;
        drop(state);
        drop(replicas);
        dir
    }

    /// Whether this registry runs on shared backends.
    pub fn is_shared(&self) -> bool {
        self.replicas.len() > 1
    }

    pub async fn req(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = self.replicas[turn % self.replicas.len()].clone();
        let resp = app(state).oneshot(b.body(body.into()).unwrap()).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.req(Method::GET, uri, &[], Body::empty()).await
    }

    /// Monolithic POST + PUT upload.
    pub async fn push_blob(&self, name: &str, bytes: &[u8]) -> String {
        let digest = strata_store::Digest::of(bytes).to_string();
        let r = self
            .req(
                Method::POST,
                &format!("/v2/{name}/blobs/uploads/"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
        let loc = r.header("location").unwrap().to_string();
        let r = self
            .req(
                Method::PUT,
                &format!("{loc}?digest={digest}"),
                &[],
                bytes.to_vec(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{r:?} {}",
            String::from_utf8_lossy(&r.body)
        );
        digest
    }

    pub async fn put_manifest(&self, name: &str, reference: &str, media_type: &str, bytes: &[u8]) -> Resp {
        self.req(
            Method::PUT,
            &format!("/v2/{name}/manifests/{reference}"),
            &[("content-type", media_type)],
            bytes.to_vec(),
        )
        .await
    }

    /// Pushes an image's blobs and manifest under `tag`.
    pub async fn push_image(&self, name: &str, tag: &str, image: &strata_fixtures::Image) {
        for b in std::iter::once(&image.config).chain(&image.layers) {
            self.push_blob(name, &b.bytes).await;
        }
        let r = self
            .put_manifest(name, tag, &image.manifest.media_type, &image.manifest.bytes)
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{r:?} {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// A registry served on a real socket on 127.0.0.1 (in this process).
pub struct Served {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    pub async fn start(state: AppState) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let task = tokio::spawn(async move {
            strata_registry::serve(listener, st, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Served {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// A `registry-server` process on a free port over `root`.
pub struct Proc {
    pub child: std::process::Child,
    pub port: u16,
}

impl Proc {
    pub fn start(root: &std::path::Path, extra: &[&str]) -> Proc {
        let port = strata_fixtures::peers::free_port();
        let child = std::process::Command::new(strata_fixtures::peers::bin("registry-server"))
            .arg("--root")
            .arg(root)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("spawn registry-server");
        let p = Proc { child, port };
        p.wait_ready();
        p
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("registry-server did not start on port {}", self.port);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then wait.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = rustix_pid(self.child.id());
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

fn rustix_pid(id: u32) -> u32 {
    id
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
