//! The load generator: seeds companies over the public API, then sends
//! requests open-loop (at fixed intended times, latency counted from the
//! intended send time, so a slow server cannot slow the generator down and
//! hide its own queueing) or closed-loop (to fill the queue fast).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
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

const PASSWORD: &str = "correct horse battery staple";

/// Registers `n` companies (each with an ADMIN) and gives each a simulated
/// PAN-OS integration.
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
    let mut set = JoinSet::new();
    for i in 0..n {
        let (client, api, run) = (client.clone(), api.to_owned(), run.clone());
        set.spawn(async move {
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
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a request count"
    )]
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let start = tokio::time::Instant::now();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    let mut run = Run::default();
    for i in 0..total {
        #[expect(clippy::cast_precision_loss, reason = "a request index")]
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended).await;
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
            let (ok, ticket_id) = send(&client, &api, &tenant, request).await;
            let now = tokio::time::Instant::now();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            Sample {
                latency_ms: now.saturating_duration_since(intended).as_secs_f64() * 1e3,
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
