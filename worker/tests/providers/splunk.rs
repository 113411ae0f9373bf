//! Splunk: search jobs on the management port and events through HEC.

use std::time::Duration;

use axum::http::Method;
use serde_json::json;
use shared::domain::Provider;
use txdx_worker::providers::Providers;
use uuid::Uuid;

use crate::{
    credentials,
    fakes::{
        Canned, HEC_TOKEN, SPLUNK_PASSWORD, SPLUNK_TOKEN, SPLUNK_USER, SplunkFake, SplunkJobs,
        basic,
    },
    permanent, run, run_as, settings, transient,
};

fn token() -> txdx_worker::providers::Credentials {
    credentials(json!({"token": SPLUNK_TOKEN}))
}

const JOBS: &str = "/services/search/jobs";

#[tokio::test]
async fn run_search_creates_a_job_polls_it_until_done_and_keeps_max_results_rows() {
    let splunk = SplunkFake::start(SplunkJobs {
        polls_before_done: 2,
        ..SplunkJobs::default()
    })
    .await;
    let result = run(
        &Providers::new().unwrap(),
        Provider::Splunk,
        "run_search",
        json!({"query": "index=main src_ip=10.0.0.5", "earliest_time": "-24h", "latest_time": "now", "max_results": 3}),
        &settings(&splunk.url),
        &token(),
    )
    .await
    .unwrap();

    let create = &splunk.seen_at(JOBS)[0];
    assert_eq!(create.method, Method::POST);
    assert_eq!(
        create.header("authorization"),
        Some(format!("Bearer {SPLUNK_TOKEN}").as_str())
    );
    assert_eq!(
        create.form_param("search").as_deref(),
        Some("search index=main src_ip=10.0.0.5")
    );
    assert_eq!(create.form_param("earliest_time").as_deref(), Some("-24h"));
    assert_eq!(create.form_param("latest_time").as_deref(), Some("now"));
    assert_eq!(create.form_param("output_mode").as_deref(), Some("json"));

    let sid = result["sid"].as_str().unwrap();
    let polls = splunk.seen_at(&format!("{JOBS}/{sid}"));
    assert_eq!(polls.len(), 3, "two RUNNING answers, then DONE");
    assert!(polls.iter().all(|p| p.method == Method::GET
        && p.query_param("output_mode").as_deref() == Some("json")
        && p.header("authorization") == Some(&format!("Bearer {SPLUNK_TOKEN}"))));
    let results = &splunk.seen_at(&format!("{JOBS}/{sid}/results"))[0];
    assert_eq!(results.query_param("count").as_deref(), Some("3"));
    assert_eq!(results.query_param("output_mode").as_deref(), Some("json"));

    assert_eq!(result["dispatch_state"], "DONE");
    assert_eq!(result["result_count"], 3);
    assert_eq!(result["total_result_count"], 5);
    assert_eq!(result["truncated"], true);
    assert_eq!(result["results"][0]["host"], "host-0");
}

#[tokio::test]
async fn run_search_uses_basic_auth_without_a_token_and_keeps_a_generating_command() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    let result = run(
        &Providers::new().unwrap(),
        Provider::Splunk,
        "run_search",
        json!({"query": "| tstats count where index=main"}),
        &settings(&splunk.url),
        &credentials(json!({"username": SPLUNK_USER, "password": SPLUNK_PASSWORD})),
    )
    .await
    .unwrap();
    let create = &splunk.seen_at(JOBS)[0];
    assert_eq!(
        create.header("authorization"),
        Some(basic(SPLUNK_USER, SPLUNK_PASSWORD).as_str())
    );
    assert_eq!(
        create.form_param("search").as_deref(),
        Some("| tstats count where index=main")
    );
    let results = splunk
        .seen()
        .into_iter()
        .find(|s| s.path.ends_with("/results"))
        .unwrap();
    assert_eq!(
        results.query_param("count").as_deref(),
        Some("100"),
        "default max_results"
    );
    assert_eq!(result["result_count"], 5);
    assert_eq!(result["truncated"], false);
}

#[tokio::test]
async fn a_failed_search_job_is_permanent_with_the_jobs_messages() {
    let splunk = SplunkFake::start(SplunkJobs {
        final_state: "FAILED",
        messages: json!([{"type": "FATAL", "text": "Unknown search command 'sarch'."}]),
        ..SplunkJobs::default()
    })
    .await;
    let message = permanent(
        run(
            &Providers::new().unwrap(),
            Provider::Splunk,
            "run_search",
            json!({"query": "| sarch foo"}),
            &settings(&splunk.url),
            &token(),
        )
        .await,
    );
    assert!(message.contains("failed"), "{message}");
    assert!(
        message.contains("FATAL: Unknown search command 'sarch'."),
        "{message}"
    );
    assert!(
        splunk.seen().iter().all(|s| !s.path.ends_with("/results")),
        "no results are fetched for a failed job"
    );
}

