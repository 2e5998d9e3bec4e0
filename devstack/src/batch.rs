//! OpenAI's Batch API for `/v1/embeddings`, in memory: Files (`/v1/files`)
//! and Batches (`/v1/batches`) with OpenAI's shapes, limits and lifecycle.
//! Every line of a batch is answered by the same code as a synchronous
//! `/v1/embeddings` call (`standin::embed`), so its vectors are the
//! synchronous ones and a `[[fail:...]]` marker fails that line only, which
//! then goes to the batch's error file.
//!
//! Lifecycle: a batch is created `validating`; when it is next looked at
//! (retrieve, list, cancel) it becomes `failed` (its input did not validate or
//! the queued-token limit was reached) or `in_progress`, and once
//! [`Config::batch_complete_after`](crate::standin::Config) has passed since
//! its creation the look that finds it due runs its lines (`finalizing`) and
//! answers `completed`, or `expired` when
//! [`Config::batch_expire_share`](crate::standin::Config) leaves lines
//! unfinished. A cancel makes it `cancelling`, the next look `cancelled`.
//! Output and error lines come in a shuffled order, seeded by the batch id and
//! the server's seed.

use crate::standin::{self, AppState, Metering};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Requests (lines) a batch may hold.
pub const MAX_BATCH_REQUESTS: usize = 50_000;
/// Embedding inputs a `/v1/embeddings` batch may hold across all its lines.
pub const MAX_BATCH_INPUTS: usize = 50_000;
/// Size of an uploaded batch input file (200 MB).
pub const MAX_FILE_BYTES: usize = 200 * 1024 * 1024;
/// The only completion window OpenAI offers.
pub const COMPLETION_WINDOW: &str = "24h";
const COMPLETION_WINDOW_SECS: u64 = 24 * 3600;
/// Batch input and output files expire after 30 days by default.
const FILE_TTL_SECS: u64 = 30 * 24 * 3600;
/// Validation errors reported on one batch, at most.
const MAX_REPORTED_ERRORS: usize = 100;
/// The endpoint the stand-in serves in a batch.
pub const EMBEDDINGS: &str = "/v1/embeddings";
/// Endpoints OpenAI's Batch API accepts; the stand-in runs only [`EMBEDDINGS`].
const BATCH_ENDPOINTS: [&str; 8] = [
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
];
const FILE_PURPOSES: [&str; 6] = [
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// An entry of a failed batch's `errors.data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// 1-based line of the input file, when the error is about one line.
    pub line: Option<usize>,
}

impl LineError {
    fn new(code: &'static str, message: String, param: Option<&str>, line: Option<usize>) -> Self {
        Self {
            code,
            message,
            param: param.map(str::to_string),
            line,
        }
    }

    fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message, "param": self.param, "line": self.line})
    }
}

/// One request of a validated input file.
#[derive(Clone, Debug)]
pub struct Request {
    pub custom_id: String,
    pub body: Value,
}

/// A validated input file: its requests, their one model, and what they add
/// to the queue.
#[derive(Clone, Debug)]
pub struct Plan {
    pub requests: Vec<Request>,
    pub model: String,
    pub inputs: usize,
    pub tokens: u64,
}

/// The embedding inputs of a request body and their tokens. Malformed inputs
/// count as nothing here: the line fails when it runs, as OpenAI's would.
fn body_inputs(body: &Value) -> (usize, u64) {
    let tokenizer = bpe_openai::cl100k_base();
    let count = |s: &str| tokenizer.count(s) as u64;
    match body.get("input") {
        Some(Value::String(s)) => (1, count(s)),
        Some(Value::Array(items)) => (
            items.len(),
            items.iter().filter_map(Value::as_str).map(count).sum(),
        ),
        _ => (0, 0),
    }
}

