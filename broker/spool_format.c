/* spool_format.c - the spool's on-disk format (see spool_format.h): segment
 * headers, CRC-framed records, the checkpoint, the frame scanner, the
 * directory lister and the offline tools. The io_uring side (spool.c)
 * and `outbox spool` both use it; the recovery rules below are applied
 * by spool.c (spool_open), with the scanner from here.
 *
 * On-disk format (segments version 1, checkpoint version 2)
 * ==========================================================
 *
 * All integers are little-endian. CRCs are CRC-32C (Castagnoli,
 * reflected polynomial 0x82f63b78, init and final xor 0xffffffff, as in
 * iSCSI / ext4: crc32c("123456789") = 0xe3069283); spool_crc32c().
 *
 * <spool_dir>/                      mode 0700
 *   drain-state                     drain journal (two-slot file, below)
 *   delivery-state                  the delivery policy's (persist.c)
 *   <sink>/                         mode 0700, one per sink
 *     seg-<first seq, 16 hex>.obx   segment files, mode 0600
 *     checkpoint                    acknowledged state (two-slot file)
 *     checkpoint.tmp                transient (creation), removed at open
 *
 * Segment file = 96-byte header, then frames back to back.
 *
 *   header (96 bytes)
 *     0   u32  magic      0x5358424f ("OBXS" on disk)
 *     4   u16  version    1
 *     6   u16  hdr_len    96 (frames start here)
 *     8   u64  first_seq  seq of the first record; equals the file name
 *     16  u64  created    CLOCK_REALTIME ns at creation (drop-oldest age)
 *     24  char sink[48]   sink name, NUL-padded; must equal the directory
 *     72  u8   zero[20]   reserved, written as 0
 *     92  u32  crc        crc32c of bytes 0..91
 *
 *   frame (8-byte aligned; 24-byte header + payload + zero padding)
 *     0   u32  magic      0x5258424f ("OBXR" on disk)
 *     4   u32  len        payload bytes (<= 1 GiB)
 *     8   u64  seq        record sequence number (per sink, from 1)
 *     16  u32  crc        crc32c over bytes 4..15 (len, seq), then the
 *                         payload (one running crc)
 *     20  u32  hcrc       crc32c of bytes 0..19: lets a scan reject a
 *                         false magic or a damaged len without reading
 *                         len bytes
 *     24  payload[len], then 0..7 zero bytes up to a multiple of 8
 *   frame size = 24 + round_up(len, 8). Within a file seqs strictly
 *   increase and are consecutive unless records were lost.
 *
 * Two-slot files (checkpoint, drain-state): 2 x slot_size bytes, made
 * once at full size (tmp O_EXCL|O_NOFOLLOW, fsync, rename, fsync dir),
 * then updated by overwriting the OLDER slot with one pwrite: never any
 * new disk space, and a torn write leaves the other slot intact.
 *   slot: 0 u32 magic, 4 u16 version (2), 6 u16 0, 8 u64 gen,
 *         16 u32 len, 20 u32 crc32c(bytes 0..19, payload), 24 payload
 *   The valid slot with the highest gen wins.
 *
 * Checkpoint: magic "OBXK", 8 KiB slots, payload one msgpack map
 *     {"sink", "acked", "next_seq", "sent", "ranges": [[a, b]...],
 *      "corrupt", "dropped_full", "redelivered", "ring_id",
 *      "epoch": [3 x u64], "base": [u64...]}
 *   acked: every seq < acked is done; ranges: done seqs above it (at
 *   most 256). next_seq: one past the last record made durable (per the
 *   durability setting) when it was written; new seqs start at
 *   max(next_seq, last seq found + 1). sent: one past the last record
 *   read for delivery (re-sends below it are counted redelivered).
 *   corrupt, dropped_full, redelivered: the spool's totals; ring_id and
 *   epoch: the shm segment the counters are of and those totals when it
 *   was new; base: the owner's counters. Unknown keys are ignored; a
 *   missing sink/acked/next_seq, another sink or bad values make a slot
 *   invalid; no valid slot = "corrupt".
 *   Version 1 (still read, replaced at open): the whole file one map
 *   {"version": 1, "sink", "acked", "next_seq", "crc"}, crc = crc32c of
 *   acked (u64 LE), next_seq (u64 LE) and the sink name bytes.
 *
 * Drain journal: magic "OBXJ", 16 KiB slots, payload
 *     {"ring_id", "ring_pos", "sinks": [[name, end_seq]...],
 *      "counters": bin}
 *   written by each flush once its writes completed, before the ring is
 *   released: ring records before ring_pos (of the shm segment
 *   ring_id) are in the spool or were dropped and counted in counters;
 *   each sink's records from end_seq on belong to a later flush.
 *
 * Recovery (spool_open, synchronous)
 * ==================================
 * - Names other than seg-<16 lowercase hex>.obx / checkpoint /
 *   checkpoint.tmp are foreign: counted, logged, left alone. So is a
 *   segment-named file that is not a regular file of ours, or whose
 *   intact header names another sink or another first seq, except a
 *   file shorter than the header and newer than every valid segment:
 *   that is a crash during segment creation, it holds no record and is
 *   removed. If a foreign file ever takes the name of a segment we need
 *   to create, it is renamed to "<name>.damaged" first.
 * - A damaged header (bad magic, version, length or crc: bit rot) costs
 *   no record: each frame has its own crc and the name gives the first
 *   seq, so the file is scanned like any segment, sealed (never
 *   appended to; its tail is never cut), counted in spool_bytes and
 *   deleted once delivered. Only if no frame of it is valid is it
 *   foreign.
 * - Every segment is scanned in seq order, every frame checked (magic,
 *   hcrc, len within the file, seq increasing, crc). At a bad frame the
 *   scan steps forward 8 bytes at a time until a valid frame: the records
 *   in between are lost, counted as corrupt by the seq gap, and marked
 *   done so the watermark passes them.
 *   Seq gaps between segments count the same way (only seqs >= acked
 *   count: the rest were delivered).
 * - Damage with no valid frame after it, in the newest segment, is a
 *   torn tail: ftruncate + fsync there (truncated_bytes). It is not
 *   counted corrupt by itself: a torn write never completed, so its
 *   records were never acknowledged to the ring and are drained again;
 *   records that had been durable are counted by the checkpoint gap
 *   below. In an older segment the file is not modified; its lost seqs
 *   show as the gap to the next segment.
 * - Lost records are counted exactly, by seq: damaged bytes that cost
 *   no seq (garbage between or after frames) are logged, not counted.
 * - Checkpoint valid: seqs in [acked, first seq found) and in [last seq
 *   found + 1, next_seq) were durable and are gone (nothing is ever
 *   deleted before a checkpoint past it is durable): counted corrupt.
 * - Checkpoint missing or corrupt: acked = the first seq found (deliver
 *   everything present: duplicates possible, no loss), and a fresh
 *   checkpoint is written. Its done ranges are done again (not read).
 * - Drain journal of the same ring, naming this sink: records from
 *   max(end_seq, checkpoint acked, next_seq) on were written by a flush
 *   that did not finish (still in the ring): cut (segments made for them
 *   deleted, the one they continued cut back and sealed), cut_records.
 * - durability = fdatasync: segments past the checkpoint's next_seq are
 *   fdatasync'ed (what a killed broker had not synced yet).
 * - A sparse index (seq -> file offset, one entry per 128 KiB of frames
 *   and after every damaged region) is built per segment, so reads never
 *   rescan and RAM is ~16 bytes per 128 KiB of backlog.
 * - Segments whose records are all below a durable checkpoint are
 *   deleted (a crash between checkpoint and unlink leaves them).
 * No content can make spool_open fail: only real I/O errors on the sink
 * directory itself (EACCES, ENOTDIR, EMFILE...) do.
 */
