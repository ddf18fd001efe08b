#!/usr/bin/env bash
# Throwaway PostgreSQL server on 127.0.0.1 for flowgate's tests.
#
#   eval "$(scripts/postgres.sh start)"   # install if missing, initialise once, start (idempotent)
#   scripts/postgres.sh env               # print the export lines of the running server
#   scripts/postgres.sh status            # exit 0 if the server accepts connections, 1 if not
#   scripts/postgres.sh restart [SECS]    # fast shutdown, data kept, down SECS, start (restart tests)
#   scripts/postgres.sh stop              # fast shutdown, then delete the state dir (throwaway)
#
# initdb + pg_ctl on a private data dir: never the system cluster, pg_ctlcluster or systemd.
# Debian's `postgresql` package (apt-get install when the server binaries are missing, as root);
# the highest /usr/lib/postgresql/<ver>/bin is used, or the one that made an existing data dir.
# pg_ctl refuses to run as root, so as root the server runs as the package's `postgres` user;
# as any other user it runs as that user.
# Clients: role and database `flowgate`, scram-sha-256 password over TCP 127.0.0.1 only. The role
# may create databases (one per test, if a test wants isolation). The password is random, made
# once per state dir.
# fsync stays on (flowgate is a durability gateway and its tests should see real commit costs);
# only the memory settings are shrunk.
#
# Environment:
#   FLOWGATE_PG_DIR   state dir (default /var/tmp/flowgate-pg; keep it on a disk fs, not tmpfs:
#                     on tmpfs fsync is free and a "durable" commit proves nothing)
#   FLOWGATE_PG_PORT  TCP port on 127.0.0.1 (default 55432; applied at every start)
#
# stdout carries only the `export NAME=value` lines; every progress message goes to stderr.
set -euo pipefail

exec 3>&1 1>&2 # fd 3 = the caller's stdout (export lines only); plain stdout now goes to stderr

# The caller's libpq settings (PGHOST, PGPORT, PGUSER, PGDATA, PGOPTIONS...) would silently
# redirect our own psql / pg_ctl / pg_isready calls; every call below names what it needs.
# (Before our own variables: PGD below starts with PG too.)
for v in "${!PG@}"; do unset "$v"; done

D=${FLOWGATE_PG_DIR:-/var/tmp/flowgate-pg}
D=$(realpath -m -- "$D")
PORT=${FLOWGATE_PG_PORT:-55432}
PGD=$D/data # PGDATA: initdb wants an empty dir of its own
SOCK=$D/sock # the unix socket, for our own admin connections (trust; dir is 0700)
LOG=$D/postgres.log
LOCK=$D.lock # beside the state dir, so that stop can delete the dir while holding it
MARK=.flowgate-pg # a dir holding this file is ours to delete
WAIT=30 # seconds a start may take before we give up and show the log
T0=$SECONDS

