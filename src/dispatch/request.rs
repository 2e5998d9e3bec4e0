//! The dispatcher's event as a person writes it: parsing, the checks that
//! name the field at fault, and the options a run records.

use crate::embedder;
use crate::ids::{DocumentId, RunId};
use crate::store::{LongText, Mode, Select};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

pub const DEFAULT_BATCH_SIZE: u32 = 100;
pub const MAX_BATCH_SIZE: u32 = 1000;
pub const DEFAULT_EMBEDDING_BATCH_SIZE: u32 = 100;
/// The most any provider takes; the worker keeps to its own provider's limit.
pub const MAX_EMBEDDING_BATCH_SIZE: u32 = embedder::MAX_INPUTS_PER_REQUEST as u32;
const MAX_ARCHIVE_LEN: usize = 1024;
/// The Batch API's inputs a batch.
pub const MAX_JOB_SIZE: u32 = embedder::BatchTarget::MAX_INPUTS as u32;

fn max_job_size() -> u32 {
    MAX_JOB_SIZE
}

/// The dispatcher's event, as a person writes it. Unknown fields are refused so
/// that a typo (`batchsize`) is not silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_batch_size: Option<u32>,
    /// Which rows: `missing` (the default), `stale` or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Select>,
    /// Texts over the input limit: `truncate` (the default) or `average`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_text: Option<LongText>,
    /// `direct` (the default) or `batch`: through the provider's Batch API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Batch mode: documents a Batch API job holds at most (the API's
    /// 50,000 inputs by default); smaller jobs come back sooner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_size: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Start even though another run over an overlapping archive is active.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Continue a run whose dispatch stopped, instead of starting one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_run: Option<RunId>,
    /// How many continuations led here; bounds a runaway self-invocation chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop: Option<u32>,
}

/// Continuations allowed from one dispatch: at 1,000 pages each, billions of ids.
pub const MAX_HOPS: u32 = 10_000;

/// What an event asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum DispatchCommand {
    Start(DispatchOptions),
    Continue { run: RunId, hop: u32 },
}

/// Checked options, defaults filled in; stored as the run's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DispatchOptions {
    pub archive: Option<String>,
    pub limit: Option<u64>,
    pub resume_from_id: Option<DocumentId>,
    pub batch_size: u32,
    pub embedding_batch_size: u32,
    /// Runs from before selections embedded the missing rows.
    #[serde(default)]
    pub select: Select,
    #[serde(default)]
    pub long_text: LongText,
    /// Runs from before batch mode were direct.
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "max_job_size")]
    pub job_size: u32,
    pub dry_run: bool,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Error, PartialEq)]
pub enum EventError {
    #[error("the dispatcher event is not valid JSON: {0}")]
    NotJson(String),
    #[error("the dispatcher event must be a JSON object such as {{\"archive\": \"gjeldende-lover.tar.bz2\", \"limit\": 1000}}, not {0}")]
    NotAnObject(&'static str),
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
}

fn field(field: &str, reason: impl Into<String>) -> EventError {
    EventError::Field {
        field: field.to_string(),
        reason: reason.into(),
    }
}

impl DispatchRequest {
    /// Reads an event, naming the field at fault.
    pub fn from_value(value: Value) -> Result<Self, EventError> {
        let kind = match &value {
            Value::Object(_) => None,
            Value::Null => Some("null"),
            Value::Array(_) => Some("an array"),
            Value::String(_) => Some("a string"),
            Value::Number(_) => Some("a number"),
            Value::Bool(_) => Some("a boolean"),
        };
        if let Some(kind) = kind {
            return Err(EventError::NotAnObject(kind));
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.inner().to_string();
            let inner = inner
                .split(" at line ")
                .next()
                .unwrap_or(&inner)
                .to_string();
            if path == "." {
                // Unknown fields are reported at the top; serde's text names them.
                EventError::Field {
                    field: inner.split('`').nth(1).unwrap_or("event").to_string(),
                    reason: inner,
                }
            } else {
                field(&path, inner)
            }
        })
    }

