#!/usr/bin/env bash
# /metrics under load: the release build with N ICMP loopback targets, /metrics driven by wrk,
# and what the load does to the probe scheduler.
#
# Usage (as root, from anywhere):
#   bench/metrics_load.sh                        # N=1000, WINDOW=30, text and protobuf
#   N=100 WINDOW=10 FORMATS=text bench/metrics_load.sh   # quick run
#
# Environment:
#   N            ICMP targets, 1 s interval, on loopback 127.1.Y.Z     (default 1000)
#   WINDOW       seconds of each window: the idle one and each load one (default 30)
#   WARMUP       seconds after /metrics answers before the first window (default 10)
#   FORMATS      load runs, in order: "text" (no Accept header: Prometheus text 0.0.4) and/or
#                "protobuf" (Accept: application/vnd.google.protobuf;...;encoding=delimited)
#                (default "text protobuf")
#   THREADS, CONNECTIONS   wrk -t and -c (default 2 and 8)
#   QUIET_CORES, QUIET_MAX  before starting, wait up to QUIET_MAX s (180) until the machine uses
#                less than QUIET_CORES cores (0.3); 0 disables the wait
#   REGIONPROBE_ENV  extra environment for regionprobe (e.g. "TOKIO_WORKER_THREADS=1")
#   KEEP_WORK    1: keep the work directory
#
# One regionprobe process throughout. After the warm-up:
#   idle window   WINDOW s with nothing but the probes (and the script's own /metrics reads at
#                 its edges)
#   load windows  for each format, wrk -t THREADS -c CONNECTIONS -d WINDOW --latency on /metrics
# For every window: regionprobe_scheduler_lag_seconds p50/p99 from the bucket deltas between the
# snapshots at its edges (the classic buckets: 0.1, 0.4, 1.6, 6.4 ms, ...; quantiles are
# interpolated inside a bucket as histogram_quantile does), skipped ticks, regionprobe's CPU
# (cores, from /proc/PID/stat) and, for load windows, wrk's requests/s and p50/p99 latency and
# the CPU regionprobe spent per scrape (cores above the idle window's / scrapes per second).
# Goals, printed beside the figures: >= 500 scrapes/s, p99 < 50 ms, and lag p99 under load
# within 1 ms of the idle window's. wrk runs on the same 2 cores, so it takes CPU from
# regionprobe: the figures are for a saturated machine, the worst case. Raw figures:
# bench/out/metrics_load-<timestamp>.txt. Exit status 0 whether or not the goals are met.
# A benchmark, not a test: `cargo test` never runs it.

set -euo pipefail

BENCH=metrics_load
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
STOPPABLE=("$REGIONPROBE ")

N=${N:-1000}
WINDOW=${WINDOW:-30}
WARMUP=${WARMUP:-10}
FORMATS=${FORMATS:-"text protobuf"}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-8}
PROTOBUF_ACCEPT='application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited'

require_root "raw ICMP sockets (unless ping_group_range allows ping sockets) and apt-get"
[[ "$N" =~ ^[0-9]+$ && "$N" -ge 1 && "$N" -le 64000 ]] || die "N must be 1..64000 (got '$N')"
[[ "$WINDOW" =~ ^[0-9]+$ && "$WINDOW" -ge 5 ]] || die "WINDOW must be an integer >= 5 (got '$WINDOW')"
for f in $FORMATS; do [[ $f == text || $f == protobuf ]] || die "unknown format '$f' in FORMATS"; done
install_missing wrk:wrk
build_release
bench_workdir

HELPER="$WORK/helper.py"
cat >"$HELPER" <<'PY'
import json, re, sys
from lib import *

UNIT = {'us': 1e-3, 'ms': 1.0, 's': 1e3}

def wrk(path):
    """requests/s, p50/p99 latency (ms), requests, errors of `wrk --latency` output."""
    text = open(path).read()
    r = {'rps': float(re.search(r'Requests/sec:\s+([\d.]+)', text).group(1))}
    for q in ('50', '99'):
        m = re.search(r'^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$' % q, text, re.M)
        r['p%s_ms' % q] = float(m.group(1)) * UNIT[m.group(2)]
    r['requests'] = int(re.search(r'(\d+) requests in', text).group(1))
    m = re.search(r'Non-2xx or 3xx responses: (\d+)', text)
    r['non_2xx'] = int(m.group(1)) if m else 0
    m = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', text)
    r['socket_errors'] = sum(map(int, m.groups())) if m else 0
    return r

