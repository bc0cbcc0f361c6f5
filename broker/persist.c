/* persist.c - the delivery state file (see persist.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "persist.h"

#define PERSIST_MAX_BATCHES (CFG_MAX_SINKS * SINK_MAX_INFLIGHT)

static struct pol_sink *persist_find(struct persist *p, const char *name)
{
	int i;

	for (i = 0; i < p->npols; i++)
		if (!strcmp(p->pols[i].name, name))
			return &p->pols[i];
	return NULL;
}

static struct pol_sink *persist_add(struct persist *p, const char *name)
{
	struct pol_sink *n;

	if (p->npols == p->cap) {
		int cap = p->cap ? p->cap * 2 : 8;

		n = realloc(p->pols, (size_t)cap * sizeof(*n));
		if (!n)
			return NULL;
		p->pols = n;
		p->cap = cap;
	}
	n = &p->pols[p->npols++];
	pol_sink_init(n, name);
	return n;
}

int persist_open(struct persist *p, const char *spool_dir,
		 const struct cfg *c)
{
	int i, rc;

	memset(p, 0, sizeof(*p));
	if (asprintf(&p->path, "%s/%s", spool_dir, PERSIST_FILE) < 0) {
		p->path = NULL;
		return -ENOMEM;
	}
	for (i = 0; i < c->nsinks; i++)
		if (!persist_add(p, c->sinks[i].name))
			return -ENOMEM;
	rc = pol_load(p->path, p->pols, p->npols, &p->batches, &p->nbatches,
		      log_wall_offset_ms());
	if (rc == -ENOENT)
		return 0;
	if (rc < 0) {
		/* a bad file must never keep the broker from starting: the
		 * sinks start ok (at worst one early request) */
		log_error("%s: %s; delivery state starts fresh", p->path,
			  rc == -EBADMSG ? "damaged or unknown format" :
			  strerror(-rc));
		for (i = 0; i < p->npols; i++)
			pol_sink_init(&p->pols[i], p->pols[i].name);
		return 0;
	}
	for (i = 0; i < p->npols; i++)
		if (p->pols[i].state != POL_OK)
			log_info("sink %s: restored %s until %lld ms from now "
				 "(persisted before the restart)",
				 p->pols[i].name,
				 pol_state_name(p->pols[i].state),
				 (long long)(p->pols[i].until_ms -
					     (int64_t)(log_mono_ns() /
						       1000000ull)));
	return 0;
}

void persist_close(struct persist *p)
{
	free(p->path);
	free(p->pols);
	free(p->batches);
	memset(p, 0, sizeof(*p));
}

void persist_restore_sink(struct persist *p, struct pol_sink *pol)
{
	const struct pol_sink *k = persist_find(p, pol->name);

	if (k)
		*pol = *k;
}

static uint32_t max32(uint32_t a, uint32_t b)
{
	return a > b ? a : b;
}

/* the earlier of two times where 0 means none */
static int64_t earlier(int64_t a, int64_t b)
{
	if (!a || !b)
		return a ? a : b;
	return a < b ? a : b;
}

/* Saved metadata into a batch: the worse budgets win, never renewed. */
static void persist_merge(struct pol_batch *b, const struct pol_batch *sv)
{
	if (!b->first_failure_ms || (sv->first_failure_ms &&
				     sv->first_failure_ms < b->first_failure_ms))
		b->rl_base_ms = sv->rl_base_ms;
	b->attempts = max32(b->attempts, sv->attempts);
	b->failures = max32(b->failures, sv->failures);
	b->first_failure_ms = earlier(b->first_failure_ms,
				      sv->first_failure_ms);
	b->rl_start_ms = earlier(b->rl_start_ms, sv->rl_start_ms);
	b->reauth_done = b->reauth_done || sv->reauth_done;
}

static void persist_forget(struct persist *p, size_t i)
{
	p->batches[i] = p->batches[--p->nbatches];
}

