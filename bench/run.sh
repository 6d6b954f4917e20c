#!/usr/bin/env bash
# The load benchmark in one command; see bench/README.md. Usage: bench/run.sh [--help]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
fi
exec .venv/bin/python -m bench.run "$@"
