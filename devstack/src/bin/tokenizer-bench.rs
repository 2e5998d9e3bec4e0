//! The tokenizer choice, measured: cl100k_base by `bpe-openai` (what the
//! pipeline uses) against `tiktoken-rs`, on the benchmark's corpus. Prints one
//! JSON object: load time (a Lambda cold start pays it), counting speed over
//! whole texts, and the time to decide and cut each text to 8,191 tokens.

use std::time::Instant;

const LIMIT: usize = 8191;

fn main() -> anyhow::Result<()> {
    let docs = devstack::corpus::generate(20, 2_000);
    let texts: Vec<&str> = docs.iter().map(|d| d.content.as_str()).collect();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let mb = bytes as f64 / 1e6;

    let start = Instant::now();
    let bpe = bpe_openai::cl100k_base();
    bpe.count("warm");
    let bpe_load = start.elapsed();
    let start = Instant::now();
    let bpe_counts: Vec<usize> = texts.iter().map(|t| bpe.count(t)).collect();
    let bpe_count = start.elapsed();
    let start = Instant::now();
    let bpe_fit = texts
        .iter()
        .filter(|t| bpe.count_till_limit(&bpe.normalize(t), LIMIT + 1).is_none())
        .count();
    let bpe_limit = start.elapsed();

    let start = Instant::now();
    let tik = tiktoken_rs::cl100k_base()?;
    let tik_load = start.elapsed();
    let start = Instant::now();
    let tik_counts: Vec<usize> = texts.iter().map(|t| tik.encode_ordinary(t).len()).collect();
    let tik_count = start.elapsed();
    let start = Instant::now();
    let tik_fit = texts
        .iter()
        .filter(|t| tik.encode_ordinary(t).len() > LIMIT)
        .count();
    let tik_limit = start.elapsed();

    let agree = bpe_counts
        .iter()
        .zip(&tik_counts)
        .filter(|(a, b)| a == b)
        .count();
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    println!(
        "{}",
        serde_json::json!({
            "texts": texts.len(),
            "mb": (mb * 10.0).round() / 10.0,
            "tokens": bpe_counts.iter().sum::<usize>(),
            "counts_agree": agree,
            "over_limit": [bpe_fit, tik_fit],
            "bpe_openai": {"load_ms": ms(bpe_load), "count_mb_s": (mb / bpe_count.as_secs_f64()).round(), "limit_check_ms": ms(bpe_limit)},
            "tiktoken_rs": {"load_ms": ms(tik_load), "count_mb_s": (mb / tik_count.as_secs_f64()).round(), "limit_check_ms": ms(tik_limit)},
        })
    );
    Ok(())
}
