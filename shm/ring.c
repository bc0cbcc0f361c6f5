/* ring.c - the consumer half of the ring (see ring.h for the protocol
 * and the labels P0..P8 / C1..C5 that the comments below refer to).
 *
 * Who writes which word, seen from here: the broker alone writes head and
 * the cleaned bytes behind it, turns a dead owner's BUSY into PAD, writes
 * PAD over dead zero gaps and moves slots DEAD -> FREE. Everything else
 * in the segment is producer-written and treated as untrusted input:
 * every size read from a header is bounded before it is used, the cursor
 * never reads at or past head + ring_size (that memory still holds the
 * previous lap until it is cleaned), and the work of one ring_next() call
 * is bounded.
 *
 * A live producer's claim is never handed to another record: when one
 * holds the cursor up for longer than skip_ns (preempted, stopped, a
 * debugger), the cursor goes past it and the claim is *pinned*: head (the
 * space given back to producers) stops at the oldest pin until its owner
 * commits, aborts or dies. What lies behind it is delivered meanwhile.
 */
#define _GNU_SOURCE
#include "ring.h"
#include "slots.h"

#include <stdlib.h>
#include <time.h>

#ifdef __x86_64__
#include <immintrin.h>
#endif

#define RING_FIRST_CHECK_NS  (1 * 1000000ull)   /* 1 ms */
#define RING_RECHECK_NS      (10 * 1000000ull)  /* then every 10 ms */
#define RING_SKIP_NS         (2 * 1000000ull)   /* then go past it */
#define RING_STEPS           4096               /* cursor steps a call */
#define RING_PIN_STEPS       256                /* per pin and call */
#define RING_SCAN_MAX        (1u << 20)         /* gap bytes a step reads */

/* Zeroes consumed space with non-temporal stores where we can: the lines
 * go to memory instead of staying modified in the broker's cache, so a
 * producer on another core later claims them without a cross-core
 * transfer. Records are 8-byte aligned and n is a multiple of 8 (a
 * damaged position that is not gets plain stores). */
static void ring_zero(uint8_t *p, uint64_t n)
{
#if defined(__x86_64__) && !defined(OBX_NO_ASM)
	const __m128i z = _mm_setzero_si128();
	uint8_t *end = p + n;

	if (((uintptr_t)p | n) & 7) {
		/* off the record grid: only a position a producer damaged
		 * gets here (see ring_gap). Plain stores (MOVNTDQ faults
		 * off a 16-byte boundary, and the tail below would write
		 * past end); x86 orders them before head's store */
		memset(p, 0, (size_t)n);
		return;
	}
	/* 16 bytes a store (SSE2, every x86-64) once 16-aligned: half the
	 * stores of 8-byte ones (~35 -> ~28 ns a 280-byte record alone) */
	if (((uintptr_t)p & 8) && p < end) {
		_mm_stream_si64((long long *)p, 0);
		p += 8;
	}
	for (; end - p >= 16; p += 16)
		_mm_stream_si128((__m128i *)p, z);
	if (p < end)
		_mm_stream_si64((long long *)p, 0);
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
	c->gap_cap = s->g.nslots * (OBX_LANES + 1);
	c->gap_who = calloc(c->gap_cap, sizeof(*c->gap_who));
	if (!c->dead_tail || !c->gap_who) {
		ring_cons_fini(c);
		return -ENOMEM;
	}
	c->head = atomic_load_explicit(&s->cons->head, memory_order_acquire);
	if (c->head & 7) {
		/* no broker leaves it there (records are 8-aligned), but the
		 * page is shared: a misaligned head would misalign every
		 * record read and the release's 16-byte non-temporal stores
		 * (ring_zero), which fault. Up to the next record boundary;
		 * ring_tail_fix() then puts tail back in range. */
		c->head = (c->head + 7) & ~(uint64_t)7;
		atomic_store_explicit(&s->cons->head, c->head,
				      memory_order_release);
		c->st.tail_repairs++;
	}
	c->cursor = c->head;
	c->tail = atomic_load_explicit(&s->hdr->tail, memory_order_acquire);
	c->skip_ns = RING_SKIP_NS;
	c->stall_timeout = 10ull * 1000000000ull;
	return 0;
}

