# embed-backfill: `make demo` and `make test` set up everything they need.
.DEFAULT_GOAL := help
SHELL := /bin/bash

.PHONY: help tools stack stack-down stack-status stack-reset migrate build test demo bench lint lint-template test-template package fmt

help:
	@echo "make demo         start the local stack and backfill one archive end to end"
	@echo "make test         start the local stack and run the whole test suite"
	@echo "make stack        start Postgres+pgvector, postrust behind a Supabase-shaped gateway, moto and the embeddings stand-in (idempotent)"
	@echo "make stack-down   stop the local stack (data is kept; make stack-reset deletes it)"
	@echo "make migrate      apply infra/migrations to DATABASE_URL (default: the local stack)"
	@echo "make bench        the old script's loop against the pipeline, side by side; writes bench/results.md"
	@echo "make lint         cargo fmt --check and clippy with warnings as errors"
	@echo "make lint-template  cfn-lint and checkov on template.yaml"
	@echo "make test-template  translate template.yaml with SAM, create the stack on moto and check it (tests/stack)"
	@echo "make package      both Lambda zips (arm64) with cargo lambda, and their sizes"

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

# The Lambda tests run the binaries under `cargo lambda watch`, which builds them
# in target/lambda-watch (cargo test holds target/'s lock): build them first.
test: stack lint-template test-template package
	CARGO_TARGET_DIR=target/lambda-watch cargo build -q -p embed-backfill --bins
	@# A hung test must fail the run, not use up CI's time: the suite takes minutes.
	timeout --kill-after=60 40m cargo test --workspace --features embed-backfill/failpoints --no-fail-fast

demo: stack
	@scripts/demo.sh

bench: stack
	@bench/run.sh

lint-template:
	@scripts/lint-template.sh

# No bytecode or cache files in the work tree.
test-template: stack
	PYTHONDONTWRITEBYTECODE=1 .tools/venv/bin/python -m pytest -q -p no:cacheprovider tests/stack

package:
	@scripts/package.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features -- -D warnings

fmt:
	cargo fmt --all
