#!/usr/bin/env bash
# Reproduces the numbers in BENCHMARKS.md: builds release binaries, raises the open-file limit, installs
# Mosquitto for the side-by-side run, runs the load generator (which starts its own hub, and Mosquitto, on
# loopback ports) and writes bench/results.json (with the machine's facts) and bench/results.md.
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
# One command, every kind: methods, patches, idle connections, telemetry QoS 1 (1 and 8 in flight) and QoS 0
# side by side with Mosquitto, twin queries at 100k twins, a rollout to 10,000 devices.
target/release/fleethub-load --json bench/results.json --markdown bench/results.md all --seconds "$seconds"
