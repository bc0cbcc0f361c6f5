/* buf.h - a growable byte buffer with a hard cap (memory stays bounded
 * by configuration, never by input). */
#ifndef OBX_BUF_H
#define OBX_BUF_H

#include <stddef.h>
#include <stdint.h>

struct buf {
	uint8_t *p;
	size_t len, cap, max;   /* max: hard limit, 0 = 1 GiB */
};

void buf_init(struct buf *b, size_t max);
void buf_free(struct buf *b);
static inline void buf_reset(struct buf *b) { b->len = 0; }
/* 0 or -ENOMEM / -E2BIG (over max) */
int buf_reserve(struct buf *b, size_t extra);
/* n = 0 adds nothing (p may then be NULL, e.g. an empty buffer's p) */
int buf_add(struct buf *b, const void *p, size_t n);
int buf_addc(struct buf *b, char c);
int buf_adds(struct buf *b, const char *s);

#endif
