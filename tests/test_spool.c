/* test_spool.c - the durable spool (broker/spool.c) over the reactor.
 *
 * Every test works in its own directory under a mkdtemp() root and
 * drives the spool the way the broker does: append, spool_set_flush()
 * and run the reactor until the callback, spool_read() (memory or
 * io_uring reads), spool_ack(). Record payloads are derived from their
 * seq, so every read checks content, not only counts. Damage is made by
 * editing the files between a close and a reopen.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "spool.h"
#include "spool_format.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdbool.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <msgpack.h>

#define SEC		1000000000ull
#define SEG_HDR		96
#define FRAME_HDR	24

static char g_root[] = "/tmp/obx-spooltest-XXXXXX";
static int g_seq;
static struct rx g_rx;
static int g_log_warn;
static char g_mnt[256];		/* the tmpfs of t_enospc, while mounted */

/* ---- helpers ------------------------------------------------------------ */

static void t_log(void *arg, int level, const char *msg)
{
	if (level <= LOG_WARN)
		g_log_warn++;
	if (getenv("OBX_TEST_VERBOSE"))
		fprintf(stderr, "  [spool log %d] %s\n", level, msg);
}

static void new_dir(char *buf, size_t len, const char *tag)
{
	snprintf(buf, len, "%s/%s-%d", g_root, tag, ++g_seq);
}

static struct spool_set_opts opts(const char *dir)
{
	struct spool_set_opts o = {
		.dir = dir,
		.max_bytes = 0,
		.segment_size = 64 * 1024,
		.full = SPOOL_DROP_NEWEST,
		.durability = DUR_WRITE,
		.sync_interval_ms = 20,
		.tail_buffer = 256 * 1024,
		.log = t_log,
	};
	return o;
}

static uint32_t rec_len(uint64_t id)
{
	return 20 + (uint32_t)(id % 37);
}

static void rec_fill(uint8_t *p, uint64_t id, uint32_t len)
{
	uint32_t j;

	for (j = 0; j < len; j++)
		p[j] = (uint8_t)(id * 131 + j * 7 + (id >> 8));
	if (len >= 8)
		memcpy(p, &id, 8);
}

static bool rec_ok(const uint8_t *p, uint32_t len, uint64_t id)
{
	uint8_t *buf = malloc(len ? len : 1);
	bool ok;

	if (!buf)
		return false;
	rec_fill(buf, id, len);
	ok = !memcmp(buf, p, len);
	free(buf);
	return ok;
}

/* Appends n records whose payload is derived from their seq. */
static int append_n(struct spool *sp, int n, uint32_t fixed_len)
{
	uint8_t buf[4096];
	int i, ret;

	for (i = 0; i < n; i++) {
		uint64_t id = spool_next_seq(sp);
		uint32_t len = fixed_len ? fixed_len : rec_len(id);

		rec_fill(buf, id, len);
		ret = spool_append(sp, buf, len);
		if (ret)
			return ret;
	}
	return 0;
}

struct waitf {
	int done, err, calls;
};

static void wait_cb(void *arg, int err)
{
	struct waitf *w = arg;

	w->done = 1;
	w->err = err;
	w->calls++;
}

/* Runs the reactor until the flush that started with w calls back. */
static int flush_end(struct waitf *w)
{
	CU_ASSERT_EQUAL(w->done, 0);	/* never inside the call */
	if (rx_run_until(&g_rx, &w->done, 10 * SEC))
		return -ETIMEDOUT;
	CU_ASSERT_EQUAL(w->calls, 1);
	return w->err;
}

static int flush_wait(struct spool_set *set)
{
	struct waitf w = { 0 };
	int ret = spool_set_flush(set, wait_cb, &w);

	return ret ? ret : flush_end(&w);
}

/* Starts a flush that writes ring_pos (ring 7) to the drain journal. */
static int flush_mark_start(struct spool_set *set, uint64_t ring_pos,
			    struct waitf *w)
{
	struct spool_mark m = { .ring_id = 7, .ring_pos = ring_pos };

	memset(w, 0, sizeof(*w));
	return spool_set_flush_mark(set, wait_cb, w, &m);
}

static int flush_mark_wait(struct spool_set *set, uint64_t ring_pos)
{
	struct waitf w;
	int ret = flush_mark_start(set, ring_pos, &w);

	return ret ? ret : flush_end(&w);
}

/* The ring position the drain journal in dir holds now (UINT64_MAX:
 * none, or damaged). */
static uint64_t jr_pos_on_disk(const char *dir)
{
	struct spf_journal *j = calloc(1, sizeof(*j));
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	uint64_t pos = UINT64_MAX;

	if (j && dfd >= 0 && spf_jr_load(dfd, j) == 1)
		pos = j->ring_pos;
	if (dfd >= 0)
		close(dfd);
	free(j);
	return pos;
}

/* One batch: 1 = from memory, 2 = from disk (io_uring), -errno. */
static int read_batch(struct spool *sp, uint64_t from, uint32_t maxev,
		      uint64_t maxb, struct spool_batch *b)
{
	struct waitf w = { 0 };
	int ret = spool_read(sp, from, maxev, maxb, b, wait_cb, &w);

	if (ret < 0)
		return ret;
	if (ret == 1)
		return 1;
	if (rx_run_until(&g_rx, &w.done, 10 * SEC))
		return -ETIMEDOUT;
	return w.err ? w.err : 2;
}

struct readall {
	uint64_t n, first, last;
	uint64_t bad;		/* payload mismatches, out-of-order seqs */
	int disk, mem;
	uint64_t *seqs;		/* optional, cap entries */
	uint64_t cap;
};

/* Reads everything readable from `from`, checking every payload. */
static int read_all(struct spool *sp, uint64_t from, uint32_t maxev,
		    struct readall *ra)
{
	struct spool_batch b;
	uint64_t cur = from, prev = 0;
	int ret = 0;

	spool_batch_init(&b);
	ra->n = ra->first = ra->last = ra->bad = 0;
	ra->disk = ra->mem = 0;
	for (;;) {
		uint32_t i;

		ret = read_batch(sp, cur, maxev, 1u << 20, &b);
		if (ret < 0)
			break;
		if (ret == 2)
			ra->disk++;
		else
			ra->mem++;
		if (!b.n) {
			ret = 0;
			break;
		}
		for (i = 0; i < b.n; i++) {
			const struct spool_rec *r = &b.recs[i];

			if (r->seq <= prev || !rec_ok(r->data, r->len, r->seq))
				ra->bad++;
			if (!ra->n)
				ra->first = r->seq;
			if (ra->seqs && ra->n < ra->cap)
				ra->seqs[ra->n] = r->seq;
			ra->n++;
			ra->last = prev = r->seq;
		}
		if (b.next != b.recs[b.n - 1].seq + 1)
			ra->bad++;
		cur = b.next;
	}
	spool_batch_free(&b);
	return ret;
}

static int count_files(const char *dir, const char *prefix)
{
	struct dirent *de;
	DIR *d = opendir(dir);
	int n = 0;

	if (!d)
		return -1;
	while ((de = readdir(d)))
		if (!strncmp(de->d_name, prefix, strlen(prefix)))
			n++;
	closedir(d);
	return n;
}

static off_t file_size(const char *path)
{
	struct stat st;

	return stat(path, &st) < 0 ? -1 : st.st_size;
}

static uint8_t *slurp_u8(const char *path, size_t *len)
{
	return (uint8_t *)tu_read_file(path, len);
}

static int spit(const char *path, const void *p, size_t len)
{
	FILE *f = fopen(path, "wb");
	int ok;

	if (!f)
		return -1;
	ok = fwrite(p, 1, len, f) == len;
	return fclose(f) == 0 && ok ? 0 : -1;
}

static void seg_path(char *buf, size_t len, const char *dir,
		     const char *sink, uint64_t first)
{
	snprintf(buf, len, "%s/%s/seg-%016" PRIx64 ".obx", dir, sink, first);
}

static int rm_cb(const char *path, const struct stat *st, int flag,
		 struct FTW *ftw)
{
	return remove(path);
}

static void rm_rf(const char *path)
{
	nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- tests -------------------------------------------------------------- */

static void t_append_flush_read_ack(void)
{
	char dir[256], sdir[300];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct spool *sp;
	uint64_t newly;
	int segs0;

	new_dir(dir, sizeof(dir), "basic");
	o = opts(dir);
	o.segment_size = 4096;
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "api");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(spool_next_seq(sp), 1);
	CU_ASSERT_EQUAL(spool_acked(sp), 1);
	CU_ASSERT_PTR_NULL(spool_open(set, "api"));	/* twice: EBUSY */
	CU_ASSERT_EQUAL(errno, EBUSY);
	CU_ASSERT_PTR_NULL(spool_open(set, "../x"));
	CU_ASSERT_EQUAL(errno, EINVAL);

	CU_ASSERT_EQUAL(append_n(sp, 300, 0), 0);
	CU_ASSERT_EQUAL(spool_next_seq(sp), 301);
	CU_ASSERT(spool_set_pending(set) > 300 * 40);
	/* nothing is readable before the flush completed */
	CU_ASSERT_EQUAL(spool_visible(sp), 1);
	CU_ASSERT_EQUAL(read_all(sp, 1, 50, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 0);

	CU_ASSERT_EQUAL(flush_wait(set), 0);
	CU_ASSERT_EQUAL(spool_set_pending(set), 0);
	CU_ASSERT_EQUAL(spool_visible(sp), 301);
	CU_ASSERT_EQUAL(read_all(sp, 0, 37, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 300);
	CU_ASSERT_EQUAL(ra.first, 1);
	CU_ASSERT_EQUAL(ra.last, 300);
	CU_ASSERT_EQUAL(ra.bad, 0);

	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.queued_events, 300);
	CU_ASSERT(st.segments >= 4);		/* 300 * ~64 B over 4 KiB */
	snprintf(sdir, sizeof(sdir), "%s/api", dir);
	segs0 = count_files(sdir, "seg-");
	CU_ASSERT_EQUAL(segs0, (int)st.segments);
	/* every file respects the segment size */
	CU_ASSERT(st.bytes <= st.segments * 4096);

	/* out of order: the watermark waits for the hole */
	newly = spool_ack_n(sp, 101, 100);
	CU_ASSERT_EQUAL(newly, 100);
	CU_ASSERT_EQUAL(spool_acked(sp), 1);
	CU_ASSERT_EQUAL(spool_ack_n(sp, 150, 10), 0);	/* already */
	spool_ack(sp, 1, 100);
	CU_ASSERT_EQUAL(spool_acked(sp), 201);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.queued_events, 100);
	/* reads skip what is acknowledged */
	CU_ASSERT_EQUAL(read_all(sp, 1, 500, &ra), 0);
	CU_ASSERT_EQUAL(ra.first, 201);
	CU_ASSERT_EQUAL(ra.n, 100);

	/* fully acknowledged segments go once the checkpoint is durable */
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	spool_get_stats(sp, &st);
	CU_ASSERT(count_files(sdir, "seg-") < segs0);
	CU_ASSERT_EQUAL(count_files(sdir, "seg-"), (int)st.segments);
	spool_ack(sp, 201, 100);
	CU_ASSERT_EQUAL(spool_acked(sp), 301);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	/* only the active segment is left */
	CU_ASSERT_EQUAL(count_files(sdir, "seg-"), 1);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.queued_events, 0);
	CU_ASSERT_EQUAL(st.queued_bytes, 0);
	CU_ASSERT_EQUAL(read_all(sp, 1, 500, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 0);
	/* E2BIG: larger than a segment */
	{
		static uint8_t big[8192];

		CU_ASSERT_EQUAL(spool_append(sp, big, sizeof(big)), -E2BIG);
	}
	spool_close(sp);
	spool_set_free(set);
}

/* The timer-driven checkpoint (no spool_sync_ack) survives a crash:
 * the child acks and dies without closing anything. */
static void t_restart_resumes_at_watermark(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct spool *sp;
	pid_t pid;
	int wst;

	new_dir(dir, sizeof(dir), "restart");
	o = opts(dir);
	o.segment_size = 8192;
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "s");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 200, 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_ack(sp, 1, 120);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	spool_close(sp);
	spool_set_free(set);

	/* clean restart */
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "s");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(spool_acked(sp), 121);
	CU_ASSERT_EQUAL(spool_next_seq(sp), 201);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.recovered, 80);
	CU_ASSERT_EQUAL(st.corrupt, 0);
	CU_ASSERT_EQUAL(st.truncated_bytes, 0);
	CU_ASSERT_EQUAL(st.queued_events, 80);
	CU_ASSERT_EQUAL(read_all(sp, 0, 64, &ra), 0);
	CU_ASSERT_EQUAL(ra.first, 121);
	CU_ASSERT_EQUAL(ra.last, 200);
	CU_ASSERT_EQUAL(ra.n, 80);
	CU_ASSERT_EQUAL(ra.bad, 0);
	CU_ASSERT_EQUAL(append_n(sp, 1, 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	CU_ASSERT_EQUAL(spool_next_seq(sp), 202);
	spool_close(sp);
	spool_set_free(set);

	/* crash: a child acks, lets the 100 ms checkpoint timer run and
	 * _exits without any close */
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		struct rx rx;
		struct spool_set *cs;
		struct spool *csp;
		int done = 0;

		if (rx_init(&rx, 64))
			_exit(2);
		cs = spool_set_new(&rx, &o);
		csp = cs ? spool_open(cs, "s") : NULL;
		if (!csp || spool_acked(csp) != 121)
			_exit(3);
		spool_ack(csp, 121, 30);	/* now: at once */
		spool_ack(csp, 151, 20);	/* on the timer */
		rx_run_until(&rx, &done, 400000000ull);
		_exit(spool_acked(csp) == 171 ? 0 : 4);
	}
	CU_ASSERT_EQUAL(waitpid(pid, &wst, 0), pid);
	CU_ASSERT(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "s");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(spool_acked(sp), 171);
	CU_ASSERT_EQUAL(spool_next_seq(sp), 202);
	CU_ASSERT_EQUAL(read_all(sp, 0, 64, &ra), 0);
	CU_ASSERT_EQUAL(ra.first, 171);
	CU_ASSERT_EQUAL(ra.n, 31);
	CU_ASSERT_EQUAL(ra.bad, 0);
	spool_close(sp);
	spool_set_free(set);
}

