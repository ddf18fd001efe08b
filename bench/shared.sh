#!/usr/bin/env bash
# Load report for the shared store (PostgreSQL): the durable accept rate with one and two
# instances on one database, on the 3 KB reference body (wrk, 32 connections in all, each request a
# new job) and on the ~8 MB photo body (bench/big_post.py, 8 connections in all), beside the
# embedded store (redb) on the same machine in the same run; and the idempotent replay of the
# 3 KB body, whose difference from the embedded store is what a shared rate check and job lookup
# cost per request. Writes bench/shared-report.md and prints it.
#
#   bench/shared.sh                # from anywhere; runs from the repo root
#   SECS=10 PHOTO_SECS=15          # durations (the defaults)
#   NOTE="..." bench/shared.sh     # a line for the report, e.g. what else ran on the machine
#   BUILD=0 bench/shared.sh        # use the release binary as it is
#
# Bounded and loopback only: the instances listen on 127.0.0.1, the database is the throwaway one
# of scripts/postgres.sh (started if it is not running; a new database per run, dropped at the
# end), every load tool has a fixed duration and a timeout, and a trap stops what was started.
# Flow files go to each instance's local folder: this measures accepting, not the bucket.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${SECS:-10}
PHOTO_SECS=${PHOTO_SECS:-15}
WORK=$(mktemp -d -t flowgate-shared.XXXXXX)
PIDS=()
DB=""
BIN=$ROOT/target/release/flowgate

say() { printf '\n== %s\n' "$*" >&2; }
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -z "$DB" ] || psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

say "building the release binary and the photo body"
[ "${BUILD:-1}" = 0 ] || cargo build --release --bin flowgate --example photo_body >&2
B8=$WORK/photos-8mb.json
"$ROOT/target/release/examples/photo_body" --size 8mb --out "$B8" 2>/dev/null

out=$(scripts/postgres.sh start)
eval "$out"
ADMIN_URL=$FLOWGATE_DATABASE_URL
unset FLOWGATE_DATABASE_URL
command -v psql >/dev/null || { echo "psql is missing (Debian: postgresql-client)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing (Debian: wrk)" >&2; exit 1; }

# A new database for a run: its name in DB, its URL in DB_URL (no subshell: cleanup needs DB).
new_db() {
    DB="fgbench_$(date +%s)_$RANDOM"
    psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
    DB_URL="${ADMIN_URL%/*}/$DB"
}
drop_db() { psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB" >/dev/null; DB=""; }

# start_instance DIR [URL]: a gateway on DIR (its keys file already there); its address in ADDR.
# Not in a subshell: its PID must reach PIDS, so that it is stopped.
start_instance() {
    local dir=$1 url=${2:-}
    mkdir -p "$dir"
    {
        echo "store:"
        echo "  retain_bodies_hours: 72"
        [ -z "$url" ] || echo "  database_url: $url"
    } > "$dir/flowgate.yaml"
    FLOWGATE_LOG=warn "$BIN" serve --config "$dir/flowgate.yaml" --listen 127.0.0.1:0 --data-dir "$dir" --rules-dir "$ROOT" > "$dir/out.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        local a
        a=$(sed -n 's|^flowgate listening on http://||p' "$dir/out.log")
        [ -n "$a" ] && { ADDR=$a; return; }
        sleep 0.1
    done
    echo "the gateway on $dir did not start" >&2
    cat "$dir/out.log" >&2
    exit 1
}
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}

KEYS=$WORK/keys
mkdir -p "$KEYS"
KEY=$("$BIN" keys add --data-dir "$KEYS" --name "Bench SIP" --sip-id DEMO --rate 1000000 --burst 1000000 | tail -1)
with_keys() { mkdir -p "$1"; cp "$KEYS/keys.yaml" "$1/keys.yaml"; }

rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
p99() { awk '$1 == "99%" { print $2 }' "$1"; }