#define _GNU_SOURCE
#include "spool_format.h"
#include "mpcheck.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#define SEG_MAGIC		0x5358424fu	/* "OBXS" */
#define FRAME_MAGIC		0x5258424fu	/* "OBXR" */
#define SEG_VERSION		1
#define SEG_NAME_OFF		24
#define SEG_NAME_LEN		48
#define SEG_CRC_OFF		92
#define CKPT_MAX		4096
#define SCAN_BUF		(1u << 20)

static inline uint64_t min64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* ---- CRC-32C ----------------------------------------------------------
 *
 * Castagnoli, reflected polynomial 0x82f63b78, initial value and final
 * xor 0xffffffff (iSCSI, ext4, btrfs): crc32c("123456789") = 0xe3069283.
 * Chosen over zlib's crc32() for speed: the SSE4.2 instruction does a
 * 256-byte record in ~30 ns where zlib takes ~250 ns, and every record
 * is summed once on append. Other CPUs use slicing-by-8 tables.
 */

static uint32_t crc32c_tab[8][256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

static void crc32c_init(void)
{
	uint32_t i, j, c;

	for (i = 0; i < 256; i++) {
		c = i;
		for (j = 0; j < 8; j++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		crc32c_tab[0][i] = c;
	}
	for (i = 0; i < 256; i++)
		for (j = 1; j < 8; j++)
			crc32c_tab[j][i] = (crc32c_tab[j - 1][i] >> 8) ^
					   crc32c_tab[0][crc32c_tab[j - 1][i] & 0xff];
}

uint32_t spool_crc32c_sw(uint32_t crc, const void *buf, size_t n)
{
	const uint8_t *p = buf;
	uint32_t x = ~crc;

	pthread_once(&crc32c_once, crc32c_init);
	while (n >= 8) {
		uint32_t lo = x ^ spf_get32(p), hi = spf_get32(p + 4);

		x = crc32c_tab[7][lo & 0xff] ^ crc32c_tab[6][(lo >> 8) & 0xff] ^
		    crc32c_tab[5][(lo >> 16) & 0xff] ^ crc32c_tab[4][lo >> 24] ^
		    crc32c_tab[3][hi & 0xff] ^ crc32c_tab[2][(hi >> 8) & 0xff] ^
		    crc32c_tab[1][(hi >> 16) & 0xff] ^ crc32c_tab[0][hi >> 24];
		p += 8;
		n -= 8;
	}
	while (n--)
		x = (x >> 8) ^ crc32c_tab[0][(x ^ *p++) & 0xff];
	return ~x;
}

#if defined(__x86_64__)
/* The SSE4.2 crc32 instruction has a latency of 3 cycles and a
 * throughput of 1 a cycle, so one serial chain of it runs at a third of
 * the speed the unit could give. Chunks of 3 x CRC_LANE bytes run three
 * independent chains, joined by CRC's linearity: the register after
 * A|B|C from state s is shift(|B|+|C|, crc_s(A)) ^ shift(|C|, crc_0(B))
 * ^ crc_0(C), where shift(n, r) - running n zero bytes from register r -
 * is linear in r: four table look-ups, one table per byte of r, made once
 * with the instruction itself. Frames of a 200-byte event (~250 bytes):
 * ~40 % fewer cycles than the one chain (the spool's CRC was the largest
 * item of the broker thread's profile, 15 %). */
#define CRC_LANE 64
static uint32_t crc32c_shift_tab[2][4][256];   /* by 1 and 2 lanes */
static pthread_once_t crc32c_hw_once = PTHREAD_ONCE_INIT;

__attribute__((target("sse4.2")))
static uint32_t crc32c_zeros(uint32_t r, size_t n)
{
	uint64_t x = r;

	for (; n >= 8; n -= 8)
		x = _mm_crc32_u64(x, 0);
	return (uint32_t)x;
}

static void crc32c_hw_init(void)
{
	int l, k, v;

	for (l = 0; l < 2; l++)
		for (k = 0; k < 4; k++)
			for (v = 0; v < 256; v++)
				crc32c_shift_tab[l][k][v] = crc32c_zeros(
					(uint32_t)v << (8 * k),
					(size_t)(l + 1) * CRC_LANE);
}

static inline uint32_t crc32c_shift(int lanes, uint32_t r)
{
	const uint32_t (*t)[256] = crc32c_shift_tab[lanes - 1];

	return t[0][r & 0xff] ^ t[1][(r >> 8) & 0xff] ^
	       t[2][(r >> 16) & 0xff] ^ t[3][r >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t n)
{
	const uint8_t *p = buf;
	uint64_t x = ~crc;

	while (n >= 3 * CRC_LANE) {
		uint64_t b = 0, c = 0, va, vb, vc;
		size_t i;

		for (i = 0; i < CRC_LANE; i += 8) {
			memcpy(&va, p + i, 8);
			memcpy(&vb, p + CRC_LANE + i, 8);
			memcpy(&vc, p + 2 * CRC_LANE + i, 8);
			x = _mm_crc32_u64(x, va);
			b = _mm_crc32_u64(b, vb);
			c = _mm_crc32_u64(c, vc);
		}
		x = crc32c_shift(2, (uint32_t)x) ^
		    crc32c_shift(1, (uint32_t)b) ^ (uint32_t)c;
		p += 3 * CRC_LANE;
		n -= 3 * CRC_LANE;
	}
	while (n >= 8) {
		uint64_t v;

		memcpy(&v, p, 8);
		x = _mm_crc32_u64(x, v);
		p += 8;
		n -= 8;
	}
	while (n--)
		x = _mm_crc32_u8((uint32_t)x, *p++);
	return ~(uint32_t)x;
}

uint32_t spool_crc32c(uint32_t crc, const void *buf, size_t n)
{
	static int hw = -1;

	if (hw < 0)
		hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
	if (!hw)
		return spool_crc32c_sw(crc, buf, n);
	/* the shift tables: an acquire load once they are made */
	pthread_once(&crc32c_hw_once, crc32c_hw_init);
	return crc32c_hw(crc, buf, n);
}
#else
uint32_t spool_crc32c(uint32_t crc, const void *buf, size_t n)
{
	return spool_crc32c_sw(crc, buf, n);
}
#endif


static inline uint32_t crc_of(uint32_t crc, const void *p, size_t n)
{
	return spool_crc32c(crc, p, n);
}


int spf_read_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t r = pread(fd, (char *)buf + got, len - got,
				  (off_t)(off + got));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (int)(got == len ? 0 : -ENODATA);
}

int spf_write_full(int fd, const void *buf, size_t len)
{
	size_t put = 0;

	while (put < len) {
		ssize_t r = write(fd, (const char *)buf + put, len - put);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		put += (size_t)r;
	}
	return 0;
}

/* ---- formats ---------------------------------------------------------- */

void spf_seg_hdr_build(uint8_t *h, const char *sink, uint64_t first,
		       uint64_t created)
{
	memset(h, 0, SPF_SEG_HDR);
	spf_put32(h, SEG_MAGIC);
	spf_put16(h + 4, SEG_VERSION);
	spf_put16(h + 6, SPF_SEG_HDR);
	spf_put64(h + 8, first);
	spf_put64(h + 16, created);
	memcpy(h + SEG_NAME_OFF, sink, strnlen(sink, SEG_NAME_LEN - 1));
	spf_put32(h + SEG_CRC_OFF, crc_of(0, h, SEG_CRC_OFF));
}

int spf_seg_hdr_check(const uint8_t *h, const char *sink, uint64_t *first,
		      uint64_t *created, char *sink_out)
{
	char name[SEG_NAME_LEN + 1];

	if (spf_get32(h) != SEG_MAGIC || spf_get16(h + 4) != SEG_VERSION ||
	    spf_get16(h + 6) != SPF_SEG_HDR ||
	    spf_get32(h + SEG_CRC_OFF) != crc_of(0, h, SEG_CRC_OFF))
		return -EBADMSG;
	memcpy(name, h + SEG_NAME_OFF, SEG_NAME_LEN);
	name[SEG_NAME_LEN] = 0;
	if (sink && strcmp(name, sink) != 0)
		return -EINVAL;
	if (sink_out)
		strcpy(sink_out, name);
	*first = spf_get64(h + 8);
	if (created)
		*created = spf_get64(h + 16);
	return 0;
}

void spf_frame_build(uint8_t *p, uint64_t seq, const void *rec,
		     uint32_t len)
{
	uint64_t flen = spf_frame_len(len);
	uint32_t crc;

	spf_put32(p, FRAME_MAGIC);
	spf_put32(p + 4, len);
	spf_put64(p + 8, seq);
	memcpy(p + SPF_FRAME_HDR, rec, len);
	memset(p + SPF_FRAME_HDR + len, 0, flen - SPF_FRAME_HDR - len);
	crc = crc_of(0, p + 4, 12);
	crc = crc_of(crc, rec, len);
	spf_put32(p + 16, crc);
	spf_put32(p + 20, crc_of(0, p, 20));
}

/* The header alone: magic and hcrc. */
bool spf_frame_hdr_ok(const uint8_t *h, uint32_t *len, uint64_t *seq)
{
	if (spf_get32(h) != FRAME_MAGIC || spf_get32(h + 20) != crc_of(0, h, 20))
		return false;
	*len = spf_get32(h + 4);
	*seq = spf_get64(h + 8);
	return *len <= SPF_FRAME_LEN_MAX;
}

bool spf_frame_crc_ok(const uint8_t *p, uint32_t len)
{
	uint32_t crc = crc_of(0, p + 4, 12);

	return crc_of(crc, p + SPF_FRAME_HDR, len) == spf_get32(p + 16);
}

/* "seg-<16 lowercase hex>.obx" -> first seq */
bool spf_seg_name_parse(const char *name, uint64_t *first)
{
	uint64_t v = 0;
	int i;

	if (strlen(name) != SPF_SEG_FNAME_LEN || strncmp(name, "seg-", 4) ||
	    strcmp(name + 20, ".obx"))
		return false;
	for (i = 4; i < 20; i++) {
		char c = name[i];

		if (c >= '0' && c <= '9')
			v = v << 4 | (uint64_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v << 4 | (uint64_t)(c - 'a' + 10);
		else
			return false;
	}
	*first = v;
	return true;
}

void spf_seg_name(char *buf, size_t len, uint64_t first)
{
	snprintf(buf, len, "seg-%016" PRIx64 ".obx", first);
}

bool spf_sink_name_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	return n > 0 && n < SPF_NAME_MAX && strcmp(s, ".") &&
	       strcmp(s, "..") && !strchr(s, '/');
}

int spf_tmp_create(int dfd, const char *name)
{
	int fd;

	/* whatever is there (a stale one, or a symlink someone planted) is
	 * removed, never opened: unlink does not follow a symlink */
	if (unlinkat(dfd, name, 0) < 0 && errno != ENOENT)
		return -errno;
	fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
		    O_CLOEXEC, 0600);
	return fd < 0 ? -errno : fd;
}

/* ---- two-slot files ---------------------------------------------------
 *
 * A small state file that is rewritten in place and must never need new
 * disk space (a full disk must not stop acknowledgements): created once
 * at its full size (two slots, written out, fsync, rename), then each
 * update overwrites the OLDER slot with a pwrite. A torn write damages
 * at most that slot; the other still holds the previous state. */

#define SLOT_HDR		24u
#define SLOT_VERSION		2

size_t spf_slot_pack(uint8_t *slot, size_t slot_size, uint32_t magic,
		     uint64_t gen, const void *payload, size_t len)
{
	uint32_t crc;

	if (len > slot_size - SLOT_HDR)
		return 0;
	spf_put32(slot, magic);
	spf_put16(slot + 4, SLOT_VERSION);
	spf_put16(slot + 6, 0);
	spf_put64(slot + 8, gen);
	spf_put32(slot + 16, (uint32_t)len);
	memcpy(slot + SLOT_HDR, payload, len);
	crc = crc_of(0, slot, 20);
	spf_put32(slot + 20, crc_of(crc, payload, len));
	return SLOT_HDR + len;
}

int spf_slot_pick(const uint8_t *file, size_t file_len, size_t slot_size,
		  uint32_t magic, const uint8_t **payload, size_t *len,
		  uint64_t *gen)
{
	int i, best = -1;

	for (i = 0; i < 2; i++) {
		const uint8_t *p = file + (size_t)i * slot_size;
		uint32_t n, crc;
		uint64_t g;

		if ((size_t)(i + 1) * slot_size > file_len ||
		    spf_get32(p) != magic || spf_get16(p + 4) != SLOT_VERSION)
			continue;
		n = spf_get32(p + 16);
		if (n > slot_size - SLOT_HDR)
			continue;
		crc = crc_of(crc_of(0, p, 20), p + SLOT_HDR, n);
		if (crc != spf_get32(p + 20))
			continue;
		g = spf_get64(p + 8);
		if (best >= 0 && g <= *gen)
			continue;
		best = i;
		*gen = g;
		*payload = p + SLOT_HDR;
		*len = n;
	}
	return best;
}

int spf_slot_file_create(int dfd, const char *name, const char *tmp,
			 size_t slot_size, const uint8_t *slot0, size_t len0)
{
	uint8_t *img = calloc(2, slot_size);
	int fd, ret;

	if (!img)
		return -ENOMEM;
	memcpy(img, slot0, len0);
	fd = spf_tmp_create(dfd, tmp);
	if (fd < 0) {
		free(img);
		return fd;
	}
	ret = spf_write_full(fd, img, 2 * slot_size);
	free(img);
	if (!ret && fsync(fd) < 0)
		ret = -errno;
	if (!ret && renameat(dfd, tmp, dfd, name) < 0)
		ret = -errno;
	if (!ret && fsync(dfd) < 0)
		ret = -errno;
	if (ret) {
		close(fd);
		unlinkat(dfd, tmp, 0);
		return ret;
	}
	return fd;
}

int spf_slot_file_open(int dfd, const char *name, size_t slot_size)
{
	struct stat st;
	int fd = openat(dfd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    st.st_uid != geteuid() || (uint64_t)st.st_size != 2 * slot_size) {
		close(fd);
		return -EBADF;
	}
	return fd;
}

/* Reads a whole small file (at most cap bytes): its length or -errno
 * (-ENOENT when missing, -EFBIG when longer than cap). */
static ssize_t read_small(int dfd, const char *name, uint8_t *buf,
			  size_t cap)
{
	struct stat st;
	ssize_t n;
	int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return -EINVAL;
	}
	if ((uint64_t)st.st_size > cap) {
		close(fd);
		return -EFBIG;
	}
	n = spf_read_full(fd, buf, (size_t)st.st_size, 0) ? -EIO :
	    (ssize_t)st.st_size;
	close(fd);
	return n;
}

