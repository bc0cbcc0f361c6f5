/* test_segment.c - the shm object as hostile input to the broker: an
 * object someone else made (never adopted), a damaged header at start
 * (moved aside, a fresh one made), an object truncated under a running
 * broker (survived, repaired); and outboxd itself under attack, and with
 * a producer stopped while it holds a claim.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "testutil.h"
#include "brokertest.h"
#include "ringtest.h"
#include "outbox.h"

static const struct seg_geom g_geom = { 1 << 20, 4096, 64 };

/* Files in /dev/shm whose name starts with `prefix.` (moved aside). */
static int aside_count(const char *name, int unlink_them)
{
	char prefix[96], path[400];
	struct dirent *d;
	DIR *dir = opendir("/dev/shm");
	int n = 0;

	if (!dir)
		return -1;
	snprintf(prefix, sizeof(prefix), "%s.", name);
	while ((d = readdir(dir)))
		if (strncmp(d->d_name, prefix, strlen(prefix)) == 0) {
			n++;
			if (unlink_them) {
				snprintf(path, sizeof(path), "/dev/shm/%s",
					 d->d_name);
				unlink(path);
			}
		}
	closedir(dir);
	return n;
}

static ino_t shm_ino(const char *name)
{
	char path[128];
	struct stat st;

	snprintf(path, sizeof(path), "/dev/shm/%s", name);
	return stat(path, &st) == 0 ? st.st_ino : 0;
}

/* A broker finds an object it did not make: never adopted. */
static void test_foreign_object(void)
{
	char name[64], why[512];
	struct stat st;
	struct seg s;
	ino_t old;
	int created;

	snprintf(name, sizeof(name), "%s", tu_shm_name("foreign"));
	seg_unlink(name);
	aside_count(name, 1);
	/* made by someone else with a wider mode (0666 on a 0600 broker):
	 * a valid layout, so the old code re-attached it silently */
	CU_ASSERT_FATAL(seg_open_broker(&s, name, &g_geom, 0666, &created,
					why, sizeof(why)) == 0);
	seg_detach(&s);
	old = shm_ino(name);
	CU_ASSERT_FATAL(old != 0);
	CU_ASSERT_EQUAL(seg_open_broker(&s, name, &g_geom, 0600, &created,
					why, sizeof(why)), 0);
	printf("\n    wider mode: created %d (%s)\n", created, why);
	CU_ASSERT(created != 0);
	CU_ASSERT(shm_ino(name) != old);
	CU_ASSERT(fstat(s.fd, &st) == 0 && (st.st_mode & 0777) == 0600);
	CU_ASSERT_EQUAL(aside_count(name, 0), 1);
	CU_ASSERT(strstr(why, "mode 0666") != NULL);
	seg_detach(&s);
	seg_unlink(name);
	aside_count(name, 1);

	/* owned by another user (needs root to make one) */
	if (geteuid() == 0) {
		CU_ASSERT_FATAL(seg_open_broker(&s, name, &g_geom, 0600,
						&created, why,
						sizeof(why)) == 0);
		CU_ASSERT(fchown(s.fd, 65534, 65534) == 0);
		seg_detach(&s);
		old = shm_ino(name);
		CU_ASSERT_EQUAL(seg_open_broker(&s, name, &g_geom, 0600,
						&created, why, sizeof(why)), 0);
		printf("    other owner: created %d (%s)\n", created, why);
		CU_ASSERT(created != 0);
		CU_ASSERT(shm_ino(name) != old);
		CU_ASSERT(fstat(s.fd, &st) == 0 && st.st_uid == geteuid());
		CU_ASSERT(strstr(why, "owned by uid 65534") != NULL);
		seg_detach(&s);
		seg_unlink(name);
		aside_count(name, 1);
	} else {
		printf("    (not root: the other-owner case needs chown)\n");
	}

	/* a symlink in its place is never followed */
	{
		char path[128], target[128];
		int fd;

		snprintf(path, sizeof(path), "/dev/shm/%s", name);
		snprintf(target, sizeof(target), "/dev/shm/%s.target", name);
		fd = open(target, O_CREAT | O_RDWR, 0600);
		CU_ASSERT_FATAL(fd >= 0);
		close(fd);
		CU_ASSERT_FATAL(symlink(target, path) == 0);
		CU_ASSERT(seg_open_broker(&s, name, &g_geom, 0600, &created,
					  why, sizeof(why)) < 0);
		{
			struct stat lt;

			/* the target was not sized or written */
			CU_ASSERT(stat(target, &lt) == 0 && lt.st_size == 0);
		}
		unlink(path);
		unlink(target);
		aside_count(name, 1);
	}
}

