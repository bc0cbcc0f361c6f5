/* stats.c - publishes the broker's counters into the shm stats and sink
 * pages, under their seqlocks: seq odd while writing (release fence after
 * the odd store, release store of the even value at the end), so readers
 * (outbox stat, obx_sink_state) retry until they see the same even seq
 * before and after their copy.
 */
#define _GNU_SOURCE
#include <msgpack.h>
#include <stddef.h>
#include <string.h>

#include "broker.h"
#include "mpcheck.h"

static void stats_begin(_Atomic uint64_t *seq)
{
	atomic_store_explicit(seq, atomic_load_explicit(seq,
			      memory_order_relaxed) + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
}

static void stats_end(_Atomic uint64_t *seq)
{
	atomic_store_explicit(seq, atomic_load_explicit(seq,
			      memory_order_relaxed) + 1, memory_order_release);
}

/* ---- counters across restarts ---------------------------------------
 *
 * Three homes, so that after any sequence of kills each counter is
 * exactly what happened to the records (DESIGN.md, "Counters and the
 * identity"):
 * - ring-tied (what the drain did with a ring record: consumed,
 *   dropped_invalid, unknown_sink / unknown_routed, dropped_spool_error,
 *   spool_full refusals): in the drain journal, written by every flush
 *   with the ring position it is exact at; a restarted broker takes them
 *   and passes over the ring records before that position;
 * - seq-tied (the fate of a spooled record: delivered, the sinks' drop
 *   reasons; the spool's own corrupt and dropped_full): in each sink's
 *   spool checkpoint, written with the done-set they go with;
 * - the rest (producers' counts, ring recovery, requests, responses):
 *   the stats page, which outlives the broker (published every 100 ms,
 *   so up to 100 ms of these may be missing after a kill).
 */

/* the seq-tied counters of a sink, handed to its spool's checkpoint */
static const size_t stats_seq_tied[] = {
	offsetof(struct obx_sink_counters, delivered_events),
	offsetof(struct obx_sink_counters, delivered_batches),
	offsetof(struct obx_sink_counters, dropped_rejected),
	offsetof(struct obx_sink_counters, dropped_retries_exhausted),
	offsetof(struct obx_sink_counters, dropped_expired),
	offsetof(struct obx_sink_counters, dropped_rate_limited),
	offsetof(struct obx_sink_counters, dropped_too_large),
	offsetof(struct obx_sink_counters, dropped_invalid),
};
#define STATS_SEQ_TIED (sizeof(stats_seq_tied) / sizeof(stats_seq_tied[0]))

static uint64_t *stats_ctr(struct obx_sink_counters *c, size_t off)
{
	return (uint64_t *)(void *)((uint8_t *)c + off);
}

void stats_sink_acked(struct sink *s)
{
	uint64_t v[STATS_SEQ_TIED];
	size_t i;

	for (i = 0; i < STATS_SEQ_TIED; i++)
		v[i] = *stats_ctr(&s->c, stats_seq_tied[i]);
	spool_set_base(s->spool, v, (uint32_t)STATS_SEQ_TIED);
}

/* The sink read up to s->read_seq: its word on the sink page at once, not
 * at the next publish (a kill -9 in between would lose the reads of the
 * last 100 ms, the ones most likely out). One plain store per batch read;
 * the publish copies the same value. */
void stats_sink_read(struct sink *s)
{
	struct obx_sink_page *kp = s->b->seg.sinks;
	struct obx_sink_shm *o;

	if (s->read_seq <= s->c.read_pos)
		return;
	s->c.read_pos = s->read_seq;
	if (!kp || s->idx < 0 || s->idx >= (int)OBX_MAX_SINKS)
		return;
	o = &kp->sink[s->idx];
	/* the entry is this sink's unless a reload moved the sinks since
	 * the last publish (which will then write it) */
	if (o->in_use && !strncmp(o->name, s->cfg.name, sizeof(o->name)))
		__atomic_store_n(&o->c.read_pos, s->read_seq,
				 __ATOMIC_RELAXED);
}

/* What the broker before this one had read for delivery (its page word):
 * the spool counts re-sends below it `redelivered`. The word is of the
 * spool whose checkpoint names this ring: a new spool (a wiped or moved
 * spool_dir: its seqs start again, below the old word) or another
 * ring's is not the one it speaks of. A position past what can have been
 * read - the spool's end plus every batch slot's worth of records read
 * from memory before their flush - is not this spool's either (a
 * producer's write): ignored. */
static void stats_restore_read_pos(struct sink *s, uint64_t pos)
{
	uint64_t cap = spool_next_seq(s->spool) +
		       (uint64_t)SINK_MAX_INFLIGHT * s->cfg.batch_max_events;

	s->c.read_pos = pos <= cap && spool_of_ring(s->spool) ? pos : 0;
	if (pos > cap && spool_of_ring(s->spool))
		log_warn("sink %s: the shared page's read position %llu is "
			 "past its spool (%llu): ignored, the redelivered "
			 "estimate starts from the checkpoint's", s->cfg.name,
			 (unsigned long long)pos,
			 (unsigned long long)spool_next_seq(s->spool));
	spool_note_sent(s->spool, s->c.read_pos);
}

/* A restarted broker continues the counters of the one before it: they
 * live in the segment, which outlived it. (The ring-tied ones are taken
 * from the drain journal afterwards, stats_restore_mark().) */
void stats_restore(struct broker *b)
{
	const struct obx_stats *g = &b->seg.stats->g;

	b->rc.retired_emitted = g->retired_emitted;
	b->rc.retired_full = g->retired_full;
	b->rc.retired_too_large = g->retired_too_large;
	b->rc.retired_late = g->retired_late;
	b->rc.st.consumed = g->consumed;
	b->rc.st.unblocked = g->ring_unblocked;
	b->rc.st.damaged = g->ring_damaged;
	b->rc.st.stalls = g->ring_stalls;
	b->rc.st.gaps = g->ring_gaps;
	b->rc.st.aborted = g->ring_aborted;
	b->rc.st.tail_repairs = g->tail_repairs;
	b->rc.st.skips = g->ring_skips;
	b->rc.st.stall_kills = g->ring_stall_kills;
	b->seg_repairs = g->segment_repairs;
	b->segs_replaced = g->segments_replaced;
	b->dropped_invalid = g->dropped_invalid;
	b->unknown_sink = g->unknown_sink;
	b->dropped_spool_error = g->dropped_spool_error;
}

/* The drops by category the page holds for its sink i (a page written
 * by an older broker holds none: zeros). */
static void stats_restore_cat_drops(const struct obx_sink_page *kp,
				    uint32_t i, struct sink *s)
{
	uint32_t j, n = kp->ncat_drops < OBX_MAX_CAT_DROPS ?
			kp->ncat_drops : OBX_MAX_CAT_DROPS;
	char cat[OBX_CAT_MAX];

	s->ncat_drops = 0;
	for (j = 0; j < n; j++) {
		const struct obx_cat_drop *d = &kp->cat_drops[j];

		if (d->sink != i || d->reason < OBX_DROP_REJECTED ||
		    d->reason > OBX_DROP_INVALID)
			continue;
		memcpy(cat, d->cat, sizeof(cat));
		cat[sizeof(cat) - 1] = 0;
		sink_count_cat(s, cat, d->reason, d->n);
	}
}

/* Per-sink counters carried over a restart, matched by name: the page's,
 * then the seq-tied ones from the spool's checkpoint. The spool keeps
 * its own totals (dropped_full, corrupt, redelivered); the refusals are
 * the journal's (s->c.dropped_spool_full holds their base). */
void stats_restore_sink(struct broker *b, struct sink *s)
{
	const struct obx_sink_page *kp = b->seg.sinks;
	uint32_t i, n = kp->nsinks > OBX_MAX_SINKS ? OBX_MAX_SINKS : kp->nsinks;
	uint64_t v[SPF_CK_BASE_MAX];

	for (i = 0; i < n; i++) {
		const struct obx_sink_shm *o = &kp->sink[i];

		if (!o->in_use || strncmp(o->name, s->cfg.name,
					  sizeof(o->name)) != 0)
			continue;
		s->c = o->c;
		s->c.inflight = 0;
		stats_restore_cat_drops(kp, i, s);
		stats_restore_read_pos(s, o->c.read_pos);
		break;
	}
	s->c.dropped_spool_full = 0;
	if (spool_base(s->spool, v, SPF_CK_BASE_MAX) == STATS_SEQ_TIED)
		for (i = 0; i < STATS_SEQ_TIED; i++)
			*stats_ctr(&s->c, stats_seq_tied[i]) = v[i];
	stats_sink_acked(s);
}

/* ---- the drain journal's counters ----------------------------------------
 * {"consumed", "dropped_invalid", "unknown_sink", "dropped_spool_error",
 *  "sinks": {name: [spool_full refusals, dropped_spool_error,
 *                   unknown_routed]}} */

static void mp_kv(msgpack_packer *pk, const char *k, uint64_t v)
{
	msgpack_pack_str_with_body(pk, k, strlen(k));
	msgpack_pack_uint64(pk, v);
}

uint32_t stats_mark(struct broker *b, uint8_t *buf, uint32_t cap)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	uint32_t n = 0;
	int i;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 5);
	mp_kv(&pk, "consumed", b->rc.st.consumed);
	mp_kv(&pk, "dropped_invalid", b->dropped_invalid + b->rc.st.bad_len);
	mp_kv(&pk, "unknown_sink", b->unknown_sink);
	mp_kv(&pk, "dropped_spool_error", b->dropped_spool_error);
	msgpack_pack_str_with_body(&pk, "sinks", 5);
	msgpack_pack_map(&pk, (size_t)b->nsinks);
	for (i = 0; i < b->nsinks; i++) {
		struct sink *s = b->sinks[i];

		msgpack_pack_str_with_body(&pk, s->cfg.name,
					   strlen(s->cfg.name));
		msgpack_pack_array(&pk, 3);
		msgpack_pack_uint64(&pk, s->c.dropped_spool_full +
				    spool_refused(s->spool));
		msgpack_pack_uint64(&pk, s->c.dropped_spool_error);
		msgpack_pack_uint64(&pk, s->c.unknown_routed);
	}
	if (sb.data && sb.size <= cap) {
		memcpy(buf, sb.data, sb.size);
		n = (uint32_t)sb.size;
	}
	msgpack_sbuffer_destroy(&sb);
	return n;
}

