/* segment.h - create / attach / detach the outbox shm object.
 *
 * The broker creates the object (O_EXCL, mode from config) or re-attaches
 * to an existing one after a restart; producers attach and validate the
 * layout. The ring data is mapped twice back to back so that a record
 * never wraps. Geometry is validated once and kept in struct seg: nothing
 * here trusts a size read back from shared memory later.
 */
#ifndef OBX_SEGMENT_H
#define OBX_SEGMENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "obx_abi.h"

struct seg_geom {
	uint64_t ring_size;     /* power of two, 64 KiB .. 1 GiB */
	uint32_t max_record;    /* payload bytes, <= ring_size / 8 */
	uint32_t nslots;        /* producer slots, 1 .. 65535 */
};

struct seg {
	int fd;
	int broker;                     /* mapped with broker rights */
	uint8_t *base;                  /* page 0 */
	size_t map_len;                 /* reserved address space */
	struct obx_shm_hdr *hdr;
	struct obx_consumer_page *cons;
	struct obx_slot *slots;
	struct obx_stats_page *stats;
	struct obx_sink_page *sinks;
	uint8_t *ring;                  /* ring_size bytes, twice */
	struct seg_geom g;
	uint64_t segment_id;
	char name[80];
};

#define SEG_DEFAULT_NSLOTS 1024u

/* Computes the layout of a geometry; returns 0 or -EINVAL (with why). */
int seg_layout(const struct seg_geom *g, uint64_t *slots_off,
	       uint64_t *stats_off, uint64_t *sinks_off, uint64_t *ring_off,
	       uint64_t *total, char *why, size_t whylen);

/* Broker: create the object with O_EXCL and the given mode, or re-attach
 * to an existing one whose geometry matches. Takes an exclusive flock on
 * the object, so a second broker gets -EBUSY. *created tells which.
 * Returns 0 or -errno with a message in why. */
int seg_open_broker(struct seg *s, const char *name, const struct seg_geom *g,
		    mode_t mode, int *created, char *why, size_t whylen);

/* Producer: attach to an existing object and validate magic, ABI version
 * and sizes. -ENOENT when no broker ever created it, -EPROTO on a layout
 * mismatch, -EAGAIN while it is being initialised. */
int seg_attach(struct seg *s, const char *name, char *why, size_t whylen);

void seg_detach(struct seg *s);

/* Unlinks /dev/shm/<name>; 0 or -errno. */
int seg_unlink(const char *name);

/* Normalises a user shm name ("outbox", "/outbox") into "/outbox". */
int seg_path(const char *name, char *out, size_t outlen);

static inline struct obx_rec_hdr *seg_rec(const struct seg *s, uint64_t pos)
{
	return (struct obx_rec_hdr *)(s->ring + (pos & (s->g.ring_size - 1)));
}

#endif
