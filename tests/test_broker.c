/* test_broker.c - outboxd end to end, with real processes: producers
 * forked from here write through liboutbox, a real broker (the built
 * binary) drains into a real io_uring spool and the file sink, and the
 * output file is read back event by event.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "testutil.h"
#include "brokertest.h"
#include "envelope.h"
#include "outbox.h"
#include "ring.h"
#include "segment.h"
#include "slots.h"

#if defined(__SANITIZE_ADDRESS__)
#define SCALE 20
#else
#define SCALE 1
#endif

static int make_body(char *buf, size_t cap, unsigned p, uint64_t s,
		     size_t size)
{
	int n = snprintf(buf, cap, "{\"p\":%u,\"s\":%llu,\"pad\":\"", p,
			 (unsigned long long)s);

	while ((size_t)n < size - 2)
		buf[n++] = 'x';
	buf[n++] = '"';
	buf[n++] = '}';
	buf[n] = 0;
	return n;
}

/* Emits n events (p, 0..n-1), retrying a full ring; *done counts the
 * committed ones as they go (shared memory, read by the parent). */
static void producer(const char *shm, unsigned p, uint64_t n,
		     uint64_t *done, uint64_t pace_ns)
{
	obx_t *h = bt_open(shm);
	char body[512];
	uint64_t s;

	if (!h)
		_exit(2);
	for (s = 0; s < n; s++) {
		int len = make_body(body, sizeof(body), p, s, 256), rc;

		while ((rc = obx_emit(h, 0, "test", body, (size_t)len,
				      OBX_BODY_JSON)) == -EAGAIN)
			usleep(200);
		if (rc != 0)
			_exit(3);
		__atomic_store_n(done, s + 1, __ATOMIC_RELEASE);
		if (pace_ns && s % 64 == 0)
			usleep((useconds_t)(pace_ns * 64 / 1000));
	}
	obx_close(h);
	_exit(0);
}

/* Polls the stats page until `want` events are delivered (or ms pass). */
static int wait_delivered(struct bt *t, uint64_t want, int ms,
			  struct obx_stats *g, struct obx_sink_page *sp)
{
	uint64_t d, q;
	int i;

	for (i = 0; i < ms; i += 50) {
		if (bt_stats(t, g, sp) == 0) {
			bt_sum_dropped(g, sp, &d, &q);
			if (d >= want && q == 0)
				return 0;
		}
		usleep(50000);
	}
	return -1;
}

