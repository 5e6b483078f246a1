#!/usr/bin/env bash
# bench/run.sh — `make bench`: runs bench/loadgen's scenarios against wsgate and nchan,
# one after the other in the same run, and prints a table: scenario | wsgate | nchan | ratio.
#
# Every (backend, scenario, target) run gets fresh servers on free loopback ports: the
# backend's own servers first (redis-server, nats-server, none for memory), then the target
# (wsgate, or nginx + nchan from bench/nchan.conf.in in a private temp dir), then loadgen;
# then everything is stopped by PID. Nothing is left running: an EXIT/INT/TERM trap stops
# every process this script started and removes the temp dir.
#
# Environment knobs:
#   BENCH_SCENARIOS   "queue queue1 latency fanout idle" (default: all five); queue1 is
#                     queue with one request in flight per push connection (--pipeline 1),
#                     what services pushing with plain HTTP clients do
#   BENCH_TARGETS     "wsgate nchan"              (default: both); also wsgate-auth: wsgate
#                     with [auth] on (an HS256 JWT checked on every handshake, a push token
#                     on every push), e.g. BENCH_TARGETS="wsgate wsgate-auth"; and
#                     wsgate-base: the binary in BENCH_BASE_BIN (an older build, to
#                     compare two commits in one run: BENCH_TARGETS="wsgate wsgate-base")
#   BENCH_ROUNDS      rounds (default 1); with more, each round runs the targets in the
#                     opposite order of the one before; the table shows each metric's
#                     median over the rounds, and the ratio column becomes the median of
#                     the per-round ratios (the two targets of a round ran back to back)
#                     with their min-max: the way to compare on a noisy shared box
#   BENCH_BACKENDS    "memory"                    (also redis-list, redis-pubsub, nats, kafka)
#   BENCH_NODES       gateway nodes per wsgate target (default 1, at most 16): N wsgate
#                     processes share the backend's broker, each on its own free port with
#                     its own log (kafka: WSGATE_KAFKA_NODE=bench1..benchN); loadgen spreads
#                     its sockets and push connections over them round robin and sums the
#                     CPU time and RSS of all N. Needs a shared broker: refused (exit 2)
#                     with the memory backend and with the nchan target
#   BENCH_ARGS_QUEUE, BENCH_ARGS_QUEUE1, BENCH_ARGS_LATENCY, BENCH_ARGS_FANOUT, BENCH_ARGS_IDLE
#                     extra loadgen options for one scenario, e.g. "--messages 20000"
#   BENCH_TIMEOUT     seconds one loadgen run may take (default 90)
#   BENCH_NATS_ENV    NAME=value words put in nats-server's environment (default none:
#                     a stock server), e.g. "GOGC=800" to measure the nats backend with
#                     the server's Go garbage collector tuned (docs/NATS.md, tail latency);
#                     printed in the table's header
#   WSGATE_BIN, LOADGEN, NGINX  binaries (defaults ./wsgate, bench/loadgen, nginx)
#   BENCH_BASE_BIN   the wsgate-base target's binary (no default)
#   KAFKA_MOCK        librdkafka mock cluster launcher (default build/tools/kafka_mock); kafka
#                     runs against it with fetch_wait = 10ms (the mock has no fetch long-poll)
# The ratio column is the first target over the second (wsgate / nchan by default).
# Exit status: 0 if every run passed its checks, 1 otherwise, 2 on setup errors.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCENARIOS=${BENCH_SCENARIOS:-queue queue1 latency fanout idle}
TARGETS=${BENCH_TARGETS:-wsgate nchan}
BACKENDS=${BENCH_BACKENDS:-memory}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-90}
BENCH_NATS_ENV=${BENCH_NATS_ENV:-}
ROUNDS=${BENCH_ROUNDS:-1}
NODES=${BENCH_NODES:-1}
BENCH_BASE_BIN=${BENCH_BASE_BIN:-}
WSGATE_BIN=${WSGATE_BIN:-$ROOT/wsgate}
LOADGEN=${LOADGEN:-$ROOT/bench/loadgen}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
KAFKA_MOCK=${KAFKA_MOCK:-$ROOT/build/tools/kafka_mock}
NCHAN_CONF_IN=$ROOT/bench/nchan.conf.in
PY=/usr/bin/python3

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wsgate-bench.XXXXXX") || exit 2
STARTED="" # PIDs of every server this script started and has not stopped yet

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh" # say, stop_pid, forget_pid, the cleanup trap
bench_traps bench

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http PORT PATH PID SECONDS: until GET answers 200, PID dies, or time runs out.
wait_http() {
    local port=$1 path=$2 pid=$3 _
    for _ in $(seq $(($4 * 10))); do
        kill -0 "$pid" 2>/dev/null || return 1
        curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$port$path" && return 0
        sleep 0.1
    done
    return 1
}

