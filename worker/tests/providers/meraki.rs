//! Meraki: L3 firewall rule edits (read, modify, replace) and policy
//! objects.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::http::Method;
use serde_json::{Value, json};
use shared::{
    domain::Provider,
    providers::{IntegrationSettings, validate_action},
};
use tokio::sync::Mutex;
use txdx_worker::providers::{ActionCall, Credentials, Providers, serialization_key};
use uuid::Uuid;

use crate::{
    credentials,
    fakes::{Canned, MERAKI_KEY, MerakiFake},
    permanent, run, transient,
};

fn key() -> Credentials {
    credentials(json!({"api_key": MERAKI_KEY}))
}

fn settings(meraki: &MerakiFake) -> IntegrationSettings {
    crate::settings(&meraki.base_url())
}

const NETWORK: &str = "L_646829496481105433";

fn existing_rule() -> Value {
    json!({"comment": "Allow DNS", "policy": "allow", "protocol": "udp", "srcPort": "Any",
           "srcCidr": "10.0.0.0/8", "destPort": "53", "destCidr": "Any", "syslogEnabled": false})
}

#[tokio::test]
async fn block_ip_reads_the_rules_and_puts_them_back_with_a_deny_rule_first() {
    let meraki = MerakiFake::start().await;
    meraki.set_rules(NETWORK, vec![existing_rule()]);
    let result = run(
        &Providers::new().unwrap(),
        Provider::Meraki,
        "block_ip",
        json!({"network_id": NETWORK, "ip": "203.0.113.7"}),
        &settings(&meraki),
        &key(),
    )
    .await
    .unwrap();
    let requests = meraki.seen_at(&MerakiFake::rules_path(NETWORK));
    assert_eq!(
        requests
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>(),
        [Method::GET, Method::PUT]
    );
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {MERAKI_KEY}").as_str())
        );
    }
    let ours = json!({"comment": "txdx block 203.0.113.7", "policy": "deny", "protocol": "any",
                      "srcPort": "Any", "srcCidr": "Any", "destPort": "Any", "destCidr": "203.0.113.7/32",
                      "syslogEnabled": false});
    assert_eq!(
        requests[1].json(),
        json!({"rules": [ours, existing_rule()]}),
        "the default rule is not sent back"
    );
    assert_eq!(meraki.rules(NETWORK), [ours.clone(), existing_rule()]);
    assert_eq!(result["added"], true);
    assert_eq!(result["rule"], ours);
}

#[tokio::test]
async fn blocking_an_ip_twice_adds_one_rule() {
    let meraki = MerakiFake::start().await;
    let providers = Providers::new().unwrap();
    let params = json!({"network_id": NETWORK, "ip": "203.0.113.7", "comment": "ticket T-1"});
    run(
        &providers,
        Provider::Meraki,
        "block_ip",
        params.clone(),
        &settings(&meraki),
        &key(),
    )
    .await
    .unwrap();
    let again = run(
        &providers,
        Provider::Meraki,
        "block_ip",
        params,
        &settings(&meraki),
        &key(),
    )
    .await
    .unwrap();
    assert_eq!(again["added"], false);
    assert_eq!(meraki.rules(NETWORK).len(), 1);
    let puts = meraki
        .seen_at(&MerakiFake::rules_path(NETWORK))
        .into_iter()
        .filter(|r| r.method == Method::PUT)
        .count();
    assert_eq!(puts, 1, "nothing to write the second time");
}

#[tokio::test]
async fn unblock_ip_removes_only_the_block_rule_for_that_ip() {
    let meraki = MerakiFake::start().await;
    let providers = Providers::new().unwrap();
    meraki.set_rules(NETWORK, vec![existing_rule()]);
    for ip in ["203.0.113.7", "203.0.113.8"] {
        run(
            &providers,
            Provider::Meraki,
            "block_ip",
            json!({"network_id": NETWORK, "ip": ip}),
            &settings(&meraki),
            &key(),
        )
        .await
        .unwrap();
    }
    let result = run(
        &providers,
        Provider::Meraki,
        "unblock_ip",
        json!({"network_id": NETWORK, "ip": "203.0.113.7"}),
        &settings(&meraki),
        &key(),
    )
    .await
    .unwrap();
    assert_eq!(result["removed_rules"], 1);
    let rules = meraki.rules(NETWORK);
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0]["destCidr"], "203.0.113.8/32");
    assert_eq!(rules[1], existing_rule());

    let again = run(
        &providers,
        Provider::Meraki,
        "unblock_ip",
        json!({"network_id": NETWORK, "ip": "203.0.113.7"}),
        &settings(&meraki),
        &key(),
    )
    .await
    .unwrap();
    assert_eq!(again["removed_rules"], 0);
}

