//! Collecting a job that has ended: its output
//! file streamed a line at a time, each batch's vectors written with the
//! hashes its plan recorded, through the same guarded completion as direct
//! mode, so a batch counts once however often collection runs. Lines that
//! did not finish (expired, or failed on the provider's side) go back into
//! a new job; lines the API refused for their inputs are embedded in direct
//! mode, where bisection finds the documents at fault.

use super::{BatchPlan, JobError, Poller};
use crate::ids::{BatchSeq, DocumentId};
use crate::inputs::Combined;
use crate::queue::BatchMessage;
use crate::store::BatchRef;
use crate::store::{Job, VectorRow};
use crate::worker::Settings;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use tokio::time::Instant;

#[derive(Deserialize)]
struct OutputLine {
    custom_id: String,
    #[serde(default)]
    response: Option<LineResponse>,
    #[serde(default)]
    error: Option<LineError>,
}

#[derive(Deserialize)]
struct LineResponse {
    status_code: u16,
    #[serde(default)]
    body: Value,
}

#[derive(Deserialize)]
struct LineError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A batch of the job being collected: its plan and what has come back.
struct Open {
    first_id: DocumentId,
    last_id: DocumentId,
    plan: BatchPlan,
    vectors: Vec<Option<Vec<f32>>>,
    lines_left: usize,
    tokens: u64,
}

/// What becomes of a batch whose lines did not all come back.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Redo {
    /// Into a new job: the lines did not run (expired, cancelled, a fault
    /// of the provider's).
    Resubmit,
    /// In direct mode now: the API refused an input of it.
    Direct,
}

/// What a collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Collected {
    /// Batches that ended here.
    pub batches: u64,
    /// Batches that went back into a new job.
    pub requeued: u64,
    /// Documents the status row counted embedded for the batches ended here.
    pub documents: u64,
    /// Tokens of the lines written (the batches embedded directly count theirs
    /// in their own records).
    pub tokens: u64,
}

impl Poller {
    /// Streams the output and error files, ending the batches whose lines all
    /// came back and sending the rest again.
    pub(super) async fn collect(
        &self,
        job: &Job,
        settings: &Settings,
        remote: &super::api::RemoteBatch,
        deadline: Option<Instant>,
    ) -> Result<Collected, JobError> {
        let mut open = self.open_batches(job).await?;
        let mut c = Collected::default();
        // Batches whose every line is written: none of theirs are left.
        for seq in open
            .iter()
            .filter(|(_, o)| o.lines_left == 0)
            .map(|(s, _)| *s)
            .collect::<Vec<_>>()
        {
            if let Some(o) = open.remove(&seq) {
                self.finish(job, seq, o, &mut c).await?;
            }
        }
        if let Some(file) = &remote.output_file_id {
            let mut lines = self.api.lines(file).await?;
            while let Some(raw) = lines.next_line().await? {
                let line = parse(&raw, job)?;
                let Some((seq, at)) = custom_id_of(&line.custom_id) else {
                    continue;
                };
                let Some(o) = open.get_mut(&seq) else {
                    // Its batch ended on an earlier collection, or moved on.
                    continue;
                };
                let Some(range) = o.plan.lines.get(at).cloned() else {
                    continue;
                };
                let Some(response) = line.response.filter(|r| r.status_code == 200) else {
                    continue;
                };
                let got = self.api.target().decode(response.body, range.len())?;
                o.tokens += got.prompt_tokens;
                for (slot, v) in o.vectors[range].iter_mut().zip(got.vectors) {
                    *slot = Some(v);
                }
                o.lines_left -= 1;
                if o.lines_left == 0 {
                    if let Some(o) = open.remove(&seq) {
                        self.finish(job, seq, o, &mut c).await?;
                    }
                }
            }
        }
        let mut redo: BTreeMap<BatchSeq, Redo> = BTreeMap::new();
        let mut reasons: BTreeMap<BatchSeq, String> = BTreeMap::new();
        if let Some(file) = &remote.error_file_id {
            let mut lines = self.api.lines(file).await?;
            while let Some(raw) = lines.next_line().await? {
                let line = parse(&raw, job)?;
                let Some((seq, _)) = custom_id_of(&line.custom_id) else {
                    continue;
                };
                if !open.contains_key(&seq) {
                    continue;
                }
                let (how, why) = self.judge(&line);
                let r = redo.entry(seq).or_insert(how);
                *r = (*r).max(how);
                reasons.entry(seq).or_insert(why);
            }
        }
        // What is still open did not all come back: its finished documents
        // are written now, and the rest goes again.
        let mut resubmit = Vec::new();
        for (seq, o) in open {
            let how = redo.get(&seq).copied().unwrap_or(Redo::Resubmit);
            let why = reasons
                .remove(&seq)
                .unwrap_or_else(|| "its line did not come back".into());
            self.write_partial(job, seq, &o, &why).await?;
            c.tokens += o.tokens;
            match how {
                Redo::Resubmit => resubmit.push(seq),
                Redo::Direct => {
                    let batch = BatchRef {
                        seq,
                        first_id: o.first_id,
                        last_id: o.last_id,
                    };
                    let message = BatchMessage::of(job.run_id, &batch);
                    let result = self.worker.work_batch(&message, deadline).await;
                    if let Err(e) = result {
                        tracing::warn!(run_id = %job.run_id, batch = seq.0, error = %e, "a batch the Batch API refused an input of failed in direct mode too");
                    }
                    c.batches += 1;
                }
            }
        }
        if !resubmit.is_empty() {
            c.requeued = self
                .store
                .queue_in_jobs(job.run_id, &resubmit, settings.job_size, Some(job.seq))
                .await?;
        }
        Ok(c)
    }

