/* ops.h - outboxd as an operated service: systemd's notify protocol
 * (READY, RELOADING, STOPPING, STATUS, WATCHDOG) and the optional
 * metrics endpoint (metrics_listen: GET /metrics, GET /health).
 *
 * The broker loop calls four hooks (main.c): ops_start() once the ring
 * is open and every spool recovered, ops_tick() from its housekeeping,
 * ops_reloading()/ops_reloaded() around a SIGHUP reload, ops_stopping()
 * on SIGTERM, ops_stop() before the segment is unmapped.
 *
 * The metrics endpoint is libmicrohttpd in its own thread (see DESIGN.md
 * "Operating"). That thread never touches broker state: it reads the
 * segment's pages under their seqlocks, as `outbox stat` does, plus two
 * atomics of struct ops that the loop writes.
 */
#ifndef OBX_OPS_H
#define OBX_OPS_H

#include <stdatomic.h>
#include <stdint.h>

struct broker;
struct seg;
struct MHD_Daemon;

/* /health answers 503 when the loop has not turned for this long */
#define OPS_HEALTH_STALL_NS 5000000000ull

struct ops {
	/* systemd */
	uint64_t wd_ns;                 /* WatchdogSec, 0: none */
	uint64_t next_wd;               /* mono: next WATCHDOG=1 */
	/* metrics endpoint */
	struct MHD_Daemon *mhd;
	int fd;                         /* its listening socket (with mhd) */
	char *want;                     /* the metrics_listen it serves */
	char *listen;                   /* ... as bound: ADDR:PORT */
	const struct seg *seg;
	/* written by the loop, read by the metrics thread (relaxed: each
	 * is a value on its own, nothing is published through it) */
	_Atomic uint64_t loop_beat;     /* mono ns of the last loop pass */
	_Atomic int stopping;
};

/* After start-up: serves metrics_listen if set, tells systemd READY=1.
 * 0, or -errno after a log line (the broker does not start). */
int ops_start(struct broker *b);
/* Every loop pass: heartbeat for /health, WATCHDOG=1 when due. Returns
 * the mono ns by which it wants to run again (UINT64_MAX: never). */
uint64_t ops_tick(struct broker *b, uint64_t now);
void ops_reloading(struct broker *b);
/* After a reload (applied or refused): rebinds the metrics endpoint if
 * metrics_listen changed, READY=1 again. */
void ops_reloaded(struct broker *b);
void ops_stopping(struct broker *b);
void ops_stop(struct broker *b);

#endif
