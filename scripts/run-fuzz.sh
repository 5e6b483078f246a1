#!/bin/sh
# run-fuzz.sh — runs the libFuzzer targets built by `make fuzz-build` (build-fuzz/) for
# FUZZ_SECONDS each, on a temp copy of their seed corpus (tests/fuzz/corpus/<name>) with
# their dictionary (tests/fuzz/<name>.dict), and prints one TAP line per target:
#   ok - fuzz_http: 60 s, 123456 runs (2057/s), no crash
#   not ok - fuzz_http: crash after 12 s (input: /tmp/wsgate-fuzz.../crash-...; log: ...)
# A crash, sanitizer report, leak, timeout (-timeout=10) or out-of-memory (-rss_limit_mb)
# fails the target; its temp dir is kept (input + log), otherwise removed. Does NOT write
# into the repository or grow the seed corpus. Called by `make fuzz` and run-tests.sh.
# Usage: scripts/run-fuzz.sh [fuzz_http fuzz_ws fuzz_config]   Exit status 0: all ok.
set -u
cd "$(dirname "$0")/.."
: "${FUZZ_SECONDS:=60}"
: "${FUZZ_BUILD:=build-fuzz}"
[ $# -gt 0 ] || set -- fuzz_http fuzz_ws fuzz_config
status=0

for t in "$@"; do
    name=${t#fuzz_}
    bin=$FUZZ_BUILD/$t
    if [ ! -x "$bin" ]; then
        echo "not ok - $t: $bin is not built (make fuzz-build)"
        status=1
        continue
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/wsgate-fuzz.$t.XXXXXX")
    mkdir "$dir/corpus" "$dir/artifacts"
    cp tests/fuzz/corpus/"$name"/* "$dir/corpus/" 2>/dev/null
    dict=""
    [ -f "tests/fuzz/$name.dict" ] && dict="-dict=tests/fuzz/$name.dict"
    start=$(date +%s)
    # shellcheck disable=SC2086
    ASAN_OPTIONS="detect_leaks=1" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
        "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$dir/artifacts/" $dict "$dir/corpus" \
        >"$dir/log" 2>&1
    rc=$?
    secs=$(($(date +%s) - start))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -n 1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log" | tail -n 1)
    art=$(ls "$dir/artifacts" | grep -E '^(crash|leak|timeout|oom)-' | head -n 1)
    if [ "$rc" = 0 ] && [ -z "$art" ]; then
        echo "ok - $t: $secs s, ${runs:-?} runs (${eps:-?}/s), no crash"
        rm -rf "$dir"
        continue
    fi
    kind=${art%%-*}
    [ -n "$kind" ] || kind="exit status $rc"
    echo "not ok - $t: $kind after $secs s (input: $dir/artifacts/$art; log: $dir/log)"
    # the cause in a few lines; "SUMMARY:" lines do not re-trigger run-tests.sh's scan
    grep -aE '^(SUMMARY: |fuzz_gw: [^ ]+:[0-9]+: |fuzz_config: )' "$dir/log" | head -n 4 |
        sed 's/^/# /'
    grep -aE '^    #[0-9]+ ' "$dir/log" | head -n 5 | sed -e 's/ (BuildId: [0-9a-f]*)//' -e 's/^/# /'
    echo "# reproduce: $bin $dir/artifacts/$art"
    status=1
done
exit $status
