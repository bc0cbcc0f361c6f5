/* bench_peers.c - the per-worker SDK pattern and syslog-ng, run on the
 * workload `outbox-bench e2e --compare` gives outbox (bench_peers.h).
 *
 * Both are measured as outbox is: forked producers, a fresh loopback sink
 * with verify on (unique and duplicate events by (producer, sequence)),
 * producers' CPU from wait4 (their threads included), a daemon's CPU from
 * /proc, delivered events/s from the first emit to the sink's last
 * accepted event, and with an outage the requests the sink answered 503
 * and the time from the outage's end until it had everything emitted by
 * then.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "bench_peers.h"
#include "buf.h"
#include "compress.h"
#include "httpsink.h"

#define PR_MAXP        64
#define PR_QUEUE       10000     /* SDK thread mode: events per process */
#define PR_MAX_RETRY   10        /* then the batch is dropped */
#define PR_BACKOFF_MS  500       /* x 2^attempt, jittered x [0.5, 1) */
#define PR_BACKOFF_MAX 30000

struct pr_shared {
	_Atomic uint64_t emitted[PR_MAXP];
	_Atomic uint64_t dropped[PR_MAXP];    /* queue full, retries out */
	_Atomic uint64_t requests[PR_MAXP];
	_Atomic int stop;
	uint64_t deadline_ns;                 /* no retry sleeps past it */
	uint64_t run;                         /* id prefix of this run */
	struct bench_hist h[PR_MAXP];
};

/* one phase: the sink, the producers, the clock */
struct pr_phase {
	const struct bench_work *w;
	const char *who;
	struct pr_shared *sh;
	struct hs_sink hs;
	pid_t pids[PR_MAXP];
	uint64_t t0, outage_until;
	int outage_marked;
	double prod_cpu;
	double pace_us;              /* the pacing alone, during this run */
};

typedef void (*pr_producer_fn)(struct pr_phase *ph, int me, void *arg);

static uint64_t pr_emitted(const struct pr_phase *ph)
{
	uint64_t n = 0;
	int i;

	for (i = 0; i < ph->w->np; i++)
		n += atomic_load(&ph->sh->emitted[i]);
	return n;
}

static double pr_wait_max(const struct bench_work *w)
{
	return 120 + (w->outage > 0 ? w->outage + 60 : 0);
}

/* ---- the phase driver ------------------------------------------------ */

