/* test_delivery.c - the http sink's delivery policy end to end: a real
 * outboxd (the built binary), producers forked from here writing through
 * liboutbox, and tests/fake_upstream.py as the upstream, scripted per
 * scenario (outage, 429 + Retry-After, 413, 400, a hanging upstream, a
 * broker restart inside a Retry-After window).
 *
 * What the upstream saw (request times, event ids, X-Retry-Count) is read
 * back from its admin API; what the broker counted from its shm stats and
 * sink pages. Every scenario ends with the accounting identity of
 * PRODUCT.md section 6 at a quiet moment.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include "testutil.h"
#include "brokertest.h"
#include "outbox.h"
#include "segment.h"
#include "upstream.h"

#if defined(__SANITIZE_ADDRESS__)
#define SCALE 4
#else
#define SCALE 1
#endif

#define MAXPROD 16

/* ---- the broker config --------------------------------------------------- */

/* The http sink "api" against the fake upstream; `extra` (may be "")
 * holds further keys for [sink api], none of the ones written here. */
static void api_conf(char *buf, size_t cap, unsigned batch, const char *flush,
		     const char *timeout, const char *backoff_base,
		     const char *extra)
{
	snprintf(buf, cap,
		 "[sink api]\ntype = http\nurl = %s/ingest\n"
		 "encoding = ndjson\ncompression = none\n"
		 "batch_max_events = %u\nflush_interval = %s\n"
		 "max_inflight = 4\nbackoff_base = %s\nbackoff_max = 4s\n"
		 "timeout = %s\nconnect_timeout = 1s\n"
		 "retry_after_max = 300s\n%s", up_base(), batch, flush,
		 backoff_base, timeout, extra);
}

/* ---- producers ----------------------------------------------------------- */

struct prods {
	pid_t pid[MAXPROD];
	unsigned np;
	uint64_t *done;		/* shared page: committed events per producer */
};

/* Emits n events {"p":P,"s":S} to sink "api", `rate` per second (0: as
 * fast as it can), retrying a full ring. */
static void producer(const char *shm, unsigned p, uint64_t n, unsigned rate,
		     uint64_t *done)
{
	obx_t *h = bt_open(shm);
	char body[64];
	uint64_t s, t0;
	int i, sink = -ENOENT;

	if (!h)
		_exit(2);
	for (i = 0; i < 500 && sink < 0; i++) {
		sink = obx_sink(h, "api");
		if (sink < 0)
			usleep(10000);
	}
	if (sink < 0)
		_exit(4);
	t0 = tu_now_ns();
	for (s = 0; s < n; s++) {
		int len = snprintf(body, sizeof(body), "{\"p\":%u,\"s\":%llu}",
				   p, (unsigned long long)s), rc;

		if (rate) {
			uint64_t due = t0 + s * 1000000000ull / rate,
				 now = tu_now_ns();

			if (due > now)
				usleep((useconds_t)((due - now) / 1000));
		}
		while ((rc = obx_emit(h, sink, "track", body, (size_t)len,
				      OBX_BODY_JSON)) == -EAGAIN)
			usleep(1000);
		if (rc != 0)
			_exit(3);
		__atomic_store_n(&done[p], s + 1, __ATOMIC_RELEASE);
	}
	obx_close(h);
	_exit(0);
}

static void prods_start(struct prods *P, const struct bt *t, unsigned np,
			uint64_t n, unsigned rate)
{
	unsigned p;

	memset(P, 0, sizeof(*P));
	P->done = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CU_ASSERT_FATAL(P->done != MAP_FAILED);
	P->np = np;
	for (p = 0; p < np; p++) {
		P->pid[p] = fork();
		CU_ASSERT_FATAL(P->pid[p] >= 0);
		if (P->pid[p] == 0)
			producer(t->shm, p, n, rate, P->done);
	}
}

/* Waits for every producer; the events they committed in all. */
static uint64_t prods_wait(struct prods *P)
{
	uint64_t total = 0;
	unsigned p;
	int st;

	for (p = 0; p < P->np; p++) {
		CU_ASSERT_EQUAL(waitpid(P->pid[p], &st, 0), P->pid[p]);
		CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		total += __atomic_load_n(&P->done[p], __ATOMIC_ACQUIRE);
	}
	munmap(P->done, 4096);
	P->done = NULL;
	return total;
}

/* ---- broker counters ----------------------------------------------------- */

/* the "api" sink on a copy of the sink page (fatal when missing) */
static const struct obx_sink_shm *api_of(const struct obx_sink_page *sp)
{
	uint32_t i;

	for (i = 0; i < sp->nsinks && i < OBX_MAX_SINKS; i++)
		if (!strcmp(sp->sink[i].name, "api"))
			return &sp->sink[i];
	CU_FAIL_FATAL("no sink api on the sink page");
	return NULL;
}

