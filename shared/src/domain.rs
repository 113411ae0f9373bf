//! Plain domain types and the pure rules over them.
//!
//! Closed sets (roles, statuses, providers) are enums: stored as `text` with a
//! `CHECK` constraint, serialised in SCREAMING_SNAKE_CASE on the wire.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
        #[sqlx(type_name = "text")]
        pub enum $name {
            // `schema(rename)` too: utoipa reads serde's `rename` token by token
            // and misses a literal passed through this macro, which left the
            // OpenAPI enums spelled `Admin`, `PaloAlto`, ... instead of the wire's.
            $($(#[$vmeta])* #[serde(rename = $text)] #[schema(rename = $text)] #[sqlx(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant { kind: stringify!($name), value: s.to_owned() }),
                }
            }
        }
    };
}

/// Most actions one ticket may carry (the API refuses more).
pub const MAX_ACTIONS_PER_TICKET: usize = 20;

/// A string that is not a member of the closed set it was parsed as.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("`{value}` is not a valid {kind}")]
pub struct UnknownVariant {
    /// The enum's name.
    pub kind: &'static str,
    /// The offending input.
    pub value: String,
}

text_enum! {
    /// What a company user may do. ADMINs manage users and integrations.
    Role { Admin => "ADMIN", User => "USER" }
}

text_enum! {
    /// A ticket's lifecycle; every status but PENDING is terminal.
    TicketStatus {
        /// Created; actions queued or running, or a manual ticket.
        Pending => "PENDING",
        /// Every action succeeded.
        Executed => "EXECUTED",
        /// An action failed for good.
        Failed => "FAILED",
        /// Handed to a human.
        Derived => "DERIVED",
    }
}

text_enum! {
    /// One action's lifecycle.
    ActionStatus {
        /// Waiting for its turn or its next attempt.
        Pending => "PENDING",
        /// A worker is executing it.
        Running => "RUNNING",
        /// The provider confirmed it.
        Succeeded => "SUCCEEDED",
        /// Failed for good (permanent error, or attempts exhausted).
        Failed => "FAILED",
        /// Needs a human; the ticket becomes DERIVED.
        Derived => "DERIVED",
        /// Not run: an earlier action failed, or an ADMIN cancelled it.
        Cancelled => "CANCELLED",
    }
}

text_enum! {
    /// The security products TxDx drives.
    Provider { Splunk => "SPLUNK", PaloAlto => "PALO_ALTO", Wazuh => "WAZUH", Meraki => "MERAKI" }
}

text_enum! {
    /// Whether an integration calls the real provider or a deterministic simulation.
    IntegrationMode { Live => "live", Simulated => "simulated" }
}

impl TicketStatus {
    /// EXECUTED, FAILED and DERIVED are final.
    pub fn is_terminal(self) -> bool {
        !matches!(self, TicketStatus::Pending)
    }
}

