/* test_cli.c - broker/json.c and the outbox CLI (tools/outbox.c).
 *
 * The json suite checks exact output strings: msgpack maps with nested
 * arrays and non-string keys, bin and ext as base64 (RFC 4648 vectors),
 * U+FFFD repair of invalid UTF-8, JSON text bodies, and the NDJSON
 * envelope line with escaping of odd sink and type names.
 *
 * The cli suite runs the built binary ($OUTBOX_BUILD/outbox, default
 * build/outbox) against a private segment this process creates as a
 * broker would (seg_open_broker), fills the stats and sink pages under
 * their seqlocks, and reads emitted events back from the ring.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <jansson.h>
#include <msgpack.h>

#include "testutil.h"
#include "buf.h"
#include "envelope.h"
#include "json.h"
#include "ring.h"
#include "segment.h"
#include "slots.h"
#include "reactor.h"
#include "spool.h"
#include "persist.h"
#include "policy.h"

/* ---- helpers: msgpack -> JSON text ------------------------------------- */

/* Unpacks sb and converts it; the compact JSON text (malloc'd) or NULL. */
static char *mp_to_json(const msgpack_sbuffer *sb)
{
	msgpack_unpacked up;
	size_t off = 0;
	json_t *j;
	char *s = NULL;

	msgpack_unpacked_init(&up);
	if (msgpack_unpack_next(&up, sb->data, sb->size, &off) ==
	    MSGPACK_UNPACK_SUCCESS) {
		j = json_from_msgpack(&up.data);
		if (j) {
			s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
			json_decref(j);
		}
	}
	msgpack_unpacked_destroy(&up);
	return s;
}

#define ASSERT_JSON(sb, want) do {                                      \
		char *got_ = mp_to_json(sb);                            \
		CU_ASSERT_PTR_NOT_NULL(got_);                           \
		if (got_) {                                             \
			CU_ASSERT_STRING_EQUAL(got_, want);             \
			if (strcmp(got_, want))                         \
				fprintf(stderr, "\n got  %s\n want %s\n",\
					got_, want);                    \
		}                                                       \
		free(got_);                                             \
	} while (0)

static void pk_str(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* ---- json suite -------------------------------------------------------- */

static void test_json_map_nested(void)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 8);
	pk_str(&pk, "a");
	msgpack_pack_array(&pk, 7);
	msgpack_pack_uint64(&pk, 1);
	msgpack_pack_int64(&pk, -2);
	msgpack_pack_true(&pk);
	msgpack_pack_nil(&pk);
	msgpack_pack_double(&pk, 1.5);
	pk_str(&pk, "x");
	msgpack_pack_array(&pk, 2);
	msgpack_pack_array(&pk, 0);
	msgpack_pack_map(&pk, 0);
	/* non-string keys: their JSON text */
	msgpack_pack_uint64(&pk, 7);
	pk_str(&pk, "seven");
	msgpack_pack_int64(&pk, -3);
	msgpack_pack_false(&pk);
	msgpack_pack_true(&pk);
	msgpack_pack_uint64(&pk, 1);
	msgpack_pack_nil(&pk);
	msgpack_pack_uint64(&pk, 2);
	msgpack_pack_array(&pk, 2);
	msgpack_pack_uint64(&pk, 1);
	pk_str(&pk, "k");
	msgpack_pack_uint64(&pk, 3);
	/* a bin key: its base64 text */
	msgpack_pack_bin_with_body(&pk, "foo", 3);
	msgpack_pack_uint64(&pk, 4);
	pk_str(&pk, "nested");
	msgpack_pack_map(&pk, 1);
	pk_str(&pk, "b");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_map(&pk, 1);
	pk_str(&pk, "c");
	msgpack_pack_uint64(&pk, UINT64_MAX);
	ASSERT_JSON(&sb, "{\"a\":[1,-2,true,null,1.5,\"x\",[[],{}]],"
		    "\"7\":\"seven\",\"-3\":false,\"true\":1,\"null\":2,"
		    "\"[1,\\\"k\\\"]\":3,\"Zm9v\":4,"
		    "\"nested\":{\"b\":[{\"c\":1.8446744073709552e19}]}}");
	msgpack_sbuffer_destroy(&sb);
}

static void test_json_scalars(void)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 5);
	msgpack_pack_int64(&pk, INT64_MIN);
	msgpack_pack_uint64(&pk, (uint64_t)INT64_MAX);
	msgpack_pack_float(&pk, 0.25f);
	msgpack_pack_double(&pk, INFINITY);     /* no infinity in JSON */
	msgpack_pack_str_with_body(&pk, "a\0b", 3);
	ASSERT_JSON(&sb, "[-9223372036854775808,9223372036854775807,0.25,"
		    "null,\"a\\u0000b\"]");
	msgpack_sbuffer_destroy(&sb);
}

static void test_json_bin_base64(void)
{
	static const char *in[] = { "", "f", "fo", "foo", "foob", "fooba",
				    "foobar" };
	static const char *want[] = { "\"\"", "\"Zg==\"", "\"Zm8=\"",
				      "\"Zm9v\"", "\"Zm9vYg==\"",
				      "\"Zm9vYmE=\"", "\"Zm9vYmFy\"" };
	static const uint8_t hi[] = { 0xfb, 0xff, 0xfe };
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char big[900], *wantbig, *got;
	size_t i;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	for (i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
		msgpack_sbuffer_clear(&sb);
		msgpack_pack_bin_with_body(&pk, in[i], strlen(in[i]));
		ASSERT_JSON(&sb, want[i]);
	}
	/* the two last letters of the alphabet */
	msgpack_sbuffer_clear(&sb);
	msgpack_pack_bin_with_body(&pk, hi, sizeof(hi));
	ASSERT_JSON(&sb, "\"+//+\"");
	/* ext: {"ext":type,"data":base64} */
	msgpack_sbuffer_clear(&sb);
	msgpack_pack_ext_with_body(&pk, "fo", 2, -5);
	ASSERT_JSON(&sb, "{\"ext\":-5,\"data\":\"Zm8=\"}");
	/* larger than the on-stack scratch: 300 x "foo" */
	for (i = 0; i < sizeof(big); i++)
		big[i] = "foo"[i % 3];
	wantbig = malloc(1200 + 3);
	CU_ASSERT_FATAL(wantbig != NULL);
	wantbig[0] = '"';
	for (i = 0; i < 300; i++)
		memcpy(wantbig + 1 + 4 * i, "Zm9v", 4);
	strcpy(wantbig + 1201, "\"");
	msgpack_sbuffer_clear(&sb);
	msgpack_pack_bin_with_body(&pk, big, sizeof(big));
	got = mp_to_json(&sb);
	CU_ASSERT_PTR_NOT_NULL(got);
	if (got)
		CU_ASSERT_STRING_EQUAL(got, wantbig);
	free(got);
	free(wantbig);
	msgpack_sbuffer_destroy(&sb);
}

/* The converted string of n raw bytes equals want (UTF-8 bytes). */
static void check_lossy(const char *in, size_t n, const char *want)
{
	json_t *j = json_string_lossy(in, n);

	CU_ASSERT_PTR_NOT_NULL_FATAL(j);
	CU_ASSERT_EQUAL(json_string_length(j), strlen(want));
	CU_ASSERT_STRING_EQUAL(json_string_value(j), want);
	json_decref(j);
}

#define FFFD "\xef\xbf\xbd"

