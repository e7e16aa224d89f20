#!/usr/bin/env bash
# Accuracy benchmark: regionprobe's ICMP round trips against iputils ping and Debian's
# prometheus-smokeping-prober, in one run, on the same emulated paths, with a packet capture as
# the exact reference.
#
# Usage (as root, from anywhere):
#   bench/accuracy.sh                         # the issue's run: 600 probes, every path and load (~35 min)
#   DURATION=60 bench/accuracy.sh             # shorter
#   PATHS="25" LOADS="none" DURATION=20 bench/accuracy.sh   # debug run
#
# Environment:
#   DURATION   measured seconds (= probes per prober and path) per run   (default 600)
#   WARMUP     seconds after start-up before the window opens       (default 5)
#   PATHS      paths, all run side by side in each run: 0 (no added delay), 25 (2 x 25 ms),
#              25j (2 x 25 ms, +-2 ms jitter), 25l (2 x 25 ms, 5% loss each way)
#                                                                   (default "0 25 25j 25l")
#   LOADS      one run each: none | targets (EXTRA_TARGETS more loopback ICMP targets on the
#              same regionprobe) | hammer (HAMMER_CLIENTS clients fetching /metrics and / of
#              regionprobe back to back)                             (default "none targets hammer")
#   EXTRA_TARGETS   (default 10000)        HAMMER_CLIENTS   (default 4)
#   QUIET_CORES, QUIET_MAX, KEEP_WORK as in bench/lib.sh
#
# Topology (built per run, deleted after it; nothing leaves the machine): two network
# namespaces, A (the probers) and B (the probed addresses), without default routes, joined by
# two TUN devices through the test kit's WAN emulator (`wan`, testkit/src/wan.rs: a reader and
# a writer thread per direction that spins to each packet's due time, at real-time priority).
# Every path of PATHS runs at once, each on addresses of its own (`wan --path`): path number i
# (0-based) has ping on 10.77.0.(20i+11), smokeping_prober on .(20i+12) and regionprobe on
# .(20i+13), all at 1 s. The extra targets are 127.1.Y.Z inside A.
#
# The reference: tcpdump in A on its TUN device (nanosecond stamps) sees every echo request
# leave and every reply arrive. A reply's capture stamp is the very stamp the prober's socket
# gets (the kernel stamps a packet once, on arrival, for every socket that asks), so:
#   * ping's own round trips are exact: the reply's stamp minus the send time ping wrote in its
#     payload (its printed times are rounded to 3 significant digits: 0.1 ms steps at 50 ms);
#   * the wire round trip of every prober's packets (reply stamp minus request stamp) is what
#     a perfect prober of that address would have measured.
# Figures per prober and path over the window: median, mean, p99; "d" = minus ping's in the
# same run (what the issue asks); "err" = minus the wire's for the prober's own packets; "d
# paired" = err minus ping's err: the difference between the probers with the draw of delays
# each one's packets got taken out (on the jitter path two probers' packets get different
# delays, and the medians of 600 of them differ by ~0.06 ms by chance alone). Loss against the
# emulator's true loss for that address ((dropped A->B + dropped B->A) / requests seen).
# regionprobe's and smokeping_prober's figures come from their histograms, given the same fine
# buckets (5 us up to 2 ms, 10 us from 45 to 60 ms): quantiles interpolated within a bucket,
# means exact (_sum / _count). Probes in flight at the window's edges: ping's window is chosen
# by send time; regionprobe counts a probe when it ends, so none is lost at an edge;
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
# The interpreter as /proc/PID/cmdline shows it (pyenv and venvs exec a resolved path): the hammer
# clients must match a STOPPABLE prefix to be stopped at the end of their run.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
STOPPABLE=("$REGIONPROBE " "$SMOKEPING " "$WAN " "ping " "$PYTHON -c" "python3 -c" "tcpdump ")

DURATION=${DURATION:-600}
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
install_missing ping:iputils-ping "$SMOKEPING:prometheus-smokeping-prober" ip:iproute2 tcpdump:tcpdump
warn_running "$SMOKEPING"
build_release
log "building the WAN emulator (cargo build --release -p regionprobe-testkit --bin wan)"
(cd "$ROOT" && cargo build --release --quiet -p regionprobe-testkit --bin wan) || die "building wan failed"
bench_workdir

