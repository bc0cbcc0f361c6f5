/* test_envelope.c - the envelope reader (shm/envelope.c) against a
 * reference built on msgpack-c's object API, on generated envelopes and
 * on mutations of them (bit flips, hostile header bytes, truncation,
 * insertion, trailing bytes): both must agree on accept/reject and on
 * every field. Ring records are untrusted input; under `make check` this
 * also runs the hand-written scanner through ASan on every mutation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <msgpack.h>
#include <string.h>

#include "testutil.h"
#include "envelope.h"
#include "mpcheck.h"
#include "buf.h"
#include "json.h"

#if defined(__SANITIZE_ADDRESS__)
#define SCALE 5
#else
#define SCALE 1
#endif

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	/* xorshift64*: reproducible, the seed is printed on failure */
	g_rng ^= g_rng >> 12;
	g_rng ^= g_rng << 25;
	g_rng ^= g_rng >> 27;
	return g_rng * 2685821657736338717ull;
}

static unsigned rn(unsigned n)
{
	return (unsigned)(rnd() % n);
}

/* ---- the reference: msgpack-c objects, the rules of envelope.h --------- */

struct ref {
	msgpack_unpacked up;
	struct env_view v;
};

static int ref_str(const msgpack_object *o, const char **p, uint32_t *n)
{
	if (o->type != MSGPACK_OBJECT_STR || o->via.str.size > ENV_NAME_MAX)
		return -1;
	*p = o->via.str.ptr;
	*n = o->via.str.size;
	return 0;
}

/* JSON can hold it (envelope.h), written from the rule: depth at most
 * ENV_MAX_DEPTH (each array element, map key and value one deeper), a
 * map or array key inside at most ENV_MAX_KEY_NEST - 1 others. */
static int ref_json_ok(const msgpack_object *o, int depth, int keys)
{
	const msgpack_object *k;
	uint32_t i;

	if (depth > ENV_MAX_DEPTH)
		return -1;
	if (o->type == MSGPACK_OBJECT_ARRAY)
		for (i = 0; i < o->via.array.size; i++)
			if (ref_json_ok(o->via.array.ptr + i, depth + 1,
					keys))
				return -1;
	if (o->type != MSGPACK_OBJECT_MAP)
		return 0;
	for (i = 0; i < o->via.map.size; i++) {
		k = &o->via.map.ptr[i].key;
		if (k->type == MSGPACK_OBJECT_MAP ||
		    k->type == MSGPACK_OBJECT_ARRAY) {
			if (keys + 1 > ENV_MAX_KEY_NEST ||
			    ref_json_ok(k, depth + 1, keys + 1))
				return -1;
		}
		if (ref_json_ok(&o->via.map.ptr[i].val, depth + 1, keys))
			return -1;
	}
	return 0;
}

static int ref_field(const msgpack_object_kv *kv, struct env_view *v,
		     unsigned *seen)
{
	const msgpack_object *k = &kv->key, *o = &kv->val;
	const char *name;
	uint32_t n;

	if (k->type != MSGPACK_OBJECT_STR)
		return -1;          /* keys are strings (envelope.h) */
	name = k->via.str.ptr;
	n = k->via.str.size;
	if (n == 4 && !memcmp(name, "sink", 4)) {
		*seen |= 1;
		return ref_str(o, &v->sink, &v->sink_len);
	}
	if (n == 4 && !memcmp(name, "type", 4))
		return ref_str(o, &v->type, &v->type_len);
	if (n == 2 && !memcmp(name, "ts", 2)) {
		if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return -1;
		v->ts = o->via.u64;
		return 0;
	}
	if (n == 2 && !memcmp(name, "id", 2)) {
		if (o->type != MSGPACK_OBJECT_BIN ||
		    o->via.bin.size != ENV_ID_LEN)
			return -1;
		memcpy(v->id, o->via.bin.ptr, ENV_ID_LEN);
		v->has_id = 1;
		return 0;
	}
	if (n == 4 && !memcmp(name, "body", 4)) {
		*seen |= 2;
		v->body_obj = o;
		v->body = NULL;
		v->body_len = 0;
		switch (o->type) {
		case MSGPACK_OBJECT_STR:
			v->body_kind = ENV_BODY_JSON;
			v->body = o->via.str.ptr;
			v->body_len = o->via.str.size;
			return 0;
		case MSGPACK_OBJECT_BIN:
			v->body_kind = ENV_BODY_BYTES;
			v->body = o->via.bin.ptr;
			v->body_len = o->via.bin.size;
			return 0;
		case MSGPACK_OBJECT_MAP:
		case MSGPACK_OBJECT_ARRAY:
			v->body_kind = ENV_BODY_MSGPACK;
			return ref_json_ok(o, 0, 0);
		default:
			return -1;
		}
	}
	return 0;                   /* unknown keys are ignored */
}

