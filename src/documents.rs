//! The documents table: paging ids still missing a vector, fetching texts,
//! writing vectors (through the status RPC), and the coverage check.

use crate::ids::DocumentId;
use crate::supabase::{Rest, RestError};
use serde::{Deserialize, Serialize};
use serde_json::json;

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

/// One row of a keyset page. `content` is present only when asked for.
#[derive(Clone, Debug, Deserialize)]
pub struct PagedDocument {
    pub id: DocumentId,
    pub chars: u32,
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Document {
    pub id: DocumentId,
    #[serde(default)]
    pub content: Option<String>,
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
        with_content: bool,
    ) -> Result<Vec<PagedDocument>, RestError> {
        self.rest
            .rpc(
                "backfill_page_documents",
                &json!({
                    "p_target": self.target,
                    "p_archive": archive,
                    "p_after_id": after,
                    "p_max_rows": max_rows,
                    "p_with_content": with_content,
                }),
            )
            .await
    }

    /// Those of `ids` that still lack a vector, with their texts.
    pub async fn fetch_missing(&self, ids: &[DocumentId]) -> Result<Vec<Document>, RestError> {
        self.rest
            .rpc(
                "backfill_fetch_documents",
                &json!({ "p_target": self.target, "p_ids": ids }),
            )
            .await
    }

    pub async fn coverage(&self, archive: Option<&str>) -> Result<Coverage, RestError> {
        self.rest
            .rpc(
                "backfill_coverage",
                &json!({ "p_target": self.target, "p_archive": archive }),
            )
            .await
    }
}
