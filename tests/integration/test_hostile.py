#!/usr/bin/python3
"""test_hostile.py — DESIGN.md §8.4, bounds against hostile input: one unauthenticated
connection must not take more than a bounded share of memory or of the loop.

What it tests: one attack per test (rows 1-12) against a real wsgate (memory backend unless
named; a real redis-server and nats-server -js for the half-close tests), each asserting a
BOUND measured from outside the process: peak RSS growth (VmHWM over VmRSS at start,
/proc/PID/status), time until the server drops the socket, CPU seconds (/proc/PID/stat
utime+stime), or the exact status line / close code read; AND that a well-behaved client is
served meanwhile (GET /healthz 200 within a latency bound, /metrics, or a push delivered over
a WebSocket). Then the HTTP protocol points P1-P5 (Transfer-Encoding other than plain
chunked, obs-fold, HTTP/1.0 upgrades, a repeated Sec-WebSocket-Key, Upgrade token matching),
each with the exact status line and a JSON error body.

How: attacks are sized to take a few seconds and stop by themselves (every socket has a
timeout or a deadline loop; floods stop early once RSS passes twice the bound, so a failing
run never hurts the machine). Under an ASan build (detected in the binary) memory bounds
and wall-clock slack are doubled and the server gets a small ASan quarantine, so freed
memory does not count as growth.

What it does NOT test: functional HTTP/WebSocket behaviour (test_http.py, test_ws.py),
random garbage (test_robustness.py), authentication or per-IP limits, or performance
(bench/)."""

import base64
import itertools
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403
from wsgate_test import build_request, encode_frame, ws_handshake_request  # noqa: E402
from redis_helpers import RedisServer, gateway as redis_gateway  # noqa: E402


ASAN = sanitized()
MEM_X = 2 if ASAN else 1    # ASan roughly doubles memory
TIME_X = 2 if ASAN else 1   # and slows the loop 2-3x: wider wall-clock slack
MB = 1024                   # kB per MiB (RSS figures are in kB)

CLOSED = 'wsgate_connections_closed_total{reason="%s"}'
REFUSED_HTTP = 'wsgate_connections_refused_total{reason="http_limit"}'
PUSH_REFUSED_FULL = 'wsgate_pushes_refused_total{reason="memory_full"}'


def cfg(**kw):
    """Server env: WSGATE_<KEY>=value for each keyword (section_key, lower case ok), plus a
    small ASan quarantine (the 256 MB default would show up as RSS growth of freed memory;
    harmless for a non-ASan binary)."""
    return asan_env({"WSGATE_" + k.upper(): str(v) for k, v in kw.items()})


def cpu_seconds(pid):
    """utime + stime of pid in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()   # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def growth_mb(srv, rss0_kb):
    """Peak RSS over the start, in MiB."""
    return (srv.hwm_kb() - rss0_kb) / MB


def counter(srv, name):
    """One metric line's value (name with labels), None when /metrics has no such line."""
    return metrics(srv.port).get(name)


def counted(srv, names, what):
    """The sum of the named counters must be >= 1 (each may be absent, not all)."""
    m = metrics(srv.port)
    vals = {n: m.get(n) for n in names}
    check(any(v for v in vals.values()), "%s: not counted in /metrics: %s" % (what, vals))
    return vals


