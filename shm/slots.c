/* slots.c - producer registry (see slots.h for the protocol). */
#define _GNU_SOURCE
#include "slots.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
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

int slot_pid_alive(uint32_t pid, uint64_t want)
{
	uint64_t start;
	char state;

	if (pid == 0 || slot_proc_stat((pid_t)pid, &start, &state) < 0)
		return 0;
	if (state == 'Z' || state == 'X' || state == 'x')
		return 0;
	return !want || start == want;
}

static int slot_lock_op(int fd, int cmd, short type, uint64_t off,
			struct flock *out)
{
	struct flock l;

	memset(&l, 0, sizeof(l));       /* l_pid must be 0 for OFD locks */
	l.l_type = type;
	l.l_whence = SEEK_SET;
	l.l_start = (off_t)off;
	l.l_len = 1;
	while (fcntl(fd, cmd, &l) < 0)
		if (errno != EINTR)
			return -errno;
	if (out)
		*out = l;
	return 0;
}

int slot_lock_held(int fd, uint64_t off)
{
	struct flock l;
	int rc = slot_lock_op(fd, F_OFD_GETLK, F_WRLCK, off, &l);

	return rc < 0 ? rc : l.l_type != F_UNLCK;
}

static uint64_t slot_lock_off(const struct seg *s, uint32_t i)
{
	return OBX_SLOT_LOCK_OFF((uint64_t)((uint8_t *)s->slots - s->base),
				 i);
}

int slot_owner_alive(const struct seg *s, uint32_t i)
{
	return slot_lock_held(s->fd, slot_lock_off(s, i)) != 0;
}

int slot_claim(const struct seg *s, int fd, pid_t pid, uint64_t start)
{
	uint32_t i, n = s->g.nslots, first = (uint32_t)pid % n;

	for (i = 0; i < n; i++) {
		uint32_t k = (first + i) % n, want = OBX_SLOT_FREE;
		struct obx_slot *sl = &s->slots[k];
		uint64_t off = slot_lock_off(s, k);

		if (atomic_load_explicit(&sl->state, memory_order_relaxed) !=
		    OBX_SLOT_FREE)
			continue;
		/* The lock first: a slot is never LIVE without it, so the
		 * broker never sees a live owner without a lock. A lock
		 * still held by a description someone else has open (a
		 * previous owner's not yet closed) fails here: skip. */
		if (slot_lock_op(fd, F_OFD_SETLK, F_WRLCK, off, NULL) < 0)
			continue;
		/* Pairs with the broker's release store of FREE in
		 * ring_reap(): the counters were zeroed before the slot
		 * became claimable. */
		if (!atomic_compare_exchange_strong_explicit(&sl->state, &want,
				OBX_SLOT_LIVE, memory_order_acq_rel,
				memory_order_relaxed)) {
			slot_lock_op(fd, F_OFD_SETLK, F_UNLCK, off, NULL);
			continue;
		}
		atomic_store_explicit(&sl->start, start, memory_order_relaxed);
		/* release: start is visible before pid */
		atomic_store_explicit(&sl->pid, (uint32_t)pid,
				      memory_order_release);
		return (int)k;
	}
	return -ENOSPC;
}

void slot_release(struct obx_slot *s)
{
	/* release: our counters are final before the broker sees DEAD */
	atomic_store_explicit(&s->state, OBX_SLOT_DEAD, memory_order_release);
}

uint64_t slot_claims_open(const struct obx_slot *s)
{
	uint64_t n = atomic_load(&s->reserved) - atomic_load(&s->settled);
	unsigned i;

	for (i = 0; i < OBX_LANES; i++)
		n += atomic_load(&s->lane[i].claim) & OBX_LANE_BUSY;
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
	atomic_store(&s->pid, 0);
	atomic_store(&s->start, 0);
	for (i = 0; i < OBX_LANES; i++) {
		atomic_store(&s->lane[i].claim, 0);
		atomic_store(&s->lane[i].pos, 0);
		atomic_store(&s->lane[i].pos_n, 0);
		atomic_store(&s->lane[i].owner, 0);
	}
}

