"""outbox.sentry - a sentry_sdk transport that hands envelopes to outbox.

    import sentry_sdk
    from outbox.sentry import OutboxTransport
    sentry_sdk.init(dsn="...", transport=OutboxTransport)

Each envelope the SDK produces is serialized (uncompressed, exactly as
Envelope.serialize() writes it) into the outbox ring as one record of type
`envelope` whose body is those bytes. The broker's `sentry` sink forwards
it; the SDK's own queue, worker thread and HTTP client are never created,
so a worker never blocks, never retries and never holds a backlog.

The DSN given to sentry_sdk.init() only switches the SDK on: where events
go, and with which credentials, is the broker's [sink ...] configuration
(workers never see the upstream's credentials).

Sink: OutboxTransport.with_sink("name") (a subclass to pass as transport=),
or an instance OutboxTransport(sink="name"); otherwise $OUTBOX_SINK, else
the broker's default sink. The shm name: with_sink(shm=...), or
$OUTBOX_SHM.

Rate limits: before serializing, the transport reads the sink's shared
state (Outbox.sink_state: one state for every process on the host) and
drops the items of limited categories, recording them as the SDK's own
HttpTransport does (client reports, reason `ratelimit_backoff`). Client
reports of every loss (the SDK's sample_rate / before_send / event
processor drops, rate limits, a full ring) go out as `client_report`
items: attached to an outgoing envelope at most every 30 s, sent alone
when nothing else goes out for 60 s, and on flush().

flush() returns at once: the record is in shared memory when
capture_envelope() returns; delivery belongs to the broker.

Works with Debian's sentry_sdk 1.9.x (errors arrive through capture_event,
which is wrapped into an envelope here as the 2.x client does) and the 2.x
Transport API (capture_envelope only; record_lost_event(..., quantity=)).
"""

import errno
import os
import threading
import time
import weakref
from collections import defaultdict
from datetime import datetime

from sentry_sdk.envelope import Envelope, Item, PayloadRef
from sentry_sdk.transport import Transport
from sentry_sdk.utils import logger

try:                                        # both 1.x and 2.x have it
    from sentry_sdk.utils import format_timestamp
except ImportError:                         # pragma: no cover
    def format_timestamp(value):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

import outbox

__all__ = ["OutboxTransport"]

RECORD_TYPE = "envelope"
REPORT_ATTACH_S = 30      # client report attached to outgoing envelopes
REPORT_ALONE_S = 60       # ... or sent on its own
REOPEN_S = 1.0            # retry opening the ring at most this often
LOG_EVERY_S = 60.0        # one warning per cause per minute

# One handle per (process, shm name): a handle holds one producer slot per
# process, so every transport of a process shares it (fork-safe: the C
# library gives a child its own slot on its first emit).
_handles = {}
_handles_lock = threading.Lock()
_transports = weakref.WeakSet()


def _shared_handle(shm):
    with _handles_lock:
        ob = _handles.get(shm)
        if ob is None:
            ob = _handles[shm] = outbox.Outbox(shm)
        return ob


