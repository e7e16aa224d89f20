#!/usr/bin/env bash
# ICMP scale benchmark: regionprobe against Debian's prometheus-smokeping-prober, side by side.
#
# Usage (as root, from anywhere):
#   bench/icmp_scale.sh                              # N_LIST="1000 10000 50000", DURATION=60
#   QUIET_CORES=0 DURATION=20 bench/icmp_scale.sh    # quick run on a loaded machine (issue 15)
#   DURATION=20 bench/icmp_scale.sh                  # quick run
#   N_LIST="100" DURATION=15 bench/icmp_scale.sh     # debug run
#
# Environment:
#   N_LIST     target counts to run, space separated          (default "1000 10000 50000")
#   SMOKEPING_MAX_N  smokeping_prober runs only at N up to this (default 1000: past it, it
#              takes both cores and its start alone takes minutes)
#   SHRINK_TO  regionprobe only: after the measurement, reload down to the first SHRINK_TO
#              targets, wait SHRINK_WAIT s (default 30), read RSS; then start a fresh
#              regionprobe with those targets and read its RSS after as long (default 100;
#              0 skips)
#   DURATION   measured seconds per run                        (default 60)
#   WARMUP     seconds between "/metrics answers" and the start of the measurement (default 5)
#   SCRAPES    /metrics requests timed at the end of each run  (default 10)
#   PROBERS    which probers to run, in order                  (default "regionprobe smokeping_prober")
#   QUIET_CORES  before each run, wait (up to QUIET_MAX s, default 180) until the rest of the
#              machine uses less than this many cores (default 0.3); 0 disables the wait
#   REGIONPROBE_ENV  extra environment for regionprobe only, for A/B runs
#              (e.g. REGIONPROBE_ENV="TOKIO_WORKER_THREADS=1")
#   REGIONPROBE_BIN  run this regionprobe binary instead of building one (A/B runs of two
#              saved builds, e.g. main's and a branch's, back to back)
#   STARTUP_TIMEOUT  seconds a prober may take to answer /metrics (default 300; smokeping_prober
#              only listens once every pinger started, about a minute at N=1000 on 2 cores)
#   KEEP_WORK  1: keep the work directory (configs, logs, /metrics snapshots)
#
# For every N, each prober runs ALONE (never concurrently) against the same N loopback
# addresses 127.1.Y.Z (all of 127.0.0.0/8 answers ICMP on Linux), ICMP, 1 s interval. After a
# warm-up, the script measures over DURATION seconds:
#   cores      (utime+stime delta from /proc/PID/stat) / CLK_TCK / wall time
#   RSS        VmRSS at the end of the run, MiB
#   probes/s   counter deltas from the prober's own /metrics (regionprobe_probes_total,
#              smokeping_requests_total) / wall time, against the expected N per second
#   success    responses (the latency histograms' _count) / probes
#   scrape     median time of SCRAPES `curl /metrics`, and the body size; for regionprobe also
#              the gzip body's size and the CPU of one fresh rendering (the CPU time of the
#              threads named http, which render /metrics, around one gzip scrape made after the
#              shared rendering expired; the probes' threads are not counted)
#   shrink     regionprobe only: RSS after a reload down to SHRINK_TO targets, and of a fresh
#              start with them (goal: within 1.5x)
#   lag p99    regionprobe only: from regionprobe_scheduler_lag_seconds bucket deltas
#   skipped    regionprobe only: regionprobe_scheduler_skipped_ticks_total delta
# and prints one table, plus issue 15's goal lines for regionprobe: N=1,000 under 0.02 cores
# and 40 MiB, N=10,000 under 0.15 cores and 64 MiB, every probe on time, and one rendering at
# N=10,000 under 100 ms of CPU. The raw figures go to bench/out/icmp_scale-<timestamp>.txt.
# Exit status: 0 whether or not the goal is met; non-zero only if something failed to run (the
# build, or a prober that did not start or died: its row says FAILED and the others still run).
#
# A benchmark, not a test: it never runs under `cargo test`. Each run waits for the machine to
# be quiet first (QUIET_CORES); CPU used by other processes during a measured window is kept as
# other_load_cores in the raw file, and the table flags runs where it was high.

set -euo pipefail

BENCH=icmp_scale
SMOKEPING=/usr/bin/prometheus-smokeping-prober
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
STOPPABLE=("$REGIONPROBE " "$SMOKEPING ")

