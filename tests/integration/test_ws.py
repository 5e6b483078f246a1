#!/usr/bin/python3
"""test_ws.py — wsgate's WebSocket side (RFC 6455, DESIGN.md §2): every close code the
gateway sends (1002 1007 1009 1001 1008), fragmented client messages, server pings,
idle timeout, slow clients with bounded memory. Does NOT test HTTP answers (test_http.py)
or SIGTERM (test_process.py). Starts its own wsgate processes ($WSGATE_BIN)."""

import os
import struct
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403
from wsgate_test import encode_frame  # noqa: E402


def expect_close_code(ws, want, what):
    """The server closes with want; then the TCP connection ends."""
    try:
        code, reason = ws.expect_close(timeout=3, allow_data=False)
    except AssertionError as e:
        raise AssertionError("%s: %s (want close %d)" % (what, e, want))
    check(code == want, "%s: close code %s reason %r, want %d" % (what, code, reason, want))
    check(ws.wait_eof(3), "%s: TCP connection not closed after the close handshake" % what)


def still_open(srv, ws, key, what):
    """ws is still connected and receives a push to key."""
    r = push(srv.port, key, b"still-open")
    check(r.status == 202, "%s: push %d" % (what, r.status))
    try:
        got = ws.recv_message()
    except Closed as c:
        raise AssertionError("%s: connection closed (code %s)" % (what, c.code))
    check_eq(got, (OP_TEXT, b"still-open"), "%s: message" % what)


@test("client close 1000 is echoed and the connection ends")
def _():
    with Server() as srv:
        ws = srv.ws("/ws/bye")
        check_eq(ws.close(1000), 1000, "echoed close code")
        check(ws.wait_eof(3), "TCP not closed after the close handshake")
        ws = srv.ws("/ws/bye")
        check_eq(ws.close(4000), 4000, "echoed application close code 4000")


@test("1002: unmasked client frame")
def _():
    with Server() as srv:
        ws = srv.ws("/ws/p")
        ws.send_frame(OP_TEXT, b"hello", mask=False)
        expect_close_code(ws, 1002, "unmasked frame")


@test("1002: control frame over 125 bytes")
def _():
    with Server() as srv:
        ws = srv.ws("/ws/p")
        ws.send_frame(OP_PING, b"p" * 126)
        expect_close_code(ws, 1002, "126-byte ping")
        ws = srv.ws("/ws/p")
        ws.send_frame(OP_CLOSE, struct.pack(">H", 1000) + b"r" * 124)
        expect_close_code(ws, 1002, "126-byte close")


@test("1002: fragmented ping")
def _():
    with Server() as srv:
        ws = srv.ws("/ws/p")
        ws.send_frame(OP_PING, b"pi", fin=False)
        expect_close_code(ws, 1002, "ping with FIN=0")


@test("1002: reserved opcodes 3 and 0xB")
def _():
    with Server() as srv:
        for op in (0x3, 0xB):
            ws = srv.ws("/ws/p")
            ws.send_frame(op, b"x")
            expect_close_code(ws, 1002, "opcode %#x" % op)


@test("1002: RSV1 set without a negotiated extension")
def _():
    with Server() as srv:
        ws = srv.ws("/ws/p")
        ws.send_frame(OP_TEXT, b"x", rsv=4)
        expect_close_code(ws, 1002, "RSV1")
        ws = srv.ws("/ws/p")
        ws.send_frame(OP_BINARY, b"x", rsv=1)
        expect_close_code(ws, 1002, "RSV3")


@test("1002: continuation without a start, data frame inside a fragmented message")
def _():
    with Server() as srv:
        ws = srv.ws("/ws/p")
        ws.send_frame(OP_CONT, b"x")
        expect_close_code(ws, 1002, "lone continuation")
        ws = srv.ws("/ws/p")
        ws.send_frame(OP_TEXT, b"a", fin=False)
        ws.send_frame(OP_TEXT, b"b")
        expect_close_code(ws, 1002, "new text frame inside a fragmented message")


