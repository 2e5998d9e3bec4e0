//! The token estimate of a real dispatch, without reading every text.

use crate::embedder::tokens::{self, Tokenizer};
use crate::ids::DocumentId;
use crate::store::{LongText, PagedDocument, Selection, Store, StoreError};
use std::collections::HashMap;

/// How the provider counts a text as the worker sends it: none when blank,
/// at most the input limit when truncated, every chunk when averaged.
#[derive(Clone, Copy, Debug)]
pub(super) struct TokenCount {
    pub tokenizer: Tokenizer,
    pub limit: usize,
    pub long_text: LongText,
}

impl TokenCount {
    pub fn of(self, text: &Option<String>) -> u64 {
        match (text.as_deref(), self.long_text) {
            (Some(t), _) if tokens::is_blank(t) => 0,
            (Some(t), LongText::Truncate) => self.tokenizer.truncate(t, self.limit).tokens as u64,
            (Some(t), LongText::Average) => self
                .tokenizer
                .chunks(t, self.limit)
                .iter()
                .map(|c| c.tokens as u64)
                .sum(),
            (None, _) => 0,
        }
    }

    /// What the database sends of each text: all of it when it is averaged.
    pub fn prefix_chars(self) -> Option<usize> {
        match self.long_text {
            LongText::Truncate => Some(self.tokenizer.prefix_chars(self.limit)),
            LongText::Average => None,
        }
    }

    /// The most tokens one text can cost.
    fn cap(self) -> u64 {
        match self.long_text {
            LongText::Truncate => self.limit as u64,
            LongText::Average => u64::MAX,
        }
    }
}

/// Estimates a real dispatch's tokens without reading every text: the first
/// page's first documents are counted exactly with the provider's tokenizer,
/// and their tokens per byte applied to the stored sizes of the rest. (A dry
/// run counts every text.)
#[derive(Clone, Debug)]
pub(super) struct TokenEstimator {
    count: TokenCount,
    tokens_per_byte: f64,
    exact: HashMap<DocumentId, u64>,
}

/// Texts the estimator reads: enough for a steady ratio, bounded whatever the
/// batch size.
const CALIBRATION_DOCS: usize = 1000;

impl TokenEstimator {
    /// Counts the texts of the first page's first documents exactly, for the
    /// estimate of the rest.
    pub(super) async fn calibrate(
        store: &dyn Store,
        selection: &Selection,
        count: TokenCount,
        page: &[PagedDocument],
    ) -> Result<Self, StoreError> {
        let sample: Vec<DocumentId> = page.iter().take(CALIBRATION_DOCS).map(|d| d.id).collect();
        let mut exact = HashMap::with_capacity(sample.len());
        let (mut tokens, mut bytes) = (0u64, 0u64);
        store
            .for_each_missing(selection, None, &sample, count.prefix_chars(), |d| {
                let n = count.of(&d.content);
                // A text cut at the input limit says nothing about tokens per byte.
                if n > 0 && n < count.cap() {
                    tokens += n;
                    bytes += d.content.as_deref().map_or(0, |t| t.len() as u64);
                }
                exact.insert(d.id, n);
            })
            .await?;
        Ok(Self {
            count,
            tokens_per_byte: if bytes == 0 {
                TokenEstimator::FALLBACK
            } else {
                tokens as f64 / bytes as f64
            },
            exact,
        })
    }

    /// The usual rule of thumb (4 characters a token) for ASCII text, when
    /// the first page has no text to measure.
    const FALLBACK: f64 = 0.25;

    pub fn estimate(&self, doc: &PagedDocument) -> u64 {
        match self.exact.get(&doc.id) {
            Some(&n) => n,
            None => ((doc.bytes as f64 * self.tokens_per_byte).ceil() as u64).min(self.count.cap()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedder;
    use crate::embedder::tokens;
    use std::collections::HashMap;

    #[test]
    fn estimates_from_the_samples_ratio() {
        let text = "Kommunen skal behandle søknaden innen fire uker. ".repeat(20);
        let exact = tokens::count(&text) as u64;
        let count = TokenCount {
            tokenizer: Tokenizer::Cl100k,
            limit: embedder::openai::LIMITS.tokens_per_input,
            long_text: LongText::Truncate,
        };
        assert_eq!(count.of(&Some(text.clone())), exact);
        assert_eq!(count.of(&Some("  ".into())), 0);
        assert_eq!(count.of(&None), 0);
        let e = TokenEstimator {
            count,
            tokens_per_byte: exact as f64 / text.len() as f64,
            exact: HashMap::from([(DocumentId(1), exact)]),
        };
        let doc = |id, bytes| PagedDocument {
            id: DocumentId(id),
            bytes,
        };
        assert_eq!(e.estimate(&doc(1, 1)), exact);
        let later = e.estimate(&doc(3, text.len() as u64 * 2));
        assert!(later.abs_diff(exact * 2) <= 1, "{later} vs {}", exact * 2);
        assert_eq!(
            e.estimate(&doc(4, 10_000_000)),
            embedder::openai::LIMITS.tokens_per_input as u64
        );
        assert_eq!(e.estimate(&doc(5, 0)), 0);
    }
}
