//! Keys that rotate without a cold start. A key read from a Secrets Manager
//! secret is read again before its next use once it is older than the refresh
//! interval (`BACKFILL_KEY_REFRESH_MINUTES`), and at once when an API refuses
//! it; a key set in the environment is fixed. Requests ask the [`Key`] for
//! its value each time, so the next request after a read sends the new one.
//!
//! AWS's `aws_secretsmanager_caching` crate was weighed and left: it calls
//! DescribeSecret when an entry expires, which the functions' role (SAM's
//! AWSSecretsManagerGetSecretValuePolicy) may not, and it cannot re-read on a
//! refusal. This cache calls GetSecretValue only, through
//! [`secrets_manager::fetch`].

use crate::secret::Secret;
use crate::secrets_manager::{self, Scope, SecretsError};
use async_trait::async_trait;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How long one read of a secret may take before the keys held are kept and
/// the request goes on with them.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed read, the wait before the next try (less when the refresh
/// interval is shorter), so an unreachable Secrets Manager is not asked on
/// every request.
const RETRY_FAILED_READ: Duration = Duration::from_secs(60);

/// When keys are read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// A key older than this is read again before its next use.
    pub refresh_every: Duration,
    /// Refusals read a secret again at most this often: a key that is simply
    /// wrong must not turn every request into a GetSecretValue.
    pub refusal_gap: Duration,
}

impl Timing {
    pub const REFUSAL_GAP: Duration = Duration::from_secs(30);

    pub fn every(refresh_every: Duration) -> Self {
        Self {
            refresh_every,
            refusal_gap: Self::REFUSAL_GAP,
        }
    }
}

/// Reads a secret's keys: GetSecretValue, or a unit test's stand-in.
#[async_trait]
pub trait Fetch: Send + Sync {
    async fn fetch(&self, id: &str) -> Result<HashMap<String, Secret>, SecretsError>;
}

#[async_trait]
impl Fetch for aws_sdk_secretsmanager::Client {
    async fn fetch(&self, id: &str) -> Result<HashMap<String, Secret>, SecretsError> {
        secrets_manager::fetch(self, id).await
    }
}

/// An API key or Supabase key, as requests use it.
#[derive(Clone)]
pub struct Key(Source);

#[derive(Clone)]
enum Source {
    Fixed(Secret),
    Stored {
        secret: Arc<StoredSecret>,
        name: String,
        value: Arc<RwLock<Secret>>,
    },
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::Fixed(_) => f.write_str("Key(fixed, ***)"),
            Source::Stored { secret, name, .. } => f
                .debug_struct("Key")
                .field("name", name)
                .field("secret", &secret.id)
                .finish_non_exhaustive(),
        }
    }
}

impl Key {
    /// A key set in the environment: never read again.
    pub fn fixed(value: Secret) -> Self {
        Self(Source::Fixed(value))
    }

    /// The value to send now; a key older than the refresh interval is read
    /// again first. A failed read keeps the old value.
    pub async fn current(&self) -> Secret {
        match &self.0 {
            Source::Fixed(value) => value.clone(),
            Source::Stored { secret, value, .. } => {
                secret.refresh_if_due().await;
                read(value)
            }
        }
    }

    /// After an API refused `used`: the key to try once more, when the secret
    /// holds another one now. Many refusals at once share one read, and
    /// refusals read the secret at most once per [`Timing::refusal_gap`].
    pub async fn refused(&self, used: &Secret) -> Option<Secret> {
        let Source::Stored {
            secret,
            name,
            value,
        } = &self.0
        else {
            return None;
        };
        let mut last_refusal_read = secret.reading.lock().await;
        let held = read(value);
        if held != *used {
            return Some(held);
        }
        if last_refusal_read.is_some_and(|at| at.elapsed() < secret.timing.refusal_gap) {
            tracing::debug!(secret = %secret.id, key = %name, "refused, but the secret was read again moments ago");
            return None;
        }
        *last_refusal_read = Some(Instant::now());
        tracing::info!(secret = %secret.id, key = %name, "the API refused the key; reading the secret again");
        secret.read().await;
        let held = read(value);
        if held == *used {
            tracing::warn!(secret = %secret.id, key = %name, "the secret still holds the refused key");
            return None;
        }
        Some(held)
    }