static void test_json_invalid_utf8(void)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	char big[400], want[1300];
	size_t i;

	check_lossy("plain", 5, "plain");
	check_lossy("a\xff" "b", 3, "a" FFFD "b");
	/* a truncated sequence is one replacement (maximal subpart) */
	check_lossy("\xe2\x82" "x", 3, FFFD "x");
	check_lossy("x\xe2\x82", 3, "x" FFFD);
	/* overlong, surrogate, above U+10FFFF: every byte is invalid */
	check_lossy("\xc0\xaf", 2, FFFD FFFD);
	check_lossy("\xed\xa0\x80", 3, FFFD FFFD FFFD);
	check_lossy("\xf4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD);
	/* valid multi-byte sequences pass untouched */
	check_lossy("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9,
		    "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
	/* longer than the on-stack scratch: the heap path */
	for (i = 0; i < sizeof(big); i++)
		big[i] = i % 2 ? 'z' : (char)0x80;
	for (i = 0; i < sizeof(big) / 2; i++)
		memcpy(want + 4 * i, FFFD "z", 4);
	want[4 * (sizeof(big) / 2)] = 0;
	check_lossy(big, sizeof(big), want);

	/* inside msgpack: as a value and as a key */
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str_with_body(&pk, "k\xfe", 2);
	msgpack_pack_str_with_body(&pk, "v\xc3", 2);
	ASSERT_JSON(&sb, "{\"k" FFFD "\":\"v" FFFD "\"}");
	msgpack_sbuffer_destroy(&sb);
}

/* An envelope packed the way liboutbox does, with the given body. */
struct env_fix {
	msgpack_sbuffer sb;
	msgpack_packer pk;
	struct env_reader er;
	struct env_view v;
};

static void env_fix_begin(struct env_fix *f, const char *sink, size_t slen,
			  const char *type, size_t tlen)
{
	uint8_t id[ENV_ID_LEN];
	int i;

	for (i = 0; i < ENV_ID_LEN; i++)
		id[i] = (uint8_t)(i * 17);
	msgpack_sbuffer_init(&f->sb);
	msgpack_packer_init(&f->pk, &f->sb, msgpack_sbuffer_write);
	env_reader_init(&f->er);
	env_pack_head(&f->pk, sink, slen, type, tlen, 1700000000123456789ull,
		      id);
}

static int env_fix_parse(struct env_fix *f)
{
	return env_parse(&f->er, f->sb.data, f->sb.size, &f->v);
}

static void env_fix_end(struct env_fix *f)
{
	env_reader_fini(&f->er);
	msgpack_sbuffer_destroy(&f->sb);
}

static char *body_json(struct env_fix *f)
{
	json_t *j = json_body(&f->v);
	char *s;

	if (!j)
		return NULL;
	s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(j);
	return s;
}

static void test_json_body_text(void)
{
	static const struct { const char *in; const char *want; } c[] = {
		{ "{ \"a\" : [1, 2],\n \"b\": \"\\u00e9\" }",
		  "{\"a\":[1,2],\"b\":\"\xc3\xa9\"}" },
		{ "42", "42" },
		{ "\"s\"", "\"s\"" },
		{ "{\"z\":\"\\u0000\"}", "{\"z\":\"\\u0000\"}" },
		{ "{\"a\":", NULL },
		{ "", NULL },
		{ "{} x", NULL },
		{ "{'a':1}", NULL },
		{ "[1,]", NULL },
	};
	struct env_fix f;
	size_t i;
	char *s;

	for (i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		env_fix_begin(&f, "", 0, "t", 1);
		msgpack_pack_str_with_body(&f.pk, c[i].in, strlen(c[i].in));
		CU_ASSERT_EQUAL_FATAL(env_fix_parse(&f), 0);
		CU_ASSERT_EQUAL(f.v.body_kind, ENV_BODY_JSON);
		s = body_json(&f);
		if (c[i].want) {
			CU_ASSERT_PTR_NOT_NULL(s);
			if (s)
				CU_ASSERT_STRING_EQUAL(s, c[i].want);
		} else {
			CU_ASSERT_PTR_NULL(s);
			CU_ASSERT_PTR_NULL(json_envelope(&f.v));
		}
		free(s);
		env_fix_end(&f);
	}
}

static const char ID_HEX[] = "00112233445566778899aabbccddeeff";

static void test_json_envelope_line(void)
{
	static const char sink[] = "a\"b\\c\nd\x01\xc3\xa9";
	static const char type[] = "ty\"pe\t\xf0\x9f\x98\x80";
	const char *want =
		"X{\"id\":\"00112233445566778899aabbccddeeff\","
		"\"sink\":\"a\\\"b\\\\c\\nd\\u0001\xc3\xa9\","
		"\"type\":\"ty\\\"pe\\t\xf0\x9f\x98\x80\","
		"\"ts\":1700000000123456789,"
		"\"body\":{\"k\":[1,{\"m\":null}]}}\n";
	struct env_fix f;
	struct buf b;
	json_t *back;

	env_fix_begin(&f, sink, strlen(sink), type, strlen(type));
	pk_str(&f.pk, "{\"k\": [1, {\"m\": null}]}");
	CU_ASSERT_EQUAL_FATAL(env_fix_parse(&f), 0);
	buf_init(&b, 0);
	buf_adds(&b, "X");
	CU_ASSERT_EQUAL(json_envelope_line(&f.v, &b), 0);
	CU_ASSERT_EQUAL(b.len, strlen(want));
	CU_ASSERT(b.len == strlen(want) && memcmp(b.p, want, b.len) == 0);
	if (b.len != strlen(want) || memcmp(b.p, want, b.len))
		fprintf(stderr, "\n got  %.*s want %s", (int)b.len,
			(char *)b.p, want);
	/* the line parses back to the same names */
	back = json_loadb((char *)b.p + 1, b.len - 2, 0, NULL);
	CU_ASSERT_PTR_NOT_NULL_FATAL(back);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(back,
			       "sink")), sink);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(back,
			       "type")), type);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(back, "id")),
			       ID_HEX);
	json_decref(back);
	/* a second line appends to the reused buffer */
	CU_ASSERT_EQUAL(json_envelope_line(&f.v, &b), 0);
	CU_ASSERT_EQUAL(b.len, 2 * strlen(want) - 1);
	buf_free(&b);
	env_fix_end(&f);
}

static void test_json_envelope_kinds(void)
{
	struct env_fix f;
	struct buf b;
	const char *want;

	buf_init(&b, 0);
	/* msgpack map body, default sink, no type */
	env_fix_begin(&f, "", 0, "", 0);
	msgpack_pack_map(&f.pk, 2);
	pk_str(&f.pk, "n");
	msgpack_pack_array(&f.pk, 2);
	msgpack_pack_int64(&f.pk, -1);
	msgpack_pack_bin_with_body(&f.pk, "fo", 2);
	msgpack_pack_uint64(&f.pk, 5);
	msgpack_pack_nil(&f.pk);
	CU_ASSERT_EQUAL_FATAL(env_fix_parse(&f), 0);
	CU_ASSERT_EQUAL(f.v.body_kind, ENV_BODY_MSGPACK);
	CU_ASSERT_EQUAL(json_envelope_line(&f.v, &b), 0);
	want = "{\"id\":\"00112233445566778899aabbccddeeff\",\"sink\":\"\","
	       "\"type\":\"\",\"ts\":1700000000123456789,"
	       "\"body\":{\"n\":[-1,\"Zm8=\"],\"5\":null}}\n";
	CU_ASSERT(b.len == strlen(want) && memcmp(b.p, want, b.len) == 0);
	env_fix_end(&f);

	/* bin body: base64 string */
	buf_reset(&b);
	env_fix_begin(&f, "s", 1, "t", 1);
	msgpack_pack_bin_with_body(&f.pk, "foobar", 6);
	CU_ASSERT_EQUAL_FATAL(env_fix_parse(&f), 0);
	CU_ASSERT_EQUAL(json_envelope_line(&f.v, &b), 0);
	want = "{\"id\":\"00112233445566778899aabbccddeeff\",\"sink\":\"s\","
	       "\"type\":\"t\",\"ts\":1700000000123456789,"
	       "\"body\":\"Zm9vYmFy\"}\n";
	CU_ASSERT(b.len == strlen(want) && memcmp(b.p, want, b.len) == 0);
	env_fix_end(&f);

	/* invalid JSON text body: -EINVAL, the buffer keeps what it had */
	buf_reset(&b);
	buf_adds(&b, "keep");
	env_fix_begin(&f, "s", 1, "t", 1);
	pk_str(&f.pk, "{nope");
	CU_ASSERT_EQUAL_FATAL(env_fix_parse(&f), 0);
	CU_ASSERT_EQUAL(json_envelope_line(&f.v, &b), -EINVAL);
	CU_ASSERT_EQUAL(b.len, 4);
	env_fix_end(&f);
	buf_free(&b);

	/* a capped buffer: -E2BIG and nothing half-written */
	buf_init(&b, 64);
	buf_adds(&b, "ab");
	env_fix_begin(&f, "s", 1, "t", 1);
	pk_str(&f.pk, "{\"long\":\"0123456789012345678901234567890123\"}");
	CU_ASSERT_EQUAL_FATAL(env_fix_parse(&f), 0);
	CU_ASSERT_EQUAL(json_envelope_line(&f.v, &b), -E2BIG);
	CU_ASSERT_EQUAL(b.len, 2);
	env_fix_end(&f);
	buf_free(&b);
}

