//! The committed `openapi/openapi.yaml` is what the code generates.
//! `TXDX_UPDATE_OPENAPI=1 cargo test openapi` rewrites it.

#[test]
fn committed_openapi_document_matches_the_code() {
    let generated = txdx_api::openapi::render_yaml().unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.yaml");
    if std::env::var_os("TXDX_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.yaml is stale: run `cargo run --bin api -- openapi > openapi/openapi.yaml`"
    );
}

#[test]
fn every_operation_has_an_operation_id_and_error_responses_use_problem_json() {
    let doc = txdx_api::openapi::document();
    let value = serde_json::to_value(&doc).unwrap();
    for (path, item) in value["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["operationId"].is_string(),
                "{method} {path} lacks an operationId"
            );
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status} is not documented as problem+json"
                    );
                }
            }
        }
    }
}

/// The answers the extractors and the token check give are documented on
/// every operation they guard: 401 where a bearer token is required, 400
/// where a path parameter or a JSON body is parsed, and 413, 415 and 422
/// where a body is read.
#[test]
fn every_operation_documents_what_its_token_path_and_body_checks_answer() {
    let doc = serde_json::to_value(txdx_api::openapi::document()).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = &op["responses"];
            let bearer = op["security"]
                .as_array()
                .is_some_and(|all| all.iter().any(|r| r.get("bearer").is_some()));
            let path_parameter = op["parameters"]
                .as_array()
                .is_some_and(|all| all.iter().any(|p| p["in"] == "path"));
            let body = op["requestBody"].is_object();
            let mut expected = Vec::new();
            if bearer {
                expected.push("401");
            }
            if path_parameter || body {
                expected.push("400");
            }
            if body {
                expected.extend(["413", "415", "422"]);
            }
            for status in expected {
                assert!(
                    responses[status].is_object(),
                    "{method} {path} does not document {status}"
                );
                checked += 1;
            }
        }
    }
    // 88 when this was written: a guard against a loop that checks nothing.
    assert!(checked >= 80, "only {checked} answers checked");
}

/// The document's enums list exactly what the API sends and accepts (a
/// client generated from it once refused `"ADMIN"` as a Role).
#[test]
fn documented_enum_values_are_the_wire_spelling() {
    use shared::domain::{ActionStatus, IntegrationMode, Provider, Role, TicketStatus};
    fn wire<T: serde::Serialize>(all: &[T]) -> serde_json::Value {
        serde_json::to_value(all).unwrap()
    }
    let doc = serde_json::to_value(txdx_api::openapi::document()).unwrap();
    let schemas = &doc["components"]["schemas"];
    for (name, expected) in [
        ("Role", wire(Role::ALL)),
        ("TicketStatus", wire(TicketStatus::ALL)),
        ("ActionStatus", wire(ActionStatus::ALL)),
        ("Provider", wire(Provider::ALL)),
        ("IntegrationMode", wire(IntegrationMode::ALL)),
    ] {
        assert_eq!(schemas[name]["enum"], expected, "{name}");
    }
    assert_eq!(
        schemas["Role"]["enum"],
        serde_json::json!(["ADMIN", "USER"])
    );
}
