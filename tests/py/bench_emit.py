"""bench_emit.py - what one emit costs from Python, by layer (a figure for
docs/DESIGN.md, not a test): a private broker with a 256M ring so nothing
is dropped, N emits of a 200-byte body per variant, best of R rounds.

    /usr/bin/python3 tests/py/bench_emit.py [N] [R]

Variants: an empty loop; ctypes calls of obx_emit with and without
argtypes; cffi (ABI mode, releases the GIL) when python3-cffi is
installed; Outbox.emit() with bytes and with a small dict (msgpack);
OutboxTransport.capture_envelope() of a ready envelope; and
sentry_sdk.capture_message() through it (what a worker pays per event).
"""

import ctypes
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import obxtest  # noqa: E402
from obxtest import outbox  # noqa: E402


def best(fn, n, rounds):
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn(n)
        out.append((time.perf_counter() - t) / n * 1e9)
    return min(out)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    b = obxtest.Broker("bench", ring_size="256M").start()
    try:
        ob = outbox.Outbox(b.shm)
        d = b"x" * 200
        lib = os.environ["OUTBOX_LIB"]
        res = {}

        def empty(n):
            for _ in range(n):
                pass
        res["empty loop"] = best(empty, n, rounds)

        fa = ctypes.PyDLL(lib).obx_emit
        fa.restype = ctypes.c_int
        fa.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
        h = ob._h

        def ct_argtypes(n):
            for _ in range(n):
                fa(h, 0, b"track", d, 200, 2)
        res["ctypes obx_emit, argtypes"] = best(ct_argtypes, n, rounds)

        fn = ctypes.PyDLL(lib).obx_emit
        fn.restype = ctypes.c_int
        hv, S = ctypes.c_void_p(h), ctypes.c_size_t

        def ct_raw(n):
            for _ in range(n):
                fn(hv, 0, b"track", d, S(200), 2)
        res["ctypes obx_emit, no argtypes (the binding)"] = best(
            ct_raw, n, rounds)

        try:
            import cffi
            ffi = cffi.FFI()
            ffi.cdef("int obx_emit(void *h, int sink, const char *type, "
                     "const void *body, size_t len, int kind);")
            cl = ffi.dlopen(lib)
            ch = ffi.cast("void *", h)

            def cf(n):
                e = cl.obx_emit
                for _ in range(n):
                    e(ch, 0, b"track", d, 200, 2)
            res["cffi ABI mode obx_emit (GIL released)"] = best(cf, n,
                                                                rounds)
        except ImportError:
            pass

        def emit_bytes(n):
            for _ in range(n):
                ob.emit(0, "track", d)
        res["Outbox.emit(bytes 200 B)"] = best(emit_bytes, n, rounds)
        body = {"event": "signup", "user": 12345, "plan": "pro"}

        def emit_dict(n):
            for _ in range(n):
                ob.emit(0, "track", body)
        res["Outbox.emit(dict, msgpack)"] = best(emit_dict, n, rounds)

        import sentry_sdk
        from sentry_sdk.envelope import Envelope
        from outbox.sentry import OutboxTransport
        tr = OutboxTransport(None, shm=b.shm)
        env = Envelope(headers={"event_id": "a" * 32})
        env.add_event({"message": "m" * 150, "level": "info"})

        def capture_env(n):
            for _ in range(n):
                tr.capture_envelope(env)
        res["OutboxTransport.capture_envelope"] = best(capture_env, n // 5,
                                                       rounds)
        sentry_sdk.init(dsn="http://k@127.0.0.1:9/1", transport=tr)

        def capture_msg(n):
            for _ in range(n):
                sentry_sdk.capture_message("hello")
        res["sentry_sdk.capture_message via OutboxTransport"] = best(
            capture_msg, n // 20, rounds)
        c = ob.counters()
        w = max(len(k) for k in res)
        for k, v in res.items():
            print("%-*s %8.0f ns" % (w, k, v))
        print("drops in the binding's own process: %d" % c["dropped"])
    finally:
        b.stop()
        b.cleanup()


if __name__ == "__main__":
    main()
