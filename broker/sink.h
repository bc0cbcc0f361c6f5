/* sink.h - sinks and the delivery engine.
 *
 * Every sink reads its own spool in batches (batch_max_events,
 * batch_max_bytes, flush_interval) and hands each batch to its type's
 * send(); the type calls sink_batch_done() from a reactor completion.
 * The engine acknowledges delivered (or counted-dropped) ranges to the
 * spool, which is what lets records leave the disk. Memory is bounded:
 * at most max_inflight batches per sink, each at most batch_max_bytes.
 */
#ifndef OBX_SINK_H
#define OBX_SINK_H

#include <stdint.h>
#include "buf.h"
#include "config.h"
#include "reactor.h"
#include "spool.h"
#include "obx_abi.h"

struct broker;
struct sink;
struct sink_batch;
struct pol_sink;
struct pol_saved_batch;

/* outcome of one send */
enum sink_result {
	SINK_OK,            /* every record delivered (or counted dropped) */
	SINK_RETRY,         /* nothing delivered; send the same batch again
	                     * after a delay */
};

struct sink_ops {
	const char *name;
	/* 0 or -errno (then the sink is disabled and logged). */
	int (*open)(struct sink *s);
	/* Starts sending b; must end in sink_batch_done(b, ...). 0 or
	 * -errno (then the engine retries the batch later). */
	int (*send)(struct sink *s, struct sink_batch *b);
	void (*close)(struct sink *s);
	/* max batches in flight for this type (file: 1, to keep order) */
	uint32_t (*max_inflight)(const struct sink *s);
	/* Optional. May the engine read a new batch now? (http: not while
	 * the delivery policy's gate is closed or a batch waits for it, so
	 * a backlog stays on disk, not in memory.) */
	int (*can_start)(const struct sink *s);
	/* Optional. Runs every loop turn; the next mono ns it wants. */
	uint64_t (*tick)(struct sink *s, uint64_t now);
	/* Optional. The delivery policy state, for persistence. */
	const struct pol_sink *(*policy)(const struct sink *s);
	/* Optional. Retry metadata of the batches out, for persistence. */
	size_t (*saved)(const struct sink *s, struct pol_saved_batch *out,
			size_t max);
	/* Optional. 1 when nothing can be sent before a window ends: a
	 * stopping broker does not wait for this sink (its data stays
	 * spooled, its state persisted). */
	int (*parked)(const struct sink *s);
	/* Optional. The broker stops: end what is in flight (its data stays
	 * in the spool) and say what the logs still owe, before the last
	 * counters are published and the state is saved. */
	void (*stop)(struct sink *s);
	/* Optional. Batches the type holds aside, retried on their own
	 * (http: poison batches): they do not count against max_inflight,
	 * up to max_inflight more, so they never block the rest. */
	uint32_t (*benched)(const struct sink *s);
};

#define SINK_MAX_INFLIGHT 64

/* Records a type set aside (sink_batch_aside): neither done nor in
 * memory - they wait in the spool, and a batch of them is read again
 * when `due`. The records of [first, end) not set aside are done. */
struct sink_aside {
	uint64_t id;                /* for the batch reading it (from 1) */
	uint64_t first, end;        /* the seq span of the batch */
	uint64_t from;              /* nothing pending before it */
	uint64_t due;               /* mono ns: read them again then */
	uint64_t since;             /* mono ns: set aside first (kept
	                             * across re-reads) */
	uint32_t n;                 /* records pending in [from, end) */
	uint8_t *bits;              /* bit i: seq first + i is pending */
};

/* Drops by data category and reason (the sink page's cat_drops): the
 * first SINK_CAT_NAMED pairs by name, later ones under "other" per
 * reason, so a count is never lost. */
#define SINK_CAT_NAMED 18
#define SINK_CAT_DROPS (SINK_CAT_NAMED + 6)

struct sink_cat_drop {
	char cat[OBX_CAT_MAX];
	uint8_t reason;             /* OBX_DROP_* */
	uint64_t n;
};

/* bounds of what the asides may cost (bitmaps), per sink: past them a
 * type keeps its held batch in memory */
#define SINK_ASIDE_SPAN_MAX (1u << 20)   /* seqs of one batch's span */
#define SINK_ASIDE_MEM_MAX  (4u << 20)   /* bytes of all bitmaps */
#define SINK_ASIDE_MAX      65536u       /* asides */

struct sink_batch {
	struct rx_op op;            /* for the type's own I/O */
	struct sink *s;
	struct spool_batch sb;      /* the records */
	uint64_t first_seq, end_seq;   /* [first, end): seqs may skip */
	uint32_t n;
	int busy;                   /* reading or sending */
	int reading;
	struct buf out;             /* encoded body */
	uint64_t out_off;           /* bytes of out already written */
	uint32_t attempts;
	uint64_t resend_at;         /* mono ns; 0 = not waiting to resend */
	uint32_t dropped_invalid;   /* records the encoder had to skip */
	uint32_t dropped;           /* dropped with a reason the type
	                             * counted itself (http: policy) */
	void *priv;                 /* type state for this send */
	/* a batch read again from an aside: only its pending records,
	 * [first_seq, end_seq) is the part of the span it covers */
	uint64_t held_since;        /* mono ns: the aside's since, or 0 */
	uint64_t aside_id;          /* the aside it reads, 0 = none */
};

