//! The Azure Key Vault backend: integration credentials as Key Vault
//! secrets, through the official SDK (`azure_security_keyvault_secrets`).
//!
//! Identifiers are the full secret id Key Vault hands out on `set`
//! (`https://<vault>/secrets/<name>/<version>`), so a rotation is a new id and
//! an old id keeps reading the version it named. The SDK's errors are mapped
//! once, in `classify`, to the transient/permanent split the worker's retry
//! policy acts on; no message ever carries a secret value.
//!
//! The SDK's own retries are kept short and deterministic
//! ([`QuickRetry`](crate::secrets::key_vault::QuickRetry)):
//! it retries brief server hiccups (408, 500, 502, 504, connection errors)
//! twice within a few seconds, and hands throttling (429) and 503 straight
//! back with their `Retry-After`, so the worker's backoff, not a sleeping SDK,
//! decides when to come back.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;
use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::{Secret, TokenCredential},
    error::ErrorKind,
    http::{
        ClientOptions, RawResponse, RetryOptions, StatusCode, Transport, Url,
        headers::{RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS},
        policies::{RetryHeaders, RetryPolicy, get_retry_after},
    },
    time::OffsetDateTime,
};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use azure_security_keyvault_secrets::{
    ResourceId, SecretClient, SecretClientOptions,
    models::{SecretClientGetSecretOptions, SetSecretParameters},
};
use uuid::Uuid;

use super::{SecretError, SecretStore, SecretValue, name_belongs_to, secret_name};
use crate::config::{AzureConfig, SecretString};

/// The secret name the start-up probe reads: it never exists, so a 404 proves
/// the vault answered an authenticated request.
const PROBE_SECRET_NAME: &str = "txdx-startup-probe";

/// Longest service message kept in an error (they can be long).
const MAX_MESSAGE_LEN: usize = 300;

/// How the store reaches Key Vault; the defaults are production's.
#[derive(Debug, Clone)]
pub struct KeyVaultOptions {
    /// HTTP transport for both the vault and the token endpoint; `None` is
    /// the SDK's own client (reqwest with the platform's trust store).
    pub transport: Option<Transport>,
    /// Entra ID authority host, e.g. `https://login.microsoftonline.com`;
    /// `None` lets the SDK decide (`AZURE_AUTHORITY_HOST`, else public cloud).
    pub authority_host: Option<String>,
    /// The SDK's retry policy; `None` is [`QuickRetry`].
    pub retry: Option<RetryOptions>,
    /// Upper bound on one operation, SDK retries and token fetch included:
    /// kept under the worker's action timeout.
    pub operation_timeout: Duration,
}

impl Default for KeyVaultOptions {
    fn default() -> Self {
        Self {
            transport: None,
            authority_host: None,
            retry: None,
            operation_timeout: Duration::from_secs(10),
        }
    }
}

/// A [`SecretStore`] over one Azure Key Vault.
pub struct KeyVaultSecretStore {
    client: SecretClient,
    vault_url: String,
    credential_kind: String,
    operation_timeout: Duration,
    /// Kept only to scrub it from error messages, should a service echo it.
    client_secret: Option<SecretString>,
}

impl KeyVaultSecretStore {
    /// Builds the store with production defaults.
    ///
    /// # Errors
    /// A permanent error when the vault URL or the credential settings are
    /// unusable (nothing is sent yet: see [`SecretStore::check`]).
    pub fn new(azure: &AzureConfig) -> Result<Self, SecretError> {
        Self::with_options(azure, KeyVaultOptions::default())
    }

