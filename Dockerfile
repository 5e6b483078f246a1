# Dockerfile — two-stage image for wsgate on Debian bookworm (the platform the build and
# tests are verified on). `make test-container` builds it with podman and checks it.
#   docker build -t wsgate .          (or: podman build --format docker -t wsgate .)
#   docker run -p 8080:8080 -e WSGATE_BROKER_TYPE=redis-list \
#     -e WSGATE_REDIS_URL=redis://redis:6379/0 -e WSGATE_AUTH_PUSH_TOKENS=... wsgate
# Configuration: WSGATE_<SECTION>_<KEY> variables, or mount a file and pass
# `-c /etc/wsgate/gateway.conf` (deploy/k8s does that). The root filesystem can be
# read-only: wsgate writes nothing to disk (logs go to stderr).

FROM debian:bookworm-slim AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc make pkg-config libc6-dev libuv1-dev libwslay-dev libhiredis-dev libnats-dev \
      librdkafka-dev node-llhttp libinih-dev libjwt-dev libjansson-dev libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# strip: drops the debug info (about 2/3 of the file); keep an unstripped build for cores.
# runtime-packages: the Debian packages that own the shared libraries the binary really
# loads (ldd, i.e. DT_NEEDED after --as-needed, plus their dependencies), so the runtime
# stage installs exactly those and follows the link line when a backend is added.
# Today: libuv1 libwslay1 libhiredis0.14 libnats3.4 libinih1 libjwt0 libjansson4 libssl3
# (libnats3.4 pulls libprotobuf-c1 libb64-0d); librdkafka1 is not linked yet.
RUN make -j2 wsgate && strip wsgate \
    && ldd wsgate | awk '/=> \//{print $3}' | xargs -r readlink -f | xargs -r dpkg -S \
       | cut -d: -f1 | sort -u | grep -vx 'libc6' > runtime-packages \
    && echo "runtime packages: $(tr '\n' ' ' < runtime-packages)"

FROM debian:bookworm-slim
COPY --from=build /src/runtime-packages /tmp/runtime-packages
# Shared libraries only (wslay, nats.c and libjwt ship no static libraries in Debian); no
# compiler, no headers, no curl. A fixed uid/gid 10001 so orchestrators can check
# runAsNonRoot and match it (deploy/k8s uses runAsUser: 10001).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive xargs -a /tmp/runtime-packages \
       apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
       /tmp/runtime-packages \
    && groupadd -r -g 10001 wsgate \
    && useradd -r -u 10001 -g 10001 -M -d /nonexistent -s /usr/sbin/nologin wsgate
COPY --from=build /src/wsgate /usr/local/bin/wsgate
COPY gateway.conf.example /etc/wsgate/gateway.conf.example
USER 10001:10001
EXPOSE 8080
# HEALTHCHECK: the image has no curl or wget and the binary is no HTTP client, but bash
# (Essential in Debian, so in every bookworm image) opens TCP with /dev/tcp: send
# GET /healthz, expect a 200 status line. /healthz = the process serves HTTP (liveness);
# /readyz would also fail while the broker is down, which is not a reason to restart.
# The port follows WSGATE_SERVER_LISTEN (default 8080). Orchestrators with their own
# probes (Kubernetes) ignore this. Needs `--format docker` under podman/buildah (OCI
# images have no HEALTHCHECK).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/bin/bash", "-c", "l=${WSGATE_SERVER_LISTEN:-:8080}; exec 3<>/dev/tcp/127.0.0.1/${l##*:} || exit 1; printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3; read -r -t 2 v s _ <&3; [ \"$s\" = 200 ]"]
# SIGTERM drains: stop accepting, close WebSockets with 1001, exit 0 within
# [server] drain_timeout (10s): give the container at least that before SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/wsgate"]
