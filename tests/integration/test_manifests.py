#!/usr/bin/python3
"""test_manifests.py — the deployment files (deploy/k8s/*.yaml, deploy/compose.yaml, the
Dockerfile's runtime settings) checked against the real binary, so they cannot drift
from what wsgate accepts and serves.

Structure: every manifest parses (python3-yaml), has the expected kind/apiVersion and
the fields the orchestrator needs; selectors match the pod labels; named ports resolve.
Against $WSGATE_BIN (started on free loopback ports, real redis-server): each probe path
answers 200; /readyz 503 while the broker is down and /healthz stays 200 (the reason
liveness uses /healthz); the ConfigMap's gateway.conf passes `--check-config` with the
Deployment's environment set (wsgate refuses unknown WSGATE_* variables, so the names
are proven real); the memory request covers the measured idle RSS plus max_connections
idle sockets; terminationGracePeriodSeconds >= preStop + drain_timeout; the security
settings are present; the compose file's gateways pass the same checks and their
healthcheck command (and the Dockerfile's) runs with bash against a live gateway.

Does NOT talk to a Kubernetes cluster or a container engine (`make test-container`
builds and runs the image).
"""

import os
import re
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wsgate_test import *  # noqa: E402,F403
from redis_helpers import RedisServer, free_port, wait_ready  # noqa: E402

try:
    import yaml
except ImportError:  # python3-yaml (scripts/deps.sh test)
    yaml = None

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
COMPOSE = os.path.join(ROOT, "deploy", "compose.yaml")
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
IMAGE_UID = 10001
# measured idle WebSocket cost (README "How it works", bench: 1.2-1.4 KB; redis-list
# 4,000 idle sockets: 1.4 KB)
WS_IDLE_BYTES = 1400

EXPECTED = {  # file -> (apiVersion, kind)
    "configmap.yaml": ("v1", "ConfigMap"),
    "secret.example.yaml": ("v1", "Secret"),
    "deployment.yaml": ("apps/v1", "Deployment"),
    "service.yaml": ("v1", "Service"),
    "pdb.yaml": ("policy/v1", "PodDisruptionBudget"),
    "hpa.yaml": ("autoscaling/v2", "HorizontalPodAutoscaler"),
    "kustomization.yaml": ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}

_cache = {}


def load(name):
    check(yaml is not None, "python3-yaml is not installed (scripts/deps.sh test)")
    if name not in _cache:
        with open(os.path.join(K8S, name)) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        check(len(docs) == 1, "%s: %d YAML documents, want 1" % (name, len(docs)))
        _cache[name] = docs[0]
    return _cache[name]


def get(obj, path, what=None):
    """obj at a dotted path (ints index lists); fails naming the missing field."""
    cur = obj
    for part in path.split("."):
        if isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise AssertionError("%s: missing field %s" % (what or "manifest", path))
    return cur


def container():
    return get(load("deployment.yaml"), "spec.template.spec.containers.0", "deployment.yaml")


def pod_spec():
    return get(load("deployment.yaml"), "spec.template.spec", "deployment.yaml")


def gateway_conf_text():
    data = get(load("configmap.yaml"), "data", "configmap.yaml")
    check("gateway.conf" in data, "configmap.yaml: no data key gateway.conf")
    return data["gateway.conf"]


def conf_value(text, section, key):
    """The value of [section] key in an INI text (None if absent)."""
    cur = None
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in ";#":
            continue
        m = re.match(r"\[(\w+)\]$", s)
        if m:
            cur = m.group(1)
            continue
        k, _, v = s.partition("=")
        if cur == section and k.strip() == key:
            return v.strip()
    return None


def seconds(d):
    """A wsgate duration (250ms, 30s, 5m, 1h, bare = s) in seconds."""
    m = re.match(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$", str(d).strip())
    check(m is not None, "bad duration %r" % d)
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def mebibytes(q):
    """A Kubernetes memory quantity in MiB."""
    m = re.match(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G)?$", str(q))
    check(m is not None, "bad memory quantity %r" % q)
    f = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "k": 1e3 / 2**20, "M": 1e6 / 2**20,
         "G": 1e9 / 2**20, None: 1 / 2**20}[m.group(2)]
    return float(m.group(1)) * f


def millicores(q):
    q = str(q)
    return float(q[:-1]) if q.endswith("m") else float(q) * 1000


def conf_file(text):
    f = tempfile.NamedTemporaryFile("w", suffix=".conf", dir=LOGDIR, delete=False)
    f.write(text)
    f.close()
    return f.name


