#!/usr/bin/env python3
"""fake_upstream.py - a scriptable loopback HTTP upstream for outbox tests.

    fake_upstream.py [--port N] [--host 127.0.0.1] [--keep-bodies N] [-v]
    fake_upstream.py --selftest

Python 3 standard library only. Listens on 127.0.0.1 (HTTP/1.1 with
keep-alive, one thread per connection). With --port 0 it picks a free port.
The first stdout line is always "PORT <n>" (flushed) once it is listening.
SIGTERM / SIGINT: stops, releases hung requests, prints the final
/_admin/stats as one JSON line on stdout, exits 0.

Every request whose path does not start with /_admin/ is an upstream
request: it is captured, its body decoded and its events counted, and it is
answered by the script.

Admin API (same port; admin requests are never captured or scripted):

  POST /_admin/script   replaces the scripted behaviour. Either steps:
        {"steps": [{"status": 503, "count": 10,
                    "headers": {"Retry-After": "5"},
                    "delay_ms": 0, "action": null, "body": "..."}, ...],
         "then": {"status": 200}}
      Each upstream request consumes one step (a step with count N serves N
      requests), in order; once they are used up, "then" answers (default
      {"status": 200}). Step keys, all optional:
        status    HTTP status (default 200)
        count     requests this step serves (default 1)
        headers   {name: value | [value, value, ...]}: a list sends the
                  header several times (duplicated Retry-After)
        delay_ms  wait before answering (or before the action)
        action    null | "hang" (never answer, until the server stops;
                  other connections are unaffected) | "reset" (close with
                  an RST: SO_LINGER 0, no response) | "close" (read the
                  request, close the connection without a response)
        body      response body (string; default {"status": N})
    Or a time-based outage:
        {"mode": "outage", "status": 503, "seconds": 30,
         "retry_after": null | 5 | "Wed, 21 Oct 2015 07:28:00 GMT",
         "headers": {...}, "then": {"status": 200}}
      from now on for `seconds`, every upstream request gets `status`
      (with Retry-After when retry_after is not null), then "then".
    Either form may carry content rules, checked first for every request:
        "rules": [{"contains": "poison", "status": 500, "body": "..."}]
      a request whose decoded body contains the text is answered by the
      rule (any step keys but count) and consumes no step: an upstream
      that refuses one malformed event whatever batch it comes in.
    Answers {"ok": true}, or 400 with {"error": "..."} for a bad script.

  GET /_admin/requests[?since=N][&bodies=1]
      JSON list of captured requests with seq >= N (seq counts from 0;
      pass the last seq + 1 next time). Each: seq, time (epoch float),
      method, path, client ("ip:port", the same for keep-alive requests of
      one connection), headers (dict, keys lower-cased, every value a LIST
      of strings in arrival order, so duplicates are kept), body_size (bytes
      on the wire), decoded_size, content_encoding, decode_error (null or
      why), events (count), ids (event ids, in order; null when unknown),
      status (int answered, or null), action (null, "hang", "reset",
      "close"). With bodies=1 also body (decoded, as text, invalid UTF-8
      replaced) and body_b64 when the decoded body is not UTF-8. Bodies are
      kept for the last --keep-bodies requests (default 10000); older ones
      have body_dropped: true.

  GET /_admin/stats
      {"requests", "by_status" ({"200": n, "503": n, "reset": n, "hang": n,
       "close": n}), "bytes" (wire body bytes), "events" (events in 2xx
       answered requests = delivered), "events_rejected" (events in every
       other request), "unique", "dups" (among delivered events, by id),
       "noid", "decode_errors", "first_event_time", "last_event_time"
       (epoch floats of the first/last 2xx request carrying events, or
       null), "start_time", "now", "steps_left", "outage_until"}

  POST /_admin/reset    clears captured requests, counters and the script.
  GET  /_admin/health   200 "ok".

Bodies: Content-Encoding gzip / x-gzip / deflate / zstd are decoded (zstd
by Debian's zstd command, every frame, with or without its size); a request
body may be Content-Length or chunked; "Expect: 100-continue" is honoured.
Events in a body, first match wins:
  - a JSON object with a "batch" list (Segment): its elements
  - a JSON array: its elements
  - another JSON value: one event
  - msgpack (Content-Type contains "msgpack", or a body that starts like a
    msgpack array and is not JSON): an array's elements, else one event
  - otherwise NDJSON: one event per non-empty line (a line that is not
    JSON still counts, as raw text)
Event identity, first match wins: a "messageId", "message_id", "event_id"
or "id" field (string or integer) of an object event, else an "id=P:S"
substring anywhere in the event's text (as ../shared/peers/src/sink.c
counts), else the event has no id (noid).
"""

