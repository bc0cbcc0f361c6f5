/* test_policy.c - the delivery policy (broker/policy.c).
 *
 * Pure functions driven with a fake clock: T0 is 2023-11-14 22:13:20 UTC
 * (a Tuesday) in wall-clock ms, and every expectation is an exact value
 * derived from PRODUCT.md section 7 and the boundaries documented in
 * policy.h. Persistence tests write into a mkdtemp() directory.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "policy.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <sys/stat.h>

#define T0 1700000000000LL
#define SEC 1000LL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)

static char g_dir[] = "/tmp/obx-poltest-XXXXXX";

/* ---- helpers ------------------------------------------------------------- */

/* the PRODUCT.md section 5 defaults, set here field by field so that the
 * test does not depend on config.c */
static void t_cfg(struct cfg_sink *c)
{
	memset(c, 0, sizeof(*c));
	strcpy(c->name, "api");
	c->type = SINK_HTTP;
	c->max_inflight = 4;
	c->backoff_base_ms = 500;
	c->backoff_max_ms = 60000;
	c->backoff_jitter_pct = 10;
	c->max_retries = 1000;
	c->max_backoff_duration_ms = 12 * HOUR;
	c->retry_after_max_ms = 300 * SEC;
	c->max_rate_limit_duration_ms = 30 * MIN;
	c->on_rate_limit = RL_HOLD;
}

static void t_override(struct cfg_sink *c, int code,
		       enum cfg_status_action a)
{
	c->status[c->nstatus].code = code;
	c->status[c->nstatus].action = a;
	c->nstatus++;
}

/* an outcome with at most one Retry-After and one Sentry header */
struct t_out {
	struct pol_outcome o;
	const char *ra[1];
	const char *sl[1];
};

static const struct pol_outcome *t_oc(struct t_out *t, int status,
				      const char *ra, const char *sl)
{
	memset(t, 0, sizeof(*t));
	t->o.wall_ms = T0;	/* the wall clock of the answer (HTTP-dates) */
	t->o.status = status;
	t->o.net = status ? POL_NET_NONE : POL_NET_ERROR;
	if (ra) {
		t->ra[0] = ra;
		t->o.retry_after = t->ra;
		t->o.n_retry_after = 1;
	}
	if (sl) {
		t->sl[0] = sl;
		t->o.sentry_limits = t->sl;
		t->o.n_sentry_limits = 1;
	}
	return &t->o;
}

/* begin (the gate must be open) and feed one response */
static void t_send(struct pol_sink *s, const struct cfg_sink *c,
		   struct pol_batch *b, int64_t now, int status,
		   const char *ra, const char *sl, struct pol_result *r)
{
	struct t_out t;

	CU_ASSERT_EQUAL_FATAL(pol_begin(s, c, b, 0, now), 0);
	t_oc(&t, status, ra, sl);
	t.o.wall_ms = now;
	pol_on_response(s, c, b, &t.o, now, 0, r);
}

/* the same without the gate: a response to a request begun earlier */
static void t_resp(struct pol_sink *s, const struct cfg_sink *c,
		   struct pol_batch *b, int64_t now, int status,
		   const char *ra, const char *sl, struct pol_result *r)
{
	struct t_out t;

	t_oc(&t, status, ra, sl);
	t.o.wall_ms = now;
	pol_on_response(s, c, b, &t.o, now, 0, r);
}

/* b as a new batch (each request of a sequence its own, so none collects
 * the strikes of a poison batch) */
static void t_fresh(struct pol_batch *b)
{
	static uint64_t id = 1000;

	pol_batch_init(b, id++, 5);
}

/* HTTP-date of a unix time, in one of the three forms */
static void t_date(char *buf, size_t n, int64_t ms, int form)
{
	static const char *fmt[] = {
		"%a, %d %b %Y %H:%M:%S GMT",	/* IMF-fixdate */
		"%A, %d-%b-%y %H:%M:%S GMT",	/* RFC 850 */
		"%a %b %e %H:%M:%S %Y",		/* asctime */
	};
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, n, fmt[form], &tm);
}

/* ---- classification ------------------------------------------------------ */

static const struct {
	int status;
	enum pol_class plain;		/* no token source */
	enum pol_class token;		/* token source, first answer */
	enum pol_class token_again;	/* token source, after a refresh */
} class_table[] = {
	{ 0, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },	/* network */
	{ 100, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 200, POL_C_ACCEPTED, POL_C_ACCEPTED, POL_C_ACCEPTED },
	{ 202, POL_C_ACCEPTED, POL_C_ACCEPTED, POL_C_ACCEPTED },
	{ 204, POL_C_ACCEPTED, POL_C_ACCEPTED, POL_C_ACCEPTED },
	{ 299, POL_C_ACCEPTED, POL_C_ACCEPTED, POL_C_ACCEPTED },
	{ 301, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 304, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 307, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 400, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 401, POL_C_DROP, POL_C_REAUTH, POL_C_DROP },
	{ 403, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 404, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 407, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 408, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },
	{ 409, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 410, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },
	{ 413, POL_C_SPLIT, POL_C_SPLIT, POL_C_SPLIT },
	{ 422, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 429, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },
	{ 451, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 460, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },
	{ 499, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 500, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },
	{ 501, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 502, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },
	{ 503, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },
	{ 504, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },
	{ 505, POL_C_DROP, POL_C_DROP, POL_C_DROP },
	{ 507, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },
	{ 511, POL_C_RETRY, POL_C_REAUTH, POL_C_RETRY },
	{ 599, POL_C_RETRY, POL_C_RETRY, POL_C_RETRY },
	{ 600, POL_C_DROP, POL_C_DROP, POL_C_DROP },
};

static void test_classify_table(void)
{
	struct cfg_sink plain, tok;
	size_t i;

	t_cfg(&plain);
	t_cfg(&tok);
	tok.token_file = "/run/token";
	for (i = 0; i < sizeof(class_table) / sizeof(class_table[0]); i++) {
		int st = class_table[i].status;

		if (pol_classify(&plain, st, false) != class_table[i].plain ||
		    pol_classify(&tok, st, false) != class_table[i].token ||
		    pol_classify(&tok, st, true) != class_table[i].token_again)
			fprintf(stderr, "classify %d: %d %d %d\n", st,
				pol_classify(&plain, st, false),
				pol_classify(&tok, st, false),
				pol_classify(&tok, st, true));
		CU_ASSERT_EQUAL(pol_classify(&plain, st, false),
				class_table[i].plain);
		CU_ASSERT_EQUAL(pol_classify(&tok, st, false),
				class_table[i].token);
		CU_ASSERT_EQUAL(pol_classify(&tok, st, true),
				class_table[i].token_again);
		/* the built-in class never says reauth */
		CU_ASSERT_NOT_EQUAL(pol_class_default(st), POL_C_REAUTH);
	}
}

/* One response on a fresh sink and batch: the verdict, the reason, the
 * sink state and whether the budget was charged. */
