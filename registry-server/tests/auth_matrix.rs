//! The access-control matrix: for a config with users, groups, repository globs, an
//! anonymous pull rule, per-action rights and the catalog right, every (identity ×
//! repository × pull/push/delete, and × catalog) combination gets exactly the configured
//! answer, through basic auth and through bearer tokens from `/token`; tampered, expired,
//! wrong-audience, wrong-issuer and other-repository tokens are refused, and repeated
//! `scope=` parameters grant no more than the rules do. A few of the same answers through
//! skopeo on a real socket.

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use strata_fixtures::peers;
use strata_registry::{AccessRule, AuthConfig};

use crate::common::{Reg, Resp, Served};

const SECRET: &str = "matrix-secret";
const REPOS: [&str; 5] = ["team/app", "team/infra", "public/base", "ops/tool", "private/x"];
const USERS: [(&str, &str); 5] = [
    ("admin", "root-pw"),
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
    ("dave", "dave-pw"),
];

/// Who a request is from.
#[derive(Debug, Clone, Copy)]
enum Who {
    Anonymous,
    /// A configured user with the right password.
    User(&'static str, &'static str),
    /// A configured user with a wrong password.
    WrongPassword(&'static str),
    /// A user the htpasswd file does not have.
    Unknown,
}

impl Who {
    fn all() -> Vec<Who> {
        let mut v: Vec<Who> = USERS.iter().map(|&(u, p)| Who::User(u, p)).collect();
        v.extend([Who::Anonymous, Who::WrongPassword("alice"), Who::Unknown]);
        v
    }
    fn basic(self) -> Option<String> {
        let (u, p) = match self {
            Who::Anonymous => return None,
            Who::User(u, p) => (u, p),
            Who::WrongPassword(u) => (u, "not-the-password"),
            Who::Unknown => ("mallory", "whatever"),
        };
        Some(format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Pull,
    Push,
    Delete,
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Pull => "pull",
            Act::Push => "push",
            Act::Delete => "delete",
        }
    }
}

/// The answer the configuration below must give, written out by hand (not computed by
/// the code under test).
fn allowed(who: Who, repo: &str, act: Act) -> bool {
    use Act::*;
    let Who::User(user, _) = who else {
        // Anonymous clients pull public/*; bad credentials get nothing.
        return matches!(who, Who::Anonymous) && repo == "public/base" && act == Pull;
    };
    let rights: &[Act] = match (user, repo) {
        ("admin", _) => &[Pull, Push, Delete],
        (_, "public/base") => &[Pull],
        ("alice", "team/app" | "team/infra") => &[Pull, Push, Delete],
        ("bob", "team/app" | "team/infra") => &[Pull, Push],
        ("carol", "team/infra" | "ops/tool") => &[Pull, Push, Delete],
        (_, "ops/tool") => &[Pull],
        _ => &[],
    };
    rights.contains(&act)
}

fn catalog_allowed(who: Who) -> bool {
    matches!(who, Who::User("admin" | "carol", _))
}

fn config_auth(dir: &std::path::Path, token: bool, service: &str, issuer: &str) -> AuthConfig {
    let p = dir.join("htpasswd");
    let lines: String = USERS
        .iter()
        .map(|(u, pw)| format!("{u}:{}\n", bcrypt::hash(pw, 4).unwrap()))
        .collect();
    std::fs::write(&p, lines).unwrap();
    let rule = |repos: &[&str], users: &[&str], groups: &[&str], actions: &[&str]| AccessRule {
        repositories: strata_registry::Globs(repos.iter().map(|s| s.to_string()).collect()),
        users: users.iter().map(|s| s.to_string()).collect(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        anonymous: false,
    };
    AuthConfig {
        htpasswd: Some(p),
        token,
        service: service.into(),
        issuer: issuer.into(),
        secret: Some(SECRET.into()),
        groups: [
            ("devs".to_string(), vec!["alice".to_string(), "bob".to_string()]),
            ("ops".to_string(), vec!["carol".to_string()]),
        ]
        .into(),
        access: vec![
            rule(&["*"], &["admin"], &[], &["*", "catalog"]),
            rule(&["team/*"], &[], &["devs"], &["pull", "push"]),
            rule(&["team/*"], &["alice"], &[], &["delete"]),
            AccessRule {
                anonymous: true,
                ..rule(&["public/*"], &[], &[], &["pull"])
            },
            rule(&["ops/*", "team/infra"], &[], &["ops"], &["*"]),
            rule(&["ops/*"], &["*"], &[], &["pull"]),
            rule(&[], &[], &["ops"], &["catalog"]),
        ],
        ..AuthConfig::default()
    }
}

fn registry(token: bool) -> Reg {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.auth = Some(config_auth(
        dir.path(),
        token,
        "strata-registry",
        "strata-registry-token",
    ));
    Reg::with_config(dir, cfg)
}

/// One image in every repository, pushed by admin (basic credentials work in token mode
/// too only at `/token`, so admin's requests carry a token there).
struct Fixture {
    image: strata_fixtures::Image,
    blob: Vec<u8>,
}

async fn admin_headers(reg: &Reg, token: bool, repo: &str) -> String {
    let basic = Who::User("admin", "root-pw").basic().unwrap();
    if !token {
        return basic;
    }
    let t = fetch_token(
        reg,
        Some(&basic),
        &[&format!("repository:{repo}:pull,push,delete")],
    )
    .await
    .expect("admin token");
    format!("Bearer {t}")
}

async fn setup(reg: &Reg, token: bool) -> Fixture {
    let image = strata_fixtures::small_image(71, 1, false);
    for repo in REPOS {
        let auth = admin_headers(reg, token, repo).await;
        for b in std::iter::once(&image.config).chain(&image.layers) {
            let r = push_blob(reg, repo, &b.bytes, Some(&auth)).await;
            assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        }
        restore(reg, repo, &image, &auth).await;
    }
    Fixture {
        image,
        blob: b"a blob the matrix pushes".to_vec(),
    }
}

async fn restore(reg: &Reg, repo: &str, image: &strata_fixtures::Image, auth: &str) {
    let r = put_manifest(reg, repo, image, Some(auth)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
}

fn headers<'a>(auth: Option<&'a str>, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = auth {
        h.push(("authorization", a));
    }
    h
}

async fn push_blob(reg: &Reg, repo: &str, bytes: &[u8], auth: Option<&str>) -> Resp {
    let digest = strata_store::Digest::of(bytes).to_string();
    reg.req(
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        &headers(auth, &[("content-type", "application/octet-stream")]),
        bytes.to_vec(),
    )
    .await
}

async fn put_manifest(reg: &Reg, repo: &str, image: &strata_fixtures::Image, auth: Option<&str>) -> Resp {
    reg.req(
        Method::PUT,
        &format!("/v2/{repo}/manifests/v1"),
        &headers(auth, &[("content-type", &image.manifest.media_type)]),
        image.manifest.bytes.clone(),
    )
    .await
}

/// `/token` with these scopes (each its own `scope=` parameter); `None` on a refusal.
async fn fetch_token(reg: &Reg, basic: Option<&str>, scopes: &[&str]) -> Option<String> {
    let mut uri = "/token?service=strata-registry".to_string();
    for s in scopes {
        uri.push_str(&format!("&scope={}", s.replace('&', "%26").replace(' ', "%20")));
    }
    let r = reg
        .req(Method::GET, &uri, &headers(basic, &[]), Body::empty())
        .await;
    match r.status {
        StatusCode::OK => Some(r.json()["token"].as_str().unwrap().to_string()),
        StatusCode::UNAUTHORIZED => {
            assert_eq!(r.code(), "UNAUTHORIZED", "{r:?}");
            None
        }
        other => panic!("token endpoint answered {other}: {r:?}"),
    }
}

/// What one attempt answered: the statuses of its requests.
async fn attempt(reg: &Reg, fx: &Fixture, repo: &str, act: Act, auth: Option<&str>) -> Vec<Resp> {
    match act {
        Act::Pull => {
            let accept = fx.image.manifest.media_type.clone();
            let manifest = reg
                .req(
                    Method::GET,
                    &format!("/v2/{repo}/manifests/v1"),
                    &headers(auth, &[("accept", &accept)]),
                    Body::empty(),
                )
                .await;
            let blob = reg
                .req(
                    Method::HEAD,
                    &format!("/v2/{repo}/blobs/{}", fx.image.config.digest),
                    &headers(auth, &[]),
                    Body::empty(),
                )
                .await;
            vec![manifest, blob]
        }
        Act::Push => vec![
            push_blob(reg, repo, &fx.blob, auth).await,
            put_manifest(reg, repo, &fx.image, auth).await,
        ],
        Act::Delete => vec![
            reg.req(
                Method::DELETE,
                &format!("/v2/{repo}/manifests/{}", fx.image.digest()),
                &headers(auth, &[]),
                Body::empty(),
            )
            .await,
        ],
    }
}

fn expected_ok(act: Act) -> &'static [StatusCode] {
    match act {
        Act::Pull => &[StatusCode::OK, StatusCode::OK],
        Act::Push => &[StatusCode::CREATED, StatusCode::CREATED],
        Act::Delete => &[StatusCode::ACCEPTED],
    }
}

/// A refusal as the spec has it: 401 UNAUTHORIZED with a challenge (naming the scope
/// and `insufficient_scope` for a token that lacks it), or 403 DENIED for a known user
/// basic auth does not permit.
fn check_refusal(r: &Resp, status: StatusCode, challenge: Option<(&str, Option<&str>, bool)>, ctx: &str) {
    assert_eq!(r.status, status, "{ctx}: {r:?}");
    let code = if status == StatusCode::FORBIDDEN {
        "DENIED"
    } else {
        "UNAUTHORIZED"
    };
    if r.body.is_empty() {
        // A HEAD carries no body; its status and headers say it all.
    } else {
        assert_eq!(r.code(), code, "{ctx}");
    }
    let www = r.header("www-authenticate");
    match challenge {
        None => assert!(www.is_none(), "{ctx}: unexpected challenge {www:?}"),
        Some((scheme, scope, insufficient)) => {
            let www = www.unwrap_or_else(|| panic!("{ctx}: no challenge"));
            assert!(www.starts_with(scheme), "{ctx}: {www}");
            if let Some(scope) = scope {
                assert!(www.contains(&format!("scope=\"{scope}\"")), "{ctx}: {www}");
                assert!(www.contains("service=\"strata-registry\""), "{ctx}: {www}");
                assert!(www.contains("/token\""), "{ctx}: {www}");
            }
            assert_eq!(
                www.contains("error=\"insufficient_scope\""),
                insufficient,
                "{ctx}: {www}"
            );
        }
    }
}

/// Runs the whole matrix through one registry; returns how many combinations it checked.
async fn run_matrix(token: bool) -> usize {
    let reg = registry(token);
    let fx = setup(&reg, token).await;
    let mut checked = 0;
    for who in Who::all() {
        let basic = who.basic();
        for repo in REPOS {
            // In token mode each identity asks once per repository for every action.
            let token_auth = if token {
                let scope = format!("repository:{repo}:pull,push,delete");
                let t = fetch_token(&reg, basic.as_deref(), &[&scope]).await;
                let bad_creds = matches!(who, Who::WrongPassword(_) | Who::Unknown);
                assert_eq!(t.is_none(), bad_creds, "{who:?} token for {repo}");
                t.map(|t| format!("Bearer {t}"))
            } else {
                None
            };
            let auth = if token {
                token_auth.as_deref()
            } else {
                basic.as_deref()
            };
            for act in [Act::Pull, Act::Push, Act::Delete] {
                let ctx = format!(
                    "{} {who:?} {} {repo}",
                    if token { "token" } else { "basic" },
                    act.name()
                );
                // A client whose credentials the token endpoint refused goes on without a
                // token, as anyone: it gets what anonymous clients get.
                let as_who = if token && auth.is_none() {
                    Who::Anonymous
                } else {
                    who
                };
                let ok = allowed(as_who, repo, act);
                let answers = attempt(&reg, &fx, repo, act, auth).await;
                let statuses: Vec<StatusCode> = answers.iter().map(|r| r.status).collect();
                if ok {
                    assert_eq!(statuses, expected_ok(act), "{ctx}: {answers:?}");
                    if act == Act::Delete {
                        let admin = admin_headers(&reg, token, repo).await;
                        restore(&reg, repo, &fx.image, &admin).await;
                    }
                } else {
                    let scope = format!("repository:{repo}:{}", act.name());
                    for r in &answers {
                        match (token, who, auth.is_some()) {
                            // A token without the action: insufficient scope.
                            (true, _, true) => check_refusal(
                                r,
                                StatusCode::UNAUTHORIZED,
                                Some(("Bearer realm=", Some(&scope), true)),
                                &ctx,
                            ),
                            (true, _, false) => check_refusal(
                                r,
                                StatusCode::UNAUTHORIZED,
                                Some(("Bearer realm=", Some(&scope), false)),
                                &ctx,
                            ),
                            (false, Who::User(..), _) => check_refusal(r, StatusCode::FORBIDDEN, None, &ctx),
                            (false, _, _) => check_refusal(
                                r,
                                StatusCode::UNAUTHORIZED,
                                Some(("Basic realm=", None, false)),
                                &ctx,
                            ),
                        }
                    }
                    // A refusal changed nothing: the image is still there.
                    let admin = admin_headers(&reg, token, repo).await;
                    let r = reg
                        .req(
                            Method::HEAD,
                            &format!("/v2/{repo}/manifests/{}", fx.image.digest()),
                            &[("authorization", &admin)],
                            Body::empty(),
                        )
                        .await;
                    assert_eq!(
                        r.status,
                        StatusCode::OK,
                        "{ctx}: the refused request changed the repository"
                    );
                }
                checked += 1;
            }
        }
        // The catalog.
        let ctx = format!("{} {who:?} catalog", if token { "token" } else { "basic" });
        let auth = if token {
            fetch_token(&reg, basic.as_deref(), &["registry:catalog:*"])
                .await
                .map(|t| format!("Bearer {t}"))
        } else {
            basic.clone()
        };
        let r = reg
            .req(
                Method::GET,
                "/v2/_catalog",
                &headers(auth.as_deref(), &[]),
                Body::empty(),
            )
            .await;
        if catalog_allowed(who) {
            assert_eq!(r.status, StatusCode::OK, "{ctx}: {r:?}");
            assert_eq!(
                r.json()["repositories"].as_array().unwrap().len(),
                REPOS.len(),
                "{ctx}"
            );
        } else {
            let scope = Some("registry:catalog:*");
            match (token, who, auth.is_some()) {
                (true, _, has) => check_refusal(
                    &r,
                    StatusCode::UNAUTHORIZED,
                    Some(("Bearer realm=", scope, has)),
                    &ctx,
                ),
                (false, Who::User(..), _) => check_refusal(&r, StatusCode::FORBIDDEN, None, &ctx),
                (false, _, _) => check_refusal(
                    &r,
                    StatusCode::UNAUTHORIZED,
                    Some(("Basic realm=", None, false)),
                    &ctx,
                ),
            }
        }
        checked += 1;
    }
    checked
}

#[tokio::test]
async fn every_combination_through_basic_auth() {
    let n = run_matrix(false).await;
    assert_eq!(n, Who::all().len() * (REPOS.len() * 3 + 1));
}

#[tokio::test]
async fn every_combination_through_tokens() {
    let n = run_matrix(true).await;
    assert_eq!(n, Who::all().len() * (REPOS.len() * 3 + 1));
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let inner = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(k.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// A token as the registry would sign it with [`SECRET`], with these claims.
fn forge(claims: &serde_json::Value) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let sig = URL_SAFE_NO_PAD.encode(hmac(SECRET.as_bytes(), payload.as_bytes()));
    format!("Bearer {payload}.{sig}")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn status_with(reg: &Reg, method: Method, uri: &str, auth: &str) -> StatusCode {
    reg.req(method, uri, &[("authorization", auth)], Body::empty())
        .await
        .status
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let reg = registry(true);
    let fx = setup(&reg, true).await;
    let tags = "/v2/team/app/tags/list";
    let alice = Who::User("alice", "alice-pw").basic().unwrap();
    let good = fetch_token(&reg, Some(&alice), &["repository:team/app:pull,push"])
        .await
        .unwrap();
    assert_eq!(
        status_with(&reg, Method::GET, tags, &format!("Bearer {good}")).await,
        StatusCode::OK
    );

    // A flipped byte in the signature, or in the claims.
    let (payload, sig) = good.split_once('.').unwrap();
    let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig_bytes[7] ^= 1;
    let tampered = format!("Bearer {payload}.{}", URL_SAFE_NO_PAD.encode(&sig_bytes));
    assert_eq!(
        status_with(&reg, Method::GET, tags, &tampered).await,
        StatusCode::UNAUTHORIZED
    );
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["access"][0]["actions"] = serde_json::json!(["pull", "push", "delete"]);
    let widened = format!(
        "Bearer {}.{sig}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
    );
    let uri = format!("/v2/team/app/manifests/{}", fx.image.digest());
    assert_eq!(
        status_with(&reg, Method::DELETE, &uri, &widened).await,
        StatusCode::UNAUTHORIZED
    );
    for garbage in [
        "Bearer ",
        "Bearer e30",
        "Bearer e30.",
        "Bearer ..",
        "Bearer a.b.c",
        "Bearer ====.====",
    ] {
        let r = reg
            .req(Method::GET, tags, &[("authorization", garbage)], Body::empty())
            .await;
        assert!(
            matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST),
            "{garbage:?}: {r:?}"
        );
    }

    // Signed with the right key: accepted only while unexpired and for this issuer and
    // audience (the forgery is checked to work first, so each refusal is for its reason).
    let claims = |exp: u64, iss: &str, aud: &str| {
        serde_json::json!({"iss": iss, "aud": aud, "sub": "alice", "exp": exp,
            "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}]})
    };
    let (iss, aud) = ("strata-registry-token", "strata-registry");
    let ok = forge(&claims(now() + 600, iss, aud));
    assert_eq!(status_with(&reg, Method::GET, tags, &ok).await, StatusCode::OK);
    for (what, t) in [
        ("expired", forge(&claims(now() - 1, iss, aud))),
        ("another issuer", forge(&claims(now() + 600, "someone-else", aud))),
        (
            "another audience",
            forge(&claims(now() + 600, iss, "other-registry")),
        ),
        (
            "no issuer or audience",
            forge(&serde_json::json!({"sub": "alice", "exp": now() + 600,
                "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}]})),
        ),
    ] {
        let r = reg
            .req(Method::GET, tags, &[("authorization", &t)], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what} token accepted");
        assert!(
            !r.header("www-authenticate")
                .unwrap()
                .contains("insufficient_scope")
        );
    }

    // A token for team/app does not open team/infra, though alice may push there.
    let r = reg
        .req(
            Method::POST,
            "/v2/team/infra/blobs/uploads/",
            &[("authorization", &format!("Bearer {good}"))],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope")
    );

    // Registries sharing the secret but not the service or the issuer refuse each other's tokens.
    for (service, issuer) in [
        ("other-registry", "strata-registry-token"),
        ("strata-registry", "other-issuer"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::common::config(dir.path());
        cfg.auth = Some(config_auth(dir.path(), true, service, issuer));
        let other = Reg::with_config(dir, cfg);
        let r = other
            .req(
                Method::GET,
                tags,
                &[("authorization", &format!("Bearer {good}"))],
                Body::empty(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{service} {issuer} accepted another's token"
        );
    }
}

#[tokio::test]
async fn repeated_scopes_grant_no_more_than_the_rules() {
    let reg = registry(true);
    let fx = setup(&reg, true).await;
    let dave = Who::User("dave", "dave-pw").basic().unwrap();
    let bob = Who::User("bob", "bob-pw").basic().unwrap();
    let push = |repo: &str, auth: String| {
        let reg = &reg;
        let blob = fx.blob.clone();
        let repo = repo.to_string();
        async move { push_blob(reg, &repo, &blob, Some(&auth)).await.status }
    };
    // dave may only pull ops/tool: asking for push twice, in every spelling, gets pull.
    // (A single value holding `&scope=` is one odd repository name, granting nothing.)
    for (scopes, pull) in [
        (
            vec!["repository:ops/tool:push", "repository:ops/tool:push,pull"],
            true,
        ),
        (vec!["repository:ops/tool:pull", "repository:ops/tool:push"], true),
        (
            vec!["repository:ops/tool:pull&scope=repository:ops/tool:push,pull"],
            false,
        ),
        (
            vec![
                "repository:ops/tool:*",
                "repository:ops/tool:pull,push,delete,push",
            ],
            true,
        ),
        (vec!["repository:ops/tool:pull repository:ops/tool:push"], true),
        (
            vec![
                "repository:ops/tool:push",
                "repository:ops/*:push",
                "repository:*:push",
            ],
            false,
        ),
    ] {
        let t = format!(
            "Bearer {}",
            fetch_token(&reg, Some(&dave), &scopes).await.unwrap()
        );
        assert_eq!(
            push("ops/tool", t.clone()).await,
            StatusCode::UNAUTHORIZED,
            "{scopes:?}"
        );
        let uri = format!("/v2/ops/tool/manifests/{}", fx.image.digest());
        assert_eq!(
            status_with(&reg, Method::DELETE, &uri, &t).await,
            StatusCode::UNAUTHORIZED
        );
        let pulled = status_with(&reg, Method::GET, "/v2/ops/tool/tags/list", &t).await;
        let expect = if pull {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(pulled, expect, "{scopes:?}");
    }
    // bob asks for delete on team/app twice beside what he has: push and pull only.
    let t = format!(
        "Bearer {}",
        fetch_token(
            &reg,
            Some(&bob),
            &[
                "repository:team/app:pull,push",
                "repository:team/app:delete",
                "repository:team/app:delete,*"
            ],
        )
        .await
        .unwrap()
    );
    assert_eq!(push("team/app", t.clone()).await, StatusCode::CREATED);
    let uri = format!("/v2/team/app/manifests/{}", fx.image.digest());
    assert_eq!(
        status_with(&reg, Method::DELETE, &uri, &t).await,
        StatusCode::UNAUTHORIZED
    );
    // Anyone asking for the catalog without the right gets a token without it.
    let t = format!(
        "Bearer {}",
        fetch_token(&reg, Some(&bob), &["registry:catalog:*", "registry:catalog:*"])
            .await
            .unwrap()
    );
    assert_eq!(
        status_with(&reg, Method::GET, "/v2/_catalog", &t).await,
        StatusCode::UNAUTHORIZED
    );
}

/// skopeo on a real socket, token auth: what the rules allow works, what they do not fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_through_the_rules() {
    if peers::require("skopeo").is_none() {
        return;
    }
    let reg = registry(true);
    let served = Served::start(reg.state.clone()).await;
    let addr = served.addr;
    let tmp = tempfile::tempdir().unwrap();
    let img = strata_fixtures::small_image(72, 1, false);
    let layout = tmp.path().join("layout");
    strata_fixtures::write_oci_layout(&layout, &[(&img, Some("1"))]);
    let src = format!("oci:{}:1", layout.display());
    let outcome = tokio::task::spawn_blocking(move || {
        let copy = |creds: Option<&str>, repo: &str| {
            let dest = format!("docker://{addr}/{repo}:1");
            let mut args = vec!["copy", "--dest-tls-verify=false"];
            if let Some(c) = creds {
                args.extend(["--dest-creds", c]);
            }
            args.extend([src.as_str(), dest.as_str()]);
            peers::skopeo(args).status.success()
        };
        let tags = |creds: Option<&str>, repo: &str| {
            let src = format!("docker://{addr}/{repo}");
            let mut args = vec!["list-tags", "--tls-verify=false"];
            match creds {
                Some(c) => args.extend(["--creds", c]),
                None => args.push("--no-creds"),
            }
            args.push(&src);
            peers::skopeo(args).status.success()
        };
        vec![
            (
                "alice pushes team/app",
                copy(Some("alice:alice-pw"), "team/app"),
                true,
            ),
            ("bob pushes ops/tool", copy(Some("bob:bob-pw"), "ops/tool"), false),
            ("alice, wrong password", copy(Some("alice:nope"), "team/x"), false),
            (
                "carol pushes ops/tool",
                copy(Some("carol:carol-pw"), "ops/tool"),
                true,
            ),
            (
                "admin pushes public/base",
                copy(Some("admin:root-pw"), "public/base"),
                true,
            ),
            ("anonymous lists public/base", tags(None, "public/base"), true),
            ("anonymous lists team/app", tags(None, "team/app"), false),
            (
                "dave lists ops/tool",
                tags(Some("dave:dave-pw"), "ops/tool"),
                true,
            ),
            (
                "dave lists team/app",
                tags(Some("dave:dave-pw"), "team/app"),
                false,
            ),
        ]
    })
    .await
    .unwrap();
    for (what, got, want) in outcome {
        assert_eq!(got, want, "{what}");
    }
    served.stop().await;
}
