/* proto.c - what the protocol encoders share (see proto.h): creation,
 * RFC 3339 times, object bodies with members added, Sentry DSNs. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto.h"

const struct proto_ops *proto_for(enum cfg_sink_type t)
{
	switch (t) {
	case SINK_SEGMENT:
		return &proto_segment_ops;
	case SINK_SENTRY:
		return &proto_sentry_ops;
	case SINK_OTLP:
		return &proto_otlp_ops;
	default:
		return NULL;
	}
}

struct proto *proto_new(const struct proto_ops *ops, struct cfg_sink *cfg,
			struct http *http)
{
	struct proto *p = calloc(1, sizeof(*p));
	int rc;

	if (!p)
		return NULL;
	p->ops = ops;
	p->cfg = cfg;
	p->sink_name = cfg->name;
	p->http = http;
	env_reader_init(&p->er);
	json_w_init(&p->w);
	buf_init(&p->ev, 0);
	buf_init(&p->scratch, 0);
	rc = ops->open(p);
	if (rc < 0) {
		proto_free(p);
		errno = -rc;
		return NULL;
	}
	return p;
}

void proto_free(struct proto *p)
{
	if (!p)
		return;
	if (p->ops && p->ops->close)
		p->ops->close(p);
	env_reader_fini(&p->er);
	json_w_fini(&p->w);
	buf_free(&p->ev);
	buf_free(&p->scratch);
	free(p->url);
	free(p);
}

void proto_rfc3339(int64_t ms, char out[32])
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	char ymd[16];

	if (ms < 0 || !gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999) {
		strcpy(out, "1970-01-01T00:00:00.000Z");
		return;
	}
	strftime(ymd, sizeof(ymd), "%Y-%m-%d", &tm);
	snprintf(out, 32, "%.10sT%02u:%02u:%02u.%03uZ", ymd,
		 (unsigned)tm.tm_hour % 100, (unsigned)tm.tm_min % 100,
		 (unsigned)tm.tm_sec % 100, (unsigned)(ms % 1000));
}

void proto_id_ts(const struct env_view *v, char id[36], char ts[40])
{
	char when[32];

	id[0] = '"';
	env_id_hex(v->id, id + 1);
	id[33] = '"';
	id[34] = 0;
	proto_rfc3339((int64_t)(v->ts / 1000000ull), when);
	snprintf(ts, 40, "\"%s\"", when);
}

/* ---- object bodies ------------------------------------------------------ */

static int proto_mp_has(const msgpack_object *o, const char *k)
{
	size_t kl = strlen(k);
	uint32_t i;

	for (i = 0; i < o->via.map.size; i++) {
		const msgpack_object *key = &o->via.map.ptr[i].key;

		if (key->type == MSGPACK_OBJECT_STR &&
		    key->via.str.size == kl &&
		    !memcmp(key->via.str.ptr, k, kl))
			return 1;
	}
	return 0;
}

/* jansson parses the text only to know its shape and keys; the text
 * itself is what goes out. Integers past int64 would make jansson fail,
 * so they are read as reals here (the digits sent are the producer's). */
static json_t *proto_parse(const struct env_view *v)
{
	return json_loadb(v->body, v->body_len,
			  JSON_DECODE_ANY | JSON_ALLOW_NUL |
			  JSON_DECODE_INT_AS_REAL, NULL);
}

int proto_body_has(const struct env_view *v, const char *k)
{
	json_t *j;
	int has;

	if (v->body_kind == ENV_BODY_MSGPACK)
		return v->body_obj && v->body_obj->type == MSGPACK_OBJECT_MAP ?
		       proto_mp_has(v->body_obj, k) : -1;
	if (v->body_kind != ENV_BODY_JSON)
		return -1;
	j = proto_parse(v);
	has = json_is_object(j) ? json_object_get(j, k) != NULL : -1;
	json_decref(j);
	return has;
}

int proto_object(struct proto *p, const struct env_view *v,
		 const char *const *add, const char *const *val, int nadd,
		 struct buf *out)
{
	const char *rest;
	size_t restlen, mark = out->len;
	json_t *j = NULL;
	int i, rc = 0, members, nput = 0;

	if (v->body_kind == ENV_BODY_MSGPACK && v->body_obj &&
	    v->body_obj->type == MSGPACK_OBJECT_MAP) {
		buf_reset(&p->scratch);
		rc = json_w_mp(&p->w, v->body_obj, &p->scratch);
		if (rc < 0)
			return rc;
		rest = (const char *)p->scratch.p + 1;     /* after '{' */
		restlen = p->scratch.len - 1;
		members = v->body_obj->via.map.size > 0;
	} else if (v->body_kind == ENV_BODY_JSON) {
		j = proto_parse(v);
		if (!json_is_object(j)) {
			json_decref(j);
			return -EINVAL;
		}
		rest = memchr(v->body, '{', v->body_len);  /* first token */
		restlen = v->body_len - (size_t)(rest - v->body) - 1;
		rest++;
		members = json_object_size(j) > 0;
	} else {
		return -EINVAL;
	}
	rc = buf_addc(out, '{');
	for (i = 0; i < nadd && rc == 0; i++) {
		int has = j ? json_object_get(j, add[i]) != NULL :
			  proto_mp_has(v->body_obj, add[i]);

		if (has)
			continue;
		if (nput++)
			rc = buf_addc(out, ',');
		if (rc == 0)
			rc = json_w_str(&p->w, add[i], strlen(add[i]), out);
		if (rc == 0)
			rc = buf_addc(out, ':');
		if (rc == 0)
			rc = buf_adds(out, val[i]);
	}
	if (rc == 0 && nput && members)
		rc = buf_addc(out, ',');
	if (rc == 0)
		rc = buf_add(out, rest, restlen);
	json_decref(j);
	if (rc < 0)
		out->len = mark;
	return rc;
}

