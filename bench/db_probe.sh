#!/usr/bin/env bash
# Database probe benchmark: regionprobe's CPU per probe for each database kind (postgres,
# mysql, redis) against one local server of that kind, beside the HTTP probe's against a local
# HTTP server, all with the release build and the same N targets at 1 s.
#
# Usage (as root, from anywhere):
#   bench/db_probe.sh                      # N=50, DURATION=30
#   N=20 DURATION=15 bench/db_probe.sh     # quick run
#
# Environment:
#   N          targets per run, all on the one server                     (default 50)
#   DURATION   measured seconds per run                                    (default 30)
#   WARMUP     seconds between start and the measurement                   (default 5)
#   KINDS      runs, in order                  (default "http postgres mysql redis")
#   KEEPALIVE  true: one kept connection per target (only the queries)     (default false)
#   QUIET_CORES, QUIET_MAX  as bench/http_probe.sh: wait for a quiet machine before each run
#
# The setup: PostgreSQL 15 (initdb, scram-sha-256 over TCP), MariaDB (mariadb-install-db,
# mysql_native_password) and Redis (requirepass), each started here on 127.0.0.1 with its data
# in the work directory, and Python's http.server answering `/`. Each target reads with the
# default query (`SELECT 1`, `PING`) over a new connection per probe (the default) and a
# password from a file: what a failing-over client pays (TCP, startup, authentication, one
# round trip). Over DURATION seconds: regionprobe's utime+stime delta from /proc/PID/stat,
# divided by the probes it counted (regionprobe_probes_total); failures are counted too
# (every probe must succeed). The servers' CPU is not counted. Raw figures:
# bench/out/db_probe-<timestamp>.txt. A benchmark, not a test.

set -euo pipefail

BENCH=db_probe
PG_BIN=/usr/lib/postgresql/15/bin
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
STOPPABLE=("$REGIONPROBE " "$PG_BIN/postgres " "/usr/sbin/mariadbd " "/usr/bin/redis-server " "$PYTHON -m http.server ")

N=${N:-50}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-5}
KINDS=${KINDS:-"http postgres mysql redis"}
KEEPALIVE=${KEEPALIVE:-false}
PASSWORD="bench-$(date +%s)-pw"

require_root "PostgreSQL runs as the postgres user; MariaDB with --user=root"
install_missing "$PG_BIN/initdb:postgresql-15" "/usr/sbin/mariadbd:mariadb-server" "/usr/bin/redis-server:redis-server"
build_release
bench_workdir
chmod 755 "$WORK"
printf '%s' "$PASSWORD" >"$WORK/password"

start_postgres() {
    local dir="$WORK/pg" port
    mkdir -p "$dir" && chown postgres: "$dir" && chmod 700 "$dir"
    printf '%s' "$PASSWORD" >"$dir/pw" && chown postgres: "$dir/pw"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 --pwfile="$dir/pw" --no-sync >"$dir/initdb.log" 2>&1 ||
        die "initdb failed: $(tail -3 "$dir/initdb.log")"
    port=$(free_port)
    runuser -u postgres -- "$PG_BIN/postgres" -D "$dir/data" -p "$port" -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories="$dir" -c max_connections=200 >"$dir/log" 2>&1 &
    sleep 0.5
    track_pid "$(pgrep -f "^$PG_BIN/postgres -D $dir/data" | head -1)"
    for _ in $(seq 100); do grep -q "ready to accept" "$dir/log" && break; sleep 0.1; done
    PG_PORT=$port
}

start_mariadb() {
    local dir="$WORK/mariadb" port
    mkdir -p "$dir"
    mariadb-install-db --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
        --skip-test-db --user=root >"$dir/install.log" 2>&1 || die "mariadb-install-db failed"
    port=$(free_port)
    /usr/sbin/mariadbd --no-defaults --datadir="$dir/data" --socket="$dir/sock" --pid-file="$dir/pid" \
        --user=root --bind-address=127.0.0.1 --skip-name-resolve --port="$port" --max-connections=500 \
        >"$dir/log" 2>&1 &
    track_pid $!
    for _ in $(seq 200); do grep -q "ready for connections" "$dir/log" && break; sleep 0.1; done
    mariadb --no-defaults --socket="$dir/sock" -uroot -e \
        "CREATE USER 'probe'@'%' IDENTIFIED BY '$PASSWORD'; GRANT SELECT ON *.* TO 'probe'@'%';"
    MY_PORT=$port
}

