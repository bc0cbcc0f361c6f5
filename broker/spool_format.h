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

/* ---- checkpoint -------------------------------------------------------- */

/* 1 valid, 0 missing, -1 corrupt (or unreadable). */
int spf_ck_load(int dfd, const char *sink, uint64_t *acked, uint64_t *next);
/* Encoded checkpoint into buf (cap bytes): its length, or -ENOSPC. */
int spf_ck_encode(uint8_t *buf, size_t cap, const char *sink,
		  uint64_t acked, uint64_t next);
/* Synchronous atomic replace: tmp, fsync, rename, fsync dir. */
int spf_ck_write_sync(int dfd, const char *sink, uint64_t acked,
		      uint64_t next);

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
