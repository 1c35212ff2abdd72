//! strata's registry server: the OCI Distribution v1.1 API over the strata store, with
//! repository-scoped blob links, resumable uploads, auth (htpasswd basic and a bearer
//! token issuer), TLS, metrics, graceful shutdown, and a pull-through cache mode. `app(state)` is the service as an
//! axum `Router` (tests drive it without a socket); `serve` runs it on a listener.

mod api;
mod auth;
mod config;
mod direct;
mod error;
/// Fuzz target bodies (for `fixtures/fuzz` and its corpus-replay test); not an API.
#[doc(hidden)]
pub mod fuzzing;
mod metrics;
mod names;
mod pace;
mod proxy;
mod sendfile;
mod serve;
mod shared_uploads;
mod uploads;

pub use api::{AppState, StateError, app};
pub use auth::{Action, AuthError};
pub use config::{
    AccessRule, AuthConfig, Config, ConfigError, GcConfig, Globs, Limits, LogConfig, MetadataSection,
    ProxyConfig, SHARED_REGISTRY_NAME, StorageSection, TlsConfig, UploadConfig,
};
pub use error::{ApiError, ErrorCode};
pub use metrics::Metrics;
pub use names::{valid_name, valid_tag};
pub use serve::{ServeError, serve, tls_acceptor};
