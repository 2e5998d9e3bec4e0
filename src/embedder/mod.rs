//! Embedding providers and the client that drives them.
//!
//! A [`Provider`] owns everything that varies between services: where and how
//! a request goes, how its answers and errors read, its limits, its tokenizer,
//! its prices and what its answers say of the rate limits. [`Embedder`] is the
//! same for all of them: the rate governor, the retries within the caller's
//! deadline, the decoding of OpenAI-shaped answers. To add a provider, write
//! one file here implementing [`Provider`] and give it a
//! `config::ProviderSettings` arm.

pub mod azure;
pub mod batching;
pub mod calls;
pub mod compatible;
pub mod openai;
pub mod tokens;

use crate::config::{ConfigError, EmbeddingConfig, ProviderSettings};
use crate::keys::Key;
use crate::rate::{Governor, RateSignals, TooLong};
use crate::retry::Backoff;
use crate::secret::Secret;
use crate::store::Mode;
pub use calls::{Calls, Tally};
pub use openai::BatchTarget;
use reqwest::header::HeaderMap;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokens::Tokenizer;
use tokio::time::Instant;

/// The most inputs any provider here takes in one request: the bound a
/// dispatch option is checked against before a provider is known.
pub const MAX_INPUTS_PER_REQUEST: usize = 2048;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EmbedError {
    #[error(
        "the embeddings API rejected {key_var} (HTTP 401): {message}. Set {key_var} to a valid key"
    )]
    InvalidKey {
        key_var: &'static str,
        message: String,
    },
    #[error("the embeddings API refused the request (HTTP 403): {message}. Check the key's project and model permissions")]
    Forbidden { message: String },
    #[error("embeddings quota exhausted (429 insufficient_quota): add credits or raise the budget, then `backfill redrive`")]
    QuotaExhausted { message: String },
    #[error("embeddings rate limit hit (429): {message}")]
    RateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A rejection of one or more inputs: bisecting the request finds them.
    #[error("the embeddings API rejected the input (HTTP {status}): {message}")]
    BadRequest { status: u16, message: String },
    /// A rejection of the request itself, whatever its inputs: every batch
    /// would get it, so it fails the batch rather than its documents.
    #[error("the embeddings API refused the request (HTTP {status}): {message}. Check {settings}, then `backfill retry-failed RUN_ID`")]
    InvalidRequest {
        status: u16,
        message: String,
        settings: &'static str,
    },
    #[error("embeddings server error (HTTP {status}): {message}")]
    Server {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot reach the embeddings API at {url}: {reason}. Check {url_var} and the network")]
    Transport {
        url: String,
        url_var: &'static str,
        reason: String,
    },
    #[error("the embeddings API answered in a form this version cannot read: {reason}")]
    Decode { reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
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

    /// The API refused the key: a rotated one may be in its secret by now.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            EmbedError::InvalidKey { .. } | EmbedError::Forbidden { .. }
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

/// What one request may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub inputs_per_request: usize,
    pub tokens_per_request: usize,
    pub tokens_per_input: usize,
}

/// What varies between embedding services.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Names the service in logs and in a run's parameters.
    fn name(&self) -> &'static str;
    fn model(&self) -> &str;
    fn dimensions(&self) -> u32;
    fn limits(&self) -> Limits;
    fn tokenizer(&self) -> Tokenizer;
    /// USD per million input tokens in `mode`; `None` where the provider
    /// has no such mode.
    fn price_per_million_tokens(&self, mode: Mode) -> Option<f64>;
    /// Where requests go, for errors and logs, and the setting that says so.
    fn url(&self) -> &str;
    fn url_var(&self) -> &'static str;
    /// The key requests carry, where the service is given one.
    fn key(&self) -> Option<&Key>;
    /// The request for `inputs`, authenticated with `key` (the current value
    /// of [`Provider::key`]); the caller sends it.
    fn request(
        &self,
        http: &reqwest::Client,
        key: Option<&Secret>,
        inputs: &[&str],
    ) -> reqwest::RequestBuilder;
    /// What an answer other than 200 means.
    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> EmbedError;
    /// What an answer's headers say of the rate limits.
    fn rate_signals(&self, headers: &HeaderMap) -> RateSignals;

    /// The provider's Batch API, where it has one.
    fn batch_target(&self) -> Option<BatchTarget> {
        None
    }

    fn cost_usd(&self, tokens: u64, mode: Mode) -> f64 {
        tokens as f64 * self.price_per_million_tokens(mode).unwrap_or(0.0) / 1_000_000.0
    }
}

