//! The operator CLI: run a backfill in one process, or dispatch to SQS and
//! work the queue, watch a run's status, and check coverage.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use embed_backfill::dispatch::{DispatchCommand, DispatchRequest, DispatchSummary};
use embed_backfill::documents::Coverage;
use embed_backfill::ids::RunId;
use embed_backfill::progress::{self, human_duration};
use embed_backfill::queue::{MemoryQueue, SqsQueue};
use embed_backfill::redrive;
use embed_backfill::runner::{self, ConsumeOptions, LocalOptions};
use embed_backfill::status::RunStatus;
use embed_backfill::{config, invoke, logging, secrets_manager, setup};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "backfill", version, about = "Backfill OpenAI embeddings into a Supabase table", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dispatch and embed in this one process, with no AWS: the old script's job, concurrently.
    Run(RunArgs),
    /// Page the ids into batches and queue one SQS message per batch (what the dispatcher Lambda does).
    Dispatch(DispatchArgs),
    /// Consume the SQS queue the way the worker Lambda's event source mapping does.
    Work(WorkArgs),
    /// Show a run's state, progress, rate, ETA, cost and failures (the latest run by default).
    Status(StatusArgs),
    /// Check embedding coverage, as the guide's SQL does.
    Verify(VerifyArgs),
    /// Move messages from the dead-letter queue back to the queue.
    Redrive(RedriveArgs),
    /// Queue a run's failed batches again, from the status tables.
    RetryFailed(RetryFailedArgs),
}

#[derive(Args, Clone)]
struct Selection {
    /// Maximum number of documents to process (default: all)
    #[arg(long)]
    limit: Option<u64>,
    /// Only process documents whose archive equals this exactly
    #[arg(long)]
    archive: Option<String>,
    /// Start after this document id (ids are processed in ascending order)
    #[arg(long, value_name = "ID", allow_negative_numbers = true)]
    resume_from_id: Option<i64>,
    /// Documents per batch, i.e. per SQS message and status write [default: 100, max: 1000]
    #[arg(long)]
    batch_size: Option<u32>,
    /// Inputs per OpenAI request [default: 100, max: 2048]
    #[arg(long)]
    embedding_batch_size: Option<u32>,
    /// Count documents, tokens and cost from the real texts; write and queue nothing
    #[arg(long)]
    dry_run: bool,
    /// Start even though another run over an overlapping archive is still active
    #[arg(long)]
    force: bool,
}

impl Selection {
    fn request(&self) -> DispatchRequest {
        DispatchRequest {
            archive: self.archive.clone(),
            limit: self.limit,
            resume_from_id: self.resume_from_id,
            batch_size: self.batch_size,
            embedding_batch_size: self.embedding_batch_size,
            dry_run: self.dry_run,
            force: self.force,
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    selection: Selection,
    /// Batches embedded at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    #[command(flatten)]
    rate: RateArgs,
    /// Print the final status as JSON instead of a progress bar
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone, Copy)]
struct RateArgs {
    /// Tokens per minute to stay under [env: BACKFILL_TPM_LIMIT; default: the limit the API reports]
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests per minute to stay under [env: BACKFILL_RPM_LIMIT; default: the limit the API reports]
    #[arg(long)]
    rpm: Option<u64>,
}

impl RateArgs {
    /// The settings, with these flags over the environment's values.
    fn over<'a, F: Fn(&str) -> Option<String>>(
        self,
        base: &'a config::Env<F>,
    ) -> config::Env<impl Fn(&str) -> Option<String> + 'a> {
        config::Env(move |name: &str| match name {
            "BACKFILL_TPM_LIMIT" if self.tpm.is_some() => self.tpm.map(|v| v.to_string()),
            "BACKFILL_RPM_LIMIT" if self.rpm.is_some() => self.rpm.map(|v| v.to_string()),
            _ => (base.0)(name),
        })
    }
}

