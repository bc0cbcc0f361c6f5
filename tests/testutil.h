/* testutil.h - shared helpers for the CUnit test programs.
 *
 * TEST_MAIN(suites...) expands to a main() that registers the given
 * suite-adding functions, runs them with the basic interface (verbose)
 * and exits non-zero when any test or assertion failed.
 */
#ifndef OBX_TESTUTIL_H
#define OBX_TESTUTIL_H

#include <CUnit/Basic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t tu_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* a unique shm name per test process */
static inline const char *tu_shm_name(const char *tag)
{
	static char buf[64];

	snprintf(buf, sizeof(buf), "obxtest-%s-%d", tag, (int)getpid());
	return buf;
}

/* The whole file, NUL-terminated (malloc'd, caller frees); its length in
 * *len. NULL when it cannot be read. */
static inline char *tu_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	long n;

	*len = 0;
	if (!f)
		return NULL;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
	    fseek(f, 0, SEEK_SET) == 0) {
		buf = malloc((size_t)n + 1);
		if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
			free(buf);
			buf = NULL;
		}
		if (buf) {
			buf[n] = '\0';
			*len = (size_t)n;
		}
	}
	fclose(f);
	return buf;
}

typedef int (*tu_add_fn)(void);

static inline int tu_run(tu_add_fn *adds, int n)
{
	unsigned fails;
	int i;

	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	for (i = 0; i < n; i++)
		if (adds[i]() != 0) {
			fprintf(stderr, "suite registration failed\n");
			return 2;
		}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	if (getenv("OBX_TEST_ONLY")) {
		/* run only the tests whose name contains $OBX_TEST_ONLY */
		const char *only = getenv("OBX_TEST_ONLY");
		CU_pSuite s;
		CU_pTest t;

		for (s = CU_get_registry()->pSuite; s; s = s->pNext)
			for (t = s->pTest; t; t = t->pNext)
				t->fActive = strstr(t->pName, only) != NULL;
	}
	CU_basic_run_tests();
	fails = CU_get_number_of_tests_failed() +
		CU_get_number_of_failures();
	CU_cleanup_registry();
	return fails ? 1 : 0;
}

#define TEST_MAIN(...)                                                  \
	int main(void)                                                  \
	{                                                               \
		tu_add_fn adds[] = { __VA_ARGS__ };                     \
		return tu_run(adds, (int)(sizeof(adds) / sizeof(adds[0]))); \
	}

#endif
