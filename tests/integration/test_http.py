#!/usr/bin/python3
"""test_http.py — wsgate's HTTP/1.1 side (DESIGN.md §2): keep-alive, pipelining, chunked
bodies, Expect: 100-continue, curl, /healthz /readyz /metrics, and every 4xx answer
(400 404 405 408 413 431 503) with its JSON body. Does NOT test WebSocket frames
(test_ws.py) or delivery semantics (test_push.py). Starts its own wsgate processes."""

import base64
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403

METRIC_NAMES = [
    "wsgate_ws_connections_open", "wsgate_ws_connections_total",
    "wsgate_http_connections_open", "wsgate_http_requests_total",
    "wsgate_messages_pushed_total", "wsgate_messages_published_total",
    "wsgate_messages_delivered_total", "wsgate_messages_dropped_total",
    "wsgate_messages_upstream_total", "wsgate_bytes_in_total", "wsgate_bytes_out_total",
    "wsgate_broker_errors_total", "wsgate_slow_client_closes_total",
    "wsgate_handshake_timeouts_total", "wsgate_broker_ready",
]


def upgrade_refused(srv, path, status, extra=None, omit=(), what=None):
    """Send a handshake with the given header changes; expect a JSON error status."""
    key = base64.b64encode(os.urandom(16)).decode()
    with srv.http() as c:
        c.send(ws_handshake_request(path, srv.port, key, extra, omit))
        r = c.read_response()
    check_json_error(r, status, what or path)
    return r


@test("/healthz 200, /readyz 200, /metrics 200 text/plain with every metric name")
def _():
    with Server() as srv:
        check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "/healthz")
        check_eq(http_request(srv.port, "GET", "/readyz").status, 200, "/readyz")
        r = http_request(srv.port, "GET", "/metrics")
        check_eq(r.status, 200, "/metrics status")
        ct = r.header("content-type") or ""
        check(ct.startswith("text/plain"), "/metrics Content-Type %r" % ct)
        m = metrics(srv.port)
        missing = [n for n in METRIC_NAMES if n not in m]
        check(not missing, "metrics missing: %s\n%s" % (missing, r.body.decode()[:1500]))
        check_eq(m["wsgate_broker_ready"], 1.0, "wsgate_broker_ready")


@test("/metrics values move: pushed, delivered, published, connections, bytes")
def _():
    with Server() as srv:
        m0 = metrics(srv.port)
        with srv.ws("/ws/mx?topics=mt") as ws:
            m1 = metrics(srv.port)
            check_eq(m1["wsgate_ws_connections_open"], m0["wsgate_ws_connections_open"] + 1,
                     "ws_connections_open while connected")
            check_eq(m1["wsgate_ws_connections_total"], m0["wsgate_ws_connections_total"] + 1,
                     "ws_connections_total")
            check(push(srv.port, "mx", b"x" * 1000).status == 202, "push")
            check(ws.recv_message()[1] == b"x" * 1000, "delivery")
            check(publish(srv.port, "mt", b"y").status == 202, "publish")
            check(ws.recv_message()[1] == b"y", "broadcast delivery")
            m2 = metrics(srv.port)
            check_eq(m2["wsgate_messages_pushed_total"] - m0["wsgate_messages_pushed_total"], 1,
                     "pushed_total delta")
            check_eq(m2["wsgate_messages_published_total"]
                     - m0["wsgate_messages_published_total"], 1, "published_total delta")
            check_eq(m2["wsgate_messages_delivered_total"]
                     - m0["wsgate_messages_delivered_total"], 2, "delivered_total delta")
            check(m2["wsgate_http_requests_total"] >= m0["wsgate_http_requests_total"] + 4,
                  "http_requests_total did not grow by >= 4: %s -> %s"
                  % (m0["wsgate_http_requests_total"], m2["wsgate_http_requests_total"]))
            check(m2["wsgate_bytes_in_total"] >= m0["wsgate_bytes_in_total"] + 1000,
                  "bytes_in_total grew less than the pushed body")
            check(m2["wsgate_bytes_out_total"] >= m0["wsgate_bytes_out_total"] + 1000,
                  "bytes_out_total grew less than the delivered frame")
            ws.close()
        wait_for(lambda: metrics(srv.port)["wsgate_ws_connections_open"]
                 == m0["wsgate_ws_connections_open"], what="ws_connections_open back down")