void ring_cons_fini(struct ring_cons *c)
{
	free(c->dead_tail);
	free(c->gap_who);
	c->dead_tail = NULL;
	c->gap_who = NULL;
}

static uint32_t ring_max_size(const struct seg *s)
{
	return RING_ALIGN(OBX_REC_HDR + s->g.max_record);
}

static _Atomic uint64_t *ring_word(const struct ring_cons *c, uint64_t pos)
{
	return &seg_rec(c->s, pos)->word;
}

/* C1: a header word, acquire: pairs with P4, P7 and the abort. */
static uint64_t ring_word_acquire(const struct ring_cons *c, uint64_t pos)
{
	uint64_t w = atomic_load_explicit(ring_word(c, pos),
					  memory_order_acquire);

	return w;
}

static uint64_t ring_tail_acquire(const struct ring_cons *c, int seq_cst)
{
	uint64_t t = atomic_load_explicit(&c->s->hdr->tail, seq_cst ?
					  memory_order_seq_cst :
					  memory_order_acquire);

	return t;
}

static uint64_t ring_lane_acquire(const struct ring_cons *c,
				  const struct obx_lane *l)
{
	uint64_t w = atomic_load_explicit(&l->claim, memory_order_acquire);

	return w;
}

static uint64_t ring_settled_acquire(const struct ring_cons *c,
				     const struct obx_slot *sl)
{
	uint64_t st = atomic_load_explicit(&sl->settled, memory_order_acquire);

	return st;
}

/* The first position the cursor may not read: the previous lap begins
 * there until a release cleans it. */
static uint64_t ring_limit(const struct ring_cons *c)
{
	return c->head + c->s->g.ring_size;
}

/* ---- waiting on a claim ---------------------------------------------------- */

static void ring_wait_at(struct ring_wait *w, uint64_t pos, uint64_t now)
{
	if (w->since && w->pos == pos)
		return;
	w->pos = pos;
	w->since = now;
	w->checked = 0;
	w->counted = 0;
}

/* 1 when the owners' liveness is due a check: 1 ms into the wait, then
 * every 10 ms (F_OFD_GETLK is a syscall; most waits end sooner). */
static int ring_wait_check_due(struct ring_wait *w, uint64_t now)
{
	if (now - w->since < RING_FIRST_CHECK_NS)
		return 0;
	if (w->checked && now - w->checked < RING_RECHECK_NS)
		return 0;
	w->checked = now;
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

	if (atomic_load_explicit(&sl->state, memory_order_acquire) !=
	    OBX_SLOT_LIVE)
		return 1;
	if (!slot_owner_alive(c->s, i)) {
		ring_mark_dead(c, i);
		return 1;
	}
	return 0;
}

/* A live claim held the ring up for stall_timeout: counted once per
 * claim, reported with the pid, and its owner killed if configured. */
static void ring_stall_report(struct ring_cons *c, struct ring_wait *w,
			      uint32_t slot, uint64_t now)
{
	struct ring_stall_info si;
	int rc;

	if (w->counted || now - w->since < c->stall_timeout)
		return;
	w->counted = 1;
	c->st.stalls++;
	si.slot = slot;
	si.pid = atomic_load(&c->s->slots[slot].pid);
	si.held_ns = now - w->since;
	si.killed = 0;
	if (c->stall_kill) {
		rc = slot_owner_kill(c->s, slot);
		si.killed = rc == 0 ? 1 : rc;
		if (rc == 0)
			c->st.stall_kills++;
	}
	if (c->on_stall)
		c->on_stall(c->stall_arg, &si);
}

/* ---- claimers (C2) ---------------------------------------------------------- */

/* Every claimer between P1 and P5 right now, of every LIVE slot. Acquire
 * loads: a claim below a tail read before this (seq_cst) has its P1
 * visible here (P1 is released by P2). */
static uint32_t ring_claimers(struct ring_cons *c, struct ring_who *who,
			      uint32_t cap)
{
	struct obx_slot *slots = c->s->slots;
	uint32_t i, k, n = 0;

	for (i = 0; i < c->s->g.nslots && n < cap; i++) {
		struct obx_slot *sl = &slots[i];
		uint64_t r, st;

		if (atomic_load_explicit(&sl->state, memory_order_acquire) !=
		    OBX_SLOT_LIVE)
			continue;
		for (k = 0; k < OBX_LANES && n < cap; k++) {
			uint64_t w = ring_lane_acquire(c, &sl->lane[k]);

			if (w & OBX_LANE_BUSY)
				who[n++] = (struct ring_who){ i, (int32_t)k,
							      w };
		}
		st = ring_settled_acquire(c, sl);
		r = atomic_load_explicit(&sl->reserved, memory_order_acquire);
		if (r != st && n < cap)
			who[n++] = (struct ring_who){ i, -1, st };
	}
	return n;
}

