//! The page parameters of the list endpoints: `limit` (1 to
//! [`MAX_LIMIT`](crate::pagination::MAX_LIMIT), default
//! [`DEFAULT_LIMIT`](crate::pagination::DEFAULT_LIMIT)) and `offset` (0 to
//! [`MAX_OFFSET`](crate::pagination::MAX_OFFSET), the documented int32 range).
//!
//! A value outside its range is refused with 400 naming the parameter rather
//! than silently clamped: what the OpenAPI document says is invalid, the API
//! refuses (Schemathesis' negative-data check holds us to it).

use serde::{Deserialize, Deserializer, de::Error as _};

/// Largest page.
pub const MAX_LIMIT: u32 = 200;
/// Page size when the request names none.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest offset: the top of the int32 range the document declares.
pub const MAX_OFFSET: u32 = i32::MAX as u32;

fn in_range<'de, D: Deserializer<'de>>(
    deserializer: D,
    min: u32,
    max: u32,
) -> Result<Option<u32>, D::Error> {
    match Option::<u32>::deserialize(deserializer)? {
        Some(value) if !(min..=max).contains(&value) => Err(D::Error::custom(format!(
            "must be between {min} and {max}, not {value}"
        ))),
        other => Ok(other),
    }
}

/// `deserialize_with` for an optional `limit`.
///
/// # Errors
/// Not a number, or outside 1 to [`MAX_LIMIT`].
pub fn limit<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    in_range(deserializer, 1, MAX_LIMIT)
}

/// `deserialize_with` for an optional `offset`.
///
/// # Errors
/// Not a number, or above [`MAX_OFFSET`].
pub fn offset<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    in_range(deserializer, 0, MAX_OFFSET)
}
