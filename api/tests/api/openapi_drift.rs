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