/* Every claim made through the slot's shared counters has settled.
 * settled is read first: while a claim is open, reserved - settled >= 1
 * at every moment, so a reserved read later (>= the settled read, plus
 * the open claim) can never equal it. Read the other way round, claims
 * opened and settled by other threads between the two loads could make
 * them equal while ours is still open: the consumer then padded a live
 * claim (found by ThreadSanitizer, test "[mt] 6 threads"). */
static int ring_shared_quiet(const struct ring_cons *c,
			     const struct obx_slot *sl)
{
	uint64_t st = ring_settled_acquire(c, sl);

	return atomic_load_explicit(&sl->reserved, memory_order_acquire) == st;
}

/* Has this claimer left P1..P5 (its header is then visible: P5 is a
 * release after P4)? A lane's claim word changes on every step; the
 * shared counters can only say "every open claim settled". */
static int ring_who_moved(const struct ring_cons *c, const struct ring_who *w)
{
	const struct obx_slot *sl = &c->s->slots[w->slot];

	if (atomic_load_explicit(&sl->state, memory_order_acquire) !=
	    OBX_SLOT_LIVE)
		return 1;
	if (w->lane >= 0)
		return ring_lane_acquire(c, &sl->lane[w->lane]) != w->val;
	return ring_shared_quiet(c, sl);
}

/* Unchanged since the snapshot, strictly (no settle at all on the shared
 * counters): nothing it wrote can have been seen by a scan meanwhile. */
static int ring_who_still(const struct ring_cons *c, const struct ring_who *w)
{
	const struct obx_slot *sl = &c->s->slots[w->slot];

	if (w->lane >= 0)
		return ring_lane_acquire(c, &sl->lane[w->lane]) == w->val;
	return ring_settled_acquire(c, sl) == w->val;
}

/* Where the claimer's claim starts, when its lane says so (its pos_n is
 * this claim's claim word); 0 with *at unset otherwise. */
static int ring_who_at(const struct ring_cons *c, const struct ring_who *w,
		       uint64_t *at)
{
	const struct obx_lane *l;

	if (w->lane < 0)
		return 0;
	l = &c->s->slots[w->slot].lane[w->lane];
	/* acquire: pairs with the release store of pos_n after pos */
	if (atomic_load_explicit(&l->pos_n, memory_order_acquire) != w->val)
		return 0;
	*at = atomic_load_explicit(&l->pos, memory_order_relaxed);
	return 1;
}

/* Drops the claimers that moved on; with a liveness check due, the dead
 * ones too. Reports a stall of the first one left. */
static void ring_who_prune(struct ring_cons *c, struct ring_who *who,
			   uint32_t *n, struct ring_wait *w, uint64_t now)
{
	int check = ring_wait_check_due(w, now);
	uint32_t i = 0;

	while (i < *n) {
		if (ring_who_moved(c, &who[i]) ||
		    (check && ring_slot_gone(c, who[i].slot)))
			who[i] = who[--*n];
		else
			i++;
	}
	if (*n)
		ring_stall_report(c, w, who[0].slot, now);
}

static int ring_who_all_still(const struct ring_cons *c,
			      const struct ring_who *who, uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++)
		if (!ring_who_still(c, &who[i]))
			return 0;
	return 1;
}

/* ---- gaps, recovery, pins --------------------------------------------------- */

/* First position in [from, lim) holding a non-zero word, or lim (as
 * distances: the range may cross 2^64). */
static uint64_t ring_scan(const struct ring_cons *c, uint64_t from,
			  uint64_t lim)
{
	uint64_t d, n = lim - from;

	if ((int64_t)n <= 0)
		return lim;
	for (d = 0; d < n; d += 8)
		if (atomic_load_explicit(ring_word(c, from + d),
					 memory_order_relaxed))
			return from + d;
	return lim;
}