/* A damaged header at start: moved aside, counted, a fresh one made;
 * the broker neither dies nor refuses to start. */
static void damage_and_restart(const char *what, void (*damage)(struct seg *,
								 const char *))
{
	char name[64], why[512];
	struct seg s;
	int created;

	snprintf(name, sizeof(name), "%s", tu_shm_name("damaged"));
	seg_unlink(name);
	aside_count(name, 1);
	CU_ASSERT_FATAL(seg_open_broker(&s, name, &g_geom, 0600, &created,
					why, sizeof(why)) == 0);
	damage(&s, name);
	seg_detach(&s);
	CU_ASSERT_EQUAL(seg_open_broker(&s, name, &g_geom, 0600, &created,
					why, sizeof(why)), 0);
	printf("\n    %s: created %d (%s)", what, created, why);
	CU_ASSERT(created != 0);
	CU_ASSERT_EQUAL(aside_count(name, 0), 1);
	if (s.base) {
		obx_t *h;

		/* and it works */
		h = obx_open(name);
		CU_ASSERT(h != NULL);
		if (h)
			CU_ASSERT_EQUAL(obx_emit(h, 0, "t", "{}", 2,
						 OBX_BODY_JSON), 0);
		obx_close(h);
		seg_detach(&s);
	}
	seg_unlink(name);
	aside_count(name, 1);
}

static void dmg_abi(struct seg *s, const char *name)
{
	(void)name;
	s->hdr->abi_version = 99;
}

static void dmg_magic(struct seg *s, const char *name)
{
	(void)name;
	memcpy(&s->hdr->magic, "GARBAGE!", 8);
}

static void dmg_geometry(struct seg *s, const char *name)
{
	(void)name;
	s->hdr->ring_off += 4096;
}

static void dmg_truncate(struct seg *s, const char *name)
{
	(void)name;
	CU_ASSERT(ftruncate(s->fd, 4096) == 0);
}

static void test_damaged_header_at_start(void)
{
	damage_and_restart("ABI version 99", dmg_abi);
	damage_and_restart("bad magic", dmg_magic);
	damage_and_restart("bad offsets", dmg_geometry);
	damage_and_restart("truncated to 4096", dmg_truncate);
	printf("\n");
}

/* Truncated under a running broker: its next look at the ring must not
 * kill it; the object is repaired and producers work again. */
