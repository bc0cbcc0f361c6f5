/* spool.c - the durable spool: per sink, append-only segment files of
 * CRC-framed records, written and read with io_uring (see spool.h).
 *
 * The on-disk format (segment headers, frames, checkpoint) and the
 * recovery rules are described at the top of spool_format.c, which also
 * holds the codec, the frame scanner and the offline tools. This file is
 * the io_uring side: appends, flushes, reads, acknowledgements,
 * checkpoints, deletion, and spool_open's recovery built on the scanner.
 *
 * Ordering of acknowledgement vs. deletion
 * ========================================
 * A segment is unlinked only after a checkpoint whose acked covers all
 * of it is durable (write tmp, fsync, rename, fsync dir - chained on
 * io_uring with IOSQE_IO_LINK). A crash between the two leaves a fully
 * acknowledged segment, deleted at the next open: nothing unacked is
 * ever deleted for an ack, and a checkpoint never points past data that
 * is missing for a legitimate reason - so a missing head at the next
 * open is damage, and counted. drop-oldest follows the same order: the
 * victim leaves the accounting (spool_max) at once, its records are
 * counted dropped_full and the watermark moves past them, but its file
 * is unlinked only after that checkpoint (disk use may exceed spool_max
 * by the dropped segments for ~100 ms). A crash before it re-delivers
 * them (duplicates, never loss).
 *
 * Write path
 * ==========
 * spool_append() copies a frame into the sink's tail blocks (64 KiB
 * blocks, up to tail_buffer bytes not yet written). spool_set_flush()
 * turns every maximal run of pending blocks of one segment into ONE
 * IORING_OP_WRITEV at its explicit file offset (normally one write per
 * sink per flush, two when the flush crosses a rollover; a new segment's
 * header rides in the same writev; a lone write has the drain journal's
 * write linked behind it). Short writes are resubmitted for the
 * rest; an error puts the blocks back to pending (the data stays in
 * memory), counts write_errors and stalls appends (-EAGAIN) until a
 * later flush succeeds. With durability=fdatasync, written blocks wait
 * for an IORING_OP_FSYNC(DATASYNC) of their file (and of the directory
 * after a segment was created), at most one per sync_interval (an
 * IORING_OP_TIMEOUT delays it); a failed fdatasync puts its blocks back
 * to pending and they are written again (after a failed fsync the page
 * cache may have dropped them). Written blocks stay in memory as the
 * "recent" buffer (up to tail_buffer bytes) for reads.
 *
 * Read path: records from the blocks when they are still there, else
 * IORING_OP_READ of a window of the segment located by the segment list
 * (sorted by first seq): at the exact offset where the previous read
 * ended (sequential delivery), or at the sparse index point before the
 * seq. The window is sized from the segment's average frame size, so a
 * batch reads about what it returns. Frames are validated again while
 * parsing; seqs found missing (damage after the open, a file deleted
 * behind our back, an EIO spot) are counted corrupt and marked done, so
 * delivery never stops on them.
 */
#define _GNU_SOURCE
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "spool_format.h"

#define IDX_GRAN		(128u * 1024)
#define CKPT_RETRY_NS		1000000000ull	/* after a failure */
#define CKPT_BUSY_NS		1000000ull	/* no room in the SQ */
#define RESERVE_MIN		(256ull << 10)
#define RESERVE_MAX		(64ull << 20)
#define STATVFS_NS		100000000ull	/* re-measure a full disk */
#define LOG_RL_NS		10000000000ull	/* one line per 10 s per kind */
#define DEF_SEGMENT		(16ull << 20)
#define DEF_TAIL		(1ull << 20)
#define BLK_MAX			(64u * 1024)
#define BLK_MIN			(4u * 1024)
#define READ_MIN		(64u * 1024)
#define READ_MAX		(16u << 20)
#define RUN_MAX_BLKS		512		/* iovecs per writev */
#define CLOSE_WAIT_NS		(30ull * 1000000000ull)
#define LOG_DAMAGE_MAX		20		/* damage lines per open */

_Static_assert(SPF_NAME_MAX == CFG_NAME_MAX, "sink name limits differ");

#define container_of(p, T, m) ((T *)((char *)(p) - offsetof(T, m)))

enum blk_state { B_PENDING, B_WRITING, B_UNSYNCED, B_DONE };

struct idx_ent {
	uint64_t seq, off;
};

struct seg {
	uint64_t first;			/* name and header */
	uint64_t end;			/* one past the last seq (first: empty) */
	uint64_t size;			/* header + frames, incl. unwritten */
	uint64_t created_ns;
	struct idx_ent *idx;		/* sparse: seq -> offset */
	uint32_t nidx, idx_cap;
	uint64_t idx_last;		/* offset of the last entry */
	int fd;				/* -1: closed */
	bool sealed;			/* never append (recovered, damaged) */
	uint32_t refs;			/* disk reads in flight */
	uint32_t busy;			/* writes / syncs in flight */
	uint32_t live;			/* blocks not B_DONE */
	uint8_t hdr[SPF_SEG_HDR];
};

struct blk {
	struct blk *next;
	struct seg *seg;
	uint64_t file_off;
	uint64_t first_seq, end_seq;
	uint32_t len, cap;
	enum blk_state state;
	uint8_t data[];
};

struct range {
	uint64_t a, b;			/* [a, b) */
};

struct wop {
	struct rx_op op;
	struct spool *sp;
	struct seg *seg;
	struct blk *first;
	uint32_t nblk;
	struct wop *next_new;		/* this flush's writes, unsubmitted */
	uint64_t off, total, done;
	int niov;
	struct iovec *cur;		/* what is left to write */
	struct iovec iov[];		/* niov, then niov for cur */
};

struct sop {
	struct rx_op op;
	struct spool *sp;
	struct seg *seg;		/* NULL: the sink directory */
};

struct rd {
	struct rx_op op;
	struct spool *sp;
	struct seg *seg;
	struct spool_batch *b;
	uint64_t from, expect;
	uint32_t max_events;
	uint64_t max_bytes;
	uint64_t off;
	uint32_t len;
	uint32_t end_off;		/* after the last record, in window */
	void (*done)(void *arg, int err);
	void *arg;
};

struct ckop {
	struct rx_op op;
	struct spool *sp;
};

/* rate-limited log lines, per kind */
enum { RL_WRITE, RL_FULL, RL_CKPT, RL_N };

struct spool {
	struct spool *next;
	struct spool_set *set;
	char name[CFG_NAME_MAX];
	int dfd;

	struct seg **segs;		/* sorted by first */
	uint32_t nsegs, segs_cap;
	struct seg *active;
	struct seg *last_read;
	struct seg *hint_seg;		/* where the last disk read ended: */
	uint64_t hint_seq, hint_off;	/* sequential reads start exactly */

	struct blk *bhead, *btail;
	uint64_t blk_size;

	uint64_t next_seq;		/* next seq to assign */
	uint64_t visible;		/* one past the last readable */
	uint64_t acked;			/* watermark */
	uint64_t durable_acked;		/* in a durable checkpoint */
	struct range *rng;		/* done ranges above acked */
	uint32_t nrng, rng_cap;
	struct range *doomed;		/* dropped segments [first, end):
					 * unlinked after a checkpoint */
	uint32_t ndoomed, doomed_cap;
	uint64_t read_hwm;		/* one past the last record read */
	uint64_t resend_end;		/* a previous broker read up to here */
	uint64_t flush_end;		/* next_seq when the flush started */

	uint64_t bytes;			/* sum of segment sizes */
	uint64_t pending;		/* bytes in B_PENDING blocks */
	uint64_t unwritten;		/* bytes in blocks not B_DONE */
	uint64_t done_mem;		/* capacity of B_DONE blocks */
	uint32_t inflight;		/* io_uring ops referencing us */
	bool dir_dirty;
	bool wr_nospace;		/* a write of this flush hit ENOSPC */

	/* checkpoint: ck_fd stays open; ck_kick starts a write from the
	 * reactor, ck_timer retries after a failure */
	struct ckop ck_ops[2];
	struct rx_op ck_kick, ck_timer;
	struct __kernel_timespec ck_ts;
	bool ck_inflight, ck_kicked, ck_timer_armed, ck_dirty;
	int ck_pending, ck_err, ck_fd;
	uint64_t ck_gen;
	uint64_t ck_next_durable;	/* next_seq in the durable one */
	struct spf_ckpt ck;		/* the one being written */
	uint8_t *ck_slot;		/* SPF_CK_SLOT bytes */
	uint32_t ck_len;
	uint64_t base[SPF_CK_BASE_MAX];	/* the owner's counters */
	uint32_t nbase, nbase_loaded;
	uint64_t base_loaded[SPF_CK_BASE_MAX];
	bool ck_this_ring;		/* the checkpoint found at open was
					 * written for this ring (ring_id) */
	uint64_t epoch[3];		/* corrupt, dropped_full, redelivered
					 * when the ring was new */

	struct spool_stats st;
	uint32_t log_damage;
	bool closing;
};

enum fl_phase { FL_IDLE, FL_WRITE, FL_JOURNAL, FL_WAIT, FL_SYNC,
		FL_FINISH };

struct spool_set {
	struct rx *rx;
	struct spool_set_opts o;
	char *dir;
	int dfd;			/* spool_dir, checked at open */
	struct spool *sinks;
	uint64_t bytes;
	bool stalled;
	uint64_t max_payload;
	uint64_t last_sync_ns;

	/* free space: measured at every flush and when full, minus what
	 * was appended since */
	uint64_t disk_free, reserve, statvfs_ns;

	/* drain journal: the one being written, and the one found at open
	 * (its cut information is used by the spool_open()s of start-up,
	 * until the first flush) */
	int jr_fd;
	uint64_t jr_gen;
	struct spf_journal *jr, *jr_loaded;
	bool jr_cut_ok, jr_want;
	uint8_t *jr_slot;
	uint32_t jr_len;
	struct rx_op jr_op;
	struct rx_op jr_link_op;	/* the journal linked behind ... */
	struct wop *fl_linked;		/* ... this write (fl_link_journal) */

	enum fl_phase fl_phase;
	int fl_inflight, fl_err;
	bool fl_nospace;
	bool fl_in_call;		/* inside spool_set_flush_mark() */
	struct wop *fl_new, **fl_new_tail;	/* writes built, not queued */
	void (*fl_done)(void *arg, int err);
	void *fl_arg;
	struct rx_op fl_nop, fl_timer;
	struct __kernel_timespec fl_ts;
	bool fl_timer_armed, closing;
	uint32_t inflight;		/* set-level ops (nop, timer) */

	struct {
		uint64_t next_ns, suppressed;
	} rl[RL_N];
};

/* ---- small helpers ---------------------------------------------------- */

