//! Access and refresh tokens: HS256 JWTs with the claims `sub`, `company_id`,
//! `role`, `typ`, `jti`, `iat`, `nbf`, `exp`, `iss`, `aud`, and `ver` (the
//! user's token version, bumped on password or role change).
//!
//! Validation accepts only HS256, requires every claim, checks issuer and
//! audience, and allows an explicit clock leeway of [`LEEWAY_SECS`](crate::auth::token::LEEWAY_SECS).

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{config::Config, domain::Role};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Which kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// Authorises API calls; short-lived.
    Access,
    /// Exchanged for a new pair at `/api/auth/refresh`; stored hashed, rotated.
    Refresh,
}

/// The JWT claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// The user's company.
    pub company_id: Uuid,
    /// The role at issue time.
    pub role: Role,
    /// Access or refresh.
    pub typ: TokenType,
    /// Unique token id.
    pub jti: Uuid,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user's token version at issue time.
    pub ver: i32,
}

/// Why a token is refused. Deliberately coarse: the client learns only that
/// the token is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Malformed, forged, wrong algorithm, issuer or audience, expired or not yet valid.
    #[error("invalid or expired token")]
    Invalid,
    /// A valid token of the other type (a refresh token used for access, or the reverse).
    #[error("wrong token type")]
    WrongType,
    /// Signing failed.
    #[error("cannot sign the token")]
    Sign,
}

/// Keys and policy for issuing and checking tokens.
#[derive(Clone)]
pub struct TokenCodec {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

impl std::fmt::Debug for TokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCodec")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// A freshly issued token and its claims.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The encoded JWT.
    pub token: String,
    /// Its claims.
    pub claims: Claims,
}

impl TokenCodec {
    /// Builds the codec from the configuration.
    pub fn from_config(config: &Config) -> Self {
        let secret = config.jwt_secret.expose().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            access_ttl: config.access_token_ttl,
            refresh_ttl: config.refresh_token_ttl,
        }
    }

    /// Access token lifetime.
    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// Refresh token lifetime.
    pub fn refresh_ttl(&self) -> Duration {
        self.refresh_ttl
    }

    /// Issues a token of `typ` for the user.
    ///
    /// # Errors
    /// [`TokenError::Sign`] if encoding fails.
    pub fn issue(
        &self,
        typ: TokenType,
        user_id: Uuid,
        company_id: Uuid,
        role: Role,
        version: i32,
    ) -> Result<IssuedToken, TokenError> {
        let now = Utc::now().timestamp();
        let ttl = match typ {
            TokenType::Access => self.access_ttl,
            TokenType::Refresh => self.refresh_ttl,
        };
        let claims = Claims {
            sub: user_id,
            company_id,
            role,
            typ,
            jti: Uuid::new_v4(),
            iat: now,
            nbf: now,
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            ver: version,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Sign)?;
        Ok(IssuedToken { token, claims })
    }

    /// Checks a token's signature, algorithm, issuer, audience, time window and type.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] or [`TokenError::WrongType`].
    pub fn verify(&self, token: &str, expected: TokenType) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let claims = decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| TokenError::Invalid)?
            .claims;
        if claims.typ != expected {
            return Err(TokenError::WrongType);
        }
        Ok(claims)
    }
}