start_redis() {
    local port
    port=$(free_port)
    /usr/bin/redis-server --bind 127.0.0.1 --port "$port" --requirepass "$PASSWORD" --save "" \
        --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    track_pid $!
    for _ in $(seq 100); do grep -q "Ready to accept" "$WORK/redis.log" && break; sleep 0.1; done
    REDIS_PORT=$port
}

start_http() {
    local port
    port=$(free_port)
    (cd "$WORK" && exec "$PYTHON" -m http.server "$port" --bind 127.0.0.1 >"$WORK/http.log" 2>&1) &
    track_pid $!
    HTTP_PORT=$port
    sleep 0.5
}

# config FILE KIND PORT
config() {
    local file=$1 kind=$2 port=$3 listen=$4 i keys
    case $kind in
    http) keys="url = \"http://127.0.0.1:$port/\"" ;;
    postgres) keys="address = \"127.0.0.1:$port\"
user = \"postgres\"
password_file = \"$WORK/password\"
keepalive = $KEEPALIVE" ;;
    mysql) keys="address = \"127.0.0.1:$port\"
user = \"probe\"
password_file = \"$WORK/password\"
keepalive = $KEEPALIVE" ;;
    redis) keys="address = \"127.0.0.1:$port\"
password_file = \"$WORK/password\"
keepalive = $KEEPALIVE" ;;
    esac
    {
        printf '[exporter]\nregion = "bench"\nlisten = "127.0.0.1:%s"\n[defaults]\ninterval = "1s"\ntimeout = "1s"\n' "$listen"
        for ((i = 0; i < N; i++)); do
            printf '\n[[target]]\nname = "t%04d"\nregion = "bench"\nprobe = "%s"\n%s\n' "$i" "$kind" "$keys"
        done
    } >"$file"
}

total() { # FILE NAME: the sum of a counter's samples
    awk -v n="$2" '$1 ~ "^"n"[{ ]" || $1 == n { s += $NF } END { printf "%d", s }' "$1"
}

log "starting the servers"
start_http
start_postgres
start_mariadb
start_redis
HZ=$(getconf CLK_TCK)
{
    echo "# $BENCH $(regionprobe_version)"
    host_line
    echo "N=$N DURATION=$DURATION WARMUP=$WARMUP KEEPALIVE=$KEEPALIVE"
    echo "## table"
    printf '| probe | CPU us/probe | cores | probes/s | failures | RSS MiB |\n|---|---:|---:|---:|---:|---:|\n'
} >"$OUT"
for kind in $KINDS; do
    case $kind in
    http) port=$HTTP_PORT ;; postgres) port=$PG_PORT ;; mysql) port=$MY_PORT ;; redis) port=$REDIS_PORT ;;
    *) die "unknown kind $kind" ;;
    esac
    wait_quiet
    listen=$(free_port)
    dir="$WORK/$kind" && mkdir -p "$dir"
    config "$dir/exporter.toml" "$kind" "$port" "$listen"
    start_regionprobe "$dir/exporter.toml" "$dir"
    pid=$STARTED_PID
    wait_http "$pid" "http://127.0.0.1:$listen/-/healthy" regionprobe "$dir/stderr.log"
    pause "$WARMUP"
    scrape "$listen" "$dir/m0"
    t0=$(proc_ticks "$pid")
    start=$(now)
    pause "$DURATION"
    t1=$(proc_ticks "$pid")
    end=$(now)
    scrape "$listen" "$dir/m1"
    rss=$(status_kib "$pid" VmRSS)
    stop_pid "$pid"
    probes=$(($(total "$dir/m1" regionprobe_probes_total) - $(total "$dir/m0" regionprobe_probes_total)))
    failures=$(($(total "$dir/m1" regionprobe_probe_failures_total) - $(total "$dir/m0" regionprobe_probe_failures_total)))
    ticks=$(((${t1% *} + ${t1#* }) - (${t0% *} + ${t0#* })))
    python3 - "$kind" "$ticks" "$HZ" "$probes" "$failures" "$start" "$end" "$rss" >>"$OUT" <<'PY'
import sys
kind, ticks, hz, probes, failures, start, end, rss = sys.argv[1:]
secs = float(end) - float(start)
cpu = int(ticks) / int(hz)
probes = int(probes)
print(f"| {kind} | {cpu / max(probes, 1) * 1e6:.1f} | {cpu / secs:.4f} | {probes / secs:.1f} | {failures} | {int(rss) / 1024:.1f} |")
PY
    log "$(tail -1 "$OUT")"
done
cat "$OUT"
