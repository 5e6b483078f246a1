#!/usr/bin/env bash
# bench/kafka_alone.sh — what librdkafka's mock cluster (build/tools/kafka_mock) does on its
# own, with no gateway: the ceiling under bench/run.sh's kafka figures.
#
# Starts the mock as bench/run.sh does (topics ws.recv:4, ws.send:4, ws.topic:4), then with
# kcat: (i) produces N records to ws.recv (value KAFKA_ALONE_SIZE bytes, keys ka-0..ka-(S-1)
# in turn) with the producer settings of backends/kafka_io.c (acks=all, idempotence,
# murmur2_random, linger.ms=1, message.timeout.ms = [kafka] timeout's default 5s,
# queue.buffering.max.kbytes = max_buffered's 64m, message.max.bytes = 1m + 4096), timed;
# (ii) reads them all from the beginning with one consumer (every partition, as a gateway
# node reads ws.recv; fetch.wait.max.ms = run.sh's 10ms), timed, and checks that each key's
# records came back exactly once and in order. The mock's CPU time (utime + stime from
# /proc/PID/stat) is read before and after each phase.
#
# Prints key=value lines on stdout (progress on stderr):
#   produce_records_per_s, produce_mock_cpu_us_per_record, produce_kcat_cpu_s, ...
#   consume_records_per_s, consume_mock_cpu_us_per_record, consumed, sequence_errors
# Elapsed times include kcat's start (metadata) and, for produce, its final flush: with
# few records that start-up weighs on records/s.
#
# kcat's consumer is librdkafka's legacy per-partition consumer, the gateway uses the
# high-level consumer with manual assignment: same fetcher, different queueing on top.
#
# Environment knobs:
#   KAFKA_ALONE_RECORDS   records to produce and read back (default 100000); the mock keeps
#                         at most about 5 MB per partition, so far more records than that
#                         holds come back short (consumed < records: FAIL)
#   KAFKA_ALONE_SIZE      value bytes, >= 26 (default 64)
#   KAFKA_ALONE_SESSIONS  distinct keys (default 1000)
#   KAFKA_ALONE_TIMEOUT   seconds each kcat run may take (default 120); the whole script
#                         takes at most about 2 x that + 25 s
#   KAFKA_FETCH_WAIT_MS   consumer fetch.wait.max.ms (default 10, as bench/run.sh)
#   KAFKA_MOCK, KCAT      binaries (default build/tools/kafka_mock, kcat)
# Exit status: 0 ok, 1 a record lost, duplicated or out of order (or kcat failed), 2 setup.
# Everything it starts is stopped by PID (EXIT/INT/TERM trap); its temp dir is removed.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RECORDS=${KAFKA_ALONE_RECORDS:-100000}
SIZE=${KAFKA_ALONE_SIZE:-64}
SESSIONS=${KAFKA_ALONE_SESSIONS:-1000}
TIMEOUT=${KAFKA_ALONE_TIMEOUT:-120}
FETCH_WAIT=${KAFKA_FETCH_WAIT_MS:-10}
KAFKA_MOCK=${KAFKA_MOCK:-$ROOT/build/tools/kafka_mock}
KCAT=${KCAT:-$(command -v kcat || echo /usr/bin/kcat)}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh" # say, stop_pid, forget_pid, the cleanup trap

for v in RECORDS SIZE SESSIONS TIMEOUT FETCH_WAIT; do
    case ${!v} in '' | *[!0-9]*) say "kafka_alone: $v must be a number"; exit 2 ;; esac
done
if [ "$RECORDS" -lt 1 ] || [ "$SESSIONS" -lt 1 ] || [ "$TIMEOUT" -lt 1 ]; then
    say "kafka_alone: RECORDS, SESSIONS and TIMEOUT must be >= 1"
    exit 2
