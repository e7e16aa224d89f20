#!/usr/bin/env bash
# HTTP probe benchmark: regionprobe against Debian's prometheus-blackbox-exporter (http module),
# both probing the same local nginx; CPU seconds per probe and RSS side by side.
#
# Usage (as root, from anywhere):
#   bench/http_probe.sh                         # N_LIST="100 500", DURATION=60
#   N_LIST=100 DURATION=20 bench/http_probe.sh  # quick run
#
# Environment:
#   N_LIST     target counts to run, space separated              (default "100 500")
#   DURATION   measured seconds per run                            (default 60)
#   WARMUP     seconds between "every target is probed" and the measurement (default 10)
#   PROBERS    which probers, in order      (default "regionprobe blackbox_exporter")
#   QUIET_CORES, QUIET_MAX  before each run, wait up to QUIET_MAX s (180) until the rest of the
#              machine uses less than QUIET_CORES cores (0.3); 0 disables the wait
#   REGIONPROBE_ENV  extra environment for regionprobe only (e.g. "TOKIO_WORKER_THREADS=1")
#   STARTUP_TIMEOUT  seconds a prober or Prometheus may take to start (default 120)
#   KEEP_WORK  1: keep the work directory (configs, logs, access log, /metrics snapshots)
#
# The setup, as each prober is run in production:
#   * one nginx (1 worker) on 127.0.0.1:<port> answers every path with a 21-byte 200; the N
#     targets are the URLs http://127.0.0.1:<port>/t/1 ... /t/N. Its access log records the
#     time and status of every request.
#   * regionprobe: N `probe = "http"` targets, 1 s interval and timeout, a new connection per
#     probe (the default). A Prometheus scrapes its /metrics every 15 s.
#   * blackbox_exporter: module http_2xx (prober http, timeout 1 s, ip4), driven by a Prometheus
#     that scrapes /probe?module=http_2xx&target=<url> for the N URLs every 1 s (relabelling as
#     in blackbox_exporter's README), and its own /metrics every 15 s.
#   * each prober runs ALONE, with its own Prometheus (fresh TSDB). The CPU of nginx and of
#     Prometheus is measured and shown, but counted for neither prober.
#
# Over DURATION seconds after the warm-up:
#   CPU s        utime+stime delta of the prober from /proc/PID/stat
#   probes       requests nginx logged in the window (every request is one probe; only one
#                prober runs at a time). Cross-checks: regionprobe_probes_total from
#                regionprobe's /metrics, or Prometheus' count of its /probe scrapes of blackbox
#   CPU us/probe CPU s / probes: the headline figure; "vs blackbox" is the ratio
#   success      regionprobe: regionprobe_probe_duration_seconds_count / probes_total;
#                blackbox: sum_over_time(probe_success) / count_over_time(up) in Prometheus
#   RSS          VmRSS at the end of the window
# Goal: regionprobe's CPU per probe at most 1/3 of blackbox_exporter's, at every N, with every
# probe done (>= 99 % of N per second). Raw figures: bench/out/http_probe-<timestamp>.txt.
# Exit status 0 whether or not the goal is met; 1 if something failed to run.
# A benchmark, not a test: `cargo test` never runs it.

set -euo pipefail

BENCH=http_probe
NGINX=/usr/sbin/nginx
BLACKBOX=/usr/bin/prometheus-blackbox-exporter
PROMETHEUS=/usr/bin/prometheus
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
STOPPABLE=("$REGIONPROBE " "$BLACKBOX " "$PROMETHEUS " "nginx: master process $NGINX ")

N_LIST=${N_LIST:-"100 500"}
DURATION=${DURATION:-60}
WARMUP=${WARMUP:-10}
PROBERS=${PROBERS:-"regionprobe blackbox_exporter"}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-120}
GOAL_RATIO=0.3333333333

require_root "missing packages are installed with apt-get"
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 5 ]] || die "DURATION must be an integer >= 5 (got '$DURATION')"
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be an integer (got '$WARMUP')"
for n in $N_LIST; do
    [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 5000 ]] || die "N_LIST entries must be 1..5000 (got '$n')"
done
for p in $PROBERS; do
    [[ "$p" == regionprobe || "$p" == blackbox_exporter ]] || die "unknown prober '$p' in PROBERS"
