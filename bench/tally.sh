#!/usr/bin/env bash
# The ranking's per-second tally, alone: one ranking of 1,000 ICMP targets whose 5-minute
# windows at 1 s are full (300 samples each), timed over 200 rankings, release build.
# The engine is private to the crate, so the benchmark is an ignored unit test; this script is
# how it is run. A benchmark, not a test: cargo test never runs it.
#
# Usage: bench/tally.sh            (run it three times for the spread)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo test --release --lib tally_bench -- --ignored --nocapture --test-threads 1
