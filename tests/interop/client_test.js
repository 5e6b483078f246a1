// client_test.js — web/wsgate.js (the browser client the gateway serves as /wsgate.js)
// run under Node with the pinned `ws` as its WebSocket. Registered into interop.js's TAP
// run by add(t). Covers: text/binary delivery (string / ArrayBuffer), reconnect after the
// gateway is SIGKILLed and restarted on the same port (a push made after the restart
// arrives), full-jitter backoff bounds and the reset after a stable connection, maxRetries,
// close() stopping for good, a token function called per attempt (bearer subprotocol,
// a refused first token is retried), and stop codes (4001 stops, 1008 does not) against a
// local `ws` server. Each test starts its own gateway(s) and stops them by PID.
'use strict';

const { spawnSync } = require('child_process');
const crypto = require('crypto');
const path = require('path');
const WebSocket = require('ws');
const { BIN, startWsgate, request, assert } = require('./wsgate');

const WsgateClient = require(path.join(__dirname, '..', '..', 'web', 'wsgate.js'));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Records everything a client emits; waitFor(pred, ms, what) polls the record.
function record(c) {
    const rec = { events: [], messages: [], states: [], delays: [], opens: 0, closes: [] };
    c.onmessage = (e) => { rec.messages.push(e); rec.events.push('message'); };
    c.onopen = () => { rec.opens++; rec.events.push('open'); };
    c.onclose = (e) => { rec.closes.push(e); rec.events.push(`close ${e.code}`); };
    c.onreconnecting = (e) => { rec.delays.push(e); rec.events.push(`retry ${e.attempt} ${e.delay}`); };
    c.addEventListener('statechange', (e) => rec.states.push(e.state));
    c.onerror = () => { rec.events.push('error'); };
    return rec;
}

async function waitFor(pred, ms, what) {
    const end = Date.now() + ms;
    for (;;) {
        const v = pred();
        if (v) return v;
        if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await sleep(10);
    }
}

// An event without its target (the client, which is circular) for messages.
function show(e) {
    const o = Object.assign({}, e);
    delete o.target;
    return JSON.stringify(o);
}

function bound(c, attempt) {
    return Math.min(c.cap, c.base * 2 ** attempt);
}

function mint(secret, sub) {
    const env = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('WSGATE_')) env[k] = v;
    env.WSGATE_AUTH_JWT_SECRET = secret;
    const r = spawnSync(BIN, ['--mint-token', sub, '--ttl', '5m'], { env, encoding: 'utf8' });
    assert(r.status === 0, `--mint-token exit ${r.status}: ${r.stderr}`);
    return r.stdout.trim();
}

