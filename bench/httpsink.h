/* httpsink.h - a fast loopback HTTP/1.1 sink for outbox-bench (prefix hs_).
 *
 * A forked child process (1..N threads, each with its own epoll set,
 * sharing one listening socket on 127.0.0.1:0 through EPOLLEXCLUSIVE)
 * that takes POSTs on keep-alive connections: Content-Length or chunked
 * bodies, `Content-Encoding: gzip` inflated with zlib or `zstd` decoded
 * with libzstd (every frame, sized or not), NDJSON lines or a
 * JSON array's top-level elements counted as events. It answers 200, or,
 * inside the outage window, the outage status (503) with an optional
 * Retry-After. Every counter lives in a shared anonymous mapping, so the
 * bench reads them without asking the sink over HTTP.
 *
 * With verify on, each event must carry `"body":{"p":P,"s":S` (what
 * outbox-bench producers emit, wrapped in the broker's envelope line);
 * (P, S) is marked in a per-producer bitmap (shared, so hs_lost() in the
 * parent counts what never arrived) and a second sighting is a duplicate.
 */
#ifndef OBX_HTTPSINK_H
#define OBX_HTTPSINK_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#define HS_MAXP   64                  /* producer ids 0..63 */
#define HS_MAXSEQ (1ull << 28)        /* sequence numbers per producer */

struct hs_shared {
	/* written by the parent (hs_outage, hs_drain_target) */
	_Atomic uint64_t outage_from_ns;  /* CLOCK_MONOTONIC, [from, until) */
	_Atomic uint64_t outage_until_ns;
	_Atomic int outage_code;
	_Atomic int retry_after;          /* seconds, < 0: no header */
	_Atomic uint64_t drain_target;    /* events to have; 0 = none */
	/* written by the sink */
	_Atomic int port, ready;
	_Atomic uint64_t conns, requests, requests_ok, requests_rejected;
	_Atomic uint64_t bad_requests;    /* unparsable, bad gzip/zstd: 400 */
	_Atomic uint64_t bytes_wire;      /* accepted bodies as sent */
	_Atomic uint64_t bytes_raw;       /* accepted bodies inflated */
	_Atomic uint64_t events;          /* in accepted requests */
	_Atomic uint64_t unique, dups, noid;  /* verify only */
	_Atomic uint64_t first_ok_ns, last_ok_ns;   /* first / last event */
	_Atomic uint64_t drain_done_ns;   /* when drain_target was reached */
};

struct hs_opts {
	int threads;                      /* worker threads, >= 1 */
	int verify;
	int port;                         /* 0: any free port */
};

struct hs_sink {
	struct hs_shared *sh;
	uint64_t *bm;                     /* HS_MAXP bitmaps of HS_MAXSEQ bits */
	pid_t pid;
	int verify;
};

/* Forks the sink and waits until it listens (its port in s->sh->port).
 * 0 or -errno. */
int hs_start(struct hs_sink *s, const struct hs_opts *o);

/* Answers `code` (with Retry-After unless retry_after < 0) to every
 * request that arrives in [from_ns, until_ns) of CLOCK_MONOTONIC. */
void hs_outage(struct hs_sink *s, uint64_t from_ns, uint64_t until_ns,
	       int code, int retry_after);

/* The sink stamps drain_done_ns when the events it accepted (unique ones
 * with verify) reach n; stamped now if they already have. */
void hs_drain_target(struct hs_sink *s, uint64_t n);

/* Events the sink accepted: unique ones with verify, all without. */
uint64_t hs_have(const struct hs_sink *s);

/* With verify: events (p, s) with s < emitted[p], p < np, never seen. */
uint64_t hs_lost(const struct hs_sink *s, const uint64_t *emitted, int np);

/* The sink's CPU seconds so far (utime + stime of all its threads). */
double hs_cpu_s(const struct hs_sink *s);

/* The counters as one JSON object and a newline (GET /stats answers it). */
int hs_stats_json(const struct hs_shared *sh, char *out, size_t n);

/* Kills the sink and unmaps; the counters are gone afterwards. */
void hs_stop(struct hs_sink *s);

/* `outbox-bench sink`: the sink alone, or under a libcurl load. */
int bench_sink(int argc, char **argv);

#endif
