/* outbox.c - liboutbox: the producer side of the ring.
 *
 * A handle owns one producer slot per process, and keeps it OFD-locked on
 * its own open file description of the shm object: the broker's proof
 * that the process lives. fork() is detected through a pthread_atfork
 * child hook that bumps a generation and gives the child a description of
 * its own (the inherited one is the parent's: holding it would keep the
 * parent's lock alive after the parent died); the next emit in the child
 * claims a fresh slot. Sink names are resolved into a small immutable
 * table so the emit path neither hashes nor allocates.
 */
#define _GNU_SOURCE
#include "outbox.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../shm/envelope.h"
#include "../shm/ring.h"
#include "../shm/slots.h"

#define OBX_MAX_NAMES 64

struct obx_name {
	char s[ENV_NAME_MAX + 1];
	uint32_t len;
	uint32_t pre_len;              /* env_prefix_template() bytes */
	uint8_t pre[ENV_NAME_MAX + 16];
	/* the sink's event_max (sink page) when resolved, UINT32_MAX =
	 * none: a JSON or bytes body longer than it cannot be sent */
	_Atomic uint32_t max_body;
};

struct obx {
	uint64_t id;                   /* unique per open, for thread caches */
	struct obx *next;              /* g_open list */
	struct seg seg;
	pthread_mutex_t lock;          /* registration, name table */
	char fdpath[32];               /* /proc/self/fd/N of seg.fd */
	dev_t dev;                     /* the object, to re-open it */
	ino_t ino;
	struct obx_slot *_Atomic slot; /* this process's slot */
	uint16_t sidx;
	_Atomic unsigned gen;          /* fork generation the slot is for */
	_Atomic int nnames;
	struct obx_name names[OBX_MAX_NAMES];
};

/* private part of struct obx_rsv */
struct obx_rsv_priv {
	struct ring_claim c;
	struct obx_slot *slot;
	struct obx_lane *lane;
	struct env_buf b;
};
_Static_assert(sizeof(struct obx_rsv_priv) <= sizeof(((struct obx_rsv *)0)->priv),
	       "obx_rsv private part");

#ifdef OBX_FAULT_INJECT
#include <signal.h>
/* Test hooks: raise obx_fault_signal (SIGKILL unless set) the n-th time
 * `where` is reached; obx_fault_hook, when set, runs at every point
 * first. */
int obx_fault_where;
long obx_fault_countdown;
int obx_fault_signal;
void (*obx_fault_hook)(int where);

void obx_fault_point(int where)
{
	if (obx_fault_hook)
		obx_fault_hook(where);
	if (where == obx_fault_where && --obx_fault_countdown == 0)
		raise(obx_fault_signal ? obx_fault_signal : SIGKILL);
}

/* The handle's mapping, with the broker's pages made writable: threaded
 * tests consume through the producers' own mapping so that
 * ThreadSanitizer, which keys on addresses, sees one address per word. */
struct seg *obx_fi_seg(obx_t *h)
{
	mprotect(h->seg.base + OBX_PAGE, (size_t)(h->seg.ring_off - OBX_PAGE),
		 PROT_READ | PROT_WRITE);
	return &h->seg;
}
#endif

static _Atomic unsigned g_fork_gen = 1;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* Each thread keeps the lane it took in the slot of the handle it last
 * emitted through. The key's destructor gives the lane back at thread
 * exit, if that handle is still open (g_open, under g_open_lock). */
struct obx_tls_lane {
	uint64_t hid;
	unsigned gen;
	struct obx_lane *lane;
};
static __thread struct obx_tls_lane t_lane;
static pthread_key_t g_lane_key;
static pthread_mutex_t g_open_lock = PTHREAD_MUTEX_INITIALIZER;
static struct obx *g_open;
static _Atomic uint64_t g_next_hid = 1;
static _Atomic uint32_t g_next_token = 1;
static uint8_t g_tail[ENV_TAIL_LEN];    /* env_tail_template() */
static __thread char g_open_err[256];

