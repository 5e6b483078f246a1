"""wsgate_test.py — integration-test harness for wsgate (stdlib only).

What it does: starts the real wsgate binary ($WSGATE_BIN) on a free loopback port with
WSGATE_* environment overrides and stops it by PID; a raw HTTP/1.1 client over sockets
(exact bytes out, full responses in: Content-Length, chunked, read-to-close, keep-alive,
pipelining); a TCP proxy that can stall a gateway's link to its broker (TcpProxy); our
own RFC 6455 WebSocket client (handshake with Sec-WebSocket-Accept check,
masked frames, incremental frame parser, close codes, ping/pong, raw malformed bytes); and
a TAP test registry (`@test`) that runs each test in try/except and prints
`ok N - name` / `not ok N - name` with `# diagnostic` lines and the server log tail.

What it does NOT do: mock any broker or server behaviour, or depend on anything outside
the Python standard library (the point is an independent client). Single-threaded except
for one stderr-draining thread per started server and TcpProxy's forwarding threads.

Usage in a test file:
    from wsgate_test import *
    @test("push delivers text")
    def _():
        with Server() as srv:
            ...
    run()
Run `python3 test_x.py SUBSTRING` to run only the tests whose name contains SUBSTRING.
"""

import base64
import hashlib
import functools
import json
import os
import re
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

__all__ = [
    "test", "run", "Server", "Http", "Response", "WS", "Frame", "FrameParser", "Closed",
    "HandshakeError", "ProtocolError", "TestTimeout", "http_request", "push", "publish",
    "metrics", "metric", "check", "check_eq", "check_json_error", "wait_for", "BIN", "note",
    "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG", "read_proc_status",
    "ws_handshake_request", "LOGDIR", "build_request", "encode_frame", "accepted", "recv_n",
    "sanitized", "SAN_SLOWDOWN", "asan_env", "TcpProxy",
]

BIN = os.environ.get("WSGATE_BIN") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "wsgate")
BIN = os.path.abspath(BIN)
LOGDIR = os.environ.get("WSGATE_TEST_LOGDIR") or tempfile.mkdtemp(prefix="wsgate-it-")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class TestTimeout(Exception):
    """A read or a whole test ran past its deadline."""


class ProtocolError(Exception):
    """The server sent something RFC 6455 / HTTP/1.1 does not allow."""


class HandshakeError(Exception):
    """The WebSocket upgrade was answered with something other than a valid 101."""

    def __init__(self, msg, response=None):
        super().__init__(msg)
        self.response = response


class Closed(Exception):
    """A close frame arrived (code None = no status code) or the TCP connection ended
    (eof=True, code None)."""

    def __init__(self, code, reason=b"", eof=False):
        super().__init__("closed code=%s reason=%r eof=%s" % (code, reason, eof))
        self.code = code
        self.reason = reason
        self.eof = eof


# ---------------------------------------------------------------------------------------
# TAP registry
# ---------------------------------------------------------------------------------------

_TESTS = []          # (name, fn, timeout_s) in definition order
_STARTED = []        # servers started by the running test (for the log tail on failure)
_NOTES = []          # diagnostic lines added by the running test


def test(name, timeout=30):
    """Register fn as a test case. timeout: SIGALRM guard for the whole test (seconds)."""

    def deco(fn):
        _TESTS.append((name, fn, timeout))
        return fn

    return deco


def note(msg):
    """Add a `# ...` diagnostic line printed with this test's result (ok or not)."""
    _NOTES.append(str(msg))


def _on_alarm(signum, frame):
    raise TestTimeout("test ran past its time limit")


def _diag(text):
    for line in str(text).rstrip("\n").split("\n"):
        print("# " + line)


