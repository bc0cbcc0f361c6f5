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

static struct rt_ctx g_rt;
#define g_seg  (g_rt.seg)
#define g_c    (g_rt.c)
#define g_er   (g_rt.er)
#define g_seen (g_rt.seen)

static int setup_ring(const char *tag, uint64_t ring, uint32_t maxrec)
{
	return rt_setup(&g_rt, tag, ring, maxrec, 1024);
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
		ring_cons_wait(&g_c, 1000000);
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
	int where_hits[5] = { 0 };
	volatile int *stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint64_t worst_ns = 0, kills = 0, expect_committed = 0;
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
			int where = 1 + rand() % 4;
			long cd = 1 + rand() % 20;

			countdowns[prod] = cd;
			where_hits[where]++;
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
	/* reap until every dead slot is folded */
	for (k = 0; k < 10; k++) {
		ring_reap(&g_c);
		rt_drain(&g_c, &g_er, &g_seen, 10);
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
	/* one recovered record per kill, counted once */
	CU_ASSERT_EQUAL(g_c.st.unblocked, kills);
	ring_totals(&g_c, &e, &f, &t, &l);
	CU_ASSERT_EQUAL(e, g_c.st.consumed + g_c.st.unblocked + f);
	/* the liveness bound is 100 ms; the margin covers a loaded 2-core
	 * machine, and sanitizer builds (SCALE > 1) measure correctness,
	 * not speed */
	CU_ASSERT(worst_ns < 1000000000ull * (SCALE > 1 ? 10 : 1));
	printf("\n    %llu kills (after add %d, after header %d, mid copy %d, "
	       "before commit %d); worst resume %.1f ms; gaps padded %llu\n",
	       (unsigned long long)kills, where_hits[1], where_hits[2],
	       where_hits[3], where_hits[4], (double)worst_ns / 1e6,
	       (unsigned long long)g_c.st.gaps);
	munmap((void *)stop, 4096);
	teardown_ring();
}

static void test_slow_live_producer_not_recovered(void)
{
	obx_t *h;
	struct obx_rsv r;
	struct ring_rec rec;
	uint64_t t0;
	int rc;

	CU_ASSERT_FATAL(setup_ring("slow", 64 << 10, 1024) == 0);
	h = obx_open(g_seg.name);
	CU_ASSERT_FATAL(h != NULL);
	CU_ASSERT_EQUAL_FATAL(obx_reserve(h, 0, "t", 100, &r), 0);
	/* the owner is alive: 200 ms of stall must not unblock it */
	t0 = tu_now_ns();
	while (tu_now_ns() - t0 < 200000000ull) {
		rc = ring_next(&g_c, &rec, tu_now_ns());
		CU_ASSERT_EQUAL(rc, RING_STALLED);
		usleep(1000);
	}
	msgpack_pack_str_with_body(&r.pk, "late but fine", 13);
	CU_ASSERT_EQUAL(obx_commit(h, &r), 0);
	CU_ASSERT_EQUAL(ring_next(&g_c, &rec, tu_now_ns()), RING_RECORD);
	CU_ASSERT_EQUAL(g_c.st.unblocked, 0);
	/* with a (test-sized) timeout the fallback fires, is counted, and
	 * the late commit learns it and counts a drop */
	g_c.stall_timeout = 50000000ull;
	CU_ASSERT_EQUAL_FATAL(obx_reserve(h, 0, "t", 100, &r), 0);
	t0 = tu_now_ns();
	do {
		rc = ring_next(&g_c, &rec, tu_now_ns());
		usleep(1000);
	} while (rc == RING_STALLED && tu_now_ns() - t0 < 2000000000ull);
	CU_ASSERT_EQUAL(rc, RING_EMPTY);
	CU_ASSERT_EQUAL(g_c.st.timeouts, 1);
	msgpack_pack_nil(&r.pk);
	CU_ASSERT_EQUAL(obx_commit(h, &r), -ETIMEDOUT);
	{
		struct obx_counters oc;

		obx_counters(h, &oc);
		CU_ASSERT_EQUAL(oc.dropped_late, 1);
	}
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
	CU_add_test(s, "single process order and content", test_single_order);
	CU_add_test(s, "wrap-around at every record size", test_wrap_every_size);
	CU_add_test(s, "ring-full drops counted exactly", test_full_drops_exact);
	CU_add_test(s, "zero-copy reserve/commit/abort", test_zero_copy);
	CU_add_test(s, "4 processes x 1M records", test_multi_process_4);
	CU_add_test(s, "8 processes on a 64K ring",
		    test_multi_process_8_small_ring);
	CU_add_test(s, "SIGKILL at every emit step x1000",
		    test_sigkill_injection);
	CU_add_test(s, "slow live producer is never recovered",
		    test_slow_live_producer_not_recovered);
	CU_add_test(s, "hostile garbage in the ring", test_garbage);
	CU_add_test(s, "attach validates the layout", test_attach_mismatch);
	CU_add_test(s, "fork safety", test_fork_safety);
	CU_add_test(s, "6 threads on one handle (lanes + shared)", test_threads);
	return 0;
}

TEST_MAIN(add_suites)
