/* fuzz_values.h - for the libFuzzer targets: an input's '\n'-separated
 * values (header values, as an upstream could send several), each an
 * exact-size NUL-terminated heap copy, so ASan sees any read past one. */
#ifndef OBX_FUZZ_VALUES_H
#define OBX_FUZZ_VALUES_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Up to max values of [p, p + n) into out; how many. */
static inline int fuzz_values(const uint8_t *p, size_t n, char **out,
			      int max)
{
	size_t i, start = 0;
	int k = 0;

	for (i = 0; i <= n && k < max; i++) {
		if (i < n && p[i] != '\n')
			continue;
		out[k] = malloc(i - start + 1);
		if (!out[k])
			break;
		memcpy(out[k], p + start, i - start);
		out[k][i - start] = '\0';
		k++;
		start = i + 1;
	}
	return k;
}

static inline void fuzz_values_free(char **v, int n)
{
	while (n-- > 0)
		free(v[n]);
}

#endif
