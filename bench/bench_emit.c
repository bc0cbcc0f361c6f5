/* bench_emit.c - `outbox-bench emit`: the cost of one emit.
 *
 * A private segment, a private consumer (a thread of the bench process
 * that drains, cleans and sleeps like the broker does, without a spool:
 * drain_latency 20 ms or the fill mark; OBX_NAP=us instead naps that
 * long whenever the ring is empty, the consumer before issue 17), and N
 * producer processes, each pinned to CPU i % ncpu, emitting M events of
 * B body bytes through the public API (obx_emit, OBX_BODY_BYTES).
 *
 * Timing: producers read CLOCK_MONOTONIC around batches of BATCH emits
 * and record the batch mean per emit in a log-linear histogram, so the
 * clock read (timer_ns, reported) costs < 1 ns per emit. Percentiles are
 * percentiles of those batch means.
 *
 * Same run, same sizes: the Unix datagram baseline (each event one send()
 * on a connected SOCK_DGRAM socket to a receiver process, blocking, as
 * DogStatsD clients do) and the shared-memory floors (fetch_add on one
 * shared line + memcpy of the event into a 4 MiB region, 1 and 2
 * processes), as ../shared/peers/src/shmfloor.c measures them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "outbox.h"
#include "ring.h"
#include "segment.h"

#define BATCH 32

static uint64_t g_ring_size = 64ull << 20;
static struct seg *g_seg;               /* the private segment */
static long g_pause_us;                 /* --pause-us: paced, cold emits */
static struct bench_hist g_warm_h;      /* their warm second emits */
static long g_warm;                     /* untimed emits per producer */

struct emit_shared {
	_Atomic int ready, go;
	_Atomic uint64_t drops, sent;
	uint64_t ns[64];
	struct bench_hist h[64];
	struct bench_hist warm[64];     /* --pause-us: the emit right after */
	_Alignas(64) _Atomic uint64_t floor_tail;
	_Alignas(64) uint8_t floor_ring[4 << 20];
};

static void pin(int i)
{
	cpu_set_t cs;
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 2)
		return;
	CPU_ZERO(&cs);
	CPU_SET(i % n, &cs);
	sched_setaffinity(0, sizeof(cs), &cs);
}

static void wait_go(struct emit_shared *sh, int n)
{
	atomic_fetch_add(&sh->ready, 1);
	while (atomic_load(&sh->ready) < n)
		;
}

/* ---- outbox emit ------------------------------------------------------- */

static void emit_child(struct emit_shared *sh, const char *name, int me,
		       int n, long count, int size)
{
	obx_t *h = obx_open(name);
	uint8_t body[65536];
	uint64_t t0, start, drops = 0;
	long i, j;

	if (!h)
		_exit(2);
	pin(me);
	memset(body, 'x', (size_t)size);
	/* warm-up, untimed: one lap of the ring between all producers, so
	 * the timed part measures a worker that has been running (the first
	 * write to each page through a new mapping is far slower on a VM) */
	for (i = 0; i < g_warm; i++)
		while (obx_emit(h, 0, "warm", body, (size_t)size,
				OBX_BODY_BYTES) == -EAGAIN)
			sched_yield();
	wait_go(sh, n);
	/* the timed part starts on a drained ring: the consumer sleeps up
	 * to 20 ms, as the broker does, and what it has not taken of the
	 * warm-up lap would otherwise turn timed emits into drops */
	while (atomic_load(&g_seg->cons->head) !=
	       atomic_load(&g_seg->hdr->tail) && !getenv("OBX_NAP"))
		usleep(1000);
	start = bench_now();
	/* --pause-us: sleep, time one emit alone (cold: the sleep let other
	 * processes take the caches), then the one right after it (warm) */
	for (i = 0; g_pause_us && i < count / BATCH; i++) {
		struct timespec ts = { 0, g_pause_us * 1000 };
		uint64_t t1;

		nanosleep(&ts, NULL);
		t0 = bench_now();
		drops += obx_emit(h, 0, "bench", body, (size_t)size,
				  OBX_BODY_BYTES) != 0;
		t1 = bench_now();
		drops += obx_emit(h, 0, "bench", body, (size_t)size,
				  OBX_BODY_BYTES) != 0;
		bench_hist_add(&sh->h[me], t1 - t0);
		bench_hist_add(&sh->warm[me], bench_now() - t1);
	}
	for (i = 0; !g_pause_us && i < count; i += BATCH) {
		t0 = bench_now();
		for (j = 0; j < BATCH; j++) {
			body[0] = (uint8_t)j;
			if (obx_emit(h, 0, "bench", body, (size_t)size,
				     OBX_BODY_BYTES) != 0)
				drops++;
		}
		bench_hist_add(&sh->h[me], (bench_now() - t0) / BATCH);
	}
	sh->ns[me] = bench_now() - start;
	atomic_fetch_add(&sh->drops, drops);
	atomic_fetch_add(&sh->sent, (uint64_t)count);
	obx_close(h);
	_exit(0);
}

