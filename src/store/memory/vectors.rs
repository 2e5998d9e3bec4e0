//! The writes of vectors, each with its provenance: `backfill_set_vectors`,
//! the one write of a worker's vectors (by a chunk and by a completion),
//! and `backfill_copy_vectors`, which gives a batch's rows the vector of
//! another row of the same text without an API call.

use super::provenance::{out_of_range, text_sha256, Provenance, Source, Want};
use super::state::{raise, Row, State};
use crate::ids::{BatchSeq, DocumentId, RunId};
use crate::store::vectors::*;
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashSet};

const COPY: &str = "backfill_copy_vectors";

/// What `backfill_set_vectors` answers: `{"written", "copied", "tokens_saved"}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Written {
    pub(super) written: u64,
    pub(super) copied: u64,
    pub(super) tokens_saved: u64,
}

/// `decode(text, 'hex')`, with Postgres's errors: whitespace between digit
/// pairs is skipped, either case is read.
fn unhex(function: &str, text: &str) -> Result<Vec<u8>, StoreError> {
    let invalid = |c: char| {
        raise(
            function,
            "22023",
            format!("invalid hexadecimal digit: \"{c}\""),
        )
    };
    let mut out = Vec::with_capacity(text.len() / 2);
    let mut chars = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '\n' | '\r'));
    while let Some(high) = chars.next() {
        let high = high.to_digit(16).ok_or_else(|| invalid(high))?;
        let low = chars.next().ok_or_else(|| {
            raise(
                function,
                "22023",
                "invalid hexadecimal data: odd number of digits".into(),
            )
        })?;
        let low = low.to_digit(16).ok_or_else(|| invalid(low))?;
        out.push((high * 16 + low) as u8);
    }
    Ok(out)
}

