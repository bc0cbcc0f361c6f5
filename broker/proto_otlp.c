/* proto_otlp.c - OTLP/HTTP logs, JSON encoding (POST {url}/v1/logs).
 *
 *   {"resourceLogs":[{"resource":{"attributes":[service.name, host.name]},
 *     "scopeLogs":[{"scope":{"name":"outbox","version":V},
 *       "logRecords":[{"timeUnixNano":"<ts>","observedTimeUnixNano":"<now>",
 *         "severityNumber":N,"severityText":"..","body":<AnyValue>,
 *         "attributes":[{"key":..,"value":<AnyValue>}, ...]}, ...]}]}]}
 *
 * One logRecord per event. An object body (JSON text or msgpack map) is
 * taken apart: "severity" / "level" / "severityText" give severityText
 * (and severityNumber from its name: trace 1, debug 5, info 9, warn 13,
 * error 17, fatal 21), a numeric "severityNumber" is kept, "message" /
 * "msg" / "body" is the body, every other member an attribute. Any other
 * body is the log body itself. Attributes added by outbox:
 * log.record.uid (the envelope's stable id, 32 hex) and outbox.type (the
 * record type). AnyValue follows the OTLP/JSON mapping: int64 as a
 * decimal string (an unsigned value past int64 becomes stringValue, to
 * stay exact), bytes as base64, NaN/Infinity as the proto3 JSON strings.
 *
 * Response rules (OTLP/HTTP spec): 429, 502, 503, 504 are retried
 * (Retry-After honoured by the policy), 413 split, every other non-2xx
 * dropped. A 200 may still reject some records (partial success:
 * {"partialSuccess":{"rejectedLogRecords":"N","errorMessage":"..."}}):
 * those N are dropped `rejected` (the spec forbids retrying them), a
 * message with N = 0 is a warning, logged. Protobuf encoding is not
 * built (see DESIGN.md).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "http.h"
#include "policy.h"
#include "proto.h"

struct otlp {
	struct buf head;             /* up to "logRecords":[ */
};

static int otlp_kv_str(struct proto *p, struct buf *o, const char *k,
		       const char *v)
{
	int rc = buf_adds(o, "{\"key\":");

	if (rc == 0)
		rc = json_w_str(&p->w, k, strlen(k), o);
	if (rc == 0)
		rc = buf_adds(o, ",\"value\":{\"stringValue\":");
	if (rc == 0)
		rc = json_w_str(&p->w, v, strlen(v), o);
	return rc ? rc : buf_adds(o, "}}");
}

static int otlp_open(struct proto *p)
{
	struct otlp *t = calloc(1, sizeof(*t));
	const char *u = p->cfg->url;
	size_t n = u ? strlen(u) : 0;
	char host[256];
	int rc;

	if (!t)
		return -ENOMEM;
	p->priv = t;
	if (!u)
		return -EINVAL;
	while (n && u[n - 1] == '/')
		n--;
	/* {url}/v1/logs, unless the url names the path already */
	if (n >= 8 && !memcmp(u + n - 8, "/v1/logs", 8))
		rc = asprintf(&p->url, "%.*s", (int)n, u);
	else
		rc = asprintf(&p->url, "%.*s/v1/logs", (int)n, u);
	if (rc < 0) {
		p->url = NULL;
		return -ENOMEM;
	}
	if (gethostname(host, sizeof(host)) < 0)
		snprintf(host, sizeof(host), "unknown");
	host[sizeof(host) - 1] = 0;
	buf_init(&t->head, 0);
	rc = buf_adds(&t->head, "{\"resourceLogs\":[{\"resource\":"
		      "{\"attributes\":[");
	if (rc == 0)
		rc = otlp_kv_str(p, &t->head, "service.name",
				 p->cfg->service_name ? p->cfg->service_name :
				 "outbox");
	if (rc == 0)
		rc = buf_addc(&t->head, ',');
	if (rc == 0)
		rc = otlp_kv_str(p, &t->head, "host.name", host);
	if (rc == 0)
		rc = buf_adds(&t->head, "]},\"scopeLogs\":[{\"scope\":{\"name\":"
			      "\"outbox\",\"version\":\"" OBX_VERSION_STRING
			      "\"},\"logRecords\":[");
	if (rc < 0)
		return rc;
	p->hdrs[0] = "Content-Type: application/json";
	p->hdrs[1] = NULL;
	return 0;
}

static void otlp_close(struct proto *p)
{
	struct otlp *t = p->priv;

	if (!t)
		return;
	buf_free(&t->head);
	free(t);
	p->priv = NULL;
}

