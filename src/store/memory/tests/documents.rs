//! What the functions read of the documents: pages, fetches and coverage.

use super::*;

#[tokio::test]
async fn pages_are_a_keyset_of_the_rows_without_a_vector() {
    let store = store(5);
    store.insert_document(d(6), Some("b"), Some("ø"));
    store.insert_document(d(7), None, None);
    store.set_embedding(d(2), Some(V.to_vec()));
    let ids = |p: &Page| p.rows.iter().map(|r| r.id.0).collect::<Vec<_>>();
    let missing = sel(Select::Missing);
    let first = store.page(&missing, None, None, 3).await.unwrap();
    assert_eq!((ids(&first), first.more), (vec![1, 3, 4], true));
    assert_eq!(first.last_id, Some(d(4)));
    let next = store.page(&missing, None, Some(d(4)), 3).await.unwrap();
    assert_eq!((ids(&next), next.more), (vec![5, 6, 7], false));
    assert_eq!(next.last_id, Some(d(7)));
    assert_eq!(next.rows[1].bytes, 2, "bytes, not characters");
    assert_eq!(next.rows[2].bytes, 0);
    let b = store.page(&missing, Some("b"), None, 3).await.unwrap();
    assert_eq!((ids(&b), b.more), (vec![6], false));
    let none = store.page(&missing, None, Some(d(7)), 3).await.unwrap();
    assert_eq!((ids(&none), none.last_id, none.more), (vec![], None, false));
    let err = store.page(&missing, None, None, 0).await.unwrap_err();
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
    let missing = sel(Select::Missing);
    let fetch = |after, max_chars| store.fetch_missing(&missing, None, &wanted, after, max_chars);
    let first = fetch(None, Some(100)).await.unwrap();
    let ids = |f: &Fetched| f.documents.iter().map(|x| x.id.0).collect::<Vec<_>>();
    assert_eq!((ids(&first), first.more), (vec![1, 2], true));
    let rest = fetch(Some(d(2)), Some(100)).await.unwrap();
    assert_eq!((ids(&rest), rest.more), (vec![3, 4], true));

    let dyn_store: &dyn Store = &store;
    let mut seen = Vec::new();
    let all: Vec<DocumentId> = (1..=8).map(d).collect();
    dyn_store
        .for_each_missing(&missing, None, &all, Some(2), |doc| {
            seen.push((doc.id.0, doc.content, doc.sha256.unwrap()))
        })
        .await
        .unwrap();
    assert_eq!(seen.len(), 7);
    assert_eq!(
        seen[0],
        (1, Some("si".to_owned()), sha("sixsix").to_owned())
    );
    assert_eq!(seen[5].1, Some("hé".to_owned()), "characters, not bytes");
    assert_eq!(seen[5].2, sha("héllo"), "the hash of the whole text");
    assert_eq!(seen[6], (7, None, sha("").to_owned()), "NULL hashes as ''");

    // Whole texts when no cut is asked, and hashes as the SQL makes them.
    store.insert_document(d(9), None, Some("abc"));
    let whole = store
        .fetch_missing(&missing, None, &[d(6), d(9)], None, None)
        .await
        .unwrap();
    assert_eq!(whole.documents[0].content.as_deref(), Some("héllo"));
    assert_eq!(
        whole.documents[1].sha256.as_deref(),
        Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert_eq!(
        sha(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[tokio::test]
async fn coverage_steps_scan_by_id_and_count_the_archive() {
    let store = store(3);
    store.insert_document(d(4), Some("b"), Some(" \t\n"));
    store.insert_document(d(5), Some("a"), Some(" \r\n"));
    store.insert_document(d(6), Some("a"), None);
    store.set_embedding(d(1), Some(V.to_vec()));
    let step = store
        .coverage_step(&spec(), Some("a"), None, 4)
        .await
        .unwrap();
    assert_eq!(
        (
            step.counts.total,
            step.counts.with_embeddings,
            step.counts.without_embeddings
        ),
        (3, 1, 2)
    );
    assert_eq!(
        (step.counts.empty_content, step.last_id, step.more),
        (0, Some(d(4)), true)
    );
    let last = store
        .coverage_step(&spec(), Some("a"), Some(d(4)), 4)
        .await
        .unwrap();
    assert_eq!(
        (last.counts.total, last.counts.empty_content, last.more),
        (2, 2, false)
    );
    let dyn_store: &dyn Store = &store;
    let c = dyn_store.coverage(&spec(), None).await.unwrap();
    assert_eq!((c.total, c.with_embeddings, c.empty_content), (6, 1, 3));
    assert_eq!(c.unknown, 1, "a vector set behind the run's back");
    assert_eq!(c.coverage_percent, 16.67);
}