/* Builds a sink with n records of len bytes in one segment and returns
 * the checkpoint as it was when only n-1 were durable: the state of a
 * crash during the flush of the last record (whose write then tore). */
static uint8_t *build_torn_base(const char *dir, int n, uint32_t len,
				size_t *cklen)
{
	struct spool_set_opts o = opts(dir);
	struct spool_set *set;
	struct spool *sp;
	char ck[512];
	uint8_t *img;

	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "t");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, n - 1, len), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);	/* next_seq = n */
	snprintf(ck, sizeof(ck), "%s/t/checkpoint", dir);
	img = slurp_u8(ck, cklen);
	CU_ASSERT_EQUAL(append_n(sp, 1, len), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_close(sp);
	spool_set_free(set);
	return img;
}

static void t_torn_tail_every_offset(void)
{
	const int n = 10;
	const uint32_t len = 100;
	const size_t flen = FRAME_HDR + 104;
	char base[256], dir[256], path[512], bpath[512], ck[512];
	uint8_t *img, *ckimg;
	size_t size, cklen, last, cut;
	int fails = 0, iters = 0;

	new_dir(base, sizeof(base), "tornbase");
	ckimg = build_torn_base(base, n, len, &cklen);
	seg_path(bpath, sizeof(bpath), base, "t", 1);
	img = slurp_u8(bpath, &size);
	CU_ASSERT_PTR_NOT_NULL_FATAL(img);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ckimg);
	CU_ASSERT_EQUAL_FATAL(size, SEG_HDR + n * flen);
	last = size - flen;

	for (cut = last; cut < size; cut++) {
		struct spool_set_opts o;
		struct spool_set *set;
		struct spool_stats st;
		struct readall ra = { 0 };
		struct spool *sp;
		char sdir[300];
		bool ok = true;

		new_dir(dir, sizeof(dir), "torn");
		snprintf(sdir, sizeof(sdir), "%s/t", dir);
		CU_ASSERT_FATAL(mkdir(dir, 0700) == 0 && mkdir(sdir, 0700) == 0);
		seg_path(path, sizeof(path), dir, "t", 1);
		snprintf(ck, sizeof(ck), "%s/checkpoint", sdir);
		CU_ASSERT_FATAL(spit(path, img, cut) == 0);
		CU_ASSERT_FATAL(spit(ck, ckimg, cklen) == 0);

		o = opts(dir);
		set = spool_set_new(&g_rx, &o);
		CU_ASSERT_PTR_NOT_NULL_FATAL(set);
		sp = spool_open(set, "t");
		CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
		spool_get_stats(sp, &st);
		ok &= st.recovered == (uint64_t)n - 1;
		ok &= st.corrupt == 0;
		ok &= st.truncated_bytes == cut - last;
		ok &= file_size(path) == (off_t)last;
		ok &= spool_next_seq(sp) == (uint64_t)n;
		ok &= read_all(sp, 0, 100, &ra) == 0;
		ok &= ra.n == (uint64_t)n - 1 && ra.bad == 0 && ra.last == 9;
		/* and the spool takes appends again, after the cut */
		ok &= append_n(sp, 3, len) == 0;
		ok &= flush_wait(set) == 0;
		ok &= read_all(sp, 0, 100, &ra) == 0;
		ok &= ra.n == (uint64_t)n + 2 && ra.bad == 0;
		ok &= file_size(path) == (off_t)(last + 3 * flen);
		spool_close(sp);
		spool_set_free(set);
		if (!ok && fails++ < 3)
			printf("\n  torn tail at %zu: rec=%" PRIu64 " corrupt=%"
			       PRIu64 " trunc=%" PRIu64 " n=%" PRIu64 "\n",
			       cut, st.recovered, st.corrupt,
			       st.truncated_bytes, ra.n);
		iters++;
		rm_rf(dir);
	}
	CU_ASSERT_EQUAL(iters, (int)flen);
	CU_ASSERT_EQUAL(fails, 0);
	free(img);
	free(ckimg);
}

static void t_flipped_byte_middle(void)
{
	char dir[256], path[512];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	uint64_t seqs[64];
	struct spool *sp;
	uint8_t *img;
	size_t size;
	int fd, i;
	char *out = NULL;
	size_t outlen = 0;
	FILE *mf;

	new_dir(dir, sizeof(dir), "flip");
	o = opts(dir);
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "f");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 20, 40), 0);	/* frames of 64 B */
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_close(sp);
	spool_set_free(set);

	/* record 12: a payload byte; record 5: a byte of its seq */
	seg_path(path, sizeof(path), dir, "f", 1);
	img = slurp_u8(path, &size);
	CU_ASSERT_PTR_NOT_NULL_FATAL(img);
	CU_ASSERT_EQUAL_FATAL(size, SEG_HDR + 20 * 64);
	img[SEG_HDR + 11 * 64 + FRAME_HDR + 17] ^= 0x40;
	img[SEG_HDR + 4 * 64 + 9] ^= 0x01;
	fd = open(path, O_WRONLY);
	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(pwrite(fd, img, size, 0), (ssize_t)size);
	close(fd);

	mf = open_memstream(&out, &outlen);
	CU_ASSERT_EQUAL(spool_verify(dir, mf), 4);	/* 2 damaged + 2 gaps */
	fclose(mf);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "damaged bytes"));
	free(out);

	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "f");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.recovered, 18);
	CU_ASSERT_EQUAL(st.corrupt, 2);
	CU_ASSERT_EQUAL(st.truncated_bytes, 0);
	CU_ASSERT_EQUAL(file_size(path), (off_t)size);	/* not cut */
	CU_ASSERT_EQUAL(spool_next_seq(sp), 21);
	ra.seqs = seqs;
	ra.cap = 64;
	CU_ASSERT_EQUAL(read_all(sp, 0, 7, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 18);
	CU_ASSERT_EQUAL(ra.bad, 0);
	for (i = 0; i < 18; i++) {
		uint64_t want = (uint64_t)i + 1 + (i >= 4) + (i >= 10);

		CU_ASSERT_EQUAL(seqs[i], want);
	}
	/* acknowledging what was delivered passes the holes */
	for (i = 0; i < 18; i++)
		spool_ack(sp, seqs[i], 1);
	CU_ASSERT_EQUAL(spool_acked(sp), 21);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.queued_events, 0);
	spool_close(sp);
	spool_set_free(set);
	free(img);
}

