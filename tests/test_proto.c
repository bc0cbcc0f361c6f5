/* test_proto.c - golden tests of the upstream protocols' bytes and
 * headers (broker/proto_*.c) and of the exact msgpack -> JSON writer
 * (json_w_mp in broker/json.c).
 *
 * Every expected body is written out in full: a change in what goes on
 * the wire has to change this file. The records are real envelopes,
 * packed the way liboutbox packs them (env_pack_head), with fixed ids
 * and times so the bytes are reproducible.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "buf.h"
#include "config.h"
#include "envelope.h"
#include "json.h"
#include "policy.h"
#include "proto.h"

#define EXPECT_STR(got, want) do {                                       \
		const char *g_ = (got), *w_ = (want);                    \
		CU_ASSERT_STRING_EQUAL(g_, w_);                          \
		if (strcmp(g_, w_))                                      \
			show_diff(g_, w_);                               \
	} while (0)

/* both strings with newlines shown as \n, for a failing comparison */
static void show_diff(const char *g, const char *w)
{
	const char *s[2] = { g, w };
	int i;

	for (i = 0; i < 2; i++) {
		fprintf(stderr, "\n %s ", i ? "want" : "got ");
		for (const char *c = s[i]; *c; c++)
			if (*c == '\n')
				fputs("\\n", stderr);
			else
				fputc(*c, stderr);
	}
	fputc('\n', stderr);
}

/* ---- msgpack -> JSON, exact ------------------------------------------------ */

static char *mp_json(const msgpack_sbuffer *sb)
{
	msgpack_unpacked up;
	struct json_w w;
	struct buf out;
	size_t off = 0;
	char *s = NULL;

	msgpack_unpacked_init(&up);
	json_w_init(&w);
	buf_init(&out, 0);
	if (msgpack_unpack_next(&up, sb->data, sb->size, &off) ==
	    MSGPACK_UNPACK_SUCCESS && json_w_mp(&w, &up.data, &out) == 0 &&
	    buf_addc(&out, 0) == 0)
		s = strdup((const char *)out.p);
	buf_free(&out);
	json_w_fini(&w);
	msgpack_unpacked_destroy(&up);
	return s;
}

#define ASSERT_MP(sb, want) do {                                         \
		char *got_ = mp_json(sb);                                \
		CU_ASSERT_PTR_NOT_NULL(got_);                            \
		if (got_)                                                \
			EXPECT_STR(got_, want);                          \
		free(got_);                                              \
	} while (0)

static void pk_s(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void test_json_integers(void)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 8);
	msgpack_pack_uint64(&pk, UINT64_MAX);
	msgpack_pack_uint64(&pk, (uint64_t)INT64_MAX + 1);
	msgpack_pack_int64(&pk, INT64_MIN);
	msgpack_pack_uint64(&pk, (1ull << 53) + 1);   /* not a double */
	msgpack_pack_int64(&pk, -(1ll << 53) - 1);
	msgpack_pack_uint64(&pk, 0);
	msgpack_pack_int64(&pk, -1);
	msgpack_pack_uint8(&pk, 255);
	ASSERT_MP(&sb, "[18446744073709551615,9223372036854775808,"
		  "-9223372036854775808,9007199254740993,-9007199254740993,"
		  "0,-1,255]");
	msgpack_sbuffer_destroy(&sb);
}

static void test_json_floats(void)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 11);
	msgpack_pack_double(&pk, 0.1);
	msgpack_pack_double(&pk, 1e23);
	/* the smallest subnormal: 15 digits read back to it */
	msgpack_pack_double(&pk, 5e-324);
	msgpack_pack_double(&pk, 1.7976931348623157e308);
	msgpack_pack_double(&pk, 2.0);              /* stays a real */
	msgpack_pack_double(&pk, -0.0);
	msgpack_pack_double(&pk, NAN);
	msgpack_pack_double(&pk, -INFINITY);
	msgpack_pack_float(&pk, 0.1f);              /* shortest float32 */
	msgpack_pack_float(&pk, 16777217.0f);       /* rounds to 2^24 */
	msgpack_pack_double(&pk, 0.30000000000000004);
	ASSERT_MP(&sb, "[0.1,1e+23,4.94065645841247e-324,"
		  "1.7976931348623157e+308,2.0,-0.0,null,null,0.1,16777216.0,"
		  "0.30000000000000004]");
	msgpack_sbuffer_destroy(&sb);
}

static void test_json_strings(void)
{
	static const char ctl[] = "a\"b\\c\n\t\x01\x1f/\x7f";
	static const char bad[] = "x\xff" "y\xc3(\xed\xa0\x80z";
	static const char nul[] = "a\0b";
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 6);
	msgpack_pack_str_with_body(&pk, ctl, sizeof(ctl) - 1);
	pk_s(&pk, "\xc3\xa9\xe2\x80\xa8\xf0\x9f\x98\x80");  /* é U+2028 😀 */
	msgpack_pack_str_with_body(&pk, bad, sizeof(bad) - 1);
	msgpack_pack_str_with_body(&pk, nul, sizeof(nul) - 1);
	msgpack_pack_nil(&pk);
	msgpack_pack_array(&pk, 2);
	msgpack_pack_true(&pk);
	msgpack_pack_false(&pk);
	ASSERT_MP(&sb, "[\"a\\\"b\\\\c\\n\\t\\u0001\\u001F/\x7f\","
		  "\"\xc3\xa9\xe2\x80\xa8\xf0\x9f\x98\x80\","
		  "\"x\xef\xbf\xbdy\xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd"
		  "\xef\xbf\xbdz\",\"a\\u0000b\",null,[true,false]]");
	msgpack_sbuffer_destroy(&sb);
}

