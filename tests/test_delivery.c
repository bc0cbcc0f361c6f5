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
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include "testutil.h"
#include "brokertest.h"
#include "outbox.h"
#include "policy.h"
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
static void api_conf_max(char *buf, size_t cap, unsigned batch,
			 const char *flush, const char *timeout,
			 const char *backoff_base, const char *backoff_max,
			 const char *extra)
{
	snprintf(buf, cap,
		 "[sink api]\ntype = http\nurl = %s/ingest\n"
		 "encoding = ndjson\ncompression = none\n"
		 "batch_max_events = %u\nflush_interval = %s\n"
		 "max_inflight = 4\nbackoff_base = %s\nbackoff_max = %s\n"
		 "timeout = %s\nconnect_timeout = 1s\n"
		 "retry_after_max = 300s\n%s", up_base(), batch, flush,
		 backoff_base, backoff_max, timeout, extra);
}

/* the same with backoff_max = 4s */
static void api_conf(char *buf, size_t cap, unsigned batch, const char *flush,
		     const char *timeout, const char *backoff_base,
		     const char *extra)
{
	api_conf_max(buf, cap, batch, flush, timeout, backoff_base, "4s",
		     extra);
}

/* ---- producers ----------------------------------------------------------- */

struct prods {
	pid_t pid[MAXPROD];
	unsigned np;
	uint64_t *done;		/* shared page: committed events per producer */
};

/* the producer 0 event with this sequence number carries "bad":"poison"
 * (which the upstream can be scripted to refuse); none by default */
static uint64_t g_poison_s = UINT64_MAX;

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
		int len = snprintf(body, sizeof(body), "{\"p\":%u,\"s\":%llu%s}",
				   p, (unsigned long long)s,
				   p == 0 && s == g_poison_s ?
				   ",\"bad\":\"poison\"" : ""), rc;

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

/* Every request in exactly one bucket (at a quiet moment: none in
 * flight); a retry is a request; a delivered batch had a 2xx. */
static void check_requests(const struct obx_sink_counters *c)
{
	uint64_t ended = c->responses_2xx + c->responses_3xx +
			 c->responses_4xx + c->responses_5xx +
			 c->responses_other + c->network_errors +
			 c->requests_cancelled;

	CU_ASSERT_EQUAL(c->requests, ended);
	CU_ASSERT(c->retries <= c->requests);
	CU_ASSERT(c->delivered_batches <= c->responses_2xx);
}

/* The identity of PRODUCT.md section 6, printed and asserted. */
static void check_identity(const char *tag, const struct obx_stats *g,
			   const struct obx_sink_page *sp)
{
	const struct obx_sink_counters *c = &api_of(sp)->c;
	uint64_t deliv, queued, dropped;

	dropped = bt_sum_dropped(g, sp, &deliv, &queued);

	printf("\n    %s: emitted %llu = delivered %llu + dropped %llu + "
	       "queued %llu; api: requests %llu 2xx %llu 3xx %llu 4xx %llu "
	       "5xx %llu other %llu net %llu cancelled %llu retries %llu "
	       "batches %llu splits %llu rejected %llu "
	       "too_large %llu exhausted %llu expired %llu rate_limited %llu",
	       tag, (unsigned long long)g->emitted,
	       (unsigned long long)deliv, (unsigned long long)dropped,
	       (unsigned long long)queued, (unsigned long long)c->requests,
	       (unsigned long long)c->responses_2xx,
	       (unsigned long long)c->responses_3xx,
	       (unsigned long long)c->responses_4xx,
	       (unsigned long long)c->responses_5xx,
	       (unsigned long long)c->responses_other,
	       (unsigned long long)c->network_errors,
	       (unsigned long long)c->requests_cancelled,
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
	check_requests(c);
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

/* [broker] lines of the next start_broker() (sink_threads variants) */
static const char *g_broker_extra = "durability = write";
static int g_sink_threads = 1;   /* the pool threads it should have */

/* threads of pid named like the pool's (pool.c) */
static int pool_threads_of(pid_t pid)
{
	char path[320], comm[32];
	struct dirent *e;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (!d)
		return -1;
	while ((e = readdir(d))) {
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/comm",
			 (int)pid, e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) &&
		    !strncmp(comm, "outboxd-sink", 12))
			n++;
		fclose(f);
	}
	closedir(d);
	return n;
}

