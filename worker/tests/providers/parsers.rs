//! Property tests of every provider answer our clients parse, through the
//! HTTP fakes: the fake answers one call with an arbitrary body (text,
//! arbitrary JSON, JSON in the provider's own envelopes with arbitrary
//! contents, XML-ish text), and the client must not panic; an answer it
//! cannot read is a permanent "malformed answer" error; and no message
//! quotes more than a bounded part of the answer, or any credential.

use std::time::Duration;

use proptest::{
    collection,
    prelude::*,
    sample::select,
    test_runner::{Config, TestRunner},
};
use serde_json::{Value, json};
use shared::domain::Provider;
use txdx_worker::providers::{Credentials, ProviderError, Providers};

use crate::{
    credentials,
    fakes::{
        Canned, HEC_TOKEN, MERAKI_KEY, MerakiFake, PAN_API_KEY, PAN_PASSWORD, PAN_USER, PanFake,
        SPLUNK_TOKEN, SplunkFake, SplunkJobs, WAZUH_PASSWORD, WAZUH_USER, WazuhFake,
    },
    run, settings,
};

/// Cases per parse site: each is one HTTP exchange with a fake.
const CASES: u32 = 64;

/// Every credential value the fakes know, sprinkled into the answers: the
/// ones a call holds must not appear in its message, not even their first
/// eight characters (another integration's are just text to it).
const SECRETS: &[&str] = &[
    SPLUNK_TOKEN,
    HEC_TOKEN,
    PAN_API_KEY,
    PAN_PASSWORD,
    WAZUH_PASSWORD,
    MERAKI_KEY,
];

/// Longest message a hostile answer may produce: our text around one
/// bounded quote (300 characters) of the provider's.
const MAX_MESSAGE_CHARS: usize = 700;

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The keys the four providers' answers use, so generated JSON reaches
/// past the first missing field.
const KEYS: &[&str] = &[
    "entry",
    "content",
    "dispatchState",
    "resultCount",
    "messages",
    "type",
    "sid",
    "results",
    "text",
    "code",
    "ackId",
    "data",
    "token",
    "affected_items",
    "failed_items",
    "total_affected_items",
    "error",
    "message",
    "id",
    "rules",
    "policy",
    "destCidr",
    "comment",
    "name",
    "cidr",
    "serverName",
];

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        "[a-z]{300,600}",
        select(SECRETS.to_vec()).prop_map(str::to_owned),
        select(vec![
            "DONE",
            "FAILED",
            "RUNNING",
            "QUIT",
            "success",
            "error",
            "Default rule",
            "deny",
            "any",
            "",
            "\u{0}",
        ])
        .prop_map(str::to_owned),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        select(vec![-1_i64, 0, 1, 2, 5, 9, 19, 1707, i64::MAX]).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            collection::btree_map(
                prop_oneof![select(KEYS).prop_map(str::to_owned), "[a-z]{1,8}"],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The providers' envelopes with arbitrary contents.
fn any_envelope() -> impl Strategy<Value = Value> {
    (0usize..9, any_json(), any_json(), any_json()).prop_map(|(shape, a, b, c)| match shape {
        0 => json!({"entry": [{"content": a}]}),
        1 => json!({"entry": [{"content": {"dispatchState": a, "resultCount": b, "messages": c}}]}),
        2 => json!({"sid": a}),
        3 => json!({"results": a}),
        4 => json!({"code": a, "text": b, "ackId": c}),
        5 => json!({"data": {"token": a}}),
        6 => json!({"data": {"affected_items": a, "failed_items": b, "total_affected_items": c}, "error": b}),
        7 => json!({"rules": a}),
        _ => json!([a, b, c]),
    })
}

/// A body for a JSON site.
fn any_json_answer() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,120}",
        any_json().prop_map(|v| v.to_string()),
        any_envelope().prop_map(|v| v.to_string()),
        (any_envelope(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let text = v.to_string();
            let at = cut.index(text.len() + 1);
            text.get(..at).unwrap_or(&text).to_owned()
        }),
        Just("<html><body>login</body></html>".to_owned()),
    ]
}