static const struct {
	int status;		/* 0 = network error, -1 = timeout */
	uint32_t nevents;
	bool token;
	const char *ra;
	enum pol_verdict v;
	enum pol_reason why;
	enum pol_state st;
	int64_t until;		/* relative to T0; 0 when ok */
	bool counted;
	bool limited;
} response_table[] = {
	{ 200, 10, 0, NULL, POL_V_DELIVERED, 0, POL_OK, 0, 0, 0 },
	{ 204, 10, 0, NULL, POL_V_DELIVERED, 0, POL_OK, 0, 0, 0 },
	{ 301, 10, 0, NULL, POL_V_DROP, POL_R_REJECTED, POL_OK, 0, 0, 0 },
	{ 400, 10, 0, NULL, POL_V_DROP, POL_R_REJECTED, POL_OK, 0, 0, 0 },
	{ 401, 10, 0, NULL, POL_V_DROP, POL_R_REJECTED, POL_OK, 0, 0, 0 },
	{ 401, 10, 1, NULL, POL_V_REAUTH, 0, POL_OK, 0, 0, 0 },
	{ 403, 10, 0, NULL, POL_V_DROP, POL_R_REJECTED, POL_OK, 0, 0, 0 },
	{ 404, 10, 0, NULL, POL_V_DROP, POL_R_REJECTED, POL_OK, 0, 0, 0 },
	{ 408, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	{ 410, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	{ 413, 10, 0, NULL, POL_V_SPLIT, 0, POL_OK, 0, 0, 0 },
	{ 413, 2, 0, NULL, POL_V_SPLIT, 0, POL_OK, 0, 0, 0 },
	{ 413, 1, 0, NULL, POL_V_DROP, POL_R_TOO_LARGE, POL_OK, 0, 0, 0 },
	{ 422, 10, 0, NULL, POL_V_DROP, POL_R_REJECTED, POL_OK, 0, 0, 0 },
	{ 429, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	{ 429, 10, 0, "7", POL_V_RETRY, 0, POL_RATE_LIMITED, 7000, 0, 1 },
	{ 460, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	{ 500, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	{ 501, 10, 0, NULL, POL_V_DROP, POL_R_REJECTED, POL_OK, 0, 0, 0 },
	{ 502, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	{ 503, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	{ 503, 10, 0, "9", POL_V_RETRY, 0, POL_RATE_LIMITED, 9000, 0, 1 },
	/* Segment PR #520: Retry-After counts on any retryable status */
	{ 500, 10, 0, "4", POL_V_RETRY, 0, POL_RATE_LIMITED, 4000, 0, 1 },
	{ 408, 10, 0, "4", POL_V_RETRY, 0, POL_RATE_LIMITED, 4000, 0, 1 },
	/* ... and on no other */
	{ 400, 10, 0, "4", POL_V_DROP, POL_R_REJECTED, POL_OK, 0, 0, 0 },
	{ 200, 10, 0, "4", POL_V_DELIVERED, 0, POL_OK, 0, 0, 0 },
	{ 501, 10, 0, "4", POL_V_DROP, POL_R_REJECTED, POL_OK, 0, 0, 0 },
	{ 504, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	{ 505, 10, 0, NULL, POL_V_DROP, POL_R_REJECTED, POL_OK, 0, 0, 0 },
	{ 511, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	{ 511, 10, 1, NULL, POL_V_REAUTH, 0, POL_OK, 0, 0, 0 },
	{ 0, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	{ -1, 10, 0, NULL, POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
	/* a network error has no headers to honour */
	{ 0, 10, 0, "5", POL_V_RETRY, 0, POL_BACKOFF, 500, 1, 0 },
};

static void test_response_table(void)
{
	size_t i;

	for (i = 0; i < sizeof(response_table) / sizeof(response_table[0]);
	     i++) {
		struct cfg_sink c;
		struct pol_sink s;
		struct pol_batch b;
		struct pol_result r;
		struct t_out t;
		const struct pol_outcome *o;

		t_cfg(&c);
		if (response_table[i].token)
			c.token_file = "/run/token";
		pol_sink_init(&s, "api");
		pol_batch_init(&b, 42, response_table[i].nevents);
		CU_ASSERT_EQUAL_FATAL(pol_begin(&s, &c, &b, 0, T0), 0);
		CU_ASSERT_FALSE(b.probe);
		o = t_oc(&t, response_table[i].status < 0 ? 0
			 : response_table[i].status, response_table[i].ra, NULL);
		if (response_table[i].status < 0)
			t.o.net = POL_NET_TIMEOUT;
		pol_on_response(&s, &c, &b, o, T0, 0, &r);
		if (r.verdict != response_table[i].v ||
		    r.state != response_table[i].st)
			fprintf(stderr, "row %zu (status %d): verdict %d state %d\n",
				i, response_table[i].status, r.verdict, r.state);
		CU_ASSERT_EQUAL(r.verdict, response_table[i].v);
		CU_ASSERT_EQUAL(r.reason, response_table[i].why);
		CU_ASSERT_EQUAL(r.state, response_table[i].st);
		CU_ASSERT_EQUAL(s.state, response_table[i].st);
		CU_ASSERT_EQUAL(r.counted, response_table[i].counted);
		CU_ASSERT_EQUAL(r.rate_limited, response_table[i].limited);
		CU_ASSERT_EQUAL(b.failures, response_table[i].counted ? 1 : 0);
		CU_ASSERT_EQUAL(b.attempts, 1);
		CU_ASSERT_EQUAL(s.until_ms, response_table[i].st == POL_OK ? 0
				: T0 + response_table[i].until);
		/* backoff raised the level, a rate limit did not */
		CU_ASSERT_EQUAL(s.level,
				response_table[i].st == POL_BACKOFF ? 1 : 0);
		/* leaving ok is logged once, with the reason */
		CU_ASSERT_EQUAL(r.log, response_table[i].st == POL_OK
				? POL_LOG_NONE : POL_LOG_OUTAGE);
	}
}

static void test_why_text(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b;
	struct pol_result r;
	struct t_out t;

	t_cfg(&c);
	pol_sink_init(&s, "api");
	pol_batch_init(&b, 1, 3);
	t_send(&s, &c, &b, T0, 503, NULL, NULL, &r);
	CU_ASSERT_STRING_EQUAL(r.why, "HTTP 503");
	pol_sink_init(&s, "api");
	t_send(&s, &c, &b, T0, 429, "12", NULL, &r);
	CU_ASSERT_STRING_EQUAL(r.why, "HTTP 429, rate limited for 12000 ms");
	CU_ASSERT_EQUAL(r.wait_ms, 12000);
	pol_sink_init(&s, "api");
	pol_batch_init(&b, 2, 3);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, T0), 0);
	t_oc(&t, 0, NULL, NULL);
	t.o.net = POL_NET_TIMEOUT;
	pol_on_response(&s, &c, &b, &t.o, T0, 0, &r);
	CU_ASSERT_STRING_EQUAL(r.why, "timeout");
	pol_sink_init(&s, "api");
	pol_batch_init(&b, 3, 3);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, T0), 0);
	pol_on_response(&s, &c, &b, t_oc(&t, 0, NULL, NULL), T0, 0, &r);
	CU_ASSERT_STRING_EQUAL(r.why, "network error");
}

static void test_reauth_once(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b;
	struct pol_result r;

	t_cfg(&c);
	c.token_file = "/run/token";
	pol_sink_init(&s, "api");

	/* 401: refresh once, a second 401 is a drop */
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 401, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_REAUTH);
	CU_ASSERT_TRUE(b.reauth_done);
	CU_ASSERT_FALSE(r.counted);
	CU_ASSERT_EQUAL(b.failures, 0);
	CU_ASSERT_EQUAL(pol_retry_count(&b), 1);
	t_send(&s, &c, &b, T0 + 1, 401, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
	CU_ASSERT_EQUAL(r.reason, POL_R_REJECTED);
	CU_ASSERT_EQUAL(s.state, POL_OK);

	/* 511: refresh once, then an ordinary (counted) retry */
	pol_batch_init(&b, 2, 5);
	t_send(&s, &c, &b, T0 + 2, 511, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_REAUTH);
	t_send(&s, &c, &b, T0 + 3, 511, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	CU_ASSERT_TRUE(r.counted);
	CU_ASSERT_EQUAL(s.state, POL_BACKOFF);

	/* the refresh is per batch: a new batch may refresh again */
	pol_sink_init(&s, "api");
	pol_batch_init(&b, 3, 5);
	t_send(&s, &c, &b, T0, 401, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_REAUTH);
	/* and a refresh carries over to the halves of a split */
	{
		struct pol_batch h;

		pol_batch_split(&b, &h, 4, 2);
		CU_ASSERT_TRUE(h.reauth_done);
		CU_ASSERT_EQUAL(h.id, 4);
		CU_ASSERT_EQUAL(h.nevents, 2);
		CU_ASSERT_EQUAL(h.attempts, 1);
	}
}

static void test_status_overrides(void)
{
	static const struct {
		int code;
		enum cfg_status_action a;
		bool token;
		int status;
		uint32_t nevents;
		enum pol_verdict v;
		enum pol_reason why;
	} rows[] = {
		{ 400, ST_RETRY, 0, 400, 5, POL_V_RETRY, 0 },
		{ 503, ST_DROP, 0, 503, 5, POL_V_DROP, POL_R_REJECTED },
		{ 500, ST_SPLIT, 0, 500, 5, POL_V_SPLIT, 0 },
		/* a split other than 413 down to one event: that event
		 * was refused, not too large */
		{ 500, ST_SPLIT, 0, 500, 1, POL_V_DROP, POL_R_REJECTED },
		{ 400, ST_SPLIT, 0, 400, 1, POL_V_DROP, POL_R_REJECTED },
		{ 413, ST_SPLIT, 0, 413, 1, POL_V_DROP, POL_R_TOO_LARGE },
		{ 413, ST_DROP, 0, 413, 5, POL_V_DROP, POL_R_REJECTED },
		{ 413, ST_RETRY, 0, 413, 1, POL_V_RETRY, 0 },
		{ 403, ST_REAUTH, 1, 403, 5, POL_V_REAUTH, 0 },
		/* reauth without a token source: the built-in class */
		{ 403, ST_REAUTH, 0, 403, 5, POL_V_DROP, POL_R_REJECTED },
		{ 503, ST_REAUTH, 0, 503, 5, POL_V_RETRY, 0 },
		/* an override beats the token source's 401 rule */
		{ 401, ST_RETRY, 1, 401, 5, POL_V_RETRY, 0 },
		{ 511, ST_DROP, 1, 511, 5, POL_V_DROP, POL_R_REJECTED },
		{ 200, ST_RETRY, 0, 200, 5, POL_V_RETRY, 0 },
		{ 302, ST_RETRY, 0, 302, 5, POL_V_RETRY, 0 },
		/* an override of another code leaves this one alone */
		{ 502, ST_DROP, 0, 503, 5, POL_V_RETRY, 0 },
	};
	size_t i;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct cfg_sink c;
		struct pol_sink s;
		struct pol_batch b;
		struct pol_result r;

		t_cfg(&c);
		t_override(&c, 404, ST_RETRY);	/* noise before the row */
		t_override(&c, rows[i].code, rows[i].a);
		if (rows[i].token)
			c.token_file = "/run/token";
		pol_sink_init(&s, "api");
		pol_batch_init(&b, 1, rows[i].nevents);
		t_send(&s, &c, &b, T0, rows[i].status, NULL, NULL, &r);
		if (r.verdict != rows[i].v)
			fprintf(stderr, "override row %zu: verdict %d\n", i,
				r.verdict);
		CU_ASSERT_EQUAL(r.verdict, rows[i].v);
		CU_ASSERT_EQUAL(r.reason, rows[i].why);
	}
	/* reauth by override, then the built-in class of 403: drop */
	{
		struct cfg_sink c;
		struct pol_sink s;
		struct pol_batch b;
		struct pol_result r;

		t_cfg(&c);
		c.token_file = "/run/token";
		t_override(&c, 403, ST_REAUTH);
		pol_sink_init(&s, "api");
		pol_batch_init(&b, 1, 5);
		t_send(&s, &c, &b, T0, 403, NULL, NULL, &r);
		CU_ASSERT_EQUAL(r.verdict, POL_V_REAUTH);
		t_send(&s, &c, &b, T0, 403, NULL, NULL, &r);
		CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
		CU_ASSERT_EQUAL(r.reason, POL_R_REJECTED);
	}
	/* a 429 overridden to drop ignores its Retry-After */
	{
		struct cfg_sink c;
		struct pol_sink s;
		struct pol_batch b;
		struct pol_result r;

		t_cfg(&c);
		t_override(&c, 429, ST_DROP);
		pol_sink_init(&s, "api");
		pol_batch_init(&b, 1, 5);
		t_send(&s, &c, &b, T0, 429, "30", NULL, &r);
		CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
		CU_ASSERT_EQUAL(s.state, POL_OK);
	}
}

/* ---- Retry-After --------------------------------------------------------- */

static void test_retry_after_seconds(void)
{
	static const struct {
		const char *v;
		int rc;
		int64_t wait;
	} rows[] = {
		{ "5", 0, 5000 },
		{ "120", 0, 120000 },
		{ " 5 ", 0, 5000 },
		{ "\t7\t", 0, 7000 },
		{ "000012", 0, 12000 },
		{ "0", 0, 250 },		/* 250 ms floor */
		{ "00", 0, 250 },
		{ "1", 0, 1000 },
		{ "300", 0, 300000 },
		{ "301", 0, 300000 },		/* capped */
		{ "86400", 0, 300000 },
		{ "99999999999999999999999999", 0, 300000 },
		{ "-5", -EINVAL, 0 },		/* negative = absent */
		{ "-0", -EINVAL, 0 },
		{ "+5", -EINVAL, 0 },
		{ "1.5", -EINVAL, 0 },
		{ "5s", -EINVAL, 0 },
		{ "5 0", -EINVAL, 0 },
		{ "abc", -EINVAL, 0 },
		{ "", -EINVAL, 0 },
		{ "   ", -EINVAL, 0 },
		{ "0x10", -EINVAL, 0 },
		{ "5\n", -EINVAL, 0 },
	};
	size_t i;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		int64_t w = -77;
		int rc = pol_parse_retry_after(rows[i].v, T0, 300000, &w);

		if (rc != rows[i].rc || (!rc && w != rows[i].wait))
			fprintf(stderr, "Retry-After %s: rc %d wait %lld\n",
				rows[i].v, rc, (long long)w);
		CU_ASSERT_EQUAL(rc, rows[i].rc);
		/* on error the output is untouched */
		CU_ASSERT_EQUAL(w, rows[i].rc ? -77 : rows[i].wait);
	}
	CU_ASSERT_EQUAL(pol_parse_retry_after(NULL, T0, 300000, &(int64_t){0}),
			-EINVAL);
}

static void test_retry_after_dates(void)
{
	static const struct {
		int64_t at;	/* date, relative to T0 (whole seconds) */
		int64_t now;	/* relative to T0 */
		int rc;
		int64_t wait;
	} rows[] = {
		{ 120 * SEC, 0, 0, 120000 },
		{ 1 * SEC, 0, 0, 1000 },
		{ 2 * SEC, 1500, 0, 500 },	/* 500 ms ahead */
		{ 2 * SEC, 1900, 0, 250 },	/* 100 ms ahead: the floor */
		{ 10 * MIN, 0, 0, 300000 },	/* capped */
		{ 400 * 86400 * SEC, 0, 0, 300000 },
		{ 0, 0, -EINVAL, 0 },		/* now is not the future */
		{ 0, 1, -EINVAL, 0 },
		{ -1 * SEC, 0, -EINVAL, 0 },	/* past = absent */
		{ -86400 * SEC, 0, -EINVAL, 0 },
	};
	size_t i;
	int form;

	for (form = 0; form < 3; form++)
		for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
			char d[64];
			int64_t w = -1;
			int rc;

			t_date(d, sizeof(d), T0 + rows[i].at, form);
			rc = pol_parse_retry_after(d, T0 + rows[i].now, 300000,
						   &w);
			if (rc != rows[i].rc || (!rc && w != rows[i].wait))
				fprintf(stderr, "date '%s': rc %d wait %lld\n",
					d, rc, (long long)w);
			CU_ASSERT_EQUAL(rc, rows[i].rc);
			if (!rc)
				CU_ASSERT_EQUAL(w, rows[i].wait);
		}
}

static void test_retry_after_date_forms(void)
{
	static const struct {
		const char *v;
		int rc;
		int64_t wait;
	} rows[] = {
		/* T0 = Tue, 14 Nov 2023 22:13:20 GMT */
		{ "Tue, 14 Nov 2023 22:15:20 GMT", 0, 120000 },
		{ "  Tue, 14 Nov 2023 22:15:20 GMT\t", 0, 120000 },
		{ "Tuesday, 14-Nov-23 22:15:20 GMT", 0, 120000 },
		{ "Tue Nov 14 22:15:20 2023", 0, 120000 },
		{ "Tue, 14 Nov 2023 22:13:21 GMT", 0, 1000 },
		/* the weekday is not cross-checked, the name must be one */
		{ "Wed, 14 Nov 2023 22:15:20 GMT", 0, 120000 },
		{ "Tux, 14 Nov 2023 22:15:20 GMT", -EINVAL, 0 },
		{ "Tue, 14 Nov 2023 22:15:20 PST", -EINVAL, 0 },
		{ "Tue, 14 Nov 2023 22:15:20", -EINVAL, 0 },
		{ "Tue, 14 Nov 2023 22:15:20 GMT x", -EINVAL, 0 },
		{ "Tue, 14 Nov 2023 24:15:20 GMT", -EINVAL, 0 },
		{ "Tue, 14 Nov 2023 22:60:20 GMT", -EINVAL, 0 },
		{ "Tue, 31 Nov 2023 22:15:20 GMT", -EINVAL, 0 },
		{ "Tue, 00 Nov 2023 22:15:20 GMT", -EINVAL, 0 },
		{ "Tue, 14 Foo 2023 22:15:20 GMT", -EINVAL, 0 },
		{ "Tue, 14 Nov 23 22:15:20 GMT", -EINVAL, 0 },
		{ "Tue, 4 Nov 2023 22:15:20 GMT", -EINVAL, 0 },
		{ "tue, 14 nov 2023 22:15:20 gmt", -EINVAL, 0 },
		{ "Tuesday, 14-Nov-2023 22:15:20 GMT", -EINVAL, 0 },
		{ "Tue Nov 14 22:15:20 2023 GMT", -EINVAL, 0 },
		{ "2023-11-14T22:15:20Z", -EINVAL, 0 },
		{ "Tue,", -EINVAL, 0 },
		{ "Tue", -EINVAL, 0 },
		/* leap years: 2024-02-29 exists, 2023-02-29 does not (both
		 * past T0 + cap, so only validity shows) */
		{ "Thu, 29 Feb 2024 00:00:00 GMT", 0, 300000 },
		{ "Wed, 29 Feb 2023 00:00:00 GMT", -EINVAL, 0 },
		{ "Sun Dec  1 00:00:00 2024", 0, 300000 },
		{ "Sun Dec 1 00:00:00 2024", 0, 300000 },
	};
	size_t i;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		int64_t w = -1;
		int rc = pol_parse_retry_after(rows[i].v, T0, 300000, &w);

		if (rc != rows[i].rc || (!rc && w != rows[i].wait))
			fprintf(stderr, "date '%s': rc %d wait %lld\n",
				rows[i].v, rc, (long long)w);
		CU_ASSERT_EQUAL(rc, rows[i].rc);
		if (!rc)
			CU_ASSERT_EQUAL(w, rows[i].wait);
	}
}

static void test_retry_after_duplicates(void)
{
	char d[64];
	int64_t w = -1;
	const char *a[] = { "5", "garbage", "10", "-3" };
	const char *b[] = { "garbage", "-1", "" };
	const char *c[] = { d, "60" };
	const char *e[] = { "Tue, 14 Nov 2023 22:13:19 GMT", "2" };

	CU_ASSERT_EQUAL(pol_retry_after(a, 4, T0, 300000, &w), 0);
	CU_ASSERT_EQUAL(w, 10000);
	CU_ASSERT_EQUAL(pol_retry_after(b, 3, T0, 300000, &w), -EINVAL);
	t_date(d, sizeof(d), T0 + 120 * SEC, 0);
	CU_ASSERT_EQUAL(pol_retry_after(c, 2, T0, 300000, &w), 0);
	CU_ASSERT_EQUAL(w, 120000);
	CU_ASSERT_EQUAL(pol_retry_after(e, 2, T0, 300000, &w), 0);
	CU_ASSERT_EQUAL(w, 2000);
	CU_ASSERT_EQUAL(pol_retry_after(NULL, 0, T0, 300000, &w), -EINVAL);
	CU_ASSERT_EQUAL(pol_retry_after(a, 0, T0, 300000, &w), -EINVAL);
}

/* Retry-After forms through the state machine: rate limited until, or
 * (absent) an ordinary counted backoff of 500 ms. */
static void test_retry_after_responses(void)
{
	static const struct {
		const char *ra;
		enum pol_state st;
		int64_t until;
	} rows[] = {
		{ "5", POL_RATE_LIMITED, 5000 },
		{ "0", POL_RATE_LIMITED, 250 },
		{ "100000", POL_RATE_LIMITED, 300000 },
		{ "Tue, 14 Nov 2023 22:14:20 GMT", POL_RATE_LIMITED, 60000 },
		{ "Tue, 14 Nov 2023 22:13:00 GMT", POL_BACKOFF, 500 },
		{ "-1", POL_BACKOFF, 500 },
		{ "soon", POL_BACKOFF, 500 },
		{ " 3 ", POL_RATE_LIMITED, 3000 },
	};
	size_t i;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct cfg_sink c;
		struct pol_sink s;
		struct pol_batch b;
		struct pol_result r;

		t_cfg(&c);
		pol_sink_init(&s, "api");
		pol_batch_init(&b, 1, 5);
		t_send(&s, &c, &b, T0, 429, rows[i].ra, NULL, &r);
		CU_ASSERT_EQUAL(s.state, rows[i].st);
		CU_ASSERT_EQUAL(s.until_ms, T0 + rows[i].until);
		CU_ASSERT_EQUAL(b.failures, rows[i].st == POL_BACKOFF);
		CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	}
	/* duplicated header through pol_on_response: the largest wins */
	{
		struct cfg_sink c;
		struct pol_sink s;
		struct pol_batch b;
		struct pol_result r;
		const char *v[] = { "3", "bogus", "8", "5" };
		struct pol_outcome o = { .status = 503, .retry_after = v,
					 .n_retry_after = 4 };

		t_cfg(&c);
		pol_sink_init(&s, "api");
		pol_batch_init(&b, 1, 5);
		CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, T0), 0);
		pol_on_response(&s, &c, &b, &o, T0, 0, &r);
		CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
		CU_ASSERT_EQUAL(s.until_ms, T0 + 8000);
	}
}

/* ---- X-Sentry-Rate-Limits ------------------------------------------------ */

static void test_sentry_parse(void)
{
	static const struct {
		const char *v;
		int n;
		const char *cat[4];
		int64_t wait[4];
	} rows[] = {
		{ "60::organization", 1, { "" }, { 60000 } },
		{ "60:", 1, { "" }, { 60000 } },
		{ "60:;:org", 1, { "" }, { 60000 } },
		{ "60:error;transaction:key", 2, { "error", "transaction" },
		  { 60000, 60000 } },
		{ "60:error:key:quota_exceeded:ns", 1, { "error" },
		  { 60000 } },
		{ "2.5:error:key", 1, { "error" }, { 2500 } },
		{ "1.2345:error", 1, { "error" }, { 1234 } },
		{ "0.001:error", 1, { "error" }, { 250 } },	/* floor */
		{ "0:error", 1, { "error" }, { 250 } },
		{ "0.3:error", 1, { "error" }, { 300 } },
		{ "1000:error", 1, { "error" }, { 300000 } },	/* cap */
		{ "99999999999999999999999:error", 1, { "error" },
		  { 300000 } },
		{ " 60 : error ; transaction : key ", 2,
		  { "error", "transaction" }, { 60000, 60000 } },
		{ "60:error;;transaction", 2, { "error", "transaction" },
		  { 60000, 60000 } },
		{ "60:error, 30:transaction:org, junk, 10::org", 3,
		  { "error", "transaction", "" }, { 60000, 30000, 10000 } },
		{ "abc:error", 0, { 0 }, { 0 } },
		{ "60", 0, { 0 }, { 0 } },
		{ "-5:error", 0, { 0 }, { 0 } },
		{ "1.:error", 0, { 0 }, { 0 } },
		{ ".5:error", 0, { 0 }, { 0 } },
		{ "1e3:error", 0, { 0 }, { 0 } },
		{ ":error", 0, { 0 }, { 0 } },
		{ "60:err or", 0, { 0 }, { 0 } },
		{ "60:error;abcdefghijklmnopqrstuvwxyz", 0, { 0 }, { 0 } },
		{ "60:abcdefghijklmnopqrstuvw", 1,	/* 23 chars fit */
		  { "abcdefghijklmnopqrstuvw" }, { 60000 } },
		{ "", 0, { 0 }, { 0 } },
		{ ",,,", 0, { 0 }, { 0 } },
		{ "garbage, 5:log_item", 1, { "log_item" }, { 5000 } },
	};
	size_t i;
	int j;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct pol_limit l[8];
		int n = pol_parse_sentry_limits(rows[i].v, 300000, l, 8);

		if (n != rows[i].n)
			fprintf(stderr, "sentry '%s': %d entries\n",
				rows[i].v, n);
		CU_ASSERT_EQUAL_FATAL(n, rows[i].n);
		for (j = 0; j < n; j++) {
			CU_ASSERT_STRING_EQUAL(l[j].cat, rows[i].cat[j]);
			CU_ASSERT_EQUAL(l[j].wait_ms, rows[i].wait[j]);
		}
	}
	/* the output array bounds the count */
	{
		struct pol_limit l[2];

		CU_ASSERT_EQUAL(pol_parse_sentry_limits("1:a;b;c, 2:d", 300000,
							l, 2), 2);
		CU_ASSERT_STRING_EQUAL(l[1].cat, "b");
		CU_ASSERT_EQUAL(pol_parse_sentry_limits(NULL, 300000, l, 2),
				0);
	}
}