static uint64_t api_settled(const struct obx_sink_counters *c)
{
	return c->delivered_events + c->dropped_rejected +
	       c->dropped_retries_exhausted + c->dropped_expired +
	       c->dropped_rate_limited + c->dropped_too_large +
	       c->dropped_invalid;
}

/* Quiet: `want` events of "api" settled (delivered or dropped), nothing
 * queued or in flight, the ring empty, and all of it unchanged for
 * 300 ms. 0, or -1 after ms. */
static int wait_quiet(struct bt *t, uint64_t want, int ms,
		      struct obx_stats *g, struct obx_sink_page *sp)
{
	uint64_t last = UINT64_MAX;
	int i, stable = 0;

	for (i = 0; i < ms; i += 50) {
		if (bt_stats(t, g, sp) == 0) {
			const struct obx_sink_counters *c = &api_of(sp)->c;
			uint64_t d = api_settled(c);

			stable = d >= want && c->queued_events == 0 &&
				 c->inflight == 0 && d == last &&
				 bt_ring_empty(t) ? stable + 1 : 0;
			if (stable >= 6)
				return 0;
			last = d;
		}
		usleep(50000);
	}
	return -1;
}

/* The identity of PRODUCT.md section 6, printed and asserted. */
static void check_identity(const char *tag, const struct obx_stats *g,
			   const struct obx_sink_page *sp)
{
	const struct obx_sink_counters *c = &api_of(sp)->c;
	uint64_t deliv, queued, dropped;

	dropped = bt_sum_dropped(g, sp, &deliv, &queued);

	printf("\n    %s: emitted %llu = delivered %llu + dropped %llu + "
	       "queued %llu; api: requests %llu 2xx %llu 4xx %llu 5xx %llu "
	       "net %llu retries %llu batches %llu splits %llu rejected %llu "
	       "too_large %llu exhausted %llu expired %llu rate_limited %llu",
	       tag, (unsigned long long)g->emitted,
	       (unsigned long long)deliv, (unsigned long long)dropped,
	       (unsigned long long)queued, (unsigned long long)c->requests,
	       (unsigned long long)c->responses_2xx,
	       (unsigned long long)c->responses_4xx,
	       (unsigned long long)c->responses_5xx,
	       (unsigned long long)c->network_errors,
	       (unsigned long long)c->retries,
	       (unsigned long long)c->delivered_batches,
	       (unsigned long long)c->splits,
	       (unsigned long long)c->dropped_rejected,
	       (unsigned long long)c->dropped_too_large,
	       (unsigned long long)c->dropped_retries_exhausted,
	       (unsigned long long)c->dropped_expired,
	       (unsigned long long)c->dropped_rate_limited);
	CU_ASSERT_EQUAL(g->emitted, deliv + dropped + queued);
	CU_ASSERT_EQUAL(queued, 0);
}

/* Polls the sink page until "api" is in `state` (or ms pass). */
static int wait_state(struct bt *t, uint32_t state, int ms,
		      struct obx_sink_page *sp)
{
	struct obx_stats g;
	int i;

	for (i = 0; i < ms; i += 10) {
		if (bt_stats(t, &g, sp) == 0 && api_of(sp)->state == state)
			return 0;
		usleep(10000);
	}
	return -1;
}

/* Polls the upstream until it has captured n requests (or ms pass). */
static int wait_requests(json_int_t n, int ms)
{
	int i;

	for (i = 0; i < ms; i += 10) {
		if (up_stat("requests") >= n)
			return 0;
		usleep(10000);
	}
	return -1;
}

static double realtime_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* lines of the broker log containing `what` */
static int log_count(const struct bt *t, const char *what)
{
	char cmd[700], out[32] = "";
	FILE *f;

	snprintf(cmd, sizeof(cmd), "grep -c -- '%s' '%s'", what, t->log);
	f = popen(cmd, "r");
	if (!f)
		return -1;
	if (!fgets(out, sizeof(out), f))
		out[0] = 0;
	pclose(f);
	return atoi(out);
}

/* ---- what the upstream saw ----------------------------------------------- */

static double req_time(const json_t *r)
{
	return json_real_value(json_object_get(r, "time"));
}

static int req_status(const json_t *r)
{
	const json_t *s = json_object_get(r, "status");

	return json_is_integer(s) ? (int)json_integer_value(s) : -1;
}

static int req_events(const json_t *r)
{
	return (int)json_integer_value(json_object_get(r, "events"));
}

static const char *req_first_id(const json_t *r)
{
	return json_string_value(json_array_get(json_object_get(r, "ids"), 0));
}

