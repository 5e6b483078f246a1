#!/usr/bin/python3
"""test_redis_list.py — the redis-list backend against a real redis-server started here on a
free port (never mocked) and several real wsgate processes sharing it (DESIGN.md §3, §4;
issue 3): delivery across nodes, exactly-one-socket per message, ordering, offline
buffering and TTL, max_queue, the README's redis-cli recipe, upstream lists, broadcasts,
at-least-once across client kills, gateway kill -9 and Redis restarts (AOF) / freezes,
backpressure, and the per-node connection count and per-message Redis cost.
Does NOT test HTTP framing or WebSocket protocol details (test_http.py, test_ws.py)."""

import os
import signal
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403
from wsgate_test import recv_all  # noqa: E402
from redis_helpers import (FAST_READER, RedisServer, Resp, TcpProxy,  # noqa: E402
                           check_101_waits_for_subscribe, gateway, ready, redis_clients,
                           wait_ready)


def msgs(n, size=0, tag="m"):
    return [("%s%05d" % (tag, i)).encode().ljust(size, b".") for i in range(n)]


def inflight_keys(redis):
    return redis.cmd("KEYS", "ws.inflight.*") or []


def kill_rst(ws):
    """Drop the client's TCP connection with a reset (a crashed client)."""
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close_socket()


@test("two nodes: client on A, push via B, delivered once")
def _():
    with RedisServer() as redis, gateway(redis, name="A") as a, gateway(redis, name="B") as b:
        with a.ws("/ws/svc1.user42") as ws:
            accepted(push(b.port, "svc1.user42", b"hello via B"))
            op, data = ws.recv_message()
            check_eq((op, data), (OP_TEXT, b"hello via B"), "message")
            check(ws.nothing_within(0.3), "a second copy arrived")
            check_eq(redis.cmd("LLEN", "ws.recv.svc1.user42"), 0, "queue after delivery")
        wait_for(lambda: not inflight_keys(redis), what="in-flight list dropped after ack")


@test("three nodes: 1000 messages over 100 sessions, none lost, none duplicated, in order",
      timeout=60)
def _():
    with RedisServer() as redis, gateway(redis, name="A") as a, \
            gateway(redis, name="B") as b, gateway(redis, name="C") as c:
        nodes = [a, b, c]
        clients = [nodes[i % 3].ws("/ws/s%03d" % i) for i in range(100)]
        try:
            conns = [n.http() for n in nodes]
            sent = {i: [] for i in range(100)}
            for j in range(10):
                for i in range(100):
                    body = b"s%03d-%02d" % (i, j)
                    r = conns[(i + 1 + j) % 3].request("POST", "/push/s%03d" % i, body)
                    accepted(r)
                    sent[i].append(body)
            for h in conns:
                h.close()
            got = recv_all(clients, 10, timeout=20)
            for i, ws in enumerate(clients):
                check_eq([d for _, d in got[ws]], sent[i], "session s%03d" % i)
            extra = recv_all(clients, 1, timeout=0.5)
            dups = sum(len(v) for v in extra.values())
            check_eq(dups, 0, "messages after the 1000")
            note("1000 messages over 100 sessions on 3 nodes: all delivered once, in order")
        finally:
            for ws in clients:
                ws.close_socket()


@test("same session on two nodes: each message goes to exactly one socket")
def _():
    with RedisServer() as redis, gateway(redis, name="A") as a, gateway(redis, name="B") as b:
        with a.ws("/ws/twice") as w1, b.ws("/ws/twice") as w2:
            want = msgs(200)
            with Resp(redis.port) as r:
                r.command("RPUSH", "ws.recv.twice", *want)
            g1, g2 = [], []
            deadline = time.monotonic() + 5
            while len(g1) + len(g2) < 200 and time.monotonic() < deadline:
                got = recv_all([w1, w2], 200, timeout=0.1)
                g1 += [d for _, d in got[w1]]
                g2 += [d for _, d in got[w2]]
            got = recv_all([w1, w2], 1, timeout=0.2)
            check_eq(sum(len(v) for v in got.values()), 0, "messages beyond the 200")
            check_eq(sorted(g1 + g2), want, "union of both sockets")
            check(g1 == sorted(g1) and g2 == sorted(g2), "each socket in order")
            note("split: %d on A, %d on B" % (len(g1), len(g2)))


@test("offline buffering: queued while offline, drained in order on connect")
def _():
    with RedisServer() as redis, gateway(redis, name="A") as a, gateway(redis, name="B") as b:
        want = msgs(30, tag="off")
        for m in want:
            accepted(push(b.port, "offline1", m))
        ttl = redis.cmd("PTTL", "ws.recv.offline1")
        check(3590000 < ttl <= 3600000, "PTTL %r, want the 1h default ttl" % ttl)
        with a.ws("/ws/offline1") as ws:
            check_eq(recv_n(ws, 30), want, "drained queue")
            check(ws.nothing_within(0.2), "extra message")


@test("TTL: an offline queue expires ttl after its last push")
def _():
    with RedisServer() as redis, gateway(redis, env={"WSGATE_BROKER_TTL": "1s"}) as a:
        accepted(push(a.port, "ttl1", b"old"))
        ttl = redis.cmd("PTTL", "ws.recv.ttl1")
        check(0 < ttl <= 1000, "PTTL %r, want <= 1000" % ttl)
        time.sleep(0.6)
        accepted(push(a.port, "ttl1", b"newer"))  # refreshes the TTL of the whole list
        time.sleep(0.6)
        check_eq(redis.cmd("LLEN", "ws.recv.ttl1"), 2, "list alive 1.2s after the first push")
        wait_for(lambda: redis.cmd("EXISTS", "ws.recv.ttl1") == 0, timeout=2,
                 what="list expiry")
        with a.ws("/ws/ttl1") as ws:
            check(ws.nothing_within(0.3), "expired message delivered")


