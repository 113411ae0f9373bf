//! The OpenAPI document: info, security scheme, shared schemas, and the
//! rendering used by `api openapi` and the drift test.

use utoipa::{
    Modify, OpenApi,
    openapi::{
        ContentBuilder, Ref, RefOr, ResponseBuilder,
        path::{Operation, ParameterIn},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

/// Top-level document; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "TxDx API",
        description = "Multi-tenant security ticket automation: tickets drive provider actions (Splunk, Palo Alto, Wazuh, Meraki) run by a worker pool.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(
        crate::error::Problem,
        crate::routes::audit_logs::AuditEntityType,
        shared::providers::SplunkRunSearch,
        shared::providers::SplunkSendEvent,
        shared::providers::PaloAltoIpTag,
        shared::providers::WazuhListAgents,
        shared::providers::WazuhActiveResponse,
        shared::providers::MerakiIpRule,
        shared::providers::MerakiPolicyObject,
    )),
    tags(
        (name = "auth", description = "Register a company, log in, rotate and revoke tokens"),
        (name = "companies", description = "The caller's company"),
        (name = "users", description = "The company's users"),
        (name = "integrations", description = "Provider connections; credentials live in the secret store"),
        (name = "tickets", description = "Tickets and their provider actions"),
        (name = "audit", description = "The audit trail"),
        (name = "jobs", description = "A company's automation jobs and queue statistics (ADMIN)"),
        (name = "health", description = "Liveness, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Adds the answers every operation of a kind can give, whatever its
/// handler, so no handler can forget them:
/// - a bearer-secured operation checks the token first (401);
/// - a path parameter is read by the [`Path`](crate::extract::Path)
///   extractor and a JSON body by [`Json`](crate::extract::Json) (400
///   malformed; for a body also 413 too large, 415 not JSON, 422 a field
///   missing or of the wrong type);
/// - every `/api/` operation reaches the database (503 while it is
///   unavailable).
///
/// Entries a handler documents itself are kept.
pub fn document_common_responses(api: &mut utoipa::openapi::OpenApi) {
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in &mut api.paths.paths {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let Operation {
                request_body,
                responses,
                parameters,
                security,
                ..
            } = operation;
            let has_body = request_body.is_some();
            let has_path_parameter = parameters
                .iter()
                .flatten()
                .any(|p| matches!(p.parameter_in, ParameterIn::Path));
            let bearer = security.iter().flatten().any(|requirement| {
                serde_json::to_value(requirement)
                    .is_ok_and(|schemes| schemes.get("bearer").is_some())
            });
            let mut add = |status: &str, description: &str| {
                responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(description));
            };
            match (has_path_parameter, has_body) {
                (true, true) => add("400", "Malformed id or JSON"),
                (true, false) => add("400", "Malformed id"),
                (false, true) => add("400", "Malformed JSON"),
                (false, false) => {}
            }
            if bearer {
                add("401", "Missing or invalid token");
            }
            if has_body {
                add("413", "Body larger than the limit (256 KiB)");
                add("415", "Body not sent as `Content-Type: application/json`");
                add("422", "Invalid field");
            }
            if path.starts_with("/api/") {
                add(
                    "503",
                    "Database unavailable, or the api at its limit of requests in flight (with `Retry-After`); retry shortly",
                );
            }
        }
    }
}

/// The full document, paths included.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, api) = crate::router_with_doc();
    api
}

/// The document as YAML, as committed in `openapi/openapi.yaml`.
///
/// # Errors
/// When serialisation fails (a bug in a schema).
pub fn render_yaml() -> anyhow::Result<String> {
    document()
        .to_yaml()
        .map_err(|e| anyhow::anyhow!("cannot render the OpenAPI document as YAML: {e}"))
}
