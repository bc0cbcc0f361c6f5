/* envelope.c - envelope reader (the writer is inline in envelope.h). */
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

static int cur_be(struct env_cur *c, unsigned n, uint64_t *out)
{
	uint64_t v = 0;
	unsigned i;

	if (n > c->len - c->off)
		return -EINVAL;
	for (i = 0; i < n; i++)
		v = v << 8 | c->p[c->off + i];
	c->off += n;
	*out = v;
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
	if (o && msgpack_unpack((const char *)c->p, c->off + n, &off,
				&r->zone, o) != MSGPACK_UNPACK_SUCCESS)
		return -EINVAL;
	c->off += n;
	return 0;
}

static int key_is(const char *k, uint32_t kn, const char *name, size_t n)
{
	return kn == n && memcmp(k, name, n) == 0;
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
	if (cur_object(r, c, &r->body) < 0)
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

int env_parse(struct env_reader *r, const void *p, size_t len,
	      struct env_view *v)
{
	struct env_cur c = { p, 0, len };
	unsigned seen = 0;
	uint64_t i, nkeys;
	uint8_t t;

	memset(v, 0, sizeof(*v));
	msgpack_zone_clear(&r->zone);
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

void env_id_hex(const uint8_t id[ENV_ID_LEN], char out[33])
{
	static const char hx[] = "0123456789abcdef";
	int i;

	for (i = 0; i < ENV_ID_LEN; i++) {
		out[2 * i] = hx[id[i] >> 4];
		out[2 * i + 1] = hx[id[i] & 15];
	}
	out[32] = 0;
}
