//! Settings read from the environment (or a `.env` file, loaded by the binaries),
//! under the names the old TypeScript tool and Supabase use.

use crate::embedder::Limits;
use crate::keys::Key;
use crate::rate::Budget;
use crate::secret::Secret;
use crate::store::Target;
use std::collections::HashMap;
use std::time::Duration;
use thiserror::Error;

#[derive(Clone, Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("{name} is not set: {hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// Which variable the Supabase key came from, so errors can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    SecretKey,
    ServiceRoleKey,
}

impl KeySource {
    pub fn var_name(self) -> &'static str {
        match self {
            KeySource::SecretKey => "SUPABASE_SECRET_KEY",
            KeySource::ServiceRoleKey => "SUPABASE_SERVICE_ROLE_KEY",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SupabaseConfig {
    /// Base URL of the PostgREST API (project URL plus the REST path).
    pub rest_url: String,
    pub key: Key,
    pub key_source: KeySource,
    pub timeout: Duration,
}

/// Which embedding service, and what it needs (see `embedder`).
#[derive(Clone, Debug)]
pub enum ProviderSettings {
    OpenAi {
        base_url: String,
        api_key: Option<Key>,
    },
    Azure {
        endpoint: String,
        api_key: Option<Key>,
        api_version: String,
        deployment: String,
    },
    Compatible {
        base_url: String,
        api_key: Option<Key>,
        limits: Limits,
        price_per_million_tokens: f64,
    },
}

#[derive(Clone, Debug)]
pub struct EmbeddingConfig {
    pub provider: ProviderSettings,
    /// The model (on Azure: the model the deployment serves).
    pub model: String,
    pub dimensions: u32,
    pub timeout: Duration,
    /// A budget to pace to; without one the governor learns the limits from the API.
    pub budget: Budget,
    /// Requests one process keeps in flight at most.
    pub max_concurrent_requests: usize,
}

impl EmbeddingConfig {
    /// The key a worker needs; a dispatch does without.
    pub fn require_key(&self) -> Result<(), ConfigError> {
        let missing = |name| ConfigError::Missing {
            name,
            hint: OPENAI_KEY_HINT,
        };
        match &self.provider {
            ProviderSettings::OpenAi { api_key: None, .. } => Err(missing("OPENAI_API_KEY")),
            ProviderSettings::Azure { api_key: None, .. } => Err(missing("AZURE_OPENAI_API_KEY")),
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct QueueConfig {
    pub queue_url: String,
    pub dlq_url: Option<String>,
    /// The queue's maxReceiveCount: at that delivery a failing batch is recorded
    /// as failed, since SQS moves it to the dead-letter queue next.
    pub max_receive_count: u32,
}

const SUPABASE_URL_HINT: &str =
    "set it to your Supabase project URL (https://<project-ref>.supabase.co) in the environment or .env";
const SUPABASE_KEY_HINT: &str = "set SUPABASE_SECRET_KEY (sb_secret_...) or SUPABASE_SERVICE_ROLE_KEY (the service_role JWT) from the project's API settings";
const OPENAI_KEY_HINT: &str = "set it to an API key with access to the embeddings API";
const PROVIDER_HINT: &str = "set EMBEDDING_PROVIDER to openai, azure or compatible";
const QUEUE_HINT: &str =
    "set it to the URL of the backfill SQS queue (the stack output WorkQueueUrl)";

/// CloudWatch metrics: their namespace and the `Function` dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub namespace: String,
    pub function: String,
}

/// Reads settings through a lookup function, so tests can pass a map instead of
/// mutating the process environment.
pub struct Env<F: Fn(&str) -> Option<String>> {
    lookup: F,
    /// Keys read from Secrets Manager, by name: they win over the lookup's.
    stored: HashMap<String, Key>,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn new(lookup: F) -> Self {
        Self {
            lookup,
            stored: HashMap::new(),
        }
    }

    /// The same settings with `stored` keys over them.
    pub(crate) fn with_keys(self, stored: HashMap<String, Key>) -> Self {
        Self { stored, ..self }
    }

    pub(crate) fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A key: from a secret when one holds it, else fixed from the lookup.
    fn key(&self, name: &str) -> Option<Key> {
        self.stored
            .get(name)
            .cloned()
            .or_else(|| self.get(name).map(|v| Key::fixed(Secret::new(v))))
    }

    fn require(&self, name: &'static str, hint: &'static str) -> Result<String, ConfigError> {
        self.get(name).ok_or(ConfigError::Missing { name, hint })
    }

    fn parse<T: std::str::FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e: T::Err| ConfigError::Invalid {
                name,
                value: v.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// A positive number, or nothing.
    fn optional(&self, name: &'static str) -> Result<Option<u64>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(ConfigError::Invalid {
                    name,
                    value: v,
                    reason: "it must be a whole number above 0, or unset".into(),
                }),
            },
        }
    }

    pub fn supabase(&self) -> Result<SupabaseConfig, ConfigError> {
        let url = self.require("SUPABASE_URL", SUPABASE_URL_HINT)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                name: "SUPABASE_URL",
                value: url,
                reason: "it must start with https:// (or http:// for a local stack)".into(),
            });
        }
        let path = self
            .get("SUPABASE_REST_PATH")
            .unwrap_or_else(|| "/rest/v1".into());
        let rest_url = format!("{}/{}", url.trim_end_matches('/'), path.trim_matches('/'))
            .trim_end_matches('/')
            .to_string();
        let (key, key_source) = match (
            self.key("SUPABASE_SECRET_KEY"),
            self.key("SUPABASE_SERVICE_ROLE_KEY"),
        ) {
            (Some(k), _) => (k, KeySource::SecretKey),
            (None, Some(k)) => (k, KeySource::ServiceRoleKey),
            (None, None) => {
                return Err(ConfigError::Missing {
                    name: "SUPABASE_SERVICE_ROLE_KEY",
                    hint: SUPABASE_KEY_HINT,
                })
            }
        };
        Ok(SupabaseConfig {
            rest_url,
            key,
            key_source,
            timeout: Duration::from_secs(self.parse("BACKFILL_HTTP_TIMEOUT_SECS", 60u64)?),
        })
    }

    /// The embedding provider's settings, under the names OpenAI's own
    /// clients use where there are such names.
    pub fn embedding(&self) -> Result<EmbeddingConfig, ConfigError> {
        let url = |name: &'static str, default: Option<&str>| -> Result<String, ConfigError> {
            let v = match (self.get(name), default) {
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(ConfigError::Missing {
                        name,
                        hint: "set it to the embeddings service's base URL",
                    })
                }
            };
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    name,
                    value: v,
                    reason: "it must start with https:// (or http://)".into(),
                });
            }
            Ok(v.trim_end_matches('/').to_string())
        };
        let provider = match self.get("EMBEDDING_PROVIDER").as_deref() {
            None | Some("openai") => ProviderSettings::OpenAi {
                base_url: url("OPENAI_BASE_URL", Some("https://api.openai.com/v1"))?,
                api_key: self.key("OPENAI_API_KEY"),
            },
            Some("azure") => ProviderSettings::Azure {
                endpoint: url("AZURE_OPENAI_ENDPOINT", None)?,
                api_key: self.key("AZURE_OPENAI_API_KEY"),
                api_version: self
                    .get("OPENAI_API_VERSION")
                    .unwrap_or_else(|| "2024-10-21".into()),
                deployment: self.require(
                    "AZURE_OPENAI_DEPLOYMENT",
                    "set it to the name of the Azure OpenAI deployment of the embedding model",
                )?,
            },
            Some("compatible") => {
                let inputs: usize = self.parse("EMBEDDING_MAX_INPUTS", 32)?;
                let per_input: usize = self.parse("EMBEDDING_MAX_INPUT_TOKENS", 512)?;
                if inputs == 0 || per_input == 0 {
                    return Err(ConfigError::Invalid {
                        name: "EMBEDDING_MAX_INPUTS",
                        value: format!("{inputs} / {per_input}"),
                        reason:
                            "EMBEDDING_MAX_INPUTS and EMBEDDING_MAX_INPUT_TOKENS must be above 0"
                                .into(),
                    });
                }
                ProviderSettings::Compatible {
                    base_url: url("OPENAI_BASE_URL", None)?,
                    api_key: self.key("OPENAI_API_KEY"),
                    limits: Limits {
                        inputs_per_request: inputs,
                        tokens_per_input: per_input,
                        tokens_per_request: self
                            .parse("EMBEDDING_MAX_REQUEST_TOKENS", inputs * per_input)?,
                    },
                    price_per_million_tokens: self
                        .parse("EMBEDDING_PRICE_PER_MILLION_TOKENS", 0.0)?,
                }
            }
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "EMBEDDING_PROVIDER",
                    value: other.to_string(),
                    reason: PROVIDER_HINT.into(),
                })
            }
        };
        let dimensions: u32 = self.parse("BACKFILL_EMBEDDING_DIMENSIONS", 1536)?;
        if !(1..=3072).contains(&dimensions) {
            return Err(ConfigError::Invalid {
                name: "BACKFILL_EMBEDDING_DIMENSIONS",
                value: dimensions.to_string(),
                reason: "it must be between 1 and 3072, and match the embedding column".into(),
            });
        }
        Ok(EmbeddingConfig {
            provider,
            model: self
                .get("OPENAI_EMBEDDING_MODEL")
                .unwrap_or_else(|| "text-embedding-3-small".into()),
            dimensions,
            timeout: Duration::from_secs(self.parse("BACKFILL_HTTP_TIMEOUT_SECS", 60u64)?),
            budget: self.budget()?,
            max_concurrent_requests: self
                .parse("BACKFILL_MAX_CONCURRENT_REQUESTS", 32usize)?
                .max(1),
        })
    }

    /// This process's share of the account's budget: Lambda instances running
    /// at once (`BACKFILL_RATE_SHARES`, the event source's MaximumConcurrency)
    /// split it evenly.
    fn budget(&self) -> Result<Budget, ConfigError> {
        Ok(Budget {
            tokens_per_minute: self.optional("BACKFILL_TPM_LIMIT")?,
            requests_per_minute: self.optional("BACKFILL_RPM_LIMIT")?,
            shares: self.optional("BACKFILL_RATE_SHARES")?.unwrap_or(1),
        })
    }

    /// How often keys from Secrets Manager are read again, at most: a
    /// rotated key is in use this long after the rotation at the latest, and
    /// at once where the old one is refused.
    pub fn key_refresh(&self) -> Result<Duration, ConfigError> {
        let name = "BACKFILL_KEY_REFRESH_MINUTES";
        let minutes = match self.get(name) {
            None => 10,
            Some(v) => match v.parse::<u64>() {
                Ok(m) if (1..=1440).contains(&m) => m,
                _ => {
                    return Err(ConfigError::Invalid {
                        name,
                        value: v,
                        reason: "it must be a whole number of minutes from 1 to 1440 (a day)"
                            .into(),
                    })
                }
            },
        };
        Ok(Duration::from_secs(minutes * 60))
    }

    pub fn queue(&self) -> Result<QueueConfig, ConfigError> {
        Ok(QueueConfig {
            queue_url: self.require("BACKFILL_QUEUE_URL", QUEUE_HINT)?,
            dlq_url: self.get("BACKFILL_DLQ_URL"),
            max_receive_count: self.max_receive_count()?,
        })
    }

    /// Where the Lambdas' metrics go: `Some` when records are to be written
    /// (under Lambda, unless `BACKFILL_METRICS=off`; elsewhere only with
    /// `BACKFILL_METRICS=emf`), so the CLI prints none by default.
    pub fn metrics(&self) -> Result<Option<MetricsConfig>, ConfigError> {
        let function = self.get("AWS_LAMBDA_FUNCTION_NAME");
        let on = match self.get("BACKFILL_METRICS").as_deref() {
            None => function.is_some(),
            Some("emf") => true,
            Some("off") => false,
            Some(other) => return Err(ConfigError::Invalid {
                name: "BACKFILL_METRICS",
                value: other.into(),
                reason:
                    "it must be emf (CloudWatch Embedded Metric Format records on stdout) or off"
                        .into(),
            }),
        };
        if !on {
            return Ok(None);
        }
        let namespace = self
            .get("BACKFILL_METRICS_NAMESPACE")
            .unwrap_or_else(|| "EmbedBackfill".into());
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._/#:-".contains(c);
        if namespace.len() > 255 || !namespace.chars().all(allowed) {
            return Err(ConfigError::Invalid {
                name: "BACKFILL_METRICS_NAMESPACE",
                value: namespace,
                reason:
                    "a CloudWatch namespace is 1-255 characters of letters, digits and . _ / # : -"
                        .into(),
            });
        }
        Ok(Some(MetricsConfig {
            namespace,
            function: function.unwrap_or_else(|| "backfill".into()),
        }))
    }

    /// The queue's maxReceiveCount; a worker needs it without the queue's URL.
    pub fn max_receive_count(&self) -> Result<u32, ConfigError> {
        let max_receive_count: u32 = self.parse("BACKFILL_MAX_RECEIVE_COUNT", 5)?;
        if max_receive_count == 0 {
            return Err(ConfigError::Invalid {
                name: "BACKFILL_MAX_RECEIVE_COUNT",
                value: "0".into(),
                reason: "it must match the queue's RedrivePolicy maxReceiveCount (at least 1)"
                    .into(),
            });
        }
        Ok(max_receive_count)
    }

    /// Batch mode: the account's queued-token limit for the model (OpenAI's
    /// limits page; 3,000,000 at tier 1), so jobs wait their turn instead of
    /// being refused. Unset, the limit is learned from refusals.
    pub fn batch_queue_tokens(&self) -> Result<Option<u64>, ConfigError> {
        self.optional("BACKFILL_BATCH_QUEUE_TOKENS")
    }

    pub fn target(&self) -> Result<Target, ConfigError> {
        let ident = |name: &'static str, default: &str| -> Result<String, ConfigError> {
            let v = self.get(name).unwrap_or_else(|| default.to_string());
            validate_ident(&v).map_err(|reason| ConfigError::Invalid {
                name,
                value: v.clone(),
                reason,
            })?;
            Ok(v)
        };
        Ok(Target {
            schema: ident("BACKFILL_SCHEMA", "public")?,
            table: ident("BACKFILL_TABLE", "lovdata_documents")?,
            id: ident("BACKFILL_ID_COLUMN", "id")?,
            content: ident("BACKFILL_CONTENT_COLUMN", "content")?,
            archive: ident("BACKFILL_ARCHIVE_COLUMN", "archive")?,
            embedding: ident("BACKFILL_EMBEDDING_COLUMN", "embedding")?,
        })
    }
}

/// Settings from the process environment.
pub fn process_env() -> Env<impl Fn(&str) -> Option<String>> {
    Env::new(|name: &str| std::env::var(name).ok())
}

fn validate_ident(v: &str) -> Result<(), String> {
    let mut chars = v.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || v.len() > 63 {
        return Err("a table or column name must be letters, digits and _ (at most 63), not starting with a digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
