#!/usr/bin/python3
"""bench.py - wrk against the pre-fork demo: the outbox transport vs the
SDK's default HTTP transport, both delivering to the same loopback
Spotlight, with the receiver up and with it down for 10 s.

    /usr/bin/python3 examples/prefork/bench.py [--duration 20] [--outage 10]
        [--conns 16] [--workers 4] [--path /tx] [--modes outbox,http]
        [--scenarios normal,hung,refused]

Scenarios:
  normal   the receiver answers throughout
  hung     the receiver is SIGSTOPped for --outage s from a third into
           the run: connections are accepted, nothing answers
  refused  the receiver is killed for --outage s (connection refused),
           then started again on the same port; the reported outage
           runs until it answers again (node takes a few seconds)

Per run: requests/s and latency percentiles (wrk --latency), events the
workers captured (= requests answered), envelopes Spotlight received
(counted live on its /stream), and for outbox the broker's counters.
Figures, not assertions; the machine is shared with whatever else runs.
Needs: wrk (Debian), node/npm (Spotlight), outboxd with the sentry sink.
"""

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))

import obxtest  # noqa: E402
import spotlight  # noqa: E402

DSN_PROJECT = 0


class StreamCounter(object):
    """Counts the envelopes Spotlight streams (GET /stream, live)."""

    def __init__(self, port):
        self.port = port
        self.ids = set()
        self.n = 0
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        last_id = None
        while not self.stop:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port,
                                               timeout=5)
                hdrs = {"Last-Event-ID": last_id} if last_id else {}
                c.request("GET", "/stream", headers=hdrs)
                r = c.getresponse()
                # no read timeout: a stopped receiver just blocks the read
                # (a timeout would leave the response unusable)
                c.sock.settimeout(None)
                buf = b""
                while not self.stop:
                    chunk = r.fp.read1(65536)
                    if not chunk:
                        break             # the receiver went away
                    buf += chunk
                    while b"\n\n" in buf:
                        ev, buf = buf.split(b"\n\n", 1)
                        for ln in ev.split(b"\n"):
                            if ln.startswith(b"id:"):
                                i = ln[3:].strip()
                                last_id = i.decode()
                                if i not in self.ids:
                                    self.ids.add(i)
                                    self.n += 1
            except OSError:
                time.sleep(0.2)           # refused: the receiver is down

    def quiet(self, secs=2.0, limit=120):
        """Waits until no new envelope came for secs."""
        end = time.monotonic() + limit
        last, since = self.n, time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.2)
            if self.n != last:
                last, since = self.n, time.monotonic()
            elif time.monotonic() - since >= secs:
                break
        return self.n


def wrk(url, duration, conns):
    r = subprocess.run(["wrk", "-t2", "-c%d" % conns, "-d%ds" % duration,
                        "--latency", "--timeout", "10s", url],
                       capture_output=True, text=True)
    out = r.stdout

    def lat(p):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, out, re.M)
        if not m:
            return None
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v
    req = int(re.search(r"(\d+) requests in", out).group(1))
    errs = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": req,
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)",
                                   out).group(1)),
            "p50_ms": lat(50), "p90_ms": lat(90), "p99_ms": lat(99),
            "socket_errors": errs.group(1) if errs else None,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "raw": out}


