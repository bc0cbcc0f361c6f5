/* bench_compress.c - `outbox-bench compress`: what compressing one http
 * batch costs per event, codec by codec, on the same bytes.
 *
 *   outbox-bench compress [--events E] [--size B] [--reps R] [--level L]
 *                         [--json]
 *
 * Two batches of E NDJSON lines shaped like the http sink's (B-byte
 * bodies): "bench", the e2e producers' body (a run of x padding, what
 * `e2e --sink http` sends), and "mixed", random 32-hex ids and bodies of
 * words and numbers drawn at random (closer to real telemetry, harder to
 * compress). Each is compressed R times by zlib's deflate (level L, one
 * stream reset per body: how sink_http.c did it before compress.c),
 * libdeflate (gzip, compress.c) and libzstd (compress.c). Timed with
 * CLOCK_THREAD_CPUTIME_ID, so time the thread spent preempted on a
 * shared machine is not counted; the median and min over the R bodies.
 * Every output is decoded once (zlib inflate / ZSTD_decompress) and
 * compared with the input.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "bench.h"
#include "buf.h"
#include "compress.h"

struct cb_opts {
	int events, size, reps, level, json;
};

struct cb_res {
	const char *codec;
	size_t in, out;
	double ns_med, ns_min;     /* per body */
	int ok;                    /* decoded back to the input */
};

