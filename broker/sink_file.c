/* sink_file.c - the `file` sink: one NDJSON line per event, appended with
 * io_uring (json_line_fast: JSON bodies passed through on one line,
 * msgpack bodies converted by jansson). One write in flight keeps
 * the file in spool order. Written = delivered: the line is in the page
 * cache, which survives a broker crash; with durability = fdatasync the
 * output is also fdatasync'ed before the batch is acknowledged, so a
 * power loss cannot lose lines the spool let go of.
 *
 * The output is never adopted from someone else: opened O_NOFOLLOW, it
 * must be a regular file of ours with one link, in a directory that is
 * ours or root's and not writable by everyone (unless sticky); anything
 * else disables the sink (logged) and its events stay in the spool.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker.h"
#include "json.h"

#define FILE_QUEUE 8

struct file_sink {
	int fd;
	/* batches encoded and waiting for the write before them: the next
	 * batch is read and encoded while one write is in flight, writes
	 * go out one at a time so lines stay in spool order */
	struct sink_batch *queue[FILE_QUEUE];
	int qhead, qlen;
	int writing;
	struct sink_batch *retry_head;  /* a failed write, resent first */
	struct env_reader er;
	struct json_line_cache jc;
	struct log_rl rl;
};

/* A broker killed in the middle of a write can leave the last line cut.
 * Its events were never acknowledged (that happens after the write), so
 * they are written again in full: cut the fragment off, so the file holds
 * whole lines only. We are the only writer (one broker per segment). */
static void file_cut_torn_line(struct sink *s, int fd)
{
	char buf[4096];
	off_t end = lseek(fd, 0, SEEK_END), pos = end;
	ssize_t n, i;

	while (pos > 0) {
		off_t from = pos > (off_t)sizeof(buf) ? pos - (off_t)sizeof(buf) : 0;

		n = pread(fd, buf, (size_t)(pos - from), from);
		if (n <= 0)
			return;
		for (i = n - 1; i >= 0; i--)
			if (buf[i] == '\n')
				break;
		if (i >= 0) {
			pos = from + i + 1;
			break;
		}
		pos = from;
	}
	if (pos == end)
		return;
	if (ftruncate(fd, pos) == 0)
		log_warn("sink %s: cut %lld bytes of a torn last line from %s "
			 "(its events are written again)", s->cfg.name,
			 (long long)(end - pos), s->cfg.path);
}

/* Why the output's directory may let someone else swap the file under
 * us, or NULL. */
static const char *file_dir_untrusted(const char *path, char *buf,
				      size_t len)
{
	char *copy = strdup(path);
	struct stat st;
	int rc;

	if (!copy)
		return "out of memory";
	rc = stat(dirname(copy), &st);
	free(copy);
	if (rc < 0)
		return NULL;		/* open() will say why */
	if (st.st_uid != geteuid() && st.st_uid != 0) {
		snprintf(buf, len, "its directory belongs to uid %u",
			 (unsigned)st.st_uid);
		return buf;
	}
	if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
		return "its directory is writable by everyone (and not sticky)";
	return NULL;
}

/* Why the opened output is not ours to append to, or NULL. */
static const char *file_untrusted(int fd, char *buf, size_t len)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return strerror(errno);
	if (!S_ISREG(st.st_mode))
		return "not a regular file";
	if (st.st_uid != geteuid()) {
		snprintf(buf, len, "owned by uid %u", (unsigned)st.st_uid);
		return buf;
	}
	if (st.st_nlink != 1)
		return "it has other hard links";
	return NULL;
}

static int file_open(struct sink *s)
{
	struct file_sink *f = calloc(1, sizeof(*f));
	const char *why;
	char buf[96];
	int e;

	if (!f)
		return -ENOMEM;
	why = file_dir_untrusted(s->cfg.path, buf, sizeof(buf));
	if (why) {
		log_error("sink %s: refusing %s: %s; its events stay in the "
			  "spool", s->cfg.name, s->cfg.path, why);
		free(f);
		return -EPERM;
	}
	/* O_RDWR, not O_WRONLY: the torn-line check reads the tail */
	f->fd = open(s->cfg.path, O_RDWR | O_CREAT | O_APPEND | O_NOFOLLOW |
		     O_CLOEXEC, 0640);
	if (f->fd < 0) {
		e = -errno;
		if (e == -ELOOP)
			log_error("sink %s: refusing %s: a symbolic link; its "
				  "events stay in the spool", s->cfg.name,
				  s->cfg.path);
		else
			log_error("sink %s: cannot open %s: %s", s->cfg.name,
				  s->cfg.path, strerror(-e));
		free(f);
		return e;
	}
	why = file_untrusted(f->fd, buf, sizeof(buf));
	if (why) {
		log_error("sink %s: refusing %s: %s; its events stay in the "
			  "spool", s->cfg.name, s->cfg.path, why);
		close(f->fd);
		free(f);
		return -EPERM;
	}
	file_cut_torn_line(s, f->fd);
	env_reader_init(&f->er);
	json_line_cache_init(&f->jc);
	f->rl = (struct log_rl)LOG_RL_INIT(60);
	s->impl = f;
	return 0;
}

static void file_close(struct sink *s)
{
	struct file_sink *f = s->impl;

	if (!f)
		return;
	env_reader_fini(&f->er);
	json_line_cache_free(&f->jc);
	close(f->fd);
	free(f);
	s->impl = NULL;
}

static uint32_t file_max_inflight(const struct sink *s)
{
	(void)s;
	return FILE_QUEUE;
}

