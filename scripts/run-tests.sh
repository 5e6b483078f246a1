#!/bin/sh
# run-tests.sh — runs every test program and counts test cases from their TAP output
# ("ok N - name" / "not ok N - name"). A program that exits non-zero without reporting a
# failing case counts as one failed case, so a crash never passes silently.
# Called by `make test` with WSGATE_BIN (the binary under test) and BUILD (build dir);
# FUZZ_BUILD/FUZZ_SECONDS: the libFuzzer targets, run for that long each (plain pass only).
# Ends with exactly one line: "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
: "${BUILD:=build}"
: "${WSGATE_BIN:=$PWD/wsgate}"
export WSGATE_BIN BUILD
export WSGATE_TOOLS="$PWD/$BUILD/tools"
export CMOCKA_MESSAGE_OUTPUT=TAP
# Sanitizer builds: any report is fatal, and the scan below turns a report in a server
# log into a failed case even when the process was already being stopped.
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export ASAN_OPTIONS="detect_leaks=1"
PY=/usr/bin/python3   # Debian's python: it sees python3-websockets (pyenv's does not)
LOGDIR=$(mktemp -d /tmp/wsgate-tests.XXXXXX)
passed=0
failed=0

run_one() { # name, command...
    name=$1; shift
    out="$LOGDIR/$(echo "$name" | tr '/' '_').log"
    srvlogs="$LOGDIR/$(echo "$name" | tr '/' '_').d"
    mkdir -p "$srvlogs"
    echo "# --- $name"
    WSGATE_TEST_LOGDIR="$srvlogs" "$@" >"$out" 2>&1
    rc=$?
    if grep -rlE 'runtime error:|ERROR: (Address|Leak)Sanitizer' "$out" "$srvlogs" >/dev/null 2>&1; then
        echo "not ok - sanitizer report in $name (server logs: $srvlogs)" >>"$out"
        grep -rhE -A6 'runtime error:|ERROR: (Address|Leak)Sanitizer' "$out" "$srvlogs" |
            head -n 20 | sed 's/^/# /' >>"$out"
    fi
    grep -E '^(not ok|ok) ' "$out" | sed 's/^/  /'
    p=$(grep -cE '^ok ' "$out")
    f=$(grep -cE '^not ok ' "$out")
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
        echo "  not ok - $name exited with status $rc (log: $out)"
        tail -n 20 "$out" | sed 's/^/  # /'
        f=1
    elif [ "$f" != 0 ]; then
        echo "  # failures in $name (log: $out):"
        grep -E -A8 '^not ok ' "$out" | head -n 60 | sed 's/^/  # /'
    fi
    passed=$((passed + p))
    failed=$((failed + f))
}

for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "unit/$(basename "$t")" "$t"
done
for t in tests/integration/test_*.py; do
    [ -f "$t" ] || continue
    run_one "integration/$(basename "$t")" "$PY" "$t"
done
for t in tests/browser/test_*.py; do # headless Chromium against /demo/ (deps.sh installs it)
    [ -f "$t" ] || continue
    run_one "browser/$(basename "$t")" "$PY" "$t"
done
if [ -f tests/interop/run.sh ]; then
    run_one "interop" sh tests/interop/run.sh
fi
# libFuzzer targets (make fuzz-build), FUZZ_SECONDS each: one TAP line per target from
# scripts/run-fuzz.sh. Only in the plain pass: they carry ASan+UBSan already, so the
# build-san pass (make test-san) would only repeat them.
: "${FUZZ_BUILD:=build-fuzz}"
if [ "$BUILD" != build-san ]; then
    for t in fuzz_http fuzz_ws fuzz_config; do
        [ -x "$FUZZ_BUILD/$t" ] || continue
        run_one "fuzz/$t" sh scripts/run-fuzz.sh "$t"
    done
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