# wait_cmd SECONDS CMD...: until CMD succeeds.
wait_cmd() {
    local secs=$1 _
    shift
    for _ in $(seq $((secs * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# --- backends: servers a wsgate backend (and nchan's store) needs -----------------------
# backend_start BACKEND sets WSGATE_ENV (extra env for wsgate), NCHAN_STORE (memory|redis),
# REDIS_PORT, DEP_PIDS. To add a backend: start its server(s) here, append to DEP_PIDS.
# WSGATE_BROKER_PIDS / NCHAN_BROKER_PIDS: the broker servers each target uses (their CPU
# per push is reported as broker_cpu_us_per_push). WSGATE_NODE_VAR: the variable that
# names a gateway node (bench1, bench2, ...), for backends that need distinct names.
backend_start() {
    WSGATE_ENV="WSGATE_BROKER_TYPE=$1"
    WSGATE_NODE_VAR=""
    NCHAN_STORE=memory
    DEP_PIDS="" WSGATE_BROKER_PIDS="" NCHAN_BROKER_PIDS=""
    case $1 in
    memory) ;;
    redis-list | redis-pubsub)
        redis_start || return 1
        WSGATE_BROKER_PIDS=$LAST_PID
        WSGATE_ENV="$WSGATE_ENV WSGATE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
        NCHAN_STORE=redis
        ;;
    nats)
        nats_start || return 1
        WSGATE_BROKER_PIDS=$LAST_PID
        WSGATE_ENV="$WSGATE_ENV WSGATE_NATS_URL=nats://127.0.0.1:$NATS_PORT"
        # the peer with a durable broker behind it is nchan on Redis (started only for it)
        case " $TARGETS " in *" nchan "*) redis_start || return 1 ;; esac
        NCHAN_STORE=redis
        ;;
    kafka)
        kafka_start || return 1
        WSGATE_BROKER_PIDS=$LAST_PID
        WSGATE_ENV="$WSGATE_ENV WSGATE_KAFKA_BROKERS=$KAFKA_BOOTSTRAP"
        WSGATE_NODE_VAR=WSGATE_KAFKA_NODE # each node its own consumer group
        WSGATE_ENV="$WSGATE_ENV WSGATE_KAFKA_FETCH_WAIT=${BENCH_KAFKA_FETCH_WAIT:-10ms}"
        case " $TARGETS " in *" nchan "*) redis_start || return 1 ;; esac
        NCHAN_STORE=redis
        ;;
    *)
        say "bench: backend '$1' is not wired into bench/run.sh yet"
        return 1
        ;;
    esac
    [ "$NCHAN_STORE" = redis ] && NCHAN_BROKER_PIDS=${REDIS_PID:-} # unset: nchan is no target
    return 0
}

backend_stop() {
    local pid
    for pid in $DEP_PIDS; do stop_pid "$pid"; done
    DEP_PIDS=""
}

redis_start() {
    REDIS_PORT=$(free_port)
    local dir=$TMP/redis.$REDIS_PORT
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --dir "$dir" --daemonize no --maxclients 10000 >"$dir/log" 2>&1 &
    local pid=$!
    STARTED="$STARTED $pid"
    DEP_PIDS="$DEP_PIDS $pid"
    LAST_PID=$pid REDIS_PID=$pid
    wait_cmd 10 redis-cli -p "$REDIS_PORT" ping || { say "bench: redis-server did not start"; return 1; }
}