/* X-Retry-Count: -1 when absent, -2 when sent more than once */
static int req_retry_count(const json_t *r)
{
	const json_t *v = json_object_get(json_object_get(r, "headers"),
					  "x-retry-count");

	if (!v)
		return -1;
	if (json_array_size(v) != 1)
		return -2;
	return atoi(json_string_value(json_array_get(v, 0)));
}

/* Every request carrying the same first event id as k earlier ones has
 * X-Retry-Count k (absent for k = 0). Returns the violations; the
 * longest run (attempts of one batch) in *longest. */
static int check_retry_counts(const json_t *reqs, int *longest)
{
	size_t i, j, n = json_array_size(reqs);
	int bad = 0;

	*longest = 0;
	for (i = 0; i < n; i++) {
		const json_t *r = json_array_get(reqs, i);
		const char *id = req_first_id(r);
		int k = 0, rc = req_retry_count(r);

		if (!id)
			continue;
		for (j = 0; j < i; j++) {
			const char *o = req_first_id(json_array_get(reqs, j));

			k += o && !strcmp(o, id);
		}
		if (rc != (k ? k : -1)) {
			if (bad < 5)
				printf("\n    request %zu: X-Retry-Count %d, "
				       "expected %d (-1: absent; attempt %d "
				       "of the batch starting at event %s)",
				       i, rc, k ? k : -1, k + 1, id);
			bad++;
		}
		if (k + 1 > *longest)
			*longest = k + 1;
	}
	return bad;
}

/* ---- fixture ------------------------------------------------------------- */

static struct obx_sink_page *g_sp;

static int suite_init(void)
{
	g_sp = malloc(sizeof(*g_sp));
	return g_sp && up_start() == 0 ? 0 : -1;
}

static int suite_clean(void)
{
	up_stop();
	free(g_sp);
	return 0;
}

static void start_broker(struct bt *t, const char *tag, const char *conf)
{
	CU_ASSERT_EQUAL_FATAL(up_reset(), 0);
	CU_ASSERT_FATAL(bt_init(t, tag, "durability = write", conf) == 0);
	CU_ASSERT_FATAL(bt_start(t) == 0);
}

/* A clean stop (exit 0), then the temp dir goes. */
static void stop_broker(struct bt *t)
{
	CU_ASSERT_EQUAL(bt_stop(t, 10000), 0);
	bt_cleanup(t);
	printf("\n    ");	/* CUnit's verdict on a line of its own */
}

/* ---- a. a 30 s outage: one state for all producers ----------------------- */