static void start_broker(struct bt *t, const char *tag, const char *conf)
{
	CU_ASSERT_EQUAL_FATAL(up_reset(), 0);
	CU_ASSERT_FATAL(bt_init(t, tag, g_broker_extra, conf) == 0);
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
			/* a window, then one probe: never early, never
			 * past backoff_max: the jitter (10 %) is added
			 * below the cap, subtracted where it would pass it;
			 * plus one round trip at most */
			double lo = expect * 1.1 > bmax ? expect * 0.9
							: expect;
			double hi = expect * 1.1 > bmax ? bmax
							: expect * 1.1;

			if (tm - prev < lo - 0.05 || tm - prev > hi + 0.5) {
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
	CU_ASSERT(first_ok >= until && first_ok < until + bmax + 0.5);
	/* the retried batches: X-Retry-Count 1, 2, 3, ... */
	CU_ASSERT_EQUAL(check_retry_counts(reqs, &longest), 0);
	/* no batch is the probe more than twice in a row (its failures
	 * that set the window: POL_STRIKES), then another one is: a batch
	 * went at most twice failing and once delivered */
	printf("\n    a batch went at most %d times (%d probes)", longest,
	       probes);
	CU_ASSERT(longest >= 2 && longest <= 3);
	json_decref(reqs);
	/* logged once at the start, once at the end: the end is told once
	 * the sink held ok for 60 s, or at the stop, whichever first */
	CU_ASSERT_EQUAL(log_count(&t, "one state for all producers"), 1);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	CU_ASSERT_EQUAL(log_count(&t, "upstream back after"), 1);
	bt_cleanup(&t);
	printf("\n    ");
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

/* Retry-After: 0 is a 250 ms floor (Segment's e2e suite expects the retry
 * in under a second; it was a 1 s floor) */
static void test_retry_after_0(void)
{
	char conf[1024];
	struct obx_stats g;
	struct bt t;
	uint64_t until_ns;
	double t429, next;
	int count;

	api_conf(conf, sizeof(conf), 100, "50ms", "2s", "500ms",
		 "max_retries = 0\n");
	start_broker(&t, "ra0", conf);
	t429 = ra_begin(&t, 0, &until_ns);
	CU_ASSERT_EQUAL(wait_quiet(&t, 1, 10000, &g, g_sp), 0);
	check_identity("retry-after 0", &g, g_sp);
	next = next_request_time(&count);
	printf("\n    Retry-After: 0 -> window %.3f s, next request %.3f s "
	       "after the 429", (double)until_ns / 1e9 - t429, next - t429);
	CU_ASSERT_EQUAL(count, 1);
	CU_ASSERT(next - t429 >= 0.24);
	CU_ASSERT(next - t429 < 0.8);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_retries_exhausted, 0);
	stop_broker(&t);
}

/* A rate-limit wait is no backoff time (issue 14: a batch dropped as
 * expired at 3 s of which 0.5 s was backoff): max_backoff_duration = 2 s,
 * a 503, then the probe rate limited for 3 s, then the batch delivered. */
static void test_rate_limit_no_budget(void)
{
	char conf[1024];
	struct obx_stats g;
	struct prods P;
	struct bt t;

	api_conf(conf, sizeof(conf), 10, "20ms", "2s", "500ms",
		 "backoff_jitter = 0%\nmax_backoff_duration = 2s\n");
	start_broker(&t, "rlbudget", conf);
	CU_ASSERT_EQUAL_FATAL(up_script("{\"steps\": [{\"status\": 503}, "
		"{\"status\": 429, \"headers\": {\"Retry-After\": \"3\"}}]}"),
		0);
	prods_start(&P, &t, 1, 1, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), 1);
	CU_ASSERT_EQUAL(wait_quiet(&t, 1, 10000, &g, g_sp), 0);
	check_identity("rate limit no budget", &g, g_sp);
	printf("\n    503, 429 Retry-After 3 with max_backoff_duration 2 s: "
	       "%llu requests, delivered %llu, expired %llu",
	       (unsigned long long)up_stat("requests"),
	       (unsigned long long)api_of(g_sp)->c.delivered_events,
	       (unsigned long long)api_of(g_sp)->c.dropped_expired);
	CU_ASSERT_EQUAL(up_stat("requests"), 3);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_expired, 0);
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
	/* halves are no retries: nothing was sent again */
	CU_ASSERT_EQUAL(api_of(g_sp)->c.retries, 0);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_too_large, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, 71);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.responses_4xx, 5);
	CU_ASSERT_EQUAL(up_stat("unique"), 71);
	CU_ASSERT_EQUAL(up_stat("dups"), 0);
	stop_broker(&t);
}

/* ---- counters: one bucket per request ----------------------------------- */

/* n events in one burst with `script` in force; waits until `settled`
 * events of api are settled. */
static void burst_phase(struct bt *t, const char *tag, const char *script,
			uint64_t n, uint64_t settled, struct obx_stats *g)
{
	struct prods P;

	CU_ASSERT_EQUAL_FATAL(up_script(script), 0);
	prods_start(&P, t, 1, n, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), n);
	CU_ASSERT_EQUAL(wait_quiet(t, settled, 10000, g, g_sp), 0);
	check_identity(tag, g, g_sp);
}

/* Issue 14, defect 7: 3xx in no bucket, >= 600 counted 5xx, batches
 * dropped whole counted delivered, 413 halves counted retries, requests
 * cancelled at shutdown counted network errors. */
static void test_counters(void)
{
	const struct obx_sink_counters *c;
	char conf[1024];
	struct obx_stats g;
	struct prods P;
	struct bt t;

	/* timeout 10 s: the hung request of the end is cancelled by the
	 * stop (shutdown_timeout 5 s), not timed out */
	api_conf(conf, sizeof(conf), 4, "100ms", "10s", "200ms",
		 "backoff_jitter = 0%\n");
	start_broker(&t, "counters", conf);
	burst_phase(&t, "302", "{\"steps\": [{\"status\": 302}]}", 4, 4,
		    &g);
	c = &api_of(g_sp)->c;
	CU_ASSERT_EQUAL(c->responses_3xx, 1);
	CU_ASSERT_EQUAL(c->dropped_rejected, 4);
	CU_ASSERT_EQUAL(c->delivered_batches, 0);
	burst_phase(&t, "600", "{\"steps\": [{\"status\": 600}]}", 4, 8,
		    &g);
	c = &api_of(g_sp)->c;
	CU_ASSERT_EQUAL(c->responses_other, 1);
	CU_ASSERT_EQUAL(c->responses_5xx, 0);
	CU_ASSERT_EQUAL(c->dropped_rejected, 8);
	CU_ASSERT_EQUAL(c->delivered_batches, 0);
	/* 413: halves of 2; the first gets a 503 and goes again (one
	 * retry), then both are delivered: one batch */
	burst_phase(&t, "413", "{\"steps\": [{\"status\": 413}, "
		    "{\"status\": 503}]}", 4, 12, &g);
	c = &api_of(g_sp)->c;
	CU_ASSERT_EQUAL(c->requests, 6);
	CU_ASSERT_EQUAL(c->splits, 1);
	CU_ASSERT_EQUAL(c->retries, 1);
	CU_ASSERT_EQUAL(c->responses_2xx, 2);
	CU_ASSERT_EQUAL(c->delivered_events, 4);
	CU_ASSERT_EQUAL(c->delivered_batches, 1);
	/* a request hanging at the stop: cancelled, not a network error */
	CU_ASSERT_EQUAL_FATAL(up_script("{\"steps\": [{\"action\": "
					"\"hang\"}]}"), 0);
	prods_start(&P, &t, 1, 1, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), 1);
	CU_ASSERT_EQUAL(wait_requests(7, 5000), 0);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	c = &api_of(g_sp)->c;
	printf("\n    after the stop: requests %llu, cancelled %llu, network "
	       "errors %llu", (unsigned long long)c->requests,
	       (unsigned long long)c->requests_cancelled,
	       (unsigned long long)c->network_errors);
	CU_ASSERT_EQUAL(c->requests, 7);
	CU_ASSERT_EQUAL(c->requests_cancelled, 1);
	CU_ASSERT_EQUAL(c->network_errors, 0);
	check_requests(c);
	bt_cleanup(&t);
	printf("\n    ");
}

