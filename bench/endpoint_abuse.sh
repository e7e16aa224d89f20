#!/usr/bin/env bash
# The endpoint under abuse (issue 12, items 5-8): what clients of the HTTP server can do to the
# probes, the memory, the file descriptors and the scraper's login. Release build, loopback only.
#
# Usage (as root, from anywhere):
#   bench/endpoint_abuse.sh                  # every part, about 3 minutes
#   PARTS="rtt login" bench/endpoint_abuse.sh
#
# Parts (PARTS, default "rtt readers nofile login"):
#   rtt      N_RTT (500) ICMP targets on 127.1.Y.Z at 1 s, [ranking] window = WINDOW (20 s):
#            the median RTT of the window (exact, /api/v1/ranking p50_seconds) idle, then
#            while wrk -c4 requests `/` for WINDOW s. Goal: the medians within 0.05 ms.
#   readers  N_READERS (5000) TCP targets (1 h interval: the series exist, nothing probes) and
#            40 clients that request /metrics (no gzip, ~17 MB) with a 4 KiB receive buffer and
#            never read; RSS before, at most during READ_HOLD (20) s, and 5 s after they close.
#   nofile   regionprobe under `prlimit --nofile=1024:1024` with 50 TCP targets at 1 s on a
#            local listener; 1,100 idle connections for 10 s: probe failures in those 10 s,
#            connections the server kept (process_open_fds), and one scrape's latency.
#   login    [web] basic auth, bcrypt cost 10, 8 users with the same password; wrk -c512
#            with a wrong password for FLOOD (20) s; after 5 s, one login per user not yet
#            cached (each its first) and one cached login, each timed with curl.
#            Goal: every correct login within 1 s.
# Raw output: bench/out/endpoint_abuse-<timestamp>.txt. A benchmark, not a test.

set -euo pipefail

BENCH=endpoint_abuse
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PYTHON=$(python3 -c 'import sys; print(sys.executable)')   # as /proc/PID/cmdline shows it
STOPPABLE=("$REGIONPROBE " "wrk " "$PYTHON " "python3 " "prlimit ")

PARTS=${PARTS:-"rtt readers nofile login"}
N_RTT=${N_RTT:-500}
N_READERS=${N_READERS:-5000}
WINDOW=${WINDOW:-20}
READ_HOLD=${READ_HOLD:-20}
FLOOD=${FLOOD:-20}

require_root "raw ICMP sockets, prlimit and apt-get"
install_missing wrk:wrk htpasswd:apache2-utils prlimit:util-linux
build_release
bench_workdir
QUIET_NOTE="not checked"
wait_quiet

{
    echo "# endpoint_abuse $STAMP"
    host_line
    echo "regionprobe: $(regionprobe_version)"
    echo "PARTS=\"$PARTS\" N_RTT=$N_RTT N_READERS=$N_READERS WINDOW=$WINDOW READ_HOLD=$READ_HOLD FLOOD=$FLOOD"
    echo "before the start: $QUIET_NOTE"
} >"$OUT"
report() { echo "$*" | tee -a "$OUT"; }

# start CONFIG [PREFIX...]: regionprobe on CONFIG; sets PID and waits for /-/healthy on PORT.
start() {
    local config=$1
    shift
    "$@" "$REGIONPROBE" --config "$config" --log.level warn >"$WORK/stdout.log" 2>>"$WORK/stderr.log" &
    PID=$!
    track_pid "$PID"
    STARTUP_TIMEOUT=60 wait_http "$PID" "http://127.0.0.1:$PORT/-/healthy" regionprobe "$WORK/stderr.log"
}
stop() { stop_pid "$PID"; }
metric() { # metric NAME: the sum of NAME's series in one scrape
    curl -sf --max-time 30 "http://127.0.0.1:$PORT/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%g\n", s }'
}
tcp_targets() { # tcp_targets N PORT INTERVAL
    local i
    for ((i = 0; i < $1; i++)); do
        printf '\n[[target]]\nname = "t%05d"\nregion = "r%d"\nprobe = "tcp"\naddress = "127.0.0.1:%s"\ninterval = "%s"\ntimeout = "1s"\n' \
            "$i" $((i % 3)) "$2" "$3"
    done
}
header() { printf '[exporter]\nregion = "bench"\nlisten = "127.0.0.1:%s"\n' "$PORT"; }

part_rtt() {
    PORT=$(free_port)
    regionprobe_icmp_config "$WORK/rtt.toml" "$N_RTT" "$PORT"
    printf '\n[ranking]\nwindow = "%ss"\n' "$WINDOW" >>"$WORK/rtt.toml"
    start "$WORK/rtt.toml"
    pause $((WINDOW + 2))
    local idle loaded rps
    p50() { curl -sf "http://127.0.0.1:$PORT/api/v1/ranking" | python3 -c 'import json,sys; r=json.load(sys.stdin)["regions"]; print("%.4f" % (1000*r[0]["p50_seconds"]))'; }
    idle=$(p50)
    wrk -t1 -c4 -d"${WINDOW}s" "http://127.0.0.1:$PORT/" >"$WORK/wrk-rtt.txt" 2>&1
    loaded=$(p50)
    rps=$(awk '/Requests\/sec/ { print $2 }' "$WORK/wrk-rtt.txt")
    stop
    report "rtt: $N_RTT ICMP targets, median RTT over ${WINDOW} s: idle $idle ms; with wrk -c4 on / ($rps req/s) $loaded ms; difference $(awk -v a="$idle" -v b="$loaded" 'BEGIN { printf "%+.4f", b - a }') ms (goal: within 0.05 ms)"
}