static void test_outage(void)
{
	const unsigned np = 8, rate = 200 / SCALE, outage_s = 30;
	const double base = 0.5, bmax = 4.0;
	/* before, during and after the outage */
	const uint64_t n = (uint64_t)rate * (outage_s + 5);
	char conf[1024], js[128];
	struct obx_stats g;
	struct prods P;
	struct bt t;
	json_t *reqs, *st;
	double t0 = 0, prev = 0, expect = base, first_ok = 0, until;
	uint64_t total;
	size_t i;
	int n503 = 0, burst = 0, probes = 0, gaps_bad = 0, longest, bound,
	    backoff_seen = 0;

	api_conf(conf, sizeof(conf), 100, "50ms", "2s", "500ms",
		 "max_retries = 1000\n");
	start_broker(&t, "outage", conf);
	prods_start(&P, &t, np, n, rate);
	/* healthy first */
	CU_ASSERT_EQUAL(wait_requests(3, 5000), 0);
	snprintf(js, sizeof(js), "{\"mode\": \"outage\", \"status\": 503, "
		 "\"seconds\": %u}", outage_s);
	CU_ASSERT_EQUAL_FATAL(up_script(js), 0);
	CU_ASSERT_EQUAL_FATAL(up_admin("GET", "/_admin/stats", NULL, &st),
			      200);
	until = json_real_value(json_object_get(st, "outage_until"));
	json_decref(st);
	/* during: in backoff, the backlog in the spool */
	while (realtime_s() < until - 1) {
		CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
		if (api_of(g_sp)->state == OBX_SINK_BACKOFF) {
			backoff_seen++;
			CU_ASSERT(api_of(g_sp)->until_ns > 0);
		}
		usleep(500000);
	}
	total = prods_wait(&P);
	CU_ASSERT_EQUAL(total, np * n);
	CU_ASSERT_EQUAL(wait_quiet(&t, total, 60000, &g, g_sp), 0);
	check_identity("outage", &g, g_sp);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, total);
	CU_ASSERT_EQUAL(api_of(g_sp)->state, OBX_SINK_OK);
	CU_ASSERT_EQUAL(up_stat("unique"), (json_int_t)total);
	CU_ASSERT_EQUAL(up_stat("dups"), 0);
	CU_ASSERT(backoff_seen > 40);	/* ~57 samples, all in backoff */

	/* the 503s: a burst of what was in flight when the first came
	 * back, then one probe per window, 0.5 s, 1 s, 2 s, 4 s, 4 s ... */
	reqs = up_requests(0, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(reqs);
	for (i = 0; i < json_array_size(reqs); i++) {
		const json_t *r = json_array_get(reqs, i);
		double tm = req_time(r);

		if (req_status(r) != 503) {
			if (n503 && !first_ok && req_status(r) == 200)
				first_ok = tm;
			continue;
		}
		if (!n503++)
			t0 = tm;
		if (tm < t0 + 0.25) {
			burst++;
		} else {
			/* a window, then one probe: never early; late by
			 * the jitter (10 %) and one round trip at most */
			if (tm - prev < expect - 0.05 ||
			    tm - prev > expect * 1.1 + 0.5) {
				printf("\n    probe %d: %.3f s after the last "
				       "503, window %.1f s", probes + 1,
				       tm - prev, expect);
				gaps_bad++;
			}
			probes++;
			expect = expect * 2 > bmax ? bmax : expect * 2;
		}
		prev = tm;
	}
	/* the windows' count: log2(max/base) + 1 doubling ones, then one per
	 * backoff_max; plus what was in flight at the start */
	bound = (int)(outage_s / bmax) + (int)log2(bmax / base) + 1 + 4;
	printf("\n    outage %u s, %u producers x %u ev/s: %d requests "
	       "(burst %d, probes %d; bound %d; %u clients each on its "
	       "own schedule: ~%d); first 200 %.2f s after the outage",
	       outage_s, np, rate, n503, burst, probes, bound, np,
	       np * (bound - 4), first_ok - until);
	CU_ASSERT(burst >= 1 && burst <= 4);
	CU_ASSERT(probes >= 6);
	CU_ASSERT(n503 <= bound);
	CU_ASSERT(n503 * 4 < (int)np * (bound - 4));
	CU_ASSERT_EQUAL(gaps_bad, 0);
	/* recovery within one window (+ a round trip) of the outage end */
	CU_ASSERT(first_ok >= until && first_ok < until + bmax * 1.1 + 0.5);
	/* the retried batches: X-Retry-Count 1, 2, 3, ... */
	CU_ASSERT_EQUAL(check_retry_counts(reqs, &longest), 0);
	printf("\n    the probe batch went %d times", longest);
	CU_ASSERT(longest >= probes);
	json_decref(reqs);
	/* logged once at the start, once at the end */
	CU_ASSERT_EQUAL(log_count(&t, "one state for all producers"), 1);
	CU_ASSERT_EQUAL(log_count(&t, "upstream back after"), 1);
	stop_broker(&t);
}

/* ---- b. 429 + Retry-After: 5 --------------------------------------------- */

/* Sends one event, answered by the scripted 429 (or other): waits until
 * the upstream saw it and the sink is in `state`. The request's time. */
static double first_request(struct bt *t, uint32_t state)
{
	struct prods P;
	json_t *reqs;
	double tm;

	prods_start(&P, t, 1, 1, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), 1);
	CU_ASSERT_EQUAL_FATAL(wait_requests(1, 5000), 0);
	CU_ASSERT_EQUAL(wait_state(t, state, 5000, g_sp), 0);
	reqs = up_requests(0, 0);
	CU_ASSERT_FATAL(json_array_size(reqs) == 1);
	tm = req_time(json_array_get(reqs, 0));
	CU_ASSERT_EQUAL(req_events(json_array_get(reqs, 0)), 1);
	json_decref(reqs);
	return tm;
}

/* Requests captured after the first: the earliest time, and how many. */
static double next_request_time(int *count)
{
	json_t *reqs = up_requests(1, 0);
	double tm = 0;
	size_t i;

	for (i = 0; i < json_array_size(reqs); i++) {
		double x = req_time(json_array_get(reqs, i));

		if (!tm || x < tm)
			tm = x;
	}
	*count = (int)json_array_size(reqs);
	json_decref(reqs);
	return tm;
}

/* The start of a rate-limit scenario: one event answered 429 with
 * Retry-After `ra` seconds; the sink rate limited until >= then + ra.
 * The 429's time (upstream clock); the window's end in *until_ns. */