@test("max_queue: a push over the bound answers 429 with Retry-After")
def _():
    with RedisServer() as redis, gateway(redis, env={"WSGATE_BROKER_MAX_QUEUE": "3"}) as a:
        for i in range(3):
            accepted(push(a.port, "full1", b"x%d" % i))
        r = push(a.port, "full1", b"x3")
        check_json_error(r, 429, "full queue")
        check(r.header("retry-after") is not None, "429 without Retry-After")
        check_eq(redis.cmd("LLEN", "ws.recv.full1"), 3, "queue length")


@test("README recipe: plain redis-cli RPUSH reaches an online and an offline client")
def _():
    with RedisServer() as redis, gateway(redis) as a:
        # exactly the README lines (host/port of the test server)
        redis.cli("RPUSH", "ws.recv.svc1.user42", "hello from redis-cli")
        redis.cli("EXPIRE", "ws.recv.svc1.user42", "3600")
        with a.ws("/ws/svc1.user42") as ws:
            check_eq(ws.recv_message(), (OP_TEXT, b"hello from redis-cli"), "offline message")
            t0 = time.monotonic()
            redis.cli("RPUSH", "ws.recv.svc1.user42", "second")
            check_eq(ws.recv_message(), (OP_TEXT, b"second"), "online message")
            note("redis-cli RPUSH -> frame: %.1f ms (includes redis-cli start-up)"
                 % ((time.monotonic() - t0) * 1000))
            # binary payloads from a producer are delivered byte-exact as binary frames
            with Resp(redis.port) as r:
                r.command("RPUSH", "ws.recv.svc1.user42", b"\x00\xff\xfe")
            check_eq(ws.recv_message(), (OP_BINARY, b"\x00\xff\xfe"), "binary message")


@test("upstream: client frames appear on the list ws.send.S byte-exact")
def _():
    with RedisServer() as redis, gateway(redis, env={"WSGATE_WEBSOCKET_UPSTREAM": "on"}) as a:
        with a.ws("/ws/up1") as ws:
            ws.send_text("h\u00e9llo")
            ws.send_binary(b"\x00\x01\xff")
            ws.send_text("")
            wait_for(lambda: redis.cmd("LLEN", "ws.send.up1") == 3, what="3 upstream items")
        check_eq(redis.cmd("LRANGE", "ws.send.up1", 0, -1),
                 ["h\u00e9llo".encode(), b"\x00\x01\xff", b""], "ws.send.up1")
        ttl = redis.cmd("PTTL", "ws.send.up1")
        check(ttl > 0, "ws.send.up1 has no TTL (%r)" % ttl)


@test("upstream: reads pause at max_upstream_inflight unconfirmed frames, not at max_inflight",
      timeout=40)
def _():
    n, size = 60, 8192
    frames = msgs(n, size=size, tag="u")

    def bytes_read_while_frozen(upstream_window, ack_window):
        """Client bytes the gateway read while Redis could confirm none of its frames."""
        env = {"WSGATE_WEBSOCKET_UPSTREAM": "on",
               "WSGATE_WEBSOCKET_MAX_UPSTREAM_INFLIGHT": upstream_window,
               "WSGATE_WEBSOCKET_MAX_INFLIGHT": ack_window,
               "WSGATE_REDIS_TIMEOUT": "10s"}  # the frozen RPUSHes must wait, not fail
        with RedisServer() as redis, gateway(redis, env=env) as a, a.ws("/ws/upf") as ws:
            before = metric(a.port, "wsgate_bytes_in_total")
            redis.freeze()
            sender = threading.Thread(target=lambda: [ws.send_binary(f) for f in frames],
                                      daemon=True)
            try:
                sender.start()
                time.sleep(1.0)
                read = metric(a.port, "wsgate_bytes_in_total") - before
            finally:
                redis.thaw()
            sender.join(15)
            check(not sender.is_alive(), "the client still cannot send after the thaw")
            wait_for(lambda: redis.cmd("LLEN", "ws.send.upf") == n, timeout=10,
                     what="%d upstream items" % n)
            check(redis.cmd("LRANGE", "ws.send.upf", 0, -1) == frames,
                  "ws.send.upf differs from what the client sent")
            return read

    # a window of 2: one 64 KiB read at most, then the socket is not read any more
    held = bytes_read_while_frozen("2", "1000")
    check(held < 200 * 1024, "max_upstream_inflight 2: read %d of %d bytes while no frame "
          "was confirmed" % (held, n * size))
    # and max_inflight (the ack window of deliveries) does not bound client frames
    free = bytes_read_while_frozen("1000", "2")
    check(free >= n * size, "max_upstream_inflight 1000, max_inflight 2: read only %d of %d "
          "bytes while no frame was confirmed" % (free, n * size))
    note("while Redis was frozen: %d bytes read with a window of 2, %d with 1000"
         % (held, free))


