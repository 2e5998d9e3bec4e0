//! An OpenAI-compatible `/v1/embeddings` server, faithful to the public API in
//! the ways a backfill depends on: request and response shapes, error bodies,
//! per-request limits, rate-limit headers and 429s. Its vectors are a
//! deterministic function of the text (signed feature hashing of words and word
//! pairs), so a test can check that each document got the vector of its own
//! text, and nearest neighbours still mean something in a demo.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub const DEFAULT_DIMENSIONS: usize = 1536;
pub const MAX_INPUTS: usize = 2048;
pub const MAX_INPUT_TOKENS: usize = 8192;
pub const MAX_REQUEST_TOKENS: usize = 300_000;
/// Models it serves; any other gets OpenAI's 404 `model_not_found`.
pub const MODELS: [&str; 3] = [
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
];

/// How the server behaves; see the binary's `--help`. Inputs holding a
/// marker fail on purpose: `[[fail:400]]` (that input is rejected),
/// `[[fail:429]]` (rate limited), `[[fail:quota]]` (429 `insufficient_quota`),
/// `[[fail:500]]` (server error).
#[derive(Clone)]
pub struct Config {
    pub api_key: ApiKey,
    pub dimensions: usize,
    pub latency: Duration,
    pub latency_per_1k_tokens: Duration,
    pub tpm: Option<u64>,
    pub rpm: Option<u64>,
    pub error_rate: f64,
    pub seed: u64,
    /// Batch API: time from a batch's creation to its completion; zero
    /// completes it when it is first looked at after its creation.
    pub batch_complete_after: Duration,
    /// Batch API: share of each batch's lines left unfinished, so the batch
    /// ends `expired` and those lines get `batch_expired` (0: none expire).
    pub batch_expire_share: f64,
    /// Batch API: only the first this many batches created expire (all of
    /// them when `None`), so a job sent again can finish.
    pub batch_expire_first: Option<usize>,
    /// Batch API: queued prompt tokens a model may have in unfinished batches;
    /// a batch beyond it fails with `token_limit_exceeded` (none by default).
    pub batch_queue_tokens: Option<u64>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("dimensions", &self.dimensions)
            .field("latency", &self.latency)
            .field("latency_per_1k_tokens", &self.latency_per_1k_tokens)
            .field("tpm", &self.tpm)
            .field("rpm", &self.rpm)
            .field("error_rate", &self.error_rate)
            .field("seed", &self.seed)
            .field("batch_complete_after", &self.batch_complete_after)
            .field("batch_expire_share", &self.batch_expire_share)
            .field("batch_expire_first", &self.batch_expire_first)
            .field("batch_queue_tokens", &self.batch_queue_tokens)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_key: ApiKey::default(),
            dimensions: DEFAULT_DIMENSIONS,
            latency: Duration::ZERO,
            latency_per_1k_tokens: Duration::ZERO,
            tpm: None,
            rpm: None,
            error_rate: 0.0,
            seed: 42,
            batch_complete_after: Duration::ZERO,
            batch_expire_share: 0.0,
            batch_expire_first: None,
            batch_queue_tokens: None,
        }
    }
}

/// The one key the server accepts. A server run in a test's process can be
/// given another while it runs, as a rotation at OpenAI revokes the old key;
/// clones share it.
#[derive(Clone, Default)]
pub struct ApiKey(Arc<std::sync::RwLock<String>>);

impl ApiKey {
    pub fn set(&self, key: &str) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = key.to_string();
    }

    fn is(&self, key: &str) -> bool {
        *self.0.read().unwrap_or_else(PoisonError::into_inner) == key
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        Self(Arc::new(std::sync::RwLock::new(key.to_string())))
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        key.as_str().into()
    }
}