static inline uint64_t min64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static inline uint64_t max64(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

static uint64_t now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void ns_to_ts(struct __kernel_timespec *ts, uint64_t ns)
{
	ts->tv_sec = (long long)(ns / 1000000000ull);
	ts->tv_nsec = (long long)(ns % 1000000000ull);
}

static void sp_log(const struct spool_set *set, int level, const char *fmt,
		   ...) __attribute__((format(printf, 3, 4)));

static void sp_log(const struct spool_set *set, int level, const char *fmt,
		   ...)
{
	char msg[512];
	va_list ap;

	if (!set || !set->o.log)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	set->o.log(set->o.log_arg, level, msg);
}

static void sp_log_rl(struct spool_set *set, int kind, int level,
		      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* At most one line per kind every 10 s; the next one says how many
 * were left out. */
static void sp_log_rl(struct spool_set *set, int kind, int level,
		      const char *fmt, ...)
{
	uint64_t now = now_ns(CLOCK_MONOTONIC);
	char msg[448];
	va_list ap;

	if (now < set->rl[kind].next_ns) {
		set->rl[kind].suppressed++;
		return;
	}
	set->rl[kind].next_ns = now + LOG_RL_NS;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (set->rl[kind].suppressed)
		sp_log(set, level, "%s (%" PRIu64 " similar lines in the last "
		       "10 s not shown)", msg, set->rl[kind].suppressed);
	else
		sp_log(set, level, "%s", msg);
	set->rl[kind].suppressed = 0;
}

/* ---- segments --------------------------------------------------------- */

static void seg_idx_add(struct seg *s, uint64_t seq, uint64_t off)
{
	if (s->nidx == s->idx_cap) {
		uint32_t ncap = s->idx_cap ? s->idx_cap * 2 : 16;
		struct idx_ent *n = realloc(s->idx, ncap * sizeof(*n));

		if (!n)
			return;		/* a coarser index still works */
		s->idx = n;
		s->idx_cap = ncap;
	}
	s->idx[s->nidx].seq = seq;
	s->idx[s->nidx].off = off;
	s->nidx++;
	s->idx_last = off;
}

/* Offset to start reading for seq: the last entry <= seq. */
static uint64_t seg_idx_find(const struct seg *s, uint64_t seq)
{
	uint32_t lo = 0, hi = s->nidx;

	if (!s->nidx || s->idx[0].seq >= seq)
		return s->nidx ? s->idx[0].off : SPF_SEG_HDR;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (s->idx[mid].seq <= seq)
			lo = mid;
		else
			hi = mid;
	}
	return s->idx[lo].off;
}

static struct seg *seg_alloc(uint64_t first)
{
	struct seg *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->first = first;
	s->end = first;
	s->fd = -1;
	return s;
}

static void seg_free(struct seg *s)
{
	if (s->fd >= 0)
		close(s->fd);
	free(s->idx);
	free(s);
}

static int segs_push(struct spool *sp, struct seg *s)
{
	if (sp->nsegs == sp->segs_cap) {
		uint32_t ncap = sp->segs_cap ? sp->segs_cap * 2 : 16;
		struct seg **n = realloc(sp->segs, ncap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		sp->segs = n;
		sp->segs_cap = ncap;
	}
	sp->segs[sp->nsegs++] = s;
	return 0;
}

static uint32_t segs_index(const struct spool *sp, const struct seg *s)
{
	uint32_t i;

	for (i = 0; i < sp->nsegs; i++)
		if (sp->segs[i] == s)
			return i;
	return UINT32_MAX;
}

/* The segment holding seq (last with first <= seq), or NULL. */
static struct seg *segs_find(const struct spool *sp, uint64_t seq)
{
	uint32_t lo = 0, hi = sp->nsegs;

	if (!sp->nsegs || sp->segs[0]->first > seq)
		return NULL;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (sp->segs[mid]->first <= seq)
			lo = mid;
		else
			hi = mid;
	}
	return sp->segs[lo];
}

static struct seg *segs_next(const struct spool *sp, const struct seg *s)
{
	uint32_t i = segs_index(sp, s);

	return i + 1 < sp->nsegs ? sp->segs[i + 1] : NULL;
}

/* Drops the fd of a segment nobody needs open (bounded fds whatever the
 * number of segments). */
static void seg_maybe_close(struct spool *sp, struct seg *s)
{
	if (s->fd < 0 || s == sp->active || s == sp->last_read || s->refs ||
	    s->busy || s->live)
		return;
	close(s->fd);
	s->fd = -1;
}

static int seg_open_fd(struct spool *sp, struct seg *s)
{
	char name[32];

	if (s->fd >= 0)
		return 0;
	spf_seg_name(name, sizeof(name), s->first);
	s->fd = openat(sp->dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	return s->fd < 0 ? -errno : 0;
}

/* A foreign file squats the name we need: move it aside, keep it. */
static int seg_move_aside(struct spool *sp, const char *name)
{
	char alt[64];
	int i;

	for (i = 0; i < 100; i++) {
		if (i)
			snprintf(alt, sizeof(alt), "%s.damaged.%d", name, i);
		else
			snprintf(alt, sizeof(alt), "%s.damaged", name);
		if (renameat2(sp->dfd, name, sp->dfd, alt, RENAME_NOREPLACE) == 0) {
			sp_log(sp->set, LOG_WARN,
			       "spool %s: moved foreign file %s aside to %s",
			       sp->name, name, alt);
			return 0;
		}
		if (errno != EEXIST)
			return -errno;
	}
	return -EEXIST;
}

static int seg_create(struct spool *sp)
{
	struct seg *s, *old = sp->active;
	char name[32];
	int fd, ret;

	s = seg_alloc(sp->next_seq);
	if (!s)
		return -ENOMEM;
	spf_seg_name(name, sizeof(name), s->first);
	fd = openat(sp->dfd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW |
		    O_CLOEXEC, 0600);
	if (fd < 0 && errno == EEXIST && seg_move_aside(sp, name) == 0)
		fd = openat(sp->dfd, name, O_RDWR | O_CREAT | O_EXCL |
			    O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		seg_free(s);
		return ret;
	}
	s->fd = fd;
	s->created_ns = now_ns(CLOCK_REALTIME);
	s->size = SPF_SEG_HDR;
	spf_seg_hdr_build(s->hdr, sp->name, s->first, s->created_ns);
	ret = segs_push(sp, s);
	if (ret) {
		close(fd);
		unlinkat(sp->dfd, name, 0);
		seg_free(s);
		return ret;
	}
	sp->active = s;
	sp->dir_dirty = true;
	sp->bytes += SPF_SEG_HDR;
	sp->set->bytes += SPF_SEG_HDR;
	if (old)
		seg_maybe_close(sp, old);
	return 0;
}

/* ---- blocks (tail and recent buffer) ---------------------------------- */

static void blk_free_head(struct spool *sp)
{
	struct blk *b = sp->bhead;

	sp->bhead = b->next;
	if (!sp->bhead)
		sp->btail = NULL;
	if (b->state == B_DONE)
		sp->done_mem -= b->cap;
	free(b);
}

/* Frees written blocks from the front: those fully acknowledged, and the
 * oldest ones while the recent buffer is over tail_buffer. Only a prefix
 * of written blocks is ever freed, so the blocks always cover a
 * contiguous suffix [mem_first, next_seq) of the sink's records. */
static void blk_trim(struct spool *sp)
{
	uint64_t keep = sp->set->o.tail_buffer;

	while (sp->bhead && sp->bhead->state == B_DONE &&
	       (sp->bhead->end_seq <= sp->acked || sp->done_mem > keep))
		blk_free_head(sp);
}

static uint64_t mem_first(const struct spool *sp)
{
	return sp->bhead ? sp->bhead->first_seq : sp->next_seq;
}

static void blk_set_state(struct spool *sp, struct blk *b,
			  enum blk_state st)
{
	if (b->state == st)
		return;
	if (b->state == B_PENDING)
		sp->pending -= b->len;
	if (st == B_PENDING)
		sp->pending += b->len;
	if (b->state == B_DONE) {
		sp->unwritten += b->len;
		sp->done_mem -= b->cap;
		b->seg->live++;
	}
	if (st == B_DONE) {
		sp->unwritten -= b->len;
		sp->done_mem += b->cap;
		b->seg->live--;
	}
	b->state = st;
}

static struct blk *blk_new(struct spool *sp, struct seg *s, uint64_t need)
{
	uint64_t cap = need > sp->blk_size ? need : sp->blk_size;
	struct blk *b = malloc(sizeof(*b) + cap);

	if (!b)
		return NULL;
	memset(b, 0, sizeof(*b));
	b->seg = s;
	b->file_off = s->size;
	b->cap = (uint32_t)cap;
	b->state = B_PENDING;
	s->live++;
	if (sp->btail)
		sp->btail->next = b;
	else
		sp->bhead = b;
	sp->btail = b;
	return b;
}

/* ---- acknowledgement ranges ------------------------------------------- */

/* Seqs of [a, b) not yet done. */
static uint64_t rng_count_open(const struct spool *sp, uint64_t a,
			       uint64_t b)
{
	uint64_t n;
	uint32_t i;

	a = max64(a, sp->acked);
	if (a >= b)
		return 0;
	n = b - a;
	for (i = 0; i < sp->nrng; i++) {
		uint64_t lo = max64(a, sp->rng[i].a);
		uint64_t hi = min64(b, sp->rng[i].b);

		if (lo < hi)
			n -= hi - lo;
	}
	return n;
}

/* Is seq done (below the watermark or in a done range)? */
static bool rng_done(const struct spool *sp, uint64_t seq)
{
	uint32_t lo = 0, hi = sp->nrng;

	if (seq < sp->acked)
		return true;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (sp->rng[mid].b <= seq)
			lo = mid + 1;
		else if (sp->rng[mid].a > seq)
			hi = mid;
		else
			return true;
	}
	return false;
}

/* Marks [a, b) done; returns how many seqs were newly done. */
static uint64_t rng_add(struct spool *sp, uint64_t a, uint64_t b)
{
	uint64_t newly;
	uint32_t i, j;

	a = max64(a, sp->acked);
	if (a >= b)
		return 0;
	newly = rng_count_open(sp, a, b);
	if (!newly)
		return 0;
	/* i: first range that ends at or after a (touching merges) */
	for (i = 0; i < sp->nrng && sp->rng[i].b < a; i++)
		;
	/* j: first range that starts after b */
	for (j = i; j < sp->nrng && sp->rng[j].a <= b; j++)
		;
	if (i < j) {
		a = min64(a, sp->rng[i].a);
		b = max64(b, sp->rng[j - 1].b);
		sp->rng[i].a = a;
		sp->rng[i].b = b;
		memmove(&sp->rng[i + 1], &sp->rng[j],
			(sp->nrng - j) * sizeof(*sp->rng));
		sp->nrng -= j - i - 1;
	} else {
		if (sp->nrng == sp->rng_cap) {
			uint32_t ncap = sp->rng_cap ? sp->rng_cap * 2 : 8;
			struct range *n = realloc(sp->rng,
						  ncap * sizeof(*n));

			if (!n)
				return 0;	/* acked again later */
			sp->rng = n;
			sp->rng_cap = ncap;
		}
		memmove(&sp->rng[i + 1], &sp->rng[i],
			(sp->nrng - i) * sizeof(*sp->rng));
		sp->rng[i].a = a;
		sp->rng[i].b = b;
		sp->nrng++;
	}
	if (sp->nrng && sp->rng[0].a <= sp->acked) {
		sp->acked = max64(sp->acked, sp->rng[0].b);
		memmove(&sp->rng[0], &sp->rng[1],
			(sp->nrng - 1) * sizeof(*sp->rng));
		sp->nrng--;
	}
	return newly;
}

/* ---- checkpoint ---------------------------------------------------------
 *
 * Written after every acknowledgement, back to back: while one is being
 * written, later acks mark it dirty and the next write covers them all.
 * A write overwrites the older slot of the preallocated checkpoint file
 * (one pwrite; linked to an fdatasync when durability = fdatasync), so it
 * never needs new disk space. It is started from a NOP completion, never
 * inside spool_ack(): the owner updates its counters (spool_set_base) in
 * the same turn as the ack, so a checkpoint always pairs a done-set with
 * the counters that go with it. Segments are deleted once a checkpoint
 * covering them is written (durable, with fdatasync). */

static void sp_gc(struct spool *sp);
static void ck_start(struct spool *sp);

static bool sp_closing(const struct spool *sp)
{
	return sp->closing || sp->set->closing;
}

static uint64_t ck_next_seq(const struct spool *sp)
{
	return max64(sp->visible, sp->acked);
}

/* The state a checkpoint records, now. */
static void ck_snapshot(const struct spool *sp, struct spf_ckpt *ck)
{
	uint32_t i;

	ck->version = 2;
	ck->acked = sp->acked;
	ck->next_seq = ck_next_seq(sp);
	ck->sent = max64(max64(sp->read_hwm, sp->resend_end), sp->acked);
	/* more ranges than fit: the rest is delivered again after a
	 * crash (counted twice then; never lost) */
	ck->nranges = min64(sp->nrng, SPF_CK_RANGES_MAX);
	for (i = 0; i < ck->nranges; i++) {
		ck->ranges[i].a = sp->rng[i].a;
		ck->ranges[i].b = sp->rng[i].b;
	}
	ck->corrupt = sp->st.corrupt;
	ck->dropped_full = sp->st.dropped_full;
	ck->redelivered = sp->st.redelivered;
	ck->ring_id = sp->set->o.ring_id;
	memcpy(ck->epoch, sp->epoch, sizeof(ck->epoch));
	ck->nbase = sp->nbase;
	memcpy(ck->base, sp->base, sizeof(ck->base));
}

/* Synchronous: the current state into the file (created when there is
 * none yet), fdatasync'ed. Start-up, close, spool_sync_ack(). */
static int ck_write_now(struct spool *sp)
{
	int ret = 0;

	ck_snapshot(sp, &sp->ck);
	sp->ck.gen = sp->ck_gen + 1;
	if (sp->ck_fd < 0) {
		sp->ck.gen = 1;
		ret = spf_ck_create(sp->dfd, sp->name, &sp->ck);
		if (ret >= 0) {
			sp->ck_fd = ret;
			ret = 0;
		}
	} else {
		size_t n = spf_ck_encode(sp->ck_slot, sp->name, &sp->ck);
		ssize_t w = n ? pwrite(sp->ck_fd, sp->ck_slot, n, (off_t)
				       ((sp->ck.gen & 1) * SPF_CK_SLOT)) : -1;

		sp->st.ck_writes++;
		if (!n)
			ret = -EOVERFLOW;
		else if (w != (ssize_t)n)
			ret = w < 0 ? -errno : -EIO;
		else if (fdatasync(sp->ck_fd) < 0)
			ret = -errno;
	}
	if (ret) {
		sp->st.write_errors++;
		return ret;
	}
	sp->ck_gen = sp->ck.gen;
	sp->ck_next_durable = sp->ck.next_seq;
	sp->durable_acked = max64(sp->durable_acked, sp->ck.acked);
	sp->ck_dirty = false;
	return 0;
}

static void ck_timer_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct spool *sp = container_of(op, struct spool, ck_timer);

	sp->inflight--;
	sp->ck_timer_armed = false;
	if (res == -ECANCELED || sp_closing(sp))
		return;
	if (sp->ck_dirty && !sp->ck_inflight)
		ck_start(sp);
}

static void ck_arm(struct spool *sp, uint64_t delay_ns)
{
	struct io_uring_sqe *sqe;

	if (sp->ck_timer_armed || sp_closing(sp))
		return;
	sp->ck_timer.fn = ck_timer_fn;
	ns_to_ts(&sp->ck_ts, delay_ns);
	sqe = rx_sqe(sp->set->rx, &sp->ck_timer);
	io_uring_prep_timeout(sqe, &sp->ck_ts, 0, 0);
	sp->ck_timer_armed = true;
	sp->inflight++;
}

static void ck_kick_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct spool *sp = container_of(op, struct spool, ck_kick);

	sp->inflight--;
	sp->ck_kicked = false;
	if (sp_closing(sp) || sp->ck_timer_armed)
		return;		/* closing; or a failure waits for its retry */
	if (sp->ck_dirty && !sp->ck_inflight)
		ck_start(sp);
}

/* Something to checkpoint: the next write starts from the reactor, as
 * soon as none is in flight. */
static void ck_schedule(struct spool *sp)
{
	struct io_uring_sqe *sqe;

	sp->ck_dirty = true;
	if (sp->ck_inflight || sp->ck_kicked || sp->ck_timer_armed ||
	    sp_closing(sp))
		return;
	sp->ck_kick.fn = ck_kick_fn;
	sqe = rx_sqe(sp->set->rx, &sp->ck_kick);
	io_uring_prep_nop(sqe);
	sp->ck_kicked = true;
	sp->inflight++;
}

/* Records up to `end` were read for delivery: the next checkpoint says
 * so (sent), so that after a crash their re-sends count as redelivered.
 * A read does not schedule a checkpoint of its own: it would be a second
 * write per request (an io-wq hand-off and a broker wake-up on ext4) for
 * an estimate. The next one, written after the next acknowledgement,
 * carries it; what is read after that checkpoint started and still out
 * when the broker dies is not counted (DESIGN.md, "Ring -> spool ->
 * head"). */
void spool_note_sent(struct spool *sp, uint64_t pos)
{
	if (pos > sp->acked && pos > sp->resend_end)
		sp->resend_end = pos;
}

static void sp_read_to(struct spool *sp, uint64_t end)
{
	if (end > sp->read_hwm)
		sp->read_hwm = end;
}

static void ck_op_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct ckop *c = container_of(op, struct ckop, op);
	struct spool *sp = c->sp;

	sp->inflight--;
	if (res < 0 && !sp->ck_err)
		sp->ck_err = res;
	/* the first op is the write: a short one is an error */
	if (c == &sp->ck_ops[0] && res >= 0 &&
	    (uint32_t)res != sp->ck_len && !sp->ck_err)
		sp->ck_err = -EIO;
	if (--sp->ck_pending)
		return;
	sp->ck_inflight = false;
	if (sp->ck_err) {
		sp->st.write_errors++;
		sp_log_rl(sp->set, RL_CKPT, LOG_WARN, "spool %s: checkpoint "
			  "failed: %s (retried every second)", sp->name,
			  strerror(-sp->ck_err));
		sp->ck_dirty = true;
		ck_arm(sp, CKPT_RETRY_NS);
		return;
	}
	sp->ck_gen = sp->ck.gen;
	sp->durable_acked = max64(sp->durable_acked, sp->ck.acked);
	sp->ck_next_durable = sp->ck.next_seq;
	sp_gc(sp);
	if (sp->ck_dirty)
		ck_schedule(sp);
}

/* The older slot, with one pwrite (-> fdatasync: linked, so the sync
 * covers it). */