def run():
    """Run the registered tests (optionally filtered by argv[1]), print TAP, exit 1 if any
    failed."""
    only = sys.argv[1] if len(sys.argv) > 1 else None
    tests = [t for t in _TESTS if only is None or only in t[0]]
    print("1..%d" % len(tests))
    print("# binary: %s  logs: %s" % (BIN, LOGDIR))
    sys.stdout.flush()
    failed = 0
    signal.signal(signal.SIGALRM, _on_alarm)
    for n, (name, fn, limit) in enumerate(tests, 1):
        _STARTED.clear()
        _NOTES.clear()
        t0 = time.monotonic()
        err = None
        signal.alarm(limit)
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 — every failure becomes "not ok"
            if isinstance(e, KeyboardInterrupt):
                raise
            err = e
        finally:
            signal.alarm(0)
        # A test that failed may have left servers running: stop them, never leak processes.
        for srv in list(_STARTED):
            if srv.proc is not None and srv.proc.poll() is None:
                try:
                    srv.proc.kill()
                    srv.proc.wait(5)
                except Exception:  # noqa: BLE001
                    pass
        dt = time.monotonic() - t0
        if err is None:
            print("ok %d - %s" % (n, name))
            for line in _NOTES:
                _diag(line)
        else:
            failed += 1
            print("not ok %d - %s" % (n, name))
            _diag("%s: %s" % (type(err).__name__, err))
            for fr in traceback.extract_tb(err.__traceback__):
                if os.path.basename(fr.filename).startswith("test_"):
                    _diag("at %s:%d: %s" % (os.path.basename(fr.filename), fr.lineno, fr.line))
            for line in _NOTES:
                _diag(line)
            for srv in _STARTED:
                _diag("server log %s (last lines):" % srv.log_path)
                _diag(srv.log_tail(15))
        _diag("time %.2fs" % dt)
        sys.stdout.flush()
    print("# %d passed, %d failed" % (len(tests) - failed, failed))
    sys.exit(1 if failed else 0)


def check(cond, msg="check failed"):
    if not cond:
        raise AssertionError(msg)


def check_eq(got, want, what="value"):
    if got != want:
        g, w = repr(got), repr(want)
        if len(g) > 300:
            g = g[:300] + "...(%d chars)" % len(g)
        if len(w) > 300:
            w = w[:300] + "...(%d chars)" % len(w)
        raise AssertionError("%s: got %s, want %s" % (what, g, w))