# Bucket bounds shared by smokeping_prober and regionprobe's measured targets.
BUCKETS=$(python3 -c '
b = [i * 5e-6 for i in range(1, 401)]            # 5 us .. 2 ms
b += [i * 1e-3 for i in range(3, 45)]            # 3 .. 44 ms
b += [0.045 + i * 1e-5 for i in range(0, 1501)]  # 45 .. 60 ms by 10 us
b += [0.07, 0.1, 0.2, 0.5, 1.0]
print(",".join("%.6f" % x for x in b))')

# path_spec PATH: the emulator's DELAY_MS/JITTER_MS/LOSS for one path (both directions).
path_spec() {
    case $1 in
    0) echo "0" ;;
    25) echo "25" ;;
    25j) echo "25/2" ;;
    25l) echo "25/0/0.05" ;;
    esac
}

# addr I ROLE: the B-side address of path number I for ping (1), smokeping_prober (2) or
# regionprobe (3).
addr() { echo "10.77.0.$((20 * $1 + 10 + $2))"; }

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
    local load=$1 dir="$WORK/$1"
    mkdir -p "$dir"
    teardown
    wait_quiet
    log "load $load: building the paths ($PATHS)"
    ip netns add "$NS_A"
    ip netns add "$NS_B"
    local wan_paths=() i=0 p role
    for p in $PATHS; do
        for role in 1 2 3; do wan_paths+=(--path "$(addr $i $role)=$(path_spec "$p")"); done
        i=$((i + 1))
    done
    # Real-time priority: the emulator is the wire, and must not wait for a CPU behind the
    # probers it measures (with 10,000 targets regionprobe itself keeps a core busy in bursts).
    chrt --fifo 50 "$WAN" --a "$TUN_A" --b "$TUN_B" "${wan_paths[@]}" \
        --stats "$dir/emulator.json" >"$dir/forwarder.out" 2>"$dir/forwarder.err" &
    track_pid $!
    for _ in $(seq 50); do grep -q ready "$dir/forwarder.out" 2>/dev/null && break; sleep 0.1; done
    grep -q ready "$dir/forwarder.out" || die "forwarder did not start: $(cat "$dir/forwarder.err")"
    ip link set "$TUN_A" netns "$NS_A"
    ip link set "$TUN_B" netns "$NS_B"
    ip -n "$NS_A" link set lo up
    ip -n "$NS_B" link set lo up
    ip -n "$NS_A" addr add 10.77.0.1/24 dev "$TUN_A"
    ip -n "$NS_B" addr add 10.77.0.2/24 dev "$TUN_B"
    i=0
    for p in $PATHS; do
        for role in 1 2 3; do ip -n "$NS_B" addr add "$(addr $i $role)/32" dev "$TUN_B"; done
        i=$((i + 1))
    done
    ip -n "$NS_A" link set "$TUN_A" up
    ip -n "$NS_B" link set "$TUN_B" up
    in_a tcpdump -Z root -i "$TUN_A" -n -U -s 128 --time-stamp-precision=nano -w "$dir/capture.pcap" icmp \
        >"$dir/tcpdump.log" 2>&1 &
    track_pid $!
    local cap=$!

    local rp_port=19601 sp_port=19602 n_extra=0 hosts=()
    [[ $load == targets ]] && n_extra=$EXTRA_TARGETS
    {
        printf '[exporter]\nregion = "bench"\nlisten = "127.0.0.1:%s"\n\n' "$rp_port"
        printf '[defaults]\ninterval = "1s"\ntimeout = "1s"\n'
        i=0
        for p in $PATHS; do
            printf '\n[[target]]\nname = "path-%s"\nregion = "bench"\nprobe = "icmp"\nhost = "%s"\nbuckets = [%s]\n' \
                "$p" "$(addr $i 3)" "$BUCKETS"
            i=$((i + 1))
        done
        for ((i = 0; i < n_extra; i++)); do
            printf '\n[[target]]\nname = "t%05d"\nregion = "bench"\nprobe = "icmp"\nhost = "%s"\n' "$i" "$(loopback_ip "$i")"
        done
    } >"$dir/regionprobe.toml"
    "$REGIONPROBE" --config "$dir/regionprobe.toml" check-config >/dev/null || die "regionprobe rejects its config"
    echo 'targets: []' >"$dir/smokeping_prober.yml"
    i=0
    for p in $PATHS; do hosts+=("$(addr $i 2)"); i=$((i + 1)); done

    log "load $load: starting the probers"
    ip netns exec "$NS_A" "$REGIONPROBE" --config "$dir/regionprobe.toml" --log.level warn >"$dir/rp.log" 2>&1 &
    local rp=$!
    track_pid $rp
    ip netns exec "$NS_A" "$SMOKEPING" --config.file="$dir/smokeping_prober.yml" --privileged --ping.interval=1s \
        --web.listen-address="127.0.0.1:$sp_port" --log.level=warn --buckets="$BUCKETS" "${hosts[@]}" \
        >"$dir/sp.log" 2>&1 &
    local sp=$!
    track_pid $sp
    local pings=()
    i=0
    for p in $PATHS; do
        ip netns exec "$NS_A" ping -n -i 1 "$(addr $i 1)" >"$dir/ping-$p.txt" 2>&1 &
        pings+=($!)
        track_pid $!
        i=$((i + 1))
    done
    wait_http_a "$rp" "$rp_port" regionprobe
    wait_http_a "$sp" "$sp_port" smokeping_prober
    if [[ $load == hammer ]]; then
        for ((c = 0; c < HAMMER_CLIENTS; c++)); do
            ip netns exec "$NS_A" "$PYTHON" -c '
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
    for pg in "${pings[@]}"; do kill -INT "$pg" 2>/dev/null || true; done
    for pg in "${pings[@]}"; do wait "$pg" 2>/dev/null || true; done
    kill -TERM "$cap" 2>/dev/null || true  # tcpdump keeps the SIGINT a background job ignores
    wait "$cap" 2>/dev/null || true
    i=0
    for p in $PATHS; do
        helper record "$dir" "$p" "$load" "$t0" "$t1" "$(addr $i 1)" "$(addr $i 2)" "$(addr $i 3)" >>"$WORK/results.jsonl"
        i=$((i + 1))
    done
    stop_tracked
    teardown
}

