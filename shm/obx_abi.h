/* obx_abi.h - the shared-memory ABI of outbox, defined once.
 *
 * One POSIX shm object (/dev/shm/<name>) holds, page aligned:
 *
 *   page 0          struct obx_shm_hdr: geometry (written once by the broker
 *                   at creation, never trusted back from shm afterwards),
 *                   then the producer line (tail) and the wake line.
 *   page 1          struct obx_consumer_page: head and broker identity.
 *                   Written by the broker only; producers map it read-only.
 *   slots_off       nslots x struct obx_slot (one per producer process).
 *                   Each slot is written by its owner process, except
 *                   `state` transitions to DEAD/FREE, which the broker
 *                   writes. A producer holds an OFD write lock on the
 *                   first byte of its slot (OBX_SLOT_LOCK_OFF) on its own
 *                   open file description for as long as it owns the
 *                   slot: the kernel's record of its liveness.
 *   stats_off       struct obx_stats_page: broker-written counters.
 *                   Producers map it read-only.
 *   sinks_off       struct obx_sink_page: sink names and delivery state,
 *                   broker-written; producers map it read-only.
 *   ring_off        ring_size bytes of records, mapped twice back to back
 *                   so that no record ever wraps.
 *
 * Who writes which word:
 *   tail            producers, by atomic fetch_add only
 *   wake            the broker sets it to 1 before a sleep it wants to be
 *                   woken from, 0 when awake; a producer whose claim ends
 *                   past wake_pos while it reads 1 exchanges it to 0 and
 *                   issues FUTEX_WAKE
 *   wake_pos        the broker only, before it sets wake = 1: the ring
 *                   position past which a claim wakes it (its cursor plus
 *                   the fill mark; the cursor itself when it asks for the
 *                   first record)
 *   head            the broker only (store-release)
 *   record headers  producers (0 -> BUSY, BUSY -> COMMIT|DISCARD by CAS); the
 *                   broker (BUSY -> PAD by CAS for dead owners, zero gap
 *                   -> PAD, and back to 0 when it cleans behind itself)
 *
 * All integers are little-endian host order, fixed width. A change of any
 * struct below bumps OBX_ABI_VERSION.
 */
#ifndef OBX_ABI_H
#define OBX_ABI_H

#include <stdint.h>
#include <stdatomic.h>

#define OBX_MAGIC        0x3130584f4254554fULL /* "OUTBOX01" */
#define OBX_ABI_VERSION  3u
#define OBX_CACHELINE    64u
#define OBX_PAGE         4096u

#define OBX_NAME_MAX     48u   /* sink names, NUL included */
#define OBX_MAX_SINKS    64u
#define OBX_MAX_CATS     8u    /* rate-limited categories per sink */
#define OBX_CAT_MAX      24u

/* ---- record header (16 bytes, 8-byte aligned, in the ring) -------------
 *
 * word, an _Atomic uint64_t:
 *   bits  0..31  reserved size of the record in bytes, header included,
 *                a multiple of 8 (valid in every non-zero state)
 *   bits 32..47  producer slot index (owner)
 *   bits 48..55  state: BUSY, COMMIT, DISCARD, PAD
 *   bits 56..63  OBX_REC_MARK, so a stray zero-free word is unlikely valid
 * len: payload bytes actually used (<= size - 16), written before COMMIT.
 *
 * States of one record position, in order:
 *   0                 claimed by fetch_add on tail, header not written yet
 *                     (or never claimed: the consumer cleans behind itself)
 *   BUSY              owner is writing the payload
 *   COMMIT            payload complete (CAS BUSY->COMMIT, release)
 *   DISCARD           aborted by its owner (CAS BUSY->DISCARD)
 *   PAD               broker-written over a zero gap whose owner is gone,
 *                     or over a dead owner's BUSY record (CAS BUSY->PAD)
 *   0 again           the broker zeroes consumed space before moving head
 */
struct obx_rec_hdr {
	_Atomic uint64_t word;
	uint32_t len;
	uint32_t flags;             /* OBX_REC_F_*, written before word */
};

/* flags: the lane the record was claimed through (its index + 1; 0 = the
 * slot's shared counters). Lets the broker tell, for a dead owner's BUSY
 * record, whether that claim is the lane's open one (see ring.c, C3). */