#[derive(Args)]
struct DispatchArgs {
    #[command(flatten)]
    selection: Selection,
    /// Continue a run whose dispatch stopped, from its saved cursor (takes no other option)
    #[arg(long = "continue", value_name = "RUN_ID")]
    continue_run: Option<RunId>,
    /// Invoke the deployed dispatcher function instead of dispatching from here
    /// (the stack output DispatcherFunctionName; AWS_ENDPOINT_URL_LAMBDA points elsewhere)
    #[arg(long, value_name = "NAME")]
    function: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RedriveArgs {
    /// Only this run's messages (others stay in the dead-letter queue)
    #[arg(long = "run", value_name = "RUN_ID")]
    run_id: Option<RunId>,
    /// Move at most this many messages
    #[arg(long)]
    max: Option<u64>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RetryFailedArgs {
    run_id: RunId,
    /// Also queue batches that never ended (pending, queued, running,
    /// retrying): for a run stuck with empty queues after a crashed last
    /// delivery or expired dead letters. A batch queued twice counts once.
    #[arg(long)]
    unfinished: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct WorkArgs {
    /// Stop when the queue is empty instead of polling forever
    #[arg(long)]
    until_empty: bool,
    /// Receive loops at once, each handling up to --batch-size messages
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// Messages per receive, handled as one event: the event source mapping's
    /// BatchSize (the template's WorkerBatchSize)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=10))]
    batch_size: u8,
    /// Seconds one receive may take, like the worker Lambda's timeout
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    #[command(flatten)]
    rate: RateArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// The run (default: the latest)
    run_id: Option<RunId>,
    /// Call a run stalled when no batch of it has ended for this many minutes
    /// and the queue (BACKFILL_QUEUE_URL, where set) holds no message
    #[arg(long, value_name = "MINUTES", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    stalled_after: u64,
    /// Refresh every 2 seconds until the run finishes
    #[arg(long)]
    watch: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    #[arg(long)]
    archive: Option<String>,
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let _ = dotenvy::dotenv();
    logging::init_cli(if matches!(cli.command, Command::Run(ref a) if !a.json) {
        "warn"
    } else {
        "info"
    });
    if let Err(e) = execute(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn execute(cli: Cli) -> Result<()> {
    let env = secrets_manager::environment().await?;
    match cli.command {
        Command::Run(args) => run(&args.rate.over(&env), args).await,
        Command::Dispatch(args) => {
            let request = DispatchRequest {
                continue_run: args.continue_run,
                ..args.selection.request()
            };
            if let Some(function) = &args.function {
                request.clone().into_command()?;
                let lambda = aws_sdk_lambda::Client::new(&aws_config::load_from_env().await);
                let summary = invoke::dispatch(&lambda, function, &request).await?;
                return print_summary(&summary, args.json);
            }
            let command = request.into_command()?;
            let stores = setup::stores(&env)?;
            let summary = match command {
                DispatchCommand::Start(options) if options.dry_run => {
                    setup::dispatcher(&env, &stores, MemoryQueue::new())?
                        .dispatch(&options)
                        .await?
                }
                DispatchCommand::Start(options) => {
                    let queue = setup::sqs_queue(&env).await?;
                    setup::dispatcher(&env, &stores, queue)?
                        .dispatch(&options)
                        .await?
                }
                DispatchCommand::Continue { run, .. } => {
                    let queue = setup::sqs_queue(&env).await?;
                    setup::dispatcher(&env, &stores, queue)?
                        .continue_run(run, None)
                        .await?
                }
            };
            print_summary(&summary, args.json)
        }
        Command::Redrive(args) => {
            let config = env.queue()?;
            let dlq_url = config
                .dlq_url
                .context("BACKFILL_DLQ_URL is not set: set it to the dead-letter queue's URL (the stack output DeadLetterQueueUrl)")?;
            let queue = SqsQueue::from_env(config.queue_url).await;
            let dlq = SqsQueue::from_env(dlq_url).await;
            let report = redrive::redrive(&dlq, &queue, args.run_id, args.max).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "Moved {} message(s) from the dead-letter queue to the queue; {} of other runs left; {} unreadable left",
                    report.moved, report.skipped, report.unreadable
                );
            }
            Ok(())
        }
        Command::RetryFailed(args) => {
            let stores = setup::stores(&env)?;
            let queue = setup::sqs_queue(&env).await?;
            let queued =
                redrive::retry_failed(&stores.status, &queue, args.run_id, args.unfinished).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "run_id": args.run_id, "queued": queued })
                );
            } else {
                println!(
                    "Queued {queued} batch(es) of run {} again (failed ones, ones with failed documents{})",
                    args.run_id,
                    if args.unfinished { ", unfinished ones" } else { "" }
                );
            }
            Ok(())
        }
        Command::Work(args) => {
            let stores = setup::stores(&env)?;
            let worker = setup::worker(&args.rate.over(&env), &stores)?;
            let queue = setup::sqs_queue(&env).await?;
            let opts = ConsumeOptions {
                until_empty: args.until_empty,
                concurrency: args.concurrency.into(),
                batch_size: args.batch_size.into(),
                wait: if args.until_empty {
                    Duration::from_secs(1)
                } else {
                    Duration::from_secs(20)
                },
                message_timeout: Duration::from_secs(args.timeout_secs),
            };
            let tally = runner::consume_sqs(&worker, &queue, &opts).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&tally)?);
            } else {
                println!(
                    "Handled {} message(s): {} succeeded, {} failed (left on the queue for retry); {} documents embedded, {} tokens",
                    tally.messages, tally.succeeded, tally.failed, tally.documents_embedded, tally.tokens
                );
            }
            Ok(())
        }
        Command::Status(args) => {
            let stores = setup::stores(&env)?;
            let queue = match env.queue() {
                Ok(q) => Some(SqsQueue::from_env(q.queue_url).await),
                Err(_) => None,
            };
            let stalled_after = Duration::from_secs(args.stalled_after * 60);
            loop {
                let Some(status) = stores.status.run_status(args.run_id).await? else {
                    match args.run_id {
                        Some(id) => bail!("no run {id} in backfill_runs"),
                        None => bail!(
                            "no runs yet: start one with `backfill dispatch` or `backfill run`"
                        ),
                    }
                };
                let stall =
                    progress::stall(&status, stalled_after, queue_empty(queue.as_ref()).await);
                show_status(&status, stall, args.json)?;
                if !args.watch || status.state.is_finished() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                if !args.json {
                    println!();
                }
            }
        }
        Command::Verify(args) => {
            let stores = setup::stores(&env)?;
            let coverage = stores.docs.coverage(args.archive.as_deref()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&coverage)?);
            } else {
                print_coverage(&coverage, args.archive.as_deref());
            }
            Ok(())
        }
    }
}

