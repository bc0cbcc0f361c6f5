"""outbox - the Python binding of liboutbox.

Workers write telemetry events into the lock-free ring the outboxd broker
on this host drains; the broker spools and delivers them, with one backoff
and rate-limit state per upstream shared by every process.

    import outbox
    ob = outbox.Outbox()                    # $OUTBOX_SHM, else "outbox"
    ob.emit("api", "track", {"event": "signup"})
    ob.sink_state("api")                    # SinkState(state='ok', ...)

The library is found through $OUTBOX_LIB (a path to liboutbox.so), else
the dynamic linker's usual search (LD_LIBRARY_PATH, ld.so.cache):
liboutbox.so.1, then liboutbox.so.

The binding is ctypes over the C library (docs/DESIGN.md, "Python"): the
emit is one foreign call that keeps the GIL (the C emit takes tens of ns,
less than releasing and re-taking the GIL would), never blocks and never
raises for a full ring: it returns False and the drop is counted, as in C.
A handle opened before os.fork() works in every child: the C library gives
the child its own producer slot on its first emit.
"""

import ctypes
import errno
import json
import os
import threading
import weakref
from collections import namedtuple

try:                                    # Debian: python3-msgpack
    import msgpack as _msgpack
except ImportError:                     # pragma: no cover - JSON fallback
    _msgpack = None

__all__ = ["Outbox", "OutboxError", "SinkState", "load_library",
           "BODY_JSON", "BODY_BYTES", "BODY_MSGPACK"]

# body kinds (include/outbox.h)
BODY_JSON = 1
BODY_BYTES = 2
BODY_MSGPACK = 3

_STATES = {0: "ok", 1: "backoff", 2: "rate_limited"}
_MAX_CATS = 8
_CAT_LEN = 24


class OutboxError(OSError):
    """A call into liboutbox failed (no broker, no slot, bad sink...)."""


class _SinkInfo(ctypes.Structure):
    # struct obx_sink_info (include/outbox.h)
    _fields_ = [("state", ctypes.c_int),
                ("until_ns", ctypes.c_uint64),
                ("ncats", ctypes.c_uint),
                ("cats", (ctypes.c_char * _CAT_LEN) * _MAX_CATS),
                ("cat_until_ns", ctypes.c_uint64 * _MAX_CATS)]


class _Counters(ctypes.Structure):
    # struct obx_counters (include/outbox.h)
    _fields_ = [("emitted", ctypes.c_uint64),
                ("dropped", ctypes.c_uint64),
                ("dropped_ring_full", ctypes.c_uint64),
                ("dropped_too_large", ctypes.c_uint64),
                ("dropped_late", ctypes.c_uint64),
                ("aborted", ctypes.c_uint64)]


SinkState = namedtuple("SinkState", "state until categories")
SinkState.__doc__ = """The broker's delivery state of a sink.

state       'ok', 'backoff' or 'rate_limited'
until       end of the backoff / rate-limit window, seconds since the
            epoch (None when ok)
categories  {category: until} of the rate-limited categories (Sentry's
            X-Sentry-Rate-Limits), seconds since the epoch; may hold
            categories whose window is already over: compare with
            time.time(), or use limited()
"""


def _limited(self, category, now):
    """True when events of `category` are refused at `now` (epoch s):
    the category is limited, or the whole sink is rate limited."""
    if self.state == "rate_limited" and self.until and self.until > now:
        return True
    until = self.categories.get(category)
    return until is not None and until > now


SinkState.limited = _limited

_size_t = ctypes.c_size_t
_lib = None
_lib_lock = threading.Lock()
_handles = weakref.WeakSet()           # open handles, for the fork hook


class _Lib(object):
    """The loaded library: the calls that may block (open: it maps the
    ring) release the GIL (CDLL); the emit path keeps it (PyDLL)."""

    def __init__(self, path):
        slow = ctypes.CDLL(path, use_errno=True)
        fast = ctypes.PyDLL(path, use_errno=True)
        self.path = path
        vp, i = ctypes.c_void_p, ctypes.c_int
        cp = ctypes.c_char_p

        def fn(lib, name, res, *args):
            f = getattr(lib, name)
            f.restype = res
            f.argtypes = list(args)
            return f

        self.open = fn(slow, "obx_open", vp, cp)
        self.open_error = fn(slow, "obx_open_error", cp)
        self.close = fn(slow, "obx_close", None, vp)
        self.sink = fn(fast, "obx_sink", i, vp, cp)
        # obx_emit without argtypes: converting six arguments through
        # argtypes costs ~0.4 us more per call here. The callers pass
        # exactly (c_void_p, int, bytes|None, bytes, c_size_t, int), which
        # is what the C prototype takes (docs/DESIGN.md, "Python").
        self.emit = fast.obx_emit
        self.emit.restype = i
        self.sink_state = fn(fast, "obx_sink_state", i, vp, i,
                             ctypes.POINTER(_SinkInfo))
        self.counters = fn(fast, "obx_counters", i, vp,
                           ctypes.POINTER(_Counters))
        self.broker_alive = fn(fast, "obx_broker_alive", i, vp)