struct sink {
	struct broker *b;
	struct cfg_sink cfg;        /* own copy (reload swaps it) */
	int idx;                    /* in broker->sinks and the sink page */
	const struct sink_ops *ops;
	void *impl;
	struct spool *spool;
	uint64_t read_seq;          /* next seq a new batch starts at */
	uint64_t pending_since;     /* mono ns: data waiting since */
	uint64_t retry_at;          /* mono ns: no new batch before */
	uint32_t inflight;          /* batches reading, sending or waiting */
	int reading;                /* a spool read is pending */
	int disabled;               /* open failed; data stays spooled */
	int reconfigure;            /* reload: reopen once inflight == 0 */
	int removed;                /* reload: gone from the config */
	struct cfg_sink next_cfg;   /* reload: the settings to take */
	struct sink_batch batch[SINK_MAX_INFLIGHT];
	uint32_t nused;             /* batch[] slots ever taken: every busy
	                             * one is below (the lowest free slot is
	                             * taken), so the per-tick scans stop
	                             * there - 4 of 64 with the default
	                             * max_inflight */
	struct obx_sink_counters c; /* published on the sink page */
	/* delivery state, published on the sink page (http types) */
	uint32_t state;             /* OBX_SINK_* */
	uint64_t until_ns;          /* CLOCK_REALTIME ns, 0 when ok */
	uint32_t ncats;
	char cats[OBX_MAX_CATS][OBX_CAT_MAX];
	uint64_t cat_until_ns[OBX_MAX_CATS];
	uint32_t event_max;         /* published: producers drop a body over
	                             * it (too_large); 0 = no limit enforced */
	/* records set aside, by first (disjoint spans) */
	struct sink_aside *aside;
	uint32_t naside, aside_cap;
	uint64_t aside_mem;         /* bytes of their bitmaps */
	uint64_t aside_events;      /* records pending in them */
	uint64_t aside_ids;         /* the last id given */
	struct sink_cat_drop cat_drops[SINK_CAT_DROPS];
	uint32_t ncat_drops;
};

extern const struct sink_ops sink_file_ops;
extern const struct sink_ops sink_discard_ops;
extern const struct sink_ops sink_http_ops;

const struct sink_ops *sink_ops_for(enum cfg_sink_type t);

/* Creates the sink and opens its spool (recovery happens here). */
struct sink *sink_new(struct broker *b, const struct cfg_sink *cfg, int idx);
void sink_free(struct sink *s);

/* Reload: close, take the new settings, open again. Only when nothing of
 * this sink is in flight. */
int sink_reconfigure(struct sink *s, const struct cfg_sink *cfg);

/* Starts what can start now; returns the next mono ns at which this sink
 * wants to be ticked again (UINT64_MAX: only on events). */
uint64_t sink_tick(struct sink *s, uint64_t now);

/* Called by the type when a send ended. */
void sink_batch_done(struct sink_batch *b, enum sink_result r);

/* Called by the type instead of sink_batch_done() when some records of b
 * must wait (a rate-limited category, on_rate_limit = hold) and the rest
 * is resolved: held[i] != 0 for b->sb.recs[i] (in the batch's current
 * order). Everything else of the batch is acknowledged now (delivered
 * but for what b->dropped / dropped_invalid counted); the held records
 * stay in the spool - not in memory - and come back in a batch of their
 * own, read again at `due` (mono ns), whose held_since is `since`. 0, or
 * -ENOSPC / -ENOMEM past the aside bounds (then nothing changed: the type
 * keeps the batch). */
int sink_batch_aside(struct sink_batch *b, const uint8_t *held,
		     uint64_t due, uint64_t since);

/* Counts n events of category cat (NULL or "": not counted) dropped
 * for reason (OBX_DROP_*), for the sink page's cat_drops. */
void sink_count_cat(struct sink *s, const char *cat, uint8_t reason,
		    uint64_t n);

/* The earliest due time of the sink's asides (UINT64_MAX: none). */
uint64_t sink_aside_due(const struct sink *s);

/* 1 when nothing is in flight and nothing is waiting in the spool (set
 * aside records included). */
int sink_idle(const struct sink *s);

/* The broker stops (after its last delivery attempt): see ops->stop. */
void sink_stop(struct sink *s);

/* 1 when a new batch is being read or could be started now (a slot free,
 * records readable or an aside due), flush_interval aside. */
int sink_more(const struct sink *s);

#endif
