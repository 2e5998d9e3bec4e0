//! The command line: every subcommand, flag and help text.

use clap::{Args, Parser, Subcommand};
use embed_backfill::config::EmbeddingConfig;
use embed_backfill::dispatch::DispatchRequest;
use embed_backfill::ids::RunId;
use embed_backfill::store::{LongText, Mode, Select};

#[derive(Parser)]
#[command(name = "backfill", version, about = "Backfill OpenAI embeddings into a Supabase table", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Dispatch and embed in this one process, with no AWS: the old script's job, concurrently.
    Run(RunArgs),
    /// Page the ids into batches and queue one SQS message per batch (what the dispatcher Lambda does).
    Dispatch(DispatchArgs),
    /// Consume the SQS queue the way the worker Lambda's event source mapping does.
    Work(WorkArgs),
    /// Show a run's state, progress, rate, ETA, cost and failures (the latest run by default).
    Status(StatusArgs),
    /// Check embedding coverage, as the guide's SQL does, and each vector's
    /// state: current, stale (by text or by model), unknown.
    Verify(VerifyArgs),
    /// Record vectors made elsewhere (by the old script, by hand) as made by
    /// MODEL from their rows' current texts, without calling any API.
    Adopt(AdoptArgs),
    /// Move messages from the dead-letter queue back to the queue.
    Redrive(RedriveArgs),
    /// Queue a run's failed batches again, from the status tables.
    RetryFailed(RetryFailedArgs),
    /// Batch mode: collect the Batch API jobs that ended and submit ready
    /// ones, once (what the poller Lambda does each minute).
    Poll(PollArgs),
}

