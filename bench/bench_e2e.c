/* bench_e2e.c - `outbox-bench e2e`: lands with the broker. */
#include <stdio.h>
#include "bench.h"

int bench_e2e(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "outbox-bench e2e: needs outboxd (broker issue)\n");
	return 2;
}