def wait_for(fn, timeout=3.0, interval=0.02, what="condition"):
    """Poll fn() until truthy; return its value or raise TestTimeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TestTimeout("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# Server process
# ---------------------------------------------------------------------------------------

_LISTEN_RE = re.compile(r"addr=127\.0\.0\.1:(\d+)")


@functools.lru_cache(maxsize=None)
def sanitized():
    """True when the binary under test is an AddressSanitizer build (make test-san): tests
    that bound wall time or memory multiply the bound by SAN_SLOWDOWN rather than drop it,
    and tests that bound RSS give the server a small quarantine (asan_env)."""
    try:
        with open(BIN, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SAN_SLOWDOWN = 2   # ASan: the loop runs 2-3x slower and memory roughly doubles


def asan_env(env, quarantine_mb=16):
    """env plus ASAN_OPTIONS with a small quarantine: ASan's 256 MB default keeps freed
    memory resident and would read as RSS growth (harmless for a non-ASan binary)."""
    opts = [o for o in os.environ.get("ASAN_OPTIONS", "").split(":") if o]
    env["ASAN_OPTIONS"] = ":".join(opts + ["quarantine_size_mb=%d" % quarantine_mb])
    return env


class Server:
    """One wsgate process. env: extra WSGATE_* overrides (values str); args: extra argv.
    The inherited environment is stripped of every WSGATE_* variable first (the test
    runner exports WSGATE_BIN/WSGATE_TOOLS, which are not config keys), then
    WSGATE_SERVER_LISTEN=127.0.0.1:0 and env are applied.
    WSGATE_SERVER_DRAIN_TIMEOUT defaults to 3s here (stop() waits 5s).
    Use as a context manager: on exit it sends SIGTERM and checks the exit status is 0."""

    _seq = 0

    def __init__(self, env=None, args=None, name="wsgate", expect_rc=0):
        Server._seq += 1
        self.env = dict(env or {})
        self.args = list(args or [])
        self.expect_rc = expect_rc
        self.proc = None
        self.port = None
        self.addr = None
        self.log_path = os.path.join(LOGDIR, "%s-%d-%d.log" % (name, os.getpid(), Server._seq))
        self._lines = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._eof = threading.Event()
        self._thread = None

    def start(self, timeout=5.0):
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
        env["WSGATE_SERVER_LISTEN"] = "127.0.0.1:0"
        env["WSGATE_SERVER_DRAIN_TIMEOUT"] = "3s"  # tests override when they test draining
        env.update(self.env)
        check(os.access(BIN, os.X_OK), "WSGATE_BIN %s is not an executable file" % BIN)
        self.proc = subprocess.Popen([BIN] + self.args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        _STARTED.append(self)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.02):
            if self._eof.is_set() or time.monotonic() >= deadline:
                break
        if not self._listening.is_set():
            try:
                rc = self.proc.wait(0.5)
            except subprocess.TimeoutExpired:
                rc = None
            if rc is not None:
                raise AssertionError("server exited with status %s before logging "
                                     "event=listening; log:\n%s" % (rc, self.log_tail(20)))
            raise TestTimeout("server did not log event=listening within %.1fs; log:\n%s"
                              % (timeout, self.log_tail(20)))
        return self

    def _drain(self):
        with open(self.log_path, "wb") as f:
            for line in iter(self.proc.stdout.readline, b""):
                f.write(line)
                f.flush()
                text = line.decode("utf-8", "replace")
                with self._lock:
                    self._lines.append(text)
                if not self._listening.is_set() and "event=listening" in text:
                    m = _LISTEN_RE.search(text)
                    if m:
                        self.port = int(m.group(1))
                        self.addr = "127.0.0.1:%d" % self.port
                        self._listening.set()
        self._eof.set()

    def log_text(self):
        with self._lock:
            return "".join(self._lines)

    def log_tail(self, n=15):
        with self._lock:
            return "".join(self._lines[-n:]) or "(empty)"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        """Wait for exit; returns the exit code or raises TestTimeout."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TestTimeout("server pid %d still running after %.1fs" % (self.proc.pid, timeout))
        self._eof.wait(2)
        return rc

    def stop(self, timeout=5.0):
        """SIGTERM, then SIGKILL after timeout. Returns the exit code (negative = signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self._eof.wait(2)
                raise AssertionError("server ignored SIGTERM for %.1fs, killed" % timeout)
        self._eof.wait(2)
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, et, ev, tb):
        if et is not None:
            # the test already failed: report that failure, not a slow shutdown
            try:
                self.stop()
            except Exception:  # noqa: BLE001
                pass
            return False
        rc = self.stop()
        if self.expect_rc is not None and rc != self.expect_rc:
            raise AssertionError("server exit status %s, want %s" % (rc, self.expect_rc))
        return False

    # convenience -------------------------------------------------------------------
    def http(self, **kw):
        return Http(self.port, **kw)

    def ws(self, path, **kw):
        return WS.connect(self.port, path, **kw)

    def rss_kb(self):
        return read_proc_status(self.proc.pid).get("VmRSS")

    def hwm_kb(self):
        return read_proc_status(self.proc.pid).get("VmHWM")


def read_proc_status(pid):
    """/proc/PID/status sizes in kB, e.g. {'VmRSS': 5120, 'VmHWM': 6000}."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            v = v.strip()
            if v.endswith(" kB"):
                out[k] = int(v[:-3])
    return out


# ---------------------------------------------------------------------------------------
# Byte stream with a read buffer
# ---------------------------------------------------------------------------------------

class _Stream:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def _fill(self, deadline):
        """Read once more into buf. Returns False on EOF. Raises TestTimeout at deadline.
        ECONNRESET counts as EOF (the peer is gone)."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TestTimeout("read timed out")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(262144)
        except socket.timeout:
            raise TestTimeout("read timed out (%d bytes buffered: %r)"
                              % (len(self.buf), bytes(self.buf[:120])))
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_until(self, sep, deadline, limit=1 << 20):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ProtocolError("no %r within %d bytes" % (sep, limit))
            if not self._fill(deadline):
                raise EOFError("connection closed before %r (buffered %r)"
                               % (sep, bytes(self.buf[:200])))

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise EOFError("connection closed after %d of %d bytes" % (len(self.buf), n))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self, deadline):
        while self._fill(deadline):
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def wait_eof(self, timeout=3.0):
        """True if the peer closes (EOF/reset) within timeout; data read meanwhile is
        kept in buf."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
            return True
        except TestTimeout:
            return False


# ---------------------------------------------------------------------------------------
# HTTP client
# ---------------------------------------------------------------------------------------

