//! Which rows a selection takes, and the write that records where each
//! vector came from and refuses one made from a text the row no longer holds.

use super::*;

fn ids_of(page: &Page) -> Vec<i64> {
    page.rows.iter().map(|r| r.id.0).collect()
}

async fn page_ids(store: &MemoryStore, select: Select) -> Vec<i64> {
    let page = store.page(&sel(select), None, None, 100).await.unwrap();
    assert!(!page.more);
    ids_of(&page)
}

async fn fetched(store: &MemoryStore, select: Select, run: Option<RunId>) -> Vec<(i64, String)> {
    let all: Vec<DocumentId> = (1..=20).map(d).collect();
    let f = store
        .fetch_missing(&sel(select), run, &all, None, None)
        .await
        .unwrap();
    assert!(!f.more);
    f.documents
        .into_iter()
        .map(|doc| (doc.id.0, doc.sha256.unwrap()))
        .collect()
}

/// A run of `params` that writes `vectors` to the rows of its one batch.
async fn written_by(store: &MemoryStore, params: Value, vectors: &[VectorRow<'_>]) -> RunId {
    let ids: Vec<i64> = vectors.iter().map(|v| v.id.0).collect();
    let run = dispatched_with(store, &params, &[&ids]).await;
    let done = store
        .complete_batch(run, BatchSeq(0), vectors, 1, &[])
        .await
        .unwrap();
    assert_eq!(done.written, vectors.len() as u64);
    run
}

#[tokio::test]
async fn stale_takes_changed_texts_and_other_specs_but_not_unknown_vectors() {
    let store = store(7);
    let current = written_by(&store, params(), &vectors(&[1, 3])).await;
    store.set_content(d(3), Some("edited"));
    let average = params_for(Select::Missing, Some(LongText::Average));
    written_by(&store, average, &vectors(&[4])).await;
    let mut old = params();
    old["model"] = json!("old");
    written_by(&store, old, &vectors(&[5])).await;
    let mut wider = params();
    wider["dimensions"] = json!("3");
    written_by(&store, wider, &vectors(&[7])).await;
    store.set_embedding(d(6), Some(V.to_vec()));
    let p = store.provenance_of(d(7)).unwrap();
    assert_eq!((p.model.as_str(), p.dimensions), (MODEL, 3));
    assert_eq!(
        store.provenance_of(d(4)).unwrap().long_text,
        LongText::Average
    );
    assert_eq!(store.provenance_of(d(6)), None);

    assert_eq!(page_ids(&store, Select::Missing).await, vec![2]);
    assert_eq!(page_ids(&store, Select::Stale).await, vec![2, 3, 4, 5, 7]);
    assert_eq!(
        page_ids(&store, Select::All).await,
        (1..=7).collect::<Vec<_>>()
    );
    let stale = fetched(&store, Select::Stale, None).await;
    assert_eq!(stale[1], (3, sha("edited").to_owned()));

    let c = (&store as &dyn Store)
        .coverage(&spec(), None)
        .await
        .unwrap();
    assert_eq!(
        (c.total, c.with_embeddings, c.without_embeddings),
        (7, 6, 1)
    );
    assert_eq!(
        (c.unknown, c.stale_model, c.stale_text, c.current),
        (1, 3, 1, 1)
    );

    // A stale run rewrites those, and leaves the current and unknown alone.
    let run = dispatched_with(
        &store,
        &params_for(Select::Stale, None),
        &[&[1, 2, 3, 4, 5, 6, 7]],
    )
    .await;
    let mut rows = vectors(&[1, 2, 4, 5, 6, 7]);
    rows.push(vector(3, "edited"));
    let done = store
        .complete_batch(run, BatchSeq(0), &rows, 9, &[])
        .await
        .unwrap();
    assert_eq!((done.written, done.skipped), (5, 2));
    assert_eq!(store.provenance_of(d(1)).unwrap().run_id, Some(current));
    let p = store.provenance_of(d(3)).unwrap();
    let want = ProvenanceInfo {
        model: MODEL.into(),
        dimensions: 2,
        long_text: LongText::Truncate,
        sha256: sha("edited").into(),
        chunks: Some(1),
        tokens: Some(3),
        source: "api".into(),
        run_id: Some(run),
    };
    assert_eq!(p, want);
    assert_eq!(store.provenance_of(d(5)).unwrap().model, MODEL);
    assert_eq!(page_ids(&store, Select::Stale).await, Vec::<i64>::new());
    let c = (&store as &dyn Store)
        .coverage(&spec(), None)
        .await
        .unwrap();
    assert_eq!(
        (c.unknown, c.stale_model, c.stale_text, c.current),
        (1, 0, 0, 6)
    );
}

#[tokio::test]
async fn all_skips_only_the_rows_its_own_run_wrote() {
    let store = store(4);
    let other = written_by(&store, params(), &vectors(&[1])).await;
    let run = dispatched_with(&store, &params_for(Select::All, None), &[&[1, 2, 3, 4]]).await;
    let ids = |f: Vec<(i64, String)>| f.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(
        ids(fetched(&store, Select::All, Some(run)).await),
        vec![1, 2, 3, 4]
    );

    let s0 = BatchSeq(0);
    let chunk = vectors(&[1, 2]);
    assert_eq!(store.write_vectors(run, s0, &chunk).await.unwrap(), 2);
    assert_eq!(store.provenance_of(d(1)).unwrap().run_id, Some(run));
    assert_eq!(store.write_vectors(run, s0, &chunk).await.unwrap(), 0);
    assert_eq!(
        ids(fetched(&store, Select::All, Some(run)).await),
        vec![3, 4]
    );
    assert_eq!(
        ids(fetched(&store, Select::All, None).await),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        ids(fetched(&store, Select::All, Some(other)).await),
        vec![1, 2, 3, 4]
    );

    let done = store
        .complete_batch(run, s0, &vectors(&[1, 2, 3, 4]), 4, &[])
        .await
        .unwrap();
    assert_eq!(
        (done.written, done.skipped),
        (4, 0),
        "each row counted once"
    );
    assert_eq!(status(&store, run).await.documents_embedded, 4);
}

#[tokio::test]
async fn a_vector_of_a_text_that_changed_is_refused() {
    let store = store(3);
    let run = dispatched(&store, &[&[1, 2, 3]]).await;
    let before = fetched(&store, Select::Missing, Some(run)).await;
    assert_eq!(before[1], (2, sha("text 2").to_owned()));
    store.set_content(d(2), Some("text 2, edited"));
    let done = store
        .complete_batch(run, BatchSeq(0), &vectors(&[1, 2, 3]), 6, &[])
        .await
        .unwrap();
    assert_eq!((done.written, done.skipped), (2, 1));
    assert_eq!(
        (store.embedding_of(d(2)), store.provenance_of(d(2))),
        (None, None)
    );
    assert_eq!(store.provenance_of(d(3)).unwrap().sha256, sha("text 3"));
    assert_eq!(
        fetched(&store, Select::Missing, None).await,
        vec![(2, sha("text 2, edited").to_owned())]
    );

    // Under `stale`, the row keeps its old vector and stays stale.
    store.set_content(d(3), Some("text 3, edited"));
    let stale = dispatched_with(&store, &params_for(Select::Stale, None), &[&[3]]).await;
    let old = vector(3, "text 3");
    let upper = sha("text 3, edited").to_uppercase();
    let new = VectorRow {
        embedding: &[0.5, 0.5],
        sha256: &upper,
        ..old.clone()
    };
    assert_eq!(
        store
            .write_vectors(stale, BatchSeq(0), &[old])
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.provenance_of(d(3)).unwrap().run_id, Some(run));
    assert_eq!(page_ids(&store, Select::Stale).await, vec![2, 3]);
    assert_eq!(
        store
            .write_vectors(stale, BatchSeq(0), &[new])
            .await
            .unwrap(),
        1,
        "hex is read in either case"
    );
    assert_eq!(store.embedding_of(d(3)), Some(vec![0.5, 0.5]));
    assert_eq!(
        store.provenance_of(d(3)).unwrap().sha256,
        sha("text 3, edited")
    );
}

#[tokio::test]
async fn a_write_fails_whole_as_its_statement_does() {
    let store = store(3);
    let run = dispatched(&store, &[&[1, 2, 3]]).await;
    let s0 = BatchSeq(0);
    let bad_hex = VectorRow {
        sha256: "xyz",
        ..vector(2, "text 2")
    };
    let err = store
        .write_vectors(run, s0, &[vector(1, "text 1"), bad_hex])
        .await
        .unwrap_err();
    assert_eq!(code(&err), ("backfill_write_vectors", "22023"));
    assert_eq!(store.embedding_of(d(1)), None);

    let mut no_model = params();
    no_model.as_object_mut().unwrap().remove("model");
    let anonymous = dispatched_with(&store, &no_model, &[&[1, 2]]).await;
    let none_needed = vector(1, "not the text");
    assert_eq!(
        store
            .write_vectors(anonymous, s0, &[none_needed])
            .await
            .unwrap(),
        0
    );
    let err = store
        .write_vectors(anonymous, s0, &vectors(&[1]))
        .await
        .unwrap_err();
    assert_eq!(code(&err), ("backfill_write_vectors", "23502"));

    for (options, without_dimensions) in [
        (json!({ "select": "some" }), false),
        (json!({ "long_text": "cut" }), false),
        (json!({ "select": "stale" }), true),
    ] {
        let mut p = params();
        p["options"] = options;
        if without_dimensions {
            p.as_object_mut().unwrap().remove("dimensions");
        }
        let bad = dispatched_with(&store, &p, &[&[3]]).await;
        let err = store
            .write_vectors(bad, s0, &vectors(&[3]))
            .await
            .unwrap_err();
        assert_eq!(code(&err), ("backfill_write_vectors", "22023"), "{p}");
    }
    let mut p = params();
    p["dimensions"] = json!("two");
    let bad = dispatched_with(&store, &p, &[&[3]]).await;
    let err = store
        .complete_batch(bad, s0, &[], 0, &[])
        .await
        .unwrap_err();
    assert_eq!(code(&err), ("backfill_complete_batch", "22P02"));
    assert_eq!(store.embedding_of(d(3)), None);

    // A repeated id is written once, whichever of its vectors is kept.
    let twice = [vector(3, "text 3"), vector(3, "text 3")];
    let done = store.complete_batch(run, s0, &twice, 5, &[]).await.unwrap();
    assert_eq!(done.written, 1);
}