static void test_json_append_grows(void)
{
	struct buf b;
	json_t *a = json_array();
	char *s;
	int i;

	for (i = 0; i < 2000; i++)
		json_array_append_new(a, json_integer(i));
	buf_init(&b, 0);
	CU_ASSERT_EQUAL(json_append(&b, a), 0);
	s = json_dumps(a, JSON_COMPACT);
	CU_ASSERT_EQUAL(b.len, strlen(s));
	CU_ASSERT(memcmp(b.p, s, b.len) == 0);
	/* scalars too (JSON_ENCODE_ANY) */
	buf_reset(&b);
	json_decref(a);
	a = json_string("x\"y");
	CU_ASSERT_EQUAL(json_append(&b, a), 0);
	CU_ASSERT(b.len == 6 && memcmp(b.p, "\"x\\\"y\"", 6) == 0);
	CU_ASSERT_EQUAL(json_append(&b, NULL), -EINVAL);
	free(s);
	json_decref(a);
	buf_free(&b);
}

/* ---- CLI: running the binary ------------------------------------------- */

struct cli_res {
	int status;             /* exit code, or 128 + signal */
	char *out, *err;
};

static char g_bin[512];
static struct seg g_seg;
static char g_shm[64];

static char *slurp(FILE *f)
{
	long n;
	char *s;

	fflush(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	s = malloc((size_t)(n < 0 ? 0 : n) + 1);
	if (!s)
		return NULL;
	rewind(f);
	n = (long)fread(s, 1, (size_t)(n < 0 ? 0 : n), f);
	s[n] = 0;
	return s;
}

/* Runs `outbox ARGS...` (NULL-terminated) with `in` on stdin. */
static void cli_run(struct cli_res *r, const char *in, ...)
{
	const char *argv[32];
	FILE *fi = tmpfile(), *fo = tmpfile(), *fe = tmpfile();
	va_list ap;
	int n = 0, st = 0;
	pid_t pid;

	memset(r, 0, sizeof(*r));
	r->status = -1;
	argv[n++] = g_bin;
	va_start(ap, in);
	while (n < 31 && (argv[n] = va_arg(ap, const char *)) != NULL)
		n++;
	va_end(ap);
	argv[n] = NULL;
	CU_ASSERT_FATAL(fi && fo && fe);
	if (in)
		fputs(in, fi);
	fflush(fi);
	rewind(fi);
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		dup2(fileno(fi), 0);
		dup2(fileno(fo), 1);
		dup2(fileno(fe), 2);
		execv(g_bin, (char *const *)argv);
		_exit(127);
	}
	waitpid(pid, &st, 0);
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	r->out = slurp(fo);
	r->err = slurp(fe);
	fclose(fi);
	fclose(fo);
	fclose(fe);
}

static void cli_free(struct cli_res *r)
{
	free(r->out);
	free(r->err);
}

static int has(const char *hay, const char *needle)
{
	int ok = hay && strstr(hay, needle) != NULL;

	if (!ok)
		fprintf(stderr, "\nmissing \"%s\" in:\n%s\n", needle,
			hay ? hay : "(null)");
	return ok;
}

static int count(const char *hay, const char *needle)
{
	int n = 0;

	while (hay && (hay = strstr(hay, needle)) != NULL) {
		n++;
		hay++;
	}
	return n;
}

/* ---- CLI: the segment, written as a broker would ----------------------- */

static int cli_init(void)
{
	struct seg_geom g = { .ring_size = 1u << 16, .max_record = 4096,
			      .nslots = 256 };
	const char *b = getenv("OUTBOX_BUILD");
	char why[256];
	int created;

	snprintf(g_bin, sizeof(g_bin), "%s/outbox", b && *b ? b : "build");
	if (access(g_bin, X_OK) < 0) {
		fprintf(stderr, "test_cli: %s is not built\n", g_bin);
		return -1;
	}
	snprintf(g_shm, sizeof(g_shm), "%s", tu_shm_name("cli"));
	seg_unlink(g_shm);
	if (seg_open_broker(&g_seg, g_shm, &g, 0600, &created, why,
			    sizeof(why)) < 0) {
		fprintf(stderr, "test_cli: %s\n", why);
		return -1;
	}
	unsetenv("OUTBOX_SHM");
	unsetenv("OUTBOX_SINK");
	return 0;
}

static int cli_fini(void)
{
	seg_detach(&g_seg);
	seg_unlink(g_shm);
	return 0;
}

