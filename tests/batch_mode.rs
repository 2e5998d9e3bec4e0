//! Batch mode against the real stack and the stand-in's Batch API: every
//! document ends with the vector of its own text, at the batch price, once,
//! whatever the provider does to the jobs (expires part of one, refuses an
//! input, refuses a job for its full queue) and wherever the poller dies.

mod common;

use common::{backfill, insert_docs, json_of, run_of, unique, vectors, Stack, Standin};
use embed_backfill::ids::RunId;
use embed_backfill::store::RunState;
use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;

/// The stack pointed at a private stand-in, so its counters are this
/// test's, and at a table of its own: a poller takes the jobs of every run
/// over its table, and another test's `backfill work` polls too.
async fn stack_on(standin: &Standin) -> Stack {
    let stack = Stack::load();
    let table = stack.fresh_table("batch_docs").await;
    stack
        .with("BACKFILL_TABLE", &table)
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key)
}

/// `backfill run --mode batch` over the archive, polling every second: its
/// final status.
fn run_batch(stack: &Stack, archive: &str, args: &[&str]) -> Value {
    let mut all = vec![
        "run",
        "--archive",
        archive,
        "--mode",
        "batch",
        "--poll-secs",
        "1",
    ];
    all.extend_from_slice(args);
    all.push("--json");
    json_of(&backfill(stack, &all))
}

async fn insert(stack: &Stack, archive: &str, texts: &[String]) -> Vec<i64> {
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    insert_docs(
        &stack.pg().await,
        &stack.var("BACKFILL_TABLE"),
        archive,
        &refs,
    )
    .await
}

/// `n` distinct texts of the archive.
fn texts(archive: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("§ {i} {archive} Lov om forvaltningen, kapittel {}.", i % 11))
        .collect()
}

/// Every row holds the stand-in's vector of its own text.
async fn assert_own_vectors(stack: &Stack, ids: &[i64], texts: &[String]) {
    let pg = stack.pg().await;
    let stored = vectors(&pg, &stack.var("BACKFILL_TABLE"), ids).await;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let expected = stack.expected_vectors(&refs).await;
    for ((id, text), want) in ids.iter().zip(texts).zip(expected) {
        let got = stored
            .get(id)
            .unwrap_or_else(|| panic!("row {id} ({text:?}) has no vector"));
        let close = got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(close, "row {id} holds another text's vector");
    }
}

/// The stand-in's Batch API batches, newest first.
async fn remote_batches(standin: &Standin) -> Vec<Value> {
    let list: Value = reqwest::Client::new()
        .get(format!("{}/v1/batches?limit=100", standin.url))
        .bearer_auth(&standin.key)
        .send()
        .await
        .expect("list batches")
        .json()
        .await
        .expect("batches json");
    list["data"].as_array().cloned().unwrap_or_default()
}

