/* test_producer.c - the producer library against hostile and unlucky
 * callers: lengths that overflow, a handle closed twice, a fork while
 * another thread holds the handle's lock, emits from signal handlers,
 * and producers the broker must never judge dead (main thread gone, own
 * PID namespace, broker out of file descriptors).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

#include "testutil.h"
#include "ringtest.h"
#include "slots.h"
#include "outbox.h"

static struct rt_ctx g_rt;

/* Runs fn in a child (a crash there fails the test instead of killing
 * the runner); fn returns the number of failed checks. */
static void in_child(int (*fn)(void))
{
	int status;
	pid_t pid = fork();

	if (pid == 0) {
		int fails = fn();

		_exit(fails > 99 ? 99 : fails);
	}
	CU_ASSERT_EQUAL_FATAL(waitpid(pid, &status, 0), pid);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	if (WIFSIGNALED(status))
		printf("\n    child died of signal %d\n", WTERMSIG(status));
	else if (WEXITSTATUS(status))
		printf("\n    %d checks failed\n", WEXITSTATUS(status));
}

/* ---- lengths ------------------------------------------------------------ */

/* A failed read() gives (size_t)-1: no length may wrap the room
 * computation, for any body kind, copied or zero-copy. */
static int huge_lengths_child(void)
{
	static const size_t lens[] = {
		(size_t)-1, (size_t)-2, (size_t)-5, (size_t)-9,
		(size_t)-17, (size_t)-300, SIZE_MAX / 2 + 1,
		(size_t)UINT32_MAX, (size_t)UINT32_MAX + 1,
		(size_t)UINT32_MAX + 100, (size_t)UINT32_MAX - 20,
	};
	static const int kinds[] = { OBX_BODY_JSON, OBX_BODY_BYTES,
				     OBX_BODY_MSGPACK };
	char small[16] = "{}";
	struct obx_counters oc;
	struct obx_rsv r;
	uint64_t expect = 0;
	size_t i, k;
	obx_t *h;

	int fails = 0;

	h = obx_open(g_rt.seg.name);
	if (!h)
		return 100;
	for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		for (k = 0; k < 3; k++) {
			/* the body pointer is valid for 16 bytes only: a
			 * wrapped room would make emit copy far past it */
			fails += obx_emit(h, 0, "t", small, lens[i],
					  kinds[k]) != -EMSGSIZE;
			expect++;
		}
		fails += obx_reserve(h, 0, "t", lens[i], &r) != -EMSGSIZE;
		expect++;
	}
	fails += obx_counters(h, &oc) != 0;
	fails += oc.dropped_too_large != expect;
	fails += oc.emitted != expect;
	/* nothing reached the ring */
	fails += atomic_load(&g_rt.seg.hdr->tail) != 0;
	/* and the handle still works */
	fails += obx_emit(h, 0, "t", small, 2, OBX_BODY_JSON) != 0;
	obx_close(h);
	return fails;
}

static void test_huge_lengths(void)
{
	CU_ASSERT_FATAL(rt_setup(&g_rt, "len", 64 << 10, 1024, 64) == 0);
	/* on the old code the copy runs off the body (SIGSEGV) */
	in_child(huge_lengths_child);
	rt_teardown(&g_rt);
}

/* A zero-length msgpack body is no msgpack object: refused, not sent as
 * an envelope the broker would have to drop. */
static int empty_msgpack_child(void)
{
	struct ring_rec rec;
	struct env_view v;
	int fails = 0;
	obx_t *h = obx_open(g_rt.seg.name);

	if (!h)
		return 100;
	fails += obx_emit(h, 0, "t", "", 0, OBX_BODY_MSGPACK) != -EINVAL;
	fails += obx_emit(h, 0, "t", NULL, 0, OBX_BODY_MSGPACK) != -EINVAL;
	/* empty bytes and a one-byte msgpack object are valid bodies */
	fails += obx_emit(h, 0, "t", "", 0, OBX_BODY_BYTES) != 0;
	fails += obx_emit(h, 0, "t", "\x80", 1, OBX_BODY_MSGPACK) != 0;
	/* exactly those two are in the ring, both valid envelopes */
	fails += ring_next(&g_rt.c, &rec, tu_now_ns()) != RING_RECORD;
	fails += env_parse(&g_rt.er, rec.payload, rec.len, &v) != 0;
	fails += ring_next(&g_rt.c, &rec, tu_now_ns()) != RING_RECORD;
	fails += env_parse(&g_rt.er, rec.payload, rec.len, &v) != 0;
	fails += ring_next(&g_rt.c, &rec, tu_now_ns()) != RING_EMPTY;
	if (fails)
		printf("\n    %d checks failed before the NULL body\n", fails);
	/* a NULL body with a length: refused, not copied from */
	fails += obx_emit(h, 0, "t", NULL, 5, OBX_BODY_BYTES) != -EINVAL;
	obx_close(h);
	return fails;
}

