//! The load generator: seeds companies over the public API, then sends
//! requests open-loop (at fixed intended times, latency counted from the
//! intended send time, so a slow server cannot slow the generator down and
//! hide its own queueing) or closed-loop (to fill the queue fast).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use uuid::Uuid;

/// A company's ADMIN token and its simulated firewall integration.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The ADMIN's username (password [`PASSWORD`]).
    pub username: String,
    /// Access token.
    pub token: String,
    /// The integration every ticket's action uses.
    pub integration_id: String,
}

/// The HTTP client of the generator: keep-alive, no proxy, bounded wait.
///
/// # Errors
/// When the TLS backend cannot be initialised.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Every seeded user's password.
pub const PASSWORD: &str = "correct horse battery staple";

/// Registrations in flight at once: each hashes a password (argon2id, which
/// the api bounds to one per two CPUs), so more only queue inside the api and
/// run into the client's timeout when a thousand companies are seeded.
const SEED_CONCURRENCY: usize = 16;

/// Registers `n` companies (each with an ADMIN) and gives each a simulated
/// PAN-OS integration, [`SEED_CONCURRENCY`] at a time.
///
/// # Errors
/// Any answer other than 201.
pub async fn seed_tenants(
    client: &reqwest::Client,
    api: &str,
    n: usize,
    simulated_latency_ms: u32,
) -> anyhow::Result<Vec<Tenant>> {
    let run = ulid::Ulid::generate().to_string().to_lowercase();
    let permits = Arc::new(tokio::sync::Semaphore::new(SEED_CONCURRENCY));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (client, api, run, permits) =
            (client.clone(), api.to_owned(), run.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let username = format!("bench-{run}-{i}");
            let body: Value = expect_created(
                client
                    .post(format!("{api}/api/auth/register"))
                    .json(&json!({"company_name": format!("Bench {run} {i}"), "username": username, "email": format!("{username}@example.com"), "password": PASSWORD}))
                    .send()
                    .await?,
            )
            .await?;
            let token = body["tokens"]["access_token"]
                .as_str()
                .context("register: no access token")?
                .to_owned();
            let mut settings = json!({});
            if simulated_latency_ms > 0 {
                settings["simulated_latency_ms"] = json!(simulated_latency_ms);
            }
            let body: Value = expect_created(
                client
                    .post(format!("{api}/api/integrations"))
                    .bearer_auth(&token)
                    .json(&json!({"provider": "PALO_ALTO", "name": "edge-fw", "mode": "simulated", "credentials": {"api_key": "k-bench-123456"}, "settings": settings}))
                    .send()
                    .await?,
            )
            .await?;
            let integration_id = body["id"]
                .as_str()
                .context("integration: no id")?
                .to_owned();
            anyhow::Ok(Tenant {
                username,
                token,
                integration_id,
            })
        });
    }
    let mut tenants = Vec::with_capacity(n);
    while let Some(t) = set.join_next().await {
        tenants.push(t??);
    }
    Ok(tenants)
}

async fn expect_created(r: reqwest::Response) -> anyhow::Result<Value> {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status != reqwest::StatusCode::CREATED {
        bail!("expected 201, got {status}: {body}");
    }
    Ok(body)
}

/// What one request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `POST /api/tickets` with one simulated `block_ip` action.
    CreateTicket,
    /// `GET /api/tickets?limit=50`.
    ListTickets,
}

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Milliseconds from the intended send time to the full response.
    pub latency_ms: f64,
    /// Milliseconds from the intended send time to the moment the request
    /// task began sending: the load generator's own lateness, part of
    /// `latency_ms`.
    pub send_lag_ms: f64,
    /// Seconds from the start of the run to the intended send time.
    pub sent_at_s: f64,
    /// Seconds from the start of the run to the response.
    pub done_at_s: f64,
    /// 2xx.
    pub ok: bool,
    /// The ticket created, for `CreateTicket`.
    pub ticket_id: Option<Uuid>,
}

/// The outcome of one open-loop run.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Every request, in completion order.
    pub samples: Vec<Sample>,
    /// Requests not sent because too many were already in flight.
    pub shed: usize,
    /// The generator's own worst lateness sending (ms): a sanity check.
    pub max_send_lag_ms: f64,
    /// When the run started (`sent_at_s` and `done_at_s` count from it).
    pub started: Option<tokio::time::Instant>,
}

impl Run {
    /// Latencies of successful requests (ms).
    pub fn ok_latencies(&self) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.ok)
            .map(|s| s.latency_ms)
            .collect()
    }

    /// Failed requests (non-2xx, errors, shed).
    pub fn errors(&self) -> usize {
        self.samples.iter().filter(|s| !s.ok).count() + self.shed
    }

    /// Tickets created.
    pub fn ticket_ids(&self) -> Vec<Uuid> {
        self.samples.iter().filter_map(|s| s.ticket_id).collect()
    }
}