def window(a, w):
    m0, m1 = parse(w['m0']), parse(w['m1'])
    d = bucket_delta(m0, m1, 'regionprobe_scheduler_lag_seconds')
    wall = w['t1'] - w['t0']
    r = dict(name=w['name'], wall_s=round(wall, 3))
    r['lag_ticks'] = int(d[max(d)]) if d else 0
    for q in (0.5, 0.99):
        v = quantile(q, d)
        r['lag_p%g_ms' % (q * 100)] = None if v is None else 1000 * v
    r['lag_buckets_delta'] = {('%g' % le): int(c) for le, c in sorted(d.items())}
    r['skipped_ticks'] = int(delta(m0, m1, 'regionprobe_scheduler_skipped_ticks_total'))
    r['probes_per_s'] = delta(m0, m1, 'regionprobe_probes_total') / wall
    r['cores'] = cpu(w) / wall
    r['machine_cores'] = (w['busy1'] - w['busy0']) / a['clk_tck'] / wall
    if 'wrk' in w:
        r.update(wrk(w['wrk']))
        r['body_bytes'] = w['body_bytes']
    return r

def report(path):
    a = json.load(open(path))
    rows = [window(a, w) for w in a['windows']]
    print(json.dumps(dict(n=a['n'], rss_mib=a['rss_kib'] / 1024, quiet=a['quiet'], windows=rows)), file=sys.stderr)
    idle = rows[0]
    head = ['window', 'scrapes/s', 'p50 ms', 'p99 ms', 'body KiB', 'CPU ms/scrape', 'errors', 'lag p50 ms', 'lag p99 ms',
            'lag ticks', 'skipped', 'probes/s', 'regionprobe cores', 'machine cores']
    body = []
    for r in rows:
        load = 'rps' in r
        body.append([
            r['name'], '%.0f' % r['rps'] if load else '-', '%.2f' % r['p50_ms'] if load else '-',
            '%.2f' % r['p99_ms'] if load else '-', '%.1f' % (r['body_bytes'] / 1024) if load else '-',
            '%.2f' % (1000 * (r['cores'] - idle['cores']) / r['rps']) if load and r['rps'] else '-',
            str(r['non_2xx'] + r['socket_errors']) if load else '-',
            fmt(r['lag_p50_ms'], '.3f'), fmt(r['lag_p99_ms'], '.3f'), str(r['lag_ticks']), str(r['skipped_ticks']),
            '%.1f' % r['probes_per_s'], '%.3f' % r['cores'], '%.2f' % r['machine_cores'],
        ])
    print_table(head, body, left=(0,))
    print('regionprobe: N=%d ICMP targets at 1 s, RSS %.1f MiB at the end; before the start: %s'
          % (a['n'], a['rss_kib'] / 1024, a['quiet']))
    print()
    for r in rows[1:]:
        checks = [
            ('scrapes/s %.0f >= 500' % r['rps'], r['rps'] >= 500),
            ('p99 %.2f ms < 50 ms' % r['p99_ms'], r['p99_ms'] < 50),
        ]
        if r['lag_p99_ms'] is not None and idle['lag_p99_ms'] is not None:
            diff = r['lag_p99_ms'] - idle['lag_p99_ms']
            checks.append(('lag p99 %.3f ms vs %.3f ms idle: %+.3f ms, within 1 ms'
                           % (r['lag_p99_ms'], idle['lag_p99_ms'], diff), abs(diff) <= 1.0))
        else:
            checks.append(('lag p99 not measurable (no probes in a window)', False))
        for text, ok in checks:
            print('GOAL %s: %-4s %s' % (r['name'], 'PASS' if ok else 'MISS', text))
        print('GOAL %s: %s' % (r['name'], 'PASS' if all(ok for _, ok in checks) else 'MISS'))

if __name__ == '__main__':
    report(sys.argv[1])
PY

# snapshot NAME: /metrics to $WORK/NAME.txt, then CPU ticks (so the read is outside the window).
snapshot() {
    scrape "$PORT" "$WORK/$1.txt"
    SNAP_T=$(now); SNAP_TICKS=$(proc_ticks "$PID"); SNAP_BUSY=$(machine_busy_ticks)
}

