"""test_image.py — `make test-container`: build the Dockerfile with podman and check the
image's filesystem by running the gateway from it.

Steps (each a TAP case): a debian:bookworm-slim stand-in is made once with mmdebstrap
(minbase, docs/man/locales excluded like the official slim image) and imported into
podman (kept between runs: skipped when `podman image exists`); `podman build
--isolation=chroot --format docker` builds the image; its metadata (user, port, stop
signal, healthcheck) and size are checked. `podman run` does not work in this sandbox
(crun cannot set RLIMIT_NPROC), so the image is checked through `podman create` +
`podman mount`: ldd inside the mount (chroot) resolves every library, then the binary
runs from a read-only bind of the mount as uid 10001 (what deploy/k8s asks:
readOnlyRootFilesystem, runAsUser 10001), on a free loopback port of the host network,
with push tokens and a JWT secret set. The image's own HEALTHCHECK command runs inside
the chroot, curl pushes (401 without the token, 202 with it), an independent WebSocket
client (python3-websockets) with a JWT minted by the image's binary receives the push,
and SIGTERM closes it with 1001 and exits 0.

Cleans up what it made (server process by pid, bind mount, podman mount, container);
keeps the base image and the built image (layer cache for the next run).
Prints TAP and ends with one line "N passed, N failed" like scripts/run-tests.sh.
Env: WSGATE_IMAGE (tag, default localhost/wsgate:test), IMAGE_MAX_MB (size bound).
"""

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASE = "docker.io/library/debian:bookworm-slim"
BASE_LOCAL = "localhost/debian:bookworm"
IMAGE = os.environ.get("WSGATE_IMAGE", "localhost/wsgate:test")
# Bound on the final image: bookworm minbase without docs (~75 MB here) plus the runtime
# libraries (~10 MB) and the stripped binary (~0.4 MB). A compiler or -dev package
# leaking into the runtime stage would add 50+ MB.
IMAGE_MAX_MB = float(os.environ.get("IMAGE_MAX_MB", "110"))
MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]
# Same exclusions as the official -slim images (/etc/dpkg/dpkg.cfg.d/docker); mmdebstrap
# keeps them in the rootfs, so the apt-get installs of the build obey them too.
SLIM_DPKG = ["path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
             "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
             "path-exclude=/usr/share/locale/*", "path-exclude=/usr/share/lintian/*",
             "path-exclude=/usr/share/linda/*", "path-exclude=/usr/share/groff/*"]

results = []   # (ok, name, notes)
state = {}     # what cleanup needs: container, mount, ro, proc, tmp


def sh(cmd, timeout=120, check=True, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout, **kw)
    out = r.stdout.decode("utf-8", "replace")
    if check and r.returncode != 0:
        raise AssertionError("%s: exit %d\n%s" % (" ".join(cmd), r.returncode, out[-3000:]))
    return r.returncode, out


def case(name, fn, fatal=False):
    t0 = time.monotonic()
    notes = []
    try:
        fn(notes)
        ok, err = True, None
    except Exception as e:  # noqa: BLE001 — every failure becomes "not ok"
        ok, err = False, e
    n = len(results) + 1
    results.append(ok)
    print("%s %d - %s" % ("ok" if ok else "not ok", n, name))
    if err is not None:
        for line in ("%s: %s" % (type(err).__name__, err)).splitlines():
            print("# " + line)
    for line in notes:
        print("# " + line)
    print("# time %.1fs" % (time.monotonic() - t0))
    sys.stdout.flush()
    if fatal and not ok:
        raise SystemExit("fatal")
    return ok


# ------------------------------------------------------------------ image

