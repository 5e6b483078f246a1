#!/usr/bin/python3
"""test_auth.py — access control of DESIGN.md §8.1 against the real binary: push/publish
and /metrics bearer tokens, the CORS preflight, client JWTs (HS256/RS256/ES256, the three
transports, claims, alg none and HS/RS confusion), Origin, per-IP caps and handshake rate,
X-Forwarded-For behind trusted proxies, SIGHUP reload of push_tokens_file, --mint-token and
--check-config for a bad key file. Every refusal is checked for its exact status while an
authorised client keeps being served; every server log (at debug level) and /metrics is
checked at the end: no token, no "token=", no query string.
Tokens and keys are made with PyJWT and cryptography (Debian python3-jwt,
python3-cryptography; hence /usr/bin/python3). Starts its own wsgate processes."""

import atexit
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403

import jwt  # noqa: E402  (python3-jwt, PyJWT 2.x)
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

SECRET = "raw HS256 secret, not base64: s3cr3t!"
PUSH_TOKEN = "push-tok-4f1c9a7e2b"
METRICS_TOKEN = "metrics-tok-9d2e7c11"
KEYDIR = tempfile.mkdtemp(prefix="wsgate-auth-keys-")
atexit.register(shutil.rmtree, KEYDIR, True)

# Every credential and query string the tests send: none may reach a server log or /metrics.
SENSITIVE = {SECRET, PUSH_TOKEN, METRICS_TOKEN}
FORBIDDEN_IN_LOG = ("token=", "topics=", "?")


def sensitive(*vals):
    for v in vals:
        SENSITIVE.add(v)
        if v.count(".") == 2:  # a JWT: its payload and signature alone are leaks too
            for part in v.split(".")[1:]:
                if len(part) >= 12:
                    SENSITIVE.add(part)
    return vals[0] if len(vals) == 1 else vals


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def now():
    return int(time.time())


def claims(sub, exp=300, **more):
    """Claims for sub; exp is relative to now (None = no exp claim)."""
    c = {"sub": sub, "iat": now()}
    if exp is not None:
        c["exp"] = now() + exp
    c.update(more)
    return c


def hs(sub, exp=300, secret=SECRET, **more):
    return sensitive(jwt.encode(claims(sub, exp, **more), secret, algorithm="HS256"))