int proto_encode_array(struct proto *p, const struct spool_rec *r,
		       uint8_t *gone, uint32_t lo, uint32_t hi,
		       struct buf *out, struct proto_req *q,
		       proto_event_fn ev, size_t tail)
{
	uint32_t i;
	int rc = 0;

	q->taken = q->sent = 0;
	q->held_until_ms = 0;
	q->ncats = 0;
	for (i = lo; i < hi && rc == 0; i++) {
		struct env_view v;
		enum proto_drop why;

		if (gone[i])
			continue;
		why = env_parse(&p->er, r[i].data, r[i].len, &v) < 0 ?
		      PROTO_DROP_INVALID : ev(p, &v);
		if (why != PROTO_KEEP) {
			gone[i] = (uint8_t)why;
			p->drop(p->arg, why, NULL, 1);
			continue;
		}
		if (q->sent && out->len + 1 + p->ev.len + tail >
			       p->cfg->batch_max_bytes)
			break;
		if (q->sent)
			rc = buf_addc(out, ',');
		if (rc == 0)
			rc = buf_add(out, p->ev.p, p->ev.len);
		q->sent++;
	}
	if (rc < 0)
		return rc;
	q->taken = i - lo;
	return 0;
}

void proto_req_cat(struct proto_req *q, const char *cat)
{
	int i;

	if (q->ncats < 0)
		return;
	for (i = 0; i < q->ncats; i++)
		if (!strncmp(q->cats[i], cat, PROTO_CAT_MAX - 1))
			return;
	if (q->ncats == PROTO_REQ_CATS) {
		q->ncats = -1;          /* too many to say: not known */
		return;
	}
	snprintf(q->cats[q->ncats++], PROTO_CAT_MAX, "%s", cat);
}

/* ---- Sentry DSN ---------------------------------------------------------- */

int proto_sentry_dsn(const char *dsn, char **url, char **key)
{
	const char *sch, *auth, *at, *host, *slash, *proj;
	size_t plen;

	*url = *key = NULL;
	if (!dsn)
		return -EINVAL;
	sch = strstr(dsn, "://");
	if (!sch || (strncmp(dsn, "http", 4) || (sch - dsn != 4 &&
						 sch - dsn != 5)))
		return -EINVAL;
	auth = sch + 3;
	at = strchr(auth, '@');
	if (!at || at == auth)
		return -EINVAL;
	host = at + 1;
	slash = strchr(host, '/');
	if (!slash || slash == host)
		return -EINVAL;
	/* the project is the last path segment; what lies between is a
	 * path prefix the envelope URL keeps */
	plen = strlen(slash);
	while (plen > 1 && slash[plen - 1] == '/')
		plen--;
	proj = slash + plen;
	while (proj > slash && proj[-1] != '/')
		proj--;
	if (proj == slash + plen || strcspn(proj, "?#") < (size_t)(slash + plen - proj))
		return -EINVAL;
	{
		const char *colon = memchr(auth, ':', (size_t)(at - auth));
		size_t klen = colon ? (size_t)(colon - auth) :
			      (size_t)(at - auth);

		if (!klen)
			return -EINVAL;
		*key = strndup(auth, klen);
	}
	if (asprintf(url, "%.*s%.*sapi/%.*s/envelope/", (int)(auth - dsn),
		     dsn, (int)(proj - host), host,
		     (int)(slash + plen - proj), proj) < 0)
		*url = NULL;
	if (!*key || !*url) {
		free(*key);
		free(*url);
		*url = *key = NULL;
		return -ENOMEM;
	}
	return 0;
}

const char *proto_sentry_category(const char *t, size_t n)
{
	static const struct { const char *type, *cat; } map[] = {
		{ "event", "error" }, { "error", "error" },
		{ "transaction", "transaction" }, { "session", "session" },
		{ "sessions", "session" }, { "attachment", "attachment" },
		{ "log", "log_item" }, { "span", "span" },
		{ "profile", "profile" }, { "profile_chunk", "profile_chunk" },
		{ "replay_event", "replay" }, { "replay_recording", "replay" },
		{ "replay_video", "replay" }, { "check_in", "monitor" },
		{ "feedback", "feedback" }, { "user_report", "user_report_v2" },
		{ "statsd", "metric_bucket" }, { "client_report", "internal" },
		{ "security", "security" },
	};
	size_t i;

	for (i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strlen(map[i].type) == n && !memcmp(map[i].type, t, n))
			return map[i].cat;
	return "default";
}
