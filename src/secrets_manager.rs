//! Keys kept in AWS Secrets Manager. The functions' configuration holds only the
//! secret's ARN (`BACKFILL_SECRET_ID`); the keys are fetched once at cold start
//! and layered over the environment, so nothing readable in the Lambda console
//! or a CloudFormation template is a key.

use crate::config::Env;
use crate::secret::Secret;
use std::collections::HashMap;
use thiserror::Error;

/// Names the secret: an ARN or a name in the function's region.
pub const SECRET_ID_VAR: &str = "BACKFILL_SECRET_ID";

/// The settings a secret may hold; anything else is a mistake worth naming.
const KEYS: [&str; 3] = [
    "OPENAI_API_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_SECRET_KEY",
];

const SHAPE: &str = r#"store a JSON object such as {"OPENAI_API_KEY": "sk-...", "SUPABASE_SERVICE_ROLE_KEY": "eyJ..."}"#;

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

/// The process environment, with the keys of `BACKFILL_SECRET_ID` over it when
/// that is set.
pub async fn environment() -> Result<Env<impl Fn(&str) -> Option<String>>, SecretsError> {
    let keys = match std::env::var(SECRET_ID_VAR) {
        Ok(id) if !id.trim().is_empty() => {
            let client = aws_sdk_secretsmanager::Client::new(&aws_config::load_from_env().await);
            let keys = fetch(&client, id.trim()).await?;
            tracing::info!(secret = %id.trim(), keys = ?keys.keys().collect::<Vec<_>>(), "keys read from Secrets Manager");
            keys
        }
        _ => HashMap::new(),
    };
    Ok(Env(move |name: &str| {
        keys.get(name)
            .map(|s| s.expose().to_string())
            .or_else(|| std::env::var(name).ok())
    }))
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