/* fork() with other threads running: one of them may hold g_open_lock or
 * a handle's lock, and the child would wait for it forever on its first
 * emit (it re-registers under h->lock). So the forking thread takes every
 * library lock before the fork (lock order: g_open_lock, then each handle
 * in list order, as everywhere else) and both sides release them after. */
static void obx_atfork_prepare(void)
{
	struct obx *h;

	pthread_mutex_lock(&g_open_lock);
	for (h = g_open; h; h = h->next)
		pthread_mutex_lock(&h->lock);
}

static void obx_atfork_unlock(void)
{
	struct obx *h;

	for (h = g_open; h; h = h->next)
		pthread_mutex_unlock(&h->lock);
	pthread_mutex_unlock(&g_open_lock);
}

/* In the child: a new open file description of the same object in place
 * of the inherited one (open(2) of /proc/self/fd/N, dup3(2): both
 * async-signal-safe, as a fork handler must be). Without /proc the
 * inherited one is closed all the same; the child's registration opens
 * the object by name then. */
static void obx_fd_renew(struct obx *h)
{
	int fd;

	if (h->seg.fd < 0)
		return;
	fd = open(h->fdpath, O_RDWR | O_CLOEXEC);
	if (fd >= 0 && dup3(fd, h->seg.fd, O_CLOEXEC) >= 0) {
		close(fd);
		return;
	}
	if (fd >= 0)
		close(fd);
	close(h->seg.fd);
	h->seg.fd = -1;
}

static void obx_atfork_child(void)
{
	struct obx *h;

	atomic_fetch_add_explicit(&g_fork_gen, 1, memory_order_relaxed);
	for (h = g_open; h; h = h->next)
		obx_fd_renew(h);
	obx_atfork_unlock();
}

/* A description of the object for this process when the fork handler
 * could not make one: by name, and only if it is still the same object. */
static int obx_fd_reopen(obx_t *h)
{
	char path[sizeof(h->seg.name) + 1];
	struct stat st;
	int fd;

	snprintf(path, sizeof(path), "/%s", h->seg.name);
	fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || st.st_dev != h->dev || st.st_ino != h->ino) {
		close(fd);
		return -ESTALE;   /* replaced since: this handle is stale */
	}
	h->seg.fd = fd;
	return 0;
}

static void obx_lane_release(void *arg)
{
	struct obx_tls_lane *t = arg;
	struct obx *h;

	pthread_mutex_lock(&g_open_lock);
	for (h = g_open; h; h = h->next)
		if (h->id == t->hid && t->gen == atomic_load(&g_fork_gen) &&
		    t->lane)
			atomic_store(&t->lane->owner, 0);
	pthread_mutex_unlock(&g_open_lock);
	t->hid = 0;
	t->lane = NULL;
}

static void obx_init_once(void)
{
	pthread_key_create(&g_lane_key, obx_lane_release);
	env_tail_template(g_tail);
	pthread_atfork(obx_atfork_prepare, obx_atfork_unlock, obx_atfork_child);
}

const char *obx_open_error(void)
{
	return g_open_err;
}

static int obx_register(obx_t *h)
{
	uint64_t start = 0;
	unsigned gen = atomic_load(&g_fork_gen);
	int idx, rc = 0;

	pthread_mutex_lock(&h->lock);
	if (atomic_load(&h->gen) == gen && atomic_load(&h->slot))
		goto out;
	if (h->seg.fd < 0 && (rc = obx_fd_reopen(h)) < 0)
		goto out;
	slot_proc_stat(getpid(), &start, NULL);
	idx = slot_claim(&h->seg, h->seg.fd, getpid(), start);
	if (idx < 0) {
		rc = idx;
		goto out;
	}
	h->sidx = (uint16_t)idx;
	atomic_store(&h->slot, &h->seg.slots[idx]);
	atomic_store(&h->gen, gen);
out:
	pthread_mutex_unlock(&h->lock);
	return rc;
}

