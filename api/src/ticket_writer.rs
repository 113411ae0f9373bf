//! Ticket creation, and its group commit.
//!
//! [`create_tickets`](crate::ticket_writer::create_tickets) writes any
//! number of new tickets with a fixed number of set-based statements
//! (integrations looked up, tickets, actions, queue jobs, audit rows), in
//! the caller's transaction. `POST /api/tickets` hands each request to the
//! [`TicketWriter`](crate::ticket_writer::TicketWriter): two lanes of a
//! [`Batcher`](shared::batch::Batcher), each taking every request waiting
//! when it is free (up to [`MAX_BATCH`](crate::ticket_writer::MAX_BATCH))
//! and committing them in one transaction scoped to exactly their
//! companies. Alone, a request is written at once; under load the requests
//! that queued during one commit share the next (the second lane starts
//! beside a running commit only once
//! [`OVERLAP_AT`](crate::ticket_writer::OVERLAP_AT) requests wait), so the database does one
//! commit and four statements for many tickets (integrations, backlogs when
//! not remembered, tickets, then actions with their jobs and audit rows). A batch whose transaction
//! fails is written again one request at a time, so one request's failure
//! is its own. Requests with an `Idempotency-Key` go alone, in a
//! transaction that claims the key first, through the same
//! [`create_tickets`](crate::ticket_writer::create_tickets).
//!
//! The fair priority of a new job needs its company's backlog. A batch
//! counts it in the database only for companies this process has not
//! counted within [`BACKLOG_TTL`](crate::ticket_writer::BACKLOG_TTL); in
//! between it reuses the count, raised by every action it queued since
//! ([`BacklogCache`](crate::ticket_writer::BacklogCache)). The count read
//! up to 2,000 index entries per company per batch (2.8 ms a batch at
//! saturation). Fairness orders companies in the queue; a count at most a
//! second old, plus what this process queued since, orders them as a fresh
//! one would, give or take the work finished (or queued by another api
//! process) in that second.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::anyhow;

use serde_json::json;
use shared::{
    PgPool,
    batch::{Batcher, Lanes},
    config::Config,
    db::{
        self, DbError, PgConnection,
        audit::{AuditRows, NewAuditEvent},
        tickets::{NewAction, NewTicket, NewTicketActions},
    },
    domain::{Integration, Ticket, TicketAction},
    jobs::{self, ActionEnqueue, ActionJob, ActionJobRows},
    providers::validate_action,
};
use uuid::Uuid;

use crate::{auth::AuthUser, error::ApiError, routes::tickets::NewActionRequest, ttl::TtlMap};

/// Most requests one writer commits in one transaction.
pub const MAX_BATCH: usize = 128;

/// Writer tasks: while one commits, the next gathers the requests that
/// arrived meanwhile.
pub const WRITERS: usize = 2;

/// Requests that start a second transaction beside a running one; fewer
/// wait for it to commit and go together in the next (BENCHMARKS.md, "One
/// transaction at a time below saturation"). At 1,200 tickets/s the
/// batches grew from 4–8 to 9–14 tickets and PostgreSQL's CPU fell by a
/// tenth; at saturation the queue passes 16 and both lanes write.
pub const OVERLAP_AT: usize = 16;

/// How long a company's counted backlog is reused by the next batches.
pub const BACKLOG_TTL: Duration = Duration::from_secs(1);

/// Most companies whose backlogs are remembered at once; beyond them a
/// company's backlog is counted with each batch.
pub const BACKLOG_COMPANIES: usize = 65_536;

/// Companies' backlogs as this process last counted them, each raised by
/// the actions queued since (see the module documentation).
#[derive(Debug)]
pub struct BacklogCache {
    counted: TtlMap<Uuid, i64>,
}

impl Default for BacklogCache {
    fn default() -> Self {
        Self {
            counted: TtlMap::new(BACKLOG_TTL, BACKLOG_COMPANIES),
        }
    }
}

