/* slots.c - producer registry (see slots.h for the protocol). */
#define _GNU_SOURCE
#include "slots.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int slot_proc_stat(pid_t pid, uint64_t *start, char *state)
{
	char path[64], buf[1024], *p;
	unsigned long long st = 0;
	ssize_t n;
	int fd, field;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -ESRCH;
	buf[n] = 0;
	/* comm may hold spaces and parens: fields start after the last ')' */
	p = strrchr(buf, ')');
	if (!p || p[1] != ' ')
		return -EIO;
	p += 2;
	if (state)
		*state = *p;
	/* state is field 3; starttime is field 22 */
	for (field = 3; field < 22 && *p; p++)
		if (*p == ' ')
			field++;
	if (sscanf(p, "%llu", &st) != 1)
		return -EIO;
	if (start)
		*start = st;
	return 0;
}

int slot_owner_alive(const struct obx_slot *s)
{
	uint32_t pid = atomic_load_explicit(&s->pid, memory_order_acquire);
	uint64_t want = atomic_load_explicit(&s->start, memory_order_acquire);
	uint64_t start;
	char state;

	if (pid == 0)
		return 1; /* claimed, pid not stored yet: the owner is running */
	if (slot_proc_stat((pid_t)pid, &start, &state) < 0)
		return 0;
	if (state == 'Z' || state == 'X' || state == 'x')
		return 0;
	if (want && start != want)
		return 0; /* pid reused by another process */
	return 1;
}

int slot_claim(struct obx_slot *slots, uint32_t nslots, pid_t pid,
	       uint64_t start)
{
	uint32_t i, first = (uint32_t)pid % nslots;

	for (i = 0; i < nslots; i++) {
		struct obx_slot *s = &slots[(first + i) % nslots];
		uint32_t want = OBX_SLOT_FREE;

		if (atomic_load_explicit(&s->state, memory_order_relaxed) !=
		    OBX_SLOT_FREE)
			continue;
		/* Pairs with the broker's release store of FREE in
		 * broker reaping (ringc_reap): the counters were zeroed
		 * before the slot became claimable. */
		if (!atomic_compare_exchange_strong_explicit(&s->state, &want,
				OBX_SLOT_LIVE, memory_order_acq_rel,
				memory_order_relaxed))
			continue;
		atomic_store_explicit(&s->start, start, memory_order_relaxed);
		/* release: start is visible before pid (slot_owner_alive) */
		atomic_store_explicit(&s->pid, (uint32_t)pid,
				      memory_order_release);
		return (int)((first + i) % nslots);
	}
	return -ENOSPC;
}

void slot_release(struct obx_slot *s)
{
	/* release: our counters are final before the broker sees DEAD */
	atomic_store_explicit(&s->state, OBX_SLOT_DEAD, memory_order_release);
}

int slot_claiming(const struct obx_slot *s)
{
	unsigned i;

	for (i = 0; i < OBX_LANES; i++)
		if (atomic_load_explicit(&s->lane[i].busy,
					 memory_order_acquire))
			return 1;
	return atomic_load_explicit(&s->reserved, memory_order_acquire) !=
	       atomic_load_explicit(&s->settled, memory_order_acquire);
}

uint64_t slot_claims_open(const struct obx_slot *s)
{
	uint64_t n = atomic_load(&s->reserved) - atomic_load(&s->settled);
	unsigned i;

	for (i = 0; i < OBX_LANES; i++)
		n += atomic_load(&s->lane[i].busy) ? 1 : 0;
	return n;
}

void slot_reset(struct obx_slot *s)
{
	unsigned i;

	atomic_store(&s->reserved, 0);
	atomic_store(&s->settled, 0);
	atomic_store(&s->drop_full, 0);
	atomic_store(&s->drop_too_large, 0);
	atomic_store(&s->drop_late, 0);
	atomic_store(&s->aborted, 0);
	atomic_store(&s->overshoot, 0);
	atomic_store(&s->pid, 0);
	atomic_store(&s->start, 0);
	for (i = 0; i < OBX_LANES; i++) {
		atomic_store(&s->lane[i].busy, 0);
		atomic_store(&s->lane[i].reserved, 0);
		atomic_store(&s->lane[i].owner, 0);
	}
}

struct obx_lane *slot_lane_claim(struct obx_slot *s, uint32_t token)
{
	unsigned i;

	for (i = 0; i < OBX_LANES; i++) {
		uint32_t free_ = 0;

		if (atomic_compare_exchange_strong(&s->lane[i].owner, &free_,
						   token))
			return &s->lane[i];
	}
	return NULL;
}

uint64_t slot_emitted(const struct obx_slot *s)
{
	uint64_t r = atomic_load(&s->reserved);
	unsigned i;

	for (i = 0; i < OBX_LANES; i++)
		r += atomic_load(&s->lane[i].reserved);
	return r - atomic_load(&s->overshoot) + atomic_load(&s->drop_full) +
	       atomic_load(&s->drop_too_large) - atomic_load(&s->aborted);
}

uint64_t slot_dropped(const struct obx_slot *s)
{
	return atomic_load(&s->drop_full) + atomic_load(&s->drop_too_large) +
	       atomic_load(&s->drop_late);
}
