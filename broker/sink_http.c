/* sink_http.c - the generic `http` sink: batches POSTed through libcurl's
 * multi interface (http.c), under the delivery policy (policy.c) - one
 * backoff / rate-limit state for the sink, shared by every producer
 * because every producer's events go through this one state.
 *
 * A batch (records [0, n) read from the spool) is sent as one or more
 * parts: it starts as one part; a 413 splits the part in halves (a stack
 * of ranges, so halves go out in order), a single event still refused
 * with 413 is dropped as too large. The batch is acknowledged to the
 * spool when every part is resolved (delivered or dropped with a counted
 * reason). A part to retry stays, with its records, and goes again when
 * the policy's gate opens; while the sink is not ok no new batch is read
 * from the spool: the backlog waits on disk, not in memory.
 *
 * Poison batches (policy.h, "No head-of-line blocking"): the probe goes
 * to the oldest batch that is no suspect, a new one read for it if need
 * be (hsink_send_waiting, hsink_can_start); an isolated batch waits for
 * its own schedule without blocking anything (ops->benched gives it a
 * slot of its own), and a shielded failure of it is bisected within a
 * budget (hsink_split_top, bisect_left).
 *
 * Logging without floods: the first failure of an outage once, with its
 * cause; one summary at most every 60 s while it lasts; the recovery
 * once, when it held for 60 s, with the outage length and what was
 * delivered and dropped; drop lines limited per reason, what they held
 * back told at the end of the minute and at stop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "broker.h"
#include "compress.h"
#include "pool.h"
#include "http.h"
#include "json.h"
#include "policy.h"
#include "proto.h"

#define HTTP_MAX_PARTS   48      /* split depth: 2^47 events, never hit */
#define HSINK_CAUSE_MAX  256     /* "HTTP 503: <body excerpt>", curl text */
#define HSINK_RETRY_NS   100000000ull /* a post that failed locally */
#define HSINK_DROP_INVALID POL_R_COUNT /* rl_drop[]: a protocol's invalid */
#define HSINK_DROP_REASONS (POL_R_COUNT + 1)

struct http_part {
	uint32_t lo, hi;             /* records [lo, hi) of the batch */
	struct pol_batch pb;
	bool resend;                 /* its next send repeats a failed one */
};

struct http_batch {
	struct sink_batch *b;
	struct http_part part[HTTP_MAX_PARTS];
	int nparts;                  /* stack: part[nparts - 1] is next */
	struct http_req *req;        /* in flight, or NULL */
	int waiting;                 /* for the gate (retry, or closed) */
	struct buf body;
	char retry_hdr[40];
	const char *hdrs[CFG_MAX_HEADERS + PROTO_MAX_HDRS + 8];
	uint64_t next_id;
	uint32_t bisect_left;        /* bisections this batch may still cost */
	/* protocol sinks (proto.h) */
	uint8_t *gone;               /* per record: dropped by the protocol */
	uint32_t gone_cap;
	uint32_t req_taken;          /* records the request in flight covers */
	int64_t held_until;          /* policy (monotonic) ms: held by a
	                              * category limit */
	struct proto_req enc;        /* the request in flight: its
	                              * categories, for the policy */
	int64_t held_since;          /* policy ms: its records were first
	                              * held (max_rate_limit_duration), 0 */
	struct buf answer;           /* the response body, for a protocol
	                              * that reads 2xx answers */
	/* sink_threads: the body made on a pool thread (pool.h). While
	 * job_out, the job owns the batch's out and body; the broker
	 * thread leaves them and the batch alone. */
	struct pool_job job;
	int job_out;                 /* submitted, done() not yet run */
	int job_rc;                  /* what the job's encode/compress said */
	uint32_t job_lo, job_hi;     /* the records it encodes */
	struct sink *job_sink;
};

struct http_sink {
	struct pol_sink pol;
	struct env_reader er;
	struct json_line_cache jc;
	struct http_batch hb[SINK_MAX_INFLIGHT];
	unsigned requests_out;       /* requests in flight */
	char *token;                 /* "Authorization: Bearer ..." */
	/* outage bookkeeping for the recovery line */
	uint64_t outage_delivered, outage_dropped;
	int outage_base;             /* the two above are set */
	char last_cause[HSINK_CAUSE_MAX]; /* of the last retryable failure */
	enum pol_state pub_state;    /* policy state last published */
	int64_t pub_until;           /* and its window, monotonic ms */
	int64_t pub_cat_until[OBX_MAX_CATS];
	struct comp *comp;           /* NULL: compression = none */
	struct log_rl rl;            /* token_file trouble */
	struct log_rl rl_warn;       /* warnings in accepted answers */
	/* drop lines, one limiter per reason (and one for invalid) */
	struct log_rl rl_drop[HSINK_DROP_REASONS];
	struct proto *proto;         /* segment, sentry, otlp; NULL: http */
	struct sink_batch *enc_batch;/* the batch being encoded */
	uint8_t *held;               /* sink_batch_aside()'s flags */
	uint32_t held_cap;
};

/* the policy's clock: windows and budgets are durations, CLOCK_MONOTONIC */
static int64_t hsink_now_ms(void)
{
	return (int64_t)(log_mono_ns() / 1000000ull);
}

/* a monotonic deadline as CLOCK_REALTIME ns, for the sink page */
static uint64_t hsink_wall_ns(int64_t mono_ms)
{
	int64_t w = mono_ms + log_wall_offset_ms();

	return w > 0 ? (uint64_t)w * 1000000ull : 0;
}

static uint32_t hsink_rand(void)
{
	uint32_t r = 0;

	if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r))
		r = (uint32_t)log_mono_ns() * 2654435761u;
	return r;
}

static struct http_batch *hsink_hb(struct sink *s, struct sink_batch *b)
{
	struct http_sink *hs = s->impl;

	return &hs->hb[b - s->batch];
}

/* ---- credentials --------------------------------------------------------- */

/* token_file holds a bearer token; read at open and on 401/511. */
static void hsink_load_token(struct sink *s)
{
	struct http_sink *hs = s->impl;
	char buf[4096];
	ssize_t n;
	int fd;

	if (!s->cfg.token_file)
		return;
	fd = open(s->cfg.token_file, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		log_rl(&hs->rl, LOG_ERROR, "sink %s: token_file %s: %s",
		       s->cfg.name, s->cfg.token_file, strerror(errno));
		return;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
			 buf[n - 1] == ' '))
		n--;
	buf[n] = 0;
	free(hs->token);
	if (asprintf(&hs->token, "Authorization: Bearer %s", buf) < 0)
		hs->token = NULL;
}

/* ---- encoding ------------------------------------------------------------ */

static int hsink_encode_records(struct sink *s, struct sink_batch *b,
			       uint32_t lo, uint32_t hi, struct buf *out,
			       struct env_reader *er,
			       struct json_line_cache *jc)
{
	uint32_t i;
	int rc = 0;

