//! Supabase's API gateway in front of postrust, for the local stack (see
//! `devstack::gateway`).

use anyhow::Context;
use clap::Parser;
use devstack::gateway::{self, Config};

#[derive(Parser)]
#[command(
    name = "supabase-gateway",
    version,
    about = "Serves postrust under /rest/v1 with Supabase's API keys and row cap",
    after_help = "Keys and the JWT secret are best passed in the environment, where `ps` does not show them. GET /_stack/stats counts proxied requests per path; POST /_stack/stats/reset zeroes it."
)]
struct Args {
    /// Address to listen on
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:55433")]
    listen: String,
    /// Base URL of postrust
    #[arg(long, env = "GATEWAY_UPSTREAM")]
    upstream: String,
    /// The HS256 secret postrust checks JWTs with
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// The accepted sb_secret_... key (role service_role)
    #[arg(long, env = "SUPABASE_SECRET_KEY", hide_env_values = true)]
    secret_key: String,
    /// The accepted sb_publishable_... key (role anon)
    #[arg(long, env = "SUPABASE_PUBLISHABLE_KEY", hide_env_values = true)]
    publishable_key: String,
    /// Most rows a table, view or set-returning function answers with ("Max rows")
    #[arg(long, env = "STACK_MAX_ROWS", default_value_t = 1000)]
    max_rows: usize,
    /// Postgres, to learn which functions return sets
    #[arg(long, env = "GATEWAY_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = Config {
        upstream: args.upstream,
        jwt_secret: args.jwt_secret,
        secret_key: args.secret_key,
        publishable_key: args.publishable_key,
        max_rows: args.max_rows,
        database_url: args.database_url,
    };
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("supabase-gateway listening on {}", listener.local_addr()?);
    gateway::serve(listener, config).await
}