/* PAD over the dead zero gap [pos, end). A CAS: a producer that was in
 * fact still writing its header wins, and we see BUSY next time. */
static void ring_pad(struct ring_cons *c, uint64_t pos, uint64_t end)
{
	uint64_t w = 0;

	if (end - pos < OBX_REC_HDR)
		end = pos + OBX_REC_HDR;   /* not for real claims: damage */
	if (atomic_compare_exchange_strong_explicit(ring_word(c, pos), &w,
			OBX_REC_WORD(end - pos, 0, OBX_REC_PAD),
			memory_order_acq_rel, memory_order_acquire))
		c->st.gaps++;
}

/* C3: the owner of the BUSY record at pos is dead. PAD it (its late CAS
 * to COMMIT, if it was somehow alive, fails and counts drop_late). The
 * record is counted unblocked here unless it is its lane's open claim
 * (killed between P4 and P5): the slot fold counts those, with the claims
 * that never got a header, so each lost record is counted exactly once. */
static void ring_recover(struct ring_cons *c, uint64_t pos, uint64_t w)
{
	struct obx_rec_hdr *rec = seg_rec(c->s, pos);
	const struct obx_slot *sl = &c->s->slots[OBX_REC_SLOT(w)];
	uint32_t l = rec->flags & OBX_REC_F_LANE;
	int open = 0;

	if (!atomic_compare_exchange_strong_explicit(&rec->word, &w,
			OBX_REC_WORD(OBX_REC_SIZE(w), 0, OBX_REC_PAD),
			memory_order_acq_rel, memory_order_acquire))
		return;
	if (l >= 1 && l <= OBX_LANES) {
		const struct obx_lane *ln = &sl->lane[l - 1];
		uint64_t cw = atomic_load(&ln->claim);

		open = (cw & OBX_LANE_BUSY) &&
		       atomic_load(&ln->pos_n) == cw &&
		       atomic_load(&ln->pos) == pos;
	}
	if (!open)
		c->st.unblocked++;
}

static int ring_header_ok(const struct ring_cons *c, uint64_t w,
			  uint64_t span)
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

/* Hands out the committed record at pos (size from its header). */
static int ring_hand(struct ring_cons *c, struct ring_rec *r, uint64_t pos,
		     uint64_t w, int late)
{
	struct obx_rec_hdr *rec = seg_rec(c->s, pos);

	r->pos = pos;
	r->slot = OBX_REC_SLOT(w);
	r->len = rec->len;
	r->flags = rec->flags;
	r->payload = (const uint8_t *)rec + OBX_REC_HDR;
	r->late = (uint8_t)late;
	c->handed++;
	if (r->len > OBX_REC_SIZE(w) - OBX_REC_HDR) {
		c->st.bad_len++;
		return -1;
	}
	c->st.consumed++;
	c->st.late += (uint64_t)late;
	return RING_RECORD;
}

/* Pins [start, end): head will not pass start while the claim lives. */
static void ring_pin(struct ring_cons *c, uint64_t start, uint64_t end,
		     const struct ring_who *who, uint32_t nwho)
{
	struct ring_pin *p = &c->pins[c->npins++];

	p->start = p->x = start;
	p->end = end;
	p->seq = 0;
	p->w = c->wait;
	p->nwho = nwho;
	if (nwho)
		memcpy(p->who, who, nwho * sizeof(*who));
	c->st.skips++;
	c->cursor = end;
	c->gap_on = 0;
	c->wait.since = 0;
}

/* First position in [from, from + len) holding a non-zero word, as a
 * distance from `from`, reading at most RING_SCAN_MAX bytes when `bound`
 * is set (the rest is scanned on the next call). */
static uint64_t ring_scan_len(const struct ring_cons *c, uint64_t from,
			      uint64_t len, int bound)
{
	if (bound && len > RING_SCAN_MAX)
		len = RING_SCAN_MAX;
	return ring_scan(c, from + 8, from + len) - from;
}

/* The zero word at pos has claimers left (who) that have not moved.
 * When all of them say where their claims start and none starts at pos,
 * the zero run up to the first of those (or to the first non-zero word,
 * within len) is dead: its length. 0 when it may be one of theirs. */