	buf_reset(out);
	if (s->cfg.encoding == ENC_MSGPACK) {
		/* the records are msgpack envelopes already: an array of
		 * them is the body */
		uint8_t h[5];
		uint32_t n = hi - lo;

		h[0] = 0xdd;
		h[1] = (uint8_t)(n >> 24);
		h[2] = (uint8_t)(n >> 16);
		h[3] = (uint8_t)(n >> 8);
		h[4] = (uint8_t)n;
		rc = buf_add(out, h, 5);
		for (i = lo; i < hi && rc == 0; i++)
			rc = buf_add(out, b->sb.recs[i].data, b->sb.recs[i].len);
		return rc;
	}
	if (s->cfg.encoding == ENC_JSON_ARRAY)
		rc = buf_addc(out, '[');
	for (i = lo; i < hi && rc == 0; i++) {
		struct env_view v;

		if (env_parse(er, b->sb.recs[i].data, b->sb.recs[i].len,
			      &v) < 0)
			continue;    /* validated at drain; cannot happen */
		if (s->cfg.encoding == ENC_JSON_ARRAY && i > lo)
			rc = buf_addc(out, ',');
		if (rc == 0)
			rc = json_line_fast(jc, &v, out,
					    s->cfg.encoding == ENC_NDJSON);
	}
	if (rc == 0 && s->cfg.encoding == ENC_JSON_ARRAY)
		rc = buf_addc(out, ']');
	return rc;
}

/* ---- sending --------------------------------------------------------------- */

static void hsink_done(void *arg, const struct http_result *r);

/* a request we cancelled ourselves: no answer, no outcome */
static bool hsink_cancelled(const struct http_result *r)
{
	return r->cancelled;
}

static const char *hsink_ctype(const struct sink *s)
{
	switch (s->cfg.encoding) {
	case ENC_JSON_ARRAY:
		return "Content-Type: application/json";
	case ENC_MSGPACK:
		return "Content-Type: application/msgpack";
	default:
		return "Content-Type: application/x-ndjson";
	}
}
/* A protocol's request for the part at the top: 0 (encoded: b->out),
 * 1 (nothing to send: every record left was dropped, the part is done),
 * -EAGAIN (held by a category limit until hb->held_until), -errno. */
static int hsink_proto_encode(struct sink *s, struct http_batch *hb)
{
	struct http_sink *hs = s->impl;
	struct sink_batch *b = hb->b;
	struct http_part *p = &hb->part[hb->nparts - 1];
	struct proto_req q;
	int rc;

	hs->enc_batch = b;
	/* the protocol's clock is the wall (its timestamps); its limits
	 * are the policy's monotonic ones, converted (hsink_cat_until) */
	hs->proto->now_ms = (int64_t)(log_real_ns() / 1000000ull);
	rc = hs->proto->ops->encode(hs->proto, b->sb.recs, hb->gone, p->lo,
				    p->hi, &b->out, &q);
	hs->enc_batch = NULL;
	if (rc == -EAGAIN)
		hb->held_until = q.held_until_ms - log_wall_offset_ms();
	if (rc < 0)
		return rc;
	hb->enc = q;
	hb->req_taken = q.taken;
	if (!q.sent) {
		p->lo += q.taken;
		return 1;
	}
	/* a 413 on one event drops it (too_large) rather than splitting */
	p->pb.nevents = q.sent;
	return 0;
}

/* The request body of the part at the top: records [lo, hi) encoded
 * (a protocol's body is encoded by hsink_try() already) and compressed
 * into hb->body when the sink compresses. Runs on the broker thread with
 * the sink's coders, or on a pool thread with that thread's own
 * (sink_threads). */
static int hsink_make_body(struct sink *s, struct http_batch *hb,
			   uint32_t lo, uint32_t hi, struct comp *comp,
			   struct env_reader *er, struct json_line_cache *jc)
{
	struct http_sink *hs = s->impl;
	struct sink_batch *b = hb->b;
	int rc;

	rc = hs->proto ? 0 :
	     hsink_encode_records(s, b, lo, hi, &b->out, er, jc);
	if (rc == 0 && comp)
		rc = comp_body(comp, b->out.p, b->out.len, &hb->body);
	return rc;
}

/* Posts the body hsink_make_body() made. */
static int hsink_post(struct sink *s, struct http_batch *hb)
{
	struct http_sink *hs = s->impl;
	struct sink_batch *b = hb->b;
	struct http_part *p = &hb->part[hb->nparts - 1];
	struct http_post post;
	const struct buf *payload;
	uint32_t rc_hdr;
	int n = 0, i, rc;

	payload = hs->comp ? &hb->body : &b->out;
	if (hs->proto)
		for (i = 0; hs->proto->hdrs[i]; i++)
			hb->hdrs[n++] = hs->proto->hdrs[i];
	else
		hb->hdrs[n++] = hsink_ctype(s);
	if (hs->comp)
		hb->hdrs[n++] = comp_header(s->cfg.compression);
	rc_hdr = pol_retry_count(&p->pb);
	if (rc_hdr) {
		snprintf(hb->retry_hdr, sizeof(hb->retry_hdr),
			 "X-Retry-Count: %u", rc_hdr);
		hb->hdrs[n++] = hb->retry_hdr;
	}
	if (hs->token)
		hb->hdrs[n++] = hs->token;
	for (i = 0; i < s->cfg.nheaders; i++)
		hb->hdrs[n++] = s->cfg.headers[i];
	hb->hdrs[n] = NULL;
	post = (struct http_post){
		.url = hs->proto ? hs->proto->url : s->cfg.url,
		.body = payload->p,
		.len = payload->len,
		.headers = hb->hdrs,
		.connect_timeout_ms = s->cfg.connect_timeout_ms,
		.timeout_ms = s->cfg.timeout_ms,
	};
	if (hs->proto && hs->proto->ops->accepted) {
		/* the answer is read (partial success): kept up to its
		 * cap, never a failure for its size */
		buf_reset(&hb->answer);
		post.resp = &hb->answer;
		post.resp_cut = 1;
	}
	rc = http_post(s->b->http, &post, hsink_done, hb, &hb->req);
	if (rc < 0)
		return rc;
	hs->requests_out++;
	s->c.requests++;
	/* a retry repeats what failed; a half of a split is not one */
	if (p->resend)
		s->c.retries++;
	p->resend = false;
	return 0;
}

/* ---- sink_threads: the body on a pool thread ------------------------------ */

/* A pool thread's own coders (its pool context), kept warm across jobs
 * and sinks: one compressor per kind, made at first use. The line cache
 * is keyed by each record's (sink, type), so it serves every sink. */
struct hsink_tctx {
	struct comp *comp[3];        /* by enum cfg_compression */
	struct env_reader er;
	struct json_line_cache jc;
};

static void hsink_tctx_free(void *arg)
{
	struct hsink_tctx *t = arg;
	int i;

	for (i = 0; i < 3; i++)
		comp_free(t->comp[i]);
	env_reader_fini(&t->er);
	json_line_cache_free(&t->jc);
	free(t);
}

static void hsink_job_work(struct pool_job *j, void **tctx)
{
	struct http_batch *hb = (struct http_batch *)((char *)j -
		offsetof(struct http_batch, job));
	struct sink *s = hb->job_sink;
	struct hsink_tctx *t = *tctx;
	enum cfg_compression k = s->cfg.compression;

	if (!t) {
		t = calloc(1, sizeof(*t));
		if (!t) {
			hb->job_rc = -ENOMEM;
			return;
		}
		env_reader_init(&t->er);
		json_line_cache_init(&t->jc);
		*tctx = t;
	}
	if (k != COMP_NONE && (unsigned)k < 3 && !t->comp[k] &&
	    !(t->comp[k] = comp_new(k, 0))) {
		hb->job_rc = -errno;
		return;
	}
	hb->job_rc = hsink_make_body(s, hb, hb->job_lo, hb->job_hi,
				     k == COMP_NONE ? NULL : t->comp[k],
				     &t->er, &t->jc);
}

