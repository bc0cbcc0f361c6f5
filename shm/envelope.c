/* envelope.c - envelope reader (the writer is inline in envelope.h). */
#include <errno.h>
#include <string.h>
#include "envelope.h"

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
	msgpack_unpacked_init(&r->up);
}

void env_reader_fini(struct env_reader *r)
{
	msgpack_unpacked_destroy(&r->up);
}

static int env_key_is(const msgpack_object *k, const char *name, size_t n)
{
	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
	       memcmp(k->via.str.ptr, name, n) == 0;
}

static int env_take_body(const msgpack_object *o, struct env_view *v)
{
	v->body_obj = o;
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
		v->body = NULL;
		v->body_len = 0;
		return 0;
	default:
		return -EINVAL;
	}
}

static int env_take_field(const msgpack_object_kv *kv, struct env_view *v,
			  unsigned *seen)
{
	const msgpack_object *o = &kv->val;

	if (env_key_is(&kv->key, "sink", 4)) {
		if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >
		    ENV_NAME_MAX)
			return -EINVAL;
		v->sink = o->via.str.ptr;
		v->sink_len = o->via.str.size;
		*seen |= 1;
	} else if (env_key_is(&kv->key, "type", 4)) {
		if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >
		    ENV_NAME_MAX)
			return -EINVAL;
		v->type = o->via.str.ptr;
		v->type_len = o->via.str.size;
	} else if (env_key_is(&kv->key, "ts", 2)) {
		if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
			return -EINVAL;
		v->ts = o->via.u64;
	} else if (env_key_is(&kv->key, "id", 2)) {
		if (o->type != MSGPACK_OBJECT_BIN ||
		    o->via.bin.size != ENV_ID_LEN)
			return -EINVAL;
		memcpy(v->id, o->via.bin.ptr, ENV_ID_LEN);
		v->has_id = 1;
	} else if (env_key_is(&kv->key, "body", 4)) {
		if (env_take_body(o, v) < 0)
			return -EINVAL;
		*seen |= 2;
	}
	return 0;
}

int env_parse(struct env_reader *r, const void *p, size_t len,
	      struct env_view *v)
{
	size_t off = 0;
	unsigned seen = 0;
	uint32_t i;
	const msgpack_object *m;

	memset(v, 0, sizeof(*v));
	if (msgpack_unpack_next(&r->up, (const char *)p, len, &off) !=
	    MSGPACK_UNPACK_SUCCESS)
		return -EINVAL;
	m = &r->up.data;
	if (m->type != MSGPACK_OBJECT_MAP)
		return -EINVAL;
	for (i = 0; i < m->via.map.size; i++)
		if (env_take_field(&m->via.map.ptr[i], v, &seen) < 0)
			return -EINVAL;
	if (seen != 3)
		return -EINVAL;
	/* the object must fill the record: trailing bytes mean damage */
	if (off != len)
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