@test("keep-alive: 1000 requests on one connection")
def _():
    with Server() as srv:
        with srv.http() as c:
            for i in range(1000):
                if i % 10 == 0:
                    r = c.request("POST", "/push/ka%d" % i, b"body%d" % i)
                    check(r.status == 202, "request %d: %r" % (i, r))
                else:
                    r = c.request("GET", "/healthz")
                    check(r.status == 200, "request %d: %r" % (i, r))
                check(r.keep_alive(), "request %d answered Connection: close" % i)
        with srv.ws("/ws/ka990") as ws:
            check_eq(ws.recv_message(), (OP_TEXT, b"body990"), "a pushed body")


@test("pipelining: 10 requests in one send are answered in order")
def _():
    with Server() as srv:
        reqs = []
        want = []
        for i in range(10):
            if i % 3 == 0:
                reqs.append(build_request("POST", "/push/pipe", b"p%d" % i, port=srv.port))
                want.append((202, "application/json"))
            elif i % 3 == 1:
                reqs.append(build_request("GET", "/metrics", port=srv.port))
                want.append((200, "text/plain"))
            else:
                reqs.append(build_request("GET", "/healthz", port=srv.port))
                want.append((200, None))
        with srv.http() as c:
            c.send(b"".join(reqs))
            got = []
            for i in range(10):
                r = c.read_response()
                got.append(r)
            for i, (r, (st, ct)) in enumerate(zip(got, want)):
                check(r.status == st, "response %d: status %d, want %d" % (i, r.status, st))
                if ct:
                    check((r.header("content-type") or "").startswith(ct),
                          "response %d: Content-Type %r, want %s" % (i, r.header("content-type"),
                                                                      ct))
            # still usable afterwards
            check_eq(c.request("GET", "/healthz").status, 200, "request after the pipeline")
        with srv.ws("/ws/pipe") as ws:
            for i in (0, 3, 6, 9):
                check_eq(ws.recv_message(), (OP_TEXT, b"p%d" % i), "pipelined push order")


@test("pipelining: 500 pushes in one send past max_pipeline, answered and delivered in order")
def _():
    with Server(env={"WSGATE_SERVER_MAX_PIPELINE": "16"}) as srv:
        with srv.ws("/ws/burst") as ws:
            reqs = b"".join(build_request("POST", "/push/burst", b"b%d" % i, port=srv.port)
                            for i in range(500))
            with srv.http(timeout=10) as c:
                c.send(reqs)
                for i in range(500):
                    r = c.read_response()
                    check(r.status == 202, "response %d: %s" % (i, r.describe()))
            got = [ws.recv_message()[1] for _ in range(500)]
            bad = [i for i in range(500) if got[i] != b"b%d" % i]
            check(not bad, "out of order from #%s: %r" % (bad[:1], got[bad[0]] if bad else None))


