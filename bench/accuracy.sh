#!/usr/bin/env bash
# Accuracy benchmark: regionprobe's ICMP round trips against iputils ping and Debian's
# prometheus-smokeping-prober, in one run, on the same emulated path.
#
# Usage (as root, from anywhere):
#   bench/accuracy.sh                         # every path and load, DURATION=60
#   DURATION=600 bench/accuracy.sh            # the issue's 600 probes per prober and run
#   PATHS="25" LOADS="none" DURATION=20 bench/accuracy.sh   # debug run
#
# Environment:
#   DURATION   measured seconds (= probes per prober) per run     (default 60)
#   WARMUP     seconds after start-up before the window opens       (default 5)
#   PATHS      paths to run: 0 (no added delay), 25 (2 x 25 ms), 25j (2 x 25 ms, +-2 ms
#              jitter), 25l (2 x 25 ms, 5% loss each way)            (default "0 25 25j 25l")
#   LOADS      none | targets (EXTRA_TARGETS more loopback ICMP targets on the same
#              regionprobe) | hammer (HAMMER_CLIENTS clients fetching /metrics and / of
#              regionprobe back to back)                             (default "none targets hammer")
#   EXTRA_TARGETS   (default 10000)        HAMMER_CLIENTS   (default 4)
#   QUIET_CORES, QUIET_MAX, KEEP_WORK as in bench/lib.sh
#
# Topology (built per run, deleted after it; nothing leaves the machine): two network
# namespaces, A (the probers) and B (the probed addresses), without default routes, joined by
# two TUN devices through the test kit's WAN emulator (`wan`, testkit/src/wan.rs: a reader and
# a writer thread per direction that spins to each packet's due time), which delays every
# packet by the path's one-way delay (+ jitter), drops some (loss) and counts what it dropped. A: 10.77.0.1/24;
# B: 10.77.0.2/24 plus one address per prober: ping probes 10.77.0.11, smokeping_prober
# 10.77.0.12, regionprobe 10.77.0.13, all three at 1 s, concurrently. The extra targets are
# 127.1.Y.Z inside A.
#
# Figures per prober over the window: median, mean, p99 of the RTT and their difference to
# ping's; loss against the emulator's true loss for that address ((dropped A->B + dropped
# B->A) / requests seen). ping's per-packet times come from its output (printed with 3
# significant digits, truncated: half a step is added back); the others' from their
# histograms, given the same fine buckets (5 us up to 2 ms, 10 us from 45 to 60 ms): their
# quantiles are interpolated within a bucket, their means exact (_sum / _count). Probes in
# flight at the window's edges: ping's window is chosen by send time and ping is stopped 3 s
# after it; regionprobe counts a probe when it ends, so none is lost at an edge;
# smokeping_prober counts requests when sent (one in flight at the end may read as lost).
#
# Background processes are started as `ip netns exec NS program` (which execs the program), never
# through a shell function, so that $! is the program itself and can be stopped.
#
# A benchmark, not a test: it prints numbers, it asserts nothing.

set -euo pipefail

BENCH=accuracy
SMOKEPING=/usr/bin/prometheus-smokeping-prober
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
WAN="$ROOT/target/release/wan"
STOPPABLE=("$REGIONPROBE " "$SMOKEPING " "$WAN " "ping " "python3 -c")

DURATION=${DURATION:-60}
WARMUP=${WARMUP:-5}
PATHS=${PATHS:-"0 25 25j 25l"}
LOADS=${LOADS:-"none targets hammer"}
EXTRA_TARGETS=${EXTRA_TARGETS:-10000}
HAMMER_CLIENTS=${HAMMER_CLIENTS:-4}
NS_A="rpacc$$a"
NS_B="rpacc$$b"
TUN_A="rpacc$$a"
TUN_B="rpacc$$b"

