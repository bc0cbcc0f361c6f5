/* json.c - msgpack and envelopes to JSON through jansson.
 *
 * Every string that reaches the output goes through jansson, which does
 * all escaping. What this file adds is what jansson cannot do by itself:
 * msgpack types JSON lacks (bin and ext become base64, non-string map
 * keys become their JSON text, integers above INT64_MAX become reals)
 * and bytes that are not UTF-8 (jansson refuses them; they are repaired
 * here with U+FFFD, the WHATWG way: one replacement per maximal invalid
 * subpart).
 *
 * The file sink converts every event, so the hot path avoids needless
 * work: UTF-8 is checked once here and the value built with the
 * _nocheck constructors, and the serialisation is written straight into
 * the caller's reusable struct buf with json_dumpb() (no intermediate
 * malloc'd string).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define JSON_MAX_DEPTH   64     /* msgpack-c itself stops at 32 */
#define JSON_DUMP_FLAGS  (JSON_COMPACT | JSON_ENCODE_ANY)
#define JSON_DUMP_MIN    512    /* first guess of room for a dump */
#define JSON_STACK_TMP   256    /* small conversions stay off the heap */

/* ---- UTF-8 ------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not one;
 * then *skip is the maximal invalid subpart to replace (>= 1). The ranges
 * are those of RFC 3629 (no overlongs, no surrogates, <= U+10FFFF), which
 * are exactly what jansson accepts. */
static size_t json_utf8_seq(const uint8_t *s, size_t n, size_t *skip)
{
	uint8_t c = s[0], lo = 0x80, hi = 0xbf;
	size_t need, k;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		need = 1;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 2;
		if (c == 0xe0)
			lo = 0xa0;      /* overlong */
		else if (c == 0xed)
			hi = 0x9f;      /* surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 3;
		if (c == 0xf0)
			lo = 0x90;      /* overlong */
		else if (c == 0xf4)
			hi = 0x8f;      /* above U+10FFFF */
	} else {
		*skip = 1;
		return 0;
	}
	for (k = 1; k <= need; k++) {
		if (k >= n || s[k] < lo || s[k] > hi) {
			*skip = k;
			return 0;
		}
		lo = 0x80;
		hi = 0xbf;
	}
	return need + 1;
}

static int json_utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0, l, skip;

	while (i < n) {
		/* ASCII runs are the common case: no table, no call */
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		l = json_utf8_seq(s + i, n - i, &skip);
		if (!l)
			return 0;
		i += l;
	}
	return 1;
}

/* Copies s into out (room for 3 * n bytes) replacing every invalid
 * subpart with U+FFFD; returns the length written. */
static size_t json_utf8_repair(const uint8_t *s, size_t n, uint8_t *out)
{
	size_t i = 0, o = 0, l, skip;

	while (i < n) {
		l = json_utf8_seq(s + i, n - i, &skip);
		if (l) {
			memcpy(out + o, s + i, l);
			o += l;
			i += l;
		} else {
			out[o++] = 0xef;
			out[o++] = 0xbf;
			out[o++] = 0xbd;
			i += skip;
		}
	}
	return o;
}

json_t *json_string_lossy(const char *s, size_t n)
{
	uint8_t stack[JSON_STACK_TMP], *tmp = stack;
	size_t len;
	json_t *j;

	if (!s)
		s = "";
	if (json_utf8_valid((const uint8_t *)s, n))
		return json_stringn_nocheck(s, n);
	if (n > SIZE_MAX / 3)
		return NULL;
	if (3 * n > sizeof(stack)) {
		tmp = malloc(3 * n);
		if (!tmp)
			return NULL;
	}
	len = json_utf8_repair((const uint8_t *)s, n, tmp);
	j = json_stringn_nocheck((const char *)tmp, len);
	if (tmp != stack)
		free(tmp);
	return j;
}

/* ---- base64 (RFC 4648, with padding) ----------------------------------- */

static void json_base64_encode(const uint8_t *p, size_t n, char *out)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
		"0123456789+/";
	size_t i, o = 0;

	for (i = 0; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 |
			     p[i + 2];

		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = tab[(v >> 6) & 63];
		out[o++] = tab[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)p[i] << 16;

		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = '=';
		out[o++] = '=';
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;

		out[o++] = tab[v >> 18];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = tab[(v >> 6) & 63];
		out[o++] = '=';
	}
}

