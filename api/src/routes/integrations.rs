//! `/api/integrations`: a company's provider connections. Credentials sent
//! here go straight to the secret store; the database keeps the secret's
//! identifier. No response but `GET /integrations/{id}/credentials` (ADMIN,
//! audited) ever carries a credential.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::{
    db::{
        self,
        integrations::{IntegrationChanges, NewIntegration},
    },
    domain::{Integration, IntegrationMode, Provider},
    providers::{IntegrationSettings, validate_credentials},
    secrets::{SecretError, SecretValue},
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::{AdminUser, AuthUser},
    error::ApiError,
    extract::{Json, Path, Query},
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_integrations, create_integration))
        .routes(routes!(
            get_integration,
            update_integration,
            delete_integration
        ))
        .routes(routes!(get_integration_credentials))
        .routes(routes!(test_integration))
}

/// How long `POST /api/integrations/{id}/test` waits for a worker's answer.
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The outcome of a connection test.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionTestResponse {
    /// The integration.
    pub integration_id: Uuid,
    /// Whether the provider accepted the credentials and answered.
    pub ok: bool,
    /// When not ok: `transient` (worth retrying), `permanent` (fix the
    /// credentials or settings) or `needs_human`.
    pub error_kind: Option<String>,
    /// When not ok: what the provider or the network said (never a credential).
    pub error: Option<String>,
    /// When ok: what the provider answered (simulated answers say so).
    #[schema(value_type = Option<Object>)]
    pub outcome: Option<Value>,
}

/// An integration as the API shows it: never its credentials.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationResponse {
    /// Id.
    pub id: Uuid,
    /// Provider.
    pub provider: Provider,
    /// Name, unique within the company.
    pub name: String,
    /// `live` calls the provider; `simulated` answers deterministically with no network.
    pub mode: IntegrationMode,
    /// Non-secret settings.
    pub settings: IntegrationSettings,
    /// Whether credentials are stored for it.
    pub has_credentials: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<Integration> for IntegrationResponse {
    fn from(i: Integration) -> Self {
        Self {
            settings: serde_json::from_value(i.extra_json).unwrap_or_default(),
            id: i.id,
            provider: i.provider,
            name: i.name,
            mode: i.mode,
            has_credentials: i.keyvault_secret_id.is_some(),
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

/// A page of integrations.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationPage {
    /// The integrations, by name.
    pub items: Vec<IntegrationResponse>,
    /// The offset of the next page, absent on the last page.
    pub next_offset: Option<u32>,
}

/// A new integration (ADMIN).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegrationRequest {
    /// Provider.
    pub provider: Provider,
    /// 1 to 200 characters, unique within the company.
    pub name: String,
    /// Default `simulated`.
    #[serde(default)]
    pub mode: Option<IntegrationMode>,
    /// Non-secret settings (base URL, TLS, timeouts, limits).
    #[serde(default)]
    pub settings: Option<Value>,
    /// Credentials, an object of strings; required for `live` mode. See the
    /// provider table for the accepted fields.
    #[serde(default)]
    #[schema(value_type = Option<Object>, example = json!({"api_key": "..."}))]
    pub credentials: Option<Value>,
}

/// Changes to an integration (ADMIN); absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIntegrationRequest {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New mode.
    #[serde(default)]
    pub mode: Option<IntegrationMode>,
    /// New settings (replace the old ones whole).
    #[serde(default)]
    pub settings: Option<Value>,
    /// New credentials: stored as a new secret version (rotation).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub credentials: Option<Value>,
}

/// An integration's credentials (ADMIN only; every read is audited).
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialsResponse {
    /// The integration.
    pub integration_id: Uuid,
    /// The credentials as stored.
    #[schema(value_type = Object)]
    pub credentials: Value,
}

/// Filters for the integration list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IntegrationQuery {
    /// Only this provider.
    pub provider: Option<Provider>,
    /// Page size, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "crate::pagination::limit")]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Rows to skip.
    #[serde(default, deserialize_with = "crate::pagination::offset")]
    #[param(maximum = 2147483647)]
    pub offset: Option<u32>,
}

pub(crate) fn secret_error(e: SecretError) -> ApiError {
    match e {
        SecretError::NotFound => ApiError::NotFound(
            "the integration's credentials are missing from the secret store".into(),
        ),
        SecretError::Transient { .. } => {
            ApiError::Unavailable("the secret store is unavailable; retry shortly".into())
        }
        SecretError::Permanent(message) => {
            ApiError::Internal(anyhow::anyhow!("secret store: {message}"))
        }
    }
}

fn check_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    Ok(name)
}

fn check_settings(value: &Value) -> Result<Value, ApiError> {
    let settings = IntegrationSettings::parse(value, "settings")
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    serde_json::to_value(settings).map_err(|e| ApiError::Internal(e.into()))
}