static void test_json_bin_keys(void)
{
	static const uint8_t bin[] = { 0xfb, 0xff, 0xfe, 0x00 };
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 6);
	pk_s(&pk, "b");
	msgpack_pack_bin_with_body(&pk, bin, sizeof(bin));
	msgpack_pack_uint64(&pk, 7);               /* non-string keys */
	pk_s(&pk, "seven");
	msgpack_pack_true(&pk);
	msgpack_pack_nil(&pk);
	msgpack_pack_bin_with_body(&pk, "foo", 3); /* a bin key: base64 */
	msgpack_pack_map(&pk, 0);
	pk_s(&pk, "e");
	msgpack_pack_ext_with_body(&pk, "fo", 2, -5);
	pk_s(&pk, "b");                            /* duplicate: kept */
	msgpack_pack_int64(&pk, -3);
	ASSERT_MP(&sb, "{\"b\":\"+//+AA==\",\"7\":\"seven\",\"true\":null,"
		  "\"Zm9v\":{},\"e\":{\"ext\":-5,\"data\":\"Zm8=\"},\"b\":-3}");
	msgpack_sbuffer_destroy(&sb);
}

static void test_json_depth(void)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char *got;
	int i;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	for (i = 0; i < 30; i++)        /* msgpack-c's own limit is 32 */
		msgpack_pack_array(&pk, 1);
	msgpack_pack_nil(&pk);
	got = mp_json(&sb);
	CU_ASSERT_PTR_NOT_NULL(got);
	if (got)
		CU_ASSERT_EQUAL(strlen(got), 30 * 2 + 4);
	free(got);
	msgpack_sbuffer_destroy(&sb);
}

/* A map key that is a map whose key is a map...: each level's key is
 * the JSON text of the one inside, escaped again, so the text doubled
 * with every level (found by fuzz_proto: a 64-level body made gigabytes
 * from a few hundred bytes). Container keys nest JSON_W_MAX_KEY_NEST
 * deep at most; deeper is invalid, at once. */
static void test_json_key_nest(void)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_unpacked up;
	struct json_w w;
	struct buf out;
	json_t *j;
	int i, levels;

	for (levels = 1; levels <= 20; levels += 19) {
		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		/* {{{..."k\"": 1} : 1} : 1} */
		for (i = 0; i < levels; i++)
			msgpack_pack_map(&pk, 1);
		pk_s(&pk, "k\"\\");
		for (i = 0; i < levels; i++)
			msgpack_pack_int(&pk, 1);
		msgpack_unpacked_init(&up);
		CU_ASSERT_FATAL(msgpack_unpack_next(&up, sb.data, sb.size,
						    NULL) ==
				MSGPACK_UNPACK_SUCCESS);
		/* one level down: an ordinary map key holding a map */
		json_w_init(&w);
		buf_init(&out, 1 << 20);
		if (levels == 1) {
			CU_ASSERT_EQUAL(json_w_mp(&w, &up.data, &out), 0);
		} else {
			CU_ASSERT_EQUAL(json_w_mp(&w, &up.data, &out),
					-EINVAL);
			CU_ASSERT_EQUAL(out.len, 0);
		}
		j = json_from_msgpack(&up.data);
		CU_ASSERT(levels == 1 ? j != NULL : j == NULL);
		json_decref(j);
		buf_free(&out);
		json_w_fini(&w);
		msgpack_unpacked_destroy(&up);
		msgpack_sbuffer_destroy(&sb);
	}
}

/* ---- envelopes and a protocol instance -------------------------------- */

#define TS_NS 1793534400123000000ull      /* 2026-11-01T12:00:00.123Z */
#define NOW_MS 1793534401000ll            /* 2026-11-01T12:00:01.000Z */

struct recs {
	msgpack_sbuffer sb[16];
	struct spool_rec r[16];
	uint8_t gone[16];
	unsigned n;
};

/* body kinds for add_rec */
enum { B_JSON, B_MP_MAP, B_BIN };

/* Appends an envelope: id = 0x11..11 segment, position n; body as kind.
 * For B_MP_MAP, body is "k=v" pairs separated by ',' (strings). */
static void add_rec(struct recs *R, const char *type, int kind,
		    const char *body)
{
	msgpack_sbuffer *sb = &R->sb[R->n];
	msgpack_packer pk;
	uint8_t id[ENV_ID_LEN];

	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	env_make_id(id, 0x1111111111111111ull, 0x100 + R->n);
	env_pack_head(&pk, "api", 3, type, strlen(type), TS_NS, id);
	if (kind == B_JSON) {
		pk_s(&pk, body);
	} else if (kind == B_BIN) {
		msgpack_pack_bin_with_body(&pk, body, strlen(body));
	} else {
		char *dup = strdup(body), *save = NULL, *kv;
		int n = 0;

		for (kv = dup; *kv; kv++)
			n += *kv == ',';
		msgpack_pack_map(&pk, *body ? (size_t)n + 1 : 0);
		for (kv = strtok_r(dup, ",", &save); kv;
		     kv = strtok_r(NULL, ",", &save)) {
			char *eq = strchr(kv, '=');

			*eq = 0;
			pk_s(&pk, kv);
			if (eq[1] == '#')       /* #N: an unsigned integer */
				msgpack_pack_uint64(&pk, strtoull(eq + 2, NULL,
								  10));
			else
				pk_s(&pk, eq + 1);
		}
		free(dup);
	}
	R->r[R->n].data = (const uint8_t *)sb->data;
	R->r[R->n].len = (uint32_t)sb->size;
	R->r[R->n].seq = R->n;
	R->gone[R->n] = 0;
	R->n++;
}

static void recs_free(struct recs *R)
{
	unsigned i;

	for (i = 0; i < R->n; i++)
		msgpack_sbuffer_destroy(&R->sb[i]);
	R->n = 0;
}

/* the engine's side of a protocol, for the tests */
struct eng {
	unsigned dropped[8];
	char last_cat[32];
	int64_t cat_until;          /* returned for cat_limited */
	char limited[32];           /* that category ("" = none) */
};

static int64_t eng_cat_until(void *arg, const char *cat, int64_t now)
{
	struct eng *e = arg;

	return e->limited[0] && !strcmp(cat, e->limited) ? e->cat_until : 0;
}

static void eng_drop(void *arg, enum proto_drop why, const char *cat,
		     uint32_t n)
{
	struct eng *e = arg;

	e->dropped[why] += n;
	snprintf(e->last_cat, sizeof(e->last_cat), "%s", cat ? cat : "");
}

