/* proto_sentry.c - Sentry envelopes (POST …/api/<project>/envelope/).
 *
 * One envelope per request, as every Sentry SDK sends them (an envelope
 * holds at most one event). A record of type `envelope` is an envelope an
 * SDK transport made (the Python binding hands its work over this way)
 * and is forwarded as is; any other record is wrapped:
 *
 *   {"event_id":"<32 hex>","sent_at":"<RFC 3339>"}      (event_id only
 *   {"type":"<item>","length":N}                         when injected)
 *   <payload>
 *
 * The item type is the record type when Sentry knows it (transaction,
 * session, attachment, check_in, ...), `event` otherwise (`error` too);
 * event and transaction payloads get "event_id" (the envelope's stable
 * id) and "timestamp" when they have none; a `log` record becomes a log
 * item {"items":[body]}.
 *
 * Rate limits per data category (error, transaction, session, log_item,
 * ...; X-Sentry-Rate-Limits, parsed by the policy): before a record goes
 * into a request its category - for a forwarded envelope each item's - is
 * checked. drop-category: a limited item is stripped, a record left with
 * nothing is dropped (dropped_rate_limited) - Sentry's own model. hold:
 * the record stays, later records that are not limited go first (records
 * are swapped inside the batch; Sentry does not care about order), and
 * when only held records are left the request waits until the earliest
 * of their limits ends.
 *
 * Client reports: outbox's own drops, by Sentry reason and category, are
 * summed and attached as a client_report item to an outgoing envelope at
 * most every client_report_interval (30 s), as the SDKs do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "policy.h"
#include "proto.h"

#define SENTRY_REPORT_MAX 32

struct sentry_loss {
	const char *reason;          /* static strings */
	char cat[PROTO_CAT_MAX];
	uint64_t n;
};

struct sentry {
	char *auth;                  /* X-Sentry-Auth: ... */
	struct sentry_loss loss[SENTRY_REPORT_MAX];
	int nloss;
	int64_t last_report_ms;
	struct buf env;              /* a forwarded envelope, filtered */
	char cat[PROTO_CAT_MAX];     /* sentry_category()'s answer, the
	                              * first item stripped from an envelope */
};

static int sentry_open(struct proto *p)
{
	struct sentry *y = calloc(1, sizeof(*y));
	char *url = NULL, *key = NULL;
	int rc = 0, n = 0;

	if (!y)
		return -ENOMEM;
	p->priv = y;
	buf_init(&y->env, 0);
	if (p->cfg->dsn && (rc = proto_sentry_dsn(p->cfg->dsn, &url, &key))) {
		log_error("sink %s: dsn is not a Sentry DSN "
			  "(https://KEY@HOST/PROJECT)", p->sink_name);
		return rc;
	}
	/* url, when given, is the endpoint (a relay, Spotlight) */
	if (p->cfg->url) {
		free(url);
		url = strdup(p->cfg->url);
	}
	p->url = url;
	if (key && asprintf(&y->auth, "X-Sentry-Auth: Sentry sentry_version=7,"
			    " sentry_key=%s, sentry_client=outbox/%s", key,
			    OBX_VERSION_STRING) < 0)
		y->auth = NULL;
	free(key);
	if (!p->url || (p->cfg->dsn && !y->auth))
		return -ENOMEM;
	p->hdrs[n++] = "Content-Type: application/x-sentry-envelope";
	if (y->auth)
		p->hdrs[n++] = y->auth;
	p->hdrs[n] = NULL;
	y->last_report_ms = 0;
	return 0;
}

static void sentry_close(struct proto *p)
{
	struct sentry *y = p->priv;

	if (!y)
		return;
	buf_free(&y->env);
	free(y->auth);
	free(y);
	p->priv = NULL;
}

/* ---- client reports ------------------------------------------------------ */