@test("1002: invalid close frames (code 999, 1005, 1-byte payload)")
def _():
    with Server() as srv:
        for name, payload in [("code 999", struct.pack(">H", 999)),
                              ("code 1005", struct.pack(">H", 1005)),
                              ("code 2999", struct.pack(">H", 2999)),
                              ("1-byte payload", b"\x03")]:
            ws = srv.ws("/ws/p")
            ws.send_frame(OP_CLOSE, payload)
            f = ws.recv_frame()
            check(f.opcode == OP_CLOSE, "%s: got %r" % (name, f))
            check(f.close_code() == 1002, "%s: close answer %r, want code 1002" % (name, f))
            check(ws.wait_eof(3), "%s: TCP not closed" % name)


@test("frames sent in the same packet as the upgrade request are processed")
def _():
    import base64 as b64
    with Server() as srv:
        with srv.http() as c:
            key = b64.b64encode(os.urandom(16)).decode()
            c.send(ws_handshake_request("/ws/eager", srv.port, key)
                   + encode_frame(OP_PING, b"early") + encode_frame(OP_TEXT, b"hi"))
            r = c.read_response()
            check_eq(r.status, 101, "upgrade status")
            p = FrameParser()
            p.feed(bytes(c.s.buf))
            deadline = time.monotonic() + 3
            f = p.next()
            while f is None:
                c.sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = c.sock.recv(65536)
                check(data, "connection closed instead of answering the early ping")
                p.feed(data)
                f = p.next()
            check_eq((f.opcode, f.payload), (OP_PONG, b"early"), "pong to the early ping")


@test("1007: invalid UTF-8 in a text message, also split across fragments")
def _():
    with Server() as srv:
        ws = srv.ws("/ws/u")
        ws.send_frame(OP_TEXT, b"ok\xff\xfe")
        expect_close_code(ws, 1007, "invalid UTF-8 text")
        ws = srv.ws("/ws/u")
        ws.send_frame(OP_TEXT, b"ab\xe2", fin=False)   # valid prefix of a 3-byte sequence
        ws.send_frame(OP_CONT, b"\x28\xa1")           # 0x28 is not a continuation byte
        expect_close_code(ws, 1007, "invalid UTF-8 across fragments")
        ws = srv.ws("/ws/u")
        ws.send_frame(OP_TEXT, b"\xed\xa0\x80")       # surrogate
        expect_close_code(ws, 1007, "surrogate in text")
        ws = srv.ws("/ws/u")
        ws.send_frame(OP_TEXT, b"abc\xe2\x82", fin=False)
        ws.send_frame(OP_CONT, b"")                   # message ends mid-character
        expect_close_code(ws, 1007, "text ending mid-character")


@test("fragmented client messages are reassembled; the connection stays open")
def _():
    with Server() as srv:
        ws = srv.ws("/ws/frag")
        # valid UTF-8 character split across fragments, a ping in between
        ws.send_frame(OP_TEXT, b"caf\xe2\x82", fin=False)
        ws.send_frame(OP_PING, b"mid")
        ws.send_frame(OP_CONT, b"\xac and more", fin=False)
        ws.send_frame(OP_CONT, b"!", fin=True)
        f = ws.recv_frame()
        check_eq((f.opcode, f.payload), (OP_PONG, b"mid"), "pong to the ping between fragments")
        ws.send_frame(OP_BINARY, b"\x00" * 10, fin=False)
        ws.send_frame(OP_CONT, b"\xff" * 10, fin=True)
        ws.send_frame(OP_TEXT, b"whole")
        still_open(srv, ws, "frag", "after fragmented messages")
        # binary data with invalid UTF-8 is fine
        ws.send_binary(b"\xff\xfe")
        still_open(srv, ws, "frag", "after a binary frame")
        ws.close()


@test("upstream = on: client messages (empty, text, binary, fragmented) keep the socket open")
def _():
    with Server(env={"WSGATE_WEBSOCKET_UPSTREAM": "on"}) as srv:
        ws = srv.ws("/ws/up")
        ws.send_text(b"")
        ws.send_binary(b"")
        ws.send_text("caf\u00e9")
        ws.send_binary(b"\x00\xff")
        ws.send_frame(OP_TEXT, b"a", fin=False)
        ws.send_frame(OP_CONT, b"", fin=False)
        ws.send_frame(OP_CONT, b"b", fin=True)
        still_open(srv, ws, "up", "after upstream messages")
        note("wsgate_messages_upstream_total = %s"
             % metric(srv.port, "wsgate_messages_upstream_total"))
        ws.close()


