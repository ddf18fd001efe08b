#!/usr/bin/env bash
# Load report for flowgate (issue 6): the gateway under wrk at saturation, at a fixed 1,000 req/s,
# on the idempotent replay path, beside a bare hyper hello-world; RSS; group commit; criterion
# medians. Writes bench/report.md and prints it.
#
#   bench/load.sh                 # from anywhere; runs from the repo root
#   PERF=1 bench/load.sh          # also perf-records the gateway under saturation (bench/perf.txt)
#   KEEP=1 bench/load.sh          # keep the temp data dir and server logs
#
# Bounded and loopback only: every server listens on 127.0.0.1:0, every load tool has a fixed
# duration and a timeout, and a trap stops the servers whatever happens.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

CONNS=32
THREADS=2
SAT_SECS=15
FIXED_RATE=1000
FIXED_SECS=10
BODY=tests/bench/s01-reference.json
RUN_ID=$(date +%s)

WORK=$(mktemp -d -t flowgate-load.XXXXXX)
DATA=$WORK/data
PIDS=()
COMMANDS=()

# Stops one server this script started: SIGTERM, at most 10 s, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1 state
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null || true)
        [[ -z "$state" || "$state" == Z ]] && break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n== %s\n' "$*" >&2; }

# Records a command for the report (the throwaway key is shown as $KEY) and runs it.
run() {
    local shown="$*"
    shown=${shown//$ROOT\//}
    shown=${shown//$WORK/\$WORK}
    [[ -n "${KEY:-}" ]] && shown=${shown//$KEY/\$KEY}
    COMMANDS+=("$shown")
    "$@"
}

# Starts a server in the background and waits (bounded) for its "listening on http://ADDR" line.
# Sets STARTED_PID and STARTED_ADDR.
start_server() {
    local log=$1 pattern=$2
    shift 2
    "$@" >"$log.out" 2>"$log.err" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    STARTED_ADDR=
    for _ in $(seq 300); do
        STARTED_ADDR=$(sed -n "s|^${pattern}http://||p" "$log.out" | head -1)
        [[ -n "$STARTED_ADDR" ]] && break
        kill -0 "$STARTED_PID" 2>/dev/null || { cat "$log.err" >&2; echo "server exited" >&2; exit 1; }
        sleep 0.1
    done
    [[ -n "$STARTED_ADDR" ]] || { echo "no listening line in $log.out after 30 s" >&2; exit 1; }
    [[ "$STARTED_ADDR" == 127.0.0.1:* ]] || { echo "refusing non-loopback address $STARTED_ADDR" >&2; exit 1; }
}

# One Prometheus sample's value (0 when absent).
metric() {
    awk -v name="$2" '$1 == name { print $2; found = 1 } END { if (!found) print 0 }' "$1"
}

scrape() {
    curl -sf --max-time 5 "http://$GW_ADDR/metrics" >"$1"
}

# Runs wrk with bench/post.lua; leaves its output in $1.
wrk_run() {
    local out=$1 url=$2 mode=$3
    run timeout $((SAT_SECS + 30)) wrk -t$THREADS -c$CONNS -d${SAT_SECS}s --latency -s "$ROOT/bench/post.lua" "$url" \
        -- "$BODY" "${KEY:-none}" "$mode" "$RUN_ID" >"$out"
    cat "$out" >&2
}

# Field of the PERCENTILES line printed by post.lua's done().
pct() { sed -n "s/^PERCENTILES.* $2=\([0-9]*\).*/\1/p" "$1"; }
rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
div() { awk -v a="$1" -v b="$2" -v f="${3:-%.1f}" 'BEGIN { if (b == 0) print "n/a"; else printf f, a / b }'; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# --- machine ---------------------------------------------------------------------------------
NPROC=$(nproc)
MEM=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
KERNEL=$(uname -r)
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# Other work on the machine skews every figure; the report shows the load before and after.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- src Cargo.toml 2>/dev/null | wc -l)
[[ "$DIRTY" != 0 ]] && REV="$REV (+ $DIRTY uncommitted change(s) in src/, Cargo.toml)"

# --- tools -----------------------------------------------------------------------------------
say "build"
run cargo build --release --bin flowgate --example hello
FLOWGATE=$ROOT/target/release/flowgate
HELLO=$ROOT/target/release/examples/hello

if ! command -v wrk >/dev/null; then
    say "installing wrk from Debian"
    SUDO=; [[ $(id -u) != 0 ]] && SUDO=sudo
    $SUDO apt-get install -y wrk || { $SUDO apt-get update && $SUDO apt-get install -y wrk; }
fi
WRK_VERSION=$(wrk --version 2>&1 | head -1 | awk '{ print $2 }' || true)
# wrk has no fixed-rate mode; wrk2 has, but is not packaged in Debian (checked here, recorded
# in the report), so the fixed-rate line comes from bench/fixed_rate.py.
WRK2_CANDIDATE=$(apt-cache policy wrk2 2>/dev/null | awk '/Candidate:/ { print $2 }')
WRK2_CANDIDATE=${WRK2_CANDIDATE:-none}

# --- gateway ---------------------------------------------------------------------------------
say "keys and gateway"
mkdir -p "$DATA"
COMMANDS+=("flowgate keys add --name Load --sip-id DEMO --rate 1000000 --burst 1000000 --data-dir \$DATA   # key: last stdout line")
KEY=$("$FLOWGATE" keys add --name Load --sip-id DEMO --rate 1000000 --burst 1000000 --data-dir "$DATA" 2>/dev/null | tail -1)
[[ "$KEY" == fgk_* ]] || { echo "no key from flowgate keys add" >&2; exit 1; }
COMMANDS+=("flowgate serve --listen 127.0.0.1:0 --data-dir \$DATA   # rules dir: the repo root (default)")
start_server "$WORK/gateway" "flowgate listening on " "$FLOWGATE" serve --listen 127.0.0.1:0 --data-dir "$DATA"
GW_PID=$STARTED_PID
GW_ADDR=$STARTED_ADDR
GW_URL="http://$GW_ADDR/v4/sip"
echo "gateway pid $GW_PID on $GW_ADDR" >&2

# A first request proves the key, body and rule set give 200 before any load.
FIRST=$(curl -s --max-time 10 -o "$WORK/first.json" -w '%{http_code}' -H "X-API-Key: $KEY" -H 'Content-Type: application/json' --data-binary @"$BODY" "$GW_URL")
[[ "$FIRST" == 200 ]] || { echo "reference body got $FIRST:" >&2; cat "$WORK/first.json" >&2; exit 1; }

say "warm-up (3 s, not reported)"
timeout 30 wrk -t$THREADS -c$CONNS -d3s -s "$ROOT/bench/post.lua" "$GW_URL" -- "$BODY" "$KEY" unique "$RUN_ID-warm" >/dev/null

# (a) saturation, every request a new job_id; (f) group commit across exactly this run.
say "(a) saturation: $THREADS threads, $CONNS connections, ${SAT_SECS} s, unique job_id"
scrape "$WORK/metrics.before"
# Beside the load, count the gateway's clock_nanosleep calls: nothing on its request path should
# sleep, but rhai (feature "sync") backs off 10 ms in std::thread::sleep when its string-interner
# lock is taken by another worker, stalling that tokio worker and every connection on it.
NANOSLEEPS=n/a
if command -v perf >/dev/null; then
    (sleep 2; timeout 30 perf stat -x, -e syscalls:sys_enter_clock_nanosleep -p "$GW_PID" -- sleep 10 2>"$WORK/nanosleep.csv" >/dev/null) &
    PERF_STAT=$!
fi
wrk_run "$WORK/sat.txt" "$GW_URL" unique
scrape "$WORK/metrics.after"
if [[ -n "${PERF_STAT:-}" ]]; then
    wait "$PERF_STAT" || true
    NANOSLEEPS=$(awk -F, 'NR == 1 && $1 ~ /^[0-9]+$/ { printf "%.0f", $1 / 10 }' "$WORK/nanosleep.csv")
    NANOSLEEPS=${NANOSLEEPS:-n/a}
fi
SAT_RSS=$(status_kb "$GW_PID" VmRSS)
SAT_HWM=$(status_kb "$GW_PID" VmHWM)

SAT_RPS=$(rps "$WORK/sat.txt")
SAT_REQS=$(pct "$WORK/sat.txt" requests)
SAT_NON2XX=$(pct "$WORK/sat.txt" errors_status)
SAT_DUR_US=$(pct "$WORK/sat.txt" duration_us)
SAT_SOCKERR=$(( $(pct "$WORK/sat.txt" errors_connect) + $(pct "$WORK/sat.txt" errors_read) + $(pct "$WORK/sat.txt" errors_write) + $(pct "$WORK/sat.txt" errors_timeout) ))
SAT_OK_RPS=$(awk -v n="$SAT_REQS" -v e="$SAT_NON2XX" -v d="$SAT_DUR_US" 'BEGIN { printf "%.0f", (n - e) / (d / 1e6) }')
C0=$(metric "$WORK/metrics.before" flowgate_store_commits_total)
C1=$(metric "$WORK/metrics.after" flowgate_store_commits_total)
A0=$(metric "$WORK/metrics.before" flowgate_store_commit_accepts_total)
A1=$(metric "$WORK/metrics.after" flowgate_store_commit_accepts_total)
LARGEST=$(metric "$WORK/metrics.after" flowgate_store_largest_commit_batch)
COMMITS=$((C1 - C0))
ACCEPTS=$((A1 - A0))
PER_COMMIT=$(div "$ACCEPTS" "$COMMITS" %.2f)
METRIC_RPS=$(div "$ACCEPTS" "$(awk -v d="$SAT_DUR_US" 'BEGIN { print d / 1e6 }')" %.0f)

# (b) fixed rate, open loop, latency from the scheduled send time.
say "(b) fixed rate: $FIXED_RATE req/s for $FIXED_SECS s"
run timeout $((FIXED_SECS + 60)) python3 "$ROOT/bench/fixed_rate.py" --addr "$GW_ADDR" --key "$KEY" --body "$BODY" \
    --rate "$FIXED_RATE" --duration "$FIXED_SECS" --connections "$CONNS" --run "$RUN_ID" >"$WORK/fixed.txt"
cat "$WORK/fixed.txt" >&2
FIXED_JSON=$(sed -n 's/^FIXED_RATE //p' "$WORK/fixed.txt")
fx() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, v))' "$FIXED_JSON" "$1"; }

# (c) the replay path: the reference body unchanged (accepted once, above), so every request is
# decided again and then answered from the store without a write.
say "(c) idempotent replay: same body, ${SAT_SECS} s"
scrape "$WORK/metrics.replay.before"
wrk_run "$WORK/replay.txt" "$GW_URL" replay
scrape "$WORK/metrics.replay.after"
REPLAY_RPS=$(rps "$WORK/replay.txt")
REPLAY_NON2XX=$(pct "$WORK/replay.txt" errors_status)
REPLAY_ACCEPTS=$(( $(metric "$WORK/metrics.replay.after" flowgate_store_commit_accepts_total) - $(metric "$WORK/metrics.replay.before" flowgate_store_commit_accepts_total) ))

# (e) memory after the whole run.
END_RSS=$(status_kb "$GW_PID" VmRSS)
END_HWM=$(status_kb "$GW_PID" VmHWM)

# Optional profile of the gateway at saturation (not part of the figures above).
if [[ "${PERF:-0}" == 1 ]]; then
    say "perf: gateway at saturation (${SAT_SECS} s)"
    timeout $((SAT_SECS + 30)) wrk -t$THREADS -c$CONNS -d${SAT_SECS}s -s "$ROOT/bench/post.lua" "$GW_URL" -- "$BODY" "$KEY" unique "$RUN_ID-perf" >/dev/null &
    WRK_PERF=$!
    sleep 2
    run timeout 60 perf record -F 499 -g --call-graph dwarf,16384 -o "$WORK/perf.data" -p "$GW_PID" -- sleep 10 2>/dev/null || true
    wait "$WRK_PERF" || true
    {
        echo "# Where the gateway's CPU goes under wrk -t$THREADS -c$CONNS (new job_id each), $DATE"
        echo
        echo "perf record -F 499 -g --call-graph dwarf -p GATEWAY -- sleep 10, summarised by bench/perf_summary.py."
        echo
        perf script -i "$WORK/perf.data" -F comm,tid,period,ip,sym --no-inline 2>/dev/null | python3 "$ROOT/bench/perf_summary.py"
        echo
        echo "## Self cost, top 30 symbols"
        echo
        echo '```'
        perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | head -30 | sed 's/  *- *- *$//; s/[[:space:]]*$//' | cut -c1-150
        echo '```'
    } >"$ROOT/bench/perf.txt" || true
    echo "wrote bench/perf.txt" >&2
fi

stop_pid "$GW_PID"

# (d) the bare hyper hello-world with the same wrk settings.
say "(d) bare hyper hello-world"
COMMANDS+=("target/release/examples/hello --listen 127.0.0.1:0")
start_server "$WORK/hello" "listening on " "$HELLO" --listen 127.0.0.1:0
HELLO_PID=$STARTED_PID
HELLO_ADDR=$STARTED_ADDR
wrk_run "$WORK/hello-post.txt" "http://$HELLO_ADDR/v4/sip" replay
wrk_run "$WORK/hello-get.txt" "http://$HELLO_ADDR/" get
stop_pid "$HELLO_PID"
HELLO_POST_RPS=$(rps "$WORK/hello-post.txt")
HELLO_GET_RPS=$(rps "$WORK/hello-get.txt")
RATIO_POST=$(div "$SAT_OK_RPS" "$HELLO_POST_RPS" %.4f)
RATIO_GET=$(div "$SAT_OK_RPS" "$HELLO_GET_RPS" %.4f)

# --- criterion -------------------------------------------------------------------------------
say "criterion benches"
rm -rf "$ROOT/target/criterion/reference-3kb" "$ROOT/target/criterion/three-1mb-photos"
run timeout 1800 cargo bench --bench pipeline -- --warm-up-time 1 --measurement-time 5 >"$WORK/criterion.txt" 2>&1 || { cat "$WORK/criterion.txt" >&2; exit 1; }
grep -E '^[a-z0-9-]+/[a-z-]+|time:' "$WORK/criterion.txt" >&2 || true
CRITERION_ROWS=$(
    for group in reference-3kb three-1mb-photos; do
        for bench in parse schema rules-scope decide-whole finish-file; do
            f=$ROOT/target/criterion/$group/$bench/new/estimates.json
            [[ -f "$f" ]] || continue
            python3 - "$f" "$group/$bench" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
def fmt(ns):
    return f"{ns / 1e6:.2f} ms" if ns >= 1e6 else f"{ns / 1e3:.2f} µs" if ns >= 1e3 else f"{ns:.0f} ns"
m = e["median"]
print(f"| `{sys.argv[2]}` | {fmt(m['point_estimate'])} | {fmt(m['confidence_interval']['lower_bound'])} – {fmt(m['confidence_interval']['upper_bound'])} |")
PY
        done
    done
)

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------------------------
REPORT=$ROOT/bench/report.md
{
    cat <<EOF
# flowgate load report

Written by \`bench/load.sh\` on $DATE. Loopback only (127.0.0.1); the load generator shares the
machine with the server under test.

| machine | |
|---|---|
| CPUs (\`nproc\`) | $NPROC |
| CPU | $CPU |
| memory | $MEM |
| kernel | $KERNEL |
| revision | $REV |
| wrk | $WRK_VERSION (Debian); wrk2 candidate in apt: $WRK2_CANDIDATE |
| load average (1, 5, 15 min) before / after | $LOAD_BEFORE / $LOAD_AFTER |

Body: \`$BODY\` (3 KB, scenario S01, one D0396 flow). Every saturation and fixed-rate request
carries its own \`job_details.job_id\`, so each is decided, stored with an fsync'd group commit,
and its job archive and flow file queued (the dispatcher delivers them to the local sink during
the run, competing for the same 2 cores; it falls behind at saturation and catches up after). Default
configuration and log level (\`info\`: one line per request to stderr, here a file).

## Figures

| what | figure |
|---|---|
| (a) gateway at saturation, wrk -t$THREADS -c$CONNS -d${SAT_SECS}s, new job_id each | **$SAT_RPS req/s** (wrk); accepted (2xx) **$SAT_OK_RPS req/s**; non-2xx $SAT_NON2XX, socket errors $SAT_SOCKERR |
| (a) latency at saturation | p50 $(ms "$(pct "$WORK/sat.txt" p50_us)") ms, p99 $(ms "$(pct "$WORK/sat.txt" p99_us)") ms, p99.9 $(ms "$(pct "$WORK/sat.txt" p999_us)") ms, max $(ms "$(pct "$WORK/sat.txt" max_us)") ms |
| (a) accepts counted by the store in that window | $ACCEPTS ($METRIC_RPS/s; wrk stops counting answers still in flight at its deadline) |
| (b) fixed rate $FIXED_RATE req/s for ${FIXED_SECS} s, open loop, $CONNS keep-alive connections | $(fx completed)/$(fx scheduled) answered, statuses $(fx statuses), achieved $(fx 'round(achieved_rate)') req/s |
| (b) latency from the scheduled send time | p50 $(fx 'round(p50_ms, 2)') ms, **p99 $(fx 'round(p99_ms, 2)') ms**, p99.9 $(fx 'round(p999_ms, 2)') ms, max $(fx 'round(max_ms, 2)') ms |
| (b) generator's own lateness (not the server's) | p99 $(fx 'round(generator_lag_p99_ms, 2)') ms, max $(fx 'round(generator_lag_max_ms, 2)') ms |
| (c) idempotent replay (same body), wrk -t$THREADS -c$CONNS -d${SAT_SECS}s | **$REPLAY_RPS req/s**; p50 $(ms "$(pct "$WORK/replay.txt" p50_us)") ms, p99 $(ms "$(pct "$WORK/replay.txt" p99_us)") ms, p99.9 $(ms "$(pct "$WORK/replay.txt" p999_us)") ms; non-2xx $REPLAY_NON2XX; store accepts during it $REPLAY_ACCEPTS |
| (d) bare hyper hello-world, same wrk settings, POST of the same body | **$HELLO_POST_RPS req/s**; p50 $(ms "$(pct "$WORK/hello-post.txt" p50_us)") ms, p99 $(ms "$(pct "$WORK/hello-post.txt" p99_us)") ms, p99.9 $(ms "$(pct "$WORK/hello-post.txt" p999_us)") ms |
| (d) bare hyper hello-world, same wrk settings, \`GET /\` | $HELLO_GET_RPS req/s; p50 $(ms "$(pct "$WORK/hello-get.txt" p50_us)") ms, p99 $(ms "$(pct "$WORK/hello-get.txt" p99_us)") ms, p99.9 $(ms "$(pct "$WORK/hello-get.txt" p999_us)") ms |
| (d) ratio gateway (accepted req/s) / hello-world | **$RATIO_POST** of hello POST; $RATIO_GET of hello GET |
| (e) gateway RSS after saturation | VmRSS $((SAT_RSS / 1024)) MiB, VmHWM $((SAT_HWM / 1024)) MiB |
| (e) gateway RSS after the whole run | VmRSS $((END_RSS / 1024)) MiB, VmHWM $((END_HWM / 1024)) MiB |
| (a) gateway threads put to sleep (\`clock_nanosleep\`) per second during (a) | $NANOSLEEPS (each a 10 ms stall of a tokio worker: rhai's lock back-off; 0 is healthy) |
| (f) group commit during (a) | $ACCEPTS accepts in $COMMITS commits: **$PER_COMMIT accepted requests per fsync**; largest batch since start $LARGEST |

(f) counts every store commit, including the dispatcher's delivery marks, so accepts per commit
is a lower bound on how many accepted requests shared one fsync.

## Criterion medians (\`benches/pipeline.rs\`, one thread)

| bench | median | 95% interval of the median |
|---|---|---|
$CRITERION_ROWS

## Commands

\`\`\`
EOF
    printf '%s\n' "${COMMANDS[@]}"
    cat <<'EOF'
```
EOF
} >"$REPORT"

cat "$REPORT"
