#!/usr/bin/python3
"""test_process.py — wsgate as a process (keys.md "Process behaviour", DESIGN.md §5):
SIGTERM/SIGINT drain (stop accepting, close 1001, exit 0 within drain_timeout), the
listening log line, --check-config on good and bad files, --version, --help. Does NOT
test routes (test_http.py, test_ws.py, test_push.py). Starts its own wsgate processes."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env.update(extra or {})
    return env


def run_bin(args, env=None, timeout=5):
    return subprocess.run([BIN] + args, capture_output=True, timeout=timeout,
                          env=clean_env(env), stdin=subprocess.DEVNULL)


def conf_file(text):
    f = tempfile.NamedTemporaryFile("w", suffix=".conf", dir=LOGDIR, delete=False)
    f.write(text)
    f.close()
    return f.name


@test("SIGTERM: every WebSocket gets 1001, listener closed, exit 0 within drain_timeout")
def _():
    env = {"WSGATE_SERVER_DRAIN_TIMEOUT": "2s", "WSGATE_WEBSOCKET_CLOSE_TIMEOUT": "1s"}
    srv = Server(env=env).start()
    polite = [srv.ws("/ws/term%d?topics=t" % i) for i in range(5)]
    rude = srv.ws("/ws/rude")          # never answers the close frame
    idle_http = Http(srv.port)         # a keep-alive HTTP connection, idle
    check_eq(idle_http.request("GET", "/healthz").status, 200, "healthz before")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    for i, ws in enumerate(polite):
        code, _ = ws.expect_close(timeout=3)   # answers the close
        check_eq(code, 1001, "close code on socket %d" % i)
    f = rude.recv_frame(timeout=3)
    check(f.opcode == OP_CLOSE and f.close_code() == 1001, "rude client got %r" % f)
    # no new connections: refused, or closed without an answer
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=1)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(1.5)
            data = s.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        except socket.timeout:
            data = b"(no answer within 1.5s)"
        s.close()
        check(data == b"" or data.startswith(b"HTTP/1.1 503"),
              "a connection after SIGTERM was served: %r" % data[:80])
    except ConnectionRefusedError:
        pass
    rc = srv.wait(4)
    dt = time.monotonic() - t0
    check_eq(rc, 0, "exit status")
    check(dt <= 2.5, "exit took %.2fs with drain_timeout 2s" % dt)
    note("exit after %.2fs" % dt)
    for ws in polite:
        check(ws.wait_eof(1), "socket still open after exit")
    check(idle_http.wait_eof(1), "idle HTTP connection still open after exit")
    check("event=listening" in srv.log_text(), "no listening line")


@test("SIGINT behaves like SIGTERM (1001, exit 0)")
def _():
    srv = Server(env={"WSGATE_SERVER_DRAIN_TIMEOUT": "2s"}).start()
    ws = srv.ws("/ws/int")
    srv.signal(signal.SIGINT)
    code, _ = ws.expect_close(timeout=3)
    check_eq(code, 1001, "close code")
    check_eq(srv.wait(3), 0, "exit status")


@test("SIGTERM with no clients exits 0 promptly")
def _():
    srv = Server().start()
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    check_eq(srv.wait(3), 0, "exit status")
    check(time.monotonic() - t0 < 1.0, "idle server took %.2fs to exit"
          % (time.monotonic() - t0))


@test("messages accepted before SIGTERM reach the connected client before its 1001")
def _():
    # a push answered 202 just before SIGTERM must have been delivered to the connected
    # client before its close frame (memory broker: the socket is the only copy)
    srv = Server(env={"WSGATE_SERVER_DRAIN_TIMEOUT": "2s"}).start()
    ws = srv.ws("/ws/inflight")
    for i in range(20):
        check_eq(push(srv.port, "inflight", b"m%d" % i).status, 202, "push %d" % i)
    srv.signal(signal.SIGTERM)
    got = []
    try:
        while True:
            got.append(ws.recv_message(timeout=3)[1])
    except Closed as c:
        check_eq(c.code, 1001, "close code")
    check_eq(got, [b"m%d" % i for i in range(20)], "messages before the close")
    check_eq(srv.wait(3), 0, "exit status")


@test("listening log line: key=value with the real port; config from -c FILE")
def _():
    path = conf_file("[server]\nlisten = 127.0.0.1:0\nlog_level = debug\n")
    srv = Server(args=["-c", path]).start()
    try:
        line = [l for l in srv.log_text().splitlines() if "event=listening" in l][0]
        check("level=info" in line, "listening line without level=info: %r" % line)
        check(line.startswith("ts="), "log line does not start with ts=: %r" % line)
        check_eq(http_request(srv.port, "GET", "/healthz").status, 200, "healthz")
    finally:
        check_eq(srv.stop(), 0, "exit status")


@test("--check-config: a good file exits 0")
def _():
    path = conf_file("; comment\n[server]\nlisten = 127.0.0.1:0\nmax_message_size = 64k\n"
                     "handshake_timeout = 250ms\n\n[websocket]\nping_interval = 0\n"
                     "upstream = off\n\n[broker]\ntype = memory\nttl = 1h\n")
    p = run_bin(["-c", path, "--check-config"])
    check(p.returncode == 0, "exit %d, stderr %r" % (p.returncode, p.stderr[-500:]))


def bad_config(text, line, key):
    section = text.split("]")[0].lstrip("[")
    path = conf_file(text)
    p = run_bin(["-c", path, "--check-config"])
    err = p.stderr.decode("utf-8", "replace")
    check(p.returncode != 0, "bad config (%s) accepted" % key)
    # NAME may be written bare or qualified by its section ("bogus_key" / "server.bogus_key")
    want = ["%s:%d: key '%s%s'" % (path, line, sec, key) for sec in ("", section + ".")]
    check(any(w in err for w in want), "stderr lacks %r:\n%s" % (want[0], err[-600:]))


@test("--check-config: unknown key -> FILE:LINE: key 'NAME', exit non-zero")
def _():
    bad_config("[server]\nlisten = 127.0.0.1:0\nbogus_key = 1\n", 3, "bogus_key")


@test("--check-config: bad values -> FILE:LINE: key 'NAME', exit non-zero")
def _():
    bad_config("[server]\nlisten = 127.0.0.1:0\n\nmax_message_size = lots\n", 4,
               "max_message_size")
    bad_config("[websocket]\nping_interval = soon\n", 2, "ping_interval")
    bad_config("[websocket]\nupstream = maybe\n", 2, "upstream")
    bad_config("[broker]\ntype = carrier-pigeon\n", 2, "type")
    bad_config("[server]\nlisten = nohostnoport\n", 2, "listen")


@test("a bad config file refuses to start (no listening)")
def _():
    path = conf_file("[server]\nlisten = 127.0.0.1:0\nmax_connections = -5x\n")
    p = run_bin(["-c", path], timeout=5)
    check(p.returncode != 0, "started with a bad config")
    check(b"event=listening" not in p.stderr, "logged listening with a bad config")


@test("bad environment override is an error naming the key")
def _():
    p = run_bin(["--check-config"], env={"WSGATE_SERVER_MAX_MESSAGE_SIZE": "huge"})
    check(p.returncode != 0, "bad WSGATE_SERVER_MAX_MESSAGE_SIZE accepted")
    check(b"max_message_size" in p.stderr.lower() or b"MAX_MESSAGE_SIZE" in p.stderr,
          "stderr does not name the key: %r" % p.stderr[-400:])
    p = run_bin(["--check-config"], env={"WSGATE_SERVER_MAX_MESSAGE_SIZE": "2m"})
    check(p.returncode == 0, "good override rejected: %r" % p.stderr[-400:])


@test("--version and --help exit 0 with useful text")
def _():
    p = run_bin(["--version"])
    check_eq(p.returncode, 0, "--version exit")
    out = (p.stdout + p.stderr).decode()
    check("wsgate" in out and any(ch.isdigit() for ch in out), "--version said %r" % out)
    p = run_bin(["--help"])
    check_eq(p.returncode, 0, "--help exit")
    out = (p.stdout + p.stderr).decode()
    for word in ("--check-config", "-c", "--version"):
        check(word in out, "--help does not mention %s: %r" % (word, out[:500]))
    p = run_bin(["--no-such-flag"])
    check(p.returncode != 0, "unknown flag accepted")


run()