#[tokio::test]
async fn a_search_still_running_at_the_time_limit_is_transient_and_cancelled() {
    let splunk = SplunkFake::start(SplunkJobs {
        polls_before_done: 1_000,
        ..SplunkJobs::default()
    })
    .await;
    let providers = Providers::new()
        .unwrap()
        .with_search_time_limit(Duration::from_millis(700));
    let (message, retry_after) = transient(
        run(
            &providers,
            Provider::Splunk,
            "run_search",
            json!({"query": "index=main"}),
            &settings(&splunk.url),
            &token(),
        )
        .await,
    );
    assert!(message.contains("not done within"), "{message}");
    assert_eq!(retry_after, None);
    let control = splunk
        .seen()
        .into_iter()
        .find(|s| s.path.ends_with("/control"))
        .expect("the job is cancelled");
    assert_eq!(control.form_param("action").as_deref(), Some("cancel"));
}

#[tokio::test]
async fn a_wrong_token_is_permanent_bad_credentials() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    let message = permanent(
        run(
            &Providers::new().unwrap(),
            Provider::Splunk,
            "run_search",
            json!({"query": "index=main"}),
            &settings(&splunk.url),
            &credentials(json!({"token": "not-the-token"})),
        )
        .await,
    );
    assert!(message.contains("bad credentials (HTTP 401)"), "{message}");
    assert!(
        message.contains("call not properly authenticated"),
        "{message}"
    );
    assert!(!message.contains("not-the-token"), "{message}");
}

#[tokio::test]
async fn a_429_is_transient_with_the_providers_retry_after() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    splunk.respond(
        Canned::new(
            JOBS,
            429,
            r#"{"messages":[{"type":"ERROR","text":"Too many search jobs"}]}"#,
        )
        .header("Retry-After", "7"),
    );
    let (message, retry_after) = transient(
        run(
            &Providers::new().unwrap(),
            Provider::Splunk,
            "run_search",
            json!({"query": "index=main"}),
            &settings(&splunk.url),
            &token(),
        )
        .await,
    );
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert!(message.contains("rate limited"), "{message}");
}

#[tokio::test]
async fn a_5xx_is_transient() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    splunk.respond(Canned::new(JOBS, 502, "<html>Bad Gateway</html>"));
    let (message, retry_after) = transient(
        run(
            &Providers::new().unwrap(),
            Provider::Splunk,
            "run_search",
            json!({"query": "index=main"}),
            &settings(&splunk.url),
            &token(),
        )
        .await,
    );
    assert!(message.contains("HTTP 502"), "{message}");
    assert_eq!(retry_after, None);
}

#[tokio::test]
async fn a_slow_answer_times_out_as_transient() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    splunk.respond(Canned::new(JOBS, 201, r#"{"sid":"late"}"#).delay(Duration::from_secs(3)));
    let mut settings = settings(&splunk.url);
    settings.timeout_secs = Some(1);
    let started = std::time::Instant::now();
    let (message, _) = transient(
        run(
            &Providers::new().unwrap(),
            Provider::Splunk,
            "run_search",
            json!({"query": "index=main"}),
            &settings,
            &token(),
        )
        .await,
    );
    assert!(message.contains("did not answer within 1 s"), "{message}");
    assert!(started.elapsed() < Duration::from_millis(2_500));
}

#[tokio::test]
async fn a_malformed_answer_is_permanent_with_a_clear_message() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    splunk.respond(Canned::new(JOBS, 201, "<html>login page</html>"));
    let message = permanent(
        run(
            &Providers::new().unwrap(),
            Provider::Splunk,
            "run_search",
            json!({"query": "index=main"}),
            &settings(&splunk.url),
            &token(),
        )
        .await,
    );
    assert!(
        message.starts_with("Splunk: malformed answer to search/jobs: it is not JSON"),
        "{message}"
    );
}

#[tokio::test]
async fn a_provider_message_echoing_a_credential_is_scrubbed() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    splunk.respond(Canned::new(
        JOBS,
        400,
        &format!(
            r#"{{"messages":[{{"type":"ERROR","text":"token {SPLUNK_TOKEN} may not search"}}]}}"#
        ),
    ));
    let message = permanent(
        run(
            &Providers::new().unwrap(),
            Provider::Splunk,
            "run_search",
            json!({"query": "index=main"}),
            &settings(&splunk.url),
            &token(),
        )
        .await,
    );
    assert!(!message.contains(SPLUNK_TOKEN), "{message}");
    assert!(
        message.contains("token <redacted> may not search"),
        "{message}"
    );
}