#define OBX_REC_F_LANE     0xffu

#define OBX_REC_HDR        16u
#define OBX_REC_MARK       0x0bu
#define OBX_REC_BUSY       1u
#define OBX_REC_COMMIT     2u
#define OBX_REC_DISCARD    3u
#define OBX_REC_PAD        4u

#define OBX_REC_WORD(size, slot, st) \
	((uint64_t)(uint32_t)(size) | ((uint64_t)(uint16_t)(slot) << 32) | \
	 ((uint64_t)(uint8_t)(st) << 48) | ((uint64_t)OBX_REC_MARK << 56))
#define OBX_REC_SIZE(w)    ((uint32_t)(w))
#define OBX_REC_SLOT(w)    ((uint16_t)((w) >> 32))
#define OBX_REC_STATE(w)   ((uint8_t)((w) >> 48))
#define OBX_REC_MARKOK(w)  ((uint8_t)((w) >> 56) == OBX_REC_MARK)

/* ---- page 0: geometry + producer lines --------------------------------- */
struct obx_shm_hdr {
	uint64_t magic;
	uint32_t abi_version;
	uint32_t page_size;
	uint64_t total_size;        /* bytes of the shm object */
	uint64_t ring_off;          /* page aligned */
	uint64_t ring_size;         /* power of two, >= 64 KiB */
	uint32_t max_record;        /* max payload bytes of one record */
	uint32_t nslots;
	uint64_t slots_off;
	uint64_t stats_off;
	uint64_t sinks_off;
	uint64_t segment_id;        /* random, per creation: event-id prefix */
	uint64_t created_ns;        /* CLOCK_REALTIME at creation */

	/* producer line: written by every producer (fetch_add) */
	_Alignas(OBX_CACHELINE) _Atomic uint64_t tail;

	/* wake line, broker-written only when it goes to sleep or wakes:
	 * wake is the futex word (1 = asleep and willing to be woken),
	 * wake_pos the position a claim must end past to wake it (ABI 3).
	 * Pairs ring_cons_arm() (C5) with ring_producer_kick() (P8). */
	_Alignas(OBX_CACHELINE) _Atomic uint32_t wake;
	uint32_t wake_pad;
	_Atomic uint64_t wake_pos;
	_Alignas(OBX_CACHELINE) uint8_t end[1];
};

/* ---- page 1: consumer page (broker-written, read-only to producers) ---- */
struct obx_consumer_page {
	_Atomic uint64_t head;      /* store-release after cleaning */
	uint8_t  pad0[OBX_CACHELINE - 8];
	_Alignas(OBX_CACHELINE) _Atomic uint32_t broker_pid;
	uint32_t pad1;
	_Atomic uint64_t broker_start;   /* /proc starttime of broker_pid */
	_Atomic uint64_t broker_beat_ns; /* CLOCK_REALTIME, every second */
	_Atomic uint64_t broker_boot_ns; /* when this broker started */
	_Atomic uint64_t config_gen;     /* bumps on every (re)load */
};

/* ---- producer registry ------------------------------------------------- */
#define OBX_SLOT_FREE   0u
#define OBX_SLOT_LIVE   1u
#define OBX_SLOT_DEAD   2u   /* owner gone; broker frees it once head has
                              * passed dead_tail */

#define OBX_LANES       4u

/* A lane is one thread's claim window marker. A thread of the owner
 * process takes a free lane once (CAS on owner) and from then on is its
 * only writer: it updates `claim` with one non-locked add per step (one
 * instruction, so a signal handler cannot split it), no locked
 * instruction on the emit path. Threads beyond OBX_LANES, and a signal
 * handler that interrupts its thread inside P1..P5, use the slot's
 * shared counters (fetch_add). */
struct obx_lane {
	_Atomic uint32_t owner;     /* 0 free, else a thread token */
	uint32_t flags;             /* this lane's OBX_REC_F_LANE value (its
	                             * index + 1), set when it is taken */
	_Atomic uint64_t claim;     /* claims made << 1 | busy (P1..P5) */
	_Atomic uint64_t pos;       /* ring position of the claim whose claim */
	_Atomic uint64_t pos_n;     /* word (busy) is pos_n; both stored right
	                             * after P2 */
	uint8_t  pad[OBX_CACHELINE - 32];
};