def raw_conn(port, rcvbuf=None, timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_all(sock, timeout=5.0):
    """Read until EOF; returns (bytes, how): how is 'eof', 'reset' or 'timeout'."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(out), "timeout"
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return bytes(out), "timeout"
        except ConnectionResetError:
            return bytes(out), "reset"
        if not d:
            return bytes(out), "eof"
        out += d


def first_response(raw):
    """(status line, {lower name: value}, body, complete) of the first response in raw."""
    i = raw.find(b"\r\n\r\n")
    if i < 0:
        return raw.split(b"\r\n")[0].decode("latin-1"), {}, b"", False
    lines = raw[:i].decode("latin-1").split("\r\n")
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0") or 0)
    body = raw[i + 4:i + 4 + n]
    return lines[0], hdrs, body, len(body) == n


def status_line(r):
    return r.head.split(b"\r\n")[0].decode("latin-1")


def check_status_json(r, line, what):
    """Exact status line and a JSON error body."""
    check(status_line(r) == line, "%s: status line %r, want %r; response:\n%s"
          % (what, status_line(r), line, r.describe()))
    check_json_error(r, int(line.split()[1]), what)


def exchange(port, data, timeout=3.0):
    """Send exact bytes on a fresh connection, read one response."""
    with Http(port, timeout=timeout) as c:
        c.send(data)
        return c.read_response(timeout)


def delivery_ok(srv, key, what):
    """A well-behaved client: a push to an online session arrives."""
    with srv.ws("/ws/" + key) as ws:
        accepted(push(srv.port, key, b"still served"), "%s: push" % what)
        check_eq(ws.recv_message(3 * TIME_X), (OP_TEXT, b"still served"), "%s: delivery" % what)


class Prober:
    """A well-behaved client in a thread: GET /healthz on a fresh connection every
    interval; check() wants every answer 200 within max_latency seconds."""

    def __init__(self, srv, interval=0.2, max_latency=2.0):
        self.port = srv.port
        self.interval = interval
        self.max_latency = max_latency * TIME_X
        self.results = []  # (ok, latency, error)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                r = http_request(self.port, "GET", "/healthz", timeout=self.max_latency + 1)
                self.results.append((r.status == 200, time.monotonic() - t, r.status))
            except Exception as e:  # noqa: BLE001 — recorded, judged in check()
                self.results.append((False, time.monotonic() - t, repr(e)))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self.stop()
        return False

    def stop(self):
        self._stop.set()
        self._t.join(self.max_latency + 3)

    def check(self, what):
        self.stop()
        res = list(self.results)
        check(res, "%s: no /healthz probe completed" % what)
        bad = [r for r in res if not r[0]]
        worst = max(r[1] for r in res)
        note("%s: %d /healthz probes, worst latency %.3fs" % (what, len(res), worst))
        if bad:
            raise AssertionError("%s: %d of %d /healthz probes failed during the attack, e.g. %r"
                                 % (what, len(bad), len(res), bad[0]))
        check(worst <= self.max_latency, "%s: /healthz took %.2fs (bound %.1fs)"
              % (what, worst, self.max_latency))


def flood(sock, blob, srv, rss0, max_s, rss_abort_mb):
    """Write blob over and over on a non-blocking socket, never reading, until the peer
    is gone (reset / broken pipe / SO_ERROR), max_s passes, or RSS growth passes
    rss_abort_mb (stops the attack before it hurts the machine). Returns a dict: sent
    (bytes), t0, last_progress, gone_at (None = still open), aborted (RSS MiB or None)."""
    sock.setblocking(False)
    t0 = time.monotonic()
    st = {"sent": 0, "t0": t0, "last_progress": t0, "gone_at": None, "aborted": None}
    view = memoryview(blob)
    pos = 0
    next_check = t0
    while True:
        now = time.monotonic()
        if now - t0 > max_s:
            break
        try:
            n = sock.send(view[pos:])
            st["sent"] += n
            st["last_progress"] = now
            pos = (pos + n) % len(blob)
            continue
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # ECONNRESET, EPIPE: the server dropped us
            st["gone_at"] = now
            break
        if now >= next_check:
            next_check = now + 0.05
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                st["gone_at"] = now
                break
            g = growth_mb(srv, rss0)
            if g > rss_abort_mb:
                st["aborted"] = g
                break
        select.select([], [sock], [sock], 0.01)
    return st


def describe_flood(st):
    end = st["gone_at"] or time.monotonic()
    return ("sent %.1f MiB in %.1fs, last send progress at %.1fs, %s"
            % (st["sent"] / 1048576, end - st["t0"], st["last_progress"] - st["t0"],
               "dropped at %.1fs" % (st["gone_at"] - st["t0"]) if st["gone_at"] else
               "aborted at RSS +%.0f MiB" % st["aborted"] if st["aborted"] else "still open"))


# ---------------------------------------------------------------------------------------
# Rows 1-3: output queued for a client that does not read
# ---------------------------------------------------------------------------------------

@test("1. pipelined GET /metrics never read: reading stops, RSS < 64 MiB over start, "
      "dropped <= 5s after the client stalls (write_timeout 2s), /healthz served", timeout=40)
def _():
    env = cfg(websocket_max_send_buffer="1m", server_write_timeout="2s")
    with Server(env=env) as srv:
        rss0 = srv.rss_kb()
        s = raw_conn(srv.port, rcvbuf=4096)
        try:
            with Prober(srv) as pr:
                blob = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 4096
                st = flood(s, blob, srv, rss0, 10, 128 * MEM_X)
            g = growth_mb(srv, rss0)
            note("row 1: %s; peak RSS +%.1f MiB" % (describe_flood(st), g))
            check(st["aborted"] is None, "RSS grew past %.0f MiB (attack stopped): %s"
                  % (128 * MEM_X, describe_flood(st)))
            check(g < 64 * MEM_X, "peak RSS +%.1f MiB, bound %d" % (g, 64 * MEM_X))
            check(st["gone_at"] is not None, "connection not dropped: " + describe_flood(st))
            check(st["sent"] < 64 * 1048576, "server kept reading: " + describe_flood(st))
            stalled = st["gone_at"] - st["last_progress"]
            check(stalled <= 5 * TIME_X, "dropped %.1fs after the client's sends stalled, "
                  "bound %ds" % (stalled, 5 * TIME_X))
            pr.check("row 1")
            counted(srv, [CLOSED % "write_timeout"], "row 1 write timeout")
        finally:
            s.close()


@test("2. 125-byte pings never read after a 101: RSS < 64 MiB over start, dropped within "
      "6s, counted slow|write_timeout, /healthz and delivery served", timeout=40)
def _():
    env = cfg(websocket_max_send_buffer="1m", server_write_timeout="2s",
              websocket_close_timeout="2s")
    with Server(env=env) as srv:
        rss0 = srv.rss_kb()
        ws = srv.ws("/ws/pinger", rcvbuf=4096)
        try:
            with Prober(srv) as pr:
                key = os.urandom(4)
                blob = encode_frame(OP_PING, b"p" * 125, key=key) * 512
                st = flood(ws.sock, blob, srv, rss0, 10, 128 * MEM_X)
            g = growth_mb(srv, rss0)
            note("row 2: %s; peak RSS +%.1f MiB" % (describe_flood(st), g))
            check(st["aborted"] is None, "RSS grew past %.0f MiB (attack stopped): %s"
                  % (128 * MEM_X, describe_flood(st)))
            check(g < 64 * MEM_X, "peak RSS +%.1f MiB, bound %d" % (g, 64 * MEM_X))
            check(st["gone_at"] is not None, "connection not dropped: " + describe_flood(st))
            check(st["gone_at"] - st["t0"] <= 6 * TIME_X, "dropped after %.1fs, bound %ds"
                  % (st["gone_at"] - st["t0"], 6 * TIME_X))
            pr.check("row 2")
            delivery_ok(srv, "row2ok", "row 2")
            counted(srv, [CLOSED % "slow", CLOSED % "write_timeout"], "row 2 slow reader")
        finally:
            ws.close_socket()


@test("3. stalled readers (8 MiB of pipelined GET answers; 8 MiB of pushed frames, under "
      "max_send_buffer) dropped 1-6s after their last byte (write_timeout 2s), RSS < 48 MiB",
      timeout=40)
def _():
    # 8 MiB each: more than the kernel absorbs (a loopback send buffer autotunes to ~4 MiB),
    # so output stays queued in the gateway; under max_send_buffer, so "slow" never applies
    env = cfg(websocket_max_send_buffer="16m", server_write_timeout="2s",
              websocket_close_timeout="2s")
    with Server(env=env) as srv:
        rss0 = srv.rss_kb()
        one = len(http_request(srv.port, "GET", "/metrics").body) + 120
        # HTTP: ~8 MiB of answers asked for at once, then silence (no reads, no writes)
        h = raw_conn(srv.port, rcvbuf=4096)
        ws = srv.ws("/ws/stall3", rcvbuf=4096)
        try:
            h.settimeout(5)
            h.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * (8 * 1048576 // one))
            last = {"http": time.monotonic()}
            # WebSocket: 8 MiB pushed, never read
            body = b"w" * 65536
            with Http(srv.port) as c:
                for i in range(128):
                    accepted(c.request("POST", "/push/stall3", body), "push %d" % i)
            last["ws"] = time.monotonic()
            closed = {}
            deadline = last["ws"] + 7 * TIME_X
            while time.monotonic() < deadline and len(closed) < 2:
                m = metrics(srv.port)   # the well-behaved client, and the gauges
                now = time.monotonic()
                # open HTTP connections: this /metrics one, and the stalled one until dropped
                if "http" not in closed and m["wsgate_http_connections_open"] <= 1:
                    closed["http"] = now - last["http"]
                if "ws" not in closed and m["wsgate_ws_connections_open"] == 0:
                    closed["ws"] = now - last["ws"]
                time.sleep(0.1)
            g = growth_mb(srv, rss0)
            note("row 3: dropped after last byte: %s; peak RSS +%.1f MiB"
                 % (closed or "none within %ds" % (7 * TIME_X), g))
            for k in ("http", "ws"):
                check(k in closed, "%s stalled reader still open %.0fs after its last byte"
                      % (k, 7 * TIME_X))
                check(1.0 <= closed[k] <= 6 * TIME_X, "%s stalled reader dropped %.1fs after "
                      "its last byte, want 1..%ds" % (k, closed[k], 6 * TIME_X))
            check(g < 48 * MEM_X, "peak RSS +%.1f MiB, bound %d" % (g, 48 * MEM_X))
            check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "/healthz")
            v = counter(srv, CLOSED % "write_timeout")
            check(v is not None and v >= 2, "%s = %s, want >= 2" % (CLOSED % "write_timeout", v))
        finally:
            h.close()
            ws.close_socket()


# ---------------------------------------------------------------------------------------
# Row 4: one absolute deadline per request
# ---------------------------------------------------------------------------------------

@test("4. body trickled 1 byte/1.5s (handshake_timeout 2s, request_timeout 3s): 408 JSON "
      "2.5-5.5s after the first byte, EOF by 6.5s; /healthz served", timeout=30)
def _():
    env = cfg(server_handshake_timeout="2s", server_request_timeout="3s")
    with Server(env=env) as srv:
        s = raw_conn(srv.port)
        try:
            with Prober(srv, interval=0.5) as pr:
                t0 = time.monotonic()
                s.sendall(b"POST /push/trickle4 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
                raw, answered_at, how, sent = b"", None, "timeout", 0
                next_byte = t0 + 1.5
                limit = t0 + 9
                while time.monotonic() < limit:
                    s.settimeout(max(0.01, min(next_byte, limit) - time.monotonic()))
                    try:
                        d = s.recv(65536)
                    except socket.timeout:
                        d = None
                    except ConnectionResetError:
                        how = "reset"
                        break
                    if d == b"":
                        how = "eof"
                        break
                    if d:
                        raw += d
                        if answered_at is None and b"\r\n\r\n" in raw:
                            answered_at = time.monotonic() - t0
                        continue
                    if time.monotonic() >= next_byte:
                        try:
                            s.send(b"x")
                            sent += 1
                        except OSError:
                            pass
                        next_byte += 1.5
                end = time.monotonic() - t0
            note("row 4: %d body bytes sent; answer at %s; %s at %.1fs"
                 % (sent, "%.1fs" % answered_at if answered_at else "never", how, end))
            check(answered_at is not None, "no answer %.0fs after the first byte (%d body bytes "
                  "trickled), connection %s" % (end, sent, "still open" if how == "timeout" else how))
            line, hdrs, body, _ = first_response(raw)
            check(line == "HTTP/1.1 408 Request Timeout", "status line %r" % line)
            check(hdrs.get("content-type", "").startswith("application/json") and b'"error"' in body,
                  "408 without a JSON error body: %r" % raw[:300])
            check(2.5 <= answered_at <= 5.5 * TIME_X, "408 at %.1fs after the first byte, want "
                  "2.5..%.1f (request_timeout 3s)" % (answered_at, 5.5 * TIME_X))
            # closed: EOF, or a reset after the whole answer (lingering is row 11's subject)
            check(how in ("eof", "reset") and end <= 6.5 * TIME_X, "after the 408: %s at %.1fs"
                  % ("still open" if how == "timeout" else how, end))
            pr.check("row 4")
            counted(srv, [CLOSED % "request_timeout"], "row 4 request timeout")
        finally:
            s.close()


# ---------------------------------------------------------------------------------------
# Row 5: fragments per message
# ---------------------------------------------------------------------------------------

@test("5. endless 1-byte continuation frames (max_fragments 100): close 1009 before 5000 "
      "frames, RSS < 32 MiB over start, counted too_many_fragments", timeout=40)
def _():
    env = cfg(websocket_max_fragments="100")
    with Server(env=env) as srv:
        rss0 = srv.rss_kb()
        ws = srv.ws("/ws/frag5")
        try:
            key = os.urandom(4)
            cont = encode_frame(OP_CONT, b"a", fin=False, key=key)
            ws.send_raw(encode_frame(OP_TEXT, b"a", fin=False, key=key))
            frames, got_close, how = 1, None, "sending"
            t0 = time.monotonic()
            while frames < 1000000 and time.monotonic() - t0 < 10 * TIME_X:
                batch = 100 if frames < 5000 else 10000
                try:
                    ws.sock.settimeout(5)
                    ws.sock.sendall(cont * batch)
                    frames += batch
                except OSError as e:
                    how = "send failed: %r" % e
                    break
                # small paced batches first: the server has time to answer near frame 100
                r, _, _ = select.select([ws.sock], [], [], 0.005 if frames < 5000 else 0)
                if r:
                    how = "answered"
                    break
            try:
                f = ws.recv_frame(2 * TIME_X)
                got_close = f.close_code() if f.opcode == OP_CLOSE else "op %d" % f.opcode
            except (Closed, TestTimeout) as e:
                got_close = "none (%s)" % type(e).__name__
            g = growth_mb(srv, rss0)
            note("row 5: %d frames sent in %.1fs (%s), close %s, peak RSS +%.1f MiB"
                 % (frames, time.monotonic() - t0, how, got_close, g))
            check(got_close == 1009, "close code %s, want 1009" % got_close)
            check(frames <= 5000, "close came only after %d fragments (max_fragments 100)" % frames)
            check(g < 32 * MEM_X, "peak RSS +%.1f MiB, bound %d" % (g, 32 * MEM_X))
            delivery_ok(srv, "row5ok", "row 5")
            counted(srv, [CLOSED % "too_many_fragments"], "row 5")
        finally:
            ws.close_socket()


# ---------------------------------------------------------------------------------------
# Row 6: hash flooding the memory backend's session map
# ---------------------------------------------------------------------------------------

FNV_PRIME, FNV_BASIS = 16777619, 2166136261
KEY_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def fnv1a(b):
    h = FNV_BASIS
    for c in b:
        h = ((h ^ c) * FNV_PRIME) & 0xffffffff
    return h


def fnv_colliding_keys(n, prefix=b"h6"):
    """n distinct valid session keys whose 32-bit FNV-1a hashes share the low 16 bits.
    FNV-1a's low 16 bits depend only on the low 16 bits of the state, so: from the state
    after prefix, group all 3-character blocks by the low-16 state they lead to, keep the
    largest group, and repeat from there; every choice of one block per stage ends in the
    same low-16 state (~13 blocks per stage: 4 stages give > 16000 keys)."""
    p16 = FNV_PRIME & 0xffff
    state = fnv1a(prefix) & 0xffff
    stages = []
    total = 1
    while total < n:
        groups = {}
        for a in KEY_ALPHABET:
            sa = ((state ^ a) * p16) & 0xffff
            for b in KEY_ALPHABET:
                sb = ((sa ^ b) * p16) & 0xffff
                for c in KEY_ALPHABET:
                    groups.setdefault(((sb ^ c) * p16) & 0xffff, []).append(bytes((a, b, c)))
        state, blocks = max(groups.items(), key=lambda kv: len(kv[1]))
        stages.append(blocks)
        total *= len(blocks)
    keys = []
    for combo in itertools.product(*stages):
        keys.append((prefix + b"".join(combo)).decode())
        if len(keys) == n:
            break
    return keys


def pipelined_pushes(port, keys, timeout=60):
    """POST /push/<key> (1-byte body) for every key on one keep-alive connection, all
    pipelined (a sender thread writes, this thread reads). Returns the status counts."""
    blob = b"".join(b"POST /push/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
                    % k.encode() for k in keys)
    s = raw_conn(port, timeout=timeout)
    err = []

    def send():
        try:
            s.sendall(blob)
        except OSError as e:
            err.append(e)
    t = threading.Thread(target=send, daemon=True)
    t.start()
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while buf.count(b"HTTP/1.1 ") < len(keys):
            s.settimeout(max(0.01, deadline - time.monotonic()))
            d = s.recv(1 << 20)
            if not d:
                break
            buf += d
    finally:
        t.join(5)
        s.close()
    check(not err, "sending the pushes: %r" % err)
    return {"202": buf.count(b"HTTP/1.1 202"), "all": buf.count(b"HTTP/1.1 ")}


@test("6. hash flooding: 16384 (ASan: 32768) pushes to keys sharing FNV-1a's low 16 bits "
      "cost <= 3x the CPU of as many random keys (+0.1s)", timeout=90)
def _():
    # ASan's slower HTTP path (the constant part) hides more of the quadratic one: more keys
    n = 32768 if ASAN else 16384
    bad = fnv_colliding_keys(n)
    low = {fnv1a(k.encode()) & 0xffff for k in bad}
    check(len(set(bad)) == n and len(low) == 1, "key generator: %d distinct keys, %d low-16 "
          "hash values" % (len(set(bad)), len(low)))
    rng = random.Random(6)
    good = ["r6" + "".join(chr(rng.choice(KEY_ALPHABET)) for _ in range(len(bad[0]) - 2))
            for _ in range(n)]
    cpu = {}
    for name, keys in (("random", good), ("colliding", bad)):
        with Server(env=cfg(broker_max_queue="100000")) as srv:
            c0 = cpu_seconds(srv.pid)
            t0 = time.monotonic()
            st = pipelined_pushes(srv.port, keys)
            cpu[name] = cpu_seconds(srv.pid) - c0
            note("row 6: %s keys: %d of %d pushes 202, server CPU %.2fs, wall %.2fs"
                 % (name, st["202"], n, cpu[name], time.monotonic() - t0))
            check_eq(st["202"], n, "%s keys: 202 answers" % name)
            check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "/healthz")
    bound = 3 * cpu["random"] + 0.1  # + 10 clock ticks of measurement grain
    check(cpu["colliding"] <= bound, "colliding keys cost %.2fs CPU vs %.2fs for random keys "
          "(%.0fx), bound %.2fs" % (cpu["colliding"], cpu["random"],
                                    cpu["colliding"] / max(cpu["random"], 0.01), bound))


# ---------------------------------------------------------------------------------------
# Row 7: the memory backend's stored bytes
# ---------------------------------------------------------------------------------------

@test("7. 300 x 1 MiB pushes to offline sessions (memory_max_bytes 64m): 503 + Retry-After "
      "+ \"memory broker full\" past the cap, RSS < 64+48 MiB, online push still works",
      timeout=60)
def _():
    env = cfg(broker_memory_max_bytes="64m", server_max_message_size="1m")
    with Server(env=env) as srv:
        rss0 = srv.rss_kb()
        body = b"m" * 1048576
        statuses, first503 = [], None
        with Http(srv.port, timeout=10) as c:
            for i in range(300):
                r = c.request("POST", "/push/full%03d" % i, body)
                statuses.append(r.status)
                if r.status == 503 and first503 is None:
                    first503 = r
                if growth_mb(srv, rss0) > 400 * MEM_X:
                    break  # keep the machine usable; the figures say enough
        n202 = statuses.count(202)
        g = growth_mb(srv, rss0)
        note("row 7: %d pushes: %d x 202, %d x 503, other %s; peak RSS +%.0f MiB"
             % (len(statuses), n202, statuses.count(503),
                sorted(set(statuses) - {202, 503}), g))
        check(set(statuses) <= {202, 503}, "statuses other than 202/503: %s"
              % sorted(set(statuses)))
        # 64 fit exactly; 65 if the check is "already over the cap" rather than "would be"
        check(32 <= n202 <= 65, "%d of %d pushes of 1 MiB accepted with memory_max_bytes 64m"
              % (n202, len(statuses)))
        check(statuses == sorted(statuses), "a 202 after a 503: %s" % statuses)
        check(first503 is not None, "no 503")
        check_status_json(first503, "HTTP/1.1 503 Service Unavailable", "push past the cap")
        check_eq(first503.json().get("error"), "memory broker full", "error")
        check(first503.header("retry-after") is not None, "503 without Retry-After:\n%s"
              % first503.describe())
        check(g < (64 + 48) * MEM_X, "peak RSS +%.0f MiB, bound %d" % (g, (64 + 48) * MEM_X))
        v = counter(srv, PUSH_REFUSED_FULL)
        check(v is not None and v >= statuses.count(503), "%s = %s, want >= %d"
              % (PUSH_REFUSED_FULL, v, statuses.count(503)))
        # the cap counts stored bytes: a push to an online session is delivered, not stored
        delivery_ok(srv, "online7", "row 7 online push")
        # another 1 MiB to an offline session does not fit (a small one may: what is left
        # under the cap is less than one of these)
        check_eq(push(srv.port, "full-offline", b"x" * (1 << 20)).status, 503,
                 "1 MiB offline push when full")
        check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "/healthz")


# ---------------------------------------------------------------------------------------
# Row 8: the HTTP connection limit
# ---------------------------------------------------------------------------------------

@test("8. 2000 connects over max_http_connections 10: <= 10 log lines, >= 1800 refusals "
      "counted, a held keep-alive client served, fresh clients served after", timeout=60)
def _():
    env = cfg(server_max_http_connections="10", server_handshake_timeout="30s",
              server_keepalive_timeout="30s")
    with Server(env=env) as srv:
        held = [raw_conn(srv.port) for _ in range(9)]
        c = Http(srv.port)  # the 10th: a well-behaved keep-alive client
        try:
            check_eq(c.request("GET", "/healthz").status, 200, "/healthz before")
            r = c.request("GET", "/metrics")
            check("wsgate_http_connections_open 10" in r.body.decode(), "not 10 open:\n%s"
                  % r.body.decode())
            failed, t0 = 0, time.monotonic()
            for _ in range(2000):
                try:
                    s = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
                    s.close()
                except OSError:
                    failed += 1
            burst = time.monotonic() - t0
            check_eq(c.request("GET", "/healthz").status, 200, "/healthz after the burst "
                     "(held keep-alive client)")
            box = {}

            def refused():
                m = {}
                for line in c.request("GET", "/metrics").body.decode().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and not line.startswith("#"):
                        m[parts[0]] = float(parts[1])
                box["v"] = m.get(REFUSED_HTTP)
                return box["v"] is not None and box["v"] >= 1800
            try:
                wait_for(refused, timeout=3, interval=0.1, what="refusals counted")
            except TestTimeout:
                pass
            time.sleep(0.3)  # the log drain thread
            lines = [ln for ln in srv.log_text().splitlines() if "http_connection_limit" in ln]
            note("row 8: 2000 connects in %.2fs (%d failed), %d log lines, %s = %s"
                 % (burst, failed, len(lines), REFUSED_HTTP, box.get("v")))
            check(len(lines) <= 10, "%d log lines about the limit for one burst" % len(lines))
            check(box.get("v") is not None and box["v"] >= 1800, "%s = %s, want >= 1800"
                  % (REFUSED_HTTP, box.get("v")))
        finally:
            for s in held:
                s.close()
            c.close()
        def healthz_ok():
            try:  # a connect that races the release of the held slots is closed: retry
                return http_request(srv.port, "GET", "/healthz").status == 200
            except (EOFError, OSError):
                return False
        wait_for(healthz_ok, timeout=3, what="/healthz once slots are free")


# ---------------------------------------------------------------------------------------
# Row 9: frames in the same write as the upgrade request
# ---------------------------------------------------------------------------------------

def upgrade_with(srv, path, after, timeout=3.0):
    """Send an upgrade request and `after` in one send(); return (head, frames, how):
    the raw response head, the server frames that follow, how the read ended."""
    key = base64.b64encode(os.urandom(16)).decode()
    s = raw_conn(srv.port, timeout=timeout)
    try:
        s.sendall(ws_handshake_request(path, srv.port, key) + after)
        raw, how = read_all(s, timeout)
    finally:
        s.close()
    i = raw.find(b"\r\n\r\n")
    head = raw[:i + 4] if i >= 0 else b""
    rest = raw[i + 4:] if i >= 0 else raw
    fp = FrameParser()
    fp.feed(rest)
    frames = []
    while True:
        f = fp.next()
        if f is None:
            break
        frames.append(f)
    return head, frames, how, raw


@test("9a. upgrade + close frame in one send() after 4 queued pushes: 101, the 4 messages, "
      "then close 1000", timeout=20)
def _():
    with Server(env=cfg()) as srv:
        for i in range(4):
            accepted(push(srv.port, "same9", "queued %d" % i), "push %d" % i)
        head, frames, how, raw = upgrade_with(srv, "/ws/same9",
                                              encode_frame(OP_CLOSE, struct.pack(">H", 1000)))
        note("row 9a: read %r..., frames %s, ended by %s" % (raw[:40], frames, how))
        check(head.startswith(b"HTTP/1.1 101 "), "no 101 first: %r" % raw[:200])
        data = [f.payload for f in frames if f.opcode in (OP_TEXT, OP_BINARY)]
        check_eq(data, [b"queued %d" % i for i in range(4)], "messages after the 101")
        check(frames and frames[-1].opcode == OP_CLOSE, "no close frame last: %s" % frames)
        check_eq(frames[-1].close_code(), 1000, "close code")
        delivery_ok(srv, "row9ok", "row 9a")


@test("9b. upgrade + an unmasked frame in one send(): 101 first, then close 1002", timeout=20)
def _():
    with Server(env=cfg()) as srv:
        head, frames, how, raw = upgrade_with(srv, "/ws/unmasked9",
                                              encode_frame(OP_TEXT, b"hello", mask=False))
        note("row 9b: read %r..., frames %s, ended by %s" % (raw[:40], frames, how))
        check(head.startswith(b"HTTP/1.1 101 "), "no 101 first: %r" % raw[:200])
        check(frames and frames[-1].opcode == OP_CLOSE, "no close frame: %s" % frames)
        check_eq(frames[-1].close_code(), 1002, "close code")
        delivery_ok(srv, "row9ok", "row 9b")


# ---------------------------------------------------------------------------------------
# Row 10: a complete push, then the client's half-close, on the async brokers
# ---------------------------------------------------------------------------------------

def push_then_shut_wr(srv, key, broker):
    """POST /push/key (complete), shutdown(SHUT_WR), read to EOF: the raw answer. The
    broker is frozen (SIGSTOP) for 0.3s meanwhile, so the EOF reaches the gateway before the
    broker confirms the push (without it the order is a race the EOF often wins anyway)."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    broker.freeze()
    try:
        # corked: the request and the FIN leave in one segment
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        s.sendall(build_request("POST", "/push/" + key, b"half-closed", port=srv.port))
        s.shutdown(socket.SHUT_WR)
        time.sleep(0.3)
        broker.thaw()
        raw, how = read_all(s, 5 * TIME_X)
    finally:
        broker.thaw()
        s.close()
    return raw, how


def check_half_close(srv, key, what, broker):
    raw, how = push_then_shut_wr(srv, key, broker)
    note("%s: answer %r, ended by %s" % (what, raw[:60], how))
    with srv.ws("/ws/" + key) as ws:
        try:
            stored = ws.recv_message(3) == (OP_TEXT, b"half-closed")
        except (TestTimeout, Closed):
            stored = False
    check(raw.startswith(b"HTTP/1.1 202 "), "%s: no 202 before EOF (%s; message %s): %r"
          % (what, how, "stored" if stored else "not stored", raw[:200]))
    check(stored, "%s: 202 but the message was not delivered" % what)
    delivery_ok(srv, key + "ok", what)


@test("10a. redis-list: complete push then shutdown(SHUT_WR): 202 read before EOF", timeout=30)
def _():
    with RedisServer() as redis:
        # deadlines well above the 0.3s freeze
        env = cfg(redis_timeout="3s", redis_ping_interval="2s")
        with redis_gateway(redis, "redis-list", env=env) as srv:
            check_half_close(srv, "half10r", "redis-list", redis)


class Nats:
    """A nats-server -js on a free port (-p -1 + ports file), its own store; stopped by PID.
    (Same start-up as test_nats_backend.Nats; importing that module would register its
    tests here.)"""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="nats-", dir=LOGDIR)
        self.log = os.path.join(self.dir, "nats.log")
        self.proc = None
        self.port = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", self.dir,
             "-sd", os.path.join(self.dir, "js"), "-l", self.log],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pf = os.path.join(self.dir, "nats-server_%d.ports" % self.proc.pid)
        deadline = time.monotonic() + 5
        while True:
            check(self.proc.poll() is None, "nats-server exited")
            if os.path.exists(pf) and "nats://" in open(pf).read():
                text = open(pf).read()
                self.port = int(text.split("nats://")[1].split('"')[0].rsplit(":", 1)[1])
                return self
            if time.monotonic() > deadline:
                raise TestTimeout("nats-server not ready")
            time.sleep(0.01)

    def freeze(self):
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.proc.send_signal(signal.SIGCONT)

    def __exit__(self, *a):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return False