static void sentry_count(struct proto *p, const char *reason,
			 const char *cat, uint64_t n)
{
	struct sentry *y = p->priv;
	int i;

	for (i = 0; i < y->nloss; i++)
		if (y->loss[i].reason == reason &&
		    !strcmp(y->loss[i].cat, cat)) {
			y->loss[i].n += n;
			return;
		}
	if (y->nloss == SENTRY_REPORT_MAX)
		return;         /* 32 pairs: more than Sentry has */
	y->loss[y->nloss].reason = reason;
	snprintf(y->loss[y->nloss].cat, PROTO_CAT_MAX, "%s", cat);
	y->loss[y->nloss].n = n;
	y->nloss++;
}

static const char *sentry_reason(enum proto_drop why)
{
	switch (why) {
	case PROTO_DROP_RATE_LIMITED:
		return "ratelimit_backoff";
	case PROTO_DROP_TOO_LARGE:
		return "send_error";
	default:
		return "internal_sdk_error";
	}
}

/* A client_report item into out when one is due. */
static int sentry_report(struct proto *p, struct buf *out)
{
	struct sentry *y = p->priv;
	json_t *rep, *arr;
	struct buf item;
	char hdr[64];
	int i, rc;

	if (!y->nloss || !p->cfg->client_report_interval_ms ||
	    p->now_ms - y->last_report_ms <
	    (int64_t)p->cfg->client_report_interval_ms)
		return 0;
	arr = json_array();
	for (i = 0; arr && i < y->nloss; i++)
		json_array_append_new(arr, json_pack("{s:s,s:s,s:I}",
			"reason", y->loss[i].reason, "category",
			y->loss[i].cat, "quantity", (json_int_t)y->loss[i].n));
	rep = json_pack("{s:f,s:o}", "timestamp", (double)p->now_ms / 1000.0,
			"discarded_events", arr);
	if (!rep)
		return -ENOMEM;
	buf_init(&item, 0);
	rc = json_append(&item, rep);
	json_decref(rep);
	if (rc == 0) {
		snprintf(hdr, sizeof(hdr),
			 "{\"type\":\"client_report\",\"length\":%zu}\n",
			 item.len);
		rc = buf_adds(out, hdr);
	}
	if (rc == 0)
		rc = buf_add(out, item.p, item.len);
	if (rc == 0)
		rc = buf_addc(out, '\n');
	buf_free(&item);
	if (rc == 0) {
		y->nloss = 0;
		y->last_report_ms = p->now_ms;
	}
	return rc;
}

/* ---- forwarded envelopes ---------------------------------------------------- */

struct sentry_item {
	const char *hdr, *payload;
	size_t hlen, plen, total;    /* total: through the item's end */
	char type[PROTO_CAT_MAX];
};

/* The next item at s[0..n): 0, 1 at the end, -EINVAL. */
static int sentry_next_item(const char *s, size_t n, struct sentry_item *it)
{
	const char *nl;
	json_t *h, *len;
	const char *t;

	/* the end, or only a blank line left */
	if (!n || *s == '\n' || *s == '\r')
		return 1;
	nl = memchr(s, '\n', n);
	it->hdr = s;
	it->hlen = nl ? (size_t)(nl - s) : n;
	h = json_loadb(s, it->hlen, 0, NULL);
	if (!json_is_object(h)) {
		json_decref(h);
		return -EINVAL;
	}
	t = json_string_value(json_object_get(h, "type"));
	snprintf(it->type, sizeof(it->type), "%s", t ? t : "");
	len = json_object_get(h, "length");
	it->payload = nl ? nl + 1 : s + n;
	if (json_is_integer(len)) {
		json_int_t l = json_integer_value(len);

		if (l < 0 || (size_t)l > n - (size_t)(it->payload - s)) {
			json_decref(h);
			return -EINVAL;
		}
		it->plen = (size_t)l;
	} else {
		const char *e = memchr(it->payload, '\n',
				       n - (size_t)(it->payload - s));

		it->plen = e ? (size_t)(e - it->payload) :
			   n - (size_t)(it->payload - s);
	}
	json_decref(h);
	it->total = (size_t)(it->payload - s) + it->plen;
	if (it->total < n && s[it->total] == '\n')
		it->total++;
	return 0;
}

