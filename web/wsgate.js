/*! wsgate.js — browser (and Node) client for wsgate. No dependencies; vendor this file.
 *
 *   const c = new WsgateClient({ session: 'user42', topics: ['news'], token: () => fetchJwt() });
 *   c.onmessage = (e) => console.log(e.binary ? e.data.byteLength : e.data);
 *   c.close();                                   // stops for good
 *
 * Options (all optional except session):
 *   url        gateway base, 'ws://host:port' (http/https are turned into ws/wss; a path
 *              prefix is kept). Default in a browser: this page's host, ws: or wss:.
 *   session    session key: 1-128 of [A-Za-z0-9_:.-], no leading/trailing '.', no '..'
 *              (checked here: a bad key throws instead of retrying a 400 forever).
 *   topics     array or comma-separated string -> ?topics=a,b (each checked like a key).
 *   token      JWT string, or a function returning a string or a Promise of one; called
 *              before EVERY attempt, so it can hand out a fresh token. Sent as the
 *              subprotocol pair ['bearer', token] (never in the URL); the 101 selects
 *              'bearer'. Empty/null: no subprotocol.
 *   WebSocket  implementation, e.g. require('ws') under Node. Default: globalThis.WebSocket.
 *   base, cap  backoff in ms (default 500, 30000); stable: ms a connection must stay
 *              open to reset the backoff (default 5000).
 *   maxRetries consecutive failed attempts before giving up (default Infinity).
 *   stopCodes  close codes after which the client stops for good (default 4001-4003,
 *              the application range for "not authorised"; see below).
 *   random     () => [0,1) (default Math.random; tests pass their own).
 *   autoConnect  default true; false = call connect() yourself.
 *
 * What it does, exactly:
 *   - state: 'connecting' (first attempt), 'open', 'reconnecting' (waiting or retrying
 *     after a drop or a failed attempt), 'closed' (close() called, or stopped for good).
 *   - Every closure that is not close() schedules another attempt after
 *     delay = random() * min(cap, base * 2^attempt)  ("full jitter"), where attempt
 *     counts consecutive failures: 0 for the first retry after a stable connection.
 *     A connection that closes before 'open' (a refused handshake: a browser only sees
 *     close code 1006, never the 401/403) or less than `stable` ms after it is a failure;
 *     one that stayed open `stable` ms resets attempt to 0.
 *   - A token function that throws or rejects counts as a failed attempt (event 'error').
 *   - It stops for good (state 'closed', close event with willReconnect=false) on a close
 *     code in stopCodes, or after maxRetries consecutive failures. 1008 is NOT a stop
 *     code by default: wsgate refuses bad tokens before the 101 (so 1006 here) and uses
 *     1008 for a client that read too slowly, which a reconnect fixes.
 *   - Text messages arrive as strings, binary as ArrayBuffer (binaryType 'arraybuffer').
 *
 * Events (on<type> property and/or addEventListener(type, fn)); each gets one object:
 *   open        {type, protocol, url}
 *   message     {type, data: string|ArrayBuffer, binary: boolean}
 *   close       {type, code, reason, wasClean, opened, willReconnect}
 *   reconnecting {type, attempt, delay}        (a retry is scheduled in delay ms)
 *   statechange {type, state, previous}
 *   error       {type, error}                  (informational; a close follows)
 * Methods: connect(), close(code = 1000, reason), send(data) -> boolean (with
 * [websocket] upstream = on the gateway forwards it to the services). close() sets state
 * 'closed' at once; a 'close' event follows only if a socket was open (its real code).
 */