static bool mark_u64(const msgpack_object *v, uint64_t *out)
{
	if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return false;
	*out = v->via.u64;
	return true;
}

static bool mark_key(const msgpack_object *k, const char *s)
{
	return k->type == MSGPACK_OBJECT_STR &&
	       k->via.str.size == strlen(s) &&
	       !memcmp(k->via.str.ptr, s, k->via.str.size);
}

static struct sink *mark_sink(struct broker *b, const msgpack_object *k)
{
	int i;

	if (k->type != MSGPACK_OBJECT_STR)
		return NULL;
	for (i = 0; i < b->nsinks; i++)
		if (mark_key(k, b->sinks[i]->cfg.name))
			return b->sinks[i];
	return NULL;
}

static void mark_sinks(struct broker *b, const msgpack_object *m)
{
	uint32_t i;

	if (m->type != MSGPACK_OBJECT_MAP)
		return;
	for (i = 0; i < m->via.map.size; i++) {
		const msgpack_object *v = &m->via.map.ptr[i].val;
		struct sink *s = mark_sink(b, &m->via.map.ptr[i].key);
		uint64_t x[3];

		if (!s || v->type != MSGPACK_OBJECT_ARRAY ||
		    v->via.array.size != 3 ||
		    !mark_u64(&v->via.array.ptr[0], &x[0]) ||
		    !mark_u64(&v->via.array.ptr[1], &x[1]) ||
		    !mark_u64(&v->via.array.ptr[2], &x[2]))
			continue;
		s->c.dropped_spool_full = x[0];
		s->c.dropped_spool_error = x[1];
		s->c.unknown_routed = x[2];
	}
}

