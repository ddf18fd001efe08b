#!/usr/bin/env bash
# Single-node Ceph RADOS Gateway (S3) on 127.0.0.1 for flowgate's integration tests.
#
#   eval "$(scripts/ceph.sh start)"   # install if missing, initialise once, start (idempotent)
#   scripts/ceph.sh env               # print the export lines of the running instance
#   scripts/ceph.sh status            # exit 0 if the S3 endpoint answers
#   scripts/ceph.sh stop              # stop radosgw, osd, mon (clean; waits for them to exit)
#   scripts/ceph.sh wipe              # stop, then delete the state dir
#
# One mon, one BlueStore OSD on a sparse file, radosgw (beast) on 127.0.0.1 only; no mgr.
# Debian 12 packages (Ceph 16.2); needs root for apt-get and runs the daemons as the caller.
# S3: path-style addressing, region us-east-1. RGW 16.2 ignores If-None-Match on
# CompleteMultipartUpload: create-once writes must be a single PutObject.
#
# Environment:
#   FLOWGATE_CEPH_DIR       state dir (default /var/tmp/flowgate-ceph; keep it on a disk fs, not tmpfs)
#   FLOWGATE_CEPH_PORT      S3 port on 127.0.0.1 (default 7480; applied at every start)
#   FLOWGATE_CEPH_MON_PORT  mon port on 127.0.0.1 (default 6789; fixed when the state dir is created)
#   FLOWGATE_S3_BUCKET      bucket that start creates if missing (default flowgate-test)
#
# stdout carries only the `export NAME=value` lines; every progress message goes to stderr.
set -euo pipefail

exec 3>&1 1>&2 # fd 3 = the caller's stdout (export lines only); plain stdout now goes to stderr

D=${FLOWGATE_CEPH_DIR:-/var/tmp/flowgate-ceph}
D=$(realpath -m -- "$D")
PORT=${FLOWGATE_CEPH_PORT:-7480}
MON_PORT=${FLOWGATE_CEPH_MON_PORT:-6789}
BUCKET=${FLOWGATE_S3_BUCKET:-flowgate-test}
REGION=us-east-1
CONF=$D/ceph.conf
LOCK=$D.lock # beside the state dir, so that wipe/re-init can delete the dir while holding it
MARK=.flowgate-ceph # a dir holding this file is ours to delete
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
T0=$SECONDS

