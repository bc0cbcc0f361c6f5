/* metrics.h - the one table of counters, and what reads it.
 *
 * Every counter of the stats and sink pages (PRODUCT.md section 6) has
 * one row in mx_global[] or mx_sink[]: its `outbox stat --json` key, its
 * offset in the page, its Prometheus family and label, its help text and
 * its role in the identity. `outbox stat` (text, JSON, Prometheus),
 * `outbox top` and the broker's /metrics endpoint all walk these tables,
 * so a counter added to a page and to its table shows up everywhere with
 * the same name; nothing else needs an edit.
 *
 * A snapshot (struct mx_snap) is a consistent copy of the pages of one
 * segment, read under their seqlocks, plus the live producers and the
 * broker's identity. The segment is the caller's: the CLI attaches to
 * it, the broker's metrics thread passes its own mapping.
 */
#ifndef OBX_METRICS_H
#define OBX_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "obx_abi.h"
#include "segment.h"

/* How a counter enters the identity (mx_snap_compute):
 *   MX_INFO   not an event count of the identity (or a gauge)
 *   MX_DROP   a drop reason, counted once in `dropped`
 *   MX_PART   a per-sink share of a global drop reason: part of the
 *             sink's own `dropped`, but not added again globally
 *   MX_QUEUE  events waiting in the spool
 *   MX_DONE   events delivered */
enum mx_role { MX_INFO, MX_DROP, MX_PART, MX_QUEUE, MX_DONE };

struct mx_ctr {
	const char *key;        /* JSON key and text name (PRODUCT.md 6) */
	size_t off;             /* in struct obx_stats / obx_sink_counters */
	int gauge;              /* else a counter (family ends in _total) */
	enum mx_role role;
	const char *family;     /* Prometheus name without "outbox_" */
	const char *lkey;       /* one label that tells the rows of a */
	const char *lval;       /* family apart (reason="ring_full"), or NULL */
	const char *help;       /* of the family: its first row's counts */
};

extern const struct mx_ctr mx_global[];
extern const size_t mx_nglobal;
extern const struct mx_ctr mx_sink[];
extern const size_t mx_nsink;

static inline uint64_t mx_get(const void *base, const struct mx_ctr *c)
{
	uint64_t v;

	__builtin_memcpy(&v, (const uint8_t *)base + c->off, sizeof(v));
	return v;
}

struct mx_prod {
	uint32_t slot, pid;
	uint64_t emitted, dropped;
};

struct mx_snap {
	const struct seg *seg;
	uint64_t taken_ns;              /* CLOCK_MONOTONIC */
	struct obx_stats g;
	struct obx_sink_page *kp;       /* private copy */
	uint32_t nsinks;                /* clamped to OBX_MAX_SINKS */
	struct mx_prod *prods;
	uint32_t nprods;
	int torn;                       /* a seqlock read gave up */
	/* broker identity (consumer page) */
	uint32_t broker_pid;
	uint64_t broker_start, beat_ns, boot_ns, head, tail;
	int alive;
	const char *why_dead;
	/* the identity of PRODUCT.md section 6 */
	uint64_t delivered, dropped, queued;
	int identity_ok;
};

/* Copies len bytes published under a seqlock (see stats.c): 0, or
 * -EAGAIN when the writer held it for over a second (copy kept). */
int mx_seq_read(const _Atomic uint64_t *seq, const void *src, void *dst,
		size_t len);

/* Takes a snapshot of an attached segment: 0, -ENOMEM, or -EAGAIN when a
 * page stayed locked (the snapshot is complete but may be torn). */
int mx_snap_take(struct mx_snap *sn, const struct seg *seg);
void mx_snap_free(struct mx_snap *sn);

/* Every drop of one sink, its share of the spool drops included. */
uint64_t mx_sink_dropped(const struct obx_sink_shm *k);

/* Ring bytes claimed and not yet consumed (clamped to the ring size). */
uint64_t mx_ring_used(const struct mx_snap *sn);

/* The display name of sink i ("#i" if the broker left it empty). */
void mx_sink_name(const struct mx_snap *sn, uint32_t i, char *out,
		  size_t len);

/* "ok", "backoff", "rate_limited" or "unknown". */
const char *mx_state_name(uint32_t st);

/* An OBX_DROP_* reason's name ("rate_limited", ...; "unknown"). */
const char *mx_drop_reason_name(uint32_t r);

/* Entry j of the sink page's drops by category (j < mx_ncat_drops()):
 * its sink's index, the category (printable copy), reason and count;
 * 0, or -1 when it names no sink in use (the page is untrusted). */
uint32_t mx_ncat_drops(const struct mx_snap *sn);
int mx_cat_drop(const struct mx_snap *sn, uint32_t j, uint32_t *sink,
		char *cat, size_t catlen, const char **reason, uint64_t *n);

/* A NUL-terminated copy of a fixed-size name field from shm. */
void mx_shm_str(char *out, size_t outlen, const char *in, size_t inlen);

/* The Prometheus text exposition (format 0.0.4) of a snapshot: every
 * family with # HELP and # TYPE, label values escaped and made UTF-8. */
void mx_prom(FILE *f, const struct mx_snap *sn);

#define MX_PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
