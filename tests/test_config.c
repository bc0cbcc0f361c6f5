/* test_config.c - the outboxd configuration module (broker/config.c).
 *
 * Config files are written into a mkdtemp() directory and loaded with
 * errors captured through open_memstream(), so every error path is
 * checked for its exact "FILE:LINE: " prefix and its reason.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "config.h"

#include <errno.h>
#include <ini.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>

/* CUnit's string assertion calls strcmp() on NULL: this one fails */
#define ASSERT_STR(a, b)						\
	do {								\
		const char *a_ = (a), *b_ = (b);			\
		CU_assertImplementation(a_ && b_ && !strcmp(a_, b_),	\
					__LINE__, "ASSERT_STR(" #a ", " #b ")", \
					__FILE__, "", CU_FALSE);	\
	} while (0)

static char g_dir[] = "/tmp/obx-cfgtest-XXXXXX";
static int g_seq;

struct tload {
	struct cfg c;
	int rc;
	char path[256];
	char *err;		/* everything cfg_load() printed */
	size_t errlen;
};

static int suite_init(void)
{
	return mkdtemp(g_dir) ? 0 : -1;
}

static int suite_clean(void)
{
	return rmdir(g_dir);
}

static gid_t g_gid = (gid_t)-1;         /* t_write(): chown to it */

static void t_write(const char *path, const char *text, size_t len,
		    mode_t mode)
{
	FILE *f = fopen(path, "w");

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	CU_ASSERT_EQUAL(fwrite(text, 1, len, f), len);
	fclose(f);
	CU_ASSERT_EQUAL(chmod(path, mode), 0);
	if (g_gid != (gid_t)-1)
		CU_ASSERT_EQUAL(chown(path, (uid_t)-1, g_gid), 0);
}

static void t_newpath(char *buf, size_t len)
{
	snprintf(buf, len, "%s/c%04d.ini", g_dir, ++g_seq);
}

static int t_load_len(struct tload *t, const char *text, size_t len,
		      mode_t mode)
{
	FILE *e;

	t_newpath(t->path, sizeof(t->path));
	t_write(t->path, text, len, mode);
	t->err = NULL;
	e = open_memstream(&t->err, &t->errlen);
	CU_ASSERT_PTR_NOT_NULL_FATAL(e);
	t->rc = cfg_load(&t->c, t->path, e);
	fclose(e);
	return t->rc;
}

static int t_load_mode(struct tload *t, const char *text, mode_t mode)
{
	return t_load_len(t, text, strlen(text), mode);
}

static int t_load(struct tload *t, const char *text)
{
	return t_load_mode(t, text, 0600);
}

static void t_done(struct tload *t)
{
	cfg_free(&t->c);
	free(t->err);
	t->err = NULL;
	unlink(t->path);
}

/* Is there an error line "PATH:LINE: ..." containing what? */
static bool t_has(const struct tload *t, int line, const char *what)
{
	char prefix[300];
	const char *p = t->err;
	size_t n;

	n = (size_t)snprintf(prefix, sizeof(prefix), "%s:%d: ", t->path, line);
	while (p && *p) {
		const char *eol = strchr(p, '\n');
		size_t len = eol ? (size_t)(eol - p) : strlen(p);
		char *l = strndup(p, len);
		bool hit = len >= n && !strncmp(l, prefix, n) &&
			   strstr(l + n, what);

		free(l);
		if (hit)
			return true;
		p = eol ? eol + 1 : p + len;
	}
	return false;
}

static int t_lines(const struct tload *t)
{
	const char *p;
	int n = 0;

	for (p = t->err; p && *p; p++)
		n += *p == '\n';
	return n;
}

static bool t_warned(const struct tload *t)
{
	char prefix[300];

	snprintf(prefix, sizeof(prefix), "%s: warning: ", t->path);
	return t->err && strstr(t->err, prefix);
}

static char *t_print(const struct cfg *c)
{
	char *buf = NULL;
	size_t len;
	FILE *f = open_memstream(&buf, &len);

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	cfg_print(c, f);
	fclose(f);
	return buf;
}

static void assert_str_eq(const char *a, const char *b)
{
	if (!a || !b) {
		CU_ASSERT_PTR_EQUAL(a, b);
	} else {
		ASSERT_STR(a, b);
	}
}

static void assert_sink_eq(const struct cfg_sink *a, const struct cfg_sink *b)
{
	int i;

	ASSERT_STR(a->name, b->name);
	CU_ASSERT_EQUAL(a->type, b->type);
	assert_str_eq(a->path, b->path);
	assert_str_eq(a->url, b->url);
	assert_str_eq(a->write_key, b->write_key);
	assert_str_eq(a->dsn, b->dsn);
	assert_str_eq(a->token_file, b->token_file);
	CU_ASSERT_EQUAL_FATAL(a->nheaders, b->nheaders);
	for (i = 0; i < a->nheaders; i++)
		assert_str_eq(a->headers[i], b->headers[i]);
	CU_ASSERT_EQUAL(a->encoding, b->encoding);
	CU_ASSERT_EQUAL(a->batch_max_events, b->batch_max_events);
	CU_ASSERT_EQUAL(a->batch_max_bytes, b->batch_max_bytes);
	CU_ASSERT_EQUAL(a->event_max_bytes, b->event_max_bytes);
	CU_ASSERT_EQUAL(a->flush_interval_ms, b->flush_interval_ms);
	CU_ASSERT_EQUAL(a->max_inflight, b->max_inflight);
	CU_ASSERT_EQUAL(a->connect_timeout_ms, b->connect_timeout_ms);
	CU_ASSERT_EQUAL(a->timeout_ms, b->timeout_ms);
	CU_ASSERT_EQUAL(a->compression, b->compression);
	CU_ASSERT_EQUAL(a->backoff_base_ms, b->backoff_base_ms);
	CU_ASSERT_EQUAL(a->backoff_max_ms, b->backoff_max_ms);
	CU_ASSERT_EQUAL(a->backoff_jitter_pct, b->backoff_jitter_pct);
	CU_ASSERT_EQUAL(a->max_retries, b->max_retries);
	CU_ASSERT_EQUAL(a->max_backoff_duration_ms, b->max_backoff_duration_ms);
	CU_ASSERT_EQUAL(a->retry_after_max_ms, b->retry_after_max_ms);
	CU_ASSERT_EQUAL(a->max_rate_limit_duration_ms,
			b->max_rate_limit_duration_ms);
	CU_ASSERT_EQUAL(a->on_rate_limit, b->on_rate_limit);
	CU_ASSERT_EQUAL_FATAL(a->nstatus, b->nstatus);
	for (i = 0; i < a->nstatus; i++) {
		CU_ASSERT_EQUAL(a->status[i].code, b->status[i].code);
		CU_ASSERT_EQUAL(a->status[i].action, b->status[i].action);
	}
}

/* every field but file and the sinks' header lines */
static void assert_cfg_eq(const struct cfg *a, const struct cfg *b)
{
	int i;

	ASSERT_STR(a->shm, b->shm);
	CU_ASSERT_EQUAL(a->shm_mode, b->shm_mode);
	CU_ASSERT_EQUAL(a->ring_size, b->ring_size);
	CU_ASSERT_EQUAL(a->max_record, b->max_record);
	CU_ASSERT_EQUAL(a->producer_slots, b->producer_slots);
	assert_str_eq(a->spool_dir, b->spool_dir);
	CU_ASSERT_EQUAL(a->spool_max, b->spool_max);
	CU_ASSERT_EQUAL(a->spool_full, b->spool_full);
	CU_ASSERT_EQUAL(a->durability, b->durability);
	CU_ASSERT_EQUAL(a->sync_interval_ms, b->sync_interval_ms);
	CU_ASSERT_EQUAL(a->shutdown_timeout_ms, b->shutdown_timeout_ms);
	CU_ASSERT_EQUAL(a->log_level, b->log_level);
	CU_ASSERT_EQUAL(a->segment_size, b->segment_size);
	CU_ASSERT_EQUAL(a->stall_timeout_ms, b->stall_timeout_ms);
	CU_ASSERT_EQUAL(a->stall_action, b->stall_action);
	CU_ASSERT_EQUAL(a->drain_latency_ms, b->drain_latency_ms);
	CU_ASSERT_EQUAL(a->sink_threads, b->sink_threads);
	CU_ASSERT_EQUAL_FATAL(a->nsinks, b->nsinks);
	for (i = 0; i < a->nsinks; i++)
		assert_sink_eq(&a->sinks[i], &b->sinks[i]);
}

/* ---- units -------------------------------------------------------------- */

