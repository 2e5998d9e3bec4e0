//! What a run asks of the worker, read from the parameters its dispatch
//! recorded: which rows, which vectors, how many inputs a request.

use super::WorkerError;
use crate::dispatch::RunParams;
use crate::embedder::Provider;
use crate::ids::RunId;
use crate::store::Selection;
use serde_json::Value;

pub(crate) struct Settings {
    pub selection: Selection,
    pub per_request: usize,
    /// Batch mode: documents a job holds at most.
    pub job_size: u32,
}

impl Settings {
    /// The run's settings. Refused when the run was dispatched for another
    /// provider, model or dimensions than this worker's, whose vectors would
    /// be recorded as the run's, or when it does not say which (a run of an
    /// older version): each vector's provenance names its model.
    pub fn of(
        run: RunId,
        params: Option<&Value>,
        provider: &dyn Provider,
    ) -> Result<Self, WorkerError> {
        let Some(p) = params.and_then(RunParams::read) else {
            return Err(WorkerError::UnreadableRun(run));
        };
        let ours = (provider.name(), provider.model(), provider.dimensions());
        if (p.provider.as_str(), p.model.as_str(), p.dimensions) != ours {
            return Err(WorkerError::OtherModel {
                run,
                recorded: format!("{} {} ({} dimensions)", p.provider, p.model, p.dimensions),
                ours: format!("{} {} ({} dimensions)", ours.0, ours.1, ours.2),
            });
        }
        Ok(Self {
            selection: p.selection(),
            per_request: p.options.embedding_batch_size as usize,
            job_size: p.options.job_size,
        })
    }
}
