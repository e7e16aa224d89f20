#!/usr/bin/env bash
# The failover drill (tests/failover_drill/main.rs), by hand.
#
#   scripts/failover-drill.sh [TEST ARGS...]      # as yourself (asks sudo for what needs root)
#   sudo scripts/failover-drill.sh                 # or as root, if root has cargo in its PATH
#
# Three network namespaces as regions a, b and c on one bridge, a regionprobe sidecar in each
# probing the other two (ICMP, TCP, HTTP, HTTPS), the real Prometheus (Debian `prometheus`)
# with dashboards/rules/ and the real Alertmanager (Debian `prometheus-alertmanager`) with
# dashboards/alertmanager.yml sending to a webhook receiver in the test. Every dashboard query
# must return data; then c is cut off (its bridge port down), "region unreachable" must fire
# and reach the webhook, c must rank last and a, b fail over to each other; then c comes back
# and the alert must resolve. Prints each step's time; takes about 2.5 minutes.
#
# Needs Linux and root (network namespaces). Installs what is missing with apt-get
# (prometheus, prometheus-alertmanager, iproute2; Debian starts their services on install,
# which does not disturb the drill: it runs its own on 127.0.0.1, port 0). Builds the test
# as the invoking user, runs it as root with REGIONPROBE_REQUIRE_PRIVILEGED_TESTS=1 (a missing
# piece fails instead of skipping). TEST ARGS go to the test binary.
#
# Everything the drill creates is named after its process id: namespaces rpfd<pid>{a,b,c,bb},
# the interface rpfd<pid>r (10.208.0.0/16), temp dirs /tmp/regionprobe-test-failover-drill-<pid>-*.
# The test removes them itself, also when it fails; after an interrupted run (Ctrl-C) this
# script removes those of drills whose process is gone.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi

need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null ||
  need+=(prometheus-alertmanager)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)   # the drill's database (issue 16)
if ((${#need[@]})); then
  echo "==> installing ${need[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Leftovers of drills whose process is gone: what runs in their namespaces, the namespaces,
# the root end of their uplink, their temp dirs.
cleanup_stale() {
  local ns link pid
  for ns in $("${SUDO[@]}" ip netns list | awk '{print $1}' | grep -E '^rpfd[0-9]+(bb|[a-z])$' || true); do
    pid=$(sed -E 's/^rpfd([0-9]+)(bb|[a-z])$/\1/' <<<"$ns")
    [ -d "/proc/$pid" ] && continue
    echo "==> removing namespace $ns (left by drill $pid)"
    "${SUDO[@]}" ip netns pids "$ns" | xargs -r "${SUDO[@]}" kill 2>/dev/null || true
    "${SUDO[@]}" ip netns del "$ns" || true
  done
  for link in $(ip -o link show | grep -oE 'rpfd[0-9]+r' | sort -u || true); do
    pid=${link#rpfd}; pid=${pid%r}
    [ -d "/proc/$pid" ] && continue
    "${SUDO[@]}" ip link del "$link" 2>/dev/null || true
  done
  for dir in /tmp/regionprobe-test-failover-drill-*; do
    [ -e "$dir" ] || continue
    pid=$(sed -E 's/.*-drill-([0-9]+)-[0-9]+$/\1/' <<<"$dir")
    [ -d "/proc/$pid" ] || "${SUDO[@]}" rm -rf "$dir"
  done
}
cleanup_stale

command -v cargo >/dev/null || {
  echo "cargo is not in PATH (under sudo: run the script as yourself, it uses sudo itself)" >&2
  exit 1
}
echo "==> building"
exe=$(cargo test --locked --test failover_drill --no-run --message-format=json |
  grep -oE '"executable":"[^"]*/failover_drill-[0-9a-f]+"' | cut -d'"' -f4 | tail -n 1)
[ -x "$exe" ] || { echo "no test executable found" >&2; exit 1; }

echo "==> running the drill ($exe)"
# In the foreground: Ctrl-C reaches the drill and everything it started; then the trap
# removes what its guards could not.
trap cleanup_stale EXIT
"${SUDO[@]}" env REGIONPROBE_REQUIRE_PRIVILEGED_TESTS=1 \
  "$exe" --ignored --exact failover_drill --nocapture "$@"
