//! The one error type of the HTTP layer, written as the distribution spec's
//! error JSON: `{"errors":[{"code","message","detail"}]}`.
//!
//! Every storage meaning maps to a status and code in one table
//! (`From<StorageError>`). Server-side failures use `UNKNOWN` (500) and
//! `UNAVAILABLE` (503), as distribution does: the spec lists only client
//! errors. 5xx responses carry their cause in an extension that the request
//! middleware logs once.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use slipway_storage::StorageError;

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
    /// A server-side failure (500).
    Unknown,
    /// A backing service is down (503).
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
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
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<Value>,
    /// Headers the answer carries (boxed: errors travel in every `Result`).
    pub headers: Box<HeaderMap>,
    /// Whether this is the quota's refusal (`StorageError::QuotaExceeded`).
    quota: bool,
}

/// The cause of a 5xx response, for the request log.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub String);

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Box::default(),
            quota: false,
        }
    }

    /// Whether the quota refused the request (new bytes that do not fit).
    pub fn is_quota_refusal(&self) -> bool {
        self.quota
    }

    pub fn with_detail(mut self, detail: Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unsupported(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unknown,
            message,
        )
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        use ErrorCode as C;
        use StatusCode as S;
        let message = e.to_string();
        let (status, code, detail) = match &e {
            StorageError::DigestInvalid(_) => (S::BAD_REQUEST, C::DigestInvalid, None),
            StorageError::DigestMismatch { expected, actual } => (
                S::BAD_REQUEST,
                C::DigestInvalid,
                Some(json!({"expected": expected, "actual": actual})),
            ),
            StorageError::NameInvalid(_) => (S::BAD_REQUEST, C::NameInvalid, None),
            StorageError::RepositoryUnknown(name) => {
                (S::NOT_FOUND, C::NameUnknown, Some(json!({"name": name})))
            }
            StorageError::BlobUnknown(d) => {
                (S::NOT_FOUND, C::BlobUnknown, Some(json!({"digest": d})))
            }
            StorageError::UploadUnknown(_) => (S::NOT_FOUND, C::BlobUploadUnknown, None),
            StorageError::UploadOffset { .. } | StorageError::UploadBusy(_) => {
                (S::RANGE_NOT_SATISFIABLE, C::BlobUploadInvalid, None)
            }
            StorageError::SizeInvalid(_) => (S::BAD_REQUEST, C::SizeInvalid, None),
            StorageError::ManifestUnknown(_) => (S::NOT_FOUND, C::ManifestUnknown, None),
            StorageError::ManifestInvalid(_) => (S::BAD_REQUEST, C::ManifestInvalid, None),
            StorageError::ManifestBlobUnknown(d) => (
                S::BAD_REQUEST,
                C::ManifestBlobUnknown,
                Some(json!({"digest": d})),
            ),
            StorageError::Conflict(_) => (S::CONFLICT, C::Denied, None),
            StorageError::QuotaExceeded {
                project,
                used,
                reserved,
                quota,
                needed,
            } => (
                S::FORBIDDEN,
                C::Denied,
                Some(json!({
                    "project": project,
                    "used_bytes": used,
                    "reserved_bytes": reserved,
                    "quota_bytes": quota,
                    "needed_bytes": needed,
                })),
            ),
            StorageError::UploadHeadroom {
                project,
                in_flight,
                limit,
                needed,
            } => (
                S::FORBIDDEN,
                C::Denied,
                Some(json!({
                    "project": project,
                    "in_flight_bytes": in_flight,
                    "limit_bytes": limit,
                    "needed_bytes": needed,
                })),
            ),
            StorageError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, C::SizeInvalid, None),
            StorageError::BodyIncomplete(_) => (S::BAD_REQUEST, C::BlobUploadInvalid, None),
            StorageError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, C::Unavailable, None),
            // 507: the server cannot store what it was asked to, now; the
            // request may succeed once space is freed (RFC 4918 11.5).
            StorageError::Full(_) => (S::INSUFFICIENT_STORAGE, C::Unknown, None),
            StorageError::Corrupt(_)
            | StorageError::Io(_)
            | StorageError::Database(_)
            | StorageError::Migrate(_) => (S::INTERNAL_SERVER_ERROR, C::Unknown, None),
        };
        let mut err = ApiError::new(status, code, message);
        err.detail = detail;
        err.quota = matches!(e, StorageError::QuotaExceeded { .. });
        if status.is_server_error() {
            // The cause goes to the log; the client gets a plain sentence.
            err.detail = Some(json!({"cause": e.to_string()}));
            err.message = match status {
                S::SERVICE_UNAVAILABLE => "storage is unavailable right now; retry later".into(),
                S::INSUFFICIENT_STORAGE => "the registry's storage is full: nothing of this \
                     request was kept; retry once an operator has freed space"
                    .into(),
                _ => "the server failed to handle the request".into(),
            };
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut cause = None;
        let detail = if self.status.is_server_error() {
            cause = self
                .detail
                .as_ref()
                .and_then(|d| d.get("cause"))
                .and_then(|c| c.as_str())
                .map(str::to_owned);
            None
        } else {
            self.detail
        };
        let mut entry = json!({"code": self.code.as_str(), "message": self.message});
        if let Some(d) = detail {
            entry["detail"] = d;
        }
        let body = json!({"errors": [entry]}).to_string();
        let mut resp = (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        resp.headers_mut().extend(*self.headers);
        if self.status.is_server_error() {
            resp.extensions_mut()
                .insert(ErrorCause(cause.unwrap_or_else(|| self.message.clone())));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_storage::Digest;

    #[test]
    fn storage_errors_map_to_spec_codes() {
        let d = Digest::sha256_of(b"x");
        let cases: Vec<(StorageError, u16, &str)> = vec![
            (
                StorageError::DigestInvalid("x".into()),
                400,
                "DIGEST_INVALID",
            ),
            (
                StorageError::DigestMismatch {
                    expected: d.clone(),
                    actual: d.clone(),
                },
                400,
                "DIGEST_INVALID",
            ),
            (StorageError::NameInvalid("x".into()), 400, "NAME_INVALID"),
            (
                StorageError::RepositoryUnknown("x".into()),
                404,
                "NAME_UNKNOWN",
            ),
            (StorageError::BlobUnknown(d.clone()), 404, "BLOB_UNKNOWN"),
            (
                StorageError::UploadUnknown("x".into()),
                404,
                "BLOB_UPLOAD_UNKNOWN",
            ),
            (
                StorageError::UploadOffset {
                    have: 1,
                    offered: 2,
                },
                416,
                "BLOB_UPLOAD_INVALID",
            ),
            (StorageError::SizeInvalid("x".into()), 400, "SIZE_INVALID"),
            (
                StorageError::ManifestUnknown("x".into()),
                404,
                "MANIFEST_UNKNOWN",
            ),
            (
                StorageError::ManifestInvalid("x".into()),
                400,
                "MANIFEST_INVALID",
            ),
            (
                StorageError::ManifestBlobUnknown(d.clone()),
                400,
                "MANIFEST_BLOB_UNKNOWN",
            ),
            (StorageError::Conflict("x".into()), 409, "DENIED"),
            (StorageError::TooLarge("x".into()), 413, "SIZE_INVALID"),
            (
                StorageError::BodyIncomplete("x".into()),
                400,
                "BLOB_UPLOAD_INVALID",
            ),
            (StorageError::Unavailable("x".into()), 503, "UNAVAILABLE"),
            (StorageError::Corrupt("x".into()), 500, "UNKNOWN"),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e);
            assert_eq!(api.status.as_u16(), status, "{code}");
            assert_eq!(api.code.as_str(), code);
        }
    }

    #[test]
    fn internal_causes_stay_out_of_the_body() {
        let resp = ApiError::from(StorageError::Corrupt("secret path /x".into())).into_response();
        assert_eq!(resp.status(), 500);
        let cause = resp.extensions().get::<ErrorCause>().unwrap();
        assert!(cause.0.contains("secret path"));
    }
}