static void stats_lock(_Atomic uint64_t *seq)
{
	atomic_store_explicit(seq, atomic_load(seq) + 1,
			      memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
}

static void stats_unlock(_Atomic uint64_t *seq)
{
	atomic_store_explicit(seq, atomic_load(seq) + 1,
			      memory_order_release);
}

static struct obx_sink_shm *set_sink(uint32_t i, const char *name,
				     uint32_t state, uint64_t until)
{
	struct obx_sink_shm *k = &g_seg.sinks->sink[i];

	memset(k, 0, sizeof(*k));
	snprintf(k->name, sizeof(k->name), "%s", name);
	k->in_use = 1;
	k->state = state;
	k->until_ns = until;
	return k;
}

/* No sinks published: every sink name is accepted by obx_sink(). */
static void clear_sinks(void)
{
	stats_lock(&g_seg.sinks->seq);
	memset(g_seg.sinks->sink, 0, sizeof(g_seg.sinks->sink));
	g_seg.sinks->nsinks = 0;
	stats_unlock(&g_seg.sinks->seq);
}

static void publish_two_sinks(void)
{
	stats_lock(&g_seg.sinks->seq);
	memset(g_seg.sinks->sink, 0, sizeof(g_seg.sinks->sink));
	set_sink(0, "default", OBX_SINK_OK, 0);
	set_sink(1, "api", OBX_SINK_OK, 0);
	g_seg.sinks->nsinks = 2;
	g_seg.sinks->default_sink = 0;
	stats_unlock(&g_seg.sinks->seq);
}

/* The fixture of the stat tests. The identity:
 *   delivered = 40 + 30 + 0                               = 70
 *   dropped   = global 3 + 2 + 1 + 1 + 4 + 1 + 1 + 1       = 14
 *               + api dropped_rejected 2 + expired 1       =  3
 *               (api's dropped_spool_full 4 is the global 4)
 *   queued    = 10 + 3                                    = 13
 *   emitted   = 70 + 17 + 13                              = 100 */
#define UNTIL_NS 1700000000123000000ull   /* 2023-11-14T22:13:20.123Z */

static void fill_stats(uint64_t emitted)
{
	struct obx_stats *g = &g_seg.stats->g;
	struct obx_sink_shm *k;

	stats_lock(&g_seg.stats->seq);
	memset(g, 0, sizeof(*g));
	g->emitted = emitted;
	g->dropped_ring_full = 3;
	g->dropped_too_large = 2;
	g->dropped_invalid = 1;
	g->ring_unblocked = 1;
	g->consumed = 80;
	g->spool_bytes = 4096;
	g->spool_segments = 2;
	g->dropped_spool_full = 4;
	g->spool_corrupt = 1;
	g->dropped_late = 1;
	g->dropped_spool_error = 1;
	g->ring_stalls = 5;             /* not in the identity */
	g->ring_damaged = 9;            /* not in the identity */
	g->unknown_sink = 6;            /* routed, not dropped */
	stats_unlock(&g_seg.stats->seq);

	stats_lock(&g_seg.sinks->seq);
	memset(g_seg.sinks->sink, 0, sizeof(g_seg.sinks->sink));
	k = set_sink(0, "default", OBX_SINK_OK, 0);
	k->c.queued_events = 10;
	k->c.delivered_events = 40;
	k->c.unknown_routed = 6;
	k = set_sink(1, "api", OBX_SINK_BACKOFF, UNTIL_NS);
	k->c.queued_events = 3;
	k->c.queued_bytes = 300;
	k->c.delivered_events = 30;
	k->c.delivered_batches = 4;
	k->c.requests = 7;
	k->c.responses_2xx = 4;
	k->c.responses_5xx = 3;
	k->c.dropped_rejected = 2;
	k->c.dropped_expired = 1;
	k->c.dropped_spool_full = 4;
	k->c.dropped_spool_error = 1;
	k->c.inflight = 1;
	/* a name that needs escaping in JSON and in Prometheus labels */
	k = set_sink(2, "q\"b\\s\nx", OBX_SINK_RATE_LIMITED, UNTIL_NS);
	k->ncats = 1;
	snprintf(k->cats[0], sizeof(k->cats[0]), "error");
	k->cat_until_ns[0] = UNTIL_NS + 1000000000ull;
	g_seg.sinks->nsinks = 3;
	g_seg.sinks->default_sink = 0;
	stats_unlock(&g_seg.sinks->seq);

	/* one live producer: 7 through a lane + 2 ring-full drops */
	memset(&g_seg.slots[3], 0, sizeof(g_seg.slots[3]));
	atomic_store(&g_seg.slots[3].lane[0].claim, 7 << 1);
	atomic_store(&g_seg.slots[3].drop_full, 2);
	atomic_store(&g_seg.slots[3].pid, 12345);
	atomic_store(&g_seg.slots[3].state, OBX_SLOT_LIVE);
}

static void clear_producer(void)
{
	memset(&g_seg.slots[3], 0, sizeof(g_seg.slots[3]));
}

static json_int_t jget(json_t *o, const char *path)
{
	char buf[128], *p, *save = NULL;

	snprintf(buf, sizeof(buf), "%s", path);
	for (p = strtok_r(buf, ".", &save); p && o;
	     p = strtok_r(NULL, ".", &save))
		o = json_object_get(o, p);
	if (!json_is_integer(o)) {
		fprintf(stderr, "\n%s: not an integer\n", path);
		return -12345;
	}
	return json_integer_value(o);
}

static void test_cli_stat_json(void)
{
	struct cli_res r;
	json_t *j, *api, *odd, *p;
	size_t i;
	int found = 0;

	fill_stats(100);
	cli_run(&r, NULL, "stat", "-s", g_shm, "--json", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	j = json_loads(r.out, 0, NULL);
	CU_ASSERT_PTR_NOT_NULL_FATAL(j);
	CU_ASSERT_EQUAL(jget(j, "emitted"), 100);
	CU_ASSERT_EQUAL(jget(j, "dropped_ring_full"), 3);
	CU_ASSERT_EQUAL(jget(j, "dropped_too_large"), 2);
	CU_ASSERT_EQUAL(jget(j, "dropped_invalid"), 1);
	CU_ASSERT_EQUAL(jget(j, "ring_unblocked"), 1);
	CU_ASSERT_EQUAL(jget(j, "consumed"), 80);
	CU_ASSERT_EQUAL(jget(j, "spool_bytes"), 4096);
	CU_ASSERT_EQUAL(jget(j, "spool_segments"), 2);
	CU_ASSERT_EQUAL(jget(j, "dropped_spool_full"), 4);
	CU_ASSERT_EQUAL(jget(j, "spool_corrupt"), 1);
	CU_ASSERT_EQUAL(jget(j, "ring_stalls"), 5);
	CU_ASSERT_EQUAL(jget(j, "ring_damaged"), 9);
	CU_ASSERT_EQUAL(jget(j, "unknown_sink"), 6);
	CU_ASSERT_EQUAL(jget(j, "delivered"), 70);
	CU_ASSERT_EQUAL(jget(j, "dropped"), 17);
	CU_ASSERT_EQUAL(jget(j, "queued"), 13);
	CU_ASSERT(json_is_true(json_object_get(j, "identity_ok")));
	api = json_object_get(json_object_get(j, "sinks"), "api");
	CU_ASSERT_PTR_NOT_NULL_FATAL(api);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(api,
			       "state")), "backoff");
	CU_ASSERT_EQUAL(jget(api, "state_until"), 1700000000123);
	CU_ASSERT_EQUAL(jget(api, "queued_events"), 3);
	CU_ASSERT_EQUAL(jget(api, "queued_bytes"), 300);
	CU_ASSERT_EQUAL(jget(api, "requests"), 7);
	CU_ASSERT_EQUAL(jget(api, "responses_5xx"), 3);
	CU_ASSERT_EQUAL(jget(api, "delivered_events"), 30);
	CU_ASSERT_EQUAL(jget(api, "delivered_batches"), 4);
	CU_ASSERT_EQUAL(jget(api, "dropped_rejected"), 2);
	CU_ASSERT_EQUAL(jget(api, "dropped_expired"), 1);
	CU_ASSERT_EQUAL(jget(api, "dropped_spool_full"), 4);
	CU_ASSERT_EQUAL(jget(api, "inflight"), 1);
	/* the sink's own total includes its spool drops: 2 + 1 + 4 + 1 */
	CU_ASSERT_EQUAL(jget(api, "dropped"), 8);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(
		json_object_get(json_object_get(j, "sinks"), "default"),
		"state")), "ok");
	CU_ASSERT_EQUAL(jget(j, "sinks.default.state_until"), 0);
	CU_ASSERT_EQUAL(jget(j, "sinks.default.unknown_routed"), 6);
	/* the odd name arrives intact through jansson */
	odd = json_object_get(json_object_get(j, "sinks"), "q\"b\\s\nx");
	CU_ASSERT_PTR_NOT_NULL_FATAL(odd);
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(odd,
			       "state")), "rate_limited");
	CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(
		json_array_get(json_object_get(odd,
		"rate_limited_categories"), 0), "name")), "error");
	json_array_foreach(json_object_get(j, "producers"), i, p) {
		if (jget(p, "slot") != 3)
			continue;
		found = 1;
		CU_ASSERT_EQUAL(jget(p, "pid"), 12345);
		CU_ASSERT_EQUAL(jget(p, "emitted"), 9);
		CU_ASSERT_EQUAL(jget(p, "dropped"), 2);
	}
	CU_ASSERT(found);
	CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "producers")), 1);
	json_decref(j);
	cli_free(&r);

	/* one event unaccounted for: the identity fails */
	fill_stats(101);
	cli_run(&r, NULL, "stat", "-s", g_shm, "--json", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	j = json_loads(r.out, 0, NULL);
	CU_ASSERT_PTR_NOT_NULL_FATAL(j);
	CU_ASSERT(json_is_false(json_object_get(j, "identity_ok")));
	CU_ASSERT_EQUAL(jget(j, "emitted"), 101);
	json_decref(j);
	cli_free(&r);
	clear_producer();
}

