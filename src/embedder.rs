//! Client for OpenAI's `/v1/embeddings` (and compatible servers): asks for
//! base64 vectors, tells retryable errors from permanent ones, and retries the
//! former within the caller's deadline.

use crate::config::OpenAiConfig;
use crate::rate::{Governor, TooLong};
use crate::retry::{parse_go_duration, Backoff};
use crate::secret::Secret;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EmbedError {
    #[error(
        "OpenAI rejected OPENAI_API_KEY (HTTP 401): {message}. Set OPENAI_API_KEY to a valid key"
    )]
    InvalidKey { message: String },
    #[error("OpenAI refused the request (HTTP 403): {message}. Check the key's project and model permissions")]
    Forbidden { message: String },
    #[error("OpenAI quota exhausted (429 insufficient_quota): add credits or raise the budget, then `backfill redrive`")]
    QuotaExhausted { message: String },
    #[error("OpenAI rate limit hit (429): {message}")]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A rejection of one or more inputs: bisecting the request finds them.
    #[error("OpenAI rejected the input (HTTP {status}): {message}")]
    BadRequest { status: u16, message: String },
    /// A rejection of the request itself, whatever its inputs: every batch
    /// would get it, so it fails the batch rather than its documents.
    #[error("the embeddings API refused the request (HTTP {status}): {message}. Check OPENAI_EMBEDDING_MODEL, BACKFILL_EMBEDDING_DIMENSIONS and OPENAI_BASE_URL, then `backfill retry-failed RUN_ID`")]
    InvalidRequest { status: u16, message: String },
    #[error("OpenAI server error (HTTP {status}): {message}")]
    Server {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error(
        "cannot reach the embeddings API at {url}: {reason}. Check OPENAI_BASE_URL and the network"
    )]
    Transport { url: String, reason: String },
    #[error("the embeddings API answered in a form this version cannot read: {reason}")]
    Decode { reason: String },
}