/// `backfill_set_vectors`: writes to those of `ids` that still need a vector
/// by `want` (run `run`'s spec, `all` counting what `run` wrote) and still
/// hold the text each vector was made from, and records each one's
/// provenance (made at `now`): how many it wrote, and of them the copies
/// (a second row of a text within the batch) and the tokens those did not
/// cost. Decided on the rows as they were before the call, as one statement
/// sees them; nothing changes on an error.
#[allow(clippy::too_many_arguments)]
pub(super) fn set_vectors(
    function: &str,
    now: DateTime<Utc>,
    documents: &mut BTreeMap<DocumentId, Row>,
    provenance: &mut BTreeMap<DocumentId, Provenance>,
    want: &Want,
    run: RunId,
    vectors: &[VectorRow<'_>],
    ids: &[DocumentId],
) -> Result<Written, StoreError> {
    // jsonb_to_recordset reads `chunks` and `tokens` as integers.
    for n in vectors.iter().flat_map(|v| [u64::from(v.chunks), v.tokens]) {
        if i32::try_from(n).is_err() {
            return Err(out_of_range(function, &n.to_string()));
        }
    }
    let ids: HashSet<DocumentId> = ids.iter().copied().collect();
    // One vector an id (`DISTINCT ON (id)`; the SQL keeps any one of them,
    // this the first), then the UPDATE.
    let mut seen: HashSet<DocumentId> = HashSet::new();
    let mut written: Vec<(usize, [u8; 32])> = Vec::new();
    let mut written_ids: HashSet<DocumentId> = HashSet::new();
    for (i, v) in vectors.iter().enumerate() {
        if !seen.insert(v.id) {
            continue;
        }
        let Some(row) = documents.get(&v.id).filter(|_| ids.contains(&v.id)) else {
            continue;
        };
        let made_from = unhex(function, v.sha256)?;
        if made_from[..] != text_sha256(row.content.as_deref())
            || !want.needs(row, provenance.get(&v.id), Some(run))
            || written_ids.contains(&v.id)
        {
            continue;
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&made_from);
        written_ids.insert(v.id);
        written.push((i, hash));
    }
    if written.is_empty() {
        return Ok(Written::default());
    }
    let not_null = |column: &str| {
        raise(
            function,
            "23502",
            format!(
                "null value in column \"{column}\" of relation \"backfill_provenance\" \
                 violates not-null constraint"
            ),
        )
    };
    let model = want.model.as_ref().ok_or_else(|| not_null("model"))?;
    let dimensions = want.dimensions.ok_or_else(|| not_null("dimensions"))?;
    let mut set = Written::default();
    for (i, hash) in &written {
        let v = &vectors[*i];
        set.written += 1;
        if v.source == VectorSource::Copy {
            set.copied += 1;
            set.tokens_saved += v.tokens;
        }
        if let Some(row) = documents.get_mut(&v.id) {
            row.embedding = Some(v.embedding.to_vec());
        }
        provenance.insert(
            v.id,
            Provenance {
                model: model.clone(),
                dimensions,
                long_text: want.long_text,
                text_sha256: *hash,
                chunks: Some(v.chunks),
                tokens: Some(v.tokens),
                source: v.source.into(),
                run_id: Some(run),
                embedded_at: now,
            },
        );
    }
    Ok(set)
}

/// A row to copy to, the hash of its text, and its donor's vector and
/// provenance.
struct Planned {
    id: DocumentId,
    text_sha256: [u8; 32],
    embedding: Vec<f32>,
    from: Provenance,
}

impl State {
    /// `backfill_copy_vectors`: each of the batch's rows that still needs a
    /// vector by the run's spec (for `all`, one the run has not written) and
    /// whose text is not blank takes the vector of another row whose
    /// provenance names the same text, model, dimensions and policy (for
    /// `all`, written by this run), which still holds that text and a
    /// vector: the latest of them. Its provenance says `copy`, with the
    /// donor's chunks and tokens. The copies count on the batch as written
    /// chunks do, to be counted into the run once at its end. A batch that
    /// ended copies nothing.
    pub(super) fn copy_vectors(&mut self, run: RunId, seq: BatchSeq) -> Result<Copied, StoreError> {
        let now = self.stamp();
        let State {
            documents,
            provenance,
            runs,
            ..
        } = self;
        let r = runs.iter_mut().find(|r| r.id == run);
        // The run's spec is read (and checked) before the batch is looked for.
        let want = r
            .as_ref()
            .map(|r| Want::of_run(COPY, &r.params))
            .transpose()?;
        let missing = || {
            raise(
                COPY,
                "P0002",
                format!("backfill batch {run}/{seq} does not exist"),
            )
        };
        let (r, want) = r.zip(want).ok_or_else(missing)?;
        let b = r.batches.get_mut(&seq).ok_or_else(missing)?;
        if b.state.is_done() {
            return Ok(Copied::default());
        }
        // Decided on the rows as the statement sees them, then written. A
        // donor never needs a vector itself (it has one, current, as the
        // run wants it), so no row is both.
        let ids: HashSet<DocumentId> = b.ids.iter().copied().collect();
        let plan: Vec<Planned> = documents
            .iter()
            .filter(|(id, row)| {
                ids.contains(id)
                    && want.needs(row, provenance.get(id), Some(run))
                    && !blank(row.content.as_deref())
            })
            .filter_map(|(id, row)| {
                let hash = text_sha256(row.content.as_deref());
                let (embedding, from) = donor(documents, provenance, &want, run, *id, &hash)?;
                Some(Planned {
                    id: *id,
                    text_sha256: hash,
                    embedding: embedding.clone(),
                    from: from.clone(),
                })
            })
            .collect();
        let mut copied = Copied::default();
        for p in plan {
            if let Some(row) = documents.get_mut(&p.id) {
                row.embedding = Some(p.embedding);
            }
            copied.copied += 1;
            copied.tokens_saved += p.from.tokens.unwrap_or(0);
            provenance.insert(
                p.id,
                Provenance {
                    text_sha256: p.text_sha256,
                    source: Source::Copy,
                    run_id: Some(run),
                    embedded_at: now,
                    ..p.from
                },
            );
        }
        b.documents_written += copied.copied;
        b.documents_copied += copied.copied;
        b.tokens_saved += copied.tokens_saved;
        Ok(copied)
    }
}

/// `btrim(coalesce(content, ''), E' \t\r\n') = ''`.
fn blank(content: Option<&str>) -> bool {
    content.is_none_or(|c| c.trim_matches([' ', '\t', '\r', '\n']).is_empty())
}

/// The vector `id`, of the text of `hash`, would take, and its provenance:
/// of another row whose provenance has that text and `want`'s model,
/// dimensions and policy (for `all`, `run`'s), and which still holds a
/// vector and that text; the latest written (of equals, the lowest id: the
/// SQL takes any).
fn donor<'a>(
    documents: &'a BTreeMap<DocumentId, Row>,
    provenance: &'a BTreeMap<DocumentId, Provenance>,
    want: &Want,
    run: RunId,
    id: DocumentId,
    hash: &[u8; 32],
) -> Option<(&'a Vec<f32>, &'a Provenance)> {
    provenance
        .iter()
        .filter(|(donor, p)| {
            **donor != id
                && p.text_sha256 == *hash
                && want.same_spec(p)
                && (want.select != Select::All || p.run_id == Some(run))
        })
        .filter_map(|(donor, p)| {
            let row = documents.get(donor)?;
            let embedding = row.embedding.as_ref()?;
            (text_sha256(row.content.as_deref()) == p.text_sha256).then_some((embedding, p))
        })
        .fold(
            None,
            |best: Option<(&Vec<f32>, &Provenance)>, candidate| match best {
                Some(b) if b.1.embedded_at >= candidate.1.embedded_at => Some(b),
                _ => Some(candidate),
            },
        )
}
