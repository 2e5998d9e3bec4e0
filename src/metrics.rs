//! CloudWatch metrics, as Embedded Metric Format records on stdout: Lambda's
//! log service turns each into metric values with no API call and no agent.
//! One record per batch delivery (worker), per dispatch invocation and per
//! poller tick, never per request, so a run of a million documents writes
//! thousands of lines, not millions.
//!
//! The format is AWS Labs' `metrique`: a record is a struct, so concurrent
//! batches each write their own (`metrics_cloudwatch_embedded` aggregates
//! every value in the process per flush, merging batches of different runs).
//! Each record carries the dimension sets `[Function]` and `[Function, Run]`,
//! so the dashboard and alarms read one metric per function while a run's own
//! figures stay a query away.

use crate::config::MetricsConfig;
use crate::embedder::Tally;
use crate::ids::RunId;
use metrique::emf::Emf;
use metrique::unit::Count;
use metrique::unit_of_work::metrics;
use metrique::writer::sink::FlushImmediately;
use metrique::writer::{
    BoxEntrySink, Entry, EntryIoStream, EntryIoStreamExt, EntrySink, FormatExt,
};
use metrique::{CloseValue, InflectableEntry, RootMetric};
use std::time::{Duration, SystemTime};

/// Where records go; off, they go nowhere and cost nothing.
#[derive(Clone, Default)]
pub struct Metrics(Option<BoxEntrySink>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Metrics(emf)"
        } else {
            "Metrics(off)"
        })
    }
}

#[derive(Entry)]
#[entry(rename_all = "PascalCase")]
struct Globals {
    function: String,
}

impl Metrics {
    pub fn off() -> Self {
        Self(None)
    }

    /// Records on stdout, each written whole under stdout's lock so that
    /// they never interleave with log lines.
    pub fn new(config: Option<&MetricsConfig>) -> Self {
        match config {
            None => Self::off(),
            Some(c) => Self::to_stream(
                c,
                Self::format(c).output_to_makewriter(|| std::io::stdout().lock()),
            ),
        }
    }

    /// Records into `out`, for tests that read them back.
    pub fn to_writer(
        config: &MetricsConfig,
        out: impl std::io::Write + Send + Sync + 'static,
    ) -> Self {
        Self::to_stream(config, Self::format(config).output_to(out))
    }

    fn format(config: &MetricsConfig) -> Emf {
        Emf::builder(config.namespace.clone(), vec![vec!["Function".into()]]).build()
    }

    fn to_stream(
        config: &MetricsConfig,
        stream: impl EntryIoStream + Send + Sync + 'static,
    ) -> Self {
        let globals = Globals {
            function: config.function.clone(),
        };
        Self(Some(FlushImmediately::new_boxed(
            stream.merge_globals(globals),
        )))
    }

    /// Writes one record (a [`BatchRecord`], [`DispatchRecord`] or
    /// [`TickRecord`]) at once.
    pub fn write<R>(&self, record: R)
    where
        R: CloseValue<Closed: InflectableEntry>,
        BoxEntrySink: EntrySink<RootMetric<R>>,
    {
        if let Some(sink) = &self.0 {
            drop(metrique::append_and_close(record, sink.clone()));
        }
    }
}

/// One delivery of a batch to a worker. The document counts are those the
/// status row counted for it: zero for a delivery that found the batch done
/// or did not finish it, so summing records never counts a batch twice.
#[metrics(emf::dimension_sets = [["Run"], []], rename_all = "PascalCase")]
pub struct BatchRecord {
    #[metrics(timestamp)]
    pub timestamp: SystemTime,
    pub run: String,
    #[metrics(unit = Count)]
    pub documents_embedded: u64,
    #[metrics(unit = Count)]
    pub documents_skipped: u64,
    #[metrics(unit = Count)]
    pub documents_failed: u64,
    /// Tokens billed, failed and repeated requests too: what the TPM budget
    /// and the bill see.
    #[metrics(unit = Count)]
    pub tokens: u64,
    /// `tokens` at the run's price.
    pub cost_usd: f64,
    #[metrics(unit = Count)]
    pub api_requests: u64,
    #[metrics(unit = Count)]
    pub api_throttled: u64,
    #[metrics(unit = Count)]
    pub api_server_errors: u64,
    /// The mean round trip of the batch's answered requests (absent when
    /// none was answered). One number, not a list: a list would be written in
    /// the Values/Counts form, which the EMF specification does not describe.
    pub api_latency: Option<Duration>,
    pub batch_duration: Duration,
    pub rate_wait: Duration,
    #[metrics(unit = Count)]
    pub batches_done: u64,
    /// Failed for good (the status row's failed batches); a failure SQS
    /// delivers again is not one.
    #[metrics(unit = Count)]
    pub batches_failed: u64,
}

impl BatchRecord {
    /// A delivery of a batch of `run` whose requests met `tally` (costing
    /// `cost_usd`); the caller adds what the status row counted and how long
    /// the delivery took.
    pub fn of(run: RunId, tally: &Tally, cost_usd: f64) -> Self {
        Self {
            timestamp: SystemTime::now(),
            run: run.to_string(),
            documents_embedded: 0,
            documents_skipped: 0,
            documents_failed: 0,
            tokens: tally.billed_tokens,
            cost_usd,
            api_requests: tally.requests,
            api_throttled: tally.throttled,
            api_server_errors: tally.server_errors,
            api_latency: mean(&tally.latencies),
            batch_duration: Duration::ZERO,
            rate_wait: tally.rate_wait,
            batches_done: 0,
            batches_failed: 0,
        }
    }
}

