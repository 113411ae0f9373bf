//! PAN-OS: User-ID tag (un)registration through the XML API.

use std::time::Duration;

use axum::http::Method;
use serde_json::json;
use shared::domain::Provider;
use txdx_worker::providers::{Credentials, Providers};

use crate::{
    credentials,
    fakes::{Canned, PAN_API_KEY, PAN_PASSWORD, PAN_USER, PanFake},
    permanent, run, settings, transient,
};

fn key() -> Credentials {
    credentials(json!({"api_key": PAN_API_KEY}))
}

fn login() -> Credentials {
    credentials(json!({"username": PAN_USER, "password": PAN_PASSWORD}))
}

#[tokio::test]
async fn block_ip_registers_the_tag_with_timeout_and_vsys_using_the_key_header() {
    let pan = PanFake::start().await;
    let result = run(
        &Providers::new().unwrap(),
        Provider::PaloAlto,
        "block_ip",
        json!({"ip": "203.0.113.7", "timeout_secs": 3600, "vsys": "vsys1"}),
        &settings(&pan.url),
        &key(),
    )
    .await
    .unwrap();
    let request = &pan.seen_at("/api/")[0];
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.header("x-pan-key"), Some(PAN_API_KEY));
    assert_eq!(request.query_param("vsys").as_deref(), Some("vsys1"));
    assert_eq!(request.query_param("target"), None);
    assert_eq!(request.form_param("type").as_deref(), Some("user-id"));
    assert_eq!(
        request.form_param("cmd").as_deref(),
        Some(
            "<uid-message><version>2.0</version><type>update</type><payload><register><entry ip=\"203.0.113.7\"><tag><member timeout=\"3600\">txdx-blocked</member></tag></entry></register></payload></uid-message>"
        )
    );
    assert!(
        !request.query.contains(PAN_API_KEY),
        "the key stays out of the URL"
    );
    assert_eq!(
        result,
        json!({"status": "success", "registered": [{"ip": "203.0.113.7", "tag": "txdx-blocked"}], "already_registered": false, "timeout_secs": 3600})
    );
    assert!(
        pan.registered()
            .contains(&("203.0.113.7".into(), "txdx-blocked".into()))
    );
}

#[tokio::test]
async fn unblock_ip_unregisters_the_tag_on_a_panorama_target() {
    let pan = PanFake::start().await;
    let providers = Providers::new().unwrap();
    let params = json!({"ip": "2001:db8::7", "tag": "bad-actors", "target": "007954000123456"});
    run(
        &providers,
        Provider::PaloAlto,
        "block_ip",
        params.clone(),
        &settings(&pan.url),
        &key(),
    )
    .await
    .unwrap();
    let result = run(
        &providers,
        Provider::PaloAlto,
        "unblock_ip",
        params,
        &settings(&pan.url),
        &key(),
    )
    .await
    .unwrap();
    let request = &pan.seen_at("/api/")[1];
    assert_eq!(
        request.query_param("target").as_deref(),
        Some("007954000123456")
    );
    assert_eq!(
        request.form_param("cmd").as_deref(),
        Some(
            "<uid-message><version>2.0</version><type>update</type><payload><unregister><entry ip=\"2001:db8::7\"><tag><member>bad-actors</member></tag></entry></unregister></payload></uid-message>"
        )
    );
    assert_eq!(result["unregistered"][0]["tag"], "bad-actors");
    assert_eq!(result["already_unregistered"], false);
    assert!(pan.registered().is_empty());
}

#[tokio::test]
async fn blocking_twice_succeeds_and_says_the_tag_was_already_there() {
    let pan = PanFake::start().await;
    let providers = Providers::new().unwrap();
    let params = json!({"ip": "203.0.113.7"});
    run(
        &providers,
        Provider::PaloAlto,
        "block_ip",
        params.clone(),
        &settings(&pan.url),
        &key(),
    )
    .await
    .unwrap();
    let again = run(
        &providers,
        Provider::PaloAlto,
        "block_ip",
        params.clone(),
        &settings(&pan.url),
        &key(),
    )
    .await
    .unwrap();
    assert_eq!(again["already_registered"], true);
    run(
        &providers,
        Provider::PaloAlto,
        "unblock_ip",
        params.clone(),
        &settings(&pan.url),
        &key(),
    )
    .await
    .unwrap();
    let again = run(
        &providers,
        Provider::PaloAlto,
        "unblock_ip",
        params,
        &settings(&pan.url),
        &key(),
    )
    .await
    .unwrap();
    assert_eq!(again["already_unregistered"], true);
}

#[tokio::test]
async fn a_key_generated_from_username_and_password_is_cached_and_renewed_once_when_refused() {
    let pan = PanFake::start().await;
    let providers = Providers::new().unwrap();
    for ip in ["203.0.113.1", "203.0.113.2"] {
        run(
            &providers,
            Provider::PaloAlto,
            "block_ip",
            json!({"ip": ip}),
            &settings(&pan.url),
            &login(),
        )
        .await
        .unwrap();
    }
    let keygens: Vec<_> = pan
        .seen_at("/api/")
        .into_iter()
        .filter(|s| s.form_param("type").as_deref() == Some("keygen"))
        .collect();
    assert_eq!(keygens.len(), 1, "one keygen for two actions");
    assert_eq!(keygens[0].form_param("user").as_deref(), Some(PAN_USER));
    assert_eq!(
        keygens[0].form_param("password").as_deref(),
        Some(PAN_PASSWORD)
    );
    assert!(
        !keygens[0].query.contains(PAN_PASSWORD),
        "the password stays out of the URL"
    );
    let calls: Vec<_> = pan
        .seen_at("/api/")
        .into_iter()
        .filter(|s| s.form_param("type").as_deref() == Some("user-id"))
        .collect();
    assert!(
        calls
            .iter()
            .all(|c| c.header("x-pan-key") == Some("GENERATED-KEY-1"))
    );

    pan.revoke_generated_keys();
    run(
        &providers,
        Provider::PaloAlto,
        "block_ip",
        json!({"ip": "203.0.113.3"}),
        &settings(&pan.url),
        &login(),
    )
    .await
    .unwrap();
    let last = pan.seen_at("/api/").pop().unwrap();
    assert_eq!(last.header("x-pan-key"), Some("GENERATED-KEY-2"));
    assert_eq!(pan.registered().len(), 3);
}

