//! `/api/companies`: the caller's own company.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::{
    db::{self, audit::NewAuditEvent},
    domain::Company,
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::AuthUser,
    error::ApiError,
    extract::{Json, Path, Query},
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_companies))
        .routes(routes!(get_company, update_company))
}

/// A company as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompanyResponse {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<Company> for CompanyResponse {
    fn from(c: Company) -> Self {
        Self {
            id: c.id,
            name: c.name,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// Changes to a company.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCompanyRequest {
    /// New name, 1 to 200 characters, unique regardless of case.
    pub name: String,
}

/// The company list's query: it takes no parameter, and refuses any (400)
/// rather than ignoring it, like every other list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CompanyQuery {}

/// The caller's company (a list of one: a user belongs to one company).
#[utoipa::path(get, path = "/api/companies", tag = "companies", operation_id = "list_companies",
    security(("bearer" = [])),
    params(CompanyQuery),
    responses(
        (status = 200, description = "The caller's company", body = [CompanyResponse]),
        (status = 400, description = "A query parameter (the list takes none)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn list_companies(
    State(state): State<AppState>,
    user: AuthUser,
    Query(CompanyQuery {}): Query<CompanyQuery>,
) -> Result<Json<Vec<CompanyResponse>>, ApiError> {
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let company = db::companies::find_company(&mut tx, user.company_id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(vec![company.into()]))
}

/// One company; another company's id answers 404.
#[utoipa::path(get, path = "/api/companies/{id}", tag = "companies", operation_id = "get_company",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Company id")),
    responses(
        (status = 200, description = "The company", body = CompanyResponse),
        (status = 404, description = "No such company", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn get_company(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<CompanyResponse>, ApiError> {
    if id != user.company_id {
        return Err(ApiError::NotFound("company not found".into()));
    }
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let company = db::companies::find_company(&mut tx, id).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(company.into()))
}

/// Renames the company (ADMIN).
#[utoipa::path(put, path = "/api/companies/{id}", tag = "companies", operation_id = "update_company",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Company id")),
    request_body = UpdateCompanyRequest,
    responses(
        (status = 200, description = "Updated", body = CompanyResponse),
        (status = 403, description = "Not an ADMIN", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such company", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
async fn update_company(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateCompanyRequest>,
) -> Result<Json<CompanyResponse>, ApiError> {
    if id != user.company_id {
        return Err(ApiError::NotFound("company not found".into()));
    }
    let user = user.require_admin()?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    let mut tx = db::begin_tenant(&state.pool, user.company_id).await?;
    let before = db::companies::find_company(&mut tx, id).await?;
    let company = db::companies::update_company(&mut tx, id, name).await?;
    db::audit::insert_audit_event(
        &mut tx,
        NewAuditEvent {
            company_id: id,
            actor_user_id: Some(user.user_id),
            action: "company.updated",
            entity_type: "company",
            entity_id: Some(id),
            payload: json!({"name": {"from": before.name, "to": company.name}}),
        },
    )
    .await?;
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(Json(company.into()))
}
