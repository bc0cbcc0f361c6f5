"""test_binding.py - the Python binding (python/outbox) against a real
outboxd: every event is read back from the file sink's output.

Run with Debian's interpreter: /usr/bin/python3 tests/py/test_binding.py
(tests/test_python.c runs it under `make test`).
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import obxtest  # noqa: E402
from obxtest import outbox  # noqa: E402


def wait_child(pid):
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st)


class BindingTest(unittest.TestCase):

    def setUp(self):
        self.brokers = []

    def tearDown(self):
        for b in self.brokers:
            b.cleanup()

    def broker(self, tag, **kw):
        b = obxtest.Broker(tag, **kw)
        self.brokers.append(b)
        return b.start()

    def test_round_trip(self):
        """bytes, JSON text, dict and list bodies, two sinks, types:
        each comes out of the file sinks as it went in, once."""
        b = self.broker("rt", sinks="[sink other]\ntype = file\n"
                        "path = {dir}/other.ndjson\nflush_interval = 20ms\n")
        other_out = os.path.join(b.dir, "other.ndjson")
        ob = outbox.Outbox(b.shm)
        other = ob.sink("other")
        self.assertEqual(ob.sink("other"), other)
        self.assertEqual(ob.sink(None), 0)
        sent = [
            (None, "raw", b"\x00\xffbinary\n"),
            ("default", "json", '{"a":[1,2,{"b":"\u00e9"}]}'),
            (0, "map", {"k": "v", "n": -3, "f": 1.5, "t": True,
                        "none": None, "nested": {"l": [1, "x"]}}),
            (other, "list", [1, "two", {"three": 3}]),
            ("other", None, {"unicode": "\u2603 \U0001f600"}),
            ("other", "big", {"blob": "y" * 30000}),
        ]
        for s, t, body in sent:
            self.assertIs(ob.emit(s, t, body), True)
        c = ob.counters()
        self.assertEqual(c["emitted"], len(sent))
        self.assertEqual(c["dropped"], 0)
        st = b.wait_quiet(len(sent))
        self.assertTrue(st.get("identity_ok"), st)
        got = obxtest.read_output(b.out) + obxtest.read_output(other_out)
        self.assertEqual(len(got), len(sent))
        self.assertEqual(len({r["id"] for r in got}), len(sent))
        by_type = {r["type"]: r for r in got}
        self.assertEqual(obxtest.body_bytes(by_type["raw"]),
                         b"\x00\xffbinary\n")
        self.assertEqual(by_type["json"]["body"], {"a": [1, 2, {"b": "\u00e9"}]})
        self.assertEqual(by_type["map"]["body"], sent[2][2])
        self.assertEqual(by_type["map"]["sink"], "")
        self.assertEqual(by_type["list"]["body"], [1, "two", {"three": 3}])
        self.assertEqual(by_type["list"]["sink"], "other")
        self.assertEqual(by_type[""]["body"], sent[4][2])
        self.assertEqual(by_type["big"]["body"]["blob"], "y" * 30000)
        ob.close()
        self.assertEqual(b.stop(), 0)

    def test_fork_children(self):
        """A handle opened in the parent works in 4 forked children: each
        gets its own producer slot and counters; every event arrives
        exactly once."""
        b = self.broker("fork")
        ob = outbox.Outbox(b.shm)
        self.assertTrue(ob.emit(None, "parent", {"p": 99, "s": 0}))
        n, np_ = 2000, 4
        pids = []
        for p in range(np_):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    ok = 0
                    for s in range(n):
                        while not ob.emit(None, "child", {"p": p, "s": s}):
                            time.sleep(0.001)     # full ring: retry
                        ok += 1
                    c = ob.counters()
                    # the child's own slot: only its own emits are in it
                    code = 0 if (ok == n and c["emitted"] ==
                                 n + c["dropped_ring_full"]) else 3
                finally:
                    os._exit(code)
            pids.append(pid)
        for pid in pids:
            self.assertEqual(wait_child(pid), 0)
        # the parent's counters are its own, untouched by the children
        self.assertEqual(ob.counters()["emitted"], 1)
        b.wait_quiet(np_ * n + 1)
        seen = {}
        for r in obxtest.read_output(b.out):
            key = (r["body"]["p"], r["body"]["s"])
            seen[key] = seen.get(key, 0) + 1
        self.assertEqual(len(seen), np_ * n + 1)
        self.assertEqual(max(seen.values()), 1)
        self.assertIn((99, 0), seen)
        self.assertEqual(b.stop(), 0)

    def test_threads(self):
        """One handle, 4 threads emitting at once."""
        b = self.broker("thr")
        ob = outbox.Outbox(b.shm)
        n = 3000
        fails = []

        def run(t):
            for s in range(n):
                while not ob.emit(None, "th", {"p": t, "s": s}):
                    time.sleep(0.001)
        ths = [threading.Thread(target=run, args=(t,)) for t in range(4)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        self.assertEqual(fails, [])
        b.wait_quiet(4 * n)
        keys = {(r["body"]["p"], r["body"]["s"])
                for r in obxtest.read_output(b.out)}
        self.assertEqual(len(keys), 4 * n)
        self.assertEqual(b.stop(), 0)

    def test_full_ring(self):
        """The broker stopped (SIGSTOP): the ring fills, emit returns False
        without raising, every refusal is counted; once the broker runs
        again every accepted event is delivered, and only those."""
        b = self.broker("full", max_record="8K", ring_size="64K")
        ob = outbox.Outbox(b.shm)
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            results = [ob.emit(None, "f", {"s": s, "pad": "z" * 1000})
                       for s in range(400)]
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        accepted = [s for s, ok in enumerate(results) if ok]
        refused = len(results) - len(accepted)
        self.assertGreater(len(accepted), 10)
        self.assertGreater(refused, 100)
        # no event after the first refusal got in while the broker slept
        self.assertEqual(accepted, list(range(len(accepted))))
        c = ob.counters()
        self.assertEqual(c["emitted"], 400)
        self.assertEqual(c["dropped_ring_full"], refused)
        self.assertEqual(c["dropped"], refused)
        st = b.wait_quiet(len(accepted))
        self.assertEqual(st["dropped_ring_full"], refused)
        self.assertTrue(st.get("identity_ok"), st)
        got = sorted(r["body"]["s"] for r in obxtest.read_output(b.out))
        self.assertEqual(got, accepted)
        # the ring drained: emits succeed again
        self.assertTrue(ob.emit(None, "f", {"s": 400}))
        self.assertEqual(b.stop(), 0)

    def test_errors(self):
        """Clear errors for what is a caller's mistake; drops, not
        exceptions, for what the load does."""
        with self.assertRaises(outbox.OutboxError) as cm:
            outbox.Outbox("obxpy-no-such-%d" % os.getpid())
        self.assertEqual(cm.exception.errno, errno.ENOENT)
        self.assertIn("outboxd", str(cm.exception))
        b = self.broker("err", max_record="8K")
        ob = outbox.Outbox(b.shm)
        with self.assertRaises(LookupError):
            ob.sink("no-such-sink")
        with self.assertRaises(TypeError):
            ob.emit(None, "t", 42)
        with self.assertRaises(ValueError):
            ob.emit(None, "t" * 300, b"x")
        # too large: a counted drop, not an exception
        self.assertIs(ob.emit(None, "t", b"x" * 20000), False)
        c = ob.counters()
        self.assertEqual(c["dropped_too_large"], 1)
        self.assertEqual(c["dropped"], 1)
        self.assertIsNone(ob.sink_state("default").until)
        ob.close()
        ob.close()
        with self.assertRaises(ValueError):
            ob.emit(None, "t", b"x")
        self.assertEqual(b.stop(), 0)

    def test_no_slot(self):
        """A child that can get no producer slot drops, counted in its
        own dropped_no_slot, and does not raise."""
        b = self.broker("slot", broker_extra="producer_slots = 1")
        ob = outbox.Outbox(b.shm)      # takes the only slot
        self.assertTrue(ob.emit(None, "t", b"parent"))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                r = ob.emit(None, "t", b"child")
                c = ob.counters()
                code = 0 if (r is False and c["dropped_no_slot"] == 1 and
                             c["dropped"] == 1) else 2
            finally:
                os._exit(code)
        self.assertEqual(wait_child(pid), 0)
        self.assertEqual(ob.counters()["dropped_no_slot"], 0)
        b.wait_quiet(1)
        self.assertEqual(len(obxtest.read_output(b.out)), 1)
        self.assertEqual(b.stop(), 0)

    def test_sink_state(self):
        """The shared delivery state: backoff with its window, then
        Sentry category limits (X-Sentry-Rate-Limits) published per
        category, as every producer sees them."""
        up = obxtest.FakeUpstream()
        try:
            b = self.broker("state", sinks=(
                "[sink api]\ntype = http\nurl = %s/ingest\n"
                "flush_interval = 10ms\nbackoff_base = 5s\n"
                "backoff_max = 5s\non_rate_limit = drop-category\n"
                % up.url))
            ob = outbox.Outbox(b.shm)
            self.assertEqual(ob.sink_state("api").state, "ok")
            up.script({"steps": [{"status": 503}]})
            t0 = time.time()
            self.assertTrue(ob.emit("api", "e", {"s": 1}))
            st = obxtest.wait_for(
                lambda: (lambda s: s if s.state == "backoff" else None)(
                    ob.sink_state("api")), 10, what="backoff")
            self.assertGreater(st.until, t0 + 4)
            self.assertLess(st.until, time.time() + 6)
            self.assertTrue(st.limited("error", time.time()) is False)
            b.stop()
            b.cleanup()
            self.brokers.remove(b)

            b = self.broker("state2", sinks=(
                "[sink api]\ntype = http\nurl = %s/ingest\n"
                "flush_interval = 10ms\non_rate_limit = drop-category\n"
                % up.url))
            ob = outbox.Outbox(b.shm)
            up.script({"steps": [{"status": 429, "headers": {
                "X-Sentry-Rate-Limits": "60:error;session:org, 30:transaction"}}]})
            t0 = time.time()
            self.assertTrue(ob.emit("api", "e", {"s": 2}))
            st = obxtest.wait_for(
                lambda: (lambda s: s if len(s.categories) >= 3 else None)(
                    ob.sink_state("api")), 10, what="categories")
            self.assertEqual(set(st.categories),
                             {"error", "session", "transaction"})
            self.assertAlmostEqual(st.categories["error"], t0 + 60, delta=5)
            self.assertAlmostEqual(st.categories["transaction"], t0 + 30,
                                   delta=5)
            now = time.time()
            self.assertTrue(st.limited("error", now))
            self.assertFalse(st.limited("attachment", now))
            # a forked child reads the same state through the inherited
            # handle
            pid = os.fork()
            if pid == 0:
                s = ob.sink_state("api")
                os._exit(0 if s and "error" in s.categories else 1)
            self.assertEqual(wait_child(pid), 0)
            self.assertEqual(b.stop(), 0)
        finally:
            up.close()

    def test_abi(self):
        """The ctypes mirrors of struct obx_sink_info / obx_counters match
        include/outbox.h as the C compiler lays them out."""
        src = r'''
#include <stddef.h>
#include <stdio.h>
#include "outbox.h"
int main(void) {
  printf("%zu %zu %zu %zu %zu %zu\n", sizeof(struct obx_sink_info),
         offsetof(struct obx_sink_info, until_ns),
         offsetof(struct obx_sink_info, cats),
         offsetof(struct obx_sink_info, cat_until_ns),
         sizeof(struct obx_counters), offsetof(struct obx_counters, aborted));
  printf("%d %d %d %d %d %d\n", OBX_BODY_JSON, OBX_BODY_BYTES,
         OBX_BODY_MSGPACK, OBX_STATE_OK, OBX_STATE_BACKOFF,
         OBX_STATE_RATE_LIMITED);
  return 0; }
'''
        d = tempfile.mkdtemp(prefix="obxpy-abi-")
        try:
            with open(os.path.join(d, "abi.c"), "w") as f:
                f.write(src)
            exe = os.path.join(d, "abi")
            subprocess.run(["cc", "-I", os.path.join(obxtest.ROOT, "include"),
                            "-o", exe, os.path.join(d, "abi.c")], check=True)
            out = subprocess.run([exe], check=True, capture_output=True,
                                 text=True).stdout.split("\n")
        finally:
            subprocess.run(["rm", "-rf", d])
        I, C = outbox._SinkInfo, outbox._Counters
        self.assertEqual([int(x) for x in out[0].split()],
                         [ctypes_sizeof(I), I.until_ns.offset, I.cats.offset,
                          I.cat_until_ns.offset, ctypes_sizeof(C),
                          C.aborted.offset])
        self.assertEqual([int(x) for x in out[1].split()],
                         [outbox.BODY_JSON, outbox.BODY_BYTES,
                          outbox.BODY_MSGPACK, 0, 1, 2])
        self.assertEqual(sorted(outbox._STATES), [0, 1, 2])

    def test_library_lookup(self):
        """$OUTBOX_LIB wins; a bad one fails with a message naming it."""
        env = dict(os.environ, OUTBOX_LIB="/nonexistent/liboutbox.so",
                   PYTHONPATH=os.path.join(obxtest.ROOT, "python"))
        r = subprocess.run([sys.executable, "-c",
                            "import outbox; outbox.Outbox('x')"], env=env,
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("/nonexistent/liboutbox.so", r.stderr)
        self.assertIn("OUTBOX_LIB", r.stderr)
        # without OUTBOX_LIB: the linker's search, where LD_LIBRARY_PATH
        # comes before any installed copy (ld.so.cache); the soname first
        d = tempfile.mkdtemp(prefix="obxpy-ld-")
        try:
            os.symlink(os.path.join(obxtest.BUILD, "liboutbox.so"),
                       os.path.join(d, "liboutbox.so.1"))
            env = dict(os.environ, PYTHONPATH=os.path.join(obxtest.ROOT,
                                                           "python"),
                       LD_LIBRARY_PATH=d)
            env.pop("OUTBOX_LIB")
            code = ("import outbox, os\n"
                    "print(outbox.load_library().path)\n"
                    "print(set(os.path.realpath(l.split()[-1]) for l in "
                    "open('/proc/self/maps') if 'liboutbox' in l))\n")
            r = subprocess.run([sys.executable, "-c", code], env=env,
                               capture_output=True, text=True)
        finally:
            shutil.rmtree(d)
        self.assertEqual(r.returncode, 0, r.stderr)
        name, mapped = r.stdout.strip().split("\n")
        self.assertEqual(name, "liboutbox.so.1")
        self.assertEqual(mapped, repr({os.path.realpath(
            os.path.join(obxtest.BUILD, "liboutbox.so"))}))


class InstallTest(unittest.TestCase):

    def test_offline_install(self):
        """python/ installs offline with Debian's tools (venv, pip from
        python3-venv, setuptools from python3-setuptools; --no-index: no
        registry is asked) and the installed package works against a
        broker, with the system's msgpack and sentry_sdk."""
        d = tempfile.mkdtemp(prefix="obxpy-inst-")
        b = None
        try:
            src = os.path.join(d, "src")
            shutil.copytree(os.path.join(obxtest.ROOT, "python"), src,
                            ignore=shutil.ignore_patterns("__pycache__"))
            env_dir = os.path.join(d, "env")
            subprocess.run(["/usr/bin/python3", "-m", "venv",
                            "--system-site-packages", env_dir], check=True)
            r = subprocess.run([os.path.join(env_dir, "bin", "pip"),
                                "install", "--no-index",
                                "--no-build-isolation", src],
                               capture_output=True, text=True,
                               env=dict(os.environ,
                                        PIP_DISABLE_PIP_VERSION_CHECK="1"))
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            b = obxtest.Broker("inst").start()
            code = ("import outbox, outbox.sentry, sys\n"
                    "assert outbox.__file__.startswith(sys.prefix)\n"
                    "ob = outbox.Outbox(%r)\n"
                    "assert ob.emit(None, 'installed', {'ok': 1})\n"
                    % b.shm)
            r = subprocess.run([os.path.join(env_dir, "bin", "python"), "-c",
                                code], cwd=d, capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=""))
            self.assertEqual(r.returncode, 0, r.stderr)
            b.wait_quiet(1)
            out = obxtest.read_output(b.out)
            self.assertEqual([(o["type"], o["body"]) for o in out],
                             [("installed", {"ok": 1})])
            self.assertEqual(b.stop(), 0)
        finally:
            if b:
                b.cleanup()
            shutil.rmtree(d, ignore_errors=True)


def ctypes_sizeof(t):
    import ctypes
    return ctypes.sizeof(t)


if __name__ == "__main__":
    unittest.main()