/* ---- AnyValue ---------------------------------------------------------------- */

static int otlp_double(double d, struct buf *o)
{
	if (isnan(d))
		return buf_adds(o, "{\"doubleValue\":\"NaN\"}");
	if (isinf(d))
		return buf_adds(o, d > 0 ? "{\"doubleValue\":\"Infinity\"}" :
				"{\"doubleValue\":\"-Infinity\"}");
	if (buf_adds(o, "{\"doubleValue\":") < 0 || json_w_double(d, o) < 0)
		return -ENOMEM;
	return buf_addc(o, '}');
}

static int otlp_any_mp(struct proto *p, const msgpack_object *v,
		       struct buf *o, int depth);

static int otlp_kv_mp(struct proto *p, const msgpack_object *k,
		      const msgpack_object *v, struct buf *o, int depth)
{
	int rc = buf_adds(o, "{\"key\":");

	if (rc == 0 && k->type == MSGPACK_OBJECT_STR)
		rc = json_w_str(&p->w, k->via.str.ptr, k->via.str.size, o);
	else if (rc == 0) {
		/* a key that is not a string: its JSON text */
		struct buf kt;

		buf_init(&kt, 0);
		rc = json_w_mp(&p->w, k, &kt);
		if (rc == 0)
			rc = json_w_str(&p->w, (const char *)kt.p, kt.len, o);
		buf_free(&kt);
	}
	if (rc == 0)
		rc = buf_adds(o, ",\"value\":");
	if (rc == 0)
		rc = otlp_any_mp(p, v, o, depth + 1);
	return rc ? rc : buf_addc(o, '}');
}

static int otlp_any_mp(struct proto *p, const msgpack_object *v,
		       struct buf *o, int depth)
{
	char t[48];
	uint32_t i;
	int rc = 0;

	if (depth > JSON_W_MAX_DEPTH)
		return -EINVAL;
	switch (v->type) {
	case MSGPACK_OBJECT_NIL:
		return buf_adds(o, "{}");
	case MSGPACK_OBJECT_BOOLEAN:
		return buf_adds(o, v->via.boolean ? "{\"boolValue\":true}" :
				"{\"boolValue\":false}");
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		/* int64 in the proto: a larger value stays exact as text */
		snprintf(t, sizeof(t), v->via.u64 > INT64_MAX ?
			 "{\"stringValue\":\"%llu\"}" :
			 "{\"intValue\":\"%llu\"}",
			 (unsigned long long)v->via.u64);
		return buf_adds(o, t);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		snprintf(t, sizeof(t), "{\"intValue\":\"%lld\"}",
			 (long long)v->via.i64);
		return buf_adds(o, t);
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		return otlp_double(v->via.f64, o);
	case MSGPACK_OBJECT_STR:
		rc = buf_adds(o, "{\"stringValue\":");
		if (rc == 0)
			rc = json_w_str(&p->w, v->via.str.ptr,
					v->via.str.size, o);
		return rc ? rc : buf_addc(o, '}');
	case MSGPACK_OBJECT_BIN:
	case MSGPACK_OBJECT_EXT:
		rc = buf_adds(o, "{\"bytesValue\":");
		if (rc == 0)
			rc = v->type == MSGPACK_OBJECT_BIN ?
			     json_w_b64(&p->w, v->via.bin.ptr,
					v->via.bin.size, o) :
			     json_w_b64(&p->w, v->via.ext.ptr,
					v->via.ext.size, o);
		return rc ? rc : buf_addc(o, '}');
	case MSGPACK_OBJECT_ARRAY:
		rc = buf_adds(o, "{\"arrayValue\":{\"values\":[");
		for (i = 0; i < v->via.array.size && rc == 0; i++) {
			if (i)
				rc = buf_addc(o, ',');
			if (rc == 0)
				rc = otlp_any_mp(p, &v->via.array.ptr[i], o,
						 depth + 1);
		}
		return rc ? rc : buf_adds(o, "]}}");
	case MSGPACK_OBJECT_MAP:
		rc = buf_adds(o, "{\"kvlistValue\":{\"values\":[");
		for (i = 0; i < v->via.map.size && rc == 0; i++) {
			if (i)
				rc = buf_addc(o, ',');
			if (rc == 0)
				rc = otlp_kv_mp(p, &v->via.map.ptr[i].key,
						&v->via.map.ptr[i].val, o,
						depth);
		}
		return rc ? rc : buf_adds(o, "]}}");
	}
	return -EINVAL;
}

static int otlp_any_json(struct proto *p, const json_t *v, struct buf *o,
			 int depth);

