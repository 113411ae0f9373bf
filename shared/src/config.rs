//! One typed configuration, read from the environment once at start-up.
//!
//! Every variable is documented in `.env.example`. Errors name the variable,
//! so a bad deployment fails with a line an operator can act on.

use std::{collections::HashMap, fmt, net::SocketAddr, time::Duration};

/// Why the configuration could not be built; each variant names the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A variable is set to something that cannot be used.
    #[error("{var} is invalid: {reason}")]
    Invalid {
        /// The environment variable.
        var: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// A secret string that never prints its value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret value; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// Azure Key Vault settings; present when `AZURE_KEY_VAULT_URL` is set.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    /// `AZURE_KEY_VAULT_URL`, e.g. `https://my-vault.vault.azure.net/`.
    pub vault_url: String,
    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`: a client-secret
    /// credential when all three are set, else the SDK's managed/workload identity.
    pub client_secret: Option<AzureClientSecret>,
    /// Workload identity (Kubernetes): `AZURE_FEDERATED_TOKEN_FILE` with
    /// `AZURE_TENANT_ID` and `AZURE_CLIENT_ID`, used when no client secret is set.
    pub workload_identity: Option<AzureWorkloadIdentity>,
    /// Without a client secret or workload identity: the managed identity,
    /// user-assigned when `AZURE_CLIENT_ID` is set, else system-assigned.
    pub managed_identity_client_id: Option<String>,
}

/// A Kubernetes workload identity federated with Entra ID.
#[derive(Debug, Clone)]
pub struct AzureWorkloadIdentity {
    /// `AZURE_TENANT_ID`.
    pub tenant_id: String,
    /// `AZURE_CLIENT_ID`.
    pub client_id: String,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    pub token_file: String,
}

/// An Entra ID application's client-secret credential.
#[derive(Debug, Clone)]
pub struct AzureClientSecret {
    /// `AZURE_TENANT_ID`.
    pub tenant_id: String,
    /// `AZURE_CLIENT_ID`.
    pub client_id: String,
    /// `AZURE_CLIENT_SECRET`.
    pub client_secret: SecretString,
}

/// The whole configuration of the api and the worker.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`.
    pub database_url: SecretString,
    /// `DATABASE_MAX_CONNECTIONS` (default 10).
    pub database_max_connections: u32,
    /// `API_ADDR` (default `127.0.0.1:8080`).
    pub api_addr: SocketAddr,
    /// `JWT_SECRET_KEY`: at least 32 bytes.
    pub jwt_secret: SecretString,
    /// `JWT_ISSUER` (default `txdx`).
    pub jwt_issuer: String,
    /// `JWT_AUDIENCE` (default `txdx-api`).
    pub jwt_audience: String,
    /// `ACCESS_TOKEN_TTL_SECS` (default 3600).
    pub access_token_ttl: Duration,
    /// `REFRESH_TOKEN_TTL_SECS` (default 30 days).
    pub refresh_token_ttl: Duration,
    /// `CORS_ORIGINS`: comma-separated origins; empty means same-origin only.
    pub cors_origins: Vec<String>,
    /// Azure Key Vault; `None` selects the local encrypted secret store.
    pub azure: Option<AzureConfig>,
    /// `TXDX_LOCAL_SECRET_KEY`: base64 32-byte key for the local secret store.
    pub local_secret_key: Option<SecretString>,
    /// `TXDX_LOCAL_SECRET_KEY_FILE` (default `.data/local-secret.key`).
    pub local_secret_key_file: String,
    /// `SECRET_CACHE_TTL_SECS` (default 300): worker credential cache lifetime.
    pub secret_cache_ttl: Duration,
    /// `API_MAX_IN_FLIGHT` (default 256): `/api/` requests the api works on
    /// at once; one more is refused at once with 503 and `Retry-After`, so an
    /// overload turns into fast refusals with bounded memory rather than a
    /// queue that grows without limit.
    pub api_max_in_flight: usize,
    /// `API_KEEP_ALIVE_TIMEOUT_SECS` (default 30): how long an HTTP/1
    /// connection may take to send its next complete request header, from
    /// its opening or its previous response. An idle keep-alive connection,
    /// or a client that sends nothing or its header a byte at a time, is
    /// closed after it. Behind a load balancer, set it above the balancer's
    /// own idle timeout.
    pub api_keep_alive_timeout: Duration,
    /// `TOKEN_CHECK_CACHE_MS` (default 60000, at most 60000): how long an
    /// api process may reuse what it read of a token's user (role, token
    /// version). A user deleted, demoted or given a new password is
    /// forgotten by every api process when PostgreSQL announces the change,
    /// at its commit; a process that is not listening for those
    /// announcements reuses nothing. `0` reads the user on every request.
    pub token_check_cache: Duration,
    /// `WORKER_CONCURRENCY` (default 256): actions one worker process runs
    /// at once; also its fetch batch and the largest group commit.
    pub worker_concurrency: usize,
    /// `WORKER_METRICS_ADDR` (default `127.0.0.1:9091`).
    pub worker_metrics_addr: SocketAddr,
    /// `ACTION_MAX_ATTEMPTS` (default 5): attempts per action unless the action says otherwise.
    pub action_max_attempts: i32,
    /// `QUEUE_HEARTBEAT_SECS` (default 5): worker heartbeat; a worker silent for
    /// `QUEUE_MISSED_HEARTBEATS` (default 6) beats loses its jobs to the others.
    pub queue_heartbeat: Duration,
    /// `QUEUE_MISSED_HEARTBEATS` (default 6).
    pub queue_missed_heartbeats: usize,
    /// `QUEUE_POLL_INTERVAL_MS` (default 100): the worker's fallback poll of
    /// the queue beside LISTEN/NOTIFY; it also bounds how late a job whose
    /// run time (a retry's backoff, a snooze) has just come is fetched.
    pub queue_poll_interval: Duration,
    /// `QUEUE_FETCH_COOLDOWN_MS` (default 50, at most 1000): the longest
    /// time between the starts of two fetches of a worker that has emptied
    /// the queue. Notifications that come sooner are answered by one fetch
    /// at its end, so under load a fetch takes many new jobs instead of a
    /// few. A fetch waits this whole cooldown after a fetch that took
    /// [`queue_fetch_cooldown_full_at`](Self::queue_fetch_cooldown_full_at)
    /// jobs or more, that share of it after one that took fewer (a quiet
    /// system's next job is fetched at once), and never longer than the
    /// last fetch's pace takes to bring half a fetch. A backlog is fetched
    /// without pause; `0` fetches on every notification.
    pub queue_fetch_cooldown: Duration,
    /// `QUEUE_FETCH_COOLDOWN_FULL_AT` (default 16, at least 1): the jobs a
    /// fetch must take for the next one to wait the whole
    /// [`queue_fetch_cooldown`](Self::queue_fetch_cooldown).
    pub queue_fetch_cooldown_full_at: usize,
    /// `ACTION_TIMEOUT_SECS` (default 20): one attempt's hard limit; kept well
    /// under heartbeat × missed beats so a slow job is never taken as orphaned.
    pub action_timeout: Duration,
    /// `RETRY_BACKOFF_BASE_MS` (default 1000): delay before the second attempt;
    /// it doubles per attempt (with jitter) up to `RETRY_BACKOFF_CAP_SECS` (default 300).
    pub retry_backoff_base: Duration,
    /// `RETRY_BACKOFF_CAP_SECS` (default 300).
    pub retry_backoff_cap: Duration,
    /// `SHUTDOWN_TIMEOUT_SECS` (default 30): how long SIGTERM waits for in-flight actions.
    pub shutdown_timeout: Duration,
    /// `JOB_RETENTION_SECS` (default 7 days): finished queue jobs older than
    /// this are deleted by the worker's retention sweep.
    pub job_retention: Duration,
    /// `JOB_RETENTION_INTERVAL_SECS` (default 300): how often a worker runs the
    /// retention sweep (one process at a time).
    pub job_retention_interval: Duration,
    /// `QUEUE_METRICS_INTERVAL_SECS` (default 15): how often a worker refreshes
    /// the queue depth gauges.
    pub queue_metrics_interval: Duration,
    /// `IDEMPOTENCY_KEY_TTL_SECS` (default 24 h).
    pub idempotency_key_ttl: Duration,
    /// `RUST_LOG` (default `info`).
    pub log_filter: String,
    /// `LOG_FORMAT`: `pretty` (default) or `json`.
    pub log_format: LogFormat,
    /// `FRONTEND_DIR` (default `basic_frontend`): static files served at `/`.
    pub frontend_dir: String,
}

