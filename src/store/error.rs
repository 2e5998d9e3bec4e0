//! The store's one error type: what went wrong, said so that an operator
//! can act on it, and whether trying again could help.

use std::time::Duration;
use thiserror::Error;

const MIGRATE_HINT: &str = "run scripts/migrate.sh with DATABASE_URL pointing at the database";

/// Every failure of a store call.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot reach the Supabase REST API at {url}: {reason}. Check SUPABASE_URL and that the service is up")]
    Unreachable { url: String, reason: String },
    #[error("the Supabase REST API at {url} did not answer {function} within {timeout:?}")]
    Timeout {
        url: String,
        function: String,
        timeout: Duration,
    },
    #[error("Supabase refused the key in {key_var} (HTTP {status}: {message}). Set {key_var} to the project's service_role key (or SUPABASE_SECRET_KEY to a secret key)")]
    Unauthorized {
        key_var: &'static str,
        status: u16,
        message: String,
    },
    #[error("the database lacks {what}: apply infra/migrations/{migration} ({MIGRATE_HINT}). Server said: {message}")]
    MissingMigration {
        what: String,
        migration: &'static str,
        message: String,
    },
    #[error("{function} failed with HTTP {status} ({code}): {message}{}", hint.as_deref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Server {
        function: String,
        status: u16,
        code: String,
        message: String,
        hint: Option<String>,
    },
    #[error("{function} ran into the database's statement timeout {attempts} time(s) in a row (Supabase gives API calls 8 s). Lower --batch-size so each call does less, or give the API more time: ALTER ROLE authenticator SET statement_timeout = '30s'; NOTIFY pgrst, 'reload config'; then retry (`backfill retry-failed RUN_ID`, or `backfill dispatch --continue RUN_ID` for a dispatch). Server said: {message}")]
    StatementTimeout {
        function: String,
        attempts: u32,
        message: String,
    },
    #[error("{function} answered with a body this version cannot read: {reason}")]
    Decode { function: String, reason: String },
}

impl StoreError {
    /// Worth another try later: the service may come back, unlike a bad key or
    /// a missing migration.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } | StoreError::Timeout { .. } => true,
            StoreError::Server { status, code, .. } => match sqlstate_is_transient(code) {
                Some(transient) => transient,
                None => *status >= 500 || *status == 408 || *status == 429,
            },
            _ => false,
        }
    }
}

/// What a Postgres error code says about trying again, where it says
/// anything. PostgREST answers most database errors with HTTP 500, the
/// backfill functions' own deliberate ones too (P0002 no such run, 55000 a
/// run in the wrong state, 22023 a bad argument): the code, not the status,
/// tells a database that is restarting from a call that will never succeed.
fn sqlstate_is_transient(code: &str) -> Option<bool> {
    let is_sqlstate = code.len() == 5 && !code.starts_with("PGRST");
    if !is_sqlstate {
        return None;
    }
    Some(matches!(
        code,
        // Connection lost, serialization failure, deadlock, lock_timeout,
        // shutdown or start-up, out of resources.
        c if c.starts_with("08")
            || c.starts_with("53")
            || c == "40001"
            || c == "40P01"
            || c == "55P03"
            || c == "57P01"
            || c == "57P02"
            || c == "57P03"
    ))
}