static void test_cli_stat_env_and_text(void)
{
	struct cli_res r;
	char want[128];

	fill_stats(100);
	/* no -s: $OUTBOX_SHM names the segment */
	setenv("OUTBOX_SHM", g_shm, 1);
	cli_run(&r, NULL, "stat", NULL);
	unsetenv("OUTBOX_SHM");
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(has(r.out, "sinks.api"));
	CU_ASSERT(has(r.out, "sinks.default  (default)"));
	CU_ASSERT(has(r.out, "until 2023-11-14T22:13:20.123Z"));
	/* aligned columns: name in 28, value right-aligned in 20 */
	snprintf(want, sizeof(want), "\n  %-28s %20d\n", "emitted", 100);
	CU_ASSERT(has(r.out, want));
	snprintf(want, sizeof(want), "\n  %-28s %20d\n", "delivered_events",
		 30);
	CU_ASSERT(has(r.out, want));
	snprintf(want, sizeof(want), "\n  %-28s %20s  (emitted = ",
		 "identity_ok", "yes");
	CU_ASSERT(has(r.out, want));
	CU_ASSERT(has(r.out, "  12345"));
	cli_free(&r);
	/* a segment that does not exist */
	cli_run(&r, NULL, "stat", "-s", "obxtest-none-at-all", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "no outbox segment"));
	cli_free(&r);
	clear_producer();
}

/* A broker that died mid-update leaves the seqlock odd: stat waits for
 * it a bounded time, then says so and fails. */
static void test_cli_stat_stuck_seqlock(void)
{
	struct cli_res r;
	uint64_t t0;

	fill_stats(100);
	stats_lock(&g_seg.stats->seq);
	t0 = tu_now_ns();
	cli_run(&r, NULL, "stat", "-s", g_shm, "--json", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "stayed locked"));
	CU_ASSERT(tu_now_ns() - t0 >= 900000000ull);
	cli_free(&r);
	stats_unlock(&g_seg.stats->seq);
	cli_run(&r, NULL, "stat", "-s", g_shm, "--json", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT_STRING_EQUAL(r.err, "");
	cli_free(&r);
	clear_producer();
}

static _Atomic int g_writer_stop;

/* Rewrites every global counter with the same value, as fast as it can,
 * under the seqlock: a reader that honours it never sees two values. */
static void *stats_writer(void *arg)
{
	uint64_t k = 1, *w = (uint64_t *)&g_seg.stats->g;
	size_t i, n = sizeof(g_seg.stats->g) / sizeof(uint64_t);

	(void)arg;
	while (!atomic_load(&g_writer_stop)) {
		stats_lock(&g_seg.stats->seq);
		for (i = 0; i < n; i++)
			((volatile uint64_t *)w)[i] = k;
		stats_unlock(&g_seg.stats->seq);
		/* Bursts of back-to-back updates (a reader that ignored
		 * the seqlock would copy mid-burst most of the time), then
		 * a pause: a writer that never leaves the even state open
		 * for more than a few ns starves the reader past its 1 s
		 * give-up on a loaded machine, which the broker, writing
		 * every 100 ms, never does. */
		if (++k % 512 == 0)
			usleep(50);
	}
	return NULL;
}

static void test_cli_stat_seqlock_consistent(void)
{
	static const char *keys[] = { "emitted", "dropped_ring_full",
		"consumed", "spool_bytes", "spool_corrupt", "unknown_sink" };
	struct cli_res r;
	pthread_t th;
	json_t *j;
	json_int_t v0;
	int round, i, torn = 0, changed = 0, prev = -1;

	atomic_store(&g_writer_stop, 0);
	CU_ASSERT_FATAL(pthread_create(&th, NULL, stats_writer, NULL) == 0);
	for (round = 0; round < 8; round++) {
		cli_run(&r, NULL, "stat", "-s", g_shm, "--json", NULL);
		CU_ASSERT_EQUAL(r.status, 0);
		j = json_loads(r.out, 0, NULL);
		CU_ASSERT_PTR_NOT_NULL(j);
		if (j) {
			v0 = jget(j, keys[0]);
			CU_ASSERT(v0 > 0);
			for (i = 1; i < (int)(sizeof(keys) / sizeof(keys[0]));
			     i++)
				if (jget(j, keys[i]) != v0) {
					torn++;
					fprintf(stderr, "torn: %s = %lld, %s = "
						"%lld; stderr: %s\n", keys[0],
						(long long)v0, keys[i],
						(long long)jget(j, keys[i]),
						r.err);
				}
			if (prev >= 0 && v0 != prev)
				changed++;
			prev = (int)v0;
			json_decref(j);
		}
		cli_free(&r);
	}
	atomic_store(&g_writer_stop, 1);
	pthread_join(th, NULL);
	CU_ASSERT_EQUAL(torn, 0);
	CU_ASSERT(changed > 0);         /* the writer really was running */
}