done
install_missing "$NGINX:nginx-light" "$PROMETHEUS:prometheus" "$BLACKBOX:prometheus-blackbox-exporter"
warn_running "$BLACKBOX" "$PROMETHEUS"
build_release
bench_workdir
ulimit -n 65536 2>/dev/null || true # sockets in flight and in TIME_WAIT

HELPER="$WORK/helper.py"
cat >"$HELPER" <<'PY'
import json, sys
from lib import *

def prom_value(path):
    """The single value of an instant-vector answer of /api/v1/query (None if empty)."""
    doc = json.load(open(path))
    if doc.get('status') != 'success':
        raise SystemExit('Prometheus query failed: %s' % doc)
    result = doc['data']['result']
    return float(result[0]['value'][1]) if result else None

def access_window(path, t0, t1):
    """(requests, 200s) nginx logged in [t0, t1]."""
    requests = ok = 0
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and t0 <= float(parts[0]) <= t1:
                requests += 1
                ok += parts[1] == '200'
    return requests, ok

def analyze(a):
    wall = a['t1'] - a['t0']
    r = dict(prober=a['prober'], n=a['n'], duration=a['duration'], wall_s=round(wall, 3))
    if a['env'] and a['prober'] == 'regionprobe':
        r['env'] = a['env']
    r['cpu_s'] = cpu(a)
    r['user_s'] = (a['ticks1'][0] - a['ticks0'][0]) / a['clk_tck']
    r['cores'] = r['cpu_s'] / wall
    r['prometheus_cores'] = cpu(a, 'prom_ticks') / wall
    r['nginx_cores'] = cpu(a, 'nginx_ticks') / wall
    busy = (a['busy1'] - a['busy0']) / a['clk_tck'] / wall
    r['other_load_cores'] = max(0.0, busy - r['cores'] - r['prometheus_cores'] - r['nginx_cores'])
    r['rss_mib'] = a['rss_kib'] / 1024
    r['quiet'] = a['quiet']
    requests, ok = access_window(a['access_log'], a['t0'], a['t1'])
    r['probes'] = requests
    r['server_ok'] = ok
    r['probes_per_s'] = requests / wall
    r['achieved_ratio'] = r['probes_per_s'] / a['n']
    r['cpu_us_per_probe'] = 1e6 * r['cpu_s'] / requests if requests else None
    if a['prober'] == 'regionprobe':
        m0, m1 = parse(a['m0']), parse(a['m1'])
        own = delta(m0, m1, 'regionprobe_probes_total')
        ok = delta(m0, m1, 'regionprobe_probe_duration_seconds_count')
        r['own_count'] = int(own)
        r['success_ratio'] = ok / own if own else None
        r['skipped_ticks'] = int(delta(m0, m1, 'regionprobe_scheduler_skipped_ticks_total'))
    else:
        own = prom_value(a['q_probes']) or 0.0
        r['own_count'] = int(own)
        r['success_ratio'] = (prom_value(a['q_success']) or 0.0) / own if own else None
    return r

