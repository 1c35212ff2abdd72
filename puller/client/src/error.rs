//! `ClientError`: what can go wrong talking to a registry or writing what it sent into the
//! store, and whether trying again may help.

use strata_store::{BlobError, Digest};

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid registry url {0:?}")]
    InvalidUrl(String),
    /// The request failed before an answer came, or its body broke off. Its message says
    /// the cause once (reqwest's own message repeats the url, and its chain wraps the
    /// cause in layers of "client error", "tcp connect error", ...).
    #[error("request {url}: {}", describe(error))]
    Http { url: String, error: reqwest::Error },
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: unauthorized{}", if *.with_credentials { " (credentials refused)" } else { " (no credentials)" })]
    Unauthorized { url: String, with_credentials: bool },
    #[error("{url}: unexpected status {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("token from {realm}: {message}")]
    Token { realm: String, message: String },
    #[error("manifest {reference} exceeds {limit} bytes")]
    ManifestTooLarge { reference: String, limit: u64 },
    #[error("manifest {reference}: digest is {actual}, expected {expected}")]
    DigestMismatch {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{url}: invalid {header} header {value:?}")]
    BadHeader {
        url: String,
        header: &'static str,
        value: String,
    },
    #[error("store blob {digest}: {source}")]
    Store {
        digest: Digest,
        #[source]
        source: BlobError,
    },
    #[error("blob writer stopped: {0}")]
    Writer(String),
}

impl ClientError {
    /// Whether trying again may succeed: the connection failed or broke off, or the
    /// registry answered 429 or a 5xx. (A digest mismatch is not: the registry serves
    /// what it serves.)
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Http { .. } => true,
            ClientError::Status { status, .. } => *status == 429 || *status >= 500,
            ClientError::Writer(_) => true,
            _ => false,
        }
    }

    /// Whether the registry answered that the thing does not exist (as opposed to being
    /// unreachable or failing).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound { .. })
    }
}

/// What went wrong with a request, said once: "cannot connect: Connection refused (os
/// error 111)" rather than reqwest's chain of the same cause.
fn describe(e: &reqwest::Error) -> String {
    let mut causes: Vec<String> = Vec::new();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        // hyper-util's "client error (Connect)" and the like only name the layer.
        if !causes.last().is_some_and(|last| last.contains(&text)) {
            causes.push(text);
        }
        next = cause.source();
    }
    let root = causes.last().cloned();
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connect() {
        return format!("cannot connect: {}", root.unwrap_or_else(|| e.to_string()));
    }
    match root {
        Some(root) if e.is_body() || e.is_decode() => format!("reading the answer: {root}"),
        Some(root) => root,
        None => e.to_string(),
    }
}

pub(crate) type Result<T, E = ClientError> = std::result::Result<T, E>;