static void test_size_units(void)
{
	static const struct { const char *s; uint64_t v; } good[] = {
		{ "0", 0 }, { "1", 1 }, { "475000", 475000 },
		{ "100B", 100 }, { "100b", 100 },
		{ "1K", 1024 }, { "1k", 1024 }, { "2KB", 2048 },
		{ "2kb", 2048 }, { "3KiB", 3072 }, { "3kib", 3072 },
		{ "64M", 64ull << 20 }, { "64m", 64ull << 20 },
		{ "64MB", 64ull << 20 }, { "64MiB", 64ull << 20 },
		{ "1G", 1ull << 30 }, { "1gb", 1ull << 30 },
		{ "16GiB", 16ull << 30 }, { "8 M", 8ull << 20 },
		{ "0K", 0 }, { "007K", 7 * 1024 },
		{ "18446744073709551615", UINT64_MAX },
		{ "17179869183G", 17179869183ull << 30 },
	};
	static const char *const bad[] = {
		"", " ", "K", "KB", "M1", "-1", "+1", "-1K", "1.5M", "1T",
		"1KX", "1KBB", "1KiB2", "1Ki", "1iB", "1BB", "1B2", "abc",
		"0x10", " 1", "1 K B", "1,000", "1e3",
		"18446744073709551616", "17179869184G",
		"99999999999999999999K", "18014398509481984K",
	};
	uint64_t v;
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		v = 12345;
		CU_ASSERT_EQUAL(cfg_parse_size(good[i].s, &v), 0);
		CU_ASSERT_EQUAL(v, good[i].v);
		if (v != good[i].v)
			fprintf(stderr, "\nsize '%s' -> %llu\n", good[i].s,
				(unsigned long long)v);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = cfg_parse_size(bad[i], &v);

		CU_ASSERT_EQUAL(rc, -EINVAL);
		if (rc != -EINVAL)
			fprintf(stderr, "\nsize '%s' accepted\n", bad[i]);
	}
	CU_ASSERT_EQUAL(cfg_parse_size(NULL, &v), -EINVAL);
}

static void test_duration_units(void)
{
	static const struct { const char *s; uint64_t v; } good[] = {
		{ "0ms", 0 }, { "0s", 0 }, { "0h", 0 }, { "1ms", 1 },
		{ "500ms", 500 }, { "500MS", 500 }, { "1s", 1000 },
		{ "90s", 90000 }, { "5S", 5000 }, { "2m", 120000 },
		{ "30m", 1800000 }, { "1h", 3600000 }, { "12h", 43200000 },
		{ "100 ms", 100 }, { "0100ms", 100 },
		{ "5124095576030h", 5124095576030ull * 3600000 },
		{ "18446744073709551615ms", UINT64_MAX },
		{ "18446744073709551s", 18446744073709551000ull },
	};
	static const char *const bad[] = {
		"100", "0", "", " ", "ms", "s", "1x", "1.5s", "-1s", "+1s",
		"1sec", "1 s s", "1d", "1msx", "1mss", "1hm", "1 h 2",
		"5124095576031h", "18446744073709552s",
		"18446744073709551616ms", "99999999999999999999h", " 1s",
	};
	uint64_t v;
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		v = 12345;
		CU_ASSERT_EQUAL(cfg_parse_duration_ms(good[i].s, &v), 0);
		CU_ASSERT_EQUAL(v, good[i].v);
		if (v != good[i].v)
			fprintf(stderr, "\nduration '%s' -> %llu\n", good[i].s,
				(unsigned long long)v);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = cfg_parse_duration_ms(bad[i], &v);

		CU_ASSERT_EQUAL(rc, -EINVAL);
		if (rc != -EINVAL)
			fprintf(stderr, "\nduration '%s' accepted\n", bad[i]);
	}
	CU_ASSERT_EQUAL(cfg_parse_duration_ms(NULL, &v), -EINVAL);
}

/* counts, percentages and modes go through a file */
static void test_count_and_pct_values(void)
{
	static const struct { const char *kv; bool ok; } cases[] = {
		{ "max_retries = 0", true },
		{ "max_retries = 4294967295", true },
		{ "max_retries = 4294967296", false },
		{ "max_retries = -1", false },
		{ "max_retries = 5x", false },
		{ "max_retries = 1K", false },
		{ "max_retries = 1.0", false },
		{ "max_inflight = 1", true },
		{ "max_inflight = 1024", true },
		{ "max_inflight = 1025", false },
		{ "backoff_jitter = 10%", true },
		{ "backoff_jitter = 10", true },
		{ "backoff_jitter = 0%", true },
		{ "backoff_jitter = 100%", true },
		{ "backoff_jitter = 101%", false },
		{ "backoff_jitter = 10%%", false },
		{ "backoff_jitter = %", false },
		{ "batch_max_events = 1", true },
		{ "batch_max_events = 0", false },
	};
	struct tload t;
	char text[256];
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "[sink d]\ntype = discard\n%s\n",
			 cases[i].kv);
		t_load(&t, text);
		CU_ASSERT_EQUAL(t.rc, cases[i].ok ? 0 : 1);
		if (!cases[i].ok) {
			char key[64];

			snprintf(key, sizeof(key), "%.*s: ",
				 (int)strcspn(cases[i].kv, " "), cases[i].kv);
			CU_ASSERT(t_has(&t, 3, key));
		}
		if (t.rc != (cases[i].ok ? 0 : 1))
			fprintf(stderr, "\n'%s': rc %d\n%s", cases[i].kv, t.rc,
				t.err);
		t_done(&t);
	}
	t_load(&t, "[sink d]\ntype = discard\nmax_retries = 4294967295\n"
	       "backoff_jitter = 25%\n");
	CU_ASSERT_EQUAL(t.rc, 0);
	CU_ASSERT_EQUAL(t.c.sinks[0].max_retries, 4294967295u);
	CU_ASSERT_EQUAL(t.c.sinks[0].backoff_jitter_pct, 25);
	t_done(&t);
}

/* ---- defaults ----------------------------------------------------------- */

static void test_defaults(void)
{
	struct cfg c;
	const struct cfg_sink *s;

	memset(&c, 0xa5, sizeof(c));
	cfg_default(&c);
	CU_ASSERT_PTR_NULL(c.file);
	ASSERT_STR(c.shm, "outbox");
	CU_ASSERT_EQUAL(c.shm_mode, 0660);
	CU_ASSERT_EQUAL(c.ring_size, 64ull << 20);
	CU_ASSERT_EQUAL(c.max_record, 1ull << 20);
	CU_ASSERT_EQUAL(c.producer_slots, 1024);
	CU_ASSERT_EQUAL(c.sink_threads, 1);
	ASSERT_STR(c.spool_dir, "./outbox-spool");
	CU_ASSERT_EQUAL(c.spool_max, 512ull << 20);
	CU_ASSERT_EQUAL(c.spool_full, SPOOL_DROP_NEWEST);
	CU_ASSERT_EQUAL(c.durability, DUR_WRITE);
	CU_ASSERT_EQUAL(c.sync_interval_ms, 100);
	CU_ASSERT_EQUAL(c.shutdown_timeout_ms, 5000);
	CU_ASSERT_EQUAL(c.log_level, LOG_INFO);
	CU_ASSERT_EQUAL(c.segment_size, 16ull << 20);
	CU_ASSERT_EQUAL_FATAL(c.nsinks, 1);
	s = &c.sinks[0];
	ASSERT_STR(s->name, "default");
	CU_ASSERT_EQUAL(s->line, 0);
	CU_ASSERT_EQUAL(s->type, SINK_FILE);
	ASSERT_STR(s->path, "./outbox-out.ndjson");
	CU_ASSERT_PTR_NULL(s->url);
	CU_ASSERT_PTR_NULL(s->write_key);
	CU_ASSERT_PTR_NULL(s->dsn);
	CU_ASSERT_PTR_NULL(s->token_file);
	CU_ASSERT_EQUAL(s->nheaders, 0);
	CU_ASSERT_EQUAL(s->encoding, ENC_NDJSON);
	CU_ASSERT_EQUAL(s->batch_max_events, 500);
	CU_ASSERT_EQUAL(s->batch_max_bytes, 475000);
	CU_ASSERT_EQUAL(s->event_max_bytes, 1ull << 20);
	CU_ASSERT_EQUAL(s->flush_interval_ms, 500);
	CU_ASSERT_EQUAL(s->max_inflight, 4);
	CU_ASSERT_EQUAL(s->connect_timeout_ms, 2000);
	CU_ASSERT_EQUAL(s->timeout_ms, 15000);
	CU_ASSERT_EQUAL(s->compression, COMP_GZIP);
	CU_ASSERT_EQUAL(s->backoff_base_ms, 500);
	CU_ASSERT_EQUAL(s->backoff_max_ms, 60000);
	CU_ASSERT_EQUAL(s->backoff_jitter_pct, 10);
	CU_ASSERT_EQUAL(s->max_retries, 1000);
	CU_ASSERT_EQUAL(s->max_backoff_duration_ms, 12ull * 3600 * 1000);
	CU_ASSERT_EQUAL(s->retry_after_max_ms, 300000);
	CU_ASSERT_EQUAL(s->max_rate_limit_duration_ms, 30ull * 60 * 1000);
	CU_ASSERT_EQUAL(s->on_rate_limit, RL_HOLD);
	CU_ASSERT_EQUAL(s->nstatus, 0);
	CU_ASSERT_EQUAL(cfg_sink_find(&c, "default"), 0);
	CU_ASSERT_EQUAL(cfg_sink_find(&c, "nope"), -1);
	cfg_free(&c);
}