def run(mode, scenario, args):
    sp = spotlight.Spotlight()
    port = sp.port
    b = obxtest.Broker("bench-%s-%s" % (mode, scenario), sinks=(
        "[sink sentry]\ntype = sentry\ndsn = http://public@127.0.0.1:%d/%d\n"
        % (port, DSN_PROJECT)))
    b.start()
    counter = StreamCounter(port)
    env = dict(os.environ, OUTBOX_SHM=b.shm, OUTBOX_SINK="sentry")
    srv = subprocess.Popen(
        ["/usr/bin/python3", os.path.join(HERE, "server.py"), "--port", "0",
         "--workers", str(args.workers), "--transport", mode, "--dsn",
         "http://public@127.0.0.1:%d/%d" % (port, DSN_PROJECT)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = srv.stdout.readline()
    sport = int(re.search(r":(\d+)/ with", line).group(1))
    obxtest.wait_for(lambda: subprocess.run(
        ["curl", "-sf", "http://127.0.0.1:%d/health" % sport],
        capture_output=True).returncode == 0, 30, what="server")
    outage = None
    holder = {}

    def fault():
        time.sleep(args.duration / 3.0)
        t0 = time.monotonic()
        if scenario == "hung":
            os.kill(sp.proc.pid, signal.SIGSTOP)
            time.sleep(args.outage)
            os.kill(sp.proc.pid, signal.SIGCONT)
        elif scenario == "refused":
            sp.close()
            time.sleep(args.outage)
            holder["sp"] = restart_spotlight(port)
        holder["outage"] = time.monotonic() - t0
    ft = None
    if scenario != "normal":
        ft = threading.Thread(target=fault)
        ft.start()
    res = wrk("http://127.0.0.1:%d%s" % (sport, args.path), args.duration,
              args.conns)
    if ft:
        ft.join()
        outage = holder["outage"]
    srv.send_signal(signal.SIGTERM)
    _, err = srv.communicate(timeout=60)
    captured = sum(int(n) for n in re.findall(r"captured (\d+) events", err))
    t_end = time.monotonic()
    if mode == "outbox":
        # everything the workers emitted is delivered (or dropped, counted)
        try:
            obxtest.wait_for(lambda: (lambda st: st["sinks"]["sentry"][
                "queued_events"] == 0 and st["emitted"] > 0)(b.stat()),
                600, step=0.2, what="the spool to drain")
        except AssertionError:
            pass
    received = counter.quiet()
    drain = time.monotonic() - t_end
    counter.stop = True
    st = b.stat()
    res.update(mode=mode, scenario=scenario, outage_s=outage,
               received=received, captured=captured, drain_s=drain,
               broker={k: st["sinks"]["sentry"].get(k) for k in (
                   "delivered_events", "requests", "network_errors",
                   "retries", "dropped")},
               emitted=st["emitted"])
    b.stop()
    b.cleanup()
    for s in (holder.get("sp"), sp):
        if s:
            s.close()
    return res


def restart_spotlight(port):
    """Spotlight again on the same port (refused scenario)."""
    env = dict(os.environ)
    env.pop("NODE_ENV", None)
    s = spotlight.Spotlight.__new__(spotlight.Spotlight)
    s.proc = subprocess.Popen([spotlight.binary(), "-p", str(port)],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    s.port = port
    s.url = "http://127.0.0.1:%d" % port

    def healthy():
        try:
            return s._request("GET", "/health", timeout=1)[0] == 200
        except OSError:
            return False
    obxtest.wait_for(healthy, 60, step=0.1, what="Spotlight restarted")
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--outage", type=int, default=10)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--path", default="/tx")
    ap.add_argument("--modes", default="outbox,http")
    ap.add_argument("--scenarios", default="normal,hung,refused")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for scenario in args.scenarios.split(","):
        for mode in args.modes.split(","):
            r = run(mode, scenario, args)
            rows.append(r)
            if args.json:
                print(json.dumps({k: v for k, v in r.items() if k != "raw"}),
                      flush=True)
            else:
                print("%-7s %-7s rps %7.1f  p50 %7.2f ms  p99 %8.2f ms  "
                      "captured %6d  received %6d  lost %6d  outage %s  "
                      "drain %.0fs  broker %s" % (
                          scenario, mode, r["rps"], r["p50_ms"] or -1,
                          r["p99_ms"] or -1, r["captured"], r["received"],
                          r["captured"] - r["received"],
                          "%.1fs" % r["outage_s"] if r["outage_s"] else "-",
                          r["drain_s"], r["broker"] if mode == "outbox" else "-"),
                      flush=True)


if __name__ == "__main__":
    main()