/// How many of the stand-in's batches ran (were paid for) per job tag.
async fn paid_per_job(standin: &Standin) -> HashMap<String, usize> {
    let mut paid = HashMap::new();
    for b in remote_batches(standin).await {
        if matches!(b["status"].as_str(), Some("completed" | "expired")) {
            let job = b["metadata"]["embed_backfill_job"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            *paid.entry(job).or_insert(0) += 1;
        }
    }
    paid
}

#[tokio::test]
async fn a_batch_mode_run_embeds_every_document_with_its_own_text_at_half_price() {
    let standin = Standin::spawn(&[]);
    let stack = stack_on(&standin).await;
    let archive = unique("batch-run");
    // A text twice in one batch: sent once, copied to the other row.
    let mut all = texts(&archive, 230);
    all[10] = all[3].clone();
    let ids = insert(&stack, &archive, &all).await;

    let dry = run_batch(&stack, &archive, &["--dry-run"]);
    let (direct, batch) = (
        dry["costs"]["direct_usd"].as_f64().unwrap(),
        dry["costs"]["batch_usd"].as_f64().unwrap(),
    );
    assert!((batch * 2.0 - direct).abs() < 1e-12, "{dry}");
    assert_eq!(dry["estimated_cost_usd"].as_f64(), Some(batch));

    let status = run_batch(
        &stack,
        &archive,
        &["--batch-size", "50", "--job-size", "120"],
    );
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["documents_embedded"], 230);
    assert_eq!(status["documents_copied"], 1);
    assert_eq!(status["params"]["options"]["mode"], "batch");
    let tokens = status["tokens_used"].as_f64().unwrap();
    let cost = status["actual_cost_usd"].as_f64().unwrap();
    assert!((cost - tokens * 0.01 / 1e6).abs() < 1e-12, "{status}");

    // Five batches of 50 in jobs of at most 120 documents: three jobs, each
    // paid once, and no direct request at all.
    let stats = standin.stats().await;
    assert_eq!(stats["requests"], 0, "{stats}");
    assert_eq!(stats["batches"], 3, "{stats}");
    let paid = paid_per_job(&standin).await;
    assert_eq!(paid.len(), 3, "{paid:?}");
    assert!(paid.values().all(|n| *n == 1), "{paid:?}");
    assert_own_vectors(&stack, &ids, &all).await;
}

#[tokio::test]
async fn expired_lines_go_again_and_a_refused_input_fails_alone() {
    // Half the lines of the first job expire; the poison's line is refused.
    let standin = Standin::spawn(&["--batch-expire-share", "0.5", "--batch-expire-first", "1"]);
    let stack = stack_on(&standin).await;
    let archive = unique("batch-faults");
    let mut all = texts(&archive, 200);
    all[60] = format!("§ 60 {archive} ødelagt [[fail:400]]");
    let ids = insert(&stack, &archive, &all).await;

    let status = run_batch(
        &stack,
        &archive,
        &["--batch-size", "50", "--embedding-batch-size", "25"],
    );
    assert_eq!(status["state"], "completed_with_errors", "{status}");
    assert_eq!(status["documents_embedded"], 199, "{status}");
    assert_eq!(status["documents_failed"], 1, "{status}");
    let mut good_ids = ids.clone();
    let mut good = all.clone();
    good_ids.remove(60);
    good.remove(60);
    assert_own_vectors(&stack, &good_ids, &good).await;
    let stored = vectors(
        &stack.pg().await,
        &stack.var("BACKFILL_TABLE"),
        &ids[60..61],
    )
    .await;
    assert!(stored.is_empty(), "the poison got a vector");

    // Eight lines of 25: four expired and went again in a second job; the
    // poison's line was refused, and only its 25 inputs went direct, bisected
    // down to the poison.
    let stats = standin.stats().await;
    assert_eq!(stats["batch_expired_lines"], 4, "{stats}");
    assert_eq!(stats["batches"], 2, "{stats}");
    let direct = stats["requests"].as_u64().unwrap();
    assert!((1..=15).contains(&direct), "{stats}");
    let run = status["id"].as_str().unwrap().to_string();
    let jobs = json_of(&backfill(&stack, &["status", &run, "--json"]));
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(2), "{jobs}");

    // retry-failed puts the poison's batch into a new job, not on SQS; it
    // fails alone again, and nothing is counted twice.
    let retried = backfill(&stack, &["retry-failed", &run, "--json"]);
    assert!(retried.status.success(), "{retried:?}");
    for _ in 0..10 {
        json_of(&backfill(&stack, &["poll", "--run", &run, "--json"]));
        let s = json_of(&backfill(&stack, &["status", &run, "--json"]));
        if s["state"] != "running" {
            break;
        }
    }
    let again = json_of(&backfill(&stack, &["status", &run, "--json"]));
    assert_eq!(again["state"], "completed_with_errors", "{again}");
    assert_eq!(again["documents_embedded"], 199, "{again}");
    assert_eq!(again["documents_failed"], 1, "{again}");
    assert_eq!(again["jobs"].as_array().map(Vec::len), Some(3), "{again}");
    assert_eq!(standin.stats().await["batches"], 3);
}