/* ---- msgpack helpers ------------------------------------------------- */

static bool mp_key(const msgpack_object *k, const char *s)
{
	size_t n = strlen(s);

	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
	       !memcmp(k->via.str.ptr, s, n);
}

static bool mp_str_eq(const msgpack_object *v, const char *s)
{
	size_t n = strlen(s);

	return v->type == MSGPACK_OBJECT_STR && v->via.str.size == n &&
	       !memcmp(v->via.str.ptr, s, n);
}

static bool mp_u64(const msgpack_object *v, uint64_t *out)
{
	if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return false;
	*out = v->via.u64;
	return true;
}

/* Calls kv() for every key/value of the map buf holds: 0, or -1 when buf
 * is not one map or kv() said no. */
static int mp_map_walk(const uint8_t *buf, size_t n,
		       bool (*kv)(void *ctx, const msgpack_object *k,
				  const msgpack_object *v), void *ctx)
{
	msgpack_unpacked u;
	int ret = -1;
	uint32_t i;

	/* a hostile count must not make msgpack-c allocate gigabytes */
	if (mp_check(buf, n))
		return -1;
	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, (const char *)buf, n, NULL) !=
	    MSGPACK_UNPACK_SUCCESS || u.data.type != MSGPACK_OBJECT_MAP)
		goto out;
	for (i = 0; i < u.data.via.map.size; i++)
		if (!kv(ctx, &u.data.via.map.ptr[i].key,
			&u.data.via.map.ptr[i].val))
			goto out;
	ret = 0;