impl ActionStatus {
    /// No further attempt will be made.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ActionStatus::Pending | ActionStatus::Running)
    }
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Company {
    /// Primary key.
    pub id: Uuid,
    /// Unique regardless of case.
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A company user. The password hash never leaves `shared`'s auth code.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    /// Primary key.
    pub id: Uuid,
    /// The user's company.
    pub company_id: Uuid,
    /// Globally unique, lower case.
    pub username: String,
    /// Contact address.
    pub email: String,
    /// ADMIN or USER.
    pub role: Role,
    /// Bumped on password or role change; tokens carry it.
    pub token_version: i32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A security ticket.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Ticket {
    /// Primary key.
    pub id: Uuid,
    /// Owning company.
    pub company_id: Uuid,
    /// Creator; `None` once that user is deleted.
    pub created_by_user_id: Option<Uuid>,
    /// One line.
    pub subject: String,
    /// Free text.
    pub description: String,
    /// Derived from the actions.
    pub status: TicketStatus,
    /// Why it is FAILED or DERIVED.
    pub status_reason: Option<String>,
    /// When it reached a terminal status.
    pub executed_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One provider action of a ticket.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TicketAction {
    /// Primary key.
    pub id: Uuid,
    /// Owning company.
    pub company_id: Uuid,
    /// The ticket.
    pub ticket_id: Uuid,
    /// Execution order, from 0.
    pub position: i32,
    /// The integration that runs it; `None` when it was deleted.
    pub integration_id: Option<Uuid>,
    /// The provider.
    pub provider: Provider,
    /// Action name from the provider catalogue.
    pub action: String,
    /// Typed parameters, validated against the catalogue.
    pub params: serde_json::Value,
    /// Lifecycle.
    pub status: ActionStatus,
    /// Attempts started so far.
    pub attempts: i32,
    /// Cap on attempts.
    pub max_attempts: i32,
    /// The last error, for humans.
    pub last_error: Option<String>,
    /// The provider's outcome.
    pub result: Option<serde_json::Value>,
    /// When the next attempt may start.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// First attempt start.
    pub started_at: Option<DateTime<Utc>>,
    /// Terminal time.
    pub finished_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A company's connection to a provider; holds the secret's identifier, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Integration {
    /// Primary key.
    pub id: Uuid,
    /// Owning company.
    pub company_id: Uuid,
    /// The provider.
    pub provider: Provider,
    /// Unique within the company.
    pub name: String,
    /// Live or simulated.
    pub mode: IntegrationMode,
    /// Identifier in the secret store.
    pub keyvault_secret_id: Option<String>,
    /// Non-secret settings.
    pub extra_json: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEvent {
    /// Primary key.
    pub id: Uuid,
    /// Owning company.
    pub company_id: Uuid,
    /// Who did it; `None` for the system.
    pub actor_user_id: Option<Uuid>,
    /// Dotted verb, e.g. `ticket.created`.
    pub action: String,
    /// `ticket`, `user`, `integration`, ...
    pub entity_type: String,
    /// The entity.
    pub entity_id: Option<Uuid>,
    /// Details; never a secret.
    pub payload: serde_json::Value,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A ticket's status as its actions imply it, with the reason for FAILED or DERIVED.
///
/// All succeeded → EXECUTED; any failed → FAILED; any derived or cancelled
/// (with none failed) → DERIVED; otherwise PENDING. A ticket with no actions
/// is a manual ticket and stays PENDING.
pub fn derive_ticket_status(
    actions: &[(ActionStatus, Option<&str>)],
) -> (TicketStatus, Option<String>) {
    if actions.is_empty() {
        return (TicketStatus::Pending, None);
    }
    if let Some((_, reason)) = actions.iter().find(|(s, _)| *s == ActionStatus::Failed) {
        return (TicketStatus::Failed, reason.map(str::to_owned));
    }
    if actions.iter().any(|(s, _)| !s.is_terminal()) {
        return (TicketStatus::Pending, None);
    }
    if let Some((_, reason)) = actions
        .iter()
        .find(|(s, _)| matches!(s, ActionStatus::Derived | ActionStatus::Cancelled))
    {
        return (TicketStatus::Derived, reason.map(str::to_owned));
    }
    (TicketStatus::Executed, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ActionStatus::*;

    #[test]
    fn all_succeeded_is_executed() {
        assert_eq!(
            derive_ticket_status(&[(Succeeded, None), (Succeeded, None)]).0,
            TicketStatus::Executed
        );
    }

    #[test]
    fn one_failure_fails_the_ticket_with_its_reason() {
        let (status, reason) = derive_ticket_status(&[
            (Succeeded, None),
            (Failed, Some("bad key")),
            (Cancelled, None),
        ]);
        assert_eq!(status, TicketStatus::Failed);
        assert_eq!(reason.as_deref(), Some("bad key"));
    }

    #[test]
    fn running_actions_keep_the_ticket_pending() {
        assert_eq!(
            derive_ticket_status(&[(Succeeded, None), (Running, None)]).0,
            TicketStatus::Pending
        );
    }

    #[test]
    fn a_derived_action_derives_the_ticket() {
        let (status, reason) =
            derive_ticket_status(&[(Succeeded, None), (Derived, Some("manual follow-up"))]);
        assert_eq!(status, TicketStatus::Derived);
        assert_eq!(reason.as_deref(), Some("manual follow-up"));
    }

    #[test]
    fn no_actions_is_a_manual_pending_ticket() {
        assert_eq!(derive_ticket_status(&[]).0, TicketStatus::Pending);
    }

    #[test]
    fn enums_round_trip_through_their_text() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>().unwrap(), *p);
        }
        assert!("admin".parse::<Role>().is_err());
    }
}
