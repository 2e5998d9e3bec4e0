//! Builds the stores, embedder and queue from settings: the same wiring for the
//! Lambdas, the CLI and the tests.

use crate::config::{ConfigError, Env};
use crate::dispatch::Dispatcher;
use crate::documents::DocumentStore;
use crate::embedder::{EmbedError, Embedder};
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
    let embedder = Embedder::new(&env.openai()?)?;
    let max_receive_count = env.max_receive_count()?;
    Ok(Worker::new(
        stores.docs.clone(),
        stores.status.clone(),
        embedder,
        max_receive_count,
    ))
}

/// The model and dimensions a run records; the key is not needed to dispatch.
pub fn dispatcher<Q: Queue, F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    stores: &Stores,
    queue: Q,
) -> Result<Dispatcher<Q>, SetupError> {
    let model = env_or(env, "OPENAI_EMBEDDING_MODEL", "text-embedding-3-small");
    let dimensions = env_or(env, "BACKFILL_EMBEDDING_DIMENSIONS", "1536")
        .parse()
        .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
            name: "BACKFILL_EMBEDDING_DIMENSIONS",
            value: env_or(env, "BACKFILL_EMBEDDING_DIMENSIONS", ""),
            reason: e.to_string(),
        })?;
    Ok(Dispatcher::new(
        stores.docs.clone(),
        stores.status.clone(),
        queue,
        model,
        dimensions,
    ))
}

fn env_or<F: Fn(&str) -> Option<String>>(env: &Env<F>, name: &str, default: &str) -> String {
    (env.0)(name)
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

pub async fn sqs_queue<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<SqsQueue, SetupError> {
    let q = env.queue()?;
    Ok(SqsQueue::from_env(q.queue_url).await)
}
