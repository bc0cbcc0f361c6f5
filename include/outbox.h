/* outbox.h - the producer API of outbox.
 *
 * Workers write telemetry events into one lock-free ring in POSIX shared
 * memory; the outboxd broker on the same host spools and delivers them.
 *
 *   obx_t *h = obx_open(NULL);                 // $OUTBOX_SHM or "outbox"
 *   int api = obx_sink(h, "api");              // resolve once
 *   obx_emit(h, api, "track", json, len, OBX_BODY_JSON);
 *
 * Every function returns 0 (or a non-negative value) on success and
 * -errno on failure; constructors return NULL and set errno. The emit
 * path never blocks, never allocates and makes no syscall while the broker
 * is awake: a full ring is a counted drop (-EAGAIN), an oversized event a
 * counted drop (-EMSGSIZE). Thread-safe; fork-safe (a child re-registers
 * itself on its first emit; fork() may happen while other threads use the
 * library).
 *
 * Signals: obx_emit(), obx_reserve(), obx_commit() and obx_abort() are
 * async-signal-safe once the calling thread has emitted through the
 * handle before (in that process, after any fork): a handler that
 * interrupts its thread in the middle of an emit, even between the
 * claim and its header, emits through the slot's shared counters instead
 * of the thread's lane, and neither record is lost or damaged. The very
 * first emit of a thread or of a forked child registers it (a lock, an
 * allocation-free but not signal-safe path): do one before installing a
 * handler that emits.
 *
 * Liveness: the broker knows this process is alive because it holds a
 * lock on the segment's file (an open file description of its own).
 * Closing file descriptors the library opened (closefrom(), close_range()
 * over them) makes the process look dead to the broker: don't.
 */
#ifndef OUTBOX_H
#define OUTBOX_H

#include <stddef.h>
#include <stdint.h>
#include <msgpack.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct obx obx_t;

/* body kinds */
#define OBX_BODY_JSON     1   /* JSON text, carried as a msgpack str */
#define OBX_BODY_BYTES    2   /* opaque bytes, msgpack bin */
#define OBX_BODY_MSGPACK  3   /* one msgpack object (usually a map) */

/* Attaches to the broker's segment /dev/shm/<shm_name> (NULL: $OUTBOX_SHM,
 * else "outbox"). NULL + errno: ENOENT no broker ever created it, EPROTO
 * layout or version mismatch, EAGAIN being initialised, ENOSPC no free
 * producer slot. obx_strerror_open() tells why in words. */
obx_t *obx_open(const char *shm_name);

/* The reason the last obx_open() of this thread failed. */
const char *obx_open_error(void);

/* Releases the producer slot and unmaps the segment. NULL, or a handle
 * already closed, is ignored (as long as no obx_open() since has been
 * given the same address). */
void obx_close(obx_t *h);

/* Resolves a sink name to an id, once. NULL: $OUTBOX_SINK, else the
 * default sink (""). -ENOENT when the broker publishes its sinks and this
 * name is not one of them; -ENOSPC after 64 names. It also takes the
 * sink's event_max_bytes when the broker publishes one (the protocol
 * sinks: segment, sentry, otlp); resolving the name again refreshes it
 * (after a reload). */
int obx_sink(obx_t *h, const char *name);

/* Emits one event (copied). type may be NULL. 0, -EAGAIN (ring full,
 * dropped), -EMSGSIZE (too large, dropped: over max_record, or a JSON or
 * bytes body longer than the sink's event_max_bytes taken by obx_sink(),
 * a msgpack body being checked by the broker; any len, (size_t)-1
 * included, is checked before use), -EINVAL (bad sink id or kind, NULL
 * body with a length, an empty OBX_BODY_MSGPACK body), -ETIMEDOUT (the
 * record's header was overwritten meanwhile - the broker judged this
 * process dead or something damaged the ring - dropped, counted). */
int obx_emit(obx_t *h, int sink, const char *type, const void *body,
	     size_t len, int kind);

/* Zero-copy: reserve room for a body of at most max_body bytes, pack
 * exactly one msgpack object with r->pk (it writes straight into the
 * ring), then commit or abort. Between reserve and commit the record's
 * space cannot be reused: the broker delivers what comes after it, but
 * once the ring has gone round other producers drop (counted) until it
 * is committed; keep it short. A claim held past the broker's
 * stall_timeout is logged with the pid (and with stall_action = kill the
 * process is killed). */
struct obx_rsv {
	msgpack_packer pk;
	uint64_t priv[12];      /* opaque */
};

int obx_reserve(obx_t *h, int sink, const char *type, size_t max_body,
		struct obx_rsv *r);
/* -EMSGSIZE when the packed body outgrew max_body (dropped, counted). */
int obx_commit(obx_t *h, struct obx_rsv *r);
void obx_abort(obx_t *h, struct obx_rsv *r);

/* The broker's delivery state of a sink, shared by every producer. */
#define OBX_STATE_OK            0
#define OBX_STATE_BACKOFF       1
#define OBX_STATE_RATE_LIMITED  2

struct obx_sink_info {
	int state;                     /* OBX_STATE_* */
	uint64_t until_ns;             /* CLOCK_REALTIME ns; 0 when ok */
	unsigned ncats;                /* rate-limited categories */
	char cats[8][24];
	uint64_t cat_until_ns[8];
};

/* -ENOENT when the broker does not (yet) publish that sink. */
int obx_sink_state(obx_t *h, int sink, struct obx_sink_info *out);

/* Counters of this process (all threads). */
struct obx_counters {
	uint64_t emitted;              /* emit attempts, aborts excluded */
	uint64_t dropped;              /* every drop below */
	uint64_t dropped_ring_full;
	uint64_t dropped_too_large;
	uint64_t dropped_late;
	uint64_t aborted;
};

int obx_counters(obx_t *h, struct obx_counters *out);

/* Broker liveness as producers see it: 1 running, 0 not running. */
int obx_broker_alive(obx_t *h);

#ifdef __cplusplus
}
#endif

#endif /* OUTBOX_H */
