/* drain.c - ring -> spool, and the rule that moves the ring head.
 *
 * A record leaves the ring only after it is in the spool per the
 * durability setting: records are appended to the sinks' spool buffers,
 * one flush covers everything appended so far (its ring position is
 * remembered), and only the flush's done callback releases the ring up to
 * that position. While a flush is in flight draining goes on into the
 * buffers, bounded by DRAIN_PENDING_MAX so memory stays bounded when the
 * disk is slow. A record the spool cannot take for now (stalled after a
 * write error) is put back into the ring and draining pauses: producers
 * then see a full ring and count their drops, nothing is lost silently.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "broker.h"

#define DRAIN_BATCH        2048           /* records per pass: then the sinks get a turn */
#define DRAIN_PENDING_MAX  (16u << 20)    /* unflushed spool bytes */
#define DRAIN_NAP_NS       1000000ull     /* 1 ms: a producer is mid-emit */
/* Producers do not wake the broker per event (DESIGN "Waking the
 * consumer"): it looks every drain_latency while events flow, and asks
 * to be woken only past the fill mark (an eighth of the ring since its
 * cursor), or, after DRAIN_IDLE_NS without a record, for the first
 * record. 20 ms of arrivals at the rate the broker can sustain (~1 M
 * ev/s) is ~5 MB, under the mark of a 64 MiB ring. */
#define DRAIN_IDLE_NS      1000000000ull
/* Idle, it still looks with the housekeeping tick: a wake-up lost to a
 * producer killed between its exchange and its FUTEX_WAKE costs this. */
#define DRAIN_IDLE_LOOK_NS 100000000ull
/* A look that took this many records (50 k ev/s at 20 ms) means heavy
 * traffic: then every loop iteration looks, as before issue 17. The
 * per-look cost (a flush, its completions) is shared by that many
 * records anyway, and the drain keeps pace with the spool and sinks. */
#define DRAIN_BUSY         1024
#define STALL_RETRY_NS     1000000000ull
/* At a trickle a look's records wait in the spool's buffers (the ring
 * keeps them: it is released only by the flush that writes them) until
 * the oldest of them was taken this long ago (or, if shorter, the
 * flush_interval / DRAIN_DEFER_DIV of a sink they are for), or
 * DRAIN_DEFER_BYTES wait:
 * one spool flush (an io-wq hand-off and the journal, ~2 broker
 * wake-ups) per ~5 looks instead of one per look (DESIGN "Deferred
 * flush"). */
#define DRAIN_DEFER_NS     100000000ull
#define DRAIN_DEFER_DIV    4
#define DRAIN_DEFER_BYTES  (256u << 10)

int drain_route(struct broker *b, const char *name, uint32_t len,
		int *unknown)
{
	int i;

	*unknown = 0;
	if (len == 0 || (len == 7 && memcmp(name, "default", 7) == 0))
		return b->default_sink;
	for (i = 0; i < b->nsinks; i++) {
		const char *n = b->sinks[i]->cfg.name;

		if (strlen(n) == len && memcmp(n, name, len) == 0)
			return i;
	}
	*unknown = 1;
	return b->default_sink;
}

static void drain_flush_done(void *arg, int err)
{
	struct broker *b = arg;

	b->flush_inflight = 0;
	if (b->drain_held) {
		/* the look drain_run held back: the buffers have room now
		 * (or the error below stalls the drain) */
		b->drain_held = 0;
		b->look_now = 1;
	}
	if (err < 0) {
		/* nothing of it is durable: the retry must flush again,
		 * even with nothing handed out since (drain_flush) */
		b->flush_mark = b->flush_durable;
		b->spool_stalled = 1;
		b->stall_retry = log_mono_ns() + STALL_RETRY_NS;
		log_rl(&b->rl_spool, LOG_ERROR, "spool write failed: %s; "
		       "holding records in the ring, retrying every second",
		       strerror(-err));
		return;
	}
	if (b->spool_stalled)
		log_info("spool writes work again");
	b->spool_stalled = 0;
	/* durable: the ring may forget every record handed out before the
	 * flush began (records from pinned claims included) */
	b->flush_durable = b->flush_mark;
	ring_release_mark(&b->rc, b->flush_mark);
}