/* an empty file and a [broker]-only file are the defaults */
static void test_empty_file_is_default(void)
{
	struct cfg d;
	struct tload t;

	cfg_default(&d);
	CU_ASSERT_EQUAL(t_load(&t, ""), 0);
	CU_ASSERT_EQUAL(t.errlen, 0);
	ASSERT_STR(t.c.file, t.path);
	assert_cfg_eq(&d, &t.c);
	t_done(&t);

	CU_ASSERT_EQUAL(t_load(&t, "; nothing\n[broker]\n# but comments\n"),
			0);
	assert_cfg_eq(&d, &t.c);
	t_done(&t);
	cfg_free(&d);
}

static void test_spec_example(void)
{
	static const char text[] =
		"[broker]\n"
		"shm = outbox                  # /dev/shm/outbox\n"
		"shm_mode = 0660\n"
		"ring_size = 64M\n"
		"max_record = 1M\n"
		"spool_dir = ./outbox-spool\n"
		"spool_max = 512M              # all sinks together\n"
		"spool_full = drop-newest      # or drop-oldest\n"
		"durability = write            # none | write | fdatasync\n"
		"sync_interval = 100ms         # fdatasync batching\n"
		"shutdown_timeout = 5s\n"
		"log_level = info\n"
		"\n"
		"[sink default]                # the built-in default\n"
		"type = file                   # file | http | segment\n"
		"path = ./outbox-out.ndjson\n"
		"\n"
		"[sink api]\n"
		"type = segment\n"
		"url = https://api.segment.io/v1/batch\n"
		"write_key = ...\n";
	struct tload t;
	struct cfg d;
	int i;

	CU_ASSERT_EQUAL(t_load(&t, text), 0);
	CU_ASSERT_EQUAL(t.errlen, 0);
	CU_ASSERT_EQUAL_FATAL(t.c.nsinks, 2);
	ASSERT_STR(t.c.shm, "outbox");
	ASSERT_STR(t.c.sinks[0].name, "default");
	CU_ASSERT_EQUAL(t.c.sinks[0].line, 14);
	ASSERT_STR(t.c.sinks[0].path, "./outbox-out.ndjson");
	i = cfg_sink_find(&t.c, "api");
	CU_ASSERT_EQUAL_FATAL(i, 1);
	CU_ASSERT_EQUAL(t.c.sinks[i].line, 18);
	CU_ASSERT_EQUAL(t.c.sinks[i].type, SINK_SEGMENT);
	ASSERT_STR(t.c.sinks[i].url,
			       "https://api.segment.io/v1/batch");
	ASSERT_STR(t.c.sinks[i].write_key, "...");
	/* the broker part is the default, written out */
	cfg_default(&d);
	d.sinks[1] = t.c.sinks[1];
	d.nsinks = 2;
	assert_cfg_eq(&d, &t.c);
	t_done(&t);
}

static void test_default_sink_added_or_replaced(void)
{
	struct tload t;

	CU_ASSERT_EQUAL(t_load(&t, "[sink a]\ntype = discard\n"), 0);
	CU_ASSERT_EQUAL_FATAL(t.c.nsinks, 2);
	ASSERT_STR(t.c.sinks[0].name, "a");
	ASSERT_STR(t.c.sinks[1].name, "default");
	CU_ASSERT_EQUAL(t.c.sinks[1].type, SINK_FILE);
	ASSERT_STR(t.c.sinks[1].path, "./outbox-out.ndjson");
	t_done(&t);

	CU_ASSERT_EQUAL(t_load(&t, "[sink default]\ntype = discard\n"), 0);
	CU_ASSERT_EQUAL_FATAL(t.c.nsinks, 1);
	CU_ASSERT_EQUAL(t.c.sinks[0].type, SINK_DISCARD);
	CU_ASSERT_PTR_NULL(t.c.sinks[0].path);
	CU_ASSERT_EQUAL(t.c.sinks[0].line, 1);
	t_done(&t);
}

static void test_type_defaults(void)
{
	static const char text[] =
		"[sink seg]\n"
		"type = segment\n"
		"url = https://api.segment.io/v1/batch\n"
		"write_key = k\n"
		"[sink sen]\n"
		"type = sentry\n"
		"dsn = https://pub@o1.ingest.sentry.io/42\n"
		"[sink h]\n"
		"type = http\n"
		"url = http://127.0.0.1:9/\n"
		"[sink o]\n"
		"type = otlp\n"
		"url = http://127.0.0.1:4318/v1/logs\n"
		"[sink f]\n"
		"type = file\n"
		"path = /tmp/x.ndjson\n"
		"[sink d]\n"
		"type = discard\n"
		"[sink sen2]\n"
		"on_rate_limit = hold\n"
		"event_max_bytes = 64K\n"
		"type = sentry\n"
		"url = https://sentry.example/api/1/envelope/\n"
		"[sink seg2]\n"
		"event_max_bytes = 1M\n"
		"on_rate_limit = drop-category\n"
		"type = segment\n"
		"url = https://api.segment.io/v1/batch\n"
		"write_key = k\n";
	static const struct {
		const char *name;
		enum cfg_sink_type type;
		uint64_t event_max;
		enum cfg_on_rate_limit rl;
	} want[] = {
		{ "seg", SINK_SEGMENT, 32 << 10, RL_HOLD },
		{ "sen", SINK_SENTRY, 1 << 20, RL_DROP_CATEGORY },
		{ "h", SINK_HTTP, 1 << 20, RL_HOLD },
		{ "o", SINK_OTLP, 1 << 20, RL_HOLD },
		{ "f", SINK_FILE, 1 << 20, RL_HOLD },
		{ "d", SINK_DISCARD, 1 << 20, RL_HOLD },
		{ "sen2", SINK_SENTRY, 64 << 10, RL_HOLD },
		{ "seg2", SINK_SEGMENT, 1 << 20, RL_DROP_CATEGORY },
	};
	struct tload t;
	size_t i;
	int k;

	CU_ASSERT_EQUAL(t_load(&t, text), 0);
	if (t.rc)
		fprintf(stderr, "\n%s", t.err);
	CU_ASSERT_EQUAL(t.c.nsinks, 9);
	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		k = cfg_sink_find(&t.c, want[i].name);
		CU_ASSERT_EQUAL_FATAL(k, (int)i);
		CU_ASSERT_EQUAL(t.c.sinks[k].type, want[i].type);
		CU_ASSERT_EQUAL(t.c.sinks[k].event_max_bytes,
				want[i].event_max);
		CU_ASSERT_EQUAL(t.c.sinks[k].on_rate_limit, want[i].rl);
	}
	t_done(&t);
}

static void test_sink_type_names(void)
{
	ASSERT_STR(cfg_sink_type_name(SINK_FILE), "file");
	ASSERT_STR(cfg_sink_type_name(SINK_DISCARD), "discard");
	ASSERT_STR(cfg_sink_type_name(SINK_HTTP), "http");
	ASSERT_STR(cfg_sink_type_name(SINK_SEGMENT), "segment");
	ASSERT_STR(cfg_sink_type_name(SINK_SENTRY), "sentry");
	ASSERT_STR(cfg_sink_type_name(SINK_OTLP), "otlp");
	ASSERT_STR(cfg_sink_type_name((enum cfg_sink_type)6), "?");
}

/* ---- status, headers, comments, long lines ------------------------------ */

static void test_status_overrides(void)
{
	static const char text[] =
		"[sink h]\n"
		"type = http\n"
		"url = https://h.example/in\n"
		"status.429 = drop\n"
		"status.500 = split   # comment\n"
		"status.401 = reauth\n"
		"status.404 = RETRY\n"
		"status.100 = drop\n"
		"status.599 = retry\n";
	static const struct cfg_status_override want[] = {
		{ 429, ST_DROP }, { 500, ST_SPLIT }, { 401, ST_REAUTH },
		{ 404, ST_RETRY }, { 100, ST_DROP }, { 599, ST_RETRY },
	};
	struct tload t;
	int i;

	CU_ASSERT_EQUAL(t_load(&t, text), 0);
	CU_ASSERT_EQUAL_FATAL(t.c.sinks[0].nstatus, 6);
	for (i = 0; i < 6; i++) {
		CU_ASSERT_EQUAL(t.c.sinks[0].status[i].code, want[i].code);
		CU_ASSERT_EQUAL(t.c.sinks[0].status[i].action, want[i].action);
	}
	CU_ASSERT_EQUAL(t.c.sinks[1].nstatus, 0);
	t_done(&t);
}