static void ck_start(struct spool *sp)
{
	struct rx *rx = sp->set->rx;
	struct io_uring_sqe *sqe;
	bool sync = sp->set->o.durability == DUR_FDATASYNC;
	int i;

	if (sp->ck_fd < 0) {
		/* the file could not be made at open (disk full then):
		 * try again; that one write needs the space */
		if (ck_write_now(sp) == 0)
			sp_gc(sp);
		else
			ck_arm(sp, CKPT_RETRY_NS);
		return;
	}
	/* the chain must not be split by a submit inside rx_sqe(): with no
	 * room for both (the kernel takes no SQE while completions back
	 * up), the checkpoint waits a moment rather than let its sync run
	 * apart from, or before, its write */
	if (rx_reserve(rx, sync ? 2 : 1) < 0) {
		sp->ck_dirty = true;
		ck_arm(sp, CKPT_BUSY_NS);
		return;
	}
	sp->ck_dirty = false;
	ck_snapshot(sp, &sp->ck);
	sp->ck.gen = sp->ck_gen + 1;
	sp->ck_len = (uint32_t)spf_ck_encode(sp->ck_slot, sp->name, &sp->ck);
	if (!sp->ck_len) {
		sp->st.write_errors++;
		sp->ck_dirty = true;
		ck_arm(sp, CKPT_RETRY_NS);
		return;
	}
	for (i = 0; i < 2; i++) {
		sp->ck_ops[i].op.fn = ck_op_fn;
		sp->ck_ops[i].sp = sp;
	}
	sqe = rx_sqe(rx, &sp->ck_ops[0].op);
	io_uring_prep_write(sqe, sp->ck_fd, sp->ck_slot, sp->ck_len,
			    (sp->ck.gen & 1) * SPF_CK_SLOT);
	if (sync) {
		sqe->flags |= IOSQE_IO_LINK;
		sqe = rx_sqe(rx, &sp->ck_ops[1].op);
		io_uring_prep_fsync(sqe, sp->ck_fd, IORING_FSYNC_DATASYNC);
	}
	sp->ck_pending = sync ? 2 : 1;
	sp->ck_err = 0;
	sp->ck_inflight = true;
	sp->st.ck_writes++;
	sp->inflight += (uint32_t)sp->ck_pending;
}

/* ---- deleting segments ------------------------------------------------ */

static void seg_remove(struct spool *sp, uint32_t i, bool unlink)
{
	struct seg *s = sp->segs[i];
	char name[32];

	/* its blocks are written and at the front: free them first */
	while (sp->bhead && sp->bhead->seg == s)
		blk_free_head(sp);
	spf_seg_name(name, sizeof(name), s->first);
	if (unlink && unlinkat(sp->dfd, name, 0) < 0 && errno != ENOENT)
		sp_log(sp->set, LOG_WARN, "spool %s: cannot delete %s: %s",
		       sp->name, name, strerror(errno));
	sp->bytes -= s->size;
	sp->set->bytes -= s->size;
	if (sp->last_read == s)
		sp->last_read = NULL;
	if (sp->hint_seg == s)
		sp->hint_seg = NULL;
	memmove(&sp->segs[i], &sp->segs[i + 1],
		(sp->nsegs - i - 1) * sizeof(*sp->segs));
	sp->nsegs--;
	seg_free(s);
}

static bool seg_idle(const struct spool *sp, const struct seg *s)
{
	return s != sp->active && !s->refs && !s->busy && !s->live;
}

static bool doom_add(struct spool *sp, uint64_t first, uint64_t end)
{
	if (sp->ndoomed == sp->doomed_cap) {
		uint32_t ncap = sp->doomed_cap ? sp->doomed_cap * 2 : 4;
		struct range *n = realloc(sp->doomed, ncap * sizeof(*n));

		if (!n)
			return false;
		sp->doomed = n;
		sp->doomed_cap = ncap;
	}
	sp->doomed[sp->ndoomed].a = first;
	sp->doomed[sp->ndoomed].b = end;
	sp->ndoomed++;
	return true;
}

/* Deletes the fully acknowledged prefix, and the segments drop-oldest
 * gave up, once a durable checkpoint covers them. */
static void sp_gc(struct spool *sp)
{
	uint32_t i, j;

	blk_trim(sp);
	while (sp->nsegs && seg_idle(sp, sp->segs[0]) &&
	       sp->segs[0]->end <= sp->durable_acked)
		seg_remove(sp, 0, true);
	for (i = j = 0; i < sp->ndoomed; i++) {
		char name[32];

		if (sp->doomed[i].b > sp->durable_acked) {
			sp->doomed[j++] = sp->doomed[i];
			continue;
		}
		spf_seg_name(name, sizeof(name), sp->doomed[i].a);
		if (unlinkat(sp->dfd, name, 0) < 0 && errno != ENOENT)
			sp_log(sp->set, LOG_WARN, "spool %s: cannot delete "
			       "%s: %s", sp->name, name, strerror(errno));
	}
	sp->ndoomed = j;
}

/* ---- room: spool_max and the disk -------------------------------------
 *
 * Two limits, one policy: spool_max (bytes of all sinks' segments and
 * tail buffers) and the file system's free space minus a reserve
 * (measured with fstatvfs at a flush when the last measure is 100 ms old
 * or the estimate is near the limit, and while short at most every
 * 100 ms; appends in between are subtracted). Whichever is hit, spool_full
 * applies: drop-newest refuses the append (refused_full), drop-oldest
 * deletes the oldest idle segment of any sink (its undelivered records
 * dropped_full) until the record fits. Deleting needs no space: the
 * checkpoint that must precede the unlink overwrites a preallocated
 * slot. */

static void disk_measure(struct spool_set *set)
{
	const struct spool *sp;
	uint64_t unwritten = 0, fs, freeb;
	struct statvfs vs;

	set->statvfs_ns = now_ns(CLOCK_MONOTONIC);
	if (fstatvfs(set->dfd, &vs) < 0) {
		set->disk_free = UINT64_MAX;	/* unknown: spool_max only */
		return;
	}
	fs = (uint64_t)vs.f_blocks * vs.f_frsize;
	if (!set->reserve)
		set->reserve = set->o.disk_reserve ? set->o.disk_reserve :
			min64(min64(max64(fs / 64, RESERVE_MIN), RESERVE_MAX),
			      fs / 8);
	/* what is appended and not written yet will take space too */
	for (sp = set->sinks; sp; sp = sp->next)
		unwritten += sp->unwritten;
	freeb = (uint64_t)vs.f_bavail * vs.f_frsize;
	set->disk_free = freeb > unwritten ? freeb - unwritten : 0;
}

/* At a flush: measured again only when the last measure is STATVFS_NS
 * old or the estimate is within twice the reserve of the limit. Appends
 * since the last measure are subtracted already, so only someone else's
 * writes make it stale, and a write that still finds the disk full is
 * handled (sp_rewind). At a trickle (50 flushes a second) that is 10
 * fstatvfs a second instead of 50. */
static void disk_refresh(struct spool_set *set)
{
	if (set->disk_free < 2 * set->reserve ||
	    now_ns(CLOCK_MONOTONIC) - set->statvfs_ns >= STATVFS_NS)
		disk_measure(set);
}

/* Would `need` more bytes eat into the reserve? */
static bool disk_short(struct spool_set *set, uint64_t need)
{
	if (set->disk_free >= set->reserve + need)
		return false;
	/* space may have come back since the last look */
	if (now_ns(CLOCK_MONOTONIC) - set->statvfs_ns >= STATVFS_NS)
		disk_measure(set);
	return set->disk_free < set->reserve + need;
}

/* drop-oldest: the oldest (by creation time) first segment of any sink
 * that is neither written nor read. Its size, or 0 when there is none. */
static uint64_t drop_oldest(struct spool_set *set, const char *why)
{
	struct spool *sp, *vsp = NULL;
	struct seg *v = NULL;
	uint64_t lost, size;

	for (sp = set->sinks; sp; sp = sp->next) {
		struct seg *s;

		if (!sp->nsegs)
			continue;
		s = sp->segs[0];
		if (!seg_idle(sp, s))
			continue;
		if (!v || s->created_ns < v->created_ns) {
			v = s;
			vsp = sp;
		}
	}
	if (!v)
		return 0;
	sp = vsp;
	size = v->size;
	lost = rng_count_open(sp, v->first, v->end);
	sp->st.dropped_full += lost;
	sp_log_rl(set, RL_FULL, LOG_WARN,
		  "spool %s: %s, deleted the oldest segment (seqs %" PRIu64
		  "..%" PRIu64 ", %" PRIu64 " undelivered records dropped)",
		  sp->name, why, v->first,
		  v->end > v->first ? v->end - 1 : v->first, lost);
	/* everything up to the next segment is gone: the watermark moves */
	rng_add(sp, sp->acked, sp->nsegs > 1 ? sp->segs[1]->first : v->end);
	/* out of the accounting now; the file goes once a checkpoint past
	 * it is durable, like any acknowledged segment: so a missing head
	 * at the next start always means damage, never this */
	seg_remove(sp, 0, !doom_add(sp, v->first, v->end));
	blk_trim(sp);
	ck_schedule(sp);
	return size;
}

/* 0 when `need` bytes fit (after drop-oldest made room), else -ENOSPC
 * and *why. */
static int room_make(struct spool *sp, uint64_t need, const char **why)
{
	struct spool_set *set = sp->set;
	uint64_t freed;

	for (;;) {
		bool disk = false;

		if (set->o.max_bytes && set->bytes + need > set->o.max_bytes)
			*why = "spool_max reached";
		else if ((disk = disk_short(set, need)))
			*why = "disk full";
		else
			return 0;
		if (set->o.full != SPOOL_DROP_OLDEST)
			return -ENOSPC;
		freed = drop_oldest(set, *why);
		if (!freed)
			return -ENOSPC;
		if (disk)	/* unlinked once its checkpoint is written */
			set->disk_free += freed;
	}
}

/* An append refused for lack of room: counted, logged (rate-limited). */
static int sp_refuse(struct spool *sp, const char *why)
{
	struct spool_set *set = sp->set;

	sp->st.refused_full++;
	if (!strcmp(why, "disk full"))
		sp_log_rl(set, RL_FULL, LOG_WARN, "spool %s: disk full (%"
			  PRIu64 " bytes free, %" PRIu64 " kept in reserve): "
			  "new events are dropped (dropped_spool_full)",
			  sp->name, set->disk_free, set->reserve);
	else
		sp_log_rl(set, RL_FULL, LOG_WARN, "spool %s: %s: new events "
			  "are dropped (dropped_spool_full)", sp->name, why);
	return -ENOSPC;
}

/* ---- append ------------------------------------------------------------ */

int spool_append(struct spool *sp, const void *rec, uint32_t len)
{
	struct spool_set *set = sp->set;
	uint64_t flen = spf_frame_len(len), seq, off, need;
	struct seg *s = sp->active;
	const char *why;
	struct blk *b;
	bool roll;
	int ret;

	if (len > set->max_payload)
		return -E2BIG;
	if (set->stalled)
		return -EAGAIN;
	if (sp->unwritten && sp->unwritten + flen > set->o.tail_buffer)
		return -EAGAIN;		/* back-pressure: flush first */
	roll = !s || s->sealed || s->end != sp->next_seq ||
	       (s->size + flen > set->o.segment_size && s->end > s->first);
	need = flen + (roll ? SPF_SEG_HDR : 0);
	if (room_make(sp, need, &why))
		return sp_refuse(sp, why);
	if (roll) {
		ret = seg_create(sp);
		if (ret == -ENOSPC || ret == -EDQUOT) {
			disk_measure(set);
			return sp_refuse(sp, "disk full");
		}
		if (ret) {
			sp->st.write_errors++;
			set->stalled = true;
			sp_log_rl(set, RL_WRITE, LOG_ERROR, "spool %s: cannot "
				  "create a segment: %s", sp->name,
				  strerror(-ret));
			return -EAGAIN;
		}
		s = sp->active;
	}
	b = sp->btail;
	if (!b || b->state != B_PENDING || b->seg != s ||
	    b->len + flen > b->cap) {
		b = blk_new(sp, s, flen);
		if (!b)
			return -ENOMEM;
	}
	seq = sp->next_seq++;
	off = s->size;
	spf_frame_build(b->data + b->len, seq, rec, len);
	if (!b->len)
		b->first_seq = seq;
	b->len += (uint32_t)flen;
	b->end_seq = seq + 1;
	if (!s->nidx || off - s->idx_last >= IDX_GRAN)
		seg_idx_add(s, seq, off);
	s->size += flen;
	s->end = seq + 1;
	sp->bytes += flen;
	set->bytes += flen;
	sp->pending += flen;
	sp->unwritten += flen;
	set->disk_free = set->disk_free > need ? set->disk_free - need : 0;
	return 0;
}

/* ---- flush: writes -----------------------------------------------------
 *
 * Phases: FL_WRITE (one writev per run of pending blocks) -> FL_JOURNAL
 * (with a mark: the drain journal's older slot, one pwrite) -> FL_WAIT /
 * FL_SYNC (fdatasync only: at most one per sync_interval) -> FL_FINISH
 * (the callback, from the completion that ends the flush, or a NOP when
 * it ends inside spool_set_flush_mark()). One write and a journal go as
 * a linked chain, one completion (fl_link_journal, DESIGN.md "Linked
 * flush"). A write that fails for lack of
 * space does not fail the flush: sp_rewind() drops what could not be
 * written, so the ring moves on; any other error does (data kept,
 * appends stalled, retried by the next flush). */

static void fl_writes_done(struct spool_set *set);
static void fl_finish(struct spool_set *set, int err);

static bool err_nospace(int err)
{
	return err == -ENOSPC || err == -EDQUOT;
}

static struct io_uring_sqe *wop_submit(struct spool_set *set,
				       struct wop *w)
{
	struct io_uring_sqe *sqe = rx_sqe(set->rx, &w->op);
	uint64_t skip = w->done;
	int i, n = 0;

	/* the part not yet written, as iovecs */
	for (i = 0; i < w->niov; i++) {
		if (skip >= w->iov[i].iov_len) {
			skip -= w->iov[i].iov_len;
			continue;
		}
		w->cur[n].iov_base = (char *)w->iov[i].iov_base + skip;
		w->cur[n].iov_len = w->iov[i].iov_len - skip;
		skip = 0;
		n++;
	}
	io_uring_prep_writev(sqe, w->seg->fd, w->cur, (unsigned)n,
			     w->off + w->done);
	return sqe;
}

/* The journal linked behind w did not run: w's write failed or was
 * short, which cancels the rest of the chain, and with
 * IOSQE_CQE_SKIP_SUCCESS on w the kernel posts no CQE for it. The flush
 * goes on as an unlinked one (FL_WRITE, then jr_submit() after w). */
static void fl_unlink(struct spool_set *set)
{
	set->fl_linked = NULL;
	set->inflight--;
	set->fl_phase = FL_WRITE;
}

/* Write w is over: res is its CQE's result, or for a linked write whose
 * CQE was skipped, the bytes it had left. The flush goes on from here
 * (its last statement: the flush's callback may run inside). */
