//! embed-backfill: fills a pgvector column with OpenAI embeddings for every
//! document that lacks one, through Supabase's REST API, fanned out over SQS.
//!
//! The dispatcher pages ids into batches ([`dispatch`]), the queue carries one
//! message per batch ([`queue`]), the worker embeds and writes each batch
//! ([`worker`]), and the store counts each batch once ([`store`]).

pub mod config;
pub mod dispatch;
pub mod embedder;
pub mod failpoint;
pub mod handlers;
pub mod ids;
pub mod inputs;
pub mod invoke;
pub mod jobs;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod progress;
pub mod queue;
pub mod rate;
pub mod redrive;
pub mod retry;
pub mod runner;
pub mod secret;
pub mod secrets_manager;
pub mod setup;
pub mod store;
#[cfg(test)]
mod testkit;
pub mod worker;

/// The tokenizer is the provider's; tests and tools reach it here too.
pub use embedder::tokens;
