//! Invoking the deployed dispatcher function: from the CLI
//! (`backfill dispatch --function NAME`), and by the dispatcher itself when it
//! continues a run in a fresh invocation.

use crate::dispatch::{DispatchRequest, DispatchSummary};
use aws_sdk_lambda::operation::invoke::InvokeOutput;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InvokeError {
    #[error("could not invoke function {function} ({reason}): check the name (the stack output DispatcherFunctionName), the region, and that your credentials may call lambda:InvokeFunction")]
    Call { function: String, reason: String },
    #[error("function {function} failed: {message}")]
    Function { function: String, message: String },
    #[error("function {function} answered something that is not a dispatcher's answer: {reason}")]
    Answer { function: String, reason: String },
    #[error("could not encode the event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Runs the dispatcher function on `request` and waits for its answer. When it
/// reached its deadline, it has already continued the run on its own.
pub async fn dispatch(
    client: &aws_sdk_lambda::Client,
    function: &str,
    request: &DispatchRequest,
) -> Result<DispatchSummary, InvokeError> {
    let out = invoke(client, function, InvocationType::RequestResponse, request).await?;
    let payload = out.payload().map(|p| p.as_ref()).unwrap_or_default();
    if out.function_error().is_some() {
        // The runtime's error body: {"errorType": ..., "errorMessage": ...}.
        let message = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v["errorMessage"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(payload).into_owned());
        return Err(InvokeError::Function {
            function: function.into(),
            message,
        });
    }
    serde_json::from_slice(payload).map_err(|e| InvokeError::Answer {
        function: function.into(),
        reason: e.to_string(),
    })
}

/// Queues `request` as an asynchronous invocation of `function` (the
/// dispatcher's own ARN): the continuation of a run.
pub async fn continue_async(
    client: &aws_sdk_lambda::Client,
    function: &str,
    request: &DispatchRequest,
) -> Result<(), InvokeError> {
    invoke(client, function, InvocationType::Event, request).await?;
    Ok(())
}

async fn invoke(
    client: &aws_sdk_lambda::Client,
    function: &str,
    kind: InvocationType,
    request: &DispatchRequest,
) -> Result<InvokeOutput, InvokeError> {
    client
        .invoke()
        .function_name(function)
        .invocation_type(kind)
        .payload(Blob::new(serde_json::to_vec(request)?))
        .send()
        .await
        .map_err(|e| InvokeError::Call {
            function: function.into(),
            reason: aws_sdk_lambda::error::DisplayErrorContext(&e).to_string(),
        })
}
