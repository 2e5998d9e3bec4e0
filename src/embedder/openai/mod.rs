//! OpenAI's `/v1/embeddings`, and its wire format, which Azure OpenAI and
//! the compatible servers share: the request body, the answer, the error
//! shapes and their retry hints, and the `x-ratelimit-*` headers.

mod batch;
mod hints;

pub use batch::BatchTarget;

use super::tokens::Tokenizer;
use super::{EmbedError, Embeddings, Limits, Provider};
use crate::config::{EmbeddingConfig, ProviderSettings};
use crate::keys::Key;
use crate::rate::RateSignals;
use crate::secret::Secret;
use crate::store::Mode;
use base64::Engine;
use hints::{header_duration, retry_hint};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Value};

/// OpenAI's limits for `/v1/embeddings`: 2,048 inputs and 300,000 tokens a
/// request; 8,192 tokens an input, one kept as margin as OpenAI's cookbook
/// advises.
pub const LIMITS: Limits = Limits {
    inputs_per_request: 2048,
    tokens_per_request: 300_000,
    tokens_per_input: 8191,
};

/// USD per million input tokens, OpenAI's list prices: the model, direct,
/// and through the Batch API. The first row prices a model not listed.
const PRICES: [(&str, f64, f64); 3] = [
    ("text-embedding-3-small", 0.02, 0.01),
    ("text-embedding-3-large", 0.13, 0.065),
    ("text-embedding-ada-002", 0.10, 0.05),
];

pub fn price_per_million_tokens(model: &str, mode: Mode) -> f64 {
    let (_, direct, batch) = PRICES
        .iter()
        .find(|(m, ..)| *m == model)
        .unwrap_or(&PRICES[0]);
    match mode {
        Mode::Direct => *direct,
        Mode::Batch => *batch,
    }
}

/// The settings an error names, per provider.
pub(super) struct Names {
    pub key_var: &'static str,
    pub settings: &'static str,
}

const NAMES: Names = Names {
    key_var: "OPENAI_API_KEY",
    settings: "OPENAI_EMBEDDING_MODEL, BACKFILL_EMBEDDING_DIMENSIONS and OPENAI_BASE_URL",
};

#[derive(Debug)]
pub struct OpenAi {
    base_url: String,
    url: String,
    key: Option<Key>,
    model: String,
    dimensions: u32,
}

impl OpenAi {
    pub fn new(cfg: &EmbeddingConfig) -> Self {
        let (base_url, key) = match &cfg.provider {
            ProviderSettings::OpenAi { base_url, api_key } => (base_url.clone(), api_key.clone()),
            _ => (String::new(), None),
        };
        Self {
            url: format!("{base_url}/embeddings"),
            base_url,
            key,
            model: cfg.model.clone(),
            dimensions: cfg.dimensions,
        }
    }
}

impl Provider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> u32 {
        self.dimensions
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    fn tokenizer(&self) -> Tokenizer {
        Tokenizer::Cl100k
    }

    fn price_per_million_tokens(&self, mode: Mode) -> Option<f64> {
        Some(price_per_million_tokens(&self.model, mode))
    }

    fn batch_target(&self) -> Option<BatchTarget> {
        Some(BatchTarget::new(
            &self.base_url,
            self.key.clone(),
            &self.model,
            self.dimensions,
        ))
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn url_var(&self) -> &'static str {
        "OPENAI_BASE_URL"
    }

    fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    fn request(
        &self,
        http: &reqwest::Client,
        key: Option<&Secret>,
        inputs: &[&str],
    ) -> reqwest::RequestBuilder {
        let mut req = http.post(&self.url).json(&body(
            Some(&self.model),
            &self.model,
            self.dimensions,
            inputs,
            true,
        ));
        if let Some(key) = key {
            req = req.bearer_auth(key.expose());
        }
        req
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> EmbedError {
        classify(status, headers, body, &NAMES)
    }

    fn rate_signals(&self, headers: &HeaderMap) -> RateSignals {
        rate_signals(headers)
    }
}

/// The request body. `model` is left out where the URL names the model
/// (Azure's deployment). ada-002 rejects `dimensions`; the text-embedding-3
/// models take it, and base64 vectors are a quarter the size of JSON floats.
pub(super) fn body(
    model: Option<&str>,
    family: &str,
    dimensions: u32,
    inputs: &[&str],
    base64: bool,
) -> Value {
    let mut body = json!({ "input": inputs });
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    if base64 {
        body["encoding_format"] = json!("base64");
    }
    if family.starts_with("text-embedding-3") {
        body["dimensions"] = json!(dimensions);
    }
    body
}

/// `x-ratelimit-{limit,remaining}-{tokens,requests}`, as OpenAI and Azure send them.
pub(super) fn rate_signals(headers: &HeaderMap) -> RateSignals {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    RateSignals {
        limit_tokens: number("x-ratelimit-limit-tokens"),
        remaining_tokens: number("x-ratelimit-remaining-tokens"),
        limit_requests: number("x-ratelimit-limit-requests"),
        remaining_requests: number("x-ratelimit-remaining-requests"),
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
    error: Option<ApiError>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ApiError {
    Detail(ApiErrorDetail),
    Flat(String),
}

#[derive(Deserialize, Default)]
struct ApiErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    param: Option<String>,
}

/// The vectors of an answer in input order, checked against what was asked.
pub(super) fn decode(
    bytes: &[u8],
    expected: usize,
    dimensions: u32,
) -> Result<Embeddings, EmbedError> {
    let parsed: ApiResponse = serde_json::from_slice(bytes).map_err(|e| EmbedError::Decode {
        reason: e.to_string(),
    })?;
    vectors_of(parsed, expected, dimensions)
}

/// The same, of an answer already parsed: a Batch API output line's body.
pub(super) fn decode_value(
    body: Value,
    expected: usize,
    dimensions: u32,
) -> Result<Embeddings, EmbedError> {
    let parsed: ApiResponse = serde_json::from_value(body).map_err(|e| EmbedError::Decode {
        reason: e.to_string(),
    })?;
    vectors_of(parsed, expected, dimensions)
}

fn vectors_of(
    parsed: ApiResponse,
    expected: usize,
    dimensions: u32,
) -> Result<Embeddings, EmbedError> {
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
        if v.len() != dimensions as usize {
            return Err(EmbedError::Decode {
                reason: format!(
                    "a vector has {} dimensions, expected {} (BACKFILL_EMBEDDING_DIMENSIONS)",
                    v.len(),
                    dimensions
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

pub(super) fn decode_base64_f32(s: &str) -> Result<Vec<f32>, EmbedError> {
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

/// Reads an error answer in OpenAI's shape (`{"error": {"message", "code",
/// "param"}}`), which Azure and most compatible servers share; a flat
/// `{"error": "...", "code": 422}` (vLLM, TEI) reads as its message.
pub(super) fn classify(status: u16, headers: &HeaderMap, body: &[u8], names: &Names) -> EmbedError {
    let parsed: ApiErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let detail = match parsed.error {
        Some(ApiError::Detail(d)) => d,
        Some(ApiError::Flat(message)) => ApiErrorDetail {
            message: Some(message),
            ..Default::default()
        },
        None => ApiErrorDetail::default(),
    };
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
            key_var: names.key_var,
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
        _ => EmbedError::InvalidRequest {
            status,
            message,
            settings: names.settings,
        },
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

#[cfg(test)]
mod tests;