class Response:
    def __init__(self, status, reason, headers, body, head):
        self.status = status
        self.reason = reason
        self.headers = headers      # list of (name, value) as received
        self.body = body
        self.head = head            # raw head bytes incl. the final CRLFCRLF

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def keep_alive(self):
        conn = (self.header("connection") or "").lower()
        return "close" not in conn

    def __repr__(self):
        body = self.body if len(self.body) <= 200 else self.body[:200] + b"..."
        return "<%d %s %r body=%r>" % (self.status, self.reason, self.headers, body)

    def describe(self):
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return self.head.decode("latin-1") + body.decode("latin-1")


def _parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})(?: (.*))?$", lines[0])
    if not m:
        raise ProtocolError("bad status line %r" % lines[0])
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        k, sep, v = line.partition(":")
        if not sep:
            raise ProtocolError("bad header line %r" % line)
        headers.append((k.strip(), v.strip()))
    return int(m.group(1)), m.group(2) or "", headers


class Http:
    """One HTTP/1.1 client connection. send() writes exact bytes; read_response() reads one
    full response (1xx interim responses are returned on their own)."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0):
        self.port = port
        self.host = host
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s = _Stream(self.sock)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def reconnect(self):
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s = _Stream(self.sock)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def read_response(self, timeout=None, method="GET"):
        deadline = time.monotonic() + (timeout or self.timeout)
        head = self.s.read_until(b"\r\n\r\n", deadline)
        status, reason, headers = _parse_head(head)
        r = Response(status, reason, headers, b"", head)
        if 100 <= status < 200 or status in (204, 304) or method == "HEAD":
            return r
        te = (r.header("transfer-encoding") or "").lower()
        cl = r.header("content-length")
        if "chunked" in te:
            body = bytearray()
            while True:
                line = self.s.read_until(b"\r\n", deadline)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.s.read_until(b"\r\n", deadline) != b"\r\n":
                        pass
                    break
                body += self.s.read_exact(size, deadline)
                check_eq(self.s.read_exact(2, deadline), b"\r\n", "chunk terminator")
            r.body = bytes(body)
        elif cl is not None:
            r.body = self.s.read_exact(int(cl), deadline)
        else:
            r.body = self.s.read_to_eof(deadline)
        return r

    def request(self, method, path, body=None, headers=None, timeout=None):
        self.send(build_request(method, path, body, headers, self.port))
        return self.read_response(timeout, method)

    def wait_eof(self, timeout=3.0):
        return self.s.wait_eof(timeout)


def build_request(method, path, body=None, headers=None, port=0):
    """Exact request bytes. headers: list of (k, v) or dict; Host and Content-Length are
    added unless given (no Content-Length for a GET without body)."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    headers = list(headers or [])
    names = {k.lower() for k, _ in headers}
    if body is not None and isinstance(body, str):
        body = body.encode("utf-8")
    out = ["%s %s HTTP/1.1" % (method, path)]
    if "host" not in names:
        out.append("Host: 127.0.0.1:%d" % port)
    for k, v in headers:
        out.append("%s: %s" % (k, v))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        out.append("Content-Length: %d" % len(body))
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + (body or b"")


def http_request(port, method, path, body=None, headers=None, timeout=5.0):
    """One request on a fresh connection."""
    with Http(port, timeout=timeout) as c:
        return c.request(method, path, body, headers)


def push(port, key, body, headers=None):
    return http_request(port, "POST", "/push/" + key, body, headers)


def accepted(r, what="push"):
    """r (a Response) must be the 202 of an accepted push or publish."""
    check(r.status == 202, "%s: status %d, want 202:\n%s" % (what, r.status, r.describe()))


