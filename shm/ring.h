/* ring.h - the multi-producer single-consumer ring of variable-length
 * records in the shm segment. Protocol, states and memory-ordering pairs
 * are in docs/DESIGN.md ("Ring protocol"); the short version:
 *
 * Producer (any process, any thread, never blocks):
 *   P0  t = tail (relaxed), h = head (acquire); signed t+size-h > window
 *       -> full (a stale t only underestimates the fill)
 *   P1  lane.claim += 3 (claims+1, busy; one instruction) if the lane is
 *       not already busy (a signal handler inside P1..P5), else
 *       slot.reserved += 1 (fetch_add)
 *   P2  pos = tail.fetch_add(size)    (seq_cst)     the claim; publishes
 *       P1 to whoever reads this tail (C2); lane.pos = pos, lane.pos_n =
 *       the claim's number (release): where a stalled claim is
 *   P3  h = head (acquire); pos-h > ring_size-size or pos misaligned
 *       -> abandon: take P1 back (lane.claim -= 3 / reserved -= 1)
 *   P4  hdr.flags = lane; hdr.word = BUSY|size|slot (release)
 *   P5  lane.claim -= 1 (release)  or  slot.settled += 1 (release);
 *       then a release fence: P5 is visible before any payload byte
 *   P6  payload written in place
 *   P7  hdr.len = len; CAS BUSY->COMMIT (release)   pairs with C1
 *   P8  wake (seq_cst load) == 1 and pos + size past wake_pos -> xchg 0
 *       -> FUTEX_WAKE   pairs with C5 (through P2)
 *
 * Consumer (the broker, one thread):
 *   C1  w = hdr.word (acquire) at cursor; never reads at or beyond
 *       head + ring_size (that memory is the previous lap)
 *   C2  zero word: tail (seq_cst), then a snapshot of every claimer
 *       between P1 and P5 (acquire); once each has moved on or died, a
 *       still-zero word is dead or abandoned: PAD the gap. A claimer that
 *       does not move on (stopped, preempted) has its gap pinned and the
 *       cursor goes past it.
 *   C3  BUSY: owner dead -> CAS BUSY->PAD; owner alive for longer than
 *       skip_ns -> pinned, the cursor goes past it. A pinned claim keeps
 *       head from passing it for as long as its owner lives.
 *   C4  after the spool has the records: zero [head, upto) then
 *       head = upto (release), upto never past a pinned claim; pairs
 *       with P0/P3
 *   C5  before sleeping: wake_pos = cursor + mark, wake = 1 (seq_cst),
 *       re-read tail (seq_cst); past wake_pos -> do not sleep. Pairs with
 *       P2/P8. Otherwise the broker looks every drain_latency.
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

/* of the argument's own width: ~7u alone would clear the high half of
 * a 64-bit position */
#define RING_ALIGN(x)  (((x) + 7u) & ~(__typeof__((x) + 7u))7u)

/* Fault-injection points for the kill tests; compiled in only with
 * -DOBX_FAULT_INJECT (build/liboutbox-fi.a), never in the shipped lib. */
#define OBX_FP_AFTER_ADD     1   /* after P2: claim made, no header */
#define OBX_FP_AFTER_HDR     2   /* after P5: BUSY, no payload */
#define OBX_FP_MID_COPY      3   /* half the payload written */
#define OBX_FP_BEFORE_COMMIT 4   /* payload written, not committed */
#define OBX_FP_WINDOW        5   /* P0: between the tail and head loads */
#define OBX_FP_CLAIM_MID     6   /* after P1, before P2 */
#define OBX_FP_BEFORE_SETTLE 7   /* P4 done (header BUSY), P5 not yet */
#define OBX_FP_N             8
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

/* The lane's claim word takes one add per step. It has one writer, the
 * lane's thread, so the add need not be atomic between CPUs, only
 * indivisible for a signal handler on that thread: one non-locked x86
 * instruction (a store, so release under x86-TSO). The C11 fallback
 * (other CPUs, OBX_NO_ASM for ThreadSanitizer) is a fetch_add. The
 * "memory" clobber keeps the compiler from moving stores across it. */
