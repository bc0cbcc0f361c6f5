/* sink.c - the delivery engine shared by every sink type (see sink.h).
 *
 * Per sink: read_seq is where the next batch starts. A batch is started
 * when a slot is free, the type allows more in flight, and either a full
 * batch is waiting or the oldest waiting record has waited flush_interval.
 * Batches complete out of order; the spool's watermark only moves over the
 * contiguous acknowledged prefix, so a crash re-sends at most what was in
 * flight (at-least-once, deduplicated upstream by event id).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "sink.h"

#define SINK_RETRY_NS 1000000000ull

const struct sink_ops *sink_ops_for(enum cfg_sink_type t)
{
	switch (t) {
	case SINK_FILE:
		return &sink_file_ops;
	case SINK_DISCARD:
		return &sink_discard_ops;
	case SINK_HTTP:
	case SINK_SEGMENT:      /* the same engine with a protocol */
	case SINK_SENTRY:       /* (broker/proto.h) */
	case SINK_OTLP:
		return &sink_http_ops;
	default:
		return NULL;
	}
}

/* The sink owns its copy of the strings: a reload frees the old config
 * while batches of this sink may still be in flight. */
static void sink_cfg_free(struct cfg_sink *c)
{
	int i;

	free(c->path);
	free(c->url);
	free(c->write_key);
	free(c->dsn);
	free(c->token_file);
	free(c->settings_url);
	free(c->service_name);
	for (i = 0; i < c->nheaders; i++)
		free(c->headers[i]);
	c->nheaders = 0;
}

static char *sink_strdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

static int sink_cfg_copy(struct cfg_sink *dst, const struct cfg_sink *src)
{
	int i;

	*dst = *src;
	dst->path = sink_strdup(src->path);
	dst->url = sink_strdup(src->url);
	dst->write_key = sink_strdup(src->write_key);
	dst->dsn = sink_strdup(src->dsn);
	dst->token_file = sink_strdup(src->token_file);
	dst->settings_url = sink_strdup(src->settings_url);
	dst->service_name = sink_strdup(src->service_name);
	for (i = 0; i < src->nheaders; i++)
		dst->headers[i] = sink_strdup(src->headers[i]);
	if ((src->path && !dst->path) || (src->url && !dst->url) ||
	    (src->write_key && !dst->write_key) || (src->dsn && !dst->dsn) ||
	    (src->token_file && !dst->token_file) ||
	    (src->settings_url && !dst->settings_url) ||
	    (src->service_name && !dst->service_name)) {
		sink_cfg_free(dst);
		return -ENOMEM;
	}
	return 0;
}

int sink_reconfigure(struct sink *s, const struct cfg_sink *cfg)
{
	struct cfg_sink n;

	if (sink_cfg_copy(&n, cfg) < 0)
		return -ENOMEM;
	if (s->ops && !s->disabled)
		s->ops->close(s);
	sink_cfg_free(&s->cfg);
	s->cfg = n;
	s->ops = sink_ops_for(n.type);
	s->disabled = !s->ops || s->ops->open(s) < 0;
	s->reconfigure = 0;
	return 0;
}

struct sink *sink_new(struct broker *b, const struct cfg_sink *cfg, int idx)
{
	struct sink *s = calloc(1, sizeof(*s));
	int i, rc;

	if (!s)
		return NULL;
	s->b = b;
	if (sink_cfg_copy(&s->cfg, cfg) < 0) {
		free(s);
		errno = ENOMEM;
		return NULL;
	}
	s->idx = idx;
	s->ops = sink_ops_for(cfg->type);
	for (i = 0; i < SINK_MAX_INFLIGHT; i++) {
		s->batch[i].s = s;
		spool_batch_init(&s->batch[i].sb);
		buf_init(&s->batch[i].out, 0);
	}
	s->spool = spool_open(b->spool, cfg->name);
	if (!s->spool) {
		rc = -errno;
		log_error("sink %s: cannot open its spool: %s", cfg->name,
			  strerror(-rc));
		sink_cfg_free(&s->cfg);
		free(s);
		errno = -rc;
		return NULL;
	}
	s->read_seq = spool_acked(s->spool);
	if (!s->ops) {
		log_error("sink %s: type %s is not supported by this build; "
			  "its events stay in the spool", cfg->name,
			  cfg_sink_type_name(cfg->type));
		s->disabled = 1;
	} else if (s->ops->open(s) < 0) {
		s->disabled = 1;
	}
	return s;
}