/// SHA-256 of a token, hex: what `refresh_tokens.token_hash` stores.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::*;

    fn codec() -> TokenCodec {
        let config = Config::from_vars(HashMap::from([
            ("DATABASE_URL".into(), "postgres://x".into()),
            ("JWT_SECRET_KEY".into(), "k".repeat(40)),
        ]))
        .unwrap();
        TokenCodec::from_config(&config)
    }

    fn forge(claims: &serde_json::Value, header: &str, secret: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let h = URL_SAFE_NO_PAD.encode(header);
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        format!(
            "{h}.{p}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    fn claims_json(c: &TokenCodec, exp_offset: i64, nbf_offset: i64) -> serde_json::Value {
        let now = Utc::now().timestamp();
        serde_json::json!({"sub": Uuid::new_v4(), "company_id": Uuid::new_v4(), "role": "ADMIN", "typ": "access",
            "jti": Uuid::new_v4(), "iat": now, "nbf": now + nbf_offset, "exp": now + exp_offset, "iss": c.issuer, "aud": c.audience, "ver": 0})
    }

    #[test]
    fn an_issued_access_token_verifies() {
        let c = codec();
        let t = c
            .issue(
                TokenType::Access,
                Uuid::new_v4(),
                Uuid::new_v4(),
                Role::User,
                3,
            )
            .unwrap();
        let claims = c.verify(&t.token, TokenType::Access).unwrap();
        assert_eq!(claims, t.claims);
    }

    #[test]
    fn a_refresh_token_is_not_an_access_token() {
        let c = codec();
        let t = c
            .issue(
                TokenType::Refresh,
                Uuid::new_v4(),
                Uuid::new_v4(),
                Role::User,
                0,
            )
            .unwrap();
        assert_eq!(
            c.verify(&t.token, TokenType::Access),
            Err(TokenError::WrongType)
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let c = codec();
        let claims = claims_json(&c, 600, 0);
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(c.verify(&none, TokenType::Access), Err(TokenError::Invalid));
        let hs512 = forge(
            &claims,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            "k".repeat(40).as_bytes(),
        );
        assert_eq!(
            c.verify(&hs512, TokenType::Access),
            Err(TokenError::Invalid)
        );
        let good = forge(
            &claims,
            r#"{"alg":"HS256","typ":"JWT"}"#,
            "k".repeat(40).as_bytes(),
        );
        assert!(c.verify(&good, TokenType::Access).is_ok());
        let wrong_key = forge(
            &claims,
            r#"{"alg":"HS256","typ":"JWT"}"#,
            b"another-key-another-key-another-key!!",
        );
        assert_eq!(
            c.verify(&wrong_key, TokenType::Access),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn expiry_and_not_before_respect_the_explicit_leeway() {
        let c = codec();
        let secret = "k".repeat(40);
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let expired_61 = forge(&claims_json(&c, -61, -120), header, secret.as_bytes());
        assert_eq!(
            c.verify(&expired_61, TokenType::Access),
            Err(TokenError::Invalid)
        );
        let future_nbf = forge(&claims_json(&c, 600, 120), header, secret.as_bytes());
        assert_eq!(
            c.verify(&future_nbf, TokenType::Access),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn wrong_issuer_or_audience_is_refused() {
        let c = codec();
        let secret = "k".repeat(40);
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let mut claims = claims_json(&c, 600, 0);
        claims["iss"] = "someone-else".into();
        assert_eq!(
            c.verify(
                &forge(&claims, header, secret.as_bytes()),
                TokenType::Access
            ),
            Err(TokenError::Invalid)
        );
        let mut claims = claims_json(&c, 600, 0);
        claims["aud"] = "other-api".into();
        assert_eq!(
            c.verify(
                &forge(&claims, header, secret.as_bytes()),
                TokenType::Access
            ),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn a_flipped_payload_byte_breaks_the_signature() {
        let c = codec();
        let t = c
            .issue(
                TokenType::Access,
                Uuid::new_v4(),
                Uuid::new_v4(),
                Role::User,
                0,
            )
            .unwrap()
            .token;
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let mut payload = URL_SAFE_NO_PAD.decode(&parts[1]).unwrap();
        let i = payload.iter().position(|b| *b == b'U').unwrap();
        payload[i] = b'A';
        parts[1] = URL_SAFE_NO_PAD.encode(payload);
        assert_eq!(
            c.verify(&parts.join("."), TokenType::Access),
            Err(TokenError::Invalid)
        );
    }

    mod properties {
        use proptest::{collection, prelude::*, sample::select};

        use super::*;

        /// A valid token of `codec`, and its claims.
        fn issued(c: &TokenCodec, typ: TokenType) -> IssuedToken {
            c.issue(typ, Uuid::from_u128(7), Uuid::from_u128(9), Role::Admin, 1)
                .unwrap()
        }

        /// Edits of a token's text: a character replaced, a range removed,
        /// text inserted, a segment swapped or duplicated.
        #[derive(Debug, Clone)]
        enum Edit {
            Replace(prop::sample::Index, char),
            Remove(prop::sample::Index, usize),
            Insert(prop::sample::Index, String),
            SwapSegments(usize, usize),
            Truncate(prop::sample::Index),
        }

        fn any_edit() -> impl Strategy<Value = Edit> {
            let token_char = prop_oneof![
                select(vec![
                    'A', 'a', 'z', '0', '-', '_', '.', '=', '+', '/', ' ', '\u{0}', 'é'
                ]),
                any::<char>(),
            ];
            prop_oneof![
                (any::<prop::sample::Index>(), token_char).prop_map(|(i, c)| Edit::Replace(i, c)),
                (any::<prop::sample::Index>(), 1usize..8).prop_map(|(i, n)| Edit::Remove(i, n)),
                (any::<prop::sample::Index>(), "[A-Za-z0-9_.=-]{1,8}")
                    .prop_map(|(i, s)| Edit::Insert(i, s)),
                (0usize..3, 0usize..3).prop_map(|(a, b)| Edit::SwapSegments(a, b)),
                any::<prop::sample::Index>().prop_map(Edit::Truncate),
            ]
        }

        fn apply(token: &str, edit: &Edit) -> String {
            let chars: Vec<char> = token.chars().collect();
            if chars.is_empty() {
                return token.to_owned();
            }
            match edit {
                Edit::Replace(i, c) => {
                    let mut chars = chars;
                    let at = i.index(chars.len());
                    chars[at] = *c;
                    chars.into_iter().collect()
                }
                Edit::Remove(i, n) => {
                    let at = i.index(chars.len());
                    let end = (at + n).min(chars.len());
                    chars[..at].iter().chain(&chars[end..]).collect()
                }
                Edit::Insert(i, s) => {
                    let at = i.index(chars.len() + 1);
                    let (head, tail) = chars.split_at(at);
                    head.iter().collect::<String>() + s + &tail.iter().collect::<String>()
                }
                Edit::SwapSegments(a, b) => {
                    let mut parts: Vec<&str> = token.split('.').collect();
                    if parts.len() == 3 {
                        let copy = parts[*a];
                        parts[*b] = copy;
                    }
                    parts.join(".")
                }
                Edit::Truncate(i) => chars[..i.index(chars.len())].iter().collect(),
            }
        }

        /// A claim value of any JSON type, with the edge numbers `exp`,
        /// `nbf` and `iat` arithmetic could trip on.
        fn any_claim() -> impl Strategy<Value = serde_json::Value> {
            prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                select(vec![i64::MIN, -1, 0, 1, i64::MAX, 4_102_444_800])
                    .prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<u64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(|f| serde_json::json!(f)),
                ".{0,12}".prop_map(serde_json::Value::from),
                select(vec![
                    "access", "refresh", "ADMIN", "USER", "txdx", "txdx-api"
                ])
                .prop_map(serde_json::Value::from),
                Just(serde_json::json!(Uuid::from_u128(7))),
                Just(serde_json::json!(["txdx-api"])),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_string_is_refused_without_a_panic(token in ".{0,300}") {
                let c = codec();
                prop_assert!(c.verify(&token, TokenType::Access).is_err());
                prop_assert!(c.verify(&token, TokenType::Refresh).is_err());
            }

            #[test]
            fn three_base64_segments_of_any_bytes_are_refused(
                parts in collection::vec(collection::vec(any::<u8>(), 0..80), 3),
            ) {
                let c = codec();
                let token = parts.iter().map(|p| URL_SAFE_NO_PAD.encode(p)).collect::<Vec<_>>().join(".");
                prop_assert!(c.verify(&token, TokenType::Access).is_err());
            }

            #[test]
            fn an_edited_valid_token_never_verifies_as_other_claims(
                edits in collection::vec(any_edit(), 1..4),
                typ in prop_oneof![Just(TokenType::Access), Just(TokenType::Refresh)],
            ) {
                let c = codec();
                let original = issued(&c, typ);
                let mut token = original.token.clone();
                for edit in &edits {
                    token = apply(&token, edit);
                }
                // An edit may leave the token as it was (or change only
                // bits base64 ignores): then, and only then, it verifies,
                // and to the very same claims.
                match c.verify(&token, typ) {
                    Ok(claims) => prop_assert_eq!(claims, original.claims),
                    Err(e) => prop_assert_eq!(e, TokenError::Invalid),
                }
            }

            #[test]
            fn correctly_signed_tokens_with_hostile_claims_verify_only_when_every_rule_holds(
                overrides in collection::btree_map(
                    select(vec!["sub", "company_id", "role", "typ", "jti", "iat", "nbf", "exp", "iss", "aud", "ver", "extra"]),
                    any_claim(),
                    0..5,
                ),
                removed in collection::btree_set(select(vec!["sub", "exp", "nbf", "iss", "aud", "typ"]), 0..2),
                header in select(vec![
                    r#"{"alg":"HS256","typ":"JWT"}"#,
                    r#"{"alg":"HS256"}"#,
                    r#"{"alg":"hs256","typ":"JWT"}"#,
                    r#"{"alg":"none"}"#,
                    r#"{"alg":"HS256","crit":["exp"]}"#,
                    r#"{"alg":"HS256","kid":"../../etc/passwd"}"#,
                    r#"{}"#,
                    r#"[]"#,
                ]),
            ) {
                let c = codec();
                let mut claims = claims_json(&c, 600, 0);
                for (name, value) in &overrides {
                    claims[*name] = value.clone();
                }
                for name in &removed {
                    claims.as_object_mut().unwrap().remove(*name);
                }
                let token = forge(&claims, header, "k".repeat(40).as_bytes());
                if let Ok(verified) = c.verify(&token, TokenType::Access) {
                    // Accepted: it must be a well-formed HS256 access token of
                    // this issuer and audience, inside its time window.
                    let now = Utc::now().timestamp();
                    prop_assert!(header.contains(r#""alg":"HS256""#));
                    prop_assert_eq!(verified.typ, TokenType::Access);
                    prop_assert_eq!(&verified.iss, &c.issuer);
                    prop_assert_eq!(&verified.aud, &c.audience);
                    prop_assert!(verified.exp.saturating_add(LEEWAY_SECS as i64) >= now, "{:?}", verified);
                    prop_assert!(verified.nbf.saturating_sub(LEEWAY_SECS as i64) <= now, "{:?}", verified);
                    prop_assert_eq!(serde_json::to_value(&verified).unwrap()["sub"].clone(), claims["sub"].clone());
                }
            }
        }
    }
}
