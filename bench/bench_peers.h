/* bench_peers.h - the systems `outbox-bench e2e --compare` runs beside
 * outbox, on the same workload, against the same loopback sink
 * (httpsink.c, verify on, a fresh one per contender):
 *
 *   sdk        the per-worker SDK pattern: each producer process batches
 *              its own events and POSTs them with libcurl (keep-alive),
 *              compressed as outbox is told to, with per-process
 *              exponential backoff. Flat out the emit that fills a batch
 *              POSTs it (inline, lossless); paced (--rate) a background
 *              thread per process sends from a bounded queue, as
 *              sentry-python and analytics-python do.
 *   syslog_ng  syslog-ng (when installed) with a unix-stream source, a
 *              reliable disk buffer and its http() destination, run in the
 *              foreground with its own config, persist file and control
 *              socket in a temp dir (never the system service), as
 *              ../shared/peers/scripts/syslogng.sh drives it.
 *
 * Every contender sends the bytes outboxd's http sink sends for the same
 * events (bench_line()), so the sink's counting and verification are the
 * same for all.
 */
#ifndef OBX_BENCH_PEERS_H
#define OBX_BENCH_PEERS_H

#include <stdint.h>
#include "config.h"

/* the workload: the same for every contender */
struct bench_work {
	int np, size;
	double duration;           /* seconds of emitting */
	double rate;               /* events/s per producer, 0 = flat out */
	double outage, outage_at;  /* seconds; outage 0 = none */
	int outage_code, retry_after, sink_threads;
	enum cfg_compression comp;
	int batch;                 /* events per request (outbox's batch) */
	int flush_ms;              /* a partial batch goes after this long */
	int sng_reopen;            /* syslog-ng time-reopen(), seconds */
	int progress;              /* a live line on stdout */
	/* paced: the pacing's CPU per wake-up, measured alone before the
	 * runs (pace_us), or, with pace_alongside, by pacing processes next
	 * to each contender's producers during its own run (they add load:
	 * the emit latencies of such a run are not the row's figure) */
	double pace_us;
	int pace_alongside;
};

/* what one contender did */
struct bench_peer {
	const char *name;          /* "outbox", "sdk", "syslog_ng" */
	int ran;                   /* 0: skipped, note says why */
	char note[200];
	uint64_t emitted, delivered, lost, dups;
	uint64_t requests, outage_requests;
	uint64_t emit_p50, emit_p99;       /* ns */
	double secs;               /* first emit to last delivery */
	double prod_cpu_s, daemon_cpu_s;
	double drain_s;            /* after the outage; < 0: none or never */
	double pace_us;            /* paced: the pacing alone, CPU us per
	                            * wake-up, measured during this run */
};

double bench_peer_rate(const struct bench_peer *p);
double bench_peer_cpu_us(const struct bench_peer *p);

/* 0, or -1 with p->note saying why it did not run */
int bench_peer_sdk(const struct bench_work *w, struct bench_peer *p);
int bench_peer_syslogng(const struct bench_work *w, struct bench_peer *p);

/* The side-by-side table (markdown), or with json one object
 * {"outbox": <outbox_json>, "sdk": {...}, "syslog_ng": {...} | null,
 *  "ratios": {...}}; outbox_json is the e2e object as printed alone. */
void bench_compare_print(const struct bench_work *w,
			 const struct bench_peer *ob, const struct bench_peer *sdk,
			 const struct bench_peer *sng, int json,
			 const char *outbox_json);

/* "\r" + a status line on stdout when on; done clears it */
void bench_progress(int on, const char *who, double t, uint64_t emitted,
		    uint64_t delivered);
void bench_progress_done(int on);

#endif