void sink_free(struct sink *s)
{
	int i;

	if (!s)
		return;
	if (s->ops && !s->disabled)
		s->ops->close(s);
	for (i = 0; i < SINK_MAX_INFLIGHT; i++) {
		spool_batch_free(&s->batch[i].sb);
		buf_free(&s->batch[i].out);
	}
	for (i = 0; i < (int)s->naside; i++)
		free(s->aside[i].bits);
	free(s->aside);
	if (s->spool) {
		spool_sync_ack(s->spool);
		spool_close(s->spool);
	}
	sink_cfg_free(&s->cfg);
	free(s);
}

static uint32_t sink_limit(const struct sink *s)
{
	uint32_t lim = s->cfg.max_inflight;

	if (s->ops && s->ops->max_inflight) {
		uint32_t t = s->ops->max_inflight(s);

		if (t < lim)
			lim = t;
	}
	if (!lim)
		lim = 1;
	/* batches held aside make room for as many more, at most */
	if (s->ops && s->ops->benched) {
		uint32_t k = s->ops->benched(s);

		lim += k < lim ? k : lim;
	}
	if (lim > SINK_MAX_INFLIGHT)
		lim = SINK_MAX_INFLIGHT;
	return lim;
}

static struct sink_batch *sink_free_batch(struct sink *s)
{
	int i;

	for (i = 0; i < SINK_MAX_INFLIGHT; i++)
		if (!s->batch[i].busy) {
			if ((uint32_t)i >= s->nused)
				s->nused = (uint32_t)i + 1;
			return &s->batch[i];
		}
	return NULL;
}

static void sink_send(struct sink_batch *b)
{
	struct sink *s = b->s;
	int rc;

	b->reading = 0;
	b->attempts++;
	rc = s->ops->send(s, b);
	if (rc < 0) {
		log_rl(&s->b->rl_spool, LOG_ERROR, "sink %s: send failed: %s",
		       s->cfg.name, strerror(-rc));
		sink_batch_done(b, SINK_RETRY);
	}
}

/* A free batch slot taken for a read starting at `from` (the read itself
 * is the caller's), or NULL. */
static struct sink_batch *sink_batch_take(struct sink *s, uint64_t from)
{
	struct sink_batch *b = sink_free_batch(s);

	if (!b)
		return NULL;
	b->busy = 1;
	b->first_seq = from;
	b->n = 0;
	b->attempts = 0;
	b->resend_at = 0;
	b->dropped_invalid = 0;
	b->dropped = 0;
	b->out_off = 0;
	b->held_since = 0;
	b->aside_id = 0;
	buf_reset(&b->out);
	s->inflight++;
	s->c.inflight = s->inflight;
	return b;
}

/* The slot of a batch that ends (done, set aside or nothing read). */
static void sink_batch_release(struct sink_batch *b)
{
	struct sink *s = b->s;

	b->busy = 0;
	b->aside_id = 0;
	s->inflight--;
	s->c.inflight = s->inflight;
}

static uint32_t sink_aside_take(struct sink *s, struct sink_batch *b,
				int err);

static void sink_read_done(void *arg, int err)
{
	struct sink_batch *b = arg;
	struct sink *s = b->s;

	s->reading = 0;
	if (b->aside_id) {
		/* records set aside, read again */
		if (sink_aside_take(s, b, err))
			sink_send(b);
		return;
	}
	if (err == 0 && b->sb.n == 0) {
		/* nothing readable here (all acknowledged or lost to damage,
		 * counted by the spool): move past it */
		if (b->sb.next > s->read_seq)
			s->read_seq = b->sb.next;
		sink_batch_release(b);
		return;
	}
	if (err < 0) {
		log_rl(&s->b->rl_spool, LOG_ERROR, "sink %s: spool read "
		       "at %llu failed: %s", s->cfg.name,
		       (unsigned long long)b->first_seq, strerror(-err));
		sink_batch_release(b);
		s->retry_at = log_mono_ns() + SINK_RETRY_NS;
		return;
	}
	/* seqs increase but may skip (acknowledged or damaged records):
	 * the batch is [recs[0].seq, recs[n-1].seq], the next starts at
	 * sb.next */
	b->n = b->sb.n;
	b->first_seq = b->sb.recs[0].seq;
	b->end_seq = b->sb.recs[b->n - 1].seq + 1;
	s->read_seq = b->sb.next;
	stats_sink_read(s);
	sink_send(b);
}

/* Reads records from `from` into b (the sink's one spool read): 1 when
 * the read is out or done, 0 when it failed (b released, logged, and
 * *retry_at set to when to try again). */