/* a part whose send failed before a request went out: it waits for the
 * next tick, the policy's begin undone */
static void hsink_send_failed(struct sink *s, struct http_batch *hb)
{
	struct http_sink *hs = s->impl;

	pol_abort(&hs->pol, &hb->part[hb->nparts - 1].pb);
	hb->waiting = 1;
}

static void hsink_job_done(struct pool_job *j)
{
	struct http_batch *hb = (struct http_batch *)((char *)j -
		offsetof(struct http_batch, job));
	struct sink *s = hb->job_sink;
	struct http_sink *hs = s->impl;

	hb->job_out = 0;
	hs->requests_out--;         /* counted from the submit, for the gate */
	if (hb->job_rc < 0 || hsink_post(s, hb) < 0)
		hsink_send_failed(s, hb);
}

/* A job still out when the sink stops or closes is taken back: its part
 * waits as a cancelled request does. */
static void hsink_job_reclaim(struct sink *s, struct http_batch *hb)
{
	struct http_sink *hs = s->impl;

	if (!hb->job_out)
		return;
	pool_reclaim(s->b->pool, &hb->job);
	hb->job_out = 0;
	hs->requests_out--;
	hsink_send_failed(s, hb);
}

/* Sends the part at the top: 0 when its request is out (or its body is
 * being made on a pool thread, which posts it), -errno. */
static int hsink_send_part(struct sink *s, struct http_batch *hb)
{
	struct http_sink *hs = s->impl;
	struct http_part *p = &hb->part[hb->nparts - 1];
	int rc;

	if (s->b->pool) {
		hb->job.work = hsink_job_work;
		hb->job.done = hsink_job_done;
		hb->job_sink = s;
		hb->job_lo = p->lo;
		hb->job_hi = p->hi;
		if (pool_submit(s->b->pool, &hb->job) == 0) {
			hb->job_out = 1;
			hs->requests_out++;
			return 0;
		}
	}
	rc = hsink_make_body(s, hb, p->lo, p->hi, hs->comp, &hs->er, &hs->jc);
	if (rc < 0)
		return rc;
	return hsink_post(s, hb);
}

/* Drops parts whose budget ran out while they waited; sends the next
 * part if the gate allows. 1 sent (or finished), 0 waiting. */
static int hsink_try(struct sink *s, struct http_batch *hb, int64_t now);

/* The sink page gets the state with wall-clock deadlines (what workers
 * and `outbox status` read); the monotonic ones it was made from are
 * remembered to tell a change of state, which is persisted at once. */
static void hsink_publish_state(struct sink *s)
{
	struct http_sink *hs = s->impl;
	const struct pol_sink *p = &hs->pol;
	int64_t until = p->state == POL_OK ? 0 : p->until_ms;
	enum pol_state shown = pol_visible_state(p, hsink_now_ms(),
						 !sink_idle(s));
	uint32_t ncats = 0;
	int i, changed;

	changed = hs->pub_state != p->state || hs->pub_until != until;
	hs->pub_state = p->state;
	hs->pub_until = until;
	/* a window that is over with nothing to send shows ok */
	s->state = (uint32_t)shown;
	s->until_ns = shown != POL_OK ? hsink_wall_ns(until) : 0;
	for (i = 0; i < p->ncats && i < (int)OBX_MAX_CATS; i++) {
		/* an expired category is not limited: not published */
		if (p->cats[i].until_ms <= hsink_now_ms())
			continue;
		if (strncmp(s->cats[ncats], p->cats[i].name, OBX_CAT_MAX) ||
		    hs->pub_cat_until[ncats] != p->cats[i].until_ms)
			changed = 1;
		memset(s->cats[ncats], 0, OBX_CAT_MAX);
		memcpy(s->cats[ncats], p->cats[i].name,
		       strnlen(p->cats[i].name, OBX_CAT_MAX - 1));
		hs->pub_cat_until[ncats] = p->cats[i].until_ms;
		s->cat_until_ns[ncats] = hsink_wall_ns(p->cats[i].until_ms);
		ncats++;
	}
	changed |= s->ncats != ncats;
	s->ncats = ncats;
	/* a new window or state must survive a crash: save it now */
	if (changed)
		s->b->persist.dirty = 1;
}

static void hsink_count_drop(struct sink *s, enum pol_reason r, uint32_t n)
{
	switch (r) {
	case POL_R_REJECTED:
		s->c.dropped_rejected += n;
		break;
	case POL_R_RETRIES_EXHAUSTED:
		s->c.dropped_retries_exhausted += n;
		break;
	case POL_R_EXPIRED:
		s->c.dropped_expired += n;
		break;
	case POL_R_RATE_LIMITED:
		s->c.dropped_rate_limited += n;
		break;
	case POL_R_TOO_LARGE:
		s->c.dropped_too_large += n;
		break;
	default:
		s->c.dropped_rejected += n;
		break;
	}
}

/* The part at the top is resolved (delivered or dropped): pop it and go
 * on with the next; hsink_try() ends the batch when no part is left. */
static void hsink_pop(struct sink *s, struct http_batch *hb)
{
	struct http_sink *hs = s->impl;
	struct http_part *p = &hb->part[hb->nparts - 1];

	if (hs->proto) {
		/* a protocol's request covers [lo, lo + req_taken): the
		 * rest of the part goes next, as a fresh request */
		p->lo += hb->req_taken;
		hb->req_taken = 0;
		if (p->lo < p->hi) {
			pol_batch_init(&p->pb, hb->next_id++, p->hi - p->lo);
			hsink_try(s, hb, hsink_now_ms());
			return;
		}
	}
	hb->nparts--;
	hsink_try(s, hb, hsink_now_ms());
}

/* The sink page's reason of a policy drop reason. */
static uint8_t hsink_obx_reason(enum pol_reason r)
{
	switch (r) {
	case POL_R_RETRIES_EXHAUSTED:
		return OBX_DROP_RETRIES_EXHAUSTED;
	case POL_R_EXPIRED:
		return OBX_DROP_EXPIRED;
	case POL_R_RATE_LIMITED:
		return OBX_DROP_RATE_LIMITED;
	case POL_R_TOO_LARGE:
		return OBX_DROP_TOO_LARGE;
	default:
		return OBX_DROP_REJECTED;
	}
}

/* Records [lo, end) of the batch not gone were dropped for r: by their
 * category, when the protocol has categories (sentry). */
static void hsink_count_cats(struct sink *s, struct http_batch *hb,
			     uint32_t lo, uint32_t end, enum pol_reason r)
{
	struct http_sink *hs = s->impl;
	uint32_t i;

	if (!hs->proto || !hs->proto->ops->category)
		return;
	for (i = lo; i < end; i++)
		if (!hb->gone[i])
			sink_count_cat(s, hs->proto->ops->category(hs->proto,
					&hb->b->sb.recs[i]),
				       hsink_obx_reason(r), 1);
}

/* Drops the part at the top: its reason counter, the batch's drop count
 * (so the engine does not count these delivered), a rate-limited line. */
static void hsink_drop_top(struct sink *s, struct http_batch *hb,
			   enum pol_reason why, const char *detail)
{
	struct http_sink *hs = s->impl;
	struct http_part *p = &hb->part[hb->nparts - 1];
	uint32_t n = p->hi - p->lo, i;

