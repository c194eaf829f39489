#!/usr/bin/env bash
# A long fuzzing campaign: RUNS executions (10^7 by default) of each target, one process at a time, on one
# core, each into a scratch corpus seeded from the committed one. Prints one line per target with the
# executions run clean and their rate; stops at the first target that breaks a promise (libFuzzer writes
# the input to fuzz/artifacts/<target>/). Merge what adds coverage afterwards as README.md says.
#
#   fuzz/campaign.sh [RUNS] [TARGET...]        (from the repository root)
#
# SANITIZER (default address) is cargo fuzz's --sanitizer: `none` runs several times faster, and loses
# little here: every crate of the workspace forbids `unsafe`, so what AddressSanitizer would catch in our
# code the Rust runtime already does (panics are what the targets report). MAX_LEN, when set, caps input
# length (libFuzzer's -max_len).
set -euo pipefail
sanitizer="${SANITIZER:-address}"
max_len=()
[ -n "${MAX_LEN:-}" ] && max_len=(-max_len="$MAX_LEN")
runs="${1:-10000000}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(mqtt_decode topic_parse sas_token connection_string query_parse route_condition twin_patch
        eventlog_record)
fi
for target in "${targets[@]}"; do
    work="/tmp/fleethub-fuzz/$target"
    mkdir -p "$work"
    dict=()
    case "$target" in
        mqtt_decode) dict=(-dict=fuzz/mqtt.dict) ;;
        query_parse) dict=(-dict=fuzz/query.dict) ;;
        route_condition) dict=(-dict=fuzz/route.dict) ;;
    esac
    log="$work.log"
    RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer "$sanitizer" "$target" "$work" "fuzz/corpus/$target" -- \
        -runs="$runs" -print_final_stats=1 "${dict[@]}" "${max_len[@]}" >"$log" 2>&1 || {
        echo "$target: broke a promise, see $log and fuzz/artifacts/$target/" >&2
        exit 1
    }
    executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    echo "$target: $executed executions clean, $rate exec/s (sanitizer $sanitizer${MAX_LEN:+, max_len $MAX_LEN})"
done
