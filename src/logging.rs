//! Log setup: JSON under Lambda (CloudWatch queries it), human-readable in the CLI.

use tracing_subscriber::EnvFilter;

/// For the Lambda binaries. Reads `AWS_LAMBDA_LOG_LEVEL`/`RUST_LOG`, and logs JSON
/// when the function's LoggingConfig asks for it.
pub fn init_lambda() {
    lambda_runtime::tracing::init_default_subscriber();
}

/// For the CLI: to stderr, so `--json` output on stdout stays clean.
pub fn init_cli(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
