#!/usr/bin/env bash
# `make package`: the dispatcher, worker and poller Lambda zips (provided.al2023, arm64)
# built by cargo lambda (cross-compiled with zig), into target/lambda/<name>/bootstrap.zip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/stack.sh venv
# The arm64 standard library; a no-op once installed.
rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 ||
  rustup target list --installed | grep -q '^aarch64-unknown-linux-gnu$' ||
  { echo "package: cannot install the aarch64-unknown-linux-gnu target with rustup" >&2; exit 1; }
export PATH="$PWD/.tools/venv/bin:$PATH"
# Its own target dir: a cross build must not invalidate the host builds' cache.
export CARGO_TARGET_DIR="$PWD/target/package"
cargo lambda build --release --arm64 --output-format zip \
  --bin dispatcher --bin worker --bin poller --lambda-dir target/lambda
python3 - <<'PY'
import zipfile, os
for name in ("dispatcher", "worker", "poller"):
    path = f"target/lambda/{name}/bootstrap.zip"
    unzipped = sum(i.file_size for i in zipfile.ZipFile(path).infolist())
    print(f"{name:<11} {path}  {os.path.getsize(path) / 2**20:6.2f} MiB zipped, {unzipped / 2**20:6.2f} MiB unzipped")
PY
