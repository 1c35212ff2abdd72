//! `ClientError`: what can go wrong talking to a registry or writing what it sent into the
//! store, and whether trying again may help.

use strata_store::{BlobError, Digest};

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid registry url {0:?}")]
    InvalidUrl(String),
    #[error("request {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
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

pub(crate) type Result<T, E = ClientError> = std::result::Result<T, E>;
