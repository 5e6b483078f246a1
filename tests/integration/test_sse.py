"""test_sse.py — Server-Sent Events (GET /sse/{S}, DESIGN.md 8.2) against the real binary:
events in order on the same delivery path as a WebSocket, a text message as data: lines,
a binary one as event: binary + base64, broadcasts by ?topics=, ":" comments every
ping_interval, the same access control as WebSockets (JWT by ?token=), an id: per message
and redelivery of what was not written on redis-list (real redis-server), and curl as an
independent client. Does NOT test a browser's EventSource (the browser test does).
Starts its own wsgate and redis-server processes."""

import base64
import os
import re
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403
from redis_helpers import RedisServer  # noqa: E402


class Sse:
    """A raw SSE client: the request, the response head, then events as dicts."""

    def __init__(self, port, path, headers=()):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        extra = "".join("%s: %s\r\n" % h for h in headers)
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n%s\r\n"
                           % (path, extra)).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._more(5)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode()
        self.status = int(self.head.split()[1])

    def _more(self, timeout):
        self.sock.settimeout(timeout)
        d = self.sock.recv(65536)
        if not d:
            raise EOFError("stream ended")
        self.buf += d

    def block(self, timeout=5):
        """The next block (event or comment) up to its blank line, as text."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestTimeout("no SSE block within %.1fs" % timeout)
            self._more(left)
        blk, self.buf = self.buf.split(b"\n\n", 1)
        return blk.decode()

    def event(self, timeout=5):
        """The next event (comments skipped): {'data': str, 'event': str|None, 'id': ...}."""
        while True:
            blk = self.block(timeout)
            ev = {"data": [], "event": None, "id": None}
            for line in blk.split("\n"):
                if line.startswith(":"):
                    continue
                k, _, v = line.partition(": ")
                if k == "data":
                    ev["data"].append(v)
                elif k in ("event", "id"):
                    ev[k] = v
            if ev["data"] or ev["event"]:
                ev["data"] = "\n".join(ev["data"])
                return ev

    def close(self):
        self.sock.close()


@test("text, multi-line, UTF-8 and binary messages arrive in order as events")
def _():
    with Server() as srv:
        s = Sse(srv.port, "/sse/s1")
        check_eq(s.status, 200, "status")
        check("Content-Type: text/event-stream" in s.head, "content type:\n" + s.head)
        check("Cache-Control: no-cache" in s.head, "cache control")
        bodies = [b"one", b"line1\nline2", "h\u00e9llo \u2713".encode(), b"\x00\x01\xff"]
        for b in bodies:
            accepted(push(srv.port, "s1", b), "push")
        check_eq(s.event(), {"data": "one", "event": None, "id": None}, "text")
        check_eq(s.event()["data"], "line1\nline2", "a newline splits data: lines")
        check_eq(s.event()["data"], "h\u00e9llo \u2713", "UTF-8")
        ev = s.event()
        check_eq(ev["event"], "binary", "binary event")
        check_eq(base64.b64decode(ev["data"]), b"\x00\x01\xff", "base64 payload")
        check_eq(metric(srv.port, "wsgate_messages_delivered_total"), 4.0, "delivered")
        s.close()


@test("queued while offline, delivered on connect; broadcasts by ?topics=; comments keep alive")
def _():
    with Server(env={"WSGATE_WEBSOCKET_PING_INTERVAL": "300ms"}) as srv:
        accepted(push(srv.port, "s2", b"early"), "offline push")
        s = Sse(srv.port, "/sse/s2?topics=news")
        check_eq(s.event()["data"], "early", "offline message")
        accepted(publish(srv.port, "news", b"flash"), "publish")
        check_eq(s.event()["data"], "flash", "broadcast")
        check_eq(s.block(timeout=2), ":", "keep-alive comment")
        s.close()


@test("curl reads the stream (independent client)")
def _():
    with Server() as srv:
        p = subprocess.Popen(["curl", "-sN", "-m", "3", "http://127.0.0.1:%d/sse/c1" % srv.port],
                             stdout=subprocess.PIPE)
        wait_for(lambda: metric(srv.port, "wsgate_ws_connections_open") == 1, 3, 0.05,
                 "curl connected")
        accepted(push(srv.port, "c1", b"via curl"), "push")
        out = p.communicate(timeout=10)[0]
        check_eq(out, b"data: via curl\n\n", "curl output")


@test("client auth: no token 401, ?token= works, token for another session 403")
def _():
    env = {"WSGATE_AUTH_JWT_SECRET": "sse-secret"}
    with Server(env=env) as srv:
        tok = subprocess.run([BIN, "--mint-token", "a1"], env=dict(os.environ, WSGATE_AUTH_JWT_SECRET="sse-secret"),
                             stdout=subprocess.PIPE, check=True, text=True).stdout.strip()
        check_eq(Sse(srv.port, "/sse/a1").status, 401, "no token")
        check_eq(Sse(srv.port, "/sse/b1?token=" + tok).status, 403, "other session")
        s = Sse(srv.port, "/sse/a1?token=" + tok)
        check_eq(s.status, 200, "token")
        accepted(push(srv.port, "a1", b"authorised"), "push")
        check_eq(s.event()["data"], "authorised", "delivered")
        s.close()
        check(tok not in srv.log_text(), "the token reached the log")


@test("redis-list: events carry id:; a message pushed while the client was away arrives on reconnect")
def _():
    redis = RedisServer().start()
    try:
        with Server(env={"WSGATE_BROKER_TYPE": "redis-list", "WSGATE_REDIS_URL": redis.url()}) as srv:
            wait_for(lambda: http_request(srv.port, "GET", "/readyz").status == 200, 5, 0.05,
                     "redis-list ready")
            s = Sse(srv.port, "/sse/r1")
            check_eq(s.status, 200, "status")
            accepted(push(srv.port, "r1", b"first"), "push")
            ev = s.event()
            check_eq(ev["data"], "first", "delivered")
            check(ev["id"] is not None and ev["id"].isdigit(), "id: line %r" % ev["id"])
            s.close()
            wait_for(lambda: metric(srv.port, "wsgate_ws_connections_open") == 0, 3, 0.05, "closed")
            accepted(push(srv.port, "r1", b"second"), "push while offline")
            s = Sse(srv.port, "/sse/r1")
            check_eq(s.event()["data"], "second", "offline message after reconnect")
            s.close()
    finally:
        redis.stop()


@test("SIGTERM ends the stream; a client that does not read is judged slow like a WebSocket",
      timeout=60)
def _():
    env = {"WSGATE_WEBSOCKET_MAX_SEND_BUFFER": "64k", "WSGATE_BROKER_MAX_QUEUE": "100000"}
    with Server(env=env) as srv:
        slow = socket.create_connection(("127.0.0.1", srv.port))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"GET /sse/slow?topics=t HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: metric(srv.port, "wsgate_ws_connections_open") == 1, 3, 0.05, "open")
        body = b"x" * 65536
        with srv.http() as c:
            for _ in range(200):
                c.request("POST", "/publish/t", body)
        wait_for(lambda: metric(srv.port, 'wsgate_connections_closed_total{reason="slow"}') >= 1,
                 5, 0.1, "slow SSE client closed")
        s = Sse(srv.port, "/sse/end")
        srv.proc.send_signal(15)
        try:
            while True:
                s.block(timeout=5)
        except EOFError:
            pass
        check_eq(srv.proc.wait(5), 0, "exit code")


@test("redis-list: SIGTERM ends a stream with a write in flight: what reached the client is "
      "acked, not delivered again on reconnect; nothing lost", timeout=60)
def _():
    redis = RedisServer().start()
    env = {"WSGATE_BROKER_TYPE": "redis-list", "WSGATE_REDIS_URL": redis.url(),
           "WSGATE_WEBSOCKET_MAX_SEND_BUFFER": "32m", "WSGATE_WEBSOCKET_CLOSE_TIMEOUT": "10s",
           "WSGATE_SERVER_DRAIN_TIMEOUT": "10s"}
    # 10 MB: more than the kernel takes on loopback (the send buffer autotunes to ~4 MiB),
    # so a write is still in flight when the stream ends
    n, pad = 160, "." * 64000
    try:
        with Server(env=env) as srv:
            wait_for(lambda: http_request(srv.port, "GET", "/readyz").status == 200, 5, 0.05,
                     "redis-list ready")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # writes stay in flight
            sock.connect(("127.0.0.1", srv.port))
            sock.sendall(b"GET /sse/inflight HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: metric(srv.port, "wsgate_ws_connections_open") == 1, 3, 0.05, "open")
            for i in range(n):
                accepted(push(srv.port, "inflight", ("m%03d%s" % (i, pad)).encode()), "push %d" % i)
            time.sleep(0.5)  # the gateway has written what the kernel took; one write waits
            srv.proc.send_signal(15)
            raw = b""
            sock.settimeout(10)
            while True:
                d = sock.recv(65536)
                if not d:
                    break
                raw += d
            sock.close()
            check_eq(srv.proc.wait(15), 0, "exit code")
        first = re.findall(rb"data: (m\d{3})", raw)
        note("first stream: %d events before the end" % len(first))
        check(0 < len(first) < n, "some, not all, events before SIGTERM: %d" % len(first))
        with Server(env=env) as srv:
            wait_for(lambda: http_request(srv.port, "GET", "/readyz").status == 200, 5, 0.05,
                     "redis-list ready")
            s = Sse(srv.port, "/sse/inflight")
            second = []
            try:
                while True:
                    second.append(s.event(timeout=2)["data"][:4].encode())
            except (TestTimeout, socket.timeout):
                pass  # nothing more for 2 s
            s.close()
        dup = sorted(set(first) & set(second))
        check(not dup, "%d events delivered on both streams (first %s): written, then given "
              "back to the broker" % (len(dup), dup[:3]))
        got = set(first) | set(second)
        check_eq(len(got), n, "distinct messages over both streams (none lost)")
    finally:
        redis.stop()


run()