static int pr_begin(struct pr_phase *ph, const struct bench_work *w,
		    const char *who)
{
	struct hs_opts ho = { w->sink_threads, 1, 0 };

	memset(ph, 0, sizeof(*ph));
	ph->w = w;
	ph->who = who;
	ph->sh = mmap(NULL, sizeof(*ph->sh), PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (ph->sh == MAP_FAILED)
		return -1;
	ph->sh->run = ((uint64_t)getpid() << 32) ^ bench_now();
	if (hs_start(&ph->hs, &ho) < 0) {
		munmap(ph->sh, sizeof(*ph->sh));
		return -1;
	}
	return 0;
}

/* every 100 ms: the progress line; once the outage is over, the sink
 * stamps when it has everything emitted until then */
static void pr_tick(struct pr_phase *ph)
{
	uint64_t now = bench_now();

	bench_progress(ph->w->progress, ph->who, (double)(now - ph->t0) / 1e9,
		       pr_emitted(ph), hs_have(&ph->hs));
	if (ph->outage_until && !ph->outage_marked &&
	    now >= ph->outage_until) {
		hs_drain_target(&ph->hs, pr_emitted(ph));
		ph->outage_marked = 1;
	}
}

static void pr_sleep_tick(struct pr_phase *ph, uint64_t until)
{
	uint64_t wake = bench_now() + 100000000ull;

	if (!ph->outage_marked && ph->outage_until > bench_now() &&
	    ph->outage_until < wake)
		wake = ph->outage_until;
	bench_sleep_until(wake < until ? wake : until);
	pr_tick(ph);
}

/* forks the producers, lets them emit for the duration, stops them and
 * collects their CPU; 0, or -1 when one failed */
static int pr_run(struct pr_phase *ph, pr_producer_fn fn, void *arg)
{
	const struct bench_work *w = ph->w;
	uint64_t end, give_up;
	int i, left = w->np, rc = 0, st, done[PR_MAXP] = { 0 };
	struct bench_pace pace = { .np = 0 };
	struct rusage ru;

	ph->t0 = bench_now();
	ph->sh->deadline_ns = ph->t0 + (uint64_t)((w->duration +
					pr_wait_max(w)) * 1e9);
	if (w->outage > 0) {
		uint64_t from = ph->t0 + (uint64_t)(w->outage_at * 1e9);

		ph->outage_until = from + (uint64_t)(w->outage * 1e9);
		hs_outage(&ph->hs, from, ph->outage_until, w->outage_code,
			  w->retry_after);
	}
	for (i = 0; i < w->np; i++) {
		ph->pids[i] = fork();
		if (ph->pids[i] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			fn(ph, i, arg);
			_exit(0);
		}
	}
	if (w->rate > 0 && w->pace_alongside)
		bench_pace_start(&pace, w->np, w->rate, w->duration);
	end = ph->t0 + (uint64_t)(w->duration * 1e9);
	while (bench_now() < end)
		pr_sleep_tick(ph, end);
	atomic_store(&ph->sh->stop, 1);
	/* an SDK producer may still retry its last batches: wait, bounded */
	give_up = ph->sh->deadline_ns + 5000000000ull;
	while (left > 0) {
		int reaped = 0;

		/* its own children only: the pacing's are reaped apart */
		for (i = 0; i < w->np; i++) {
			if (done[i] || wait4(ph->pids[i], &st, WNOHANG, &ru) !=
				       ph->pids[i])
				continue;
			done[i] = 1;
			reaped = 1;
			left--;
			ph->prod_cpu += bench_ru_s(&ru);
			if (!WIFEXITED(st) || WEXITSTATUS(st))
				rc = -1;
		}
		if (reaped)
			continue;
		if (bench_now() > give_up) {
			for (i = 0; i < w->np; i++)
				kill(ph->pids[i], SIGKILL);
			rc = -1;
			give_up = UINT64_MAX;
		}
		pr_sleep_tick(ph, bench_now() + 10000000ull);
	}
	ph->pace_us = w->rate > 0 && w->pace_alongside ?
		      bench_pace_end(&pace) : w->pace_us;
	return rc;
}

/* waits until the sink has every emitted event (and the outage is
 * marked), or nothing arrived for stall_s, or the bound */
static void pr_wait_delivered(struct pr_phase *ph, double stall_s)
{
	uint64_t want = pr_emitted(ph), last = 0, since = bench_now();
	uint64_t bound = bench_now() + (uint64_t)(pr_wait_max(ph->w) * 1e9);

	for (;;) {
		uint64_t have = hs_have(&ph->hs), now = bench_now();

		if (have >= want && (!ph->outage_until || ph->outage_marked))
			break;
		if (have != last) {
			last = have;
			since = now;
		}
		if (now - since > (uint64_t)(stall_s * 1e9) || now > bound)
			break;
		pr_sleep_tick(ph, now + 10000000ull);
	}
}

/* the sink's and the producers' view into p; the sink is stopped */
static void pr_finish(struct pr_phase *ph, struct bench_peer *p)
{
	const struct hs_shared *k = ph->hs.sh;
	uint64_t emitted[PR_MAXP], last = atomic_load(&k->last_ok_ns);
	uint64_t done = atomic_load(&k->drain_done_ns);
	struct bench_hist *all = calloc(1, sizeof(*all));
	int i;

	bench_progress_done(ph->w->progress);
	for (i = 0; i < ph->w->np; i++) {
		emitted[i] = atomic_load(&ph->sh->emitted[i]);
		p->requests += atomic_load(&ph->sh->requests[i]);
		if (all)
			bench_hist_merge(all, &ph->sh->h[i]);
	}
	p->emitted = pr_emitted(ph);
	p->delivered = atomic_load(&k->unique);
	p->dups = atomic_load(&k->dups);
	p->lost = hs_lost(&ph->hs, emitted, ph->w->np);
	if (!p->requests)    /* a daemon's requests: what the sink got */
		p->requests = atomic_load(&k->requests);
	p->outage_requests = atomic_load(&k->requests_rejected);
	p->secs = last > ph->t0 ? (double)(last - ph->t0) / 1e9 : 0;
	p->prod_cpu_s = ph->prod_cpu;
	p->pace_us = ph->pace_us;
	p->drain_s = -1;
	if (ph->outage_until && done)
		p->drain_s = done > ph->outage_until ?
			     (double)(done - ph->outage_until) / 1e9 : 0;
	if (all) {
		p->emit_p50 = bench_hist_pct(all, 50);
		p->emit_p99 = bench_hist_pct(all, 99);
	}
	free(all);
	p->ran = 1;
	hs_stop(&ph->hs);
	munmap(ph->sh, sizeof(*ph->sh));
}

/* flat out: lines built and handed over in timed groups of 32 (as the
 * outbox producers are timed, body building included); paced: one at
 * each absolute deadline, built first, the hand-over timed alone.
 * emit() returns < 0 to stop. */
typedef int (*pr_emit_fn)(void *ctx, const char *line, int n);

static void pr_emit_loop(struct pr_phase *ph, int me, pr_emit_fn emit,
			 void *ctx)
{
	const struct bench_work *w = ph->w;
	struct pr_shared *sh = ph->sh;
	uint64_t s = 0, t0, next = bench_now();
	uint64_t period = w->rate > 0 ? (uint64_t)(1e9 / w->rate) : 0;
	char body[65536], *line = malloc((size_t)w->size + 256);
	int j, bl, n;

	if (!line)
		_exit(2);
	while (!atomic_load(&sh->stop)) {
		int group = period ? 1 : 32;

		if (period)
			bench_sleep_until(next += period);
		t0 = bench_now();
		for (j = 0; j < group; j++, s++) {
			bl = bench_body(body, me, s, w->size);
			n = bench_line(line, "api", sh->run, me, s,
				       (uint64_t)time(NULL) * 1000000000ull,
				       body, bl);
			if (period)
				t0 = bench_now();
			if (emit(ctx, line, n) < 0) {
				atomic_store(&sh->emitted[me], s);
				free(line);
				return;
			}
		}
		bench_hist_add(&sh->h[me], (bench_now() - t0) / (uint64_t)group);
		atomic_store(&sh->emitted[me], s);
	}
	free(line);
}

/* ---- the per-worker SDK ---------------------------------------------- */

struct sdk {
	struct pr_phase *ph;
	int me, batch;
	CURL *h;
	struct curl_slist *hd;
	struct comp *comp;
	struct buf raw, body;        /* the batch, and compressed */
	unsigned nev;                /* events in raw */
	unsigned rnd;
	/* thread mode: a bounded queue of lines, drop when full */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char *q;
	int *qlen;
	size_t slot;
	uint64_t qh, qt;
	int done;
};

static size_t sdk_discard(char *p, size_t s, size_t n, void *u)
{
	(void)p;
	(void)u;
	return s * n;
}

/* POSTs raw (nev events), compressed as outbox is told to; retried with
 * this process's own exponential backoff, as an SDK does */
static void sdk_post(struct sdk *k)
{
	struct pr_shared *sh = k->ph->sh;
	const struct buf *b = &k->raw;
	int attempt;

	if (!k->nev)
		return;
	if (k->comp) {
		if (comp_body(k->comp, k->raw.p, k->raw.len, &k->body) < 0)
			_exit(5);
		b = &k->body;
	}
	curl_easy_setopt(k->h, CURLOPT_POSTFIELDS, b->p);
	curl_easy_setopt(k->h, CURLOPT_POSTFIELDSIZE_LARGE,
			 (curl_off_t)b->len);
	for (attempt = 0;; attempt++) {
		CURLcode rc = curl_easy_perform(k->h);
		long code = 0;
		curl_off_t ra = 0;
		double ms;
		uint64_t wake;

		atomic_fetch_add(&sh->requests[k->me], 1);
		if (rc == CURLE_OK) {
			curl_easy_getinfo(k->h, CURLINFO_RESPONSE_CODE, &code);
			curl_easy_getinfo(k->h, CURLINFO_RETRY_AFTER, &ra);
		}
		if (code / 100 == 2)
			break;
		ms = PR_BACKOFF_MS * (double)(1u << (attempt < 16 ? attempt : 16));
		if (ms > PR_BACKOFF_MAX)
			ms = PR_BACKOFF_MAX;
		ms *= 0.5 + 0.5 * (double)rand_r(&k->rnd) / RAND_MAX;
		if ((double)ra * 1000.0 > ms)
			ms = (double)ra * 1000.0;
		wake = bench_now() + (uint64_t)(ms * 1e6);
		if (attempt >= PR_MAX_RETRY || wake > sh->deadline_ns) {
			atomic_fetch_add(&sh->dropped[k->me], k->nev);
			break;
		}
		bench_sleep_until(wake);
	}
	buf_reset(&k->raw);
	k->nev = 0;
}

/* inline: the emit that fills the batch POSTs it */
static int sdk_emit_inline(void *ctx, const char *line, int n)
{
	struct sdk *k = ctx;

	if (buf_add(&k->raw, line, (size_t)n) < 0)
		return -1;
	if (++k->nev >= (unsigned)k->batch)
		sdk_post(k);
	return 0;
}

/* thread mode: copy into the queue under the lock (drop when full) */
static int sdk_emit_queue(void *ctx, const char *line, int n)
{
	struct sdk *k = ctx;

	pthread_mutex_lock(&k->mu);
	if (k->qt - k->qh >= PR_QUEUE) {
		atomic_fetch_add(&k->ph->sh->dropped[k->me], 1);
	} else {
		size_t i = (size_t)(k->qt % PR_QUEUE);

		memcpy(k->q + i * k->slot, line, (size_t)n);
		k->qlen[i] = n;
		if (++k->qt - k->qh == (uint64_t)k->batch)
			pthread_cond_signal(&k->cv);
	}
	pthread_mutex_unlock(&k->mu);
	return 0;
}

/* the background sender: a full batch, or what is there after flush_ms */
static void *sdk_sender(void *arg)
{
	struct sdk *k = arg;
	uint64_t flush = (uint64_t)k->ph->w->flush_ms * 1000000ull;
	uint64_t due = bench_now() + flush;

	for (;;) {
		struct timespec ts;

		pthread_mutex_lock(&k->mu);
		/* asleep until the batch fills (the emit signals), the
		 * flush interval ends or the process stops: no polling */
		while (k->qt - k->qh < (uint64_t)k->batch && !k->done &&
		       bench_now() < due) {
			ts.tv_sec = (time_t)(due / 1000000000ull);
			ts.tv_nsec = (long)(due % 1000000000ull);
			pthread_cond_timedwait(&k->cv, &k->mu, &ts);
		}
		if (k->qt == k->qh && !k->done) {
			/* nothing to send: a new interval */
			pthread_mutex_unlock(&k->mu);
			due = bench_now() + flush;
			continue;
		}
		if (k->qt == k->qh && k->done) {
			pthread_mutex_unlock(&k->mu);
			return NULL;
		}
		while (k->qh < k->qt && k->nev < (unsigned)k->batch) {
			size_t i = (size_t)(k->qh++ % PR_QUEUE);

			buf_add(&k->raw, k->q + i * k->slot, (size_t)k->qlen[i]);
			k->nev++;
		}
		pthread_mutex_unlock(&k->mu);
		sdk_post(k);
		due = bench_now() + flush;
	}
}

static void sdk_init_curl(struct sdk *k, int port)
{
	char url[64];

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/sdk", port);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	k->h = curl_easy_init();
	k->hd = curl_slist_append(NULL, "Content-Type: application/x-ndjson");
	k->hd = curl_slist_append(k->hd, "Expect:");
	if (k->comp)
		k->hd = curl_slist_append(k->hd,
					  comp_header(k->ph->w->comp));
	if (!k->h || !k->hd)
		_exit(2);
	curl_easy_setopt(k->h, CURLOPT_URL, url);
	curl_easy_setopt(k->h, CURLOPT_HTTPHEADER, k->hd);
	curl_easy_setopt(k->h, CURLOPT_WRITEFUNCTION, sdk_discard);
	curl_easy_setopt(k->h, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
	curl_easy_setopt(k->h, CURLOPT_TIMEOUT_MS, 15000L);
	curl_easy_setopt(k->h, CURLOPT_NOSIGNAL, 1L);
}

static void sdk_producer(struct pr_phase *ph, int me, void *arg)
{
	const struct bench_work *w = ph->w;
	struct sdk k = { .ph = ph, .me = me, .batch = w->batch,
			 .rnd = (unsigned)getpid() * 7919u };
	pthread_condattr_t ca;
	pthread_t th;

	(void)arg;
	if (w->comp != COMP_NONE && !(k.comp = comp_new(w->comp, 0)))
		_exit(2);
	buf_init(&k.raw, 0);
	buf_init(&k.body, 0);
	sdk_init_curl(&k, ph->hs.sh->port);
	if (w->rate <= 0) {
		pr_emit_loop(ph, me, sdk_emit_inline, &k);
		sdk_post(&k);          /* the last, partial batch */
		_exit(0);
	}
	k.slot = (size_t)w->size + 256;
	k.q = malloc(PR_QUEUE * k.slot);
	k.qlen = calloc(PR_QUEUE, sizeof(*k.qlen));
	/* the sender's deadlines are CLOCK_MONOTONIC (bench_now) */
	if (!k.q || !k.qlen || pthread_mutex_init(&k.mu, NULL) ||
	    pthread_condattr_init(&ca) ||
	    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) ||
	    pthread_cond_init(&k.cv, &ca) ||
	    pthread_create(&th, NULL, sdk_sender, &k))
		_exit(2);
	pr_emit_loop(ph, me, sdk_emit_queue, &k);
	pthread_mutex_lock(&k.mu);
	k.done = 1;
	pthread_cond_signal(&k.cv);
	pthread_mutex_unlock(&k.mu);
	pthread_join(th, NULL);
	_exit(0);
}

int bench_peer_sdk(const struct bench_work *w, struct bench_peer *p)
{
	struct pr_phase ph;
	int rc;

	memset(p, 0, sizeof(*p));
	p->name = "sdk";
	snprintf(p->note, sizeof(p->note), "%s, %d events per request, "
		 "%s", w->rate > 0 ? "background sender thread, queue of "
		 "10000 (drop when full)" : "inline (the emit that fills a "
		 "batch POSTs it)", w->batch, comp_name(w->comp));
	if (pr_begin(&ph, w, "sdk") < 0) {
		snprintf(p->note, sizeof(p->note), "cannot start the sink");
		return -1;
	}
	rc = pr_run(&ph, sdk_producer, NULL);
	pr_finish(&ph, p);
	if (rc < 0)
		snprintf(p->note + strlen(p->note),
			 sizeof(p->note) - strlen(p->note),
			 "; a producer failed");
	return 0;
}

/* ---- syslog-ng ------------------------------------------------------- */

struct sng {
	char dir[64], conf[128], sock[128], log[128];
	pid_t pid;
};

static const char *sng_binary(void)
{
	static const char *const where[] = { "/usr/sbin/syslog-ng",
		"/usr/bin/syslog-ng", "/usr/local/sbin/syslog-ng", NULL };
	int i;

	for (i = 0; where[i]; i++)
		if (access(where[i], X_OK) == 0)
			return where[i];
	return NULL;
}

/* the config ../shared/peers/scripts/lib.sh writes for TRANSPORT=stream:
 * no parsing, flow control (nothing dropped on the way in: producers
 * block), a reliable disk buffer, http() batches of 1000 lines, 2
 * workers; syslog-ng 3.38 (Debian 12) has no request compression */
static int sng_config(struct sng *g, const struct bench_work *w, int port)
{
	FILE *f = fopen(g->conf, "w");

	if (!f)
		return -1;
	fprintf(f, "@version: 3.38\n"
		"options { threaded(yes); stats-level(1); use-dns(no); "
		"use-fqdn(no); keep-hostname(yes); chain-hostnames(no); "
		"log-fifo-size(100000); };\n"
		"source s_in { unix-stream(\"%s\" flags(no-parse) "
		"so-passcred(no) max-connections(64) log-iw-size(64000)); };\n"
		"destination d_http {\n"
		"  http(url(\"http://127.0.0.1:%d/sng\") method(\"POST\") "
		"body(\"${MSG}\") delimiter(\"\\n\")\n"
		"       batch-lines(1000) batch-bytes(1048576) "
		"batch-timeout(100) workers(2) retries(3) time-reopen(%d) "
		"timeout(10)\n"
		"       disk-buffer(reliable(yes) disk-buf-size(536870912) "
		"mem-buf-size(16777216) dir(\"%s/db\")));\n"
		"};\n"
		"log { source(s_in); destination(d_http); flags(flow-control); "
		"};\n", g->sock, port, w->sng_reopen, g->dir);
	return fclose(f) == 0 ? 0 : -1;
}

static int sng_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		return fd;
	if (fd >= 0)
		close(fd);
	return -1;
}

