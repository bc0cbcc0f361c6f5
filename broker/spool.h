/* spool.h - the durable spool: per sink, append-only segment files of
 * CRC-framed records, written and read with io_uring through the reactor.
 *
 * Layout: <spool_dir>/<sink>/ (mode 0700), segment files
 * "seg-<first seq, 16 hex>.obx" (0600), and "checkpoint" (a preallocated
 * two-slot file) holding the acknowledged watermark; <spool_dir>/
 * drain-state (the same kind of file) says where the ring stands with the
 * spool. The format is spool_format.h / spool_format.c (which also has
 * the offline tools).
 *
 * Sequence numbers: every record of a sink gets the next seq (u64, from
 * 1). acked = every seq < acked is done (delivered or dropped for a
 * counted reason); done ranges above it are kept too, and written with
 * every checkpoint (up to SPF_CK_RANGES_MAX).
 *
 * The drain side appends into an in-memory tail buffer and flushes all
 * sinks at once; the callback says when everything flushed is in the
 * spool per the durability setting (none and write: the writes
 * completed - a broker crash must lose nothing the ring gave up, so
 * `none` waits for the write too; fdatasync: a following fdatasync,
 * batched by sync_interval). Only then does the broker advance the ring
 * head. With a mark (spool_set_flush_mark), the drain journal is
 * rewritten once the writes completed, before the callback: a broker
 * killed before it moved the head finds there how far the ring is
 * already in the spool, and the spool cuts what a flush left half
 * written (so nothing is spooled twice).
 *
 * Checkpoint: written after every acknowledgement (back to back, from
 * the reactor; fdatasync'ed when durability = fdatasync), overwriting
 * the older of two preallocated slots: acknowledging and deleting
 * delivered segments never need new disk space. It carries the done
 * ranges, this spool's drop and damage totals, and an opaque array of
 * the owner's counters (spool_set_base), so counters and done-set come
 * back together after any crash.
 *
 * Full: spool_max bytes across all sinks (segment files + tail
 * buffers), and the file system's free space minus a reserve
 * (statvfs; disk_reserve, default 1/64 of the file system, 256 KiB to
 * 64 MiB). drop-newest refuses appends (-ENOSPC, counted refused_full);
 * drop-oldest deletes the oldest whole segment of any sink that is not
 * being written or read (its unacked records counted dropped_full) and
 * then accepts. A write that still fails with ENOSPC or EDQUOT (someone
 * else took the space) drops the records it carried (dropped_full) and
 * cuts its segment back: the ring keeps flowing, the spool stops
 * growing, and it takes appends again by itself when space returns.
 * Any other write error (EIO) keeps the data in memory, stops accepting
 * appends (-EAGAIN) until a retry succeeds (the broker retries every
 * second), counts write_errors and never loses what it had accepted.
 */
#ifndef OBX_SPOOL_H
#define OBX_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "reactor.h"
#include "config.h"
#include "spool_format.h"

struct spool_set;   /* every sink: shared cap, flush, counters */
struct spool;       /* one sink */

struct spool_set_opts {
	const char *dir;
	uint64_t max_bytes;             /* spool_max */
	uint64_t segment_size;          /* roll over at this size */
	enum cfg_spool_full full;
	enum cfg_durability durability;
	uint64_t sync_interval_ms;
	uint64_t tail_buffer;           /* per sink write buffer, e.g. 1M */
	/* additions: optional log sink for recovery findings and I/O
	 * errors (level: enum cfg_log_level); NULL = silent */
	void (*log)(void *log_arg, int level, const char *msg);
	void *log_arg;
	uint64_t disk_reserve;          /* free bytes kept; 0 = default */
	uint64_t ring_id;               /* the ring's segment_id: a drain
					 * journal of the same ring is acted
					 * on at open; 0 = never */
};

