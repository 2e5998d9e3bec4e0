//! Submitting a ready job: its batches' texts, a page at a time, become
//! the lines of an input file streamed to the provider as they are written;
//! then the Batch API batch, tagged with the run and job. Each step is
//! recorded, and a new attempt first looks for what a crashed one left: a
//! batch it created (adopted), a file it recorded (used), files it uploaded
//! and never recorded (deleted). So a crash anywhere costs at most a file
//! upload, never a second paid job.

use super::{BatchPlan, JobError, Poller, TAG_JOB, TAG_RUN};
use crate::embedder::{batching, BatchTarget};
use crate::ids::BatchSeq;
use crate::inputs::Inputs;
use crate::store::{Job, JobState, JobUpdate};
use crate::worker::Settings;
use crate::{failpoint, store::Store};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use tokio::sync::mpsc;

/// Batches read (and their plans saved) per store call.
const PLAN_PAGE: u32 = 100;
/// Chunks of the file in flight between the writer and the upload: with a
/// batch's lines a chunk, a few MiB.
const UPLOAD_BUFFER: usize = 4;

/// How a submission attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Submitted {
    /// Created at the provider (or found created by an earlier attempt).
    Created,
    /// None of its rows needed an API call any more: done without a file.
    Empty,
}

/// What was written of the input file.
#[derive(Debug, Default)]
struct Written {
    bytes: u64,
    inputs: usize,
    lines: usize,
    /// The file was full before this batch: it and those after it moved
    /// to a new job.
    split_at: Option<BatchSeq>,
}

type Chunk = Result<Bytes, std::io::Error>;

impl Poller {
    /// `queued`: jobs of ours at the provider now, remembered with the job
    /// for when the provider refuses it.
    pub(super) async fn submit(
        &self,
        job: &Job,
        settings: &Settings,
        queued: u64,
    ) -> Result<Submitted, JobError> {
        let tags = tags(job);
        // An earlier attempt may have created the batch and died before
        // recording it.
        if let Some(since) = job.submitting_since.filter(|_| job.attempts > 1) {
            let since = since.timestamp() - 300;
            if let Some(found) = self.api.find(&tags, since).await? {
                if !found.over_queue_limit() && found.status != super::RemoteStatus::Cancelled {
                    tracing::info!(run_id = %job.run_id, job = job.seq.0, batch_id = %found.id, "adopting the Batch API batch an earlier attempt created");
                    self.record_created(job, &found.id, found.input_file_id.clone(), queued)
                        .await?;
                    return Ok(Submitted::Created);
                }
            }
        }
        let file_id = match &job.input_file_id {
            Some(id) => id.clone(),
            None => match self.upload(job, settings).await? {
                Some(id) => id,
                None => return Ok(Submitted::Empty),
            },
        };
        let created = self.api.create(&file_id, &tags).await?;
        failpoint::crash_point("job_after_create");
        self.record_created(job, &created.id, Some(file_id), queued)
            .await?;
        tracing::info!(run_id = %job.run_id, job = job.seq.0, batch_id = %created.id, "job submitted");
        Ok(Submitted::Created)
    }

