//! Lambda entry point of the worker: an SQS event in, a partial batch response
//! (ReportBatchItemFailures) out.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use embed_backfill::{handlers, logging, secrets_manager, setup};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let _ = dotenvy::dotenv();
    logging::init_lambda();
    let env = secrets_manager::environment().await?;
    let stores = setup::stores(&env)?;
    let worker = setup::worker(&env, &stores)?;
    let worker = &worker;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = handlers::deadline_from(event.context.deadline());
        Ok::<SqsBatchResponse, Error>(handlers::sqs_event(worker, event.payload, deadline).await?)
    }))
    .await
}
