/* persist.h - the delivery state that outlives the broker process.
 *
 * One file, <spool_dir>/delivery-state: every HTTP sink's policy state
 * (backoff level, window, rate-limit episode and categories) and the retry
 * metadata of its batches out, in msgpack, by sink name, written with
 * pol_save() (temp file, fsync, rename, fsync of the directory). Loaded
 * once at start; each sink takes its entry when it opens, so a broker
 * restarted inside a Retry-After window keeps honouring it.
 *
 * When it is written: whenever a sink's state or window changes (entering
 * or leaving backoff / rate_limited, a new window after a failed probe),
 * at most every PERSIST_MIN_NS while batches wait with retry metadata, and
 * at stop. In steady ok state nothing changes, so nothing is written.
 *
 * Bounded: saved batch metadata is used up when a batch covering its first
 * record is read, and dropped once the sink's spool has acknowledged past
 * it, or when its sink is no longer configured - so the file never carries
 * metadata of batches that will not be read again.
 */
#ifndef OBX_PERSIST_H
#define OBX_PERSIST_H

#include <stddef.h>
#include <stdint.h>
#include "policy.h"

struct broker;
struct sink;

#define PERSIST_FILE    "delivery-state"
#define PERSIST_MIN_NS  200000000ull    /* 200 ms between batch-only saves */

struct persist {
	char *path;
	struct pol_sink *pols;            /* last known state, by name */
	int npols, cap;
	struct pol_saved_batch *batches;  /* from the file, by sink + id */
	size_t nbatches;
	int dirty;                        /* a state changed: save now */
	int batches_dirty;                /* retry metadata changed */
	uint64_t last_save_ns;            /* mono */
	int failed;                       /* last save failed (logged) */
};

/* Reads the file (missing = fresh start; corrupt = logged, ignored). */
int persist_open(struct persist *p, const char *spool_dir,
		 const struct cfg *c);
void persist_close(struct persist *p);

/* A sink opening: its persisted state, if any, into *pol. */
void persist_restore_sink(struct persist *p, struct pol_sink *pol);
/* A new batch of a sink, records [first, end): the persisted retry
 * metadata of every saved batch that started in that range is taken (used
 * up) and merged into b - the most attempts and failures, the earliest
 * first failure and episode - so budgets and X-Retry-Count carry on even
 * when the batch boundaries moved across the restart. */
void persist_restore_batch(struct persist *p, const char *sink,
			   uint64_t first, uint64_t end, struct pol_batch *b);
/* A sink closing (reload): remember its state for when it reopens. */
void persist_remember(struct persist *p, const struct pol_sink *pol);

/* Writes the file if something changed (force: at stop). */
void persist_save(struct broker *b, uint64_t now, int force);

#endif
