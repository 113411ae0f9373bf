//! Passwords: a stated policy and argon2id hashing with OWASP's minimum
//! parameters (19 MiB memory, 2 iterations, 1 lane).
//!
//! Hashing is CPU-bound (~tens of ms): callers run it off the async
//! executor with bounded concurrency (the api's `hashing` module).

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::{SaltString, rand_core::OsRng},
};

/// Shortest accepted password.
pub const MIN_LENGTH: usize = 12;
/// Longest accepted password (bounds hashing cost).
pub const MAX_LENGTH: usize = 128;

/// Why a password is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// The policy refuses it; the message says why.
    #[error("{0}")]
    Policy(String),
    /// Hashing failed (should not happen with valid parameters).
    #[error("password hashing failed")]
    Hash,
}

/// The policy: 12 to 128 characters, not one character repeated, and not
/// the username.
///
/// # Errors
/// [`PasswordError::Policy`] saying what to change.
pub fn check_policy(password: &str, username: &str) -> Result<(), PasswordError> {
    let len = password.chars().count();
    if len < MIN_LENGTH {
        return Err(PasswordError::Policy(format!(
            "must be at least {MIN_LENGTH} characters"
        )));
    }
    if len > MAX_LENGTH {
        return Err(PasswordError::Policy(format!(
            "must be at most {MAX_LENGTH} characters"
        )));
    }
    let mut chars = password.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return Err(PasswordError::Policy(
            "must not be one character repeated".into(),
        ));
    }
    if password.eq_ignore_ascii_case(username) {
        return Err(PasswordError::Policy("must not be the username".into()));
    }
    Ok(())
}

fn hasher() -> Argon2<'static> {
    // OWASP password storage cheat sheet: argon2id, m=19456 KiB, t=2, p=1.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string.
///
/// # Errors
/// [`PasswordError::Hash`] if the hasher fails.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Hash)
}

/// Whether `password` matches the PHC string `hash`. A malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A valid hash of a random password, verified against when the username is
/// unknown so that answer costs the same time as a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = uuid::Uuid::new_v4().to_string();
        hash_password(&random).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterx", &hash));
        assert!(!verify_password("x", "not a phc string"));
    }

    #[test]
    fn the_policy_states_its_rule() {
        assert!(
            check_policy("short", "u")
                .unwrap_err()
                .to_string()
                .contains("at least 12")
        );
        assert!(check_policy("aaaaaaaaaaaaaaa", "u").is_err());
        assert!(check_policy("alice-the-admin", "alice-the-admin").is_err());
        assert!(check_policy(&"x".repeat(129), "u").is_err());
        assert!(check_policy("a good passphrase", "alice").is_ok());
    }
}