say() { echo "postgres.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$D" != / ] || die "FLOWGATE_PG_DIR must not be /"
valid_port() { [[ $1 =~ ^[0-9]+$ ]] && (($1 > 0 && $1 < 65536)); }
valid_port "$PORT" || die "bad FLOWGATE_PG_PORT: $PORT"
# A unix socket path is limited to 107 bytes; postgres would fail later with a vaguer message.
[ ${#SOCK} -le 90 ] || die "FLOWGATE_PG_DIR is too long for a unix socket path: $D"

# Commands run as the postgres user would complain that they cannot enter the caller's cwd.
cd /

# --- who runs the server ----------------------------------------------------------------------
if [ "$(id -u)" = 0 ]; then
  RUN_USER=postgres
  # runuser, not su: no password, no login shell (the postgres user's shell may be anything).
  as_user() { runuser -u "$RUN_USER" -- "$@"; }
else
  RUN_USER=$(id -un)
  as_user() { "$@"; }
fi

lock() {
  mkdir -p "$(dirname "$D")"
  { exec 9>> "$LOCK"; } 2> /dev/null || die "cannot open $LOCK (another user's instance? set FLOWGATE_PG_DIR)"
  flock -w 300 9 || die "another postgres.sh holds $LOCK"
}

# --- install and binaries ---------------------------------------------------------------------
BIN=
server_bin_ok() { local b=$1 c; for c in initdb pg_ctl postgres pg_isready psql; do [ -x "$b/$c" ] || return 1; done; }

find_bin() {
  local v b
  # A data dir can only be run by the major version that made it: prefer that one.
  if [ -r "$PGD/PG_VERSION" ]; then
    v=$(cat "$PGD/PG_VERSION")
    server_bin_ok "/usr/lib/postgresql/$v/bin" && { BIN=/usr/lib/postgresql/$v/bin; return 0; }
  fi
  BIN=
  # Highest version with a whole server (a client-only package leaves a bin dir without initdb).
  local -a bins
  mapfile -t bins < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5Vr)
  for b in "${bins[@]}"; do
    server_bin_ok "$b" && { BIN=$b; return 0; }
  done
  return 1
}

install() {
  find_bin && return 0
  [ "$(id -u)" = 0 ] || die "no PostgreSQL server under /usr/lib/postgresql/*/bin; run as root to apt-get install it"
  say "installing PostgreSQL (Debian package postgresql)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 postgresql
  find_bin || die "no PostgreSQL server under /usr/lib/postgresql/*/bin after the install"
}

check_user() {
  id -u "$RUN_USER" > /dev/null 2>&1 || die "no user $RUN_USER to run the server as"
  if [ -e "$D" ]; then
    local owner
    owner=$(stat -c %U -- "$D")
    [ "$owner" = "$RUN_USER" ] || die "$D belongs to $owner, and this run would use $RUN_USER; run as the same user (root runs it as postgres) or set FLOWGATE_PG_DIR"
  fi
}

# --- server -----------------------------------------------------------------------------------
# Our postmaster: the PID in postmaster.pid, checked in /proc to be a postgres whose argv names our
# data dir. pg_ctl status trusts the PID alone, and a PID file left by a kill -9 or a reboot may
# name a PID that some other process of the same user has since been given.
running() {
  local pid a
  local -a argv
  read -r pid 2> /dev/null < "$PGD/postmaster.pid" || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  mapfile -d '' -t argv 2> /dev/null < "/proc/$pid/cmdline" || return 1
  [ "${#argv[@]}" -gt 0 ] && [ "${argv[0]##*/}" = postgres ] || return 1 # empty: a zombie
  for a in "${argv[@]}"; do [ "$a" = "$PGD" ] && return 0; done
  return 1
}

# Every live process of our server, the postmaster and any child it left behind: postgres
# processes chdir to their data dir, so /proc/PID/cwd names it (zombies have no cwd).
server_pids() {
  local p c
  for p in /proc/[0-9]*; do
    read -r c 2> /dev/null < "$p/comm" || continue
    [ "$c" = postgres ] || continue
    [ "$(readlink "$p/cwd" 2> /dev/null)" = "$PGD" ] && echo "${p#/proc/}"
  done
  return 0
}

# A postmaster killed with -9 leaves its lock files behind: postmaster.pid and the socket's
# .s.PGSQL.PORT.lock. postgres clears them by itself when their PID is gone, but refuses to start
# while the PID exists at all: as a zombie its reaper has not collected yet (PID 1 in a container
# may be slow to, or never), or as an unrelated process that was given the PID since. Once none
# of our server's processes is alive they are stale (the cwd test stands in for postgres's own
# check for left-over children), so remove those whose PID still exists.
clear_stale_locks() {
  local f pid end=$((SECONDS + WAIT))
  [ -e "$PGD/postmaster.pid" ] || compgen -G "$SOCK/.s.PGSQL.*.lock" > /dev/null || return 0
  while [ -n "$(server_pids)" ]; do # children of a killed postmaster exit within a second or so
    ((SECONDS < end)) || die "postgres processes $(server_pids | xargs) still use $PGD without a postmaster"
    sleep 0.2
  done
  for f in "$PGD/postmaster.pid" "$SOCK"/.s.PGSQL.*.lock; do
    read -r pid 2> /dev/null < "$f" || continue
    pid=${pid#-} # a socket lock file holds -PID
    if [[ $pid =~ ^[0-9]+$ ]] && [ -e "/proc/$pid" ]; then
      say "removing stale ${f##*/} (PID $pid is no longer our postmaster)"
      rm -f -- "$f"
    fi
  done
}

# As the flowgate role: it meets the scram line and leaves without a password, which the server
# does not log; a default user (root, ...) would log a pg_hba FATAL at every poll.
ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -U flowgate -d flowgate -t 2 > /dev/null 2>&1; }
port_taken() { timeout 2 bash -c ": < /dev/tcp/127.0.0.1/$1" 2> /dev/null; }
server_port() { cat "$D/port" 2> /dev/null || true; }

show_log() {
  [ -s "$LOG" ] || return 0
  echo "----- last lines of $LOG" >&2
  tail -n 25 "$LOG" >&2
}

# psql as the server's superuser over the unix socket; SQL on stdin (keeps the password off argv).
admin_sql() { as_user "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$(server_port)" -U postgres -d postgres; }

init() {
  [ -f "$D/initialised" ] && return 0
  if [ -e "$D" ]; then
    if [ -f "$D/$MARK" ] || [ -z "$(ls -A "$D")" ]; then
      ! running || as_user "$BIN/pg_ctl" stop -D "$PGD" -m immediate > /dev/null 2>&1 || true
      say "removing half-initialised $D"
      rm -rf -- "$D"
    else
      die "$D exists and is not a flowgate-pg state dir; set FLOWGATE_PG_DIR elsewhere"
    fi
  fi
  say "creating a new cluster in $D ($("$BIN/postgres" --version), running as $RUN_USER)"
  mkdir -p -- "$D"
  [ "$RUN_USER" = "$(id -un)" ] || chown -- "$RUN_USER": "$D"
  chmod 700 "$D"
  as_user test -w "$D" || die "$RUN_USER cannot write $D (is a parent dir closed to it?); set FLOWGATE_PG_DIR"
  if [ "$(stat -f -c %T "$D")" = tmpfs ]; then
    say "warning: $D is on tmpfs; fsync costs nothing there (set FLOWGATE_PG_DIR to a disk filesystem)"
  fi
  as_user touch "$D/$MARK"
  as_user mkdir -m 700 "$SOCK"
  # shellcheck disable=SC2016 # $1 is the inner sh's argument: the path is passed, not spliced in
  od -An -tx1 -N16 /dev/urandom | tr -d ' \n' | as_user sh -c 'umask 077; cat > "$1"' sh "$D/password"
  # C locale: the same sort order and no dependence on which locales the machine generated.
  as_user "$BIN/initdb" -D "$PGD" -U postgres --auth=trust --encoding=UTF8 --locale=C \
    --no-instructions > "$D/initdb.out" 2>&1 || { tail -n 25 "$D/initdb.out" >&2; die "initdb failed"; }
  # Appended last, so these win over initdb's defaults; port comes on the command line instead.
  as_user tee -a "$PGD/postgresql.conf" > /dev/null << EOF

# --- flowgate test server (scripts/postgres.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCK'
shared_buffers = 16MB
max_connections = 100
work_mem = 4MB
maintenance_work_mem = 16MB
wal_buffers = 1MB
max_wal_size = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  # Superuser only through the 0700 socket dir; clients by password over 127.0.0.1.
  as_user tee "$PGD/pg_hba.conf" > /dev/null << 'EOF'
# TYPE  DATABASE  USER      ADDRESS       METHOD
local   all       postgres                trust
host    all       flowgate  127.0.0.1/32  scram-sha-256
EOF
  as_user touch "$D/initialised"
}

start_server() {
  if running && [ "$(server_port)" != "$PORT" ]; then
    say "the server listens on port $(server_port); restarting it on $PORT"
    stop_server
  fi
  if ! running; then
    clear_stale_locks
    ! port_taken "$PORT" || die "something else already listens on 127.0.0.1:$PORT (set FLOWGATE_PG_PORT)"
    say "starting postgres on 127.0.0.1:$PORT"
    echo "$PORT" | as_user tee "$D/port" > /dev/null
    # pg_ctl -w waits for the postmaster to report "ready" in postmaster.pid, and fails at once
    # if it exits (bad config, port taken, ...). Polling with pg_isready instead would work too,
    # but every poll during startup or crash recovery logs a FATAL "starting up" line.
    # The postmaster must hold none of our fds: fd 3 is the caller's $(...) pipe (it would never
    # see EOF) and fd 9 our lock (it would never be released).
    if ! as_user "$BIN/pg_ctl" start -w -t "$WAIT" -D "$PGD" -l "$LOG" -o "-c port=$PORT" \
      < /dev/null 3>&- 9>&-; then
      say "postgres did not start: it exited, or was not ready within ${WAIT} s"
      show_log
      exit 1
    fi
  fi
  # What the clients see: TCP on 127.0.0.1 (also when start found it already running).
  local end=$((SECONDS + WAIT))
  until ready "$PORT"; do
    if ((SECONDS >= end)); then say "timeout (${WAIT}s) waiting for postgres on 127.0.0.1:$PORT"; show_log; exit 1; fi
    sleep 0.2
  done
}

# stop_server: fast shutdown (open sessions are cut, no new checkpoint debt); data dir kept.
stop_server() {
  running || return 0
  say "stopping postgres (fast)"
  if ! as_user "$BIN/pg_ctl" stop -D "$PGD" -m fast -w -t 60 > /dev/null; then
    say "fast shutdown did not finish in 60 s: immediate shutdown (crash recovery at next start)"
    as_user "$BIN/pg_ctl" stop -D "$PGD" -m immediate -w -t 30 > /dev/null || true
  fi
  ! running || die "postgres is still running (data dir $PGD)"
}

# Role and database, made or repaired at every start (a start interrupted before this point, or
# a role whose password drifted, is fixed by the next start).
ensure_role() {
  local pw
  pw=$(cat "$D/password")
  admin_sql << EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'flowgate') THEN CREATE ROLE flowgate; END IF;
END \$\$;
ALTER ROLE flowgate LOGIN CREATEDB PASSWORD '$pw';
SELECT 'CREATE DATABASE flowgate OWNER flowgate'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'flowgate')\gexec
EOF
}