N_LIST=${N_LIST:-"1000 10000 50000"}
SMOKEPING_MAX_N=${SMOKEPING_MAX_N:-1000}
SHRINK_TO=${SHRINK_TO:-100}
SHRINK_WAIT=${SHRINK_WAIT:-30}
DURATION=${DURATION:-60}
WARMUP=${WARMUP:-5}
SCRAPES=${SCRAPES:-10}
PROBERS=${PROBERS:-"regionprobe smokeping_prober"}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-300}

# Issue 15's goals, "N:cores:RSS MiB" for every N that ran, and the CPU of one /metrics
# rendering at RENDER_GOAL_N.
GOALS="1000:0.02:40 10000:0.15:64"
RENDER_GOAL_N=10000
RENDER_GOAL_MS=100

require_root "smokeping_prober needs raw ICMP sockets, and missing packages are installed with apt-get"
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 5 ]] || die "DURATION must be an integer >= 5 (got '$DURATION')"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be an integer (got '$WARMUP')"
[[ "$SCRAPES" =~ ^[0-9]+$ && "$SCRAPES" -ge 1 ]] || die "SCRAPES must be a positive integer"
for n in $N_LIST; do
    [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 64000 ]] || die "N_LIST entries must be 1..64000 (got '$n')"
done
for p in $PROBERS; do
    [[ "$p" == regionprobe || "$p" == smokeping_prober ]] || die "unknown prober '$p' in PROBERS"
done
install_missing "$SMOKEPING:prometheus-smokeping-prober"
# A packaged smokeping_prober service would ping in the background and, with its raw socket,
# receive a copy of every ICMP packet of the benchmark.
warn_running "$SMOKEPING"
build_release
bench_workdir
# Hundreds of raw sockets (smokeping_prober opens one per host) need more than 1024 fds.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# The analysis helper: parses /metrics snapshots, computes rates and histogram quantiles, and
# prints the final table. Results travel as one JSON object per line in $WORK/results.jsonl.
HELPER="$WORK/helper.py"
cat >"$HELPER" <<'PY'
import json, sys
from collections import defaultdict
from lib import *

def series_count(samples, name):
    return sum(1 for n, _, _ in samples if n == name)

