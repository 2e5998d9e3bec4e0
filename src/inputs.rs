//! A batch's texts as the API's inputs: one per distinct text, cut to the
//! input limit, or one per chunk of a text that is averaged; and back from
//! the inputs' vectors to one vector per document, a text's copies too. The
//! way back is a [`Plan`], which holds no text: batch mode stores it with
//! the batch, and the vectors that come back a day later find their rows
//! and hashes in it.

use crate::embedder::tokens::{self, Prepared, Tokenizer};
use crate::ids::DocumentId;
use crate::store::{Document, LongText, VectorRow, VectorSource};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ops::Range;

/// A document's part of the inputs, and the hash its write must match; a
/// second document of the same text has no inputs and takes the first's
/// vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Source {
    id: DocumentId,
    sha256: String,
    inputs: Range<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    copy_of: Option<usize>,
}

/// Which inputs make which document's vector, and each input's tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    sources: Vec<Source>,
    tokens: Vec<usize>,
}

/// One document's vector, made from its inputs' vectors.
pub struct Combined {
    id: DocumentId,
    embedding: Vec<f32>,
    sha256: String,
    chunks: u32,
    tokens: u64,
    source: VectorSource,
}

impl Combined {
    pub fn row(&self) -> VectorRow<'_> {
        VectorRow {
            id: self.id,
            embedding: &self.embedding,
            sha256: &self.sha256,
            chunks: self.chunks,
            tokens: self.tokens,
            source: self.source,
        }
    }
}

pub struct Inputs {
    tokenizer: Tokenizer,
    limit: usize,
    long_text: LongText,
    /// Every input, with the document it belongs to; a document's inputs
    /// are consecutive.
    pub inputs: Vec<(DocumentId, Prepared<'static>)>,
    plan: Plan,
    /// The first source of each text, by its hash.
    by_text: HashMap<String, usize>,
}

impl Inputs {
    pub fn new(tokenizer: Tokenizer, limit: usize, long_text: LongText) -> Self {
        Self {
            tokenizer,
            limit,
            long_text,
            inputs: Vec::new(),
            plan: Plan::default(),
            by_text: HashMap::new(),
        }
    }

    /// What the store sends of each text: all of an averaged one.
    pub fn prefix_chars(&self) -> Option<usize> {
        match self.long_text {
            LongText::Truncate => Some(self.tokenizer.prefix_chars(self.limit)),
            LongText::Average => None,
        }
    }

    /// Takes a fetched document; a blank text makes no input, nor does a
    /// text the batch already holds.
    pub fn add(&mut self, d: Document) {
        let Some(text) = d.content.filter(|t| !tokens::is_blank(t)) else {
            return;
        };
        let sha256 = d.sha256.unwrap_or_default();
        if let Some(&first) = self.by_text.get(&sha256).filter(|_| !sha256.is_empty()) {
            let at = self.inputs.len();
            self.plan.sources.push(Source {
                id: d.id,
                sha256,
                inputs: at..at,
                copy_of: Some(first),
            });
            return;
        }
        self.by_text.insert(sha256.clone(), self.plan.sources.len());
        let start = self.inputs.len();
        match self.long_text {
            LongText::Truncate => self
                .inputs
                .push((d.id, self.tokenizer.truncate_owned(text, self.limit))),
            LongText::Average => {
                for c in self.tokenizer.chunks(&text, self.limit) {
                    let chunk = Prepared {
                        text: Cow::Owned(c.text.into_owned()),
                        tokens: c.tokens,
                        truncated: c.truncated,
                    };
                    self.inputs.push((d.id, chunk));
                }
            }
        }
        self.plan
            .tokens
            .extend(self.inputs[start..].iter().map(|(_, p)| p.tokens));
        self.plan.sources.push(Source {
            id: d.id,
            sha256,
            inputs: start..self.inputs.len(),
            copy_of: None,
        });
    }

    /// Texts cut to the input limit, which `average` never does.
    pub fn truncated(&self) -> usize {
        match self.long_text {
            LongText::Truncate => self.inputs.iter().filter(|(_, p)| p.truncated).count(),
            LongText::Average => 0,
        }
    }

    /// Texts embedded in more than one chunk.
    pub fn averaged(&self) -> usize {
        self.plan.averaged()
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn combine(
        &self,
        vectors: &[Option<Vec<f32>>],
        failed: &HashSet<DocumentId>,
    ) -> (Vec<Combined>, Vec<(DocumentId, DocumentId)>) {
        self.plan.combine(vectors, failed)
    }
}

impl Plan {
    /// Inputs in all.
    pub fn inputs(&self) -> usize {
        self.tokens.len()
    }

    /// Each document's vector: its one input's, or the token-weighted mean
    /// of its chunks', or for a copy its text's first document's. A
    /// document with a failed input gets none, and neither do its copies:
    /// those are returned with the document they copy, to fail alike.
    pub fn combine(
        &self,
        vectors: &[Option<Vec<f32>>],
        failed: &HashSet<DocumentId>,
    ) -> (Vec<Combined>, Vec<(DocumentId, DocumentId)>) {
        let made: Vec<Option<Combined>> = self
            .sources
            .iter()
            .map(|s| {
                if s.copy_of.is_some() || failed.contains(&s.id) {
                    return None;
                }
                let parts: Option<Vec<(&[f32], usize)>> = s
                    .inputs
                    .clone()
                    .map(|i| Some((vectors[i].as_deref()?, self.tokens[i])))
                    .collect();
                let parts = parts?;
                Some(Combined {
                    id: s.id,
                    embedding: tokens::weighted_mean(&parts),
                    sha256: s.sha256.clone(),
                    chunks: parts.len() as u32,
                    tokens: parts.iter().map(|(_, t)| *t as u64).sum(),
                    source: VectorSource::Api,
                })
            })
            .collect();
        let mut failed_copies = Vec::new();
        let copies: Vec<Combined> = self
            .sources
            .iter()
            .filter_map(|s| {
                let first = s.copy_of?;
                let Some(original) = &made[first] else {
                    failed_copies.push((s.id, self.sources[first].id));
                    return None;
                };
                Some(Combined {
                    id: s.id,
                    embedding: original.embedding.clone(),
                    sha256: s.sha256.clone(),
                    chunks: original.chunks,
                    tokens: original.tokens,
                    source: VectorSource::Copy,
                })
            })
            .collect();
        let mut all: Vec<Combined> = made.into_iter().flatten().chain(copies).collect();
        all.sort_by_key(|c| c.id);
        (all, failed_copies)
    }

    fn averaged(&self) -> usize {
        self.sources.iter().filter(|s| s.inputs.len() > 1).count()
    }
}
