#!/usr/bin/python3
"""bench/nats_cost.py — what N connected sessions cost on the nats backend: connect time, consumers,
gateway threads/RSS/CPU, nats-server RSS/CPU, idle CPU over a window, and one delivery
to each session. Not part of `make bench`; run by hand, figures in README (NATS section).
usage: bench/nats_cost.py N [IDLE_SECONDS]   (needs ./wsgate, nats-server, build/tools/nats_pub)"""
import asyncio, base64, os, socket, subprocess, sys, tempfile, time, json, urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
N = int(sys.argv[1]); IDLE = float(sys.argv[2]) if len(sys.argv) > 2 else 65
TICK = os.sysconf("SC_CLK_TCK")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def cpu(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK

def status(pid, key):
    for line in open("/proc/%d/status" % pid):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))

def consumers(url):
    r = subprocess.run([ROOT + "/build/tools/nats_pub", "-s", url, "consumers", "WSRECV"],
                       capture_output=True, text=True)
    return r.stdout.strip()

def varz(mport):
    return json.load(urllib.request.urlopen("http://127.0.0.1:%d/varz" % mport))

def snap(tag, gw, nats, url, mport):
    v = varz(mport)
    print("%-14s gw_rss_kib=%d gw_threads=%d gw_cpu_s=%.2f nats_rss_kib=%d nats_cpu_s=%.2f "
          "nats_subs=%d %s" % (tag, status(gw, "VmRSS"), threads(gw), cpu(gw),
                               status(nats, "VmRSS"), cpu(nats), v["subscriptions"],
                               consumers(url)), flush=True)

async def ws_open(port, key, sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        k = base64.b64encode(os.urandom(16)).decode()
        w.write(("GET /ws/%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (key, k)).encode())
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 120)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError("%s: %r" % (key, head[:60]))
        return r, w

async def read_frame(r):
    h = await r.readexactly(2)
    n = h[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await r.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await r.readexactly(8), "big")
    return h[0] & 0x0F, await r.readexactly(n)

async def main():
    tmp = tempfile.mkdtemp(prefix="cost-")
    nport, mport = free_port(), free_port()
    nats = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(nport), "-m",
                             str(mport), "-sd", tmp + "/js", "-l", tmp + "/nats.log"])
    time.sleep(0.5)
    url = "nats://127.0.0.1:%d" % nport
    gport = free_port()
    env = dict(os.environ, WSGATE_BROKER_TYPE="nats", WSGATE_NATS_URL=url,
               WSGATE_SERVER_LISTEN="127.0.0.1:%d" % gport,
               WSGATE_SERVER_MAX_CONNECTIONS=str(N + 100), WSGATE_SERVER_LOG_LEVEL="warn", WSGATE_WEBSOCKET_PING_INTERVAL="0", WSGATE_WEBSOCKET_IDLE_TIMEOUT="1h")
    gw = subprocess.Popen([ROOT + "/wsgate"], env=env, stderr=open(tmp + "/gw.log", "w"))
    time.sleep(0.5)
    try:
        snap("start", gw.pid, nats.pid, url, mport)
        g0, n0, t0 = cpu(gw.pid), cpu(nats.pid), time.time()
        sem = asyncio.Semaphore(200)
        conns = await asyncio.gather(*[ws_open(gport, "cost.s%d" % i, sem) for i in range(N)])
        dt = time.time() - t0
        print("connect        sessions=%d wall_s=%.2f per_session_ms=%.2f gw_cpu_s=%.2f "
              "nats_cpu_s=%.2f" % (N, dt, dt / N * 1000, cpu(gw.pid) - g0, cpu(nats.pid) - n0),
              flush=True)
        snap("connected", gw.pid, nats.pid, url, mport)
        g0, n0 = cpu(gw.pid), cpu(nats.pid)
        await asyncio.sleep(IDLE)
        print("idle           seconds=%.0f gw_cpu_s=%.3f nats_cpu_s=%.3f" %
              (IDLE, cpu(gw.pid) - g0, cpu(nats.pid) - n0), flush=True)
        # one message to every session, 16 pipelined keep-alive pushes at a time
        g0, n0, t0 = cpu(gw.pid), cpu(nats.pid), time.time()
        r, w = await asyncio.open_connection("127.0.0.1", gport)
        async def pusher():
            for i in range(N):
                w.write(b"POST /push/cost.s%d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" % i)
                if i % 64 == 0:
                    await w.drain()
            await w.drain()
        async def answers():
            for i in range(N):
                line = await r.readuntil(b"\r\n\r\n")
                assert line.startswith(b"HTTP/1.1 202"), line[:40]
                await r.readexactly(11)
        async def recv_one(c):
            op, p = await asyncio.wait_for(read_frame(c[0]), 60)
            assert p == b"hello", p
        await asyncio.gather(pusher(), answers(), *[recv_one(c) for c in conns])
        dt = time.time() - t0
        print("deliver        messages=%d wall_s=%.2f per_s=%.0f gw_cpu_s=%.2f nats_cpu_s=%.2f" %
              (N, dt, N / dt, cpu(gw.pid) - g0, cpu(nats.pid) - n0), flush=True)
        await asyncio.sleep(1)
        snap("after", gw.pid, nats.pid, url, mport)
        for c in conns:
            c[1].close()
        await asyncio.sleep(2)
        snap("disconnected", gw.pid, nats.pid, url, mport)
    finally:
        gw.terminate(); gw.wait()
        nats.send_signal(2); nats.wait()

asyncio.run(main())
