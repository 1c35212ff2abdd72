//! The server's typed configuration, and its TOML file form (keys mirror the flags:
//! `listen`, `root`, `[auth] htpasswd`, `[tls] cert`/`key`, …).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
pub use strata_store::{MetadataSection, StorageSection};

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Everything the server needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The store root.
    pub root: PathBuf,
    pub listen: SocketAddr,
    /// The registry host name tags are stored under (`<registry_name>/<repo>:<tag>`), as
    /// clients name this registry. Defaults to the listen address.
    pub registry_name: Option<String>,
    /// Whether DELETE of manifests, tags and blobs is allowed.
    pub delete_enabled: bool,
    pub log: LogConfig,
    pub limits: Limits,
    pub uploads: UploadConfig,
    pub gc: GcConfig,
    pub tls: Option<TlsConfig>,
    pub auth: Option<AuthConfig>,
    /// Pull-through cache mode: serve an upstream registry's content, caching it here.
    pub proxy: Option<ProxyConfig>,
    /// Where blob bytes live: files under `root` (default) or an S3 bucket.
    pub storage: StorageSection,
    /// Where metadata lives: RocksDB under `root` (default) or PostgreSQL.
    pub metadata: MetadataSection,
}

/// What replicas sharing metadata store tags under when `registry_name` is not set (the
/// listen address differs from replica to replica).
pub const SHARED_REGISTRY_NAME: &str = "registry";

impl Default for Config {
    fn default() -> Self {
        Config {
            root: strata_store::default_root(),
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            registry_name: None,
            delete_enabled: true,
            log: LogConfig::default(),
            limits: Limits::default(),
            uploads: UploadConfig::default(),
            gc: GcConfig::default(),
            tls: None,
            auth: None,
            proxy: None,
            storage: StorageSection::default(),
            metadata: MetadataSection::default(),
        }
    }
}

impl Config {
    /// Reads a TOML configuration file; missing keys take their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.message().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let store = self.store_config()?;
        if matches!(store.storage, strata_store::StorageConfig::S3(_)) && !self.is_shared() {
            return Err(ConfigError::Invalid(
                "storage.backend = \"s3\" needs metadata.backend = \"postgres\"".into(),
            ));
        }
        if self.is_shared()
            && let Some(auth) = &self.auth
            && auth.token
            && auth.secret.is_none()
        {
            return Err(ConfigError::Invalid(
                "auth.secret must be set when replicas share metadata: every replica must accept the tokens of the others".into(),
            ));
        }
        if self.limits.max_manifest_bytes == 0
            || self.limits.max_manifest_bytes > strata_store::MAX_MANIFEST_BYTES
        {
            return Err(ConfigError::Invalid(format!(
                "limits.max_manifest_bytes must be between 1 and {}",
                strata_store::MAX_MANIFEST_BYTES
            )));
        }
        if let Some(auth) = &self.auth {
            for rule in &auth.access {
                for g in &rule.repositories.0 {
                    glob::Pattern::new(g)
                        .map_err(|e| ConfigError::Invalid(format!("auth.access repositories {g:?}: {e}")))?;
                }
                for a in &rule.actions {
                    if !matches!(a.as_str(), "pull" | "push" | "delete" | "catalog" | "*") {
                        return Err(ConfigError::Invalid(format!("auth.access: unknown action {a:?}")));
                    }
                    if rule.anonymous && !matches!(a.as_str(), "pull" | "catalog") {
                        return Err(ConfigError::Invalid(format!(
                            "auth.access: an anonymous rule may grant pull and catalog, not {a:?}"
                        )));
                    }
                }
            }
        }
        if let Some(proxy) = &self.proxy {
            let url = proxy.remote_url.trim_end_matches('/');
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .unwrap_or("");
            if rest.is_empty() || rest.contains('/') {
                return Err(ConfigError::Invalid(format!(
                    "proxy.remote_url must be http(s)://host[:port], not {:?}",
                    proxy.remote_url
                )));
            }
            if proxy.username.is_some() != proxy.password.is_some() {
                return Err(ConfigError::Invalid(
                    "proxy.username and proxy.password go together".into(),
                ));
            }
        }
        Ok(())
    }

    /// The registry name tags are stored under.
    pub fn registry_name(&self) -> String {
        match &self.registry_name {
            Some(name) => name.clone(),
            None if self.metadata.backend.as_deref() == Some("postgres") => SHARED_REGISTRY_NAME.to_string(),
            None => self.listen.to_string(),
        }
    }

    /// True when several replicas may share this configuration's backends.
    pub fn is_shared(&self) -> bool {
        self.metadata.backend.as_deref() == Some("postgres")
    }

    /// How to open the store: the root, and the `[storage]` and `[metadata]` backends.
    pub fn store_config(&self) -> Result<strata_store::StoreConfig, ConfigError> {
        strata_store::StoreConfig::from_sections(&self.root, &self.storage, &self.metadata)
            .map_err(ConfigError::Invalid)
    }
}

