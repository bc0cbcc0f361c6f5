/* segment.c - the shm object: layout, creation, attachment, double mapping.
 *
 * Creation order matters because producers may attach at any moment:
 * the broker creates the object with O_EXCL, sizes it, writes every
 * geometry field and only then stores the magic (release). A producer that
 * reads a zero magic gets -EAGAIN ("being initialised"), never a half
 * written header. Pairs with the acquire load of magic in seg_attach().
 */
#define _GNU_SOURCE
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE_ALIGN(x) (((x) + OBX_PAGE - 1) & ~(uint64_t)(OBX_PAGE - 1))

_Static_assert(sizeof(struct obx_shm_hdr) <= OBX_PAGE, "hdr fits page 0");
_Static_assert(sizeof(struct obx_consumer_page) <= OBX_PAGE, "cons page");
_Static_assert(sizeof(struct obx_slot) == (2 + OBX_LANES) * OBX_CACHELINE,
	       "slot size");
_Static_assert(sizeof(struct obx_rec_hdr) == OBX_REC_HDR, "record header");

int seg_path(const char *name, char *out, size_t outlen)
{
	if (!name || !*name)
		return -EINVAL;
	while (*name == '/')
		name++;
	if (!*name || strchr(name, '/') || strlen(name) + 2 > outlen ||
	    strlen(name) > 60)
		return -EINVAL;
	snprintf(out, outlen, "/%s", name);
	return 0;
}

int seg_layout(const struct seg_geom *g, uint64_t *slots_off,
	       uint64_t *stats_off, uint64_t *sinks_off, uint64_t *ring_off,
	       uint64_t *total, char *why, size_t whylen)
{
	uint64_t off;

	if (g->ring_size < (64u << 10) || g->ring_size > (1ull << 30) ||
	    (g->ring_size & (g->ring_size - 1))) {
		snprintf(why, whylen, "ring_size %llu must be a power of two "
			 "between 64K and 1G", (unsigned long long)g->ring_size);
		return -EINVAL;
	}
	if (g->max_record < 64 || g->max_record > g->ring_size / 8) {
		snprintf(why, whylen, "max_record %u must be between 64 and "
			 "ring_size/8 (%llu)", g->max_record,
			 (unsigned long long)(g->ring_size / 8));
		return -EINVAL;
	}
	if (g->nslots < 1 || g->nslots > 65535) {
		snprintf(why, whylen, "nslots %u out of range", g->nslots);
		return -EINVAL;
	}
	off = 2 * OBX_PAGE;                 /* header page, consumer page */
	*slots_off = off;
	off = PAGE_ALIGN(off + (uint64_t)g->nslots * sizeof(struct obx_slot));
	*stats_off = off;
	off = PAGE_ALIGN(off + sizeof(struct obx_stats_page));
	*sinks_off = off;
	off = PAGE_ALIGN(off + sizeof(struct obx_sink_page));
	*ring_off = off;
	*total = off + g->ring_size;
	return 0;
}

/* Maps the object at va (reserved): the whole object, then the ring a
 * second time right after it. MAP_FIXED replaces whatever was there. */
static int seg_map_at(struct seg *s, uint8_t *va, uint64_t ring_off,
		      uint64_t total)
{
	/* MAP_POPULATE: fault every page in now, at attach, instead of one
	 * minor fault per 4 KiB on the emit path during the first lap. */
	if (mmap(va, (size_t)total, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_FIXED | MAP_POPULATE, s->fd, 0) == MAP_FAILED)
		return -errno;
	if (mmap(va + total, (size_t)s->g.ring_size, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_FIXED | MAP_POPULATE, s->fd,
		 (off_t)ring_off) == MAP_FAILED)
		return -errno;
	/* The ring is written, so prefault it writable: the PTEs then carry
	 * the dirty bit already and the first lap of emits does not pay a
	 * page-table update per 4 KiB (a large cost on a VM). Best effort. */
#ifdef MADV_POPULATE_WRITE
	madvise(va + ring_off, (size_t)(total - ring_off), MADV_POPULATE_WRITE);
	madvise(va + total, (size_t)s->g.ring_size, MADV_POPULATE_WRITE);
#endif
	return 0;
}