	if (hs->proto) {
		/* the request's records (the part's when none is out), but
		 * those the protocol dropped already */
		uint32_t cnt = hb->req_taken ? hb->req_taken : p->hi - p->lo;

		if (hs->proto->ops->lost)
			hs->proto->ops->lost(hs->proto, hb->b->sb.recs,
					     hb->gone, p->lo, cnt, why);
		hsink_count_cats(s, hb, p->lo, p->lo + cnt, why);
		for (n = 0, i = p->lo; i < p->lo + cnt; i++)
			n += !hb->gone[i];
	}
	hsink_count_drop(s, why, n);
	hb->b->dropped += n;
	log_rl_n(&hs->rl_drop[why], n, LOG_WARN,
		 "sink %s: dropped %u events (%s%s%s)", s->cfg.name, n,
		 pol_reason_name(why), detail ? ", " : "", detail ? detail : "");
	if (hs->proto && hb->req_taken) {
		p->lo += hb->req_taken;
		hb->req_taken = 0;
		if (p->lo < p->hi) {
			pol_batch_init(&p->pb, hb->next_id++, p->hi - p->lo);
			return;
		}
	}
	hb->nparts--;
}

/* Drop lines a reason's limiter held back, told in one line: when its
 * period is over (force: now - at stop, at a reload). Returns the next
 * mono ns one is due, or UINT64_MAX. */
static uint64_t hsink_flush_drops(struct sink *s, uint64_t now, int force)
{
	struct http_sink *hs = s->impl;
	uint64_t next = UINT64_MAX, lines, n;
	int r;

	for (r = 0; r < HSINK_DROP_REASONS; r++) {
		uint64_t due = log_rl_due(&hs->rl_drop[r]);

		if (!due)
			continue;
		if (!force && now < due) {
			next = due < next ? due : next;
			continue;
		}
		if (log_rl_take(&hs->rl_drop[r], &lines, &n))
			log_warn("sink %s: %llu more drops (%llu events) as %s "
				 "were not logged one by one", s->cfg.name,
				 (unsigned long long)lines,
				 (unsigned long long)n,
				 r == HSINK_DROP_INVALID ? "invalid" :
				 pol_reason_name((enum pol_reason)r));
	}
	return next;
}

static uint64_t hsink_dropped(const struct sink *s)
{
	return s->c.dropped_rejected + s->c.dropped_retries_exhausted +
	       s->c.dropped_expired + s->c.dropped_rate_limited +
	       s->c.dropped_too_large;
}

/* Counts at the start of an outage, for the recovery line; also for an
 * outage restored from the state file (the counters are restored by
 * then: the first tick comes after stats_restore_sink()). */
static void hsink_outage_base(struct sink *s)
{
	struct http_sink *hs = s->impl;

	hs->outage_delivered = s->c.delivered_events;
	hs->outage_dropped = hsink_dropped(s);
	hs->outage_base = 1;
}

/* cause: what the answer said (http_cause) */
static void hsink_log(struct sink *s, const struct pol_result *r,
		      const char *cause)
{
	struct http_sink *hs = s->impl;
	char limit[48] = "";

	if (r->wait_ms >= 0)
		snprintf(limit, sizeof(limit), " (rate limited for %.1f s)",
			 (double)r->wait_ms / 1000.0);
	if (r->log == POL_LOG_OUTAGE) {
		hsink_outage_base(s);
		log_warn("sink %s: %s%s; %s for %.1f s (one state for all "
			 "producers; next: one probe request)", s->cfg.name,
			 cause, limit, pol_state_name(r->state),
			 (double)(r->until_ms - hsink_now_ms()) / 1000.0);
	} else if (r->log == POL_LOG_RECOVERED) {
		char flaps[64] = "";

		if (r->flaps)
			snprintf(flaps, sizeof(flaps), ", failing again %u "
				 "times soon after recovering", r->flaps);
		log_info("sink %s: upstream back after %.1f s%s; since the "
			 "outage began %llu events delivered, %llu dropped",
			 s->cfg.name, (double)r->outage_ms / 1000.0, flaps,
			 (unsigned long long)(s->c.delivered_events -
					      hs->outage_delivered),
			 (unsigned long long)(hsink_dropped(s) -
					      hs->outage_dropped));
		hs->outage_base = 0;
	}
}

/* The end of an outage once the sink held ok for POL_FLAP_MS (force: at
 * stop, whatever it held): logged. The next mono ns it is due at. */
static uint64_t hsink_outage_over(struct sink *s, uint64_t now, int force)
{
	struct http_sink *hs = s->impl;
	struct pol_result r;
	int64_t ms = hsink_now_ms(), due;

	due = pol_tick(&hs->pol, ms, force, &r);
	hsink_log(s, &r, "");
	if (r.log == POL_LOG_RECOVERED)
		s->b->persist.dirty = 1;
	if (due == POL_NEVER)
		return UINT64_MAX;
	return due <= ms ? now : now + (uint64_t)(due - ms) * 1000000ull;
}

/* Every request ends in exactly one bucket, so at a quiet moment
 * requests = 2xx + 3xx + 4xx + 5xx + other + network_errors + cancelled. */
static void hsink_count_status(struct sink *s, const struct http_result *r)
{
	if (hsink_cancelled(r))
		s->c.requests_cancelled++;
	else if (r->status == 0)
		s->c.network_errors++;
	else if (r->status >= 200 && r->status <= 299)
		s->c.responses_2xx++;
	else if (r->status >= 300 && r->status <= 399)
		s->c.responses_3xx++;
	else if (r->status >= 400 && r->status <= 499)
		s->c.responses_4xx++;
	else if (r->status >= 500 && r->status <= 599)
		s->c.responses_5xx++;
	else
		s->c.responses_other++;
}

/* Halves of the part at the top, in its place (the first half on top:
 * it goes first), each with the part's budgets. -ENOSPC when the stack is
 * full (never at any real depth: a batch has at most 2^16 events). */
static int hsink_split_top(struct http_batch *hb)
{
	struct http_part *p = &hb->part[hb->nparts - 1], whole = *p;
	uint32_t mid = whole.lo + (whole.hi - whole.lo) / 2;

	if (hb->nparts >= HTTP_MAX_PARTS)
		return -ENOSPC;
	pol_batch_split(&whole.pb, &p->pb, hb->next_id++, whole.hi - mid);
	p->lo = mid;
	p->hi = whole.hi;
	p->resend = false;
	p = &hb->part[hb->nparts++];
	pol_batch_split(&whole.pb, &p->pb, hb->next_id++, mid - whole.lo);
	p->lo = whole.lo;
	p->hi = mid;
	p->resend = false;
	return 0;
}

/* A part to send again: waits for the gate (or its own schedule). */
static void hsink_retry_top(struct sink *s, struct http_batch *hb)
{
	hb->part[hb->nparts - 1].resend = true;
	hb->waiting = 1;
	/* its budgets moved: persisted with the next save */
	s->b->persist.batches_dirty = 1;
}

/* An accepted request whose answer rejects some of its records all the
 * same (OTLP partial success): those are dropped `rejected`, counted and
 * logged (rate limited); the batch does not count them delivered. */
