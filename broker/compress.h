/* compress.h - request-body compression for the sinks (prefix comp_).
 *
 * `compression = gzip` goes through libdeflate (a whole body in one call,
 * no streaming state to reset), `zstd` through libzstd (one frame per
 * body, content size in the frame header), `none` needs no handle.
 * Level 1 for both: the broker's CPU per event matters more than the
 * bytes on the wire (PRODUCT.md section 9).
 *
 * A handle owns the compressor's state, reused for every body; it is used
 * by one thread at a time (one handle per sink, or per worker thread).
 */
#ifndef OBX_COMPRESS_H
#define OBX_COMPRESS_H

#include <stddef.h>
#include "buf.h"
#include "config.h"

struct comp;

/* A compressor for kind (COMP_GZIP or COMP_ZSTD) at `level` (0: the
 * default, 1). NULL + errno: EINVAL for COMP_NONE or an unknown kind or
 * level, ENOMEM. */
struct comp *comp_new(enum cfg_compression kind, int level);
void comp_free(struct comp *c);

/* Replaces out's contents with in[0, n) compressed as one gzip member or
 * one zstd frame. 0, or -E2BIG (the worst case does not fit out's cap),
 * -ENOMEM, -EIO (the library failed). */
int comp_body(struct comp *c, const void *in, size_t n, struct buf *out);

/* "gzip", "zstd", "none" */
const char *comp_name(enum cfg_compression kind);
/* "Content-Encoding: gzip" / "Content-Encoding: zstd"; NULL for none */
const char *comp_header(enum cfg_compression kind);

#endif