(function (root) {
    'use strict';

    var KEY_RE = /^[A-Za-z0-9_:.\-]{1,128}$/;
    var EVENTS = ['open', 'message', 'close', 'error', 'reconnecting', 'statechange'];

    function validKey(k) {
        return typeof k === 'string' && KEY_RE.test(k) && k.charAt(0) !== '.' &&
            k.charAt(k.length - 1) !== '.' && k.indexOf('..') < 0;
    }

    function baseUrl(url) {
        if (!url) {
            var loc = root.location;
            if (!loc || !loc.host) throw new TypeError('WsgateClient: url is required outside a browser page');
            url = (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host;
        }
        url = String(url).replace(/^http(s?):/i, 'ws$1:').replace(/\/+$/, '');
        if (!/^wss?:\/\//i.test(url)) throw new TypeError('WsgateClient: url must be ws://, wss://, http:// or https://');
        return url;
    }

    function toArrayBuffer(d) {
        if (d instanceof ArrayBuffer) return d;
        if (d && d.buffer instanceof ArrayBuffer && typeof d.byteLength === 'number') // Buffer, typed array
            return d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength);
        return d; // unexpected (a Blob): passed on as is
    }

    function WsgateClient(opts) {
        if (!(this instanceof WsgateClient)) return new WsgateClient(opts);
        opts = opts || {};
        if (!validKey(opts.session)) throw new TypeError('WsgateClient: invalid session key ' + JSON.stringify(opts.session));
        var topics = opts.topics || [];
        if (typeof topics === 'string') topics = topics.split(',').filter(Boolean);
        topics.forEach(function (t) {
            if (!validKey(t)) throw new TypeError('WsgateClient: invalid topic ' + JSON.stringify(t));
        });
        this.WebSocket = opts.WebSocket || root.WebSocket;
        if (typeof this.WebSocket !== 'function') throw new TypeError('WsgateClient: no WebSocket implementation (pass opts.WebSocket)');
        this.session = opts.session;
        this.topics = topics.slice();
        this.url = baseUrl(opts.url) + '/ws/' + opts.session + (topics.length ? '?topics=' + topics.join(',') : '');
        this.token = opts.token == null ? null : opts.token;
        this.base = opts.base > 0 ? opts.base : 500;
        this.cap = opts.cap > 0 ? opts.cap : 30000;
        this.stable = opts.stable >= 0 ? opts.stable : 5000;
        this.maxRetries = opts.maxRetries >= 0 ? opts.maxRetries : Infinity;
        this.stopCodes = opts.stopCodes || [4001, 4002, 4003];
        this.random = opts.random || Math.random;
        this.state = 'closed';
        this.attempt = 0;        // consecutive failures so far
        this.protocol = '';      // the subprotocol the server selected ('bearer' with a token)
        this.ws = null;
        this._listeners = {};
        this._timer = null;
        this._openedAt = 0;
        this._started = false;
        this._stopped = false;
        var self = this;
        EVENTS.forEach(function (t) { self['on' + t] = null; });
        if (opts.autoConnect !== false) this.connect();
    }

    var P = WsgateClient.prototype;

    P.addEventListener = function (type, fn) {
        (this._listeners[type] = this._listeners[type] || []).push(fn);
    };

    P.removeEventListener = function (type, fn) {
        var l = this._listeners[type];
        if (l) this._listeners[type] = l.filter(function (f) { return f !== fn; });
    };

    P._emit = function (type, ev) {
        ev.type = type;
        ev.target = this;
        var fns = [this['on' + type]].concat(this._listeners[type] || []);
        for (var i = 0; i < fns.length; i++) {
            if (typeof fns[i] !== 'function') continue;
            try {
                fns[i].call(this, ev);
            } catch (e) { // a throwing handler must not break the reconnect logic
                setTimeout(function () { throw e; }, 0);
            }
        }
    };

    P._setState = function (s) {
        if (s === this.state) return;
        var prev = this.state;
        this.state = s;
        this._emit('statechange', { state: s, previous: prev });
    };

    P.connect = function () {
        if (this._started) return this;
        this._started = true;
        this._setState('connecting');
        this._attemptNow();
        return this;
    };

    P._attemptNow = function () {
        var self = this;
        this._timer = null;
        var tok = this.token;
        var p;
        try {
            p = Promise.resolve(typeof tok === 'function' ? tok() : tok);
        } catch (e) {
            p = Promise.reject(e);
        }
        p.then(function (t) {
            if (self._stopped) return;
            self._open(t);
        }, function (e) {
            if (self._stopped) return;
            self._emit('error', { error: e });
            self._failed({ code: 0, reason: 'token: ' + (e && e.message || e), wasClean: false }, false);
        });
    };

    P._open = function (token) {
        var self = this;
        var ws;
        try {
            ws = token ? new this.WebSocket(this.url, ['bearer', String(token)]) : new this.WebSocket(this.url);
        } catch (e) { // e.g. a token with characters a subprotocol cannot carry
            this._emit('error', { error: e });
            this._failed({ code: 0, reason: String(e && e.message || e), wasClean: false }, false);
            return;
        }
        ws.binaryType = 'arraybuffer';
        this.ws = ws;
        var opened = false;
        ws.onopen = function () {
            if (self.ws !== ws) return;
            opened = true;
            self._openedAt = Date.now();
            self.protocol = ws.protocol || '';
            self._setState('open');
            self._emit('open', { protocol: self.protocol, url: self.url });
        };
        ws.onmessage = function (m) {
            if (self.ws !== ws) return;
            var d = m.data;
            if (typeof d === 'string') self._emit('message', { data: d, binary: false });
            else self._emit('message', { data: toArrayBuffer(d), binary: true });
        };
        ws.onerror = function (e) {
            if (self.ws !== ws) return;
            self._emit('error', { error: (e && e.error) || e });
        };
        ws.onclose = function (e) {
            if (self.ws !== ws) return;
            self.ws = null;
            var info = { code: e.code, reason: e.reason || '', wasClean: !!e.wasClean };
            if (self._stopped) {
                info.opened = opened;
                info.willReconnect = false;
                self._emit('close', info);
                return;
            }
            self._failed(info, opened);
        };
    };

    // A socket closed (or an attempt failed before there was one): reconnect or stop.
    P._failed = function (info, opened) {
        if (opened && Date.now() - this._openedAt >= this.stable) this.attempt = 0;
        var stop = this.stopCodes.indexOf(info.code) >= 0 || this.attempt >= this.maxRetries;
        info.opened = opened;
        info.willReconnect = !stop;
        if (stop) {
            this._stopped = true;
            this._setState('closed');
            this._emit('close', info);
            return;
        }
        var delay = Math.floor(this.random() * Math.min(this.cap, this.base * Math.pow(2, this.attempt)));
        var attempt = this.attempt;
        this.attempt++;
        this._setState('reconnecting');
        this._emit('close', info);
        if (this._stopped) return; // close() from a close handler
        this._timer = setTimeout(this._attemptNow.bind(this), delay);
        this._emit('reconnecting', { attempt: attempt, delay: delay });
    };

    P.send = function (data) {
        if (!this.ws || this.state !== 'open') return false;
        this.ws.send(data);
        return true;
    };

    P.close = function (code, reason) {
        if (this._stopped) return;
        this._stopped = true;
        this._started = true;
        if (this._timer) clearTimeout(this._timer);
        this._timer = null;
        var ws = this.ws;
        if (ws && ws.readyState === 1) {
            try { // the close event comes from the socket, with willReconnect=false
                ws.close(code || 1000, reason || '');
            } catch (e) {
                ws.close();
            }
        } else if (ws) { // still connecting: drop it quietly
            this.ws = null;
            ws.onopen = ws.onmessage = ws.onclose = null;
            ws.onerror = function () {};
            try { ws.close(); } catch (e) { /* ignore */ }
        }
        this._setState('closed');
    };

    WsgateClient.validKey = validKey;

    if (typeof module === 'object' && module && module.exports) module.exports = WsgateClient;
    else root.WsgateClient = WsgateClient;
})(typeof globalThis !== 'undefined' ? globalThis : typeof window !== 'undefined' ? window : this);