@test("10b. nats: complete push then shutdown(SHUT_WR): 202 read before EOF", timeout=30)
def _():
    with Nats() as n:
        env = cfg(broker_type="nats", nats_url="nats://127.0.0.1:%d" % n.port,
                  nats_timeout="3s")
        with Server(env=env, name="wsgate-nats") as srv:
            wait_for(lambda: http_request(srv.port, "GET", "/readyz").status == 200, 5,
                     what="/readyz 200")
            check_half_close(srv, "half10n", "nats", n)


# ---------------------------------------------------------------------------------------
# Row 11: an error answered before the request was read is readable (lingering close)
# ---------------------------------------------------------------------------------------

@test("11a. 1000 headers (~100 KiB) in one write: the whole 431 JSON answer is read, "
      "no reset", timeout=20)
def _():
    with Server(env=cfg()) as srv:
        req = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
               + b"".join(b"X-Hostile-%04d: %s\r\n" % (i, b"v" * 86) for i in range(1000))
               + b"\r\n")
        s = raw_conn(srv.port)
        try:
            sent_err = None
            try:
                s.sendall(req)
            except OSError as e:
                sent_err = e
            time.sleep(0.3)  # a busy client: reads a moment later
            raw, how = read_all(s, 5)
        finally:
            s.close()
        line, hdrs, body, complete = first_response(raw)
        note("row 11a: %d bytes sent (send error %r), read %d bytes, ended by %s, status %r"
             % (len(req), sent_err, len(raw), how, line))
        check(complete and line == "HTTP/1.1 431 Request Header Fields Too Large",
              "no complete 431 answer (%s): %r" % (how, raw[:200]))
        check(how == "eof", "read ended by %s, want a clean EOF" % how)
        check(hdrs.get("content-type", "").startswith("application/json") and b'"error"' in body,
              "431 without a JSON error body: %r" % raw[:300])
        check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "/healthz")


