#!/usr/bin/python3
"""test_kafka.py — the kafka backend against librdkafka's mock cluster running in a process of
its own ($WSGATE_TOOLS/kafka_mock, never inside the gateway) and several wsgate processes
(DESIGN.md §3, §4; the Kafka issue): records on ws.recv with key S reach every socket of S on
every node (kcat and POST /push), upstream frames on ws.send, broadcasts on ws.topic across
nodes, 1000 records over 100 sessions in order, offsets committed only after the frames were
written (kill -9 and restart of a gateway), [broker] ttl on replays, broker loss and return on
the same address, a full producer buffer, and the fixed thread count / idle loop.

Does NOT test a real Kafka cluster (none in Debian): the mock has no fetch long-poll (the
gateway runs with fetch_wait = 10ms here), no timestamp lookups and keeps no data across a
restart (an empty cluster comes back: see the broker test)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403

TOOLS = os.environ.get("WSGATE_TOOLS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "tools")
MOCK = os.path.join(TOOLS, "kafka_mock")
KCAT = shutil.which("kcat") or "/usr/bin/kcat"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class KafkaMock:
    """kafka_mock in its own process. port=None: random; a port: -p (same address after a
    restart). Topics ws.recv:4, ws.send:4, ws.topic:2 are created up front."""

    def __init__(self, port=None):
        self.port = port
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix="kmock-", dir=LOGDIR)
        self.bootstrap = None

    def start(self, timeout=10.0):
        bfile = os.path.join(self.dir, "bootstrap")
        if os.path.exists(bfile):
            os.unlink(bfile)
        args = [MOCK, "-f", bfile, "-t", "ws.recv:4", "-t", "ws.send:4", "-t", "ws.topic:2"]
        if self.port:
            args[1:1] = ["-p", str(self.port)]
        check(os.access(MOCK, os.X_OK), "%s is not built (make build/tools/kafka_mock)" % MOCK)
        self.log = open(os.path.join(self.dir, "mock.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(bfile) or self.proc.poll() is not None, timeout,
                 what="kafka_mock bootstrap file")
        check(self.proc.poll() is None, "kafka_mock exited with %s" % self.proc.returncode)
        self.bootstrap = open(bfile).read().strip()
        self.port = int(self.bootstrap.split(",")[0].rsplit(":", 1)[1])
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(10)
        self.proc = None

    def kill9(self):
        self.proc.kill()
        self.proc.wait(5)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        try:
            self.stop()
        except Exception:  # noqa: BLE001
            self.proc.kill()
        return False

    # kcat, exactly as a service would run it (README) ---------------------------
    def produce(self, topic, data, key=None, delim=None):
        """kcat -P: one record (key, data bytes), or with delim every line "KEY<delim>VALUE"."""
        args = [KCAT, "-b", self.bootstrap, "-P", "-t", topic]
        if key is not None:
            args += ["-k", key]
        if delim is not None:
            args += ["-K", delim]
        r = subprocess.run(args, input=data, capture_output=True, timeout=30)
        check(r.returncode == 0, "kcat -P failed: %r" % r.stderr[-500:])

    def consume(self, topic, fmt="%k %s\\n", count=None, timeout=10):
        """kcat -C from the beginning to the current end; stdout bytes."""
        args = [KCAT, "-b", self.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
                "-f", fmt]
        if count is not None:
            args += ["-c", str(count)]
        r = subprocess.run(args, capture_output=True, timeout=timeout)
        check(r.returncode == 0, "kcat -C failed: %r" % r.stderr[-500:])
        return r.stdout


def gateway(mock, node, env=None, bootstrap=None):
    e = {
        "WSGATE_BROKER_TYPE": "kafka",
        "WSGATE_KAFKA_BROKERS": bootstrap or mock.bootstrap,
        "WSGATE_KAFKA_NODE": node,
        "WSGATE_KAFKA_FETCH_WAIT": "10ms",  # the mock waits out every empty fetch
        "WSGATE_KAFKA_TIMEOUT": "2s",
        "WSGATE_KAFKA_REPLAY_DELAY": "0",
    }
    e.update(env or {})
    return Server(env=e, name="gw-" + node)


def ready(srv):
    try:
        return http_request(srv.port, "GET", "/readyz", timeout=2).status == 200
    except OSError:
        return False


def wait_ready(srv, timeout=10.0):
    wait_for(lambda: ready(srv), timeout, what="/readyz 200 on %s" % srv.log_path)
    return srv


def log_offsets(srv, nth=-1):
    """{partition: offset} from an event=kafka_ready line (the start positions)."""
    lines = [ln for ln in srv.log_text().splitlines() if "event=kafka_ready" in ln]
    check(lines, "no event=kafka_ready in the log")
    field = [f for f in lines[nth].split() if f.startswith("offsets=")][0][8:]
    return {int(p): int(o) for p, o in (x.split(":") for x in field.split(","))}


@test("push and kcat reach every socket of the session on every node, once", timeout=60)
def _():
    with KafkaMock() as mock, gateway(mock, "A") as a, gateway(mock, "B") as b:
        wait_ready(a)
        wait_ready(b)
        with a.ws("/ws/svc1.user42") as w1, b.ws("/ws/svc1.user42") as w2, \
                b.ws("/ws/svc1.user42") as w3, a.ws("/ws/other") as w4:
            accepted(push(a.port, "svc1.user42", b"hello"))
            accepted(push(b.port, "svc1.user42", b"\x00\xff"))
            mock.produce("ws.recv", b"from kcat", key="svc1.user42")
            for ws in (w1, w2, w3):
                got = [ws.recv_message(5) for _ in range(3)]
                check_eq(sorted(got), sorted([(OP_TEXT, b"hello"), (OP_BINARY, b"\x00\xff"),
                                              (OP_TEXT, b"from kcat")]), "on %s" % ws.path)
                check(ws.nothing_within(0.2), "duplicate")
            check(w4.nothing_within(0.1), "a record for another session")
        # what the gateway produced: key = session, on ws.recv
        out = mock.consume("ws.recv", "%k=%s\\n")
        check_eq(out.count(b"svc1.user42=hello\n"), 1, "record produced by POST /push")


@test("README recipes: kcat -P -t ws.recv -k S (a line, a file) reaches the client; "
      "an empty push")
def _():
    with KafkaMock() as mock, gateway(mock, "A") as a:
        wait_ready(a)
        with a.ws("/ws/svc1.user42") as ws:
            sh = lambda cmd: subprocess.run(cmd % {"kcat": KCAT, "b": mock.bootstrap}, shell=True,
                                            capture_output=True, timeout=30).returncode
            check_eq(sh("echo 'hello from kcat' | %(kcat)s -b %(b)s -P -t ws.recv "
                        "-X partitioner=murmur2_random -k svc1.user42"), 0, "kcat exit status")
            check_eq(ws.recv_message(5), (OP_TEXT, b"hello from kcat"), "a line")
            path = os.path.join(mock.dir, "payload.bin")
            with open(path, "wb") as f:
                f.write(b"\x00line1\nline2\xff")
            check_eq(sh("%(kcat)s -b %(b)s -P -t ws.recv -X partitioner=murmur2_random "
                        "-k svc1.user42 " + path), 0, "kcat exit status")
            check_eq(ws.recv_message(5), (OP_BINARY, b"\x00line1\nline2\xff"),
                     "a file: one binary record")
            accepted(push(a.port, "svc1.user42", b""))
            check_eq(ws.recv_message(5), (OP_TEXT, b""), "empty push")


@test("upstream: client frames are produced to ws.send with key S, byte-exact")
def _():
    with KafkaMock() as mock, gateway(mock, "A", env={"WSGATE_WEBSOCKET_UPSTREAM": "on"}) as a:
        wait_ready(a)
        with a.ws("/ws/up1") as ws:
            ws.send_text("h\u00e9llo")
            ws.send_binary(b"\x00\x01\xff")
            want = b"up1|6|" + "h\u00e9llo".encode() + b"\nup1|3|\x00\x01\xff\n"
            wait_for(lambda: mock.consume("ws.send", "%k|%S|%s\\n") == want, 5,
                     what="both frames on ws.send")
        check_eq(metric(a.port, "wsgate_messages_upstream_total"), 2.0, "upstream counter")


@test("broadcast across two nodes: /publish and kcat on ws.topic reach each subscriber once",
      timeout=60)
def _():
    with KafkaMock() as mock, gateway(mock, "A") as a, gateway(mock, "B") as b:
        wait_ready(a)
        wait_ready(b)
        with a.ws("/ws/b1?topics=news,news") as w1, b.ws("/ws/b2?topics=news") as w2, \
                b.ws("/ws/b3?topics=other") as w3:
            accepted(publish(b.port, "news", b"n1"), "publish")
            mock.produce("ws.topic", b"n2", key="news")
            for ws in (w1, w2):
                got = sorted([ws.recv_message(5)[1], ws.recv_message(5)[1]])
                check_eq(got, [b"n1", b"n2"], ws.path)
                check(ws.nothing_within(0.2), "duplicate on %s" % ws.path)
            check(w3.nothing_within(0.1), "broadcast to a non-subscriber")
        check(b"news=n1\n" in mock.consume("ws.topic", "%k=%s\\n"), "record on ws.topic")


@test("1000 records over 100 sessions on two nodes: none lost, each session in order",
      timeout=90)
def _():
    with KafkaMock() as mock, gateway(mock, "A") as a, gateway(mock, "B") as b:
        wait_ready(a)
        wait_ready(b)
        clients = [(a if i < 50 else b).ws("/ws/s%d" % i) for i in range(100)]
        try:
            lines = b"".join(b"s%d:s%d-%d\n" % (i, i, j) for j in range(10) for i in range(100))
            mock.produce("ws.recv", lines, delim=":")
            got = recv_all(clients, 10, timeout=30)
            for i, c in enumerate(clients):
                check_eq([p for _, p in got[c]], [b"s%d-%d" % (i, j) for j in range(10)],
                         "session s%d" % i)
            for c in clients[:5] + clients[50:55]:
                check(c.nothing_within(0.05), "extra message on %s" % c.path)
        finally:
            for c in clients:
                c.close_socket()


@test("the 101 comes only once the node reads ws.recv: a push right after it arrives",
      timeout=60)
def _():
    with KafkaMock() as mock, gateway(mock, "A") as a, gateway(mock, "B") as b:
        wait_ready(a)
        wait_ready(b)
        for i in range(20):
            with a.ws("/ws/race%d?topics=rt%d" % (i, i)) as ws:
                accepted(push(b.port, "race%d" % i, b"p%d" % i))
                accepted(publish(b.port, "rt%d" % i, b"t%d" % i), "publish")
                check_eq(sorted([ws.recv_message(5)[1], ws.recv_message(5)[1]]),
                         [b"p%d" % i, b"t%d" % i], "attempt %d" % i)


@test("no offline buffering: a record for a session not connected anywhere is skipped")
def _():
    with KafkaMock() as mock, gateway(mock, "A") as a:
        wait_ready(a)
        accepted(push(a.port, "nobody", b"lost"))
        time.sleep(0.3)
        with a.ws("/ws/nobody") as ws:
            check(ws.nothing_within(0.3), "an offline record was delivered")
            accepted(push(a.port, "nobody", b"now"))
            check_eq(ws.recv_message(5)[1], b"now", "online message")


@test("graceful restart commits what was written; records produced while stopped are "
      "replayed after replay_delay; those older than [broker] ttl are not", timeout=90)
def _():
    env = {"WSGATE_KAFKA_REPLAY_DELAY": "3s"}
    with KafkaMock() as mock:
        a = wait_ready(gateway(mock, "A", env).start())
        with a.ws("/ws/g1") as ws:
            for i in range(5):
                accepted(push(a.port, "g1", b"m%d" % i))
            check_eq([ws.recv_message(5)[1] for _ in range(5)], [b"m%d" % i for i in range(5)],
                     "before the restart")
        check_eq(a.stop(), 0, "exit status")
        # stopped: the final commit covers all five
        mock.produce("ws.recv", b"while-down", key="g1")
        a = wait_ready(gateway(mock, "A", env).start())
        offs = log_offsets(a)
        check_eq(sum(offs.values()), 5, "committed offsets (5 records, all written): %r" % offs)
        with a.ws("/ws/g1") as ws:  # connects within replay_delay
            check_eq(ws.recv_message(8)[1], b"while-down", "replayed record")
            check(ws.nothing_within(0.3), "a written record came again")
        check_eq(a.stop(), 0, "exit status")
        # ttl: records older than [broker] ttl are read but never delivered
        mock.produce("ws.recv", b"old", key="g1")
        time.sleep(1.5)
        a = wait_ready(gateway(mock, "A", dict(env, WSGATE_BROKER_TTL="1s")).start())
        try:
            with a.ws("/ws/g1") as ws:
                time.sleep(3.5)  # past replay_delay: the old record was read and dropped
                check_eq(metric(a.port, "wsgate_messages_dropped_total"), 1.0, "dropped")
                accepted(push(a.port, "g1", b"fresh"))
                check_eq(ws.recv_message(5)[1], b"fresh", "first message after the old one")
        finally:
            a.stop()


@test("kill -9 of a gateway: nothing committed but unwritten is lost after its restart",
      timeout=120)
def _():
    # Big frames and a client that stops reading: the gateway holds unwritten frames (a send
    # buffer large enough not to close it as slow) when it is killed.
    env = {"WSGATE_KAFKA_REPLAY_DELAY": "4s", "WSGATE_WEBSOCKET_MAX_SEND_BUFFER": "64m",
           "WSGATE_SERVER_MAX_MESSAGE_SIZE": "64k"}
    # more than the kernel can buffer on the gateway's side (tcp_wmem max, 4 MiB by default);
    # the mock keeps 5 MB per partition and drops the oldest, which are written by then
    try:
        wmem = int(open("/proc/sys/net/ipv4/tcp_wmem").read().split()[2])
    except (OSError, ValueError, IndexError):
        wmem = 4 << 20
    pad = b"x" * 40000
    n = (wmem + (1 << 20)) // len(pad)
    with KafkaMock() as mock:
        a = wait_ready(gateway(mock, "A", env).start())
        ws = WS.connect(a.port, "/ws/k1", rcvbuf=65536)
        lines = b"".join(b"k1:%05d%s\n" % (i, pad) for i in range(n))
        mock.produce("ws.recv", lines, delim=":")
        first = [int(ws.recv_message(10)[1][:5]) for _ in range(10)]
        check_eq(first, list(range(10)), "first records")
        time.sleep(2.5)  # everything read by the gateway; auto-commit (1 s) ran since
        a.signal(signal.SIGKILL)
        a.wait(5)
        before = list(first)  # what reached the client before the kill (kernel buffers too)
        try:
            while True:
                before.append(int(ws.recv_message(5)[1][:5]))
        except Closed:
            pass
        ws.close_socket()
        check_eq(before, list(range(len(before))), "in order before the kill")
        check(len(before) < n, "the kill left nothing unwritten (%d of %d written)"
              % (len(before), n))
        a = wait_ready(gateway(mock, "A", env).start())
        try:
            offs = log_offsets(a)
            part = [p for p, o in offs.items() if o > 0] or [None]
            committed = sum(offs.values())
            note("written before the kill: %d of %d; committed offset: %d (partition %s)"
                 % (len(before), n, committed, part[0]))
            check(committed <= len(before), "committed %d records, only %d were written"
                  % (committed, len(before)))
            after = []
            with WS.connect(a.port, "/ws/k1") as ws2:  # within replay_delay
                while len(after) == 0 or after[-1] < n - 1:
                    after.append(int(ws2.recv_message(10)[1][:5]))
            check_eq(after, list(range(committed, n)), "replayed from the committed offset")
        finally:
            a.stop()


@test("broker killed: 503 at once, /readyz 503, no crash; back on the same address: "
      "delivery resumes on the same sockets", timeout=90)
def _():
    mock = KafkaMock(port=free_port()).start()
    try:
        with gateway(mock, "A") as a, gateway(mock, "B") as b:
            wait_ready(a)
            wait_ready(b)
            ws = a.ws("/ws/bk1?topics=bt")
            accepted(push(b.port, "bk1", b"before"))
            check_eq(ws.recv_message(5)[1], b"before", "before")
            mock.kill9()
            wait_for(lambda: not ready(a) and not ready(b), 5, what="/readyz 503")
            t0 = time.monotonic()
            r = push(b.port, "bk1", b"down")
            dt = time.monotonic() - t0
            check_json_error(r, 503, "push while the broker is down")
            check(r.header("retry-after") is not None, "503 without Retry-After")
            check(dt < 0.5, "503 took %.2fs" % dt)
            check_json_error(publish(a.port, "bt", b"down"), 503, "publish while down")
            try:
                a.ws("/ws/bk2").close_socket()
                raise AssertionError("upgrade accepted while the broker is down")
            except HandshakeError as e:
                check_eq(e.response.status, 503, "upgrade while down")
            check(not ws.wait_eof(0.5), "client dropped while the broker was down")
            check(a.alive() and b.alive(), "a gateway died")
            mock.start()  # same port: an empty cluster (the mock keeps nothing)
            wait_ready(a, 15)
            wait_ready(b, 15)
            accepted(push(b.port, "bk1", b"after"))
            accepted(publish(b.port, "bt", b"topic after"), "publish")
            check_eq(sorted([ws.recv_message(10)[1], ws.recv_message(10)[1]]),
                     [b"after", b"topic after"], "after the restart, same socket")
            ws.close_socket()
    finally:
        mock.stop()


@test("broker unreachable at start: not ready, 503; ready once it appears; "
      "SIGTERM while it is down exits promptly", timeout=60)
def _():
    port = free_port()
    mock = KafkaMock(port=port)
    with gateway(mock, "A", bootstrap="127.0.0.1:%d" % port) as a:
        time.sleep(0.5)
        check(not ready(a), "ready without a broker")
        check_json_error(push(a.port, "s", b"x"), 503, "push without a broker")
        mock.start()
        try:
            wait_ready(a, 15)
            with a.ws("/ws/late") as ws:
                accepted(push(a.port, "late", b"hi"))
                check_eq(ws.recv_message(5)[1], b"hi", "delivered")
        finally:
            mock.kill9()
        wait_for(lambda: not ready(a), 5, what="/readyz 503")
        t0 = time.monotonic()
        check_eq(a.stop(timeout=8), 0, "exit status with the broker down")
        note("stopped in %.2fs with the broker down" % (time.monotonic() - t0))


@test("producer buffer full ([kafka] max_buffered): 503 at once")
def _():
    with KafkaMock() as mock, gateway(mock, "A", env={"WSGATE_KAFKA_MAX_BUFFERED": "1k"}) as a:
        wait_ready(a)
        t0 = time.monotonic()
        check_json_error(push(a.port, "s", b"y" * 2048), 503, "push over max_buffered")
        check(time.monotonic() - t0 < 0.5, "503 was slow")
        accepted(push(a.port, "s", b"small"))


@test("thread count does not grow with sessions; an idle loop does not wake up", timeout=60)
def _():
    def threads(pid):
        return len(os.listdir("/proc/%d/task" % pid))

    def loop_switches(pid):
        with open("/proc/%d/task/%d/status" % (pid, pid)) as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    return int(line.split()[1])

    with KafkaMock() as mock, gateway(mock, "A", env={"WSGATE_WEBSOCKET_PING_INTERVAL": "0"}) as a:
        wait_ready(a)
        with a.ws("/ws/t0") as ws:
            accepted(push(a.port, "t0", b"x"))
            ws.recv_message(5)
            t1 = threads(a.pid)
            more = [a.ws("/ws/t%d?topics=x%d" % (i, i)) for i in range(1, 101)]
            accepted(push(a.port, "t50", b"y"))
            check_eq(more[49].recv_message(5)[1], b"y", "delivery with 101 sessions")
            t2 = threads(a.pid)
            for c in more:
                c.close_socket()
        note("threads: %d with 1 session, %d with 101" % (t1, t2))
        check_eq(t2, t1, "threads with 101 sessions vs 1")
        time.sleep(1.0)  # sockets gone, sweep timer stopped
        s0 = loop_switches(a.pid)
        time.sleep(3.0)
        s1 = loop_switches(a.pid)
        note("loop thread wake-ups in 3 s idle: %d" % (s1 - s0))
        check(s1 - s0 <= 3, "the loop thread woke %d times in 3 s idle" % (s1 - s0))


run()
