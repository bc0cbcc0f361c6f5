/* bench_e2e.c - `outbox-bench e2e`: producers -> ring -> outboxd ->
 * spool -> sink, measured from outside like a user would.
 *
 * Starts the outboxd next to this binary with a private config (own shm
 * name, spool and output in a temp dir, durability as given), forks N
 * producers that emit B-byte JSON events flat out for S seconds (a full
 * ring is retried after a short sleep and counted), then waits until the
 * broker has delivered everything. Reports delivered events/s over the
 * whole run (first emit to last delivery), emit percentiles (batches of
 * 32), broker CPU (utime+stime from /proc) and peak RSS (VmHWM), and,
 * with --verify, lost and duplicated events counted by reading the output
 * file back, or by the HTTP sink as it receives them.
 *
 * --sink http: the broker POSTs to the bench's own loopback sink
 * (httpsink.c, a forked epoll process much faster than the broker) through
 * an `http` sink named "api" that the producers emit to. --outage S makes
 * the sink answer 503 from --outage-at T (2 s) for S seconds: reported are
 * the requests it got during that window and the time from the window's
 * end until it had every event emitted by then. --rate R paces each
 * producer at R events/s (absolute clock_nanosleep deadlines) instead of
 * flat out. CPU per event = (producers' + broker's CPU seconds) / events.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "bench_peers.h"
#include "httpsink.h"
#include "outbox.h"
#include "segment.h"

struct e2e_opts {
	int np, size, json, verify;
	double duration;
	const char *sink;        /* file | discard | http */
	const char *durability;
	double outage, outage_at;
	int outage_code, retry_after, sink_threads, duration_set;
	int broker_threads;          /* outboxd's sink_threads, -1: default */
	int no_sng;                  /* --compare without syslog-ng */
	int pace_alongside;          /* the pacing measured during the run */
	double rate;             /* events/s per producer, 0 = flat out */
	const char *compression; /* http: gzip | zstd | none */
	enum cfg_compression comp;
	const char *encoding;    /* http: ndjson | json */
	int http, port, timeline;
	int compare, sng_reopen; /* --compare: the peers too */
	int progress;            /* stdout is a terminal */
};

struct e2e_shared {
	_Atomic uint64_t emitted[64];
	_Atomic uint64_t retries[64];
	_Atomic int stop;
	struct bench_hist h[64];
};

struct e2e_run {
	char dir[256], conf[300], out[300], shm[64], log[300];
	pid_t broker;
};

static const char *e2e_outboxd(void)
{
	static char path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 16);
	char *slash;

	if (n <= 0)
		return "outboxd";
	path[n] = 0;
	slash = strrchr(path, '/');
	if (!slash)
		return "outboxd";
	strcpy(slash + 1, "outboxd");
	return path;
}

static int e2e_config(struct e2e_run *r, const struct e2e_opts *o)
{
	/* $TMPDIR: the spool's file system is part of what is measured
	 * (whether io_uring completes a buffered write inline or hands it
	 * to an io-wq thread depends on it) */
	const char *tmp = getenv("TMPDIR");
	FILE *f;

	snprintf(r->dir, sizeof(r->dir), "%s/obxbench-e2e-XXXXXX",
		 tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(r->dir))
		return -1;
	snprintf(r->shm, sizeof(r->shm), "obxbench-e2e-%d", (int)getpid());
	snprintf(r->conf, sizeof(r->conf), "%s/outbox.ini", r->dir);
	snprintf(r->out, sizeof(r->out), "%s/out.ndjson", r->dir);
	snprintf(r->log, sizeof(r->log), "%s/broker.log", r->dir);
	seg_unlink(r->shm);
	f = fopen(r->conf, "w");
	if (!f)
		return -1;
	fprintf(f, "[broker]\nshm = %s\nshm_mode = 0600\nring_size = 64M\n"
		"max_record = 64K\nspool_dir = %s/spool\ndurability = %s\n"
		"segment_size = 64M\nspool_max = 8G\nshutdown_timeout = 10s\n",
		r->shm, r->dir, o->durability);
	if (o->broker_threads >= 0)
		fprintf(f, "sink_threads = %d\n", o->broker_threads);
	fprintf(f, "\n[sink default]\ntype = %s\n",
		strcmp(o->sink, "file") ? "discard" : "file");
	if (!strcmp(o->sink, "file"))
		fprintf(f, "path = %s\n", r->out);
	fprintf(f, "batch_max_events = 4096\nbatch_max_bytes = 4M\n"
		"flush_interval = 50ms\n");
	/* PRODUCT.md section 5 defaults, but for the batch and in-flight
	 * limits the benchmark is about */
	if (o->http)
		fprintf(f, "\n[sink api]\ntype = http\n"
			"url = http://127.0.0.1:%d/ingest\nencoding = %s\n"
			"compression = %s\nbatch_max_events = 500\n"
			"max_inflight = 4\n", o->port, o->encoding,
			o->compression);
	fclose(f);
	return 0;
}