@test("broadcast across nodes: /publish and redis-cli PUBLISH reach every subscriber once")
def _():
    with RedisServer() as redis, gateway(redis, name="A") as a, gateway(redis, name="B") as b:
        with a.ws("/ws/bc1?topics=news,other") as w1, b.ws("/ws/bc2?topics=news") as w2, \
                b.ws("/ws/bc3?topics=other") as w3:
            accepted(publish(a.port, "news", b"n1"), "publish")
            redis.cli("PUBLISH", "ws.topic.news", "n2")
            for ws in (w1, w2):
                check_eq(recv_n(ws, 2), [b"n1", b"n2"], "news on %s" % ws.path)
                check(ws.nothing_within(0.2), "duplicate broadcast on %s" % ws.path)
            check(w3.nothing_within(0.1), "broadcast to a non-subscriber")


@test("client killed mid-stream: the reconnect gets exactly the unwritten rest, in order",
      timeout=40)
def _():
    env = {"WSGATE_WEBSOCKET_MAX_INFLIGHT": "16"}
    with RedisServer() as redis, gateway(redis, env=env, name="A") as a, \
            gateway(redis, env=env, name="B") as b:
        n = 3000
        want = msgs(n, size=2000)
        ws = a.ws("/ws/kill1", rcvbuf=4096)
        with Resp(redis.port) as r:
            r.command("RPUSH", "ws.recv.kill1", *want)
        check_eq(recv_n(ws, 20), want[:20], "first 20 before the kill")
        time.sleep(0.3)  # let the server fill the socket and its window
        infl = [k for k in inflight_keys(redis)]
        check(len(infl) == 1, "one in-flight list while the client is stalled: %r" % infl)
        held = redis.cmd("LLEN", infl[0])
        check(0 < held <= 16, "in-flight %d, want 1..max_inflight(16)" % held)
        kill_rst(ws)
        wait_for(lambda: metric(a.port, "wsgate_ws_connections_open") == 0,
                 what="A notices the dead client")
        wait_for(lambda: not inflight_keys(redis), what="in-flight messages released")
        written = int(metric(a.port, "wsgate_messages_delivered_total"))
        check(20 <= written < n, "written %d" % written)
        with b.ws("/ws/kill1") as ws2:
            rest = recv_n(ws2, n - written, timeout=15)
            check(rest == want[written:], "rest differs: first %r, want %r"
                  % (rest[0][:8], want[written][:8]))
            check(ws2.nothing_within(0.2), "more than the rest")
        note("%d written to the killed socket (kernel buffers), %d in flight returned, "
             "%d delivered after reconnect" % (written, held, n - written))


@test("kill -9 a gateway holding in-flight messages: reclaimed and delivered after restart",
      timeout=40)
def _():
    env = {"WSGATE_WEBSOCKET_MAX_INFLIGHT": "32"}
    with RedisServer() as redis:
        a = gateway(redis, env=env, name="A").start()
        n = 3000
        want = msgs(n, size=4000)
        ws = a.ws("/ws/crash1", rcvbuf=4096)
        with Resp(redis.port) as r:
            r.command("RPUSH", "ws.recv.crash1", *want)
        last = [None]

        def window_stable():
            k = inflight_keys(redis)
            cur = redis.cmd("LRANGE", k[0], 0, -1) if len(k) == 1 else None
            same = cur is not None and len(cur) == 32 and cur == last[0]
            last[0] = cur
            return same
        wait_for(window_stable, interval=0.3, what="32 messages in flight, socket full")
        held = last[0]
        a.signal(signal.SIGKILL)
        a.wait(5)
        ws.close_socket()
        t0 = time.monotonic()
        with gateway(redis, env=env, name="A2") as a2:
            wait_for(lambda: not inflight_keys(redis), timeout=8,
                     what="the dead node's in-flight list reclaimed")
            note("reclaimed %.1fs after the restart (lease 2s)" % (time.monotonic() - t0))
            left = redis.cmd("LLEN", "ws.recv.crash1")
            check_eq(redis.cmd("LRANGE", "ws.recv.crash1", 0, 31), held,
                     "in-flight messages back at the head, in order")
            with a2.ws("/ws/crash1") as ws2:
                rest = recv_n(ws2, left, timeout=15)
            check_eq(rest[:32], held, "in-flight messages delivered first")
            first = want.index(rest[0])
            check_eq(rest, want[first:], "the rest, in order")


@test("Redis killed (-9, AOF) during pushes: 503 + Retry-After, /readyz 503, clients stay; "
      "restart: resumes, no 202 lost", timeout=60)