static void test_repeated_header(void)
{
	char text[4096];
	struct tload t;
	size_t n;
	int i;

	CU_ASSERT_EQUAL(t_load(&t, "[sink h]\ntype = http\n"
			       "url = https://h.example/in\n"
			       "header = X-One: 1\n"
			       "header = X-Two:two words\n"
			       "header = X-One: again\n"), 0);
	CU_ASSERT_EQUAL_FATAL(t.c.sinks[0].nheaders, 3);
	ASSERT_STR(t.c.sinks[0].headers[0], "X-One: 1");
	ASSERT_STR(t.c.sinks[0].headers[1], "X-Two:two words");
	ASSERT_STR(t.c.sinks[0].headers[2], "X-One: again");
	t_done(&t);

	/* 16 fit, the 17th (line 20) is an error */
	n = (size_t)snprintf(text, sizeof(text), "[sink h]\ntype = http\n"
			     "url = https://h.example/in\n");
	for (i = 0; i < 17; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n,
				      "header = X-H%d: %d\n", i, i);
	CU_ASSERT_EQUAL(t_load(&t, text), 1);
	CU_ASSERT(t_has(&t, 20, "too many headers"));
	CU_ASSERT_EQUAL(t.c.sinks[0].nheaders, CFG_MAX_HEADERS);
	ASSERT_STR(t.c.sinks[0].headers[15], "X-H15: 15");
	t_done(&t);
}

static void test_inline_comments_and_quotes(void)
{
	static const char text[] =
		"[broker]   ; section comment\n"
		"ring_size = 1M   # hash comment\n"
		"max_record = 64K ; semicolon comment\n"
		"spool_dir = ./spool#not;comment\n"
		"   log_level = warn\n"
		"shm:obx-colon\n"
		"[ sink  h ]  # c\n"
		"type = http # c\n"
		"url = https://h.example/p?a=1;b=2#frag ; comment\n"
		"header = X-A: b;c#d\n"
		"header = \"X-B: quoted ; kept # too\"   # comment\n"
		"header = \"X-C: \\\"esc\\\" \\\\ \\t.\"\n"
		"header = \"X-Pad:   spaced  \"\n"
		"token_file =   /run/token   \n"
		"max_inflight =   # empty\n";
	struct tload t;
	const struct cfg_sink *s;

	t_load(&t, text);
	/* the last line is an error: nothing but a comment */
	CU_ASSERT_EQUAL(t.rc, 1);
	if (t.rc != 1)
		fprintf(stderr, "\n%s", t.err);
	CU_ASSERT(t_has(&t, 15, "max_inflight: empty value"));
	CU_ASSERT_EQUAL(t.c.sinks[0].max_inflight, 4);
	CU_ASSERT_EQUAL(t.c.ring_size, 1 << 20);
	CU_ASSERT_EQUAL(t.c.max_record, 64 << 10);
	ASSERT_STR(t.c.spool_dir, "./spool#not;comment");
	CU_ASSERT_EQUAL(t.c.log_level, LOG_WARN);
	ASSERT_STR(t.c.shm, "obx-colon");
	s = &t.c.sinks[0];
	ASSERT_STR(s->name, "h");
	CU_ASSERT_EQUAL(s->type, SINK_HTTP);
	ASSERT_STR(s->url, "https://h.example/p?a=1;b=2#frag");
	CU_ASSERT_EQUAL_FATAL(s->nheaders, 4);
	ASSERT_STR(s->headers[0], "X-A: b;c#d");
	ASSERT_STR(s->headers[3], "X-Pad:   spaced  ");
	ASSERT_STR(s->headers[1], "X-B: quoted ; kept # too");
	ASSERT_STR(s->headers[2], "X-C: \"esc\" \\ \t.");
	ASSERT_STR(s->token_file, "/run/token");
	t_done(&t);
}

/* "[sink h]" "type = http" and a url line of len bytes, then eol */
static size_t url_line(char *text, size_t len, const char *eol)
{
	size_t n = (size_t)sprintf(text, "[sink h]\ntype = http\n");
	size_t start = n;

	n += (size_t)sprintf(text + n, "url = https://h.example/");
	memset(text + n, 'v', len - (n - start));
	n = start + len;
	n += (size_t)sprintf(text + n, "%s", eol);
	return n;
}

static void test_long_values(void)
{
	static const char head[] = "[sink h]\ntype = http\nurl = https://h.example/";
	size_t big = 70000, n;
	char *text = malloc(big + 512);
	struct tload t;

	CU_ASSERT_PTR_NOT_NULL_FATAL(text);
	/* a 1000-character URL and a 5000-character header */
	n = (size_t)sprintf(text, "%s", head);
	memset(text + n, 'u', 1000 - 18);
	n += 1000 - 18;
	n += (size_t)sprintf(text + n, "\nheader = X-Big: ");
	memset(text + n, 'h', 5000 - 7);
	n += 5000 - 7;
	n += (size_t)sprintf(text + n, "\nmax_inflight = 3\n");
	CU_ASSERT_EQUAL(t_load_len(&t, text, n, 0600), 0);
	CU_ASSERT_EQUAL(strlen(t.c.sinks[0].url), 1000);
	CU_ASSERT_EQUAL(strncmp(t.c.sinks[0].url, "https://h.example/u", 19), 0);
	CU_ASSERT_EQUAL(t.c.sinks[0].url[999], 'u');
	CU_ASSERT_EQUAL_FATAL(t.c.sinks[0].nheaders, 1);
	CU_ASSERT_EQUAL(strlen(t.c.sinks[0].headers[0]), 5000);
	CU_ASSERT_EQUAL(t.c.sinks[0].max_inflight, 3);
	t_done(&t);

	/* a line of 65536 bytes (CR LF aside) still fits, 65537 do not */
	CU_ASSERT_EQUAL(t_load_len(&t, text, url_line(text, 65536, "\r\n"),
				   0600), 0);
	CU_ASSERT_EQUAL(strlen(t.c.sinks[0].url), 65536 - 6);
	t_done(&t);
	CU_ASSERT_EQUAL(t_load_len(&t, text, url_line(text, 65536, ""), 0600),
			0);
	CU_ASSERT_EQUAL(strlen(t.c.sinks[0].url), 65536 - 6);
	t_done(&t);
	CU_ASSERT_EQUAL(t_load_len(&t, text, url_line(text, 65537, "\n"),
				   0600), 2);
	CU_ASSERT(t_has(&t, 3, "line too long"));
	CU_ASSERT(t_has(&t, 1, "type http needs url"));
	t_done(&t);

	/* the lines after an overlong one keep their numbers */

	n = (size_t)sprintf(text, "[sink h]\ntype = http\nheader = X: ");
	memset(text + n, 'x', big);
	n += big;
	n += (size_t)sprintf(text + n, "\nurl = https://h.example/\n"
			     "timeout = 5\n");
	CU_ASSERT_EQUAL(t_load_len(&t, text, n, 0600), 2);
	CU_ASSERT(t_has(&t, 3, "line too long"));
	CU_ASSERT(t_has(&t, 5, "timeout: unit missing"));
	ASSERT_STR(t.c.sinks[0].url, "https://h.example/");
	CU_ASSERT_EQUAL(t.c.sinks[0].nheaders, 0);
	t_done(&t);
	free(text);
}

static void test_crlf_bom_nul(void)
{
	static const char crlf[] = "\xef\xbb\xbf[broker]\r\nlog_level = debug\r\n"
				   "ring_size = 3M\r\n";
	static const char nul[] = "[broker]\nlog_level = de\0bug\n"
				  "shm_mode = 0600\n";
	struct tload t;

	CU_ASSERT_EQUAL(t_load(&t, crlf), 1);
	CU_ASSERT_EQUAL(t.c.log_level, LOG_DEBUG);
	CU_ASSERT(t_has(&t, 3, "ring_size: 3M is not a power of two"));
	t_done(&t);

	CU_ASSERT_EQUAL(t_load_len(&t, nul, sizeof(nul) - 1, 0600), 1);
	CU_ASSERT(t_has(&t, 2, "NUL byte"));
	CU_ASSERT_EQUAL(t.c.log_level, LOG_INFO);
	CU_ASSERT_EQUAL(t.c.shm_mode, 0600);
	t_done(&t);
}

/* ---- errors -------------------------------------------------------------- */