/* Filters a forwarded envelope into y->env. *held_until: the earliest
 * end of a limit that holds it (hold mode), else 0. Returns items kept
 * (-EINVAL when it cannot be parsed: then it is forwarded untouched). */
static int sentry_filter_env(struct proto *p, const char *s, size_t n,
			     int64_t *held_until, int *stripped,
			     struct proto_req *q)
{
	struct sentry *y = p->priv;
	struct sentry_item it;
	const char *nl = memchr(s, '\n', n);
	size_t off;
	int kept = 0, rc;

	*held_until = 0;
	*stripped = 0;
	buf_reset(&y->env);
	if (!nl)
		return -EINVAL;
	off = (size_t)(nl - s) + 1;
	if (buf_add(&y->env, s, off) < 0)
		return -ENOMEM;
	while ((rc = sentry_next_item(s + off, n - off, &it)) == 0) {
		const char *cat = proto_sentry_category(it.type,
							strlen(it.type));
		int64_t until = p->cat_until(p->arg, cat, p->now_ms);

		if (until && p->cfg->on_rate_limit == RL_HOLD) {
			if (!*held_until || until < *held_until)
				*held_until = until;
		} else if (until) {
			sentry_count(p, "ratelimit_backoff", cat, 1);
			if (!(*stripped)++)
				snprintf(y->cat, sizeof(y->cat), "%s", cat);
		} else {
			proto_req_cat(q, cat);
			if (buf_add(&y->env, s + off, it.total) < 0)
				return -ENOMEM;
			if (it.total == 0 || s[off + it.total - 1] != '\n')
				if (buf_addc(&y->env, '\n') < 0)
					return -ENOMEM;
			kept++;
		}
		off += it.total;
	}
	return rc < 0 ? rc : kept;
}

/* ---- wrapped records ------------------------------------------------------- */

/* The Sentry item type of a record type. */
static const char *sentry_item_type(const struct env_view *v)
{
	static const char *const known[] = {
		"transaction", "session", "sessions", "attachment",
		"check_in", "log", "span", "profile", "profile_chunk",
		"replay_event", "replay_recording", "feedback",
		"user_report", "statsd", "client_report", "security",
	};
	size_t i;

	for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (strlen(known[i]) == v->type_len &&
		    !memcmp(known[i], v->type, v->type_len))
			return known[i];
	return "event";
}

/* The item (header + payload + '\n') of a wrapped record into p->ev;
 * *injected: the envelope's event_id was put into the payload. */
static enum proto_drop sentry_item(struct proto *p, const struct env_view *v,
				   const char *itype, int *injected)
{
	static const char *const keys[] = { "event_id", "timestamp" };
	char id[36], ts[40], hdr[160];
	const char *vals[2];
	struct buf payload;
	int rc, is_event = !strcmp(itype, "event") ||
			   !strcmp(itype, "transaction");

	*injected = 0;
	buf_init(&payload, 0);
	if (v->body_kind == ENV_BODY_BYTES) {
		rc = buf_add(&payload, v->body, v->body_len);
	} else {
		proto_id_ts(v, id, ts);
		vals[0] = id;
		vals[1] = ts;
		if (!strcmp(itype, "log"))
			rc = buf_adds(&payload, "{\"items\":[");
		else
			rc = 0;
		if (rc == 0)
			rc = proto_object(p, v, keys, vals,
					  is_event && v->has_id ? 2 : 0,
					  &payload);
		if (rc == 0 && !strcmp(itype, "log"))
			rc = buf_adds(&payload, "]}");
		if (rc == 0 && is_event && v->has_id)
			*injected = proto_body_has(v, "event_id") == 0;
	}
	if (rc == -EINVAL) {
		buf_free(&payload);
		return PROTO_DROP_INVALID;
	}
	if (rc < 0 || payload.len > p->cfg->event_max_bytes) {
		buf_free(&payload);
		return PROTO_DROP_TOO_LARGE;
	}
	if (!strcmp(itype, "log"))
		snprintf(hdr, sizeof(hdr), "{\"type\":\"log\",\"length\":%zu,"
			 "\"item_count\":1,\"content_type\":"
			 "\"application/vnd.sentry.items.log+json\"}\n",
			 payload.len);
	else if (!strcmp(itype, "attachment"))
		snprintf(hdr, sizeof(hdr), "{\"type\":\"attachment\","
			 "\"length\":%zu,\"filename\":\"attachment\"}\n",
			 payload.len);
	else
		snprintf(hdr, sizeof(hdr), "{\"type\":\"%s\",\"length\":%zu}\n",
			 itype, payload.len);
	buf_reset(&p->ev);
	rc = buf_adds(&p->ev, hdr);
	if (rc == 0)
		rc = buf_add(&p->ev, payload.p, payload.len);
	if (rc == 0)
		rc = buf_addc(&p->ev, '\n');
	buf_free(&payload);
	return rc < 0 ? PROTO_DROP_TOO_LARGE : PROTO_KEEP;
}

