//! Where each vector came from (`backfill_provenance`, incremental/0011)
//! and the rules that read it: what a call or a run wants (`backfill_spec`,
//! `backfill_run_spec`), whether a row still needs a vector
//! (`backfill_needs`), and `backfill_adopt`. The writes of vectors are in
//! `vectors.rs`.

use super::state::{after, raise, Row, State};
use crate::ids::{DocumentId, RunId};
use crate::store::vectors::*;
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ADOPT: &str = "backfill_adopt";

/// How a vector was made: embedded by a run, copied from a row of the same
/// text, or made elsewhere and recorded by `backfill adopt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Api,
    Copy,
    Adopted,
}

impl From<VectorSource> for Source {
    fn from(source: VectorSource) -> Self {
        match source {
            VectorSource::Api => Source::Api,
            VectorSource::Copy => Source::Copy,
        }
    }
}

/// A row of `backfill_provenance`.
#[derive(Clone, Debug)]
pub(super) struct Provenance {
    pub(super) model: String,
    pub(super) dimensions: u32,
    pub(super) long_text: LongText,
    /// Of the whole text as it was when the vector was made.
    pub(super) text_sha256: [u8; 32],
    pub(super) chunks: Option<u32>,
    pub(super) tokens: Option<u64>,
    pub(super) source: Source,
    pub(super) run_id: Option<RunId>,
    /// When the row was written: the copy takes the latest of its donors.
    pub(super) embedded_at: DateTime<Utc>,
}

/// A vector's provenance as a test reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenanceInfo {
    pub model: String,
    pub dimensions: u32,
    pub long_text: LongText,
    /// sha256 of the text the vector was made from, lowercase hex, as
    /// [`Document::sha256`].
    pub sha256: String,
    pub chunks: Option<u32>,
    pub tokens: Option<u64>,
    /// "api", "copy" or "adopted".
    pub source: String,
    pub run_id: Option<RunId>,
}

impl Provenance {
    pub(super) fn info(&self) -> ProvenanceInfo {
        ProvenanceInfo {
            model: self.model.clone(),
            dimensions: self.dimensions,
            long_text: self.long_text,
            sha256: hex(&self.text_sha256),
            chunks: self.chunks,
            tokens: self.tokens,
            source: match self.source {
                Source::Api => "api",
                Source::Copy => "copy",
                Source::Adopted => "adopted",
            }
            .into(),
            run_id: self.run_id,
        }
    }
}

/// `sha256(convert_to(coalesce(content, ''), 'UTF8'))`: of the whole text.
pub(super) fn text_sha256(content: Option<&str>) -> [u8; 32] {
    Sha256::digest(content.unwrap_or_default().as_bytes()).into()
}

/// `encode(..., 'hex')`.
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

/// What a call wants, as `backfill_spec` reads it: which rows, and the
/// vectors they should have. Model and dimensions are `None` only for
/// `missing`, from a run's parameters.
#[derive(Clone, Debug)]
pub(super) struct Want {
    pub(super) select: Select,
    pub(super) model: Option<String>,
    pub(super) dimensions: Option<u32>,
    pub(super) long_text: LongText,
}

impl Want {
    /// A spec from the caller, whose types already hold `backfill_spec`'s
    /// rules but for the range of `dimensions` (an SQL integer).
    pub(super) fn new(
        function: &str,
        select: Select,
        spec: &VectorSpec,
    ) -> Result<Self, StoreError> {
        if i32::try_from(spec.dimensions).is_err() {
            return Err(out_of_range(function, &spec.dimensions.to_string()));
        }
        Ok(Self {
            select,
            model: Some(spec.model.clone()),
            dimensions: Some(spec.dimensions),
            long_text: spec.long_text,
        })
    }

    pub(super) fn of(function: &str, selection: &Selection) -> Result<Self, StoreError> {
        Self::new(function, selection.select, &selection.spec)
    }

