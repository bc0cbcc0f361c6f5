/* slots.h - the producer registry: one 128-byte slot per producer process.
 *
 * A producer claims a FREE slot with a CAS (FREE -> LIVE), then stores its
 * pid and /proc start time. It gives the slot up on close by storing DEAD.
 * The broker marks a LIVE slot DEAD when its owner is gone (pid missing,
 * zombie, or start time changed = pid reused), remembers the tail at that
 * moment, and frees the slot (DEAD -> FREE) only once the ring head has
 * passed that tail: by then every record the dead owner claimed has been
 * consumed or recovered, so a slot index in a record header always names
 * the process that wrote it.
 */
#ifndef OBX_SLOTS_H
#define OBX_SLOTS_H

#include <stdint.h>
#include <sys/types.h>
#include "obx_abi.h"

/* /proc/<pid>/stat: start time (clock ticks since boot) and state letter.
 * Returns 0, or -ESRCH when the process does not exist. */
int slot_proc_stat(pid_t pid, uint64_t *start, char *state);

/* 1 when the slot's owner process is alive, 0 when it is gone. */
int slot_owner_alive(const struct obx_slot *s);

/* Producer: claim a free slot for this process; index or -ENOSPC. */
int slot_claim(struct obx_slot *slots, uint32_t nslots, pid_t pid,
	       uint64_t start);

/* Producer: give the slot up (the broker folds its counters and frees it). */
void slot_release(struct obx_slot *s);

/* 1 when some thread of the slot's owner is between P1 and P5. Acquire
 * loads: pair with the release stores of P5 (ring_claim_end). */
int slot_claiming(const struct obx_slot *s);

/* Claims without a header (busy lanes + shared reserved - settled). */
uint64_t slot_claims_open(const struct obx_slot *s);

/* Broker: zero every counter and lane before the slot goes FREE. */
void slot_reset(struct obx_slot *s);

/* Producer thread: take a free lane of the slot, or NULL. */
struct obx_lane *slot_lane_claim(struct obx_slot *s, uint32_t token);

/* emitted by one slot, per the identity in obx_abi.h */
uint64_t slot_emitted(const struct obx_slot *s);
uint64_t slot_dropped(const struct obx_slot *s);

#endif
