//! Lambda entry point of batch mode's poller: an EventBridge schedule
//! invokes it every minute; each invocation collects the Batch API jobs that
//! ended and submits ready ones, within its deadline.

use embed_backfill::{handlers, setup};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (env, store) = handlers::boot().await?;
    let worker = setup::worker(&env, &store)?;
    let poller = setup::poller(&env, &store, worker)?;
    let poller = &poller;
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = handlers::deadline_from(event.context.deadline());
        Ok::<_, Error>(handlers::poll_event(poller, event.payload, deadline).await?)
    }))
    .await
}