/// Request logging.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// A `tracing` filter, e.g. `info` or `strata_registry=debug` (`RUST_LOG` overrides).
    pub level: Option<String>,
}

/// Limits against abuse and slow clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_manifest_bytes: u64,
    /// Largest blob accepted (bytes); none by default.
    pub max_blob_bytes: Option<u64>,
    pub max_name_len: usize,
    /// Upload sessions open at once; more get `TOOMANYREQUESTS`.
    pub max_upload_sessions: usize,
    /// Largest page of tags or repositories.
    pub max_page: usize,
    /// A request body that sends nothing for this long is abandoned.
    #[serde(with = "secs")]
    pub body_idle_timeout: Duration,
    /// A request body slower than this (bytes per second, averaged over each
    /// `body_idle_timeout`) is abandoned; 0 for no minimum.
    pub min_body_rate: u64,
    /// A client must send its request headers within this.
    #[serde(with = "secs")]
    pub header_timeout: Duration,
    /// A response the client reads nothing of for this long (a stalled reader) is
    /// abandoned and its connection closed.
    #[serde(with = "secs")]
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: strata_store::MAX_MANIFEST_BYTES,
            max_blob_bytes: None,
            max_name_len: 255,
            max_upload_sessions: 1024,
            max_page: 10_000,
            body_idle_timeout: Duration::from_secs(60),
            min_body_rate: 1024,
            header_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// The pace request bodies must keep.
    pub fn body_pace(&self) -> crate::pace::BodyPace {
        crate::pace::BodyPace {
            idle: self.body_idle_timeout,
            min_rate: self.min_body_rate,
        }
    }
}

/// Upload sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// An upload untouched for this long is abandoned and cleaned.
    #[serde(with = "secs")]
    pub expiry: Duration,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            expiry: Duration::from_secs(24 * 3600),
        }
    }
}

/// Online garbage collection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Run a GC this often (seconds); never when absent.
    #[serde(with = "opt_secs")]
    pub interval: Option<Duration>,
    /// Unreferenced content younger than this is kept.
    #[serde(with = "secs")]
    pub grace: Duration,
    /// Shared backends: time between condemning unreferenced blobs and removing them; a
    /// manifest push must store itself within half of it after checking its blobs.
    #[serde(with = "secs")]
    pub settle: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: None,
            grace: Duration::from_secs(3600),
            settle: Duration::from_secs(10),
        }
    }
}

/// TLS from PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Authentication and authorisation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// An htpasswd file of bcrypt (`$2y$`) entries.
    pub htpasswd: Option<PathBuf>,
    /// Issue bearer tokens at `/token` (the Docker token flow) instead of asking for
    /// basic credentials on every request.
    pub token: bool,
    pub realm: Option<String>,
    pub service: String,
    /// HMAC key for tokens; random per start when absent.
    pub secret: Option<String>,
    /// The tokens' issuer (`iss`); a token from another issuer is refused, as is one for
    /// another `service` (its audience, `aud`).
    pub issuer: String,
    #[serde(with = "secs")]
    pub token_ttl: Duration,
    /// Anyone may pull without credentials.
    pub anonymous_pull: bool,
    /// Group name → members.
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Access rules; when empty, every authenticated user may do everything.
    pub access: Vec<AccessRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            token: false,
            realm: None,
            service: "strata-registry".into(),
            secret: None,
            issuer: "strata-registry-token".into(),
            token_ttl: Duration::from_secs(300),
            anonymous_pull: false,
            groups: Default::default(),
            access: Vec::new(),
        }
    }
}

