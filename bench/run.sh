#!/usr/bin/env bash
# Reproduces every number in BENCHMARKS.md: builds release binaries, raises the open-file limit, runs the
# load generator (which starts its own hub on loopback ports) and writes bench/results.json plus a Markdown
# table on stdout. Usage: bench/run.sh [seconds per measurement, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
cargo build --release --locked -p fleethub -p fleethub-load
# 10,000 device connections need 10,000 sockets in the hub and as many in the load generator.
ulimit -n "$(ulimit -Hn)"
echo "rustc: $(rustc --version)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
target/release/fleethub-load --json bench/results.json all --seconds "$seconds"
