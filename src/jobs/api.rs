//! The provider's Batch API over HTTP: files (streamed up, streamed down,
//! listed, deleted) and batches (created, retrieved, found by their tags),
//! its errors read as the embeddings' are.

use super::lines::Lines;
use crate::embedder::{BatchTarget, EmbedError};
use crate::retry::Backoff;
use crate::secret::Secret;
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// A Batch API batch's status. One this version does not know reads as
/// `Unknown` and is watched like one in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
    #[serde(other)]
    Unknown,
}

impl RemoteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteStatus::Validating => "validating",
            RemoteStatus::Failed => "failed",
            RemoteStatus::InProgress => "in_progress",
            RemoteStatus::Finalizing => "finalizing",
            RemoteStatus::Completed => "completed",
            RemoteStatus::Expired => "expired",
            RemoteStatus::Cancelling => "cancelling",
            RemoteStatus::Cancelled => "cancelled",
            RemoteStatus::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RequestCounts {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub failed: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RemoteError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub line: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RemoteErrors {
    #[serde(default)]
    pub data: Vec<RemoteError>,
}

/// A Batch API batch, as much of it as the poller reads.
#[derive(Clone, Debug, Deserialize)]
pub struct RemoteBatch {
    pub id: String,
    pub status: RemoteStatus,
    #[serde(default)]
    pub input_file_id: Option<String>,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub errors: Option<RemoteErrors>,
    #[serde(default)]
    pub request_counts: Option<RequestCounts>,
    #[serde(default)]
    pub metadata: Option<HashMap<String, String>>,
}

impl RemoteBatch {
    /// Why validation refused it, one line.
    pub fn reason(&self) -> String {
        let errors = self
            .errors
            .as_ref()
            .map(|e| e.data.as_slice())
            .unwrap_or(&[]);
        if errors.is_empty() {
            return format!(
                "the Batch API ended batch {} {}",
                self.id,
                self.status.as_str()
            );
        }
        errors
            .iter()
            .map(|e| {
                let line = e.line.map(|l| format!(" (line {l})")).unwrap_or_default();
                format!(
                    "{}{line}: {}",
                    e.code.as_deref().unwrap_or("error"),
                    e.message.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Refused because the account's queue of batch tokens is full.
    pub fn over_queue_limit(&self) -> bool {
        self.errors.as_ref().is_some_and(|e| {
            e.data
                .iter()
                .any(|d| d.code.as_deref() == Some("token_limit_exceeded"))
        })
    }

    pub fn counts(&self) -> RequestCounts {
        self.request_counts.clone().unwrap_or_default()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct RemoteFile {
    pub id: String,
    #[serde(default)]
    pub filename: String,
}

/// Whether a walk over a list goes on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    On,
    Stop,
}

#[derive(Deserialize)]
struct List<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

/// Attempts of a call that changes nothing, against a moment's failure.
const READ_RETRIES: Backoff = Backoff {
    base: Duration::from_millis(500),
    cap: Duration::from_secs(8),
    max_attempts: 4,
};

#[derive(Clone, Debug)]
pub struct BatchApi {
    http: reqwest::Client,
    target: BatchTarget,
}

impl BatchApi {
    pub fn new(http: reqwest::Client, target: BatchTarget) -> Self {
        Self { http, target }
    }

    pub fn target(&self) -> &BatchTarget {
        &self.target
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.target.request(&self.http, method, path)
    }

    /// Sends once with the current key, and once more with a rotated one
    /// when the API refused it. An upload's streamed body cannot go twice:
    /// its refusal still reads the secret again, for the next tick.
    async fn send(&self, req: RequestBuilder, path: &str) -> Result<reqwest::Response, EmbedError> {
        let Some(key) = self.target.key() else {
            return self.send_with(req, None, path).await;
        };
        let spare = req.try_clone();
        let used = key.current().await;
        match self.send_with(req, Some(&used), path).await {
            Err(e) if e.is_refusal() => match (key.refused(&used).await, spare) {
                (Some(new), Some(req)) => self.send_with(req, Some(&new), path).await,
                _ => Err(e),
            },
            other => other,
        }
    }

    /// Sends with `key`; an answer other than 2xx becomes the error it means.
    async fn send_with(
        &self,
        req: RequestBuilder,
        key: Option<&Secret>,
        path: &str,
    ) -> Result<reqwest::Response, EmbedError> {
        let req = self.target.authorize(req, key);
        let response = req.send().await.map_err(|e| EmbedError::Transport {
            url: self.target.url(path),
            url_var: "OPENAI_BASE_URL",
            reason: e.to_string(),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap_or_default();
        Err(self.target.classify(status.as_u16(), &headers, &body))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        path: &str,
    ) -> Result<T, EmbedError> {
        let bytes =
            self.send(req, path)
                .await?
                .bytes()
                .await
                .map_err(|e| EmbedError::Transport {
                    url: self.target.url(path),
                    url_var: "OPENAI_BASE_URL",
                    reason: e.to_string(),
                })?;
        serde_json::from_slice(&bytes).map_err(|e| EmbedError::Decode {
            reason: format!("{path}: {e}"),
        })
    }

    /// A call that changes nothing, tried again on a moment's failure.
    async fn read<T: DeserializeOwned>(&self, path: &str) -> Result<T, EmbedError> {
        let mut attempt = 1;
        loop {
            match self.json(self.request(Method::GET, path), path).await {
                Err(e) if e.is_retryable() => {
                    match READ_RETRIES.next_delay(attempt, None, None, Duration::ZERO) {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => return Err(e),
                    }
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Uploads an input file as it is written: `body` yields its bytes.
    pub async fn upload(
        &self,
        filename: &str,
        body: reqwest::Body,
    ) -> Result<RemoteFile, EmbedError> {
        let part = reqwest::multipart::Part::stream(body)
            .file_name(filename.to_string())
            .mime_str("application/jsonl")
            .map_err(|e| EmbedError::Decode {
                reason: e.to_string(),
            })?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        self.json(
            self.request(Method::POST, "/files").multipart(form),
            "/files",
        )
        .await
    }

    pub async fn create(
        &self,
        input_file_id: &str,
        metadata: &HashMap<String, String>,
    ) -> Result<RemoteBatch, EmbedError> {
        let body = json!({
            "input_file_id": input_file_id,
            "endpoint": BatchTarget::ENDPOINT,
            "completion_window": BatchTarget::COMPLETION_WINDOW,
            "metadata": metadata,
        });
        self.json(
            self.request(Method::POST, "/batches").json(&body),
            "/batches",
        )
        .await
    }

    pub async fn retrieve(&self, id: &str) -> Result<RemoteBatch, EmbedError> {
        self.read(&format!("/batches/{id}")).await
    }

    /// Walks a list endpoint page by page (`path` with its query, without
    /// the cursor) until `each` says it has what it wanted or the list ends.
    async fn walk<T: DeserializeOwned>(
        &self,
        path: &str,
        mut each: impl FnMut(&T) -> Walk,
    ) -> Result<(), EmbedError> {
        let mut after: Option<String> = None;
        loop {
            let page_path = match &after {
                Some(a) => format!("{path}&after={a}"),
                None => path.to_string(),
            };
            let page: List<T> = self.read(&page_path).await?;
            if page.data.iter().any(|item| each(item) == Walk::Stop) {
                return Ok(());
            }
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => return Ok(()),
            }
        }
    }

    /// The newest batch tagged with all of `tags` created at or after
    /// `since` (unix seconds): the list runs newest first, so the search
    /// stops at the first one older.
    pub async fn find(
        &self,
        tags: &HashMap<String, String>,
        since: i64,
    ) -> Result<Option<RemoteBatch>, EmbedError> {
        let mut found = None;
        self.walk("/batches?limit=100", |b: &RemoteBatch| {
            if b.created_at < since {
                return Walk::Stop;
            }
            let meta = b.metadata.as_ref();
            if tags
                .iter()
                .all(|(k, v)| meta.and_then(|m| m.get(k)) == Some(v))
            {
                found = Some(b.clone());
                return Walk::Stop;
            }
            Walk::On
        })
        .await?;
        Ok(found)
    }

    /// The account's files of purpose `batch` named `filename`.
    pub async fn files_named(&self, filename: &str) -> Result<Vec<RemoteFile>, EmbedError> {
        let mut found = Vec::new();
        self.walk("/files?purpose=batch&limit=1000", |f: &RemoteFile| {
            if f.filename == filename {
                found.push(f.clone());
            }
            Walk::On
        })
        .await?;
        Ok(found)
    }

    pub async fn delete_file(&self, id: &str) -> Result<(), EmbedError> {
        let path = format!("/files/{id}");
        let _: Value = self
            .json(self.request(Method::DELETE, &path), &path)
            .await?;
        Ok(())
    }

    /// A file's lines as they arrive, one at a time.
    pub async fn lines(&self, file_id: &str) -> Result<Lines, EmbedError> {
        let path = format!("/files/{file_id}/content");
        let response = self.send(self.request(Method::GET, &path), &path).await?;
        Ok(Lines::new(
            Box::pin(response.bytes_stream()),
            self.target.url(&path),
        ))
    }
}