out:
	msgpack_unpacked_destroy(&u);
	return ret;
}

static void mp_pack_key(msgpack_packer *pk, const char *k)
{
	msgpack_pack_str(pk, strlen(k));
	msgpack_pack_str_body(pk, k, strlen(k));
}

static void mp_pack_kv(msgpack_packer *pk, const char *k, uint64_t v)
{
	mp_pack_key(pk, k);
	msgpack_pack_uint64(pk, v);
}

/* ---- checkpoint ---------------------------------------------------------
 *
 * Version 2: a two-slot file (magic "OBXK"), each slot a msgpack map
 *   {"sink", "acked", "next_seq", "sent", "ranges": [[a, b]...],
 *    "corrupt", "dropped_full", "redelivered", "ring_id",
 *    "epoch": [corrupt, dropped_full, redelivered], "base": [u64...]}
 * Version 1 (a bare msgpack map {version, sink, acked, next_seq, crc},
 * replaced through checkpoint.tmp) is still read, and replaced by a
 * version 2 file at the next open. */

#define CK_MAGIC		0x4b58424fu	/* "OBXK" */

static uint32_t ck1_crc(const char *sink, uint64_t acked, uint64_t next)
{
	uint8_t b[16];

	spf_put64(b, acked);
	spf_put64(b + 8, next);
	return crc_of(crc_of(0, b, 16), sink, strlen(sink));
}

struct ck_walk {
	struct spf_ckpt *ck;
	const char *sink;
	int have;
	uint64_t ver, crc;
};

static bool ck1_kv(void *ctx, const msgpack_object *k,
		   const msgpack_object *v)
{
	struct ck_walk *w = ctx;

	if (mp_key(k, "sink")) {
		if (!mp_str_eq(v, w->sink))
			return false;
		w->have |= 1;
	} else if (mp_key(k, "version") && mp_u64(v, &w->ver)) {
		w->have |= 2;
	} else if (mp_key(k, "acked") && mp_u64(v, &w->ck->acked)) {
		w->have |= 4;
	} else if (mp_key(k, "next_seq") && mp_u64(v, &w->ck->next_seq)) {
		w->have |= 8;
	} else if (mp_key(k, "crc") && mp_u64(v, &w->crc)) {
		w->have |= 16;
	}
	return true;
}

/* The version 1 file: 1 valid, -1 corrupt. */
static int ck1_parse(const uint8_t *buf, size_t n, const char *sink,
		     struct spf_ckpt *ck)
{
	struct ck_walk w = { .ck = ck, .sink = sink };

	memset(ck, 0, sizeof(*ck));
	ck->version = 1;
	if (mp_map_walk(buf, n, ck1_kv, &w) || w.have != 31 || w.ver != 1 ||
	    w.crc != ck1_crc(sink, ck->acked, ck->next_seq))
		return -1;
	return 1;
}

static bool ck_ranges(const msgpack_object *v, struct spf_ckpt *ck)
{
	uint32_t i;

	if (v->type != MSGPACK_OBJECT_ARRAY)
		return false;
	for (i = 0; i < v->via.array.size && ck->nranges < SPF_CK_RANGES_MAX;
	     i++) {
		const msgpack_object *r = &v->via.array.ptr[i];
		uint64_t a, b;

		if (r->type != MSGPACK_OBJECT_ARRAY || r->via.array.size != 2 ||
		    !mp_u64(&r->via.array.ptr[0], &a) ||
		    !mp_u64(&r->via.array.ptr[1], &b) || a >= b)
			return false;
		ck->ranges[ck->nranges].a = a;
		ck->ranges[ck->nranges].b = b;
		ck->nranges++;
	}
	return true;
}

/* An array of u64 into out (at most max kept): its length, or -1. */
static int mp_u64s(const msgpack_object *v, uint64_t *out, uint32_t max)
{
	uint32_t i;

	if (v->type != MSGPACK_OBJECT_ARRAY)
		return -1;
	for (i = 0; i < v->via.array.size && i < max; i++)
		if (!mp_u64(&v->via.array.ptr[i], &out[i]))
			return -1;
	return (int)i;
}

