//! `--long-text average` against the real stack: a text over the input limit
//! is embedded in chunks and stored as their token-weighted mean, its cost
//! counts every chunk, and a bad chunk fails its own document only.

mod common;

use common::{backfill, drain, insert_texts, json_of, options, run_of, unique, vectors, Stack};
use embed_backfill::store::RunState;
use embed_backfill::tokens;

const TABLE: &str = "lovdata_documents";
const LIMIT: usize = 8191;

/// A statute of about 20,000 tokens, in paragraphs.
fn statute(tag: &str) -> String {
    let tag = unique(tag);
    (0..120)
        .map(|i| {
            format!(
                "§ {i}. {tag} Kommunen skal sørge for at søknaden blir behandlet innen fire uker, \
                 og klage kan fremmes for statsforvalteren. "
            )
            .repeat(6)
                + "\n\n"
        })
        .collect()
}

#[tokio::test]
async fn a_long_text_is_stored_as_the_weighted_mean_of_its_chunks() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("average");
    let long = statute("average");
    let short = format!("§ 1. {archive} Loven gjelder for hele landet.");
    let ids = insert_texts(&pg, &archive, &[long.clone(), short.clone()]).await;
    let chunks = tokens::chunks(&long, LIMIT);
    assert!(chunks.len() >= 2, "{} chunk(s)", chunks.len());
    let chunk_tokens: usize = chunks.iter().map(|c| c.tokens).sum();

    // The dry run counts every chunk.
    let dry = json_of(&backfill(
        &stack,
        &[
            "run",
            "--archive",
            &archive,
            "--long-text",
            "average",
            "--dry-run",
            "--json",
        ],
    ));
    let expected_tokens = chunk_tokens + tokens::count(&short);
    assert_eq!(dry["estimated_tokens"], expected_tokens as u64, "{dry}");

    let event = format!(r#"{{"archive": "{archive}", "long_text": "average"}}"#);
    let (queue, _) = stack.fresh_queue(30, 5).await;
    let summary = stack
        .dispatcher(&queue)
        .dispatch(&options(&event))
        .await
        .unwrap();
    drain(&stack, &queue).await;
    let run = run_of(&stack.store(), summary.run_id).await;
    assert_eq!(
        (run.state, run.documents_embedded),
        (RunState::Completed, 2)
    );
    assert_eq!(run.tokens_used, expected_tokens as u64);

    // The mean computed here from the server's vectors of each chunk.
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_ref()).collect();
    let parts = stack.expected_vectors(&texts).await;
    let mut mean = vec![0f64; parts[0].len()];
    for (v, c) in parts.iter().zip(&chunks) {
        for (m, x) in mean.iter_mut().zip(v) {
            *m += f64::from(*x) * c.tokens as f64;
        }
    }
    let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
    let stored = vectors(&pg, TABLE, &ids).await;
    let got = &stored[&ids[0]];
    for (g, m) in got.iter().zip(&mean) {
        assert!(
            (f64::from(*g) - m / norm).abs() < 1e-6,
            "{g} vs {}",
            m / norm
        );
    }
    assert_eq!(stored[&ids[1]], stack.expected_vector(&short).await);
    let row = pg
        .query_one(
            "SELECT chunks, tokens, long_text FROM backfill_provenance
             WHERE target = 'public.lovdata_documents.embedding' AND doc_id = $1",
            &[&ids[0]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i32>>(0), Some(chunks.len() as i32));
    assert_eq!(row.get::<_, Option<i32>>(1), Some(chunk_tokens as i32));
    assert_eq!(row.get::<_, String>(2), "average");

    // Against truncation, both are stale: another policy made them.
    let truncate = stack.spec();
    let c = stack
        .store()
        .coverage(&truncate, Some(&archive))
        .await
        .unwrap();
    assert_eq!(c.stale_model, 2, "{c:?}");
}

#[tokio::test]
async fn a_bad_chunk_fails_its_document_only() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("badchunk");
    let poisoned = statute("badchunk") + "Siste ledd. [[fail:400]]";
    let fine = statute("fine");
    let ids = insert_texts(&pg, &archive, &[poisoned, fine.clone()]).await;
    let event = format!(r#"{{"archive": "{archive}", "long_text": "average"}}"#);
    let (queue, _) = stack.fresh_queue(30, 5).await;
    let summary = stack
        .dispatcher(&queue)
        .dispatch(&options(&event))
        .await
        .unwrap();
    drain(&stack, &queue).await;
    let run = run_of(&stack.store(), summary.run_id).await;
    assert_eq!((run.documents_embedded, run.documents_failed), (1, 1));
    assert_eq!(run.failed_documents.len(), 1);
    assert_eq!(run.failed_documents[0].id.0, ids[0]);
    let stored = vectors(&pg, TABLE, &ids).await;
    assert!(!stored.contains_key(&ids[0]));
    assert!(stored.contains_key(&ids[1]));
}
