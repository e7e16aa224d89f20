# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# Shell code shared by the benchmark scripts in bench/ (sourced, never run).
#
# A script sets BENCH (its name, for log lines and file names) and STOPPABLE (the command-line
# prefixes of the processes it may stop), then sources this file, which sets ROOT, REGIONPROBE,
# STAMP, OUT_DIR and installs the EXIT/INT/TERM traps. Its Python half, bench/lib.py, parses
# /metrics, computes histogram quantiles and prints tables.
#
# Every process a script starts goes through track_pid, is stopped when its run ends and again
# on exit, after a check of its command line (so a recycled pid is left alone).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$ROOT/bench"
REGIONPROBE="$ROOT/target/release/regionprobe"
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    REGIONPROBE="$CARGO_TARGET_DIR/release/regionprobe"
fi
# REGIONPROBE_BIN: run this binary instead of building one (A/B runs of two saved builds).
REGIONPROBE_BIN=${REGIONPROBE_BIN:-}
if [[ -n "$REGIONPROBE_BIN" ]]; then
    REGIONPROBE="$REGIONPROBE_BIN"
fi
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT_DIR="$BENCH_DIR/out"
OUT="$OUT_DIR/$BENCH-$STAMP.txt"
QUIET_CORES=${QUIET_CORES:-0.3}
QUIET_MAX=${QUIET_MAX:-180}
KEEP_WORK=${KEEP_WORK:-0}
REGIONPROBE_ENV=${REGIONPROBE_ENV:-}
WORK=""
RUN_PID=""
BUILD_PID=""
FAILED=0

log() { printf '[%s %s] %s\n' "$BENCH" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    [[ -n "${WORK:-}" && -d "$WORK" ]] && printf '%s\n' "$*" >"$WORK/failure"
    exit 1
}

now() { date +%s.%N; }