def _():
    redis = RedisServer(aof=True).start()
    try:
        with gateway(redis, name="A") as a, gateway(redis, name="B") as b:
            ws = a.ws("/ws/dur1")
            h = b.http()
            accepted_bodies = []

            def push_one(i):
                body = b"d%04d" % i
                t = time.monotonic()
                try:
                    r = h.request("POST", "/push/dur1", body)
                except Exception:  # noqa: BLE001 — connection reset: reconnect, retry
                    h.reconnect()
                    r = h.request("POST", "/push/dur1", body)
                dt = time.monotonic() - t
                if r.status == 202:
                    accepted_bodies.append(body)
                return r, dt

            for i in range(50):
                accepted(push_one(i)[0])
            for i in range(5):
                accepted(push(b.port, "dur.offline", b"o%d" % i))
            before = recv_n(ws, 50)
            check_eq(before, accepted_bodies[:50], "before the crash")
            redis.kill9()
            codes = []
            for i in range(50, 70):
                r, dt = push_one(i)
                codes.append(r.status)
                if r.status == 503:
                    check(r.header("retry-after") is not None, "503 without Retry-After")
                    check(dt < 1.0, "503 took %.2fs" % dt)
            check(codes.count(503) >= 18, "codes while Redis is down: %r" % codes)
            wait_for(lambda: not ready(a) and not ready(b), what="/readyz 503 on both")
            check(ws.nothing_within(0.3), "unexpected message while Redis is down")
            check(not ws.wait_eof(0.1), "client was disconnected while Redis was down")
            redis2 = RedisServer(aof=True, port=redis.port)
            redis2.dir = redis.dir
            redis = redis2.start()
            wait_ready(a)
            wait_ready(b)
            for i in range(70, 120):
                accepted(push_one(i)[0])
            h.close()
            want = set(accepted_bodies)
            got = list(before)
            deadline = time.monotonic() + 10
            try:
                while not want.issubset(got):
                    got.append(ws.recv_message(max(0.01, deadline - time.monotonic()))[1])
            except TestTimeout:
                note("Redis: %r" % [(k, redis.cmd("LRANGE", k, 0, -1)) for k in
                                    redis.cmd("KEYS", "ws.*[fv].*")])
            check(want.issubset(got), "lost: %r (got %d: %r)" % (
                sorted(want - set(got))[:10], len(got), got[-5:]))
            firsts = [m for i, m in enumerate(got) if m not in got[:i]]
            check_eq(firsts, sorted(firsts), "order of first deliveries")
            ws.close_socket()
            with b.ws("/ws/dur.offline") as w2:
                check_eq(recv_n(w2, 5), [b"o%d" % i for i in range(5)], "offline queue (AOF)")
            note("while down: %d x 503; %d accepted in total, all delivered (%d duplicates)"
                 % (codes.count(503), len(want), len(got) - len(set(got))))
    finally:
        redis.stop()


@test("Redis frozen (kill -STOP): 503 within the deadline, /readyz 503; kill -CONT: resumes",
      timeout=40)
def _():
    with RedisServer() as redis, gateway(redis, name="A") as a, gateway(redis, name="B") as b:
        ws = a.ws("/ws/frz1")
        for i in range(3):
            accepted(push(b.port, "frz1", b"f%d" % i))
        check_eq(recv_n(ws, 3), [b"f0", b"f1", b"f2"], "before the freeze")
        redis.freeze()
        try:
            t0 = time.monotonic()
            r = push(b.port, "frz1", b"frozen")
            dt = time.monotonic() - t0
            check_json_error(r, 503, "push to a frozen Redis")
            check(r.header("retry-after") is not None, "503 without Retry-After")
            check(dt < 1.0, "push answered after %.2fs (deadline 500ms)" % dt)
            t1 = time.monotonic()
            wait_for(lambda: not ready(a), timeout=3, what="/readyz 503 on A")
            note("push 503 after %.0f ms; /readyz 503 on the idle node after %.0f ms more"
                 % (dt * 1000, (time.monotonic() - t1) * 1000))
            t0 = time.monotonic()
            r = push(a.port, "frz1", b"frozen2")
            check_json_error(r, 503, "second push")
            check(time.monotonic() - t0 < 1.0, "second push slow")
            check(not ws.wait_eof(0.1), "client dropped during the freeze")
        finally:
            redis.thaw()
        wait_ready(a)
        wait_ready(b)
        accepted(push(b.port, "frz1", b"after"))
        got = []
        while b"after" not in got:
            got.append(ws.recv_message(5)[1])
        # a push that timed out may still have been applied after the thaw (503 = unknown)
        check(set(got) <= {b"frozen", b"frozen2", b"after"}, "unexpected %r" % got)
        ws.close_socket()