static struct proto *mk_proto(const struct proto_ops *ops,
			      struct cfg_sink *c, struct eng *e)
{
	struct proto *p = proto_new(ops, c, NULL);

	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	memset(e, 0, sizeof(*e));
	p->cat_until = eng_cat_until;
	p->drop = eng_drop;
	p->arg = e;
	p->now_ms = NOW_MS;
	return p;
}

static void sink_cfg(struct cfg_sink *c, enum cfg_sink_type t)
{
	struct cfg d;

	cfg_default(&d);
	*c = d.sinks[0];
	c->type = t;
	c->path = NULL;
	c->event_max_bytes = t == SINK_SEGMENT ? 32 * 1024 : 1024 * 1024;
	c->on_rate_limit = t == SINK_SENTRY ? RL_DROP_CATEGORY : RL_HOLD;
	c->client_report_interval_ms = 30000;
}

/* encodes one request; the body as a C string (static) */
static const char *enc(struct proto *p, struct recs *R, uint32_t lo,
		       struct proto_req *q, int *rc)
{
	static struct buf out;
	static int init;

	if (!init) {
		buf_init(&out, 0);
		init = 1;
	}
	*rc = p->ops->encode(p, R->r, R->gone, lo, R->n, &out, q);
	if (buf_addc(&out, 0) < 0)
		return "";
	return (const char *)out.p;
}

/* ---- segment ------------------------------------------------------------- */

static void test_segment_golden(void)
{
	struct cfg_sink c;
	struct eng e;
	struct recs R = { .n = 0 };
	struct proto_req q;
	struct proto *p;
	const char *body;
	int rc;

	sink_cfg(&c, SINK_SEGMENT);
	c.write_key = "wk_123";
	p = mk_proto(&proto_segment_ops, &c, &e);
	EXPECT_STR(p->url, "https://api.segment.io/v1/batch");
	EXPECT_STR(p->hdrs[0], "Content-Type: application/json");
	/* base64("wk_123:") */
	EXPECT_STR(p->hdrs[1], "Authorization: Basic d2tfMTIzOg==");
	CU_ASSERT_PTR_NULL(p->hdrs[2]);

	/* JSON text kept as written (the big integer exact), members added
	 * in front; a body with its own messageId/timestamp/type keeps
	 * them; a msgpack map; an empty object; invalid bodies dropped */
	add_rec(&R, "track", B_JSON,
		" {\"event\":\"x\",\"n\":18446744073709551615}");
	add_rec(&R, "track", B_JSON, "{\"messageId\":\"m1\",\"type\":"
		"\"identify\",\"timestamp\":\"2020-01-01T00:00:00Z\"}");
	add_rec(&R, "page", B_MP_MAP, "name=home,n=#7");
	add_rec(&R, "track", B_JSON, "{}");
	add_rec(&R, "track", B_JSON, "[1]");            /* not an object */
	add_rec(&R, "track", B_JSON, "{\"a\":");        /* not JSON */
	add_rec(&R, "track", B_BIN, "bytes");
	body = enc(p, &R, 0, &q, &rc);
	CU_ASSERT_EQUAL(rc, 0);
	CU_ASSERT_EQUAL(q.taken, 7);
	CU_ASSERT_EQUAL(q.sent, 4);
	CU_ASSERT_EQUAL(e.dropped[PROTO_DROP_INVALID], 3);
	CU_ASSERT(R.gone[4] == PROTO_DROP_INVALID && R.gone[6]);
	EXPECT_STR(body, "{\"batch\":["
		"{\"messageId\":\"11111111111111110000000000000100\","
		"\"timestamp\":\"2026-11-01T12:00:00.123Z\",\"type\":\"track\","
		"\"event\":\"x\",\"n\":18446744073709551615},"
		"{\"messageId\":\"m1\",\"type\":\"identify\",\"timestamp\":"
		"\"2020-01-01T00:00:00Z\"},"
		"{\"messageId\":\"11111111111111110000000000000102\","
		"\"timestamp\":\"2026-11-01T12:00:00.123Z\",\"type\":\"page\","
		"\"name\":\"home\",\"n\":7},"
		"{\"messageId\":\"11111111111111110000000000000103\","
		"\"timestamp\":\"2026-11-01T12:00:00.123Z\",\"type\":\"track\"}"
		"],\"sentAt\":\"2026-11-01T12:00:01.000Z\"}");

	/* encoding the same records again (a retry): the same bytes, the
	 * invalid ones not counted twice */
	CU_ASSERT_STRING_EQUAL(enc(p, &R, 0, &q, &rc), body);
	CU_ASSERT_EQUAL(e.dropped[PROTO_DROP_INVALID], 3);
	proto_free(p);
	recs_free(&R);
}

static void test_segment_limits(void)
{
	struct cfg_sink c;
	struct eng e;
	struct recs R = { .n = 0 };
	struct proto_req q;
	struct proto *p;
	char *big = malloc(40000);
	const char *body;
	int rc, i;

	CU_ASSERT_FATAL(big != NULL);
	sink_cfg(&c, SINK_SEGMENT);
	c.write_key = "k";
	c.batch_max_bytes = 600;
	p = mk_proto(&proto_segment_ops, &c, &e);
	/* over 32 KB once messageId etc. are added: too_large */
	snprintf(big, 40000, "{\"s\":\"%0*d\"}", 32 * 1024 - 100, 0);
	add_rec(&R, "track", B_JSON, big);
	for (i = 0; i < 6; i++)
		add_rec(&R, "track", B_JSON, "{\"p\":\"........................"
			"...........................\"}");
	body = enc(p, &R, 0, &q, &rc);
	CU_ASSERT_EQUAL(rc, 0);
	CU_ASSERT_EQUAL(e.dropped[PROTO_DROP_TOO_LARGE], 1);
	CU_ASSERT(strlen(body) <= 600);
	/* each event is ~170 bytes: 3 fit in 600 */
	CU_ASSERT_EQUAL(q.sent, 3);
	CU_ASSERT_EQUAL(q.taken, 4);
	body = enc(p, &R, q.taken, &q, &rc);
	CU_ASSERT_EQUAL(q.sent, 3);
	CU_ASSERT_EQUAL(q.taken, 3);
	CU_ASSERT(strlen(body) <= 600);
	proto_free(p);
	recs_free(&R);
	free(big);
}

