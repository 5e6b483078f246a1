"""test_browser.py — the demo page (/demo/) and client (/wsgate.js) in a real browser:
Debian's headless Chromium, driven over the DevTools protocol (CDP) with the integration
harness's own WebSocket client (stdlib only). Checks: both files are served byte-exact
from web/ with [server] demo = on; the page connects, lists text, UTF-8 and binary pushes
in #messages in order; it reconnects after the gateway is SIGKILLed and restarted on the
same port and shows a message pushed after; its form pushes to its own session; a JWT in
?token= goes by the `bearer` subprotocol (never in the URL or the log) and a wrong token
gets nothing. A screenshot of the page is saved in the log directory (path in a `#` line).

Each test starts its own Chromium (fresh --user-data-dir, --remote-debugging-port=0, the
port read from DevToolsActivePort) in its own process group and kills it by PID (group)
at the end. Needs chromium-headless-shell (or chromium): scripts/deps.sh test installs it.
Run: /usr/bin/python3 tests/browser/test_browser.py [NAME-SUBSTRING]
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from wsgate_test import *  # noqa: E402,F401,F403

WEB = os.path.join(HERE, "..", "..", "web")
CANDIDATES = ["/usr/lib/chromium/chromium-headless-shell",  # the real binary, not the sh wrapper
              "/usr/bin/chromium-headless-shell", "/usr/lib/chromium/chromium", "/usr/bin/chromium"]


def chromium_bin():
    for p in [os.environ.get("WSGATE_CHROMIUM")] + CANDIDATES:
        if p and os.access(p, os.X_OK):
            return p
    raise AssertionError("no Chromium found (%s): run scripts/deps.sh test "
                         "(installs chromium-headless-shell)" % ", ".join(CANDIDATES))


class Cdp:
    """One DevTools connection (a page target). call() sends a command and returns its
    result; events that arrive meanwhile are kept in self.events."""

    def __init__(self, port, path):
        self.ws = WS.connect(port, path, timeout=10.0)
        self.seq = 0
        self.events = []

    def call(self, method, params=None, timeout=10.0):
        self.seq += 1
        my = self.seq
        self.ws.send_text(json.dumps({"id": my, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestTimeout("CDP %s: no answer in %.1fs" % (method, timeout))
            op, data = self.ws.recv_message(left)
            m = json.loads(data.decode("utf-8"))
            if m.get("id") == my:
                if "error" in m:
                    raise AssertionError("CDP %s: %s" % (method, m["error"]))
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def eval(self, expr, timeout=5.0):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                           "awaitPromise": True}, timeout)
        if "exceptionDetails" in r:
            raise AssertionError("page JS %r threw: %s" % (expr[:80], r["exceptionDetails"]))
        return r["result"].get("value")

    def wait(self, expr, timeout, what):
        """Poll a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.eval(expr)
            if v:
                return v
            if time.monotonic() >= deadline:
                raise TestTimeout("timed out after %.1fs waiting for %s (%s)" % (timeout, what, expr))
            time.sleep(0.05)

    def errors(self):
        """JS exceptions and console.error calls seen so far."""
        out = []
        for e in self.events:
            if e["method"] == "Runtime.exceptionThrown":
                d = e["params"]["exceptionDetails"]
                out.append("exception: %s" % (d.get("exception", {}).get("description") or d.get("text")))
            elif e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                out.append("console.error: %s" % [a.get("value") for a in e["params"]["args"]])
        return out

    def close(self):
        self.ws.close_socket()


class Browser:
    """Headless Chromium in its own process group; page() gives a Cdp on its first tab."""

    def __init__(self, name="chromium"):
        self.udd = tempfile.mkdtemp(prefix="wsgate-chromium-")
        self.log_path = os.path.join(LOGDIR, "%s-%d.log" % (name, os.getpid()))
        self.proc = None
        self.port = None

    def __enter__(self):
        args = [chromium_bin(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-proxy-server", "--hide-scrollbars", "--mute-audio",
                "--window-size=1100,760", "--user-data-dir=" + self.udd,
                "--remote-debugging-port=0", "about:blank"]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        f = os.path.join(self.udd, "DevToolsActivePort")

        def port_file():
            if self.proc.poll() is not None:
                raise AssertionError("chromium exited with %s; log %s" % (self.proc.returncode,
                                                                          self.log_path))
            try:
                with open(f) as fh:
                    lines = fh.read().split("\n")
                return int(lines[0]) if len(lines) >= 2 and lines[1] else None
            except (OSError, ValueError):
                return None

        self.port = wait_for(port_file, timeout=15.0, interval=0.05, what="DevToolsActivePort")
        return self

    def page(self):
        def first_page():
            r = http_request(self.port, "GET", "/json/list")
            pages = [t for t in json.loads(r.body) if t.get("type") == "page"]
            return pages[0] if pages else None

        t = wait_for(first_page, timeout=5.0, what="a page target")
        cdp = Cdp(self.port, "/devtools/page/" + t["id"])
        cdp.call("Runtime.enable")
        cdp.call("Page.enable")
        return cdp

    def __exit__(self, *a):
        # SIGKILL by PID (a profile in a temp dir needs no clean shutdown), then the rest
        # of its own process group (zygote, renderers), until none of them is running
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            deadline = time.monotonic() + 3.0
            while group_running(self.proc.pid) and time.monotonic() < deadline:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.05)
        self.log.close()
        shutil.rmtree(self.udd, ignore_errors=True)
        return False