@test("ping from the client gets a pong with the same payload")
def _():
    with Server() as srv:
        ws = srv.ws("/ws/pp")
        ws.send_frame(OP_PING, b"hello-ping")
        f = ws.recv_frame()
        check_eq((f.opcode, f.payload), (OP_PONG, b"hello-ping"), "pong")
        ws.send_frame(OP_PING, b"")
        f = ws.recv_frame()
        check_eq((f.opcode, f.payload), (OP_PONG, b""), "empty pong")
        ws.close()


@test("1009: message over max_message_size (one frame or fragments)")
def _():
    with Server(env={"WSGATE_SERVER_MAX_MESSAGE_SIZE": "1k"}) as srv:
        ws = srv.ws("/ws/big")
        ws.send_binary(b"x" * 1024)
        still_open(srv, ws, "big", "message of exactly 1024 bytes")
        ws.send_binary(b"x" * 1025)
        expect_close_code(ws, 1009, "1025-byte frame")
        ws = srv.ws("/ws/big")
        for i in range(3):
            ws.send_frame(OP_TEXT if i == 0 else OP_CONT, b"y" * 400, fin=(i == 2))
        expect_close_code(ws, 1009, "3 fragments of 400 bytes")
        # a header that announces 2^40 bytes: closed without waiting for the payload
        ws = srv.ws("/ws/big")
        ws.send_raw(encode_frame(OP_BINARY, b"z" * 10, length=1 << 40))
        expect_close_code(ws, 1009, "frame announcing 2^40 bytes")


@test("server pings arrive every ping_interval")
def _():
    with Server(env={"WSGATE_WEBSOCKET_PING_INTERVAL": "250ms",
                     "WSGATE_WEBSOCKET_IDLE_TIMEOUT": "10s"}) as srv:
        ws = srv.ws("/ws/ping")
        t0 = time.monotonic()
        times = []
        while time.monotonic() - t0 < 1.6:
            try:
                f = ws.recv_frame(timeout=max(0.01, 1.6 - (time.monotonic() - t0)))
            except TestTimeout:
                break
            check(f.opcode == OP_PING, "unexpected frame %r" % f)
            check(len(f.payload) <= 125, "ping payload %d bytes" % len(f.payload))
            times.append(time.monotonic() - t0)
            ws.send_frame(OP_PONG, f.payload)
        note("pings at %s" % ["%.2f" % t for t in times])
        check(4 <= len(times) <= 8, "%d pings in 1.6s with ping_interval 250ms" % len(times))
        gaps = [b - a for a, b in zip(times, times[1:])]
        check(all(0.15 <= g <= 0.45 for g in gaps), "ping gaps %s" % ["%.2f" % g for g in gaps])
        ws.close()


@test("1001: idle_timeout closes a client that never answers pings; pong keeps it alive")
def _():
    env = {"WSGATE_WEBSOCKET_PING_INTERVAL": "200ms", "WSGATE_WEBSOCKET_IDLE_TIMEOUT": "1s"}
    with Server(env=env) as srv:
        mute = srv.ws("/ws/mute")
        alive = srv.ws("/ws/alive")
        t0 = time.monotonic()
        closed_at = None
        code = None
        # poll both for 2.5 s: 'mute' reads but never pongs, 'alive' answers every ping
        while time.monotonic() - t0 < 2.5:
            if closed_at is None:
                try:
                    f = mute.recv_frame(timeout=0.05)
                    if f.opcode == OP_CLOSE:
                        closed_at = time.monotonic() - t0
                        code = f.close_code()
                        mute.send_close(code)
                except TestTimeout:
                    pass
                except Closed:
                    closed_at = time.monotonic() - t0
            try:
                f = alive.recv_frame(timeout=0.05)
                check(f.opcode != OP_CLOSE, "the client that answers pings was closed "
                      "(code %s) after %.2fs" % (f.close_code(), time.monotonic() - t0))
                if f.opcode == OP_PING:
                    alive.send_frame(OP_PONG, f.payload)
            except TestTimeout:
                pass
        check(closed_at is not None, "client that never answers pings still open after 2.5s")
        check_eq(code, 1001, "close code for the idle client")
        check(0.8 <= closed_at <= 2.0, "idle close after %.2fs, want about 1s" % closed_at)
        note("idle close after %.2fs" % closed_at)
        check(mute.wait_eof(2), "idle client's TCP not closed")
        still_open(srv, alive, "alive", "client answering pings past idle_timeout")
        alive.close()


