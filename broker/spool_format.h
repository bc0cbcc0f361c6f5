/* spool_format.h - the spool's on-disk format, and nothing else: segment
 * headers and CRC-framed records, the checkpoint file, the scanner that
 * validates a segment frame by frame, the directory lister, and the
 * offline tools (`outbox spool ls|verify|dump`). No reactor, no config,
 * no broker state: the io_uring writer/reader (spool.c) and the CLI both
 * build on this, and the CLI links it alone.
 *
 * The format itself (byte layouts, recovery rules) is described at the
 * top of spool_format.c; docs/DESIGN.md points there.
 *
 * Prefix spf_ (spool format). Functions return 0 / -errno unless they
 * say otherwise; none of them keeps state between calls.
 */
#ifndef OBX_SPOOL_FORMAT_H
#define OBX_SPOOL_FORMAT_H

#include <endian.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define SPF_SEG_HDR		96u	/* segment header; frames follow */
#define SPF_FRAME_HDR		24u	/* frame header; payload follows */
#define SPF_FRAME_LEN_MAX	(1u << 30)
#define SPF_SEG_FNAME_LEN	24	/* "seg-" 16 hex ".obx" */
#define SPF_NAME_MAX		48	/* sink name incl. NUL */
#define SPF_CKPT_NAME		"checkpoint"
#define SPF_CKPT_TMP		"checkpoint.tmp"
/* <spool_dir>/drain-state: where the ring stands with the spool */
#define SPF_JOURNAL_NAME	"drain-state"
#define SPF_JOURNAL_TMP		"drain-state.tmp"
/* <spool_dir>/delivery-state: the delivery policy's file (persist.h
 * PERSIST_FILE), next to the sink directories; not a sink */
#define SPF_DELIVERY_STATE	"delivery-state"
/* suffix of an untrusted directory (or a file where a directory
 * belongs) that the broker moved aside: "<name>~aside[.N]" */
#define SPF_ASIDE		"~aside"

/* ---- little-endian access ------------------------------------------- */

static inline void spf_put16(uint8_t *p, uint16_t v)
{
	v = htole16(v);
	memcpy(p, &v, 2);
}

static inline void spf_put32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

static inline void spf_put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static inline uint16_t spf_get16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return le16toh(v);
}

static inline uint32_t spf_get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return le32toh(v);
}

static inline uint64_t spf_get64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return le64toh(v);
}

/* Bytes a frame of `len` payload bytes takes on disk (8-byte aligned). */
static inline uint64_t spf_frame_len(uint32_t len)
{
	return SPF_FRAME_HDR + (((uint64_t)len + 7) & ~7ull);
}

/* ---- CRC-32C -------------------------------------------------------- */

/* CRC-32C of the on-disk format (chainable: pass the previous value, 0
 * to start); hardware (SSE4.2) when the CPU has it. _sw: the portable
 * table version, for tests. */
uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n);
uint32_t spool_crc32c_sw(uint32_t crc, const void *p, size_t n);

/* ---- segment header, frames, names ----------------------------------- */

void spf_seg_hdr_build(uint8_t *h, const char *sink, uint64_t first,
		       uint64_t created);
/* 0 when the header is ours; sink NULL accepts any sink name (returned
 * in sink_out, SPF_NAME_MAX + 1 bytes, when given). -EBADMSG when the
 * header is damaged (magic, version, length, crc), -EINVAL when it is
 * intact but another sink's. */
int spf_seg_hdr_check(const uint8_t *h, const char *sink, uint64_t *first,
		      uint64_t *created, char *sink_out);

/* Writes a whole frame (spf_frame_len(len) bytes) at p. */
void spf_frame_build(uint8_t *p, uint64_t seq, const void *rec,
		     uint32_t len);
/* The frame header alone (magic, hcrc, len bound). */
bool spf_frame_hdr_ok(const uint8_t *h, uint32_t *len, uint64_t *seq);
/* The payload crc of a whole frame at p. */
bool spf_frame_crc_ok(const uint8_t *p, uint32_t len);

/* "seg-<16 lowercase hex>.obx" <-> first seq */
bool spf_seg_name_parse(const char *name, uint64_t *first);
void spf_seg_name(char *buf, size_t len, uint64_t first);
/* A name usable as a sink directory: 1..47 bytes, not "." / "..", no
 * '/'. */
