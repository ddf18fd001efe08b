#!/usr/bin/env bash
# Load report for flowgate (issue 6): the gateway under wrk at saturation, at a fixed 1,000 req/s,
# on the idempotent replay path, beside a bare hyper hello-world; RSS; group commit; criterion
# medians. Then the photo section: real bodies carry four base64 photos, so the ~8 MB body
# (photos of 1.5 MiB) at 8 connections, and 64 ~30 MB bodies (photos of 5.5 MiB) at once from 4
# keys, and a Node peer (Fastify + ajv, the schema only) on the 8 MB body; the bodies are
# generated, deterministically, by examples/photo_body. Writes bench/report.md and prints it.
#
#   bench/load.sh                 # from anywhere; runs from the repo root
#   PHOTOS_ONLY=1 bench/load.sh   # only the photo section (and its criterion group); rewrites
#                                 # that section of bench/report.md, leaving the rest as it was
#   PHOTOS=0 bench/load.sh        # everything but the photo section
#   CRITERION=0 bench/load.sh     # no criterion run (its rows are left out of the report)
#   NODE_PEER=0 bench/load.sh     # no Node peer (it needs node and npm; npm ci on first use)
#   PHOTO_SECS=20 PHOTO_MAX=300   # the 8 MB run's duration and most requests (the defaults)
#   PHOTO_DIR=DIR bench/load.sh   # where the photo section's data dirs go (default: the temp dir,
#                                 # which follows TMPDIR); the report names its file system
#                                 # (on tmpfs an fsync is free)
#   PERF=1 bench/load.sh          # also perf-records the gateway under saturation (bench/perf.txt)
#   KEEP=1 bench/load.sh          # keep the temp data dir and server logs
#   NOTE="..." bench/load.sh      # a line for the report, e.g. what else ran on the machine
#
# Bounded and loopback only: every server listens on 127.0.0.1:0, every load tool has a fixed
# duration (or count) and a timeout, and a trap stops the servers whatever happens. The photo
# section needs disk (about 5 × the body per accepted request: store and sink; PHOTO_MAX requests
# at most): it checks the free space first and deletes its data dirs as it goes (unless KEEP=1).
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
PHOTOS_ONLY=${PHOTOS_ONLY:-0}
PHOTOS=${PHOTOS:-1}
[[ "$PHOTOS_ONLY" == 1 ]] && PHOTOS=1
CRITERION=${CRITERION:-1}
# The photo section: the ~8 MB body at PHOTO_CONNS connections for PHOTO_SECS seconds (at most
# PHOTO_MAX requests), then BURST ~30 MB bodies at once from BURST_KEYS keys.
PHOTO_CONNS=8
PHOTO_SECS=${PHOTO_SECS:-20}
PHOTO_MAX=${PHOTO_MAX:-300}
BURST=${BURST:-64}
BURST_KEYS=4
PHOTO_TIMEOUT=120
# The burst's answers can take over 100 s on a busy 2-core machine: counted, not timed out.
BURST_TIMEOUT=300

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
        echo "kept $WORK ${PHOTO_RUN:-}" >&2
    else
        rm -rf "$WORK" "${PHOTO_RUN:-}"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n== %s\n' "$*" >&2; }

