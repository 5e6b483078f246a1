#!/usr/bin/python3
"""test_redis_pubsub.py — the redis-pubsub backend against a real redis-server started here
(never mocked) and several wsgate processes (DESIGN.md §3, §4; issue 3): session messages on
channel ws.recv.S reach every socket of S on every node, at-most-once with no offline
buffering, the README's redis-cli PUBLISH recipe, broadcasts, upstream PUBLISH on ws.send.S,
the 101 only after SUBSCRIBE is confirmed, and Redis restart / freeze behaviour.
Does NOT test the queue backends (test_redis_list.py)."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403
from redis_helpers import (FAST_READER, RedisServer, Resp, check_101_waits_for_subscribe,  # noqa: E402
                           gateway, ready, redis_clients, wait_ready)

PS = "redis-pubsub"


@test("push reaches every socket of the session on every node, once")
def _():
    with RedisServer() as redis, gateway(redis, PS, name="A") as a, \
            gateway(redis, PS, name="B") as b:
        with a.ws("/ws/svc1.user42") as w1, b.ws("/ws/svc1.user42") as w2, \
                b.ws("/ws/other") as w3:
            accepted(push(a.port, "svc1.user42", b"hello"))
            accepted(push(b.port, "svc1.user42", b"\x00\xff"))
            for ws in (w1, w2):
                check_eq(ws.recv_message(), (OP_TEXT, b"hello"), "first on %s" % ws.path)
                check_eq(ws.recv_message(), (OP_BINARY, b"\x00\xff"), "second")
                check(ws.nothing_within(0.2), "duplicate")
            check(w3.nothing_within(0.1), "message for another session")
        check_eq(redis_clients(redis), 4, "Redis connections for two nodes")


@test("README recipe: redis-cli PUBLISH ws.recv.S reaches the client")
def _():
    with RedisServer() as redis, gateway(redis, PS) as a:
        with a.ws("/ws/svc1.user42") as ws:
            out = redis.cli("PUBLISH", "ws.recv.svc1.user42", "hello from redis-cli")
            check_eq(out.strip(), b"1", "PUBLISH receivers (one node subscribed)")
            check_eq(ws.recv_message(), (OP_TEXT, b"hello from redis-cli"), "message")


@test("at-most-once, no offline buffering: a push nobody listens to is accepted and dropped")
def _():
    with RedisServer() as redis, gateway(redis, PS) as a:
        accepted(push(a.port, "nobody", b"lost"))
        check_eq(redis.cmd("KEYS", "*"), [], "keys stored by redis-pubsub")
        check_eq(metric(a.port, "wsgate_messages_dropped_total"), 1.0, "dropped counter")
        with a.ws("/ws/nobody") as ws:
            check(ws.nothing_within(0.3), "an offline message was delivered")
            accepted(push(a.port, "nobody", b"now"))
            check_eq(ws.recv_message()[1], b"now", "online message")


@test("101 only after SUBSCRIBE is confirmed: a push right after the handshake arrives")
def _():
    with RedisServer() as redis, gateway(redis, PS, name="A") as a, \
            gateway(redis, PS, name="B") as b:
        for i in range(30):
            with a.ws("/ws/race%d?topics=rt%d" % (i, i)) as ws:
                accepted(push(b.port, "race%d" % i, b"p%d" % i))
                accepted(publish(b.port, "rt%d" % i, b"t%d" % i), "publish")
                check_eq(sorted([ws.recv_message(2)[1], ws.recv_message(2)[1]]),
                         [b"p%d" % i, b"t%d" % i], "attempt %d" % i)


@test("broadcast across nodes: every subscriber once, non-subscribers nothing")
def _():
    with RedisServer() as redis, gateway(redis, PS, name="A") as a, \
            gateway(redis, PS, name="B") as b:
        with a.ws("/ws/b1?topics=news,news") as w1, b.ws("/ws/b2?topics=news") as w2, \
                a.ws("/ws/b3?topics=other") as w3:
            accepted(publish(b.port, "news", b"n1"), "publish")
            redis.cli("PUBLISH", "ws.topic.news", "n2")
            for ws in (w1, w2):
                check_eq([ws.recv_message()[1], ws.recv_message()[1]], [b"n1", b"n2"],
                         ws.path)
                check(ws.nothing_within(0.2), "duplicate on %s" % ws.path)
            check(w3.nothing_within(0.1), "broadcast to a non-subscriber")


@test("upstream: client frames are PUBLISHed on ws.send.S byte-exact")
def _():
    with RedisServer() as redis, gateway(redis, PS, env={"WSGATE_WEBSOCKET_UPSTREAM": "on"}) as a:
        sub = Resp(redis.port)
        try:
            sub.send("SUBSCRIBE", "ws.send.up1")
            check_eq(sub.reply()[0], b"subscribe", "SUBSCRIBE")
            with a.ws("/ws/up1") as ws:
                ws.send_text("h\u00e9llo")
                ws.send_binary(b"\x00\x01\xff")
                got = [sub.reply() for _ in range(2)]
            check_eq(got, [[b"message", b"ws.send.up1", "h\u00e9llo".encode()],
                           [b"message", b"ws.send.up1", b"\x00\x01\xff"]], "upstream")
        finally:
            sub.close()


@test("Redis restart: 503 and /readyz 503 while down, clients stay, resubscribed after",
      timeout=40)
def _():
    redis = RedisServer().start()
    try:
        with gateway(redis, PS, name="A") as a, gateway(redis, PS, name="B") as b:
            ws = a.ws("/ws/rs1?topics=rt")
            accepted(push(b.port, "rs1", b"before"))
            check_eq(ws.recv_message()[1], b"before", "before")
            redis.stop()
            t0 = time.monotonic()
            r = push(b.port, "rs1", b"down")
            check_json_error(r, 503, "push while Redis is down")
            check(r.header("retry-after") is not None, "503 without Retry-After")
            check(time.monotonic() - t0 < 1.0, "503 was slow")
            wait_for(lambda: not ready(a) and not ready(b), what="/readyz 503")
            try:
                ws2 = a.ws("/ws/rs2")
                ws2.close_socket()
                raise AssertionError("upgrade accepted while Redis is down")
            except HandshakeError as e:
                check_eq(e.response.status, 503, "upgrade while down")
            check(not ws.wait_eof(0.2), "client dropped while Redis was down")
            redis2 = RedisServer(port=redis.port)
            redis = redis2.start()
            wait_ready(a)
            wait_ready(b)
            accepted(push(b.port, "rs1", b"after"))
            accepted(publish(b.port, "rt", b"topic after"), "publish")
            check_eq([ws.recv_message()[1], ws.recv_message()[1]], [b"after", b"topic after"],
                     "after the restart, same socket")
            ws.close_socket()
    finally:
        redis.stop()


@test("Redis frozen (kill -STOP): 503 within the deadline; kill -CONT: resumes", timeout=30)
def _():
    with RedisServer() as redis, gateway(redis, PS, name="A") as a:
        ws = a.ws("/ws/fz1")
        redis.freeze()
        try:
            t0 = time.monotonic()
            r = push(a.port, "fz1", b"frozen")
            dt = time.monotonic() - t0
            check_json_error(r, 503, "push to a frozen Redis")
            check(dt < 1.0, "answered after %.2fs (deadline 500ms)" % dt)
            wait_for(lambda: not ready(a), timeout=3, what="/readyz 503")
        finally:
            redis.thaw()
        wait_ready(a)
        accepted(push(a.port, "fz1", b"thawed"))
        got = []
        while b"thawed" not in got:
            got.append(ws.recv_message(5)[1])
        check(set(got) <= {b"frozen", b"thawed"}, "unexpected %r" % got)
        ws.close_socket()


# A healthy subscriber of another implementation (python3-websockets, asyncio), in its own
# process so it reads at full speed: counts the broadcasts it gets (in order) until n or a
# close, then prints "got=N in_order=0|1 close=CODE".


@test("a broadcast burst (800 x 64 KiB): a healthy fast reader is not closed 1008, a reader "
      "that never reads is", timeout=120)
def _():
    # Needs the core to judge a slow client after a write attempt (bytes the socket refused):
    # judged at delivery, the healthy reader is closed whenever it is descheduled long enough
    # for 1 MiB to queue behind a write waiting for its last few KiB (seen: 988 KiB counted,
    # 5 KiB refused). redis-pubsub has nothing to hold back: broadcasts are not stored.
    import subprocess
    n, size = 800, 64 * 1024
    # close_timeout 1s: the reader that never reads cannot take its close frame either, so it
    # is dropped after close_timeout (+ one sweep); the 5 s default raced the 5 s wait below
    # max_send_buffer 4m: 64 messages of slack for the healthy reader, a Python process on
    # 2 shared cores that can be descheduled for tens of ms while the burst goes on (with
    # 1m = 16 messages a fresh-clone make test saw it closed once after 217 of 800); the
    # reader that never reads still passes 4 MiB within the first tenth of the burst
    env = {"WSGATE_WEBSOCKET_MAX_SEND_BUFFER": "4m", "WSGATE_SERVER_MAX_MESSAGE_SIZE": "1m",
           "WSGATE_WEBSOCKET_CLOSE_TIMEOUT": "1s"}
    with RedisServer() as redis, gateway(redis, PS, env=env) as a:
        stalled = a.ws("/ws/never?topics=burst", rcvbuf=16384)
        fast = subprocess.Popen(["/usr/bin/python3", "-c", FAST_READER,
                                 "ws://127.0.0.1:%d/ws/fast?topics=burst" % a.port, str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            check_eq(fast.stdout.readline().strip(), b"ready", "fast reader connected")
            body = [b"%06d" % i + b"." * (size - 6) for i in range(n)]
            t0 = time.monotonic()
            with a.http() as h:  # one keep-alive connection, the next as the 202 comes back
                for i in range(n):
                    accepted(h.request("POST", "/publish/burst", body[i]), "publish %d" % i)
            dt = time.monotonic() - t0
            out, _ = fast.communicate(timeout=60)
        finally:
            if fast.poll() is None:
                fast.kill()
                fast.wait()
        res = out.decode().strip().splitlines()[-1]
        note("%d x %d KiB published in %.2fs; healthy reader: %s; slow closes: %d"
             % (n, size // 1024, dt, res,
                metric(a.port, "wsgate_slow_client_closes_total")))
        check_eq(res, "got=%d in_order=1 close=None" % n, "healthy reader")
        check_eq(metric(a.port, "wsgate_slow_client_closes_total"), 1.0,
                 "slow closes (only the reader that never reads)")
        check(stalled.wait_eof(5), "the reader that never reads is still connected")
        stalled.close_socket()


@test("the 101 waits for the SUBSCRIBE confirmation (Redis frozen meanwhile)")
def _():
    with RedisServer() as redis:
        check_101_waits_for_subscribe(redis, PS)


run()
