"""sdktest.py - helpers for the tests that drive Debian's real sentry_sdk
through outbox.sentry.OutboxTransport in forked workers."""

import json
import os
import threading

import sentry_sdk
from sentry_sdk.utils import json_dumps

import obxtest  # noqa: F401  (puts python/ on sys.path)
from outbox.sentry import OutboxTransport

DSN = "http://public@127.0.0.1:9/42"     # only switches the SDK on


class Recorder(OutboxTransport):
    """OutboxTransport that first writes down what the SDK handed it, in
    the SDK's own serialization: the reference the output is checked
    against."""
    refs = None

    def capture_event(self, event):
        self.refs.append({"kind": "event", "event_id": event["event_id"],
                          "bytes": json_dumps(event).decode("utf-8")})
        self._inner = True
        try:
            OutboxTransport.capture_event(self, event)
        finally:
            self._inner = False

    def capture_envelope(self, envelope):
        if not getattr(self, "_inner", False):
            self.refs.append({"kind": "envelope",
                              "event_id": envelope.headers.get("event_id"),
                              "bytes": envelope.serialize().decode("utf-8")})
        OutboxTransport.capture_envelope(self, envelope)


def parse_envelope(data):
    """(headers, [(item headers, payload bytes)]) - a strict reader of
    the envelope format (length-prefixed items)."""
    lines = data.split(b"\n", 1)
    headers = json.loads(lines[0])
    rest = lines[1] if len(lines) > 1 else b""
    items = []
    while rest:
        ih, rest = rest.split(b"\n", 1)
        ih = json.loads(ih)
        n = ih["length"]
        items.append((ih, rest[:n]))
        assert rest[n:n + 1] in (b"\n", b""), "item not followed by \\n"
        rest = rest[n + 1:]
    return headers, items


def work(p, k, with_spans=True):
    """One worker's load: k errors, k messages, k transactions."""
    ids = {"error": [], "message": [], "transaction": []}
    for i in range(k):
        try:
            raise ValueError("worker %d error %d" % (p, i))
        except ValueError:
            ids["error"].append(sentry_sdk.capture_exception())
        ids["message"].append(sentry_sdk.capture_message(
            "worker %d message %d" % (p, i)))
        with sentry_sdk.start_transaction(name="w%d-t%d" % (p, i),
                                          op="test") as tx:
            if with_spans:
                with sentry_sdk.start_span(op="child", description="s"):
                    pass
        ids["transaction"].append(tx.trace_id)
    return ids


def in_child(fn):
    """Forks; the child runs fn() and exits 0 when it returns true."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if fn() else 2
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait_children(tc, pids):
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        tc.assertEqual(os.waitstatus_to_exitcode(st), 0,
                       "worker %d failed" % pid)


def sdk_threads():
    return [t.name for t in threading.enumerate()
            if "BackgroundWorker" in t.name]