static void hsink_rejected(struct sink *s, struct http_batch *hb,
			   int status)
{
	struct http_sink *hs = s->impl;
	struct http_part *p = &hb->part[hb->nparts - 1];
	char why[HSINK_CAUSE_MAX];
	uint32_t n;

	if (!hs->proto || !hs->proto->ops->accepted || status < 200 ||
	    status > 299)
		return;
	n = hs->proto->ops->accepted(hs->proto, (const char *)hb->answer.p,
				     hb->answer.len, p->pb.nevents, why,
				     sizeof(why));
	if (n) {
		hsink_count_drop(s, POL_R_REJECTED, n);
		hb->b->dropped += n;
		log_rl_n(&hs->rl_drop[POL_R_REJECTED], n, LOG_WARN,
			 "sink %s: dropped %u events (rejected, partial "
			 "success: %s)", s->cfg.name, n,
			 why[0] ? why : "no message");
	} else if (why[0]) {
		log_rl(&hs->rl_warn, LOG_WARN, "sink %s: accepted with a "
		       "warning: %s", s->cfg.name, why);
	}
}

static void hsink_done(void *arg, const struct http_result *r)
{
	struct http_batch *hb = arg;
	struct sink_batch *b = hb->b;
	struct sink *s = b->s;
	struct http_sink *hs = s->impl;
	struct http_part *p = &hb->part[hb->nparts - 1];
	struct pol_outcome o = {
		.status = r->status,
		.net = r->status ? POL_NET_NONE :
		       r->timeout ? POL_NET_TIMEOUT : POL_NET_ERROR,
		.retry_after = r->retry_after,
		.n_retry_after = r->n_retry_after,
		.sentry_limits = r->sentry_limits,
		.n_sentry_limits = r->n_sentry_limits,
		.wall_ms = (int64_t)(log_real_ns() / 1000000ull),
		.proto_cls = hs->proto && hs->proto->ops->classify &&
			     r->status > 0 ?
			     hs->proto->ops->classify(hs->proto, r->status) + 1 :
			     0,
	};
	const char *cats[PROTO_REQ_CATS];
	struct pol_result res;
	char cause[HSINK_CAUSE_MAX];
	int i;

	/* what the request carried: a category limit that covers all of
	 * it explains a refusal (policy.h) */
	for (i = 0; hs->proto && i < hb->enc.ncats; i++)
		cats[i] = hb->enc.cats[i];
	o.req_cats = cats;
	o.n_req_cats = hs->proto && hb->enc.ncats > 0 ? hb->enc.ncats : 0;
	hb->req = NULL;
	hs->requests_out--;
	hsink_count_status(s, r);
	if (hsink_cancelled(r)) {
		/* cancelled by us (shutdown, reload): no outcome, the batch
		 * stays in the spool */
		pol_abort(&hs->pol, &p->pb);
		hb->waiting = 1;
		return;
	}
	pol_on_response(&hs->pol, &s->cfg, &p->pb, &o, hsink_now_ms(),
			hsink_rand(), &res);
	http_cause(r, cause, sizeof(cause));
	if (res.cls == POL_C_RETRY)
		memcpy(hs->last_cause, cause, sizeof(hs->last_cause));
	hsink_publish_state(s);
	hsink_log(s, &res, cause);
	switch (res.verdict) {
	case POL_V_DELIVERED:
		hsink_rejected(s, hb, r->status);
		hsink_pop(s, hb);
		break;
	case POL_V_DROP:
		hsink_drop_top(s, hb, res.reason, cause);
		hsink_try(s, hb, hsink_now_ms());
		break;
	case POL_V_SPLIT:
		if (hsink_split_top(hb) == 0)
			s->c.splits++;
		else
			hsink_retry_top(s, hb);
		hsink_try(s, hb, hsink_now_ms());
		break;
	case POL_V_REAUTH:
		hsink_load_token(s);
		p->resend = true;
		hsink_try(s, hb, hsink_now_ms());
		break;
	case POL_V_RETRY:
	default:
		/* a poison batch: halves at once, within its bisection
		 * budget, so its good events go; else its own schedule */
		if (res.bisect && hb->bisect_left && !hsink_split_top(hb)) {
			hb->bisect_left--;
			s->c.splits++;
			s->b->persist.batches_dirty = 1;
		} else {
			hsink_retry_top(s, hb);
		}
		hsink_try(s, hb, hsink_now_ms());
		break;
	}
}

/* When the part at the top must wait for its own schedule (an isolated
 * poison part) and another may go now, that one goes first: the order of
 * a batch's parts matters to nobody, a poison event must not hold up its
 * siblings. */
static void hsink_ready_on_top(struct http_batch *hb, int64_t now)
{
	struct http_part tmp;
	int i, top = hb->nparts - 1;

	if (pol_batch_ready_at(&hb->part[top].pb) <= now)
		return;
	for (i = top - 1; i >= 0; i--)
		if (pol_batch_ready_at(&hb->part[i].pb) <= now) {
			tmp = hb->part[i];
			hb->part[i] = hb->part[top];
			hb->part[top] = tmp;
			return;
		}
}

/* The earliest own-schedule time of the batch's parts (0: one is ready). */
static int64_t hsink_ready_at(const struct http_batch *hb)
{
	int64_t t = INT64_MAX;
	int i;

	for (i = 0; i < hb->nparts; i++) {
		int64_t r = pol_batch_ready_at(&hb->part[i].pb);

		t = r < t ? r : t;
	}
	return t;
}

enum { HSINK_HELD_KEPT = 1, HSINK_HELD_DROPPED, HSINK_HELD_ASIDE };

/* Every record left in the part at the top is held by a category limit
 * (until hb->held_until; sentry, on_rate_limit = hold). Held longer than
 * max_rate_limit_duration since they were first held: dropped
 * (rate_limited, per category in the client report), DROPPED. Otherwise,
 * when nothing else of the batch is left, they are set aside
 * (sink_batch_aside): they wait in the spool, not in memory, and the
 * batch's slot goes to the categories that flow - so a limited category
 * under load never stops the others, whatever max_inflight: ASIDE.
 * Else (other parts left, or past the bounds of the asides) the batch
 * keeps them in memory, waiting: KEPT (it does not stop new batches). */
/* Were the part's records held longer than max_rate_limit_duration (0:
 * not at all)? Then they are dropped (rate_limited) rather than sent or
 * held again, as a held batch is (pol_batch_check). */
static bool hsink_held_expired(struct sink *s, struct http_batch *hb,
			       int64_t now)
{
	struct http_part *p = &hb->part[hb->nparts - 1];

	if (!hb->held_since ||
	    (s->cfg.max_rate_limit_duration_ms &&
	     now - hb->held_since <=
	     (int64_t)s->cfg.max_rate_limit_duration_ms))
		return false;
	hb->req_taken = p->hi - p->lo;
	hsink_drop_top(s, hb, POL_R_RATE_LIMITED,
		       "held past max_rate_limit_duration");
	return true;
}

static int hsink_held(struct sink *s, struct http_batch *hb, int64_t now)
{
	struct http_sink *hs = s->impl;
	struct sink_batch *b = hb->b;
	struct http_part *p = &hb->part[hb->nparts - 1];
	uint64_t due;
	uint32_t i;

	if (!hb->held_since)
		hb->held_since = now;
	if (hsink_held_expired(s, hb, now))
		return HSINK_HELD_DROPPED;
	if (hb->nparts != 1 || p->hi != b->n)
		return HSINK_HELD_KEPT;
	if (hs->held_cap < b->n) {
		uint8_t *h = realloc(hs->held, b->n);

		if (!h)
			return HSINK_HELD_KEPT;
		hs->held = h;
		hs->held_cap = b->n;
	}
	for (i = 0; i < b->n; i++)
		hs->held[i] = i >= p->lo && !hb->gone[i];
	due = hb->held_until > now ? (uint64_t)hb->held_until * 1000000ull :
	      log_mono_ns() + 1000000ull;
	if (sink_batch_aside(b, hs->held, due,
			     (uint64_t)hb->held_since * 1000000ull) < 0)
		return HSINK_HELD_KEPT;
	/* the batch is gone from memory; its slot is free */
	hb->b = NULL;
	hb->nparts = 0;
	hb->waiting = 0;
	hb->held_until = 0;
	hb->held_since = 0;
	hb->req_taken = 0;
	return HSINK_HELD_ASIDE;
}