    /// Builds the store with explicit transport, authority host and retries
    /// (tests point these at a local fake).
    ///
    /// # Errors
    /// As [`KeyVaultSecretStore::new`].
    pub fn with_options(
        azure: &AzureConfig,
        options: KeyVaultOptions,
    ) -> Result<Self, SecretError> {
        let retry = options
            .retry
            .clone()
            .unwrap_or_else(|| RetryOptions::custom(Arc::new(QuickRetry::default())));
        let client_options = ClientOptions {
            transport: options.transport.clone(),
            retry,
            ..Default::default()
        };
        let mut credential_options = client_options.clone();
        if let Some(host) = &options.authority_host {
            let mut cloud = CustomConfiguration::default();
            cloud.authority_host = host.clone();
            credential_options.cloud = Some(Arc::new(CloudConfiguration::from(cloud)));
        }
        let setup = |e: azure_core::Error| {
            SecretError::Permanent(format!("Azure Key Vault set-up failed: {}", first_line(&e)))
        };
        let (credential, credential_kind): (Arc<dyn TokenCredential>, String) =
            match &azure.client_secret {
                Some(app) => (
                    ClientSecretCredential::new(
                        &app.tenant_id,
                        app.client_id.clone(),
                        Secret::new(app.client_secret.expose().to_owned()),
                        Some(ClientSecretCredentialOptions {
                            client_options: credential_options,
                        }),
                    )
                    .map_err(setup)?,
                    format!(
                        "client secret of application {} in tenant {}",
                        app.client_id, app.tenant_id
                    ),
                ),
                None => match (&azure.workload_identity, &azure.managed_identity_client_id) {
                    (Some(workload), _) => (
                        WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                            credential_options: ClientAssertionCredentialOptions {
                                client_options: credential_options,
                            },
                            client_id: Some(workload.client_id.clone()),
                            tenant_id: Some(workload.tenant_id.clone()),
                            token_file_path: Some(workload.token_file.clone().into()),
                        }))
                        .map_err(setup)?,
                        format!(
                            "workload identity of application {} in tenant {}",
                            workload.client_id, workload.tenant_id
                        ),
                    ),
                    (None, client_id) => (
                        ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                            user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                            client_options: credential_options,
                        }))
                        .map_err(setup)?,
                        match client_id {
                            Some(id) => format!("user-assigned managed identity {id}"),
                            None => "system-assigned managed identity".to_owned(),
                        },
                    ),
                },
            };
        let client = SecretClient::new(
            &azure.vault_url,
            credential,
            Some(SecretClientOptions {
                client_options,
                ..Default::default()
            }),
        )
        .map_err(setup)?;
        Ok(Self {
            client,
            vault_url: azure.vault_url.clone(),
            credential_kind,
            operation_timeout: options.operation_timeout,
            client_secret: azure
                .client_secret
                .as_ref()
                .map(|a| a.client_secret.clone()),
        })
    }

    /// Runs one SDK call under the operation timeout and maps its error.
    /// `sent` is the secret the request carries, if any: the vault's own
    /// error text is then left out (a service may quote the request), and
    /// the value is scrubbed from whatever remains.
    async fn call<T>(
        &self,
        operation: &str,
        future: impl Future<Output = azure_core::Result<T>>,
        sent: Option<&SecretValue>,
    ) -> Result<T, SecretError> {
        match tokio::time::timeout(self.operation_timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.redact(classify(operation, &e, sent.is_none()), sent)),
            Err(_) => Err(SecretError::Transient {
                message: format!(
                    "{operation}: no answer from Azure Key Vault within {} s",
                    self.operation_timeout.as_secs_f32()
                ),
                retry_after_secs: None,
            }),
        }
    }

    /// Scrubs credentials from a message in case a service echoed them.
    fn redact(&self, error: SecretError, value: Option<&SecretValue>) -> SecretError {
        let secrets: Vec<&str> = [
            value.map(SecretValue::expose),
            self.client_secret.as_ref().map(SecretString::expose),
        ]
        .into_iter()
        .flatten()
        .collect();
        redact(error, &secrets)
    }
}

