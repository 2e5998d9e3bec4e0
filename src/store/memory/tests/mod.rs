//! The SQL functions' rules as the memory store keeps them: each test would
//! pass against a store that only stubs the rule it names.

use super::*;
use serde_json::json;

mod batches;
mod documents;
mod runs;

const LEASE: Duration = Duration::from_secs(60);
const V: [f32; 2] = [0.25, -1.0];

fn d(id: i64) -> DocumentId {
    DocumentId(id)
}

fn params() -> Value {
    json!({ "target": Target::default() })
}

/// Documents 1..=n of archive "a", none with a vector.
fn store(n: i64) -> MemoryStore {
    let store = MemoryStore::new();
    for id in 1..=n {
        store.insert_document(d(id), Some("a"), Some(&format!("text {id}")));
    }
    store
}

fn vectors(ids: &[i64]) -> Vec<VectorRow<'static>> {
    ids.iter()
        .map(|&id| VectorRow {
            id: d(id),
            embedding: &V,
        })
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
    let run = RunId::random();
    store
        .create_run(run, &params(), None, 0.02, false)
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
