#!/bin/sh
# deps.sh — install every Debian package wsgate needs to build, run, test and bench.
# Skips apt entirely when everything is present. As root it runs apt-get; otherwise it
# prints exactly what is missing and the command to run, and fails.
# Usage: scripts/deps.sh [build|test|bench|container]   (default: test = build + test
# servers + clang and libFuzzer for the fuzz targets + chromium-headless-shell and a font
# for tests/browser/test_browser.py)
set -eu

BUILD="libuv1-dev libwslay-dev libhiredis-dev libnats-dev librdkafka-dev node-llhttp pkg-config \
libinih-dev libjwt-dev libjansson-dev libssl-dev zlib1g-dev gcc make"
TEST="$BUILD libcmocka-dev redis-server redis-tools nats-server kcat python3 python3-websockets \
python3-jwt python3-cryptography python3-yaml \
curl nodejs npm clang libclang-rt-14-dev chromium-headless-shell fonts-dejavu-core"
BENCH="$TEST nginx-light libnginx-mod-nchan"
# container: `make test-container` (build the image with podman, check its filesystem)
CONTAINER="$TEST podman mmdebstrap"

case "${1:-test}" in
build) PKGS=$BUILD ;;
test) PKGS=$TEST ;;
bench) PKGS=$BENCH ;;
container) PKGS=$CONTAINER ;;
*) echo "usage: $0 [build|test|bench|container]" >&2; exit 2 ;;
esac

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        # node/npm may come from outside Debian (e.g. nodesource): accept a working binary.
        case "$p" in
        nodejs) command -v node >/dev/null 2>&1 && continue ;;
        npm) command -v npm >/dev/null 2>&1 && continue ;;
        gcc) command -v gcc >/dev/null 2>&1 && continue ;;
        make) command -v make >/dev/null 2>&1 && continue ;;
        curl) command -v curl >/dev/null 2>&1 && continue ;;
        python3) [ -x /usr/bin/python3 ] && continue ;;
        esac
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: missing Debian packages:$missing" >&2
    echo "deps.sh: run as root: apt-get update && apt-get install -y --no-install-recommends$missing" >&2
    exit 1
fi
echo "deps.sh: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing >/dev/null
echo "deps.sh: done" >&2
