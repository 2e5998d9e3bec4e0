//! Local stand-ins for embed-backfill's tests, demo and benchmark: an
//! OpenAI-compatible embeddings server ([`standin`]) and a generator and seeder
//! of Norwegian legal-style documents ([`corpus`], [`seed`]).

pub mod corpus;
pub mod seed;
pub mod standin;