static int sink_read_batch(struct sink *s, struct sink_batch *b,
			   uint64_t from, uint64_t *retry_at, uint64_t now)
{
	int rc;

	s->reading = 1;
	rc = spool_read(s->spool, from, s->cfg.batch_max_events,
			s->cfg.batch_max_bytes, &b->sb, sink_read_done, b);
	if (rc < 0) {
		s->reading = 0;
		sink_batch_release(b);
		*retry_at = now + SINK_RETRY_NS;
		log_rl(&s->b->rl_spool, LOG_ERROR, "sink %s: spool read: %s",
		       s->cfg.name, strerror(-rc));
		return 0;
	}
	if (rc == 1)
		sink_read_done(b, 0);
	return 1;
}

/* Starts one batch at read_seq; 1 started, 0 not now. One spool read at
 * a time: the next batch starts where this one's records end. */
static int sink_start(struct sink *s, uint64_t now)
{
	uint64_t next = spool_visible(s->spool);
	struct sink_batch *b;

	if (s->reading || s->read_seq >= next || now < s->retry_at)
		return 0;
	if (!s->pending_since)
		s->pending_since = now;
	/* wait for a full batch or flush_interval, whichever first */
	if (next - s->read_seq < s->cfg.batch_max_events &&
	    now - s->pending_since < s->cfg.flush_interval_ms * 1000000ull &&
	    !s->b->stopping)
		return 0;
	b = sink_batch_take(s, s->read_seq);
	if (!b || !sink_read_batch(s, b, s->read_seq, &s->retry_at, now))
		return 0;
	s->pending_since = 0;
	return 1;
}

/* ---- records set aside (sink_batch_aside) ---------------------------------
 *
 * A type sets records aside when they must wait (a rate-limited Sentry
 * category with on_rate_limit = hold) while the rest of their batch is
 * resolved: the batch is acknowledged but for them, its slot is freed
 * for the records that may flow, and the held records stay where they
 * are, in the spool. An aside is the batch's seq span with one bit per
 * seq; when it is due the pending records are read again (one spool read,
 * the others of the span skipped) into a batch of their own. Memory: a
 * bit per seq of a span, within SINK_ASIDE_MEM_MAX per sink; the records
 * themselves cost disk only, under spool_max like any backlog (the
 * watermark waits at the first held record, so the segments behind it
 * stay until it is delivered). A restart loses the asides, not the held
 * records: they are read again from the watermark, and the records
 * acknowledged around them are not (the checkpoint keeps the done ranges,
 * up to SPF_CK_RANGES_MAX; past that, duplicates - never losses). */

static bool aside_bit(const struct sink_aside *a, uint64_t seq)
{
	uint64_t i = seq - a->first;

	return seq >= a->first && seq < a->end &&
	       (a->bits[i >> 3] >> (i & 7)) & 1;
}

static uint64_t aside_bytes(const struct sink_aside *a)
{
	return (a->end - a->first + 7) / 8;
}

static struct sink_aside *aside_find(struct sink *s, uint64_t id)
{
	uint32_t k;

	for (k = 0; k < s->naside; k++)
		if (s->aside[k].id == id)
			return &s->aside[k];
	return NULL;
}

static void aside_remove(struct sink *s, struct sink_aside *a)
{
	uint32_t k = (uint32_t)(a - s->aside);

	s->aside_mem -= aside_bytes(a);
	s->aside_events -= a->n;
	free(a->bits);
	memmove(a, a + 1, (s->naside - k - 1) * sizeof(*a));
	s->naside--;
}

uint64_t sink_aside_due(const struct sink *s)
{
	uint64_t due = UINT64_MAX;
	uint32_t k;

	for (k = 0; k < s->naside; k++)
		if (s->aside[k].due < due)
			due = s->aside[k].due;
	return due;
}

/* Acknowledges [a, e) to the spool; how many seqs were newly done. */
static uint64_t sink_ack(struct sink *s, uint64_t a, uint64_t e)
{
	return e > a ? spool_ack_n(s->spool, a, e - a) : 0;
}

/* What a batch that ends acknowledged: delivered, but for the drops its
 * type counted (a batch dropped whole delivered nothing). */
static void sink_account(struct sink_batch *b, uint64_t newly)
{
	struct sink *s = b->s;

	s->c.dropped_invalid += b->dropped_invalid;
	if (newly > b->dropped_invalid + b->dropped) {
		s->c.delivered_events += newly - b->dropped_invalid -
					 b->dropped;
		s->c.delivered_batches++;
	}
	/* the checkpoint that records this ack carries these counters */
	stats_sink_acked(s);
	sink_batch_release(b);
}