static void test_end_to_end(void)
{
	const unsigned np = 4;
	const uint64_t n = getenv("OBX_E2E_N") ? strtoull(getenv("OBX_E2E_N"),
				NULL, 10) : 1000000 / SCALE;
	struct obx_sink_page *sp = malloc(sizeof(*sp));
	uint64_t *done = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
			      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint32_t *counts[BT_MAXP] = { 0 };
	struct obx_stats g;
	uint64_t bad, deliv, queued, dropped, missing = 0, dups = 0, s, t0;
	pid_t pids[8];
	struct bt t;
	unsigned p;
	int st;

	/* the spool is sized for the whole burst (4 x 1M x ~350 B): this
	 * test is about exactly-once delivery; the cap and its drop
	 * policies are test_spool's */
	CU_ASSERT_FATAL(bt_init(&t, "e2e", getenv("OBX_E2E_EXTRA") ?
				getenv("OBX_E2E_EXTRA") :
				"durability = write\nspool_max = 4G",
				NULL) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	t0 = tu_now_ns();
	for (p = 0; p < np; p++) {
		pids[p] = fork();
		if (pids[p] == 0)
			producer(t.shm, p, n, &done[p], 0);
	}
	for (p = 0; p < np; p++) {
		waitpid(pids[p], &st, 0);
		CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	CU_ASSERT_EQUAL(wait_delivered(&t, np * n, 120000, &g, sp), 0);
	dropped = bt_sum_dropped(&g, sp, &deliv, &queued);
	printf("\n    emitted %llu consumed %llu delivered %llu dropped %llu "
	       "queued %llu\n", (unsigned long long)g.emitted,
	       (unsigned long long)g.consumed, (unsigned long long)deliv,
	       (unsigned long long)dropped, (unsigned long long)queued);
	printf("\n    %u x %llu events delivered in %.1f s\n", np,
	       (unsigned long long)n, (double)(tu_now_ns() - t0) / 1e9);
	/* the identity at a quiet moment */
	dropped = bt_sum_dropped(&g, sp, &deliv, &queued);
	/* a producer that met a full ring retried: each refused attempt is
	 * an emit and a counted drop, nothing else is */
	CU_ASSERT_EQUAL(g.emitted, deliv + dropped + queued);
	CU_ASSERT_EQUAL(deliv, np * n);
	CU_ASSERT_EQUAL(dropped, g.dropped_ring_full);
	CU_ASSERT_EQUAL(queued, 0);
	CU_ASSERT_EQUAL(g.consumed, np * n);
	CU_ASSERT_EQUAL(bt_stop(&t, 20000), 0);
	for (p = 0; p < np; p++)
		counts[p] = calloc(n, sizeof(uint32_t));
	CU_ASSERT_EQUAL(bt_read_output(t.out, counts, n, &bad),
			(int)(np * n));
	CU_ASSERT_EQUAL(bad, 0);
	for (p = 0; p < np; p++)
		for (s = 0; s < n; s++) {
			missing += counts[p][s] == 0;
			dups += counts[p][s] > 1 ? counts[p][s] - 1 : 0;
		}
	CU_ASSERT_EQUAL(missing, 0);
	CU_ASSERT_EQUAL(dups, 0);
	for (p = 0; p < np; p++)
		free(counts[p]);
	free(sp);
	munmap(done, 4096);
	bt_cleanup(&t);
}

/* Quiet: nothing queued, the ring empty, and the delivered counter
 * unchanged for half a second. (After a kill -9 the counters resume from
 * the last published page, up to 100 ms old, so they are not the test of
 * completeness here: the output file is.) */
static int wait_quiet(struct bt *t, int ms, struct obx_stats *g,
		      struct obx_sink_page *sp)
{
	uint64_t d, q, last = UINT64_MAX;
	int i, stable = 0;

	for (i = 0; i < ms; i += 100) {
		int empty = bt_ring_empty(t);

		if (bt_stats(t, g, sp) == 0) {
			bt_sum_dropped(g, sp, &d, &q);
			stable = (empty && q == 0 && d == last) ? stable + 1 : 0;
			if (stable >= 5)
				return 0;
			last = d;
		}
		usleep(100000);
	}
	return -1;
}

static void test_crash_restart(void)
{
	const unsigned np = 4;
	const uint64_t n = 400000 / SCALE;
	const int rounds = 20;
	struct obx_sink_page *sp = malloc(sizeof(*sp));
	uint64_t *done = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
			      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint32_t *counts[BT_MAXP] = { 0 };
	uint64_t bad, missing = 0, dups = 0, s, total = 0;
	struct obx_stats g;
	pid_t pids[8];
	struct bt t;
	unsigned p;
	int r, st;

	srand(777);
	CU_ASSERT_FATAL(bt_init(&t, "crash", "durability = write", NULL) ==
			0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	for (p = 0; p < np; p++) {
		pids[p] = fork();
		if (pids[p] == 0)  /* ~20k events/s each: they outlive us */
			producer(t.shm, p, n, &done[p], 50000);
	}
	for (r = 0; r < rounds; r++) {
		usleep(50000 + (useconds_t)(rand() % 250000));
		bt_kill9(&t);
		usleep((useconds_t)(rand() % 50000));
		CU_ASSERT_FATAL(bt_start(&t) == 0);
	}
	for (p = 0; p < np; p++) {
		waitpid(pids[p], &st, 0);
		CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		total += done[p];
	}
	CU_ASSERT_EQUAL(total, np * n);
	CU_ASSERT_EQUAL(wait_quiet(&t, 120000, &g, sp), 0);
	CU_ASSERT_EQUAL(bt_stop(&t, 20000), 0);
	for (p = 0; p < np; p++)
		counts[p] = calloc(n, sizeof(uint32_t));
	bt_read_output(t.out, counts, n, &bad);
	CU_ASSERT_EQUAL(bad, 0);
	for (p = 0; p < np; p++)
		for (s = 0; s < done[p]; s++) {
			missing += counts[p][s] == 0;
			dups += counts[p][s] > 1 ? counts[p][s] - 1 : 0;
		}
	/* every committed event is there; duplicates only from what was
	 * not checkpointed when the broker died */
	CU_ASSERT_EQUAL(missing, 0);
	printf("\n    %d kill -9 / restart rounds: %llu events emitted, "
	       "%llu delivered, %llu duplicates, %llu lost\n", rounds,
	       (unsigned long long)total,
	       (unsigned long long)(total - missing),
	       (unsigned long long)dups, (unsigned long long)missing);
	for (p = 0; p < np; p++)
		free(counts[p]);
	free(sp);
	munmap(done, 4096);
	bt_cleanup(&t);
}

static int run_cmd(const char *cmd, char *out, size_t cap)
{
	FILE *f = popen(cmd, "r");
	size_t n;

	if (!f)
		return -1;
	n = fread(out, 1, cap - 1, f);
	out[n] = 0;
	return WEXITSTATUS(pclose(f));
}

static void test_second_broker_and_check(void)
{
	char cmd[1024], out[8192];
	struct bt t;
	FILE *f;

	CU_ASSERT_FATAL(bt_init(&t, "twice", NULL, NULL) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	snprintf(cmd, sizeof(cmd), "%s -c %s 2>&1", bt_bin("outboxd"),
		 t.conf);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 1);
	CU_ASSERT(strstr(out, "another broker") != NULL);
	/* --check: FILE:LINE: why */
	snprintf(cmd, sizeof(cmd), "%s/bad.ini", t.dir);
	f = fopen(cmd, "w");
	fprintf(f, "[broker]\nring_size = 3M\nbogus = 1\n");
	fclose(f);
	snprintf(cmd, sizeof(cmd), "%s --check -c %s/bad.ini 2>&1",
		 bt_bin("outboxd"), t.dir);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 1);
	CU_ASSERT(strstr(out, "bad.ini:2:") != NULL);
	CU_ASSERT(strstr(out, "bad.ini:3:") != NULL);
	snprintf(cmd, sizeof(cmd), "%s --check -c %s 2>&1",
		 bt_bin("outboxd"), t.conf);
	CU_ASSERT_EQUAL(run_cmd(cmd, out, sizeof(out)), 0);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

static int log_has(struct bt *t, const char *what)
{
	char cmd[600], out[16];

	snprintf(cmd, sizeof(cmd), "grep -c -- '%s' '%s'", what, t->log);
	return run_cmd(cmd, out, sizeof(out)) == 0;
}

static int wait_log(struct bt *t, const char *what, int ms)
{
	int i;

	for (i = 0; i < ms; i += 20) {
		if (log_has(t, what))
			return 1;
		usleep(20000);
	}
	return 0;
}

static void sed_conf(struct bt *t, const char *expr)
{
	char cmd[700];

	snprintf(cmd, sizeof(cmd), "sed -i '%s' '%s'", expr, t->conf);
	CU_ASSERT_EQUAL(system(cmd), 0);
}

static void test_reload(void)
{
	struct obx_sink_page *sp = malloc(sizeof(*sp));
	struct obx_stats g;
	struct bt t;
	FILE *f;

	CU_ASSERT_FATAL(bt_init(&t, "reload", NULL, NULL) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	/* a broken file: refused, the broker keeps running */
	f = fopen(t.conf, "a");
	fprintf(f, "[sink x]\ntype = nope\n");
	fclose(f);
	kill(t.pid, SIGHUP);
	CU_ASSERT(wait_log(&t, "refused (1 error", 3000));
	CU_ASSERT_EQUAL(kill(t.pid, 0), 0);
	sed_conf(&t, "/^\\[sink x\\]/,$d");
	/* a change that needs a restart: refused */
	sed_conf(&t, "s/ring_size = 16M/ring_size = 32M/");
	kill(t.pid, SIGHUP);
	CU_ASSERT(wait_log(&t, "needs a restart", 3000));
	CU_ASSERT_EQUAL(kill(t.pid, 0), 0);
	/* a good change: a new sink appears on the sink page */
	sed_conf(&t, "s/ring_size = 32M/ring_size = 16M/");
	f = fopen(t.conf, "a");
	fprintf(f, "[sink bench]\ntype = discard\n");
	fclose(f);
	kill(t.pid, SIGHUP);
	CU_ASSERT(wait_log(&t, "reloaded", 3000));
	usleep(300000);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, sp), 0);
	CU_ASSERT_EQUAL(sp->nsinks, 2);
	CU_ASSERT(strcmp(sp->sink[0].name, "bench") == 0 ||
		  strcmp(sp->sink[1].name, "bench") == 0);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	free(sp);
	bt_cleanup(&t);
}

/* Writes a raw record through the ring API: any sink name, any body. */
static int raw_record(struct seg *s, struct obx_slot *slot, uint16_t sidx,
		      const char *sink, const void *bytes, size_t n,
		      int as_envelope)
{
	struct ring_claim c;
	struct env_buf b;
	msgpack_packer pk;
	uint8_t id[ENV_ID_LEN] = { 1 };
	int rc = ring_reserve(s, slot, NULL, sidx, (uint32_t)(n + 128), &c);

	if (rc < 0)
		return rc;
	b = (struct env_buf){ c.payload, 0, c.size - OBX_REC_HDR, 0 };
	if (as_envelope) {
		msgpack_packer_init(&pk, &b, env_buf_write);
		env_pack_head(&pk, sink, strlen(sink), "raw", 3, 1, id);
		env_buf_write(&b, bytes, n);  /* a packed msgpack object */
	} else {
		env_buf_write(&b, bytes, n);
	}
	return ring_commit(s, slot, &c, (uint32_t)b.len);
}

static void test_routing_and_formats(void)
{
	struct obx_sink_page *sp = malloc(sizeof(*sp));
	struct obx_stats g;
	struct seg s;
	struct bt t;
	char why[256], line[4096];
	msgpack_sbuffer sb;
	msgpack_packer pk;
	int idx, found_map = 0, found_unknown = 0, found_pretty = 0;
	FILE *f;
	obx_t *h;

	CU_ASSERT_FATAL(bt_init(&t, "route", NULL, NULL) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	CU_ASSERT_FATAL(seg_attach(&s, t.shm, why, sizeof(why)) == 0);
	idx = slot_claim(&s, s.fd, getpid(), 0);
	CU_ASSERT_FATAL(idx >= 0);
	/* a msgpack map body for a sink nobody configured */
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	msgpack_pack_str_with_body(&pk, "k", 1);
	msgpack_pack_str_with_body(&pk, "v\"q\\", 4);
	msgpack_pack_str_with_body(&pk, "n", 1);
	msgpack_pack_array(&pk, 2);
	msgpack_pack_int(&pk, -3);
	msgpack_pack_double(&pk, 1.5);
	CU_ASSERT_EQUAL(raw_record(&s, &s.slots[idx], (uint16_t)idx,
				   "nosuch", sb.data, sb.size, 1), 0);
	/* garbage that is not an envelope */
	CU_ASSERT_EQUAL(raw_record(&s, &s.slots[idx], (uint16_t)idx, "",
				   "\xc1\xc1garbage", 9, 0), 0);
	/* a pretty-printed JSON body: still one line in the output */
	h = obx_open(t.shm);
	CU_ASSERT_FATAL(h != NULL);
	CU_ASSERT_EQUAL(obx_emit(h, 0, "t", "{\n  \"pretty\": 1\r\n}", 18,
				 OBX_BODY_JSON), 0);
	CU_ASSERT_EQUAL(obx_emit(h, 0, "t", "{\"ok\":true}", 11,
				 OBX_BODY_JSON), 0);
	/* the C API refuses names the broker does not publish */
	CU_ASSERT_EQUAL(obx_sink(h, "nosuch"), -ENOENT);
	usleep(600000);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, sp), 0);
	CU_ASSERT_EQUAL(g.unknown_sink, 1);
	CU_ASSERT_EQUAL(g.dropped_invalid, 1);
	CU_ASSERT_EQUAL(sp->sink[0].c.dropped_invalid, 0);
	CU_ASSERT_EQUAL(sp->sink[0].c.delivered_events, 3);
	CU_ASSERT_EQUAL(sp->sink[0].c.unknown_routed, 1);
	f = fopen(t.out, "r");
	CU_ASSERT_FATAL(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		if (strstr(line, "\"body\":{\"k\":\"v\\\"q\\\\\",\"n\":[-3,1.5]}"))
			found_map = 1;
		if (strstr(line, "\"sink\":\"nosuch\""))
			found_unknown = 1;
		if (strstr(line, "\"body\":{   \"pretty\": 1  }}\n"))
			found_pretty = 1;
	}
	fclose(f);
	CU_ASSERT(found_map);
	CU_ASSERT(found_unknown);
	CU_ASSERT(found_pretty);
	slot_release(&s.slots[idx]);
	obx_close(h);
	seg_detach(&s);
	msgpack_sbuffer_destroy(&sb);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	free(sp);
	bt_cleanup(&t);
}

static int add_suites(void)
{
	CU_pSuite s = CU_add_suite("broker", NULL, NULL);

	if (!s)
		return -1;
	CU_add_test(s, "second broker refuses; --check errors",
		    test_second_broker_and_check);
	CU_add_test(s, "routing, msgpack bodies, invalid records",
		    test_routing_and_formats);
	CU_add_test(s, "SIGHUP reload: refused, restart-only, applied",
		    test_reload);
	CU_add_test(s, "4 producers x 1M events -> file, exactly once",
		    test_end_to_end);
	CU_add_test(s, "kill -9 the broker 20 times under load",
		    test_crash_restart);
	return 0;
}

TEST_MAIN(add_suites)