cat >"$WORK/helper.py" <<'PY'
import json, math, socket, statistics, struct, sys
from lib import parse, bucket_delta, quantile, delta

def pct(values, q):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)

def summary(values):
    return dict(median=pct(values, .5), mean=statistics.mean(values) if values else None, p99=pct(values, .99))

def capture(path):
    """Echo requests and replies on A's TUN device: {(b_addr, id, seq): [t_request, t_reply, payload]}."""
    data = open(path, 'rb').read()
    magic = struct.unpack('<I', data[:4])[0]
    endian = '<' if magic in (0xa1b2c3d4, 0xa1b23c4d) else '>'
    magic = struct.unpack(endian + 'I', data[:4])[0]
    scale = 1e-9 if magic == 0xa1b23c4d else 1e-6
    linktype = struct.unpack(endian + 'I', data[20:24])[0]
    skip = {101: 0, 12: 0, 14: 0, 228: 0, 1: 14, 113: 16, 276: 20}.get(linktype, 0)
    pairs = {}
    at = 24
    while at + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(endian + 'IIII', data[at:at + 16])
        pkt = data[at + 16 + skip:at + 16 + incl]
        at += 16 + incl
        t = sec + frac * scale
        if len(pkt) < 28 or pkt[0] >> 4 != 4 or pkt[9] != 1:
            continue
        ihl = (pkt[0] & 15) * 4
        icmp = pkt[ihl:]
        if len(icmp) < 8:
            continue
        kind = icmp[0]
        ident, seq = struct.unpack('>HH', icmp[4:8])
        if kind == 8:
            key = (socket.inet_ntoa(pkt[16:20]), ident, seq)
            pairs.setdefault(key, [None, None, None])[0] = t
        elif kind == 0:
            key = (socket.inet_ntoa(pkt[12:16]), ident, seq)
            entry = pairs.setdefault(key, [None, None, None])
            entry[1] = t
            entry[2] = icmp[8:24]
    return pairs

def wire(pairs, addr, lo, hi, by_reply):
    """Wire round trips of addr's packets: those whose reply (or request) falls in [lo, hi]."""
    out = []
    for (a, _, _), (tq, tr, _) in pairs.items():
        if a != addr or tq is None or tr is None:
            continue
        t = tr if by_reply else tq
        if lo <= t <= hi:
            out.append(tr - tq)
    return out

