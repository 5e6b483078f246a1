#!/bin/sh
# run.sh — interop tests: wsgate ($WSGATE_BIN) against Node's `ws` (pinned 8.23.0 in
# package-lock.json) and curl. Installs node_modules with `npm ci` only when it is missing
# or does not match the lock file (works offline once installed). Prints TAP; exits
# non-zero on any failure. Does NOT start brokers: the memory backend is used.
set -u
cd "$(dirname "$0")"
: "${WSGATE_BIN:=$(cd ../.. && pwd)/wsgate}"
export WSGATE_BIN

if ! command -v node >/dev/null 2>&1; then
    echo "not ok 1 - interop: node is not installed"
    exit 1
fi
# Up to date = the installed ws is the version the lock file pins.
if ! node -e '
    const want = require("./package-lock.json").packages["node_modules/ws"].version;
    const have = require("./node_modules/ws/package.json").version;
    process.exit(want === have ? 0 : 1);' 2>/dev/null; then
    npmlog=$(mktemp /tmp/wsgate-npm-ci.XXXXXX)
    if ! npm ci --silent --no-audit --no-fund >"$npmlog" 2>&1; then
        echo "not ok 1 - interop: npm ci failed"
        tail -n 20 "$npmlog" | sed 's/^/# /'
        rm -f "$npmlog"
        exit 1
    fi
    rm -f "$npmlog"
fi
exec node interop.js