json_t *json_base64(const void *p, size_t n)
{
	char stack[JSON_STACK_TMP], *tmp = stack;
	size_t len;
	json_t *j;

	if (n > (SIZE_MAX - 2) / 4 * 3 - 3)
		return NULL;
	len = (n + 2) / 3 * 4;
	if (len > sizeof(stack)) {
		tmp = malloc(len);
		if (!tmp)
			return NULL;
	}
	json_base64_encode(p, n, tmp);
	/* base64 is ASCII: nothing for jansson to check */
	j = json_stringn_nocheck(tmp, len);
	if (tmp != stack)
		free(tmp);
	return j;
}

/* ---- exact msgpack -> JSON text ----------------------------------------- */

void json_w_init(struct json_w *w)
{
	w->s = NULL;            /* made on first use */
	buf_init(&w->tmp, 0);
	w->keys = 0;
}

void json_w_fini(struct json_w *w)
{
	json_decref(w->s);
	w->s = NULL;
	buf_free(&w->tmp);
}

/* Appends the compact dump of j (any JSON value). */
static int json_w_dump(const json_t *j, struct buf *out)
{
	size_t room, n;
	int rc;

	room = out->cap - out->len;
	n = json_dumpb(j, room ? (char *)out->p + out->len : NULL, room,
		       JSON_DUMP_FLAGS);
	if (n == 0)
		return -EINVAL;
	if (n > room) {
		rc = buf_reserve(out, n);
		if (rc < 0)
			return rc;
		if (json_dumpb(j, (char *)out->p + out->len,
			       out->cap - out->len, JSON_DUMP_FLAGS) != n)
			return -EIO;
	}
	out->len += n;
	return 0;
}

int json_w_str(struct json_w *w, const char *s, size_t n, struct buf *out)
{
	const char *text = s ? s : "";
	int rc;

	if (!json_utf8_valid((const uint8_t *)text, n)) {
		if (n > SIZE_MAX / 3)
			return -E2BIG;
		buf_reset(&w->tmp);
		rc = buf_reserve(&w->tmp, 3 * n);
		if (rc < 0)
			return rc;
		n = json_utf8_repair((const uint8_t *)text, n, w->tmp.p);
		text = (const char *)w->tmp.p;
	}
	if (!w->s)
		w->s = json_stringn_nocheck(text, n);
	else if (json_string_setn_nocheck(w->s, text, n) < 0)
		return -ENOMEM;
	if (!w->s)
		return -ENOMEM;
	return json_w_dump(w->s, out);
}

/* base64 is quotes around [A-Za-z0-9+/=]: nothing in it needs escaping */
int json_w_b64(struct json_w *w, const void *p, size_t n, struct buf *out)
{
	size_t len;
	int rc;

	if (n > (SIZE_MAX - 2) / 4 * 3 - 3)
		return -E2BIG;
	len = (n + 2) / 3 * 4;
	rc = buf_reserve(out, len + 2);
	if (rc < 0)
		return rc;
	out->p[out->len++] = '"';
	json_base64_encode(p, n, (char *)out->p + out->len);
	out->len += len;
	out->p[out->len++] = '"';
	(void)w;
	return 0;
}

/* a number that JSON readers take as a real, not an integer */
static int json_w_real_text(char *t, int n, struct buf *out)
{
	if (!strpbrk(t, ".eE")) {
		t[n++] = '.';
		t[n++] = '0';
	}
	return buf_add(out, t, (size_t)n);
}

int json_w_double(double d, struct buf *out)
{
	char t[48];
	int prec, n = 0;

	if (!isfinite(d))
		return buf_adds(out, "null");   /* JSON has neither */
	/* %g drops trailing zeros: the first precision that reads back
	 * is the shortest text (17 always does for a binary64) */
	for (prec = 15; prec <= 17; prec++) {
		n = snprintf(t, sizeof(t) - 3, "%.*g", prec, d);
		if (strtod(t, NULL) == d)
			break;
	}
	return json_w_real_text(t, n, out);
}

static int json_w_float(float f, struct buf *out)
{
	char t[48];
	int prec, n = 0;

	if (!isfinite(f))
		return buf_adds(out, "null");
	for (prec = 6; prec <= 9; prec++) {
		n = snprintf(t, sizeof(t) - 3, "%.*g", prec, (double)f);
		if (strtof(t, NULL) == f)
			break;
	}
	return json_w_real_text(t, n, out);
}

static int json_w_any(struct json_w *w, const msgpack_object *o,
		      struct buf *out, int depth);

/* A key that is not a string: its JSON text, as a string. */
static int json_w_key(struct json_w *w, const msgpack_object *k,
		      struct buf *out, int depth)
{
	struct buf text;
	int rc;