static int e2e_start_broker(struct e2e_run *r)
{
	struct seg s;
	char why[256];
	int i;

	r->broker = fork();
	if (r->broker == 0) {
		int fd = open(r->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd >= 0)
			dup2(fd, 2);
		execl(e2e_outboxd(), "outboxd", "-c", r->conf, (char *)NULL);
		_exit(127);
	}
	/* 30 s: a broker under valgrind (callgrind profiles) takes ~10 s */
	for (i = 0; i < 3000; i++) {
		if (seg_attach(&s, r->shm, why, sizeof(why)) == 0) {
			uint32_t pid = atomic_load(&s.cons->broker_pid);

			seg_detach(&s);
			if (pid == (uint32_t)r->broker)
				return 0;
		}
		usleep(10000);
	}
	fprintf(stderr, "outbox-bench: outboxd did not start (see %s)\n",
		r->log);
	return -1;
}

static int e2e_emit(struct e2e_shared *sh, obx_t *h, int sink, int me,
		    const char *body, int n)
{
	int rc;

	/* a full ring is retried until the run ends (a dead broker must
	 * not keep the producers here) */
	while ((rc = obx_emit(h, sink, "bench", body, (size_t)n,
			      OBX_BODY_JSON)) == -EAGAIN &&
	       !atomic_load(&sh->stop)) {
		atomic_fetch_add(&sh->retries[me], 1);
		usleep(100);
	}
	return rc;
}

/* R events/s: each emit at its absolute deadline, timed alone */
static void e2e_paced(struct e2e_shared *sh, obx_t *h, int sink, int me,
		      const struct e2e_opts *o, char *body)
{
	uint64_t period = (uint64_t)(1e9 / o->rate), next = bench_now(), s;
	uint64_t t0;
	int n;

	for (s = 0; !atomic_load(&sh->stop); s++) {
		bench_sleep_until(next);
		n = bench_body(body, me, s, o->size);
		t0 = bench_now();
		if (e2e_emit(sh, h, sink, me, body, n) < 0)
			_exit(atomic_load(&sh->stop) ? 0 : 4);
		bench_hist_add(&sh->h[me], bench_now() - t0);
		atomic_store(&sh->emitted[me], s + 1);
		next += period;
	}
}

static void e2e_producer(struct e2e_shared *sh, const char *shm, int me,
			 const struct e2e_opts *o)
{
	obx_t *h = obx_open(shm);
	char body[65536];
	uint64_t s = 0, t0;
	int j, n, sink = 0;

	if (!h)
		_exit(2);
	if (o->http && (sink = obx_sink(h, "api")) < 0)
		_exit(3);
	if (o->rate > 0)
		e2e_paced(sh, h, sink, me, o, body);
	while (o->rate <= 0 && !atomic_load(&sh->stop)) {
		t0 = bench_now();
		for (j = 0; j < 32; j++, s++) {
			n = bench_body(body, me, s, o->size);
			if (e2e_emit(sh, h, sink, me, body, n) < 0) {
				atomic_store(&sh->emitted[me], s);
				_exit(atomic_load(&sh->stop) ? 0 : 4);
			}
		}
		bench_hist_add(&sh->h[me], (bench_now() - t0) / 32);
		atomic_store(&sh->emitted[me], s);
	}
	obx_close(h);
	_exit(0);
}

static int e2e_stats(const char *shm, const char *sink, struct obx_stats *g,
		     struct obx_sink_counters *c)
{
	struct seg s;
	char why[256];
	unsigned i, k = 0;
	int tries;

	if (seg_attach(&s, shm, why, sizeof(why)) < 0)
		return -1;
	for (tries = 0; tries < 1000; tries++) {
		uint64_t a = atomic_load(&s.stats->seq);

		if (a & 1)
			continue;
		*g = s.stats->g;
		for (i = 0; i < OBX_MAX_SINKS; i++)
			if (s.sinks->sink[i].in_use &&
			    !strncmp(s.sinks->sink[i].name, sink, OBX_NAME_MAX))
				k = i;
		*c = s.sinks->sink[k].c;
		if (atomic_load(&s.stats->seq) == a)
			break;
	}
	seg_detach(&s);
	return 0;
}

