#!/usr/bin/env bash
# `make lint-template`: cfn-lint and checkov on template.yaml, offline. They get
# their own venv (.tools/lint-venv), since checkov pins versions that the
# project's other Python tools do not share; it is (re)built only when
# requirements-lint.txt changes. Exits non-zero on any finding of either tool.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=.tools/lint-venv
stamp="$venv/.requirements.sha256"
want="$(sha256sum requirements-lint.txt | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "lint-template: needs python3 >= 3.10 (cfn-lint's minimum)" >&2
    exit 2
  fi
  echo "lint-template: installing requirements-lint.txt into $venv" >&2
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --require-virtualenv -r requirements-lint.txt
  echo "$want" > "$stamp"
fi

status=0
version() { "$venv/bin/python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }

echo "== cfn-lint $(version cfn-lint)"
# Errors and warnings both fail (exit codes 2 and 4).
"$venv/bin/cfn-lint" template.yaml || status=1

echo "== checkov $(version checkov)"
# Offline: no platform API key (unset even if the caller has one), no mapping
# or guideline download, and no prompt (stdin closed). Skips with their reasons
# are in each resource's Metadata.checkov.skip.
env -u BC_API_KEY -u PRISMA_API_URL BC_SKIP_MAPPING=TRUE \
  "$venv/bin/checkov" -f template.yaml --framework cloudformation \
  --quiet --compact --skip-download </dev/null || status=1

if [[ $status -eq 0 ]]; then
  echo "lint-template: template.yaml passed cfn-lint and checkov"
else
  echo "lint-template: findings above" >&2
fi
exit "$status"