/* Maps the object of `total` bytes with the ring twice back to back. */
static int seg_map(struct seg *s, uint64_t ring_off, uint64_t total)
{
	size_t len = (size_t)(total + s->g.ring_size);
	uint8_t *va;
	int rc;

	va = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (va == MAP_FAILED)
		return -errno;
	rc = seg_map_at(s, va, ring_off, total);
	if (rc < 0) {
		munmap(va, len);
		return rc;
	}
	s->base = va;
	s->map_len = len;
	s->ring_off = ring_off;
	s->total = total;
	return 0;
}

static void seg_bind(struct seg *s, uint64_t slots_off, uint64_t stats_off,
		     uint64_t sinks_off, uint64_t ring_off)
{
	s->hdr = (struct obx_shm_hdr *)s->base;
	s->cons = (struct obx_consumer_page *)(s->base + OBX_PAGE);
	s->slots = (struct obx_slot *)(s->base + slots_off);
	s->stats = (struct obx_stats_page *)(s->base + stats_off);
	s->sinks = (struct obx_sink_page *)(s->base + sinks_off);
	s->ring = s->base + ring_off;
}

/* Producers never write the consumer, stats or sink pages: map them
 * read-only so a stray write faults in the producer, not in the broker. */
static void seg_protect_producer(struct seg *s, uint64_t stats_off,
				 uint64_t ring_off)
{
	mprotect(s->base + OBX_PAGE, OBX_PAGE, PROT_READ);
	mprotect(s->base + stats_off, (size_t)(ring_off - stats_off),
		 PROT_READ);
}

static int seg_check_hdr(const struct obx_shm_hdr *h, uint64_t st_size,
			 struct seg_geom *g, char *why, size_t whylen)
{
	uint64_t so, sto, sio, ro, tot;

	if (atomic_load_explicit((_Atomic uint64_t *)&h->magic,
				 memory_order_acquire) == 0) {
		snprintf(why, whylen, "segment is being initialised");
		return -EAGAIN;
	}
	if (h->magic != OBX_MAGIC) {
		snprintf(why, whylen, "not an outbox segment (bad magic)");
		return -EPROTO;
	}
	if (h->abi_version != OBX_ABI_VERSION) {
		snprintf(why, whylen, "ABI version %u, this library speaks %u: "
			 "restart the broker and producers with one version",
			 h->abi_version, OBX_ABI_VERSION);
		return -EPROTO;
	}
	g->ring_size = h->ring_size;
	g->max_record = h->max_record;
	g->nslots = h->nslots;
	if (seg_layout(g, &so, &sto, &sio, &ro, &tot, why, whylen) < 0)
		return -EPROTO;
	if (h->page_size != OBX_PAGE || h->slots_off != so ||
	    h->stats_off != sto || h->sinks_off != sio || h->ring_off != ro ||
	    h->total_size != tot || st_size != tot) {
		snprintf(why, whylen, "layout mismatch: offsets or sizes "
			 "(object %llu bytes, header says %llu, expected %llu)",
			 (unsigned long long)st_size,
			 (unsigned long long)h->total_size,
			 (unsigned long long)tot);
		return -EPROTO;
	}
	return 0;
}

static int seg_attach_fd(struct seg *s, int broker, char *why, size_t whylen)
{
	struct obx_shm_hdr h;
	uint64_t so, sto, sio, ro, tot;
	struct stat st;
	int rc;

	if (fstat(s->fd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size < sizeof(h)) {
		snprintf(why, whylen, "segment is being initialised");
		return -EAGAIN;
	}
	if (pread(s->fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
		return -EIO;
	rc = seg_check_hdr(&h, (uint64_t)st.st_size, &s->g, why, whylen);
	if (rc < 0)
		return rc;
	seg_layout(&s->g, &so, &sto, &sio, &ro, &tot, why, whylen);
	rc = seg_map(s, ro, tot);
	if (rc < 0) {
		snprintf(why, whylen, "mmap: %s", strerror(-rc));
		return rc;
	}
	seg_bind(s, so, sto, sio, ro);
	s->segment_id = h.segment_id;
	s->trusted = h;
	s->broker = broker;
	if (!broker)
		seg_protect_producer(s, sto, ro);
	return 0;
}

int seg_attach(struct seg *s, const char *name, char *why, size_t whylen)
{
	char path[80];
	int rc;

	memset(s, 0, sizeof(*s));
	s->fd = -1;
	if (seg_path(name, path, sizeof(path)) < 0) {
		snprintf(why, whylen, "bad shm name '%s'", name ? name : "");
		return -EINVAL;
	}
	snprintf(s->name, sizeof(s->name), "%s", path + 1);
	s->fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
	if (s->fd < 0) {
		rc = -errno;
		if (rc == -ENOENT)
			snprintf(why, whylen, "no outbox broker: /dev/shm%s "
				 "does not exist (start outboxd)", path);
		else
			snprintf(why, whylen, "shm_open /dev/shm%s: %s", path,
				 strerror(-rc));
		return rc;
	}
	rc = seg_attach_fd(s, 0, why, whylen);
	if (rc < 0) {
		close(s->fd);
		s->fd = -1;
	}
	return rc;
}

static uint64_t seg_random64(void)
{
	uint64_t v = 0;

	if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v)) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		v = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^
		    (uint64_t)getpid() << 32 ^ (uint64_t)ts.tv_sec;
	}
	return v ? v : 1;
}