static int truncated_child(void)
{
	struct rt_ctx x;
	struct ring_rec r;
	char path[96];
	uint64_t i;
	int fails = 0, fd, rc;
	obx_t *h;

	if (rt_setup(&x, "trunc", 1 << 20, 4096, 64) < 0)
		return 100;
	seg_guard(&x.seg);
	h = obx_open(x.seg.name);
	if (!h)
		return 101;
	for (i = 0; i < 100; i++)
		fails += rt_emit(h, 3, i, 200) != 0;
	for (i = 0; i < 50; i++)
		fails += ring_next(&x.c, &r, tu_now_ns()) != RING_RECORD;
	/* a group member truncates the object */
	snprintf(path, sizeof(path), "/%s", x.seg.name);
	fd = shm_open(path, O_RDWR, 0);
	fails += fd < 0 || ftruncate(fd, 4096) != 0;
	close(fd);
	/* the broker goes on: drain, release, reap, publish */
	for (i = 0; i < 100; i++) {
		rc = ring_next(&x.c, &r, tu_now_ns());
		ring_release(&x.c, x.c.cursor);
		if (rc == RING_EMPTY)
			break;
	}
	ring_reap(&x.c);
	/* its housekeeping notices and repairs */
	fails += seg_check(&x.seg, NULL, 0) <= 0;
	ring_cons_repair(&x.c);
	{
		struct stat st;
		char p2[128];

		snprintf(p2, sizeof(p2), "/dev/shm/%s", x.seg.name);
		fails += stat(p2, &st) != 0 ||
			 (uint64_t)st.st_size != x.seg.hdr->total_size;
	}
	/* producers work again */
	rt_seen_init(&x.seen);
	for (i = 0; i < 1000; i++) {
		while ((rc = rt_emit(h, 4, i, 200)) == -EAGAIN)
			rt_drain(&x.c, &x.er, &x.seen, 1);
		fails += rc != 0;
	}
	rt_drain(&x.c, &x.er, &x.seen, 1000);
	fails += x.seen.count[4] != 1000;
	fails += x.seen.torn != 0;
	printf("\n    after the repair: %llu of 1000 delivered\n",
	       (unsigned long long)x.seen.count[4]);
	obx_close(h);
	rt_teardown(&x);
	return fails;
}

static void test_truncated_while_running(void)
{
	int status;
	pid_t pid = fork();

	if (pid == 0) {
		int fails = truncated_child();

		_exit(fails > 99 ? 99 : fails);
	}
	CU_ASSERT_EQUAL_FATAL(waitpid(pid, &status, 0), pid);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	if (WIFSIGNALED(status))
		printf("\n    broker side died of signal %d\n",
		       WTERMSIG(status));
	else if (WEXITSTATUS(status))
		printf("\n    %d checks failed\n", WEXITSTATUS(status));
}

/* ---- the real broker under attack ---------------------------------------- */

/* Emits n JSON events {"p":p,"s":i} (retrying a full ring for up to 5 s);
 * the number taken. */
static uint64_t bt_emit_n(obx_t *h, int p, uint64_t from, uint64_t n)
{
	uint64_t i, t0;
	char body[64];

	for (i = from; i < from + n; i++) {
		int len = snprintf(body, sizeof(body), "{\"p\":%d,\"s\":%llu}",
				   p, (unsigned long long)i), rc;

		t0 = tu_now_ns();
		while ((rc = obx_emit(h, 0, "t", body, (size_t)len,
				      OBX_BODY_JSON)) == -EAGAIN &&
		       tu_now_ns() - t0 < 5000000000ull)
			usleep(1000);
		if (rc != 0)
			break;
	}
	return i - from;
}

/* Waits until the output holds `want` events of producer p (10 s). */
static uint64_t bt_wait_out(struct bt *t, int p, uint64_t want)
{
	static uint32_t c0[200000], c1[4];
	uint32_t *counts[BT_MAXP] = { c0, c1 };
	uint64_t got = 0, bad, i, t0 = tu_now_ns();

	while (tu_now_ns() - t0 < 10000000000ull) {
		memset(c0, 0, sizeof(c0));
		bt_read_output(t->out, counts, 200000, &bad);
		for (got = 0, i = 0; i < 200000; i++)
			got += c0[i] != 0;
		if (got >= want)
			break;
		usleep(50000);
	}
	(void)p;
	return got;
}

static uint64_t bt_beat(struct bt *t)
{
	struct seg s;
	char why[256];
	uint64_t beat = 0;

	if (seg_attach(&s, t->shm, why, sizeof(why)) == 0) {
		beat = atomic_load(&s.cons->broker_beat_ns);
		seg_detach(&s);
	}
	return beat;
}

/* tail pushed 2^62 ahead, the header overwritten, the object truncated,
 * all under a running outboxd: it stays up (heartbeat), repairs, counts,
 * logs, delivers what producers emit afterwards, and stops on SIGTERM in
 * time. */
