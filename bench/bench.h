/* bench.h - shared pieces of outbox-bench: clock, log-linear histogram
 * (32 sub-buckets per power of two, ~3 % resolution; lives in shared
 * memory so forked producers fill their own and the parent merges).
 */
#ifndef OBX_BENCH_H
#define OBX_BENCH_H

#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <time.h>

#include "config.h"

static inline uint64_t bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define BENCH_SUB_BITS 5
#define BENCH_SUB (1 << BENCH_SUB_BITS)
#define BENCH_BUCKETS (64 * BENCH_SUB)

struct bench_hist {
	uint64_t n, sum, max;
	uint64_t b[BENCH_BUCKETS];
};

void bench_hist_add(struct bench_hist *h, uint64_t v);
void bench_hist_merge(struct bench_hist *dst, const struct bench_hist *src);
uint64_t bench_hist_pct(const struct bench_hist *h, double p);
double bench_hist_mean(const struct bench_hist *h);

/* utime + stime of a rusage, in seconds */
static inline double bench_ru_s(const struct rusage *ru)
{
	return (double)ru->ru_utime.tv_sec + ru->ru_utime.tv_usec / 1e6 +
	       (double)ru->ru_stime.tv_sec + ru->ru_stime.tv_usec / 1e6;
}

/* utime + stime of pid (all threads) in seconds, and VmHWM in KiB */
void bench_proc(pid_t pid, double *cpu_s, uint64_t *hwm_kb);

/* clock_nanosleep to an absolute CLOCK_MONOTONIC time, through EINTR */
void bench_sleep_until(uint64_t t);
/* The pacing alone: np processes sleeping to absolute deadlines `rate`
 * times a second for `secs`, emitting nothing. Started next to a paced
 * run, it measures what a wake-up costs under that run's load (alone, on
 * an idle machine, a wake-up costs something else); _end waits for them
 * and gives their CPU us per wake-up (= per event when paced). */
struct bench_pace {
	pid_t pid[64];
	int np;
	uint64_t n;                  /* wake-ups per process */
};
void bench_pace_start(struct bench_pace *p, int np, double rate, double secs);
double bench_pace_end(struct bench_pace *p);
/* the same alone, before a run: start and end */
double bench_pace_cost(int np, double rate, double secs);

/* The producers' JSON body {"p":P,"s":S,"pad":"xx..."} of `size` bytes
 * (>= 64) into body (65536 bytes); its length. */
int bench_body(char *body, int me, uint64_t s, int size);
/* The line outboxd's http and file sinks make of it (ndjson), built by
 * hand for the peers, which must send the same bytes:
 * {"id":"<run><me,s>","sink":SINK,"type":"bench","ts":TS,"body":BODY}\n
 * into out (blen + 200 bytes, sink <= 48 chars); its length. */
int bench_line(char *out, const char *sink, uint64_t run, int me,
	       uint64_t s, uint64_t ts, const char *body, int blen);

/* "gzip" | "zstd" | "none" -> *out; 0, or -1 for anything else */
int bench_comp_parse(const char *s, enum cfg_compression *out);

int bench_emit(int argc, char **argv);
int bench_e2e(int argc, char **argv);
int bench_sink(int argc, char **argv);
int bench_compress(int argc, char **argv);

#endif
