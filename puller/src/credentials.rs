//! Registry credentials: `STRATA_REGISTRY_USER` / `STRATA_REGISTRY_PASSWORD`, else what
//! `docker login` saved in `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`),
//! `auths.<registry>.auth` (base64 `user:password`) or `username`/`password`. Credential
//! helpers (`credsStore`, `credHelpers`) are not consulted.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use strata_client::Credentials;

/// Credentials for `registry` (as written in an image reference, e.g. `127.0.0.1:5000`
/// or `docker.io`), from the environment first, then docker's config file.
pub fn credentials_for(registry: &str) -> Option<Credentials> {
    if let (Ok(username), Ok(password)) = (
        std::env::var("STRATA_REGISTRY_USER"),
        std::env::var("STRATA_REGISTRY_PASSWORD"),
    ) {
        return Some(Credentials { username, password });
    }
    docker_config_credentials(&docker_config_path()?, registry)
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
    }
}

/// The entry for `registry` in a docker config file, if any.
pub fn docker_config_credentials(path: &Path, registry: &str) -> Option<Credentials> {
    let text = std::fs::read_to_string(path).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = config.get("auths")?.as_object()?;
    // Docker keys Docker Hub as its v1 index URL; others by host (sometimes with a scheme).
    let wanted: Vec<String> = if registry == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![
            registry.to_string(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ]
    };
    let entry = wanted.iter().find_map(|k| auths.get(k.as_str()))?;
    if let Some(auth) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth).ok()?;
        let (user, pass) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        return Some(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
        });
    }
    Some(Credentials {
        username: entry.get("username")?.as_str()?.to_string(),
        password: entry.get("password")?.as_str()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_login_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        std::fs::write(
            &path,
            serde_json::json!({
                "auths": {
                    "127.0.0.1:5000": {"auth": auth},
                    "https://index.docker.io/v1/": {"auth": base64::engine::general_purpose::STANDARD.encode("bob:hub")},
                    "https://reg.example": {"username": "carol", "password": "pw"},
                }
            })
            .to_string(),
        )
        .unwrap();
        let c = docker_config_credentials(&path, "127.0.0.1:5000").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice", "pa:ss"));
        let c = docker_config_credentials(&path, "docker.io").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("bob", "hub"));
        let c = docker_config_credentials(&path, "reg.example").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("carol", "pw"));
        assert!(docker_config_credentials(&path, "other:1").is_none());
        assert!(docker_config_credentials(&dir.path().join("missing.json"), "x").is_none());
    }
}
