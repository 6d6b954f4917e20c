#!/usr/bin/env bash
# Start a PostgreSQL 15 cluster for the tests and print its admin URL.
# Installs the server from Debian's packages when it is missing; must run as root.
set -euo pipefail
CLUSTER=openexec_test
PORT=${OPENEXEC_TEST_PG_PORT:-54329}
PASSWORD=openexec-test

if ! command -v pg_ctlcluster >/dev/null || [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >&2
fi
if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$CLUSTER"; then
  pg_createcluster 15 "$CLUSTER" -p "$PORT" >&2 -- --auth-local=trust --auth-host=scram-sha-256
fi
if ! pg_lsclusters -h | awk -v c="$CLUSTER" '$2 == c {print $4}' | grep -qx online; then
  pg_ctlcluster 15 "$CLUSTER" start >&2
fi
su postgres -c "psql -q -p $PORT -c \"ALTER USER postgres PASSWORD '$PASSWORD'\"" >&2
echo "postgresql://postgres:$PASSWORD@127.0.0.1:$PORT/postgres"