kafka_start() {
    local dir=$TMP/kafka.$RANDOM
    mkdir -p "$dir"
    [ -x "$KAFKA_MOCK" ] || { say "bench: $KAFKA_MOCK missing (make build/tools/kafka_mock)"; return 1; }
    "$KAFKA_MOCK" -f "$dir/bootstrap" -t ws.recv:4 -t ws.send:4 -t ws.topic:4 >"$dir/log" 2>&1 &
    local pid=$!
    STARTED="$STARTED $pid"
    DEP_PIDS="$DEP_PIDS $pid"
    LAST_PID=$pid
    wait_cmd 10 test -s "$dir/bootstrap" || { say "bench: kafka_mock did not start"; return 1; }
    KAFKA_BOOTSTRAP=$(cat "$dir/bootstrap")
}

nats_start() {
    NATS_PORT=$(free_port)
    local dir=$TMP/nats.$NATS_PORT
    mkdir -p "$dir"
    # shellcheck disable=SC2086 # BENCH_NATS_ENV is a list of NAME=value words
    env $BENCH_NATS_ENV nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$dir" >"$dir/log" 2>&1 &
    local pid=$!
    STARTED="$STARTED $pid"
    DEP_PIDS="$DEP_PIDS $pid"
    LAST_PID=$pid
    wait_cmd 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT" ||
        { say "bench: nats-server did not start"; return 1; }
}

# --- targets: TARGET_PORT (comma list: one per node), TARGET_STOP (PIDs to stop),
# TARGET_PIDS (comma list, for CPU and RSS), TARGET_LOGS (one per process), TARGET_LABEL
# bench-only secrets for wsgate-auth (a throwaway token and HS256 key, never used elsewhere)
AUTH_PUSH_TOKEN=bench-push-token-0123456789abcdef
AUTH_JWT_SECRET=bench-jwt-secret-0123456789abcdef0123456789abcdef