function add(t) {
    t.add('wsgate.js under ws: text as string, binary as ArrayBuffer, states connecting -> open', async () => {
        const srv = await startWsgate({ WSGATE_SERVER_DRAIN_TIMEOUT: '3s' });
        const c = new WsgateClient({ url: `ws://${srv.addr}`, session: 'js-basic', topics: 'news',
            WebSocket });
        try {
            assert(c.state === 'connecting', `initial state ${c.state}`);
            assert(c.url === `ws://${srv.addr}/ws/js-basic?topics=news`, `url ${c.url}`);
            const rec = record(c);
            await waitFor(() => c.state === 'open', 3000, 'open');
            const text = 'h\u00e9llo \u2713';
            const bin = Buffer.from([0, 1, 0xff, 0xfe, 0x80]);
            for (const b of [Buffer.from(text, 'utf8'), bin]) {
                const r = await request(srv.port, 'POST', '/push/js-basic', b);
                assert(r.status === 202, `push status ${r.status}`);
            }
            const r = await request(srv.port, 'POST', '/publish/news', 'broadcast');
            assert(r.status === 202, `publish status ${r.status}`);
            await waitFor(() => rec.messages.length >= 3, 3000, '3 messages');
            const [m1, m2, m3] = rec.messages;
            assert(!m1.binary && m1.data === text, `text: ${m1.binary} ${JSON.stringify(m1.data)}`);
            assert(m2.binary && m2.data instanceof ArrayBuffer, `binary arrived as ${m2.data && m2.data.constructor.name}`);
            assert(Buffer.from(m2.data).equals(bin), `binary bytes ${Buffer.from(m2.data).toString('hex')}`);
            assert(!m3.binary && m3.data === 'broadcast', `broadcast ${JSON.stringify(m3.data)}`);
            assert(c.protocol === '', `protocol without a token: ${JSON.stringify(c.protocol)}`);
            assert(c.send('up') === true, 'send() on an open client returned false');
        } finally {
            c.close();
            await srv.stop();
        }
    });

    t.add('wsgate.js reconnects after the gateway is killed and restarted on the same port', async () => {
        let srv = await startWsgate({ WSGATE_SERVER_DRAIN_TIMEOUT: '3s' });
        const port = srv.port;
        const c = new WsgateClient({ url: `http://${srv.addr}`, session: 'js-restart', WebSocket,
            base: 50, cap: 400, stable: 200 });
        const rec = record(c);
        try {
            await waitFor(() => c.state === 'open', 3000, 'first open');
            let r = await request(port, 'POST', '/push/js-restart', 'before');
            assert(r.status === 202, `push status ${r.status}`);
            await waitFor(() => rec.messages.length === 1, 3000, 'message before the restart');
            await sleep(250); // > stable: the backoff starts from attempt 0
            srv.proc.kill('SIGKILL');
            await srv.exited;
            await waitFor(() => rec.delays.length >= 3, 5000, '3 failed attempts while the gateway is down');
            assert(rec.closes[0].code === 1006 && rec.closes[0].opened && rec.closes[0].willReconnect,
                `first close ${show(rec.closes[0])}`);
            assert(c.state === 'reconnecting', `state while down: ${c.state}`);
            srv = await startWsgate({ WSGATE_SERVER_LISTEN: `127.0.0.1:${port}`, WSGATE_SERVER_DRAIN_TIMEOUT: '3s' });
            assert(srv.port === port, `restarted on ${srv.port}, want ${port}`);
            r = await request(port, 'POST', '/push/js-restart', 'after restart');
            assert(r.status === 202, `push after restart: status ${r.status}`);
            await waitFor(() => rec.messages.length === 2, 4000, 'the message pushed after the restart');
            assert(rec.messages[1].data === 'after restart', `got ${JSON.stringify(rec.messages[1].data)}`);
            assert(c.state === 'open' && rec.opens === 2, `state ${c.state}, opens ${rec.opens}`);
            rec.delays.forEach((d, i) => {
                assert(d.attempt === i, `retry ${i} has attempt ${d.attempt} (no reset while failing)`);
                assert(d.delay >= 0 && d.delay <= bound(c, d.attempt),
                    `retry ${i}: delay ${d.delay} outside [0, ${bound(c, d.attempt)}]`);
            });
            assert(rec.states.join(',') === 'open,reconnecting,open',
                `state changes ${rec.states.join(',')}`);
        } finally {
            c.close();
            await srv.stop();
        }
    }, 15000);

    t.add('wsgate.js backoff: full jitter within min(cap, base*2^n), capped; maxRetries stops', async () => {
        // a port nobody listens on: start a gateway, note its port, stop it
        const srv = await startWsgate({ WSGATE_SERVER_DRAIN_TIMEOUT: '3s' });
        const port = srv.port;
        await srv.stop();
        const rolls = [0.999999, 0, 0.5];
        let n = 0;
        const c = new WsgateClient({ url: `ws://127.0.0.1:${port}`, session: 'js-backoff', WebSocket,
            base: 10, cap: 80, maxRetries: 7, random: () => rolls[n++ % rolls.length] });
        const rec = record(c);
        await waitFor(() => c.state === 'closed', 5000, 'state closed after maxRetries');
        assert(rec.delays.length === 7, `${rec.delays.length} retries, want 7`);
        const want = [0, 1, 2, 3, 4, 5, 6].map((i) => Math.floor(rolls[i % 3] * Math.min(80, 10 * 2 ** i)));
        const got = rec.delays.map((d) => d.delay);
        assert(JSON.stringify(got) === JSON.stringify(want), `delays ${got}, want ${want}`);
        assert(Math.max(...got) <= 80, `a delay over the cap: ${got}`);
        const last = rec.closes[rec.closes.length - 1];
        assert(rec.closes.length === 8 && !last.willReconnect && !last.opened,
            `closes ${rec.closes.length}, last ${show(last)}`);
        await sleep(150);
        assert(rec.closes.length === 8, 'an attempt after the client stopped');
        // real Math.random: every delay within its bound
        const c2 = new WsgateClient({ url: `ws://127.0.0.1:${port}`, session: 'js-backoff2', WebSocket,
            base: 5, cap: 40, maxRetries: 12 });
        const rec2 = record(c2);
        await waitFor(() => c2.state === 'closed', 5000, 'c2 closed after maxRetries');
        rec2.delays.forEach((d) => assert(d.delay >= 0 && d.delay <= bound(c2, d.attempt),
            `attempt ${d.attempt}: delay ${d.delay} outside [0, ${bound(c2, d.attempt)}]`));
        assert(new Set(rec2.delays.map((d) => d.delay)).size > 3, `no jitter: ${rec2.delays.map((d) => d.delay)}`);
    });

    t.add('wsgate.js close() stops for good: open and while reconnecting', async () => {
        const srv = await startWsgate({ WSGATE_SERVER_DRAIN_TIMEOUT: '3s' });
        try {
            const c = new WsgateClient({ url: `ws://${srv.addr}`, session: 'js-close', WebSocket, base: 20, cap: 40 });
            const rec = record(c);
            await waitFor(() => c.state === 'open', 3000, 'open');
            c.close();
            assert(c.state === 'closed', `state after close(): ${c.state}`);
            await waitFor(() => rec.closes.length === 1, 2000, 'the close event');
            assert(rec.closes[0].code === 1000 && !rec.closes[0].willReconnect, `close ${show(rec.closes[0])}`);
            const r = await request(srv.port, 'POST', '/push/js-close', 'nobody');
            assert(r.status === 202, `push status ${r.status}`);
            await sleep(300);
            assert(rec.opens === 1 && rec.messages.length === 0 && rec.delays.length === 0,
                `after close(): ${rec.events.join(', ')}`);
            assert(c.send('x') === false, 'send() after close() returned true');
            // close() while a retry is pending (nothing listens on port 9)
            const dead = new WsgateClient({ url: 'ws://127.0.0.1:9', session: 'js-close2', WebSocket,
                base: 30, cap: 30 });
            const rd = record(dead);
            await waitFor(() => rd.delays.length >= 1, 3000, 'a scheduled retry');
            dead.close();
            const seen = rd.events.length;
            await sleep(200);
            assert(dead.state === 'closed' && rd.events.length === seen,
                `events after close(): ${rd.events.slice(seen).join(', ')}`);
        } finally {
            await srv.stop();
        }
    });

    t.add('wsgate.js token function per attempt via bearer subprotocol; a refused token is retried', async () => {
        const secret = 'client-secret-' + crypto.randomBytes(8).toString('hex');
        const good = mint(secret, 'js-auth');
        const srv = await startWsgate({ WSGATE_AUTH_JWT_SECRET: secret, WSGATE_SERVER_DRAIN_TIMEOUT: '3s' });
        const calls = [];
        const c = new WsgateClient({ url: `ws://${srv.addr}`, session: 'js-auth', WebSocket, base: 20, cap: 50,
            token: () => {
                calls.push(Date.now());
                // first attempt: a token for another session (403); then a good one, async
                return calls.length === 1 ? mint(secret, 'someone-else') : sleep(5).then(() => good);
            } });
        const rec = record(c);
        try {
            await waitFor(() => c.state === 'open', 4000, 'open with the second token');
            assert(calls.length === 2, `token function called ${calls.length} times, want 2`);
            assert(rec.closes.length === 1 && rec.closes[0].code === 1006 && !rec.closes[0].opened &&
                rec.closes[0].willReconnect, `refusal seen as ${show(rec.closes[0])}`);
            assert(c.protocol === 'bearer', `protocol ${JSON.stringify(c.protocol)}, want bearer`);
            const r = await request(srv.port, 'POST', '/push/js-auth', 'authorised');
            assert(r.status === 202, `push status ${r.status}`);
            await waitFor(() => rec.messages.length === 1, 3000, 'the message');
            assert(rec.messages[0].data === 'authorised', `got ${rec.messages[0].data}`);
            assert(!srv.log().includes(good), 'the token reached the server log');
        } finally {
            c.close();
            await srv.stop();
        }
    });

    t.add('wsgate.js stop codes: 4001 stops for good, 1008 reconnects (local ws server)', async () => {
        const wss = new WebSocket.Server({ host: '127.0.0.1', port: 0 });
        await new Promise((r) => wss.once('listening', r));
        let n = 0;
        wss.on('connection', (s) => {
            n++;
            s.close(n === 1 ? 1008 : 4001, 'bye');
        });
        const c = new WsgateClient({ url: `ws://127.0.0.1:${wss.address().port}`, session: 'js-stop',
            WebSocket, base: 10, cap: 20 });
        const rec = record(c);
        try {
            await waitFor(() => c.state === 'closed', 3000, 'state closed');
            assert(n === 2, `${n} connections, want 2`);
            const codes = rec.closes.map((e) => `${e.code}:${e.willReconnect}`).join(',');
            assert(codes === '1008:true,4001:false', `closes ${codes}`);
            await sleep(100);
            assert(n === 2, 'reconnected after 4001');
        } finally {
            c.close();
            await new Promise((r) => wss.close(r));
        }
    });

    t.add('wsgate.js refuses a bad session key or topic up front (no retry loop on a 400)', async () => {
        for (const bad of [{ session: 'a..b' }, { session: '' }, { session: 'x', topics: ['ok', 'no/slash'] },
            { session: 'a'.repeat(129) }]) {
            let threw = false;
            try {
                new WsgateClient(Object.assign({ url: 'ws://127.0.0.1:9', WebSocket, autoConnect: false }, bad));
            } catch (e) {
                threw = e instanceof TypeError;
            }
            assert(threw, `no TypeError for ${JSON.stringify(bad)}`);
        }
        const ok = new WsgateClient({ url: 'wss://gw.example/prefix/', session: 'svc1.user:42', WebSocket,
            autoConnect: false });
        assert(ok.url === 'wss://gw.example/prefix/ws/svc1.user:42', `url ${ok.url}`);
    });
}

module.exports = { add };