impl BacklogCache {
    /// The backlog of each of `companies`: remembered when counted less than
    /// [`BACKLOG_TTL`] ago, else counted now (one statement for all of them).
    ///
    /// # Errors
    /// Database failures.
    pub async fn backlogs(
        &self,
        conn: &mut PgConnection,
        companies: &[Uuid],
    ) -> Result<HashMap<Uuid, i64>, DbError> {
        let now = Instant::now();
        let mut known = HashMap::new();
        let mut stale = Vec::new();
        for company in companies {
            match self.counted.get(company) {
                Some(backlog) => {
                    known.insert(*company, backlog);
                }
                None => stale.push(*company),
            }
        }
        stale.sort_unstable();
        stale.dedup();
        if !stale.is_empty() {
            let fresh = db::actions::company_backlogs(conn, &stale).await?;
            for company in stale {
                let backlog = fresh.get(&company).copied().unwrap_or(0);
                self.counted.insert_at(company, backlog, now);
                known.insert(company, backlog);
            }
        }
        Ok(known)
    }

    /// Counts `actions` more in `company`'s remembered backlog. Called before
    /// the commit: a batch that then fails leaves its company's count too
    /// high until the next count, at most [`BACKLOG_TTL`] later.
    fn add(&self, company: Uuid, actions: i64) {
        self.counted.update(&company, |backlog| *backlog += actions);
    }
}

/// A ticket to create, already checked for everything the database is not
/// needed for (subject and description lengths, number of actions).
#[derive(Debug, Clone)]
pub struct CreateTicket {
    /// The caller.
    pub user: AuthUser,
    /// Trimmed subject.
    pub subject: String,
    /// Description.
    pub description: String,
    /// The actions as requested.
    pub actions: Vec<NewActionRequest>,
}

/// A ticket written by [`create_tickets`].
#[derive(Debug, Clone)]
pub struct Created {
    /// The ticket, PENDING.
    pub ticket: Ticket,
    /// Its actions in execution order.
    pub actions: Vec<TicketAction>,
}

/// Checks a request's actions against its company's integrations (keyed
/// by company and id, so another company's never matches) and the
/// provider catalogue.
fn plan_actions(
    request: &CreateTicket,
    integrations: &HashMap<(Uuid, Uuid), Integration>,
    default_max_attempts: i32,
) -> Result<Vec<NewAction>, ApiError> {
    let company_id = request.user.company_id;
    let mut planned = Vec::with_capacity(request.actions.len());
    for (i, action) in request.actions.iter().enumerate() {
        let prefix = format!("actions[{i}]");
        let integration = integrations
            .get(&(company_id, action.integration_id))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("{prefix}.integration_id"),
                    "no such integration in this company",
                )
            })?;
        if let Some(provider) = action.provider
            && provider != integration.provider
        {
            return Err(ApiError::invalid(
                format!("{prefix}.provider"),
                format!(
                    "the integration is a {} integration, not {provider}",
                    integration.provider
                ),
            ));
        }
        let params = validate_action(
            integration.provider,
            &action.action,
            &action.params,
            &prefix,
        )
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
        let max_attempts = action.max_attempts.unwrap_or(default_max_attempts);
        if !(1..=100).contains(&max_attempts) {
            return Err(ApiError::invalid(
                format!("{prefix}.max_attempts"),
                "must be between 1 and 100",
            ));
        }
        planned.push(NewAction {
            integration_id: integration.id,
            provider: integration.provider,
            action: action.action.clone(),
            params,
            max_attempts,
        });
    }
    Ok(planned)
}

