/* fuzz_spool_recover - libFuzzer target: spool recovery (spool_open) over
 * arbitrary files, then everything the broker does next with what it
 * recovered: read it all back through io_uring, acknowledge it, append
 * and flush more, checkpoint, close; and the offline tools (verify, ls,
 * dump) over the same directory. A damaged spool must never crash or
 * hang the broker, nor make it read outside a buffer.
 *
 * Input: byte 0 = flags, then four parts, each a u16 LE length and its
 * bytes: two segment files, the checkpoint, the drain journal.
 *   bit 0  durability fdatasync (else write)
 *   bit 1  the journal is of "this ring" (its cut rules apply)
 *   bit 2  repair the frame and header CRCs of the segment parts, so
 *          the fuzzer reaches valid frames with any seqs and lengths
 *   bit 3  the checkpoint part is a payload, packed into a valid slot
 *   bit 4  the journal part is a payload, packed into a valid slot
 * The second segment is named after the first seq in its header bytes
 * 8..15 (when it has them). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool.h"

#define RING_ID		0x1234abcdull
#define SINK		"f"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char g_root[64], g_dir[96];
static struct rx g_rx;
static FILE *g_null;

static int rm_cb(const char *p, const struct stat *st, int flag,
		 struct FTW *ftw);

/* the scratch directory goes with the process */
static void cleanup(void)
{
	nftw(g_root, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	atexit(cleanup);
	snprintf(g_root, sizeof(g_root), "/dev/shm/obxfuzz-sp-%d", getpid());
	snprintf(g_dir, sizeof(g_dir), "%s/spool", g_root);
	if (mkdir(g_root, 0700) && errno != EEXIST)
		abort();
	if (rx_init(&g_rx, 64))
		abort();
	g_null = fopen("/dev/null", "w");
	return 0;
}

static int rm_cb(const char *p, const struct stat *st, int flag,
		 struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

struct part {
	const uint8_t *p;
	size_t n;
};

static struct part take(const uint8_t **d, size_t *left)
{
	struct part r = { NULL, 0 };
	size_t n;

	if (*left < 2)
		return r;
	n = (size_t)(*d)[0] | (size_t)(*d)[1] << 8;
	*d += 2;
	*left -= 2;
	if (n > *left)
		n = *left;
	r.p = *d;
	r.n = n;
	*d += n;
	*left -= n;
	return r;
}

static void spit(const char *dir, const char *name, const void *p, size_t n)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return;
	if (n && write(fd, p, n) != (ssize_t)n)
		abort();
	close(fd);
}

/* Valid CRCs where the magic is, so later checks get their turn. */
static void repair(uint8_t *img, size_t n)
{
	size_t off;

	if (n >= SPF_SEG_HDR && spf_get32(img) == 0x5358424fu)
		spf_put32(img + 92, spool_crc32c(0, img, 92));
	for (off = SPF_SEG_HDR; off + SPF_FRAME_HDR <= n; off += 8) {
		uint32_t len, crc;

		if (spf_get32(img + off) != 0x5258424fu)
			continue;
		len = spf_get32(img + off + 4);
		if (len > n - off - SPF_FRAME_HDR)
			len = (uint32_t)(n - off - SPF_FRAME_HDR);
		crc = spool_crc32c(0, img + off + 4, 12);
		crc = spool_crc32c(crc, img + off + SPF_FRAME_HDR, len);
		spf_put32(img + off + 16, crc);
		spf_put32(img + off + 20, spool_crc32c(0, img + off, 20));
	}
}

static void put_seg(const char *sdir, const struct part *pt, uint64_t first,
		    int fix)
{
	char name[32];
	uint8_t *img = malloc(pt->n ? pt->n : 1);

	if (!img)
		return;
	memcpy(img, pt->p, pt->n);
	if (fix)
		repair(img, pt->n);
	spf_seg_name(name, sizeof(name), first);
	spit(sdir, name, img, pt->n);
	free(img);
}

/* A two-slot image with `payload` in the slot gen picks, or raw bytes. */
static void put_slots(const char *dir, const char *name, size_t slot,
		      uint32_t magic, const struct part *pt, int pack)
{
	uint8_t *img;

	if (!pack) {
		spit(dir, name, pt->p, pt->n);
		return;
	}
	img = calloc(2, slot);
	if (!img)
		return;
	if (spf_slot_pack(img + (pt->n & 1) * slot, slot, magic, 7,
			  pt->p, pt->n))
		spit(dir, name, img, 2 * slot);
	free(img);
}

struct waitf {
	int done, err;
};

static void wait_cb(void *arg, int err)
{
	struct waitf *w = arg;

	w->done = 1;
	w->err = err;
}

/* Everything readable, acknowledged batch by batch. */
static void drain(struct spool *sp)
{
	struct spool_batch b;
	uint64_t from = 0;
	int guard;

	spool_batch_init(&b);
	for (guard = 0; guard < 10000; guard++) {
		struct waitf w = { 0 };
		uint32_t i;
		int rc = spool_read(sp, from, 64, 1 << 16, &b, wait_cb, &w);

		if (rc < 0)
			break;
		if (rc == 0 && rx_run_until(&g_rx, &w.done, 10000000000ull))
			abort();	/* a read that never completes: hang */
		if (rc == 0 && w.err)
			break;
		if (!b.n)
			break;
		for (i = 0; i < b.n; i++) {	/* touch every byte */
			volatile uint8_t sum = 0;
			uint32_t k;

			for (k = 0; k < b.recs[i].len; k++)
				sum ^= b.recs[i].data[k];
			(void)sum;
		}
		spool_ack(sp, b.recs[0].seq,
			  b.recs[b.n - 1].seq + 1 - b.recs[0].seq);
		if (b.next <= from)
			abort();	/* no progress */
		from = b.next;
	}
	spool_batch_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct spool_set_opts o = { 0 };
	struct part seg1, seg2, ck, jr;
	struct spool_set *set;
	struct spool *sp;
	char sdir[160];
	uint8_t flags, rec[40];
	uint64_t first2 = 100;
	int i;

	if (!size)
		return 0;
	flags = data[0];
	data++;
	size--;
	seg1 = take(&data, &size);
	seg2 = take(&data, &size);
	ck = take(&data, &size);
	jr = take(&data, &size);
	if (seg2.n >= 16)
		first2 = spf_get64(seg2.p + 8);
	if (!first2 || first2 == 1)
		first2 = 100;

	nftw(g_dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
	if (mkdir(g_dir, 0700) && errno != EEXIST)
		abort();
	snprintf(sdir, sizeof(sdir), "%s/" SINK, g_dir);
	if (mkdir(sdir, 0700) && errno != EEXIST)
		abort();
	if (seg1.p)
		put_seg(sdir, &seg1, 1, flags & 4);
	if (seg2.p)
		put_seg(sdir, &seg2, first2, flags & 4);
	if (ck.p)
		put_slots(sdir, SPF_CKPT_NAME, SPF_CK_SLOT, 0x4b58424fu, &ck,
			  flags & 8);
	if (jr.p)
		put_slots(g_dir, SPF_JOURNAL_NAME, SPF_JR_SLOT, 0x4a58424fu,
			  &jr, flags & 16);

	o.dir = g_dir;
	o.segment_size = 4096;
	o.tail_buffer = 64 * 1024;
	o.full = SPOOL_DROP_NEWEST;
	o.durability = flags & 1 ? DUR_FDATASYNC : DUR_WRITE;
	o.sync_interval_ms = 1;
	o.disk_reserve = 4096;
	o.ring_id = flags & 2 ? RING_ID : 0;
	set = spool_set_new(&g_rx, &o);
	if (!set)
		abort();	/* only the directory itself can make it fail */
	sp = spool_open(set, SINK);
	if (!sp)
		abort();	/* no content may keep a spool from opening */
	drain(sp);
	/* life goes on after the recovery: appends, a flush, reads */
	memset(rec, 0x5a, sizeof(rec));
	for (i = 0; i < 100; i++)
		if (spool_append(sp, rec, (uint32_t)(i % (int)sizeof(rec))))
			break;
	{
		struct waitf w = { 0 };

		if (spool_set_flush(set, wait_cb, &w) == 0 &&
		    rx_run_until(&g_rx, &w.done, 10000000000ull))
			abort();
	}
	drain(sp);
	spool_sync_ack(sp);
	spool_close(sp);
	spool_set_free(set);
	spool_verify(g_dir, g_null);
	spool_ls(g_dir, g_null);
	spool_dump(g_dir, NULL, g_null, NULL);
	return 0;
}
