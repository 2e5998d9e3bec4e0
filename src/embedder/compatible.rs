//! Any server that speaks OpenAI's `/v1/embeddings` (vLLM, Ollama, LiteLLM,
//! TEI, ...): its limits and price come from configuration, since such
//! servers say nothing of them, and vectors are asked for as JSON floats,
//! which all of them answer.

use super::openai::{self, Names};
use super::tokens::Tokenizer;
use super::{EmbedError, Limits, Provider};
use crate::config::{EmbeddingConfig, ProviderSettings};
use crate::keys::Key;
use crate::rate::RateSignals;
use crate::secret::Secret;
use crate::store::Mode;
use reqwest::header::HeaderMap;

const NAMES: Names = Names {
    key_var: "OPENAI_API_KEY",
    settings: "OPENAI_EMBEDDING_MODEL, BACKFILL_EMBEDDING_DIMENSIONS, OPENAI_BASE_URL and EMBEDDING_MAX_INPUTS / EMBEDDING_MAX_INPUT_TOKENS",
};

#[derive(Debug)]
pub struct Compatible {
    url: String,
    key: Option<Key>,
    model: String,
    dimensions: u32,
    limits: Limits,
    price_per_million_tokens: f64,
}

impl Compatible {
    pub fn new(cfg: &EmbeddingConfig) -> Self {
        let (url, key, limits, price) = match &cfg.provider {
            ProviderSettings::Compatible {
                base_url,
                api_key,
                limits,
                price_per_million_tokens,
            } => (
                format!("{base_url}/embeddings"),
                api_key.clone(),
                *limits,
                *price_per_million_tokens,
            ),
            _ => (String::new(), None, openai::LIMITS, 0.0),
        };
        Self {
            url,
            key,
            model: cfg.model.clone(),
            dimensions: cfg.dimensions,
            limits,
            price_per_million_tokens: price,
        }
    }
}

impl Provider for Compatible {
    fn name(&self) -> &'static str {
        "compatible"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> u32 {
        self.dimensions
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    /// The server's own tokenizer is unknown here; cl100k counts close to
    /// most, and the input limit is configured with room to spare.
    fn tokenizer(&self) -> Tokenizer {
        Tokenizer::Cl100k
    }

    /// Such servers offer no Batch API here.
    fn price_per_million_tokens(&self, mode: Mode) -> Option<f64> {
        (mode == Mode::Direct).then_some(self.price_per_million_tokens)
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
        // No `dimensions`: most such servers reject it.
        let body = openai::body(Some(&self.model), "", self.dimensions, inputs, false);
        let mut req = http.post(&self.url).json(&body);
        if let Some(key) = key {
            req = req.bearer_auth(key.expose());
        }
        req
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> EmbedError {
        openai::classify(status, headers, body, &NAMES)
    }

    /// LiteLLM passes OpenAI's rate-limit headers on; the others send none,
    /// and the governor then paces by the configured budget alone.
    fn rate_signals(&self, headers: &HeaderMap) -> RateSignals {
        openai::rate_signals(headers)
    }
}
