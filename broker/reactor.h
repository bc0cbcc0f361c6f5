/* reactor.h - the broker's one event loop, on io_uring.
 *
 * Every asynchronous operation (spool writes and reads, fdatasync, socket
 * polls for libcurl, the ring's futex wait) is an SQE whose user_data
 * points at a struct rx_op embedded in its owner; the completion calls
 * op->fn. Timers are not io_uring ops: the caller computes its next
 * deadline and passes it to rx_run() as the wait timeout, so there is one
 * place that sleeps.
 *
 * Single-threaded: only the broker thread touches a struct rx.
 */
#ifndef OBX_REACTOR_H
#define OBX_REACTOR_H

#include <stdint.h>
#include <liburing.h>

struct rx_op;
typedef void (*rx_fn)(struct rx_op *op, int res, uint32_t cqe_flags);

struct rx_op {
	rx_fn fn;
};

struct rx {
	struct io_uring ring;
	unsigned queued;        /* SQEs prepared since the last submit */
	int has_futex;          /* kernel supports IORING_OP_FUTEX_WAIT */
	int can_skip_cqe;       /* IOSQE_CQE_SKIP_SUCCESS (IORING_FEAT_CQE_SKIP) */
	uint64_t completions;   /* total dispatched, for stats/tests */
};

/* 0 or -errno. entries: SQ size (e.g. 256). */
int rx_init(struct rx *rx, unsigned entries);
void rx_fini(struct rx *rx);

/* An SQE whose completion calls op->fn(op, cqe->res, cqe->flags). When
 * the SQ is full it submits first; never returns NULL. op may be NULL for
 * fire-and-forget ops (completion ignored). */
struct io_uring_sqe *rx_sqe(struct rx *rx, struct rx_op *op);

/* Makes room for n SQEs that must go to the kernel in one submission
 * (a linked chain): submits what is queued when the SQ lacks room.
 * 0, or -EBUSY when the SQ still lacks it. */
int rx_reserve(struct rx *rx, unsigned n);

/* Submits what is queued, waits for at least one completion or until
 * timeout_ns passes (0 = poll, do not wait), dispatches every available
 * completion. Returns the number dispatched, or -errno (not -ETIME). */
int rx_run(struct rx *rx, uint64_t timeout_ns);

/* Submits what is queued without waiting; 0 or -errno. */
int rx_submit(struct rx *rx);

/* Runs until *done becomes non-zero or timeout_ns passes; for startup,
 * shutdown and tests. Returns 0, or -ETIMEDOUT. */
int rx_run_until(struct rx *rx, const int *done, uint64_t timeout_ns);

/* Queues a futex wait on a shared (non-private) 32-bit futex word:
 * completes when woken or when *uaddr != val at submission (-EAGAIN).
 * -ENOSYS when the kernel lacks IORING_OP_FUTEX_WAIT. */
int rx_futex_wait(struct rx *rx, struct rx_op *op, uint32_t *uaddr,
		  uint32_t val);

#endif