static void t_foreign_files(void)
{
	char dir[256], sdir[300], path[600], p2[512];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct spool *sp;
	uint8_t junk[3000];
	size_t i;

	new_dir(dir, sizeof(dir), "foreign");
	o = opts(dir);
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "g");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 10, 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_close(sp);
	spool_set_free(set);

	for (i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)(i * 2654435761u >> 13);
	snprintf(sdir, sizeof(sdir), "%s/g", dir);
	snprintf(path, sizeof(path), "%s/garbage.bin", sdir);
	CU_ASSERT_EQUAL(spit(path, junk, sizeof(junk)), 0);
	snprintf(path, sizeof(path), "%s/seg-zzzzzzzzzzzzzzzz.obx", sdir);
	CU_ASSERT_EQUAL(spit(path, junk, 100), 0);
	snprintf(path, sizeof(path), "%s/somedir", sdir);
	CU_ASSERT_EQUAL(mkdir(path, 0700), 0);
	/* a segment name that is a symlink: never followed */
	{
		char tgt[600];

		seg_path(tgt, sizeof(tgt), dir, "g", 1);
		seg_path(path, sizeof(path), dir, "g", 300);
		CU_ASSERT_EQUAL(symlink(tgt, path), 0);
	}
	/* a segment name with a bad header, exactly where the next
	 * segment will be created (seq 11) */
	seg_path(p2, sizeof(p2), dir, "g", 11);
	CU_ASSERT_EQUAL(spit(p2, junk, sizeof(junk)), 0);
	/* and a segment of ANOTHER sink, copied in */
	{
		uint8_t *img;
		size_t len;
		char other[512];

		seg_path(other, sizeof(other), dir, "g", 1);
		img = slurp_u8(other, &len);
		CU_ASSERT_PTR_NOT_NULL_FATAL(img);
		/* the sink name is part of the header (crc'd): "g" -> "h" */
		img[24] = 'h';
		seg_path(other, sizeof(other), dir, "g", 500);
		CU_ASSERT_EQUAL(spit(other, img, len), 0);
		free(img);
	}

	g_log_warn = 0;
	o.segment_size = 512;	/* seg 1 is full: the next append rolls */
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "g");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.foreign, 6);
	CU_ASSERT(g_log_warn >= 6);
	CU_ASSERT_EQUAL(st.recovered, 10);
	CU_ASSERT_EQUAL(st.corrupt, 0);
	CU_ASSERT_EQUAL(spool_next_seq(sp), 11);
	CU_ASSERT_EQUAL(read_all(sp, 0, 100, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 10);
	CU_ASSERT_EQUAL(ra.bad, 0);
	/* left alone */
	snprintf(path, sizeof(path), "%s/garbage.bin", sdir);
	CU_ASSERT_EQUAL(file_size(path), (off_t)sizeof(junk));
	/* appending rolls onto seq 11: the squatter is moved aside */
	CU_ASSERT_EQUAL(append_n(sp, 5, 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	snprintf(path, sizeof(path), "%s.damaged", p2);
	CU_ASSERT_EQUAL(file_size(path), (off_t)sizeof(junk));
	CU_ASSERT_EQUAL(read_all(sp, 0, 100, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 15);
	CU_ASSERT_EQUAL(ra.bad, 0);
	spool_close(sp);
	spool_set_free(set);

	/* a segment that is garbage from byte 0 after a valid header,
	 * and the newest file shorter than a header (crash at creation) */
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	seg_path(path, sizeof(path), dir, "g", 16);
	CU_ASSERT_EQUAL(spit(path, junk, 40), 0);
	sp = spool_open(set, "g");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(file_size(path), -1);	/* removed: held nothing */
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.recovered, 15);
	CU_ASSERT_EQUAL(spool_next_seq(sp), 16);
	spool_close(sp);
	spool_set_free(set);
}

/* Opens set + sink "c" of dir, for the checkpoint test. */
static struct spool *ck_open(const struct spool_set_opts *o,
			     struct spool_set **set)
{
	struct spool *sp;

	*set = spool_set_new(&g_rx, o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(*set);
	sp = spool_open(*set, "c");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	return sp;
}

/* The slot of the checkpoint file with the highest generation. */
static int ck_newest_slot(const uint8_t *img)
{
	uint64_t g0, g1;

	memcpy(&g0, img + 8, 8);
	memcpy(&g1, img + SPF_CK_SLOT + 8, 8);
	return g1 > g0 ? 1 : 0;
}

/* The checkpoint (version 2): a preallocated file of two CRC'd slots.
 * Round trip of the watermark, the done ranges above it and the owner's
 * counters; a damaged newest slot falls back to the other one; a whole
 * damaged file means "deliver everything"; the old single-map file
 * (version 1) is read and replaced. */
static void t_checkpoint(void)
{
	static const uint64_t base[3] = { 7, 8, 9 };
	char dir[256], ck[512];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct spool *sp;
	uint64_t got[SPF_CK_BASE_MAX];
	uint8_t *img;
	size_t len;
	int i;

	new_dir(dir, sizeof(dir), "ckpt");
	o = opts(dir);
	sp = ck_open(&o, &set);
	CU_ASSERT_EQUAL(spool_base(sp, got, SPF_CK_BASE_MAX), 0);
	CU_ASSERT_EQUAL(append_n(sp, 40, 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_ack(sp, 1, 25);
	spool_ack(sp, 30, 3);			/* a range above */
	spool_set_base(sp, base, 3);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	spool_close(sp);
	spool_set_free(set);

	snprintf(ck, sizeof(ck), "%s/c/checkpoint", dir);
	CU_ASSERT_EQUAL(file_size(ck), 2 * SPF_CK_SLOT);	/* preallocated */
	sp = ck_open(&o, &set);
	CU_ASSERT_EQUAL(spool_acked(sp), 26);
	CU_ASSERT_EQUAL(spool_next_seq(sp), 41);
	CU_ASSERT_EQUAL(spool_base(sp, got, SPF_CK_BASE_MAX), 3);
	CU_ASSERT(!memcmp(got, base, sizeof(base)));
	CU_ASSERT_EQUAL(read_all(sp, 0, 100, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 12);		/* 26..29, 33..40 */
	CU_ASSERT_EQUAL(ra.first, 26);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.queued_events, 12);
	/* two more checkpoints: acked 28, then 29 */
	spool_ack(sp, 26, 2);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	spool_ack(sp, 28, 1);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	spool_close(sp);
	spool_set_free(set);

	/* a torn write of the newest slot: the other one holds acked 28 */
	img = slurp_u8(ck, &len);
	CU_ASSERT_FATAL(img && len == 2 * SPF_CK_SLOT);
	img[ck_newest_slot(img) * SPF_CK_SLOT + 40] ^= 0x10;
	CU_ASSERT_EQUAL(spit(ck, img, len), 0);
	sp = ck_open(&o, &set);
	CU_ASSERT_EQUAL(spool_acked(sp), 28);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.corrupt, 0);
	spool_close(sp);
	spool_set_free(set);

	/* both slots damaged, garbage, or cut short: "deliver everything" */
	for (i = 0; i < 3; i++) {
		const char *garbage = "\xde\xad\xbe\xef not msgpack";

		free(img);
		img = slurp_u8(ck, &len);
		CU_ASSERT_FATAL(img != NULL);
		if (i == 0) {
			img[40] ^= 1;
			img[SPF_CK_SLOT + 40] ^= 1;
			CU_ASSERT_EQUAL(spit(ck, img, len), 0);
		} else if (i == 1) {
			CU_ASSERT_EQUAL(spit(ck, garbage, strlen(garbage)), 0);
		} else {
			CU_ASSERT_EQUAL(spit(ck, img, len / 2), 0);
		}
		sp = ck_open(&o, &set);
		CU_ASSERT_EQUAL(spool_acked(sp), 1);
		CU_ASSERT_EQUAL(spool_next_seq(sp), 41);
		spool_get_stats(sp, &st);
		CU_ASSERT_EQUAL(st.recovered, 40);
		CU_ASSERT_EQUAL(st.corrupt, 0);
		CU_ASSERT_EQUAL(read_all(sp, 0, 100, &ra), 0);
		CU_ASSERT_EQUAL(ra.n, 40);
		CU_ASSERT_EQUAL(ra.first, 1);
		spool_close(sp);
		spool_set_free(set);
		/* ... and a fresh checkpoint file was made in its place */
		CU_ASSERT_EQUAL(file_size(ck), 2 * SPF_CK_SLOT);
	}

	/* a valid slot whose map claims 2^32-1 entries (found by
	 * fuzz_checkpoint): refused without msgpack-c allocating for them */
	{
		static const uint8_t hostile[] = { 0xdf, 0xff, 0xff, 0xff, 0xff,
						   0xa4, 's', 'i', 'n', 'k' };
		uint8_t *two = calloc(2, SPF_CK_SLOT);

		CU_ASSERT_FATAL(two != NULL);
		CU_ASSERT(spf_slot_pack(two, SPF_CK_SLOT, 0x4b58424fu, 9,
					hostile, sizeof(hostile)) > 0);
		CU_ASSERT_EQUAL(spit(ck, two, 2 * SPF_CK_SLOT), 0);
		free(two);
		sp = ck_open(&o, &set);
		CU_ASSERT_EQUAL(spool_acked(sp), 1);	/* corrupt: all again */
		spool_close(sp);
		spool_set_free(set);
	}

	/* version 1, as an older broker wrote it: read, then replaced */
	{
		msgpack_sbuffer sb;
		msgpack_packer pk;
		uint8_t b[16];
		uint64_t a = 20, nx = 41;

		memcpy(b, &a, 8);
		memcpy(b + 8, &nx, 8);
		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		msgpack_pack_map(&pk, 5);
		msgpack_pack_str_with_body(&pk, "version", 7);
		msgpack_pack_uint32(&pk, 1);
		msgpack_pack_str_with_body(&pk, "sink", 4);
		msgpack_pack_str_with_body(&pk, "c", 1);
		msgpack_pack_str_with_body(&pk, "acked", 5);
		msgpack_pack_uint64(&pk, a);
		msgpack_pack_str_with_body(&pk, "next_seq", 8);
		msgpack_pack_uint64(&pk, nx);
		msgpack_pack_str_with_body(&pk, "crc", 3);
		msgpack_pack_uint32(&pk, spool_crc32c(spool_crc32c(0, b, 16),
						      "c", 1));
		CU_ASSERT_EQUAL(spit(ck, sb.data, sb.size), 0);
		msgpack_sbuffer_destroy(&sb);
	}
	sp = ck_open(&o, &set);
	CU_ASSERT_EQUAL(spool_acked(sp), 20);
	CU_ASSERT_EQUAL(read_all(sp, 0, 100, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 21);
	spool_close(sp);
	spool_set_free(set);
	CU_ASSERT_EQUAL(file_size(ck), 2 * SPF_CK_SLOT);
	{
		char *out = NULL;
		size_t outlen = 0;
		FILE *mf = open_memstream(&out, &outlen);

		CU_ASSERT_EQUAL(spool_ls(dir, mf), 0);
		fclose(mf);
		CU_ASSERT_PTR_NOT_NULL(strstr(out, "checkpoint acked=20 "
					      "next_seq=41"));
		free(out);
	}
	free(img);
}

/* Runs the reactor for ms milliseconds, whatever completes. */
static void run_for_ms(struct rx *rx, uint64_t ms)
{
	uint64_t end = tu_now_ns() + ms * 1000000ull;
	uint64_t now;

	while ((now = tu_now_ns()) < end)
		rx_run(rx, end - now);
}

static uint64_t ck_writes(const struct spool *sp)
{
	struct spool_stats st;

	spool_get_stats(sp, &st);
	return st.ck_writes;
}

/* The child of t_ck_one_per_request: two batches read (1..10, 11..20),
 * the first acknowledged, the reactor left to write what it writes, then
 * a crash. Exit codes say which check failed. */
static int ck_request_child(const struct spool_set_opts *o)
{
	struct spool_batch a = { 0 }, b = { 0 };
	struct spf_ckpt *ck = calloc(1, sizeof(*ck));
	struct spool_set *cs;
	struct spool *csp;
	uint64_t w0;
	int dfd;

	/* a ring of its own (the parent's is shared memory): in g_rx,
	 * which the helpers run */
	if (!ck || rx_init(&g_rx, 64))
		return 2;
	cs = spool_set_new(&g_rx, o);
	csp = cs ? spool_open(cs, "r") : NULL;
	if (!csp || append_n(csp, 30, 0) || flush_wait(cs))
		return 3;
	run_for_ms(&g_rx, 20);
	w0 = ck_writes(csp);
	if (read_batch(csp, 1, 10, 1 << 20, &a) != 1 || a.n != 10 ||
	    read_batch(csp, 11, 10, 1 << 20, &b) != 1 || b.n != 10)
		return 4;
	/* the requests are out: a read writes nothing */
	run_for_ms(&g_rx, 30);
	if (ck_writes(csp) != w0)
		return 5;
	/* the first answer: one checkpoint write, which records the read
	 * position (batch 11..20 is still out) */
	spool_ack(csp, 1, 10);
	run_for_ms(&g_rx, 30);
	if (ck_writes(csp) != w0 + 1)
		return 6;
	dfd = openat(AT_FDCWD, o->dir, O_RDONLY | O_DIRECTORY);
	if (dfd < 0)
		return 7;
	{
		int sfd = openat(dfd, "r", O_RDONLY | O_DIRECTORY);

		if (sfd < 0 || spf_ck_load(sfd, "r", ck) != 1)
			return 8;
		if (ck->acked != 11 || ck->sent != 21)
			return 9;
	}
	_exit(0);		/* a crash: nothing closed */
}

/* One checkpoint write per request (issue 17): a read used to schedule
 * a checkpoint of its own (the read position, for the `redelivered`
 * estimate) and the acknowledgement another, two io-wq writes and their
 * wake-ups per HTTP request. Now the read only moves the position the
 * acknowledgement's checkpoint records. After a crash, records re-sent
 * below that position still count as redelivered: the batch read before
 * the first acknowledgement (11..20) is counted, those read after the
 * checkpoint (21..30) are not. */
static void t_ck_one_per_request(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct spool *sp;
	pid_t pid;
	int wst;

	new_dir(dir, sizeof(dir), "ckreq");
	o = opts(dir);
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0)
		_exit(ck_request_child(&o));
	CU_ASSERT_EQUAL(waitpid(pid, &wst, 0), pid);
	CU_ASSERT(WIFEXITED(wst));
	CU_ASSERT_EQUAL(WEXITSTATUS(wst), 0);
	if (WEXITSTATUS(wst))
		fprintf(stderr, "  child check %d failed\n",
			WEXITSTATUS(wst));

	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "r");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(spool_acked(sp), 11);
	CU_ASSERT_EQUAL(read_all(sp, 0, 64, &ra), 0);
	CU_ASSERT_EQUAL(ra.first, 11);
	CU_ASSERT_EQUAL(ra.n, 20);
	CU_ASSERT_EQUAL(ra.bad, 0);
	/* sent again and acknowledged: 11..20 were out before the crash */
	spool_ack(sp, 11, 20);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.redelivered, 10);
	spool_close(sp);
	spool_set_free(set);
}

/* A crash between the checkpoint and the unlink leaves a fully
 * acknowledged segment: the next open deletes it. */
static void t_leftover_acked_segment(void)
{
	char dir[256], sdir[300], path[512];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct spool *sp;
	uint8_t *img;
	size_t len;

	new_dir(dir, sizeof(dir), "leftover");
	o = opts(dir);
	o.segment_size = 2048;
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "l");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 100, 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	seg_path(path, sizeof(path), dir, "l", 1);
	img = slurp_u8(path, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(img);
	spool_ack(sp, 1, 100);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	CU_ASSERT_EQUAL(file_size(path), -1);
	spool_close(sp);
	spool_set_free(set);

	CU_ASSERT_EQUAL(spit(path, img, len), 0);	/* "not yet unlinked" */
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "l");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(file_size(path), -1);
	CU_ASSERT_EQUAL(spool_acked(sp), 101);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.recovered, 0);
	CU_ASSERT_EQUAL(st.queued_events, 0);
	snprintf(sdir, sizeof(sdir), "%s/l", dir);
	CU_ASSERT_EQUAL(count_files(sdir, "seg-"), 1);
	spool_close(sp);
	spool_set_free(set);
	free(img);
}

static void t_cap_drop_newest(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct spool *sp;
	int i, ok = 0, refused = 0;

	new_dir(dir, sizeof(dir), "capnew");
	o = opts(dir);
	o.segment_size = 4096;
	o.max_bytes = 16384;
	o.full = SPOOL_DROP_NEWEST;
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "n");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	for (i = 0; i < 400; i++) {
		int r = append_n(sp, 1, 100);

		if (r == 0)
			ok++;
		else if (r == -ENOSPC)
			refused++;
		else
			CU_FAIL("unexpected append result");
		if (i % 20 == 19)
			CU_ASSERT_EQUAL(flush_wait(set), 0);
	}
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	CU_ASSERT(ok > 100);
	CU_ASSERT(refused > 200);
	CU_ASSERT_EQUAL(ok + refused, 400);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.refused_full, (uint64_t)refused);
	CU_ASSERT_EQUAL(st.dropped_full, 0);
	CU_ASSERT(st.bytes <= 16384);
	CU_ASSERT_EQUAL(spool_next_seq(sp), (uint64_t)ok + 1);
	/* the oldest are all there */
	CU_ASSERT_EQUAL(read_all(sp, 0, 1000, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, (uint64_t)ok);
	CU_ASSERT_EQUAL(ra.first, 1);
	CU_ASSERT_EQUAL(ra.bad, 0);
	/* acks free room again */
	spool_ack(sp, 1, (uint64_t)ok);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	CU_ASSERT_EQUAL(append_n(sp, 10, 100), 0);
	spool_close(sp);
	spool_set_free(set);
}

