/* brokertest.c - helpers to run a real outboxd from the tests. */
#define _GNU_SOURCE
#include "brokertest.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "outbox.h"
#include "segment.h"
#include "slots.h"

const char *bt_bin(const char *name)
{
	static char path[4][512];
	static int k;
	const char *b = getenv("OUTBOX_BUILD");

	k = (k + 1) % 4;
	snprintf(path[k], sizeof(path[k]), "%s/%s", b && *b ? b : "build",
		 name);
	return path[k];
}

int bt_init(struct bt *t, const char *tag, const char *broker_extra,
	    const char *extra)
{
	FILE *f;

	memset(t, 0, sizeof(*t));
	snprintf(t->dir, sizeof(t->dir), "/tmp/obxbt-%s-XXXXXX", tag);
	if (!mkdtemp(t->dir))
		return -1;
	snprintf(t->shm, sizeof(t->shm), "obxbt-%s-%d", tag, (int)getpid());
	snprintf(t->conf, sizeof(t->conf), "%s/outbox.ini", t->dir);
	snprintf(t->spool, sizeof(t->spool), "%s/spool", t->dir);
	snprintf(t->out, sizeof(t->out), "%s/out.ndjson", t->dir);
	snprintf(t->log, sizeof(t->log), "%s/broker.log", t->dir);
	seg_unlink(t->shm);
	f = fopen(t->conf, "w");
	if (!f)
		return -1;
	fprintf(f, "[broker]\nshm = %s\nshm_mode = 0600\nring_size = 16M\n"
		"max_record = 64K\nspool_dir = %s\nsegment_size = 4M\n"
		"shutdown_timeout = 5s\n%s\n[sink default]\ntype = file\n"
		"path = %s\nflush_interval = 20ms\nbatch_max_events = 2000\n"
		"batch_max_bytes = 1M\n%s\n", t->shm, t->spool,
		broker_extra ? broker_extra : "", t->out, extra ? extra : "");
	fclose(f);
	chmod(t->conf, 0600);
	return 0;
}

static int bt_broker_up(struct bt *t)
{
	struct seg s;
	char why[256];
	uint32_t pid;

	if (seg_attach(&s, t->shm, why, sizeof(why)) < 0)
		return 0;
	pid = atomic_load(&s.cons->broker_pid);
	seg_detach(&s);
	return pid == (uint32_t)t->pid;
}

int bt_start(struct bt *t)
{
	int i, fd;

	t->pid = fork();
	if (t->pid < 0)
		return -1;
	if (t->pid == 0) {
		fd = open(t->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 2);
			close(fd);
		}
		execl(bt_bin("outboxd"), "outboxd", "-c", t->conf,
		      (char *)NULL);
		_exit(127);
	}
	t->starts++;
	for (i = 0; i < 500; i++) {
		int st;

		if (bt_broker_up(t))
			return 0;
		if (waitpid(t->pid, &st, WNOHANG) == t->pid) {
			t->pid = 0;
			return -1;
		}
		usleep(10000);
	}
	return -1;
}

int bt_stop(struct bt *t, int ms)
{
	int st, i;

	if (t->pid <= 0)
		return -1;
	kill(t->pid, SIGTERM);
	for (i = 0; i < ms; i += 10) {
		if (waitpid(t->pid, &st, WNOHANG) == t->pid) {
			t->pid = 0;
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 +
			       WTERMSIG(st);
		}
		usleep(10000);
	}
	bt_kill9(t);
	return -1;
}

void bt_kill9(struct bt *t)
{
	if (t->pid <= 0)
		return;
	kill(t->pid, SIGKILL);
	waitpid(t->pid, NULL, 0);
	t->pid = 0;
}

void bt_cleanup(struct bt *t)
{
	char cmd[600];

	bt_kill9(t);
	seg_unlink(t->shm);
	if (getenv("OBX_KEEP_TMP"))
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cleanup of %s failed\n", t->dir);
}

obx_t *bt_open(const char *shm)
{
	obx_t *h = NULL;
	int i;

	for (i = 0; i < 500 && !h; i++) {
		h = obx_open(shm);
		if (!h)
			usleep(10000);
	}
	return h;
}

int bt_ring_empty(const struct bt *t)
{
	struct seg s;
	char why[128];
	int empty = 0;

	if (seg_attach(&s, t->shm, why, sizeof(why)) == 0) {
		empty = atomic_load(&s.hdr->tail) ==
			atomic_load(&s.cons->head);
		seg_detach(&s);
	}
	return empty;
}

int bt_stats(struct bt *t, struct obx_stats *g, struct obx_sink_page *sp)
{
	struct seg s;
	char why[256];
	int tries;

	if (seg_attach(&s, t->shm, why, sizeof(why)) < 0)
		return -1;
	for (tries = 0; tries < 1000; tries++) {
		uint64_t a = atomic_load(&s.stats->seq), c;

		if (a & 1)
			continue;
		*g = s.stats->g;
		if (sp)
			memcpy(sp, s.sinks, sizeof(*sp));
		c = atomic_load(&s.stats->seq);
		if (a == c)
			break;
	}
	seg_detach(&s);
	return 0;
}

uint64_t bt_sum_dropped(const struct obx_stats *g,
			const struct obx_sink_page *sp, uint64_t *deliv,
			uint64_t *queued)
{
	uint64_t d = g->dropped_ring_full + g->dropped_too_large +
		     g->dropped_late + g->dropped_invalid + g->ring_unblocked +
		     g->dropped_spool_full + g->dropped_spool_error +
		     g->spool_corrupt;
	uint32_t i;

	*deliv = 0;
	*queued = 0;
	for (i = 0; i < sp->nsinks && i < OBX_MAX_SINKS; i++) {
		const struct obx_sink_counters *c = &sp->sink[i].c;

		*deliv += c->delivered_events;
		*queued += c->queued_events;
		d += c->dropped_rejected + c->dropped_retries_exhausted +
		     c->dropped_expired + c->dropped_rate_limited +
		     c->dropped_too_large + c->dropped_invalid;
	}
	return d;
}

int bt_read_output(const char *path, uint32_t *counts[BT_MAXP],
		   uint64_t maxs, uint64_t *bad)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int lines = 0;

	*bad = 0;
	if (!f)
		return 0;
	while ((n = getline(&line, &cap, f)) > 0) {
		json_error_t err;
		json_t *j = json_loadb(line, (size_t)n, 0, &err), *body;
		json_int_t p, s;

		lines++;
		if (!j) {
			(*bad)++;
			continue;
		}
		body = json_object_get(j, "body");
		p = json_integer_value(json_object_get(body, "p"));
		s = json_integer_value(json_object_get(body, "s"));
		if (json_is_integer(json_object_get(body, "p")) && p >= 0 &&
		    p < BT_MAXP && s >= 0 && (uint64_t)s < maxs && counts[p])
			counts[p][s]++;
		else
			(*bad)++;
		json_decref(j);
	}
	free(line);
	fclose(f);
	return lines;
}

const struct obx_sink_shm *bt_sink(const struct obx_sink_page *sp,
				   const char *name)
{
	uint32_t i;

	for (i = 0; i < sp->nsinks && i < OBX_MAX_SINKS; i++)
		if (sp->sink[i].in_use && !strcmp(sp->sink[i].name, name))
			return &sp->sink[i];
	return NULL;
}
