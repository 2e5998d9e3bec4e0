#!/usr/bin/env bash
# `make bench`: builds release binaries, then runs bench/bench.py against the local stack.
# BENCH_ONLY=scale make bench: only the scale section (bench/scale.py);
# BENCH_ONLY=reembed make bench: only the re-embedding section;
# BENCH_ONLY=batch make bench: only the batch-mode section (bench/batch.py).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --workspace --bins
.tools/venv/bin/python bench/bench.py
