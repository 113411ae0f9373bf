//! `execute_action`: one delivery of one job, from claim to recorded outcome.
//!
//! Claims and outcomes go through [`Batcher`](shared::batch::Batcher)s (group commit): the
//! deliveries of one moment share one transaction, and the common case is
//! written with set-based statements. Anything the batch does not handle
//! takes the one-by-one path described here.
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
//!    ticket's derived status, audit rows; in the batch, also the end of the
//!    apalis job that delivered the attempt (the row its ack would write), so
//!    an outcome and its job's end commit together and the ack has nothing
//!    left to write.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use apalis::prelude::{Status, TaskId};
use apalis_postgres::queries::ResultPayload;
use chrono::Utc;
use shared::{
    PgPool,
    batch::Batcher,
    db::{
        self,
        actions::{AttemptOutcome, AttemptStart, ClaimPolicy, Claimed, Outcome, Recorded},
        apalis_queue::JobEnd,
    },
    domain::{Integration, IntegrationMode, TicketAction},
    jobs::ActionJob,
    providers::IntegrationSettings,
    secrets::{SecretError, SecretStore},
};

use crate::{
    providers::{ActionCall, Credentials, ProviderError, Providers, serialization_key},
    queue::Finished,
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
    /// Claims made by the fetch, waiting for their deliveries.
    pub preclaimed: Arc<crate::queue::Preclaimed>,
    /// Claims of the deliveries running at one moment, made together.
    pub claims: Batcher<ActionJob, Option<Claimed>>,
    /// Outcomes of the deliveries finishing at one moment, recorded together
    /// with their jobs' ends.
    pub outcomes: Batcher<Delivered, Result<Recorded, db::DbError>>,
    /// Job ends the outcome batch wrote, waiting for apalis's acks.
    pub finished: Arc<Finished>,
}

/// The apalis job behind a delivery: the end its ack reports when the
/// handler returns `Ok` (apalis's `Done`, result `Ok(null)`), and the worker
/// holding it.
#[derive(Debug, Clone)]
pub struct JobDelivery {
    /// The row apalis's ack of this delivery writes.
    pub end: JobEnd,
    /// The apalis worker holding the job (`lock_by`).
    pub worker: String,
}

impl JobDelivery {
    /// The delivery of job `task_id`, at apalis's attempt count `attempt`,
    /// by `worker`.
    ///
    /// # Errors
    /// An attempt count beyond 32 bits ([`JobEnd::of`]).
    pub fn new(task_id: TaskId, attempt: usize, worker: &str) -> Result<Self, serde_json::Error> {
        let end = JobEnd::of(&ResultPayload {
            task_id,
            attempt,
            status: Status::Done,
            result: Ok(serde_json::Value::Null),
        })?;
        Ok(Self {
            end,
            worker: worker.to_owned(),
        })
    }
}