static void test_cli_stat_prometheus(void)
{
	struct cli_res r;

	fill_stats(100);
	cli_run(&r, NULL, "stat", "-s", g_shm, "--prometheus", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(has(r.out, "# TYPE outbox_events_emitted_total counter\n"
		      "outbox_events_emitted_total 100\n"));
	CU_ASSERT(has(r.out, "# HELP outbox_events_emitted_total "));
	CU_ASSERT(has(r.out, "# TYPE outbox_spool_bytes gauge\n"
		      "outbox_spool_bytes 4096\n"));
	/* drop reasons are rows of one family, under one HELP/TYPE */
	CU_ASSERT(has(r.out, "# TYPE outbox_events_dropped_total counter\n"
		      "outbox_events_dropped_total{reason=\"ring_full\"} 3\n"
		      "outbox_events_dropped_total{reason=\"too_large\"} 2\n"));
	CU_ASSERT(has(r.out, "\noutbox_events_dropped_total"
		      "{reason=\"spool_corrupt\"} 1\n"));
	CU_ASSERT_EQUAL(count(r.out, "\noutbox_events_dropped_total{"), 8);
	CU_ASSERT(has(r.out, "\noutbox_identity_ok 1\n"));
	CU_ASSERT(has(r.out, "\noutbox_sink_events_delivered_total"
		      "{sink=\"api\"} 30\n"));
	CU_ASSERT(has(r.out, "\noutbox_sink_events_delivered_total"
		      "{sink=\"default\"} 40\n"));
	CU_ASSERT(has(r.out, "\noutbox_sink_events_dropped_total"
		      "{sink=\"api\",reason=\"rejected\"} 2\n"));
	CU_ASSERT(has(r.out, "\noutbox_sink_responses_total"
		      "{sink=\"api\",code=\"5xx\"} 3\n"));
	CU_ASSERT(has(r.out, "\noutbox_sink_queued_events{sink=\"api\"} 3\n"));
	CU_ASSERT(has(r.out, "\noutbox_sink_state{sink=\"api\","
		      "state=\"backoff\"} 1\n"));
	CU_ASSERT(has(r.out, "\noutbox_sink_state{sink=\"api\","
		      "state=\"ok\"} 0\n"));
	CU_ASSERT(has(r.out, "\noutbox_sink_state_until_seconds"
		      "{sink=\"api\"} 1700000000.123\n"));
	/* label escaping: \" \\ \n, per the exposition format */
	CU_ASSERT(has(r.out, "\noutbox_sink_events_delivered_total"
		      "{sink=\"q\\\"b\\\\s\\nx\"} 0\n"));
	CU_ASSERT(has(r.out, "\noutbox_sink_category_limited_until_seconds"
		      "{sink=\"q\\\"b\\\\s\\nx\",category=\"error\"} "
		      "1700000001.123\n"));
	CU_ASSERT(has(r.out, "\noutbox_producer_events_emitted_total"
		      "{pid=\"12345\",slot=\"3\"} 9\n"));
	/* one HELP and one TYPE per family, all samples under it */
	CU_ASSERT_EQUAL(count(r.out,
			      "# TYPE outbox_sink_events_delivered_total "), 1);
	CU_ASSERT_EQUAL(count(r.out, "# TYPE outbox_sink_events_dropped_total "),
			1);
	CU_ASSERT_EQUAL(count(r.out, "# HELP outbox_sink_state "), 1);
	CU_ASSERT_EQUAL(count(r.out, "outbox_sink_state{"), 9);
	cli_free(&r);
	clear_producer();
}

static void test_cli_status(void)
{
	struct obx_consumer_page *c = g_seg.cons;
	struct cli_res r;
	uint64_t start = 0, now;
	struct timespec ts;
	pid_t kid;

	fill_stats(100);        /* spool usage, one producer */
	clock_gettime(CLOCK_REALTIME, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	stats_lock(&g_seg.sinks->seq);
	memset(g_seg.sinks->sink, 0, sizeof(g_seg.sinks->sink));
	set_sink(0, "default", OBX_SINK_OK, 0);
	set_sink(1, "api", OBX_SINK_BACKOFF, now + 30000000000ull);
	set_sink(2, "sentry", OBX_SINK_RATE_LIMITED, now + 90000000000ull);
	g_seg.sinks->sink[2].ncats = 1;
	strcpy(g_seg.sinks->sink[2].cats[0], "transaction");
	g_seg.sinks->sink[2].cat_until_ns[0] = now + 60000000000ull;
	g_seg.sinks->nsinks = 3;
	stats_unlock(&g_seg.sinks->seq);

	/* no broker pid published: not running, exit 1 */
	atomic_store(&c->broker_pid, 0);
	cli_run(&r, NULL, "status", "-s", g_shm, NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.out, "not running"));
	cli_free(&r);

	/* this process as the broker: alive, exit 0 */
	CU_ASSERT_EQUAL_FATAL(slot_proc_stat(getpid(), &start, NULL), 0);
	atomic_store(&c->broker_start, start);
	atomic_store(&c->broker_beat_ns, now - 2000000000ull);
	atomic_store(&c->broker_boot_ns, now - 200000000000ull);
	atomic_store(&c->broker_pid, (uint32_t)getpid());
	cli_run(&r, NULL, "status", "-s", g_shm, NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	{
		char want[64];

		snprintf(want, sizeof(want), "running, pid %d, up 3m",
			 (int)getpid());
		CU_ASSERT(has(r.out, want));
	}
	CU_ASSERT(has(r.out, "last heartbeat 2."));
	CU_ASSERT(has(r.out, "api"));
	CU_ASSERT(has(r.out, "backoff until "));
	/* 30 s ahead when the test wrote it, a little less when read */
	CU_ASSERT(strstr(r.out, "(in 29s)") || strstr(r.out, "(in 30s)"));
	CU_ASSERT(has(r.out, "rate_limited until "));
	CU_ASSERT(has(r.out, "(in 1m"));        /* 90 s */
	CU_ASSERT(has(r.out, "limited category transaction until "));
	CU_ASSERT(has(r.out, "  default  ok  queued 0  (default sink)\n"));
	CU_ASSERT(has(r.out, "spool     4.0 KiB in 2 segments"));
	CU_ASSERT(has(r.out, "1 producer\n"));
	cli_free(&r);

	/* the right pid with another start time: pid reuse, not running */
	atomic_store(&c->broker_start, start + 1);
	cli_run(&r, NULL, "status", "-s", g_shm, NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.out, "another process"));
	cli_free(&r);

	/* a broker pid that exited */
	kid = fork();
	if (kid == 0)
		_exit(0);
	waitpid(kid, NULL, 0);
	atomic_store(&c->broker_start, 0);
	atomic_store(&c->broker_pid, (uint32_t)kid);
	cli_run(&r, NULL, "status", "-s", g_shm, NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.out, "not running"));
	cli_free(&r);
	atomic_store(&c->broker_pid, 0);

	/* no segment at all */
	cli_run(&r, NULL, "status", "-s", "obxtest-none-at-all", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "no outbox segment /dev/shm/obxtest-none-at-all"));
	CU_ASSERT_STRING_EQUAL(r.out, "");
	cli_free(&r);
	clear_producer();
}

/* ---- CLI: emit, read back from the ring -------------------------------- */

struct got {
	char sink[64], type[300];
	char body[8192];
	int kind;
	int n;
};

/* Consumes everything committed; copies up to max envelopes into g. */
static int drain(struct got *g, int max)
{
	struct ring_cons c;
	struct env_reader er;
	struct env_view v;
	struct ring_rec rec;
	int n = 0;

	CU_ASSERT_FATAL(ring_cons_init(&c, &g_seg) == 0);
	env_reader_init(&er);
	while (ring_next(&c, &rec, tu_now_ns()) == RING_RECORD) {
		if (n < max) {
			memset(&g[n], 0, sizeof(g[n]));
			CU_ASSERT_EQUAL(env_parse(&er, rec.payload, rec.len,
						  &v), 0);
			snprintf(g[n].sink, sizeof(g[n].sink), "%.*s",
				 (int)v.sink_len, v.sink);
			snprintf(g[n].type, sizeof(g[n].type), "%.*s",
				 (int)v.type_len, v.type);
			snprintf(g[n].body, sizeof(g[n].body), "%.*s",
				 (int)v.body_len, v.body);
			g[n].kind = v.body_kind;
			CU_ASSERT(v.has_id);
		}
		n++;
	}
	ring_release(&c, c.cursor);
	env_reader_fini(&er);
	ring_cons_fini(&c);
	return n;
}

