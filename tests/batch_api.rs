//! The stand-in's Batch API (`/v1/files`, `/v1/batches`) driven by the
//! official `openai` Python client (tests/fixtures/batch_client.py), so its
//! wire format is the one OpenAI's own SDK reads and writes. Needs the
//! stand-in binary (`cargo build -p devstack`) and `.tools/venv` with
//! requirements-dev.txt installed (`make stack` does both); no other service.

mod common;

use common::{repo_root, Standin};
use std::process::Command;

/// Runs the client script in `mode` against a private stand-in started with
/// `flags`; the stand-in, for its stats.
fn run_client(mode: &str, flags: &[&str]) -> Standin {
    let standin = Standin::spawn(flags);
    let python = repo_root().join(".tools/venv/bin/python");
    let script = repo_root().join("tests/fixtures/batch_client.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([mode, &format!("{}/v1", standin.url), &standin.key])
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run {}: {e} (make stack installs requirements-dev.txt into .tools/venv)",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "batch_client.py {mode} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
    standin
}

#[tokio::test]
async fn openai_client_runs_lists_cancels_and_hits_the_limits() {
    let standin = run_client(
        "complete",
        &["--batch-complete-ms", "500", "--batch-queue-tokens", "5000"],
    );
    let stats = standin.stats().await;
    // Four batches: the one that ran, a malformed one, one over the token
    // limit, a cancelled one; only the first ran its 16 lines.
    assert_eq!(stats["batches"], 4, "{stats}");
    assert_eq!(stats["batch_lines"], 16, "{stats}");
    assert_eq!(stats["batch_expired_lines"], 0, "{stats}");
    // The four batch files the script lists with purpose="batch" (the .txt
    // upload is refused); output files are not uploads.
    assert_eq!(stats["batch_files"], 4, "{stats}");
}

#[tokio::test]
async fn openai_client_reads_an_expired_batch() {
    let standin = run_client("expire", &["--batch-expire-share", "0.5"]);
    let stats = standin.stats().await;
    assert_eq!(stats["batches"], 1, "{stats}");
    assert_eq!(stats["batch_lines"], 5, "{stats}");
    assert_eq!(stats["batch_expired_lines"], 6, "{stats}");
}