static void test_segment_settings(void)
{
	static const char good[] =
		"{\"integrations\":{\"Segment.io\":{\"apiKey\":\"x\","
		"\"httpConfig\":{\"rateLimitConfig\":{\"maxRetryInterval\":"
		"99999},\"backoffConfig\":{\"maxRetryCount\":5,"
		"\"baseBackoffInterval\":0.01,\"maxBackoffInterval\":20,"
		"\"maxTotalBackoffDuration\":3600,\"jitterPercent\":70,"
		"\"statusCodeOverrides\":{\"500\":\"drop\",\"400\":\"retry\","
		"\"99\":\"drop\",\"418\":\"teapot\"}}}}}}";
	static const char partial[] =
		"{\"integrations\":{\"Segment.io\":{\"httpConfig\":"
		"{\"backoffConfig\":{\"maxRetryCount\":2}}}}}";
	static const char off[] =
		"{\"integrations\":{\"Segment.io\":{\"httpConfig\":"
		"{\"backoffConfig\":{\"enabled\":false,\"maxRetryCount\":2}}}}}";
	struct cfg_sink base, c;
	char what[256];

	sink_cfg(&base, SINK_SEGMENT);
	base.status[0].code = 400;          /* the operator's: stays first */
	base.status[0].action = ST_DROP;
	base.nstatus = 1;
	c = base;
	CU_ASSERT_EQUAL(proto_segment_settings(good, strlen(good), &base, &c,
					       what, sizeof(what)), 0);
	CU_ASSERT_EQUAL(c.max_retries, 5);
	CU_ASSERT_EQUAL(c.backoff_base_ms, 100);         /* clamped 0.1 s */
	CU_ASSERT_EQUAL(c.backoff_max_ms, 20000);
	CU_ASSERT_EQUAL(c.max_backoff_duration_ms, 3600000);
	CU_ASSERT_EQUAL(c.backoff_jitter_pct, 50);       /* clamped */
	CU_ASSERT_EQUAL(c.retry_after_max_ms, 3600000);  /* clamped */
	CU_ASSERT_EQUAL(c.nstatus, 2);                   /* 400 was there */
	CU_ASSERT(c.status[0].code == 400 && c.status[0].action == ST_DROP);
	CU_ASSERT(c.status[1].code == 500 && c.status[1].action == ST_DROP);
	CU_ASSERT(strstr(what, "max_retries=5") != NULL);

	/* later settings without those keys: back to the operator's */
	CU_ASSERT_EQUAL(proto_segment_settings(partial, strlen(partial),
					       &base, &c, what,
					       sizeof(what)), 0);
	CU_ASSERT_EQUAL(c.max_retries, 2);
	CU_ASSERT_EQUAL(c.backoff_base_ms, base.backoff_base_ms);
	CU_ASSERT_EQUAL(c.retry_after_max_ms, base.retry_after_max_ms);
	CU_ASSERT_EQUAL(c.nstatus, 1);
	/* enabled: false is not applied */
	CU_ASSERT_EQUAL(proto_segment_settings(off, strlen(off), &base, &c,
					       what, sizeof(what)), 0);
	CU_ASSERT_EQUAL(c.max_retries, base.max_retries);
	/* bad JSON: refused, nothing changed */
	c.max_retries = 77;
	CU_ASSERT_EQUAL(proto_segment_settings("{\"integr", 8, &base, &c,
					       what, sizeof(what)), -EINVAL);
	CU_ASSERT_EQUAL(proto_segment_settings("[]", 2, &base, &c, what,
					       sizeof(what)), -EINVAL);
	CU_ASSERT_EQUAL(c.max_retries, 77);
}

/* ---- sentry ---------------------------------------------------------------- */

static void test_sentry_dsn(void)
{
	static const struct { const char *dsn, *url, *key; } ok[] = {
		{ "https://abc@o1.ingest.sentry.io/42",
		  "https://o1.ingest.sentry.io/api/42/envelope/", "abc" },
		{ "http://pub:secret@127.0.0.1:9000/7/",
		  "http://127.0.0.1:9000/api/7/envelope/", "pub" },
		{ "https://k@host/some/path/3",
		  "https://host/some/path/api/3/envelope/", "k" },
	};
	static const char *bad[] = { "https://host/4", "ftp://k@h/1",
		"https://k@host", "https://k@host/", "https://@host/1",
		"https://k@/1", "k@host/1" };
	char *url, *key;
	size_t i;

	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		CU_ASSERT_EQUAL(proto_sentry_dsn(ok[i].dsn, &url, &key), 0);
		if (url && key) {
			EXPECT_STR(url, ok[i].url);
			EXPECT_STR(key, ok[i].key);
		}
		free(url);
		free(key);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CU_ASSERT_EQUAL(proto_sentry_dsn(bad[i], &url, &key), -EINVAL);
		CU_ASSERT_PTR_NULL(url);
	}
}

