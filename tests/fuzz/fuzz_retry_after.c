/* fuzz_retry_after - libFuzzer target: the Retry-After parser
 * (pol_parse_retry_after, pol_retry_after). A header value is written by
 * the upstream: any bytes must give -EINVAL or a wait within
 * [POL_RA_FLOOR_MS, max], never a crash or a read past the value.
 *
 * Input: 8 bytes of "now" (the answer's wall clock, ms, little endian;
 * masked to the years 1970..~2250 so HTTP-dates land both sides of it),
 * 4 bytes of the cap, then up to 8 values separated by '\n', each copied
 * to an exact-size NUL-terminated heap buffer so ASan sees every overread.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_values.h"
#include "policy.h"

#define MAXV 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	int i;

	for (i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *vals[MAXV];
	int64_t now, w, best = -1;
	uint64_t max_ms;
	int n = 0, k, rc;

	if (size < 12)
		return 0;
	now = (int64_t)(le(data, 8) & ((1ull << 43) - 1));
	/* a cap of 0 .. 4.3e9 ms, and now and then an absurd one */
	max_ms = le(data + 8, 4);
	if (max_ms == 0xffffffffu)
		max_ms = UINT64_MAX;
	n = fuzz_values(data + 12, size - 12, vals, MAXV);
	for (k = 0; k < n; k++) {
		w = -77;
		rc = pol_parse_retry_after(vals[k], now, max_ms, &w);
		if (rc != 0 && rc != -EINVAL)
			abort();
		if (rc == -EINVAL && w != -77)
			abort();	/* the output is left alone */
		if (rc == 0) {
			/* the floor, unless the configured cap is lower */
			int64_t lo = max_ms < POL_RA_FLOOR_MS ?
				     (int64_t)max_ms : POL_RA_FLOOR_MS;

			if (w < lo || (max_ms <= INT64_MAX &&
				       (uint64_t)w > max_ms))
				abort();
			if (w > best)
				best = w;
		}
	}
	/* every value at once: the largest valid wait, or none */
	rc = pol_retry_after((const char *const *)vals, n, now, max_ms, &w);
	if ((rc == 0) != (best >= 0) || (rc == 0 && w != best))
		abort();
	fuzz_values_free(vals, n);
	return 0;
}
