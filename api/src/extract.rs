//! Extractors whose rejections are [`ApiError`]s, so malformed JSON, unknown
//! fields, wrong types and bad path parameters answer with a problem document.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, rejection::BytesRejection},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::error::ApiError;

/// A JSON request body with problem+json rejections.
///
/// Unlike `axum::Json`, it tells a body that is not JSON at all (400) from
/// JSON that does not fit the type (422 naming the field): the body is first
/// checked to be well-formed, then deserialized with the path of the field at
/// fault kept. (serde_json reports some type mismatches, a number where an
/// enum's string belongs, as syntax errors; and a syntax error after an unknown
/// key would be reported as the unknown key.)
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// Why a JSON body was refused; mapped to a status in `error.rs`.
#[derive(Debug)]
pub enum JsonBodyError {
    /// No `Content-Type: application/json` (or `application/*+json`).
    NotJson,
    /// The body could not be read (too large, or the connection failed).
    Unreadable(BytesRejection),
    /// Not well-formed JSON.
    Malformed(serde_json::Error),
    /// Well-formed JSON that does not fit the request type, with the path of the field.
    Mismatch(serde_path_to_error::Error<serde_json::Error>),
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(JsonBodyError::NotJson.into());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(JsonBodyError::Unreadable)?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            .map_err(JsonBodyError::Malformed)?;
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value =
            serde_path_to_error::deserialize(&mut deserializer).map_err(JsonBodyError::Mismatch)?;
        Ok(Self(value))
    }
}

/// An optional JSON body: an empty body without a JSON content type is
/// `None`; anything else is parsed as [`Json`] is.
impl<T, S> axum::extract::OptionalFromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if is_json_content_type(req.headers()) {
            return <Self as FromRequest<S>>::from_request(req, state)
                .await
                .map(Some);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(JsonBodyError::Unreadable)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Ok(None)
        } else {
            Err(JsonBodyError::NotJson.into())
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);