static int otlp_kv_json(struct proto *p, const char *k, size_t kl,
			const json_t *v, struct buf *o, int depth)
{
	int rc = buf_adds(o, "{\"key\":");

	if (rc == 0)
		rc = json_w_str(&p->w, k, kl, o);
	if (rc == 0)
		rc = buf_adds(o, ",\"value\":");
	if (rc == 0)
		rc = otlp_any_json(p, v, o, depth + 1);
	return rc ? rc : buf_addc(o, '}');
}

static int otlp_any_json(struct proto *p, const json_t *v, struct buf *o,
			 int depth)
{
	char t[48];
	size_t i;
	int rc = 0;

	if (depth > JSON_W_MAX_DEPTH)
		return -EINVAL;
	switch (json_typeof(v)) {
	case JSON_NULL:
		return buf_adds(o, "{}");
	case JSON_TRUE:
		return buf_adds(o, "{\"boolValue\":true}");
	case JSON_FALSE:
		return buf_adds(o, "{\"boolValue\":false}");
	case JSON_INTEGER:
		snprintf(t, sizeof(t), "{\"intValue\":\"%lld\"}",
			 (long long)json_integer_value(v));
		return buf_adds(o, t);
	case JSON_REAL:
		return otlp_double(json_real_value(v), o);
	case JSON_STRING:
		rc = buf_adds(o, "{\"stringValue\":");
		if (rc == 0)
			rc = json_w_str(&p->w, json_string_value(v),
					json_string_length(v), o);
		return rc ? rc : buf_addc(o, '}');
	case JSON_ARRAY:
		rc = buf_adds(o, "{\"arrayValue\":{\"values\":[");
		for (i = 0; i < json_array_size(v) && rc == 0; i++) {
			if (i)
				rc = buf_addc(o, ',');
			if (rc == 0)
				rc = otlp_any_json(p, json_array_get(v, i), o,
						   depth + 1);
		}
		return rc ? rc : buf_adds(o, "]}}");
	case JSON_OBJECT: {
		const char *k;
		json_t *m;
		int first = 1;

		rc = buf_adds(o, "{\"kvlistValue\":{\"values\":[");
		json_object_foreach((json_t *)v, k, m) {
			if (rc == 0 && !first)
				rc = buf_addc(o, ',');
			first = 0;
			if (rc == 0)
				rc = otlp_kv_json(p, k, strlen(k), m, o,
						  depth);
		}
		return rc ? rc : buf_adds(o, "]}}");
	}
	}
	return -EINVAL;
}

/* ---- one log record ----------------------------------------------------------- */

static int otlp_severity_number(const char *s, size_t n)
{
	static const struct { const char *name; int num; } map[] = {
		{ "trace", 1 }, { "debug", 5 }, { "info", 9 },
		{ "notice", 10 }, { "warn", 13 }, { "warning", 13 },
		{ "error", 17 }, { "err", 17 }, { "critical", 21 },
		{ "fatal", 21 }, { "emergency", 24 },
	};
	size_t i;

	for (i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strlen(map[i].name) == n &&
		    !strncasecmp(map[i].name, s, n))
			return map[i].num;
	return 0;
}

enum otlp_role { OTLP_ATTR, OTLP_SEVERITY, OTLP_SEVNUM, OTLP_BODY };

static enum otlp_role otlp_role(const char *k, size_t n)
{
#define IS(s) (n == sizeof(s) - 1 && !memcmp(k, s, n))
	if (IS("severity") || IS("level") || IS("severityText"))
		return OTLP_SEVERITY;
	if (IS("severityNumber"))
		return OTLP_SEVNUM;
	if (IS("message") || IS("msg") || IS("body"))
		return OTLP_BODY;
	return OTLP_ATTR;
#undef IS
}

struct otlp_rec {
	char sevtext[32];
	int sevnum;
	struct buf body, attrs;      /* AnyValue; ",kv,kv..." */
	int has_body;
};

static void otlp_severity(struct otlp_rec *x, const char *s, size_t n)
{
	snprintf(x->sevtext, sizeof(x->sevtext), "%.*s",
		 (int)(n < sizeof(x->sevtext) ? n : sizeof(x->sevtext) - 1),
		 s);
	if (!x->sevnum)
		x->sevnum = otlp_severity_number(s, n);
}

static int otlp_split_mp(struct proto *p, const msgpack_object *m,
			 struct otlp_rec *x)
{
	uint32_t i;
	int rc = 0;

