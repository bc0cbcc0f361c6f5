/* slots.h - the producer registry: one slot per producer process.
 *
 * Liveness is something the kernel holds for the process: an OFD write
 * lock on the slot's first byte (OBX_SLOT_LOCK_OFF), taken on the
 * producer's own open file description of the shm object before it
 * claims the slot (FREE -> LIVE by CAS) and held until the process closes
 * that description (obx_close, exit, exec, death). The broker asks the
 * kernel with F_OFD_GETLK on its own description: no /proc text, no file
 * descriptor per producer, the same answer in a PID namespace, with the
 * main thread gone, and when the broker is out of descriptors. Why OFD
 * locks and how a forked child gets its own: docs/DESIGN.md.
 *
 * A slot goes DEAD when its lock is gone or its owner closes it. The
 * broker remembers `tail` at that moment and frees the slot (DEAD ->
 * FREE) only once the ring head has passed that tail: every record the
 * dead owner claimed has then been consumed or recovered, so a slot index
 * in a record header always names the process that wrote it.
 */
#ifndef OBX_SLOTS_H
#define OBX_SLOTS_H

#include <stdint.h>
#include <sys/types.h>
#include "obx_abi.h"
#include "segment.h"

/* /proc/<pid>/stat: start time (clock ticks since boot) and state letter.
 * Returns 0, or -ESRCH when the process does not exist. Only for
 * identities shown to people (the broker's pid), not for liveness. */
int slot_proc_stat(pid_t pid, uint64_t *start, char *state);

/* 1 when the process pid with that start time (0: any) runs. */
int slot_pid_alive(uint32_t pid, uint64_t start);

/* 1 when some open file description holds the write lock at off of the
 * object behind fd (not fd's own), 0 when none does, -errno when the
 * kernel could not say. */
int slot_lock_held(int fd, uint64_t off);

/* 1 when slot i's owner lives, 0 when it is gone. When the kernel cannot
 * say, the owner counts as alive: a slot is never freed on a guess. */
int slot_owner_alive(const struct seg *s, uint32_t i);

/* Producer: lock and claim a free slot for this process on fd (its own
 * open file description of the object); index or -ENOSPC. */
int slot_claim(const struct seg *s, int fd, pid_t pid, uint64_t start);

/* Producer: give the slot up (the broker folds its counters and frees it
 * once its records are behind head). The lock goes with the fd. */
void slot_release(struct obx_slot *s);

/* Claims without a header: busy lanes + shared reserved - settled. */
uint64_t slot_claims_open(const struct obx_slot *s);

/* Broker: zero every counter and lane before the slot goes FREE. */
void slot_reset(struct obx_slot *s);

/* Producer thread: take a free lane of the slot, or NULL. */
struct obx_lane *slot_lane_claim(struct obx_slot *s, uint32_t token);

/* Emit attempts (aborts included), per the identity in obx_abi.h; the
 * process's own emitted (its aborts subtracted); its drops. */
uint64_t slot_attempts(const struct obx_slot *s);
uint64_t slot_emitted(const struct obx_slot *s);
uint64_t slot_dropped(const struct obx_slot *s);

/* Broker, stall_action = kill: SIGKILL slot i's owner, only when the
 * kernel confirms that process holds the slot's lock and it runs under
 * our uid (a pidfd is taken first, so a recycled pid is never hit).
 * 0, or -errno (-EPERM other uid, -ESRCH not confirmed). */
int slot_owner_kill(const struct seg *s, uint32_t i);

#endif