static int ref_parse(struct ref *r, const uint8_t *p, size_t len)
{
	size_t off = 0;
	unsigned seen = 0;
	uint32_t i;
	const msgpack_object *m;

	memset(&r->v, 0, sizeof(r->v));
	/* the allocation guard itself is checked by test_mpcheck_valid */
	if (mp_check(p, len) < 0)
		return -1;
	if (msgpack_unpack_next(&r->up, (const char *)p, len, &off) !=
	    MSGPACK_UNPACK_SUCCESS || off != len)
		return -1;
	m = &r->up.data;
	if (m->type != MSGPACK_OBJECT_MAP)
		return -1;
	for (i = 0; i < m->via.map.size; i++)
		if (ref_field(&m->via.map.ptr[i], &r->v, &seen) < 0)
			return -1;
	if (seen != 3)
		return -1;
	if (!r->v.type) {
		r->v.type = "";
		r->v.type_len = 0;
	}
	return 0;
}

/* ---- generator --------------------------------------------------------- */

static void pack_rand_str(msgpack_packer *pk, uint32_t max)
{
	static const uint32_t lens[] = { 0, 1, 4, 31, 32, 200, 255, 256, 300 };
	char s[300];
	uint32_t n = lens[rn(sizeof(lens) / sizeof(lens[0]))], i;

	if (n > max)
		n = max;
	for (i = 0; i < n; i++)
		s[i] = (char)('a' + rn(26));
	msgpack_pack_str_with_body(pk, s, n);
}

static void pack_rand_value(msgpack_packer *pk, int depth)
{
	uint32_t i, n;

	switch (rn(depth > 2 ? 8 : 10)) {
	case 0: msgpack_pack_nil(pk); break;
	case 1: msgpack_pack_true(pk); break;
	case 2: msgpack_pack_int64(pk, -(int64_t)rn(100000)); break;
	case 3: msgpack_pack_uint64(pk, rnd()); break;
	case 4: msgpack_pack_double(pk, 1.5); break;
	case 5: pack_rand_str(pk, 300); break;
	case 6: msgpack_pack_bin_with_body(pk, "\0\1\2", 3); break;
	case 7: msgpack_pack_ext_with_body(pk, "xy", 2, 7); break;
	case 8:
		n = rn(20);
		msgpack_pack_array(pk, n);
		for (i = 0; i < n; i++)
			pack_rand_value(pk, depth + 1);
		break;
	default:
		n = rn(18);
		msgpack_pack_map(pk, n);
		for (i = 0; i < n; i++) {
			pack_rand_str(pk, 8);
			pack_rand_value(pk, depth + 1);
		}
		break;
	}
}

/* ts in every width msgpack has for a non-negative integer, including the
 * signed ones (msgpack-c reads those as POSITIVE_INTEGER) */
static void pack_ts(msgpack_sbuffer *sb, msgpack_packer *pk)
{
	uint64_t v = rnd() >> rn(64);
	uint8_t raw[9];
	int i;

	switch (rn(3)) {
	case 0:
		msgpack_pack_uint64(pk, v);
		return;
	case 1:
		msgpack_pack_fix_uint64(pk, v);
		return;
	default:
		v &= INT64_MAX;
		raw[0] = 0xd3;
		for (i = 0; i < 8; i++)
			raw[1 + i] = (uint8_t)(v >> (56 - 8 * i));
		msgpack_sbuffer_write(sb, (const char *)raw, 9);
	}
}