static bool ck_base(const msgpack_object *v, struct spf_ckpt *ck)
{
	int n = mp_u64s(v, ck->base, SPF_CK_BASE_MAX);

	ck->nbase = n > 0 ? (uint32_t)n : 0;
	return n >= 0;
}

static bool ck2_kv(void *ctx, const msgpack_object *k,
		   const msgpack_object *v)
{
	struct ck_walk *w = ctx;
	struct spf_ckpt *ck = w->ck;

	if (mp_key(k, "sink")) {
		w->have |= 1;
		return mp_str_eq(v, w->sink);
	}
	if (mp_key(k, "acked")) {
		w->have |= 2;
		return mp_u64(v, &ck->acked);
	}
	if (mp_key(k, "next_seq")) {
		w->have |= 4;
		return mp_u64(v, &ck->next_seq);
	}
	if (mp_key(k, "sent"))
		return mp_u64(v, &ck->sent);
	if (mp_key(k, "ranges"))
		return ck_ranges(v, ck);
	if (mp_key(k, "corrupt"))
		return mp_u64(v, &ck->corrupt);
	if (mp_key(k, "dropped_full"))
		return mp_u64(v, &ck->dropped_full);
	if (mp_key(k, "redelivered"))
		return mp_u64(v, &ck->redelivered);
	if (mp_key(k, "ring_id"))
		return mp_u64(v, &ck->ring_id);
	if (mp_key(k, "epoch"))
		return mp_u64s(v, ck->epoch, 3) == 3;
	if (mp_key(k, "base"))
		return ck_base(v, ck);
	return true;			/* unknown keys: later versions */
}

/* One slot's payload: 1 valid, -1 not. */
static int ck2_parse(const uint8_t *buf, size_t n, const char *sink,
		     struct spf_ckpt *ck)
{
	struct ck_walk w = { .ck = ck, .sink = sink };

	memset(ck, 0, sizeof(*ck));
	ck->version = 2;
	if (mp_map_walk(buf, n, ck2_kv, &w) || w.have != 7)
		return -1;
	return 1;
}

int spf_ck_parse(const uint8_t *buf, size_t n, const char *sink,
		 struct spf_ckpt *ck)
{
	const uint8_t *pl;
	uint64_t gen = 0;
	size_t len;

	if (n == 2 * SPF_CK_SLOT) {
		if (spf_slot_pick(buf, n, SPF_CK_SLOT, CK_MAGIC, &pl, &len,
				  &gen) < 0 || ck2_parse(pl, len, sink, ck) < 0)
			return -1;
		ck->gen = gen;
		return 1;
	}
	if (n > 0 && n < CKPT_MAX)
		return ck1_parse(buf, n, sink, ck);
	return -1;
}

int spf_ck_load(int dfd, const char *sink, struct spf_ckpt *ck)
{
	uint8_t *buf = malloc(2 * SPF_CK_SLOT);
	ssize_t n;
	int ret;

	if (!buf)
		return -1;
	n = read_small(dfd, SPF_CKPT_NAME, buf, 2 * SPF_CK_SLOT);
	if (n == -ENOENT)
		ret = 0;
	else
		ret = n < 0 ? -1 : spf_ck_parse(buf, (size_t)n, sink, ck);
	free(buf);
	return ret;
}

size_t spf_ck_encode(uint8_t *slot, const char *sink,
		     const struct spf_ckpt *ck)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	size_t n;
	uint32_t i;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 11);
	mp_pack_key(&pk, "sink");
	msgpack_pack_str(&pk, strlen(sink));
	msgpack_pack_str_body(&pk, sink, strlen(sink));
	mp_pack_kv(&pk, "acked", ck->acked);
	mp_pack_kv(&pk, "next_seq", ck->next_seq);
	mp_pack_kv(&pk, "sent", ck->sent);
	mp_pack_key(&pk, "ranges");
	msgpack_pack_array(&pk, ck->nranges);
	for (i = 0; i < ck->nranges; i++) {
		msgpack_pack_array(&pk, 2);
		msgpack_pack_uint64(&pk, ck->ranges[i].a);
		msgpack_pack_uint64(&pk, ck->ranges[i].b);
	}
	mp_pack_kv(&pk, "corrupt", ck->corrupt);
	mp_pack_kv(&pk, "dropped_full", ck->dropped_full);
	mp_pack_kv(&pk, "redelivered", ck->redelivered);
	mp_pack_kv(&pk, "ring_id", ck->ring_id);
	mp_pack_key(&pk, "epoch");
	msgpack_pack_array(&pk, 3);
	for (i = 0; i < 3; i++)
		msgpack_pack_uint64(&pk, ck->epoch[i]);
	mp_pack_key(&pk, "base");
	msgpack_pack_array(&pk, ck->nbase);
	for (i = 0; i < ck->nbase; i++)
		msgpack_pack_uint64(&pk, ck->base[i]);
	n = sb.data ? spf_slot_pack(slot, SPF_CK_SLOT, CK_MAGIC, ck->gen,
				    sb.data, sb.size) : 0;
	msgpack_sbuffer_destroy(&sb);
	return n;
}

int spf_ck_create(int dfd, const char *sink, const struct spf_ckpt *ck)
{
	uint8_t *slot = calloc(1, SPF_CK_SLOT);
	size_t n;
	int fd;

	if (!slot)
		return -ENOMEM;
	n = spf_ck_encode(slot, sink, ck);
	fd = n ? spf_slot_file_create(dfd, SPF_CKPT_NAME, SPF_CKPT_TMP,
				      SPF_CK_SLOT, slot, n) : -EOVERFLOW;
	free(slot);
	return fd;
}

/* ---- drain journal ------------------------------------------------------
 *
 * <spool_dir>/drain-state: a two-slot file (magic "OBXJ") the broker
 * rewrites after every spool flush's writes completed and before it
 * releases the ring:
 *   {"ring_id": u64, "ring_pos": u64, "sinks": [[name, end_seq]...],
 *    "counters": bin}
 * ring_pos: every ring record before it is in the spool (or was dropped
 * and counted in "counters", the broker's own encoding); end_seq: one
 * past each sink's last record written by that flush. */

#define JR_MAGIC		0x4a58424fu	/* "OBXJ" */

static bool jr_sinks(const msgpack_object *v, struct spf_journal *j)
{
	uint32_t i;

	if (v->type != MSGPACK_OBJECT_ARRAY)
		return false;
	for (i = 0; i < v->via.array.size && j->nsinks < SPF_JR_SINKS_MAX;
	     i++) {
		const msgpack_object *e = &v->via.array.ptr[i], *nm;

		if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2)
			return false;
		nm = &e->via.array.ptr[0];
		if (nm->type != MSGPACK_OBJECT_STR || !nm->via.str.size ||
		    nm->via.str.size >= SPF_NAME_MAX ||
		    !mp_u64(&e->via.array.ptr[1], &j->sinks[j->nsinks].end_seq))
			return false;
		memcpy(j->sinks[j->nsinks].name, nm->via.str.ptr,
		       nm->via.str.size);
		j->sinks[j->nsinks].name[nm->via.str.size] = '\0';
		/* a name with a NUL in it, or none a sink could have */
		if (strlen(j->sinks[j->nsinks].name) != nm->via.str.size ||
		    !spf_sink_name_ok(j->sinks[j->nsinks].name))
			return false;
		j->nsinks++;
	}
	return true;
}

