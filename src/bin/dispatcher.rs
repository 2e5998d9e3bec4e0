//! Lambda entry point of the dispatcher: `{"archive": ..., "limit": ...}` in,
//! `{run_id, documents, batches, estimated_tokens, estimated_cost_usd, ...}` out.
//! Near its deadline it saves its cursor and invokes itself, asynchronously,
//! with `{"continue_run": ..., "hop": n}`.

use embed_backfill::{handlers, invoke, setup};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (env, store) = handlers::boot().await?;
    let queue = setup::sqs_queue(&env).await?;
    let dispatcher = setup::dispatcher(&env, &store, queue)?;
    let lambda = aws_sdk_lambda::Client::new(&aws_config::load_from_env().await);
    let (dispatcher, lambda) = (&dispatcher, &lambda);
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = handlers::deadline_from(event.context.deadline());
        let answer = handlers::dispatch_event(dispatcher, event.payload, deadline).await?;
        if let Some(next) = &answer.continuation {
            invoke::continue_async(lambda, &event.context.invoked_function_arn, next).await?;
            tracing::info!(continuation = %serde_json::to_string(next)?, "continued in a new invocation");
        }
        Ok::<_, Error>(serde_json::to_value(answer)?)
    }))
    .await
}