static void gen_envelope(msgpack_sbuffer *sb)
{
	const char *keys[8];
	int nk = 0, extra = (int)rn(4), i, j;
	msgpack_packer pk;

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	keys[nk++] = "sink";
	keys[nk++] = "body";
	if (rn(4))
		keys[nk++] = "type";
	if (rn(4))
		keys[nk++] = "ts";
	if (rn(4))
		keys[nk++] = "id";
	for (i = 0; i < extra; i++)
		keys[nk++] = "x";
	for (i = nk - 1; i > 0; i--) {          /* any key order */
		const char *t;

		j = (int)rn((unsigned)i + 1);
		t = keys[i];
		keys[i] = keys[j];
		keys[j] = t;
	}
	if (rn(8) == 0) {                       /* map16 even when small */
		uint8_t h[3] = { 0xde, 0, (uint8_t)nk };

		msgpack_sbuffer_write(sb, (const char *)h, 3);
	} else {
		msgpack_pack_map(&pk, (size_t)nk);
	}
	for (i = 0; i < nk; i++) {
		msgpack_pack_str_with_body(&pk, keys[i], strlen(keys[i]));
		if (!strcmp(keys[i], "sink") || !strcmp(keys[i], "type")) {
			pack_rand_str(&pk, 255);
		} else if (!strcmp(keys[i], "ts")) {
			pack_ts(sb, &pk);
		} else if (!strcmp(keys[i], "id")) {
			uint8_t id[ENV_ID_LEN];

			env_make_id(id, rnd(), rnd());
			msgpack_pack_bin_with_body(&pk, id, ENV_ID_LEN);
		} else if (!strcmp(keys[i], "body")) {
			switch (rn(4)) {
			case 0: pack_rand_str(&pk, 300); break;
			case 1: msgpack_pack_bin_with_body(&pk, "\xff\0", 2);
				break;
			case 2: {
				uint32_t n = rn(6), k;

				msgpack_pack_array(&pk, n);
				for (k = 0; k < n; k++)
					pack_rand_value(&pk, 1);
				break;
			}
			default: {
				uint32_t n = rn(20), k;

				msgpack_pack_map(&pk, n);
				for (k = 0; k < n; k++) {
					pack_rand_str(&pk, 8);
					pack_rand_value(&pk, 1);
				}
			}
			}
		} else {
			pack_rand_value(&pk, 0);
		}
	}
}

/* The layout producers write (env_pack_head(), liboutbox's templates),
 * which env_parse() reads on its fast path: sink, type, ts, id, body in
 * that order, names of every length a name may have, ts in every width
 * msgpack-c picks, every kind of body. */
static void gen_canonical(msgpack_sbuffer *sb)
{
	static const uint32_t lens[] = { 0, 1, 31, 32, 200, 255 };
	char sink[256], type[256];
	uint32_t sl = lens[rn(6)], tl = lens[rn(6)], i;
	uint8_t id[ENV_ID_LEN];
	msgpack_packer pk;

	for (i = 0; i < sl; i++)
		sink[i] = (char)('a' + rn(26));
	for (i = 0; i < tl; i++)
		type[i] = (char)('a' + rn(26));
	env_make_id(id, rnd(), rnd());
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	if (rn(2)) {
		env_pack_head(&pk, sink, sl, type, tl, rnd() >> rn(64), id);
	} else {
		/* liboutbox's emit: the two templates, ts and id patched */
		uint8_t pre[256 + 16], tail[ENV_TAIL_LEN], h[5];
		size_t n = env_prefix_template(pre, sizeof(pre), sink, sl);

		CU_ASSERT_FATAL(n > 0);
		msgpack_sbuffer_write(sb, (const char *)pre, n);
		n = env_str_header(h, tl);
		msgpack_sbuffer_write(sb, (const char *)h, n);
		msgpack_sbuffer_write(sb, type, tl);
		env_tail_template(tail);
		env_put_be64(tail + ENV_TAIL_TS, rnd());
		memcpy(tail + ENV_TAIL_ID, id, ENV_ID_LEN);
		msgpack_sbuffer_write(sb, (const char *)tail, ENV_TAIL_LEN);
	}
	switch (rn(5)) {
	case 0:
	case 1:
		pack_rand_str(&pk, 300);
		break;
	case 2:
		msgpack_pack_bin_with_body(&pk, "\xff\0", 2);
		break;
	case 3:
		msgpack_pack_array(&pk, 2);
		pack_rand_value(&pk, 1);
		pack_rand_value(&pk, 1);
		break;
	default:
		pack_rand_value(&pk, 1);        /* anything: a scalar is invalid */
		break;
	}
}