static void test_sentry_golden(void)
{
	static const char fwd[] =
		"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n"
		"{\"type\":\"event\",\"length\":10}\n{\"a\":\"\n\"}\n"
		"{\"type\":\"session\"}\n{\"sid\":1}\n";
	struct cfg_sink c;
	struct eng e;
	struct recs R = { .n = 0 };
	struct proto_req q;
	struct proto *p;
	const char *body;
	int rc;

	sink_cfg(&c, SINK_SENTRY);
	c.dsn = "https://pubkey@sentry.example/99";
	p = mk_proto(&proto_sentry_ops, &c, &e);
	EXPECT_STR(p->url, "https://sentry.example/api/99/envelope/");
	EXPECT_STR(p->hdrs[0], "Content-Type: application/x-sentry-envelope");
	EXPECT_STR(p->hdrs[1], "X-Sentry-Auth: Sentry sentry_version=7, "
		   "sentry_key=pubkey, sentry_client=outbox/"
		   OBX_VERSION_STRING);

	add_rec(&R, "error", B_JSON, "{\"message\":\"boom\",\"level\":"
		"\"error\"}");
	add_rec(&R, "transaction", B_MP_MAP, "event_id=own,transaction=/x");
	add_rec(&R, "envelope", B_JSON, fwd);
	add_rec(&R, "log", B_JSON, "{\"body\":\"hi\"}");
	/* one envelope per request */
	body = enc(p, &R, 0, &q, &rc);
	CU_ASSERT(rc == 0 && q.taken == 1 && q.sent == 1);
	/* what it carries, for the policy: an error */
	CU_ASSERT(q.ncats == 1 && !strcmp(q.cats[0], "error"));
	EXPECT_STR(body, "{\"event_id\":\"11111111111111110000000000000100\","
		   "\"sent_at\":\"2026-11-01T12:00:01.000Z\"}\n"
		   "{\"type\":\"event\",\"length\":119}\n"
		   "{\"event_id\":\"11111111111111110000000000000100\","
		   "\"timestamp\":\"2026-11-01T12:00:00.123Z\","
		   "\"message\":\"boom\",\"level\":\"error\"}\n");
	/* the body's own event_id: kept, none in the envelope header */
	body = enc(p, &R, 1, &q, &rc);
	EXPECT_STR(body, "{\"sent_at\":\"2026-11-01T12:00:01.000Z\"}\n"
		   "{\"type\":\"transaction\",\"length\":76}\n"
		   "{\"timestamp\":\"2026-11-01T12:00:00.123Z\","
		   "\"event_id\":\"own\",\"transaction\":\"/x\"}\n");
	CU_ASSERT(q.ncats == 1 && !strcmp(q.cats[0], "transaction"));
	/* an `envelope` record: forwarded as is; it carries its items'
	 * categories */
	body = enc(p, &R, 2, &q, &rc);
	EXPECT_STR(body, fwd);
	CU_ASSERT(q.ncats == 2 && !strcmp(q.cats[0], "error") &&
		  !strcmp(q.cats[1], "session"));
	body = enc(p, &R, 3, &q, &rc);
	CU_ASSERT(q.ncats == 1 && !strcmp(q.cats[0], "log_item"));
	EXPECT_STR(body, "{\"sent_at\":\"2026-11-01T12:00:01.000Z\"}\n"
		   "{\"type\":\"log\",\"length\":25,\"item_count\":1,"
		   "\"content_type\":\"application/vnd.sentry.items.log+json\"}"
		   "\n{\"items\":[{\"body\":\"hi\"}]}\n");
	proto_free(p);
	recs_free(&R);
	/* categories noted once each; more than PROTO_REQ_CATS: not known */
	memset(&q, 0, sizeof(q));
	proto_req_cat(&q, "error");
	proto_req_cat(&q, "error");
	CU_ASSERT_EQUAL(q.ncats, 1);
	proto_req_cat(&q, "session");
	proto_req_cat(&q, "attachment");
	proto_req_cat(&q, "span");
	CU_ASSERT_EQUAL(q.ncats, 4);
	proto_req_cat(&q, "profile");
	CU_ASSERT_EQUAL(q.ncats, -1);
	proto_req_cat(&q, "error");
	CU_ASSERT_EQUAL(q.ncats, -1);
}

static void test_sentry_limits(void)
{
	static const char fwd[] =
		"{}\n{\"type\":\"event\",\"length\":2}\n{}\n"
		"{\"type\":\"session\"}\n{\"sid\":1}\n";
	struct cfg_sink c;
	struct eng e;
	struct recs R = { .n = 0 };
	struct proto_req q;
	struct proto *p;
	const char *body;
	int rc;

	sink_cfg(&c, SINK_SENTRY);
	c.url = "http://127.0.0.1:1/api/1/envelope/";   /* no dsn: no auth */
	c.client_report_interval_ms = 1000;
	p = mk_proto(&proto_sentry_ops, &c, &e);
	CU_ASSERT_PTR_NULL(p->hdrs[1]);
	add_rec(&R, "error", B_JSON, "{}");
	add_rec(&R, "error", B_JSON, "{}");
	add_rec(&R, "transaction", B_JSON, "{}");
	add_rec(&R, "envelope", B_JSON, fwd);
	strcpy(e.limited, "error");
	e.cat_until = NOW_MS + 60000;

	/* drop-category: both errors dropped (counted by category), the
	 * transaction goes, with a client report (none was sent yet) */
	body = enc(p, &R, 0, &q, &rc);
	CU_ASSERT(rc == 0 && q.taken == 3 && q.sent == 1);
	CU_ASSERT_EQUAL(e.dropped[PROTO_DROP_RATE_LIMITED], 2);
	EXPECT_STR(e.last_cat, "error");
	CU_ASSERT(strstr(body, "{\"type\":\"transaction\"") != NULL);
	CU_ASSERT(strstr(body, "{\"type\":\"client_report\"") != NULL);
	CU_ASSERT(strstr(body, "\"discarded_events\":[{\"reason\":"
			 "\"ratelimit_backoff\",\"category\":\"error\","
			 "\"quantity\":2}]") != NULL);
	/* the forwarded envelope loses its event item, keeps the session;
	 * no second report within the interval */
	body = enc(p, &R, 3, &q, &rc);
	EXPECT_STR(body, "{}\n{\"type\":\"session\"}\n{\"sid\":1}\n");
	/* the stripped item is in the next report */
	p->now_ms += 1000;
	R.gone[2] = 0;
	body = enc(p, &R, 2, &q, &rc);
	CU_ASSERT(strstr(body, "\"quantity\":1}]") != NULL);

	/* hold: errors stay, the transaction behind them goes first */
	recs_free(&R);
	memset(&e.dropped, 0, sizeof(e.dropped));
	c.on_rate_limit = RL_HOLD;
	add_rec(&R, "error", B_JSON, "{}");
	add_rec(&R, "error", B_JSON, "{}");
	add_rec(&R, "transaction", B_JSON, "{\"t\":1}");
	body = enc(p, &R, 0, &q, &rc);
	CU_ASSERT(rc == 0 && q.taken == 1 && q.sent == 1);
	CU_ASSERT(strstr(body, "{\"type\":\"transaction\"") != NULL);
	CU_ASSERT_EQUAL(e.dropped[PROTO_DROP_RATE_LIMITED], 0);
	/* only held records left: -EAGAIN until the limit's end */
	body = enc(p, &R, 1, &q, &rc);
	CU_ASSERT_EQUAL(rc, -EAGAIN);
	CU_ASSERT_EQUAL(q.held_until_ms, NOW_MS + 60000);
	/* the limit is over: they go */
	e.limited[0] = 0;
	body = enc(p, &R, 1, &q, &rc);
	CU_ASSERT(rc == 0 && q.sent == 1 && strstr(body, "\"type\":\"event\""));
	proto_free(p);
	recs_free(&R);
}