/* The slot of the calling process; NULL when none can be had. */
static inline struct obx_slot *obx_my_slot(obx_t *h)
{
	if (__builtin_expect(atomic_load_explicit(&h->gen,
			memory_order_relaxed) != atomic_load_explicit(
			&g_fork_gen, memory_order_relaxed), 0)) {
		if (obx_register(h) < 0)
			return NULL;
	}
	return atomic_load_explicit(&h->slot, memory_order_relaxed);
}

/* The calling thread's lane in this process's slot (NULL: none free). */
static struct obx_lane *obx_lane_slow(obx_t *h, struct obx_slot *slot)
{
	uint32_t token = atomic_fetch_add(&g_next_token, 1);

	if (!token)
		token = atomic_fetch_add(&g_next_token, 1);
	t_lane.lane = slot_lane_claim(slot, token);
	t_lane.hid = h->id;
	t_lane.gen = atomic_load(&h->gen);
	pthread_setspecific(g_lane_key, &t_lane);
	return t_lane.lane;
}

static inline struct obx_lane *obx_my_lane(obx_t *h, struct obx_slot *slot)
{
	if (__builtin_expect(t_lane.hid == h->id && t_lane.gen ==
			     atomic_load_explicit(&h->gen,
						  memory_order_relaxed), 1))
		return t_lane.lane;
	return obx_lane_slow(h, slot);
}

