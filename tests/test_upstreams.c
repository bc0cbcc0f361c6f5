/* test_upstreams.c - the segment and sentry sinks end to end: a real
 * outboxd, producers forked from here writing through liboutbox, and
 * tests/fake_upstream.py as Segment's batch API / a Sentry ingest,
 * scripted per scenario. What the upstream received (headers, decoded
 * bodies) is read back from its admin API; what the broker counted from
 * its shm pages.
 *
 *   segment_batches   body shape, Basic auth, gzip, messageId = the
 *                     envelope id, the same on a retry and after a broker
 *                     restart; a 40 KB event dropped too_large by the
 *                     producer (JSON text) or the broker (msgpack)
 *   segment_settings  CDN settings fetched at start, a bad document kept
 *                     out (logged once), new settings applied at runtime
 *   sentry_categories a 429 with X-Sentry-Rate-Limits: N:error - error
 *                     events of every producer dropped before batching,
 *                     transactions flow, the category is on the sink page
 *                     and leaves it when it expires; client reports add
 *                     up to the drop counter
 *   sentry_hold       the same with on_rate_limit = hold under load: the
 *                     transactions flow during the window, the errors
 *                     wait in the spool (more than fit in the batches in
 *                     memory), still after a broker restart, and are
 *                     delivered after it, each once
 *   otlp_decoder      the otlp sink's bodies decoded by OpenTelemetry's
 *                     own code
 *   otlp_partial      a 200 with partialSuccess.rejectedLogRecords: those
 *                     records dropped `rejected`, the rest delivered
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "brokertest.h"
#include "outbox.h"
#include "spotlight.h"
#include "upstream.h"

static struct obx_sink_page *g_sp;

static const struct obx_sink_shm *sink_of(const struct obx_sink_page *sp,
					  const char *name)
{
	uint32_t i;

	for (i = 0; i < sp->nsinks && i < OBX_MAX_SINKS; i++)
		if (!strcmp(sp->sink[i].name, name))
			return &sp->sink[i];
	CU_FAIL_FATAL("sink not on the sink page");
	return NULL;
}

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

static int wait_log(const struct bt *t, const char *what, int n, int ms)
{
	int i;

	for (i = 0; i < ms; i += 50) {
		if (log_count(t, what) >= n)
			return 0;
		usleep(50000);
	}
	return -1;
}

/* Emits from `np` forked producers: producer p sends n events of type
 * types[k % ntypes] with body {"p":P,"s":S}, one every `gap_us`. */
