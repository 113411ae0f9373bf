//! Passwords: a stated policy and argon2id hashing at OWASP's parameters
//! (7 MiB memory, 5 iterations, 1 lane), and the check that says when a
//! stored hash was made with other parameters and is due to be replaced.
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

/// Memory of one hash, KiB.
const MEMORY_KIB: u32 = 7 * 1024;
/// Passes over that memory.
const PASSES: u32 = 5;
/// Lanes.
const LANES: u32 = 1;

/// argon2id at m=7168 KiB, t=5, p=1: one of the five configurations the OWASP
/// password storage cheat sheet lists as giving the same defence (19 MiB and
/// 2 passes is another; each trades memory for passes at about the same
/// CPU time). It is the one with the least memory: each hash writes its
/// whole block, and 19 MiB swept the machine's shared last-level cache (32
/// MiB here) out from under the database and the api's other requests
/// (BENCHMARKS.md, "Logins that leave the cache alone").
fn hasher() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).unwrap_or_default();
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

/// Whether the stored `hash` was made otherwise than [`hash_password`]
/// makes one now (another algorithm, version or cost): a login that has
/// just verified it stores a fresh hash of the same password. A malformed
/// hash is not due: it never verifies.
pub fn needs_rehash(hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let current = (Algorithm::Argon2id.ident(), u32::from(Version::V0x13));
    if (parsed.algorithm, parsed.version.unwrap_or(0)) != current {
        return true;
    }
    Params::try_from(&parsed).map_or(true, |p| {
        (p.m_cost(), p.t_cost(), p.p_cost()) != (MEMORY_KIB, PASSES, LANES)
    })
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
        assert!(hash.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterx", &hash));
        assert!(!verify_password("x", "not a phc string"));
        assert!(!needs_rehash(&hash));
        assert!(!needs_rehash(dummy_hash()));
    }

    #[test]
    fn a_hash_made_with_other_parameters_verifies_and_is_due_for_a_new_one() {
        let salt = SaltString::generate(&mut OsRng);
        for (algorithm, m, t) in [
            (Algorithm::Argon2id, 19 * 1024, 2),
            (Algorithm::Argon2id, MEMORY_KIB, PASSES + 1),
            (Algorithm::Argon2i, MEMORY_KIB, PASSES),
        ] {
            let params = Params::new(m, t, LANES, None).unwrap();
            let old = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"correct horse battery", &salt)
                .unwrap()
                .to_string();
            assert!(verify_password("correct horse battery", &old), "{old}");
            assert!(!verify_password("correct horse batterx", &old), "{old}");
            assert!(needs_rehash(&old), "{old}");
        }
        assert!(!needs_rehash("not a phc string"));
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
