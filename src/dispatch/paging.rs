//! The paging engine: keyset pages of the ids still missing a vector, made
//! into batches, recorded and queued (or, for a dry run, only counted), one
//! page at a time within the invocation's deadline.

use super::estimate::{TokenCount, TokenEstimator};
use super::{
    before_deadline, Costs, DispatchError, DispatchOptions, DispatchSummary, Dispatcher,
    PAGE_BATCHES, PAGE_MARGIN,
};
use crate::failpoint;
use crate::ids::{BatchSeq, DocumentId, RunId};
use crate::queue::Queue;
use crate::store::{BatchRef, LongText, NewBatch, Selection};
use tokio::time::Instant;

/// Where paging stands: the next id to page after, the next batch number and
/// how many documents the limit still allows.
pub(super) struct Cursor {
    pub after: Option<DocumentId>,
    pub seq: u32,
    pub remaining: Option<u64>,
}

impl Cursor {
    /// Where a new run starts: after `resume_from_id`, within `limit`.
    pub fn start(opts: &DispatchOptions) -> Self {
        Self {
            after: opts.resume_from_id,
            seq: 0,
            remaining: opts.limit,
        }
    }

    /// Documents the next page may hold: several batches, within the limit.
    fn page_size(&self, opts: &DispatchOptions) -> u32 {
        u64::from(opts.batch_size * PAGE_BATCHES).min(self.remaining.unwrap_or(u64::MAX)) as u32
    }
}

impl<Q: Queue> Dispatcher<Q> {
    /// Pages until done (true) or until `deadline` is near (false). Each page's
    /// batches and the cursor after them are saved before the messages are sent.
    pub(super) async fn page_into_batches(
        &self,
        run: RunId,
        selection: &Selection,
        opts: &DispatchOptions,
        mut cursor: Cursor,
        deadline: Option<Instant>,
    ) -> Result<bool, DispatchError> {
        let mut estimator: Option<TokenEstimator> = None;
        let mut first_page = true;
        loop {
            let page_size = cursor.page_size(opts);
            if page_size == 0 {
                return Ok(true);
            }
            // Always one page per invocation, so a short deadline still progresses.
            if !first_page && deadline.is_some_and(|d| Instant::now() + PAGE_MARGIN > d) {
                return Ok(false);
            }
            first_page = false;
            let page =
                self.dispatch_page(run, selection, opts, &mut cursor, &mut estimator, page_size);
            match before_deadline(deadline, page).await {
                None => return Ok(false),
                Some(Err(e)) => return Err(e),
                Some(Ok(false)) => return Ok(true),
                Some(Ok(true)) => {}
            }
        }
    }

    /// Pages, records and queues one page of batches; false when nothing lies
    /// beyond it. The batches and the cursor after them are saved before the
    /// messages are sent.
    async fn dispatch_page(
        &self,
        run: RunId,
        selection: &Selection,
        opts: &DispatchOptions,
        cursor: &mut Cursor,
        estimator: &mut Option<TokenEstimator>,
        page_size: u32,
    ) -> Result<bool, DispatchError> {
        let started = Instant::now();
        let page = self
            .store
            .page(selection, opts.archive.as_deref(), cursor.after, page_size)
            .await?;
        let Some(last) = page.rows.last() else {
            // Stale rows may lie beyond a stretch of current ones.
            cursor.after = page.next_after().or(cursor.after);
            return Ok(page.more && page.last_id.is_some());
        };
        let last_id = last.id;
        let estimator = match estimator {
            Some(e) => e,
            None => estimator.insert(
                TokenEstimator::calibrate(
                    self.store.as_ref(),
                    selection,
                    self.token_count(opts.long_text),
                    &page.rows,
                )
                .await?,
            ),
        };
        let batches: Vec<NewBatch> = page
            .rows
            .chunks(opts.batch_size as usize)
            .map(|chunk| {
                let b = NewBatch {
                    seq: BatchSeq(cursor.seq),
                    ids: chunk.iter().map(|d| d.id).collect(),
                    estimated_tokens: chunk.iter().map(|d| estimator.estimate(d)).sum(),
                };
                cursor.seq += 1;
                b
            })
            .collect();
        self.store.add_batches(run, &batches, last_id).await?;
        failpoint::crash_point("dispatch_after_save");
        let refs: Vec<BatchRef> = batches
            .iter()
            .map(|b| BatchRef {
                seq: b.seq,
                first_id: b.ids[0],
                last_id: b.ids[b.ids.len() - 1],
            })
            .collect();
        self.hand_over(run, opts, &refs).await?;
        tracing::info!(
            run_id = %run,
            first_id = %page.rows[0].id,
            last_id = %last_id,
            documents = page.rows.len(),
            batches = batches.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "page queued"
        );
        if let Some(r) = cursor.remaining.as_mut() {
            *r -= page.rows.len() as u64;
        }
        cursor.after = page.next_after();
        Ok(page.more)
    }

    fn token_count(&self, long_text: LongText) -> TokenCount {
        TokenCount {
            tokenizer: self.provider.tokenizer(),
            limit: self.provider.limits().tokens_per_input,
            long_text,
        }
    }

    /// Counts what a run would do from the real texts, and changes nothing.
    pub(super) async fn dry_run(
        &self,
        opts: &DispatchOptions,
    ) -> Result<DispatchSummary, DispatchError> {
        let count = self.token_count(opts.long_text);
        let selection = self.params(opts).selection();
        let mut cursor = Cursor::start(opts);
        let mut documents = 0u64;
        let mut tokens_total = 0u64;
        loop {
            let page_size = cursor.page_size(opts);
            if page_size == 0 {
                break;
            }
            let page = self
                .store
                .page(&selection, opts.archive.as_deref(), cursor.after, page_size)
                .await?;
            cursor.after = page.next_after();
            documents += page.rows.len() as u64;
            let ids: Vec<DocumentId> = page.rows.iter().map(|d| d.id).collect();
            if !ids.is_empty() {
                let prefix = count.prefix_chars();
                self.store
                    .for_each_missing(&selection, None, &ids, prefix, |d| {
                        tokens_total += count.of(&d.content)
                    })
                    .await?;
            }
            if let Some(r) = cursor.remaining.as_mut() {
                *r -= page.rows.len() as u64;
            }
            if !page.more || cursor.after.is_none() {
                break;
            }
        }
        let coverage = self
            .store
            .coverage(&selection.spec, opts.archive.as_deref())
            .await?;
        Ok(DispatchSummary {
            run_id: None,
            dry_run: true,
            archive: opts.archive.clone(),
            documents,
            batches: documents.div_ceil(u64::from(opts.batch_size)),
            estimated_tokens: tokens_total,
            estimated_cost_usd: self.provider.cost_usd(tokens_total, opts.mode),
            complete: true,
            resent_batches: 0,
            coverage: Some(coverage),
            costs: Some(Costs::of(self.provider.as_ref(), tokens_total)),
        })
    }
}