/* ---- comparison -------------------------------------------------------- */

static int same_bytes(const char *a, uint32_t an, const char *b, uint32_t bn)
{
	return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

/* Equal as packed bytes (msgpack_object_equal() says NaN != NaN, and a
 * mutation can make a NaN). */
static int same_object(const msgpack_object *a, const msgpack_object *b)
{
	msgpack_sbuffer x, y;
	msgpack_packer px, py;
	int eq;

	msgpack_sbuffer_init(&x);
	msgpack_sbuffer_init(&y);
	msgpack_packer_init(&px, &x, msgpack_sbuffer_write);
	msgpack_packer_init(&py, &y, msgpack_sbuffer_write);
	msgpack_pack_object(&px, *a);
	msgpack_pack_object(&py, *b);
	eq = same_bytes(x.data, (uint32_t)x.size, y.data, (uint32_t)y.size);
	msgpack_sbuffer_destroy(&x);
	msgpack_sbuffer_destroy(&y);
	return eq;
}

/* 0 when the reader and the reference agree on p. */
static int agree(struct env_reader *er, struct ref *rf, const uint8_t *p,
		 size_t len, int *accepted)
{
	struct env_view v, g;
	int a = env_parse(er, p, len, &v) == 0;
	int b = ref_parse(rf, p, len) == 0;
	int c;

	*accepted = a;
	if (a != b)
		return -1;
	/* the fast path and the general reader alone: the same answer (the
	 * fields are compared with the reference below) */
	c = env_parse_general(er, p, len, &g) == 0;
	if (c != a)
		return -5;
	if (a)
		env_parse(er, p, len, &v);  /* its zone again, for body_obj */
	if (!a)
		return 0;
	if (!same_bytes(v.sink, v.sink_len, rf->v.sink, rf->v.sink_len) ||
	    !same_bytes(v.type, v.type_len, rf->v.type, rf->v.type_len) ||
	    v.ts != rf->v.ts || v.has_id != rf->v.has_id ||
	    memcmp(v.id, rf->v.id, ENV_ID_LEN) ||
	    v.body_kind != rf->v.body_kind)
		return -2;
	if (v.body_kind == ENV_BODY_MSGPACK)
		return same_object(v.body_obj, rf->v.body_obj) ? 0 : -3;
	return same_bytes(v.body, v.body_len, rf->v.body, rf->v.body_len) ?
	       0 : -4;
}

/* ---- tests --------------------------------------------------------------- */

static struct env_reader g_er;
static struct ref g_ref;

static int setup(void)
{
	env_reader_init(&g_er);
	msgpack_unpacked_init(&g_ref.up);
	return 0;
}

static int teardown(void)
{
	env_reader_fini(&g_er);
	msgpack_unpacked_destroy(&g_ref.up);
	return 0;
}

/* Every generated envelope is accepted by both, fields equal; the
 * allocation guard accepts everything msgpack-c packs. */
static void test_generated_valid(void)
{
	const int n = 50000 / SCALE;
	int i, bad = 0, acc;

	for (i = 0; i < n; i++) {
		msgpack_sbuffer sb;

		msgpack_sbuffer_init(&sb);
		gen_envelope(&sb);
		if (mp_object_len((const uint8_t *)sb.data, sb.size) !=
		    sb.size || agree(&g_er, &g_ref, (const uint8_t *)sb.data,
				     sb.size, &acc) != 0 || !acc) {
			if (bad++ < 3)
				printf("\n    generated envelope %d rejected or "
				       "different (size %zu)", i, sb.size);
		}
		msgpack_sbuffer_destroy(&sb);
	}
	CU_ASSERT_EQUAL(bad, 0);
}

/* One mutation of a valid envelope in place; returns the new length. */
static size_t mutate(uint8_t *p, size_t len, size_t cap)
{
	static const uint8_t hostile[] = { 0xdd, 0xdf, 0xdc, 0xde, 0xdb, 0xc6,
					   0xc9, 0xff, 0xc1, 0x00, 0x9f, 0x8f };
	size_t at = len ? rn((unsigned)len) : 0;

	switch (rn(6)) {
	case 0:
		p[at] ^= (uint8_t)(1u << rn(8));
		return len;
	case 1:
		p[at] = hostile[rn(sizeof(hostile))];
		return len;
	case 2:                         /* a huge count or length after it */
		p[at] = hostile[rn(6)];
		if (at + 5 <= len)
			memset(p + at + 1, 0xff, 4);
		return len;
	case 3:
		return at;              /* truncation */
	case 4:
		if (len < cap) {        /* insertion */
			memmove(p + at + 1, p + at, len - at);
			p[at] = (uint8_t)rnd();
			return len + 1;
		}
		return len;
	default:
		if (len < cap)          /* trailing byte */
			p[len++] = (uint8_t)rnd();
		return len;
	}
}

/* One generated envelope copied into buf (cut at cap): its length. */
static size_t gen_into(uint8_t *buf, size_t cap,
		       void (*gen)(msgpack_sbuffer *sb))
{
	msgpack_sbuffer sb;
	size_t len;

	msgpack_sbuffer_init(&sb);
	gen(&sb);
	len = sb.size < cap ? sb.size : cap;
	memcpy(buf, sb.data, len);
	msgpack_sbuffer_destroy(&sb);
	return len;
}

static void test_mutations_agree(void)
{
	const int n = 300000 / SCALE;
	uint8_t buf[16384];
	int i, bad = 0, accepted = 0, acc;

	for (i = 0; i < n; i++) {
		size_t len = gen_into(buf, sizeof(buf), gen_envelope);
		int k, nm = 1 + (int)rn(3), rc;

		for (k = 0; k < nm; k++)
			len = mutate(buf, len, sizeof(buf));
		rc = agree(&g_er, &g_ref, buf, len, &acc);
		accepted += acc;
		if (rc != 0 && bad++ < 3)
			printf("\n    mutation %d: reader and reference "
			       "disagree (%d), len %zu", i, rc, len);
	}
	printf("\n    %d mutated envelopes, %d still valid, %d "
	       "disagreements\n", n, accepted, bad);
	CU_ASSERT_EQUAL(bad, 0);
	/* the mutations must exercise both sides */
	CU_ASSERT(accepted > n / 20);
	CU_ASSERT(accepted < n - n / 20);
}

/* Every prefix of a valid envelope is rejected, and never read past. */
static void test_every_truncation(void)
{
	int i, bad = 0;

	for (i = 0; i < 2000 / SCALE; i++) {
		msgpack_sbuffer sb;
		size_t cut;

		msgpack_sbuffer_init(&sb);
		gen_envelope(&sb);
		for (cut = 0; cut < sb.size; cut++) {
			/* an exact-size heap copy: ASan sees any overread */
			uint8_t *p = malloc(cut ? cut : 1);
			struct env_view v;

			memcpy(p, sb.data, cut);
			bad += env_parse(&g_er, p, cut, &v) == 0;
			free(p);
		}
		msgpack_sbuffer_destroy(&sb);
	}
	CU_ASSERT_EQUAL(bad, 0);
}

/* {"sink": "", "body": at rec (the body's bytes go next); its length. */
static size_t head_to_body(uint8_t *rec)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	size_t n;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	msgpack_pack_str_with_body(&pk, "sink", 4);
	msgpack_pack_str_with_body(&pk, "", 0);
	msgpack_pack_str_with_body(&pk, "body", 4);
	n = sb.size;
	memcpy(rec, sb.data, n);
	msgpack_sbuffer_destroy(&sb);
	return n;
}

