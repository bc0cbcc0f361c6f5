#!/usr/bin/python3
"""prom_check.py - checks outboxd's /metrics with a real Prometheus parser.

Run by test_ops with Debian's /usr/bin/python3 (python3-prometheus-client):

    prom_check.py URL OUTBOX_BIN SHM EXPECT_JSON

URL is http://ADDR:PORT. It scrapes URL/metrics, parses it with
prometheus_client.parser.text_string_to_metric_families, parses the
output of `OUTBOX_BIN stat -s SHM --prometheus` the same way, and checks:
  - the HTTP answer (200, the text format's content type);
  - every family has HELP and a counter/gauge TYPE, counters end in
    _total on the wire, every name starts with outbox_;
  - the endpoint and the CLI expose the same families and the same
    label sets (one table behind both);
  - the sample values in EXPECT_JSON: {"name{label=value,...}": value}
    (labels sorted by name; "name" alone for no labels);
  - GET /health is 200 "ok", an unknown path 404, POST 405.
Prints what differs and exits 1 on any failure.
"""
import json
import subprocess
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def parse(text, where):
    fams = {}
    for fam in text_string_to_metric_families(text):
        if fam.name in fams:
            fail(f"{where}: family {fam.name} appears twice")
        fams[fam.name] = fam
    return fams


def key(sample):
    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}" if labels else sample.name


def samples(fams):
    out = {}
    for fam in fams.values():
        for s in fam.samples:
            out[key(s)] = s.value
    return out


def http(url, method="GET"):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def check_families(fams, text, where):
    if not fams:
        fail(f"{where}: no metric family parsed")
    for name, fam in fams.items():
        if not name.startswith("outbox_"):
            fail(f"{where}: {name} lacks the outbox_ prefix")
        if not fam.documentation:
            fail(f"{where}: {name} has no # HELP")
        if fam.type not in ("counter", "gauge"):
            fail(f"{where}: {name} has type {fam.type}")
        if fam.type == "counter" and f"# TYPE {name}_total counter" not in text:
            fail(f"{where}: counter {name} is not exposed as {name}_total")


def main():
    url, outbox, shm, expect = sys.argv[1], sys.argv[2], sys.argv[3], \
        json.loads(sys.argv[4])
    status, headers, text = http(url + "/metrics")
    if status != 200:
        fail(f"/metrics: HTTP {status}")
    ctype = headers.get("Content-Type", "")
    if not ctype.startswith("text/plain") or "version=0.0.4" not in ctype:
        fail(f"/metrics: Content-Type {ctype!r}")
    ep = parse(text, "/metrics")
    check_families(ep, text, "/metrics")

    cli_text = subprocess.run([outbox, "stat", "-s", shm, "--prometheus"],
                              check=True, capture_output=True,
                              text=True).stdout
    cli = parse(cli_text, "outbox stat --prometheus")
    check_families(cli, cli_text, "outbox stat --prometheus")
    if set(ep) != set(cli):
        fail(f"families differ: only /metrics {sorted(set(ep) - set(cli))}, "
             f"only CLI {sorted(set(cli) - set(ep))}")
    ep_s, cli_s = samples(ep), samples(cli)
    if set(ep_s) != set(cli_s):
        fail(f"samples differ: only /metrics "
             f"{sorted(set(ep_s) - set(cli_s))[:10]}, only CLI "
             f"{sorted(set(cli_s) - set(ep_s))[:10]}")

    for k, want in expect.items():
        for where, got in (("/metrics", ep_s), ("CLI", cli_s)):
            if k not in got:
                fail(f"{where}: no sample {k}")
            elif got[k] != want:
                fail(f"{where}: {k} = {got[k]}, expected {want}")

    status, _, body = http(url + "/health")
    if status != 200 or body != "ok\n":
        fail(f"/health: {status} {body!r}")
    status, _, _ = http(url + "/nope")
    if status != 404:
        fail(f"/nope: HTTP {status}, expected 404")
    status, headers, _ = http(url + "/metrics", method="POST")
    if status != 405 or headers.get("Allow") != "GET, HEAD":
        fail(f"POST /metrics: HTTP {status}, Allow {headers.get('Allow')}")

    print(f"{len(ep)} families, {len(ep_s)} samples parsed; "
          f"{len(expect)} values checked; {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