def raw_token(header, payload, sign):
    """Hand-made JWT: sign(signing_input bytes) -> signature bytes."""
    si = b64u(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        b64u(json.dumps(payload, separators=(",", ":")).encode())
    return sensitive(si + "." + b64u(sign(si.encode())))


# keys ------------------------------------------------------------------------------------
def _write(name, data):
    p = os.path.join(KEYDIR, name)
    with open(p, "wb") as f:
        f.write(data)
    return p


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUB_PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
RSA_PRIV_PEM = RSA_KEY.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PUB_PEM = EC_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
RSA_PUB = _write("rsa.pub.pem", RSA_PUB_PEM)
RSA_PRIV = _write("rsa.key.pem", RSA_PRIV_PEM)
EC_PUB = _write("ec.pub.pem", EC_PUB_PEM)
RSA1024_PUB = _write("rsa1024.pub.pem", rsa.generate_private_key(
    public_exponent=65537, key_size=1024).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def rs(sub, exp=300, key=RSA_KEY, **more):
    return sensitive(jwt.encode(claims(sub, exp, **more), key, algorithm="RS256"))


def es(sub, exp=300, **more):
    return sensitive(jwt.encode(claims(sub, exp, **more), EC_KEY, algorithm="ES256"))


# server with an authorised bystander and a leak audit -------------------------------------
class Gw(Server):
    """wsgate at debug level. push_token/jwt: what the gateway is configured with (used
    by the helpers to act as an authorised party). On a clean exit: the bystander (if
    any) still gets its push, /metrics has no sensitive text, and after the stop the log
    holds no token, no "token=", no query string."""

    _n = 0

    def __init__(self, env=None, push_token=None, jwt_mint=None, metrics_token=None, **kw):
        e = {"WSGATE_SERVER_LOG_LEVEL": "debug"}
        e.update(env or {})
        super().__init__(env=e, **kw)
        self.push_token = push_token
        self.jwt_mint = jwt_mint   # sub -> token, or None when client auth is off
        self.metrics_token = metrics_token
        self.by = None
        self.by_key = None

    def auth_hdr(self, tok):
        return [("Authorization", "Bearer " + tok)] if tok else []

    def push(self, key, body, token="default", extra=None):
        tok = self.push_token if token == "default" else token
        return push(self.port, key, body, self.auth_hdr(tok) + list(extra or []))

    def publish(self, topic, body, token="default", extra=None):
        tok = self.push_token if token == "default" else token
        return publish(self.port, topic, body, self.auth_hdr(tok) + list(extra or []))

    def client(self, key, query="", extra=None):
        """An authorised WebSocket of key (token in the Authorization header)."""
        hdrs = self.auth_hdr(self.jwt_mint(key)) if self.jwt_mint else []
        return WS.connect(self.port, "/ws/" + key + query, extra_headers=hdrs + list(extra or []))

    def delivered(self, ws, key, what="push"):
        """A push to key reaches ws (proves ws is a working session)."""
        body = ("%s %s %f" % (what, key, time.monotonic())).encode()
        accepted(self.push(key, body), "push to %s" % key)
        check_eq(ws.recv_message(3.0)[1], body, "%s: message on %s" % (what, key))

    def bystander(self):
        Gw._n += 1
        self.by_key = "bystander%d" % Gw._n
        self.by = self.client(self.by_key)
        self.delivered(self.by, self.by_key, "bystander")
        return self.by

    def served(self):
        if self.by is not None:
            self.delivered(self.by, self.by_key, "bystander")

    def metrics(self):
        r = http_request(self.port, "GET", "/metrics", headers=self.auth_hdr(self.metrics_token))
        check_eq(r.status, 200, "/metrics status")
        out = {}
        for line in r.body.decode().splitlines():
            if line and not line.startswith("#"):
                parts = line.split()
                out[parts[0]] = float(parts[1])
        return out, r.body.decode()

    def __exit__(self, et, ev, tb):
        if et is None:
            self.served()
            _, text = self.metrics()
            for s in SENSITIVE:
                check(s not in text, "/metrics holds a token or secret: %r" % s[:40])
            check("token=" not in text, "/metrics holds a query string")
        if self.by is not None:
            self.by.close_socket()
        r = super().__exit__(et, ev, tb)
        if et is None:
            log = self.log_text()
            for s in SENSITIVE:
                check(s not in log, "server log %s holds a token or secret %r..."
                      % (self.log_path, s[:24]))
            for s in FORBIDDEN_IN_LOG:
                check(s not in log, "server log %s holds %r" % (self.log_path, s))
        return r


def jwt_server(env=None, **kw):
    e = {"WSGATE_AUTH_JWT_SECRET": SECRET}
    e.update(env or {})
    return Gw(env=e, jwt_mint=lambda k: hs(k), **kw)


def refused(srv, path, status, headers=None, what=None):
    """An upgrade of path answered exactly status (JSON error; 401 has WWW-Authenticate)."""
    what = what or "upgrade"
    try:
        ws = WS.connect(srv.port, path, extra_headers=headers)
    except HandshakeError as e:
        r = e.response
        check(r is not None, "%s: %s" % (what, e))
        check_json_error(r, status, what)
        if status == 401:
            check_eq(r.header("www-authenticate"), "Bearer", "%s: WWW-Authenticate" % what)
        return r
    ws.close_socket()
    raise AssertionError("%s: answered 101, want %d" % (what, status))


def bearer(tok):
    return [("Authorization", "Bearer " + tok)]


def auth_metric(srv, reason):
    return srv.metrics()[0]['wsgate_auth_refused_total{reason="%s"}' % reason]


def conn_metric(srv, reason):
    return srv.metrics()[0]['wsgate_connections_refused_total{reason="%s"}' % reason]


def clean_env(**kv):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env.update(kv)
    return env


# --- push / publish / metrics tokens ------------------------------------------------------

@test("push: no token 401, wrong token 401 (before key/size checks), right token 202 delivered")
def _():
    env = {"WSGATE_AUTH_PUSH_TOKENS": "other-tok-1, " + PUSH_TOKEN,
           "WSGATE_SERVER_MAX_MESSAGE_SIZE": "1k"}
    with Gw(env=env, push_token=PUSH_TOKEN) as srv:
        with srv.client("p1") as ws:
            srv.bystander()
            cases = [("no Authorization", []),
                     ("wrong token", bearer("wrong-token-x")),
                     ("prefix of a token", bearer(PUSH_TOKEN[:-1])),
                     ("token plus a byte", bearer(PUSH_TOKEN + "x")),
                     ("Basic scheme", [("Authorization", "Basic " + PUSH_TOKEN)]),
                     ("Bearer without a token", [("Authorization", "Bearer")])]
            for what, h in cases:
                r = push(srv.port, "p1", b"nope", h)
                check_json_error(r, 401, "push, " + what)
                check_eq(r.header("www-authenticate"), "Bearer", what + ": WWW-Authenticate")
            # auth comes before the key and size checks (400 / 413 otherwise)
            check_json_error(push(srv.port, "bad..key", b"x", bearer("wrong")), 401, "bad key")
            check_json_error(push(srv.port, "p1", b"x" * 2048), 401, "oversize, no token")
            check(ws.nothing_within(0.2), "a refused push was delivered")
            srv.served()
            check_json_error(srv.push("bad..key", b"x"), 400, "bad key, right token")
            r = srv.push("p1", b"hello with token")
            accepted(r)
            check_eq(r.json(), {"ok": True}, "push body")
            check_eq(ws.recv_message()[1], b"hello with token", "delivered")
            for h in ("bearer " + PUSH_TOKEN, "BEARER   %s  " % PUSH_TOKEN):
                accepted(push(srv.port, "p1", b"scheme", [("Authorization", h)]), repr(h[:9]))
                check_eq(ws.recv_message()[1], b"scheme", "delivered")
            r = push(srv.port, "p1", b"tok 1", bearer("other-tok-1"))
            accepted(r, "the other configured token")
            check_eq(ws.recv_message()[1], b"tok 1", "delivered")
            for p in ("/healthz", "/readyz"):
                check_eq(http_request(srv.port, "GET", p).status, 200, p + " stays open")
            check(auth_metric(srv, "push_token") >= 8, "push_token refusals counted")


@test("publish: no token 401, wrong token 401, right token 202 delivered to subscribers")
def _():
    with Gw(env={"WSGATE_AUTH_PUSH_TOKENS": PUSH_TOKEN}, push_token=PUSH_TOKEN) as srv:
        sensitive("topics=news")
        with srv.client("sub1", "?topics=news") as ws:
            srv.bystander()
            for what, h in (("no token", []), ("wrong token", bearer("nope-nope"))):
                r = publish(srv.port, "news", b"x", h)
                check_json_error(r, 401, "publish, " + what)
                check_eq(r.header("www-authenticate"), "Bearer", "WWW-Authenticate")
            check(ws.nothing_within(0.2), "a refused publish was delivered")
            srv.served()
            accepted(srv.publish("news", b"breaking"), "publish")
            check_eq(ws.recv_message()[1], b"breaking", "broadcast delivered")
            check_eq(auth_metric(srv, "push_token"), 2.0, "push_token refusals")


@test("metrics_token: /metrics without or with a wrong token 401, right token 200")
def _():
    with Gw(env={"WSGATE_AUTH_METRICS_TOKEN": METRICS_TOKEN, "WSGATE_AUTH_PUSH_TOKENS": PUSH_TOKEN},
            metrics_token=METRICS_TOKEN, push_token=PUSH_TOKEN) as srv:
        srv.bystander()
        check_json_error(http_request(srv.port, "GET", "/metrics", headers=bearer(PUSH_TOKEN)),
                         401, "/metrics with the push token")
        check_json_error(push(srv.port, "x", b"x", bearer(METRICS_TOKEN)), 401,
                         "push with the metrics token")
        for what, h in (("no token", []), ("wrong token", bearer("nope-metrics"))):
            for method in ("GET", "HEAD"):
                with Http(srv.port) as c:
                    r = c.request(method, "/metrics", headers=h)
                check_eq(r.status, 401, "%s /metrics, %s" % (method, what))
                check_eq(r.header("www-authenticate"), "Bearer", "WWW-Authenticate")
                if method == "GET":
                    check_json_error(r, 401, what)
                    check(b"wsgate_" not in r.body, "401 body leaks metrics")
        for p in ("/healthz", "/readyz"):
            check_eq(http_request(srv.port, "GET", p).status, 200, p + " stays open")
        srv.served()
        m, _ = srv.metrics()
        check_eq(m['wsgate_auth_refused_total{reason="metrics_token"}'], 5.0, "metrics_token")
        for reason in ("push_token", "client_token", "forbidden", "origin"):
            check('wsgate_auth_refused_total{reason="%s"}' % reason in m, reason + " exported")
        for reason in ("per_ip", "handshake_rate"):
            check('wsgate_connections_refused_total{reason="%s"}' % reason in m, reason)


@test("OPTIONS /push, /publish: 204 + Allow; CORS grants only for a cors_origins Origin")
def _():
    good = "https://app.example.com"
    env = {"WSGATE_AUTH_PUSH_TOKENS": PUSH_TOKEN,
           "WSGATE_SERVER_CORS_ORIGINS": good + ",http://localhost:8080"}
    with Gw(env=env, push_token=PUSH_TOKEN) as srv:
        srv.bystander()
        pre = [("Access-Control-Request-Method", "POST"),
               ("Access-Control-Request-Headers", "authorization,content-type")]
        for path in ("/push/x", "/publish/x"):
            with Http(srv.port) as c:  # preflights carry no Authorization: still 204
                r = c.request("OPTIONS", path, headers=[("Origin", good)] + pre)
                check_eq(r.status, 204, "OPTIONS %s listed origin" % path)
                check_eq(r.header("allow"), "POST, OPTIONS", "Allow")
                check_eq(r.header("access-control-allow-origin"), good, "ACAO echoed")
                check("origin" in (r.header("vary") or "").lower(), "Vary: Origin")
                check_eq(r.header("access-control-allow-methods"), "POST", "ACAM")
                hdrs = (r.header("access-control-allow-headers") or "").lower()
                check("authorization" in hdrs and "content-type" in hdrs, "ACAH %r" % hdrs)
                check_eq(r.header("access-control-max-age"), "600", "max age")
                check(r.header("content-length") in (None, "0"), "204 without a body")
                # keep-alive: the next request on the connection is answered normally
                r = c.request("GET", "/healthz")
                check_eq(r.status, 200, "keep-alive after 204")
            for origin in ("https://evil.example.com", "https://app.example.com:443",
                           "null", None):
                h = ([("Origin", origin)] if origin else []) + pre
                r = http_request(srv.port, "OPTIONS", path, headers=h)
                check_eq(r.status, 204, "OPTIONS %s origin %r" % (path, origin))
                check_eq(r.header("allow"), "POST, OPTIONS", "Allow")
                for k in ("access-control-allow-origin", "access-control-allow-methods",
                          "access-control-allow-headers", "access-control-max-age"):
                    check(r.header(k) is None, "%s granted to origin %r" % (k, origin))
        with srv.client("cors1") as ws:
            r = srv.push("cors1", b"from app", extra=[("Origin", good)])
            accepted(r)
            check_eq(r.header("access-control-allow-origin"), good, "ACAO on the POST answer")
            check_eq(ws.recv_message()[1], b"from app", "delivered")
            r = srv.publish("t", b"x", extra=[("Origin", good)])
            accepted(r, "publish")
            check_eq(r.header("access-control-allow-origin"), good, "ACAO on publish")
            r = srv.push("cors1", b"evil", extra=[("Origin", "https://evil.example.com")])
            accepted(r, "push from an unlisted origin (server side auth is the token)")
            check(r.header("access-control-allow-origin") is None, "ACAO to an unlisted origin")
            ws.recv_message()


# --- client JWTs ------------------------------------------------------------------------------

@test("JWT via Authorization header: 101 (no subprotocol echoed), delivered")
def _():
    with jwt_server() as srv:
        srv.bystander()
        ws = WS.connect(srv.port, "/ws/h1", extra_headers=bearer(hs("h1")))
        with ws:
            check(ws.response.header("sec-websocket-protocol") is None,
                  "101 echoes a subprotocol nobody offered")
            srv.delivered(ws, "h1")


@test("JWT via ?token=: 101, delivered")
def _():
    with jwt_server() as srv:
        srv.bystander()
        tok = hs("q1")
        sensitive("token=" + tok)
        with WS.connect(srv.port, "/ws/q1?token=" + tok) as ws:
            srv.delivered(ws, "q1")
        with WS.connect(srv.port, "/ws/q1?topics=a&token=" + tok) as ws:
            srv.delivered(ws, "q1", "token after topics")


@test("JWT via Sec-WebSocket-Protocol: bearer, <jwt>: 101 carries Sec-WebSocket-Protocol: bearer")
def _():
    with jwt_server() as srv:
        srv.bystander()
        ws = WS.connect(srv.port, "/ws/sp1",
                        extra_headers=[("Sec-WebSocket-Protocol", "bearer, " + hs("sp1"))])
        with ws:
            check_eq(ws.response.header("sec-websocket-protocol"), "bearer", "selected protocol")
            srv.delivered(ws, "sp1")
        with WS.connect(srv.port, "/ws/sp1", extra_headers=[
                ("Sec-WebSocket-Protocol", "chat,bearer,  " + hs("sp1"))]) as ws:
            check_eq(ws.response.header("sec-websocket-protocol"), "bearer", "among others")
            srv.delivered(ws, "sp1", "chat,bearer,<jwt>")
        refused(srv, "/ws/sp1", 401, [("Sec-WebSocket-Protocol", "bearer")], "bearer alone")
        refused(srv, "/ws/sp1", 401, [("Sec-WebSocket-Protocol", "Bearer, " + hs("sp1"))],
                "Bearer (the element is case-sensitive)")
        refused(srv, "/ws/sp1", 401, [("Sec-WebSocket-Protocol", "bearer, not.a.jwt")],
                "bearer with garbage")
        refused(srv, "/ws/sp1", 403, [("Sec-WebSocket-Protocol", "bearer, " + hs("sp2"))],
                "subprotocol token for another session")


@test("JWT via subprotocol split over two header lines (RFC 6455 11.3.4): 101 + bearer")
def _():
    with jwt_server() as srv:
        srv.bystander()
        h = [("Sec-WebSocket-Protocol", "bearer"), ("Sec-WebSocket-Protocol", hs("sp3"))]
        with WS.connect(srv.port, "/ws/sp3", extra_headers=h) as ws:
            check_eq(ws.response.header("sec-websocket-protocol"), "bearer", "selected protocol")
            srv.delivered(ws, "sp3")


@test("JWT: no token 401 + WWW-Authenticate; other sub 403; no sub 403")
def _():
    with jwt_server() as srv:
        srv.bystander()
        refused(srv, "/ws/s1", 401, None, "no token")
        refused(srv, "/ws/s1", 401, [("Authorization", "Basic dTpw")], "Basic auth")
        refused(srv, "/ws/s1", 403, bearer(hs("s2")), "token for s2 on s1")
        refused(srv, "/ws/s1", 403, bearer(hs("S1")), "sub differs in case")
        tok = sensitive(jwt.encode({"exp": now() + 300}, SECRET, algorithm="HS256"))
        refused(srv, "/ws/s1", 403, bearer(tok), "no sub claim")
        srv.served()
        check_eq(auth_metric(srv, "client_token"), 2.0, "client_token refusals")
        check_eq(auth_metric(srv, "forbidden"), 3.0, "forbidden refusals")


@test("JWT exp: expired 401, expired within leeway 101, missing exp 401")
def _():
    with jwt_server() as srv:
        srv.bystander()
        refused(srv, "/ws/e1", 401, bearer(hs("e1", exp=-120)), "expired 120 s ago")
        refused(srv, "/ws/e1", 401, bearer(hs("e1", exp=None)), "no exp")
        tok = sensitive(jwt.encode({"sub": "e1", "exp": str(now() + 300)}, SECRET,
                                   algorithm="HS256"))
        refused(srv, "/ws/e1", 401, bearer(tok), "exp as a string")
        srv.served()
        with WS.connect(srv.port, "/ws/e1", extra_headers=bearer(hs("e1", exp=-20))) as ws:
            srv.delivered(ws, "e1", "expired 20 s ago, leeway 60 s")
    with jwt_server({"WSGATE_AUTH_JWT_LEEWAY": "5s"}) as srv:
        srv.bystander()
        refused(srv, "/ws/e2", 401, bearer(hs("e2", exp=-20)), "expired 20 s ago, leeway 5 s")


@test("JWT nbf/iat: not yet valid 401, nbf within leeway 101, iat in the future 401")
def _():
    with jwt_server() as srv:
        srv.bystander()
        refused(srv, "/ws/n1", 401, bearer(hs("n1", nbf=now() + 300)), "nbf in 300 s")
        refused(srv, "/ws/n1", 401, bearer(hs("n1", iat=now() + 300)), "iat in 300 s")
        srv.served()
        with WS.connect(srv.port, "/ws/n1", extra_headers=bearer(hs("n1", nbf=now() + 20))) as ws:
            srv.delivered(ws, "n1", "nbf in 20 s, leeway 60 s")
        with WS.connect(srv.port, "/ws/n1", extra_headers=bearer(hs("n1", nbf=now() - 5))) as ws:
            srv.delivered(ws, "n1", "nbf passed")


@test("JWT alg none: 401 (empty signature, with a signature, 'None')")
def _():
    with jwt_server() as srv:
        srv.bystander()
        p = claims("a1")
        for hdr in ({"alg": "none", "typ": "JWT"}, {"alg": "None", "typ": "JWT"},
                    {"alg": "NONE"}):
            refused(srv, "/ws/a1", 401, bearer(raw_token(hdr, p, lambda si: b"")),
                    "alg %s, empty signature" % hdr["alg"])
            refused(srv, "/ws/a1", 401, bearer(raw_token(
                hdr, p, lambda si: hmac.new(SECRET.encode(), si, hashlib.sha256).digest())),
                "alg %s, HS256 signature" % hdr["alg"])
        # the same hand-made token with alg HS256 passes (the crafting is right)
        ok = raw_token({"alg": "HS256", "typ": "JWT"}, p,
                       lambda si: hmac.new(SECRET.encode(), si, hashlib.sha256).digest())
        srv.served()
        with WS.connect(srv.port, "/ws/a1", extra_headers=bearer(ok)) as ws:
            srv.delivered(ws, "a1", "hand-made HS256")


@test("JWT confusion: HS256 signed with the public PEM against an RS256 config 401")
def _():
    env = {"WSGATE_AUTH_JWT_PUBLIC_KEY_FILE": RSA_PUB}
    with Gw(env=env, jwt_mint=lambda k: rs(k)) as srv:
        srv.bystander()
        p = claims("c1")
        for secret in (RSA_PUB_PEM, RSA_PUB_PEM.strip()):
            tok = raw_token({"alg": "HS256", "typ": "JWT"}, p,
                            lambda si: hmac.new(secret, si, hashlib.sha256).digest())
            refused(srv, "/ws/c1", 401, bearer(tok), "HS256 with the PEM as secret")
        refused(srv, "/ws/c1", 401, bearer(hs("c1")), "HS256 with no jwt_secret configured")
        refused(srv, "/ws/c1", 401, bearer(es("c1")), "ES256 against an RSA key")
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        refused(srv, "/ws/c1", 401, bearer(rs("c1", key=other)), "RS256 by another key")
        srv.served()
        with WS.connect(srv.port, "/ws/c1", extra_headers=bearer(rs("c1"))) as ws:
            srv.delivered(ws, "c1", "RS256 valid")


@test("JWT RS256 valid 101; ES256 valid 101 (RS256 against the EC key 401)")
def _():
    with Gw(env={"WSGATE_AUTH_JWT_PUBLIC_KEY_FILE": RSA_PUB}, jwt_mint=lambda k: rs(k)) as srv:
        srv.bystander()
        with WS.connect(srv.port, "/ws/r1", extra_headers=bearer(rs("r1"))) as ws:
            srv.delivered(ws, "r1", "RS256")
        sensitive("token=")
        with WS.connect(srv.port, "/ws/r1?token=" + rs("r1")) as ws:
            srv.delivered(ws, "r1", "RS256 via ?token=")
    with Gw(env={"WSGATE_AUTH_JWT_PUBLIC_KEY_FILE": EC_PUB}, jwt_mint=lambda k: es(k)) as srv:
        srv.bystander()
        with WS.connect(srv.port, "/ws/r2",
                        extra_headers=[("Sec-WebSocket-Protocol", "bearer, " + es("r2"))]) as ws:
            check_eq(ws.response.header("sec-websocket-protocol"), "bearer", "protocol")
            srv.delivered(ws, "r2", "ES256")
        refused(srv, "/ws/r2", 401, bearer(rs("r2")), "RS256 against an EC key")
        refused(srv, "/ws/r2", 401, bearer(hs("r2")), "HS256 with no secret")
        der = raw_token({"alg": "ES256", "typ": "JWT"}, claims("r2"),
                        lambda si: EC_KEY.sign(si, ec.ECDSA(hashes.SHA256())))
        refused(srv, "/ws/r2", 401, bearer(der), "ES256 with a DER signature, not r||s")
    # both configured: HS256 and RS256 both accepted
    env = {"WSGATE_AUTH_JWT_PUBLIC_KEY_FILE": RSA_PUB, "WSGATE_AUTH_JWT_SECRET": SECRET}
    with Gw(env=env, jwt_mint=lambda k: hs(k)) as srv:
        srv.bystander()
        for tok in (hs("r3"), rs("r3")):
            with WS.connect(srv.port, "/ws/r3", extra_headers=bearer(tok)) as ws:
                srv.delivered(ws, "r3", "HS256 or RS256 with both keys")


@test("JWT tampered signature or payload: 401")
def _():
    with jwt_server() as srv:
        srv.bystander()
        tok = hs("t1")
        h, p, s = tok.split(".")
        mid = len(s) // 2
        bad_sig = sensitive(h + "." + p + "." + s[:mid] + ("A" if s[mid] != "A" else "B")
                            + s[mid + 1:])
        refused(srv, "/ws/t1", 401, bearer(bad_sig), "one signature character changed")
        forged = b64u(json.dumps(claims("t2")).encode())
        refused(srv, "/ws/t2", 401, bearer(sensitive(h + "." + forged + "." + s)),
                "payload swapped, old signature")
        refused(srv, "/ws/t1", 401, bearer(sensitive(h + "." + p + ".")), "signature removed")
        refused(srv, "/ws/t1", 401, bearer(hs("t1", secret=SECRET + "x")), "another secret")
        refused(srv, "/ws/t1", 401, bearer(sensitive(h + "." + p)), "two parts")
        sign = lambda si: hmac.new(SECRET.encode(), si, hashlib.sha256).digest()  # noqa: E731
        refused(srv, "/ws/t1", 401, bearer(raw_token({"alg": "HS256", "crit": ["exp"]},
                                                     claims("t1"), sign)), "crit header")
        hd = b64u(b'{"alg":"HS256","typ":"JWT"}')
        pd = b64u(('{"sub":"other","sub":"t1","exp":%d}' % (now() + 300)).encode())
        refused(srv, "/ws/t1", 401, bearer(sensitive(hd + "." + pd + "." + b64u(
            sign((hd + "." + pd).encode())))), "duplicate sub in the payload")
        srv.served()
        with WS.connect(srv.port, "/ws/t1", extra_headers=bearer(tok)) as ws:
            srv.delivered(ws, "t1", "the untampered token")
        fexp = sensitive(jwt.encode({"sub": "t1", "exp": now() + 300.5}, SECRET,
                                    algorithm="HS256"))
        with WS.connect(srv.port, "/ws/t1", extra_headers=[("Authorization", "bearer " + fexp)]) as ws:
            srv.delivered(ws, "t1", "fractional exp, lowercase scheme")


@test("JWT topics claim: topic outside 403, inside 101, no claim = no limit")
def _():
    with jwt_server() as srv:
        srv.bystander()
        tok = hs("tp1", topics=["news", "sport"])
        sensitive("topics=news,sport,weather", "topics=weather", "topics=news,sport")
        refused(srv, "/ws/tp1?topics=news,sport,weather", 403, bearer(tok), "one topic outside")
        refused(srv, "/ws/tp1?topics=weather", 403, bearer(tok), "topic outside")
        srv.served()
        with WS.connect(srv.port, "/ws/tp1?topics=news,sport", extra_headers=bearer(tok)) as ws:
            accepted(srv.publish("sport", b"goal"), "publish")
            check_eq(ws.recv_message()[1], b"goal", "broadcast on a granted topic")
        with WS.connect(srv.port, "/ws/tp1?topics=weather",
                        extra_headers=bearer(hs("tp1"))) as ws:
            accepted(srv.publish("weather", b"rain"), "publish")
            check_eq(ws.recv_message()[1], b"rain", "no topics claim: any topic")
        with WS.connect(srv.port, "/ws/tp1", extra_headers=bearer(tok)) as ws:
            srv.delivered(ws, "tp1", "topics claim, no topics asked")
        bad = sensitive(jwt.encode(claims("tp1", topics="news"), SECRET, algorithm="HS256"))
        refused(srv, "/ws/tp1?topics=news", 401, bearer(bad), "topics claim not an array")


@test("JWT aud/iss: checked when jwt_audience / jwt_issuer are set")
def _():
    env = {"WSGATE_AUTH_JWT_AUDIENCE": "wsgate-test", "WSGATE_AUTH_JWT_ISSUER": "https://idp.test"}
    with jwt_server(env) as srv:
        srv.jwt_mint = lambda k: hs(k, aud="wsgate-test", iss="https://idp.test")
        srv.bystander()
        cases = [("wrong aud", dict(aud="other", iss="https://idp.test")),
                 ("wrong iss", dict(aud="wsgate-test", iss="https://evil.test")),
                 ("no aud", dict(iss="https://idp.test")),
                 ("no iss", dict(aud="wsgate-test")),
                 ("aud array without it", dict(aud=["a", "b"], iss="https://idp.test"))]
        for what, c in cases:
            refused(srv, "/ws/au1", 401, bearer(hs("au1", **c)), what)
        srv.served()
        for what, c in (("aud string", dict(aud="wsgate-test", iss="https://idp.test")),
                        ("aud array", dict(aud=["x", "wsgate-test"], iss="https://idp.test"))):
            with WS.connect(srv.port, "/ws/au1", extra_headers=bearer(hs("au1", **c))) as ws:
                srv.delivered(ws, "au1", what)
    with jwt_server() as srv:  # not configured: aud/iss are not checked
        srv.bystander()
        with WS.connect(srv.port, "/ws/au2",
                        extra_headers=bearer(hs("au2", aud="any", iss="any"))) as ws:
            srv.delivered(ws, "au2", "aud/iss unchecked")


# --- Origin, per-IP limits, proxies ----------------------------------------------------------

@test("allowed_origins: foreign Origin 403, listed Origin 101, no Origin 101")
def _():
    good = "https://app.example.com"
    with jwt_server({"WSGATE_SERVER_ALLOWED_ORIGINS": good + ", http://localhost:3000"}) as srv:
        srv.bystander()
        for o in ("https://evil.example.com", "http://app.example.com", good + ":443", "null",
                  good + "/"):
            refused(srv, "/ws/o1", 403, bearer(hs("o1")) + [("Origin", o)], "Origin %s" % o)
        srv.served()
        for o in (good, "http://localhost:3000", None):
            h = bearer(hs("o1")) + ([("Origin", o)] if o else [])
            with WS.connect(srv.port, "/ws/o1", extra_headers=h) as ws:
                srv.delivered(ws, "o1", "Origin %s" % o)
        check_eq(auth_metric(srv, "origin"), 5.0, "origin refusals")
    with jwt_server() as srv:  # default "*": any Origin
        srv.bystander()
        h = bearer(hs("o2")) + [("Origin", "https://anything.example")]
        with WS.connect(srv.port, "/ws/o2", extra_headers=h) as ws:
            srv.delivered(ws, "o2", "allowed_origins *")


@test("max_connections_per_ip: next upgrade 503 + Retry-After; a slot frees after a close")
def _():
    with Gw(env={"WSGATE_SERVER_MAX_CONNECTIONS_PER_IP": "3"}) as srv:
        srv.bystander()  # one of the three
        a = srv.client("ip1")
        b = srv.client("ip2")
        r = refused(srv, "/ws/ip3", 503, None, "4th connection")
        ra = r.header("retry-after")
        check(ra is not None and ra.isdigit() and int(ra) >= 1, "Retry-After %r" % ra)
        check_eq(conn_metric(srv, "per_ip"), 1.0, "per_ip refusals")
        # plain HTTP is not capped
        accepted(srv.push("ip1", b"still served"), "push while at the cap")
        check_eq(a.recv_message()[1], b"still served", "delivered at the cap")
        srv.served()
        check_eq(b.close(), 1000, "close echo")
        b.close_socket()

        def again():
            try:
                return WS.connect(srv.port, "/ws/ip3")
            except HandshakeError as e:
                check(e.response is not None and e.response.status == 503, str(e))
                return None
        c = wait_for(again, 3.0, 0.05, "a slot after a close")
        with c:
            srv.delivered(c, "ip3")
            refused(srv, "/ws/ip4", 503, None, "at the cap again")
            a.close_socket()  # no close handshake: the slot must still free
            c2 = wait_for(again, 3.0, 0.05, "a slot after a dropped connection")
            c2.close_socket()


@test("max_handshakes_per_second_per_ip: 429 + Retry-After, allowed again after ~1 s")
def _():
    with Gw(env={"WSGATE_SERVER_MAX_HANDSHAKES_PER_SECOND_PER_IP": "3"}) as srv:
        srv.bystander()  # token 1
        a = srv.client("hr1")  # 2
        b = srv.client("hr2")  # 3
        r = refused(srv, "/ws/hr3", 429, None, "4th handshake within a second")
        ra = r.header("retry-after")
        check(ra is not None and ra.isdigit() and int(ra) >= 1, "Retry-After %r" % ra)
        check_eq(conn_metric(srv, "handshake_rate"), 1.0, "handshake_rate refusals")
        srv.served()
        accepted(srv.push("hr1", b"x"), "push is not rate limited")
        a.recv_message()
        time.sleep(1.1)
        with srv.client("hr3") as c:
            srv.delivered(c, "hr3", "after a second")
        a.close_socket()
        b.close_socket()


@test("handshake rate: upgrades refused for a bad token use up the budget (no free guesses)")
def _():
    env = {"WSGATE_SERVER_MAX_HANDSHAKES_PER_SECOND_PER_IP": "2"}
    with jwt_server(env) as srv:
        refused(srv, "/ws/g1", 401, bearer(hs("g1", secret="wrong")), "guess 1")
        refused(srv, "/ws/g1", 401, None, "guess 2 (no token)")
        refused(srv, "/ws/g1", 429, bearer(hs("g1")), "a valid token after two guesses")
        check_eq(conn_metric(srv, "handshake_rate"), 1.0, "handshake_rate refusals")
        time.sleep(1.1)
        with WS.connect(srv.port, "/ws/g1", extra_headers=bearer(hs("g1"))) as ws:
            srv.delivered(ws, "g1", "after a second")


@test("a repeated Origin or Authorization header is refused, whichever copy is good")
def _():
    good = "https://app.example.com"
    with jwt_server({"WSGATE_SERVER_ALLOWED_ORIGINS": good}) as srv:
        srv.bystander()
        for pair in (("https://evil.example", good), (good, "https://evil.example"), (good, good)):
            h = bearer(hs("d1")) + [("Origin", pair[0]), ("Origin", pair[1])]
            refused(srv, "/ws/d1", 403, h, "two Origin headers %s" % (pair,))
        srv.served()
    with Server(env={"WSGATE_AUTH_PUSH_TOKENS": PUSH_TOKEN}) as srv:
        two = [("Authorization", "Bearer nope"), ("Authorization", "Bearer " + PUSH_TOKEN)]
        for hdrs in (two, two[::-1]):
            r = http_request(srv.port, "POST", "/push/d1", b"x", hdrs)
            check_json_error(r, 401, "push with two Authorization headers")
        accepted(http_request(srv.port, "POST", "/push/d1", b"x", two[1:]), "one good header")


@test("X-Forwarded-For ignored without trusted_proxies (socket peer counts)")
def _():
    with Gw(env={"WSGATE_SERVER_MAX_CONNECTIONS_PER_IP": "2"}) as srv:
        srv.bystander()
        a = srv.client("x1", extra=[("X-Forwarded-For", "10.0.0.1")])
        refused(srv, "/ws/x2", 503, [("X-Forwarded-For", "10.0.0.2")], "spoofed XFF")
        srv.served()
        a.close_socket()


@test("X-Forwarded-For with trusted_proxies: client = rightmost untrusted hop")
def _():
    env = {"WSGATE_SERVER_MAX_CONNECTIONS_PER_IP": "1",
           "WSGATE_SERVER_TRUSTED_PROXIES": "127.0.0.1/32"}
    with Gw(env=env) as srv:
        srv.bystander()  # 127.0.0.1 itself
        keep = []
        xff = lambda v: [("X-Forwarded-For", v)]  # noqa: E731
        keep.append(srv.client("y1", extra=xff("10.0.0.1")))
        keep.append(srv.client("y2", extra=xff("10.0.0.2")))
        refused(srv, "/ws/y3", 503, xff("10.0.0.1"), "10.0.0.1 again")
        refused(srv, "/ws/y3", 503, xff("10.0.0.9, 10.0.0.1"), "spoofed left hop")
        refused(srv, "/ws/y3", 503, None, "the proxy itself, no XFF")
        keep.append(srv.client("y4", extra=xff("10.0.0.1, 10.0.0.3")))
        keep.append(srv.client("y5", extra=xff("10.0.0.4, 127.0.0.1")))  # trusted hop skipped
        refused(srv, "/ws/y6", 503, xff("10.0.0.4"), "10.0.0.4 via two proxies, again")
        # a malformed hop stops the walk: the proxy's own address (already at its cap)
        for bad in ("10.0.0.7, garbage", "10.0.0.7, 10.0.0.8:80", "unknown", "[10.0.0.7]"):
            refused(srv, "/ws/y7", 503, xff(bad), "malformed hop %r" % bad)
        keep.append(srv.client("y8", extra=xff("2001:db8::1")))
        # two X-Forwarded-For lines are one list: the rightmost hop is in the last line
        keep.append(srv.client("y9", extra=xff("10.0.0.11") + xff("10.0.0.12")))
        refused(srv, "/ws/y9", 503, xff("10.0.0.13") + xff("10.0.0.12"), "10.0.0.12 again")
        srv.served()
        for ws, k in zip(keep, ("y1", "y2", "y4", "y5", "y8", "y9")):
            srv.delivered(ws, k)
            ws.close_socket()


# --- reload, broker work, CLI -----------------------------------------------------------------

@test("SIGHUP reloads push_tokens_file; a ws client stays connected and keeps receiving")
def _():
    old, new = "file-tok-old-11aa", "file-tok-new-22bb"
    sensitive(old, new)
    path = os.path.join(KEYDIR, "push_tokens")
    with open(path, "w") as f:
        f.write("# publishers\n\n  %s  \n" % old)
    with Gw(env={"WSGATE_AUTH_PUSH_TOKENS_FILE": path}, push_token=old) as srv:
        with srv.client("hup") as ws:
            srv.bystander()
            accepted(srv.push("hup", b"one"), "old token")
            check_eq(ws.recv_message()[1], b"one", "delivered")
            check_json_error(srv.push("hup", b"x", token=new), 401, "new token before reload")
            with open(path + ".tmp", "w") as f:
                f.write("# rotated\n%s\n" % new)
            os.rename(path + ".tmp", path)
            srv.signal(signal.SIGHUP)
            wait_for(lambda: srv.push("hup", b"two", token=new).status == 202, 3.0, 0.05,
                     "the new token accepted")
            srv.push_token = new
            check_eq(ws.recv_message()[1], b"two", "delivered after the reload")
            check_json_error(srv.push("hup", b"x", token=old), 401, "removed token")
            # a bad file keeps the old set
            with open(path, "w") as f:
                f.write("has a space\n")
            srv.signal(signal.SIGHUP)
            wait_for(lambda: "reload_failed" in srv.log_text(), 3.0, 0.05, "reload_failed logged")
            accepted(srv.push("hup", b"three"), "token kept after a bad file")
            check_eq(ws.recv_message()[1], b"three", "delivered")
            os.unlink(path)
            srv.signal(signal.SIGHUP)
            wait_for(lambda: srv.log_text().count("reload_failed") >= 2, 3.0, 0.05,
                     "reload_failed for a missing file")
            accepted(srv.push("hup", b"four"), "token kept after a missing file")
            check_eq(ws.recv_message()[1], b"four", "delivered")
            check(srv.alive(), "server died on SIGHUP")
            srv.served()


@test("push_tokens_file with no token refuses every push; SIGHUP without a file is harmless")
def _():
    path = os.path.join(KEYDIR, "empty_tokens")
    with open(path, "w") as f:
        f.write("# nobody yet\n\n")
    with Gw(env={"WSGATE_AUTH_PUSH_TOKENS_FILE": path}) as srv:
        check_json_error(push(srv.port, "e", b"x"), 401, "no token, empty file")
        check_json_error(push(srv.port, "e", b"x", bearer("#")), 401, "'#' as a token")
        check_json_error(push(srv.port, "e", b"x", bearer("nobody")), 401, "a comment word")
    with Gw(env={"WSGATE_AUTH_PUSH_TOKENS": PUSH_TOKEN}, push_token=PUSH_TOKEN) as srv:
        with srv.client("nf") as ws:
            srv.signal(signal.SIGHUP)
            wait_for(lambda: "event=reload" in srv.log_text(), 3.0, 0.05, "reload logged")
            check(srv.alive(), "SIGHUP without a file killed the server")
            srv.delivered(ws, "nf", "after SIGHUP")


@test("a refused upgrade consumes nothing queued for the session")
def _():
    env = {"WSGATE_SERVER_ALLOWED_ORIGINS": "https://app.example.com"}
    with jwt_server(env) as srv:
        srv.bystander()
        accepted(srv.push("q1", b"queued-1"), "push to an offline session")
        accepted(srv.push("q1", b"queued-2"), "push to an offline session")
        refused(srv, "/ws/q1", 401, None, "no token")
        refused(srv, "/ws/q1", 401, bearer(hs("q1", exp=-600)), "expired")
        refused(srv, "/ws/q1", 403, bearer(hs("other")), "other sub")
        refused(srv, "/ws/q1", 403, bearer(hs("q1")) + [("Origin", "https://evil.test")],
                "foreign origin")
        refused(srv, "/ws/q1?topics=x", 403, bearer(hs("q1", topics=["y"])), "topic")
        sensitive("topics=x")
        srv.served()
        with srv.client("q1") as ws:
            check_eq(recv_n(ws, 2, 3.0), [b"queued-1", b"queued-2"], "queued messages, in order")
            check(ws.nothing_within(0.2), "duplicate delivery")


@test("--mint-token: round trip accepted; errors exit 1 with a message")
def _():
    r = subprocess.run([BIN, "--mint-token", "minted1", "--ttl", "10m"], capture_output=True,
                       env=clean_env(WSGATE_AUTH_JWT_SECRET=SECRET), timeout=5)
    check_eq(r.returncode, 0, "mint exit (stderr %r)" % r.stderr)
    tok = sensitive(r.stdout.decode().strip())
    check_eq(r.stdout.decode().count("\n"), 1, "one line")
    check_eq(jwt.get_unverified_header(tok).get("alg"), "HS256", "alg")
    c = jwt.decode(tok, SECRET, algorithms=["HS256"])
    check_eq(c["sub"], "minted1", "sub")
    check(abs(c["exp"] - c["iat"] - 600) <= 1 and abs(c["iat"] - now()) <= 5,
          "iat/exp %r" % c)
    with jwt_server() as srv:
        srv.bystander()
        with WS.connect(srv.port, "/ws/minted1", extra_headers=bearer(tok)) as ws:
            srv.delivered(ws, "minted1", "minted token")
        refused(srv, "/ws/minted2", 403, bearer(tok), "minted token, other session")
    r = subprocess.run([BIN, "--mint-token", "minted1"], capture_output=True,
                       env=clean_env(WSGATE_AUTH_JWT_SECRET=SECRET), timeout=5)
    c = jwt.decode(sensitive(r.stdout.decode().strip()), SECRET, algorithms=["HS256"])
    check(abs(c["exp"] - c["iat"] - 3600) <= 1, "default ttl 1h: %r" % c)
    for what, args, env, word in (
            ("no secret", ["--mint-token", "s1"], clean_env(), "jwt_secret"),
            ("bad session key", ["--mint-token", "bad..key"],
             clean_env(WSGATE_AUTH_JWT_SECRET=SECRET), "bad..key"),
            ("bad ttl", ["--mint-token", "s1", "--ttl", "soon"],
             clean_env(WSGATE_AUTH_JWT_SECRET=SECRET), "ttl")):
        r = subprocess.run([BIN] + args, capture_output=True, env=env, timeout=5)
        check_eq(r.returncode, 1, what + " exit")
        check_eq(r.stdout, b"", what + ": nothing on stdout")
        err = r.stderr.decode()
        check(word in err, "%s: stderr %r does not name %r" % (what, err, word))
        check(SECRET not in err, what + ": the secret is echoed")


@test("--check-config: bad jwt_public_key_file fails naming the key")
def _():
    missing = os.path.join(KEYDIR, "does-not-exist.pem")
    for what, f in (("missing file", missing), ("private key PEM", RSA_PRIV),
                    ("RSA 1024", RSA1024_PUB), ("not a PEM", os.path.join(KEYDIR, "junk"))):
        if what == "not a PEM":
            with open(f, "w") as fh:
                fh.write("hello\n")
        r = subprocess.run([BIN, "--check-config"], capture_output=True, timeout=5,
                           env=clean_env(WSGATE_AUTH_JWT_PUBLIC_KEY_FILE=f))
        out = (r.stdout + r.stderr).decode()
        check(r.returncode != 0, "%s: exit 0; output %r" % (what, out))
        check("jwt_public_key_file" in out, "%s: output %r does not name the key" % (what, out))
        check(b"configuration ok" not in r.stdout, what + ": says ok")
        body = RSA_PRIV_PEM.decode().splitlines()[1]
        check(body not in out, what + ": private key material echoed")
    for f in (RSA_PUB, EC_PUB):
        r = subprocess.run([BIN, "--check-config"], capture_output=True, timeout=5,
                           env=clean_env(WSGATE_AUTH_JWT_PUBLIC_KEY_FILE=f))
        check_eq(r.returncode, 0, "good key %s: %r" % (f, r.stderr))


run()
