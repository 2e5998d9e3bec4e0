//! Keys kept in AWS Secrets Manager. The functions' configuration holds only
//! secrets' ARNs; the keys are read at cold start, and read again as
//! [`crate::keys`] says, so nothing readable in the Lambda console or a
//! CloudFormation template is a key.
//!
//! A function names the secrets it reads: `BACKFILL_SUPABASE_SECRET_ID`
//! (Supabase's key), `BACKFILL_OPENAI_SECRET_ID` (the embeddings key), or
//! `BACKFILL_SECRET_ID`, one secret with any of them (the CLI's simple way).
//! A role then reads only the keys its function uses.

use crate::config::{ConfigError, Env};
use crate::keys::{Fetch, Key, StoredSecret, Timing};
use crate::secret::Secret;
use std::collections::HashMap;
use std::sync::Arc;
use thiserror::Error;

/// The settings a secret may hold; anything else is a mistake worth naming.
const KEYS: [&str; 4] = [
    "OPENAI_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_SECRET_KEY",
];
const SUPABASE_KEYS: [&str; 2] = ["SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SECRET_KEY"];
const EMBEDDINGS_KEYS: [&str; 2] = ["OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"];

const SHAPE: &str = r#"store a JSON object such as {"OPENAI_API_KEY": "sk-...", "SUPABASE_SERVICE_ROLE_KEY": "eyJ..."}"#;

/// Which variable names a secret, and so which keys it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `BACKFILL_SECRET_ID`: any of the keys.
    All,
    /// `BACKFILL_SUPABASE_SECRET_ID`: Supabase's key only.
    Supabase,
    /// `BACKFILL_OPENAI_SECRET_ID`: the embeddings key only.
    Embeddings,
}

impl Scope {
    pub const EVERY: [Scope; 3] = [Scope::All, Scope::Supabase, Scope::Embeddings];

    /// The variable naming the secret: an ARN or a name in the function's region.
    pub fn var(self) -> &'static str {
        match self {
            Scope::All => "BACKFILL_SECRET_ID",
            Scope::Supabase => "BACKFILL_SUPABASE_SECRET_ID",
            Scope::Embeddings => "BACKFILL_OPENAI_SECRET_ID",
        }
    }

    fn may_hold(self, key: &str) -> bool {
        match self {
            Scope::All => KEYS.contains(&key),
            Scope::Supabase => SUPABASE_KEYS.contains(&key),
            Scope::Embeddings => EMBEDDINGS_KEYS.contains(&key),
        }
    }

    /// Refuses a key this secret may not hold, naming the one that may.
    pub fn check(self, id: &str, keys: &HashMap<String, Secret>) -> Result<(), SecretsError> {
        match keys.keys().find(|key| !self.may_hold(key)) {
            None => Ok(()),
            Some(key) => Err(SecretsError::Misplaced {
                id: id.into(),
                var: self.var(),
                key: key.clone(),
                home: if SUPABASE_KEYS.contains(&key.as_str()) {
                    Scope::Supabase.var()
                } else {
                    Scope::Embeddings.var()
                },
            }),
        }
    }
}

/// Messages name the secret and the offending key, never a value.
#[derive(Debug, Error)]
pub enum SecretsError {
    #[error("could not read secret {id} from Secrets Manager ({reason}): check that it exists in this region and that the role may call secretsmanager:GetSecretValue on it (and kms:Decrypt on its key, if it has its own)")]
    Fetch { id: String, reason: String },
    #[error("secret {id} has no text value: {SHAPE}")]
    NotText { id: String },
    #[error("secret {id} is not a JSON object: {SHAPE}")]
    NotObject { id: String },
    #[error("secret {id}: the value of {key} must be a non-empty string")]
    NotString { id: String, key: String },
    #[error("secret {id} holds {key}, which embed-backfill does not read; the keys it reads are {}", KEYS.join(", "))]
    UnknownKey { id: String, key: String },
    #[error("secret {id} ({var}) holds {key}, which it may not: put {key} in the secret {home} names (or in BACKFILL_SECRET_ID's)")]
    Misplaced {
        id: String,
        var: &'static str,
        key: String,
        home: &'static str,
    },
    #[error("{key} is in two secrets, {first} ({first_var}) and {second} ({second_var}): keep it in one")]
    TwoSecrets {
        key: String,
        first: String,
        first_var: &'static str,
        second: String,
        second_var: &'static str,
    },
    #[error("secret {id} no longer holds {key}; the key read before stays in use")]
    KeyGone { id: String, key: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The keys of a secret's JSON text.
pub fn parse(id: &str, text: &str) -> Result<HashMap<String, Secret>, SecretsError> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|_| SecretsError::NotObject { id: id.into() })?;
    object
        .into_iter()
        .map(|(key, value)| {
            if !KEYS.contains(&key.as_str()) {
                return Err(SecretsError::UnknownKey { id: id.into(), key });
            }
            match value {
                serde_json::Value::String(s) if !s.trim().is_empty() => Ok((key, Secret::new(s))),
                _ => Err(SecretsError::NotString { id: id.into(), key }),
            }
        })
        .collect()
}