static const struct {
	const char *text;
	int line;
	const char *what;
} err_cases[] = {
	{ "[broker]\n[bogus]\nkey = 1\n", 2, "unknown section [bogus]" },
	{ "[sinks a]\n", 1, "unknown section [sinks a]" },
	{ "[broker]\nring_size = 64M\nring_sise = 1M\n", 3,
	  "unknown key 'ring_sise' in [broker]" },
	{ "[sink a]\ntype = discard\nurll = x\n", 3,
	  "unknown key 'urll' in [sink a]" },
	{ "[broker]\nring_size = 64X\n", 2, "ring_size: bad value '64X'" },
	{ "[broker]\nsync_interval = 100\n", 2,
	  "sync_interval: unit missing in '100'" },
	{ "[broker]\nshutdown_timeout = 5 sec\n", 2,
	  "shutdown_timeout: bad value" },
	{ "[sink a]\ntype = discard\n\n[sink a]\ntype = discard\n", 4,
	  "duplicate sink 'a' (first at line 1)" },
	{ "[broker]\nlog_level = info\nlog_level = debug\n", 3,
	  "duplicate key 'log_level' (first at line 2)" },
	{ "[broker]\nring_size = 64M\n\n[broker]\nring_size = 32M\n", 5,
	  "duplicate key 'ring_size' (first at line 2)" },
	{ "[sink a]\ntype = discard\ntype = file\n", 3,
	  "duplicate key 'type'" },
	{ "[sink api]\ntype = segment\nurl = https://api.segment.io/v1/b\n",
	  1, "sink 'api': type segment needs write_key" },
	{ "[sink api]\ntype = segment\nwrite_key = k\nsettings_url = x\n",
	  4, "settings_url: 'x' is not an http:// or https:// URL" },
	{ "[sink api]\ntype = http\nurl = http://h/\nservice_name = s\n",
	  4, "service_name does not apply to a http sink" },
	{ "# c\n[sink x]\nbatch_max_events = 5\n", 2,
	  "sink 'x': missing type" },
	{ "[sink h]\ntype = http\n", 1, "type http needs url" },
	{ "[sink f]\ntype = file\n", 1, "type file needs path" },
	{ "[sink s]\ntype = sentry\n", 1, "type sentry needs dsn or url" },
	{ "[sink o]\ntype = otlp\n", 1, "type otlp needs url" },
	{ "[sink 012345678901234567890123456789012345678901234567]\n", 1,
	  "is too long" },
	{ "[sink a/b]\ntype = discard\n", 1, "has a character other than" },
	{ "[sink a b]\n", 1, "has a character other than" },
	/* the spool keeps a sink in <spool_dir>/<name>/ */
	{ "[sink .]\ntype = discard\n", 1, "sink name '.' is reserved" },
	{ "[sink ..]\ntype = discard\n", 1, "sink name '..' is reserved" },
	{ "[sink]\n", 1, "sink section without a name" },
	{ "[sink   ]\n", 1, "sink section without a name" },
	{ "ring_size = 1M\n[broker]\n", 1, "outside of any section" },
	{ "[broker]\nring_size\n", 2, "expected 'key = value'" },
	{ "[broker]\n# ok\n  ring_size 64M  \n", 3, "expected 'key = value'" },
	{ "[broker\nring_size = 1M\n", 1, "missing ']'" },
	{ "[broker] x\n", 1, "unexpected text after section header" },
	{ "[broker]\nring_size = 100K\n", 2, "not a power of two" },
	{ "[broker]\nring_size = 32K\n", 2, "ring_size: 32K is out of range" },
	{ "[broker]\nring_size = 2G\n", 2, "ring_size: 2G is out of range" },
	{ "[broker]\nring_size = 1M\n", 2,
	  "max_record 1M is more than ring_size/8 (128K)" },
	{ "[broker]\nmax_record = 12M\n", 2, "ring_size/8 (8M)" },
	{ "[broker]\nmax_record = 32\n", 2, "max_record: 32 is out of range" },
	{ "[broker]\ndrain_latency = 0ms\n", 2,
	  "drain_latency: 0ms is out of range (1ms to 1s)" },
	{ "[broker]\ndrain_latency = 2s\n", 2,
	  "drain_latency: 2s is out of range (1ms to 1s)" },
	{ "[broker]\ndrain_latency = 20\n", 2, "drain_latency: unit missing" },
	{ "[broker]\nshm_mode = 0868\n", 2, "shm_mode: bad mode '0868'" },
	{ "[broker]\nshm_mode = 01660\n", 2, "shm_mode: bad mode" },
	{ "[broker]\nshm_mode = 0460\n", 2, "owner read and write" },
	{ "[broker]\nshm = a/b\n", 2, "shm: bad shm name 'a/b'" },
	{ "[broker]\nshm = /\n", 2, "shm: bad shm name" },
	{ "[broker]\nproducer_slots = 0\n", 2, "producer_slots: 0 is out" },
	{ "[broker]\nproducer_slots = 65536\n", 2, "producer_slots" },
	{ "[broker]\nproducer_slots = -1\n", 2, "producer_slots: bad value" },
	{ "[broker]\nsink_threads = 65\n", 2, "sink_threads: 65 is out" },
	{ "[broker]\nsink_threads = two\n", 2, "sink_threads: bad value" },
	{ "[broker]\nspool_full = drop-middle\n", 2,
	  "one of: drop-newest, drop-oldest" },
	{ "[broker]\ndurability = always\n", 2,
	  "one of: none, write, fdatasync" },
	{ "[broker]\nlog_level = verbose\n", 2, "log_level: bad value" },
	{ "[broker]\nspool_max = 1M\n", 2,
	  "spool_max 1M is less than segment_size 16M" },
	{ "[broker]\nsegment_size = 1M\n", 2,
	  "segment_size 1M cannot hold a max_record (1M) record" },
	{ "[broker]\nsync_interval = 2h\n", 2, "sync_interval: 2h is out" },
	{ "[broker]\nspool_dir =\n", 2, "spool_dir: empty value" },
	{ "[broker]\nspool_dir = \"abc\n", 2, "unterminated quoted value" },
	{ "[broker]\nspool_dir = \"a\" b\n", 2, "after the closing quote" },
	{ "[broker]\nspool_dir = \"a\\qb\"\n", 2, "bad escape" },
	{ "[sink a]\ntype = discard\nmax_inflight = 0\n", 3,
	  "max_inflight: 0 is out of range (1 to 1024)" },
	{ "[sink a]\ntype = discard\nbatch_max_events = 0\n", 3,
	  "batch_max_events: 0 is less than 1" },
	{ "[sink a]\ntype = discard\nmax_retries = 4294967296\n", 3,
	  "max_retries: '4294967296' is too large" },
	{ "[sink a]\ntype = discard\nbackoff_jitter = 101%\n", 3,
	  "backoff_jitter: 101% is out of range (0% to 100%)" },
	{ "[sink a]\ntype = discard\nstatus.600 = retry\n", 3,
	  "unknown key 'status.600'" },
	{ "[sink a]\ntype = discard\nstatus.42 = retry\n", 3,
	  "unknown key 'status.42'" },
	{ "[sink a]\ntype = discard\nstatus.abc = retry\n", 3,
	  "unknown key 'status.abc'" },
	{ "[sink a]\ntype = discard\nstatus.429 = maybe\n", 3,
	  "status.429: bad value 'maybe' (one of: retry, drop, split, "
	  "reauth)" },
	{ "[sink a]\ntype = discard\nstatus.429 = drop\nstatus.429 = retry\n",
	  4, "duplicate key 'status.429' (first at line 3)" },
	{ "[sink h]\ntype = http\nurl = https://h/\nheader = NoColon\n", 4,
	  "header: expected 'Name: value'" },
	{ "[sink h]\ntype = http\nurl = https://h/\nheader = : v\n", 4,
	  "header: expected 'Name: value'" },
	{ "[sink h]\ntype = http\nurl = https://h/\nheader = Bad Name: v\n", 4,
	  "header: expected 'Name: value'" },
	{ "[sink h]\ntype = http\nurl = https://h/\nheader = \"X: a\\nb\"\n",
	  4, "header: control character" },
	{ "[sink a]\ntype = file\npath = x\nurl = http://h/\n", 4,
	  "url does not apply to a file sink" },
	{ "[sink a]\nheader = X: y\ntype = discard\n", 2,
	  "header does not apply to a discard sink" },
	{ "[sink a]\ntype = http\nurl = http://h/\npath = /x\n", 4,
	  "path does not apply to a http sink" },
	{ "[sink a]\ntype = http\nurl = ftp://h/\n", 3,
	  "url: 'ftp://h/' is not an http:// or https:// URL" },
	{ "[sink a]\ntype = http\nurl = http://h/a b\n", 3,
	  "is not an http:// or https:// URL" },
	{ "[sink a]\ntype = sentry\ndsn = https://nokey.example/1\n", 3,
	  "dsn: not a DSN" },
	{ "[sink a]\ntype = discard\ntimeout = 0ms\n", 3,
	  "timeout: 0ms is out of range (1ms to 24h)" },
	{ "[sink a]\ntype = discard\nbackoff_base = 10s\nbackoff_max = 5s\n",
	  4, "backoff_max 5s is less than backoff_base 10s" },
	{ "[sink a]\ntype = discard\nflush_interval = 5\n", 3,
	  "flush_interval: unit missing" },
	{ "[sink a]\ntype = discard\ncompression = brotli\n", 3,
	  "one of: gzip, none, zstd" },
	{ "[sink a]\ntype = discard\nencoding = xml\n", 3,
	  "one of: ndjson, json, msgpack" },
	{ "[sink a]\ntype = discard\non_rate_limit = panic\n", 3,
	  "one of: hold, drop-category" },
	{ "[sink a]\ntype = bogus\n", 2,
	  "type: bad value 'bogus' (one of: file, discard, http, segment, "
	  "sentry, otlp)" },
	{ "[sink a]\ntype = discard\nevent_max_bytes = 1K5\n", 3,
	  "event_max_bytes: bad value" },
};

