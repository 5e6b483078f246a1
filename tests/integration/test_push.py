#!/usr/bin/python3
"""test_push.py — push/publish -> WebSocket delivery on the memory broker (DESIGN.md §2,
§4): byte-exact delivery, the text/binary rule, consume-once across sockets, offline
buffering, TTL, max_queue 429, broadcast topics. Does NOT test HTTP framing or close
codes (test_http.py, test_ws.py). Starts its own wsgate processes ($WSGATE_BIN)."""

import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403


def check_accepted(r, what="push"):
    check(r.status == 202, "%s: status %d, want 202:\n%s" % (what, r.status, r.describe()))


@test("push answers 202 with JSON {\"ok\":true}")
def _():
    with Server() as srv:
        r = push(srv.port, "s1", b"hello")
        check_accepted(r)
        ct = (r.header("content-type") or "").lower()
        check(ct.startswith("application/json"), "Content-Type %r" % ct)
        check_eq(r.json(), {"ok": True}, "push body")
        r = publish(srv.port, "t1", b"hello")
        check_accepted(r, "publish")


@test("push -> deliver byte-exact, frame type follows the bytes")
def _():
    cases = [
        ("ascii text", b"hello world", OP_TEXT),
        ("utf-8 text", "h\u00e9llo \u20ac \U0001F600".encode("utf-8"), OP_TEXT),
        ("empty body", b"", OP_TEXT),
        ("NULs (U+0000 is valid UTF-8)", b"\x00a\x00b\x00", OP_TEXT),
        ("NULs and invalid UTF-8", b"\x00\xff\x00", OP_BINARY),
        ("invalid utf-8", b"\xff\xfe\xfd", OP_BINARY),
        ("truncated utf-8", b"abc\xe2\x82", OP_BINARY),
        ("overlong utf-8", b"\xc0\xaf", OP_BINARY),
        ("utf-16 surrogate", b"\xed\xa0\x80", OP_BINARY),
        ("above U+10FFFF", b"\xf4\x90\x80\x80", OP_BINARY),
        ("126..65535 length", b"x" * 300, OP_TEXT),
        ("64-bit length", bytes(range(256)) * 1024, OP_BINARY),
        ("large utf-8", ("\u00e9" * 100000).encode("utf-8"), OP_TEXT),
    ]
    with Server() as srv:
        with srv.ws("/ws/exact") as ws:
            for name, body, want_op in cases:
                r = push(srv.port, "exact", body)
                check_accepted(r, name)
                op, data = ws.recv_message()
                check_eq(data, body, "%s payload" % name)
                check_eq(op, want_op, "%s opcode" % name)


@test("publish -> deliver byte-exact, same text/binary rule as push")
def _():
    with Server() as srv:
        with srv.ws("/ws/p1?topics=news") as ws:
            for body, want_op in [(b"caf\xc3\xa9", OP_TEXT), (b"\x00\xff", OP_BINARY),
                                  (b"", OP_TEXT)]:
                check_accepted(publish(srv.port, "news", body), "publish")
                op, data = ws.recv_message()
                check_eq(data, body, "payload")
                check_eq(op, want_op, "opcode for %r" % body)


@test("frame_type = binary forces binary frames")
def _():
    with Server(env={"WSGATE_WEBSOCKET_FRAME_TYPE": "binary"}) as srv:
        with srv.ws("/ws/fb") as ws:
            check_accepted(push(srv.port, "fb", b"plain text"))
            op, data = ws.recv_message()
            check_eq((op, data), (OP_BINARY, b"plain text"), "frame")


@test("session keys: 128 bytes and dotted keys are accepted")
def _():
    with Server() as srv:
        for key in ["a" * 128, "svc1.user42", "A-z_0:9.x", "x"]:
            with srv.ws("/ws/" + key) as ws:
                check_accepted(push(srv.port, key, b"k"), "push to %r" % key)
                check_eq(ws.recv_message(), (OP_TEXT, b"k"), "message for %r" % key)


@test("consume-once across two sockets of one session")
def _():
    n = 40
    with Server() as srv:
        a = srv.ws("/ws/twin")
        b = srv.ws("/ws/twin")
        for i in range(n):
            check_accepted(push(srv.port, "twin", b"m%d" % i))
        got = recv_all([a, b], n, timeout=2.0)
        msgs = [p for c in (a, b) for op, p in got[c]]
        note("socket A got %d, socket B got %d" % (len(got[a]), len(got[b])))
        check_eq(sorted(msgs), sorted(b"m%d" % i for i in range(n)), "union of deliveries")
        # each socket sees its share in push order
        for c in (a, b):
            idx = [int(p[1:]) for op, p in got[c]]
            check_eq(idx, sorted(idx), "order on one socket")
        check(a.nothing_within(0.2) and b.nothing_within(0.1), "a duplicate arrived late")
        a.close_socket()
        b.close_socket()


@test("offline buffering: messages pushed before connect arrive in order")
def _():
    with Server() as srv:
        for i in range(10):
            check_accepted(push(srv.port, "later", b"msg-%d" % i))
        with srv.ws("/ws/later") as ws:
            for i in range(10):
                check_eq(ws.recv_message(), (OP_TEXT, b"msg-%d" % i), "message %d" % i)
            check(ws.nothing_within(0.2), "extra message after the buffered ones")
        # consumed once: a second connection gets nothing
        with srv.ws("/ws/later") as ws:
            check(ws.nothing_within(0.2), "buffered messages delivered twice")