static void test_sentry_responses(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b;
	struct pol_result r;

	t_cfg(&c);
	c.type = SINK_SENTRY;
	c.on_rate_limit = RL_DROP_CATEGORY;

	/* a 200 limiting one category: delivered, the sink stays ok */
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 200, NULL, "60:transaction:key", &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DELIVERED);
	CU_ASSERT_EQUAL(s.state, POL_OK);
	CU_ASSERT_EQUAL(s.ncats, 1);
	CU_ASSERT_TRUE(pol_cat_limited(&s, "transaction", T0));
	CU_ASSERT_TRUE(pol_cat_limited(&s, "transaction", T0 + 59999));
	CU_ASSERT_FALSE(pol_cat_limited(&s, "transaction", T0 + 60000));
	CU_ASSERT_FALSE(pol_cat_limited(&s, "error", T0));
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, T0), POL_GATE_SEND);

	/* a 200 with a global limit: delivered, the whole sink waits */
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 200, NULL, "60::organization", &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DELIVERED);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 60000);
	CU_ASSERT_TRUE(pol_cat_limited(&s, "error", T0 + 59999));
	CU_ASSERT_FALSE(pol_cat_limited(&s, "error", T0 + 60000));
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, T0 + 59999), POL_GATE_WAIT);

	/* the Sentry header wins over Retry-After */
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 429, "5", "30::key", &r);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 30000);
	/* ... unless it is garbage: then Retry-After counts */
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 429, "5", "soon:all", &r);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 5000);

	/* drop-category: a refused batch is dropped as rate_limited */
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 429, NULL, "60:error", &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
	CU_ASSERT_EQUAL(r.reason, POL_R_RATE_LIMITED);
	CU_ASSERT_TRUE(r.rate_limited);
	CU_ASSERT_FALSE(r.counted);
	CU_ASSERT_EQUAL(s.state, POL_OK);	/* other categories flow */
	CU_ASSERT_TRUE(pol_cat_limited(&s, "error", T0 + 1));
	CU_ASSERT_FALSE(pol_cat_limited(&s, "transaction", T0 + 1));
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 429, NULL, "60::org", &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
	CU_ASSERT_EQUAL(r.reason, POL_R_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 60000);

	/* hold: a refused batch whose categories are not known (the
	 * generic http sink) with only category limits holds the sink
	 * (until the longest), uncounted; test_sentry_category_only has
	 * the requests that say what they carried */
	c.on_rate_limit = RL_HOLD;
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 429, NULL, "60:error, 90:span", &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	CU_ASSERT_FALSE(r.counted);
	CU_ASSERT_EQUAL(b.failures, 0);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 90000);
	CU_ASSERT_EQUAL(s.ncats, 2);

	/* a rejected batch still records the limit */
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 400, NULL, "10::org", &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
	CU_ASSERT_EQUAL(r.reason, POL_R_REJECTED);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 10000);
}

/* A refused request whose categories the answer's category limits cover
 * (PRODUCT.md section 7, issue 15): only those categories wait, the sink
 * stays ok so the others keep flowing - in hold mode too. Sentry's rules
 * (develop.sentry.dev/sdk/rate-limiting): an entry with no categories
 * limits everything; the scope (organization, project, key) and what
 * follows it "can be ignored by SDKs" - it never widens a limit. */
static void test_sentry_category_only(void)
{
	static const char *const err[] = { "error" };
	static const char *const tx[] = { "transaction" };
	static const char *const both[] = { "error", "transaction" };
	static const struct {
		const char *limits;
		const char *const *cats;
		int ncats;
		enum pol_state state;     /* the sink after the answer */
		int64_t until;            /* its window, when limited */
	} rows[] = {
		/* explained by the categories: the sink stays ok */
		{ "60:error", err, 1, POL_OK, 0 },
		{ "60:error:organization", err, 1, POL_OK, 0 },
		{ "60:error:project:quota", err, 1, POL_OK, 0 },
		{ "60:error;transaction:key", both, 2, POL_OK, 0 },
		{ "60:error, 30:transaction", both, 2, POL_OK, 0 },
		/* no categories: everything, whatever the scope */
		{ "60::organization", err, 1, POL_RATE_LIMITED, 60000 },
		{ "60::project", tx, 1, POL_RATE_LIMITED, 60000 },
		/* not explained (a category of the request is not limited,
		 * or the request's categories are unknown): ignoring the
		 * refusal would resend at once, so the sink waits */
		{ "60:error", tx, 1, POL_RATE_LIMITED, 60000 },
		{ "60:error", both, 2, POL_RATE_LIMITED, 60000 },
		{ "60:error", NULL, 0, POL_RATE_LIMITED, 60000 },
	};
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b;
	struct pol_result r;
	size_t i;

	t_cfg(&c);
	c.type = SINK_SENTRY;
	c.on_rate_limit = RL_HOLD;
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct t_out t;

		pol_sink_init(&s, "sentry");
		pol_batch_init(&b, 1, 1);
		CU_ASSERT_EQUAL_FATAL(pol_begin(&s, &c, &b, 0, T0), 0);
		t_oc(&t, 429, NULL, rows[i].limits);
		t.o.req_cats = rows[i].cats;
		t.o.n_req_cats = rows[i].ncats;
		pol_on_response(&s, &c, &b, &t.o, T0, 0, &r);
		if (s.state != rows[i].state)
			fprintf(stderr, "row %zu '%s': state %s\n", i,
				rows[i].limits, pol_state_name(s.state));
		CU_ASSERT_EQUAL(s.state, rows[i].state);
		/* held, not charged, not dropped */
		CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
		CU_ASSERT_TRUE(r.rate_limited);
		CU_ASSERT_FALSE(r.counted);
		CU_ASSERT_EQUAL(b.failures, 0);
		CU_ASSERT_TRUE(pol_cat_limited(&s, "error", T0 + 59999));
		CU_ASSERT_FALSE(pol_cat_limited(&s, "error", T0 + 60000));
		if (rows[i].state == POL_OK) {
			/* the others flow: the gate is open, the sink
			 * shows ok */
			CU_ASSERT_FALSE(pol_cat_limited(&s, "session", T0));
			CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, T0 + 1),
					POL_GATE_SEND);
			CU_ASSERT_EQUAL(pol_visible_state(&s, T0 + 1, true),
					POL_OK);
		} else {
			CU_ASSERT_EQUAL(s.until_ms, T0 + rows[i].until);
			CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, T0 + 1),
					POL_GATE_WAIT);
		}
	}
	/* a probe answered so is an answer: the outage it probed is over */
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 1);
	t_send(&s, &c, &b, T0, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_BACKOFF);
	{
		struct t_out t;
		int64_t at = s.until_ms;

		CU_ASSERT_EQUAL_FATAL(pol_begin(&s, &c, &b, 0, at), 0);
		CU_ASSERT_TRUE(b.probe);
		t_oc(&t, 429, NULL, "60:error");
		t.o.req_cats = err;
		t.o.n_req_cats = 1;
		pol_on_response(&s, &c, &b, &t.o, at, 0, &r);
		CU_ASSERT_EQUAL(s.state, POL_OK);
		CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
		CU_ASSERT_TRUE(pol_cat_limited(&s, "error", at + 1));
	}
	/* drop-category (Sentry's default): the refused request is gone,
	 * the sink stays ok, explained or not */
	c.on_rate_limit = RL_DROP_CATEGORY;
	for (i = 0; i < 2; i++) {
		struct t_out t;

		pol_sink_init(&s, "sentry");
		pol_batch_init(&b, 1, 1);
		CU_ASSERT_EQUAL_FATAL(pol_begin(&s, &c, &b, 0, T0), 0);
		t_oc(&t, 429, NULL, "60:error:organization");
		t.o.req_cats = i ? tx : err;
		t.o.n_req_cats = 1;
		pol_on_response(&s, &c, &b, &t.o, T0, 0, &r);
		CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
		CU_ASSERT_EQUAL(r.reason, POL_R_RATE_LIMITED);
		CU_ASSERT_EQUAL(s.state, POL_OK);
	}
}

static void test_sentry_categories_table(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b;
	struct pol_result r;
	char name[32];
	int i;

	t_cfg(&c);
	c.on_rate_limit = RL_DROP_CATEGORY;
	pol_sink_init(&s, "sentry");
	pol_batch_init(&b, 1, 5);

	/* never shortened, lengthened on request */
	t_send(&s, &c, &b, T0, 200, NULL, "60:error", &r);
	t_send(&s, &c, &b, T0 + 1000, 200, NULL, "10:error", &r);
	CU_ASSERT_EQUAL(s.ncats, 1);
	CU_ASSERT_EQUAL(s.cats[0].until_ms, T0 + 60000);
	t_send(&s, &c, &b, T0 + 1000, 200, NULL, "120:error", &r);
	CU_ASSERT_EQUAL(s.cats[0].until_ms, T0 + 121000);

	/* eight categories fit; a ninth would be ignored, so it limits the
	 * whole sink instead */
	pol_sink_init(&s, "sentry");
	t_send(&s, &c, &b, T0, 200, NULL, "60:a;b;c;d;e;f;g;h", &r);
	CU_ASSERT_EQUAL(s.ncats, 8);
	CU_ASSERT_EQUAL(s.state, POL_OK);
	t_send(&s, &c, &b, T0, 200, NULL, "30:i", &r);
	CU_ASSERT_EQUAL(s.ncats, 8);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 30000);
	CU_ASSERT_TRUE(pol_cat_limited(&s, "i", T0 + 29999));

	/* expired entries make room */
	pol_sink_init(&s, "sentry");
	for (i = 0; i < 8; i++) {
		snprintf(name, sizeof(name), "%d:c%d", i + 1, i);
		t_send(&s, &c, &b, T0, 200, NULL, name, &r);
	}
	CU_ASSERT_EQUAL(s.ncats, 8);
	t_send(&s, &c, &b, T0 + 3000, 200, NULL, "5:new", &r);
	CU_ASSERT_EQUAL(s.state, POL_OK);
	CU_ASSERT_EQUAL(s.ncats, 6);	/* c0..c2 expired, new added */
	CU_ASSERT_TRUE(pol_cat_limited(&s, "new", T0 + 7999));
	CU_ASSERT_FALSE(pol_cat_limited(&s, "new", T0 + 8000));
	CU_ASSERT_FALSE(pol_cat_limited(&s, "c2", T0 + 3000));
	CU_ASSERT_TRUE(pol_cat_limited(&s, "c3", T0 + 3999));

	/* two headers: both parsed, the largest wins */
	{
		const char *v[] = { "10:error", "40:error;log" };
		struct pol_outcome o = { .status = 200, .sentry_limits = v,
					 .n_sentry_limits = 2 };

		pol_sink_init(&s, "sentry");
		CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, T0), 0);
		pol_on_response(&s, &c, &b, &o, T0, 0, &r);
		CU_ASSERT_EQUAL(s.ncats, 2);
		CU_ASSERT_TRUE(pol_cat_limited(&s, "error", T0 + 39999));
		CU_ASSERT_TRUE(pol_cat_limited(&s, "log", T0 + 39999));
		CU_ASSERT_FALSE(pol_cat_limited(&s, "error", T0 + 40000));
	}
}

/* Deterministic junk through both parsers: never a crash (ASan), and
 * whatever they accept is within bounds. */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint32_t t_rand(void)
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 7;
	g_rng ^= g_rng << 17;
	return (uint32_t)(g_rng >> 11);
}

static void test_parser_fuzz(void)
{
	static const char alpha[] = "0123456789:;,. -\t+eGMTSunNovTue"
				    "abcdefghijklmnopqrstuvwxyz_\xff\x01";
	char buf[80];
	int i, j, n, len, ok_ra = 0, ok_sl = 0;

	for (i = 0; i < 50000; i++) {
		struct pol_limit l[8];
		int64_t w = -1;

		len = (int)(t_rand() % (sizeof(buf) - 1));
		for (j = 0; j < len; j++)
			buf[j] = alpha[t_rand() % (sizeof(alpha) - 1)];
		buf[len] = '\0';
		if (!pol_parse_retry_after(buf, T0, 300000, &w)) {
			ok_ra++;
			CU_ASSERT(w >= POL_RA_FLOOR_MS && w <= 300000);
		}
		n = pol_parse_sentry_limits(buf, 300000, l, 8);
		CU_ASSERT(n >= 0 && n <= 8);
		ok_sl += n > 0;
		for (j = 0; j < n; j++) {
			CU_ASSERT(l[j].wait_ms >= POL_RA_FLOOR_MS &&
				  l[j].wait_ms <= 300000);
			CU_ASSERT(strlen(l[j].cat) < POL_CAT_MAX);
			CU_ASSERT(!strpbrk(l[j].cat, ":;, \t"));
		}
	}
	/* the alphabet makes valid values likely: both paths were taken */
	CU_ASSERT(ok_ra > 100);
	CU_ASSERT(ok_sl > 100);
}

/* ---- budgets --------------------------------------------------------------- */

/* a sink never rate limited: its rate-limit clock reads 0 */
static struct pol_sink g_ok;

/* Fails b once at now (the sink is reset each time, so the gate never
 * interferes): the verdict. */
static struct pol_result fail_at(const struct cfg_sink *c,
				 struct pol_batch *b, int64_t now, int status,
				 const char *ra)
{
	struct pol_sink s;
	struct pol_result r;

	pol_sink_init(&s, "api");
	/* only its budgets are under test: a batch failing on fresh sinks
	 * would otherwise be benched as a poison batch after two */
	b->strikes = 0;
	b->isolated = false;
	t_send(&s, c, b, now, status, ra, NULL, &r);
	return r;
}