@test("11b. POST /publish with a 2 MiB + 1 byte body (max_message_size 2m) sent in one go: "
      "the 413 answer is read, no reset", timeout=20)
def _():
    with Server(env=cfg(server_max_message_size="2m")) as srv:
        n = 2 * 1048576 + 1
        req = build_request("POST", "/publish/big11", b"b" * n, port=srv.port)
        s = raw_conn(srv.port)
        try:
            sent_err = None
            try:
                s.sendall(req)
            except OSError as e:
                sent_err = e
            raw, how = read_all(s, 5)
        finally:
            s.close()
        line, hdrs, body, complete = first_response(raw)
        note("row 11b: send %s, read %d bytes, ended by %s, status %r"
             % ("failed: %r" % sent_err if sent_err else "complete", len(raw), how, line))
        check(sent_err is None, "sending the body failed: %r (reset before the answer "
              "could be read)" % sent_err)
        check(complete and line == "HTTP/1.1 413 Content Too Large",
              "no complete 413 answer (%s): %r" % (how, raw[:200]))
        check(how == "eof", "read ended by %s, want a clean EOF" % how)
        check(hdrs.get("content-type", "").startswith("application/json") and b'"error"' in body,
              "413 without a JSON error body: %r" % raw[:300])
        check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "/healthz")