/* ---- otlp -------------------------------------------------------------------- */

static void test_otlp_golden(void)
{
	struct cfg_sink c;
	struct eng e;
	struct recs R = { .n = 0 };
	struct proto_req q;
	struct proto *p;
	const char *body;
	char host[256], want[4096];
	int rc;

	sink_cfg(&c, SINK_OTLP);
	c.url = "http://127.0.0.1:4318/";
	c.service_name = "checkout";
	p = mk_proto(&proto_otlp_ops, &c, &e);
	EXPECT_STR(p->url, "http://127.0.0.1:4318/v1/logs");
	EXPECT_STR(p->hdrs[0], "Content-Type: application/json");
	CU_ASSERT_EQUAL(p->ops->classify(p, 503), POL_C_RETRY);
	CU_ASSERT_EQUAL(p->ops->classify(p, 500), POL_C_DROP);
	CU_ASSERT_EQUAL(p->ops->classify(p, 408), POL_C_DROP);
	CU_ASSERT_EQUAL(p->ops->classify(p, 429), POL_C_RETRY);
	/* (a JSON integer past int64 makes jansson read every number of
	 * that body as a real: the msgpack record shows the exact path) */
	add_rec(&R, "log", B_JSON, "{\"level\":\"WARN\",\"message\":\"disk\","
		"\"n\":3,\"f\":0.5,\"big\":-9223372036854775808,\"ok\":true,"
		"\"tags\":[\"a\"],\"m\":{\"k\":null}}");
	add_rec(&R, "log", B_MP_MAP, "msg=hi,severityText=error,u=#"
		"18446744073709551615");
	add_rec(&R, "log", B_BIN, "raw");
	add_rec(&R, "log", B_JSON, "\"just text\"");
	body = enc(p, &R, 0, &q, &rc);
	CU_ASSERT(rc == 0 && q.taken == 4 && q.sent == 4);
	gethostname(host, sizeof(host));
	snprintf(want, sizeof(want),
		"{\"resourceLogs\":[{\"resource\":{\"attributes\":["
		"{\"key\":\"service.name\",\"value\":{\"stringValue\":"
		"\"checkout\"}},{\"key\":\"host.name\",\"value\":"
		"{\"stringValue\":\"%s\"}}]},\"scopeLogs\":[{\"scope\":"
		"{\"name\":\"outbox\",\"version\":\"" OBX_VERSION_STRING "\"},"
		"\"logRecords\":["
		"{\"timeUnixNano\":\"1793534400123000000\","
		"\"observedTimeUnixNano\":\"1793534401000000000\","
		"\"severityNumber\":13,\"severityText\":\"WARN\",\"body\":"
		"{\"stringValue\":\"disk\"},\"attributes\":[{\"key\":"
		"\"log.record.uid\",\"value\":{\"stringValue\":"
		"\"11111111111111110000000000000100\"}},{\"key\":\"outbox.type\","
		"\"value\":{\"stringValue\":\"log\"}},"
		"{\"key\":\"n\",\"value\":{\"intValue\":\"3\"}},"
		"{\"key\":\"f\",\"value\":{\"doubleValue\":0.5}},"
		"{\"key\":\"big\",\"value\":{\"intValue\":"
		"\"-9223372036854775808\"}},"
		"{\"key\":\"ok\",\"value\":{\"boolValue\":true}},"
		"{\"key\":\"tags\",\"value\":{\"arrayValue\":{\"values\":"
		"[{\"stringValue\":\"a\"}]}}},"
		"{\"key\":\"m\",\"value\":{\"kvlistValue\":{\"values\":"
		"[{\"key\":\"k\",\"value\":{}}]}}}]},"
		"{\"timeUnixNano\":\"1793534400123000000\","
		"\"observedTimeUnixNano\":\"1793534401000000000\","
		"\"severityNumber\":17,\"severityText\":\"error\",\"body\":"
		"{\"stringValue\":\"hi\"},\"attributes\":[{\"key\":"
		"\"log.record.uid\",\"value\":{\"stringValue\":"
		"\"11111111111111110000000000000101\"}},{\"key\":\"outbox.type\","
		"\"value\":{\"stringValue\":\"log\"}},"
		"{\"key\":\"u\",\"value\":{\"stringValue\":"
		"\"18446744073709551615\"}}]},"
		"{\"timeUnixNano\":\"1793534400123000000\","
		"\"observedTimeUnixNano\":\"1793534401000000000\","
		"\"body\":{\"bytesValue\":\"cmF3\"},\"attributes\":[{\"key\":"
		"\"log.record.uid\",\"value\":{\"stringValue\":"
		"\"11111111111111110000000000000102\"}},{\"key\":\"outbox.type\","
		"\"value\":{\"stringValue\":\"log\"}}]},"
		"{\"timeUnixNano\":\"1793534400123000000\","
		"\"observedTimeUnixNano\":\"1793534401000000000\","
		"\"body\":{\"stringValue\":\"just text\"},\"attributes\":[{\"key\":"
		"\"log.record.uid\",\"value\":{\"stringValue\":"
		"\"11111111111111110000000000000103\"}},{\"key\":\"outbox.type\","
		"\"value\":{\"stringValue\":\"log\"}}]}"
		"]}]}]}", host);
	EXPECT_STR(body, want);
	/* the body is valid JSON */
	{
		json_t *j = json_loads(body, 0, NULL);

		CU_ASSERT_PTR_NOT_NULL(j);
		json_decref(j);
	}
	proto_free(p);
	recs_free(&R);
}