#[tokio::test]
async fn a_full_provider_queue_makes_jobs_wait_not_fail() {
    // Room for about two jobs' tokens; each job stays queued for a second.
    let standin = Standin::spawn(&[
        "--batch-queue-tokens",
        "1000",
        "--batch-complete-ms",
        "1500",
    ]);
    let stack = stack_on(&standin).await;
    let archive = unique("batch-queue");
    let all = texts(&archive, 200);
    let ids = insert(&stack, &archive, &all).await;

    let status = run_batch(
        &stack,
        &archive,
        &["--batch-size", "25", "--job-size", "25"],
    );
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["documents_embedded"], 200);
    assert_own_vectors(&stack, &ids, &all).await;
    // Eight jobs, each paid once; the refusals cost nothing.
    let paid = paid_per_job(&standin).await;
    assert_eq!(paid.len(), 8, "{paid:?}");
    assert!(paid.values().all(|n| *n == 1), "{paid:?}");
    let refused = remote_batches(&standin)
        .await
        .iter()
        .filter(|b| b["status"] == "failed")
        .count();
    assert!(refused > 0, "the queue limit never bit");
}

/// `backfill poll` killed at `point`, then polled again until the run ends.
async fn poll_killed_at(point: &str) -> (Standin, Vec<i64>, Vec<String>, Stack) {
    let standin = Standin::spawn(&[]);
    let stack = stack_on(&standin).await;
    let archive = unique("batch-crash");
    let all = texts(&archive, 120);
    let ids = insert(&stack, &archive, &all).await;
    let summary = json_of(&backfill(
        &stack,
        &[
            "dispatch",
            "--archive",
            &archive,
            "--mode",
            "batch",
            "--json",
        ],
    ));
    let run: RunId = summary["run_id"].as_str().unwrap().parse().unwrap();

    let killed = Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(["poll", "--run", &run.to_string(), "--timeout-secs", "3"])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .envs(&stack.vars)
        .env("BACKFILL_CRASH_AT", point)
        .output()
        .expect("run backfill poll");
    assert!(
        !killed.status.success(),
        "the poll was not killed at {point}"
    );
    // Its lease ends with the deadline it had.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    for _ in 0..10 {
        json_of(&backfill(
            &stack,
            &["poll", "--run", &run.to_string(), "--json"],
        ));
        if run_of(&stack.store(), run).await.state.is_finished() {
            break;
        }
    }
    let status = run_of(&stack.store(), run).await;
    assert_eq!(status.state, RunState::Completed, "{status:?}");
    assert_eq!(status.documents_embedded, 120);
    (standin, ids, all, stack)
}

#[tokio::test]
async fn a_poller_killed_after_creating_the_job_adopts_it() {
    let (standin, ids, all, stack) = poll_killed_at("job_after_create").await;
    assert_own_vectors(&stack, &ids, &all).await;
    let stats = standin.stats().await;
    assert_eq!(stats["batches"], 1, "a second job was created: {stats}");
    assert_eq!(stats["batch_files"], 1, "{stats}");
}

#[tokio::test]
async fn a_poller_killed_after_uploading_deletes_the_file_it_left() {
    let (standin, ids, all, stack) = poll_killed_at("job_after_upload").await;
    assert_own_vectors(&stack, &ids, &all).await;
    let stats = standin.stats().await;
    assert_eq!(stats["batches"], 1, "{stats}");
    assert_eq!(stats["batch_files"], 2, "{stats}");
    // The orphan went when the second upload began, the used file and the
    // output after collection: no file is left behind.
    let files: Value = reqwest::Client::new()
        .get(format!("{}/v1/files", standin.url))
        .bearer_auth(&standin.key)
        .send()
        .await
        .expect("list files")
        .json()
        .await
        .expect("files json");
    assert_eq!(files["data"].as_array().map(Vec::len), Some(0), "{files}");
}