impl EmbedError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EmbedError::RateLimited { .. }
                | EmbedError::Server { .. }
                | EmbedError::Transport { .. }
        )
    }

    fn server_hint(&self) -> Option<Duration> {
        match self {
            EmbedError::RateLimited { retry_after, .. }
            | EmbedError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Vectors in input order, and what the API charged.
#[derive(Clone, Debug)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u64,
}

#[derive(Clone)]
pub struct Embedder {
    http: reqwest::Client,
    url: String,
    key: Secret,
    model: String,
    dimensions: u32,
    backoff: Backoff,
    governor: Arc<Governor>,
    max_concurrent_requests: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ApiResponse {
    data: Vec<ApiEmbedding>,
    usage: Option<ApiUsage>,
}

#[derive(Deserialize)]
struct ApiEmbedding {
    index: usize,
    embedding: ApiVector,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ApiVector {
    Base64(String),
    Floats(Vec<f32>),
}

#[derive(Deserialize)]
struct ApiUsage {
    prompt_tokens: u64,
}

#[derive(Deserialize, Default)]
struct ApiErrorBody {
    error: Option<ApiErrorDetail>,
}

#[derive(Deserialize, Default)]
struct ApiErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    param: Option<String>,
}

impl Embedder {
    pub fn new(cfg: &OpenAiConfig) -> Result<Self, EmbedError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("embed-backfill/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EmbedError::Transport {
                url: cfg.base_url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            url: format!("{}/embeddings", cfg.base_url),
            key: cfg.api_key.clone(),
            model: cfg.model.clone(),
            dimensions: cfg.dimensions,
            backoff: Backoff::default(),
            governor: Arc::new(Governor::new(cfg.budget, cfg.max_concurrent_requests)),
            max_concurrent_requests: cfg.max_concurrent_requests,
        })
    }

    /// Requests this process keeps in flight at most.
    pub fn max_concurrent_requests(&self) -> usize {
        self.max_concurrent_requests
    }

    /// Embeds `inputs` (`tokens` in all) when the rate governor allows,
    /// retrying transient failures until `deadline` (less a margin) would be
    /// passed. Permanent errors return at once.
    pub async fn embed(
        &self,
        inputs: &[&str],
        tokens: u64,
        deadline: Option<Instant>,
    ) -> Result<Embeddings, EmbedError> {
        let margin = Duration::from_secs(5);
        let mut attempt = 1;
        loop {
            let permit = self
                .governor
                .acquire(tokens, deadline.map(|d| d - margin))
                .await
                .map_err(|TooLong(wait)| EmbedError::RateLimited {
                    message: format!(
                        "the rate budget has no room for {tokens} tokens before the deadline"
                    ),
                    retry_after: Some(wait),
                })?;
            let result = self.send(inputs).await;
            drop(permit);
            match result {
                Ok(e) => return Ok(e),
                Err(err) if err.is_retryable() => {
                    match self
                        .backoff
                        .next_delay(attempt, err.server_hint(), deadline, margin)
                    {
                        Some(delay) => {
                            tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %err, "embeddings request failed; retrying");
                            tokio::time::sleep(delay).await;
                            attempt += 1;
                        }
                        None => return Err(err),
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// One request, no retries; tells the governor what the answer said.
    async fn send(&self, inputs: &[&str]) -> Result<Embeddings, EmbedError> {
        let mut body = json!({
            "model": self.model,
            "input": inputs,
            "encoding_format": "base64",
        });
        // ada-002 rejects `dimensions`; the text-embedding-3 models take it.
        if self.model.starts_with("text-embedding-3") {
            body["dimensions"] = json!(self.dimensions);
        }
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(self.key.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| EmbedError::Transport {
                url: self.url.clone(),
                reason: describe(&e),
            })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| EmbedError::Transport {
            url: self.url.clone(),
            reason: describe(&e),
        })?;
        if status != 200 {
            let err = classify(status, &headers, &bytes);
            let limited = match &err {
                EmbedError::RateLimited { retry_after, .. } => {
                    Some(retry_after.unwrap_or(Duration::from_secs(1)))
                }
                _ => None,
            };
            self.governor.observe(&headers, limited);
            return Err(err);
        }
        self.governor.observe(&headers, None);
        let parsed: ApiResponse =
            serde_json::from_slice(&bytes).map_err(|e| EmbedError::Decode {
                reason: e.to_string(),
            })?;
        self.decode(parsed, inputs.len())
    }

    fn decode(&self, parsed: ApiResponse, expected: usize) -> Result<Embeddings, EmbedError> {
        if parsed.data.len() != expected {
            return Err(EmbedError::Decode {
                reason: format!("asked for {expected} vectors, got {}", parsed.data.len()),
            });
        }
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
        for item in parsed.data {
            let v = match item.embedding {
                ApiVector::Floats(v) => v,
                ApiVector::Base64(s) => decode_base64_f32(&s)?,
            };
            if v.len() != self.dimensions as usize {
                return Err(EmbedError::Decode {
                    reason: format!(
                        "a vector has {} dimensions, expected {} (BACKFILL_EMBEDDING_DIMENSIONS)",
                        v.len(),
                        self.dimensions
                    ),
                });
            }
            let slot = vectors
                .get_mut(item.index)
                .ok_or_else(|| EmbedError::Decode {
                    reason: format!("vector index {} out of range", item.index),
                })?;
            *slot = Some(v);
        }
        let vectors = vectors
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| EmbedError::Decode {
                reason: "an index was answered twice and another not at all".into(),
            })?;
        Ok(Embeddings {
            vectors,
            prompt_tokens: parsed.usage.map(|u| u.prompt_tokens).unwrap_or(0),
        })
    }
}

fn decode_base64_f32(s: &str) -> Result<Vec<f32>, EmbedError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| EmbedError::Decode {
            reason: format!("base64 vector: {e}"),
        })?;
    if bytes.len() % 4 != 0 {
        return Err(EmbedError::Decode {
            reason: format!("base64 vector of {} bytes is not whole f32s", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn header_duration(headers: &reqwest::header::HeaderMap, name: &str) -> Option<Duration> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    let secs = |x: f64| Duration::try_from_secs_f64(x).ok();
    match name {
        "retry-after-ms" => v.parse::<f64>().ok().and_then(|ms| secs(ms / 1000.0)),
        "retry-after" => v.parse::<f64>().ok().and_then(secs),
        _ => parse_go_duration(v),
    }
}

/// The wait a 429 asks for: explicit retry headers first, then the reset of the
/// exhausted limit, then the "try again in 2.812s" in the message.
fn retry_hint(headers: &reqwest::header::HeaderMap, message: &str) -> Option<Duration> {
    header_duration(headers, "retry-after-ms")
        .or_else(|| header_duration(headers, "retry-after"))
        .or_else(|| {
            let exhausted = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    == Some(0)
            };
            if exhausted("x-ratelimit-remaining-tokens") {
                header_duration(headers, "x-ratelimit-reset-tokens")
            } else if exhausted("x-ratelimit-remaining-requests") {
                header_duration(headers, "x-ratelimit-reset-requests")
            } else {
                None
            }
        })
        .or_else(|| {
            let at = message.find("try again in ")? + "try again in ".len();
            let rest = &message[at..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            parse_go_duration(rest[..end].trim_end_matches('.'))
        })
}

fn classify(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) -> EmbedError {
    let parsed: ApiErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let detail = parsed.error.unwrap_or_default();
    let code = detail
        .code
        .as_ref()
        .and_then(|c| c.as_str().map(String::from).or_else(|| Some(c.to_string())))
        .unwrap_or_default();
    let message = detail
        .message
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    match status {
        401 => EmbedError::InvalidKey {
            message: redact_key_hint(&message),
        },
        403 => EmbedError::Forbidden { message },
        429 if code == "insufficient_quota" => EmbedError::QuotaExhausted { message },
        429 => EmbedError::RateLimited {
            retry_after: retry_hint(headers, &message),
            message,
        },
        408 | 409 | 500..=599 => EmbedError::Server {
            status,
            retry_after: header_duration(headers, "retry-after-ms")
                .or_else(|| header_duration(headers, "retry-after")),
            message,
        },
        400 | 413 | 422 if about_inputs(detail.param.as_deref(), &message) => {
            EmbedError::BadRequest { status, message }
        }
        _ => EmbedError::InvalidRequest { status, message },
    }
}

/// Whether a 4xx blames the inputs (too long, empty, too many tokens) rather
/// than the model, the dimensions or the URL. OpenAI sends `code: null` for
/// an over-long input, so the message decides.
fn about_inputs(param: Option<&str>, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    param == Some("input")
        || m.contains("input")
        || m.contains("context length")
        || m.contains("tokens")
}

/// OpenAI echoes a masked key ("sk-...abcd") in 401 messages; keep even that out.
fn redact_key_hint(message: &str) -> String {
    let Some(i) = message.find("provided: ") else {
        return message.to_string();
    };
    let start = i + "provided: ".len();
    let rest = &message[start..];
    let len = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let key = rest[..len].trim_end_matches('.');
    format!("{}***{}", &message[..start], &rest[key.len()..])
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn classifies_openai_errors() {
        let h = HeaderMap::new();
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(matches!(
            classify(429, &h, quota),
            EmbedError::QuotaExhausted { .. }
        ));
        assert!(!classify(429, &h, quota).is_retryable());
        let limited = br#"{"error":{"message":"Rate limit reached. Please try again in 2.812s. Visit","code":"rate_limit_exceeded"}}"#;
        let e = classify(429, &h, limited);
        assert!(e.is_retryable());
        assert_eq!(e.server_hint(), Some(Duration::from_millis(2812)));
        let long = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":null}}"#;
        assert!(matches!(
            classify(400, &h, long),
            EmbedError::BadRequest { status: 400, .. }
        ));
        assert!(classify(503, &h, b"upstream").is_retryable());
        let empty = br#"{"error":{"message":"'$.input' is invalid. Please check the API reference","code":null}}"#;
        assert!(matches!(
            classify(400, &h, empty),
            EmbedError::BadRequest { .. }
        ));
        let model = br#"{"error":{"message":"The model `text-embedding-4` does not exist or you do not have access to it.","code":"model_not_found"}}"#;
        let e = classify(404, &h, model);
        assert!(matches!(e, EmbedError::InvalidRequest { status: 404, .. }));
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("OPENAI_EMBEDDING_MODEL"), "{e}");
        let dims = br#"{"error":{"message":"Invalid value for 'dimensions' = 4000.","param":"dimensions","code":null}}"#;
        assert!(matches!(
            classify(400, &h, dims),
            EmbedError::InvalidRequest { .. }
        ));
        let bad_key = br#"{"error":{"message":"Incorrect API key provided: sk-abc***wxyz. You can find","code":"invalid_api_key"}}"#;
        let e = classify(401, &h, bad_key);
        assert!(!e.is_retryable());
        assert!(!e.to_string().contains("wxyz"), "{e}");
    }

    #[test]
    fn retry_headers_win_over_the_message() {
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(
            retry_hint(&h, "try again in 9s."),
            Some(Duration::from_millis(1500))
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("0"),
        );
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6m0s"));
        assert_eq!(retry_hint(&h, ""), Some(Duration::from_secs(360)));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("1e300"));
        assert_eq!(
            retry_hint(&h, ""),
            None,
            "an absurd hint is ignored, not a panic"
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        let e = classify(503, &h, b"busy");
        assert_eq!(e.server_hint(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn base64_vectors_are_little_endian_f32() {
        let floats = [0.5f32, -1.25, 3.0];
        let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        let s = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(decode_base64_f32(&s).unwrap(), floats);
        assert!(decode_base64_f32("AAA=").is_err());
    }
}
