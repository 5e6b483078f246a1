#!/usr/bin/env bash
# bench/kafka_nodes.sh — the cost per gateway node of reading the whole ws.recv topic on
# the kafka backend: N gateway nodes (default 3) on one librdkafka mock cluster, the load
# generator's queue scenario through node 1 (every socket and push there), then each node's
# CPU per delivered message from /proc: node 1 delivers; the others only read records for
# no local socket. Also the mock's CPU per message. Prints one key=value line.
#
# Usage: bench/kafka_nodes.sh [N]     env: MSGS (pushes, default 50000), WSGATE_BIN,
#        LOADGEN, KAFKA_MOCK (defaults: ./wsgate, bench/loadgen, build/tools/kafka_mock)
# Starts and stops everything itself (trap), on free loopback ports; bounded by the load
# generator's --timeout. Exit: loadgen's (0 ok, 1 lost/duplicated/failed), 2 on setup.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-3}
MSGS=${MSGS:-50000}
WSGATE_BIN=${WSGATE_BIN:-$ROOT/wsgate}
LOADGEN=${LOADGEN:-$ROOT/bench/loadgen}
KAFKA_MOCK=${KAFKA_MOCK:-$ROOT/build/tools/kafka_mock}
for b in "$WSGATE_BIN" "$LOADGEN" "$KAFKA_MOCK"; do
    [ -x "$b" ] || { printf '%s\n' "kafka_nodes: $b missing (make bench)" >&2; exit 2; }
done
TMP=$(mktemp -d "${TMPDIR:-/tmp}/wsgate-knodes.XXXXXX") || exit 2
STARTED="" # PIDs this script started and has not reaped yet
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh" # say, stop_pid, the cleanup trap
bench_traps kafka_nodes
free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
per_msg() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }'; }

"$KAFKA_MOCK" -f "$TMP/bootstrap" -t ws.recv:4 -t ws.send:4 -t ws.topic:4 >"$TMP/mock.log" 2>&1 &
MOCK=$!
STARTED="$STARTED $MOCK"
for _ in $(seq 50); do [ -s "$TMP/bootstrap" ] && break; sleep 0.1; done
[ -s "$TMP/bootstrap" ] || { say "kafka_nodes: the mock did not start"; exit 2; }
NODES=() PORTS=()
for i in $(seq "$N"); do
    port=$(free_port)
    env -u WSGATE_BIN WSGATE_SERVER_LISTEN="127.0.0.1:$port" WSGATE_SERVER_LOG_LEVEL=warn \
        WSGATE_BROKER_TYPE=kafka WSGATE_KAFKA_BROKERS="$(cat "$TMP/bootstrap")" \
        WSGATE_KAFKA_NODE="bench$i" WSGATE_KAFKA_FETCH_WAIT=10ms \
        "$WSGATE_BIN" 2>"$TMP/node$i.log" &
    NODES+=($!)
    STARTED="$STARTED $!"
    PORTS+=("$port")
done
for port in "${PORTS[@]}"; do
    for _ in $(seq 100); do
        curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$port/readyz" && break
        sleep 0.1
    done
done
sleep 2 # every node's consumer has joined and reached the end of the topic
declare -a C0
for k in "${!NODES[@]}"; do C0[k]=$(cpu_ticks "${NODES[k]}"); done
M0=$(cpu_ticks "$MOCK")
"$LOADGEN" --scenario queue --port "${PORTS[0]}" --messages "$MSGS" --timeout 100 >"$TMP/lg.out"
rc=$?
sleep 1 # the other nodes finish reading
del=$(grep -m1 '^delivered=' "$TMP/lg.out" | cut -d= -f2)
if [ -z "$del" ] || [ "$del" -eq 0 ]; then
    cat "$TMP/lg.out" >&2
    exit 2
fi
line="nodes=$N delivered=$del $(grep -m1 '^result=' "$TMP/lg.out")"
total=0
for k in "${!NODES[@]}"; do
    t=$(($(cpu_ticks "${NODES[k]}") - C0[k]))
    total=$((total + t))
    line="$line node$((k + 1))_cpu_us_per_msg=$(per_msg "$t" "$del")"
done
line="$line all_nodes_cpu_us_per_msg=$(per_msg "$total" "$del")"
line="$line mock_cpu_us_per_msg=$(per_msg "$(($(cpu_ticks "$MOCK") - M0))" "$del")"
echo "$line"
exit "$rc"
