/* fuzz_config - libFuzzer target: the configuration parser (cfg_load,
 * inih driven by our own line reader) over arbitrary files. Any byte
 * pattern must give a config or FILE:LINE errors, never a crash or a
 * read outside a buffer; an accepted config must round-trip through
 * cfg_print (printed, loaded again, printed again: the same text), and
 * the redacted print must run on it. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char g_in[64], g_out[64];
static FILE *g_null;

/* the scratch files go with the process */
static void cleanup(void)
{
	unlink(g_in);
	unlink(g_out);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	atexit(cleanup);
	snprintf(g_in, sizeof(g_in), "/dev/shm/obxfuzz-cfg-%d-in", getpid());
	snprintf(g_out, sizeof(g_out), "/dev/shm/obxfuzz-cfg-%d-out",
		 getpid());
	g_null = fopen("/dev/null", "w");
	return 0;
}

static char *print(const struct cfg *c, size_t *n)
{
	char *buf = NULL;
	FILE *f = open_memstream(&buf, n);

	if (!f)
		abort();
	cfg_print(c, f);
	fclose(f);
	return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfg c, again;
	char *p1, *p2;
	size_t n1, n2;
	FILE *f = fopen(g_in, "wb");

	if (!f)
		return 0;
	if (fwrite(data, 1, size, f) != size) {
		fclose(f);
		return 0;
	}
	fclose(f);
	if (cfg_load(&c, g_in, g_null) != 0) {
		cfg_free(&c);
		return 0;
	}
	cfg_print_redacted(&c, g_null);
	p1 = print(&c, &n1);
	f = fopen(g_out, "wb");
	if (!f || fwrite(p1, 1, n1, f) != n1)
		abort();
	fclose(f);
	if (cfg_load(&again, g_out, g_null) != 0) {
		fprintf(stderr, "printed config does not load:\n%s\n", p1);
		abort();
	}
	p2 = print(&again, &n2);
	if (n1 != n2 || memcmp(p1, p2, n1)) {
		fprintf(stderr, "round trip differs:\n%s\n---\n%s\n", p1, p2);
		abort();
	}
	free(p1);
	free(p2);
	cfg_free(&again);
	cfg_free(&c);
	return 0;
}