fi
[ "$SIZE" -ge 26 ] || { say "kafka_alone: KAFKA_ALONE_SIZE must be >= 26"; exit 2; }
[ -x "$KAFKA_MOCK" ] || { say "kafka_alone: $KAFKA_MOCK missing (make build/tools/kafka_mock)"; exit 2; }
[ -x "$KCAT" ] || { say "kafka_alone: kcat missing (scripts/deps.sh bench)"; exit 2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wsgate-kafka-alone.XXXXXX") || exit 2
STARTED="" # PIDs this script started and has not reaped yet

bench_traps kafka_alone

cpu_ticks() { # PID: utime + stime in clock ticks (fields 14, 15 after the ")" of comm)
    local rest
    rest=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || { echo -1; return; }
    # shellcheck disable=SC2086 # split the fields
    set -- $rest
    echo $((${12} + ${13}))
}

# run_timed NAME CMD...: runs CMD under timeout in the background (a TERM reaches the trap
# at once; timeout passes it on to CMD), stdin from $TMP/NAME.in if present, stdout to
# $TMP/NAME.out, stderr to $TMP/NAME.err; sets RT_NS (elapsed), RT_RC and RT_CPU (CMD's
# user + sys seconds: this shell's reaped children's times, read by the `times` builtin,
# before and after; nothing else is reaped in between).
run_timed() {
    local name=$1 in=/dev/null t0 t1 pid
    shift
    [ -f "$TMP/$name.in" ] && in=$TMP/$name.in
    times >"$TMP/$name.times0"
    t0=$(date +%s%N)
    timeout -k 5 "$TIMEOUT" "$@" <"$in" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    pid=$!
    STARTED="$STARTED $pid"
    wait "$pid"
    RT_RC=$?
    times >"$TMP/$name.times1"
    t1=$(date +%s%N)
    forget_pid "$pid"
    RT_NS=$((t1 - t0))
    # `times`: line 2 = children's "XmY.YYYs XmY.YYYs" (user, sys)
    RT_CPU=$(awk 'FNR == 2 { for (i = 1; i <= 2; i++) { split($i, a, /[ms]/)
                                   c[FILENAME] += a[1] * 60 + a[2] } }
                  END { printf "%.3f", c[ARGV[2]] - c[ARGV[1]] }' \
        "$TMP/$name.times0" "$TMP/$name.times1")
}

# --- the mock, as bench/run.sh's kafka_start starts it -------------------------------
"$KAFKA_MOCK" -f "$TMP/bootstrap" -t ws.recv:4 -t ws.send:4 -t ws.topic:4 >"$TMP/mock.log" 2>&1 &
MOCK=$!
STARTED="$STARTED $MOCK"
for _ in $(seq 100); do
    [ -s "$TMP/bootstrap" ] && break
    kill -0 "$MOCK" 2>/dev/null || break
    sleep 0.1
done
[ -s "$TMP/bootstrap" ] || { say "kafka_alone: kafka_mock did not start"; cat "$TMP/mock.log" >&2; exit 2; }
BOOT=$(cat "$TMP/bootstrap")
HZ=$(getconf CLK_TCK)

# --- the records: "key|value", value "<key:8>:<seq:16>:" padded with '.' to SIZE -------
awk -v n="$RECORDS" -v s="$SESSIONS" -v size="$SIZE" 'BEGIN {
    pad = "."; while (length(pad) < size) pad = pad pad
    for (i = 0; i < n; i++) {
        k = i % s; v = sprintf("%08d:%016d:", k, int(i / s))
        printf "ka-%d|%s%s\n", k, v, substr(pad, 1, size - length(v))
    } }' >"$TMP/produce.in" || exit 2

say "kafka_alone: mock at $BOOT (pid $MOCK); producing $RECORDS records of $SIZE bytes"
c0=$(cpu_ticks "$MOCK")
run_timed produce "$KCAT" -b "$BOOT" -P -t ws.recv -K '|' \
    -X acks=all -X enable.idempotence=true -X partitioner=murmur2_random -X linger.ms=1 \
    -X message.timeout.ms=5000 -X queue.buffering.max.kbytes=65536 \
    -X message.max.bytes=1052672