/* OTLP partial success: how many of the records a 200 still rejected */
static void test_otlp_partial(void)
{
	static const struct {
		const char *body;
		uint32_t sent, rejected;
		const char *why;
	} rows[] = {
		{ "{\"partialSuccess\":{\"rejectedLogRecords\":\"3\","
		  "\"errorMessage\":\"bad attr\\nvalue\"}}", 10, 3,
		  "bad attr value" },
		{ "{\"partialSuccess\":{\"rejectedLogRecords\":4}}", 10, 4,
		  "" },
		{ "{\"partial_success\":{\"rejected_log_records\":\"2\"}}",
		  10, 2, "" },
		{ "{\"partialSuccess\":{\"rejectedLogRecords\":\"99\"}}", 5,
		  5, "" },                          /* never more than sent */
		{ "{\"partialSuccess\":{\"errorMessage\":\"slow down\"}}",
		  5, 0, "slow down" },              /* a warning */
		{ "{\"partialSuccess\":{}}", 5, 0, "" },
		{ "{}", 5, 0, "" },
		{ "", 5, 0, "" },
		{ "{\"partialSuccess\":{\"rejectedLogRecords\":\"-2\"}}", 5,
		  0, "" },
		{ "{\"partialSuccess\":{\"rejectedLogRecords\":\"7x\"}}", 9,
		  0, "" },
		{ "{\"partialSuccess\":{\"rejectedLogRecords\":\"3\"", 9, 0,
		  "" },                             /* cut: not read */
		{ "\x0a\x02\x08\x03", 9, 0, "" },     /* protobuf: not read */
	};
	struct cfg_sink c;
	struct eng e;
	struct proto *p;
	char why[256];
	size_t i;

	sink_cfg(&c, SINK_OTLP);
	c.url = "http://127.0.0.1:4318";
	p = mk_proto(&proto_otlp_ops, &c, &e);
	for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		uint32_t n = p->ops->accepted(p, rows[i].body,
					      strlen(rows[i].body),
					      rows[i].sent, why, sizeof(why));

		if (n != rows[i].rejected || strcmp(why, rows[i].why))
			fprintf(stderr, "row %zu: %u '%s'\n", i, n, why);
		CU_ASSERT_EQUAL(n, rows[i].rejected);
		CU_ASSERT_STRING_EQUAL(why, rows[i].why);
	}
	proto_free(p);
}

/* ---- NDJSON lines (json_line_fast: the file sink, ndjson/json HTTP) --- */

/* One line from a view built by hand; the text as a C string. */
static char *line_of(struct json_line_cache *jc, const struct env_view *v,
		     int nl, size_t max, int *rc)
{
	struct buf b;
	char *s;

	buf_init(&b, max);
	*rc = json_line_fast(jc, v, &b, nl);
	s = strndup(b.p ? (const char *)b.p : "", b.len);
	buf_free(&b);
	return s;
}

static void view_json(struct env_view *v, const char *sink, const char *type,
		      uint64_t ts, const char *body)
{
	memset(v, 0, sizeof(*v));
	v->sink = sink;
	v->sink_len = (uint32_t)strlen(sink);
	v->type = type;
	v->type_len = (uint32_t)strlen(type);
	v->ts = ts;
	v->body_kind = ENV_BODY_JSON;
	v->body = body;
	v->body_len = (uint32_t)strlen(body);
}

/* Golden lines, written out in full: the id in hex or null, the sink and
 * type as JSON strings (escaped), the ts in decimal, a JSON body passed
 * through with raw CR/LF blanked, an empty one as null, bytes in base64,
 * a msgpack map converted; with and without the newline. */
static void test_json_line_golden(void)
{
	static const uint8_t id[ENV_ID_LEN] = { 0x00, 0x01, 0x7f, 0x80, 0x9a,
		0xbc, 0xde, 0xff, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70,
		0x0f };
	struct json_line_cache jc;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_unpacked up;
	struct env_view v;
	char *s;
	int rc;

	json_line_cache_init(&jc);
	view_json(&v, "api", "track", 1700000000123456789ull,
		  "{\"a\":[1,\r\n2]}");
	memcpy(v.id, id, ENV_ID_LEN);
	v.has_id = 1;
	s = line_of(&jc, &v, 1, 0, &rc);
	CU_ASSERT_EQUAL(rc, 0);
	EXPECT_STR(s, "{\"id\":\"00017f809abcdeff102030405060700f\","
		   "\"sink\":\"api\",\"type\":\"track\","
		   "\"ts\":1700000000123456789,\"body\":{\"a\":[1,  2]}}\n");
	free(s);
	s = line_of(&jc, &v, 0, 0, &rc);
	CU_ASSERT_EQUAL(rc, 0);
	EXPECT_STR(s, "{\"id\":\"00017f809abcdeff102030405060700f\","
		   "\"sink\":\"api\",\"type\":\"track\","
		   "\"ts\":1700000000123456789,\"body\":{\"a\":[1,  2]}}");
	free(s);

	view_json(&v, "we\"ird", "t\\y", 0, "");
	s = line_of(&jc, &v, 1, 0, &rc);
	CU_ASSERT_EQUAL(rc, 0);
	EXPECT_STR(s, "{\"id\":null,\"sink\":\"we\\\"ird\","
		   "\"type\":\"t\\\\y\",\"ts\":0,\"body\":null}\n");
	free(s);

	view_json(&v, "", "", 7, "");
	v.body_kind = ENV_BODY_BYTES;
	v.body = "\xff\x00\x01";
	v.body_len = 3;
	s = line_of(&jc, &v, 1, 0, &rc);
	CU_ASSERT_EQUAL(rc, 0);
	EXPECT_STR(s, "{\"id\":null,\"sink\":\"\",\"type\":\"\",\"ts\":7,"
		   "\"body\":\"/wAB\"}\n");
	free(s);

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	pk_s(&pk, "n");
	msgpack_pack_uint64(&pk, 42);
	msgpack_unpacked_init(&up);
	CU_ASSERT_FATAL(msgpack_unpack_next(&up, sb.data, sb.size, NULL) ==
			MSGPACK_UNPACK_SUCCESS);
	v.body_kind = ENV_BODY_MSGPACK;
	v.body_obj = &up.data;
	s = line_of(&jc, &v, 0, 0, &rc);
	CU_ASSERT_EQUAL(rc, 0);
	EXPECT_STR(s, "{\"id\":null,\"sink\":\"\",\"type\":\"\",\"ts\":7,"
		   "\"body\":{\"n\":42}}");
	free(s);
	msgpack_unpacked_destroy(&up);
	msgpack_sbuffer_destroy(&sb);
	json_line_cache_free(&jc);
}