static void drain_flush(struct broker *b)
{
	struct ring_mark rm = ring_mark(&b->rc);
	uint8_t blob[SPF_JR_BLOB_MAX];
	struct spool_mark m;
	int rc;

	if (b->flush_inflight)
		return;
	if (rm.pos == b->flush_mark.pos && rm.seq == b->flush_mark.seq) {
		/* nothing handed out since the last flush: what it covered
		 * is durable; a pinned claim that ended without a record
		 * (its owner died) lets head move on now */
		if (ring_cons_pinned(&b->rc))
			ring_release_mark(&b->rc, b->flush_mark);
		return;
	}
	if (rm.pos == b->rc.head && !ring_cons_pinned(&b->rc))
		return;
	b->flush_mark = rm;
	b->flush_inflight = 1;
	b->flush_wait_since = 0;
	b->flush_defer_ns = DRAIN_DEFER_NS;
	b->spool_flushes++;
	/* the drain journal: how far the ring is in the spool, and the
	 * ring-tied counters exact at that point. Never past a pinned
	 * claim: a restarted broker passes over what lies before that
	 * position, and a live producer's claim must not be (what lay
	 * behind it is read again: duplicates, DESIGN "Pinned claims") */
	m.ring_id = b->seg.segment_id;
	m.ring_pos = ring_cons_safe_pos(&b->rc);
	m.blob = blob;
	m.blob_len = stats_mark(b, blob, sizeof(blob));
	rc = spool_set_flush_mark(b->spool, drain_flush_done, b, &m);
	if (rc < 0) {
		/* not started: the next look or tick tries again */
		b->flush_mark = b->flush_durable;
		b->flush_wait_since = b->last_record_ns;
		b->flush_inflight = 0;
		if (rc != -EBUSY)
			log_rl(&b->rl_spool, LOG_ERROR, "spool flush: %s",
			       strerror(-rc));
	}
}

/* A record for sink s waits for its flush at most this long: shorter
 * than DRAIN_DEFER_NS when the sink sends sooner than DRAIN_DEFER_DIV
 * times that (flush_interval = 0: never deferred). */
static void drain_defer_for(struct broker *b, const struct sink *s)
{
	uint64_t d = s->cfg.flush_interval_ms * 1000000ull / DRAIN_DEFER_DIV;

	if (d < b->flush_defer_ns)
		b->flush_defer_ns = d;
}

/* The flush of what the looks took, when it is due: at once under heavy
 * traffic or at a stop, else once the oldest record waiting was taken
 * flush_defer_ns ago, DRAIN_DEFER_BYTES wait, or the ring space they
 * hold reaches the fill mark (an eighth of the ring). Nothing new (a pinned
 * claim's release): drain_flush() at once, it writes nothing. */
static void drain_flush_due(struct broker *b, uint64_t now)
{
	/* ring space the waiting records hold (released by their flush
	 * only): past the producers' fill mark a small ring would fill
	 * while the flush waits, and producers drop */
	uint64_t held = b->rc.cursor - b->rc.head;

	if (b->flush_wait_since && !b->stopping && !b->drain_busy &&
	    now - b->flush_wait_since < b->flush_defer_ns &&
	    spool_set_pending(b->spool) < DRAIN_DEFER_BYTES &&
	    held < (b->seg.g.ring_size >> 3))
		return;
	drain_flush(b);
}

/* One record: validate, route, append. 1 taken (or counted dropped),
 * 0 when the spool cannot take it now (put back). */
static int drain_one(struct broker *b, const struct ring_rec *r)
{
	struct env_view v;
	struct sink *s;
	int unknown, idx, rc;

	if (env_parse(&b->er, r->payload, r->len, &v) < 0) {
		b->dropped_invalid++;
		log_rl(&b->rl_invalid, LOG_WARN, "dropped a ring record that "
		       "is not a valid envelope (slot %u, %u bytes)",
		       r->slot, r->len);
		return 1;
	}
	idx = drain_route(b, v.sink, v.sink_len, &unknown);
	s = b->sinks[idx];
	if (unknown) {
		b->unknown_sink++;
		s->c.unknown_routed++;
		log_rl(&b->rl_unknown, LOG_WARN, "event for unknown sink "
		       "'%.*s' routed to the default sink", (int)v.sink_len,
		       v.sink);
	}
	rc = spool_append(s->spool, r->payload, r->len);
	if (rc == 0) {
		drain_defer_for(b, s);
		return 1;
	}
	if (rc == -EAGAIN)
		return 0;
	if (rc == -ENOSPC) {
		/* spool_max or the disk full (drop-newest, or nothing left
		 * to drop): the spool counts it (refused_full, published as
		 * dropped_spool_full) and logs why, rate-limited */
		return 1;
	}
	b->dropped_spool_error++;
	s->c.dropped_spool_error++;
	log_rl(&b->rl_spool, LOG_ERROR, "sink %s: spool refused a record: "
	       "%s", s->cfg.name, strerror(-rc));
	return 1;
}