void bench_proc(pid_t pid, double *cpu_s, uint64_t *hwm_kb)
{
	char path[64], buf[4096], *p;
	unsigned long ut = 0, st = 0;
	FILE *f;
	int i;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (f) {
		if (fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')'))) {
			p += 2;
			for (i = 3; i < 14 && *p; p++)
				if (*p == ' ')
					i++;
			sscanf(p, "%lu %lu", &ut, &st);
		}
		fclose(f);
	}
	*cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (f) {
		while (fgets(buf, sizeof(buf), f))
			if (!strncmp(buf, "VmHWM:", 6))
				*hwm_kb = strtoull(buf + 6, NULL, 10);
		fclose(f);
	}
}

/* RssAnon: the broker's own memory, without the shared ring pages */
static uint64_t e2e_anon_kb(pid_t pid)
{
	char path[64], buf[256];
	uint64_t kb = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(buf, sizeof(buf), f))
		if (!strncmp(buf, "RssAnon:", 8))
			kb = strtoull(buf + 8, NULL, 10);
	fclose(f);
	return kb;
}

static void e2e_verify(const char *out, int np, struct e2e_shared *sh,
		       uint64_t *lost, uint64_t *dups)
{
	FILE *f = fopen(out, "r");
	uint8_t *seen[64] = { 0 };
	char *line = NULL;
	size_t cap = 0;
	int p;

	*lost = *dups = 0;
	for (p = 0; p < np; p++)
		seen[p] = calloc(atomic_load(&sh->emitted[p]) + 1, 1);
	while (f && getline(&line, &cap, f) > 0) {
		/* the body is {"p":P,"s":S,...}: find it, no full parse */
		char *b = strstr(line, "\"body\":{\"p\":");
		unsigned long pp, ss;

		if (!b || sscanf(b, "\"body\":{\"p\":%lu,\"s\":%lu", &pp,
				 &ss) != 2 || pp >= (unsigned long)np ||
		    ss >= atomic_load(&sh->emitted[pp]))
			continue;
		if (seen[pp][ss]++)
			(*dups)++;
	}
	for (p = 0; p < np; p++) {
		uint64_t s, n = atomic_load(&sh->emitted[p]);

		for (s = 0; s < n; s++)
			*lost += seen[p][s] == 0;
		free(seen[p]);
	}
	free(line);
	if (f)
		fclose(f);
}

struct e2e_res {
	uint64_t total, retries, hwm, anon, lost, dups;
	uint64_t t0, t_emit_end, t_done;
	double broker_cpu, prod_cpu, sink_cpu;
	double pace_us;              /* the pacing's own CPU per event */
	struct obx_stats g;
	struct obx_sink_counters c;
	struct bench_hist all;
	int complete;                /* everything emitted was delivered */
	/* http */
	uint64_t outage_from, outage_until;   /* 0: no outage */
	int outage_marked;
	uint64_t next_sample, next_row;
	double drain_s;              /* < 0: no outage, or never drained */
};

static uint64_t e2e_emitted(struct e2e_shared *sh, int np)
{
	uint64_t n = 0;
	int i;

	for (i = 0; i < np; i++)
		n += atomic_load(&sh->emitted[i]);
	return n;
}

/* once the outage is over: the sink stamps the moment it has everything
 * emitted until now */
static void e2e_outage_end(struct e2e_res *x, struct hs_sink *hs,
			   struct e2e_shared *sh, int np)
{
	if (!x->outage_until || x->outage_marked ||
	    bench_now() < x->outage_until)
		return;
	hs_drain_target(hs, e2e_emitted(sh, np));
	x->outage_marked = 1;
}

