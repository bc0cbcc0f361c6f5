/* ring.c - the consumer half of the ring (see ring.h for the protocol
 * and the labels P0..P8 / C1..C5 that the comments below refer to).
 *
 * Who writes which word, seen from here: the broker alone writes head and
 * the cleaned bytes behind it, turns BUSY into DISCARD for dead owners,
 * writes PAD over zero gaps and moves slots DEAD -> FREE. Everything else
 * in the segment is producer-written and treated as untrusted input: every
 * size read from a header is bounded before it is used.
 */
#define _GNU_SOURCE
#include "ring.h"
#include "slots.h"

#include <stdlib.h>
#include <time.h>

#ifdef __x86_64__
#include <immintrin.h>
#endif

#define STALL_FIRST_CHECK_NS   (1 * 1000000ull)   /* 1 ms */
#define STALL_RECHECK_NS       (10 * 1000000ull)  /* then every 10 ms */

/* Zeroes consumed space with non-temporal stores where we can: the lines
 * go to memory instead of staying modified in the broker's cache, so a
 * producer on another core later claims them without a cross-core
 * transfer. Records are 8-byte aligned and n is a multiple of 8. */
static void ring_zero(uint8_t *p, uint64_t n)
{
#ifdef __x86_64__
	long long *q = (long long *)p;
	uint64_t i;

	for (i = 0; i < n / 8; i++)
		_mm_stream_si64(q + i, 0);
	_mm_sfence(); /* NT stores are weakly ordered: before head moves */
#else
	memset(p, 0, (size_t)n);
#endif
}

int ring_cons_init(struct ring_cons *c, struct seg *s)
{
	memset(c, 0, sizeof(*c));
	c->s = s;
	c->dead_tail = calloc(s->g.nslots, sizeof(uint64_t));
	if (!c->dead_tail)
		return -ENOMEM;
	c->head = atomic_load_explicit(&s->cons->head, memory_order_acquire);
	c->cursor = c->head;
	c->tail = atomic_load_explicit(&s->hdr->tail, memory_order_acquire);
	c->stall_timeout = 10ull * 1000000000ull;
	return 0;
}

void ring_cons_fini(struct ring_cons *c)
{
	free(c->dead_tail);
	c->dead_tail = NULL;
}

static uint32_t ring_max_size(const struct seg *s)
{
	return RING_ALIGN(OBX_REC_HDR + s->g.max_record);
}

/* Space the consumer may look at from the cursor: claims lie below tail,
 * and never more than one ring ahead (the second mapping ends there). */
static uint64_t ring_span(struct ring_cons *c)
{
	uint64_t span = c->tail - c->cursor;

	return span > c->s->g.ring_size ? c->s->g.ring_size : span;
}

static void ring_stall_reset(struct ring_cons *c)
{
	c->stall_since = 0;
	c->last_check = 0;
}

/* Returns 1 when a liveness check is due for the current stall. */
static int ring_stall_check_due(struct ring_cons *c, uint64_t now)
{
	if (c->stall_since == 0 || c->stall_pos != c->cursor) {
		c->stall_pos = c->cursor;
		c->stall_since = now;
		c->last_check = 0;
		return 0;
	}
	if (now - c->stall_since < STALL_FIRST_CHECK_NS)
		return 0;
	if (c->last_check && now - c->last_check < STALL_RECHECK_NS)
		return 0;
	c->last_check = now;
	return 1;
}

/* Marks a LIVE slot whose owner is gone DEAD; remembers the tail. */
static void ring_mark_dead(struct ring_cons *c, uint32_t i)
{
	struct obx_slot *sl = &c->s->slots[i];
	uint32_t live = OBX_SLOT_LIVE;

	if (atomic_compare_exchange_strong(&sl->state, &live, OBX_SLOT_DEAD)
	    || live == OBX_SLOT_DEAD) {
		if (!c->dead_tail[i])
			c->dead_tail[i] = atomic_load_explicit(&c->s->hdr->tail,
						memory_order_seq_cst) | 1;
	}
}