static int seg_init_new(struct seg *s, const struct seg_geom *g, char *why,
			size_t whylen)
{
	uint64_t so, sto, sio, ro, tot;
	struct timespec ts;
	struct obx_shm_hdr *h;
	int rc;

	rc = seg_layout(g, &so, &sto, &sio, &ro, &tot, why, whylen);
	if (rc < 0)
		return rc;
	if (ftruncate(s->fd, (off_t)tot) < 0) {
		rc = -errno;
		snprintf(why, whylen, "ftruncate %llu: %s",
			 (unsigned long long)tot, strerror(-rc));
		return rc;
	}
	s->g = *g;
	rc = seg_map(s, ro, tot);
	if (rc < 0) {
		snprintf(why, whylen, "mmap: %s", strerror(-rc));
		return rc;
	}
	seg_bind(s, so, sto, sio, ro);
	h = s->hdr;
	clock_gettime(CLOCK_REALTIME, &ts);
	h->abi_version = OBX_ABI_VERSION;
	h->page_size = OBX_PAGE;
	h->total_size = tot;
	h->ring_off = ro;
	h->ring_size = g->ring_size;
	h->max_record = g->max_record;
	h->nslots = g->nslots;
	h->slots_off = so;
	h->stats_off = sto;
	h->sinks_off = sio;
	h->segment_id = seg_random64();
	h->created_ns = (uint64_t)ts.tv_sec * 1000000000ull +
			(uint64_t)ts.tv_nsec;
	s->segment_id = h->segment_id;
	s->broker = 1;
	/* Write every ring page once now: on a VM the first write to a page
	 * costs far more than later ones (host-side allocation); producers
	 * must not pay that on their first lap. */
	memset(s->ring, 0, (size_t)g->ring_size);
	s->trusted = *h;
	s->trusted.magic = OBX_MAGIC;
	/* Publish: pairs with the acquire load in seg_check_hdr(). */
	atomic_store_explicit((_Atomic uint64_t *)&h->magic, OBX_MAGIC,
			      memory_order_release);
	return 0;
}

/* Renames /dev/shm/NAME out of the way (NAME.<why>-<time>-<pid>): kept
 * for a post-mortem, never adopted. */
static int seg_move_aside(const char *path, const char *reason, char *to,
			  size_t tolen)
{
	char from[96];

	snprintf(from, sizeof(from), "/dev/shm%s", path);
	snprintf(to, tolen, "/dev/shm%s.%s-%lld-%d", path, reason,
		 (long long)time(NULL), (int)getpid());
	return rename(from, to) < 0 ? -errno : 0;
}

/* Is an existing object ours to use: our uid, no wider a mode than the
 * one configured? 0, or -EPERM with why. */
static int seg_owned(int fd, mode_t mode, char *why, size_t whylen)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (st.st_uid != geteuid()) {
		snprintf(why, whylen, "owned by uid %u, not by us (uid %u)",
			 (unsigned)st.st_uid, (unsigned)geteuid());
		return -EPERM;
	}
	if (st.st_mode & 07777 & ~mode) {
		snprintf(why, whylen, "mode 0%o is wider than shm_mode 0%o",
			 (unsigned)(st.st_mode & 07777), (unsigned)mode);
		return -EPERM;
	}
	return 0;
}