static void test_broker_under_attack(void)
{
	struct obx_sink_page *sp = malloc(sizeof(*sp));
	struct obx_stats g;
	struct bt t;
	char path[96], *log;
	uint64_t beat, took, t0, sent = 0;
	size_t loglen;
	struct seg s;
	char why[256];
	int fd;
	obx_t *h;

	CU_ASSERT_FATAL(bt_init(&t, "attack", NULL, NULL) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	h = bt_open(t.shm);
	CU_ASSERT_FATAL(h != NULL);
	sent += bt_emit_n(h, 0, sent, 1000);
	CU_ASSERT_EQUAL(bt_wait_out(&t, 0, sent), sent);

	/* 1: a hostile tail */
	CU_ASSERT_FATAL(seg_attach(&s, t.shm, why, sizeof(why)) == 0);
	atomic_fetch_add(&s.hdr->tail, 1ull << 62);
	/* 2: bytes written into the header */
	s.hdr->abi_version = 99;
	seg_detach(&s);
	beat = bt_beat(&t);
	usleep(2500000);
	CU_ASSERT(bt_beat(&t) > beat);             /* still beating */
	took = bt_emit_n(h, 0, sent, 1000);
	CU_ASSERT_EQUAL(took, 1000);
	sent += took;
	CU_ASSERT_EQUAL(bt_wait_out(&t, 0, sent), sent);

	/* 3: truncated by someone with write access */
	snprintf(path, sizeof(path), "/%s", t.shm);
	fd = shm_open(path, O_RDWR, 0);
	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT(ftruncate(fd, 4096) == 0);
	close(fd);
	usleep(500000);
	CU_ASSERT_EQUAL(kill(t.pid, 0), 0);        /* alive */
	obx_close(h);                               /* its pages were cut */
	h = bt_open(t.shm);
	CU_ASSERT_FATAL(h != NULL);
	took = bt_emit_n(h, 0, sent, 1000);
	CU_ASSERT_EQUAL(took, 1000);
	sent += took;
	CU_ASSERT_EQUAL(bt_wait_out(&t, 0, sent), sent);
	usleep(300000);
	CU_ASSERT_EQUAL(bt_stats(&t, &g, sp), 0);
	printf("\n    tail_repairs %llu, segment_repairs %llu, delivered %llu "
	       "of %llu\n", (unsigned long long)g.tail_repairs,
	       (unsigned long long)g.segment_repairs,
	       (unsigned long long)sp->sink[0].c.delivered_events,
	       (unsigned long long)sent);
	CU_ASSERT(g.tail_repairs >= 1);
	CU_ASSERT(g.segment_repairs >= 2);        /* header, then size */
	obx_close(h);
	t0 = tu_now_ns();
	CU_ASSERT_EQUAL(bt_stop(&t, 3000), 0);
	CU_ASSERT(tu_now_ns() - t0 < 2000000000ull);
	log = tu_read_file(t.log, &loglen);
	CU_ASSERT(log && strstr(log, "header rewritten"));
	CU_ASSERT(log && strstr(log, "resized back"));
	free(log);
	free(sp);
	bt_cleanup(&t);
}

/* A producer stopped (SIGSTOP) between obx_reserve and obx_commit under
 * a running outboxd with stall_timeout = 300ms: the events of others are
 * delivered meanwhile, the stall is logged once with its pid and counted,
 * and its own event arrives when it resumes. With restart, the broker is
 * killed (SIGKILL) and started again while the claim is pinned: the new
 * one must not pass over it (the drain journal stops at the pin). */
static void run_broker_stalled_producer(int restart)
{
	static uint32_t c0[4000], c1[4];
	uint32_t *counts[BT_MAXP] = { c0, c1 };
	struct obx_sink_page *sp = malloc(sizeof(*sp));
	struct obx_stats g;
	char want[96], *log;
	uint64_t bad, got, i, sent, t0;
	size_t loglen;
	int status;
	struct bt t;
	pid_t kid;
	obx_t *h;

	CU_ASSERT_FATAL(bt_init(&t, "stall", "stall_timeout = 300ms\n",
				NULL) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	kid = fork();
	if (kid == 0) {
		struct obx_rsv r;
		obx_t *k = bt_open(t.shm);

		if (!k || obx_reserve(k, 0, "t", 64, &r) < 0)
			_exit(2);
		msgpack_pack_map(&r.pk, 2);
		msgpack_pack_str_with_body(&r.pk, "p", 1);
		msgpack_pack_int(&r.pk, 1);
		msgpack_pack_str_with_body(&r.pk, "s", 1);
		msgpack_pack_int(&r.pk, 0);
		raise(SIGSTOP);
		_exit(obx_commit(k, &r) == 0 ? 0 : 3);
	}
	CU_ASSERT_FATAL(waitpid(kid, &status, WUNTRACED) == kid &&
			WIFSTOPPED(status));
	h = bt_open(t.shm);
	CU_ASSERT_FATAL(h != NULL);
	sent = bt_emit_n(h, 0, 0, 2000);
	CU_ASSERT_EQUAL(sent, 2000);
	/* behind the stopped claim, delivered while it is stopped */
	CU_ASSERT_EQUAL(bt_wait_out(&t, 0, sent), sent);
	usleep(800000);                       /* past stall_timeout */
	CU_ASSERT_EQUAL(bt_stats(&t, &g, sp), 0);
	CU_ASSERT_EQUAL(g.ring_stalls, 1);
	CU_ASSERT(g.ring_skips >= 1);
	if (restart) {
		bt_kill9(&t);
		CU_ASSERT_FATAL(bt_start(&t) == 0);
		usleep(300000);
	}
	kill(kid, SIGCONT);
	CU_ASSERT_EQUAL(waitpid(kid, &status, 0), kid);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	t0 = tu_now_ns();
	do {
		memset(c0, 0, sizeof(c0));
		memset(c1, 0, sizeof(c1));
		bt_read_output(t.out, counts, 4000, &bad);
		got = c1[0];
		if (!got)
			usleep(50000);
	} while (!got && tu_now_ns() - t0 < 5000000000ull);
	CU_ASSERT_EQUAL(got, 1);
	for (i = 0, got = 0; i < 4000; i++)
		got += restart ? c0[i] != 0 : c0[i];
	/* each once; after the restart at least once (what lay behind the
	 * pinned claim is read again) */
	CU_ASSERT_EQUAL(got, sent);
	if (got != sent)
		printf("\n    %llu lines for %llu events\n",
		       (unsigned long long)got, (unsigned long long)sent);
	obx_close(h);
	CU_ASSERT_EQUAL(bt_stop(&t, 5000), 0);
	if (restart) {
		free(sp);
		bt_cleanup(&t);
		return;
	}
	log = tu_read_file(t.log, &loglen);
	snprintf(want, sizeof(want), "producer pid %d (slot", (int)kid);
	CU_ASSERT(log && strstr(log, want) && strstr(log, "held a claim"));
	printf("\n    stalls %llu, claims gone past %llu; log: %s\n",
	       (unsigned long long)g.ring_stalls,
	       (unsigned long long)g.ring_skips,
	       log && strstr(log, want) ? "pid named" : "pid missing");
	free(log);
	free(sp);
	bt_cleanup(&t);
}

static void test_broker_stalled_producer(void)
{
	run_broker_stalled_producer(0);
}

static void test_broker_restart_pinned(void)
{
	run_broker_stalled_producer(1);
}

static int add_suites(void)
{
	CU_pSuite s = CU_add_suite("segment", NULL, NULL);

	if (!s)
		return -1;
	CU_add_test(s, "an object someone else made is not adopted",
		    test_foreign_object);
	CU_add_test(s, "a damaged header at start: moved aside, fresh one",
		    test_damaged_header_at_start);
	CU_add_test(s, "truncated under a running broker",
		    test_truncated_while_running);
	CU_add_test(s, "outboxd under attack: tail, header, truncation",
		    test_broker_under_attack);
	CU_add_test(s, "outboxd with a producer stopped holding a claim",
		    test_broker_stalled_producer);
	CU_add_test(s, "outboxd killed and restarted while a claim is pinned",
		    test_broker_restart_pinned);
	return 0;
}

TEST_MAIN(add_suites)