/// A body for the PAN-OS XML API.
fn any_xml_answer() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        select(vec![
            "<response status=\"success\">",
            "<response status=\"error\" code=\"403\">",
            "<response status=\"error\" code=\"22\">",
            "<response>",
            "</response>",
            "<result>",
            "</result>",
            "<msg>",
            "</msg>",
            "<line>",
            "</line>",
            "<key>",
            "</key>",
            "<entry ip=\"203.0.113.7\" message=\"already exists, ignore\"/>",
            "&amp;",
            "&#0;",
            "<!DOCTYPE r [<!ENTITY e \"boom\">]>",
            "<",
            ">",
        ])
        .prop_map(str::to_owned),
        any_text().prop_map(|t| t.replace('<', "&lt;")),
    ];
    prop_oneof![
        ".{0,120}",
        collection::vec(token, 0..16).prop_map(|tokens| tokens.concat()),
    ]
}

/// The property: no panic (we got here), a bounded message free of the
/// call's credentials, and an answer that cannot be read at all is a permanent
/// "malformed answer".
fn check(
    site: &str,
    body: &str,
    readable: bool,
    result: &Result<Value, ProviderError>,
    secrets: &[&str],
) -> Result<(), TestCaseError> {
    let Err(error) = result else {
        prop_assert!(readable, "{}: accepted {:?}", site, body);
        return Ok(());
    };
    let message = error.to_string();
    for secret in secrets {
        prop_assert!(
            !message.contains(&secret[..8]),
            "{}: a credential in {:?}",
            site,
            message
        );
    }
    prop_assert!(
        message.chars().count() <= MAX_MESSAGE_CHARS,
        "{}: {} characters: {}",
        site,
        message.chars().count(),
        message
    );
    if !readable {
        prop_assert!(
            matches!(error, ProviderError::Permanent { message } if message.contains("malformed answer")),
            "{}: {:?} for {:?}",
            site,
            error,
            body
        );
    }
    Ok(())
}

fn is_json(body: &str) -> bool {
    serde_json::from_str::<Value>(body).is_ok()
}

#[test]
fn splunk_answers_of_any_shape_are_read_or_refused_as_malformed() {
    let rt = runtime();
    let providers = Providers::new()
        .unwrap()
        .with_search_time_limit(Duration::from_secs(2));
    let creds = credentials(json!({"token": SPLUNK_TOKEN, "hec_token": HEC_TOKEN}));
    let sid = "1700000000.1";
    let sites: [(&str, String, u16); 5] = [
        ("server/info", "/services/server/info".into(), 200),
        ("search/jobs", "/services/search/jobs".into(), 201),
        (
            "the job's status",
            format!("/services/search/jobs/{sid}"),
            200,
        ),
        (
            "the job's results",
            format!("/services/search/jobs/{sid}/results"),
            200,
        ),
        ("HEC", "/services/collector/event".into(), 200),
    ];
    for (site, path, status) in sites {
        runner()
            .run(&any_json_answer(), |body| {
                let result = rt.block_on(async {
                    let splunk = SplunkFake::start(SplunkJobs {
                        polls_before_done: 0,
                        ..SplunkJobs::default()
                    })
                    .await;
                    splunk.respond(Canned::new(&path, status, &body));
                    let settings = settings(&splunk.url);
                    match site {
                        "server/info" => {
                            providers
                                .test_connection(Provider::Splunk, &settings, &creds)
                                .await
                        }
                        "HEC" => {
                            run(
                                &providers,
                                Provider::Splunk,
                                "send_event",
                                json!({"event": {"blocked": "203.0.113.7"}}),
                                &settings,
                                &creds,
                            )
                            .await
                        }
                        _ => {
                            run(
                                &providers,
                                Provider::Splunk,
                                "run_search",
                                json!({"query": "index=main"}),
                                &settings,
                                &creds,
                            )
                            .await
                        }
                    }
                });
                check(
                    site,
                    &body,
                    is_json(&body),
                    &result,
                    &[SPLUNK_TOKEN, HEC_TOKEN],
                )
            })
            .unwrap();
    }
}

