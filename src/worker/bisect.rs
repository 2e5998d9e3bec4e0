//! One request group's embedding, bisected on a rejection down to the inputs
//! that cause it, so only those documents fail and the rest are embedded.

use super::Worker;
use crate::embedder::{tokens, Calls, EmbedError};
use crate::ids::DocumentId;
use crate::store::FailedDocument;
use std::ops::Range;
use tokio::time::Instant;

impl Worker {
    /// Embeds one request's worth of inputs. A 400 for several inputs is
    /// bisected down to the inputs that cause it; only those documents fail.
    pub(super) async fn embed_group(
        &self,
        prepared: &[(DocumentId, tokens::Prepared<'_>)],
        group: Range<usize>,
        deadline: Option<Instant>,
        calls: &Calls,
    ) -> Result<GroupResult, EmbedError> {
        let mut out = GroupResult::default();
        let mut todo = vec![group];
        while let Some(range) = todo.pop() {
            let inputs: Vec<&str> = prepared[range.clone()]
                .iter()
                .map(|(_, p)| p.text.as_ref())
                .collect();
            let tokens: u64 = prepared[range.clone()]
                .iter()
                .map(|(_, p)| p.tokens as u64)
                .sum();
            out.requests += 1;
            match self.embedder.embed(&inputs, tokens, deadline, calls).await {
                Ok(e) => {
                    out.tokens += e.prompt_tokens;
                    out.vectors.extend(range.zip(e.vectors));
                }
                Err(EmbedError::BadRequest { message, .. }) if range.len() == 1 => {
                    let id = prepared[range.start].0;
                    tracing::warn!(document_id = id.0, reason = %message, "document rejected by the embeddings API");
                    out.failures.push(FailedDocument {
                        id,
                        reason: message,
                    });
                }
                Err(EmbedError::BadRequest { .. }) => {
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// What one request group produced: vectors by input index, rejected
/// documents, and what it cost.
#[derive(Default)]
pub(super) struct GroupResult {
    pub vectors: Vec<(usize, Vec<f32>)>,
    pub failures: Vec<FailedDocument>,
    pub tokens: u64,
    pub requests: usize,
}