static void test_cli_emit_roundtrip(void)
{
	struct cli_res r;
	struct got g[4];

	clear_sinks();
	drain(g, 0);
	cli_run(&r, NULL, "emit", "-s", g_shm, "--sink", "api", "--type",
		"ty\"pe", "{ \"a\": [1, 2],\n  \"s\": \"x y\" }", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT_STRING_EQUAL(r.err, "");
	cli_free(&r);
	CU_ASSERT_EQUAL_FATAL(drain(g, 4), 1);
	CU_ASSERT_STRING_EQUAL(g[0].sink, "api");
	CU_ASSERT_STRING_EQUAL(g[0].type, "ty\"pe");
	CU_ASSERT_EQUAL(g[0].kind, ENV_BODY_JSON);
	/* compacted by jansson */
	CU_ASSERT_STRING_EQUAL(g[0].body, "{\"a\":[1,2],\"s\":\"x y\"}");

	/* defaults: type "event", the default sink; $OUTBOX_SHM */
	setenv("OUTBOX_SHM", g_shm, 1);
	cli_run(&r, NULL, "emit", "[true,null]", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	cli_free(&r);
	/* $OUTBOX_SINK picks the sink; --sink overrides it */
	setenv("OUTBOX_SINK", "envsink", 1);
	cli_run(&r, NULL, "emit", "1", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	cli_free(&r);
	cli_run(&r, NULL, "emit", "--sink", "flag", "2", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	cli_free(&r);
	unsetenv("OUTBOX_SINK");
	unsetenv("OUTBOX_SHM");
	CU_ASSERT_EQUAL_FATAL(drain(g, 4), 3);
	CU_ASSERT_STRING_EQUAL(g[0].sink, "");
	CU_ASSERT_STRING_EQUAL(g[0].type, "event");
	CU_ASSERT_STRING_EQUAL(g[0].body, "[true,null]");
	CU_ASSERT_STRING_EQUAL(g[1].sink, "envsink");
	CU_ASSERT_STRING_EQUAL(g[1].body, "1");
	CU_ASSERT_STRING_EQUAL(g[2].sink, "flag");
	CU_ASSERT_STRING_EQUAL(g[2].body, "2");
}

static void test_cli_emit_invalid(void)
{
	struct cli_res r;
	struct got g[1];

	clear_sinks();
	drain(g, 0);
	cli_run(&r, NULL, "emit", "-s", g_shm, "{\"a\":", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "invalid JSON"));
	cli_free(&r);
	cli_run(&r, NULL, "emit", "-s", g_shm, "{\"a\":1} trailing", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "invalid JSON"));
	cli_free(&r);
	CU_ASSERT_EQUAL(drain(g, 1), 0);
}

static void test_cli_emit_unknown_sink(void)
{
	struct cli_res r;
	struct got g[2];

	publish_two_sinks();
	drain(g, 0);
	cli_run(&r, NULL, "emit", "-s", g_shm, "--sink", "nope", "{}", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "unknown sink 'nope'"));
	CU_ASSERT(has(r.err, "default, api"));
	cli_free(&r);
	/* through $OUTBOX_SINK as well */
	setenv("OUTBOX_SINK", "nope2", 1);
	cli_run(&r, NULL, "emit", "-s", g_shm, "{}", NULL);
	unsetenv("OUTBOX_SINK");
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "unknown sink 'nope2'"));
	cli_free(&r);
	CU_ASSERT_EQUAL(drain(g, 2), 0);
	/* a published sink works */
	cli_run(&r, NULL, "emit", "-s", g_shm, "--sink", "api", "{}", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	cli_free(&r);
	CU_ASSERT_EQUAL(drain(g, 2), 1);
	CU_ASSERT_STRING_EQUAL(g[0].sink, "api");
	clear_sinks();
}

static void test_cli_emit_stdin(void)
{
	struct cli_res r;
	struct got g[4];

	clear_sinks();
	drain(g, 0);
	cli_run(&r, "{\"n\": 1}\n\n   \nnot json\n{\"n\":2}\r\n[3]", "emit",
		"-s", g_shm, "--type", "log", "-", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "stdin line 4: invalid JSON"));
	CU_ASSERT(has(r.err, "3 emitted, 1 invalid line"));
	CU_ASSERT_EQUAL(count(r.err, "invalid JSON"), 1);
	cli_free(&r);
	CU_ASSERT_EQUAL_FATAL(drain(g, 4), 3);
	CU_ASSERT_STRING_EQUAL(g[0].body, "{\"n\":1}");
	CU_ASSERT_STRING_EQUAL(g[1].body, "{\"n\":2}");
	CU_ASSERT_STRING_EQUAL(g[2].body, "[3]");
	CU_ASSERT_STRING_EQUAL(g[2].type, "log");

	/* every line fine: exit 0, nothing on stderr */
	cli_run(&r, "{\"a\":1}\n{\"a\":2}\n", "emit", "-s", g_shm, "-", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT_STRING_EQUAL(r.err, "");
	cli_free(&r);
	CU_ASSERT_EQUAL(drain(g, 4), 2);
}

static void test_cli_emit_drops(void)
{
	struct cli_res r;
	struct got *g = malloc(64 * sizeof(*g));
	char *big, *in;
	int i, n;

	CU_ASSERT_FATAL(g != NULL);
	clear_sinks();
	drain(g, 0);
	/* too large: 5000 bytes of JSON, max_record 4096 */
	big = malloc(5004);
	CU_ASSERT_FATAL(big != NULL);
	big[0] = '"';
	memset(big + 1, 'x', 5000);
	strcpy(big + 5001, "\"");
	cli_run(&r, NULL, "emit", "-s", g_shm, big, NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "too large"));
	cli_free(&r);
	CU_ASSERT_EQUAL(drain(g, 64), 0);

	/* ring full: 40 x 2 KiB into a 64 KiB ring nobody drains */
	in = malloc(40 * 2100);
	CU_ASSERT_FATAL(in != NULL);
	in[0] = 0;
	for (i = 0; i < 40; i++) {
		size_t l = strlen(in);

		in[l] = '"';
		memset(in + l + 1, 'a' + i % 26, 2000);
		strcpy(in + l + 2001, "\"\n");
	}
	cli_run(&r, in, "emit", "-s", g_shm, "-", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "the ring is full"));
	CU_ASSERT(has(r.err, "further drops are only counted"));
	n = drain(g, 64);
	CU_ASSERT(n > 10 && n < 40);
	{
		char want[96];

		snprintf(want, sizeof(want), "%d emitted, 0 invalid lines, "
			 "%d dropped (ring full %d", n, 40 - n, 40 - n);
		CU_ASSERT(has(r.err, want));
	}
	/* the accepted ones are the first lines, in order */
	CU_ASSERT(g[0].body[1] == 'a' && g[1].body[1] == 'b');
	cli_free(&r);
	free(in);
	free(big);
	free(g);
}

static void test_cli_emit_no_broker(void)
{
	struct cli_res r;

	cli_run(&r, NULL, "emit", "-s", "obxtest-none-at-all", "{}", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "no outbox broker"));
	cli_free(&r);
}

