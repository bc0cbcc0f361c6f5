/* test_http.c - libcurl multi_socket on the io_uring reactor
 * (broker/http.c), against tests/fake_upstream.py on 127.0.0.1.
 *
 * Each test drives its own struct rx + struct http loop the way the
 * broker does: rx_run() with the wait bounded by http_next_deadline(),
 * then http_tick(). The fake upstream is one child process for the whole
 * suite (reset before every test), killed by PID at the end; its admin
 * API is called with blocking libcurl, outside the code under test.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "buf.h"
#include "http.h"
#include "reactor.h"
#include "upstream.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define MS	1000000ull
#define SEC	1000000000ull

/* ---- the loop under test ------------------------------------------------- */

static struct rx g_rx;
static struct http *g_h;
static unsigned long g_iters;	/* loop iterations, to catch spinning */

static void loop_once(uint64_t cap_ns)
{
	uint64_t now = tu_now_ns(), d = http_next_deadline(g_h), to = cap_ns;

	if (d != UINT64_MAX)
		to = d <= now ? 0 : (d - now < cap_ns ? d - now : cap_ns);
	g_iters++;
	CU_ASSERT_FATAL(rx_run(&g_rx, to) >= 0);
	/* a done() may have freed it */
	if (g_h)
		http_tick(g_h, tu_now_ns());
}

/* Runs until *cnt >= want; 0, or -1 on timeout. */
static int loop_until(const int *cnt, int want, uint64_t timeout_ns)
{
	uint64_t end = tu_now_ns() + timeout_ns;

	while (*cnt < want) {
		uint64_t now = tu_now_ns();

		if (now >= end || !g_h)
			return -1;
		loop_once(end - now);
	}
	return 0;
}

static void loop_for(uint64_t ns)
{
	uint64_t end = tu_now_ns() + ns;

	while (g_h && tu_now_ns() < end)
		loop_once(end - tu_now_ns());
}

/* Runs the loop until the upstream has captured n requests. */
static int wait_captured(int n, uint64_t timeout_ns)
{
	uint64_t end = tu_now_ns() + timeout_ns;

	while (tu_now_ns() < end) {
		loop_for(20 * MS);
		if (up_stat("requests") >= n)
			return 0;
	}
	return -1;
}

/* ---- completions --------------------------------------------------------- */

struct rec {
	int calls;
	int status, timeout, curl_code, cancelled;
	char body[HTTP_BODY_KEEP + 1];
	size_t body_len;
	char cause[512];
	char error[CURL_ERROR_SIZE];
	char ra[HTTP_MAX_HDR_VALUES][64];
	int n_ra;
	char sl[HTTP_MAX_HDR_VALUES][128];
	int n_sl;
	long num_connects;
	uint64_t t_post, t_done;
	int *counter;			/* shared count of completions */
	/* re-entrancy: what done() does besides recording */
	struct http_req *self;
	struct http_req *cancel;	/* http_cancel() this one */
	int post_more;			/* http_post() a successor */
	int post_ret;
	int free_h;			/* http_free() the http */
	int cancel_calls_seen;		/* cancel->calls right after */
	struct rec *cancel_rec;
};

static void rec_done(void *arg, const struct http_result *r);

static int post(struct rec *rc, const char *path, const void *body,
		uint64_t len, const char *const *hdrs, uint64_t ctmo,
		uint64_t tmo)
{
	char url[256];
	struct http_post p = {
		.url = url, .body = body, .len = len, .headers = hdrs,
		.connect_timeout_ms = ctmo, .timeout_ms = tmo,
	};

	snprintf(url, sizeof(url), "%s%s", up_base(), path);
	rc->t_post = tu_now_ns();
	return http_post(g_h, &p, rec_done, rc, &rc->self);
}

static const char *chain_body = "{\"id\":\"chain\"}";
static struct rec chain[10];
static int chain_cnt;
static struct rec late;		/* posted from a done() outside a chain */

static void rec_done(void *arg, const struct http_result *r)
{
	struct rec *rc = arg;
	int i;

	rc->calls++;
	rc->t_done = tu_now_ns();
	rc->status = r->status;
	rc->timeout = r->timeout;
	rc->curl_code = r->curl_code;
	rc->cancelled = r->cancelled;
	rc->body_len = r->body_len;
	if (r->body_len)
		memcpy(rc->body, r->body, r->body_len);
	rc->body[r->body_len] = '\0';
	http_cause(r, rc->cause, sizeof(rc->cause));
	snprintf(rc->error, sizeof(rc->error), "%s", r->error);
	rc->n_ra = r->n_retry_after;
	for (i = 0; i < r->n_retry_after; i++)
		snprintf(rc->ra[i], sizeof(rc->ra[i]), "%s", r->retry_after[i]);
	rc->n_sl = r->n_sentry_limits;
	for (i = 0; i < r->n_sentry_limits; i++)
		snprintf(rc->sl[i], sizeof(rc->sl[i]), "%s",
			 r->sentry_limits[i]);
	rc->num_connects = r->num_connects;
	if (rc->counter)
		(*rc->counter)++;
	if (rc->self)
		http_cancel(g_h, rc->self);	/* itself: a no-op */
	if (rc->cancel) {
		http_cancel(g_h, rc->cancel);
		rc->cancel_calls_seen = rc->cancel_rec->calls;
	}
	if (rc->post_more && rc->counter == &chain_cnt) {
		/* the chain: each one posts the next, the 10th stops */
		struct rec *next = rc + 1;

		if (next < chain + 10) {
			next->counter = rc->counter;
			next->post_more = 1;
			rc->post_ret = post(next, "/chain", chain_body,
					    strlen(chain_body), NULL, 0, 5000);
		}
	} else if (rc->post_more) {
		rc->post_ret = post(&late, "/late", "x", 1, NULL, 0, 5000);
	}
	if (rc->free_h) {
		http_free(g_h);
		g_h = NULL;
	}
}

