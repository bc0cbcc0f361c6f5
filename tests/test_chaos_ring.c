/* test_chaos_ring.c - producers killed and stopped at random while others
 * emit, against the real ring and consumer.
 *
 * A pre-fork parent opens one handle; its children inherit it (each
 * registers its own slot on its first emit) and emit sequence-numbered,
 * checksummed events (copied, zero-copy, now and then a zero-copy abort),
 * writing after each acknowledged emit how many were taken. The parent
 * SIGKILLs a random child every few ms (any instruction: external
 * signals), SIGSTOPs one now and then for 50-400 ms (some stop themselves
 * inside an emit, at a fault point, so the claim is held), and forks a
 * new child in place of each dead one. A consumer thread drains, checks
 * and releases like the broker, with stall_timeout 200 ms.
 *
 * At the end: no acknowledged event lost, none corrupted, none delivered
 * twice or out of its producer's order, the consumer kept delivering
 * during every stop, and the counter identity is exact:
 *   emitted = consumed + unblocked + dropped_full + dropped_too_large
 *             + dropped_late
 *
 * Bounded (make test): 40 s. OUTBOX_CHAOS=long (make chaos): 10 min.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "testutil.h"
#include "ringtest.h"
#include "slots.h"
#include "outbox.h"

extern int obx_fault_where;
extern long obx_fault_countdown;
extern int obx_fault_signal;

#define NPROD     6
#define MAX_INC   (1u << 17)          /* child incarnations */
#define MAX_BODY  800

struct inc {
	_Atomic uint64_t acked;       /* emits acknowledged (seq 0..acked-1) */
	uint64_t next;                /* consumer: next seq expected */
};

struct chaos_shm {
	_Atomic int stop;
	_Atomic uint64_t kills;       /* SIGKILLs sent so far */
	struct inc inc[MAX_INC];
};

static struct chaos_shm *g_sh;
static struct rt_ctx g_rt;
static _Atomic int g_consumer_run;
static _Atomic uint64_t g_delivered, g_corrupt, g_disorder, g_stall_reports;
static _Atomic uint64_t g_cursor;           /* the consumer's, published */
/* the fill-mark run: the consumer sleeps as the broker does, until a
 * claim passes cursor + mark or a timeout */
static uint64_t g_mark;
static _Atomic uint64_t g_woken, g_timeouts, g_lost_wakes;

/* The largest claim a child makes (envelope head + MAX_BODY + the
 * zero-copy slack, with the record header), rounded up generously. */
#define MAX_CLAIM 2048u

/* ---- producers ---------------------------------------------------------- */

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static int chaos_zero_copy(obx_t *h, const uint8_t *body, size_t len,
			   int abort_it)
{
	struct obx_rsv r;
	int rc = obx_reserve(h, 0, "c", len + 8, &r);

	if (rc < 0)
		return rc;
	if (abort_it) {
		obx_abort(h, &r);
		return 1;
	}
	msgpack_pack_bin(&r.pk, len);
	msgpack_pack_bin_body(&r.pk, body, len);
	return obx_commit(h, &r);
}

static void chaos_child(obx_t *h, uint32_t inc, uint64_t seed)
{
	static uint8_t body[MAX_BODY];
	struct inc *me = &g_sh->inc[inc];
	uint64_t seq = 0;

	/* some stop themselves inside an emit, holding a claim */
	if (xs(&seed) % 8 == 0) {
		obx_fault_signal = SIGSTOP;
		obx_fault_where = 1 + (int)(xs(&seed) % (OBX_FP_N - 1));
		obx_fault_countdown = 1 + (long)(xs(&seed) % 2000);
	}
	while (!atomic_load(&g_sh->stop)) {
		size_t len = 24 + xs(&seed) % (MAX_BODY - 24);
		uint64_t how = xs(&seed) % 50;
		int rc;

		rt_make_body(body, len, inc, seq);
		if (how == 0)        /* reserved, then given up: not emitted */
			chaos_zero_copy(h, body, len, 1);
		if (how < 10)
			rc = chaos_zero_copy(h, body, len, 0);
		else
			rc = obx_emit(h, 0, "c", body, len, OBX_BODY_BYTES);
		if (rc == 0) {
			seq++;
			atomic_store(&me->acked, seq);
		} else if (rc == -EAGAIN) {
			usleep(200);     /* full: the same event again */
		} else {
			_exit(3);
		}
	}
	obx_close(h);
	_exit(0);
}