static void test_error_table(void)
{
	struct tload t;
	size_t i;
	bool ok;

	for (i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
		t_load(&t, err_cases[i].text);
		ok = t.rc == 1 && t_lines(&t) == 1 &&
		     t_has(&t, err_cases[i].line, err_cases[i].what);
		CU_ASSERT(ok);
		if (!ok)
			fprintf(stderr, "\nerror case %zu: rc %d, want 1 error "
				"at line %d '%s'; got:\n%s", i, t.rc,
				err_cases[i].line, err_cases[i].what,
				t.err ? t.err : "");
		t_done(&t);
	}
}

static void test_sink_name_limits(void)
{
	char text[128];
	struct tload t;

	/* 47 characters is the longest name */
	snprintf(text, sizeof(text), "[sink %.47s]\ntype = discard\n",
		 "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ");
	CU_ASSERT_EQUAL(t_load(&t, text), 0);
	CU_ASSERT_EQUAL(strlen(t.c.sinks[0].name), CFG_NAME_MAX - 1);
	t_done(&t);

	CU_ASSERT_EQUAL(t_load(&t, "[sink A-z_0.9]\ntype = discard\n"), 0);
	ASSERT_STR(t.c.sinks[0].name, "A-z_0.9");
	t_done(&t);

	/* dots are name characters: only "." and ".." are not names */
	CU_ASSERT_EQUAL(t_load(&t, "[sink ...]\ntype = discard\n[sink .a]\n"
			       "type = discard\n"), 0);
	ASSERT_STR(t.c.sinks[0].name, "...");
	ASSERT_STR(t.c.sinks[1].name, ".a");
	t_done(&t);
}

/* several errors in one file: all reported, in order, with their lines */
static void test_all_errors_reported(void)
{
	static const char text[] =
		"[broker]\n"			/* 1 */
		"ring_size = 64Q\n"		/* 2 bad value */
		"sync_interval = 10\n"		/* 3 unit missing */
		"bogus = 1\n"			/* 4 unknown key */
		"[sink a]\n"			/* 5 needs write_key */
		"type = segment\n"
		"url = https://x.example/\n"
		"max_inflight = 0\n"		/* 8 range */
		"[sink a]\n"			/* 9 duplicate sink */
		"[nope]\n"			/* 10 unknown section */
		"key = ignored\n"
		"[sink b]\n"
		"type = discard\n"
		"noequals\n";			/* 14 syntax */
	static const struct { int line; const char *what; } want[] = {
		{ 2, "ring_size: bad value" },
		{ 3, "unit missing" },
		{ 4, "unknown key 'bogus'" },
		{ 8, "max_inflight" },
		{ 9, "duplicate sink 'a' (first at line 5)" },
		{ 10, "unknown section [nope]" },
		{ 14, "expected 'key = value'" },
		{ 5, "needs write_key" },
	};
	struct tload t;
	const char *p;
	char prefix[300];
	size_t i;

	CU_ASSERT_EQUAL(t_load(&t, text), 8);
	CU_ASSERT_EQUAL(t_lines(&t), 8);
	/* in this order */
	p = t.err;
	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		CU_ASSERT(t_has(&t, want[i].line, want[i].what));
		snprintf(prefix, sizeof(prefix), "%s:%d: ", t.path,
			 want[i].line);
		CU_ASSERT_EQUAL(strncmp(p, prefix, strlen(prefix)), 0);
		p = strchr(p, '\n');
		CU_ASSERT_PTR_NOT_NULL_FATAL(p);
		p++;
	}
	t_done(&t);
}

static void test_sink_count_limit(void)
{
	char *text = malloc(8192);
	struct tload t;
	size_t n;
	int i;

	CU_ASSERT_PTR_NOT_NULL_FATAL(text);
	/* 63 sinks + the built-in default = 64 */
	for (n = 0, i = 0; i < 63; i++)
		n += (size_t)sprintf(text + n, "[sink s%d]\ntype = discard\n", i);
	CU_ASSERT_EQUAL(t_load(&t, text), 0);
	CU_ASSERT_EQUAL(t.c.nsinks, CFG_MAX_SINKS);
	ASSERT_STR(t.c.sinks[63].name, "default");
	t_done(&t);

	/* 64 sinks leave no room for "default" */
	n += (size_t)sprintf(text + n, "[sink s63]\ntype = discard\n");
	CU_ASSERT_EQUAL(t_load(&t, text), 1);
	CU_ASSERT(t_has(&t, 127, "no room for the built-in sink 'default'"));
	t_done(&t);

	/* 65: the 65th header is refused */
	n += (size_t)sprintf(text + n, "[sink s64]\ntype = discard\n");
	CU_ASSERT_EQUAL(t_load(&t, text), 2);
	CU_ASSERT(t_has(&t, 129, "too many sinks (max 64)"));
	CU_ASSERT_EQUAL(t.c.nsinks, CFG_MAX_SINKS);
	t_done(&t);

	/* 63 sinks and a [sink default] are 64: fine */
	for (n = 0, i = 0; i < 63; i++)
		n += (size_t)sprintf(text + n, "[sink s%d]\ntype = discard\n", i);
	sprintf(text + n, "[sink default]\ntype = discard\n");
	CU_ASSERT_EQUAL(t_load(&t, text), 0);
	CU_ASSERT_EQUAL(t.c.nsinks, CFG_MAX_SINKS);
	CU_ASSERT_EQUAL(t.c.sinks[63].type, SINK_DISCARD);
	t_done(&t);
	free(text);
}

static void test_unreadable(void)
{
	struct cfg c;
	char path[300], *err = NULL;
	size_t len;
	FILE *e;
	int rc;

	snprintf(path, sizeof(path), "%s/missing.ini", g_dir);
	e = open_memstream(&err, &len);
	rc = cfg_load(&c, path, e);
	fclose(e);
	CU_ASSERT_EQUAL(rc, -ENOENT);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, strerror(ENOENT)));
	/* c is the built-in default */
	CU_ASSERT_PTR_NULL(c.file);
	CU_ASSERT_EQUAL(c.nsinks, 1);
	ASSERT_STR(c.sinks[0].name, "default");
	cfg_free(&c);
	free(err);

	err = NULL;
	e = open_memstream(&err, &len);
	rc = cfg_load(&c, g_dir, e);
	fclose(e);
	CU_ASSERT_EQUAL(rc, -EISDIR);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, g_dir));
	cfg_free(&c);
	free(err);
}

/* ---- credentials --------------------------------------------------------- */

static void test_credential_warning(void)
{
	static const struct {
		const char *text;
		mode_t mode;
		bool warn;
		bool root_group;        /* else the file's group is gid 1 */
	} cases[] = {
		{ "[sink s]\ntype = segment\nurl = https://s.example/\n"
		  "write_key = secret\n", 0644, true, false },
		{ "[sink s]\ntype = segment\nurl = https://s.example/\n"
		  "write_key = secret\n", 0600, false, false },
		{ "[sink s]\ntype = segment\nurl = https://s.example/\n"
		  "write_key = secret\n", 0640, true, false },
		/* group root reading it is no exposure (the packaged
		 * /etc/outbox/outbox.ini is outbox:root 0640) */
		{ "[sink s]\ntype = segment\nurl = https://s.example/\n"
		  "write_key = secret\n", 0640, false, true },
		{ "[sink s]\ntype = segment\nurl = https://s.example/\n"
		  "write_key = secret\n", 0604, true, false },
		{ "[sink s]\ntype = segment\nurl = https://s.example/\n"
		  "write_key = secret\n", 0400, false, false },
		{ "[sink e]\ntype = sentry\n"
		  "dsn = https://pub@o1.ingest.sentry.io/42\n", 0644, true, false },
		{ "[sink h]\ntype = http\nurl = https://h.example/\n"
		  "header = authorization: Bearer t\n", 0644, true, false },
		{ "[sink h]\ntype = http\nurl = https://h.example/\n"
		  "header = Authorization: Bearer t\n", 0600, false, false },
		{ "[sink h]\ntype = http\nurl = https://h.example/\n"
		  "header = X-Trace: 1\n", 0644, false, false },
		{ "[broker]\nlog_level = debug\n", 0666, false, false },
	};
	struct tload t;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		/* chown needs root (the tests run as root in CI) */
		if (geteuid() != 0 && (cases[i].mode & 040))
			continue;
		g_gid = geteuid() != 0 ? (gid_t)-1 :
			cases[i].root_group ? 0 : 1;
		CU_ASSERT_EQUAL(t_load_mode(&t, cases[i].text, cases[i].mode),
				0);
		g_gid = (gid_t)-1;
		CU_ASSERT_EQUAL(t_warned(&t), cases[i].warn);
		/* the warning is the only output, and never shows the key */
		CU_ASSERT_EQUAL(t_lines(&t), cases[i].warn ? 1 : 0);
		CU_ASSERT_PTR_NULL(t.err ? strstr(t.err, "secret") : NULL);
		if (t_warned(&t) != cases[i].warn)
			fprintf(stderr, "\ncredential case %zu: %s", i,
				t.err ? t.err : "(nothing)\n");
		t_done(&t);
	}
}

