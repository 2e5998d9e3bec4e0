//! Builds the store, embedder and queue from settings: the same wiring for the
//! Lambdas, the CLI and the tests.

use crate::config::{ConfigError, EmbeddingConfig, Env};
use crate::dispatch::Dispatcher;
use crate::embedder::{self, EmbedError, Embedder};
use crate::queue::{Queue, SqsQueue};
use crate::store::{LongText, PostgrestStore, Store, StoreError, VectorSpec};
use crate::worker::Worker;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// The documents and the status tables, over Supabase's REST API.
pub fn store<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Arc<dyn Store>, SetupError> {
    Ok(Arc::new(PostgrestStore::new(
        &env.supabase()?,
        env.target()?,
    )?))
}

pub fn worker<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    store: &Arc<dyn Store>,
) -> Result<Worker, SetupError> {
    worker_from(&env.embedding()?, store, env.max_receive_count()?)
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

/// The provider's limits, tokenizer and prices; its key is not needed to dispatch.
pub fn dispatcher<Q: Queue, F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    store: &Arc<dyn Store>,
    queue: Q,
) -> Result<Dispatcher<Q>, SetupError> {
    Ok(dispatcher_from(&env.embedding()?, store, queue))
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