/// An outcome to record, with the job that delivered it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The attempt's outcome.
    pub outcome: AttemptOutcome,
    /// The job, finished in the outcome's transaction.
    pub job: JobDelivery,
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
pub async fn execute_action(
    state: &WorkerState,
    job: &ActionJob,
    delivery: JobDelivery,
) -> Result<(), DeliveryError> {
    // The common case was claimed by the fetch that delivered it, or is
    // claimed with the other deliveries of the moment (one transaction);
    // the rest, and any claim the batch could not make, take the
    // one-by-one path, which handles every case.
    let claimed = match state.preclaimed.take(&job.action_id) {
        Some(claimed) => Some(claimed),
        None => state.claims.call(job.clone()).await.flatten(),
    };
    let (action, integration, attempt) = match claimed {
        Some(claimed) => (claimed.action, claimed.integration, claimed.attempt),
        // The one-by-one paths are boxed: a transaction's futures are
        // kilobytes, and unboxed they made every delivery's future that
        // large, copied at each move.
        None => match Box::pin(claim_alone(state, job)).await? {
            Some(claimed) => claimed,
            None => return Ok(()),
        },
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
    let item = AttemptOutcome {
        action,
        attempt,
        outcome,
    };
    let delivered = Delivered {
        outcome: item,
        job: delivery,
    };
    let recorded = match state.outcomes.call(delivered.clone()).await {
        Some(recorded) => recorded?,
        None => Box::pin(record_alone(&state.pool, delivered.outcome)).await?,
    };
    if recorded == Recorded::Fenced {
        tracing::warn!(action.id = %job.action_id, "outcome of action {} attempt {attempt} dropped: another worker owns it", job.action_id);
    }
    Ok(())
}

/// The one-by-one claim ([`db::actions::start_attempt`]) in a tenant
/// transaction of its own; `None` when there is nothing to run.
async fn claim_alone(
    state: &WorkerState,
    job: &ActionJob,
) -> Result<Option<(TicketAction, Option<Integration>, i32)>, DeliveryError> {
    let mut tx = db::begin_tenant(&state.pool, job.company_id).await?;
    let start = db::actions::start_attempt(&mut tx, job, state.claim).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    match start {
        AttemptStart::Run {
            action,
            integration,
            attempt,
        } => Ok(Some((*action, integration, attempt))),
        AttemptStart::Skip(reason) => {
            tracing::info!(action.id = %job.action_id, ticket.id = %job.ticket_id, "skipping action {}: {reason}", job.action_id);
            Ok(None)
        }
        AttemptStart::Exhausted => {
            tracing::warn!(action.id = %job.action_id, ticket.id = %job.ticket_id, "action {} quarantined: attempts used up by crashed workers", job.action_id);
            metrics::counter!("txdx_worker_actions_quarantined_total").increment(1);
            Ok(None)
        }
        AttemptStart::Snoozed { limit, until } => {
            tracing::debug!(action.id = %job.action_id, ticket.id = %job.ticket_id, limit = limit.label(), "action {} snoozed until {until}: {limit}", job.action_id);
            metrics::counter!("txdx_worker_actions_snoozed_total", "limit" => limit.label())
                .increment(1);
            Ok(None)
        }
    }
}

/// The claim batcher's work: [`db::actions::claim_batch`] in one transaction
/// scoped to the batch's companies. A job it does not claim (or every job,
/// when the batch fails) answers `None` and takes the one-by-one claim.
pub async fn claim_jobs(pool: PgPool, jobs: Vec<ActionJob>) -> Vec<Option<Claimed>> {
    let companies = distinct(jobs.iter().map(|j| j.company_id));
    let claimed = async {
        let mut tx = db::begin_tenants(&pool, &companies, db::Plans::Keyed).await?;
        let claimed = db::actions::claim_batch(&mut tx, &jobs).await?;
        tx.commit().await?;
        Ok::<_, db::DbError>(claimed)
    }
    .await;
    match claimed {
        Ok(mut claimed) => jobs
            .iter()
            .map(|job| claimed.remove(&job.action_id))
            .collect(),
        Err(e) => {
            tracing::warn!(
                "a batch claim of {} jobs failed ({e}); claiming them one by one",
                jobs.len()
            );
            jobs.iter().map(|_| None).collect()
        }
    }
}

/// The outcome batcher's work: [`db::actions::record_batch`], then the
/// ends of the jobs that delivered the outcomes
/// ([`db::apalis_queue::finish_jobs`]), in one transaction scoped to the
/// batch's companies; the ends written go to `finished`, where the acks find
/// them. When the batch fails, each outcome is recorded alone, so one bad
/// item cannot hold back the others, and apalis's acks end their jobs.
pub async fn record_outcomes(
    pool: PgPool,
    finished: Arc<Finished>,
    items: Vec<Delivered>,
) -> Vec<Result<Recorded, db::DbError>> {
    let companies = distinct(items.iter().map(|i| i.outcome.action.company_id));
    let (outcomes, jobs): (Vec<AttemptOutcome>, Vec<JobDelivery>) =
        items.into_iter().map(|i| (i.outcome, i.job)).unzip();
    let batch = async {
        let mut tx = db::begin_tenants(&pool, &companies, db::Plans::Keyed).await?;
        let recorded = db::actions::record_batch(&mut tx, &outcomes).await?;
        // One statement per apalis worker (a process has one action worker,
        // renamed only when its loop restarts).
        let mut by_worker: BTreeMap<&str, Vec<&JobEnd>> = BTreeMap::new();
        for job in &jobs {
            by_worker.entry(&job.worker).or_default().push(&job.end);
        }
        for (worker, ends) in by_worker {
            db::apalis_queue::finish_jobs(&mut tx, ends, worker).await?;
        }
        tx.commit().await?;
        Ok::<_, db::DbError>(recorded)
    }
    .await;
    match batch {
        Ok(recorded) => {
            finished.put(jobs.into_iter().map(|job| (job.end.id, job.end.attempt)));
            recorded.into_iter().map(Ok).collect()
        }
        Err(e) => {
            tracing::warn!(
                "recording a batch of {} outcomes failed ({e}); recording them one by one",
                outcomes.len()
            );
            let mut recorded = Vec::with_capacity(outcomes.len());
            for outcome in outcomes {
                recorded.push(record_alone(&pool, outcome).await);
            }
            recorded
        }
    }
}

/// [`db::actions::record_outcome`] in a tenant transaction of its own.
async fn record_alone(pool: &PgPool, item: AttemptOutcome) -> Result<Recorded, db::DbError> {
    let mut tx = db::begin_tenant(pool, item.action.company_id).await?;
    let recorded =
        db::actions::record_outcome(&mut tx, &item.action, item.attempt, item.outcome).await?;
    tx.commit().await?;
    Ok(recorded)
}

/// The distinct ids of `ids`, sorted.
pub(crate) fn distinct(ids: impl Iterator<Item = uuid::Uuid>) -> Vec<uuid::Uuid> {
    let mut ids: Vec<uuid::Uuid> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    ids
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

/// An action whose edits replace a whole list (Meraki L3 rules): run while
/// holding the lock on its serialization key, one at a time per key across
/// every worker process.
async fn execute_serialized(
    pool: &PgPool,
    company_id: uuid::Uuid,
    key: &str,
    providers: &Providers,
    mode: IntegrationMode,
    call: ActionCall<'_>,
) -> Result<serde_json::Value, ProviderError> {
    let database = |e: db::DbError| ProviderError::Transient {
        message: format!("database: {e}"),
        retry_after: None,
    };
    let mut tx = db::begin_tenant(pool, company_id).await.map_err(database)?;
    db::lock_serialization_key(&mut tx, key)
        .await
        .map_err(database)?;
    let result = providers.execute(mode, call).await;
    tx.commit().await.ok();
    result
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
            // Boxed, as the one-by-one paths are: its transaction's futures
            // were 15 KB of every delivery's future.
            Some(key) => {
                Box::pin(execute_serialized(
                    &pool, company_id, &key, &providers, mode, call,
                ))
                .await
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