/* The object is not usable (foreign or damaged): move it aside and start
 * over with a fresh one. */
static int seg_open(struct seg *s, const char *name,
		    const struct seg_geom *g, mode_t mode, int *created,
		    char *why, size_t whylen, int tries);

static int seg_replace(struct seg *s, const char *name, const char *path,
		       const struct seg_geom *g, mode_t mode, int *created,
		       const char *reason, char *why, size_t whylen, int tries)
{
	char what[256], to[160];
	int rc;

	snprintf(what, sizeof(what), "%s", why);
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	rc = tries > 0 ? seg_move_aside(path, reason, to, sizeof(to)) : -EAGAIN;
	if (rc < 0) {
		snprintf(why, whylen, "/dev/shm%s: %s; it cannot be moved "
			 "aside (%s): refusing to use it, remove it", path,
			 what, strerror(-rc));
		return rc;
	}
	rc = seg_open(s, name, g, mode, created, why, whylen, tries - 1);
	if (rc == 0) {
		*created = 2;
		snprintf(why, whylen, "/dev/shm%s: %s; moved aside to %s, "
			 "a new one made", path, what, to);
	}
	return rc;
}

int seg_open_broker(struct seg *s, const char *name, const struct seg_geom *g,
		    mode_t mode, int *created, char *why, size_t whylen)
{
	return seg_open(s, name, g, mode, created, why, whylen, 2);
}

/* tries: how many more times an unusable object may be moved aside (one
 * that reappears at once under the same name is refused). */