say() { echo "ceph.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$D" != / ] || die "FLOWGATE_CEPH_DIR must not be /"
valid_port() { [[ $1 =~ ^[0-9]+$ ]] && (($1 > 0 && $1 < 65536)); }
valid_port "$PORT" || die "bad FLOWGATE_CEPH_PORT: $PORT"
valid_port "$MON_PORT" || die "bad FLOWGATE_CEPH_MON_PORT: $MON_PORT"
[[ $BUCKET =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || die "bad FLOWGATE_S3_BUCKET: $BUCKET"

# --- processes --------------------------------------------------------------------------------
# PIDs of our daemon NAME (ceph-mon | ceph-osd | radosgw): found in /proc by argv[0] and our
# config path, never trusted from a PID file (a PID file survives a kill -9 or a reboot).
daemon_pids() {
  local name=$1 p st a ours
  local -a argv
  for p in /proc/[0-9]*; do
    mapfile -d '' -t argv 2>/dev/null < "$p/cmdline" || continue
    [ "${#argv[@]}" -gt 0 ] || continue
    [ "${argv[0]##*/}" = "$name" ] || continue
    ours=0
    for a in "${argv[@]}"; do [ "$a" = "$CONF" ] && ours=1 && break; done
    [ $ours = 1 ] || continue
    read -r st 2>/dev/null < "$p/stat" || continue
    st=${st##*) }
    [ "${st%% *}" = Z ] && continue # zombie: already dead
    echo "${p#/proc/}"
  done
}
running() { [ -n "$(daemon_pids "$1")" ]; }

# spawn NAME LOG CMD...: start a daemon detached in its own session, holding none of our fds
# (fd 3 is the caller's $(...) pipe, fd 9 our lock).
spawn() {
  local name=$1 log=$2; shift 2
  setsid "$@" < /dev/null >> "$log" 2>&1 3>&- 9>&- &
  echo $! > "$D/run/$name.pid"
}

# wait_until SECONDS WHAT DAEMON CMD...: poll CMD; fail early if DAEMON (when given) has died.
wait_until() {
  local t=$1 what=$2 daemon=$3; shift 3
  local end=$((SECONDS + t))
  until "$@" > /dev/null 2>&1; do
    if [ -n "$daemon" ] && ! running "$daemon"; then
      say "$daemon exited while waiting for $what"; show_logs; return 1
    fi
    if ((SECONDS >= end)); then say "timeout (${t}s) waiting for $what"; show_logs; return 1; fi
    sleep 0.2
  done
}

show_logs() {
  local f
  for f in "$D"/log/*.out "$D"/log/*.log; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f" >&2
    tail -n 15 "$f" >&2
  done
}

# stop_daemon NAME: SIGTERM, wait up to 60 s for a clean exit, then SIGKILL.
stop_daemon() {
  local name=$1 end
  local -a pids
  mapfile -t pids < <(daemon_pids "$name")
  [ ${#pids[@]} -gt 0 ] || return 0
  say "stopping $name (pid ${pids[*]})"
  kill -TERM "${pids[@]}" 2> /dev/null || true
  end=$((SECONDS + 60))
  while running "$name"; do
    if ((SECONDS >= end)); then
      say "$name did not exit in 60 s: killing it"
      mapfile -t pids < <(daemon_pids "$name")
      [ ${#pids[@]} -eq 0 ] || kill -KILL "${pids[@]}" 2> /dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
}
stop_all() { stop_daemon radosgw; stop_daemon ceph-osd; stop_daemon ceph-mon; }

lock() {
  mkdir -p "$(dirname "$D")"
  exec 9>> "$LOCK"
  flock -w 900 9 || die "another ceph.sh holds $LOCK"
}

# --- install ----------------------------------------------------------------------------------
install() {
  local c missing=()
  for c in ceph-mon ceph-osd radosgw radosgw-admin ceph rados ceph-authtool monmaptool curl; do
    command -v "$c" > /dev/null || missing+=("$c")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root to apt-get install them"
  say "installing Ceph packages (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 \
    ceph-mon ceph-osd radosgw ceph-common curl
  for c in "${missing[@]}"; do command -v "$c" > /dev/null || die "$c still missing after install"; done
}

# --- daemons ----------------------------------------------------------------------------------
C=(-c "$CONF")
ceph_() { timeout 20 ceph "${C[@]}" --connect-timeout 15 "$@"; }

start_mon() {
  # A throwaway test mon: refuse to start only below 1% free disk (Ceph's default is 5%, which a
  # shared build machine with a few large target dirs can reach); set at every start.
  running ceph-mon || { say "starting mon"; spawn mon "$D/log/mon.out" ceph-mon "${C[@]}" -i a -f --mon-data-avail-crit 1; }
  wait_until 60 "the mon" ceph-mon ceph_ mon stat
}

osd_active() { timeout 10 ceph "${C[@]}" daemon osd.0 status 2> /dev/null | grep -q '"state": "active"'; }
start_osd() {
  running ceph-osd || { say "starting osd"; spawn osd "$D/log/osd.out" ceph-osd "${C[@]}" -i 0 -f; }
  wait_until 180 "the osd to become active" ceph-osd osd_active
}

http_code() { curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/" 2> /dev/null || true; }
answers() { local c; c=$(http_code "$1"); [ -n "$c" ] && [ "$c" != 000 ]; }
rgw_port() { cat "$D/rgw.port" 2> /dev/null || true; }

# A radosgw that died without a clean shutdown (kill -9, machine reset) leaves its watches on the
# cache-notify objects; the OSD keeps them for osd_client_watch_timeout (30 s) after it comes up,
# and until then every metadata write (CreateBucket) hangs ~30 s waiting for the dead watcher.
# Called only while none of our radosgw runs, so every watcher is stale: blocklisting its address
# makes the OSD drop its watches at once. (Every radosgw watches all notify.N, so notify.0 lists all.)
evict_stale_rgw_watchers() {
  local a addrs
  addrs=$(timeout 20 rados "${C[@]}" -p default.rgw.control listwatchers notify.0 2> /dev/null \
    | sed -n 's/^watcher=\([^ ]*\) .*/\1/p') || true
  for a in $addrs; do
    say "blocklisting stale radosgw client $a"
    ceph_ osd blocklist add "$a" 3600 > /dev/null 2>&1 || say "warning: could not blocklist $a"
  done
}

start_rgw() {
  if running radosgw && [ "$(rgw_port)" != "$PORT" ]; then
    say "radosgw listens on port $(rgw_port); restarting it on $PORT"
    stop_daemon radosgw
  fi
  if ! running radosgw; then
    ! answers "$PORT" || die "something else already answers on 127.0.0.1:$PORT (set FLOWGATE_CEPH_PORT)"
    evict_stale_rgw_watchers
    say "starting radosgw on 127.0.0.1:$PORT"
    echo "$PORT" > "$D/rgw.port"
    spawn rgw "$D/log/rgw.out" radosgw "${C[@]}" -n client.rgw.gw -f \
      --rgw-frontends "beast endpoint=127.0.0.1:$PORT"
  fi
  wait_until 180 "radosgw on 127.0.0.1:$PORT" radosgw answers "$PORT"
}

# s3_put_bucket ACCESS SECRET: prints the HTTP code of a signed PUT /BUCKET
s3_put_bucket() {
  curl -s -m 30 -o /dev/null -w '%{http_code}' -X PUT --aws-sigv4 "aws:amz:$REGION:s3" \
    -H "x-amz-content-sha256: $EMPTY_SHA256" --user "$1:$2" \
    "http://127.0.0.1:$PORT/$BUCKET" || true
}

ensure_bucket() {
  local code end=$((SECONDS + 120))
  # shellcheck disable=SC1091
  . "$D/s3.env"
  while :; do
    code=$(s3_put_bucket "$S3_ACCESS_KEY" "$S3_SECRET_KEY")
    case $code in
      200 | 409) break ;; # created, or already there (BucketAlreadyExists)
      000 | 5??) ((SECONDS < end)) || die "bucket $BUCKET: HTTP $code after 120 s" ;;
      *) die "bucket $BUCKET: HTTP $code" ;;
    esac
    sleep 0.5
  done
  echo "$BUCKET" > "$D/bucket"
}