/// Pull-through cache mode (like Distribution's `proxy.remoteurl`): content is fetched
/// from the upstream on demand and kept in the store; pushes are refused.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The upstream registry, `http://host:port` or `https://host`.
    pub remote_url: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("remote_url", &self.remote_url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Who may do what on which repositories (Distribution's token scopes, zot's access
/// control): a request is allowed when some rule that names its user (or one of the
/// user's groups, or `*` for any authenticated user, or anyone when `anonymous`) grants
/// its action on a repository one of the rule's globs matches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Globs over repository names, one or a list, e.g. `"team/*"` or `["team/*", "ci"]`
    /// (`*` matches any characters, `/` included).
    #[serde(default)]
    pub repositories: Globs,
    /// User names; `*` is any authenticated user.
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The rule also holds for clients without credentials (then only `pull` and
    /// `catalog` may be granted). What anyone may do, every user may do.
    #[serde(default)]
    pub anonymous: bool,
    /// `pull`, `push`, `delete`, `*` (those three), or `catalog`: the `/v2/_catalog`
    /// listing of every repository, for which the rule's `repositories` do not matter.
    pub actions: Vec<String>,
}

/// One repository glob or a list of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Globs(pub Vec<String>);

impl From<&str> for Globs {
    fn from(s: &str) -> Self {
        Globs(vec![s.to_string()])
    }
}

impl<const N: usize> From<[&str; N]> for Globs {
    fn from(a: [&str; N]) -> Self {
        Globs(a.iter().map(|s| s.to_string()).collect())
    }
}

impl<'de> Deserialize<'de> for Globs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => Globs(vec![s]),
            OneOrMany::Many(v) => Globs(v),
        })
    }
}

mod secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?
            .filter(|s| *s > 0)
            .map(Duration::from_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let c = Config::from_toml(
            r#"
            listen = "127.0.0.1:5999"
            root = "/tmp/x"
            registry_name = "reg.example:5999"
            [limits]
            max_upload_sessions = 8
            body_idle_timeout = 5
            [gc]
            interval = 600
            [tls]
            cert = "c.pem"
            key = "k.pem"
            [auth]
            htpasswd = "users"
            token = true
            anonymous_pull = true
            [auth.groups]
            dev = ["alice"]
            [[auth.access]]
            repositories = "team/*"
            groups = ["dev"]
            actions = ["pull", "push"]
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 5999);
        assert_eq!(c.registry_name(), "reg.example:5999");
        assert_eq!(c.limits.max_upload_sessions, 8);
        assert_eq!(c.gc.interval, Some(Duration::from_secs(600)));
        assert!(c.auth.unwrap().token);
        assert!(Config::from_toml("nope = 1").is_err());
        let p = Config::from_toml(
            "[proxy]\nremote_url = \"http://127.0.0.1:5001\"\nusername = \"u\"\npassword = \"p\"",
        )
        .unwrap()
        .proxy
        .unwrap();
        assert_eq!(p.remote_url, "http://127.0.0.1:5001");
        assert!(!format!("{p:?}").contains("\"p\""), "password leaked into Debug");
        assert!(Config::from_toml("[proxy]\nremote_url = \"ftp://x\"").is_err());
        assert!(Config::from_toml("[proxy]\nremote_url = \"http://x\"\nusername = \"u\"").is_err());
        assert!(Config::from_toml("[[auth.access]]\nrepositories = \"*\"\nactions = [\"fly\"]").is_err());
        let rule = |body: &str| Config::from_toml(&format!("[[auth.access]]\n{body}"));
        assert!(rule("anonymous = true\nrepositories = \"*\"\nactions = [\"push\"]").is_err());
        let c = rule("anonymous = true\nrepositories = [\"a/*\", \"b\"]\nactions = [\"pull\", \"catalog\"]")
            .unwrap();
        assert_eq!(c.auth.unwrap().access[0].repositories, Globs::from(["a/*", "b"]));
    }
}