# wsgate_start [auth|base]: BENCH_NODES processes on one broker. auth: [auth] push_tokens
# and jwt_secret set; base: BENCH_BASE_BIN.
wsgate_start() {
    local auth_env="" bin=$WSGATE_BIN i port log pid name_env
    [ "${1:-}" = base ] && bin=$BENCH_BASE_BIN
    [ "${1:-}" = auth ] && auth_env="WSGATE_AUTH_PUSH_TOKENS=$AUTH_PUSH_TOKEN WSGATE_AUTH_JWT_SECRET=$AUTH_JWT_SECRET"
    TARGET_LABEL=wsgate+${WSGATE_ENV#WSGATE_BROKER_TYPE=}
    TARGET_LABEL=${TARGET_LABEL%% *}${1:+-$1}
    [ "$NODES" -gt 1 ] && TARGET_LABEL="$TARGET_LABEL/${NODES}nodes"
    TARGET_PORT="" TARGET_PIDS=""
    for i in $(seq "$NODES"); do
        port=$(free_port)
        log=$TMP/wsgate.$port.log
        name_env=""
        [ -n "$WSGATE_NODE_VAR" ] && name_env="$WSGATE_NODE_VAR=bench$i"
        # shellcheck disable=SC2086 # WSGATE_ENV etc. are lists of NAME=value words
        env -u WSGATE_BIN WSGATE_SERVER_LISTEN="127.0.0.1:$port" WSGATE_SERVER_MAX_CONNECTIONS=20000 \
            WSGATE_SERVER_BACKLOG=4096 WSGATE_SERVER_LOG_LEVEL=warn \
            WSGATE_SERVER_DRAIN_TIMEOUT=2s $WSGATE_ENV $name_env $auth_env "$bin" 2>"$log" &
        pid=$!
        STARTED="$STARTED $pid"
        TARGET_STOP="$TARGET_STOP $pid"
        TARGET_LOGS="$TARGET_LOGS $log"
        TARGET_PORT=${TARGET_PORT:+$TARGET_PORT,}$port
        TARGET_PIDS=${TARGET_PIDS:+$TARGET_PIDS,}$pid
        wait_http "$port" /readyz "$pid" 10 || return 1 # broker connected too
    done
}

nchan_start() {
    TARGET_PORT=$(free_port)
    local dir=$TMP/nchan.$TARGET_PORT redis_http="" redis_loc="" _ w
    mkdir -p "$dir"
    if [ "$NCHAN_STORE" = redis ]; then
        redis_http="nchan_redis_url \"redis://127.0.0.1:$REDIS_PORT\";"
        redis_loc="nchan_use_redis on;"
    fi
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$TARGET_PORT|g" -e "s|@USER@|$(id -un)|g" \
        -e "s|@REDIS_HTTP@|$redis_http|g" -e "s|@REDIS_LOC@|$redis_loc|g" \
        "$NCHAN_CONF_IN" >"$dir/nginx.conf"
    TARGET_LOGS=$dir/error.log
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$TARGET_LOGS" 2>"$dir/stderr.log" &
    local pid=$!
    STARTED="$STARTED $pid"
    TARGET_STOP=$pid # the master stops its workers
    TARGET_LABEL=nchan+$NCHAN_STORE
    wait_http "$TARGET_PORT" /healthz "$pid" 10 || return 1
    # RSS is the master plus its workers (pgrep by parent PID, never by name)
    for _ in $(seq 50); do
        w=$(pgrep -P "$pid" | paste -sd, -)
        [ "$(printf '%s' "$w" | tr ',' '\n' | grep -c .)" -ge 2 ] && break
        sleep 0.1
    done
    TARGET_PIDS="$pid,$w"
}

target_stop() {
    local pid
    for pid in $TARGET_STOP; do stop_pid "$pid"; done
    TARGET_STOP=""
}

target_log_tails() { # LINES
    local log
    for log in $TARGET_LOGS; do
        say "  log tail ($log):"
        tail -n "$1" "$log" 2>/dev/null | sed 's/^/    /' >&2
    done
}

# --- one run ----------------------------------------------------------------------------
FAILED=""
RESULTS=$TMP/results
mkdir -p "$RESULTS"

run_one() { # BACKEND SCENARIO TARGET ROUND
    local backend=$1 scen=$2 target=$3 out rc args var lgscen=$2
    out=$RESULTS/$backend.$scen.$target.$4
    var=BENCH_ARGS_$(printf '%s' "$scen" | tr '[:lower:]' '[:upper:]')
    args=${!var:-}
    # queue1: the queue scenario, one request in flight per connection (later options win)
    [ "$scen" = queue1 ] && lgscen=queue args="--pipeline 1 $args"
    say ""
    say "=== $scen / $target ($backend, round $4/$ROUNDS)"
    if ! backend_start "$backend"; then
        printf 'result=FAIL\nerror=backend_start\n' >"$out"
        FAILED="$FAILED $backend/$scen/$target/$4"
        backend_stop
        return
    fi
    local started=0
    TARGET_STOP="" TARGET_LOGS=""
    case $target in
    wsgate) wsgate_start && started=1 ;;
    wsgate-auth) wsgate_start auth && started=1 ;;
    wsgate-base) wsgate_start base && started=1 ;;
    nchan) nchan_start && started=1 ;;
    *) say "bench: unknown target '$target'" ;;
    esac
    if [ $started != 1 ]; then
        say "bench: $target did not start"
        target_log_tails 20
        printf 'result=FAIL\nerror=target_start\n' >"$out"
        FAILED="$FAILED $backend/$scen/$target/$4"
        target_stop
        backend_stop
        return
    fi
    local flags=""
    [ "$target" = nchan ] && flags=--nchan
    [ "$target" = wsgate-auth ] &&
        flags="--push-token $AUTH_PUSH_TOKEN --jwt-secret $AUTH_JWT_SECRET"
    local bpids=$WSGATE_BROKER_PIDS
    [ "$target" = nchan ] && bpids=$NCHAN_BROKER_PIDS
    [ -n "$bpids" ] && flags="$flags --broker-pid $bpids"
    # In the background + wait, so a TERM/INT reaches the trap at once (bash runs traps
    # only after a foreground child ends); the trap's cleanup stops loadgen too.
    # shellcheck disable=SC2086 # args and flags are word lists
    timeout -k 5 "$BENCH_TIMEOUT" "$LOADGEN" --scenario "$lgscen" --url-host 127.0.0.1 \
        --port "$TARGET_PORT" --pid "$TARGET_PIDS" --label "$TARGET_LABEL" \
        --timeout $((BENCH_TIMEOUT - 15)) $flags $args >"$out" 2>&1 &
    local lg=$!
    STARTED="$STARTED $lg"
    wait "$lg"
    rc=$?
    forget_pid "$lg"
    echo "exit=$rc" >>"$out"
    local pid
    for pid in $TARGET_STOP; do
        if ! kill -0 "$pid" 2>/dev/null; then
            printf 'error=server_died\ndead_pid=%s\n' "$pid" >>"$out"
            rc=1
        fi
    done
    sed 's/^/  /' "$out" >&2
    if [ $rc != 0 ]; then
        FAILED="$FAILED $backend/$scen/$target/$4"
        target_log_tails 10
    fi
    target_stop
    backend_stop
}

