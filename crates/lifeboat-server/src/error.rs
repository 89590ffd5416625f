//! The domain's one error: what went wrong in a move, a sync or a lookup, in words that
//! say what to do. The domain knows no HTTP: the API maps each kind to a status
//! (`http::app_error`).

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// What was asked about is not there (any more).
    #[error("{0}")]
    NotFound(String),
    /// Refused by the state things are in: a transition not allowed, a key not held.
    #[error("{0}")]
    Conflict(String),
    /// An agent failed, or did not answer.
    #[error("{0}")]
    Agent(String),
    #[error("{0}")]
    Internal(String),
}
