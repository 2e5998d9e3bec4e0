//! Why a delivery of a batch did not end well, and whether another could.

use crate::embedder::EmbedError;
use crate::ids::{BatchSeq, RunId};
use crate::queue::MessageError;
use crate::store::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error(
        "run {0} does not exist in backfill_runs (was it dispatched against another database?)"
    )]
    UnknownRun(RunId),
    #[error("batch {1} of run {0} does not exist in backfill_batches")]
    UnknownBatch(RunId, BatchSeq),
    #[error("batch {1} of run {0} failed for good on an earlier delivery (`backfill status {0}` says why); this redelivery does not call the API again. Fix the cause, then `backfill redrive` or `backfill retry-failed {0}`")]
    FailedBefore(RunId, BatchSeq),
    #[error("the batch did not finish before the invocation's deadline; SQS delivers it again")]
    OutOfTime,
    #[error("batch {1} of run {0} is being worked by another delivery until {2}; SQS brings this one back after its visibility timeout")]
    Leased(RunId, BatchSeq, String),
    #[error("run {0} records no model and dimensions this version can read (an older version dispatched it): its vectors' provenance could not name their model. Dispatch a new run over the same archive: it selects what this one left")]
    UnreadableRun(RunId),
    #[error("run {run} was dispatched for {recorded}, but this worker embeds with {ours}: its vectors would be recorded as the other model's. Give the worker the run's settings (EMBEDDING_PROVIDER, OPENAI_EMBEDDING_MODEL, BACKFILL_EMBEDDING_DIMENSIONS), or dispatch a new run")]
    OtherModel {
        run: RunId,
        recorded: String,
        ours: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

impl WorkerError {
    /// Another delivery could succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Store(e) => e.is_transient(),
            WorkerError::Embed(e) => e.is_retryable(),
            WorkerError::OutOfTime | WorkerError::Leased(..) => true,
            _ => false,
        }
    }
}