/// A continuously refilling bucket, as OpenAI meters per-minute limits.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(per_minute: u64) -> Self {
        Self {
            capacity: per_minute as f64,
            level: per_minute as f64,
            refilled: Instant::now(),
        }
    }

    fn rate(&self) -> f64 {
        self.capacity / 60.0
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let gained = now.duration_since(self.refilled).as_secs_f64() * self.rate();
        self.level = (self.level + gained).min(self.capacity);
        self.refilled = now;
    }

    /// Takes `n`, or says how long until `n` would be there.
    fn take(&mut self, n: f64) -> Result<(), Duration> {
        self.refill();
        if self.level >= n {
            self.level -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.level) / self.rate()))
        }
    }

    fn until_full(&self) -> Duration {
        Duration::from_secs_f64((self.capacity - self.level).max(0.0) / self.rate())
    }
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    inputs: AtomicU64,
    tokens: AtomicU64,
    status_429: AtomicU64,
    status_4xx: AtomicU64,
    /// Refused keys, of the embeddings and of the Batch API.
    pub(crate) status_401: AtomicU64,
    status_5xx: AtomicU64,
    /// Batch API: batches created, lines answered (through [`embed`]), lines
    /// left unfinished by an expiry, files uploaded.
    pub(crate) batches: AtomicU64,
    pub(crate) batch_lines: AtomicU64,
    pub(crate) batch_expired_lines: AtomicU64,
    pub(crate) batch_files: AtomicU64,
}

struct Limits {
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
}

pub(crate) struct AppState {
    pub(crate) config: Config,
    limits: Mutex<Limits>,
    rng: Mutex<StdRng>,
    pub(crate) stats: Stats,
    pub(crate) batches: crate::batch::Batches,
}

pub fn router(config: Config) -> Router {
    let state = Arc::new(AppState {
        limits: Mutex::new(Limits {
            rpm: config.rpm.map(Bucket::new),
            tpm: config.tpm.map(Bucket::new),
        }),
        rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
        batches: crate::batch::Batches::new(config.seed),
        config,
        stats: Stats::default(),
    });
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(azure_embeddings),
        )
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .route("/stats", get(stats))
        .route("/stats/reset", post(reset_stats))
        .merge(crate::batch::routes(state.clone()))
        .with_state(state)
}

/// Serves until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, config: Config) -> std::io::Result<()> {
    axum::serve(listener, router(config)).await
}

pub(crate) fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": param, "code": code}})),
    )
        .into_response()
}

pub(crate) fn invalid(message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        None,
        None,
    )
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    input: Value,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

const INPUT_INVALID: &str =
    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.";

async fn embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = handle(&state, &headers, &body, None).await;
    count_status(&state, response)
}

/// Azure OpenAI's shape: the deployment in the path (it serves the model of
/// that name), `api-version` in the query, the key in an `api-key` header.
async fn azure_embeddings(
    State(state): State<Arc<AppState>>,
    Path(deployment): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !query.contains_key("api-version") {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "404", "message": "Resource not found"}})),
        )
            .into_response();
    }
    let key = headers.get("api-key").and_then(|v| v.to_str().ok());
    if !key.is_some_and(|k| state.config.api_key.is(k)) {
        state.stats.requests.fetch_add(1, Ordering::Relaxed);
        return count_status(
            &state,
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}})),
            )
                .into_response(),
        );
    }
    let response = handle(&state, &headers, &body, Some(deployment)).await;
    count_status(&state, response)
}

fn count_status(state: &AppState, response: Response) -> Response {
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        state.stats.status_429.fetch_add(1, Ordering::Relaxed);
    } else if status.is_client_error() {
        state.stats.status_4xx.fetch_add(1, Ordering::Relaxed);
        if status == StatusCode::UNAUTHORIZED {
            state.stats.status_401.fetch_add(1, Ordering::Relaxed);
        }
    } else if status.is_server_error() {
        state.stats.status_5xx.fetch_add(1, Ordering::Relaxed);
    }
    response
}