static int seg_open(struct seg *s, const char *name,
		    const struct seg_geom *g, mode_t mode, int *created,
		    char *why, size_t whylen, int tries)
{
	char path[80];
	int rc;

	memset(s, 0, sizeof(*s));
	*created = 0;
	if (why && whylen)
		why[0] = 0;
	if (seg_path(name, path, sizeof(path)) < 0) {
		snprintf(why, whylen, "bad shm name '%s'", name ? name : "");
		return -EINVAL;
	}
	snprintf(s->name, sizeof(s->name), "%s", path + 1);
	/* glibc's shm_open adds O_NOFOLLOW: a symlink is never followed */
	s->fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (s->fd >= 0) {
		/* shm_open applies the umask: set the mode we were asked for. */
		fchmod(s->fd, mode);
		*created = 1;
	} else if (errno == EEXIST) {
		s->fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
	}
	if (s->fd < 0) {
		rc = -errno;
		snprintf(why, whylen, "shm_open /dev/shm%s: %s", path,
			 strerror(-rc));
		return rc;
	}
	/* never adopt what someone else made, or could read or write */
	if (!*created && seg_owned(s->fd, mode, why, whylen) < 0)
		return seg_replace(s, name, path, g, mode, created, "foreign",
				   why, whylen, tries);
	if (flock(s->fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		snprintf(why, whylen, "another broker is running on /dev/shm%s "
			 "(pid %u)", path, 0u);
		if (!*created) {
			struct seg tmp;
			char w2[8];

			/* best effort: name the running broker's pid */
			memset(&tmp, 0, sizeof(tmp));
			tmp.fd = s->fd;
			if (seg_attach_fd(&tmp, 0, w2, sizeof(w2)) == 0) {
				snprintf(why, whylen, "another broker is "
					 "running on /dev/shm%s (pid %u)",
					 path, atomic_load(&tmp.cons->broker_pid));
				munmap(tmp.base, tmp.map_len);
			}
		}
		close(s->fd);
		s->fd = -1;
		return rc;
	}
	if (*created) {
		rc = seg_init_new(s, g, why, whylen);
		if (rc < 0) {
			close(s->fd);
			shm_unlink(path);
			s->fd = -1;
		}
		return rc;
	}
	rc = seg_attach_fd(s, 1, why, whylen);
	if (rc == -EAGAIN && tries > 0) {
		/* A broker died while creating it: nobody can have written
		 * records into an object without a magic. Start over. */
		close(s->fd);
		shm_unlink(path);
		return seg_open(s, name, g, mode, created, why, whylen,
				tries - 1);
	}
	if (rc == -EPROTO)   /* damaged: keep it for a post-mortem */
		return seg_replace(s, name, path, g, mode, created, "damaged",
				   why, whylen, tries);
	if (rc == 0 && (s->g.ring_size != g->ring_size ||
			s->g.max_record != g->max_record ||
			s->g.nslots != g->nslots)) {
		snprintf(why, whylen, "/dev/shm%s exists with ring_size=%llu "
			 "max_record=%u slots=%u but the config asks for "
			 "ring_size=%llu max_record=%u slots=%u: stop the "
			 "producers and remove it, or keep the old sizes",
			 path, (unsigned long long)s->g.ring_size,
			 s->g.max_record, s->g.nslots,
			 (unsigned long long)g->ring_size, g->max_record,
			 g->nslots);
		seg_detach(s);
		return -EEXIST;
	}
	if (rc < 0) {
		close(s->fd);
		s->fd = -1;
	}
	return rc;
}

/* ---- surviving a truncated object ------------------------------------------ */

static struct seg *_Atomic g_guarded;
static struct sigaction g_old_bus;

/* SIGBUS on the guarded mapping: the object was truncated under us. A
 * private zero page in place of the missing one lets the access finish
 * (mmap(2) is a plain syscall here, safe in a handler); seg_check()
 * restores the real mapping. Any other SIGBUS goes to whoever handled it
 * before (by default: the process dies, as it would have). */
static void seg_sigbus(int sig, siginfo_t *si, void *uc)
{
	struct seg *s = atomic_load(&g_guarded);
	uint8_t *a = si->si_addr;

	(void)sig;
	(void)uc;
	if (s && s->base && a >= s->base && a < s->base + s->map_len &&
	    mmap((void *)((uintptr_t)a & ~(uintptr_t)(OBX_PAGE - 1)),
		 OBX_PAGE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
		atomic_store(&s->faulted, 1);
		return;
	}
	sigaction(SIGBUS, &g_old_bus, NULL);   /* the fault comes again */
}

int seg_guard(struct seg *s)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = seg_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	if (atomic_exchange(&g_guarded, s) == NULL &&
	    sigaction(SIGBUS, &sa, &g_old_bus) < 0)
		return -errno;
	return 0;
}

int seg_check(struct seg *s, char *why, size_t whylen)
{
	const size_t geom = offsetof(struct obx_shm_hdr, tail);
	char tmp[8];
	struct stat st;
	int rc = 0;

	if (!why || !whylen) {
		why = tmp;
		whylen = sizeof(tmp);
	}
	why[0] = 0;
	if (fstat(s->fd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size != s->total) {
		snprintf(why, whylen, "object was %lld bytes, not %llu: "
			 "resized back (what was cut is lost)",
			 (long long)st.st_size, (unsigned long long)s->total);
		if (ftruncate(s->fd, (off_t)s->total) < 0)
			return -errno;
		rc |= 1;
	}
	if (rc || atomic_load(&s->faulted)) {
		/* the zero pages a SIGBUS put in are private: map the
		 * object's pages back in their place */
		atomic_store(&s->faulted, 0);
		if (seg_map_at(s, s->base, s->ring_off, s->total) < 0)
			return -errno;
		rc |= 4;
	}
	if (memcmp(s->hdr, &s->trusted, geom) != 0) {
		size_t n = strlen(why);

		snprintf(why + n, whylen - n, "%sheader rewritten", n ? "; " :
			 "");
		memcpy((uint8_t *)s->hdr + 8, (uint8_t *)&s->trusted + 8,
		       geom - 8);
		atomic_store_explicit((_Atomic uint64_t *)&s->hdr->magic,
				      OBX_MAGIC, memory_order_release);
		rc |= 2;
	}
	return rc;
}

void seg_detach(struct seg *s)
{
	struct seg *me = s;

	atomic_compare_exchange_strong(&g_guarded, &me, NULL);
	if (s->base)
		munmap(s->base, s->map_len);
	if (s->fd >= 0)
		close(s->fd);
	s->base = NULL;
	s->fd = -1;
}

int seg_unlink(const char *name)
{
	char path[80];

	if (seg_path(name, path, sizeof(path)) < 0)
		return -EINVAL;
	return shm_unlink(path) < 0 ? -errno : 0;
}
