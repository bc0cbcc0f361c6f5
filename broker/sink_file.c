/* sink_file.c - the `file` sink: one NDJSON line per event, appended with
 * io_uring (json_line_fast: JSON bodies passed through on one line,
 * msgpack bodies converted by jansson). One write in flight keeps
 * the file in spool order. Written = delivered: the line is in the page
 * cache, which survives a broker crash.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "json.h"

struct file_sink {
	int fd;
	struct env_reader er;
	struct json_line_cache jc;
	struct log_rl rl;
};

static int file_open(struct sink *s)
{
	struct file_sink *f = calloc(1, sizeof(*f));

	if (!f)
		return -ENOMEM;
	f->fd = open(s->cfg.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
		     0640);
	if (f->fd < 0) {
		int e = -errno;

		log_error("sink %s: cannot open %s: %s", s->cfg.name,
			  s->cfg.path, strerror(errno));
		free(f);
		return e;
	}
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
	return 1;
}

static void file_write_more(struct sink_batch *b);

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
		 * writes the rest only (out_off), no line twice */
		b->resend_at = 0;
		sink_batch_done(b, SINK_RETRY);
		return;
	}
	b->out_off += (uint64_t)res;
	if (b->out_off < b->out.len) {
		file_write_more(b);
		return;
	}
	sink_batch_done(b, SINK_OK);
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
	int rc;

	/* a retry after a failed write continues where the file stopped */
	if (b->out.len == 0 || b->out_off == 0) {
		buf_reset(&b->out);
		b->out_off = 0;
		b->dropped_invalid = 0;
		rc = file_encode(s, b);
		if (rc < 0)
			return rc;
	}
	if (b->out_off >= b->out.len) {
		sink_batch_done(b, SINK_OK);
		return 0;
	}
	file_write_more(b);
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