	if (k->type == MSGPACK_OBJECT_STR)
		return json_w_str(w, k->via.str.ptr, k->via.str.size, out);
	if (k->type == MSGPACK_OBJECT_BIN)
		return json_w_b64(w, k->via.bin.ptr, k->via.bin.size, out);
	/* a container key's text is escaped once more by each key around
	 * it: bounded, or a few bytes would make gigabytes */
	if ((k->type == MSGPACK_OBJECT_MAP || k->type == MSGPACK_OBJECT_ARRAY) &&
	    w->keys >= JSON_W_MAX_KEY_NEST)
		return -EINVAL;
	buf_init(&text, 0);
	w->keys++;
	rc = json_w_any(w, k, &text, depth + 1);
	w->keys--;
	if (rc == 0)
		rc = json_w_str(w, (const char *)text.p, text.len, out);
	buf_free(&text);
	return rc;
}

static int json_w_any(struct json_w *w, const msgpack_object *o,
		      struct buf *out, int depth)
{
	char t[32];
	uint32_t i;
	int rc = 0, n;

	if (depth > JSON_W_MAX_DEPTH)
		return -EINVAL;
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		return buf_adds(out, "null");
	case MSGPACK_OBJECT_BOOLEAN:
		return buf_adds(out, o->via.boolean ? "true" : "false");
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		n = snprintf(t, sizeof(t), "%llu",
			     (unsigned long long)o->via.u64);
		return buf_add(out, t, (size_t)n);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		n = snprintf(t, sizeof(t), "%lld", (long long)o->via.i64);
		return buf_add(out, t, (size_t)n);
	case MSGPACK_OBJECT_FLOAT32:
		return json_w_float((float)o->via.f64, out);
	case MSGPACK_OBJECT_FLOAT64:
		return json_w_double(o->via.f64, out);
	case MSGPACK_OBJECT_STR:
		return json_w_str(w, o->via.str.ptr, o->via.str.size, out);
	case MSGPACK_OBJECT_BIN:
		return json_w_b64(w, o->via.bin.ptr, o->via.bin.size, out);
	case MSGPACK_OBJECT_EXT:
		n = snprintf(t, sizeof(t), "{\"ext\":%d,\"data\":",
			     (int)o->via.ext.type);
		rc = buf_add(out, t, (size_t)n);
		if (rc == 0)
			rc = json_w_b64(w, o->via.ext.ptr, o->via.ext.size,
					out);
		return rc ? rc : buf_addc(out, '}');
	case MSGPACK_OBJECT_ARRAY:
		rc = buf_addc(out, '[');
		for (i = 0; i < o->via.array.size && rc == 0; i++) {
			if (i)
				rc = buf_addc(out, ',');
			if (rc == 0)
				rc = json_w_any(w, &o->via.array.ptr[i], out,
						depth + 1);
		}
		return rc ? rc : buf_addc(out, ']');
	case MSGPACK_OBJECT_MAP:
		rc = buf_addc(out, '{');
		for (i = 0; i < o->via.map.size && rc == 0; i++) {
			const msgpack_object_kv *kv = &o->via.map.ptr[i];

			if (i)
				rc = buf_addc(out, ',');
			if (rc == 0)
				rc = json_w_key(w, &kv->key, out, depth);
			if (rc == 0)
				rc = buf_addc(out, ':');
			if (rc == 0)
				rc = json_w_any(w, &kv->val, out, depth + 1);
		}
		return rc ? rc : buf_addc(out, '}');
	}
	return -EINVAL;
}

int json_w_mp(struct json_w *w, const msgpack_object *o, struct buf *out)
{
	size_t mark = out->len;
	int rc = json_w_any(w, o, out, 0);

	if (rc < 0)
		out->len = mark;
	return rc;
}

/* ---- msgpack -> JSON --------------------------------------------------- */

static json_t *json_from_mp(const msgpack_object *o, int depth, int keys);

/* A key that is not a string becomes its JSON text (1, true, null,
 * [1,2]); one that converts to a JSON string (a bin: its base64, a str
 * that is not UTF-8: its repaired text) becomes that string without
 * quotes. Duplicate keys: the last one wins. */
