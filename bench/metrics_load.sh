#!/usr/bin/env bash
# /metrics under load: the release build with N ICMP loopback targets, /metrics driven by wrk,
# and what the load does to the probe scheduler.
#
# Usage (as root, from anywhere):
#   bench/metrics_load.sh                        # N=1000, WINDOW=30, gzip, text and protobuf
#   N=100 WINDOW=10 FORMATS=gzip bench/metrics_load.sh   # quick run
#
# Environment:
#   N            ICMP targets, 1 s interval, on loopback 127.1.Y.Z     (default 1000)
#   WINDOW       seconds of each window: the idle one and each load one (default 30)
#   WARMUP       seconds after /metrics answers before the first window (default 10)
#   FORMATS      load runs, in order (default "gzip text protobuf"):
#                  gzip      the headers Prometheus 2.42 sends: Accept: application/openmetrics-
#                            text;version=1.0.0,...;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1
#                            and Accept-Encoding: gzip (OpenMetrics text, gzip-compressed): what
#                            a real scraper gets
#                  text      no headers: Prometheus text 0.0.4, uncompressed (3.4 MB at N=1000)
#                  protobuf  Accept: application/vnd.google.protobuf;...;encoding=delimited,
#                            uncompressed
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
# At each window's edges the script reads /metrics twice: text (probes, skipped ticks) and
# protobuf (regionprobe_scheduler_lag_seconds, classic and native buckets, decoded by
# bench/lib.py). regionprobe shares a rendering among the scrapes of the same format within
# 500 ms of its start, so the end reads wait SETTLE s (0.6) after wrk stops: a rendering begun
# during the load would otherwise be read, and the window's last half-second lost.
# For every window: the lag p50/p99 from the native buckets' deltas (schema 3: bucket bounds
# 9% apart; quantiles interpolated exponentially inside the bucket, as Prometheus does for
# native histograms), the same from the classic buckets (0.1, 0.4, 1.6, 6.4 ms, ...; linear
# inside a bucket, as histogram_quantile does; too coarse for the 1 ms goal, kept for
# contrast), a cross-check of the two (same total; each classic bucket count within what the
# native buckets allow), skipped ticks, regionprobe's CPU (cores, from /proc/PID/stat) and, for
# load windows, wrk's requests/s and p50/p99 latency, the body size as sent, and the CPU
# regionprobe spent per scrape (its CPU in the window minus the idle window's rate times the
# window's length, divided by wrk's requests).
# Goals, printed beside the figures: >= 500 scrapes/s, p99 < 50 ms, and lag p99 (native) under
# load within 1 ms of the idle window's. wrk runs on the same 2 cores, so it takes CPU from
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
FORMATS=${FORMATS:-"gzip text protobuf"}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-8}
SETTLE=${SETTLE:-0.6}
PROTOBUF_ACCEPT='application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited'
PROMETHEUS_ACCEPT='application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1'

require_root "raw ICMP sockets (unless ping_group_range allows ping sockets) and apt-get"
[[ "$N" =~ ^[0-9]+$ && "$N" -ge 1 && "$N" -le 64000 ]] || die "N must be 1..64000 (got '$N')"
[[ "$WINDOW" =~ ^[0-9]+$ && "$WINDOW" -ge 5 ]] || die "WINDOW must be an integer >= 5 (got '$WINDOW')"
for f in $FORMATS; do [[ $f == gzip || $f == text || $f == protobuf ]] || die "unknown format '$f' in FORMATS (gzip, text, protobuf)"; done
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

LAG = 'regionprobe_scheduler_lag_seconds'

