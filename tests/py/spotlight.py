"""spotlight.py - Sentry's Spotlight sidecar as a real envelope receiver
for the Python tests (the Python side of tests/spotlight.{c,h}), plus a
fault injector to put in front of it.

Spotlight is the one tests/node pins (@spotlightjs/spotlight with hono
held at the release that works with it; tools/install-deps runs `npm ci`
there). It is started on a kernel-chosen port (-p 0) with NODE_ENV unset
(so it sends no telemetry of its own) and read back through GET /stream
(server-sent events replaying its buffer: 500 envelopes at most).

Spotlight always answers 200; FaultProxy answers scripted statuses (429
with X-Sentry-Rate-Limits...) and forwards the rest to it.
"""

import http.client
import http.server
import json
import os
import re
import subprocess
import threading
import time

import obxtest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def binary():
    return os.path.join(ROOT, "tests", "node", "node_modules", ".bin",
                        "spotlight")


def unavailable():
    """Why Spotlight cannot run here (None when it can)."""
    if not os.path.exists(binary()):
        return ("Spotlight is not installed in tests/node (tools/install-deps"
                " runs `npm ci` there; npm was missing or failed)")
    return None


class Spotlight(object):

    def __init__(self):
        env = dict(os.environ)
        env.pop("NODE_ENV", None)
        self.proc = subprocess.Popen([binary(), "-p", "0"],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env,
                                     text=True)
        self.port = None
        self._lines = []
        end = time.monotonic() + 30
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                break
            self._lines.append(line)
            m = re.search(r"listening on (\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            self.close()
            raise AssertionError("Spotlight did not start:\n"
                                 + "".join(self._lines))
        # keep draining its output so it never blocks on a full pipe
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.port

    def _drain(self):
        for line in self.proc.stdout:
            self._lines.append(line)

    def output(self):
        return "".join(self._lines)

    def envelope_url(self, project=0):
        return "%s/api/%d/envelope/" % (self.url, project)

    def _request(self, method, path, timeout=10):
        c = http.client.HTTPConnection("127.0.0.1", self.port,
                                       timeout=timeout)
        c.request(method, path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body

    def clear(self):
        self._request("DELETE", "/clear")

    def envelopes(self, idle=0.7, limit=20.0):
        """Every envelope Spotlight holds, as [header, [[item header,
        payload], ...]] (its parsed form), read from GET /stream until no
        event came for `idle` seconds."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/stream", headers={"Accept": "text/event-stream"})
        r = c.getresponse()
        c.sock.settimeout(idle)        # from now on: silence = the end
        out, buf, end = [], b"", time.monotonic() + limit
        try:
            while time.monotonic() < end:
                try:
                    chunk = r.fp.read1(65536)
                except OSError:          # socket.timeout: idle
                    break
                if not chunk:
                    break
                buf += chunk
                while b"\n\n" in buf:
                    ev, buf = buf.split(b"\n\n", 1)
                    data = [ln[5:].strip() for ln in ev.split(b"\n")
                            if ln.startswith(b"data:")]
                    if data:
                        out.append(json.loads(b"\n".join(data)))
        finally:
            c.close()
        return out

    def close(self):
        obxtest.stop_process(self.proc)


class FaultProxy(object):
    """A loopback HTTP proxy in front of a receiver: the first requests
    get the scripted answers, the rest are forwarded. script: list of
    (status, {header: value}). Records (path, status) per request."""

    def __init__(self, target_port, script):
        self.script = list(script)
        self.seen = []
        lock = threading.Lock()
        proxy = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get(
                    "Content-Length", 0)))
                with lock:
                    step = proxy.script.pop(0) if proxy.script else None
                if step is not None:
                    status, hdrs = step
                    self.send_response(status)
                    for k, v in hdrs.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    proxy.seen.append((self.path, status))
                    return
                c = http.client.HTTPConnection("127.0.0.1", target_port,
                                               timeout=30)
                fwd = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "connection")}
                c.request("POST", self.path, body=body, headers=fwd)
                r = c.getresponse()
                data = r.read()
                c.close()
                self.send_response(r.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                proxy.seen.append((self.path, r.status))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self.server.serve_forever,
                         daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