/* A 40-byte record announcing an array of 2^32 - 1 elements as its body
 * is refused before msgpack-c is asked to allocate for it. */
static void test_hostile_counts(void)
{
	uint8_t rec[64];
	struct env_view v;
	size_t n = head_to_body(rec);

	rec[n] = 0xdd;                  /* array32, count 0xffffffff */
	memset(rec + n + 1, 0xff, 4);
	memset(rec + n + 5, 0xc0, sizeof(rec) - n - 5);
	CU_ASSERT_EQUAL(env_parse(&g_er, rec, sizeof(rec), &v), -EINVAL);
	rec[n] = 0xdf;                  /* map32 */
	CU_ASSERT_EQUAL(env_parse(&g_er, rec, sizeof(rec), &v), -EINVAL);
	CU_ASSERT_EQUAL(mp_object_len(rec + n, sizeof(rec) - n), 0);
}

/* A msgpack body JSON cannot hold is refused (envelope.h): a map key that
 * is a map whose key is a map whose key is a map - three container keys
 * deep. Before, env_parse took it, the drain spooled it, and the file
 * sink's encoding failed with -EINVAL at every attempt: the record was
 * retried for ever and the records behind it went out before it. Two
 * deep is still a body (JSON: the inner key's text escaped twice). */
static void test_body_json_cannot_hold(void)
{
	/* {{{{1:1}:1}:1}:1} and {{{1:1}:1}:1} */
	static const uint8_t deep3[] = { 0x81, 0x81, 0x81, 0x81, 0x01, 0x01,
					 0x01, 0x01, 0x01 };
	static const uint8_t deep2[] = { 0x81, 0x81, 0x81, 0x01, 0x01, 0x01,
					 0x01 };
	const struct { const uint8_t *b; size_t n; int rc; } c[] = {
		{ deep3, sizeof(deep3), -EINVAL },
		{ deep2, sizeof(deep2), 0 },
	};
	struct json_line_cache jc;
	struct env_view v;
	struct buf out;
	size_t i, n;
	uint8_t rec[128];

	for (i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		n = head_to_body(rec);
		memcpy(rec + n, c[i].b, c[i].n);
		n += c[i].n;
		CU_ASSERT_EQUAL(env_parse(&g_er, rec, n, &v), c[i].rc);
		CU_ASSERT_EQUAL(env_parse_general(&g_er, rec, n, &v), c[i].rc);
		if (c[i].rc)
			continue;
		/* what it takes, a JSON sink can write */
		json_line_cache_init(&jc);
		buf_init(&out, 0);
		CU_ASSERT_EQUAL(json_line_fast(&jc, &v, &out, 1), 0);
		CU_ASSERT(out.len > 0);
		buf_free(&out);
		json_line_cache_free(&jc);
	}
}