static int ring_slot_gone(struct ring_cons *c, uint32_t i)
{
	struct obx_slot *sl = &c->s->slots[i];
	uint32_t st = atomic_load_explicit(&sl->state, memory_order_acquire);

	if (st != OBX_SLOT_LIVE)
		return 1;
	if (!slot_owner_alive(sl)) {
		ring_mark_dead(c, i);
		return 1;
	}
	return 0;
}

/* C2: is some live producer between P1 and P5 (its claim may be the zero
 * word we are looking at)? Owners are checked for liveness only when
 * `check` is set (rate-limited: it reads /proc); dead ones are marked. */
static int ring_live_reserving(struct ring_cons *c, int check)
{
	struct obx_slot *slots = c->s->slots;
	uint32_t i, n = c->s->g.nslots;
	int any = 0;

	for (i = 0; i < n; i++) {
		if (atomic_load_explicit(&slots[i].state,
					 memory_order_acquire) != OBX_SLOT_LIVE)
			continue;
		if (!slot_claiming(&slots[i]))
			continue;
		if (!check || !ring_slot_gone(c, i))
			any = 1;
	}
	return any;
}

/* A zero word at the cursor with tail beyond it. No live producer in its
 * claim window means nobody will ever write this header: pad at once.
 * Otherwise wait, checking the owners' liveness now and then. */
static int ring_zero_gap(struct ring_cons *c, uint64_t now)
{
	struct obx_rec_hdr *rec = seg_rec(c->s, c->cursor);
	uint64_t p, span, lim, w;
	int timed_out, check;

	check = ring_stall_check_due(c, now);
	c->tail = atomic_load_explicit(&c->s->hdr->tail, memory_order_seq_cst);
	timed_out = c->stall_since &&
		    now - c->stall_since >= c->stall_timeout;
	if (ring_live_reserving(c, check) && !timed_out)
		return RING_STALLED;
	/* re-read after the slot scan: a header stored before settled++ is
	 * visible now (P5 -> C2) */
	if (atomic_load_explicit(&rec->word, memory_order_acquire) != 0)
		return -1; /* caller re-reads */
	if (timed_out)
		c->st.timeouts++;
	/* Every claim below tail whose header is still zero belongs to a
	 * dead producer or was abandoned (P3); its body is zero too (P4).
	 * The first non-zero word is the next real header. */
	span = ring_span(c);
	lim = c->cursor + span;
	for (p = c->cursor + 8; p < lim; p += 8)
		if (atomic_load_explicit((_Atomic uint64_t *)(c->s->ring +
			(p & (c->s->g.ring_size - 1))), memory_order_relaxed))
			break;
	if (p > lim)
		p = lim;
	if (p - c->cursor < OBX_REC_HDR && p < lim)
		p = c->cursor + OBX_REC_HDR; /* cannot happen for real claims */
	/* CAS, not a store: a producer that timed out may store its header
	 * right now; then we see BUSY on the next pass instead. */
	w = 0;
	if (atomic_compare_exchange_strong_explicit(&rec->word, &w,
			OBX_REC_WORD(p - c->cursor, 0, OBX_REC_PAD),
			memory_order_acq_rel, memory_order_acquire))
		c->st.gaps++;
	ring_stall_reset(c);
	return -1;
}

/* BUSY at the cursor. */
static int ring_busy(struct ring_cons *c, struct obx_rec_hdr *rec,
		     uint64_t w, uint64_t now)
{
	uint32_t i = OBX_REC_SLOT(w);
	uint64_t want = w;
	int timed_out, gone;

	if (!ring_stall_check_due(c, now))
		return RING_STALLED;
	timed_out = now - c->stall_since >= c->stall_timeout;
	gone = ring_slot_gone(c, i);
	if (!gone && !timed_out)
		return RING_STALLED;
	/* C3: pairs with the owner's CAS in ring_commit()/ring_abort() */
	if (atomic_compare_exchange_strong_explicit(&rec->word, &want,
			OBX_REC_WORD(OBX_REC_SIZE(w), i, OBX_REC_DISCARD),
			memory_order_acq_rel, memory_order_acquire)) {
		if (gone)
			c->st.unblocked++;
		else
			c->st.timeouts++;   /* the owner counts drop_late */
	}
	ring_stall_reset(c);
	return -1;
}