/* ---- the cause of a failure is logged ------------------------------------ */

/* One event, max_retries = 0, answered by `script` (or refused when
 * script is NULL): settled with one drop. */
static void one_failure(struct bt *t, const char *tag, const char *url,
			const char *script)
{
	char conf[1024];
	struct obx_stats g;
	struct prods P;

	snprintf(conf, sizeof(conf),
		 "[sink api]\ntype = http\nurl = %s\nencoding = ndjson\n"
		 "compression = none\nbatch_max_events = 10\n"
		 "flush_interval = 20ms\nmax_retries = 0\n", url);
	start_broker(t, tag, conf);
	if (script)
		CU_ASSERT_EQUAL_FATAL(up_script(script), 0);
	prods_start(&P, t, 1, 1, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), 1);
	CU_ASSERT_EQUAL(wait_quiet(t, 1, 10000, &g, g_sp), 0);
	check_identity(tag, &g, g_sp);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_retries_exhausted, 1);
}

/* Issue 14, defect 6: connection refused, TLS and DNS failures all logged
 * "network error". The outage line and the drop line carry curl's text
 * and the system's error; for an HTTP failure, the status and the first
 * bytes of the body. */
static void test_cause_logged(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	char url[300];
	struct bt t;
	int fd;

	snprintf(url, sizeof(url), "%s/ingest", up_base());
	one_failure(&t, "cause503", url, "{\"steps\": [{\"status\": 503, "
		    "\"body\": \"{\\\"error\\\": \\\"db is down\\\"}\\n\"}]}");
	printf("\n    503: %d outage line, %d drop line with the body",
	       log_count(&t, "HTTP 503: {\"error\": \"db is down\"}; backoff"),
	       log_count(&t, "retries_exhausted, HTTP 503: {\"error\": \"db"));
	CU_ASSERT_EQUAL(log_count(&t, "HTTP 503: {\"error\": \"db is down\"}; "
				  "backoff"), 1);
	CU_ASSERT_EQUAL(log_count(&t, "retries_exhausted, HTTP 503: "
				  "{\"error\": \"db is down\"}"), 1);
	stop_broker(&t);

	/* a port bound and never listened on: refused, for as long as the
	 * socket is held */
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_FATAL(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	CU_ASSERT_FATAL(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/ingest",
		 ntohs(sa.sin_port));
	one_failure(&t, "causerefused", url, NULL);
	printf("\n    refused: %d lines name it, %d say 'network error'",
	       log_count(&t, "Connection refused"),
	       log_count(&t, "network error"));
	CU_ASSERT_EQUAL(log_count(&t, "Connection refused); backoff"), 1);
	CU_ASSERT_EQUAL(log_count(&t, "retries_exhausted, Failed to connect "
				  "to 127.0.0.1"), 1);
	CU_ASSERT_EQUAL(log_count(&t, "network error"), 0);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.network_errors, 1);
	stop_broker(&t);
	close(fd);
}

/* ---- drop lines: one limiter per reason, nothing lost -------------------- */

/* Issue 14, defect 2: one limiter per sink for every drop reason, and
 * suppressed counts only told by the next line that got through: a 400
 * then a 503 with max_retries = 0 gave one line for 6 drops; 5 drops
 * from 413 one line and no "(4 more)". Now each reason has its limiter
 * and what one holds back is told when its period ends and at stop. */
static void test_drop_logs(void)
{
	char conf[1024];
	struct obx_stats g;
	struct bt t;

	api_conf(conf, sizeof(conf), 5, "100ms", "2s", "200ms",
		 "max_retries = 0\n");
	start_broker(&t, "droplogs", conf);
	burst_phase(&t, "400", "{\"steps\": [{\"status\": 400}]}", 2, 2, &g);
	burst_phase(&t, "503", "{\"steps\": [{\"status\": 503}]}", 4, 6, &g);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_rejected, 2);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_retries_exhausted, 4);
	/* 5 events refused with 413 down to each one: 9 requests, 5 drops */
	burst_phase(&t, "413", "{\"steps\": [{\"status\": 413, "
		    "\"count\": 9}]}", 5, 11, &g);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_too_large, 5);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	printf("\n    drop lines: rejected %d, retries_exhausted %d, "
	       "too_large %d + %d at stop",
	       log_count(&t, "dropped 2 events (rejected"),
	       log_count(&t, "dropped 4 events (retries_exhausted"),
	       log_count(&t, "dropped 1 events (too_large"),
	       log_count(&t, "4 more drops (4 events) as too_large"));
	CU_ASSERT_EQUAL(log_count(&t, "dropped 2 events (rejected, HTTP 400"),
			1);
	CU_ASSERT_EQUAL(log_count(&t, "dropped 4 events (retries_exhausted, "
				  "HTTP 503"), 1);
	CU_ASSERT_EQUAL(log_count(&t, "dropped 1 events (too_large, HTTP 413"),
			1);
	CU_ASSERT_EQUAL(log_count(&t, "4 more drops (4 events) as too_large "
				  "were not logged one by one"), 1);
	bt_cleanup(&t);
	printf("\n    ");
}