static uint64_t cb_cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t cb_rand(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* a body of words and numbers, `size` bytes */
static int cb_mixed_body(char *b, int me, uint64_t s, int size, uint64_t *x)
{
	static const char *const ev[] = { "page_view", "click", "signup",
		"checkout", "search", "error", "login", "logout" };
	static const char *const w[] = { "home", "cart", "api", "v1", "user",
		"items", "orders", "static", "img", "docs", "help", "admin" };
	int n = snprintf(b, 65536, "{\"p\":%d,\"s\":%llu,\"user\":\"u-%llu\","
			 "\"event\":\"%s\",\"path\":\"/%s/%s/%llu\",\"ms\":%llu,"
			 "\"note\":\"", me, (unsigned long long)s,
			 (unsigned long long)(cb_rand(x) % 100000),
			 ev[cb_rand(x) % 8], w[cb_rand(x) % 12],
			 w[cb_rand(x) % 12],
			 (unsigned long long)(cb_rand(x) % 1000000),
			 (unsigned long long)(cb_rand(x) % 5000));

	while (n < size - 2) {
		const char *word = w[cb_rand(x) % 12];
		int k = (int)strlen(word);

		if (n + k + 1 > size - 2)
			k = size - 2 - n - 1;
		memcpy(b + n, word, (size_t)k);
		n += k;
		b[n++] = ' ';
	}
	b[n++] = '"';
	b[n++] = '}';
	return n;
}

static char *cb_batch(const struct cb_opts *o, int mixed, size_t *len)
{
	char *out = malloc((size_t)o->events * ((size_t)o->size + 200));
	char body[65536];
	uint64_t x = 0x9e3779b97f4a7c15ull, run = 0x5eed5eed12345678ull;
	size_t n = 0;
	int i, bl;

	if (!out)
		return NULL;
	for (i = 0; i < o->events; i++) {
		bl = mixed ? cb_mixed_body(body, 0, (uint64_t)i, o->size, &x) :
		     bench_body(body, 0, (uint64_t)i, o->size);
		if (mixed)
			run = cb_rand(&x);
		n += (size_t)bench_line(out + n, "api", run, mixed ?
					(int)(cb_rand(&x) & 0xff) : 0,
					(uint64_t)i, 1796024503259357560ull +
					(uint64_t)i * 997, body, bl);
	}
	*len = n;
	return out;
}

static int cb_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* zlib, as sink_http.c did it: one stream, deflateReset per body */
static int cb_zlib(z_stream *z, const char *in, size_t n, struct buf *out)
{
	buf_reset(out);
	if (deflateReset(z) != Z_OK ||
	    buf_reserve(out, deflateBound(z, n) + 32) < 0)
		return -1;
	z->next_in = (Bytef *)in;
	z->avail_in = (uInt)n;
	z->next_out = out->p;
	z->avail_out = (uInt)out->cap;
	if (deflate(z, Z_FINISH) != Z_STREAM_END)
		return -1;
	out->len = z->total_out;
	return 0;
}

/* decodes out and compares with in (gzip through zlib, zstd whole) */
static int cb_check(int zstd, const struct buf *out, const char *in, size_t n)
{
	char *dec = malloc(n + 1);
	uLongf dn = (uLongf)n;
	int ok = 0;

	if (!dec)
		return 0;
	if (zstd) {
		ok = ZSTD_decompress(dec, n, out->p, out->len) == n;
	} else {
		z_stream z;

		memset(&z, 0, sizeof(z));
		if (inflateInit2(&z, 15 + 16) == Z_OK) {
			z.next_in = out->p;
			z.avail_in = (uInt)out->len;
			z.next_out = (Bytef *)dec;
			z.avail_out = (uInt)n + 1;
			ok = inflate(&z, Z_FINISH) == Z_STREAM_END &&
			     z.total_out == n;
			dn = z.total_out;
			inflateEnd(&z);
		}
	}
	ok = ok && dn == n && memcmp(dec, in, n) == 0;
	free(dec);
	return ok;
}

/* codec 0 zlib, 1 libdeflate, 2 zstd */
static int cb_run(const struct cb_opts *o, int codec, const char *in,
		  size_t n, struct cb_res *r)
{
	static const char *const names[] = { "zlib", "libdeflate", "zstd" };
	uint64_t *t = calloc((size_t)o->reps, sizeof(*t)), t0;
	struct comp *c = NULL;
	struct buf out;
	z_stream z;
	int i, rc = 0;

	memset(&z, 0, sizeof(z));
	buf_init(&out, 0);
	if (!t)
		return -1;
	if (codec == 0)
		rc = deflateInit2(&z, o->level, Z_DEFLATED, 15 + 16, 8,
				  Z_DEFAULT_STRATEGY) == Z_OK ? 0 : -1;
	else if (!(c = comp_new(codec == 1 ? COMP_GZIP : COMP_ZSTD,
				o->level)))
		rc = -1;
	for (i = -5; rc == 0 && i < o->reps; i++) {   /* 5 warm-up bodies */
		t0 = cb_cpu_ns();
		rc = codec == 0 ? cb_zlib(&z, in, n, &out) :
		     comp_body(c, in, n, &out);
		if (i >= 0)
			t[i] = cb_cpu_ns() - t0;
	}
	if (rc == 0) {
		qsort(t, (size_t)o->reps, sizeof(*t), cb_cmp_u64);
		r->codec = names[codec];
		r->in = n;
		r->out = out.len;
		r->ns_med = (double)t[o->reps / 2];
		r->ns_min = (double)t[0];
		r->ok = cb_check(codec == 2, &out, in, n);
	}
	if (codec == 0)
		deflateEnd(&z);
	comp_free(c);
	buf_free(&out);
	free(t);
	return rc;
}

static void cb_print(const struct cb_opts *o, const char *batch,
		     const struct cb_res *r, int first)
{
	double ev = (double)o->events;

	if (o->json) {
		printf("%s\"%s_%s\":{\"in_bytes\":%zu,\"out_bytes\":%zu,"
		       "\"ratio\":%.2f,\"ns_per_event\":%.1f,"
		       "\"ns_per_event_min\":%.1f,\"mb_per_s\":%.0f,"
		       "\"decoded_ok\":%s}", first ? "" : ",", batch, r->codec,
		       r->in, r->out, (double)r->in / (double)r->out,
		       r->ns_med / ev, r->ns_min / ev,
		       (double)r->in / r->ns_med * 1e3, r->ok ? "true" : "false");
		return;
	}
	printf("| %s | %s | %zu -> %zu | %.1f | %.0f (%.0f) | %.0f |%s\n",
	       batch, r->codec, r->in, r->out, (double)r->in / (double)r->out,
	       r->ns_med / ev, r->ns_min / ev,
	       (double)r->in / r->ns_med * 1e3, r->ok ? "" : " DECODE FAILED");
}

int bench_compress(int argc, char **argv)
{
	struct cb_opts o = { .events = 500, .size = 200, .reps = 200,
			     .level = 1 };
	int i, b, k, first = 1, bad = 0;

	for (i = 0; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(argv[i], "--json"))
			o.json = 1;
		else if (v && !strcmp(argv[i], "--events"))
			o.events = atoi(argv[++i]);
		else if (v && !strcmp(argv[i], "--size"))
			o.size = atoi(argv[++i]);
		else if (v && !strcmp(argv[i], "--reps"))
			o.reps = atoi(argv[++i]);
		else if (v && !strcmp(argv[i], "--level"))
			o.level = atoi(argv[++i]);
		else
			bad = 1;
	}
	if (bad || o.events < 1 || o.events > 100000 || o.size < 64 ||
	    o.size > 60000 || o.reps < 1 || o.level < 1 || o.level > 9) {
		fprintf(stderr, "usage: outbox-bench compress [--events E] "
			"[--size B] [--reps R] [--level 1..9] [--json]\n");
		return 2;
	}
	if (o.json)
		printf("{\"mode\":\"compress\",\"events\":%d,\"size\":%d,"
		       "\"level\":%d,\"reps\":%d,", o.events, o.size, o.level,
		       o.reps);
	else
		printf("one batch of %d NDJSON lines, %d-byte bodies, level %d, "
		       "%d bodies each (thread CPU time, median (min))\n\n"
		       "| batch | codec | bytes | ratio | ns/event | MB/s |\n"
		       "|---|---|---|---|---|---|\n", o.events, o.size,
		       o.level, o.reps);
	for (b = 0; b < 2; b++) {
		size_t n;
		char *in = cb_batch(&o, b, &n);

		if (!in)
			return 1;
		for (k = 0; k < 3; k++) {
			struct cb_res r;

			if (cb_run(&o, k, in, n, &r) < 0) {
				fprintf(stderr, "compress: codec %d failed\n",
					k);
				free(in);
				return 1;
			}
			cb_print(&o, b ? "mixed" : "bench", &r, first);
			first = 0;
		}
		free(in);
	}
	if (o.json)
		printf("}\n");
	return 0;
}