static void file_write_more(struct sink_batch *b);
static void file_sync(struct sink_batch *b);
static void file_written(struct sink_batch *b);

/* Starts the next queued write, if none is in flight. */
static void file_next(struct sink *s)
{
	struct file_sink *f = s->impl;
	struct sink_batch *b;

	if (f->writing || f->retry_head || !f->qlen)
		return;
	b = f->queue[f->qhead];
	f->qhead = (f->qhead + 1) % FILE_QUEUE;
	f->qlen--;
	if (b->out_off >= b->out.len) {
		sink_batch_done(b, SINK_OK);
		file_next(s);
		return;
	}
	f->writing = 1;
	file_write_more(b);
}

static void file_write_done(struct rx_op *op, int res, uint32_t flags)
{
	struct sink_batch *b = (struct sink_batch *)op;
	struct file_sink *f = b->s->impl;

	(void)flags;
	if (res < 0) {
		log_rl(&f->rl, LOG_ERROR, "sink %s: write to %s failed: %s; "
		       "retrying", b->s->cfg.name, b->s->cfg.path,
		       strerror(-res));
		/* a partial batch may be in the file already: the retry
		 * writes the rest only (out_off), no line twice. It stays at
		 * the head of the queue so nothing overtakes it. */
		f->writing = 0;
		f->retry_head = b;
		sink_batch_done(b, SINK_RETRY);
		return;
	}
	b->out_off += (uint64_t)res;
	if (b->out_off < b->out.len) {
		file_write_more(b);
		return;
	}
	if (b->s->b->cfg.durability == DUR_FDATASYNC) {
		file_sync(b);
		return;
	}
	file_written(b);
}

/* The batch is in the file (and synced when asked): delivered. */
static void file_written(struct sink_batch *b)
{
	struct file_sink *f = b->s->impl;

	f->writing = 0;
	sink_batch_done(b, SINK_OK);
	file_next(b->s);
}

static void file_sync_done(struct rx_op *op, int res, uint32_t flags)
{
	struct sink_batch *b = (struct sink_batch *)op;
	struct file_sink *f = b->s->impl;

	(void)flags;
	if (res < 0) {
		/* after a failed fdatasync the page cache may have dropped
		 * the lines: the whole batch is written again (duplicate
		 * lines possible, never a lost one) */
		log_rl(&f->rl, LOG_ERROR, "sink %s: fdatasync of %s failed: "
		       "%s; writing the batch again", b->s->cfg.name,
		       b->s->cfg.path, strerror(-res));
		b->out_off = 0;
		f->writing = 0;
		f->retry_head = b;
		sink_batch_done(b, SINK_RETRY);
		return;
	}
	file_written(b);
}

/* durability = fdatasync: the lines reach the disk before the spool is
 * told they are delivered */
static void file_sync(struct sink_batch *b)
{
	struct file_sink *f = b->s->impl;
	struct io_uring_sqe *sqe;

	b->op.fn = file_sync_done;
	sqe = rx_sqe(&b->s->b->rx, &b->op);
	io_uring_prep_fsync(sqe, f->fd, IORING_FSYNC_DATASYNC);
}

static void file_write_more(struct sink_batch *b)
{
	struct file_sink *f = b->s->impl;
	struct io_uring_sqe *sqe;

	b->op.fn = file_write_done;
	sqe = rx_sqe(&b->s->b->rx, &b->op);
	/* O_APPEND: every write lands at the end, offset -1 = current */
	io_uring_prep_write(sqe, f->fd, b->out.p + b->out_off,
			    (unsigned)(b->out.len - b->out_off), (uint64_t)-1);
}

static int file_encode(struct sink *s, struct sink_batch *b)
{
	struct file_sink *f = s->impl;
	uint32_t i;

	for (i = 0; i < b->sb.n; i++) {
		const struct spool_rec *r = &b->sb.recs[i];
		struct env_view v;
		int rc;

		if (env_parse(&f->er, r->data, r->len, &v) < 0) {
			b->dropped_invalid++;
			continue;
		}
		rc = json_line_fast(&f->jc, &v, &b->out, 1);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int file_send(struct sink *s, struct sink_batch *b)
{
	struct file_sink *f = s->impl;
	int rc;

	if (f->retry_head == b) {
		/* the resend of a failed write: it continues where the file
		 * stopped, before anything queued behind it */
		f->retry_head = NULL;
		f->writing = 1;
		file_write_more(b);
		return 0;
	}
	buf_reset(&b->out);
	b->out_off = 0;
	b->dropped_invalid = 0;
	rc = file_encode(s, b);
	if (rc < 0)
		return rc;
	if (f->qlen == FILE_QUEUE)
		return -EBUSY;          /* cannot happen: max_inflight */
	f->queue[(f->qhead + f->qlen) % FILE_QUEUE] = b;
	f->qlen++;
	file_next(s);
	return 0;
}

const struct sink_ops sink_file_ops = {
	.name = "file",
	.open = file_open,
	.send = file_send,
	.close = file_close,
	.max_inflight = file_max_inflight,
};

/* ---- discard: for benchmarks; every batch is delivered at once -------- */

static int discard_open(struct sink *s)
{
	(void)s;
	return 0;
}

static int discard_send(struct sink *s, struct sink_batch *b)
{
	(void)s;
	sink_batch_done(b, SINK_OK);
	return 0;
}

static void discard_close(struct sink *s)
{
	(void)s;
}

const struct sink_ops sink_discard_ops = {
	.name = "discard",
	.open = discard_open,
	.send = discard_send,
	.close = discard_close,
	.max_inflight = NULL,
};