#[tokio::test]
async fn a_wrong_api_key_or_password_is_permanent_bad_credentials() {
    let pan = PanFake::start().await;
    let providers = Providers::new().unwrap();
    let message = permanent(
        run(
            &providers,
            Provider::PaloAlto,
            "block_ip",
            json!({"ip": "203.0.113.7"}),
            &settings(&pan.url),
            &credentials(json!({"api_key": "revoked-key-9999"})),
        )
        .await,
    );
    assert!(
        message.contains("bad credentials") && message.contains("Invalid credentials."),
        "{message}"
    );
    assert!(!message.contains("revoked-key-9999"), "{message}");

    let message = permanent(
        run(
            &providers,
            Provider::PaloAlto,
            "block_ip",
            json!({"ip": "203.0.113.7"}),
            &settings(&pan.url),
            &credentials(json!({"username": PAN_USER, "password": "wrong-password"})),
        )
        .await,
    );
    assert!(
        message.contains("bad credentials") && message.contains("Invalid Credential"),
        "{message}"
    );
}

#[tokio::test]
async fn an_error_status_is_permanent_with_the_firewalls_message_unless_it_says_try_again() {
    let pan = PanFake::start().await;
    let providers = Providers::new().unwrap();
    pan.respond(Canned::new(
        "/api/",
        200,
        r#"<response status="error" code="12"><msg><line>vsys9 is not a valid reference</line></msg></response>"#,
    ));
    let message = permanent(
        run(
            &providers,
            Provider::PaloAlto,
            "block_ip",
            json!({"ip": "203.0.113.7", "vsys": "vsys9"}),
            &settings(&pan.url),
            &key(),
        )
        .await,
    );
    assert_eq!(message, "PAN-OS: vsys9 is not a valid reference (code 12)");

    pan.respond(Canned::new(
        "/api/",
        200,
        r#"<response status="error" code="22"><msg><line>Session timed out</line></msg></response>"#,
    ));
    let (message, _) = transient(
        run(
            &providers,
            Provider::PaloAlto,
            "block_ip",
            json!({"ip": "203.0.113.7"}),
            &settings(&pan.url),
            &key(),
        )
        .await,
    );
    assert!(message.contains("Session timed out"), "{message}");

    pan.respond(Canned::new(
        "/api/",
        200,
        r#"<response status="error"><msg><line>Another commit is in progress. Please try again later</line></msg></response>"#,
    ));
    transient(
        run(
            &providers,
            Provider::PaloAlto,
            "block_ip",
            json!({"ip": "203.0.113.7"}),
            &settings(&pan.url),
            &key(),
        )
        .await,
    );
}

#[tokio::test]
async fn http_failures_are_classified() {
    let pan = PanFake::start().await;
    let providers = Providers::new().unwrap();
    let block = |settings: shared::providers::IntegrationSettings| {
        let providers = providers.clone();
        async move {
            run(
                &providers,
                Provider::PaloAlto,
                "block_ip",
                json!({"ip": "203.0.113.7"}),
                &settings,
                &key(),
            )
            .await
        }
    };

    pan.respond(Canned::new("/api/", 429, "Too Many Requests").header("Retry-After", "12"));
    let (_, retry_after) = transient(block(settings(&pan.url)).await);
    assert_eq!(retry_after, Some(Duration::from_secs(12)));

    pan.respond(Canned::new(
        "/api/",
        500,
        "<html>Internal Server Error</html>",
    ));
    let (message, _) = transient(block(settings(&pan.url)).await);
    assert!(message.contains("HTTP 500"), "{message}");

    pan.respond(
        Canned::new("/api/", 200, "<response status=\"success\"/>").delay(Duration::from_secs(3)),
    );
    let mut slow = settings(&pan.url);
    slow.timeout_secs = Some(1);
    let (message, _) = transient(block(slow).await);
    assert!(message.contains("did not answer within 1 s"), "{message}");

    pan.respond(Canned::new("/api/", 200, r#"{"status":"success"}"#));
    let message = permanent(block(settings(&pan.url)).await);
    assert!(
        message.starts_with(
            "PAN-OS: malformed answer to the XML API call: it has no <response> element"
        ),
        "{message}"
    );

    pan.respond(Canned::new(
        "/api/",
        200,
        "<response status=\"success\"><result>",
    ));
    let message = permanent(block(settings(&pan.url)).await);
    assert!(message.contains("malformed answer"), "{message}");
}

#[tokio::test]
async fn test_connection_shows_system_info() {
    let pan = PanFake::start().await;
    let info = Providers::new()
        .unwrap()
        .test_connection(Provider::PaloAlto, &settings(&pan.url), &login())
        .await
        .unwrap();
    assert_eq!(
        info,
        json!({"hostname": "fw-lab-01", "model": "PA-VM", "sw_version": "11.1.2", "serial": "007954000123456"})
    );
    let op = pan.seen_at("/api/").pop().unwrap();
    assert_eq!(op.form_param("type").as_deref(), Some("op"));
    assert_eq!(
        op.form_param("cmd").as_deref(),
        Some("<show><system><info/></system></show>")
    );
}