static void test_max_retries(void)
{
	static const uint32_t budgets[] = { 0, 1, 2, 5 };
	size_t i;
	uint32_t k;

	for (i = 0; i < sizeof(budgets) / sizeof(budgets[0]); i++) {
		struct cfg_sink c;
		struct pol_batch b;
		struct pol_result r;

		t_cfg(&c);
		c.max_retries = budgets[i];
		pol_batch_init(&b, 1, 5);
		/* N retries after the first attempt: N + 1 requests */
		for (k = 0; k < budgets[i]; k++) {
			r = fail_at(&c, &b, T0 + k, 503, NULL);
			CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
		}
		r = fail_at(&c, &b, T0 + k, 503, NULL);
		CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
		CU_ASSERT_EQUAL(r.reason, POL_R_RETRIES_EXHAUSTED);
		CU_ASSERT_EQUAL(b.failures, budgets[i] + 1);
		CU_ASSERT_EQUAL(b.attempts, budgets[i] + 1);
	}
}

static void test_rate_limits_not_counted(void)
{
	struct cfg_sink c;
	struct pol_batch b;
	struct pol_result r;
	int i;

	t_cfg(&c);
	c.max_retries = 2;
	pol_batch_init(&b, 1, 5);
	r = fail_at(&c, &b, T0, 503, NULL);
	CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	/* any number of rate-limited answers in between */
	for (i = 0; i < 10; i++) {
		r = fail_at(&c, &b, T0 + 1 + i, 429, "1");
		CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
		CU_ASSERT_FALSE(r.counted);
	}
	CU_ASSERT_EQUAL(b.failures, 1);
	CU_ASSERT_EQUAL(b.attempts, 11);
	CU_ASSERT_EQUAL(pol_retry_count(&b), 11);
	r = fail_at(&c, &b, T0 + 20, 503, NULL);
	CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	r = fail_at(&c, &b, T0 + 21, 503, NULL);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
	CU_ASSERT_EQUAL(r.reason, POL_R_RETRIES_EXHAUSTED);

	/* max_retries = 0 drops a retryable failure at once, but a rate
	 * limit is still waited out */
	c.max_retries = 0;
	pol_batch_init(&b, 2, 5);
	r = fail_at(&c, &b, T0, 429, "3");
	CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	r = fail_at(&c, &b, T0 + 3000, 429, NULL);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
	CU_ASSERT_EQUAL(r.reason, POL_R_RETRIES_EXHAUSTED);
}

static void test_max_backoff_duration(void)
{
	static const struct {
		uint64_t max;
		int64_t second;		/* second failure, after T0 */
		enum pol_verdict v;
		enum pol_reason why;
	} rows[] = {
		{ 10000, 9999, POL_V_RETRY, 0 },
		{ 10000, 10000, POL_V_RETRY, 0 },	/* > is the rule */
		{ 10000, 10001, POL_V_DROP, POL_R_EXPIRED },
		{ 12 * HOUR, 12 * HOUR, POL_V_RETRY, 0 },
		{ 12 * HOUR, 12 * HOUR + 1, POL_V_DROP, POL_R_EXPIRED },
	};
	size_t i;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct cfg_sink c;
		struct pol_batch b;
		struct pol_result r;

		t_cfg(&c);
		c.max_backoff_duration_ms = rows[i].max;
		pol_batch_init(&b, 1, 5);
		r = fail_at(&c, &b, T0, 503, NULL);
		CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
		CU_ASSERT_EQUAL(b.first_failure_ms, T0);
		/* checked before a resend too, with the same boundary */
		CU_ASSERT_EQUAL(pol_batch_check(&g_ok, &c, &b, T0 + rows[i].second),
				rows[i].why);
		r = fail_at(&c, &b, T0 + rows[i].second, 503, NULL);
		CU_ASSERT_EQUAL(r.verdict, rows[i].v);
		CU_ASSERT_EQUAL(r.reason, rows[i].why);
		CU_ASSERT_EQUAL(b.first_failure_ms, T0);	/* kept */
	}
	/* 0 = no retry */
	{
		struct cfg_sink c;
		struct pol_batch b;
		struct pol_result r;

		t_cfg(&c);
		c.max_backoff_duration_ms = 0;
		pol_batch_init(&b, 1, 5);
		r = fail_at(&c, &b, T0, 503, NULL);
		CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
		CU_ASSERT_EQUAL(r.reason, POL_R_EXPIRED);
		/* both budgets gone at once: retries_exhausted first */
		c.max_retries = 0;
		pol_batch_init(&b, 1, 5);
		r = fail_at(&c, &b, T0, 503, NULL);
		CU_ASSERT_EQUAL(r.reason, POL_R_RETRIES_EXHAUSTED);
	}
	/* a fresh batch has nothing to expire */
	{
		struct cfg_sink c;
		struct pol_batch b;

		t_cfg(&c);
		pol_batch_init(&b, 1, 5);
		CU_ASSERT_EQUAL(pol_batch_check(&g_ok, &c, &b, T0 + 100 * HOUR),
				POL_R_NONE);
	}
}

/* Rate limits count against no budget (PRODUCT.md section 7), including
 * max_backoff_duration: the time the sink spent rate limited after a
 * batch's first failure is left out of it. Issue 14: a batch dropped as
 * expired at 3 s of which 0.5 s was backoff. */
static void test_rate_limit_not_backoff_time(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch a, b;
	struct pol_result r;
	int64_t now = T0;

	t_cfg(&c);
	c.backoff_jitter_pct = 0;
	c.max_backoff_duration_ms = 2000;
	pol_sink_init(&s, "api");
	pol_batch_init(&a, 1, 5);
	/* the case: 503, then the probe gets 429 Retry-After: 3 */
	t_send(&s, &c, &a, now, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	now = s.until_ms;				/* T0 + 0.5 s */
	t_send(&s, &c, &a, now, 429, "3", NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	CU_ASSERT_FALSE(r.counted);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 3500);
	/* 3.5 s after the first failure, 3 s of it rate limited: 0.5 s */
	now = s.until_ms;
	CU_ASSERT_EQUAL(pol_batch_check(&s, &c, &a, now), POL_R_NONE);
	t_send(&s, &c, &a, now, 503, NULL, NULL, &r);	/* the probe */
	CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	CU_ASSERT_EQUAL(s.state, POL_BACKOFF);
	/* backoff time counts: 0.5 + 1.5 = 2.0 s still retries, 2.001 not */
	CU_ASSERT_EQUAL(pol_batch_check(&s, &c, &a, now + 1500), POL_R_NONE);
	CU_ASSERT_EQUAL(pol_batch_check(&s, &c, &a, now + 1501),
			POL_R_EXPIRED);

	/* another batch's rate limit holds the whole sink: not this batch's
	 * backoff time either */
	pol_sink_init(&s, "api");
	pol_batch_init(&a, 1, 5);
	pol_batch_init(&b, 2, 5);
	now = T0;
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &a, 0, now), 0);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 1, now), 0);
	t_resp(&s, &c, &a, now, 503, NULL, NULL, &r);	/* a: first failure */
	t_resp(&s, &c, &b, now + 100, 429, "60", NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, now + 60100);
	/* a waited 60.1 s, 60 s of it rate limited */
	CU_ASSERT_EQUAL(pol_batch_check(&s, &c, &a, now + 60100), POL_R_NONE);
	/* a window over with its probe still out counts as waiting */
	CU_ASSERT_EQUAL(pol_batch_check(&s, &c, &a, now + 62000),
			POL_R_NONE);
	CU_ASSERT_EQUAL(pol_batch_check(&s, &c, &a, now + 62001),
			POL_R_EXPIRED);
	/* the probe succeeds: the rate-limited period is closed into the
	 * clock, and a's budget still leaves it out */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, now + 60100), 0);
	t_resp(&s, &c, &b, now + 60200, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_OK);
	CU_ASSERT_EQUAL(s.rl_acc_ms, 60000);
	CU_ASSERT_EQUAL(pol_batch_check(&s, &c, &a, now + 62000),
			POL_R_NONE);
	CU_ASSERT_EQUAL(pol_batch_check(&s, &c, &a, now + 62001),
			POL_R_EXPIRED);
	/* a failure before any limit: everything counts */
	pol_sink_init(&s, "api");
	pol_batch_init(&a, 1, 5);
	t_send(&s, &c, &a, T0, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(pol_batch_check(&s, &c, &a, T0 + 2000), POL_R_NONE);
	CU_ASSERT_EQUAL(pol_batch_check(&s, &c, &a, T0 + 2001),
			POL_R_EXPIRED);
}

static void test_max_rate_limit_duration(void)
{
	static const struct {
		uint64_t max;
		int64_t later;
		enum pol_verdict v;
	} rows[] = {
		{ 60000, 59999, POL_V_RETRY },
		{ 60000, 60000, POL_V_RETRY },
		{ 60000, 60001, POL_V_DROP },
		{ 30 * MIN, 30 * MIN, POL_V_RETRY },
		{ 30 * MIN, 30 * MIN + 1, POL_V_DROP },
	};
	size_t i;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct cfg_sink c;
		struct pol_batch b;
		struct pol_result r;

		t_cfg(&c);
		c.max_rate_limit_duration_ms = rows[i].max;
		pol_batch_init(&b, 1, 5);
		r = fail_at(&c, &b, T0, 429, "300");
		CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
		CU_ASSERT_EQUAL(b.rl_start_ms, T0);
		r = fail_at(&c, &b, T0 + 1000, 503, "300");
		CU_ASSERT_EQUAL(b.rl_start_ms, T0);	/* same episode */
		CU_ASSERT_EQUAL(pol_batch_check(&g_ok, &c, &b, T0 + rows[i].later),
				rows[i].v == POL_V_DROP ? POL_R_RATE_LIMITED
							: POL_R_NONE);
		r = fail_at(&c, &b, T0 + rows[i].later, 429, "300");
		CU_ASSERT_EQUAL(r.verdict, rows[i].v);
		CU_ASSERT_EQUAL(r.reason, rows[i].v == POL_V_DROP
				? POL_R_RATE_LIMITED : POL_R_NONE);
		CU_ASSERT_EQUAL(b.failures, 0);
	}
	/* 0 = a rate limit drops at once; a counted failure ends an
	 * episode; drop-category does not hold, so never checks it */
	{
		struct cfg_sink c;
		struct pol_batch b;
		struct pol_result r;

		t_cfg(&c);
		c.max_rate_limit_duration_ms = 0;
		pol_batch_init(&b, 1, 5);
		r = fail_at(&c, &b, T0, 429, "1");
		CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
		CU_ASSERT_EQUAL(r.reason, POL_R_RATE_LIMITED);

		c.max_rate_limit_duration_ms = 60000;
		pol_batch_init(&b, 1, 5);
		fail_at(&c, &b, T0, 429, "1");
		CU_ASSERT_EQUAL(b.rl_start_ms, T0);
		fail_at(&c, &b, T0 + 50000, 503, NULL);
		CU_ASSERT_EQUAL(b.rl_start_ms, 0);
		r = fail_at(&c, &b, T0 + 70000, 429, "1");
		CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);	/* new episode */
		CU_ASSERT_EQUAL(b.rl_start_ms, T0 + 70000);

		c.on_rate_limit = RL_DROP_CATEGORY;
		CU_ASSERT_EQUAL(pol_batch_check(&g_ok, &c, &b, T0 + 10 * HOUR),
				POL_R_NONE);
	}
}

/* ---- sink windows ---------------------------------------------------------- */

static void test_episode_never_shortens(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch a, b, d;
	struct pol_result r;

	t_cfg(&c);
	pol_sink_init(&s, "api");
	pol_batch_init(&a, 1, 5);
	pol_batch_init(&b, 2, 5);
	pol_batch_init(&d, 3, 5);
	/* three requests in flight at once */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &a, 0, T0), 0);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 1, T0), 0);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &d, 2, T0), 0);
	t_resp(&s, &c, &a, T0 + 100, 429, "60", NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 60100);
	CU_ASSERT_EQUAL(s.rl_start_ms, T0 + 100);
	CU_ASSERT_EQUAL(r.log, POL_LOG_OUTAGE);
	/* a shorter one does not shorten it */
	t_resp(&s, &c, &b, T0 + 200, 429, "5", NULL, &r);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 60100);
	CU_ASSERT_EQUAL(r.log, POL_LOG_NONE);
	/* a stale counted failure neither shortens nor raises the level */
	t_resp(&s, &c, &d, T0 + 300, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 60100);
	CU_ASSERT_EQUAL(s.level, 0);
	CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	CU_ASSERT_TRUE(r.counted);	/* ... but it counts for the batch */
	/* a longer one extends, the episode start stays */
	t_resp(&s, &c, &a, T0 + 400, 503, "120", NULL, &r);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 120400);
	CU_ASSERT_EQUAL(s.rl_start_ms, T0 + 100);
	/* a rate limit over a longer backoff keeps the backoff's end */
	pol_sink_init(&s, "api");
	c.backoff_base_ms = 60000;
	c.backoff_jitter_pct = 0;
	pol_batch_init(&a, 1, 5);
	pol_batch_init(&b, 2, 5);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &a, 0, T0), 0);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 1, T0), 0);
	t_resp(&s, &c, &a, T0, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 60000);
	t_resp(&s, &c, &b, T0, 429, "2", NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 60000);
}

static void test_backoff_delays(void)
{
	static const int64_t seq[] = { 500, 1000, 2000, 4000, 8000, 16000,
				       32000, 60000, 60000, 60000 };
	struct cfg_sink c;
	uint32_t l;

	t_cfg(&c);
	for (l = 0; l < sizeof(seq) / sizeof(seq[0]); l++) {
		int64_t jmax = seq[l] / 10;
		/* at the cap the jitter goes below it */
		int64_t sign = seq[l] == 60000 ? -1 : 1;

		CU_ASSERT_EQUAL(pol_backoff_delay(&c, l, 0), seq[l]);
		CU_ASSERT_EQUAL(pol_backoff_delay(&c, l, 1u << 31),
				seq[l] + sign * (jmax / 2));
		/* the jitter stays below 10 % of the delay */
		CU_ASSERT_EQUAL(pol_backoff_delay(&c, l, UINT32_MAX),
				seq[l] + sign * (jmax - 1));
	}
	CU_ASSERT_EQUAL(pol_backoff_delay(&c, 63, 0), 60000);
	CU_ASSERT_EQUAL(pol_backoff_delay(&c, 64, 0), 60000);
	CU_ASSERT_EQUAL(pol_backoff_delay(&c, UINT32_MAX, 0), 60000);
	c.backoff_jitter_pct = 0;
	CU_ASSERT_EQUAL(pol_backoff_delay(&c, 3, UINT32_MAX), 4000);
	c.backoff_jitter_pct = 50;
	CU_ASSERT_EQUAL(pol_backoff_delay(&c, 0, UINT32_MAX), 749);
	c.backoff_base_ms = UINT64_MAX / 2;
	c.backoff_max_ms = 7000;
	CU_ASSERT_EQUAL(pol_backoff_delay(&c, 5, 0), 7000);
}

/* The sink through an outage: the window sequence with jitter bounds,
 * exactly one probe per window, the level, the log hints. */