	for (i = 0; i < m->via.map.size && rc == 0; i++) {
		const msgpack_object *k = &m->via.map.ptr[i].key,
				     *v = &m->via.map.ptr[i].val;
		enum otlp_role role = k->type == MSGPACK_OBJECT_STR ?
			otlp_role(k->via.str.ptr, k->via.str.size) : OTLP_ATTR;

		if (role == OTLP_SEVERITY && v->type == MSGPACK_OBJECT_STR &&
		    !x->sevtext[0]) {
			otlp_severity(x, v->via.str.ptr, v->via.str.size);
		} else if (role == OTLP_SEVNUM &&
			   v->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
			   v->via.u64 >= 1 && v->via.u64 <= 24) {
			x->sevnum = (int)v->via.u64;
		} else if (role == OTLP_BODY && !x->has_body) {
			x->has_body = 1;
			rc = otlp_any_mp(p, v, &x->body, 0);
		} else {
			rc = buf_addc(&x->attrs, ',');
			if (rc == 0)
				rc = otlp_kv_mp(p, k, v, &x->attrs, 0);
		}
	}
	return rc;
}

static int otlp_split_json(struct proto *p, const json_t *o,
			   struct otlp_rec *x)
{
	const char *k;
	json_t *v;
	int rc = 0;

	json_object_foreach((json_t *)o, k, v) {
		enum otlp_role role = otlp_role(k, strlen(k));

		if (rc < 0)
			break;
		if (role == OTLP_SEVERITY && json_is_string(v) &&
		    !x->sevtext[0]) {
			otlp_severity(x, json_string_value(v),
				      json_string_length(v));
		} else if (role == OTLP_SEVNUM && json_is_integer(v) &&
			   json_integer_value(v) >= 1 &&
			   json_integer_value(v) <= 24) {
			x->sevnum = (int)json_integer_value(v);
		} else if (role == OTLP_BODY && !x->has_body) {
			x->has_body = 1;
			rc = otlp_any_json(p, v, &x->body, 0);
		} else {
			rc = buf_addc(&x->attrs, ',');
			if (rc == 0)
				rc = otlp_kv_json(p, k, strlen(k), v,
						  &x->attrs, 0);
		}
	}
	return rc;
}

/* The body of the envelope into x (severity, body, attributes). */
static int otlp_split(struct proto *p, const struct env_view *v,
		      struct otlp_rec *x)
{
	json_t *j;
	int rc;

	switch (v->body_kind) {
	case ENV_BODY_BYTES:
		x->has_body = 1;
		rc = buf_adds(&x->body, "{\"bytesValue\":");
		if (rc == 0)
			rc = json_w_b64(&p->w, v->body, v->body_len, &x->body);
		return rc ? rc : buf_addc(&x->body, '}');
	case ENV_BODY_MSGPACK:
		if (!v->body_obj)
			return -EINVAL;
		if (v->body_obj->type == MSGPACK_OBJECT_MAP)
			return otlp_split_mp(p, v->body_obj, x);
		x->has_body = 1;
		return otlp_any_mp(p, v->body_obj, &x->body, 0);
	default:
		/* integers past int64 would fail the parse: read as reals */
		j = json_loadb(v->body, v->body_len, JSON_DECODE_ANY |
			       JSON_ALLOW_NUL, NULL);
		if (!j)
			j = json_loadb(v->body, v->body_len, JSON_DECODE_ANY |
				       JSON_ALLOW_NUL |
				       JSON_DECODE_INT_AS_REAL, NULL);
		if (!j)
			return -EINVAL;
		if (json_is_object(j)) {
			rc = otlp_split_json(p, j, x);
		} else {
			x->has_body = 1;
			rc = otlp_any_json(p, j, &x->body, 0);
		}
		json_decref(j);
		return rc;
	}
}

static enum proto_drop otlp_record(struct proto *p, const struct env_view *v)
{
	struct otlp_rec x;
	struct buf *o = &p->ev;
	char t[96], id[33];
	int rc;