    pub fn from_json(text: &str) -> Result<Self, EventError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| EventError::NotJson(e.to_string()))?;
        Self::from_value(value)
    }

    /// A start or a continuation; a continuation takes no other options.
    pub fn into_command(self) -> Result<DispatchCommand, EventError> {
        let Some(run) = self.continue_run else {
            if self.hop.is_some() {
                return Err(field("hop", "only goes with continue_run"));
            }
            return self.validate().map(DispatchCommand::Start);
        };
        let others = DispatchRequest {
            continue_run: None,
            hop: None,
            ..self.clone()
        };
        if others != DispatchRequest::default() {
            return Err(field(
                "continue_run",
                "takes no other options: a continued run keeps the ones it was started with",
            ));
        }
        let hop = self.hop.unwrap_or(1);
        if hop > MAX_HOPS {
            return Err(field("hop", format!("{hop} continuations exceed the limit of {MAX_HOPS}; investigate the run before continuing it by hand")));
        }
        Ok(DispatchCommand::Continue { run, hop })
    }

    /// The options of a new run.
    pub fn validate(self) -> Result<DispatchOptions, EventError> {
        if self.continue_run.is_some() || self.hop.is_some() {
            return Err(field(
                "continue_run",
                "a continuation is not a new run's option",
            ));
        }
        let archive = match self.archive {
            None => None,
            Some(a) if a.is_empty() => {
                return Err(field(
                    "archive",
                    "must not be empty; leave it out to process every archive",
                ))
            }
            Some(a) if a.chars().count() > MAX_ARCHIVE_LEN => {
                return Err(field(
                    "archive",
                    format!("is longer than {MAX_ARCHIVE_LEN} characters"),
                ))
            }
            Some(a) if a.contains('\0') => {
                return Err(field("archive", "must not contain NUL characters"))
            }
            Some(a) => Some(a),
        };
        if self.limit == Some(0) {
            return Err(field(
                "limit",
                "must be at least 1; leave it out to process every document",
            ));
        }
        let resume_from_id = match self.resume_from_id {
            Some(id) if id < 0 => {
                return Err(field(
                    "resume_from_id",
                    format!("must be 0 or more, got {id}"),
                ))
            }
            other => other.map(DocumentId),
        };
        let batch_size = self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
            return Err(field(
                "batch_size",
                format!("must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}"),
            ));
        }
        let embedding_batch_size = self
            .embedding_batch_size
            .unwrap_or(DEFAULT_EMBEDDING_BATCH_SIZE);
        if !(1..=MAX_EMBEDDING_BATCH_SIZE).contains(&embedding_batch_size) {
            return Err(field(
                "embedding_batch_size",
                format!("must be between 1 and {MAX_EMBEDDING_BATCH_SIZE} (the largest limit of inputs per request; each provider's own limit applies too), got {embedding_batch_size}"),
            ));
        }
        let job_size = self.job_size.unwrap_or(MAX_JOB_SIZE);
        if !(1..=MAX_JOB_SIZE).contains(&job_size) {
            return Err(field(
                "job_size",
                format!("must be between 1 and {MAX_JOB_SIZE} (the Batch API's inputs a batch), got {job_size}"),
            ));
        }
        if self.job_size.is_some() && self.mode != Some(Mode::Batch) {
            return Err(field("job_size", "only goes with \"mode\": \"batch\""));
        }
        Ok(DispatchOptions {
            archive,
            limit: self.limit,
            resume_from_id,
            batch_size,
            embedding_batch_size,
            select: self.select.unwrap_or_default(),
            long_text: self.long_text.unwrap_or_default(),
            mode: self.mode.unwrap_or_default(),
            job_size,
            dry_run: self.dry_run,
            force: self.force,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        DispatchRequest::from_json(json)
            .and_then(DispatchRequest::validate)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_follow_the_old_tool() {
        let o = DispatchRequest::from_json("{}")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(o.batch_size, 100);
        assert_eq!(o.embedding_batch_size, 100);
        assert!(!o.dry_run && o.archive.is_none() && o.limit.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            err(r#"{"batchsize": 5}"#).starts_with("batchsize:"),
            "{}",
            err(r#"{"batchsize": 5}"#)
        );
        assert!(err(r#"{"limit": "ten"}"#).starts_with("limit:"));
        assert!(err(r#"{"limit": -1}"#).starts_with("limit:"));
        assert!(err(r#"{"limit": 0}"#).starts_with("limit:"));
        assert!(err(r#"{"batch_size": 0}"#).starts_with("batch_size:"));
        assert!(err(r#"{"embedding_batch_size": 2049}"#).starts_with("embedding_batch_size:"));
        assert!(err(r#"{"archive": ""}"#).starts_with("archive:"));
        assert!(err(r#"{"archive": 7}"#).starts_with("archive:"));
        assert!(err(r#"{"resume_from_id": -5}"#).starts_with("resume_from_id:"));
        assert!(err(r#"{"dry_run": "yes"}"#).starts_with("dry_run:"));
        let select = err(r#"{"select": "changed"}"#);
        assert!(
            select.starts_with("select:") && select.contains("stale"),
            "{select}"
        );
        assert!(err(r#"{"mode": "batch", "job_size": 0}"#).starts_with("job_size:"));
        assert!(err(r#"{"mode": "batch", "job_size": 50001}"#).starts_with("job_size:"));
        assert!(err(r#"{"job_size": 100}"#).contains("mode"));
        let mode = err(r#"{"mode": "cheap"}"#);
        assert!(
            mode.starts_with("mode:") && mode.contains("batch"),
            "{mode}"
        );
        assert!(err("[]").contains("JSON object"));
        assert!(err("null").contains("JSON object"));
        assert!(err("{").contains("not valid JSON"));
    }
}