#define OBX_LANE_BUSY      1ull
#define OBX_LANE_CLAIMS(w) ((w) >> 1)

/* The byte each slot's owner keeps OFD-write-locked on the shm object. */
#define OBX_SLOT_LOCK_OFF(slots_off, i) \
	((slots_off) + (uint64_t)(i) * sizeof(struct obx_slot))

struct obx_slot {
	/* line 0: identity, and the shared claim counters for threads
	 * without a lane: reserved - settled = their claims whose header
	 * is not written yet (reserved++ before the tail fetch_add,
	 * settled++ after the header store; an abandoned claim takes its
	 * reserved++ back). */
	_Atomic uint32_t state;     /* FREE -CAS(producer)-> LIVE -(broker)->
	                             * DEAD -(broker)-> FREE */
	_Atomic uint32_t pid;
	_Atomic uint64_t start;     /* /proc/<pid>/stat starttime, 0 = unknown */
	_Atomic uint64_t reserved;
	_Atomic uint64_t settled;
	uint8_t  pad0[OBX_CACHELINE - 32];
	/* line 1: rare paths only (drops, aborts) */
	_Alignas(OBX_CACHELINE) _Atomic uint64_t drop_full;
	_Atomic uint64_t drop_too_large;
	_Atomic uint64_t drop_late;  /* commit found its record unblocked */
	_Atomic uint64_t aborted;    /* obx_abort(): never emitted */
	uint8_t  pad1[OBX_CACHELINE - 32];
	struct obx_lane lane[OBX_LANES];
};

/* Emit attempts of one slot = reserved + sum(lane claims) + drop_full
 * + drop_too_large; the process's own `emitted` subtracts its aborted.
 * The broker's global `emitted` subtracts the DISCARD records it skipped
 * instead (ring_aborted): that count cannot be torn by a SIGKILL between
 * the abort's CAS and a counter increment. */

/* ---- stats page (broker-written) --------------------------------------- */
struct obx_stats {
	uint64_t emitted;            /* live slots + retired */
	uint64_t dropped_ring_full;
	uint64_t dropped_too_large;
	uint64_t dropped_late;       /* commit after the broker unblocked it */
	uint64_t dropped_invalid;    /* not a valid envelope */
	uint64_t ring_unblocked;     /* records recovered from dead producers */
	uint64_t ring_damaged;       /* garbage words skipped */
	uint64_t ring_stalls;        /* live claims held past stall_timeout */
	uint64_t consumed;
	uint64_t spool_bytes;
	uint64_t spool_segments;
	uint64_t dropped_spool_full;
	uint64_t dropped_spool_error;
	uint64_t spool_corrupt;
	uint64_t unknown_sink;       /* routed to the default sink */
	uint64_t ring_aborted;       /* DISCARD records skipped (aborts) */
	uint64_t tail_repairs;       /* hostile tail put back in range */
	uint64_t ring_skips;         /* live claims the cursor went past */
	uint64_t ring_stall_kills;   /* owners SIGKILLed (stall_action) */
	uint64_t segment_repairs;    /* object resized / header rewritten */
	uint64_t segments_replaced;  /* damaged or foreign objects moved
	                              * aside at start */
	/* broker state that must survive a broker restart */
	uint64_t retired_emitted, retired_full, retired_too_large,
		 retired_late, ring_gaps;
	/* appended (issue 13): spool */
	uint64_t redelivered;        /* sent again after a broker restart */
	uint64_t spool_disk_free;    /* gauge: bytes free for the spool */
	uint64_t spool_write_errors; /* failed spool writes (this broker) */
	/* appended (issue 17): how the broker came to look at the ring
	 * (this broker) */
	uint64_t wakeups;            /* woken by a producer (futex) */
	uint64_t drain_looks;        /* ring looks on its own schedule */
	uint64_t spool_flushes;      /* spool flushes started (this broker) */
	uint64_t timer_wakeups;      /* sleeps ended by the broker's own
	                              * timer, no completion (this broker) */
	uint64_t reserved[5];
};