def window(a, w):
    m0, m1 = parse(w['m0']), parse(w['m1'])
    p0, p1 = parse_protobuf(w['p0']), parse_protobuf(w['p1'])
    wall = w['t1'] - w['t0']
    r = dict(name=w['name'], wall_s=round(wall, 3))
    h = native_delta(p0, p1, LAG)
    r['lag_ticks'] = h['count']
    r['lag_schema'] = h['schema']
    for q in (0.5, 0.99):
        v = native_quantile(q, h)
        r['lag_p%g_ms' % (q * 100)] = None if v is None else 1000 * v
        v = quantile(q, h['classic'])
        r['lag_classic_p%g_ms' % (q * 100)] = None if v is None else 1000 * v
    r['lag_native_delta'] = {'%.6g' % native_upper(i, h['schema']): c for i, c in h['positive'].items()}
    r['lag_native_zero'] = h['zero_count']
    r['lag_classic_delta'] = {('%g' % le): int(c) for le, c in sorted(h['classic'].items())}
    # The decoder against the classic buckets: in each snapshot and in the window's delta.
    problems = []
    for label, d in (('start', native_delta([], p0, LAG)), ('end', native_delta([], p1, LAG)), ('delta', h)):
        problems += ['%s: %s' % (label, p) for p in native_check(d)]
    r['lag_check'] = problems or 'ok'
    r['skipped_ticks'] = int(delta(m0, m1, 'regionprobe_scheduler_skipped_ticks_total'))
    r['probes_per_s'] = delta(m0, m1, 'regionprobe_probes_total') / wall
    r['cpu_s'] = cpu(w)
    r['cores'] = r['cpu_s'] / wall
    r['machine_cores'] = (w['busy1'] - w['busy0']) / a['clk_tck'] / wall
    if 'wrk' in w:
        r.update(wrk(w['wrk']))
        for k in ('body_bytes', 'content_type', 'content_encoding'):
            r[k] = w[k]
    return r

def report(path):
    a = json.load(open(path))
    rows = [window(a, w) for w in a['windows']]
    idle = rows[0]
    for r in rows[1:]:
        # CPU per scrape: the window's CPU above the idle rate, per request wrk completed.
        r['cpu_ms_per_scrape'] = 1000 * (r['cpu_s'] - idle['cores'] * r['wall_s']) / r['requests'] if r['requests'] else None
    print(json.dumps(dict(n=a['n'], rss_kib=a['rss_kib'], quiet=a['quiet'], windows=rows)), file=sys.stderr)
    head = ['window', 'scrapes/s', 'p50 ms', 'p99 ms', 'body KiB', 'CPU ms/scrape', 'errors',
            'lag p50 ms', 'lag p99 ms', 'classic p50', 'classic p99',
            'lag ticks', 'skipped', 'probes/s', 'regionprobe cores', 'machine cores']
    body = []
    for r in rows:
        load = 'rps' in r
        body.append([
            r['name'], '%.0f' % r['rps'] if load else '-', '%.2f' % r['p50_ms'] if load else '-',
            '%.2f' % r['p99_ms'] if load else '-', '%.1f' % (r['body_bytes'] / 1024) if load else '-',
            fmt(r.get('cpu_ms_per_scrape'), '.3f'),
            str(r['non_2xx'] + r['socket_errors']) if load else '-',
            fmt(r['lag_p50_ms'], '.3f'), fmt(r['lag_p99_ms'], '.3f'),
            fmt(r['lag_classic_p50_ms'], '.3f'), fmt(r['lag_classic_p99_ms'], '.3f'),
            str(r['lag_ticks']), str(r['skipped_ticks']),
            '%.1f' % r['probes_per_s'], '%.3f' % r['cores'], '%.2f' % r['machine_cores'],
        ])
    print_table(head, body, left=(0,))
    print('lag p50/p99: native buckets (schema %s), exponential interpolation inside a bucket; classic p50/p99: '
          'classic buckets (0.1, 0.4, 1.6, 6.4, 25.6 ms, ...), linear interpolation, for contrast'
          % '/'.join(sorted(set(str(r['lag_schema']) for r in rows))))
    for r in rows[1:]:
        print('%s: %s%s, %d bytes per response' % (r['name'], r['content_type'],
              ' (' + r['content_encoding'] + ')' if r['content_encoding'] else '', r['body_bytes']))
    bad = ['%s: %s' % (r['name'], '; '.join(r['lag_check'])) for r in rows if r['lag_check'] != 'ok']
    print('native vs classic buckets: ' + ('agree in every window (same totals; every classic count within the native bounds)'
                                           if not bad else 'DISAGREE: ' + ' | '.join(bad)))
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