/* ---- a flapping upstream: one outage ------------------------------------- */

/* Issue 14, defect 3: 503/200 alternating gave 48 outage and 47 recovery
 * lines in 30 s and reset the backoff level each time. A failure within
 * 60 s of a recovery continues the outage: one outage line, growing
 * windows, one recovery line when it holds (here: at the stop). */
static void test_flapping(void)
{
	const int flips = 8;
	char conf[1024], script[2048];
	struct obx_stats g;
	struct prods P;
	struct bt t;
	json_t *reqs;
	double last_gap = 0, first_gap = 0;
	uint64_t total;
	size_t i;
	int n, during_out, during_back;

	api_conf_max(conf, sizeof(conf), 10, "20ms", "2s", "100ms", "1s",
		     "backoff_jitter = 0%\n");
	start_broker(&t, "flap", conf);
	n = snprintf(script, sizeof(script), "{\"steps\": [");
	for (i = 0; i < (size_t)flips; i++)
		n += snprintf(script + n, sizeof(script) - (size_t)n,
			      "%s{\"status\": 503}, {\"status\": 200}",
			      i ? ", " : "");
	snprintf(script + n, sizeof(script) - (size_t)n, "]}");
	CU_ASSERT_EQUAL_FATAL(up_script(script), 0);
	prods_start(&P, &t, 1, 700 / SCALE, 100);
	total = prods_wait(&P);
	CU_ASSERT_EQUAL(wait_quiet(&t, total, 20000, &g, g_sp), 0);
	check_identity("flapping", &g, g_sp);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, total);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.responses_5xx, (uint64_t)flips);
	/* the window after each 503: growing, never reset */
	reqs = up_requests(0, 0);
	for (i = 0; i + 1 < json_array_size(reqs); i++)
		if (req_status(json_array_get(reqs, i)) == 503) {
			double gap = req_time(json_array_get(reqs, i + 1)) -
				     req_time(json_array_get(reqs, i));

			if (!first_gap)
				first_gap = gap;
			last_gap = gap;
		}
	json_decref(reqs);
	during_out = log_count(&t, "one state for all producers");
	during_back = log_count(&t, "upstream back after");
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	printf("\n    %d x 503/200: windows %.2f s .. %.2f s; outage lines "
	       "%d, recovery lines %d before the stop, %d after",
	       flips, first_gap, last_gap, during_out, during_back,
	       log_count(&t, "upstream back after"));
	CU_ASSERT(first_gap >= 0.09 && first_gap < 0.5);
	CU_ASSERT(last_gap >= 0.95);
	CU_ASSERT_EQUAL(during_out, 1);
	CU_ASSERT_EQUAL(during_back, 0);
	CU_ASSERT_EQUAL(log_count(&t, "upstream back after"), 1);
	CU_ASSERT_EQUAL(log_count(&t, "failing again 7 times"), 1);
	bt_cleanup(&t);
	printf("\n    ");
}

/* ---- nothing left to send: the state shown is ok ------------------------ */

/* voluntary context switches of a process so far, -1 if unknown */
static long ctx_switches(pid_t pid)
{
	char path[64], line[256];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "voluntary_ctxt_switches: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* Issue 14, defect 4: with nothing left to send, the sink read "backoff
 * until ... ago", obx_sink_state said BACKOFF with a past until_ns (and
 * the idle broker woke every millisecond for a probe it had nothing to
 * send with). */
static void test_stale_state(void)
{
	struct obx_sink_info si;
	char conf[1024];
	struct obx_stats g;
	struct prods P;
	struct bt t;
	long sw0, sw1;
	obx_t *h;
	int sink;

	api_conf(conf, sizeof(conf), 10, "20ms", "2s", "300ms",
		 "backoff_jitter = 0%\nmax_retries = 0\n");
	start_broker(&t, "stale", conf);
	CU_ASSERT_EQUAL_FATAL(up_script("{\"steps\": [{\"status\": 503}]}"),
			      0);
	prods_start(&P, &t, 1, 1, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), 1);
	CU_ASSERT_EQUAL(wait_quiet(&t, 1, 10000, &g, g_sp), 0);
	check_identity("stale", &g, g_sp);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_retries_exhausted, 1);
	/* the 300 ms window is over and nothing waits */
	usleep(500000);
	sw0 = ctx_switches(t.pid);
	usleep(1000000);
	sw1 = ctx_switches(t.pid);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	h = obx_open(t.shm);
	CU_ASSERT_PTR_NOT_NULL_FATAL(h);
	sink = obx_sink(h, "api");
	CU_ASSERT_EQUAL(obx_sink_state(h, sink, &si), 0);
	obx_close(h);
	printf("\n    idle after the window: sink page state %u until %llu; "
	       "obx_sink_state %d until %llu; %ld wake-ups in 1 s",
	       api_of(g_sp)->state,
	       (unsigned long long)api_of(g_sp)->until_ns, si.state,
	       (unsigned long long)si.until_ns, sw1 - sw0);
	CU_ASSERT_EQUAL(api_of(g_sp)->state, OBX_SINK_OK);
	CU_ASSERT_EQUAL(api_of(g_sp)->until_ns, 0);
	CU_ASSERT_EQUAL(si.state, OBX_STATE_OK);
	CU_ASSERT_EQUAL(si.until_ns, 0);
	/* the loop's own 100 ms housekeeping, not a 1 ms poll */
	CU_ASSERT(sw0 >= 0 && sw1 - sw0 < 200);
	stop_broker(&t);
}