/// Writes every valid request of `requests` as a PENDING ticket with its
/// actions, the first action's queue job and a `ticket.created` audit row,
/// in the caller's transaction, which must admit the rows of every
/// request's company and be planned by key (see [`db::begin_tenants`] and
/// [`db::Plans::Keyed`]). Returns one result per
/// request, in order: a request that fails validation gets its 422 and
/// writes nothing. The outer `Err` fails them all (a database failure): the
/// caller rolls back, and nothing of any request is kept.
///
/// # Errors
/// Database failures.
pub async fn create_tickets(
    conn: &mut PgConnection,
    config: &Config,
    backlog_cache: &BacklogCache,
    requests: &[CreateTicket],
) -> Result<Vec<Result<Created, ApiError>>, ApiError> {
    let keys: Vec<(Uuid, Uuid)> = requests
        .iter()
        .flat_map(|r| {
            r.actions
                .iter()
                .map(|a| (r.user.company_id, a.integration_id))
        })
        .collect();
    // Every statement of the batch names its rows by key: the requests'
    // integrations, each company's backlog through its index, the inserts
    // and the foreign-key checks they fire, one per row. Each keeps one
    // plan per connection (BENCHMARKS.md): the caller's transaction is
    // planned by key.
    let integrations: HashMap<(Uuid, Uuid), _> = db::integrations::find_integrations(conn, &keys)
        .await?
        .into_iter()
        .map(|it| ((it.company_id, it.id), it))
        .collect();
    let plans: Vec<Result<Vec<NewAction>, ApiError>> = requests
        .iter()
        .map(|r| plan_actions(r, &integrations, config.action_max_attempts))
        .collect();

    // The rows to write: those of the valid requests.
    let valid: Vec<(&CreateTicket, &Vec<NewAction>)> = requests
        .iter()
        .zip(&plans)
        .filter_map(|(request, plan)| Some((request, plan.as_ref().ok()?)))
        .collect();
    let tickets: Vec<NewTicket<'_>> = valid
        .iter()
        .map(|(request, _)| NewTicket {
            id: db::tickets::new_ticket_id(),
            company_id: request.user.company_id,
            created_by_user_id: request.user.user_id,
            subject: &request.subject,
            description: &request.description,
        })
        .collect();
    let job_ids: Vec<Option<String>> = valid
        .iter()
        .map(|(_, actions)| (!actions.is_empty()).then(jobs::new_job_id))
        .collect();
    let action_rows: Vec<NewTicketActions<'_>> = valid
        .iter()
        .zip(tickets.iter().zip(&job_ids))
        .map(|((request, actions), (ticket, job_id))| NewTicketActions {
            company_id: request.user.company_id,
            ticket_id: ticket.id,
            actions,
            action_ids: actions
                .iter()
                .map(|_| db::tickets::new_action_id())
                .collect(),
            first_job_id: job_id.as_deref(),
        })
        .collect();

    // Each company's backlog for the fair priority of its first jobs:
    // remembered or counted once per company, before this batch's rows,
    // which then add to it one ticket at a time below.
    let companies: Vec<Uuid> = action_rows
        .iter()
        .filter(|t| t.first_job_id.is_some())
        .map(|t| t.company_id)
        .collect();
    let mut backlogs = if companies.is_empty() {
        HashMap::new()
    } else {
        backlog_cache.backlogs(conn, &companies).await?
    };
    let mut pushed_ids = Vec::new();
    let mut enqueues = Vec::new();
    for row in &action_rows {
        let (Some(job_id), Some(&first)) = (row.first_job_id, row.action_ids.first()) else {
            continue;
        };
        let backlog = backlogs.entry(row.company_id).or_insert(0);
        enqueues.push(ActionEnqueue {
            job: ActionJob {
                company_id: row.company_id,
                ticket_id: row.ticket_id,
                action_id: first,
            },
            run_at: None,
            backlog: *backlog,
        });
        *backlog += 1;
        pushed_ids.push(job_id.to_owned());
    }
    let audits: Vec<NewAuditEvent<'_>> = valid
        .iter()
        .zip(tickets.iter().zip(&action_rows))
        .map(|((request, actions), (ticket, row))| NewAuditEvent {
            company_id: ticket.company_id,
            actor_user_id: Some(request.user.user_id),
            action: "ticket.created",
            entity_type: "ticket",
            entity_id: Some(ticket.id),
            payload: json!({
                "subject": ticket.subject,
                "actions": actions.iter().zip(&row.action_ids).map(|(a, id)| json!({"id": id, "provider": a.provider, "action": a.action})).collect::<Vec<_>>(),
            }),
        })
        .collect();

    // Two statements: the tickets, then their actions with the first
    // actions' jobs and the audit rows (one round trip for the three).
    let mut written: HashMap<Uuid, Ticket> = db::tickets::insert_tickets(conn, &tickets)
        .await?
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    let mut actions_of: HashMap<Uuid, Vec<TicketAction>> = HashMap::new();
    for action in db::tickets::insert_ticket_actions(
        conn,
        &action_rows,
        &ActionJobRows::new(&pushed_ids, &enqueues)?,
        &AuditRows::new(audits),
    )
    .await?
    {
        actions_of.entry(action.ticket_id).or_default().push(action);
    }
    // What a count after this batch would see: every action it queued.
    let mut queued: HashMap<Uuid, i64> = HashMap::new();
    for row in &action_rows {
        *queued.entry(row.company_id).or_insert(0) += i64::try_from(row.actions.len()).unwrap_or(0);
    }
    for (company, actions) in queued {
        backlog_cache.add(company, actions);
    }

    let mut results = Vec::with_capacity(requests.len());
    let mut next_ticket = tickets.iter();
    for plan in plans {
        if let Err(e) = plan {
            results.push(Err(e));
            continue;
        }
        let ticket = next_ticket
            .next()
            .and_then(|t| written.remove(&t.id))
            .ok_or_else(|| ApiError::Internal(anyhow!("an inserted ticket was not returned")))?;
        let mut actions = actions_of.remove(&ticket.id).unwrap_or_default();
        actions.sort_by_key(|a| a.position);
        results.push(Ok(Created { ticket, actions }));
    }
    Ok(results)
}

