/* outbox-bench - measure outbox (PRODUCT.md section 4, "outbox-bench"). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include "bench.h"
#include "compress.h"

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

void bench_sleep_until(uint64_t t)
{
	struct timespec ts = { (time_t)(t / 1000000000ull),
			       (long)(t % 1000000000ull) };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) ==
	       EINTR)
		;
}

/* What the pacing alone costs: the same processes sleeping to the same
 * deadlines, emitting nothing, during the run (bench.h). On this VM a
 * timer wake-up is ~20 us, far more than an emit: reported so that it
 * can be told apart from outbox's cost. */
void bench_pace_start(struct bench_pace *p, int np, double rate, double secs)
{
	uint64_t period = (uint64_t)(1e9 / rate), k;
	int i;

	p->np = 0;
	p->n = (uint64_t)(rate * secs);
	for (i = 0; i < np && i < 64; i++) {
		pid_t pid = fork();

		if (pid == 0) {
			uint64_t next = bench_now();

			prctl(PR_SET_PDEATHSIG, SIGKILL);
			for (k = 0; k < p->n; k++)
				bench_sleep_until(next += period);
			_exit(0);
		}
		if (pid > 0)
			p->pid[p->np++] = pid;
	}
}

double bench_pace_cost(int np, double rate, double secs)
{
	struct bench_pace p;

	bench_pace_start(&p, np, rate, secs);
	return bench_pace_end(&p);
}

double bench_pace_end(struct bench_pace *p)
{
	double cpu = 0;
	struct rusage ru;
	int i, got = 0;

	for (i = 0; i < p->np; i++)
		if (wait4(p->pid[i], NULL, 0, &ru) == p->pid[i]) {
			cpu += bench_ru_s(&ru);
			got++;
		}
	return got && p->n ? cpu * 1e6 / (double)(p->n * (uint64_t)got) : 0;
}

int bench_body(char *body, int me, uint64_t s, int size)
{
	int n = snprintf(body, 65536, "{\"p\":%d,\"s\":%llu,\"pad\":\"", me,
			 (unsigned long long)s);

	while (n < size - 2)
		body[n++] = 'x';
	body[n++] = '"';
	body[n++] = '}';
	return n;
}

int bench_line(char *out, const char *sink, uint64_t run, int me,
	       uint64_t s, uint64_t ts, const char *body, int blen)
{
	int n = snprintf(out, 200, "{\"id\":\"%016llx%016llx\",\"sink\":"
			 "\"%s\",\"type\":\"bench\",\"ts\":%llu,\"body\":",
			 (unsigned long long)run,
			 (unsigned long long)((uint64_t)me << 40 | s), sink,
			 (unsigned long long)ts);

	memcpy(out + n, body, (size_t)blen);
	n += blen;
	memcpy(out + n, "}\n", 2);
	return n + 2;
}

int bench_comp_parse(const char *s, enum cfg_compression *out)
{
	static const enum cfg_compression all[] = { COMP_GZIP, COMP_ZSTD,
						    COMP_NONE };
	unsigned i;

	for (i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		if (!strcmp(s, comp_name(all[i]))) {
			*out = all[i];
			return 0;
		}
	return -1;
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
		" [--json] ...\n"
		"       outbox-bench compress [--events E] [--size B]"
		" [--reps R] [--level L] [--json]\n");
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
	if (!strcmp(argv[1], "compress"))
		return bench_compress(argc - 2, argv + 2);
	usage();
	return 2;
}