import argparse
import base64
import gzip
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 512 << 20          # refuse bodies above this (413, close)
ID_RE = re.compile(rb"id=(\d+):(\d+)")
ID_KEYS = ("messageId", "message_id", "event_id", "id")


# ---- msgpack (decode only, enough for event arrays) ------------------------

class MsgpackError(ValueError):
    pass


def _mp_decode(buf, pos, depth=0):
    """Decodes one msgpack object at pos: (value, new_pos)."""
    if depth > 64:
        raise MsgpackError("too deep")
    if pos >= len(buf):
        raise MsgpackError("truncated")
    t = buf[pos]
    pos += 1

    def take(n):
        nonlocal pos
        if pos + n > len(buf):
            raise MsgpackError("truncated")
        b = buf[pos:pos + n]
        pos += n
        return b

    def seq(n, is_map):
        nonlocal pos
        if n > len(buf) - pos:          # every element needs a byte
            raise MsgpackError("bad length")
        if is_map:
            out = {}
            for _ in range(n):
                k, pos = _mp_decode(buf, pos, depth + 1)
                v, pos = _mp_decode(buf, pos, depth + 1)
                if isinstance(k, (dict, list)):
                    k = json.dumps(k, default=str)
                out[k] = v
            return out
        out = []
        for _ in range(n):
            v, pos = _mp_decode(buf, pos, depth + 1)
            out.append(v)
        return out

    if t <= 0x7f:
        return t, pos
    if t >= 0xe0:
        return t - 0x100, pos
    if 0x80 <= t <= 0x8f:
        return seq(t & 0x0f, True), pos
    if 0x90 <= t <= 0x9f:
        return seq(t & 0x0f, False), pos
    if 0xa0 <= t <= 0xbf:
        return take(t & 0x1f).decode("utf-8", "replace"), pos
    if t == 0xc0:
        return None, pos
    if t == 0xc2:
        return False, pos
    if t == 0xc3:
        return True, pos
    fixed = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q",
             0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q",
             0xca: ">f", 0xcb: ">d"}
    if t in fixed:
        fmt = fixed[t]
        return struct.unpack(fmt, take(struct.calcsize(fmt)))[0], pos
    lens = {0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4}
    if t in lens:
        n = int.from_bytes(take(lens[t]), "big")
        b = take(n)
        return (b.decode("utf-8", "replace") if t >= 0xd9 else b), pos
    if t in (0xdc, 0xdd):
        n = int.from_bytes(take(2 if t == 0xdc else 4), "big")
        return seq(n, False), pos
    if t in (0xde, 0xdf):
        n = int.from_bytes(take(2 if t == 0xde else 4), "big")
        return seq(n, True), pos
    ext = {0xd4: 1, 0xd5: 2, 0xd6: 4, 0xd7: 8, 0xd8: 16}
    if t in ext:
        take(1)
        return take(ext[t]), pos
    if t in (0xc7, 0xc8, 0xc9):
        n = int.from_bytes(take({0xc7: 1, 0xc8: 2, 0xc9: 4}[t]), "big")
        take(1)
        return take(n), pos
    raise MsgpackError("bad type byte 0x%02x" % t)


def msgpack_loads(buf):
    v, pos = _mp_decode(bytes(buf), 0)
    if pos != len(buf):
        raise MsgpackError("trailing bytes")
    return v


def msgpack_dumps(v):
    """Encoder for the selftest (str, int >= 0, list, dict)."""
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        if 0 <= v <= 0x7f:
            return bytes([v])
        return b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xa0 | len(b)]) + b
        return b"\xd9" + bytes([len(b)]) + b
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else \
            b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(msgpack_dumps(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)])
        return head + b"".join(msgpack_dumps(k) + msgpack_dumps(x)
                               for k, x in v.items())
    raise TypeError(type(v))


# ---- body decoding and event counting --------------------------------------