    /// `backfill_run_spec`: `params.model`, `params.dimensions` and
    /// `params.options.{select,long_text}`, read as `->>` reads them. A
    /// negative `dimensions`, which the SQL would record, is refused here.
    pub(super) fn of_run(function: &str, params: &Value) -> Result<Self, StoreError> {
        let bad = |message: String| raise(function, "22023", message);
        let select = text(params.pointer("/options/select")).unwrap_or_else(|| "missing".into());
        let long_text =
            text(params.pointer("/options/long_text")).unwrap_or_else(|| "truncate".into());
        let model = text(params.get("model"));
        let dimensions = text(params.get("dimensions"));
        let select: Select = select.parse().map_err(|_| {
            bad(format!(
                "select must be missing, stale or all, not {select}"
            ))
        })?;
        let long_text: LongText = long_text.parse().map_err(|_| {
            bad(format!(
                "long_text must be truncate or average, not {long_text}"
            ))
        })?;
        if select != Select::Missing && (model.is_none() || dimensions.is_none()) {
            return Err(bad(format!(
                "select {select} needs the model and dimensions of the vectors wanted"
            )));
        }
        let dimensions = match dimensions {
            None => None,
            Some(t) => {
                let n: i64 = t.trim().parse().map_err(|_| {
                    raise(
                        function,
                        "22P02",
                        format!("invalid input syntax for type integer: \"{t}\""),
                    )
                })?;
                i32::try_from(n).map_err(|_| out_of_range(function, &t))?;
                Some(u32::try_from(n).map_err(|_| bad(format!("dimensions {n} < 0")))?)
            }
        };
        Ok(Self {
            select,
            model,
            dimensions,
            long_text,
        })
    }

    /// The provenance matches this spec, but maybe not the text.
    pub(super) fn same_spec(&self, p: &Provenance) -> bool {
        self.model.as_deref() == Some(p.model.as_str())
            && self.dimensions == Some(p.dimensions)
            && self.long_text == p.long_text
    }

    /// `backfill_needs`: `missing`, no vector; `stale`, none, or one whose
    /// provenance names another spec or text (a vector without provenance
    /// is left alone); `all`, every row, but one `run` already wrote.
    pub(super) fn needs(&self, row: &Row, p: Option<&Provenance>, run: Option<RunId>) -> bool {
        match self.select {
            Select::Missing => row.embedding.is_none(),
            Select::Stale => match p {
                _ if row.embedding.is_none() => true,
                None => false,
                Some(p) => {
                    !self.same_spec(p) || p.text_sha256 != text_sha256(row.content.as_deref())
                }
            },
            Select::All => match run {
                None => true,
                Some(run) => row.embedding.is_none() || p.and_then(|p| p.run_id) != Some(run),
            },
        }
    }
}

/// `jsonb ->> key`: a string as is, null as NULL, anything else as JSON text.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

pub(super) fn out_of_range(function: &str, value: &str) -> StoreError {
    raise(
        function,
        "22003",
        format!("value \"{value}\" is out of range for type integer"),
    )
}

impl State {
    /// `backfill_adopt`: over the next `max_rows` rows after `after_id`,
    /// counting those of `archive`, records each vector without provenance
    /// as made with `spec` from the row's current text, or counts it when
    /// its dimensions are not `spec`'s.
    pub(super) fn adopt_step(
        &mut self,
        spec: &VectorSpec,
        archive: Option<&str>,
        after_id: Option<DocumentId>,
        max_rows: u32,
    ) -> Result<AdoptStep, StoreError> {
        Want::new(ADOPT, Select::Stale, spec)?;
        if max_rows < 1 {
            return Err(raise(
                ADOPT,
                "22023",
                "p_max_rows must be at least 1".into(),
            ));
        }
        let now = self.stamp();
        let State {
            documents,
            provenance,
            ..
        } = self;
        let mut step = AdoptStep {
            adoption: Adoption::default(),
            last_id: None,
            more: false,
        };
        let mut scanned = 0u64;
        for (id, row) in documents.range(after(after_id)).take(max_rows as usize) {
            scanned += 1;
            step.last_id = Some(*id);
            let Some(embedding) = row.embedding.as_ref() else {
                continue;
            };
            if !row.in_archive(archive) || provenance.contains_key(id) {
                continue;
            }
            if embedding.len() != spec.dimensions as usize {
                step.adoption.wrong_dimensions += 1;
                continue;
            }
            step.adoption.adopted += 1;
            provenance.insert(
                *id,
                Provenance {
                    model: spec.model.clone(),
                    dimensions: spec.dimensions,
                    long_text: spec.long_text,
                    text_sha256: text_sha256(row.content.as_deref()),
                    chunks: None,
                    tokens: None,
                    source: Source::Adopted,
                    run_id: None,
                    embedded_at: now,
                },
            );
        }
        step.more = scanned == u64::from(max_rows);
        Ok(step)
    }
}
