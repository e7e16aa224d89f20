#!/usr/bin/env bash
# ICMP A/B: two or more regionprobe builds at once, side by side, each in a network namespace
# of its own, on the same N loopback targets at 1 s; prints the CPU (cores) and RSS of each.
#
# Usage (as root): bench/icmp_ab.sh N WARMUP_S MEASURE_S BIN [BIN...]
#   e.g. bench/icmp_ab.sh 1000 90 60 /tmp/main /tmp/branch /tmp/main /tmp/branch
#
# Why side by side: at 1,000 targets a process uses 2-3% of a core, and one run alone moves by
# 20% from one minute to the next on a KVM guest; processes that run at the same time share the
# machine's state. Why a namespace each: a raw ICMP socket gets a copy of every ICMP packet of
# its namespace, so processes in one namespace also pay for each other's packets (docs/scale.md,
# "Eighth round"). Each namespace has only `lo` (no route anywhere else): no packet leaves.
# CPU is read from /proc/PID/task/*/schedstat (nanoseconds, every thread), not from the ticks
# of /proc/PID/stat (10 ms each, too coarse at 2% of a core).
#
# A benchmark, not a test: cargo test never runs it.
set -euo pipefail

if (($# < 4)); then
    sed -n '2,4p' "$0" >&2
    exit 2
fi
n=$1 warm=$2 secs=$3
shift 3
BENCH=icmp_ab
STOPPABLE=("$@")
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
((EUID == 0)) || die "needs root (network namespaces, raw ICMP sockets)"

cpu_ns() { awk '{ s += $1 } END { printf "%.0f\n", s }' /proc/"$1"/task/*/schedstat 2>/dev/null; }

WORK=$(mktemp -d)
namespaces=()
cleanup_namespaces() { for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done; }
# The processes first (lib.sh's cleanup), then their namespaces, on every exit.
trap 'status=$?; KEEP_PIDS="" stop_tracked; cleanup_namespaces; (exit $status); bench_cleanup' EXIT
pids=()
k=0
for bin in "$@"; do
    k=$((k + 1))
    ns="rpab-$$-$k"
    ip netns add "$ns"
    namespaces+=("$ns")
    ip netns exec "$ns" ip link set lo up
    port=$((19100 + k))
    regionprobe_icmp_config "$WORK/$k.toml" "$n" "$port"
    ip netns exec "$ns" "$bin" --config "$WORK/$k.toml" --log.level warn >"$WORK/$k.log" 2>&1 &
    pids+=($!)
    track_pid "$!"
done
log "$# processes of $n targets each; warm-up ${warm}s, then ${secs}s measured"
sleep "$warm"
c0=()
for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "a process exited during the warm-up: $(cat "$WORK"/*.log)"
    c0+=("$(cpu_ns "$pid")")
done
t0=$(date +%s.%N)
sleep "$secs"
t1=$(date +%s.%N)
i=0
for bin in "$@"; do
    pid=${pids[$i]}
    c1=$(cpu_ns "$pid")
    rss=$(awk '/^VmRSS/ { print $2 }' /proc/"$pid"/status)
    awk -v bin="$bin" -v a="$c1" -v b="${c0[$i]}" -v t1="$t1" -v t0="$t0" -v rss="$rss" \
        'BEGIN { printf "%-40s %.4f cores  %.1f MiB\n", bin, (a - b) / 1e9 / (t1 - t0), rss / 1024 }'
    i=$((i + 1))
done