c1=$(cpu_ticks "$MOCK")
P_NS=$RT_NS P_RC=$RT_RC P_CPU=$RT_CPU

say "kafka_alone: consuming ws.recv from the beginning"
run_timed consume "$KCAT" -b "$BOOT" -C -t ws.recv -o beginning -e -q -f '%k %s\n' \
    -X fetch.wait.max.ms="$FETCH_WAIT"
c2=$(cpu_ticks "$MOCK")
C_NS=$RT_NS C_RC=$RT_RC C_CPU=$RT_CPU

# --- checks: every key's seq must run 0, 1, 2, ... exactly (loss, duplicate, reorder) --
read -r CONSUMED SEQ_ERR < <(awk '{ split($2, a, ":"); q = a[2] + 0
        if (q != nx[$1] + 0) bad++; nx[$1] = q + 1; n++ }
    END { printf "%d %d\n", n, bad }' "$TMP/consume.out")
CONSUMED=${CONSUMED:-0} SEQ_ERR=${SEQ_ERR:-NA}

rate() { awk -v n="$1" -v ns="$2" 'BEGIN { printf "%.0f", (ns > 0 ? n * 1e9 / ns : 0) }'; }
us_per() { # TICKS_BEFORE TICKS_AFTER RECORDS
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$HZ" \
        'BEGIN { if (a < 0 || b < 0 || n <= 0) print "NA"; else printf "%.2f", (b - a) / hz * 1e6 / n }'
}
cpu_s() { awk -v a="$1" -v b="$2" -v hz="$HZ" 'BEGIN { if (a < 0 || b < 0) print "NA"; else printf "%.2f", (b - a) / hz }'; }

echo "records=$RECORDS"
echo "size=$SIZE"
echo "sessions=$SESSIONS"
echo "partitions=4"
echo "produce_exit=$P_RC"
echo "produce_elapsed_s=$(awk -v ns="$P_NS" 'BEGIN { printf "%.3f", ns / 1e9 }')"
echo "produce_records_per_s=$(rate "$RECORDS" "$P_NS")"
echo "produce_mock_cpu_s=$(cpu_s "$c0" "$c1")"
echo "produce_mock_cpu_us_per_record=$(us_per "$c0" "$c1" "$RECORDS")"
echo "produce_kcat_cpu_s=${P_CPU:-NA}"
echo "consume_exit=$C_RC"
echo "consumed=$CONSUMED"
echo "sequence_errors=$SEQ_ERR"
echo "consume_elapsed_s=$(awk -v ns="$C_NS" 'BEGIN { printf "%.3f", ns / 1e9 }')"
echo "consume_records_per_s=$(rate "$CONSUMED" "$C_NS")"
echo "consume_mock_cpu_s=$(cpu_s "$c1" "$c2")"
echo "consume_mock_cpu_us_per_record=$(us_per "$c1" "$c2" "${CONSUMED:-0}")"
echo "consume_kcat_cpu_s=${C_CPU:-NA}"
echo "clock_ticks_per_s=$HZ"
if [ "$c0" -ge 0 ] && [ "$c2" -ge 0 ] && { [ $((c1 - c0)) -lt 20 ] || [ $((c2 - c1)) -lt 20 ]; }; then
    echo "note=mock CPU under 20 clock ticks in a phase: its per-record figure is coarse (more records)"
fi
if [ "$P_RC" = 0 ] && [ "$C_RC" = 0 ] && [ "$CONSUMED" = "$RECORDS" ] && [ "$SEQ_ERR" = 0 ]; then
    echo "result=ok"
    exit 0
fi
echo "result=FAIL"
for f in produce consume; do
    [ -s "$TMP/$f.err" ] && { say "kafka_alone: kcat $f stderr:"; tail -n 10 "$TMP/$f.err" >&2; }
done
exit 1