obx_t *obx_open(const char *shm_name)
{
	obx_t *h;
	int rc;

	pthread_once(&g_once, obx_init_once);
	if (!shm_name || !*shm_name)
		shm_name = getenv("OUTBOX_SHM");
	if (!shm_name || !*shm_name)
		shm_name = "outbox";
	h = calloc(1, sizeof(*h));
	if (!h) {
		snprintf(g_open_err, sizeof(g_open_err), "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	pthread_mutex_init(&h->lock, NULL);
	rc = seg_attach(&h->seg, shm_name, g_open_err, sizeof(g_open_err));
	if (rc < 0)
		goto err;
	{
		struct stat st;

		if (fstat(h->seg.fd, &st) == 0) {
			h->dev = st.st_dev;
			h->ino = st.st_ino;
		}
		snprintf(h->fdpath, sizeof(h->fdpath), "/proc/self/fd/%d",
			 h->seg.fd);
	}
	/* id 0 is always the default sink "" */
	h->names[0].pre_len = (uint32_t)env_prefix_template(h->names[0].pre,
					sizeof(h->names[0].pre), "", 0);
	atomic_store(&h->nnames, 1);
	atomic_store(&h->gen, 0);
	rc = obx_register(h);
	if (rc < 0) {
		snprintf(g_open_err, sizeof(g_open_err), "no free producer "
			 "slot in /dev/shm/%s (%u slots)", h->seg.name,
			 h->seg.g.nslots);
		seg_detach(&h->seg);
		goto err;
	}
	obx_sink(h, "");        /* the default sink's limit, if known */
	h->id = atomic_fetch_add(&g_next_hid, 1);
	pthread_mutex_lock(&g_open_lock);
	h->next = g_open;
	g_open = h;
	pthread_mutex_unlock(&g_open_lock);
	g_open_err[0] = 0;
	return h;
err:
	pthread_mutex_destroy(&h->lock);
	free(h);
	errno = -rc;
	return NULL;
}

void obx_close(obx_t *h)
{
	struct obx **pp;
	int found = 0;

	if (!h)
		return;
	/* Only a handle on the open list is touched: a second close of the
	 * same handle finds nothing and returns without dereferencing it. */
	pthread_mutex_lock(&g_open_lock);
	for (pp = &g_open; *pp; pp = &(*pp)->next)
		if (*pp == h) {
			*pp = h->next;
			found = 1;
			break;
		}
	pthread_mutex_unlock(&g_open_lock);
	if (!found)
		return;
	/* only the process that owns the slot gives it up */
	if (atomic_load(&h->gen) == atomic_load(&g_fork_gen) &&
	    atomic_load(&h->slot))
		slot_release(atomic_load(&h->slot));
	seg_detach(&h->seg);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

/* Is `name` one of the broker's sinks? 1 yes (*event_max: its limit,
 * UINT32_MAX for none), 0 no, -1 no list yet. name NULL: the default
 * sink. */
static int obx_broker_has_sink(obx_t *h, const char *name, size_t len,
			       uint32_t *event_max)
{
	const struct obx_sink_page *sp = h->seg.sinks;
	uint32_t i, n = sp->nsinks;

	*event_max = UINT32_MAX;
	if (n == 0 || n > OBX_MAX_SINKS)
		return -1;
	for (i = 0; i < n; i++)
		if (sp->sink[i].in_use &&
		    (name ? strnlen(sp->sink[i].name, OBX_NAME_MAX) == len &&
		     memcmp(sp->sink[i].name, name, len) == 0 :
		     i == sp->default_sink)) {
			/* one aligned word, broker-written: no lock needed for
			 * a hint the broker checks again */
			uint32_t m = __atomic_load_n(&sp->sink[i].event_max,
						     __ATOMIC_RELAXED);

			*event_max = m ? m : UINT32_MAX;
			return 1;
		}
	return 0;
}

int obx_sink(obx_t *h, const char *name)
{
	uint32_t max;
	size_t len;
	int i, n, rc, found;

	if (!h)
		return -EINVAL;
	if (!name)
		name = getenv("OUTBOX_SINK");
	if (!name || !*name || strcmp(name, "default") == 0) {
		obx_broker_has_sink(h, NULL, 0, &max);
		atomic_store_explicit(&h->names[0].max_body, max,
				      memory_order_relaxed);
		return 0;
	}
	len = strlen(name);
	if (len > ENV_NAME_MAX)
		return -EINVAL;
	pthread_mutex_lock(&h->lock);
	n = atomic_load(&h->nnames);
	found = obx_broker_has_sink(h, name, len, &max);
	for (i = 1; i < n; i++)
		if (h->names[i].len == len &&
		    memcmp(h->names[i].s, name, len) == 0) {
			/* resolving again refreshes its limit (a reload) */
			atomic_store_explicit(&h->names[i].max_body, max,
					      memory_order_relaxed);
			rc = i;
			goto out;
		}
	if (found == 0) {
		rc = -ENOENT;
		goto out;
	}
	if (n >= OBX_MAX_NAMES) {
		rc = -ENOSPC;
		goto out;
	}
	memcpy(h->names[n].s, name, len + 1);
	h->names[n].len = (uint32_t)len;
	h->names[n].pre_len = (uint32_t)env_prefix_template(h->names[n].pre,
					sizeof(h->names[n].pre), name, len);
	atomic_store_explicit(&h->names[n].max_body, max,
			      memory_order_relaxed);
	/* release: the entry is complete before emitters may use id n */
	atomic_store_explicit(&h->nnames, n + 1, memory_order_release);
	rc = n;
out:
	pthread_mutex_unlock(&h->lock);
	return rc;
}

static inline uint64_t obx_now_coarse(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline size_t obx_str_hdr_len(size_t n)
{
	return n < 32 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : 5;
}

static inline size_t obx_bin_hdr_len(size_t n)
{
	return n < 256 ? 2 : n < 65536 ? 3 : 5;
}

/* A body of `len` bytes is longer than the sink's event_max: counted as
 * an emit attempt and its drop (identity in obx_abi.h), -EMSGSIZE. */
static int obx_drop_too_large(struct obx_slot *slot)
{
	atomic_fetch_add_explicit(&slot->drop_too_large, 1,
				  memory_order_relaxed);
	return -EMSGSIZE;
}

/* Common start of emit and reserve: slot, sink, claim, then the envelope
 * head copied from its templates with ts and id patched in. Leaves
 * p->b positioned at the body. body_len: a JSON-text or bytes body's
 * length, which reaches the upstream at least as long (the protocols copy
 * it or add to it), so one over the sink's event_max is dropped before it
 * takes ring space; 0 for a msgpack body, whose JSON may be shorter (the
 * broker decides). */
static inline int obx_begin(obx_t *h, int sink, const char *type,
			    size_t body_room, size_t body_len,
			    struct obx_rsv_priv *p)
{
	const struct obx_name *nm;
	size_t tlen, need, head;
	uint8_t *d;
	int rc;

	p->slot = obx_my_slot(h);
	if (__builtin_expect(!p->slot, 0))
		return -ENOSPC;
	if (__builtin_expect((unsigned)sink >= (unsigned)atomic_load_explicit(
			&h->nnames, memory_order_acquire), 0))
		return -EINVAL;
	nm = &h->names[sink];
	if (__builtin_expect(body_len > atomic_load_explicit(&nm->max_body,
			memory_order_relaxed), 0))
		return obx_drop_too_large(p->slot);
	if (!type)
		type = "";
	tlen = strlen(type);
	if (__builtin_expect(tlen > ENV_NAME_MAX, 0))
		return -EINVAL;
	head = nm->pre_len + obx_str_hdr_len(tlen) + tlen + ENV_TAIL_LEN;
	/* no wrap: body_room may be anything the caller passed */
	need = body_room > UINT32_MAX - head ? UINT32_MAX : head + body_room;
	p->lane = obx_my_lane(h, p->slot);
	rc = ring_reserve(&h->seg, p->slot, p->lane, h->sidx, (uint32_t)need,
			  &p->c);
	if (rc < 0)
		return rc;
	d = p->c.payload;
	memcpy(d, nm->pre, nm->pre_len);
	d += nm->pre_len;
	d += env_str_header(d, tlen);
	memcpy(d, type, tlen);
	d += tlen;
	memcpy(d, g_tail, ENV_TAIL_LEN);
	env_put_be64(d + ENV_TAIL_TS, obx_now_coarse());
	env_put_be64(d + ENV_TAIL_ID, h->seg.segment_id);
	env_put_be64(d + ENV_TAIL_ID + 8, p->c.pos);
	p->b.p = p->c.payload;
	p->b.len = head;
	p->b.cap = p->c.size - OBX_REC_HDR;
	p->b.overflow = 0;
	return 0;
}

int obx_emit(obx_t *h, int sink, const char *type, const void *body,
	     size_t len, int kind)
{
	struct obx_rsv_priv p;
	size_t room;
	uint8_t *d;
	int rc;

	if (__builtin_expect(!body && len, 0))
		return -EINVAL;
	switch (kind) {
	case OBX_BODY_JSON:
		room = obx_str_hdr_len(len) + len;
		break;
	case OBX_BODY_BYTES:
		room = obx_bin_hdr_len(len) + len;
		break;
	case OBX_BODY_MSGPACK:
		if (__builtin_expect(len == 0, 0))
			return -EINVAL;   /* no object: not an envelope */
		room = len;
		break;
	default:
		return -EINVAL;
	}
	/* Check the length before it takes part in any sum: a failed read()
	 * passes (size_t)-1. Too large for any record: counted a drop. */
	if (__builtin_expect(len > h->seg.g.max_record, 0))
		room = SIZE_MAX;
	rc = obx_begin(h, sink, type, room, kind == OBX_BODY_MSGPACK ? 0 : len,
		       &p);
	if (rc < 0)
		return rc;
	d = p.b.p + p.b.len;
	if (kind == OBX_BODY_JSON)
		d += env_str_header(d, len);
	else if (kind == OBX_BODY_BYTES)
		d += env_bin_header(d, len);
#ifdef OBX_FAULT_INJECT
	/* the kill tests stop here, half the body copied */
	memcpy(d, body, len / 2);
	OBX_FAULT(OBX_FP_MID_COPY);
	memcpy(d + len / 2, (const char *)body + len / 2, len - len / 2);
#else
	memcpy(d, body, len);
#endif
	d += len;
	return ring_commit(&h->seg, p.slot, &p.c, (uint32_t)(d - p.b.p));
}

int obx_reserve(obx_t *h, int sink, const char *type, size_t max_body,
		struct obx_rsv *r)
{
	struct obx_rsv_priv *p = (struct obx_rsv_priv *)r->priv;
	int rc;

	rc = obx_begin(h, sink, type, max_body, 0, p);
	if (rc < 0)
		return rc;
	msgpack_packer_init(&r->pk, &p->b, env_buf_write);
	return 0;
}

int obx_commit(obx_t *h, struct obx_rsv *r)
{
	struct obx_rsv_priv *p = (struct obx_rsv_priv *)r->priv;

	if (p->b.overflow) {
		/* reserved + aborted + drop_too_large: emitted once, dropped
		 * once as too large (identity in obx_abi.h) */
		ring_abort(&h->seg, p->slot, &p->c);
		atomic_fetch_add(&p->slot->drop_too_large, 1);
		return -EMSGSIZE;
	}
	return ring_commit(&h->seg, p->slot, &p->c, (uint32_t)p->b.len);
}

void obx_abort(obx_t *h, struct obx_rsv *r)
{
	struct obx_rsv_priv *p = (struct obx_rsv_priv *)r->priv;

	ring_abort(&h->seg, p->slot, &p->c);
}

int obx_sink_state(obx_t *h, int sink, struct obx_sink_info *out)
{
	const struct obx_sink_page *sp = h->seg.sinks;
	const struct obx_name *nm;
	uint64_t s1, s2;
	uint32_t i, n;
	int tries;

	if ((unsigned)sink >= (unsigned)atomic_load(&h->nnames))
		return -EINVAL;
	nm = &h->names[sink];
	for (tries = 0; tries < 100; tries++) {
		int found = -ENOENT;

		/* seqlock read: pairs with the broker's writer in
		 * broker/stats.c (odd while it writes) */
		s1 = atomic_load_explicit(&((struct obx_sink_page *)sp)->seq,
					  memory_order_acquire);
		if (s1 & 1)
			continue;
		n = sp->nsinks;
		if (n > OBX_MAX_SINKS)
			n = OBX_MAX_SINKS;
		for (i = 0; i < n; i++) {
			const struct obx_sink_shm *ss = &sp->sink[i];
			const char *want = nm->len ? nm->s : "default";
			size_t wl = nm->len ? nm->len : 7;
			unsigned k;

			if (!ss->in_use || strnlen(ss->name, OBX_NAME_MAX) !=
			    wl || memcmp(ss->name, want, wl) != 0)
				continue;
			memset(out, 0, sizeof(*out));
			out->state = (int)ss->state;
			out->until_ns = ss->until_ns;
			out->ncats = ss->ncats > 8 ? 8 : ss->ncats;
			for (k = 0; k < out->ncats; k++) {
				memcpy(out->cats[k], ss->cats[k], 23);
				out->cats[k][23] = 0;
				out->cat_until_ns[k] = ss->cat_until_ns[k];
			}
			found = 0;
			break;
		}
		atomic_thread_fence(memory_order_acquire);
		s2 = atomic_load_explicit(&((struct obx_sink_page *)sp)->seq,
					  memory_order_relaxed);
		if (s1 == s2)
			return found;
	}
	return -EAGAIN;
}

int obx_counters(obx_t *h, struct obx_counters *out)
{
	struct obx_slot *s = obx_my_slot(h);

	if (!s)
		return -ENOSPC;
	out->emitted = slot_emitted(s);
	out->dropped_ring_full = atomic_load(&s->drop_full);
	out->dropped_too_large = atomic_load(&s->drop_too_large);
	out->dropped_late = atomic_load(&s->drop_late);
	out->aborted = atomic_load(&s->aborted);
	out->dropped = out->dropped_ring_full + out->dropped_too_large +
		       out->dropped_late;
	return 0;
}

int obx_broker_alive(obx_t *h)
{
	return slot_pid_alive(atomic_load(&h->seg.cons->broker_pid),
			      atomic_load(&h->seg.cons->broker_start));
}