	memset(&x, 0, sizeof(x));
	buf_init(&x.body, 0);
	buf_init(&x.attrs, 0);
	buf_reset(o);
	rc = otlp_split(p, v, &x);
	if (rc < 0) {
		buf_free(&x.body);
		buf_free(&x.attrs);
		return rc == -EINVAL ? PROTO_DROP_INVALID : PROTO_DROP_TOO_LARGE;
	}
	snprintf(t, sizeof(t), "{\"timeUnixNano\":\"%llu\","
		 "\"observedTimeUnixNano\":\"%llu\"",
		 (unsigned long long)v->ts,
		 (unsigned long long)p->now_ms * 1000000ull);
	rc = buf_adds(o, t);
	if (rc == 0 && x.sevnum) {
		snprintf(t, sizeof(t), ",\"severityNumber\":%d", x.sevnum);
		rc = buf_adds(o, t);
	}
	if (rc == 0 && x.sevtext[0]) {
		rc = buf_adds(o, ",\"severityText\":");
		if (rc == 0)
			rc = json_w_str(&p->w, x.sevtext, strlen(x.sevtext), o);
	}
	if (rc == 0 && x.has_body) {
		rc = buf_adds(o, ",\"body\":");
		if (rc == 0)
			rc = buf_add(o, x.body.p, x.body.len);
	}
	if (rc == 0)
		rc = buf_adds(o, ",\"attributes\":[");
	if (rc == 0 && v->has_id) {
		env_id_hex(v->id, id);
		rc = otlp_kv_str(p, o, "log.record.uid", id);
		if (rc == 0)
			rc = buf_addc(o, ',');
	}
	if (rc == 0) {
		/* the type may be any bytes: through the string writer */
		rc = buf_adds(o, "{\"key\":\"outbox.type\",\"value\":"
			      "{\"stringValue\":");
		if (rc == 0)
			rc = json_w_str(&p->w, v->type, v->type_len, o);
		if (rc == 0)
			rc = buf_adds(o, "}}");
	}
	if (rc == 0)
		rc = buf_add(o, x.attrs.p, x.attrs.len);
	if (rc == 0)
		rc = buf_adds(o, "]}");
	buf_free(&x.body);
	buf_free(&x.attrs);
	if (rc < 0 || o->len > p->cfg->event_max_bytes)
		return PROTO_DROP_TOO_LARGE;
	return PROTO_KEEP;
}

static int otlp_encode(struct proto *p, struct spool_rec *r, uint8_t *gone,
		       uint32_t lo, uint32_t hi, struct buf *out,
		       struct proto_req *q)
{
	struct otlp *t = p->priv;
	static const char tail[] = "]}]}]}";
	int rc;

	buf_reset(out);
	rc = buf_add(out, t->head.p, t->head.len);
	if (rc == 0)
		rc = proto_encode_array(p, r, gone, lo, hi, out, q,
					otlp_record, sizeof(tail) - 1);
	return rc ? rc : buf_adds(out, tail);
}

/* The member of o named k, or by its proto field name (proto3 JSON
 * parsers accept both). */
static json_t *otlp_member(const json_t *o, const char *k, const char *pk)
{
	json_t *v = json_object_get(o, k);

	return v ? v : json_object_get(o, pk);
}

/* Partial success (OTLP/HTTP: a 200 whose ExportLogsServiceResponse
 * says rejectedLogRecords): the count (an int64, a string in proto3
 * JSON; a number accepted), at most `sent`. */
static uint32_t otlp_accepted(struct proto *p, const char *body, size_t len,
			      uint32_t sent, char *why, size_t whylen)
{
	json_t *j, *ps, *n, *m;
	json_int_t k = 0;

	why[0] = 0;
	if (!len)
		return 0;
	j = json_loadb(body, len, 0, NULL);
	ps = otlp_member(j, "partialSuccess", "partial_success");
	n = otlp_member(ps, "rejectedLogRecords", "rejected_log_records");
	m = otlp_member(ps, "errorMessage", "error_message");
	if (json_is_integer(n)) {
		k = json_integer_value(n);
	} else if (json_is_string(n)) {
		const char *t = json_string_value(n);
		char *end;

		errno = 0;
		k = strtoll(t, &end, 10);
		if (end == t || *end || errno)
			k = 0;
	}
	if (json_is_string(m) && json_string_length(m))
		http_excerpt(json_string_value(m), json_string_length(m), why,
			     whylen);
	json_decref(j);
	if (k < 0)
		k = 0;
	return k > (json_int_t)sent ? sent : (uint32_t)k;
}

/* OTLP/HTTP: only 429, 502, 503 and 504 are retryable */
static int otlp_classify(const struct proto *p, int status)
{
	if (status >= 200 && status < 300)
		return POL_C_ACCEPTED;
	if (status == 429 || status == 502 || status == 503 || status == 504)
		return POL_C_RETRY;
	if (status == 413)
		return POL_C_SPLIT;
	return POL_C_DROP;
}

const struct proto_ops proto_otlp_ops = {
	.name = "otlp",
	.open = otlp_open,
	.close = otlp_close,
	.encode = otlp_encode,
	.classify = otlp_classify,
	.accepted = otlp_accepted,
};
