/* metrics.c - the counter tables, snapshots of a segment's pages, and
 * their Prometheus text exposition. See metrics.h.
 *
 * Readers only: nothing here writes to the segment. The pages are
 * untrusted (any process that can open the segment can scribble on
 * them): every count that bounds a loop is clamped and every name is
 * copied with a length limit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "json.h"
#include "metrics.h"
#include "slots.h"

#define NS_PER_S     UINT64_C(1000000000)
#define NS_PER_MS    UINT64_C(1000000)
#define SEQ_WAIT_NS  NS_PER_S          /* give up on a stuck seqlock */
#define SEQ_LIVE_NS  (5 * NS_PER_S)    /* ... or on one that never settles */

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ---- the tables ----------------------------------------------------------
 *
 * Families follow the Prometheus / OpenTelemetry naming rules: a unit or
 * the counted thing in the name, counters end in _total, one family per
 * quantity with a label where rows are kinds of the same thing (drop
 * reasons, status classes). The JSON keys are PRODUCT.md section 6's. */

#define G(f, gauge, role, family, lk, lv, help) \
	{ #f, offsetof(struct obx_stats, f), gauge, role, family, lk, lv, help }
#define K(f, gauge, role, family, lk, lv, help) \
	{ #f, offsetof(struct obx_sink_counters, f), gauge, role, family, lk, \
	  lv, help }
#define DROPPED_HELP "Events dropped, by reason (each drop has exactly one)."

/* PRODUCT.md section 6 first, in its order, then the extras */
const struct mx_ctr mx_global[] = {
	G(emitted, 0, MX_INFO, "events_emitted_total", NULL, NULL,
	  "Events producers tried to emit (live and retired producers)."),
	G(dropped_ring_full, 0, MX_DROP, "events_dropped_total", "reason",
	  "ring_full", DROPPED_HELP),
	G(dropped_too_large, 0, MX_DROP, "events_dropped_total", "reason",
	  "too_large", DROPPED_HELP),
	G(dropped_invalid, 0, MX_DROP, "events_dropped_total", "reason",
	  "invalid", DROPPED_HELP),
	G(ring_unblocked, 0, MX_DROP, "events_dropped_total", "reason",
	  "producer_died", DROPPED_HELP),
	G(consumed, 0, MX_INFO, "ring_records_consumed_total", NULL, NULL,
	  "Records the broker took from the ring."),
	G(spool_bytes, 1, MX_INFO, "spool_bytes", NULL, NULL,
	  "Bytes in the spool, on disk and buffered."),
	G(spool_segments, 1, MX_INFO, "spool_segments", NULL, NULL,
	  "Spool segment files."),
	G(dropped_spool_full, 0, MX_DROP, "events_dropped_total", "reason",
	  "spool_full", DROPPED_HELP),
	G(spool_corrupt, 0, MX_DROP, "events_dropped_total", "reason",
	  "spool_corrupt", DROPPED_HELP),
	G(dropped_late, 0, MX_DROP, "events_dropped_total", "reason", "late",
	  DROPPED_HELP),
	G(ring_damaged, 0, MX_INFO, "ring_damaged_words_total", NULL, NULL,
	  "Garbage words skipped in the ring."),
	G(ring_stalls, 0, MX_INFO, "ring_stalls_total", NULL, NULL,
	  "Claims of live producers that held the ring past stall_timeout."),
	G(ring_stall_kills, 0, MX_INFO, "ring_stall_kills_total", NULL, NULL,
	  "Owners of such claims SIGKILLed (stall_action = kill)."),
	G(ring_skips, 0, MX_INFO, "ring_skips_total", NULL, NULL,
	  "Live claims the broker went past to deliver what lay behind."),
	G(ring_aborted, 0, MX_INFO, "ring_aborted_total", NULL, NULL,
	  "Reservations aborted by their producer (not emitted)."),
	G(tail_repairs, 0, MX_INFO, "ring_tail_repairs_total", NULL, NULL,
	  "Ring tail found damaged (behind, misaligned, too far) and put back."),
	G(segment_repairs, 0, MX_INFO, "segment_repairs_total", NULL, NULL,
	  "Shm object found truncated or its header damaged, and repaired."),
	G(segments_replaced, 0, MX_INFO, "segments_replaced_total", NULL, NULL,
	  "Damaged or foreign shm objects moved aside at start."),
	G(dropped_spool_error, 0, MX_DROP, "events_dropped_total", "reason",
	  "spool_error", DROPPED_HELP),
	G(unknown_sink, 0, MX_INFO, "events_unknown_sink_total", NULL, NULL,
	  "Events for an unknown sink, routed to the default sink."),
	G(redelivered, 0, MX_INFO, "events_redelivered_total", NULL, NULL,
	  "Events sent again after a broker restart (possible duplicates)."),
	G(spool_disk_free, 1, MX_INFO, "spool_disk_free_bytes", NULL, NULL,
	  "Bytes free on the spool's file system (last look)."),
	G(spool_write_errors, 0, MX_INFO, "spool_write_errors_total", NULL,
	  NULL, "Failed spool writes since the broker started."),
	G(wakeups, 0, MX_INFO, "ring_wakeups_total", NULL, NULL,
	  "Times a producer woke the broker (ring past the fill mark, or "
	  "the first event after an idle second)."),
	G(drain_looks, 0, MX_INFO, "ring_looks_total", NULL, NULL,
	  "Times the broker looked at the ring on its own schedule "
	  "(every drain_latency while events flow)."),
	G(spool_flushes, 0, MX_INFO, "spool_flushes_total", NULL, NULL,
	  "Spool flushes started (a write and the drain journal; at a "
	  "trickle one per ~100 ms, not one per look)."),
	G(timer_wakeups, 0, MX_INFO, "timer_wakeups_total", NULL, NULL,
	  "Times the broker's sleep ended on its own timer (a look, "
	  "housekeeping, a sink's timer), not on a completion or a "
	  "producer's wake-up."),
};
const size_t mx_nglobal = NELEM(mx_global);

#define SINK_DROPPED_HELP "Events of the sink dropped, by reason " \
	"(spool_full and spool_error are its share of the global reasons)."
#define RESP_HELP "Responses from the upstream, by status class."

const struct mx_ctr mx_sink[] = {
	K(queued_events, 1, MX_QUEUE, "sink_queued_events", NULL, NULL,
	  "Events in the spool not yet delivered or dropped."),
	K(queued_bytes, 1, MX_INFO, "sink_queued_bytes", NULL, NULL,
	  "Spool bytes not yet acknowledged."),
	K(requests, 0, MX_INFO, "sink_requests_total", NULL, NULL,
	  "Requests sent upstream."),
	K(responses_2xx, 0, MX_INFO, "sink_responses_total", "code", "2xx",
	  RESP_HELP),
	K(responses_3xx, 0, MX_INFO, "sink_responses_total", "code", "3xx",
	  RESP_HELP),
	K(responses_4xx, 0, MX_INFO, "sink_responses_total", "code", "4xx",
	  RESP_HELP),
	K(responses_5xx, 0, MX_INFO, "sink_responses_total", "code", "5xx",
	  RESP_HELP),
	K(responses_other, 0, MX_INFO, "sink_responses_total", "code",
	  "other", RESP_HELP),
	K(network_errors, 0, MX_INFO, "sink_network_errors_total", NULL, NULL,
	  "Requests that failed without a response."),
	K(requests_cancelled, 0, MX_INFO, "sink_requests_cancelled_total",
	  NULL, NULL,
	  "Requests cancelled without an outcome (shutdown, reload)."),
	K(retries, 0, MX_INFO, "sink_retries_total", NULL, NULL,
	  "Batches sent again after a failure."),
	K(delivered_events, 0, MX_DONE, "sink_events_delivered_total", NULL,
	  NULL, "Events accepted by the upstream."),
	K(delivered_batches, 0, MX_INFO, "sink_batches_delivered_total", NULL,
	  NULL, "Batches accepted by the upstream."),
	K(dropped_rejected, 0, MX_DROP, "sink_events_dropped_total", "reason",
	  "rejected", SINK_DROPPED_HELP),
	K(dropped_retries_exhausted, 0, MX_DROP, "sink_events_dropped_total",
	  "reason", "retries_exhausted", SINK_DROPPED_HELP),
	K(dropped_expired, 0, MX_DROP, "sink_events_dropped_total", "reason",
	  "expired", SINK_DROPPED_HELP),
	K(dropped_rate_limited, 0, MX_DROP, "sink_events_dropped_total",
	  "reason", "rate_limited", SINK_DROPPED_HELP),
	K(splits, 0, MX_INFO, "sink_batch_splits_total", NULL, NULL,
	  "Batches split in halves after a 413."),
	K(inflight, 1, MX_INFO, "sink_requests_inflight", NULL, NULL,
	  "Requests in flight."),
	K(dropped_too_large, 0, MX_DROP, "sink_events_dropped_total",
	  "reason", "too_large", SINK_DROPPED_HELP),
	K(dropped_invalid, 0, MX_DROP, "sink_events_dropped_total", "reason",
	  "invalid", SINK_DROPPED_HELP),
	K(dropped_spool_full, 0, MX_PART, "sink_events_dropped_total",
	  "reason", "spool_full", SINK_DROPPED_HELP),
	K(dropped_spool_error, 0, MX_PART, "sink_events_dropped_total",
	  "reason", "spool_error", SINK_DROPPED_HELP),
	K(unknown_routed, 0, MX_INFO, "sink_events_unknown_routed_total",
	  NULL, NULL, "Events for unknown sinks routed to this sink."),
	K(redelivered, 0, MX_INFO, "sink_events_redelivered_total", NULL,
	  NULL, "Events of the sink sent again after a broker restart."),
	K(held_events, 1, MX_INFO, "sink_events_held", NULL, NULL,
	  "Events of a rate-limited category held for later (on_rate_limit "
	  "= hold), part of the queued events."),
};
const size_t mx_nsink = NELEM(mx_sink);

/* ---- small helpers ------------------------------------------------------ */

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

const char *mx_state_name(uint32_t st)
{
	switch (st) {
	case OBX_SINK_OK:
		return "ok";
	case OBX_SINK_BACKOFF:
		return "backoff";
	case OBX_SINK_RATE_LIMITED:
		return "rate_limited";
	}
	return "unknown";
}

const char *mx_drop_reason_name(uint32_t r)
{
	switch (r) {
	case OBX_DROP_REJECTED:
		return "rejected";
	case OBX_DROP_RETRIES_EXHAUSTED:
		return "retries_exhausted";
	case OBX_DROP_EXPIRED:
		return "expired";
	case OBX_DROP_RATE_LIMITED:
		return "rate_limited";
	case OBX_DROP_TOO_LARGE:
		return "too_large";
	case OBX_DROP_INVALID:
		return "invalid";
	}
	return "unknown";
}

uint32_t mx_ncat_drops(const struct mx_snap *sn)
{
	return sn->kp->ncat_drops < OBX_MAX_CAT_DROPS ?
	       sn->kp->ncat_drops : OBX_MAX_CAT_DROPS;
}

int mx_cat_drop(const struct mx_snap *sn, uint32_t j, uint32_t *sink,
		char *cat, size_t catlen, const char **reason, uint64_t *n)
{
	const struct obx_cat_drop *d = &sn->kp->cat_drops[j];

	if (j >= mx_ncat_drops(sn) || d->sink >= sn->nsinks ||
	    !sn->kp->sink[d->sink].in_use)
		return -1;
	*sink = d->sink;
	mx_shm_str(cat, catlen, d->cat, OBX_CAT_MAX);
	*reason = mx_drop_reason_name(d->reason);
	*n = d->n;
	return 0;
}

void mx_shm_str(char *out, size_t outlen, const char *in, size_t inlen)
{
	size_t n = strnlen(in, inlen);

	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, in, n);
	out[n] = 0;
}

