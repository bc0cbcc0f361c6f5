/* envelope.c - envelope reader (the writer is inline in envelope.h). */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include "envelope.h"
#include "mpcheck.h"

size_t env_prefix_template(uint8_t *out, size_t cap, const char *sink,
			   size_t slen)
{
	struct env_buf b = { out, 0, cap, 0 };
	msgpack_packer pk;

	msgpack_packer_init(&pk, &b, env_buf_write);
	msgpack_pack_map(&pk, 5);
	msgpack_pack_str_with_body(&pk, "sink", 4);
	msgpack_pack_str_with_body(&pk, sink, slen);
	msgpack_pack_str_with_body(&pk, "type", 4);
	return b.overflow ? 0 : b.len;
}

void env_tail_template(uint8_t out[ENV_TAIL_LEN])
{
	static const uint8_t zero[ENV_ID_LEN];
	struct env_buf b = { out, 0, ENV_TAIL_LEN, 0 };
	msgpack_packer pk;

	msgpack_packer_init(&pk, &b, env_buf_write);
	msgpack_pack_str_with_body(&pk, "ts", 2);
	msgpack_pack_fix_uint64(&pk, 0);
	msgpack_pack_str_with_body(&pk, "id", 2);
	msgpack_pack_bin_with_body(&pk, zero, ENV_ID_LEN);
	msgpack_pack_str_with_body(&pk, "body", 4);
}

void env_reader_init(struct env_reader *r)
{
	msgpack_zone_init(&r->zone, 4096);
	r->zone_used = 0;
}

/* The zone holds only a map/array body (or an unknown key's value) of the
 * last record: most records put nothing there, and clearing an empty
 * zone was 4 % of a parse. */
static void env_reader_clear(struct env_reader *r)
{
	if (r->zone_used) {
		msgpack_zone_clear(&r->zone);
		r->zone_used = 0;
	}
}

void env_reader_fini(struct env_reader *r)
{
	msgpack_zone_destroy(&r->zone);
}

/* A cursor over one record; every read checks the bytes left. */
struct env_cur {
	const uint8_t *p;
	size_t off, len;
};

/* n is 1, 2, 4 or 8 (every msgpack width): one load each */
static inline int cur_be(struct env_cur *c, unsigned n, uint64_t *out)
{
	const uint8_t *q = c->p + c->off;
	uint32_t v32;
	uint16_t v16;

	if (n > c->len - c->off)
		return -EINVAL;
	switch (n) {
	case 1:
		*out = q[0];
		break;
	case 2:
		memcpy(&v16, q, 2);
		*out = be16toh(v16);
		break;
	case 4:
		memcpy(&v32, q, 4);
		*out = be32toh(v32);
		break;
	default:
		memcpy(out, q, 8);
		*out = be64toh(*out);
		break;
	}
	c->off += n;
	return 0;
}

/* str (fixstr/str8/16/32): pointer and length, bounds-checked */
static int cur_str(struct env_cur *c, const char **s, uint32_t *n)
{
	uint64_t l;
	uint8_t t;

	if (c->off >= c->len)
		return -EINVAL;
	t = c->p[c->off++];
	if ((t & 0xe0) == 0xa0)
		l = t & 0x1f;
	else if (t < 0xd9 || t > 0xdb ||
		 cur_be(c, 1u << (t - 0xd9), &l) < 0)
		return -EINVAL;
	if (l > c->len - c->off)
		return -EINVAL;
	*s = (const char *)c->p + c->off;
	*n = (uint32_t)l;
	c->off += l;
	return 0;
}

static int cur_bin(struct env_cur *c, const char **s, uint32_t *n)
{
	uint64_t l;
	uint8_t t;

	if (c->off >= c->len)
		return -EINVAL;
	t = c->p[c->off++];
	if (t < 0xc4 || t > 0xc6 || cur_be(c, 1u << (t - 0xc4), &l) < 0 ||
	    l > c->len - c->off)
		return -EINVAL;
	*s = (const char *)c->p + c->off;
	*n = (uint32_t)l;
	c->off += l;
	return 0;
}

/* a non-negative integer in any width (msgpack-c's POSITIVE_INTEGER) */
static int cur_uint(struct env_cur *c, uint64_t *v)
{
	uint8_t t;

	if (c->off >= c->len)
		return -EINVAL;
	t = c->p[c->off++];
	if (t <= 0x7f) {
		*v = t;
		return 0;
	}
	if (t >= 0xcc && t <= 0xcf)
		return cur_be(c, 1u << (t - 0xcc), v);
	if (t >= 0xd0 && t <= 0xd3) {
		unsigned n = 1u << (t - 0xd0);

		if (cur_be(c, n, v) < 0 || (*v >> (8 * n - 1)) & 1)
			return -EINVAL;
		return 0;
	}
	return -EINVAL;
}