/* The producers' layout, which env_parse() reads on its fast path: every
 * record accepted, every field equal to the reference's (and to
 * env_parse_general()'s). Then one to three mutations of each: accept or
 * reject and every field still the reference's - a fast path that skipped
 * a check (a key's bytes, a length, the end of the record) disagrees. */
static void test_canonical_agree(void)
{
	const int n = 100000 / SCALE;
	uint8_t buf[16384];
	int i, bad = 0, bad_m = 0, accepted = 0, acc, valid = 0;

	for (i = 0; i < n; i++) {
		size_t len = gen_into(buf, sizeof(buf), gen_canonical);
		int k, nm = 1 + (int)rn(3), rc;

		rc = agree(&g_er, &g_ref, buf, len, &acc);
		valid += acc;
		if (rc != 0 && bad++ < 3)
			printf("\n    canonical %d: reader and reference "
			       "disagree (%d), len %zu", i, rc, len);
		for (k = 0; k < nm; k++)
			len = mutate(buf, len, sizeof(buf));
		/* an exact-size heap copy: ASan (make check) sees a length
		 * the fast path followed past the record */
		{
			uint8_t *p = malloc(len ? len : 1);

			CU_ASSERT_FATAL(p != NULL);
			memcpy(p, buf, len);
			rc = agree(&g_er, &g_ref, p, len, &acc);
			free(p);
		}
		accepted += acc;
		if (rc != 0 && bad_m++ < 3)
			printf("\n    canonical mutation %d: reader and "
			       "reference disagree (%d), len %zu", i, rc, len);
	}
	printf("\n    %d producer-layout envelopes (%d valid), mutated: %d "
	       "still valid, %d + %d disagreements\n", n, valid, accepted,
	       bad, bad_m);
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT_EQUAL(bad_m, 0);
	/* most bodies are valid ones (a scalar body is not) */
	CU_ASSERT(valid > n / 2);
	CU_ASSERT(accepted > n / 20);
	CU_ASSERT(accepted < n - n / 20);
}

/* A producer-layout record, field by field (a golden view), and each of
 * its keys or markers changed by one byte: rejected, or read by the
 * general reader the same way. */
