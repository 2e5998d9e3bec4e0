//! The SQL functions' rules as the memory store keeps them: each test would
//! pass against a store that only stubs the rule it names.

use super::*;
use serde_json::json;
use sha2::Digest;

mod adopt;
mod batches;
mod copies;
mod documents;
mod jobs;
mod provenance;
mod runs;

const LEASE: Duration = Duration::from_secs(60);
const V: [f32; 2] = [0.25, -1.0];
const MODEL: &str = "m";

fn d(id: i64) -> DocumentId {
    DocumentId(id)
}

/// A run's parameters as the dispatcher records them, selecting `missing`.
fn params() -> Value {
    json!({ "target": Target::default(), "model": MODEL, "dimensions": V.len() })
}

/// The same, selecting `select` with `long_text` (`None`: left out).
fn params_for(select: Select, long_text: Option<LongText>) -> Value {
    let mut p = params();
    p["options"] = json!({ "select": select, "long_text": long_text });
    p
}

/// The spec of [`params`]: model [`MODEL`], the dimensions of [`V`].
fn spec() -> VectorSpec {
    VectorSpec {
        model: MODEL.into(),
        dimensions: V.len() as u32,
        long_text: LongText::Truncate,
    }
}

fn sel(select: Select) -> Selection {
    Selection {
        select,
        spec: spec(),
    }
}

/// The hex sha256 of a text, computed here rather than by the store.
fn sha(text: &str) -> &'static str {
    let digest = sha2::Sha256::digest(text.as_bytes());
    String::leak(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// A vector of [`V`] made from `text`, from one input of 3 tokens.
fn vector(id: i64, text: &str) -> VectorRow<'static> {
    VectorRow {
        id: d(id),
        embedding: &V,
        sha256: sha(text),
        chunks: 1,
        tokens: 3,
        source: VectorSource::Api,
    }
}

/// Documents 1..=n of archive "a", none with a vector.
fn store(n: i64) -> MemoryStore {
    let store = MemoryStore::new();
    for id in 1..=n {
        store.insert_document(d(id), Some("a"), Some(&format!("text {id}")));
    }
    store
}

/// Vectors of [`store`]'s texts, as a worker would make them.
fn vectors(ids: &[i64]) -> Vec<VectorRow<'static>> {
    ids.iter()
        .map(|&id| vector(id, &format!("text {id}")))
        .collect()
}

fn code(err: &StoreError) -> (&str, &str) {
    match err {
        StoreError::Server {
            function,
            status: 500,
            code,
            hint: None,
            ..
        } => (function, code),
        other => panic!("not a server error: {other:?}"),
    }
}

/// A run whose dispatch recorded and queued `batches` (seq 0, 1, ...) and ended.
async fn dispatched(store: &MemoryStore, batches: &[&[i64]]) -> RunId {
    dispatched_with(store, &params(), batches).await
}

/// The same, for a run of `params`; `force`d past any other active run.
async fn dispatched_with(store: &MemoryStore, params: &Value, batches: &[&[i64]]) -> RunId {
    let run = RunId::random();
    store
        .create_run(run, params, None, 0.02, true)
        .await
        .unwrap();
    let new: Vec<NewBatch> = batches
        .iter()
        .enumerate()
        .map(|(i, ids)| NewBatch {
            seq: BatchSeq(i as u32),
            ids: ids.iter().map(|&id| d(id)).collect(),
            estimated_tokens: 10,
        })
        .collect();
    let last = batches.iter().flat_map(|b| b.iter()).max().unwrap();
    store.add_batches(run, &new, d(*last)).await.unwrap();
    let seqs: Vec<BatchSeq> = new.iter().map(|b| b.seq).collect();
    assert_eq!(
        store.mark_queued(run, &seqs).await.unwrap(),
        seqs.len() as u64
    );
    store.finish_dispatch(run).await.unwrap();
    run
}

async fn status(store: &MemoryStore, run: RunId) -> RunStatus {
    store.run_status(Some(run)).await.unwrap().unwrap()
}