static void t_cap_drop_oldest(void)
{
	char dir[256], path[512];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct spool *sp, *other;
	int i;

	new_dir(dir, sizeof(dir), "capold");
	o = opts(dir);
	o.segment_size = 4096;
	o.max_bytes = 16384;
	o.full = SPOOL_DROP_OLDEST;
	set = spool_set_new(&g_rx, &o);
	other = spool_open(set, "other");	/* newer data in another sink */
	sp = spool_open(set, "o");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_PTR_NOT_NULL_FATAL(other);
	for (i = 0; i < 400; i++) {
		CU_ASSERT_EQUAL(append_n(sp, 1, 100), 0);
		if (i % 20 == 19)
			CU_ASSERT_EQUAL(flush_wait(set), 0);
	}
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_get_stats(sp, &st);
	CU_ASSERT(st.bytes <= 16384);
	CU_ASSERT(st.dropped_full > 250);
	CU_ASSERT_EQUAL(spool_next_seq(sp), 401);
	/* the oldest are gone, counted; the newest are all there */
	seg_path(path, sizeof(path), dir, "o", 1);
	{
		/* dropped files are unlinked once the checkpoint past them
		 * is durable (asynchronously, within ~100 ms) */
		uint64_t end = tu_now_ns() + 2 * SEC;
		char sdir[300];

		snprintf(sdir, sizeof(sdir), "%s/o", dir);
		while (count_files(sdir, "seg-") != (int)st.segments &&
		       tu_now_ns() < end)
			rx_run(&g_rx, 20000000ull);
		CU_ASSERT_EQUAL(count_files(sdir, "seg-"), (int)st.segments);
		CU_ASSERT_EQUAL(file_size(path), -1);
	}
	CU_ASSERT_EQUAL(spool_acked(sp), st.dropped_full + 1);
	CU_ASSERT_EQUAL(read_all(sp, 0, 1000, &ra), 0);
	CU_ASSERT_EQUAL(ra.first, st.dropped_full + 1);
	CU_ASSERT_EQUAL(ra.last, 400);
	CU_ASSERT_EQUAL(ra.n + st.dropped_full, 400);
	CU_ASSERT_EQUAL(ra.bad, 0);
	CU_ASSERT_EQUAL(st.queued_events, ra.n);

	/* the other sink writes now: the oldest segment of "o" goes */
	{
		uint64_t before = st.dropped_full;
		struct spool_stats so;

		for (i = 0; i < 60; i++)
			CU_ASSERT_EQUAL(append_n(other, 1, 100), 0);
		CU_ASSERT_EQUAL(flush_wait(set), 0);
		spool_get_stats(sp, &st);
		spool_get_stats(other, &so);
		CU_ASSERT(st.dropped_full > before);
		CU_ASSERT_EQUAL(so.dropped_full, 0);
		CU_ASSERT_EQUAL(read_all(other, 0, 1000, &ra), 0);
		CU_ASSERT_EQUAL(ra.n, 60);
	}
	/* the new watermark is durable after a restart */
	{
		uint64_t acked = spool_acked(sp);

		spool_close(sp);
		spool_close(other);
		spool_set_free(set);
		set = spool_set_new(&g_rx, &o);
		sp = spool_open(set, "o");
		CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
		CU_ASSERT_EQUAL(spool_acked(sp), acked);
		spool_get_stats(sp, &st);
		CU_ASSERT_EQUAL(st.recovered, 401 - acked);
		CU_ASSERT_EQUAL(st.corrupt, 0);
		spool_close(sp);
		spool_set_free(set);
	}
}

struct dur_case {
	enum cfg_durability d;
	const char *name;
};

static void t_durability_modes(void)
{
	static const struct dur_case cases[] = {
		{ DUR_NONE, "none" }, { DUR_WRITE, "write" },
		{ DUR_FDATASYNC, "fdatasync" },
	};
	size_t c;

	for (c = 0; c < 3; c++) {
		char dir[256];
		struct spool_set_opts o;
		struct spool_set *set;
		struct spool_stats st;
		struct readall ra = { 0 };
		struct spool *sp;
		uint64_t t0, t1;

		new_dir(dir, sizeof(dir), cases[c].name);
		o = opts(dir);
		o.durability = cases[c].d;
		o.sync_interval_ms = 80;
		o.segment_size = 4096;
		set = spool_set_new(&g_rx, &o);
		sp = spool_open(set, "d");
		CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
		CU_ASSERT_EQUAL(append_n(sp, 100, 0), 0);
		t0 = tu_now_ns();
		CU_ASSERT_EQUAL(flush_wait(set), 0);
		CU_ASSERT_EQUAL(spool_visible(sp), 101);
		CU_ASSERT_EQUAL(read_all(sp, 0, 30, &ra), 0);
		CU_ASSERT_EQUAL(ra.n, 100);
		CU_ASSERT_EQUAL(ra.bad, 0);
		/* a second flush right away: fdatasync waits for its slot */
		CU_ASSERT_EQUAL(append_n(sp, 100, 0), 0);
		CU_ASSERT_EQUAL(flush_wait(set), 0);
		t1 = tu_now_ns();
		if (cases[c].d == DUR_FDATASYNC)
			CU_ASSERT(t1 - t0 >= 70000000ull);
		CU_ASSERT_EQUAL(read_all(sp, 0, 30, &ra), 0);
		CU_ASSERT_EQUAL(ra.n, 200);
		CU_ASSERT_EQUAL(ra.bad, 0);
		/* -EBUSY while a flush is in flight */
		if (cases[c].d != DUR_NONE) {
			struct waitf w = { 0 };

			CU_ASSERT_EQUAL(append_n(sp, 1, 0), 0);
			CU_ASSERT_EQUAL(spool_set_flush(set, wait_cb, &w), 0);
			CU_ASSERT_EQUAL(spool_set_flush(set, wait_cb, &w),
					-EBUSY);
			CU_ASSERT_EQUAL(rx_run_until(&g_rx, &w.done, 5 * SEC), 0);
			CU_ASSERT_EQUAL(w.calls, 1);
			CU_ASSERT_EQUAL(w.err, 0);
		} else {
			CU_ASSERT_EQUAL(append_n(sp, 1, 0), 0);
			CU_ASSERT_EQUAL(flush_wait(set), 0);
		}
		spool_get_stats(sp, &st);
		CU_ASSERT_EQUAL(st.write_errors, 0);
		spool_close(sp);
		spool_set_free(set);
		/* whatever the mode, the files hold everything */
		set = spool_set_new(&g_rx, &o);
		sp = spool_open(set, "d");
		CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
		spool_get_stats(sp, &st);
		CU_ASSERT_EQUAL(st.recovered, 201);
		CU_ASSERT_EQUAL(st.corrupt, 0);
		CU_ASSERT_EQUAL(st.truncated_bytes, 0);
		spool_close(sp);
		spool_set_free(set);
	}
}

/* Old records come back through io_uring reads once the tail buffer
 * has moved on, across segments; a record bigger than the read window
 * too. */
static void t_disk_reads(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct spool_batch b;
	struct readall ra = { 0 };
	struct spool *sp;
	static uint8_t big[300000];
	uint64_t bigseq;
	int i, r;

	new_dir(dir, sizeof(dir), "disk");
	o = opts(dir);
	o.segment_size = 1 << 20;
	o.tail_buffer = 8192;
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "r");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	for (i = 0; i < 100; i++) {
		CU_ASSERT_EQUAL(append_n(sp, 20, 300), 0);
		CU_ASSERT_EQUAL(flush_wait(set), 0);
	}
	/* 2000 x 328 B frames = 656 KB in the first 1 MiB segment, then
	 * the big record, then more small ones roll over */
	bigseq = spool_next_seq(sp);
	rec_fill(big, bigseq, sizeof(big));
	CU_ASSERT_EQUAL(spool_append(sp, big, sizeof(big)), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	for (i = 0; i < 50; i++) {
		CU_ASSERT_EQUAL(append_n(sp, 20, 300), 0);
		CU_ASSERT_EQUAL(flush_wait(set), 0);
	}
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.segments, 2);

	/* an old range: not in memory any more */
	spool_batch_init(&b);
	r = read_batch(sp, 100, 10, 100000, &b);
	CU_ASSERT_EQUAL(r, 2);			/* came from disk */
	CU_ASSERT_EQUAL(b.n, 10);
	for (i = 0; i < (int)b.n; i++) {
		CU_ASSERT_EQUAL(b.recs[i].seq, 100 + (uint64_t)i);
		CU_ASSERT(rec_ok(b.recs[i].data, b.recs[i].len, b.recs[i].seq));
	}
	/* max_bytes bounds a batch */
	r = read_batch(sp, 500, 1000, 3000, &b);
	CU_ASSERT_EQUAL(r, 2);
	CU_ASSERT_EQUAL(b.n, 10);		/* 10 x 300 B */
	/* the big record, alone (bigger than max_bytes and the window) */
	r = read_batch(sp, bigseq, 100, 1000, &b);
	CU_ASSERT_EQUAL(r, 2);
	CU_ASSERT_EQUAL_FATAL(b.n, 1);
	CU_ASSERT_EQUAL(b.recs[0].seq, bigseq);
	CU_ASSERT_EQUAL(b.recs[0].len, sizeof(big));
	CU_ASSERT(memcmp(b.recs[0].data, big, sizeof(big)) == 0);
	/* right after it: the big frame is stepped over, not read */
	r = read_batch(sp, bigseq + 1, 5, 100000, &b);
	CU_ASSERT_EQUAL(r, 2);
	CU_ASSERT_EQUAL_FATAL(b.n, 5);
	CU_ASSERT_EQUAL(b.recs[0].seq, bigseq + 1);
	CU_ASSERT(rec_ok(b.recs[4].data, b.recs[4].len, bigseq + 5));
	spool_batch_free(&b);

	/* everything, in order, crossing segments, memory at the end */
	spool_get_stats(sp, &st);
	{
		uint64_t disk0 = st.reads_disk;

		CU_ASSERT_EQUAL(read_all(sp, 0, 97, &ra), 0);
		CU_ASSERT_EQUAL(ra.n, 3001);
		CU_ASSERT_EQUAL(ra.first, 1);
		CU_ASSERT_EQUAL(ra.last, 3001);
		CU_ASSERT_EQUAL(ra.bad, 0);
		CU_ASSERT(ra.disk > 10);
		CU_ASSERT(ra.mem >= 1);
		spool_get_stats(sp, &st);
		CU_ASSERT(st.reads_disk > disk0);
	}
	/* the same after a restart: everything from disk, via the index */
	spool_close(sp);
	spool_set_free(set);
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "r");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(read_all(sp, 2500, 200, &ra), 0);
	CU_ASSERT_EQUAL(ra.first, 2500);
	CU_ASSERT_EQUAL(ra.n, 502);
	CU_ASSERT(ra.disk >= 3);
	CU_ASSERT_EQUAL(ra.bad, 0);
	spool_close(sp);
	spool_set_free(set);
}

/* A full file system: appends stop, nothing accepted is lost, and a
 * retry after space returns writes it all. */
/* A 1 MiB tmpfs of our own at mnt (remembered for the suite's cleanup):
 * 0, or -1 when it cannot be mounted (not root): the test is skipped. */
static int mount_small(char *mnt, size_t len, const char *tag)
{
	new_dir(mnt, len, tag);
	CU_ASSERT_FATAL(mkdir(mnt, 0700) == 0);
	if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m,mode=0700") != 0) {
		printf("\n  skipped: cannot mount tmpfs (%s)\n",
		       strerror(errno));
		CU_PASS("skipped: cannot mount");
		return -1;
	}
	snprintf(g_mnt, sizeof(g_mnt), "%s", mnt);
	return 0;
}

/* Fills the file system that holds path until a write fails. */
static void fill_fs(const char *path)
{
	static uint8_t chunk[4096];
	int fd = open(path, O_WRONLY | O_CREAT, 0600);

	CU_ASSERT_FATAL(fd >= 0);
	while (write(fd, chunk, sizeof(chunk)) > 0)
		;
	while (write(fd, chunk, 1) > 0)
		;
	close(fd);
}

/* A full disk is not a dead end (issue 13, defect 1): on a 1 MiB tmpfs
 * filled by someone else, writes that fail drop their records
 * (dropped_full) instead of stalling, later appends are refused
 * (refused_full) by the free-space reserve, acknowledging writes the
 * checkpoint and deletes delivered segments without needing a byte, and
 * appends work again by themselves once space returns. */
static void t_enospc(void)
{
	char mnt[256], dir[300], filler[320], seg1[400];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct spool *sp;
	uint64_t accepted = 0, refused = 0, lost;
	int i, r;

	if (mount_small(mnt, sizeof(mnt), "mnt"))
		return;
	snprintf(dir, sizeof(dir), "%s/spool", mnt);
	o = opts(dir);
	o.segment_size = 64 * 1024;
	o.tail_buffer = 32 * 1024;
	o.disk_reserve = 64 * 1024;
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "e");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 20, 200), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	seg_path(seg1, sizeof(seg1), dir, "e", 1);

	/* someone else takes every byte */
	snprintf(filler, sizeof(filler), "%s/filler", mnt);
	fill_fs(filler);

	/* what the stale estimate lets in is dropped when its write
	 * fails; then the reserve refuses: never a stall */
	for (i = 0; i < 100; i++) {
		r = append_n(sp, 1, 200);
		CU_ASSERT(r == 0 || r == -ENOSPC);
		accepted += r == 0;
		refused += r == -ENOSPC;
	}
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	CU_ASSERT_EQUAL(spool_set_stalled(set), 0);
	spool_get_stats(sp, &st);
	lost = st.dropped_full;
	CU_ASSERT(accepted >= 1);
	CU_ASSERT_EQUAL(lost, accepted);	/* their write failed */
	CU_ASSERT_EQUAL(st.refused_full, refused);
	CU_ASSERT_EQUAL(append_n(sp, 1, 200), -ENOSPC);
	CU_ASSERT_EQUAL(spool_set_pending(set), 0);
	/* what was written before is all there */
	CU_ASSERT_EQUAL(read_all(sp, 0, 50, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 20);
	CU_ASSERT_EQUAL(ra.bad, 0);

	/* delivered: the checkpoint is written and the segment deleted
	 * on the full disk */
	spool_ack(sp, 1, 20);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	CU_ASSERT_EQUAL(file_size(seg1), -1);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.queued_events, 0);

	/* space comes back: appends are taken again by themselves */
	CU_ASSERT_EQUAL(unlink(filler), 0);
	usleep(150000);			/* the next free-space look */
	CU_ASSERT_EQUAL(append_n(sp, 30, 200), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	CU_ASSERT_EQUAL(read_all(sp, 0, 64, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 30);
	CU_ASSERT_EQUAL(ra.bad, 0);
	spool_close(sp);
	spool_set_free(set);

	/* the files are clean: the dropped records are done, not damage */
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "e");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.recovered, 30);
	CU_ASSERT_EQUAL(st.corrupt, 0);
	CU_ASSERT_EQUAL(st.truncated_bytes, 0);
	CU_ASSERT_EQUAL(st.dropped_full, lost);	/* carried over */
	CU_ASSERT_EQUAL(st.queued_events, 30);
	CU_ASSERT_EQUAL(read_all(sp, 0, 64, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 30);
	CU_ASSERT_EQUAL(ra.bad, 0);
	spool_close(sp);
	spool_set_free(set);
	CU_ASSERT_EQUAL(umount(mnt), 0);
	g_mnt[0] = 0;
}