@test("backpressure: a stalled client holds at most max_inflight messages out of Redis")
def _():
    env = {"WSGATE_WEBSOCKET_MAX_INFLIGHT": "8"}
    with RedisServer() as redis, gateway(redis, env=env) as a:
        ws = a.ws("/ws/slow1", rcvbuf=4096)
        n = 500
        with Resp(redis.port) as r:
            r.command("RPUSH", "ws.recv.slow1", *msgs(n, size=16000))
        time.sleep(0.5)
        k = inflight_keys(redis)
        held = redis.cmd("LLEN", k[0]) if k else 0
        queued = redis.cmd("LLEN", "ws.recv.slow1")
        written = int(metric(a.port, "wsgate_messages_delivered_total"))
        check(0 < held <= 8, "in flight %d, want 1..8" % held)
        check_eq(written + held + queued, n, "written + in flight + queued")
        check(queued > n // 2, "only %d left in Redis: the gateway took too much" % queued)
        check(metric(a.port, "wsgate_ws_connections_open") == 1, "slow client was closed")
        note("stalled client: %d written (kernel buffers), %d in flight, %d still queued"
             % (written, held, queued))
        ws.close_socket()


@test("a slow reader of large messages is not closed: its messages wait (no 1008)",
      timeout=60)
def _():
    # 64 in flight x 256 KiB is far over max_send_buffer (1 MiB): the window alone would
    # have the socket closed as slow; the gateway must hold back instead.
    with RedisServer() as redis, gateway(redis) as a:
        n, size = 40, 256 * 1024
        ws = a.ws("/ws/bigslow", rcvbuf=8192)
        with Resp(redis.port) as r:
            r.command("RPUSH", "ws.recv.bigslow", *[b"%04d" % i + b"." * size for i in range(n)])
        got = []
        while len(got) < n:
            time.sleep(0.02)  # a slow reader
            got.append(ws.recv_message(10)[1][:4])
        check_eq(got, [b"%04d" % i for i in range(n)], "all, in order")
        check_eq(int(metric(a.port, "wsgate_slow_client_closes_total")), 0, "slow closes")
        ws.close()


class Monitor:
    """Counts the commands Redis executes (MONITOR): per command name, split into those a
    client sent (one round trip each, pipelined or not) and those run inside Lua."""

    def __init__(self, redis):
        import threading
        self.r = Resp(redis.port)
        self.r.send("MONITOR")
        check_eq(self.r.reply(), b"OK", "MONITOR")
        self.client, self.lua = {}, {}
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            while True:
                line = self.r._line().decode("utf-8", "replace")
                if "] \"" not in line:
                    continue
                who, cmd = line.split("] \"", 1)
                name = cmd.split("\"", 1)[0].upper()
                d = self.lua if who.endswith("lua") else self.client
                d[name] = d.get(name, 0) + 1
        except (OSError, EOFError, ValueError):
            pass

    def stop(self):
        time.sleep(0.2)
        try:
            self.r.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.r.close()
        self.t.join(2)
        return self.client, self.lua


GATEWAY_CMDS = ("EVALSHA", "LPOP", "PUBLISH", "PING", "SUBSCRIBE", "HSET")


@test("SIGTERM: in-flight messages go back to the queue at once, the node deregisters")
def _():
    env = {"WSGATE_WEBSOCKET_MAX_INFLIGHT": "16"}
    with RedisServer() as redis:
        a = gateway(redis, env=env, name="A").start()
        n = 3000
        with Resp(redis.port) as r:
            r.command("RPUSH", "ws.recv.term1", *msgs(n, size=4000))
        ws = a.ws("/ws/term1", rcvbuf=4096)
        wait_for(lambda: len(inflight_keys(redis)) == 1 and
                 redis.cmd("LLEN", inflight_keys(redis)[0]) == 16, what="window full")
        check_eq(len(redis.cmd("SMEMBERS", "ws.nodes")), 1, "registered nodes")
        a.signal(signal.SIGTERM)
        time.sleep(0.2)
        kill_rst(ws)  # the stalled client cannot answer the 1001 close
        check_eq(a.wait(5), 0, "exit status")
        written = n - redis.cmd("LLEN", "ws.recv.term1")
        check_eq(inflight_keys(redis), [], "in-flight lists after SIGTERM")
        check_eq(redis.cmd("SMEMBERS", "ws.nodes"), [], "registered nodes after SIGTERM")
        check_eq(redis.cmd("KEYS", "ws.lease.*") + redis.cmd("KEYS", "ws.node.*"), [],
                 "lease and node keys")
        check_eq(redis.cmd("LINDEX", "ws.recv.term1", 0), msgs(n, size=4000)[written],
                 "queue head = first unwritten message")
        note("%d written before SIGTERM, %d back in the queue" % (written, n - written))


@test("O(1) Redis connections per node; Redis round trips per push->deliver")
def _():
    with RedisServer() as redis, gateway(redis, name="A") as a, gateway(redis, name="B") as b:
        clients = [a.ws("/ws/c%03d?topics=t1" % i) for i in range(200)]
        try:
            check_eq(redis_clients(redis), 4, "Redis clients for 2 nodes with 200 sessions")
            ws = clients[0]
            h = b.http()
            n = 200
            mon = Monitor(redis)
            for i in range(n):  # one at a time: the latency path, nothing to batch
                accepted(h.request("POST", "/push/c000", b"x%d" % i))
                check_eq(ws.recv_message()[1], b"x%d" % i, "message %d" % i)
            cs, ls = mon.stop()
            mon = Monitor(redis)
            ha = a.http()
            for i in range(n):  # the same through the node that holds the socket: direct
                accepted(ha.request("POST", "/push/c002", b"y%d" % i))
                check_eq(clients[2].recv_message()[1], b"y%d" % i, "direct message %d" % i)
            ha.close()
            cd, ld = mon.stop()
            mon = Monitor(redis)
            with Resp(redis.port) as r:
                r.command("RPUSH", "ws.recv.c001", *msgs(2000))
            got = recv_all([clients[1]], 2000, timeout=10)[clients[1]]
            check_eq(len(got), 2000, "burst delivered")
            cb, lb = mon.stop()
            h.close()
            per_seq = sum(cs.get(c, 0) for c in GATEWAY_CMDS) / n
            per_burst = sum(cb.get(c, 0) for c in GATEWAY_CMDS) / 2000
            note("one at a time, 200 x POST /push on B -> frame on A: gateway commands %r, "
                 "inside Lua %r" % (cs, ls))
            note("=> %.2f round trips per push->deliver (push, fetch; acks batched)"
                 % per_seq)
            per_direct = sum(cd.get(c, 0) for c in GATEWAY_CMDS) / n
            note("one at a time through A, which holds the socket: gateway commands %r, "
                 "inside Lua %r" % (cd, ld))
            note("=> %.2f round trips per push->deliver (the push moves it straight into "
                 "the socket's in-flight list)" % per_direct)
            check(per_direct <= 1.2, "%.2f round trips per direct push, want ~1" % per_direct)
            note("burst of 2000 RPUSHed by a producer: gateway commands %r, inside Lua %r"
                 % ({k: v for k, v in cb.items() if k in GATEWAY_CMDS}, lb))
            note("=> %.3f round trips per message when batched" % per_burst)
            check(per_seq <= 2.5, "%.2f round trips per message, want ~2" % per_seq)
            check(per_burst <= 0.1, "%.3f round trips per message in a burst" % per_burst)
        finally:
            for c in clients:
                c.close_socket()


def window_full(redis, n):
    """A condition: exactly one in-flight list, holding n messages."""
    def f():
        k = inflight_keys(redis)
        return len(k) == 1 and redis.cmd("LLEN", k[0]) == n
    return f


@test("scripts lost (SCRIPT FLUSH): reloaded, pushes 202 and delivered, the lease holds "
      "(no duplicates), /readyz 200", timeout=60)
def _():
    env = {"WSGATE_WEBSOCKET_MAX_INFLIGHT": "16"}
    with RedisServer() as redis, gateway(redis, env=env, name="A") as a, \
            gateway(redis, env=env, name="B") as b:
        # a stalled socket on A keeps a full window in flight for longer than one lease
        n = 3000
        want = msgs(n, size=4000)
        stalled = a.ws("/ws/sf.stalled", rcvbuf=4096)
        live = a.ws("/ws/sf.live")
        with Resp(redis.port) as r:
            r.command("RPUSH", "ws.recv.sf.stalled", *want)
        wait_for(window_full(redis, 16), what="16 messages in flight, socket full")
        nodes = sorted(redis.cmd("SMEMBERS", "ws.nodes"))
        check_eq(len(nodes), 2, "registered nodes")
        check_eq(redis.cmd("SCRIPT", "FLUSH"), b"OK", "SCRIPT FLUSH")
        t0 = time.monotonic()
        ha, hb = a.http(), b.http()
        try:
            for i in range(40):  # one at a time, through both nodes
                h = ha if i % 2 else hb
                accepted(h.request("POST", "/push/sf.live", b"p%02d" % i), "push %d" % i)
                check_eq(live.recv_message(3)[1], b"p%02d" % i, "push %d delivered" % i)
                check(ready(a) and ready(b), "/readyz not 200 after push %d" % i)
            # one lease (2 s) and more with the window still in flight: the heartbeats must
            # have renewed both leases, so nothing was reclaimed
            while time.monotonic() - t0 < 3.0:
                time.sleep(0.1)
            check_eq(sorted(redis.cmd("SMEMBERS", "ws.nodes")), nodes, "nodes after a lease")
            for nid in nodes:
                check(redis.cmd("PTTL", b"ws.lease." + nid) > 0, "lease of %r lapsed" % nid)
            check(window_full(redis, 16)(), "the stalled window was reclaimed")
            for i in range(40, 50):
                accepted(hb.request("POST", "/push/sf.live", b"p%02d" % i), "push %d" % i)
            check_eq(recv_n(live, 10), [b"p%02d" % i for i in range(40, 50)], "later pushes")
        finally:
            ha.close()
            hb.close()
        check(ready(a) and ready(b), "/readyz after the reload")
        got = recv_n(stalled, n, timeout=30)
        check(got == want, "stalled socket: %d messages, first difference at %r" % (
            len(got), next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), None)))
        check(stalled.nothing_within(0.3), "duplicates after the %d messages" % n)
        check(live.nothing_within(0.1), "duplicate pushes")
        for srv in (a, b):
            log = srv.log_text()
            check("redis_reset" not in log, "link reset on %s:\n%s" % (srv.addr, log[-2000:]))
            check("redis_reclaimed" not in log, "messages reclaimed on %s" % srv.addr)
        # the first node to see NOSCRIPT reloads them (for every node: one script cache)
        check("redis_scripts_loaded" in a.log_text() + b.log_text(), "no reload logged")
        stalled.close()
        live.close()