# --- first start: create the cluster ----------------------------------------------------------
init() {
  [ -f "$D/initialised" ] && return 0
  if [ -e "$D" ]; then
    if [ -f "$D/$MARK" ] || [ -z "$(ls -A "$D")" ]; then
      stop_all
      say "removing half-initialised $D"
      rm -rf -- "$D"
    else
      die "$D exists and is not a flowgate-ceph state dir; set FLOWGATE_CEPH_DIR elsewhere"
    fi
  fi
  say "creating a new cluster in $D"
  mkdir -p "$D"/{run,log,mon.a,osd.0,rgw}
  touch "$D/$MARK"
  if [ "$(stat -f -c %T "$D")" = tmpfs ]; then
    say "warning: $D is on tmpfs; keep the state dir on a disk filesystem (FLOWGATE_CEPH_DIR)"
  fi
  local fsid osd_uuid
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  cat > "$CONF" << EOF
[global]
fsid = $fsid
mon_host = v1:127.0.0.1:$MON_PORT
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr2 = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 5
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_crush_chooseleaf_type = 0
run_dir = $D/run
admin_socket = $D/run/\$name.asok
log_file = $D/log/\$name.log
keyring = $D/keyring
[mon.a]
mon_data = $D/mon.a
[osd]
osd_objectstore = bluestore
osd_memory_target = 1073741824
bluestore_block_create = true
bluestore_block_size = 10737418240
[osd.0]
osd_data = $D/osd.0
keyring = $D/osd.0/keyring
[client.rgw.gw]
rgw_data = $D/rgw
keyring = $D/rgw/keyring
EOF
  ceph-authtool --create-keyring "$D/mon.keyring" --gen-key -n mon. --cap mon 'allow *' > /dev/null
  ceph-authtool --create-keyring "$D/keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' > /dev/null
  ceph-authtool "$D/mon.keyring" --import-keyring "$D/keyring" > /dev/null
  monmaptool --create --add a "v1:127.0.0.1:$MON_PORT" --fsid "$fsid" "$D/monmap" > /dev/null
  ceph-mon "${C[@]}" --mkfs -i a --monmap "$D/monmap" --keyring "$D/mon.keyring" > "$D/log/mon-mkfs.out" 2>&1
  start_mon
  ceph_ osd new "$osd_uuid" > /dev/null # -> osd.0
  ceph_ auth get-or-create osd.0 osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' \
    -o "$D/osd.0/keyring" > /dev/null 2>&1
  say "creating the BlueStore OSD (10 GiB sparse file)"
  ceph-osd "${C[@]}" -i 0 --mkfs --osd-uuid "$osd_uuid" > "$D/log/osd-mkfs.out" 2>&1 \
    || { show_logs; die "ceph-osd --mkfs failed"; }
  ceph_ auth get-or-create client.rgw.gw mon 'allow rw' osd 'allow rwx' -o "$D/rgw/keyring" > /dev/null 2>&1
  start_osd
  start_rgw
  local ak sk
  ak=FG$(od -An -tx1 -N9 /dev/urandom | tr -d ' \n' | tr a-f A-F)
  sk=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
  say "creating the S3 user"
  timeout 120 radosgw-admin "${C[@]}" user create --uid=flowgate --display-name=flowgate \
    --access-key="$ak" --secret-key="$sk" > /dev/null
  printf 'S3_ACCESS_KEY=%s\nS3_SECRET_KEY=%s\n' "$ak" "$sk" > "$D/s3.env"
  chmod 600 "$D/s3.env"
  touch "$D/initialised"
}