def t_base(notes):
    rc, _ = sh(["podman", "image", "exists", BASE], check=False)
    if rc == 0:
        notes.append("cached: %s exists, mmdebstrap skipped" % BASE)
        return
    tar = os.path.join(state["tmp"], "rootfs.tar")
    t0 = time.monotonic()
    # merged-usr hook: /usr-merge by symlinks, as debian:bookworm-slim has it, without the
    # usrmerge package (which drags perl in: +60 MB)
    cmd = ["nice", "mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
           "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
    cmd += ["--dpkgopt=" + o for o in SLIM_DPKG]
    cmd += ["bookworm", tar] + MIRRORS
    sh(cmd, timeout=900, stdin=subprocess.DEVNULL)
    notes.append("mmdebstrap %.0fs, rootfs.tar %.1f MB"
                 % (time.monotonic() - t0, os.path.getsize(tar) / 1e6))
    sh(["podman", "import", "--quiet", tar, BASE_LOCAL], timeout=300)
    sh(["podman", "tag", BASE_LOCAL, BASE])
    os.unlink(tar)


def t_build(notes):
    t0 = time.monotonic()
    rc, out = sh(["nice", "podman", "build", "--isolation=chroot", "--pull=never",
                  "--network=host", "--format", "docker", "--layers", "-t", IMAGE,
                  "-f", "Dockerfile", "."], timeout=1500, cwd=ROOT, check=False)
    for line in out.splitlines():
        if line.startswith("runtime packages:"):
            notes.append(line)
    notes.append("podman build %.0fs" % (time.monotonic() - t0))
    if rc != 0:
        raise AssertionError("podman build exit %d\n%s" % (rc, out[-4000:]))


def inspect():
    _, out = sh(["podman", "image", "inspect", IMAGE])
    return json.loads(out)[0]


def t_meta(notes):
    cfg = inspect()["Config"]
    if cfg.get("User") != "10001:10001":
        raise AssertionError("User %r, want 10001:10001" % cfg.get("User"))
    if "8080/tcp" not in (cfg.get("ExposedPorts") or {}):
        raise AssertionError("ExposedPorts %r" % cfg.get("ExposedPorts"))
    if cfg.get("StopSignal") != "SIGTERM":
        raise AssertionError("StopSignal %r" % cfg.get("StopSignal"))
    if cfg.get("Entrypoint") != ["/usr/local/bin/wsgate"]:
        raise AssertionError("Entrypoint %r" % cfg.get("Entrypoint"))
    hc = inspect().get("Healthcheck") or cfg.get("Healthcheck") or {}
    if not hc.get("Test") or hc["Test"][0] != "CMD":
        raise AssertionError("Healthcheck %r (built without --format docker?)" % hc)
    state["healthcheck"] = hc["Test"][1:]
    notes.append("healthcheck: %s" % " ".join(hc["Test"][1:3]) + " ...")


def t_size(notes):
    size = inspect()["Size"] / 1e6
    _, base = sh(["podman", "image", "inspect", "--format", "{{.Size}}", BASE])
    notes.append("image size %.1f MB (base %.1f MB), bound %.0f MB"
                 % (size, int(base) / 1e6, IMAGE_MAX_MB))
    if size > IMAGE_MAX_MB:
        raise AssertionError("image is %.1f MB, over %.0f MB" % (size, IMAGE_MAX_MB))


def t_mount(notes):
    name = "wsgate-test-%d" % os.getpid()
    sh(["podman", "create", "--name", name, IMAGE])
    state["container"] = name
    _, out = sh(["podman", "mount", name])
    state["mount"] = out.strip().splitlines()[-1]
    # A read-only bind of the mount: the gateway runs the way readOnlyRootFilesystem
    # would run it.
    ro = os.path.join(state["tmp"], "ro")
    os.mkdir(ro)
    sh(["mount", "--bind", state["mount"], ro])
    state["ro"] = ro
    sh(["mount", "-o", "remount,bind,ro", ro])
    notes.append("mounted at %s, read-only bind %s" % (state["mount"], ro))


def t_ldd(notes):
    _, out = sh(["/usr/sbin/chroot", state["mount"], "ldd", "/usr/local/bin/wsgate"])
    if "not found" in out:
        raise AssertionError("missing libraries:\n" + out)
    libs = sorted(re.findall(r"^\s*(\S+\.so[.\d]*) =>", out, re.M))
    notes.append("resolved: " + " ".join(libs))


def t_no_build_tools(notes):
    m = state["mount"]
    for p in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/make", "usr/include/uv.h",
              "usr/bin/curl", "usr/bin/wget"):
        if os.path.lexists(os.path.join(m, p)):
            raise AssertionError("/%s is in the runtime image" % p)
    # bash: the HEALTHCHECK; sleep: deploy/k8s's preStop hook
    for p in ("bin/bash", "bin/sleep", "etc/wsgate/gateway.conf.example"):
        if not os.path.exists(os.path.join(m, p)):
            raise AssertionError("/%s is missing" % p)
    with open(os.path.join(m, "etc/passwd")) as f:
        if not re.search(r"^wsgate:x:10001:10001:", f.read(), re.M):
            raise AssertionError("no wsgate user 10001:10001 in /etc/passwd")


