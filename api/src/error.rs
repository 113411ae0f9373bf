//! The one place that knows HTTP status codes: every failure becomes an
//! RFC 9457 `application/problem+json` response here.

use axum::{
    Json,
    extract::rejection::{PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type (`about:blank` when only the status matters).
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub type_: String,
    /// Short summary of the problem type.
    #[schema(example = "Unprocessable Entity")]
    pub title: String,
    /// The HTTP status.
    #[schema(example = 422)]
    pub status: u16,
    /// What went wrong with this request, precisely.
    #[schema(example = "subject: must not be empty")]
    pub detail: String,
    /// The field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Every error a handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be parsed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource (or another company's).
    #[error("{0}")]
    NotFound(String),
    /// 405: wrong method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: conflicts with existing state.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body exceeds the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid; names the field.
    #[error("{field}: {message}")]
    Unprocessable {
        /// The offending field (dotted path).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// 429: slow down.
    #[error("{message}")]
    TooManyRequests {
        /// Explanation.
        message: String,
        /// Seconds until a retry may succeed.
        retry_after_secs: u64,
    },
    /// 503: a dependency (the database) is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// 503 with `Retry-After: 1`: the api is at its limit of requests in flight.
    #[error("{0}")]
    Overloaded(String),
    /// 500: a bug or an unexpected failure; the cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A 422 naming a field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            field: field.into(),
            message: message.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                "an unexpected error occurred; it has been logged".to_owned()
            }
            Self::Unavailable(reason) => {
                tracing::warn!(reason = %reason, "dependency unavailable");
                self.to_string()
            }
            other => other.to_string(),
        };
        let field = match &self {
            Self::Unprocessable { field, .. } => Some(field.clone()),
            _ => None,
        };
        let problem = Problem {
            type_: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail,
            field,
        };
        let mut response = (status, Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::TooManyRequests {
            retry_after_secs, ..
        } = self
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs.max(1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if let Self::Overloaded(_) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<shared::db::DbError> for ApiError {
    fn from(err: shared::db::DbError) -> Self {
        use shared::db::DbError;
        match err {
            DbError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            DbError::Conflict(what) => Self::Conflict(what),
            DbError::Invalid { field, message } => Self::invalid(field, message),
            DbError::UserGone => Self::Unauthorized("the token's user no longer exists".into()),
            DbError::Unavailable(_) => {
                Self::Unavailable("the database is unavailable; retry shortly".into())
            }
            DbError::Other(e) => Self::Internal(e.into()),
        }
    }
}

impl From<crate::extract::JsonBodyError> for ApiError {
    fn from(rejection: crate::extract::JsonBodyError) -> Self {
        use crate::extract::JsonBodyError;
        match rejection {
            JsonBodyError::NotJson => Self::UnsupportedMediaType(
                "expected a body with `Content-Type: application/json`".into(),
            ),
            JsonBodyError::Unreadable(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge(format!(
                    "the request body exceeds the limit of {} bytes",
                    crate::BODY_LIMIT_BYTES
                ))
            }
            JsonBodyError::Unreadable(e) => {
                Self::BadRequest(format!("cannot read the request body: {}", e.body_text()))
            }
            JsonBodyError::Malformed(e) => Self::BadRequest(format!("malformed JSON: {e}")),
            JsonBodyError::NulCharacter { field } => Self::Unprocessable {
                field,
                message: "must not contain the NUL character (U+0000)".into(),
            },
            JsonBodyError::Mismatch(e) => {
                let (field, message) = mismatch_field(&e);
                Self::Unprocessable { field, message }
            }
        }
    }
}

/// The field a well-formed body is wrong at, as a dotted path
/// (`actions[0].integration_id`), and serde's message without its position
/// suffix. A missing field is named by its own path; an error at the top
/// level (the body is not an object) is named `body`.
fn mismatch_field(e: &serde_path_to_error::Error<serde_json::Error>) -> (String, String) {
    let message = if e.inner().is_data() {
        let message = e.inner().to_string();
        match message.rfind(" at line ") {
            Some(at) => message[..at].to_owned(),
            None => message,
        }
    } else {
        // serde_json reports a number or object where an enum's string
        // belongs as "expected value", a syntax error, on well-formed JSON.
        "invalid value: not of the expected type".to_owned()
    };
    let path = e.path().to_string();
    let path = (path != ".").then_some(path);
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned());
    let field = match (path, missing) {
        (Some(path), Some(name)) => format!("{path}.{name}"),
        (None, Some(name)) => name,
        (Some(path), None) => path,
        (None, None) => "body".to_owned(),
    };
    (field, message)
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest(format!("invalid path parameter: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(format!("invalid query string: {}", rejection.body_text()))
    }
}