def ping_stats(pairs, addr, t0, t1):
    """ping's own round trips, exact: reply stamp minus the send time in its payload."""
    sent = own = 0
    rtts, wires = [], []
    for (a, _, _), (tq, tr, payload) in pairs.items():
        if a != addr or tq is None or not (t0 <= tq <= t1):
            continue
        sent += 1
        if tr is None or payload is None or len(payload) < 16:
            continue
        sec, usec = struct.unpack('<qq', payload)
        rtts.append(tr - (sec + usec / 1e6))
        wires.append(tr - tq)
    return dict(probes=sent, ok=len(rtts), **summary(rtts)), wires

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
    return dropped / seen if seen else None, e1['late_us_max'] / 1e3, e1['late_us_p99'] / 1e3

def record(d, path, load, t0, t1, a_ping, a_sp, a_rp):
    t0, t1 = float(t0), float(t1)
    pairs = capture(f'{d}/capture.pcap')
    rows = {}
    rows['ping'], ping_wire = ping_stats(pairs, a_ping, t0, t1)
    rows['ping']['wire'] = summary(ping_wire)
    rows['smokeping_prober'] = hist_stats(d, 'sp', 'smokeping_response_duration_seconds', 'smokeping_requests_total', ip=a_sp)
    rows['smokeping_prober']['wire'] = summary(wire(pairs, a_sp, t0, t1, True))
    rows['regionprobe'] = hist_stats(d, 'rp', 'regionprobe_probe_duration_seconds', 'regionprobe_probes_total', target='path-' + path)
    rows['regionprobe']['wire'] = summary(wire(pairs, a_rp, t0, t1, True))
    for prober, addr in (('ping', a_ping), ('smokeping_prober', a_sp), ('regionprobe', a_rp)):
        rows[prober]['true_loss'], late_max, late_p99 = emulator(d, addr)
    print(json.dumps(dict(path=path, load=load, rows=rows, emulator_late_ms_max=late_max, emulator_late_ms_p99=late_p99)))

def table(path):
    names = {'0': '0 ms', '25': '2x25 ms', '25j': '2x25 ms +-2 ms', '25l': '2x25 ms 5% loss'}
    ms = lambda v: '-' if v is None else '%.3f' % (v * 1e3)
    dms = lambda v, r: '-' if v is None or r is None else '%+.3f' % ((v - r) * 1e3)
    err = lambda x, k: None if x[k] is None or x['wire'][k] is None else x[k] - x['wire'][k]
    head = ['path', 'load', 'prober', 'probes', 'median', 'mean', 'p99', 'd median', 'd mean', 'd p99',
            'err median', 'err p99', 'd paired median', 'd paired p99', 'loss %', 'true loss %']
    body, late = [], []
    for line in open(path):
        r = json.loads(line)
        late.append('%s/%s: p99 %.3f ms, max %.3f ms' % (r['load'], r['path'], r['emulator_late_ms_p99'], r['emulator_late_ms_max']))
        ref = r['rows']['ping']
        for prober in ('ping', 'smokeping_prober', 'regionprobe'):
            x = r['rows'][prober]
            loss = '-' if not x['probes'] else '%.1f' % (100 * (1 - x['ok'] / x['probes']))
            true = '-' if x['true_loss'] is None else '%.1f' % (100 * x['true_loss'])
            paired = lambda k: None if err(x, k) is None or err(ref, k) is None else err(x, k) - err(ref, k)
            body.append([names[r['path']], r['load'], prober, '%d' % x['probes'], ms(x['median']), ms(x['mean']), ms(x['p99']),
                         dms(x['median'], ref['median']), dms(x['mean'], ref['mean']), dms(x['p99'], ref['p99']),
                         dms(err(x, 'median'), 0), dms(err(x, 'p99'), 0), dms(paired('median'), 0), dms(paired('p99'), 0),
                         loss, true])
    widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
    for row in [head] + body:
        print('  '.join(str(c).rjust(w) if i > 2 else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print('(ms; d = minus ping in the same run; err = minus the wire round trip of the prober\'s own packets '
          '(capture); d paired = err minus ping\'s err; loss over the window vs the emulator\'s drops for that address)')
    print('emulator lateness: ' + '; '.join(late))

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
    # A failed run (die) ends only itself; the others still run.
    (
        set -e
        trap 'stop_tracked' EXIT
        run_one "$load"
    ) || { log "load $load: FAILED"; FAILED=1; }
done
echo "## table" | tee -a "$OUT"
helper table "$WORK/results.jsonl" | tee -a "$OUT"
exit "$FAILED"