static void emit_from(const struct bt *t, const char *sink, unsigned np,
		      unsigned n, const char *const *types, unsigned ntypes,
		      unsigned gap_us)
{
	pid_t pid[16];
	unsigned p;
	int st;

	for (p = 0; p < np; p++) {
		pid[p] = fork();
		CU_ASSERT_FATAL(pid[p] >= 0);
		if (pid[p] == 0) {
			obx_t *h = bt_open(t->shm);
			int id = h ? obx_sink(h, sink) : -1;
			unsigned s;

			if (id < 0)
				_exit(2);
			for (s = 0; s < n; s++) {
				char body[64];
				int len = snprintf(body, sizeof(body),
						   "{\"p\":%u,\"s\":%u}", p, s);

				if (obx_emit(h, id, types[s % ntypes], body,
					     (size_t)len, OBX_BODY_JSON) != 0)
					_exit(3);
				if (gap_us)
					usleep(gap_us);
			}
			obx_close(h);
			_exit(0);
		}
	}
	for (p = 0; p < np; p++) {
		CU_ASSERT_EQUAL(waitpid(pid[p], &st, 0), pid[p]);
		CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
}

/* Waits until sink's delivered + dropped reaches want and nothing is in
 * flight; 0 or -1. */
static int wait_settled(struct bt *t, const char *sink, uint64_t want,
			int ms)
{
	struct obx_stats g;
	int i;

	for (i = 0; i < ms; i += 50) {
		if (bt_stats(t, &g, g_sp) == 0) {
			const struct obx_sink_counters *c =
				&sink_of(g_sp, sink)->c;
			uint64_t d = c->delivered_events + c->dropped_rejected +
				     c->dropped_rate_limited +
				     c->dropped_too_large + c->dropped_invalid;

			if (d >= want && c->inflight == 0 &&
			    c->queued_events == 0)
				return 0;
		}
		usleep(50000);
	}
	return -1;
}

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

/* the decoded body of a captured request, parsed as JSON */
static json_t *req_json(const json_t *r)
{
	const char *b = json_string_value(json_object_get(r, "body"));

	return b ? json_loads(b, 0, NULL) : NULL;
}

static int req_status_ok(const json_t *r)
{
	json_int_t st = json_integer_value(json_object_get(r, "status"));

	return st >= 200 && st < 300;
}

static const char *req_header(const json_t *r, const char *name)
{
	return json_string_value(json_array_get(json_object_get(
		json_object_get(r, "headers"), name), 0));
}

/* ---- segment --------------------------------------------------------------- */

static void segment_conf(char *buf, size_t cap, const char *extra)
{
	snprintf(buf, cap, "[sink seg]\ntype = segment\nurl = %s/v1/batch\n"
		 "write_key = wk_test\nflush_interval = 50ms\n"
		 "backoff_base = 200ms\nbackoff_max = 1s\n%s", up_base(),
		 extra ? extra : "");
}

/* every messageId of a captured Segment request, joined by ',' */
static void seg_ids(const json_t *r, char *out, size_t cap)
{
	json_t *j = req_json(r), *e;
	size_t i, n = 0;

	out[0] = 0;
	json_array_foreach(json_object_get(j, "batch"), i, e)
		n += (size_t)snprintf(out + n, n < cap ? cap - n : 0, "%s,",
			json_string_value(json_object_get(e, "messageId")));
	json_decref(j);
}

static void test_segment_batches(void)
{
	static const char *const types[] = { "track", "identify" };
	char conf[1024], ids1[4096], ids2[4096], ids3[4096];
	char big[41000];
	json_t *reqs, *j, *e;
	struct obx_counters pc;
	struct obx_stats g;
	struct bt t;
	obx_t *h;
	size_t i;
	int sink;

	segment_conf(conf, sizeof(conf), NULL);
	CU_ASSERT_EQUAL_FATAL(up_reset(), 0);
	/* the first batch is refused once (503): retried as is */
	CU_ASSERT_EQUAL_FATAL(up_script("{\"steps\":[{\"status\":503}],"
					"\"then\":{\"status\":200}}"), 0);
	CU_ASSERT_FATAL(bt_init(&t, "seg", NULL, conf) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	emit_from(&t, "seg", 4, 5, types, 2, 0);
	/* one event over the 32 KB message limit: the producer knows the
	 * sink's limit (published on the sink page) and drops it at once,
	 * counted too_large, before it takes ring space */
	h = bt_open(t.shm);
	CU_ASSERT_FATAL(h != NULL);
	sink = obx_sink(h, "seg");
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	CU_ASSERT_EQUAL(sink_of(g_sp, "seg")->event_max, 32 * 1024);
	memset(big, 'x', sizeof(big));
	memcpy(big, "{\"s\":\"", 6);
	memcpy(big + sizeof(big) - 2, "\"}", 2);
	CU_ASSERT_EQUAL(obx_emit(h, sink, "track", big, sizeof(big),
				 OBX_BODY_JSON), -EMSGSIZE);
	CU_ASSERT_EQUAL(obx_counters(h, &pc), 0);
	CU_ASSERT_EQUAL(pc.dropped_too_large, 1);
	/* a msgpack body's JSON size is the broker's to tell: it drops it
	 * (the same 40 KB string as a map member) */
	{
		struct obx_rsv r;

		CU_ASSERT_EQUAL_FATAL(obx_reserve(h, sink, "track",
						  sizeof(big) + 16, &r), 0);
		msgpack_pack_map(&r.pk, 1);
		msgpack_pack_str_with_body(&r.pk, "s", 1);
		msgpack_pack_str_with_body(&r.pk, big, sizeof(big));
		CU_ASSERT_EQUAL(obx_commit(h, &r), 0);
	}
	obx_close(h);
	CU_ASSERT_EQUAL(wait_settled(&t, "seg", 21, 10000), 0);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	CU_ASSERT_EQUAL(sink_of(g_sp, "seg")->c.delivered_events, 20);
	CU_ASSERT_EQUAL(sink_of(g_sp, "seg")->c.dropped_too_large, 1);
	/* the producer's drop is a global too_large (the ring's counter) */
	CU_ASSERT_EQUAL(g.dropped_too_large, 1);

	reqs = up_requests(0, 1);
	CU_ASSERT_FATAL(reqs != NULL && json_array_size(reqs) >= 2);
	/* the 503'd request and its retry carry the same messageIds */
	seg_ids(json_array_get(reqs, 0), ids1, sizeof(ids1));
	seg_ids(json_array_get(reqs, 1), ids2, sizeof(ids2));
	CU_ASSERT(ids1[0] != 0);
	CU_ASSERT_STRING_EQUAL(ids1, ids2);
	json_array_foreach(reqs, i, e) {
		const char *ct = req_header(e, "content-type");

		CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e,
					"path")), "/v1/batch");
		/* base64("wk_test:") */
		CU_ASSERT_STRING_EQUAL(req_header(e, "authorization"),
				       "Basic d2tfdGVzdDo=");
		CU_ASSERT_STRING_EQUAL(req_header(e, "content-encoding"),
				       "gzip");
		CU_ASSERT(ct && !strcmp(ct, "application/json"));
		j = req_json(e);
		CU_ASSERT(json_is_array(json_object_get(j, "batch")));
		CU_ASSERT(json_is_string(json_object_get(j, "sentAt")));
		{
			json_t *ev0 = json_array_get(json_object_get(j,
							"batch"), 0);
			const char *mid = json_string_value(
				json_object_get(ev0, "messageId"));
			const char *ty = json_string_value(
				json_object_get(ev0, "type"));

			CU_ASSERT(mid && strlen(mid) == 32);
			CU_ASSERT(ty && (!strcmp(ty, "track") ||
					 !strcmp(ty, "identify")));
			CU_ASSERT(json_is_string(json_object_get(ev0,
							"timestamp")));
		}
		json_decref(j);
	}
	CU_ASSERT_EQUAL(up_stat("unique"), 20);
	json_decref(reqs);

	/* a restart: events spooled while the upstream fails go out after
	 * it with the messageIds they had */
	CU_ASSERT_EQUAL(up_reset(), 0);
	CU_ASSERT_EQUAL(up_script("{\"steps\":[],\"then\":{\"status\":500}}"),
			0);
	emit_from(&t, "seg", 1, 3, types, 1, 0);
	for (i = 0; i < 100 && up_stat("requests") < 1; i++)
		usleep(50000);
	reqs = up_requests(0, 1);
	CU_ASSERT_FATAL(reqs && json_array_size(reqs) >= 1);
	seg_ids(json_array_get(reqs, 0), ids1, sizeof(ids1));
	json_decref(reqs);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	CU_ASSERT_EQUAL(up_reset(), 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	for (i = 0; i < 100 && up_stat("events") < 3; i++)
		usleep(50000);
	reqs = up_requests(0, 1);
	CU_ASSERT_FATAL(reqs && json_array_size(reqs) >= 1);
	seg_ids(json_array_get(reqs, 0), ids3, sizeof(ids3));
	json_decref(reqs);
	printf("\n    before the restart: %s\n    after it:           %s",
	       ids1, ids3);
	CU_ASSERT(ids1[0] != 0);
	CU_ASSERT_STRING_EQUAL(ids1, ids3);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

static void test_segment_settings(void)
{
	char conf[2048], script[2048];
	struct bt t;

	snprintf(conf, sizeof(conf), "[sink seg]\ntype = segment\n"
		 "url = %s/v1/batch\nwrite_key = k\nsettings_url = "
		 "%s/v1/projects/k/settings\nsettings_interval = 1s\n",
		 up_base(), up_base());
	CU_ASSERT_EQUAL_FATAL(up_reset(), 0);
	/* at start: settings; then a bad document on every fetch */
	snprintf(script, sizeof(script), "{\"steps\":[{\"status\":200,"
		 "\"body\":\"{\\\"integrations\\\":{\\\"Segment.io\\\":"
		 "{\\\"httpConfig\\\":{\\\"backoffConfig\\\":"
		 "{\\\"maxRetryCount\\\":3,\\\"jitterPercent\\\":90}}}}}\"}],"
		 "\"then\":{\"status\":200,\"body\":\"{not json\"}}");
	CU_ASSERT_EQUAL_FATAL(up_script(script), 0);
	CU_ASSERT_FATAL(bt_init(&t, "segset", NULL, conf) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	CU_ASSERT_EQUAL(wait_log(&t, "CDN settings applied: max_retries=3 "
				 "backoff_jitter=50%", 1, 5000), 0);
	/* three more fetches of the bad document: one log line */
	usleep(3500000);
	CU_ASSERT(up_stat("requests") >= 4);
	CU_ASSERT_EQUAL(log_count(&t, "settings_url: not a JSON object"), 1);
	/* changed at runtime */
	CU_ASSERT_EQUAL(up_script("{\"steps\":[],\"then\":{\"status\":200,"
		"\"body\":\"{\\\"integrations\\\":{\\\"Segment.io\\\":"
		"{\\\"httpConfig\\\":{\\\"backoffConfig\\\":"
		"{\\\"maxRetryCount\\\":7}}}}}\"}}"), 0);
	CU_ASSERT_EQUAL(wait_log(&t, "CDN settings applied: max_retries=7",
				 1, 5000), 0);
	CU_ASSERT_EQUAL(log_count(&t, "CDN settings applied"), 2);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

/* ---- sentry ------------------------------------------------------------------ */

/* Sums the client reports' quantities for (reason, category) in every
 * captured request; *events counts items by type `type`. */
static uint64_t sentry_scan(const json_t *reqs, const char *reason,
			    const char *cat, const char *type,
			    uint64_t *events)
{
	uint64_t sum = 0;
	size_t i;
	json_t *r;

	*events = 0;
	json_array_foreach(reqs, i, r) {
		const char *b = json_string_value(json_object_get(r, "body"));
		char *copy, *line, *save = NULL;

		if (!b || req_status_ok(r) == 0)
			continue;
		copy = strdup(b);
		for (line = strtok_r(copy, "\n", &save); line;
		     line = strtok_r(NULL, "\n", &save)) {
			json_t *j = json_loads(line, 0, NULL), *d, *e;
			size_t k;

			if (json_is_string(json_object_get(j, "type")) &&
			    !strcmp(json_string_value(json_object_get(j,
						"type")), type))
				(*events)++;
			d = json_object_get(j, "discarded_events");
			json_array_foreach(d, k, e)
				if (!strcmp(json_string_value(json_object_get(
						e, "reason")), reason) &&
				    !strcmp(json_string_value(json_object_get(
						e, "category")), cat))
					sum += (uint64_t)json_integer_value(
						json_object_get(e, "quantity"));
			json_decref(j);
		}
		free(copy);
	}
	return sum;
}

/* A broker with a sentry sink "sentry" (settings `extra`) behind the fake
 * upstream, which refuses the first envelope with a 429 carrying
 * X-Sentry-Rate-Limits: `limits` and accepts everything after. One error
 * event is emitted and refused; returns the wall time of that 429. */
static double sentry_refused_start(struct bt *t, const char *tag,
				   const char *extra, const char *limits)
{
	static const char *const err[] = { "error" };
	char conf[1024], script[512];
	json_t *reqs;
	double at;
	int i;

	snprintf(conf, sizeof(conf), "[sink sentry]\ntype = sentry\n"
		 "dsn = http://pubkey@127.0.0.1:%d/5\nflush_interval = 20ms\n"
		 "compression = none\n%s", up_port(), extra);
	snprintf(script, sizeof(script), "{\"steps\":[{\"status\":429,"
		 "\"headers\":{\"X-Sentry-Rate-Limits\":\"%s\"}}],"
		 "\"then\":{\"status\":200}}", limits);
	CU_ASSERT_EQUAL_FATAL(up_reset(), 0);
	CU_ASSERT_EQUAL_FATAL(up_script(script), 0);
	CU_ASSERT_FATAL(bt_init(t, tag, NULL, conf) == 0);
	CU_ASSERT_FATAL(bt_start(t) == 0);
	emit_from(t, "sentry", 1, 1, err, 1, 0);
	for (i = 0; i < 250 && up_stat("requests") < 1; i++)
		usleep(20000);
	reqs = up_requests(0, 0);
	CU_ASSERT_FATAL(reqs && json_array_size(reqs) >= 1);
	at = json_real_value(json_object_get(json_array_get(reqs, 0),
					     "time"));
	json_decref(reqs);
	return at;
}

/* One more transaction after the client report interval (1 s), to carry
 * the last client report; once the sink settled at `total` events: the
 * sink's counters, and from every 2xx request the ratelimit_backoff
 * quantity reported for errors, the transactions and the error items. */
static const struct obx_sink_shm *sentry_last_report(struct bt *t,
						     uint64_t total,
						     uint64_t *reported,
						     uint64_t *tx,
						     uint64_t *errors_sent)
{
	static const char *const txn[] = { "transaction" };
	struct obx_stats g;
	json_t *reqs;

	usleep(1100000);
	emit_from(t, "sentry", 1, 1, txn, 1, 0);
	CU_ASSERT_EQUAL(wait_settled(t, "sentry", total, 10000), 0);
	CU_ASSERT_EQUAL(bt_stats(t, &g, g_sp), 0);
	reqs = up_requests(0, 1);
	CU_ASSERT_FATAL(reqs != NULL);
	*reported = sentry_scan(reqs, "ratelimit_backoff", "error",
				"transaction", tx);
	(void)sentry_scan(reqs, "ratelimit_backoff", "error", "event",
			  errors_sent);
	json_decref(reqs);
	return sink_of(g_sp, "sentry");
}

/* The output of `outbox stat -s SHM ARGS` (malloc'd, NUL-terminated), or
 * NULL. */
static char *stat_out(const struct bt *t, const char *args)
{
	char cmd[700];
	struct up_sbuf o = { NULL, 0 };
	char chunk[4096];
	size_t n;
	FILE *f;

	snprintf(cmd, sizeof(cmd), "%s stat -s %s %s", bt_bin("outbox"),
		 t->shm, args);
	f = popen(cmd, "r");
	if (!f)
		return NULL;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		up_sbuf_write(chunk, 1, n, &o);
	pclose(f);
	up_sbuf_write("", 1, 1, &o);
	return o.p;
}

/* Drops by category of sink `sink` on the page copy: count of (cat,
 * reason), 0 when there is no such entry. */
static uint64_t cat_dropped(const struct obx_sink_page *sp, const char *sink,
			    const char *cat, uint8_t reason)
{
	uint32_t j, idx = (uint32_t)(sink_of(sp, sink) - sp->sink);

	for (j = 0; j < sp->ncat_drops && j < OBX_MAX_CAT_DROPS; j++)
		if (sp->cat_drops[j].sink == idx &&
		    sp->cat_drops[j].reason == reason &&
		    !strncmp(sp->cat_drops[j].cat, cat, OBX_CAT_MAX))
			return sp->cat_drops[j].n;
	return 0;
}

/* Operators see the drops by category: the sink page, `outbox stat`
 * (text, --json, --prometheus). */
static void check_cat_drops(const struct bt *t, const char *cat,
			    const char *reason, uint8_t r, uint64_t want)
{
	char line[256], *txt, *js, *prom;
	json_t *j;

	CU_ASSERT_EQUAL(cat_dropped(g_sp, "sentry", cat, r), want);
	txt = stat_out(t, "");
	js = stat_out(t, "--json");
	prom = stat_out(t, "--prometheus");
	CU_ASSERT_FATAL(txt && js && prom);
	snprintf(line, sizeof(line), "%" PRIu64 "  category %s, %s", want, cat,
		 reason);
	CU_ASSERT_PTR_NOT_NULL(strstr(txt, line));
	j = json_loads(js, 0, NULL);
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(
		json_object_get(json_object_get(json_object_get(j, "sinks"),
		"sentry"), "dropped_by_category"), cat), reason)),
		(json_int_t)want);
	json_decref(j);
	snprintf(line, sizeof(line), "outbox_sink_category_events_dropped_total"
		 "{sink=\"sentry\",category=\"%s\",reason=\"%s\"} %" PRIu64 "\n",
		 cat, reason, want);
	CU_ASSERT_PTR_NOT_NULL(strstr(prom, line));
	if (!strstr(prom, line))
		printf("\n    no '%s' in:\n%s", line, prom);
	free(txt);
	free(js);
	free(prom);
}

