//! Lambda entry point of the worker: an SQS event in, a partial batch response
//! (ReportBatchItemFailures) out.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use embed_backfill::{handlers, setup};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (env, store) = handlers::boot().await?;
    let worker = setup::worker(&env, &store)?;
    let worker = &worker;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = handlers::deadline_from(event.context.deadline());
        Ok::<SqsBatchResponse, Error>(handlers::sqs_event(worker, event.payload, deadline).await?)
    }))
    .await
}