# --- verbs ------------------------------------------------------------------------------------
print_env() {
  local pw port
  pw=$(cat "$D/password")
  port=$(server_port)
  {
    echo "export FLOWGATE_DATABASE_URL=postgres://flowgate:$pw@127.0.0.1:${port:-$PORT}/flowgate"
    echo "export FLOWGATE_PG_PORT=${port:-$PORT}"
  } >&3
}

do_start() {
  init
  start_server
  ensure_role
  say "ready: postgres://flowgate:***@127.0.0.1:$PORT/flowgate (PostgreSQL $("$BIN/postgres" --version | awk '{print $3}'), data $PGD, $((SECONDS - T0)) s)"
  print_env
}

is_up() { [ -f "$D/initialised" ] && find_bin && running && ready "$(server_port)"; }

case "${1:-}" in
  start)
    lock
    install
    check_user
    do_start
    ;;
  restart)
    # restart [SECONDS]: down for at least SECONDS (default 0) before it starts again, so a test
    # can see the outage.
    lock
    install
    check_user
    stop_server
    sleep "${2:-0}"
    do_start
    ;;
  stop)
    lock
    if [ -e "$D" ]; then
      check_user
      [ -f "$D/$MARK" ] || [ -z "$(ls -A "$D")" ] || die "$D is not a flowgate-pg state dir; not deleting it"
      if find_bin; then stop_server; fi
      # Children a killed postmaster left behind: the data dir goes, so they go too.
      pids=$(server_pids | xargs)
      # shellcheck disable=SC2086 # one word per PID
      [ -z "$pids" ] || { say "killing left-over postgres processes $pids"; kill -KILL $pids 2> /dev/null || true; }
      rm -rf -- "$D"
      say "stopped; deleted $D"
    else
      say "not running (no $D)"
    fi
    rm -f -- "$LOCK"
    ;;
  env)
    is_up || die "not running (state dir $D); run: $0 start"
    print_env
    ;;
  status)
    [ ! -e "$D" ] || [ -x "$D" ] || die "cannot look into $D: it belongs to $(stat -c %U -- "$D")"
    if is_up; then
      say "running: 127.0.0.1:$(server_port) (data $PGD)"
    else
      say "not running (state dir $D)"
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 start|stop|restart|env|status" >&2
    exit 2
    ;;
esac