bool spf_sink_name_ok(const char *s);

/* ---- plain I/O helpers ------------------------------------------------ */

/* pread until len bytes: 0, -errno, or -ENODATA at a short file. */
int spf_read_full(int fd, void *buf, size_t len, uint64_t off);
int spf_write_full(int fd, const void *buf, size_t len);
/* Creates a temp file `name` in dfd for an atomic replace: whatever has
 * that name is unlinked first, the new one is made O_EXCL|O_NOFOLLOW,
 * mode 0600. fd or -errno. */
int spf_tmp_create(int dfd, const char *name);

/* ---- two-slot files -------------------------------------------------- */

/* A state file rewritten in place that never needs new disk space: two
 * slots of slot_size bytes, written out in full at creation; an update
 * overwrites the older slot. Slot: magic u32, version u16 (2), 0 u16,
 * gen u64, len u32, crc32c u32 (of the 20 bytes before and the
 * payload), payload. The valid slot with the highest gen wins. */

/* Builds a slot at `slot`: bytes to write, 0 if the payload is too big. */
size_t spf_slot_pack(uint8_t *slot, size_t slot_size, uint32_t magic,
		     uint64_t gen, const void *payload, size_t len);
/* The valid slot of a file image with the highest gen: its index (0/1,
 * with payload, len and gen set) or -1. */
int spf_slot_pick(const uint8_t *file, size_t file_len, size_t slot_size,
		  uint32_t magic, const uint8_t **payload, size_t *len,
		  uint64_t *gen);
/* Creates the file (2 x slot_size, slot0 in slot 0, zeros elsewhere)
 * through tmp: written out, fsync, rename, fsync of dfd. The new file's
 * fd (O_WRONLY) or -errno. */
int spf_slot_file_create(int dfd, const char *name, const char *tmp,
			 size_t slot_size, const uint8_t *slot0, size_t len0);
/* Opens an existing one for updates (O_RDWR|O_NOFOLLOW): fd, or -errno
 * (-EBADF when it is not a regular file of ours of the right size). */
int spf_slot_file_open(int dfd, const char *name, size_t slot_size);

/* ---- checkpoint -------------------------------------------------------- */

#define SPF_CK_SLOT		8192u
#define SPF_CK_RANGES_MAX	256	/* done ranges above acked */
#define SPF_CK_BASE_MAX		16	/* the owner's counters */

struct spf_range {
	uint64_t a, b;			/* [a, b) */
};

struct spf_ckpt {
	uint32_t version;		/* 2; 1 = the old single-map file */
	uint64_t gen;			/* slot generation (version 2) */
	uint64_t acked;			/* every seq < acked is done */
	uint64_t next_seq;		/* one past the last durable record */
	uint64_t sent;			/* one past the last record read for
					 * delivery (possible duplicates
					 * after a crash are below it) */
	uint32_t nranges;
	struct spf_range ranges[SPF_CK_RANGES_MAX]; /* done, above acked */
	uint64_t corrupt;		/* totals of this sink's spool, */
	uint64_t dropped_full;		/* carried across restarts */
	uint64_t redelivered;
	uint64_t ring_id;		/* the ring these counters are of */
	uint64_t epoch[3];		/* corrupt, dropped_full, redelivered
					 * when that ring was new: published
					 * counters start there */
	uint32_t nbase;
	uint64_t base[SPF_CK_BASE_MAX];	/* opaque: the owner's counters */
};

/* 1 valid (version 2, or 1), 0 missing, -1 corrupt or unreadable. */
int spf_ck_load(int dfd, const char *sink, struct spf_ckpt *ck);
/* The same for a file image in memory: 1 valid, -1 not. */
int spf_ck_parse(const uint8_t *buf, size_t n, const char *sink,
		 struct spf_ckpt *ck);
/* A slot (SPF_CK_SLOT bytes at slot) for ck: bytes to write, or 0. */
size_t spf_ck_encode(uint8_t *slot, const char *sink,
		     const struct spf_ckpt *ck);
/* Creates the checkpoint file with ck in slot 0: fd (O_WRONLY) or
 * -errno. */
int spf_ck_create(int dfd, const char *sink, const struct spf_ckpt *ck);

/* ---- drain journal ------------------------------------------------------ */