def group_running(pgid):
    """True while a process of group pgid exists that is not a zombie."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def navigate(cdp, url):
    cdp.call("Page.navigate", {"url": url})
    cdp.wait("document.readyState === 'complete' && window.wsgateDemo !== undefined", 10,
             "the demo page to load")


def items(cdp):
    """#messages children as [{kind, size, text}] (text of the .body part)."""
    return cdp.eval("""[...document.querySelectorAll('#messages > *')].map(e => ({
        kind: e.dataset.kind, size: Number(e.dataset.size),
        text: e.querySelector('.body').textContent}))""")


def state(cdp):
    return cdp.eval("document.getElementById('state').dataset.state")


def wait_items(cdp, n, timeout=5.0):
    return cdp.wait("document.querySelectorAll('#messages > *').length >= %d && "
                    "document.querySelectorAll('#messages > *').length" % n, timeout,
                    "%d entries in #messages" % n)


def mint(secret, sub):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    env["WSGATE_AUTH_JWT_SECRET"] = secret
    out = subprocess.run([BIN, "--mint-token", sub, "--ttl", "5m"], env=env, capture_output=True,
                         timeout=10)
    check_eq(out.returncode, 0, "--mint-token exit status (%s)" % out.stderr)
    return out.stdout.decode().strip()


def no_page_errors(cdp):
    errs = cdp.errors()
    check(not errs, "page errors:\n" + "\n".join(errs))


@test("demo page and /wsgate.js are served byte-exact from web/ when demo = on", timeout=15)
def _():
    with Server(env={"WSGATE_SERVER_DEMO": "on"}) as srv:
        for path, f, ctype in [("/wsgate.js", "wsgate.js", "application/javascript"),
                               ("/demo/", "demo/index.html", "text/html"),
                               ("/demo?session=x", "demo/index.html", "text/html")]:
            r = http_request(srv.port, "GET", path)
            check_eq(r.status, 200, "GET %s" % path)
            check((r.header("content-type") or "").startswith(ctype), "%s: Content-Type %r"
                  % (path, r.header("content-type")))
            with open(os.path.join(WEB, f), "rb") as fh:
                check(r.body == fh.read(), "%s differs from web/%s (rebuild: make)" % (path, f))


@test("Chromium: demo lists text, UTF-8, binary in order; reconnects after kill+restart; "
      "form push; screenshot", timeout=45)