/* Every ts width and every id byte against printf; a line that does not
 * fit the buffer's cap by one byte leaves the buffer as it was, one that
 * fits exactly is written. */
static void test_json_line_digits_cap(void)
{
	struct json_line_cache jc;
	struct env_view v;
	uint64_t p10 = 1, x = 0x9e3779b97f4a7c15ull;
	char want[256], *s;
	int i, k, rc;

	json_line_cache_init(&jc);
	view_json(&v, "s", "t", 0, "1");
	v.has_id = 1;
	for (i = 0; i <= 20; i++) {
		uint64_t tss[4] = { p10 - 1, p10, p10 + 1, 0 };

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		tss[3] = i == 20 ? UINT64_MAX : x >> (64 - 3 * i - 3);
		for (k = 0; k < 4; k++) {
			int n = 0, b;

			v.ts = tss[k];
			for (b = 0; b < ENV_ID_LEN; b++)
				v.id[b] = (uint8_t)(x >> (b * 4) ^ (unsigned)(i * 16 + b));
			n += snprintf(want + n, sizeof(want) - (size_t)n,
				      "{\"id\":\"");
			for (b = 0; b < ENV_ID_LEN; b++)
				n += snprintf(want + n, sizeof(want) - (size_t)n,
					      "%02x", v.id[b]);
			snprintf(want + n, sizeof(want) - (size_t)n,
				 "\",\"sink\":\"s\",\"type\":\"t\",\"ts\":%llu,"
				 "\"body\":1}\n", (unsigned long long)v.ts);
			s = line_of(&jc, &v, 1, 0, &rc);
			CU_ASSERT_EQUAL(rc, 0);
			EXPECT_STR(s, want);
			free(s);
		}
		if (i < 19)
			p10 *= 10;
	}
	/* the cap: exactly the line fits; one byte less and nothing is
	 * added (a JSON body, then a bytes body whose base64 does not fit) */
	v.ts = 12345;
	s = line_of(&jc, &v, 1, strlen(want), &rc);
	CU_ASSERT_EQUAL(rc, 0);
	free(s);
	{
		struct buf b;
		int kind;

		for (kind = 0; kind < 2; kind++) {
			size_t full;

			buf_init(&b, 0);
			v.body_kind = kind ? ENV_BODY_BYTES : ENV_BODY_JSON;
			CU_ASSERT_EQUAL(json_line_fast(&jc, &v, &b, 1), 0);
			full = b.len;
			buf_free(&b);
			buf_init(&b, full + 3 - 1);
			CU_ASSERT_EQUAL(buf_add(&b, "ab\n", 3), 0);
			CU_ASSERT_EQUAL(json_line_fast(&jc, &v, &b, 1), -E2BIG);
			CU_ASSERT_EQUAL(b.len, 3);
			buf_free(&b);
			buf_init(&b, full + 3);
			CU_ASSERT_EQUAL(buf_add(&b, "ab\n", 3), 0);
			CU_ASSERT_EQUAL(json_line_fast(&jc, &v, &b, 1), 0);
			CU_ASSERT_EQUAL(b.len, full + 3);
			buf_free(&b);
		}
	}
	json_line_cache_free(&jc);
}

/* ---- registration -------------------------------------------------------- */

static int add_json(void)
{
	CU_pSuite s = CU_add_suite("json_exact", NULL, NULL);

	if (!s ||
	    !CU_add_test(s, "json_integers", test_json_integers) ||
	    !CU_add_test(s, "json_floats", test_json_floats) ||
	    !CU_add_test(s, "json_strings", test_json_strings) ||
	    !CU_add_test(s, "json_bin_keys", test_json_bin_keys) ||
	    !CU_add_test(s, "json_depth", test_json_depth) ||
	    !CU_add_test(s, "json_key_nest", test_json_key_nest) ||
	    !CU_add_test(s, "json_line_golden", test_json_line_golden) ||
	    !CU_add_test(s, "json_line_digits_cap",
			 test_json_line_digits_cap))
		return -1;
	return 0;
}

static int add_proto(void)
{
	CU_pSuite s = CU_add_suite("proto", NULL, NULL);

	if (!s ||
	    !CU_add_test(s, "segment_golden", test_segment_golden) ||
	    !CU_add_test(s, "segment_limits", test_segment_limits) ||
	    !CU_add_test(s, "segment_settings", test_segment_settings) ||
	    !CU_add_test(s, "sentry_dsn", test_sentry_dsn) ||
	    !CU_add_test(s, "sentry_golden", test_sentry_golden) ||
	    !CU_add_test(s, "sentry_limits", test_sentry_limits) ||
	    !CU_add_test(s, "otlp_golden", test_otlp_golden) ||
	    !CU_add_test(s, "otlp_partial", test_otlp_partial))
		return -1;
	return 0;
}

TEST_MAIN(add_json, add_proto)