def table(path, goal_ratio):
    all_rows, rows = results(path)
    bb = {r['n']: r for r in rows if r['prober'] == 'blackbox_exporter'}
    head = ['N', 'prober', 'cores', 'CPU us/probe', 'vs blackbox', 'RSS MiB', 'probes/s (N)',
            'own count/server', 'success', 'Prometheus cores', 'nginx cores']
    body = []
    for r in all_rows:
        if 'failed' in r:
            body.append([str(r['n']), r['prober'], 'FAILED'] + [''] * (len(head) - 3))
            continue
        b = bb.get(r['n'])
        ratio = '1'
        if r['prober'] != 'blackbox_exporter':
            ratio = '%.3f' % (r['cpu_us_per_probe'] / b['cpu_us_per_probe']) if b and b['cpu_us_per_probe'] and r['cpu_us_per_probe'] else '-'
        body.append([
            str(r['n']), r['prober'] + (' [%s]' % r['env'] if r.get('env') else ''),
            '%.4f' % r['cores'], fmt(r['cpu_us_per_probe'], '.1f'), ratio, '%.1f' % r['rss_mib'],
            '%.1f (%d)' % (r['probes_per_s'], r['n']),
            '%.3f' % (r['own_count'] / r['probes'] if r['probes'] else 0),
            fmt(None if r['success_ratio'] is None else 100 * r['success_ratio'], '.2f') + '%',
            '%.3f' % r['prometheus_cores'], '%.3f' % r['nginx_cores'],
        ])
    print_table(head, body)
    print_failures_and_noise(all_rows, rows)
    print()
    verdicts = []
    for n in sorted({r['n'] for r in all_rows}):
        rp = [r for r in all_rows if r['n'] == n and r['prober'] == 'regionprobe']
        if not rp or not any(r['n'] == n and r['prober'] == 'blackbox_exporter' for r in all_rows):
            print('GOAL N=%d: not evaluated (needs both regionprobe and blackbox_exporter)' % n)
            continue
        rp, b = rp[-1], bb.get(n)
        if 'failed' in rp or not b or not rp.get('cpu_us_per_probe') or not b.get('cpu_us_per_probe'):
            print('GOAL N=%d: MISS (a run failed)' % n)
            verdicts.append(False)
            continue
        ratio = rp['cpu_us_per_probe'] / b['cpu_us_per_probe']
        ok = ratio <= goal_ratio + 1e-12 and rp['achieved_ratio'] >= 0.99
        verdicts.append(ok)
        print('GOAL N=%d: %-4s regionprobe %.1f us/probe, blackbox_exporter %.1f us/probe: ratio %.3f (<= 0.333;'
              ' blackbox uses %.1fx the CPU per probe); regionprobe achieved %.1f%% of N/s (>= 99%%)'
              % (n, 'PASS' if ok else 'MISS', rp['cpu_us_per_probe'], b['cpu_us_per_probe'], ratio,
                 1 / ratio, 100 * rp['achieved_ratio']))
    if verdicts:
        print('GOAL regionprobe CPU per probe <= 1/3 of blackbox_exporter\'s: %s' % ('PASS' if all(verdicts) else 'MISS'))

if __name__ == '__main__':
    if sys.argv[1] == 'analyze':
        print(json.dumps(analyze(json.load(open(sys.argv[2])))))
    elif sys.argv[1] == 'table':
        table(sys.argv[2], float(sys.argv[3]))
    elif sys.argv[1] == 'value':
        v = prom_value(sys.argv[2])
        print('' if v is None else '%d' % v)
PY

target_url() { echo "http://127.0.0.1:$HTTP_PORT/t/$(($1 + 1))"; }

# The HTTP server, one for the whole benchmark, kept across runs (KEEP_PIDS).
start_nginx() {
    HTTP_PORT=$(free_port)
    ACCESS_LOG="$WORK/access.log"
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 65536;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
daemon off;
events { worker_connections 16384; }
http {
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    log_format bench '\$msec \$status';
    server {
        listen 127.0.0.1:$HTTP_PORT;
        access_log $ACCESS_LOG bench;
        location / {
            default_type text/plain;
            return 200 "regionprobe bench ok\n";
        }
    }
}
EOF
    "$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >"$WORK/nginx/stdout.log" 2>&1 &
    NGINX_PID=$!
    track_pid "$NGINX_PID"
    KEEP_PIDS=$NGINX_PID
    wait_http "$NGINX_PID" "http://127.0.0.1:$HTTP_PORT/t/0" nginx "$WORK/nginx/error.log"
}

regionprobe_http_config() {
    local file=$1 n=$2 port=$3 i
    {
        printf '[exporter]\nregion = "bench"\nlisten = "127.0.0.1:%s"\n\n' "$port"
        printf '[defaults]\ninterval = "1s"\ntimeout = "1s"\n'
        for ((i = 0; i < n; i++)); do
            printf '\n[[target]]\nname = "t%05d"\nregion = "bench"\nprobe = "http"\nurl = "%s"\n' \
                "$i" "$(target_url "$i")"
        done
    } >"$file"
}

