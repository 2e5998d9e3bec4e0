# embed-backfill: `make demo` and `make test` set up everything they need.
.DEFAULT_GOAL := help
SHELL := /bin/bash

.PHONY: help tools stack stack-down stack-status stack-reset migrate build test demo bench lint fmt

help:
	@echo "make demo         start the local stack and backfill one archive end to end"
	@echo "make test         start the local stack and run the whole test suite"
	@echo "make stack        start Postgres+pgvector, postrust, moto and the embeddings stand-in (idempotent)"
	@echo "make stack-down   stop the local stack (data is kept; make stack-reset deletes it)"
	@echo "make migrate      apply infra/migrations to DATABASE_URL (default: the local stack)"
	@echo "make bench        the old script's loop against the pipeline, side by side; writes bench/results.md"
	@echo "make lint         cargo fmt --check and clippy with warnings as errors"

tools stack:
	@scripts/stack.sh up

stack-down:
	@scripts/stack.sh down

stack-status:
	@scripts/stack.sh status

stack-reset:
	@scripts/stack.sh reset

migrate:
	@scripts/migrate.sh

build:
	cargo build --workspace --bins

test: stack
	cargo test --workspace --features embed-backfill/failpoints --no-fail-fast

demo: stack
	@scripts/demo.sh

bench: stack
	@bench/run.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features -- -D warnings

fmt:
	cargo fmt --all