/* ---- the state file carries only batches that will be read again -------- */

/* Issue 14, defect 9: persist.c wrote back, on every save, the metadata of
 * batch ids no batch would read again (matched by exact first seq only).
 * A saved batch is now used up by the batch that covers its first record,
 * and dropped once the spool acknowledged past it or its sink is gone. */
static void test_persist_bounded(void)
{
	struct pol_saved_batch sb[34], *lb = NULL;
	char conf[1024], path[400];
	struct obx_stats g;
	struct prods P;
	struct bt t;
	json_t *reqs;
	size_t nb = 0, k;
	int i, rc;

	api_conf(conf, sizeof(conf), 10, "50ms", "2s", "200ms", "");
	start_broker(&t, "persistbound", conf);
	prods_start(&P, &t, 1, 30, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), 30);
	CU_ASSERT_EQUAL(wait_quiet(&t, 30, 10000, &g, g_sp), 0);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	/* seqs 1..30 are acknowledged. Saved metadata: for each of them (as
	 * if saved before they were acknowledged), for a sink that is gone,
	 * and for seq 34, inside the next batch [31, 41) but not its first */
	memset(sb, 0, sizeof(sb));
	for (i = 0; i < 34; i++) {
		snprintf(sb[i].sink, sizeof(sb[i].sink), "%s",
			 i < 30 ? "api" : i < 33 ? "ghost" : "api");
		pol_batch_init(&sb[i].b, i < 30 ? (uint64_t)i + 1 :
			       i < 33 ? (uint64_t)i - 29 : 34, 10);
		sb[i].b.attempts = 1;
	}
	sb[33].b.attempts = 4;
	sb[33].b.failures = 2;
	snprintf(path, sizeof(path), "%s/delivery-state", t.spool);
	CU_ASSERT_EQUAL_FATAL(pol_save(path, NULL, 0, sb, 34, 0), 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	prods_start(&P, &t, 1, 10, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), 10);
	CU_ASSERT_EQUAL(wait_quiet(&t, 40, 10000, &g, g_sp), 0);
	check_identity("persist bounded", &g, g_sp);
	/* the new batch took seq 34's budgets: X-Retry-Count 4 */
	reqs = up_requests(0, 0);
	k = json_array_size(reqs);
	CU_ASSERT_FATAL(k >= 4);
	printf("\n    the batch [31, 41) after the restart: X-Retry-Count %d",
	       req_retry_count(json_array_get(reqs, k - 1)));
	CU_ASSERT_EQUAL(req_retry_count(json_array_get(reqs, k - 1)), 4);
	json_decref(reqs);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	rc = pol_load(path, NULL, 0, &lb, &nb, 0);
	printf("; batch records in the state file after the stop: %zu "
	       "(34 written)", nb);
	CU_ASSERT_EQUAL(rc, 0);
	CU_ASSERT_EQUAL(nb, 0);
	free(lb);
	bt_cleanup(&t);
	printf("\n    ");
}

/* ---- a poison batch does not hold up its sink ---------------------------- */

/* 1 when request r carried the event id */
static int req_has_id(const json_t *r, const char *id)
{
	const json_t *ids = json_object_get(r, "ids");
	size_t i;

	for (i = 0; i < json_array_size(ids); i++)
		if (!strcmp(json_string_value(json_array_get(ids, i)), id))
			return 1;
	return 0;
}

/* When (upstream clock) every event of `batch` but `except` was in a 2xx
 * request; 0 if some never was. */
static double all_delivered_at(const json_t *reqs, const json_t *batch,
			       const char *except)
{
	double last = 0;
	size_t i, j;

	for (i = 0; i < json_array_size(json_object_get(batch, "ids")); i++) {
		const char *id = json_string_value(json_array_get(
			json_object_get(batch, "ids"), i));
		double when = 0;

		if (!strcmp(id, except))
			continue;
		for (j = 0; j < json_array_size(reqs) && !when; j++) {
			const json_t *r = json_array_get(reqs, j);

			if (req_status(r) / 100 == 2 && req_has_id(r, id))
				when = req_time(r);
		}
		if (!when)
			return 0;
		last = when > last ? when : last;
	}
	return last;
}

/* Issue 14, defect 1: an upstream that answers 500 to any body holding one
 * malformed event. The probe was always the oldest batch, so good events
 * waited behind the poison batch until its budgets ran out (12 h by
 * default). Now: good events flow again within two probe windows of the
 * first 500; the poison batch goes on alone, bisected so its own good
 * events go too, and its poison event is dropped by its own budget
 * (max_retries = 6: exactly 7 requests carry it). Prints the timeline. */
