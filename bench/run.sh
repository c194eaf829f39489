#!/usr/bin/env bash
# Reproduces the numbers in BENCHMARKS.md: builds release binaries, raises the open-file limit, installs
# Mosquitto for the side-by-side run, runs the load generator (which starts its own hub, and Mosquitto, on
# loopback ports) and writes bench/results*.json plus Markdown tables on stdout.
# Usage: bench/run.sh [seconds per measurement, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
cargo build --release --locked -p fleethub -p fleethub-load
# 10,000 device connections need 10,000 sockets in the hub and as many in the load generator.
ulimit -n "$(ulimit -Hn)"
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq mosquitto
fi
echo "rustc: $(rustc --version)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
echo "mosquitto: $( (/usr/sbin/mosquitto -h 2>/dev/null || mosquitto -h 2>/dev/null || true) | head -1)"
target/release/fleethub-load --json bench/results.json all --seconds "$seconds"
target/release/fleethub-load --json bench/results-telemetry.json telemetry-vs-mosquitto --devices 1000 --in-flight 1 --seconds "$seconds"
target/release/fleethub-load --json bench/results-telemetry-8.json telemetry-vs-mosquitto --devices 1000 --in-flight 8 --seconds "$seconds"