void mx_sink_name(const struct mx_snap *sn, uint32_t i, char *out,
		  size_t len)
{
	mx_shm_str(out, len, sn->kp->sink[i].name, OBX_NAME_MAX);
	if (!out[0])
		snprintf(out, len, "#%u", i);
}

uint64_t mx_ring_used(const struct mx_snap *sn)
{
	uint64_t used = sn->tail - sn->head;

	return used > sn->seg->g.ring_size ? sn->seg->g.ring_size : used;
}

/* ---- snapshot ------------------------------------------------------------ */

/* Retries while the writer holds the seqlock (odd) or moved it during
 * the copy. The acquire load of seq and the acquire fence after the copy
 * pair with the broker's release fence after its odd store and its
 * release store of the even value (broker/stats.c). A broker that died
 * mid-update leaves seq odd for good: once seq has not moved for
 * SEQ_WAIT_NS the (possibly torn) copy is kept and -EAGAIN returned. A
 * writer that keeps moving it is alive: the reader waits for a quiet
 * moment, up to SEQ_LIVE_NS in all. */
int mx_seq_read(const _Atomic uint64_t *seq, const void *src, void *dst,
		size_t len)
{
	uint64_t start = mono_ns(), moved = start, last = UINT64_MAX, s1, s2;
	unsigned spins = 0;

	for (;;) {
		s1 = atomic_load_explicit(seq, memory_order_acquire);
		memcpy(dst, src, len);
		if (!(s1 & 1)) {
			atomic_thread_fence(memory_order_acquire);
			s2 = atomic_load_explicit(seq, memory_order_relaxed);
			if (s1 == s2)
				return 0;
		}
		if (++spins < 1000)
			continue;
		spins = 0;
		if (s1 != last) {
			last = s1;
			moved = mono_ns();
		}
		if (mono_ns() - moved > SEQ_WAIT_NS ||
		    mono_ns() - start > SEQ_LIVE_NS)
			return -EAGAIN;
		usleep(100);
	}
}

