// wsgate.js — tiny shared helper for the interop scripts: start $WSGATE_BIN on a free
// loopback port (listen = 127.0.0.1:0, real port read from the `event=listening` log
// line), collect its log, stop it by PID; plus a minimal TAP runner and HTTP helpers.
// Does NOT implement any WebSocket logic (that is the independent `ws` package's job).
'use strict';

const { spawn } = require('child_process');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');

const BIN = path.resolve(process.env.WSGATE_BIN || path.join(__dirname, '..', '..', 'wsgate'));

// Start wsgate with extra WSGATE_* overrides; resolves to {proc, port, addr, log(), stop()}.
function startWsgate(env = {}, timeoutMs = 5000) {
    const childEnv = {};
    for (const [k, v] of Object.entries(process.env)) {
        if (!k.startsWith('WSGATE_')) childEnv[k] = v; // WSGATE_BIN etc. are not config keys
    }
    Object.assign(childEnv, { WSGATE_SERVER_LISTEN: '127.0.0.1:0' }, env);
    const logPath = path.join(process.env.WSGATE_TEST_LOGDIR || os.tmpdir(), `wsgate-interop-${process.pid}-${Date.now()}.log`);
    const logFile = fs.createWriteStream(logPath);
    const proc = spawn(BIN, [], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    const lines = [];
    let exitInfo = null;
    const exited = new Promise((resolve) => {
        proc.on('exit', (code, signal) => {
            exitInfo = { code, signal };
            resolve(exitInfo);
        });
    });
    return new Promise((resolve, reject) => {
        let partial = '';
        let done = false;
        const timer = setTimeout(() => {
            if (done) return;
            done = true;
            proc.kill('SIGKILL');
            reject(new Error(`wsgate did not log event=listening in ${timeoutMs} ms:\n` +
                lines.slice(-10).join('\n')));
        }, timeoutMs);
        const onData = (buf) => {
            logFile.write(buf);
            partial += buf.toString('utf8');
            const parts = partial.split('\n');
            partial = parts.pop();
            for (const line of parts) {
                lines.push(line);
                const m = /event=listening.*addr=127\.0\.0\.1:(\d+)|addr=127\.0\.0\.1:(\d+).*event=listening/.exec(line);
                if (m && !done) {
                    done = true;
                    clearTimeout(timer);
                    const port = Number(m[1] || m[2]);
                    resolve({
                        proc, port, addr: `127.0.0.1:${port}`, logPath,
                        log: () => lines.join('\n'),
                        tail: (n = 15) => lines.slice(-n).join('\n'),
                        exited,
                        exitInfo: () => exitInfo,
                        stop: async (ms = 5000) => {
                            if (exitInfo) return exitInfo;
                            proc.kill('SIGTERM');
                            const t = setTimeout(() => proc.kill('SIGKILL'), ms);
                            const r = await exited;
                            clearTimeout(t);
                            return r;
                        },
                    });
                }
            }
        };
        proc.stdout.on('data', onData);
        proc.stderr.on('data', onData);
        proc.on('error', (e) => {
            if (!done) {
                done = true;
                clearTimeout(timer);
                reject(e);
            }
        });
        proc.on('exit', (code, signal) => {
            if (!done) {
                done = true;
                clearTimeout(timer);
                reject(new Error(`wsgate exited (${code}/${signal}) before listening:\n` +
                    lines.slice(-10).join('\n')));
            }
        });
    });
}

// One HTTP request with Node's own client; resolves {status, headers, body(Buffer)}.
function request(port, method, urlPath, body) {
    return new Promise((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, agent: false },
            (res) => {
                const chunks = [];
                res.on('data', (c) => chunks.push(c));
                res.on('end', () => resolve({
                    status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks),
                }));
            });
        req.on('error', reject);
        req.setTimeout(5000, () => req.destroy(new Error('HTTP request timed out')));
        if (body !== undefined) req.end(body);
        else req.end();
    });
}

// Minimal TAP runner: add(name, async fn) then run(ctx) -> number of failures.
function tap() {
    const tests = [];
    return {
        add(name, fn, timeoutMs = 10000) {
            tests.push({ name, fn, timeoutMs });
        },
        async run(onFail) {
            console.log(`1..${tests.length}`);
            let failed = 0;
            let n = 0;
            for (const t of tests) {
                n++;
                let timer;
                try {
                    await Promise.race([
                        t.fn(),
                        new Promise((_, rej) => {
                            timer = setTimeout(() => rej(new Error(`timed out after ${t.timeoutMs} ms`)),
                                t.timeoutMs);
                        }),
                    ]);
                    console.log(`ok ${n} - ${t.name}`);
                } catch (e) {
                    failed++;
                    console.log(`not ok ${n} - ${t.name}`);
                    for (const l of String(e && e.stack ? e.stack : e).split('\n').slice(0, 6)) {
                        console.log(`# ${l}`);
                    }
                    if (onFail) for (const l of onFail().split('\n')) console.log(`# | ${l}`);
                } finally {
                    clearTimeout(timer);
                }
            }
            console.log(`# ${tests.length - failed} passed, ${failed} failed`);
            return failed;
        },
    };
}

function assert(cond, msg) {
    if (!cond) throw new Error(msg);
}

module.exports = { BIN, startWsgate, request, tap, assert };
