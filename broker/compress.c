/* compress.c - gzip (libdeflate) and zstd (libzstd) bodies; see
 * compress.h. Both libraries compress a whole buffer in one call into a
 * buffer sized by their own worst-case bound, so a body never needs a
 * second pass or a growing output. */
#include <errno.h>
#include <libdeflate.h>
#include <stdlib.h>
#include <zstd.h>

#include "compress.h"

#define COMP_DEFAULT_LEVEL 1

struct comp {
	enum cfg_compression kind;
	struct libdeflate_compressor *gz;    /* COMP_GZIP */
	ZSTD_CCtx *zs;                       /* COMP_ZSTD */
};

static int comp_open_zstd(struct comp *c, int level)
{
	if (level > ZSTD_maxCLevel())
		return -EINVAL;
	c->zs = ZSTD_createCCtx();
	if (!c->zs)
		return -ENOMEM;
	/* the frame carries the body's size, so a receiver can allocate
	 * once (ZSTD_compress2 knows it: the input is given whole) */
	if (ZSTD_isError(ZSTD_CCtx_setParameter(c->zs,
			ZSTD_c_compressionLevel, level)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(c->zs,
			ZSTD_c_contentSizeFlag, 1)))
		return -EINVAL;
	return 0;
}

struct comp *comp_new(enum cfg_compression kind, int level)
{
	struct comp *c;
	int rc = -EINVAL;

	if (level == 0)
		level = COMP_DEFAULT_LEVEL;
	if (level < 1 || (kind != COMP_GZIP && kind != COMP_ZSTD)) {
		errno = EINVAL;
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		errno = ENOMEM;
		return NULL;
	}
	c->kind = kind;
	if (kind == COMP_GZIP) {
		/* libdeflate levels are 0..12; NULL means a bad level or
		 * no memory */
		c->gz = level <= 12 ? libdeflate_alloc_compressor(level) : NULL;
		rc = c->gz ? 0 : level <= 12 ? -ENOMEM : -EINVAL;
	} else {
		rc = comp_open_zstd(c, level);
	}
	if (rc < 0) {
		comp_free(c);
		errno = -rc;
		return NULL;
	}
	return c;
}

void comp_free(struct comp *c)
{
	if (!c)
		return;
	if (c->gz)
		libdeflate_free_compressor(c->gz);
	ZSTD_freeCCtx(c->zs);
	free(c);
}

int comp_body(struct comp *c, const void *in, size_t n, struct buf *out)
{
	size_t bound, got;
	int rc;

	bound = c->kind == COMP_GZIP ?
		libdeflate_gzip_compress_bound(c->gz, n) : ZSTD_compressBound(n);
	if (bound < n)
		return -E2BIG;          /* the bound overflowed size_t */
	buf_reset(out);
	rc = buf_reserve(out, bound);
	if (rc < 0)
		return rc;
	if (c->kind == COMP_GZIP) {
		/* 0 only when the output does not fit: not with the bound */
		got = libdeflate_gzip_compress(c->gz, in, n, out->p, out->cap);
		if (got == 0)
			return -EIO;
	} else {
		got = ZSTD_compress2(c->zs, out->p, out->cap, in, n);
		if (ZSTD_isError(got))
			return -EIO;
	}
	out->len = got;
	return 0;
}

const char *comp_name(enum cfg_compression kind)
{
	switch (kind) {
	case COMP_GZIP:
		return "gzip";
	case COMP_ZSTD:
		return "zstd";
	default:
		return "none";
	}
}

const char *comp_header(enum cfg_compression kind)
{
	switch (kind) {
	case COMP_GZIP:
		return "Content-Encoding: gzip";
	case COMP_ZSTD:
		return "Content-Encoding: zstd";
	default:
		return NULL;
	}
}
