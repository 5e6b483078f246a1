#!/usr/bin/python3
"""test_nats_backend.py — the NATS JetStream backend (`[broker] type = nats`, DESIGN.md §3-4)
against a real `nats-server -js` started here on a free port with its own store directory:
stream setup (and refusal of an incompatible stream), direct publish by a service (the
tests/tools/nats_pub client, no HTTP), upstream on ws.send.S, offline buffering and order,
429 on a full session queue, broadcast on core subjects across two nodes, 1000 messages
over 100 sessions, exactly-once between two sockets of one session, client drop and
gateway kill -9 mid-stream, nats-server restart, one consumer whatever the number of
sessions (both with and without pulling it), and session keys that must never reach a
subject.
Does NOT test HTTP/WebSocket framing (test_http.py, test_ws.py) or performance (bench/).
Most tests share one nats-server (unique session keys keep them apart); the fault tests
start their own."""

import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403
from wsgate_test import build_request  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TOOLS = os.environ.get("WSGATE_TOOLS") or os.path.join(ROOT, "build", "tools")
NATS_PUB = os.path.join(TOOLS, "nats_pub")


class Nats:
    """One nats-server -js on a free loopback port (race-free: -p -1 + ports file), its
    own store dir; restart() reuses port and store. Stopped by PID."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="nats-", dir=LOGDIR)
        self.port = None
        self.proc = None
        self.log = os.path.join(self.dir, "nats.log")

    def start(self, timeout=5.0):
        for f in os.listdir(self.dir):
            if f.endswith(".ports"):
                os.unlink(os.path.join(self.dir, f))
        args = ["nats-server", "-js", "-a", "127.0.0.1", "-p",
                str(self.port) if self.port else "-1", "--ports_file_dir", self.dir,
                "-sd", os.path.join(self.dir, "js"), "-l", self.log]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        pf = os.path.join(self.dir, "nats-server_%d.ports" % self.proc.pid)
        while True:
            check(self.proc.poll() is None, "nats-server exited: %s" % self._tail())
            if os.path.exists(pf):
                text = open(pf).read()
                if "nats://" in text:
                    self.port = int(text.split("nats://")[1].split('"')[0].rsplit(":", 1)[1])
                    break
            if time.monotonic() > deadline:
                raise TestTimeout("nats-server not ready: %s" % self._tail())
            time.sleep(0.01)
        return self

    def _tail(self):
        try:
            return open(self.log).read()[-800:]
        except OSError:
            return "(no log)"

    @property
    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def stop(self, sig=signal.SIGINT):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()
        return False


_SHARED = []


def shared_nats():
    if not _SHARED:
        _SHARED.append(Nats().start())
    return _SHARED[0]


def gw(nats, **extra):
    """A wsgate on the nats broker; extra: WSGATE_* overrides without the prefix."""
    env = {"WSGATE_BROKER_TYPE": "nats", "WSGATE_NATS_URL": nats.url,
           "WSGATE_NATS_TIMEOUT": "2s"}
    for k, v in extra.items():
        env["WSGATE_" + k.upper()] = str(v)
    return Server(env=asan_env(env), name="wsgate-nats")


class SlowReplies(TcpProxy):
    """A TcpProxy in front of nats-server that, while .delay > 0, holds back every MSG and
    HMSG frame (replies, acks, deliveries) for .delay seconds, in order, and passes the
    rest (PING, PONG, INFO, +OK, -ERR) at once: a server that is alive but slow to
    answer. .url is what a gateway connects to."""

    def __init__(self, port):
        self.delay = 0.0
        super().__init__(port)
        self.url = "nats://127.0.0.1:%d" % self.port

    def _down(self, s, c):  # server -> client: frames parsed, MSG/HMSG held while delayed
        buf, held = b"", []
        s.settimeout(0.02)
        try:
            while not self.closed:
                try:
                    d = s.recv(65536)
                    if not d:
                        break
                    buf += d
                except socket.timeout:
                    pass
                while True:
                    i = buf.find(b"\r\n")
                    if i < 0:
                        break
                    line = buf[:i]
                    if line.startswith((b"MSG ", b"HMSG ")):
                        end = i + 2 + int(line.split()[-1]) + 2
                        if len(buf) < end:
                            break
                        held.append((time.monotonic() + self.delay, buf[:end]))
                        buf = buf[end:]
                    else:
                        c.sendall(buf[:i + 2])
                        buf = buf[i + 2:]
                now = time.monotonic()
                while held and held[0][0] <= now:
                    c.sendall(held.pop(0)[1])
        except OSError:
            pass
        c.close()


def tool(*args, nats=None, stdin=None, timeout=10):
    check(os.access(NATS_PUB, os.X_OK), "%s missing: build it with `make %s`"
          % (NATS_PUB, os.path.relpath(NATS_PUB, ROOT)))
    cmd = [NATS_PUB] + (["-s", nats.url] if nats else []) + list(args)
    r = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return r


class Spy:
    """nats_pub -x sub SUBJECT N: a service-side subscriber; .lines() after it exits."""

    def __init__(self, nats, subject, count, seconds=8):
        self.proc = subprocess.Popen([NATS_PUB, "-s", nats.url, "-x", "sub", subject,
                                      str(count), str(seconds)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        line = self.proc.stderr.readline()
        check(line.strip() == b"ready", "spy did not subscribe: %r" % line)

    def lines(self, timeout=10):
        out, err = self.proc.communicate(timeout=timeout)
        return out.decode().split("\n")[:-1], self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stream_state(nats, stream="WSRECV"):
    r = tool("consumers", stream, nats=nats)
    check(r.returncode == 0, "stream info: %s" % r.stderr.decode())
    kv = dict(x.split("=") for x in r.stdout.decode().split())
    return int(kv["consumers"]), int(kv["msgs"])


# --- setup ----------------------------------------------------------------------------

@test("open creates the work-queue stream and its one consumer; /readyz 200; an "
      "incompatible stream stops start")
def _():
    with Nats() as n:
        with gw(n) as srv:
            check_eq(http_request(srv.port, "GET", "/readyz").status, 200, "/readyz")
            log = srv.log_text()
            check("event=nats_stream_created" in log, "no stream creation logged")
            # nats-server 2.9 removes a message on an ack ahead of the consumer: no pulling
            check("event=nats_acks_ahead remove=yes pull=no" in log, "probe result:\n" + log)
            check_eq(stream_state(n), (1, 0), "(consumers, msgs) of a fresh stream")
            r = tool("streams", "", nats=n)
            check_eq(r.stdout.decode().split(), ["WSRECV"], "streams on the server (the "
                     "probe's own must be gone)")
        with gw(n) as srv:  # second start: the stream exists and is compatible
            check("event=nats_stream_ok" in srv.log_text(), "existing stream not verified")
        refuses_stream(n, "LIMITS", "bad", "limits", "workqueue")
        # a work-queue stream of our subjects that does not republish: refused too
        refuses_stream(n, "NOREPUB", "bad2", "workqueue", "republish")


def refuses_stream(n, name, prefix, retention, reason):
    """Create stream name on <prefix>.recv.> with retention; a gateway told to use it
    must exit non-zero with event=nats_stream_incompatible and reason in its log."""
    r = tool("stream-add", name, prefix + ".recv.>", retention, "file", nats=n)
    check(r.returncode == 0, r.stderr.decode())
    s = gw(n, broker_prefix=prefix, nats_stream=name)
    s.expect_rc = None
    try:
        s.start(timeout=5)
        raise AssertionError("wsgate started on stream %s:\n%s" % (name, s.log_tail()))
    except AssertionError as e:
        if "started on" in str(e):
            raise
    rc = s.proc.wait(5)
    check(rc != 0, "exit status %d" % rc)
    log = s.log_text()
    check("event=nats_stream_incompatible" in log and reason in log,
          "no clear incompatibility error (want %r):\n%s" % (reason, s.log_tail()))


# --- delivery -------------------------------------------------------------------------

@test("direct publish by a service (nats_pub, no HTTP) reaches the right socket")
def _():
    n = shared_nats()
    with gw(n) as srv:
        with srv.ws("/ws/svc1.user42") as ws, srv.ws("/ws/svc1.user43") as other:
            r = tool("pub", "ws.recv.svc1.user42", "hello from a service", nats=n)
            check(r.returncode == 0, r.stderr.decode())
            check_eq(ws.recv_message(), (OP_TEXT, b"hello from a service"), "core publish")
            blob = bytes(range(256)) * 4
            r = tool("jspub", "ws.recv.svc1.user42", nats=n, stdin=blob)
            check(r.returncode == 0 and b"stream=WSRECV" in r.stdout, r.stderr.decode())
            check_eq(ws.recv_message(), (OP_BINARY, blob), "jetstream publish, binary")
            check(other.nothing_within(0.3), "another session got the message")
        check_eq(stream_state(n)[1], 0, "messages left in the stream (all acked)")


@test("upstream: client frames arrive on ws.send.S byte-exact")
def _():
    n = shared_nats()
    with gw(n, websocket_upstream="on") as srv:
        spy = Spy(n, "ws.send.svc1.up1", 3)
        try:
            with srv.ws("/ws/svc1.up1") as ws:
                ws.send_text("h\u00e9llo")
                ws.send_binary(b"\x00\xff\x01")
                ws.send_text("")
                lines, rc = spy.lines()
        finally:
            spy.kill()
        check_eq(rc, 0, "spy exit status (3 messages)")
        check_eq(lines, ["ws.send.svc1.up1 " + "h\u00e9llo".encode().hex(),
                         "ws.send.svc1.up1 00ff01", "ws.send.svc1.up1 "], "ws.send frames")


@test("offline buffering and order: pushes before connect, then live, all in order")
def _():
    n = shared_nats()
    with gw(n) as srv:
        with srv.http() as h:
            for i in range(30):
                accepted(h.request("POST", "/push/buf.s1", b"m%03d" % i))
        check_eq(stream_state(n)[1], 30, "stored while offline")
        with srv.ws("/ws/buf.s1") as ws:
            got = recv_n(ws, 30)
            with srv.http() as h:
                for i in range(30, 60):
                    accepted(h.request("POST", "/push/buf.s1", b"m%03d" % i))
            got += recv_n(ws, 30)
            check_eq(got, [b"m%03d" % i for i in range(60)], "delivery order")
            check(ws.nothing_within(0.3), "extra message")


@test("max_queue: the session's queue full answers 429 with Retry-After")
def _():
    n = shared_nats()
    with gw(n, broker_prefix="q", nats_stream="QSTREAM", broker_max_queue="3") as srv:
        for i in range(3):
            accepted(push(srv.port, "full", b"x%d" % i))
        r = push(srv.port, "full", b"x3")
        check_json_error(r, 429, "4th push")
        check(r.header("retry-after") is not None, "429 without Retry-After")
        with srv.ws("/ws/full") as ws:
            check_eq(recv_n(ws, 3), [b"x0", b"x1", b"x2"], "the 3 that were accepted")
            wait_for(lambda: stream_state(n, "QSTREAM")[1] == 0, 3, what="acks to land")
        accepted(push(srv.port, "full", b"x4"), "push after the queue drained")


@test("[broker] max_queue and ttl changed on an existing stream are applied (stream "
      "update, logged), not ignored", timeout=40)
def _():
    with Nats() as n:
        with gw(n, broker_max_queue="10") as srv:
            for i in range(10):
                accepted(push(srv.port, "lim.a", b"a%d" % i))
            check_json_error(push(srv.port, "lim.a", b"a10"), 429, "11th push at max_queue=10")
        # raised: the 11th offline push is accepted now, the 21st is not
        with gw(n, broker_max_queue="20") as srv:
            for i in range(10, 20):
                accepted(push(srv.port, "lim.a", b"a%d" % i), "push %d at max_queue=20" % i)
            check_json_error(push(srv.port, "lim.a", b"a20"), 429, "21st push at max_queue=20")
            log = srv.log_text()
            check("event=nats_stream_updated" in log and "max_msgs_per_subject=10->20" in log,
                  "no stream update logged:\n" + srv.log_tail())
        # lowered: a fresh session takes 5; nats-server trims lim.a to its newest 5
        with gw(n, broker_max_queue="5") as srv:
            for i in range(5):
                accepted(push(srv.port, "lim.b", b"b%d" % i))
            check_json_error(push(srv.port, "lim.b", b"b5"), 429, "6th push at max_queue=5")
            with srv.ws("/ws/lim.a") as ws:
                check_eq(recv_n(ws, 5), [b"a%d" % i for i in range(15, 20)],
                         "lim.a after the limit went from 20 to 5 (the newest 5)")
                check(ws.nothing_within(0.2), "more than 5 left in lim.a")
        # ttl: 1h -> 2s; a message older than 2 s is not delivered, a fresh one is
        with gw(n, broker_max_queue="5", broker_ttl="2s") as srv:
            accepted(push(srv.port, "lim.t", b"old"))
            time.sleep(3.0)
            accepted(push(srv.port, "lim.t", b"new"))
            with srv.ws("/ws/lim.t") as ws:
                check_eq(ws.recv_message(), (OP_TEXT, b"new"), "first message after 3 s")
                check(ws.nothing_within(0.2), "more after the fresh message")
            log = srv.log_text()
            check("event=nats_stream_updated" in log and "max_age_ms=3600000->2000" in log,
                  "no stream update logged:\n" + srv.log_tail())
        with gw(n, broker_max_queue="5", broker_ttl="2s") as srv:  # same values: no update
            check("event=nats_stream_updated" not in srv.log_text(), "updated with no change")


@test("two nodes: client on A, push via B; broadcast via B and via a core publish")
def _():
    n = shared_nats()
    with gw(n) as a, gw(n) as b:
        with a.ws("/ws/two.s1?topics=news") as wa, b.ws("/ws/two.s2?topics=news,other") as wb:
            accepted(push(b.port, "two.s1", b"via B"))
            check_eq(wa.recv_message(), (OP_TEXT, b"via B"), "push on B reaches A")
            accepted(publish(b.port, "news", b"extra"), "publish")
            check_eq(wa.recv_message(), (OP_TEXT, b"extra"), "broadcast on A")
            check_eq(wb.recv_message(), (OP_TEXT, b"extra"), "broadcast on B")
            r = tool("pub", "ws.topic.other", "from a service", nats=n)
            check(r.returncode == 0, r.stderr.decode())
            check_eq(wb.recv_message(), (OP_TEXT, b"from a service"), "core publish to topic")
            check(wa.nothing_within(0.3), "A got a topic it did not subscribe to")


@test("1000 messages over 100 sessions on two nodes: none lost, none duplicated")
def _():
    n = shared_nats()
    with gw(n) as a, gw(n) as b:
        clients = []
        try:
            for i in range(100):
                clients.append((a if i % 2 else b).ws("/ws/load.s%d" % i))
            with a.http() as ha, b.http() as hb:
                for j in range(10):
                    for i in range(100):
                        h = ha if (i + j) % 2 else hb
                        accepted(h.request("POST", "/push/load.s%d" % i, b"%d:%d" % (i, j)))
            got = recv_all([c for c in clients], 10, timeout=15)
            for i, c in enumerate(clients):
                want = [b"%d:%d" % (i, j) for j in range(10)]
                check_eq([p for _, p in got[c]], want, "session %d" % i)
            for c in clients[:5]:
                check(c.nothing_within(0.05), "duplicate delivery")
        finally:
            for c in clients:
                c.close_socket()
        wait_for(lambda: stream_state(n)[1] == 0, 3, what="every message acked")


@test("two sockets of one session: each message to exactly one of them")
def _():
    n = shared_nats()
    with gw(n) as a, gw(n) as b:
        with a.ws("/ws/tabs.s1") as w1, b.ws("/ws/tabs.s1") as w2:
            with a.http() as h:
                for i in range(40):
                    accepted(h.request("POST", "/push/tabs.s1", b"t%02d" % i))
            got = recv_all([w1, w2], 40, timeout=1.5)
            p1 = [p for _, p in got[w1]]
            p2 = [p for _, p in got[w2]]
            check_eq(sorted(p1 + p2), [b"t%02d" % i for i in range(40)], "union, no duplicate")
            check(p1 == sorted(p1) and p2 == sorted(p2), "per-socket order")
            note("split %d/%d" % (len(p1), len(p2)))


@test("session keys and topics with wildcards or empty tokens never reach a subject")
def _():
    n = shared_nats()
    spy = Spy(n, "ws.>", 1, seconds=2)
    try:
        with gw(n) as srv:
            for key in ["a.*.b", "a..b", ">", "a.>", ".a", "a.", "a%20b", "*"]:
                check_json_error(push(srv.port, key, b"x"), 400, "push %r" % key)
                check_json_error(publish(srv.port, key, b"x"), 400, "publish %r" % key)
                try:
                    srv.ws("/ws/" + key).close_socket()
                    raise AssertionError("upgrade %r accepted" % key)
                except HandshakeError as e:
                    check_eq(e.response.status if e.response else None, 400, "upgrade %r" % key)
            lines, rc = spy.lines()
    finally:
        spy.kill()
    check_eq(rc, 2, "spy exit status (2 = saw nothing)")
    check_eq(lines, [], "messages published anywhere")


@test("a 128-byte key with '_' and '.' (hashed consumer name) works; so does its neighbour")
def _():
    n = shared_nats()
    long_key = ("a_b." * 32)[:127] + "z"
    twin = long_key[:-1] + "y"
    with gw(n) as srv:
        with srv.ws("/ws/" + long_key) as ws, srv.ws("/ws/" + twin) as ws2:
            accepted(push(srv.port, long_key, b"long"))
            accepted(push(srv.port, twin, b"twin"))
            check_eq(ws.recv_message(), (OP_TEXT, b"long"), "long key")
            check_eq(ws2.recv_message(), (OP_TEXT, b"twin"), "its neighbour")


# --- faults ---------------------------------------------------------------------------

@test("client drops mid-stream: the unacked rest arrives on reconnect, in order", timeout=40)
def _():
    n = shared_nats()
    total, size = 300, 32 * 1024
    body = lambda i: (b"%04d" % i) + b"." * (size - 4)  # noqa: E731
    with gw(n, websocket_max_inflight="8") as srv:
        with srv.http() as h:
            for i in range(total):
                accepted(h.request("POST", "/push/drop.s1", body(i)))
        ws = srv.ws("/ws/drop.s1", rcvbuf=4096)
        first = [d[:4] for d in recv_n(ws, 5)]
        check_eq(first, [b"%04d" % i for i in range(5)], "first messages")
        time.sleep(0.5)  # the socket is full now: the gateway holds the next 8, unacked
        ws.close_socket()
        # Every message the gateway had not written was NAKed at once and stays stored.
        time.sleep(0.3)
        left = stream_state(n)[1]
        check(0 < left < total - 5, "stored after the drop: %d" % left)
        with srv.ws("/ws/drop.s1") as ws2:
            rest = [d[:4] for d in recv_n(ws2, left, timeout=10)]
            check(ws2.nothing_within(0.3), "more than the stored rest arrived")
        check_eq(rest, [b"%04d" % i for i in range(total - left, total)],
                 "the rest, in order, ending with the last message")
        note("written before the drop: %d, redelivered: %d" % (total - left, left))


@test("kill -9 the gateway mid-stream: nothing lost after restart", timeout=40)
def _():
    n = shared_nats()
    total = 400
    a = gw(n, nats_ack_wait="1s").start()
    with a.http() as h:
        for i in range(total):
            accepted(h.request("POST", "/push/kill.s1", b"k%04d" % i))
    ws = a.ws("/ws/kill.s1", rcvbuf=4096)
    got = [p for p in recv_n(ws, 20)]
    a.proc.kill()  # SIGKILL: no drain, no NAK
    a.proc.wait(5)
    while True:  # whatever was written before the kill is readable until EOF
        try:
            got.append(ws.recv_message(2)[1])
        except (Closed, TestTimeout, OSError):
            break
    ws.close_socket()
    before = len(got)
    with gw(n, nats_ack_wait="1s") as b:
        with b.ws("/ws/kill.s1") as ws2:
            deadline = time.monotonic() + 15
            while len(set(got)) < total and time.monotonic() < deadline:
                try:
                    got.append(ws2.recv_message(1)[1])
                except TestTimeout:
                    pass
    want = {b"k%04d" % i for i in range(total)}
    check_eq(sorted(want - set(got))[:10], [], "lost messages (first 10)")
    dups = len(got) - len(set(got))
    check(dups <= 64, "%d duplicates (at most the unacked window expected)" % dups)
    note("before kill: %d, after restart: %d, duplicates: %d" % (before, len(got) - before, dups))


@test("a session on two nodes: what the other node's stuck socket (then the node itself) "
      "holds reaches the live socket without a reconnect", timeout=60)
def _():
    n = shared_nats()
    total, size = 200, 64 * 1024  # A's share outgrows the kernel's socket buffers
    with gw(n, nats_timeout="1s") as b:
        a = gw(n, nats_timeout="1s", websocket_max_inflight="4").start()
        wsa = a.ws("/ws/gap.s1", rcvbuf=4096)  # never read until A is dead
        with b.ws("/ws/gap.s1") as wsb:
            with b.http() as h:
                for i in range(total):
                    accepted(h.request("POST", "/push/gap.s1", b"%04d" % i + b"." * size))
            got_b = []
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                try:
                    got_b.append(wsb.recv_message(0.5)[1][:4])
                except TestTimeout:
                    pass
            a.proc.kill()  # kill -9: its unwritten messages stay in the stream
            a.proc.wait(5)
            got_a = []
            while True:  # what A wrote before it died is readable until EOF
                try:
                    got_a.append(wsa.recv_message(2)[1][:4])
                except (Closed, TestTimeout, OSError):
                    break
            wsa.close_socket()
            want = {b"%04d" % i for i in range(total)}
            deadline = time.monotonic() + 20
            while set(got_a) | set(got_b) != want and time.monotonic() < deadline:
                try:
                    got_b.append(wsb.recv_message(0.5)[1][:4])
                except TestTimeout:
                    pass
            check_eq(sorted(want - set(got_a) - set(got_b))[:10], [],
                     "never delivered (first 10); A wrote %d, B got %d" % (len(got_a), len(got_b)))
            check("event=nats_gap_rescued" in b.log_text(), "no rescue logged:\n" + b.log_tail())
            note("A wrote %d, B got %d (%d duplicates)"
                 % (len(got_a), len(got_b), len(got_a) + len(got_b) - total))


@test("a slow reader of large messages is not closed: its messages wait in the stream",
      timeout=60)
def _():
    n = shared_nats()
    count, size = 40, 256 * 1024
    with gw(n) as srv:
        ws = srv.ws("/ws/bigslow.s1", rcvbuf=8192)
        with srv.http() as h:
            for i in range(count):
                accepted(h.request("POST", "/push/bigslow.s1", b"%04d" % i + b"." * size))
        got = []
        while len(got) < count:
            time.sleep(0.02)  # a slow reader
            got.append(ws.recv_message(10)[1][:4])
        check_eq(got, [b"%04d" % i for i in range(count)], "all, in order")
        check_eq(int(metric(srv.port, "wsgate_slow_client_closes_total")), 0, "slow closes")
        ws.close()


@test("churn: 20 sessions reconnecting at random across two nodes while 2000 messages "
      "are pushed: none lost, every connection in order, no duplicate after a clean close",
      timeout=90)
def _():
    import random
    n = shared_nats()
    nsess, total = 20, 2000
    rnd = random.Random(4)  # fixed seed: a failure can be replayed
    with gw(n, nats_timeout="1s") as a, gw(n, nats_timeout="1s") as b:
        nodes = [a, b]
        got = {k: [] for k in range(nsess)}
        conns = {k: [] for k in range(nsess)}  # (how it ended, [messages]) per connection
        errors = []
        done = threading.Event()

        def client(k):
            r = random.Random(rnd.random())
            want = total // nsess
            while len(set(got[k])) < want and not done.is_set():
                node = nodes[r.randrange(2)]
                conn = []
                try:
                    ws = node.ws("/ws/churn.s%d" % k)
                except Exception as e:  # noqa: BLE001 — a refused upgrade is retried
                    time.sleep(0.05)
                    continue
                end = time.monotonic() + r.uniform(0.02, 0.3)
                try:
                    while time.monotonic() < end:
                        try:
                            conn.append(int(ws.recv_message(0.05)[1]))
                        except TestTimeout:
                            pass
                except (Closed, OSError) as e:
                    errors.append("session %d: %r" % (k, e))
                # Either a close handshake, or a client that just goes (FIN, no close
                # frame). Both read on to the end, so every frame the gateway wrote (and
                # so removed from the stream) is seen: what is missing was lost.
                abrupt = r.random() < 0.5
                try:
                    if abrupt:
                        ws.sock.shutdown(socket.SHUT_WR)
                    else:
                        ws.send_close(1000)
                    while True:
                        f = ws.recv_frame(5)
                        if f.opcode == OP_CLOSE:
                            break
                        if f.opcode in (OP_TEXT, OP_BINARY):
                            conn.append(int(f.payload))
                except (Closed, OSError):
                    pass
                except TestTimeout:
                    errors.append("session %d: no end after the close" % k)
                ws.close_socket()
                if conn != sorted(conn) or len(conn) != len(set(conn)):
                    errors.append("session %d: one connection out of order: %s" % (k, conn))
                got[k].extend(conn)
                conns[k].append(("abrupt" if abrupt else "clean", conn))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(nsess)]
        for t in threads:
            t.start()
        try:
            with a.http() as ha, b.http() as hb:
                for i in range(total):
                    k = i % nsess
                    accepted((ha, hb)[i % 2].request("POST", "/push/churn.s%d" % k,
                                                     b"%d" % (i // nsess)))
            deadline = time.monotonic() + 40
            while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            done.set()
            for t in threads:
                t.join(10)
        check_eq(errors[:5], [], "client errors (first 5)")
        lost = {k: sorted(set(range(total // nsess)) - set(v))[:5] for k, v in got.items()
                if set(range(total // nsess)) - set(v)}
        check_eq(lost, {}, "lost messages per session (first 5 each)")
        # A duplicate is charged to the connection that first got the message, by how that
        # connection ended. After a close handshake the gateway answers the close only
        # once the server confirmed the acks of what it wrote (settle), so the next
        # connection cannot get those again. A client that just goes (FIN, no close
        # frame) may see again what was written just before (at-least-once).
        first = {"clean": 0, "abrupt": 0}
        dups = {"clean": 0, "abrupt": 0}
        for k in range(nsess):
            seen = {}
            for how, conn in conns[k]:
                for m in conn:
                    if m in seen:
                        dups[seen[m]] += 1
                    else:
                        seen[m] = how
                        first[how] += 1
        ncl = sum(1 for k in conns for how, _ in conns[k] if how == "clean")
        nab = sum(1 for k in conns for how, _ in conns[k] if how == "abrupt")
        note("clean closes: %d, duplicates %d per 1000 messages they got (%d of %d); abrupt "
             "closes: %d, duplicates %.1f per 1000 (%d of %d)"
             % (ncl, dups["clean"] * 1000 // max(1, first["clean"]), dups["clean"],
                first["clean"], nab, dups["abrupt"] * 1000.0 / max(1, first["abrupt"]),
                dups["abrupt"], first["abrupt"]))
        check_eq(dups["clean"], 0, "duplicates of messages first written to a connection "
                 "that ended with a close handshake")


@test("SIGTERM drains: the unacked rest goes back at once (no ack_wait) to another node",
      timeout=40)
def _():
    n = shared_nats()
    total, size = 200, 32 * 1024
    with gw(n, websocket_max_inflight="8") as b:
        a = gw(n, websocket_max_inflight="8").start()
        with a.http() as h:
            for i in range(total):
                accepted(h.request("POST", "/push/term.s1", b"%04d" % i + b"." * size))
        ws = a.ws("/ws/term.s1", rcvbuf=4096)
        got = [d[:4] for d in recv_n(ws, 5)]
        time.sleep(0.3)
        t0 = time.monotonic()
        a.signal(signal.SIGTERM)
        while True:  # read what was written, up to the 1001 close
            try:
                got.append(ws.recv_message(3)[1][:4])
            except (Closed, TestTimeout, OSError):
                break
        ws.close_socket()
        check_eq(a.wait(5), 0, "exit status after SIGTERM")
        with b.ws("/ws/term.s1") as ws2:
            while len(set(got)) < total:
                got.append(ws2.recv_message(3)[1][:4])
            check(ws2.nothing_within(0.2), "more after the last message")
        dt = time.monotonic() - t0
        # At-least-once: frames being written when the socket closed were not confirmed,
        # so they go back too and may arrive twice; never out of order, never missing.
        uniq = [x for i, x in enumerate(got) if x not in got[:i]]
        check_eq(uniq, [b"%04d" % i for i in range(total)], "all, in order")
        check(len(got) - total <= 8, "%d duplicates, over the window" % (len(got) - total))
        check(dt < 10, "took %.1fs: the rest waited for ack_wait (30s)" % dt)
        note("stop to last message on B: %.2fs, duplicates %d" % (dt, len(got) - total))


@test("nats-server restart: clients stay, push 503 while down, delivery resumes, "
      "no 202 message lost", timeout=60)
def _():
    with Nats() as n:
        with gw(n) as srv:
            with srv.ws("/ws/rs.s1") as ws:
                accepted(push(srv.port, "rs.s1", b"before"))
                check_eq(ws.recv_message(), (OP_TEXT, b"before"), "before the restart")
                for i in range(5):  # stored for an offline session
                    accepted(push(srv.port, "rs.off", b"off%d" % i))
                n.stop(signal.SIGKILL)
                wait_for(lambda: http_request(srv.port, "GET", "/readyz").status == 503, 5,
                         what="/readyz 503 while nats-server is down")
                t0 = time.monotonic()
                r = push(srv.port, "rs.s1", b"lost?")
                check_json_error(r, 503, "push while down")
                check(time.monotonic() - t0 < 0.5, "push took %.2fs to fail"
                      % (time.monotonic() - t0))
                check(r.header("retry-after") is not None, "503 without Retry-After")
                try:
                    srv.ws("/ws/rs.new").close_socket()
                    raise AssertionError("upgrade accepted while nats-server is down")
                except HandshakeError as e:
                    check_eq(e.response.status if e.response else None, 503, "upgrade")
                check(ws.nothing_within(0.5), "message while down")  # still connected
                n.start()
                wait_for(lambda: http_request(srv.port, "GET", "/readyz").status == 200, 10,
                         what="/readyz 200 after the restart")
                accepted(push(srv.port, "rs.s1", b"after"))
                got = [ws.recv_message(5)[1]]
                if got[0] == b"before":
                    # Its ack's removal was not yet on disk when nats-server got SIGKILL
                    # (at-least-once: a duplicate, never a loss).
                    got.append(ws.recv_message(5)[1])
                    note("\"before\" was redelivered after the kill -9")
                check_eq(got[-1], b"after", "same socket, after restart")
            with srv.ws("/ws/rs.off") as ws:
                check_eq(recv_n(ws, 5), [b"off%d" % i for i in range(5)],
                         "202-acknowledged messages survived the restart (file store)")


class Reader:
    """Reads data messages of one WebSocket in a thread until stop(); .got: payloads."""

    def __init__(self, ws):
        self.ws, self.got, self._stop = ws, [], []
        self.t = threading.Thread(target=self._run)
        self.t.start()

    def _run(self):
        while not self._stop:
            try:
                self.got.append(self.ws.recv_message(0.1)[1])
            except TestTimeout:
                pass
            except (Closed, OSError):
                return

    def wait_for(self, payload, timeout=10):
        deadline = time.monotonic() + timeout
        while payload not in self.got and time.monotonic() < deadline:
            time.sleep(0.02)
        return payload in self.got

    def stop(self):
        self._stop.append(1)
        self.t.join(10)
        return self.got


@test("a push answered 503 because nats-server died is never delivered later (nothing "
      "replayed from nats.c's reconnect buffer)", timeout=60)
def _():
    with Nats() as n:
        with gw(n) as srv:
            ws = srv.ws("/ws/k503.s1")
            accepted(push(srv.port, "k503.s1", b"first"))
            check_eq(ws.recv_message(), (OP_TEXT, b"first"), "before the kill")
            rd = Reader(ws)
            refused = set()
            try:
                for cycle in range(3):  # the race below goes the bad way about 2 times in 3
                    # Pushes the gateway reads only after nats-server died: the gateway is
                    # stopped while they are sent and while the server is killed, so its
                    # loop and nats.c's reader race when it resumes. None can be stored.
                    conns = [srv.http() for _ in range(4)]
                    srv.signal(signal.SIGSTOP)
                    try:
                        for c, h in enumerate(conns):
                            h.send(b"".join(build_request(
                                "POST", "/push/k503.s1", b"z.%d.%d.%d" % (cycle, c, i),
                                port=srv.port) for i in range(64)))
                        n.proc.kill()
                        n.proc.wait(5)
                        n.proc = None
                    finally:
                        srv.signal(signal.SIGCONT)
                    for c, h in enumerate(conns):
                        for i in range(64):
                            check_eq(h.read_response(5).status, 503, "push after the kill")
                            refused.add(b"z.%d.%d.%d" % (cycle, c, i))
                        h.close()
                    with srv.http() as h:  # and once the gateway knows: 503 at once
                        for i in range(20):
                            check_eq(h.request("POST", "/push/k503.s1",
                                               b"late.%d.%d" % (cycle, i)).status, 503,
                                     "push while down")
                            refused.add(b"late.%d.%d" % (cycle, i))
                    n.start()
                    wait_for(lambda: http_request(srv.port, "GET", "/readyz").status == 200,
                             10, what="/readyz 200 after the restart")
                    accepted(push(srv.port, "k503.s1", b"last%d" % cycle))
                    check(rd.wait_for(b"last%d" % cycle),
                          "the push after restart %d did not arrive" % cycle)
                time.sleep(0.2)
            finally:
                got = rd.stop()
                ws.close_socket()
            bad = [g for g in got if g in refused]
            check_eq(bad[:5], [], "pushes answered 503, then delivered after the restart "
                     "(%d of them)" % len(bad))
            check_eq(got, [b"last0", b"last1", b"last2"], "messages after the kills")


@test("nats-server down at start: not ready, then ready and delivering once it appears",
      timeout=30)
def _():
    import socket as _s
    sock = _s.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    n = Nats()
    n.port = port
    try:
        with gw(n) as srv:
            check_eq(http_request(srv.port, "GET", "/readyz").status, 503, "/readyz without server")
            check_json_error(push(srv.port, "late.s1", b"x"), 503, "push without server")
            n.start()
            wait_for(lambda: http_request(srv.port, "GET", "/readyz").status == 200, 10,
                     what="/readyz 200 once nats-server runs")
            with srv.ws("/ws/late.s1") as ws:
                accepted(push(srv.port, "late.s1", b"late"))
                check_eq(ws.recv_message(), (OP_TEXT, b"late"), "delivery")
    finally:
        n.stop()


@test("nats-server stops reading (SIGSTOP): the loop stalls at most [nats] timeout, "
      "then 503 fast; SIGCONT: resumes", timeout=40)
def _():
    with Nats() as n:
        with gw(n, nats_timeout="1s") as srv:
            with srv.ws("/ws/stall.s1") as ws:
                n.proc.send_signal(signal.SIGSTOP)
                stop = []

                def flood(t):
                    body = b"x" * 4096
                    while not stop:
                        try:
                            with Http(srv.port, timeout=5) as h:
                                for _ in range(100):
                                    h.send(build_request("POST", "/push/stall.f%d" % t, body,
                                                         port=srv.port))
                        except Exception:  # noqa: BLE001 — 503s and resets are expected
                            pass
                threads = [threading.Thread(target=flood, args=(t,)) for t in range(3)]
                # The probe's connection is opened first: the flood's connections, each
                # held until its pushes are answered, can reach max_http_connections
                # (refused: seen under ASan on a loaded box), and this measures the loop,
                # not the accept path.
                probe = Http(srv.port, timeout=10)
                try:
                    for t in threads:
                        t.start()
                    # the server stays stopped well past the bound, so an uncut stall fails
                    bound = 2.5 * (SAN_SLOWDOWN if sanitized() else 1)
                    worst, t0 = 0.0, time.monotonic()
                    while time.monotonic() - t0 < bound + 3:
                        a = time.monotonic()
                        check_eq(probe.request("GET", "/healthz").status, 200, "/healthz")
                        worst = max(worst, time.monotonic() - a)
                        time.sleep(0.05)
                finally:
                    stop.append(1)
                    for t in threads:
                        t.join(10)
                    probe.close()
                    n.proc.send_signal(signal.SIGCONT)
                note("worst /healthz latency while stopped: %.2fs" % worst)
                # The NATS socket is written on the loop without blocking: 0.09-0.14 s
                # measured (README, NATS faults). The bound adds room for a loaded box,
                # doubled for the ASan build: a stall that is not cut at the timeout (the
                # whole SIGSTOP, bound + 3 s) still fails.
                check(worst < bound, "/healthz took %.2fs (loop stalled past the timeout, "
                      "bound %.1fs)" % (worst, bound))
                wait_for(lambda: http_request(srv.port, "GET", "/readyz").status == 200, 10,
                         what="/readyz 200 after SIGCONT")
                accepted(push(srv.port, "stall.s1", b"resumed"))
                check_eq(ws.recv_message(5), (OP_TEXT, b"resumed"), "same socket after SIGCONT")


@test("a server that answers PINGs but replies slowly is not taken as lost: pushes past "
      "[nats] timeout get 503, /readyz stays 200", timeout=40)
def _():
    n = shared_nats()
    with SlowReplies(n.port) as px:
        with gw(types.SimpleNamespace(url=px.url), nats_timeout="1s") as srv:
            with srv.ws("/ws/slowrep.s1") as ws:
                accepted(push(srv.port, "slowrep.s1", b"before"))
                check_eq(ws.recv_message(), (OP_TEXT, b"before"), "before the slowdown")
                px.delay = 2.5  # longer than the timeout; PONGs still pass
                t0 = time.monotonic()
                r = push(srv.port, "slowrep.s1", b"slow")
                check_eq(r.status, 503, "a push whose ack is late (unknown outcome)")
                check(time.monotonic() - t0 < 2.0, "the 503 came after the timeout, not the ack")
                time.sleep(1.5)
                check("event=nats_timeout" not in srv.log_text(),
                      "taken as lost while PONGs came:\n" + srv.log_tail())
                check_eq(http_request(srv.port, "GET", "/readyz").status, 200,
                         "/readyz while the server is slow but alive")
                px.delay = 0.0
                time.sleep(2.0)  # what was held comes out
                accepted(push(srv.port, "slowrep.s1", b"after"))
                got = []
                while b"after" not in got:
                    got.append(ws.recv_message(5)[1])
                # the late push was stored (its 503 said: unknown), so it may come first
                check(set(got) <= {b"slow", b"after"}, "got %s" % got)


@test("silent partition (nats-server SIGSTOPped): /readyz 503 within ~[nats] timeout, then "
      "pushes 503 at once and are never delivered; SIGCONT: reconnects, resumes", timeout=60)
def _():
    with Nats() as n:
        with gw(n, nats_timeout="1s") as srv, gw(n, nats_timeout="1s") as idle:
            ws = srv.ws("/ws/part.s1")
            accepted(push(srv.port, "part.s1", b"before"))
            check_eq(ws.recv_message(), (OP_TEXT, b"before"), "before the stop")
            rd = Reader(ws)
            refused, unknown = set(), []
            try:
                n.proc.send_signal(signal.SIGSTOP)
                t0 = time.monotonic()
                try:
                    # this push owes a reply that cannot come: 503 after the timeout, its
                    # outcome unknown (the server may store it when it wakes up)
                    r = push(srv.port, "part.s1", b"unknown")
                    check_json_error(r, 503, "push while stopped")
                    unknown.append(b"unknown")
                    wait_for(lambda: http_request(srv.port, "GET", "/readyz").status == 503,
                             3.0 - (time.monotonic() - t0), interval=0.05,
                             what="/readyz 503 within 3 s of the stop (node owing a reply)")
                    t_busy = time.monotonic() - t0
                    for i in range(20):  # known down: refused before anything is sent
                        a = time.monotonic()
                        r = push(srv.port, "part.s1", b"refused.%d" % i)
                        check_json_error(r, 503, "push after the loss was noticed")
                        check(time.monotonic() - a < 0.5, "push took %.2fs to fail"
                              % (time.monotonic() - a))
                        refused.add(b"refused.%d" % i)
                    wait_for(lambda: http_request(idle.port, "GET", "/readyz").status == 503,
                             4.0 - (time.monotonic() - t0), interval=0.05,
                             what="/readyz 503 within 4 s of the stop on an idle node")
                    t_idle = time.monotonic() - t0
                    time.sleep(max(0.0, 4.0 - (time.monotonic() - t0)))
                finally:
                    n.proc.send_signal(signal.SIGCONT)
                for s_ in (srv, idle):
                    wait_for(lambda: http_request(s_.port, "GET", "/readyz").status == 200, 15,
                             what="/readyz 200 after SIGCONT")
                accepted(push(srv.port, "part.s1", b"after"))
                check(rd.wait_for(b"after"), "the push after SIGCONT did not arrive")
                time.sleep(0.3)
            finally:
                got = rd.stop()
                ws.close_socket()
            note("/readyz 503 after %.2fs (owing a reply), %.2fs (idle node); the push in "
                 "flight at the stop was %sdelivered" % (t_busy, t_idle,
                                                          "" if b"unknown" in got else "not "))
            check_eq([g for g in got if g in refused][:5], [],
                     "pushes answered 503 after the loss was noticed, delivered anyway")
            check_eq([g for g in got if g not in unknown], [b"after"], "messages after the stop")
            check("event=nats_timeout" in srv.log_text(), "no nats_timeout logged")


@test("a publisher flooding ws.topic.T and ws.deliver.S faster than the loop: gateway "
      "memory stays bounded, every stored message still arrives in order", timeout=60)
def _():
    with Nats() as n:
        with gw(n) as srv:
            # 100 sockets on the topic make each broadcast 100 frames for the loop, so a
            # publisher at 200k messages/s outruns it, on a quiet box too (not nats.c's
            # reader, nor the server: flat out, the server's queue to the gateway delays the
            # push acks past the timeout on a 2-core box); a raw reader drains the sockets
            socks = [srv.ws("/ws/fl.t%d?topics=fl.T" % i) for i in range(100)]
            ws = srv.ws("/ws/fl.k")
            rd = Reader(ws)
            stop = []

            def drain():
                buf = bytearray(1 << 20)
                sel = selectors.DefaultSelector()
                for w in socks:
                    w.sock.setblocking(False)
                    sel.register(w.sock, selectors.EVENT_READ)
                while not stop:
                    for key, _ in sel.select(0.1):
                        try:
                            if key.fileobj.recv_into(buf) == 0:
                                sel.unregister(key.fileobj)
                        except BlockingIOError:
                            pass
                        except OSError:
                            sel.unregister(key.fileobj)

            dr = threading.Thread(target=drain)
            dr.start()
            base = srv.hwm_kb()
            try:
                floods = [subprocess.Popen([NATS_PUB, "-s", n.url, "flood", "3", "1", "200000",
                                            "ws.topic.fl.T", "ws.deliver.fl.k"],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
                statuses = []

                def pusher():  # stored messages while it floods
                    try:
                        with srv.http(timeout=20) as h:
                            for i in range(100):
                                statuses.append(h.request("POST", "/push/fl.k",
                                                          b"k%03d" % i).status)
                    except Exception as e:  # noqa: BLE001 — reported below
                        statuses.append(repr(e))

                time.sleep(0.5)
                pt = threading.Thread(target=pusher)
                pt.start()
                sent = 0
                for f in floods:
                    out, err = f.communicate(timeout=20)
                    check(f.returncode == 0, "flood: %s" % err.decode())
                    sent += int(out.split(b"=")[1])
                grown = (srv.hwm_kb() - base) // 1024
                # 16-17 MB measured without ASan (unbounded: 200+ MB). ASan's redzones,
                # quarantine and shadow make the same flood read 61-91 MB (2026-12-06), so
                # its bound is wider; an unbounded queue still reads far above either.
                limit = 150 if sanitized() else 40
                check(grown < limit, "gateway peak RSS grew by %d MB during the flood (bound %d)"
                      % (grown, limit))
                pt.join(30)
                ok = [b"k%03d" % i for i, st in enumerate(statuses) if st == 202]
                check(len(ok) > 0 and set(statuses) <= {202, 503},
                      "pushes during the flood: %s" % statuses)
                deadline = time.monotonic() + 15
                while not set(ok) <= set(rd.got) and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.2)
            finally:
                stop.append(1)
                dr.join(10)
                got = rd.stop()
                for w in socks + [ws]:
                    w.close_socket()
            note("%d messages flooded; gateway peak RSS +%d MB; %s" % (
                sent, grown, [l.split("level=warn ")[1] for l in srv.log_text().split("\n")
                              if "event=nats_overload" in l][:1]))
            # every accepted push arrives, once, in order (a 503 under the flood means its
            # ack was late: unknown, so it may arrive too)
            check_eq(sorted(set(ok) - set(got)), [], "accepted pushes never delivered")
            check_eq(got, sorted(set(got)), "fl.k: order and duplicates")
            check(set(got) <= {b"k%03d" % i for i in range(100)}, "fl.k got %s" % got)
            note("pushes accepted: %d of 100" % len(ok))
            # (the RSS bound, checked above: 4 x max(max_message_size, max_send_buffer)
            # = 4 MiB of queued messages, plus nats.c's and the sockets' buffers;
            # unbounded, the gateway grew by 200+ MB in this test)
            check("event=nats_overload" in srv.log_text(), "no overload logged")
            check(metric(srv.port, "wsgate_messages_dropped_total") > 0, "no drop counted")


@test("one consumer whatever the number of sessions; an idle socket keeps receiving; "
      "sessions that left leave nothing in the server", timeout=40)
def _():
    with Nats() as n:
        with gw(n) as srv:
            socks = [srv.ws("/ws/idle.s%d" % i) for i in range(50)]
            try:
                check_eq(stream_state(n), (1, 0), "(consumers, msgs) with 50 sessions online")
                check(socks[0].nothing_within(3.0), "message while idle")
                with srv.http() as h:
                    for i in range(50):
                        accepted(h.request("POST", "/push/idle.s%d" % i, b"m%d" % i))
                for i, ws in enumerate(socks):
                    check_eq(ws.recv_message(), (OP_TEXT, b"m%d" % i), "socket %d" % i)
                wait_for(lambda: stream_state(n) == (1, 0), 5, interval=0.1,
                         what="written messages to leave the stream")
            finally:
                for ws in socks:
                    ws.close()
            accepted(push(srv.port, "idle.s1", b"offline"))
            check_eq(stream_state(n), (1, 1), "(consumers, msgs) with one stored message")
            with srv.ws("/ws/idle.s1") as ws:
                check_eq(ws.recv_message(), (OP_TEXT, b"offline"), "stored while offline")
                wait_for(lambda: stream_state(n) == (1, 0), 5, interval=0.1,
                         what="the stored message to leave once written")


@test("consumer_pull = always (what 2.11+ servers need): written messages still leave the "
      "stream; a drop mid-stream still redelivers the rest", timeout=40)
def _():
    with Nats() as n:
        with gw(n, nats_consumer_pull="always", websocket_max_inflight="8") as srv:
            check("event=nats_acks_ahead" not in srv.log_text(), "probed although told to pull")
            with srv.http() as h:
                for i in range(200):
                    accepted(h.request("POST", "/push/pull.s%d" % (i % 10), b"%04d" % i))
            for k in range(10):
                with srv.ws("/ws/pull.s%d" % k) as ws:
                    got = recv_n(ws, 20)
                    check_eq(got, [b"%04d" % i for i in range(k, 200, 10)], "session %d" % k)
            wait_for(lambda: stream_state(n) == (1, 0), 5, interval=0.1,
                     what="written messages to leave the stream")
            total, size = 300, 32 * 1024
            with srv.http() as h:
                for i in range(total):
                    accepted(h.request("POST", "/push/pull.drop", b"%04d" % i + b"." * size))
            ws = srv.ws("/ws/pull.drop", rcvbuf=4096)
            first = [d[:4] for d in recv_n(ws, 5)]
            check_eq(first, [b"%04d" % i for i in range(5)], "first messages")
            time.sleep(0.5)  # the socket is full now: the gateway holds the next ones, unacked
            ws.close_socket()
            # What was written before the drop (acked after the write, the contract) may
            # sit unread in the dropped socket's buffers: lost with it, like test 12. The
            # unwritten rest stays stored and arrives, in order, and nothing more.
            time.sleep(0.3)
            left = stream_state(n)[1]
            check(0 < left < total - 5, "stored after the drop: %d" % left)
            with srv.ws("/ws/pull.drop") as ws2:
                rest = [d[:4] for d in recv_n(ws2, left, timeout=10)]
                check(ws2.nothing_within(0.3), "more than the stored rest arrived")
            check_eq(rest, [b"%04d" % i for i in range(total - left, total)],
                     "the rest, in order, ending with the last message")
            wait_for(lambda: stream_state(n) == (1, 0), 5, interval=0.1,
                     what="the stream to be empty")
            check("event=nats_acker_pull_refused" not in srv.log_text(), srv.log_tail())


try:
    run()
finally:
    for _n in _SHARED:
        _n.stop()
