#!/usr/bin/python3
"""server.py - a small pre-fork HTTP server that reports to Sentry through
outbox (standard library + Debian's python3-sentry-sdk).

The master opens one listening socket and forks N workers that accept on
it (the gunicorn / PHP-FPM model). Each worker initialises sentry_sdk
after the fork and captures one event per request:

    GET /             a message event ("GET /", level info), 200
    GET /error        raises; the exception is captured (an error), 500
    GET /tx           a transaction with one span, 200
    GET /health       no event, 200

    --transport outbox   (default) outbox.sentry.OutboxTransport: the
                         envelope goes into the outbox ring; outboxd's
                         sink delivers it (sink: --sink, else $OUTBOX_SINK)
    --transport http     the SDK's own HTTP transport straight to --dsn
                         (its queue and worker thread in every process),
                         for comparison

    ./server.py --port 8000 --workers 4 --dsn http://public@127.0.0.1:8969/0

SIGTERM / SIGINT stop the master and its workers; a worker that dies is
replaced. Nothing here is specific to the demo: the same two lines
(sentry_sdk.init with transport=OutboxTransport) go into a gunicorn
post_fork hook or a uwsgi postfork function.
"""

import argparse
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
# run from a checkout without installing: python/ of this repository
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

import sentry_sdk  # noqa: E402


CAPTURED = [0]                         # events this worker captured


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive, as load tools use it
    server_version = "outbox-prefork-demo"
    disable_nagle_algorithm = True     # headers and body are two writes

    def log_message(self, fmt, *args):  # one line per request is too many
        pass

    def reply(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            return self.reply(200, "ok\n")
        CAPTURED[0] += 1
        if path == "/error":
            try:
                raise RuntimeError("demo error in worker %d" % os.getpid())
            except RuntimeError:
                eid = sentry_sdk.capture_exception()
            return self.reply(500, "error %s\n" % eid)
        if path == "/tx":
            with sentry_sdk.start_transaction(name="GET /tx",
                                              op="http.server") as tx:
                with sentry_sdk.start_span(op="work", description="demo"):
                    pass
            return self.reply(200, "tx %s\n" % tx.trace_id)
        eid = sentry_sdk.capture_message("GET %s" % path, level="info")
        return self.reply(200, "event %s\n" % eid)


class Server(HTTPServer):
    allow_reuse_address = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # a client closing its keep-alive connection is not an error
        if not isinstance(sys.exc_info()[1], ConnectionError):
            HTTPServer.handle_error(self, request, client_address)


def init_sentry(args):
    if args.transport == "outbox":
        from outbox.sentry import OutboxTransport
        sentry_sdk.init(dsn=args.dsn, traces_sample_rate=1.0,
                        transport=OutboxTransport.with_sink(args.sink,
                                                            args.shm))
    else:
        sentry_sdk.init(dsn=args.dsn, traces_sample_rate=1.0)


def worker_exit(*_):
    # a graceful stop: what the SDK still queues gets its chance (the
    # outbox transport has nothing queued), then one line for bench.py
    sentry_sdk.flush(timeout=5)
    sys.stderr.write("worker %d: captured %d events\n"
                     % (os.getpid(), CAPTURED[0]))
    sys.stderr.flush()
    os._exit(0)


def worker(server, args):
    signal.signal(signal.SIGTERM, worker_exit)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    init_sentry(args)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        sentry_sdk.flush(timeout=2)


def fork_worker(server, args):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            worker(server, args)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return pid


class _Stop(Exception):
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000,
                    help="0: the kernel picks one (printed)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--transport", choices=("outbox", "http"),
                    default="outbox")
    ap.add_argument("--dsn", default=os.environ.get(
        "SENTRY_DSN", "http://public@127.0.0.1:8969/0"),
        help="with --transport outbox it only switches the SDK on; the "
        "broker's sink decides where events go")
    ap.add_argument("--sink", default=None,
                    help="outbox sink (default: $OUTBOX_SINK, else the "
                    "broker's default sink)")
    ap.add_argument("--shm", default=None,
                    help="outbox shm name (default: $OUTBOX_SHM or outbox)")
    args = ap.parse_args()

    server = Server((args.host, args.port), Handler)
    port = server.server_address[1]
    print("listening on http://%s:%d/ with %d workers (transport %s)"
          % (args.host, port, args.workers, args.transport), flush=True)

    workers = {fork_worker(server, args) for _ in range(args.workers)}

    def stop(*_):
        raise _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while True:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid in workers:
                workers.discard(pid)
                time.sleep(0.1)        # no fork storm if workers crash
                workers.add(fork_worker(server, args))
    except _Stop:
        pass
    for pid in workers:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in workers:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    server.socket.close()


if __name__ == "__main__":
    main()