@test("scripts lost and not loadable (ACL): /readyz 503 and pushes 503 meanwhile; "
      "loadable again: ready, delivered", timeout=40)
def _():
    with RedisServer() as redis, gateway(redis, name="A") as a:
        with a.ws("/ws/sb1") as ws:
            accepted(push(a.port, "sb1", b"before"))
            check_eq(ws.recv_message()[1], b"before", "before the flush")
            redis.cmd("SCRIPT", "FLUSH")
            redis.cmd("ACL", "SETUSER", "default", "-script")
            r = push(a.port, "sb1", b"lost")  # NOSCRIPT, reload refused, retry NOSCRIPT
            check_json_error(r, 503, "push while the scripts cannot be loaded")
            wait_for(lambda: not ready(a), what="/readyz 503 while the scripts are missing")
            check_json_error(push(a.port, "sb1", b"lost2"), 503, "push while not ready")
            redis.cmd("ACL", "SETUSER", "default", "+script")
            t0 = time.monotonic()
            wait_ready(a, timeout=5)  # the heartbeat (every lease/3) loads them again
            note("ready again %.2fs after the scripts became loadable" % (time.monotonic() - t0))
            accepted(push(a.port, "sb1", b"after"))
            check_eq(ws.recv_message()[1], b"after", "after the reload")
            check(ws.nothing_within(0.2), "a refused push was delivered")


@test("a burst of 400 x 64 KiB: never more than the socket can take (no 1008), for a fast "
      "reader (python3-websockets) and one that never reads", timeout=120)
