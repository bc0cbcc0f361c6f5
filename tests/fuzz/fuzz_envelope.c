/* fuzz_envelope - libFuzzer target: the envelope reader (env_parse) over
 * arbitrary record bytes. A ring record is written by another process, so
 * any byte pattern must be rejected or read without reading outside it.
 * The input is copied to an exact-size heap buffer so ASan sees every
 * overread. env_parse()'s fast path is held to env_parse_general(): the
 * same accept/reject and the same view for every input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct env_reader r;
	static int ready;
	struct env_view v, g;
	int rc;
	uint8_t *copy = malloc(size ? size : 1);

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	if (!ready) {
		env_reader_init(&r);
		ready = 1;
	}
	rc = env_parse(&r, copy, size, &v);
	/* the fast path (the producers' layout) answers as the general
	 * reader does, and fills the same view */
	if (env_parse_general(&r, copy, size, &g) != rc)
		abort();
	if (rc == 0 && (g.sink_len != v.sink_len || g.type_len != v.type_len ||
			g.sink != v.sink || g.type != v.type || g.ts != v.ts ||
			g.has_id != v.has_id ||
			memcmp(g.id, v.id, ENV_ID_LEN) != 0 ||
			g.body_kind != v.body_kind || g.body != v.body ||
			g.body_len != v.body_len))
		abort();
	if (rc == 0) {
		/* touch every field the view claims, so a view pointing
		 * outside the record is an ASan report */
		volatile uint8_t sum = 0;
		for (uint32_t i = 0; i < v.sink_len; i++)
			sum ^= (uint8_t)v.sink[i];
		for (uint32_t i = 0; i < v.type_len; i++)
			sum ^= (uint8_t)v.type[i];
		if (v.body)
			for (uint32_t i = 0; i < v.body_len; i++)
				sum ^= (uint8_t)v.body[i];
		(void)sum;
	}
	free(copy);
	return 0;
}
