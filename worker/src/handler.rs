//! `execute_action`: one delivery of one job, from claim to recorded outcome.
//!
//! 1. Claim (tenant transaction): lock the action, skip it if finished or its
//!    ticket is closed, quarantine it if crashed workers used up its
//!    attempts, snooze it if its integration is at a concurrency or rate
//!    limit (no attempt used), else mark it RUNNING with attempt n.
//! 2. Run (no transaction held): credentials from the secret store, the
//!    provider call in its own task with a timeout, so a panic or a hang is
//!    an attempt's failure and never the worker's.
//! 3. Record (tenant transaction): compare-and-set on (RUNNING, n), the next
//!    job (retry at its backoff time, or the ticket's next action), the
//!    ticket's derived status, audit rows.

use std::{sync::Arc, time::Instant};

use chrono::Utc;
use shared::{
    PgPool,
    db::{
        self,
        actions::{AttemptStart, ClaimPolicy, Outcome, Recorded},
    },
    domain::{Integration, TicketAction},
    jobs::ActionJob,
    providers::IntegrationSettings,
    secrets::{SecretError, SecretStore},
};

use crate::{
    providers::{ActionCall, Credentials, ProviderError, Providers, serialization_key},
    retry::Backoff,
};

/// Everything a delivery needs; one per worker process.
pub struct WorkerState {
    /// The pool.
    pub pool: PgPool,
    /// The secret store.
    pub secrets: Arc<dyn SecretStore>,
    /// Provider clients.
    pub providers: Providers,
    /// Backoff policy.
    pub backoff: Backoff,
    /// One attempt's hard limit.
    pub action_timeout: std::time::Duration,
    /// How claims apply integration limits.
    pub claim: ClaimPolicy,
}

/// Why a delivery must be handed back to the queue (apalis retries it).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The database failed while claiming or recording.
    #[error("database: {0}")]
    Database(#[from] db::DbError),
}

/// Handles one delivery of `job`.
///
/// # Errors
/// Only infrastructure failures (the database); provider failures are
/// outcomes recorded on the action.
pub async fn execute_action(state: &WorkerState, job: &ActionJob) -> Result<(), DeliveryError> {
    let mut tx = db::begin_tenant(&state.pool, job.company_id).await?;
    let start = db::actions::start_attempt(&mut tx, job, state.claim).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    let (action, integration, attempt) = match start {
        AttemptStart::Run {
            action,
            integration,
            attempt,
        } => (action, integration, attempt),
        AttemptStart::Skip(reason) => {
            tracing::info!(action.id = %job.action_id, ticket.id = %job.ticket_id, "skipping action {}: {reason}", job.action_id);
            return Ok(());
        }
        AttemptStart::Exhausted => {
            tracing::warn!(action.id = %job.action_id, ticket.id = %job.ticket_id, "action {} quarantined: attempts used up by crashed workers", job.action_id);
            metrics::counter!("txdx_worker_actions_quarantined_total").increment(1);
            return Ok(());
        }
        AttemptStart::Snoozed { limit, until } => {
            tracing::debug!(action.id = %job.action_id, ticket.id = %job.ticket_id, limit = limit.label(), "action {} snoozed until {until}: {limit}", job.action_id);
            metrics::counter!("txdx_worker_actions_snoozed_total", "limit" => limit.label())
                .increment(1);
            return Ok(());
        }
    };
    let labels = [
        ("provider", action.provider.as_str().to_owned()),
        ("action", action.action.clone()),
    ];
    metrics::counter!("txdx_worker_actions_started_total", &labels).increment(1);
    let started = Instant::now();
    let result = run_attempt(state, &action, integration.as_ref()).await;
    metrics::histogram!("txdx_worker_action_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    let outcome = match result {
        Ok(result) => {
            metrics::counter!("txdx_worker_actions_succeeded_total", &labels).increment(1);
            Outcome::Succeeded { result }
        }
        Err(ProviderError::Transient {
            message,
            retry_after,
        }) if attempt < action.max_attempts => {
            metrics::counter!("txdx_worker_actions_retried_total", &labels).increment(1);
            let delay = state.backoff.delay(attempt, retry_after);
            let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            Outcome::Retry {
                error: message,
                retry_at,
            }
        }
        Err(ProviderError::Transient { message, .. }) => {
            metrics::counter!("txdx_worker_actions_failed_total", &labels).increment(1);
            Outcome::Failed {
                error: format!("{message} (gave up after {attempt} attempts)"),
            }
        }
        Err(ProviderError::Permanent { message }) => {
            metrics::counter!("txdx_worker_actions_failed_total", &labels).increment(1);
            Outcome::Failed { error: message }
        }
        Err(ProviderError::NeedsHuman { reason }) => {
            metrics::counter!("txdx_worker_actions_derived_total", &labels).increment(1);
            Outcome::Derived { reason }
        }
    };
    tracing::info!(action.id = %action.id, ticket.id = %action.ticket_id, company.id = %action.company_id, attempt, outcome = outcome_name(&outcome), "action {} attempt {attempt}: {}", action.id, outcome_name(&outcome));
    let mut tx = db::begin_tenant(&state.pool, job.company_id).await?;
    let recorded = db::actions::record_outcome(&mut tx, &action, attempt, outcome).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    if recorded == Recorded::Fenced {
        tracing::warn!(action.id = %action.id, "outcome of action {} attempt {attempt} dropped: another worker owns it", action.id);
    }
    Ok(())
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded { .. } => "succeeded",
        Outcome::Retry { .. } => "retry_scheduled",
        Outcome::Failed { .. } => "failed",
        Outcome::Derived { .. } => "derived",
    }
}