static void test_backoff_sequence_and_probe(void)
{
	static const int64_t seq[] = { 500, 1000, 2000, 4000, 8000, 16000,
				       32000, 60000, 60000 };
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b, other;
	struct pol_result r;
	struct t_out t;
	int64_t now = T0;
	size_t i;

	t_cfg(&c);
	pol_sink_init(&s, "api");
	pol_batch_init(&b, 1, 5);
	pol_batch_init(&other, 2, 5);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, now), 0);
	for (i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
		/* rnd alternates 0 and max: both ends of the jitter */
		uint32_t rnd = i % 2 ? UINT32_MAX : 0;
		int64_t j = i % 2 ? seq[i] / 10 - 1 : 0;
		/* below the cap the jitter is added, at the cap subtracted */
		int64_t want = seq[i] + (seq[i] + j > 60000 ? -j : j);

		pol_on_response(&s, &c, &b, t_oc(&t, 503, NULL, NULL), now,
				rnd, &r);
		CU_ASSERT_EQUAL(r.state, POL_BACKOFF);
		CU_ASSERT_EQUAL(s.until_ms - now, want);
		CU_ASSERT_EQUAL(s.level, i + 1);
		CU_ASSERT_EQUAL(r.log, i == 0 ? POL_LOG_OUTAGE : POL_LOG_NONE);
		/* closed for the whole window */
		CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, now), POL_GATE_WAIT);
		CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, s.until_ms - 1),
				POL_GATE_WAIT);
		CU_ASSERT_EQUAL(pol_begin(&s, &c, &other, 0, s.until_ms - 1),
				-EAGAIN);
		CU_ASSERT_EQUAL(pol_next_open(&s, &c, 0, now), s.until_ms);
		/* then one probe, and one only */
		now = s.until_ms;
		CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, now), POL_GATE_PROBE);
		CU_ASSERT_EQUAL(pol_next_open(&s, &c, 0, now), now);
		CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, now), 0);
		CU_ASSERT_TRUE(b.probe);
		CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, now), POL_GATE_WAIT);
		CU_ASSERT_EQUAL(pol_begin(&s, &c, &other, 1, now + 5000),
				-EAGAIN);
		CU_ASSERT_EQUAL(pol_next_open(&s, &c, 1, now), POL_NEVER);
	}
	/* the probe succeeds: ok at once; the outage is over (logged once,
	 * with its length, level back to 0) after POL_FLAP_MS of health */
	pol_on_response(&s, &c, &b, t_oc(&t, 200, NULL, NULL), now + 10, 0,
			&r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DELIVERED);
	CU_ASSERT_EQUAL(r.state, POL_OK);
	CU_ASSERT_EQUAL(s.until_ms, 0);
	CU_ASSERT_EQUAL(r.log, POL_LOG_NONE);
	CU_ASSERT_EQUAL(pol_tick(&s, now + 10 + POL_FLAP_MS - 1, false, &r),
			now + 10 + POL_FLAP_MS);
	CU_ASSERT_EQUAL(r.log, POL_LOG_NONE);
	CU_ASSERT_EQUAL(pol_tick(&s, now + 10 + POL_FLAP_MS, false, &r),
			POL_NEVER);
	CU_ASSERT_EQUAL(r.log, POL_LOG_RECOVERED);
	CU_ASSERT_EQUAL(r.outage_ms, now + 10 - T0);
	CU_ASSERT_EQUAL(r.flaps, 0);
	CU_ASSERT_EQUAL(s.level, 0);
	/* once only */
	CU_ASSERT_EQUAL(pol_tick(&s, now + 20 + POL_FLAP_MS, true, &r),
			POL_NEVER);
	CU_ASSERT_EQUAL(r.log, POL_LOG_NONE);
	/* the next outage starts over at the base delay (another batch: b
	 * failed every probe, so it would be benched) */
	now += 20 + POL_FLAP_MS;
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &other, 0, now), 0);
	pol_on_response(&s, &c, &other, t_oc(&t, 502, NULL, NULL), now, 0,
			&r);
	CU_ASSERT_EQUAL(s.until_ms, now + 500);
	CU_ASSERT_EQUAL(r.log, POL_LOG_OUTAGE);
}

/* Issue 14, defect 3: 503/200 alternating gave 48 outage and 47 recovery
 * lines in 30 s and reset the backoff level each time. A failure within
 * POL_FLAP_MS of a recovery continues the outage: one outage line, the
 * windows keep growing, one recovery line once it holds. */
static void test_flapping(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b;
	struct pol_result r;
	int64_t now = T0, last_ok = 0, win, prev_win = 0;
	int i, outages = 0, recoveries = 0;

	t_cfg(&c);
	c.backoff_jitter_pct = 0;
	c.backoff_max_ms = 4000;
	pol_sink_init(&s, "api");
	for (i = 0; i < 12; i++) {
		/* a request fails (the first from ok, then each one right
		 * after a recovery: a flap) ... */
		pol_batch_init(&b, (uint64_t)i, 5);
		t_send(&s, &c, &b, now, 503, NULL, NULL, &r);
		outages += r.log == POL_LOG_OUTAGE;
		recoveries += r.log == POL_LOG_RECOVERED;
		CU_ASSERT_EQUAL(s.state, POL_BACKOFF);
		CU_ASSERT_EQUAL(s.level, (uint32_t)i + 1);
		win = s.until_ms - now;
		/* 0.5, 1, 2, 4, 4 ...: the level is never reset */
		CU_ASSERT(win >= prev_win);
		prev_win = win;
		/* ... and the probe after the window succeeds */
		now = s.until_ms;
		t_send(&s, &c, &b, now, 200, NULL, NULL, &r);
		CU_ASSERT_EQUAL(s.state, POL_OK);
		outages += r.log == POL_LOG_OUTAGE;
		recoveries += r.log == POL_LOG_RECOVERED;
		CU_ASSERT_EQUAL(pol_tick(&s, now + 100, false, &r),
				now + POL_FLAP_MS);
		recoveries += r.log == POL_LOG_RECOVERED;
		last_ok = now;
		now += 100;	/* the next request fails soon after */
	}
	CU_ASSERT_EQUAL(outages, 1);
	CU_ASSERT_EQUAL(recoveries, 0);
	CU_ASSERT_EQUAL(prev_win, 4000);
	CU_ASSERT_EQUAL(s.flaps, 11);
	CU_ASSERT_EQUAL(s.outage_start_ms, T0);
	/* healthy for POL_FLAP_MS after the last recovery: over, once */
	CU_ASSERT_EQUAL(pol_tick(&s, last_ok + POL_FLAP_MS - 1, false, &r),
			last_ok + POL_FLAP_MS);
	CU_ASSERT_EQUAL(r.log, POL_LOG_NONE);
	CU_ASSERT_EQUAL(pol_tick(&s, last_ok + POL_FLAP_MS, false, &r),
			POL_NEVER);
	CU_ASSERT_EQUAL(r.log, POL_LOG_RECOVERED);
	CU_ASSERT_EQUAL(r.outage_ms, last_ok - T0);
	CU_ASSERT_EQUAL(r.flaps, 11);
	CU_ASSERT_EQUAL(s.level, 0);
	CU_ASSERT_EQUAL(s.flaps, 0);
	/* a failure after that is a new outage, from the base delay */
	now = last_ok + POL_FLAP_MS + 1;
	t_fresh(&b);
	t_send(&s, &c, &b, now, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.log, POL_LOG_OUTAGE);
	CU_ASSERT_EQUAL(s.until_ms, now + 500);
	CU_ASSERT_EQUAL(s.outage_start_ms, now);
	/* the flap window is POL_FLAP_MS exactly: at it a failure still
	 * continues the outage, 1 ms later it is a new one (when nobody
	 * ticked: the old one ends unlogged) */
	now = s.until_ms;
	t_fresh(&b);
	t_send(&s, &c, &b, now, 200, NULL, NULL, &r);
	t_fresh(&b);
	t_send(&s, &c, &b, now + POL_FLAP_MS, 500, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.log, POL_LOG_NONE);
	CU_ASSERT_EQUAL(s.level, 2);
	now = s.until_ms;
	t_fresh(&b);
	t_send(&s, &c, &b, now, 200, NULL, NULL, &r);
	t_fresh(&b);
	t_send(&s, &c, &b, now + POL_FLAP_MS + 1, 500, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.log, POL_LOG_OUTAGE);
	CU_ASSERT_EQUAL(s.level, 1);
	/* a rate limit soon after a recovery continues the outage too */
	now = s.until_ms;
	t_fresh(&b);
	t_send(&s, &c, &b, now, 200, NULL, NULL, &r);
	t_fresh(&b);
	t_send(&s, &c, &b, now + 10, 429, "5", NULL, &r);
	CU_ASSERT_EQUAL(r.log, POL_LOG_NONE);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	/* the stop tells a recovery that has not held POL_FLAP_MS yet */
	now = s.until_ms;
	t_fresh(&b);
	t_send(&s, &c, &b, now, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(pol_tick(&s, now + 5, true, &r), POL_NEVER);
	CU_ASSERT_EQUAL(r.log, POL_LOG_RECOVERED);
	CU_ASSERT_EQUAL(r.flaps, 1);
}

/* Issue 14, defect 1: the probe was always the oldest batch, so one batch
 * the upstream refuses (a malformed event answered 500) held up the whole
 * sink for as long as its budgets allowed (12 h by default). The batch
 * whose failures set the sink's window twice in a row is a suspect: the
 * next probe is another batch; once that one brings the sink back, the
 * suspect is isolated - retried alone on its own schedule, its HTTP
 * failures charged to it alone and bisected - until delivered or dropped
 * by its own budgets. */
static void test_poison_batch(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch p, g, h1, h2, one;
	struct pol_result r;
	int64_t t = T0;
	int n;

	t_cfg(&c);
	c.backoff_jitter_pct = 0;
	c.backoff_max_ms = 4000;
	c.max_retries = 6;
	pol_sink_init(&s, "api");
	pol_batch_init(&p, 1, 5);
	pol_batch_init(&g, 2, 5);
	/* the poison batch opens the outage: strike 1 */
	t_send(&s, &c, &p, t, 500, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.log, POL_LOG_OUTAGE);
	CU_ASSERT_EQUAL(p.strikes, 1);
	CU_ASSERT_FALSE(pol_probe_suspect(&p));
	/* it is the probe once more (the oldest): strike 2, a suspect */
	t = s.until_ms;				/* T0 + 0.5 s */
	t_send(&s, &c, &p, t, 500, NULL, NULL, &r);
	CU_ASSERT_EQUAL(p.strikes, 2);
	CU_ASSERT_TRUE(pol_probe_suspect(&p));
	CU_ASSERT_FALSE(p.isolated);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 1500);
	/* the next probe is another batch (the caller's choice): ok again,
	 * two windows after the first failure */
	t = s.until_ms;
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &g, 0, t), 0);
	CU_ASSERT_TRUE(g.probe);
	t_resp(&s, &c, &g, t, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_OK);
	CU_ASSERT_EQUAL(t - T0, 1500);
	/* the suspect goes out while ok: isolated, on its own schedule
	 * (its last failure + delay(1) = T0 + 1.5 s) */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &p, 0, t), 0);
	CU_ASSERT_TRUE(p.isolated);
	CU_ASSERT_FALSE(p.probe);
	t_resp(&s, &c, &p, t, 500, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
	CU_ASSERT_TRUE(r.shielded);
	CU_ASSERT_TRUE(r.bisect);
	CU_ASSERT_TRUE(r.counted);
	CU_ASSERT_EQUAL(r.log, POL_LOG_NONE);
	/* the sink did not move: state, window, ramp, level */
	CU_ASSERT_EQUAL(s.state, POL_OK);
	CU_ASSERT_EQUAL(s.until_ms, 0);
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 1);
	CU_ASSERT_EQUAL(s.level, 2);
	CU_ASSERT_EQUAL(p.failures, 3);
	CU_ASSERT_EQUAL(pol_batch_ready_at(&p), t + 2000);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &p, 0, t + 1999), -EAGAIN);
	/* bisected: the halves go at once, isolated, with its budgets */
	pol_batch_split(&p, &h1, 10, 2);
	pol_batch_split(&p, &h2, 11, 3);
	CU_ASSERT_TRUE(h1.isolated && h2.isolated);
	CU_ASSERT_EQUAL(h2.failures, 3);
	CU_ASSERT_EQUAL(pol_batch_ready_at(&h1), 0);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &h1, 0, t), 0);
	t_resp(&s, &c, &h1, t, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DELIVERED);	/* good events go */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &h2, 0, t), 0);
	t_resp(&s, &c, &h2, t, 500, NULL, NULL, &r);
	CU_ASSERT_TRUE(r.bisect);
	CU_ASSERT_EQUAL(h2.failures, 4);
	/* ... down to the poison event alone: retried on its schedule, no
	 * bisect, until max_retries drops it (7 failures in its line) */
	pol_batch_split(&h2, &one, 12, 1);
	for (n = 0; n < 3; n++) {
		CU_ASSERT_EQUAL(pol_begin(&s, &c, &one, 0, t), 0);
		t_resp(&s, &c, &one, t, 500, NULL, NULL, &r);
		CU_ASSERT_FALSE(r.bisect);
		CU_ASSERT_TRUE(r.shielded);
		if (n < 2) {
			CU_ASSERT_EQUAL(r.verdict, POL_V_RETRY);
			CU_ASSERT_EQUAL(pol_begin(&s, &c, &one, 0,
						  pol_batch_ready_at(&one) - 1),
					-EAGAIN);
			t = pol_batch_ready_at(&one);
		}
	}
	CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
	CU_ASSERT_EQUAL(r.reason, POL_R_RETRIES_EXHAUSTED);
	CU_ASSERT_EQUAL(one.failures, 7);
	CU_ASSERT_EQUAL(s.state, POL_OK);
	CU_ASSERT_EQUAL(s.flaps, 0);

	/* an isolated batch still speaks for the upstream when there is no
	 * HTTP answer at all */
	pol_batch_init(&one, 20, 1);
	one.isolated = true;
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &one, 0, t), 0);
	t_resp(&s, &c, &one, t, 0, NULL, NULL, &r);
	CU_ASSERT_FALSE(r.shielded);
	CU_ASSERT_EQUAL(s.state, POL_BACKOFF);
	/* ... and when it is the probe (the caller had no other batch) */
	t = s.until_ms;
	one.next_ms = 0;
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &one, 0, t), 0);
	CU_ASSERT_TRUE(one.probe);
	n = (int)s.level;
	t_resp(&s, &c, &one, t, 500, NULL, NULL, &r);
	CU_ASSERT_FALSE(r.shielded);
	CU_ASSERT_EQUAL(s.level, (uint32_t)n + 1);
	/* a rate limit is the upstream's instruction, isolated or not */
	pol_sink_init(&s, "api");
	pol_batch_init(&one, 21, 3);
	one.isolated = true;
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &one, 0, T0), 0);
	t_resp(&s, &c, &one, T0, 429, "5", NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_FALSE(r.bisect);
	/* a batch that fails only as a stale request collects no strikes */
	pol_sink_init(&s, "api");
	pol_batch_init(&p, 30, 5);
	pol_batch_init(&g, 31, 5);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &p, 0, T0), 0);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &g, 1, T0), 0);
	t_resp(&s, &c, &g, T0, 503, NULL, NULL, &r);
	t_resp(&s, &c, &p, T0 + 1, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(g.strikes, 1);
	CU_ASSERT_EQUAL(p.strikes, 0);
}