static uint64_t ring_dead_run(const struct ring_cons *c,
			      const struct ring_who *who, uint32_t n,
			      uint64_t pos, uint64_t len)
{
	uint64_t first = UINT64_MAX, at, d;
	uint32_t i;

	for (i = 0; i < n; i++) {
		if (!ring_who_at(c, &who[i], &at))
			return 0;
		if (at - pos < first)
			first = at - pos;
	}
	if (first == 0)
		return 0;
	d = ring_scan_len(c, pos, first < len ? first : len, 1);
	/* P5 precedes any payload byte (the fence after it): claimers
	 * unchanged after the scan wrote nothing it read, so the run ends
	 * at a header, at `first`, or at len */
	atomic_thread_fence(memory_order_acquire);
	return ring_who_all_still(c, who, n) ? d : 0;
}

/* One step in a pinned claim: the same states as at the cursor, bounded
 * by the pin's end. RING_RECORD, RING_STALLED (its owner still holds it),
 * or RING_EMPTY when it is parsed to its end. */
static int ring_pin_step(struct ring_cons *c, struct ring_pin *p,
			 struct ring_rec *r, uint64_t now)
{
	unsigned steps = RING_PIN_STEPS;

	while ((int64_t)(p->end - p->x) > 0 && steps--) {
		uint64_t w, d;

		if (p->nwho)
			ring_who_prune(c, p->who, &p->nwho, &p->w, now);
		w = ring_word_acquire(c, p->x);
		if (w == 0) {
			/* x is a claim boundary: zero is a claim without its
			 * header. Once every claimer of this gap moved on or
			 * died, it is dead; before, only if they all say
			 * their claims lie elsewhere. A header that appears
			 * here is parsed at once, claimers left or not: a
			 * producer's record waits for nobody else's. */
			if (!p->nwho)
				d = ring_scan(c, p->x + 8, p->end) - p->x;
			else if (!(d = ring_dead_run(c, p->who, p->nwho, p->x,
						     p->end - p->x)))
				return RING_STALLED;
			ring_pad(c, p->x, p->x + d);
			continue;
		}
		if (!ring_header_ok(c, w, p->end - p->x)) {
			c->st.damaged++;
			p->x += 8;
			continue;
		}
		switch (OBX_REC_STATE(w)) {
		case OBX_REC_BUSY:
			ring_wait_at(&p->w, p->x, now);
			if (ring_wait_check_due(&p->w, now) &&
			    ring_slot_gone(c, OBX_REC_SLOT(w))) {
				ring_recover(c, p->x, w);
				continue;
			}
			ring_stall_report(c, &p->w, OBX_REC_SLOT(w), now);
			return RING_STALLED;
		case OBX_REC_COMMIT:
			p->x += OBX_REC_SIZE(w);
			if (ring_hand(c, r, p->x - OBX_REC_SIZE(w), w, 1) < 0)
				continue;
			p->seq = c->handed;
			return RING_RECORD;
		case OBX_REC_DISCARD:
			c->st.aborted++;
			/* fall through */
		default:
			p->x += OBX_REC_SIZE(w);
		}
	}
	return (int64_t)(p->end - p->x) <= 0 ? RING_EMPTY : RING_STALLED;
}

/* Visits the pins oldest first: a producer's records come out in its
 * order (its next claim lies after the pinned one). */
static int ring_pins_visit(struct ring_cons *c, struct ring_rec *r,
			   uint64_t now)
{
	uint32_t i;

	for (i = 0; i < c->npins; i++)
		if ((int64_t)(c->pins[i].end - c->pins[i].x) > 0 &&
		    ring_pin_step(c, &c->pins[i], r, now) == RING_RECORD)
			return RING_RECORD;
	return RING_EMPTY;
}

/* ---- the cursor --------------------------------------------------------------- */

/* A zero word at the cursor, below tail (C2). */
/* A zero word at the cursor, below tail (C2). room: bytes from the
 * cursor that may be read. Positions are compared as distances from the
 * cursor: a damaged tail may push them across 2^64. */