/// Replaces every occurrence of the secrets, as they are and as they look
/// inside JSON strings (how an echoed request body would show them), with
/// `<redacted>`.
fn redact(error: SecretError, secrets: &[&str]) -> SecretError {
    let mut forms: Vec<String> = Vec::new();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        // The value itself, then as quoted in a JSON string, then as that
        // JSON quoted once more (a body echoed inside an error document).
        let mut form = (*secret).to_owned();
        for _ in 0..3 {
            let escaped = serde_json::to_string(&form)
                .ok()
                .and_then(|quoted| quoted.get(1..quoted.len() - 1).map(str::to_owned));
            forms.push(std::mem::take(&mut form));
            match escaped {
                Some(next) if !forms.contains(&next) => form = next,
                _ => break,
            }
        }
    }
    // Longest first, so a secret's escaped form is not half-replaced.
    forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
    let scrub = |mut message: String| {
        for form in &forms {
            message = message.replace(form.as_str(), "<redacted>");
        }
        message
    };
    match error {
        SecretError::NotFound => SecretError::NotFound,
        SecretError::Transient {
            message,
            retry_after_secs,
        } => SecretError::Transient {
            message: scrub(message),
            retry_after_secs,
        },
        SecretError::Permanent(message) => SecretError::Permanent(scrub(message)),
    }
}

/// Splits a secret id into name and version, refusing anything that is not a
/// well-formed Key Vault secret id of the company (→ `NotFound`, so another
/// company's id discloses nothing).
fn parse_secret_id(id: &str, company_id: Uuid) -> Result<(String, Option<String>), SecretError> {
    let url = Url::parse(id).map_err(|_| SecretError::NotFound)?;
    let depth = url
        .path_segments()
        .map_or(0, |segments| segments.filter(|s| !s.is_empty()).count());
    if url.scheme() != "https" || depth > 3 {
        return Err(SecretError::NotFound);
    }
    let resource = ResourceId::try_from(&url).map_err(|_| SecretError::NotFound)?;
    // Key Vault names and versions are alphanumerics and dashes; anything
    // else (an encoded slash, dots) is not an id we handed out.
    let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid(&resource.name) || !name_belongs_to(&resource.name, company_id) {
        return Err(SecretError::NotFound);
    }
    if let Some(version) = &resource.version
        && !valid(version)
    {
        return Err(SecretError::NotFound);
    }
    Ok((resource.name, resource.version))
}

/// The first line of an SDK error, bounded in length.
fn first_line(error: &dyn std::fmt::Display) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(MAX_MESSAGE_LEN) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// Maps an SDK error to a [`SecretError`].
///
/// The cause chain is walked because credential errors wrap the token
/// endpoint's HTTP error: a 503 from Entra ID is as transient as one from the
/// vault, and a rejected client secret as permanent. The vault's error text
/// is kept only with `vault_detail` (Entra ID's always: it never sees the
/// secret value).
fn classify(operation: &str, error: &azure_core::Error, vault_detail: bool) -> SecretError {
    let mut http: Option<(StatusCode, Option<&str>, Option<&RawResponse>, String)> = None;
    let mut transport_failure = false;
    let mut credential_failure = false;
    let mut root: &(dyn std::error::Error + 'static) = error;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(sdk) = current.downcast_ref::<azure_core::Error>() {
            match sdk.kind() {
                ErrorKind::HttpResponse {
                    status,
                    error_code,
                    raw_response,
                } if http.is_none() => {
                    http = Some((
                        *status,
                        error_code.as_deref(),
                        raw_response.as_deref(),
                        first_line(sdk),
                    ));
                }
                ErrorKind::Connection | ErrorKind::Io => transport_failure = true,
                ErrorKind::Credential => credential_failure = true,
                _ => {}
            }
        }
        root = current;
        cause = current.source();
    }
    let operation = if credential_failure {
        format!("{operation} (Entra ID token request)")
    } else {
        operation.to_owned()
    };
    let Some((status, code, response, detail)) = http else {
        let (top, innermost) = (first_line(error), first_line(root));
        let message = if top == innermost {
            format!("{operation}: {top}")
        } else {
            format!("{operation}: {top}: {innermost}")
        };
        return if transport_failure {
            SecretError::Transient {
                message,
                retry_after_secs: None,
            }
        } else {
            SecretError::Permanent(message)
        };
    };
    let code = code.map(|c| format!(" {c}")).unwrap_or_default();
    let message = if vault_detail || credential_failure {
        format!("{operation}: HTTP {}{code}: {detail}", u16::from(status))
    } else {
        format!("{operation}: HTTP {}{code}", u16::from(status))
    };
    match u16::from(status) {
        // A 404 from the token endpoint is a misconfiguration, not a missing secret.
        404 if !credential_failure => SecretError::NotFound,
        408 | 429 | 500..=599 => SecretError::Transient {
            message,
            retry_after_secs: response.and_then(retry_after_secs),
        },
        _ => SecretError::Permanent(message),
    }
}