struct drain_arg {
	struct seg *s;
	_Atomic int stop;
	uint64_t consumed;
};

/* The broker's drain loop without the spool: read, clean, sleep. */
static void *drain_main(void *p)
{
	struct drain_arg *a = p;
	struct ring_cons c;
	struct ring_rec r;

	if (ring_cons_init(&c, a->s) < 0)
		return NULL;
	/* the consumer on the last CPU; producers start at CPU 0 */
	pin((int)sysconf(_SC_NPROCESSORS_ONLN) - 1);
	while (!atomic_load(&a->stop)) {
		int rc = ring_next(&c, &r, bench_now());

		if (rc == RING_RECORD) {
			a->consumed++;
			if (c.cursor - c.head >= (256u << 10))
				ring_release(&c, c.cursor);
			continue;
		}
		ring_release(&c, c.cursor);
		if (rc == RING_EMPTY && getenv("OBX_NAP"))
			usleep((useconds_t)atoi(getenv("OBX_NAP")));
		else if (rc == RING_EMPTY)
			/* as the broker sleeps (issue 17): until its next look,
			 * drain_latency (20 ms) on, or until a producer's claim
			 * passes the fill mark (an eighth of the ring) */
			ring_cons_wait(&c, 20000000ull, c.s->g.ring_size >> 3);
		else
			sched_yield();
	}
	if (getenv("OBX_BENCH_DEBUG"))
		fprintf(stderr, "drain: consumed %llu gaps %llu damaged %llu "
			"unblocked %llu\n", (unsigned long long)a->consumed,
			(unsigned long long)c.st.gaps,
			(unsigned long long)c.st.damaged,
			(unsigned long long)c.st.unblocked);
	ring_cons_fini(&c);
	return NULL;
}

static int run_emit(struct emit_shared *sh, int np, long count, int size,
		    struct bench_hist *out, double *eps)
{
	struct seg_geom g = { g_ring_size, 1 << 20, 256 };
	struct drain_arg da = { 0 };
	char name[64], why[256];
	pthread_t th;
	struct seg s;
	pid_t pids[64];
	int i, created;
	uint64_t max_ns = 0;

	snprintf(name, sizeof(name), "obxbench-%d", (int)getpid());
	seg_unlink(name);
	if (seg_open_broker(&s, name, &g, 0600, &created, why,
			    sizeof(why)) < 0) {
		fprintf(stderr, "outbox-bench: %s\n", why);
		return -1;
	}
	da.s = &s;
	g_seg = &s;
	if (getenv("OBX_BENCH_NODRAIN"))
		atomic_store(&da.stop, 1);
	pthread_create(&th, NULL, drain_main, &da);
	atomic_store(&sh->ready, 0);
	atomic_store(&sh->drops, 0);
	atomic_store(&sh->sent, 0);
	memset(sh->h, 0, sizeof(sh->h));
	for (i = 0; i < np; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			emit_child(sh, name, i, np, count, size);
		}
	}
	for (i = 0; i < np; i++)
		waitpid(pids[i], NULL, 0);
	atomic_store(&da.stop, 1);
	atomic_store(&s.hdr->wake, 0);
	syscall(SYS_futex, &s.hdr->wake, FUTEX_WAKE, 1, NULL, NULL, 0);
	pthread_join(th, NULL);
	memset(out, 0, sizeof(*out));
	memset(&g_warm_h, 0, sizeof(g_warm_h));
	for (i = 0; i < np; i++) {
		bench_hist_merge(&g_warm_h, &sh->warm[i]);
		bench_hist_merge(out, &sh->h[i]);
		if (sh->ns[i] > max_ns)
			max_ns = sh->ns[i];
	}
	*eps = (double)np * (double)count / ((double)max_ns / 1e9);
	seg_detach(&s);
	seg_unlink(name);
	return 0;
}

/* ---- Unix datagram baseline -------------------------------------------- */

