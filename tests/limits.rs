//! Supabase's production limits, on the real stack behind its gateway: the
//! row cap ("Max rows") at 1,000 and at 100 with batch sizes 1 to 1,000, the
//! statement timeout, deliberate errors that must not be retried, and texts
//! too large to fetch whole.

mod common;

use common::{insert_texts, options, run_of, unique, vectors, Gateway, PrivateRest, Stack};
use embed_backfill::ids::{BatchSeq, RunId};
use embed_backfill::queue::MemoryQueue;
use embed_backfill::redrive;
use embed_backfill::runner::{self, LocalOptions};
use embed_backfill::store::RunState;
use embed_backfill::store::StoreError;
use embed_backfill::tokens;
use std::sync::Arc;
use std::time::Duration;

const TABLE: &str = "lovdata_documents";

/// Short, distinct texts: these tests are about counts, not text lengths.
fn short_texts(n: usize, tag: &str) -> Vec<String> {
    let tag = unique(tag);
    (0..n)
        .map(|i| format!("§ {i} {tag}: kommunen skal behandle søknaden innen {i} uker."))
        .collect()
}

/// Every id holds the stack's vector of its own text (cut to the input limit).
async fn assert_own_vectors(
    stack: &Stack,
    pg: &tokio_postgres::Client,
    ids: &[i64],
    texts: &[String],
) {
    let stored = vectors(pg, TABLE, ids).await;
    assert_eq!(stored.len(), ids.len(), "documents left without a vector");
    let cut: Vec<String> = texts
        .iter()
        .map(|t| {
            tokens::truncate(t, tokens::MAX_INPUT_TOKENS)
                .text
                .into_owned()
        })
        .collect();
    let refs: Vec<&str> = cut.iter().map(String::as_str).collect();
    let expected = stack.expected_vectors(&refs).await;
    for ((id, want), text) in ids.iter().zip(&expected).zip(texts) {
        assert_eq!(
            stored.get(id),
            Some(want),
            "document {id} ({} bytes) does not hold the vector of its own text",
            text.len()
        );
    }
}

