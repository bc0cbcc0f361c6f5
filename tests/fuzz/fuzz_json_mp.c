/* fuzz_json_mp - libFuzzer target: the exact msgpack -> JSON writer
 * (json_w_mp, broker/json.c) that every JSON sink and protocol encoder
 * runs over producers' msgpack bodies, and the tree converter
 * (json_from_msgpack). A producer writes the bodies: any msgpack object
 * must give valid JSON text - strings valid UTF-8 with jansson's escapes,
 * integers exact, floats that read back to the same value - or a clean
 * error, never a crash, an overread or invalid JSON.
 *
 * Input: msgpack bytes (exact-size heap copy); every object they hold,
 * one after the other, each checked by mp_object_len() first as the
 * envelope reader does.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "json.h"
#include "mpcheck.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* How deep o nests (containers), and how deep map or array keys nest
 * inside map or array keys. */
static void nesting(const msgpack_object *o, int *depth, int *keys)
{
	int d = 0, k = 0, d1, k1;
	uint32_t i, n = o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size :
			o->type == MSGPACK_OBJECT_MAP ? o->via.map.size : 0;

	for (i = 0; i < n; i++) {
		const msgpack_object *v = o->type == MSGPACK_OBJECT_ARRAY ?
			&o->via.array.ptr[i] : &o->via.map.ptr[i].val;

		nesting(v, &d1, &k1);
		d = d1 > d ? d1 : d;
		k = k1 > k ? k1 : k;
		if (o->type == MSGPACK_OBJECT_MAP) {
			const msgpack_object *key = &o->via.map.ptr[i].key;

			nesting(key, &d1, &k1);
			k1 += key->type == MSGPACK_OBJECT_MAP ||
			      key->type == MSGPACK_OBJECT_ARRAY;
			d = d1 > d ? d1 : d;
			k = k1 > k ? k1 : k;
		}
	}
	*depth = d + (o->type == MSGPACK_OBJECT_ARRAY ||
		      o->type == MSGPACK_OBJECT_MAP);
	*keys = k;
}

/* a scalar at the top: its text is exactly the value */
static void check_scalar(const msgpack_object *o, const char *t)
{
	char want[64];

	switch (o->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		snprintf(want, sizeof(want), "%" PRIu64, o->via.u64);
		if (strcmp(t, want))
			abort();
		break;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		snprintf(want, sizeof(want), "%" PRId64, o->via.i64);
		if (strcmp(t, want))
			abort();
		break;
	case MSGPACK_OBJECT_FLOAT64:
		if (!isfinite(o->via.f64)) {
			if (strcmp(t, "null"))
				abort();
		} else if (strtod(t, NULL) != o->via.f64 ||
			   !strpbrk(t, ".eE")) {
			abort();        /* not the same value, or an integer */
		}
		break;
	case MSGPACK_OBJECT_FLOAT32:
		if (isfinite(o->via.f64) &&
		    (float)strtod(t, NULL) != (float)o->via.f64)
			abort();
		break;
	case MSGPACK_OBJECT_NIL:
		if (strcmp(t, "null"))
			abort();
		break;
	default:
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct json_w w;
	static int ready;
	msgpack_unpacked up;
	struct buf out;
	size_t off = 0, len;
	char *copy = malloc(size ? size : 1);
	int n = 0;

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	if (!ready) {
		json_w_init(&w);
		ready = 1;
	}
	msgpack_unpacked_init(&up);
	buf_init(&out, 1 << 24);
	/* as the broker does (envelope.c): each object's lengths checked
	 * first, so msgpack-c's up-front allocation is bounded */
	while (n++ < 8 && off < size &&
	       (len = mp_object_len((const unsigned char *)copy + off,
				    size - off)) &&
	       msgpack_unpack_next(&up, copy, off + len, &off) ==
	       MSGPACK_UNPACK_SUCCESS) {
		const msgpack_object *o = &up.data;
		json_error_t err;
		json_t *j;
		int rc;

		buf_reset(&out);
		rc = json_w_mp(&w, o, &out);
		if (rc == -EINVAL) {
			int depth, keys;

			/* only for what is nested too deep */
			nesting(o, &depth, &keys);
			if (depth <= JSON_W_MAX_DEPTH &&
			    keys <= JSON_W_MAX_KEY_NEST)
				abort();
		} else if (rc == 0) {
			if (buf_addc(&out, 0) < 0)
				continue;
			/* valid JSON; integers past int64 are read as reals
			 * (jansson cannot hold a key with \u0000, which is
			 * valid JSON: that one refusal is jansson's) */
			j = json_loads((const char *)out.p, JSON_DECODE_ANY |
				       JSON_ALLOW_NUL |
				       JSON_DECODE_INT_AS_REAL, &err);
			if (!j && json_error_code(&err) !=
			    json_error_null_byte_in_key)
				abort();
			json_decref(j);
			check_scalar(o, (const char *)out.p);
		} else if (rc != -E2BIG && rc != -ENOMEM) {
			abort();
		}
		/* the tree path: a value that dumps, or NULL */
		j = json_from_msgpack(o);
		if (j) {
			char *s = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
			json_t *back = s ? json_loads(s, JSON_DECODE_ANY |
						      JSON_ALLOW_NUL, &err) :
					   NULL;

			if (s && !back && json_error_code(&err) !=
			    json_error_null_byte_in_key)
				abort();
			json_decref(back);
			free(s);
			json_decref(j);
		}
	}
	msgpack_unpacked_destroy(&up);
	buf_free(&out);
	free(copy);
	return 0;
}