/* ---- print / round trip -------------------------------------------------- */

static const char rich_config[] =
	"# every key away from its default\n"
	"[broker]\n"
	"shm = /obx-rt.1\n"
	"shm_mode = 0600\n"
	"ring_size = 128M\n"
	"max_record = 65537\n"
	"producer_slots = 77\n"
	"spool_dir = \"/tmp/spool dir # not a comment ; really\"\n"
	"spool_max = 1000000000\n"
	"spool_full = drop-oldest\n"
	"durability = fdatasync\n"
	"sync_interval = 1500ms\n"
	"shutdown_timeout = 2m\n"
	"log_level = debug\n"
	"segment_size = 8M\n"
	"stall_timeout = 1500ms\n"
	"stall_action = kill\n"
	"drain_latency = 35ms\n"
	"sink_threads = 3\n"
	"\n"
	"[sink api]\n"
	"type = segment\n"
	"url = https://api.segment.io/v1/batch?a=1;b=2#frag\n"
	"write_key = \"  padded key \"\n"
	"token_file = /etc/outbox/token\n"
	"header = \"X-Note: a ; b # c\"\n"
	"header = Authorization: Basic dXNlcjpwYXNz\n"
	"header = \"X-Quote: say \\\"hi\\\" \\\\ \\t tab\"\n"
	"header = Expect:\n"
	"header = \"#X-Hash: 1\"\n"
	"encoding = json\n"
	"batch_max_events = 100\n"
	"batch_max_bytes = 1000\n"
	"event_max_bytes = 999\n"
	"flush_interval = 250ms\n"
	"max_inflight = 8\n"
	"connect_timeout = 1s\n"
	"timeout = 90s\n"
	"compression = none\n"
	"backoff_base = 100ms\n"
	"backoff_max = 2h\n"
	"backoff_jitter = 0%\n"
	"max_retries = 0\n"
	"max_backoff_duration = 0ms\n"
	"retry_after_max = 1s\n"
	"max_rate_limit_duration = 61m\n"
	"on_rate_limit = drop-category\n"
	"status.429 = drop\n"
	"status.500 = split\n"
	"status.401 = reauth\n"
	"status.404 = retry\n"
	"\n"
	"[sink err]\n"
	"type = sentry\n"
	"dsn = https://pub@o1.ingest.sentry.io/42\n"
	"on_rate_limit = hold\n"
	"\n"
	"[sink default]\n"
	"type = discard\n"
	"\n"
	"[sink otel]\n"
	"type = otlp\n"
	"url = http://127.0.0.1:4318/v1/logs\n"
	"encoding = msgpack\n"
	"compression = zstd\n"
	"max_retries = 4294967295\n"
	"batch_max_bytes = 18446744073709551615\n";

/* load -> print -> load gives an equal struct; printing is stable */
static void check_round_trip(const struct cfg *c1)
{
	char *p1, *p1b, *p2;
	struct tload t;

	p1 = t_print(c1);
	p1b = t_print(c1);
	ASSERT_STR(p1, p1b);
	CU_ASSERT_EQUAL(t_load(&t, p1), 0);
	if (t.rc)
		fprintf(stderr, "\nround trip: %s\n--\n%s", t.err, p1);
	assert_cfg_eq(c1, &t.c);
	p2 = t_print(&t.c);
	ASSERT_STR(p1, p2);
	t_done(&t);
	free(p1);
	free(p1b);
	free(p2);
}

static void test_round_trip_rich(void)
{
	struct tload t;
	const struct cfg_sink *s;
	char *p;

	CU_ASSERT_EQUAL_FATAL(t_load(&t, rich_config), 0);
	/* the file really says what the round trip must keep */
	ASSERT_STR(t.c.shm, "/obx-rt.1");
	CU_ASSERT_EQUAL(t.c.shm_mode, 0600);
	CU_ASSERT_EQUAL(t.c.max_record, 65537);
	ASSERT_STR(t.c.spool_dir,
			       "/tmp/spool dir # not a comment ; really");
	CU_ASSERT_EQUAL(t.c.sync_interval_ms, 1500);
	CU_ASSERT_EQUAL(t.c.shutdown_timeout_ms, 120000);
	CU_ASSERT_EQUAL(t.c.stall_timeout_ms, 1500);
	CU_ASSERT_EQUAL(t.c.stall_action, STALL_KILL);
	CU_ASSERT_EQUAL(t.c.drain_latency_ms, 35);
	CU_ASSERT_EQUAL(t.c.sink_threads, 3);
	CU_ASSERT_EQUAL_FATAL(t.c.nsinks, 4);
	s = &t.c.sinks[0];
	ASSERT_STR(s->url,
			       "https://api.segment.io/v1/batch?a=1;b=2#frag");
	ASSERT_STR(s->write_key, "  padded key ");
	CU_ASSERT_EQUAL_FATAL(s->nheaders, 5);
	ASSERT_STR(s->headers[0], "X-Note: a ; b # c");
	ASSERT_STR(s->headers[2], "X-Quote: say \"hi\" \\ \t tab");
	ASSERT_STR(s->headers[3], "Expect:");
	ASSERT_STR(s->headers[4], "#X-Hash: 1");
	CU_ASSERT_EQUAL(s->max_retries, 0);
	CU_ASSERT_EQUAL(s->max_rate_limit_duration_ms, 61 * 60000);
	CU_ASSERT_EQUAL(s->nstatus, 4);
	CU_ASSERT_EQUAL(t.c.sinks[1].on_rate_limit, RL_HOLD);
	CU_ASSERT_EQUAL(t.c.sinks[3].batch_max_bytes, UINT64_MAX);
	CU_ASSERT_EQUAL(t.c.sinks[3].max_retries, 4294967295u);
	CU_ASSERT_EQUAL(t.c.sinks[3].compression, COMP_ZSTD);
	CU_ASSERT_EQUAL(t.c.sinks[0].compression, COMP_NONE);

	check_round_trip(&t.c);

	/* values that need it are printed quoted, the others are not */
	p = t_print(&t.c);
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "\nheader = \"X-Note: a ; b # c\"\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "\nwrite_key = \"  padded key \"\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(p,
		"\nurl = https://api.segment.io/v1/batch?a=1;b=2#frag\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "\nring_size = 128M\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "\nmax_record = 65537\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "\nsync_interval = 1500ms\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "\nstatus.429 = drop\n"));
	free(p);
	t_done(&t);
}

static void test_round_trip_default(void)
{
	struct cfg c;
	struct tload t;
	char *p;

	cfg_default(&c);
	check_round_trip(&c);
	/* every key is written out, even at its default */
	p = t_print(&c);
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "[broker]\nshm = outbox\n"
				      "shm_mode = 0660\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "\n[sink default]\ntype = file\n"
				      "path = ./outbox-out.ndjson\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "\nbackoff_jitter = 10%\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "\nmax_backoff_duration = 12h\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(p, "\non_rate_limit = hold\n"));
	free(p);
	cfg_free(&c);

	/* type defaults survive as explicit values */
	CU_ASSERT_EQUAL(t_load(&t, "[sink e]\ntype = sentry\n"
			       "url = https://sentry.example/api/1/\n"), 0);
	check_round_trip(&t.c);
	t_done(&t);
}

/* ---- reload -------------------------------------------------------------- */