@test("Connection: close and HTTP/1.0 requests are answered, then the connection closes")
def _():
    with Server() as srv:
        with srv.http() as c:
            r = c.request("GET", "/healthz", None, [("Connection", "close")])
            check_eq(r.status, 200, "status")
            check(c.wait_eof(2), "connection open after Connection: close")
        with srv.http() as c:
            c.send(b"GET /healthz HTTP/1.0\r\n\r\n")
            r = c.read_response()
            check_eq(r.status, 200, "HTTP/1.0 status")
            check(c.wait_eof(2), "connection open after an HTTP/1.0 request")
        with srv.http() as c:
            c.send(b"POST /push/h10 HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
            check_eq(c.read_response().status, 202, "HTTP/1.0 push")


@test("max_http_connections: the connection over the limit is refused; slots come back")
def _():
    with Server(env={"WSGATE_SERVER_MAX_HTTP_CONNECTIONS": "3"}) as srv:
        held = [srv.http() for _ in range(3)]
        for h in held:
            check_eq(h.request("GET", "/healthz").status, 200, "held connection works")
        extra = srv.http()
        try:
            r = extra.request("GET", "/healthz", timeout=2)
            check(r.status == 503, "4th HTTP connection served: %s" % r.describe())
        except (EOFError, ConnectionResetError, BrokenPipeError):
            pass
        extra.close()
        for h in held:
            h.close()
        def served():
            try:
                return http_request(srv.port, "GET", "/healthz", timeout=1).status == 200
            except (EOFError, OSError, TestTimeout):
                return False  # the server has not yet noticed the closes
        wait_for(served, timeout=2, interval=0.05, what="a connection after the held ones closed")


@test("chunked request bodies are reassembled byte-exact")
def _():
    with Server(env={"WSGATE_SERVER_MAX_MESSAGE_SIZE": "1k"}) as srv:
        with srv.http() as c:
            body = (b"5\r\nhello\r\n"
                    b"1;ext=1\r\n \r\n"
                    b"6\r\nworld\x00\r\n"
                    b"0\r\n\r\n")
            head = build_request("POST", "/push/chunky", None,
                                 [("Transfer-Encoding", "chunked")], srv.port)
            c.send(head)
            time.sleep(0.05)
            for i in range(0, len(body), 7):  # trickle the chunks
                c.send(body[i:i + 7])
            r = c.read_response()
            check(r.status == 202, "chunked push: %s" % r.describe())
            # empty chunked body
            r = c.request("POST", "/push/chunky", b"0\r\n\r\n", [("Transfer-Encoding", "chunked")])
            check(r.status == 202, "empty chunked push: %s" % r.describe())
            # keep-alive survives a chunked body
            check_eq(c.request("GET", "/healthz").status, 200, "request after chunked")
        with srv.ws("/ws/chunky") as ws:
            check_eq(ws.recv_message(), (OP_TEXT, b"hello world\x00"), "chunked body")
            check_eq(ws.recv_message(), (OP_TEXT, b""), "empty chunked body")
        # chunked total over max_message_size -> 413
        with srv.http() as c:
            chunks = b"".join(b"200\r\n" + b"z" * 512 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
            c.send(build_request("POST", "/push/chunky", None,
                                 [("Transfer-Encoding", "chunked")], srv.port))
            try:
                c.send(chunks)
            except OSError:
                pass
            check_json_error(c.read_response(), 413, "chunked body of 1536 bytes over 1k")


@test("Expect: 100-continue gets 100 then 202; over the limit a final 413, no 100")
def _():
    with Server(env={"WSGATE_SERVER_MAX_MESSAGE_SIZE": "1k"}) as srv:
        with srv.http() as c:
            c.send(build_request("POST", "/push/exp", None,
                                 [("Content-Length", "5"), ("Expect", "100-continue")], srv.port))
            r = c.read_response(timeout=2)
            check_eq(r.status, 100, "interim status")
            c.send(b"hello")
            r = c.read_response()
            check(r.status == 202, "final: %s" % r.describe())
        with srv.http() as c:
            c.send(build_request("POST", "/push/exp", None,
                                 [("Content-Length", "1025"), ("Expect", "100-continue")],
                                 srv.port))
            r = c.read_response(timeout=2)
            check(r.status != 100, "got 100 Continue for a body over max_message_size")
            check_json_error(r, 413, "Expect with Content-Length 1025 > 1k")
        with srv.ws("/ws/exp") as ws:
            check_eq(ws.recv_message(), (OP_TEXT, b"hello"), "body sent after 100")
            check(ws.nothing_within(0.2), "a refused body was delivered")


@test("curl pushes 100 KiB byte-exact, with and without Expect: 100-continue")
def _():
    # curl 7.88 sends Expect only for bodies over 1 MiB, so the header is forced here
    curl = shutil.which("curl")
    check(curl, "curl not installed")
    body = os.urandom(100 * 1024)
    with Server() as srv, tempfile.NamedTemporaryFile() as f:
        f.write(body)
        f.flush()
        with srv.ws("/ws/curl") as ws:
            for expect in (True, False):
                t0 = time.monotonic()
                p = subprocess.run([curl, "-sS", "-v", "--max-time", "10", "-o", "/dev/null",
                                    "-w", "%{http_code}", "-H",
                                    "Expect: 100-continue" if expect else "Expect:",
                                    "-H", "Content-Type: application/octet-stream",
                                    "--data-binary", "@" + f.name,
                                    "http://%s/push/curl" % srv.addr], capture_output=True)
                dt = time.monotonic() - t0
                err = p.stderr.decode("latin-1")
                what = "with Expect" if expect else "without Expect"
                check_eq(p.stdout.decode().strip(), "202",
                         "curl %s: status (stderr: %s)" % (what, err[-800:]))
                if expect:
                    check("> Expect: 100-continue" in err, "curl did not send Expect")
                    check("HTTP/1.1 100" in err,
                          "server sent no 100 Continue to curl:\n%s" % err[-800:])
                    check(dt < 0.9, "curl took %.2fs (waited out its 1 s Expect timeout?)" % dt)
                op, data = ws.recv_message(timeout=5)
                check(data == body, "%s: payload differs: %d bytes, want %d"
                      % (what, len(data), len(body)))
                check_eq(op, OP_BINARY, "%s: opcode of random bytes" % what)


@test("400: bad session keys on /push and /ws")
def _():
    bad = ["a%20b", "a$b", "a/b", "a b".replace(" ", "%09"), "..", "a..b", ".a", "a.",
           "b" * 129, "", "\u00e9".encode().decode("latin-1")]
    with Server() as srv:
        for key in bad:
            check_json_error(http_request(srv.port, "POST", "/push/" + key, b"x"), 400,
                             "POST /push/%r" % key)
        for key in bad:
            upgrade_refused(srv, "/ws/" + key, 400, what="GET /ws/%r" % key)
        check_eq(push(srv.port, "b" * 128, b"x").status, 202, "128-byte key")


@test("400: malformed requests (CL+TE, bad Content-Length, bare LF, bad method)")
def _():
    with Server() as srv:
        cases = [
            ("CL and TE", b"POST /push/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("two Content-Lengths", b"POST /push/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                    b"Content-Length: 2\r\n\r\nab"),
            ("non-numeric Content-Length", b"POST /push/x HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: abc\r\n\r\n"),
            ("bare LF", b"GET /healthz HTTP/1.1\nHost: x\n\n"),
            ("space in header name", b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n"),
            ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
        ]
        for name, raw in cases:
            with srv.http() as c:
                c.send(raw)
                try:
                    r = c.read_response(timeout=3)
                except EOFError:
                    raise AssertionError("%s: connection closed without an answer" % name)
                check_json_error(r, 400, name)
                check(c.wait_eof(2), "%s: connection left open after a parse error" % name)
        check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "server still serves")


@test("404 on unknown paths, JSON body")
def _():
    with Server() as srv:
        for method, path in [("GET", "/"), ("GET", "/nope"), ("POST", "/pushx/a"),
                             ("GET", "/healthzz"), ("GET", "/wsx/a")]:
            check_json_error(http_request(srv.port, method, path, b"" if method == "POST"
                                          else None), 404, "%s %s" % (method, path))


@test("405 with Allow: GET /push/x, POST /ws/x, POST /healthz, PUT /publish/t")
def _():
    with Server() as srv:
        for method, path, allow in [("GET", "/push/x", "POST"), ("POST", "/ws/x", "GET"),
                                    ("POST", "/healthz", "GET"), ("PUT", "/publish/t", "POST"),
                                    ("DELETE", "/metrics", "GET")]:
            r = http_request(srv.port, method, path, b"x" if method != "GET" else None)
            check_json_error(r, 405, "%s %s" % (method, path))
            a = r.header("allow")
            check(a is not None and allow in [x.strip() for x in a.split(",")],
                  "%s %s: Allow %r, want it to list %s" % (method, path, a, allow))


@test("413: body over max_message_size; exactly the limit is accepted")
def _():
    with Server(env={"WSGATE_SERVER_MAX_MESSAGE_SIZE": "1k"}) as srv:
        check_json_error(push(srv.port, "big", b"x" * 1025), 413, "push of 1025 bytes")
        check_json_error(publish(srv.port, "big", b"x" * 1025), 413, "publish of 1025 bytes")
        check_json_error(push(srv.port, "big", b"x" * 100000), 413, "push of 100000 bytes")
        check_eq(push(srv.port, "big", b"x" * 1024).status, 202, "push of exactly 1024")
        with srv.ws("/ws/big") as ws:
            check_eq(ws.recv_message(), (OP_TEXT, b"x" * 1024), "only the 1024-byte message")
            check(ws.nothing_within(0.2), "an oversize body was delivered")


@test("431: request head over max_header_size (headers or request line)")
def _():
    with Server(env={"WSGATE_SERVER_MAX_HEADER_SIZE": "1k"}) as srv:
        r = http_request(srv.port, "GET", "/healthz", None, [("X-Big", "a" * 2000)])
        check_json_error(r, 431, "2000-byte header")
        r = http_request(srv.port, "GET", "/healthz?" + "q" * 2000)
        check_json_error(r, 431, "2000-byte request line")
        hdrs = [("X-H%d" % i, "v" * 60) for i in range(40)]
        check_json_error(http_request(srv.port, "GET", "/healthz", None, hdrs), 431,
                         "40 headers of 70 bytes")
        check_eq(http_request(srv.port, "GET", "/healthz", None, [("X-Small", "a" * 500)])
                 .status, 200, "500-byte header under the limit")
        # a WebSocket upgrade with a huge header is refused too
        upgrade_refused(srv, "/ws/h", 431, extra=[("Cookie", "c" * 2000)], what="upgrade")


@test("408: a request head not complete within handshake_timeout (slowloris)")
def _():
    with Server(env={"WSGATE_SERVER_HANDSHAKE_TIMEOUT": "1s"}) as srv:
        m0 = metric(srv.port, "wsgate_handshake_timeouts_total")
        with srv.http() as c:
            t0 = time.monotonic()
            c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            r = c.read_response(timeout=4)
            dt = time.monotonic() - t0
            check_json_error(r, 408, "half a head")
            check(0.8 <= dt <= 2.5, "408 after %.2fs, want about 1s" % dt)
            check(c.wait_eof(2), "connection not closed after 408")
        # trickling one byte every 200 ms does not extend the deadline
        with srv.http() as c:
            t0 = time.monotonic()
            head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
            for i in range(len(head)):
                if select.select([c.sock], [], [], 0.2)[0] or time.monotonic() - t0 > 3.5:
                    break  # the server answered (or gave up on us)
                try:
                    c.send(head[i:i + 1])
                except OSError:
                    break
            r = c.read_response(timeout=2)
            dt = time.monotonic() - t0
            check_json_error(r, 408, "trickled head")
            check(dt <= 2.5, "trickling client kept the connection %.2fs (timeout 1s)" % dt)
        # a WebSocket upgrade head is covered too
        with srv.http() as c:
            c.send(b"GET /ws/slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            check_json_error(c.read_response(timeout=4), 408, "half an upgrade head")
        m1 = metric(srv.port, "wsgate_handshake_timeouts_total")
        check(m1 >= m0 + 3, "wsgate_handshake_timeouts_total %s -> %s, want +3" % (m0, m1))
        # an idle connection that never sent a byte is also cut (no 408 needed, but closed)
        with srv.http() as c:
            check(c.wait_eof(3.5), "silent connection still open after 3.5s")


@test("an idle keep-alive connection is closed after keepalive_timeout")
def _():
    with Server(env={"WSGATE_SERVER_KEEPALIVE_TIMEOUT": "1s"}) as srv:
        with srv.http() as c:
            check_eq(c.request("GET", "/healthz").status, 200, "first request")
            t0 = time.monotonic()
            check(c.wait_eof(4), "idle keep-alive connection still open after 4s")
            dt = time.monotonic() - t0
            check(0.7 <= dt <= 3, "closed after %.2fs, want about 1s" % dt)


@test("bad WebSocket handshakes are 400 with JSON")
def _():
    with Server() as srv:
        upgrade_refused(srv, "/ws/h", 400, omit=("Sec-WebSocket-Key",), what="no key")
        upgrade_refused(srv, "/ws/h", 400, omit=("Sec-WebSocket-Version",), what="no version")
        upgrade_refused(srv, "/ws/h", 400, omit=("Sec-WebSocket-Version",),
                        extra=[("Sec-WebSocket-Version", "8")], what="version 8")
        upgrade_refused(srv, "/ws/h", 400, omit=("Sec-WebSocket-Key",),
                        extra=[("Sec-WebSocket-Key", "c2hvcnQ=")], what="key not 16 bytes")
        upgrade_refused(srv, "/ws/h", 400, omit=("Upgrade", "Connection"), what="no Upgrade")
        upgrade_refused(srv, "/ws/h", 400, omit=("Upgrade",),
                        extra=[("Upgrade", "h2c")], what="Upgrade: h2c")
        # a plain GET /ws/x without any upgrade headers
        check_json_error(http_request(srv.port, "GET", "/ws/plain"), 400, "plain GET /ws/plain")
        # Firefox-style Connection: keep-alive, Upgrade and a lower-case upgrade token work
        with srv.http() as c:
            key = base64.b64encode(os.urandom(16)).decode()
            c.send(ws_handshake_request("/ws/ff", srv.port, key,
                                        [("Connection", "keep-alive, Upgrade"),
                                         ("Upgrade", "WebSocket")],
                                        omit=("Connection", "Upgrade")))
            r = c.read_response()
            check_eq(r.status, 101, "Connection: keep-alive, Upgrade")


@test("503 JSON with Retry-After on the upgrade over max_connections=2")
def _():
    with Server(env={"WSGATE_SERVER_MAX_CONNECTIONS": "2"}) as srv:
        a = srv.ws("/ws/c1")
        b = srv.ws("/ws/c2")
        try:
            srv.ws("/ws/c3").close_socket()
            raise AssertionError("third upgrade got 101")
        except HandshakeError as e:
            check(e.response is not None, str(e))
            check_json_error(e.response, 503, "third upgrade")
            check(e.response.header("retry-after") is not None, "503 without Retry-After")
        # plain HTTP still works at the WebSocket limit
        check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "/healthz at the limit")
        a.close()
        a.close_socket()
        # the freed slot is usable again (the close may take a moment to be processed)
        def try_upgrade():
            try:
                return srv.ws("/ws/c4")
            except HandshakeError:
                return None
        c = wait_for(try_upgrade, timeout=2, interval=0.05, what="a slot after a close")
        b.close_socket()
        c.close_socket()


run()