def chroot_cmd(args):
    return ["/usr/sbin/chroot", "--userspec=10001:10001", state["ro"]] + args


ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "WSGATE_SERVER_DRAIN_TIMEOUT": "3s",
       "WSGATE_AUTH_PUSH_TOKENS": "push-secret-1,push-secret-2",
       "WSGATE_AUTH_JWT_SECRET": "jwt-secret-for-the-container-test"}


def t_check_config(notes):
    _, out = sh(chroot_cmd(["/usr/local/bin/wsgate", "-c", "/etc/wsgate/gateway.conf.example",
                            "--check-config"]), env=ENV)
    notes.append(out.strip())


def t_start(notes):
    env = dict(ENV, WSGATE_SERVER_LISTEN="127.0.0.1:0")
    log = open(os.path.join(state["tmp"], "wsgate.log"), "w+b")
    state["log"] = log
    proc = subprocess.Popen(chroot_cmd(["/usr/local/bin/wsgate"]), env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    state["proc"] = proc
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log.seek(0)
        m = re.search(rb"event=listening addr=127\.0\.0\.1:(\d+)", log.read())
        if m:
            state["port"] = int(m.group(1))
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    log.seek(0)
    text = log.read().decode("utf-8", "replace")
    if "port" not in state:
        raise AssertionError("no event=listening (exit %s); log:\n%s" % (proc.poll(), text))
    # chroot execs wsgate: the pid is the gateway's
    with open("/proc/%d/status" % proc.pid) as f:
        st = f.read()
    uid = re.search(r"^Uid:\s+(\d+)", st, re.M).group(1)
    if uid != "10001":
        raise AssertionError("running as uid %s" % uid)
    rss = re.search(r"^VmRSS:\s+(\d+)", st, re.M).group(1)
    notes.append("listening on 127.0.0.1:%d as uid %s, idle RSS %s kB"
                 % (state["port"], uid, rss))


def t_healthcheck(notes):
    env = dict(ENV, WSGATE_SERVER_LISTEN="127.0.0.1:%d" % state["port"])
    rc, out = sh(chroot_cmd(state["healthcheck"]), env=env, check=False, timeout=10)
    if rc != 0:
        raise AssertionError("HEALTHCHECK exit %d: %s" % (rc, out))
    # and it fails when nothing listens (a check that cannot fail checks nothing)
    env["WSGATE_SERVER_LISTEN"] = "127.0.0.1:1"
    rc, _ = sh(chroot_cmd(state["healthcheck"]), env=env, check=False, timeout=10)
    if rc == 0:
        raise AssertionError("HEALTHCHECK passes against a closed port")


def curl_push(session, body, token=None):
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
           "--data-binary", body]
    if token:
        cmd += ["-H", "Authorization: Bearer " + token]
    cmd.append("http://127.0.0.1:%d/push/%s" % (state["port"], session))
    return sh(cmd, timeout=10)[1].strip()


def t_push_auth(notes):
    code = curl_push("c1", "x")
    if code != "401":
        raise AssertionError("push without token: %s, want 401" % code)
    code = curl_push("c1", "x", "wrong")
    if code != "401":
        raise AssertionError("push with a wrong token: %s, want 401" % code)