static int hsink_try(struct sink *s, struct http_batch *hb, int64_t now)
{
	struct http_sink *hs = s->impl;

	while (hb->nparts) {
		struct http_part *p;
		enum pol_reason why;

		hsink_ready_on_top(hb, now);
		p = &hb->part[hb->nparts - 1];
		why = p->pb.attempts ?
		      pol_batch_check(&hs->pol, &s->cfg, &p->pb, now) :
		      POL_R_NONE;

		if (why != POL_R_NONE) {
			hsink_drop_top(s, hb, why, NULL);
			continue;
		}
		if (hs->proto) {
			int rc;

			/* records that were held: not past their time */
			if (hsink_held_expired(s, hb, now))
				continue;
			/* every attempt is encoded again: categories limited
			 * meanwhile are filtered, "gone" records stay gone */
			hb->req_taken = 0;
			rc = hsink_proto_encode(s, hb);
			if (rc == 1) {
				/* all dropped by the protocol: resolved */
				if (p->lo >= p->hi)
					hb->nparts--;
				continue;
			}
			if (rc == -EAGAIN) {
				rc = hsink_held(s, hb, now);
				if (rc == HSINK_HELD_DROPPED)
					continue;
				if (rc == HSINK_HELD_ASIDE)
					return 1;
			} else if (rc < 0) {
				hb->held_until = now + 1000;
			}
			if (rc < 0 || rc == HSINK_HELD_KEPT) {
				hb->waiting = 1;
				return 0;
			}
			hb->held_until = 0;
		}
		if (pol_begin(&hs->pol, &s->cfg, &p->pb, hs->requests_out,
			      now) < 0) {
			hb->waiting = 1;
			return 0;
		}
		hb->waiting = 0;
		if (hsink_send_part(s, hb) < 0) {
			pol_abort(&hs->pol, &p->pb);
			hb->waiting = 1;
			return 0;
		}
		return 1;
	}
	/* every part resolved: the batch is done */
	{
		struct sink_batch *b = hb->b;

		hb->waiting = 0;
		hb->b = NULL;
		sink_batch_done(b, SINK_OK);
	}
	return 1;
}

/* ---- sink_ops ---------------------------------------------------------------- */

/* ---- protocol hooks (proto.h) ---------------------------------------------- */

/* Until when category cat is limited (a whole-sink limit covers all), in
 * the protocol's wall-clock ms like its `now`; the policy's windows are
 * monotonic, converted with the one held offset. */
static int64_t hsink_cat_until(void *arg, const char *cat, int64_t wall_now)
{
	struct sink *s = arg;
	struct http_sink *hs = s->impl;
	int64_t off = log_wall_offset_ms(), now = wall_now - off;
	int i;

	if (hs->pol.state == POL_RATE_LIMITED && hs->pol.until_ms > now)
		return hs->pol.until_ms + off;
	for (i = 0; i < hs->pol.ncats && i < POL_MAX_CATS; i++)
		if (hs->pol.cats[i].until_ms > now &&
		    !strncmp(hs->pol.cats[i].name, cat, POL_CAT_MAX))
			return hs->pol.cats[i].until_ms + off;
	return 0;
}

/* a record the protocol dropped: its counter, once (proto.h) */
static void hsink_proto_drop(void *arg, enum proto_drop why, const char *cat,
			     uint32_t n)
{
	struct sink *s = arg;
	struct http_sink *hs = s->impl;
	struct sink_batch *b = hs->enc_batch;

	if (!b)
		return;
	switch (why) {
	case PROTO_DROP_INVALID:
		b->dropped_invalid += n;        /* counted by the engine */
		sink_count_cat(s, cat, OBX_DROP_INVALID, n);
		break;
	case PROTO_DROP_TOO_LARGE:
		s->c.dropped_too_large += n;
		b->dropped += n;
		sink_count_cat(s, cat, OBX_DROP_TOO_LARGE, n);
		break;
	case PROTO_DROP_RATE_LIMITED:
		s->c.dropped_rate_limited += n;
		b->dropped += n;
		sink_count_cat(s, cat, OBX_DROP_RATE_LIMITED, n);
		break;
	default:
		return;
	}
	/* one limiter per reason, as for the engine's own drops */
	log_rl_n(&hs->rl_drop[why == PROTO_DROP_INVALID ? HSINK_DROP_INVALID :
			      why == PROTO_DROP_TOO_LARGE ? POL_R_TOO_LARGE :
			      POL_R_RATE_LIMITED], n, LOG_WARN,
		 "sink %s: dropped %u events (%s%s%s)", s->cfg.name, n,
		 why == PROTO_DROP_INVALID ? "invalid" :
		 why == PROTO_DROP_TOO_LARGE ? "too_large" : "rate_limited",
		 cat ? ", category " : "", cat ? cat : "");
}

static int hsink_proto_open(struct sink *s)
{
	struct http_sink *hs = s->impl;
	const struct proto_ops *po = proto_for(s->cfg.type);

	if (!po)
		return 0;
	hs->proto = proto_new(po, &s->cfg, s->b->http);
	if (!hs->proto) {
		log_error("sink %s: cannot set up the %s protocol: %s",
			  s->cfg.name, po->name, strerror(errno));
		return -errno;
	}
	hs->proto->cat_until = hsink_cat_until;
	hs->proto->drop = hsink_proto_drop;
	hs->proto->arg = s;
	/* the protocols enforce event_max_bytes: producers that know the
	 * sink drop a body that cannot fit before it takes ring space */
	s->event_max = s->cfg.event_max_bytes > UINT32_MAX ? UINT32_MAX :
		       (uint32_t)s->cfg.event_max_bytes;
	return 0;
}

static void hsink_close(struct sink *s);