/// Per-key locks standing for the handler's advisory locks.
type KeyLocks = Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>;

/// Runs block_ip for `ip`, holding `locks[serialization_key]` around the
/// call when given: the handler's Postgres advisory lock, in miniature.
async fn block_concurrently(
    providers: Providers,
    settings: IntegrationSettings,
    ip: &'static str,
    locks: Option<KeyLocks>,
) {
    let params = validate_action(
        Provider::Meraki,
        "block_ip",
        &json!({"network_id": NETWORK, "ip": ip}),
        "params",
    )
    .unwrap();
    let credentials = key();
    let call = ActionCall {
        action_id: Uuid::now_v7(),
        provider: Provider::Meraki,
        action: "block_ip",
        params: &params,
        settings: &settings,
        credentials: &credentials,
    };
    let lock = match (&locks, serialization_key(&call)) {
        (Some(locks), Some(key)) => Some(locks.lock().await.entry(key).or_default().clone()),
        _ => None,
    };
    let _held = match &lock {
        Some(lock) => Some(lock.lock().await),
        None => None,
    };
    providers
        .execute(shared::domain::IntegrationMode::Live, call)
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_blocks_on_one_network_both_stick_when_serialised_by_key() {
    let meraki = MerakiFake::start().await;
    meraki.delay_rule_reads(Duration::from_millis(300));
    let providers = Providers::new().unwrap();
    let locks = Arc::new(Mutex::new(HashMap::new()));
    tokio::join!(
        block_concurrently(
            providers.clone(),
            settings(&meraki),
            "203.0.113.1",
            Some(locks.clone())
        ),
        block_concurrently(
            providers.clone(),
            settings(&meraki),
            "203.0.113.2",
            Some(locks.clone())
        ),
    );
    let mut blocked: Vec<_> = meraki
        .rules(NETWORK)
        .iter()
        .map(|r| r["destCidr"].as_str().unwrap().to_owned())
        .collect();
    blocked.sort();
    assert_eq!(blocked, ["203.0.113.1/32", "203.0.113.2/32"]);
    assert_eq!(
        locks.lock().await.keys().collect::<Vec<_>>(),
        [&format!("meraki-l3:{NETWORK}")]
    );
}

#[tokio::test]
async fn without_serialisation_one_of_two_concurrent_blocks_is_lost() {
    let meraki = MerakiFake::start().await;
    meraki.delay_rule_reads(Duration::from_millis(300));
    let providers = Providers::new().unwrap();
    tokio::join!(
        block_concurrently(providers.clone(), settings(&meraki), "203.0.113.1", None),
        block_concurrently(providers.clone(), settings(&meraki), "203.0.113.2", None),
    );
    assert_eq!(
        meraki.rules(NETWORK).len(),
        1,
        "both read the empty list; the second PUT overwrote the first"
    );
}

#[tokio::test]
async fn create_policy_object_posts_a_cidr_object_and_finds_its_own_on_retry() {
    let meraki = MerakiFake::start().await;
    let providers = Providers::new().unwrap();
    let params =
        json!({"organization_id": "549236", "name": "txdx-bad-actors", "cidr": "203.0.113.0/24"});
    let created = run(
        &providers,
        Provider::Meraki,
        "create_policy_object",
        params.clone(),
        &settings(&meraki),
        &key(),
    )
    .await
    .unwrap();
    let post = &meraki.seen_at("/api/v1/organizations/549236/policyObjects")[0];
    assert_eq!(post.method, Method::POST);
    assert_eq!(
        post.json(),
        json!({"name": "txdx-bad-actors", "category": "network", "type": "cidr", "cidr": "203.0.113.0/24"})
    );
    assert_eq!(created["name"], "txdx-bad-actors");
    assert!(created.get("already_existed").is_none());

    let retried = run(
        &providers,
        Provider::Meraki,
        "create_policy_object",
        params,
        &settings(&meraki),
        &key(),
    )
    .await
    .unwrap();
    assert_eq!(retried["id"], created["id"]);
    assert_eq!(retried["already_existed"], true);

    let message = permanent(
        run(
            &providers,
            Provider::Meraki,
            "create_policy_object",
            json!({"organization_id": "549236", "name": "txdx-bad-actors", "cidr": "198.51.100.0/24"}),
            &settings(&meraki),
            &key(),
        )
        .await,
    );
    assert!(
        message.contains("already exists with cidr 203.0.113.0/24"),
        "{message}"
    );
}

#[tokio::test]
async fn http_failures_are_classified() {
    let meraki = MerakiFake::start().await;
    let providers = Providers::new().unwrap();
    let path = MerakiFake::rules_path(NETWORK);
    let block = |settings: IntegrationSettings, credentials: Credentials| {
        let providers = providers.clone();
        async move {
            run(
                &providers,
                Provider::Meraki,
                "block_ip",
                json!({"network_id": NETWORK, "ip": "203.0.113.7"}),
                &settings,
                &credentials,
            )
            .await
        }
    };

    let message = permanent(
        block(
            settings(&meraki),
            credentials(json!({"api_key": "wrong-key-0000"})),
        )
        .await,
    );
    assert_eq!(
        message,
        "Meraki: bad credentials (HTTP 401): Invalid API key"
    );

    meraki.respond(
        Canned::new(
            &path,
            429,
            r#"{"errors":["API rate limit exceeded for organization"]}"#,
        )
        .header("Retry-After", "2"),
    );
    let (message, retry_after) = transient(block(settings(&meraki), key()).await);
    assert_eq!(retry_after, Some(Duration::from_secs(2)));
    assert!(message.contains("API rate limit exceeded"), "{message}");

    meraki.respond(
        Canned::new(&path, 503, "").header("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    let (_, retry_after) = transient(block(settings(&meraki), key()).await);
    assert_eq!(
        retry_after,
        Some(Duration::ZERO),
        "a past date asks for no delay"
    );

    meraki.respond(Canned::new(&path, 504, ""));
    transient(block(settings(&meraki), key()).await);

    meraki.respond(Canned::new(&path, 200, "{}").delay(Duration::from_secs(3)));
    let mut slow = settings(&meraki);
    slow.timeout_secs = Some(1);
    let (message, _) = transient(block(slow, key()).await);
    assert!(message.contains("did not answer within 1 s"), "{message}");

    meraki.respond(Canned::new(
        &path,
        200,
        r#"[{"comment": "a list, not an object"}]"#,
    ));
    let message = permanent(block(settings(&meraki), key()).await);
    assert!(
        message.starts_with(
            "Meraki: malformed answer to l3FirewallRules: it does not have the expected shape"
        ),
        "{message}"
    );

    meraki.respond(Canned::new(
        &path,
        404,
        r#"{"errors":["Network not found"]}"#,
    ));
    let message = permanent(block(settings(&meraki), key()).await);
    assert_eq!(
        message,
        "Meraki: rejected the request (HTTP 404): Network not found"
    );

    assert!(
        meraki.rules(NETWORK).is_empty(),
        "no failed attempt wrote anything"
    );
}

#[tokio::test]
async fn test_connection_lists_organisations() {
    let meraki = MerakiFake::start().await;
    let result = Providers::new()
        .unwrap()
        .test_connection(Provider::Meraki, &settings(&meraki), &key())
        .await
        .unwrap();
    assert_eq!(
        result,
        json!({"organizations": [{"id": "549236", "name": "DevNet Sandbox"}]})
    );
    assert_eq!(meraki.seen_at("/api/v1/organizations").len(), 1);
}
