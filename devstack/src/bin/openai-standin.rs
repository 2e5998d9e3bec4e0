//! The local stand-in for OpenAI's embeddings API (see `devstack::standin`).

use anyhow::Context;
use clap::Parser;
use devstack::standin::{self, Config};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "openai-standin",
    version,
    about = "OpenAI-compatible /v1/embeddings server, with the Batch API (/v1/files, /v1/batches), for tests, demos and benchmarks",
    after_help = "Fault markers: an input containing [[fail:400]] is rejected with 400, [[fail:429]] gets a 429 rate_limit_exceeded, [[fail:quota]] a 429 insufficient_quota, [[fail:500]] a 500. A model it does not serve gets 404 model_not_found. In a batch, a marker fails its line only, which goes to the batch's error file; output lines come in a shuffled order seeded by --seed."
)]
struct Args {
    /// Address to listen on
    #[arg(long, env = "STANDIN_LISTEN", default_value = "127.0.0.1:55435")]
    listen: String,
    /// The one API key accepted as `Authorization: Bearer KEY`
    #[arg(long, env = "STANDIN_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Vector length when a request gives no `dimensions`
    #[arg(long, env = "STANDIN_DIMENSIONS", default_value_t = 1536)]
    dimensions: usize,
    /// Fixed latency of every answer, in milliseconds
    #[arg(long, env = "STANDIN_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Extra latency per 1,000 input tokens, in milliseconds
    #[arg(long, env = "STANDIN_LATENCY_PER_1K_TOKENS_MS", default_value_t = 0)]
    latency_per_1k_tokens_ms: u64,
    /// Tokens per minute before 429s (none by default)
    #[arg(long, env = "STANDIN_TPM")]
    tpm: Option<u64>,
    /// Requests per minute before 429s (none by default)
    #[arg(long, env = "STANDIN_RPM")]
    rpm: Option<u64>,
    /// Share of requests answered 500 or 503 at random
    #[arg(long, env = "STANDIN_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Seed of the random faults, ids and the order of batch output lines
    #[arg(long, env = "STANDIN_SEED", default_value_t = 42)]
    seed: u64,
    /// Batch API: milliseconds from a batch's creation to its completion (0:
    /// it completes when it is first retrieved)
    #[arg(long, env = "STANDIN_BATCH_COMPLETE_MS", default_value_t = 0)]
    batch_complete_ms: u64,
    /// Batch API: share of every batch's lines left unfinished, so the batch
    /// ends `expired` and those lines get `batch_expired` errors (0: none)
    #[arg(long, env = "STANDIN_BATCH_EXPIRE_SHARE", default_value_t = 0.0)]
    batch_expire_share: f64,
    /// Batch API: only the first N batches created expire (default: every one)
    #[arg(long, env = "STANDIN_BATCH_EXPIRE_FIRST")]
    batch_expire_first: Option<usize>,
    /// Batch API: queued prompt tokens per model in unfinished batches before a
    /// new batch fails with `token_limit_exceeded` (none by default)
    #[arg(long, env = "STANDIN_BATCH_QUEUE_TOKENS")]
    batch_queue_tokens: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.error_rate),
        "--error-rate must be between 0 and 1"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.batch_expire_share),
        "--batch-expire-share must be between 0 and 1"
    );
    anyhow::ensure!(args.dimensions > 0, "--dimensions must be at least 1");
    anyhow::ensure!(!args.api_key.is_empty(), "--api-key must not be empty");
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("openai-standin listening on {}", listener.local_addr()?);
    let config = Config {
        api_key: args.api_key.into(),
        dimensions: args.dimensions,
        latency: Duration::from_millis(args.latency_ms),
        latency_per_1k_tokens: Duration::from_millis(args.latency_per_1k_tokens_ms),
        tpm: args.tpm,
        rpm: args.rpm,
        error_rate: args.error_rate,
        seed: args.seed,
        batch_complete_after: Duration::from_millis(args.batch_complete_ms),
        batch_expire_share: args.batch_expire_share,
        batch_expire_first: args.batch_expire_first,
        batch_queue_tokens: args.batch_queue_tokens,
    };
    standin::serve(listener, config).await?;
    Ok(())
}
