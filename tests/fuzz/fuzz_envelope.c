/* fuzz_envelope - libFuzzer target: the envelope reader (env_parse) over
 * arbitrary record bytes. A ring record is written by another process, so
 * any byte pattern must be rejected or read without reading outside it.
 * The input is copied to an exact-size heap buffer so ASan sees every
 * overread. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct env_reader r;
	static int ready;
	struct env_view v;
	uint8_t *copy = malloc(size ? size : 1);

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	if (!ready) {
		env_reader_init(&r);
		ready = 1;
	}
	if (env_parse(&r, copy, size, &v) == 0) {
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