struct spool_stats {
	uint64_t bytes;                 /* on disk + buffered */
	uint64_t segments;
	uint64_t queued_events;         /* appended - acked */
	uint64_t queued_bytes;
	uint64_t recovered;             /* records found at open */
	uint64_t corrupt;               /* damaged records skipped at open */
	uint64_t truncated_bytes;       /* torn tails cut at open */
	uint64_t dropped_full;          /* accepted, then given up: deleted
					 * by drop-oldest, or their write
					 * failed for lack of space (carried
					 * across restarts) */
	uint64_t refused_full;          /* appends refused: spool_max or
					 * disk full (this process only) */
	uint64_t write_errors;          /* failed writes/fsyncs */
	/* additions */
	uint64_t foreign;               /* files ignored at open */
	uint64_t reads_mem;             /* spool_read served from memory */
	uint64_t reads_disk;            /* io_uring reads of segment files */
	uint64_t mem_bytes;             /* RAM held: blocks, index, state */
	uint64_t redelivered;           /* acknowledged again after a
					 * restart below what a previous
					 * broker had read for delivery */
	uint64_t disk_free;             /* bytes free on its file system
					 * (last statvfs, set-wide) */
	uint64_t cut_records;           /* half-written flush cut at open */
	uint64_t ck_writes;             /* checkpoint writes started (this
					 * process): one per acknowledgement
					 * at a trickle, none per read */
};

/* NULL + errno. Creates dir (0700) if needed; a dir that is not ours
 * (another uid, mode wider than 0700, a symlink, a file) is moved aside
 * to "<dir>~aside" (logged) and a new one made. spool_open() does the
 * same for the sink's directory. */
struct spool_set *spool_set_new(struct rx *rx,
				const struct spool_set_opts *o);
/* Flushes nothing: call spool_set_flush and wait for it first. */
void spool_set_free(struct spool_set *set);

/* Opens (or creates) the sink's spool and recovers it: validates every
 * frame by CRC, truncates a torn tail, skips and counts damaged records,
 * ignores foreign files, loads the checkpoint. Never fails because of
 * damaged content; NULL + errno only for real I/O errors (e.g. EACCES).
 * Synchronous (startup). */
struct spool *spool_open(struct spool_set *set, const char *sink);
void spool_close(struct spool *sp);

/* Copies one record into the tail buffer; 0, -ENOSPC (cap, dropped and
 * counted), -EAGAIN (spool stalled on a write error: do not drain), or
 * -E2BIG (larger than a segment). */
int spool_append(struct spool *sp, const void *rec, uint32_t len);

/* Writes every sink's buffered records (io_uring writes, then fdatasync
 * per durability). done(arg, err) runs from the reactor when all of it is
 * durable (err 0), or when a write failed (err < 0: data kept, retried by
 * the next flush). -EBUSY while a previous flush is in flight. */
int spool_set_flush(struct spool_set *set, void (*done)(void *arg, int err),
		    void *arg);

/* Where the ring stands with the spool, written to the drain journal by
 * a flush once its writes completed: every ring record before ring_pos
 * is in the spool or was dropped and counted in blob (the owner's
 * counters, opaque, up to SPF_JR_BLOB_MAX bytes). */
struct spool_mark {
	uint64_t ring_id;
	uint64_t ring_pos;
	const void *blob;
	uint32_t blob_len;
};

/* spool_set_flush() that also writes m (copied) to the drain journal. */
int spool_set_flush_mark(struct spool_set *set,
			 void (*done)(void *arg, int err), void *arg,
			 const struct spool_mark *m);
/* The journal found at open: 1 (m filled, blob valid while the set
 * lives), 0 none. */
int spool_set_loaded_mark(const struct spool_set *set, struct spool_mark *m);

/* Bytes buffered and not yet flushed, across sinks. */
uint64_t spool_set_pending(const struct spool_set *set);
/* Bytes of one sink buffered that no flush has started to write: what
 * spool_close() would forget. */
uint64_t spool_pending(const struct spool *sp);

/* Records of one sink, for delivery. */
struct spool_rec {
	uint64_t seq;
	uint32_t len;
	const uint8_t *data;            /* valid until the batch is freed */
};

struct spool_batch {
	struct spool_rec *recs;
	uint32_t n, cap;
	uint8_t *buf;                   /* owns the record bytes */
	uint64_t buf_len, buf_cap;
	/* addition: where the next read should start - one past the last
	 * record returned, or past what was skipped when n == 0 */
	uint64_t next;
};