async fn send(
    client: &reqwest::Client,
    api: &str,
    tenant: &Tenant,
    request: Request,
) -> (bool, Option<Uuid>) {
    let result = match request {
        Request::CreateTicket => {
            client
                .post(format!("{api}/api/tickets"))
                .bearer_auth(&tenant.token)
                .json(&json!({"subject": "Block scanner", "actions": [{"integration_id": tenant.integration_id, "action": "block_ip", "params": {"ip": "203.0.113.7"}}]}))
                .send()
                .await
        }
        Request::ListTickets => {
            client
                .get(format!("{api}/api/tickets?limit=50"))
                .bearer_auth(&tenant.token)
                .send()
                .await
        }
    };
    let Ok(response) = result else {
        return (false, None);
    };
    let ok = response.status().is_success();
    match (request, response.bytes().await) {
        (Request::CreateTicket, Ok(body)) if ok => {
            let id = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["id"].as_str().and_then(|s| s.parse().ok()));
            (id.is_some(), id)
        }
        (_, Ok(_)) => (ok, None),
        (_, Err(_)) => (false, None),
    }
}

/// Sends `request` at `rate` per second for `duration`, round-robin over
/// the tenants, each at its intended time whatever the answers before it;
/// waits for every answer. Requests beyond `max_in_flight` outstanding are
/// shed (counted as errors), which only happens far past saturation.
pub async fn open_loop(
    client: &reqwest::Client,
    api: &str,
    tenants: &[Tenant],
    request: Request,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> Run {
    let never = AtomicBool::new(false);
    open_loop_until(
        client,
        api,
        tenants,
        request,
        rate,
        duration,
        max_in_flight,
        &never,
    )
    .await
}

/// [`open_loop`] that also stops sending once `stop` is set (then waits for
/// the answers still due).
#[expect(clippy::too_many_arguments, reason = "open_loop's inputs and a flag")]
pub async fn open_loop_until(
    client: &reqwest::Client,
    api: &str,
    tenants: &[Tenant],
    request: Request,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    stop: &AtomicBool,
) -> Run {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a request count"
    )]
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let start = tokio::time::Instant::now();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    let mut run = Run {
        started: Some(start),
        ..Run::default()
    };
    for i in 0..total {
        #[expect(clippy::cast_precision_loss, reason = "a request index")]
        let sent_at_s = i as f64 / rate;
        let intended = start + Duration::from_secs_f64(sent_at_s);
        tokio::time::sleep_until(intended).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let lag = tokio::time::Instant::now().saturating_duration_since(intended);
        run.max_send_lag_ms = run.max_send_lag_ms.max(lag.as_secs_f64() * 1e3);
        if in_flight.load(Ordering::Relaxed) >= max_in_flight {
            run.shed += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (client, api, tenant, in_flight) = (
            client.clone(),
            api.to_owned(),
            tenants[i % tenants.len()].clone(),
            in_flight.clone(),
        );
        set.spawn(async move {
            let began = tokio::time::Instant::now();
            let (ok, ticket_id) = send(&client, &api, &tenant, request).await;
            let now = tokio::time::Instant::now();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            Sample {
                latency_ms: now.saturating_duration_since(intended).as_secs_f64() * 1e3,
                send_lag_ms: began.saturating_duration_since(intended).as_secs_f64() * 1e3,
                sent_at_s,
                done_at_s: now.saturating_duration_since(start).as_secs_f64(),
                ok,
                ticket_id,
            }
        });
        // Collect finished answers as we go, so the set stays small.
        while let Some(Ok(sample)) = set.try_join_next() {
            run.samples.push(sample);
        }
    }
    while let Some(sample) = set.join_next().await {
        if let Ok(sample) = sample {
            run.samples.push(sample);
        }
    }
    run
}

/// Creates `n` tickets as fast as `concurrency` clients can, round-robin
/// over the tenants; returns how many succeeded and the wall time.
pub async fn closed_loop_create(
    client: &reqwest::Client,
    api: &str,
    tenants: &[Tenant],
    n: usize,
    concurrency: usize,
) -> (usize, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let (client, api, tenants, next, ok) = (
            client.clone(),
            api.to_owned(),
            tenants.to_vec(),
            next.clone(),
            ok.clone(),
        );
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (sent, _) = send(
                    &client,
                    &api,
                    &tenants[i % tenants.len()],
                    Request::CreateTicket,
                )
                .await;
                if sent {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    (ok.load(Ordering::Relaxed), started.elapsed())
}

/// One login of a burst.
#[derive(Debug, Clone)]
pub struct Login {
    /// Milliseconds from the burst's start (every login's intended send
    /// time) to the full response.
    pub latency_ms: f64,
    /// The HTTP status; `None` when the request failed without one.
    pub status: Option<u16>,
}

/// Sends `n` `POST /api/auth/login` at once, round-robin over the tenants'
/// ADMINs (right passwords), and waits for every answer.
pub async fn login_burst(
    client: &reqwest::Client,
    api: &str,
    tenants: &[Tenant],
    n: usize,
) -> Vec<Login> {
    let start = tokio::time::Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        let Some(tenant) = tenants.get(i % tenants.len().max(1)) else {
            break;
        };
        let (client, api, username) = (client.clone(), api.to_owned(), tenant.username.clone());
        set.spawn(async move {
            let response = client
                .post(format!("{api}/api/auth/login"))
                .json(&json!({"username": username, "password": PASSWORD}))
                .send()
                .await;
            let status = match response {
                Ok(r) => {
                    let status = r.status().as_u16();
                    // The full body, as a client waits for it.
                    r.bytes().await.ok().map(|_| status)
                }
                Err(_) => None,
            };
            Login {
                latency_ms: start.elapsed().as_secs_f64() * 1e3,
                status,
            }
        });
    }
    let mut logins = Vec::with_capacity(n);
    while let Some(login) = set.join_next().await {
        if let Ok(login) = login {
            logins.push(login);
        }
    }
    logins
}