# An interruptible sleep: a trapped signal runs its handler at once instead of after the sleep.
pause() {
    sleep "$1" &
    wait $! || { kill $! 2>/dev/null; return 1; }
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

track_pid() { echo "$1" >>"$WORK/pids"; }

# Stops a process we started, if its command line starts with one of STOPPABLE.
stop_pid() {
    local pid=$1 cmd prefix ours=0
    kill -0 "$pid" 2>/dev/null || return 0
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 0
    for prefix in "${STOPPABLE[@]}"; do
        [[ "$cmd" == "$prefix"* ]] && ours=1
    done
    ((ours)) || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

stop_tracked() {
    local pid
    [[ -n "$WORK" && -f "$WORK/pids" ]] || return 0
    while read -r pid; do
        [[ " ${KEEP_PIDS:-} " == *" $pid "* ]] || stop_pid "$pid"
    done <"$WORK/pids"
}

bench_cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$BUILD_PID" ]]; then
        kill -TERM -- "-$BUILD_PID" 2>/dev/null || true
        wait "$BUILD_PID" 2>/dev/null || true
    fi
    if [[ -n "$RUN_PID" ]]; then
        kill -TERM "$RUN_PID" 2>/dev/null || true
        wait "$RUN_PID" 2>/dev/null || true
    fi
    KEEP_PIDS="" stop_tracked
    if ((status != 0)) && [[ -f "$OUT" ]] && ! grep -q '^## table' "$OUT"; then
        echo "## aborted with exit status $status" >>"$OUT"
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "$KEEP_WORK" == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$status"
}
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Creates the work directory (WORK) and the output directory.
bench_workdir() {
    mkdir -p "$OUT_DIR"
    WORK=$(mktemp -d "/tmp/$BENCH.XXXXXX")
    chmod 755 "$WORK" # nginx workers run as nobody
    : >"$WORK/pids"
    : >"$WORK/results.jsonl"
}

# require_root REASON; install_missing "command-or-path:package" ...
require_root() { [[ $EUID -eq 0 ]] || die "run as root: $1"; }
install_missing() {
    local spec what pkg missing=()
    for spec in curl:curl python3:python3 getconf:libc-bin "$@"; do
        what=${spec%%:*} pkg=${spec#*:}
        if [[ $what == /* ]]; then [[ -x $what ]] && continue; else command -v "$what" >/dev/null && continue; fi
        missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    for spec in "$@"; do
        what=${spec%%:*}
        if [[ $what == /* ]]; then [[ -x $what ]]; else command -v "$what" >/dev/null; fi ||
            die "$what is still missing after apt-get install ${spec#*:}"
    done
    CLK_TCK=$(getconf CLK_TCK)
}

# Warns about a packaged service of the same binary running in the background.
warn_running() {
    local bin others
    for bin in "$@"; do
        if others=$(pgrep -f "^$bin" 2>/dev/null); then
            log "WARNING: $(basename "$bin") already running (pid ${others//$'\n'/ }); it adds background load. Stop its service for clean numbers."
        fi
    done
}

# cargo build --release, in a process group of its own so that a signal stops rustc at once.
build_release() {
    if [[ -n "$REGIONPROBE_BIN" ]]; then
        [[ -x "$REGIONPROBE" ]] || die "REGIONPROBE_BIN=$REGIONPROBE is not an executable"
        log "using $REGIONPROBE (REGIONPROBE_BIN), not building"
        return
    fi
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup, stable >= 1.85)"
    log "building regionprobe (cargo build --release)"
    (cd "$ROOT" && exec setsid cargo build --release --quiet) &
    BUILD_PID=$!
    wait "$BUILD_PID" || die "cargo build --release failed"
    BUILD_PID=""
    [[ -x "$REGIONPROBE" ]] || die "$REGIONPROBE not found after the build"
}

regionprobe_version() {
    if [[ -n "$REGIONPROBE_BIN" ]]; then
        echo "$("$REGIONPROBE" --version) ($REGIONPROBE_BIN)"
        return
    fi
    echo "$("$REGIONPROBE" --version) at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (+ uncommitted changes)')"
}

host_line() {
    echo "host: $(uname -srm), $(nproc) CPUs ($(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)), Debian $(cat /etc/debian_version 2>/dev/null || echo '?')"
}

# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc.

# "utime stime" of a process, in clock ticks (fields 14 and 15; comm may contain spaces).
proc_ticks() {
    local stat f
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    # After "comm) ", field 3 (state) is index 0, so utime (14) is index 11, stime (15) index 12.
    echo "${f[11]} ${f[12]}"
}

# threads_cpu_ns PID NAME: CPU time in ns (schedstat, exact) of PID's threads named NAME.
threads_cpu_ns() {
    local task total=0 comm run
    for task in /proc/"$1"/task/*; do
        comm=$(<"$task/comm") 2>/dev/null || continue
        [[ $comm == "$2" ]] || continue
        read -r run _ <"$task/schedstat" 2>/dev/null || continue
        total=$((total + run))
    done
    echo "$total"
}

# "utime stime" summed over a process and its children (nginx's master and workers).
tree_ticks() {
    local u=0 s=0 pid t
    for pid in "$1" $(pgrep -P "$1"); do
        t=$(proc_ticks "$pid" 2>/dev/null) || continue
        u=$((u + ${t% *})); s=$((s + ${t#* }))
    done
    echo "$u $s"
}

# Busy clock ticks of the whole machine (all CPUs): everything but idle and iowait.
machine_busy_ticks() {
    local _cpu user nice system _idle _iowait irq softirq steal _rest
    read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# Waits until the machine is quiet (other builds finished): less than QUIET_CORES busy over
# 2 s, polling /proc/stat; warns and goes on after QUIET_MAX seconds. Call it before starting
# the processes to be measured. QUIET_CORES=0 disables the wait.
wait_quiet() {
    [[ "$QUIET_CORES" == 0 ]] && return 0
    local start=$SECONDS b0 b1 busy
    while :; do
        b0=$(machine_busy_ticks); pause 2; b1=$(machine_busy_ticks)
        busy=$(awk -v d=$((b1 - b0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz / 2 }')
        if awk -v b="$busy" -v q="$QUIET_CORES" 'BEGIN { exit !(b < q) }'; then
            QUIET_NOTE="quiet ($busy cores busy) after $((SECONDS - start)) s"
            return 0
        fi
        if ((SECONDS - start >= QUIET_MAX)); then
            log "WARNING: machine still busy after ${QUIET_MAX} s ($busy cores used by others); measuring anyway"
            QUIET_NOTE="NOT quiet: $busy cores busy after ${QUIET_MAX} s"
            return 0
        fi
        log "machine busy ($busy cores used by others); waiting for it to settle"
        pause 8
    done
}

# ---------------------------------------------------------------------------------------------
# Processes and HTTP.

# wait_http PID URL WHAT STDERR_LOG: until URL answers 2xx (TIMEOUT s, default STARTUP_TIMEOUT).
wait_http() {
    local pid=$1 url=$2 what=$3 log=$4
    local deadline=$((SECONDS + ${STARTUP_TIMEOUT:-120}))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "$what exited during start-up; stderr: $(tail -5 "$log" 2>/dev/null)"
        curl -sf -o /dev/null --max-time 2 "$url" && return 0
        sleep 0.1
    done
    die "$what did not answer on $url within ${STARTUP_TIMEOUT:-120} s"
}

# scrape PORT FILE [CURL_ARGS...]: /metrics of 127.0.0.1:PORT to FILE (e.g. -H "Accept: ...").
scrape() { curl -sf --max-time 120 -o "$2" "${@:3}" "http://127.0.0.1:$1/metrics" || die "scrape of port $1 failed"; }

# The i-th (0-based) loopback address 127.1.Y.Z, Z in 1..250 (all of 127/8 answers ICMP).
loopback_ip() { echo "127.1.$(($1 / 250)).$(($1 % 250 + 1))"; }

# regionprobe_icmp_config FILE N PORT: N ICMP targets on loopback_ip at 1 s.
regionprobe_icmp_config() {
    local file=$1 n=$2 port=$3 i
    {
        printf '[exporter]\nregion = "bench"\nlisten = "127.0.0.1:%s"\n' "$port"
        # Past the default ceiling (20,000 probes/s) the file would be refused: the benchmark
        # measures what happens beyond it on purpose.
        ((n > 20000)) && printf 'max_probes_per_second = %s\n' "$((n + 1))"
        printf '\n'
        printf '[defaults]\ninterval = "1s"\ntimeout = "1s"\n'
        for ((i = 0; i < n; i++)); do
            printf '\n[[target]]\nname = "t%05d"\nregion = "bench"\nprobe = "icmp"\nhost = "%s"\n' \
                "$i" "$(loopback_ip "$i")"
        done
    } >"$file"
}

# start_regionprobe CONFIG DIR: checks the config and starts the release binary; sets STARTED_PID.
start_regionprobe() {
    local config=$1 dir=$2
    "$REGIONPROBE" --config "$config" check-config >"$dir/check-config.txt" 2>&1 ||
        die "regionprobe rejects the generated config: $(cat "$dir/check-config.txt")"
    # shellcheck disable=SC2086  # REGIONPROBE_ENV is a list of NAME=value words
    env ${REGIONPROBE_ENV:-} "$REGIONPROBE" --config "$config" --log.level warn \
        >"$dir/stdout.log" 2>"$dir/stderr.log" &
    STARTED_PID=$!
    track_pid "$STARTED_PID"
}

# ---------------------------------------------------------------------------------------------
# Runs: run_isolated LABEL N calls the script's run_one LABEL N in a background subshell (so a
# signal is handled at once); a failure (die) ends only that run, records it in
# $WORK/results.jsonl as {"prober", "n", "failed"} and sets FAILED; the others still run.
# Processes listed in KEEP_PIDS (e.g. a server shared by all runs) survive the run.
run_isolated() {
    local prober=$1 n=$2 status
    rm -f "$WORK/failure"
    set +e
    (
        set -e
        trap 'exit 143' TERM
        trap 'stop_tracked; kill $(jobs -p) 2>/dev/null || true' EXIT
        run_one "$prober" "$n"
    ) &
    RUN_PID=$!
    wait "$RUN_PID"
    status=$?
    RUN_PID=""
    set -e
    ((status == 0)) && return 0
    local reason="exited with status $status"
    [[ -s "$WORK/failure" ]] && reason=$(<"$WORK/failure")
    python3 -c 'import json, sys; print(json.dumps(dict(prober=sys.argv[1], n=int(sys.argv[2]), failed=sys.argv[3])))' \
        "$prober" "$n" "$reason" >>"$WORK/results.jsonl"
    FAILED=1
}

# Runs the script's Python helper (a heredoc saved as $WORK/helper.py) with bench/lib.py importable.
helper() { PYTHONPATH="$BENCH_DIR" python3 "$WORK/helper.py" "$@"; }
