//! What the unit tests of the worker and the dispatcher share: the project's
//! embeddings server on a loopback port, settings that point at it, and runs
//! dispatched into a [`MemoryStore`] and a [`MemoryQueue`].

use crate::config::{EmbeddingConfig, Env};
use crate::dispatch::{DispatchOptions, Dispatcher, DEFAULT_EMBEDDING_BATCH_SIZE, MAX_JOB_SIZE};
use crate::embedder::{self, Embedder};
use crate::ids::{BatchSeq, DocumentId, RunId};
use crate::queue::{BatchMessage, IncomingMessage, MemoryQueue, Queue, Settle, MESSAGE_VERSION};
use crate::store::{LongText, MemoryStore, Mode, Select, Store};
use crate::worker::Worker;
use devstack::standin;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const KEY: &str = "sk-unit-test";

/// The embeddings server, serving on a port of its own until the test ends.
pub struct Standin {
    pub url: String,
}

impl Standin {
    pub async fn start(config: standin::Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config = standin::Config {
            api_key: KEY.into(),
            ..config
        };
        tokio::spawn(standin::serve(listener, config));
        Self { url }
    }

    /// Embedding requests it has answered, rejected ones too.
    pub async fn requests(&self) -> u64 {
        let stats: serde_json::Value = reqwest::get(format!("{}/stats", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["requests"].as_u64().unwrap()
    }

    pub fn embedding(&self) -> EmbeddingConfig {
        let vars = HashMap::from([
            ("OPENAI_BASE_URL", format!("{}/v1", self.url)),
            ("OPENAI_API_KEY", KEY.to_string()),
            ("BACKFILL_HTTP_TIMEOUT_SECS", "10".to_string()),
        ]);
        Env::new(move |name: &str| vars.get(name).cloned())
            .embedding()
            .unwrap()
    }

    pub fn worker(&self, store: &Arc<MemoryStore>, max_receive_count: u32) -> Worker {
        Worker::new(
            store.clone(),
            Embedder::new(&self.embedding()).unwrap(),
            max_receive_count,
        )
    }
}

/// What the server answers for `text` at the default 1,536 dimensions.
pub fn vector_of(text: &str) -> Vec<f32> {
    standin::embed_text(text, 1536)
}

/// A store holding `texts` as documents 1, 2, ... of `archive`.
pub fn store_with(archive: &str, texts: &[&str]) -> Arc<MemoryStore> {
    let store = MemoryStore::new();
    add_texts(&store, archive, 1, texts);
    Arc::new(store)
}

pub fn add_texts(store: &MemoryStore, archive: &str, first_id: i64, texts: &[&str]) {
    for (i, t) in texts.iter().enumerate() {
        store.insert_document(DocumentId(first_id + i as i64), Some(archive), Some(t));
    }
}

pub fn options(archive: &str, batch_size: u32) -> DispatchOptions {
    DispatchOptions {
        archive: Some(archive.into()),
        limit: None,
        resume_from_id: None,
        batch_size,
        embedding_batch_size: DEFAULT_EMBEDDING_BATCH_SIZE,
        select: Select::Missing,
        long_text: LongText::Truncate,
        mode: Mode::Direct,
        job_size: MAX_JOB_SIZE,
        dry_run: false,
        force: false,
    }
}

pub fn dispatcher<Q: Queue>(store: &Arc<MemoryStore>, queue: Q) -> Dispatcher<Q> {
    let embedding = Standin {
        url: "http://127.0.0.1:9".into(),
    }
    .embedding();
    let store: Arc<dyn Store> = store.clone();
    Dispatcher::new(store, queue, embedder::provider(&embedding))
}

/// Dispatches `opts` to the end; the run and the messages queued, first
/// receives, in order.
pub async fn dispatch(
    store: &Arc<MemoryStore>,
    opts: &DispatchOptions,
) -> (RunId, Vec<IncomingMessage>) {
    let queue = Arc::new(MemoryQueue::new());
    let summary = dispatcher(store, queue.clone())
        .dispatch(opts)
        .await
        .unwrap();
    assert!(summary.complete);
    (summary.run_id.unwrap(), drain(&queue).await)
}

/// Every message visible in `queue`, received once and deleted.
pub async fn drain(queue: &MemoryQueue) -> Vec<IncomingMessage> {
    let mut all = Vec::new();
    loop {
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        if got.is_empty() {
            return all;
        }
        let settled: Vec<(String, Settle)> = got
            .iter()
            .map(|r| (r.receipt.clone(), Settle::Delete))
            .collect();
        queue.settle(&settled).await.unwrap();
        all.extend(got.into_iter().map(|r| r.message));
    }
}

/// `n` messages of one run, batch `i` holding ids `10i..10i+9`.
pub fn messages(n: u32) -> Vec<BatchMessage> {
    let run_id = RunId::random();
    (0..n)
        .map(|i| BatchMessage {
            v: MESSAGE_VERSION,
            run_id,
            batch: BatchSeq(i),
            first_id: DocumentId(i64::from(i) * 10),
            last_id: DocumentId(i64::from(i) * 10 + 9),
        })
        .collect()
}

/// Metrics records written into memory, read back as JSON.
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// A sink writing here, as the function `function` would.
    pub fn metrics(&self, function: &str) -> crate::metrics::Metrics {
        let config = crate::config::MetricsConfig {
            namespace: "EmbedBackfill".into(),
            function: function.into(),
        };
        crate::metrics::Metrics::to_writer(&config, self.clone())
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