/* The envelope of one wrapped record into out. */
static int sentry_wrap(struct proto *p, const struct env_view *v, int inj,
		       struct buf *out)
{
	char head[128], when[32];
	int rc;

	proto_rfc3339(p->now_ms, when);
	if (inj) {
		char id[33];

		env_id_hex(v->id, id);
		snprintf(head, sizeof(head), "{\"event_id\":\"%s\","
			 "\"sent_at\":\"%s\"}\n", id, when);
	} else {
		snprintf(head, sizeof(head), "{\"sent_at\":\"%s\"}\n", when);
	}
	rc = buf_adds(out, head);
	return rc ? rc : buf_add(out, p->ev.p, p->ev.len);
}

/* ---- encode ------------------------------------------------------------------ */

static void sentry_gone(struct proto *p, uint8_t *gone, uint32_t i,
			enum proto_drop why, const char *cat)
{
	gone[i] = (uint8_t)why;
	sentry_count(p, sentry_reason(why), cat, 1);
	p->drop(p->arg, why, cat, 1);
}

/* Tries record i: 1 = its envelope is in out, 0 = dropped (gone), or
 * held (*held_until set). */
static int sentry_try(struct proto *p, struct spool_rec *r, uint8_t *gone,
		      uint32_t i, struct buf *out, int64_t *held_until,
		      struct proto_req *q)
{
	struct sentry *y = p->priv;
	struct env_view v;
	const char *itype, *cat;
	int64_t until;
	enum proto_drop why;
	int inj, rc;

	*held_until = 0;
	if (env_parse(&p->er, r[i].data, r[i].len, &v) < 0) {
		sentry_gone(p, gone, i, PROTO_DROP_INVALID, "default");
		return 0;
	}
	if (v.type_len == 8 && !memcmp(v.type, "envelope", 8) &&
	    v.body_kind != ENV_BODY_MSGPACK) {
		int stripped, kept;

		q->ncats = 0;
		kept = sentry_filter_env(p, v.body, v.body_len, held_until,
					 &stripped, q);

		if (*held_until)
			return 0;
		if (kept == 0 && stripped) {
			/* every item limited: the record is gone (as its
			 * first item's category); its items were counted for
			 * the client report */
			gone[i] = PROTO_DROP_RATE_LIMITED;
			p->drop(p->arg, PROTO_DROP_RATE_LIMITED, y->cat, 1);
			return 0;
		}
		if (kept == 0) {
			sentry_gone(p, gone, i, PROTO_DROP_INVALID, "default");
			return 0;
		}
		if (v.body_len > p->cfg->event_max_bytes) {
			sentry_gone(p, gone, i, PROTO_DROP_TOO_LARGE,
				    "default");
			return 0;
		}
		if (kept < 0)
			q->ncats = 0;   /* unparsed: what it carries is not known */
		rc = kept > 0 ? buf_add(out, y->env.p, y->env.len) :
		     buf_add(out, v.body, v.body_len);   /* unparsed: as is */
		if (rc == 0 && out->len && out->p[out->len - 1] != '\n')
			rc = buf_addc(out, '\n');
		return rc < 0 ? rc : 1;
	}
	itype = sentry_item_type(&v);
	cat = proto_sentry_category(itype, strlen(itype));
	until = p->cat_until(p->arg, cat, p->now_ms);
	if (until && p->cfg->on_rate_limit == RL_HOLD) {
		*held_until = until;
		return 0;
	}
	if (until) {
		sentry_gone(p, gone, i, PROTO_DROP_RATE_LIMITED, cat);
		return 0;
	}
	why = sentry_item(p, &v, itype, &inj);
	if (why != PROTO_KEEP) {
		sentry_gone(p, gone, i, why, cat);
		return 0;
	}
	rc = sentry_wrap(p, &v, inj, out);
	q->ncats = 0;
	proto_req_cat(q, cat);
	return rc < 0 ? rc : 1;
}