/// The provider the settings name. The key is not needed to build one: a
/// dispatch uses its limits, tokenizer and prices only.
pub fn provider(cfg: &EmbeddingConfig) -> Arc<dyn Provider> {
    match &cfg.provider {
        ProviderSettings::OpenAi { .. } => Arc::new(openai::OpenAi::new(cfg)),
        ProviderSettings::Azure { .. } => Arc::new(azure::Azure::new(cfg)),
        ProviderSettings::Compatible { .. } => Arc::new(compatible::Compatible::new(cfg)),
    }
}

#[derive(Clone)]
pub struct Embedder {
    http: reqwest::Client,
    provider: Arc<dyn Provider>,
    backoff: Backoff,
    governor: Arc<Governor>,
    max_concurrent_requests: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// A client for the configured provider; fails when its key is missing.
    pub fn new(cfg: &EmbeddingConfig) -> Result<Self, EmbedError> {
        cfg.require_key()?;
        let provider = provider(cfg);
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("embed-backfill/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EmbedError::Transport {
                url: provider.url().to_string(),
                url_var: provider.url_var(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            provider,
            backoff: Backoff::default(),
            governor: Arc::new(Governor::new(cfg.budget, cfg.max_concurrent_requests)),
            max_concurrent_requests: cfg.max_concurrent_requests,
        })
    }

    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// Requests this process keeps in flight at most.
    pub fn max_concurrent_requests(&self) -> usize {
        self.max_concurrent_requests
    }

    /// Embeds `inputs` (`tokens` in all) when the rate governor allows,
    /// retrying transient failures until `deadline` (less a margin) would be
    /// passed. Permanent errors return at once. Every request and wait is
    /// added to `calls`.
    pub async fn embed(
        &self,
        inputs: &[&str],
        tokens: u64,
        deadline: Option<Instant>,
        calls: &Calls,
    ) -> Result<Embeddings, EmbedError> {
        let margin = Duration::from_secs(5);
        let mut attempt = 1;
        loop {
            let asked = Instant::now();
            let permit = self
                .governor
                .acquire(tokens, deadline.map(|d| d - margin))
                .await
                .map_err(|TooLong(wait)| EmbedError::RateLimited {
                    message: format!(
                        "the rate budget has no room for {tokens} tokens before the deadline"
                    ),
                    retry_after: Some(wait),
                });
            calls.waited(asked.elapsed());
            let permit = permit?;
            let result = self.send(inputs, calls).await;
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

    /// One request, no retries but one with a rotated key where the API
    /// refused the one used.
    async fn send(&self, inputs: &[&str], calls: &Calls) -> Result<Embeddings, EmbedError> {
        match self.provider.key() {
            Some(key) => {
                key.using(EmbedError::is_refusal, |key| async move {
                    self.send_with(inputs, Some(&key), calls).await
                })
                .await
            }
            None => self.send_with(inputs, None, calls).await,
        }
    }

    /// One request with `key`; tells the governor what the answer said.
    async fn send_with(
        &self,
        inputs: &[&str],
        key: Option<&Secret>,
        calls: &Calls,
    ) -> Result<Embeddings, EmbedError> {
        let p = &self.provider;
        let transport = |e: reqwest::Error| {
            calls.unanswered();
            EmbedError::Transport {
                url: p.url().to_string(),
                url_var: p.url_var(),
                reason: describe(&e),
            }
        };
        let sent = Instant::now();
        let response = p
            .request(&self.http, key, inputs)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(transport)?;
        let took = sent.elapsed();
        let signals = p.rate_signals(&headers);
        if status != 200 {
            calls.answered(status, took, 0);
            let err = p.classify(status, &headers, &bytes);
            let limited = match &err {
                EmbedError::RateLimited { retry_after, .. } => {
                    Some(retry_after.unwrap_or(Duration::from_secs(1)))
                }
                _ => None,
            };
            self.governor.observe(signals, limited);
            return Err(err);
        }
        self.governor.observe(signals, None);
        let decoded = openai::decode(&bytes, inputs.len(), p.dimensions());
        // A 200 is billed even when its body cannot be read.
        let billed = decoded.as_ref().map_or(0, |e| e.prompt_tokens);
        calls.answered(status, took, billed);
        decoded
    }
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
