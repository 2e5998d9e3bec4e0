//! The `backfill` binary as an operator runs it, and the sample events.

mod common;

use common::{backfill, insert_docs, json_of as json, sample_texts, unique, Stack};
use embed_backfill::dispatch::DispatchRequest;
use embed_backfill::queue::BatchMessage;

#[tokio::test]
async fn run_embeds_an_archive_in_one_process() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("cli-run");
    let texts = sample_texts(30);
    let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
    insert_docs(&pg, "lovdata_documents", &archive, &refs).await;
    let status = json(&backfill(
        &stack,
        &[
            "run",
            "--archive",
            &archive,
            "--batch-size",
            "8",
            "--concurrency",
            "3",
            "--json",
        ],
    ));
    assert_eq!(status["state"], "completed");
    assert_eq!(status["total_documents"], 30);
    assert_eq!(status["batches_done"], 4);
    let processed = status["documents_embedded"].as_u64().unwrap()
        + status["documents_skipped"].as_u64().unwrap();
    assert_eq!(processed, 30);
    assert_eq!(status["progress"]["percent"], 100.0);

    let coverage = json(&backfill(
        &stack,
        &["verify", "--archive", &archive, "--json"],
    ));
    assert_eq!(coverage["total"], 30);
    assert_eq!(coverage["with_embeddings"], status["documents_embedded"]);
    assert_eq!(coverage["without_embeddings"], status["documents_skipped"]);
}

#[tokio::test]
async fn dispatch_then_work_then_status() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("cli-sqs");
    let texts = sample_texts(12);
    let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
    insert_docs(&pg, "lovdata_documents", &archive, &refs).await;
    let (queue, dlq) = stack.fresh_queue(30, 5).await;
    let stack = stack
        .with("BACKFILL_QUEUE_URL", queue.url())
        .with("BACKFILL_DLQ_URL", &dlq);

    let dry = json(&backfill(
        &stack,
        &["dispatch", "--archive", &archive, "--dry-run", "--json"],
    ));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["documents"], 12);

    let summary = json(&backfill(
        &stack,
        &[
            "dispatch",
            "--archive",
            &archive,
            "--batch-size",
            "5",
            "--json",
        ],
    ));
    assert_eq!(summary["batches"], 3);
    let run_id = summary["run_id"].as_str().unwrap().to_string();

    let tally = json(&backfill(&stack, &["work", "--until-empty", "--json"]));
    assert_eq!(tally["succeeded"], 3);
    assert_eq!(tally["failed"], 0);

    let status = json(&backfill(&stack, &["status", &run_id, "--json"]));
    assert_eq!(status["state"], "completed");
    assert_eq!(status["id"], run_id);
    let human = backfill(&stack, &["status", &run_id]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("completed") && text.contains("Progress: 12/12 (100.0%)"),
        "{text}"
    );
    assert!(text.contains("docs/sec") && text.contains("ETA"), "{text}");
}

#[tokio::test]
async fn bad_options_are_refused_by_name() {
    let stack = Stack::load();
    for (args, field) in [
        (vec!["dispatch", "--batch-size", "0"], "batch_size"),
        (
            vec!["dispatch", "--embedding-batch-size", "5000"],
            "embedding_batch_size",
        ),
        (vec!["dispatch", "--limit", "0"], "limit"),
        (vec!["run", "--archive", ""], "archive"),
        (vec!["dispatch", "--resume-from-id", "-3"], "resume_from_id"),
    ] {
        let out = backfill(&stack, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(field), "{args:?}: {err}");
    }
    let out = backfill(
        &stack.with("OPENAI_API_KEY", ""),
        &["run", "--archive", "x"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("OPENAI_API_KEY is not set"));
    for sub in [
        "run", "dispatch", "work", "status", "verify", "adopt", "poll",
    ] {
        let out = backfill(&stack, &[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
    }
}

#[test]
fn sample_events_are_valid() {
    let dir = common::repo_root().join("events");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("dispatch") {
            DispatchRequest::from_json(&text)
                .and_then(DispatchRequest::into_command)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.starts_with("sqs") {
            let event: aws_lambda_events::event::sqs::SqsEvent =
                serde_json::from_str(&text).unwrap();
            assert_eq!(event.records.len(), 2);
            for r in event.records {
                BatchMessage::parse(r.body.as_deref().unwrap())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        } else if name.starts_with("poll") {
            // What an EventBridge schedule sends: the poller reads no field.
            let event: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(event["detail-type"], "Scheduled Event", "{name}");
            assert_eq!(event["source"], "aws.events", "{name}");
        } else {
            panic!("{name}: unknown kind of sample event");
        }
        seen += 1;
    }
    assert!(seen >= 6);
}

#[tokio::test]
async fn status_names_a_stalled_run_and_the_guard_says_how_to_finish_it() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let archive = unique("stalled");
    let texts: Vec<String> = (0..6)
        .map(|i| format!("§ {i} {archive} Loven gjelder på Svalbard."))
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    insert_docs(&pg, "lovdata_documents", &archive, &refs).await;
    let (full, run) = stack.dispatch_fresh(&archive, 2).await;
    // Its messages are gone (expired, or a last delivery that crashed) and
    // nothing has moved for two hours.
    pg.execute(
        "UPDATE backfill_runs SET updated_at = now() - interval '2 hours' WHERE id = $1::text::uuid",
        &[&run.to_string()],
    )
    .await
    .unwrap();
    let (empty, _) = stack.fresh_queue(30, 5).await;
    let on = |queue: &str| stack.with("BACKFILL_QUEUE_URL", queue);
    let status = json(&backfill(
        &on(empty.url()),
        &["status", &run.to_string(), "--json"],
    ));
    assert_eq!(status["state"], "running");
    let remedy = format!("backfill retry-failed {run} --unfinished");
    assert_eq!(status["stalled"]["remedy"], remedy.as_str());
    assert_eq!(status["stalled"]["queue_checked"], true);
    let text = backfill(&on(empty.url()), &["status", &run.to_string()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("STALLED") && text.contains(&remedy), "{text}");
    // Messages still on the queue will move it: not stalled.
    let busy = json(&backfill(
        &on(full.url()),
        &["status", &run.to_string(), "--json"],
    ));
    assert!(busy["stalled"].is_null(), "{busy}");
    // A shorter threshold than the idle time is what counts.
    let patient = json(&backfill(
        &on(empty.url()),
        &[
            "status",
            &run.to_string(),
            "--json",
            "--stalled-after",
            "180",
        ],
    ));
    assert!(patient["stalled"].is_null(), "{patient}");

    // A new dispatch of the archive is refused, naming the run as stalled.
    let refused = backfill(&on(empty.url()), &["dispatch", "--archive", &archive]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("stalled") && err.contains(&remedy) && err.contains("force"),
        "{err}"
    );

    // The remedy finishes it.
    let retried = json(&backfill(
        &on(empty.url()),
        &["retry-failed", &run.to_string(), "--unfinished", "--json"],
    ));
    assert_eq!(retried["queued"], 3);
    json(&backfill(
        &on(empty.url()),
        &["work", "--until-empty", "--json"],
    ));
    let done = json(&backfill(
        &on(empty.url()),
        &["status", &run.to_string(), "--json"],
    ));
    assert_eq!(done["state"], "completed");
    assert_eq!(done["documents_embedded"], 6);
}
