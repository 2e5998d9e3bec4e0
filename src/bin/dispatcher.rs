//! Lambda entry point of the dispatcher: `{"archive": ..., "limit": ...}` in,
//! `{run_id, documents, batches, estimated_tokens, estimated_cost_usd}` out.

use embed_backfill::{config, handlers, logging, setup};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _ = dotenvy::dotenv();
    logging::init_lambda();
    let env = config::process_env();
    let stores = setup::stores(&env)?;
    let queue = setup::sqs_queue(&env).await?;
    let dispatcher = setup::dispatcher(&env, &stores, queue)?;
    let dispatcher = &dispatcher;
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let summary = handlers::dispatch_event(dispatcher, event.payload).await?;
        Ok::<_, Error>(serde_json::to_value(summary)?)
    }))
    .await
}
