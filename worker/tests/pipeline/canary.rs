//! The secret canary: integrations whose credentials hold a unique value run
//! live tickets (one succeeding, others failing on bad credentials at each
//! provider); afterwards that value appears in no log line of the api or the
//! worker, no row of any table, and no API response except the one endpoint
//! meant to return credentials.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::{
    fakes::{MerakiFake, PAN_USER, PanFake, SplunkFake, SplunkJobs, WazuhFake},
    harness::{Options, System},
};

#[sqlx::test(migrations = false)]
async fn credentials_never_reach_logs_tables_or_api_responses(pool: PgPool) {
    let canary = format!("canary{}", uuid::Uuid::new_v4().simple());
    let system = System::start_with(
        pool,
        Options {
            workers: 1,
            // Every target at debug: the most a deployment could log.
            env: &[("RUST_LOG", "debug"), ("LOG_FORMAT", "json")],
            capture_logs: true,
            ..Options::default()
        },
    )
    .await;
    let token = system.register("Acme").await;
    let pan = PanFake::start().await;
    pan.accept_api_key(&format!("{canary}-pan-key"));
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    let wazuh = WazuhFake::start().await;
    let meraki = MerakiFake::start().await;
    let live = |name: &str, provider: &str, base_url: String, credentials: Value| json!({"provider": provider, "name": name, "mode": "live", "settings": {"base_url": base_url}, "credentials": credentials});
    // (integration, action, params, expected status)
    let plan = [
        (
            live(
                "pan",
                "PALO_ALTO",
                pan.url.clone(),
                json!({"api_key": format!("{canary}-pan-key")}),
            ),
            "block_ip",
            json!({"ip": "203.0.113.40"}),
            "EXECUTED",
        ),
        (
            live(
                "pan-login",
                "PALO_ALTO",
                pan.url.clone(),
                json!({"username": PAN_USER, "password": format!("{canary}-pan-password")}),
            ),
            "block_ip",
            json!({"ip": "203.0.113.41"}),
            "FAILED",
        ),
        (
            live(
                "splunk",
                "SPLUNK",
                splunk.url.clone(),
                json!({"token": format!("{canary}-splunk-token")}),
            ),
            "run_search",
            json!({"query": "index=main"}),
            "FAILED",
        ),
        (
            live(
                "wazuh",
                "WAZUH",
                wazuh.url.clone(),
                json!({"username": "wazuh-wui", "password": format!("{canary}-wazuh-password")}),
            ),
            "list_agents",
            json!({}),
            "FAILED",
        ),
        (
            live(
                "meraki",
                "MERAKI",
                meraki.base_url(),
                json!({"api_key": format!("{canary}-meraki-key")}),
            ),
            "block_ip",
            json!({"network_id": "L_1", "ip": "203.0.113.42"}),
            "FAILED",
        ),
    ];
    let mut integrations = Vec::new();
    let mut tickets = Vec::new();
    for (integration, action, params, expected) in &plan {
        let id = system.create_integration(&token, integration.clone()).await;
        let ticket = system
            .create_ticket(&token, json!({"subject": format!("canary {action}"), "actions": [{"integration_id": id, "action": action, "params": params}]}))
            .await;
        integrations.push(id);
        tickets.push((ticket["id"].as_str().unwrap().to_owned(), *expected));
    }
    for (id, expected) in &tickets {
        let done = system
            .wait_terminal(&token, id, Duration::from_secs(30))
            .await;
        assert_eq!(done["status"], *expected, "{done}");
    }
    // A rotation, and every read endpoint a client would use.
    let (status, _) = system
        .call(
            Method::PUT,
            &format!("/api/integrations/{}", integrations[0]),
            Some(&token),
            Some(&json!({"credentials": {"api_key": format!("{canary}-pan-key")}})),
        )
        .await;
    assert_eq!(status, 200);
    let mut paths = vec![
        "/api/integrations".to_owned(),
        "/api/tickets".to_owned(),
        "/api/audit-logs".to_owned(),
        "/api/auth/me".to_owned(),
        "/metrics".to_owned(),
    ];
    paths.extend(
        integrations
            .iter()
            .map(|id| format!("/api/integrations/{id}")),
    );
    paths.extend(tickets.iter().map(|(id, _)| format!("/api/tickets/{id}")));
    for path in &paths {
        let (status, _) = system.call(Method::GET, path, Some(&token), None).await;
        assert_eq!(status, 200, "{path}");
    }
    // The control: the one endpoint that returns credentials does return the
    // canary (so its absence elsewhere means something). Not recorded.
    let credentials: Value = system
        .client
        .get(system.url(&format!(
            "/api/integrations/{}/credentials",
            integrations[0]
        )))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(credentials.to_string().contains(&canary), "{credentials}");
    let worker_metrics = system.worker_metrics_text(0).await;
    // Give the processes a moment to write their last lines.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let needles = [canary.clone(), hex::encode(&canary)];
    let leaks = |text: &str| needles.iter().any(|n| text.contains(n.as_str()));

    let logs = system.logs();
    assert_eq!(logs.len(), 2, "one api and one worker log");
    let log_bytes: usize = logs.iter().map(|(_, text)| text.len()).sum();
    for (name, text) in &logs {
        assert!(!text.is_empty(), "{name} captured nothing");
        if let Some(line) = text.lines().find(|l| leaks(l)) {
            panic!("{name} logged a credential: {line}");
        }
    }
    let worker_log = &logs
        .iter()
        .find(|(n, _)| n.ends_with("worker.log"))
        .unwrap()
        .1;
    assert!(
        worker_log.contains(&integrations[0]) || worker_log.contains(&tickets[0].0),
        "the worker log covers the run"
    );

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables WHERE table_schema IN ('public', 'apalis') AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&system.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 15, "{tables:?}");
    let mut rows = 0usize;
    for table in &tables {
        let dump: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM {table} t"
        )))
        .fetch_all(&system.pool)
        .await
        .unwrap();
        rows += dump.len();
        if let Some(row) = dump.iter().find(|r| leaks(r)) {
            panic!("{table} holds a credential: {row}");
        }
    }

    let transcript = system.transcript.lock().unwrap().clone();
    for exchange in &transcript {
        assert!(
            !leaks(&exchange.body),
            "{} {} ({}) answered a credential: {}",
            exchange.method,
            exchange.path,
            exchange.status,
            exchange.body
        );
    }
    assert!(!leaks(&worker_metrics), "worker metrics carry a credential");
    println!(
        "figure: canary absent from {} log lines ({log_bytes} bytes), {rows} rows of {} tables, {} API responses; present in the credentials endpoint only",
        logs.iter().map(|(_, t)| t.lines().count()).sum::<usize>(),
        tables.len(),
        transcript.len()
    );
}
