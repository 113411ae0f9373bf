//! The local secret store: credentials sealed with XChaCha20-Poly1305 in the
//! `local_secrets` table, under a 32-byte key from `TXDX_LOCAL_SECRET_KEY`
//! (base64) or a key file created with mode 0600 on first use.
//!
//! The secret's name and version are the AEAD's associated data: a
//! ciphertext copied to another row, or altered, fails to open.

use std::path::Path;

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

use super::{SecretError, SecretStore, SecretValue, name_belongs_to, secret_name};

/// A sealed-box store in Postgres.
pub struct LocalSecretStore {
    pool: PgPool,
    cipher: XChaCha20Poly1305,
    key_source: String,
}

impl LocalSecretStore {
    /// Builds the store from a base64 key, or from (creating if absent) a key file.
    ///
    /// # Errors
    /// A permanent error when the key is malformed or the file cannot be
    /// read or created.
    pub fn new(pool: PgPool, key_b64: Option<&str>, key_file: &Path) -> Result<Self, SecretError> {
        let (key, key_source) = match key_b64 {
            Some(b64) => (
                decode_key(b64, "TXDX_LOCAL_SECRET_KEY")?,
                "TXDX_LOCAL_SECRET_KEY".to_owned(),
            ),
            None => (
                load_or_create_key_file(key_file)?,
                format!("key file {}", key_file.display()),
            ),
        };
        let cipher = XChaCha20Poly1305::new_from_slice(&key)
            .map_err(|_| SecretError::Permanent("the local secret key must be 32 bytes".into()))?;
        Ok(Self {
            pool,
            cipher,
            key_source,
        })
    }

    fn aad(name: &str, version: i32) -> Vec<u8> {
        format!("txdx-local-secret:{name}:{version}").into_bytes()
    }

    fn parse_id(id: &str) -> Result<(&str, i32), SecretError> {
        let rest = id.strip_prefix("local:").ok_or(SecretError::NotFound)?;
        let (name, version) = rest.rsplit_once(':').ok_or(SecretError::NotFound)?;
        let version = version.parse().map_err(|_| SecretError::NotFound)?;
        Ok((name, version))
    }
}

fn decode_key(b64: &str, source: &str) -> Result<Vec<u8>, SecretError> {
    let key = STANDARD
        .decode(b64.trim())
        .map_err(|_| SecretError::Permanent(format!("{source} is not valid base64")))?;
    if key.len() != 32 {
        return Err(SecretError::Permanent(format!(
            "{source} must decode to 32 bytes, got {}",
            key.len()
        )));
    }
    Ok(key)
}

fn load_or_create_key_file(path: &Path) -> Result<Vec<u8>, SecretError> {
    match std::fs::read_to_string(path) {
        Ok(content) => decode_key(&content, &format!("key file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    SecretError::Permanent(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            write_private(path, STANDARD.encode(key).as_bytes())?;
            Ok(key.to_vec())
        }
        Err(e) => Err(SecretError::Permanent(format!(
            "cannot read key file {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, content: &[u8]) -> Result<(), SecretError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SecretError::Permanent(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(content)
        .map_err(|e| SecretError::Permanent(format!("cannot write {}: {e}", path.display())))
}

#[cfg(not(unix))]
fn write_private(path: &Path, content: &[u8]) -> Result<(), SecretError> {
    std::fs::write(path, content)
        .map_err(|e| SecretError::Permanent(format!("cannot write {}: {e}", path.display())))
}

fn db_error(e: sqlx::Error) -> SecretError {
    SecretError::Transient {
        message: format!("local secret store: {e}"),
        retry_after_secs: None,
    }
}

#[async_trait]
impl SecretStore for LocalSecretStore {
    async fn put(
        &self,
        company_id: Uuid,
        integration_id: Uuid,
        value: &SecretValue,
    ) -> Result<String, SecretError> {
        let name = secret_name(company_id, integration_id);
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // Serialise writers of one name so versions stay unique.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(&name)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let version: i32 = sqlx::query_scalar(
            "SELECT coalesce(max(version), 0) + 1 FROM local_secrets WHERE name = $1",
        )
        .bind(&name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let aad = Self::aad(&name, version);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value.expose().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Permanent("encryption failed".into()))?;
        sqlx::query(
            "INSERT INTO local_secrets (name, version, nonce, ciphertext) VALUES ($1, $2, $3, $4)",
        )
        .bind(&name)
        .bind(version)
        .bind(&nonce[..])
        .bind(&ciphertext)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(format!("local:{name}:{version}"))
    }

    async fn get(&self, company_id: Uuid, id: &str) -> Result<SecretValue, SecretError> {
        let (name, version) = Self::parse_id(id)?;
        if !name_belongs_to(name, company_id) {
            return Err(SecretError::NotFound);
        }
        let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT nonce, ciphertext FROM local_secrets WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let (nonce, ciphertext) = row.ok_or(SecretError::NotFound)?;
        if nonce.len() != 24 {
            return Err(SecretError::Permanent("stored nonce is malformed".into()));
        }
        let aad = Self::aad(name, version);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                SecretError::Permanent(
                    "cannot decrypt the secret: wrong TXDX_LOCAL_SECRET_KEY or tampered data"
                        .into(),
                )
            })?;
        String::from_utf8(plain)
            .map(SecretValue::new)
            .map_err(|_| SecretError::Permanent("decrypted secret is not UTF-8".into()))
    }

    async fn delete(&self, company_id: Uuid, id: &str) -> Result<(), SecretError> {
        let (name, _) = Self::parse_id(id)?;
        if !name_belongs_to(name, company_id) {
            return Err(SecretError::NotFound);
        }
        sqlx::query("DELETE FROM local_secrets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "local encrypted secret store (XChaCha20-Poly1305, key from {}); set AZURE_KEY_VAULT_URL to use Azure Key Vault",
            self.key_source
        )
    }

    async fn check(&self) -> Result<(), SecretError> {
        sqlx::query("SELECT 1 FROM local_secrets LIMIT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