static void wop_done(struct wop *w, int res)
{
	struct spool *sp = w->sp;
	struct spool_set *set = sp->set;
	enum blk_state st;
	struct blk *b;
	uint32_t i;

	if (res == 0)
		res = -EIO;
	if (res < 0) {
		st = B_PENDING;
		sp->st.write_errors++;
		if (err_nospace(res)) {
			sp->wr_nospace = true;
			set->fl_nospace = true;
		} else {
			set->stalled = true;
			if (!set->fl_err)
				set->fl_err = res;
			sp_log_rl(set, RL_WRITE, LOG_ERROR, "spool %s: write "
				  "failed: %s (kept in memory, retried)",
				  sp->name, strerror(-res));
		}
	} else {
		st = set->o.durability == DUR_FDATASYNC ? B_UNSYNCED : B_DONE;
	}
	for (i = 0, b = w->first; i < w->nblk; i++, b = b->next)
		blk_set_state(sp, b, st);
	w->seg->busy--;
	sp->inflight--;
	seg_maybe_close(sp, w->seg);
	blk_trim(sp);
	free(w);
	if (--set->fl_inflight == 0 && set->fl_phase == FL_WRITE)
		fl_writes_done(set);
}

static void wop_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct wop *w = container_of(op, struct wop, op);
	struct spool_set *set = w->sp->set;

	/* a linked write's CQE only comes when it failed or was short */
	if (set->fl_linked == w)
		fl_unlink(set);
	if (res > 0 && w->done + (uint64_t)res < w->total) {
		/* short write (typically just before ENOSPC): go on */
		w->done += (uint64_t)res;
		wop_submit(set, w);
		return;
	}
	wop_done(w, res);
}

/* One writev per run of pending blocks of one segment, built and
 * appended to set->fl_new (queued by fl_queue_writes()). */
static int sp_build_writes(struct spool *sp)
{
	struct spool_set *set = sp->set;
	struct blk *b = sp->bhead;
	int nops = 0;

	while (b) {
		struct blk *first, *x;
		uint32_t n = 0;
		bool hdr;
		struct wop *w;
		int k = 0;

		if (b->state != B_PENDING) {
			b = b->next;
			continue;
		}
		first = b;
		for (x = b; x && x->state == B_PENDING && x->seg == first->seg &&
		     n < RUN_MAX_BLKS; x = x->next) {
			if (n && x->file_off != b->file_off + b->len)
				break;
			b = x;
			n++;
		}
		b = x;
		hdr = first->file_off == SPF_SEG_HDR;
		w = calloc(1, sizeof(*w) + 2 * (n + 1) * sizeof(struct iovec));
		if (!w) {
			/* stays pending for the next flush, and this one
			 * fails: its journal must not claim these records */
			if (!set->fl_err)
				set->fl_err = -ENOMEM;
			return nops;
		}
		w->op.fn = wop_fn;
		w->sp = sp;
		w->seg = first->seg;
		w->first = first;
		w->nblk = n;
		w->off = hdr ? 0 : first->file_off;
		if (hdr) {
			w->iov[k].iov_base = first->seg->hdr;
			w->iov[k].iov_len = SPF_SEG_HDR;
			w->total += SPF_SEG_HDR;
			k++;
		}
		for (x = first; x != b; x = x->next) {
			w->iov[k].iov_base = x->data;
			w->iov[k].iov_len = x->len;
			w->total += x->len;
			k++;
			blk_set_state(sp, x, B_WRITING);
		}
		w->niov = k;
		w->cur = w->iov + k;
		w->seg->busy++;
		sp->inflight++;
		set->fl_inflight++;
		*set->fl_new_tail = w;
		set->fl_new_tail = &w->next_new;
		nops++;
	}
	return nops;
}

/* ---- flush: no space left ------------------------------------------------ */

/* Cuts segment s back to `off` bytes (the frames before stay). */
static void seg_cut(struct spool *sp, struct seg *s, uint64_t off,
		    uint64_t end)
{
	char name[32];
	int fd = s->fd;

	spf_seg_name(name, sizeof(name), s->first);
	if (fd < 0)
		fd = openat(sp->dfd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	/* ftruncate never needs space; if it fails the garbage stays and
	 * the next open skips it */
	if (fd < 0 || ftruncate(fd, (off_t)off) < 0)
		sp_log(sp->set, LOG_WARN, "spool %s: cannot cut %s back to %"
		       PRIu64 " bytes: %s", sp->name, name, off,
		       strerror(errno));
	if (fd >= 0 && fd != s->fd)
		close(fd);
	sp->bytes -= s->size - off;
	sp->set->bytes -= s->size - off;
	s->size = off;
	s->end = end;
	while (s->nidx && s->idx[s->nidx - 1].off >= off)
		s->nidx--;
	s->idx_last = s->nidx ? s->idx[s->nidx - 1].off : 0;
	s->sealed = true;
}

/* A write of this flush failed with ENOSPC/EDQUOT (someone else took the
 * space the reserve kept): every record of the sink from the first one
 * not written on is dropped (dropped_full, marked done), its segment is
 * cut back and sealed, segments made for them are deleted. The newest
 * records go (the disk is full: as drop-newest would have refused them),
 * the ring moves on, nothing half written stays. No write of the set is
 * in flight here. */
static void sp_rewind(struct spool *sp)
{
	struct blk *b, *prev = NULL, *first;
	uint64_t from, lost, later, mid, cut_off;
	struct seg *cut_seg;
	uint32_t i;

	for (first = sp->bhead; first && first->state != B_PENDING;
	     first = first->next)
		prev = first;
	if (!first)
		return;
	from = first->first_seq;
	cut_seg = first->seg;
	cut_off = first->file_off;
	/* the blocks from first on leave (written ones after it too: they
	 * are newer, and no reader got them - visible stops at first) */
	if (prev)
		prev->next = NULL;
	else
		sp->bhead = NULL;
	sp->btail = prev;
	for (b = first; b;) {
		struct blk *n = b->next;

		if (b->state == B_PENDING)
			sp->pending -= b->len;
		if (b->state == B_DONE) {
			sp->done_mem -= b->cap;
		} else {
			sp->unwritten -= b->len;
			b->seg->live--;
		}
		free(b);
		b = n;
	}
	for (i = sp->nsegs; i-- > 0;) {
		struct seg *s = sp->segs[i];

		if (s->first >= from)
			seg_remove(sp, i, true);	/* nothing of it left */
		else if (s == cut_seg)
			seg_cut(sp, s, cut_off, from);
	}
	sp->active = NULL;	/* the next append starts a new segment */
	/* this flush's records (their ring range is released with it):
	 * seq-tied drops, in the checkpoint; those appended after it
	 * started belong to the next flush's ring range: refusals, counted
	 * with that flush's journal - either way a crash before the next
	 * journal cannot count one twice */
	mid = max64(from, min64(sp->flush_end, sp->next_seq));
	lost = rng_count_open(sp, from, mid);
	later = rng_count_open(sp, mid, sp->next_seq);
	sp->st.dropped_full += lost;
	sp->st.refused_full += later;
	rng_add(sp, from, sp->next_seq);
	sp_log_rl(sp->set, RL_WRITE, LOG_ERROR, "spool %s: disk full: %"
		  PRIu64 " records whose write failed were dropped "
		  "(dropped_spool_full)", sp->name, lost + later);
	ck_schedule(sp);
}

/* ---- flush: the drain journal ---------------------------------------- */

static void fl_sync_phase(struct spool_set *set);

static void jr_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct spool_set *set = container_of(op, struct spool_set, jr_op);

	set->inflight--;
	if (res != (int)set->jr_len) {
		int err = res < 0 ? res : -EIO;

		set->stalled = true;
		sp_log_rl(set, RL_WRITE, LOG_ERROR, "spool: drain journal "
			  "write failed: %s (retried)", strerror(-err));
		fl_finish(set, err);
		return;
	}
	set->jr_gen = set->jr->gen;
	fl_sync_phase(set);
}

/* The encoded entry into its slot of the journal file. */
static void jr_queue(struct spool_set *set, struct rx_op *op)
{
	struct io_uring_sqe *sqe = rx_sqe(set->rx, op);

	io_uring_prep_write(sqe, set->jr_fd, set->jr_slot, set->jr_len,
			    (set->jr->gen & 1) * SPF_JR_SLOT);
	set->inflight++;
}

/* The journal's next entry into jr_slot: its length, 0 = too big. */
static uint32_t jr_encode(struct spool_set *set)
{
	set->jr->gen = set->jr_gen + 1;
	set->jr_len = (uint32_t)spf_jr_encode(set->jr_slot, set->jr);
	return set->jr_len;
}

/* The journal linked behind the flush's one write: its CQE also says
 * that write completed in full (the link runs it only then). */
static void jr_link_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct spool_set *set = container_of(op, struct spool_set,
					     jr_link_op);
	struct wop *w = set->fl_linked;

	/* cancelled: the write failed and its own CQE said so (a kernel
	 * that posts the cancelled link's CQE too: nothing to do) */
	if (res == -ECANCELED || !w)
		return;
	set->fl_linked = NULL;
	wop_done(w, (int)(w->total - w->done));
	jr_fn(&set->jr_op, res, flags);
}

/* The older slot of the journal: where the ring stands, now that every
 * write of this flush completed. */
static void jr_submit(struct spool_set *set)
{
	set->fl_phase = FL_JOURNAL;
	jr_encode(set);
	if (set->jr_fd < 0 && set->jr_len) {
		/* none yet (the disk was full at open): made now */
		int fd = spf_slot_file_create(set->dfd, SPF_JOURNAL_NAME,
					      SPF_JOURNAL_TMP, SPF_JR_SLOT,
					      set->jr_slot, set->jr_len);

		if (fd >= 0) {
			set->jr_fd = fd;
			set->jr_gen = set->jr->gen;
			fl_sync_phase(set);
			return;
		}
		set->jr_len = 0;
	}
	if (!set->jr_len) {
		fl_finish(set, set->jr_fd < 0 ? -ENOSPC : -EOVERFLOW);
		return;
	}
	set->jr_op.fn = jr_fn;
	jr_queue(set, &set->jr_op);
}

/* ---- flush: fdatasync and completion ------------------------------------ */

static void sop_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct sop *o = container_of(op, struct sop, op);
	struct spool *sp = o->sp;
	struct spool_set *set = sp->set;
	struct blk *b;

	if (res < 0) {
		sp->st.write_errors++;
		set->stalled = true;
		if (!set->fl_err)
			set->fl_err = res;
		sp_log_rl(set, RL_WRITE, LOG_ERROR, "spool %s: fdatasync "
			  "failed: %s (data rewritten)", sp->name,
			  strerror(-res));
	}
	if (!o->seg) {
		if (res < 0)
			sp->dir_dirty = true;
	} else {
		/* after a failed fdatasync the page cache may have dropped
		 * the data: write it again from memory */
		for (b = sp->bhead; b; b = b->next)
			if (b->seg == o->seg && b->state == B_UNSYNCED)
				blk_set_state(sp, b, res < 0 ? B_PENDING :
					      B_DONE);
		o->seg->busy--;
		seg_maybe_close(sp, o->seg);
	}
	sp->inflight--;
	free(o);
	blk_trim(sp);
	if (--set->fl_inflight == 0 && set->fl_phase == FL_SYNC)
		fl_finish(set, set->fl_err);
}

static bool sop_submit(struct spool *sp, struct seg *s)
{
	struct spool_set *set = sp->set;
	struct io_uring_sqe *sqe;
	struct sop *o = calloc(1, sizeof(*o));

	if (!o)
		return false;
	o->op.fn = sop_fn;
	o->sp = sp;
	o->seg = s;
	sqe = rx_sqe(set->rx, &o->op);
	if (s) {
		io_uring_prep_fsync(sqe, s->fd, IORING_FSYNC_DATASYNC);
		s->busy++;
	} else {
		io_uring_prep_fsync(sqe, sp->dfd, 0);
		sp->dir_dirty = false;
	}
	sp->inflight++;
	set->fl_inflight++;
	return true;
}

static void fl_sync_submit(struct spool_set *set)
{
	struct spool *sp;

	set->fl_phase = FL_SYNC;
	set->last_sync_ns = now_ns(CLOCK_MONOTONIC);
	for (sp = set->sinks; sp; sp = sp->next) {
		uint32_t i;

		for (i = 0; i < sp->nsegs; i++) {
			struct seg *s = sp->segs[i];
			struct blk *b;

			for (b = sp->bhead; b; b = b->next)
				if (b->seg == s && b->state == B_UNSYNCED)
					break;
			if (b && !sop_submit(sp, s) && !set->fl_err)
				set->fl_err = -ENOMEM;
		}
		if (sp->dir_dirty && !sop_submit(sp, NULL) && !set->fl_err)
			set->fl_err = -ENOMEM;
	}
	if (!set->fl_inflight)
		fl_finish(set, set->fl_err);
}

static void fl_timer_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct spool_set *set = container_of(op, struct spool_set, fl_timer);

	set->inflight--;
	set->fl_timer_armed = false;
	if (res == -ECANCELED || set->closing)
		return;
	fl_sync_submit(set);
}

static bool set_needs_sync(const struct spool_set *set)
{
	const struct spool *sp;
	const struct blk *b;

	for (sp = set->sinks; sp; sp = sp->next) {
		if (sp->dir_dirty)
			return true;
		for (b = sp->bhead; b; b = b->next)
			if (b->state == B_UNSYNCED)
				return true;
	}
	return false;
}

/* After the writes (and the journal): fdatasync when asked, at most one
 * per sync_interval. */
static void fl_sync_phase(struct spool_set *set)
{
	uint64_t now, due;

	if (set->o.durability != DUR_FDATASYNC || !set_needs_sync(set)) {
		fl_finish(set, 0);
		return;
	}
	now = now_ns(CLOCK_MONOTONIC);
	due = set->last_sync_ns + set->o.sync_interval_ms * 1000000ull;
	if (set->last_sync_ns && now < due) {
		struct io_uring_sqe *sqe;

		set->fl_phase = FL_WAIT;
		set->fl_timer.fn = fl_timer_fn;
		ns_to_ts(&set->fl_ts, due - now);
		sqe = rx_sqe(set->rx, &set->fl_timer);
		io_uring_prep_timeout(sqe, &set->fl_ts, 0, 0);
		set->fl_timer_armed = true;
		set->inflight++;
		return;
	}
	fl_sync_submit(set);
}

static void fl_writes_done(struct spool_set *set)
{
	struct spool *sp;

	if (set->fl_nospace) {
		for (sp = set->sinks; sp; sp = sp->next)
			if (sp->wr_nospace)
				sp_rewind(sp);
		set->fl_nospace = false;
		disk_measure(set);
	}
	if (set->fl_err) {
		fl_finish(set, set->fl_err);
		return;
	}
	if (set->jr_want) {
		jr_submit(set);
		return;
	}
	fl_sync_phase(set);
}

/* A sink's readable end: everything before the first block that is not
 * yet durable per the durability setting. */
static void sp_update_visible(struct spool *sp)
{
	struct blk *b;
	uint64_t v = mem_first(sp);

	for (b = sp->bhead; b && b->state == B_DONE; b = b->next)
		v = b->end_seq;
	sp->visible = max64(sp->visible, v);
}

