"""obxtest.py - run a real outboxd from the Python tests.

The Python counterpart of tests/brokertest.c: a private temp dir, shm
name, spool and file-sink output; the broker built in $OUTBOX_BUILD
(default build/); liboutbox from the same build unless $OUTBOX_LIB says
otherwise. Also a loopback fake upstream (tests/fake_upstream.py) and the
helpers that read what the file sink wrote.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("OUTBOX_BUILD") or "build"
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)

os.environ.setdefault("OUTBOX_LIB", os.path.join(BUILD, "liboutbox.so"))
sys.path.insert(0, os.path.join(ROOT, "python"))

import outbox  # noqa: E402,F401  (the binding under test, from python/)


def stop_process(proc, timeout=10):
    """SIGTERM, then SIGKILL after `timeout` s; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bin_path(name):
    return os.path.join(BUILD, name)


def wait_for(pred, timeout, step=0.02, what="condition"):
    """Polls pred() until it returns a true value (returned) or timeout."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timed out after %.1f s waiting for %s"
                                 % (timeout, what))
        time.sleep(step)


class Broker(object):
    """outboxd on a private config: sink "default" is a file sink into
    self.out; `sinks` is appended (INI text; "{dir}" in it stands for the
    private directory)."""

    def __init__(self, tag, broker_extra="", sinks="", ring_size="16M",
                 max_record="64K"):
        self.dir = tempfile.mkdtemp(prefix="obxpy-%s-" % tag)
        self.shm = "obxpy-%s-%d" % (tag, os.getpid())
        self.spool = os.path.join(self.dir, "spool")
        self.out = os.path.join(self.dir, "out.ndjson")
        self.log = os.path.join(self.dir, "broker.log")
        self.conf = os.path.join(self.dir, "outbox.ini")
        self.proc = None
        self._unlink_shm()
        with open(self.conf, "w") as f:
            f.write("[broker]\nshm = %s\nshm_mode = 0600\nring_size = %s\n"
                    "max_record = %s\nspool_dir = %s\nsegment_size = 4M\n"
                    "shutdown_timeout = 5s\n%s\n\n"
                    "[sink default]\ntype = file\npath = %s\n"
                    "flush_interval = 20ms\n\n%s\n"
                    % (self.shm, ring_size, max_record, self.spool, broker_extra,
                       self.out, sinks.replace("{dir}", self.dir)))
        os.chmod(self.conf, 0o600)

    def _unlink_shm(self):
        try:
            os.unlink("/dev/shm/" + self.shm)
        except FileNotFoundError:
            pass

    def start(self):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([bin_path("outboxd"), "-c", self.conf],
                                     stdin=subprocess.DEVNULL,
                                     stdout=logf, stderr=logf)
        logf.close()

        def up():
            # `outbox stat` reads the segment without taking a producer
            # slot (a test may count the slots)
            if self.proc.poll() is not None:
                raise AssertionError("outboxd exited %s:\n%s"
                                     % (self.proc.returncode,
                                        self.log_text()))
            r = subprocess.run([bin_path("outbox"), "stat", "-s", self.shm,
                                "--json"], capture_output=True)
            if r.returncode != 0:
                return False
            br = json.loads(r.stdout).get("broker", {})
            return br.get("pid") == self.proc.pid and br.get("alive")
        wait_for(up, 10, what="outboxd to start")
        return self

    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stat(self):
        """`outbox stat --json` of this broker's segment."""
        out = subprocess.run([bin_path("outbox"), "stat", "-s", self.shm,
                              "--json"], check=True, capture_output=True)
        return json.loads(out.stdout)

    def wait_quiet(self, delivered, timeout=30, sink=None):
        """Waits until `delivered` events are delivered (all sinks, or one)
        and nothing is queued; returns the last stat."""
        def done():
            st = self.stat()
            sinks = st.get("sinks", {})
            pick = [sinks[sink]] if sink else list(sinks.values())
            d = sum(s.get("delivered_events", 0) for s in pick)
            q = sum(s.get("queued_events", 0) for s in pick)
            return st if d >= delivered and q == 0 else None
        return wait_for(done, timeout, step=0.05,
                        what="%d events delivered" % delivered)

    def stop(self, timeout=10):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -1
        return self.proc.returncode if self.proc else None

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._unlink_shm()
        if not os.environ.get("OBX_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def read_output(path):
    """The file sink's NDJSON lines, parsed (a line that is not JSON
    raises)."""
    out = []
    try:
        with open(path, "rb") as f:
            for line in f:
                out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def body_bytes(rec):
    """The bytes of a record whose body was emitted as bytes (the file
    sink writes them base64)."""
    return base64.b64decode(rec["body"])


class FakeUpstream(object):
    """tests/fake_upstream.py on a kernel-chosen loopback port."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "fake_upstream.py"),
             "--port", "0"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise AssertionError("fake_upstream did not start: %r" % line)
        self.port = int(line.split()[1])
        self.url = "http://127.0.0.1:%d" % self.port

    def _call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data,
                                     method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def script(self, script):
        return self._call("POST", "/_admin/script", script)

    def requests(self, since=0, bodies=True):
        return self._call("GET", "/_admin/requests?since=%d%s"
                          % (since, "&bodies=1" if bodies else ""))

    def stats(self):
        return self._call("GET", "/_admin/stats")

    def close(self):
        stop_process(self.proc)
        self.proc.stdout.close()