/* ---- fixture ---------------------------------------------------------- */

static void setup(void)
{
	CU_ASSERT_EQUAL_FATAL(up_admin("POST", "/_admin/reset", "", NULL), 200);
	CU_ASSERT_EQUAL_FATAL(rx_init(&g_rx, 64), 0);
	g_h = http_new(&g_rx);
	CU_ASSERT_PTR_NOT_NULL_FATAL(g_h);
	g_iters = 0;
}

static void teardown(void)
{
	if (g_h)
		http_free(g_h);
	g_h = NULL;
	rx_fini(&g_rx);
}

/* ---- tests ---------------------------------------------------------- */

static void t_post_200(void)
{
	static const char body[] =
		"{\"event_id\":\"e1\",\"msg\":\"h\\u00e9llo\"}";
	const char *hdrs[] = { "Content-Type: application/json",
			       "X-Outbox-Test: forty two",
			       "User-Agent: outbox-test/1", NULL };
	struct rec a = { 0 };
	json_t *reqs = NULL, *r0, *hd;
	char clen[32];

	setup();
	CU_ASSERT_EQUAL_FATAL(post(&a, "/api/1/store?x=1", body,
				   strlen(body), hdrs, 0, 5000), 0);
	CU_ASSERT_EQUAL(http_inflight(g_h), 1);
	CU_ASSERT_NOT_EQUAL(http_next_deadline(g_h), UINT64_MAX);
	CU_ASSERT_EQUAL(loop_until(&a.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL(a.calls, 1);
	CU_ASSERT_EQUAL(a.status, 200);
	CU_ASSERT_EQUAL(a.curl_code, 0);
	CU_ASSERT_EQUAL(a.timeout, 0);
	CU_ASSERT_STRING_EQUAL(a.error, "");
	CU_ASSERT_EQUAL(a.n_ra, 0);
	CU_ASSERT_EQUAL(a.n_sl, 0);
	CU_ASSERT_EQUAL(a.num_connects, 1);
	CU_ASSERT_EQUAL(http_inflight(g_h), 0);
	CU_ASSERT_EQUAL(http_pool_size(g_h), 1);

	CU_ASSERT_EQUAL_FATAL(up_admin("GET", "/_admin/requests?bodies=1", NULL,
				    &reqs), 200);
	CU_ASSERT_EQUAL_FATAL(json_array_size(reqs), 1);
	r0 = json_array_get(reqs, 0);
	hd = json_object_get(r0, "headers");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r0, "method")),
			       "POST");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r0, "path")),
			       "/api/1/store?x=1");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r0, "body")),
			       "{\"event_id\":\"e1\",\"msg\":\"h\\u00e9llo\"}");
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(r0, "body_size")),
			(json_int_t)strlen(body));
	CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(
		json_object_get(hd, "x-outbox-test"), 0)), "forty two");
	CU_ASSERT_EQUAL(json_array_size(json_object_get(hd, "x-outbox-test")),
			1);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(
		json_object_get(hd, "content-type"), 0)), "application/json");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(
		json_object_get(hd, "user-agent"), 0)), "outbox-test/1");
	snprintf(clen, sizeof(clen), "%zu", strlen(body));
	CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(
		json_object_get(hd, "content-length"), 0)), clen);
	CU_ASSERT_PTR_NULL(json_object_get(hd, "expect"));
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(r0, "status")),
			200);
	json_decref(reqs);
	teardown();
}

/* 50 at once over at most 4 connections; a second round reuses both the
 * pooled slots and the kept-alive connections */