def load_library(path=None):
    """Loads liboutbox once: `path`, else $OUTBOX_LIB, else the linker's
    search for liboutbox.so.1 / liboutbox.so. Raises OutboxError."""
    global _lib
    with _lib_lock:
        if _lib is not None and (path is None or path == _lib.path):
            return _lib
        tried = []
        cands = [path] if path else (
            [os.environ["OUTBOX_LIB"]] if os.environ.get("OUTBOX_LIB")
            else ["liboutbox.so.1", "liboutbox.so"])
        for c in cands:
            try:
                _lib = _Lib(c)
                return _lib
            except OSError as e:
                tried.append("%s: %s" % (c, e))
        raise OutboxError(errno.ENOENT, "cannot load liboutbox ("
                          + "; ".join(tried) + "); set OUTBOX_LIB to the "
                          "path of liboutbox.so or install it")


def _pack_json(obj):
    return json.dumps(obj, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


class Outbox(object):
    """A producer handle on the broker's ring /dev/shm/<shm>.

    shm: the segment name; None means $OUTBOX_SHM, else "outbox".
    lib: a path to liboutbox.so (default: see load_library()).

    Thread-safe and fork-safe. Raises OutboxError when there is no broker
    segment or no free producer slot (the message says which).
    """

    def __init__(self, shm=None, lib=None):
        self._lib = load_library(lib)
        self._h = None
        h = self._lib.open(shm.encode() if shm else None)
        if not h:
            err = ctypes.get_errno()
            why = self._lib.open_error()
            raise OutboxError(err, (why.decode("utf-8", "replace") if why
                                    else os.strerror(err)))
        self._h = h
        self._hv = ctypes.c_void_p(h)   # the handle as obx_emit takes it
        self._emit = self._lib.emit
        self._sinks = {}               # name -> id (None -> $OUTBOX_SINK)
        self._types = {}               # str -> bytes
        self._nslot = 0                # drops the C library cannot count
        _handles.add(self)

    # -- lifecycle --------------------------------------------------------
    def close(self):
        """Gives the producer slot back (in the process that owns it) and
        unmaps the segment. Further calls raise ValueError."""
        h, self._h = self._h, None
        self._hv = None
        if h:
            self._lib.close(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _handle(self):
        h = self._h
        if not h:
            raise ValueError("outbox handle is closed")
        return h

    # -- sinks ------------------------------------------------------------
    def sink(self, name=None):
        """Resolves a sink name to its id (cached). None: $OUTBOX_SINK,
        else the default sink. Raises LookupError when the broker
        publishes its sinks and `name` is not one of them."""
        sid = self._sinks.get(name)
        if sid is not None:
            return sid
        rc = self._lib.sink(self._handle(),
                            name.encode("utf-8") if name else None)
        if rc < 0:
            if rc == -errno.ENOENT:
                raise LookupError("outbox: the broker has no sink %r"
                                  % (name,))
            raise OutboxError(-rc, "outbox: sink %r: %s"
                              % (name, os.strerror(-rc)))
        self._sinks[name] = rc
        return rc

    def sink_state(self, sink=None):
        """The broker's delivery state of a sink (name or id) as a
        SinkState, or None when the broker does not publish that sink."""
        sid = sink if isinstance(sink, int) else self.sink(sink)
        info = _SinkInfo()
        rc = self._lib.sink_state(self._handle(), sid, ctypes.byref(info))
        if rc == -errno.ENOENT or rc == -errno.EAGAIN:
            return None
        if rc < 0:
            raise OutboxError(-rc, "outbox: sink_state: %s"
                              % os.strerror(-rc))
        cats = {}
        for k in range(min(info.ncats, _MAX_CATS)):
            name = info.cats[k].value.decode("utf-8", "replace")
            cats[name] = info.cat_until_ns[k] / 1e9
        return SinkState(_STATES.get(info.state, str(info.state)),
                         info.until_ns / 1e9 if info.until_ns else None,
                         cats)

    # -- emit -------------------------------------------------------------
    def emit(self, sink, type, body, kind=None):
        """Emits one event; True when it is in the ring, False when it was
        dropped (ring full, too large, given up as stalled, no producer
        slot): every drop is counted (counters()), none raises.

        sink: a name, an id from sink(), or None ($OUTBOX_SINK / default)
        type: the event type (str) or None
        body: bytes (opaque), str (JSON text, passed through as the C
              library's OBX_BODY_JSON), or a dict / list (packed with
              msgpack, or JSON text when python3-msgpack is missing).
        kind: force BODY_JSON / BODY_BYTES / BODY_MSGPACK for bytes-like
              bodies that already are JSON or msgpack.
        """
        return self.emit_errno(sink, type, body, kind) == 0

    def emit_errno(self, sink, type, body, kind=None):
        """emit() that says why: 0, or the errno of a counted drop -
        EAGAIN ring full, EMSGSIZE too large, ETIMEDOUT given up as
        stalled, ENOSPC no producer slot for this process."""
        h = self._hv
        if h is None:
            raise ValueError("outbox handle is closed")
        sid = sink if sink.__class__ is int else self._sinks.get(sink)
        if sid is None:
            sid = self.sink(sink)
        if type is None:
            t = None
        else:
            t = self._types.get(type)
            if t is None:
                t = self._types[type] = type.encode("utf-8")
        cls = body.__class__
        if cls is bytes:
            data, k = body, BODY_BYTES
        elif cls is str:
            data, k = body.encode("utf-8"), BODY_JSON
        elif cls is dict or cls is list or cls is tuple:
            if _msgpack is not None:
                data, k = _msgpack.packb(body), BODY_MSGPACK
            else:
                data, k = _pack_json(body), BODY_JSON
        elif isinstance(body, (bytearray, memoryview)):
            data, k = bytes(body), BODY_BYTES
        else:
            raise TypeError("outbox: body must be bytes, str, dict or "
                            "list, not %s" % cls.__name__)
        if kind is not None:
            k = kind
        rc = self._emit(h, sid, t, data, _size_t(len(data)), k)
        if rc == 0:
            return 0
        return self._emit_failed(rc, sid, t, k)

    def _emit_failed(self, rc, sid, t, k):
        if rc == -errno.ENOSPC:
            # no producer slot for this process (a child of a process
            # with many siblings): nothing reached the ring, so the C
            # library has no slot to count it in
            self._nslot += 1
            return errno.ENOSPC
        if rc in (-errno.EAGAIN, -errno.EMSGSIZE, -errno.ETIMEDOUT):
            return -rc                 # counted by liboutbox
        if rc == -errno.EINVAL:
            if t is not None and len(t) > 255:
                raise ValueError("outbox: event type longer than 255 bytes")
            raise ValueError("outbox: bad sink id %r or body kind %r"
                             % (sid, k))
        raise OutboxError(-rc, "outbox: emit: %s" % os.strerror(-rc))

    # -- state ------------------------------------------------------------
    def counters(self):
        """This process's counters (all threads): emitted, dropped,
        dropped_ring_full, dropped_too_large, dropped_late, aborted, and
        dropped_no_slot (emits refused before reaching the ring because
        the process could get no producer slot; also in dropped)."""
        c = _Counters()
        rc = self._lib.counters(self._handle(), ctypes.byref(c))
        nslot = self._nslot
        if rc < 0:
            out = dict.fromkeys(("emitted", "dropped", "dropped_ring_full",
                                 "dropped_too_large", "dropped_late",
                                 "aborted"), 0)
        else:
            out = {f: getattr(c, f) for f, _ in _Counters._fields_}
        out["dropped_no_slot"] = nslot
        out["dropped"] += nslot
        out["emitted"] += nslot
        return out

    def broker_alive(self):
        """True while the broker that owns the segment is running."""
        return self._lib.broker_alive(self._handle()) == 1


def _after_fork_in_child():
    # a lock another thread held at fork() would stay held in the child
    global _lib_lock
    _lib_lock = threading.Lock()
    # drops counted before the fork belong to the parent
    for ob in list(_handles):
        ob._nslot = 0


os.register_at_fork(after_in_child=_after_fork_in_child)
