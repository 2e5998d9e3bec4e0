//! The Lambda handlers, as plain async functions over the library types, so
//! tests call them with a hand-made event and the binaries stay a few lines.

use crate::config::Env;
use crate::dispatch::{
    DispatchCommand, DispatchError, DispatchRequest, DispatchSummary, Dispatcher, EventError,
};
use crate::ids::RunId;
use crate::jobs::{JobError, Poller, TickReport};
use crate::queue::{IncomingMessage, Queue};
use crate::store::Store;
use crate::worker::Worker;
use crate::{logging, secrets_manager, setup};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::SystemTime;
use thiserror::Error;
use tokio::time::Instant;

#[derive(Debug, Error)]
pub enum HandlerError {
    #[error("invalid dispatcher event: {0}")]
    Event(#[from] EventError),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error("{0} message(s) without a messageId failed and cannot be reported one by one; the whole event is retried (already finished batches are skipped)")]
    UnreportableFailures(usize),
    #[error("the poller's event must be a JSON object (an EventBridge scheduled event, or {{}}), not {0}")]
    PollEvent(String),
    #[error(transparent)]
    Jobs(#[from] JobError),
}

/// What both Lambdas start from: a `.env` when there is one, logs as Lambda
/// wants them, the settings with the keys of Secrets Manager, and the store.
pub async fn boot(
) -> Result<(Env<impl Fn(&str) -> Option<String>>, Arc<dyn Store>), lambda_runtime::Error> {
    let _ = dotenvy::dotenv();
    logging::init_lambda();
    let env = secrets_manager::environment().await?;
    let store = setup::store(&env)?;
    Ok((env, store))
}

/// Runs a dispatcher event until `deadline`. The answer's `continuation` is the
/// event to invoke next when the dispatch stopped short of its end.
pub async fn dispatch_event<Q: Queue>(
    dispatcher: &Dispatcher<Q>,
    event: Value,
    deadline: Option<Instant>,
) -> Result<DispatchAnswer, HandlerError> {
    let (summary, hop) = match DispatchRequest::from_value(event)?.into_command()? {
        DispatchCommand::Start(options) => (
            dispatcher
                .dispatch_run(RunId::random(), &options, deadline)
                .await?,
            0,
        ),
        DispatchCommand::Continue { run, hop } => {
            (dispatcher.continue_run(run, deadline).await?, hop)
        }
    };
    let continuation = match (summary.complete, summary.run_id) {
        (false, Some(run)) => Some(DispatchRequest {
            continue_run: Some(run),
            hop: Some(hop + 1),
            ..Default::default()
        }),
        _ => None,
    };
    Ok(DispatchAnswer {
        summary,
        continuation,
    })
}

/// The dispatcher Lambda's answer.
#[derive(Clone, Debug, Serialize)]
pub struct DispatchAnswer {
    #[serde(flatten)]
    pub summary: DispatchSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation: Option<DispatchRequest>,
}

/// Handles an SQS event with partial batch responses: only the failed
/// messages go back to the queue.
pub async fn sqs_event(
    worker: &Worker,
    event: SqsEvent,
    deadline: Option<Instant>,
) -> Result<SqsBatchResponse, HandlerError> {
    let messages: Vec<IncomingMessage> = event
        .records
        .into_iter()
        .map(|r| IncomingMessage {
            receive_count: r
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            message_id: r.message_id,
            body: r.body.unwrap_or_default(),
        })
        .collect();
    tracing::info!(
        messages = messages.len(),
        time_left_ms =
            deadline.map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
        "sqs event received"
    );
    let results = worker.handle_all(&messages, deadline).await;
    let mut response = SqsBatchResponse::default();
    let mut unreportable = 0;
    for (msg, result) in messages.iter().zip(results) {
        if result.is_err() {
            match &msg.message_id {
                Some(id) => response.add_failure(id.clone()),
                None => unreportable += 1,
            }
        }
    }
    if unreportable > 0 {
        return Err(HandlerError::UnreportableFailures(unreportable));
    }
    Ok(response)
}

/// One tick of batch mode's poller. The schedule's event says nothing the
/// poller needs; anything but an object is a mistaken invocation.
pub async fn poll_event(
    poller: &Poller,
    event: Value,
    deadline: Option<Instant>,
) -> Result<TickReport, HandlerError> {
    if !event.is_object() {
        return Err(HandlerError::PollEvent(event.to_string()));
    }
    Ok(poller.tick(None, deadline).await?)
}

/// Lambda's deadline as a tokio instant. A deadline already past when the
/// invocation starts never comes from Lambda itself, only from emulators that
/// send none (`cargo lambda watch`): then the work is bounded by nothing but
/// the invoker's own timeout.
pub fn deadline_from(system_deadline: SystemTime) -> Option<Instant> {
    match system_deadline.duration_since(SystemTime::now()) {
        Ok(left) if !left.is_zero() => Some(Instant::now() + left),
        _ => {
            tracing::warn!("the runtime gave a deadline already past; working without one");
            None
        }
    }
}
