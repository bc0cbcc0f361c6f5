/* ringtest.c - helpers shared by the ring tests (see ringtest.h). */
#define _GNU_SOURCE
#include "ringtest.h"
#include "outbox.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint32_t rt_fnv(const uint8_t *p, size_t n, uint32_t h)
{
	size_t i;

	for (i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

static uint32_t rt_sum(const uint8_t *buf, size_t len)
{
	struct rt_body b;
	uint32_t h = 2166136261u;

	memcpy(&b, buf, sizeof(b)); /* bodies are not aligned in the ring */
	h = rt_fnv((const uint8_t *)&b.producer, 4, h);
	h = rt_fnv((const uint8_t *)&b.len, 4, h);
	h = rt_fnv((const uint8_t *)&b.seq, 8, h);
	return rt_fnv(buf + sizeof(b), len - sizeof(b), h);
}

size_t rt_make_body(uint8_t *buf, size_t len, uint32_t producer, uint64_t seq)
{
	struct rt_body b;
	size_t i;

	b.producer = producer;
	b.len = (uint32_t)len;
	b.seq = seq;
	b.pad = 0;
	b.csum = 0;
	memcpy(buf, &b, sizeof(b));
	for (i = sizeof(b); i < len; i++)
		buf[i] = (uint8_t)(seq * 31 + i * 7 + producer);
	b.csum = rt_sum(buf, len);
	memcpy(buf, &b, sizeof(b));
	return len;
}

void rt_seen_init(struct rt_seen *s)
{
	int i;

	memset(s, 0, sizeof(*s));
	for (i = 0; i < RT_MAX_PRODUCERS; i++) {
		s->next_seq[i] = 0;
		s->slot_of[i] = -1;
	}
}

int rt_body_ok(const uint8_t *body, size_t len, struct rt_body *out)
{
	if (len < sizeof(*out))
		return 0;
	memcpy(out, body, sizeof(*out));
	return out->len == len && out->csum == rt_sum(body, len);
}

int rt_check_record(struct env_reader *er, const struct ring_rec *r,
		    struct rt_seen *seen)
{
	struct env_view v;
	struct rt_body b;

	seen->records++;
	if (env_parse(er, r->payload, r->len, &v) < 0) {
		seen->invalid++;
		return -1;
	}
	if (v.body_kind != ENV_BODY_BYTES || v.body_len < sizeof(b)) {
		seen->invalid++;
		return -1;
	}
	if (!rt_body_ok((const uint8_t *)v.body, v.body_len, &b) ||
	    b.producer >= RT_MAX_PRODUCERS) {
		seen->torn++;
		return -1;
	}
	if ((int64_t)b.seq != seen->next_seq[b.producer])
		seen->out_of_order++;
	if (b.seq < seen->bits_n[b.producer]) {
		uint8_t *bit = &seen->bits[b.producer][b.seq / 8];

		if (*bit & (1u << (b.seq % 8))) {
			if (getenv("RT_DEBUG_DUPS") && seen->dups < 10)
				printf("\n    twice: producer %u seq %llu at %llu"
				       " (late %d, slot %u)\n", b.producer,
				       (unsigned long long)b.seq,
				       (unsigned long long)r->pos, r->late,
				       r->slot);
			seen->dups++;
		}
		*bit |= (uint8_t)(1u << (b.seq % 8));
	}
	seen->next_seq[b.producer] = (int64_t)b.seq + 1;
	seen->count[b.producer]++;
	seen->slot_of[b.producer] = (int16_t)r->slot;
	return 0;
}

int rt_segment(struct seg *s, const char *tag, uint64_t ring_size,
	       uint32_t max_record, uint32_t nslots)
{
	struct seg_geom g = { ring_size, max_record, nslots };
	char name[64], why[256];
	int created, rc;

	snprintf(name, sizeof(name), "obxtest-%s-%d", tag, (int)getpid());
	seg_unlink(name);
	rc = seg_open_broker(s, name, &g, 0600, &created, why, sizeof(why));
	if (rc < 0)
		fprintf(stderr, "rt_segment: %s\n", why);
	return rc;
}

void rt_segment_destroy(struct seg *s)
{
	char name[80];

	snprintf(name, sizeof(name), "%s", s->name);
	seg_detach(s);
	seg_unlink(name);
}

static uint64_t rt_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t rt_drain(struct ring_cons *c, struct env_reader *er,
		  struct rt_seen *seen, uint64_t ms)
{
	uint64_t end = rt_now() + ms * 1000000ull, n = 0, last_reap = 0;
	struct ring_rec r;

	for (;;) {
		uint64_t now = rt_now();
		int rc = ring_next(c, &r, now);

		if (rc == RING_RECORD) {
			rt_check_record(er, &r, seen);
			n++;
			if (c->cursor - c->head > (c->s->g.ring_size >> 2))
				ring_release(c, c->cursor);
			continue;
		}
		ring_release(c, c->cursor);
		if (now - last_reap > 5000000ull) {
			ring_reap(c);
			last_reap = now;
		}
		if (rc == RING_EMPTY)
			break;
		if (now > end)
			break;
		usleep(200);
	}
	return n;
}

int rt_setup(struct rt_ctx *x, const char *tag, uint64_t ring_size,
	     uint32_t max_record, uint32_t nslots)
{
	if (rt_segment(&x->seg, tag, ring_size, max_record, nslots) < 0)
		return -1;
	if (ring_cons_init(&x->c, &x->seg) < 0) {
		rt_segment_destroy(&x->seg);
		return -1;
	}
	env_reader_init(&x->er);
	rt_seen_init(&x->seen);
	return 0;
}

void rt_teardown(struct rt_ctx *x)
{
	env_reader_fini(&x->er);
	ring_cons_fini(&x->c);
	if (x->hseg.base) {
		close(x->hseg.fd);
		memset(&x->hseg, 0, sizeof(x->hseg));
	}
	rt_segment_destroy(&x->seg);
}

struct seg *obx_fi_seg(struct obx *h);

int rt_cons_on(struct rt_ctx *x, struct obx *h)
{
	char path[64];

	x->hseg = *obx_fi_seg(h);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", x->hseg.fd);
	x->hseg.fd = open(path, O_RDWR | O_CLOEXEC);
	if (x->hseg.fd < 0)
		return -1;
	ring_cons_fini(&x->c);
	return ring_cons_init(&x->c, &x->hseg);
}

int rt_emit(struct obx *h, uint32_t producer, uint64_t seq, size_t len)
{
	uint8_t buf[1 << 16];

	rt_make_body(buf, len, producer, seq);
	return obx_emit(h, 0, "t", buf, len, OBX_BODY_BYTES);
}
