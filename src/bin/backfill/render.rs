//! Every output of the CLI, as text for an operator or as `--json` for a
//! script: the tests and the demo read these exact lines and fields.

use anyhow::Result;
use embed_backfill::dispatch::DispatchSummary;
use embed_backfill::ids::RunId;
use embed_backfill::jobs::TickReport;
use embed_backfill::progress::{self, human_duration, Progress, Stall};
use embed_backfill::redrive::RedriveReport;
use embed_backfill::runner::Tally;
use embed_backfill::store::{Adoption, Coverage};
use embed_backfill::store::{Job, RunStatus};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::time::Duration;

/// What `backfill run` ends with: a dry run's counts, or the finished run.
pub enum Ran {
    DryRun(DispatchSummary),
    Finished(Box<RunStatus>),
}

pub fn ran(ran: &Ran, json: bool) -> Result<()> {
    match ran {
        Ran::DryRun(s) => summary(s, json),
        Ran::Finished(s) => status(s, &[], None, json),
    }
}

pub fn summary(summary: &DispatchSummary, json: bool) -> Result<()> {
    if json {
        return pretty(summary);
    }
    let what = archive_label(summary.archive.as_deref());
    match summary.run_id {
        Some(id) if !summary.complete => println!(
            "Run {id} partly dispatched ({what}): continue with `backfill dispatch --continue {id}`"
        ),
        Some(id) => println!("Run {id} dispatched ({what})"),
        None => println!("Dry run ({what}): nothing was written or queued"),
    }
    if summary.resent_batches > 0 {
        println!(
            "  Re-sent:   {} batch(es) recorded but never confirmed queued",
            summary.resent_batches
        );
    }
    println!("  Documents: {}", summary.documents);
    println!("  Batches:   {}", summary.batches);
    println!(
        "  Tokens:    {} ({})",
        summary.estimated_tokens,
        if summary.dry_run {
            "counted with the provider's tokenizer after truncation"
        } else {
            "estimated from an exact count of the first page; --dry-run counts every text"
        }
    );
    match summary.costs {
        Some(c) => println!(
            "  Cost:      {} direct, {} in batch mode",
            usd(c.direct_usd),
            usd(c.batch_usd)
        ),
        None => println!("  Cost:      ${:.4}", summary.estimated_cost_usd),
    }
    if let Some(c) = &summary.coverage {
        println!(
            "  Rows:      {} missing ({} of them empty), {} stale by text, {} stale by model, {} current, {} unknown",
            c.without_embeddings, c.empty_content, c.stale_text, c.stale_model, c.current, c.unknown
        );
    }
    Ok(())
}

/// The status row with its progress, and the stall with its remedy where
/// the run stopped moving.
pub fn status(status: &RunStatus, jobs: &[Job], stall: Option<Stall>, json: bool) -> Result<()> {
    if json {
        let mut value = serde_json::to_value(status)?;
        value["progress"] = serde_json::to_value(progress::of(status))?;
        value["stalled"] = serde_json::to_value(&stall)?;
        if !jobs.is_empty() {
            value["jobs"] = serde_json::to_value(jobs)?;
        }
        return pretty(&value);
    }
    status_lines(status);
    for j in jobs {
        job_line(j);
    }
    if let Some(stall) = stall {
        println!(
            "  STALLED: nothing has moved for {}{}. Finish it with `{}`",
            human_duration(Duration::from_secs_f64(stall.idle_secs)),
            if stall.queue_checked {
                " and the queue holds no message"
            } else {
                " (set BACKFILL_QUEUE_URL to check the queue too)"
            },
            stall.remedy
        );
    }
    Ok(())
}

/// Between two refreshes of `status --watch`: a blank line under text, none
/// between JSON values.
pub fn refresh(json: bool) {
    if !json {
        println!();
    }
}

/// The old tool's lines.
fn status_lines(s: &RunStatus) {
    let p = progress::of(s);
    println!(
        "Run {} ({}): {}",
        s.id,
        archive_label(s.archive.as_deref()),
        s.state.as_str()
    );
    println!(
        "  Progress: {}/{} ({:.1}%)",
        p.processed, p.total, p.percent
    );
    println!(
        "  Rate: {:.1} docs/sec | Elapsed: {} | ETA: {}",
        p.docs_per_sec,
        human_duration(Duration::from_secs_f64(p.elapsed_secs)),
        eta(&p)
    );
    println!(
        "  Documents: {} embedded, {} skipped, {} failed | Batches: {}/{} done, {} failed",
        s.documents_embedded,
        s.documents_skipped,
        s.documents_failed,
        s.batches_done,
        s.total_batches,
        s.batches_failed
    );
    println!(
        "  Tokens: {} for embedded documents, {} billed (estimated {}) | Cost: ${:.4} billed (estimated ${:.4})",
        s.tokens_used, s.tokens_billed, s.estimated_tokens, s.actual_cost_usd, s.estimated_cost_usd
    );
    if s.documents_copied > 0 {
        println!(
            "  Copies: {} of the embedded documents took the vector of a row with the same text ({} tokens saved)",
            s.documents_copied, s.tokens_saved
        );
    }
    if let Some(e) = &s.last_error {
        println!("  Last error: {e}");
    }
    for b in &s.failed_batches {
        println!(
            "  Batch {} (ids {}..{}) {:?} after {} attempt(s): {}",
            b.seq,
            b.first_id,
            b.last_id,
            b.state,
            b.attempts,
            b.error.as_deref().unwrap_or("-")
        );
    }
    for d in &s.failed_documents {
        println!("  Document {} failed: {}", d.id, d.reason);
    }
}