static void snap_broker(struct mx_snap *sn)
{
	const struct obx_consumer_page *c = sn->seg->cons;
	uint64_t start = 0;
	char st = 0;

	sn->broker_pid = atomic_load(&c->broker_pid);
	sn->broker_start = atomic_load(&c->broker_start);
	sn->beat_ns = atomic_load(&c->broker_beat_ns);
	sn->boot_ns = atomic_load(&c->broker_boot_ns);
	sn->head = atomic_load(&c->head);
	sn->tail = atomic_load(&sn->seg->hdr->tail);
	sn->alive = 0;
	if (!sn->broker_pid) {
		sn->why_dead = "no broker has published its pid";
	} else if (slot_proc_stat((pid_t)sn->broker_pid, &start, &st) < 0) {
		sn->why_dead = "its process is gone";
	} else if (st == 'Z' || st == 'X' || st == 'x') {
		sn->why_dead = "its process is a zombie";
	} else if (sn->broker_start && start != sn->broker_start) {
		/* same pid, another process: the broker died long ago */
		sn->why_dead = "its pid now belongs to another process";
	} else {
		sn->alive = 1;
	}
}

static int snap_producers(struct mx_snap *sn)
{
	uint32_t i, n = sn->seg->g.nslots;

	sn->prods = calloc(n ? n : 1, sizeof(*sn->prods));
	if (!sn->prods)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		const struct obx_slot *s = &sn->seg->slots[i];
		struct mx_prod *p;

		if (atomic_load(&s->state) != OBX_SLOT_LIVE)
			continue;
		p = &sn->prods[sn->nprods++];
		p->slot = i;
		p->pid = atomic_load(&s->pid);
		p->emitted = slot_emitted(s);
		p->dropped = slot_dropped(s);
	}
	return 0;
}