/// An integration's settings and credentials (from the secret store), with
/// failures classified as an attempt's errors: a secret-store outage is
/// transient, missing credentials need a human.
///
/// # Errors
/// The classified [`ProviderError`].
pub async fn load_connection(
    state: &WorkerState,
    integration: &Integration,
) -> Result<(IntegrationSettings, Credentials), ProviderError> {
    let settings =
        IntegrationSettings::parse(&integration.extra_json, "settings").map_err(|e| {
            ProviderError::Permanent {
                message: format!("integration settings are invalid: {e}"),
            }
        })?;
    let Some(id) = &integration.keyvault_secret_id else {
        return Ok((settings, Credentials::default()));
    };
    match state.secrets.get(integration.company_id, id).await {
        Ok(secret) => Ok((settings, Credentials::from_json(secret.expose())?)),
        Err(SecretError::Transient {
            message,
            retry_after_secs,
        }) => Err(ProviderError::Transient {
            message: format!("secret store: {message}"),
            retry_after: retry_after_secs.map(std::time::Duration::from_secs),
        }),
        Err(SecretError::NotFound) => Err(ProviderError::NeedsHuman {
            reason: "the integration's credentials are missing from the secret store".into(),
        }),
        Err(SecretError::Permanent(message)) => Err(ProviderError::Permanent {
            message: format!("secret store: {message}"),
        }),
    }
}

/// Reads credentials and calls the provider, isolating panics and hangs.
async fn run_attempt(
    state: &WorkerState,
    action: &TicketAction,
    integration: Option<&Integration>,
) -> Result<serde_json::Value, ProviderError> {
    let Some(integration) = integration else {
        return Err(ProviderError::NeedsHuman {
            reason: format!(
                "no integration for {} is configured any more; run `{}` by hand",
                action.provider, action.action
            ),
        });
    };
    let (settings, credentials) = load_connection(state, integration).await?;
    let providers = state.providers.clone();
    let mode = integration.mode;
    let (action_id, provider, name, params) = (
        action.id,
        action.provider,
        action.action.clone(),
        action.params.clone(),
    );
    let pool = state.pool.clone();
    let company_id = action.company_id;
    let mut task = tokio::spawn(async move {
        let call = ActionCall {
            action_id,
            provider,
            action: &name,
            params: &params,
            settings: &settings,
            credentials: &credentials,
        };
        match serialization_key(&call) {
            // Edits that replace a whole list (Meraki L3 rules) run one at a
            // time per key across every worker process.
            Some(key) => {
                let mut tx = db::begin_tenant(&pool, company_id).await.map_err(|e| {
                    ProviderError::Transient {
                        message: format!("database: {e}"),
                        retry_after: None,
                    }
                })?;
                db::lock_serialization_key(&mut tx, &key)
                    .await
                    .map_err(|e| ProviderError::Transient {
                        message: format!("database: {e}"),
                        retry_after: None,
                    })?;
                let result = providers.execute(mode, call).await;
                tx.commit().await.ok();
                result
            }
            None => providers.execute(mode, call).await,
        }
    });
    match tokio::time::timeout(state.action_timeout, &mut task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) if join.is_panic() => Err(ProviderError::Transient {
            message: "the action's handler panicked; see the worker log".into(),
            retry_after: None,
        }),
        Ok(Err(_)) => Err(ProviderError::Transient {
            message: "the action was cancelled".into(),
            retry_after: None,
        }),
        Err(_) => {
            task.abort();
            Err(ProviderError::Transient {
                message: format!(
                    "the action timed out after {} s",
                    state.action_timeout.as_secs()
                ),
                retry_after: None,
            })
        }
    }
}