/// An embeddings request; `deployment` is set when Azure's route, which has
/// checked the key already, names the model in its path.
async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    deployment: Option<String>,
) -> Response {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let cfg = &state.config;
    if deployment.is_none() {
        if let Some(refused) = check_bearer(cfg, headers) {
            return refused;
        }
    }
    embed(state, body, deployment, Metering::Sync).await
}

/// Whether a request is charged against the per-minute limits and waits out
/// the configured latency (synchronous calls), or is a line of a batch, which
/// OpenAI meters in its own queued-token pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Metering {
    Sync,
    Batch,
}

/// OpenAI's 401s for a missing or wrong bearer key.
pub(crate) fn check_bearer(cfg: &Config, headers: &HeaderMap) -> Option<Response> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(key) = auth.strip_prefix("Bearer ").map(str::trim) else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
            None,
        ));
    };
    if !cfg.api_key.is(key) {
        let tail: String = key
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Some(error(
            StatusCode::UNAUTHORIZED,
            &format!("Incorrect API key provided: sk-...{tail}. You can find your API key at https://platform.openai.com/account/api-keys."),
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ));
    }
    None
}

/// The embeddings themselves, after the route checked the key. Batch lines
/// come here too, so their vectors and faults are the synchronous ones.
pub(crate) async fn embed(
    state: &AppState,
    body: &[u8],
    deployment: Option<String>,
    metering: Metering,
) -> Response {
    let cfg = &state.config;
    if cfg.error_rate > 0.0 {
        let mut rng = state.rng.lock().unwrap_or_else(|p| p.into_inner());
        if rng.random::<f64>() < cfg.error_rate {
            let status = if rng.random::<bool>() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return error(
                status,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            );
        }
    }
    let req: EmbeddingRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return invalid(&format!(
                "We could not parse the JSON body of your request. ({e})"
            ))
        }
    };
    let inputs: Vec<String> = match req.input {
        Value::String(s) => vec![s],
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => out.push(s),
                    _ => return invalid(INPUT_INVALID),
                }
            }
            out
        }
        _ => return invalid(INPUT_INVALID),
    };
    if inputs.is_empty() || inputs.iter().any(|s| s.is_empty()) {
        return invalid(INPUT_INVALID);
    }
    if inputs.len() > MAX_INPUTS {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "'$.input' is invalid: {} inputs, at most {MAX_INPUTS} are allowed per request.",
                inputs.len()
            ),
            "invalid_request_error",
            Some("input"),
            None,
        );
    }
    let format = req.encoding_format.as_deref().unwrap_or("float");
    if format != "float" && format != "base64" {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid value for 'encoding_format': '{format}'. Supported values are: 'float' and 'base64'."),
            "invalid_request_error",
            Some("encoding_format"),
            None,
        );
    }
    let dims = req.dimensions.unwrap_or(cfg.dimensions);
    if dims == 0 || dims > cfg.dimensions {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Invalid value for 'dimensions' = {dims}. Must be between 1 and {}.",
                cfg.dimensions
            ),
            "invalid_request_error",
            Some("dimensions"),
            None,
        );
    }
    let tokenizer = bpe_openai::cl100k_base();
    let counts: Vec<usize> = inputs.iter().map(|s| tokenizer.count(s.as_str())).collect();
    if let Some(&n) = counts.iter().find(|&&n| n > MAX_INPUT_TOKENS) {
        return invalid(&format!(
            "This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you requested {n} tokens ({n} in your prompt; 0 for the completion). Please reduce your prompt; or completion length."
        ));
    }
    let total: usize = counts.iter().sum();
    if total > MAX_REQUEST_TOKENS {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request"),
            "invalid_request_error",
            Some("input"),
            Some("max_tokens_per_request"),
        );
    }
    let model = deployment
        .or(req.model)
        .unwrap_or_else(|| "text-embedding-3-small".into());
    if !MODELS.contains(&model.as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        );
    }
    if inputs.iter().any(|s| s.contains("[[fail:quota]]")) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            None,
            Some("insufficient_quota"),
        );
    }
    let limit_headers = match metering {
        Metering::Sync => match take_limits(state, total as f64, &model) {
            Ok(h) => h,
            Err(r) => return *r,
        },
        Metering::Batch => Vec::new(),
    };
    if let Some(i) = inputs.iter().position(|s| s.contains("[[fail:400]]")) {
        return with_headers(
            invalid(&format!("Input {i} is invalid: injected fault")),
            &limit_headers,
        );
    }
    if inputs.iter().any(|s| s.contains("[[fail:500]]")) {
        return with_headers(
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            ),
            &limit_headers,
        );
    }
    if inputs.iter().any(|s| s.contains("[[fail:429]]")) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Rate limit reached for {model} in organization org-standin on requests per min (RPM): injected fault. Please try again in 1s. Visit https://platform.openai.com/account/rate-limits to learn more."),
            "requests",
            None,
            Some("rate_limit_exceeded"),
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        r.headers_mut()
            .insert("retry-after-ms", HeaderValue::from_static("1000"));
        return with_headers(r, &limit_headers);
    }
    let delay = match metering {
        Metering::Sync => cfg.latency + cfg.latency_per_1k_tokens.mul_f64(total as f64 / 1000.0),
        Metering::Batch => Duration::ZERO,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    state
        .stats
        .inputs
        .fetch_add(inputs.len() as u64, Ordering::Relaxed);
    state
        .stats
        .tokens
        .fetch_add(total as u64, Ordering::Relaxed);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = embed_text_dims(text, cfg.dimensions, dims);
            let embedding = if format == "base64" {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    });
    with_headers(Json(body).into_response(), &limit_headers)
}