/// Validates a batch input file for `endpoint` as OpenAI does before a batch
/// runs: every line a JSON object with a unique `custom_id`, `method` POST, the
/// batch's `url` and a `body`; one model; at most [`MAX_BATCH_REQUESTS`] lines
/// and [`MAX_BATCH_INPUTS`] embedding inputs. Blank lines are skipped.
pub fn parse_input(data: &[u8], endpoint: &str) -> Result<Plan, Vec<LineError>> {
    let mut errors = Vec::new();
    let mut requests = Vec::new();
    let mut seen = HashSet::new();
    let mut model: Option<String> = None;
    let (mut inputs, mut tokens) = (0usize, 0u64);
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        Err(_) => {
            return Err(vec![LineError::new(
                "invalid_file_format",
                "The input file is not valid UTF-8 JSONL.".into(),
                None,
                None,
            )])
        }
    };
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let raw = raw.trim_end_matches('\r');
        if raw.trim().is_empty() {
            continue;
        }
        let mut err = |code, message: String, param: Option<&str>| {
            errors.push(LineError::new(code, message, param, Some(n)));
        };
        let obj = match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(o)) => o,
            _ => {
                err(
                    "invalid_json_line",
                    "This line is not parseable as valid JSON.".into(),
                    None,
                );
                continue;
            }
        };
        let missing = |name: &str| format!("Missing required parameter: '{name}'.");
        let Some(custom_id) = obj.get("custom_id").and_then(Value::as_str) else {
            err(
                "missing_required_parameter",
                missing("custom_id"),
                Some("custom_id"),
            );
            continue;
        };
        match obj.get("method").and_then(Value::as_str) {
            None => {
                err(
                    "missing_required_parameter",
                    missing("method"),
                    Some("method"),
                );
                continue;
            }
            Some("POST") => {}
            Some(other) => {
                err(
                    "invalid_method",
                    format!("The method '{other}' is not supported; batch requests must use POST."),
                    Some("method"),
                );
                continue;
            }
        }
        match obj.get("url").and_then(Value::as_str) {
            None => {
                err("missing_required_parameter", missing("url"), Some("url"));
                continue;
            }
            Some(url) if url != endpoint => {
                err(
                    "url_mismatch",
                    format!("The URL provided for this request ('{url}') does not match the batch endpoint ('{endpoint}')."),
                    Some("url"),
                );
                continue;
            }
            Some(_) => {}
        }
        let Some(body) = obj.get("body").filter(|b| b.is_object()) else {
            err("missing_required_parameter", missing("body"), Some("body"));
            continue;
        };
        let line_model = body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("text-embedding-3-small");
        match &model {
            None => model = Some(line_model.to_string()),
            Some(m) if m != line_model => {
                err(
                    "model_mismatch",
                    format!("The provided model '{line_model}' does not match the model '{m}' used in other requests in this file. All requests in a batch must use the same model."),
                    Some("body.model"),
                );
                continue;
            }
            Some(_) => {}
        }
        if !seen.insert(custom_id.to_string()) {
            err(
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request. The custom_id parameter must be unique for each request in a batch.".into(),
                Some("custom_id"),
            );
            continue;
        }
        let (n_inputs, n_tokens) = body_inputs(body);
        inputs += n_inputs;
        tokens += n_tokens;
        requests.push(Request {
            custom_id: custom_id.to_string(),
            body: body.clone(),
        });
    }
    if errors.is_empty() && requests.is_empty() {
        errors.push(LineError::new(
            "empty_file",
            "The batch input file is empty.".into(),
            None,
            None,
        ));
    }
    if requests.len() > MAX_BATCH_REQUESTS {
        errors.push(LineError::new(
            "too_many_tasks",
            format!(
                "The batch input file has {} requests; a batch holds at most {MAX_BATCH_REQUESTS}.",
                requests.len()
            ),
            None,
            None,
        ));
    }
    if endpoint == EMBEDDINGS && inputs > MAX_BATCH_INPUTS {
        errors.push(LineError::new(
            "too_many_tasks",
            format!("The batch input file has {inputs} embedding inputs; an /v1/embeddings batch holds at most {MAX_BATCH_INPUTS} across all its requests."),
            None,
            None,
        ));
    }
    if !errors.is_empty() {
        errors.truncate(MAX_REPORTED_ERRORS);
        return Err(errors);
    }
    Ok(Plan {
        requests,
        model: model.unwrap_or_default(),
        inputs,
        tokens,
    })
}

/// Lines of `n` left unfinished when a batch expires with `share` undone:
/// `share` of them, rounded, but at least one when `share` is above zero.
pub fn expired_count(n: usize, share: f64) -> usize {
    if share <= 0.0 || n == 0 {
        return 0;
    }
    ((n as f64 * share.min(1.0)).round() as usize).clamp(1, n)
}

/// The error of a create that would queue more than `limit` tokens of `model`.
pub fn queue_check(model: &str, queued: u64, tokens: u64, limit: Option<u64>) -> Option<LineError> {
    let limit = limit?;
    if queued + tokens <= limit {
        return None;
    }
    Some(LineError::new(
        "token_limit_exceeded",
        format!(
            "Enqueued token limit reached for {model} in organization org-standin. Limit: {} enqueued tokens. Please try again once some in_progress batches have been completed.",
            thousands(limit)
        ),
        None,
        None,
    ))
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub data: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() || from > haystack.len() - needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = from;
    while i + needle.len() <= haystack.len() {
        match haystack[i..=haystack.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(off) => {
                i += off;
                if &haystack[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// A `name="value"` parameter of a header value.
fn header_param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Parses a `multipart/form-data` body (RFC 7578) given its content type.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    if !content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Err("expected a multipart/form-data body".into());
    }
    let boundary =
        header_param(content_type, "boundary").ok_or("the content type has no boundary")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let next_delim = format!("\r\n--{boundary}").into_bytes();
    let mut pos =
        find(body, &delimiter, 0).ok_or("no multipart boundary in the body")? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        if !body[pos..].starts_with(b"\r\n") {
            return Err("malformed multipart boundary line".into());
        }
        pos += 2;
        let head_end = find(body, b"\r\n\r\n", pos).ok_or("unterminated part headers")?;
        let head = String::from_utf8_lossy(&body[pos..head_end]).to_string();
        let data_start = head_end + 4;
        let data_end = find(body, &next_delim, data_start).ok_or("unterminated multipart body")?;
        let disposition = head
            .split("\r\n")
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then(|| v.trim().to_string())
            })
            .ok_or("a part has no Content-Disposition")?;
        parts.push(Part {
            name: header_param(&disposition, "name").ok_or("a part has no name")?,
            filename: header_param(&disposition, "filename"),
            data: body[data_start..data_end].to_vec(),
        });
        pos = data_end + next_delim.len();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::Failed => "failed",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether its tokens still count against the queue.
    fn queued(self) -> bool {
        matches!(
            self,
            Status::Validating | Status::InProgress | Status::Finalizing | Status::Cancelling
        )
    }
}

struct StoredFile {
    id: String,
    filename: String,
    purpose: String,
    created_at: u64,
    data: Bytes,
}

impl StoredFile {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.data.len(),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.created_at + FILE_TTL_SECS,
            "status_details": null,
        })
    }
}