# window_json NAME M0 T0 TICKS0 BUSY0 M1 T1 TICKS1 BUSY1 [WRK_OUT BODY_BYTES]
window_json() {
    local extra=""
    [[ $# -gt 9 ]] && extra=", \"wrk\": \"${10}\", \"body_bytes\": ${11}"
    printf '{"name": "%s", "m0": "%s", "t0": %s, "ticks0": [%s], "busy0": %s, "m1": "%s", "t1": %s, "ticks1": [%s], "busy1": %s, "clk_tck": %s%s}' \
        "$1" "$2" "$3" "${4/ /, }" "$5" "$6" "$7" "${8/ /, }" "$9" "$CLK_TCK" "$extra"
}

QUIET_NOTE="not checked"
wait_quiet
PORT=$(free_port)
regionprobe_icmp_config "$WORK/regionprobe.toml" "$N" "$PORT"
start_regionprobe "$WORK/regionprobe.toml" "$WORK"
PID=$STARTED_PID
STARTUP_TIMEOUT=60 wait_http "$PID" "http://127.0.0.1:$PORT/metrics" regionprobe "$WORK/stderr.log"
log "regionprobe pid $PID on port $PORT, $N ICMP targets; warm-up ${WARMUP}s, then windows of ${WINDOW}s: idle $FORMATS"
pause "$WARMUP"

{
    echo "# metrics_load $STAMP"
    host_line
    echo "regionprobe: $(regionprobe_version)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "N=$N WINDOW=$WINDOW WARMUP=$WARMUP THREADS=$THREADS CONNECTIONS=$CONNECTIONS FORMATS=\"$FORMATS\" REGIONPROBE_ENV=\"$REGIONPROBE_ENV\""
    echo "before the start: $QUIET_NOTE"
    echo "loadavg at start: $(cat /proc/loadavg)"
} >"$OUT"

windows=()
snapshot idle0
t0=$SNAP_T ticks0=$SNAP_TICKS busy0=$SNAP_BUSY
log "idle window"
pause "$WINDOW"
snapshot idle1
windows+=("$(window_json idle "$WORK/idle0.txt" "$t0" "$ticks0" "$busy0" "$WORK/idle1.txt" "$SNAP_T" "$SNAP_TICKS" "$SNAP_BUSY")")

for format in $FORMATS; do
    header=()
    [[ $format == protobuf ]] && header=(-H "Accept: $PROTOBUF_ACCEPT")
    bytes=$(curl -sf -o /dev/null -w '%{size_download}' "${header[@]}" "http://127.0.0.1:$PORT/metrics") ||
        die "/metrics ($format) failed"
    snapshot "$format-0"
    t0=$SNAP_T ticks0=$SNAP_TICKS busy0=$SNAP_BUSY
    log "load window: wrk -t$THREADS -c$CONNECTIONS -d${WINDOW}s, $format ($bytes bytes per response)"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WINDOW}s" --latency "${header[@]}" "http://127.0.0.1:$PORT/metrics" \
        >"$WORK/wrk-$format.txt" 2>&1 || die "wrk failed: $(tail -5 "$WORK/wrk-$format.txt")"
    snapshot "$format-1"
    windows+=("$(window_json "load $format" "$WORK/$format-0.txt" "$t0" "$ticks0" "$busy0" "$WORK/$format-1.txt" "$SNAP_T" "$SNAP_TICKS" "$SNAP_BUSY" "$WORK/wrk-$format.txt" "$bytes")")
    kill -0 "$PID" 2>/dev/null || die "regionprobe died under load"
done
RSS=$(status_kib "$PID" VmRSS)

{
    printf '{"n": %s, "clk_tck": %s, "rss_kib": %s, "quiet": "%s", "windows": [' "$N" "$CLK_TCK" "$RSS" "$QUIET_NOTE"
    (IFS=,; printf '%s' "${windows[*]}")
    printf ']}\n'
} >"$WORK/raw.json"

{
    echo "loadavg at end: $(cat /proc/loadavg)"
    for format in $FORMATS; do
        echo
        echo "## wrk $format"
        cat "$WORK/wrk-$format.txt"
    done
    echo
    echo "## raw figures"
} >>"$OUT"
TABLE=$(helper "$WORK/raw.json" 2>>"$OUT") || die "analysis failed"
{
    echo
    echo "## table"
    echo "$TABLE"
} >>"$OUT"
echo
echo "/metrics under load: regionprobe with $N ICMP targets at 1 s; wrk -t$THREADS -c$CONNECTIONS, windows of ${WINDOW} s"
echo "$TABLE"
echo
echo "raw figures: $OUT"
