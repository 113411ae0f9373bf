//! Base abstractions for conversational agents that work on tickets.
//!
//! Only the shapes live here (sessions with an external thread, and references
//! to vector-store memories); no agent logic yet.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A conversation between a user and an agent, tracked at the agent provider
/// by `external_thread_id`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AgentSession {
    /// Primary key.
    pub id: Uuid,
    /// Owning company.
    pub company_id: Uuid,
    /// The user who opened it.
    pub user_id: Option<Uuid>,
    /// The provider's thread id.
    pub external_thread_id: String,
    /// What the session is for (e.g. `ticket-triage`).
    pub purpose: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last message time.
    pub last_activity_at: DateTime<Utc>,
}

/// How widely a memory is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MemoryScope {
    /// This session only.
    Session,
    /// Every session of the user.
    User,
    /// Every session of the company.
    Company,
}

/// A pointer to memories held in an external vector store.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AgentMemoryRef {
    /// Primary key.
    pub id: Uuid,
    /// Owning company.
    pub company_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// The vector store's id.
    pub vector_store_id: String,
    /// Who may recall it.
    pub scope: MemoryScope,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// What an agent runtime must offer TxDx. Implementations come with the agent work.
#[async_trait::async_trait]
pub trait AgentRuntime: Send + Sync {
    /// The runtime's error.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Opens a thread at the provider and returns its id.
    async fn open_thread(&self, purpose: &str) -> Result<String, Self::Error>;
    /// Sends a message on a thread and returns the agent's reply.
    async fn send(&self, thread_id: &str, message: &str) -> Result<String, Self::Error>;
}
