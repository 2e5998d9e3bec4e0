//! The documents the functions read: `backfill_page_documents`,
//! `backfill_fetch_documents` and `backfill_coverage`, which change nothing.

use super::provenance::{hex, text_sha256, Want};
use super::state::{after, raise, State};
use crate::ids::{DocumentId, RunId};
use crate::store::model::*;
use crate::store::vectors::*;
use crate::store::StoreError;

const PAGE: &str = "backfill_page_documents";
const FETCH: &str = "backfill_fetch_documents";
const COVERAGE: &str = "backfill_coverage";

/// Rows a `stale` or `all` page reads at least, needed or not.
const PAGE_SCAN_ROWS: usize = 5000;

impl State {
    /// `missing` scans the rows without a vector, `max_rows + 1` of them;
    /// `stale` and `all` scan the filter's rows, at least
    /// [`PAGE_SCAN_ROWS`], and keep those that need a vector, so a page can
    /// be empty with `more` and a `last_id` further on.
    pub(super) fn page(
        &self,
        selection: &Selection,
        archive: Option<&str>,
        after_id: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<Page, StoreError> {
        let want = Want::of(PAGE, selection)?;
        if max_rows < 1 {
            return Err(raise(PAGE, "22023", "p_max_rows must be at least 1".into()));
        }
        let max = max_rows as usize;
        let missing = want.select == Select::Missing;
        let cap = if missing {
            max + 1
        } else {
            (max + 1).max(PAGE_SCAN_ROWS)
        };
        let scanned: Vec<(PagedDocument, bool)> = self
            .documents
            .range(after(after_id))
            .filter(|(_, row)| row.in_archive(archive) && (!missing || row.embedding.is_none()))
            .take(cap)
            .map(|(id, row)| {
                let paged = PagedDocument {
                    id: *id,
                    bytes: row.content.as_ref().map_or(0, |c| c.len() as u64),
                };
                (paged, want.needs(row, self.provenance.get(id), None))
            })
            .collect();
        let needed: Vec<PagedDocument> = scanned
            .iter()
            .filter(|(_, needs)| *needs)
            .map(|(paged, _)| *paged)
            .collect();
        let last_id = if needed.len() > max {
            Some(needed[max - 1].id)
        } else {
            scanned.last().map(|(paged, _)| paged.id)
        };
        Ok(Page {
            more: needed.len() > max || scanned.len() == cap,
            rows: needed.into_iter().take(max).collect(),
            last_id,
        })
    }

    pub(super) fn fetch_missing(
        &self,
        selection: &Selection,
        run: Option<RunId>,
        ids: &[DocumentId],
        after_id: Option<DocumentId>,
        max_chars: Option<usize>,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError> {
        let want = Want::of(FETCH, selection)?;
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
            let Some(row) = self
                .documents
                .get(&id)
                .filter(|row| want.needs(row, self.provenance.get(&id), run))
            else {
                continue;
            };
            if !documents.is_empty() && bytes >= max_bytes {
                return Ok(Fetched {
                    documents,
                    more: true,
                });
            }
            let content: Option<String> = row.content.as_ref().map(|c| match max_chars {
                Some(n) => c.chars().take(n).collect(),
                None => c.clone(),
            });
            bytes += content.as_ref().map_or(0, |c| c.len() as u64);
            documents.push(Document {
                id,
                content,
                sha256: Some(hex(&text_sha256(row.content.as_deref()))),
            });
        }
        Ok(Fetched {
            documents,
            more: false,
        })
    }

    /// Each row counted in one state against `spec`: without a vector (of
    /// which empty), unknown, stale_model, stale_text or current.
    pub(super) fn coverage_step(
        &self,
        spec: &VectorSpec,
        archive: Option<&str>,
        after_id: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<CoverageStep, StoreError> {
        let want = Want::new(COVERAGE, Select::Missing, spec)?;
        if max_rows < 1 {
            return Err(raise(
                COVERAGE,
                "22023",
                "p_max_rows must be at least 1".into(),
            ));
        }
        let mut step = CoverageStep {
            counts: Coverage::default(),
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
            step.counts.total += 1;
            if row.embedding.is_none() {
                step.counts.without_embeddings += 1;
                let blank = row
                    .content
                    .as_deref()
                    .is_none_or(|c| c.trim_matches([' ', '\t', '\r', '\n']).is_empty());
                step.counts.empty_content += u64::from(blank);
                continue;
            }
            step.counts.with_embeddings += 1;
            let state = match self.provenance.get(id) {
                None => &mut step.counts.unknown,
                Some(p) if !want.same_spec(p) => &mut step.counts.stale_model,
                Some(p) if p.text_sha256 != text_sha256(row.content.as_deref()) => {
                    &mut step.counts.stale_text
                }
                Some(_) => &mut step.counts.current,
            };
            *state += 1;
        }
        step.more = scanned == u64::from(max_rows);
        Ok(step)
    }
}