def analyze(a):
    m0, m1 = parse(a['m0']), parse(a['m1'])
    wall_metrics = (a['t_m1a'] + a['t_m1b']) / 2 - (a['t_m0a'] + a['t_m0b']) / 2
    wall_cpu = a['t_c1'] - a['t_c0']
    n = a['n']
    r = dict(prober=a['prober'], n=n, duration=a['duration'])
    r['startup_s'] = round(a['t_ready'] - a['t_start'], 3)
    r['quiet'] = a['quiet']
    r['wall_s'] = round(wall_metrics, 3)
    r['window_scrape_s'] = [round(a['t_m0b'] - a['t_m0a'], 3), round(a['t_m1b'] - a['t_m1a'], 3)]
    hz = a['clk_tck']
    r['user_s'] = (a['ticks1'][0] - a['ticks0'][0]) / hz
    r['system_s'] = (a['ticks1'][1] - a['ticks0'][1]) / hz
    r['cpu_s'] = r['user_s'] + r['system_s']
    r['cores'] = r['cpu_s'] / wall_cpu
    r['user_cores'] = r['user_s'] / wall_cpu
    r['system_cores'] = r['system_s'] / wall_cpu
    sys_busy = (a['sys_busy1'] - a['sys_busy0']) / a['clk_tck'] / wall_cpu
    r['machine_busy_cores'] = sys_busy
    r['other_load_cores'] = max(0.0, sys_busy - r['cores'])
    r['ctx_switches_per_s'] = (a['ctx1'] - a['ctx0']) / wall_cpu
    if a['prober'] == 'regionprobe' and a.get('env'):
        r['env'] = a['env']
    r['rss_mib'] = a['rss_kib'] / 1024
    r['hwm_mib'] = a['hwm_kib'] / 1024
    r['threads'] = a['threads']
    r['fds'] = a['fds']
    times = sorted(a['scrape_times'])
    k = len(times)
    r['scrape_ms_median'] = 1000 * (times[k // 2] if k % 2 else (times[k // 2 - 1] + times[k // 2]) / 2)
    r['scrape_ms_max'] = 1000 * times[-1]
    r['scrape_bytes'] = a['scrape_bytes']
    r['gzip_bytes'] = a.get('gzip_bytes', 0)
    r['render_cpu_ms'] = a.get('render_ns', 0) / 1e6
    r['shrink_rss_mib'] = a.get('shrink_rss_kib', 0) / 1024
    r['fresh_rss_mib'] = a.get('fresh_rss_kib', 0) / 1024
    r['shrink_to'] = a.get('shrink_to', 0)
    if a['prober'] == 'regionprobe':
        probes = 'regionprobe_probes_total'
        ok = 'regionprobe_probe_duration_seconds_count'
        lat_sum = 'regionprobe_probe_duration_seconds_sum'
        r['series_targets'] = series_count(m1, probes)
        fails = defaultdict(float)
        for name, l, v in m1:
            if name == 'regionprobe_probe_failures_total':
                fails[l.get('reason', '?')] += v
        for name, l, v in m0:
            if name == 'regionprobe_probe_failures_total':
                fails[l.get('reason', '?')] -= v
        r['failures'] = {k: int(v) for k, v in fails.items() if v}
        d = bucket_delta(m0, m1, 'regionprobe_scheduler_lag_seconds')
        r['lag_ticks'] = int(d[max(d)]) if d else 0
        for q in (0.5, 0.99, 0.999):
            v = quantile(q, d)
            r['lag_p%g_ms' % (q * 100)] = None if v is None else v * 1000
        r['lag_buckets_delta'] = {('%g' % le): int(c) for le, c in sorted(d.items())}
        r['skipped_ticks'] = int(total(m1, 'regionprobe_scheduler_skipped_ticks_total')
                                 - total(m0, 'regionprobe_scheduler_skipped_ticks_total'))
        r['skipped_ticks_since_start'] = int(total(m1, 'regionprobe_scheduler_skipped_ticks_total'))
        r['unmatched_replies'] = int(total(m1, 'regionprobe_icmp_unmatched_replies_total')
                                     - total(m0, 'regionprobe_icmp_unmatched_replies_total'))
        r['icmp_socket'] = ','.join(sorted('v%s:%s' % (l.get('ip_version'), l.get('kind'))
                                           for name, l, v in m1 if name == 'regionprobe_icmp_socket_info'))
    else:
        probes = 'smokeping_requests_total'
        ok = 'smokeping_response_duration_seconds_count'
        lat_sum = 'smokeping_response_duration_seconds_sum'
        r['series_targets'] = series_count(m1, probes)
        r['duplicates'] = int(total(m1, 'smokeping_response_duplicates_total')
                              - total(m0, 'smokeping_response_duplicates_total'))
    dp = total(m1, probes) - total(m0, probes)
    dok = total(m1, ok) - total(m0, ok)
    dsum = total(m1, lat_sum) - total(m0, lat_sum)
    r['probes'] = int(dp)
    r['responses'] = int(dok)
    r['probes_per_s'] = dp / wall_metrics
    r['expected_per_s'] = float(n)
    r['expected_probes_in_window'] = n * wall_metrics
    r['expected_probes_nominal'] = n * a['duration']
    r['achieved_ratio'] = dp / (n * wall_metrics)
    r['success_ratio'] = (dok / dp) if dp else None
    r['mean_rtt_us'] = (1e6 * dsum / dok) if dok else None
    if a['prober'] == 'regionprobe':
        # On time: no tick skipped and (practically) every expected probe happened.
        r['on_time'] = r['skipped_ticks'] == 0 and r['achieved_ratio'] >= 0.99
    return r

def table(results_path, goals, render_n, render_ms):
    all_rows, rows = results(results_path)
    head = ['N', 'prober', 'cores', 'RSS MiB', 'probes/s (expected)', 'achieved', 'success',
            'scrape ms', 'scrape KiB', 'gzip KiB', 'render CPU ms', 'lag p99 ms', 'skipped ticks',
            'RSS after shrink / fresh MiB']
    body = []
    for r in all_rows:
        if 'failed' in r:
            body.append([str(r['n']), r['prober'], 'FAILED'] + [''] * (len(head) - 3))
            continue
        rp = r['prober'] == 'regionprobe'
        body.append([
            str(r['n']), r['prober'] + (' [%s]' % r['env'] if r.get('env') else ''), '%.4f' % r['cores'], '%.1f' % r['rss_mib'],
            '%.1f (%d)' % (r['probes_per_s'], r['expected_per_s']),
            '%.1f%%' % (100 * r['achieved_ratio']),
            fmt(None if r['success_ratio'] is None else 100 * r['success_ratio'], '.2f') + '%',
            '%.2f' % r['scrape_ms_median'], '%.1f' % (r['scrape_bytes'] / 1024),
            '%.1f' % (r['gzip_bytes'] / 1024) if rp else 'n/a',
            '%.0f' % r['render_cpu_ms'] if rp else 'n/a',
            fmt(r.get('lag_p99_ms'), '.3f') if rp else 'n/a',
            str(r['skipped_ticks']) if rp else 'n/a',
            ('%.1f / %.1f (%.2fx, to %d)' % (r['shrink_rss_mib'], r['fresh_rss_mib'],
                                           r['shrink_rss_mib'] / r['fresh_rss_mib'], r['shrink_to'])
             if rp and r['fresh_rss_mib'] else 'n/a'),
        ])
    print_table(head, body)
    print_failures_and_noise(all_rows, rows)
    print()
    for goal in goals.split():
        goal_n, goal_cores, goal_rss = goal.split(':')
        goal_line(all_rows, rows, int(goal_n), float(goal_cores), float(goal_rss),
                  render_n, render_ms)

def goal_line(all_rows, rows, goal_n, goal_cores, goal_rss, render_n, render_ms):
    goal = [r for r in rows if r['prober'] == 'regionprobe' and r['n'] == goal_n]
    if not goal and any(r['prober'] == 'regionprobe' and r['n'] == goal_n for r in all_rows):
        print('GOAL regionprobe N=%d: MISS (the run failed)' % goal_n)
        return
    if not goal:
        print('GOAL regionprobe N=%d: not evaluated (no regionprobe run at N=%d)' % (goal_n, goal_n))
        return
    r = goal[-1]
    checks = [
        ('cores %.4f < %g' % (r['cores'], goal_cores), r['cores'] < goal_cores),
        ('RSS %.1f MiB < %g MiB' % (r['rss_mib'], goal_rss), r['rss_mib'] < goal_rss),
        ('every probe on time: skipped ticks %d == 0, achieved %.1f%% >= 99%%'
         % (r['skipped_ticks'], 100 * r['achieved_ratio']), r['on_time']),
    ]
    if goal_n == render_n:
        checks.append(('one /metrics rendering %.0f ms of CPU < %g ms' % (r['render_cpu_ms'], render_ms),
                       r['render_cpu_ms'] < render_ms))
    for text, ok in checks:
        print('GOAL regionprobe N=%d: %-4s %s' % (goal_n, 'PASS' if ok else 'MISS', text))
    print('GOAL regionprobe N=%d: %s' % (goal_n, 'PASS' if all(ok for _, ok in checks) else 'MISS'))

if __name__ == '__main__':
    if sys.argv[1] == 'analyze':
        print(json.dumps(analyze(json.load(open(sys.argv[2])))))
    elif sys.argv[1] == 'table':
        table(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
PY

# ---------------------------------------------------------------------------------------------
# Voluntary + involuntary context switches, summed over the threads alive now.
ctx_switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}

# Starts one prober in the background; sets STARTED_PID and PORT.
start_prober() {
    local prober=$1 n=$2 dir=$3 i
    PORT=$(free_port)
    case $prober in
    regionprobe)
        regionprobe_icmp_config "$dir/regionprobe.toml" "$n" "$PORT"
        start_regionprobe "$dir/regionprobe.toml" "$dir"
        return
        ;;
    smokeping_prober)
        # An explicit empty config file: the default /etc/prometheus/smokeping_prober.yml adds
        # its own targets (localhost).
        echo 'targets: []' >"$dir/smokeping_prober.yml"
        local hosts=()
        for ((i = 0; i < n; i++)); do hosts+=("$(loopback_ip "$i")"); done
        "$SMOKEPING" --config.file="$dir/smokeping_prober.yml" --privileged \
            --ping.interval=1s --web.listen-address="127.0.0.1:$PORT" --log.level=warn \
            "${hosts[@]}" >"$dir/stdout.log" 2>"$dir/stderr.log" &
        ;;
    esac
    STARTED_PID=$!
    track_pid "$STARTED_PID"
}

