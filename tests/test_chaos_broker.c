/* test_chaos_broker.c - the broker under kill -9 and a full disk.
 *
 * For each durability level (none, write, fdatasync): producers forked
 * from here emit {"p":P,"s":S} events without pause; the broker (the
 * built outboxd, file sink) is killed with SIGKILL and restarted again
 * and again at random moments; in the middle the spool's file system (a
 * small tmpfs mounted by the test, when run as root) is filled by another
 * writer, the broker killed while it is full, then the space freed and
 * the broker left alone, so delivery must resume by itself. At the end:
 *
 *   lost = 0        every committed event is in the output, or counted
 *                   as dropped by the broker (the full disk) - exactly
 *   duplicates      per kill, at most the bound DESIGN.md states:
 *                   2 x in-flight batches x batch_max_events
 *   counters        the identity of PRODUCT.md section 6 holds exactly,
 *                   delivered_events = distinct events in the output
 *
 * Bounded by default (make test: ~20 kills per level, a short full
 * phase); OUTBOX_CHAOS=long (make chaos) runs 100 kills per level at a
 * higher rate. The table and the disk-full timeline are printed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "testutil.h"
#include "brokertest.h"
#include "outbox.h"

#define NPROD		2
#define BATCH		500		/* batch_max_events */
#define INFLIGHT	4		/* file sink: min(max_inflight, 8) */
#define DUP_BOUND	(2 * INFLIGHT * BATCH)
#define TMPFS_MB	16

struct shared {
	volatile uint64_t done[NPROD];	/* events committed, per producer */
	volatile int stop;
};

struct chaos_cfg {
	int kills;			/* per level */
	int full_kills;			/* of them, while the disk is full */
	int kill_min_ms, kill_rand_ms;	/* between kills */
	int full_ms;			/* how long the disk stays full */
	uint64_t pace_ns;		/* per event, per producer */
	int flush_interval_ms;		/* the sink's; 0: the tests' 20 ms */
};

/* ---- producers ----------------------------------------------------------- */

static void producer(const char *shm, unsigned p, struct shared *sh,
		     uint64_t pace_ns)
{
	obx_t *h = bt_open(shm);
	char body[256];
	uint64_t s = 0;

	if (!h)
		_exit(2);
	while (!sh->stop) {
		int len = snprintf(body, sizeof(body), "{\"p\":%u,\"s\":%llu,"
				   "\"pad\":\"%0*d\"}", p,
				   (unsigned long long)s, 100, 0), rc;

		while ((rc = obx_emit(h, 0, "t", body, (size_t)len,
				      OBX_BODY_JSON)) == -EAGAIN &&
		       !sh->stop)
			usleep(200);
		if (rc == -EAGAIN)
			break;
		if (rc != 0)
			_exit(3);
		s++;
		__atomic_store_n(&sh->done[p], s, __ATOMIC_RELEASE);
		if (pace_ns && s % 64 == 0)
			usleep((useconds_t)(pace_ns * 64 / 1000));
	}
	obx_close(h);
	_exit(0);
}

/* ---- the output, read as it grows ----------------------------------------- */

struct out_reader {
	const char *path;
	off_t off;
	char *part;			/* an incomplete last line */
	size_t plen;
	uint8_t *seen[NPROD];		/* copies of (p, s), capped at 255 */
	uint64_t cap[NPROD];
	uint64_t next_s[NPROD];		/* one past the highest s seen */
	uint64_t lines, distinct, dups, bad;
};

static void out_count(struct out_reader *o, const char *line, size_t n)
{
	const char *b = memmem(line, n, "\"body\":{\"p\":", 12);
	unsigned long p, s;
	char *e;

	o->lines++;
	if (!b) {
		o->bad++;
		return;
	}
	p = strtoul(b + 12, &e, 10);
	if (p >= NPROD || strncmp(e, ",\"s\":", 5)) {
		o->bad++;
		return;
	}
	s = strtoul(e + 5, NULL, 10);
	if (s >= o->cap[p]) {
		uint64_t nc = o->cap[p] ? o->cap[p] : 1 << 20;
		uint8_t *ns;

		while (nc <= s)
			nc *= 2;
		ns = realloc(o->seen[p], nc);
		CU_ASSERT_FATAL(ns != NULL);
		memset(ns + o->cap[p], 0, nc - o->cap[p]);
		o->seen[p] = ns;
		o->cap[p] = nc;
	}
	if (s + 1 > o->next_s[p])
		o->next_s[p] = s + 1;
	if (o->seen[p][s])
		o->dups++;
	else
		o->distinct++;
	if (o->seen[p][s] < 255)
		o->seen[p][s]++;
}