impl Config {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first missing or invalid variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars().collect())
    }

    /// Reads the configuration from the given variables (tests pass their own).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first missing or invalid variable.
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        let env = Env(vars);
        let jwt_secret = env.required("JWT_SECRET_KEY")?;
        if jwt_secret.len() < 32 {
            return Err(ConfigError::Invalid {
                var: "JWT_SECRET_KEY",
                reason: format!("must be at least 32 bytes, got {}", jwt_secret.len()),
            });
        }
        let heartbeat = Duration::from_secs(env.parse("QUEUE_HEARTBEAT_SECS", 5u64)?.max(1));
        let missed = env.parse("QUEUE_MISSED_HEARTBEATS", 6usize)?.max(1);
        let action_timeout = Duration::from_secs(env.parse("ACTION_TIMEOUT_SECS", 20u64)?.max(1));
        if action_timeout >= heartbeat * missed as u32 {
            return Err(ConfigError::Invalid {
                var: "ACTION_TIMEOUT_SECS",
                reason: format!(
                    "must be shorter than QUEUE_HEARTBEAT_SECS x QUEUE_MISSED_HEARTBEATS ({} s), or a slow action would be re-run as orphaned",
                    (heartbeat * missed as u32).as_secs()
                ),
            });
        }
        let azure = match env.optional("AZURE_KEY_VAULT_URL") {
            None => None,
            Some(vault_url) => {
                if !vault_url.starts_with("https://") {
                    return Err(ConfigError::Invalid {
                        var: "AZURE_KEY_VAULT_URL",
                        reason: "must be an https:// URL".into(),
                    });
                }
                let parts = (
                    env.optional("AZURE_TENANT_ID"),
                    env.optional("AZURE_CLIENT_ID"),
                    env.optional("AZURE_CLIENT_SECRET"),
                );
                let token_file = env.optional("AZURE_FEDERATED_TOKEN_FILE");
                let mut workload_identity = None;
                let mut managed_identity_client_id = None;
                let client_secret = match parts {
                    (Some(tenant_id), Some(client_id), Some(secret)) => Some(AzureClientSecret {
                        tenant_id,
                        client_id,
                        client_secret: SecretString::new(secret),
                    }),
                    (None, _, Some(_)) => return Err(ConfigError::Missing("AZURE_TENANT_ID")),
                    (_, None, Some(_)) => return Err(ConfigError::Missing("AZURE_CLIENT_ID")),
                    (tenant_id, client_id, None) => {
                        match (token_file, tenant_id, client_id) {
                            (Some(token_file), Some(tenant_id), Some(client_id)) => {
                                workload_identity = Some(AzureWorkloadIdentity {
                                    tenant_id,
                                    client_id,
                                    token_file,
                                });
                            }
                            (Some(_), None, _) => {
                                return Err(ConfigError::Missing("AZURE_TENANT_ID"));
                            }
                            (Some(_), _, None) => {
                                return Err(ConfigError::Missing("AZURE_CLIENT_ID"));
                            }
                            (None, _, client_id) => managed_identity_client_id = client_id,
                        }
                        None
                    }
                };
                Some(AzureConfig {
                    vault_url,
                    client_secret,
                    workload_identity,
                    managed_identity_client_id,
                })
            }
        };
        let log_format = match env.optional("LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "LOG_FORMAT",
                    reason: format!("expected `pretty` or `json`, got `{other}`"),
                });
            }
        };
        let worker_concurrency = env.parse("WORKER_CONCURRENCY", 256usize)?;
        if !(1..=1024).contains(&worker_concurrency) {
            return Err(ConfigError::Invalid {
                var: "WORKER_CONCURRENCY",
                reason: "must be between 1 and 1024".into(),
            });
        }
        let api_max_in_flight = env.parse("API_MAX_IN_FLIGHT", 256usize)?;
        if !(1..=65_536).contains(&api_max_in_flight) {
            return Err(ConfigError::Invalid {
                var: "API_MAX_IN_FLIGHT",
                reason: "must be between 1 and 65536".into(),
            });
        }
        let api_keep_alive_secs = env.parse("API_KEEP_ALIVE_TIMEOUT_SECS", 30u64)?;
        if !(1..=3600).contains(&api_keep_alive_secs) {
            return Err(ConfigError::Invalid {
                var: "API_KEEP_ALIVE_TIMEOUT_SECS",
                reason: "must be between 1 and 3600".into(),
            });
        }
        let token_check_cache_ms = env.parse("TOKEN_CHECK_CACHE_MS", 60_000u64)?;
        if token_check_cache_ms > 60_000 {
            return Err(ConfigError::Invalid {
                var: "TOKEN_CHECK_CACHE_MS",
                reason: "must be between 0 and 60000".into(),
            });
        }
        let action_max_attempts = env.parse("ACTION_MAX_ATTEMPTS", 5i32)?;
        if !(1..=100).contains(&action_max_attempts) {
            return Err(ConfigError::Invalid {
                var: "ACTION_MAX_ATTEMPTS",
                reason: "must be between 1 and 100".into(),
            });
        }
        Ok(Self {
            database_url: SecretString::new(env.required("DATABASE_URL")?),
            database_max_connections: env.parse("DATABASE_MAX_CONNECTIONS", 10u32)?.max(2),
            api_addr: env.parse("API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            jwt_secret: SecretString::new(jwt_secret),
            jwt_issuer: env.optional("JWT_ISSUER").unwrap_or_else(|| "txdx".into()),
            jwt_audience: env
                .optional("JWT_AUDIENCE")
                .unwrap_or_else(|| "txdx-api".into()),
            access_token_ttl: Duration::from_secs(env.parse("ACCESS_TOKEN_TTL_SECS", 3600u64)?),
            refresh_token_ttl: Duration::from_secs(
                env.parse("REFRESH_TOKEN_TTL_SECS", 30 * 24 * 3600u64)?,
            ),
            cors_origins: env
                .optional("CORS_ORIGINS")
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            azure,
            local_secret_key: env.optional("TXDX_LOCAL_SECRET_KEY").map(SecretString::new),
            local_secret_key_file: env
                .optional("TXDX_LOCAL_SECRET_KEY_FILE")
                .unwrap_or_else(|| ".data/local-secret.key".into()),
            secret_cache_ttl: Duration::from_secs(env.parse("SECRET_CACHE_TTL_SECS", 300u64)?),
            api_max_in_flight,
            api_keep_alive_timeout: Duration::from_secs(api_keep_alive_secs),
            token_check_cache: Duration::from_millis(token_check_cache_ms),
            worker_concurrency,
            worker_metrics_addr: env.parse(
                "WORKER_METRICS_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9091)),
            )?,
            action_max_attempts,
            queue_heartbeat: heartbeat,
            queue_missed_heartbeats: missed,
            queue_poll_interval: Duration::from_millis(
                env.parse("QUEUE_POLL_INTERVAL_MS", 100u64)?
                    .clamp(10, 60_000),
            ),
            queue_fetch_cooldown: Duration::from_millis(
                env.parse("QUEUE_FETCH_COOLDOWN_MS", 50u64)?.min(1000),
            ),
            queue_fetch_cooldown_full_at: env
                .parse("QUEUE_FETCH_COOLDOWN_FULL_AT", 16usize)?
                .max(1),
            action_timeout,
            retry_backoff_base: Duration::from_millis(
                env.parse("RETRY_BACKOFF_BASE_MS", 1000u64)?.max(1),
            ),
            retry_backoff_cap: Duration::from_secs(
                env.parse("RETRY_BACKOFF_CAP_SECS", 300u64)?.max(1),
            ),
            shutdown_timeout: Duration::from_secs(env.parse("SHUTDOWN_TIMEOUT_SECS", 30u64)?),
            job_retention: Duration::from_secs(
                env.parse("JOB_RETENTION_SECS", 7 * 24 * 3600u64)?.max(1),
            ),
            job_retention_interval: Duration::from_secs(
                env.parse("JOB_RETENTION_INTERVAL_SECS", 300u64)?.max(1),
            ),
            queue_metrics_interval: Duration::from_secs(
                env.parse("QUEUE_METRICS_INTERVAL_SECS", 15u64)?.max(1),
            ),
            idempotency_key_ttl: Duration::from_secs(
                env.parse("IDEMPOTENCY_KEY_TTL_SECS", 24 * 3600u64)?,
            ),
            log_filter: env.optional("RUST_LOG").unwrap_or_else(|| "info".into()),
            log_format,
            frontend_dir: env
                .optional("FRONTEND_DIR")
                .unwrap_or_else(|| "basic_frontend".into()),
        })
    }
}

