//! Builds the stores, embedder and queue from settings: the same wiring for the
//! Lambdas, the CLI and the tests.

use crate::config::{ConfigError, EmbeddingConfig, Env};
use crate::dispatch::Dispatcher;
use crate::documents::DocumentStore;
use crate::embedder::{self, EmbedError, Embedder};
use crate::queue::{Queue, SqsQueue};
use crate::status::StatusStore;
use crate::supabase::{Rest, RestError};
use crate::worker::Worker;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Rest(#[from] RestError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

#[derive(Clone, Debug)]
pub struct Stores {
    pub docs: DocumentStore,
    pub status: StatusStore,
}

pub fn stores<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Stores, SetupError> {
    let rest = Rest::new(&env.supabase()?)?;
    Ok(Stores {
        docs: DocumentStore::new(rest.clone(), env.target()?),
        status: StatusStore::new(rest),
    })
}

pub fn worker<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    stores: &Stores,
) -> Result<Worker, SetupError> {
    worker_from(&env.embedding()?, stores, env.max_receive_count()?)
}

/// From settings already read, so the CLI can set its flags over them first.
pub fn worker_from(
    embedding: &EmbeddingConfig,
    stores: &Stores,
    max_receive_count: u32,
) -> Result<Worker, SetupError> {
    Ok(Worker::new(
        stores.docs.clone(),
        stores.status.clone(),
        Embedder::new(embedding)?,
        max_receive_count,
    ))
}

/// The provider's limits, tokenizer and prices; its key is not needed to dispatch.
pub fn dispatcher<Q: Queue, F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    stores: &Stores,
    queue: Q,
) -> Result<Dispatcher<Q>, SetupError> {
    Ok(dispatcher_from(&env.embedding()?, stores, queue))
}

/// From settings already read, like [`worker_from`], so one run's dispatcher
/// and worker share them.
pub fn dispatcher_from<Q: Queue>(
    embedding: &EmbeddingConfig,
    stores: &Stores,
    queue: Q,
) -> Dispatcher<Q> {
    Dispatcher::new(
        stores.docs.clone(),
        stores.status.clone(),
        queue,
        embedder::provider(embedding),
    )
}

pub async fn sqs_queue<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<SqsQueue, SetupError> {
    let q = env.queue()?;
    Ok(SqsQueue::from_env(q.queue_url).await)
}