# A command as the report shows it: no machine paths, throwaway keys as $KEY, $KEY1...
shown() {
    local shown="$*" i
    shown=${shown//$ROOT\//}
    [[ -n "${PHOTO_RUN:-}" ]] && shown=${shown//$PHOTO_RUN/\$PHOTO_DIR}
    shown=${shown//$WORK/\$WORK}
    [[ -n "${KEY:-}" ]] && shown=${shown//$KEY/\$KEY}
    for i in "${!UPLOAD_KEYS[@]}"; do
        shown=${shown//${UPLOAD_KEYS[$i]}/\$KEY$((i + 1))}
    done
    printf '%s' "$shown"
}
UPLOAD_KEYS=()

# Records a command for the report and runs it.
run() {
    COMMANDS+=("$(shown "$@")")
    "$@"
}

# The same for the photo section's own list.
PHOTO_COMMANDS=()
prun() {
    PHOTO_COMMANDS+=("$(shown "$@")")
    "$@"
}

# Starts a server in the background and waits (bounded) for its "listening on http://ADDR" line.
# Sets STARTED_PID and STARTED_ADDR.
start_server() {
    local log=$1 pattern=$2
    shift 2
    # Made first: the server opens them only once it runs, and the loop below reads them at once.
    : >"$log.out"
    : >"$log.err"
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
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
mib() { awk -v kb="$1" 'BEGIN { printf "%.0f", kb / 1024 }'; }
# Apparent size in bytes of what a folder holds (0 when absent).
dir_bytes() { du -sb --apparent-size "$1" 2>/dev/null | awk '{ print $1 }' || echo 0; }
human_bytes() { awk -v b="$1" 'BEGIN { if (b >= 1048576) printf "%.2f MiB", b / 1048576; else if (b >= 1024) printf "%.1f KiB", b / 1024; else printf "%d B", b }'; }

# Criterion medians of the given groups as table rows (benches absent from target/criterion are skipped).
criterion_rows() {
    local group bench f
    for group in "$@"; do
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
}
# A criterion median in nanoseconds (empty when absent).
criterion_ns() {
    local f=$ROOT/target/criterion/$1/new/estimates.json
    if [[ "$CRITERION" == 1 && -f "$f" ]]; then
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' "$f"
    fi
}

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
if [[ "$PHOTOS_ONLY" == 1 ]]; then
    prun cargo build --release --bin flowgate --example photo_body
else
    run cargo build --release --bin flowgate --example hello --example photo_body
    PHOTO_COMMANDS+=("${COMMANDS[-1]}")
fi
FLOWGATE=$ROOT/target/release/flowgate
HELLO=$ROOT/target/release/examples/hello
PHOTO_BODY=$ROOT/target/release/examples/photo_body

# --- the 3 KB reference body: (a)-(f) --------------------------------------------------------
small_body_sections() {
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
}


# --- photos: the ~8 MB body at 8 connections, 64 ~30 MB bodies at once ----------------------
# Prometheus scrape of the gateway at $1 into $2.
scrape_at() {
    curl -sf --max-time 5 "http://$1/metrics" >"$2"
}

# Waits (at most $2 s) until the gateway at $1 has delivered everything it queued; sets
# DRAIN_SECS (n/a when it did not get there in time).
drain() {
    local addr=$1 limit=$2 t0=$SECONDS
    DRAIN_SECS=n/a
    while (( SECONDS - t0 < limit )); do
        scrape_at "$addr" "$WORK/metrics.drain" || true
        if [[ -s "$WORK/metrics.drain" && $(metric "$WORK/metrics.drain" flowgate_outbox_depth) == 0 ]]; then
            DRAIN_SECS=$((SECONDS - t0))
            return 0
        fi
        sleep 1
    done
}

# Field of big_post.py's BIG_POST line in file $1 (a Python expression over its keys).
bp() { python3 -c 'import json,sys; v=json.loads(open(sys.argv[1]).read().split("BIG_POST ",1)[1].splitlines()[0]); print(eval(sys.argv[2], {}, v))' "$1" "$2"; }

# Writes $1 (1 when the 1-minute load average was at least 0.5: other work on the machine).
busy() { awk -v l="${1%% *}" 'BEGIN { print (l >= 0.5) ? 1 : 0 }'; }

photo_section() {
    local free_mib need_mib i key
    say "photo bodies (examples/photo_body)"
    B8=$WORK/photos-8mb.json
    B30=$WORK/photos-30mb.json
    prun "$PHOTO_BODY" --size 8mb --out "$B8" 2>"$WORK/photos-8mb.gen"
    prun "$PHOTO_BODY" --size 30mb --out "$B30" 2>"$WORK/photos-30mb.gen"
    cat "$WORK/photos-8mb.gen" "$WORK/photos-30mb.gen" >&2
    B8_BYTES=$(stat -c %s "$B8")
    B30_BYTES=$(stat -c %s "$B30")
    B8_SHA=$(sed -n 's/.*sha256 //p' "$WORK/photos-8mb.gen")
    B30_SHA=$(sed -n 's/.*sha256 //p' "$WORK/photos-30mb.gen")
    PHOTO_SEED=$(sed -n 's/.*seed \([0-9]*\),.*/\1/p' "$WORK/photos-8mb.gen")
    # Disk: at ca739a2 an accepted request took 2.2-2.9 × its body in the store's allocated blocks
    # (its file grows in larger steps) and 1 × in the sink (its job archive): 5 × leaves room. The
    # first data dir is deleted before the burst.
    PHOTO_DIR=${PHOTO_DIR:-$WORK}
    PHOTO_RUN=$(mktemp -d "$PHOTO_DIR/flowgate-photos.XXXXXX")
    PHOTO_FS=$(stat -f -c %T "$PHOTO_RUN")
    free_mib=$(df -Pk "$PHOTO_RUN" | awk 'NR == 2 { printf "%d", $4 / 1024 }')
    if [[ "$PHOTO_FS" == tmpfs ]]; then
        # Memory, then: what is available less 4 GiB for the gateway itself.
        free_mib=$(awk -v f="$free_mib" '/^MemAvailable:/ { m = int($2 / 1024) - 4096; print (m < f) ? m : f }' /proc/meminfo)
    fi
    need_mib=$(awk -v a="$((PHOTO_MAX * B8_BYTES))" -v b="$((BURST * B30_BYTES))" 'BEGIN { m = a > b ? a : b; printf "%d", 5 * m / 1048576 }')
    if (( free_mib < need_mib )); then
        echo "photo section: $free_mib MiB free where the data dirs go ($PHOTO_DIR), $need_mib MiB wanted for PHOTO_MAX=$PHOTO_MAX; lower PHOTO_MAX or set PHOTO_DIR" >&2
        exit 1
    fi

    # (g) the 8 MB body, every request a new job_id, one key with no practical rate limit.
    say "(g) 8 MB body: $PHOTO_CONNS connections, ${PHOTO_SECS} s (at most $PHOTO_MAX requests), new job_id each"
    local data=$PHOTO_RUN/photos-data
    mkdir -p "$data"
    PHOTO_COMMANDS+=("flowgate keys add --name Photos --sip-id DEMO --rate 1000000 --burst 1000000 --data-dir \$PHOTO_DIR/photos-data   # \$KEY: last stdout line")
    KEY=$("$FLOWGATE" keys add --name Photos --sip-id DEMO --rate 1000000 --burst 1000000 --data-dir "$data" 2>/dev/null | tail -1)
    [[ "$KEY" == fgk_* ]] || { echo "no key from flowgate keys add" >&2; exit 1; }
    PHOTO_COMMANDS+=("flowgate serve --listen 127.0.0.1:0 --data-dir \$PHOTO_DIR/photos-data")
    start_server "$WORK/gateway-photos" "flowgate listening on " "$FLOWGATE" serve --listen 127.0.0.1:0 --data-dir "$data"
    local pid=$STARTED_PID addr=$STARTED_ADDR
    echo "gateway pid $pid on $addr" >&2
    local first
    first=$(curl -s --max-time 60 -o "$WORK/photos-first.json" -w '%{http_code}' -H "X-API-Key: $KEY" -H 'Content-Type: application/json' --data-binary @"$B8" "http://$addr/v4/sip")
    [[ "$first" == 200 ]] || { echo "the 8 MB body got $first:" >&2; cat "$WORK/photos-first.json" >&2; exit 1; }

    G_LOAD_BEFORE=$(loadavg)
    prun timeout $((PHOTO_SECS + PHOTO_TIMEOUT + 30)) python3 "$ROOT/bench/big_post.py" --addr "$addr" --key "$KEY" --body "$B8" \
        --connections "$PHOTO_CONNS" --duration "$PHOTO_SECS" --max-requests "$PHOTO_MAX" --timeout "$PHOTO_TIMEOUT" --run "$RUN_ID" >"$WORK/photos-8mb.txt"
    G_LOAD_AFTER=$(loadavg)
    cat "$WORK/photos-8mb.txt" >&2
    G_RSS_END=$(status_kb "$pid" VmRSS)
    drain "$addr" 300
    G_DRAIN=$DRAIN_SECS
    scrape_at "$addr" "$WORK/metrics.photos"
    G_HWM=$(status_kb "$pid" VmHWM)
    G_RSS=$(status_kb "$pid" VmRSS)
    G_ACCEPTS=$(metric "$WORK/metrics.photos" flowgate_store_commit_accepts_total)
    # The gateway's CPU time (user + system) from its start through the load and the delivery:
    # per accepted request, it depends far less than req/s on what else the machine runs.
    G_CPU_MS=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f", ($14 + $15) * 1000 / hz }' "/proc/$pid/stat")
    stop_pid "$pid"
    G_STORE=$(dir_bytes "$data/store")
    G_STORE_ALLOC=$(du -sB1 "$data/store" | awk '{ print $1 }')
    G_SINK=$(dir_bytes "$data/dtn")
    G_SINK_JOBS=$(dir_bytes "$data/dtn/jobs")
    [[ "${KEEP:-0}" == 1 ]] || rm -rf "$data"

    # (h) the Node peer (Fastify + ajv, the schema only, nothing stored) on the same body.
    NODE_NOTE=
    if [[ "${NODE_PEER:-1}" == 1 ]] && command -v node >/dev/null && command -v npm >/dev/null; then
        if [[ ! -d "$ROOT/bench/node-peer/node_modules" ]]; then
            say "installing the Node peer's packages (npm ci, bench/node-peer/package-lock.json)"
            (cd "$ROOT/bench/node-peer" && timeout 300 npm ci --no-audit --no-fund >&2) || NODE_NOTE="npm ci failed"
        fi
    else
        NODE_NOTE="skipped (NODE_PEER=0, or no node/npm)"
    fi
    if [[ -z "$NODE_NOTE" ]]; then
        say "(h) Node peer: $PHOTO_CONNS connections, ${PHOTO_SECS} s"
        NODE_VERSION=$(node --version)
        PHOTO_COMMANDS+=("node bench/node-peer/server.js --listen 127.0.0.1:0   # node $NODE_VERSION")
        start_server "$WORK/node-peer" "node peer listening on " node "$ROOT/bench/node-peer/server.js" --listen 127.0.0.1:0
        pid=$STARTED_PID
        addr=$STARTED_ADDR
        first=$(curl -s --max-time 60 -o "$WORK/node-first.json" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @"$B8" "http://$addr/v4/sip")
        [[ "$first" == 200 ]] || { echo "the Node peer answered the 8 MB body with $first:" >&2; head -c 2000 "$WORK/node-first.json" >&2; exit 1; }
        I_LOAD_BEFORE=$(loadavg)
        prun timeout $((PHOTO_SECS + PHOTO_TIMEOUT + 30)) python3 "$ROOT/bench/big_post.py" --addr "$addr" --key none --body "$B8" \
            --connections "$PHOTO_CONNS" --duration "$PHOTO_SECS" --max-requests "$PHOTO_MAX" --timeout "$PHOTO_TIMEOUT" --run "$RUN_ID" >"$WORK/photos-node.txt"
        I_LOAD_AFTER=$(loadavg)
        cat "$WORK/photos-node.txt" >&2
        I_HWM=$(status_kb "$pid" VmHWM)
        stop_pid "$pid"
    fi

    # (i) BURST ~30 MB bodies at once from BURST_KEYS clients, each with the default rate limit
    # (10/s, burst 20: the 16 requests of each key are all admitted).
    say "(i) $BURST ~30 MB bodies at once from $BURST_KEYS keys"
    data=$PHOTO_RUN/photos-burst
    mkdir -p "$data"
    UPLOAD_KEYS=()
    for i in $(seq "$BURST_KEYS"); do
        key=$("$FLOWGATE" keys add --name "Upload $i" --sip-id "UPL$i" --data-dir "$data" 2>/dev/null | tail -1)
        [[ "$key" == fgk_* ]] || { echo "no key from flowgate keys add" >&2; exit 1; }
        UPLOAD_KEYS+=("$key")
    done
    PHOTO_COMMANDS+=("flowgate keys add --name \"Upload N\" --sip-id UPLN --data-dir \$PHOTO_DIR/photos-burst   # N = 1..$BURST_KEYS, default rate; \$KEYN: last stdout line")
    PHOTO_COMMANDS+=("flowgate serve --listen 127.0.0.1:0 --data-dir \$PHOTO_DIR/photos-burst")
    start_server "$WORK/gateway-burst" "flowgate listening on " "$FLOWGATE" serve --listen 127.0.0.1:0 --data-dir "$data"
    pid=$STARTED_PID
    addr=$STARTED_ADDR
    echo "gateway pid $pid on $addr" >&2
    local keyargs=()
    for key in "${UPLOAD_KEYS[@]}"; do keyargs+=(--key "$key"); done
    H_LOAD_BEFORE=$(loadavg)
    prun timeout $((BURST_TIMEOUT + 60)) python3 "$ROOT/bench/big_post.py" --addr "$addr" "${keyargs[@]}" --body "$B30" \
        --connections "$BURST" --per-connection 1 --duration 10 --timeout "$BURST_TIMEOUT" --run "$RUN_ID" >"$WORK/photos-burst.txt"
    H_LOAD_AFTER=$(loadavg)
    cat "$WORK/photos-burst.txt" >&2
    # Still there, still answering: health, and a 3 KB request of the first key.
    H_ALIVE=no
    H_HWM=n/a
    H_ACCEPTS=n/a
    H_DRAIN=n/a
    kill -0 "$pid" 2>/dev/null && H_ALIVE=yes
    scrape_at "$addr" "$WORK/metrics.burst" && H_ACCEPTS=$(metric "$WORK/metrics.burst" flowgate_store_commit_accepts_total)
    H_HEALTH=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "http://$addr/healthz" || true)
    H_NEXT=$(curl -s --max-time 30 -o /dev/null -w '%{http_code}' -H "X-API-Key: ${UPLOAD_KEYS[0]}" -H 'Content-Type: application/json' --data-binary @"$BODY" "http://$addr/v4/sip" || true)
    if [[ "$H_ALIVE" == yes ]] && kill -0 "$pid" 2>/dev/null; then
        drain "$addr" 300
        H_DRAIN=$DRAIN_SECS
        H_HWM=$(status_kb "$pid" VmHWM)
    fi
    stop_pid "$pid"
    H_STORE=$(dir_bytes "$data/store")
    H_SINK=$(dir_bytes "$data/dtn")
    [[ "${KEEP:-0}" == 1 ]] || rm -rf "$PHOTO_RUN" "$B8" "$B30"
}

# The Node peer's rows of the photo section.
node_row() {
    if [[ -n "$NODE_NOTE" ]]; then
        echo "| (h) Node peer (Fastify + ajv, schema only) | $NODE_NOTE | |"
        return
    fi
    local n=$WORK/photos-node.txt
    echo "| (h) Node peer (\`bench/node-peer\`: Fastify + ajv, the schema only, nothing stored; node $NODE_VERSION), same body, $PHOTO_CONNS connections, ${PHOTO_SECS} s | **$(bp "$n" 'round(ok_rate, 2)') req/s** answered 200; statuses $(bp "$n" statuses), errors $(bp "$n" errors); p50 $(bp "$n" 'round(p50_ms)') ms, p99 $(bp "$n" 'round(p99_ms)') ms; peak RSS $(mib "$I_HWM") MiB | $I_LOAD_BEFORE / $I_LOAD_AFTER |"
    echo "| (h) ratio gateway (accepted req/s) / Node peer | **$(div "$(bp "$WORK/photos-8mb.txt" ok_rate)" "$(bp "$n" ok_rate)" %.2f)** (the gateway also runs the rules, stores, fsyncs and delivers) | |"
}

# The photo section of the report (markdown), between markers PHOTOS_ONLY=1 rewrites.
photo_report() {
    local c8=four-photos-8mb decide schema parse scope
    decide=$(criterion_ns "$c8/decide-whole")
    schema=$(criterion_ns "$c8/schema")
    parse=$(criterion_ns "$c8/parse")
    scope=$(criterion_ns "$c8/rules-scope")
    nsms() { [[ -n "$1" ]] && awk -v n="$1" 'BEGIN { if (n >= 1e6) printf "%.1f ms", n / 1e6; else printf "%.1f µs", n / 1e3 }' || echo n/a; }
    local busy_note= fs_note=
    [[ "$PHOTO_FS" == tmpfs ]] && fs_note=" (memory: an fsync costs nothing there, so these figures leave the disk out)"
    if [[ $(busy "$G_LOAD_BEFORE") == 1 || $(busy "$H_LOAD_BEFORE") == 1 || $(busy "$PHOTO_LOAD_BEFORE") == 1 ]]; then
        busy_note="Other work was running on the machine (a 1-minute load average of 0.5 or more before a run; an idle machine shows about 0): the figures are lower, and the latencies higher, than on a quiet machine."
    fi
    cat <<EOF
<!-- photos:begin (written by bench/load.sh; PHOTOS_ONLY=1 bench/load.sh rewrites only this section) -->
## Photos: realistic bodies

Written by \`bench/load.sh\` on $PHOTO_DATE at revision $REV, on $NPROC CPUs ($CPU), $MEM, kernel
$KERNEL. Loopback only; the load client (\`bench/big_post.py\`, Python asyncio) shares the
machine with the gateway. Load average (1, 5, 15 min) at the start of the section: $PHOTO_LOAD_BEFORE.
$busy_note
${NOTE:+$NOTE}

A real body carries four photos (\`job_execution.pre_job_photo\`, \`post_job_photo\`,
\`post_resealing_photo\`, \`meter.photo\`), base64, 1–4 MB each from a phone. The bodies here are
\`tests/bench/s01-reference.json\` with its four photos filled with pseudo-random bytes
(splitmix64, seed $PHOTO_SEED), base64, written by \`examples/photo_body\` (\`benches/pipeline.rs\`
uses the same generator); the same seed gives the same bytes:

| body | photos | bytes | SHA-256 |
|---|---|---|---|
| ~8 MB | 4 × 1.5 MiB decoded | $B8_BYTES | \`$B8_SHA\` |
| ~30 MB | 4 × 5.5 MiB decoded | $B30_BYTES | \`$B30_SHA\` |

Every request carries its own \`job_details.job_id\`, so each is decided, stored (the body, and
its job archive until delivered) with an fsync'd commit, and its job archive and flow file
delivered to the local sink (\`<data_dir>/dtn/\`). Default configuration (\`decide_threads\`: one per
CPU, \`store.cache_mb\` 64, body limit 32 MiB). The data dirs were on a \`$PHOTO_FS\` file system$fs_note.

| what | figure | load average before / after |
|---|---|---|
| (g) ~8 MB body, $PHOTO_CONNS connections, ${PHOTO_SECS} s, new job_id each | **$(bp "$WORK/photos-8mb.txt" 'round(ok_rate, 2)') accepted req/s**; $(bp "$WORK/photos-8mb.txt" completed)/$(bp "$WORK/photos-8mb.txt" started) answered in $(bp "$WORK/photos-8mb.txt" 'round(elapsed_s, 1)') s, statuses $(bp "$WORK/photos-8mb.txt" statuses), errors $(bp "$WORK/photos-8mb.txt" errors) | $G_LOAD_BEFORE / $G_LOAD_AFTER |
| (g) latency (first byte sent to last byte of the answer) | **p50 $(bp "$WORK/photos-8mb.txt" 'round(p50_ms)') ms, p99 $(bp "$WORK/photos-8mb.txt" 'round(p99_ms)') ms**, max $(bp "$WORK/photos-8mb.txt" 'round(max_ms)') ms | |
| (g) gateway CPU time (user + system, from its start through the load and the delivery) | **$(div "$G_CPU_MS" "$G_ACCEPTS" %.1f) ms per accepted request** ($(awk -v m="$G_CPU_MS" 'BEGIN { printf "%.1f", m / 1000 }') s for $G_ACCEPTS) | |
| (g) gateway peak RSS (VmHWM, through the load and the delivery after it) | **$(mib "$G_HWM") MiB**; VmRSS at the end of the load $(mib "$G_RSS_END") MiB, after delivery $(mib "$G_RSS") MiB | |
| (g) store (\`<data_dir>/store/\`, after delivery; redb grows its file in steps, so the file size depends on where a run stops, the allocated blocks less) | $(human_bytes "$G_STORE") (file size; $(human_bytes "$G_STORE_ALLOC") in allocated blocks) for $G_ACCEPTS accepted requests: **$(human_bytes "$(div "$G_STORE" "$G_ACCEPTS" %.0f)") per accepted request** ($(div "$G_STORE" "$(( G_ACCEPTS * B8_BYTES ))" %.2f) × the body; allocated $(human_bytes "$(div "$G_STORE_ALLOC" "$G_ACCEPTS" %.0f)"), $(div "$G_STORE_ALLOC" "$(( G_ACCEPTS * B8_BYTES ))" %.2f) ×) | |
| (g) sink (\`<data_dir>/dtn/\`, after delivery) | $(human_bytes "$G_SINK"): **$(human_bytes "$(div "$G_SINK" "$G_ACCEPTS" %.0f)") per accepted request** (job archives $(human_bytes "$G_SINK_JOBS"), the rest flow files) | |
| (g) delivery | outbox empty $G_DRAIN s after the load ended (at most 300 s waited) | |
$(node_row)
| (i) $BURST ~30 MB bodies at once, from $BURST_KEYS keys ($((BURST / BURST_KEYS)) connections each, default rate limit 10/s, burst 20) | statuses $(bp "$WORK/photos-burst.txt" statuses), errors $(bp "$WORK/photos-burst.txt" errors); answers after **$(bp "$WORK/photos-burst.txt" 'round(min_ms / 1000, 1)') s (first), $(bp "$WORK/photos-burst.txt" 'round(p50_ms / 1000, 1)') s (p50), $(bp "$WORK/photos-burst.txt" 'round(max_ms / 1000, 1)') s (last)**, the bodies all sent after $(bp "$WORK/photos-burst.txt" 'round(sent_max_ms / 1000, 1)') s; accepted by the store $H_ACCEPTS | $H_LOAD_BEFORE / $H_LOAD_AFTER |
| (i) gateway after the burst | alive: **$H_ALIVE**; \`/healthz\` $H_HEALTH; a 3 KB request next: $H_NEXT | |
| (i) gateway peak RSS (VmHWM, through the burst and the delivery after it) | **$( [[ "$H_HWM" == n/a ]] && echo n/a || echo "$(mib "$H_HWM") MiB")** (the bodies: $BURST × $(human_bytes "$B30_BYTES") = $(human_bytes "$(( BURST * B30_BYTES ))")) | |
| (i) store and sink after the burst and its delivery | store $(human_bytes "$H_STORE"), sink $(human_bytes "$H_SINK"); outbox empty $H_DRAIN s after the burst | |
EOF
    if [[ -n "$decide" ]]; then
        cat <<EOF
| criterion \`four-photos-8mb\` (one thread, medians) | decide-whole **$(nsms "$decide")**, of which schema $(nsms "$schema") (**$(awk -v a="$schema" -v b="$decide" 'BEGIN { printf "%.0f%%", 100 * a / b }')** of the decision); parse $(nsms "$parse"), body to rule scope $(nsms "$scope") | $CRIT_LOAD_BEFORE / $CRIT_LOAD_AFTER |
EOF
    fi
    cat <<EOF

Commands:

\`\`\`
EOF
    printf '%s\n' "${PHOTO_COMMANDS[@]}"
    cat <<'EOF'
```
<!-- photos:end -->
EOF
}

# --- run -------------------------------------------------------------------------------------
if [[ "$PHOTOS_ONLY" != 1 ]]; then
    small_body_sections
fi
if [[ "$PHOTOS" == 1 ]]; then
    PHOTO_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    PHOTO_LOAD_BEFORE=$(loadavg)
    photo_section
fi

# --- criterion -------------------------------------------------------------------------------
CRITERION_ROWS=
CRIT_LOAD_BEFORE=$(loadavg)
if [[ "$CRITERION" == 1 ]]; then
    if [[ "$PHOTOS_ONLY" == 1 ]]; then
        say "criterion: the four-photos-8mb group"
        rm -rf "$ROOT/target/criterion/four-photos-8mb"
        prun timeout 1800 cargo bench --bench pipeline -- --warm-up-time 1 --measurement-time 5 four-photos-8mb >"$WORK/criterion.txt" 2>&1 || { cat "$WORK/criterion.txt" >&2; exit 1; }
    else
        say "criterion benches"
        rm -rf "$ROOT/target/criterion/reference-3kb" "$ROOT/target/criterion/three-1mb-photos" "$ROOT/target/criterion/four-photos-8mb"
        run timeout 1800 cargo bench --bench pipeline -- --warm-up-time 1 --measurement-time 5 >"$WORK/criterion.txt" 2>&1 || { cat "$WORK/criterion.txt" >&2; exit 1; }
        PHOTO_COMMANDS+=("${COMMANDS[-1]}")
    fi
    grep -E '^[a-z0-9.-]+/[a-z-]+|time:' "$WORK/criterion.txt" >&2 || true
    CRITERION_ROWS=$(criterion_rows reference-3kb three-1mb-photos four-photos-8mb)
fi
CRIT_LOAD_AFTER=$(loadavg)

LOAD_AFTER=$(loadavg)

# --- report ----------------------------------------------------------------------------------
REPORT=$ROOT/bench/report.md
# The photo section as bench/report.md holds it now (kept when this run does not measure it).
OLD_PHOTOS=$(python3 - "$REPORT" <<'PY'
import re, sys
try:
    m = re.search(r"<!-- photos:begin.*?<!-- photos:end -->", open(sys.argv[1]).read(), re.S)
    print(m.group(0) if m else "")
except FileNotFoundError:
    pass
PY
)
if [[ "$PHOTOS_ONLY" == 1 ]]; then
    # Only the photo section changes; the rest of the report stays as the last full run left it.
    photo_report >"$WORK/photos.md"
    python3 - "$REPORT" "$WORK/photos.md" <<'PY'
import re, sys
path, new = sys.argv[1], open(sys.argv[2]).read()
try:
    old = open(path).read()
except FileNotFoundError:
    old = ""
m = re.search(r"<!-- photos:begin.*?<!-- photos:end -->\n?", old, re.S)
out = old[: m.start()] + new + old[m.end():] if m else old.rstrip("\n") + ("\n\n" if old else "") + new
open(path, "w").write(out)
PY
    cat "$WORK/photos.md"
    exit 0
fi

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
    if [[ "$PHOTOS" == 1 ]]; then
        echo
        photo_report
    elif [[ -n "$OLD_PHOTOS" ]]; then
        echo
        printf '%s\n' "$OLD_PHOTOS"
    fi
} >"$REPORT"

cat "$REPORT"