    async fn record_created(
        &self,
        job: &Job,
        batch_id: &str,
        input_file_id: Option<String>,
        queued: u64,
    ) -> Result<(), JobError> {
        self.record(
            job,
            JobUpdate {
                state: Some(JobState::Submitted),
                batch_id: Some(batch_id.to_string()),
                input_file_id: input_file_id.map(Some),
                provider_status: Some("validating".into()),
                queued_before: Some(queued),
                blocked_behind: Some(None),
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    }

    /// Writes and uploads the job's input file, and records it; `None` when
    /// no line was needed (the job is then done).
    async fn upload(&self, job: &Job, settings: &Settings) -> Result<Option<String>, JobError> {
        let name = file_name(job);
        if job.attempts > 1 {
            // Files an earlier attempt uploaded and did not record.
            for orphan in self.api.files_named(&name).await? {
                tracing::info!(run_id = %job.run_id, job = job.seq.0, file_id = %orphan.id, "deleting an earlier attempt's unrecorded input file");
                self.api.delete_file(&orphan.id).await?;
            }
        }
        let (tx, mut rx) = mpsc::channel::<Chunk>(UPLOAD_BUFFER);
        let writing = async {
            let written = self.write_file(job, settings, &tx).await;
            if written.is_err() {
                // The upload must fail too: a cut file is never recorded.
                let _ = tx.send(Err(std::io::Error::other("aborted"))).await;
            }
            drop(tx);
            written
        };
        let uploading = async {
            let Some(first) = rx.recv().await else {
                return Ok(None);
            };
            let rest = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            let body = futures::stream::once(async { first }).chain(rest);
            self.api
                .upload(&name, reqwest::Body::wrap_stream(body))
                .await
                .map(Some)
        };
        let (written, uploaded) = tokio::join!(writing, uploading);
        let written = written?;
        let Some(file) = uploaded? else {
            self.finish_empty(job).await?;
            return Ok(None);
        };
        failpoint::crash_point("job_after_upload");
        tracing::info!(
            run_id = %job.run_id,
            job = job.seq.0,
            file_id = %file.id,
            bytes = written.bytes,
            lines = written.lines,
            inputs = written.inputs,
            split_at = ?written.split_at.map(|s| s.0),
            "input file uploaded"
        );
        self.record(
            job,
            JobUpdate {
                input_file_id: Some(Some(file.id.clone())),
                lines_total: Some(written.lines as u64),
                ..Default::default()
            },
        )
        .await?;
        Ok(Some(file.id))
    }

    /// The lines of the job's batches, a batch at a time into `tx`, each
    /// page's plans saved before the next page: every plan is in the store
    /// before the file can be used. Stops before the batch that would take
    /// the file past the Batch API's limits and moves the rest to a new job.
    async fn write_file(
        &self,
        job: &Job,
        settings: &Settings,
        tx: &mpsc::Sender<Chunk>,
    ) -> Result<Written, JobError> {
        let store: &dyn Store = self.store.as_ref();
        let provider = self.worker.provider();
        let limits = provider.limits();
        let target = self.api.target();
        let per_request = settings.per_request.min(limits.inputs_per_request);
        let mut written = Written::default();
        let mut after = None;
        loop {
            let page = store
                .job_batches(job.run_id, job.seq, after, PLAN_PAGE)
                .await?;
            let Some(last) = page.last() else {
                return Ok(written);
            };
            after = Some(last.seq);
            let mut plans = Vec::with_capacity(page.len());
            for b in &page {
                store.copy_vectors(job.run_id, b.seq).await?;
                let mut inputs = Inputs::new(
                    provider.tokenizer(),
                    limits.tokens_per_input,
                    settings.selection.spec.long_text,
                );
                let prefix = inputs.prefix_chars();
                store
                    .for_each_missing(&settings.selection, Some(job.run_id), &b.ids, prefix, |d| {
                        inputs.add(d)
                    })
                    .await?;
                let counts: Vec<usize> = inputs.inputs.iter().map(|(_, p)| p.tokens).collect();
                let lines = batching::pack(&counts, per_request, limits.tokens_per_request);
                let mut chunk = Vec::new();
                for (i, range) in lines.iter().enumerate() {
                    let texts: Vec<&str> = inputs.inputs[range.clone()]
                        .iter()
                        .map(|(_, p)| p.text.as_ref())
                        .collect();
                    let line = json!({
                        "custom_id": custom_id(b.seq, i),
                        "method": "POST",
                        "url": BatchTarget::ENDPOINT,
                        "body": target.line_body(&texts),
                    });
                    chunk.extend_from_slice(line.to_string().as_bytes());
                    chunk.push(b'\n');
                }
                let full = written.bytes + chunk.len() as u64 > BatchTarget::MAX_FILE_BYTES
                    || written.inputs + counts.len() > BatchTarget::MAX_INPUTS
                    || written.lines + lines.len() > BatchTarget::MAX_LINES;
                if full && written.lines > 0 {
                    store.save_plans(job.run_id, job.seq, &plans).await?;
                    let moved = store.split_job(job.run_id, job.seq, b.seq).await?;
                    tracing::info!(run_id = %job.run_id, job = job.seq.0, from_batch = b.seq.0, new_job = moved.0, "input file full: the rest of the job moved to a new one");
                    written.split_at = Some(b.seq);
                    return Ok(written);
                }
                written.bytes += chunk.len() as u64;
                written.inputs += counts.len();
                written.lines += lines.len();
                let plan = BatchPlan {
                    plan: inputs.plan().clone(),
                    lines,
                };
                plans.push((b.seq, serde_json::to_value(&plan).unwrap_or_default()));
                if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                    // The upload ended early; its error says why.
                    break;
                }
            }
            store.save_plans(job.run_id, job.seq, &plans).await?;
        }
    }

    /// A job none of whose rows needed the API any more (each was copied,
    /// or filled by someone else): its batches end as the worker's would.
    async fn finish_empty(&self, job: &Job) -> Result<(), JobError> {
        let mut after = None;
        loop {
            let page = self
                .store
                .job_batches(job.run_id, job.seq, after, PLAN_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.seq);
            for b in &page {
                self.store
                    .complete_batch(job.run_id, b.seq, &[], 0, &[])
                    .await?;
            }
        }
        self.record(
            job,
            JobUpdate {
                state: Some(JobState::Done),
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    }
}

/// How a job's Batch API batch is tagged, to be found again.
pub(super) fn tags(job: &Job) -> HashMap<String, String> {
    HashMap::from([
        (TAG_RUN.to_string(), job.run_id.to_string()),
        (TAG_JOB.to_string(), job.seq.0.to_string()),
    ])
}

fn file_name(job: &Job) -> String {
    format!("embed-backfill-{}-job-{}.jsonl", job.run_id, job.seq)
}

/// A line's id: its batch and its place among the batch's lines.
pub(super) fn custom_id(seq: BatchSeq, line: usize) -> String {
    format!("{}-{line}", seq.0)
}
