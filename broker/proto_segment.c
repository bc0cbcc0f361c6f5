/* proto_segment.c - Segment's batch API (POST {url}, default
 * https://api.segment.io/v1/batch).
 *
 * Body: {"batch":[event, ...],"sentAt":"<RFC 3339>"}, each event the
 * record's object body with, when it has none of its own, "messageId"
 * (the envelope's stable id in 32 hex digits: the same on every retry
 * and after a broker restart, since it comes from the spooled record),
 * "timestamp" (the envelope's ts, RFC 3339 ms) and "type" (the record
 * type: track, identify, ...). An event over event_max_bytes (32 KB by
 * default, Segment's message limit) is dropped too_large; a request holds
 * events while its body stays within batch_max_bytes (475 000: Segment's
 * server limit is 500 KB). Authorization: Basic base64(write_key:).
 *
 * settings_url (optional): Segment's CDN settings, fetched at start and
 * every 5 minutes; integrations["Segment.io"].httpConfig is applied on
 * top of the operator's settings (proto_segment_settings()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "log.h"
#include "proto.h"

#define SEG_SETTINGS_RETRY_NS (30ull * 1000000000ull)
#define SEG_SETTINGS_MAX      (1u << 20)

struct seg {
	char *auth;                  /* Authorization: Basic ... */
	struct cfg_sink base;        /* the operator's settings */
	uint64_t next_fetch;         /* mono ns */
	struct http_req *req;
	struct buf resp;
	char *last_bad;              /* settings text logged as bad once */
	uint32_t bad_logged;
	char *settings_applied;      /* what the last good settings set */
};