/// One dispatcher invocation that queued batches for a run.
#[metrics(emf::dimension_sets = [["Run"], []], rename_all = "PascalCase")]
pub struct DispatchRecord {
    #[metrics(timestamp)]
    pub timestamp: SystemTime,
    pub run: String,
    #[metrics(unit = Count)]
    pub batches_queued: u64,
    #[metrics(unit = Count)]
    pub documents_queued: u64,
    #[metrics(unit = Count)]
    pub estimated_tokens: u64,
    pub estimated_cost_usd: f64,
    pub dispatch_duration: Duration,
}

/// One tick of batch mode's poller, over every run it looked at.
#[metrics(rename_all = "PascalCase")]
pub struct TickRecord {
    #[metrics(timestamp)]
    pub timestamp: SystemTime,
    #[metrics(unit = Count)]
    pub jobs_submitted: u64,
    #[metrics(unit = Count)]
    pub jobs_collected: u64,
    #[metrics(unit = Count)]
    pub documents_embedded: u64,
    #[metrics(unit = Count)]
    pub tokens: u64,
    pub cost_usd: f64,
}

/// The mean of `all`, if any.
fn mean(all: &[Duration]) -> Option<Duration> {
    let n = u32::try_from(all.len()).ok().filter(|n| *n > 0)?;
    Some(all.iter().sum::<Duration>() / n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Captured;

    fn config() -> MetricsConfig {
        MetricsConfig {
            namespace: "EmbedBackfill".into(),
            function: "stack-worker".into(),
        }
    }

    fn batch(latencies: &[Duration]) -> BatchRecord {
        BatchRecord {
            timestamp: SystemTime::now(),
            run: "0d9f0b5e-8a4c-4c1e-9a51-2b1f4b0d7c11".into(),
            documents_embedded: 98,
            documents_skipped: 1,
            documents_failed: 1,
            tokens: 51_200,
            cost_usd: 0.001024,
            api_requests: 3,
            api_throttled: 1,
            api_server_errors: 0,
            api_latency: super::mean(latencies),
            batch_duration: Duration::from_millis(1500),
            rate_wait: Duration::from_millis(250),
            batches_done: 1,
            batches_failed: 0,
        }
    }

    #[test]
    fn a_batch_is_one_record_with_units_and_both_dimension_sets() {
        let buffer = Captured::default();
        let metrics = buffer.metrics("stack-worker");
        metrics.write(batch(&[
            Duration::from_millis(400),
            Duration::from_millis(600),
        ]));
        let records = buffer.records();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        let directive = &r["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "EmbedBackfill");
        let mut sets: Vec<Vec<String>> =
            serde_json::from_value(directive["Dimensions"].clone()).unwrap();
        sets.sort();
        assert_eq!(
            sets,
            vec![
                vec!["Function".to_string()],
                vec!["Function".into(), "Run".into()]
            ]
        );
        assert_eq!(r["Function"], "stack-worker");
        let unit = |name: &str| {
            directive["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["Name"] == name)
                .unwrap_or_else(|| panic!("{name} is not a metric: {r}"))
                .get("Unit")
                .cloned()
        };
        assert_eq!(unit("DocumentsEmbedded"), Some("Count".into()));
        assert_eq!(unit("BatchDuration"), Some("Milliseconds".into()));
        assert_eq!(unit("ApiLatency"), Some("Milliseconds".into()));
        assert_eq!(r["DocumentsEmbedded"], 98);
        assert_eq!(r["BatchDuration"], 1500.0);
        assert_eq!(r["ApiLatency"], 500);
        assert!(r["_aws"]["Timestamp"].is_u64());
    }

    #[test]
    fn a_batch_without_answers_has_no_latency() {
        let buffer = Captured::default();
        let metrics = buffer.metrics("stack-worker");
        metrics.write(batch(&[]));
        let records = buffer.records();
        assert!(
            !records[0].to_string().contains("\"ApiLatency\""),
            "{}",
            records[0]
        );
    }

    #[test]
    fn on_under_lambda_off_in_the_cli_unless_asked() {
        let env = |vars: &[(&str, &str)]| {
            let vars: std::collections::HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            crate::config::Env::new(move |name: &str| vars.get(name).cloned()).metrics()
        };
        assert_eq!(env(&[]), Ok(None));
        let lambda = env(&[("AWS_LAMBDA_FUNCTION_NAME", "stack-worker")]).unwrap();
        assert_eq!(lambda, Some(config()));
        assert_eq!(
            env(&[
                ("AWS_LAMBDA_FUNCTION_NAME", "w"),
                ("BACKFILL_METRICS", "off")
            ]),
            Ok(None)
        );
        let cli = env(&[
            ("BACKFILL_METRICS", "emf"),
            ("BACKFILL_METRICS_NAMESPACE", "Team/Search"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (cli.namespace.as_str(), cli.function.as_str()),
            ("Team/Search", "backfill")
        );
        for (name, value, says) in [
            ("BACKFILL_METRICS", "json", "emf"),
            ("BACKFILL_METRICS_NAMESPACE", "has space", "namespace"),
        ] {
            let err = env(&[("AWS_LAMBDA_FUNCTION_NAME", "w"), (name, value)]).unwrap_err();
            assert!(
                err.to_string().contains(name) && err.to_string().contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn off_writes_nothing() {
        Metrics::off().write(batch(&[]));
        assert_eq!(format!("{:?}", Metrics::off()), "Metrics(off)");
    }
}