def check_config(path=None, env=None):
    """Run `wsgate [-c path] --check-config` with only env's WSGATE_* variables."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("WSGATE_")}
    e.update(env or {})
    args = [BIN] + (["-c", path] if path else []) + ["--check-config"]
    r = subprocess.run(args, capture_output=True, timeout=10, env=e, stdin=subprocess.DEVNULL)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def secret_values():
    return get(load("secret.example.yaml"), "stringData", "secret.example.yaml")


def deployment_env():
    """The Deployment's env as {name: value}; secretKeyRef values from the example Secret
    (which must name the same Secret and hold the key)."""
    out = {}
    sec = load("secret.example.yaml")
    for e in container().get("env", []):
        name = e["name"]
        if "value" in e:
            out[name] = str(e["value"])
        else:
            ref = get(e, "valueFrom.secretKeyRef", "env " + name)
            check(ref["name"] == sec["metadata"]["name"],
                  "env %s: Secret %r, the example Secret is %r"
                  % (name, ref["name"], sec["metadata"]["name"]))
            check(ref["key"] in secret_values(), "env %s: key %r not in the example Secret"
                  % (name, ref["key"]))
            check(not ref.get("optional", False), "env %s: the Secret must not be optional "
                  "(without it the gateway would run open)" % name)
            out[name] = secret_values()[ref["key"]]
    return out


def http_get_status(port, path):
    return http_request(port, "GET", path).status


# ---------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------

@test("k8s: every manifest parses, with the expected apiVersion and kind")
def _():
    files = sorted(f for f in os.listdir(K8S) if f.endswith((".yaml", ".yml")))
    check_eq(files, sorted(EXPECTED), "files in deploy/k8s")
    for f, (api, kind) in EXPECTED.items():
        d = load(f)
        check_eq((d.get("apiVersion"), d.get("kind")), (api, kind), f)
        if kind != "Kustomization":
            check(get(d, "metadata.name", f), "%s: empty metadata.name" % f)


@test("k8s: kustomization lists every manifest but the example Secret")
def _():
    res = get(load("kustomization.yaml"), "resources", "kustomization.yaml")
    want = sorted(f for f in EXPECTED if f not in ("kustomization.yaml", "secret.example.yaml"))
    check_eq(sorted(res), want, "kustomization resources")
    img = container()["image"].split(":")[0]
    names = [i["name"] for i in load("kustomization.yaml").get("images", [])]
    check(img in names, "kustomization images: does not set %r" % img)


@test("k8s: Deployment fields (selector = pod labels, port, config volume, resources)")
def _():
    d = load("deployment.yaml")
    labels = get(d, "spec.template.metadata.labels", "deployment.yaml")
    sel = get(d, "spec.selector.matchLabels", "deployment.yaml")
    check(sel and all(labels.get(k) == v for k, v in sel.items()),
          "selector %r does not match pod labels %r" % (sel, labels))
    c = container()
    check(c.get("image"), "container without image")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check_eq(ports.get("http"), 8080, "containerPort named http")
    listen = conf_value(gateway_conf_text(), "server", "listen")
    check(listen is not None and listen.endswith(":%d" % ports["http"]),
          "gateway.conf listen %r does not use containerPort %d" % (listen, ports["http"]))
    # args -c FILE is the ConfigMap item, mounted where FILE says
    args = c.get("args", [])
    check("-c" in args, "args %r: no -c FILE" % args)
    path = args[args.index("-c") + 1]
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod_spec().get("volumes", [])}
    found = False
    for name, m in mounts.items():
        v = vols.get(name, {})
        if "configMap" not in v:
            continue
        check_eq(v["configMap"]["name"], load("configmap.yaml")["metadata"]["name"],
                 "configMap volume name")
        check(m.get("readOnly") is True, "config mount not readOnly")
        items = v["configMap"].get("items") or [{"key": k, "path": k}
                                                for k in load("configmap.yaml")["data"]]
        for it in items:
            if os.path.join(m["mountPath"], it["path"]) == path:
                check_eq(it["key"], "gateway.conf", "ConfigMap key at " + path)
                found = True
    check(found, "-c %s is not the ConfigMap's gateway.conf mount" % path)
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            check(r in res.get(kind, {}), "resources.%s.%s missing" % (kind, r))
    check(mebibytes(res["requests"]["memory"]) <= mebibytes(res["limits"]["memory"]),
          "memory request over limit")
    check(millicores(res["requests"]["cpu"]) <= millicores(res["limits"]["cpu"]),
          "cpu request over limit")
    check("replicas" not in d["spec"], "spec.replicas set: the HPA owns replicas")


@test("k8s: pod and container securityContext (non-root 10001, read-only, no caps)")
def _():
    ps = pod_spec()
    psc = ps.get("securityContext", {})
    csc = container().get("securityContext", {})
    merged = dict(psc, **csc)
    check(merged.get("runAsNonRoot") is True, "runAsNonRoot is not true")
    check_eq(merged.get("runAsUser"), IMAGE_UID, "runAsUser")
    check_eq(csc.get("allowPrivilegeEscalation"), False, "allowPrivilegeEscalation")
    check_eq(csc.get("readOnlyRootFilesystem"), True, "readOnlyRootFilesystem")
    check(csc.get("privileged") is not True, "privileged")
    check_eq(get(csc, "capabilities.drop", "container securityContext"), ["ALL"],
             "capabilities.drop")
    check(not get(csc, "capabilities", "").get("add"), "capabilities added")
    check_eq(get(merged, "seccompProfile.type", "securityContext"), "RuntimeDefault",
             "seccompProfile")
    for k in ("hostNetwork", "hostPID", "hostIPC"):
        check(not ps.get(k), "%s set" % k)
    # the image runs as the same uid (Dockerfile USER)
    with open(DOCKERFILE) as f:
        users = re.findall(r"^USER\s+(\S+)", f.read(), re.M)
    check(users and users[-1].split(":")[0] == str(IMAGE_UID),
          "Dockerfile USER %r, want %d" % (users, IMAGE_UID))


@test("k8s: enableServiceLinks false (Service env vars would be unknown WSGATE_* keys)")
def _():
    check_eq(pod_spec().get("enableServiceLinks"), False, "enableServiceLinks")
    # why: the kubelet would inject these for the Service; wsgate refuses them
    svc = load("service.yaml")["metadata"]["name"].upper().replace("-", "_")
    port = load("service.yaml")["spec"]["ports"][0]["port"]
    injected = {svc + "_SERVICE_HOST": "10.0.0.1", svc + "_SERVICE_PORT": str(port),
                svc + "_PORT": "tcp://10.0.0.1:%d" % port}
    if svc.startswith("WSGATE_") or svc == "WSGATE":
        rc, out = check_config(env=injected)
        check(rc != 0, "--check-config accepted %r: the setting may be unneeded" % injected)
        note("with service links: " + out.strip().splitlines()[0])


@test("k8s: probes hit /readyz and /healthz on the named port; real binary answers 200")
def _():
    c = container()
    rp, lp = c.get("readinessProbe"), c.get("livenessProbe")
    check(rp and lp, "readinessProbe and livenessProbe are required")
    check_eq(get(rp, "httpGet.path", "readinessProbe"), "/readyz", "readiness path")
    check_eq(get(lp, "httpGet.path", "livenessProbe"), "/healthz", "liveness path")
    names = {p["name"] for p in c["ports"]}
    paths = []
    for probe in (rp, lp, c.get("startupProbe")):
        if probe is None:
            continue
        port = probe["httpGet"]["port"]
        check(port in names or port == 8080, "probe port %r is not a container port" % port)
        paths.append(probe["httpGet"]["path"])
    with Server() as srv:
        for p in paths:
            check_eq(http_get_status(srv.port, p), 200, "GET %s" % p)


@test("k8s: ConfigMap gateway.conf passes --check-config with the Deployment's env")
def _():
    path = conf_file(gateway_conf_text())
    env = deployment_env()
    check("WSGATE_AUTH_JWT_SECRET" in env and "WSGATE_AUTH_PUSH_TOKENS" in env,
          "secrets must come as WSGATE_AUTH_JWT_SECRET / WSGATE_AUTH_PUSH_TOKENS: %r"
          % sorted(env))
    rc, out = check_config(path, env)
    check(rc == 0, "--check-config: %s" % out)
    note(out.strip())
    # each variable alone is a real key (unknown WSGATE_* variables are refused) ...
    for k, v in env.items():
        if k.startswith("WSGATE_"):
            rc, out = check_config(path, {k: v})
            check(rc == 0, "%s: %s" % (k, out))
    # ... and the refusal is real: a made-up key fails (a check that cannot fail is none)
    rc, out = check_config(path, {"WSGATE_AUTH_JWT_SECRETS": "x"})
    check(rc != 0 and "WSGATE_AUTH_JWT_SECRETS" in out, "a made-up key passed: %s" % out)
    # no secret value in the ConfigMap
    for key in ("jwt_secret", "push_tokens", "metrics_token"):
        check(not conf_value(gateway_conf_text(), "auth", key),
              "[auth] %s has a value in the ConfigMap (use the Secret)" % key)


@test("k8s: with the ConfigMap's config and a real Redis: probes, RSS vs memory request",
      timeout=40)
def _():
    path = conf_file(gateway_conf_text())
    env = deployment_env()
    broker = conf_value(gateway_conf_text(), "broker", "type")
    check(broker in ("redis-list", "redis-pubsub"), "broker %r: this test runs Redis" % broker)
    c = container()
    mem_req = mebibytes(c["resources"]["requests"]["memory"])
    maxconn = int(conf_value(gateway_conf_text(), "server", "max_connections") or 10000)
    with RedisServer() as redis:
        e = dict(env, WSGATE_REDIS_URL=redis.url())
        with Server(env=e, args=["-c", path]) as srv:
            wait_ready(srv)
            check_eq(http_get_status(srv.port, "/readyz"), 200, "/readyz")
            check_eq(http_get_status(srv.port, "/healthz"), 200, "/healthz")
            rss_mib = srv.rss_kb() / 1024
            need = rss_mib + maxconn * WS_IDLE_BYTES / 2**20
            note("idle RSS %.1f MiB + %d sockets x %d B = %.1f MiB; request %.0f MiB, "
                 "limit %s" % (rss_mib, maxconn, WS_IDLE_BYTES, need, mem_req,
                               c["resources"]["limits"]["memory"]))
            check(need <= mem_req, "memory request %.0f MiB < %.1f MiB needed at "
                  "max_connections" % (mem_req, need))
    # broker down: readiness fails, liveness does not (no restart storm in an outage)
    e = dict(env, WSGATE_REDIS_URL="redis://127.0.0.1:%d/0" % free_port(),
             WSGATE_REDIS_TIMEOUT="200ms")
    with Server(env=e, args=["-c", path]) as srv:
        check_eq(http_get_status(srv.port, "/readyz"), 503, "/readyz with Redis down")
        check_eq(http_get_status(srv.port, "/healthz"), 200, "/healthz with Redis down")


@test("k8s: terminationGracePeriodSeconds >= preStop sleep + drain_timeout")
def _():
    env = deployment_env()
    drain = seconds(env.get("WSGATE_SERVER_DRAIN_TIMEOUT")
                    or conf_value(gateway_conf_text(), "server", "drain_timeout") or "10s")
    pre = get(container(), "lifecycle.preStop", "container")
    if "sleep" in pre:  # the native sleep action (Kubernetes 1.29+)
        pre_s = float(pre["sleep"]["seconds"])
    else:
        cmd = get(pre, "exec.command", "preStop")
        check(os.path.basename(cmd[0]) == "sleep" and len(cmd) == 2,
              "preStop %r: expected [sleep, N]" % cmd)
        pre_s = seconds(cmd[1])
    grace = pod_spec().get("terminationGracePeriodSeconds", 30)
    note("preStop %.0fs + drain_timeout %.0fs = %.0fs; grace %ss"
         % (pre_s, drain, pre_s + drain, grace))
    check(pre_s >= 1, "preStop sleep %.0fs: the endpoint needs time to leave" % pre_s)
    check(grace >= pre_s + drain, "grace %ss < preStop %.0fs + drain %.0fs"
          % (grace, pre_s, drain))


@test("k8s: Service (no affinity, named port), PDB and HPA target the Deployment's pods")
def _():
    labels = get(load("deployment.yaml"), "spec.template.metadata.labels")
    svc = load("service.yaml")
    check(get(svc, "spec.sessionAffinity", "service.yaml") == "None",
          "sessionAffinity must be None")
    sel = get(svc, "spec.selector", "service.yaml")
    check(all(labels.get(k) == v for k, v in sel.items()), "Service selector %r" % sel)
    names = {p["name"] for p in container()["ports"]}
    for p in svc["spec"]["ports"]:
        check(p["targetPort"] in names or p["targetPort"] == 8080,
              "Service targetPort %r" % p["targetPort"])
    pdb = load("pdb.yaml")
    sel = get(pdb, "spec.selector.matchLabels", "pdb.yaml")
    check(all(labels.get(k) == v for k, v in sel.items()), "PDB selector %r" % sel)
    check(("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"]),
          "PDB: exactly one of maxUnavailable / minAvailable")
    hpa = load("hpa.yaml")
    ref = get(hpa, "spec.scaleTargetRef", "hpa.yaml")
    dep = load("deployment.yaml")
    check_eq((ref["apiVersion"], ref["kind"], ref["name"]),
             (dep["apiVersion"], dep["kind"], dep["metadata"]["name"]), "scaleTargetRef")
    lo, hi = hpa["spec"].get("minReplicas", 1), get(hpa, "spec.maxReplicas", "hpa.yaml")
    check(2 <= lo <= hi, "minReplicas %s / maxReplicas %s" % (lo, hi))
    if "maxUnavailable" in pdb["spec"]:
        check(lo - int(pdb["spec"]["maxUnavailable"]) >= 1, "PDB would allow 0 pods")
    cpu = [m for m in get(hpa, "spec.metrics", "hpa.yaml")
           if m.get("type") == "Resource" and m["resource"]["name"] == "cpu"]
    check(cpu, "HPA: no cpu metric")
    t = cpu[0]["resource"]["target"]
    check(t["type"] == "Utilization" and 0 < t["averageUtilization"] <= 100,
          "cpu target %r" % t)
    check("cpu" in container()["resources"]["requests"], "Utilization needs a cpu request")


# ---------------------------------------------------------------------------------------
# compose
# ---------------------------------------------------------------------------------------

_INTERP = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(s):
    """Compose variable interpolation with an empty environment: $$ -> $, ${V:-d} -> d."""
    def rep(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        v = os.environ.get("COMPOSE_TEST_" + name)  # never the runner's own variables
        op = m.group(2) or ""
        if v is None and op.endswith("-"):
            return m.group(3)
        check(v is not None or not op.endswith("?"), "compose: ${%s} is required" % name)
        return v or ""
    return _INTERP.sub(rep, s) if isinstance(s, str) else s


def compose():
    check(yaml is not None, "python3-yaml is not installed")
    if "compose" not in _cache:
        with open(COMPOSE) as f:
            _cache["compose"] = yaml.safe_load(f)
    return _cache["compose"]


def gateways():
    svcs = compose()["services"]
    return {k: v for k, v in svcs.items() if k.startswith("wsgate")}


def compose_env(svc):
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def healthcheck_script(test_cmd):
    """The bash script of a CMD ["/bin/bash", "-c", SCRIPT] healthcheck."""
    check(isinstance(test_cmd, list) and test_cmd[0] == "CMD", "healthcheck %r" % test_cmd)
    check(os.path.basename(test_cmd[1]) == "bash" and test_cmd[2] == "-c",
          "healthcheck is not bash -c: %r" % test_cmd[:3])
    return test_cmd[3]


def run_healthcheck(script, port):
    e = {"PATH": "/usr/bin:/bin", "WSGATE_SERVER_LISTEN": "127.0.0.1:%d" % port}
    r = subprocess.run(["/bin/bash", "-c", script], env=e, capture_output=True, timeout=10)
    return r.returncode


@test("compose: parses; 3 gateways, redis, nats -js; gateways hardened, healthchecked")
def _():
    svcs = compose()["services"]
    gws = gateways()
    check_eq(len(gws), 3, "gateway services")
    check("redis" in svcs and "nats" in svcs, "services: %r" % sorted(svcs))
    check("-js" in svcs["nats"].get("command", []), "nats without -js: %r"
          % svcs["nats"].get("command"))
    for name in ("redis", "nats"):
        check(svcs[name].get("healthcheck", {}).get("test"), "%s: no healthcheck" % name)
    host_ports = []
    for name, g in gws.items():
        b = g.get("build", {})
        ctx = os.path.normpath(os.path.join(os.path.dirname(COMPOSE), b.get("context", ".")))
        check(os.path.isfile(os.path.join(ctx, b.get("dockerfile", "Dockerfile"))),
              "%s: build context %s has no Dockerfile" % (name, ctx))
        check(g.get("healthcheck", {}).get("test"), "%s: no healthcheck" % name)
        check(g.get("read_only") is True, "%s: read_only" % name)
        check_eq(str(g.get("user", "")).split(":")[0], str(IMAGE_UID), name + " user")
        check_eq(g.get("cap_drop"), ["ALL"], name + " cap_drop")
        check("no-new-privileges:true" in g.get("security_opt", []), name + ": no-new-privileges")
        deps = g.get("depends_on", {})
        for d in ("redis", "nats"):
            check(deps.get(d, {}).get("condition") == "service_healthy",
                  "%s: depends_on %s service_healthy" % (name, d))
        for p in g.get("ports", []):
            check(str(p).startswith("127.0.0.1:"), "%s: port %s not on loopback" % (name, p))
            host_ports.append(str(p).split(":")[1])
        env = compose_env(g)
        drain = seconds(env.get("WSGATE_SERVER_DRAIN_TIMEOUT", "10s"))
        grace = seconds(g.get("stop_grace_period", "10s"))
        check(grace >= drain, "%s: stop_grace_period %ss < drain %ss" % (name, grace, drain))
        check_eq(g.get("stop_signal", "SIGTERM"), "SIGTERM", name + " stop_signal")
    check_eq(len(set(host_ports)), 3, "distinct host ports")


@test("compose: gateway env passes --check-config (redis-list and WSGATE_BROKER=nats)")
def _():
    seen = set()
    for name, g in gateways().items():
        env = compose_env(g)
        check_eq(env.get("WSGATE_BROKER_TYPE"), "redis-list", name + " default broker")
        for k in ("WSGATE_REDIS_URL", "WSGATE_NATS_URL", "WSGATE_AUTH_PUSH_TOKENS"):
            check(env.get(k), "%s: %s empty" % (name, k))
        key = tuple(sorted(env.items()))
        if key in seen:
            continue
        seen.add(key)
        rc, out = check_config(env=env)
        check(rc == 0, "%s: %s" % (name, out))
    os.environ["COMPOSE_TEST_WSGATE_BROKER"] = "nats"
    try:
        env = compose_env(next(iter(gateways().values())))
    finally:
        del os.environ["COMPOSE_TEST_WSGATE_BROKER"]
    check_eq(env["WSGATE_BROKER_TYPE"], "nats", "WSGATE_BROKER=nats")
    rc, out = check_config(env=env)
    check(rc == 0, "nats: %s" % out)


@test("compose healthcheck runs (bash /dev/tcp): 0 when ready, non-zero when not", timeout=40)
def _():
    scripts = {healthcheck_script([interpolate(x) for x in g["healthcheck"]["test"]])
               for g in gateways().values()}
    check_eq(len(scripts), 1, "one healthcheck for all gateways")
    script = scripts.pop()
    m = re.search(r"GET (/\S+) HTTP", script)
    check(m, "no GET path in %r" % script)
    with Server() as srv:
        check_eq(http_get_status(srv.port, m.group(1)), 200, "GET " + m.group(1))
        check_eq(run_healthcheck(script, srv.port), 0, "healthcheck exit status")
    e = {"WSGATE_BROKER_TYPE": "redis-list", "WSGATE_REDIS_TIMEOUT": "200ms",
         "WSGATE_REDIS_URL": "redis://127.0.0.1:%d/0" % free_port()}
    with Server(env=e) as srv:   # broker down: /readyz 503
        check(run_healthcheck(script, srv.port) != 0, "healthcheck passed with Redis down")
    check(run_healthcheck(script, free_port()) != 0, "healthcheck passed on a closed port")


@test("Dockerfile: USER 10001, EXPOSE 8080, STOPSIGNAL SIGTERM; its HEALTHCHECK runs")
def _():
    import json
    with open(DOCKERFILE) as f:
        text = f.read().replace("\\\n", " ")
    final = text[text.rfind("\nFROM "):]   # the runtime stage
    check(re.search(r"^USER\s+%d(:%d)?\s*$" % (IMAGE_UID, IMAGE_UID), final, re.M),
          "USER %d" % IMAGE_UID)
    check(re.search(r"^EXPOSE\s+8080\b", final, re.M), "EXPOSE 8080")
    check(re.search(r"^STOPSIGNAL\s+SIGTERM\s*$", final, re.M), "STOPSIGNAL SIGTERM")
    m = re.search(r"^HEALTHCHECK .*?CMD\s+(\[.*\])\s*$", final, re.M)
    check(m, "HEALTHCHECK CMD [...] (exec form)")
    script = healthcheck_script(["CMD"] + json.loads(m.group(1)))
    with Server() as srv:
        check_eq(run_healthcheck(script, srv.port), 0, "HEALTHCHECK exit status")
    check(run_healthcheck(script, free_port()) != 0, "HEALTHCHECK passed on a closed port")


run()
