/* ring.h - the multi-producer single-consumer ring of variable-length
 * records in the shm segment. Protocol, states and memory-ordering pairs
 * are in docs/DESIGN.md ("Ring protocol"); the short version:
 *
 * Producer (any process, any thread, never blocks):
 *   P0  t = tail (relaxed), h = head (acquire)      pre-check the window
 *   P1  lane.busy = 1 (relaxed)  or  slot.reserved += 1 (no lane)
 *   P2  pos = tail.fetch_add(size)    (seq_cst)     the claim; its
 *       release half publishes P1 to whoever sees the new tail (C2)
 *   P3  h = head (acquire); pos+size-h > ring_size  overshoot: abandon
 *   P4  hdr.word = BUSY|size|slot     (relaxed) + release fence
 *   P5  lane.busy = 0 (release)  or  slot.settled += 1   pairs with C2
 *   P6  payload written in place
 *   P7  hdr.len = len; CAS BUSY->COMMIT (seq_cst)   pairs with C1
 *   P8  wake (seq_cst load) == 1 -> xchg 0 -> FUTEX_WAKE   pairs with C5
 *
 * Consumer (the broker, one thread):
 *   C1  w = hdr.word (acquire) at cursor
 *   C2  zero word: tail (seq_cst), then every LIVE slot's lanes' busy and
 *       shared reserved/settled (acquire); no live owner between P1 and
 *       P5 and the word is still zero -> dead or abandoned: PAD the gap
 *   C3  BUSY whose owner is dead -> CAS BUSY->DISCARD (the owner's P7 CAS
 *       then fails and it counts a late drop if it was in fact alive)
 *   C4  after the spool has the records: zero [head, upto) then
 *       head = upto (release), pairs with P0/P3
 *   C5  before sleeping: wake = 1 (seq_cst), re-read tail; pairs with P8
 */
#ifndef OBX_RING_H
#define OBX_RING_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "segment.h"

#define RING_ALIGN(x)  (((x) + 7u) & ~7u)

/* Fault-injection points for the kill tests; compiled in only with
 * -DOBX_FAULT_INJECT (build/liboutbox-fi.a), never in the shipped lib. */
#define OBX_FP_AFTER_ADD     1   /* after P2: claim made, no header */
#define OBX_FP_AFTER_HDR     2   /* after P5: BUSY, no payload */
#define OBX_FP_MID_COPY      3   /* half the payload written */
#define OBX_FP_BEFORE_COMMIT 4   /* payload written, not committed */
#ifdef OBX_FAULT_INJECT
void obx_fault_point(int where);
#define OBX_FAULT(w) obx_fault_point(w)
#else
#define OBX_FAULT(w) do { } while (0)
#endif

struct ring_claim {
	uint64_t pos;
	uint32_t size;          /* reserved bytes, header included */
	uint16_t slot;
	uint8_t *payload;       /* size - OBX_REC_HDR bytes of room */
};

/* Room left in the window for producers; the last eighth of the ring is
 * kept as slack for claims racing past the pre-check (P0..P2). */
static inline uint64_t ring_window(const struct seg *s)
{
	return s->g.ring_size - (s->g.ring_size >> 3);
}

/* P1 / P5 through the thread's lane (plain stores, single writer) or,
 * without one, through the slot's shared counters. */
static inline void ring_claim_begin(struct obx_slot *slot,
				    struct obx_lane *lane)
{
	if (__builtin_expect(lane != NULL, 1)) {
		atomic_store_explicit(&lane->reserved, atomic_load_explicit(
			&lane->reserved, memory_order_relaxed) + 1,
			memory_order_relaxed);
		atomic_store_explicit(&lane->busy, 1, memory_order_relaxed);
	} else {
		atomic_fetch_add_explicit(&slot->reserved, 1,
					  memory_order_relaxed);
	}
}

static inline void ring_claim_end(struct obx_slot *slot,
				  struct obx_lane *lane)
{
	/* release: pairs with the acquire loads in ring.c (C2); the header
	 * store precedes it */
	if (__builtin_expect(lane != NULL, 1))
		atomic_store_explicit(&lane->busy, 0, memory_order_release);
	else
		atomic_fetch_add_explicit(&slot->settled, 1,
					  memory_order_release);
}