int stats_restore_mark(struct broker *b, uint64_t *ring_pos)
{
	struct spool_mark m;
	msgpack_unpacked u;
	uint32_t i;
	int ok = 0;

	if (!spool_set_loaded_mark(b->spool, &m) ||
	    m.ring_id != b->seg.segment_id ||
	    mp_check(m.blob, m.blob_len))	/* bounded allocations */
		return 0;
	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, m.blob, m.blob_len, NULL) ==
	    MSGPACK_UNPACK_SUCCESS && u.data.type == MSGPACK_OBJECT_MAP) {
		for (i = 0; i < u.data.via.map.size; i++) {
			const msgpack_object *k = &u.data.via.map.ptr[i].key;
			const msgpack_object *v = &u.data.via.map.ptr[i].val;

			if (mark_key(k, "consumed"))
				ok |= mark_u64(v, &b->rc.st.consumed);
			else if (mark_key(k, "dropped_invalid"))
				mark_u64(v, &b->dropped_invalid);
			else if (mark_key(k, "unknown_sink"))
				mark_u64(v, &b->unknown_sink);
			else if (mark_key(k, "dropped_spool_error"))
				mark_u64(v, &b->dropped_spool_error);
			else if (mark_key(k, "sinks"))
				mark_sinks(b, v);
		}
		b->rc.st.bad_len = 0;	/* in dropped_invalid */
	}
	msgpack_unpacked_destroy(&u);
	*ring_pos = m.ring_pos;
	return ok;
}