static void test_empty_msgpack_body(void)
{
	CU_ASSERT_FATAL(rt_setup(&g_rt, "mp0", 64 << 10, 1024, 64) == 0);
	in_child(empty_msgpack_child);
	rt_teardown(&g_rt);
}

/* ---- close ------------------------------------------------------------- */

static int close_twice_child(void)
{
	obx_t *h = obx_open(g_rt.seg.name), *h2;
	int fails = 0;

	if (!h)
		return 100;
	obx_close(h);
	obx_close(h);
	obx_close(NULL);
	/* a handle opened afterwards works */
	h2 = obx_open(g_rt.seg.name);
	fails += !h2 || rt_emit(h2, 1, 0, 64) != 0;
	obx_close(h2);
	return fails;
}

static void test_close_twice(void)
{
	CU_ASSERT_FATAL(rt_setup(&g_rt, "close2", 64 << 10, 1024, 64) == 0);
	/* on the old code the second close aborts (double free) */
	in_child(close_twice_child);
	rt_teardown(&g_rt);
}

/* ---- fork while another thread holds the handle's lock ------------------ */

static _Atomic int g_stop;

static void *sink_spinner(void *arg)
{
	obx_t *h = arg;
	char name[16];
	unsigned i = 0;

	/* obx_sink() takes the handle's mutex; names are resolved over
	 * and over (the first 60 get ids, later ones -ENOSPC) */
	while (!atomic_load(&g_stop)) {
		snprintf(name, sizeof(name), "s%u", i++ % 100);
		obx_sink(h, name);
	}
	return NULL;
}

static void test_fork_while_locked(void)
{
	const int forks = 200;
	pthread_t th[2];
	int i, hung = 0, bad = 0;
	obx_t *h;

	CU_ASSERT_FATAL(rt_setup(&g_rt, "forklock", 1 << 20, 1024, 64) == 0);
	h = obx_open(g_rt.seg.name);
	CU_ASSERT_FATAL(h != NULL);
	atomic_store(&g_stop, 0);
	pthread_create(&th[0], NULL, sink_spinner, h);
	pthread_create(&th[1], NULL, sink_spinner, h);
	for (i = 0; i < forks; i++) {
		uint64_t t0;
		int status = 0;
		pid_t pid = fork(), w = 0;

		if (pid == 0) {
			/* the child's first emit registers it (a new slot)
			 * and must not wait for a lock nobody will free */
			_exit(rt_emit(h, 50, (uint64_t)i, 64) == 0 ? 0 : 1);
		}
		t0 = tu_now_ns();
		while (tu_now_ns() - t0 < 1000000000ull &&
		       (w = waitpid(pid, &status, WNOHANG)) == 0)
			usleep(200);
		if (w != pid) {
			hung++;
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
		} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			bad++;
		}
		if (i % 16 == 0)
			rt_drain(&g_rt.c, &g_rt.er, &g_rt.seen, 1);
	}
	atomic_store(&g_stop, 1);
	pthread_join(th[0], NULL);
	pthread_join(th[1], NULL);
	rt_drain(&g_rt.c, &g_rt.er, &g_rt.seen, 1000);
	printf("\n    %d forks: %d hung, %d failed\n", forks, hung, bad);
	CU_ASSERT_EQUAL(hung, 0);
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT_EQUAL(g_rt.seen.torn, 0);
	obx_close(h);
	rt_teardown(&g_rt);
}

static int add_suites(void)
{
	CU_pSuite s = CU_add_suite("producer", NULL, NULL);

	if (!s)
		return -1;
	CU_add_test(s, "lengths that would wrap are refused",
		    test_huge_lengths);
	CU_add_test(s, "empty msgpack body refused", test_empty_msgpack_body);
	CU_add_test(s, "obx_close twice is harmless", test_close_twice);
	CU_add_test(s, "[mt] fork while another thread holds the lock",
		    test_fork_while_locked);
	return 0;
}

TEST_MAIN(add_suites)