static int hsink_open(struct sink *s)
{
	struct comp *comp = NULL;
	struct http_sink *hs;
	int i, rc;

	if (!s->b->http) {
		s->b->http = http_new(&s->b->rx);
		if (!s->b->http) {
			log_error("sink %s: curl: %s", s->cfg.name,
				  strerror(errno));
			return -errno;
		}
	}
	if (!s->b->pool && s->b->cfg.sink_threads > 0) {
		/* made once: sink_threads changes need a restart */
		s->b->pool = pool_new(&s->b->rx, (int)s->b->cfg.sink_threads,
				      hsink_tctx_free);
		if (!s->b->pool)
			log_error("sink_threads = %u: %s; bodies are made on "
				  "the broker thread", s->b->cfg.sink_threads,
				  strerror(errno));
	}
	if (s->cfg.compression != COMP_NONE &&
	    !(comp = comp_new(s->cfg.compression, 0))) {
		int err = errno;

		log_error("sink %s: %s compressor: %s", s->cfg.name,
			  comp_name(s->cfg.compression), strerror(err));
		return -err;
	}
	hs = calloc(1, sizeof(*hs));
	if (!hs) {
		comp_free(comp);
		return -ENOMEM;
	}
	hs->comp = comp;
	s->impl = hs;
	pol_sink_init(&hs->pol, s->cfg.name);
	env_reader_init(&hs->er);
	json_line_cache_init(&hs->jc);
	hs->rl = (struct log_rl)LOG_RL_INIT(60);
	hs->rl_warn = (struct log_rl)LOG_RL_INIT(60);
	for (i = 0; i < HSINK_DROP_REASONS; i++)
		hs->rl_drop[i] = (struct log_rl)LOG_RL_INIT(60);
	for (i = 0; i < SINK_MAX_INFLIGHT; i++) {
		buf_init(&hs->hb[i].body, 0);
		buf_init(&hs->hb[i].answer, PROTO_ANSWER_MAX);
	}
	hsink_load_token(s);
	rc = hsink_proto_open(s);
	if (rc < 0) {
		hsink_close(s);
		return rc;
	}
	persist_restore_sink(&s->b->persist, &hs->pol);
	pol_sink_clamp(&hs->pol, &s->cfg, hsink_now_ms());
	hsink_publish_state(s);
	return 0;
}

/* The broker stops: requests still out are cancelled (their batches stay
 * in the spool, counted requests_cancelled). */
static void hsink_stop(struct sink *s)
{
	struct http_sink *hs = s->impl;
	int i;

	for (i = 0; hs && i < SINK_MAX_INFLIGHT; i++) {
		hsink_job_reclaim(s, &hs->hb[i]);
		if (hs->hb[i].req)
			http_cancel(s->b->http, hs->hb[i].req);
	}
	if (!hs)
		return;
	hsink_flush_drops(s, log_mono_ns(), 1);
	hsink_outage_over(s, log_mono_ns(), 1);
}

static void hsink_close(struct sink *s)
{
	struct http_sink *hs = s->impl;
	int i;

	s->event_max = 0;
	if (!hs)
		return;
	hsink_flush_drops(s, log_mono_ns(), 1);
	persist_remember(&s->b->persist, &hs->pol);
	for (i = 0; i < SINK_MAX_INFLIGHT; i++) {
		struct http_batch *hb = &hs->hb[i];

		hsink_job_reclaim(s, hb);
		if (hb->req)
			http_cancel(s->b->http, hb->req);
		buf_free(&hs->hb[i].body);
		buf_free(&hs->hb[i].answer);
		free(hs->hb[i].gone);
	}
	proto_free(hs->proto);
	free(hs->held);
	comp_free(hs->comp);
	env_reader_fini(&hs->er);
	json_line_cache_free(&hs->jc);
	free(hs->token);
	free(hs);
	s->impl = NULL;
}

/* Bisections a batch of n may cost: enough to single out two poison
 * events (each 2 requests per halving), then no more - a batch that is
 * bad all through must not cost 2n - 1 requests. */
static uint32_t hsink_bisect_budget(uint32_t n)
{
	uint32_t depth = 0;

	while (depth < 32 && (1u << depth) < n)
		depth++;
	return 2 * depth;
}

static int hsink_send(struct sink *s, struct sink_batch *b)
{
	struct http_sink *hs = s->impl;
	struct http_batch *hb = hsink_hb(s, b);

	if (hb->b != b) {
		/* a new batch: one part covering every record */
		hb->b = b;
		hb->nparts = 1;
		hb->part[0].lo = 0;
		hb->part[0].hi = b->n;
		hb->next_id = b->first_seq << 8;
		hb->bisect_left = hsink_bisect_budget(b->n);
		if (hs->proto) {
			if (hb->gone_cap < b->n) {
				uint8_t *g = realloc(hb->gone, b->n);

				if (!g) {
					hb->b = NULL;
					return -ENOMEM;
				}
				hb->gone = g;
				hb->gone_cap = b->n;
			}
			memset(hb->gone, 0, b->n);
			hb->req_taken = 0;
			hb->held_until = 0;
			/* records set aside before: since when */
			hb->held_since = b->held_since ?
				(int64_t)(b->held_since / 1000000ull) : 0;
		}
		pol_batch_init(&hb->part[0].pb, b->first_seq, b->n);
		persist_restore_batch(&s->b->persist, s->cfg.name,
				      b->first_seq, b->end_seq,
				      &hb->part[0].pb);
		b->dropped = 0;
	}
	hsink_try(s, hb, hsink_now_ms());
	return 0;
}

/* A batch that must not stand in the way of others: isolated (retried
 * on its own), or - when the probe is to be chosen - a suspect. */
static int hsink_benched_hb(const struct http_batch *hb, enum pol_gate g)
{
	const struct pol_batch *pb;

	if (!hb->b || !hb->nparts)
		return 0;
	pb = &hb->part[hb->nparts - 1].pb;
	return pb->isolated || (g == POL_GATE_PROBE && pol_probe_suspect(pb));
}

/* New batches only while the gate is open and nothing waits for it: a
 * sink in backoff keeps its backlog in the spool, not in memory. Benched
 * batches wait for themselves, not for the gate: they block nothing (and
 * at the probe, a new batch is how a suspect is not the probe again). */
static int hsink_can_start(const struct sink *s)
{
	const struct http_sink *hs = s->impl;
	enum pol_gate g = pol_gate(&hs->pol, &s->cfg, hs->requests_out,
				   hsink_now_ms());
	int i;

	if (g == POL_GATE_WAIT)
		return 0;
	for (i = 0; i < SINK_MAX_INFLIGHT; i++)
		if (hs->hb[i].b && hs->hb[i].waiting &&
		    !hs->hb[i].held_until &&
		    !hsink_benched_hb(&hs->hb[i], g))
			return 0;
	return 1;
}

static uint32_t hsink_benched(const struct sink *s)
{
	const struct http_sink *hs = s->impl;
	uint32_t n = 0;
	int i;

	for (i = 0; hs && i < SINK_MAX_INFLIGHT; i++) {
		const struct http_batch *hb = &hs->hb[i];

		n += hb->b && hb->nparts &&
		     pol_probe_suspect(&hb->part[hb->nparts - 1].pb);
	}
	return n;
}

/* The summary line while not ok (PRODUCT.md section 7), at most one per
 * POL_SUMMARY_MS. */
static void hsink_summary(struct sink *s, int64_t wall)
{
	struct http_sink *hs = s->impl;
	struct spool_stats ss;
	uint64_t nb = 0, bytes = 0;
	int i;

	if (!pol_summary_due(&hs->pol, wall, !sink_idle(s)))
		return;
	for (i = 0; i < SINK_MAX_INFLIGHT; i++)
		if (hs->hb[i].b) {
			nb++;
			bytes += hs->hb[i].b->out.len;
		}
	spool_get_stats(s->spool, &ss);
	log_warn("sink %s: %s, retrying %llu batches (%.1f MB) for %.0f s; "
		 "%llu events (%.1f MB) queued in the spool; next attempt in "
		 "%.1f s; last failure: %s", s->cfg.name,
		 pol_state_name(hs->pol.state),
		 (unsigned long long)nb, (double)bytes / 1e6,
		 (double)(wall - hs->pol.outage_start_ms) / 1000.0,
		 (unsigned long long)ss.queued_events,
		 (double)ss.queued_bytes / 1e6,
		 (double)(hs->pol.until_ms > wall ? hs->pol.until_ms - wall :
			  0) / 1000.0, hs->last_cause[0] ? hs->last_cause : "-");
}