#[derive(Args, Clone)]
pub struct Selection {
    /// Maximum number of documents to process (default: all)
    #[arg(long)]
    pub limit: Option<u64>,
    /// Only process documents whose archive equals this exactly
    #[arg(long)]
    pub archive: Option<String>,
    /// Start after this document id (ids are processed in ascending order)
    #[arg(long, value_name = "ID", allow_negative_numbers = true)]
    pub resume_from_id: Option<i64>,
    /// Documents per batch, i.e. per SQS message and status write [default: 100, max: 1000]
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Inputs per embeddings request [default: 100; the provider's own limit applies too]
    #[arg(long)]
    pub embedding_batch_size: Option<u32>,
    /// Which rows: missing (no vector), stale (also those made from another
    /// text or with another model), all (every row) [default: missing]
    #[arg(long, value_name = "ROWS")]
    pub select: Option<Select>,
    /// Texts over the model's input limit: truncate (embed the first 8,191
    /// tokens) or average (embed every chunk, store their token-weighted
    /// mean) [default: truncate]
    #[arg(long, value_name = "POLICY")]
    pub long_text: Option<LongText>,
    /// direct (requests answered at once) or batch (OpenAI's Batch API: half
    /// the price, a separate quota, answered within 24 hours) [default: direct]
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Batch mode: documents a Batch API job holds at most [default and
    /// max: 50,000]; smaller jobs come back sooner
    #[arg(long, value_name = "DOCUMENTS")]
    pub job_size: Option<u32>,
    /// Count documents, tokens and cost from the real texts, and every row's
    /// state; write and queue nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Start even though another run over an overlapping archive is still active
    #[arg(long)]
    pub force: bool,
}

impl Selection {
    /// The same request the dispatcher Lambda takes, so both validate alike.
    pub fn request(&self) -> DispatchRequest {
        DispatchRequest {
            archive: self.archive.clone(),
            limit: self.limit,
            resume_from_id: self.resume_from_id,
            batch_size: self.batch_size,
            embedding_batch_size: self.embedding_batch_size,
            select: self.select,
            long_text: self.long_text,
            mode: self.mode,
            job_size: self.job_size,
            dry_run: self.dry_run,
            force: self.force,
            ..Default::default()
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Batches embedded at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    #[command(flatten)]
    pub rate: RateArgs,
    #[command(flatten)]
    pub poll: PollEvery,
    /// Print the final status as JSON instead of a progress bar
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone, Copy)]
pub struct PollEvery {
    /// Batch mode: seconds between looks at the Batch API jobs
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub poll_secs: u64,
}

#[derive(Args)]
pub struct PollArgs {
    /// Only this run's jobs (default: every run over the configured table)
    #[arg(long = "run", value_name = "RUN_ID")]
    pub run_id: Option<RunId>,
    /// Seconds the poll may take, like the poller Lambda's timeout
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    #[arg(long)]
    pub json: bool,
}

// Above 0, as the environment's limits must be: a budget of 0 would let no
// request through.
#[derive(Args, Clone, Copy)]
pub struct RateArgs {
    /// Tokens per minute to stay under [env: BACKFILL_TPM_LIMIT; default: the limit the API reports]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub tpm: Option<u64>,
    /// Requests per minute to stay under [env: BACKFILL_RPM_LIMIT; default: the limit the API reports]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rpm: Option<u64>,
}

impl RateArgs {
    /// The settings with these flags over the environment's budget.
    pub fn over(self, mut embedding: EmbeddingConfig) -> EmbeddingConfig {
        let budget = &mut embedding.budget;
        budget.tokens_per_minute = self.tpm.or(budget.tokens_per_minute);
        budget.requests_per_minute = self.rpm.or(budget.requests_per_minute);
        embedding
    }
}

#[derive(Args)]
pub struct DispatchArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Continue a run whose dispatch stopped, from its saved cursor (takes no other option)
    #[arg(long = "continue", value_name = "RUN_ID")]
    pub continue_run: Option<RunId>,
    /// Invoke the deployed dispatcher function instead of dispatching from here
    /// (the stack output DispatcherFunctionName; AWS_ENDPOINT_URL_LAMBDA points elsewhere)
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RedriveArgs {
    /// Only this run's messages (others stay in the dead-letter queue)
    #[arg(long = "run", value_name = "RUN_ID")]
    pub run_id: Option<RunId>,
    /// Move at most this many messages
    #[arg(long)]
    pub max: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RetryFailedArgs {
    pub run_id: RunId,
    /// Also queue batches that never ended (pending, queued, running,
    /// retrying): for a run stuck with empty queues after a crashed last
    /// delivery or expired dead letters. A batch queued twice counts once.
    #[arg(long)]
    pub unfinished: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct WorkArgs {
    /// Stop when the queue is empty instead of polling forever
    #[arg(long)]
    pub until_empty: bool,
    /// Receive loops at once, each handling up to --batch-size messages
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Messages per receive, handled as one event: the event source mapping's
    /// BatchSize (the template's WorkerBatchSize)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=10))]
    pub batch_size: u8,
    /// Seconds one receive may take, like the worker Lambda's timeout
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub rate: RateArgs,
    #[command(flatten)]
    pub poll: PollEvery,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The run (default: the latest)
    pub run_id: Option<RunId>,
    /// Call a run stalled when no batch of it has ended for this many minutes
    /// and the queue (BACKFILL_QUEUE_URL, where set) holds no message
    #[arg(long, value_name = "MINUTES", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub stalled_after: u64,
    /// Refresh every 2 seconds until the run finishes
    #[arg(long)]
    pub watch: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[arg(long)]
    pub archive: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct AdoptArgs {
    /// The model that made the vectors, as the API names it (e.g. text-embedding-3-small)
    #[arg(long)]
    pub model: String,
    /// Their dimensions [default: BACKFILL_EMBEDDING_DIMENSIONS, or 1536]
    #[arg(long)]
    pub dimensions: Option<u32>,
    /// What was done with texts over the model's input limit
    #[arg(long, value_name = "POLICY", default_value_t = LongText::Truncate)]
    pub long_text: LongText,
    /// Only rows of this archive
    #[arg(long)]
    pub archive: Option<String>,
    #[arg(long)]
    pub json: bool,
}