/* Claims room for `payload_max` bytes. 0, -EMSGSIZE (counted
 * drop_too_large), or -EAGAIN (ring full, counted drop_full). lane may be
 * NULL (the calling thread has none). */
static inline int ring_reserve(const struct seg *s, struct obx_slot *slot,
			       struct obx_lane *lane, uint16_t sidx,
			       uint32_t payload_max, struct ring_claim *c)
{
	struct obx_shm_hdr *hdr = s->hdr;
	uint64_t t, h, pos;
	uint32_t size;
	struct obx_rec_hdr *rec;

	if (__builtin_expect(payload_max > s->g.max_record, 0)) {
		atomic_fetch_add_explicit(&slot->drop_too_large, 1,
					  memory_order_relaxed);
		return -EMSGSIZE;
	}
	size = RING_ALIGN(OBX_REC_HDR + payload_max);
	/* P0: cheap pre-check; keeps a full ring from pushing tail ahead */
	t = atomic_load_explicit(&hdr->tail, memory_order_relaxed);
	h = atomic_load_explicit(&s->cons->head, memory_order_acquire);
	if (__builtin_expect(t + size - h > ring_window(s), 0))
		goto full;
	/* P1: made visible by the release half of P2 */
	ring_claim_begin(slot, lane);
	/* P2: acq_rel; a consumer that reads this tail (acquire) sees P1 */
	pos = atomic_fetch_add_explicit(&hdr->tail, size,
					memory_order_acq_rel);
	OBX_FAULT(OBX_FP_AFTER_ADD);
	/* P3: never write where the consumer has not cleaned yet. Pairs
	 * with the head store-release in ring_release(). */
	h = atomic_load_explicit(&s->cons->head, memory_order_acquire);
	if (__builtin_expect(pos + size - h > s->g.ring_size, 0)) {
		atomic_fetch_add_explicit(&slot->overshoot, 1,
					  memory_order_relaxed);
		ring_claim_end(slot, lane);
		goto full;
	}
	rec = seg_rec(s, pos);
	/* P4: the header precedes every payload byte (the consumer's zero
	 * gap scan relies on a headerless claim having an all-zero body). */
	atomic_store_explicit(&rec->word, OBX_REC_WORD(size, sidx,
			      OBX_REC_BUSY), memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	/* P5 */
	ring_claim_end(slot, lane);
	OBX_FAULT(OBX_FP_AFTER_HDR);
	c->pos = pos;
	c->size = size;
	c->slot = sidx;
	c->payload = (uint8_t *)rec + OBX_REC_HDR;
	return 0;
full:
	atomic_fetch_add_explicit(&slot->drop_full, 1, memory_order_relaxed);
	return -EAGAIN;
}

/* P8: wake a sleeping consumer; no syscall while it is awake. */
static inline void ring_producer_kick(const struct seg *s)
{
	_Atomic uint32_t *w = &s->hdr->wake;

	if (__builtin_expect(atomic_load_explicit(w, memory_order_seq_cst) !=
			     0, 0) &&
	    atomic_exchange_explicit(w, 0, memory_order_seq_cst) != 0)
		syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, 1, NULL, NULL,
			0);
}

/* Publishes the record. 0, or -ETIMEDOUT when the broker unblocked the
 * record meanwhile (counted drop_late: the payload is not delivered). */
static inline int ring_commit(const struct seg *s, struct obx_slot *slot,
			      const struct ring_claim *c, uint32_t len,
			      uint32_t flags)
{
	struct obx_rec_hdr *rec = seg_rec(s, c->pos);
	uint64_t busy = OBX_REC_WORD(c->size, c->slot, OBX_REC_BUSY);

	OBX_FAULT(OBX_FP_BEFORE_COMMIT);
	rec->len = len;
	rec->flags = flags;
	/* P7: release of len/flags/payload; seq_cst so that the wake load
	 * in ring_producer_kick() cannot pass it (pairs with C5). */
	if (__builtin_expect(!atomic_compare_exchange_strong_explicit(
			&rec->word, &busy,
			OBX_REC_WORD(c->size, c->slot, OBX_REC_COMMIT),
			memory_order_seq_cst, memory_order_relaxed), 0)) {
		atomic_fetch_add_explicit(&slot->drop_late, 1,
					  memory_order_relaxed);
		return -ETIMEDOUT;
	}
	ring_producer_kick(s);
	return 0;
}