static void test_probe_details(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch a, b, p;
	struct pol_result r;

	t_cfg(&c);
	c.backoff_jitter_pct = 0;
	pol_sink_init(&s, "api");
	pol_batch_init(&a, 1, 5);
	pol_batch_init(&b, 2, 5);
	pol_batch_init(&p, 3, 5);
	/* two in flight, both fail: one failure for the sink, not two */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &a, 0, T0), 0);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 1, T0), 0);
	t_resp(&s, &c, &a, T0, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.level, 1);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 500);
	/* the probe is allowed although b is still in flight (stale) */
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 1, T0 + 500), POL_GATE_PROBE);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &p, 1, T0 + 500), 0);
	CU_ASSERT_TRUE(p.probe);
	/* the stale failure neither raises the level nor eats the probe */
	t_resp(&s, &c, &b, T0 + 600, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.level, 1);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 500);
	CU_ASSERT_TRUE(s.probe_out);
	CU_ASSERT_EQUAL(r.log, POL_LOG_NONE);
	/* a stale success does not end the outage either */
	pol_batch_init(&b, 2, 5);
	b.epoch = 0;
	t_resp(&s, &c, &b, T0 + 650, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DELIVERED);
	CU_ASSERT_EQUAL(s.state, POL_BACKOFF);
	CU_ASSERT_TRUE(s.probe_out);
	/* the probe fails: next level */
	t_resp(&s, &c, &p, T0 + 700, 504, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.level, 2);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 700 + 1000);
	CU_ASSERT_FALSE(s.probe_out);
	/* an aborted probe frees the slot for another one */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &p, 0, T0 + 1700), 0);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &a, 0, T0 + 1700), -EAGAIN);
	pol_abort(&s, &p);
	CU_ASSERT_FALSE(p.probe);
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, T0 + 1700), POL_GATE_PROBE);
	CU_ASSERT_EQUAL(p.attempts, 2);	/* an abort is an attempt */
	/* a probe answered by a 4xx: the upstream is up */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &a, 0, T0 + 1700), 0);
	t_resp(&s, &c, &a, T0 + 1800, 400, NULL, NULL, &r);
	CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
	CU_ASSERT_EQUAL(s.state, POL_OK);
	CU_ASSERT_EQUAL(s.recovered_ms, T0 + 1800);
	pol_tick(&s, T0 + 1800 + POL_FLAP_MS, false, &r);
	CU_ASSERT_EQUAL(r.log, POL_LOG_RECOVERED);
	CU_ASSERT_EQUAL(s.level, 0);
	/* a rate limit ends with a probe too */
	t_send(&s, &c, &a, T0 + 2000, 429, "10", NULL, &r);
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, T0 + 11999), POL_GATE_WAIT);
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, T0 + 12000), POL_GATE_PROBE);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &p, 0, T0 + 12000), 0);
	/* the probe is rate limited again: no level change, new window */
	t_resp(&s, &c, &p, T0 + 12000, 429, "10", NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 22000);
	CU_ASSERT_EQUAL(s.level, 0);
	CU_ASSERT_EQUAL(s.rl_start_ms, T0 + 2000);
	/* a rate limit arriving while a probe is out retires that probe: a
	 * late answer to it is not the answer of the next window's probe */
	{
		struct pol_batch p1, p2, st;

		pol_sink_init(&s, "api");
		pol_batch_init(&p1, 11, 5);
		pol_batch_init(&p2, 12, 5);
		pol_batch_init(&st, 13, 5);
		CU_ASSERT_EQUAL(pol_begin(&s, &c, &st, 0, T0), 0);
		t_send(&s, &c, &a, T0, 503, NULL, NULL, &r);
		CU_ASSERT_EQUAL(pol_begin(&s, &c, &p1, 1, T0 + 500), 0);
		CU_ASSERT_TRUE(p1.probe);
		t_resp(&s, &c, &st, T0 + 600, 429, "5", NULL, &r);
		CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
		CU_ASSERT_EQUAL(s.until_ms, T0 + 5600);
		CU_ASSERT_EQUAL(pol_begin(&s, &c, &p2, 1, T0 + 5600), 0);
		CU_ASSERT_TRUE(p2.probe);
		/* p1's late failure: no new window, p2 still the probe */
		t_resp(&s, &c, &p1, T0 + 5700, 503, NULL, NULL, &r);
		CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
		CU_ASSERT_EQUAL(s.until_ms, T0 + 5600);
		CU_ASSERT_TRUE(s.probe_out);
		CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, T0 + 5700), POL_GATE_WAIT);
		t_resp(&s, &c, &p2, T0 + 5800, 200, NULL, NULL, &r);
		CU_ASSERT_EQUAL(s.state, POL_OK);
		pol_tick(&s, T0 + 5800 + POL_FLAP_MS, true, &r);
		CU_ASSERT_EQUAL(r.log, POL_LOG_RECOVERED);
		CU_ASSERT_EQUAL(r.outage_ms, 5800);
	}
	pol_sink_init(&s, "api");
	t_send(&s, &c, &a, T0 + 2000, 429, "10", NULL, &r);
	/* a probe after a rate limit that gets a 503: backoff level 0 */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &p, 0, T0 + 22000), 0);
	t_resp(&s, &c, &p, T0 + 22000, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_BACKOFF);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 22500);
	CU_ASSERT_EQUAL(s.level, 1);
}

static void test_concurrency_ramp(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b[8], stale;
	struct pol_result r;
	int64_t now;
	int i, k, round;

	t_cfg(&c);
	c.max_inflight = 4;
	c.backoff_jitter_pct = 0;
	pol_sink_init(&s, "api");
	/* full concurrency before any trouble */
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 4);
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 3, T0), POL_GATE_SEND);
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 4, T0), POL_GATE_WAIT);
	CU_ASSERT_EQUAL(pol_next_open(&s, &c, 4, T0), POL_NEVER);
	pol_batch_init(&stale, 99, 5);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &stale, 0, T0), 0);
	pol_batch_init(&b[0], 0, 5);
	t_fresh(&b[0]);
	t_send(&s, &c, &b[0], T0, 503, NULL, NULL, &r);
	now = s.until_ms;
	t_fresh(&b[0]);
	t_send(&s, &c, &b[0], now, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.recovered_ms, now);

	/* rounds: limit 1, 2, 3, then 4 = done */
	for (round = 1; round <= 3; round++) {
		CU_ASSERT_EQUAL(pol_limit(&s, &c), (unsigned)round);
		for (k = 0; k < round; k++) {
			pol_batch_init(&b[k], (uint64_t)k, 5);
			CU_ASSERT_EQUAL(pol_begin(&s, &c, &b[k], (unsigned)k,
						  now), 0);
			CU_ASSERT_FALSE(b[k].probe);
		}
		CU_ASSERT_EQUAL(pol_gate(&s, &c, (unsigned)round, now),
				POL_GATE_WAIT);
		for (k = 0; k < round; k++) {
			t_resp(&s, &c, &b[k], now, 200, NULL, NULL, &r);
			/* the limit only moves at the end of the round */
			CU_ASSERT_EQUAL(pol_limit(&s, &c),
					(unsigned)(k + 1 < round ? round
					: round + 1));
		}
	}
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 4);
	CU_ASSERT_EQUAL(s.limit, 0);	/* ramp over */
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 3, now), POL_GATE_SEND);
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 4, now), POL_GATE_WAIT);
	/* a stale failure (sent before the outage) halves: 4 -> 2 -> 1 */
	t_resp(&s, &c, &stale, now, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_OK);
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 2);
	stale.epoch = 0;
	t_resp(&s, &c, &stale, now, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 1);
	t_resp(&s, &c, &stale, now, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 1);	/* never below 1 */
	/* a failure mid-round resets the round */
	pol_batch_init(&b[0], 0, 5);
	t_fresh(&b[0]);
	t_send(&s, &c, &b[0], now, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 2);
	t_fresh(&b[0]);
	t_send(&s, &c, &b[0], now, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 2);
	t_resp(&s, &c, &stale, now, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 1);
	/* a live failure during the ramp: backoff, then the probe, then the
	 * ramp starts at 1 again */
	t_fresh(&b[0]);
	t_send(&s, &c, &b[0], now, 500, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_BACKOFF);
	now = s.until_ms;
	t_fresh(&b[0]);
	t_send(&s, &c, &b[0], now, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 1);

	/* max_inflight 1: nothing to ramp */
	c.max_inflight = 1;
	pol_sink_init(&s, "api");
	t_fresh(&b[0]);
	t_send(&s, &c, &b[0], T0, 503, NULL, NULL, &r);
	t_fresh(&b[0]);
	t_send(&s, &c, &b[0], s.until_ms, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.limit, 0);
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 1);
	/* max_inflight 0 is read as 1 */
	c.max_inflight = 0;
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 1);
	/* a config reload lowering max_inflight caps the ramp */
	c.max_inflight = 8;
	pol_sink_init(&s, "api");
	t_fresh(&b[0]);
	t_send(&s, &c, &b[0], T0, 503, NULL, NULL, &r);
	now = s.until_ms;
	t_fresh(&b[0]);
	t_send(&s, &c, &b[0], now, 200, NULL, NULL, &r);
	for (i = 0; i < 3; i++) {
		t_fresh(&b[0]);
		t_send(&s, &c, &b[0], now, 200, NULL, NULL, &r);
	}
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 3);
	c.max_inflight = 2;
	CU_ASSERT_EQUAL(pol_limit(&s, &c), 2);
}

static void test_retry_count_header(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b;
	struct pol_result r;
	uint32_t want[] = { 0, 1, 2, 3, 4, 5 };
	int64_t now = T0;
	int i;

	t_cfg(&c);
	c.token_file = "/run/token";
	pol_sink_init(&s, "api");
	pol_batch_init(&b, 1, 5);
	/* fail, rate limit, reauth, timeout, fail: every answer counts
	 * for the header, only the plain failures for the budget */
	for (i = 0; i < 5; i++) {
		struct t_out t;
		static const int st[] = { 503, 429, 401, 0, 500 };
		static const char *const ra[] = { NULL, "1", NULL, NULL,
						  NULL };

		CU_ASSERT_EQUAL(pol_retry_count(&b), want[i]);
		CU_ASSERT_EQUAL_FATAL(pol_begin(&s, &c, &b, 0, now), 0);
		t_oc(&t, st[i], ra[i], NULL);
		if (!st[i])
			t.o.net = POL_NET_TIMEOUT;
		pol_on_response(&s, &c, &b, &t.o, now, 0, &r);
		CU_ASSERT_NOT_EQUAL(r.verdict, POL_V_DROP);
		now = s.state == POL_OK ? now : s.until_ms;
	}
	CU_ASSERT_EQUAL(pol_retry_count(&b), 5);
	CU_ASSERT_EQUAL(b.failures, 3);
	/* a half of a split keeps counting */
	{
		struct pol_batch h;

		pol_batch_split(&b, &h, 7, 2);
		CU_ASSERT_EQUAL(pol_retry_count(&h), 5);
		CU_ASSERT_EQUAL(h.failures, 3);
		CU_ASSERT_EQUAL(h.first_failure_ms, b.first_failure_ms);
	}
}

static void test_summary_due(void)
{
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b;
	struct pol_result r;

	t_cfg(&c);
	pol_sink_init(&s, "api");
	CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + HOUR, true), 0);	/* ok */
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.outage_start_ms, T0);
	CU_ASSERT_EQUAL(pol_summary_due(&s, T0, true), 0);
	CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + 59999, true), 0);
	CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + 60000, true), 1);
	CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + 60001, true), 0);
	CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + 119999, true), 0);
	CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + 120000, true), 1);
	/* recovered: none */
	t_send(&s, &c, &b, s.until_ms > T0 + 130000 ? s.until_ms
		: T0 + 130000, 200, NULL, NULL, &r);
	CU_ASSERT_EQUAL(s.state, POL_OK);
	CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + 400000, true), 0);
	/* a new outage waits its own 60 s */
	t_send(&s, &c, &b, T0 + 500000, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + 559999, true), 0);
	CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + 560000, true), 1);
}

/* Issue 14, defect 4: with nothing left to send the sink read "backoff
 * until ... (1m05s ago)", obx_sink_state said BACKOFF with a past until,
 * and "retrying 0 batches ... next attempt in 0.0 s" came every minute. A
 * window that is over, with no probe out and nothing waiting, shows ok and
 * asks for no summary; the policy state stays (the next request is the
 * probe). */
static void test_visible_state(void)
{
	static const struct {
		enum pol_state st;
		int64_t until;		/* relative to T0 */
		bool probe_out, waiting;
		int64_t now;		/* relative to T0 */
		enum pol_state shown;
	} rows[] = {
		{ POL_OK, 0, 0, 0, 0, POL_OK },
		{ POL_OK, 0, 0, 1, 0, POL_OK },
		{ POL_BACKOFF, 500, 0, 0, 499, POL_BACKOFF },	/* in it */
		{ POL_BACKOFF, 500, 0, 1, 499, POL_BACKOFF },
		{ POL_BACKOFF, 500, 0, 0, 500, POL_OK },	/* over, idle */
		{ POL_BACKOFF, 500, 0, 0, HOUR, POL_OK },
		{ POL_BACKOFF, 500, 0, 1, 500, POL_BACKOFF },	/* data waits */
		{ POL_BACKOFF, 500, 1, 0, 600, POL_BACKOFF },	/* probing */
		{ POL_RATE_LIMITED, 300000, 0, 0, 299999, POL_RATE_LIMITED },
		{ POL_RATE_LIMITED, 300000, 0, 0, 300000, POL_OK },
		{ POL_RATE_LIMITED, 300000, 0, 1, 300000, POL_RATE_LIMITED },
	};
	size_t i;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct pol_sink s;

		pol_sink_init(&s, "api");
		s.state = rows[i].st;
		s.until_ms = rows[i].st == POL_OK ? 0 : T0 + rows[i].until;
		s.probe_out = rows[i].probe_out;
		s.outage_start_ms = T0 - HOUR;
		CU_ASSERT_EQUAL(pol_visible_state(&s, T0 + rows[i].now,
						  rows[i].waiting),
				rows[i].shown);
		/* a summary is due (an hour into the outage) exactly when
		 * the state shown is not ok */
		CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + rows[i].now,
						rows[i].waiting),
				rows[i].shown != POL_OK);
		/* the policy state itself is untouched */
		CU_ASSERT_EQUAL(s.state, rows[i].st);
	}
	/* through the state machine: a batch dropped at its first failure
	 * (max_retries = 0) leaves a window with nothing behind it */
	{
		struct cfg_sink c;
		struct pol_sink s;
		struct pol_batch b;
		struct pol_result r;

		t_cfg(&c);
		c.max_retries = 0;
		c.backoff_jitter_pct = 0;
		pol_sink_init(&s, "api");
		pol_batch_init(&b, 1, 5);
		t_send(&s, &c, &b, T0, 503, NULL, NULL, &r);
		CU_ASSERT_EQUAL(r.verdict, POL_V_DROP);
		CU_ASSERT_EQUAL(pol_visible_state(&s, T0 + 499, false),
				POL_BACKOFF);
		CU_ASSERT_EQUAL(pol_visible_state(&s, T0 + 500, false),
				POL_OK);
		CU_ASSERT_EQUAL(pol_summary_due(&s, T0 + 65000, false), 0);
		/* new data: it is the probe */
		CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, T0 + 65000),
				POL_GATE_PROBE);
		CU_ASSERT_EQUAL(pol_visible_state(&s, T0 + 65000, true),
				POL_BACKOFF);
	}
}