# --- main -------------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null # loadgen and the servers need >10000 fds each
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10300 ]; then
    say "bench: ulimit -n is $(ulimit -n); the idle scenario needs 10300"
fi
[ -x "$LOADGEN" ] || { say "bench: $LOADGEN missing (make bench/loadgen)"; exit 2; }
for t in $TARGETS; do
    case $t in
    wsgate | wsgate-auth) [ -x "$WSGATE_BIN" ] || { say "bench: $WSGATE_BIN missing (make)"; exit 2; } ;;
    wsgate-base)
        if [ -z "$BENCH_BASE_BIN" ] || [ ! -x "$BENCH_BASE_BIN" ]; then
            say "bench: wsgate-base needs BENCH_BASE_BIN (an executable)"
            exit 2
        fi
        ;;
    nchan)
        if [ ! -x "$NGINX" ] || [ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
            say "bench: nginx/nchan missing (scripts/deps.sh bench)"
            exit 2
        fi
        ;;
    esac
done

case $ROUNDS in '' | *[!0-9]* | 0) say "bench: BENCH_ROUNDS must be a count >= 1"; exit 2 ;; esac
case $NODES in '' | *[!0-9]* | 0*) say "bench: BENCH_NODES must be a count from 1 to 16"; exit 2 ;; esac
[ "$NODES" -le 16 ] || { say "bench: BENCH_NODES must be a count from 1 to 16"; exit 2; }
if [ "$NODES" -gt 1 ]; then # several gateway nodes need a broker they all share
    for b in $BACKENDS; do
        [ "$b" = memory ] || continue
        say "bench: BENCH_NODES=$NODES: the memory backend keeps everything inside one process"
        say "bench: (no shared broker); use BENCH_BACKENDS with redis-list, redis-pubsub, nats or kafka"
        exit 2
    done
    for t in $TARGETS; do
        [ "$t" = nchan ] || continue
        say "bench: BENCH_NODES=$NODES: several nodes are started for wsgate targets only; nchan"
        say "bench: runs as one nginx: set BENCH_TARGETS without nchan (e.g. BENCH_TARGETS=wsgate)"
        exit 2
    done
fi
# shellcheck disable=SC2086 # TARGETS is a word list
REVERSED=$(printf '%s\n' $TARGETS | tac | tr '\n' ' ')
T0=$(date +%s)
for round in $(seq "$ROUNDS"); do
    order=$TARGETS
    [ $((round % 2)) = 0 ] && order=$REVERSED # alternate: neither target always runs first
    for backend in $BACKENDS; do
        for scen in $SCENARIOS; do
            for target in $order; do
                run_one "$backend" "$scen" "$target" "$round"
            done
        done
    done
done

# --- table ------------------------------------------------------------------------------
get() { # KEY FILE
    local v
    v=$(grep -m1 "^$1=" "$2" 2>/dev/null | cut -d= -f2-)
    printf '%s' "${v:-NA}"
}

# median KEY BACKEND.SCENARIO.TARGET: the median over the rounds' numeric values; a
# trailing ! when any round failed its checks (NA when no round has a number)
median() {
    local r f v bad="" vals=""
    for r in $(seq "$ROUNDS"); do
        f=$RESULTS/$2.$r
        v=$(get "$1" "$f")
        [ "$(get result "$f")" = ok ] || bad="!"
        case $v in '' | *[!0-9.]*) ;; *) vals="$vals $v" ;; esac
    done
    # shellcheck disable=SC2086 # vals is a word list of numbers
    printf '%s\n' $vals | sort -g | awk -v bad="$bad" '
        NF { v[++n] = $1 } # no values: printf gives one empty line, which is no number
        END { if (n == 0) { printf "NA%s", bad; exit }
              m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
              if (m == int(m)) printf "%d%s", m, bad; else printf "%.2f%s", m, bad }'
}