/// The company's integrations.
#[utoipa::path(get, path = "/api/integrations", tag = "integrations", operation_id = "list_integrations",
    security(("bearer" = [])),
    params(IntegrationQuery),
    responses(
        (status = 200, description = "A page of integrations", body = IntegrationPage),
        (status = 400, description = "Bad query", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn list_integrations(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<IntegrationQuery>,
) -> Result<Json<IntegrationPage>, ApiError> {
    let limit = q.limit.unwrap_or(crate::pagination::DEFAULT_LIMIT);
    let offset = q.offset.unwrap_or(0);
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let mut rows = db::integrations::list_integrations(
        &mut tx,
        user.company_id,
        q.provider,
        i64::from(limit) + 1,
        i64::from(offset),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    let next_offset = (rows.len() > limit as usize).then(|| offset.saturating_add(limit));
    rows.truncate(limit as usize);
    Ok(Json(IntegrationPage {
        items: rows.into_iter().map(Into::into).collect(),
        next_offset,
    }))
}

/// Creates an integration (ADMIN). Credentials go to the secret store.
#[utoipa::path(post, path = "/api/integrations", tag = "integrations", operation_id = "create_integration",
    security(("bearer" = [])),
    request_body = CreateIntegrationRequest,
    responses(
        (status = 201, description = "Created", body = IntegrationResponse),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Secret store unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn create_integration(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Json(body): Json<CreateIntegrationRequest>,
) -> Result<(StatusCode, Json<IntegrationResponse>), ApiError> {
    let name = check_name(&body.name)?;
    let mode = body.mode.unwrap_or(IntegrationMode::Simulated);
    let settings = check_settings(&body.settings.unwrap_or_else(|| json!({})))?;
    if let Some(credentials) = &body.credentials {
        validate_credentials(body.provider, credentials, "credentials")
            .map_err(|e| ApiError::invalid(e.field, e.message))?;
    } else if mode == IntegrationMode::Live {
        return Err(ApiError::invalid(
            "credentials",
            "live mode needs credentials",
        ));
    }
    let id = Uuid::new_v4();
    let secret_id = match &body.credentials {
        Some(credentials) => Some(
            state
                .secrets
                .put(
                    admin.company_id,
                    id,
                    &SecretValue::new(credentials.to_string()),
                )
                .await
                .map_err(secret_error)?,
        ),
        None => None,
    };
    let result = async {
        let mut tx = db::begin_tenant(&state.pool, admin.company_id).await?;
        let integration = db::integrations::insert_integration(
            &mut tx,
            NewIntegration {
                id,
                company_id: admin.company_id,
                provider: body.provider,
                name,
                mode,
                keyvault_secret_id: secret_id.as_deref(),
                extra_json: &settings,
            },
        )
        .await?;
        super::audit(&mut tx, admin, "integration.created", "integration", id, json!({"provider": body.provider, "name": name, "mode": mode, "credentials_stored": secret_id.is_some()})).await?;
        tx.commit().await.map_err(db::DbError::from)?;
        Ok::<_, ApiError>(integration)
    }
    .await;
    match result {
        Ok(integration) => Ok((StatusCode::CREATED, Json(integration.into()))),
        Err(e) => {
            // Nothing references the secret: remove it so no orphan is left.
            if let Some(secret_id) = &secret_id
                && let Err(cleanup) = state.secrets.delete(admin.company_id, secret_id).await
            {
                tracing::warn!(integration.id = %id, "orphaned secret of integration {id} not removed: {cleanup}");
            }
            Err(e)
        }
    }
}

/// One integration.
#[utoipa::path(get, path = "/api/integrations/{id}", tag = "integrations", operation_id = "get_integration",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Integration id")),
    responses(
        (status = 200, description = "The integration", body = IntegrationResponse),
        (status = 404, description = "No such integration in this company", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn get_integration(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<IntegrationResponse>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let integration = db::integrations::find_integration(&mut tx, user.company_id, id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(integration.into()))
}

/// Changes an integration (ADMIN); new credentials become a new secret version.
#[utoipa::path(put, path = "/api/integrations/{id}", tag = "integrations", operation_id = "update_integration",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Integration id")),
    request_body = UpdateIntegrationRequest,
    responses(
        (status = 200, description = "Updated", body = IntegrationResponse),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration in this company", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Secret store unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn update_integration(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateIntegrationRequest>,
) -> Result<Json<IntegrationResponse>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, caller.company_id).await?;
    let before = db::integrations::find_integration(&mut tx, caller.company_id, id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    let admin = caller.require_admin()?;
    let name = body.name.as_deref().map(check_name).transpose()?;
    let settings = body.settings.as_ref().map(check_settings).transpose()?;
    if let Some(credentials) = &body.credentials {
        validate_credentials(before.provider, credentials, "credentials")
            .map_err(|e| ApiError::invalid(e.field, e.message))?;
    } else if body.mode == Some(IntegrationMode::Live) && before.keyvault_secret_id.is_none() {
        return Err(ApiError::invalid(
            "credentials",
            "live mode needs credentials",
        ));
    }
    let secret_id = match &body.credentials {
        Some(credentials) => Some(
            state
                .secrets
                .put(
                    admin.company_id,
                    id,
                    &SecretValue::new(credentials.to_string()),
                )
                .await
                .map_err(secret_error)?,
        ),
        None => None,
    };
    let mut tx = db::begin_tenant(&state.pool, admin.company_id).await?;
    let updated = db::integrations::update_integration(
        &mut tx,
        admin.company_id,
        id,
        IntegrationChanges {
            name,
            mode: body.mode,
            keyvault_secret_id: secret_id.as_deref(),
            extra_json: settings.as_ref(),
        },
    )
    .await?;
    super::audit(&mut tx, admin, "integration.updated", "integration",
        id,
        json!({"name": name, "mode": body.mode, "settings_changed": settings.is_some(), "credentials_rotated": secret_id.is_some()}),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(updated.into()))
}

/// Deletes an integration and its secret (ADMIN).
#[utoipa::path(delete, path = "/api/integrations/{id}", tag = "integrations", operation_id = "delete_integration",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Integration id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration in this company", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn delete_integration(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, caller.company_id).await?;
    let integration = db::integrations::find_integration(&mut tx, caller.company_id, id).await?;
    let admin = caller.require_admin()?;
    db::integrations::delete_integration(&mut tx, admin.company_id, id).await?;
    super::audit(
        &mut tx,
        admin,
        "integration.deleted",
        "integration",
        id,
        json!({"provider": integration.provider, "name": integration.name}),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    if let Some(secret_id) = &integration.keyvault_secret_id
        && let Err(e) = state.secrets.delete(admin.company_id, secret_id).await
    {
        tracing::warn!(integration.id = %id, "secret of deleted integration {id} not removed: {e}");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The integration's credentials (ADMIN; each read is audited).
#[utoipa::path(get, path = "/api/integrations/{id}/credentials", tag = "integrations", operation_id = "get_integration_credentials",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Integration id")),
    responses(
        (status = 200, description = "The stored credentials", body = CredentialsResponse),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration, or it has no credentials", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Secret store unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn get_integration_credentials(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<CredentialsResponse>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, caller.company_id).await?;
    let integration = db::integrations::find_integration(&mut tx, caller.company_id, id).await?;
    let admin = caller.require_admin()?;
    let secret_id = integration
        .keyvault_secret_id
        .ok_or_else(|| ApiError::NotFound("this integration has no stored credentials".into()))?;
    let secret = state
        .secrets
        .get(admin.company_id, &secret_id)
        .await
        .map_err(secret_error)?;
    let credentials: Value = serde_json::from_str(secret.expose())
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("stored credentials are not JSON")))?;
    super::audit(
        &mut tx,
        admin,
        "integration.credentials_read",
        "integration",
        id,
        json!({}),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(CredentialsResponse {
        integration_id: id,
        credentials,
    }))
}

/// Tests the integration's connection (ADMIN): a worker makes the provider's
/// cheapest authenticated call (or the simulated one) and the classified
/// outcome comes back; credentials never do.
#[utoipa::path(post, path = "/api/integrations/{id}/test", tag = "integrations", operation_id = "test_integration",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Integration id")),
    responses(
        (status = 200, description = "The outcome (ok or the classified error)", body = ConnectionTestResponse),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such integration in this company", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No worker answered in time", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn test_integration(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<ConnectionTestResponse>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    db::integrations::find_integration(&mut tx, user.company_id, id).await?;
    let admin = user.require_admin()?;
    let check_id = db::integration_checks::insert_check(&mut tx, admin.company_id, id).await?;
    shared::jobs::enqueue_check(
        &mut tx,
        &shared::jobs::CheckJob {
            company_id: admin.company_id,
            check_id,
        },
    )
    .await?;
    super::audit(
        &mut tx,
        admin,
        "integration.tested",
        "integration",
        id,
        json!({"check_id": check_id}),
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    let deadline = tokio::time::Instant::now() + CHECK_WAIT;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let mut tx = db::begin_tenant(&state.pool, admin.company_id).await?;
        let check = db::integration_checks::find_check(&mut tx, admin.company_id, check_id).await?;
        tx.commit().await.map_err(db::DbError::from)?;
        if check.status != "PENDING" {
            return Ok(Json(ConnectionTestResponse {
                integration_id: id,
                ok: check.status == "SUCCEEDED",
                error_kind: check.error_kind,
                error: check.error,
                outcome: check.outcome,
            }));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Unavailable(format!(
                "no worker answered the connection test within {} s; is a worker running?",
                CHECK_WAIT.as_secs()
            )));
        }
    }
}