/* Reads what was appended since the last call; whole lines only. */
static void out_read(struct out_reader *o)
{
	static char buf[1 << 20];
	int fd = open(o->path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return;
	while ((n = pread(fd, buf, sizeof(buf), o->off)) > 0) {
		char *p = buf, *end = buf + n, *nl;

		o->off += n;
		while ((nl = memchr(p, '\n', (size_t)(end - p)))) {
			if (o->plen) {
				o->part = realloc(o->part, o->plen +
						  (size_t)(nl - p));
				memcpy(o->part + o->plen, p, (size_t)(nl - p));
				out_count(o, o->part, o->plen +
					  (size_t)(nl - p));
				o->plen = 0;
			} else {
				out_count(o, p, (size_t)(nl - p));
			}
			p = nl + 1;
		}
		if (p < end) {
			o->part = realloc(o->part, o->plen + (size_t)(end - p));
			memcpy(o->part + o->plen, p, (size_t)(end - p));
			o->plen += (size_t)(end - p);
		}
	}
	close(fd);
}

/* Committed events that are not in the output. */
static uint64_t out_missing(const struct out_reader *o,
			    const struct shared *sh)
{
	uint64_t m = 0, s;
	unsigned p;

	for (p = 0; p < NPROD; p++)
		for (s = 0; s < sh->done[p]; s++)
			m += s >= o->cap[p] || !o->seen[p][s];
	return m;
}

/* ---- the disk ---------------------------------------------------------- */

static int fill_disk(const char *path)
{
	static char chunk[65536];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	if (fd < 0)
		return -1;
	while (write(fd, chunk, sizeof(chunk)) > 0)
		;
	while (write(fd, chunk, 512) > 0)
		;
	close(fd);
	return 0;
}

/* The disk stays full while the test says so: another process takes
 * every block the broker frees (its deleted segments), as a log that
 * fills a shared disk does. Without it the broker's deletions give it
 * room again and whether it ever has to refuse depends on timing. */
struct hog {
	char path[400];
	atomic_int stop;
	pthread_t th;
};

static void *hog_run(void *arg)
{
	static char chunk[4096];
	struct hog *h = arg;
	int fd = open(h->path, O_WRONLY | O_CREAT | O_APPEND, 0600);

	if (fd < 0)
		return NULL;
	while (!atomic_load(&h->stop)) {
		while (write(fd, chunk, sizeof(chunk)) > 0)
			;
		while (write(fd, chunk, 512) > 0)
			;
		usleep(1000);
	}
	close(fd);
	return NULL;
}

static int count_log(const struct bt *t, const char *what)
{
	size_t len;
	char *log = tu_read_file(t->log, &len), *p;
	int n = 0;

	for (p = log; p && (p = strstr(p, what)); p++)
		n++;
	free(log);
	return n;
}

/* ---- one level ----------------------------------------------------------- */

struct level_res {
	const char *name;
	int kills;
	uint64_t committed, distinct, missing, dropped, lost;
	uint64_t dup_max, dup_sum, redelivered, delivered_ctr;
	int identity;
	/* disk-full timeline */
	int full_done;
	double t_first_drop, t_freed, t_resumed, t_last_refusal;
	uint64_t full_spool_drops, full_ring_drops, full_log_lines;
};

#define NLEVELS 4
static struct level_res g_res[NLEVELS];
static char g_mnt[300];		/* mounted, for the suite's cleanup */

static void stats_now(struct bt *t, struct obx_stats *g,
		      struct obx_sink_page *sp)
{
	CU_ASSERT_EQUAL(bt_stats(t, g, sp), 0);
}

static double ms_since(uint64_t t0)
{
	return (double)(tu_now_ns() - t0) / 1e6;
}

/* Kills and restarts the broker once; the duplicates of the previous
 * kill are counted up to now. */
static void kill_once(struct bt *t, struct out_reader *o,
		      struct level_res *r, uint64_t *dups_before)
{
	uint64_t d;

	out_read(o);
	d = o->dups - *dups_before;
	if (r->kills) {
		if (d > r->dup_max)
			r->dup_max = d;
		r->dup_sum += d;
	}
	*dups_before = o->dups;
	bt_kill9(t);
	usleep((useconds_t)(rand() % 30000));
	CU_ASSERT_FATAL(bt_start(t) == 0);
	r->kills++;
}

/* Has an event committed after `done` (per producer) reached the
 * output? */
static int out_past(const struct out_reader *o, const uint64_t *done)
{
	unsigned p;

	for (p = 0; p < NPROD; p++)
		if (o->next_s[p] > done[p])
			return 1;
	return 0;
}

/* The disk-full phase: fill, kill while full, wait, free, and time the
 * broker's own recovery (no restart between free and resume): from the
 * moment the space is freed until an event committed after that moment
 * is in the output. While the disk is full the spool stops growing: it
 * refuses new records (spool_full drops) and reuses only what its own
 * deliveries free. */
static void full_phase(struct bt *t, const char *mnt, struct out_reader *o,
		       struct level_res *r, const struct chaos_cfg *c,
		       struct shared *sh, uint64_t *dups_before)
{
	struct obx_sink_page *sp = malloc(sizeof(*sp));
	struct obx_stats g0, g1, g;
	struct hog hog;
	uint64_t t0, done_free[NPROD];
	char filler[400];
	unsigned p;
	int i;

	snprintf(filler, sizeof(filler), "%s/filler", mnt);
	stats_now(t, &g0, sp);
	r->full_log_lines = (uint64_t)count_log(t, "disk full");
	t0 = tu_now_ns();
	CU_ASSERT_EQUAL_FATAL(fill_disk(filler), 0);
	snprintf(hog.path, sizeof(hog.path), "%s/hog", mnt);
	atomic_store(&hog.stop, 0);
	CU_ASSERT_FATAL(pthread_create(&hog.th, NULL, hog_run, &hog) == 0);
	/* the first drop for the full disk: at once when the broker runs,
	 * later when it was just restarted and still recovers its spool
	 * (seconds under ASan), so the bound is generous */
	for (i = 0; i < 3000; i++) {
		stats_now(t, &g, sp);
		if (g.dropped_spool_full > g0.dropped_spool_full)
			break;
		usleep(10000);
	}
	r->t_first_drop = ms_since(t0);
	CU_ASSERT(g.dropped_spool_full > g0.dropped_spool_full);
	/* killed while full: it must start and go on refusing */
	for (i = 0; i < c->full_kills; i++) {
		usleep((useconds_t)(c->full_ms * 1000 / (c->full_kills + 1)));
		kill_once(t, o, r, dups_before);
	}
	usleep((useconds_t)(c->full_ms * 1000 / (c->full_kills + 1)));
	stats_now(t, &g1, sp);
	r->full_spool_drops = g1.dropped_spool_full - g0.dropped_spool_full;
	r->full_ring_drops = g1.dropped_ring_full - g0.dropped_ring_full;
	/* space back: delivery of new events resumes by itself */
	for (p = 0; p < NPROD; p++)
		done_free[p] = sh->done[p];
	r->t_freed = ms_since(t0);
	atomic_store(&hog.stop, 1);
	pthread_join(hog.th, NULL);
	CU_ASSERT_EQUAL(unlink(hog.path), 0);
	CU_ASSERT_EQUAL(unlink(filler), 0);
	for (i = 0; i < 20000; i++) {
		out_read(o);
		if (out_past(o, done_free))
			break;
		usleep(500);
	}
	r->t_resumed = ms_since(t0);
	CU_ASSERT(out_past(o, done_free));
	/* and the refusals stop (the stats page: 100 ms resolution) */
	{
		uint64_t last = 0, tlast = tu_now_ns();

		for (i = 0; i < 400; i++) {
			stats_now(t, &g, sp);
			if (g.dropped_spool_full != last) {
				last = g.dropped_spool_full;
				tlast = tu_now_ns();
			} else if (tu_now_ns() - tlast > 1000000000ull) {
				break;
			}
			usleep(20000);
		}
		r->t_last_refusal = (double)(tlast - t0) / 1e6;
	}
	r->full_log_lines = (uint64_t)count_log(t, "disk full") -
			    r->full_log_lines;
	/* the broker logged the full disk, but did not flood the log:
	 * one line per 10 s per kind, plus one per broker started */
	CU_ASSERT(r->full_log_lines >= 1);
	CU_ASSERT(r->full_log_lines <=
		  (uint64_t)(2 * (c->full_kills + 1) +
			     c->full_ms / 10000 * 2));
	/* full disk = spool_full drops, not a blocked ring */
	CU_ASSERT(r->full_spool_drops > 0);
	CU_ASSERT_EQUAL(r->full_ring_drops, 0);
	r->full_done = 1;
	free(sp);
}

/* Quiet: ring empty, nothing queued, delivered unchanged for 0.5 s. */
static int wait_quiet(struct bt *t, int ms)
{
	struct obx_sink_page *sp = malloc(sizeof(*sp));
	uint64_t d, q, last = UINT64_MAX;
	struct obx_stats g;
	int i, stable = 0;

	for (i = 0; i < ms; i += 100) {
		int empty = bt_ring_empty(t);

		if (bt_stats(t, &g, sp) == 0) {
			bt_sum_dropped(&g, sp, &d, &q);
			stable = (empty && q == 0 && d == last) ? stable + 1 : 0;
			if (stable >= 5)
				break;
			last = d;
		}
		usleep(100000);
	}
	free(sp);
	return stable >= 5 ? 0 : -1;
}

static void run_level(int idx, const char *name, const char *dur,
		      const struct chaos_cfg *c)
{
	struct level_res *r = &g_res[idx];
	struct obx_sink_page *sp = malloc(sizeof(*sp));
	struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct out_reader o = { 0 };
	char extra[512], tag[32];
	uint64_t dups_before = 0, deliv, queued, drops;
	struct obx_stats g;
	pid_t pids[NPROD];
	int k, st, mounted = 0, half;
	unsigned p;
	struct bt t;

	memset(r, 0, sizeof(*r));
	r->name = name;
	snprintf(tag, sizeof(tag), "chaos-%s", name);
	snprintf(extra, sizeof(extra), "durability = %s\nsync_interval = "
		 "10ms\nspool_max = 1G", dur);
	CU_ASSERT_FATAL(bt_init(&t, tag, extra, NULL) == 0);
	/* the sink's batches: the bound is in their unit */
	{
		char cmd[700];

		snprintf(cmd, sizeof(cmd), "sed -i -e 's/^batch_max_events = "
			 ".*/batch_max_events = %d/' -e 's/^segment_size = .*/"
			 "segment_size = 1M/' '%s'", BATCH, t.conf);
		CU_ASSERT_EQUAL(system(cmd), 0);
		/* a trickle's flush waits up to a quarter of this (at most
		 * 100 ms, DESIGN "Deferred flush"): kills land inside it */
		snprintf(cmd, sizeof(cmd), "sed -i -e 's/^flush_interval = "
			 ".*/flush_interval = %dms/' '%s'",
			 c->flush_interval_ms ? c->flush_interval_ms : 20,
			 t.conf);
		CU_ASSERT_EQUAL(system(cmd), 0);
	}
	if (geteuid() == 0) {
		char opt[64];

		CU_ASSERT_EQUAL_FATAL(mkdir(t.spool, 0700), 0);
		snprintf(opt, sizeof(opt), "size=%dm,mode=0700", TMPFS_MB);
		mounted = mount("tmpfs", t.spool, "tmpfs", 0, opt) == 0;
		if (mounted)
			snprintf(g_mnt, sizeof(g_mnt), "%s", t.spool);
	}
	if (!mounted)
		printf("\n    %s: full-disk phase SKIPPED (%s): run as root "
		       "to mount the small tmpfs it fills\n", name,
		       geteuid() ? "not root" : strerror(errno));
	o.path = t.out;
	srand(1234 + (unsigned)idx);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	for (p = 0; p < NPROD; p++) {
		pids[p] = fork();
		if (pids[p] == 0)
			producer(t.shm, p, sh, c->pace_ns);
	}
	half = (c->kills - c->full_kills) / 2;
	for (k = 0; k < c->kills - c->full_kills; k++) {
		usleep((useconds_t)(c->kill_min_ms +
				    rand() % c->kill_rand_ms) * 1000);
		kill_once(&t, &o, r, &dups_before);
		if (k == half - 1 && mounted)
			full_phase(&t, t.spool, &o, r, c, sh, &dups_before);
	}
	if (!mounted)		/* the kills it would have had while full */
		for (k = 0; k < c->full_kills; k++) {
			usleep((useconds_t)c->kill_min_ms * 1000);
			kill_once(&t, &o, r, &dups_before);
		}
	usleep((useconds_t)c->kill_min_ms * 1000);
	sh->stop = 1;
	for (p = 0; p < NPROD; p++) {
		waitpid(pids[p], &st, 0);
		CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		r->committed += sh->done[p];
	}
	CU_ASSERT_EQUAL(wait_quiet(&t, 120000), 0);
	CU_ASSERT_EQUAL(bt_stop(&t, 30000), 0);
	/* the duplicates of the last kill, and everything */
	out_read(&o);
	{
		uint64_t d = o.dups - dups_before;

		if (d > r->dup_max)
			r->dup_max = d;
		r->dup_sum += d;
	}
	CU_ASSERT_EQUAL(bt_stats(&t, &g, sp), 0);
	drops = bt_sum_dropped(&g, sp, &deliv, &queued);
	r->distinct = o.distinct;
	r->missing = out_missing(&o, sh);
	/* what the broker dropped after the ring took it (the full disk) */
	r->dropped = g.dropped_spool_full + g.dropped_spool_error +
		     g.dropped_invalid + g.spool_corrupt;
	r->lost = r->missing > r->dropped ? r->missing - r->dropped : 0;
	r->delivered_ctr = deliv;
	r->redelivered = g.redelivered;
	r->identity = g.emitted == deliv + drops + queued;
	CU_ASSERT_EQUAL(o.bad, 0);
	CU_ASSERT_EQUAL(r->missing, r->dropped);	/* lost = 0, exactly */
	CU_ASSERT_EQUAL(r->lost, 0);
	CU_ASSERT_EQUAL(deliv, o.distinct);
	/* every committed record taken from the ring exactly once */
	CU_ASSERT_EQUAL(g.consumed, r->committed);
	CU_ASSERT_EQUAL(queued, 0);
	CU_ASSERT(r->identity);
	CU_ASSERT(r->dup_max <= DUP_BOUND);
	CU_ASSERT(r->kills >= c->kills);
	if (!r->identity || deliv != o.distinct || r->missing != r->dropped ||
	    g.consumed != r->committed)
		printf("\n    %s: emitted %llu = delivered %llu + dropped %llu "
		       "+ queued %llu ? distinct %llu missing %llu consumed "
		       "%llu committed %llu\n", name,
		       (unsigned long long)g.emitted,
		       (unsigned long long)deliv, (unsigned long long)drops,
		       (unsigned long long)queued,
		       (unsigned long long)o.distinct,
		       (unsigned long long)r->missing,
		       (unsigned long long)g.consumed,
		       (unsigned long long)r->committed);
	if (mounted) {
		CU_ASSERT_EQUAL(umount2(t.spool, MNT_DETACH), 0);
		g_mnt[0] = 0;
	}
	for (p = 0; p < NPROD; p++)
		free(o.seen[p]);
	free(o.part);
	free(sp);
	munmap(sh, 4096);
	bt_cleanup(&t);
}

static struct chaos_cfg g_cfg;

static void test_none(void)
{
	run_level(0, "none", "none", &g_cfg);
}

static void test_write(void)
{
	run_level(1, "write", "write", &g_cfg);
}

static void test_fdatasync(void)
{
	run_level(2, "fdatasync", "fdatasync", &g_cfg);
}

/* A trickle (2 x ~1 000 ev/s) into a sink with the default 500 ms
 * flush_interval: the spool flush is deferred ~100 ms behind each look,
 * and the broker is killed inside that window most of the time. */
static void test_deferred(void)
{
	struct chaos_cfg c = g_cfg;

	c.pace_ns = 1000000;
	c.flush_interval_ms = 500;
	run_level(3, "deferred", "write", &c);
}

static void test_report(void)
{
	int i;

	printf("\n\n    durability  kills  emitted    delivered  lost  "
	       "dropped(full)  dups/kill max  mean    redelivered  "
	       "identity\n");
	for (i = 0; i < NLEVELS; i++) {
		const struct level_res *r = &g_res[i];

		if (!r->name)
			continue;
		printf("    %-10s  %5d  %9llu  %9llu  %4llu  %13llu  %13llu  "
		       "%6.1f  %11llu  %s\n", r->name, r->kills,
		       (unsigned long long)r->committed,
		       (unsigned long long)r->distinct,
		       (unsigned long long)r->lost,
		       (unsigned long long)r->dropped,
		       (unsigned long long)r->dup_max,
		       r->kills ? (double)r->dup_sum / r->kills : 0.0,
		       (unsigned long long)r->redelivered,
		       r->identity ? "exact" : "BROKEN");
	}
	printf("    (duplicate bound per kill: %d = 2 x %d batches in flight "
	       "x %d events)\n", DUP_BOUND, INFLIGHT, BATCH);
	printf("\n    disk-full timeline (ms from filling the disk):\n");
	for (i = 0; i < NLEVELS; i++) {
		const struct level_res *r = &g_res[i];

		if (!r->name || !r->full_done)
			continue;
		printf("    %-10s first spool_full drop %7.1f  freed %7.1f  "
		       "new events delivered %7.1f (+%.1f ms)  last refusal "
		       "seen %7.1f  drops while full: spool_full "
		       "%llu ring_full %llu  'disk full' log lines %llu\n",
		       r->name, r->t_first_drop, r->t_freed, r->t_resumed,
		       r->t_resumed - r->t_freed, r->t_last_refusal,
		       (unsigned long long)r->full_spool_drops,
		       (unsigned long long)r->full_ring_drops,
		       (unsigned long long)r->full_log_lines);
	}
	CU_PASS("report");
}

/* a fatal assertion leaves the tmpfs mounted: not past the run */
static int chaos_clean(void)
{
	if (g_mnt[0])
		umount2(g_mnt, MNT_DETACH);
	return 0;
}

static int add_chaos(void)
{
	const char *mode = getenv("OUTBOX_CHAOS");
	int lng = mode && !strcmp(mode, "long");
	CU_pSuite s = CU_add_suite("chaos_broker", NULL, chaos_clean);

	g_cfg = (struct chaos_cfg){
		.kills = lng ? 100 : 20,
		.full_kills = 2,
		.kill_min_ms = lng ? 150 : 120,
		.kill_rand_ms = lng ? 450 : 250,
		.full_ms = lng ? 8000 : 1500,
		.pace_ns = lng ? 25000 : 40000,	/* per producer */
	};
	if (!s ||
	    !CU_add_test(s, "kill -9 x N, full disk: durability none",
			 test_none) ||
	    !CU_add_test(s, "kill -9 x N, full disk: durability write",
			 test_write) ||
	    !CU_add_test(s, "kill -9 x N, full disk: durability fdatasync",
			 test_fdatasync) ||
	    !CU_add_test(s, "kill -9 x N at a trickle, flush deferred",
			 test_deferred) ||
	    !CU_add_test(s, "report", test_report))
		return -1;
	return 0;
}

TEST_MAIN(add_chaos)
