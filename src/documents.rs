//! The documents table: paging ids still missing a vector, fetching texts,
//! writing vectors (through the status RPC), and the coverage check.
//!
//! Every call returns one JSON value with its own cursor or "more" flag, and
//! each does a bounded amount of work: Supabase cuts any longer row set at its
//! "Max rows" setting and stops any statement at its timeout.

use crate::ids::DocumentId;
use crate::supabase::{Rest, RestError};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Text one fetch returns at most (the last document may pass it): a batch of
/// large texts comes in several answers, so the worker's memory stays flat.
pub const FETCH_MAX_BYTES: u64 = 8 << 20;
/// Rows one coverage step reads: a bounded scan, whatever the table's size.
pub const COVERAGE_STEP_ROWS: u32 = 100_000;

/// Where the documents live; names are configuration and travel to the SQL
/// functions, which quote them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub schema: String,
    pub table: String,
    pub id: String,
    pub content: String,
    pub archive: String,
    pub embedding: String,
}

impl Default for Target {
    fn default() -> Self {
        Self {
            schema: "public".into(),
            table: "lovdata_documents".into(),
            id: "id".into(),
            content: "content".into(),
            archive: "archive".into(),
            embedding: "embedding".into(),
        }
    }
}

/// One row of a keyset page: the id and the stored size of its text.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct PagedDocument {
    pub id: DocumentId,
    pub bytes: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Page {
    pub rows: Vec<PagedDocument>,
    /// Rows lie beyond this page.
    pub more: bool,
}

/// A document still missing a vector, its text cut to the prefix that holds
/// the provider's input limit.
#[derive(Clone, Debug, Deserialize)]
pub struct Document {
    pub id: DocumentId,
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Deserialize)]
struct Fetched {
    documents: Vec<Document>,
    more: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub total: u64,
    pub with_embeddings: u64,
    pub without_embeddings: u64,
    /// Rows without a vector whose text is empty: they cannot get one.
    pub empty_content: u64,
    pub coverage_percent: f64,
}

#[derive(Deserialize)]
struct CoverageStep {
    total: u64,
    with_embeddings: u64,
    without_embeddings: u64,
    empty_content: u64,
    last_id: Option<DocumentId>,
    more: bool,
}

#[derive(Clone, Debug)]
pub struct DocumentStore {
    rest: Rest,
    target: Target,
}

impl DocumentStore {
    pub fn new(rest: Rest, target: Target) -> Self {
        Self { rest, target }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Up to `max_rows` documents after `after` (keyset), lacking a vector and, when
    /// `archive` is given, in exactly that archive.
    pub async fn page(
        &self,
        archive: Option<&str>,
        after: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<Page, RestError> {
        self.rest
            .rpc(
                "backfill_page_documents",
                &json!({
                    "p_target": self.target,
                    "p_archive": archive,
                    "p_after_id": after,
                    "p_max_rows": max_rows,
                }),
            )
            .await
    }

    /// Hands `each` those of `ids` that still lack a vector, with their texts,
    /// in id order, fetching them a bounded answer at a time.
    /// Each text comes cut to `max_chars` characters: the provider's
    /// tokenizer says how many always hold its input limit.
    pub async fn for_each_missing(
        &self,
        ids: &[DocumentId],
        max_chars: usize,
        mut each: impl FnMut(Document),
    ) -> Result<(), RestError> {
        let mut after: Option<DocumentId> = None;
        loop {
            let page: Fetched = self
                .rest
                .rpc(
                    "backfill_fetch_documents",
                    &json!({
                        "p_target": self.target,
                        "p_ids": ids,
                        "p_after_id": after,
                        "p_max_chars": max_chars,
                        "p_max_bytes": FETCH_MAX_BYTES,
                    }),
                )
                .await?;
            after = page.documents.last().map(|d| d.id);
            page.documents.into_iter().for_each(&mut each);
            if !page.more || after.is_none() {
                return Ok(());
            }
        }
    }

    /// The guide's coverage check, in steps of `COVERAGE_STEP_ROWS` rows.
    pub async fn coverage(&self, archive: Option<&str>) -> Result<Coverage, RestError> {
        let mut c = Coverage {
            total: 0,
            with_embeddings: 0,
            without_embeddings: 0,
            empty_content: 0,
            coverage_percent: 100.0,
        };
        let mut after: Option<DocumentId> = None;
        loop {
            let step: CoverageStep = self
                .rest
                .rpc(
                    "backfill_coverage",
                    &json!({
                        "p_target": self.target,
                        "p_archive": archive,
                        "p_after_id": after,
                        "p_max_rows": COVERAGE_STEP_ROWS,
                    }),
                )
                .await?;
            c.total += step.total;
            c.with_embeddings += step.with_embeddings;
            c.without_embeddings += step.without_embeddings;
            c.empty_content += step.empty_content;
            if !step.more || step.last_id.is_none() {
                break;
            }
            after = step.last_id;
        }
        if c.total > 0 {
            c.coverage_percent =
                (c.with_embeddings as f64 * 10_000.0 / c.total as f64).round() / 100.0;
        }
        Ok(c)
    }
}