static int sng_start(struct sng *g, const struct bench_work *w, int port)
{
	const char *bin = sng_binary();
	char db[128];
	int i, fd;

	snprintf(g->dir, sizeof(g->dir), "/tmp/obxbench-sng-XXXXXX");
	if (!bin || !mkdtemp(g->dir))
		return -1;
	snprintf(g->conf, sizeof(g->conf), "%s/syslog-ng.conf", g->dir);
	snprintf(g->sock, sizeof(g->sock), "%s/in.sock", g->dir);
	snprintf(g->log, sizeof(g->log), "%s/stderr.log", g->dir);
	snprintf(db, sizeof(db), "%s/db", g->dir);
	if (mkdir(db, 0700) < 0 || sng_config(g, w, port) < 0)
		return -1;
	g->pid = fork();
	if (g->pid == 0) {
		char persist[128], pidf[128], ctl[128];
		int lfd = open(g->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (lfd >= 0) {
			dup2(lfd, 1);
			dup2(lfd, 2);
		}
		snprintf(persist, sizeof(persist), "%s/persist", g->dir);
		snprintf(pidf, sizeof(pidf), "%s/pid", g->dir);
		snprintf(ctl, sizeof(ctl), "%s/ctl", g->dir);
		execl(bin, "syslog-ng", "-F", "--no-caps", "-e", "-f", g->conf,
		      "-R", persist, "-p", pidf, "-c", ctl, (char *)NULL);
		_exit(127);
	}
	for (i = 0; g->pid > 0 && i < 200; i++) {
		if ((fd = sng_connect(g->sock)) >= 0) {
			close(fd);
			return 0;
		}
		if (waitpid(g->pid, NULL, WNOHANG) == g->pid) {
			g->pid = 0;
			break;
		}
		usleep(50000);
	}
	return -1;
}

static void sng_stop(struct sng *g)
{
	char cmd[128];
	int i;

	if (g->pid > 0) {
		kill(g->pid, SIGTERM);
		for (i = 0; i < 100 && waitpid(g->pid, NULL, WNOHANG) == 0; i++)
			usleep(50000);
		if (i == 100) {
			kill(g->pid, SIGKILL);
			waitpid(g->pid, NULL, 0);
		}
		g->pid = 0;
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g->dir);
	if (g->dir[0] && !getenv("OBX_KEEP_TMP") && system(cmd) != 0)
		fprintf(stderr, "outbox-bench: could not remove %s\n", g->dir);
}

/* one write per event, as a logging client sends a line; blocks while
 * syslog-ng's flow control holds the source */
static int sng_emit(void *ctx, const char *line, int n)
{
	int fd = *(int *)ctx;

	while (n > 0) {
		ssize_t k = write(fd, line, (size_t)n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		line += k;
		n -= (int)k;
	}
	return 0;
}

static void sng_producer(struct pr_phase *ph, int me, void *arg)
{
	const struct sng *g = arg;
	int fd = sng_connect(g->sock);

	signal(SIGPIPE, SIG_IGN);
	if (fd < 0)
		_exit(2);
	pr_emit_loop(ph, me, sng_emit, &fd);
	close(fd);
	_exit(0);
}

int bench_peer_syslogng(const struct bench_work *w, struct bench_peer *p)
{
	struct sng g = { 0 };
	struct pr_phase ph;
	double c0 = 0, c1 = 0;
	uint64_t hwm;
	int rc;

	memset(p, 0, sizeof(*p));
	p->name = "syslog_ng";
	if (!sng_binary()) {
		snprintf(p->note, sizeof(p->note), "syslog-ng is not installed "
			 "(tools/install-deps installs syslog-ng-core and "
			 "syslog-ng-mod-http)");
		return -1;
	}
	if (pr_begin(&ph, w, "syslog-ng") < 0) {
		snprintf(p->note, sizeof(p->note), "cannot start the sink");
		return -1;
	}
	if (sng_start(&g, w, ph.hs.sh->port) < 0) {
		snprintf(p->note, sizeof(p->note), "syslog-ng did not start: "
			 "see %s", g.log);
		hs_stop(&ph.hs);
		munmap(ph.sh, sizeof(*ph.sh));
		getenv("OBX_KEEP_TMP") ? (void)0 : (void)sng_stop(&g);
		return -1;
	}
	snprintf(p->note, sizeof(p->note), "unix-stream, reliable disk "
		 "buffer, http() batches of 1000 lines, workers(2), "
		 "time-reopen(%d), no compression (3.38 has none)",
		 w->sng_reopen);
	bench_proc(g.pid, &c0, &hwm);
	rc = pr_run(&ph, sng_producer, &g);
	/* after an outage syslog-ng waits time-reopen before it retries */
	pr_wait_delivered(&ph, 10.0 + (w->outage > 0 ? w->sng_reopen : 0));
	bench_proc(g.pid, &c1, &hwm);
	p->daemon_cpu_s = c1 - c0;
	pr_finish(&ph, p);
	sng_stop(&g);
	if (rc < 0)
		snprintf(p->note + strlen(p->note),
			 sizeof(p->note) - strlen(p->note),
			 "; a producer failed");
	return 0;
}

/* ---- the side-by-side report ----------------------------------------- */

double bench_peer_rate(const struct bench_peer *p)
{
	return p->secs > 0 ? (double)p->delivered / p->secs : 0;
}

double bench_peer_cpu_us(const struct bench_peer *p)
{
	return p->delivered ? (p->prod_cpu_s + p->daemon_cpu_s) * 1e6 /
			      (double)p->delivered : 0;
}

void bench_progress(int on, const char *who, double t, uint64_t emitted,
		    uint64_t delivered)
{
	if (!on)
		return;
	printf("\r\033[K%-9s %6.1f s  emitted %10llu  delivered %10llu",
	       who, t, (unsigned long long)emitted,
	       (unsigned long long)delivered);
	fflush(stdout);
}

void bench_progress_done(int on)
{
	if (!on)
		return;
	printf("\r\033[K");
	fflush(stdout);
}

static void cmp_json_peer(const struct bench_work *w,
			  const struct bench_peer *p)
{
	char drain[32] = "null", *how;
	json_t *j;

	if (!p->ran) {
		printf("null");
		return;
	}
	j = json_string(p->note);
	how = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
	json_decref(j);
	if (p->drain_s >= 0)
		snprintf(drain, sizeof(drain), "%.2f", p->drain_s);
	printf("{\"delivered_per_s\":%.0f,\"cpu_us_per_event\":%.3f,"
	       "\"pace_cpu_us_per_event\":%.3f,"
	       "\"cpu_us_per_event_net\":%.3f,\"lost\":%llu,"
	       "\"duplicates\":%llu,\"emitted\":%llu,\"delivered\":%llu,"
	       "\"seconds\":%.2f,\"requests\":%llu,\"outage_requests\":%llu,"
	       "\"drain_after_outage_s\":%s,\"producers_cpu_s\":%.2f,"
	       "\"daemon_cpu_s\":%.2f,\"emit_ns_p50\":%llu,"
	       "\"emit_ns_p99\":%llu,\"how\":%s}",
	       bench_peer_rate(p), bench_peer_cpu_us(p), p->pace_us,
	       bench_peer_cpu_us(p) - p->pace_us,
	       (unsigned long long)p->lost, (unsigned long long)p->dups,
	       (unsigned long long)p->emitted,
	       (unsigned long long)p->delivered, p->secs,
	       (unsigned long long)p->requests,
	       (unsigned long long)p->outage_requests, drain, p->prod_cpu_s,
	       p->daemon_cpu_s, (unsigned long long)p->emit_p50,
	       (unsigned long long)p->emit_p99, how ? how : "null");
	free(how);
}

static double cmp_ratio(double a, double b)
{
	return b > 0 ? a / b : 0;
}

static void cmp_json_ratios(const struct bench_work *w,
			    const struct bench_peer *ob,
			    const struct bench_peer *pr, const char *name,
			    int first)
{
	if (!pr->ran)
		return;
	printf("%s\"delivered_per_s_vs_%s\":%.3f,"
	       "\"cpu_us_per_event_vs_%s\":%.3f", first ? "" : ",", name,
	       cmp_ratio(bench_peer_rate(ob), bench_peer_rate(pr)), name,
	       cmp_ratio(bench_peer_cpu_us(ob), bench_peer_cpu_us(pr)));
	if (w->outage > 0)
		printf(",\"outage_requests_vs_%s\":%.3f", name,
		       cmp_ratio((double)ob->outage_requests,
				 (double)pr->outage_requests));
}

static void cmp_row(const char *what, const struct bench_peer *const *all,
		    int n, int kind, const struct bench_work *w)
{
	int i;

	printf("| %s |", what);
	for (i = 0; i < n; i++) {
		const struct bench_peer *p = all[i];

		if (!p->ran) {
			printf(" - |");
			continue;
		}
		switch (kind) {
		case 0:
			printf(" %.0f |", bench_peer_rate(p));
			break;
		case 1:
			if (w->rate > 0)
				printf(" %.2f (%.2f) |", bench_peer_cpu_us(p),
				       bench_peer_cpu_us(p) - p->pace_us);
			else
				printf(" %.3f |", bench_peer_cpu_us(p));
			break;
		case 2:
			printf(" %llu / %llu |", (unsigned long long)p->lost,
			       (unsigned long long)p->dups);
			break;
		case 3:
			printf(" %llu (%llu) |", (unsigned long long)p->requests,
			       (unsigned long long)p->outage_requests);
			break;
		case 4:
			if (p->drain_s >= 0)
				printf(" %.2f |", p->drain_s);
			else
				printf(" never |");
			break;
		default:
			printf(" %llu / %llu |",
			       (unsigned long long)p->emit_p50,
			       (unsigned long long)p->emit_p99);
			break;
		}
	}
	printf("\n");
}

void bench_compare_print(const struct bench_work *w,
			 const struct bench_peer *ob, const struct bench_peer *sdk,
			 const struct bench_peer *sng, int json,
			 const char *outbox_json)
{
	const struct bench_peer *all[3] = { ob, sdk, sng };

	if (json) {
		printf("{\"outbox\":%s,\"sdk\":", outbox_json);
		cmp_json_peer(w, sdk);
		printf(",\"syslog_ng\":");
		cmp_json_peer(w, sng);
		printf(",\"ratios\":{");
		cmp_json_ratios(w, ob, sdk, "sdk", 1);
		cmp_json_ratios(w, ob, sng, "syslog_ng", !sdk->ran);
		printf("}}\n");
		return;
	}
	printf("\n%d producers x %d B, %s, %s, compression %s, %d events "
	       "per request%s\n\n| | outbox | per-worker SDK | syslog-ng |\n"
	       "|---|---|---|---|\n", w->np, w->size,
	       w->rate > 0 ? "paced" : "flat out",
	       w->outage > 0 ? "with an outage" : "no outage",
	       comp_name(w->comp), w->batch,
	       w->rate > 0 ? "; CPU net of the pacing in brackets" : "");
	cmp_row("delivered events/s", all, 3, 0, w);
	cmp_row("CPU us per event", all, 3, 1, w);
	cmp_row("lost / duplicates", all, 3, 2, w);
	cmp_row("requests (503 answered)", all, 3, 3, w);
	if (w->outage > 0)
		cmp_row("drained after the outage, s", all, 3, 4, w);
	cmp_row("emit p50 / p99 ns", all, 3, 5, w);
	printf("\nratios (outbox / peer): delivered/s %.2fx SDK",
	       cmp_ratio(bench_peer_rate(ob), bench_peer_rate(sdk)));
	if (sng->ran)
		printf(", %.2fx syslog-ng",
		       cmp_ratio(bench_peer_rate(ob), bench_peer_rate(sng)));
	printf("; CPU per event %.2fx SDK",
	       cmp_ratio(bench_peer_cpu_us(ob), bench_peer_cpu_us(sdk)));
	if (sng->ran)
		printf(", %.2fx syslog-ng", cmp_ratio(bench_peer_cpu_us(ob),
						      bench_peer_cpu_us(sng)));
	printf("\nsdk: %s\nsyslog-ng: %s\n", sdk->note, sng->note);
}
