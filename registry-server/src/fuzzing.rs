//! Fuzz target bodies for the registry's parsers of client input (request heads and
//! chunked bodies, `Range` and upload `Content-Range`, htpasswd files, bearer tokens and
//! token requests): called by the cargo-fuzz targets in `fixtures/fuzz` and by the
//! corpus-replay test on stable. Each panics only on a bug.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::auth::{Action, Auth, Need, load_htpasswd};
use crate::config::AuthConfig;

pub use crate::direct::fuzz::{chunked, http_head};

/// A blob GET's `Range` against blobs of several sizes: a 206 names bytes inside the
/// blob, a 200 all of it.
pub fn range(data: &[u8]) {
    let Ok(v) = std::str::from_utf8(data) else { return };
    for len in [0, 1, 2, 100, 1 << 20, u64::MAX] {
        let Ok((status, parts)) = crate::api::blobs::plan_range(Some(v), len) else {
            continue;
        };
        match status {
            StatusCode::PARTIAL_CONTENT => {
                assert!(
                    (1..=crate::api::blobs::MAX_RANGES).contains(&parts.len()),
                    "{v:?} of {len}: {} parts",
                    parts.len()
                );
                let mut sent = 0u64;
                for (start, count) in &parts {
                    assert!(*count >= 1, "{v:?} of {len}: empty range");
                    assert!(
                        start.checked_add(*count).is_some_and(|e| e <= len),
                        "{v:?} of {len}: {start}+{count}"
                    );
                    sent += count;
                }
                assert!(sent <= len, "{v:?} of {len}: {sent} bytes sent");
            }
            StatusCode::OK => assert_eq!(parts, [(0, len)]),
            other => panic!("{v:?}: status {other}"),
        }
    }
}

/// An upload chunk's `Content-Range` against several upload offsets: it names one start,
/// so at most one offset accepts it.
pub fn upload_range(data: &[u8]) {
    let Ok(v) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_RANGE, v);
    let accepted = [0, 1, 100, u64::MAX]
        .into_iter()
        .filter(|o| crate::api::uploads::check_content_range(&h, *o, "a/b", "id").is_ok())
        .count();
    assert!(accepted <= 1, "{data:?} starts at {accepted} offsets");
}

/// `load_htpasswd` of an arbitrary file: every user it reads has a bcrypt hash.
pub fn htpasswd(data: &[u8]) {
    let path = std::env::temp_dir().join(format!("strata-fuzz-htpasswd-{}", std::process::id()));
    std::fs::write(&path, data).expect("write the htpasswd file");
    let users = load_htpasswd(&path);
    let _ = std::fs::remove_file(&path);
    for (user, hash) in users.iter().flatten() {
        assert!(!user.contains(':') && hash.starts_with("$2"), "{user:?}:{hash:?}");
    }
}

/// One authenticator for every token input: bearer tokens on, anonymous pull, one user
/// who may do everything, and a random key (so no committed input holds a valid token).
fn token_auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("strata-fuzz-users-{}", std::process::id()));
        let hash = bcrypt::hash("password", 4).expect("bcrypt");
        std::fs::write(&path, format!("alice:{hash}\n")).expect("write the htpasswd file");
        let auth = Auth::new(AuthConfig {
            htpasswd: Some(path.clone()),
            token: true,
            anonymous_pull: true,
            ..AuthConfig::default()
        })
        .expect("auth");
        let _ = std::fs::remove_file(path);
        auth
    })
}

// Field by field: `Need` gains fields as authorisation grows.
#[allow(clippy::field_reassign_with_default)]
fn need(repo: &str, action: Action) -> Need {
    let mut need = Need::default();
    need.access = vec![(repo.to_string(), action)];
    need
}

fn bearer(token: &[u8]) -> Option<HeaderMap> {
    let mut v = b"Bearer ".to_vec();
    v.extend_from_slice(token);
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(&v).ok()?);
    Some(h)
}

/// A token alice (who may push) was issued for `repository:a/b:pull,push`, once per
/// process; the first time, checked to grant the push.
fn alice_token(auth: &Auth) -> &'static [u8] {
    static TOKEN: OnceLock<Vec<u8>> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let mut h = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:password");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).expect("header"),
        );
        let answer = auth
            .issue(&h, "service=strata-registry&scope=repository:a/b:pull,push")
            .expect("issue");
        let token = answer["token"].as_str().expect("a token").as_bytes().to_vec();
        let h = bearer(&token).expect("a bearer header");
        assert!(auth.authorize(&h, false, &need("a/b", Action::Push)).is_ok());
        token
    })
}

/// Bearer tokens and token requests; the first byte picks the case:
/// 0. the rest as a bearer token: never grants a push;
/// 1. the rest as the `/token` query of an anonymous client: every scope it is given is
///    at most `pull`, and its token grants no push;
/// 2. alice's push token for `a/b` with one byte replaced (at the second byte, by the
///    third): no longer grants the push, unless unchanged.
pub fn token(data: &[u8]) {
    let auth = token_auth();
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Some(h) = bearer(rest) else { return };
            for repo in ["a/b", "library/busybox"] {
                assert!(auth.authorize(&h, false, &need(repo, Action::Push)).is_err());
            }
        }
        1 => {
            let Ok(query) = std::str::from_utf8(rest) else {
                return;
            };
            let Ok(answer) = auth.issue(&HeaderMap::new(), query) else {
                return;
            };
            let token = answer["token"].as_str().expect("a token");
            let (payload, _) = token.split_once('.').expect("payload.signature");
            let claims: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json");
            let scopes = claims["access"].as_array().into_iter().flatten();
            for scope in scopes.filter(|s| s["type"] == "repository") {
                for a in scope["actions"].as_array().into_iter().flatten() {
                    assert_eq!(a, "pull", "anonymous was granted {scope}");
                }
                if let Some(name) = scope["name"].as_str()
                    && let Some(h) = bearer(token.as_bytes())
                {
                    assert!(auth.authorize(&h, false, &need(name, Action::Push)).is_err());
                    assert!(auth.authorize(&h, false, &need(name, Action::Delete)).is_err());
                }
            }
        }
        _ => {
            let Some((&at, rest)) = rest.split_first() else {
                return;
            };
            let Some(&with) = rest.first() else { return };
            let token = alice_token(auth);
            let mut tampered = token.to_vec();
            let i = usize::from(at) % tampered.len();
            tampered[i] = with;
            let Some(h) = bearer(&tampered) else { return };
            let got = auth.authorize(&h, false, &need("a/b", Action::Push));
            if tampered.trim_ascii() != token {
                assert!(got.is_err(), "a tampered token was accepted");
            }
        }
    }
}
