//! The documents the functions read: `backfill_page_documents`,
//! `backfill_fetch_missing` and `backfill_coverage`, which change nothing.

use super::state::{after, raise, State};
use crate::ids::DocumentId;
use crate::store::model::*;
use crate::store::StoreError;

const PAGE: &str = "backfill_page_documents";
const COVERAGE: &str = "backfill_coverage";

impl State {
    pub(super) fn page(
        &self,
        archive: Option<&str>,
        after_id: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<Page, StoreError> {
        if max_rows < 1 {
            return Err(raise(PAGE, "22023", "p_max_rows must be at least 1".into()));
        }
        let mut missing = self
            .documents
            .range(after(after_id))
            .filter(|(_, row)| row.embedding.is_none() && row.in_archive(archive))
            .map(|(id, row)| PagedDocument {
                id: *id,
                bytes: row.content.as_ref().map_or(0, |c| c.len() as u64),
            });
        let rows: Vec<PagedDocument> = missing.by_ref().take(max_rows as usize).collect();
        let more = missing.next().is_some();
        Ok(Page { rows, more })
    }

    pub(super) fn fetch_missing(
        &self,
        ids: &[DocumentId],
        after_id: Option<DocumentId>,
        max_chars: usize,
        max_bytes: u64,
    ) -> Fetched {
        let mut wanted: Vec<DocumentId> = ids
            .iter()
            .copied()
            .filter(|id| after_id.is_none_or(|a| *id > a))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut documents = Vec::new();
        let mut bytes = 0u64;
        for id in wanted {
            let Some(row) = self.documents.get(&id).filter(|r| r.embedding.is_none()) else {
                continue;
            };
            if !documents.is_empty() && bytes >= max_bytes {
                return Fetched {
                    documents,
                    more: true,
                };
            }
            let content: Option<String> = row
                .content
                .as_ref()
                .map(|c| c.chars().take(max_chars).collect());
            bytes += content.as_ref().map_or(0, |c| c.len() as u64);
            documents.push(Document { id, content });
        }
        Fetched {
            documents,
            more: false,
        }
    }

    pub(super) fn coverage_step(
        &self,
        archive: Option<&str>,
        after_id: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<CoverageStep, StoreError> {
        if max_rows < 1 {
            return Err(raise(
                COVERAGE,
                "22023",
                "p_max_rows must be at least 1".into(),
            ));
        }
        let mut step = CoverageStep {
            total: 0,
            with_embeddings: 0,
            without_embeddings: 0,
            empty_content: 0,
            last_id: None,
            more: false,
        };
        let mut scanned = 0u64;
        // The range scanned is by id alone; the archive decides what counts.
        for (id, row) in self
            .documents
            .range(after(after_id))
            .take(max_rows as usize)
        {
            scanned += 1;
            step.last_id = Some(*id);
            if !row.in_archive(archive) {
                continue;
            }
            step.total += 1;
            if row.embedding.is_some() {
                step.with_embeddings += 1;
            } else {
                step.without_embeddings += 1;
                let blank = row
                    .content
                    .as_deref()
                    .is_none_or(|c| c.trim_matches([' ', '\t', '\r', '\n']).is_empty());
                step.empty_content += u64::from(blank);
            }
        }
        step.more = scanned == u64::from(max_rows);
        Ok(step)
    }
}