struct Batch {
    id: String,
    endpoint: String,
    input_file_id: String,
    metadata: Value,
    created: Instant,
    created_at: u64,
    status: Status,
    /// What validation decided, applied when the batch is next looked at.
    verdict: Option<Result<Arc<Plan>, Vec<LineError>>>,
    plan: Option<Arc<Plan>>,
    model: Option<String>,
    errors: Option<Vec<LineError>>,
    times: HashMap<&'static str, u64>,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    total: usize,
    completed: usize,
    failed: usize,
    input_tokens: u64,
}

impl Batch {
    fn to_json(&self) -> Value {
        let t = |k: &str| self.times.get(k).copied();
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": self.errors.as_ref().map(|e| json!({
                "object": "list",
                "data": e.iter().map(LineError::to_json).collect::<Vec<_>>(),
            })),
            "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": self.status.as_str(),
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": t("in_progress_at"),
            "expires_at": self.created_at + COMPLETION_WINDOW_SECS,
            "finalizing_at": t("finalizing_at"),
            "completed_at": t("completed_at"),
            "failed_at": t("failed_at"),
            "expired_at": t("expired_at"),
            "cancelling_at": t("cancelling_at"),
            "cancelled_at": t("cancelled_at"),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 0,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens,
            },
            "metadata": self.metadata,
        })
    }
}

struct Inner {
    /// In creation order, so files created in the same second still list in
    /// a stable order.
    files: Vec<StoredFile>,
    /// In creation order.
    batches: Vec<Batch>,
    rng: StdRng,
}

impl Inner {
    fn id(&mut self, prefix: &str, len: usize, hex: bool) -> String {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        const HEX: &[u8] = b"0123456789abcdef";
        let set = if hex { HEX } else { ALNUM };
        let tail: String = (0..len)
            .map(|_| set[self.rng.random_range(0..set.len())] as char)
            .collect();
        format!("{prefix}{tail}")
    }

    fn batch(&mut self, id: &str) -> Option<&mut Batch> {
        self.batches.iter_mut().find(|b| b.id == id)
    }

    fn file(&self, id: &str) -> Option<&StoredFile> {
        self.files.iter().find(|f| f.id == id)
    }
}

/// The Batch API's files and batches, held by the stand-in's state.
pub(crate) struct Batches {
    inner: Mutex<Inner>,
    seed: u64,
}

impl Batches {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                files: Vec::new(),
                batches: Vec::new(),
                rng: StdRng::seed_from_u64(seed ^ 0xba7c_4ba7_c4ba_7c4b),
            }),
            seed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The Batch API's routes, each behind the key check of `/v1/embeddings`.
pub(crate) fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/v1/files",
            post(upload_file)
                .layer(DefaultBodyLimit::max(MAX_FILE_BYTES + 1024 * 1024))
                .get(list_files),
        )
        .route("/v1/files/{id}", get(retrieve_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batches", post(create_batch).get(list_batches))
        .route("/v1/batches/{id}", get(retrieve_batch))
        .route("/v1/batches/{id}/cancel", post(cancel_batch))
        .route_layer(axum::middleware::from_fn_with_state(state, require_key))
}

async fn require_key(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match standin::check_bearer(&state.config, request.headers()) {
        Some(refused) => {
            state.stats.status_401.fetch_add(1, Ordering::Relaxed);
            refused
        }
        None => next.run(request).await,
    }
}

fn missing_param(name: &str) -> Response {
    standin::error(
        StatusCode::BAD_REQUEST,
        &format!("Missing required parameter: '{name}'."),
        "invalid_request_error",
        Some(name),
        Some("missing_required_parameter"),
    )
}

fn bad_param(name: &str, message: &str) -> Response {
    standin::error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        Some(name),
        None,
    )
}

fn no_file(id: &str) -> Response {
    standin::error(
        StatusCode::NOT_FOUND,
        &format!("No such File object: {id}"),
        "invalid_request_error",
        Some("id"),
        None,
    )
}

fn no_batch(id: &str) -> Response {
    standin::error(
        StatusCode::NOT_FOUND,
        &format!("No batch found with id '{id}'."),
        "invalid_request_error",
        None,
        None,
    )
}

async fn upload_file(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parts = match parse_multipart(content_type, &body) {
        Ok(p) => p,
        Err(e) => return standin::invalid(&format!("Could not parse multipart form: {e}")),
    };
    let Some(purpose) = parts.iter().find(|p| p.name == "purpose") else {
        return missing_param("purpose");
    };
    let purpose = String::from_utf8_lossy(&purpose.data).trim().to_string();
    let Some(file) = parts.iter().find(|p| p.name == "file") else {
        return missing_param("file");
    };
    if !FILE_PURPOSES.contains(&purpose.as_str()) {
        return bad_param(
            "purpose",
            &format!(
                "'{purpose}' is not one of {:?} - 'purpose'",
                FILE_PURPOSES.join("', '")
            ),
        );
    }
    let filename = file.filename.clone().unwrap_or_else(|| "upload".into());
    if purpose == "batch" && !filename.ends_with(".jsonl") {
        return standin::invalid("Invalid file format for Batch API. Must be .jsonl");
    }
    if file.data.len() > MAX_FILE_BYTES {
        return standin::invalid(&format!(
            "File is too large: {} bytes, the maximum for purpose 'batch' is {MAX_FILE_BYTES} bytes.",
            file.data.len()
        ));
    }
    let mut inner = state.batches.lock();
    let id = inner.id("file-", 22, false);
    let stored = StoredFile {
        id: id.clone(),
        filename,
        purpose,
        created_at: now(),
        data: Bytes::from(file.data.clone()),
    };
    let out = stored.to_json();
    inner.files.push(stored);
    state.stats.batch_files.fetch_add(1, Ordering::Relaxed);
    Json(out).into_response()
}

