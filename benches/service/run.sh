#!/usr/bin/env bash
# What the framework costs inside a service: the example app's POST /allocate
# beside the same endpoint written by hand with no bus
# (benches/src/bin/hand_written_allocation.rs: the same SQL statements, in
# the same transactions), under the same wrk load, on SQLite and on
# PostgreSQL. Each service gets a fresh database (a new SQLite file; a new
# PostgreSQL database, dropped after), is seeded with 100 products as
# example-app/load/run.sh does, then loaded with its wrk script. The table
# gives each service's throughput, median and 99th-percentile latency, its
# throughput over the baseline's, and its own CPU time per request (user and
# system, from /proc): what it spends, whatever else bounds the throughput.
#
# Usage: benches/service/run.sh [seconds] [connections]   (defaults 10, 16)
# PostgreSQL: POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test),
# a database where this user may CREATE DATABASE; skipped when unreachable.
# Needs wrk, curl and psql.
set -euo pipefail
cd "$(dirname "$0")/../.."
duration="${1:-10}"
connections="${2:-16}"
postgres_url="${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
port=5098
dir="$(mktemp -d)"
server=""
database=""

stop_server() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=""
    fi
}

drop_database() {
    if [ -n "$database" ]; then
        psql "$postgres_url" -q -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null || true
        database=""
    fi
}

trap 'stop_server; drop_database; rm -rf "$dir"' EXIT

cargo build --release -q -p example-app
cargo build --release -q -p arch-events-benches --bin hand-written-allocation

# The URL of database $1 on the server of $postgres_url (its query kept).
postgres_database_url() {
    local base="${postgres_url%%\?*}"
    local query="${postgres_url#"$base"}"
    echo "${base%/*}/$1$query"
}

# Starts binary $1 on database URL $2, with the environment settings $3
# (NAME=value, space separated; may be empty), and waits until it answers
# HTTP.
start_server() {
    # shellcheck disable=SC2086 # $3 is a list of settings
    env RUST_LOG=error $3 "$1" --bind "127.0.0.1:$port" --database-url "$2" >"$dir/server.log" 2>&1 &
    server=$!
    for _ in $(seq 300); do
        if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
            return 0
        fi
        if ! kill -0 "$server" 2>/dev/null; then
            cat "$dir/server.log" >&2
            server=""
            return 1
        fi
        sleep 0.1
    done
    echo "$1 did not answer within 30 s" >&2
    return 1
}

# The 100 products of example-app/load/run.sh.
seed() {
    local n status
    for n in $(seq 0 99); do
        status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/add_batch" \
            -H 'content-type: application/json' \
            -d "{\"ref\":\"load-batch-$n\",\"sku\":\"LOAD-SKU-$n\",\"qty\":100000000,\"eta\":null}")
        if [ "$status" != 201 ]; then
            echo "seeding load-batch-$n answered $status" >&2
            return 1
        fi
    done
}

# A wrk latency ("850.00us", "1.23ms", "1.02s") in milliseconds.
to_ms() {
    awk -v t="$1" 'BEGIN {
        if (t ~ /us$/) printf "%.2f", t / 1000;
        else if (t ~ /ms$/) printf "%.2f", t + 0;
        else if (t ~ /m$/) printf "%.2f", t * 60000;
        else if (t ~ /s$/) printf "%.2f", t * 1000;
        else printf "%s", t }'
}

# The CPU time process $1 has used, user and system, in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

results="$dir/results"
: >"$results"

# Loads the service $2 (binary $3, settings $5) on database $1 (URL $4);
# appends its row.
measure() {
    local db="$1" name="$2" binary="$3" url="$4" settings="$5"
    start_server "$binary" "$url" "$settings"
    seed
    local cpu_before cpu_after
    cpu_before=$(cpu_ticks "$server")
    wrk -t2 -c"$connections" -d"${duration}s" --latency -s example-app/load/allocate.lua \
        "http://127.0.0.1:$port/allocate" >"$dir/wrk.txt"
    cpu_after=$(cpu_ticks "$server")
    stop_server
    local rps p50 p99 statuses requests cpu
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$dir/wrk.txt")
    requests=$(awk '/ requests in / { print $1 }' "$dir/wrk.txt")
    # The service's own CPU time (user + system) per request, in µs: what
    # it spends, whatever else bounds the throughput (the database, wrk).
    cpu=$(awk -v t="$((cpu_after - cpu_before))" -v hz="$(getconf CLK_TCK)" -v n="$requests" \
        'BEGIN { printf "%.0f", (n > 0 ? t / hz * 1e6 / n : 0) }')
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$dir/wrk.txt")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$dir/wrk.txt")")
    # The wrk script's count of each status: every answer should be a 202.
    statuses=$(awk '/^status / { sub(":", "", $2); printf "%s%s:%s", sep, $2, $3; sep = "," }' \
        "$dir/wrk.txt")
    echo "$db $name $rps $p50 $p99 $cpu ${statuses:-none}" >>"$results"
    echo "$db $name: $rps requests/s, p50 $p50 ms, p99 $p99 ms, $cpu us CPU/request ($statuses)" >&2
}

# The like-for-like comparison is the example app with its shipment watch
# off (SHIPMENT_DEADLINE_SECS=0): the baseline has no saga. The app as it
# ships, watch on (a saga instance and its deadline stored per new order),
# is measured beside them.
services=(
    "example-app target/release/example-app SHIPMENT_DEADLINE_SECS=0"
    "baseline target/release/hand-written-allocation"
    "example-app+watch target/release/example-app"
)

for service in "${services[@]}"; do
    read -r name binary settings <<<"$service"
    measure sqlite "$name" "$binary" "sqlite://$dir/$name.db" "$settings"
done

if psql "$postgres_url" -q -c 'SELECT 1' >/dev/null 2>&1; then
    for service in "${services[@]}"; do
        read -r name binary settings <<<"$service"
        database="bench_service_$$_${name//[-+]/_}"
        psql "$postgres_url" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $database" >/dev/null
        measure postgres "$name" "$binary" "$(postgres_database_url "$database")" "$settings"
        drop_database
    done
else
    echo "PostgreSQL at $postgres_url is unreachable: its rows are skipped" >&2
fi

echo
echo "POST /allocate, wrk -t2 -c$connections -d${duration}s, 100 products, $(nproc) cores"
awk '
    { db[NR] = $1; svc[NR] = $2; rps[NR] = $3; p50[NR] = $4; p99[NR] = $5; cpu[NR] = $6; st[NR] = $7
      if ($2 == "baseline") base[$1] = $3 }
    END {
        fmt = "%-9s %-18s %11s %8s %8s %13s %15s  %s\n"
        printf fmt, "database", "service", "requests/s", "p50 ms", "p99 ms", "app/baseline", \
            "CPU us/request", "statuses"
        for (i = 1; i <= NR; i++) {
            ratio = (db[i] in base && base[db[i]] > 0) ? sprintf("%.2f", rps[i] / base[db[i]]) : "-"
            printf fmt, db[i], svc[i], rps[i], p50[i], p99[i], ratio, cpu[i], st[i]
        }
    }' "$results"