uint64_t drain_run(struct broker *b, uint64_t now)
{
	struct ring_rec r;
	unsigned n = 0;
	int rc = RING_EMPTY, spool_full = 0;

	b->wake_mark = DRAIN_NO_WAKE;
	if (b->spool_stalled) {
		if (now < b->stall_retry)
			return b->stall_retry;
		b->stall_retry = now + STALL_RETRY_NS;
		drain_flush(b);     /* the retry: succeeds when space is back */
		if (b->spool_stalled)
			return b->stall_retry;
	}
	for (;;) {
		if (n == DRAIN_BATCH)
			break;
		if (spool_set_pending(b->spool) >= DRAIN_PENDING_MAX) {
			spool_full = 1;
			break;
		}
		rc = ring_next(&b->rc, &r, now);
		if (rc != RING_RECORD)
			break;
		if (!drain_one(b, &r)) {
			/* back in the ring: either the spool's tail buffer is
			 * full of unwritten data (flush and come back soon),
			 * or writes fail (retry the flush every second) */
			ring_unread(&b->rc, &r);
			if (spool_set_stalled(b->spool)) {
				b->spool_stalled = 1;
				b->stall_retry = now + STALL_RETRY_NS;
			}
			spool_full = 1;
			rc = RING_STALLED;
			break;
		}
		n++;
	}
	if (n) {
		b->last_record_ns = now;
		if (!b->flush_wait_since)
			b->flush_wait_since = now;
	}
	b->drain_busy = n >= DRAIN_BUSY;
	b->drain_looks++;
	drain_flush_due(b, now);
	if (n == DRAIN_BATCH)
		return now;                       /* more right away */
	if (b->spool_stalled)
		return b->stall_retry;            /* nothing to take */
	if (spool_full) {
		/* the spool takes no more until the flush in flight is done
		 * (DRAIN_PENDING_MAX behind it, or its tail buffer full):
		 * its completion looks again (drain_flush_done). Asking the
		 * producers for a wake-up at the fill mark instead - which a
		 * ring this far ahead has passed - made every loop iteration
		 * look and take nothing: ~1 M empty looks a second flat out,
		 * on the cores the flush's io-wq copy and the producers need.
		 * No flush in flight (it could not start): a nap */
		b->drain_busy = 0;
		if (!b->flush_inflight)
			return now + DRAIN_NAP_NS;
		b->drain_held = 1;
		return now + b->cfg.drain_latency_ms * 1000000ull;
	}
	b->wake_mark = b->seg.g.ring_size >> 3;
	if (rc == RING_STALLED)
		return now + DRAIN_NAP_NS;        /* a producer mid-emit */
	if (!ring_cons_pinned(&b->rc) && !b->flush_inflight &&
	    !b->flush_wait_since && now - b->last_record_ns >= DRAIN_IDLE_NS) {
		b->wake_mark = 0;                 /* idle: the first record */
		return now + DRAIN_IDLE_LOOK_NS;
	}
	return now + b->cfg.drain_latency_ms * 1000000ull;
}

/* The loop's entry, every iteration. A look at the ring only when one is
 * due: its timer (drain_latency after the last look began), a producer's
 * wake-up, a stop, or heavy traffic (the last look took DRAIN_BUSY
 * records or more). Other iterations (a flush or HTTP completion, the
 * housekeeping tick) only flush what the last look took while the flush
 * before it was in flight: at a trickle, looking at every completion
 * found one or two new records each time and chained ~10 flushes per
 * drain_latency instead of one. Returns the next look's deadline. */
uint64_t drain_tick(struct broker *b, uint64_t now)
{
	if (b->look_now || b->stopping || b->drain_busy ||
	    now >= b->next_look) {
		b->look_now = 0;
		b->next_look = drain_run(b, now);
		return b->next_look;
	}
	if (!b->spool_stalled)
		drain_flush_due(b, now);
	return b->next_look;
}

void drain_catch_up(struct broker *b, uint64_t pos)
{
	struct ring_cons *c = &b->rc;
	uint64_t tail = atomic_load_explicit(&b->seg.hdr->tail,
					     memory_order_acquire);

	/* no walk over [head, pos): a broker killed inside ring_release()
	 * left part of it zeroed, which reads as claims not written yet.
	 * The journal says every record there was taken: jump, and clean
	 * the whole range by releasing it (a journal that does not fit the
	 * ring is not trusted). */
	if (pos <= c->head || pos > tail ||
	    pos - c->head > b->seg.g.ring_size || (pos & 7))
		return;
	log_info("ring: %llu bytes the previous broker had already spooled "
		 "are passed over (it stopped before it released them)",
		 (unsigned long long)(pos - c->head));
	c->cursor = pos;
	c->tail = tail;
	ring_release(c, pos);
}

int drain_idle(struct broker *b)
{
	struct ring_rec r;
	int rc;

	if (b->flush_inflight || b->rc.cursor != b->rc.head)
		return 0;
	rc = ring_next(&b->rc, &r, log_mono_ns());
	if (rc == RING_RECORD) {
		ring_unread(&b->rc, &r);
		return 0;
	}
	return rc == RING_EMPTY;
}
