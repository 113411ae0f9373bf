//! Integration connection tests (`POST /api/integrations/{id}/test`), run by
//! the worker because it has the network path to the providers: the
//! provider's cheapest authenticated call, its classified outcome written
//! back to the check row the api is waiting on.

use shared::{
    db::{self, integration_checks},
    domain::IntegrationMode,
    jobs::CheckJob,
};

use crate::{
    handler::{DeliveryError, WorkerState, load_connection},
    providers::{ProviderError, simulated},
};

/// Runs one connection test and records its outcome.
///
/// # Errors
/// Only database failures (the queue retries the delivery).
pub async fn run_check(state: &WorkerState, job: &CheckJob) -> Result<(), DeliveryError> {
    let mut tx = db::begin_tenant(&state.pool, job.company_id).await?;
    let check = match integration_checks::find_check(&mut tx, job.company_id, job.check_id).await {
        Ok(check) => check,
        Err(db::DbError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if check.status != "PENDING" {
        return Ok(());
    }
    let integration =
        db::integrations::find_integration(&mut tx, job.company_id, check.integration_id).await?;
    tx.commit().await.map_err(db::DbError::from)?;

    let outcome = async {
        let (settings, credentials) = load_connection(state, &integration).await?;
        match integration.mode {
            IntegrationMode::Simulated => {
                simulated::test_connection(integration.provider, &settings, &credentials)
            }
            IntegrationMode::Live => tokio::time::timeout(
                state.action_timeout,
                state
                    .providers
                    .test_connection(integration.provider, &settings, &credentials),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::Transient {
                    message: format!("no answer within {} s", state.action_timeout.as_secs()),
                    retry_after: None,
                })
            }),
        }
    }
    .await;
    let recorded = match &outcome {
        Ok(value) => Ok(value),
        Err(ProviderError::Transient { message, .. }) => Err(("transient", message.as_str())),
        Err(ProviderError::Permanent { message }) => Err(("permanent", message.as_str())),
        Err(ProviderError::NeedsHuman { reason }) => Err(("needs_human", reason.as_str())),
    };
    let mut tx = db::begin_tenant(&state.pool, job.company_id).await?;
    integration_checks::complete_check(&mut tx, job.company_id, job.check_id, recorded).await?;
    tx.commit().await.map_err(db::DbError::from)?;
    tracing::info!(integration.id = %integration.id, ok = outcome.is_ok(), "connection test of integration {} done", integration.id);
    Ok(())
}