static void test_names(void)
{
	CU_ASSERT_STRING_EQUAL(pol_state_name(POL_OK), "ok");
	CU_ASSERT_STRING_EQUAL(pol_state_name(POL_BACKOFF), "backoff");
	CU_ASSERT_STRING_EQUAL(pol_state_name(POL_RATE_LIMITED),
			       "rate_limited");
	CU_ASSERT_STRING_EQUAL(pol_reason_name(POL_R_REJECTED), "rejected");
	CU_ASSERT_STRING_EQUAL(pol_reason_name(POL_R_RETRIES_EXHAUSTED),
			       "retries_exhausted");
	CU_ASSERT_STRING_EQUAL(pol_reason_name(POL_R_EXPIRED), "expired");
	CU_ASSERT_STRING_EQUAL(pol_reason_name(POL_R_RATE_LIMITED),
			       "rate_limited");
	CU_ASSERT_STRING_EQUAL(pol_reason_name(POL_R_TOO_LARGE), "too_large");
	/* the states are the shm page's values */
	CU_ASSERT_EQUAL(POL_OK, 0);
	CU_ASSERT_EQUAL(POL_BACKOFF, 1);
	CU_ASSERT_EQUAL(POL_RATE_LIMITED, 2);
}

/* ---- persistence ----------------------------------------------------------- */

static void t_path(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/%s", g_dir, name);
}

static void t_write(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "w");

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	CU_ASSERT_EQUAL(fwrite(data, 1, len, f), len);
	fclose(f);
}

/* files in g_dir whose name starts with prefix */
static int t_count_files(const char *prefix)
{
	DIR *d = opendir(g_dir);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += !strncmp(e->d_name, prefix, strlen(prefix));
	closedir(d);
	return n;
}

static const char *const odd_names[] = {
	"default",
	"with space",
	"quo\"te",
	"back\\slash",
	"\xc3\xbcn\xc3\xaf" "c\xc3\xb8" "d\xc3\xa9 \xe2\x98\x83",
	"tab\there\nnl",
	"{\"json\":[1,2]}",
	"01234567890123456789012345678901234567890123456",	/* 47 */
};
#define NODD ((int)(sizeof(odd_names) / sizeof(odd_names[0])))

static void test_persist_round_trip(void)
{
	struct pol_sink a[NODD], b[NODD];
	struct pol_saved_batch sb[3], *lb = NULL;
	size_t nb = 99, len;
	char path[256], *raw;
	int i, j;

	t_path(path, sizeof(path), "rt.state");
	for (i = 0; i < NODD; i++) {
		pol_sink_init(&a[i], odd_names[i]);
		CU_ASSERT_STRING_EQUAL(a[i].name, odd_names[i]);
		a[i].state = (enum pol_state)(i % 3);
		a[i].until_ms = a[i].state == POL_OK ? 0 : T0 + 1000 * i + 7;
		a[i].level = (uint32_t)i * 3;
		a[i].rl_start_ms = T0 - i;
		a[i].outage_start_ms = T0 - 2 * i;
		a[i].rl_acc_ms = 1000 * i;
		a[i].ncats = i % (POL_MAX_CATS + 1);
		for (j = 0; j < a[i].ncats; j++) {
			snprintf(a[i].cats[j].name, POL_CAT_MAX, "c\"%d;%d",
				 i, j);
			a[i].cats[j].until_ms = T0 + 100 * j;
		}
		pol_sink_init(&b[i], odd_names[i]);
	}
	strcpy(a[NODD - 1].cats[0].name, "abcdefghijklmnopqrstuvw");
	a[NODD - 1].ncats = a[NODD - 1].ncats ? a[NODD - 1].ncats : 1;
	for (i = 0; i < 3; i++) {
		memset(&sb[i], 0, sizeof(sb[i]));
		strcpy(sb[i].sink, odd_names[i + 2]);
		pol_batch_init(&sb[i].b, UINT64_MAX - (uint64_t)i, 100 + i);
		sb[i].b.attempts = 5 + i;
		sb[i].b.failures = 2 + i;
		sb[i].b.first_failure_ms = T0 - 5000;
		sb[i].b.rl_start_ms = i ? T0 - 10 : 0;
		sb[i].b.reauth_done = i == 1;
		sb[i].b.rl_base_ms = 333 * i;
	}
	CU_ASSERT_EQUAL_FATAL(pol_save(path, a, NODD, sb, 3, 0), 0);
	CU_ASSERT_EQUAL(t_count_files("rt.state.tmp"), 0);

	/* enum values are written as strings */
	raw = tu_read_file(path, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(raw);
	CU_ASSERT_PTR_NOT_NULL(memmem(raw, len, "\xacrate_limited", 13));
	CU_ASSERT_PTR_NOT_NULL(memmem(raw, len, "\xa7" "backoff", 8));
	CU_ASSERT_PTR_NOT_NULL(memmem(raw, len, "\xa2ok", 3));
	free(raw);

	CU_ASSERT_EQUAL_FATAL(pol_load(path, b, NODD, &lb, &nb, 0), 0);
	for (i = 0; i < NODD; i++) {
		CU_ASSERT_STRING_EQUAL(b[i].name, odd_names[i]);
		CU_ASSERT_EQUAL(b[i].state, a[i].state);
		CU_ASSERT_EQUAL(b[i].until_ms, a[i].until_ms);
		CU_ASSERT_EQUAL(b[i].level, a[i].level);
		CU_ASSERT_EQUAL(b[i].rl_start_ms, a[i].rl_start_ms);
		CU_ASSERT_EQUAL(b[i].outage_start_ms, a[i].outage_start_ms);
		CU_ASSERT_EQUAL(b[i].rl_acc_ms, a[i].rl_acc_ms);
		CU_ASSERT_EQUAL_FATAL(b[i].ncats, a[i].ncats);
		for (j = 0; j < a[i].ncats; j++) {
			CU_ASSERT_STRING_EQUAL(b[i].cats[j].name,
					       a[i].cats[j].name);
			CU_ASSERT_EQUAL(b[i].cats[j].until_ms,
					a[i].cats[j].until_ms);
		}
		CU_ASSERT_FALSE(b[i].probe_out);
	}
	CU_ASSERT_EQUAL_FATAL(nb, 3);
	CU_ASSERT_PTR_NOT_NULL_FATAL(lb);
	for (i = 0; i < 3; i++) {
		CU_ASSERT_STRING_EQUAL(lb[i].sink, sb[i].sink);
		CU_ASSERT_EQUAL(lb[i].b.id, sb[i].b.id);
		CU_ASSERT_EQUAL(lb[i].b.nevents, sb[i].b.nevents);
		CU_ASSERT_EQUAL(lb[i].b.attempts, sb[i].b.attempts);
		CU_ASSERT_EQUAL(lb[i].b.failures, sb[i].b.failures);
		CU_ASSERT_EQUAL(lb[i].b.first_failure_ms,
				sb[i].b.first_failure_ms);
		CU_ASSERT_EQUAL(lb[i].b.rl_start_ms, sb[i].b.rl_start_ms);
		CU_ASSERT_EQUAL(lb[i].b.reauth_done, sb[i].b.reauth_done);
		CU_ASSERT_EQUAL(lb[i].b.rl_base_ms, sb[i].b.rl_base_ms);
	}
	free(lb);

	/* overwrite in place, with nothing: still atomic, still loads */
	CU_ASSERT_EQUAL(pol_save(path, a, 1, NULL, 0, 0), 0);
	CU_ASSERT_EQUAL(pol_load(path, b, NODD, &lb, &nb, 0), 0);
	CU_ASSERT_EQUAL(nb, 0);
	CU_ASSERT_PTR_NULL(lb);
	/* batches may be ignored by passing NULL */
	CU_ASSERT_EQUAL(pol_save(path, a, NODD, sb, 3, 0), 0);
	CU_ASSERT_EQUAL(pol_load(path, b, NODD, NULL, NULL, 0), 0);
	CU_ASSERT_EQUAL(t_count_files("rt.state.tmp"), 0);
	unlink(path);
}

static void test_persist_by_name(void)
{
	struct pol_sink saved[2], now[3];
	char path[256];

	t_path(path, sizeof(path), "names.state");
	pol_sink_init(&saved[0], "api");
	pol_sink_init(&saved[1], "gone");
	saved[0].state = POL_BACKOFF;
	saved[0].until_ms = T0 + 5000;
	saved[0].level = 4;
	saved[1].state = POL_RATE_LIMITED;
	saved[1].until_ms = T0 + 9000;
	CU_ASSERT_EQUAL_FATAL(pol_save(path, saved, 2, NULL, 0, 0), 0);
	/* another order, a new sink, a prefix of a name */
	pol_sink_init(&now[0], "new");
	pol_sink_init(&now[1], "ap");
	pol_sink_init(&now[2], "api");
	CU_ASSERT_EQUAL(pol_load(path, now, 3, NULL, NULL, 0), 0);
	CU_ASSERT_EQUAL(now[2].state, POL_BACKOFF);
	CU_ASSERT_EQUAL(now[2].until_ms, T0 + 5000);
	CU_ASSERT_EQUAL(now[2].level, 4);
	CU_ASSERT_EQUAL(now[0].state, POL_OK);
	CU_ASSERT_EQUAL(now[1].state, POL_OK);
	CU_ASSERT_EQUAL(now[1].until_ms, 0);
	unlink(path);
}

static void test_persist_missing_and_corrupt(void)
{
	struct pol_sink s[1], ref;
	struct pol_saved_batch sb, *lb = (void *)1;
	char path[256], *good;
	size_t nb = 7, len, cut;
	int rc;

	pol_sink_init(&s[0], "api");
	s[0].state = POL_BACKOFF;
	s[0].until_ms = T0 + 1234;
	s[0].level = 2;
	ref = s[0];
	t_path(path, sizeof(path), "missing.state");
	CU_ASSERT_EQUAL(pol_load(path, s, 1, &lb, &nb, 0), -ENOENT);
	CU_ASSERT_PTR_NULL(lb);
	CU_ASSERT_EQUAL(nb, 0);
	CU_ASSERT_EQUAL(memcmp(&s[0], &ref, sizeof(ref)), 0);

	/* a valid file to damage */
	t_path(path, sizeof(path), "corrupt.state");
	memset(&sb, 0, sizeof(sb));
	strcpy(sb.sink, "api");
	pol_batch_init(&sb.b, 9, 9);
	{
		struct pol_sink w;

		pol_sink_init(&w, "api");
		w.state = POL_RATE_LIMITED;
		w.until_ms = T0 + 99999;
		w.ncats = 1;
		strcpy(w.cats[0].name, "error");
		w.cats[0].until_ms = T0 + 5;
		CU_ASSERT_EQUAL_FATAL(pol_save(path, &w, 1, &sb, 1, 0), 0);
	}
	good = tu_read_file(path, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(good);

	/* every truncation is corrupt, and changes nothing */
	for (cut = 0; cut < len; cut++) {
		t_write(path, good, cut);
		rc = pol_load(path, s, 1, &lb, &nb, 0);
		CU_ASSERT_EQUAL(rc, -EBADMSG);
		CU_ASSERT_EQUAL(memcmp(&s[0], &ref, sizeof(ref)), 0);
		CU_ASSERT_PTR_NULL(lb);
	}
	/* trailing garbage */
	{
		char *more = malloc(len + 1);

		memcpy(more, good, len);
		more[len] = '\0';
		t_write(path, more, len + 1);
		CU_ASSERT_EQUAL(pol_load(path, s, 1, &lb, &nb, 0), -EBADMSG);
		free(more);
	}
	/* every single flipped byte: rejected or loaded, never a crash, and
	 * a load leaves a sane state */
	for (cut = 0; cut < len; cut++) {
		char *bad = malloc(len);

		memcpy(bad, good, len);
		bad[cut] ^= 0x5a;
		t_write(path, bad, len);
		pol_sink_init(&s[0], "api");
		rc = pol_load(path, s, 1, &lb, &nb, 0);
		CU_ASSERT(rc == 0 || rc == -EBADMSG);
		CU_ASSERT(s[0].state <= POL_RATE_LIMITED);
		CU_ASSERT(s[0].ncats >= 0 && s[0].ncats <= POL_MAX_CATS);
		free(lb);
		lb = NULL;
		free(bad);
	}
	/* several random bytes at random places, many times */
	for (cut = 0; cut < 3000; cut++) {
		char *bad = malloc(len);
		int k;

		memcpy(bad, good, len);
		for (k = 0; k < 1 + (int)(t_rand() % 4); k++)
			bad[t_rand() % len] = (char)t_rand();
		t_write(path, bad, len);
		pol_sink_init(&s[0], "api");
		rc = pol_load(path, s, 1, &lb, &nb, 0);
		CU_ASSERT(rc == 0 || rc == -EBADMSG);
		CU_ASSERT(s[0].state <= POL_RATE_LIMITED);
		free(lb);
		lb = NULL;
		free(bad);
	}
	s[0] = ref;
	/* plain garbage and foreign msgpack */
	{
		static const char junk[] = "this is not msgpack at all";
		msgpack_sbuffer buf;
		msgpack_packer pk;

		t_write(path, junk, sizeof(junk));
		CU_ASSERT_EQUAL(pol_load(path, s, 1, &lb, &nb, 0), -EBADMSG);
		msgpack_sbuffer_init(&buf);
		msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
		msgpack_pack_map(&pk, 2);
		msgpack_pack_str(&pk, 6);
		msgpack_pack_str_body(&pk, "format", 6);
		msgpack_pack_str(&pk, 5);
		msgpack_pack_str_body(&pk, "other", 5);
		msgpack_pack_str(&pk, 5);
		msgpack_pack_str_body(&pk, "sinks", 5);
		msgpack_pack_array(&pk, 0);
		t_write(path, buf.data, buf.size);
		CU_ASSERT_EQUAL(pol_load(path, s, 1, &lb, &nb, 0), -EBADMSG);
		msgpack_sbuffer_destroy(&buf);
		t_write(path, "", 0);
		CU_ASSERT_EQUAL(pol_load(path, s, 1, &lb, &nb, 0), -EBADMSG);
		CU_ASSERT_EQUAL(memcmp(&s[0], &ref, sizeof(ref)), 0);
	}
	/* a state name that is not one of ours */
	{
		char *bad = malloc(len);
		char *st;

		memcpy(bad, good, len);
		st = memmem(bad, len, "rate_limited", 12);
		CU_ASSERT_PTR_NOT_NULL_FATAL(st);
		memcpy(st, "rate_limitex", 12);
		t_write(path, bad, len);
		CU_ASSERT_EQUAL(pol_load(path, s, 1, &lb, &nb, 0), -EBADMSG);
		free(bad);
	}
	/* a directory is not a state file */
	CU_ASSERT_EQUAL(pol_load(g_dir, s, 1, &lb, &nb, 0), -EBADMSG);
	/* the original still loads */
	t_write(path, good, len);
	CU_ASSERT_EQUAL(pol_load(path, s, 1, &lb, &nb, 0), 0);
	CU_ASSERT_EQUAL(s[0].state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s[0].until_ms, T0 + 99999);
	CU_ASSERT_EQUAL(nb, 1);
	free(lb);
	free(good);
	unlink(path);
	/* a save into a missing directory fails cleanly */
	t_path(path, sizeof(path), "no/such/dir.state");
	CU_ASSERT_EQUAL(pol_save(path, s, 1, NULL, 0, 0), -ENOENT);
}

/* PRODUCT.md section 7: a broker restarted during a 300 s Retry-After
 * does not call the upstream before it ends. */
static void test_restart_inside_window(void)
{
	struct cfg_sink c;
	struct pol_sink s, fresh;
	struct pol_batch b;
	struct pol_result r;
	char path[256];

	t_cfg(&c);
	t_path(path, sizeof(path), "restart.state");
	pol_sink_init(&s, "api");
	pol_batch_init(&b, 1, 5);
	t_send(&s, &c, &b, T0, 429, "300", NULL, &r);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 300000);
	CU_ASSERT_EQUAL_FATAL(pol_save(path, &s, 1, NULL, 0, 0), 0);

	/* the broker dies at T0 + 10 s and starts again */
	pol_sink_init(&fresh, "api");
	CU_ASSERT_EQUAL(pol_gate(&fresh, &c, 0, T0 + 10000), POL_GATE_SEND);
	CU_ASSERT_EQUAL_FATAL(pol_load(path, &fresh, 1, NULL, NULL, 0), 0);
	pol_sink_clamp(&fresh, &c, T0 + 10000);
	CU_ASSERT_EQUAL(fresh.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(fresh.until_ms, T0 + 300000);
	CU_ASSERT_EQUAL(pol_gate(&fresh, &c, 0, T0 + 10000), POL_GATE_WAIT);
	CU_ASSERT_EQUAL(pol_gate(&fresh, &c, 0, T0 + 299999), POL_GATE_WAIT);
	CU_ASSERT_EQUAL(pol_begin(&fresh, &c, &b, 0, T0 + 299999), -EAGAIN);
	CU_ASSERT_EQUAL(pol_next_open(&fresh, &c, 0, T0 + 10000),
			T0 + 300000);
	/* then one probe */
	CU_ASSERT_EQUAL(pol_gate(&fresh, &c, 0, T0 + 300000), POL_GATE_PROBE);
	CU_ASSERT_EQUAL(pol_begin(&fresh, &c, &b, 0, T0 + 300000), 0);
	CU_ASSERT_TRUE(b.probe);
	CU_ASSERT_EQUAL(pol_gate(&fresh, &c, 0, T0 + 300000), POL_GATE_WAIT);
	unlink(path);

	/* a backoff window too; and a stale window needs a probe */
	pol_sink_init(&s, "api");
	t_send(&s, &c, &b, T0, 503, NULL, NULL, &r);
	CU_ASSERT_EQUAL_FATAL(pol_save(path, &s, 1, NULL, 0, 0), 0);
	pol_sink_init(&fresh, "api");
	CU_ASSERT_EQUAL_FATAL(pol_load(path, &fresh, 1, NULL, NULL, 0), 0);
	CU_ASSERT_EQUAL(pol_gate(&fresh, &c, 0, T0 + 499), POL_GATE_WAIT);
	CU_ASSERT_EQUAL(pol_gate(&fresh, &c, 0, T0 + HOUR), POL_GATE_PROBE);
	CU_ASSERT_EQUAL(fresh.level, 1);
	unlink(path);
}

static void test_clamp(void)
{
	struct cfg_sink c;
	struct pol_sink s;

	t_cfg(&c);
	pol_sink_init(&s, "api");
	/* a window no config of this sink can produce: clock jump */
	s.state = POL_RATE_LIMITED;
	s.until_ms = T0 + 30 * 86400 * SEC;
	s.ncats = 1;
	strcpy(s.cats[0].name, "error");
	s.cats[0].until_ms = T0 + 86400 * SEC;
	pol_sink_clamp(&s, &c, T0);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 300000);	/* > 60 s + 10 % */
	CU_ASSERT_EQUAL(s.cats[0].until_ms, T0 + 300000);
	/* backoff_max is the bound when it is larger: jitter never takes
	 * a window past it */
	c.backoff_max_ms = 600000;
	s.until_ms = T0 + 86400 * SEC;
	pol_sink_clamp(&s, &c, T0);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 600000);
	/* a legitimate window is kept */
	s.until_ms = T0 + 200000;
	pol_sink_clamp(&s, &c, T0);
	CU_ASSERT_EQUAL(s.until_ms, T0 + 200000);
}