/* The object at the cursor, bounds- and count-checked first (see
 * mpcheck.h): skipped, or also unpacked into the zone when o != NULL. */
static int cur_object(struct env_reader *r, struct env_cur *c,
		      msgpack_object *o)
{
	size_t n = mp_object_len(c->p + c->off, c->len - c->off);
	size_t off = c->off;

	if (!n)
		return -EINVAL;
	if (o) {
		r->zone_used = 1;
		if (msgpack_unpack((const char *)c->p, c->off + n, &off,
				   &r->zone, o) != MSGPACK_UNPACK_SUCCESS)
			return -EINVAL;
	}
	c->off += n;
	return 0;
}

static int key_is(const char *k, uint32_t kn, const char *name, size_t n)
{
	return kn == n && memcmp(k, name, n) == 0;
}

/* 0 when JSON can hold the body (envelope.h: ENV_MAX_DEPTH,
 * ENV_MAX_KEY_NEST), counting depth and keys as broker/json.c's writer
 * does: one level per array element, map value and map key; a container
 * key one key nesting more. */
static int env_json_ok(const msgpack_object *o, int depth, int keys)
{
	uint32_t i;

	if (depth > ENV_MAX_DEPTH)
		return -1;
	if (o->type == MSGPACK_OBJECT_ARRAY) {
		for (i = 0; i < o->via.array.size; i++)
			if (env_json_ok(&o->via.array.ptr[i], depth + 1,
					keys) < 0)
				return -1;
	} else if (o->type == MSGPACK_OBJECT_MAP) {
		for (i = 0; i < o->via.map.size; i++) {
			const msgpack_object *k = &o->via.map.ptr[i].key;

			if ((k->type == MSGPACK_OBJECT_MAP ||
			     k->type == MSGPACK_OBJECT_ARRAY) &&
			    (keys >= ENV_MAX_KEY_NEST ||
			     env_json_ok(k, depth + 1, keys + 1) < 0))
				return -1;
			if (env_json_ok(&o->via.map.ptr[i].val, depth + 1,
					keys) < 0)
				return -1;
		}
	}
	return 0;
}

static int env_take_body(struct env_reader *r, struct env_cur *c,
			 struct env_view *v)
{
	uint8_t t;

	if (c->off >= c->len)
		return -EINVAL;
	t = c->p[c->off];
	if ((t & 0xe0) == 0xa0 || (t >= 0xd9 && t <= 0xdb)) {
		v->body_kind = ENV_BODY_JSON;
		return cur_str(c, &v->body, &v->body_len);
	}
	if (t >= 0xc4 && t <= 0xc6) {
		v->body_kind = ENV_BODY_BYTES;
		return cur_bin(c, &v->body, &v->body_len);
	}
	if ((t & 0xe0) != 0x80 && t != 0xdc && t != 0xdd && t != 0xde &&
	    t != 0xdf)
		return -EINVAL;  /* fixmap, fixarray, array16/32, map16/32 */
	if (cur_object(r, c, &r->body) < 0 || env_json_ok(&r->body, 0, 0) < 0)
		return -EINVAL;
	v->body_kind = ENV_BODY_MSGPACK;
	v->body_obj = &r->body;
	return 0;
}

static int env_take_field(struct env_reader *r, struct env_cur *c,
			  struct env_view *v, unsigned *seen)
{
	const char *k, *s;
	uint32_t kn, n;

	if (cur_str(c, &k, &kn) < 0)
		return -EINVAL;
	if (key_is(k, kn, "sink", 4)) {
		if (cur_str(c, &v->sink, &v->sink_len) < 0 ||
		    v->sink_len > ENV_NAME_MAX)
			return -EINVAL;
		*seen |= 1;
	} else if (key_is(k, kn, "type", 4)) {
		if (cur_str(c, &v->type, &v->type_len) < 0 ||
		    v->type_len > ENV_NAME_MAX)
			return -EINVAL;
	} else if (key_is(k, kn, "ts", 2)) {
		if (cur_uint(c, &v->ts) < 0)
			return -EINVAL;
	} else if (key_is(k, kn, "id", 2)) {
		if (cur_bin(c, &s, &n) < 0 || n != ENV_ID_LEN)
			return -EINVAL;
		memcpy(v->id, s, ENV_ID_LEN);
		v->has_id = 1;
	} else if (key_is(k, kn, "body", 4)) {
		if (env_take_body(r, c, v) < 0)
			return -EINVAL;
		*seen |= 2;
	} else if (cur_object(r, c, NULL) < 0) {
		return -EINVAL;
	}
	return 0;
}