@test("buffered then live messages arrive in push order")
def _():
    with Server() as srv:
        for i in range(50):
            check_accepted(push(srv.port, "mix", b"m%d" % i))
        with srv.ws("/ws/mix") as ws:
            with srv.http() as c:
                for i in range(50, 100):
                    check_accepted(c.request("POST", "/push/mix", b"m%d" % i))
            got = [ws.recv_message()[1] for _ in range(100)]
            check_eq(got, [b"m%d" % i for i in range(100)], "delivery order")


@test("a message pushed while a socket drops is kept for the next one")
def _():
    with Server() as srv:
        ws = srv.ws("/ws/drop")
        ws.close(1000)
        ws.close_socket()
        time.sleep(0.1)
        check_accepted(push(srv.port, "drop", b"after-close"))
        with srv.ws("/ws/drop") as ws2:
            check_eq(ws2.recv_message(), (OP_TEXT, b"after-close"), "message")


@test("TTL: offline messages older than broker.ttl are dropped")
def _():
    with Server(env={"WSGATE_BROKER_TTL": "1s"}) as srv:
        check_accepted(push(srv.port, "ttl", b"old"))
        time.sleep(1.5)
        check_accepted(push(srv.port, "ttl", b"new"))
        with srv.ws("/ws/ttl") as ws:
            check_eq(ws.recv_message(), (OP_TEXT, b"new"), "first message")
            check(ws.nothing_within(0.3), "expired message delivered")


@test("max_queue: the next push is 429 with Retry-After and a JSON body")
def _():
    env = {"WSGATE_BROKER_MAX_QUEUE": "3", "WSGATE_BROKER_RETRY_AFTER": "2s"}
    with Server(env=env) as srv:
        for i in range(3):
            check_accepted(push(srv.port, "full", b"q%d" % i), "push %d" % i)
        r = push(srv.port, "full", b"q3")
        check_json_error(r, 429, "4th push")
        check_eq(r.header("retry-after"), "2", "Retry-After")
        # another session is not affected
        check_accepted(push(srv.port, "other", b"x"), "push to another session")
        with srv.ws("/ws/full") as ws:
            for i in range(3):
                check_eq(ws.recv_message(), (OP_TEXT, b"q%d" % i), "queued message %d" % i)
            check(ws.nothing_within(0.2), "the rejected message was delivered")
            # drained: pushes are accepted again
            check_accepted(push(srv.port, "full", b"q4"), "push after drain")
            check_eq(ws.recv_message(), (OP_TEXT, b"q4"), "message after drain")


@test("broadcast: 100 clients on ?topics=t get one /publish/t each, others nothing")
def _():
    with Server() as srv:
        subs = []
        for i in range(100):
            topics = "t" if i % 2 else "a,t,b"
            subs.append(srv.ws("/ws/bc%d?topics=%s" % (i, topics)))
        others = [srv.ws("/ws/nobc%d?topics=other" % i) for i in range(5)]
        others += [srv.ws("/ws/notopic%d" % i) for i in range(5)]
        body = b"broadcast \x00 payload \xff"
        check_accepted(publish(srv.port, "t", body), "publish")
        got = recv_all(subs, 1, timeout=5.0)
        missing = [i for i, c in enumerate(subs) if got[c] != [(OP_BINARY, body)]]
        check(not missing, "%d subscribers did not get exactly the message, e.g. #%s: %r"
              % (len(missing), missing[:5], got[subs[missing[0]]] if missing else None))
        late = recv_all(subs + others, 1, timeout=0.3)
        extra = [c.path for c in subs + others if late[c]]
        check(not extra, "unexpected extra frames on %s" % extra[:5])
        # a publish with no subscriber is still accepted, and pushes still route per session
        check_accepted(publish(srv.port, "nobody", b"x"), "publish to empty topic")
        check_accepted(push(srv.port, "bc7", b"direct"), "push to a subscriber's session")
        check_eq(subs[7].recv_message(), (OP_TEXT, b"direct"), "direct push")
        for c in subs + others:
            c.close_socket()


@test("topics: invalid names and too many topics are 400")
def _():
    with Server(env={"WSGATE_WEBSOCKET_MAX_TOPICS": "3"}) as srv:
        bad = ["/ws/x?topics=a..b", "/ws/x?topics=.a", "/ws/x?topics=a.",
               "/ws/x?topics=a,b$c", "/ws/x?topics=a,,b", "/ws/x?topics=" + "t" * 129,
               "/ws/x?topics=a,b,c,d"]
        for path in bad:
            try:
                ws = srv.ws(path)
                ws.close_socket()
                raise AssertionError("%s was accepted (101)" % path)
            except HandshakeError as e:
                check(e.response is not None, "%s: %s" % (path, e))
                check_json_error(e.response, 400, path)
        with srv.ws("/ws/x?topics=a,b.c,d") as ws:
            check_accepted(publish(srv.port, "b.c", b"ok"))
            check_eq(ws.recv_message(), (OP_TEXT, b"ok"), "3 topics at the limit")
        for path in ["/publish/a..b", "/publish/.x", "/publish/" + "t" * 129, "/publish/"]:
            check_json_error(http_request(srv.port, "POST", path, b"x"), 400, path)


run()