static int ring_gap(struct ring_cons *c, uint64_t now, uint64_t room)
{
	uint64_t cur = c->cursor, d, len, at;
	struct ring_who mine[RING_PIN_WHO];
	uint32_t i, n = 0;

	if (c->gap_on && (int64_t)(c->gap_tail - cur) <= 0)
		c->gap_on = 0;
	ring_wait_at(&c->wait, cur, now);
	if (!c->gap_on) {
		c->gap_tail = ring_tail_acquire(c, 1);
		c->gap_nwho = ring_claimers(c, c->gap_who, c->gap_cap);
		c->gap_on = 1;
		c->gap_scan_at = UINT64_MAX;
		if ((int64_t)(c->gap_tail - cur) <= 0) {
			c->gap_on = 0;        /* tail moved back: look again */
			return RING_STALLED;
		}
	} else {
		ring_who_prune(c, c->gap_who, &c->gap_nwho, &c->wait, now);
	}
	/* re-read after the claimers: a header stored before its P5 is
	 * visible now */
	if (ring_word_acquire(c, cur))
		return -1;
	len = c->gap_tail - cur < room ? c->gap_tail - cur : room;
	if (c->gap_nwho == 0) {
		/* Every claim below gap_tail now has its header visible,
		 * or never will: the first non-zero word is the next
		 * header. Claims at or past head + ring_size were all
		 * abandoned (P3): when the gap reaches that far and tail
		 * lies beyond it, skip straight to tail. */
		d = ring_scan_len(c, cur, len, 1);
		if (d == room && c->gap_tail - cur > room) {
			/* a tail someone stored off the grid: the next
			 * record boundary (ring_tail_fix() repairs tail) */
			c->cursor = RING_ALIGN(c->gap_tail);
			c->st.tail_repairs++;
			c->gap_on = 0;
			return -1;
		}
		ring_pad(c, cur, cur + d);
		return -1;
	}
	/* Some claimers have not moved: dead up to where theirs start? */
	d = ring_dead_run(c, c->gap_who, c->gap_nwho, cur, len);
	if (d) {
		ring_pad(c, cur, cur + d);
		return -1;
	}
	/* A claim of theirs may start right here: wait skip_ns, then pin
	 * the gap and go past it (scanning only then: while a claimer is
	 * stopped, every call would rescan otherwise). */
	if (now - c->wait.since < c->skip_ns || c->npins >= RING_PINS)
		return RING_STALLED;
	if (c->gap_scan_at != cur || c->gap_scan_who != c->gap_nwho) {
		d = ring_scan_len(c, cur, len, 0);
		atomic_thread_fence(memory_order_acquire);
		if (!ring_who_all_still(c, c->gap_who, c->gap_nwho))
			return RING_STALLED;
		/* valid while these claimers stay still: nobody else can
		 * write below gap_tail */
		c->gap_scan_at = cur;
		c->gap_scan_who = c->gap_nwho;
		c->gap_scan = d;
	}
	d = c->gap_scan;
	/* the pin waits for those that may own part of [cur, cur + d) */
	for (i = 0; i < c->gap_nwho; i++) {
		if (ring_who_at(c, &c->gap_who[i], &at) && at - cur >= d)
			continue;
		if (n == RING_PIN_WHO)
			return RING_STALLED;     /* too many to track */
		mine[n++] = c->gap_who[i];
	}
	if (d < OBX_REC_HDR)
		return RING_STALLED;             /* damage, not a claim */
	ring_pin(c, cur, cur + d, mine, n);
	return -1;
}

/* A BUSY record at the cursor: its owner is writing it (C3). */
static int ring_busy(struct ring_cons *c, uint64_t w, uint64_t now)
{
	uint32_t i = OBX_REC_SLOT(w);

	ring_wait_at(&c->wait, c->cursor, now);
	if (ring_wait_check_due(&c->wait, now) && ring_slot_gone(c, i)) {
		ring_recover(c, c->cursor, w);
		return -1;
	}
	ring_stall_report(c, &c->wait, i, now);
	if (now - c->wait.since >= c->skip_ns && c->npins < RING_PINS) {
		ring_pin(c, c->cursor, c->cursor + OBX_REC_SIZE(w), NULL, 0);
		return -1;
	}
	return RING_STALLED;
}

/* tail where no honest producer leaves it: behind the cursor or
 * misaligned. Put back (a CAS: producers may be claiming). */