# ---------------------------------------------------------------------------------------
# Row 12: 1009 decided on the frame header
# ---------------------------------------------------------------------------------------

@test("12. a frame header announcing 2^40 bytes (no payload): close 1009 within 2s, counted "
      "message_too_big", timeout=20)
def _():
    with Server(env=cfg()) as srv:
        with srv.ws("/ws/huge12") as ws:
            t0 = time.monotonic()
            ws.send_raw(encode_frame(OP_BINARY, b"", length=1 << 40))
            try:
                code = ws.expect_close(2 * TIME_X)[0]
            except (TestTimeout, AssertionError) as e:
                code = "none (%s)" % e
            note("row 12: close %s after %.1fs" % (code, time.monotonic() - t0))
            check_eq(code, 1009, "close code without any payload sent")
        delivery_ok(srv, "row12ok", "row 12")
        counted(srv, [CLOSED % "message_too_big"], "row 12")


# ---------------------------------------------------------------------------------------
# Protocol points
# ---------------------------------------------------------------------------------------

def ws_key():
    return base64.b64encode(os.urandom(16)).decode()


@test("P1. Transfer-Encoding: gzip, chunked on POST /push: 501 JSON, nothing queued")
def _():
    with Server(env=cfg()) as srv:
        r = exchange(srv.port, b"POST /push/p1te HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        check_status_json(r, "HTTP/1.1 501 Not Implemented", "TE gzip, chunked")
        with srv.ws("/ws/p1te") as ws:
            check(ws.nothing_within(0.3), "the refused body was queued")
        check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "/healthz")