class OutboxTransport(Transport):
    """A sentry_sdk Transport writing envelopes into the outbox ring."""

    sink_name = None          # set by with_sink(); else $OUTBOX_SINK
    shm_name = None           # set by with_sink(); else $OUTBOX_SHM

    @classmethod
    def with_sink(cls, sink=None, shm=None):
        """A subclass bound to a sink (and shm name), to pass as
        sentry_sdk.init(transport=...)."""
        return type(cls.__name__, (cls,), {"sink_name": sink,
                                           "shm_name": shm})

    def __init__(self, options=None, sink=None, shm=None, handle=None):
        Transport.__init__(self, options)
        self.options = options if options is not None else {}
        if sink is None:
            sink = self.sink_name
        if sink is None:
            sink = os.environ.get("OUTBOX_SINK") or None
        self.sink = sink
        self.shm = shm or self.shm_name or None
        self._ob = handle
        self._sid = None
        self._next_open = 0.0
        self._logged = {}
        self._reset_after_fork()
        _transports.add(self)

    def _reset_after_fork(self):
        # losses counted before a fork are the parent's to report
        self._lock = threading.Lock()
        self._discarded = defaultdict(int)
        self._last_report = time.time()

    # -- the ring ---------------------------------------------------------
    def _warn(self, key, msg, *args):
        now = time.monotonic()
        if now >= self._logged.get(key, 0.0):
            self._logged[key] = now + LOG_EVERY_S
            logger.warning(msg, *args)

    def _handle(self):
        """(Outbox, sink id), or None when there is no broker yet (or no
        such sink): retried at most every REOPEN_S."""
        ob, sid = self._ob, self._sid
        if ob is not None and sid is not None:
            return ob, sid
        now = time.monotonic()
        if now < self._next_open:
            return None
        self._next_open = now + REOPEN_S
        try:
            if ob is None:
                ob = self._ob = _shared_handle(self.shm)
            self._sid = ob.sink(self.sink)
        except LookupError as e:
            self._warn("sink", "outbox: %s; events are dropped", e)
            return None
        except outbox.OutboxError as e:
            self._warn("open", "outbox: cannot attach to the broker's "
                       "ring: %s; events are dropped until it runs", e)
            return None
        return ob, self._sid

    def _limits(self, ob, sid):
        try:
            st = ob.sink_state(sid)
        except outbox.OutboxError:
            return None
        if st is None or (st.state != "rate_limited" and not st.categories):
            return None
        return st

    # -- the Transport API ------------------------------------------------
    def capture_event(self, event):
        """sentry_sdk 1.x sends plain errors here (for its /store/
        endpoint); they become an envelope, as 2.x clients make them."""
        headers = {"sent_at": format_timestamp(datetime.utcnow())}
        if event.get("event_id"):
            headers["event_id"] = event["event_id"]
        env = Envelope(headers=headers)
        env.add_event(event)
        self.capture_envelope(env)

    def capture_envelope(self, envelope):
        h = self._handle()
        if h is None:
            for item in envelope.items:
                self.record_lost_event("network_error", item=item)
            return
        ob, sid = h
        items = envelope.items
        st = self._limits(ob, sid)
        if st is not None:
            now = time.time()
            keep = []
            for item in items:
                if st.limited(item.data_category, now):
                    self.record_lost_event("ratelimit_backoff", item=item)
                else:
                    keep.append(item)
            if not keep:
                self._send_report(REPORT_ALONE_S)
                return
            items = keep
        report = self._take_report(REPORT_ATTACH_S)
        if report is not None:
            items = list(items) + [report]
        if items is not envelope.items:
            # a new envelope: the caller's one is left as it was
            envelope = Envelope(headers=envelope.headers, items=items)
        self._emit(ob, sid, envelope, report)

    def _emit(self, ob, sid, env, report):
        err = ob.emit_errno(sid, RECORD_TYPE, env.serialize())
        if err == 0:
            return True
        if report is not None:
            self._restore_report(report)
        reason = "send_error" if err == errno.EMSGSIZE else "queue_overflow"
        for item in env.items:
            if item is not report:
                self.record_lost_event(reason, item=item)
        self._warn(reason, "outbox: envelope dropped (%s): %s", reason,
                   os.strerror(err))
        return False

    def flush(self, timeout=None, callback=None):
        """Returns at once: captured envelopes are already in the ring.
        Pending client reports go out now."""
        self._send_report(0, force=True)

    def kill(self):
        """Nothing to stop: there is no worker thread. The ring handle is
        shared by the process and stays open."""
        return None

    def is_healthy(self):
        """False while the sink is rate limited (any category), as the
        SDK's HttpTransport: the 2.x monitor then downsamples traces."""
        h = self._handle()
        if h is None:
            return True
        st = self._limits(*h)
        if st is None:
            return True
        now = time.time()
        return not ((st.state == "rate_limited" and st.until and
                     st.until > now) or
                    any(u > now for u in st.categories.values()))

    # -- client reports ---------------------------------------------------
    def record_lost_event(self, reason, data_category=None, item=None,
                          quantity=1):
        """Counts a loss by (category, reason) for the next client report,
        with the quantities of the 2.x SDK: an attachment counts its
        bytes, a transaction also its spans + 1 as `span`, a log item its
        bytes as `log_byte`."""
        if not self.options.get("send_client_reports", True):
            return
        extra = None
        if item is not None:
            data_category = item.data_category
            quantity = 1
            if data_category == "transaction":
                ev = item.get_transaction_event() or {}
                extra = ("span", len(ev.get("spans") or []) + 1)
            elif data_category == "attachment":
                quantity = len(item.get_bytes()) or 1
            elif data_category == "log_item":
                extra = ("log_byte", len(item.get_bytes()))
        elif data_category is None:
            raise TypeError("data category not provided")
        with self._lock:
            self._discarded[data_category, reason] += quantity
            if extra is not None:
                self._discarded[extra[0], reason] += extra[1]

    def _take_report(self, interval, force=False):
        now = time.time()
        with self._lock:
            if not force and self._last_report >= now - interval:
                return None
            disc, self._discarded = self._discarded, defaultdict(int)
            self._last_report = now
        if not disc:
            return None
        return Item(PayloadRef(json={
            "timestamp": now,
            "discarded_events": [
                {"reason": reason, "category": cat, "quantity": q}
                for (cat, reason), q in disc.items()]}),
            type="client_report")

    def _restore_report(self, report):
        with self._lock:
            for d in report.payload.json["discarded_events"]:
                self._discarded[d["category"], d["reason"]] += d["quantity"]

    def _send_report(self, interval, force=False):
        report = self._take_report(interval, force)
        if report is None:
            return
        h = self._handle()
        if h is None:
            self._restore_report(report)
            return
        st = self._limits(*h)
        if st is not None and st.limited(report.data_category, time.time()):
            # the report's own category is limited: keep its counts for a
            # later report rather than lose them
            self._restore_report(report)
            return
        self._emit(h[0], h[1], Envelope(items=[report]), report)


def _after_fork_in_child():
    # a lock another thread held at fork() would stay held in the child
    global _handles_lock
    _handles_lock = threading.Lock()
    for t in list(_transports):
        t._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