require_root "namespaces, TUN devices and raw ICMP sockets"
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 5 ]] || die "DURATION must be an integer >= 5"
for p in $PATHS; do [[ "$p" =~ ^(0|25|25j|25l)$ ]] || die "unknown path '$p'"; done
for l in $LOADS; do [[ "$l" =~ ^(none|targets|hammer)$ ]] || die "unknown load '$l'"; done
install_missing ping:iputils-ping "$SMOKEPING:prometheus-smokeping-prober" ip:iproute2
warn_running "$SMOKEPING"
build_release
log "building the WAN emulator (cargo build --release -p regionprobe-testkit --bin wan)"
(cd "$ROOT" && cargo build --release --quiet -p regionprobe-testkit --bin wan) || die "building wan failed"
bench_workdir

# Bucket bounds shared by smokeping_prober and regionprobe's measured target.
BUCKETS=$(python3 -c '
b = [i * 5e-6 for i in range(1, 401)]            # 5 us .. 2 ms
b += [i * 1e-3 for i in range(3, 45)]            # 3 .. 44 ms
b += [0.045 + i * 1e-5 for i in range(0, 1501)]  # 45 .. 60 ms by 10 us
b += [0.07, 0.1, 0.2, 0.5, 1.0]
print(",".join("%.6f" % x for x in b))')

path_args() {
    case $1 in
    0) echo "--delay-ms 0" ;;
    25) echo "--delay-ms 25" ;;
    25j) echo "--delay-ms 25 --jitter-ms 2" ;;
    25l) echo "--delay-ms 25 --loss 0.05" ;;
    esac
}

teardown() {
    run_quietly_ip netns del "$NS_A"
    run_quietly_ip netns del "$NS_B"
}
run_quietly_ip() { ip "$@" >/dev/null 2>&1 || true; }
trap 'st=$?; teardown; (exit $st); bench_cleanup' EXIT

in_a() { ip netns exec "$NS_A" "$@"; }

# scrape_a PORT FILE: /metrics of a prober in namespace A.
scrape_a() { in_a curl -sf --max-time 60 -o "$2" "http://127.0.0.1:$1/metrics" || die "scrape of port $1 failed"; }

wait_http_a() {
    local pid=$1 port=$2 what=$3 deadline=$((SECONDS + 300))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || die "$what exited during start-up"
        in_a curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port/metrics" && return 0
        sleep 0.2
    done
    die "$what did not answer within 300 s"
}