async fn retrieve_file(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.batches.lock().file(&id) {
        Some(f) => Json(f.to_json()).into_response(),
        None => no_file(&id),
    }
}

async fn file_content(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let data = state.batches.lock().file(&id).map(|f| f.data.clone());
    match data {
        Some(d) => ([(header::CONTENT_TYPE, "application/octet-stream")], d).into_response(),
        None => no_file(&id),
    }
}

async fn delete_file(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let mut inner = state.batches.lock();
    match inner.files.iter().position(|f| f.id == id) {
        Some(i) => {
            inner.files.remove(i);
            Json(json!({"id": id, "object": "file", "deleted": true})).into_response()
        }
        None => no_file(&id),
    }
}

#[derive(Deserialize)]
struct FileListQuery {
    purpose: Option<String>,
    limit: Option<String>,
    order: Option<String>,
    after: Option<String>,
}

/// A list's `limit`: `default` when absent, else 1 to `max`; a bad one is
/// answered with OpenAI's message.
fn limit_param(raw: Option<&str>, default: usize, max: usize) -> Result<usize, String> {
    match raw.map(str::parse::<usize>) {
        None => Ok(default),
        Some(Ok(n)) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(format!(
            "Invalid 'limit': expected an integer between 1 and {max}."
        )),
    }
}

/// `GET /v1/files`: OpenAI's defaults are all files (up to 10,000), newest
/// first.
async fn list_files(
    State(state): State<Arc<AppState>>,
    Query(query): Query<FileListQuery>,
) -> Response {
    let limit = match limit_param(query.limit.as_deref(), 10_000, 10_000) {
        Ok(n) => n,
        Err(message) => return bad_param("limit", &message),
    };
    let newest_first = match query.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return bad_param(
                "order",
                &format!("Invalid value: '{other}'. Supported values are: 'asc' and 'desc'."),
            )
        }
    };
    let inner = state.batches.lock();
    let mut files: Vec<&StoredFile> = inner
        .files
        .iter()
        .filter(|f| query.purpose.as_ref().is_none_or(|p| *p == f.purpose))
        .collect();
    if newest_first {
        files.reverse();
    }
    let ids: Vec<&str> = files.iter().map(|f| f.id.as_str()).collect();
    let (range, has_more) = page(&ids, query.after.as_deref(), limit);
    let ids = &ids[range.clone()];
    let data: Vec<Value> = files[range].iter().map(|f| f.to_json()).collect();
    Json(json!({
        "object": "list",
        "data": data,
        "first_id": ids.first(),
        "last_id": ids.last(),
        "has_more": has_more,
    }))
    .into_response()
}