run_one() {
    local prober=$1 n=$2
    local dir="$WORK/$prober-$n"
    mkdir -p "$dir"
    QUIET_NOTE="not checked"
    wait_quiet
    log "N=$n $prober: starting"
    local t_start t_ready
    t_start=$(now)
    start_prober "$prober" "$n" "$dir"
    local pid=$STARTED_PID port=$PORT
    wait_http "$pid" "http://127.0.0.1:$port/metrics" "$prober" "$dir/stderr.log"
    t_ready=$(now)
    log "N=$n $prober: pid $pid on port $port; warm-up ${WARMUP}s, then ${DURATION}s measured"
    pause "$WARMUP"

    # CPU is read between the two scrapes, so the scrapes' own cost is not in it. A scrape's
    # counters are taken as of the middle of the request (slow scrapes take seconds).
    local t_m0a t_m0b t_c0 ticks0 busy0 ctx0 t_c1 ticks1 busy1 ctx1 t_m1a t_m1b
    t_m0a=$(now)
    scrape "$port" "$dir/m0.txt"
    t_m0b=$(now)
    t_c0=$(now); ticks0=$(proc_ticks "$pid"); busy0=$(machine_busy_ticks); ctx0=$(ctx_switches "$pid")
    pause "$DURATION"
    t_c1=$(now); ticks1=$(proc_ticks "$pid"); busy1=$(machine_busy_ticks); ctx1=$(ctx_switches "$pid")
    t_m1a=$(now)
    scrape "$port" "$dir/m1.txt"
    t_m1b=$(now)
    kill -0 "$pid" 2>/dev/null || die "$prober died during the measurement"

    local rss hwm threads fds
    rss=$(status_kib "$pid" VmRSS)
    hwm=$(status_kib "$pid" VmHWM)
    threads=$(status_kib "$pid" Threads)
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)

    local times=() bytes=0 out
    for _ in $(seq "$SCRAPES"); do
        out=$(curl -sf -o /dev/null --max-time 120 -w '%{time_total} %{size_download}' "http://127.0.0.1:$port/metrics") ||
            die "timed scrape failed"
        times+=("${out% *}")
        bytes=${out#* }
    done
    local gzip_bytes=0 render_ns=0 shrink_rss=0 fresh_rss=0
    if [[ $prober == regionprobe ]]; then
        out=$(curl -sf -o /dev/null --max-time 120 -H 'Accept-Encoding: gzip' -w '%{size_download}' \
            "http://127.0.0.1:$port/metrics") || die "gzip scrape failed"
        gzip_bytes=$out
        # One fresh rendering: the shared one expires after 0.5 s.
        sleep 1
        local r0 r1
        r0=$(threads_cpu_ns "$pid" http)
        curl -sf -o /dev/null --max-time 120 -H 'Accept-Encoding: gzip' "http://127.0.0.1:$port/metrics" ||
            die "render scrape failed"
        r1=$(threads_cpu_ns "$pid" http)
        render_ns=$((r1 - r0))
        if ((SHRINK_TO > 0 && SHRINK_TO < n)); then
            regionprobe_icmp_config "$dir/regionprobe.toml" "$SHRINK_TO" "$port"
            kill -HUP "$pid"
            log "N=$n regionprobe: reloaded down to $SHRINK_TO targets; RSS in ${SHRINK_WAIT}s"
            pause "$SHRINK_WAIT"
            shrink_rss=$(status_kib "$pid" VmRSS)
        fi
    fi
    stop_pid "$pid"
    wait "$pid" 2>/dev/null || true
    if ((shrink_rss > 0)); then
        local fresh_dir="$dir/fresh"
        mkdir -p "$fresh_dir"
        PORT=$(free_port)
        regionprobe_icmp_config "$fresh_dir/regionprobe.toml" "$SHRINK_TO" "$PORT"
        start_regionprobe "$fresh_dir/regionprobe.toml" "$fresh_dir"
        local fresh_pid=$STARTED_PID
        wait_http "$fresh_pid" "http://127.0.0.1:$PORT/metrics" regionprobe "$fresh_dir/stderr.log"
        pause "$SHRINK_WAIT"
        fresh_rss=$(status_kib "$fresh_pid" VmRSS)
        stop_pid "$fresh_pid"
        wait "$fresh_pid" 2>/dev/null || true
    fi

    local scrape_json
    scrape_json=$(IFS=,; echo "${times[*]}")
    cat >"$dir/raw.json" <<EOF
{"prober": "$prober", "n": $n, "duration": $DURATION, "clk_tck": $CLK_TCK,
 "m0": "$dir/m0.txt", "m1": "$dir/m1.txt",
 "t_start": $t_start, "t_ready": $t_ready,
 "t_m0a": $t_m0a, "t_m0b": $t_m0b, "t_m1a": $t_m1a, "t_m1b": $t_m1b, "t_c0": $t_c0, "t_c1": $t_c1,
 "ticks0": [${ticks0/ /, }], "ticks1": [${ticks1/ /, }], "sys_busy0": $busy0, "sys_busy1": $busy1,
 "ctx0": $ctx0, "ctx1": $ctx1, "env": "${REGIONPROBE_ENV//\"/}", "quiet": "$QUIET_NOTE",
 "rss_kib": $rss, "hwm_kib": $hwm, "threads": $threads, "fds": $fds,
 "scrape_times": [$scrape_json], "scrape_bytes": $bytes, "gzip_bytes": $gzip_bytes,
 "render_ns": $render_ns, "shrink_to": $SHRINK_TO, "shrink_rss_kib": $shrink_rss, "fresh_rss_kib": $fresh_rss}
EOF
    helper analyze "$dir/raw.json" >>"$WORK/results.jsonl" || die "analysis of $prober N=$n failed"
    python3 - "$WORK/results.jsonl" <<'PY' >&2
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][-1]
print('[icmp_scale] N=%d %s: %.4f cores (user %.4f, sys %.4f), %.1f MiB, %.1f probes/s of %d, success %s, scrape %.2f ms, other load %.2f cores'
      % (r['n'], r['prober'], r['cores'], r['user_cores'], r['system_cores'], r['rss_mib'], r['probes_per_s'], r['n'],
         '-' if r['success_ratio'] is None else '%.2f%%' % (100 * r['success_ratio']),
         r['scrape_ms_median'], r['other_load_cores']))
