//! One RPC over PostgREST (Supabase's REST API) through postgrest-rs: its
//! retries, and its failures turned into errors an operator can act on.

use crate::config::{KeySource, SupabaseConfig};
use crate::keys::Key;
use crate::retry::Backoff;
use crate::secret::Secret;
use crate::store::StoreError;
use postgrest::Postgrest;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// The file of infra/migrations/idempotent/ that defines each RPC function, so
/// a missing one names its fix: scripts/migrate.sh applies every such file on
/// every run. A function it does not know points at the directory.
const FUNCTION_MIGRATIONS: &[(&str, &str)] = &[
    ("backfill_schema_version", "idempotent/001_helpers.sql"),
    ("backfill_page_documents", "idempotent/002_documents.sql"),
    ("backfill_fetch_documents", "idempotent/002_documents.sql"),
    ("backfill_write_vectors", "idempotent/002_documents.sql"),
    ("backfill_copy_vectors", "idempotent/002_documents.sql"),
    ("backfill_coverage", "idempotent/002_documents.sql"),
    ("backfill_adopt", "idempotent/002_documents.sql"),
    ("backfill_create_run", "idempotent/003_runs.sql"),
    ("backfill_add_batches", "idempotent/003_runs.sql"),
    ("backfill_mark_queued", "idempotent/003_runs.sql"),
    ("backfill_finish_dispatch", "idempotent/003_runs.sql"),
    ("backfill_note_run_error", "idempotent/003_runs.sql"),
    ("backfill_resume_dispatch", "idempotent/003_runs.sql"),
    ("backfill_run_status", "idempotent/003_runs.sql"),
    ("backfill_batch_refs", "idempotent/004_batches.sql"),
    ("backfill_reopen_batches", "idempotent/004_batches.sql"),
    ("backfill_begin_batch", "idempotent/004_batches.sql"),
    ("backfill_complete_batch", "idempotent/004_batches.sql"),
    ("backfill_fail_batch", "idempotent/004_batches.sql"),
    ("backfill_queue_in_jobs", "idempotent/005_jobs.sql"),
    ("backfill_jobs_due", "idempotent/005_jobs.sql"),
    ("backfill_begin_job", "idempotent/005_jobs.sql"),
    ("backfill_job_batches", "idempotent/005_jobs.sql"),
    ("backfill_save_plans", "idempotent/005_jobs.sql"),
    ("backfill_split_job", "idempotent/005_jobs.sql"),
    ("backfill_update_job", "idempotent/005_jobs.sql"),
    ("backfill_fail_job", "idempotent/005_jobs.sql"),
    ("backfill_run_jobs", "idempotent/005_jobs.sql"),
];
/// Statement timeouts tried again within one call: a timeout can be a lock
/// held for a moment or a busy database, but the same statement failing three
/// times in a row will fail the same way on every delivery.
const STATEMENT_TIMEOUT_ATTEMPTS: u32 = 3;

#[derive(Deserialize, Default)]
struct PgError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    details: Option<Value>,
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Clone)]
pub(super) struct Rest {
    client: Postgrest,
    /// Goes on each request, not on the client: it may rotate.
    key: Key,
    url: String,
    key_source: KeySource,
    timeout: Duration,
    backoff: Backoff,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest")
            .field("url", &self.url)
            .field("key_source", &self.key_source)
            .finish_non_exhaustive()
    }
}

impl Rest {
    pub(super) fn new(cfg: &SupabaseConfig) -> Self {
        Self {
            client: Postgrest::new(cfg.rest_url.clone()),
            key: cfg.key.clone(),
            url: cfg.rest_url.clone(),
            key_source: cfg.key_source,
            timeout: cfg.timeout,
            backoff: Backoff {
                base: Duration::from_millis(250),
                cap: Duration::from_secs(5),
                max_attempts: 6,
            },
        }
    }

    /// Calls `function` with named arguments and decodes its JSON answer,
    /// retrying transient failures (a restarting database or API) with backoff,
    /// and a refused key once with a rotated one. Every backfill RPC is safe
    /// to repeat: their state changes are guarded.
    pub(super) async fn rpc<T: DeserializeOwned>(
        &self,
        function: &str,
        args: &Value,
    ) -> Result<T, StoreError> {
        self.key
            .using(
                |e| matches!(e, StoreError::Unauthorized { .. }),
                |key| async move { self.rpc_with(function, args, &key).await },
            )
            .await
    }

    /// [`Rest::rpc`] with `key`.
    async fn rpc_with<T: DeserializeOwned>(
        &self,
        function: &str,
        args: &Value,
        key: &Secret,
    ) -> Result<T, StoreError> {
        let mut attempt = 1;
        let mut timeouts = 0;
        loop {
            match self.rpc_once(function, args, key).await {
                Err(StoreError::StatementTimeout { message, .. }) => {
                    timeouts += 1;
                    if timeouts >= STATEMENT_TIMEOUT_ATTEMPTS {
                        return Err(StoreError::StatementTimeout {
                            function: function.to_string(),
                            attempts: timeouts,
                            message,
                        });
                    }
                    tracing::warn!(function, attempt = timeouts, error = %message, "Supabase call ran into the statement timeout; retrying");
                    tokio::time::sleep(
                        self.backoff
                            .next_delay(timeouts, None, None, Duration::ZERO)
                            .unwrap_or_default(),
                    )
                    .await;
                }
                Err(e) if e.is_transient() => {
                    match self.backoff.next_delay(attempt, None, None, Duration::ZERO) {
                        Some(delay) => {
                            tracing::warn!(function, attempt, delay_ms = delay.as_millis() as u64, error = %e, "Supabase call failed; retrying");
                            tokio::time::sleep(delay).await;
                            attempt += 1;
                        }
                        None => return Err(e),
                    }
                }
                other => return other,
            }
        }
    }

