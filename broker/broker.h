/* broker.h - outboxd: the state of one broker process.
 *
 * One thread, one io_uring reactor. The loop (main.c) alternates:
 * drain the ring into the spool (drain.c), start deliveries (sink.c),
 * publish counters (stats.c), housekeeping; then it sleeps in rx_run()
 * until a completion, a signal, the ring's futex, or the next deadline.
 */
#ifndef OBX_BROKER_H
#define OBX_BROKER_H

#include <stdint.h>
#include <sys/signalfd.h>
#include "config.h"
#include "envelope.h"
#include "log.h"
#include "ops.h"
#include "persist.h"
#include "pool.h"
#include "reactor.h"
#include "ring.h"
#include "segment.h"
#include "sink.h"
#include "spool.h"

struct broker {
	struct cfg cfg;
	struct seg seg;
	struct ring_cons rc;
	struct rx rx;
	struct spool_set *spool;
	struct env_reader er;
	struct sink *sinks[CFG_MAX_SINKS];
	struct http *http;           /* libcurl multi, made by the first
	                              * HTTP sink that opens */
	struct pool *pool;           /* sink_threads, made by the first
	                              * HTTP sink that opens */
	struct persist persist;      /* delivery state across restarts */
	struct ops ops;              /* systemd notify, watchdog, /metrics */
	int nsinks;
	int default_sink;

	/* drain -> spool -> head */
	int flush_inflight;
	struct ring_mark flush_mark; /* what the flush in flight covers */
	struct ring_mark flush_durable; /* what the last good flush covered */
	int spool_stalled;           /* a flush failed: retry at stall_retry */
	uint64_t stall_retry;
	uint64_t last_record_ns;     /* mono: last record drained */
	uint64_t wake_mark;          /* after drain_run(): a producer wakes
	                              * us past cursor + this many bytes,
	                              * DRAIN_NO_WAKE: do not sleep on it */
	uint64_t next_look;          /* mono: when drain_tick() looks next */
	int look_now;                /* a producer woke us: look at once */
	int drain_busy;              /* the last look took DRAIN_BUSY+ */
	int drain_held;              /* no look until the flush completes */
	uint64_t wakeups;            /* woken by a producer (futex) */
	uint64_t drain_looks;        /* drain_run() calls */
	uint64_t spool_flushes;      /* flushes started */
	uint64_t timer_wakeups;      /* rx_run() ended by its timeout */
	uint64_t flush_wait_since;   /* mono: the oldest record taken that
	                              * no flush covers yet, 0: none */
	uint64_t flush_defer_ns;     /* how long they may wait (drain.c) */
	uint64_t drain_again;        /* mono: next drain attempt when waiting */

	/* ring wake-up through the reactor */
	struct rx_op futex_op;
	int futex_armed;

	/* signals through the reactor */
	struct rx_op sig_op;
	int sigfd;
	struct signalfd_siginfo si;

	/* lifecycle */
	int stopping;                /* SIGTERM/SIGINT seen */
	uint64_t stop_deadline;      /* mono */
	int reload;                  /* SIGHUP seen */
	int exit_code;

	/* global counters (others come from the ring and the spool) */
	uint64_t dropped_invalid;
	uint64_t unknown_sink;
	uint64_t dropped_spool_error;
	uint64_t seg_repairs;         /* segment resized / header rewritten */
	uint64_t segs_replaced;       /* damaged or foreign object moved aside */

	uint64_t next_stats, next_reap, next_beat;
	struct log_rl rl_invalid, rl_unknown, rl_spool, rl_ring, rl_stall,
		      rl_seg;
};

/* drain.c */
/* Moves records from the ring into the spool; flushes; returns the next
 * mono ns it wants to run again (UINT64_MAX: only when woken). */
uint64_t drain_run(struct broker *b, uint64_t now);
uint64_t drain_tick(struct broker *b, uint64_t now);
/* 1 when the ring is empty and nothing waits to be made durable. */
int drain_idle(struct broker *b);
#define DRAIN_NO_WAKE UINT64_MAX
/* Index of the sink for an envelope's sink name (default if unknown). */
int drain_route(struct broker *b, const char *name, uint32_t len,
		int *unknown);

/* Start-up after a crash: releases the ring up to pos without reading
 * it (the drain journal says every record before pos is in the spool or
 * was counted dropped). */
void drain_catch_up(struct broker *b, uint64_t pos);

/* stats.c (counters across restarts: see the comment there) */
void stats_restore(struct broker *b);   /* after a restart */
void stats_restore_sink(struct broker *b, struct sink *s);
/* The drain journal's counters (the ring-tied ones), if it is of this
 * ring: 1 with *ring_pos set, else 0. After the sinks are open. */
int stats_restore_mark(struct broker *b, uint64_t *ring_pos);
/* The ring-tied counters now, for the drain journal: bytes in buf. */
uint32_t stats_mark(struct broker *b, uint8_t *buf, uint32_t cap);
/* After an acknowledgement: the sink's seq-tied counters to its spool
 * (written with the checkpoint that records the ack). */
void stats_sink_acked(struct sink *s);
void stats_sink_read(struct sink *s);
void stats_publish(struct broker *b);

#endif
