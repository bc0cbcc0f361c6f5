/* test_ring.c - the shm ring and the producer library: ordering, no loss,
 * no duplicates, wrap-around at every size, exact drop counts, dead
 * producers killed at every step of an emit, hostile garbage, layout
 * validation, fork and thread safety.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "testutil.h"
#include "ringtest.h"
#include "slots.h"
#include "outbox.h"

#if defined(__SANITIZE_ADDRESS__)
#define SCALE 8
#else
#define SCALE 1
#endif

extern int obx_fault_where;
extern long obx_fault_countdown;
extern int obx_fault_signal;
extern void (*obx_fault_hook)(int where);

static struct rt_ctx g_rt;
#define g_seg  (g_rt.seg)
#define g_c    (g_rt.c)
#define g_er   (g_rt.er)
#define g_seen (g_rt.seen)

static int setup_ring(const char *tag, uint64_t ring, uint32_t maxrec)
{
	return rt_setup(&g_rt, tag, ring, maxrec, 1024);
}

/* A ring whose shared head and tail read `head` when the consumer
 * attaches (a restarted broker on a segment as it finds it). */
static int setup_ring_at(const char *tag, uint64_t ring, uint32_t maxrec,
			 uint64_t head)
{
	int rc = setup_ring(tag, ring, maxrec);

	if (rc)
		return rc;
	atomic_store(&g_seg.cons->head, head);
	atomic_store(&g_seg.hdr->tail, head);
	ring_cons_fini(&g_c);
	return ring_cons_init(&g_c, &g_seg);
}

static void teardown_ring(void)
{
	rt_teardown(&g_rt);
}

#define emit_one rt_emit

/* ---- single process ---------------------------------------------------- */

