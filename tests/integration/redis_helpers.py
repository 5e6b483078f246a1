"""redis_helpers.py — what the Redis integration tests share (imported by test_redis_*.py;
not a test program itself): a real redis-server on a free loopback port, started and
stopped by PID (never mocked), a minimal byte-exact RESP2 client over a socket (no redis-py
dependency; replies keep bytes as bytes), the `redis-cli` binary for recipe tests, and a
wsgate Server preset for the Redis backends with short deadlines.

Does NOT start wsgate itself beyond building a wsgate_test.Server, nor judge results."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from wsgate_test import Server, TestTimeout, check, wait_for, http_request, LOGDIR
from wsgate_test import TcpProxy as _TcpProxy

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"

# Short deadlines so fault tests run fast: lease = max(3*ping, 2*timeout) + 1s = 2s.
FAST = {
    "WSGATE_REDIS_TIMEOUT": "500ms",
    "WSGATE_REDIS_PING_INTERVAL": "200ms",
    "WSGATE_REDIS_BACKOFF_MAX": "300ms",
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class RespError(Exception):
    """An error reply (-ERR ...)."""


class Resp:
    """Minimal RESP2 client: command(*args) -> bytes / int / list / None; raises RespError."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    @staticmethod
    def encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, int):
                a = str(a)
            if isinstance(a, str):
                a = a.encode("utf-8")
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def send(self, *args):
        self.sock.sendall(self.encode(*args))

    def _line(self):
        while b"\r\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError("redis closed the connection")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            d = self.sock.recv(max(65536, n + 2 - len(self.buf)))
            if not d:
                raise EOFError("redis closed the connection")
            self.buf += d
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest
        if t == b"-":
            raise RespError(rest.decode("utf-8", "replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RespError("bad reply type %r" % line[:20])

    def command(self, *args):
        self.send(*args)
        return self.reply()

    def pipeline(self, cmds):
        self.sock.sendall(b"".join(self.encode(*c) for c in cmds))
        return [self.reply() for _ in cmds]


class RedisServer:
    """One redis-server process on a free port with its own directory. aof=True gives
    appendonly yes + appendfsync always (durability tests)."""

    def __init__(self, aof=False, port=None):
        self.aof = aof
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=LOGDIR)
        self.proc = None

    def start(self, timeout=5.0):
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log"),
                "--daemonize", "no", "--save", ""]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with Resp(self.port, timeout=0.5) as r:
                    if r.command("PING") == b"PONG":
                        return self
            except (OSError, EOFError, RespError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise TestTimeout("redis-server did not start on port %d" % self.port)
            time.sleep(0.01)

    def stop(self, sig=signal.SIGINT):
        if self.proc is not None and self.proc.poll() is None:
            if sig == signal.SIGSTOP or sig == signal.SIGCONT:
                self.proc.send_signal(sig)
                return
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill9(self):
        self.stop(signal.SIGKILL)

    def freeze(self):
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.proc.send_signal(signal.SIGCONT)

    def url(self, db=0):
        return "redis://127.0.0.1:%d/%d" % (self.port, db)

    def cli(self, *args):
        """Run redis-cli (the real binary) against this server; returns stdout bytes."""
        out = subprocess.run([REDIS_CLI, "-p", str(self.port)] + [str(a) for a in args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
        check(out.returncode == 0, "redis-cli %r failed: %r" % (args, out.stderr))
        return out.stdout

    def cmd(self, *args):
        with Resp(self.port) as r:
            return r.command(*args)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
            except OSError:
                pass
        self.stop()
        return False


class TcpProxy(_TcpProxy):
    """wsgate_test.TcpProxy with a Redis URL."""

    def url(self, db=0):
        return "redis://127.0.0.1:%d/%d" % (self.port, db)


class RedisGateway(Server):
    """A wsgate Server whose start() also waits for /readyz 200 (the process listens
    before its Redis links are up; pushes until then answer 503, as they should)."""

    def start(self, timeout=5.0):
        super().start(timeout)
        wait_ready(self, timeout)
        return self


def gateway(redis, broker="redis-list", env=None, name="wsgate"):
    """A wsgate Server for redis (not started)."""
    e = {"WSGATE_BROKER_TYPE": broker, "WSGATE_REDIS_URL": redis.url()}
    e.update(FAST)
    e.update(env or {})
    return RedisGateway(env=e, name=name)


def ready(srv):
    return http_request(srv.port, "GET", "/readyz").status == 200


def wait_ready(srv, timeout=5.0):
    wait_for(lambda: ready(srv), timeout=timeout, what="/readyz 200 on %s" % srv.addr)


def redis_clients(redis):
    """Client connections Redis sees (excluding the one asking)."""
    lines = redis.cmd("CLIENT", "LIST").decode().strip().splitlines()
    return len(lines) - 1


def check_101_waits_for_subscribe(redis, broker):
    """Freeze Redis, start an upgrade: no 101 may arrive while its SUBSCRIBE is unconfirmed;
    thaw: the 101 arrives and a push made right after it is delivered."""
    import threading
    from wsgate_test import push as http_push
    env = {"WSGATE_REDIS_TIMEOUT": "3s", "WSGATE_REDIS_PING_INTERVAL": "2s"}
    with gateway(redis, broker, env=env, name="A") as a, \
            gateway(redis, broker, env=env, name="B") as b:
        box = {}

        def connect():
            try:
                box["ws"] = a.ws("/ws/sub101?topics=t101", timeout=5)
            except Exception as e:  # noqa: BLE001
                box["err"] = e
        redis.freeze()
        try:
            t = threading.Thread(target=connect, daemon=True)
            t.start()
            t.join(0.5)
            check(t.is_alive(), "101 (or an answer) before Redis confirmed SUBSCRIBE: %r" % box)
        finally:
            redis.thaw()
        t.join(5)
        check("ws" in box, "upgrade failed after the thaw: %r" % box.get("err"))
        ws = box["ws"]
        try:
            r = http_push(b.port, "sub101", b"right after")
            check(r.status == 202, "push status %d" % r.status)
            check(ws.recv_message(3)[1] == b"right after", "push after the 101 not delivered")
        finally:
            ws.close_socket()


# A fast independent reader (python3-websockets, asyncio, own process): argv URL N; prints
# "ready", then "got=N in_order=0|1 close=CODE". Messages start with their 6-digit index.
FAST_READER = r"""
import asyncio, sys, websockets
async def main(url, n):
    got, order, code = 0, 1, None
    try:
        async with websockets.connect(url, max_size=None, compression=None,
                                      ping_interval=None) as ws:
            print("ready", flush=True)
            while got < n:
                m = await ws.recv()
                order &= int(m[:6]) == got
                got += 1
    except websockets.ConnectionClosed as e:
        code = e.code
    print("got=%d in_order=%d close=%s" % (got, order, code), flush=True)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""