/* The flush is over: the callback, from a completion (never inside
 * spool_set_flush_mark()); the last thing its caller does. */
static void fl_complete(struct spool_set *set)
{
	void (*done)(void *arg, int err) = set->fl_done;
	void *arg = set->fl_arg;
	int err = set->fl_err;
	struct spool *sp;

	for (sp = set->sinks; sp; sp = sp->next)
		sp_update_visible(sp);
	if (!err)
		set->stalled = false;
	set->fl_phase = FL_IDLE;
	set->fl_done = NULL;
	if (done && !set->closing)
		done(arg, err);
}

static void fl_nop_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct spool_set *set = container_of(op, struct spool_set, fl_nop);

	set->inflight--;
	fl_complete(set);
}

/* The callback always runs from the reactor, never inside
 * spool_set_flush(): from a completion that ends the flush it runs at
 * once (every caller of fl_finish() outside spool_set_flush_mark() is
 * the tail of a completion callback); inside the call it is posted as a
 * NOP completion. */
static void fl_finish(struct spool_set *set, int err)
{
	struct io_uring_sqe *sqe;

	set->fl_phase = FL_FINISH;
	set->fl_err = err;
	if (!set->fl_in_call) {
		fl_complete(set);
		return;
	}
	set->fl_nop.fn = fl_nop_fn;
	sqe = rx_sqe(set->rx, &set->fl_nop);
	io_uring_prep_nop(sqe);
	set->inflight++;
}

/* The trickle case, one write and a journal: the journal is linked
 * behind the write (IOSQE_IO_LINK: io-wq runs it in the same worker, and
 * only if the write completed in full) and the write's own CQE is
 * skipped on success (IOSQE_CQE_SKIP_SUCCESS): one CQE, one wake-up of
 * this thread per flush. Several writes keep the two phases (DESIGN.md,
 * "linked flush"). */
static bool fl_link_journal(struct spool_set *set, struct wop *w)
{
	struct io_uring_sqe *sqe;

	if (!set->rx->can_skip_cqe || !w || w->next_new || !set->jr_want ||
	    set->fl_err || set->jr_fd < 0 || !jr_encode(set) ||
	    rx_reserve(set->rx, 2) < 0)
		return false;
	sqe = wop_submit(set, w);
	sqe->flags |= IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
	set->jr_link_op.fn = jr_link_fn;
	jr_queue(set, &set->jr_link_op);
	set->fl_linked = w;
	set->fl_phase = FL_JOURNAL;
	return true;
}

/* Queues the writes sp_build_writes() made for this flush. */
static void fl_queue_writes(struct spool_set *set)
{
	struct wop *w = set->fl_new;

	set->fl_new = NULL;
	set->fl_new_tail = &set->fl_new;
	if (fl_link_journal(set, w))
		return;
	for (; w; w = w->next_new)
		wop_submit(set, w);
}

/* The journal entry for this flush: the mark, and each sink's end. */
static void jr_prepare(struct spool_set *set, const struct spool_mark *m)
{
	struct spf_journal *j = set->jr;
	struct spool *sp;

	j->ring_id = m->ring_id;
	j->ring_pos = m->ring_pos;
	j->blob_len = (uint32_t)min64(m->blob_len, SPF_JR_BLOB_MAX);
	if (m->blob && j->blob_len)
		memcpy(j->blob, m->blob, j->blob_len);
	j->nsinks = 0;
	for (sp = set->sinks; sp && j->nsinks < SPF_JR_SINKS_MAX;
	     sp = sp->next) {
		snprintf(j->sinks[j->nsinks].name,
			 sizeof(j->sinks[j->nsinks].name), "%s", sp->name);
		j->sinks[j->nsinks].end_seq = sp->next_seq;
		j->nsinks++;
	}
}

int spool_set_flush_mark(struct spool_set *set,
			 void (*done)(void *arg, int err), void *arg,
			 const struct spool_mark *m)
{
	struct spool *sp;

	if (set->fl_phase != FL_IDLE)
		return -EBUSY;
	set->fl_done = done;
	set->fl_arg = arg;
	set->fl_err = 0;
	set->fl_inflight = 0;
	set->fl_nospace = false;
	set->jr_want = m && set->jr;
	if (set->jr_want)
		jr_prepare(set, m);
	/* from now on the journal found at open describes history: the
	 * spools opened later (a reload) are not cut by it */
	set->jr_cut_ok = false;
	set->fl_in_call = true;
	disk_refresh(set);
	set->fl_phase = FL_WRITE;
	set->fl_new = NULL;
	set->fl_new_tail = &set->fl_new;
	for (sp = set->sinks; sp; sp = sp->next) {
		sp->wr_nospace = false;
		sp->flush_end = sp->next_seq;
		sp_build_writes(sp);
	}
	fl_queue_writes(set);
	if (!set->fl_inflight)
		fl_writes_done(set);
	set->fl_in_call = false;
	return 0;
}

int spool_set_flush(struct spool_set *set, void (*done)(void *arg, int err),
		    void *arg)
{
	return spool_set_flush_mark(set, done, arg, NULL);
}

int spool_set_loaded_mark(const struct spool_set *set, struct spool_mark *m)
{
	const struct spf_journal *j = set->jr_loaded;

	if (!j)
		return 0;
	m->ring_id = j->ring_id;
	m->ring_pos = j->ring_pos;
	m->blob = j->blob;
	m->blob_len = j->blob_len;
	return 1;
}

uint64_t spool_set_pending(const struct spool_set *set)
{
	const struct spool *sp;
	uint64_t n = 0;

	for (sp = set->sinks; sp; sp = sp->next)
		n += sp->pending;
	return n;
}

uint64_t spool_pending(const struct spool *sp)
{
	return sp->pending;
}

int spool_set_stalled(const struct spool_set *set)
{
	return set->stalled;
}

/* ---- batches ----------------------------------------------------------- */

void spool_batch_init(struct spool_batch *b)
{
	memset(b, 0, sizeof(*b));
}

void spool_batch_free(struct spool_batch *b)
{
	free(b->recs);
	free(b->buf);
	memset(b, 0, sizeof(*b));
}

static int batch_reserve_recs(struct spool_batch *b, uint32_t n)
{
	if (n > b->cap) {
		uint32_t ncap = b->cap ? b->cap : 64;
		struct spool_rec *r;

		while (ncap < n)
			ncap *= 2;
		r = realloc(b->recs, ncap * sizeof(*r));
		if (!r)
			return -ENOMEM;
		b->recs = r;
		b->cap = ncap;
	}
	return 0;
}

static int batch_reserve_buf(struct spool_batch *b, uint64_t n)
{
	/* never NULL, even for empty records: b->buf + off stays defined */
	if (n > b->buf_cap || !b->buf) {
		uint64_t ncap = b->buf_cap ? b->buf_cap : 4096;
		uint8_t *p;

		while (ncap < n)
			ncap *= 2;
		p = realloc(b->buf, ncap);
		if (!p)
			return -ENOMEM;
		b->buf = p;
		b->buf_cap = ncap;
	}
	return 0;
}

/* From the blocks: copies; data pointers are set at the end because the
 * buffer may move while it grows. */
static int mem_read(struct spool *sp, uint64_t from, uint64_t limit,
		    uint32_t max_events, uint64_t max_bytes,
		    struct spool_batch *b)
{
	uint64_t bytes = 0;
	struct blk *k;
	uint32_t i;

	for (k = sp->bhead; k; k = k->next) {
		uint32_t p;

		if (k->end_seq <= from)
			continue;
		for (p = 0; p < k->len;
		     p += (uint32_t)spf_frame_len(spf_get32(k->data + p + 4))) {
			const uint8_t *h = k->data + p;
			uint32_t len = spf_get32(h + 4);
			uint64_t seq = spf_get64(h + 8);

			/* done ones (a range acknowledged before a
			 * restart) are not handed out again */
			if (seq < from || rng_done(sp, seq))
				continue;
			if (seq >= limit || b->n >= max_events ||
			    (b->n && bytes + len > max_bytes))
				goto out;
			if (batch_reserve_recs(b, b->n + 1) ||
			    batch_reserve_buf(b, b->buf_len + len))
				return -ENOMEM;
			memcpy(b->buf + b->buf_len, h + SPF_FRAME_HDR, len);
			b->recs[b->n].seq = seq;
			b->recs[b->n].len = len;
			b->recs[b->n].data = (const uint8_t *)(uintptr_t)b->buf_len;
			b->buf_len += len;
			bytes += len;
			b->n++;
		}
	}
out:
	for (i = 0; i < b->n; i++)
		b->recs[i].data = b->buf + (uintptr_t)b->recs[i].data;
	b->next = b->n ? b->recs[b->n - 1].seq + 1 : max64(from, b->next);
	if (b->n)
		sp_read_to(sp, b->next);
	sp->st.reads_mem++;
	return 0;
}

/* Seqs that a read finds missing from the files: lost (bit rot after
 * recovery, or a gap recovery already marked). Counted once, marked done
 * so the watermark can pass them. */
static void rd_lost(struct spool *sp, uint64_t a, uint64_t b)
{
	uint64_t n;

	if (a >= b)
		return;
	n = rng_count_open(sp, a, b);
	if (!n)
		return;
	sp->st.corrupt += n;
	rng_add(sp, a, b);
	sp_log(sp->set, LOG_WARN, "spool %s: %" PRIu64 " damaged or missing "
	       "records skipped while reading (within seqs %" PRIu64 "..%"
	       PRIu64 ")", sp->name, n, a, b - 1);
	ck_schedule(sp);
}

static uint64_t sp_read_limit(const struct spool *sp)
{
	return min64(sp->visible, mem_first(sp));
}

/* Bytes of s that are on disk and may be read: up to its first block
 * still in memory (which is served from memory anyway). */
static uint64_t seg_read_end(const struct spool *sp, const struct seg *s)
{
	const struct blk *b;

	for (b = sp->bhead; b; b = b->next)
		if (b->seg == s)
			return b->file_off;
	return s->size;
}

static void rd_finish(struct rd *r, int err)
{
	struct spool *sp = r->sp;
	void (*done)(void *arg, int err) = r->done;
	void *arg = r->arg;

	if (r->seg) {
		r->seg->refs--;
		seg_maybe_close(sp, r->seg);
	}
	sp->inflight--;
	if (err)
		r->b->n = 0;
	if (r->b->n) {
		r->b->next = r->b->recs[r->b->n - 1].seq + 1;
		sp_read_to(sp, r->b->next);
	} else {
		r->b->next = max64(r->b->next, r->from);
	}
	if (!err && r->b->n && r->seg && r->end_off) {
		/* the next sequential read starts right here */
		sp->hint_seg = r->seg;
		sp->hint_seq = r->b->next;
		sp->hint_off = r->off + r->end_off;
	}
	free(r);
	sp_gc(sp);
	done(arg, err);
}

/* The read window: what max_events records of this segment's average
 * size need (+25 %), within max_bytes; plus the distance to the record
 * when starting from a sparse index point rather than the exact offset
 * where the previous read ended. A window that proves short only makes
 * the batch smaller (or is enlarged for a single big record). */
static uint32_t rd_window(const struct rd *r, const struct seg *s,
			  bool exact)
{
	uint64_t per = 1024, w;

	if (s->end > s->first && s->size > SPF_SEG_HDR)
		per = (s->size - SPF_SEG_HDR) / (s->end - s->first) + 1;
	w = min64(r->max_bytes + (uint64_t)r->max_events * (SPF_FRAME_HDR + 8),
		  (uint64_t)r->max_events * per * 5 / 4) + 2 * SPF_FRAME_HDR;
	if (!exact)
		w += IDX_GRAN;
	return (uint32_t)min64(max64(w, READ_MIN), READ_MAX);
}

/* A segment file that vanished: what it held is lost (counted); the
 * read goes on after it, and it is forgotten when nothing uses it. */
static uint64_t rd_drop_missing(struct spool *sp, struct seg *s,
				uint64_t from)
{
	struct seg *n = segs_next(sp, s);
	uint64_t to = max64(n ? n->first : s->end, from + 1);
	char name[32];

	spf_seg_name(name, sizeof(name), s->first);
	sp_log(sp->set, LOG_ERROR, "spool %s: %s disappeared", sp->name,
	       name);
	rd_lost(sp, from, to);
	if (seg_idle(sp, s) && s->end <= sp->acked)
		seg_remove(sp, segs_index(sp, s), false);
	return to;
}

/* Positions r on the next readable record at or after r->from: returns
 * 1 when the rest must come from memory (or nothing is left), 0 when a
 * disk read of r->seg at r->off is set up, -errno on error. */
static int rd_locate(struct rd *r)
{
	struct spool *sp = r->sp;
	struct seg *s;

	for (;;) {
		uint64_t limit = sp_read_limit(sp), end;
		bool exact;

		r->from = max64(r->from, sp->acked);
		if (r->from >= limit)
			return 1;
		s = segs_find(sp, r->from);
		if (!s) {
			/* before the first segment: nothing there */
			s = sp->nsegs ? sp->segs[0] : NULL;
			if (!s || s->first >= limit) {
				rd_lost(sp, r->from, limit);
				r->from = limit;
				return 1;
			}
			rd_lost(sp, r->from, s->first);
			r->from = s->first;
		}
		if (r->from >= s->end) {
			struct seg *n = segs_next(sp, s);
			uint64_t to = n ? min64(n->first, limit) : limit;

			rd_lost(sp, r->from, to);
			r->from = to;
			continue;
		}
		exact = s == sp->hint_seg && r->from == sp->hint_seq;
		r->off = exact ? sp->hint_off : seg_idx_find(s, r->from);
		end = seg_read_end(sp, s);
		if (r->off + SPF_FRAME_HDR > end) {
			struct seg *n = segs_next(sp, s);
			uint64_t to = n ? min64(n->first, limit) : limit;

			rd_lost(sp, r->from, to);
			r->from = to;
			continue;
		}
		if (r->seg != s) {
			int ret;

			if (r->seg) {
				r->seg->refs--;
				seg_maybe_close(sp, r->seg);
			}
			r->seg = s;
			s->refs++;
			ret = seg_open_fd(sp, s);
			if (ret == -ENOENT) {
				/* deleted behind our back: its records are
				 * lost, delivery goes on after them */
				r->seg = NULL;
				s->refs--;
				r->from = rd_drop_missing(sp, s, r->from);
				continue;
			}
			if (ret)
				return ret;
			sp->last_read = s;
		}
		r->len = (uint32_t)min64(end - r->off, rd_window(r, s, exact));
		return 0;
	}
}


static void rd_fn(struct rx_op *op, int res, uint32_t flags);

static int rd_submit(struct rd *r)
{
	struct io_uring_sqe *sqe;

	if (batch_reserve_buf(r->b, r->len))
		return -ENOMEM;
	r->op.fn = rd_fn;
	sqe = rx_sqe(r->sp->set->rx, &r->op);
	io_uring_prep_read(sqe, r->seg->fd, r->b->buf, r->len, r->off);
	r->sp->st.reads_disk++;
	return 0;
}