    /// One call. Null arguments are left out, so the function's defaults apply.
    async fn rpc_once<T: DeserializeOwned>(
        &self,
        function: &str,
        args: &Value,
        key: &Secret,
    ) -> Result<T, StoreError> {
        let body = match args {
            Value::Object(map) => serde_json::to_string(
                &map.iter()
                    .filter(|(_, v)| !v.is_null())
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .unwrap_or_default(),
            other => other.to_string(),
        };
        let timed_out = |_| StoreError::Timeout {
            url: self.url.clone(),
            function: function.to_string(),
            timeout: self.timeout,
        };
        let unreachable = |e: &dyn std::error::Error| StoreError::Unreachable {
            url: self.url.clone(),
            reason: describe_transport_error(e),
        };
        // postgrest-rs's own reqwest: its header types are not this crate's.
        let mut request = self.client.rpc(function, body).build();
        for (name, value) in self.auth_headers(key)? {
            request = request.header(name, value);
        }
        let request = request.send();
        let response = tokio::time::timeout(self.timeout, request)
            .await
            .map_err(timed_out)?
            .map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let body = tokio::time::timeout(self.timeout, response.text())
            .await
            .map_err(timed_out)?
            .map_err(|e| unreachable(&e))?;
        if (200..300).contains(&status) {
            let body = if body.trim().is_empty() {
                "null"
            } else {
                body.as_str()
            };
            return serde_json::from_str(body).map_err(|e| StoreError::Decode {
                function: function.to_string(),
                reason: e.to_string(),
            });
        }
        Err(self.classify(function, status, &body))
    }

    /// `apikey`, and `Authorization` for a JWT; Supabase's new
    /// `sb_secret_...` keys must only go in `apikey`. A key that cannot be a
    /// header (a space would pass as part of it) is refused before any call.
    fn auth_headers(&self, key: &Secret) -> Result<Vec<(&'static str, String)>, StoreError> {
        let text = key.expose();
        if !text.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(StoreError::Unauthorized {
                key_var: self.key_source.var_name(),
                status: 0,
                message: "the key holds spaces or characters that cannot go in an HTTP header"
                    .into(),
            });
        }
        let mut headers = vec![("apikey", text.to_string())];
        if key.is_jwt() {
            headers.push(("authorization", format!("Bearer {text}")));
        }
        Ok(headers)
    }

    fn classify(&self, function: &str, status: u16, body: &str) -> StoreError {
        let pg: PgError = serde_json::from_str(body).unwrap_or_default();
        let code = pg.code.unwrap_or_default();
        let mut message = pg
            .message
            .unwrap_or_else(|| body.chars().take(300).collect());
        if let Some(Value::String(d)) = &pg.details {
            message = format!("{message} ({d})");
        }
        let migration_for_function = || {
            FUNCTION_MIGRATIONS
                .iter()
                .find(|(name, _)| function == *name)
                .map(|(_, m)| *m)
                .unwrap_or("idempotent/")
        };
        match code.as_str() {
            "57014" => StoreError::StatementTimeout {
                function: function.to_string(),
                attempts: 1,
                message,
            },
            // Function missing from the schema cache: the RPC migration is not applied.
            "PGRST202" | "42883" if message.contains(function) => StoreError::MissingMigration {
                what: format!("the function {function}"),
                migration: migration_for_function(),
                message,
            },
            "42704" if message.contains("vector") => StoreError::MissingMigration {
                what: "the pgvector extension".into(),
                migration: "incremental/0002_add_vector_search.sql",
                message,
            },
            "42703" => StoreError::MissingMigration {
                what: "a column the backfill needs (set BACKFILL_*_COLUMN if yours is named differently)".into(),
                migration: "incremental/0002_add_vector_search.sql",
                message,
            },
            "42P01" | "PGRST205" => StoreError::MissingMigration {
                what: "a table the backfill needs (set BACKFILL_TABLE if yours is named differently)".into(),
                migration: if message.contains("backfill_") {
                    "incremental/0003_backfill_status.sql"
                } else {
                    "incremental/0001_documents_table.sql"
                },
                message,
            },
            _ if status == 401 || status == 403 || code == "42501" || code.starts_with("PGRST30") => {
                StoreError::Unauthorized {
                    key_var: self.key_source.var_name(),
                    status,
                    message: if code.is_empty() { message } else { format!("{code} {message}") },
                }
            }
            _ => StoreError::Server {
                function: function.to_string(),
                status,
                code,
                message,
                hint: pg.hint,
            },
        }
    }
}

fn describe_transport_error(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests;
