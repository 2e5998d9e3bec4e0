//! Text dedup: a row takes the vector of another row of the same text made
//! as its run wants it (`backfill_copy_vectors`), a batch's second row of a
//! text is written as a copy, and both are counted into the run once, as
//! copies and the tokens they saved.

use super::*;

const W: [f32; 2] = [0.5, 0.5];
const X: [f32; 2] = [1.0, 0.0];
const S0: BatchSeq = BatchSeq(0);

/// Documents of archive "a" with these texts, none with a vector.
fn texts(rows: &[(i64, &str)]) -> MemoryStore {
    let store = MemoryStore::new();
    for (id, text) in rows {
        store.insert_document(d(*id), Some("a"), Some(text));
    }
    store
}

/// A vector made from `text` from two inputs of `tokens` tokens in all.
fn row(
    id: i64,
    text: &str,
    embedding: &'static [f32],
    tokens: u64,
    source: VectorSource,
) -> VectorRow<'static> {
    VectorRow {
        id: d(id),
        embedding,
        sha256: sha(text),
        chunks: 2,
        tokens,
        source,
    }
}

fn api(id: i64, text: &str, embedding: &'static [f32], tokens: u64) -> VectorRow<'static> {
    row(id, text, embedding, tokens, VectorSource::Api)
}

fn copy(id: i64, text: &str, embedding: &'static [f32], tokens: u64) -> VectorRow<'static> {
    row(id, text, embedding, tokens, VectorSource::Copy)
}

/// A run of `params` whose one batch writes `rows` and ends.
async fn embedded(store: &MemoryStore, params: &Value, rows: &[VectorRow<'_>]) -> RunId {
    let ids: Vec<i64> = rows.iter().map(|v| v.id.0).collect();
    let run = dispatched_with(store, params, &[&ids]).await;
    let done = store.complete_batch(run, S0, rows, 1, &[]).await.unwrap();
    assert_eq!(done.written, rows.len() as u64);
    run
}

fn copied(copied: u64, tokens_saved: u64) -> Copied {
    Copied {
        copied,
        tokens_saved,
    }
}

/// (documents_embedded, documents_copied, tokens_saved) of the run.
async fn counted(store: &MemoryStore, run: RunId) -> (u64, u64, u64) {
    let s = status(store, run).await;
    (s.documents_embedded, s.documents_copied, s.tokens_saved)
}

#[tokio::test]
async fn a_row_takes_the_vector_of_its_text_from_an_earlier_run() {
    let blank = " \t\r\n";
    let store = texts(&[
        (1, "same"),
        (2, "same"),
        (3, blank),
        (4, blank),
        (5, "other"),
        (6, "same"),
        (7, "same"),
    ]);
    embedded(
        &store,
        &params(),
        &[api(1, "same", &W, 7), api(3, blank, &V, 1)],
    )
    .await;
    // A later vector of the same text, but of another model: no donor.
    let mut old = params();
    old["model"] = json!("old");
    embedded(&store, &old, &[api(7, "same", &X, 9)]).await;

    let run = dispatched(&store, &[&[2, 4, 5, 6]]).await;
    store.begin_batch(run, S0, 1, LEASE).await.unwrap();
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(2, 14));
    assert_eq!(store.embedding_of(d(2)), Some(W.to_vec()));
    assert_eq!(store.embedding_of(d(6)), Some(W.to_vec()));
    assert_eq!(store.embedding_of(d(4)), None, "a blank text is not copied");
    let want = ProvenanceInfo {
        model: MODEL.into(),
        dimensions: 2,
        long_text: LongText::Truncate,
        sha256: sha("same").into(),
        chunks: Some(2),
        tokens: Some(7),
        source: "copy".into(),
        run_id: Some(run),
    };
    assert_eq!(store.provenance_of(d(2)), Some(want));
    assert_eq!(counted(&store, run).await, (0, 0, 0), "not before the end");

    // The copies need nothing more: a second call copies nothing, and the
    // fetch leaves them out.
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(0, 0));
    let ids = [2, 4, 5, 6].map(d);
    let f = store
        .fetch_missing(&sel(Select::Missing), Some(run), &ids, None, None)
        .await
        .unwrap();
    let fetched: Vec<i64> = f.documents.iter().map(|doc| doc.id.0).collect();
    assert_eq!(fetched, vec![4, 5]);

    let done = store
        .complete_batch(run, S0, &[api(5, "other", &V, 3)], 3, &[])
        .await
        .unwrap();
    assert_eq!(
        (done.counted, done.written, done.copied, done.skipped),
        (true, 3, 2, 1)
    );
    assert_eq!(counted(&store, run).await, (3, 2, 14));
    assert_eq!(status(&store, run).await.tokens_used, 3);

    // A batch that ended copies nothing.
    store.set_embedding(d(2), None);
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(0, 0));
    assert_eq!(store.embedding_of(d(2)), None);
    assert_eq!(counted(&store, run).await, (3, 2, 14));

    for (r, seq) in [(run, BatchSeq(9)), (RunId::random(), S0)] {
        let err = store.copy_vectors(r, seq).await.unwrap_err();
        assert_eq!(code(&err), ("backfill_copy_vectors", "P0002"));
    }
    // The run's spec is read before the batch is looked for.
    let mut bad = params();
    bad["options"] = json!({ "select": "some" });
    let bad = dispatched_with(&store, &bad, &[&[5]]).await;
    let err = store.copy_vectors(bad, BatchSeq(9)).await.unwrap_err();
    assert_eq!(code(&err), ("backfill_copy_vectors", "22023"));
}