/* The general reader: any key order, unknown keys skipped, every msgpack
 * width. The definitive answer for every record env_parse's fast path
 * does not take. */
int env_parse_general(struct env_reader *r, const void *p, size_t len,
		      struct env_view *v)
{
	struct env_cur c = { p, 0, len };
	unsigned seen = 0;
	uint64_t i, nkeys;
	uint8_t t;

	memset(v, 0, sizeof(*v));
	env_reader_clear(r);
	if (len == 0)
		return -EINVAL;
	t = c.p[c.off++];
	if ((t & 0xf0) == 0x80)
		nkeys = t & 0x0f;
	else if ((t != 0xde && t != 0xdf) ||
		 cur_be(&c, t == 0xde ? 2 : 4, &nkeys) < 0)
		return -EINVAL;
	for (i = 0; i < nkeys; i++)
		if (env_take_field(r, &c, v, &seen) < 0)
			return -EINVAL;
	if (seen != 3)
		return -EINVAL;
	/* the object must fill the record: trailing bytes mean damage */
	if (c.off != len)
		return -EINVAL;
	if (!v->type) {
		v->type = "";
		v->type_len = 0;
	}
	return 0;
}

/* ---- the fast path: the layout every producer writes -------------------
 *
 * env_pack_head() and liboutbox's templates write the five keys in one
 * order, each key a fixstr, sink and type as fixstr or str8, the id as
 * bin8 of 16 bytes. For that layout the general loop's work - a key
 * header, a length and a memcmp per key, a dispatch on the name - is a
 * compare of the key's bytes at a known place. Every length is still
 * checked against the record before it is used; anything else (another
 * order, widths, unknown keys, a short record) goes to
 * env_parse_general(), which gives the same view for every record this
 * path takes (tests/test_envelope.c compares the two on every record it
 * builds and every one-byte change and truncation of them). */

/* the key (a fixstr with its header byte) at the cursor, then skipped */
static inline int canon_key(struct env_cur *c, const char *k, size_t n)
{
	if (n > c->len - c->off || memcmp(c->p + c->off, k, n) != 0)
		return -EINVAL;
	c->off += n;
	return 0;
}

/* a name: fixstr or str8, at most ENV_NAME_MAX by construction */
static inline int canon_name(struct env_cur *c, const char **s, uint32_t *n)
{
	size_t l, h;
	uint8_t t;

	if (c->len - c->off < 2)
		return -EINVAL;
	t = c->p[c->off];
	if ((t & 0xe0) == 0xa0) {
		l = t & 0x1f;
		h = 1;
	} else if (t == 0xd9) {
		l = c->p[c->off + 1];
		h = 2;
	} else {
		return -EINVAL;
	}
	if (l > c->len - c->off - h)
		return -EINVAL;
	*s = (const char *)c->p + c->off + h;
	*n = (uint32_t)l;
	c->off += h + l;
	return 0;
}

static int env_parse_canon(struct env_reader *r, struct env_cur *c,
			   struct env_view *v)
{
	if (canon_key(c, "\x85\xa4sink", 6) < 0 ||
	    canon_name(c, &v->sink, &v->sink_len) < 0 ||
	    canon_key(c, "\xa4type", 5) < 0 ||
	    canon_name(c, &v->type, &v->type_len) < 0 ||
	    canon_key(c, "\xa2ts", 3) < 0 || cur_uint(c, &v->ts) < 0 ||
	    canon_key(c, "\xa2id\xc4\x10", 5) < 0 ||
	    ENV_ID_LEN > c->len - c->off)
		return -EINVAL;
	memcpy(v->id, c->p + c->off, ENV_ID_LEN);
	v->has_id = 1;
	c->off += ENV_ID_LEN;
	if (canon_key(c, "\xa4" "body", 5) < 0 || env_take_body(r, c, v) < 0 ||
	    c->off != c->len)
		return -EINVAL;
	return 0;
}

int env_parse(struct env_reader *r, const void *p, size_t len,
	      struct env_view *v)
{
	struct env_cur c = { p, 0, len };

	memset(v, 0, sizeof(*v));
	env_reader_clear(r);
	if (env_parse_canon(r, &c, v) == 0)
		return 0;
	return env_parse_general(r, p, len, v);
}

void env_id_hex(const uint8_t id[ENV_ID_LEN], char out[33])
{
	/* two digits a byte, one load each: an id per event on JSON sinks */
	static const char hx2[513] =
		"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
		"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
		"404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
		"606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
		"808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
		"a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
		"c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
		"e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
	int i;

#pragma GCC unroll 16
	for (i = 0; i < ENV_ID_LEN; i++)
		memcpy(out + 2 * i, hx2 + 2 * id[i], 2);
	out[32] = 0;
}