static void test_sentry_categories(void)
{
	static const char *const types[] = { "error", "transaction" };
	const struct obx_sink_shm *ss;
	struct obx_stats g;
	uint64_t reported, tx, errors_sent;
	json_t *reqs;
	struct bt t;
	int i, seen_cat = 0;

	/* the first envelope (an error) is refused with a limit on the
	 * error category: 3 s, organization scope */
	sentry_refused_start(&t, "sentry", "client_report_interval = 1s\n",
			     "3:error:organization");
	/* 4 producers x 20 events, errors and transactions alternating,
	 * over ~1 s: all inside the 3 s limit */
	emit_from(&t, "sentry", 4, 20, types, 2, 50000);
	for (i = 0; i < 40; i++) {
		if (bt_stats(&t, &g, g_sp) == 0) {
			ss = sink_of(g_sp, "sentry");
			if (ss->ncats == 1 && !strcmp(ss->cats[0], "error"))
				seen_cat = 1;
		}
		if (seen_cat)
			break;
		usleep(50000);
	}
	CU_ASSERT(seen_cat);
	CU_ASSERT_EQUAL(wait_settled(&t, "sentry", 81, 10000), 0);
	/* the category leaves the sink page when it expires */
	for (i = 0; i < 100; i++) {
		CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
		if (sink_of(g_sp, "sentry")->ncats == 0)
			break;
		usleep(50000);
	}
	CU_ASSERT_EQUAL(sink_of(g_sp, "sentry")->ncats, 0);
	ss = sentry_last_report(&t, 82, &reported, &tx, &errors_sent);
	printf("\n    sentry: delivered %llu, dropped_rate_limited %llu, "
	       "client reports say %llu; transactions in 2xx %llu, error "
	       "items sent %llu",
	       (unsigned long long)ss->c.delivered_events,
	       (unsigned long long)ss->c.dropped_rate_limited,
	       (unsigned long long)reported, (unsigned long long)tx,
	       (unsigned long long)errors_sent);
	/* every transaction delivered, every error dropped: the first by
	 * the 429, the rest before batching */
	CU_ASSERT_EQUAL(tx, 41);
	CU_ASSERT_EQUAL(ss->c.dropped_rate_limited, 41);
	CU_ASSERT_EQUAL(ss->c.delivered_events, 41);
	CU_ASSERT_EQUAL(errors_sent, 0);
	CU_ASSERT_EQUAL(reported, ss->c.dropped_rate_limited);
	/* by category where operators look */
	check_cat_drops(&t, "error", "rate_limited", OBX_DROP_RATE_LIMITED,
			41);
	CU_ASSERT_EQUAL(g_sp->ncat_drops, 1);
	/* a restarted broker continues them */
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	usleep(300000);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	CU_ASSERT_EQUAL(cat_dropped(g_sp, "sentry", "error",
				    OBX_DROP_RATE_LIMITED), 41);
	/* X-Sentry-Auth on every request */
	reqs = up_requests(0, 0);
	CU_ASSERT_FATAL(reqs != NULL);
	{
		const char *a = req_header(json_array_get(reqs, 0),
					   "x-sentry-auth");

		CU_ASSERT(a && strstr(a, "sentry_key=pubkey") &&
			  strstr(a, "sentry_version=7"));
		CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(
			json_array_get(reqs, 0), "path")), "/api/5/envelope/");
	}
	json_decref(reqs);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