# Prometheus: scrapes the prober's /metrics every 15 s and, for blackbox, /probe for the N URLs
# every 1 s.
prometheus_config() {
    local file=$1 prober=$2 n=$3 port=$4 i
    {
        printf 'global:\n  scrape_interval: 15s\n  scrape_timeout: 10s\nscrape_configs:\n'
        printf '  - job_name: %s\n    static_configs:\n      - targets: ["127.0.0.1:%s"]\n' "$prober" "$port"
        if [[ $prober == blackbox_exporter ]]; then
            printf '  - job_name: blackbox\n    scrape_interval: 1s\n    scrape_timeout: 1s\n'
            printf '    metrics_path: /probe\n    params:\n      module: [http_2xx]\n'
            printf '    static_configs:\n      - targets:\n'
            for ((i = 0; i < n; i++)); do printf '          - %s\n' "$(target_url "$i")"; done
            printf '    relabel_configs:\n'
            printf '      - source_labels: [__address__]\n        target_label: __param_target\n'
            printf '      - source_labels: [__param_target]\n        target_label: instance\n'
            printf '      - target_label: __address__\n        replacement: 127.0.0.1:%s\n' "$port"
        fi
    } >"$file"
}

prom_query() {
    local out=$1 query=$2 at=$3
    curl -sf --max-time 30 -o "$out" --get --data-urlencode "query=$query" --data-urlencode "time=$at" \
        "http://127.0.0.1:$PROM_PORT/api/v1/query" || die "Prometheus query failed: $query"
}

# Until Prometheus has scraped every /probe target once.
wait_all_scraped() {
    local n=$1 dir=$2 got=""
    local deadline=$((SECONDS + STARTUP_TIMEOUT))
    while ((SECONDS < deadline)); do
        prom_query "$dir/q-ready.json" 'count(up{job="blackbox"})' "$(now)"
        got=$(helper value "$dir/q-ready.json")
        [[ "$got" == "$n" ]] && return 0
        sleep 1
    done
    die "Prometheus scraped ${got:-0} of $n /probe targets within $STARTUP_TIMEOUT s"
}

run_one() {
    local prober=$1 n=$2
    local dir="$WORK/$prober-$n" port pid
    mkdir -p "$dir"
    QUIET_NOTE="not checked"
    wait_quiet
    log "N=$n $prober: starting"
    port=$(free_port)
    if [[ $prober == regionprobe ]]; then
        regionprobe_http_config "$dir/regionprobe.toml" "$n" "$port"
        start_regionprobe "$dir/regionprobe.toml" "$dir"
    else
        printf 'modules:\n  http_2xx:\n    prober: http\n    timeout: 1s\n    http:\n      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n' >"$dir/blackbox.yml"
        "$BLACKBOX" --config.file="$dir/blackbox.yml" --web.listen-address="127.0.0.1:$port" \
            --log.level=warn >"$dir/stdout.log" 2>"$dir/stderr.log" &
        STARTED_PID=$!
        track_pid "$STARTED_PID"
    fi
    pid=$STARTED_PID
    wait_http "$pid" "http://127.0.0.1:$port/metrics" "$prober" "$dir/stderr.log"
    PROM_PORT=$(free_port)
    prometheus_config "$dir/prometheus.yml" "$prober" "$n" "$port"
    "$PROMETHEUS" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus-data" \
        --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn \
        >"$dir/prometheus.stdout.log" 2>"$dir/prometheus.stderr.log" &
    local prom_pid=$!
    track_pid "$prom_pid"
    wait_http "$prom_pid" "http://127.0.0.1:$PROM_PORT/-/ready" prometheus "$dir/prometheus.stderr.log"
    [[ $prober == blackbox_exporter ]] && wait_all_scraped "$n" "$dir"
    log "N=$n $prober: pid $pid, Prometheus pid $prom_pid; warm-up ${WARMUP}s, then ${DURATION}s measured"
    pause "$WARMUP"

    # regionprobe's counters are read just outside the CPU window, so the reads cost it nothing.
    [[ $prober == regionprobe ]] && scrape "$port" "$dir/m0.txt"
    local t0 t1 ticks0 ticks1 prom0 prom1 nginx0 nginx1 busy0 busy1
    t0=$(now); ticks0=$(proc_ticks "$pid"); prom0=$(proc_ticks "$prom_pid"); nginx0=$(tree_ticks "$NGINX_PID"); busy0=$(machine_busy_ticks)
    pause "$DURATION"
    t1=$(now); ticks1=$(proc_ticks "$pid"); prom1=$(proc_ticks "$prom_pid"); nginx1=$(tree_ticks "$NGINX_PID"); busy1=$(machine_busy_ticks)
    [[ $prober == regionprobe ]] && scrape "$port" "$dir/m1.txt"
    kill -0 "$pid" 2>/dev/null || die "$prober died during the measurement"
    local rss
    rss=$(status_kib "$pid" VmRSS)
    if [[ $prober == blackbox_exporter ]]; then
        pause 2 # the last scrapes of the window land in the TSDB
        local range_ms
        range_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", (b - a) * 1000 }')
        prom_query "$dir/q-probes.json" "sum(count_over_time(up{job=\"blackbox\"}[${range_ms}ms]))" "$t1"
        prom_query "$dir/q-success.json" "sum(sum_over_time(probe_success{job=\"blackbox\"}[${range_ms}ms]))" "$t1"
    fi
    stop_pid "$prom_pid"
    stop_pid "$pid"

    cat >"$dir/raw.json" <<EOF
{"prober": "$prober", "n": $n, "duration": $DURATION, "clk_tck": $CLK_TCK, "quiet": "$QUIET_NOTE",
 "env": "${REGIONPROBE_ENV//\"/}", "access_log": "$ACCESS_LOG",
 "m0": "$dir/m0.txt", "m1": "$dir/m1.txt", "q_probes": "$dir/q-probes.json", "q_success": "$dir/q-success.json",
 "t0": $t0, "t1": $t1, "ticks0": [${ticks0/ /, }], "ticks1": [${ticks1/ /, }],
 "prom_ticks0": [${prom0/ /, }], "prom_ticks1": [${prom1/ /, }],
 "nginx_ticks0": [${nginx0/ /, }], "nginx_ticks1": [${nginx1/ /, }],
 "busy0": $busy0, "busy1": $busy1, "rss_kib": $rss}
EOF
    helper analyze "$dir/raw.json" >>"$WORK/results.jsonl" || die "analysis of $prober N=$n failed"
    python3 - "$WORK/results.jsonl" <<'PY' >&2
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][-1]
print('[http_probe] N=%d %s: %.4f cores, %s us/probe, %.1f MiB, %.1f probes/s, own count %d of %d logged, Prometheus %.3f cores, nginx %.3f cores, other load %.2f cores (%s)'
      % (r['n'], r['prober'], r['cores'], '-' if r['cpu_us_per_probe'] is None else '%.1f' % r['cpu_us_per_probe'],
         r['rss_mib'], r['probes_per_s'], r['own_count'], r['probes'], r['prometheus_cores'], r['nginx_cores'],
         r['other_load_cores'], r['quiet']))