/* ---- consumer ----------------------------------------------------------- */

static void chaos_check(const struct ring_rec *r)
{
	struct env_view v;
	struct rt_body b;

	if (env_parse(&g_rt.er, r->payload, r->len, &v) < 0 ||
	    v.body_kind != ENV_BODY_BYTES ||
	    !rt_body_ok((const uint8_t *)v.body, v.body_len, &b) ||
	    b.producer >= MAX_INC) {
		atomic_fetch_add(&g_corrupt, 1);
		return;
	}
	/* in each producer's order, once */
	if (b.seq != g_sh->inc[b.producer].next)
		atomic_fetch_add(&g_disorder, 1);
	g_sh->inc[b.producer].next = b.seq + 1;
	atomic_fetch_add(&g_delivered, 1);
}

static void on_stall(void *arg, const struct ring_stall_info *si)
{
	(void)arg;
	(void)si;
	atomic_fetch_add(&g_stall_reports, 1);
}

/* One sleep with the fill mark (C5), 100 ms at most (the broker's
 * drain_latency). A sleep that ran out although the ring holds complete
 * claims past the mark is a lost wake-up: when it ends by timeout, the
 * claims past `at` can only be ones still between P2 and P8 (at most one
 * per live child), or made by children killed meanwhile (each at most
 * one), since a claim that completed P8 past `at` read wake == 1 and
 * took it. Tail is read before the word: a claim below that tail whose
 * owner moved on made its P8 before. */
static void chaos_sleep(struct ring_cons *c)
{
	struct timespec ts = { 0, 100000000L };
	uint64_t at = c->cursor + g_mark, kills0, t, bound;
	uint32_t w;

	kills0 = atomic_load(&g_sh->kills);
	if (!ring_cons_arm(c, g_mark))
		return;
	syscall(SYS_futex, (uint32_t *)&c->s->hdr->wake, FUTEX_WAIT, 1, &ts,
		NULL, 0);
	t = atomic_load(&c->s->hdr->tail);
	w = atomic_load(&c->s->hdr->wake);
	ring_cons_disarm(c);
	if (w == 0) {
		atomic_fetch_add(&g_woken, 1);
		return;
	}
	atomic_fetch_add(&g_timeouts, 1);
	bound = (NPROD + atomic_load(&g_sh->kills) - kills0) * MAX_CLAIM;
	if ((int64_t)(t - at) > (int64_t)bound) {
		atomic_fetch_add(&g_lost_wakes, 1);
		if (getenv("CHAOS_DEBUG"))
			printf("\n    timed out with %lld bytes past the mark\n",
			       (long long)(t - at));
	}
}

static void *chaos_consumer(void *arg)
{
	struct ring_cons *c = &g_rt.c;
	uint64_t last_reap = 0;
	struct ring_rec r;

	(void)arg;
	while (atomic_load(&g_consumer_run)) {
		uint64_t now = tu_now_ns();
		int rc = ring_next(c, &r, now);

		atomic_store(&g_cursor, c->cursor);
		if (rc == RING_RECORD) {
			chaos_check(&r);
			if (c->cursor - c->head > (c->s->g.ring_size >> 3))
				ring_release(c, c->cursor);
			continue;
		}
		ring_release(c, c->cursor);
		if (now - last_reap > 10000000ull) {
			ring_reap(c);
			last_reap = now;
		}
		if (rc == RING_EMPTY && !c->npins && g_mark)
			chaos_sleep(c);
		else if (rc == RING_EMPTY && !c->npins)
			ring_cons_wait(c, 2000000, 0);
		else
			usleep(200);
	}
	return NULL;
}

