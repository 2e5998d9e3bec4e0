//! Seeds generated Norwegian legal-style documents into an archive.

use anyhow::Context;
use clap::Parser;
use devstack::{corpus, seed};

#[derive(Parser)]
#[command(
    name = "seed-docs",
    version,
    about = "Insert generated documents into the documents table"
)]
struct Args {
    /// Direct Postgres URL
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[arg(long, default_value = "lovdata_documents")]
    table: String,
    /// Archive the documents belong to
    #[arg(long)]
    archive: String,
    #[arg(long)]
    count: usize,
    /// Same seed, same documents
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (client, conn) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to DATABASE_URL")?;
    tokio::spawn(conn);
    let docs = corpus::generate(args.seed, args.count);
    let chars: usize = docs.iter().map(|d| d.content.chars().count()).sum();
    let ids = seed::insert(&client, &args.table, &args.archive, &docs).await?;
    let (first, last) = (ids.first().copied(), ids.last().copied());
    if args.json {
        println!(
            "{}",
            serde_json::json!({"archive": args.archive, "inserted": ids.len(), "first_id": first, "last_id": last, "chars": chars})
        );
    } else {
        println!(
            "seeded {} documents into {:?} (ids {}..{}, {} characters)",
            ids.len(),
            args.archive,
            first.unwrap_or_default(),
            last.unwrap_or_default(),
            chars
        );
    }
    Ok(())
}
