//! What the functions read of the documents: pages, fetches and coverage.

use super::*;

#[tokio::test]
async fn pages_are_a_keyset_of_the_rows_without_a_vector() {
    let store = store(5);
    store.insert_document(d(6), Some("b"), Some("ø"));
    store.insert_document(d(7), None, None);
    store.set_embedding(d(2), Some(V.to_vec()));
    let ids = |p: &Page| p.rows.iter().map(|r| r.id.0).collect::<Vec<_>>();
    let first = store.page(None, None, 3).await.unwrap();
    assert_eq!((ids(&first), first.more), (vec![1, 3, 4], true));
    let next = store.page(None, Some(d(4)), 3).await.unwrap();
    assert_eq!((ids(&next), next.more), (vec![5, 6, 7], false));
    assert_eq!(next.rows[1].bytes, 2, "bytes, not characters");
    assert_eq!(next.rows[2].bytes, 0);
    let b = store.page(Some("b"), None, 3).await.unwrap();
    assert_eq!((ids(&b), b.more), (vec![6], false));
    let err = store.page(None, None, 0).await.unwrap_err();
    assert_eq!(code(&err), ("backfill_page_documents", "22023"));
}

#[tokio::test]
async fn a_fetch_stops_at_its_byte_budget_and_cuts_texts() {
    let store = MemoryStore::new().with_fetch_budget(10);
    for id in 1..=5 {
        store.insert_document(d(id), None, Some("sixsix"));
    }
    store.insert_document(d(6), None, Some("héllo"));
    store.insert_document(d(7), None, None);
    store.insert_document(d(8), None, Some("done"));
    store.set_embedding(d(8), Some(V.to_vec()));
    let wanted: Vec<DocumentId> = [5, 3, 1, 2, 4, 3, 99, 8].map(d).to_vec();
    let first = store.fetch_missing(&wanted, None, 100).await.unwrap();
    let ids = |f: &Fetched| f.documents.iter().map(|x| x.id.0).collect::<Vec<_>>();
    assert_eq!((ids(&first), first.more), (vec![1, 2], true));
    let rest = store.fetch_missing(&wanted, Some(d(2)), 100).await.unwrap();
    assert_eq!((ids(&rest), rest.more), (vec![3, 4], true));

    let dyn_store: &dyn Store = &store;
    let mut seen = Vec::new();
    let all: Vec<DocumentId> = (1..=8).map(d).collect();
    dyn_store
        .for_each_missing(&all, 2, |doc| seen.push((doc.id.0, doc.content)))
        .await
        .unwrap();
    assert_eq!(seen.len(), 7);
    assert_eq!(seen[0], (1, Some("si".to_owned())));
    assert_eq!(seen[5], (6, Some("hé".to_owned())), "characters, not bytes");
    assert_eq!(seen[6], (7, None));
}

#[tokio::test]
async fn coverage_steps_scan_by_id_and_count_the_archive() {
    let store = store(3);
    store.insert_document(d(4), Some("b"), Some(" \t\n"));
    store.insert_document(d(5), Some("a"), Some(" \r\n"));
    store.insert_document(d(6), Some("a"), None);
    store.set_embedding(d(1), Some(V.to_vec()));
    let step = store.coverage_step(Some("a"), None, 4).await.unwrap();
    assert_eq!(
        (step.total, step.with_embeddings, step.without_embeddings),
        (3, 1, 2)
    );
    assert_eq!(
        (step.empty_content, step.last_id, step.more),
        (0, Some(d(4)), true)
    );
    let last = store.coverage_step(Some("a"), Some(d(4)), 4).await.unwrap();
    assert_eq!((last.total, last.empty_content, last.more), (2, 2, false));
    let dyn_store: &dyn Store = &store;
    let c = dyn_store.coverage(None).await.unwrap();
    assert_eq!((c.total, c.with_embeddings, c.empty_content), (6, 1, 3));
    assert_eq!(c.coverage_percent, 16.67);
}
