/* fuzz_segment_settings - libFuzzer target: Segment's CDN settings
 * (proto_segment_settings, broker/proto_segment.c). The document comes
 * from the network (settings_url): any bytes must leave the sink's
 * settings either untouched (not a JSON object: -EINVAL) or within the
 * research notes' clamps - never a window or budget the delivery policy
 * cannot live with, never a status override outside 100..599 or past the
 * table, and `what` always a terminated string.
 *
 * Input: the document (exact-size heap copy); its first byte also picks
 * the size of the `what` buffer (0..63).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* v is the operator's value, or within [lo, hi] */
static void within(uint64_t v, uint64_t base, uint64_t lo, uint64_t hi)
{
	if (v != base && (v < lo || v > hi))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfg d;
	struct cfg_sink base, c, before;
	char what[64];
	size_t wlen = size ? data[0] % sizeof(what) : 0;
	char *copy = malloc(size ? size : 1);
	int rc, i;

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	cfg_default(&d);
	base = d.sinks[0];
	base.type = SINK_SEGMENT;
	base.status[0].code = 400;              /* an operator's override */
	base.status[0].action = ST_DROP;
	base.nstatus = 1;
	c = base;
	c.max_retries = 77;                     /* applied settings before */
	before = c;
	memset(what, 'x', sizeof(what));
	rc = proto_segment_settings(copy, size, &base, &c, what, wlen);
	if (wlen && strnlen(what, wlen) >= wlen)
		abort();                        /* not terminated */
	if (rc == -EINVAL) {
		if (memcmp(&c, &before, sizeof(c)))
			abort();                /* refused, yet changed */
	} else if (rc == 0) {
		within(c.max_retries, base.max_retries, 0, 1000);
		within(c.backoff_base_ms, base.backoff_base_ms, 100, 60000);
		within(c.max_backoff_duration_ms, base.max_backoff_duration_ms,
		       0, 604800000);
		within(c.backoff_jitter_pct, base.backoff_jitter_pct, 0, 50);
		within(c.retry_after_max_ms, base.retry_after_max_ms, 1000,
		       3600000);
		if (c.backoff_max_ms < c.backoff_base_ms ||
		    (c.backoff_max_ms != base.backoff_max_ms &&
		     c.backoff_max_ms != c.backoff_base_ms &&
		     (c.backoff_max_ms < 1000 || c.backoff_max_ms > 3600000)))
			abort();
		if (c.nstatus < base.nstatus || c.nstatus > CFG_MAX_STATUS ||
		    c.status[0].code != 400 || c.status[0].action != ST_DROP)
			abort();                /* the operator's stays first */
		for (i = 0; i < c.nstatus; i++) {
			int j;

			if (c.status[i].code < 100 || c.status[i].code > 599)
				abort();
			for (j = 0; j < i; j++)
				if (c.status[j].code == c.status[i].code)
					abort();        /* one rule a code */
		}
		/* nothing else of the sink changed */
		c.max_retries = before.max_retries;
		c.backoff_base_ms = before.backoff_base_ms;
		c.backoff_max_ms = before.backoff_max_ms;
		c.max_backoff_duration_ms = before.max_backoff_duration_ms;
		c.backoff_jitter_pct = before.backoff_jitter_pct;
		c.retry_after_max_ms = before.retry_after_max_ms;
		c.nstatus = before.nstatus;
		memcpy(c.status, before.status, sizeof(c.status));
		if (memcmp(&c, &before, sizeof(c)))
			abort();
	} else {
		abort();
	}
	free(copy);
	return 0;
}