struct jr_walk {
	struct spf_journal *j;
	int have;
};

static bool jr_kv(void *ctx, const msgpack_object *k,
		  const msgpack_object *v)
{
	struct jr_walk *w = ctx;
	struct spf_journal *j = w->j;

	if (mp_key(k, "ring_id")) {
		w->have |= 1;
		return mp_u64(v, &j->ring_id);
	}
	if (mp_key(k, "ring_pos")) {
		w->have |= 2;
		return mp_u64(v, &j->ring_pos);
	}
	if (mp_key(k, "sinks")) {
		w->have |= 4;
		return jr_sinks(v, j);
	}
	if (mp_key(k, "counters")) {
		if (v->type != MSGPACK_OBJECT_BIN ||
		    v->via.bin.size > SPF_JR_BLOB_MAX)
			return false;
		j->blob_len = v->via.bin.size;
		memcpy(j->blob, v->via.bin.ptr, j->blob_len);
	}
	return true;
}

int spf_jr_parse(const uint8_t *buf, size_t n, struct spf_journal *j)
{
	struct jr_walk w = { .j = j };

	memset(j, 0, sizeof(*j));
	if (mp_map_walk(buf, n, jr_kv, &w) || w.have != 7)
		return -1;
	return 1;
}

int spf_jr_load(int dfd, struct spf_journal *j)
{
	uint8_t *buf = malloc(2 * SPF_JR_SLOT);
	const uint8_t *pl;
	size_t len;
	uint64_t gen = 0;
	ssize_t n;
	int ret = -1;

	if (!buf)
		return -1;
	n = read_small(dfd, SPF_JOURNAL_NAME, buf, 2 * SPF_JR_SLOT);
	if (n == -ENOENT)
		ret = 0;
	else if (n == 2 * SPF_JR_SLOT &&
		 spf_slot_pick(buf, (size_t)n, SPF_JR_SLOT, JR_MAGIC, &pl, &len,
			       &gen) >= 0 && spf_jr_parse(pl, len, j) > 0)
		ret = 1;
	if (ret > 0)
		j->gen = gen;
	free(buf);
	return ret;
}

size_t spf_jr_encode(uint8_t *slot, const struct spf_journal *j)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	size_t n;
	uint32_t i;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 4);
	mp_pack_kv(&pk, "ring_id", j->ring_id);
	mp_pack_kv(&pk, "ring_pos", j->ring_pos);
	mp_pack_key(&pk, "sinks");
	msgpack_pack_array(&pk, j->nsinks);
	for (i = 0; i < j->nsinks; i++) {
		msgpack_pack_array(&pk, 2);
		msgpack_pack_str(&pk, strlen(j->sinks[i].name));
		msgpack_pack_str_body(&pk, j->sinks[i].name,
				      strlen(j->sinks[i].name));
		msgpack_pack_uint64(&pk, j->sinks[i].end_seq);
	}
	mp_pack_key(&pk, "counters");
	msgpack_pack_bin(&pk, j->blob_len);
	msgpack_pack_bin_body(&pk, j->blob, j->blob_len);
	n = sb.data ? spf_slot_pack(slot, SPF_JR_SLOT, JR_MAGIC, j->gen,
				    sb.data, sb.size) : 0;
	msgpack_sbuffer_destroy(&sb);
	return n;
}

/* ---- scanning a segment file (recovery, verify, dump) ---------------- */

struct scan {
	int fd;
	uint64_t size;
	uint8_t *buf;
	size_t cap;
	uint64_t boff;
	size_t blen;
	int err;
};

enum { FR_OK, FR_BAD, FR_TRUNC, FR_BADCRC, FR_IOERR };

/* Pointer to file bytes [off, off + len), or NULL (past EOF, I/O error
 * in s->err, or no memory). The window grows to hold a whole frame. */