part_readers() {
    PORT=$(free_port)
    local closed
    closed=$(free_port)
    { header; tcp_targets "$N_READERS" "$closed" 1h; } >"$WORK/readers.toml"
    start "$WORK/readers.toml"
    local size before peak after
    size=$(curl -sf -o /dev/null -w '%{size_download}' "http://127.0.0.1:$PORT/metrics")
    before=$(status_kib "$PID" VmRSS)
    python3 - "$PORT" "$READ_HOLD" >"$WORK/readers.txt" 2>&1 <<'PY' &
import socket, sys, time
port, hold = int(sys.argv[1]), float(sys.argv[2])
socks = []
for i in range(40):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
    time.sleep(0.6)  # past the 500 ms a rendering is shared for: 40 different renderings
time.sleep(hold)
PY
    local readers=$!
    track_pid "$readers"
    peak=$before
    while kill -0 "$readers" 2>/dev/null; do
        local rss
        rss=$(status_kib "$PID" VmRSS)
        ((rss > peak)) && peak=$rss
        sleep 0.5
    done
    pause 5
    after=$(status_kib "$PID" VmRSS)
    stop
    report "readers: $N_READERS targets, /metrics $((size / 1024)) KiB; 40 clients that never read for 24+${READ_HOLD} s: RSS $((before / 1024)) MiB before, $((peak / 1024)) MiB at most, $((after / 1024)) MiB 5 s after they closed"
}

part_nofile() {
    PORT=$(free_port)
    local sink
    sink=$(free_port)
    python3 - "$sink" <<'PY' >/dev/null 2>&1 &
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()
PY
    track_pid $!
    { header; tcp_targets 50 "$sink" 1s; } >"$WORK/nofile.toml"
    start "$WORK/nofile.toml" prlimit --nofile=1024:1024
    pause 3
    local f0 f1 fds took
    f0=$(metric regionprobe_probe_failures_total)
    python3 - "$PORT" <<'PY' >"$WORK/idle.txt" 2>&1 &
import socket, sys, time
socks = []
for i in range(1100):
    try:
        socks.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2))
    except OSError as e:
        print("connect", i, e)
time.sleep(12)
PY
    local idle=$!
    track_pid "$idle"
    pause 10
    took=$(curl -sf -o /dev/null -w '%{time_total}' --max-time 10 "http://127.0.0.1:$PORT/metrics" || echo failed)
    f1=$(metric regionprobe_probe_failures_total)
    fds=$(metric process_open_fds)
    wait "$idle" 2>/dev/null || true
    stop
    report "nofile: nofile 1024, 50 TCP targets at 1 s, 1,100 idle connections for 10 s: $(awk -v a="$f0" -v b="$f1" 'BEGIN { print b - a }') probe failures; process_open_fds $fds; a scrape during it took ${took} s"
}

part_login() {
    PORT=$(free_port)
    local hash users="" u
    hash=$(htpasswd -nbBC 10 "" correct | tr -d ':\n')
    for u in 1 2 3 4 5 6 7 8; do users+="u$u = \"$hash\""$'\n'; done
    { header; printf '\n[web]\nhealth_without_auth = true\n\n[web.basic_auth_users]\n%s' "$users"; } >"$WORK/login.toml"
    start "$WORK/login.toml"
    curl -sf -o /dev/null -u u8:correct "http://127.0.0.1:$PORT/metrics"
    local wrong
    wrong=$(printf 'u1:wrong' | base64)
    wrk -t2 -c512 -d"${FLOOD}s" -H "Authorization: Basic $wrong" "http://127.0.0.1:$PORT/metrics" >"$WORK/wrk-login.txt" 2>&1 &
    local flood=$!
    track_pid "$flood"
    pause 5
    local times=() worst=0 t code
    for u in 1 2 3 4 5 6 7; do
        read -r code t < <(curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 30 -u "u$u:correct" "http://127.0.0.1:$PORT/metrics")
        times+=("u$u:$code/${t}s")
        awk -v t="$t" -v w="$worst" 'BEGIN { exit !(t > w) }' && worst=$t
        pause 1
    done
    read -r code t < <(curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 30 -u u8:correct "http://127.0.0.1:$PORT/metrics")
    wait "$flood" 2>/dev/null || true
    local rps
    rps=$(awk '/Requests\/sec/ { print $2 }' "$WORK/wrk-login.txt")
    stop
    report "login: wrk -c512 wrong password ($rps req/s); first (uncached) correct logins: ${times[*]}; worst ${worst} s (goal: < 1 s); cached login: $code/${t}s"
}

for part in $PARTS; do
    case $part in
        rtt | readers | nofile | login) log "part $part"; "part_$part" ;;
        *) die "unknown part '$part' (rtt, readers, nofile, login)" ;;
    esac
done
echo "## table" >>"$OUT"
echo "raw figures: $OUT"