static void test_needs_restart(void)
{
	struct cfg a, b;
	char why[256];

	cfg_default(&a);
	cfg_default(&b);
	strcpy(why, "stale");
	CU_ASSERT_EQUAL(cfg_needs_restart(&a, &b, why, sizeof(why)), 0);
	ASSERT_STR(why, "");

	/* reloadable changes */
	b.log_level = LOG_DEBUG;
	b.spool_max = 1ull << 30;
	b.durability = DUR_FDATASYNC;
	b.shutdown_timeout_ms = 1;
	b.sinks[0].type = SINK_DISCARD;
	b.nsinks = 1;
	CU_ASSERT_EQUAL(cfg_needs_restart(&a, &b, why, sizeof(why)), 0);
	cfg_free(&b);

#define RESTART(field, value, text)					\
	do {								\
		cfg_default(&b);					\
		b.field = value;					\
		CU_ASSERT_EQUAL(cfg_needs_restart(&a, &b, why,		\
						  sizeof(why)), 1);	\
		CU_ASSERT_PTR_NOT_NULL(strstr(why, text));		\
		cfg_free(&b);						\
	} while (0)

	RESTART(shm_mode, 0600, "shm_mode changed (0660 -> 0600)");
	RESTART(ring_size, 128ull << 20, "ring_size changed (64M -> 128M)");
	RESTART(max_record, 2ull << 20, "max_record changed (1M -> 2M)");
	RESTART(producer_slots, 2048, "producer_slots changed (1024 -> 2048)");
	RESTART(segment_size, 32ull << 20, "segment_size");
	RESTART(sink_threads, 2, "sink_threads changed (1 -> 2)");
#undef RESTART

	cfg_default(&b);
	strcpy(b.shm, "other");
	CU_ASSERT_EQUAL(cfg_needs_restart(&a, &b, why, sizeof(why)), 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(why, "shm changed (outbox -> other)"));
	cfg_free(&b);

	cfg_default(&b);
	CU_ASSERT_EQUAL(cfg_set_str(&b.spool_dir, "/var/spool/outbox"), 0);
	CU_ASSERT_EQUAL(cfg_needs_restart(&a, &b, why, sizeof(why)), 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(why, "spool_dir"));
	/* an equal string in another buffer is no change */
	CU_ASSERT_EQUAL(cfg_set_str(&b.spool_dir, "./outbox-spool"), 0);
	CU_ASSERT_EQUAL(cfg_needs_restart(&a, &b, why, sizeof(why)), 0);
	/* no spool_dir at all differs from one */
	CU_ASSERT_EQUAL(cfg_set_str(&b.spool_dir, NULL), 0);
	CU_ASSERT_EQUAL(cfg_needs_restart(&a, &b, why, sizeof(why)), 1);
	CU_ASSERT_EQUAL(cfg_needs_restart(&b, &a, why, sizeof(why)), 1);
	CU_ASSERT_EQUAL(cfg_needs_restart(&b, &b, why, sizeof(why)), 0);
	/* why may be omitted */
	b.ring_size = 1ull << 20;
	CU_ASSERT_EQUAL(cfg_needs_restart(&a, &b, NULL, 0), 1);
	cfg_free(&b);
	cfg_free(&a);
}

/* ---- memory and inih state ----------------------------------------------- */

static void test_load_over_default_and_reload(void)
{
	struct tload t;
	char path[300];
	struct cfg c;

	/* cfg_load() over a defaulted struct (leaks would fail under ASan) */
	CU_ASSERT_EQUAL(t_load(&t, rich_config), 0);
	snprintf(path, sizeof(path), "%s", t.path);
	cfg_default(&c);
	CU_ASSERT_EQUAL(cfg_load(&c, path, NULL), 0);
	assert_cfg_eq(&t.c, &c);
	cfg_free(&c);
	/* cfg_free() twice is harmless, and a freed struct can be reloaded */
	cfg_free(&c);
	CU_ASSERT_EQUAL(cfg_load(&c, path, NULL), 0);
	CU_ASSERT_EQUAL(c.nsinks, 4);
	cfg_free(&c);

	/* string fields of a defaulted struct can be replaced */
	cfg_default(&c);
	CU_ASSERT_EQUAL(cfg_set_str(&c.spool_dir, "/elsewhere"), 0);
	ASSERT_STR(c.spool_dir, "/elsewhere");
	CU_ASSERT_EQUAL(cfg_set_str(&c.sinks[0].path, NULL), 0);
	CU_ASSERT_PTR_NULL(c.sinks[0].path);
	cfg_free(&c);
	t_done(&t);

	/* errors with err == NULL are still counted */
	CU_ASSERT_EQUAL(t_load(&t, "[broker]\nring_size = 1\nbad = 2\n"), 2);
	snprintf(path, sizeof(path), "%s", t.path);
	CU_ASSERT_EQUAL(cfg_load(&c, path, NULL), 2);
	cfg_free(&c);
	t_done(&t);
}

static void test_inih_options_restored(void)
{
	static char start[] = "!", inl[] = "%";
	struct {
		bool multi, bom, inl_on, stack, re, stop, novalue;
		int max, initial;
		char *start, *inl;
	} o = {
		ini_allow_multiline, ini_allow_bom, ini_allow_inline_comments,
		ini_use_stack, ini_allow_realloc, ini_stop_on_first_error,
		ini_allow_no_value, ini_max_line, ini_initial_alloc,
		ini_start_comment_prefixes, ini_inline_comment_prefixes,
	};
	struct tload t;

	/* odd values that cfg_load() must put back */
	ini_allow_multiline = true;
	ini_allow_bom = true;
	ini_allow_inline_comments = true;
	ini_use_stack = true;
	ini_allow_realloc = false;
	ini_stop_on_first_error = true;
	ini_allow_no_value = true;
	ini_max_line = 1234;
	ini_initial_alloc = 567;
	ini_start_comment_prefixes = start;
	ini_inline_comment_prefixes = inl;
	/* and the parse itself ran with ours: an inline '#' comment, an
	 * indented line that is not a continuation */
	CU_ASSERT_EQUAL(t_load(&t, "[broker]\nlog_level = warn # c\n"
			       "  shm_mode = 0600\n"), 0);
	CU_ASSERT_EQUAL(t.c.log_level, LOG_WARN);
	CU_ASSERT_EQUAL(t.c.shm_mode, 0600);
	t_done(&t);
	CU_ASSERT_EQUAL(ini_allow_multiline, true);
	CU_ASSERT_EQUAL(ini_allow_bom, true);
	CU_ASSERT_EQUAL(ini_allow_inline_comments, true);
	CU_ASSERT_EQUAL(ini_use_stack, true);
	CU_ASSERT_EQUAL(ini_allow_realloc, false);
	CU_ASSERT_EQUAL(ini_stop_on_first_error, true);
	CU_ASSERT_EQUAL(ini_allow_no_value, true);
	CU_ASSERT_EQUAL(ini_max_line, 1234);
	CU_ASSERT_EQUAL(ini_initial_alloc, 567);
	CU_ASSERT_PTR_EQUAL(ini_start_comment_prefixes, start);
	CU_ASSERT_PTR_EQUAL(ini_inline_comment_prefixes, inl);

	ini_allow_multiline = o.multi;
	ini_allow_bom = o.bom;
	ini_allow_inline_comments = o.inl_on;
	ini_use_stack = o.stack;
	ini_allow_realloc = o.re;
	ini_stop_on_first_error = o.stop;
	ini_allow_no_value = o.novalue;
	ini_max_line = o.max;
	ini_initial_alloc = o.initial;
	ini_start_comment_prefixes = o.start;
	ini_inline_comment_prefixes = o.inl;
}

static int add_config_suite(void)
{
	CU_pSuite s = CU_add_suite("config", suite_init, suite_clean);

	if (!s)
		return -1;
	if (!CU_add_test(s, "size units", test_size_units) ||
	    !CU_add_test(s, "duration units", test_duration_units) ||
	    !CU_add_test(s, "counts and percentages",
			 test_count_and_pct_values) ||
	    !CU_add_test(s, "defaults", test_defaults) ||
	    !CU_add_test(s, "empty file is the default",
			 test_empty_file_is_default) ||
	    !CU_add_test(s, "spec example", test_spec_example) ||
	    !CU_add_test(s, "default sink added or replaced",
			 test_default_sink_added_or_replaced) ||
	    !CU_add_test(s, "type-dependent defaults", test_type_defaults) ||
	    !CU_add_test(s, "sink type names", test_sink_type_names) ||
	    !CU_add_test(s, "status overrides", test_status_overrides) ||
	    !CU_add_test(s, "repeated header", test_repeated_header) ||
	    !CU_add_test(s, "inline comments and quotes",
			 test_inline_comments_and_quotes) ||
	    !CU_add_test(s, "long values", test_long_values) ||
	    !CU_add_test(s, "CRLF, BOM, NUL", test_crlf_bom_nul) ||
	    !CU_add_test(s, "error table FILE:LINE", test_error_table) ||
	    !CU_add_test(s, "sink name limits", test_sink_name_limits) ||
	    !CU_add_test(s, "all errors reported", test_all_errors_reported) ||
	    !CU_add_test(s, "sink count limit", test_sink_count_limit) ||
	    !CU_add_test(s, "unreadable file", test_unreadable) ||
	    !CU_add_test(s, "credential permission warning",
			 test_credential_warning) ||
	    !CU_add_test(s, "round trip (rich)", test_round_trip_rich) ||
	    !CU_add_test(s, "round trip (default)", test_round_trip_default) ||
	    !CU_add_test(s, "needs restart", test_needs_restart) ||
	    !CU_add_test(s, "load over default, reload",
			 test_load_over_default_and_reload) ||
	    !CU_add_test(s, "inih options restored",
			 test_inih_options_restored))
		return -1;
	return 0;
}

TEST_MAIN(add_config_suite)
