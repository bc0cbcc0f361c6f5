/* stats.c - publishes the broker's counters into the shm stats and sink
 * pages, under their seqlocks: seq odd while writing (release fence after
 * the odd store, release store of the even value at the end), so readers
 * (outbox stat, obx_sink_state) retry until they see the same even seq
 * before and after their copy.
 */
#define _GNU_SOURCE
#include <string.h>

#include "broker.h"

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

/* A restarted broker continues the counters of the one before it: they
 * live in the segment, which outlived it. */
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
	b->dropped_spool_full = g->dropped_spool_full;
	b->dropped_spool_error = g->dropped_spool_error;
}

/* Per-sink counters carried over a restart, matched by name. The spool's
 * own drop count restarts at zero, so what the page had is the base. */
void stats_restore_sink(struct broker *b, struct sink *s)
{
	const struct obx_sink_page *kp = b->seg.sinks;
	uint32_t i, n = kp->nsinks > OBX_MAX_SINKS ? OBX_MAX_SINKS : kp->nsinks;

	for (i = 0; i < n; i++) {
		const struct obx_sink_shm *o = &kp->sink[i];

		if (!o->in_use || strncmp(o->name, s->cfg.name,
					  sizeof(o->name)) != 0)
			continue;
		s->c = o->c;
		s->c.inflight = 0;
		return;
	}
}

static void stats_fill_global(struct broker *b, struct obx_stats *g)
{
	struct spool_stats ss;
	uint64_t e, f, t, l;

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
	g->dropped_spool_full = b->dropped_spool_full + ss.dropped_full;
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
	memcpy(o->cats, s->cats, sizeof(o->cats));
	memcpy(o->cat_until_ns, s->cat_until_ns, sizeof(o->cat_until_ns));
	o->c = s->c;
	/* drop-oldest deletions are counted by the spool */
	o->c.dropped_spool_full = s->c.dropped_spool_full + ss.dropped_full;
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
	stats_end(&kp->seq);
}
