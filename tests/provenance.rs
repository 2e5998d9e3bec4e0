//! Vectors that stay true to their texts, against the real stack: the
//! provenance written with each vector, the `stale` and `all` selections, a
//! text changed while its batch is in flight, and adopting vectors made
//! elsewhere.

mod common;

use common::{
    backfill, drain, insert_texts, json_of, options, run_of, unique, vectors, Stack, Standin,
};
use embed_backfill::queue::IncomingMessage;
use embed_backfill::store::{RunState, VectorSpec};
use std::time::Duration;

const TABLE: &str = "lovdata_documents";

fn texts(n: usize, tag: &str) -> Vec<String> {
    let tag = unique(tag);
    (0..n)
        .map(|i| format!("{tag} § {i}. Kommunen fører tilsyn med at loven blir fulgt."))
        .collect()
}

/// Each row's provenance as (doc id, model, dimensions, long_text, hash
/// matches the current text, chunks, source, run id).
async fn provenance(
    pg: &tokio_postgres::Client,
    archive: &str,
) -> Vec<(
    i64,
    String,
    i32,
    String,
    bool,
    Option<i32>,
    String,
    Option<String>,
)> {
    pg.query(
        "SELECT p.doc_id, p.model, p.dimensions, p.long_text,
                p.text_sha256 = sha256(convert_to(d.content, 'UTF8')), p.chunks, p.source,
                p.run_id::text
         FROM backfill_provenance p JOIN lovdata_documents d ON d.id = p.doc_id
         WHERE p.target = 'public.lovdata_documents.embedding' AND d.archive = $1
         ORDER BY p.doc_id",
        &[&archive],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
            r.get(7),
        )
    })
    .collect()
}

