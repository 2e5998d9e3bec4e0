//! OpenAI's Batch API as the provider offers it: files and batches under
//! the base URL and key of its embeddings, each line of an input file a
//! `/v1/embeddings` request with the same body as a direct one.

use super::{body, classify, decode_value, NAMES};
use crate::embedder::{EmbedError, Embeddings};
use crate::keys::Key;
use crate::secret::Secret;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// Where and how batch-mode jobs go.
#[derive(Clone, Debug)]
pub struct BatchTarget {
    base_url: String,
    key: Option<Key>,
    model: String,
    dimensions: u32,
}

impl BatchTarget {
    /// What one line of an input file asks: an embeddings request.
    pub const ENDPOINT: &'static str = "/v1/embeddings";
    /// Inputs a batch holds in all, over its lines.
    pub const MAX_INPUTS: usize = 50_000;
    /// Requests (lines) a batch holds.
    pub const MAX_LINES: usize = 50_000;
    /// Bytes of an input file.
    pub const MAX_FILE_BYTES: u64 = 200 * 1024 * 1024;
    pub const COMPLETION_WINDOW: &'static str = "24h";

    pub(super) fn new(base_url: &str, key: Option<Key>, model: &str, dimensions: u32) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            key,
            model: model.to_string(),
            dimensions,
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The URL of `path` (such as `/files`) under the API's base URL.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The provider's key, where it is given one.
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// A request to `path`; [`BatchTarget::authorize`] adds the key when it
    /// is sent, so a request refused for a rotated key can go again.
    pub fn request(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        http.request(method, self.url(path))
    }

    /// `req` with `key` as the provider takes it.
    pub fn authorize(
        &self,
        req: reqwest::RequestBuilder,
        key: Option<&Secret>,
    ) -> reqwest::RequestBuilder {
        match key {
            Some(key) => req.bearer_auth(key.expose()),
            None => req,
        }
    }

    /// The body of one line: the direct request's, vectors in base64 (a
    /// quarter of the output file's size in JSON floats).
    pub fn line_body(&self, inputs: &[&str]) -> Value {
        body(
            Some(&self.model),
            &self.model,
            self.dimensions,
            inputs,
            true,
        )
    }

    /// What an answer other than 200 means, of the API or of a line.
    pub fn classify(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> EmbedError {
        classify(status, headers, body, &NAMES)
    }

    /// The vectors of a completed line's response body.
    pub fn decode(&self, body: Value, expected: usize) -> Result<Embeddings, EmbedError> {
        decode_value(body, expected, self.dimensions)
    }
}