static void test_poison_batch(void)
{
	const uint64_t n = 300 / SCALE;
	char conf[1024];
	struct obx_stats g;
	struct prods P;
	struct bt t;
	json_t *reqs, *first = NULL;
	const char *poison_id = NULL;
	double t0 = 0, t_flow = 0, t_own = 0, t_end = 0, t_last = 0;
	int n500 = 0, before_flow = 0, k, sec;
	uint64_t total;
	size_t i;

	api_conf_max(conf, sizeof(conf), 16, "50ms", "2s", "500ms", "2s",
		     "backoff_jitter = 0%\nmax_retries = 6\n");
	start_broker(&t, "poison", conf);
	CU_ASSERT_EQUAL_FATAL(up_script("{\"rules\": [{\"contains\": "
		"\"poison\", \"status\": 500, \"body\": "
		"\"{\\\"error\\\": \\\"cannot parse event\\\"}\"}]}"), 0);
	g_poison_s = 0;			/* the first event of producer 0 */
	prods_start(&P, &t, 1, n, 100);
	g_poison_s = UINT64_MAX;
	total = prods_wait(&P);
	CU_ASSERT_EQUAL(wait_quiet(&t, total, 30000, &g, g_sp), 0);
	check_identity("poison", &g, g_sp);

	reqs = up_requests(0, 0);
	for (i = 0; i < json_array_size(reqs); i++) {
		json_t *r = json_array_get(reqs, i);
		double tm = req_time(r);

		if (req_status(r) / 100 == 2)
			t_last = tm;
		if (req_status(r) == 500) {
			if (!n500++) {
				first = r;
				t0 = tm;
			}
			t_end = tm;
		} else if (n500 && !t_flow && req_status(r) / 100 == 2 &&
			   req_events(r) > 0 &&
			   !req_has_id(first, req_first_id(r))) {
			t_flow = tm;
		}
		if (n500 && !t_flow)
			before_flow++;
	}
	CU_ASSERT_PTR_NOT_NULL_FATAL(first);
	/* the poison event: the one in every 500 */
	for (i = 0; i < json_array_size(json_object_get(first, "ids"))
	     && !poison_id; i++) {
		const char *id = json_string_value(json_array_get(
			json_object_get(first, "ids"), i));
		size_t j;
		int in_all = 1;

		for (j = 0; j < json_array_size(reqs); j++) {
			const json_t *r = json_array_get(reqs, j);

			if (req_status(r) == 500 && !req_has_id(r, id))
				in_all = 0;
		}
		if (in_all)
			poison_id = id;
	}
	CU_ASSERT_PTR_NOT_NULL_FATAL(poison_id);
	t_own = all_delivered_at(reqs, first, poison_id);

	/* the timeline, per second after the first 500 */
	printf("\n    poison batch of %d events (one malformed) at t=0; "
	       "%llu events in all at 100/s", req_events(first),
	       (unsigned long long)total);
	for (sec = 0; sec <= (int)((t_last > t_end ? t_last : t_end) - t0);
	     sec++) {
		int nreq = 0, good = 0;

		for (i = 0; i < json_array_size(reqs); i++) {
			const json_t *r = json_array_get(reqs, i);
			double d = req_time(r) - t0;

			if (d < sec || d >= sec + 1)
				continue;
			nreq++;
			if (req_status(r) / 100 == 2)
				good += req_events(r);
		}
		printf("\n      %2d-%2d s: %2d requests, %3d good events "
		       "delivered", sec, sec + 1, nreq, good);
	}
	printf("\n    good events flow again %.2f s after the first 500 "
	       "(%d requests, windows 0.5 + 1 s); the poison batch's %d good "
	       "events delivered at %.2f s; its poison event dropped after "
	       "%d requests (max_retries 6), the last at %.2f s; the last "
	       "delivery at %.2f s",
	       t_flow ? t_flow - t0 : -1.0, before_flow,
	       req_events(first) - 1, t_own ? t_own - t0 : -1.0, n500,
	       t_end - t0, t_last - t0);
	CU_ASSERT(t_flow > 0 && t_flow - t0 <= 0.5 + 1.0 + 0.5);
	CU_ASSERT(t_own > 0);
	/* its own budget: max_retries = 6 is 7 requests with the event */
	CU_ASSERT_EQUAL(n500, 7);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_retries_exhausted, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, total - 1);
	CU_ASSERT_EQUAL(up_stat("unique"), (json_int_t)(total - 1));
	CU_ASSERT_EQUAL(up_stat("dups"), 0);
	CU_ASSERT_EQUAL(api_of(g_sp)->state, OBX_SINK_OK);
	/* the sink had one outage, the poison batch's, however often it
	 * failed afterwards */
	k = log_count(&t, "one state for all producers");
	CU_ASSERT_EQUAL(k, 1);
	json_decref(reqs);
	stop_broker(&t);
}

/* One malformed event answered 400 (the whole batch refused for it): by
 * default the batch is dropped as rejected (PRODUCT.md section 7: "drop:
 * every other 4xx"); with status.400 = split it is bisected like a 413, the
 * good events delivered and only the bad one dropped, as rejected. */
static void test_poison_event_400(void)
{
	char conf[1024];
	struct obx_stats g;
	struct prods P;
	struct bt t;

	api_conf(conf, sizeof(conf), 8, "300ms", "2s", "200ms",
		 "status.400 = split\n");
	start_broker(&t, "poison400", conf);
	CU_ASSERT_EQUAL_FATAL(up_script("{\"rules\": [{\"contains\": "
		"\"poison\", \"status\": 400}]}"), 0);
	g_poison_s = 5;
	prods_start(&P, &t, 1, 8, 0);
	g_poison_s = UINT64_MAX;
	CU_ASSERT_EQUAL(prods_wait(&P), 8);
	CU_ASSERT_EQUAL(wait_quiet(&t, 8, 10000, &g, g_sp), 0);
	check_identity("poison 400 split", &g, g_sp);
	printf("\n    8 events, one refused with 400, status.400 = split: "
	       "%llu requests, %llu delivered, %llu rejected",
	       (unsigned long long)api_of(g_sp)->c.requests,
	       (unsigned long long)api_of(g_sp)->c.delivered_events,
	       (unsigned long long)api_of(g_sp)->c.dropped_rejected);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, 7);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_rejected, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.dropped_too_large, 0);
	/* 8 -> 4 -> 2 -> 1: three refused halvings, the good halves and
	 * the bad event: 7 requests */
	CU_ASSERT_EQUAL(api_of(g_sp)->c.requests, 7);
	CU_ASSERT_EQUAL(api_of(g_sp)->state, OBX_SINK_OK);
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
		/* the bodies were made where sink_threads says */
		CU_ASSERT_EQUAL(pool_threads_of(t.pid), g_sink_threads);
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

/* the same through the broker thread alone (sink_threads = 0) and
 * through four pool threads: the bodies are the same */
