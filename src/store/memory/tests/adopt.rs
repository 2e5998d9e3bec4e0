//! Vectors made elsewhere: `backfill adopt` records them, coverage tells
//! them apart, and a `stale` page reads past the current ones a bounded
//! range at a time.

use super::*;

#[tokio::test]
async fn adopt_records_vectors_without_provenance_of_the_right_dimensions() {
    let store = store(6);
    store.insert_document(d(7), Some("b"), Some("text 7"));
    for id in [1, 5, 7] {
        store.set_embedding(d(id), Some(V.to_vec()));
    }
    store.set_embedding(d(2), Some(vec![1.0, 2.0, 3.0]));
    let mut old = params();
    old["model"] = json!("old");
    let run = dispatched_with(&store, &old, &[&[4]]).await;
    store
        .complete_batch(run, BatchSeq(0), &vectors(&[4]), 1, &[])
        .await
        .unwrap();

    let first = store.adopt_step(&spec(), Some("a"), None, 4).await.unwrap();
    let adoption = Adoption {
        adopted: 1,
        wrong_dimensions: 1,
    };
    assert_eq!(
        (first.adoption, first.last_id, first.more),
        (adoption, Some(d(4)), true)
    );
    let want = ProvenanceInfo {
        model: MODEL.into(),
        dimensions: 2,
        long_text: LongText::Truncate,
        sha256: sha("text 1").into(),
        chunks: None,
        tokens: None,
        source: "adopted".into(),
        run_id: None,
    };
    assert_eq!(store.provenance_of(d(1)), Some(want));
    assert_eq!(
        store.provenance_of(d(2)),
        None,
        "not of the dimensions named"
    );
    assert_eq!(store.provenance_of(d(3)), None, "no vector");
    assert_eq!(
        store.provenance_of(d(4)).unwrap().model,
        "old",
        "left alone"
    );

    let rest = store
        .adopt_step(&spec(), Some("a"), Some(d(4)), 4)
        .await
        .unwrap();
    assert_eq!(rest.adoption.adopted, 1);
    assert_eq!((rest.last_id, rest.more), (Some(d(7)), false));
    assert_eq!(store.provenance_of(d(7)), None, "another archive");
    let dyn_store: &dyn Store = &store;
    let all = dyn_store.adopt(&spec(), None).await.unwrap();
    assert_eq!((all.adopted, all.wrong_dimensions), (1, 1));
    assert_eq!(store.provenance_of(d(7)).unwrap().source, "adopted");
    let err = store.adopt_step(&spec(), None, None, 0).await.unwrap_err();
    assert_eq!(code(&err), ("backfill_adopt", "22023"));

    // Adopted vectors are current until their text changes.
    let c = dyn_store.coverage(&spec(), None).await.unwrap();
    assert_eq!(
        (c.unknown, c.stale_model, c.stale_text, c.current),
        (1, 1, 0, 3)
    );
    store.set_content(d(5), None);
    let page = store
        .page(&sel(Select::Stale), None, None, 10)
        .await
        .unwrap();
    let ids: Vec<i64> = page.rows.iter().map(|r| r.id.0).collect();
    assert_eq!(ids, vec![3, 4, 5, 6]);
}

#[tokio::test]
async fn coverage_counts_each_vector_in_one_state_against_the_spec_asked() {
    let store = store(4);
    store.insert_document(d(5), Some("b"), Some("text 5"));
    for id in [1, 2, 3, 5] {
        store.set_embedding(d(id), Some(V.to_vec()));
    }
    let dyn_store: &dyn Store = &store;
    dyn_store.adopt(&spec(), None).await.unwrap();
    store.set_content(d(2), Some(""));
    store.set_embedding(d(3), None);
    let step = store
        .coverage_step(&spec(), Some("a"), None, 3)
        .await
        .unwrap();
    assert_eq!(
        (
            step.counts.total,
            step.counts.with_embeddings,
            step.counts.without_embeddings
        ),
        (3, 2, 1)
    );
    assert_eq!(
        (
            step.counts.stale_text,
            step.counts.current,
            step.counts.empty_content
        ),
        (1, 1, 0)
    );
    assert_eq!((step.last_id, step.more), (Some(d(3)), true));

    let average = VectorSpec {
        long_text: LongText::Average,
        ..spec()
    };
    let c = dyn_store.coverage(&average, Some("a")).await.unwrap();
    assert_eq!((c.total, c.with_embeddings), (4, 2));
    assert_eq!(
        (c.unknown, c.stale_model, c.stale_text, c.current),
        (0, 2, 0, 0)
    );
    let err = store
        .coverage_step(&spec(), None, None, 0)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ("backfill_coverage", "22023"));
}

#[tokio::test]
async fn stale_pages_read_a_bounded_range_and_say_where_they_stopped() {
    let store = MemoryStore::new();
    for id in 1..=6000 {
        store.insert_document(d(id), None, Some("same"));
        store.set_embedding(d(id), Some(V.to_vec()));
    }
    let dyn_store: &dyn Store = &store;
    assert_eq!(dyn_store.adopt(&spec(), None).await.unwrap().adopted, 6000);
    for id in [10, 20, 5500] {
        store.set_content(d(id), Some("changed"));
    }
    let stale = sel(Select::Stale);
    let ids = |p: &Page| p.rows.iter().map(|r| r.id.0).collect::<Vec<_>>();
    let page = store.page(&stale, None, None, 1).await.unwrap();
    assert_eq!(
        (ids(&page), page.last_id, page.more),
        (vec![10], Some(d(10)), true)
    );
    let page = store.page(&stale, None, Some(d(10)), 1).await.unwrap();
    assert_eq!(
        (ids(&page), page.last_id, page.more),
        (vec![20], Some(d(5010)), true)
    );
    let page = store.page(&stale, None, Some(d(20)), 1).await.unwrap();
    assert_eq!(
        (ids(&page), page.last_id, page.more),
        (vec![], Some(d(5020)), true)
    );
    let page = store.page(&stale, None, Some(d(5010)), 1).await.unwrap();
    assert_eq!(
        (ids(&page), page.last_id, page.more),
        (vec![5500], Some(d(6000)), false)
    );
    let wide = store.page(&stale, None, None, 5500).await.unwrap();
    assert_eq!(
        (ids(&wide), wide.last_id, wide.more),
        (vec![10, 20, 5500], Some(d(5501)), true)
    );
    let all = store
        .page(&sel(Select::All), None, Some(d(5990)), 4)
        .await
        .unwrap();
    assert_eq!(
        (ids(&all), all.last_id, all.more),
        (vec![5991, 5992, 5993, 5994], Some(d(5994)), true)
    );
}
