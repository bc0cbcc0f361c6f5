/* fuzz_sentry_limits - libFuzzer target: the X-Sentry-Rate-Limits parser
 * (pol_parse_sentry_limits) and what the policy does with its entries
 * (pol_on_response: per-category table, whole-sink limits). Any header an
 * upstream sends must give bounded, well-formed entries and a sane sink.
 *
 * Input: 1 byte of status selector, 1 byte of flags, then up to 4 header
 * values separated by '\n' (exact-size NUL-terminated heap copies).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_values.h"
#include "policy.h"

#define MAXV 4
#define MAXOUT 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_entries(const struct pol_limit *l, int n, int max,
			  uint64_t max_ms)
{
	int i;

	if (n < 0 || n > max)
		abort();
	for (i = 0; i < n; i++) {
		size_t len = strnlen(l[i].cat, POL_CAT_MAX);

		if (len >= POL_CAT_MAX)
			abort();
		if (strpbrk(l[i].cat, ":;, \t"))
			abort();
		if (l[i].wait_ms < POL_RA_FLOOR_MS ||
		    (uint64_t)l[i].wait_ms > max_ms)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const int statuses[] = { 200, 202, 400, 413, 429, 500, 503 };
	const uint64_t max_ms = 300000;
	char *vals[MAXV];
	struct pol_limit l[MAXOUT];
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b;
	struct pol_result r;
	struct pol_outcome o;
	int n = 0, k, m;
	const int64_t now = 1000000;

	if (size < 2)
		return 0;
	n = fuzz_values(data + 2, size - 2, vals, MAXV);
	for (k = 0; k < n; k++) {
		for (m = 0; m <= MAXOUT; m += 5) {
			int got = pol_parse_sentry_limits(vals[k], max_ms, l,
							  m);

			check_entries(l, got, m, max_ms);
		}
	}
	/* through the state machine */
	memset(&c, 0, sizeof(c));
	c.max_inflight = 4;
	c.backoff_base_ms = 500;
	c.backoff_max_ms = 60000;
	c.max_retries = 1000;
	c.max_backoff_duration_ms = 43200000;
	c.retry_after_max_ms = max_ms;
	c.max_rate_limit_duration_ms = 1800000;
	c.on_rate_limit = data[1] & 1 ? RL_DROP_CATEGORY : RL_HOLD;
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 5);
	memset(&o, 0, sizeof(o));
	o.status = statuses[data[0] % (sizeof(statuses) /
				       sizeof(statuses[0]))];
	o.wall_ms = now;
	o.sentry_limits = (const char *const *)vals;
	o.n_sentry_limits = n;
	for (k = 0; k < 3; k++) {
		if (pol_begin(&s, &c, &b, 0, now + k * 1000) < 0)
			continue;
		pol_on_response(&s, &c, &b, &o, now + k * 1000,
				(uint32_t)data[1] * 16777619u, &r);
		if (s.ncats < 0 || s.ncats > POL_MAX_CATS)
			abort();
		if (s.state > POL_RATE_LIMITED)
			abort();
		if (s.state == POL_RATE_LIMITED &&
		    s.until_ms > now + k * 1000 + (int64_t)max_ms)
			abort();	/* never past the cap */
		for (m = 0; m < s.ncats; m++)
			if (!s.cats[m].name[0] ||
			    strnlen(s.cats[m].name, POL_CAT_MAX) >=
			    POL_CAT_MAX)
				abort();
		if (r.verdict == POL_V_DROP &&
		    (r.reason <= POL_R_NONE || r.reason >= POL_R_COUNT))
			abort();
		pol_cat_limited(&s, vals[0] && n ? vals[0] : "", now);
	}
	fuzz_values_free(vals, n);
	return 0;
}