/// The group commit of `POST /api/tickets` (see the module documentation).
#[derive(Clone)]
pub struct TicketWriter {
    batcher: Arc<Batcher<CreateTicket, Result<Created, ApiError>>>,
    backlogs: Arc<BacklogCache>,
}

impl TicketWriter {
    /// Starts [`WRITERS`] writer tasks on the current runtime.
    pub fn spawn(pool: PgPool, config: Arc<Config>) -> Self {
        let backlogs = Arc::new(BacklogCache::default());
        let lanes = Lanes {
            count: WRITERS,
            max_batch: MAX_BATCH,
            overlap_at: OVERLAP_AT,
        };
        let batcher = Batcher::spawn("tickets", lanes, {
            let backlogs = backlogs.clone();
            move |requests| {
                let (pool, config, backlogs) = (pool.clone(), config.clone(), backlogs.clone());
                async move { write_batch(&pool, &config, &backlogs, requests).await }
            }
        });
        Self {
            batcher: Arc::new(batcher),
            backlogs,
        }
    }

    /// The backlogs the writer remembers, for a ticket written outside its
    /// batches (with an `Idempotency-Key`).
    #[must_use]
    pub fn backlogs(&self) -> &BacklogCache {
        &self.backlogs
    }

    /// Writes one ticket, committed (with others) before this returns.
    ///
    /// # Errors
    /// The request's own validation error (422), or a database failure.
    pub async fn create(&self, request: CreateTicket) -> Result<Created, ApiError> {
        self.batcher.call(request).await.unwrap_or_else(|| {
            Err(ApiError::Internal(anyhow!(
                "the ticket writer failed to answer"
            )))
        })
    }
}

/// Commits `requests` in one transaction, or, when that fails, each in a
/// transaction of its own; one answer per request, in order.
async fn write_batch(
    pool: &PgPool,
    config: &Config,
    backlogs: &BacklogCache,
    requests: Vec<CreateTicket>,
) -> Vec<Result<Created, ApiError>> {
    match commit(pool, config, backlogs, &requests).await {
        Ok(results) => results,
        Err(error) if requests.len() > 1 => {
            tracing::warn!(error = %error, tickets = requests.len(), "a ticket batch failed; writing its requests one by one");
            let mut results = Vec::with_capacity(requests.len());
            for request in &requests {
                let result =
                    match commit(pool, config, backlogs, std::slice::from_ref(request)).await {
                        Ok(mut one) => one.pop().unwrap_or_else(|| {
                            Err(ApiError::Internal(anyhow!("no result for a ticket")))
                        }),
                        Err(e) => Err(e),
                    };
                results.push(result);
            }
            results
        }
        Err(error) => vec![Err(error)],
    }
}

/// One transaction over exactly the companies of `requests`.
async fn commit(
    pool: &PgPool,
    config: &Config,
    backlogs: &BacklogCache,
    requests: &[CreateTicket],
) -> Result<Vec<Result<Created, ApiError>>, ApiError> {
    let mut companies: Vec<Uuid> = requests.iter().map(|r| r.user.company_id).collect();
    companies.sort_unstable();
    companies.dedup();
    let mut tx = db::begin_tenants(pool, &companies, db::Plans::Keyed).await?;
    let results = create_tickets(&mut tx, config, backlogs, requests).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(results)
}