/// Checks a create's `metadata`: up to 16 string pairs, keys up to 64
/// characters, values up to 512.
pub fn check_metadata(metadata: &Value) -> Result<(), String> {
    let Value::Object(map) = metadata else {
        return if metadata.is_null() {
            Ok(())
        } else {
            Err("Invalid type for 'metadata': expected an object.".into())
        };
    };
    if map.len() > 16 {
        return Err(format!(
            "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, but got an object with {} properties instead.",
            map.len()
        ));
    }
    for (k, v) in map {
        if k.chars().count() > 64 {
            return Err(format!(
                "Invalid 'metadata': key '{k}' is longer than 64 characters."
            ));
        }
        match v.as_str() {
            Some(s) if s.chars().count() <= 512 => {}
            Some(_) => {
                return Err(format!(
                    "Invalid 'metadata.{k}': string too long. Expected a string with maximum length 512."
                ))
            }
            None => return Err(format!("Invalid type for 'metadata.{k}': expected a string.")),
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct CreateBatch {
    input_file_id: Option<String>,
    endpoint: Option<String>,
    completion_window: Option<String>,
    #[serde(default)]
    metadata: Value,
}

async fn create_batch(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let req: CreateBatch = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return standin::invalid(&format!(
                "We could not parse the JSON body of your request. ({e})"
            ))
        }
    };
    let Some(input_file_id) = req.input_file_id else {
        return missing_param("input_file_id");
    };
    let Some(endpoint) = req.endpoint else {
        return missing_param("endpoint");
    };
    let Some(window) = req.completion_window else {
        return missing_param("completion_window");
    };
    if !BATCH_ENDPOINTS.contains(&endpoint.as_str()) {
        return bad_param(
            "endpoint",
            &format!(
                "Invalid value: '{endpoint}'. Supported values are: '{}'.",
                BATCH_ENDPOINTS.join("', '")
            ),
        );
    }
    if endpoint != EMBEDDINGS {
        return bad_param(
            "endpoint",
            &format!("The stand-in runs only '{EMBEDDINGS}' batches, not '{endpoint}'."),
        );
    }
    if window != COMPLETION_WINDOW {
        return bad_param(
            "completion_window",
            &format!("Invalid value: '{window}'. Supported values are: '{COMPLETION_WINDOW}'."),
        );
    }
    if let Err(e) = check_metadata(&req.metadata) {
        return bad_param("metadata", &e);
    }
    let mut inner = state.batches.lock();
    let (purpose, data) = match inner.file(&input_file_id) {
        Some(f) => (f.purpose.clone(), f.data.clone()),
        None => return no_file(&input_file_id),
    };
    if purpose != "batch" {
        return bad_param(
            "input_file_id",
            &format!("The file {input_file_id} was uploaded with purpose '{purpose}'; a batch input file must have purpose 'batch'."),
        );
    }
    let verdict = match parse_input(&data, &endpoint) {
        Err(e) => Err(e),
        Ok(plan) => {
            let queued: u64 = inner
                .batches
                .iter()
                .filter(|b| b.status.queued())
                .filter_map(|b| match (&b.verdict, &b.plan) {
                    (Some(Ok(p)), _) | (None, Some(p)) if p.model == plan.model => Some(p.tokens),
                    _ => None,
                })
                .sum();
            match queue_check(
                &plan.model,
                queued,
                plan.tokens,
                state.config.batch_queue_tokens,
            ) {
                Some(e) => Err(vec![e]),
                None => Ok(Arc::new(plan)),
            }
        }
    };
    let id = inner.id("batch_", 32, true);
    let batch = Batch {
        id,
        endpoint,
        input_file_id,
        metadata: req.metadata,
        created: Instant::now(),
        created_at: now(),
        status: Status::Validating,
        verdict: Some(verdict),
        plan: None,
        model: None,
        errors: None,
        times: HashMap::new(),
        output_file_id: None,
        error_file_id: None,
        total: 0,
        completed: 0,
        failed: 0,
        input_tokens: 0,
    };
    let out = batch.to_json();
    inner.batches.push(batch);
    state.stats.batches.fetch_add(1, Ordering::Relaxed);
    Json(out).into_response()
}

/// Moves a batch on as time has passed; the plan to run when it is due.
fn advance(b: &mut Batch, cfg: &standin::Config) -> Option<Arc<Plan>> {
    let t = now();
    if b.status == Status::Validating {
        match b.verdict.take() {
            Some(Err(errors)) => {
                b.status = Status::Failed;
                b.times.insert("failed_at", t);
                b.errors = Some(errors);
            }
            Some(Ok(plan)) => {
                b.status = Status::InProgress;
                b.times.insert("in_progress_at", t);
                b.total = plan.requests.len();
                b.model = Some(plan.model.clone());
                b.plan = Some(plan);
            }
            None => {}
        }
    }
    match b.status {
        Status::InProgress if b.created.elapsed() >= cfg.batch_complete_after => {
            b.status = Status::Finalizing;
            b.times.insert("finalizing_at", t);
            b.plan.clone()
        }
        Status::Cancelling => {
            b.status = Status::Cancelled;
            b.times.insert("cancelled_at", t);
            None
        }
        _ => None,
    }
}

/// What running a batch's lines gave.
struct Ran {
    output: Vec<u8>,
    errors: Vec<u8>,
    completed: usize,
    failed: usize,
    expired: usize,
    tokens: u64,
}

fn push_line(buf: &mut Vec<u8>, line: &Value) {
    buf.extend_from_slice(line.to_string().as_bytes());
    buf.push(b'\n');
}

/// Runs a batch's lines through the embeddings code, in a shuffled order
/// seeded by the server's seed and the batch id, leaving the configured share
/// of them unfinished.
async fn run(state: &AppState, batch_id: &str, plan: &Plan) -> Ran {
    let seed = state.batches.seed ^ standin::fnv1a(&[batch_id.as_bytes()]);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..plan.requests.len()).collect();
    order.shuffle(&mut rng);
    let created = state
        .batches
        .lock()
        .batches
        .iter()
        .position(|b| b.id == batch_id)
        .unwrap_or(0);
    let share = match state.config.batch_expire_first {
        Some(n) if created >= n => 0.0,
        _ => state.config.batch_expire_share,
    };
    let expired = expired_count(order.len(), share);
    let (done, unfinished) = order.split_at(order.len() - expired);
    let mut ran = Ran {
        output: Vec::new(),
        errors: Vec::new(),
        completed: 0,
        failed: 0,
        expired,
        tokens: 0,
    };
    let mut hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
            .collect()
    };
    for &i in done {
        let req = &plan.requests[i];
        let body = serde_json::to_vec(&req.body).unwrap_or_default();
        let response = standin::embed(state, &body, None, Metering::Batch).await;
        state.stats.batch_lines.fetch_add(1, Ordering::Relaxed);
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let line = json!({
            "id": format!("batch_req_{}", hex(32)),
            "custom_id": req.custom_id,
            "response": {"status_code": status.as_u16(), "request_id": hex(32), "body": body},
            "error": null,
        });
        if status == StatusCode::OK {
            ran.tokens += body["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
            ran.completed += 1;
            push_line(&mut ran.output, &line);
        } else {
            ran.failed += 1;
            push_line(&mut ran.errors, &line);
        }
    }
    for &i in unfinished {
        let line = json!({
            "id": format!("batch_req_{}", hex(32)),
            "custom_id": plan.requests[i].custom_id,
            "response": null,
            "error": {
                "code": "batch_expired",
                "message": "This request could not be executed before the completion window expired.",
            },
        });
        push_line(&mut ran.errors, &line);
    }
    state
        .stats
        .batch_expired_lines
        .fetch_add(expired as u64, Ordering::Relaxed);
    ran
}