pub fn coverage(c: &Coverage, archive: Option<&str>, json: bool) -> Result<()> {
    if json {
        return pretty(c);
    }
    println!(
        "Coverage ({}): {:.2}%",
        archive_label(archive),
        c.coverage_percent
    );
    println!("  with_embeddings:    {}", c.with_embeddings);
    println!("  without_embeddings: {}", c.without_embeddings);
    if c.empty_content > 0 {
        println!(
            "  (of which {} have empty content and cannot be embedded)",
            c.empty_content
        );
    }
    println!("  current:            {}", c.current);
    println!("  stale by text:      {}", c.stale_text);
    println!("  stale by model:     {}", c.stale_model);
    println!("  unknown:            {}", c.unknown);
    if c.stale_text + c.stale_model > 0 {
        println!("  (`backfill run --select stale` re-embeds the stale ones)");
    }
    if c.unknown > 0 {
        println!("  (unknown vectors have no provenance: `backfill adopt --model M` records them)");
    }
    Ok(())
}

pub fn adopted(a: &Adoption, model: &str, json: bool) -> Result<()> {
    if json {
        return pretty(a);
    }
    println!("Adopted {} vector(s) as made by {model}", a.adopted);
    if a.wrong_dimensions > 0 {
        println!(
            "  {} vector(s) have other dimensions and were left unknown: check --dimensions",
            a.wrong_dimensions
        );
    }
    Ok(())
}

pub fn redriven(report: &RedriveReport, json: bool) -> Result<()> {
    if json {
        return pretty(report);
    }
    println!(
        "Moved {} message(s) from the dead-letter queue to the queue; {} of other runs left; {} unreadable left",
        report.moved, report.skipped, report.unreadable
    );
    Ok(())
}

pub fn requeued(run_id: RunId, queued: u64, unfinished: bool, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "run_id": run_id, "queued": queued })
        );
    } else {
        println!(
            "Queued {queued} batch(es) of run {run_id} again (failed ones, ones with failed documents{})",
            if unfinished { ", unfinished ones" } else { "" }
        );
    }
}

pub fn polled(report: &TickReport, json: bool) -> Result<()> {
    if json {
        return pretty(report);
    }
    println!(
        "Batch jobs: {} submitted, {} waiting for the provider's queue, {} running, {} collected ({} batches ended, {} sent again), {} failed, {} left for the next poll",
        report.submitted,
        report.waiting,
        report.running,
        report.collected,
        report.batches_ended,
        report.batches_requeued,
        report.failed,
        report.left
    );
    for e in &report.errors {
        println!("  error: {e}");
    }
    Ok(())
}

pub fn worked(tally: &Tally, json: bool) -> Result<()> {
    if json {
        return pretty(tally);
    }
    println!(
        "Handled {} message(s): {} succeeded, {} failed (left on the queue for retry); {} documents embedded, {} tokens",
        tally.messages, tally.succeeded, tally.failed, tally.documents_embedded, tally.tokens
    );
    Ok(())
}

/// `backfill run`'s progress bar: done/total, percent, docs/s, elapsed, ETA.
pub struct Bar(ProgressBar);

impl Bar {
    pub fn start() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} ({percent}%) {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Self(bar)
    }

    pub fn show(&self, status: &RunStatus) {
        let p = progress::of(status);
        self.0.set_length(p.total);
        self.0.set_position(p.processed);
        self.0.set_message(format!(
            "{:.1} docs/s | elapsed {} | ETA {}",
            p.docs_per_sec,
            human_duration(Duration::from_secs_f64(p.elapsed_secs)),
            eta(&p)
        ));
    }

    /// Clears the bar, so the final status prints where it stood.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn eta(p: &Progress) -> String {
    p.eta_secs
        .map(|e| human_duration(Duration::from_secs_f64(e)))
        .unwrap_or_else(|| "-".into())
}

/// A batch-mode job: its state and the provider's, its lines, its age.
fn job_line(j: &Job) {
    let age = (j.now - j.created_at).to_std().unwrap_or_default();
    let provider = j
        .provider_status
        .as_deref()
        .map(|p| format!(" (Batch API: {p})"))
        .unwrap_or_default();
    println!(
        "  Job {}: {}{provider}, {} documents, {}/{} lines done, {} failed, {} old{}",
        j.seq,
        j.state.as_str(),
        j.documents,
        j.lines_completed,
        j.lines_total,
        j.lines_failed,
        human_duration(Duration::from_secs(age.as_secs())),
        j.error
            .as_deref()
            .map(|e| format!(" | {e}"))
            .unwrap_or_default()
    );
}

fn usd(cost: Option<f64>) -> String {
    cost.map_or_else(|| "n/a (no such mode)".into(), |c| format!("${c:.4}"))
}

fn archive_label(archive: Option<&str>) -> String {
    archive
        .map(|a| format!("archive {a:?}"))
        .unwrap_or_else(|| "all archives".into())
}

fn pretty<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
