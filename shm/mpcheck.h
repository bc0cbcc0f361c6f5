/* mpcheck.h - is this one well-formed msgpack object, cheaply?
 *
 * msgpack-c's unpacker allocates a container's elements up front from the
 * count in its header, so one hostile or flipped header byte (an array of
 * 2^32 elements in a 40-byte record) would ask for gigabytes before
 * failing. These walk the bytes without allocating and check that every
 * length fits and every pending container element still has at least one
 * byte left, so what msgpack-c then allocates is bounded by the input's
 * size. Untrusted input (ring records, the persisted state file) goes
 * through here before msgpack_unpack().
 */
#ifndef OBX_MPCHECK_H
#define OBX_MPCHECK_H

#include <stddef.h>
#include <stdint.h>

/* Length of the one object at buf (nested objects included), or 0 when
 * the bytes are not a plausible complete object. */
size_t mp_object_len(const unsigned char *buf, size_t len);

/* 0 when [buf, len) is exactly one such object, else -1. */
int mp_check(const unsigned char *buf, size_t len);

#endif
