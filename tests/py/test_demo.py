"""test_demo.py - examples/prefork/server.py as its README runs it: 4
forked workers behind one socket, sentry_sdk with OutboxTransport, a real
outboxd; every event id a response names arrives exactly once.
"""

import json
import os
import re
import signal
import subprocess
import sys
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import obxtest  # noqa: E402

SERVER = os.path.join(obxtest.ROOT, "examples", "prefork", "server.py")


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def envelope_ids(data):
    """event_id of the envelope header, and the trace ids of its
    transaction items."""
    head, _, rest = data.partition(b"\n")
    tids = []
    while rest:
        ih, _, rest = rest.partition(b"\n")
        n = json.loads(ih)["length"]
        if json.loads(ih)["type"] == "transaction":
            tids.append(json.loads(rest[:n])["contexts"]["trace"]["trace_id"])
        rest = rest[n + 1:]
    return json.loads(head).get("event_id"), tids


class DemoTest(unittest.TestCase):

    def test_prefork_demo(self):
        b = obxtest.Broker("demo").start()
        srv = None
        try:
            env = dict(os.environ, OUTBOX_SHM=b.shm)
            srv = subprocess.Popen(
                ["/usr/bin/python3", SERVER, "--port", "0", "--workers",
                 "4"], env=env, stdout=subprocess.PIPE, text=True)
            line = srv.stdout.readline()
            m = re.search(r"http://127\.0\.0\.1:(\d+)/ with 4 workers", line)
            self.assertTrue(m, line)
            url = "http://127.0.0.1:%s" % m.group(1)
            want, txs = set(), set()
            for i in range(30):
                st, body = get(url + "/")
                self.assertEqual(st, 200)
                want.add(body.split()[1])
                st, body = get(url + "/error")
                self.assertEqual(st, 500)
                want.add(body.split()[1])
                st, body = get(url + "/tx")
                self.assertEqual(st, 200)
                txs.add(body.split()[1])
            self.assertEqual(get(url + "/health"), (200, "ok\n"))
            self.assertEqual(len(want), 60)
            b.wait_quiet(90)
            got, got_tx = {}, {}
            for rec in obxtest.read_output(b.out):
                self.assertEqual(rec["type"], "envelope")
                eid, tids = envelope_ids(obxtest.body_bytes(rec))
                if tids:
                    for t in tids:
                        got_tx[t] = got_tx.get(t, 0) + 1
                else:
                    got[eid] = got.get(eid, 0) + 1
            self.assertEqual(set(got), want)
            self.assertEqual(set(got.values()), {1})
            self.assertEqual(set(got_tx), txs)
            self.assertEqual(set(got_tx.values()), {1})
            srv.send_signal(signal.SIGTERM)
            self.assertEqual(srv.wait(10), 0)
            self.assertEqual(b.stop(), 0)
        finally:
            if srv and srv.poll() is None:
                srv.kill()
                srv.wait()
            if srv:
                srv.stdout.close()
            b.cleanup()


if __name__ == "__main__":
    unittest.main()