def recv_n(ws, n, timeout=5.0):
    """The next n data messages' payloads, all within timeout seconds."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        op, data = ws.recv_message(max(0.01, deadline - time.monotonic()))
        out.append(data)
    return out


def publish(port, topic, body, headers=None):
    return http_request(port, "POST", "/publish/" + topic, body, headers)


def metrics(port):
    """GET /metrics -> {name_with_labels: float}."""
    r = http_request(port, "GET", "/metrics")
    check_eq(r.status, 200, "/metrics status")
    out = {}
    for line in r.body.decode("utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 2:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return out


def metric(port, name):
    m = metrics(port)
    check(name in m, "metric %s missing from /metrics" % name)
    return m[name]


def check_json_error(r, status, what=""):
    """r has the status, Content-Type application/json and a body {"error": "..."}."""
    check(r.status == status, "%s: status %d, want %d; response:\n%s"
          % (what, r.status, status, r.describe()))
    ct = (r.header("content-type") or "").lower()
    check(ct.startswith("application/json"), "%s: Content-Type %r, want application/json; "
          "response:\n%s" % (what, ct, r.describe()))
    try:
        j = r.json()
    except ValueError as e:
        raise AssertionError("%s: body is not JSON (%s): %r" % (what, e, r.body))
    check(isinstance(j, dict) and isinstance(j.get("error"), str) and j["error"],
          "%s: body %r has no non-empty string \"error\"" % (what, r.body))
    return j


# ---------------------------------------------------------------------------------------
# WebSocket client
# ---------------------------------------------------------------------------------------

class Frame:
    __slots__ = ("opcode", "payload", "fin", "rsv", "masked")

    def __init__(self, opcode, payload, fin, rsv=0, masked=False):
        self.opcode = opcode
        self.payload = payload
        self.fin = fin
        self.rsv = rsv
        self.masked = masked

    def close_code(self):
        if len(self.payload) >= 2:
            return struct.unpack(">H", self.payload[:2])[0]
        return None

    def __repr__(self):
        p = self.payload if len(self.payload) <= 60 else self.payload[:60] + b"..."
        return "Frame(op=%d fin=%d rsv=%d len=%d %r)" % (self.opcode, self.fin, self.rsv,
                                                         len(self.payload), p)


class FrameParser:
    """Incremental RFC 6455 frame parser: feed(bytes), then next() -> Frame or None."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data

    def next(self):
        b = self.buf
        if len(b) < 2:
            return None
        b0, b1 = b[0], b[1]
        fin, rsv, op = b0 >> 7, (b0 >> 4) & 7, b0 & 0xF
        masked, n = b1 >> 7, b1 & 0x7F
        i = 2
        if n == 126:
            if len(b) < 4:
                return None
            n = struct.unpack(">H", b[2:4])[0]
            i = 4
        elif n == 127:
            if len(b) < 10:
                return None
            n = struct.unpack(">Q", b[2:10])[0]
            i = 10
        key = None
        if masked:
            if len(b) < i + 4:
                return None
            key = bytes(b[i:i + 4])
            i += 4
        if len(b) < i + n:
            return None
        payload = bytes(b[i:i + n])
        del b[:i + n]
        if key:
            payload = mask_bytes(payload, key)
        return Frame(op, payload, bool(fin), rsv, bool(masked))


