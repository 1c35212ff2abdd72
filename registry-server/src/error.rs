//! Registry errors as the distribution spec wants them: an HTTP status and a JSON body
//! `{"errors":[{"code":…,"message":…,"detail":…}]}`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use strata_store::{BlobError, ContentError, StoreError};

/// The spec's error codes (plus `TOOMANYREQUESTS` and `UNSUPPORTED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    /// Distribution's `UNAVAILABLE` (503): a backend could not be reached.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Internal => "UNKNOWN",
        }
    }
}

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    /// Extra headers (e.g. `WWW-Authenticate`, `Range`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn blob_unknown(digest: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            "blob unknown to registry",
        )
        .with_detail(serde_json::json!({ "digest": digest.to_string() }))
    }
    pub fn upload_unknown() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadUnknown,
            "blob upload unknown to registry",
        )
    }
    pub fn upload_invalid(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BlobUploadInvalid, msg)
    }
    pub fn digest_invalid(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, msg)
    }
    pub fn manifest_unknown(reference: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
            "manifest unknown",
        )
        .with_detail(serde_json::json!({ "reference": reference }))
    }
    pub fn manifest_invalid(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid, msg)
    }
    pub fn name_invalid(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            "invalid repository name",
        )
        .with_detail(serde_json::json!({ "name": name }))
    }
    pub fn name_unknown(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            "repository name not known to registry",
        )
        .with_detail(serde_json::json!({ "name": name }))
    }
    pub fn size_invalid(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::SizeInvalid, msg)
    }
    pub fn unsupported(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported, msg)
    }
    pub fn denied(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, msg)
    }
    pub fn too_many(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests, msg)
    }
    pub fn internal(msg: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {msg}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            msg.to_string(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if e.is_unavailable() {
            tracing::error!("storage unavailable: {e}");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                e.to_string(),
            )
            .with_header(header::RETRY_AFTER, "1");
        }
        match e {
            StoreError::Content(ContentError::DigestMismatch { .. }) => {
                ApiError::digest_invalid(e.to_string())
            }
            StoreError::Content(ContentError::TooLarge { .. }) => ApiError::size_invalid(e.to_string()),
            StoreError::Content(ContentError::NotFound(d)) => ApiError::blob_unknown(d),
            StoreError::Blob(BlobError::DigestMismatch { .. }) => ApiError::digest_invalid(e.to_string()),
            StoreError::Blob(BlobError::SizeMismatch { .. } | BlobError::TooLarge { .. }) => {
                ApiError::size_invalid(e.to_string())
            }
            StoreError::Blob(BlobError::NotFound(d)) => ApiError::blob_unknown(d),
            StoreError::Blob(BlobError::Io { ref source, .. })
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                tracing::error!("{e}");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    ErrorCode::Internal,
                    e.to_string(),
                )
            }
            StoreError::Manifest(_) | StoreError::LayerCountMismatch { .. } => {
                ApiError::manifest_invalid(e.to_string())
            }
            StoreError::MissingReference { digest, .. } => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::ManifestBlobUnknown,
                "manifest references a blob or manifest unknown to the repository",
            )
            .with_detail(serde_json::json!({ "digest": digest.to_string() })),
            other => ApiError::internal(other),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> ApiError {
        ApiError::from(StoreError::Blob(e))
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::internal(format!("worker task failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut entry = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(d) = self.detail {
            entry["detail"] = d;
        }
        let body = serde_json::to_vec(&serde_json::json!({ "errors": [entry] })).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in self.headers {
            h.append(k, v);
        }
        resp
    }
}

/// Result of a handler.
pub type ApiResult<T = Response> = Result<T, ApiError>;