/* every 100 ms or more: peak memory; with --timeline one row a second */
static void e2e_sample(const struct e2e_opts *o, struct e2e_run *r,
		       struct e2e_res *x, struct e2e_shared *sh,
		       const struct hs_sink *hs)
{
	uint64_t a, now = bench_now();
	struct obx_sink_counters c;
	struct obx_stats g;
	double cpu;

	if (now < x->next_sample)
		return;
	x->next_sample = now + 100000000ull;
	bench_progress(o->progress, "outbox", (double)(now - x->t0) / 1e9,
		       e2e_emitted(sh, o->np), o->http ? hs_have(hs) : 0);
	a = e2e_anon_kb(r->broker);
	if (a > x->anon)
		x->anon = a;
	if (!o->timeline || now < x->next_row)
		return;
	if (!x->next_row)
		fprintf(stderr, "timeline: t_s emitted consumed delivered "
			"queued broker_requests sink_requests sink_events "
			"broker_cpu_s\n");
	x->next_row = (x->next_row ? x->next_row : now) + 1000000000ull;
	memset(&c, 0, sizeof(c));
	e2e_stats(r->shm, o->http ? "api" : "default", &g, &c);
	bench_proc(r->broker, &cpu, &a);
	fprintf(stderr, "timeline: %.1f %llu %llu %llu %llu %llu %llu %llu "
		"%.2f\n", (double)(now - x->t0) / 1e9,
		(unsigned long long)e2e_emitted(sh, o->np),
		(unsigned long long)g.consumed,
		(unsigned long long)c.delivered_events,
		(unsigned long long)c.queued_events,
		(unsigned long long)c.requests,
		(unsigned long long)(hs->sh ? hs->sh->requests : 0),
		(unsigned long long)(hs->sh ? hs->sh->events : 0), cpu);
}

static int e2e_args(int argc, char **argv, struct e2e_opts *o)
{
	int i;

	for (i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!v && strcmp(a, "--verify") && strcmp(a, "--json") &&
		    strcmp(a, "--timeline") && strcmp(a, "--compare") &&
		    strcmp(a, "--no-syslog-ng") &&
		    strcmp(a, "--pace-alongside"))
			goto usage;
		if (!strcmp(a, "--producers"))
			o->np = atoi(v);
		else if (!strcmp(a, "--size"))
			o->size = atoi(v);
		else if (!strcmp(a, "--duration"))
			o->duration = atof(v), o->duration_set = 1;
		else if (!strcmp(a, "--sink"))
			o->sink = v;
		else if (!strcmp(a, "--durability"))
			o->durability = v;
		else if (!strcmp(a, "--outage"))
			o->outage = atof(v);
		else if (!strcmp(a, "--outage-at"))
			o->outage_at = atof(v);
		else if (!strcmp(a, "--outage-code"))
			o->outage_code = atoi(v);
		else if (!strcmp(a, "--retry-after"))
			o->retry_after = atoi(v);
		else if (!strcmp(a, "--rate"))
			o->rate = atof(v);
		else if (!strcmp(a, "--compression"))
			o->compression = v;
		else if (!strcmp(a, "--encoding"))
			o->encoding = v;
		else if (!strcmp(a, "--sink-threads"))
			o->sink_threads = atoi(v);
		else if (!strcmp(a, "--broker-threads"))
			o->broker_threads = atoi(v);
		else if (!strcmp(a, "--no-syslog-ng"))
			o->no_sng = 1, i--;
		else if (!strcmp(a, "--pace-alongside"))
			o->pace_alongside = 1, i--;
		else if (!strcmp(a, "--verify"))
			o->verify = 1, i--;
		else if (!strcmp(a, "--json"))
			o->json = 1, i--;
		else if (!strcmp(a, "--timeline"))
			o->timeline = 1, i--;
		else if (!strcmp(a, "--compare"))
			o->compare = 1, i--;
		else if (!strcmp(a, "--sng-reopen"))
			o->sng_reopen = atoi(v);
		else
			goto usage;
		i++;
	}
	if (o->compare)   /* the peers POST over HTTP: so does outbox */
		o->sink = "http", o->verify = 1;
	o->http = !strcmp(o->sink, "http");
	if (o->outage > 0 && !o->duration_set)
		o->duration = o->outage_at + o->outage; /* stop at its end */
	if (o->np < 1 || o->np > 64 || o->size < 64 || o->size > 60000 ||
	    o->duration <= 0 || o->rate < 0 || o->outage < 0 ||
	    o->outage_at < 0 || o->sink_threads < 1 || o->sink_threads > 16 ||
	    o->broker_threads < -1 || o->broker_threads > 64 ||
	    (strcmp(o->sink, "file") && strcmp(o->sink, "discard") &&
	     !o->http) ||
	    (o->outage > 0 && !o->http) ||
	    bench_comp_parse(o->compression, &o->comp) < 0 ||
	    o->sng_reopen < 1 ||
	    (strcmp(o->encoding, "ndjson") && strcmp(o->encoding, "json"))) {
		fprintf(stderr, "outbox-bench e2e: bad arguments\n");
		return -1;
	}
	return 0;
