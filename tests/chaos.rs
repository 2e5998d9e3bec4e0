//! The chaos run: 5,000 documents through dispatch, SQS and two worker
//! processes while the embeddings server fails 10% of requests at random and
//! rate-limits hard, five documents are poison, a worker is killed twice and
//! the API server restarts once; the dead-letter queue is redriven while the
//! rate limit still bites, so redriven batches meet 429s, and each redriven
//! batch must get its full retries: a few rounds of redrive must suffice.
//! Afterwards every counter must be exact.

mod common;

use common::{insert_docs, run_of, unique, vectors, PrivateRest, Stack, Standin};
use embed_backfill::queue::SqsQueue;
use embed_backfill::redrive;
use embed_backfill::store::RunState;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TABLE: &str = "lovdata_documents";
const DOCS: usize = 5_000;
const POISON: [usize; 5] = [7, 1234, 2500, 3333, 4999];

fn spawn_worker(stack: &Stack) -> Child {
    Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(["work", "--concurrency", "2", "--timeout-secs", "30"])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .envs(&stack.vars)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn backfill work")
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn chaos() {
    let started = Instant::now();
    let base = Stack::load();
    let standin = Standin::spawn(&["--error-rate", "0.1", "--tpm", "60000", "--seed", "7"]);
    let mut rest = PrivateRest::spawn(&base);
    let (queue, dlq_url) = base.fresh_queue(3, 3).await;
    let stack = base
        .with("OPENAI_BASE_URL", &format!("{}/v1", standin.url))
        .with("OPENAI_API_KEY", &standin.key)
        .with("SUPABASE_URL", &rest.url())
        .with("BACKFILL_QUEUE_URL", queue.url())
        .with("BACKFILL_DLQ_URL", &dlq_url)
        .with("BACKFILL_MAX_RECEIVE_COUNT", "3");
    let pg = stack.pg().await;
    let archive = unique("chaos");
    let texts: Vec<String> = (0..DOCS)
        .map(|i| {
            if POISON.contains(&i) {
                format!("§ {i} {archive} ødelagt [[fail:400]]")
            } else {
                format!(
                    "§ {i} {archive} Lov om kommuner, kapittel {}, ledd {}.",
                    i % 97,
                    i % 13
                )
            }
        })
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let ids = insert_docs(&pg, TABLE, &archive, &refs).await;

    let store = stack.store();
    let dispatcher = stack.dispatcher(&queue);
    let opts = embed_backfill::dispatch::DispatchRequest {
        archive: Some(archive.clone()),
        batch_size: Some(50),
        embedding_batch_size: Some(50),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let summary = dispatcher.dispatch(&opts).await.unwrap();
    let run_id = summary.run_id.unwrap();
    assert_eq!((summary.documents, summary.batches), (DOCS as u64, 100));

    let mut workers = vec![spawn_worker(&stack), spawn_worker(&stack)];
    let mut kills = 0;
    let mut restarted = false;
    let mut redriven = 0;
    let mut rounds = 0;
    let mut limited_at_redrive: Option<u64> = None;
    let dlq = SqsQueue::new(stack.sqs_client().await, dlq_url.clone());
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(420),
            "the chaos run did not settle"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = started.elapsed();
        if kills == 0 && t > Duration::from_secs(4) || kills == 1 && t > Duration::from_secs(9) {
            kill(&mut workers[kills]);
            workers[kills] = spawn_worker(&stack);
            kills += 1;
        }
        if !restarted && t > Duration::from_secs(6) {
            rest.stop();
            tokio::time::sleep(Duration::from_secs(1)).await;
            rest.start();
            restarted = true;
        }
        if kills < 2 || !restarted {
            continue;
        }
        let run = run_of(&store, run_id).await;
        // Dead letters go back at once, while the backlog still fills the
        // rate limit, so redriven batches meet 429s like everyone else.
        let in_dlq = stack.queue_depth(&dlq_url).await;
        if in_dlq > 0 {
            rounds += 1;
            assert!(
                rounds <= 10,
                "redriven batches went back to the dead-letter queue again and again: {}",
                run.last_error.unwrap_or_default()
            );
            if limited_at_redrive.is_none() {
                limited_at_redrive = standin.stats().await["status_429"].as_u64();
            }
            redriven += redrive::redrive(&dlq, &queue, Some(run_id), None)
                .await
                .unwrap()
                .moved;
            continue;
        }
        if stack.queue_depth(queue.url()).await > 0 {
            continue;
        }
        if run.state.is_finished() && run.batches_failed == 0 {
            break;
        }
    }
    for w in &mut workers {
        kill(w);
    }

    let run = run_of(&store, run_id).await;
    let stats = standin.stats().await;
    println!(
        "chaos: {} documents in {:.1}s; embedded {}, failed {} (poison), batches {}/{} done, {} failed; \
         tokens {}; API requests {} ({} answered 429, {} 5xx, {} 4xx); workers killed {kills}, API server restarted once, \
         {redriven} message(s) redriven from the DLQ in {rounds} round(s); tokens billed {}",
        DOCS,
        started.elapsed().as_secs_f64(),
        run.documents_embedded,
        run.documents_failed,
        run.batches_done,
        run.total_batches,
        run.batches_failed,
        run.tokens_used,
        stats["requests"],
        stats["status_429"],
        stats["status_5xx"],
        stats["status_4xx"],
        run.tokens_billed,
    );
    assert!(
        stats["status_429"].as_u64().unwrap() > 0,
        "the TPM limit never bit"
    );
    assert!(
        stats["status_5xx"].as_u64().unwrap() > 0,
        "no random faults happened"
    );
    let limited = stats["status_429"].as_u64().unwrap();
    assert!(
        limited_at_redrive.is_some_and(|before| limited > before),
        "no 429 after the first redrive ({limited_at_redrive:?} then {limited})"
    );
    assert_eq!(run.state, RunState::CompletedWithErrors);
    assert_eq!(run.documents_embedded, (DOCS - POISON.len()) as u64);
    assert_eq!(run.documents_failed, POISON.len() as u64);
    assert_eq!(run.documents_skipped, 0);
    assert_eq!((run.batches_done, run.batches_failed), (100, 0));
    let failed: Vec<i64> = run.failed_documents.iter().map(|d| d.id.0).collect();
    assert_eq!(failed, POISON.iter().map(|&i| ids[i]).collect::<Vec<_>>());
    assert!(run
        .failed_documents
        .iter()
        .all(|d| d.reason.contains("injected fault")));
    assert_eq!(stack.queue_depth(&dlq_url).await, 0);
    assert_eq!(stack.queue_depth(queue.url()).await, 0);

    let stored = vectors(&pg, TABLE, &ids).await;
    let good: Vec<usize> = (0..DOCS).filter(|i| !POISON.contains(i)).collect();
    let good_texts: Vec<&str> = good.iter().map(|&i| texts[i].as_str()).collect();
    // Tokens count each document's one embedding, however often it was paid.
    let tokens: u64 = good_texts
        .iter()
        .map(|t| embed_backfill::tokens::count(t) as u64)
        .sum();
    assert_eq!(run.tokens_used, tokens);
    // Billed covers every paid attempt, duplicates and failed deliveries too.
    assert!(
        run.tokens_billed >= run.tokens_used,
        "{} < {}",
        run.tokens_billed,
        run.tokens_used
    );
    let expected = base.expected_vectors(&good_texts).await;
    for (&i, want) in good.iter().zip(&expected) {
        assert_eq!(
            stored.get(&ids[i]),
            Some(want),
            "document {} does not hold its own vector",
            ids[i]
        );
    }
    for &i in &POISON {
        assert!(
            !stored.contains_key(&ids[i]),
            "poison document {} got a vector",
            ids[i]
        );
    }
}