# small ADDR... MODE: wrk on each address at once (32 connections in all); total req/s and the
# worst p99.
small() {
    local mode=${!#} n=$(($# - 1)) i=0 total=0 worst=""
    local files=()
    for addr in "${@:1:$n}"; do
        i=$((i + 1))
        timeout $((SECS + 30)) wrk -t1 -c$((32 / n)) -d${SECS}s --latency -s "$ROOT/bench/post.lua" "http://$addr/v4/sip" \
            -- "$ROOT/tests/bench/s01-reference.json" "$KEY" "$mode" "$RANDOM$i" > "$WORK/wrk-$i.txt" 2>&1 &
        files+=("$WORK/wrk-$i.txt")
    done
    wait %% 2>/dev/null || true
    sleep 1
    for f in "${files[@]}"; do
        total=$(awk -v a="$total" -v b="$(rps "$f")" 'BEGIN { printf "%.0f", a + b }')
        worst="$worst $(p99 "$f")"
    done
    echo "$total req/s (p99 per instance:$worst)"
}

# photo ADDR...: big_post.py on each address at once (8 connections in all).
photo() {
    local n=$# i=0 total=0 files=()
    for addr in "$@"; do
        i=$((i + 1))
        timeout $((PHOTO_SECS + 150)) python3 "$ROOT/bench/big_post.py" --addr "$addr" --key "$KEY" --body "$B8" \
            --connections $((8 / n)) --duration "$PHOTO_SECS" --timeout 120 > "$WORK/big-$i.txt" 2>&1 &
        files+=("$WORK/big-$i.txt")
    done
    wait
    local ok=0 secs=0 other=""
    for f in "${files[@]}"; do
        local line
        line=$(sed -n 's/^BIG_POST //p' "$f" | head -1)
        ok=$((ok + $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["statuses"].get("200", 0))' "$line")))
        secs=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["elapsed_s"])' "$line")
        other="$other $(python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print({k: n for k, n in v["statuses"].items() if k != "200"} or "-")' "$line")"
    done
    awk -v ok="$ok" -v s="$secs" -v o="$other" 'BEGIN { printf "%.1f accepted req/s (%d in %.1f s; other answers:%s)\n", ok / s, ok, s, o }'
}

ROWS=()
row() { ROWS+=("| $1 | $2 | $3 |"); echo "$1 | $2 | $3" >&2; }

say "embedded store (redb), one instance"
with_keys "$WORK/e1"
start_instance "$WORK/e1"
a=$ADDR
row "embedded, 1 instance" "3 KB, new jobs" "$(small "$a" unique)"
row "embedded, 1 instance" "3 KB, replay" "$(small "$a" replay)"
row "embedded, 1 instance" "8 MB photos, new jobs" "$(photo "$a")"
stop_all

for n in 1 2; do
    say "PostgreSQL, $n instance(s)"
    new_db
    addrs=()
    for i in $(seq "$n"); do
        with_keys "$WORK/p$n-$i"
        start_instance "$WORK/p$n-$i" "$DB_URL"
        addrs+=("$ADDR")
    done
    row "PostgreSQL, $n instance(s)" "3 KB, new jobs" "$(small "${addrs[@]}" unique)"
    row "PostgreSQL, $n instance(s)" "3 KB, replay" "$(small "${addrs[@]}" replay)"
    row "PostgreSQL, $n instance(s)" "8 MB photos, new jobs" "$(photo "${addrs[@]}")"
    stop_all
    drop_db
done

{
    echo "# Shared store load report"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD), $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Release build; PostgreSQL from scripts/postgres.sh (fsync on, on disk); flow files to each"
    echo "instance's local folder. 3 KB: wrk, 32 connections in all (split over the instances), ${SECS} s;"
    echo "8 MB: bench/big_post.py, 8 connections in all, ${PHOTO_SECS} s. Every request of a key also"
    echo "passes its rate check (in the database with PostgreSQL)."
    [ -z "${NOTE:-}" ] || { echo; echo "$NOTE"; }
    echo
    echo "| store | body | result |"
    echo "|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} > bench/shared-report.md
cat bench/shared-report.md