static const uint8_t *scan_at(struct scan *s, uint64_t off, size_t len)
{
	size_t want, got = 0;

	if (off > s->size || len > s->size - off)
		return NULL;
	if (s->blen && off >= s->boff && off + len <= s->boff + s->blen)
		return s->buf + (off - s->boff);
	if (len > s->cap) {
		size_t ncap = (len + 65535) & ~(size_t)65535;
		uint8_t *nb = realloc(s->buf, ncap);

		if (!nb) {
			s->err = -ENOMEM;
			return NULL;
		}
		s->buf = nb;
		s->cap = ncap;
	}
	want = (size_t)min64(s->cap, s->size - off);
	s->blen = 0;
	while (got < want) {
		ssize_t r = pread(s->fd, s->buf + got, want - got,
				  (off_t)(off + got));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			s->err = -errno;
			return NULL;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	s->boff = off;
	s->blen = got;
	if (got < len) {
		s->err = -EIO;		/* the file shrank under us */
		return NULL;
	}
	return s->buf;
}

static int frame_at(struct scan *s, uint64_t off, uint64_t min_seq,
		    uint64_t *seq, uint32_t *len, const uint8_t **payload)
{
	const uint8_t *h = scan_at(s, off, SPF_FRAME_HDR);
	uint64_t flen;

	if (!h)
		return s->err ? FR_IOERR : FR_TRUNC;
	if (!spf_frame_hdr_ok(h, len, seq) || *seq < min_seq)
		return FR_BAD;
	flen = spf_frame_len(*len);
	if (flen > s->size - off)
		return FR_TRUNC;
	h = scan_at(s, off, flen);
	if (!h)
		return s->err ? FR_IOERR : FR_TRUNC;
	if (!spf_frame_crc_ok(h, *len))
		return FR_BADCRC;
	*payload = h + SPF_FRAME_HDR;
	return FR_OK;
}

void spf_seg_scan(int fd, uint64_t size, uint64_t first,
		  const struct spf_scan_cb *cb, void *ctx,
		  struct spf_scan_res *r)
{
	struct scan s = { .fd = fd, .size = size };
	uint64_t off = SPF_SEG_HDR, min_seq = first, seq, o;
	const uint8_t *pl;
	uint32_t len;
	int rc;

	memset(r, 0, sizeof(*r));
	s.cap = SCAN_BUF;
	s.buf = malloc(s.cap);
	if (!s.buf) {
		r->err = -ENOMEM;
		r->tail_off = off;
		return;
	}
	while (off < size) {
		rc = frame_at(&s, off, min_seq, &seq, &len, &pl);
		if (rc == FR_IOERR)
			goto ioerr;
		if (rc == FR_OK) {
			if (cb && cb->frame)
				cb->frame(ctx, off, seq, pl, len);
			r->nrec++;
			r->last_seq = seq;
			min_seq = seq + 1;
			off += spf_frame_len(len);
			continue;
		}
		/* damaged at off: look for the next valid frame */
		r->tail_bitrot = rc == FR_BADCRC;
		for (o = off + 8; o + SPF_FRAME_HDR <= size; o += 8) {
			int rc2 = frame_at(&s, o, min_seq, &seq, &len, &pl);

			if (rc2 == FR_OK)
				break;
			if (rc2 == FR_IOERR) {
				off = o;
				goto ioerr;
			}
		}
		if (o + SPF_FRAME_HDR > size) {
			r->tail_off = off;
			goto out;
		}
		r->tail_bitrot = false;
		if (cb && cb->damage)
			cb->damage(ctx, off, o);
		off = o;
	}
	r->tail_off = size;
	r->tail_bitrot = false;
	goto out;
ioerr:
	r->err = s.err ? s.err : -EIO;
	r->tail_off = off;
	r->tail_bitrot = false;
out:
	free(s.buf);
}


int spf_seg_open(int dfd, const char *name, uint64_t first, const char *sink,
		 int flags, struct spf_seg_info *si)
{
	uint64_t hfirst;
	struct stat st;
	int fd, rc;

	memset(si, 0, sizeof(*si));
	si->state = SPF_SEG_FOREIGN;
	fd = openat(dfd, name, (flags & O_ACCMODE) | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		si->why = strerror(errno);
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		si->why = "not a regular file";
		goto out;
	}
	si->size = (uint64_t)st.st_size;
	if ((flags & SPF_OPEN_OWNER) && st.st_uid != geteuid()) {
		si->why = "owned by another user";
		goto out;
	}
	if (si->size < SPF_SEG_HDR) {
		si->state = SPF_SEG_SHORT;
		si->why = "shorter than a segment header";
		goto out;
	}
	if (spf_read_full(fd, si->hdr, SPF_SEG_HDR, 0)) {
		si->why = "unreadable header";
		goto out;
	}
	rc = spf_seg_hdr_check(si->hdr, sink, &hfirst, &si->created, NULL);
	if (rc == -EBADMSG) {
		/* bit rot in 96 bytes must not cost the records behind
		 * them: each frame has its own crc, the name its first seq */
		si->state = SPF_SEG_HDR_DAMAGED;
		si->why = "damaged segment header";
		si->created = (uint64_t)st.st_mtim.tv_sec * 1000000000ull +
			      (uint64_t)st.st_mtim.tv_nsec;
		return fd;
	}
	if (rc) {
		si->why = "a segment of another sink";
		goto out;
	}
	if (hfirst != first) {
		si->why = "header and file name disagree";
		goto out;
	}
	si->state = SPF_SEG_OK;
	return fd;
out:
	close(fd);
	return -1;
}

static int seg_file_cmp(const void *a, const void *b)
{
	const struct spf_file *x = a, *y = b;

	if (x->is_seg != y->is_seg)
		return x->is_seg ? -1 : 1;
	if (x->is_seg)
		return x->first < y->first ? -1 : x->first > y->first;
	return strcmp(x->name, y->name);
}

/* Every file of a sink directory but the checkpoint: segments first, in
 * order, then the others by name. Used by recovery and by the offline
 * tools (ls, verify, dump). */
int spf_list_files(int dfd, struct spf_file **out, int *nout)
{
	struct spf_file *v = NULL;
	int n = 0, cap = 0, fd;
	struct dirent *de;
	DIR *d;

	fd = dup(dfd);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
		    !strcmp(de->d_name, SPF_CKPT_NAME))
			continue;
		if (n == cap) {
			int ncap = cap ? cap * 2 : 16;
			struct spf_file *nv = realloc(v, (size_t)ncap *
						      sizeof(*nv));

			if (!nv) {
				free(v);
				closedir(d);
				return -ENOMEM;
			}
			v = nv;
			cap = ncap;
		}
		snprintf(v[n].name, sizeof(v[n].name), "%s", de->d_name);
		v[n].is_seg = spf_seg_name_parse(de->d_name, &v[n].first);
		n++;
	}
	closedir(d);
	if (n)
		qsort(v, (size_t)n, sizeof(*v), seg_file_cmp);
	*out = v;
	*nout = n;
	return 0;
}

/* ---- offline: ls / verify / dump ---------------------------------------- */

typedef int (*sink_fn)(const char *dir, const char *sink, int dfd,
		       FILE *out, void *ctx);

/* The broker's own files at the top of spool_dir, next to the sink
 * directories: the delivery state (persist.c) and the temp file it is
 * replaced through ("<name>.tmp.XXXXXX", left behind by a crash), the
 * drain journal and its temp file. */
static bool top_file_known(const char *name)
{
	size_t n = strlen(SPF_DELIVERY_STATE);

	if (!strcmp(name, SPF_JOURNAL_NAME) || !strcmp(name, SPF_JOURNAL_TMP))
		return true;
	return !strncmp(name, SPF_DELIVERY_STATE, n) &&
	       (!name[n] || !strncmp(name + n, ".tmp.", 5));
}

/* Calls fn for every sink directory (or only the one named); the
 * broker's own files are skipped, other entries are reported (report)
 * and counted as problems (count). */
static int for_each_sink(const char *dir, const char *only, sink_fn fn,
			 FILE *out, void *ctx, bool report, bool count)
{
	struct dirent **names = NULL;
	int n, i, total = 0, ret = 0;

	n = scandir(dir, &names, NULL, alphasort);
	if (n < 0)
		return -errno;
	for (i = 0; i < n; i++) {
		const char *name = names[i]->d_name;
		char path[4096];
		struct stat st;
		int dfd, r;

		if (!strcmp(name, ".") || !strcmp(name, "..") ||
		    (only && strcmp(only, name)) ||
		    (!only && top_file_known(name)))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		if (!only && strstr(name, SPF_ASIDE)) {
			/* the broker did not trust it: nothing in it is
			 * used, someone should look */
			if (report)
				fprintf(out, "moved aside %s (untrusted, not "
					"used by the broker)\n", path);
			if (count)
				total++;
			continue;
		}
		if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode)) {
			if (!only && report)
				fprintf(out, "foreign file %s (not a sink "
					"directory)\n", path);
			if (!only && count)
				total++;
			continue;
		}
		dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			   O_CLOEXEC);
		if (dfd < 0) {
			ret = -errno;
			fprintf(out, "%s: %s\n", path, strerror(errno));
			continue;
		}
		r = fn(dir, name, dfd, out, ctx);
		close(dfd);
		if (r < 0)
			ret = r;
		else
			total += r;
	}
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return ret < 0 && !total ? ret : total;
}

