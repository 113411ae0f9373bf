//! Extractors whose rejections are [`ApiError`]s, so malformed JSON, unknown
//! fields, wrong types and bad path parameters answer with a problem document;
//! and the rules every JSON body is read by (structs from objects only, no
//! U+0000 anywhere).

use std::{fmt, marker::PhantomData};

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, rejection::BytesRejection},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{DeserializeOwned, DeserializeSeed, SeqAccess, Visitor},
};

use crate::error::ApiError;

/// A JSON request body with problem+json rejections.
///
/// Unlike `axum::Json`, it tells a body that is not JSON at all (400) from
/// JSON that does not fit the type (422 naming the field): the body is first
/// checked to be well-formed, then deserialized with the path of the field at
/// fault kept. (serde_json reports some type mismatches, a number where an
/// enum's string belongs, as syntax errors; and a syntax error after an unknown
/// key would be reported as the unknown key.)
///
/// Two things well-formed JSON may not do either, each a 422 naming the
/// field: hold U+0000 in a string or key (Postgres stores it in neither
/// `text` nor `jsonb`), or give an array where a struct's object belongs.
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
    /// A string (or key) holding U+0000, which Postgres cannot store in
    /// `text` or `jsonb`: refused up front rather than failing the insert.
    NulCharacter {
        /// The path of the string, as in [`JsonBodyError::Mismatch`] (`body` at the top).
        field: String,
    },
}

/// The path (`actions[0].params.note`) of the first string or object key
/// holding U+0000, if any; `path` is the path of `value`, empty at the top.
fn nul_character_at(value: &serde_json::Value, path: &mut String) -> Option<String> {
    use serde_json::Value;
    let here = |path: &str| {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path.to_owned()
        }
    };
    match value {
        Value::String(text) => text.contains('\0').then(|| here(path)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = nul_character_at(item, path);
            path.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                return Some(here(path));
            }
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
            let found = nul_character_at(item, path);
            path.truncate(len);
            found
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
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
        let document = serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(JsonBodyError::Malformed)?;
        if let Some(field) = nul_character_at(&document, &mut String::new()) {
            return Err(JsonBodyError::NulCharacter { field }.into());
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let ObjectsOnly(value) =
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

/// A body type read as JSON objects only.
///
/// serde's derived structs also accept a JSON array of their fields in
/// order (`[null, null]` is an `UpdateTicketRequest`), which the OpenAPI
/// document does not allow and no client means; a struct read through
/// [`ObjectDeserializer`] takes an object or nothing. Nested structs in
/// lists are read the same way with [`objects`].
struct ObjectsOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectsOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(ObjectDeserializer(deserializer)).map(Self)
    }
}

/// A deserializer that reads a struct from a map (a JSON object) only, and
/// everything else as the deserializer it wraps does.
pub struct ObjectDeserializer<D>(pub D);

macro_rules! forward {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectDeserializer<D> {
    type Error = D::Error;

    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple_struct(name, len, visitor)
    }

    /// The one change: a struct is read as a map, never as a sequence.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// `deserialize_with` for a list of structs, each read as a JSON object
/// only (see [`ObjectDeserializer`]); the path of a bad element
/// (`actions[2].action`) is kept.
///
/// # Errors
/// Not an array, or an element that is not an object of the struct's fields.
pub fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Element<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Element<T> {
        type Value = T;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
            T::deserialize(ObjectDeserializer(deserializer))
        }
    }

    struct List<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for List<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of objects")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            // The hint comes from the input: trust it only a little.
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(32));
            while let Some(item) = seq.next_element_seed(Element(PhantomData))? {
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_seq(List(PhantomData))
}

/// `axum::extract::Path` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `axum::extract::Query` with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);
