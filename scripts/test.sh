#!/usr/bin/env bash
# Install everything the tests need into .venv, start PostgreSQL, lint, and run every test.
# Usage: scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# curl: tests/test_readme.py runs the README's walkthrough; bwrap: the exec pack's sandbox;
# cc: the exec pack's tests build a fork-chain program (plugins/openexec_exec/tests/programs);
# Debian's python3 with curses and ncurses' terminfo: the session tests run /usr/bin/python3
# programs on a PTY, inside the sandbox too, where only the system's directories are mounted;
# systemd: tests/test_deploy.py checks deploy/openexec.service with systemd-analyze.
if ! command -v curl >/dev/null || ! command -v bwrap >/dev/null || ! command -v cc >/dev/null \
  || ! /usr/bin/python3 -c 'import curses' 2>/dev/null || ! [ -e /lib/terminfo/x/xterm-256color ] \
  || ! command -v systemd-analyze >/dev/null; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl bubblewrap gcc python3 ncurses-base \
    systemd >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-test.txt

OPENEXEC_TEST_PG_URL=$(scripts/postgres.sh)
OPENEXEC_TEST_PG_CLUSTER="15 openexec_test"  # the outage test stops and restarts it
export OPENEXEC_TEST_PG_URL OPENEXEC_TEST_PG_CLUSTER

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
