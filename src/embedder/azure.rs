//! Azure OpenAI: OpenAI's models and wire format behind a deployment URL,
//! `{endpoint}/openai/deployments/{deployment}/embeddings?api-version=…`,
//! with the key in an `api-key` header.

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
    key_var: "AZURE_OPENAI_API_KEY",
    settings: "AZURE_OPENAI_DEPLOYMENT, OPENAI_API_VERSION, BACKFILL_EMBEDDING_DIMENSIONS and AZURE_OPENAI_ENDPOINT",
};

#[derive(Debug)]
pub struct Azure {
    url: String,
    key: Option<Key>,
    /// The model the deployment serves: it decides the tokenizer, the limits,
    /// the price and whether `dimensions` may be sent.
    model: String,
    dimensions: u32,
}

impl Azure {
    pub fn new(cfg: &EmbeddingConfig) -> Self {
        let (url, key) = match &cfg.provider {
            ProviderSettings::Azure {
                endpoint,
                api_key,
                api_version,
                deployment,
            } => (
                format!("{endpoint}/openai/deployments/{deployment}/embeddings?api-version={api_version}"),
                api_key.clone(),
            ),
            _ => (String::new(), None),
        };
        Self {
            url,
            key,
            model: cfg.model.clone(),
            dimensions: cfg.dimensions,
        }
    }
}

impl Provider for Azure {
    fn name(&self) -> &'static str {
        "azure"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> u32 {
        self.dimensions
    }

    fn limits(&self) -> Limits {
        openai::LIMITS
    }

    fn tokenizer(&self) -> Tokenizer {
        Tokenizer::Cl100k
    }

    /// Azure's batch deployments are another API; only direct mode here.
    fn price_per_million_tokens(&self, mode: Mode) -> Option<f64> {
        (mode == Mode::Direct).then(|| openai::price_per_million_tokens(&self.model, mode))
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn url_var(&self) -> &'static str {
        "AZURE_OPENAI_ENDPOINT"
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
        let body = openai::body(None, &self.model, self.dimensions, inputs, true);
        let mut req = http.post(&self.url).json(&body);
        if let Some(key) = key {
            req = req.header("api-key", key.expose());
        }
        req
    }

    fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> EmbedError {
        openai::classify(status, headers, body, &NAMES)
    }

    fn rate_signals(&self, headers: &HeaderMap) -> RateSignals {
        openai::rate_signals(headers)
    }
}