static int ring_header_ok(struct ring_cons *c, uint64_t w, uint64_t span)
{
	uint32_t size = OBX_REC_SIZE(w);
	uint8_t st = OBX_REC_STATE(w);

	if (!OBX_REC_MARKOK(w) || size < OBX_REC_HDR || (size & 7) ||
	    size > span)
		return 0;
	if (st == OBX_REC_PAD)
		return OBX_REC_SLOT(w) == 0;
	if (st < OBX_REC_BUSY || st > OBX_REC_DISCARD)
		return 0;
	return size <= ring_max_size(c->s) && OBX_REC_SLOT(w) < c->s->g.nslots;
}

int ring_next(struct ring_cons *c, struct ring_rec *r, uint64_t now)
{
	for (;;) {
		struct obx_rec_hdr *rec;
		uint64_t w, span;
		int rc;

		if (c->cursor == c->tail) {
			c->tail = atomic_load_explicit(&c->s->hdr->tail,
						       memory_order_acquire);
			if (c->cursor == c->tail)
				return RING_EMPTY;
		}
		if ((int64_t)(c->tail - c->cursor) < 0) {
			/* tail behind us: only a hostile writer does this.
			 * Put it back so producers do not claim consumed
			 * space forever. */
			uint64_t t = c->tail;

			atomic_compare_exchange_strong(&c->s->hdr->tail, &t,
						       c->cursor);
			c->tail = c->cursor;
			c->st.tail_repairs++;
			return RING_EMPTY;
		}
		span = ring_span(c);
		rec = seg_rec(c->s, c->cursor);
		/* C1: pairs with the release/seq_cst stores of P4 and P7 */
		w = atomic_load_explicit(&rec->word, memory_order_acquire);
		if (w == 0) {
			rc = ring_zero_gap(c, now);
			if (rc >= 0)
				return rc;
			continue;
		}
		if (!ring_header_ok(c, w, span)) {
			/* garbage from a hostile or broken writer: step over
			 * one word and look again; every step is counted */
			c->cursor += 8;
			c->st.damaged++;
			ring_stall_reset(c);
			continue;
		}
		switch (OBX_REC_STATE(w)) {
		case OBX_REC_BUSY:
			rc = ring_busy(c, rec, w, now);
			if (rc >= 0)
				return rc;
			continue;
		case OBX_REC_COMMIT:
			ring_stall_reset(c);
			r->pos = c->cursor;
			r->slot = OBX_REC_SLOT(w);
			r->len = rec->len;
			r->flags = rec->flags;
			r->payload = (const uint8_t *)rec + OBX_REC_HDR;
			c->cursor += OBX_REC_SIZE(w);
			if (r->len > OBX_REC_SIZE(w) - OBX_REC_HDR) {
				c->st.bad_len++;
				continue;
			}
			c->st.consumed++;
			return RING_RECORD;
		default: /* DISCARD, PAD */
			ring_stall_reset(c);
			c->cursor += OBX_REC_SIZE(w);
			continue;
		}
	}
}

void ring_unread(struct ring_cons *c, const struct ring_rec *r)
{
	if (r->pos >= c->head && r->pos < c->cursor) {
		c->cursor = r->pos;
		c->st.consumed--;
	}
}

void ring_release(struct ring_cons *c, uint64_t upto)
{
	uint64_t n;

	if (upto <= c->head)
		return;
	if (upto > c->cursor)
		upto = c->cursor;
	n = upto - c->head;
	if (n > c->s->g.ring_size)
		n = c->s->g.ring_size;
	/* Clean behind us so that "zero = not written yet" holds on the
	 * next lap; the double mapping makes the range contiguous. */
	ring_zero(c->s->ring + (c->head & (c->s->g.ring_size - 1)), n);
	c->head = upto;
	/* C4: pairs with the acquire loads of head in P0 and P3 */
	atomic_store_explicit(&c->s->cons->head, upto, memory_order_release);
}

