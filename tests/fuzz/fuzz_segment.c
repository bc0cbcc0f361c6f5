/* fuzz_segment - libFuzzer target: attaching to an shm object whose bytes
 * are arbitrary. A producer (seg_attach) must refuse or accept it without
 * reading outside what it maps; a broker re-attaching (seg_open_broker)
 * must start, re-attached or with the object moved aside and a fresh one
 * made, never refuse forever and never crash; a broker's seg_check must
 * repair what it finds.
 *
 * Input: [size selector 1][header bytes ...]. The object is sized from the
 * selector (exact layout, one byte short, one page, the header's own
 * total_size, tiny, empty) and its first bytes are the input; the rest is
 * zero.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "segment.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct seg_geom g_geom = { 64u << 10, 4096, 8 };

/* The object the broker renamed aside, named in why: removed. */
static void fz_remove_aside(const char *why)
{
	const char *a = strstr(why, "moved aside to ");
	char path[160];
	size_t n;

	if (!a)
		return;
	a += strlen("moved aside to ");
	n = strcspn(a, ",");
	if (n >= sizeof(path))
		return;
	memcpy(path, a, n);
	path[n] = 0;
	unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t so, sto, sio, ro, tot, want;
	char name[64], path[80], why[512];
	struct seg s;
	int fd, created, rc;

	if (size < 1)
		return 0;
	seg_layout(&g_geom, &so, &sto, &sio, &ro, &tot, why, sizeof(why));
	switch (data[0] % 6) {
	case 0: want = tot; break;
	case 1: want = tot - 1; break;
	case 2: want = 4096; break;
	case 3: want = 0; break;
	case 4: want = size; break;
	default:
		/* what the header says, bounded */
		want = 0;
		if (size >= 1 + 16 + 8)
			memcpy(&want, data + 1 + 16, 8);
		want %= 4 * tot;
	}
	data++;
	size--;
	snprintf(name, sizeof(name), "obxfuzz-seg-%d", (int)getpid());
	snprintf(path, sizeof(path), "/%s", name);
	shm_unlink(path);
	fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0)
		abort();
	if (ftruncate(fd, (off_t)want) < 0)
		abort();
	if (size && pwrite(fd, data, size < want ? size : want, 0) < 0)
		abort();
	close(fd);

	/* a producer attaching */
	if (seg_attach(&s, name, why, sizeof(why)) == 0) {
		volatile uint64_t t = atomic_load(&s.hdr->tail);

		(void)t;
		seg_detach(&s);
	}
	/* a broker re-attaching: it always starts */
	rc = seg_open_broker(&s, name, &g_geom, 0600, &created, why,
			     sizeof(why));
	if (rc == 0) {
		char w2[256];

		/* and its housekeeping finds a sound object */
		if (seg_check(&s, w2, sizeof(w2)) != 0)
			abort();
		seg_detach(&s);
	} else if (rc != -EEXIST) {
		/* only another geometry than the config may be refused */
		fprintf(stderr, "fuzz_segment: refused: %s\n", why);
		abort();
	}
	fz_remove_aside(why);
	shm_unlink(path);
	return 0;
}