PY
}

start_nginx
{
    echo "# http_probe $STAMP"
    host_line
    echo "regionprobe: $(regionprobe_version)"
    echo "blackbox_exporter: $("$BLACKBOX" --version 2>&1 | head -1)"
    echo "prometheus: $("$PROMETHEUS" --version 2>&1 | head -1)"
    echo "nginx: $("$NGINX" -v 2>&1 | head -1), 1 worker"
    echo "N_LIST=\"$N_LIST\" DURATION=$DURATION WARMUP=$WARMUP PROBERS=\"$PROBERS\" REGIONPROBE_ENV=\"${REGIONPROBE_ENV:-}\""
    echo "loadavg at start: $(cat /proc/loadavg)"
} >"$OUT"

for n in $N_LIST; do
    for prober in $PROBERS; do
        kill -0 "$NGINX_PID" 2>/dev/null || die "nginx died"
        run_isolated "$prober" "$n"
    done
done

{
    echo "loadavg at end: $(cat /proc/loadavg)"
    echo
    echo "## raw figures (one JSON object per run)"
    cat "$WORK/results.jsonl"
    for f in "$WORK"/*/stderr.log "$WORK"/*/prometheus.stderr.log "$WORK/nginx/error.log"; do
        [[ -s "$f" ]] || continue
        echo
        echo "## ${f#"$WORK"/} (last 20 lines)"
        tail -20 "$f"
    done
    echo
    echo "## table"
} >>"$OUT"

TABLE=$(helper table "$WORK/results.jsonl" "$GOAL_RATIO")
echo "$TABLE" >>"$OUT"
echo
echo "HTTP probe: each prober alone, N URLs on one local nginx at 1 s, ${DURATION} s measured after ${WARMUP} s warm-up"
echo "$TABLE"
echo
echo "raw figures: $OUT"
((FAILED == 0)) || { log "some runs failed (see the FAILED lines)"; exit 1; }