/// `Retry-After` (seconds or HTTP date) or the `retry-after-ms` variants,
/// rounded up to whole seconds.
fn retry_after_secs(response: &RawResponse) -> Option<u64> {
    let wait = get_retry_after(
        response.headers(),
        OffsetDateTime::now_utc,
        &[RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS, RETRY_AFTER],
    )?;
    let whole = u64::try_from(wait.whole_seconds()).ok()?;
    Some(if wait.subsec_nanoseconds() > 0 {
        whole + 1
    } else {
        whole
    })
}

/// The SDK retry policy: at most two quick retries within a few seconds, on
/// 408, 500, 502, 504 and connection errors; 429 and 503 are returned at once
/// (with their `Retry-After`) for the caller's backoff to honour.
#[derive(Debug)]
pub struct QuickRetry {
    max_retries: u32,
    first_delay: Duration,
    budget: Duration,
    headers: RetryHeaders,
}

impl Default for QuickRetry {
    fn default() -> Self {
        Self {
            max_retries: 2,
            first_delay: Duration::from_millis(200),
            budget: Duration::from_secs(3),
            headers: RetryHeaders::default(),
        }
    }
}

impl RetryPolicy for QuickRetry {
    fn is_expired(&self, since_start: azure_core::time::Duration, retry_count: u32) -> bool {
        retry_count >= self.max_retries || since_start >= self.budget
    }

    fn retry_headers(&self) -> Option<&RetryHeaders> {
        // Only consulted for 429 and 503, which this policy does not retry.
        Some(&self.headers)
    }

    fn retry_status_codes(&self) -> &[StatusCode] {
        &[
            StatusCode::RequestTimeout,
            StatusCode::InternalServerError,
            StatusCode::BadGateway,
            StatusCode::GatewayTimeout,
        ]
    }

    fn sleep_duration(&self, retry_count: u32) -> azure_core::time::Duration {
        let factor = 1u32 << retry_count.saturating_sub(1).min(4);
        azure_core::time::Duration::try_from(self.first_delay * factor)
            .unwrap_or(azure_core::time::Duration::ZERO)
    }
}

#[async_trait]
impl SecretStore for KeyVaultSecretStore {
    async fn put(
        &self,
        company_id: Uuid,
        integration_id: Uuid,
        value: &SecretValue,
    ) -> Result<String, SecretError> {
        let name = secret_name(company_id, integration_id);
        let parameters = SetSecretParameters {
            value: Some(value.expose().to_owned()),
            content_type: Some("application/json".to_owned()),
            tags: Some(HashMap::from([
                ("txdx-company".to_owned(), company_id.to_string()),
                ("txdx-integration".to_owned(), integration_id.to_string()),
            ])),
            ..Default::default()
        };
        let content = parameters
            .try_into()
            .map_err(|_| SecretError::Permanent("cannot encode the secret for Key Vault".into()))?;
        let response = self
            .call(
                "set secret",
                self.client.set_secret(&name, content, None),
                Some(value),
            )
            .await?;
        let secret = response.into_model().map_err(|_| {
            SecretError::Permanent("set secret: Key Vault's answer could not be read".into())
        })?;
        let id = secret.id.ok_or_else(|| {
            SecretError::Permanent("set secret: Key Vault returned no secret id".into())
        })?;
        match parse_secret_id(&id, company_id) {
            Ok((returned, Some(_))) if returned == name => Ok(id),
            _ => Err(SecretError::Permanent(format!(
                "set secret: Key Vault returned an unexpected secret id `{id}`"
            ))),
        }
    }