static inline void ring_lane_add(_Atomic uint64_t *w, int64_t v)
{
#if defined(__x86_64__) && !defined(OBX_NO_ASM)
	__asm__ volatile("addq %1, %0" : "+m"(*(uint64_t *)w) : "er"(v) :
			 "memory");
#else
	atomic_fetch_add_explicit(w, (uint64_t)v, memory_order_release);
#endif
}

/* P1: opens the claim window on the thread's lane; returns its claim
 * word while this claim is open (odd). 0 when the lane is already inside
 * P1..P5 (this is a signal handler that interrupted its thread there):
 * the caller then uses the shared counters. If a handler runs between the
 * load and the add, it completes its own P1..P5 (+3, -1) before the add:
 * the count stays right. */
static inline uint64_t ring_lane_open(struct obx_lane *lane)
{
	uint64_t w = atomic_load_explicit(&lane->claim, memory_order_relaxed);

	if (w & OBX_LANE_BUSY)
		return 0;
	ring_lane_add(&lane->claim, 3);
	return w + 3;
}

/* Claims room for `payload_max` bytes. 0, -EMSGSIZE (counted
 * drop_too_large), or -EAGAIN (ring full, counted drop_full). lane may be
 * NULL (the calling thread has none). */
static inline int ring_reserve(const struct seg *s, struct obx_slot *slot,
			       struct obx_lane *lane, uint16_t sidx,
			       uint32_t payload_max, struct ring_claim *c)
{
	struct obx_shm_hdr *hdr = s->hdr;
	uint64_t t, h, pos, n = 0;
	uint32_t size;
	struct obx_rec_hdr *rec;

	if (__builtin_expect(payload_max > s->g.max_record, 0)) {
		atomic_fetch_add_explicit(&slot->drop_too_large, 1,
					  memory_order_relaxed);
		return -EMSGSIZE;
	}
	size = RING_ALIGN(OBX_REC_HDR + payload_max);
	/* P0: cheap pre-check; keeps a full ring from pushing tail ahead.
	 * A thread preempted between the loads sees a head newer than its
	 * tail: the difference is negative (not full), never a wrapped
	 * huge value. P3 is what guarantees room. */
	t = atomic_load_explicit(&hdr->tail, memory_order_relaxed);
	OBX_FAULT(OBX_FP_WINDOW);
	h = atomic_load_explicit(&s->cons->head, memory_order_acquire);
	if (__builtin_expect((int64_t)(t + size - h) >
			     (int64_t)ring_window(s), 0))
		goto full;
	/* P1: made visible by the release of P2 */
	if (lane && !(n = ring_lane_open(lane)))
		lane = NULL;
	if (!lane)
		atomic_fetch_add_explicit(&slot->reserved, 1,
					  memory_order_relaxed);
	OBX_FAULT(OBX_FP_CLAIM_MID);
	/* P2: seq_cst. It publishes P1 to a consumer that reads this tail
	 * (C2, acquire), and it is this producer's half of the wake-up
	 * Dekker pair (P8 with C5): the claim and the broker's wake = 1
	 * are ordered in one total order with both re-reads. On x86 every
	 * locked RMW is a full barrier anyway: the same instruction as a
	 * release. A head read early by P3 is only older, i.e. more likely
	 * to abandon. */
	pos = atomic_fetch_add_explicit(&hdr->tail, size,
					memory_order_seq_cst);
	/* where the claim with claim word n is, for the consumer (C2/C3):
	 * pos before pos_n */
	if (lane) {
		atomic_store_explicit(&lane->pos, pos, memory_order_relaxed);
		atomic_store_explicit(&lane->pos_n, n, memory_order_release);
	}
	OBX_FAULT(OBX_FP_AFTER_ADD);
	/* P3: never write where the consumer has not cleaned yet, nor
	 * behind head, nor at a misaligned position (a damaged tail: then
	 * pos << 61 is at least 2^61, beyond any ring size). Pairs
	 * with the head store-release in ring_release(). */
	h = atomic_load_explicit(&s->cons->head, memory_order_acquire);
	if (__builtin_expect(((pos - h) | (pos << 61)) >
			     s->g.ring_size - size, 0)) {
		/* abandoned: the claim is taken back in one step, so this
		 * attempt counts once, as the drop below */
		if (lane)
			ring_lane_add(&lane->claim, -3);
		else
			atomic_fetch_sub_explicit(&slot->reserved, 1,
						  memory_order_release);
		goto full;
	}
	rec = seg_rec(s, pos);
	/* P4: the header precedes every payload byte (the consumer's zero
	 * gap scan relies on a headerless claim having an all-zero body);
	 * flags (the lane) are visible with it. */
	rec->flags = lane ? lane->flags : 0;
	atomic_store_explicit(&rec->word, OBX_REC_WORD(size, sidx,
			      OBX_REC_BUSY), memory_order_release);
	OBX_FAULT(OBX_FP_BEFORE_SETTLE);
	/* P5: release, pairs with the consumer's acquire loads (C2); the
	 * fence after it orders it before the payload stores, which the
	 * consumer relies on when it checks a stalled claimer has not
	 * moved while it scanned (compiles to nothing on x86). */
	if (lane)
		ring_lane_add(&lane->claim, -1);
	else
		atomic_fetch_add_explicit(&slot->settled, 1,
					  memory_order_release);
	atomic_thread_fence(memory_order_release);
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

/* P8: wake the consumer only when it sleeps (wake == 1) and this claim
 * ends past the position it asked to be woken at (wake_pos: its cursor
 * plus the fill mark, or its cursor when it asked for the first record).
 * Otherwise it looks on its own schedule, within drain_latency. While
 * wake reads 0 or the claim is below the mark: two loads of a line the
 * broker writes only when it falls asleep or wakes, no store, no
 * syscall. end = the claim's pos + size. */
static inline void ring_producer_kick(const struct seg *s, uint64_t end)
{
	struct obx_shm_hdr *h = s->hdr;

	/* seq_cst: the Dekker pair with C5. Our claim (P2, seq_cst RMW on
	 * tail) precedes this load in the single total order; the broker's
	 * wake = 1 store precedes its tail re-read. So either it saw our
	 * tail or we see its 1. Also acquire: wake_pos below is the one
	 * stored before that 1. */
	if (__builtin_expect(atomic_load_explicit(&h->wake,
			memory_order_seq_cst) == 0, 1))
		return;
	if ((int64_t)(end - atomic_load_explicit(&h->wake_pos,
			memory_order_relaxed)) <= 0)
		return;
	/* one producer wins the 1 and makes the one syscall */
	if (atomic_exchange_explicit(&h->wake, 0, memory_order_seq_cst) != 0)
		syscall(SYS_futex, (uint32_t *)&h->wake, FUTEX_WAKE, 1, NULL,
			NULL, 0);
}

/* Publishes the record. 0, or -ETIMEDOUT when the header is no longer
 * ours (the broker judged the owner dead, or a hostile writer): counted
 * drop_late, the payload is not delivered. */
static inline int ring_commit(const struct seg *s, struct obx_slot *slot,
			      const struct ring_claim *c, uint32_t len)
{
	struct obx_rec_hdr *rec = seg_rec(s, c->pos);
	uint64_t busy = OBX_REC_WORD(c->size, c->slot, OBX_REC_BUSY);

	OBX_FAULT(OBX_FP_BEFORE_COMMIT);
	rec->len = len;
	/* P7: release of len/payload, pairs with C1. The wake-up needs
	 * no order from it (the Dekker pair is P2/C5): a broker woken
	 * before the commit is visible finds BUSY and looks again 1 ms
	 * later. */
	if (__builtin_expect(!atomic_compare_exchange_strong_explicit(
			&rec->word, &busy,
			OBX_REC_WORD(c->size, c->slot, OBX_REC_COMMIT),
			memory_order_release, memory_order_relaxed), 0)) {
		atomic_fetch_add_explicit(&slot->drop_late, 1,
					  memory_order_relaxed);
		return -ETIMEDOUT;
	}
	ring_producer_kick(s, c->pos + c->size);
	return 0;
}

/* Gives the claim up: the consumer skips it (and counts it aborted). */
static inline void ring_abort(const struct seg *s, struct obx_slot *slot,
			      const struct ring_claim *c)
{
	struct obx_rec_hdr *rec = seg_rec(s, c->pos);
	uint64_t busy = OBX_REC_WORD(c->size, c->slot, OBX_REC_BUSY);

	if (atomic_compare_exchange_strong_explicit(&rec->word, &busy,
			OBX_REC_WORD(c->size, c->slot, OBX_REC_DISCARD),
			memory_order_release, memory_order_relaxed))
		ring_producer_kick(s, c->pos + c->size);
	atomic_fetch_add_explicit(&slot->aborted, 1, memory_order_relaxed);
}

/* ---- consumer ---------------------------------------------------------- */

struct ring_rec {
	uint64_t pos;
	const uint8_t *payload;
	uint32_t len;
	uint32_t flags;
	uint16_t slot;
	uint8_t late;           /* from a pinned claim, behind the cursor */
};

struct ring_cstats {
	uint64_t consumed;      /* committed records handed out */
	uint64_t unblocked;     /* records recovered from dead producers */
	uint64_t damaged;       /* garbage headers skipped (8-byte steps) */
	uint64_t gaps;          /* zero gaps padded */
	uint64_t bad_len;       /* committed records with an impossible len */
	uint64_t tail_repairs;  /* tail behind the cursor, misaligned, or
	                         * beyond head + ring_size: put back */
	uint64_t aborted;       /* DISCARD records skipped */
	uint64_t skips;         /* live claims the cursor went past */
	uint64_t late;          /* records delivered from pinned claims */
	uint64_t stalls;        /* live claims held past stall_timeout */
	uint64_t stall_kills;   /* their owners SIGKILLed (stall_kill) */
};

/* A claimer seen between P1 and P5 (C2). */
struct ring_who {
	uint32_t slot;
	int32_t lane;           /* -1: the slot's shared counters */
	uint64_t val;           /* lane: its claim word; shared: settled */
};

/* A claim that holds the ring up: since when, when its owner's liveness
 * was last checked, whether its stall was counted. */
struct ring_wait {
	uint64_t pos;
	uint64_t since;
	uint64_t checked;
	int counted;
};

#define RING_PINS      32
#define RING_PIN_WHO   8

/* A pinned claim: [start, end) may not be handed back to producers while
 * its owner lives. x is where parsing it resumes; seq the hand-out number
 * of the last record delivered from it (it stays pinned until a release
 * covers that). who: the stalled claimers of a pinned zero gap. */
struct ring_pin {
	uint64_t start, x, end, seq;
	struct ring_wait w;
	uint32_t nwho;
	struct ring_who who[RING_PIN_WHO];
};

/* What a stall callback is told. */
struct ring_stall_info {
	uint32_t slot;
	uint32_t pid;           /* as the slot says (its own namespace's) */
	uint64_t held_ns;
	int killed;             /* 1 SIGKILLed, 0 not asked, -errno failed */
};

struct ring_cons {
	struct seg *s;
	uint64_t cursor;        /* next record to read */
	uint64_t head;          /* published head: everything before is
	                         * cleaned and reusable */
	uint64_t tail;          /* last tail read */
	uint64_t handed;        /* records handed out so far (their seq) */
	uint64_t skip_ns;       /* a live claim holds the cursor this long
	                         * before it is pinned and gone past (2 ms) */
	uint64_t stall_timeout; /* a live claim held this long is counted
	                         * and reported (default 10 s) */
	int stall_kill;         /* and its owner SIGKILLed (same uid only) */
	void (*on_stall)(void *arg, const struct ring_stall_info *si);
	void *stall_arg;
	uint64_t *dead_tail;    /* per slot, broker private */
	/* the zero gap at the cursor: tail and claimers seen when found */
	int gap_on;
	uint64_t gap_tail;
	uint32_t gap_nwho, gap_cap;
	struct ring_who *gap_who;
	uint64_t gap_scan_at, gap_scan;     /* the gap's end found from */
	uint32_t gap_scan_who;              /* there, with that many left */
	struct ring_wait wait;  /* the claim at the cursor, while it waits */
	uint32_t npins;
	struct ring_pin pins[RING_PINS];    /* in position order */
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

/* Next committed record, or RING_EMPTY / RING_STALLED. Skips discarded
 * and padded records, recovers dead producers, goes past live stalled
 * claims (pinning them), counts damage; never reads outside the mapping
 * nor the previous lap; bounded work per call (RING_STALLED when the
 * budget ran out: call again). The record stays valid until a release
 * covers it. now = CLOCK_MONOTONIC ns. */
int ring_next(struct ring_cons *c, struct ring_rec *r, uint64_t now);

/* Puts the record last returned back: the next ring_next() returns it
 * again (the broker could not take it, e.g. the spool is stalled). */
void ring_unread(struct ring_cons *c, const struct ring_rec *r);

/* What has been handed out so far, for a release once it is durable. */
struct ring_mark {
	uint64_t pos;           /* the cursor */
	uint64_t seq;           /* records handed out */
};

static inline struct ring_mark ring_mark(const struct ring_cons *c)
{
	struct ring_mark m = { c->cursor, c->handed };

	return m;
}

/* Every record handed out up to mark m is taken care of: cleans up to
 * m.pos (never past a pinned claim still in use) and publishes head (C4).
 * ring_release(c, upto) is the same with everything handed out so far. */
void ring_release_mark(struct ring_cons *c, struct ring_mark m);
void ring_release(struct ring_cons *c, uint64_t upto);

/* Everything before this position was handed out or skipped: the cursor,
 * or the oldest pinned claim (not yet handed out). What a restarted
 * broker may pass over. */
static inline uint64_t ring_cons_safe_pos(const struct ring_cons *c)
{
	if (c->npins && (int64_t)(c->cursor - c->pins[0].start) > 0)
		return c->pins[0].start;
	return c->cursor;
}

/* 1 while pinned claims wait: the caller must come back (poll), not only
 * sleep until a producer wakes it. */
static inline int ring_cons_pinned(const struct ring_cons *c)
{
	return c->npins != 0;
}

/* C5: arm the wake word for a sleep that producers end only with a
 * claim past cursor + mark (mark 0: the first record). Returns 1 when
 * the caller may sleep on &hdr->wake == 1, 0 when the ring already
 * holds that much and it must consume instead (disarmed then). */
int ring_cons_arm(struct ring_cons *c, uint64_t mark);
void ring_cons_disarm(struct ring_cons *c);

/* Plain futex sleep for consumers without a reactor (tests, bench):
 * until timeout_ns, or until a producer's claim passes cursor + mark.
 * 1 when a producer's wake ended it. */
int ring_cons_wait(struct ring_cons *c, uint64_t timeout_ns, uint64_t mark);

/* Liveness sweep: marks dead owners, frees slots whose records are all
 * behind head, folds their counters. Call about once per 100 ms. */
void ring_reap(struct ring_cons *c);

/* After the segment was repaired in place (seg_check): publishes head
 * again and gives back LIVE to slots whose owner still holds its lock. */
void ring_cons_repair(struct ring_cons *c);

/* Totals across live and retired slots; emitted excludes aborts. */
void ring_totals(const struct ring_cons *c, uint64_t *emitted,
		 uint64_t *full, uint64_t *too_large, uint64_t *late);

#endif
