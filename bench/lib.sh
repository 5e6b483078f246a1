# bench/lib.sh — what the bench scripts share (sourced, not run): stderr messages, and
# stopping by PID everything a script started, from an EXIT/INT/TERM trap.
# The sourcing script sets TMP (its temp dir, removed at exit) and STARTED (the PIDs it
# started and has not reaped yet, space-separated; it appends each PID it starts), then
# calls bench_traps NAME.
# shellcheck shell=bash

say() { printf '%s\n' "$*" >&2; }

forget_pid() { # PID: no longer ours to stop
    # shellcheck disable=SC2086 # STARTED is a list of PIDs
    STARTED=$(printf '%s\n' $STARTED | grep -vx "$1" | tr '\n' ' ')
    return 0
}

stop_pid() { # PID: TERM, up to 5 s, then KILL; reap it
    local pid=$1 _
    kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; forget_pid "$pid"; return 0; }
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    forget_pid "$pid"
}

# shellcheck disable=SC2317 # run by the trap
bench_cleanup() {
    local pid
    trap '' INT TERM # a second signal must not cut the cleanup short (it is bounded)
    for pid in $STARTED; do stop_pid "$pid"; done
    rm -rf "$TMP"
}

bench_traps() { # NAME: the script's name for the "interrupted" message
    trap bench_cleanup EXIT
    # shellcheck disable=SC2064 # NAME is fixed now
    trap "say '$1: interrupted'; exit 130" INT TERM
}