run_one() {
    local path=$1 load=$2 dir="$WORK/$1-$2"
    mkdir -p "$dir"
    teardown
    wait_quiet
    log "path $path, load $load: building the path"
    ip netns add "$NS_A"
    ip netns add "$NS_B"
    # shellcheck disable=SC2046  # path_args is a list of words
    "$WAN" --a "$TUN_A" --b "$TUN_B" $(path_args "$path") \
        --stats "$dir/emulator.json" >"$dir/forwarder.out" 2>"$dir/forwarder.err" &
    track_pid $!
    local fwd=$!
    for _ in $(seq 50); do grep -q ready "$dir/forwarder.out" 2>/dev/null && break; sleep 0.1; done
    grep -q ready "$dir/forwarder.out" || die "forwarder did not start: $(cat "$dir/forwarder.err")"
    ip link set "$TUN_A" netns "$NS_A"
    ip link set "$TUN_B" netns "$NS_B"
    ip -n "$NS_A" link set lo up
    ip -n "$NS_B" link set lo up
    ip -n "$NS_A" addr add 10.77.0.1/24 dev "$TUN_A"
    ip -n "$NS_B" addr add 10.77.0.2/24 dev "$TUN_B"
    for a in 11 12 13; do ip -n "$NS_B" addr add "10.77.0.$a/32" dev "$TUN_B"; done
    ip -n "$NS_A" link set "$TUN_A" up
    ip -n "$NS_B" link set "$TUN_B" up

    local rp_port=19601 sp_port=19602 n_extra=0
    [[ $load == targets ]] && n_extra=$EXTRA_TARGETS
    {
        printf '[exporter]\nregion = "bench"\nlisten = "127.0.0.1:%s"\n\n' "$rp_port"
        printf '[defaults]\ninterval = "1s"\ntimeout = "1s"\n'
        printf '\n[[target]]\nname = "path"\nregion = "bench"\nprobe = "icmp"\nhost = "10.77.0.13"\nbuckets = [%s]\n' "$BUCKETS"
        for ((i = 0; i < n_extra; i++)); do
            printf '\n[[target]]\nname = "t%05d"\nregion = "bench"\nprobe = "icmp"\nhost = "%s"\n' "$i" "$(loopback_ip "$i")"
        done
    } >"$dir/regionprobe.toml"
    "$REGIONPROBE" --config "$dir/regionprobe.toml" check-config >/dev/null || die "regionprobe rejects its config"
    echo 'targets: []' >"$dir/smokeping_prober.yml"

    log "path $path, load $load: starting the probers"
    ip netns exec "$NS_A" "$REGIONPROBE" --config "$dir/regionprobe.toml" --log.level warn >"$dir/rp.log" 2>&1 &
    local rp=$!
    track_pid $rp
    ip netns exec "$NS_A" "$SMOKEPING" --config.file="$dir/smokeping_prober.yml" --privileged --ping.interval=1s \
        --web.listen-address="127.0.0.1:$sp_port" --log.level=warn --buckets="$BUCKETS" 10.77.0.12 \
        >"$dir/sp.log" 2>&1 &
    local sp=$!
    track_pid $sp
    local t_ping
    t_ping=$(now)
    ip netns exec "$NS_A" ping -D -i 1 10.77.0.11 >"$dir/ping.txt" 2>&1 &
    local pg=$!
    track_pid $pg
    wait_http_a "$rp" "$rp_port" regionprobe
    wait_http_a "$sp" "$sp_port" smokeping_prober
    if [[ $load == hammer ]]; then
        for ((c = 0; c < HAMMER_CLIENTS; c++)); do
            ip netns exec "$NS_A" python3 -c '
import sys, urllib.request
port = sys.argv[1]
while True:
    for path in ("/metrics", "/"):
        try:
            urllib.request.urlopen("http://127.0.0.1:%s%s" % (port, path), timeout=10).read()
        except Exception:
            pass' "$rp_port" &
            track_pid $!
        done
    fi
    pause "$WARMUP"
    local t0 t1
    t0=$(now)
    scrape_a $rp_port "$dir/rp0.txt"
    scrape_a $sp_port "$dir/sp0.txt"
    cp "$dir/emulator.json" "$dir/emu0.json"
    pause "$DURATION"
    t1=$(now)
    scrape_a $rp_port "$dir/rp1.txt"
    scrape_a $sp_port "$dir/sp1.txt"
    cp "$dir/emulator.json" "$dir/emu1.json"
    pause 3
    kill -INT "$pg" 2>/dev/null || true
    wait "$pg" 2>/dev/null || true
    helper record "$dir" "$path" "$load" "$t_ping" "$t0" "$t1" >>"$WORK/results.jsonl"
    stop_tracked
    teardown
}

cat >"$WORK/helper.py" <<'PY'
import json, math, re, statistics, sys
from lib import parse, total, bucket_delta, quantile, delta

def pct(values, q):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)

def ping_stats(path, t_ping, t0, t1):
    # "[1712345678.123456] 64 bytes from 10.77.0.11: icmp_seq=3 ttl=64 time=50.3 ms"
    replies = {}
    for line in open(path):
        m = re.search(r'icmp_seq=(\d+) .*time=([\d.]+) ms', line)
        if m:
            text = m.group(2)
            step = 10 ** -len(text.split('.')[1]) if '.' in text else 1
            replies[int(m.group(1))] = (float(text) + step / 2) / 1e3
    # seq k leaves at about t_ping + (k - 1) s: the window's requests by send time.
    first = math.ceil(t0 - t_ping) + 1
    last = math.floor(t1 - t_ping)
    seqs = range(first, last + 1)
    rtts = [replies[s] for s in seqs if s in replies]
    return dict(probes=len(seqs), ok=len(rtts), median=pct(rtts, .5), mean=statistics.mean(rtts) if rtts else None,
                p99=pct(rtts, .99))

def hist_stats(d, prefix, name, probes_name, **want):
    m0, m1 = parse(f'{d}/{prefix}0.txt'), parse(f'{d}/{prefix}1.txt')
    b = bucket_delta(m0, m1, name, **want)
    count = delta(m0, m1, name + '_count', **want)
    s = delta(m0, m1, name + '_sum', **want)
    probes = delta(m0, m1, probes_name, **want)
    return dict(probes=probes, ok=count, median=quantile(.5, b), mean=s / count if count else None,
                p99=quantile(.99, b))