/* ---- the run ------------------------------------------------------------ */

struct kid {
	pid_t pid;
	uint32_t inc;
	int stopped;                  /* by us or by itself */
	int holds;                    /* stopped holding a claim at ... */
	uint64_t claim;               /* ... this position */
	uint64_t cont_at;             /* when to SIGCONT */
};

/* The claim a stopped child holds, from its slot's lanes (busy, and the
 * lane says where): 1 with *pos, or 0 (stopped outside a claim). */
static int kid_claim(pid_t pid, uint64_t *pos)
{
	uint32_t i, k;

	for (i = 0; i < g_rt.seg.g.nslots; i++) {
		const struct obx_slot *sl = &g_rt.seg.slots[i];

		if (atomic_load(&sl->state) != OBX_SLOT_LIVE ||
		    atomic_load(&sl->pid) != (uint32_t)pid)
			continue;
		for (k = 0; k < OBX_LANES; k++) {
			uint64_t w = atomic_load(&sl->lane[k].claim), hw;

			if (atomic_load(&sl->lane[k].pos_n) != (w | 1))
				continue;
			*pos = atomic_load(&sl->lane[k].pos);
			/* before its header (lane busy), or BUSY: held */
			hw = atomic_load(&seg_rec(&g_rt.seg, *pos)->word);
			if ((w & OBX_LANE_BUSY) ||
			    (OBX_REC_STATE(hw) == OBX_REC_BUSY &&
			     OBX_REC_SLOT(hw) == i))
				return 1;
		}
	}
	return 0;
}

static void spawn(struct kid *k, obx_t *h, uint32_t inc, uint64_t seed)
{
	k->inc = inc;
	k->stopped = 0;
	k->pid = fork();
	if (k->pid == 0)
		chaos_child(h, inc, seed);
}