usage:
	fprintf(stderr,
		"usage: outbox-bench e2e [--producers N] [--size B] [--duration S]\n"
		"         [--sink file|discard|http] [--durability none|write|fdatasync]\n"
		"         [--rate R] [--verify] [--json] [--timeline]\n"
		"       http only: [--compression gzip|zstd|none] [--encoding ndjson|json]\n"
		"         [--outage S] [--outage-at T] [--outage-code C]\n"
		"         [--retry-after N] [--sink-threads N]\n"
		"         [--broker-threads N] (outboxd's sink_threads)\n"
		"         [--compare [--sng-reopen S]]  (the per-worker SDK and\n"
		"         syslog-ng on the same workload; implies --sink http\n"
		"         --verify)\n"
		"       paced: [--pace-alongside] (the pacing's cost measured\n"
		"         next to the producers, not alone before the run)\n");
	return -1;
}

/* the JSON object goes to f (no newline), the text to stdout */
static void e2e_report(const struct e2e_opts *o, const struct e2e_res *x,
		       const struct hs_sink *hs, FILE *f)
{
	double secs = (double)(x->t_done - x->t0) / 1e9;
	double cpu_ev = x->c.delivered_events ?
		(x->prod_cpu + x->broker_cpu) * 1e6 /
		(double)x->c.delivered_events : 0;
	const struct hs_shared *k = o->http ? hs->sh : NULL;
	char drain[32] = "null";

	if (x->drain_s >= 0)
		snprintf(drain, sizeof(drain), "%.2f", x->drain_s);
	if (o->json) {
		fprintf(f, "{\"mode\":\"e2e\",\"sink\":\"%s\",\"durability\":\"%s\","
		       "\"producers\":%d,\"size\":%d,\"emit_seconds\":%.2f,"
		       "\"events\":%llu,\"delivered\":%llu,\"seconds\":%.2f,"
		       "\"delivered_per_s\":%.0f,\"emit_ns_p50\":%llu,"
		       "\"emit_ns_p99\":%llu,\"ring_full_retries\":%llu,"
		       "\"broker_cpu_s\":%.2f,\"broker_cpu_pct\":%.0f,"
		       "\"broker_rss_peak_kb\":%llu,\"broker_anon_peak_kb\":%llu,"
		       "\"verified\":%s,"
		       "\"lost\":%llu,\"duplicates\":%llu,\"rate\":%.0f,"
		       "\"producers_cpu_s\":%.2f,\"cpu_us_per_event\":%.3f,"
		       "\"pace_cpu_us_per_event\":%.3f,"
		       "\"cpu_us_per_event_net\":%.3f,\"complete\":%s,"
		       "\"broker_wakeups\":%llu,\"broker_looks\":%llu,"
		       "\"broker_flushes\":%llu",
		       o->sink, o->durability, o->np, o->size,
		       (double)(x->t_emit_end - x->t0) / 1e9,
		       (unsigned long long)x->total,
		       (unsigned long long)x->c.delivered_events, secs,
		       (double)x->c.delivered_events / secs,
		       (unsigned long long)bench_hist_pct(&x->all, 50),
		       (unsigned long long)bench_hist_pct(&x->all, 99),
		       (unsigned long long)x->retries, x->broker_cpu,
		       100.0 * x->broker_cpu / secs,
		       (unsigned long long)x->hwm,
		       (unsigned long long)x->anon,
		       o->verify ? "true" : "false",
		       (unsigned long long)x->lost,
		       (unsigned long long)x->dups, o->rate, x->prod_cpu,
		       cpu_ev, x->pace_us, cpu_ev - x->pace_us,
		       x->complete ? "true" : "false",
		       (unsigned long long)x->g.wakeups,
		       (unsigned long long)x->g.drain_looks,
		       (unsigned long long)x->g.spool_flushes);
		if (k)
			fprintf(f, ",\"compression\":\"%s\",\"encoding\":\"%s\","
			       "\"requests\":%llu,\"requests_ok\":%llu,"
			       "\"events_per_request\":%.1f,\"sink_events\":%llu,"
			       "\"broker_requests\":%llu,\"broker_retries\":%llu,"
			       "\"responses_5xx\":%llu,\"sink_cpu_pct\":%.0f,"
			       "\"outage_s\":%.1f,\"outage_at_s\":%.1f,"
			       "\"outage_requests\":%llu,"
			       "\"drain_after_outage_s\":%s",
			       o->compression, o->encoding,
			       (unsigned long long)k->requests,
			       (unsigned long long)k->requests_ok,
			       k->requests_ok ? (double)k->events /
			       (double)k->requests_ok : 0,
			       (unsigned long long)k->events,
			       (unsigned long long)x->c.requests,
			       (unsigned long long)x->c.retries,
			       (unsigned long long)x->c.responses_5xx,
			       100.0 * x->sink_cpu / secs, o->outage,
			       o->outage > 0 ? o->outage_at : 0,
			       (unsigned long long)k->requests_rejected, drain);
		fprintf(f, "}");
		return;
	}
	printf("e2e %s (%s): %d producers x %d B%s, %llu events in "
	       "%.2f s = %.0f events/s delivered; emit p50 %llu ns "
	       "p99 %llu ns; ring-full retries %llu; broker CPU %.0f%% "
	       "RSS peak %llu KiB (own memory %llu KiB, the rest is the "
	       "shared ring)%s\n", o->sink, o->durability, o->np,
	       o->size, o->rate > 0 ? " paced" : "",
	       (unsigned long long)x->c.delivered_events, secs,
	       (double)x->c.delivered_events / secs,
	       (unsigned long long)bench_hist_pct(&x->all, 50),
	       (unsigned long long)bench_hist_pct(&x->all, 99),
	       (unsigned long long)x->retries,
	       100.0 * x->broker_cpu / secs, (unsigned long long)x->hwm,
	       (unsigned long long)x->anon,
	       o->verify ? "" : " (not verified)");
	printf("cpu: producers %.2f s + broker %.2f s = %.3f us per event",
	       x->prod_cpu, x->broker_cpu, cpu_ev);
	if (o->rate > 0)
		printf(" (the pacing's own wake-ups: %.3f us of it; without "
		       "them %.3f us)\n", x->pace_us, cpu_ev - x->pace_us);
	else
		printf(" (flat out)\n");
	printf("broker: %llu looks at the ring, %llu spool flushes, woken by "
	       "producers %llu times\n", (unsigned long long)x->g.drain_looks,
	       (unsigned long long)x->g.spool_flushes,
	       (unsigned long long)x->g.wakeups);
	if (k) {
		printf("http (%s, %s): %llu requests (%llu ok), %.1f events "
		       "per request, broker retries %llu, 5xx %llu; sink CPU "
		       "%.0f%%\n", o->encoding, o->compression,
		       (unsigned long long)k->requests,
		       (unsigned long long)k->requests_ok,
		       k->requests_ok ? (double)k->events /
		       (double)k->requests_ok : 0,
		       (unsigned long long)x->c.retries,
		       (unsigned long long)x->c.responses_5xx,
		       100.0 * x->sink_cpu / secs);
		if (o->outage > 0)
			printf("outage: %d for %.1f s from t=%.1f s: %llu "
			       "requests during it; everything emitted by its "
			       "end delivered %s s after it\n", o->outage_code,
			       o->outage, o->outage_at,
			       (unsigned long long)k->requests_rejected,
			       drain);
	}
	if (o->verify)
		printf("verify: lost %llu, duplicates %llu\n",
		       (unsigned long long)x->lost, (unsigned long long)x->dups);
	if (!x->complete)
		printf("INCOMPLETE: %llu of %llu events delivered\n",
		       (unsigned long long)x->c.delivered_events,
		       (unsigned long long)x->total);
}

