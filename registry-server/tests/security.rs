//! Auth (htpasswd basic, the token flow with per-repository rights), TLS, and a TLS
//! ClientHello on the plain port.

use std::io::{Read, Write};

use crate::common::{Reg, Served};
use axum::body::Body;
use base64::Engine;
use http::{Method, StatusCode};
use strata_fixtures::peers;
use strata_registry::{AccessRule, AuthConfig};

pub(crate) fn htpasswd(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("htpasswd");
    let alice = bcrypt::hash("wonderland", 4).unwrap();
    let bob = bcrypt::hash("builder", 4).unwrap();
    std::fs::write(&p, format!("alice:{alice}\nbob:{bob}\n")).unwrap();
    p
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

fn auth_reg(token: bool) -> Reg {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.auth = Some(AuthConfig {
        htpasswd: Some(htpasswd(dir.path())),
        token,
        anonymous_pull: false,
        groups: [("devs".to_string(), vec!["alice".to_string()])].into(),
        access: vec![
            AccessRule {
                repositories: "*".into(),
                users: vec!["*".into()],
                groups: vec![],
                actions: vec!["pull".into()],
                ..AccessRule::default()
            },
            AccessRule {
                repositories: "team/*".into(),
                users: vec![],
                groups: vec!["devs".into()],
                actions: vec!["*".into()],
                ..AccessRule::default()
            },
        ],
        ..AuthConfig::default()
    });
    Reg::with_config(dir, cfg)
}

#[tokio::test]
async fn basic_auth_rights() {
    let reg = auth_reg(false);
    let r = reg.get("/v2/").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "UNAUTHORIZED");
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic realm="));
    let alice = basic("alice", "wonderland");
    let r = reg
        .req(Method::GET, "/v2/", &[("authorization", &alice)], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = reg
        .req(
            Method::GET,
            "/v2/",
            &[("authorization", &basic("alice", "nope"))],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = reg
        .req(
            Method::GET,
            "/v2/",
            &[("authorization", &basic("mallory", "x"))],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // alice (group devs) may push to team/*; bob may only pull.
    let r = reg
        .req(
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            &[("authorization", &alice)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let bob = basic("bob", "builder");
    let r = reg
        .req(
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            &[("authorization", &bob)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "DENIED");
    let r = reg
        .req(
            Method::GET,
            "/v2/team/app/tags/list",
            &[("authorization", &bob)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "pull allowed, repo empty");
    let r = reg
        .req(
            Method::POST,
            "/v2/other/blobs/uploads/",
            &[("authorization", &alice)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

async fn fetch_token(reg: &Reg, creds: Option<&str>, scope: &str) -> (StatusCode, Option<String>) {
    let headers: Vec<(&str, &str)> = creds.map(|c| vec![("authorization", c)]).unwrap_or_default();
    let r = reg
        .req(
            Method::GET,
            &format!("/token?service=strata-registry&scope={scope}"),
            &headers,
            Body::empty(),
        )
        .await;
    let token = (r.status == StatusCode::OK).then(|| r.json()["token"].as_str().unwrap().to_string());
    (r.status, token)
}

#[tokio::test]
async fn token_flow_scopes() {
    let reg = auth_reg(true);
    let r = reg
        .req(
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            &[("host", "reg.test:5000")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let challenge = r.header("www-authenticate").unwrap();
    assert_eq!(
        challenge,
        "Bearer realm=\"http://reg.test:5000/token\",service=\"strata-registry\",scope=\"repository:team/app:push\""
    );
    let alice = basic("alice", "wonderland");
    let (status, token) = fetch_token(&reg, Some(&alice), "repository:team/app:pull,push").await;
    assert_eq!(status, StatusCode::OK);
    let bearer = format!("Bearer {}", token.unwrap());
    let r = reg
        .req(
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            &[("authorization", &bearer)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // The token is scoped: not valid for another repository.
    let r = reg
        .req(
            Method::POST,
            "/v2/team/other/blobs/uploads/",
            &[("authorization", &bearer)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
    // bob asks for push and gets only pull.
    let (_, token) = fetch_token(
        &reg,
        Some(&basic("bob", "builder")),
        "repository:team/app:pull,push",
    )
    .await;
    let bearer = format!("Bearer {}", token.unwrap());
    let r = reg
        .req(
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            &[("authorization", &bearer)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "UNAUTHORIZED");
    let r = reg
        .req(
            Method::GET,
            "/v2/team/app/tags/list",
            &[("authorization", &bearer)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Wrong password: 401 at the token service. A forged token: 401.
    let (status, _) = fetch_token(&reg, Some(&basic("alice", "wrong")), "repository:team/app:pull").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let r = reg
        .req(
            Method::GET,
            "/v2/",
            &[("authorization", "Bearer e30.AAAA")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Anonymous token: no rights without anonymous_pull.
    let (_, token) = fetch_token(&reg, None, "repository:team/app:pull").await;
    let r = reg
        .req(
            Method::GET,
            "/v2/team/app/tags/list",
            &[("authorization", &format!("Bearer {}", token.unwrap()))],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn anonymous_pull() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.auth = Some(AuthConfig {
        htpasswd: Some(htpasswd(dir.path())),
        anonymous_pull: true,
        ..AuthConfig::default()
    });
    let reg = Reg::with_config(dir, cfg);
    let r = reg.get("/v2/x/tags/list").await;
    assert_eq!(r.code(), "NAME_UNKNOWN");
    let r = reg
        .req(Method::POST, "/v2/x/blobs/uploads/", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[test]
fn docker_login_and_push_with_token_auth() {
    let Some(d) = peers::Dockerd::shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pw = htpasswd(tmp.path());
    let cfg = tmp.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nhtpasswd = \"{}\"\ntoken = true\n[auth.groups]\ndevs = [\"alice\"]\n\
             [[auth.access]]\nrepositories = \"*\"\nusers = [\"*\"]\nactions = [\"pull\"]\n\
             [[auth.access]]\nrepositories = \"team/*\"\ngroups = [\"devs\"]\nactions = [\"pull\", \"push\"]\n",
            pw.display()
        ),
    )
    .unwrap();
    let reg = crate::common::Proc::start(&tmp.path().join("store"), &["--config", cfg.to_str().unwrap()]);
    let img = strata_fixtures::small_image(31, 1, false);
    let name = format!("{}/team/app:1", reg.addr());
    let archive = tmp.path().join("img.tar");
    strata_fixtures::write_docker_save(&archive, &[(&img, &[name.as_str()])]);
    d.docker_ok(["load", "-i", archive.to_str().unwrap()]);
    let out = d.docker(["login", "-u", "alice", "-p", "nope", &reg.addr()]);
    assert!(!out.status.success(), "wrong password accepted");
    assert!(peers::format_output(&out).contains("401") || peers::format_output(&out).contains("nauthorized"));
    d.docker_ok(["login", "-u", "bob", "-p", "builder", &reg.addr()]);
    let out = d.docker(["push", &name]);
    assert!(!out.status.success(), "bob may not push");
    d.docker_ok(["login", "-u", "alice", "-p", "wonderland", &reg.addr()]);
    d.docker_ok(["push", &name]);
    d.docker_ok(["rmi", &name]);
    d.docker_ok(["pull", &name]);
    d.docker_ok(["rmi", &name]);
    d.docker_ok(["logout", &reg.addr()]);
    assert!(reg.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serving() {
    let (reg, cert_pem) = Reg::with_tls();
    let served = Served::start(reg.state.clone()).await;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = http
        .get(format!("https://localhost:{}/v2/", served.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
    // Plain HTTP to the TLS port fails; the server keeps serving.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/v2/", served.addr.port()))
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
    );
    let r = http
        .get(format!("https://localhost:{}/v2/", served.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    served.stop().await;
}

/// A TLS client that completes the handshake and then sends nothing is dropped after
/// the header timeout, like a plain one (`direct_upload.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_closed() {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cp, kp) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cp, cert.cert.pem()).unwrap();
    std::fs::write(&kp, cert.signing_key.serialize_pem()).unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.tls = Some(strata_registry::TlsConfig { cert: cp, key: kp });
    cfg.limits.header_timeout = std::time::Duration::from_millis(500);
    let reg = Reg::with_config(dir, cfg);
    let served = Served::start(reg.state.clone()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.cert.pem().as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("handshake");
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "an idle TLS connection was kept: {r:?}"
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_on_plain_port_gets_an_alert() {
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    let addr = served.addr;
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        // The start of a TLS 1.2 ClientHello record.
        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03])
            .unwrap();
        let mut buf = Vec::new();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let _ = s.read_to_end(&mut buf);
        buf
    })
    .await
    .unwrap();
    assert_eq!(reply.first(), Some(&0x15), "a TLS alert record: {reply:?}");
    let r = reqwest::get(format!("http://{addr}/v2/")).await.unwrap();
    assert_eq!(r.status(), 200);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let reg = Reg::new();
    let served = Served::start(reg.state.clone()).await;
    let base = format!("http://{}", served.addr);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v2/g/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    // A slow upload in flight when shutdown begins.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream(rx));
    let upload = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}{loc}");
        async move { http.patch(url).body(body).send().await.unwrap().status() }
    });
    tx.send(Ok(vec![1u8; 1000])).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stopping = tokio::spawn(served.stop());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    tx.send(Ok(vec![2u8; 1000])).await.unwrap();
    drop(tx);
    assert_eq!(upload.await.unwrap(), 202);
    stopping.await.unwrap();
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