async fn run<F: Fn(&str) -> Option<String>>(env: &config::Env<F>, args: RunArgs) -> Result<()> {
    let options = args.selection.request().validate()?;
    let stores = setup::stores(env)?;
    let queue = Arc::new(MemoryQueue::new());
    let dispatcher = setup::dispatcher(env, &stores, queue.clone())?;
    if options.dry_run {
        return print_summary(&dispatcher.dispatch(&options).await?, args.json);
    }
    let worker = setup::worker(env, &stores)?;
    let local = LocalOptions {
        concurrency: args.concurrency.into(),
        max_receive_count: env.max_receive_count()?,
        retry_delay: Duration::from_secs(2),
        message_timeout: Duration::from_secs(600),
    };
    let run_id = RunId::random();
    let bar = (!args.json).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} ({percent}%) {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    let finished = AtomicBool::new(false);
    let watch = async {
        let Some(bar) = &bar else { return };
        while !finished.load(Ordering::Relaxed) {
            if let Ok(Some(s)) = stores.status.run_status(Some(run_id)).await {
                let p = progress::of(&s);
                bar.set_length(p.total);
                bar.set_position(p.processed);
                bar.set_message(format!(
                    "{:.1} docs/s | elapsed {} | ETA {}",
                    p.docs_per_sec,
                    human_duration(Duration::from_secs_f64(p.elapsed_secs)),
                    p.eta_secs
                        .map(|e| human_duration(Duration::from_secs_f64(e)))
                        .unwrap_or_else(|| "-".into())
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let work = async {
        let result = runner::run_local(
            &dispatcher,
            queue.clone(),
            &worker,
            run_id,
            &options,
            &local,
        )
        .await;
        finished.store(true, Ordering::Relaxed);
        result
    };
    let (result, ()) = tokio::join!(work, watch);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    result?;
    let status = stores
        .status
        .run_status(Some(run_id))
        .await?
        .context("the run vanished from backfill_runs")?;
    show_status(&status, None, args.json)
}

/// The status row with its progress, as JSON or as the old tool's lines.
/// Whether the queue holds no message, visible or in flight; `None` where
/// there is no queue to ask.
async fn queue_empty(queue: Option<&SqsQueue>) -> Option<bool> {
    match queue?.depth().await {
        Ok((visible, in_flight)) => Some(visible + in_flight == 0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queue's depth");
            None
        }
    }
}

fn show_status(status: &RunStatus, stall: Option<progress::Stall>, json: bool) -> Result<()> {
    if json {
        let mut value = serde_json::to_value(status)?;
        value["progress"] = serde_json::to_value(progress::of(status))?;
        value["stalled"] = serde_json::to_value(&stall)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_status(status);
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
    }
    Ok(())
}

fn print_summary(summary: &DispatchSummary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    let what = summary
        .archive
        .as_deref()
        .map(|a| format!("archive {a:?}"))
        .unwrap_or_else(|| "all archives".into());
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
            "counted with cl100k_base after truncation"
        } else {
            "estimated from a cl100k_base count of the first page; --dry-run counts every text"
        }
    );
    println!("  Cost:      ${:.4}", summary.estimated_cost_usd);
    Ok(())
}

fn print_status(s: &RunStatus) {
    let p = progress::of(s);
    let what = s
        .archive
        .as_deref()
        .map(|a| format!("archive {a:?}"))
        .unwrap_or_else(|| "all archives".into());
    println!("Run {} ({what}): {}", s.id, s.state.as_str());
    println!(
        "  Progress: {}/{} ({:.1}%)",
        p.processed, p.total, p.percent
    );
    println!(
        "  Rate: {:.1} docs/sec | Elapsed: {} | ETA: {}",
        p.docs_per_sec,
        human_duration(Duration::from_secs_f64(p.elapsed_secs)),
        p.eta_secs
            .map(|e| human_duration(Duration::from_secs_f64(e)))
            .unwrap_or_else(|| "-".into())
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

fn print_coverage(c: &Coverage, archive: Option<&str>) {
    let what = archive
        .map(|a| format!("archive {a:?}"))
        .unwrap_or_else(|| "all archives".into());
    println!("Coverage ({what}): {:.2}%", c.coverage_percent);
    println!("  with_embeddings:    {}", c.with_embeddings);
    println!("  without_embeddings: {}", c.without_embeddings);
    if c.empty_content > 0 {
        println!(
            "  (of which {} have empty content and cannot be embedded)",
            c.empty_content
        );
    }
}