@test("1001: without pings, client data frames keep a connection alive")
def _():
    env = {"WSGATE_WEBSOCKET_PING_INTERVAL": "0", "WSGATE_WEBSOCKET_IDLE_TIMEOUT": "1s"}
    with Server(env=env) as srv:
        busy = srv.ws("/ws/busy")
        quiet = srv.ws("/ws/quiet")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.8:
            busy.send_text("tick")
            time.sleep(0.2)
        code, _ = quiet.expect_close(timeout=1)
        check_eq(code, 1001, "quiet client's close code")
        still_open(srv, busy, "busy", "client sending data every 200ms")
        busy.close()


def slow_client_run(srv, path, send, total_mb):
    """Connect a client that never reads (tiny receive buffer), then send total_mb MiB of
    64 KiB messages with send(i, body) -> status. Returns (statuses, slow ws)."""
    ws = srv.ws(path, rcvbuf=4096)
    body = b"S" * 65536
    statuses = {}
    with srv.http() as c:
        for i in range(total_mb * 16):
            st = send(c, i, body)
            statuses[st] = statuses.get(st, 0) + 1
    return statuses, ws


def slow_client_check(srv, ws, statuses, rss0, what):
    st = read_proc_status(srv.pid)
    note("%s: statuses %s; VmRSS %d kB -> %d kB, VmHWM %d kB" %
         (what, statuses, rss0, st["VmRSS"], st["VmHWM"]))
    # the slow client is gone: reading what was buffered ends in EOF; a close frame, if
    # one made it through, says 1008
    check(ws.wait_eof(10), "%s: slow client still connected" % what)
    codes = []
    while True:
        f = ws.parser.next()
        if f is None:
            break
        if f.opcode == OP_CLOSE:
            codes.append(f.close_code())
    check(all(c == 1008 for c in codes), "%s: close codes %s, want 1008" % (what, codes))
    m = metrics(srv.port)
    check(m["wsgate_slow_client_closes_total"] >= 1,
          "%s: wsgate_slow_client_closes_total = %s" % (what, m["wsgate_slow_client_closes_total"]))
    check_eq(m["wsgate_ws_connections_open"], 0, "%s: ws_connections_open" % what)
    grew = st["VmHWM"] - rss0
    check(st["VmHWM"] < 64 * 1024 and grew < 32 * 1024,
          "%s: peak RSS %d kB (grew %d kB) after 50 MiB at a slow client" % (what, st["VmHWM"],
                                                                             grew))


@test("1008: a client that never reads is closed; memory stays bounded (push)", timeout=60)
def _():
    env = asan_env({"WSGATE_WEBSOCKET_MAX_SEND_BUFFER": "64k", "WSGATE_BROKER_MAX_QUEUE": "8"},
                   quarantine_mb=8)
    with Server(env=env) as srv:
        rss0 = srv.rss_kb()

        def send(c, i, body):
            r = c.request("POST", "/push/slow", body, timeout=10)
            if not r.keep_alive():
                c.reconnect()
            return r.status

        statuses, ws = slow_client_run(srv, "/ws/slow", send, 50)
        check(statuses.get(202, 0) >= 8, "fewer than 8 pushes accepted: %s" % statuses)
        check(set(statuses) <= {202, 429}, "unexpected statuses %s" % statuses)
        slow_client_check(srv, ws, statuses, rss0, "push")


@test("1008: a broadcast subscriber that never reads is closed; memory bounded", timeout=60)
def _():
    env = asan_env({"WSGATE_WEBSOCKET_MAX_SEND_BUFFER": "64k"}, quarantine_mb=8)
    with Server(env=env) as srv:
        rss0 = srv.rss_kb()
        fast = srv.ws("/ws/fastsub?topics=firehose")

        def send(c, i, body):
            r = c.request("POST", "/publish/firehose", body, timeout=10)
            if not r.keep_alive():
                c.reconnect()
            # the fast subscriber keeps up and gets every message
            got = recv_all([fast], 1, timeout=3)[fast]
            check(got == [(OP_TEXT, body)], "fast subscriber, message %d: %r"
                  % (i, [(op, len(p)) for op, p in got]))
            return r.status

        statuses, ws = slow_client_run(srv, "/ws/slowsub?topics=firehose", send, 50)
        check_eq(set(statuses), {202}, "publish statuses")
        # the fast subscriber was not punished for the slow one
        r = publish(srv.port, "firehose", b"last")
        check(r.status == 202, "publish after")
        check_eq(fast.recv_message(timeout=3), (OP_TEXT, b"last"), "fast subscriber after")
        fast.close()
        # slow_client_check wants ws_connections_open == 0
        fast.wait_eof(2)
        slow_client_check(srv, ws, statuses, rss0, "publish")