#[tokio::test]
async fn no_copy_from_a_row_whose_text_or_vector_changed() {
    let store = texts(&[
        (1, "same"),
        (2, "same"),
        (3, "same"),
        (4, "old"),
        (5, "same"),
    ]);
    embedded(&store, &params(), &[api(5, "same", &V, 11)]).await;
    embedded(
        &store,
        &params(),
        &[
            api(1, "same", &W, 7),
            api(2, "same", &X, 7),
            api(4, "old", &X, 2),
        ],
    )
    .await;
    store.set_content(d(1), Some("edited"));
    store.set_embedding(d(2), None);

    // Rows 1 and 2 are later, but only row 5 still holds its vector's text
    // and a vector.
    let run = dispatched(&store, &[&[3]]).await;
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(1, 11));
    assert_eq!(store.embedding_of(d(3)), Some(V.to_vec()));
    store.set_embedding(d(5), None);
    store.set_content(d(3), Some("edited too"));
    let run = dispatched(&store, &[&[2]]).await;
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(0, 0));
    assert_eq!(store.embedding_of(d(2)), None);
    store
        .complete_batch(run, S0, &[api(2, "same", &W, 3)], 3, &[])
        .await
        .unwrap();

    // Under `stale`, a row whose text became "same" takes row 2's vector;
    // row 1, whose text changed, finds no donor of "edited".
    store.set_content(d(4), Some("same"));
    let stale = dispatched_with(&store, &params_for(Select::Stale, None), &[&[1, 4]]).await;
    assert_eq!(store.copy_vectors(stale, S0).await.unwrap(), copied(1, 3));
    assert_eq!(store.embedding_of(d(4)), Some(W.to_vec()));
    let p = store.provenance_of(d(4)).unwrap();
    assert_eq!(
        (p.sha256.as_str(), p.source.as_str(), p.run_id),
        (sha("same"), "copy", Some(stale))
    );
    assert_eq!(store.embedding_of(d(1)), Some(W.to_vec()), "left stale");
}

#[tokio::test]
async fn all_copies_only_from_rows_of_its_own_run() {
    let store = texts(&[(1, "same"), (2, "same"), (3, "same")]);
    embedded(&store, &params(), &[api(1, "same", &W, 7)]).await;
    let run = dispatched_with(&store, &params_for(Select::All, None), &[&[1, 2], &[3]]).await;
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(0, 0));
    assert_eq!(store.embedding_of(d(2)), None);

    let rows = [api(1, "same", &V, 3), copy(2, "same", &V, 3)];
    let done = store.complete_batch(run, S0, &rows, 3, &[]).await.unwrap();
    assert_eq!((done.written, done.copied), (2, 1));
    let s1 = BatchSeq(1);
    assert_eq!(store.copy_vectors(run, s1).await.unwrap(), copied(1, 3));
    assert_eq!(store.embedding_of(d(3)), Some(V.to_vec()));
    let done = store.complete_batch(run, s1, &[], 0, &[]).await.unwrap();
    assert_eq!((done.written, done.copied, done.skipped), (1, 1, 0));
    assert_eq!(counted(&store, run).await, (3, 2, 6));
}

#[tokio::test]
async fn the_latest_donor_gives_its_vector() {
    let store = texts(&[
        (1, "same"),
        (2, "same"),
        (3, "same"),
        (4, "same"),
        (5, "same"),
    ]);
    embedded(&store, &params(), &[api(2, "same", &V, 3)]).await;
    embedded(&store, &params(), &[api(1, "same", &W, 4)]).await;
    let run = dispatched(&store, &[&[3]]).await;
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(1, 4));
    assert_eq!(store.embedding_of(d(3)), Some(W.to_vec()));

    embedded(&store, &params(), &[api(4, "same", &X, 5)]).await;
    let run = dispatched(&store, &[&[5]]).await;
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(1, 5));
    assert_eq!(store.embedding_of(d(5)), Some(X.to_vec()));
}