enum { RD_DONE = 1, RD_MEM, RD_SLIDE, RD_NEXT };

/* Parses the window: RD_DONE (records in b), RD_MEM (the rest is in
 * memory), RD_SLIDE (read on at r->off), RD_NEXT (this segment is
 * exhausted: locate from r->from), 0 (a bigger window was submitted) or
 * -errno. */
static int rd_parse(struct rd *r, uint32_t got)
{
	struct spool *sp = r->sp;
	struct spool_batch *b = r->b;
	uint64_t limit = sp_read_limit(sp), bytes = 0, prev = 0;
	uint64_t seg_end = seg_read_end(sp, r->seg);
	uint32_t p = 0, need = 0;
	bool to_mem = false;

	b->n = 0;
	while ((uint64_t)p + SPF_FRAME_HDR <= got) {
		const uint8_t *h = b->buf + p;
		uint64_t seq, flen;
		uint32_t len;

		if (!spf_frame_hdr_ok(h, &len, &seq) || seq <= prev ||
		    seq < r->seg->first) {
			p += 8;
			continue;
		}
		flen = spf_frame_len(len);
		if (p + flen > got) {
			if (r->off + p + flen > seg_end) {
				p += 8;
				continue;
			}
			if (seq < r->from) {
				/* not wanted: the header is trusted (hcrc),
				 * step over it without reading it */
				prev = seq;
				p += (uint32_t)flen;
				break;
			}
			need = (uint32_t)flen;	/* a bigger window */
			break;
		}
		if (!spf_frame_crc_ok(h, len)) {
			p += 8;
			continue;
		}
		prev = seq;
		if (seq < r->from) {
			p += (uint32_t)flen;
			continue;
		}
		if (seq >= limit) {
			to_mem = true;
			break;
		}
		if (rng_done(sp, seq)) {
			/* acknowledged before a restart: not again */
			if (seq > r->expect)
				rd_lost(sp, r->expect, seq);
			r->expect = seq + 1;
			p += (uint32_t)flen;
			continue;
		}
		if (b->n >= r->max_events || (b->n && bytes + len > r->max_bytes))
			break;
		if (seq > r->expect)
			rd_lost(sp, r->expect, seq);
		if (batch_reserve_recs(b, b->n + 1))
			return -ENOMEM;
		b->recs[b->n].seq = seq;
		b->recs[b->n].len = len;
		b->recs[b->n].data = b->buf + p + SPF_FRAME_HDR;
		b->n++;
		bytes += len;
		r->expect = seq + 1;
		p += (uint32_t)flen;
		r->end_off = p;
	}
	if (b->n)
		return RD_DONE;
	if (to_mem) {
		rd_lost(sp, r->expect, limit);
		return RD_MEM;
	}
	if (need) {
		/* the first record is bigger than the window */
		r->off += p;
		r->len = (uint32_t)min64(max64(need, r->len), seg_end - r->off);
		return rd_submit(r);
	}
	if (r->off + got >= seg_end || got < SPF_FRAME_HDR) {
		/* this segment has nothing more at or after from */
		struct seg *n = segs_next(sp, r->seg);
		uint64_t to = n ? min64(n->first, limit) : limit;

		rd_lost(sp, r->expect, to);
		r->from = r->expect = max64(to, r->from);
		return RD_NEXT;
	}
	/* nothing whole in this window yet: slide it (p > 0 here, since
	 * the loop ran over at least SPF_FRAME_HDR bytes) */
	r->off += p;
	r->len = (uint32_t)min64(rd_window(r, r->seg, true), seg_end - r->off);
	return RD_SLIDE;
}

static void rd_skip_unreadable(struct rd *r)
{
	struct seg *s = r->seg, *n = segs_next(r->sp, s);
	uint64_t to = n ? n->first : s->end;
	uint32_t i;

	for (i = 0; i < s->nidx; i++)
		if (s->idx[i].off > r->off && s->idx[i].seq > r->from) {
			to = s->idx[i].seq;
			break;
		}
	to = max64(to, r->from + 1);
	rd_lost(r->sp, r->from, to);
	r->from = r->expect = to;
}

static void rd_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct rd *r = container_of(op, struct rd, op);
	struct spool *sp = r->sp;
	int ret;

	if (res == -EIO || res == -EBADMSG) {
		/* an unreadable spot of the disk: the records up to the next
		 * index point are lost (counted), delivery goes on */
		sp_log(sp->set, LOG_ERROR, "spool %s: read error at offset %"
		       PRIu64 ": %s", sp->name, r->off, strerror(-res));
		rd_skip_unreadable(r);
		ret = RD_NEXT;
	} else if (res < 0) {
		sp_log(sp->set, LOG_ERROR, "spool %s: read failed: %s",
		       sp->name, strerror(-res));
		rd_finish(r, res);
		return;
	} else {
		ret = rd_parse(r, (uint32_t)res);
	}
	if (ret == RD_SLIDE) {
		ret = rd_submit(r);
	} else if (ret == RD_NEXT) {
		ret = rd_locate(r);
		if (ret == 0)
			ret = rd_submit(r);
		else if (ret > 0)
			ret = RD_MEM;
	}
	if (ret == 0)
		return;			/* another read is on its way */
	if (ret == RD_MEM) {
		/* the rest is in the tail blocks (or nothing is left) */
		r->b->n = 0;
		r->b->buf_len = 0;
		ret = mem_read(sp, max64(r->from, mem_first(sp)),
			       sp->visible, r->max_events, r->max_bytes, r->b);
	}
	rd_finish(r, ret < 0 ? ret : 0);
}

int spool_read(struct spool *sp, uint64_t from, uint32_t max_events,
	       uint64_t max_bytes, struct spool_batch *b,
	       void (*done)(void *arg, int err), void *arg)
{
	struct rd *r;
	int ret;

	b->n = 0;
	b->buf_len = 0;
	from = max64(from, sp->acked);
	b->next = from;
	if (!max_events || from >= sp->visible)
		return 1;
	if (from >= mem_first(sp)) {
		ret = mem_read(sp, from, sp->visible, max_events, max_bytes, b);
		return ret < 0 ? ret : 1;
	}
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->sp = sp;
	r->b = b;
	r->from = r->expect = from;
	r->max_events = max_events;
	r->max_bytes = max_bytes;
	r->done = done;
	r->arg = arg;
	ret = rd_locate(r);
	if (ret == 0)
		ret = rd_submit(r);
	if (ret == 0) {
		sp->inflight++;
		return 0;
	}
	if (r->seg) {
		r->seg->refs--;
		seg_maybe_close(sp, r->seg);
	}
	from = r->from;
	free(r);
	if (ret < 0)
		return ret;
	/* everything left is in memory (or nothing is) */
	ret = mem_read(sp, max64(from, mem_first(sp)), sp->visible,
		       max_events, max_bytes, b);
	return ret < 0 ? ret : 1;
}

/* ---- ack ---------------------------------------------------------------- */

uint64_t spool_ack_n(struct spool *sp, uint64_t first, uint64_t n)
{
	uint64_t old = sp->acked, end, newly;

	if (first + n < first)
		n = UINT64_MAX - first;
	end = min64(first + n, sp->next_seq);
	/* below what a previous broker had read: sent again after its
	 * crash (it had not checkpointed them done) */
	if (first < sp->resend_end)
		sp->st.redelivered += rng_count_open(sp, first,
						     min64(end, sp->resend_end));
	newly = rng_add(sp, first, end);
	if (sp->acked != old)
		blk_trim(sp);
	if (newly)
		ck_schedule(sp);
	return newly;
}

void spool_ack(struct spool *sp, uint64_t first, uint64_t n)
{
	spool_ack_n(sp, first, n);
}

void spool_set_base(struct spool *sp, const uint64_t *v, uint32_t n)
{
	n = (uint32_t)min64(n, SPF_CK_BASE_MAX);
	memcpy(sp->base, v, n * sizeof(*v));
	sp->nbase = n;
}

uint64_t spool_refused(const struct spool *sp)
{
	return sp->st.refused_full;
}

int spool_of_ring(const struct spool *sp)
{
	return sp->ck_this_ring;
}

uint32_t spool_base(const struct spool *sp, uint64_t *v, uint32_t max)
{
	uint32_t n = (uint32_t)min64(sp->nbase_loaded, max);

	memcpy(v, sp->base_loaded, n * sizeof(*v));
	return n;
}

static void sp_wait(struct spool *sp, bool (*cond)(const struct spool *sp))
{
	uint64_t end = now_ns(CLOCK_MONOTONIC) + CLOSE_WAIT_NS;

	while (!cond(sp) && now_ns(CLOCK_MONOTONIC) < end)
		if (rx_run(sp->set->rx, 50000000ull) < 0)
			break;
}

static bool ck_idle(const struct spool *sp)
{
	return !sp->ck_inflight;
}

int spool_sync_ack(struct spool *sp)
{
	int ret;

	sp_wait(sp, ck_idle);
	if (sp->ck_inflight)
		return -ETIMEDOUT;
	if (sp->ck_fd >= 0 && sp->durable_acked == sp->acked &&
	    !sp->ck_dirty && sp->ck_next_durable == ck_next_seq(sp))
		return 0;
	ret = ck_write_now(sp);
	if (ret)
		return ret;
	sp_gc(sp);
	return 0;
}

uint64_t spool_next_seq(const struct spool *sp)
{
	return sp->next_seq;
}

uint64_t spool_acked(const struct spool *sp)
{
	return sp->acked;
}

uint64_t spool_visible(const struct spool *sp)
{
	return sp->visible;
}

const char *spool_name(const struct spool *sp)
{
	return sp->name;
}

/* ---- stats --------------------------------------------------------------- */

void spool_get_stats(const struct spool *sp, struct spool_stats *st)
{
	const struct blk *b;
	uint64_t qb = 0;
	uint32_t i;

	*st = sp->st;
	/* the totals since the ring's counters started */
	st->corrupt -= min64(sp->epoch[0], st->corrupt);
	st->dropped_full -= min64(sp->epoch[1], st->dropped_full);
	st->redelivered -= min64(sp->epoch[2], st->redelivered);
	st->mem_bytes = sizeof(*sp) + sp->segs_cap * sizeof(*sp->segs) +
			sp->rng_cap * sizeof(*sp->rng);
	for (b = sp->bhead; b; b = b->next)
		st->mem_bytes += sizeof(*b) + b->cap;
	for (i = 0; i < sp->nsegs; i++)
		st->mem_bytes += sizeof(struct seg) +
				 sp->segs[i]->idx_cap * sizeof(struct idx_ent);
	st->bytes = sp->bytes;
	st->segments = sp->nsegs;
	st->disk_free = sp->set->disk_free;
	st->queued_events = sp->next_seq - sp->acked;
	for (i = 0; i < sp->nrng; i++)
		st->queued_events -= sp->rng[i].b - sp->rng[i].a;
	/* frame bytes not yet acknowledged, to the index granularity */
	for (i = 0; i < sp->nsegs; i++) {
		const struct seg *s = sp->segs[i];

		if (s->end <= sp->acked)
			continue;
		if (s->first >= sp->acked)
			qb += s->size - SPF_SEG_HDR;
		else
			qb += s->size - seg_idx_find(s, sp->acked);
	}
	st->queued_bytes = qb;
}

void spool_set_get_stats(const struct spool_set *set, struct spool_stats *st)
{
	const struct spool *sp;

	memset(st, 0, sizeof(*st));
	for (sp = set->sinks; sp; sp = sp->next) {
		struct spool_stats s;

		spool_get_stats(sp, &s);
		st->bytes += s.bytes;
		st->segments += s.segments;
		st->queued_events += s.queued_events;
		st->queued_bytes += s.queued_bytes;
		st->recovered += s.recovered;
		st->corrupt += s.corrupt;
		st->truncated_bytes += s.truncated_bytes;
		st->dropped_full += s.dropped_full;
		st->refused_full += s.refused_full;
		st->redelivered += s.redelivered;
		st->cut_records += s.cut_records;
		st->ck_writes += s.ck_writes;
		st->write_errors += s.write_errors;
		st->foreign += s.foreign;
		st->reads_mem += s.reads_mem;
		st->reads_disk += s.reads_disk;
		st->mem_bytes += s.mem_bytes;
	}
	st->disk_free = set->disk_free;
}

/* ---- set ------------------------------------------------------------------ */

static int mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	char *p;

	if (strlen(path) >= sizeof(buf))
		return -ENAMETOOLONG;
	strcpy(buf, path);
	for (p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* ---- directories we trust ----------------------------------------------
 *
 * The spool directory and every sink directory must be a directory (not
 * a symlink, not a file), owned by our euid, with no group or other bits
 * (0700): anything else may have been made or prepared by someone else
 * (a symlink planted where we write, files we would adopt). Such an
 * entry is never used: it is renamed to "<name>~aside" (".1", ".2"...
 * when taken; '~' is not a sink-name character, so no sink can collide),
 * logged, and a fresh 0700 directory is made in its place. */

static int dir_move_aside(int pfd, const char *name, char *to, size_t tolen)
{
	int i;

	for (i = 0; i < 100; i++) {
		if (i)
			snprintf(to, tolen, "%s" SPF_ASIDE ".%d", name, i);
		else
			snprintf(to, tolen, "%s" SPF_ASIDE, name);
		if (renameat2(pfd, name, pfd, to, RENAME_NOREPLACE) == 0)
			return 0;
		if (errno != EEXIST)
			return -errno;
	}
	return -EEXIST;
}

/* Why the directory open at fd (or the failed open, err) is not ours to
 * use; NULL when it is. */
static const char *dir_untrusted(int fd, int err, char *buf, size_t len)
{
	struct stat st;

	if (fd < 0)
		return err == ELOOP ? "a symbolic link" : "not a directory";
	if (fstat(fd, &st) < 0)
		return strerror(errno);
	if (st.st_uid != geteuid()) {
		snprintf(buf, len, "owned by uid %u, not by us (uid %u)",
			 (unsigned)st.st_uid, (unsigned)geteuid());
		return buf;
	}
	if (st.st_mode & 077) {
		snprintf(buf, len, "mode %04o, wider than 0700",
			 (unsigned)(st.st_mode & 07777));
		return buf;
	}
	return NULL;
}

/* Opens (creating it 0700 when missing) the directory `name` in pfd,
 * moving an untrusted entry of that name aside first. fd or -errno. */
static int dir_open_trusted(const struct spool_set *set, int pfd,
			    const char *name, const char *label)
{
	char why_buf[96], to[300];
	const char *why;
	int attempt, fd, ret;

	for (attempt = 0; attempt < 3; attempt++) {
		fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			    O_CLOEXEC);
		if (fd < 0 && errno == ENOENT) {
			if (mkdirat(pfd, name, 0700) < 0 && errno != EEXIST)
				return -errno;
			continue;
		}
		if (fd < 0 && errno != ENOTDIR && errno != ELOOP)
			return -errno;
		why = dir_untrusted(fd, errno, why_buf, sizeof(why_buf));
		if (!why)
			return fd;
		if (fd >= 0)
			close(fd);
		ret = dir_move_aside(pfd, name, to, sizeof(to));
		if (ret) {
			sp_log(set, LOG_ERROR, "spool: %s is %s and cannot be "
			       "moved aside: %s", label, why, strerror(-ret));
			return -EPERM;
		}
		sp_log(set, LOG_WARN, "spool: %s was %s: moved aside to %s "
		       "(nothing in it is used), made a new one", label, why,
		       to);
	}
	return -EAGAIN;		/* someone keeps re-creating it */
}

