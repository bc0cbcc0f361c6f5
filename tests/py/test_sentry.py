"""test_sentry.py - outbox.sentry.OutboxTransport with Debian's real
sentry_sdk (python3-sentry-sdk) in forked workers, against a real outboxd.

- file sink: every envelope the SDK produced arrives exactly once, byte
  for byte (errors, messages, transactions from 4 workers);
- shared rate limits: the broker publishes `error` as limited (a 429 with
  X-Sentry-Rate-Limits from the loopback fake upstream, through an http
  sink in drop-category mode), every worker drops error events before
  serializing them and reports them as client reports, transactions
  keep flowing to the upstream;
- a full ring, no broker yet, the 2.x Transport call shapes.

Run with /usr/bin/python3 (tests/test_python.c runs it under make test).
"""

import json
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import obxtest  # noqa: E402
from obxtest import outbox  # noqa: E402

import sentry_sdk  # noqa: E402
from sentry_sdk.envelope import Envelope, Item, PayloadRef  # noqa: E402

import outbox.sentry as obs  # noqa: E402
from outbox.sentry import OutboxTransport  # noqa: E402
from sdktest import (DSN, Recorder, in_child, parse_envelope,  # noqa: E402
                     sdk_threads, wait_children, work)

class SentryTransportTest(unittest.TestCase):

    def setUp(self):
        self.cleanups = []
        os.environ.pop("OUTBOX_SINK", None)
        os.environ.pop("OUTBOX_SHM", None)

    def tearDown(self):
        sentry_sdk.init()                  # no client
        obs._handles.clear()
        for c in reversed(self.cleanups):
            c()

    def broker(self, tag, **kw):
        b = obxtest.Broker(tag, **kw)
        self.cleanups.append(b.cleanup)
        return b.start()

    def test_workers_file_sink(self):
        """4 forked workers (sentry_sdk initialised in the parent before
        the fork, as a pre-loading server does): every envelope arrives in
        the file sink exactly once, byte-identical to the SDK's own
        serialization; the SDK's worker thread never runs."""
        b = self.broker("sdk")
        k, np_ = 25, 4
        refdir = b.dir
        sentry_sdk.init(dsn=DSN, transport=Recorder.with_sink(None, b.shm),
                        traces_sample_rate=1.0)
        pids = []
        for p in range(np_):
            def child(p=p):
                Recorder.refs = []
                work(p, k)
                with open(os.path.join(refdir, "refs-%d.json" % p),
                          "w") as f:
                    json.dump(Recorder.refs, f)
                sentry_sdk.flush()
                return not sdk_threads()
            pids.append(in_child(child))
        wait_children(self, pids)
        refs = {}
        for p in range(np_):
            with open(os.path.join(refdir, "refs-%d.json" % p)) as f:
                for r in json.load(f):
                    self.assertNotIn(r["event_id"], refs)
                    refs[r["event_id"]] = r
        self.assertEqual(len(refs), np_ * 3 * k)
        kinds = [r["kind"] for r in refs.values()]
        # Debian's 1.9: errors and messages through capture_event,
        # transactions as envelopes
        self.assertEqual(kinds.count("event"), np_ * 2 * k)
        self.assertEqual(kinds.count("envelope"), np_ * k)
        st = b.wait_quiet(len(refs))
        self.assertTrue(st["identity_ok"], st)
        out = obxtest.read_output(b.out)
        self.assertEqual(len(out), len(refs))
        seen = {}
        for rec in out:
            self.assertEqual(rec["type"], "envelope")
            data = obxtest.body_bytes(rec)
            hdr, items = parse_envelope(data)
            eid = hdr["event_id"]
            seen[eid] = seen.get(eid, 0) + 1
            ref = refs[eid]
            if ref["kind"] == "envelope":
                self.assertEqual(data, ref["bytes"].encode("utf-8"))
            else:
                self.assertEqual(len(items), 1)
                self.assertEqual(items[0][0]["type"], "event")
                self.assertEqual(items[0][1], ref["bytes"].encode("utf-8"))
                self.assertIn("sent_at", hdr)
        self.assertEqual(sorted(seen), sorted(refs))
        self.assertEqual(set(seen.values()), {1})
        self.assertEqual(sdk_threads(), [])
        self.assertEqual(b.stop(), 0)

    def test_rate_limited_category(self):
        """The broker learns `error` is limited (429 + X-Sentry-Rate-Limits:
        60:error); 4 workers read that shared state: every error event is
        dropped before serialization and counted in a client report,
        transactions flow."""
        up = obxtest.FakeUpstream()
        self.cleanups.append(up.close)
        b = self.broker("rl", sinks=(
            "[sink sentry]\ntype = http\nurl = %s/api/42/envelope/\n"
            "flush_interval = 10ms\non_rate_limit = drop-category\n"
            % up.url))
        up.script({"steps": [{"status": 429, "headers": {
            "X-Sentry-Rate-Limits": "60:error:organization"}}]})
        ob = outbox.Outbox(b.shm)
        self.assertTrue(ob.emit("sentry", "probe", {"probe": 1}))
        obxtest.wait_for(lambda: "error" in (ob.sink_state("sentry") or
                                             outbox.SinkState("", 0, {}))
                         .categories, 10, what="error limited")
        ob.close()
        k, np_ = 20, 4
        os.environ["OUTBOX_SINK"] = "sentry"     # the env var path
        os.environ["OUTBOX_SHM"] = b.shm
        pids = []
        for p in range(np_):
            def child(p=p):
                sentry_sdk.init(dsn=DSN, transport=OutboxTransport,
                                traces_sample_rate=1.0)
                tr = sentry_sdk.Hub.current.client.transport
                assert isinstance(tr, OutboxTransport) and tr.sink == "sentry"
                ids = work(p, k)
                healthy = tr.is_healthy()
                with open(os.path.join(b.dir, "ids-%d.json" % p), "w") as f:
                    json.dump(ids, f)
                sentry_sdk.flush()         # sends the client report
                return not healthy and not sdk_threads()
            pids.append(in_child(child))
        wait_children(self, pids)
        ids = {"error": set(), "message": set(), "transaction": set()}
        for p in range(np_):
            with open(os.path.join(b.dir, "ids-%d.json" % p)) as f:
                for kind, v in json.load(f).items():
                    ids[kind].update(v)
        # transactions + one client report per worker, to the upstream
        b.wait_quiet(np_ * k + np_, sink="sentry")
        txs, reports, errors = {}, [], []
        for req in up.requests():
            if req["status"] != 200:
                continue
            for line in req["body"].splitlines():
                rec = json.loads(line)
                self.assertEqual(rec["type"], "envelope")
                hdr, items = parse_envelope(obxtest.body_bytes(rec))
                for ih, payload in items:
                    if ih["type"] == "transaction":
                        tid = json.loads(payload)["contexts"]["trace"][
                            "trace_id"]
                        txs[tid] = txs.get(tid, 0) + 1
                    elif ih["type"] == "client_report":
                        reports.append(json.loads(payload))
                    else:
                        errors.append(ih["type"])
        self.assertEqual(errors, [])
        self.assertEqual(set(txs), ids["transaction"])
        self.assertEqual(set(txs.values()), {1})
        self.assertEqual(len(reports), np_)
        for rep in reports:
            self.assertEqual(rep["discarded_events"], [
                {"reason": "ratelimit_backoff", "category": "error",
                 "quantity": 2 * k}])
        st = b.stat()["sinks"]["sentry"]
        self.assertEqual(st["dropped_rate_limited"], 1)     # the probe
        self.assertIn("error", [c["name"] for c in
                                st["rate_limited_categories"]])
        self.assertEqual(b.stop(), 0)

    def test_full_ring(self):
        """A full ring drops the envelope (no exception, no blocking) and
        counts it as the SDK counts a full queue (queue_overflow); the
        counts go out in a client report once the ring drains."""
        b = self.broker("sfull", ring_size="64K", max_record="8K")
        tr = OutboxTransport(None, shm=b.shm)
        sentry_sdk.init(dsn=DSN, transport=tr)
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            ok = [sentry_sdk.capture_message("m%d %s" % (i, "x" * 500))
                  for i in range(200)]
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        self.assertEqual(len([x for x in ok if x]), 200)
        c = tr._ob.counters()
        refused = c["dropped_ring_full"]
        self.assertGreater(refused, 50)
        self.assertLess(refused, 200)
        # once the broker has drained the ring, flush() sends the report
        # (a flush into a still-full ring would keep it for later)
        b.wait_quiet(200 - refused)
        sentry_sdk.flush()
        b.wait_quiet(200 - refused + 1)
        out = obxtest.read_output(b.out)
        reports = []
        for rec in out:
            _, items = parse_envelope(obxtest.body_bytes(rec))
            reports += [json.loads(p) for ih, p in items
                        if ih["type"] == "client_report"]
        self.assertEqual(len(out), 200 - refused + 1)
        self.assertEqual(len(reports), 1)
        self.assertEqual(reports[0]["discarded_events"], [
            {"reason": "queue_overflow", "category": "error",
             "quantity": refused}])
        self.assertEqual(b.stop(), 0)

    def test_no_broker_yet(self):
        """Started before the broker: captures are counted losses
        (network_error), nothing raises; once the broker runs, events
        flow and the losses are reported."""
        b = obxtest.Broker("late")
        self.cleanups.append(b.cleanup)
        tr = OutboxTransport(None, shm=b.shm)
        sentry_sdk.init(dsn=DSN, transport=tr)
        for i in range(3):
            self.assertTrue(sentry_sdk.capture_message("early %d" % i))
        b.start()
        time.sleep(obs.REOPEN_S + 0.1)
        eid = sentry_sdk.capture_message("after")
        sentry_sdk.flush()
        b.wait_quiet(2)
        out = [parse_envelope(obxtest.body_bytes(r)) for r in
               obxtest.read_output(b.out)]
        self.assertEqual(out[0][0]["event_id"], eid)
        self.assertEqual(json.loads(out[1][1][0][1])["discarded_events"], [
            {"reason": "network_error", "category": "error", "quantity": 3}])
        self.assertEqual(b.stop(), 0)

    def test_2x_call_shapes(self):
        """The calls a sentry_sdk 2.x client makes: an options dict, only
        capture_envelope (errors too), record_lost_event with quantity=,
        flush(timeout, callback), is_healthy(), kill()."""
        b = self.broker("shape")
        opts = {"dsn": DSN, "send_client_reports": True}
        tr = OutboxTransport(opts, sink="default", shm=b.shm)
        env = Envelope(headers={"event_id": "a" * 32, "sent_at": "x"})
        env.add_event({"event_id": "a" * 32, "message": "m"})
        env.add_item(Item(b"\x00" * 10, type="attachment",
                          filename="f.bin"))
        tr.capture_envelope(env)
        self.assertEqual(len(env.items), 2)          # caller's untouched
        tr.record_lost_event("sample_rate", data_category="transaction",
                             quantity=3)
        tr.record_lost_event("before_send", item=Item(
            PayloadRef(json={"spans": [{}, {}]}), type="transaction"))
        tr.record_lost_event("event_processor", item=Item(
            b"x" * 7, type="attachment"))
        with self.assertRaises(TypeError):
            tr.record_lost_event("x")
        self.assertTrue(tr.is_healthy())
        t0 = time.monotonic()
        tr.flush(2.0, callback=None)
        self.assertLess(time.monotonic() - t0, 0.5)
        tr.kill()
        b.wait_quiet(2)
        out = obxtest.read_output(b.out)
        self.assertEqual(obxtest.body_bytes(out[0]), env.serialize())
        _, items = parse_envelope(obxtest.body_bytes(out[1]))
        rep = json.loads(items[0][1])["discarded_events"]
        self.assertEqual(sorted((d["category"], d["reason"], d["quantity"])
                                for d in rep),
                         [("attachment", "event_processor", 7),
                          ("span", "before_send", 3),
                          ("transaction", "before_send", 1),
                          ("transaction", "sample_rate", 3)])
        # send_client_reports=False: nothing recorded
        tr2 = OutboxTransport(dict(opts, send_client_reports=False),
                              shm=b.shm)
        tr2.record_lost_event("sample_rate", data_category="error")
        tr2.flush(0)
        time.sleep(0.2)
        self.assertEqual(len(obxtest.read_output(b.out)), 2)
        self.assertEqual(b.stop(), 0)


if __name__ == "__main__":
    unittest.main()