@test("P2. obs-fold (Transfer-Encoding, Content-Length, an ordinary header): 400 JSON")
def _():
    cases = [
        ("TE folded", b"POST /push/p2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n"
                      b"\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("CL folded", b"POST /push/p2 HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 5\r\n\r\nhello"),
        ("ordinary header folded", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n\tb\r\n"
                                   b"\r\n"),
    ]
    with Server(env=cfg()) as srv:
        errs = []
        for what, req in cases:
            try:
                check_status_json(exchange(srv.port, req), "HTTP/1.1 400 Bad Request", what)
            except Exception as e:  # noqa: BLE001 — every case is reported
                errs.append("%s: %s" % (type(e).__name__, e))
        check(not errs, "\n".join(errs))
        check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "/healthz")


@test("P3. an HTTP/1.0 upgrade request: 400 JSON, no 101")
def _():
    with Server(env=cfg()) as srv:
        req = ws_handshake_request("/ws/p3", srv.port, ws_key()).replace(b" HTTP/1.1\r\n",
                                                                            b" HTTP/1.0\r\n", 1)
        check_status_json(exchange(srv.port, req), "HTTP/1.1 400 Bad Request", "HTTP/1.0 upgrade")
        delivery_ok(srv, "p3ok", "P3")


@test("P4. two 12-character Sec-WebSocket-Key headers (24 together): 400 JSON")
def _():
    with Server(env=cfg()) as srv:
        req = ws_handshake_request("/ws/p4", srv.port, "dGhlIHNhbXBs",
                                   extra=[("Sec-WebSocket-Key", "ZSBub25jZQ==")])
        check_status_json(exchange(srv.port, req), "HTTP/1.1 400 Bad Request", "two keys")
        delivery_ok(srv, "p4ok", "P4")


@test("P5. Upgrade: notwebsocketatall is 400 JSON; websocket, WebSocket, 'foo, websocket' "
      "are 101")
def _():
    with Server(env=cfg()) as srv:
        errs = []
        for value, want in (("notwebsocketatall", 400), ("websocket", 101),
                            ("WebSocket", 101), ("foo, websocket", 101)):
            req = ws_handshake_request("/ws/p5", srv.port, ws_key(), extra=[("Upgrade", value)],
                                       omit=("Upgrade",))
            try:
                r = exchange(srv.port, req)
                if want == 400:
                    check_status_json(r, "HTTP/1.1 400 Bad Request", "Upgrade: %s" % value)
                else:
                    check(status_line(r) == "HTTP/1.1 101 Switching Protocols",
                          "Upgrade: %s: %r" % (value, status_line(r)))
            except Exception as e:  # noqa: BLE001 — every case is reported
                errs.append("%s: %s" % (type(e).__name__, e))
        check(not errs, "\n".join(errs))
        check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "/healthz")


if __name__ == "__main__":
    run()