void spool_batch_init(struct spool_batch *b);
void spool_batch_free(struct spool_batch *b);

/* Reads up to max_events / max_bytes records starting at seq `from`
 * (from memory when buffered, from the segment files with io_uring
 * otherwise) into b (reset first). done(arg, err) is called from the
 * reactor when b is filled, or right away when it came from memory
 * (then the return value is 1). 0 = pending, 1 = done now, -errno.
 * A batch never holds more than max_bytes (except a single larger
 * record), so memory stays bounded whatever the backlog. */
/* When spool_read returns 1, done is NOT called (the caller goes on
 * itself); when it returns 0, done is called exactly once, later.
 * Seqs in a batch increase but need not be contiguous: seqs below the
 * watermark (e.g. gone with drop-oldest) and seqs lost to damage are
 * skipped (the lost ones counted corrupt and already marked done). So
 * continue at b->next (not from + n), and acknowledge a delivered batch
 * as [recs[0].seq, recs[n-1].seq + 1). */
int spool_read(struct spool *sp, uint64_t from, uint32_t max_events,
	       uint64_t max_bytes, struct spool_batch *b,
	       void (*done)(void *arg, int err), void *arg);

uint64_t spool_next_seq(const struct spool *sp);  /* one past the last */
/* A previous broker read up to pos (one past): re-sends below it count
 * `redelivered`, and the next checkpoint's `sent` keeps it. */
void spool_note_sent(struct spool *sp, uint64_t pos);
uint64_t spool_acked(const struct spool *sp);     /* watermark */

/* Marks [first, first + n) done. Advances the watermark over the
 * contiguous prefix and writes the checkpoint (atomic replace) at most
 * every 100 ms (spool_sync_ack forces it); fully acknowledged segments
 * are deleted (and leave spool_max) when that checkpoint is durable, not
 * at this call. A batch may stay allocated and be reused for later
 * reads: it holds copies, never a reference to a segment. */
void spool_ack(struct spool *sp, uint64_t first, uint64_t n);
int spool_sync_ack(struct spool *sp);

/* Additions.
 * spool_ack_n: spool_ack() that returns how many seqs of the range were
 *   newly marked done (0 for seqs already below the watermark, e.g.
 *   deleted by drop-oldest while their batch was in flight: those were
 *   counted dropped_full already).
 * spool_visible: one past the last record spool_read() can return (the
 *   records appended and made durable per the durability setting).
 * spool_set_stalled: 1 while appends are refused because of a write
 *   error (then -EAGAIN from spool_append means "retry the flush in a
 *   second"); 0 means -EAGAIN was only back-pressure (tail_buffer full
 *   of unwritten data: flush, and append again once it completed). */
uint64_t spool_ack_n(struct spool *sp, uint64_t first, uint64_t n);
uint64_t spool_visible(const struct spool *sp);
int spool_set_stalled(const struct spool_set *set);
const char *spool_name(const struct spool *sp);

/* The owner's counters that belong with the done-set (e.g. delivered
 * events): the latest values, written with every checkpoint. Call it in
 * the same reactor turn as the spool_ack() they go with. spool_base()
 * gives back what the checkpoint found at open held: how many values
 * (0 when it held none, or they were of another ring: opts.ring_id). */
void spool_set_base(struct spool *sp, const uint64_t *v, uint32_t n);
uint32_t spool_base(const struct spool *sp, uint64_t *v, uint32_t max);
/* The checkpoint found at open was written for this ring (opts.ring_id):
 * the spool is the one the ring's shm pages speak of. False for a new
 * spool (none found: a wiped or moved spool_dir), a corrupt or version 1
 * checkpoint, or another ring's. */
int spool_of_ring(const struct spool *sp);
/* Appends refused for lack of room by this spool (refused_full), cheap. */
uint64_t spool_refused(const struct spool *sp);

void spool_get_stats(const struct spool *sp, struct spool_stats *st);
void spool_set_get_stats(const struct spool_set *set, struct spool_stats *st);

#endif