static void fmt_time(char *buf, size_t len, uint64_t ns)
{
	time_t t = (time_t)(ns / 1000000000ull);
	struct tm tm;

	if (!gmtime_r(&t, &tm) || !strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(buf, len, "?");
}

static int ls_sink(const char *dir, const char *sink, int dfd, FILE *out,
		   void *ctx)
{
	struct spf_file *v = NULL;
	struct spf_ckpt c;
	uint64_t total = 0;
	int n = 0, i, ck, nseg = 0, ret;

	ret = spf_list_files(dfd, &v, &n);
	if (ret)
		return ret;
	for (i = 0; i < n; i++) {
		struct stat st;

		if (v[i].is_seg && !fstatat(dfd, v[i].name, &st, 0)) {
			total += (uint64_t)st.st_size;
			nseg++;
		}
	}
	ck = spf_ck_load(dfd, sink, &c);
	fprintf(out, "%s: %d segments, %" PRIu64 " bytes, ", sink, nseg, total);
	if (ck > 0)
		fprintf(out, "checkpoint acked=%" PRIu64 " next_seq=%" PRIu64
			" (%u ranges above, version %u)\n", c.acked,
			c.next_seq, c.nranges, c.version);
	else
		fprintf(out, "checkpoint %s\n", ck ? "corrupt" : "missing");
	for (i = 0; i < n; i++) {
		struct spf_seg_info si;
		char when[64];
		int fd;

		if (!v[i].is_seg) {
			fprintf(out, "  %-28s foreign (ignored)\n", v[i].name);
			continue;
		}
		fd = spf_seg_open(dfd, v[i].name, v[i].first, sink, O_RDONLY,
				  &si);
		if (fd < 0) {
			fprintf(out, "  %-28s %s\n", v[i].name, si.why);
			continue;
		}
		close(fd);
		fmt_time(when, sizeof(when), si.created);
		fprintf(out, "  %-28s first=%" PRIu64 " bytes=%" PRIu64
			" %s=%s%s\n", v[i].name, v[i].first, si.size,
			si.state == SPF_SEG_OK ? "created" : "modified", when,
			si.state == SPF_SEG_OK ? "" :
			" (header damaged, records readable)");
	}
	free(v);
	return 0;
}

int spool_ls(const char *dir, FILE *out)
{
	int ret = for_each_sink(dir, NULL, ls_sink, out, NULL, true, false);

	return ret < 0 ? ret : 0;
}

struct verify_ctx {
	FILE *out;
	const char *sink;
	const char *file;
	uint64_t expect;
	int problems;
};

static void ver_frame(void *ctx, uint64_t off, uint64_t seq,
		      const uint8_t *payload, uint32_t len)
{
	struct verify_ctx *c = ctx;

	if (c->expect && seq != c->expect) {
		fprintf(c->out, "%s/%s: seqs %" PRIu64 "..%" PRIu64
			" missing (before offset %" PRIu64 ")\n", c->sink,
			c->file, c->expect, seq - 1, off);
		c->problems++;
	}
	c->expect = seq + 1;
}

static void ver_damage(void *ctx, uint64_t off, uint64_t end)
{
	struct verify_ctx *c = ctx;

	fprintf(c->out, "%s/%s: damaged bytes %" PRIu64 "..%" PRIu64 "\n",
		c->sink, c->file, off, end);
	c->problems++;
}

static int verify_sink(const char *dir, const char *sink, int dfd, FILE *out,
		       void *ctx)
{
	struct verify_ctx c = { .out = out, .sink = sink };
	struct spf_file *v = NULL;
	struct spf_ckpt ckpt;
	uint64_t nrec = 0;
	int n = 0, i, ck, ret;

	ret = spf_list_files(dfd, &v, &n);
	if (ret)
		return ret;
	ck = spf_ck_load(dfd, sink, &ckpt);
	if (ck < 0) {
		fprintf(out, "%s/checkpoint: corrupt\n", sink);
		c.problems++;
	}
	for (i = 0; i < n; i++) {
		struct spf_seg_info si;
		struct spf_scan_res r;
		uint64_t size;
		int fd;

		c.file = v[i].name;
		if (!v[i].is_seg) {
			fprintf(out, "%s/%s: foreign file\n", sink, v[i].name);
			c.problems++;
			continue;
		}
		fd = spf_seg_open(dfd, v[i].name, v[i].first, sink, O_RDONLY,
				  &si);
		if (fd < 0 || si.state != SPF_SEG_OK) {
			fprintf(out, "%s/%s: %s%s\n", sink, v[i].name, si.why,
				fd < 0 ? "" : " (its frames are scanned)");
			c.problems++;
		}
		if (fd < 0)
			continue;
		size = si.size;
		spf_seg_scan(fd, size, v[i].first,
			     &(struct spf_scan_cb){ ver_frame, ver_damage }, &c,
			     &r);
		close(fd);
		nrec += r.nrec;
		if (r.err) {
			fprintf(out, "%s/%s: read error at %" PRIu64 ": %s\n",
				sink, v[i].name, r.tail_off, strerror(-r.err));
			c.problems++;
		} else if (r.tail_off < size) {
			fprintf(out, "%s/%s: torn or damaged tail: %" PRIu64
				" bytes at offset %" PRIu64 "\n", sink,
				v[i].name, size - r.tail_off, r.tail_off);
			c.problems++;
		}
	}
	fprintf(out, "%s: %" PRIu64 " records, %d problems\n", sink, nrec,
		c.problems);
	free(v);
	return c.problems;
}

int spool_verify(const char *dir, FILE *out)
{
	return for_each_sink(dir, NULL, verify_sink, out, NULL, true, true);
}

struct dump_ctx {
	FILE *out;
	const char *sink;
	void (*fmt)(FILE *out, const uint8_t *p, uint32_t n);
};

static void dump_frame(void *ctx, uint64_t off, uint64_t seq,
		       const uint8_t *payload, uint32_t len)
{
	struct dump_ctx *c = ctx;
	uint32_t i;

	fprintf(c->out, "%s %" PRIu64 " %u ", c->sink, seq, len);
	if (c->fmt) {
		c->fmt(c->out, payload, len);
	} else {
		for (i = 0; i < len; i++)
			fprintf(c->out, "%02x", payload[i]);
	}
	fputc('\n', c->out);
}

static int dump_sink(const char *dir, const char *sink, int dfd, FILE *out,
		     void *ctx)
{
	struct dump_ctx c = { .out = out, .sink = sink,
			      .fmt = ((struct dump_ctx *)ctx)->fmt };
	struct spf_file *v = NULL;
	int n = 0, i, ret;

	ret = spf_list_files(dfd, &v, &n);
	if (ret)
		return ret;
	for (i = 0; i < n; i++) {
		struct spf_seg_info si;
		struct spf_scan_res r;
		int fd;

		if (!v[i].is_seg)
			continue;
		fd = spf_seg_open(dfd, v[i].name, v[i].first, sink, O_RDONLY,
				  &si);
		if (fd < 0)
			continue;
		spf_seg_scan(fd, si.size, v[i].first,
			     &(struct spf_scan_cb){ dump_frame, NULL }, &c, &r);
		close(fd);
	}
	free(v);
	return 0;
}

int spool_dump(const char *dir, const char *sink, FILE *out,
	       void (*fmt_payload)(FILE *out, const uint8_t *p, uint32_t n))
{
	struct dump_ctx c = { .fmt = fmt_payload };
	struct stat st;
	int ret;

	if (sink) {
		char path[4096];

		snprintf(path, sizeof(path), "%s/%s", dir, sink);
		if (lstat(path, &st) < 0)
			return -errno;
		if (!S_ISDIR(st.st_mode))
			return -ENOTDIR;
	}
	ret = for_each_sink(dir, sink, dump_sink, out, &c, false, false);
	return ret < 0 ? ret : 0;
}