def t_ws_roundtrip(notes):
    import websockets  # python3-websockets: an independent client

    env = dict(ENV)
    _, tok = sh(chroot_cmd(["/usr/local/bin/wsgate", "--mint-token", "c1", "--ttl", "5m"]),
                env=env)
    tok = tok.strip().splitlines()[-1]
    url = "ws://127.0.0.1:%d/ws/c1" % state["port"]

    async def go():
        async with websockets.connect(url, subprotocols=["bearer", tok],
                                      open_timeout=5, close_timeout=5) as ws:
            code = await asyncio.get_running_loop().run_in_executor(
                None, curl_push, "c1", "hello from the image", "push-secret-2")
            if code != "202":
                raise AssertionError("push with token: %s, want 202" % code)
            msg = await asyncio.wait_for(ws.recv(), 5)
            if msg != "hello from the image":
                raise AssertionError("received %r" % msg)
            notes.append("push 202, WebSocket (JWT via subprotocol) received %r" % msg)
            # SIGTERM while the client is connected: close 1001, exit 0
            t0 = time.monotonic()
            state["proc"].send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ws.recv(), 6)
            except websockets.ConnectionClosed as e:
                if e.code != 1001:
                    raise AssertionError("close code %s, want 1001" % e.code)
            else:
                raise AssertionError("a message instead of a close")
            rc = await asyncio.get_running_loop().run_in_executor(
                None, lambda: state["proc"].wait(6))
            if rc != 0:
                raise AssertionError("exit status %s after SIGTERM" % rc)
            notes.append("SIGTERM: close 1001, exit 0 after %.2fs" % (time.monotonic() - t0))

    asyncio.run(go())


def t_log_clean(notes):
    state["log"].seek(0)
    text = state["log"].read().decode("utf-8", "replace")
    for secret in ("push-secret-1", "push-secret-2", "jwt-secret-for"):
        if secret in text:
            raise AssertionError("log contains a secret")
    if "event=listening" not in text:
        raise AssertionError("log:\n" + text)


# ------------------------------------------------------------------ cleanup

def cleanup():
    p = state.get("proc")
    if p is not None and p.poll() is None:
        p.kill()
        p.wait(5)
    if state.get("ro"):
        subprocess.run(["umount", state["ro"]], check=False)
    if state.get("container"):
        subprocess.run(["podman", "umount", state["container"]], check=False,
                       stdout=subprocess.DEVNULL)
        # (podman rm also logs that it cannot reach systemd for healthcheck timers)
        subprocess.run(["podman", "rm", "-f", state["container"]], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if state.get("log"):
        state["log"].close()
    if state.get("tmp"):
        shutil.rmtree(state["tmp"], ignore_errors=True)


def main():
    if os.geteuid() != 0:
        print("1..0 # SKIP needs root (podman, mount, chroot)")
        print("0 passed, 0 failed")
        return 0
    t_all = time.monotonic()
    state["tmp"] = tempfile.mkdtemp(prefix="wsgate-container.")
    try:
        case("base image %s (mmdebstrap + podman import, cached)" % BASE, t_base, fatal=True)
        case("podman build (chroot isolation, docker format)", t_build, fatal=True)
        case("image metadata: USER 10001:10001, EXPOSE 8080, STOPSIGNAL, HEALTHCHECK", t_meta)
        case("image size under %.0f MB" % IMAGE_MAX_MB, t_size)
        case("podman create + mount (+ read-only bind)", t_mount, fatal=True)
        case("ldd in the image resolves every library", t_ldd)
        case("runtime stage: no compiler, headers or curl; bash, sleep, wsgate user present",
             t_no_build_tools)
        case("--check-config of gateway.conf.example as 10001", t_check_config)
        case("wsgate starts as 10001 from a read-only root", t_start, fatal=True)
        case("image HEALTHCHECK command passes (and fails on a closed port)", t_healthcheck)
        case("push without or with a wrong token: 401", t_push_auth)
        case("push 202 -> WebSocket client receives it; SIGTERM: 1001, exit 0", t_ws_roundtrip)
        case("server log has no secrets", t_log_clean)
    except SystemExit:
        print("# stopped after a fatal failure")
    finally:
        cleanup()
    failed = results.count(False)
    print("# total %.0fs" % (time.monotonic() - t_all))
    print("%d passed, %d failed" % (len(results) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
