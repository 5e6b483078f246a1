// interop.js — wsgate against independent clients: Node's `ws` 8.23.0 (a widely used
// RFC 6455 implementation we did not write) and curl. Prints TAP. Covers: push and
// broadcast delivery (text/binary by the bytes), client frames (ping, fragments), close
// codes 1009/1007/1001, a curl push of 100 KiB byte-exact to a `ws` client, and a client JWT
// carried as the subprotocol pair ['bearer', token] (token from `wsgate --mint-token`);
// and web/wsgate.js, the browser client, driven by `ws` (client_test.js).
// Does NOT re-test every edge case (tests/integration/ does that with our own client).
'use strict';

const { spawnSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const WebSocket = require('ws');
const { BIN, startWsgate, request, tap, assert } = require('./wsgate');

const MAX = 128 * 1024; // WSGATE_SERVER_MAX_MESSAGE_SIZE below

// A `ws` client with a message queue: next() resolves the next {data, isBinary}.
class Client {
    constructor(url) {
        this.url = url;
        this.queue = [];
        this.waiters = [];
        this.ws = new WebSocket(url); // default options: offers permessage-deflate
        this.closed = new Promise((resolve) => {
            this.ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
        });
        this.ws.on('message', (data, isBinary) => {
            const m = { data: Buffer.from(data), isBinary };
            const w = this.waiters.shift();
            if (w) w(m);
            else this.queue.push(m);
        });
        this.ws.on('error', (e) => { this.error = e; });
    }

    open() {
        return new Promise((resolve, reject) => {
            this.ws.once('open', () => resolve(this));
            this.ws.once('error', reject);
            this.ws.once('unexpected-response', (req, res) =>
                reject(new Error(`${this.url}: HTTP ${res.statusCode} instead of 101`)));
        });
    }

    next(ms = 3000) {
        if (this.queue.length) return Promise.resolve(this.queue.shift());
        return new Promise((resolve, reject) => {
            const t = setTimeout(() => reject(new Error(`${this.url}: no message in ${ms} ms`)), ms);
            this.waiters.push((m) => {
                clearTimeout(t);
                resolve(m);
            });
        });
    }

    async nothingWithin(ms) {
        await new Promise((r) => setTimeout(r, ms));
        return this.queue.length === 0;
    }

    closeCode(ms = 3000) {
        return Promise.race([
            this.closed,
            new Promise((_, rej) => setTimeout(() => rej(new Error(`${this.url}: not closed in ${ms} ms`)), ms)),
        ]);
    }
}

async function connect(srv, p) {
    return new Client(`ws://${srv.addr}${p}`).open();
}

function same(a, b) {
    return Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;
}

async function main() {
    const srv = await startWsgate({ WSGATE_SERVER_MAX_MESSAGE_SIZE: '128k',
        WSGATE_SERVER_DRAIN_TIMEOUT: '3s' });
    const t = tap();
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wsgate-interop-'));

    t.add('ws receives a text push byte-exact as a text message', async () => {
        const c = await connect(srv, '/ws/node-text');
        const body = Buffer.from('h\u00e9llo \u20ac \u{1F600}', 'utf8');
        const r = await request(srv.port, 'POST', '/push/node-text', body);
        assert(r.status === 202, `push status ${r.status} ${r.body}`);
        assert(JSON.stringify(JSON.parse(r.body)) === '{"ok":true}', `push body ${r.body}`);
        const m = await c.next();
        assert(!m.isBinary, 'text push arrived as a binary message');
        assert(same(m.data, body), `payload ${m.data.toString('hex')}`);
        c.ws.close(1000);
        const cl = await c.closeCode();
        assert(cl.code === 1000, `close echo ${cl.code}`);
    });

    t.add('ws receives a binary push (NULs, invalid UTF-8) as a binary message', async () => {
        const c = await connect(srv, '/ws/node-bin');
        const body = Buffer.from([0, 1, 0xff, 0xfe, 0, 0xc0, 0xaf]);
        const r = await request(srv.port, 'POST', '/push/node-bin', body);
        assert(r.status === 202, `push status ${r.status}`);
        const m = await c.next();
        assert(m.isBinary, 'binary push arrived as text');
        assert(same(m.data, body), `payload ${m.data.toString('hex')}`);
        const r2 = await request(srv.port, 'POST', '/push/node-bin', Buffer.alloc(0));
        assert(r2.status === 202, `empty push status ${r2.status}`);
        const m2 = await c.next();
        assert(!m2.isBinary && m2.data.length === 0, `empty push gave ${m2.isBinary} ${m2.data.length}`);
        c.ws.close();
    });

    t.add('ws clients on ?topics= receive a broadcast; others do not', async () => {
        const subs = [];
        for (let i = 0; i < 20; i++) subs.push(await connect(srv, `/ws/node-sub${i}?topics=news,other`));
        const outsider = await connect(srv, '/ws/node-outsider?topics=sport');
        const r = await request(srv.port, 'POST', '/publish/news', 'breaking');
        assert(r.status === 202, `publish status ${r.status}`);
        const got = await Promise.all(subs.map((c) => c.next()));
        got.forEach((m, i) => assert(!m.isBinary && m.data.toString() === 'breaking',
            `subscriber ${i} got ${m.data}`));
        assert(await outsider.nothingWithin(300), 'a client on another topic got the broadcast');
        assert(subs.every((c) => c.queue.length === 0), 'a subscriber got the broadcast twice');
        for (const c of subs.concat([outsider])) c.ws.close();
    });

    t.add('ws ping gets a pong with the same payload', async () => {
        const c = await connect(srv, '/ws/node-ping');
        const pong = new Promise((resolve) => c.ws.once('pong', (d) => resolve(Buffer.from(d))));
        c.ws.ping(Buffer.from('are you there'));
        const d = await pong;
        assert(d.toString() === 'are you there', `pong payload ${d}`);
        c.ws.close();
    });

    t.add('ws fragmented message is accepted; connection keeps receiving', async () => {
        const c = await connect(srv, '/ws/node-frag');
        c.ws.send('part one, ', { fin: false });
        c.ws.send('part two', { fin: true });
        c.ws.send(Buffer.alloc(MAX, 7), { binary: true }); // exactly the limit
        const r = await request(srv.port, 'POST', '/push/node-frag', 'after');
        assert(r.status === 202, `push status ${r.status}`);
        const m = await c.next();
        assert(m.data.toString() === 'after', `got ${m.data}`);
        c.ws.close();
    });

    t.add('ws message over max_message_size is closed with 1009', async () => {
        const c = await connect(srv, '/ws/node-big');
        c.ws.send(Buffer.alloc(MAX + 1, 1));
        const cl = await c.closeCode();
        assert(cl.code === 1009, `close code ${cl.code}, want 1009`);
        const c2 = await connect(srv, '/ws/node-big2');
        c2.ws.send(Buffer.alloc(MAX / 2, 0x61), { fin: false });
        c2.ws.send(Buffer.alloc(MAX / 2 + 10, 0x61), { fin: true });
        const cl2 = await c2.closeCode();
        assert(cl2.code === 1009, `fragmented oversize: close code ${cl2.code}, want 1009`);
    });

    t.add('ws text message with invalid UTF-8 is closed with 1007', async () => {
        const c = await connect(srv, '/ws/node-utf');
        c.ws.send(Buffer.from([0x61, 0xff, 0x62]), { binary: false });
        const cl = await c.closeCode();
        assert(cl.code === 1007, `close code ${cl.code}, want 1007`);
    });

    t.add('bad session key is refused with a 400 the ws client reports', async () => {
        const c = new Client(`ws://${srv.addr}/ws/bad..key`);
        let status = null;
        await new Promise((resolve) => {
            c.ws.once('unexpected-response', (req, res) => {
                status = res.statusCode;
                res.resume();
                resolve();
            });
            c.ws.once('error', resolve);
            c.ws.once('open', resolve);
        });
        assert(status === 400, `status ${status}, want 400`);
    });

    t.add('curl pushes 100 KiB byte-exact to a ws client (binary and text)', async () => {
        const c = await connect(srv, '/ws/node-curl');
        const bodies = [crypto.randomBytes(100 * 1024),
            Buffer.from('\u00e9'.repeat(50 * 1024), 'utf8')];
        for (const [i, body] of bodies.entries()) {
            const f = path.join(tmp, `body${i}`);
            fs.writeFileSync(f, body);
            const p = spawnSync('curl', ['-sS', '--max-time', '10', '-o', '/dev/null', '-w', '%{http_code}',
                '--data-binary', `@${f}`, `http://${srv.addr}/push/node-curl`], { encoding: 'utf8' });
            assert(p.stdout === '202', `curl: status ${p.stdout} ${p.stderr}`);
            const m = await c.next(5000);
            assert(m.isBinary === (i === 0), `body ${i}: isBinary ${m.isBinary}`);
            assert(same(m.data, body), `body ${i}: ${m.data.length} bytes differ from ${body.length}`);
        }
        c.ws.close();
    });

    t.add('JWT via subprotocol: protocols [bearer, token] gets 101 + protocol bearer; none gets 401', async () => {
        const secret = 'interop-secret-' + crypto.randomBytes(8).toString('hex');
        const env = {};
        for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('WSGATE_')) env[k] = v;
        env.WSGATE_AUTH_JWT_SECRET = secret;
        const mint = spawnSync(BIN, ['--mint-token', 'node-auth', '--ttl', '5m'], { env, encoding: 'utf8' });
        assert(mint.status === 0, `--mint-token exit ${mint.status}: ${mint.stderr}`);
        const token = mint.stdout.trim();
        assert(token.split('.').length === 3, 'minted token is not a JWT');
        const asrv = await startWsgate({ WSGATE_AUTH_JWT_SECRET: secret, WSGATE_SERVER_DRAIN_TIMEOUT: '3s' });
        try {
            const ws = new WebSocket(`ws://${asrv.addr}/ws/node-auth`, ['bearer', token]);
            const msg = new Promise((resolve) => ws.once('message', (d) => resolve(Buffer.from(d))));
            await new Promise((resolve, reject) => {
                ws.once('open', resolve);
                ws.once('error', reject);
                ws.once('unexpected-response', (req, res) =>
                    reject(new Error(`HTTP ${res.statusCode} instead of 101`)));
            });
            assert(ws.protocol === 'bearer', `ws.protocol ${JSON.stringify(ws.protocol)}, want bearer`);
            const r = await request(asrv.port, 'POST', '/push/node-auth', 'authorised');
            assert(r.status === 202, `push status ${r.status}`);
            const m = await Promise.race([msg, new Promise((_, rej) =>
                setTimeout(() => rej(new Error('no message in 3 s')), 3000))]);
            assert(m.toString() === 'authorised', `got ${m}`);
            ws.close(1000);

            const anon = new WebSocket(`ws://${asrv.addr}/ws/node-auth`);
            const got = await new Promise((resolve) => {
                anon.once('unexpected-response', (req, res) => {
                    const www = res.headers['www-authenticate'];
                    res.resume();
                    req.destroy();
                    resolve({ status: res.statusCode, www });
                });
                anon.once('open', () => resolve({ status: 101 }));
                anon.once('error', (e) => resolve({ status: `error ${e.message}` }));
            });
            assert(got.status === 401, `without a token: ${got.status}, want 401`);
            assert(got.www === 'Bearer', `WWW-Authenticate ${got.www}`);
            assert(!asrv.log().includes(token), 'the token reached the server log');
        } finally {
            const ex = await asrv.stop();
            assert(ex.code === 0, `auth server exit ${ex.code} signal ${ex.signal}`);
        }
    });

    // web/wsgate.js (the browser client) under Node: its own gateways, see client_test.js
    require('./client_test').add(t);

    t.add('SIGTERM: ws clients see close 1001, wsgate exits 0', async () => {
        const cs = [];
        for (let i = 0; i < 3; i++) cs.push(await connect(srv, `/ws/node-term${i}`));
        srv.proc.kill('SIGTERM');
        const codes = await Promise.all(cs.map((c) => c.closeCode(4000)));
        codes.forEach((cl, i) => assert(cl.code === 1001, `client ${i}: close code ${cl.code}`));
        const ex = await Promise.race([srv.exited,
            new Promise((_, rej) => setTimeout(() => rej(new Error('wsgate still running 4 s after SIGTERM')), 4000))]);
        assert(ex.code === 0, `exit ${ex.code} signal ${ex.signal}`);
    });

    const failed = await t.run(() => `wsgate log ${srv.logPath}:\n${srv.tail(12)}`);
    const ex = await srv.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
    if (ex.code !== 0 && !failed) {
        console.log(`not ok - wsgate exit status ${ex.code} signal ${ex.signal}`);
        console.log(`# ${srv.tail(20).split('\n').join('\n# ')}`);
        process.exit(1);
    }
    process.exit(failed ? 1 : 0);
}

main().catch((e) => {
    console.log('not ok 1 - interop setup');
    console.log(`# ${String(e.stack || e).split('\n').join('\n# ')}`);
    process.exit(1);
});