static double ra_begin(struct bt *t, int ra, uint64_t *until_ns)
{
	char js[128];
	double t429, until;

	snprintf(js, sizeof(js), "{\"steps\": [{\"status\": 429, "
		 "\"headers\": {\"Retry-After\": \"%d\"}}]}", ra);
	CU_ASSERT_EQUAL_FATAL(up_script(js), 0);
	t429 = first_request(t, OBX_SINK_RATE_LIMITED);
	*until_ns = api_of(g_sp)->until_ns;
	until = (double)*until_ns / 1e9;
	printf("\n    429 Retry-After %d at %.3f, sink window %.3f s", ra,
	       t429, until - t429);
	/* the broker's clock is read after the answer, in whole ms */
	CU_ASSERT(until >= t429 + ra - 0.002 && until < t429 + ra + 0.5);
	return t429;
}

/* The end: all `total` events delivered, none before the window's end,
 * and the limited batch went twice (X-Retry-Count absent, then 1). */
static void ra_finish(struct bt *t, const char *tag, double t429, int ra,
		      uint64_t total)
{
	struct obx_stats g;
	json_t *reqs;
	double next;
	int count, longest;

	CU_ASSERT_EQUAL(wait_quiet(t, total, 20000, &g, g_sp), 0);
	check_identity(tag, &g, g_sp);
	next = next_request_time(&count);
	printf("\n    next request %.3f s after the 429 (%d after it)",
	       next - t429, count);
	CU_ASSERT(count >= 1);
	CU_ASSERT(next >= t429 + ra - 0.05);
	CU_ASSERT(next < t429 + ra + 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, total);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_retries_exhausted, 0);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_rate_limited, 0);
	CU_ASSERT_EQUAL(api_of(g_sp)->state, OBX_SINK_OK);
	CU_ASSERT_EQUAL(up_stat("unique"), (json_int_t)total);
	CU_ASSERT_EQUAL(up_stat("dups"), 0);
	reqs = up_requests(0, 0);
	CU_ASSERT_EQUAL(check_retry_counts(reqs, &longest), 0);
	CU_ASSERT_EQUAL(longest, 2);
	json_decref(reqs);
}

/* What a worker sees through the public API: the same state and window
 * as the broker's sink page, shared by every producer. */
static void check_producer_view(struct bt *t, uint64_t until_ns)
{
	struct obx_sink_info si;
	obx_t *h = obx_open(t->shm);
	int sink;

	CU_ASSERT_PTR_NOT_NULL_FATAL(h);
	sink = obx_sink(h, "api");
	CU_ASSERT(sink >= 0);
	CU_ASSERT_EQUAL(obx_sink_state(h, sink, &si), 0);
	CU_ASSERT_EQUAL(si.state, OBX_STATE_RATE_LIMITED);
	CU_ASSERT_EQUAL(si.until_ns, until_ns);
	obx_close(h);
}

static void test_retry_after(void)
{
	const unsigned np = 4, rate = 200 / SCALE;
	char conf[1024];
	struct prods P;
	struct bt t;
	uint64_t until_ns;
	double t429;

	/* max_retries = 0: a charged retry would drop the batch */
	api_conf(conf, sizeof(conf), 100, "50ms", "2s", "500ms",
		 "max_retries = 0\n");
	start_broker(&t, "ra", conf);
	t429 = ra_begin(&t, 5, &until_ns);
	check_producer_view(&t, until_ns);
	/* every producer's data arrives during the window */
	prods_start(&P, &t, np, (uint64_t)rate * 3, rate);
	ra_finish(&t, "retry-after", t429, 5, prods_wait(&P) + 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.responses_4xx, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.retries, 1);
	stop_broker(&t);
}

/* ---- c. 413: halves, down to one event ----------------------------------- */

/* Emits n events in one burst (one batch) with `script` in force, and
 * checks the requests from seq `since` on: their event counts and
 * statuses, in order (k of them). */
static void split_phase(struct bt *t, const char *script, uint64_t n,
			uint64_t settled, long since, const int *sizes,
			const int *statuses, int k)
{
	struct obx_stats g;
	struct prods P;
	json_t *reqs;
	int i;

	CU_ASSERT_EQUAL_FATAL(up_script(script), 0);
	prods_start(&P, t, 1, n, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), n);
	CU_ASSERT_EQUAL(wait_quiet(t, settled, 10000, &g, g_sp), 0);
	check_identity("413", &g, g_sp);
	reqs = up_requests(since, 0);
	CU_ASSERT_EQUAL(json_array_size(reqs), (size_t)k);
	for (i = 0; i < k && i < (int)json_array_size(reqs); i++) {
		CU_ASSERT_EQUAL(req_events(json_array_get(reqs, i)), sizes[i]);
		CU_ASSERT_EQUAL(req_status(json_array_get(reqs, i)),
				statuses[i]);
	}
	json_decref(reqs);
	CU_ASSERT_EQUAL(api_of(g_sp)->state, OBX_SINK_OK);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_retries_exhausted +
			api_of(g_sp)->c.dropped_rejected, 0);
}

