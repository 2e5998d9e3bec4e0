//! A text is embedded once, against the real stack: identical texts in a
//! run cost one input, and a new row of a text already embedded takes that
//! vector without an API call. The status row counts the copies and the
//! tokens they saved.

mod common;

use common::{backfill, insert_texts, json_of, unique, vectors, Stack, Standin};
use embed_backfill::tokens;

const TABLE: &str = "lovdata_documents";

fn private_standin(base: &Stack) -> (Standin, Stack) {
    let standin = Standin::spawn(&[]);
    let stack = base
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key);
    (standin, stack)
}

/// Texts `0..n` of `distinct` different ones, each repeated across and
/// within batches.
fn repeated(n: usize, distinct: usize, tag: &str) -> Vec<String> {
    let tag = unique(tag);
    (0..n)
        .map(|i| {
            format!(
                "{tag} § {}. Forskriften gjelder fiske i sjøen.",
                i % distinct
            )
        })
        .collect()
}

#[tokio::test]
async fn identical_texts_in_a_run_are_embedded_once() {
    let (standin, stack) = private_standin(&Stack::load());
    let pg = stack.pg().await;
    let archive = unique("copies");
    let docs = repeated(30, 10, "copies");
    let ids = insert_texts(&pg, &archive, &docs).await;
    let status = json_of(&backfill(
        &stack,
        &[
            "run",
            "--archive",
            &archive,
            "--batch-size",
            "7",
            "--concurrency",
            "1",
            "--json",
        ],
    ));
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["documents_embedded"], 30, "{status}");
    assert_eq!(status["documents_copied"], 20, "{status}");
    let distinct: u64 = docs[..10].iter().map(|t| tokens::count(t) as u64).sum();
    let all: u64 = docs.iter().map(|t| tokens::count(t) as u64).sum();
    assert_eq!(status["tokens_used"], distinct, "{status}");
    assert_eq!(status["tokens_saved"], all - distinct, "{status}");
    let stats = standin.stats().await;
    assert_eq!(stats["inputs"], 10, "{stats}");

    let stored = vectors(&pg, TABLE, &ids).await;
    for (id, text) in ids.iter().zip(&docs) {
        assert_eq!(stored[id], stack.expected_vector(text).await, "{id}");
    }
    let sources: Vec<(String, i64)> = pg
        .query(
            "SELECT p.source, count(*) FROM backfill_provenance p
             JOIN lovdata_documents d ON d.id = p.doc_id
             WHERE p.target = 'public.lovdata_documents.embedding' AND d.archive = $1
             GROUP BY 1 ORDER BY 1",
            &[&archive],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(sources, vec![("api".into(), 10), ("copy".into(), 20)]);
}

#[tokio::test]
async fn a_new_row_of_a_known_text_takes_its_vector_without_an_api_call() {
    let (standin, stack) = private_standin(&Stack::load());
    let pg = stack.pg().await;
    let archive = unique("known");
    let docs = repeated(4, 4, "known");
    insert_texts(&pg, &archive, &docs).await;
    json_of(&backfill(&stack, &["run", "--archive", &archive, "--json"]));
    let before = standin.stats().await;

    // Three new rows repeat known texts; a fourth is new, and two rows share
    // a poisoned text, which fails both and is sent once.
    let mut more: Vec<String> = docs[..3].to_vec();
    more.push(format!("{archive}: en helt ny paragraf."));
    more.push(format!("{archive} [[fail:400]]"));
    more.push(format!("{archive} [[fail:400]]"));
    let new_ids = insert_texts(&pg, &archive, &more).await;
    let status = json_of(&backfill(&stack, &["run", "--archive", &archive, "--json"]));
    assert_eq!(status["documents_embedded"], 4, "{status}");
    assert_eq!(status["documents_copied"], 3, "{status}");
    assert_eq!(status["documents_failed"], 2, "{status}");
    let after = standin.stats().await;
    let delta = |a: &serde_json::Value, b: &serde_json::Value, k: &str| {
        a[k].as_u64().unwrap() - b[k].as_u64().unwrap()
    };
    // The new text is embedded; the poisoned one is sent once (with the new
    // one, then alone) and refused.
    assert_eq!(delta(&after, &before, "inputs"), 1);
    assert_eq!(delta(&after, &before, "requests"), 3);
    let stored = vectors(&pg, TABLE, &new_ids).await;
    for (id, text) in new_ids.iter().zip(&more).take(4) {
        assert_eq!(stored[id], stack.expected_vector(text).await, "{id}");
    }
    assert!(!stored.contains_key(&new_ids[4]) && !stored.contains_key(&new_ids[5]));

    // The same archive again: only the two failed rows, their text sent once.
    // (Counted from here: the expected vectors above came from this server too.)
    let after = standin.stats().await;
    let again = json_of(&backfill(&stack, &["run", "--archive", &archive, "--json"]));
    assert_eq!(again["total_documents"], 2, "{again}");
    assert_eq!(again["documents_failed"], 2, "{again}");
    let last = standin.stats().await;
    assert_eq!(delta(&last, &after, "requests"), 1);
}