#[tokio::test]
async fn dispatch_work_and_verify_are_exact_under_a_cap_of_100_with_batches_of_250() {
    let base = Stack::load();
    let gateway = Gateway::spawn(&base, &base.var("STACK_POSTREST_URL"), 100);
    let stack = base.with("SUPABASE_URL", &gateway.url());
    let pg = stack.pg().await;
    let archive = unique("cap100");
    let texts = short_texts(1_234, "cap100");
    let ids = insert_texts(&pg, &archive, &texts).await;

    // A dry run pages 2,500 ids at a time through a cap of 100.
    let dispatcher = stack.dispatcher(&stack.fresh_queue(30, 5).await.0);
    let dry = dispatcher
        .dispatch(&options(&format!(
            r#"{{"archive": "{archive}", "batch_size": 250, "dry_run": true}}"#
        )))
        .await
        .unwrap();
    let exact: u64 = texts.iter().map(|t| tokens::count(t) as u64).sum();
    assert_eq!(
        (dry.documents, dry.batches, dry.estimated_tokens),
        (1_234, 5, exact)
    );

    let (queue, _) = stack.fresh_queue(30, 5).await;
    let summary = stack
        .dispatcher(&queue)
        .dispatch(&options(&format!(
            r#"{{"archive": "{archive}", "batch_size": 250}}"#
        )))
        .await
        .unwrap();
    assert!(summary.complete);
    assert_eq!((summary.documents, summary.batches), (1_234, 5));
    let tally = runner::consume(
        &stack.worker(),
        &queue,
        &common::drain_opts(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    common::assert_all_handled(&tally, 5);

    let status = stack.store();
    let run = run_of(&status, summary.run_id).await;
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(
        (run.documents_embedded, run.batches_done, run.tokens_used),
        (1_234, 5, exact)
    );
    let coverage = stack
        .store()
        .coverage(&stack.spec(), Some(&archive))
        .await
        .unwrap();
    assert_eq!(
        (
            coverage.total,
            coverage.with_embeddings,
            coverage.without_embeddings
        ),
        (1_234, 1_234, 0)
    );
    assert_own_vectors(&stack, &pg, &ids, &texts).await;
    let stats = gateway.stats().await;
    assert_eq!(stats["cut"], 0, "the gateway cut an answer: {stats}");
}

#[tokio::test]
async fn backfill_run_embeds_batches_of_1000_under_a_cap_of_100() {
    let base = Stack::load();
    let gateway = Gateway::spawn(&base, &base.var("STACK_POSTREST_URL"), 100);
    let stack = base.with("SUPABASE_URL", &gateway.url());
    let pg = stack.pg().await;
    let archive = unique("run1000");
    let texts = short_texts(2_100, "run1000");
    let ids = insert_texts(&pg, &archive, &texts).await;

    let store = stack.store();
    let queue = Arc::new(MemoryQueue::new());
    let dispatcher =
        embed_backfill::setup::dispatcher(&stack.env(), &store, queue.clone()).unwrap();
    let local = LocalOptions {
        concurrency: 2,
        max_receive_count: 5,
        retry_delay: Duration::from_millis(200),
        message_timeout: Duration::from_secs(120),
    };
    let run = RunId::random();
    let (summary, tally) = runner::run_local(
        &dispatcher,
        &queue,
        &stack.worker(),
        run,
        &options(&format!(
            r#"{{"archive": "{archive}", "batch_size": 1000, "embedding_batch_size": 500}}"#
        )),
        &local,
    )
    .await
    .unwrap();
    assert_eq!((summary.documents, summary.batches), (2_100, 3));
    assert_eq!((tally.succeeded, tally.failed), (3, 0));
    let status = run_of(&store, run).await;
    assert_eq!(status.state, RunState::Completed);
    assert_eq!(
        (status.documents_embedded, status.documents_skipped),
        (2_100, 0)
    );
    assert_own_vectors(&stack, &pg, &ids, &texts).await;
    assert_eq!(gateway.stats().await["cut"], 0);
}

#[tokio::test]
async fn recovery_lists_of_batches_of_1_pass_a_cap_of_100() {
    let base = Stack::load();
    let gateway = Gateway::spawn(&base, &base.var("STACK_POSTREST_URL"), 100);
    let stack = base.with("SUPABASE_URL", &gateway.url());
    let pg = stack.pg().await;
    let archive = unique("ones");
    let texts = short_texts(150, "ones");
    let ids = insert_texts(&pg, &archive, &texts).await;
    let (first, run) = stack.dispatch_fresh(&archive, 1).await;
    let status = stack.store();
    assert_eq!(run_of(&status, run).await.total_batches, 150);
    assert_eq!(stack.queue_depth(first.url()).await, 150);

    // Nothing was worked: `retry-failed --unfinished` queues all 150.
    let (second, _) = stack.fresh_queue(30, 5).await;
    let queued = redrive::retry_failed(status.as_ref(), &second, run, true)
        .await
        .unwrap();
    assert_eq!(queued, 150);
    assert_eq!(stack.queue_depth(second.url()).await, 150);

    // A dispatch that stopped before confirming its messages: `--continue`
    // sends every pending batch again, all 150 of them.
    pg.execute(
        "UPDATE backfill_batches SET state = 'pending' WHERE run_id = $1::text::uuid",
        &[&run.to_string()],
    )
    .await
    .unwrap();
    pg.execute(
        "UPDATE backfill_runs SET state = 'dispatching' WHERE id = $1::text::uuid",
        &[&run.to_string()],
    )
    .await
    .unwrap();
    let (third, _) = stack.fresh_queue(30, 5).await;
    let summary = stack
        .dispatcher(&third)
        .continue_run(run, None)
        .await
        .unwrap();
    assert!(summary.complete);
    assert_eq!(summary.batches, 150);
    assert_eq!(stack.queue_depth(third.url()).await, 150);

    let tally = runner::consume(
        &stack.worker(),
        &third,
        &common::drain_opts(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    common::assert_all_handled(&tally, 150);
    let done = run_of(&status, run).await;
    assert_eq!(done.state, RunState::Completed);
    assert_eq!(
        (
            done.documents_embedded,
            done.batches_done,
            done.batches_failed
        ),
        (150, 150, 0)
    );
    // The other queues' copies are duplicates now: each is skipped, nothing counts twice.
    runner::consume(
        &stack.worker(),
        &second,
        &common::drain_opts(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    let after = run_of(&status, run).await;
    assert_eq!((after.documents_embedded, after.batches_done), (150, 150));
    assert_own_vectors(&stack, &pg, &ids, &texts).await;
    assert_eq!(gateway.stats().await["cut"], 0);
}

/// A login role for a private API server whose statements time out fast, as
/// the authenticator's 8 s does on Supabase.
async fn short_timeout_stack(base: &Stack, pg: &tokio_postgres::Client) -> (PrivateRest, Stack) {
    let role = unique("hasty").replace('-', "_");
    pg.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOINHERIT PASSWORD 'hasty';
         GRANT anon, authenticated, service_role TO {role};
         ALTER ROLE {role} SET statement_timeout = '400ms';"
    ))
    .await
    .unwrap();
    let db_url = base
        .var("DATABASE_URL")
        .replace("postgres@", &format!("{role}:hasty@"));
    let rest = PrivateRest::spawn_with_db(base, &db_url);
    let stack = base.with("SUPABASE_URL", &rest.url());
    (rest, stack)
}

#[tokio::test]
async fn a_statement_timeout_is_retried_a_bounded_number_of_times_then_fails_the_batch() {
    let base = Stack::load();
    let pg = base.pg().await;
    let (rest, stack) = short_timeout_stack(&base, &pg).await;
    let archive = unique("timeout");
    let texts = short_texts(6, "timeout");
    let ids = insert_texts(&pg, &archive, &texts).await;
    let (queue, run) = stack.dispatch_fresh(&archive, 10).await;

    // Another session holds one of the rows: the batch's write waits on it
    // until the statement timeout cancels it.
    let mut holder = base.pg().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        &format!("SELECT 1 FROM {TABLE} WHERE id = $1 FOR UPDATE"),
        &[&ids[3]],
    )
    .await
    .unwrap();
    rest.reset_stats().await;
    let tally = runner::consume(
        &stack.worker(),
        &queue,
        &common::drain_opts(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    assert!(tally.succeeded == 0 && tally.failed >= 1, "{tally:?}");
    let stats = rest.stats().await;
    assert_eq!(
        stats["requests"]["/rpc/backfill_complete_batch"], 3,
        "a timeout is tried three times in all: {stats}"
    );
    let status = stack.store();
    let failed = run_of(&status, run).await;
    assert_eq!(
        failed.batches_failed, 1,
        "the timeout failed the batch for good"
    );
    let error = failed.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("backfill_complete_batch")
            && error.contains("statement timeout")
            && error.contains("--batch-size")
            && error.contains("statement_timeout"),
        "{error}"
    );
    tx.rollback().await.unwrap();

    // Once the row is free, retry-failed finishes it, counted once.
    let (again, _) = stack.fresh_queue(30, 5).await;
    assert_eq!(
        redrive::retry_failed(status.as_ref(), &again, run, false)
            .await
            .unwrap(),
        1
    );
    runner::consume(
        &stack.worker(),
        &again,
        &common::drain_opts(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    let done = run_of(&status, run).await;
    assert_eq!(done.state, RunState::Completed);
    assert_eq!(
        (
            done.documents_embedded,
            done.batches_done,
            done.batches_failed,
            done.documents_failed
        ),
        (6, 1, 0, 0)
    );
}

#[tokio::test]
async fn the_functions_own_errors_are_not_retried() {
    let base = Stack::load();
    let pg = base.pg().await;
    let (rest, stack) = short_timeout_stack(&base, &pg).await;
    let status = stack.store();
    let archive = unique("settled");
    insert_texts(&pg, &archive, &short_texts(2, "settled")).await;
    let (_queue, run) = stack.dispatch_fresh(&archive, 10).await;
    rest.reset_stats().await;
    // P0002: no such run. PostgREST answers it with HTTP 500, like an outage.
    let err = status
        .complete_batch(RunId::random(), BatchSeq(0), &[], 0, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Server { code, status: 500, .. } if code == "P0002"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    // 55000: adding batches to a run that is not dispatching.
    let err = status
        .add_batches(run, &[], embed_backfill::ids::DocumentId(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Server { code, .. } if code == "55000"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let stats = rest.stats().await;
    assert_eq!(
        stats["requests"]["/rpc/backfill_complete_batch"], 1,
        "{stats}"
    );
    assert_eq!(stats["requests"]["/rpc/backfill_add_batches"], 1, "{stats}");
}

#[tokio::test]
async fn texts_too_large_to_fetch_whole_come_in_bounded_answers_and_are_cut_in_the_database() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("huge");
    let words = [
        "loven", "gjelder", "for", "kommunen", "og", "fylket", "særlig",
    ];
    // Twelve texts of about 1 MB: more than one fetch's byte budget. One of
    // them longer than the prefix the database keeps.
    let texts: Vec<String> = (0..12)
        .map(|i| {
            let target = if i == 5 {
                tokens::MAX_PREFIX_CHARS + 200_000
            } else {
                1 << 20
            };
            let mut t = format!("§ {i} {archive} ");
            let mut j = i;
            while t.len() < target {
                t.push_str(words[j % words.len()]);
                t.push(' ');
                j = (j * 31 + 7) % 1_000_003;
            }
            t
        })
        .collect();
    let ids = insert_texts(&pg, &archive, &texts).await;
    let (queue, run) = stack.dispatch_fresh(&archive, 100).await;
    let tally = runner::consume(
        &stack.worker(),
        &queue,
        &common::drain_opts(Duration::from_secs(120)),
    )
    .await
    .unwrap();
    common::assert_all_handled(&tally, 1);
    let done = run_of(&stack.store(), run).await;
    assert_eq!(done.documents_embedded, 12);
    let cut: u64 = texts
        .iter()
        .map(|t| tokens::truncate(t, tokens::MAX_INPUT_TOKENS).tokens as u64)
        .sum();
    assert_eq!(done.tokens_used, cut);
    assert_own_vectors(&stack, &pg, &ids, &texts).await;
}

#[tokio::test]
async fn a_fetch_answer_stays_within_its_byte_budget() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("budget");
    let texts: Vec<String> = (0..5)
        .map(|i| format!("{archive} {}", format!("{i}").repeat(3 << 20)))
        .collect();
    let ids = insert_texts(&pg, &archive, &texts).await;
    let target = serde_json::to_string(stack.store().target()).unwrap();
    let fetch = |max_chars: i32, after: Option<i64>| {
        let (pg, target, ids) = (&pg, &target, &ids);
        async move {
            let row = pg
                .query_one(
                    "SELECT backfill_fetch_documents(p_target => $1::text::jsonb, p_ids => $2,
                         p_max_chars => $3, p_max_bytes => $4, p_after_id => $5)::text",
                    &[target, ids, &max_chars, &(8i64 << 20), &after],
                )
                .await
                .unwrap();
            serde_json::from_str::<serde_json::Value>(row.get(0)).unwrap()
        }
    };
    // 3 MB texts against an 8 MiB budget: three, then "more".
    let first = fetch(4 << 20, None).await;
    let docs = first["documents"].as_array().unwrap();
    assert_eq!((docs.len(), &first["more"]), (3, &serde_json::json!(true)));
    let rest = fetch(4 << 20, Some(ids[2])).await;
    assert_eq!(rest["documents"].as_array().unwrap().len(), 2);
    assert_eq!(rest["more"], false);
    // The prefix bound cuts each text in the database.
    let cut = fetch(tokens::MAX_PREFIX_CHARS as i32, None).await;
    let docs = cut["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 5);
    assert!(docs
        .iter()
        .all(|d| d["content"].as_str().unwrap().len() == tokens::MAX_PREFIX_CHARS));
}