uint64_t mx_sink_dropped(const struct obx_sink_shm *k)
{
	uint64_t d = 0;
	size_t i;

	for (i = 0; i < mx_nsink; i++)
		if (mx_sink[i].role == MX_DROP || mx_sink[i].role == MX_PART)
			d += mx_get(&k->c, &mx_sink[i]);
	return d;
}

/* The identity of PRODUCT.md section 6, as `outbox stat` checks it:
 *
 *   emitted == delivered + dropped + queued
 *
 *   emitted    the stats page's `emitted`: every emit attempt of live
 *              and retired producers (aborted reservations excluded).
 *   delivered  sum over sinks of delivered_events.
 *   queued     sum over sinks of queued_events (appended to the spool,
 *              not yet acknowledged).
 *   dropped    every MX_DROP row: the global reasons, plus each sink's.
 *
 * Not in it, on purpose: a sink's dropped_spool_full / _error (MX_PART)
 * are its share of the global counters of the same name (the broker
 * counts both for the same event); ring_stalls, ring_skips and the
 * repair counters count events of the ring, not records (ring_aborted is
 * already subtracted from emitted); ring_damaged counts garbage words,
 * not events; unknown_sink / unknown_routed are
 * routed, not dropped; consumed is an intermediate stage.
 *
 * It holds at a quiet moment only: records still in the ring (or in
 * the broker between ring and spool) are in none of the terms. */