struct Env(HashMap<String, String>);

impl Env {
    fn optional(&self, var: &str) -> Option<String> {
        self.0.get(var).filter(|v| !v.trim().is_empty()).cloned()
    }

    fn required(&self, var: &'static str) -> Result<String, ConfigError> {
        self.optional(var).ok_or(ConfigError::Missing(var))
    }

    fn parse<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr,
        T::Err: fmt::Display,
    {
        match self.optional(var) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    var,
                    reason: format!("`{raw}`: {e}"),
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<String, String> {
        HashMap::from([
            ("DATABASE_URL".into(), "postgres://localhost/txdx".into()),
            ("JWT_SECRET_KEY".into(), "x".repeat(32)),
        ])
    }

    #[test]
    fn defaults_apply_when_only_required_variables_are_set() {
        let config = Config::from_vars(base()).unwrap();
        assert_eq!(config.api_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.worker_concurrency, 256);
        assert_eq!(config.api_max_in_flight, 256);
        assert_eq!(config.api_keep_alive_timeout, Duration::from_secs(30));
        assert_eq!(config.token_check_cache, Duration::from_secs(60));
        assert!(config.azure.is_none());
        assert_eq!(config.access_token_ttl, Duration::from_secs(3600));
        assert_eq!(config.job_retention, Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn a_missing_database_url_is_named() {
        let mut vars = base();
        vars.remove("DATABASE_URL");
        let err = Config::from_vars(vars).unwrap_err();
        assert_eq!(err, ConfigError::Missing("DATABASE_URL"));
        assert_eq!(err.to_string(), "DATABASE_URL is not set");
    }

    #[test]
    fn a_short_jwt_secret_is_refused_by_name() {
        let mut vars = base();
        vars.insert("JWT_SECRET_KEY".into(), "short".into());
        let err = Config::from_vars(vars).unwrap_err();
        assert!(
            err.to_string().starts_with("JWT_SECRET_KEY is invalid"),
            "{err}"
        );
    }

    #[test]
    fn an_unparsable_number_names_its_variable() {
        let mut vars = base();
        vars.insert("WORKER_CONCURRENCY".into(), "many".into());
        let err = Config::from_vars(vars).unwrap_err();
        assert!(
            err.to_string().starts_with("WORKER_CONCURRENCY is invalid"),
            "{err}"
        );
    }

    #[test]
    fn a_token_check_cache_beyond_a_minute_is_refused_and_zero_is_taken() {
        let mut vars = base();
        vars.insert("TOKEN_CHECK_CACHE_MS".into(), "60001".into());
        let err = Config::from_vars(vars.clone()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("TOKEN_CHECK_CACHE_MS is invalid"),
            "{err}"
        );
        vars.insert("TOKEN_CHECK_CACHE_MS".into(), "0".into());
        let config = Config::from_vars(vars).unwrap();
        assert_eq!(config.token_check_cache, Duration::ZERO);
    }

    #[test]
    fn a_bad_api_addr_names_its_variable() {
        let mut vars = base();
        vars.insert("API_ADDR".into(), "localhost".into());
        let err = Config::from_vars(vars).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                var: "API_ADDR",
                ..
            }
        ));
    }