static void test_cli_usage(void)
{
	struct cli_res r;

	cli_run(&r, NULL, "--help", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(has(r.out, "usage: outbox COMMAND"));
	cli_free(&r);
	cli_run(&r, NULL, "emit", "--help", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(has(r.out, "usage: outbox emit"));
	cli_free(&r);
	cli_run(&r, NULL, NULL);
	CU_ASSERT_EQUAL(r.status, 2);
	cli_free(&r);
	cli_run(&r, NULL, "frob", NULL);
	CU_ASSERT_EQUAL(r.status, 2);
	CU_ASSERT(has(r.err, "unknown command 'frob'"));
	cli_free(&r);
	cli_run(&r, NULL, "stat", "--bogus", NULL);
	CU_ASSERT_EQUAL(r.status, 2);
	CU_ASSERT(has(r.err, "unknown option '--bogus'"));
	cli_free(&r);
	cli_run(&r, NULL, "stat", "--json", "--prometheus", NULL);
	CU_ASSERT_EQUAL(r.status, 2);
	cli_free(&r);
	cli_run(&r, NULL, "emit", "-s", g_shm, "{}", "--sink", NULL);
	CU_ASSERT_EQUAL(r.status, 2);
	CU_ASSERT(has(r.err, "needs an argument"));
	cli_free(&r);
	cli_run(&r, NULL, "emit", "-s", g_shm, "{}", "{}", NULL);
	CU_ASSERT_EQUAL(r.status, 2);
	cli_free(&r);
	cli_run(&r, NULL, "status", "extra", NULL);
	CU_ASSERT_EQUAL(r.status, 2);
	cli_free(&r);
	cli_run(&r, NULL, "spool", NULL);
	CU_ASSERT_EQUAL(r.status, 2);
	cli_free(&r);
	cli_run(&r, NULL, "spool", "frob", NULL);
	CU_ASSERT_EQUAL(r.status, 2);
	cli_free(&r);
	cli_run(&r, NULL, "spool", "ls", "--sink", "x", NULL);
	CU_ASSERT_EQUAL(r.status, 2);
	cli_free(&r);
}

/* ---- CLI: spool, on a spool written by broker/spool.c ------------------ */

static void flush_done(void *arg, int err)
{
	*(int *)arg = err < 0 ? err : 1;
}

static void test_cli_spool(void)
{
	char dir[] = "/tmp/obx-clispool-XXXXXX", cmd[600], path[512];
	struct spool_set_opts o = { 0 };
	struct spool_set *set;
	struct spool *sp;
	struct env_fix f;
	struct cli_res r;
	struct rx rx;
	int done = 0, fd;

	CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
	CU_ASSERT_FATAL(rx_init(&rx, 64) == 0);
	o.dir = dir;
	o.max_bytes = 1 << 20;
	o.segment_size = 1 << 16;
	o.full = SPOOL_DROP_NEWEST;
	o.durability = DUR_WRITE;
	o.sync_interval_ms = 100;
	o.tail_buffer = 1 << 16;
	set = spool_set_new(&rx, &o);
	CU_ASSERT_FATAL(set != NULL);
	sp = spool_open(set, "api");
	CU_ASSERT_FATAL(sp != NULL);
	env_fix_begin(&f, "api", 3, "t\"q", 3);
	pk_str(&f.pk, "{\"k\": 1}");
	CU_ASSERT_EQUAL(spool_append(sp, f.sb.data, (uint32_t)f.sb.size), 0);
	CU_ASSERT_EQUAL(spool_append(sp, "\x01\x02\xff", 3), 0);
	CU_ASSERT_EQUAL_FATAL(spool_set_flush(set, flush_done, &done), 0);
	CU_ASSERT_EQUAL(rx_run_until(&rx, &done, 2000000000ull), 0);
	CU_ASSERT_EQUAL(done, 1);
	spool_close(sp);
	spool_set_free(set);
	rx_fini(&rx);

	cli_run(&r, NULL, "spool", "dump", "-d", dir, NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	snprintf(cmd, sizeof(cmd), "api 1 %zu {\"id\":\"%s\",\"sink\":\"api\","
		 "\"type\":\"t\\\"q\",\"ts\":1700000000123456789,"
		 "\"body\":{\"k\":1}}\napi 2 3 0102ff\n", f.sb.size, ID_HEX);
	CU_ASSERT_STRING_EQUAL(r.out, cmd);
	if (strcmp(r.out, cmd))
		fprintf(stderr, "\n got  %s want %s", r.out, cmd);
	cli_free(&r);
	env_fix_end(&f);
	/* --sink: only that sink; an unknown one is an error */
	cli_run(&r, NULL, "spool", "dump", "-d", dir, "--sink", "api", NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT_EQUAL(count(r.out, "\n"), 2);
	cli_free(&r);
	cli_run(&r, NULL, "spool", "dump", "-d", dir, "--sink", "zzz", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	cli_free(&r);
	cli_run(&r, NULL, "spool", "ls", "-d", dir, NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(has(r.out, "api: 1 segments"));
	cli_free(&r);
	cli_run(&r, NULL, "spool", "verify", "-d", dir, NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(has(r.out, "api: 2 records, 0 problems"));
	cli_free(&r);

	/* the broker's own files at the top of spool_dir are not foreign:
	 * the delivery state, written by the broker's own code, and the
	 * temp file a crash can leave while it is replaced */
	{
		struct pol_sink ps;

		pol_sink_init(&ps, "api");
		ps.state = POL_BACKOFF;
		ps.until_ms = 1;
		snprintf(path, sizeof(path), "%s/%s", dir, PERSIST_FILE);
		CU_ASSERT_EQUAL(pol_save(path, &ps, 1, NULL, 0, 0), 0);
		snprintf(path, sizeof(path), "%s/%s.tmp.Ab3dE9", dir,
			 PERSIST_FILE);
		fd = open(path, O_CREAT | O_WRONLY, 0600);
		CU_ASSERT(fd >= 0);
		if (fd >= 0)
			close(fd);
	}
	cli_run(&r, NULL, "spool", "verify", "-d", dir, NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(has(r.out, "api: 2 records, 0 problems"));
	CU_ASSERT(!has(r.out, "foreign"));
	cli_free(&r);
	cli_run(&r, NULL, "spool", "ls", "-d", dir, NULL);
	CU_ASSERT_EQUAL(r.status, 0);
	CU_ASSERT(!has(r.out, "foreign"));
	cli_free(&r);

	/* a foreign file is a problem for verify: exit 1 */
	snprintf(path, sizeof(path), "%s/api/junk", dir);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	CU_ASSERT(fd >= 0);
	if (fd >= 0)
		close(fd);
	cli_run(&r, NULL, "spool", "verify", "-d", dir, NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	CU_ASSERT(has(r.err, "1 problem found"));
	cli_free(&r);

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	CU_ASSERT_EQUAL(system(cmd), 0);
	/* a spool directory that does not exist */
	cli_run(&r, NULL, "spool", "verify", "-d", "/nonexistent/obx", NULL);
	CU_ASSERT_EQUAL(r.status, 1);
	cli_free(&r);
}

/* ---- registration ------------------------------------------------------ */

static int add_json(void)
{
	CU_pSuite s = CU_add_suite("json", NULL, NULL);

	if (!s ||
	    !CU_add_test(s, "json_map_nested", test_json_map_nested) ||
	    !CU_add_test(s, "json_scalars", test_json_scalars) ||
	    !CU_add_test(s, "json_bin_base64", test_json_bin_base64) ||
	    !CU_add_test(s, "json_invalid_utf8", test_json_invalid_utf8) ||
	    !CU_add_test(s, "json_body_text", test_json_body_text) ||
	    !CU_add_test(s, "json_envelope_line", test_json_envelope_line) ||
	    !CU_add_test(s, "json_envelope_kinds", test_json_envelope_kinds) ||
	    !CU_add_test(s, "json_append_grows", test_json_append_grows))
		return -1;
	return 0;
}

static int add_cli(void)
{
	CU_pSuite s = CU_add_suite("cli", cli_init, cli_fini);

	if (!s ||
	    !CU_add_test(s, "cli_usage", test_cli_usage) ||
	    !CU_add_test(s, "cli_stat_json", test_cli_stat_json) ||
	    !CU_add_test(s, "cli_stat_env_and_text",
			 test_cli_stat_env_and_text) ||
	    !CU_add_test(s, "cli_stat_prometheus", test_cli_stat_prometheus) ||
	    !CU_add_test(s, "cli_stat_stuck_seqlock",
			 test_cli_stat_stuck_seqlock) ||
	    !CU_add_test(s, "cli_stat_seqlock_consistent",
			 test_cli_stat_seqlock_consistent) ||
	    !CU_add_test(s, "cli_status", test_cli_status) ||
	    !CU_add_test(s, "cli_emit_roundtrip", test_cli_emit_roundtrip) ||
	    !CU_add_test(s, "cli_emit_invalid", test_cli_emit_invalid) ||
	    !CU_add_test(s, "cli_emit_unknown_sink",
			 test_cli_emit_unknown_sink) ||
	    !CU_add_test(s, "cli_emit_stdin", test_cli_emit_stdin) ||
	    !CU_add_test(s, "cli_emit_drops", test_cli_emit_drops) ||
	    !CU_add_test(s, "cli_emit_no_broker", test_cli_emit_no_broker) ||
	    !CU_add_test(s, "cli_spool", test_cli_spool))
		return -1;
	return 0;
}

TEST_MAIN(add_json, add_cli)