async fn set_text(pg: &tokio_postgres::Client, id: i64, text: &str) {
    pg.execute(
        "UPDATE lovdata_documents SET content = $2 WHERE id = $1",
        &[&id, &text],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn every_vector_is_written_with_its_provenance_which_only_the_service_role_sees() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("prov");
    let ids = insert_texts(&pg, &archive, &texts(12, "prov")).await;
    let (queue, run) = stack.dispatch_fresh(&archive, 5).await;
    drain(&stack, &queue).await;

    let rows = provenance(&pg, &archive).await;
    assert_eq!(rows.len(), 12);
    let spec = stack.spec();
    for (row, id) in rows.iter().zip(&ids) {
        assert_eq!(row.0, *id);
        assert_eq!((row.1.as_str(), row.2), (spec.model.as_str(), 1536));
        assert_eq!(row.3, "truncate");
        assert!(row.4, "the hash is of the text embedded: {row:?}");
        assert_eq!((row.5, row.6.as_str()), (Some(1), "api"));
        assert_eq!(row.7.as_deref(), Some(run.to_string().as_str()));
    }
    let c = stack.store().coverage(&spec, Some(&archive)).await.unwrap();
    assert_eq!(
        (c.current, c.stale_text, c.stale_model, c.unknown),
        (12, 0, 0, 0)
    );

    let url = format!(
        "{}/rest/v1/backfill_provenance?select=doc_id&limit=1",
        stack.var("SUPABASE_URL")
    );
    for key in ["SUPABASE_PUBLISHABLE_KEY", "SUPABASE_ANON_KEY"] {
        let r = reqwest::Client::new()
            .get(&url)
            .header("apikey", stack.var(key))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(
            status == 401 || status == 403,
            "{key}: HTTP {status} {body}"
        );
    }
}

#[tokio::test]
async fn stale_selects_changed_texts_and_other_models_and_nothing_else() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("stale");
    let docs = texts(10, "stale");
    let ids = insert_texts(&pg, &archive, &docs).await;
    let (queue, _) = stack.dispatch_fresh(&archive, 4).await;
    drain(&stack, &queue).await;
    let before = vectors(&pg, TABLE, &ids).await;

    let changed = [
        format!("Endret: § 1 {archive} gjelder ikke lenger."),
        format!("Endret: § 4 {archive} oppheves."),
    ];
    set_text(&pg, ids[1], &changed[0]).await;
    set_text(&pg, ids[4], &changed[1]).await;
    let spec = stack.spec();
    let c = stack.store().coverage(&spec, Some(&archive)).await.unwrap();
    assert_eq!((c.current, c.stale_text, c.without_embeddings), (8, 2, 0));

    // The dry run counts the two, and the tokens of their new texts.
    let dry = json_of(&backfill(
        &stack,
        &[
            "dispatch",
            "--archive",
            &archive,
            "--select",
            "stale",
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(dry["documents"], 2, "{dry}");
    let tokens: usize = changed
        .iter()
        .map(|t| embed_backfill::tokens::count(t))
        .sum();
    assert_eq!(dry["estimated_tokens"], tokens as u64, "{dry}");
    assert_eq!(dry["coverage"]["stale_text"], 2, "{dry}");
    assert_eq!(dry["coverage"]["current"], 8, "{dry}");

    let stale = format!(r#"{{"archive": "{archive}", "select": "stale", "batch_size": 4}}"#);
    let (queue, _) = stack.fresh_queue(30, 5).await;
    let summary = stack
        .dispatcher(&queue)
        .dispatch(&options(&stale))
        .await
        .unwrap();
    assert_eq!((summary.documents, summary.batches), (2, 1));
    let tally = drain(&stack, &queue).await;
    assert_eq!(tally.documents_embedded, 2);
    let after = vectors(&pg, TABLE, &ids).await;
    for (i, id) in ids.iter().enumerate() {
        match i {
            1 => assert_eq!(after[id], stack.expected_vector(&changed[0]).await),
            4 => assert_eq!(after[id], stack.expected_vector(&changed[1]).await),
            _ => assert_eq!(after[id], before[id], "row {i} was current"),
        }
    }
    let c = stack.store().coverage(&spec, Some(&archive)).await.unwrap();
    assert_eq!((c.current, c.stale_text), (10, 0));

    // Another model makes every vector stale, and a stale run with it
    // re-embeds all ten.
    let large = stack.with("OPENAI_EMBEDDING_MODEL", "text-embedding-3-large");
    let other = VectorSpec {
        model: "text-embedding-3-large".into(),
        ..spec.clone()
    };
    let c = stack
        .store()
        .coverage(&other, Some(&archive))
        .await
        .unwrap();
    assert_eq!((c.current, c.stale_model), (0, 10));
    let (queue, _) = large.fresh_queue(30, 5).await;
    let summary = large
        .dispatcher(&queue)
        .dispatch(&options(&stale))
        .await
        .unwrap();
    assert_eq!(summary.documents, 10);
    drain(&large, &queue).await;
    let c = stack
        .store()
        .coverage(&other, Some(&archive))
        .await
        .unwrap();
    assert_eq!((c.current, c.stale_model), (10, 0));
    let rows = provenance(&pg, &archive).await;
    assert!(
        rows.iter().all(|r| r.1 == "text-embedding-3-large"),
        "{rows:?}"
    );

    // `all` re-embeds every row even when current, once.
    let all = format!(r#"{{"archive": "{archive}", "select": "all", "batch_size": 4}}"#);
    let (queue, _) = large.fresh_queue(30, 5).await;
    let summary = large
        .dispatcher(&queue)
        .dispatch(&options(&all))
        .await
        .unwrap();
    assert_eq!((summary.documents, summary.batches), (10, 3));
    let tally = drain(&large, &queue).await;
    assert_eq!(tally.documents_embedded, 10);
    let run = run_of(&large.store(), summary.run_id).await;
    assert_eq!(
        (run.state, run.documents_embedded),
        (RunState::Completed, 10)
    );
}

#[tokio::test]
async fn a_text_changed_while_its_batch_is_in_flight_gets_no_vector_of_the_old_text() {
    let base = Stack::load();
    let standin = Standin::spawn(&["--latency-ms", "2000"]);
    let stack = base
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key);
    let pg = stack.pg().await;
    let archive = unique("inflight");
    let docs = texts(6, "inflight");
    let ids = insert_texts(&pg, &archive, &docs).await;
    let (queue, run) = stack.dispatch_fresh(&archive, 10).await;
    let received = embed_backfill::queue::Queue::receive(&queue, 1, Duration::from_secs(5))
        .await
        .unwrap();
    let message: IncomingMessage = received[0].message.clone();

    // The worker has fetched the texts and waits on the API when one changes.
    let worker = stack.worker();
    let work = tokio::spawn(async move { worker.handle(&message, None).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let new_text = format!("Endret mens batchen var underveis {archive}.");
    set_text(&pg, ids[2], &new_text).await;
    let report = work.await.unwrap().unwrap();
    assert_eq!((report.embedded, report.skipped), (5, 1));

    let stored = vectors(&pg, TABLE, &ids).await;
    assert!(
        !stored.contains_key(&ids[2]),
        "a vector of the old text landed"
    );
    let run = run_of(&stack.store(), run).await;
    assert_eq!((run.documents_embedded, run.documents_skipped), (5, 1));
    // The row is simply still missing: the next run embeds its new text.
    let (queue, _) = stack.dispatch_fresh(&archive, 10).await;
    drain(&stack, &queue).await;
    let stored = vectors(&pg, TABLE, &[ids[2]]).await;
    assert_eq!(stored[&ids[2]], stack.expected_vector(&new_text).await);
    let rows = provenance(&pg, &archive).await;
    assert!(
        rows.iter().all(|r| r.4),
        "every hash matches its text: {rows:?}"
    );
}

#[tokio::test]
async fn adopt_records_vectors_made_elsewhere_without_calling_the_api() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("adopt");
    let docs = texts(5, "adopt");
    let ids = insert_texts(&pg, &archive, &docs).await;
    // Vectors written by the old script: no provenance.
    for (id, text) in ids.iter().zip(&docs) {
        let v = stack.expected_vector(text).await;
        let literal = format!(
            "[{}]",
            v.iter().map(f32::to_string).collect::<Vec<_>>().join(",")
        );
        pg.execute(
            "UPDATE lovdata_documents SET embedding = $2::text::vector WHERE id = $1",
            &[id, &literal],
        )
        .await
        .unwrap();
    }
    let spec = stack.spec();
    let c = stack.store().coverage(&spec, Some(&archive)).await.unwrap();
    assert_eq!((c.unknown, c.current), (5, 0));
    let verify = json_of(&backfill(
        &stack,
        &["verify", "--archive", &archive, "--json"],
    ));
    assert_eq!(verify["unknown"], 5, "{verify}");

    let wrong = json_of(&backfill(
        &stack,
        &[
            "adopt",
            "--model",
            &spec.model,
            "--dimensions",
            "512",
            "--archive",
            &archive,
            "--json",
        ],
    ));
    assert_eq!(
        (
            wrong["adopted"].as_u64(),
            wrong["wrong_dimensions"].as_u64()
        ),
        (Some(0), Some(5))
    );

    // Against a private embeddings server: the tests beside this one call
    // the shared one meanwhile.
    let standin = Standin::spawn(&[]);
    let counted = stack
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key);
    let adopted = json_of(&backfill(
        &counted,
        &[
            "adopt",
            "--model",
            &spec.model,
            "--archive",
            &archive,
            "--json",
        ],
    ));
    assert_eq!(adopted["adopted"], 5, "{adopted}");
    assert_eq!(standin.stats().await["requests"], 0, "adopt called the API");
    let c = stack.store().coverage(&spec, Some(&archive)).await.unwrap();
    assert_eq!((c.unknown, c.current), (0, 5));
    let rows = provenance(&pg, &archive).await;
    assert!(
        rows.iter()
            .all(|r| r.6 == "adopted" && r.5.is_none() && r.4),
        "{rows:?}"
    );
    // A stale run now finds nothing to do.
    let dry = json_of(&backfill(
        &stack,
        &[
            "dispatch",
            "--archive",
            &archive,
            "--select",
            "stale",
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(dry["documents"], 0, "{dry}");
}