struct obx_lane *slot_lane_claim(struct obx_slot *s, uint32_t token)
{
	unsigned i;

	for (i = 0; i < OBX_LANES; i++) {
		uint32_t free_ = 0;

		if (atomic_compare_exchange_strong(&s->lane[i].owner, &free_,
						   token)) {
			s->lane[i].flags = i + 1;
			return &s->lane[i];
		}
	}
	return NULL;
}

uint64_t slot_attempts(const struct obx_slot *s)
{
	uint64_t r = atomic_load(&s->reserved);
	unsigned i;

	for (i = 0; i < OBX_LANES; i++)
		r += OBX_LANE_CLAIMS(atomic_load(&s->lane[i].claim));
	return r + atomic_load(&s->drop_full) +
	       atomic_load(&s->drop_too_large);
}

uint64_t slot_emitted(const struct obx_slot *s)
{
	return slot_attempts(s) - atomic_load(&s->aborted);
}

uint64_t slot_dropped(const struct obx_slot *s)
{
	return atomic_load(&s->drop_full) + atomic_load(&s->drop_too_large) +
	       atomic_load(&s->drop_late);
}

/* Does the process behind /proc/<pid> (dirfd) hold the write lock at off
 * on the object (dev, ino)? Its fdinfo files list the locks of each open
 * description it has: "lock: 1: OFDLCK ADVISORY WRITE -1 MM:mm:INO S E". */
static int slot_proc_holds(int dirfd, dev_t dev, ino_t ino, uint64_t off)
{
	char want[96], line[256];
	struct dirent *d;
	int fd, found = 0;
	DIR *dir;

	snprintf(want, sizeof(want), " %02x:%02x:%lu %llu %llu",
		 major(dev), minor(dev), (unsigned long)ino,
		 (unsigned long long)off, (unsigned long long)off);
	fd = openat(dirfd, "fdinfo", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	dir = fdopendir(fd);
	if (!dir) {
		close(fd);
		return -ENOMEM;
	}
	while (!found && (d = readdir(dir))) {
		int f = openat(fd, d->d_name, O_RDONLY | O_CLOEXEC);
		FILE *fp;

		if (f < 0)
			continue;
		fp = fdopen(f, "r");
		if (!fp) {
			close(f);
			continue;
		}
		while (fgets(line, sizeof(line), fp))
			if (strncmp(line, "lock:", 5) == 0 &&
			    strstr(line, "OFDLCK") && strstr(line, "WRITE") &&
			    strstr(line, want)) {
				found = 1;
				break;
			}
		fclose(fp);
	}
	closedir(dir);
	return found;
}

int slot_owner_kill(const struct seg *s, uint32_t i)
{
	uint32_t pid = atomic_load(&s->slots[i].pid);
	char path[64];
	struct stat obj, proc;
	int pidfd, dirfd, rc;

	if (!pid)
		return -ESRCH;
	if (fstat(s->fd, &obj) < 0)
		return -errno;
	/* pin the process first: whatever we verify below is about the
	 * process the pidfd refers to, even if pid is recycled meanwhile */
	pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
	if (pidfd < 0)
		return -errno;
	snprintf(path, sizeof(path), "/proc/%u", pid);
	dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		rc = -errno;
		goto out;
	}
	rc = fstat(dirfd, &proc) < 0 ? -errno : 0;
	if (rc == 0 && proc.st_uid != geteuid())
		rc = -EPERM;
	if (rc == 0) {
		/* another process under the same number (a PID namespace,
		 * a recycled pid) does not hold our lock: no kill */
		rc = slot_proc_holds(dirfd, obj.st_dev, obj.st_ino,
				     slot_lock_off(s, i));
		rc = rc < 0 ? rc : rc == 0 ? -ESRCH : 0;
	}
	close(dirfd);
	/* the process may have exited and the pid been reused between the
	 * pidfd and the /proc reads: the pidfd says whether ours still
	 * runs, and the signal goes to it only */
	if (rc == 0 && syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL,
			       0) < 0)
		rc = -errno;
out:
	close(pidfd);
	return rc;
}