/* spool_dir: the components above it are created (0700) when missing
 * and taken as they are (the operator chose the path); the last one is
 * opened with dir_open_trusted(). */
static int spool_dir_open(const struct spool_set *set, const char *path)
{
	char buf[4096], why_buf[96];
	const char *parent, *name, *why;
	char *slash;
	size_t n = strlen(path);
	int pfd, fd, ret;

	if (n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	while (n > 1 && buf[n - 1] == '/')
		buf[--n] = '\0';
	slash = strrchr(buf, '/');
	if (!slash) {
		parent = ".";
		name = buf;
	} else if (slash == buf) {
		parent = "/";
		name = buf + 1;
	} else {
		*slash = '\0';
		parent = buf;
		name = slash + 1;
	}
	if (!*name || !strcmp(name, ".") || !strcmp(name, "..")) {
		/* "." or "/": nothing to move aside; use it only if ours */
		fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		why = dir_untrusted(fd, 0, why_buf, sizeof(why_buf));
		if (!why)
			return fd;
		close(fd);
		sp_log(set, LOG_ERROR, "spool: %s is %s; refusing it", path,
		       why);
		return -EPERM;
	}
	if (parent != buf || (ret = mkdir_p(parent, 0700)) == 0) {
		pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		ret = pfd < 0 ? -errno : 0;
	}
	if (ret)
		return ret;
	fd = dir_open_trusted(set, pfd, name, path);
	close(pfd);
	return fd;
}

/* The drain journal: the one a previous broker left (kept for the
 * spool_open()s of start-up and the owner's counters), and the file
 * made ready for this one's flushes (created when missing or unusable,
 * with what was found, so a crash before the first flush loses
 * nothing). 0, or -ENOMEM. */
static int jr_open(struct spool_set *set)
{
	struct spf_journal *found;
	int rc;

	set->jr_fd = -1;
	set->jr = calloc(1, sizeof(*set->jr));
	set->jr_slot = calloc(1, SPF_JR_SLOT);
	found = calloc(1, sizeof(*found));
	if (!set->jr || !set->jr_slot || !found) {
		free(found);
		return -ENOMEM;
	}
	rc = spf_jr_load(set->dfd, found);
	if (rc < 0)
		sp_log(set, LOG_WARN, "spool: %s/%s is damaged; ignored (the "
		       "ring is drained again from its head)", set->dir,
		       SPF_JOURNAL_NAME);
	if (rc > 0) {
		set->jr_loaded = found;
		set->jr_gen = found->gen;
		set->jr_cut_ok = set->o.ring_id &&
				 found->ring_id == set->o.ring_id;
		*set->jr = *found;
	} else {
		free(found);
	}
	set->jr_fd = spf_slot_file_open(set->dfd, SPF_JOURNAL_NAME,
					SPF_JR_SLOT);
	if (set->jr_fd < 0) {
		size_t n;

		set->jr->gen = set->jr_gen + 1;
		n = spf_jr_encode(set->jr_slot, set->jr);
		set->jr_fd = n ? spf_slot_file_create(set->dfd,
				SPF_JOURNAL_NAME, SPF_JOURNAL_TMP, SPF_JR_SLOT,
				set->jr_slot, n) : -EOVERFLOW;
		if (set->jr_fd >= 0)
			set->jr_gen = set->jr->gen;
		/* else: made by the first flush (disk full now) */
	}
	return 0;
}

struct spool_set *spool_set_new(struct rx *rx, const struct spool_set_opts *o)
{
	struct spool_set *set;

	if (!rx || !o || !o->dir || !*o->dir) {
		errno = EINVAL;
		return NULL;
	}
	set = calloc(1, sizeof(*set));
	if (!set)
		return NULL;
	set->rx = rx;
	set->o = *o;
	set->dir = strdup(o->dir);
	if (!set->dir) {
		free(set);
		errno = ENOMEM;
		return NULL;
	}
	set->o.dir = set->dir;
	set->dfd = spool_dir_open(set, set->dir);
	if (set->dfd < 0) {
		int e = -set->dfd;

		free(set->dir);
		free(set);
		errno = e;
		return NULL;
	}
	if (!set->o.segment_size)
		set->o.segment_size = DEF_SEGMENT;
	if (set->o.segment_size < SPF_SEG_HDR + SPF_FRAME_HDR + 8)
		set->o.segment_size = SPF_SEG_HDR + SPF_FRAME_HDR + 8;
	if (!set->o.tail_buffer)
		set->o.tail_buffer = DEF_TAIL;
	/* a record must fit a segment with its header and padding */
	set->max_payload = min64((set->o.segment_size - SPF_SEG_HDR -
				  SPF_FRAME_HDR) & ~7ull, SPF_FRAME_LEN_MAX);
	if (jr_open(set) < 0) {
		spool_set_free(set);
		errno = ENOMEM;
		return NULL;
	}
	disk_measure(set);
	return set;
}

static bool set_idle(const struct spool_set *set)
{
	return !set->inflight;
}

void spool_set_free(struct spool_set *set)
{
	uint64_t end;

	if (!set)
		return;
	while (set->sinks)
		spool_close(set->sinks);
	set->closing = true;
	if (set->fl_timer_armed) {
		struct io_uring_sqe *sqe = rx_sqe(set->rx, NULL);

		io_uring_prep_timeout_remove(sqe,
			(uint64_t)(uintptr_t)&set->fl_timer, 0);
	}
	end = now_ns(CLOCK_MONOTONIC) + CLOSE_WAIT_NS;
	while (!set_idle(set) && now_ns(CLOCK_MONOTONIC) < end)
		if (rx_run(set->rx, 50000000ull) < 0)
			break;
	if (!set_idle(set))
		return;		/* ops still point at us: leak, never UAF */
	if (set->jr_fd >= 0)
		close(set->jr_fd);
	free(set->jr);
	free(set->jr_loaded);
	free(set->jr_slot);
	close(set->dfd);
	free(set->dir);
	free(set);
}

/* ---- open / recovery -------------------------------------------------- */

enum { REC_FOREIGN, REC_SEG, REC_SHORT, REC_HDR_DAMAGED };

struct rec_seg {
	uint64_t first;
	char name[SPF_SEG_FNAME_LEN + 1];
	uint8_t state;			/* rec_check(): REC_* */
	uint64_t size, created;
	uint8_t hdr[SPF_SEG_HDR];
};

struct rec_ctx {
	struct spool *sp;
	struct seg *seg;
	uint64_t expect;		/* next seq expected (0: none yet) */
	bool damaged;
	bool after_damage;
	uint64_t ck_acked;		/* count recovered from here */
	uint64_t cut_seq;		/* frames from here: a flush the
					 * previous broker did not finish
					 * (0: no cut) */
	uint64_t cut_first, cut_off;	/* where the first of them is */
	uint64_t cut_n;
	struct range *gaps;		/* lost seqs; a == b: 1 damaged */
	uint32_t ngaps, gaps_cap;
	bool oom;
};

static void rec_gap(struct rec_ctx *c, uint64_t a, uint64_t b)
{
	if (c->ngaps == c->gaps_cap) {
		uint32_t ncap = c->gaps_cap ? c->gaps_cap * 2 : 16;
		struct range *n = realloc(c->gaps, ncap * sizeof(*n));

		if (!n) {
			c->oom = true;
			return;
		}
		c->gaps = n;
		c->gaps_cap = ncap;
	}
	c->gaps[c->ngaps].a = a;
	c->gaps[c->ngaps].b = b;
	c->ngaps++;
}

static void rec_frame(void *ctx, uint64_t off, uint64_t seq,
		      const uint8_t *payload, uint32_t len)
{
	struct rec_ctx *c = ctx;
	struct seg *s = c->seg;

	if (c->cut_seq && seq >= c->cut_seq) {
		/* written by the flush that did not finish: still in the
		 * ring, drained again; cut below */
		if (!c->cut_n++) {
			c->cut_first = s->first;
			c->cut_off = off;
		}
		return;
	}
	/* lost records are counted by their seqs, exactly: damaged bytes
	 * that cost no seq (garbage between frames) count nothing */
	if (c->expect && seq > c->expect)
		rec_gap(c, c->expect, seq);
	c->damaged = false;
	c->expect = seq + 1;
	if (seq >= c->ck_acked)
		c->sp->st.recovered++;
	if (!s->nidx || c->after_damage || off - s->idx_last >= IDX_GRAN)
		seg_idx_add(s, seq, off);
	c->after_damage = false;
	s->end = seq + 1;
}

static void rec_damage(void *ctx, uint64_t off, uint64_t end)
{
	struct rec_ctx *c = ctx;
	struct spool *sp = c->sp;
	char name[32];

	c->damaged = true;
	c->after_damage = true;
	spf_seg_name(name, sizeof(name), c->seg->first);
	if (sp->log_damage++ < LOG_DAMAGE_MAX)
		sp_log(sp->set, LOG_WARN, "spool %s: %s: damaged bytes "
		       "%" PRIu64 "..%" PRIu64 " skipped", sp->name, name,
		       off, end);
}

/* Lists the sink directory: our segments (sorted), foreign files counted
 * and logged; stale checkpoint.tmp removed. */
static int rec_list(struct spool *sp, struct rec_seg **out, uint32_t *nout)
{
	struct spf_file *f;
	struct rec_seg *v;
	uint32_t n = 0;
	int nf, i, rc;

	rc = spf_list_files(sp->dfd, &f, &nf);
	if (rc)
		return rc;
	v = calloc(nf ? (size_t)nf : 1, sizeof(*v));
	if (!v) {
		free(f);
		return -ENOMEM;
	}
	/* segments come first, already in order */
	for (i = 0; i < nf; i++) {
		if (!strcmp(f[i].name, SPF_CKPT_TMP)) {
			unlinkat(sp->dfd, SPF_CKPT_TMP, 0);
		} else if (!f[i].is_seg) {
			sp->st.foreign++;
			sp_log(sp->set, LOG_WARN, "spool %s: ignoring foreign "
			       "file '%s'", sp->name, f[i].name);
		} else {
			v[n].first = f[i].first;
			strcpy(v[n].name, f[i].name);
			n++;
		}
	}
	free(f);
	*out = v;
	*nout = n;
	return 0;
}

/* Cuts the torn tail of the newest segment; on failure the segment is
 * sealed (a new one takes the appends) and the garbage stays. */
static void rec_truncate(struct spool *sp, struct seg *s, int fd,
			 uint64_t size, uint64_t at, bool bitrot)
{
	char name[32];

	spf_seg_name(name, sizeof(name), s->first);
	if (ftruncate(fd, (off_t)at) < 0 || fsync(fd) < 0) {
		sp_log(sp->set, LOG_WARN, "spool %s: %s: cannot truncate the "
		       "torn tail at %" PRIu64 ": %s", sp->name, name, at,
		       strerror(errno));
		s->sealed = true;
		s->size = size;
		return;
	}
	/* not counted corrupt here: if the cut records had been durable,
	 * the checkpoint's next_seq says so and the gap counts them */
	sp->st.truncated_bytes += size - at;
	sp_log(sp->set, LOG_WARN, "spool %s: %s: %s, truncated %" PRIu64
	       " bytes at offset %" PRIu64, sp->name, name,
	       bitrot ? "last record damaged" : "torn tail", size - at, at);
	s->size = at;
}

/* Pass 1 for one file: REC_SEG (header in rs), REC_HDR_DAMAGED (its
 * frames are scanned anyway), REC_FOREIGN (counted, logged, left alone)
 * or REC_SHORT (shorter than a header: decided by the caller). */

static int rec_check(struct spool *sp, struct rec_seg *rs)
{
	struct spf_seg_info si;
	int fd;

	fd = spf_seg_open(sp->dfd, rs->name, rs->first, sp->name,
			  O_RDONLY | SPF_OPEN_OWNER, &si);
	if (fd >= 0)
		close(fd);
	rs->size = si.size;
	rs->created = si.created;
	memcpy(rs->hdr, si.hdr, SPF_SEG_HDR);
	switch (si.state) {
	case SPF_SEG_OK:
		return REC_SEG;
	case SPF_SEG_HDR_DAMAGED:
		return REC_HDR_DAMAGED;
	case SPF_SEG_SHORT:
		return REC_SHORT;
	default:
		sp->st.foreign++;
		sp_log(sp->set, LOG_WARN, "spool %s: ignoring '%s': %s",
		       sp->name, rs->name, si.why);
		return REC_FOREIGN;
	}
}

/* Pass 2 for one valid segment: scan, index, torn tail. A segment with
 * a damaged header is sealed (never appended to); if no frame of it is
 * valid either, it is foreign after all. */
static int rec_one(struct spool *sp, struct rec_ctx *c,
		   const struct rec_seg *rs, bool newest)
{
	bool hdr_damaged = rs->state == REC_HDR_DAMAGED;
	struct spf_scan_res r;
	struct stat st;
	struct seg *s;
	int fd, ret;

	fd = openat(sp->dfd, rs->name, (newest ? O_RDWR : O_RDONLY) |
		    O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 && newest) {
		newest = false;		/* read-only: recover, do not cut */
		fd = openat(sp->dfd, rs->name, O_RDONLY | O_CLOEXEC |
			    O_NOFOLLOW);
	}
	if (fd < 0 || fstat(fd, &st) < 0) {
		sp->st.foreign++;
		sp_log(sp->set, LOG_WARN, "spool %s: ignoring '%s': %s",
		       sp->name, rs->name, strerror(errno));
		if (fd >= 0)
			close(fd);
		return 0;
	}
	s = seg_alloc(rs->first);
	if (!s) {
		close(fd);
		return -ENOMEM;
	}
	memcpy(s->hdr, rs->hdr, SPF_SEG_HDR);
	s->created_ns = rs->created;
	s->size = (uint64_t)st.st_size;
	c->seg = s;
	c->after_damage = false;
	spf_seg_scan(fd, s->size, s->first,
		     &(struct spf_scan_cb){ rec_frame, rec_damage }, c, &r);
	if (hdr_damaged && !r.nrec) {
		sp->st.foreign++;
		sp_log(sp->set, LOG_WARN, "spool %s: ignoring '%s': damaged "
		       "segment header and no valid record", sp->name,
		       rs->name);
		close(fd);
		seg_free(s);
		return 0;
	}
	if (hdr_damaged) {
		s->sealed = true;
		sp_log(sp->set, LOG_WARN, "spool %s: %s: damaged segment "
		       "header; %" PRIu64 " records recovered from its frames",
		       sp->name, rs->name, r.nrec);
	}
	if (r.err) {
		sp_log(sp->set, LOG_ERROR, "spool %s: %s: read error at %"
		       PRIu64 ": %s (rest of the file skipped)", sp->name,
		       rs->name, r.tail_off, strerror(-r.err));
		c->damaged = true;
		s->sealed = true;
	} else if (r.tail_off < s->size) {
		if (newest) {
			rec_truncate(sp, s, fd, s->size, r.tail_off,
				     r.tail_bitrot);
		} else {
			c->damaged = true;	/* lost seqs show as a gap */
			if (sp->log_damage++ < LOG_DAMAGE_MAX)
				sp_log(sp->set, LOG_WARN, "spool %s: %s: "
				       "damaged tail at %" PRIu64 " skipped",
				       sp->name, rs->name, r.tail_off);
		}
	}
	if (newest && !s->sealed) {
		s->fd = fd;		/* the active segment keeps it */
	} else {
		close(fd);		/* reopened read-only when read */
		s->sealed = true;
	}
	ret = segs_push(sp, s);
	if (ret) {
		seg_free(s);
		return ret;
	}
	sp->bytes += s->size;
	sp->set->bytes += s->size;
	return 1;
}

/* Header pass over every segment-named file, then the scan of the valid
 * ones (and of those with a damaged header) in seq order; the newest
 * intact one is the only one whose torn tail is cut. A file shorter than a header after the newest valid
 * segment is a crash during creation: it holds nothing and goes. */
static int rec_files(struct spool *sp, struct rec_ctx *c,
		     struct rec_seg *list, uint32_t n)
{
	uint64_t last_first = 0;
	bool have = false;
	uint32_t i, last = 0;
	int ret;

	for (i = 0; i < n; i++) {
		list[i].state = (uint8_t)rec_check(sp, &list[i]);
		if (list[i].state == REC_SEG) {
			last_first = list[i].first;
			last = i;
			have = true;
		}
	}
	for (i = 0; i < n; i++) {
		if (list[i].state != REC_SHORT)
			continue;
		if (!have || list[i].first > last_first) {
			sp->st.truncated_bytes += list[i].size;
			sp_log(sp->set, LOG_WARN, "spool %s: removing %s: "
			       "shorter than a segment header (%" PRIu64
			       " bytes)", sp->name, list[i].name,
			       list[i].size);
			unlinkat(sp->dfd, list[i].name, 0);
		} else {
			sp->st.foreign++;
			sp_log(sp->set, LOG_WARN, "spool %s: ignoring '%s': "
			       "shorter than a segment header", sp->name,
			       list[i].name);
		}
	}
	for (i = 0; i < n; i++) {
		if (list[i].state != REC_SEG &&
		    list[i].state != REC_HDR_DAMAGED)
			continue;
		/* only an intact newest segment may have its torn tail cut
		 * and take appends */
		ret = rec_one(sp, c, &list[i], have && i == last);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* The drain journal of start-up names this sink: records from its end
 * on were written by a flush the previous broker did not finish (the
 * ring still has them). 0 when there is nothing to cut. */
static uint64_t rec_cut_seq(const struct spool *sp, const struct spf_ckpt *ck,
			    int ckv)
{
	const struct spool_set *set = sp->set;
	uint32_t i;

	if (!set->jr_cut_ok || !set->jr_loaded)
		return 0;
	for (i = 0; i < set->jr_loaded->nsinks; i++) {
		uint64_t end = set->jr_loaded->sinks[i].end_seq;

		if (strcmp(set->jr_loaded->sinks[i].name, sp->name))
			continue;
		/* never below what a checkpoint already counted on */
		if (ckv > 0)
			end = max64(end, max64(ck->acked, ck->next_seq));
		return max64(end, 1);
	}
	return 0;
}

/* Cuts what rec_frame() set aside: segments made by the unfinished
 * flush go, the one it continued is cut back at its first record. */
static void rec_apply_cut(struct spool *sp, const struct rec_ctx *c)
{
	uint32_t i;

	if (!c->cut_n)
		return;
	for (i = sp->nsegs; i-- > 0;) {
		struct seg *s = sp->segs[i];

		if (s->first >= c->cut_seq)
			seg_remove(sp, i, true);
		else if (s->first == c->cut_first)
			seg_cut(sp, s, c->cut_off, s->end);
	}
	sp->st.cut_records = c->cut_n;
	sp_log(sp->set, LOG_INFO, "spool %s: cut %" PRIu64 " records written "
	       "by a flush the previous broker did not finish (they are still "
	       "in the ring and are drained again)", sp->name, c->cut_n);
}

/* durability = fdatasync: what a killed broker wrote but had not synced
 * yet may now only be here (the ring has let it go): synced before
 * anything else. */
static void rec_sync_recent(struct spool *sp, uint64_t durable_next)
{
	uint32_t i;

	if (sp->set->o.durability != DUR_FDATASYNC)
		return;
	for (i = 0; i < sp->nsegs; i++) {
		struct seg *s = sp->segs[i];
		char name[32];
		int fd;

		if (s->end <= durable_next)
			continue;
		spf_seg_name(name, sizeof(name), s->first);
		fd = s->fd >= 0 ? s->fd : openat(sp->dfd, name, O_RDONLY |
						  O_CLOEXEC | O_NOFOLLOW);
		if (fd >= 0 && fdatasync(fd) < 0)
			sp->st.write_errors++;
		if (fd >= 0 && fd != s->fd)
			close(fd);
	}
	if (fsync(sp->dfd) < 0)
		sp->st.write_errors++;
}

/* The checkpoint's totals and counters come back with its done-set.
 * Counters are of one ring (its shm segment): for another ring (a new
 * one after a reboot, counting from zero like the ring's own) the
 * owner's counters are not handed back and this spool's totals count
 * from here. */
static void rec_take_ckpt(struct spool *sp, const struct spf_ckpt *ck)
{
	bool same = ck->ring_id == sp->set->o.ring_id;
	uint32_t i;

	sp->acked = ck->acked;
	for (i = 0; i < ck->nranges; i++)
		rng_add(sp, ck->ranges[i].a, ck->ranges[i].b);
	sp->st.corrupt = ck->corrupt;
	sp->st.dropped_full = ck->dropped_full;
	sp->st.redelivered = ck->redelivered;
	sp->resend_end = ck->sent > ck->acked ? ck->sent : 0;
	sp->ck_this_ring = same;
	if (same) {
		memcpy(sp->epoch, ck->epoch, sizeof(sp->epoch));
		sp->nbase_loaded = ck->nbase;
		memcpy(sp->base_loaded, ck->base, sizeof(ck->base));
		/* until the owner says otherwise, checkpoints carry them */
		sp->nbase = ck->nbase;
		memcpy(sp->base, ck->base, sizeof(ck->base));
	} else {
		sp->epoch[0] = ck->corrupt;
		sp->epoch[1] = ck->dropped_full;
		sp->epoch[2] = ck->redelivered;
	}
}

static int sp_recover(struct spool *sp)
{
	struct rec_ctx c = { .sp = sp };
	struct spf_ckpt *ck = &sp->ck;
	uint64_t ck_acked, ck_next, first_found = 0;
	struct rec_seg *list = NULL;
	uint32_t n = 0, i;
	int ckv, ret;

	ckv = spf_ck_load(sp->dfd, sp->name, ck);
	if (ckv < 0)
		sp_log(sp->set, LOG_WARN, "spool %s: checkpoint is corrupt: "
		       "delivering everything in the spool again", sp->name);
	ck_acked = ckv > 0 ? ck->acked : 0;
	ck_next = ckv > 0 ? ck->next_seq : 0;
	c.ck_acked = ck_acked;
	c.cut_seq = rec_cut_seq(sp, ck, ckv);
	ret = rec_list(sp, &list, &n);
	if (ret)
		return ret;
	ret = rec_files(sp, &c, list, n);
	if (ret < 0)
		goto out;
	rec_apply_cut(sp, &c);
	for (i = 0; i < sp->nsegs; i++)
		if (sp->segs[i]->end > sp->segs[i]->first) {
			first_found = sp->segs[i]->first;
			if (sp->segs[i]->nidx)
				first_found = sp->segs[i]->idx[0].seq;
			break;
		}
	/* seqs are never reused */
	sp->next_seq = 1;
	if (c.expect)
		sp->next_seq = c.expect;
	if (sp->nsegs)
		sp->next_seq = max64(sp->next_seq,
				     sp->segs[sp->nsegs - 1]->end);
	if (ckv > 0) {
		/* durable once (the checkpoint said so), not here now */
		uint64_t from = c.expect ? c.expect : ck_acked;

		if (ck_next > from)
			rec_gap(&c, from, ck_next);
		sp->next_seq = max64(sp->next_seq, max64(ck_next, ck_acked));
	}
	/* acked and the done ranges: from the checkpoint. Seqs in [acked,
	 * first found) were deleted only if a checkpoint past them was
	 * durable first (acks and drop-oldest alike), so they are lost:
	 * counted. Without a checkpoint: the first seq found, everything
	 * is delivered again. */
	if (ckv > 0) {
		rec_take_ckpt(sp, ck);
		if (first_found > ck_acked)
			rec_gap(&c, ck_acked, first_found);
	} else {
		sp->acked = first_found ? first_found : sp->next_seq;
	}
	/* seqs are never reused: a done range (records dropped when their
	 * write failed, never on disk) may reach past everything found */
	if (sp->nrng)
		sp->next_seq = max64(sp->next_seq, sp->rng[sp->nrng - 1].b);
	sp->acked = min64(sp->acked, sp->next_seq);
	for (i = 0; i < c.ngaps; i++) {
		struct range *g = &c.gaps[i];

		sp->st.corrupt += rng_count_open(sp, g->a, g->b);
		rng_add(sp, g->a, g->b);
	}
	if (!first_found) {
		/* no record anywhere: nothing left to deliver */
		sp->acked = sp->next_seq;
		sp->nrng = 0;
	}
	sp->visible = sp->next_seq;
	if (sp->nsegs) {
		struct seg *last = sp->segs[sp->nsegs - 1];

		if (!last->sealed && last->end == sp->next_seq &&
		    last->size < sp->set->o.segment_size)
			sp->active = last;
		else
			last->sealed = true;
		if (last->fd >= 0 && sp->active != last)
			seg_maybe_close(sp, last);
	}
	rec_sync_recent(sp, ckv > 0 ? ck_next : 0);
	/* the file is reused when it is a version 2 one of ours; a missing,
	 * corrupt or version 1 checkpoint is replaced by a new file */
	if (ckv > 0 && ck->version == 2) {
		sp->ck_fd = spf_slot_file_open(sp->dfd, SPF_CKPT_NAME,
					       SPF_CK_SLOT);
		sp->ck_gen = ck->gen;
		if (sp->ck_fd < 0)
			sp->ck_fd = -1;
	}
	ret = ck_write_now(sp);
	if (ret)
		sp_log(sp->set, LOG_WARN, "spool %s: cannot write the "
		       "checkpoint: %s (retried)", sp->name, strerror(-ret));
	ret = 0;
	sp_gc(sp);
	if (sp->log_damage > LOG_DAMAGE_MAX)
		sp_log(sp->set, LOG_WARN, "spool %s: %u damaged regions in all",
		       sp->name, sp->log_damage);
out:
	free(c.gaps);
	free(list);
	return ret;
}

static void sp_free_mem(struct spool *sp)
{
	uint32_t i;

	while (sp->bhead)
		blk_free_head(sp);
	for (i = 0; i < sp->nsegs; i++)
		seg_free(sp->segs[i]);
	free(sp->segs);
	free(sp->rng);
	free(sp->doomed);
	free(sp->ck_slot);
	if (sp->ck_fd >= 0)
		close(sp->ck_fd);
	if (sp->dfd >= 0)
		close(sp->dfd);
	free(sp);
}

struct spool *spool_open(struct spool_set *set, const char *sink)
{
	struct spool *sp;
	char label[4096 + SPF_NAME_MAX];
	int ret;

	if (!spf_sink_name_ok(sink)) {
		errno = EINVAL;
		return NULL;
	}
	for (sp = set->sinks; sp; sp = sp->next)
		if (!strcmp(sp->name, sink)) {
			errno = EBUSY;
			return NULL;
		}
	sp = calloc(1, sizeof(*sp));
	if (!sp)
		return NULL;
	sp->set = set;
	sp->dfd = -1;
	sp->ck_fd = -1;
	sp->ck_slot = calloc(1, SPF_CK_SLOT);
	if (!sp->ck_slot) {
		free(sp);
		return NULL;
	}
	strcpy(sp->name, sink);
	sp->blk_size = min64(max64(set->o.tail_buffer / 4, BLK_MIN), BLK_MAX);
	snprintf(label, sizeof(label), "%s/%s", set->dir, sink);
	sp->dfd = dir_open_trusted(set, set->dfd, sink, label);
	ret = sp->dfd < 0 ? sp->dfd : 0;
	if (ret)
		goto fail;
	ret = sp_recover(sp);
	if (ret)
		goto fail;
	sp->next = set->sinks;
	set->sinks = sp;
	if (sp->st.recovered || sp->st.corrupt || sp->st.truncated_bytes)
		sp_log(set, LOG_INFO, "spool %s: recovered %" PRIu64
		       " records (acked %" PRIu64 ", next %" PRIu64 "), %"
		       PRIu64 " corrupt, %" PRIu64 " bytes truncated",
		       sp->name, sp->st.recovered, sp->acked, sp->next_seq,
		       sp->st.corrupt, sp->st.truncated_bytes);
	return sp;
fail:
	set->bytes -= sp->bytes;
	sp_free_mem(sp);
	errno = -ret;
	return NULL;
}

static bool sp_idle(const struct spool *sp)
{
	return !sp->inflight;
}

void spool_close(struct spool *sp)
{
	struct spool_set *set;
	struct spool **pp;
	struct blk *b;

	if (!sp)
		return;
	set = sp->set;
	sp->closing = true;
	/* out of the set first: flushes and the cap no longer see it */
	for (pp = &set->sinks; *pp; pp = &(*pp)->next)
		if (*pp == sp) {
			*pp = sp->next;
			break;
		}
	if (sp->ck_timer_armed) {
		struct io_uring_sqe *sqe = rx_sqe(set->rx, NULL);

		io_uring_prep_timeout_remove(sqe,
			(uint64_t)(uintptr_t)&sp->ck_timer, 0);
	}
	sp_wait(sp, sp_idle);
	if (sp->inflight) {
		sp_log(set, LOG_ERROR, "spool %s: I/O still in flight at "
		       "close; leaking the sink's memory", sp->name);
		set->bytes -= sp->bytes;
		return;
	}
	/* written but not yet synced: make it durable before we forget */
	for (b = sp->bhead; b; b = b->next)
		if (b->state == B_UNSYNCED && b->seg->fd >= 0)
			fdatasync(b->seg->fd);
	/* the final watermark and durable end, for the next start */
	spool_sync_ack(sp);
	set->bytes -= sp->bytes;
	sp_free_mem(sp);
}
