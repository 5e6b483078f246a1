#!/usr/bin/python3
"""test_robustness.py — garbage in, no harm out: seeded random mutations of valid HTTP
requests and of WebSocket frame streams are thrown at one wsgate process (run under
ASan/UBSan by `make test-san`). After each batch the server must still answer /healthz,
deliver a push byte-exact, and hold no leftover connections; at the end it must exit 0
on SIGTERM (LeakSanitizer runs at that exit). Reproducible: the seed is printed and
WSGATE_FUZZ_SEED overrides it. Does NOT check which 4xx or close code each input gets
(test_http.py and test_ws.py do)."""

import os
import random
import socket
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403
from wsgate_test import build_request, encode_frame  # noqa: E402

SEED = int(os.environ.get("WSGATE_FUZZ_SEED") or 20261123)  # fixed: CI stays deterministic
print("# fuzz seed %d (set WSGATE_FUZZ_SEED to replay)" % SEED, flush=True)

SEEDS_HTTP = [
    b"POST /push/s1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /publish/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /ws/s1?topics=a,b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"POST /push/s1 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
]


def mutate(rng, data):
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and b:
            del b[i:i + rng.randint(1, 8)]
        elif op == 3:
            b[i:i] = rng.choice([b"\r\n", b"\r\n\r\n", b":", b" ", b"\x00", b"%", b"?", b"..",
                                 b"Content-Length: 99999999999\r\n", b"Transfer-Encoding: chunked\r\n"])
        elif op == 4:
            b = b[:i]
        else:
            b += b[:rng.randint(0, len(b))]
    return bytes(b)


def blast(port, payload, split):
    """Send payload (in split pieces), read whatever comes back for a short while."""
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        pos = 0
        while pos < len(payload):
            n = max(1, len(payload) // split)
            s.sendall(payload[pos:pos + n])
            pos += n
        s.shutdown(socket.SHUT_WR)
        s.settimeout(0.3)
        try:
            while s.recv(65536):
                pass
        except (socket.timeout, ConnectionResetError):
            pass
    except OSError:
        pass  # the server closed first (reset, not connected): fine
    finally:
        s.close()


def assert_healthy(srv, what):
    r = http_request(srv.port, "GET", "/healthz", timeout=3)
    check_eq(r.status, 200, "%s: /healthz" % what)
    ws = srv.ws("/ws/health-probe")
    check_eq(push(srv.port, "health-probe", b"\x00\xffprobe").status, 202, "%s: push" % what)
    check_eq(ws.recv_message(), (OP_BINARY, b"\x00\xffprobe"), "%s: delivery" % what)
    ws.close(1000)


def random_frames(rng):
    """A plausible-then-broken client frame stream after a valid handshake."""
    out = b""
    for _ in range(rng.randint(1, 6)):
        op = rng.choice([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB])
        payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 5, 125, 126, 300])))
        out += encode_frame(op, payload, fin=rng.random() < 0.7, rsv=rng.choice([0, 0, 0, 1, 4]),
                            mask=rng.random() < 0.9)
    if rng.random() < 0.5:
        b = bytearray(out)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out = bytes(b)
    return out


@test("mutated HTTP requests: no crash, no stuck connection, still serving", timeout=120)
def _():
    rng = random.Random(SEED)
    env = {"WSGATE_SERVER_HANDSHAKE_TIMEOUT": "1s", "WSGATE_SERVER_MAX_MESSAGE_SIZE": "64k",
           "WSGATE_SERVER_MAX_HEADER_SIZE": "2k"}
    with Server(env=env) as srv:
        for batch in range(6):
            for _ in range(60):
                blast(srv.port, mutate(rng, rng.choice(SEEDS_HTTP)), rng.choice([1, 1, 3, 17]))
            assert_healthy(srv, "after HTTP batch %d" % batch)
        wait_for(lambda: metric(srv.port, "wsgate_http_connections_open") <= 1, timeout=5,
                 what="HTTP connections to drain")


@test("mutated WebSocket frame streams: no crash, still serving", timeout=120)
def _():
    rng = random.Random(SEED + 1)
    env = {"WSGATE_SERVER_MAX_MESSAGE_SIZE": "1k", "WSGATE_WEBSOCKET_CLOSE_TIMEOUT": "500ms"}
    with Server(env=env) as srv:
        for batch in range(6):
            for i in range(40):
                ws = srv.ws("/ws/fuzz%d" % i)
                try:
                    ws.sock.sendall(random_frames(rng))
                    ws.sock.settimeout(0.2)
                    try:
                        while ws.sock.recv(65536):
                            pass
                    except (socket.timeout, ConnectionResetError):
                        pass
                except OSError:
                    pass  # the server closed first: fine
                ws.sock.close()
            assert_healthy(srv, "after WS batch %d" % batch)
        wait_for(lambda: metric(srv.port, "wsgate_ws_connections_open") == 0, timeout=5,
                 what="WebSocket connections to close")


if __name__ == "__main__":
    run()