static void test_split_413(void)
{
	const int sz1[] = { 64, 32, 32 }, st1[] = { 413, 200, 200 };
	const int sz2[] = { 8, 4, 2, 1, 1, 2, 4 },
		  st2[] = { 413, 413, 413, 413, 200, 200, 200 };
	char conf[1024];
	struct bt t;

	api_conf(conf, sizeof(conf), 64, "300ms", "2s", "500ms", "");
	start_broker(&t, "split", conf);
	/* one batch of 64 refused once: two halves of 32, both delivered */
	split_phase(&t, "{\"steps\": [{\"status\": 413}]}", 64, 64, 0,
		    sz1, st1, 3);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.splits, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, 64);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_too_large, 0);
	/* a batch of 8 refused four times: 8, 4, 2, 1 -> the single event
	 * is too large, the other 7 go */
	split_phase(&t, "{\"steps\": [{\"status\": 413, \"count\": 4}]}",
		    8, 72, 3, sz2, st2, 7);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.splits, 4);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_too_large, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, 71);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.responses_4xx, 5);
	CU_ASSERT_EQUAL(up_stat("unique"), 71);
	CU_ASSERT_EQUAL(up_stat("dups"), 0);
	stop_broker(&t);
}

/* ---- d. 400: that batch dropped as rejected ------------------------------ */

static void test_rejected_400(void)
{
	char conf[1024];
	struct obx_stats g;
	struct prods P;
	struct bt t;
	json_t *reqs;
	uint64_t total;
	int first;

	api_conf(conf, sizeof(conf), 50, "50ms", "2s", "500ms", "");
	start_broker(&t, "rej", conf);
	CU_ASSERT_EQUAL_FATAL(up_script("{\"steps\": [{\"status\": 400}]}"),
			      0);
	prods_start(&P, &t, 4, 300 / SCALE, 1000);
	total = prods_wait(&P);
	CU_ASSERT_EQUAL(wait_quiet(&t, total, 10000, &g, g_sp), 0);
	check_identity("400", &g, g_sp);
	reqs = up_requests(0, 0);
	CU_ASSERT_FATAL(json_array_size(reqs) > 1);
	CU_ASSERT_EQUAL(req_status(json_array_get(reqs, 0)), 400);
	first = req_events(json_array_get(reqs, 0));
	printf("\n    400 for a batch of %d events; %llu emitted", first,
	       (unsigned long long)total);
	CU_ASSERT(first >= 1 && first <= 50);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_rejected, (uint64_t)first);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, total - first);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.responses_4xx, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.retries, 0);
	CU_ASSERT_EQUAL(api_of(g_sp)->state, OBX_SINK_OK);
	CU_ASSERT_EQUAL(up_stat("unique"), (json_int_t)(total - first));
	CU_ASSERT_EQUAL(up_stat("events_rejected"), first);
	CU_ASSERT_EQUAL(up_stat("dups"), 0);
	json_decref(reqs);
	stop_broker(&t);
}

/* ---- e. an upstream that never answers ----------------------------------- */

static void test_hang_timeout(void)
{
	char conf[1024];
	struct obx_stats g;
	struct prods P;
	struct bt t;
	json_t *st, *reqs;
	json_int_t hangs;
	uint64_t total;
	int longest;

	api_conf(conf, sizeof(conf), 100, "50ms", "1s", "200ms",
		 "max_retries = 1000\n");
	start_broker(&t, "hang", conf);
	CU_ASSERT_EQUAL_FATAL(up_script(
		"{\"steps\": [{\"action\": \"hang\", \"count\": 3}]}"), 0);
	prods_start(&P, &t, 2, 500 / SCALE, 250);
	total = prods_wait(&P);
	CU_ASSERT_EQUAL(wait_quiet(&t, total, 20000, &g, g_sp), 0);
	check_identity("hang", &g, g_sp);
	CU_ASSERT_EQUAL(up_admin("GET", "/_admin/stats", NULL, &st), 200);
	hangs = json_integer_value(json_object_get(
		json_object_get(st, "by_status"), "hang"));
	json_decref(st);
	printf("\n    %lld requests hung; network errors counted %llu",
	       (long long)hangs,
	       (unsigned long long)api_of(g_sp)->c.network_errors);
	CU_ASSERT_EQUAL(hangs, 3);
	/* each hung request timed out and was counted */
	CU_ASSERT_EQUAL(api_of(g_sp)->c.network_errors, 3);
	CU_ASSERT(api_of(g_sp)->c.retries >= 3);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, total);
	CU_ASSERT_EQUAL(api_of(g_sp)->state, OBX_SINK_OK);
	CU_ASSERT_EQUAL(up_stat("unique"), (json_int_t)total);
	reqs = up_requests(0, 0);
	CU_ASSERT_EQUAL(check_retry_counts(reqs, &longest), 0);
	json_decref(reqs);
	stop_broker(&t);
}

