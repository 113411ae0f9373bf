//! The local encrypted secret store against a real Postgres: round trips,
//! keys, tampering, tenancy, and what actually lands in the table.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test set-up and assertions fail the test on error"
)]

use std::path::{Path, PathBuf};

use base64::{Engine, engine::general_purpose::STANDARD};
use rand::RngCore;
use shared::{
    db,
    secrets::{SecretError, SecretStore, SecretValue, local::LocalSecretStore, secret_name},
};
use sqlx::PgPool;
use uuid::Uuid;

const CREDENTIALS: &str = r#"{"api_key":"sk-local-plaintext-marker-7f3a"}"#;

fn random_key() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    STANDARD.encode(key)
}

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("txdx-local-secrets-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn store_with_key(pool: &PgPool, key: &str) -> LocalSecretStore {
    LocalSecretStore::new(
        pool.clone(),
        Some(key),
        Path::new("/nonexistent/unused.key"),
    )
    .unwrap()
}

async fn migrated(pool: &PgPool) -> LocalSecretStore {
    db::migrate(pool).await.unwrap();
    store_with_key(pool, &random_key()).await
}

#[sqlx::test(migrations = false)]
async fn a_secret_round_trips_and_each_put_is_a_new_version(pool: PgPool) {
    let store = migrated(&pool).await;
    store.check().await.unwrap();
    let (company, integration) = (Uuid::new_v4(), Uuid::new_v4());
    let name = secret_name(company, integration);

    let first = store
        .put(company, integration, &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();
    assert_eq!(first, format!("local:{name}:1"));
    let second = store
        .put(
            company,
            integration,
            &SecretValue::new(r#"{"api_key":"v2"}"#),
        )
        .await
        .unwrap();
    assert_eq!(second, format!("local:{name}:2"));

    assert_eq!(
        store.get(company, &first).await.unwrap().expose(),
        CREDENTIALS
    );
    assert_eq!(
        store.get(company, &second).await.unwrap().expose(),
        r#"{"api_key":"v2"}"#
    );
}

#[sqlx::test(migrations = false)]
async fn a_different_key_gives_a_clear_permanent_error_not_garbage(pool: PgPool) {
    let store = migrated(&pool).await;
    let company = Uuid::new_v4();
    let id = store
        .put(company, Uuid::new_v4(), &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();

    let other_key = store_with_key(&pool, &random_key()).await;
    match other_key.get(company, &id).await {
        Err(SecretError::Permanent(message)) => {
            assert!(message.contains("TXDX_LOCAL_SECRET_KEY"), "{message}");
            assert!(!message.contains(CREDENTIALS));
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[sqlx::test(migrations = false)]
async fn tampered_or_moved_ciphertext_does_not_open(pool: PgPool) {
    let store = migrated(&pool).await;
    let (company, integration) = (Uuid::new_v4(), Uuid::new_v4());
    let v1 = store
        .put(company, integration, &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();
    let v2 = store
        .put(
            company,
            integration,
            &SecretValue::new(r#"{"api_key":"v2"}"#),
        )
        .await
        .unwrap();
    let name = secret_name(company, integration);

    // One flipped bit in version 1.
    sqlx::query(
        "UPDATE local_secrets SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1) WHERE name = $1 AND version = 1",
    )
    .bind(&name)
    .execute(&pool)
    .await
    .unwrap();
    assert!(matches!(
        store.get(company, &v1).await,
        Err(SecretError::Permanent(_))
    ));

    // Version 1's sealed box copied intact onto version 2: the associated
    // data (name and version) no longer matches.
    sqlx::query(
        "UPDATE local_secrets SET (nonce, ciphertext) = (SELECT nonce, ciphertext FROM local_secrets WHERE name = $1 AND version = 2) WHERE name = $1 AND version = 1",
    )
    .bind(&name)
    .execute(&pool)
    .await
    .unwrap();
    assert!(matches!(
        store.get(company, &v1).await,
        Err(SecretError::Permanent(_))
    ));
    assert_eq!(
        store.get(company, &v2).await.unwrap().expose(),
        r#"{"api_key":"v2"}"#
    );
}

#[sqlx::test(migrations = false)]
async fn another_companys_id_is_not_found(pool: PgPool) {
    let store = migrated(&pool).await;
    let (owner, other) = (Uuid::new_v4(), Uuid::new_v4());
    let id = store
        .put(owner, Uuid::new_v4(), &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();
    assert_eq!(store.get(other, &id).await, Err(SecretError::NotFound));
    assert_eq!(store.delete(other, &id).await, Err(SecretError::NotFound));
    assert_eq!(
        store.get(other, "https://vault/secrets/x/1").await,
        Err(SecretError::NotFound)
    );
    assert_eq!(store.get(owner, &id).await.unwrap().expose(), CREDENTIALS);
}

#[sqlx::test(migrations = false)]
async fn delete_removes_every_version_and_is_idempotent(pool: PgPool) {
    let store = migrated(&pool).await;
    let (company, integration) = (Uuid::new_v4(), Uuid::new_v4());
    let v1 = store
        .put(company, integration, &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();
    let v2 = store
        .put(company, integration, &SecretValue::new("{}"))
        .await
        .unwrap();
    store.delete(company, &v2).await.unwrap();
    assert_eq!(store.get(company, &v1).await, Err(SecretError::NotFound));
    assert_eq!(store.get(company, &v2).await, Err(SecretError::NotFound));
    store.delete(company, &v2).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM local_secrets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[cfg(unix)]
#[sqlx::test(migrations = false)]
async fn an_absent_key_file_is_created_private_and_reused(pool: PgPool) {
    use std::os::unix::fs::PermissionsExt;

    db::migrate(&pool).await.unwrap();
    let dir = TempDir::new();
    let key_file = dir.0.join("nested").join("local-secret.key");
    let store = LocalSecretStore::new(pool.clone(), None, &key_file).unwrap();
    let metadata = std::fs::metadata(&key_file).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    let key = STANDARD
        .decode(std::fs::read_to_string(&key_file).unwrap().trim())
        .unwrap();
    assert_eq!(key.len(), 32);
    assert!(store.describe().contains("key file"));

    let company = Uuid::new_v4();
    let id = store
        .put(company, Uuid::new_v4(), &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();
    let reopened = LocalSecretStore::new(pool.clone(), None, &key_file).unwrap();
    assert_eq!(
        reopened.get(company, &id).await.unwrap().expose(),
        CREDENTIALS
    );
}

#[sqlx::test(migrations = false)]
async fn a_malformed_key_is_refused_by_name(pool: PgPool) {
    for bad in ["not base64!", "c2hvcnQ="] {
        match LocalSecretStore::new(pool.clone(), Some(bad), Path::new("/unused")) {
            Err(SecretError::Permanent(message)) => {
                assert!(message.contains("TXDX_LOCAL_SECRET_KEY"), "{message}");
            }
            Err(other) => panic!("expected a permanent error, got {other:?}"),
            Ok(_) => panic!("a malformed key was accepted"),
        }
    }
}

#[sqlx::test(migrations = false)]
async fn the_table_never_holds_the_plaintext(pool: PgPool) {
    let store = migrated(&pool).await;
    let company = Uuid::new_v4();
    store
        .put(company, Uuid::new_v4(), &SecretValue::new(CREDENTIALS))
        .await
        .unwrap();
    let rows: Vec<(String, Vec<u8>, Vec<u8>, String)> =
        sqlx::query_as("SELECT name, nonce, ciphertext, t::text FROM local_secrets AS t")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    let needles: [&[u8]; 2] = [CREDENTIALS.as_bytes(), b"sk-local-plaintext-marker-7f3a"];
    for (name, nonce, ciphertext, whole_row) in &rows {
        for needle in needles {
            for haystack in [name.as_bytes(), nonce, ciphertext, whole_row.as_bytes()] {
                assert!(
                    !haystack.windows(needle.len()).any(|w| w == needle),
                    "the plaintext is stored in local_secrets"
                );
            }
        }
        assert!(
            ciphertext.len() >= CREDENTIALS.len() + 16,
            "sealed with a tag"
        );
    }
}