def _():
    session = "browser-demo"
    srv = Server(env={"WSGATE_SERVER_DEMO": "on"}).start()
    try:
        with Browser() as b:
            cdp = b.page()
            navigate(cdp, "http://127.0.0.1:%d/demo/?session=%s" % (srv.port, session))
            cdp.wait("document.getElementById('state').dataset.state === 'open'", 5, "state open")
            check_eq(cdp.eval("wsgateDemo.client.url"), "ws://127.0.0.1:%d/ws/%s" % (srv.port, session),
                     "client url")
            binary = bytes([0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff])
            for body in [b"plain text", "h\u00e9llo \u2713".encode("utf-8"), binary]:
                accepted(push(srv.port, session, body))
            wait_items(cdp, 3)
            got = items(cdp)
            check_eq(got, [{"kind": "text", "size": 10, "text": "plain text"},
                           {"kind": "text", "size": 10, "text": "h\u00e9llo \u2713"},
                           {"kind": "binary", "size": 6, "text": "6 bytes: 00 01 7f 80 fe ff"}],
                     "#messages after 3 pushes")

            # kill -9 the gateway, restart it on the same port: the page comes back
            port = srv.port
            srv.proc.kill()
            srv.proc.wait(5)
            t0 = time.monotonic()
            cdp.wait("document.getElementById('state').dataset.state === 'reconnecting'", 5,
                     "state reconnecting after the kill")
            srv = Server(env={"WSGATE_SERVER_DEMO": "on",
                              "WSGATE_SERVER_LISTEN": "127.0.0.1:%d" % port}).start()
            check_eq(srv.port, port, "restarted gateway's port")
            accepted(push(srv.port, session, "after the restart"))
            cdp.wait("wsgateDemo.opens === 2 && document.getElementById('state').dataset.state"
                     " === 'open'", 10, "the page to reconnect")
            wait_items(cdp, 4)
            note("page reconnected %.2fs after the kill" % (time.monotonic() - t0))
            check_eq(items(cdp)[3], {"kind": "text", "size": 17, "text": "after the restart"},
                     "4th entry (pushed after the restart)")

            # the page's own form pushes to its session
            cdp.eval("document.getElementById('push-body').value = 'sent by the form \u2192 ok';"
                     "document.getElementById('push-send').click(); true")
            wait_items(cdp, 5)
            check_eq(items(cdp)[4]["text"], "sent by the form \u2192 ok", "5th entry (form push)")
            status = cdp.wait("document.getElementById('push-status').textContent.match(/^\\d{3}/)"
                              " && document.getElementById('push-status').textContent", 5,
                              "the push status")
            check(status.startswith("202"), "form push status %r" % status)
            check_eq(len(items(cdp)), 5, "entries (no duplicates)")
            no_page_errors(cdp)

            cdp.eval("document.activeElement && document.activeElement.blur(); true")
            shot = cdp.call("Page.captureScreenshot", {"format": "png"}, timeout=15)
            path = os.path.join(LOGDIR, "browser-demo-%d.png" % os.getpid())
            with open(path, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            note("screenshot: %s" % path)
            cdp.close()
    finally:
        srv.stop()


@test("Chromium: demo with a JWT via ?token= (bearer subprotocol) receives; a wrong token "
      "does not", timeout=30)
def _():
    secret = "browser-secret-" + base64.b16encode(os.urandom(6)).decode()
    good = mint(secret, "browser-auth")
    other_secret = mint(secret + "x", "browser-deny")   # right sub, wrong signature: 401
    wrong_sub = mint(secret, "browser-auth")             # for browser-auth, used on browser-deny2: 403
    with Server(env={"WSGATE_SERVER_DEMO": "on", "WSGATE_AUTH_JWT_SECRET": secret}) as srv, \
            Browser() as b:
        cdp = b.page()
        navigate(cdp, "http://127.0.0.1:%d/demo/?session=browser-auth&token=%s" % (srv.port, good))
        cdp.wait("document.getElementById('state').dataset.state === 'open'", 5, "state open")
        check_eq(cdp.eval("wsgateDemo.client.protocol"), "bearer", "selected subprotocol")
        check("token" not in cdp.eval("wsgateDemo.client.url"), "token in the WebSocket URL")
        accepted(push(srv.port, "browser-auth", "for the holder of the token"))
        wait_items(cdp, 1)
        check_eq(items(cdp)[0]["text"], "for the holder of the token", "entry")
        no_page_errors(cdp)

        refused0 = metric(srv.port, 'wsgate_auth_refused_total{reason="client_token"}')
        forbidden0 = metric(srv.port, 'wsgate_auth_refused_total{reason="forbidden"}')
        for sess, tok, name in [("browser-deny", other_secret, "client_token"),
                                ("browser-deny2", wrong_sub, "forbidden")]:
            navigate(cdp, "http://127.0.0.1:%d/demo/?session=%s&token=%s" % (srv.port, sess, tok))
            accepted(push(srv.port, sess, "must not be shown"))
            cdp.wait("wsgateDemo.closes >= 2", 6, "two refused attempts")
            check_eq(cdp.eval("[wsgateDemo.opens, wsgateDemo.received, "
                              "document.querySelectorAll('#messages > *').length]"),
                     [0, 0, 0], "%s: opens, messages received, entries" % sess)
            check(state(cdp) in ("reconnecting", "connecting"), "state %r" % state(cdp))
        shot = cdp.call("Page.captureScreenshot", {"format": "png"}, timeout=15)
        path = os.path.join(LOGDIR, "browser-demo-refused-%d.png" % os.getpid())
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        note("screenshot (refused token): %s" % path)
        check(metric(srv.port, 'wsgate_auth_refused_total{reason="client_token"}') >= refused0 + 2,
              "the gateway did not count the bad-signature refusals")
        check(metric(srv.port, 'wsgate_auth_refused_total{reason="forbidden"}') >= forbidden0 + 2,
              "the gateway did not count the wrong-sub refusals")
        log = srv.log_text()
        for tok in (good, other_secret):
            check(tok not in log and tok.split(".")[2] not in log, "a token reached the log")
        cdp.close()


run()
