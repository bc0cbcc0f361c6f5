/* ringtest.h - helpers for the ring tests: checksummed test bodies, a
 * private segment, and a verifying consumer loop.
 */
#ifndef OBX_RINGTEST_H
#define OBX_RINGTEST_H

#include <stdint.h>
#include <stddef.h>
#include "segment.h"
#include "ring.h"
#include "envelope.h"

/* The body of every test event: who, which, and a checksum over all. */
struct rt_body {
	uint32_t producer;
	uint32_t len;          /* whole body length */
	uint64_t seq;
	uint32_t csum;
	uint32_t pad;
	/* filler follows */
};

#define RT_MAX_PRODUCERS 4096

struct rt_seen {
	int64_t next_seq[RT_MAX_PRODUCERS];  /* expected next seq, -1 = none */
	uint64_t count[RT_MAX_PRODUCERS];
	uint64_t records, torn, out_of_order, invalid, dups;
	int16_t slot_of[RT_MAX_PRODUCERS];
	/* optional, per producer: a bit per seq (bits_n of them) to count
	 * a seq delivered twice, whatever the order */
	uint8_t *bits[RT_MAX_PRODUCERS];
	uint64_t bits_n[RT_MAX_PRODUCERS];
};

/* Writes a body of exactly len bytes (len >= sizeof(struct rt_body)). */
size_t rt_make_body(uint8_t *buf, size_t len, uint32_t producer, uint64_t seq);

/* Checks a test body (length and checksum); copies its header out.
 * 1 intact, 0 torn. */
int rt_body_ok(const uint8_t *body, size_t len, struct rt_body *out);

/* Verifies one consumed record; updates seen. 0 ok, -1 bad. */
int rt_check_record(struct env_reader *er, const struct ring_rec *r,
		    struct rt_seen *seen);

void rt_seen_init(struct rt_seen *s);

/* Creates a fresh broker-side segment with a unique name. */
int rt_segment(struct seg *s, const char *tag, uint64_t ring_size,
	       uint32_t max_record, uint32_t nslots);
void rt_segment_destroy(struct seg *s);

/* A private segment with its consumer, envelope reader and checker: the
 * set-up of most ring tests. */
struct rt_ctx {
	struct seg seg;
	struct seg hseg;        /* rt_cons_on(): the handle's mapping */
	struct ring_cons c;
	struct env_reader er;
	struct rt_seen seen;
};

int rt_setup(struct rt_ctx *x, const char *tag, uint64_t ring_size,
	     uint32_t max_record, uint32_t nslots);
void rt_teardown(struct rt_ctx *x);

/* Threaded tests: the consumer moves onto producer handle h's mapping
 * (one address per word for ThreadSanitizer), with a file description
 * of its own for the liveness checks. Undone by rt_teardown(). */
struct obx;
int rt_cons_on(struct rt_ctx *x, struct obx *h);

/* Emits a checksummed test body of len bytes (<= 64 KiB) through h. */
int rt_emit(struct obx *h, uint32_t producer, uint64_t seq, size_t len);

/* Consumes until the ring is empty (and nothing stalls) or `ms` pass.
 * Releases as it goes, reaps every 5 ms. Returns records consumed. */
uint64_t rt_drain(struct ring_cons *c, struct env_reader *er,
		  struct rt_seen *seen, uint64_t ms);

#endif
