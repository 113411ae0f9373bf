//! Wazuh: JWT authentication, agents and active responses.

use std::time::Duration;

use axum::http::Method;
use serde_json::json;
use shared::domain::Provider;
use txdx_worker::providers::{Credentials, ProviderError, Providers};

use crate::{
    credentials,
    fakes::{Canned, WAZUH_PASSWORD, WAZUH_USER, WazuhFake, basic},
    permanent, run, settings, transient,
};

fn login() -> Credentials {
    credentials(json!({"username": WAZUH_USER, "password": WAZUH_PASSWORD}))
}

#[tokio::test]
async fn list_agents_authenticates_then_queries_with_the_bearer_token() {
    let wazuh = WazuhFake::start().await;
    let result = run(
        &Providers::new().unwrap(),
        Provider::Wazuh,
        "list_agents",
        json!({"status": "active", "search": "db", "limit": 50}),
        &settings(&wazuh.url),
        &login(),
    )
    .await
    .unwrap();
    let auth = &wazuh.seen_at("/security/user/authenticate")[0];
    assert_eq!(auth.method, Method::POST);
    assert_eq!(
        auth.header("authorization"),
        Some(basic(WAZUH_USER, WAZUH_PASSWORD).as_str())
    );
    let agents = &wazuh.seen_at("/agents")[0];
    assert_eq!(agents.method, Method::GET);
    assert_eq!(
        agents.header("authorization"),
        Some("Bearer eyJhbGciOiJFUzUxMiJ9.fake-jwt-1")
    );
    assert_eq!(agents.query_param("status").as_deref(), Some("active"));
    assert_eq!(agents.query_param("search").as_deref(), Some("db"));
    assert_eq!(agents.query_param("limit").as_deref(), Some("50"));
    assert_eq!(
        result,
        json!({"total_affected_items": 1, "affected_items": [{"id": "002", "name": "db-01", "status": "active"}]})
    );
}

#[tokio::test]
async fn run_active_response_puts_the_command_for_the_listed_agents() {
    let wazuh = WazuhFake::start().await;
    let result = run(
        &Providers::new().unwrap(),
        Provider::Wazuh,
        "run_active_response",
        json!({"agents": ["001", "002"], "command": "!firewall-drop", "srcip": "203.0.113.7", "arguments": ["-"]}),
        &settings(&wazuh.url),
        &login(),
    )
    .await
    .unwrap();
    let put = &wazuh.seen_at("/active-response")[0];
    assert_eq!(put.method, Method::PUT);
    assert_eq!(put.query_param("agents_list").as_deref(), Some("001,002"));
    assert_eq!(
        put.json(),
        json!({"command": "!firewall-drop", "arguments": ["-"], "alert": {"data": {"srcip": "203.0.113.7"}}})
    );
    assert_eq!(result["affected_items"], json!(["001", "002"]));
    assert_eq!(result["total_affected_items"], 2);
}

