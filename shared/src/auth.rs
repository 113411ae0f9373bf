//! Authentication primitives with no HTTP in them: argon2id password hashing
//! and the access/refresh token codec.

/// Password policy and argon2id hashing.
pub mod password;
/// JWT claims, encoding and validation.
pub mod token;