static void test_encodings_threads(void)
{
	g_broker_extra = "durability = write\nsink_threads = 0";
	g_sink_threads = 0;
	check_encodings("gzip");
	g_broker_extra = "durability = write\nsink_threads = 4";
	g_sink_threads = 4;
	check_encodings("zstd");
	g_broker_extra = "durability = write";
	g_sink_threads = 1;
}

/* SIGTERM while request bodies are being made on pool threads
 * (sink_threads = 4, gzip, small batches, producers flat out): the jobs
 * out are taken back, the broker exits 0, and after a restart every event
 * arrives. The pool threads once took signals: a SIGTERM delivered to one
 * killed the broker with the default action (exit 143, nothing
 * persisted) - this failed then. */
static void test_threads_stop(void)
{
	const uint64_t n = 200000;
	char conf[1024];
	struct obx_stats g;
	struct prods P;
	struct bt t;
	json_int_t at_stop;
	int i;

	g_broker_extra = "durability = write\nsink_threads = 4";
	snprintf(conf, sizeof(conf), "[sink api]\ntype = http\nurl = %s/ingest\n"
		 "compression = gzip\nbatch_max_events = 100\n"
		 "flush_interval = 20ms\nmax_inflight = 8\n", up_base());
	start_broker(&t, "threads-stop", conf);
	prods_start(&P, &t, 4, n / 4, 0);
	/* stopped while it sends: after its first requests */
	for (i = 0; i < 200 && up_stat("requests") < 5; i++)
		usleep(10000);
	at_stop = up_stat("requests");
	CU_ASSERT(at_stop >= 5);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	CU_ASSERT_EQUAL(prods_wait(&P), n);
	CU_ASSERT_EQUAL(wait_quiet(&t, n, 30000, &g, g_sp), 0);
	check_identity("threads-stop", &g, g_sp);
	CU_ASSERT_EQUAL(up_stat("unique"), (json_int_t)n);
	CU_ASSERT_EQUAL(up_stat("decode_errors"), 0);
	printf("\n    SIGTERM after %lld requests, restarted: %llu events, "
	       "%lld unique at the upstream", (long long)at_stop,
	       (unsigned long long)n, (long long)up_stat("unique"));
	g_broker_extra = "durability = write";
	stop_broker(&t);
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

/* ---- f2. kill -9 with every request out: their re-sends are counted --- */

/* Events in the requests the upstream has held (action "hang"). */
static json_int_t hung_events(void)
{
	json_t *reqs = up_requests(0, 0), *r;
	json_int_t n = 0;
	size_t i;

	json_array_foreach(reqs, i, r) {
		const char *a = json_string_value(json_object_get(r, "action"));

		if (a && !strcmp(a, "hang"))
			n += json_integer_value(json_object_get(r, "events"));
	}
	json_decref(reqs);
	return n;
}

/* The upstream holds every request; the broker is killed with all 200
 * events out (read, sent, never acknowledged: no checkpoint since the
 * start) and restarted against an upstream that answers. Each re-send
 * is counted `redelivered`: the read position was in the shm segment.
 * When it was kept only in the checkpoint after an acknowledgement, the
 * restarted broker knew of no read and counted 0. */
static void test_kill_all_out(void)
{
	char conf[1024];
	struct obx_stats g;
	struct prods P;
	struct bt t;
	json_int_t held = 0;
	uint64_t total;
	int i;

	api_conf(conf, sizeof(conf), 100, "50ms", "60s", "200ms",
		 "max_retries = 1000\n");
	start_broker(&t, "killout", conf);
	CU_ASSERT_EQUAL_FATAL(up_script(
		"{\"steps\": [{\"action\": \"hang\", \"count\": 100}]}"), 0);
	prods_start(&P, &t, 2, 100, 0);
	total = prods_wait(&P);
	for (i = 0; i < 200 && held < (json_int_t)total; i++) {
		usleep(50000);
		held = hung_events();
	}
	CU_ASSERT_EQUAL_FATAL(held, (json_int_t)total);
	bt_kill9(&t);
	CU_ASSERT_EQUAL_FATAL(up_script("{\"steps\": []}"), 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	CU_ASSERT_EQUAL(wait_quiet(&t, total, 20000, &g, g_sp), 0);
	check_identity("killout", &g, g_sp);
	printf("\n    %lld events held at the kill; after the restart "
	       "delivered %llu, redelivered %llu",
	       (long long)held,
	       (unsigned long long)api_of(g_sp)->c.delivered_events,
	       (unsigned long long)api_of(g_sp)->c.redelivered);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, total);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.redelivered, total);
	CU_ASSERT_EQUAL(g.redelivered, total);
	CU_ASSERT_EQUAL(up_stat("unique"), (json_int_t)total);
	stop_broker(&t);
}

/* ---- i. a wall-clock step does not move a backoff window --------------- */

/* The broker runs with tests/fakewall (LD_PRELOAD): its CLOCK_REALTIME is
 * shifted by the int64 ns in a file the test writes. */
struct wall_shim {
	char file[64];
	int fd;
	char *old_preload, *old_asan;
};

static void shim_set(struct wall_shim *w, int64_t shift_ns)
{
	CU_ASSERT_EQUAL(pwrite(w->fd, &shift_ns, sizeof(shift_ns), 0),
			(ssize_t)sizeof(shift_ns));
}

/* Starts the broker with the shim in its environment only. */
static void start_broker_shim(struct bt *t, const char *tag, const char *conf,
			      struct wall_shim *w)
{
	char so[600], asan[600];
	const char *a = getenv("ASAN_OPTIONS"), *p = getenv("LD_PRELOAD");