/* Gives the claim up: the consumer skips it. Counted as aborted. */
static inline void ring_abort(const struct seg *s, struct obx_slot *slot,
			      const struct ring_claim *c)
{
	struct obx_rec_hdr *rec = seg_rec(s, c->pos);
	uint64_t busy = OBX_REC_WORD(c->size, c->slot, OBX_REC_BUSY);

	atomic_fetch_add_explicit(&slot->aborted, 1, memory_order_relaxed);
	if (atomic_compare_exchange_strong_explicit(&rec->word, &busy,
			OBX_REC_WORD(c->size, c->slot, OBX_REC_DISCARD),
			memory_order_release, memory_order_relaxed))
		ring_producer_kick(s);
}

/* ---- consumer ---------------------------------------------------------- */

struct ring_rec {
	uint64_t pos;
	const uint8_t *payload;
	uint32_t len;
	uint32_t flags;
	uint16_t slot;
};

struct ring_cstats {
	uint64_t consumed;      /* committed records handed out */
	uint64_t unblocked;     /* records recovered from dead producers */
	uint64_t damaged;       /* garbage headers skipped (8-byte steps) */
	uint64_t timeouts;      /* live-owner stalls ended by the timeout */
	uint64_t gaps;          /* zero gaps padded */
	uint64_t bad_len;       /* committed records with an impossible len */
	uint64_t tail_repairs;  /* tail found behind the cursor */
};

struct ring_cons {
	struct seg *s;
	uint64_t cursor;        /* next record to read */
	uint64_t head;          /* published head: everything before is
	                         * cleaned and reusable */
	uint64_t tail;          /* last tail read */
	uint64_t stall_pos;     /* record position we are stuck on */
	uint64_t stall_since;   /* CLOCK_MONOTONIC ns */
	uint64_t last_check;    /* last liveness check during the stall */
	uint64_t stall_timeout; /* live-owner fallback, default 10 s */
	uint64_t *dead_tail;    /* per slot, broker private */
	struct ring_cstats st;
	/* folded from reaped slots */
	uint64_t retired_emitted, retired_full, retired_too_large,
		 retired_late;
};

#define RING_EMPTY    0
#define RING_RECORD   1
#define RING_STALLED  2

/* Starts consuming at the published head (re-attach resumes there). */
int ring_cons_init(struct ring_cons *c, struct seg *s);
void ring_cons_fini(struct ring_cons *c);

/* Next committed record at the cursor, or RING_EMPTY / RING_STALLED.
 * Skips discarded and padded records, recovers dead producers, counts
 * damage; never reads outside the mapping. The record stays valid until
 * ring_release() passes it. now = CLOCK_MONOTONIC ns. */
int ring_next(struct ring_cons *c, struct ring_rec *r, uint64_t now);

/* Puts the record last returned back: the next ring_next() returns it
 * again (the broker could not take it, e.g. the spool is stalled). */
void ring_unread(struct ring_cons *c, const struct ring_rec *r);

/* Cleans [head, upto) and publishes head = upto (C4). upto <= cursor. */
void ring_release(struct ring_cons *c, uint64_t upto);

/* C5: arm the wake word; returns 1 when the ring is still empty and the
 * caller may sleep on &hdr->wake == 1, 0 when it must consume instead. */
int ring_cons_arm(struct ring_cons *c);
void ring_cons_disarm(struct ring_cons *c);

/* Plain futex sleep for consumers without a reactor (tests, bench). */
void ring_cons_wait(struct ring_cons *c, uint64_t timeout_ns);

/* Liveness sweep: marks dead owners, frees slots whose records are all
 * behind head, folds their counters. Call about once per 100 ms. */
void ring_reap(struct ring_cons *c);

/* Totals across live and retired slots. */
void ring_totals(const struct ring_cons *c, uint64_t *emitted,
		 uint64_t *full, uint64_t *too_large, uint64_t *late);

#endif
