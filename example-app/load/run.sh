#!/usr/bin/env bash
# Load test of POST /allocate: starts a release build on a fresh database,
# seeds 100 products, runs wrk against it. The database is a new SQLite file,
# or, when LOAD_DATABASE_URL is set, that (empty) database, such as
# postgres://postgres@127.0.0.1:5432/load. STORAGE=events keeps the products
# as streams of events (default: state, as rows). BREAK_VIEW=1 (SQLite only,
# needs python3) renames the read model's table after seeding: every
# allocation's view handler fails, and its retries wait in the scheduler.
# Needs wrk (Debian: apt-get install wrk). Usage: example-app/load/run.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/../.."
duration="${1:-10}"
connections="${2:-16}"
port=5099
dir="$(mktemp -d)"
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$dir"' EXIT

cargo build --release -q -p example-app
RUST_LOG=error target/release/example-app --bind "127.0.0.1:$port" \
    --database-url "${LOAD_DATABASE_URL:-sqlite://$dir/load.db}" \
    --storage "${STORAGE:-state}" &
server=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/allocations/none" && break
    sleep 0.1
done
for n in $(seq 0 99); do
    curl -s -o /dev/null -X POST "http://127.0.0.1:$port/add_batch" \
        -H 'content-type: application/json' \
        -d "{\"ref\":\"load-batch-$n\",\"sku\":\"LOAD-SKU-$n\",\"qty\":100000000,\"eta\":null}"
done
if [ "${BREAK_VIEW:-0}" = 1 ]; then
    [ -z "${LOAD_DATABASE_URL:-}" ] || { echo "BREAK_VIEW needs the SQLite default" >&2; exit 2; }
    python3 -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
c.execute('ALTER TABLE allocations_view RENAME TO allocations_view_away'); c.commit()" "$dir/load.db"
fi
wrk -t2 -c"$connections" -d"${duration}s" --latency -s example-app/load/allocate.lua \
    "http://127.0.0.1:$port/allocate"