static void uds_child(struct emit_shared *sh, const char *path, int me,
		      int n, long count, int size)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint8_t body[65536];
	uint64_t t0;
	long i, j;
	int fd = socket(AF_UNIX, SOCK_DGRAM, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		_exit(2);
	pin(me);
	memset(body, 'x', (size_t)size);
	wait_go(sh, n);
	for (i = 0; i < count; i += BATCH) {
		t0 = bench_now();
		for (j = 0; j < BATCH; j++)
			if (send(fd, body, (size_t)size, 0) < 0)
				atomic_fetch_add(&sh->drops, 1);
		bench_hist_add(&sh->h[me], (bench_now() - t0) / BATCH);
	}
	close(fd);
	_exit(0);
}

static int run_uds(struct emit_shared *sh, int np, long count, int size,
		   struct bench_hist *out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char buf[65536];
	pid_t pids[64], rcv;
	int i, fd;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "/tmp/obxbench-%d.sock",
		 (int)getpid());
	unlink(sa.sun_path);
	fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -1;
	rcv = fork();
	if (rcv == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (;;)
			if (recv(fd, buf, sizeof(buf), 0) < 0 && errno != EINTR)
				_exit(0);
	}
	atomic_store(&sh->ready, 0);
	memset(sh->h, 0, sizeof(sh->h));
	for (i = 0; i < np; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			uds_child(sh, sa.sun_path, i, np, count, size);
		}
	}
	for (i = 0; i < np; i++)
		waitpid(pids[i], NULL, 0);
	kill(rcv, SIGKILL);
	waitpid(rcv, NULL, 0);
	close(fd);
	unlink(sa.sun_path);
	memset(out, 0, sizeof(*out));
	for (i = 0; i < np; i++)
		bench_hist_merge(out, &sh->h[i]);
	return 0;
}

/* ---- floors ------------------------------------------------------------- */

static void floor_child(struct emit_shared *sh, int me, int n, long count,
			int size)
{
	uint8_t ev[65536];
	uint64_t t0, start;
	long i;

	pin(me);
	memset(ev, 'y', (size_t)size);
	wait_go(sh, n);
	start = bench_now();
	for (i = 0; i < count; i += BATCH) {
		int j;

		t0 = bench_now();
		for (j = 0; j < BATCH; j++) {
			uint64_t pos = atomic_fetch_add_explicit(&sh->floor_tail,
					(uint64_t)size, memory_order_acq_rel);

			ev[0] = (uint8_t)pos;
			memcpy(sh->floor_ring + pos % ((4u << 20) - 65536), ev,
			       (size_t)size);
		}
		bench_hist_add(&sh->h[me], (bench_now() - t0) / BATCH);
	}
	sh->ns[me] = bench_now() - start;
	_exit(0);
}

static double run_floor(struct emit_shared *sh, int np, long count, int size)
{
	struct bench_hist all;
	pid_t pids[2];
	int i;

	atomic_store(&sh->ready, 0);
	atomic_store(&sh->floor_tail, 0);
	memset(sh->h, 0, sizeof(sh->h));
	for (i = 0; i < np; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			floor_child(sh, i, np, count, size);
		}
	}
	for (i = 0; i < np; i++)
		waitpid(pids[i], NULL, 0);
	memset(&all, 0, sizeof(all));
	for (i = 0; i < np; i++)
		bench_hist_merge(&all, &sh->h[i]);
	return (double)bench_hist_pct(&all, 50);
}

static double timer_cost(void)
{
	uint64_t t0 = bench_now(), x = 0;
	int i;

	for (i = 0; i < 1000000; i++)
		x += bench_now();
	(void)x;
	return (double)(bench_now() - t0) / 1e6;
}