static void test_single_order(void)
{
	obx_t *h;
	uint64_t i, n = 200000 / SCALE;
	struct ring_rec r;
	int rc;

	CU_ASSERT_FATAL(setup_ring("single", 1 << 20, 4096) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	for (i = 0; i < n; i++) {
		size_t len = 24 + (i * 13) % 300;

		while ((rc = emit_one(h, 1, i, len)) == -EAGAIN)
			rt_drain(&g_c, &g_er, &g_seen, 10);
		CU_ASSERT_EQUAL_FATAL(rc, 0);
	}
	rt_drain(&g_c, &g_er, &g_seen, 1000);
	CU_ASSERT_EQUAL(g_seen.count[1], n);
	CU_ASSERT_EQUAL(g_seen.torn, 0);
	CU_ASSERT_EQUAL(g_seen.invalid, 0);
	CU_ASSERT_EQUAL(g_seen.out_of_order, 0);
	CU_ASSERT_EQUAL(ring_next(&g_c, &r, tu_now_ns()), RING_EMPTY);
	obx_close(h);
	teardown_ring();
}

/* Issue 17: a commit wakes a sleeping consumer only when its claim ends
 * past the position the consumer armed (cursor + mark); below it, the
 * wake word stays armed (no exchange, no FUTEX_WAKE) and the consumer
 * finds the records on its own schedule. On the old protocol every
 * commit into an armed ring exchanged the word and woke it. */
static void test_wake_mark(void)
{
	const uint64_t mark = 4096;
	uint64_t armed_at;
	_Atomic uint32_t *wake;
	int n = 0;
	obx_t *h;

	CU_ASSERT_FATAL(setup_ring("wake", 64 << 10, 4096) == 0);
	wake = &g_seg.hdr->wake;
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	CU_ASSERT_EQUAL(ring_cons_arm(&g_c, mark), 1);
	armed_at = g_c.cursor;
	CU_ASSERT_EQUAL(atomic_load(&g_seg.hdr->wake_pos), armed_at + mark);
	/* below the mark: armed all along */
	while (atomic_load(&g_seg.hdr->tail) + 400 < armed_at + mark) {
		CU_ASSERT_EQUAL_FATAL(emit_one(h, 4, (uint64_t)n, 200), 0);
		n++;
		CU_ASSERT_EQUAL_FATAL(atomic_load(wake), 1);
	}
	CU_ASSERT(n >= 8);
	/* the ring holds less than the mark: the consumer may sleep */
	CU_ASSERT_EQUAL(ring_cons_arm(&g_c, mark), 1);
	/* the claim that passes the mark takes the word (and wakes) */
	while ((int64_t)(atomic_load(&g_seg.hdr->tail) -
			 (armed_at + mark)) <= 0) {
		CU_ASSERT_EQUAL_FATAL(emit_one(h, 4, (uint64_t)n, 200), 0);
		n++;
	}
	CU_ASSERT_EQUAL(atomic_load(wake), 0);
	/* C5: arming with the ring already past the mark refuses to sleep
	 * and leaves the word disarmed; mark 0 asks for any record */
	CU_ASSERT_EQUAL(ring_cons_arm(&g_c, mark), 0);
	CU_ASSERT_EQUAL(atomic_load(wake), 0);
	CU_ASSERT_EQUAL(ring_cons_arm(&g_c, 0), 0);
	rt_drain(&g_c, &g_er, &g_seen, 1000);
	CU_ASSERT_EQUAL(g_seen.count[4], (uint64_t)n);
	CU_ASSERT_EQUAL(ring_cons_arm(&g_c, 0), 1);
	CU_ASSERT_EQUAL_FATAL(emit_one(h, 4, (uint64_t)n, 200), 0);
	CU_ASSERT_EQUAL(atomic_load(wake), 0);
	ring_cons_disarm(&g_c);
	obx_close(h);
	teardown_ring();
}

static void test_wrap_every_size(void)
{
	obx_t *h;
	uint32_t maxrec = 8192, len;
	uint64_t sent = 0;
	struct obx_counters oc;
	int rc;

	CU_ASSERT_FATAL(setup_ring("wrap", 64 << 10, maxrec) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	/* every body size from 1 byte up to what fits in max_record; the
	 * envelope head takes the rest. Sizes below the test header are
	 * sent as raw bytes and only counted. */
	for (len = 1; ; len++) {
		uint8_t buf[8192];

		if (len >= sizeof(struct rt_body))
			rt_make_body(buf, len, 2, sent);
		else
			memset(buf, 0xab, len);
		rc = obx_emit(h, 0, "t", buf, len, OBX_BODY_BYTES);
		if (rc == -EAGAIN) {
			rt_drain(&g_c, &g_er, &g_seen, 100);
			rc = obx_emit(h, 0, "t", buf, len, OBX_BODY_BYTES);
		}
		if (rc == -EMSGSIZE)
			break;
		CU_ASSERT_EQUAL_FATAL(rc, 0);
		if (len >= sizeof(struct rt_body))
			sent++;
		else
			g_seen.next_seq[2] = (int64_t)sent;
		if (len % 7 == 0)
			rt_drain(&g_c, &g_er, &g_seen, 100);
	}
	rt_drain(&g_c, &g_er, &g_seen, 1000);
	/* the last size that fitted is max_record minus the envelope head */
	CU_ASSERT(len > maxrec - 64 && len <= maxrec);
	CU_ASSERT_EQUAL(g_seen.count[2], sent);
	CU_ASSERT_EQUAL(g_seen.torn, 0);
	CU_ASSERT_EQUAL(g_seen.invalid, sizeof(struct rt_body) - 1);
	/* the ring wrapped many times */
	CU_ASSERT(g_c.head > 100 * (64 << 10));
	CU_ASSERT_EQUAL(obx_counters(h, &oc), 0);
	CU_ASSERT_EQUAL(oc.dropped_too_large, 1);
	obx_close(h);
	teardown_ring();
}

static void test_full_drops_exact(void)
{
	obx_t *h;
	uint64_t ok = 0, full = 0, i;
	struct obx_counters oc;
	int rc;

	CU_ASSERT_FATAL(setup_ring("full", 64 << 10, 4096) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	for (i = 0; i < 5000; i++) {
		rc = emit_one(h, 3, ok, 100);
		if (rc == 0)
			ok++;
		else if (rc == -EAGAIN)
			full++;
		else
			CU_FAIL("unexpected emit error");
	}
	CU_ASSERT(ok > 100 && full > 1000);
	CU_ASSERT_EQUAL(obx_counters(h, &oc), 0);
	CU_ASSERT_EQUAL(oc.dropped_ring_full, full);
	CU_ASSERT_EQUAL(oc.emitted, 5000);
	rt_drain(&g_c, &g_er, &g_seen, 1000);
	CU_ASSERT_EQUAL(g_seen.count[3], ok);
	CU_ASSERT_EQUAL(g_seen.out_of_order, 0);
	/* room again after the drain */
	CU_ASSERT_EQUAL(emit_one(h, 3, ok, 100), 0);
	obx_close(h);
	teardown_ring();
}

static void test_zero_copy(void)
{
	obx_t *h;
	struct obx_rsv r;
	struct ring_rec rec;
	struct env_view v;
	int rc, i;

	CU_ASSERT_FATAL(setup_ring("zc", 64 << 10, 1024) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	CU_ASSERT_EQUAL_FATAL(obx_reserve(h, 0, "track", 200, &r), 0);
	msgpack_pack_map(&r.pk, 2);
	msgpack_pack_str_with_body(&r.pk, "event", 5);
	msgpack_pack_str_with_body(&r.pk, "signup", 6);
	msgpack_pack_str_with_body(&r.pk, "n", 1);
	msgpack_pack_int(&r.pk, 42);
	CU_ASSERT_EQUAL(obx_commit(h, &r), 0);
	/* an abort is skipped by the consumer */
	CU_ASSERT_EQUAL_FATAL(obx_reserve(h, 0, "x", 50, &r), 0);
	obx_abort(h, &r);
	/* packing past max_body: -EMSGSIZE, nothing delivered */
	CU_ASSERT_EQUAL_FATAL(obx_reserve(h, 0, "x", 10, &r), 0);
	msgpack_pack_array(&r.pk, 20);
	for (i = 0; i < 20; i++)
		msgpack_pack_str_with_body(&r.pk, "abcdef", 6);
	CU_ASSERT_EQUAL(obx_commit(h, &r), -EMSGSIZE);
	rc = ring_next(&g_c, &rec, tu_now_ns());
	CU_ASSERT_EQUAL_FATAL(rc, RING_RECORD);
	CU_ASSERT_EQUAL_FATAL(env_parse(&g_er, rec.payload, rec.len, &v), 0);
	CU_ASSERT_EQUAL(v.body_kind, ENV_BODY_MSGPACK);
	CU_ASSERT_EQUAL(v.body_obj->type, MSGPACK_OBJECT_MAP);
	CU_ASSERT_EQUAL(v.body_obj->via.map.size, 2);
	CU_ASSERT(v.type_len == 5 && memcmp(v.type, "track", 5) == 0);
	CU_ASSERT(v.has_id);
	CU_ASSERT_EQUAL(ring_next(&g_c, &rec, tu_now_ns()), RING_EMPTY);
	obx_close(h);
	teardown_ring();
}

/* ---- multi-process ----------------------------------------------------- */

static void producer_child(const char *name, uint32_t prod, uint64_t n)
{
	obx_t *h = obx_open(name);
	uint64_t i;

	if (!h)
		_exit(2);
	for (i = 0; i < n; i++) {
		size_t len = 24 + (i * 7 + prod * 3) % 240;

		while (emit_one(h, prod, i, len) == -EAGAIN)
			sched_yield();
	}
	obx_close(h);
	_exit(0);
}

static void run_producers(int np, uint64_t n, uint64_t ring)
{
	pid_t pids[16];
	int i, status, done = 0;
	uint64_t expect_emitted, e, f, t, l;

	CU_ASSERT_FATAL(setup_ring("mp", ring, 4096) == 0);
	for (i = 0; i < np; i++) {
		pids[i] = fork();
		if (pids[i] == 0)
			producer_child(g_seg.name, 10 + (uint32_t)i, n);
	}
	while (done < np) {
		rt_drain(&g_c, &g_er, &g_seen, 50);
		for (i = 0; i < np; i++)
			if (pids[i] > 0 && waitpid(pids[i], &status, WNOHANG)
			    == pids[i]) {
				CU_ASSERT(WIFEXITED(status) &&
					  WEXITSTATUS(status) == 0);
				pids[i] = 0;
				done++;
			}
		ring_cons_wait(&g_c, 1000000, 0);
	}
	rt_drain(&g_c, &g_er, &g_seen, 2000);
	for (i = 0; i < np; i++) {
		CU_ASSERT_EQUAL(g_seen.count[10 + i], n);
		CU_ASSERT_EQUAL(g_seen.next_seq[10 + i], (int64_t)n);
	}
	CU_ASSERT_EQUAL(g_seen.torn, 0);
	CU_ASSERT_EQUAL(g_seen.invalid, 0);
	CU_ASSERT_EQUAL(g_seen.out_of_order, 0);
	/* counters reconcile: every emit was either consumed or a counted
	 * ring-full drop (the producers retried those) */
	ring_reap(&g_c);
	ring_reap(&g_c);
	ring_totals(&g_c, &e, &f, &t, &l);
	expect_emitted = (uint64_t)np * n + f;
	CU_ASSERT_EQUAL(e, expect_emitted);
	CU_ASSERT_EQUAL(g_c.st.consumed, (uint64_t)np * n);
	CU_ASSERT_EQUAL(g_c.st.unblocked, 0);
	printf("\n    %d producers x %llu: consumed %llu, ring-full retries "
	       "%llu\n", np, (unsigned long long)n,
	       (unsigned long long)g_c.st.consumed, (unsigned long long)f);
	teardown_ring();
}

static void test_multi_process_4(void)
{
	run_producers(4, 1000000 / SCALE, 4 << 20);
}

static void test_multi_process_8_small_ring(void)
{
	/* a small ring: constant contention at the window edge */
	run_producers(8, 100000 / SCALE, 64 << 10);
}

/* ---- SIGKILL at every step of an emit ----------------------------------- */

static void victim_child(const char *name, uint32_t prod, int where,
			 long countdown)
{
	obx_t *h = obx_open(name);
	uint64_t i;

	if (!h)
		_exit(2);
	obx_fault_where = where;
	obx_fault_countdown = countdown;
	for (i = 0; i < 1000; i++)
		while (emit_one(h, prod, i, 64 + (i % 5) * 40) == -EAGAIN)
			sched_yield();
	_exit(3); /* the fault point never fired */
}

static void live_child(const char *name, uint32_t prod, volatile int *stop)
{
	obx_t *h = obx_open(name);
	uint64_t i = 0;

	if (!h)
		_exit(2);
	while (!*stop) {
		while (emit_one(h, prod, i, 100) == -EAGAIN)
			sched_yield();
		i++;
		if (i % 32 == 0)
			usleep(1000); /* ~20-30k/s: keeps writing, never floods */
	}
	obx_close(h);
	_exit(0);
}

static void test_sigkill_injection(void)
{
	const int per_round = 4;
	int rounds = 1000 / per_round / SCALE, rd, k, status;
	int where_hits[OBX_FP_N] = { 0 };
	volatile int *stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t worst_ns = 0, kills = 0, expect_committed = 0, expect_lost = 0;
	uint64_t e, f, t, l;
	long countdowns[RT_MAX_PRODUCERS] = { 0 };
	pid_t live;

	CU_ASSERT_FATAL(setup_ring("kill", 1 << 20, 4096) == 0);
	srand(12345);
	*stop = 0;
	live = fork();
	if (live == 0)
		live_child(g_seg.name, 1, stop);
	for (rd = 0; rd < rounds; rd++) {
		pid_t pids[8];
		uint64_t t0, target;

		for (k = 0; k < per_round; k++) {
			uint32_t prod = 100 + (uint32_t)(rd * per_round + k);
			/* every fault point: P0, P1, after P2, P4 before
			 * P5, after P5, mid copy, before commit */
			int where = 1 + rand() % (OBX_FP_N - 1);
			long cd = 1 + rand() % 20;

			countdowns[prod] = cd;
			where_hits[where]++;
			/* killed in P0 nothing was claimed yet */
			expect_lost += where != OBX_FP_WINDOW;
			pids[k] = fork();
			if (pids[k] == 0)
				victim_child(g_seg.name, prod, where, cd);
		}
		/* keep consuming until every victim is dead; half the rounds
		 * reap them at once, half leave zombies until the end of the
		 * round: both must read as dead */
		for (;;) {
			int alive = 0;

			for (k = 0; k < per_round; k++) {
				char st = 0;

				if (!pids[k])
					continue;
				if (rd % 2 == 0) {
					if (waitpid(pids[k], &status, WNOHANG)
					    == pids[k]) {
						CU_ASSERT(WIFSIGNALED(status) &&
						  WTERMSIG(status) == SIGKILL);
						pids[k] = 0;
						continue;
					}
				} else if (slot_proc_stat(pids[k], NULL, &st)
					   == 0 && st == 'Z') {
					continue;
				}
				alive++;
			}
			if (!alive)
				break;
			rt_drain(&g_c, &g_er, &g_seen, 1);
		}
		/* from here every victim is dead: the consumer must get past
		 * their records within the liveness bound */
		t0 = tu_now_ns();
		target = atomic_load(&g_seg.hdr->tail);
		while ((int64_t)(g_c.cursor - target) < 0 &&
		       tu_now_ns() - t0 < 5000000000ull)
			rt_drain(&g_c, &g_er, &g_seen, 1);
		if (tu_now_ns() - t0 > worst_ns)
			worst_ns = tu_now_ns() - t0;
		if (tu_now_ns() - t0 > 200000000ull)
			printf("\n    slow round %d: %.1f ms, word %llx\n", rd,
			       (double)(tu_now_ns() - t0) / 1e6,
			       (unsigned long long)seg_rec(&g_seg,
						g_c.cursor)->word);
		if (rd % 2)
			for (k = 0; k < per_round; k++) {
				waitpid(pids[k], &status, 0);
				CU_ASSERT(WIFSIGNALED(status) &&
					  WTERMSIG(status) == SIGKILL);
			}
		kills += per_round;
	}
	*stop = 1;
	waitpid(live, &status, 0);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	rt_drain(&g_c, &g_er, &g_seen, 2000);
	/* reap until every dead slot is folded (their open claims are
	 * counted then) */
	{
		uint64_t t0 = tu_now_ns();
		int dead;

		do {
			uint32_t i;

			ring_reap(&g_c);
			rt_drain(&g_c, &g_er, &g_seen, 10);
			for (dead = 0, i = 0; i < g_seg.g.nslots; i++)
				dead += atomic_load(&g_seg.slots[i].state) ==
					OBX_SLOT_DEAD;
		} while (dead && tu_now_ns() - t0 < 5000000000ull);
		CU_ASSERT_EQUAL(dead, 0);
	}
	for (k = 0; k < rounds * per_round; k++) {
		uint32_t prod = 100 + (uint32_t)k;

		/* every emit before the fatal one is delivered, in order,
		 * intact; the fatal one never is */
		CU_ASSERT_EQUAL(g_seen.count[prod],
				(uint64_t)(countdowns[prod] - 1));
		expect_committed += (uint64_t)(countdowns[prod] - 1);
	}
	CU_ASSERT_EQUAL(g_seen.torn, 0);
	CU_ASSERT_EQUAL(g_seen.invalid, 0);
	CU_ASSERT_EQUAL(g_seen.out_of_order, 0);
	/* one recovered record per kill after P0, counted exactly once
	 * whatever the instruction it died at */
	CU_ASSERT_EQUAL(g_c.st.unblocked, expect_lost);
	ring_totals(&g_c, &e, &f, &t, &l);
	CU_ASSERT_EQUAL(e, g_c.st.consumed + g_c.st.unblocked + f);
	if (g_c.st.unblocked != expect_lost ||
	    e != g_c.st.consumed + g_c.st.unblocked + f)
		printf("\n    unblocked %llu, expected %llu; emitted %llu, "
		       "consumed+unblocked+full %llu\n",
		       (unsigned long long)g_c.st.unblocked,
		       (unsigned long long)expect_lost, (unsigned long long)e,
		       (unsigned long long)(g_c.st.consumed +
					    g_c.st.unblocked + f));
	/* the liveness bound is 100 ms; the margin covers a loaded 2-core
	 * machine, and sanitizer builds (SCALE > 1) measure correctness,
	 * not speed */
	CU_ASSERT(worst_ns < 1000000000ull * (SCALE > 1 ? 10 : 1));
	printf("\n    %llu kills (P0 %d, P1 %d, after add %d, before settle "
	       "%d, after header %d, mid copy %d, before commit %d); worst "
	       "resume %.1f ms; gaps padded %llu\n",
	       (unsigned long long)kills, where_hits[OBX_FP_WINDOW],
	       where_hits[OBX_FP_CLAIM_MID], where_hits[OBX_FP_AFTER_ADD],
	       where_hits[OBX_FP_BEFORE_SETTLE], where_hits[OBX_FP_AFTER_HDR],
	       where_hits[OBX_FP_MID_COPY], where_hits[OBX_FP_BEFORE_COMMIT],
	       (double)worst_ns / 1e6, (unsigned long long)g_c.st.gaps);
	munmap((void *)stop, 4096);
	teardown_ring();
}

/* ---- a live producer that stops while it holds a claim ------------------ */

struct stall_ctl {
	_Atomic int rc;          /* the stopped producer's commit result */
	_Atomic int done;
};

/* The stopped producer: one record (producer 60, seq 0) of ~1900 bytes.
 * how = 0: stops between obx_reserve and obx_commit (BUSY header);
 * how = 1: stops right after the tail fetch_add (no header yet). */
static void stall_child(const char *name, int how, struct stall_ctl *ctl)
{
	uint8_t body[1900];
	struct obx_rsv r;
	obx_t *h = obx_open(name);
	int rc;

	if (!h)
		_exit(2);
	rt_make_body(body, sizeof(body), 60, 0);
	if (how == 1) {
		obx_fault_signal = SIGSTOP;
		obx_fault_where = OBX_FP_AFTER_ADD;
		obx_fault_countdown = 1;
		rc = obx_emit(h, 0, "t", body, sizeof(body), OBX_BODY_BYTES);
	} else {
		if (obx_reserve(h, 0, "t", sizeof(body) + 8, &r) < 0)
			_exit(3);
		msgpack_pack_bin(&r.pk, sizeof(body));
		msgpack_pack_bin_body(&r.pk, body, sizeof(body));
		raise(SIGSTOP);
		rc = obx_commit(h, &r);
	}
	atomic_store(&ctl->rc, rc);
	atomic_store(&ctl->done, 1);
	obx_close(h);
	_exit(0);
}

/* Emits producer-61 events until the ring refuses one (drain = 0) or n
 * were taken (draining as needed). Returns the next seq. */
static uint64_t stall_emit(obx_t *h, uint64_t seq, uint64_t n, int drain)
{
	uint64_t end = seq + n;

	while (seq < end) {
		int rc = emit_one(h, 61, seq, 180 + seq % 40);

		if (rc == 0) {
			seq++;
		} else if (rc == -EAGAIN) {
			if (!drain)
				break;
			rt_drain(&g_c, &g_er, &g_seen, 1);
		} else {
			CU_FAIL("unexpected emit error");
			break;
		}
	}
	return seq;
}

static struct ring_stall_info g_stall;
static int g_nstall;

static void on_stall(void *arg, const struct ring_stall_info *si)
{
	(void)arg;
	g_stall = *si;
	g_nstall++;
}

/* A producer SIGSTOPped while it holds a claim, for longer than
 * stall_timeout: its space is never handed to another record while it
 * lives; the consumer delivers what lies behind it meanwhile; when it
 * resumes its record is delivered and nobody else's is damaged. */
static void run_stall(int how)
{
	struct stall_ctl *ctl = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t seq = 0, t0, behind;
	int status;
	pid_t a;
	obx_t *h;

	CU_ASSERT_FATAL(setup_ring(how ? "stallgap" : "stallbusy", 64 << 10,
				   4096) == 0);
	g_c.stall_timeout = 50000000ull;          /* 50 ms */
	g_c.on_stall = on_stall;
	g_nstall = 0;
	a = fork();
	if (a == 0)
		stall_child(g_seg.name, how, ctl);
	CU_ASSERT_FATAL(waitpid(a, &status, WUNTRACED) == a &&
			WIFSTOPPED(status));
	/* its claim is the first one: position 0 */
	CU_ASSERT_FATAL(atomic_load(&g_seg.hdr->tail) >= 1900);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	/* 1: the consumer gets past the stopped claim and delivers the
	 * records behind it while the owner is stopped */
	t0 = tu_now_ns();
	while (g_c.cursor < 2000 && tu_now_ns() - t0 < 3000000000ull) {
		seq = stall_emit(h, seq, 20, 1);
		rt_drain(&g_c, &g_er, &g_seen, 1);
	}
	usleep(150000);                          /* past stall_timeout */
	rt_drain(&g_c, &g_er, &g_seen, 10);
	behind = g_seen.count[61];
	CU_ASSERT(behind > 0);
	/* gone past once, counted and reported once, with the pid */
	CU_ASSERT_EQUAL(g_c.st.skips, 1);
	CU_ASSERT_EQUAL(g_c.st.stalls, 1);
	CU_ASSERT_EQUAL(g_nstall, 1);
	CU_ASSERT_EQUAL(g_stall.pid, (uint32_t)a);
	CU_ASSERT(g_stall.held_ns >= 50000000ull && g_stall.killed == 0);
	/* 2: half a ring more, drained: on the old code head is now well
	 * past the stopped claim */
	seq = stall_emit(h, seq, (32 << 10) / 200, 1);
	rt_drain(&g_c, &g_er, &g_seen, 100);
	/* 3: fill the ring without draining: these records must not land
	 * where the stopped producer will write */
	seq = stall_emit(h, seq, 100000, 0);
	CU_ASSERT(seq > behind);
	/* 4: resume it; it finishes its record */
	kill(a, SIGCONT);
	CU_ASSERT_EQUAL(waitpid(a, &status, 0), a);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CU_ASSERT(atomic_load(&ctl->done));
	CU_ASSERT_EQUAL(atomic_load(&ctl->rc), 0);
	/* 5: everything is delivered, once, intact, in each producer's
	 * order; nothing was recovered as if its owner had died */
	t0 = tu_now_ns();
	while ((g_seen.count[61] < seq || g_seen.count[60] < 1) &&
	       tu_now_ns() - t0 < 3000000000ull)
		rt_drain(&g_c, &g_er, &g_seen, 10);
	printf("\n    %llu delivered behind the stopped claim; producer 61: "
	       "%llu of %llu, stopped producer: %llu; torn %llu, invalid "
	       "%llu\n", (unsigned long long)behind,
	       (unsigned long long)g_seen.count[61], (unsigned long long)seq,
	       (unsigned long long)g_seen.count[60],
	       (unsigned long long)g_seen.torn,
	       (unsigned long long)g_seen.invalid);
	CU_ASSERT_EQUAL(g_seen.count[61], seq);
	CU_ASSERT_EQUAL(g_seen.count[60], 1);
	CU_ASSERT_EQUAL(g_seen.torn, 0);
	CU_ASSERT_EQUAL(g_seen.invalid, 0);
	CU_ASSERT_EQUAL(g_seen.out_of_order, 0);
	CU_ASSERT_EQUAL(g_c.st.unblocked, 0);
	obx_close(h);
	munmap(ctl, 4096);
	teardown_ring();
}

static void test_stall_busy(void)
{
	run_stall(0);
}

/* stall_action = kill: past stall_timeout the owner is SIGKILLed, its
 * record recovered, the ring moves on. */
static void test_stall_kill(void)
{
	struct stall_ctl *ctl = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t seq = 0, t0;
	int status, reaped = 0;
	pid_t a;
	obx_t *h;

	CU_ASSERT_FATAL(setup_ring("stallkill", 64 << 10, 4096) == 0);
	g_c.stall_timeout = 50000000ull;
	g_c.stall_kill = 1;
	g_c.on_stall = on_stall;
	g_nstall = 0;
	a = fork();
	if (a == 0)
		stall_child(g_seg.name, 0, ctl);
	CU_ASSERT_FATAL(waitpid(a, &status, WUNTRACED) == a &&
			WIFSTOPPED(status));
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	t0 = tu_now_ns();
	while (!reaped && tu_now_ns() - t0 < 3000000000ull) {
		seq = stall_emit(h, seq, 5, 1);
		rt_drain(&g_c, &g_er, &g_seen, 1);
		if (waitpid(a, &status, WNOHANG) == a)
			reaped = 1;
	}
	CU_ASSERT(reaped && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	/* its record recovered once the lock is gone; the ring moves on */
	t0 = tu_now_ns();
	while ((g_c.npins || g_seen.count[61] < seq) &&
	       tu_now_ns() - t0 < 2000000000ull) {
		rt_drain(&g_c, &g_er, &g_seen, 5);
		ring_reap(&g_c);
	}
	CU_ASSERT_EQUAL(g_c.st.stall_kills, 1);
	CU_ASSERT_EQUAL(g_nstall, 1);
	CU_ASSERT_EQUAL(g_stall.killed, 1);
	CU_ASSERT_EQUAL(g_stall.pid, (uint32_t)a);
	CU_ASSERT_EQUAL(g_c.st.unblocked, 1);
	CU_ASSERT_EQUAL(g_c.npins, 0);
	CU_ASSERT_EQUAL(g_seen.count[61], seq);
	CU_ASSERT_EQUAL(g_seen.count[60], 0);
	CU_ASSERT_EQUAL(g_seen.torn, 0);
	CU_ASSERT_EQUAL(atomic_load(&ctl->done), 0);
	obx_close(h);
	munmap(ctl, 4096);
	teardown_ring();
}

static void test_stall_gap(void)
{
	run_stall(1);
}

/* ---- hostile and stale positions ---------------------------------------- */

/* Runs fn in a child with an alarm: a hang fails the test instead of
 * hanging the runner. fn returns the number of failed checks. */
static void in_child_timed(int (*fn)(void), unsigned seconds)
{
	int status;
	pid_t pid = fork();

	if (pid == 0) {
		int fails;

		alarm(seconds);
		fails = fn();
		_exit(fails > 99 ? 99 : fails);
	}
	CU_ASSERT_EQUAL_FATAL(waitpid(pid, &status, 0), pid);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	if (WIFSIGNALED(status))
		printf("\n    child died of signal %d%s\n", WTERMSIG(status),
		       WTERMSIG(status) == SIGALRM ? " (hung)" : "");
	else if (WEXITSTATUS(status))
		printf("\n    %d checks failed\n", WEXITSTATUS(status));
}

/* tail pushed 2^62 ahead: every ring_next() call returns quickly, the
 * tail is repaired and counted, the ring keeps working. */
static int hostile_tail_child(void)
{
	uint64_t i, worst = 0, t0;
	struct ring_rec r;
	int fails = 0, rc;
	obx_t *h = obx_open(g_seg.name);

	if (!h)
		return 100;
	for (i = 0; i < 200; i++)
		fails += emit_one(h, 5, i, 100) != 0;
	for (i = 0; i < 100; i++) {
		fails += ring_next(&g_c, &r, tu_now_ns()) != RING_RECORD;
		rt_check_record(&g_er, &r, &g_seen);
	}
	atomic_fetch_add(&g_seg.hdr->tail, 1ull << 62);
	t0 = tu_now_ns();
	do {
		uint64_t c0 = tu_now_ns();

		rc = ring_next(&g_c, &r, c0);
		if (rc == RING_RECORD)
			rt_check_record(&g_er, &r, &g_seen);
		ring_release(&g_c, g_c.cursor);
		if (tu_now_ns() - c0 > worst)
			worst = tu_now_ns() - c0;
		if (rc == RING_STALLED)
			usleep(100);
	} while (rc != RING_EMPTY && tu_now_ns() - t0 < 5000000000ull);
	fails += rc != RING_EMPTY;
	fails += g_c.st.tail_repairs < 1;
	/* the records before the damage were delivered, once */
	fails += g_seen.count[5] != 200;
	/* and the ring works again */
	for (i = 200; i < 2200; i++) {
		while ((rc = emit_one(h, 5, i, 100)) == -EAGAIN)
			rt_drain(&g_c, &g_er, &g_seen, 1);
		fails += rc != 0;
	}
	rt_drain(&g_c, &g_er, &g_seen, 1000);
	fails += g_seen.count[5] != 2200;
	fails += g_seen.torn + g_seen.invalid + g_seen.out_of_order != 0;
	printf("\n    slowest ring_next %.2f ms, tail repairs %llu, "
	       "delivered %llu\n", (double)worst / 1e6,
	       (unsigned long long)g_c.st.tail_repairs,
	       (unsigned long long)g_seen.count[5]);
	fails += worst > 200000000ull * SCALE;
	obx_close(h);
	return fails;
}

static void test_hostile_tail(void)
{
	CU_ASSERT_FATAL(setup_ring("tail62", 1 << 20, 4096) == 0);
	in_child_timed(hostile_tail_child, 20);
	teardown_ring();
}

/* tail made misaligned under a running producer: repaired, and what the
 * producer was told was taken is delivered (it retries what was not) */
static void test_misaligned_tail(void)
{
	uint64_t i, n = 200000 / SCALE, acked = 0;
	obx_t *h;
	int rc;

	CU_ASSERT_FATAL(setup_ring("tail3", 1 << 20, 4096) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	for (i = 0; i < n; i++) {
		uint64_t t0 = tu_now_ns();

		if (i == n / 4)
			atomic_fetch_add(&g_seg.hdr->tail, 3);
		while ((rc = emit_one(h, 6, i, 64 + i % 200)) == -EAGAIN &&
		       tu_now_ns() - t0 < 1000000000ull)
			rt_drain(&g_c, &g_er, &g_seen, 1);
		if (rc != 0)
			break;
		acked++;
		if (i % 64 == 0)
			rt_drain(&g_c, &g_er, &g_seen, 0);
	}
	rt_drain(&g_c, &g_er, &g_seen, 2000);
	printf("\n    acked %llu of %llu, delivered %llu, tail repairs %llu, "
	       "damaged words %llu\n", (unsigned long long)acked,
	       (unsigned long long)n, (unsigned long long)g_seen.count[6],
	       (unsigned long long)g_c.st.tail_repairs,
	       (unsigned long long)g_c.st.damaged);
	CU_ASSERT_EQUAL(acked, n);
	CU_ASSERT_EQUAL(g_seen.count[6], acked);
	CU_ASSERT_EQUAL(g_seen.torn, 0);
	CU_ASSERT_EQUAL(g_seen.out_of_order, 0);
	CU_ASSERT(g_c.st.tail_repairs >= 1);
	obx_close(h);
	teardown_ring();
}

/* Claims abandoned past head + ring_size (racing producers overshoot the
 * window) while consumed records are not yet released: the gap scan must
 * not read the old lap and hand those records out again. */
static void test_no_replay_past_window(void)
{
	uint64_t consumed = 0, again = 0, t1;
	struct ring_rec r;
	int rc, i;
	obx_t *h;

	CU_ASSERT_FATAL(setup_ring("replay", 64 << 10, 4096) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	for (i = 0; emit_one(h, 8, (uint64_t)i, 1000) == 0; i++)
		;
	while (ring_next(&g_c, &r, tu_now_ns()) == RING_RECORD)
		consumed++;
	CU_ASSERT_EQUAL(consumed, (uint64_t)i);
	/* not released yet (the spool write is in flight); abandoned
	 * claims push tail past head + ring_size */
	t1 = atomic_fetch_add(&g_seg.hdr->tail, 16 << 10);
	CU_ASSERT(t1 + (16 << 10) > g_c.head + (64 << 10));
	for (i = 0; i < 100; i++) {
		rc = ring_next(&g_c, &r, tu_now_ns());
		if (rc == RING_RECORD)
			again++;
		if (i == 50)
			ring_release(&g_c, g_c.cursor);
	}
	ring_release(&g_c, g_c.cursor);
	CU_ASSERT_EQUAL(ring_next(&g_c, &r, tu_now_ns()), RING_EMPTY);
	printf("\n    %llu records consumed, %llu handed out again\n",
	       (unsigned long long)consumed, (unsigned long long)again);
	CU_ASSERT_EQUAL(again, 0);
	CU_ASSERT_EQUAL(g_c.cursor, t1 + (16 << 10));
	/* the ring works afterwards */
	rt_seen_init(&g_seen);
	for (i = 0; i < 500; i++)
		while ((rc = emit_one(h, 8, (uint64_t)i, 1000)) == -EAGAIN)
			rt_drain(&g_c, &g_er, &g_seen, 1);
	rt_drain(&g_c, &g_er, &g_seen, 1000);
	CU_ASSERT_EQUAL(g_seen.count[8], 500);
	obx_close(h);
	teardown_ring();
}

/* Positions are 64-bit counters a damaged tail can push near 2^64: the
 * consumer compares them as distances, so the ring works across the wrap
 * (found by fuzz_ring). */
static void test_positions_wrap(void)
{
	uint64_t start = (uint64_t)0 - (48 << 10), i;
	obx_t *h;
	int rc;

	CU_ASSERT_FATAL(setup_ring_at("wrap64", 64 << 10, 4096, start) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	for (i = 0; i < 3000; i++) {
		while ((rc = emit_one(h, 11, i, 100 + i % 300)) == -EAGAIN)
			rt_drain(&g_c, &g_er, &g_seen, 1);
		CU_ASSERT_EQUAL_FATAL(rc, 0);
		/* now and then an abandoned claim: a dead zero gap while
		 * head + ring_size has crossed 2^64 and tail has not */
		if (i % 10 == 5)
			atomic_fetch_add(&g_seg.hdr->tail, 64);
	}
	rt_drain(&g_c, &g_er, &g_seen, 1000);
	CU_ASSERT(g_c.cursor < start);            /* crossed 2^64 */
	CU_ASSERT_EQUAL(g_seen.count[11], 3000);
	CU_ASSERT_EQUAL(g_seen.torn + g_seen.invalid + g_seen.out_of_order, 0);
	CU_ASSERT_EQUAL(g_c.st.damaged + g_c.st.tail_repairs, 0);
	obx_close(h);
	teardown_ring();
}

/* cons->head is in the shared segment, and a broker restarted on a
 * segment someone scribbled on reads it back from there: a misaligned
 * head (4 bytes past a 16-byte line) must not crash the release's
 * non-temporal zeroing (MOVNTDQ faults on an address that is not
 * 16-aligned) nor zero bytes past the range it releases. */
static void test_misaligned_head(void)
{
	obx_t *h;
	uint64_t i;
	int rc;

	CU_ASSERT_FATAL(setup_ring_at("mishead", 64 << 10, 4096, 4) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	for (i = 0; i < 1000; i++) {
		while ((rc = emit_one(h, 12, i, 100 + i % 300)) == -EAGAIN)
			rt_drain(&g_c, &g_er, &g_seen, 1);
		if (rc != 0)
			break;
	}
	rt_drain(&g_c, &g_er, &g_seen, 1000);
	/* the broker goes on: records after the repair are delivered */
	CU_ASSERT(g_seen.count[12] > 0);
	CU_ASSERT_EQUAL(g_c.head & 7, 0);
	obx_close(h);
	teardown_ring();
}

/* tail is in the shared segment too, and the gap walk reads it afresh:
 * a producer that stores a misaligned tail far ahead, behind an empty
 * ring, must not move the cursor, and so head, off the 8-byte grid (the
 * release's 16-byte non-temporal stores fault there). */
static void test_misaligned_tail_gap(void)
{
	uint64_t now = tu_now_ns(), rs = 64 << 10;
	struct ring_rec r;
	obx_t *h;
	int i, rc;

	CU_ASSERT_FATAL(setup_ring("mistail", rs, 4096) == 0);
	atomic_store(&g_seg.hdr->tail, 64);      /* an abandoned claim */
	ring_cons_fini(&g_c);
	CU_ASSERT_FATAL(ring_cons_init(&g_c, &g_seg) == 0);
	atomic_store(&g_seg.hdr->tail, rs + 12); /* then garbage */
	for (i = 0; i < 20; i++) {
		now += 1000000000ull;
		rc = ring_next(&g_c, &r, now);
		if (rc == RING_RECORD)
			ring_release(&g_c, g_c.cursor);
		if (rc == RING_EMPTY)
			break;
	}
	ring_release(&g_c, g_c.cursor);
	CU_ASSERT_EQUAL(g_c.cursor & 7, 0);
	CU_ASSERT_EQUAL(g_c.head & 7, 0);
	/* and the ring works afterwards */
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	for (i = 0; i < 500; i++)
		while ((rc = emit_one(h, 13, (uint64_t)i, 200)) == -EAGAIN)
			rt_drain(&g_c, &g_er, &g_seen, 1);
	rt_drain(&g_c, &g_er, &g_seen, 1000);
	CU_ASSERT_EQUAL(g_seen.count[13], 500);
	obx_close(h);
	teardown_ring();
}

/* A producer preempted between its two reads of the window check while
 * the consumer catches up: the ring is nearly empty, no drop. */
static obx_t *g_h2;
static int g_hook_fired;

static void window_hook(int where)
{
	int i;

	if (where != OBX_FP_WINDOW || g_hook_fired)
		return;
	g_hook_fired = 1;
	/* what happens while this thread is off the CPU: others emit
	 * 100 KB and the consumer takes and releases all of it */
	for (i = 0; i < 100; i++)
		emit_one(g_h2, 9, (uint64_t)i, 1000);
	rt_drain(&g_c, &g_er, &g_seen, 100);
}

static void test_window_check_stale_read(void)
{
	struct obx_counters oc;
	obx_t *h;

	CU_ASSERT_FATAL(setup_ring("window", 1 << 20, 4096) == 0);
	h = obx_open(g_seg.name);
	g_h2 = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h && g_h2);
	g_hook_fired = 0;
	obx_fault_hook = window_hook;
	CU_ASSERT_EQUAL(emit_one(h, 10, 0, 200), 0);
	obx_fault_hook = NULL;
	CU_ASSERT(g_hook_fired);
	CU_ASSERT_EQUAL(obx_counters(h, &oc), 0);
	CU_ASSERT_EQUAL(oc.dropped_ring_full, 0);
	rt_drain(&g_c, &g_er, &g_seen, 100);
	CU_ASSERT_EQUAL(g_seen.count[9], 100);
	CU_ASSERT_EQUAL(g_seen.count[10], 1);
	obx_close(g_h2);
	obx_close(h);
	teardown_ring();
}

/* ---- hostile bytes ------------------------------------------------------ */

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void test_garbage(void)
{
	uint64_t seed = 0x9e3779b97f4a7c15ull, round, i, got;
	uint64_t rs = 64 << 10;
	obx_t *h;

	CU_ASSERT_FATAL(setup_ring("garbage", rs, 4096) == 0);
	for (round = 0; round < 200 / (SCALE > 1 ? 4 : 1); round++) {
		uint64_t *w = (uint64_t *)g_seg.ring;
		struct ring_rec r;
		uint64_t t0 = tu_now_ns();
		int rc;

		/* random words, some shaped like headers, plus a random tail
		 * and random slot words */
		for (i = 0; i < rs / 8; i++) {
			uint64_t x = xorshift(&seed);

			switch (x % 8) {
			case 0:
				w[i] = 0;
				break;
			case 1:
				w[i] = OBX_REC_WORD((x >> 8) & 0x3ff8,
						    (x >> 24) % 1100,
						    1 + (x >> 40) % 4);
				break;
			default:
				w[i] = xorshift(&seed);
			}
		}
		for (i = 0; i < 16; i++)
			memset(&g_seg.slots[xorshift(&seed) % 1024],
			       (int)(xorshift(&seed) & 0xff), 64);
		atomic_store(&g_seg.hdr->tail, g_c.cursor +
			     (round % 3 == 2 ? -(int64_t)(xorshift(&seed) %
			      rs) : (int64_t)(xorshift(&seed) % (2 * rs))));
		g_c.stall_timeout = 20000000ull;
		do {
			rc = ring_next(&g_c, &r, tu_now_ns());
			if (rc == RING_RECORD)
				rt_check_record(&g_er, &r, &g_seen);
			ring_release(&g_c, g_c.cursor);
			if (rc == RING_STALLED)
				usleep(500);
		} while (rc != RING_EMPTY && tu_now_ns() - t0 < 5000000000ull);
		if (rc != RING_EMPTY)
			printf("\n    round %llu: rc %d cursor %llu tail %llu "
			       "word %llx\n", (unsigned long long)round, rc,
			       (unsigned long long)g_c.cursor,
			       (unsigned long long)g_c.tail,
			       (unsigned long long)seg_rec(&g_seg,
					g_c.cursor)->word);
		CU_ASSERT_EQUAL_FATAL(rc, RING_EMPTY);
		ring_reap(&g_c);
	}
	CU_ASSERT(g_c.st.damaged > 0);
	CU_ASSERT(g_c.st.tail_repairs > 0);
	printf("\n    damaged words %llu, gaps %llu, tail repairs %llu, "
	       "garbage records %llu\n", (unsigned long long)g_c.st.damaged,
	       (unsigned long long)g_c.st.gaps,
	       (unsigned long long)g_c.st.tail_repairs,
	       (unsigned long long)g_seen.records);
	/* the ring still works for honest producers afterwards */
	memset(g_seg.slots, 0, 1024 * sizeof(struct obx_slot));
	memset(g_seg.ring, 0, rs);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	rt_seen_init(&g_seen);
	for (i = 0; i < 1000; i++) {
		while (emit_one(h, 7, i, 120) == -EAGAIN)
			rt_drain(&g_c, &g_er, &g_seen, 10);
	}
	got = rt_drain(&g_c, &g_er, &g_seen, 1000);
	(void)got;
	CU_ASSERT_EQUAL(g_seen.count[7], 1000);
	CU_ASSERT_EQUAL(g_seen.torn, 0);
	obx_close(h);
	teardown_ring();
}

/* ---- layout validation -------------------------------------------------- */

static void test_attach_mismatch(void)
{
	struct seg s, p;
	char why[256], name[64];
	struct obx_shm_hdr *hdr;
	int fd, created;
	struct seg_geom g = { 1 << 20, 4096, 64 };

	snprintf(name, sizeof(name), "obxtest-attach-%d", (int)getpid());
	seg_unlink(name);
	CU_ASSERT_EQUAL(seg_attach(&p, name, why, sizeof(why)), -ENOENT);
	CU_ASSERT(strstr(why, "no outbox broker") != NULL);
	CU_ASSERT_FATAL(seg_open_broker(&s, name, &g, 0600, &created, why,
					sizeof(why)) == 0);
	CU_ASSERT(created);
	/* a second broker refuses */
	{
		struct seg s2;
		int c2;

		CU_ASSERT_EQUAL(seg_open_broker(&s2, name, &g, 0600, &c2, why,
						sizeof(why)), -EBUSY);
		CU_ASSERT(strstr(why, "another broker") != NULL);
	}
	/* a good attach */
	CU_ASSERT_EQUAL(seg_attach(&p, name, why, sizeof(why)), 0);
	seg_detach(&p);
	/* wrong ABI version */
	hdr = s.hdr;
	hdr->abi_version = 99;
	CU_ASSERT_EQUAL(seg_attach(&p, name, why, sizeof(why)), -EPROTO);
	CU_ASSERT(strstr(why, "ABI version 99") != NULL);
	hdr->abi_version = OBX_ABI_VERSION;
	/* wrong geometry */
	hdr->ring_size = 1 << 21;
	CU_ASSERT_EQUAL(seg_attach(&p, name, why, sizeof(why)), -EPROTO);
	hdr->ring_size = 1 << 20;
	/* wrong size of the object */
	{
		char path[80];

		snprintf(path, sizeof(path), "/%s", name);
		fd = shm_open(path, O_RDWR, 0);
	}
	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(ftruncate(fd, 8192), 0);
	CU_ASSERT_EQUAL(seg_attach(&p, name, why, sizeof(why)), -EPROTO);
	CU_ASSERT(strstr(why, "layout mismatch") != NULL);
	/* bad magic */
	hdr->magic = 0x1234;
	CU_ASSERT_EQUAL(seg_attach(&p, name, why, sizeof(why)), -EPROTO);
	close(fd);
	/* the public API reports it too */
	errno = 0;
	CU_ASSERT(obx_open(name) == NULL);
	CU_ASSERT_EQUAL(errno, EPROTO);
	CU_ASSERT(strlen(obx_open_error()) > 0);
	seg_detach(&s);
	seg_unlink(name);
	errno = 0;
	CU_ASSERT(obx_open(name) == NULL);
	CU_ASSERT_EQUAL(errno, ENOENT);
}

/* ---- fork and threads --------------------------------------------------- */

static void test_fork_safety(void)
{
	obx_t *h;
	pid_t pid;
	int status;
	uint64_t i;

	CU_ASSERT_FATAL(setup_ring("fork", 1 << 20, 4096) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	for (i = 0; i < 100; i++)
		CU_ASSERT_EQUAL(emit_one(h, 20, i, 64), 0);
	pid = fork();
	if (pid == 0) {
		struct obx_counters oc;

		/* same handle, no re-open: the child gets its own slot */
		for (i = 0; i < 100; i++)
			if (emit_one(h, 21, i, 64) != 0)
				_exit(1);
		if (obx_counters(h, &oc) < 0 || oc.emitted != 100)
			_exit(2);
		obx_close(h);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	for (i = 100; i < 200; i++)
		CU_ASSERT_EQUAL(emit_one(h, 20, i, 64), 0);
	rt_drain(&g_c, &g_er, &g_seen, 1000);
	CU_ASSERT_EQUAL(g_seen.count[20], 200);
	CU_ASSERT_EQUAL(g_seen.count[21], 100);
	CU_ASSERT_EQUAL(g_seen.out_of_order, 0);
	CU_ASSERT(g_seen.slot_of[20] != g_seen.slot_of[21]);
	{
		struct obx_counters oc;

		CU_ASSERT_EQUAL(obx_counters(h, &oc), 0);
		CU_ASSERT_EQUAL(oc.emitted, 200);
	}
	obx_close(h);
	teardown_ring();
}

struct thr_arg {
	obx_t *h;
	uint32_t prod;
	uint64_t n;
};

static void *thr_main(void *p)
{
	struct thr_arg *a = p;
	uint64_t i;

	for (i = 0; i < a->n; i++)
		while (emit_one(a->h, a->prod, i, 40 + i % 100) == -EAGAIN)
			sched_yield();
	return NULL;
}

/* more threads than lanes: OBX_LANES of them get a lane, the others go
 * through the slot's shared counters; both paths in one run */
#define NTHR ((int)OBX_LANES + 2)

static void test_threads(void)
{
	obx_t *h;
	pthread_t th[NTHR];
	struct thr_arg a[NTHR];
	uint64_t n = 200000 / SCALE;
	struct obx_counters oc;
	int i, running = 1;

	CU_ASSERT_FATAL(setup_ring("thr", 1 << 20, 4096) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	CU_ASSERT_FATAL(rt_cons_on(&g_rt, h) == 0);
	for (i = 0; i < NTHR; i++) {
		a[i] = (struct thr_arg){ h, 30 + (uint32_t)i, n };
		pthread_create(&th[i], NULL, thr_main, &a[i]);
	}
	while (running) {
		uint64_t total = 0;

		rt_drain(&g_c, &g_er, &g_seen, 20);
		for (i = 0; i < NTHR; i++)
			total += g_seen.count[30 + i];
		running = total < NTHR * n;
		if (running)
			usleep(100);
	}
	for (i = 0; i < NTHR; i++) {
		pthread_join(th[i], NULL);
		CU_ASSERT_EQUAL(g_seen.count[30 + i], n);
	}
	CU_ASSERT_EQUAL(g_seen.out_of_order, 0);
	CU_ASSERT_EQUAL(g_seen.torn, 0);
	CU_ASSERT_EQUAL(obx_counters(h, &oc), 0);
	CU_ASSERT_EQUAL(oc.emitted - oc.dropped_ring_full, NTHR * n);
	obx_close(h);
	teardown_ring();
}

static int add_suites(void)
{
	CU_pSuite s = CU_add_suite("ring", NULL, NULL);

	if (!s)
		return -1;
	CU_add_test(s, "a misaligned tail read by the gap walk",
		    test_misaligned_tail_gap);
	CU_add_test(s, "a misaligned head from the segment",
		    test_misaligned_head);
	CU_add_test(s, "single process order and content", test_single_order);
	CU_add_test(s, "wrap-around at every record size", test_wrap_every_size);
	CU_add_test(s, "commits wake only past the fill mark", test_wake_mark);
	CU_add_test(s, "ring-full drops counted exactly", test_full_drops_exact);
	CU_add_test(s, "zero-copy reserve/commit/abort", test_zero_copy);
	CU_add_test(s, "4 processes x 1M records", test_multi_process_4);
	CU_add_test(s, "8 processes on a 64K ring",
		    test_multi_process_8_small_ring);
	CU_add_test(s, "SIGKILL at every emit step x1000",
		    test_sigkill_injection);
	CU_add_test(s, "stopped producer holding a BUSY claim",
		    test_stall_busy);
	CU_add_test(s, "stopped producer holding a claim without header",
		    test_stall_gap);
	CU_add_test(s, "stall_action = kill", test_stall_kill);
	CU_add_test(s, "tail pushed 2^62 ahead", test_hostile_tail);
	CU_add_test(s, "tail made misaligned", test_misaligned_tail);
	CU_add_test(s, "no replay past head + ring_size",
		    test_no_replay_past_window);
	CU_add_test(s, "window check with a stale tail read",
		    test_window_check_stale_read);
	CU_add_test(s, "positions across 2^64", test_positions_wrap);
	CU_add_test(s, "hostile garbage in the ring", test_garbage);
	CU_add_test(s, "attach validates the layout", test_attach_mismatch);
	CU_add_test(s, "fork safety", test_fork_safety);
	CU_add_test(s, "[mt] 6 threads on one handle (lanes + shared)",
		    test_threads);
	return 0;
}

TEST_MAIN(add_suites)