static void e2e_collect(struct e2e_shared *sh, const struct e2e_opts *o,
			const pid_t *pids, struct e2e_res *x)
{
	struct rusage ru;
	int i, st;

	for (i = 0; i < o->np; i++) {
		if (wait4(pids[i], &st, 0, &ru) == pids[i] &&
		    (!WIFEXITED(st) || WEXITSTATUS(st)))
			fprintf(stderr, "outbox-bench e2e: producer %d failed "
				"(status %#x)\n", i, st);
		x->prod_cpu += bench_ru_s(&ru);
		x->total += atomic_load(&sh->emitted[i]);
		x->retries += atomic_load(&sh->retries[i]);
	}
}

/* One outbox run: broker, sink (left running for the report: the
 * caller stops it), producers; the results in x. 0, or 1 on a failure
 * to start (nothing to report). */
static int e2e_outbox(struct e2e_opts *op, struct e2e_res *px,
		      struct hs_sink *phs)
{
	struct e2e_opts o = *op;
	struct hs_sink hs = { 0 };
	struct e2e_shared *sh;
	struct e2e_res x;
	struct e2e_run r;
	struct bench_pace pace = { .np = 0 };
	pid_t pids[64];
	uint64_t end, wake, now, emitted[64], wait_max;
	double cpu0 = 0, cpu1 = 0, scpu0 = 0;
	int i, st;