/// Brings a batch up to date (running it when it is due) and renders it.
async fn observe(state: &AppState, id: &str) -> Option<Value> {
    let plan = {
        let mut inner = state.batches.lock();
        let b = inner.batch(id)?;
        match advance(b, &state.config) {
            None => return Some(b.to_json()),
            Some(plan) => plan,
        }
    };
    let ran = run(state, id, &plan).await;
    let mut inner = state.batches.lock();
    let t = now();
    let store = |inner: &mut Inner, data: Vec<u8>, kind: &str| -> Option<String> {
        if data.is_empty() {
            return None;
        }
        let file_id = inner.id("file-", 22, false);
        inner.files.push(StoredFile {
            id: file_id.clone(),
            filename: format!("{id}_{kind}.jsonl"),
            purpose: "batch_output".into(),
            created_at: t,
            data: Bytes::from(data),
        });
        Some(file_id)
    };
    let output_file_id = store(&mut inner, ran.output, "output");
    let error_file_id = store(&mut inner, ran.errors, "error");
    let b = inner.batch(id)?;
    b.output_file_id = output_file_id;
    b.error_file_id = error_file_id;
    b.completed = ran.completed;
    b.failed = ran.failed + ran.expired;
    b.input_tokens = ran.tokens;
    if ran.expired > 0 {
        b.status = Status::Expired;
        b.times.insert("expired_at", t);
    } else {
        b.status = Status::Completed;
        b.times.insert("completed_at", t);
    }
    Some(b.to_json())
}

async fn retrieve_batch(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match observe(&state, &id).await {
        Some(b) => Json(b).into_response(),
        None => no_batch(&id),
    }
}