int ring_cons_arm(struct ring_cons *c)
{
	/* C5: Dekker with P7/P8: either we see the new tail, or the
	 * producer sees wake == 1. */
	atomic_store_explicit(&c->s->hdr->wake, 1, memory_order_seq_cst);
	c->tail = atomic_load_explicit(&c->s->hdr->tail, memory_order_seq_cst);
	if (c->tail != c->cursor) {
		atomic_store_explicit(&c->s->hdr->wake, 0,
				      memory_order_relaxed);
		return 0;
	}
	return 1;
}

void ring_cons_disarm(struct ring_cons *c)
{
	/* producers make no syscall while we are awake */
	atomic_store_explicit(&c->s->hdr->wake, 0, memory_order_relaxed);
}

void ring_cons_wait(struct ring_cons *c, uint64_t timeout_ns)
{
	struct timespec ts = {
		.tv_sec = (time_t)(timeout_ns / 1000000000ull),
		.tv_nsec = (long)(timeout_ns % 1000000000ull),
	};

	if (ring_cons_arm(c))
		syscall(SYS_futex, (uint32_t *)&c->s->hdr->wake, FUTEX_WAIT,
			1, &ts, NULL, 0);
	ring_cons_disarm(c);
}

static void ring_fold_slot(struct ring_cons *c, struct obx_slot *sl)
{
	/* claims that never got a header: the owner died between P1 and
	 * P5; the zero gap was padded over without counting */
	c->st.unblocked += slot_claims_open(sl);
	c->retired_emitted += slot_emitted(sl);
	c->retired_full += atomic_load(&sl->drop_full);
	c->retired_too_large += atomic_load(&sl->drop_too_large);
	c->retired_late += atomic_load(&sl->drop_late);
	slot_reset(sl);
}

void ring_reap(struct ring_cons *c)
{
	uint32_t i, n = c->s->g.nslots;

	for (i = 0; i < n; i++) {
		struct obx_slot *sl = &c->s->slots[i];
		uint32_t st = atomic_load_explicit(&sl->state,
						   memory_order_acquire);

		if (st == OBX_SLOT_LIVE) {
			if (!slot_owner_alive(sl))
				ring_mark_dead(c, i);
			continue;
		}
		if (st != OBX_SLOT_DEAD)
			continue;
		if (!c->dead_tail[i]) {
			/* released by its owner (or found DEAD after a
			 * broker restart): its claims are below tail now */
			c->dead_tail[i] = atomic_load_explicit(&c->s->hdr->tail,
						memory_order_seq_cst) | 1;
			continue;
		}
		if ((int64_t)(c->head - (c->dead_tail[i] & ~1ull)) < 0)
			continue;
		ring_fold_slot(c, sl);
		c->dead_tail[i] = 0;
		/* release: pairs with the acq_rel CAS in slot_claim() */
		atomic_store_explicit(&sl->state, OBX_SLOT_FREE,
				      memory_order_release);
	}
}

void ring_totals(const struct ring_cons *c, uint64_t *emitted,
		 uint64_t *full, uint64_t *too_large, uint64_t *late)
{
	uint64_t e = c->retired_emitted, f = c->retired_full,
		 t = c->retired_too_large, l = c->retired_late;
	uint32_t i;

	for (i = 0; i < c->s->g.nslots; i++) {
		const struct obx_slot *sl = &c->s->slots[i];

		if (atomic_load(&sl->state) == OBX_SLOT_FREE)
			continue;
		e += slot_emitted(sl);
		f += atomic_load(&sl->drop_full);
		t += atomic_load(&sl->drop_too_large);
		l += atomic_load(&sl->drop_late);
	}
	*emitted = e;
	*full = f;
	*too_large = t;
	*late = l;
}