#[test]
fn pan_os_answers_of_any_shape_are_read_or_refused_as_malformed() {
    let rt = runtime();
    let key = credentials(json!({"api_key": PAN_API_KEY}));
    let login = credentials(json!({"username": PAN_USER, "password": PAN_PASSWORD}));
    for (site, creds, secrets) in [
        ("the XML API call", &key, &[PAN_API_KEY][..]),
        ("keygen", &login, &[PAN_PASSWORD][..]),
    ] {
        runner()
            .run(&any_xml_answer(), |body| {
                let result = rt.block_on(async {
                    let pan = PanFake::start().await;
                    pan.respond(Canned::new("/api/", 200, &body));
                    // A fresh client each time: a generated key is cached.
                    run(
                        &Providers::new().unwrap(),
                        Provider::PaloAlto,
                        "block_ip",
                        json!({"ip": "203.0.113.7"}),
                        &settings(&pan.url),
                        creds,
                    )
                    .await
                });
                check(site, &body, body.contains("<response"), &result, secrets)
            })
            .unwrap();
    }
}

#[test]
fn wazuh_answers_of_any_shape_are_read_or_refused_as_malformed() {
    let rt = runtime();
    let providers = Providers::new().unwrap();
    let login = credentials(json!({"username": WAZUH_USER, "password": WAZUH_PASSWORD}));
    let wazuh = rt.block_on(WazuhFake::start());
    for (site, path) in [
        ("authenticate", "/security/user/authenticate"),
        ("agents", "/agents"),
        ("active-response", "/active-response"),
    ] {
        runner()
            .run(&any_json_answer(), |body| {
                let result = rt.block_on(async {
                    wazuh.respond(Canned::new(path, 200, &body));
                    let settings = settings(&wazuh.url);
                    match site {
                        "authenticate" => {
                            providers
                                .test_connection(Provider::Wazuh, &settings, &login)
                                .await
                        }
                        "agents" => {
                            run(
                                &providers,
                                Provider::Wazuh,
                                "list_agents",
                                json!({}),
                                &settings,
                                &login,
                            )
                            .await
                        }
                        _ => {
                            run(
                                &providers,
                                Provider::Wazuh,
                                "run_active_response",
                                json!({"agents": ["001"], "command": "!firewall-drop"}),
                                &settings,
                                &login,
                            )
                            .await
                        }
                    }
                });
                check(site, &body, is_json(&body), &result, &[WAZUH_PASSWORD])
            })
            .unwrap();
    }
}

#[test]
fn meraki_answers_of_any_shape_are_read_or_refused_as_malformed() {
    let rt = runtime();
    let providers = Providers::new().unwrap();
    let key: Credentials = credentials(json!({"api_key": MERAKI_KEY}));
    let meraki = rt.block_on(MerakiFake::start());
    for (site, path, status) in [
        ("organizations", "/api/v1/organizations".to_owned(), 200),
        ("l3FirewallRules", MerakiFake::rules_path("N_1"), 200),
        (
            "policyObjects",
            "/api/v1/organizations/549236/policyObjects".to_owned(),
            201,
        ),
    ] {
        runner()
            .run(&any_json_answer(), |body| {
                let result = rt.block_on(async {
                    meraki.respond(Canned::new(&path, status, &body));
                    let settings = settings(&meraki.base_url());
                    match site {
                        "organizations" => {
                            providers
                                .test_connection(Provider::Meraki, &settings, &key)
                                .await
                        }
                        "l3FirewallRules" => {
                            run(
                                &providers,
                                Provider::Meraki,
                                "block_ip",
                                json!({"network_id": "N_1", "ip": "203.0.113.7"}),
                                &settings,
                                &key,
                            )
                            .await
                        }
                        _ => {
                            run(
                                &providers,
                                Provider::Meraki,
                                "create_policy_object",
                                json!({"organization_id": "549236", "name": "txdx-bad", "cidr": "203.0.113.0/24"}),
                                &settings,
                                &key,
                            )
                            .await
                        }
                    }
                });
                check(site, &body, is_json(&body), &result, &[MERAKI_KEY])
            })
            .unwrap();
    }
}
