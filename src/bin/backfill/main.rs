//! The operator CLI: run a backfill in one process, or dispatch to SQS and
//! work the queue, watch a run's status, and check coverage. Each command is
//! a call into the library and a print: args.rs holds the flags, render.rs
//! the output, this file the wiring between them.

mod args;
mod render;

use anyhow::{bail, Context, Result};
use args::{
    AdoptArgs, Cli, Command, DispatchArgs, PollArgs, RedriveArgs, RetryFailedArgs, RunArgs,
    StatusArgs, VerifyArgs, WorkArgs,
};
use clap::Parser;
use embed_backfill::config::Env;
use embed_backfill::dispatch::{DispatchCommand, DispatchRequest, DispatchSummary, RunParams};
use embed_backfill::ids::RunId;
use embed_backfill::jobs::TickReport;
use embed_backfill::progress;
use embed_backfill::queue::{MemoryQueue, SqsQueue};
use embed_backfill::redrive::{self, RedriveReport};
use embed_backfill::runner::{self, ConsumeOptions, LocalOptions, OnFailure, Tally};
use embed_backfill::store::{Adoption, Coverage, Mode, VectorSpec};
use embed_backfill::{invoke, logging, secrets_manager, setup};
use render::{Bar, Ran};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let _ = dotenvy::dotenv();
    // Info lines would tear `run`'s progress bar.
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
        Command::Run(a) => render::ran(&run(&env, &a).await?, a.json),
        Command::Dispatch(a) => render::summary(&dispatch(&env, &a).await?, a.json),
        Command::Work(a) => render::worked(&work(&env, &a).await?, a.json),
        Command::Status(a) => status(&env, &a).await,
        Command::Verify(a) => {
            render::coverage(&verify(&env, &a).await?, a.archive.as_deref(), a.json)
        }
        Command::Adopt(a) => render::adopted(&adopt(&env, &a).await?, &a.model, a.json),
        Command::Redrive(a) => render::redriven(&redrive(&env, &a).await?, a.json),
        Command::Poll(a) => render::polled(&poll(&env, &a).await?, a.json),
        Command::RetryFailed(a) => {
            render::requeued(
                a.run_id,
                retry_failed(&env, &a).await?,
                a.unfinished,
                a.json,
            );
            Ok(())
        }
    }
}

/// Dispatches into an in-memory queue and works it in this process, with a
/// progress bar unless `--json`. Dispatcher and worker share one set of
/// settings, with `--tpm`/`--rpm` set over the environment's.
async fn run<F: Fn(&str) -> Option<String>>(env: &Env<F>, args: &RunArgs) -> Result<Ran> {
    let options = args.selection.request().validate()?;
    let store = setup::store(env)?;
    let embedding = args.rate.over(env.embedding()?);
    let queue = Arc::new(MemoryQueue::new());
    let dispatcher = setup::dispatcher_from(&embedding, &store, queue.clone());
    if options.dry_run {
        return Ok(Ran::DryRun(dispatcher.dispatch(&options).await?));
    }
    let max_receive_count = env.max_receive_count()?;
    let worker = setup::worker_from(&embedding, &store, max_receive_count)?;
    if options.mode == Mode::Batch {
        let poller = setup::poller(env, &store, worker)?;
        let summary = dispatcher.dispatch(&options).await?;
        let run_id = summary.run_id.context("the dispatch recorded no run")?;
        let bar = (!args.json).then(Bar::start);
        let every = Duration::from_secs(args.poll.poll_secs);
        let status = poller
            .drive(run_id, every, |_, status| {
                if let Some(bar) = &bar {
                    bar.show(status);
                }
            })
            .await;
        if let Some(bar) = &bar {
            bar.finish();
        }
        return Ok(Ran::Finished(Box::new(status?)));
    }
    let local = LocalOptions {
        concurrency: args.concurrency.into(),
        max_receive_count,
        retry_delay: Duration::from_secs(2),
        message_timeout: Duration::from_secs(600),
    };
    let run_id = RunId::random();
    let bar = (!args.json).then(Bar::start);
    let finished = AtomicBool::new(false);
    let watch = async {
        let Some(bar) = &bar else { return };
        while !finished.load(Ordering::Relaxed) {
            if let Ok(Some(s)) = store.run_status(Some(run_id)).await {
                bar.show(&s);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let work = async {
        let result =
            runner::run_local(&dispatcher, &queue, &worker, run_id, &options, &local).await;
        finished.store(true, Ordering::Relaxed);
        result
    };
    let (result, ()) = tokio::join!(work, watch);
    if let Some(bar) = &bar {
        bar.finish();
    }
    result?;
    let status = store
        .run_status(Some(run_id))
        .await?
        .context("the run vanished from backfill_runs")?;
    Ok(Ran::Finished(Box::new(status)))
}

/// From here to SQS, or through the deployed dispatcher function; a dry run
/// needs no queue.
async fn dispatch<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    args: &DispatchArgs,
) -> Result<DispatchSummary> {
    let request = DispatchRequest {
        continue_run: args.continue_run,
        ..args.selection.request()
    };
    if let Some(function) = &args.function {
        request.clone().into_command()?;
        let lambda = aws_sdk_lambda::Client::new(&aws_config::load_from_env().await);
        return Ok(invoke::dispatch(&lambda, function, &request).await?);
    }
    let command = request.into_command()?;
    let store = setup::store(env)?;
    Ok(match command {
        DispatchCommand::Start(options) if options.dry_run => {
            setup::dispatcher(env, &store, MemoryQueue::new())?
                .dispatch(&options)
                .await?
        }
        DispatchCommand::Start(options) => {
            let queue = setup::sqs_queue(env).await?;
            setup::dispatcher(env, &store, queue)?
                .dispatch(&options)
                .await?
        }
        DispatchCommand::Continue { run, .. } => {
            let queue = setup::sqs_queue(env).await?;
            setup::dispatcher(env, &store, queue)?
                .continue_run(run, None)
                .await?
        }
    })
}

/// Receive loops like the worker Lambda's event source mapping; failed
/// messages are left to the visibility timeout, as SQS would.
async fn work<F: Fn(&str) -> Option<String>>(env: &Env<F>, args: &WorkArgs) -> Result<Tally> {
    let store = setup::store(env)?;
    let embedding = args.rate.over(env.embedding()?);
    let worker = setup::worker_from(&embedding, &store, env.max_receive_count()?)?;
    let queue = setup::sqs_queue(env).await?;
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
        on_failure: OnFailure::Leave,
    };
    // Batch mode's jobs are polled beside the queue, where the provider has
    // a Batch API.
    let poller = setup::poller(env, &store, worker.clone()).ok();
    let stop = tokio::sync::Notify::new();
    let consuming = async {
        let tally = runner::consume(&worker, &queue, &opts).await;
        stop.notify_one();
        tally
    };
    let polling = async {
        let Some(poller) = &poller else { return };
        let every = Duration::from_secs(args.poll.poll_secs);
        loop {
            let deadline = tokio::time::Instant::now() + every.max(Duration::from_secs(900));
            if let Err(e) = poller.tick(None, Some(deadline)).await {
                tracing::warn!(error = %e, "polling the batch jobs failed; trying again");
            }
            // A stop that came during the tick is kept for this wait.
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.notified() => return,
            }
        }
    };
    let (tally, ()) = tokio::join!(consuming, polling);
    Ok(tally?)
}