static void chaos_run(uint64_t mark, uint64_t secs, uint64_t long_secs)
{
	int longrun = getenv("OUTBOX_CHAOS") &&
		      !strcmp(getenv("OUTBOX_CHAOS"), "long");
	uint64_t dur = (longrun ? long_secs : secs) * 1000000000ull;
	uint64_t t0, now, seed = 0x2545f4914f6cdd1dull, next_kill, next_stop;
	uint64_t kills = 0, stops = 0, self_stops = 0, held = 0, passed = 0;
	uint64_t acked = 0, lost = 0, e, f, t, l, aborted;
	struct kid kids[NPROD];
	pthread_t cons;
	uint32_t inc = 0, i;
	int k, status;
	obx_t *h;

	g_sh = mmap(NULL, sizeof(*g_sh), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CU_ASSERT_FATAL(g_sh != MAP_FAILED);
	CU_ASSERT_FATAL(rt_setup(&g_rt, "chaos", 1 << 20, 4096, 1024) == 0);
	g_mark = mark;
	atomic_store(&g_woken, 0);
	atomic_store(&g_timeouts, 0);
	atomic_store(&g_lost_wakes, 0);
	atomic_store(&g_delivered, 0);
	atomic_store(&g_corrupt, 0);
	atomic_store(&g_disorder, 0);
	g_rt.c.stall_timeout = 200000000ull;
	g_rt.c.on_stall = on_stall;
	/* the pre-fork parent's handle, inherited by every child */
	h = obx_open(g_rt.seg.name);
	CU_ASSERT_FATAL(h != NULL);
	atomic_store(&g_consumer_run, 1);
	pthread_create(&cons, NULL, chaos_consumer, NULL);
	for (k = 0; k < NPROD; k++)
		spawn(&kids[k], h, inc++, xs(&seed));
	t0 = now = tu_now_ns();
	next_kill = now + 5000000ull;
	next_stop = now + 500000000ull;
	while ((now = tu_now_ns()) - t0 < dur && inc < MAX_INC - NPROD) {
		for (k = 0; k < NPROD; k++) {
			struct kid *kd = &kids[k];
			pid_t w = waitpid(kd->pid, &status,
					  WNOHANG | WUNTRACED);

			if (w == kd->pid && WIFSTOPPED(status) &&
			    !kd->stopped) {
				/* stopped itself at a fault point: inside an
				 * emit, maybe holding a claim */
				kd->stopped = 1;
				kd->holds = kid_claim(kd->pid, &kd->claim);
				kd->cont_at = now + 50000000ull +
					      xs(&seed) % 350000000ull;
				self_stops++;
				stops++;
			} else if (w == kd->pid && !WIFSTOPPED(status)) {
				CU_ASSERT(WIFSIGNALED(status) &&
					  WTERMSIG(status) == SIGKILL);
				spawn(kd, h, inc++, xs(&seed));
			}
			if (kd->stopped && now >= kd->cont_at) {
				/* while it was stopped, the consumer went
				 * past its claim and on delivering */
				held += (uint64_t)kd->holds;
				if (kd->holds && (int64_t)(atomic_load(
					&g_cursor) - kd->claim) > 0)
					passed++;
				else if (kd->holds && getenv("CHAOS_DEBUG"))
					printf("\n    not passed: claim %llu "
					       "cursor %llu head %llu tail %llu "
					       "pins %u word %llx\n",
					       (unsigned long long)kd->claim,
					       (unsigned long long)atomic_load(
						       &g_cursor),
					       (unsigned long long)g_rt.c.head,
					       (unsigned long long)atomic_load(
						       &g_rt.seg.hdr->tail),
					       g_rt.c.npins,
					       (unsigned long long)atomic_load(
						&seg_rec(&g_rt.seg,
							 kd->claim)->word));
				kd->stopped = 0;
				kill(kd->pid, SIGCONT);
			}
		}
		if (now >= next_kill) {
			/* any child, stopped ones included */
			atomic_fetch_add(&g_sh->kills, 1);
			kill(kids[xs(&seed) % NPROD].pid, SIGKILL);
			kills++;
			next_kill = now + 1000000ull + xs(&seed) % 30000000ull;
		}
		if (now >= next_stop) {
			struct kid *kd = &kids[xs(&seed) % NPROD];

			if (!kd->stopped && kill(kd->pid, SIGSTOP) == 0) {
				kd->stopped = 1;
				kd->holds = 0;  /* anywhere: maybe not in emit */
				kd->cont_at = now + 50000000ull +
					      xs(&seed) % 350000000ull;
				stops++;
			}
			next_stop = now + (longrun ? 3000000000ull :
					   2000000000ull);
		}
		usleep(500);
	}
	/* stop: every child finishes its emit and closes its slot */
	atomic_store(&g_sh->stop, 1);
	for (k = 0; k < NPROD; k++) {
		kill(kids[k].pid, SIGCONT);
		waitpid(kids[k].pid, &status, 0);
		CU_ASSERT((WIFEXITED(status) && WEXITSTATUS(status) == 0) ||
			  (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
		/* a stop at a fault point that came back: fine */
	}
	/* drain until every dead slot is folded and no claim is pinned */
	now = tu_now_ns();
	for (;;) {
		int busy = g_rt.c.npins != 0 ||
			   g_rt.c.cursor != atomic_load(&g_rt.seg.hdr->tail);

		for (i = 0; i < g_rt.seg.g.nslots; i++)
			if (atomic_load(&g_rt.seg.slots[i].state) ==
			    OBX_SLOT_DEAD)
				busy = 1;
		if (!busy || tu_now_ns() - now > 20000000000ull)
			break;
		usleep(20000);
	}
	atomic_store(&g_consumer_run, 0);
	pthread_join(cons, NULL);
	for (i = 0; i < inc; i++) {
		uint64_t a = atomic_load(&g_sh->inc[i].acked);

		acked += a;
		if (g_sh->inc[i].next < a)
			lost += a - g_sh->inc[i].next;
		/* at most the one in flight when it was killed beyond */
		CU_ASSERT(g_sh->inc[i].next <= a + 1);
	}
	ring_totals(&g_rt.c, &e, &f, &t, &l);
	aborted = g_rt.c.st.aborted;
	printf("\n    %s run, %.0f s: %llu children, %llu kills, %llu stops "
	       "(%llu inside an emit; of those resumed, %llu held a claim and "
	       "the consumer went past %llu of them meanwhile)\n"
	       "    emitted %llu (aborted %llu), acknowledged %llu, delivered "
	       "%llu, lost %llu, corrupted %llu, out of order/duplicate %llu\n"
	       "    recovered from dead producers %llu, ring-full drops %llu, "
	       "late drops %llu, claims gone past %llu, stalls reported "
	       "%llu\n    identity: emitted %llu %s consumed + unblocked + "
	       "drops %llu\n", longrun ? "long" : "bounded",
	       (double)(tu_now_ns() - t0) / 1e9, (unsigned long long)inc,
	       (unsigned long long)kills, (unsigned long long)stops,
	       (unsigned long long)self_stops, (unsigned long long)held,
	       (unsigned long long)passed, (unsigned long long)e,
	       (unsigned long long)aborted, (unsigned long long)acked,
	       (unsigned long long)g_rt.c.st.consumed,
	       (unsigned long long)lost,
	       (unsigned long long)atomic_load(&g_corrupt),
	       (unsigned long long)atomic_load(&g_disorder),
	       (unsigned long long)g_rt.c.st.unblocked,
	       (unsigned long long)f, (unsigned long long)l,
	       (unsigned long long)g_rt.c.st.skips,
	       (unsigned long long)g_rt.c.st.stalls, (unsigned long long)e,
	       e == g_rt.c.st.consumed + g_rt.c.st.unblocked + f + t + l ?
	       "==" : "!=",
	       (unsigned long long)(g_rt.c.st.consumed + g_rt.c.st.unblocked +
				    f + t + l));
	if (mark) {
		printf("    fill mark %llu: the consumer was woken %llu times, "
		       "timed out %llu times, lost wake-ups %llu\n",
		       (unsigned long long)mark,
		       (unsigned long long)atomic_load(&g_woken),
		       (unsigned long long)atomic_load(&g_timeouts),
		       (unsigned long long)atomic_load(&g_lost_wakes));
		CU_ASSERT(atomic_load(&g_woken) >= 10);
		CU_ASSERT_EQUAL(atomic_load(&g_lost_wakes), 0);
	}
	CU_ASSERT(kills >= (longrun ? 10000u : 1000u) * secs / 40);
	CU_ASSERT(stops >= (longrun ? 100u : 10u));
	CU_ASSERT(held >= 1);
	CU_ASSERT_EQUAL(passed, held);
	CU_ASSERT_EQUAL(lost, 0);
	CU_ASSERT_EQUAL(atomic_load(&g_corrupt), 0);
	CU_ASSERT_EQUAL(atomic_load(&g_disorder), 0);
	CU_ASSERT_EQUAL(g_rt.c.st.consumed, atomic_load(&g_delivered));
	CU_ASSERT_EQUAL(g_rt.c.npins, 0);
	CU_ASSERT_EQUAL(e, g_rt.c.st.consumed + g_rt.c.st.unblocked + f + t +
			l);
	obx_close(h);
	rt_teardown(&g_rt);
	munmap(g_sh, sizeof(*g_sh));
}

static void test_chaos(void)
{
	chaos_run(0, 40, 600);
}

/* The same with the consumer asleep until the fill mark (an eighth of
 * the ring, as the broker arms it) or 100 ms: no wake-up is lost while
 * children are killed and stopped around it. */
static void test_chaos_mark(void)
{
	chaos_run(128u << 10, 20, 300);
}

static int add_suites(void)
{
	CU_pSuite s = CU_add_suite("chaos_ring", NULL, NULL);

	if (!s)
		return -1;
	CU_add_test(s, "producers killed and stopped at random",
		    test_chaos);
	CU_add_test(s, "the same, consumer asleep until the fill mark",
		    test_chaos_mark);
	return 0;
}

TEST_MAIN(add_suites)