/// Charges the request against the RPM and TPM buckets. A request refused for
/// tokens still costs a request, as OpenAI counts failed requests.
fn take_limits(
    state: &AppState,
    tokens: f64,
    model: &str,
) -> Result<Vec<(&'static str, String)>, Box<Response>> {
    let mut limits = state.limits.lock().unwrap_or_else(|p| p.into_inner());
    let mut refused: Option<(Duration, &str, &str, u64)> = None;
    if let Some(b) = limits.rpm.as_mut() {
        if let Err(wait) = b.take(1.0) {
            refused = Some((wait, "requests", "requests per min (RPM)", 1));
        }
    }
    if refused.is_none() {
        if let Some(b) = limits.tpm.as_mut() {
            if let Err(wait) = b.take(tokens) {
                refused = Some((wait, "tokens", "tokens per min (TPM)", tokens as u64));
            }
        }
    }
    let mut headers = Vec::new();
    if let Some(b) = &limits.rpm {
        headers.push((
            "x-ratelimit-limit-requests",
            format!("{}", b.capacity as u64),
        ));
        headers.push((
            "x-ratelimit-remaining-requests",
            format!("{}", b.level.floor() as u64),
        ));
        headers.push(("x-ratelimit-reset-requests", go_duration(b.until_full())));
    }
    if let Some(b) = &limits.tpm {
        headers.push(("x-ratelimit-limit-tokens", format!("{}", b.capacity as u64)));
        headers.push((
            "x-ratelimit-remaining-tokens",
            format!("{}", b.level.floor() as u64),
        ));
        headers.push(("x-ratelimit-reset-tokens", go_duration(b.until_full())));
    }
    let Some((wait, kind, what, requested)) = refused else {
        return Ok(headers);
    };
    let (limit, used) = match kind {
        "requests" => limits
            .rpm
            .as_ref()
            .map(|b| (b.capacity, b.capacity - b.level))
            .unwrap_or_default(),
        _ => limits
            .tpm
            .as_ref()
            .map(|b| (b.capacity, b.capacity - b.level))
            .unwrap_or_default(),
    };
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "Rate limit reached for {model} in organization org-standin on {what}: Limit {}, Used {}, Requested {requested}. Please try again in {}. Visit https://platform.openai.com/account/rate-limits to learn more.",
            limit as u64,
            used.round() as u64,
            go_duration(wait)
        ),
        kind,
        None,
        Some("rate_limit_exceeded"),
    );
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(secs));
    r.headers_mut().insert(
        "retry-after-ms",
        HeaderValue::from(wait.as_millis().max(1) as u64),
    );
    Err(Box::new(with_headers(r, &headers)))
}

