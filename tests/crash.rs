//! Crash safety: a worker or dispatcher killed with SIGKILL at each point of its
//! work leaves a state that a redelivery (or a continuation) turns into exactly
//! the crash-free result. Needs the `failpoints` feature (`make test` enables it).

mod common;

use common::{insert_docs, run_of, unique, vectors, Stack};
use embed_backfill::ids::RunId;
use embed_backfill::store::RunState;
use embed_backfill::tokens;
use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::time::Duration;

const TABLE: &str = "lovdata_documents";

fn backfill(stack: &Stack, crash_at: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backfill"));
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .envs(&stack.vars)
        .env("RUST_LOG", "warn");
    if let Some(point) = crash_at {
        cmd.env("BACKFILL_CRASH_AT", point);
    }
    cmd.output().expect("run backfill")
}

fn assert_killed(out: &Output, point: &str) {
    assert_eq!(
        out.status.signal(),
        Some(9),
        "expected a SIGKILL at {point}, got {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn seed(stack: &Stack, prefix: &str, n: usize) -> (String, Vec<i64>, Vec<String>) {
    let pg = stack.pg().await;
    let archive = unique(prefix);
    let texts: Vec<String> = (0..n)
        .map(|i| format!("§ {i} {archive}: Departementet kan gi forskrift om søknad og vedtak."))
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;
    (archive, ids, texts)
}

/// The crash-free result: every document holds its own vector, and the run's
/// counters are what one clean pass gives.
async fn assert_clean_result(
    stack: &Stack,
    archive: &str,
    ids: &[i64],
    texts: &[String],
    batches: u64,
) {
    let pg = stack.pg().await;
    let stored = vectors(&pg, TABLE, ids).await;
    for (id, text) in ids.iter().zip(texts) {
        assert_eq!(
            stored.get(id),
            Some(&stack.expected_vector(text).await),
            "document {id}"
        );
    }
    let row = pg
        .query_one("SELECT id::text FROM backfill_runs WHERE archive = $1 ORDER BY created_at DESC LIMIT 1", &[&archive])
        .await
        .unwrap();
    let run_id: String = row.get(0);
    let run = run_of(&stack.store(), run_id.parse::<RunId>().unwrap()).await;
    let tokens: u64 = texts.iter().map(|t| tokens::count(t) as u64).sum();
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(
        (
            run.total_documents,
            run.documents_embedded,
            run.documents_skipped,
            run.documents_failed
        ),
        (ids.len() as u64, ids.len() as u64, 0, 0)
    );
    assert_eq!(
        (run.total_batches, run.batches_done, run.batches_failed),
        (batches, batches, 0)
    );
    assert_eq!(
        run.tokens_used, tokens,
        "tokens counted more or less than once"
    );
}

#[tokio::test]
async fn a_worker_killed_anywhere_is_repaired_by_redelivery() {
    let base = Stack::load();
    for point in [
        "worker_after_begin",
        "worker_after_embed",
        "worker_after_complete",
        "work_before_delete",
    ] {
        let (archive, ids, texts) = seed(&base, point, 12).await;
        let (queue, _) = base.fresh_queue(2, 5).await;
        let stack = base.with("BACKFILL_QUEUE_URL", queue.url());
        assert_ok(&backfill(
            &stack,
            None,
            &["dispatch", "--archive", &archive, "--batch-size", "4"],
        ));
        let crashed = backfill(
            &stack,
            Some(point),
            &["work", "--until-empty", "--concurrency", "1"],
        );
        assert_killed(&crashed, point);
        // The message the worker held comes back after the visibility timeout.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_ok(&backfill(&stack, None, &["work", "--until-empty"]));
        assert_clean_result(&stack, &archive, &ids, &texts, 3).await;
    }
}

#[tokio::test]
async fn a_dispatcher_killed_mid_paging_continues_without_duplicates() {
    let base = Stack::load();
    for point in ["dispatch_after_save", "dispatch_after_send"] {
        let (archive, ids, texts) = seed(&base, point, 30).await;
        let (queue, _) = base.fresh_queue(30, 5).await;
        let stack = base.with("BACKFILL_QUEUE_URL", queue.url());
        let crashed = backfill(
            &stack,
            Some(point),
            &["dispatch", "--archive", &archive, "--batch-size", "2"],
        );
        assert_killed(&crashed, point);
        let pg = stack.pg().await;
        let run_id: String = pg
            .query_one(
                "SELECT id::text FROM backfill_runs WHERE archive = $1",
                &[&archive],
            )
            .await
            .unwrap()
            .get(0);
        let again = backfill(&stack, None, &["dispatch", "--continue", &run_id, "--json"]);
        assert_ok(&again);
        let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
        assert_eq!(summary["complete"], true);
        assert_eq!(summary["documents"], 30);
        assert_eq!(summary["batches"], 15);
        let rows = pg
            .query(
                "SELECT ids FROM backfill_batches WHERE run_id = $1::text::uuid",
                &[&run_id],
            )
            .await
            .unwrap();
        let mut seen = HashSet::new();
        for r in &rows {
            for id in r.get::<_, Vec<i64>>(0) {
                assert!(
                    seen.insert(id),
                    "document {id} in two batches after {point}"
                );
            }
        }
        assert_eq!(seen.len(), 30);
        assert_ok(&backfill(&stack, None, &["work", "--until-empty"]));
        assert_clean_result(&stack, &archive, &ids, &texts, 15).await;
    }
}