static void t_concurrent_50(void)
{
	static struct rec recs[100];
	static char bodies[100][32];
	json_t *reqs = NULL;
	int cnt = 0, i, ok = 0, nc = 0, round;

	setup();
	memset(recs, 0, sizeof(recs));
	CU_ASSERT_EQUAL_FATAL(http_set_max_host_conns(g_h, 4), 0);
	for (round = 0; round < 2; round++) {
		for (i = round * 50; i < round * 50 + 50; i++) {
			recs[i].counter = &cnt;
			snprintf(bodies[i], sizeof(bodies[i]),
				 "{\"id\":\"c%d\"}", i);
			CU_ASSERT_EQUAL_FATAL(post(&recs[i], "/batch",
						   bodies[i],
						   strlen(bodies[i]), NULL,
						   0, 10000), 0);
		}
		CU_ASSERT_EQUAL(http_inflight(g_h), 50);
		CU_ASSERT_EQUAL(loop_until(&cnt, round * 50 + 50, 10 * SEC),
				0);
		CU_ASSERT_EQUAL(http_pool_size(g_h), 50);
	}
	for (i = 0; i < 100; i++) {
		ok += recs[i].calls == 1 && recs[i].status == 200;
		if (i < 50)
			nc += (int)recs[i].num_connects;
		else
			CU_ASSERT_EQUAL(recs[i].num_connects, 0);
	}
	CU_ASSERT_EQUAL(ok, 100);
	CU_ASSERT(nc >= 1 && nc <= 4);
	CU_ASSERT_EQUAL(http_inflight(g_h), 0);
	CU_ASSERT_EQUAL(up_stat("unique"), 100);
	CU_ASSERT_EQUAL_FATAL(up_admin("GET", "/_admin/requests", NULL, &reqs),
			      200);
	CU_ASSERT_EQUAL(json_array_size(reqs), 100);
	i = up_distinct_clients(reqs);
	CU_ASSERT(i >= 1 && i <= 4);
	CU_ASSERT_EQUAL(i, nc);
	json_decref(reqs);
	teardown();
}

/* each done() posts the next: one connection, at most two slots */
static void t_chain_reentrant(void)
{
	json_t *reqs = NULL;
	int i, nc = 0;

	setup();
	memset(chain, 0, sizeof(chain));
	chain_cnt = 0;
	chain[0].counter = &chain_cnt;
	chain[0].post_more = 1;
	CU_ASSERT_EQUAL_FATAL(post(&chain[0], "/chain", chain_body,
				   strlen(chain_body), NULL, 0, 5000), 0);
	CU_ASSERT_EQUAL(loop_until(&chain_cnt, 10, 10 * SEC), 0);
	for (i = 0; i < 10; i++) {
		CU_ASSERT_EQUAL(chain[i].calls, 1);
		CU_ASSERT_EQUAL(chain[i].status, 200);
		nc += (int)chain[i].num_connects;
		if (i < 9)
			CU_ASSERT_EQUAL(chain[i].post_ret, 0);
	}
	CU_ASSERT_EQUAL(nc, 1);
	CU_ASSERT(http_pool_size(g_h) <= 2);
	CU_ASSERT_EQUAL_FATAL(up_admin("GET", "/_admin/requests", NULL, &reqs),
			      200);
	CU_ASSERT_EQUAL(json_array_size(reqs), 10);
	CU_ASSERT_EQUAL(up_distinct_clients(reqs), 1);
	json_decref(reqs);
	teardown();
}

/* every value, case-insensitive names, trimmed; a later response on the
 * same pooled slot does not inherit them; a 3xx is not followed */
