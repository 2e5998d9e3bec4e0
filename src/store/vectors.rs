//! What a vector is made with and from: the run's selection (which rows,
//! which model, dimensions, long-text policy and mode), the vectors a write
//! carries, and the coverage of a table by the state of its vectors.

use crate::ids::DocumentId;
use serde::{Deserialize, Serialize};

/// Which rows a run embeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// Rows without a vector: the first backfill.
    #[default]
    Missing,
    /// Those, and rows whose vector was made from another text or with
    /// another model, dimensions or long-text policy.
    Stale,
    /// Every row, as for a new model.
    All,
}

/// What becomes of a text longer than the model's input limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongText {
    /// Its first tokens, up to the limit, are embedded.
    #[default]
    Truncate,
    /// Every chunk is embedded and the vectors averaged, weighted by tokens.
    Average,
}

/// How a run's texts reach the provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A request per group of texts, answered at once, at the list price.
    #[default]
    Direct,
    /// Jobs through the provider's Batch API: half the price, a separate
    /// quota, answered within a day.
    Batch,
}

macro_rules! named_values {
    ($ty:ty, $what:literal, $($variant:path => $name:literal),+) => {
        impl $ty {
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($variant),)+
                    other => Err(format!(
                        "{} must be one of {}, not {other:?}",
                        $what,
                        Self::NAMES.join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_values!(Select, "select", Select::Missing => "missing", Select::Stale => "stale", Select::All => "all");
named_values!(LongText, "long_text", LongText::Truncate => "truncate", LongText::Average => "average");
named_values!(Mode, "mode", Mode::Direct => "direct", Mode::Batch => "batch");

/// What a vector is made with: a vector stays current while all of this,
/// and its text, are what they were when it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorSpec {
    pub model: String,
    pub dimensions: u32,
    #[serde(default)]
    pub long_text: LongText,
}

/// A run's rows and the vectors it wants, as the SQL functions read them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    pub select: Select,
    #[serde(flatten)]
    pub spec: VectorSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub total: u64,
    pub with_embeddings: u64,
    pub without_embeddings: u64,
    /// Rows without a vector whose text is empty: they cannot get one.
    pub empty_content: u64,
    /// Vectors without provenance, made elsewhere: `backfill adopt` records them.
    #[serde(default)]
    pub unknown: u64,
    /// Vectors made with another model, dimensions or long-text policy.
    #[serde(default)]
    pub stale_model: u64,
    /// Vectors made from a text the row no longer holds.
    #[serde(default)]
    pub stale_text: u64,
    #[serde(default)]
    pub current: u64,
    /// Of the whole; a step's answer has none.
    #[serde(default)]
    pub coverage_percent: f64,
}

impl Coverage {
    pub fn add(&mut self, step: &Coverage) {
        self.total += step.total;
        self.with_embeddings += step.with_embeddings;
        self.without_embeddings += step.without_embeddings;
        self.empty_content += step.empty_content;
        self.unknown += step.unknown;
        self.stale_model += step.stale_model;
        self.stale_text += step.stale_text;
        self.current += step.current;
        self.coverage_percent = if self.total == 0 {
            100.0
        } else {
            (self.with_embeddings as f64 * 10_000.0 / self.total as f64).round() / 100.0
        };
    }
}

/// The coverage of one bounded range of rows, and where the next begins.
#[derive(Clone, Debug, Deserialize)]
pub struct CoverageStep {
    #[serde(flatten)]
    pub counts: Coverage,
    pub last_id: Option<DocumentId>,
    pub more: bool,
}

/// What `backfill adopt` recorded over one bounded range of rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    pub adopted: u64,
    /// Vectors of other dimensions than the ones named: not adopted.
    pub wrong_dimensions: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AdoptStep {
    #[serde(flatten)]
    pub adoption: Adoption,
    pub last_id: Option<DocumentId>,
    pub more: bool,
}

/// A vector to write. The embedding travels as pgvector's text form inside a
/// JSON string, so the REST server and Postgres read one string instead of
/// 1,536 JSON numbers (which jsonb holds as `numeric`): the bench measured
/// parsing those numbers as most of their CPU. Each float is written in its
/// shortest form that reads back as the same `f32`.
#[derive(Clone, Debug, Serialize)]
pub struct VectorRow<'a> {
    pub id: DocumentId,
    #[serde(serialize_with = "vector_text")]
    pub embedding: &'a [f32],
    /// The [`Document::sha256`] of the text it was made from.
    pub sha256: &'a str,
    /// Inputs embedded for it, and their tokens: its provenance.
    pub chunks: u32,
    pub tokens: u64,
    pub source: VectorSource,
}

/// Where a written vector came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorSource {
    /// The API, for this text.
    Api,
    /// Another row of the same text, embedded once.
    Copy,
}

/// What copying vectors from rows of the same text did for a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Copied {
    pub copied: u64,
    /// The tokens those texts cost when they were embedded.
    pub tokens_saved: u64,
}

fn vector_text<S: serde::Serializer>(v: &&[f32], s: S) -> Result<S::Ok, S::Error> {
    use std::fmt::Write;
    let mut text = String::with_capacity(v.len() * 12 + 2);
    text.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(text, "{x}");
    }
    text.push(']');
    s.serialize_str(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_travel_as_text_that_reads_back_exactly() {
        let v = [0.1f32, -1.0, 3.0e-8, 0.33333334, f32::MIN_POSITIVE];
        let row = VectorRow {
            id: DocumentId(7),
            embedding: &v,
            sha256: "ab",
            chunks: 1,
            tokens: 3,
            source: VectorSource::Api,
        };
        let json = serde_json::to_value(&row).unwrap();
        let text = json["embedding"].as_str().unwrap();
        let back: Vec<f32> = text
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(back, v);
        assert_eq!(json["id"], 7);
    }
}