    /// The job's batches that have not ended, with their plans.
    async fn open_batches(&self, job: &Job) -> Result<BTreeMap<BatchSeq, Open>, JobError> {
        let mut open = BTreeMap::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .job_batches(job.run_id, job.seq, after, 500)
                .await?;
            let Some(last) = page.last() else {
                return Ok(open);
            };
            after = Some(last.seq);
            for b in page {
                let plan: BatchPlan = b.plan.and_then(|p| serde_json::from_value(p).ok()).ok_or(
                    JobError::NoPlan {
                        run: job.run_id,
                        job: job.seq,
                        batch: b.seq,
                    },
                )?;
                let inputs = plan.plan.inputs();
                open.insert(
                    b.seq,
                    Open {
                        first_id: b.first_id,
                        last_id: b.last_id,
                        lines_left: plan.lines.len(),
                        plan,
                        vectors: vec![None; inputs],
                        tokens: 0,
                    },
                );
            }
        }
    }

    /// Ends a batch all of whose lines came back, as the worker would.
    async fn finish(
        &self,
        job: &Job,
        seq: BatchSeq,
        o: Open,
        c: &mut Collected,
    ) -> Result<(), JobError> {
        let (combined, _) = o.plan.plan.combine(&o.vectors, &HashSet::new());
        let rows: Vec<VectorRow<'_>> = combined.iter().map(Combined::row).collect();
        let done = self
            .store
            .write_and_complete(job.run_id, seq, &rows, o.tokens, &[])
            .await?;
        c.batches += 1;
        c.tokens += o.tokens;
        if done.counted {
            c.documents += done.written;
        }
        Ok(())
    }

    /// Writes the documents of a batch whose lines came back in part, and
    /// records why the rest goes again and what the part was billed.
    async fn write_partial(
        &self,
        job: &Job,
        seq: BatchSeq,
        o: &Open,
        why: &str,
    ) -> Result<(), JobError> {
        let (combined, _) = o.plan.plan.combine(&o.vectors, &HashSet::new());
        let rows: Vec<VectorRow<'_>> = combined.iter().map(Combined::row).collect();
        self.store.write_all(job.run_id, seq, &rows).await?;
        let error = format!("batch mode: {why}");
        self.store
            .fail_batch(job.run_id, seq, &error, false, o.tokens)
            .await?;
        Ok(())
    }

    /// What a line of the error file asks for, and why.
    fn judge(&self, line: &OutputLine) -> (Redo, String) {
        if let Some(e) = &line.error {
            let code = e.code.as_deref().unwrap_or("error");
            let message = e.message.as_deref().unwrap_or("");
            return (Redo::Resubmit, format!("{code}: {message}"));
        }
        let Some(r) = &line.response else {
            return (
                Redo::Resubmit,
                "a line with neither response nor error".into(),
            );
        };
        let body = serde_json::to_vec(&r.body).unwrap_or_default();
        let err =
            self.api
                .target()
                .classify(r.status_code, &reqwest::header::HeaderMap::new(), &body);
        let how = if err.is_retryable() {
            Redo::Resubmit
        } else {
            Redo::Direct
        };
        (how, err.to_string())
    }
}

fn parse(raw: &[u8], job: &Job) -> Result<OutputLine, JobError> {
    serde_json::from_slice(raw).map_err(|e| JobError::Line {
        run: job.run_id,
        job: job.seq,
        reason: e.to_string(),
    })
}

/// The batch and line a custom id names; `None` for one this tool did not write.
pub(super) fn custom_id_of(id: &str) -> Option<(BatchSeq, usize)> {
    let (seq, line) = id.split_once('-')?;
    Some((BatchSeq(seq.parse().ok()?), line.parse().ok()?))
}