# paired KEY BACKEND.SCENARIO: the per-round ratios first target / second target (each
# round ran both back to back, so a slow spell of the machine hits both): their median,
# then their min-max
paired() {
    local r a b
    for r in $(seq "$ROUNDS"); do
        a=$(get "$1" "$RESULTS/$2.$T_A.$r")
        b=$(get "$1" "$RESULTS/$2.$T_B.$r")
        printf '%s %s\n' "$a" "$b"
    done | awk '$1 ~ /^[0-9.]+$/ && $2 ~ /^[0-9.]+$/ && $2 > 0 { print $1 / $2 }' | sort -g |
        awk '{ v[NR] = $1 }
             END { if (NR == 0) { printf " %8s %9s", "NA", "NA"; exit }
                   m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                   printf " %8.2f %4.2f-%4.2f", m, v[1], v[NR] }'
}

metrics_of() {
    case $1 in
    queue | queue1) echo delivered_per_s server_cpu_us_per_delivery broker_cpu_us_per_push ;;
    latency) echo p50_us p99_us max_us ;;
    fanout) echo delivered_per_s server_cpu_us_per_delivery ;;
    idle) echo rss_per_conn_bytes handshakes_per_s server_cpu_us_per_handshake ;;
    esac
}

# ratio column: the first target over the second, when two or more ran
T_B=""
read -r T_A T_B _ <<<"$TARGETS"
PAIR=0
[ -n "$T_B" ] && PAIR=1
say ""
echo "# wsgate bench: $(nproc) cores, $(date -u +%FT%TZ), $(($(date +%s) - T0)) s"
echo "# delivered_per_s: higher is better; *_us, server_cpu_us_per_delivery (server CPU"
echo "# time per delivered message) and rss_per_conn_bytes: lower is better"
[ "$PAIR" = 1 ] && echo "# ratio = $T_A / $T_B"
[ -n "$BENCH_NATS_ENV" ] && case " $BACKENDS " in *" nats "*) echo "# nats-server run with: $BENCH_NATS_ENV" ;; esac
echo "# a value marked ! comes from a run that failed its checks"
[ "$ROUNDS" -gt 1 ] && echo "# $ROUNDS rounds, target order alternating: medians; ratio = median of the per-round ratios, spread = their min-max"
[ "$NODES" -gt 1 ] && echo "# $NODES gateway nodes per wsgate target on one broker: server CPU and RSS summed over them"
for backend in $BACKENDS; do
    printf '%-8s %-27s' scenario "metric ($backend)"
    for t in $TARGETS; do printf ' %14s' "$t"; done
    [ "$PAIR" = 1 ] && printf ' %8s' ratio
    [ "$PAIR" = 1 ] && [ "$ROUNDS" -gt 1 ] && printf ' %9s' spread
    printf '\n'
    for scen in $SCENARIOS; do
        for m in $(metrics_of "$scen"); do
            printf '%-8s %-27s' "$scen" "$m"
            a=NA b=NA
            for t in $TARGETS; do
                v=$(median "$m" "$backend.$scen.$t")
                printf ' %14s' "$v"
                [ "$t" = "$T_A" ] && a=${v%!}
                [ "$t" = "$T_B" ] && b=${v%!}
            done
            if [ "$PAIR" = 1 ] && [ "$ROUNDS" -gt 1 ]; then
                paired "$m" "$backend.$scen"
            elif [ "$PAIR" = 1 ]; then
                awk -v a="$a" -v b="$b" 'BEGIN {
                    if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf " %8.2f", a / b;
                    else printf " %8s", "NA" }'
            fi
            printf '\n'
        done
    done
done
if [ -n "$FAILED" ]; then
    echo "# FAILED:$FAILED"
    exit 1
fi
echo "# all runs passed (no message lost, duplicated or out of order)"
exit 0
