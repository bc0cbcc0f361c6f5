/* brokertest.h - run a real outboxd from the tests: a private config
 * (own shm name, spool dir, output file), start, signal, wait, and read
 * its stats page; plus the checked NDJSON reader for the file sink.
 */
#ifndef OBX_BROKERTEST_H
#define OBX_BROKERTEST_H

#include <stdint.h>
#include <sys/types.h>
#include "obx_abi.h"
#include "outbox.h"

struct bt {
	char dir[256];        /* private temp dir */
	char conf[300];
	char shm[64];
	char spool[300];
	char out[300];
	char log[300];
	pid_t pid;
	int starts;
};

/* Creates the temp dir and writes a config: file sink "default" into
 * out, plus `extra` appended verbatim (may be NULL). */
int bt_init(struct bt *t, const char *tag, const char *broker_extra,
	    const char *extra);
/* Starts outboxd -c conf, stderr to log; waits until the segment has a
 * live broker pid (or 5 s). 0 or -1. */
int bt_start(struct bt *t);
/* SIGTERM and wait (up to ms); returns the exit status or -1. */
int bt_stop(struct bt *t, int ms);
/* SIGKILL and reap. */
void bt_kill9(struct bt *t);
/* Removes the segment, spool, files, dir. */
void bt_cleanup(struct bt *t);

/* obx_open(shm), retried for up to 5 s (a broker starting); NULL. */
obx_t *bt_open(const char *shm);

/* 1 when the ring is drained (head == tail), else 0. */
int bt_ring_empty(const struct bt *t);

/* Copy of the stats page (seqlock read); 0 or -1. */
int bt_stats(struct bt *t, struct obx_stats *g, struct obx_sink_page *sp);
/* The sink page's entry in use named `name`, or NULL. */
const struct obx_sink_shm *bt_sink(const struct obx_sink_page *sp,
				   const char *name);

/* Every counted drop: the global reasons plus each sink's; the sinks'
 * delivered_events in *deliv and queued_events in *queued. At a quiet
 * moment emitted == *deliv + drops + *queued (PRODUCT.md section 6). */
uint64_t bt_sum_dropped(const struct obx_stats *g,
			const struct obx_sink_page *sp, uint64_t *deliv,
			uint64_t *queued);

/* Path of a built binary: $OUTBOX_BUILD/<name> (default build/). */
const char *bt_bin(const char *name);

/* Reads the NDJSON output: for events whose body is {"p":P,"s":S,...},
 * counts[P][S] += 1. Returns lines read, -1 on a line that is not JSON. */
#define BT_MAXP 16
int bt_read_output(const char *path, uint32_t *counts[BT_MAXP],
		   uint64_t maxs, uint64_t *bad);

#endif