static int ring_tail_fix(struct ring_cons *c)
{
	uint64_t t = c->tail, want;

	if ((int64_t)(t - c->cursor) < 0)
		want = c->cursor;     /* producers would claim consumed space */
	else if (t & 7)
		want = RING_ALIGN(t); /* every claim would be misaligned */
	else
		return 0;
	atomic_compare_exchange_strong(&c->s->hdr->tail, &t, want);
	c->st.tail_repairs++;
	c->tail = ring_tail_acquire(c, 0);
	return 1;
}

/* One step at the cursor: a record, a verdict, or -1 to go on. */
static int ring_step(struct ring_cons *c, struct ring_rec *r, uint64_t now)
{
	uint64_t w, room, span;
	int rc;

	if (c->cursor == c->tail) {
		c->tail = ring_tail_acquire(c, 0);
		if (c->cursor == c->tail)
			return RING_EMPTY;
	}
	if (ring_tail_fix(c))
		return (int64_t)(c->tail - c->cursor) <= 0 ? RING_EMPTY : -1;
	/* C1: never at or past head + ring_size: the previous lap */
	room = ring_limit(c) - c->cursor;
	if ((int64_t)room < OBX_REC_HDR)
		return RING_STALLED;             /* until a release */
	span = c->tail - c->cursor < room ? c->tail - c->cursor : room;
	w = ring_word_acquire(c, c->cursor);
	if (w == 0)
		return ring_gap(c, now, room);
	if (!ring_header_ok(c, w, span)) {
		/* garbage from a hostile or broken writer: step over one
		 * word and look again; every step is counted */
		c->cursor += 8;
		c->st.damaged++;
		return -1;
	}
	c->gap_on = 0;
	switch (OBX_REC_STATE(w)) {
	case OBX_REC_BUSY:
		return ring_busy(c, w, now);
	case OBX_REC_COMMIT:
		/* a pinned claim of the same producer came first: it may
		 * have committed before this one (seen COMMIT above) */
		if (c->npins && ring_pins_visit(c, r, now) == RING_RECORD)
			return RING_RECORD;
		c->cursor += OBX_REC_SIZE(w);
		rc = ring_hand(c, r, c->cursor - OBX_REC_SIZE(w), w, 0);
		return rc;
	case OBX_REC_DISCARD:
		c->st.aborted++;
		/* fall through */
	default: /* PAD */
		c->cursor += OBX_REC_SIZE(w);
		return -1;
	}
}

int ring_next(struct ring_cons *c, struct ring_rec *r, uint64_t now)
{
	unsigned steps;
	int rc = RING_STALLED;

	for (steps = 0; steps < RING_STEPS; steps++) {
		rc = ring_step(c, r, now);
		if (rc >= 0)
			break;
	}
	if (rc == RING_RECORD)
		return rc;
	if (c->npins && ring_pins_visit(c, r, now) == RING_RECORD)
		return RING_RECORD;
	return rc < 0 ? RING_STALLED : rc;   /* out of steps: call again */
}

void ring_unread(struct ring_cons *c, const struct ring_rec *r)
{
	uint32_t i;

	if (r->late) {
		for (i = 0; i < c->npins; i++)
			if (r->pos - c->pins[i].start <
			    c->pins[i].end - c->pins[i].start) {
				c->pins[i].x = r->pos;
				c->st.consumed--;
				c->st.late--;
			}
		return;
	}
	if (r->pos - c->head < c->cursor - c->head) {
		c->cursor = r->pos;
		c->st.consumed--;
	}
}

void ring_release_mark(struct ring_cons *c, struct ring_mark m)
{
	uint64_t upto = m.pos, n, off, wrap;
	uint32_t i, k;

	/* pins parsed to their end, their records covered by m: done */
	for (i = k = 0; i < c->npins; i++) {
		struct ring_pin *p = &c->pins[i];

		if ((int64_t)(p->end - p->x) <= 0 &&
		    (int64_t)(m.seq - p->seq) >= 0)
			continue;
		if (k != i)
			c->pins[k] = *p;
		k++;
	}
	c->npins = k;
	if ((int64_t)(upto - c->cursor) > 0)
		upto = c->cursor;
	if (c->npins && (int64_t)(upto - c->pins[0].start) > 0)
		upto = c->pins[0].start;     /* never past a live claim */
	if ((int64_t)(upto - c->head) <= 0)
		return;
	n = upto - c->head;
	if (n > c->s->g.ring_size)
		n = c->s->g.ring_size;
	/* Clean behind us so that "zero = not written yet" holds on the
	 * next lap. Through the first mapping only (two pieces when it
	 * wraps), so that each byte is written at one address: what
	 * ThreadSanitizer compares. */
	off = c->head & (c->s->g.ring_size - 1);
	wrap = off + n > c->s->g.ring_size ? off + n - c->s->g.ring_size : 0;
	ring_zero(c->s->ring + off, n - wrap);
	if (wrap)
		ring_zero(c->s->ring, wrap);
	c->head = upto;
	/* C4: pairs with the acquire loads of head in P0 and P3 */
	atomic_store_explicit(&c->s->cons->head, upto, memory_order_release);
}

