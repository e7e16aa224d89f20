#!/usr/bin/env bash
# Container images ranked by start latency: the final stage of docker/Dockerfile built on three
# bases, each started RUNS times, timed from `docker run` to the first HTTP 200 on /metrics.
#
# Usage (as root, from anywhere):
#   bench/image_latency.sh                 # RUNS=9
#   RUNS=3 bench/image_latency.sh          # quick
#
# Environment:
#   RUNS          measured starts per variant (default 9); one unmeasured warm-up start first
#   VARIANTS      which variants, in order (default "scratch distroless debian-slim")
#   KEEP_IMAGES   1: keep the regionprobe-bench:* images afterwards
#
# Variants (same static binary, same /etc/regionprobe/exporter.toml, same non-root user):
#   scratch       docker/Dockerfile as shipped
#   distroless    docker/variants/distroless.Dockerfile  (gcr.io/distroless/static-debian12)
#   debian-slim   docker/variants/debian-slim.Dockerfile (debian:bookworm-slim)
# The variants reuse the builder stage (`docker build --target builder`), so only the final
# stage differs. Without a registry, docker/make-base-images.sh provides the base images (it
# runs first; it does nothing when they exist).
#
# Per start: `docker run -d -p 127.0.0.1:PORT:9537 IMAGE`, then `curl /metrics` every 5 ms
# until 200. Columns: image size (docker image inspect), median / min / max of the time to the
# first 200, and the median time `docker run -d` itself took (container create + start, which
# dominates). Variants run alternately (start 1 of each, then start 2 of each, ...), so a
# change in machine load touches them all alike. The table is also written to
# bench/out/image_latency-<timestamp>.txt. A benchmark, not a test: `cargo test` never runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-9}
VARIANTS=${VARIANTS:-"scratch distroless debian-slim"}
PREFIX=regionprobe-bench
OUT_DIR=bench/out
mkdir -p "$OUT_DIR"
OUT="$OUT_DIR/image_latency-$(date -u +%Y%m%dT%H%M%SZ).txt"

[ "$(id -u)" = 0 ] || { echo "run as root (docker)" >&2; exit 1; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }
log() { printf '[image_latency] %s\n' "$*" >&2; }

cleanup() {
  docker ps -aq --filter "label=regionprobe.bench=$$" | xargs -r docker rm -f >/dev/null 2>&1 || true
  if [ "${KEEP_IMAGES:-0}" != 1 ]; then
    for v in $VARIANTS; do docker rmi "$PREFIX:$v" >/dev/null 2>&1 || true; done
    # --no-prune: the builder's layers are docker/Dockerfile's build cache.
    docker rmi --no-prune "$PREFIX:builder" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

bash docker/make-base-images.sh >&2

build() {
  local started errors
  started=$(now_ms)
  errors=$(mktemp)
  # The engine's legacy builder warns about itself on every build: stderr only on failure.
  docker build -q --force-rm "$@" >/dev/null 2>"$errors" || { cat "$errors" >&2; rm -f "$errors"; exit 1; }
  rm -f "$errors"
  log "built ${*: -2:1} in $(($(now_ms) - started)) ms"
}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
build --network host -f docker/Dockerfile --target builder -t "$PREFIX:builder" .
for v in $VARIANTS; do
  case $v in
    scratch) build --network host -f docker/Dockerfile --build-arg "VERSION=$version" -t "$PREFIX:$v" . ;;
    *) build -f "docker/variants/$v.Dockerfile" --build-arg "BUILDER=$PREFIX:builder" -t "$PREFIX:$v" docker/variants ;;
  esac
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start VARIANT: sets READY_MS (docker run -> first 200) and RUN_MS (docker run -d alone).
start() {
  local variant=$1 name="$PREFIX-$1-$$" port t0 t1 t2
  port=$(free_port)
  t0=$(now_ms)
  docker run -d --name "$name" --label "regionprobe.bench=$$" -p "127.0.0.1:$port:9537" "$PREFIX:$variant" >/dev/null
  t1=$(now_ms)
  until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/metrics" 2>/dev/null; do
    if [ $(($(now_ms) - t0)) -gt 30000 ]; then
      log "$variant: no /metrics after 30 s"; docker logs "$name" >&2; exit 1
    fi
    sleep 0.005
  done
  t2=$(now_ms)
  docker rm -f "$name" >/dev/null
  READY_MS=$((t2 - t0))
  RUN_MS=$((t1 - t0))
}

declare -A ready run
for v in $VARIANTS; do start "$v"; done   # warm-up
for i in $(seq 1 "$RUNS"); do
  for v in $VARIANTS; do
    start "$v"
    ready[$v]+="$READY_MS "
    run[$v]+="$RUN_MS "
  done
  log "round $i/$RUNS done"
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
minimum() { tr ' ' '\n' | grep . | sort -n | head -n 1; }
maximum() { tr ' ' '\n' | grep . | sort -n | tail -n 1; }

rows=""
for v in $VARIANTS; do
  size=$(docker image inspect -f '{{.Size}}' "$PREFIX:$v")
  rows+=$(printf '%s %s %s %s %s %s' "$(median <<<"${ready[$v]}")" "$v" \
    "$(awk -v b="$size" 'BEGIN {printf "%.1f", b / 1e6}')" \
    "$(minimum <<<"${ready[$v]}")" "$(maximum <<<"${ready[$v]}")" "$(median <<<"${run[$v]}")")$'\n'
done

{
  echo "# regionprobe image start latency: $RUNS starts per variant, $(date -u +%FT%TZ), $(nproc) cores, docker $(docker version -f '{{.Server.Version}}')"
  echo
  echo "| rank | variant | image size | docker run -> first /metrics (median) | min | max | of which \`docker run -d\` (median) |"
  echo "|---|---|---|---|---|---|---|"
  rank=0
  while read -r med v size lo hi d; do
    [ -n "$med" ] || continue
    rank=$((rank + 1))
    echo "| $rank | $v | $size MB | $med ms | $lo ms | $hi ms | $d ms |"
  done < <(sort -n <<<"$rows")
} | tee "$OUT"
log "written to $OUT"