@test("bursts of broadcasts larger than max_send_buffer do not close a healthy reader",
      timeout=90)
def _():
    # A client is slow when the kernel refuses its bytes (judged after a write attempt),
    # not when more than max_send_buffer arrives within one loop iteration. Bursts of 8
    # pipelined 64 KiB publishes (512 KiB, twice max_send_buffer) reach the gateway in one
    # read round; between bursts the publisher waits until the reader (an asyncio
    # python3-websockets client in its own process) has caught up, so the reader is
    # never behind by more than one burst. 100 bursts: it gets all 800; a subscriber
    # that never reads (16 KiB receive buffer) is closed 1008.
    import select
    import subprocess
    env = asan_env({"WSGATE_WEBSOCKET_MAX_SEND_BUFFER": "256k"}, quarantine_mb=8)
    reader_src = (
        "import asyncio, sys, websockets\n"
        "async def main():\n"
        "    n = 0\n"
        "    try:\n"
        "        async with websockets.connect(sys.argv[1], max_size=None) as ws:\n"
        "            print('ready', flush=True)\n"
        "            while n < 800:\n"
        "                await asyncio.wait_for(ws.recv(), 20)\n"
        "                n += 1\n"
        "                print(n, flush=True)\n"
        "    except Exception as e:\n"
        "        print('error', repr(e), flush=True)\n"
        "    print('got', n, flush=True)\n"
        "asyncio.run(main())\n")
    with Server(env=env) as srv:
        reader = subprocess.Popen(
            ["/usr/bin/python3", "-c", reader_src,
             "ws://127.0.0.1:%d/ws/healthy?topics=burst" % srv.port],
            stdout=subprocess.PIPE, text=True)
        lines = []
        try:
            fd = reader.stdout.fileno()
            pending = ""
            ready = b""
            while not ready.endswith(b"\n"):  # unbuffered: select() sees every line
                b = os.read(fd, 1)
                if not b:
                    break
                ready += b
            check_eq(ready.strip(), b"ready", "healthy reader connected")
            stuck = srv.ws("/ws/stuck?topics=burst", rcvbuf=16384)
            body = b"B" * 65536
            req = build_request("POST", "/publish/burst", body)
            statuses = {}
            with srv.http() as c:
                for burst in range(100):
                    c.sock.sendall(req * 8)
                    for _ in range(8):
                        r = c.read_response(timeout=10)
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                    # wait for the reader to catch up (or give up on it)
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        if lines and not lines[-1].isdigit():
                            break
                        if lines and int(lines[-1]) >= 8 * (burst + 1):
                            break
                        if select.select([fd], [], [], 0.5)[0]:
                            chunk = os.read(fd, 65536).decode()
                            if not chunk:
                                break
                            pending += chunk
                            *done, pending = pending.split("\n")
                            lines += [x.strip() for x in done if x.strip()]
                    if lines and not lines[-1].isdigit():
                        break
            out = reader.communicate(timeout=30)[0]
            lines += (pending + out).split("\n")
            lines = [x.strip() for x in lines if x.strip()]
        finally:
            reader.kill()
        tail = " ".join(lines[-4:])
        note("statuses %s, healthy reader ends: %s" % (statuses, tail))
        check_eq(statuses, {202: 800}, "publish statuses")
        check("got 800" in " ".join(lines[-2:]), "healthy reader did not get all 800: %s" % tail)
        check(stuck.wait_eof(10), "the subscriber that never reads is still connected")
        m = metrics(srv.port)
        check(m['wsgate_connections_closed_total{reason="slow"}'] >= 1, "slow closes counted")

run()