int sink_batch_aside(struct sink_batch *b, const uint8_t *held,
		     uint64_t due, uint64_t since)
{
	struct sink *s = b->s;
	struct sink_aside a = { .first = b->first_seq, .end = b->end_seq,
				.due = due, .since = since };
	uint64_t newly = 0, run, seq, bytes;
	uint32_t i, k;

	if (a.end <= a.first || a.end - a.first > SINK_ASIDE_SPAN_MAX ||
	    s->naside >= SINK_ASIDE_MAX)
		return -ENOSPC;
	bytes = aside_bytes(&a);
	if (s->aside_mem + bytes > SINK_ASIDE_MEM_MAX)
		return -ENOSPC;
	if (s->naside == s->aside_cap) {
		uint32_t ncap = s->aside_cap ? s->aside_cap * 2 : 16;
		struct sink_aside *n = realloc(s->aside, ncap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		s->aside = n;
		s->aside_cap = ncap;
	}
	a.bits = calloc(1, bytes);
	if (!a.bits)
		return -ENOMEM;
	a.from = a.end;
	for (i = 0; i < b->n; i++) {
		uint64_t q = b->sb.recs[i].seq;

		if (!held[i] || q < a.first || q >= a.end ||
		    aside_bit(&a, q))
			continue;
		a.bits[(q - a.first) >> 3] |= (uint8_t)(1u << ((q - a.first) & 7));
		a.n++;
		if (q < a.from)
			a.from = q;
	}
	if (!a.n) {
		free(a.bits);
		sink_batch_done(b, SINK_OK);
		return 0;
	}
	/* everything of the span but the held records is resolved */
	for (run = seq = a.first; seq < a.end; seq++)
		if (aside_bit(&a, seq)) {
			newly += sink_ack(s, run, seq);
			run = seq + 1;
		}
	newly += sink_ack(s, run, a.end);
	for (k = 0; k < s->naside && s->aside[k].first < a.first; k++)
		;
	memmove(&s->aside[k + 1], &s->aside[k],
		(s->naside - k) * sizeof(*s->aside));
	a.id = ++s->aside_ids;
	s->aside[k] = a;
	s->naside++;
	s->aside_mem += bytes;
	s->aside_events += a.n;
	sink_account(b, newly);
	return 0;
}

/* Reads the first aside that is due into a batch: 1 started, 0 not now. */
static int sink_start_aside(struct sink *s, uint64_t now)
{
	struct sink_aside *a = NULL;
	struct sink_batch *b;
	uint32_t k;

	if (s->reading || now < s->retry_at)
		return 0;
	for (k = 0; k < s->naside && !a; k++)
		if (s->aside[k].due <= now)
			a = &s->aside[k];
	if (!a || !(b = sink_batch_take(s, a->from)))
		return 0;
	b->aside_id = a->id;
	b->held_since = a->since;
	a->due = UINT64_MAX;            /* being read */
	return sink_read_batch(s, b, a->from, &a->due, now);
}

/* The read of an aside came back: its pending records stay in b (spool
 * order), the others read with them are let go. The aside keeps what the
 * read did not reach (due again at once), and goes when nothing of it is
 * pending. Returns the records kept (0: the slot is free again). */
static uint32_t sink_aside_take(struct sink *s, struct sink_batch *b,
				int err)
{
	struct sink_aside *a = aside_find(s, b->aside_id);
	uint64_t cover, seq, left = 0;
	uint32_t i, kept = 0;

	if (!a) {
		sink_batch_release(b);
		return 0;
	}
	if (err < 0) {
		log_rl(&s->b->rl_spool, LOG_ERROR, "sink %s: spool read at "
		       "%llu failed: %s", s->cfg.name,
		       (unsigned long long)a->from, strerror(-err));
		a->due = log_mono_ns() + SINK_RETRY_NS;
		sink_batch_release(b);
		return 0;
	}
	/* how far the read got; nothing read: nothing of it is left to
	 * read (deleted by drop-oldest, lost to damage: the spool counted
	 * those) */
	cover = b->sb.n && b->sb.next < a->end ? b->sb.next : a->end;
	for (i = 0; i < b->sb.n && b->sb.recs[i].seq < cover; i++)
		if (aside_bit(a, b->sb.recs[i].seq))
			b->sb.recs[kept++] = b->sb.recs[i];
	for (seq = a->from; seq < cover; seq++)
		left += aside_bit(a, seq);
	a->n -= (uint32_t)left;
	s->aside_events -= left;
	a->from = cover;
	if (a->n == 0 || cover >= a->end)
		aside_remove(s, a);
	else
		a->due = log_mono_ns();
	b->sb.n = kept;
	b->n = kept;
	if (!kept) {
		sink_batch_release(b);
		return 0;
	}
	/* acknowledged at the end: the covered span (the rest of it is
	 * done already) */
	b->first_seq = b->sb.recs[0].seq;
	b->end_seq = cover;
	return kept;
}

/* Batches waiting to be sent again; returns the earliest due time. */
static uint64_t sink_resend_due(struct sink *s, uint64_t now)
{
	uint64_t next = UINT64_MAX;
	int i;

	for (i = 0; i < (int)s->nused; i++) {
		struct sink_batch *b = &s->batch[i];

		if (!b->busy || !b->resend_at)
			continue;
		if (b->resend_at <= now) {
			/* the type decides what to keep of b->out */
			b->resend_at = 0;
			sink_send(b);
		} else if (b->resend_at < next) {
			next = b->resend_at;
		}
	}
	return next;
}

static int sink_may_start(const struct sink *s)
{
	return !s->ops->can_start || s->ops->can_start(s);
}

uint64_t sink_tick(struct sink *s, uint64_t now)
{
	uint64_t next, resend;

	if (s->disabled)
		return UINT64_MAX;
	resend = sink_resend_due(s, now);
	if (s->ops->tick) {
		uint64_t t = s->ops->tick(s, now);

		if (t < resend)
			resend = t;
	}
	if (s->reconfigure)
		return s->inflight == 0 ? now : resend;
	if (now < s->retry_at)
		return s->retry_at < resend ? s->retry_at : resend;
	/* records set aside first (they are the oldest), then new ones */
	while (s->inflight < sink_limit(s) && sink_may_start(s))
		if (!sink_start_aside(s, now) && !sink_start(s, now))
			break;
	next = sink_aside_due(s);
	if (next > now && next < resend)
		resend = next;
	if (s->reading || s->inflight >= sink_limit(s) || !sink_may_start(s) ||
	    s->read_seq >= spool_visible(s->spool) || !s->pending_since)
		return resend;          /* a completion will tick us */
	next = s->pending_since + s->cfg.flush_interval_ms * 1000000ull;
	if (next <= now)
		next = now + 1000000ull;
	return next < resend ? next : resend;
}

void sink_batch_done(struct sink_batch *b, enum sink_result r)
{
	struct sink *s = b->s;
	uint64_t newly;

	if (r == SINK_RETRY) {
		/* keep the records; the same batch goes again later */
		b->resend_at = log_mono_ns() + SINK_RETRY_NS;
		s->c.retries++;
		return;
	}
	/* only what was newly acknowledged counts as delivered: records
	 * drop-oldest removed while this batch was out are counted
	 * dropped_spool_full already */
	newly = sink_ack(s, b->first_seq, b->end_seq);
	sink_account(b, newly);
}

void sink_count_cat(struct sink *s, const char *cat, uint8_t reason,
		    uint64_t n)
{
	struct sink_cat_drop *d;
	uint32_t i;

	if (!cat || !cat[0] || !n)
		return;
	for (i = 0; i < s->ncat_drops; i++) {
		d = &s->cat_drops[i];
		if (d->reason == reason &&
		    !strncmp(d->cat, cat, OBX_CAT_MAX - 1)) {
			d->n += n;
			return;
		}
	}
	/* a new pair: by name while there is room, else under "other" */
	if (s->ncat_drops >= SINK_CAT_NAMED && strcmp(cat, "other")) {
		sink_count_cat(s, "other", reason, n);
		return;
	}
	if (s->ncat_drops >= SINK_CAT_DROPS)
		return;         /* 18 named + one "other" per reason: never */
	d = &s->cat_drops[s->ncat_drops++];
	memset(d->cat, 0, sizeof(d->cat));
	memcpy(d->cat, cat, strnlen(cat, OBX_CAT_MAX - 1));
	d->reason = reason;
	d->n = n;
}

int sink_idle(const struct sink *s)
{
	return s->inflight == 0 && s->naside == 0 &&
	       s->read_seq >= spool_next_seq(s->spool);
}

void sink_stop(struct sink *s)
{
	if (s && s->ops && !s->disabled && s->ops->stop)
		s->ops->stop(s);
}

int sink_more(const struct sink *s)
{
	return s->reading ||
	       ((s->read_seq < spool_visible(s->spool) ||
		 sink_aside_due(s) <= log_mono_ns()) &&
		s->inflight < sink_limit(s));
}