static void t_rate_limit_headers(void)
{
	struct rec a = { 0 }, b = { 0 }, c = { 0 };

	setup();
	CU_ASSERT_EQUAL_FATAL(up_script(
		"{\"steps\": [{\"status\": 503, \"headers\": {"
		"\"Retry-After\": [\"5\", \" 7 \"],"
		"\"x-sentry-rate-limits\": \"60:error;transaction:org, "
		"10::key\"}},"
		"{\"status\": 200},"
		"{\"status\": 302, \"headers\": {\"Location\": \"/other\","
		"\"RETRY-AFTER\": \"9\"}}]}"), 0);
	CU_ASSERT_EQUAL_FATAL(post(&a, "/x", "[]", 2, NULL, 0, 5000), 0);
	CU_ASSERT_EQUAL(loop_until(&a.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL(a.status, 503);
	CU_ASSERT_EQUAL(a.curl_code, 0);
	CU_ASSERT_EQUAL_FATAL(a.n_ra, 2);
	CU_ASSERT_STRING_EQUAL(a.ra[0], "5");
	CU_ASSERT_STRING_EQUAL(a.ra[1], "7");
	CU_ASSERT_EQUAL_FATAL(a.n_sl, 1);
	CU_ASSERT_STRING_EQUAL(a.sl[0], "60:error;transaction:org, 10::key");

	CU_ASSERT_EQUAL_FATAL(post(&b, "/x", "[]", 2, NULL, 0, 5000), 0);
	CU_ASSERT_EQUAL(loop_until(&b.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL(http_pool_size(g_h), 1);	/* the same slot */
	CU_ASSERT_EQUAL(b.status, 200);
	CU_ASSERT_EQUAL(b.n_ra, 0);
	CU_ASSERT_EQUAL(b.n_sl, 0);

	CU_ASSERT_EQUAL_FATAL(post(&c, "/x", "[]", 2, NULL, 0, 5000), 0);
	CU_ASSERT_EQUAL(loop_until(&c.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL(c.status, 302);
	CU_ASSERT_EQUAL(c.curl_code, 0);
	CU_ASSERT_EQUAL_FATAL(c.n_ra, 1);
	CU_ASSERT_STRING_EQUAL(c.ra[0], "9");
	loop_for(100 * MS);
	CU_ASSERT_EQUAL(up_stat("requests"), 3);	/* not followed */
	teardown();
}

/* A raw one-shot server: an interim 100 with its own Retry-After, then
 * the final answer. Only the final response's values count. */
struct raw_srv {
	int lfd;
	int port;
	const char *resp;
	pthread_t th;
};

static void *raw_main(void *arg)
{
	struct raw_srv *s = arg;
	char buf[4096];
	size_t got = 0;
	long clen = 0;
	char *eoh = NULL, *cl;
	int fd = accept(s->lfd, NULL, NULL);

	if (fd < 0)
		return NULL;
	while (got < sizeof(buf) - 1) {
		ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);

		if (n <= 0)
			break;
		got += (size_t)n;
		buf[got] = '\0';
		if (!eoh && (eoh = strstr(buf, "\r\n\r\n"))) {
			cl = strcasestr(buf, "content-length:");
			if (cl)
				clen = strtol(cl + 15, NULL, 10);
		}
		if (eoh && got >= (size_t)(eoh + 4 - buf) + (size_t)clen)
			break;
	}
	if (write(fd, s->resp, strlen(s->resp)) < 0)
		perror("raw write");
	close(fd);
	return NULL;
}

static void t_interim_response_resets(void)
{
	struct raw_srv s = {
		.resp = "HTTP/1.1 100 Continue\r\nRetry-After: 99\r\n"
			"X-Sentry-Rate-Limits: 1::org\r\n\r\n"
			"HTTP/1.1 429 Too Many Requests\r\n"
			"Retry-After: 3\r\nContent-Length: 0\r\n"
			"Connection: close\r\n\r\n",
	};
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	struct http_post p = { .body = "[1]", .len = 3, .timeout_ms = 5000 };
	struct rec a = { 0 };
	char url[64];

	setup();
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CU_ASSERT_FATAL(s.lfd >= 0);
	CU_ASSERT_EQUAL_FATAL(bind(s.lfd, (struct sockaddr *)&sa, sizeof(sa)),
			      0);
	CU_ASSERT_EQUAL_FATAL(listen(s.lfd, 4), 0);
	getsockname(s.lfd, (struct sockaddr *)&sa, &sl);
	s.port = ntohs(sa.sin_port);
	CU_ASSERT_EQUAL_FATAL(pthread_create(&s.th, NULL, raw_main, &s), 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", s.port);
	p.url = url;
	CU_ASSERT_EQUAL_FATAL(http_post(g_h, &p, rec_done, &a, NULL), 0);
	CU_ASSERT_EQUAL(loop_until(&a.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL(a.status, 429);
	CU_ASSERT_EQUAL(a.curl_code, 0);
	CU_ASSERT_EQUAL_FATAL(a.n_ra, 1);
	CU_ASSERT_STRING_EQUAL(a.ra[0], "3");
	CU_ASSERT_EQUAL(a.n_sl, 0);
	pthread_join(s.th, NULL);
	close(s.lfd);
	teardown();
}

/* The first HTTP_BODY_KEEP body bytes come with the result; the cause of
 * a failure names the status and shows them, log-safe. */
static void t_response_body(void)
{
	char big[1100], want[HTTP_BODY_KEEP + 1], script[1400];
	struct rec a = { 0 }, b = { 0 }, c = { 0 };

	memset(big, 'x', 1000);
	big[1000] = '\0';
	snprintf(script, sizeof(script), "{\"steps\": ["
		 "{\"status\": 503, \"body\": \"db is\\r\\n down\\u0001\"}, "
		 "{\"status\": 500, \"body\": \"%s\"}, {\"status\": 204}]}",
		 big);
	setup();
	CU_ASSERT_EQUAL_FATAL(up_script(script), 0);
	CU_ASSERT_EQUAL_FATAL(post(&a, "/a", "x", 1, NULL, 0, 5000), 0);
	CU_ASSERT_EQUAL(loop_until(&a.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL_FATAL(post(&b, "/b", "x", 1, NULL, 0, 5000), 0);
	CU_ASSERT_EQUAL(loop_until(&b.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL_FATAL(post(&c, "/c", "x", 1, NULL, 0, 5000), 0);
	CU_ASSERT_EQUAL(loop_until(&c.calls, 1, 5 * SEC), 0);
	printf("\n    causes: [%s] [%.40s...] [%s]", a.cause, b.cause, c.cause);
	CU_ASSERT_EQUAL(a.status, 503);
	CU_ASSERT_EQUAL(a.body_len, 13);
	CU_ASSERT_EQUAL(memcmp(a.body, "db is\r\n down\x01", 13), 0);
	CU_ASSERT_STRING_EQUAL(a.cause, "HTTP 503: db is down\\x01");
	CU_ASSERT_EQUAL(b.status, 500);
	CU_ASSERT_EQUAL(b.body_len, HTTP_BODY_KEEP);
	memset(want, 'x', HTTP_BODY_KEEP);
	want[HTTP_BODY_KEEP] = '\0';
	CU_ASSERT_STRING_EQUAL(b.body, want);
	CU_ASSERT_EQUAL(strncmp(b.cause, "HTTP 500: xxxx", 14), 0);
	CU_ASSERT(strlen(b.cause) < 200);
	CU_ASSERT_EQUAL(strcmp(b.cause + strlen(b.cause) - 3, "..."), 0);
	CU_ASSERT_EQUAL(c.status, 204);
	CU_ASSERT_EQUAL(c.body_len, 0);
	CU_ASSERT_STRING_EQUAL(c.cause, "HTTP 204");
	teardown();
}

/* tests/fake_upstream.py checks itself (scripts, content rules, actions,
 * decoding) against a child server of its own */
static void t_upstream_selftest(void)
{
	char buf[512], cmd[700];
	const char *path = up_script_path(buf, sizeof(buf));
	int rc;

	CU_ASSERT_PTR_NOT_NULL_FATAL(path);
	snprintf(cmd, sizeof(cmd), "python3 '%s' --selftest >/dev/null",
		 path);
	rc = system(cmd);
	CU_ASSERT(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
}

/* http_excerpt, byte by byte */
static void t_excerpt(void)
{
	static const struct {
		const char *in;
		size_t len;
		size_t cap;
		const char *out;
	} rows[] = {
		{ "plain", 5, 64, "plain" },
		{ "a\r\n\r\n  b\t", 9, 64, "a b" },
		{ "\n\nlead", 6, 64, "lead" },
		{ "q\"uote\\", 7, 64, "q\"uote\\x5c" },
		{ "\x00\x7f\xff", 3, 64, "\\x00\\x7f\\xff" },
		{ "\xc3\xa9t\xc3\xa9", 5, 64, "\\xc3\\xa9t\\xc3\\xa9" },
		{ "0123456789abcdef", 16, 12, "01234567..." },
		{ "0123", 4, 8, "0123" },
		{ "0123456", 7, 8, "0123456" },
		{ "01234567", 8, 8, "0123..." },
		{ "012\xff", 4, 8, "012\\xff" },
		{ "0123\xff", 5, 8, "0123..." },	/* an escape is not cut */
		{ "ab  ", 4, 8, "ab" },
		{ "", 0, 64, "" },
		{ "abc", 3, 4, "" },		/* cap too small */
	};
	size_t i;

	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		char out[64];
		size_t n;

		memset(out, 'Z', sizeof(out));
		n = http_excerpt(rows[i].in, rows[i].len, out, rows[i].cap);
		if (strcmp(out, rows[i].out))
			printf("\n    excerpt row %zu: [%s]", i, out);
		CU_ASSERT_STRING_EQUAL(out, rows[i].out);
		CU_ASSERT_EQUAL(n, strlen(rows[i].out));
		CU_ASSERT(n < rows[i].cap);
	}
}

static void t_conn_reset(void)
{
	struct rec a = { 0 };

	setup();
	/* count 2: were curl to retry on a fresh connection, still reset */
	CU_ASSERT_EQUAL_FATAL(up_script(
		"{\"steps\": [{\"action\": \"reset\", \"count\": 2}]}"), 0);
	CU_ASSERT_EQUAL_FATAL(post(&a, "/r", "x", 1, NULL, 0, 5000), 0);
	CU_ASSERT_EQUAL(loop_until(&a.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL(a.calls, 1);
	CU_ASSERT_EQUAL(a.status, 0);
	CU_ASSERT_EQUAL(a.timeout, 0);
	CU_ASSERT_NOT_EQUAL(a.curl_code, 0);
	CU_ASSERT_NOT_EQUAL(a.curl_code, CURLE_OPERATION_TIMEDOUT);
	CU_ASSERT(strlen(a.error) > 0);
	CU_ASSERT(a.t_done - a.t_post < 2 * SEC);
	teardown();
}

/* A response body kept in the caller's buffer: past its cap the
 * transfer fails, unless resp_cut says to keep what fits and go on (the
 * otlp sink reads 2xx answers: a long one must not fail a delivered
 * request). */
static void t_resp_cut(void)
{
	struct rec a = { 0 }, b = { 0 };
	struct buf kept;
	char url[256], script[6200];
	struct http_post p = { .url = url, .body = "x", .len = 1,
			       .resp = &kept };

	setup();
	snprintf(url, sizeof(url), "%s/cut", up_base());
	snprintf(script, sizeof(script), "{\"steps\": [{\"status\": 200, "
		 "\"body\": \"%0*d\", \"count\": 2}]}", 6000, 7);
	CU_ASSERT_EQUAL_FATAL(up_script(script), 0);
	buf_init(&kept, 100);
	CU_ASSERT_EQUAL_FATAL(http_post(g_h, &p, rec_done, &a, NULL), 0);
	CU_ASSERT_EQUAL(loop_until(&a.calls, 1, 5 * SEC), 0);
	/* over the cap: the transfer failed */
	CU_ASSERT_EQUAL(a.curl_code, CURLE_WRITE_ERROR);
	buf_reset(&kept);
	p.resp_cut = 1;
	CU_ASSERT_EQUAL_FATAL(http_post(g_h, &p, rec_done, &b, NULL), 0);
	CU_ASSERT_EQUAL(loop_until(&b.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL(b.status, 200);
	CU_ASSERT_EQUAL(b.curl_code, 0);
	CU_ASSERT_EQUAL(kept.len, 100);
	CU_ASSERT(kept.p && !memcmp(kept.p, "0000", 4));
	buf_free(&kept);
	teardown();
}

/* the hung request times out on time; another one is served meanwhile
 * and the loop sleeps instead of spinning */
static void t_hang_timeout(void)
{
	struct rec a = { 0 }, b = { 0 };
	unsigned long iters;

	setup();
	CU_ASSERT_EQUAL_FATAL(up_script(
		"{\"steps\": [{\"action\": \"hang\"}], "
		"\"then\": {\"status\": 201}}"), 0);
	CU_ASSERT_EQUAL_FATAL(post(&a, "/hang", "x", 1, NULL, 0, 500), 0);
	CU_ASSERT_EQUAL_FATAL(wait_captured(1, 2 * SEC), 0);
	CU_ASSERT_EQUAL(a.calls, 0);
	CU_ASSERT_EQUAL_FATAL(post(&b, "/ok", "y", 1, NULL, 0, 5000), 0);
	CU_ASSERT_EQUAL(loop_until(&b.calls, 1, 2 * SEC), 0);
	CU_ASSERT_EQUAL(b.status, 201);
	CU_ASSERT_EQUAL(a.calls, 0);		/* still hung */
	CU_ASSERT(b.t_done - b.t_post < 300 * MS);
	iters = g_iters;
	CU_ASSERT_EQUAL(loop_until(&a.calls, 1, 3 * SEC), 0);
	CU_ASSERT(g_iters - iters < 200);
	CU_ASSERT_EQUAL(a.calls, 1);
	CU_ASSERT_EQUAL(a.status, 0);
	CU_ASSERT_EQUAL(a.timeout, 1);
	CU_ASSERT_EQUAL(a.curl_code, CURLE_OPERATION_TIMEDOUT);
	CU_ASSERT_EQUAL(a.cancelled, 0);	/* an outcome: no answer */
	CU_ASSERT(strlen(a.error) > 0);
	CU_ASSERT(a.t_done - a.t_post >= 450 * MS);
	CU_ASSERT(a.t_done - a.t_post < 1500 * MS);
	CU_ASSERT_EQUAL(http_inflight(g_h), 0);
	teardown();
}

static int closed_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
		port = -1;
	else
		port = ntohs(sa.sin_port);
	close(fd);		/* bound, never listened: refused */
	return port;
}

static void t_connect_refused(void)
{
	struct http_post p = { .body = "x", .len = 1 };	/* defaults */
	struct rec a = { 0 };
	char url[64];
	int port = closed_port();

	setup();
	CU_ASSERT_FATAL(port > 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", port);
	p.url = url;
	a.t_post = tu_now_ns();
	CU_ASSERT_EQUAL_FATAL(http_post(g_h, &p, rec_done, &a, NULL), 0);
	CU_ASSERT_EQUAL(loop_until(&a.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL(a.status, 0);
	CU_ASSERT_EQUAL(a.timeout, 0);
	CU_ASSERT_EQUAL(a.curl_code, CURLE_COULDNT_CONNECT);
	CU_ASSERT(strlen(a.error) > 0);
	/* the log gets curl's own words and the system's, not "network
	 * error" */
	printf("\n    cause: %s", a.cause);
	CU_ASSERT_EQUAL(strncmp(a.cause, a.error, strlen(a.error)), 0);
	CU_ASSERT_PTR_NOT_NULL(strstr(a.cause, "127.0.0.1"));
	CU_ASSERT_PTR_NOT_NULL(strstr(a.cause, "Connection refused"));
	CU_ASSERT(a.t_done - a.t_post < 1 * SEC);
	teardown();
}

/* a listener whose accept queue is full drops SYNs: the connect hangs
 * and connect_timeout (not timeout) ends it */
static void t_connect_timeout(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	struct http_post p = { .body = "x", .len = 1,
			       .connect_timeout_ms = 300,
			       .timeout_ms = 5000 };
	struct rec a = { 0 };
	int lfd, fill[3], i;
	char url[64];

	setup();
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CU_ASSERT_FATAL(lfd >= 0);
	CU_ASSERT_EQUAL_FATAL(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)),
			      0);
	CU_ASSERT_EQUAL_FATAL(listen(lfd, 0), 0);
	getsockname(lfd, (struct sockaddr *)&sa, &sl);
	for (i = 0; i < 3; i++) {
		fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK |
				 SOCK_CLOEXEC, 0);
		connect(fill[i], (struct sockaddr *)&sa, sizeof(sa));
	}
	usleep(50000);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/x",
		 ntohs(sa.sin_port));
	p.url = url;
	a.t_post = tu_now_ns();
	CU_ASSERT_EQUAL_FATAL(http_post(g_h, &p, rec_done, &a, NULL), 0);
	CU_ASSERT_EQUAL(loop_until(&a.calls, 1, 5 * SEC), 0);
	CU_ASSERT_EQUAL(a.status, 0);
	CU_ASSERT_EQUAL(a.timeout, 1);
	CU_ASSERT_EQUAL(a.curl_code, CURLE_OPERATION_TIMEDOUT);
	CU_ASSERT_EQUAL(a.cancelled, 0);	/* an outcome: no answer */
	CU_ASSERT(a.t_done - a.t_post >= 250 * MS);
	CU_ASSERT(a.t_done - a.t_post < 1500 * MS);
	for (i = 0; i < 3; i++)
		close(fill[i]);
	close(lfd);
	teardown();
}

static void t_cancel(void)
{
	struct rec a = { 0 }, b = { 0 }, c = { 0 };

	setup();
	CU_ASSERT_EQUAL_FATAL(up_script(
		"{\"steps\": [{\"action\": \"hang\", \"count\": 2}]}"), 0);
	/* direct cancel of an in-flight request */
	CU_ASSERT_EQUAL_FATAL(post(&a, "/h", "x", 1, NULL, 0, 10000), 0);
	CU_ASSERT_EQUAL_FATAL(wait_captured(1, 2 * SEC), 0);
	CU_ASSERT_EQUAL(a.calls, 0);
	http_cancel(g_h, a.self);
	CU_ASSERT_EQUAL(a.calls, 1);
	CU_ASSERT_EQUAL(a.status, 0);
	CU_ASSERT_EQUAL(a.timeout, 0);
	CU_ASSERT_EQUAL(a.curl_code, CURLE_ABORTED_BY_CALLBACK);
	CU_ASSERT_EQUAL(a.cancelled, 1);
	CU_ASSERT(strlen(a.error) > 0);
	CU_ASSERT_EQUAL(http_inflight(g_h), 0);

	/* c's done() cancels b (hung) and itself (already done: no-op) */
	CU_ASSERT_EQUAL_FATAL(post(&b, "/h", "x", 1, NULL, 0, 10000), 0);
	CU_ASSERT_EQUAL_FATAL(wait_captured(2, 2 * SEC), 0);
	CU_ASSERT_EQUAL_FATAL(post(&c, "/ok", "y", 1, NULL, 0, 5000), 0);
	c.cancel = b.self;
	c.cancel_rec = &b;
	CU_ASSERT_EQUAL(loop_until(&c.calls, 1, 3 * SEC), 0);
	CU_ASSERT_EQUAL(c.status, 200);
	CU_ASSERT_EQUAL(c.cancelled, 0);
	CU_ASSERT_EQUAL(c.cancel_calls_seen, 1);	/* from within c's */
	CU_ASSERT_EQUAL(b.calls, 1);
	CU_ASSERT_EQUAL(b.status, 0);
	CU_ASSERT_EQUAL(b.curl_code, CURLE_ABORTED_BY_CALLBACK);
	CU_ASSERT_EQUAL(http_inflight(g_h), 0);
	loop_for(200 * MS);
	CU_ASSERT_EQUAL(a.calls, 1);
	CU_ASSERT_EQUAL(b.calls, 1);
	CU_ASSERT_EQUAL(c.calls, 1);
	teardown();
}

/* http_free with three hung requests: each done() once; a post from
 * a done() is refused */
static void t_free_inflight(void)
{
	struct rec r[3] = { { 0 } };
	uint64_t t0;
	int i, n;

	setup();
	CU_ASSERT_EQUAL_FATAL(up_script(
		"{\"steps\": [{\"action\": \"hang\", \"count\": 3}]}"), 0);
	for (i = 0; i < 3; i++)
		CU_ASSERT_EQUAL_FATAL(post(&r[i], "/h", "x", 1, NULL, 0,
					   10000), 0);
	r[1].post_more = 1;
	r[1].post_ret = 12345;
	CU_ASSERT_EQUAL_FATAL(wait_captured(3, 3 * SEC), 0);
	CU_ASSERT_EQUAL(http_inflight(g_h), 3);
	t0 = tu_now_ns();
	http_free(g_h);
	g_h = NULL;
	/* taking the poll back from io_uring is one round trip */
	CU_ASSERT(tu_now_ns() - t0 < 500 * MS);
	for (i = 0; i < 3; i++) {
		CU_ASSERT_EQUAL(r[i].calls, 1);
		CU_ASSERT_EQUAL(r[i].status, 0);
		CU_ASSERT_EQUAL(r[i].curl_code, CURLE_ABORTED_BY_CALLBACK);
		CU_ASSERT_EQUAL(r[i].cancelled, 1);
	}
	CU_ASSERT_EQUAL(r[1].post_ret, -ESHUTDOWN);
	/* nothing more arrives: the reactor holds no op of ours */
	n = rx_run(&g_rx, 100 * MS);
	CU_ASSERT_EQUAL(n, 0);
	for (i = 0; i < 3; i++)
		CU_ASSERT_EQUAL(r[i].calls, 1);
	teardown();
}

/* http_free from a done(): the rest are aborted, the teardown waits for
 * the outermost frame */
static void t_free_from_done(void)
{
	struct rec a = { 0 }, b = { 0 };

	setup();
	CU_ASSERT_EQUAL_FATAL(up_script(
		"{\"steps\": [{\"action\": \"hang\"}]}"), 0);
	CU_ASSERT_EQUAL_FATAL(post(&b, "/h", "x", 1, NULL, 0, 10000), 0);
	CU_ASSERT_EQUAL_FATAL(wait_captured(1, 2 * SEC), 0);
	CU_ASSERT_EQUAL_FATAL(post(&a, "/ok", "y", 1, NULL, 0, 5000), 0);
	a.free_h = 1;
	loop_until(&a.calls, 1, 3 * SEC);
	CU_ASSERT_PTR_NULL(g_h);
	CU_ASSERT_EQUAL(a.calls, 1);
	CU_ASSERT_EQUAL(a.status, 200);
	CU_ASSERT_EQUAL(b.calls, 1);
	CU_ASSERT_EQUAL(b.status, 0);
	CU_ASSERT_EQUAL(b.curl_code, CURLE_ABORTED_BY_CALLBACK);
	CU_ASSERT_EQUAL(rx_run(&g_rx, 100 * MS), 0);
	CU_ASSERT_EQUAL(b.calls, 1);
	teardown();
}

static void t_large_body(void)
{
	const size_t len = 2u << 20;
	char *body = malloc(len + 1);
	struct rec a = { 0 };
	json_t *reqs = NULL, *r0;
	const char *got;
	uint32_t x = 12345;
	size_t i;

	CU_ASSERT_PTR_NOT_NULL_FATAL(body);
	for (i = 0; i < len; i++) {
		x = x * 1103515245u + 12345u;
		body[i] = (char)('A' + (x >> 16) % 26);
	}
	body[len] = '\0';
	setup();
	CU_ASSERT_EQUAL_FATAL(post(&a, "/big", body, len, NULL, 0, 10000), 0);
	CU_ASSERT_EQUAL(loop_until(&a.calls, 1, 10 * SEC), 0);
	CU_ASSERT_EQUAL(a.status, 200);
	CU_ASSERT_EQUAL(a.curl_code, 0);
	CU_ASSERT_EQUAL_FATAL(up_admin("GET", "/_admin/requests?bodies=1", NULL,
				    &reqs), 200);
	CU_ASSERT_EQUAL_FATAL(json_array_size(reqs), 1);
	r0 = json_array_get(reqs, 0);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(r0, "body_size")),
			(json_int_t)len);
	got = json_string_value(json_object_get(r0, "body"));
	CU_ASSERT_PTR_NOT_NULL_FATAL(got);
	/* the empty "Expect:" kept curl from asking for a 100 Continue */
	CU_ASSERT_PTR_NULL(json_object_get(json_object_get(r0, "headers"),
					   "expect"));
	CU_ASSERT_EQUAL(strlen(got), len);
	CU_ASSERT(memcmp(got, body, len) == 0);
	json_decref(reqs);
	teardown();
	free(body);
}

static void t_bad_args(void)
{
	struct http_post p = { .url = "http://127.0.0.1:1/", .body = NULL,
			       .len = 5 };
	struct rec a = { 0 };

	setup();
	CU_ASSERT_EQUAL(http_post(g_h, &p, rec_done, &a, NULL), -EINVAL);
	p.len = 0;
	CU_ASSERT_EQUAL(http_post(g_h, &p, NULL, &a, NULL), -EINVAL);
	p.url = NULL;
	CU_ASSERT_EQUAL(http_post(g_h, &p, rec_done, &a, NULL), -EINVAL);
	CU_ASSERT_EQUAL(http_inflight(g_h), 0);
	CU_ASSERT_EQUAL(http_next_deadline(g_h), UINT64_MAX);
	CU_ASSERT_EQUAL(http_set_max_host_conns(g_h, -1), -EINVAL);
	CU_ASSERT_EQUAL(a.calls, 0);
	teardown();
}

/* ---- suite ------------------------------------------------------------- */

static int suite_init(void)
{
	signal(SIGPIPE, SIG_IGN);
	alarm(60);		/* a hang is a failure, not a stuck CI job */
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -1;
	return up_start();
}

static int suite_clean(void)
{
	up_stop();
	curl_global_cleanup();
	return 0;
}

static int add_http(void)
{
	CU_pSuite s = CU_add_suite("http", suite_init, suite_clean);

	if (!s ||
	    !CU_add_test(s, "post_200", t_post_200) ||
	    !CU_add_test(s, "concurrent_50", t_concurrent_50) ||
	    !CU_add_test(s, "chain_reentrant", t_chain_reentrant) ||
	    !CU_add_test(s, "rate_limit_headers", t_rate_limit_headers) ||
	    !CU_add_test(s, "interim_response_resets",
			 t_interim_response_resets) ||
	    !CU_add_test(s, "conn_reset", t_conn_reset) ||
	    !CU_add_test(s, "response_body", t_response_body) ||
	    !CU_add_test(s, "resp_cut", t_resp_cut) ||
	    !CU_add_test(s, "excerpt", t_excerpt) ||
	    !CU_add_test(s, "upstream_selftest", t_upstream_selftest) ||
	    !CU_add_test(s, "hang_timeout", t_hang_timeout) ||
	    !CU_add_test(s, "connect_refused", t_connect_refused) ||
	    !CU_add_test(s, "connect_timeout", t_connect_timeout) ||
	    !CU_add_test(s, "cancel", t_cancel) ||
	    !CU_add_test(s, "free_inflight", t_free_inflight) ||
	    !CU_add_test(s, "free_from_done", t_free_from_done) ||
	    !CU_add_test(s, "large_body", t_large_body) ||
	    !CU_add_test(s, "bad_args", t_bad_args))
		return -1;
	return 0;
}

TEST_MAIN(add_http)
