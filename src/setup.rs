//! Builds the store, embedder and queue from settings: the same wiring for the
//! Lambdas, the CLI and the tests.

use crate::config::{ConfigError, EmbeddingConfig, Env};
use crate::dispatch::Dispatcher;
use crate::embedder::{self, EmbedError, Embedder};
use crate::jobs::{JobError, Poller};
use crate::metrics::Metrics;
use crate::queue::{Queue, SqsQueue};
use crate::store::{LongText, PostgrestStore, Store, VectorSpec};
use crate::worker::Worker;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Jobs(#[from] JobError),
}

/// The documents and the status tables, over Supabase's REST API.
pub fn store<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Arc<dyn Store>, SetupError> {
    Ok(Arc::new(PostgrestStore::new(
        &env.supabase()?,
        env.target()?,
    )))
}

pub fn worker<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    store: &Arc<dyn Store>,
) -> Result<Worker, SetupError> {
    Ok(
        worker_from(&env.embedding()?, store, env.max_receive_count()?)?
            .with_metrics(metrics(env)?),
    )
}

/// The metrics the settings ask for: EMF records under Lambda, none in the CLI.
pub fn metrics<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Metrics, SetupError> {
    Ok(Metrics::new(env.metrics()?.as_ref()))
}

/// From settings already read, so the CLI can set its flags over them first.
pub fn worker_from(
    embedding: &EmbeddingConfig,
    store: &Arc<dyn Store>,
    max_receive_count: u32,
) -> Result<Worker, SetupError> {
    Ok(Worker::new(
        store.clone(),
        Embedder::new(embedding)?,
        max_receive_count,
    ))
}

/// Batch mode's poller, with `worker` for the batches it embeds directly.
/// Its client has no overall timeout: an input file of 200 MB takes a while
/// to go up, and an output file to come down; a stalled read still ends it.
pub fn poller<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    store: &Arc<dyn Store>,
    worker: Worker,
) -> Result<Poller, SetupError> {
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(120))
        .user_agent(concat!("embed-backfill/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| EmbedError::Transport {
            url: "the Batch API".into(),
            url_var: "OPENAI_BASE_URL",
            reason: e.to_string(),
        })?;
    Ok(
        Poller::new(store.clone(), worker, http, env.batch_queue_tokens()?)?
            .with_metrics(metrics(env)?),
    )
}

/// The provider's limits, tokenizer and prices; its key is not needed to dispatch.
pub fn dispatcher<Q: Queue, F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    store: &Arc<dyn Store>,
    queue: Q,
) -> Result<Dispatcher<Q>, SetupError> {
    Ok(dispatcher_from(&env.embedding()?, store, queue).with_metrics(metrics(env)?))
}

/// From settings already read, like [`worker_from`], so one run's dispatcher
/// and worker share them.
pub fn dispatcher_from<Q: Queue>(
    embedding: &EmbeddingConfig,
    store: &Arc<dyn Store>,
    queue: Q,
) -> Dispatcher<Q> {
    Dispatcher::new(store.clone(), queue, embedder::provider(embedding))
}

/// The vectors this configuration makes, as `verify` checks them.
pub fn spec<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<VectorSpec, SetupError> {
    let provider = embedder::provider(&env.embedding()?);
    Ok(VectorSpec {
        model: provider.model().into(),
        dimensions: provider.dimensions(),
        long_text: LongText::Truncate,
    })
}

pub async fn sqs_queue<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<SqsQueue, SetupError> {
    let q = env.queue()?;
    Ok(SqsQueue::from_env(q.queue_url).await)
}