/* A write that fails for lack of space while more was appended behind
 * the flush: the flush's records are dropped (dropped_full, in the
 * checkpoint), those appended after it started are refusals (counted
 * with the next flush's ring range), and after a restart no seq of the
 * dropped ones is given again: a new record is delivered, not taken for
 * one of them (it was, and never delivered: lost). */
static void t_enospc_behind_flush(void)
{
	char mnt[256], dir[300], filler[320];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct waitf w = { 0 };
	struct spool *sp;
	uint64_t next;

	if (mount_small(mnt, sizeof(mnt), "mnt2"))
		return;
	snprintf(dir, sizeof(dir), "%s/spool", mnt);
	snprintf(filler, sizeof(filler), "%s/filler", mnt);
	o = opts(dir);
	o.disk_reserve = 64 * 1024;
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "b");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 10, 2000), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	/* a flush of 5 is on its way (it needs new pages) when someone
	 * takes the space; 3 more come in behind it */
	CU_ASSERT_EQUAL(append_n(sp, 5, 2000), 0);
	CU_ASSERT_EQUAL(flush_mark_start(set, 15, &w), 0);
	fill_fs(filler);
	CU_ASSERT_EQUAL(append_n(sp, 3, 2000), 0);
	CU_ASSERT_EQUAL(rx_run_until(&g_rx, &w.done, 10 * SEC), 0);
	CU_ASSERT_EQUAL(w.err, 0);		/* not a stall */
	/* the journal (linked or not) is written after the rewind */
	CU_ASSERT_EQUAL(jr_pos_on_disk(dir), 15);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.dropped_full, 5);
	CU_ASSERT_EQUAL(st.refused_full, 3);
	next = spool_next_seq(sp);
	CU_ASSERT_EQUAL(next, 19);
	spool_close(sp);
	spool_set_free(set);
	CU_ASSERT_EQUAL(unlink(filler), 0);

	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "b");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT(spool_next_seq(sp) >= next);
	CU_ASSERT_EQUAL(append_n(sp, 1, 2000), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	CU_ASSERT_EQUAL(read_all(sp, 0, 64, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 11);		/* the 10, and the new one */
	CU_ASSERT_EQUAL(ra.bad, 0);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.dropped_full, 5);	/* carried over */
	CU_ASSERT_EQUAL(st.corrupt, 0);
	spool_close(sp);
	spool_set_free(set);
	CU_ASSERT_EQUAL(umount(mnt), 0);
	g_mnt[0] = 0;
}

/* ---- the linked flush (issue 17: one wake-up per flush) ---------------- */

/* A new set in a new directory, with 1 MiB segments (no rollover). */
static struct spool_set *big_seg_set(char *dir, size_t len, const char *tag,
				     struct spool_set_opts *o)
{
	struct spool_set *set;

	new_dir(dir, len, tag);
	*o = opts(dir);
	o->segment_size = 1 << 20;
	set = spool_set_new(&g_rx, o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	return set;
}

/* Reopens sink `name` of o's spool: n records, every one read back from
 * disk and intact. */
static void reread(const struct spool_set_opts *o, const char *name,
		   uint64_t n)
{
	struct spool_set *set = spool_set_new(&g_rx, o);
	struct readall ra = { 0 };
	struct spool *sp;

	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, name);
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(read_all(sp, 0, 64, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, n);
	CU_ASSERT_EQUAL(ra.bad, 0);
	CU_ASSERT(ra.disk > 0);
	spool_close(sp);
	spool_set_free(set);
}

/* A flush of one sink with a mark wakes the reactor once: the journal is
 * linked behind the data write, whose own CQE is skipped on success, and
 * the callback runs from the journal's completion (no NOP). The old
 * two-phase flush took three completions (write, journal, NOP). A flush
 * of two sinks (two writes: the unlinked path) still journals after both.
 * Reopened, every record reads back from disk and the journal holds the
 * last mark. */
static void t_flush_one_wakeup(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool *sp, *sp2;
	struct spool_mark m;
	uint64_t c0, pos = 0;
	int i;

	set = big_seg_set(dir, sizeof(dir), "onewake", &o);
	sp = spool_open(set, "a");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	for (i = 0; i < 5; i++) {
		CU_ASSERT_EQUAL(append_n(sp, 30, 0), 0);
		pos += 30;
		c0 = g_rx.completions;
		CU_ASSERT_EQUAL(flush_mark_wait(set, pos), 0);
		CU_ASSERT_EQUAL(g_rx.completions - c0, 1);
		CU_ASSERT_EQUAL(jr_pos_on_disk(dir), pos);
	}
	/* nothing appended: the journal alone, one completion too */
	c0 = g_rx.completions;
	CU_ASSERT_EQUAL(flush_mark_wait(set, ++pos), 0);
	CU_ASSERT_EQUAL(g_rx.completions - c0, 1);
	CU_ASSERT_EQUAL(jr_pos_on_disk(dir), pos);
	/* two sinks, two writes: the two-phase path */
	sp2 = spool_open(set, "b");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp2);
	CU_ASSERT_EQUAL(append_n(sp, 10, 0), 0);
	CU_ASSERT_EQUAL(append_n(sp2, 10, 0), 0);
	pos += 20;
	CU_ASSERT_EQUAL(flush_mark_wait(set, pos), 0);
	CU_ASSERT_EQUAL(jr_pos_on_disk(dir), pos);
	spool_close(sp2);
	spool_close(sp);
	spool_set_free(set);

	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	CU_ASSERT_EQUAL(spool_set_loaded_mark(set, &m), 1);
	CU_ASSERT_EQUAL(m.ring_pos, pos);
	spool_set_free(set);
	reread(&o, "a", 160);
}

/* A file size limit the test moves: the writes beyond it are short, or
 * fail with EFBIG (SIGXFSZ ignored). io-wq workers are threads of this
 * process and share its limits. */
static struct rlimit g_fsize;

static void fsize_limit(rlim_t cur)
{
	struct rlimit rl = g_fsize;

	rl.rlim_cur = cur;
	CU_ASSERT_EQUAL_FATAL(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static void fsize_restore(void)
{
	CU_ASSERT_EQUAL(setrlimit(RLIMIT_FSIZE, &g_fsize), 0);
	signal(SIGXFSZ, SIG_DFL);
}

/* A short data write in a linked flush: the kernel cancels the linked
 * journal (no CQE for it), the rest of the data is written again, and
 * only then the journal: after the short write the journal on disk still
 * holds the previous mark; at the end every record is on disk and the
 * journal holds the new one. */
static void t_flush_short_write(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool *sp;
	struct waitf w;

	set = big_seg_set(dir, sizeof(dir), "short", &o);
	sp = spool_open(set, "s");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 1, 2000), 0);
	CU_ASSERT_EQUAL(flush_mark_wait(set, 1), 0);
	CU_ASSERT_EQUAL(jr_pos_on_disk(dir), 1);
	/* ~80 KB in one writev; the limit cuts it at 40000 (the journal,
	 * 2 x 16 KiB, stays below it) */
	CU_ASSERT_EQUAL(append_n(sp, 40, 2000), 0);
	CU_ASSERT_EQUAL_FATAL(getrlimit(RLIMIT_FSIZE, &g_fsize), 0);
	signal(SIGXFSZ, SIG_IGN);
	fsize_limit(40000);
	CU_ASSERT_EQUAL(flush_mark_start(set, 41, &w), 0);
	CU_ASSERT(rx_run(&g_rx, 10 * SEC) >= 1);	/* the short write */
	CU_ASSERT_EQUAL(w.done, 0);
	CU_ASSERT_EQUAL(jr_pos_on_disk(dir), 1);	/* not claimed yet */
	fsize_restore();
	CU_ASSERT_EQUAL(rx_run_until(&g_rx, &w.done, 10 * SEC), 0);
	CU_ASSERT_EQUAL(w.err, 0);
	CU_ASSERT_EQUAL(jr_pos_on_disk(dir), 41);
	spool_close(sp);
	spool_set_free(set);
	reread(&o, "s", 41);
}

/* After a failed flush (the journal still at 20): the next flush writes
 * records 21..25 and moves the journal to 25; closed, all 25 reread. */
static void flush_again_25(const char *dir, struct spool_set *set,
			   struct spool *sp, const struct spool_set_opts *o)
{
	CU_ASSERT_EQUAL(flush_mark_wait(set, 25), 0);
	CU_ASSERT_EQUAL(jr_pos_on_disk(dir), 25);
	spool_close(sp);
	spool_set_free(set);
	reread(o, "s", 25);
}

/* A data write that fails (EFBIG: not a full disk) fails the flush, and
 * the journal never claims its records: it keeps the previous mark. The
 * data stays in memory and the next flush writes it, then the journal. */
static void t_flush_failed_write(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool *sp;
	struct spool_stats st;
	uint64_t c0;

	set = big_seg_set(dir, sizeof(dir), "efbig", &o);
	sp = spool_open(set, "s");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 20, 2000), 0);	/* ~40 KB */
	CU_ASSERT_EQUAL(flush_mark_wait(set, 20), 0);
	CU_ASSERT_EQUAL(append_n(sp, 5, 2000), 0);
	CU_ASSERT_EQUAL_FATAL(getrlimit(RLIMIT_FSIZE, &g_fsize), 0);
	signal(SIGXFSZ, SIG_IGN);
	fsize_limit(36000);	/* below the segment's end, above the journal */
	c0 = g_rx.completions;
	CU_ASSERT_EQUAL(flush_mark_wait(set, 25), -EFBIG);
	CU_ASSERT_EQUAL(g_rx.completions - c0, 1);	/* the write's CQE */
	CU_ASSERT_EQUAL(jr_pos_on_disk(dir), 20);
	fsize_restore();
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.write_errors, 1);
	flush_again_25(dir, set, sp, &o);
}

/* -Wl,--wrap=calloc (GNUmakefile): g_calloc_fail = 1 makes the next
 * calloc of the spool (and of this file) fail once. */
static int g_calloc_fail;
void *__real_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size);

void *__wrap_calloc(size_t n, size_t size)
{
	if (g_calloc_fail) {
		g_calloc_fail = 0;
		errno = ENOMEM;
		return NULL;
	}
	return __real_calloc(n, size);
}

/* A flush that cannot allocate its write fails: the drain journal keeps
 * the previous mark (the records are in memory only, the ring must keep
 * them), and the next flush writes them and moves the mark. Before, the
 * journal claimed them while they stayed pending: a crash then lost
 * them. */
static void t_flush_nomem(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool *sp;

	set = big_seg_set(dir, sizeof(dir), "nomem", &o);
	sp = spool_open(set, "s");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 20, 2000), 0);
	CU_ASSERT_EQUAL(flush_mark_wait(set, 20), 0);
	CU_ASSERT_EQUAL(append_n(sp, 5, 2000), 0);
	g_calloc_fail = 1;
	CU_ASSERT_EQUAL(flush_mark_wait(set, 25), -ENOMEM);
	CU_ASSERT_EQUAL(g_calloc_fail, 0);	/* the flush's calloc failed */
	CU_ASSERT_EQUAL(jr_pos_on_disk(dir), 20);
	flush_again_25(dir, set, sp, &o);
}

/* -Wl,--wrap=rx_reserve (GNUmakefile): while g_reserve_fail is set the
 * submission queue "has no room" for a chain. */
static int g_reserve_fail;
int __real_rx_reserve(struct rx *rx, unsigned n);
int __wrap_rx_reserve(struct rx *rx, unsigned n);

int __wrap_rx_reserve(struct rx *rx, unsigned n)
{
	return g_reserve_fail ? -EBUSY : __real_rx_reserve(rx, n);
}

/* The generation of the newest slot of a checkpoint file. */
static uint64_t ck_gen_on_disk(const char *path)
{
	size_t len = 0;
	uint8_t *img = slurp_u8(path, &len);
	uint64_t g = 0;

	if (img && len >= 2 * SPF_CK_SLOT)
		memcpy(&g, img + ck_newest_slot(img) * SPF_CK_SLOT + 8, 8);
	free(img);
	return g;
}

/* With durability = fdatasync a checkpoint is a write and its linked
 * fdatasync, submitted together. When the queue cannot take both, the
 * checkpoint waits and is retried: before, the chain was split (the sync
 * could run apart from, or before, its write), and the checkpoint went
 * out at once. */