#[tokio::test]
async fn copies_count_once_across_a_transient_failure_and_a_redelivery() {
    let store = texts(&[
        (1, "dup"),
        (2, "dup"),
        (3, "three"),
        (4, "four"),
        (9, "four"),
    ]);
    embedded(&store, &params(), &[api(9, "four", &W, 5)]).await;
    let run = dispatched(&store, &[&[1, 2, 3, 4]]).await;

    store.begin_batch(run, S0, 1, LEASE).await.unwrap();
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(1, 5));
    let chunk = [api(1, "dup", &V, 4), copy(2, "dup", &V, 4)];
    assert_eq!(store.write_vectors(run, S0, &chunk).await.unwrap(), 2);
    let fail = store.fail_batch(run, S0, "slow", false, 4).await.unwrap();
    assert!(!fail.counted);
    assert_eq!(counted(&store, run).await, (0, 0, 0));

    let again = store.begin_batch(run, S0, 2, LEASE).await.unwrap();
    assert_eq!(again.state, Some(BatchState::Running));
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(0, 0));
    let rows = [
        api(1, "dup", &V, 4),
        copy(2, "dup", &V, 4),
        api(3, "three", &X, 6),
    ];
    let done = store.complete_batch(run, S0, &rows, 10, &[]).await.unwrap();
    assert_eq!(
        (done.counted, done.written, done.copied, done.skipped),
        (true, 4, 2, 0)
    );
    assert_eq!(counted(&store, run).await, (4, 2, 9));

    let twice = store.complete_batch(run, S0, &rows, 10, &[]).await.unwrap();
    assert_eq!((twice.counted, twice.written, twice.copied), (false, 0, 0));
    assert_eq!(counted(&store, run).await, (4, 2, 9));
}

#[tokio::test]
async fn a_permanent_failure_counts_the_copies_already_written() {
    let store = texts(&[
        (1, "same"),
        (2, "same"),
        (3, "dup"),
        (4, "dup"),
        (5, "five"),
    ]);
    embedded(&store, &params(), &[api(1, "same", &W, 7)]).await;
    let run = dispatched(&store, &[&[2, 3, 4, 5]]).await;
    store.begin_batch(run, S0, 1, LEASE).await.unwrap();
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(1, 7));
    // Of two vectors of a row, the first is written: here the copy.
    let chunk = [
        copy(4, "dup", &V, 2),
        api(4, "dup", &V, 2),
        api(3, "dup", &V, 2),
    ];
    assert_eq!(store.write_vectors(run, S0, &chunk).await.unwrap(), 2);
    assert_eq!(store.provenance_of(d(4)).unwrap().source, "copy");

    assert!(
        store
            .fail_batch(run, S0, "bad", true, 0)
            .await
            .unwrap()
            .counted
    );
    assert_eq!(counted(&store, run).await, (3, 2, 9));
    let s = status(&store, run).await;
    assert_eq!((s.batches_failed, s.documents_failed), (1, 1));
    assert!(
        !store
            .fail_batch(run, S0, "bad", true, 0)
            .await
            .unwrap()
            .counted
    );
    assert_eq!(counted(&store, run).await, (3, 2, 9));

    // A fresh message reopens it; what it copied stays counted, once.
    store.begin_batch(run, S0, 1, LEASE).await.unwrap();
    assert_eq!(store.copy_vectors(run, S0).await.unwrap(), copied(0, 0));
    let done = store
        .complete_batch(run, S0, &[api(5, "five", &X, 3)], 3, &[])
        .await
        .unwrap();
    assert_eq!((done.counted, done.written, done.copied), (true, 1, 0));
    assert_eq!(counted(&store, run).await, (4, 2, 9));
    let s = status(&store, run).await;
    assert_eq!((s.batches_failed, s.documents_failed), (0, 0));
}

#[tokio::test]
async fn a_batch_reopened_after_its_end_counts_no_copy_twice() {
    let store = texts(&[(1, "dup"), (2, "dup"), (3, "three")]);
    let run = dispatched(&store, &[&[1, 2, 3]]).await;
    let chunk = [api(1, "dup", &V, 4), copy(2, "dup", &V, 4)];
    assert_eq!(store.write_vectors(run, S0, &chunk).await.unwrap(), 2);
    let failure = FailedDocument {
        id: d(3),
        reason: "too long".into(),
    };
    let done = store
        .complete_batch(run, S0, &[], 4, std::slice::from_ref(&failure))
        .await
        .unwrap();
    assert_eq!((done.written, done.copied), (2, 1));
    assert_eq!(counted(&store, run).await, (2, 1, 4));

    // A late chunk on the ended batch writes, but is counted nowhere.
    let late = [copy(3, "three", &X, 6)];
    assert_eq!(store.write_vectors(run, S0, &late).await.unwrap(), 1);
    assert_eq!(store.reopen_batches(run, &[S0]).await.unwrap(), 1);
    store.begin_batch(run, S0, 1, LEASE).await.unwrap();
    let redo = store.complete_batch(run, S0, &[], 0, &[]).await.unwrap();
    assert_eq!((redo.counted, redo.written, redo.copied), (true, 0, 0));
    assert_eq!(counted(&store, run).await, (2, 1, 4));
}