static void snap_compute(struct mx_snap *sn)
{
	uint32_t i;
	size_t j;

	sn->delivered = sn->dropped = sn->queued = 0;
	for (j = 0; j < mx_nglobal; j++)
		if (mx_global[j].role == MX_DROP)
			sn->dropped += mx_get(&sn->g, &mx_global[j]);
	for (i = 0; i < sn->nsinks; i++) {
		const struct obx_sink_shm *k = &sn->kp->sink[i];

		if (!k->in_use)
			continue;
		for (j = 0; j < mx_nsink; j++) {
			uint64_t v = mx_get(&k->c, &mx_sink[j]);

			if (mx_sink[j].role == MX_DROP)
				sn->dropped += v;
			else if (mx_sink[j].role == MX_QUEUE)
				sn->queued += v;
			else if (mx_sink[j].role == MX_DONE)
				sn->delivered += v;
		}
	}
	sn->identity_ok = sn->g.emitted ==
			  sn->delivered + sn->dropped + sn->queued;
}

int mx_snap_take(struct mx_snap *sn, const struct seg *seg)
{
	int rc = 0;

	memset(sn, 0, sizeof(*sn));
	sn->seg = seg;
	sn->taken_ns = mono_ns();
	sn->kp = malloc(sizeof(*sn->kp));
	if (!sn->kp)
		return -ENOMEM;
	if (mx_seq_read(&seg->stats->seq, &seg->stats->g, &sn->g,
			sizeof(sn->g)) < 0 ||
	    mx_seq_read(&seg->sinks->seq, seg->sinks, sn->kp,
			sizeof(*sn->kp)) < 0) {
		sn->torn = 1;
		rc = -EAGAIN;
	}
	sn->nsinks = sn->kp->nsinks > OBX_MAX_SINKS ? OBX_MAX_SINKS :
		     sn->kp->nsinks;
	snap_broker(sn);
	if (snap_producers(sn) < 0) {
		mx_snap_free(sn);
		return -ENOMEM;
	}
	snap_compute(sn);
	return rc;
}

void mx_snap_free(struct mx_snap *sn)
{
	free(sn->kp);
	free(sn->prods);
	sn->kp = NULL;
	sn->prods = NULL;
}

/* ---- Prometheus text exposition ---------------------------------------- */

/* Label values: backslash, double quote and line feed are escaped, per
 * the exposition format (not JSON: no \uXXXX, no other escapes). They
 * must be UTF-8 too: a name from shm is repaired first. */