    #[test]
    fn a_partial_azure_client_secret_names_the_missing_part() {
        let mut vars = base();
        vars.insert(
            "AZURE_KEY_VAULT_URL".into(),
            "https://v.vault.azure.net/".into(),
        );
        vars.insert("AZURE_TENANT_ID".into(), "t".into());
        vars.insert("AZURE_CLIENT_SECRET".into(), "s".into());
        let err = Config::from_vars(vars).unwrap_err();
        assert_eq!(err, ConfigError::Missing("AZURE_CLIENT_ID"));
    }

    #[test]
    fn azure_identity_is_chosen_from_what_is_set() {
        let mut vars = base();
        vars.insert(
            "AZURE_KEY_VAULT_URL".into(),
            "https://v.vault.azure.net/".into(),
        );
        let azure = Config::from_vars(vars.clone()).unwrap().azure.unwrap();
        assert!(azure.client_secret.is_none() && azure.workload_identity.is_none());
        assert!(azure.managed_identity_client_id.is_none());
        vars.insert("AZURE_CLIENT_ID".into(), "c".into());
        let azure = Config::from_vars(vars.clone()).unwrap().azure.unwrap();
        assert_eq!(azure.managed_identity_client_id.as_deref(), Some("c"));
        vars.insert("AZURE_FEDERATED_TOKEN_FILE".into(), "/var/run/token".into());
        let err = Config::from_vars(vars.clone()).unwrap_err();
        assert_eq!(err, ConfigError::Missing("AZURE_TENANT_ID"));
        vars.insert("AZURE_TENANT_ID".into(), "t".into());
        let azure = Config::from_vars(vars.clone()).unwrap().azure.unwrap();
        assert_eq!(
            azure.workload_identity.unwrap().token_file,
            "/var/run/token"
        );
        vars.insert("AZURE_CLIENT_SECRET".into(), "s".into());
        let azure = Config::from_vars(vars).unwrap().azure.unwrap();
        assert!(azure.client_secret.is_some());
    }

    #[test]
    fn an_action_timeout_longer_than_the_orphan_window_is_refused() {
        let mut vars = base();
        vars.insert("ACTION_TIMEOUT_SECS".into(), "60".into());
        let err = Config::from_vars(vars).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                var: "ACTION_TIMEOUT_SECS",
                ..
            }
        ));
    }

    #[test]
    fn secrets_do_not_print() {
        let config = Config::from_vars(base()).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains(&"x".repeat(32)));
        assert!(!printed.contains("postgres://localhost"));
    }
}