static void t_checkpoint_no_room(void)
{
	char dir[256], ck[512];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool *sp;
	uint64_t gen;
	int done = 0;

	new_dir(dir, sizeof(dir), "ckroom");
	o = opts(dir);
	o.durability = DUR_FDATASYNC;
	sp = ck_open(&o, &set);
	CU_ASSERT_EQUAL(append_n(sp, 30, 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_ack(sp, 1, 10);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	snprintf(ck, sizeof(ck), "%s/c/checkpoint", dir);
	gen = ck_gen_on_disk(ck);
	CU_ASSERT(gen > 0);

	g_reserve_fail = 1;
	spool_ack(sp, 11, 10);		/* schedules a checkpoint */
	rx_run_until(&g_rx, &done, 50000000ull);
	CU_ASSERT_EQUAL(ck_gen_on_disk(ck), gen);	/* not split: waits */
	g_reserve_fail = 0;
	rx_run_until(&g_rx, &done, 200000000ull);
	CU_ASSERT_EQUAL(ck_gen_on_disk(ck), gen + 1);	/* retried */
	spool_close(sp);
	spool_set_free(set);
	sp = ck_open(&o, &set);
	CU_ASSERT_EQUAL(spool_acked(sp), 21);
	spool_close(sp);
	spool_set_free(set);
}

static int seg_filter(const struct dirent *de)
{
	return !strncmp(de->d_name, "seg-", 4) && strlen(de->d_name) == 24;
}

/* Damage after the spool was opened: a segment file deleted behind its
 * back, a record rotting on disk. Reads skip and count them, and the
 * watermark still gets past them. */
static void t_runtime_damage(void)
{
	char dir[256], sdir[300], path[600];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct dirent **names;
	uint64_t first[8], seqs[400];
	struct spool *sp;
	int i, n, fd;
	uint8_t x;

	new_dir(dir, sizeof(dir), "rtdamage");
	o = opts(dir);
	o.segment_size = 4096;
	o.tail_buffer = 4096;
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "z");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	for (i = 0; i < 15; i++) {
		CU_ASSERT_EQUAL(append_n(sp, 20, 0), 0);
		CU_ASSERT_EQUAL(flush_wait(set), 0);
	}
	snprintf(sdir, sizeof(sdir), "%s/z", dir);
	n = scandir(sdir, &names, seg_filter, alphasort);
	CU_ASSERT_FATAL(n >= 4 && n <= 8);
	for (i = 0; i < n; i++) {
		first[i] = strtoull(names[i]->d_name + 4, NULL, 16);
		free(names[i]);
	}
	free(names);
	/* segment 2 disappears; segment 3 loses its first record */
	seg_path(path, sizeof(path), dir, "z", first[1]);
	CU_ASSERT_EQUAL(unlink(path), 0);
	seg_path(path, sizeof(path), dir, "z", first[2]);
	fd = open(path, O_RDWR);
	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(pread(fd, &x, 1, SEG_HDR + FRAME_HDR + 5), 1);
	x ^= 0x10;
	CU_ASSERT_EQUAL(pwrite(fd, &x, 1, SEG_HDR + FRAME_HDR + 5), 1);
	close(fd);

	ra.seqs = seqs;
	ra.cap = 400;
	CU_ASSERT_EQUAL(read_all(sp, 0, 16, &ra), 0);
	CU_ASSERT_EQUAL(ra.bad, 0);
	CU_ASSERT_EQUAL(ra.first, 1);
	CU_ASSERT_EQUAL(ra.last, 300);
	CU_ASSERT_EQUAL(ra.n, 300 - (first[2] - first[1]) - 1);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.corrupt, first[2] - first[1] + 1);
	for (i = 0; i < (int)ra.n; i++)
		spool_ack(sp, seqs[i], 1);
	CU_ASSERT_EQUAL(spool_acked(sp), 301);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	CU_ASSERT_EQUAL(count_files(sdir, "seg-"), 1);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.queued_events, 0);
	/* a second pass counts nothing twice */
	CU_ASSERT_EQUAL(read_all(sp, 0, 16, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 0);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.corrupt, first[2] - first[1] + 1);

	/* the very last records rot after the open: a read finds nothing,
	 * and b.next says where to go on (no busy loop on them) */
	{
		struct spool *y = spool_open(set, "y");
		struct spool_batch b;
		off_t sz;

		CU_ASSERT_PTR_NOT_NULL_FATAL(y);
		CU_ASSERT_EQUAL(append_n(y, 50, 40), 0);	/* 64 B frames */
		CU_ASSERT_EQUAL(flush_wait(set), 0);
		spool_close(y);
		y = spool_open(set, "y");			/* nothing in RAM */
		CU_ASSERT_PTR_NOT_NULL_FATAL(y);
		seg_path(path, sizeof(path), dir, "y", 1);
		sz = file_size(path);
		CU_ASSERT_EQUAL(sz, SEG_HDR + 50 * 64);
		fd = open(path, O_RDWR);
		CU_ASSERT_FATAL(fd >= 0);
		CU_ASSERT_EQUAL(pwrite(fd, "XX", 2, sz - 20), 2);
		close(fd);
		spool_batch_init(&b);
		CU_ASSERT_EQUAL(read_batch(y, 45, 100, 100000, &b), 2);
		CU_ASSERT_EQUAL(b.n, 5);
		CU_ASSERT_EQUAL(b.next, 50);
		CU_ASSERT_EQUAL(read_batch(y, b.next, 100, 100000, &b), 2);
		CU_ASSERT_EQUAL(b.n, 0);
		CU_ASSERT_EQUAL(b.next, 51);
		CU_ASSERT_EQUAL(spool_visible(y), 51);
		spool_get_stats(y, &st);
		CU_ASSERT_EQUAL(st.corrupt, 1);
		/* below the watermark: skipped, next says so */
		spool_ack(y, 1, 10);
		CU_ASSERT_EQUAL(read_batch(y, 3, 2, 100000, &b), 2);
		CU_ASSERT_EQUAL(b.recs[0].seq, 11);
		CU_ASSERT_EQUAL(b.next, 13);
		spool_batch_free(&b);
		spool_close(y);
	}
	spool_close(sp);
	spool_set_free(set);
}

/* The child of t_sigkill: appends, flushes, acks and rolls segments as
 * fast as it can, reporting after each flush what is durable and what is
 * acknowledged, until it is SIGKILLed at some arbitrary instruction. */
static void sigkill_child(const struct spool_set_opts *o, int wfd)
{
	struct rx rx;
	struct spool_set *set;
	struct spool *sp;
	uint8_t buf[256];

	if (rx_init(&rx, 128))
		_exit(2);
	set = spool_set_new(&rx, o);
	sp = set ? spool_open(set, "k") : NULL;
	if (!sp)
		_exit(3);
	for (;;) {
		struct waitf w = { 0 };
		uint64_t rep[2];
		int i;

		for (i = 0; i < 40; i++) {
			uint64_t id = spool_next_seq(sp);

			rec_fill(buf, id, rec_len(id));
			if (spool_append(sp, buf, rec_len(id)))
				break;
		}
		if (spool_set_flush(set, wait_cb, &w) ||
		    rx_run_until(&rx, &w.done, 5 * SEC) || w.err)
			_exit(4);
		/* deliver (ack) all but the newest 30 */
		if (spool_visible(sp) > spool_acked(sp) + 30)
			spool_ack(sp, spool_acked(sp),
				  spool_visible(sp) - 30 - spool_acked(sp));
		rep[0] = spool_visible(sp);
		rep[1] = spool_acked(sp);
		if (write(wfd, rep, sizeof(rep)) != sizeof(rep))
			_exit(5);
	}
}

/* SIGKILL at arbitrary points of appends, flushes, rollovers,
 * checkpoints and deletions: the restart finds everything that was
 * durable, nothing corrupt, a watermark that is never ahead of the acks,
 * and contiguous, intact records from it. */
static void t_sigkill(void)
{
	int round;

	for (round = 0; round < 6; round++) {
		char dir[256];
		struct spool_set_opts o;
		struct spool_set *set;
		struct spool_stats st;
		struct readall ra = { 0 };
		struct spool *sp;
		uint64_t rep[2] = { 0, 0 }, last[2] = { 0, 0 };
		int pfd[2], wst;
		pid_t pid;

		new_dir(dir, sizeof(dir), "kill");
		o = opts(dir);
		o.segment_size = 8192;
		o.durability = round % 2 ? DUR_FDATASYNC : DUR_WRITE;
		o.sync_interval_ms = 5;
		CU_ASSERT_FATAL(pipe(pfd) == 0);
		pid = fork();
		CU_ASSERT_FATAL(pid >= 0);
		if (pid == 0) {
			close(pfd[0]);
			sigkill_child(&o, pfd[1]);
		}
		close(pfd[1]);
		/* let it get going (a loaded machine may be slow), then
		 * kill it at some arbitrary later point */
		while (last[0] <= 200 &&
		       read(pfd[0], rep, sizeof(rep)) == sizeof(rep))
			memcpy(last, rep, sizeof(rep));
		usleep(20000 + 30000 * (useconds_t)round);
		kill(pid, SIGKILL);
		CU_ASSERT_EQUAL(waitpid(pid, &wst, 0), pid);
		CU_ASSERT(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL);
		while (read(pfd[0], rep, sizeof(rep)) == sizeof(rep))
			memcpy(last, rep, sizeof(rep));
		close(pfd[0]);
		CU_ASSERT(last[0] > 200);	/* it did run for a while */

		set = spool_set_new(&g_rx, &o);
		CU_ASSERT_PTR_NOT_NULL_FATAL(set);
		sp = spool_open(set, "k");
		CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
		spool_get_stats(sp, &st);
		CU_ASSERT_EQUAL(st.corrupt, 0);
		CU_ASSERT(spool_next_seq(sp) >= last[0]);
		CU_ASSERT(spool_acked(sp) >= 1);
		/* never ahead of what was acknowledged when it died (the
		 * last report may be one flush behind) */
		CU_ASSERT(spool_acked(sp) <= last[1] + 40 * 2);
		CU_ASSERT_EQUAL(read_all(sp, 0, 100, &ra), 0);
		CU_ASSERT_EQUAL(ra.bad, 0);
		CU_ASSERT_EQUAL(ra.first, spool_acked(sp));
		CU_ASSERT_EQUAL(ra.last, spool_next_seq(sp) - 1);
		CU_ASSERT_EQUAL(ra.n, ra.last - ra.first + 1);
		CU_ASSERT_EQUAL(st.recovered, ra.n);
		spool_close(sp);
		spool_set_free(set);
	}
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(uint64_t n)
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 7;
	g_rng ^= g_rng << 17;
	return n ? g_rng % n : 0;
}

/* Random damage to the segment files, many times over: the spool always
 * opens, delivers only intact records, in order, once, counts what it
 * lost, lets the watermark reach the end, and takes appends again. */