/* ---- g. 401 with a token source: one refresh, then the normal class ----- */

static void write_token(const char *path, const char *tok)
{
	FILE *f = fopen(path, "w");

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fprintf(f, "%s\n", tok);
	fclose(f);
}

static const char *req_auth(const json_t *r)
{
	const json_t *v = json_object_get(json_object_get(r, "headers"),
					  "authorization");

	return json_array_size(v) == 1 ?
	       json_string_value(json_array_get(v, 0)) : "";
}

static void test_reauth_401(void)
{
	char conf[1024], extra[400], tok[300];
	struct obx_stats g;
	struct prods P;
	struct bt t;
	json_t *reqs;

	snprintf(tok, sizeof(tok), "/tmp/obxtest-token-%d", (int)getpid());
	write_token(tok, "tok-1");
	snprintf(extra, sizeof(extra), "token_file = %s\n", tok);
	api_conf(conf, sizeof(conf), 50, "50ms", "2s", "500ms", extra);
	start_broker(&t, "reauth", conf);
	/* the 401 is answered late: the token is rotated meanwhile */
	CU_ASSERT_EQUAL_FATAL(up_script("{\"steps\": [{\"status\": 401, "
					"\"delay_ms\": 800}]}"), 0);
	prods_start(&P, &t, 1, 1, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), 1);
	CU_ASSERT_EQUAL_FATAL(wait_requests(1, 5000), 0);
	write_token(tok, "tok-2");
	CU_ASSERT_EQUAL(wait_quiet(&t, 1, 10000, &g, g_sp), 0);
	check_identity("401", &g, g_sp);
	reqs = up_requests(0, 0);
	CU_ASSERT_EQUAL_FATAL(json_array_size(reqs), 2);
	CU_ASSERT_EQUAL(req_status(json_array_get(reqs, 0)), 401);
	CU_ASSERT_STRING_EQUAL(req_auth(json_array_get(reqs, 0)),
			       "Bearer tok-1");
	CU_ASSERT_EQUAL(req_status(json_array_get(reqs, 1)), 200);
	CU_ASSERT_STRING_EQUAL(req_auth(json_array_get(reqs, 1)),
			       "Bearer tok-2");
	json_decref(reqs);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_rejected, 0);
	CU_ASSERT_EQUAL(api_of(g_sp)->state, OBX_SINK_OK);

	/* refused again after the refresh: a plain 4xx, dropped */
	CU_ASSERT_EQUAL_FATAL(up_script("{\"steps\": [{\"status\": 401, "
					"\"count\": 2}]}"), 0);
	prods_start(&P, &t, 1, 1, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), 1);
	CU_ASSERT_EQUAL(wait_quiet(&t, 2, 10000, &g, g_sp), 0);
	check_identity("401 twice", &g, g_sp);
	printf("\n    401 then refreshed token: delivered; 401 twice: "
	       "dropped_rejected %llu",
	       (unsigned long long)api_of(g_sp)->c.dropped_rejected);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_rejected, 1);
	CU_ASSERT_EQUAL(up_stat("requests"), 4);
	stop_broker(&t);
	unlink(tok);
}

/* ---- h. every encoding, compressed, with a config header: what the
 * upstream decodes and sees (zstd by the reference zstd decoder) ---------- */

