#!/usr/bin/env bash
# `make bench`: builds release binaries, then runs bench/bench.py against the local stack.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --workspace --bins
.tools/venv/bin/python bench/bench.py