    /// Runs `send` with the current value; when its answer is a refusal and
    /// the secret now holds another key, runs it once more with that one.
    pub async fn using<T, E, Fut>(
        &self,
        refused: impl Fn(&E) -> bool,
        mut send: impl FnMut(Secret) -> Fut,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let used = self.current().await;
        match send(used.clone()).await {
            Err(e) if refused(&e) => match self.refused(&used).await {
                Some(new) => send(new).await,
                None => Err(e),
            },
            other => other,
        }
    }
}

fn read(value: &RwLock<Secret>) -> Secret {
    value.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// One secret's keys, as last read; every [`Key`] from it shares them.
pub(crate) struct StoredSecret {
    id: String,
    scope: Scope,
    fetch: Arc<dyn Fetch>,
    timing: Timing,
    /// The keys it held at the cold start: a read replaces their values only.
    values: HashMap<String, Arc<RwLock<Secret>>>,
    /// When the keys are next read again.
    due: Mutex<Instant>,
    /// One read at a time; holds when a refusal last caused one.
    reading: tokio::sync::Mutex<Option<Instant>>,
}

impl StoredSecret {
    /// Reads secret `id` for the first time; its keys must be ones `scope`
    /// may hold.
    pub(crate) async fn open(
        id: &str,
        scope: Scope,
        fetch: Arc<dyn Fetch>,
        timing: Timing,
    ) -> Result<Arc<Self>, SecretsError> {
        let keys = fetch.fetch(id).await?;
        scope.check(id, &keys)?;
        Ok(Arc::new(Self {
            id: id.to_string(),
            scope,
            fetch,
            timing,
            values: keys
                .into_iter()
                .map(|(name, value)| (name, Arc::new(RwLock::new(value))))
                .collect(),
            due: Mutex::new(Instant::now() + timing.refresh_every),
            reading: tokio::sync::Mutex::new(None),
        }))
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Its keys, by name.
    pub(crate) fn keys(self: &Arc<Self>) -> impl Iterator<Item = (&str, Key)> + '_ {
        self.values.iter().map(|(name, value)| {
            (
                name.as_str(),
                Key(Source::Stored {
                    secret: self.clone(),
                    name: name.clone(),
                    value: value.clone(),
                }),
            )
        })
    }

    fn is_due(&self) -> bool {
        Instant::now() >= *self.due.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn refresh_if_due(&self) {
        if !self.is_due() {
            return;
        }
        let _reading = self.reading.lock().await;
        // Another request may have read it while this one waited.
        if self.is_due() {
            tracing::info!(secret = %self.id, "keys older than the refresh interval; reading the secret again");
            self.read().await;
        }
    }

    /// Reads the secret again. A failure keeps the keys held, and the next
    /// try waits a while.
    async fn read(&self) {
        let result = match tokio::time::timeout(READ_TIMEOUT, self.fetch.fetch(&self.id)).await {
            Ok(read) => read.and_then(|keys| self.accept(keys)),
            Err(_) => Err(SecretsError::Fetch {
                id: self.id.clone(),
                reason: format!("no answer within {READ_TIMEOUT:?}"),
            }),
        };
        let next = match result {
            Ok(keys) => {
                let mut changed = Vec::new();
                for (name, new) in keys {
                    if let Some(value) = self.values.get(&name) {
                        let mut held = value.write().unwrap_or_else(PoisonError::into_inner);
                        if *held != new {
                            *held = new;
                            changed.push(name);
                        }
                    }
                }
                tracing::info!(secret = %self.id, ?changed, "keys read again from Secrets Manager");
                self.timing.refresh_every
            }
            Err(e) => {
                tracing::warn!(secret = %self.id, error = %e, "could not read the keys again; the ones held stay in use");
                self.timing.refresh_every.min(RETRY_FAILED_READ)
            }
        };
        *self.due.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now() + next;
    }

    /// A read's keys, when they may replace the ones held: only keys this
    /// secret may hold, and every key it held at the start still there.
    /// One it did not hold then waits for the next cold start.
    fn accept(
        &self,
        keys: HashMap<String, Secret>,
    ) -> Result<HashMap<String, Secret>, SecretsError> {
        self.scope.check(&self.id, &keys)?;
        if let Some(gone) = self.values.keys().find(|name| !keys.contains_key(*name)) {
            return Err(SecretsError::KeyGone {
                id: self.id.clone(),
                key: gone.clone(),
            });
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests;
