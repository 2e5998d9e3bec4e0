//! Faults and recovery against the real stack: poison documents, dead letters
//! and redrive, failed batches retried, continuation, overlapping runs, an API
//! server restarting mid-run, malformed input, and secrets kept out of output.

mod common;

use common::{drain, insert_docs, options, run_of, unique, vectors, PrivateRest, Stack, Standin};
use embed_backfill::dispatch::DispatchError;
use embed_backfill::handlers::{self, HandlerError};
use embed_backfill::queue::{BatchMessage, Queue, Received, SqsQueue};
use embed_backfill::redrive;
use embed_backfill::runner::{self, ConsumeOptions, OnFailure};
use embed_backfill::store::RunState;
use std::collections::HashSet;
use std::time::Duration;

const TABLE: &str = "lovdata_documents";

#[tokio::test]
async fn poison_documents_fail_alone_and_the_rest_is_embedded() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("poison");
    let mut texts: Vec<String> = (0..23)
        .map(|i| format!("§ {i} {archive} Forskrift om gebyr for behandling av søknader."))
        .collect();
    texts[4] = format!("Dette dokumentet {archive} er ødelagt [[fail:400]]");
    texts[17] = format!("Også dette {archive} [[fail:400]] er ødelagt");
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;
    let (queue, _) = stack.fresh_queue(30, 5).await;
    let store = stack.store();
    let dispatcher = stack.dispatcher(&queue);
    let summary = dispatcher
        .dispatch(&options(&format!(
            r#"{{"archive": "{archive}", "batch_size": 12, "embedding_batch_size": 12}}"#
        )))
        .await
        .unwrap();
    let tally = drain(&stack, &queue).await;
    common::assert_all_handled(&tally, 2);

    let stored = vectors(&pg, TABLE, &ids).await;
    for (i, (id, text)) in ids.iter().zip(&texts).enumerate() {
        if i == 4 || i == 17 {
            assert!(
                !stored.contains_key(id),
                "poison document {id} got a vector"
            );
        } else {
            assert_eq!(
                stored.get(id),
                Some(&stack.expected_vector(text).await),
                "document {id}"
            );
        }
    }
    let run = run_of(&store, summary.run_id).await;
    assert_eq!(run.state, RunState::CompletedWithErrors);
    assert_eq!(
        (
            run.documents_embedded,
            run.documents_failed,
            run.batches_done
        ),
        (21, 2, 2)
    );
    let failed: Vec<i64> = run.failed_documents.iter().map(|d| d.id.0).collect();
    assert_eq!(failed, vec![ids[4], ids[17]]);
    assert!(run
        .failed_documents
        .iter()
        .all(|d| d.reason.contains("injected fault")));
}