	snprintf(w->file, sizeof(w->file), "/tmp/obx-fakewall-XXXXXX");
	w->fd = mkstemp(w->file);
	CU_ASSERT_FATAL(w->fd >= 0);
	shim_set(w, 0);
	snprintf(so, sizeof(so), "%s", bt_bin("tests/libfakewall.so"));
	CU_ASSERT_FATAL(access(so, R_OK) == 0);
	w->old_preload = p ? strdup(p) : NULL;
	w->old_asan = a ? strdup(a) : NULL;
	/* an ASan broker accepts a preloaded library that is not ASan's */
	snprintf(asan, sizeof(asan), "%s%sverify_asan_link_order=0",
		 a ? a : "", a && *a ? ":" : "");
	setenv("LD_PRELOAD", so, 1);
	setenv("OBX_FAKEWALL", w->file, 1);
	setenv("ASAN_OPTIONS", asan, 1);
	start_broker(t, tag, conf);
	/* producers and tools forked later run on the real clock */
	if (w->old_preload)
		setenv("LD_PRELOAD", w->old_preload, 1);
	else
		unsetenv("LD_PRELOAD");
	if (w->old_asan)
		setenv("ASAN_OPTIONS", w->old_asan, 1);
	else
		unsetenv("ASAN_OPTIONS");
	unsetenv("OBX_FAKEWALL");
}

static void shim_done(struct wall_shim *w)
{
	close(w->fd);
	unlink(w->file);
	free(w->old_preload);
	free(w->old_asan);
}

/* the time of request `seq` (upstream clock), waiting up to ms; 0 if none */
static double request_time(long seq, int ms)
{
	double tm = 0;
	json_t *reqs;

	if (wait_requests(seq + 1, ms) < 0)
		return 0;
	reqs = up_requests(seq, 0);
	if (json_array_size(reqs) > 0)
		tm = req_time(json_array_get(reqs, 0));
	json_decref(reqs);
	return tm;
}

static void test_wall_step(void)
{
	char conf[1024];
	struct wall_shim w;
	struct obx_stats g;
	struct prods P;
	struct bt t;
	double t1, t2, t3;

	/* no jitter: the probes come 1 s, then 2 s after the 503s */
	api_conf(conf, sizeof(conf), 10, "20ms", "2s", "1s",
		 "backoff_jitter = 0%\nmax_retries = 1000\n");
	start_broker_shim(&t, "wallstep", conf, &w);
	CU_ASSERT_EQUAL_FATAL(up_script("{\"steps\": [{\"status\": 503, "
					"\"count\": 2}]}"), 0);
	prods_start(&P, &t, 1, 1, 0);
	CU_ASSERT_EQUAL(prods_wait(&P), 1);
	t1 = request_time(0, 5000);
	CU_ASSERT_FATAL(t1 > 0);
	/* the broker's wall clock steps an hour back inside the window: a
	 * window kept on the wall clock would now end in an hour */
	shim_set(&w, -3600 * 1000000000ll);
	t2 = request_time(1, 4000);
	/* and two hours forward inside the next one: it would end at once */
	if (t2 > 0)
		shim_set(&w, 3600 * 1000000000ll);
	t3 = t2 > 0 ? request_time(2, 5000) : 0;
	printf("\n    wall clock -1 h in the first window: probe %.3f s after "
	       "the 503; +2 h in the second: %.3f s", t2 ? t2 - t1 : -1.0,
	       t3 ? t3 - t2 : -1.0);
	CU_ASSERT(t2 > 0 && t2 - t1 >= 0.95 && t2 - t1 < 1.6);
	CU_ASSERT(t3 > 0 && t3 - t2 >= 1.95 && t3 - t2 < 2.6);
	CU_ASSERT_EQUAL(wait_quiet(&t, 1, 10000, &g, g_sp), 0);
	check_identity("wall step", &g, g_sp);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.delivered_events, 1);
	CU_ASSERT_EQUAL(api_of(g_sp)->c.responses_5xx, 2);
	stop_broker(&t);
	shim_done(&w);
}

static int add_suites(void)
{
	CU_pSuite s = CU_add_suite("delivery", suite_init, suite_clean);

	if (!s ||
	    !CU_add_test(s, "retry_after_429", test_retry_after) ||
	    !CU_add_test(s, "retry_after_0", test_retry_after_0) ||
	    !CU_add_test(s, "rate_limit_no_budget",
			 test_rate_limit_no_budget) ||
	    !CU_add_test(s, "split_413", test_split_413) ||
	    !CU_add_test(s, "rejected_400", test_rejected_400) ||
	    !CU_add_test(s, "counters", test_counters) ||
	    !CU_add_test(s, "cause_logged", test_cause_logged) ||
	    !CU_add_test(s, "drop_logs", test_drop_logs) ||
	    !CU_add_test(s, "flapping", test_flapping) ||
	    !CU_add_test(s, "stale_state", test_stale_state) ||
	    !CU_add_test(s, "persist_bounded", test_persist_bounded) ||
	    !CU_add_test(s, "poison_batch", test_poison_batch) ||
	    !CU_add_test(s, "poison_event_400", test_poison_event_400) ||
	    !CU_add_test(s, "hang_timeout", test_hang_timeout) ||
	    !CU_add_test(s, "reauth_401", test_reauth_401) ||
	    !CU_add_test(s, "encodings_gzip", test_encodings_gzip) ||
	    !CU_add_test(s, "encodings_zstd", test_encodings_zstd) ||
	    !CU_add_test(s, "encodings_threads", test_encodings_threads) ||
	    !CU_add_test(s, "threads_stop", test_threads_stop) ||
	    !CU_add_test(s, "restart_in_window", test_restart_in_window) ||
	    !CU_add_test(s, "kill_all_out", test_kill_all_out) ||
	    !CU_add_test(s, "wall_step", test_wall_step) ||
	    !CU_add_test(s, "outage_503", test_outage))
		return -1;
	return 0;
}

TEST_MAIN(add_suites)