#define SPF_JR_SLOT		16384u
#define SPF_JR_SINKS_MAX	64
#define SPF_JR_BLOB_MAX		8192u

struct spf_journal {
	uint64_t gen;
	uint64_t ring_id;		/* shm segment_id the positions are of */
	uint64_t ring_pos;		/* ring records before it: in the spool
					 * or counted dropped */
	uint32_t nsinks;
	struct {
		char name[SPF_NAME_MAX];
		uint64_t end_seq;	/* one past its last record written */
	} sinks[SPF_JR_SINKS_MAX];
	uint32_t blob_len;
	uint8_t blob[SPF_JR_BLOB_MAX];	/* opaque: the owner's counters */
};

/* 1 valid, 0 missing, -1 damaged. */
int spf_jr_load(int dfd, struct spf_journal *j);
int spf_jr_parse(const uint8_t *buf, size_t n, struct spf_journal *j);
/* A slot (SPF_JR_SLOT bytes) for j: bytes to write, or 0. */
size_t spf_jr_encode(uint8_t *slot, const struct spf_journal *j);

/* ---- scanning a segment file ----------------------------------------- */

struct spf_scan_cb {
	void (*frame)(void *ctx, uint64_t off, uint64_t seq,
		      const uint8_t *payload, uint32_t len);
	void (*damage)(void *ctx, uint64_t off, uint64_t end);
};

struct spf_scan_res {
	uint64_t nrec;
	uint64_t last_seq;		/* 0: none */
	uint64_t tail_off;		/* trailing damage starts (size: none) */
	bool tail_bitrot;		/* ... with a whole frame, bad crc */
	int err;			/* I/O error: scan stopped at tail_off */
};

/* Every frame of the file from SPF_SEG_HDR to size, in order: a valid
 * one goes to cb->frame, a damaged region that a valid frame follows to
 * cb->damage; damage with no valid frame after it ends the scan
 * (r->tail_off). Seqs must be >= first and increase. */
void spf_seg_scan(int fd, uint64_t size, uint64_t first,
		  const struct spf_scan_cb *cb, void *ctx,
		  struct spf_scan_res *r);

/* What a segment-named file is. */
enum spf_seg_state {
	SPF_SEG_OK,		/* header ours, its first seq = the name's */
	SPF_SEG_HDR_DAMAGED,	/* header damaged: its frames are scanned
				 * anyway, the first seq taken from the name */
	SPF_SEG_SHORT,		/* shorter than a header */
	SPF_SEG_FOREIGN,	/* not a segment of this sink (why says) */
};

struct spf_seg_info {
	enum spf_seg_state state;
	const char *why;		/* NULL when OK */
	uint64_t size;
	uint64_t created;		/* header; mtime when it is damaged */
	uint8_t hdr[SPF_SEG_HDR];
};

/* flags: O_RDONLY or O_RDWR, plus SPF_OPEN_OWNER: a file of another uid
 * is foreign (the broker; the offline tools may run as anyone). */
#define SPF_OPEN_OWNER		0x40000000

/* Opens a segment-named file (O_NOFOLLOW) and classifies it: the fd
 * for SPF_SEG_OK and SPF_SEG_HDR_DAMAGED (the caller closes it), -1
 * otherwise (si->state and si->why say why). */
int spf_seg_open(int dfd, const char *name, uint64_t first, const char *sink,
		 int flags, struct spf_seg_info *si);

/* ---- a sink directory ------------------------------------------------- */

struct spf_file {
	char name[256];
	uint64_t first;
	bool is_seg;
};

/* Every file of a sink directory but the checkpoint: segments first, in
 * order, then the others by name. Used by recovery and by the offline
 * tools. *out is malloc'd. */
int spf_list_files(int dfd, struct spf_file **out, int *nout);

/* ---- offline inspection (no broker needed) ----------------------------- */

/* Print to out; return 0, or the number of problems found (verify), or
 * -errno. */
int spool_ls(const char *dir, FILE *out);
int spool_verify(const char *dir, FILE *out);
/* One line per record: "<sink> <seq> <len> <payload as JSON or hex>";
 * fmt_payload may be NULL (hex). */
int spool_dump(const char *dir, const char *sink, FILE *out,
	       void (*fmt_payload)(FILE *out, const uint8_t *p, uint32_t n));

#endif