def mask_bytes(data, key):
    if not data:
        return b""
    k = int.from_bytes((key * (len(data) // 4 + 1))[:len(data)], "little")
    return (int.from_bytes(data, "little") ^ k).to_bytes(len(data), "little")


def encode_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, key=None, length=None):
    """A client frame. length overrides the announced length (for malformed frames)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack(">BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack(">BBH", b0, mbit | 126, n)
    else:
        head = struct.pack(">BBQ", b0, mbit | 127, n)
    if mask:
        key = key or os.urandom(4)
        return head + key + mask_bytes(payload, key)
    return head + payload


def ws_handshake_request(path, port, key, extra=None, omit=()):
    hdrs = [("Host", "127.0.0.1:%d" % port), ("Upgrade", "websocket"),
            ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13")]
    hdrs = [(k, v) for k, v in hdrs if k not in omit]
    hdrs += list(extra or [])
    return ("GET %s HTTP/1.1\r\n" % path + "".join("%s: %s\r\n" % kv for kv in hdrs)
            + "\r\n").encode("latin-1")


class WS:
    """Our WebSocket client. Construct with WS.connect(port, path)."""

    def __init__(self, sock, stream, response, path):
        self.sock = sock
        self.s = stream
        self.response = response
        self.path = path
        self.parser = FrameParser()
        self.parser.feed(bytes(stream.buf))
        stream.buf.clear()
        self.pings = []          # payloads of pings received (auto-answered if pong=True)
        self.close_frame = None  # the Frame of the server's close, once seen
        self.sent_close = False

    @classmethod
    def connect(cls, port, path, extra_headers=None, timeout=5.0, rcvbuf=None, key=None):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = key or base64.b64encode(os.urandom(16)).decode()
        sock.sendall(ws_handshake_request(path, port, key, extra_headers))
        st = _Stream(sock)
        deadline = time.monotonic() + timeout
        try:
            head = st.read_until(b"\r\n\r\n", deadline)
        except (EOFError, TestTimeout) as e:
            sock.close()
            raise HandshakeError("no handshake response for %s: %s" % (path, e))
        status, reason, headers = _parse_head(head)
        r = Response(status, reason, headers, b"", head)
        if status != 101:
            cl = r.header("content-length")
            try:
                if cl is not None:
                    r.body = st.read_exact(int(cl), deadline)
            except (EOFError, TestTimeout):
                pass
            sock.close()
            raise HandshakeError("upgrade %s answered %d: %s" % (path, status, r.describe()), r)
        want = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        if r.header("sec-websocket-accept") != want:
            sock.close()
            raise HandshakeError("bad Sec-WebSocket-Accept %r, want %r"
                                 % (r.header("sec-websocket-accept"), want), r)
        if (r.header("upgrade") or "").lower() != "websocket" or \
                "upgrade" not in (r.header("connection") or "").lower():
            sock.close()
            raise HandshakeError("101 without Upgrade: websocket / Connection: Upgrade:\n%s"
                                 % r.describe(), r)
        return cls(sock, st, r, path)

    def fileno(self):
        return self.sock.fileno()

    def close_socket(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close_socket()

    # sending ---------------------------------------------------------------------
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, mask=True, length=None):
        self.sock.sendall(encode_frame(opcode, payload, fin, rsv, mask, length=length))

    def send_text(self, s):
        self.send_frame(OP_TEXT, s.encode("utf-8") if isinstance(s, str) else s)

    def send_binary(self, b):
        self.send_frame(OP_BINARY, b)

    def send_close(self, code=1000, reason=b""):
        payload = b"" if code is None else struct.pack(">H", code) + reason
        self.send_frame(OP_CLOSE, payload)
        self.sent_close = True

    # receiving -------------------------------------------------------------------
    def recv_frame(self, timeout=3.0):
        """Next raw frame. Raises TestTimeout, or Closed(eof=True) at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.parser.next()
            if f is not None:
                if f.masked:
                    raise ProtocolError("server sent a masked frame: %r" % f)
                return f
            self.s.buf.clear()
            if not self.s._fill(deadline):
                raise Closed(None, eof=True)
            self.parser.feed(bytes(self.s.buf))
            self.s.buf.clear()

    def recv_message(self, timeout=3.0, pong=True):
        """Next complete data message (opcode, payload). Pings are recorded (and answered
        if pong). Raises Closed on a close frame (after answering it) or EOF."""
        deadline = time.monotonic() + timeout
        parts, op0 = [], None
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()) or 0.001)
            if f.rsv:
                raise ProtocolError("server frame with RSV bits %d: %r" % (f.rsv, f))
            if f.opcode == OP_PING:
                check(f.fin and len(f.payload) <= 125, "bad server ping %r" % f)
                self.pings.append(f.payload)
                if pong:
                    self.send_frame(OP_PONG, f.payload)
                continue
            if f.opcode == OP_PONG:
                continue
            if f.opcode == OP_CLOSE:
                self.close_frame = f
                if not self.sent_close:
                    try:
                        self.send_close(f.close_code() if f.close_code() else None)
                    except OSError:
                        pass
                raise Closed(f.close_code(), f.payload[2:])
            if f.opcode in (OP_TEXT, OP_BINARY):
                if op0 is not None:
                    raise ProtocolError("new data frame inside a fragmented message: %r" % f)
                op0 = f.opcode
            elif f.opcode == OP_CONT:
                if op0 is None:
                    raise ProtocolError("continuation without a start: %r" % f)
            else:
                raise ProtocolError("reserved opcode from server: %r" % f)
            parts.append(f.payload)
            if f.fin:
                return op0, b"".join(parts)

    def expect_close(self, timeout=3.0, allow_data=True):
        """Read until the server's close frame; answer it; return (code, reason). Data
        messages before it are allowed unless allow_data=False. Raises AssertionError if
        the TCP connection ends with no close frame."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                op, data = self.recv_message(max(0.001, deadline - time.monotonic()))
            except Closed as c:
                if c.eof:
                    raise AssertionError("connection ended without a close frame")
                return c.code, c.reason
            if not allow_data:
                raise AssertionError("data message %r before the close frame" % (data[:80],))

    def close(self, code=1000, timeout=3.0):
        """Client-initiated close handshake; returns the echoed code."""
        self.send_close(code)
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv_frame(max(0.001, deadline - time.monotonic()))
            if f.opcode == OP_CLOSE:
                self.close_frame = f
                return f.close_code()

    def wait_eof(self, timeout=3.0):
        """True if the TCP connection ends within timeout (frames read meanwhile are
        kept for recv_frame)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.s.buf.clear()
                if not self.s._fill(deadline):
                    return True
                self.parser.feed(bytes(self.s.buf))
                self.s.buf.clear()
        except TestTimeout:
            return False

    def nothing_within(self, seconds):
        """True if no data message arrives within seconds (pings are answered)."""
        try:
            op, data = self.recv_message(seconds)
        except TestTimeout:
            return True
        note("unexpected message on %s: op=%d %r" % (self.path, op, data[:80]))
        return False