int bench_emit(int argc, char **argv)
{
	int np = 1, size = 256, json = 0, i;
	long count = 0;
	struct emit_shared *sh;
	struct bench_hist eh, uh;
	double eps = 0, f1, f2, tn;

	for (i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--producers") && i + 1 < argc)
			np = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--size") && i + 1 < argc)
			size = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--count") && i + 1 < argc)
			count = atol(argv[++i]);
		else if (!strcmp(argv[i], "--ring") && i + 1 < argc)
			g_ring_size = strtoull(argv[++i], NULL, 0) << 20;
		else if (!strcmp(argv[i], "--pause-us") && i + 1 < argc)
			g_pause_us = atol(argv[++i]);
		else if (!strcmp(argv[i], "--json"))
			json = 1;
		else {
			fprintf(stderr, "usage: outbox-bench emit [--producers N]"
				" [--size B] [--count M] [--pause-us U] "
				"[--json]\n");
			return 2;
		}
	}
	if (np < 1 || np > 64 || size < 1 || size > 60000 ||
	    (count && count < BATCH) || g_pause_us < 0 ||
	    g_pause_us >= 1000000) {
		fprintf(stderr, "outbox-bench emit: bad arguments\n");
		return 2;
	}
	{
		uint64_t rec = (16 + 64 + (uint64_t)size + 7) & ~7ull;

		g_warm = (long)(g_ring_size / rec / (uint64_t)np) + 1;
	}
	if (count == 0) {
		/* what the ring window holds after the warm-up lap: even a
		 * consumer that falls behind (2 flat-out producers and the
		 * consumer on 2 vCPUs) cannot turn the timed part into the
		 * ring-full drop path */
		uint64_t rec = (16 + 64 + (uint64_t)size + 7) & ~7ull;

		count = (long)((g_ring_size - (g_ring_size >> 3)) / rec /
			       (uint64_t)np);
	}
	count -= count % BATCH;
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return 1;
	tn = timer_cost();
	if (run_emit(sh, np, count, size, &eh, &eps) < 0)
		return 1;
	uint64_t drops = atomic_load(&sh->drops);
	atomic_store(&sh->drops, 0);
	if (run_uds(sh, np, count / 10 - (count / 10) % BATCH, size, &uh) < 0)
		return 1;
	/* floors run long enough (5M ops each) for the two processes to
	 * overlap for real, whatever count the emit run used */
	f1 = run_floor(sh, 1, 5000000, size);
	f2 = run_floor(sh, 2, 5000000, size);
	if (json) {
		printf("{\"mode\":\"emit\",\"producers\":%d,\"size\":%d,"
		       "\"count\":%ld,\"warmup\":%ld,\"timing\":\"mean of "
		       "batches of %d calls, clock read amortised\",\"emit_ns_p50\":%llu,"
		       "\"emit_ns_p99\":%llu,\"emit_ns_mean\":%.1f,"
		       "\"events_per_s\":%.0f,\"drops\":%llu,"
		       "\"uds_ns_p50\":%llu,\"uds_ns_p99\":%llu,"
		       "\"uds_vs_emit_p50\":%.1f,\"timer_ns\":%.1f,"
		       "\"floor_ns_1p\":%.1f,\"floor_ns_2p\":%.1f",
		       np, size, count, g_warm, BATCH,
		       (unsigned long long)bench_hist_pct(&eh, 50),
		       (unsigned long long)bench_hist_pct(&eh, 99),
		       bench_hist_mean(&eh), eps, (unsigned long long)drops,
		       (unsigned long long)bench_hist_pct(&uh, 50),
		       (unsigned long long)bench_hist_pct(&uh, 99),
		       (double)bench_hist_pct(&uh, 50) /
		       (double)(bench_hist_pct(&eh, 50) ? bench_hist_pct(&eh, 50) : 1),
		       tn, f1, f2);
		if (g_pause_us)
			printf(",\"pause_us\":%ld,\"timing_paced\":\"one call "
			       "timed alone after the pause, clock read "
			       "included\",\"emit_warm_ns_p50\":%llu,"
			       "\"emit_warm_ns_p99\":%llu", g_pause_us,
			       (unsigned long long)bench_hist_pct(&g_warm_h, 50),
			       (unsigned long long)bench_hist_pct(&g_warm_h, 99));
		printf("}\n");
	} else {
		printf("emit  %d producer(s), %d B: p50 %llu ns, p99 %llu ns, "
		       "%.1f M events/s, %llu drops\n", np, size,
		       (unsigned long long)bench_hist_pct(&eh, 50),
		       (unsigned long long)bench_hist_pct(&eh, 99), eps / 1e6,
		       (unsigned long long)drops);
		printf("uds   p50 %llu ns, p99 %llu ns\n",
		       (unsigned long long)bench_hist_pct(&uh, 50),
		       (unsigned long long)bench_hist_pct(&uh, 99));
		printf("floor 1p %.1f ns, 2p %.1f ns; timer %.1f ns\n", f1, f2,
		       tn);
		if (g_pause_us)
			printf("paced: each emit timed alone after a %ld us "
			       "pause (above); the one right after it p50 %llu "
			       "ns, p99 %llu ns (clock read included)\n",
			       g_pause_us, (unsigned long long)bench_hist_pct(
			       &g_warm_h, 50), (unsigned long long)
			       bench_hist_pct(&g_warm_h, 99));
	}
	munmap(sh, sizeof(*sh));
	return 0;
}
