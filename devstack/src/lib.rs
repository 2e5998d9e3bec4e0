//! Local stand-ins for embed-backfill's tests, demo and benchmark: an
//! OpenAI-compatible embeddings server ([`standin`], with OpenAI's Batch API
//! in [`batch`]), a Supabase-shaped gateway in front of postrust
//! ([`gateway`]) and a generator and seeder of Norwegian legal-style documents
//! ([`corpus`], [`seed`]).

pub mod batch;
pub mod corpus;
pub mod gateway;
pub mod seed;
pub mod standin;