	memset(&x, 0, sizeof(x));
	x.drain_s = -1;
	x.pace_us = px->pace_us;
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return 1;
	if (o.http) {
		struct hs_opts ho = { o.sink_threads, o.verify, 0 };

		if (hs_start(&hs, &ho) < 0) {
			fprintf(stderr, "outbox-bench e2e: cannot start the "
				"http sink\n");
			return 1;
		}
		o.port = hs.sh->port;
	}
	if (e2e_config(&r, &o) < 0 || e2e_start_broker(&r) < 0) {
		hs_stop(&hs);
		return 1;
	}
	bench_proc(r.broker, &cpu0, &x.hwm);
	if (o.http)
		scpu0 = hs_cpu_s(&hs);
	x.t0 = bench_now();
	if (o.outage > 0) {
		x.outage_from = x.t0 + (uint64_t)(o.outage_at * 1e9);
		x.outage_until = x.outage_from + (uint64_t)(o.outage * 1e9);
		hs_outage(&hs, x.outage_from, x.outage_until, o.outage_code,
			  o.retry_after);
	}
	for (i = 0; i < o.np; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			e2e_producer(sh, r.shm, i, &o);
		}
	}
	if (o.rate > 0 && o.pace_alongside)
		bench_pace_start(&pace, o.np, o.rate, o.duration);
	end = x.t0 + (uint64_t)(o.duration * 1e9);
	while ((now = bench_now()) < end) {
		e2e_sample(&o, &r, &x, sh, &hs);
		e2e_outage_end(&x, &hs, sh, o.np);
		wake = now + 100000000ull;
		if (!x.outage_marked && x.outage_until > now &&
		    x.outage_until < wake)
			wake = x.outage_until;
		bench_sleep_until(wake < end ? wake : end);
	}
	atomic_store(&sh->stop, 1);
	e2e_collect(sh, &o, pids, &x);
	if (o.rate > 0 && o.pace_alongside)
		x.pace_us = bench_pace_end(&pace);
	x.t_emit_end = bench_now();
	/* wait for the broker to deliver everything */
	wait_max = 120 + (o.outage > 0 ? (uint64_t)(o.outage + 60) : 0);
	for (i = 0; i < (int)wait_max * 100; i++) {
		if (waitpid(r.broker, &st, WNOHANG) == r.broker) {
			fprintf(stderr, "outbox-bench e2e: outboxd exited "
				"during the run (status %#x), see %s\n", st,
				r.log);
			r.broker = 0;
			break;
		}
		e2e_sample(&o, &r, &x, sh, &hs);
		e2e_outage_end(&x, &hs, sh, o.np);
		if (e2e_stats(r.shm, o.http ? "api" : "default", &x.g,
			      &x.c) == 0 &&
		    x.c.delivered_events >= x.total &&
		    x.c.queued_events == 0 &&
		    (!x.outage_until || x.outage_marked)) {
			x.complete = 1;
			break;
		}
		usleep(10000);
	}
	x.t_done = bench_now();
	/* over http: until the sink had the last event (as for the peers) */
	if (o.http && x.complete &&
	    atomic_load(&hs.sh->last_ok_ns) > x.t0 &&
	    atomic_load(&hs.sh->last_ok_ns) < x.t_done)
		x.t_done = atomic_load(&hs.sh->last_ok_ns);
	bench_progress_done(o.progress);
	cpu1 = cpu0;
	if (r.broker)
		bench_proc(r.broker, &cpu1, &x.hwm);
	x.broker_cpu = cpu1 - cpu0;
	if (r.broker) {
		kill(r.broker, SIGTERM);
		waitpid(r.broker, NULL, 0);
	}
	for (i = 0; i < o.np; i++)
		emitted[i] = atomic_load(&sh->emitted[i]);
	if (o.http) {
		uint64_t done = atomic_load(&hs.sh->drain_done_ns);

		x.sink_cpu = hs_cpu_s(&hs) - scpu0;
		if (x.outage_until && done)
			x.drain_s = done > x.outage_until ?
				    (double)(done - x.outage_until) / 1e9 : 0;
		if (o.verify) {
			x.lost = hs_lost(&hs, emitted, o.np);
			x.dups = atomic_load(&hs.sh->dups);
		}
	} else if (o.verify && !strcmp(o.sink, "file")) {
		e2e_verify(r.out, o.np, sh, &x.lost, &x.dups);
	}
	for (i = 0; i < o.np; i++)
		bench_hist_merge(&x.all, &sh->h[i]);
	{
		char cmd[400];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", r.dir);
		if (!x.complete)
			fprintf(stderr, "outbox-bench e2e: incomplete run, "
				"kept %s\n", r.dir);
		else if (!getenv("OBX_KEEP_TMP") && system(cmd) != 0)
			fprintf(stderr, "cleanup failed\n");
	}
	seg_unlink(r.shm);
	munmap(sh, sizeof(*sh));
	*px = x;
	*phs = hs;
	*op = o;
	return 0;
}