#[tokio::test]
async fn overlapping_runs_are_refused_unless_forced() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("overlap");
    let inheritance = format!("Lov om arv {archive}");
    let probate = format!("Lov om skifte {archive}");
    insert_docs(
        &pg,
        TABLE,
        &archive,
        &[Some(inheritance.as_str()), Some(probate.as_str())],
    )
    .await;
    let (queue, _) = stack.fresh_queue(30, 5).await;
    let dispatcher = stack.dispatcher(&queue);
    let first = dispatcher
        .dispatch(&options(&format!(r#"{{"archive": "{archive}"}}"#)))
        .await
        .unwrap();
    let err = dispatcher
        .dispatch(&options(&format!(r#"{{"archive": "{archive}"}}"#)))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DispatchError::ActiveRun(_)), "{text}");
    assert!(
        text.contains(&first.run_id.unwrap().to_string()) && text.contains("force"),
        "{text}"
    );
    let forced = dispatcher
        .dispatch(&options(&format!(
            r#"{{"archive": "{archive}", "force": true}}"#
        )))
        .await
        .unwrap();
    assert_ne!(forced.run_id, first.run_id);
    drain(&stack, &queue).await;
    // Both runs ended, so the archive is free again.
    dispatcher
        .dispatch(&options(&format!(r#"{{"archive": "{archive}"}}"#)))
        .await
        .unwrap();

    // An all-archives run on another table blocks that table only.
    let table = unique("overlap_tbl").replace('-', "_");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text, archive text, content text, embedding vector(1536));
         GRANT SELECT, UPDATE ON {table} TO service_role;"
    ))
    .await
    .unwrap();
    let harbours = format!("Lov om havner {table}");
    insert_docs(&pg, &table, "a", &[Some(harbours.as_str())]).await;
    let other = stack.with("BACKFILL_TABLE", &table);
    let (other_queue, _) = other.fresh_queue(30, 5).await;
    let other_dispatcher = other.dispatcher(&other_queue);
    other_dispatcher.dispatch(&options("{}")).await.unwrap();
    let err = other_dispatcher
        .dispatch(&options(r#"{"archive": "a"}"#))
        .await
        .unwrap_err();
    assert!(matches!(err, DispatchError::ActiveRun(_)), "{err}");
    let elsewhere = unique("elsewhere");
    let hunting = format!("Lov om jakt {elsewhere}");
    insert_docs(&pg, TABLE, &elsewhere, &[Some(hunting.as_str())]).await;
    dispatcher
        .dispatch(&options(&format!(r#"{{"archive": "{elsewhere}"}}"#)))
        .await
        .unwrap();
    drain(&other, &other_queue).await;
    drain(&stack, &queue).await;
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_run_stuck_without_messages_is_finished_by_retry_failed_unfinished() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("stuck");
    let texts: Vec<String> = (0..6)
        .map(|i| format!("§ {i} {archive} Lov om arbeidsmiljø, annet ledd."))
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;
    let (queue, run_id) = stack.dispatch_fresh(&archive, 3).await;
    let store = stack.store();
    // The messages are gone (expired dead letters) and one batch was left
    // `running` by a last delivery that crashed: nothing will come back alone.
    let gone = queue.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(gone.len(), 2);
    let receipts: Vec<String> = gone.into_iter().map(|r| r.receipt).collect();
    queue.delete(&receipts).await.unwrap();
    pg.batch_execute(&format!(
        "UPDATE backfill_batches SET state = 'running', attempts = 5 WHERE run_id = '{run_id}' AND seq = 0"
    ))
    .await
    .unwrap();

    let failed_only = redrive::retry_failed(store.as_ref(), &queue, run_id, false)
        .await
        .unwrap();
    assert_eq!(failed_only, 0, "no batch is failed");
    let queued = redrive::retry_failed(store.as_ref(), &queue, run_id, true)
        .await
        .unwrap();
    assert_eq!(queued, 2, "the running batch and the queued one");
    drain(&stack, &queue).await;
    let run = run_of(&store, run_id).await;
    assert_eq!(run.state, RunState::Completed);
    assert_eq!((run.batches_done, run.documents_embedded), (2, 6));
    assert_eq!(vectors(&pg, TABLE, &ids).await.len(), 6);
}

#[tokio::test]
async fn failed_batches_come_back_with_retry_failed_and_count_once() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("retry");
    let texts: Vec<String> = (0..9)
        .map(|i| format!("§ {i} {archive} Lov om folketrygd, første ledd."))
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;
    let (queue, run_id) = stack.dispatch_fresh(&archive, 3).await;
    let store = stack.store();

    // A revoked key: every batch fails permanently, once, with a reason.
    let revoked = stack.with("OPENAI_API_KEY", "sk-revoked-000000000000");
    let tally = drain(&revoked, &queue).await;
    assert!(tally.succeeded == 0 && tally.failed >= 3, "{tally:?}");
    let run = run_of(&store, run_id).await;
    assert_eq!(run.state, RunState::CompletedWithErrors);
    assert_eq!(
        (run.batches_failed, run.documents_failed, run.batches_done),
        (3, 9, 0)
    );
    assert!(run
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("OPENAI_API_KEY"));
    assert_eq!(run.failed_batches.len(), 3);

    let queued = redrive::retry_failed(store.as_ref(), &queue, run_id, false)
        .await
        .unwrap();
    assert_eq!(queued, 3);
    drain(&stack, &queue).await;
    let run = run_of(&store, run_id).await;
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(
        (run.batches_failed, run.documents_failed, run.batches_done),
        (0, 0, 3)
    );
    assert_eq!(run.documents_embedded, 9);
    assert_eq!(vectors(&pg, TABLE, &ids).await.len(), 9);
}

#[tokio::test]
async fn dead_letters_are_redriven_and_counted_once() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("dlq");
    let fixed = format!("Lov om tinglysing {archive}");
    let poisoned = format!("{fixed} [[fail:500]]");
    let second = format!("{fixed}, annet ledd");
    let ids = insert_docs(
        &pg,
        TABLE,
        &archive,
        &[Some(poisoned.as_str()), Some(second.as_str())],
    )
    .await;
    let (queue, dlq_url) = stack.fresh_queue(1, 2).await;
    let dlq = SqsQueue::new(stack.sqs_client().await, dlq_url.clone());
    let store = stack.store();
    let dispatcher = stack.dispatcher(&queue);
    let summary = dispatcher
        .dispatch(&options(&format!(r#"{{"archive": "{archive}"}}"#)))
        .await
        .unwrap();
    let run_id = summary.run_id.unwrap();
    // Another run's dead letter, which a filtered redrive must leave alone.
    let stranger = BatchMessage::parse(&format!(
        r#"{{"v":1,"run_id":"{}","batch":0,"first_id":1,"last_id":1}}"#,
        uuid::Uuid::new_v4()
    ))
    .unwrap();
    dlq.send_raw(&[stranger.to_body(), "not a batch".into()])
        .await
        .unwrap();

    // A persistent 500: each delivery fails fast (a short deadline leaves no time
    // to retry inside it) until SQS moves the message to the dead-letter queue.
    let worker = stack.with("BACKFILL_MAX_RECEIVE_COUNT", "2").worker();
    let short = ConsumeOptions {
        until_empty: true,
        concurrency: 1,
        batch_size: 10,
        wait: Duration::from_secs(1),
        message_timeout: Duration::from_secs(1),
        on_failure: OnFailure::Leave,
    };
    for _ in 0..30 {
        runner::consume(&worker, &queue, &short).await.unwrap();
        if stack.queue_depth(queue.url()).await == 0 && stack.queue_depth(&dlq_url).await >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert_eq!(stack.queue_depth(queue.url()).await, 0);
    let run = run_of(&store, run_id).await;
    assert_eq!(
        (run.batches_failed, run.documents_failed),
        (1, 2),
        "the last delivery records the batch failed"
    );
    assert_eq!(run.state, RunState::CompletedWithErrors);

    // The operator fixes the cause, then redrives this run's dead letters.
    pg.execute(
        "UPDATE lovdata_documents SET content = $2 WHERE id = $1",
        &[&ids[0], &fixed],
    )
    .await
    .unwrap();
    let report = redrive::redrive(&dlq, &queue, Some(run_id), None)
        .await
        .unwrap();
    assert_eq!(report.moved, 1);
    assert_eq!((report.skipped, report.unreadable), (1, 1));
    drain(&stack, &queue).await;
    let run = run_of(&store, run_id).await;
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(
        (
            run.batches_done,
            run.batches_failed,
            run.documents_failed,
            run.documents_embedded
        ),
        (1, 0, 0, 2)
    );
    assert_eq!(vectors(&pg, TABLE, &ids).await.len(), 2);
}

#[tokio::test]
async fn a_dispatch_continues_from_its_cursor_without_duplicates() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("continue");
    let texts: Vec<String> = (0..57)
        .map(|i| format!("§ {i} {archive} Vedtak kan påklages."))
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;
    let (queue, _) = stack.fresh_queue(30, 5).await;
    let store = stack.store();
    let dispatcher = stack.dispatcher(&queue);

    // A deadline already near (under the 20 s a page is given): each
    // invocation pages once and asks to be continued.
    let event = serde_json::json!({"archive": archive, "batch_size": 1, "limit": 50});
    let soon = || Some(tokio::time::Instant::now() + Duration::from_secs(3));
    let mut answer = handlers::dispatch_event(&dispatcher, event, soon())
        .await
        .unwrap();
    let run_id = answer.summary.run_id.unwrap();
    let mut hops = 0;
    while let Some(next) = answer.continuation.clone() {
        assert_eq!(next.continue_run, Some(run_id));
        assert_eq!(next.hop, Some(hops + 1));
        hops += 1;
        // A dispatcher that died after saving a page but before queueing it:
        // the continuation must queue that page, and page on after it.
        if hops == 2 {
            let status = run_of(&store, run_id).await;
            let after = status.cursor_id.unwrap().0;
            let next_ids: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|id| *id > after)
                .take(2)
                .collect();
            let batch = embed_backfill::store::NewBatch {
                seq: embed_backfill::ids::BatchSeq(status.next_seq),
                ids: next_ids
                    .iter()
                    .map(|i| embed_backfill::ids::DocumentId(*i))
                    .collect(),
                estimated_tokens: 1,
            };
            store
                .add_batches(
                    run_id,
                    &[batch],
                    embed_backfill::ids::DocumentId(next_ids[1]),
                )
                .await
                .unwrap();
        }
        answer =
            handlers::dispatch_event(&dispatcher, serde_json::to_value(&next).unwrap(), soon())
                .await
                .unwrap();
        assert!(hops < 20, "no progress");
    }
    assert!(hops >= 4, "expected several continuations, got {hops}");
    assert!(answer.summary.complete);
    assert_eq!(answer.summary.documents, 50);

    let rows = pg
        .query(
            "SELECT ids, state FROM backfill_batches WHERE run_id = $1::text::uuid ORDER BY seq",
            &[&run_id.to_string()],
        )
        .await
        .unwrap();
    let mut seen = HashSet::new();
    for r in &rows {
        for id in r.get::<_, Vec<i64>>(0) {
            assert!(seen.insert(id), "document {id} is in two batches");
        }
        assert_eq!(r.get::<_, String>(1), "queued");
    }
    assert_eq!(seen, ids[..50].iter().copied().collect::<HashSet<_>>());
    assert_eq!(rows.len() as u64, answer.summary.batches);
    let tally = drain(&stack, &queue).await;
    assert!(tally.succeeded >= answer.summary.batches, "{tally:?}");
    let run = run_of(&store, run_id).await;
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(
        (run.documents_embedded, run.batches_done),
        (50, answer.summary.batches)
    );
}

#[tokio::test]
async fn a_restarting_api_server_and_lost_database_sessions_delay_batches_but_lose_none() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    // The server logs in as its own role, so cutting its sessions (what a
    // Postgres restart does to it) disturbs no other test.
    let role = unique("authenticator").replace('-', "_");
    pg.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOINHERIT PASSWORD 'outage'; GRANT anon, authenticated, service_role TO {role};"
    ))
    .await
    .unwrap();
    let db_url = stack
        .var("DATABASE_URL")
        .replace("postgres@", &format!("{role}:outage@"));
    let mut rest = PrivateRest::spawn_with_db(&stack, &db_url);
    // Slow answers keep the run going through the outage.
    let standin = Standin::spawn(&["--latency-ms", "250"]);
    let stack = stack
        .with("SUPABASE_URL", &rest.url())
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key);
    let archive = unique("outage");
    let texts: Vec<String> = (0..200)
        .map(|i| format!("§ {i} {archive} Kommunen fører tilsyn med at loven følges."))
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;
    let (queue, _) = stack.fresh_queue(5, 10).await;
    let store = stack.store();
    let dispatcher = stack.dispatcher(&queue);
    let summary = dispatcher
        .dispatch(&options(&format!(
            r#"{{"archive": "{archive}", "batch_size": 5}}"#
        )))
        .await
        .unwrap();
    let worker = stack.worker();
    let consume = ConsumeOptions {
        until_empty: false,
        concurrency: 2,
        batch_size: 10,
        wait: Duration::from_secs(1),
        message_timeout: Duration::from_secs(60),
        on_failure: OnFailure::Leave,
    };
    let work = runner::consume(&worker, &queue, &consume);
    let outage = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        rest.stop();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rest.start();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cut: i64 = pg
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1) t",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        assert!(cut > 0, "the server held no database sessions to cut");
        for _ in 0..120 {
            let run = run_of(&store, summary.run_id).await;
            if run.state.is_finished() {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("the run did not finish after the outage");
    };
    let run = tokio::select! {
        run = outage => run,
        r = work => panic!("the consumer stopped: {r:?}"),
    };
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(
        (run.documents_embedded, run.batches_done, run.batches_failed),
        (200, 40, 0)
    );
    assert_eq!(vectors(&pg, TABLE, &ids).await.len(), 200);
    assert!(
        run.finished_at.unwrap() - run.created_at > chrono::Duration::seconds(3),
        "the run ended before the outage"
    );
    // The gateway stayed up and answered 502 while postrust was down, as
    // Supabase's does; the client took it for a transient failure.
    let stats = rest.stats().await;
    assert!(
        stats["statuses"]["502"].as_u64().unwrap_or(0) > 0,
        "no call met the outage: {stats}"
    );
    rest.stop();
    pg.batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn malformed_dispatcher_events_are_refused_before_anything_happens() {
    // Nothing answers at this URL: an event that got past validation would fail
    // with a connection error instead of naming its fault.
    let stack = Stack::load().with("SUPABASE_URL", "http://127.0.0.1:9");
    let (queue, _) = stack.fresh_queue(30, 5).await;
    let dispatcher = stack.dispatcher(&queue);
    let run = uuid::Uuid::new_v4();
    let events: Vec<(serde_json::Value, &str)> = vec![
        (serde_json::json!(null), "JSON object"),
        (serde_json::json!([]), "JSON object"),
        (serde_json::json!("archive"), "JSON object"),
        (serde_json::json!(42), "JSON object"),
        (serde_json::json!(true), "JSON object"),
        (serde_json::json!({"archiv": "x"}), "archiv"),
        (serde_json::json!({"Archive": "x"}), "Archive"),
        (serde_json::json!({"archive": ""}), "archive"),
        (serde_json::json!({"archive": 12}), "archive"),
        (serde_json::json!({"archive": "a\u{0}b"}), "archive"),
        (serde_json::json!({"archive": "x".repeat(2000)}), "archive"),
        (serde_json::json!({"limit": 0}), "limit"),
        (serde_json::json!({"limit": -5}), "limit"),
        (serde_json::json!({"limit": "100"}), "limit"),
        (serde_json::json!({"limit": 1.5}), "limit"),
        (serde_json::json!({"resume_from_id": -1}), "resume_from_id"),
        (
            serde_json::json!({"resume_from_id": "5000"}),
            "resume_from_id",
        ),
        (serde_json::json!({"batch_size": 0}), "batch_size"),
        (serde_json::json!({"batch_size": 1001}), "batch_size"),
        (
            serde_json::json!({"batch_size": 99999999999u64}),
            "batch_size",
        ),
        (
            serde_json::json!({"embedding_batch_size": 0}),
            "embedding_batch_size",
        ),
        (
            serde_json::json!({"embedding_batch_size": 2049}),
            "embedding_batch_size",
        ),
        (serde_json::json!({"dry_run": "true"}), "dry_run"),
        (serde_json::json!({"force": 1}), "force"),
        (
            serde_json::json!({"continue_run": "not-a-uuid"}),
            "continue_run",
        ),
        (
            serde_json::json!({"continue_run": run, "archive": "x"}),
            "continue_run",
        ),
        (serde_json::json!({"hop": 3}), "hop"),
        (
            serde_json::json!({"continue_run": run, "hop": 1_000_000}),
            "hop",
        ),
    ];
    assert!(events.len() >= 20);
    for (event, field) in events {
        let shown = event.to_string();
        let err = handlers::dispatch_event(&dispatcher, event, None)
            .await
            .unwrap_err();
        assert!(matches!(err, HandlerError::Event(_)), "{shown}: {err}");
        assert!(err.to_string().contains(field), "{shown}: {err}");
    }
    assert!(queue
        .receive(10, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn malformed_sqs_bodies_fail_alone_and_stay_on_the_queue() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("bodies");
    let broadcasting = format!("Lov om kringkasting {archive}");
    insert_docs(&pg, TABLE, &archive, &[Some(broadcasting.as_str())]).await;
    let (queue, _) = stack.fresh_queue(2, 5).await;
    let store = stack.store();
    let dispatcher = stack.dispatcher(&queue);
    dispatcher
        .dispatch(&options(&format!(r#"{{"archive": "{archive}"}}"#)))
        .await
        .unwrap();
    let Received {
        message: good,
        receipt: good_receipt,
    } = queue
        .receive(1, Duration::from_secs(2))
        .await
        .unwrap()
        .remove(0);
    let good = good.body;
    let unknown_run = good.replace(&good[17..53], &uuid::Uuid::new_v4().to_string());
    let bad = vec![
        String::new(),
        "not json".to_string(),
        "[]".to_string(),
        "null".to_string(),
        "{}".to_string(),
        r#"{"v":1}"#.to_string(),
        good.replace("\"v\":1", "\"v\":2"),
        good.replace("\"v\":1", "\"v\":1,\"ids\":[1,2]"),
        good.replace("\"batch\":0", "\"batch\":-1"),
        good.replace("\"batch\":0", "\"batch\":\"0\""),
        unknown_run,
        good.replace("\"batch\":0", "\"batch\":999"),
    ];
    assert!(bad.len() >= 10);
    queue.send_raw(&bad).await.unwrap();
    let worker = stack.worker();
    let mut received = Vec::new();
    for _ in 0..10 {
        received.extend(queue.receive(10, Duration::from_secs(1)).await.unwrap());
        if received.len() >= bad.len() {
            break;
        }
    }
    let mut records: Vec<serde_json::Value> = received
        .iter()
        .map(|Received { message: m, .. }| serde_json::json!({"messageId": m.message_id, "body": m.body, "attributes": {"ApproximateReceiveCount": "1"}}))
        .collect();
    records.push(serde_json::json!({"messageId": "good", "body": good, "attributes": {}}));
    let event: aws_lambda_events::event::sqs::SqsEvent =
        serde_json::from_value(serde_json::json!({ "Records": records })).unwrap();
    let response = handlers::sqs_event(&worker, event, None).await.unwrap();
    let failed: HashSet<String> = response
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    assert_eq!(failed.len(), bad.len());
    assert!(!failed.contains("good"));
    assert_eq!(
        store
            .coverage(&stack.spec(), Some(&archive))
            .await
            .unwrap()
            .with_embeddings,
        1
    );
    queue.delete(&[good_receipt]).await.unwrap();
    // Not deleted: the failed bodies come back after the visibility timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut back = 0;
    for _ in 0..10 {
        back += queue
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .len();
        if back >= bad.len() {
            break;
        }
    }
    assert_eq!(back, bad.len(), "a malformed message was lost");
}

#[tokio::test]
async fn keys_never_reach_the_output() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("secrets");
    let secrecy = format!("Lov om vern av hemmeligheter {archive}");
    insert_docs(&pg, TABLE, &archive, &[Some(secrecy.as_str()), Some("")]).await;
    let secrets: Vec<String> = [
        "SUPABASE_SECRET_KEY",
        "SUPABASE_PUBLISHABLE_KEY",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_ANON_KEY",
        "SUPABASE_JWT_SECRET",
        "OPENAI_API_KEY",
    ]
    .iter()
    .map(|k| stack.var(k))
    .collect();
    let run = |stack: &Stack, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
            .args(args)
            .current_dir(std::env::temp_dir())
            .env_clear()
            .envs(&stack.vars)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap()
    };
    let standin = Standin::spawn(&[]);
    let wrong_openai = stack
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", "sk-this-key-is-wrong-and-secret-1234");
    // A wrong secret key, and a wrong legacy key with no secret key to win over it.
    let wrong_secret = stack.with(
        "SUPABASE_SECRET_KEY",
        &format!("{}x", stack.var("SUPABASE_SECRET_KEY")),
    );
    let wrong_legacy = stack.without("SUPABASE_SECRET_KEY").with(
        "SUPABASE_SERVICE_ROLE_KEY",
        &format!("{}x", stack.var("SUPABASE_SERVICE_ROLE_KEY")),
    );
    let outputs = vec![
        run(&stack, &["run", "--archive", &archive, "--json"]),
        run(&stack, &["status", "--json"]),
        run(
            &wrong_openai,
            &["run", "--archive", &unique("secrets-b"), "--force"],
        ),
        run(&wrong_secret, &["verify"]),
        run(&wrong_legacy, &["verify"]),
    ];
    for wrong in &outputs[3..] {
        assert!(!wrong.status.success(), "verify passed with a wrong key");
    }
    let mut all = String::new();
    for o in &outputs {
        all.push_str(&String::from_utf8_lossy(&o.stdout));
        all.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    assert!(all.len() > 1000, "too little output to judge: {all}");
    for secret in secrets
        .iter()
        .map(String::as_str)
        .chain(["sk-this-key-is-wrong-and-secret-1234"])
    {
        assert!(!all.contains(secret), "a key reached the output");
        assert!(
            !all.contains(&secret[secret.len() - 12..]),
            "part of a key reached the output"
        );
    }
    let cfg = format!("{:?}", stack.env().supabase().unwrap());
    let legacy = format!(
        "{:?}",
        stack
            .without("SUPABASE_SECRET_KEY")
            .env()
            .supabase()
            .unwrap()
    );
    let openai = format!("{:?}", stack.env().embedding().unwrap());
    for secret in &secrets {
        for debug in [&cfg, &legacy, &openai] {
            assert!(!debug.contains(secret.as_str()), "a key in Debug output");
        }
    }
}