void ring_release(struct ring_cons *c, uint64_t upto)
{
	struct ring_mark m = { upto, c->handed };

	ring_release_mark(c, m);
}

int ring_cons_arm(struct ring_cons *c, uint64_t mark)
{
	uint64_t at = c->cursor + mark;

	/* C5: wake_pos first, then wake = 1 (seq_cst, a release for
	 * wake_pos: a producer that reads this 1 reads this wake_pos or a
	 * later one), then the tail re-read (seq_cst). Dekker with P2/P8:
	 * a claim the re-read misses comes after it in the total order,
	 * so its producer's P8 load sees wake == 1 and, ending past `at`,
	 * wakes us. */
	atomic_store_explicit(&c->s->hdr->wake_pos, at, memory_order_relaxed);
	atomic_store_explicit(&c->s->hdr->wake, 1, memory_order_seq_cst);
	c->tail = ring_tail_acquire(c, 1);
	if ((int64_t)(c->tail - at) > 0) {
		atomic_store_explicit(&c->s->hdr->wake, 0,
				      memory_order_relaxed);
		return 0;
	}
	return 1;
}

void ring_cons_disarm(struct ring_cons *c)
{
	/* awake: producers skip P8 after one load */
	atomic_store_explicit(&c->s->hdr->wake, 0, memory_order_relaxed);
}

int ring_cons_wait(struct ring_cons *c, uint64_t timeout_ns, uint64_t mark)
{
	struct timespec ts = {
		.tv_sec = (time_t)(timeout_ns / 1000000000ull),
		.tv_nsec = (long)(timeout_ns % 1000000000ull),
	};
	int woken = 0;

	if (ring_cons_arm(c, mark)) {
		syscall(SYS_futex, (uint32_t *)&c->s->hdr->wake, FUTEX_WAIT,
			1, &ts, NULL, 0);
		/* a producer's exchange leaves 0; a timeout leaves our 1 */
		woken = atomic_load_explicit(&c->s->hdr->wake,
					     memory_order_relaxed) == 0;
	}
	ring_cons_disarm(c);
	return woken;
}

static void ring_fold_slot(struct ring_cons *c, struct obx_slot *sl)
{
	/* claims that never got a header (the owner died between P1 and
	 * P5; the zero gap was padded without counting), and headers
	 * written but not settled (C3 left those to us) */
	c->st.unblocked += slot_claims_open(sl);
	c->retired_emitted += slot_attempts(sl);
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
			if (!slot_owner_alive(c->s, i))
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

void ring_cons_repair(struct ring_cons *c)
{
	uint32_t i, k;

	atomic_store_explicit(&c->s->cons->head, c->head,
			      memory_order_release);
	/* A slot page that was lost (truncated) reads FREE: an owner that
	 * still holds its lock gets its slot back, its lanes marked taken
	 * (its threads may still be using them; new threads share). */
	for (i = 0; i < c->s->g.nslots; i++) {
		struct obx_slot *sl = &c->s->slots[i];

		if (atomic_load(&sl->state) != OBX_SLOT_FREE ||
		    !slot_owner_alive(c->s, i))
			continue;
		for (k = 0; k < OBX_LANES; k++)
			atomic_store(&sl->lane[k].owner, UINT32_MAX);
		atomic_store(&sl->state, OBX_SLOT_LIVE);
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
		e += slot_attempts(sl);
		f += atomic_load(&sl->drop_full);
		t += atomic_load(&sl->drop_too_large);
		l += atomic_load(&sl->drop_late);
	}
	*emitted = e - c->st.aborted;
	*full = f;
	*too_large = t;
	*late = l;
}