/* Event ids of the items of type `type` in the 2xx requests: *n items,
 * *dups repeated ids, the earliest and latest request time carrying one. */
static void sentry_ids(const json_t *reqs, const char *type, size_t *n,
		       size_t *dups, double *t_first, double *t_last)
{
	json_t *seen = json_object(), *r;
	size_t i;

	*n = *dups = 0;
	*t_first = *t_last = 0;
	json_array_foreach(reqs, i, r) {
		const char *b = json_string_value(json_object_get(r, "body"));
		double at = json_real_value(json_object_get(r, "time"));
		char *copy, *line, *save = NULL;
		int item = 0;

		if (!b || !req_status_ok(r))
			continue;
		copy = strdup(b);
		for (line = strtok_r(copy, "\n", &save); line;
		     line = strtok_r(NULL, "\n", &save)) {
			json_t *j = json_loads(line, 0, NULL);
			const char *t = json_string_value(json_object_get(j,
								"type"));
			const char *id;

			if (item && (id = json_string_value(json_object_get(j,
							"event_id")))) {
				if (json_object_get(seen, id))
					(*dups)++;
				json_object_set_new(seen, id, json_true());
				(*n)++;
				if (!*t_first || at < *t_first)
					*t_first = at;
				if (at > *t_last)
					*t_last = at;
			}
			/* the line after an item header of that type is
			 * its payload */
			item = t && !strcmp(t, type) &&
			       json_object_get(j, "length");
			json_decref(j);
		}
		free(copy);
	}
	json_decref(seen);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* on_rate_limit = hold under load: a 429 limiting the error category
 * for 6 s. Transactions of every producer keep flowing during the window
 * (the sink stays ok), the errors wait - far more of them than the
 * batches the sink may have in memory (max_inflight x batch_max_events
 * = 20): they wait in the spool - and are delivered after it, each once;
 * nothing is dropped. */
static void test_sentry_hold(void)
{
	static const char *const types[] = { "error", "transaction" };
	const struct obx_sink_shm *ss;
	struct obx_stats g;
	double t429, end, tx_first, tx_last, er_first, er_last;
	size_t ntx, nerr, dups;
	uint64_t deliv, queued, drops;
	json_t *reqs;
	struct bt t;
	int i;

	t429 = sentry_refused_start(&t, "sentryhold", "on_rate_limit = hold\n"
				    "max_inflight = 2\nbatch_max_events = 10\n",
				    "6:error:organization");
	end = t429 + 6.0;
	/* 4 producers x 60 events, errors and transactions alternating */
	emit_from(&t, "sentry", 4, 60, types, 2, 5000);
	/* every transaction is delivered inside the window */
	for (i = 0; i < 400 && now_s() < end - 0.5; i++) {
		CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
		if (sink_of(g_sp, "sentry")->c.delivered_events >= 120)
			break;
		usleep(20000);
	}
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	ss = sink_of(g_sp, "sentry");
	printf("\n    %.1f s into the 6 s error limit: %llu delivered, state "
	       "%u, %u categories limited, %llu held in the spool",
	       now_s() - t429, (unsigned long long)ss->c.delivered_events,
	       ss->state, ss->ncats, (unsigned long long)ss->c.held_events);
	CU_ASSERT(now_s() < end);
	CU_ASSERT_EQUAL(ss->c.delivered_events, 120);
	CU_ASSERT_EQUAL(ss->state, OBX_SINK_OK);
	CU_ASSERT(ss->ncats == 1 && !strcmp(ss->cats[0], "error"));
	/* the 121 errors: held, outside the batches in memory */
	CU_ASSERT_EQUAL(ss->c.held_events, 121);
	CU_ASSERT(ss->c.inflight <= 2);

	/* a broker restart inside the window: the limit (persisted) still
	 * holds the errors, which the spool still has; the transactions
	 * are not sent again */
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	for (i = 0; i < 200; i++) {
		CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
		if (sink_of(g_sp, "sentry")->c.held_events == 121)
			break;
		usleep(20000);
	}
	ss = sink_of(g_sp, "sentry");
	printf("\n    restarted %.1f s into the window: %llu held again",
	       now_s() - t429, (unsigned long long)ss->c.held_events);
	CU_ASSERT(now_s() < end);
	CU_ASSERT_EQUAL(ss->c.held_events, 121);

	/* after the window: the errors, each once; nothing dropped */
	CU_ASSERT_EQUAL(wait_settled(&t, "sentry", 241, 20000), 0);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	ss = sink_of(g_sp, "sentry");
	CU_ASSERT_EQUAL(ss->c.delivered_events, 241);
	CU_ASSERT_EQUAL(ss->c.held_events, 0);
	drops = bt_sum_dropped(&g, g_sp, &deliv, &queued);
	CU_ASSERT_EQUAL(drops, 0);
	CU_ASSERT_EQUAL(g.emitted, deliv + drops + queued);
	reqs = up_requests(0, 1);
	CU_ASSERT_FATAL(reqs != NULL);
	sentry_ids(reqs, "transaction", &ntx, &dups, &tx_first, &tx_last);
	CU_ASSERT_EQUAL(ntx, 120);
	CU_ASSERT_EQUAL(dups, 0);
	sentry_ids(reqs, "event", &nerr, &dups, &er_first, &er_last);
	printf("\n    transactions %zu delivered %.2f..%.2f s after the 429, "
	       "errors %zu delivered %.2f..%.2f s after it (window 6 s), "
	       "%zu duplicates", ntx, tx_first - t429, tx_last - t429, nerr,
	       er_first - t429, er_last - t429, dups);
	CU_ASSERT_EQUAL(nerr, 121);
	CU_ASSERT_EQUAL(dups, 0);
	CU_ASSERT(tx_last < end);
	CU_ASSERT(er_first >= end - 0.05);
	json_decref(reqs);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

/* hold is bounded by max_rate_limit_duration: records held longer are
 * dropped (rate_limited) when their category opens again, counted and
 * reported to Sentry (ratelimit_backoff), never sent late. */
static void test_sentry_hold_expired(void)
{
	static const char *const types[] = { "error", "transaction" };
	const struct obx_sink_shm *ss;
	struct obx_stats g;
	uint64_t reported, tx, errors_sent, deliv, queued, drops;
	struct bt t;

	sentry_refused_start(&t, "sentryexp", "on_rate_limit = hold\n"
			     "max_rate_limit_duration = 1s\n"
			     "client_report_interval = 1s\n", "2:error:key");
	emit_from(&t, "sentry", 3, 2, types, 2, 0);
	/* 3 transactions go, 4 errors are held and then dropped */
	CU_ASSERT_EQUAL(wait_settled(&t, "sentry", 7, 10000), 0);
	ss = sentry_last_report(&t, 8, &reported, &tx, &errors_sent);
	printf("\n    held past max_rate_limit_duration: %llu dropped "
	       "rate_limited, %llu reported; %llu delivered",
	       (unsigned long long)ss->c.dropped_rate_limited,
	       (unsigned long long)reported,
	       (unsigned long long)ss->c.delivered_events);
	CU_ASSERT_EQUAL(ss->c.dropped_rate_limited, 4);
	CU_ASSERT_EQUAL(ss->c.delivered_events, 4);
	CU_ASSERT_EQUAL(ss->c.held_events, 0);
	CU_ASSERT_EQUAL(tx, 4);
	CU_ASSERT_EQUAL(errors_sent, 0);
	CU_ASSERT_EQUAL(reported, 4);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	check_cat_drops(&t, "error", "rate_limited", OBX_DROP_RATE_LIMITED, 4);
	ss = sink_of(g_sp, "sentry");
	CU_ASSERT_EQUAL(ss->c.held_events, 0);
	drops = bt_sum_dropped(&g, g_sp, &deliv, &queued);
	CU_ASSERT_EQUAL(g.emitted, deliv + drops + queued);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

/* ---- otlp, decoded by the OpenTelemetry project's code ------------------ */

/* tests/node with its packages installed (tools/install-deps), or NULL */
static const char *node_dir(void)
{
	static char dir[600];
	char exe[700];
	ssize_t n = readlink("/proc/self/exe", exe, 500);
	char *sl;
	int i;

	if (access("tests/node/node_modules/.installed", R_OK) == 0)
		return "tests/node";
	if (n <= 0)
		return NULL;
	exe[n] = 0;
	for (i = 0; i < 3 && (sl = strrchr(exe, '/')); i++)
		*sl = 0;
	snprintf(dir, sizeof(dir), "%.500s/tests/node", exe);
	snprintf(exe, sizeof(exe), "%.600s/node_modules/.installed", dir);
	return access(exe, R_OK) == 0 ? dir : NULL;
}

static void test_otlp_decoder(void)
{
	static const char *const types[] = { "log" };
	const char *nd = node_dir();
	char conf[1024], cmd[1400], tmp[300], line[1 << 16];
	json_t *reqs, *r, *res;
	struct obx_stats g;
	struct bt t;
	FILE *f;
	size_t i;

	if (!nd || system("node --version >/dev/null 2>&1") != 0) {
		printf("\n    SKIPPED: node or tests/node/node_modules missing "
		       "(tools/install-deps installs them with npm)");
		return;
	}
	snprintf(conf, sizeof(conf), "[sink otel]\ntype = otlp\nurl = %s\n"
		 "service_name = test-svc\nflush_interval = 50ms\n"
		 "batch_max_events = 50\n", up_base());
	CU_ASSERT_EQUAL_FATAL(up_reset(), 0);
	CU_ASSERT_FATAL(bt_init(&t, "otlp", NULL, conf) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	emit_from(&t, "otel", 4, 50, types, 1, 0);
	CU_ASSERT_EQUAL(wait_settled(&t, "otel", 200, 10000), 0);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	CU_ASSERT_EQUAL(sink_of(g_sp, "otel")->c.delivered_events, 200);
	reqs = up_requests(0, 1);
	CU_ASSERT_FATAL(reqs != NULL);
	/* every captured body, one JSON string a line, to the decoder */
	snprintf(tmp, sizeof(tmp), "%s/bodies.jsonl", t.dir);
	f = fopen(tmp, "w");
	CU_ASSERT_FATAL(f != NULL);
	json_array_foreach(reqs, i, r) {
		CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r,
					"path")), "/v1/logs");
		json_dumpf(json_object_get(r, "body"), f, JSON_ENCODE_ANY);
		fputc('\n', f);
	}
	fclose(f);
	json_decref(reqs);
	snprintf(cmd, sizeof(cmd), "node '%s/otlp-decode.js' < '%s'", nd,
		 tmp);
	f = popen(cmd, "r");
	CU_ASSERT_FATAL(f != NULL);
	if (!fgets(line, sizeof(line), f))
		line[0] = 0;
	CU_ASSERT_EQUAL(pclose(f), 0);
	res = json_loads(line, 0, NULL);
	CU_ASSERT_FATAL(res != NULL);
	CU_ASSERT(json_is_true(json_object_get(res, "ok")));
	if (!json_is_true(json_object_get(res, "ok")))
		printf("\n    decoder: %.300s", line);
	/* every event once, with its own log.record.uid */
	CU_ASSERT_EQUAL(json_integer_value(json_object_get(res, "records")),
			200);
	{
		json_t *u = json_object_get(res, "uids"), *seen = json_object();

		json_array_foreach(u, i, r)
			json_object_set(seen, json_string_value(r), r);
		CU_ASSERT_EQUAL(json_object_size(seen), 200);
		json_decref(seen);
	}
	printf("\n    OpenTelemetry's ExportLogsServiceRequest decoded %lld "
	       "log records", (long long)json_integer_value(
		       json_object_get(res, "records")));
	json_decref(res);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

/* OTLP partial success: a 200 whose answer says 2 of the 10 log records
 * were rejected - 8 delivered, 2 dropped `rejected`, logged once. */
static void test_otlp_partial(void)
{
	static const char *const types[] = { "log" };
	char conf[1024];
	const struct obx_sink_shm *ss;
	struct obx_stats g;
	uint64_t deliv, queued, drops;
	struct bt t;

	snprintf(conf, sizeof(conf), "[sink otel]\ntype = otlp\nurl = %s\n"
		 "flush_interval = 200ms\nbatch_max_events = 10\n", up_base());
	CU_ASSERT_EQUAL_FATAL(up_reset(), 0);
	CU_ASSERT_EQUAL_FATAL(up_script("{\"steps\":[{\"status\":200,"
		"\"body\":\"{\\\"partialSuccess\\\":{\\\"rejectedLogRecords\\\":"
		"\\\"2\\\",\\\"errorMessage\\\":\\\"2 records had no body\\\"}}\"}],"
		"\"then\":{\"status\":200}}"), 0);
	CU_ASSERT_FATAL(bt_init(&t, "otlppart", NULL, conf) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	emit_from(&t, "otel", 1, 10, types, 1, 0);
	CU_ASSERT_EQUAL(wait_settled(&t, "otel", 10, 10000), 0);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	ss = sink_of(g_sp, "otel");
	printf("\n    a 200 rejecting 2 of 10: %llu delivered, %llu dropped "
	       "rejected", (unsigned long long)ss->c.delivered_events,
	       (unsigned long long)ss->c.dropped_rejected);
	CU_ASSERT_EQUAL(ss->c.responses_2xx, 1);
	CU_ASSERT_EQUAL(ss->c.delivered_events, 8);
	CU_ASSERT_EQUAL(ss->c.dropped_rejected, 2);
	drops = bt_sum_dropped(&g, g_sp, &deliv, &queued);
	CU_ASSERT_EQUAL(g.emitted, deliv + drops + queued);
	CU_ASSERT_EQUAL(log_count(&t, "dropped 2 events (rejected, partial "
				  "success: 2 records had no body)"), 1);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

/* ---- sentry into Spotlight (a real envelope receiver) --------------------- */

/* event_id of an item payload (object or JSON text), or NULL */
static const char *sp_item_id(json_t *payload, json_t **tmp)
{
	*tmp = NULL;
	if (json_is_string(payload)) {
		*tmp = json_loads(json_string_value(payload), 0, NULL);
		payload = *tmp;
	}
	return json_string_value(json_object_get(payload, "event_id"));
}

static void test_spotlight(void)
{
	static const char *const types[] = { "error" };
	const char *why = NULL;
	char conf[1024];
	json_t *envs, *env, *seen;
	struct obx_stats g;
	struct bt t;
	size_t i, dup = 0, n_env = 0;

	if (sp_start(&why) < 0) {
		printf("\n    SKIPPED: Spotlight not available: %s", why);
		return;
	}
	snprintf(conf, sizeof(conf), "[sink sentry]\ntype = sentry\n"
		 "dsn = http://pubkey@127.0.0.1:%d/1\nflush_interval = 20ms\n",
		 sp_port());
	CU_ASSERT_FATAL(bt_init(&t, "spot", NULL, conf) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	/* 4 producers x 25 events (Spotlight keeps the last 500) */
	emit_from(&t, "sentry", 4, 25, types, 1, 0);
	CU_ASSERT_EQUAL(wait_settled(&t, "sentry", 100, 20000), 0);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, g_sp), 0);
	CU_ASSERT_EQUAL(sink_of(g_sp, "sentry")->c.delivered_events, 100);
	envs = sp_envelopes();
	seen = json_object();
	json_array_foreach(envs, i, env) {
		json_t *items = json_array_get(env, 1), *it;
		size_t k;

		n_env++;
		json_array_foreach(items, k, it) {
			json_t *tmp;
			const char *id = sp_item_id(json_array_get(it, 1), &tmp);

			if (id) {
				if (json_object_get(seen, id))
					dup++;
				json_object_set_new(seen, id, json_true());
			}
			json_decref(tmp);
		}
	}
	printf("\n    Spotlight parsed %zu envelopes, %zu distinct event ids, "
	       "%zu duplicates", n_env, json_object_size(seen), dup);
	CU_ASSERT_EQUAL(n_env, 100);
	CU_ASSERT_EQUAL(json_object_size(seen), 100);
	CU_ASSERT_EQUAL(dup, 0);
	json_decref(seen);
	json_decref(envs);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
	sp_stop();
}

static int add_suites(void)
{
	CU_pSuite s = CU_add_suite("upstreams", suite_init, suite_clean);

	if (!s ||
	    !CU_add_test(s, "segment_batches", test_segment_batches) ||
	    !CU_add_test(s, "segment_settings", test_segment_settings) ||
	    !CU_add_test(s, "sentry_categories", test_sentry_categories) ||
	    !CU_add_test(s, "sentry_hold", test_sentry_hold) ||
	    !CU_add_test(s, "sentry_hold_expired",
			 test_sentry_hold_expired) ||
	    !CU_add_test(s, "otlp_decoder", test_otlp_decoder) ||
	    !CU_add_test(s, "otlp_partial", test_otlp_partial) ||
	    !CU_add_test(s, "spotlight", test_spotlight))
		return -1;
	return 0;
}

TEST_MAIN(add_suites)