def recv_all(clients, count_each, timeout=5.0):
    """Read up to count_each data frames from every client through one selector (pings
    are answered, other control frames skipped); returns {client: [(op, payload), ...]}.
    Stops at timeout or when every client has count_each (or reached EOF)."""
    got = {c: [] for c in clients}
    sel = selectors.DefaultSelector()
    pending = set()
    for c in clients:
        sel.register(c.sock, selectors.EVENT_READ, c)
        pending.add(c)
    deadline = time.monotonic() + timeout

    def drain(c):
        while len(got[c]) < count_each:
            f = c.parser.next()
            if f is None:
                return
            if f.opcode == OP_PING:
                c.send_frame(OP_PONG, f.payload)
            elif f.opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                got[c].append((f.opcode, f.payload))
            elif f.opcode == OP_CLOSE:
                got[c].append((f.opcode, f.payload))

    try:
        while pending:
            for c in list(pending):
                drain(c)
                if len(got[c]) >= count_each:
                    pending.discard(c)
                    sel.unregister(c.sock)
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            for key, _ in sel.select(remaining):
                c = key.data
                try:
                    c.sock.settimeout(0.5)
                    data = c.sock.recv(262144)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    drain(c)
                    pending.discard(c)
                    sel.unregister(c.sock)
                    continue
                c.parser.feed(data)
    finally:
        sel.close()
    return got


__all__.append("recv_all")


class TcpProxy:
    """A TCP proxy in front of 127.0.0.1:target (threads; for network stalls between a
    gateway and its broker; .port is where to connect). hold(seconds) stops forwarding
    client->server bytes for that long: they wait in the proxy, in order, and go on
    afterwards. A client that goes away while its bytes are held loses them (they never
    reach the server), like a node that dies during a network stall. Server->client bytes
    always flow (_down: a subclass may hold them its own way)."""

    def __init__(self, target):
        self.target = target
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.held_until = 0.0
        self.socks = []
        self.closed = False
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def hold(self, seconds):
        self.held_until = time.monotonic() + seconds

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
                s = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            for x in (c, s):
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks += [c, s]
            threading.Thread(target=self._up, args=(c, s), daemon=True).start()
            threading.Thread(target=self._down, args=(s, c), daemon=True).start()

    def _up(self, c, s):
        buf, eof = bytearray(), False
        try:
            while not self.closed:
                held = time.monotonic() < self.held_until
                if buf and not held:
                    s.sendall(buf)
                    buf.clear()
                if eof:
                    if held and buf:
                        break  # the client died during the stall: its bytes are lost
                    if not buf:
                        s.shutdown(socket.SHUT_WR)
                        return
                    time.sleep(0.005)
                    continue
                r, _, _ = select.select([c], [], [], 0.005 if held or buf else 0.2)
                if r:
                    try:
                        d = c.recv(65536)
                    except ConnectionResetError:
                        d = b""
                    if d:
                        buf += d
                    else:
                        eof = True
        except OSError:
            pass
        for x in (c, s):
            try:
                x.close()
            except OSError:
                pass

    def _down(self, s, c):
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    c.shutdown(socket.SHUT_WR)
                    return
                c.sendall(d)
        except OSError:
            pass

    def close(self):
        self.closed = True
        for x in [self.lsock] + self.socks:
            try:
                x.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
        return False