static int json_map_put(json_t *obj, const msgpack_object_kv *kv, int depth,
			int keys)
{
	const msgpack_object *k = &kv->key;
	json_t *val, *kj;
	char *text;
	int rc;

	/* container keys nest as deep as json_w_mp() lets them */
	if ((k->type == MSGPACK_OBJECT_MAP || k->type == MSGPACK_OBJECT_ARRAY) &&
	    keys >= JSON_W_MAX_KEY_NEST)
		return -1;
	val = json_from_mp(&kv->val, depth + 1, keys);
	if (!val)
		return -1;
	/* the usual case: a valid UTF-8 string key, used as it is */
	if (k->type == MSGPACK_OBJECT_STR &&
	    json_utf8_valid((const uint8_t *)k->via.str.ptr, k->via.str.size))
		return json_object_setn_new_nocheck(obj, k->via.str.ptr,
						    k->via.str.size, val);
	kj = json_from_mp(k, depth + 1, keys + 1);
	if (!kj) {
		json_decref(val);
		return -1;
	}
	if (json_is_string(kj)) {
		/* repaired text, base64 of a bin: jansson made it UTF-8 */
		rc = json_object_setn_new_nocheck(obj, json_string_value(kj),
						  json_string_length(kj), val);
		json_decref(kj);
		return rc;
	}
	text = json_dumps(kj, JSON_DUMP_FLAGS);
	json_decref(kj);
	if (!text) {
		json_decref(val);
		return -1;
	}
	rc = json_object_set_new_nocheck(obj, text, val);
	free(text);
	return rc;
}

static json_t *json_from_map(const msgpack_object_map *m, int depth,
				int keys)
{
	json_t *obj = json_object();
	uint32_t i;

	if (!obj)
		return NULL;
	for (i = 0; i < m->size; i++)
		if (json_map_put(obj, &m->ptr[i], depth, keys) < 0) {
			json_decref(obj);
			return NULL;
		}
	return obj;
}

static json_t *json_from_array(const msgpack_object_array *a, int depth,
				  int keys)
{
	json_t *arr = json_array();
	uint32_t i;

	if (!arr)
		return NULL;
	for (i = 0; i < a->size; i++) {
		json_t *v = json_from_mp(&a->ptr[i], depth + 1, keys);

		/* json_array_append_new() steals v, also on failure */
		if (!v || json_array_append_new(arr, v) < 0) {
			json_decref(arr);
			return NULL;
		}
	}
	return arr;
}

static json_t *json_from_ext(const msgpack_object_ext *e)
{
	json_t *obj = json_object();

	if (!obj)
		return NULL;
	if (json_object_set_new_nocheck(obj, "ext",
					json_integer(e->type)) < 0 ||
	    json_object_set_new_nocheck(obj, "data",
					json_base64(e->ptr, e->size)) < 0) {
		json_decref(obj);
		return NULL;
	}
	return obj;
}

static json_t *json_from_mp(const msgpack_object *o, int depth, int keys)
{
	if (depth > JSON_MAX_DEPTH)
		return NULL;
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		return json_null();
	case MSGPACK_OBJECT_BOOLEAN:
		return json_boolean(o->via.boolean);
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		/* json_int_t is signed 64-bit: a larger uint64 can only be
		 * carried as a real (nearest double) */
		if (o->via.u64 > (uint64_t)INT64_MAX)
			return json_real((double)o->via.u64);
		return json_integer((json_int_t)o->via.u64);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return json_integer((json_int_t)o->via.i64);
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		/* JSON has no NaN or infinity */
		if (!isfinite(o->via.f64))
			return json_null();
		return json_real(o->via.f64);
	case MSGPACK_OBJECT_STR:
		return json_string_lossy(o->via.str.ptr, o->via.str.size);
	case MSGPACK_OBJECT_BIN:
		return json_base64(o->via.bin.ptr, o->via.bin.size);
	case MSGPACK_OBJECT_EXT:
		return json_from_ext(&o->via.ext);
	case MSGPACK_OBJECT_ARRAY:
		return json_from_array(&o->via.array, depth, keys);
	case MSGPACK_OBJECT_MAP:
		return json_from_map(&o->via.map, depth, keys);
	}
	return NULL;
}

json_t *json_from_msgpack(const msgpack_object *o)
{
	return o ? json_from_mp(o, 0, 0) : NULL;
}

/* ---- envelopes --------------------------------------------------------- */