static int sentry_encode(struct proto *p, struct spool_rec *r, uint8_t *gone,
			 uint32_t lo, uint32_t hi, struct buf *out,
			 struct proto_req *q)
{
	int64_t held_min = 0, held;
	uint32_t i, first = hi;
	int rc = 0;

	buf_reset(out);
	q->taken = q->sent = 0;
	q->held_until_ms = 0;
	q->ncats = 0;
	for (i = lo; i < hi; i++) {
		if (gone[i])
			continue;
		rc = sentry_try(p, r, gone, i, out, &held, q);
		if (rc < 0)
			return rc;
		if (held) {
			/* remember the first held slot: a sendable record
			 * found later takes its place */
			if (first == hi)
				first = i;
			if (!held_min || held < held_min)
				held_min = held;
			continue;
		}
		if (rc == 1)
			break;
	}
	if (i == hi) {
		if (first < hi) {
			/* nothing but held records from `first` on */
			q->held_until_ms = held_min;
			q->taken = first - lo;
			return q->taken ? 0 : -EAGAIN;
		}
		q->taken = hi - lo;     /* everything left was dropped */
		return 0;
	}
	if (first < hi) {
		/* the record sent moves to the first held slot */
		struct spool_rec t = r[first];

		r[first] = r[i];
		r[i] = t;
		i = first;
	}
	rc = sentry_report(p, out);
	if (rc < 0)
		return rc;
	q->sent = 1;
	q->taken = i - lo + 1;
	return 0;
}

/* The category of a record: its item's; a forwarded envelope's first
 * item's ("default" when it has none it can tell). */
static const char *sentry_category(struct proto *p, const struct spool_rec *r)
{
	struct sentry *y = p->priv;
	struct sentry_item it;
	struct env_view v;
	const char *it_type, *nl;

	if (env_parse(&p->er, r->data, r->len, &v) < 0)
		return "default";
	if (v.type_len == 8 && !memcmp(v.type, "envelope", 8) &&
	    v.body_kind != ENV_BODY_MSGPACK) {
		nl = memchr(v.body, '\n', v.body_len);
		if (!nl || sentry_next_item(nl + 1, v.body_len -
					    (size_t)(nl + 1 - v.body),
					    &it) != 0)
			return "default";
		snprintf(y->cat, sizeof(y->cat), "%s",
			 proto_sentry_category(it.type, strlen(it.type)));
		return y->cat;
	}
	it_type = sentry_item_type(&v);
	return proto_sentry_category(it_type, strlen(it_type));
}

/* Records the engine dropped after a response: counted for the client
 * report by the category of their item. */
static void sentry_lost(struct proto *p, const struct spool_rec *r,
			const uint8_t *gone, uint32_t lo, uint32_t n,
			int reason)
{
	const char *why = reason == POL_R_RATE_LIMITED ? "ratelimit_backoff" :
			  reason == POL_R_RETRIES_EXHAUSTED ||
			  reason == POL_R_EXPIRED ? "network_error" :
			  "send_error";
	uint32_t i;

	for (i = lo; i < lo + n; i++)
		if (!gone[i])
			sentry_count(p, why, sentry_category(p, &r[i]), 1);
}

const struct proto_ops proto_sentry_ops = {
	.name = "sentry",
	.open = sentry_open,
	.close = sentry_close,
	.encode = sentry_encode,
	.lost = sentry_lost,
	.category = sentry_category,
};