/// One look at the batch jobs, bounded like the poller Lambda's.
async fn poll<F: Fn(&str) -> Option<String>>(env: &Env<F>, args: &PollArgs) -> Result<TickReport> {
    let store = setup::store(env)?;
    let worker = setup::worker(env, &store)?;
    let poller = setup::poller(env, &store, worker)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    Ok(poller.tick(args.run_id, Some(deadline)).await?)
}

/// Prints the run's status, and again every 2 seconds under `--watch` until
/// it finishes: a loop of calls and prints rather than one.
async fn status<F: Fn(&str) -> Option<String>>(env: &Env<F>, args: &StatusArgs) -> Result<()> {
    let store = setup::store(env)?;
    let queue = match env.queue() {
        Ok(q) => Some(SqsQueue::from_env(q.queue_url).await),
        Err(_) => None,
    };
    let stalled_after = Duration::from_secs(args.stalled_after * 60);
    loop {
        let Some(status) = store.run_status(args.run_id).await? else {
            match args.run_id {
                Some(id) => bail!("no run {id} in backfill_runs"),
                None => bail!("no runs yet: start one with `backfill dispatch` or `backfill run`"),
            }
        };
        let jobs = match RunParams::read(&status.params) {
            Some(p) if p.options.mode == Mode::Batch => store.run_jobs(status.id).await?,
            _ => Vec::new(),
        };
        // A batch run's queue is the provider's, not SQS.
        let queue_empty = if jobs.is_empty() {
            queue_empty(queue.as_ref()).await
        } else {
            None
        };
        let stall = progress::stall(&status, stalled_after, queue_empty, &jobs);
        render::status(&status, &jobs, stall, args.json)?;
        if !args.watch || status.state.is_finished() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        render::refresh(args.json);
    }
}

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

async fn verify<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    args: &VerifyArgs,
) -> Result<Coverage> {
    let store = setup::store(env)?;
    Ok(store
        .coverage(&setup::spec(env)?, args.archive.as_deref())
        .await?)
}

async fn adopt<F: Fn(&str) -> Option<String>>(env: &Env<F>, args: &AdoptArgs) -> Result<Adoption> {
    let store = setup::store(env)?;
    let spec = VectorSpec {
        model: args.model.clone(),
        dimensions: match args.dimensions {
            Some(d) => d,
            None => env.embedding()?.dimensions,
        },
        long_text: args.long_text,
    };
    Ok(store.adopt(&spec, args.archive.as_deref()).await?)
}

async fn redrive<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    args: &RedriveArgs,
) -> Result<RedriveReport> {
    let config = env.queue()?;
    let dlq_url = config
        .dlq_url
        .context("BACKFILL_DLQ_URL is not set: set it to the dead-letter queue's URL (the stack output DeadLetterQueueUrl)")?;
    let queue = SqsQueue::from_env(config.queue_url).await;
    let dlq = SqsQueue::from_env(dlq_url).await;
    Ok(redrive::redrive(&dlq, &queue, args.run_id, args.max).await?)
}

/// The batches queued again.
async fn retry_failed<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    args: &RetryFailedArgs,
) -> Result<u64> {
    let store = setup::store(env)?;
    let queue = setup::sqs_queue(env).await?;
    Ok(redrive::retry_failed(store.as_ref(), &queue, args.run_id, args.unfinished).await?)
}