/* outbox's run as one contender of --compare */
static void e2e_as_peer(const struct e2e_opts *o, const struct e2e_res *x,
			const struct hs_sink *hs, struct bench_peer *p)
{
	uint64_t last = atomic_load(&hs->sh->last_ok_ns);

	memset(p, 0, sizeof(*p));
	p->name = "outbox";
	p->ran = 1;
	p->emitted = x->total;
	p->delivered = atomic_load(&hs->sh->unique);
	p->lost = x->lost;
	p->dups = x->dups;
	p->requests = atomic_load(&hs->sh->requests);
	p->outage_requests = atomic_load(&hs->sh->requests_rejected);
	p->emit_p50 = bench_hist_pct(&x->all, 50);
	p->emit_p99 = bench_hist_pct(&x->all, 99);
	p->secs = last > x->t0 ? (double)(last - x->t0) / 1e9 : 0;
	p->prod_cpu_s = x->prod_cpu;
	p->daemon_cpu_s = x->broker_cpu;
	p->pace_us = x->pace_us;
	p->drain_s = x->drain_s;
	snprintf(p->note, sizeof(p->note), "outboxd, durability %s, %s, "
		 "batch_max_events 500, max_inflight 4", o->durability,
		 o->compression);
}

/* --compare: outbox, then the per-worker SDK, then syslog-ng, on the
 * same workload; one table or one JSON object */
static int e2e_compare(struct e2e_opts *o, struct e2e_res *x,
		       struct hs_sink *hs)
{
	struct bench_work w = { .np = o->np, .size = o->size,
		.duration = o->duration, .rate = o->rate,
		.outage = o->outage, .outage_at = o->outage_at,
		.outage_code = o->outage_code, .retry_after = o->retry_after,
		.sink_threads = o->sink_threads, .comp = o->comp,
		.batch = 500, .flush_ms = 500, .pace_us = x->pace_us,
		.pace_alongside = o->pace_alongside,
		.sng_reopen = o->sng_reopen, .progress = o->progress };
	struct bench_peer ob, sdk, sng;
	char *js = NULL;
	size_t jn = 0;
	struct e2e_opts oj = *o;
	FILE *f = open_memstream(&js, &jn);

	if (!f)
		return 1;
	oj.json = 1;
	e2e_report(&oj, x, hs, f);
	fclose(f);
	if (!o->json)
		e2e_report(o, x, hs, stdout);
	e2e_as_peer(o, x, hs, &ob);
	hs_stop(hs);
	bench_peer_sdk(&w, &sdk);
	if (o->no_sng) {
		memset(&sng, 0, sizeof(sng));
		sng.name = "syslog_ng";
		snprintf(sng.note, sizeof(sng.note), "not run (--no-syslog-ng)");
	} else {
		bench_peer_syslogng(&w, &sng);
	}
	bench_compare_print(&w, &ob, &sdk, &sng, o->json, js);
	free(js);
	return ob.lost || !x->complete || sdk.lost ? 1 : 0;
}

int bench_e2e(int argc, char **argv)
{
	struct e2e_opts o = { .np = 4, .size = 256, .duration = 10.0,
		.sink = "file", .durability = "write", .outage_at = 2.0,
		.outage_code = 503, .retry_after = -1, .sink_threads = 1,
		.compression = "gzip", .encoding = "ndjson",
		.sng_reopen = 60, .broker_threads = -1 };
	struct hs_sink hs = { 0 };
	struct e2e_res x;

	if (e2e_args(argc, argv, &o) < 0)
		return 2;
	o.progress = isatty(1);
	memset(&x, 0, sizeof(x));
	if (o.rate > 0 && !o.pace_alongside)
		x.pace_us = bench_pace_cost(o.np, o.rate, 2.0);
	if (e2e_outbox(&o, &x, &hs))
		return 1;
	if (o.compare)
		return e2e_compare(&o, &x, &hs);
	e2e_report(&o, &x, &hs, stdout);
	if (o.json)
		printf("\n");
	hs_stop(&hs);
	return x.lost || !x.complete ? 1 : 0;
}