static void test_canonical_golden(void)
{
	static const uint8_t rec[] = {
		0x85, 0xa4, 's', 'i', 'n', 'k', 0xa3, 'a', 'p', 'i',
		0xa4, 't', 'y', 'p', 'e', 0xa5, 'b', 'e', 'n', 'c', 'h',
		0xa2, 't', 's', 0xcf, 0x17, 0x97, 0x9c, 0xfe, 0x36, 0x2a,
		0x00, 0x00,
		0xa2, 'i', 'd', 0xc4, 0x10, 0, 0, 0, 0, 0, 0, 0x12, 0x34,
		0, 0, 0, 0, 0, 0, 0x56, 0x78,
		0xa4, 'b', 'o', 'd', 'y', 0xa7, '{', '"', 'a', '"', ':',
		'1', '}' };
	static const uint8_t id[ENV_ID_LEN] = { 0, 0, 0, 0, 0, 0, 0x12, 0x34,
						0, 0, 0, 0, 0, 0, 0x56, 0x78 };
	uint8_t m[sizeof(rec)];
	struct env_view v;
	size_t i;
	int acc;

	CU_ASSERT_EQUAL_FATAL(env_parse(&g_er, rec, sizeof(rec), &v), 0);
	CU_ASSERT(same_bytes(v.sink, v.sink_len, "api", 3));
	CU_ASSERT(same_bytes(v.type, v.type_len, "bench", 5));
	CU_ASSERT_EQUAL(v.ts, 1700000000000000000ull);
	CU_ASSERT_EQUAL(v.has_id, 1);
	CU_ASSERT_EQUAL(memcmp(v.id, id, ENV_ID_LEN), 0);
	CU_ASSERT_EQUAL(v.body_kind, ENV_BODY_JSON);
	CU_ASSERT(same_bytes(v.body, v.body_len, "{\"a\":1}", 7));
	CU_ASSERT_PTR_EQUAL(v.body, (const char *)rec + sizeof(rec) - 7);
	/* "sinq", "typf", "tt", "ie", "bodz", a bin8 of 17, a str of 8 ...:
	 * every one-byte change outside the values agrees with the
	 * reference (most are rejected: a missing sink or body, a short id,
	 * bytes left over or missing at the end) */
	for (i = 0; i < sizeof(rec); i++) {
		int b;

		for (b = 0; b < 8; b++) {
			memcpy(m, rec, sizeof(rec));
			m[i] ^= (uint8_t)(1u << b);
			CU_ASSERT_EQUAL(agree(&g_er, &g_ref, m, sizeof(m),
					      &acc), 0);
		}
	}
	/* ts in a signed width: read when positive, rejected when not */
	memcpy(m, rec, sizeof(rec));
	m[24] = 0xd3;
	CU_ASSERT_EQUAL(env_parse(&g_er, m, sizeof(m), &v), 0);
	CU_ASSERT_EQUAL(v.ts, 1700000000000000000ull);
	m[25] = 0x97;
	CU_ASSERT_EQUAL(env_parse(&g_er, m, sizeof(m), &v), -EINVAL);
	m[24] = 0xcf;
	CU_ASSERT_EQUAL(env_parse(&g_er, m, sizeof(m), &v), 0);
	CU_ASSERT_EQUAL(v.ts, 0x97979cfe362a0000ull);
	/* one byte short, one byte over: rejected */
	CU_ASSERT_EQUAL(env_parse(&g_er, rec, sizeof(rec) - 1, &v), -EINVAL);
	{
		uint8_t over[sizeof(rec) + 1];

		memcpy(over, rec, sizeof(rec));
		over[sizeof(rec)] = 0xc0;
		CU_ASSERT_EQUAL(env_parse(&g_er, over, sizeof(over), &v),
				-EINVAL);
	}
}

static int add_suites(void)
{
	CU_pSuite s = CU_add_suite("envelope", setup, teardown);

	if (!s)
		return -1;
	CU_add_test(s, "generated envelopes: reader == reference",
		    test_generated_valid);
	CU_add_test(s, "mutated envelopes: reader == reference",
		    test_mutations_agree);
	CU_add_test(s, "every truncation rejected", test_every_truncation);
	CU_add_test(s, "hostile container counts refused",
		    test_hostile_counts);
	CU_add_test(s, "a body JSON cannot hold is refused",
		    test_body_json_cannot_hold);
	CU_add_test(s, "producer layout (fast path): reader == reference",
		    test_canonical_agree);
	CU_add_test(s, "producer layout: golden view, one-byte changes",
		    test_canonical_golden);
	return 0;
}

TEST_MAIN(add_suites)