/* Jitter never takes a window past backoff_max (issue 14: 4.34 s windows
 * with backoff_max = 4s), whatever the base, cap, percentage and random
 * word; below the cap it is added, at the cap it spreads below it. */
static void test_jitter_cap(void)
{
	static const struct {
		uint64_t base, cap;
		uint32_t pct;
	} rows[] = {
		{ 500, 4000, 10 }, { 500, 60000, 10 }, { 300, 4000, 50 },
		{ 1000, 1000, 10 }, { 3900, 4000, 10 }, { 7, 100, 100 },
		{ 500, 4000, 0 }, { 1, UINT64_MAX / 4, 10 },
	};
	static const uint32_t rnds[] = { 0, 1, 1u << 31, 0xdeadbeef,
					 UINT32_MAX - 1, UINT32_MAX };
	size_t i, k;
	uint32_t l;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct cfg_sink c;

		t_cfg(&c);
		c.backoff_base_ms = rows[i].base;
		c.backoff_max_ms = rows[i].cap;
		c.backoff_jitter_pct = rows[i].pct;
		for (l = 0; l < 70; l++)
			for (k = 0; k < sizeof(rnds) / sizeof(rnds[0]); k++) {
				uint64_t d = l < 64 && rows[i].base <=
					     (rows[i].cap >> l) ?
					     rows[i].base << l : rows[i].cap;
				int64_t got = pol_backoff_delay(&c, l,
								rnds[k]);
				uint64_t jmax = d / 100 * rows[i].pct +
						d % 100 * rows[i].pct / 100;

				if (d > rows[i].cap)
					d = rows[i].cap;
				if (got < 0 || (uint64_t)got > rows[i].cap)
					fprintf(stderr, "jitter row %zu level "
						"%u rnd %u: %lld > cap\n", i, l,
						rnds[k], (long long)got);
				CU_ASSERT((uint64_t)got <= rows[i].cap);
				/* within the jitter of the capped delay */
				CU_ASSERT((uint64_t)got + jmax >= d);
				CU_ASSERT((uint64_t)got <= d + jmax);
			}
	}
	/* the case: base 500 ms, max 4 s, 10 %: the capped windows
	 * lie in (3.6 s, 4 s] */
	{
		struct cfg_sink c;

		t_cfg(&c);
		c.backoff_max_ms = 4000;
		CU_ASSERT_EQUAL(pol_backoff_delay(&c, 3, UINT32_MAX), 3601);
		CU_ASSERT_EQUAL(pol_backoff_delay(&c, 9, 0), 4000);
		CU_ASSERT_EQUAL(pol_backoff_delay(&c, 2, UINT32_MAX), 2199);
	}
}

/* Windows are on the caller's monotonic clock; the wall clock of an
 * answer only reads HTTP-dates. A wall-clock step between two answers
 * changes no window. */
static void test_monotonic_windows(void)
{
	const int64_t M0 = 5 * SEC;	/* monotonic: 5 s after boot */
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b;
	struct pol_result r;
	struct t_out t;

	t_cfg(&c);
	c.backoff_jitter_pct = 0;
	pol_sink_init(&s, "api");
	pol_batch_init(&b, 1, 5);
	/* a 503 at M0 while the wall clock reads T0 */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, M0), 0);
	t_oc(&t, 503, NULL, NULL);
	t.o.wall_ms = T0;
	pol_on_response(&s, &c, &b, &t.o, M0, 0, &r);
	CU_ASSERT_EQUAL(s.until_ms, M0 + 500);
	CU_ASSERT_EQUAL(b.first_failure_ms, M0);
	/* the probe, with the wall clock an hour back: window M0 + 1.5 s */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, M0 + 500), 0);
	t_oc(&t, 503, NULL, NULL);
	t.o.wall_ms = T0 - HOUR;
	pol_on_response(&s, &c, &b, &t.o, M0 + 500, 0, &r);
	CU_ASSERT_EQUAL(s.until_ms, M0 + 1500);
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, M0 + 1499), POL_GATE_WAIT);
	CU_ASSERT_EQUAL(pol_gate(&s, &c, 0, M0 + 1500), POL_GATE_PROBE);
	/* an HTTP-date 60 s after the answer's wall time: 60 s from now on
	 * the monotonic clock, whatever the wall clock said before */
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, M0 + 1500), 0);
	t_oc(&t, 429, "Tue, 14 Nov 2023 21:14:20 GMT", NULL);
	t.o.wall_ms = T0 - HOUR;	/* 21:13:20 */
	pol_on_response(&s, &c, &b, &t.o, M0 + 1500, 0, &r);
	CU_ASSERT_EQUAL(s.state, POL_RATE_LIMITED);
	CU_ASSERT_EQUAL(s.until_ms, M0 + 1500 + 60000);
	/* the same date read against a wall clock past it: absent, so a
	 * counted backoff instead */
	pol_sink_init(&s, "api");
	pol_batch_init(&b, 2, 5);
	CU_ASSERT_EQUAL(pol_begin(&s, &c, &b, 0, M0), 0);
	t_oc(&t, 429, "Tue, 14 Nov 2023 21:14:20 GMT", NULL);
	t.o.wall_ms = T0;
	pol_on_response(&s, &c, &b, &t.o, M0, 0, &r);
	CU_ASSERT_EQUAL(s.state, POL_BACKOFF);
	CU_ASSERT_EQUAL(s.until_ms, M0 + 500);
}

/* Persisted times are wall-clock: saved with one process's offset, read
 * back with another's (a restart, a reboot), they land on the new
 * monotonic clock at the same wall instants. 0 stays "none"; a time
 * before the new monotonic origin is negative, never 0. */
static void test_persist_wall_offset(void)
{
	const int64_t off1 = T0 - 5 * SEC;	/* boot 1: mono 5 s = T0 */
	const int64_t off2 = T0 + 60 * SEC - 2 * SEC; /* boot 2, 60 s on */
	struct pol_sink a, b;
	struct pol_saved_batch sb, *lb = NULL;
	size_t nb = 0;
	char path[256];

	snprintf(path, sizeof(path), "%s/offset.state", g_dir);
	pol_sink_init(&a, "api");
	a.state = POL_RATE_LIMITED;
	a.until_ms = 5 * SEC + 300 * SEC;	/* T0 + 300 s */
	a.rl_start_ms = 5 * SEC;
	a.outage_start_ms = 4 * SEC;
	a.ncats = 1;
	strcpy(a.cats[0].name, "error");
	a.cats[0].until_ms = 5 * SEC + 100 * SEC;
	memset(&sb, 0, sizeof(sb));
	strcpy(sb.sink, "api");
	pol_batch_init(&sb.b, 7, 3);
	sb.b.first_failure_ms = 3 * SEC;	/* T0 - 2 s */
	CU_ASSERT_EQUAL_FATAL(pol_save(path, &a, 1, &sb, 1, off1), 0);
	pol_sink_init(&b, "api");
	CU_ASSERT_EQUAL_FATAL(pol_load(path, &b, 1, &lb, &nb, off2), 0);
	/* the new boot's mono clock reads 2 s at T0 + 60 s */
	CU_ASSERT_EQUAL(b.until_ms, T0 + 300 * SEC - off2);
	CU_ASSERT_EQUAL(b.until_ms, 2 * SEC + 240 * SEC);
	CU_ASSERT_EQUAL(b.cats[0].until_ms, 2 * SEC + 40 * SEC);
	CU_ASSERT_EQUAL(b.rl_start_ms, 2 * SEC - 60 * SEC);
	CU_ASSERT_EQUAL(b.outage_start_ms, 2 * SEC - 61 * SEC);
	CU_ASSERT_EQUAL_FATAL(nb, 1);
	CU_ASSERT_EQUAL(lb[0].b.first_failure_ms, 2 * SEC - 62 * SEC);
	CU_ASSERT_EQUAL(lb[0].b.rl_start_ms, 0);	/* none stays none */
	free(lb);
	/* exactly the new origin: -1, not 0 ("none") */
	sb.b.first_failure_ms = off2 - off1;	/* wall = off2 */
	CU_ASSERT_EQUAL_FATAL(pol_save(path, &a, 1, &sb, 1, off1), 0);
	CU_ASSERT_EQUAL_FATAL(pol_load(path, &b, 1, &lb, &nb, off2), 0);
	CU_ASSERT_EQUAL(lb[0].b.first_failure_ms, -1);
	free(lb);
	unlink(path);
}

/* ---- registration ---------------------------------------------------------- */

static int suite_init(void)
{
	return mkdtemp(g_dir) ? 0 : -1;
}

static int suite_clean(void)
{
	return rmdir(g_dir);
}

static int add_policy_suite(void)
{
	CU_pSuite s = CU_add_suite("policy", suite_init, suite_clean);

	if (!s)
		return -1;
	if (!CU_add_test(s, "classification table", test_classify_table) ||
	    !CU_add_test(s, "response table", test_response_table) ||
	    !CU_add_test(s, "why text", test_why_text) ||
	    !CU_add_test(s, "reauth once per batch", test_reauth_once) ||
	    !CU_add_test(s, "status overrides", test_status_overrides) ||
	    !CU_add_test(s, "Retry-After seconds", test_retry_after_seconds) ||
	    !CU_add_test(s, "Retry-After dates", test_retry_after_dates) ||
	    !CU_add_test(s, "Retry-After date forms",
			 test_retry_after_date_forms) ||
	    !CU_add_test(s, "Retry-After duplicated",
			 test_retry_after_duplicates) ||
	    !CU_add_test(s, "Retry-After responses",
			 test_retry_after_responses) ||
	    !CU_add_test(s, "Sentry limits parse", test_sentry_parse) ||
	    !CU_add_test(s, "Sentry limits responses",
			 test_sentry_responses) ||
	    !CU_add_test(s, "Sentry category-only limits",
			 test_sentry_category_only) ||
	    !CU_add_test(s, "Sentry categories table",
			 test_sentry_categories_table) ||
	    !CU_add_test(s, "parser fuzz", test_parser_fuzz) ||
	    !CU_add_test(s, "max_retries", test_max_retries) ||
	    !CU_add_test(s, "rate limits not counted",
			 test_rate_limits_not_counted) ||
	    !CU_add_test(s, "max_backoff_duration",
			 test_max_backoff_duration) ||
	    !CU_add_test(s, "rate limits are no backoff time",
			 test_rate_limit_not_backoff_time) ||
	    !CU_add_test(s, "max_rate_limit_duration",
			 test_max_rate_limit_duration) ||
	    !CU_add_test(s, "episode never shortens",
			 test_episode_never_shortens) ||
	    !CU_add_test(s, "backoff delays", test_backoff_delays) ||
	    !CU_add_test(s, "jitter never past the cap", test_jitter_cap) ||
	    !CU_add_test(s, "monotonic windows", test_monotonic_windows) ||
	    !CU_add_test(s, "persist wall offset",
			 test_persist_wall_offset) ||
	    !CU_add_test(s, "backoff sequence and probe",
			 test_backoff_sequence_and_probe) ||
	    !CU_add_test(s, "flapping", test_flapping) ||
	    !CU_add_test(s, "poison batch", test_poison_batch) ||
	    !CU_add_test(s, "probe details", test_probe_details) ||
	    !CU_add_test(s, "concurrency ramp", test_concurrency_ramp) ||
	    !CU_add_test(s, "X-Retry-Count", test_retry_count_header) ||
	    !CU_add_test(s, "summary due", test_summary_due) ||
	    !CU_add_test(s, "visible state", test_visible_state) ||
	    !CU_add_test(s, "names", test_names) ||
	    !CU_add_test(s, "persist round trip", test_persist_round_trip) ||
	    !CU_add_test(s, "persist by name", test_persist_by_name) ||
	    !CU_add_test(s, "persist missing and corrupt",
			 test_persist_missing_and_corrupt) ||
	    !CU_add_test(s, "restart inside window",
			 test_restart_inside_window) ||
	    !CU_add_test(s, "clamp", test_clamp))
		return -1;
	return 0;
}

TEST_MAIN(add_policy_suite)