    async fn get(&self, company_id: Uuid, id: &str) -> Result<SecretValue, SecretError> {
        let (name, version) = parse_secret_id(id, company_id)?;
        let options = SecretClientGetSecretOptions {
            secret_version: version,
            ..Default::default()
        };
        let response = self
            .call(
                "get secret",
                self.client.get_secret(&name, Some(options)),
                None,
            )
            .await?;
        let secret = response.into_model().map_err(|_| {
            SecretError::Permanent("get secret: Key Vault's answer could not be read".into())
        })?;
        secret
            .value
            .map(SecretValue::new)
            .ok_or_else(|| SecretError::Permanent("get secret: Key Vault returned no value".into()))
    }

    async fn delete(&self, company_id: Uuid, id: &str) -> Result<(), SecretError> {
        let (name, _) = parse_secret_id(id, company_id)?;
        match self
            .call(
                "delete secret",
                self.client.delete_secret(&name, None),
                None,
            )
            .await
        {
            // Already gone (or soft-deleted): deleting is idempotent.
            Ok(_) | Err(SecretError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn describe(&self) -> String {
        format!(
            "Azure Key Vault {} (credential: {})",
            self.vault_url, self.credential_kind
        )
    }

    async fn check(&self) -> Result<(), SecretError> {
        match self
            .call(
                "start-up probe",
                self.client.get_secret(PROBE_SECRET_NAME, None),
                None,
            )
            .await
        {
            Ok(_) | Err(SecretError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_ids_parse_into_name_and_version_for_their_company_only() {
        let company = Uuid::new_v4();
        let name = secret_name(company, Uuid::new_v4());
        let id = format!("https://v.vault.azure.net/secrets/{name}/0123abcd");
        assert_eq!(
            parse_secret_id(&id, company).unwrap(),
            (name.clone(), Some("0123abcd".to_owned()))
        );
        assert_eq!(
            parse_secret_id(
                &format!("https://v.vault.azure.net/secrets/{name}"),
                company
            )
            .unwrap(),
            (name.clone(), None)
        );
        for bad in [
            id.clone().replace("https://", "http://"),
            format!("https://v.vault.azure.net/secrets/{name}/0123abcd/extra"),
            format!("https://v.vault.azure.net/keys/{name}/0123abcd"),
            format!("https://v.vault.azure.net/secrets/{name}/%2e%2e"),
            format!("local:{name}:1"),
            "not a url".to_owned(),
        ] {
            assert_eq!(
                parse_secret_id(&bad, company),
                Err(SecretError::NotFound),
                "{bad}"
            );
        }
        assert_eq!(
            parse_secret_id(&id, Uuid::new_v4()),
            Err(SecretError::NotFound)
        );
    }

    #[test]
    fn echoed_secrets_are_redacted_raw_and_json_escaped() {
        let value = r#"{"api_key":"k-123"}"#;
        let body = serde_json::json!({ "value": value }).to_string();
        let error_document = serde_json::json!({ "message": body }).to_string();
        let echoed = SecretError::Permanent(format!(
            "raw {value} | body {body} | error document {error_document}"
        ));
        let SecretError::Permanent(message) = redact(echoed, &[value, ""]) else {
            panic!("the variant changed");
        };
        assert!(!message.contains("k-123"), "{message}");
        assert_eq!(message.matches("<redacted>").count(), 3, "{message}");
    }

    #[test]
    fn long_messages_are_cut_to_one_bounded_line() {
        let long = format!("{}\nsecond line", "x".repeat(1000));
        let line = first_line(&long);
        assert!(!line.contains("second line"));
        assert!(line.chars().count() <= MAX_MESSAGE_LEN + 1);
    }
}