json_t *json_body(const struct env_view *v)
{
	switch (v->body_kind) {
	case ENV_BODY_JSON:
		/* any JSON value; \u0000 is fine, jansson keeps lengths */
		return json_loadb(v->body, v->body_len,
				  JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	case ENV_BODY_BYTES:
		return json_base64(v->body, v->body_len);
	case ENV_BODY_MSGPACK:
		return json_from_msgpack(v->body_obj);
	}
	return NULL;
}

/* The envelope object around an already converted body (stolen). */
static json_t *json_envelope_wrap(const struct env_view *v, json_t *body)
{
	json_t *obj = json_object(), *id;
	char hex[33];

	if (!obj) {
		json_decref(body);
		return NULL;
	}
	if (v->has_id) {
		env_id_hex(v->id, hex);
		id = json_stringn_nocheck(hex, 32);
	} else {
		id = json_null();       /* a producer that gave none */
	}
	/* keys in this order: jansson keeps insertion order when dumping */
	if (json_object_set_new_nocheck(obj, "id", id) < 0 ||
	    json_object_set_new_nocheck(obj, "sink",
			json_string_lossy(v->sink, v->sink_len)) < 0 ||
	    json_object_set_new_nocheck(obj, "type",
			json_string_lossy(v->type, v->type_len)) < 0 ||
	    json_object_set_new_nocheck(obj, "ts", v->ts > (uint64_t)INT64_MAX ?
			json_real((double)v->ts) :
			json_integer((json_int_t)v->ts)) < 0 ||
	    json_object_set_new_nocheck(obj, "body", body) < 0) {
		json_decref(obj);
		return NULL;
	}
	return obj;
}

json_t *json_envelope(const struct env_view *v)
{
	json_t *body = json_body(v);

	return body ? json_envelope_wrap(v, body) : NULL;
}

int json_append(struct buf *out, const json_t *j)
{
	if (!j)
		return -EINVAL;
	/* Dump into the room the buffer already has: json_dumpb() returns
	 * the full size even when it did not fit, so a value that was too
	 * large costs one reserve and a second dump, and a reused buffer
	 * soon has room for the usual event. Best effort: the cap may
	 * forbid the guess, json_w_dump() asks for the exact size. */
	if (out->cap - out->len < JSON_DUMP_MIN)
		(void)buf_reserve(out, JSON_DUMP_MIN);
	return json_w_dump(j, out);
}

int json_envelope_line(const struct env_view *v, struct buf *out)
{
	size_t mark = out->len;
	json_t *body, *env;
	int rc;

	body = json_body(v);
	if (!body)
		return -EINVAL;
	env = json_envelope_wrap(v, body);
	if (!env)
		return -ENOMEM;
	rc = json_append(out, env);
	if (rc == 0)
		rc = buf_addc(out, '\n');
	json_decref(env);
	if (rc < 0)
		out->len = mark;        /* never leave half a line behind */
	return rc;
}

/* ---- fast NDJSON lines --------------------------------------------------- */

void json_line_cache_init(struct json_line_cache *c)
{
	memset(c, 0, sizeof(*c));
	json_w_init(&c->w);
}

void json_line_cache_free(struct json_line_cache *c)
{
	int i;

	for (i = 0; i < JSON_LINE_CACHE; i++) {
		free(c->e[i].key);
		free(c->e[i].text);
	}
	json_w_fini(&c->w);
	memset(c, 0, sizeof(*c));
}

static uint64_t json_fnv(const char *p, size_t n, uint64_t h)
{
	size_t i;

	for (i = 0; i < n; i++)
		h = (h ^ (uint8_t)p[i]) * 0x100000001b3ULL;
	return h;
}

/* The cached ,"sink":..,"type":..,"ts": text for this envelope. */
static const struct json_frag *json_frag_get(struct json_line_cache *c,
					     const struct env_view *v)
{
	uint64_t h = json_fnv(v->type, v->type_len,
			      json_fnv(v->sink, v->sink_len,
				       0xcbf29ce484222325ULL) ^ 0xff);
	struct json_frag *f = &c->e[h % JSON_LINE_CACHE];
	uint32_t klen = v->sink_len + 1 + v->type_len;
	json_t *s = NULL, *t = NULL;
	struct buf b;

	if (f->text && f->hash == h && f->klen == klen &&
	    !memcmp(f->key, v->sink, v->sink_len) &&
	    !memcmp(f->key + v->sink_len + 1, v->type, v->type_len))
		return f;
	free(f->key);
	free(f->text);
	memset(f, 0, sizeof(*f));
	buf_init(&b, 0);
	s = json_string_lossy(v->sink, v->sink_len);
	t = json_string_lossy(v->type, v->type_len);
	f->key = malloc(klen + 1);
	if (!s || !t || !f->key || buf_adds(&b, ",\"sink\":") < 0 ||
	    json_append(&b, s) < 0 || buf_adds(&b, ",\"type\":") < 0 ||
	    json_append(&b, t) < 0 || buf_adds(&b, ",\"ts\":") < 0)
		goto fail;
	memcpy(f->key, v->sink, v->sink_len);
	f->key[v->sink_len] = 0;
	memcpy(f->key + v->sink_len + 1, v->type, v->type_len);
	f->klen = klen;
	f->hash = h;
	f->text = (char *)b.p;
	f->tlen = (uint32_t)b.len;
	json_decref(s);
	json_decref(t);
	return f;
fail:
	json_decref(s);
	json_decref(t);
	free(f->key);
	f->key = NULL;
	buf_free(&b);
	return NULL;
}

static void json_blank(uint8_t *p, size_t n, int c)
{
	uint8_t *q, *end = p + n;

	while (p < end && (q = memchr(p, c, (size_t)(end - p)))) {
		*q = ' ';
		p = q + 1;
	}
}

/* A JSON-text body into space reserved for it: raw CR/LF turned into
 * spaces (memchr: the common body has neither, and is scanned at SIMD
 * speed); an empty body is null. */
static size_t json_body_text_at(const struct env_view *v, uint8_t *dst)
{
	if (v->body_len == 0) {
		memcpy(dst, "null", 4);
		return 4;
	}
	memcpy(dst, v->body, v->body_len);
	json_blank(dst, v->body_len, '\n');
	json_blank(dst, v->body_len, '\r');
	return v->body_len;
}

/* Decimal digits of v followed by tail; returns the length. Two digits
 * a division (the ts is 19 of them). */
static size_t json_u64(char *dst, uint64_t v, const char *tail, size_t tl)
{
	static const char d2[201] =
		"0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849"
		"5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";
	char tmp[20], *p = tmp + sizeof(tmp);
	size_t n;

	while (v >= 100) {
		unsigned r = (unsigned)(v % 100);

		v /= 100;
		p -= 2;
		memcpy(p, d2 + 2 * r, 2);
	}
	if (v >= 10) {
		p -= 2;
		memcpy(p, d2 + 2 * v, 2);
	} else {
		*--p = (char)('0' + v);
	}
	n = (size_t)(tmp + sizeof(tmp) - p);
	memcpy(dst, p, n);
	memcpy(dst + n, tail, tl);
	return n + tl;
}

/* The line up to the body is known before it is written: the id, the
 * cached sink/type text, the ts. For a JSON-text body (the common one)
 * the whole line is reserved at once and written with plain copies;
 * other bodies are appended by their writers. Either way a line that
 * does not fit leaves nothing behind. */
int json_line_fast(struct json_line_cache *c, const struct env_view *v,
		   struct buf *out, int nl)
{
	const struct json_frag *f = json_frag_get(c, v);
	size_t mark = out->len, want, hn, tn;
	char head[64], ts[48];
	uint8_t *w;
	int rc;

	if (!f)
		return -ENOMEM;
	memcpy(head, "{\"id\":", 6);
	if (v->has_id) {
		head[6] = '"';
		env_id_hex(v->id, head + 7);
		head[39] = '"';
		hn = 40;
	} else {
		memcpy(head + 6, "null", 4);
		hn = 10;
	}
	tn = json_u64(ts, v->ts, ",\"body\":", 8);
	want = hn + f->tlen + tn;
	if (v->body_kind == ENV_BODY_JSON)
		want += (v->body_len ? v->body_len : 4) + (nl ? 2 : 1);
	rc = buf_reserve(out, want);
	if (rc < 0)
		return rc;
	w = out->p + out->len;
	memcpy(w, head, hn);
	memcpy(w + hn, f->text, f->tlen);
	memcpy(w + hn + f->tlen, ts, tn);
	out->len += hn + f->tlen + tn;
	switch (v->body_kind) {
	case ENV_BODY_JSON:
		out->len += json_body_text_at(v, out->p + out->len);
		memcpy(out->p + out->len, "}\n", nl ? 2 : 1);
		out->len += nl ? 2 : 1;
		return 0;
	case ENV_BODY_BYTES:
		rc = json_w_b64(&c->w, v->body, v->body_len, out);
		break;
	default:
		rc = v->body_obj ? json_w_mp(&c->w, v->body_obj, out) :
		     -EINVAL;
		break;
	}
	if (rc == 0)
		rc = buf_add(out, nl ? "}\n" : "}", nl ? 2 : 1);
	if (rc < 0)
		out->len = mark;
	return rc;
}
