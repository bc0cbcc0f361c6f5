/* fuzz_ring - libFuzzer target: the ring consumer over arbitrary segment
 * bytes. Everything a producer can write is taken from the input and laid
 * over a real segment (64 KiB ring, 8 slots): page 0's header with tail
 * and wake, the slot table, the ring. Then the consumer runs as the
 * broker does (ring_next, release, reap) on a clock that jumps, with some
 * slots' owners "alive" (their OFD lock held on a second description).
 *
 * Input: [control 16][page 0 header 256][slots 8 x 384][ring ...] (short
 * inputs are zero-filled). control: start position (8), alive slot mask,
 * steps, clock jump, release pattern, stall timeout.
 *
 * Checks beyond "no crash": each handed-out record lies inside the
 * mapping; no position is handed out twice; head never passes the cursor
 * nor a pinned claim; every call returns (libFuzzer's -timeout).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "envelope.h"
#include "ring.h"
#include "segment.h"
#include "slots.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NSLOTS   8u
#define RING     (64u << 10)
#define HDR_LEN  256u
#define CTL_LEN  16u

static struct seg g_seg;
static int g_lockfd = -1;
static struct env_reader g_er;

static void fz_setup(void)
{
	struct seg_geom g = { RING, 4096, NSLOTS };
	char name[64], why[256], path[80];
	int created;

	snprintf(name, sizeof(name), "obxfuzz-ring-%d", (int)getpid());
	seg_unlink(name);
	if (seg_open_broker(&g_seg, name, &g, 0600, &created, why,
			    sizeof(why)) < 0) {
		fprintf(stderr, "fuzz_ring: %s\n", why);
		abort();
	}
	/* the object stays reachable through the fds; no name left behind */
	seg_unlink(name);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", g_seg.fd);
	g_lockfd = open(path, O_RDWR | O_CLOEXEC);
	if (g_lockfd < 0)
		abort();
	env_reader_init(&g_er);
}

/* the owner of slot i "lives": its lock held on another description */
static void fz_alive(uint32_t i, int on)
{
	struct flock l;

	memset(&l, 0, sizeof(l));
	l.l_type = on ? F_WRLCK : F_UNLCK;
	l.l_whence = SEEK_SET;
	l.l_start = (off_t)OBX_SLOT_LOCK_OFF(
		(uint64_t)((uint8_t *)g_seg.slots - g_seg.base), i);
	l.l_len = 1;
	fcntl(g_lockfd, F_OFD_SETLK, &l);
}

static void fz_copy(void *dst, size_t dlen, const uint8_t **p, size_t *left)
{
	size_t n = *left < dlen ? *left : dlen;

	memset(dst, 0, dlen);
	memcpy(dst, *p, n);
	*p += n;
	*left -= n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint64_t seen[256];
	uint8_t ctl[CTL_LEN];
	struct ring_cons c;
	struct ring_rec r;
	const uint8_t *p = data;
	const uint8_t *lo, *hi;
	size_t left = size;
	uint64_t start, now = 1000000000ull;
	unsigned steps, i, nseen = 0, k;

	if (g_lockfd < 0)
		fz_setup();
	fz_copy(ctl, sizeof(ctl), &p, &left);
	fz_copy(g_seg.hdr, HDR_LEN, &p, &left);
	fz_copy(g_seg.slots, NSLOTS * sizeof(struct obx_slot), &p, &left);
	fz_copy(g_seg.ring, RING, &p, &left);
	memcpy(&start, ctl, 8);
	start &= ~7ull;
	for (i = 0; i < NSLOTS; i++)
		fz_alive(i, ctl[8] >> i & 1);
	atomic_store(&g_seg.cons->head, start);
	if (ring_cons_init(&c, &g_seg) < 0)
		abort();
	c.stall_timeout = 1000000ull * (1 + ctl[12] % 50);
	/* stall_kill stays off: the only process holding our locks is this
	 * one, and a slot that named its pid would have it killed */
	steps = 1 + ctl[9] % 96;
	lo = g_seg.ring;
	hi = g_seg.ring + 2 * (size_t)RING;
	for (i = 0; i < steps; i++) {
		int rc;

		now += (uint64_t)(ctl[10] & 0x0f) << ((ctl[10] >> 4) + 10);
		rc = ring_next(&c, &r, now);
		if (rc == RING_RECORD) {
			struct env_view v;

			/* inside the mapping, wholly */
			if (r.payload < lo || r.payload + r.len > hi ||
			    r.payload + r.len < r.payload)
				abort();
			/* never the same record twice */
			for (k = 0; k < nseen; k++)
				if (seen[k] == r.pos)
					abort();
			if (nseen < 256)
				seen[nseen++] = r.pos;
			env_parse(&g_er, r.payload, r.len, &v);
		}
		if ((ctl[11] >> (i % 8)) & 1)
			ring_release(&c, c.cursor);
		if (i % 8 == 7)
			ring_reap(&c);
		if ((int64_t)(c.cursor - c.head) < 0)
			abort();
		if (c.npins && (int64_t)(c.pins[0].start - c.head) < 0)
			abort();
	}
	ring_cons_fini(&c);
	return 0;
}
