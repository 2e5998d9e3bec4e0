//! The old TypeScript script's algorithm, as its guide describes it, for the
//! benchmark's baseline: fetch 100 documents lacking a vector, one embeddings
//! call for them, one UPDATE per row, all in sequence. A failed batch is
//! logged and skipped, as the guide says. One kindness the old script lacked:
//! texts are cut to 8,191 tokens, so over-long documents do not fail (and
//! speed up) whole batches. Reads the same settings as `backfill`.

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "baseline",
    about = "The old backfill script's sequential algorithm, for benchmarks"
)]
struct Args {
    #[arg(long)]
    archive: String,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
}

/// The longest prefix of whole pre-tokenizer pieces within 8,191 tokens.
fn truncate(text: &str) -> String {
    let tok = bpe_openai::cl100k_base();
    let mut used = 0;
    let mut end = 0;
    for piece in tok.split(text) {
        let n = tok.count(piece);
        if used + n > 8_191 {
            break;
        }
        used += n;
        end += piece.len();
    }
    text[..end].to_string()
}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rest = format!(
        "{}/{}",
        var("SUPABASE_URL")?.trim_end_matches('/'),
        std::env::var("SUPABASE_REST_PATH")
            .unwrap_or_else(|_| "rest/v1".into())
            .trim_matches('/')
    )
    .trim_end_matches('/')
    .to_string();
    let key = var("SUPABASE_SERVICE_ROLE_KEY")?;
    let openai = format!(
        "{}/embeddings",
        var("OPENAI_BASE_URL")?.trim_end_matches('/')
    );
    let openai_key = var("OPENAI_API_KEY")?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let (mut done, mut failed, mut after) = (0usize, 0usize, 0i64);
    loop {
        let want = args.limit.map_or(args.batch_size, |l| {
            args.batch_size.min(l.saturating_sub(done + failed))
        });
        if want == 0 {
            break;
        }
        let docs: Vec<Value> = http
            .get(format!("{rest}/lovdata_documents"))
            .query(&[
                ("select", "id,content".to_string()),
                ("embedding", "is.null".to_string()),
                ("archive", format!("eq.{}", args.archive)),
                ("id", format!("gt.{after}")),
                ("order", "id".to_string()),
                ("limit", want.to_string()),
            ])
            .header("apikey", &key)
            .bearer_auth(&key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let Some(last) = docs.last() else { break };
        after = last["id"].as_i64().context("id")?;
        let docs: Vec<&Value> = docs
            .iter()
            .filter(|d| d["content"].as_str().is_some_and(|c| !c.trim().is_empty()))
            .collect();
        if docs.is_empty() {
            continue;
        }
        let inputs: Vec<String> = docs
            .iter()
            .filter_map(|d| d["content"].as_str())
            .map(truncate)
            .collect();
        let resp = http
            .post(&openai)
            .bearer_auth(&openai_key)
            .json(&json!({"model": "text-embedding-3-small", "input": inputs}))
            .send()
            .await?;
        if !resp.status().is_success() {
            eprintln!(
                "batch after id {after} failed: HTTP {}; skipped",
                resp.status()
            );
            failed += docs.len();
            continue;
        }
        let body: Value = resp.json().await?;
        let Some(data) = body["data"].as_array() else {
            bail!("no data in the embeddings answer")
        };
        for (doc, item) in docs.iter().zip(data) {
            http.patch(format!("{rest}/lovdata_documents"))
                .query(&[("id", format!("eq.{}", doc["id"]))])
                .header("apikey", &key)
                .bearer_auth(&key)
                .json(&json!({"embedding": item["embedding"]}))
                .send()
                .await?
                .error_for_status()?;
        }
        done += docs.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"documents": done, "failed": failed, "seconds": secs, "docs_per_sec": done as f64 / secs})
    );
    Ok(())
}