# --- verbs ------------------------------------------------------------------------------------
print_env() {
  local port bucket
  # shellcheck disable=SC1091
  . "$D/s3.env"
  port=$(rgw_port)
  bucket=$(cat "$D/bucket" 2> /dev/null || echo "$BUCKET")
  {
    echo "export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY"
    echo "export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY"
    echo "export FLOWGATE_S3_ENDPOINT=http://127.0.0.1:${port:-$PORT}"
    echo "export FLOWGATE_S3_BUCKET=$bucket"
    echo "export AWS_REGION=$REGION"
  } >&3
}

is_up() { [ -f "$D/initialised" ] && running radosgw && answers "$(rgw_port)"; }

case "${1:-}" in
  start)
    lock
    install
    if [ -f "$D/initialised" ]; then
      start_mon
      start_osd
      start_rgw
    else
      init
    fi
    ensure_bucket
    say "S3 ready at http://127.0.0.1:$PORT bucket=$BUCKET region=$REGION (path-style), $((SECONDS - T0)) s"
    print_env
    ;;
  stop)
    lock
    stop_all
    say "stopped"
    ;;
  env)
    is_up || die "not running (state dir $D); run: $0 start"
    print_env
    ;;
  status)
    if is_up; then
      say "running: http://127.0.0.1:$(rgw_port) (state dir $D)"
    else
      say "not running (state dir $D)"
      exit 1
    fi
    ;;
  wipe)
    lock
    stop_all
    if [ -e "$D" ]; then
      [ -f "$D/$MARK" ] || [ -z "$(ls -A "$D")" ] || die "$D is not a flowgate-ceph state dir; not deleting it"
      rm -rf -- "$D"
      say "deleted $D"
    fi
    rm -f -- "$LOCK"
    ;;
  *)
    echo "usage: $0 start|stop|env|status|wipe" >&2
    exit 2
    ;;
esac