static void prom_label(FILE *f, const char *key, const char *val)
{
	json_t *fixed = json_string_lossy(val, strlen(val));
	const char *s = fixed ? json_string_value(fixed) : "?";

	fprintf(f, "%s=\"", key);
	for (; *s; s++) {
		if (*s == '\\')
			fputs("\\\\", f);
		else if (*s == '"')
			fputs("\\\"", f);
		else if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
	fputc('"', f);
	json_decref(fixed);
}

static void prom_head(FILE *f, const char *family, int gauge,
		      const char *help)
{
	fprintf(f, "# HELP outbox_%s %s\n# TYPE outbox_%s %s\n", family, help,
		family, gauge ? "gauge" : "counter");
}

/* One sample: outbox_FAMILY{sink="S",K="V"} (each label optional). */
static void prom_sample(FILE *f, const char *family, const char *sink,
			const char *k, const char *v)
{
	fprintf(f, "outbox_%s", family);
	if (sink || k) {
		fputc('{', f);
		if (sink)
			prom_label(f, "sink", sink);
		if (sink && k)
			fputc(',', f);
		if (k)
			prom_label(f, k, v);
		fputc('}', f);
	}
	fputc(' ', f);
}

/* 1 when row i is the first of its family in the table. */
static int family_first(const struct mx_ctr *t, size_t i)
{
	size_t j;

	for (j = 0; j < i; j++)
		if (!strcmp(t[j].family, t[i].family))
			return 0;
	return 1;
}

static void prom_global(FILE *f, const struct mx_snap *sn)
{
	size_t i, j;

	for (i = 0; i < mx_nglobal; i++) {
		const struct mx_ctr *c = &mx_global[i];

		if (!family_first(mx_global, i))
			continue;
		prom_head(f, c->family, c->gauge, c->help);
		for (j = i; j < mx_nglobal; j++) {
			const struct mx_ctr *r = &mx_global[j];

			if (strcmp(r->family, c->family))
				continue;
			prom_sample(f, r->family, NULL, r->lkey, r->lval);
			fprintf(f, "%" PRIu64 "\n", mx_get(&sn->g, r));
		}
	}
}

static void prom_sinks(FILE *f, const struct mx_snap *sn)
{
	char name[OBX_NAME_MAX + 8];
	size_t i, j;
	uint32_t s;

	for (i = 0; i < mx_nsink; i++) {
		const struct mx_ctr *c = &mx_sink[i];

		if (!family_first(mx_sink, i))
			continue;
		prom_head(f, c->family, c->gauge, c->help);
		for (j = i; j < mx_nsink; j++) {
			const struct mx_ctr *r = &mx_sink[j];

			if (strcmp(r->family, c->family))
				continue;
			for (s = 0; s < sn->nsinks; s++) {
				const struct obx_sink_shm *k =
					&sn->kp->sink[s];

				if (!k->in_use)
					continue;
				mx_sink_name(sn, s, name, sizeof(name));
				prom_sample(f, r->family, name, r->lkey,
					    r->lval);
				fprintf(f, "%" PRIu64 "\n", mx_get(&k->c, r));
			}
		}
	}
}

static void prom_seconds(FILE *f, uint64_t ns)
{
	fprintf(f, "%" PRIu64 ".%03" PRIu64 "\n", ns / NS_PER_S,
		ns / NS_PER_MS % 1000);
}

static void prom_sink_states(FILE *f, const struct mx_snap *sn)
{
	static const uint32_t states[] = { OBX_SINK_OK, OBX_SINK_BACKOFF,
					   OBX_SINK_RATE_LIMITED };
	char name[OBX_NAME_MAX + 8], cat[OBX_CAT_MAX + 1];
	uint32_t i, s, c;

	prom_head(f, "sink_state", 1,
		  "Delivery state of the sink (1 for the current state).");
	for (i = 0; i < sn->nsinks; i++) {
		const struct obx_sink_shm *k = &sn->kp->sink[i];

		if (!k->in_use)
			continue;
		mx_sink_name(sn, i, name, sizeof(name));
		for (s = 0; s < NELEM(states); s++) {
			prom_sample(f, "sink_state", name, "state",
				    mx_state_name(states[s]));
			fprintf(f, "%d\n", k->state == states[s]);
		}
	}
	prom_head(f, "sink_state_until_seconds", 1,
		  "End of the backoff or rate limit, Unix time (0 when ok).");
	for (i = 0; i < sn->nsinks; i++) {
		const struct obx_sink_shm *k = &sn->kp->sink[i];

		if (!k->in_use)
			continue;
		mx_sink_name(sn, i, name, sizeof(name));
		prom_sample(f, "sink_state_until_seconds", name, NULL, NULL);
		prom_seconds(f, k->until_ns);
	}
	prom_head(f, "sink_category_limited_until_seconds", 1,
		  "End of a rate limit of one category, Unix time.");
	for (i = 0; i < sn->nsinks; i++) {
		const struct obx_sink_shm *k = &sn->kp->sink[i];
		uint32_t ncat = k->ncats > OBX_MAX_CATS ? OBX_MAX_CATS :
				k->ncats;

		if (!k->in_use)
			continue;
		mx_sink_name(sn, i, name, sizeof(name));
		for (c = 0; c < ncat; c++) {
			mx_shm_str(cat, sizeof(cat), k->cats[c], OBX_CAT_MAX);
			prom_sample(f, "sink_category_limited_until_seconds",
				    name, "category", cat);
			prom_seconds(f, k->cat_until_ns[c]);
		}
	}
}

/* outbox_sink_category_events_dropped_total{sink,category,reason} */
static void prom_cat_drops(FILE *f, const struct mx_snap *sn)
{
	static const char fam[] = "sink_category_events_dropped_total";
	char name[OBX_NAME_MAX + 8], cat[OBX_CAT_MAX + 1];
	const char *reason;
	uint32_t j, k;
	uint64_t n;

	prom_head(f, fam, 0, "Events of the sink dropped, by data category "
		  "(sentry) and reason: a breakdown of "
		  "outbox_sink_events_dropped_total.");
	for (j = 0; j < mx_ncat_drops(sn); j++) {
		if (mx_cat_drop(sn, j, &k, cat, sizeof(cat), &reason, &n))
			continue;
		mx_sink_name(sn, k, name, sizeof(name));
		fprintf(f, "outbox_%s{", fam);
		prom_label(f, "sink", name);
		fputc(',', f);
		prom_label(f, "category", cat);
		fputc(',', f);
		prom_label(f, "reason", reason);
		fprintf(f, "} %" PRIu64 "\n", n);
	}
}

static void prom_producers(FILE *f, const struct mx_snap *sn)
{
	static const struct {
		const char *family, *help;
		size_t off;
	} col[] = {
		{ "producer_events_emitted_total",
		  "Events emitted by a live producer process.",
		  offsetof(struct mx_prod, emitted) },
		{ "producer_events_dropped_total",
		  "Events dropped by a live producer process.",
		  offsetof(struct mx_prod, dropped) },
	};
	uint32_t i;
	size_t c;

	for (c = 0; c < NELEM(col); c++) {
		prom_head(f, col[c].family, 0, col[c].help);
		for (i = 0; i < sn->nprods; i++) {
			const struct mx_prod *p = &sn->prods[i];
			uint64_t v;

			memcpy(&v, (const uint8_t *)p + col[c].off, sizeof(v));
			fprintf(f, "outbox_%s{pid=\"%u\",slot=\"%u\"} %"
				PRIu64 "\n", col[c].family, p->pid, p->slot, v);
		}
	}
}

static void prom_gauge(FILE *f, const char *family, const char *help,
		       uint64_t v)
{
	prom_head(f, family, 1, help);
	fprintf(f, "outbox_%s %" PRIu64 "\n", family, v);
}

void mx_prom(FILE *f, const struct mx_snap *sn)
{
	prom_global(f, sn);
	prom_gauge(f, "ring_size_bytes", "Size of the ring.",
		   sn->seg->g.ring_size);
	prom_gauge(f, "ring_used_bytes",
		   "Ring bytes claimed by producers, not yet consumed.",
		   mx_ring_used(sn));
	prom_gauge(f, "producers", "Live producer processes.", sn->nprods);
	prom_gauge(f, "identity_ok",
		   "1 when emitted = delivered + dropped + queued.",
		   (uint64_t)sn->identity_ok);
	prom_gauge(f, "broker_up", "1 when the broker process runs.",
		   (uint64_t)sn->alive);
	prom_head(f, "broker_start_time_seconds", 1,
		  "When the broker started, Unix time.");
	fputs("outbox_broker_start_time_seconds ", f);
	prom_seconds(f, sn->boot_ns);
	prom_sinks(f, sn);
	prom_sink_states(f, sn);
	prom_cat_drops(f, sn);
	prom_producers(f, sn);
}