def zstd_decompress(raw):
    """every frame of raw, through the reference decoder (Debian's zstd
    command: the python3 running this may not be Debian's, so no binding
    is assumed); OSError when a frame is damaged or cut short"""
    try:
        r = subprocess.run(["zstd", "-d", "-c", "-q"], input=raw,
                           capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OSError("zstd: %s" % e) from None
    if r.returncode:
        raise OSError("zstd: %s" % r.stderr.decode(errors="replace").strip())
    return r.stdout


def decode_body(raw, encoding):
    """(decoded bytes, error or None)"""
    enc = (encoding or "").strip().lower()
    if not raw or enc in ("", "identity"):
        return raw, None
    try:
        if enc in ("gzip", "x-gzip"):
            return gzip.decompress(raw), None
        if enc == "zstd":
            return zstd_decompress(raw), None
        if enc == "deflate":
            try:
                return zlib.decompress(raw), None
            except zlib.error:
                return zlib.decompress(raw, -zlib.MAX_WBITS), None
    except (OSError, EOFError, zlib.error) as e:
        return raw, "%s: %s" % (enc, e)
    return raw, "unsupported encoding %r" % enc


def event_id(ev):
    if isinstance(ev, dict):
        for k in ID_KEYS:
            v = ev.get(k)
            if isinstance(v, (str, int)) and not isinstance(v, bool):
                return str(v)
        text = json.dumps(ev, default=str).encode()
    elif isinstance(ev, (bytes, bytearray)):
        text = bytes(ev)
    elif isinstance(ev, str):
        text = ev.encode("utf-8", "replace")
    else:
        text = json.dumps(ev, default=str).encode()
    m = ID_RE.search(text)
    return "%s:%s" % (int(m.group(1)), int(m.group(2))) if m else None


def split_events(body, ctype):
    """The events of a decoded body (a list of objects or raw lines)."""
    if not body.strip():
        return []
    ctype = (ctype or "").lower()
    looks_mp = body[0] in range(0x90, 0xa0) or body[0] in (0xdc, 0xdd)
    if "msgpack" in ctype:
        try:
            v = msgpack_loads(body)
            return v if isinstance(v, list) else [v]
        except MsgpackError:
            pass
    try:
        v = json.loads(body)
        if isinstance(v, dict) and isinstance(v.get("batch"), list):
            return v["batch"]
        return v if isinstance(v, list) else [v]
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    if looks_mp:
        try:
            v = msgpack_loads(body)
            return v if isinstance(v, list) else [v]
        except (MsgpackError, RecursionError):
            pass
    out = []
    for line in body.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except (ValueError, UnicodeDecodeError, RecursionError):
            out.append(line)
    return out


# ---- state -----------------------------------------------------------------

class State:
    def __init__(self, keep_bodies):
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.keep_bodies = keep_bodies
        self.reset()

    def reset(self):
        with self.lock:
            self.gen = getattr(self, "gen", 0) + 1
            self.requests = []
            self.bodies = {}          # seq -> decoded body (recent ones)
            self.by_status = {}
            self.bytes = 0
            self.events = 0
            self.events_rejected = 0
            self.seen = set()
            self.unique = 0
            self.dups = 0
            self.noid = 0
            self.decode_errors = 0
            self.first_event = None
            self.last_event = None
            self.start = time.time()
            self.steps = []           # [step, remaining count]
            self.then = {"status": 200}
            self.outage_until = None
            self.outage = None
            self.rules = []           # [(bytes to look for, step)]

    def set_script(self, js):
        if not isinstance(js, dict):
            raise ValueError("script must be a JSON object")
        then = js.get("then", {"status": 200})
        check_step(then, "then")
        rules = js.get("rules", [])
        if not isinstance(rules, list):
            raise ValueError("rules must be a list")
        for i, r in enumerate(rules):
            if not isinstance(r, dict) or \
                    not isinstance(r.get("contains"), str) or \
                    not r["contains"]:
                raise ValueError("rules[%d]: needs a non-empty "
                                 "\"contains\" string" % i)
            check_step(r, "rules[%d]" % i)
        with self.lock:
            self.rules = [(r["contains"].encode(), r) for r in rules]
        if js.get("mode") == "outage":
            secs = js.get("seconds", 30)
            if not isinstance(secs, (int, float)) or secs < 0:
                raise ValueError("seconds must be a number >= 0")
            step = {"status": js.get("status", 503),
                    "headers": dict(js.get("headers") or {})}
            ra = js.get("retry_after")
            if ra is not None:
                step["headers"]["Retry-After"] = str(ra)
            check_step(step, "outage")
            with self.lock:
                self.steps = []
                self.then = then
                self.outage = step
                self.outage_until = time.time() + secs
            return
        if "mode" in js:
            raise ValueError("unknown mode %r" % js["mode"])
        steps = js.get("steps", [])
        if not isinstance(steps, list):
            raise ValueError("steps must be a list")
        for i, s in enumerate(steps):
            check_step(s, "steps[%d]" % i)
        with self.lock:
            self.steps = [[s, int(s.get("count", 1))] for s in steps
                          if int(s.get("count", 1)) > 0]
            self.then = then
            self.outage = None
            self.outage_until = None

    def match_rule(self, body):
        """The first rule whose text is in the decoded body, or None."""
        with self.lock:
            for text, rule in self.rules:
                if body and text in body:
                    return rule
            return None

    def next_step(self):
        with self.lock:
            if self.outage is not None:
                if time.time() < self.outage_until:
                    return self.outage
                self.outage = None
            if self.steps:
                step = self.steps[0]
                step[1] -= 1
                if step[1] <= 0:
                    self.steps.pop(0)
                return step[0]
            return self.then

    def capture(self, rec, body, events, ids):
        with self.lock:
            rec["seq"] = len(self.requests)
            self.requests.append(rec)
            self.bytes += rec["body_size"]
            if rec["decode_error"]:
                self.decode_errors += 1
            if body is not None:
                self.bodies[rec["seq"]] = body
                old = rec["seq"] - self.keep_bodies
                if old >= 0:
                    self.bodies.pop(old, None)
            return (self.gen, rec["seq"])

    def answered(self, ref, status, action, ids, now):
        """Counts the request's events once its outcome is known."""
        key = action if action else str(status)
        gen, seq = ref
        with self.lock:
            if gen != self.gen:
                return                # a reset came in between
            rec = self.requests[seq]
            rec["status"] = status
            rec["action"] = action
            self.by_status[key] = self.by_status.get(key, 0) + 1
            n = rec["events"]
            if status is not None and 200 <= status <= 299 and not action:
                self.events += n
                for i in ids:
                    if i is None:
                        self.noid += 1
                    elif i in self.seen:
                        self.dups += 1
                    else:
                        self.seen.add(i)
                        self.unique += 1
                if n:
                    if self.first_event is None:
                        self.first_event = now
                    self.last_event = now
            else:
                self.events_rejected += n

    def stats(self):
        with self.lock:
            return {
                "requests": len(self.requests),
                "by_status": dict(self.by_status),
                "bytes": self.bytes,
                "events": self.events,
                "events_rejected": self.events_rejected,
                "unique": self.unique,
                "dups": self.dups,
                "noid": self.noid,
                "decode_errors": self.decode_errors,
                "first_event_time": self.first_event,
                "last_event_time": self.last_event,
                "start_time": self.start,
                "now": time.time(),
                "steps_left": sum(s[1] for s in self.steps),
                "outage_until": self.outage_until if self.outage else None,
            }

    def list_requests(self, since, bodies):
        with self.lock:
            out = []
            for rec in self.requests[max(since, 0):]:
                r = dict(rec)
                if bodies:
                    b = self.bodies.get(rec["seq"])
                    if b is None:
                        r["body"] = None
                        r["body_dropped"] = True
                    else:
                        try:
                            r["body"] = b.decode("utf-8")
                        except UnicodeDecodeError:
                            r["body"] = b.decode("utf-8", "replace")
                            r["body_b64"] = base64.b64encode(b).decode()
                out.append(r)
            return out


def check_step(s, where):
    if not isinstance(s, dict):
        raise ValueError("%s: a step is a JSON object" % where)
    st = s.get("status", 200)
    if not isinstance(st, int) or isinstance(st, bool) or \
            not 100 <= st <= 999:
        raise ValueError("%s: status must be an integer 100..999" % where)
    c = s.get("count", 1)
    if not isinstance(c, int) or isinstance(c, bool) or c < 0:
        raise ValueError("%s: count must be an integer >= 0" % where)
    d = s.get("delay_ms", 0)
    if not isinstance(d, (int, float)) or isinstance(d, bool) or d < 0:
        raise ValueError("%s: delay_ms must be a number >= 0" % where)
    if s.get("action") not in (None, "hang", "reset", "close"):
        raise ValueError("%s: action must be hang, reset or close" % where)
    h = s.get("headers") or {}
    if not isinstance(h, dict):
        raise ValueError("%s: headers must be an object" % where)
    for k, v in h.items():
        vals = v if isinstance(v, list) else [v]
        for x in vals:
            if not isinstance(x, (str, int, float)) or \
                    any(c in str(x) + k for c in "\r\n"):
                raise ValueError("%s: bad header %r" % (where, k))
    if "body" in s and not isinstance(s["body"], str):
        raise ValueError("%s: body must be a string" % where)


# ---- HTTP ------------------------------------------------------------------

class BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: with Nagle on, the body
    # waits for the client's delayed ACK (40 ms a response on Linux)
    disable_nagle_algorithm = True
    server_version = "fake-upstream/1"
    sys_version = ""

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("fake_upstream: %s - %s\n" %
                             (self.address_string(), fmt % args))

    # every method lands here
    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def dispatch(self):
        try:
            if self.path.startswith("/_admin/"):
                self.admin()
            else:
                self.upstream()
        except (ConnectionError, BrokenPipeError, socket.timeout, OSError):
            self.close_connection = True
        except BadRequest as e:
            self.reply(400, {"error": str(e)}, close=True)
        except Exception as e:          # never die on a request
            try:
                self.reply(500, {"error": "%s: %s" % (type(e).__name__, e)},
                           close=True)
            except OSError:
                self.close_connection = True

    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise BadRequest("truncated chunked body")
                try:
                    n = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BadRequest("bad chunk size")
                if n == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n",
                                                            b""):
                        pass          # trailers
                    return bytes(out)
                if len(out) + n > MAX_BODY:
                    raise BadRequest("body too large")
                out += self.rfile.read(n)
                self.rfile.readline(8)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl)
        except ValueError:
            raise BadRequest("bad Content-Length")
        if n < 0 or n > MAX_BODY:
            raise BadRequest("bad Content-Length")
        data = self.rfile.read(n)
        if len(data) != n:
            raise BadRequest("truncated body")
        return data

    def reply(self, status, obj=None, headers=None, raw=None, close=False):
        if raw is None:
            raw = b"" if obj is None else \
                (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            for x in (v if isinstance(v, list) else [v]):
                self.send_header(k, str(x))
        no_body = status < 200 or status in (204, 304)
        if not no_body:
            if not any(k.lower() == "content-type" for k in headers or {}):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not no_body and self.command != "HEAD":
            self.wfile.write(raw)

    # -- admin --

    def admin(self):
        st = self.server.state
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query)
        body = self.read_body()
        if u.path == "/_admin/script" and self.command == "POST":
            try:
                st.set_script(json.loads(body or b"{}"))
            except (ValueError, TypeError, UnicodeDecodeError,
                    RecursionError) as e:
                return self.reply(400, {"error": str(e)})
            return self.reply(200, {"ok": True})
        if u.path == "/_admin/requests" and self.command == "GET":
            try:
                since = int(q.get("since", ["0"])[0])
            except ValueError:
                return self.reply(400, {"error": "since must be an integer"})
            bodies = q.get("bodies", ["0"])[0] not in ("0", "", "false")
            return self.reply(200, st.list_requests(since, bodies))
        if u.path == "/_admin/stats" and self.command == "GET":
            return self.reply(200, st.stats())
        if u.path == "/_admin/reset" and self.command == "POST":
            st.reset()
            return self.reply(200, {"ok": True})
        if u.path == "/_admin/health":
            return self.reply(200, raw=b"ok\n",
                              headers={"Content-Type": "text/plain"})
        return self.reply(404, {"error": "no such admin endpoint"})

    # -- upstream --

    def upstream(self):
        st = self.server.state
        now = time.time()
        try:
            raw = self.read_body()
        except BadRequest:
            raw = None
        hdrs = {}
        for k, v in self.headers.items():
            hdrs.setdefault(k.lower(), []).append(v)
        enc = self.headers.get("Content-Encoding")
        if raw is None:
            body, err, events = b"", "unreadable body", []
        else:
            body, err = decode_body(raw, enc)
            events = [] if err else split_events(
                body, self.headers.get("Content-Type"))
        ids = [event_id(e) for e in events]
        rec = {
            "time": now, "method": self.command, "path": self.path,
            "client": "%s:%d" % self.client_address[:2],
            "headers": hdrs, "body_size": len(raw or b""),
            "decoded_size": len(body), "content_encoding": enc,
            "decode_error": err, "events": len(events), "ids": ids,
            "status": None, "action": None,
        }
        seq = st.capture(rec, body, events, ids)
        if raw is None:
            st.answered(seq, 400, None, ids, time.time())
            return self.reply(400, {"error": "unreadable body"}, close=True)

        step = st.match_rule(body) or st.next_step()
        delay = step.get("delay_ms", 0) / 1000.0
        action = step.get("action")
        if action == "hang":
            st.answered(seq, None, "hang", ids, time.time())
            st.stop.wait()            # until the server stops
            self.close_connection = True
            return
        if delay and st.stop.wait(delay):
            self.close_connection = True
            return
        if action == "reset":
            st.answered(seq, None, "reset", ids, time.time())
            self.rst()
            return
        if action == "close":
            st.answered(seq, None, "close", ids, time.time())
            self.close_connection = True
            return
        status = step.get("status", 200)
        body_out = step.get("body")
        raw_out = body_out.encode() if body_out is not None else \
            (json.dumps({"status": status}) + "\n").encode()
        st.answered(seq, status, None, ids, time.time())
        self.reply(status, headers=step.get("headers") or {}, raw=raw_out)

    def rst(self):
        """Closes the connection with an RST: no response, no FIN."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            # the buffered reader holds a reference: drop it, or close()
            # would not close the descriptor
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, state, verbose=False):
        self.state = state
        self.verbose = verbose
        super().__init__(addr, Handler)

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)


def serve(host, port, keep_bodies, verbose):
    state = State(keep_bodies)
    srv = Server((host, port), state, verbose)
    print("PORT %d" % srv.server_address[1], flush=True)

    def stop(signum, frame):
        state.stop.set()
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        srv.serve_forever(poll_interval=0.1)
    finally:
        state.stop.set()
        srv.server_close()
    print(json.dumps(state.stats()), flush=True)
    return 0


# ---- selftest --------------------------------------------------------------

def selftest():
    """Runs a server as a child process and checks it over loopback."""
    here = os.path.abspath(__file__)
    proc = subprocess.Popen([sys.executable, here, "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("PORT "), line
    port = int(line.split()[1])
    failures = []
    checks = [0]

    def check(cond, what):
        checks[0] += 1
        if not cond:
            failures.append(what)
            print("FAIL: %s" % what, flush=True)

    def conn(timeout=5):
        return http.client.HTTPConnection("127.0.0.1", port,
                                          timeout=timeout)

    def call(method, path, body=None, headers=None, c=None):
        own = c is None
        c = c or conn()
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        out = (r.status, r.getheaders(), data)
        if own:
            c.close()
        return out

    def admin(method, path, obj=None):
        st, _, data = call(method, path,
                           None if obj is None else json.dumps(obj))
        return st, json.loads(data) if data.strip().startswith(
            (b"{", b"[")) else data

    def stats():
        return admin("GET", "/_admin/stats")[1]

    try:
        # 1. default 200, NDJSON with "id=P:S" ids, keep-alive
        c = conn()
        body = b'{"m":"id=1:1"}\n{"m":"id=1:2"}\n\n'
        st, h, _ = call("POST", "/v1/batch", body, c=c)
        check(st == 200, "default answer is 200")
        sock1 = c.sock
        st, h, _ = call("POST", "/v1/batch", b'{"m":"id=1:2"}\n', c=c)
        check(c.sock is sock1, "keep-alive: same client socket")
        s = stats()
        check(s["events"] == 3 and s["unique"] == 2 and s["dups"] == 1,
              "NDJSON id=P:S counting: %r" % s)
        reqs = admin("GET", "/_admin/requests")[1]
        check(len(reqs) == 2 and reqs[0]["client"] == reqs[1]["client"],
              "keep-alive: one client port for both requests")
        check(reqs[0]["ids"] == ["1:1", "1:2"], "ids recorded")
        check("body" not in reqs[0], "no body without bodies=1")
        c.close()

        # 2. script: 503 x2 with Retry-After, duplicated header, then 200
        st, r = admin("POST", "/_admin/script", {
            "steps": [{"status": 503, "count": 2,
                       "headers": {"Retry-After": "5"}},
                      {"status": 429,
                       "headers": {"Retry-After": ["3", "7"],
                                   "X-Sentry-Rate-Limits": "60::org"}}],
            "then": {"status": 202, "body": "accepted"}})
        check(st == 200 and r == {"ok": True}, "script accepted")
        check(stats()["steps_left"] == 3, "steps_left")
        c = conn()
        got = []
        for _ in range(4):
            st, h, data = call("POST", "/x", b"[]", c=c)
            got.append((st, [v for k, v in h if k == "Retry-After"], data))
        c.close()
        check([g[0] for g in got] == [503, 503, 429, 202],
              "script order: %r" % [g[0] for g in got])
        check(got[0][1] == ["5"], "Retry-After sent")
        check(got[2][1] == ["3", "7"], "duplicated header sent twice")
        check(got[3][2] == b"accepted", "then body")
        check(stats()["by_status"] == {"200": 2, "503": 2, "429": 1,
                                       "202": 1}, "by_status")

        # 3. gzip JSON array with messageId; Segment batch; msgpack
        admin("POST", "/_admin/reset")
        arr = json.dumps([{"messageId": "a"}, {"messageId": "b"},
                          {"messageId": "a"}]).encode()
        call("POST", "/v1/batch", gzip.compress(arr),
             {"Content-Encoding": "gzip",
              "Content-Type": "application/json"})
        seg = json.dumps({"batch": [{"messageId": "c", "type": "track"},
                                    {"messageId": "d"}],
                          "sentAt": "now"}).encode()
        call("POST", "/v1/batch", seg)
        mp = msgpack_dumps([{"id": "e"}, {"id": "f"}, {"id": 7}])
        call("POST", "/mp", mp, {"Content-Type": "application/msgpack"})
        call("POST", "/mp2", msgpack_dumps([{"x": "id=9:1"}]))
        call("POST", "/one", b'{"event_id":"g"}')
        call("POST", "/noid", b"plain line\n")
        s = stats()
        check(s["events"] == 11 and s["unique"] == 9 and s["dups"] == 1
              and s["noid"] == 1, "gzip/segment/msgpack/object: %r" % s)
        reqs = admin("GET", "/_admin/requests?since=0&bodies=1")[1]
        check(reqs[0]["body"] == arr.decode(), "gunzipped body")
        check(reqs[0]["body_size"] < reqs[0]["decoded_size"] or
              reqs[0]["body_size"] == len(gzip.compress(arr)),
              "wire size recorded")
        check(reqs[0]["headers"]["content-encoding"] == ["gzip"],
              "headers: lower-case keys, list values")
        check("body_b64" in reqs[2], "binary body also as base64")
        check(base64.b64decode(reqs[2]["body_b64"]) == mp, "base64 exact")
        since = admin("GET", "/_admin/requests?since=4")[1]
        check([r["seq"] for r in since] == [4, 5], "since=N")
        check(s["first_event_time"] is not None and
              s["last_event_time"] >= s["first_event_time"],
              "first/last event time")

        # 4. broken gzip, rejected events, bad admin input, raw garbage
        admin("POST", "/_admin/reset")
        st, _, _ = call("POST", "/b", b"not gzip at all",
                        {"Content-Encoding": "gzip"})
        check(st == 200, "bad gzip still answered")
        check(stats()["decode_errors"] == 1, "decode error counted")
        admin("POST", "/_admin/script",
              {"steps": [{"status": 500}], "then": {"status": 200}})
        call("POST", "/r", b'{"id":"z"}\n')
        s = stats()
        check(s["events_rejected"] == 1 and s["events"] == 0,
              "events of a 500 are not delivered")
        for bad in (b"{", b"[]", b'{"steps":[{"status":"x"}]}',
                    b'{"steps":[{"action":"explode"}]}',
                    b'{"mode":"storm"}', b'{"steps":5}',
                    b'{"steps":[{"headers":{"A":"b\\r\\nc"}}]}',
                    b"\xff\xfe"):
            st, _, _ = call("POST", "/_admin/script", bad)
            check(st == 400, "bad script %r -> 400 (got %d)" % (bad, st))
        st, _, _ = call("GET", "/_admin/requests?since=x")
        check(st == 400, "bad since -> 400")
        st, _, _ = call("GET", "/_admin/nothing")
        check(st == 404, "unknown admin path -> 404")
        for junk in (b"\x00\x01garbage\r\n\r\n", b"GET\r\n\r\n",
                     b"POST / HTTP/1.1\r\nContent-Length: zz\r\n\r\n",
                     b"POST / HTTP/1.1\r\nContent-Length: 99\r\n\r\nab",
                     b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\nzz\r\n"):
            s2 = socket.create_connection(("127.0.0.1", port), timeout=5)
            s2.sendall(junk)
            s2.shutdown(socket.SHUT_WR)
            try:
                while s2.recv(4096):
                    pass
            except OSError:
                pass
            s2.close()
        check(admin("GET", "/_admin/health")[0] == 200,
              "alive after garbage")

        # 5. Expect: 100-continue and a chunked body, by hand
        admin("POST", "/_admin/reset")
        s2 = socket.create_connection(("127.0.0.1", port), timeout=5)
        payload = b'{"id":"k1"}\n{"id":"k2"}\n'
        s2.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(payload))
        first = s2.recv(4096)
        check(first.startswith(b"HTTP/1.1 100"), "100 Continue sent")
        s2.sendall(payload)
        resp = b""
        while b"\r\n\r\n" not in resp:
            resp += s2.recv(4096)
        check(resp.startswith(b"HTTP/1.1 200"), "answer after 100")
        chunked = b"POST /c HTTP/1.1\r\nHost: x\r\n" \
            b"Transfer-Encoding: chunked\r\n\r\n" \
            b"c\r\n{\"id\":\"k3\"}\n\r\n0\r\n\r\n"
        s2.sendall(chunked)
        time.sleep(0.2)
        s2.close()
        s = stats()
        check(s["events"] == 3 and s["unique"] == 3,
              "100-continue + chunked bodies counted: %r" % s)

        # 6. hang does not block others; reset = RST; close = EOF
        admin("POST", "/_admin/reset")
        admin("POST", "/_admin/script",
              {"steps": [{"action": "hang"}, {"action": "reset"},
                         {"action": "close"},
                         {"status": 200, "delay_ms": 300}]})
        hung = {}

        def hang_client():
            try:
                call("POST", "/h", b"x", c=conn(timeout=30))
                hung["r"] = "answered"
            except Exception as e:
                hung["r"] = type(e).__name__
        t = threading.Thread(target=hang_client, daemon=True)
        t.start()
        time.sleep(0.3)
        check(t.is_alive(), "hang: no answer")
        try:
            call("POST", "/r", b"x")
            check(False, "reset: expected an error")
        except ConnectionResetError:
            check(True, "reset")
        except Exception as e:
            check(False, "reset: got %s, not a connection reset" %
                  type(e).__name__)
        try:
            call("POST", "/c", b"x")
            check(False, "close: expected an error")
        except (http.client.RemoteDisconnected, ConnectionResetError) as e:
            check(isinstance(e, http.client.RemoteDisconnected),
                  "close: a clean EOF, not %s" % type(e).__name__)
        t0 = time.time()
        st, _, _ = call("POST", "/d", b"x")
        dt = time.time() - t0
        check(st == 200 and 0.28 <= dt < 3, "delay_ms (%.3f s)" % dt)
        s = stats()
        check(s["by_status"] == {"hang": 1, "reset": 1, "close": 1,
                                 "200": 1}, "by_status actions %r" %
              s["by_status"])
        check(t.is_alive(), "still hung while others were served")

        # 6b. content rules: checked first, consume no step
        admin("POST", "/_admin/reset")
        st, _ = admin("POST", "/_admin/script", {
            "rules": [{"contains": "poison", "status": 500,
                       "body": "bad event"}],
            "steps": [{"status": 503}]})
        check(st == 200, "rules accepted")
        st, _, data = call("POST", "/r", b'{"id":"x","bad":"poison"}\n')
        check(st == 500 and data == b"bad event", "rule answers")
        st, _, _ = call("POST", "/r", gzip.compress(b'{"x":"poison"}'),
                        {"Content-Encoding": "gzip"})
        check(st == 500, "rule on the decoded body")
        check(stats()["steps_left"] == 1, "a rule consumes no step")
        st, _, _ = call("POST", "/r", b'{"id":"y"}\n')
        check(st == 503, "then the steps")
        for bad in ({"rules": [{"status": 500}]}, {"rules": 5},
                    {"rules": [{"contains": ""}]},
                    {"rules": [{"contains": "x", "status": "y"}]}):
            st, _ = admin("POST", "/_admin/script", bad)
            check(st == 400, "bad rules %r -> 400" % (bad,))

        # 7. outage mode
        admin("POST", "/_admin/reset")
        admin("POST", "/_admin/script",
              {"mode": "outage", "status": 503, "seconds": 0.5,
               "retry_after": 2})
        st, h, _ = call("POST", "/o", b"")
        check(st == 503 and ("Retry-After", "2") in h,
              "outage answers 503 + Retry-After")
        check(stats()["outage_until"] is not None, "outage_until")
        time.sleep(0.6)
        st, _, _ = call("POST", "/o", b"")
        check(st == 200, "after the outage: then")
        admin("POST", "/_admin/script",
              {"mode": "outage", "status": 429, "seconds": 5})
        st, h, _ = call("POST", "/o", b"")
        check(st == 429 and not [v for k, v in h if k == "Retry-After"],
              "outage without Retry-After")

        # 8. many concurrent connections
        admin("POST", "/_admin/reset")
        errs = []

        def burst(i):
            try:
                cc = conn()
                for j in range(20):
                    call("POST", "/p", b'{"m":"id=%d:%d"}\n' % (i, j), c=cc)
                cc.close()
            except Exception as e:
                errs.append(e)
        ts = [threading.Thread(target=burst, args=(i,)) for i in range(16)]
        for x in ts:
            x.start()
        for x in ts:
            x.join()
        s = stats()
        check(not errs and s["unique"] == 320 and s["requests"] == 320,
              "16 x 20 concurrent keep-alive requests: %r %r" %
              (errs[:1], s["unique"]))

        # 9. SIGTERM with a hung request: exits 0, prints the stats
        admin("POST", "/_admin/script", {"steps": [{"action": "hang"}]})
        t = threading.Thread(target=lambda: hang_client(), daemon=True)
        t.start()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, "SIGTERM: exit 0 (rc %r)" % rc)
        tail = proc.stdout.read().strip().splitlines()
        check(tail and json.loads(tail[-1])["requests"] == 321,
              "final stats line")
        t.join(5)
        check(not t.is_alive(), "hung client released at shutdown")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print("selftest: %d checks, %d failed" % (checks[0], len(failures)))
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(
        description="scriptable loopback HTTP upstream (see the docstring)")
    ap.add_argument("--port", type=int, default=0,
                    help="port to listen on; 0 picks one (default)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--keep-bodies", type=int, default=10000,
                    help="keep decoded bodies of the last N requests")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="log every request to stderr")
    ap.add_argument("--selftest", action="store_true",
                    help="run the built-in tests against a child server")
    a = ap.parse_args()
    if a.selftest:
        return selftest()
    return serve(a.host, a.port, max(a.keep_bodies, 0), a.verbose)


if __name__ == "__main__":
    sys.exit(main())