fn with_headers(mut r: Response, headers: &[(&'static str, String)]) -> Response {
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

async fn models() -> Json<Value> {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 1705948997, "owned_by": "system"});
    Json(json!({
        "object": "list",
        "data": MODELS.iter().map(|m| model(m)).collect::<Vec<_>>(),
    }))
}

async fn stats(State(state): State<Arc<AppState>>) -> Json<Value> {
    let s = &state.stats;
    Json(json!({
        "requests": s.requests.load(Ordering::Relaxed),
        "inputs": s.inputs.load(Ordering::Relaxed),
        "tokens": s.tokens.load(Ordering::Relaxed),
        "status_429": s.status_429.load(Ordering::Relaxed),
        "status_4xx": s.status_4xx.load(Ordering::Relaxed),
        "status_401": s.status_401.load(Ordering::Relaxed),
        "status_5xx": s.status_5xx.load(Ordering::Relaxed),
        "batches": s.batches.load(Ordering::Relaxed),
        "batch_lines": s.batch_lines.load(Ordering::Relaxed),
        "batch_expired_lines": s.batch_expired_lines.load(Ordering::Relaxed),
        "batch_files": s.batch_files.load(Ordering::Relaxed),
    }))
}

async fn reset_stats(State(state): State<Arc<AppState>>) -> StatusCode {
    let s = &state.stats;
    for c in [
        &s.requests,
        &s.inputs,
        &s.tokens,
        &s.status_429,
        &s.status_4xx,
        &s.status_401,
        &s.status_5xx,
        &s.batches,
        &s.batch_lines,
        &s.batch_expired_lines,
        &s.batch_files,
    ] {
        c.store(0, Ordering::Relaxed);
    }
    StatusCode::NO_CONTENT
}

/// FNV-1a, 64 bit: stable across runs and platforms, unlike std's hasher.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn add_feature(v: &mut [f32], parts: &[&[u8]], weight: f32) {
    let h = fnv1a(parts);
    let idx = (h % v.len() as u64) as usize;
    let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
    v[idx] += sign * weight;
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The vector of `text`: L2-normalised signed hashes of its lower-cased words
/// and word pairs; a text without words falls back to its characters.
pub fn embed_text(text: &str, dims: usize) -> Vec<f32> {
    let mut v = vec![0f32; dims.max(1)];
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    for w in &words {
        add_feature(&mut v, &[b"w:", w.as_bytes()], 1.0);
    }
    for pair in words.windows(2) {
        add_feature(
            &mut v,
            &[b"p:", pair[0].as_bytes(), b" ", pair[1].as_bytes()],
            0.5,
        );
    }
    if words.is_empty() {
        let mut buf = [0u8; 4];
        for c in text.chars() {
            add_feature(&mut v, &[b"c:", c.encode_utf8(&mut buf).as_bytes()], 1.0);
        }
    }
    normalise_nonzero(&mut v, text);
    v
}

/// Normalises `v`, first giving an all-zero vector (features that cancelled
/// out, or fell outside a shortened vector) one component from the text.
fn normalise_nonzero(v: &mut [f32], text: &str) {
    if v.iter().all(|x| *x == 0.0) {
        let idx = (fnv1a(&[text.as_bytes()]) % v.len() as u64) as usize;
        v[idx] = 1.0;
    }
    normalise(v);
}

/// Shortened as text-embedding-3 does for `dimensions`: the first components
/// of the full vector, normalised again.
fn embed_text_dims(text: &str, full: usize, dims: usize) -> Vec<f32> {
    let mut v = embed_text(text, full);
    if dims < full {
        v.truncate(dims);
        normalise_nonzero(&mut v, text);
    }
    v
}

/// Go's `time.Duration` text, as OpenAI writes `x-ratelimit-reset-*`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let total = d.as_secs_f64();
    let hours = (total / 3600.0).floor();
    let minutes = ((total - hours * 3600.0) / 60.0).floor();
    let seconds = total - hours * 3600.0 - minutes * 60.0;
    let secs = format!("{:.3}", seconds);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    match (hours as u64, minutes as u64) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_read_like_openai() {
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_millis(2812)), "2.812s");
        assert_eq!(go_duration(Duration::from_millis(90_500)), "1m30.5s");
    }

    #[test]
    fn vectors_are_deterministic_and_normalised() {
        let a = embed_text("Lov om kommuner og fylkeskommuner", 1536);
        assert_eq!(a, embed_text("Lov om kommuner og fylkeskommuner", 1536));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_ne!(a, embed_text("Forskrift om gebyr", 1536));
        let dots = embed_text("...", 1536);
        assert!(dots.iter().any(|x| *x != 0.0));
    }

    #[test]
    fn similar_texts_are_near() {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let a = embed_text("kommunen skal behandle klage over vedtak", 1536);
        let b = embed_text("kommunen skal behandle klage over vedtaket", 1536);
        let c = embed_text("skatt på formue og inntekt", 1536);
        assert!(dot(&a, &b) > dot(&a, &c));
    }

    #[test]
    fn shortened_vectors_are_renormalised() {
        let v = embed_text_dims("Lov om arv", 1536, 256);
        assert_eq!(v.len(), 256);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    async fn spawn(config: Config) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, config));
        format!("http://{addr}/v1/embeddings")
    }

    fn config() -> Config {
        Config {
            api_key: "sk-test".into(),
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn http_errors_look_like_openai() {
        let url = spawn(config()).await;
        let http = reqwest::Client::new();
        let r = http
            .post(&url)
            .bearer_auth("sk-wrong1234")
            .json(&json!({"input": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert!(!body.to_string().contains("wrong"));
        let long = "ord ".repeat(9000);
        let r = http
            .post(&url)
            .bearer_auth("sk-test")
            .json(&json!({"input": [long]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 8192"));
        assert!(body["error"]["code"].is_null());
        let r = http
            .post(&url)
            .bearer_auth("sk-test")
            .json(&json!({"input": ["a", ""]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }

    #[tokio::test]
    async fn base64_is_little_endian_f32_of_the_same_vector() {
        let url = spawn(config()).await;
        let http = reqwest::Client::new();
        let body: Value = http
            .post(&url)
            .bearer_auth("sk-test")
            .json(&json!({"input": ["Lov om arv", "Lov om skifte"], "encoding_format": "base64"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let b64 = body["data"][1]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(v, embed_text("Lov om skifte", 1536));
        assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    }

    #[tokio::test]
    async fn tpm_limit_answers_429_with_headers() {
        let url = spawn(Config {
            tpm: Some(60),
            ..config()
        })
        .await;
        let http = reqwest::Client::new();
        let text = "ord ".repeat(50);
        let ok = http
            .post(&url)
            .bearer_auth("sk-test")
            .json(&json!({"input": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert!(ok.headers().contains_key("x-ratelimit-remaining-tokens"));
        let limited = http
            .post(&url)
            .bearer_auth("sk-test")
            .json(&json!({"input": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(limited.status(), 429);
        assert!(limited.headers().contains_key("retry-after"));
        let reset = limited.headers()["x-ratelimit-reset-tokens"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(reset.ends_with('s'), "{reset}");
        let body: Value = limited.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    }
}