def _():
    import subprocess
    n, size = 400, 64 * 1024
    env = {"WSGATE_WEBSOCKET_MAX_SEND_BUFFER": "1m", "WSGATE_BROKER_MAX_QUEUE": "10000"}
    with RedisServer() as redis, gateway(redis, env=env) as a:
        stalled = a.ws("/ws/lb.never", rcvbuf=16384)
        fast = subprocess.Popen(["/usr/bin/python3", "-c", FAST_READER,
                                 "ws://127.0.0.1:%d/ws/lb.fast" % a.port, str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            check_eq(fast.stdout.readline().strip(), b"ready", "fast reader connected")
            t0 = time.monotonic()
            with a.http() as h:
                for i in range(n):
                    body = b"%06d" % i + b"." * (size - 6)
                    accepted(h.request("POST", "/push/lb.fast", body), "push %d" % i)
                    accepted(h.request("POST", "/push/lb.never", body), "push %d" % i)
            dt = time.monotonic() - t0
            out, _ = fast.communicate(timeout=60)
        finally:
            if fast.poll() is None:
                fast.kill()
                fast.wait()
        res = out.decode().strip().splitlines()[-1]
        left = redis.cmd("LLEN", "ws.recv.lb.never")
        note("2 x %d x %d KiB pushed in %.2fs; fast reader: %s; never-reading socket: %d "
             "still in Redis" % (n, size // 1024, dt, res, left))
        check_eq(res, "got=%d in_order=1 close=None" % n, "fast reader")
        check_eq(metric(a.port, "wsgate_slow_client_closes_total"), 0.0, "slow closes")
        check(left > n // 2, "the never-reading socket took %d messages" % (n - left))
        check(not stalled.wait_eof(0.2), "the never-reading socket was closed")
        stalled.close_socket()


def churn(nodes, how, sessions=12, per=150, prefix="ch"):
    """Push per messages to each of sessions sessions, one request in flight per keep-alive
    connection (one pusher thread per node, alternating nodes per session), while every
    session's client reconnects over and over to the other node after a few messages,
    leaving with how = "clean" (close handshake; data frames that arrive before the close
    reply count as received), "fin" (FIN without a close frame, reading on to the end: a
    crashed tab whose kernel still delivers) or "rst" (reset: what was in flight to it is
    lost to the client, so only duplicates are meaningful).
    Returns (pushed, got, conns): per session the pushed bodies, the received bodies in
    arrival order, and the bodies of each connection."""
    import random
    import threading
    rnd = random.Random(7)
    keys = ["%s%02d" % (prefix, i) for i in range(sessions)]
    pushed = {k: [] for k in keys}
    errors = []

    def pusher(mine, first):
        hs = [n.http() for n in nodes]
        try:
            for j in range(per):
                for i, k in enumerate(mine):
                    body = b"%s-%05d" % (k.encode(), j)
                    r = hs[(first + i + j) % len(hs)].request("POST", "/push/" + k, body)
                    if r.status != 202:
                        errors.append("push %s: %d" % (body, r.status))
                        return
                    pushed[k].append(body)
        except Exception as e:  # noqa: BLE001
            errors.append("pusher: %r" % e)
        finally:
            for h in hs:
                h.close()

    threads = [threading.Thread(target=pusher, args=(keys[i::2], i), daemon=True)
               for i in range(2)]
    got = {k: [] for k in keys}
    conns = {k: [] for k in keys}
    state = {}  # key -> [ws, node index, messages left before leaving]

    def connect(k, ni):
        ws = nodes[ni].ws("/ws/" + k)
        ws.sock.setblocking(False)
        conns[k].append([])
        state[k] = [ws, ni, rnd.randint(1, 12)]

    def take(k, payload):
        last_rx[0] = time.monotonic()
        got[k].append(payload)
        conns[k][-1].append(payload)

    def leave(k):
        ws, ni, _ = state.pop(k)
        ws.sock.setblocking(True)
        if how == "clean":
            ws.send_close(1000)
            deadline = time.monotonic() + 5
            while True:
                f = ws.recv_frame(max(0.01, deadline - time.monotonic()))
                if f.opcode in (OP_TEXT, OP_BINARY):
                    take(k, f.payload)
                elif f.opcode == OP_CLOSE:
                    break
            ws.close_socket()
        elif how == "rst":
            kill_rst(ws)
        else:
            ws.sock.shutdown(socket.SHUT_WR)
            try:
                while True:
                    f = ws.recv_frame(5)
                    if f.opcode in (OP_TEXT, OP_BINARY):
                        take(k, f.payload)
            except Closed:
                pass
            ws.close_socket()
        connect(k, (ni + 1) % len(nodes))

    for i, k in enumerate(keys):
        connect(k, i % len(nodes))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    last_rx = [time.monotonic()]
    import selectors
    while time.monotonic() < deadline and not errors:
        done_pushing = not any(t.is_alive() for t in threads)
        if done_pushing and (all(len(got[k]) >= len(pushed[k]) for k in keys) or
                             time.monotonic() - last_rx[0] > 1.0):
            break
        sel = selectors.DefaultSelector()
        for k, (ws, _, _) in state.items():
            sel.register(ws.sock, selectors.EVENT_READ, k)
        ready_keys = [key.data for key, _ in sel.select(0.05)]
        sel.close()
        for k in ready_keys:
            ws = state[k][0]
            try:
                data = ws.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            check(data, "server closed session %s" % k)
            ws.parser.feed(data)
            while k in state:
                f = ws.parser.next()
                if f is None:
                    break
                if f.opcode == OP_PING:
                    ws.sock.setblocking(True)
                    ws.send_frame(OP_PONG, f.payload)
                    ws.sock.setblocking(False)
                elif f.opcode in (OP_TEXT, OP_BINARY):
                    take(k, f.payload)
                    state[k][2] -= 1
                    if state[k][2] <= 0 and not done_pushing:
                        leave(k)
                        break
                elif f.opcode == OP_CLOSE:
                    raise AssertionError("server closed %s: %r" % (k, f))
    for t in threads:
        t.join(10)
    check(not errors, "pushes failed: %r" % errors[:5])
    # whatever is still due arrives on the last connections, nothing more
    rest = recv_all([v[0] for v in state.values()], 1, timeout=0.3)
    for k, (ws, _, _) in list(state.items()):
        for _, d in rest[ws]:
            take(k, d)
        ws.close_socket()
    return pushed, got, conns


@test("clean reconnects across nodes while pushing: 0 duplicates, none lost, in order",
      timeout=90)
def _():
    with RedisServer() as redis, gateway(redis, name="A") as a, gateway(redis, name="B") as b:
        pushed, got, conns = churn([a, b], "clean")
        total = sum(len(v) for v in pushed.values())
        nconns = sum(len(v) for v in conns.values())
        dups = sum(len(got[k]) - len(set(got[k])) for k in got)
        lost = sum(len(set(pushed[k]) - set(got[k])) for k in got)
        disorder = sum(1 for k in conns for c in conns[k] if c != sorted(c))
        note("%d messages, %d connections (clean close handshakes): %d duplicates, %d lost, "
             "%d connections out of order" % (total, nconns, dups, lost, disorder))
        check_eq(dups, 0, "duplicates")
        check_eq(lost, 0, "lost")
        check_eq(disorder, 0, "connections that got messages out of order")
        for k in got:
            check_eq(got[k], pushed[k], "session %s, all connections in sequence" % k)


@test("abrupt reconnects (FIN, RST without a close frame): none lost; duplicates reported",
      timeout=120)
def _():
    with RedisServer() as redis, gateway(redis, name="A") as a, gateway(redis, name="B") as b:
        for how in ("fin", "rst"):
            pushed, got, conns = churn([a, b], how, prefix=how)
            total = sum(len(v) for v in pushed.values())
            nconns = sum(len(v) for v in conns.values())
            dups = sum(len(got[k]) - len(set(got[k])) for k in got)
            lost = sum(len(set(pushed[k]) - set(got[k])) for k in got)
            note("%s: %d messages, %d connections: %d duplicates (%.1f per 1000 messages), "
                 "%d not received" % (how, total, nconns, dups, 1000.0 * dups / total, lost))
            if how == "fin":  # the client read to the end: nothing written went missing
                check_eq(lost, 0, "lost (%s)" % how)


@test("a close handshake is answered once its acks are in Redis: the node dying right after "
      "redelivers nothing (Redis link stalled meanwhile)", timeout=40)
def _():
    with RedisServer() as redis, TcpProxy(redis.port) as proxy:
        env = {"WSGATE_REDIS_URL": proxy.url(), "WSGATE_REDIS_TIMEOUT": "2s",
               "WSGATE_WEBSOCKET_MAX_INFLIGHT": "16"}
        a = gateway(redis, env=env, name="A").start()
        with gateway(redis, name="B") as b:
            n = 3000
            want = msgs(n, size=4000)
            ws = a.ws("/ws/settle1", rcvbuf=4096)
            with Resp(redis.port) as r:
                r.command("RPUSH", "ws.recv.settle1", *want)
            wait_for(window_full(redis, 16), what="16 messages in flight, socket full")
            nid = [x for x in redis.cmd("SMEMBERS", "ws.nodes")
                   if b"ws.recv.settle1" in redis.cmd("HVALS", b"ws.node." + x)]
            check_eq(len(nid), 1, "A's registration")
            proxy.hold(1.0)  # A's commands (acks, fetches, the release) stall for 1 s
            # read what A writes meanwhile for 0.3 s: kernel buffers, the window as it drains
            got = []
            end = time.monotonic() + 0.3
            try:
                while time.monotonic() < end:
                    got.append(ws.recv_message(max(0.01, end - time.monotonic()))[1])
            except TestTimeout:
                pass
            t0 = time.monotonic()
            ws.send_close(1000)
            while True:
                f = ws.recv_frame(3)
                if f.opcode in (OP_TEXT, OP_BINARY):
                    got.append(f.payload)
                elif f.opcode == OP_CLOSE:
                    break
            dt = time.monotonic() - t0
            a.signal(signal.SIGKILL)  # right after the clean close
            a.wait(5)
            ws.close_socket()
            check_eq(got, want[:len(got)], "received before the close")
            # B sweeps A's lease away (5 s): anything A had not confirmed comes back then
            wait_for(lambda: not (set(nid) & set(redis.cmd("SMEMBERS", "ws.nodes"))),
                     timeout=10, what="A's registration swept by B")
            with b.ws("/ws/settle1") as ws2:
                rest = recv_n(ws2, n - len(got), timeout=20)
                check(ws2.nothing_within(0.5), "duplicates after the rest")
            dups = len(got) + len(rest) - len(set(got + rest))
            note("%d received on A (close reply after %.0f ms), %d duplicates"
                 % (len(got), dt * 1000, dups))
            check_eq(dups, 0, "duplicates")
            check(rest == want[len(got):], "the rest, in order")


@test("the 101 waits for the SUBSCRIBE confirmation (Redis frozen meanwhile)")
def _():
    with RedisServer() as redis:
        check_101_waits_for_subscribe(redis, "redis-list")


run()