static const char seg_b64tab[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* base64 of "write_key:" for the Basic scheme */
static char *seg_basic(const char *key)
{
	size_t n = strlen(key) + 1, i, o = 0;
	char *in = malloc(n + 1), *out = malloc((n + 2) / 3 * 4 + 32);

	if (!in || !out) {
		free(in);
		free(out);
		return NULL;
	}
	memcpy(in, key, n - 1);
	in[n - 1] = ':';
	o = (size_t)sprintf(out, "Authorization: Basic ");
	for (i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)(uint8_t)in[i] << 16;

		if (i + 1 < n)
			v |= (uint32_t)(uint8_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= (uint8_t)in[i + 2];
		out[o++] = seg_b64tab[v >> 18];
		out[o++] = seg_b64tab[(v >> 12) & 63];
		out[o++] = i + 1 < n ? seg_b64tab[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? seg_b64tab[v & 63] : '=';
	}
	out[o] = 0;
	free(in);
	return out;
}

static int seg_open(struct proto *p)
{
	struct seg *g = calloc(1, sizeof(*g));

	if (!g)
		return -ENOMEM;
	p->priv = g;
	p->url = strdup(p->cfg->url ? p->cfg->url :
			"https://api.segment.io/v1/batch");
	g->auth = seg_basic(p->cfg->write_key ? p->cfg->write_key : "");
	if (!p->url || !g->auth)
		return -ENOMEM;
	g->base = *p->cfg;      /* numbers only are read from it */
	buf_init(&g->resp, SEG_SETTINGS_MAX);
	p->hdrs[0] = "Content-Type: application/json";
	p->hdrs[1] = g->auth;
	p->hdrs[2] = NULL;
	return 0;
}

static void seg_close(struct proto *p)
{
	struct seg *g = p->priv;

	if (!g)
		return;
	if (g->req && p->http)
		http_cancel(p->http, g->req);
	free(g->auth);
	free(g->last_bad);
	free(g->settings_applied);
	buf_free(&g->resp);
	free(g);
	p->priv = NULL;
}

/* One event's JSON into p->ev: 0, or a drop reason. */
static enum proto_drop seg_event(struct proto *p, const struct env_view *v)
{
	static const char *const keys[] = { "messageId", "timestamp", "type" };
	char id[36], ts[40];
	const char *vals[3];
	struct buf tb;
	int rc;

	buf_reset(&p->ev);
	if (!v->has_id)
		return PROTO_DROP_INVALID;   /* the drain always has one */
	proto_id_ts(v, id, ts);
	/* the type's JSON string through jansson */
	buf_init(&tb, 0);
	rc = json_w_str(&p->w, v->type, v->type_len, &tb);
	if (rc == 0)
		rc = buf_addc(&tb, 0);
	vals[0] = id;
	vals[1] = ts;
	vals[2] = rc == 0 ? (const char *)tb.p : "\"\"";
	rc = proto_object(p, v, keys, vals, v->type_len ? 3 : 2, &p->ev);
	buf_free(&tb);
	if (rc == -EINVAL)
		return PROTO_DROP_INVALID;
	if (rc < 0)
		return PROTO_DROP_TOO_LARGE;    /* over the buffer cap */
	if (p->ev.len > p->cfg->event_max_bytes)
		return PROTO_DROP_TOO_LARGE;
	return PROTO_KEEP;
}

static int seg_encode(struct proto *p, struct spool_rec *r,
		      uint8_t *gone, uint32_t lo, uint32_t hi, struct buf *out,
		      struct proto_req *q)
{
	/* ],"sentAt":"2026-11-01T12:00:00.000Z"} */
	const size_t tail = 2 + 10 + 24 + 2;
	char when[32];
	int rc;

	buf_reset(out);
	rc = buf_adds(out, "{\"batch\":[");
	if (rc == 0)
		rc = proto_encode_array(p, r, gone, lo, hi, out, q, seg_event,
					tail);
	if (rc < 0)
		return rc;
	proto_rfc3339(p->now_ms, when);
	rc = buf_adds(out, "],\"sentAt\":\"");
	if (rc == 0)
		rc = buf_adds(out, when);
	return rc ? rc : buf_adds(out, "\"}");
}

/* ---- CDN settings ---------------------------------------------------------- */

/* a number member of o within [lo, hi] (clamped); 1 found, 0 absent */
static int seg_num(const json_t *o, const char *k, double lo, double hi,
		   double *out)
{
	const json_t *v = json_object_get(o, k);
	double d;

	if (!json_is_number(v))
		return 0;
	d = json_number_value(v);
	if (isnan(d))
		return 0;
	*out = d < lo ? lo : d > hi ? hi : d;
	return 1;
}

static void seg_what(char *what, size_t len, const char *fmt, double v)
{
	size_t n = strlen(what);

	if (n < len)
		snprintf(what + n, len - n, fmt, n ? " " : "", v);
}

int proto_segment_settings(const char *text, size_t len,
			   const struct cfg_sink *base, struct cfg_sink *c,
			   char *what, size_t whatlen)
{
	json_t *root = json_loadb(text, len, 0, NULL), *hc, *bc, *rc, *ov;
	struct cfg_sink n;
	double d;

	if (whatlen)
		what[0] = 0;
	if (!json_is_object(root)) {
		json_decref(root);
		return -EINVAL;
	}
	/* from the operator's settings, so a key that disappears from the
	 * CDN goes back to what the config says */
	n = *c;
	n.backoff_base_ms = base->backoff_base_ms;
	n.backoff_max_ms = base->backoff_max_ms;
	n.backoff_jitter_pct = base->backoff_jitter_pct;
	n.max_retries = base->max_retries;
	n.max_backoff_duration_ms = base->max_backoff_duration_ms;
	n.retry_after_max_ms = base->retry_after_max_ms;
	n.nstatus = base->nstatus;
	memcpy(n.status, base->status, sizeof(n.status));
	hc = json_object_get(json_object_get(json_object_get(root,
			"integrations"), "Segment.io"), "httpConfig");
	bc = json_object_get(hc, "backoffConfig");
	rc = json_object_get(hc, "rateLimitConfig");
	/* "enabled" defaults to true; false is not applied: outbox always
	 * backs off and honours Retry-After (said in the log line) */
	if (json_is_object(bc) && !json_is_false(json_object_get(bc,
							      "enabled"))) {
		if (seg_num(bc, "maxRetryCount", 0, 1000, &d)) {
			n.max_retries = (uint32_t)d;
			seg_what(what, whatlen, "%smax_retries=%.0f", d);
		}
		if (seg_num(bc, "baseBackoffInterval", 0.1, 60, &d)) {
			n.backoff_base_ms = (uint64_t)llround(d * 1000);
			seg_what(what, whatlen, "%sbackoff_base=%.3fs", d);
		}
		if (seg_num(bc, "maxBackoffInterval", 1, 3600, &d)) {
			n.backoff_max_ms = (uint64_t)llround(d * 1000);
			seg_what(what, whatlen, "%sbackoff_max=%.0fs", d);
		}
		if (seg_num(bc, "maxTotalBackoffDuration", 0, 604800, &d)) {
			n.max_backoff_duration_ms = (uint64_t)llround(d * 1000);
			seg_what(what, whatlen, "%smax_backoff_duration=%.0fs",
				 d);
		}
		if (seg_num(bc, "jitterPercent", 0, 50, &d)) {
			n.backoff_jitter_pct = (uint32_t)d;
			seg_what(what, whatlen, "%sbackoff_jitter=%.0f%%", d);
		}
		ov = json_object_get(bc, "statusCodeOverrides");
		if (json_is_object(ov)) {
			const char *k;
			json_t *v;

			/* a supplied map replaces the default one (as in
			 * both SDKs); the operator's status.NNN stay first */
			json_object_foreach(ov, k, v) {
				char *end;
				long code = strtol(k, &end, 10);
				const char *a = json_string_value(v);
				int i, dup = 0;

				if (*end || code < 100 || code > 599 || !a ||
				    (strcmp(a, "retry") && strcmp(a, "drop")))
					continue;
				for (i = 0; i < n.nstatus; i++)
					dup |= n.status[i].code == code;
				if (dup || n.nstatus >= CFG_MAX_STATUS)
					continue;
				n.status[n.nstatus].code = (int)code;
				n.status[n.nstatus].action = strcmp(a, "retry") ?
							     ST_DROP : ST_RETRY;
				n.nstatus++;
			}
			seg_what(what, whatlen, "%sstatus overrides=%.0f",
				 (double)(n.nstatus - base->nstatus));
		}
	}
	if (json_is_object(rc) && !json_is_false(json_object_get(rc,
							      "enabled")) &&
	    seg_num(rc, "maxRetryInterval", 1, 3600, &d)) {
		n.retry_after_max_ms = (uint64_t)llround(d * 1000);
		seg_what(what, whatlen, "%sretry_after_max=%.0fs", d);
	}
	if (n.backoff_max_ms < n.backoff_base_ms)
		n.backoff_max_ms = n.backoff_base_ms;
	json_decref(root);
	*c = n;
	return 0;
}

static void seg_settings_done(void *arg, const struct http_result *r)
{
	struct proto *p = arg;
	struct seg *g = p->priv;
	char what[256];
	int rc;

	g->req = NULL;
	if (r->status < 200 || r->status > 299) {
		log_warn("sink %s: settings_url: %s; keeping the current "
			 "settings", p->sink_name, r->status ?
			 "bad status" : r->error);
		g->next_fetch = log_mono_ns() + SEG_SETTINGS_RETRY_NS;
		if (g->next_fetch > log_mono_ns() +
		    p->cfg->settings_interval_ms * 1000000ull)
			g->next_fetch = log_mono_ns() +
				p->cfg->settings_interval_ms * 1000000ull;
		return;
	}
	rc = proto_segment_settings((const char *)g->resp.p, g->resp.len,
				    &g->base, p->cfg, what, sizeof(what));
	if (rc < 0) {
		/* logged once per distinct bad document */
		if (!g->last_bad || strlen(g->last_bad) != g->resp.len ||
		    memcmp(g->last_bad, g->resp.p, g->resp.len)) {
			free(g->last_bad);
			g->last_bad = strndup((const char *)g->resp.p,
					      g->resp.len);
			log_warn("sink %s: settings_url: not a JSON object "
				 "(%zu bytes); keeping the current settings",
				 p->sink_name, g->resp.len);
		}
		return;
	}
	if (!g->settings_applied || strcmp(g->settings_applied, what)) {
		log_info("sink %s: CDN settings applied: %s", p->sink_name,
			 what[0] ? what : "none (defaults)");
		free(g->settings_applied);
		g->settings_applied = strdup(what);
	}
}

static uint64_t seg_tick(struct proto *p, uint64_t now)
{
	struct seg *g = p->priv;
	struct http_post post = { 0 };
	static const char *const hdrs[] = { "Accept: application/json", NULL };

	if (!p->cfg->settings_url || !p->http)
		return UINT64_MAX;
	if (g->req || now < g->next_fetch)
		return g->req ? UINT64_MAX : g->next_fetch;
	g->next_fetch = now + p->cfg->settings_interval_ms * 1000000ull;
	buf_reset(&g->resp);
	post.url = p->cfg->settings_url;
	post.get = 1;
	post.resp = &g->resp;
	post.headers = hdrs;
	post.connect_timeout_ms = p->cfg->connect_timeout_ms;
	post.timeout_ms = p->cfg->timeout_ms;
	if (http_post(p->http, &post, seg_settings_done, p, &g->req) < 0) {
		g->req = NULL;
		g->next_fetch = now + SEG_SETTINGS_RETRY_NS;
	}
	return g->next_fetch;
}

const struct proto_ops proto_segment_ops = {
	.name = "segment",
	.open = seg_open,
	.close = seg_close,
	.encode = seg_encode,
	.tick = seg_tick,
};