def emulator(d, addr):
    e0, e1 = json.load(open(f'{d}/emu0.json')), json.load(open(f'{d}/emu1.json'))
    g = lambda e, k: e[k].get(addr, 0)
    seen = g(e1, 'seen') - g(e0, 'seen')
    dropped = sum(g(e1, k) - g(e0, k) for k in ('dropped_ab', 'dropped_ba'))
    return dropped / seen if seen else None, e1['late_us_max'] / 1e3

def record(d, path, load, t_ping, t0, t1):
    t_ping, t0, t1 = float(t_ping), float(t0), float(t1)
    rows = {}
    rows['ping'] = ping_stats(f'{d}/ping.txt', t_ping, t0, t1)
    rows['smokeping_prober'] = hist_stats(d, 'sp', 'smokeping_response_duration_seconds', 'smokeping_requests_total', ip='10.77.0.12')
    rows['regionprobe'] = hist_stats(d, 'rp', 'regionprobe_probe_duration_seconds', 'regionprobe_probes_total', target='path')
    for prober, addr in (('ping', '10.77.0.11'), ('smokeping_prober', '10.77.0.12'), ('regionprobe', '10.77.0.13')):
        rows[prober]['true_loss'], late = emulator(d, addr)
    print(json.dumps(dict(path=path, load=load, rows=rows, emulator_late_ms_max=late)))

def table(path):
    names = {'0': '0 ms', '25': '2x25 ms', '25j': '2x25 ms +-2 ms', '25l': '2x25 ms 5% loss'}
    ms = lambda v: '-' if v is None else '%.3f' % (v * 1e3)
    dms = lambda v, r: '-' if v is None or r is None else '%+.3f' % ((v - r) * 1e3)
    head = ['path', 'load', 'prober', 'probes', 'median', 'mean', 'p99', 'd median', 'd mean', 'd p99', 'loss %', 'true loss %']
    body = []
    for line in open(path):
        r = json.loads(line)
        ref = r['rows']['ping']
        for prober in ('ping', 'smokeping_prober', 'regionprobe'):
            x = r['rows'][prober]
            loss = '-' if not x['probes'] else '%.1f' % (100 * (1 - x['ok'] / x['probes']))
            true = '-' if x['true_loss'] is None else '%.1f' % (100 * x['true_loss'])
            body.append([names[r['path']], r['load'], prober, '%d' % x['probes'], ms(x['median']), ms(x['mean']), ms(x['p99']),
                         dms(x['median'], ref['median']), dms(x['mean'], ref['mean']), dms(x['p99'], ref['p99']), loss, true])
    widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
    for row in [head] + body:
        print('  '.join(str(c).rjust(w) if i > 2 else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print('(ms; d = minus ping in the same run; loss over the window vs the emulator\'s drops for that address)')

if sys.argv[1] == 'record':
    record(*sys.argv[2:])
else:
    table(sys.argv[2])
PY

{
    echo "# accuracy $(date -u +%FT%TZ)"
    host_line
    echo "regionprobe: $(regionprobe_version)"
    echo "ping: $(ping -V | head -1); smokeping_prober: $("$SMOKEPING" --version 2>&1 | head -1)"
    echo "DURATION=$DURATION WARMUP=$WARMUP PATHS=\"$PATHS\" LOADS=\"$LOADS\" EXTRA_TARGETS=$EXTRA_TARGETS HAMMER_CLIENTS=$HAMMER_CLIENTS"
} | tee "$OUT"
for load in $LOADS; do
    for path in $PATHS; do
        # A failed run (die) ends only itself; the others still run.
        (
            set -e
            trap 'stop_tracked' EXIT
            run_one "$path" "$load"
        ) || { log "path $path, load $load: FAILED"; FAILED=1; }
    done
done
echo "## table" | tee -a "$OUT"
helper table "$WORK/results.jsonl" | tee -a "$OUT"
exit "$FAILED"