static void t_random_damage(void)
{
	char base[256], dir[256], sdir[300], path[600];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool *sp;
	struct dirent **names;
	uint8_t *img[16], *ck;
	size_t len[16], cklen;
	char fname[16][32];
	int nf, i, iter, iters, fails = 0;

	new_dir(base, sizeof(base), "rndbase");
	o = opts(base);
	o.segment_size = 8192;
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "q");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 300, 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_close(sp);		/* checkpoint: acked 1, next_seq 301 */
	spool_set_free(set);
	snprintf(sdir, sizeof(sdir), "%s/q", base);
	nf = scandir(sdir, &names, seg_filter, alphasort);
	CU_ASSERT_FATAL(nf >= 2 && nf <= 16);
	for (i = 0; i < nf; i++) {
		memcpy(fname[i], names[i]->d_name, 25);	/* seg_filter: 24 */
		snprintf(path, sizeof(path), "%s/%s", sdir, fname[i]);
		img[i] = slurp_u8(path, &len[i]);
		CU_ASSERT_PTR_NOT_NULL_FATAL(img[i]);
		free(names[i]);
	}
	free(names);
	snprintf(path, sizeof(path), "%s/checkpoint", sdir);
	ck = slurp_u8(path, &cklen);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ck);

	/* OBX_RND_ITERS=3000 for a longer soak */
	iters = getenv("OBX_RND_ITERS") ? atoi(getenv("OBX_RND_ITERS")) : 150;
	for (iter = 0; iter < iters; iter++) {
		struct spool_stats st;
		struct readall ra = { 0 };
		uint64_t seqs[400], n_read, first_read;
		int nmut = 1 + (int)rnd(4), m;
		bool ok = true;

		new_dir(dir, sizeof(dir), "rnd");
		snprintf(sdir, sizeof(sdir), "%s/q", dir);
		CU_ASSERT_FATAL(mkdir(dir, 0700) == 0 && mkdir(sdir, 0700) == 0);
		snprintf(path, sizeof(path), "%s/checkpoint", sdir);
		CU_ASSERT_FATAL(spit(path, ck, cklen) == 0);
		for (i = 0; i < nf; i++) {
			uint8_t *copy = malloc(len[i] + 4096);
			size_t l = len[i];

			memcpy(copy, img[i], l);
			for (m = 0; m < nmut; m++) {
				uint64_t kind = rnd(10), at = rnd(l ? l : 1);

				if (rnd(nf) != (uint64_t)i)
					continue;	/* mostly one file */
				if (kind < 4 && l) {
					copy[at] ^= (uint8_t)(1 + rnd(255));
				} else if (kind < 6 && l) {
					size_t n = 1 + rnd(200);

					memset(copy + at, (int)rnd(256),
					       at + n > l ? l - at : n);
				} else if (kind < 8) {
					l = at;			/* cut */
				} else if (kind < 9) {
					size_t n = 1 + rnd(300), k;

					for (k = 0; k < n; k++)
						copy[l + k] = (uint8_t)rnd(256);
					l += n;			/* garbage */
				} else {
					l = (size_t)-1;		/* deleted */
					break;
				}
			}
			snprintf(path, sizeof(path), "%s/%s", sdir, fname[i]);
			if (l != (size_t)-1)
				CU_ASSERT_FATAL(spit(path, copy, l) == 0);
			free(copy);
		}

		o.dir = dir;
		set = spool_set_new(&g_rx, &o);
		CU_ASSERT_PTR_NOT_NULL_FATAL(set);
		sp = spool_open(set, "q");
		CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
		ra.seqs = seqs;
		ra.cap = 400;
		ok &= read_all(sp, 0, 1 + (uint32_t)rnd(60), &ra) == 0;
		spool_get_stats(sp, &st);
		n_read = ra.n;
		first_read = ra.first;
		ok &= ra.bad == 0 && ra.n <= 300;
		ok &= ra.n == 0 || ra.last <= 300;
		/* every record is delivered or counted lost, exactly */
		ok &= ra.n + st.corrupt == 300;
		ok &= st.recovered == ra.n;
		for (i = 0; i < (int)ra.n; i++)
			spool_ack(sp, seqs[i], 1);
		ok &= spool_acked(sp) == spool_next_seq(sp);
		ok &= spool_next_seq(sp) == 301;
		/* and it goes on */
		ok &= append_n(sp, 5, 0) == 0;
		ok &= flush_wait(set) == 0;
		ok &= read_all(sp, 0, 100, &ra) == 0 && ra.n == 5 && !ra.bad;
		if (getenv("OBX_TEST_VERBOSE"))
			printf("\n  iter %d: n=%" PRIu64 " first=%" PRIu64
			       " corrupt=%" PRIu64 " trunc=%" PRIu64 " foreign=%"
			       PRIu64 " next=%" PRIu64, iter, n_read, first_read,
			       st.corrupt, st.truncated_bytes, st.foreign,
			       spool_next_seq(sp));
		if (!ok && fails++ < 5)
			printf("\n  random damage iteration %d failed (rng "
			       "%" PRIx64 "), kept in %s: n=%" PRIu64 " first=%"
			       PRIu64 " last=%" PRIu64 " bad=%" PRIu64
			       " corrupt=%" PRIu64 " acked=%" PRIu64 " next=%"
			       PRIu64 "\n", iter, g_rng, dir, ra.n, ra.first,
			       ra.last, ra.bad, st.corrupt, spool_acked(sp),
			       spool_next_seq(sp));
		spool_close(sp);
		spool_set_free(set);
		if (ok)
			rm_rf(dir);
	}
	CU_ASSERT_EQUAL(fails, 0);
	for (i = 0; i < nf; i++)
		free(img[i]);
	free(ck);
}

/* the format's CRC-32C: the standard check value, hardware = tables =
 * a bit-at-a-time reference, at every length and alignment, chained */
static uint32_t crc32c_ref(const uint8_t *p, size_t n)
{
	uint32_t c = 0xffffffffu;
	size_t i;
	int k;

	for (i = 0; i < n; i++) {
		c ^= p[i];
		for (k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
	}
	return ~c;
}

static void t_crc32c(void)
{
	static uint8_t buf[1300];
	size_t off, n, cut;
	int bad = 0;

	CU_ASSERT_EQUAL(spool_crc32c(0, "123456789", 9), 0xe3069283u);
	CU_ASSERT_EQUAL(spool_crc32c_sw(0, "123456789", 9), 0xe3069283u);
	CU_ASSERT_EQUAL(spool_crc32c(0, "", 0), 0);
	for (n = 0; n < sizeof(buf); n++)
		buf[n] = (uint8_t)rnd(256);
	for (off = 0; off < 8; off++)
		/* every length across the 3 x 64-byte chunks of the
		 * hardware path (spool_format.c), then sparser */
		for (n = 0; n + off <= 1290; n += n < 800 ? 1 : 7) {
			uint32_t want = crc32c_ref(buf + off, n);

			cut = n / 3;
			bad += spool_crc32c(0, buf + off, n) != want;
			bad += spool_crc32c_sw(0, buf + off, n) != want;
			bad += spool_crc32c(spool_crc32c(0, buf + off, cut),
					    buf + off + cut, n - cut) != want;
		}
	CU_ASSERT_EQUAL(bad, 0);
}

static void fmt_str(FILE *out, const uint8_t *p, uint32_t n)
{
	fprintf(out, "<%u>", n);
}

static void t_offline_tools(void)
{
	char dir[256], *out = NULL;
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool *sp;
	size_t outlen = 0;
	FILE *mf;
	int lines = 0;
	char *p;

	new_dir(dir, sizeof(dir), "tools");
	o = opts(dir);
	o.segment_size = 2048;
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "a");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 50, 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_close(sp);
	sp = spool_open(set, "b");
	CU_ASSERT_EQUAL(append_n(sp, 5, 4), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_close(sp);
	/* a name the config accepts (dots are name characters) */
	sp = spool_open(set, ".c");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 2, 4), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_close(sp);
	spool_set_free(set);

	mf = open_memstream(&out, &outlen);
	CU_ASSERT_EQUAL(spool_verify(dir, mf), 0);
	fclose(mf);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "a: 50 records, 0 problems"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "b: 5 records, 0 problems"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, ".c: 2 records, 0 problems"));
	free(out);

	mf = open_memstream(&out, &outlen);
	CU_ASSERT_EQUAL(spool_ls(dir, mf), 0);
	fclose(mf);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "seg-0000000000000001.obx"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "checkpoint acked=1 next_seq=51"));
	free(out);

	mf = open_memstream(&out, &outlen);
	CU_ASSERT_EQUAL(spool_dump(dir, "b", mf, NULL), 0);
	fclose(mf);
	for (p = out; (p = strchr(p, '\n')); p++)
		lines++;
	CU_ASSERT_EQUAL(lines, 5);
	/* seq 1, 4 bytes, hex of rec_fill(1): 83 8a 91 98 */
	CU_ASSERT(strncmp(out, "b 1 4 838a9198\n", 15) == 0);
	free(out);

	mf = open_memstream(&out, &outlen);
	CU_ASSERT_EQUAL(spool_dump(dir, NULL, mf, fmt_str), 0);
	fclose(mf);
	lines = 0;
	for (p = out; (p = strchr(p, '\n')); p++)
		lines++;
	CU_ASSERT_EQUAL(lines, 57);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "a 50 "));
	free(out);
	CU_ASSERT_EQUAL(spool_dump(dir, "nosuch", stdout, NULL), -ENOENT);
}

/* Memory stays bounded whatever the backlog: the sparse index and the
 * recent buffer do not grow per record. */
static void t_bounded_memory(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct spool *sp;
	int i;

	new_dir(dir, sizeof(dir), "bounded");
	o = opts(dir);
	o.segment_size = 1 << 20;
	o.tail_buffer = 64 * 1024;
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "m");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	for (i = 0; i < 200; i++) {
		int r = append_n(sp, 200, 100);

		CU_ASSERT_EQUAL_FATAL(r, 0);
		CU_ASSERT_EQUAL_FATAL(flush_wait(set), 0);
	}
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.queued_events, 40000);
	CU_ASSERT(st.bytes > 40000 * 128);
	/* 5 MB of backlog, ~150 KB of RAM: the recent buffer (64 KiB),
	 * a block, one index entry per 128 KiB */
	CU_ASSERT(st.mem_bytes < 3 * 64 * 1024);
	CU_ASSERT(st.mem_bytes > 0);
	/* a record that does not fit the unwritten budget: back-pressure,
	 * not a stall */
	{
		static uint8_t rec[40000];
		int r;

		for (i = 0; i < 3; i++)
			r = spool_append(sp, rec, sizeof(rec));
		CU_ASSERT_EQUAL(r, -EAGAIN);
		CU_ASSERT_EQUAL(spool_set_stalled(set), 0);
		CU_ASSERT_EQUAL(flush_wait(set), 0);
		CU_ASSERT_EQUAL(spool_append(sp, rec, sizeof(rec)), 0);
		CU_ASSERT_EQUAL(flush_wait(set), 0);
	}
	spool_close(sp);
	spool_set_free(set);
}

/* Regression guard for "spool full while everything is delivered": a
 * producer and a delivery engine that holds its batches the way
 * broker/sink.c does (SINK_MAX_INFLIGHT-like slots of struct spool_batch,
 * reused round robin, one spool_read at a time, acks out of order) cycle
 * many times spool_max through a small spool. Acknowledged segments must
 * leave the cap accounting (once their checkpoint is durable, i.e. within
 * ~100 ms while the reactor runs), so drop-newest never refuses an append
 * while the undelivered backlog is far below spool_max. */
#define CYC_SLOTS	4
#define CYC_REC		100
#define CYC_FRAME	(FRAME_HDR + CYC_REC + 4)	/* 8-aligned */

static void t_cap_cycles_delivered(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct spool_batch slot[CYC_SLOTS];
	uint64_t first[CYC_SLOTS], end[CYC_SLOTS];
	bool held[CYC_SLOTS] = { false };
	uint64_t read_seq = 1, delivered = 0, appended = 0, target, max_seen = 0;
	uint64_t expect = 1, t0 = tu_now_ns();
	const uint64_t cap = 256 * 1024;
	struct spool *sp;
	int enospc = 0, stuck = 0, bad = 0, disk = 0, k = 0, i, round = 0;

	new_dir(dir, sizeof(dir), "capcyc");
	o = opts(dir);
	o.segment_size = 16 * 1024;
	o.max_bytes = cap;
	o.tail_buffer = 32 * 1024;	/* most reads come from the files */
	o.full = SPOOL_DROP_NEWEST;
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "cyc");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	for (i = 0; i < CYC_SLOTS; i++)
		spool_batch_init(&slot[i]);
	target = 16 * cap / CYC_FRAME;	/* 16 x spool_max through */
	while (delivered < target && !stuck && tu_now_ns() - t0 < 60 * SEC) {
		uint64_t backlog = spool_next_seq(sp) - spool_acked(sp);
		uint64_t wait_end;
		int n = 0;

		/* producer: keep the undelivered backlog at most spool_max/2;
		 * wait (running the reactor: checkpoint timer, deletions) while
		 * the cap has no room - it must get room back */
		wait_end = tu_now_ns() + 5 * SEC;
		while (appended < target &&
		       (backlog + 64) * CYC_FRAME <= cap / 2 && n < 64) {
			spool_set_get_stats(set, &st);
			if (st.bytes + CYC_FRAME + SEG_HDR > cap) {
				if (tu_now_ns() > wait_end) {
					stuck = 1;
					break;
				}
				rx_run(&g_rx, 5000000ull);
				continue;
			}
			if (append_n(sp, 1, CYC_REC) == -ENOSPC)
				enospc++;
			else
				appended++;
			backlog++;
			n++;
		}
		CU_ASSERT_EQUAL_FATAL(flush_wait(set), 0);
		spool_set_get_stats(set, &st);
		if (st.bytes > max_seen)
			max_seen = st.bytes;
		/* engine: one read into the next free slot, like sink.c */
		if (!held[k] && read_seq < spool_visible(sp)) {
			int r = read_batch(sp, read_seq, 40, 8192, &slot[k]);

			CU_ASSERT_FATAL(r > 0);
			disk += r == 2;
			if (slot[k].n) {
				first[k] = slot[k].recs[0].seq;
				end[k] = slot[k].recs[slot[k].n - 1].seq + 1;
				for (i = 0; i < (int)slot[k].n; i++) {
					const struct spool_rec *rc = &slot[k].recs[i];

					if (rc->seq != expect ||
					    !rec_ok(rc->data, rc->len, rc->seq))
						bad++;
					expect = rc->seq + 1;
				}
				held[k] = true;
			}
			read_seq = slot[k].next;
			k = (k + 1) % CYC_SLOTS;
		}
		/* acks: out of order, the slots stay allocated and are
		 * reused (never freed between batches) */
		round++;
		for (i = 0; i < CYC_SLOTS; i++) {
			int j = (round + i * 3) % CYC_SLOTS;

			if (!held[j] || (i == 0 && (round & 1)))
				continue;
			delivered += spool_ack_n(sp, first[j], end[j] - first[j]);
			held[j] = false;
			break;
		}
		rx_run(&g_rx, 0);
	}
	for (i = 0; i < CYC_SLOTS; i++) {
		if (held[i])
			delivered += spool_ack_n(sp, first[i],
						 end[i] - first[i]);
		spool_batch_free(&slot[i]);
	}
	CU_ASSERT_EQUAL(stuck, 0);
	CU_ASSERT_EQUAL(enospc, 0);
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT(disk > 0);
	CU_ASSERT_EQUAL(delivered, appended);
	CU_ASSERT(appended >= target);
	CU_ASSERT(max_seen <= cap);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.dropped_full, 0);
	CU_ASSERT_EQUAL(st.queued_events, 0);
	/* everything acknowledged: after a durable checkpoint only the
	 * active segment is left */
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	spool_get_stats(sp, &st);
	CU_ASSERT(st.segments <= 1);
	CU_ASSERT(st.bytes <= o.segment_size + CYC_FRAME);
	spool_set_get_stats(set, &st);
	CU_ASSERT(st.bytes <= o.segment_size + CYC_FRAME);
	{
		char sdir[300];

		snprintf(sdir, sizeof(sdir), "%s/cyc", dir);
		CU_ASSERT(count_files(sdir, "seg-") <= 1);
	}
	spool_close(sp);
	spool_set_free(set);
}