void persist_restore_batch(struct persist *p, const char *sink,
			   uint64_t first, uint64_t end, struct pol_batch *b)
{
	size_t i = 0;

	while (i < p->nbatches) {
		struct pol_saved_batch *sb = &p->batches[i];

		if (sb->b.id < first || sb->b.id >= end ||
		    strcmp(sb->sink, sink)) {
			i++;
			continue;
		}
		persist_merge(b, &sb->b);
		/* used once: a later batch there is a new one */
		persist_forget(p, i);
	}
}

/* Saved metadata no batch will take any more: its sink is gone from the
 * configuration, or its spool acknowledged past it (delivered or dropped
 * before the restart, or dropped by drop-oldest since). */
static void persist_prune(struct broker *b)
{
	struct persist *p = &b->persist;
	size_t i = 0;

	while (i < p->nbatches) {
		const struct pol_saved_batch *sb = &p->batches[i];
		struct sink *s = NULL;
		int j, gone = cfg_sink_find(&b->cfg, sb->sink) < 0;

		for (j = 0; j < b->nsinks && !s; j++)
			if (!strcmp(b->sinks[j]->cfg.name, sb->sink))
				s = b->sinks[j];
		if (s && s->spool && sb->b.id < spool_acked(s->spool))
			gone = 1;
		if (gone)
			persist_forget(p, i);
		else
			i++;
	}
}

void persist_remember(struct persist *p, const struct pol_sink *pol)
{
	struct pol_sink *k = persist_find(p, pol->name);

	if (!k)
		k = persist_add(p, pol->name);
	if (k)
		*k = *pol;
}

void persist_save(struct broker *b, uint64_t now, int force)
{
	struct persist *p = &b->persist;
	struct pol_saved_batch *sv = NULL;
	struct pol_sink *pols = NULL;
	size_t nb = 0;
	int i, np = 0, rc;

	if (!p->path)
		return;
	if (!force && !p->dirty && !(p->batches_dirty &&
				     now - p->last_save_ns >= PERSIST_MIN_NS))
		return;
	persist_prune(b);
	pols = calloc((size_t)(b->nsinks + p->npols) + 1, sizeof(*pols));
	sv = calloc(PERSIST_MAX_BATCHES, sizeof(*sv));
	if (!pols || !sv)
		goto out;
	for (i = 0; i < b->nsinks; i++) {
		struct sink *s = b->sinks[i];
		const struct pol_sink *k;

		if (s->disabled || !s->ops || !s->ops->policy)
			continue;
		k = s->ops->policy(s);
		if (!k)
			continue;
		pols[np++] = *k;
		persist_remember(p, k);
		if (s->ops->saved)
			nb += s->ops->saved(s, sv + nb,
					    PERSIST_MAX_BATCHES - nb);
	}
	/* batches loaded from the file and not read again yet (their sink
	 * waits for a window): written back, or a second restart inside
	 * the window would lose their budgets */
	for (i = 0; i < (int)p->nbatches && nb < PERSIST_MAX_BATCHES; i++)
		sv[nb++] = p->batches[i];
	/* sinks closed by a reload keep their last state in the file */
	for (i = 0; i < p->npols; i++) {
		int j, active = 0;

		for (j = 0; j < np; j++)
			active |= !strcmp(pols[j].name, p->pols[i].name);
		if (!active && p->pols[i].state != POL_OK)
			pols[np++] = p->pols[i];
	}
	rc = pol_save(p->path, pols, np, sv, nb, log_wall_offset_ms());
	if (rc < 0) {
		if (!p->failed)
			log_error("%s: cannot save the delivery state: %s "
				  "(will retry)", p->path, strerror(-rc));
		p->failed = 1;
		goto out;
	}
	if (p->failed)
		log_info("%s: delivery state saved again", p->path);
	p->failed = 0;
	p->dirty = 0;
	p->batches_dirty = 0;
	p->last_save_ns = now;
out:
	free(pols);
	free(sv);
}