PY
}

# ---------------------------------------------------------------------------------------------
{
    echo "# icmp_scale $STAMP"
    host_line
    echo "regionprobe: $(regionprobe_version)"
    echo "smokeping_prober: $("$SMOKEPING" --version 2>&1 | head -1)"
    echo "N_LIST=\"$N_LIST\" DURATION=$DURATION WARMUP=$WARMUP SCRAPES=$SCRAPES CLK_TCK=$CLK_TCK REGIONPROBE_ENV=\"${REGIONPROBE_ENV:-}\""
    echo "net.ipv4.ping_group_range: $(tr '\t' ' ' </proc/sys/net/ipv4/ping_group_range)"
    echo "loadavg at start: $(cat /proc/loadavg)"
} >"$OUT"

for n in $N_LIST; do
    for prober in $PROBERS; do
        [[ $prober == smokeping_prober ]] && ((n > SMOKEPING_MAX_N)) && continue
        run_isolated "$prober" "$n"
        [[ -f "$WORK/$prober-$n/stderr.log" ]] && cp "$WORK/$prober-$n/stderr.log" "$WORK/$prober-$n.stderr.log"
    done
done

{
    echo "loadavg at end: $(cat /proc/loadavg)"
    echo
    echo "## raw figures (one JSON object per run)"
    cat "$WORK/results.jsonl"
    for f in "$WORK"/*.stderr.log; do
        [[ -s "$f" ]] || continue
        echo
        echo "## $(basename "$f") (last 20 lines)"
        tail -20 "$f"
    done
    echo
    echo "## table"
} >>"$OUT"

TABLE=$(helper table "$WORK/results.jsonl" "$GOALS" "$RENDER_GOAL_N" "$RENDER_GOAL_MS")
echo "$TABLE" >>"$OUT"
echo
echo "ICMP scale: each prober alone, N loopback targets at 1 s, ${DURATION} s measured after ${WARMUP} s warm-up"
echo "$TABLE"
echo
echo "raw figures: $OUT"
if ((FAILED)); then
    log "some runs failed (see the FAILED lines)"
    exit 1
fi