static void stats_fill_global(struct broker *b, struct obx_stats *g)
{
	struct spool_stats ss;
	uint64_t e, f, t, l;
	int i;

	ring_totals(&b->rc, &e, &f, &t, &l);
	spool_set_get_stats(b->spool, &ss);
	g->emitted = e;
	g->dropped_ring_full = f;
	g->dropped_too_large = t;
	g->dropped_late = l;
	g->dropped_invalid = b->dropped_invalid + b->rc.st.bad_len;
	g->ring_unblocked = b->rc.st.unblocked;
	g->ring_damaged = b->rc.st.damaged;
	g->ring_stalls = b->rc.st.stalls;
	g->consumed = b->rc.st.consumed;
	g->spool_bytes = ss.bytes;
	g->spool_segments = ss.segments;
	/* every sink's: its refusals (base + this broker's) and its
	 * spool's drops */
	g->dropped_spool_full = ss.refused_full + ss.dropped_full;
	for (i = 0; i < b->nsinks; i++)
		g->dropped_spool_full += b->sinks[i]->c.dropped_spool_full;
	g->dropped_spool_error = b->dropped_spool_error;
	g->spool_corrupt = ss.corrupt;
	g->unknown_sink = b->unknown_sink;
	g->retired_emitted = b->rc.retired_emitted;
	g->retired_full = b->rc.retired_full;
	g->retired_too_large = b->rc.retired_too_large;
	g->retired_late = b->rc.retired_late;
	g->ring_gaps = b->rc.st.gaps;
	g->ring_aborted = b->rc.st.aborted;
	g->tail_repairs = b->rc.st.tail_repairs;
	g->ring_skips = b->rc.st.skips;
	g->ring_stall_kills = b->rc.st.stall_kills;
	g->segment_repairs = b->seg_repairs;
	g->segments_replaced = b->segs_replaced;
	g->redelivered = ss.redelivered;
	g->spool_disk_free = ss.disk_free;
	g->spool_write_errors = ss.write_errors;
	g->wakeups = b->wakeups;
	g->drain_looks = b->drain_looks;
	g->spool_flushes = b->spool_flushes;
	g->timer_wakeups = b->timer_wakeups;
}

static void stats_fill_sink(struct sink *s, struct obx_sink_shm *o)
{
	struct spool_stats ss;

	spool_get_stats(s->spool, &ss);
	s->c.queued_events = ss.queued_events;
	s->c.queued_bytes = ss.queued_bytes;
	memset(o->name, 0, sizeof(o->name));
	memcpy(o->name, s->cfg.name, strnlen(s->cfg.name, sizeof(o->name) - 1));
	o->in_use = 1;
	o->state = s->state;
	o->until_ns = s->until_ns;
	o->ncats = s->ncats;
	o->event_max = s->event_max;
	memcpy(o->cats, s->cats, sizeof(o->cats));
	memcpy(o->cat_until_ns, s->cat_until_ns, sizeof(o->cat_until_ns));
	o->c = s->c;
	/* refusals (base + this broker's) and the spool's own drops */
	o->c.dropped_spool_full = s->c.dropped_spool_full + ss.refused_full +
				  ss.dropped_full;
	o->c.redelivered = ss.redelivered;
}

/* Every sink's drops by category into the page's one table, in sink
 * order; what does not fit is left out and said (cat_drops_more). */
static void stats_fill_cat_drops(struct broker *b, struct obx_sink_page *kp)
{
	uint32_t n = 0, more = 0, j;
	int i;

	for (i = 0; i < b->nsinks && i < (int)OBX_MAX_SINKS; i++) {
		const struct sink *s = b->sinks[i];

		for (j = 0; j < s->ncat_drops; j++) {
			struct obx_cat_drop *d = &kp->cat_drops[n];

			if (n == OBX_MAX_CAT_DROPS) {
				more = 1;
				break;
			}
			memset(d, 0, sizeof(*d));
			d->sink = (uint8_t)i;
			d->reason = s->cat_drops[j].reason;
			memcpy(d->cat, s->cat_drops[j].cat, sizeof(d->cat));
			d->n = s->cat_drops[j].n;
			n++;
		}
	}
	kp->ncat_drops = n;
	kp->cat_drops_more = more;
}

void stats_publish(struct broker *b)
{
	struct obx_stats_page *sp = b->seg.stats;
	struct obx_sink_page *kp = b->seg.sinks;
	struct obx_stats g;
	int i;

	memset(&g, 0, sizeof(g));
	stats_fill_global(b, &g);
	stats_begin(&sp->seq);
	sp->g = g;
	stats_end(&sp->seq);

	stats_begin(&kp->seq);
	for (i = 0; i < b->nsinks && i < (int)OBX_MAX_SINKS; i++)
		stats_fill_sink(b->sinks[i], &kp->sink[i]);
	for (; i < (int)OBX_MAX_SINKS; i++)
		kp->sink[i].in_use = 0;
	kp->nsinks = (uint32_t)b->nsinks;
	kp->default_sink = (uint32_t)b->default_sink;
	stats_fill_cat_drops(b, kp);
	stats_end(&kp->seq);
}