# snapshot NAME: /metrics as text to $WORK/NAME.txt and as protobuf to $WORK/NAME.pb, then
# CPU ticks (so the reads are outside the window).
snapshot() {
    scrape "$PORT" "$WORK/$1.txt"
    scrape "$PORT" "$WORK/$1.pb" -H "Accept: $PROTOBUF_ACCEPT"
    SNAP_T=$(now); SNAP_TICKS=$(proc_ticks "$PID"); SNAP_BUSY=$(machine_busy_ticks)
}

# window_json NAME SNAP0 T0 TICKS0 BUSY0 SNAP1 T1 TICKS1 BUSY1 [EXTRA_JSON]
window_json() {
    printf '{"name": "%s", "m0": "%s.txt", "p0": "%s.pb", "t0": %s, "ticks0": [%s], "busy0": %s, "m1": "%s.txt", "p1": "%s.pb", "t1": %s, "ticks1": [%s], "busy1": %s, "clk_tck": %s%s}' \
        "$1" "$2" "$2" "$3" "${4/ /, }" "$5" "$6" "$6" "$7" "${8/ /, }" "$9" "$CLK_TCK" "${10:-}"
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
    echo "N=$N WINDOW=$WINDOW WARMUP=$WARMUP SETTLE=$SETTLE THREADS=$THREADS CONNECTIONS=$CONNECTIONS FORMATS=\"$FORMATS\" REGIONPROBE_ENV=\"$REGIONPROBE_ENV\""
    echo "before the start: $QUIET_NOTE"
    echo "loadavg at start: $(cat /proc/loadavg)"
} >"$OUT"

windows=()
snapshot idle0
t0=$SNAP_T ticks0=$SNAP_TICKS busy0=$SNAP_BUSY
log "idle window"
pause "$WINDOW"
snapshot idle1
windows+=("$(window_json idle "$WORK/idle0" "$t0" "$ticks0" "$busy0" "$WORK/idle1" "$SNAP_T" "$SNAP_TICKS" "$SNAP_BUSY")")

for format in $FORMATS; do
    header=()
    case $format in
        gzip) header=(-H "Accept: $PROMETHEUS_ACCEPT" -H "Accept-Encoding: gzip") ;;
        protobuf) header=(-H "Accept: $PROTOBUF_ACCEPT") ;;
    esac
    # One request as wrk will send it: the body's size as sent (compressed for gzip) and the
    # format the exporter chose.
    bytes=$(curl -sf -o /dev/null -D "$WORK/headers-$format.txt" -w '%{size_download}' "${header[@]}" \
        "http://127.0.0.1:$PORT/metrics") || die "/metrics ($format) failed"
    ctype=$(sed -n 's/^content-type: *//Ip' "$WORK/headers-$format.txt" | tr -d '\r')
    cenc=$(sed -n 's/^content-encoding: *//Ip' "$WORK/headers-$format.txt" | tr -d '\r')
    snapshot "$format-0"
    t0=$SNAP_T ticks0=$SNAP_TICKS busy0=$SNAP_BUSY
    log "load window: wrk -t$THREADS -c$CONNECTIONS -d${WINDOW}s, $format ($ctype${cenc:+, $cenc}, $bytes bytes per response)"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WINDOW}s" --latency "${header[@]}" "http://127.0.0.1:$PORT/metrics" \
        >"$WORK/wrk-$format.txt" 2>&1 || die "wrk failed: $(tail -5 "$WORK/wrk-$format.txt")"
    pause "$SETTLE" # past the 500 ms a rendering begun under load is shared for
    snapshot "$format-1"
    extra=$(printf ', "wrk": "%s", "body_bytes": %s, "content_type": "%s", "content_encoding": "%s"' \
        "$WORK/wrk-$format.txt" "$bytes" "$ctype" "$cenc")
    windows+=("$(window_json "load $format" "$WORK/$format-0" "$t0" "$ticks0" "$busy0" "$WORK/$format-1" "$SNAP_T" "$SNAP_TICKS" "$SNAP_BUSY" "$extra")")
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
