# Dockerfile — a two-stage image for wsgate on Debian bookworm (the platform the build
# and tests are verified on). Build: docker build -t wsgate .
# Run:   docker run -p 8080:8080 -e WSGATE_BROKER_TYPE=redis-list \
#          -e WSGATE_REDIS_URL=redis://redis:6379/0 wsgate
FROM debian:bookworm-slim AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc make pkg-config libc6-dev libuv1-dev libwslay-dev libhiredis-dev libnats-dev \
      librdkafka-dev node-llhttp libinih-dev libjwt-dev libjansson-dev libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make wsgate

FROM debian:bookworm-slim
# wslay, nats.c and libjwt ship only shared libraries in Debian: the runtime needs them.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libuv1 libwslay1 libhiredis0.14 libnats3.4 librdkafka1 libinih1 libjwt0 libssl3 \
    && rm -rf /var/lib/apt/lists/* && useradd -r -u 10001 wsgate
COPY --from=build /src/wsgate /usr/local/bin/wsgate
COPY gateway.conf.example /etc/wsgate/gateway.conf.example
USER wsgate
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/wsgate"]