/* One flipped byte in a segment header costs no record: the name gives
 * the first seq, the frames (each with its own CRC) are scanned anyway,
 * the file counts in spool_bytes and is deleted once delivered. A file
 * with an intact header of another sink stays foreign. */
static void t_damaged_header(void)
{
	char dir[256], path[512], *out = NULL;
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_stats st;
	struct readall ra = { 0 };
	struct spool *sp;
	size_t outlen = 0;
	uint64_t bytes;
	FILE *mf;
	int fd;

	new_dir(dir, sizeof(dir), "hdrflip");
	o = opts(dir);
	o.segment_size = 4096;		/* several segments */
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "d");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT_EQUAL(append_n(sp, 150, 40), 0);	/* 64-byte frames */
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_get_stats(sp, &st);
	bytes = st.bytes;
	spool_close(sp);
	spool_set_free(set);

	/* the first segment holds seqs 1..62: flip a byte of its sink name
	 * (inside the header crc) */
	seg_path(path, sizeof(path), dir, "d", 1);
	fd = open(path, O_RDWR);
	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(pwrite(fd, "X", 1, 24), 1);
	close(fd);

	mf = open_memstream(&out, &outlen);
	CU_ASSERT_EQUAL(spool_verify(dir, mf), 1);	/* the header */
	fclose(mf);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "d: 150 records, 1 problems"));
	free(out);

	g_log_warn = 0;
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "d");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT(g_log_warn >= 1);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.recovered, 150);
	CU_ASSERT_EQUAL(st.corrupt, 0);
	CU_ASSERT_EQUAL(st.foreign, 0);
	CU_ASSERT_EQUAL(st.bytes, bytes);
	CU_ASSERT_EQUAL(spool_next_seq(sp), 151);
	CU_ASSERT_EQUAL(read_all(sp, 0, 40, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 150);
	CU_ASSERT_EQUAL(ra.first, 1);
	CU_ASSERT_EQUAL(ra.bad, 0);
	/* never appended to: new records go to a new segment */
	CU_ASSERT_EQUAL(append_n(sp, 5, 40), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	CU_ASSERT_EQUAL(read_all(sp, 0, 40, &ra), 0);
	CU_ASSERT_EQUAL(ra.n, 155);
	CU_ASSERT_EQUAL(ra.bad, 0);
	/* delivered: the damaged file goes like any other */
	spool_ack(sp, 1, 155);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
	CU_ASSERT_EQUAL(file_size(path), -1);
	spool_get_stats(sp, &st);
	CU_ASSERT_EQUAL(st.queued_events, 0);
	spool_close(sp);
	spool_set_free(set);
}

/* Records of zero bytes are records (found by fuzz_spool_recover: a
 * batch of only empty records handed a NULL buffer to memcpy). */
static void t_empty_records(void)
{
	char dir[256];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool_batch b;
	struct spool *sp;
	int i;

	new_dir(dir, sizeof(dir), "empty");
	o = opts(dir);
	set = spool_set_new(&g_rx, &o);
	sp = spool_open(set, "z");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	for (i = 0; i < 5; i++)
		CU_ASSERT_EQUAL(spool_append(sp, "", 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_batch_init(&b);
	CU_ASSERT_EQUAL(read_batch(sp, 0, 100, 1 << 20, &b), 1);
	CU_ASSERT_EQUAL(b.n, 5);
	for (i = 0; i < (int)b.n; i++) {
		CU_ASSERT_EQUAL(b.recs[i].len, 0);
		CU_ASSERT_PTR_NOT_NULL(b.recs[i].data);
	}
	spool_batch_free(&b);
	spool_close(sp);
	spool_set_free(set);
}

/* ---- hostile directories --------------------------------------------- */

static bool is_dir_0700_ours(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0 && S_ISDIR(st.st_mode) &&
	       st.st_uid == geteuid() && (st.st_mode & 07777) == 0700;
}

static bool file_is(const char *path, const char *content)
{
	size_t len;
	char *b = tu_read_file(path, &len);
	bool ok = b && len == strlen(content) && !memcmp(b, content, len);

	free(b);
	return ok;
}

/* Appends, acknowledges and checkpoints: everything that writes. */
static void exercise(struct spool_set *set, struct spool *sp)
{
	CU_ASSERT_EQUAL(append_n(sp, 10, 0), 0);
	CU_ASSERT_EQUAL(flush_wait(set), 0);
	spool_ack(sp, spool_acked(sp), 5);
	CU_ASSERT_EQUAL(spool_sync_ack(sp), 0);
}

/* Opens set and sink, expecting at least one warning (a directory
 * moved aside). */
static struct spool *open_warned(const struct spool_set_opts *o,
				 const char *sink, struct spool_set **set)
{
	struct spool *sp;

	g_log_warn = 0;
	*set = spool_set_new(&g_rx, o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(*set);
	sp = spool_open(*set, sink);
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	CU_ASSERT(g_log_warn >= 1);
	return sp;
}

/* A spool directory someone else made (another uid, mode 0777), a sink
 * directory with a wider mode, a symlink planted where the checkpoint
 * is written: never adopted, never followed. Each untrusted directory is
 * moved aside (kept for the operator, logged) and a fresh 0700 one made.
 * As root the directories are chown'ed to nobody; otherwise only the
 * mode is wrong. */
static void t_hostile_dirs(void)
{
	char dir[256], sdir[300], victim[300], link[400], aside[300];
	char aside2[400], target[400];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool *sp;
	bool root = geteuid() == 0;

	new_dir(dir, sizeof(dir), "hostile");
	snprintf(victim, sizeof(victim), "%s-victim", dir);
	CU_ASSERT_EQUAL_FATAL(spit(victim, "precious", 8), 0);
	snprintf(sdir, sizeof(sdir), "%s/h", dir);
	snprintf(link, sizeof(link), "%s/checkpoint.tmp", sdir);
	snprintf(aside, sizeof(aside), "%s~aside", dir);

	/* 1: the whole spool dir is someone else's, 0777 */
	CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0777), 0);
	CU_ASSERT_EQUAL_FATAL(mkdir(sdir, 0777), 0);
	chmod(dir, 0777);
	chmod(sdir, 0777);
	CU_ASSERT_EQUAL(symlink(victim, link), 0);
	if (root) {
		CU_ASSERT_EQUAL(lchown(link, 65534, 65534), 0);
		CU_ASSERT_EQUAL(chown(sdir, 65534, 65534), 0);
		CU_ASSERT_EQUAL(chown(dir, 65534, 65534), 0);
	}
	o = opts(dir);
	sp = open_warned(&o, "h", &set);
	CU_ASSERT(is_dir_0700_ours(dir));
	CU_ASSERT(is_dir_0700_ours(sdir));
	/* kept aside, untouched */
	snprintf(aside2, sizeof(aside2), "%s/h/checkpoint.tmp", aside);
	CU_ASSERT(readlink(aside2, target, sizeof(target)) > 0);
	/* the attacker plants the symlink again while we run (as in a
	 * directory they could write): the checkpoint must not follow it */
	unlink(link);
	CU_ASSERT_EQUAL(symlink(victim, link), 0);
	exercise(set, sp);
	CU_ASSERT(file_is(victim, "precious"));
	spool_close(sp);
	spool_set_free(set);
	CU_ASSERT(file_is(victim, "precious"));

	/* 2: our spool dir, but the sink dir's mode is wider than 0700 */
	chmod(sdir, 0755);
	sp = open_warned(&o, "h", &set);
	CU_ASSERT(is_dir_0700_ours(sdir));
	snprintf(aside2, sizeof(aside2), "%s/h~aside", dir);
	CU_ASSERT(lstat(aside2, &(struct stat){ 0 }) == 0);
	spool_close(sp);
	spool_set_free(set);

	/* 3: the spool dir is a symlink to somebody's directory */
	rm_rf(dir);
	rm_rf(aside);
	snprintf(aside2, sizeof(aside2), "%s-target", dir);
	CU_ASSERT_EQUAL(mkdir(aside2, 0700), 0);
	CU_ASSERT_EQUAL(symlink(aside2, dir), 0);
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	sp = spool_open(set, "h");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	exercise(set, sp);
	spool_close(sp);
	spool_set_free(set);
	CU_ASSERT(is_dir_0700_ours(dir));		/* not a symlink now */
	CU_ASSERT_EQUAL(count_files(aside2, ""), 2);	/* . and .. only */
	rm_rf(dir);
	rm_rf(aside);
	rm_rf(aside2);
	unlink(victim);
}

/* Start-up never stops because spool_dir or <spool_dir>/<sink> is a
 * regular file (a typo, a botched restore): it is moved aside, logged,
 * and the spool made. */
static void t_dirs_are_files(void)
{
	char dir[256], sdir[300], aside[320];
	struct spool_set_opts o;
	struct spool_set *set;
	struct spool *sp;

	new_dir(dir, sizeof(dir), "isfile");
	CU_ASSERT_EQUAL_FATAL(spit(dir, "not a dir", 9), 0);
	o = opts(dir);
	g_log_warn = 0;
	set = spool_set_new(&g_rx, &o);
	CU_ASSERT_PTR_NOT_NULL_FATAL(set);
	CU_ASSERT(g_log_warn >= 1);
	snprintf(aside, sizeof(aside), "%s~aside", dir);
	CU_ASSERT(file_is(aside, "not a dir"));
	snprintf(sdir, sizeof(sdir), "%s/s", dir);
	CU_ASSERT_EQUAL_FATAL(spit(sdir, "nor this", 8), 0);
	sp = spool_open(set, "s");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
	exercise(set, sp);
	CU_ASSERT(is_dir_0700_ours(sdir));
	snprintf(aside, sizeof(aside), "%s/s~aside", dir);
	CU_ASSERT(file_is(aside, "nor this"));
	spool_close(sp);
	spool_set_free(set);
}

static int suite_init(void)
{
	if (!mkdtemp(g_root))
		return -1;
	return rx_init(&g_rx, 256);
}

static int suite_clean(void)
{
	if (g_mnt[0])		/* a fatal assertion left it mounted */
		umount2(g_mnt, MNT_DETACH);
	rx_fini(&g_rx);
	if (!getenv("OBX_TEST_KEEP"))
		rm_rf(g_root);
	return 0;
}

static int add_spool(void)
{
	CU_pSuite s = CU_add_suite("spool", suite_init, suite_clean);

	if (!s ||
	    !CU_add_test(s, "crc32c", t_crc32c) ||
	    !CU_add_test(s, "append_flush_read_ack", t_append_flush_read_ack) ||
	    !CU_add_test(s, "restart_resumes_at_watermark",
			 t_restart_resumes_at_watermark) ||
	    !CU_add_test(s, "ck_one_per_request", t_ck_one_per_request) ||
	    !CU_add_test(s, "torn_tail_every_offset", t_torn_tail_every_offset) ||
	    !CU_add_test(s, "flipped_byte_middle", t_flipped_byte_middle) ||
	    !CU_add_test(s, "foreign_files", t_foreign_files) ||
	    !CU_add_test(s, "checkpoint", t_checkpoint) ||
	    !CU_add_test(s, "leftover_acked_segment", t_leftover_acked_segment) ||
	    !CU_add_test(s, "cap_drop_newest", t_cap_drop_newest) ||
	    !CU_add_test(s, "cap_drop_oldest", t_cap_drop_oldest) ||
	    !CU_add_test(s, "cap_cycles_delivered", t_cap_cycles_delivered) ||
	    !CU_add_test(s, "durability_modes", t_durability_modes) ||
	    !CU_add_test(s, "disk_reads", t_disk_reads) ||
	    !CU_add_test(s, "enospc", t_enospc) ||
	    !CU_add_test(s, "enospc_behind_flush", t_enospc_behind_flush) ||
	    !CU_add_test(s, "flush_one_wakeup", t_flush_one_wakeup) ||
	    !CU_add_test(s, "flush_short_write", t_flush_short_write) ||
	    !CU_add_test(s, "flush_failed_write", t_flush_failed_write) ||
	    !CU_add_test(s, "flush_nomem", t_flush_nomem) ||
	    !CU_add_test(s, "checkpoint_no_room", t_checkpoint_no_room) ||
	    !CU_add_test(s, "runtime_damage", t_runtime_damage) ||
	    !CU_add_test(s, "random_damage", t_random_damage) ||
	    !CU_add_test(s, "sigkill", t_sigkill) ||
	    !CU_add_test(s, "offline_tools", t_offline_tools) ||
	    !CU_add_test(s, "bounded_memory", t_bounded_memory) ||
	    !CU_add_test(s, "damaged_header", t_damaged_header) ||
	    !CU_add_test(s, "empty_records", t_empty_records) ||
	    !CU_add_test(s, "hostile_dirs", t_hostile_dirs) ||
	    !CU_add_test(s, "dirs_are_files", t_dirs_are_files))
		return -1;
	return 0;
}

TEST_MAIN(add_spool)