struct obx_stats_page {
	_Atomic uint64_t seq;        /* seqlock: odd while the broker writes */
	uint64_t pad[7];
	struct obx_stats g;
};

/* ---- sink page (broker-written) ---------------------------------------- */
#define OBX_SINK_OK           0u
#define OBX_SINK_BACKOFF      1u
#define OBX_SINK_RATE_LIMITED 2u

struct obx_sink_counters {
	uint64_t queued_events, queued_bytes, requests, responses_2xx,
		 responses_4xx, responses_5xx, network_errors, retries,
		 delivered_events, delivered_batches, dropped_rejected,
		 dropped_retries_exhausted, dropped_expired, dropped_rate_limited,
		 dropped_too_large, splits, inflight, dropped_spool_full,
		 dropped_spool_error, unknown_routed, dropped_invalid;
	/* taken from reserved (same layout; an older reader sees zeros):
	 * requests = 2xx + 3xx + 4xx + 5xx + other + network_errors +
	 * cancelled + those in flight */
	uint64_t responses_3xx, responses_other, requests_cancelled;
	uint64_t redelivered;        /* appended (issue 13) */
	/* appended (issue 15): events of a rate-limited category held
	 * (on_rate_limit = hold), a part of queued_events (a gauge) */
	uint64_t held_events;
	/* appended (issue 17): one past the last spool seq the sink read for
	 * delivery - a position, not a counter. Stored at every read, not
	 * only at a publish, so that the next broker after a kill -9 knows
	 * what was out: re-sends below it count `redelivered`. Any producer
	 * can write it: the broker bounds it by its spool. */
	uint64_t read_pos;
	uint64_t reserved[5];
};

struct obx_sink_shm {
	char     name[OBX_NAME_MAX];
	uint32_t in_use;
	uint32_t state;               /* OBX_SINK_* */
	uint64_t until_ns;            /* CLOCK_REALTIME ns, 0 when ok */
	uint32_t ncats;
	uint32_t event_max;           /* was pad (issue 15): the largest body
	                               * the sink takes (event_max_bytes, where
	                               * its protocol enforces it), 0 = none */
	char     cats[OBX_MAX_CATS][OBX_CAT_MAX];
	uint64_t cat_until_ns[OBX_MAX_CATS];
	struct obx_sink_counters c;
};

/* why a drop by category happened (struct obx_cat_drop.reason) */
#define OBX_DROP_REJECTED          1u
#define OBX_DROP_RETRIES_EXHAUSTED 2u
#define OBX_DROP_EXPIRED           3u
#define OBX_DROP_RATE_LIMITED      4u
#define OBX_DROP_TOO_LARGE         5u
#define OBX_DROP_INVALID           6u

#define OBX_MAX_CAT_DROPS 80u

/* events of one sink dropped for one reason, of one data category */
struct obx_cat_drop {
	uint8_t  sink;               /* index in sink[] */
	uint8_t  reason;             /* OBX_DROP_* */
	uint16_t pad;
	char     cat[OBX_CAT_MAX];   /* "error", "transaction", ... */
	uint32_t pad2;
	uint64_t n;
};

struct obx_sink_page {
	_Atomic uint64_t seq;        /* seqlock, as for stats */
	uint32_t nsinks;
	uint32_t default_sink;
	uint64_t pad[6];
	struct obx_sink_shm sink[OBX_MAX_SINKS];
	/* appended (issue 15), in the slack of the page's last 4 KiB: the
	 * layout (ring_off) stays the same, an older broker leaves it zero.
	 * Drops of the sinks whose protocol knows data categories (sentry),
	 * by category and reason; a breakdown of the sinks' drop counters,
	 * not a part of the identity. */
	uint32_t ncat_drops;         /* entries in use */
	uint32_t cat_drops_more;     /* 1: some did not fit (left out) */
	struct obx_cat_drop cat_drops[OBX_MAX_CAT_DROPS];
};

/* appended fields live in the slack: the page keeps its 10 pages */
_Static_assert(sizeof(struct obx_sink_page) <= 10 * OBX_PAGE,
	       "the sink page outgrew its pages: that changes ring_off");

#endif /* OBX_ABI_H */