async fn cancel_batch(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let mut inner = state.batches.lock();
    let Some(b) = inner.batch(&id) else {
        return no_batch(&id);
    };
    // Validation outcome first: a batch that failed cannot be cancelled.
    if b.status == Status::Validating {
        if let Some(Err(_)) = &b.verdict {
            let _ = advance(b, &state.config);
        }
    }
    match b.status {
        Status::Validating | Status::InProgress => {
            b.verdict = None;
            b.status = Status::Cancelling;
            b.times.insert("cancelling_at", now());
            Json(b.to_json()).into_response()
        }
        Status::Cancelling | Status::Cancelled => Json(b.to_json()).into_response(),
        other => standin::error(
            StatusCode::CONFLICT,
            &format!("Cannot cancel a batch with status '{}'.", other.as_str()),
            "invalid_request_error",
            None,
            None,
        ),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// Where a list page lies in `ordered` (ids in the list's order): `limit` of
/// them after `after`, and whether more follow. An unknown cursor gives an
/// empty page.
pub fn page(ordered: &[&str], after: Option<&str>, limit: usize) -> (Range<usize>, bool) {
    let start = match after {
        None => 0,
        Some(a) => match ordered.iter().position(|id| *id == a) {
            Some(i) => i + 1,
            None => ordered.len(),
        },
    };
    let end = ordered.len().min(start.saturating_add(limit));
    (start..end, end < ordered.len())
}

async fn list_batches(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
) -> Response {
    let limit = match limit_param(query.limit.as_deref(), 20, 100) {
        Ok(n) => n,
        Err(message) => return bad_param("limit", &message),
    };
    let ids: Vec<String> = state
        .batches
        .lock()
        .batches
        .iter()
        .rev()
        .map(|b| b.id.clone())
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (range, has_more) = page(&refs, query.after.as_deref(), limit);
    let ids = &refs[range];
    let mut data = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(b) = observe(&state, id).await {
            data.push(b);
        }
    }
    let mut out = Map::new();
    out.insert("object".into(), json!("list"));
    out.insert("first_id".into(), json!(ids.first()));
    out.insert("last_id".into(), json!(ids.last()));
    out.insert("has_more".into(), json!(has_more));
    out.insert("data".into(), Value::Array(data));
    Json(Value::Object(out)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, input: Value) -> String {
        json!({"custom_id": id, "method": "POST", "url": EMBEDDINGS,
               "body": {"model": "text-embedding-3-small", "input": input}})
        .to_string()
    }

    #[test]
    fn a_valid_file_becomes_a_plan() {
        let text = format!(
            "{}\r\n\n{}\n",
            line("a", json!("hello world")),
            line("b", json!(["one", "two three"]))
        );
        let plan = parse_input(text.as_bytes(), EMBEDDINGS).unwrap();
        assert_eq!(plan.requests.len(), 2);
        assert_eq!(plan.requests[1].custom_id, "b");
        assert_eq!(plan.model, "text-embedding-3-small");
        assert_eq!(plan.inputs, 3);
        assert_eq!(plan.tokens, 2 + 1 + 2);
    }

    #[test]
    fn bad_lines_are_reported_with_their_numbers() {
        let other_model = json!({"custom_id": "m", "method": "POST", "url": EMBEDDINGS,
            "body": {"model": "text-embedding-3-large", "input": "x"}})
        .to_string();
        let text = [
            line("a", json!("x")),
            "{not json".to_string(),
            line("a", json!("y")),
            json!({"custom_id": "u", "method": "POST", "url": "/v1/chat/completions", "body": {}})
                .to_string(),
            json!({"method": "POST", "url": EMBEDDINGS, "body": {}}).to_string(),
            json!({"custom_id": "g", "method": "GET", "url": EMBEDDINGS, "body": {}}).to_string(),
            other_model,
            "[1, 2]".to_string(),
        ]
        .join("\n");
        let errors = parse_input(text.as_bytes(), EMBEDDINGS).unwrap_err();
        let got: Vec<(&str, Option<usize>)> = errors.iter().map(|e| (e.code, e.line)).collect();
        assert_eq!(
            got,
            vec![
                ("invalid_json_line", Some(2)),
                ("duplicate_custom_id", Some(3)),
                ("url_mismatch", Some(4)),
                ("missing_required_parameter", Some(5)),
                ("invalid_method", Some(6)),
                ("model_mismatch", Some(7)),
                ("invalid_json_line", Some(8)),
            ]
        );
        assert_eq!(errors[3].param.as_deref(), Some("custom_id"));
    }

    #[test]
    fn empty_files_and_limits_fail() {
        let e = parse_input(b"\n  \n", EMBEDDINGS).unwrap_err();
        assert_eq!(e[0].code, "empty_file");
        let many: String = (0..=MAX_BATCH_REQUESTS)
            .map(|i| format!("{}\n", line(&i.to_string(), json!("x"))))
            .collect();
        let e = parse_input(many.as_bytes(), EMBEDDINGS).unwrap_err();
        // 50,001 requests of one input each: too many requests and inputs.
        assert_eq!(e.len(), 2);
        assert!(e
            .iter()
            .all(|e| e.code == "too_many_tasks" && e.line.is_none()));
        assert!(e[0].message.contains("50001 requests"), "{}", e[0].message);
        // 25 lines of 2,001 inputs: few requests, too many inputs.
        let inputs: String = (0..25)
            .map(|i| format!("{}\n", line(&i.to_string(), json!(vec!["x"; 2001]))))
            .collect();
        let e = parse_input(inputs.as_bytes(), EMBEDDINGS).unwrap_err();
        assert_eq!(e[0].code, "too_many_tasks");
        assert!(
            e[0].message.contains("embedding inputs"),
            "{}",
            e[0].message
        );
        let exactly: String = (0..25)
            .map(|i| format!("{}\n", line(&i.to_string(), json!(vec!["x"; 2000]))))
            .collect();
        assert_eq!(
            parse_input(exactly.as_bytes(), EMBEDDINGS).unwrap().inputs,
            50_000
        );
    }

    #[test]
    fn queue_limit_counts_queued_and_new_tokens() {
        assert_eq!(queue_check("m", 10, 10, None), None);
        assert_eq!(queue_check("m", 10, 10, Some(20)), None);
        let e = queue_check("text-embedding-3-small", 10, 11, Some(20)).unwrap();
        assert_eq!(e.code, "token_limit_exceeded");
        assert!(
            e.message.contains("Limit: 20 enqueued tokens"),
            "{}",
            e.message
        );
        assert_eq!(thousands(3_000_000), "3,000,000");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn expiry_leaves_a_share_unfinished() {
        assert_eq!(expired_count(10, 0.0), 0);
        assert_eq!(expired_count(10, 0.5), 5);
        assert_eq!(expired_count(10, 0.01), 1);
        assert_eq!(expired_count(10, 1.5), 10);
        assert_eq!(expired_count(0, 0.5), 0);
    }

    #[test]
    fn metadata_limits() {
        assert!(check_metadata(&Value::Null).is_ok());
        assert!(check_metadata(&json!({"run": "r1"})).is_ok());
        let many: Map<String, Value> = (0..17).map(|i| (i.to_string(), json!("v"))).collect();
        assert!(check_metadata(&Value::Object(many)).is_err());
        assert!(check_metadata(&json!({"k": 1})).is_err());
        assert!(check_metadata(&json!({"k": "v".repeat(513)})).is_err());
        assert!(check_metadata(&json!({"k".repeat(65): "v"})).is_err());
    }

    #[test]
    fn pages_go_newest_first_after_a_cursor() {
        let ids = ["c", "b", "a"];
        assert_eq!(page(&ids, None, 2), (0..2, true));
        assert_eq!(page(&ids, Some("b"), 2), (2..3, false));
        assert_eq!(page(&ids, Some("a"), 2), (3..3, false));
        assert_eq!(page(&ids, Some("zz"), 2), (3..3, false));
        assert_eq!(page(&ids, None, 3), (0..3, false));
        assert_eq!(page(&ids, None, usize::MAX), (0..3, false));
    }

    #[test]
    fn multipart_bodies_parse() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{\"a\":1}\r\n\r\n--XyZ--\r\n";
        let parts = parse_multipart("multipart/form-data; boundary=XyZ", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "purpose");
        assert_eq!(parts[0].data, b"batch");
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\r\n");
        let quoted = parse_multipart("multipart/form-data; boundary=\"XyZ\"", body).unwrap();
        assert_eq!(quoted, parts);
        assert!(parse_multipart("application/json", body).is_err());
        assert!(parse_multipart("multipart/form-data; boundary=Q", body).is_err());
        assert!(parse_multipart("multipart/form-data; boundary=XyZ", b"--XyZ\r\nbroken").is_err());
    }

    async fn spawn(config: standin::Config) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(standin::serve(listener, config));
        format!("http://{addr}")
    }

    /// A `/v1/files` upload's body: `purpose` and a file `name` holding `content`.
    fn multipart(purpose: &str, name: &str, content: &str) -> String {
        format!("--b0\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n{content}\r\n--b0--\r\n")
    }

    /// Uploads `body` with the test key; the file object.
    async fn upload(http: &reqwest::Client, base: &str, body: String) -> Value {
        http.post(format!("{base}/v1/files"))
            .bearer_auth("sk-test")
            .header("content-type", "multipart/form-data; boundary=b0")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn files_list_in_creation_order_with_a_cursor() {
        let base = spawn(standin::Config {
            api_key: "sk-test".into(),
            ..standin::Config::default()
        })
        .await;
        let http = reqwest::Client::new();
        let mut ids = Vec::new();
        // Likely created in one second: the order must come from insertion.
        for (purpose, name) in [
            ("batch", "a.jsonl"),
            ("user_data", "b.txt"),
            ("batch", "c.jsonl"),
        ] {
            let file = upload(&http, &base, multipart(purpose, name, "{}")).await;
            ids.push(file["id"].as_str().unwrap().to_string());
        }
        let ids_at = |at: &[usize]| -> Vec<String> { at.iter().map(|&i| ids[i].clone()).collect() };
        let list = |query: &str| {
            let (http, url) = (http.clone(), format!("{base}/v1/files{query}"));
            async move {
                let resp = http.get(url).bearer_auth("sk-test").send().await.unwrap();
                (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
            }
        };
        let listed = |v: &Value| -> Vec<String> {
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_str().unwrap().to_string())
                .collect()
        };
        let unauthorised = http.get(format!("{base}/v1/files")).send().await.unwrap();
        assert_eq!(unauthorised.status(), 401);

        let (status, all) = list("").await;
        assert_eq!(status, 200);
        assert_eq!(all["object"], "list");
        assert_eq!(listed(&all), ids_at(&[2, 1, 0]));
        assert_eq!(all["data"][0]["object"], "file");
        assert_eq!(all["data"][0]["filename"], "c.jsonl");
        assert_eq!(
            (&all["first_id"], &all["last_id"]),
            (&json!(ids[2]), &json!(ids[0]))
        );
        assert_eq!(all["has_more"], false);
        let (_, asc) = list("?order=asc").await;
        assert_eq!(listed(&asc), ids);

        let (_, first) = list("?purpose=batch&limit=1").await;
        assert_eq!(listed(&first), ids_at(&[2]));
        assert_eq!(first["has_more"], true);
        let after = format!("?purpose=batch&limit=1&after={}", ids[2]);
        let (_, second) = list(&after).await;
        assert_eq!(listed(&second), ids_at(&[0]));
        assert_eq!(second["has_more"], false);
        let after = format!("?order=asc&limit=2&after={}", ids[0]);
        let (_, rest) = list(&after).await;
        assert_eq!(listed(&rest), ids_at(&[1, 2]));
        assert_eq!(rest["has_more"], false);
        let (_, none) = list("?purpose=fine-tune").await;
        assert_eq!(none["data"], json!([]));
        assert_eq!(
            (&none["first_id"], &none["has_more"]),
            (&Value::Null, &json!(false))
        );

        assert_eq!(list("?limit=10000").await.0, 200);
        for (query, param) in [
            ("?limit=0", "limit"),
            ("?limit=10001", "limit"),
            ("?limit=ten", "limit"),
            ("?order=newest", "order"),
        ] {
            let (status, e) = list(query).await;
            assert_eq!(status, 400, "{query}");
            assert_eq!(e["error"]["type"], "invalid_request_error", "{query}");
            assert_eq!(e["error"]["param"], param, "{query}");
        }

        http.delete(format!("{base}/v1/files/{}", ids[1]))
            .bearer_auth("sk-test")
            .send()
            .await
            .unwrap();
        assert_eq!(listed(&list("").await.1), ids_at(&[2, 0]));
    }

    #[tokio::test]
    async fn a_batch_runs_through_the_embeddings_code() {
        let base = spawn(standin::Config {
            api_key: "sk-test".into(),
            ..standin::Config::default()
        })
        .await;
        let http = reqwest::Client::new();
        let input = format!(
            "{}\n{}\n",
            line("ok", json!("Lov om arv")),
            line("bad", json!("x [[fail:400]]"))
        );
        let body = multipart("batch", "in.jsonl", &input);
        let unauthorised = http
            .post(format!("{base}/v1/files"))
            .header("content-type", "multipart/form-data; boundary=b0")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(unauthorised.status(), 401);
        let file = upload(&http, &base, body).await;
        assert_eq!(file["bytes"].as_u64().unwrap() as usize, input.len());
        let created: Value = http
            .post(format!("{base}/v1/batches"))
            .bearer_auth("sk-test")
            .json(&json!({"input_file_id": file["id"], "endpoint": EMBEDDINGS, "completion_window": "24h"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(created["status"], "validating");
        let done: Value = http
            .get(format!(
                "{base}/v1/batches/{}",
                created["id"].as_str().unwrap()
            ))
            .bearer_auth("sk-test")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(
            done["request_counts"],
            json!({"total": 2, "completed": 1, "failed": 1})
        );
        let output = http
            .get(format!(
                "{base}/v1/files/{}/content",
                done["output_file_id"].as_str().unwrap()
            ))
            .bearer_auth("sk-test")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line: Value = serde_json::from_str(output.trim()).unwrap();
        assert_eq!(line["custom_id"], "ok");
        let v: Vec<f32> = line["response"]["body"]["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(v, standin::embed_text("Lov om arv", 1536));
        let stats: Value = http
            .get(format!("{base}/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stats["batches"], 1);
        assert_eq!(stats["batch_lines"], 2);
        assert_eq!(stats["requests"], 0);
    }
}