#[tokio::test]
async fn one_token_serves_several_actions() {
    let wazuh = WazuhFake::start().await;
    let providers = Providers::new().unwrap();
    run(
        &providers,
        Provider::Wazuh,
        "list_agents",
        json!({}),
        &settings(&wazuh.url),
        &login(),
    )
    .await
    .unwrap();
    run(
        &providers.clone(),
        Provider::Wazuh,
        "run_active_response",
        json!({"agents": ["001"], "command": "!firewall-drop", "srcip": "203.0.113.7"}),
        &settings(&wazuh.url),
        &login(),
    )
    .await
    .unwrap();
    assert_eq!(wazuh.authentications(), 1);
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_and_the_call_repeated() {
    let wazuh = WazuhFake::start().await;
    let providers = Providers::new().unwrap();
    run(
        &providers,
        Provider::Wazuh,
        "list_agents",
        json!({}),
        &settings(&wazuh.url),
        &login(),
    )
    .await
    .unwrap();
    wazuh.revoke_tokens();
    run(
        &providers,
        Provider::Wazuh,
        "list_agents",
        json!({}),
        &settings(&wazuh.url),
        &login(),
    )
    .await
    .unwrap();
    assert_eq!(wazuh.authentications(), 2);
    let agents = wazuh.seen_at("/agents");
    assert_eq!(agents.len(), 3, "ok, refused, repeated");
    assert_eq!(
        agents[1].header("authorization"),
        Some("Bearer eyJhbGciOiJFUzUxMiJ9.fake-jwt-1")
    );
    assert_eq!(
        agents[2].header("authorization"),
        Some("Bearer eyJhbGciOiJFUzUxMiJ9.fake-jwt-2")
    );
}

#[tokio::test]
async fn a_partial_active_response_needs_a_human_and_names_the_failed_agents() {
    let wazuh = WazuhFake::start().await;
    let result = run(
        &Providers::new().unwrap(),
        Provider::Wazuh,
        "run_active_response",
        json!({"agents": ["001", "003"], "command": "!firewall-drop", "srcip": "203.0.113.7"}),
        &settings(&wazuh.url),
        &login(),
    )
    .await;
    let Err(ProviderError::NeedsHuman { reason }) = result else {
        panic!("expected NeedsHuman, got {result:?}");
    };
    assert!(reason.starts_with("partial success:"), "{reason}");
    assert!(reason.contains("ran on 001"), "{reason}");
    assert!(
        reason.contains("failed on 003: Cannot send request, agent is not active (code 1707)"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_active_response_reaching_no_agent_is_permanent() {
    let wazuh = WazuhFake::start().await;
    let message = permanent(
        run(
            &Providers::new().unwrap(),
            Provider::Wazuh,
            "run_active_response",
            json!({"agents": ["003", "042"], "command": "!firewall-drop"}),
            &settings(&wazuh.url),
            &login(),
        )
        .await,
    );
    assert!(message.contains("reached no agent"), "{message}");
    assert!(
        message.contains("003: Cannot send request, agent is not active"),
        "{message}"
    );
    assert!(
        message.contains("042: Agent does not exist (code 1701)"),
        "{message}"
    );
}

#[tokio::test]
async fn an_empty_agent_list_is_refused_without_calling_the_manager() {
    let wazuh = WazuhFake::start().await;
    let message = permanent(
        run(
            &Providers::new().unwrap(),
            Provider::Wazuh,
            "run_active_response",
            json!({"agents": [], "command": "!firewall-drop"}),
            &settings(&wazuh.url),
            &login(),
        )
        .await,
    );
    assert!(message.contains("at least one agent"), "{message}");
    assert!(wazuh.seen().is_empty());
}

#[tokio::test]
async fn wrong_credentials_are_permanent_and_never_echoed() {
    let wazuh = WazuhFake::start().await;
    let message = permanent(
        run(
            &Providers::new().unwrap(),
            Provider::Wazuh,
            "list_agents",
            json!({}),
            &settings(&wazuh.url),
            &credentials(json!({"username": WAZUH_USER, "password": "wrong-password"})),
        )
        .await,
    );
    assert_eq!(
        message,
        "Wazuh: bad credentials (HTTP 401): Unauthorized: Invalid credentials"
    );
}

#[tokio::test]
async fn http_failures_are_classified() {
    let wazuh = WazuhFake::start().await;
    let providers = Providers::new().unwrap();
    let list = |settings: shared::providers::IntegrationSettings| {
        let providers = providers.clone();
        async move {
            run(
                &providers,
                Provider::Wazuh,
                "list_agents",
                json!({}),
                &settings,
                &login(),
            )
            .await
        }
    };

    wazuh.respond(
        Canned::new("/agents", 429, r#"{"title":"Too Many Requests","detail":"Maximum number of requests per minute reached"}"#)
            .header("Retry-After", "30"),
    );
    let (message, retry_after) = transient(list(settings(&wazuh.url)).await);
    assert_eq!(retry_after, Some(Duration::from_secs(30)));
    assert!(
        message.contains("Maximum number of requests per minute reached"),
        "{message}"
    );

    wazuh.respond(Canned::new(
        "/agents",
        500,
        r#"{"title":"Internal Server Error","detail":"boom"}"#,
    ));
    transient(list(settings(&wazuh.url)).await);

    wazuh.respond(Canned::new("/agents", 200, "{}").delay(Duration::from_secs(3)));
    let mut slow = settings(&wazuh.url);
    slow.timeout_secs = Some(1);
    let (message, _) = transient(list(slow).await);
    assert!(message.contains("did not answer within 1 s"), "{message}");

    wazuh.respond(Canned::new("/agents", 200, r#"{"data": "not an object"}"#));
    let message = permanent(list(settings(&wazuh.url)).await);
    assert!(
        message
            .starts_with("Wazuh: malformed answer to agents: it does not have the expected shape"),
        "{message}"
    );

    wazuh.respond(Canned::new(
        "/security/user/authenticate",
        200,
        r#"{"data": {}}"#,
    ));
    let fresh = Providers::new().unwrap();
    let message = permanent(
        run(
            &fresh,
            Provider::Wazuh,
            "list_agents",
            json!({}),
            &settings(&wazuh.url),
            &login(),
        )
        .await,
    );
    assert!(
        message.contains("malformed answer to authenticate"),
        "{message}"
    );
}

#[tokio::test]
async fn test_connection_authenticates_afresh() {
    let wazuh = WazuhFake::start().await;
    let providers = Providers::new().unwrap();
    for _ in 0..2 {
        let ok = providers
            .test_connection(Provider::Wazuh, &settings(&wazuh.url), &login())
            .await
            .unwrap();
        assert_eq!(ok, json!({"authenticated": true}));
    }
    assert_eq!(wazuh.authentications(), 2);
}