#[tokio::test]
async fn send_event_posts_to_hec_with_the_splunk_token_and_the_action_id_as_channel() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    let mut settings = settings("http://127.0.0.1:9"); // the management port: unused here
    settings.hec_url = Some(splunk.url.clone());
    let action_id = Uuid::now_v7();
    let result = run_as(
        action_id,
        &Providers::new().unwrap(),
        Provider::Splunk,
        "send_event",
        json!({"event": {"ticket": "T-1", "verdict": "blocked"}, "sourcetype": "txdx:action", "index": "security", "host": "txdx"}),
        &settings,
        &credentials(json!({"hec_token": HEC_TOKEN})),
    )
    .await
    .unwrap();
    let post = &splunk.seen_at("/services/collector/event")[0];
    assert_eq!(post.method, Method::POST);
    assert_eq!(
        post.header("authorization"),
        Some(format!("Splunk {HEC_TOKEN}").as_str())
    );
    assert_eq!(
        post.header("x-splunk-request-channel"),
        Some(action_id.to_string().as_str())
    );
    assert_eq!(
        post.json(),
        json!({"event": {"ticket": "T-1", "verdict": "blocked"}, "sourcetype": "txdx:action", "index": "security", "host": "txdx"})
    );
    assert_eq!(result["code"], 0);
    assert_eq!(result["channel"], action_id.to_string());
}

#[tokio::test]
async fn send_event_falls_back_to_base_url_without_hec_url() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    run(
        &Providers::new().unwrap(),
        Provider::Splunk,
        "send_event",
        json!({"event": "plain text"}),
        &settings(&splunk.url),
        &credentials(json!({"hec_token": HEC_TOKEN})),
    )
    .await
    .unwrap();
    assert_eq!(splunk.seen_at("/services/collector/event").len(), 1);
}

#[tokio::test]
async fn hec_codes_classify_token_busy_and_bad_data_answers() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    let providers = Providers::new().unwrap();
    let send = |creds: serde_json::Value| {
        let providers = providers.clone();
        let settings = settings(&splunk.url);
        async move {
            run(
                &providers,
                Provider::Splunk,
                "send_event",
                json!({"event": {"a": 1}}),
                &settings,
                &credentials(creds),
            )
            .await
        }
    };

    let message = permanent(send(json!({"hec_token": "wrong-hec-token"})).await);
    assert!(
        message.contains("bad credentials") && message.contains("code 4: Invalid token"),
        "{message}"
    );

    splunk.respond(
        Canned::new(
            "/services/collector/event",
            503,
            r#"{"text":"Server is busy","code":9}"#,
        )
        .header("Retry-After", "5"),
    );
    let (message, retry_after) = transient(send(json!({"hec_token": HEC_TOKEN})).await);
    assert!(message.contains("code 9: Server is busy"), "{message}");
    assert_eq!(retry_after, Some(Duration::from_secs(5)));

    splunk.respond(Canned::new(
        "/services/collector/event",
        400,
        r#"{"text":"Incorrect index","code":7,"invalid-event-number":0}"#,
    ));
    let message = permanent(send(json!({"hec_token": HEC_TOKEN})).await);
    assert!(message.contains("code 7: Incorrect index"), "{message}");

    let message = permanent(send(json!({"token": SPLUNK_TOKEN})).await);
    assert!(message.contains("lack `hec_token`"), "{message}");
}

#[tokio::test]
async fn test_connection_reads_server_info_or_proves_a_hec_token() {
    let splunk = SplunkFake::start(SplunkJobs::default()).await;
    let providers = Providers::new().unwrap();
    let info = providers
        .test_connection(Provider::Splunk, &settings(&splunk.url), &token())
        .await
        .unwrap();
    assert_eq!(info["server_name"], "fake-splunk");
    assert_eq!(info["version"], "9.2.1");
    let info_request = &splunk.seen_at("/services/server/info")[0];
    assert_eq!(
        info_request.query_param("output_mode").as_deref(),
        Some("json")
    );

    let hec = providers
        .test_connection(
            Provider::Splunk,
            &settings(&splunk.url),
            &credentials(json!({"hec_token": HEC_TOKEN})),
        )
        .await
        .unwrap();
    assert_eq!(hec["hec"], "token accepted");
    let refused = providers
        .test_connection(
            Provider::Splunk,
            &settings(&splunk.url),
            &credentials(json!({"hec_token": "wrong-hec-token"})),
        )
        .await;
    assert!(permanent(refused).contains("bad credentials"));
}