/* The batches waiting for the gate, oldest first; how many. */
static int hsink_waiting_order(const struct sink *s,
			       struct http_batch **order)
{
	struct http_sink *hs = s->impl;
	int i, j, n = 0;

	for (i = 0; i < (int)s->nused; i++) {
		struct http_batch *hb = &hs->hb[i];

		if (!hb->b || !hb->waiting || hb->req)
			continue;
		for (j = n; j > 0 && order[j - 1]->b->first_seq >
				     hb->b->first_seq; j--)
			order[j] = order[j - 1];
		order[j] = hb;
		n++;
	}
	return n;
}

/* Sends what waits, oldest first, while the gate allows. When the gate
 * offers the one probe, it goes to the oldest batch that is no suspect;
 * to a suspect only when no other batch waits and none can be read from
 * the spool (sink_more): a poison batch is not the probe a third time
 * while anything else could be. */
static void hsink_send_waiting(struct sink *s, int64_t now)
{
	struct http_sink *hs = s->impl;
	struct http_batch *order[SINK_MAX_INFLIGHT];
	int n = hsink_waiting_order(s, order), i, pass;

	for (pass = 0; pass < 2; pass++) {
		for (i = 0; i < n; i++) {
			struct http_batch *hb = order[i];
			enum pol_gate g = pol_gate(&hs->pol, &s->cfg,
						   hs->requests_out, now);

			if (g == POL_GATE_WAIT)
				return;
			if (!hb->b || !hb->waiting || hb->req)
				continue;	/* done meanwhile */
			if (hb->held_until > now)
				continue;	/* a category limit holds it */
			if (g == POL_GATE_PROBE && pass == 0 &&
			    pol_probe_suspect(&hb->part[hb->nparts - 1].pb))
				continue;
			hsink_try(s, hb, now);
		}
		/* a suspect only when nothing else can be the probe */
		if (pol_gate(&hs->pol, &s->cfg, hs->requests_out, now) !=
		    POL_GATE_PROBE || sink_more(s))
			return;
	}
}

static uint64_t hsink_at(uint64_t now, int64_t wall, int64_t t)
{
	return t <= wall ? now : now + (uint64_t)(t - wall) * 1000000ull;
}

static uint64_t hsink_tick(struct sink *s, uint64_t now)
{
	struct http_sink *hs = s->impl;
	int64_t wall = hsink_now_ms(), open, own = INT64_MAX;
	uint64_t next, over;
	int i, waiting = 0;

	hsink_send_waiting(s, wall);
	for (i = 0; i < (int)s->nused; i++) {
		const struct http_batch *hb = &hs->hb[i];

		if (!hb->b || !hb->waiting)
			continue;
		/* held by a category limit (a protocol's), or an isolated
		 * part's own schedule: a time of its own */
		if (hb->held_until > wall) {
			own = hb->held_until < own ? hb->held_until : own;
			continue;
		}
		waiting = 1;
		if (hsink_ready_at(hb) > wall && hsink_ready_at(hb) < own)
			own = hsink_ready_at(hb);
	}
	/* held for a category: set aside in the spool, or in memory */
	s->c.held_events = s->aside_events;
	for (i = 0; i < (int)s->nused; i++) {
		const struct http_batch *hb = &hs->hb[i];
		const struct http_part *p;
		uint32_t k;

		if (!hb->b || !hb->waiting || !hb->held_until || !hb->nparts)
			continue;
		p = &hb->part[hb->nparts - 1];
		for (k = p->lo; k < p->hi; k++)
			s->c.held_events += !hb->gone[k];
	}
	/* categories: republished when one expires */
	for (i = 0; i < hs->pol.ncats && i < POL_MAX_CATS; i++)
		if (hs->pol.cats[i].until_ms > wall &&
		    hs->pol.cats[i].until_ms < own)
			own = hs->pol.cats[i].until_ms;
	/* an outage restored from the state file: its counts start here */
	if (hs->pol.outage_start_ms && !hs->outage_base)
		hsink_outage_base(s);
	hsink_publish_state(s);
	hsink_summary(s, wall);
	next = hsink_flush_drops(s, now, 0);
	over = hsink_outage_over(s, now, 0);
	next = over < next ? over : next;
	if (own != INT64_MAX && hsink_at(now, wall, own) < next)
		next = hsink_at(now, wall, own);
	if (hs->proto && hs->proto->ops->tick) {
		uint64_t t = hs->proto->ops->tick(hs->proto, now);

		next = t < next ? t : next;
	}
	/* The gate: at the end of a window (the probe; or, with nothing to
	 * send, the state to show becomes ok). An open gate with a part
	 * still waiting that could go means a local failure to post: look
	 * again soon. Otherwise a completion, or the engine's own deadlines
	 * (a new batch), tick the sink: an idle sink never spins. */
	open = pol_next_open(&hs->pol, &s->cfg, hs->requests_out, wall);
	if (open != POL_NEVER && open > wall)
		over = hsink_at(now, wall, open);
	else if (open != POL_NEVER && waiting && own == INT64_MAX)
		over = now + HSINK_RETRY_NS;
	else
		over = UINT64_MAX;
	return over < next ? over : next;
}

static const struct pol_sink *hsink_policy(const struct sink *s)
{
	const struct http_sink *hs = s->impl;

	return hs ? &hs->pol : NULL;
}

/* the part metadata of waiting batches, for pol_save */
static size_t hsink_saved(const struct sink *s, struct pol_saved_batch *out,
			 size_t max)
{
	const struct http_sink *hs = s->impl;
	size_t n = 0;
	int i;

	for (i = 0; hs && i < SINK_MAX_INFLIGHT && n < max; i++) {
		const struct http_batch *hb = &hs->hb[i];

		if (!hb->b || !hb->nparts)
			continue;
		memset(&out[n], 0, sizeof(out[n]));
		snprintf(out[n].sink, sizeof(out[n].sink), "%s", s->cfg.name);
		out[n].b = hb->part[hb->nparts - 1].pb;
		out[n].b.id = hb->b->first_seq;
		n++;
	}
	return n;
}

/* Nothing can go out before the window ends: shutdown need not wait. */
static int hsink_parked(const struct sink *s)
{
	const struct http_sink *hs = s->impl;
	int64_t now = hsink_now_ms();
	int i;

	if (!hs || hs->requests_out)
		return 0;
	if (hs->pol.state != POL_OK)
		return 1;
	/* ok, but all that is held waits for its own schedule (isolated
	 * poison parts) and nothing else is to be read */
	if (sink_more(s))
		return 0;
	for (i = 0; i < SINK_MAX_INFLIGHT; i++) {
		const struct http_batch *hb = &hs->hb[i];

		if (hb->b && (!hb->waiting || (hsink_ready_at(hb) <= now &&
						hb->held_until <= now)))
			return 0;
	}
	return 1;
}

static uint32_t hsink_max_inflight(const struct sink *s)
{
	return s->cfg.max_inflight;
}

const struct sink_ops sink_http_ops = {
	.name = "http",
	.open = hsink_open,
	.send = hsink_send,
	.close = hsink_close,
	.max_inflight = hsink_max_inflight,
	.can_start = hsink_can_start,
	.tick = hsink_tick,
	.policy = hsink_policy,
	.saved = hsink_saved,
	.parked = hsink_parked,
	.stop = hsink_stop,
	.benched = hsink_benched,
};