/// Fetches and parses one secret.
pub async fn fetch(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> Result<HashMap<String, Secret>, SecretsError> {
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| SecretsError::Fetch {
            id: id.into(),
            reason: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
        })?;
    let text = out
        .secret_string()
        .ok_or_else(|| SecretsError::NotText { id: id.into() })?;
    parse(id, text)
}

/// The process environment, with the keys of the secrets it names over it.
pub async fn environment() -> Result<Env<impl Fn(&str) -> Option<String>>, SecretsError> {
    let env = crate::config::process_env();
    let timing = Timing::every(env.key_refresh()?);
    if !Scope::EVERY.iter().any(|s| env.get(s.var()).is_some()) {
        return Ok(env);
    }
    let client = aws_sdk_secretsmanager::Client::new(&aws_config::load_from_env().await);
    load(env, Arc::new(client), timing).await
}

/// `env` with the keys of the secrets it names over its own: each secret
/// read once here, then as `timing` says. A key in two secrets is refused,
/// so which one is used never depends on the order of reading.
pub async fn load<F: Fn(&str) -> Option<String>>(
    env: Env<F>,
    fetch: Arc<dyn Fetch>,
    timing: Timing,
) -> Result<Env<F>, SecretsError> {
    let named: Vec<(Scope, String)> = Scope::EVERY
        .iter()
        .filter_map(|s| env.get(s.var()).map(|id| (*s, id)))
        .collect();
    let secrets = futures::future::try_join_all(
        named
            .iter()
            .map(|(scope, id)| StoredSecret::open(id, *scope, fetch.clone(), timing)),
    )
    .await?;
    let mut keys: HashMap<String, (Key, Scope, &str)> = HashMap::new();
    for ((scope, _), secret) in named.iter().zip(&secrets) {
        let names: Vec<&str> = secret.keys().map(|(name, _)| name).collect();
        tracing::info!(secret = %secret.id(), keys = ?names, "keys read from Secrets Manager");
        for (name, key) in secret.keys() {
            if let Some((_, first_scope, first)) = keys.get(name) {
                return Err(SecretsError::TwoSecrets {
                    key: name.to_string(),
                    first: first.to_string(),
                    first_var: first_scope.var(),
                    second: secret.id().to_string(),
                    second_var: scope.var(),
                });
            }
            keys.insert(name.to_string(), (key, *scope, secret.id()));
        }
    }
    let keys = keys
        .into_iter()
        .map(|(name, (key, ..))| (name, key))
        .collect();
    Ok(env.with_keys(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_known_keys() {
        let keys = parse(
            "s",
            r#"{"OPENAI_API_KEY": "sk-1", "SUPABASE_SERVICE_ROLE_KEY": "eyJ.a.b"}"#,
        )
        .unwrap();
        assert_eq!(keys["OPENAI_API_KEY"].expose(), "sk-1");
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn errors_name_the_key_and_never_the_value() {
        let cases = [
            (r#""sk-leaked-1""#, "not a JSON object"),
            ("sk-leaked-2", "not a JSON object"),
            (r#"{"OPENAI_KEY": "sk-leaked-3"}"#, "holds OPENAI_KEY"),
            (r#"{"OPENAI_API_KEY": 7}"#, "OPENAI_API_KEY must be"),
            (r#"{"OPENAI_API_KEY": " "}"#, "OPENAI_API_KEY must be"),
        ];
        for (text, expected) in cases {
            let err = parse("prod/keys", text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(err.contains("prod/keys"), "{err}");
            assert!(!err.contains("leaked"), "{err}");
        }
    }
}
