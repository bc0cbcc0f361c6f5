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
	_Atomic int faulted;            /* SIGBUS taken on the mapping */
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
	uint64_t ring_off, total;       /* validated layout */
	struct obx_shm_hdr trusted;     /* the header as the broker made or
	                                 * validated it: never re-read */
	char name[80];
};

#define SEG_DEFAULT_NSLOTS 1024u

/* Computes the layout of a geometry; returns 0 or -EINVAL (with why). */
int seg_layout(const struct seg_geom *g, uint64_t *slots_off,
	       uint64_t *stats_off, uint64_t *sinks_off, uint64_t *ring_off,
	       uint64_t *total, char *why, size_t whylen);

/* Broker: create the object with O_EXCL and the given mode, or re-attach
 * to an existing one whose geometry matches. Takes an exclusive flock on
 * the object, so a second broker gets -EBUSY. Never adopts what it
 * should not: an object owned by another uid or with a mode wider than
 * `mode`, or with a damaged header (bad magic, ABI version, offsets,
 * size), is moved aside (renamed NAME.foreign-* / NAME.damaged-*) and a
 * fresh one made; a symlink is never followed. *created: 0 re-attached,
 * 1 created, 2 created after moving one aside (why says which and where).
 * Returns 0 or -errno with a message in why. */
int seg_open_broker(struct seg *s, const char *name, const struct seg_geom *g,
		    mode_t mode, int *created, char *why, size_t whylen);

/* Producer: attach to an existing object and validate magic, ABI version
 * and sizes. -ENOENT when no broker ever created it, -EPROTO on a layout
 * mismatch, -EAGAIN while it is being initialised. */
int seg_attach(struct seg *s, const char *name, char *why, size_t whylen);

void seg_detach(struct seg *s);

/* Broker: survive SIGBUS on this segment's mapping (the object truncated
 * under it): the faulting page is replaced by a private zero page and
 * s->faulted set; seg_check() then repairs. One segment per process. */
int seg_guard(struct seg *s);

/* Broker housekeeping: the object's size and header against what the
 * broker made. A truncated object is resized back and remapped, a
 * damaged header rewritten from the private copy. 0 nothing to do, > 0
 * repaired (why says what), -errno. */
int seg_check(struct seg *s, char *why, size_t whylen);

/* Unlinks /dev/shm/<name>; 0 or -errno. */
int seg_unlink(const char *name);

/* Normalises a user shm name ("outbox", "/outbox") into "/outbox". */
int seg_path(const char *name, char *out, size_t outlen);

static inline struct obx_rec_hdr *seg_rec(const struct seg *s, uint64_t pos)
{
	return (struct obx_rec_hdr *)(s->ring + (pos & (s->g.ring_size - 1)));
}

#endif