static void check_encodings(const char *comp)
{
	static const char *const enc[] = { "ndjson", "json", "msgpack" };
	const uint64_t n = 300;
	unsigned i;

	for (i = 0; i < 3; i++) {
		char conf[1024], extra[128], tag[32];
		struct obx_stats g;
		struct prods P;
		struct bt t;
		json_t *reqs;
		size_t k;
		int gz = 0, ctype_ok = 0, key_ok = 0;
		char key[16];

		/* api_conf says compression = none; the later key would be a
		 * duplicate, so build this one's own section */
		snprintf(extra, sizeof(extra), "encoding = %s\ncompression = "
			 "%s\n", enc[i], comp);
		snprintf(conf, sizeof(conf),
			 "[sink api]\ntype = http\nurl = %s/ingest\n%s"
			 "batch_max_events = 100\nflush_interval = 50ms\n"
			 "header = X-Api-Key: k-%u\n", up_base(), extra, i);
		snprintf(tag, sizeof(tag), "enc-%s-%s", enc[i], comp);
		start_broker(&t, tag, conf);
		prods_start(&P, &t, 2, n / 2, 0);
		CU_ASSERT_EQUAL(prods_wait(&P), n);
		CU_ASSERT_EQUAL(wait_quiet(&t, n, 10000, &g, g_sp), 0);
		check_identity(tag, &g, g_sp);
		CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, n);
		CU_ASSERT_EQUAL(up_stat("events"), (json_int_t)n);
		CU_ASSERT_EQUAL(up_stat("decode_errors"), 0);
		/* NDJSON and JSON lines carry "id"; msgpack envelopes carry
		 * it as bin, which the upstream does not read as an id */
		if (i < 2)
			CU_ASSERT_EQUAL(up_stat("unique"), (json_int_t)n);
		reqs = up_requests(0, 0);
		for (k = 0; k < json_array_size(reqs); k++) {
			const json_t *r = json_array_get(reqs, k);
			const json_t *ct = json_object_get(
				json_object_get(r, "headers"), "content-type");
			const char *want = i == 0 ? "application/x-ndjson" :
				i == 1 ? "application/json" :
				"application/msgpack";
			const char *e = json_string_value(
				json_object_get(r, "content_encoding"));

			const json_t *kh = json_object_get(
				json_object_get(r, "headers"), "x-api-key");

			snprintf(key, sizeof(key), "k-%u", i);
			key_ok += json_array_size(kh) == 1 &&
				!strcmp(json_string_value(
					json_array_get(kh, 0)), key);
			gz += e && !strcmp(e, comp);
			ctype_ok += json_array_size(ct) == 1 &&
				!strcmp(json_string_value(
					json_array_get(ct, 0)), want);
		}
		printf("\n    %s + %s: %llu events in %zu requests, all "
		       "decoded", enc[i], comp, (unsigned long long)n,
		       json_array_size(reqs));
		CU_ASSERT(json_array_size(reqs) >= 1);
		CU_ASSERT_EQUAL((size_t)gz, json_array_size(reqs));
		CU_ASSERT_EQUAL((size_t)ctype_ok, json_array_size(reqs));
		CU_ASSERT_EQUAL((size_t)key_ok, json_array_size(reqs));
		json_decref(reqs);
		stop_broker(&t);
	}
}

static void test_encodings_gzip(void)
{
	check_encodings("gzip");
}

static void test_encodings_zstd(void)
{
	check_encodings("zstd");
}

/* ---- f. restarts inside a Retry-After window ----------------------------- */

static void test_restart_in_window(void)
{
	const unsigned np = 4, rate = 200 / SCALE;
	char conf[1024];
	struct prods P;
	struct bt t;
	double t429, t_stop;
	uint64_t until_ns;

	api_conf(conf, sizeof(conf), 100, "50ms", "2s", "500ms",
		 "max_retries = 1000\n");
	start_broker(&t, "restart", conf);
	t429 = ra_begin(&t, 8, &until_ns);
	/* producers all along, across both restarts */
	prods_start(&P, &t, np, (uint64_t)rate * 4, rate);
	usleep(1000000);
	/* SIGTERM: nothing can go out, so no wait for the window */
	t_stop = realtime_s();
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	CU_ASSERT(realtime_s() - t_stop < 2);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	CU_ASSERT_EQUAL(wait_state(&t, OBX_SINK_RATE_LIMITED, 2000, g_sp), 0);
	CU_ASSERT_EQUAL(api_of(g_sp)->until_ns, until_ns);
	usleep(1000000);
	bt_kill9(&t);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	CU_ASSERT_EQUAL(wait_state(&t, OBX_SINK_RATE_LIMITED, 2000, g_sp), 0);
	CU_ASSERT_EQUAL(api_of(g_sp)->until_ns, until_ns);
	printf("\n    SIGTERM at +1 s, kill -9 at +2 s, window kept");
	/* the window and the batch's attempts (X-Retry-Count: 1 on its
	 * second request) survived both restarts */
	ra_finish(&t, "restart", t429, 8, prods_wait(&P) + 1);
	CU_ASSERT_EQUAL(log_count(&t, "persisted before the restart"), 2);
	stop_broker(&t);
}

static int add_suites(void)
{
	CU_pSuite s = CU_add_suite("delivery", suite_init, suite_clean);

	if (!s ||
	    !CU_add_test(s, "retry_after_429", test_retry_after) ||
	    !CU_add_test(s, "split_413", test_split_413) ||
	    !CU_add_test(s, "rejected_400", test_rejected_400) ||
	    !CU_add_test(s, "hang_timeout", test_hang_timeout) ||
	    !CU_add_test(s, "reauth_401", test_reauth_401) ||
	    !CU_add_test(s, "encodings_gzip", test_encodings_gzip) ||
	    !CU_add_test(s, "encodings_zstd", test_encodings_zstd) ||
	    !CU_add_test(s, "restart_in_window", test_restart_in_window) ||
	    !CU_add_test(s, "outage_503", test_outage))
		return -1;
	return 0;
}

TEST_MAIN(add_suites)
