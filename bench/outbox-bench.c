/* outbox-bench - measure outbox (PRODUCT.md section 4, "outbox-bench"). */
#include <stdio.h>
#include <string.h>
#include "bench.h"

static unsigned bench_idx(uint64_t v)
{
	unsigned e, sub;

	if (v < BENCH_SUB)
		return (unsigned)v;
	e = 63u - (unsigned)__builtin_clzll(v);
	sub = (unsigned)(v >> (e - BENCH_SUB_BITS)) & (BENCH_SUB - 1);
	return (e - BENCH_SUB_BITS + 1) * BENCH_SUB + sub;
}

static uint64_t bench_val(unsigned idx)
{
	unsigned e;
	uint64_t sub;

	if (idx < BENCH_SUB)
		return idx;
	e = idx / BENCH_SUB + BENCH_SUB_BITS - 1;
	sub = idx % BENCH_SUB;
	return (BENCH_SUB + sub) << (e - BENCH_SUB_BITS);
}

void bench_hist_add(struct bench_hist *h, uint64_t v)
{
	h->n++;
	h->sum += v;
	if (v > h->max)
		h->max = v;
	h->b[bench_idx(v)]++;
}

void bench_hist_merge(struct bench_hist *dst, const struct bench_hist *src)
{
	unsigned i;

	dst->n += src->n;
	dst->sum += src->sum;
	if (src->max > dst->max)
		dst->max = src->max;
	for (i = 0; i < BENCH_BUCKETS; i++)
		dst->b[i] += src->b[i];
}

uint64_t bench_hist_pct(const struct bench_hist *h, double p)
{
	uint64_t want, acc = 0;
	unsigned i;

	if (!h->n)
		return 0;
	want = (uint64_t)(p / 100.0 * (double)h->n);
	if (want >= h->n)
		want = h->n - 1;
	for (i = 0; i < BENCH_BUCKETS; i++) {
		acc += h->b[i];
		if (acc > want)
			return bench_val(i);
	}
	return h->max;
}

double bench_hist_mean(const struct bench_hist *h)
{
	return h->n ? (double)h->sum / (double)h->n : 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: outbox-bench emit [--producers N] [--size B] [--count M] [--json]\n"
		"       outbox-bench e2e  [--producers N] [--size B] [--duration S]\n"
		"                         [--sink file|discard|http] [--rate R]\n"
		"                         [--outage S [--outage-at T]] [--verify]"
		" [--json]\n"
		"       outbox-bench sink [--load] [--conns C] [--events E]"
		" [--json] ...\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage();
		return 2;
	}
	if (!strcmp(argv[1], "emit"))
		return bench_emit(argc - 2, argv + 2);
	if (!strcmp(argv[1], "e2e"))
		return bench_e2e(argc - 2, argv + 2);
	if (!strcmp(argv[1], "sink"))
		return bench_sink(argc - 2, argv + 2);
	usage();
	return 2;
}
