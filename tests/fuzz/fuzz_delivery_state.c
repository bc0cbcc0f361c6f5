/* fuzz_delivery_state - libFuzzer target: the delivery-state loader
 * (pol_load, used by broker/persist.c at start) over arbitrary files.
 * The file outlives the broker and its crashes: any byte pattern must be
 * refused or read without reading outside it, and what it accepts must
 * be a fixed point of save/load (the codec round-trips: saving what was
 * loaded and loading it again gives the same bytes when saved again). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "policy.h"
#include "testutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char g_in[64], g_a[64], g_b[64];

/* the scratch files go with the process */
static void cleanup(void)
{
	unlink(g_in);
	unlink(g_a);
	unlink(g_b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	atexit(cleanup);
	snprintf(g_in, sizeof(g_in), "/dev/shm/obxfuzz-ds-%d-in", getpid());
	snprintf(g_a, sizeof(g_a), "/dev/shm/obxfuzz-ds-%d-a", getpid());
	snprintf(g_b, sizeof(g_b), "/dev/shm/obxfuzz-ds-%d-b", getpid());
	return 0;
}

static int spit(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	int ok;

	if (!f)
		return -1;
	ok = fwrite(p, 1, n, f) == n;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/* The sinks the broker would pass: a few names the seeds use. */
static void sinks_init(struct pol_sink *s)
{
	pol_sink_init(&s[0], "api");
	pol_sink_init(&s[1], "default");
	pol_sink_init(&s[2], "sentry");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pol_sink s1[3], s2[3];
	struct pol_saved_batch *b1 = NULL, *b2 = NULL;
	size_t n1 = 0, n2 = 0, la, lb;
	char *a, *b;

	if (spit(g_in, data, size))
		return 0;
	sinks_init(s1);
	if (pol_load(g_in, s1, 3, &b1, &n1, 0) != 0)
		goto out;
	/* save what was loaded, load it, save again: same bytes */
	if (pol_save(g_a, s1, 3, b1, n1, 0))
		abort();
	sinks_init(s2);
	if (pol_load(g_a, s2, 3, &b2, &n2, 0) != 0)
		abort();
	if (pol_save(g_b, s2, 3, b2, n2, 0))
		abort();
	a = tu_read_file(g_a, &la);
	b = tu_read_file(g_b, &lb);
	if (!a || !b || la != lb || memcmp(a, b, la))
		abort();
	free(a);
	free(b);
out:
	free(b1);
	free(b2);
	return 0;
}
