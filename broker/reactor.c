/* reactor.c - the broker's one event loop, on io_uring (liburing 2.3).
 *
 * Every SQE carries a struct rx_op pointer as user_data (0 = nobody
 * cares); rx_run() dispatches each CQE to op->fn. A CQE is consumed
 * (cqe_seen) BEFORE its callback runs: callbacks may queue new SQEs,
 * submit, or even run the loop again (rx_run_until from a shutdown path)
 * without ever seeing the same completion twice.
 *
 * Ring setup: COOP_TASKRUN + TASKRUN_FLAG (no IPI per completion; the
 * kernel raises IORING_SQ_TASKRUN and liburing's peek enters the kernel
 * when completions wait to be run) and SUBMIT_ALL (one bad SQE does not
 * stall the ones queued after it). Kernels that refuse those flags get a
 * plain ring. DEFER_TASKRUN is NOT used: it would hide completions from a
 * non-waiting rx_run(rx, 0).
 *
 * Futex wait: Debian's liburing 2.3 predates IORING_OP_FUTEX_WAIT
 * (kernel 6.7, opcode 51), so the SQE is prepared by hand exactly as
 * upstream liburing's io_uring_prep_futex_wait() does: fd = futex2 flags,
 * addr = the word, off = the expected value, addr3 = the wake bitmask,
 * rw_flags (futex_flags in newer headers) = 0. The word lives in a
 * shared mapping and is woken by other processes with the classic
 * futex(FUTEX_WAKE) syscall, so FUTEX2_PRIVATE must NOT be set: a
 * private futex is keyed by (mm, address) and a waker in another process
 * would never find it.
 */
#define _GNU_SOURCE
#include "reactor.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define RX_OP_FUTEX_WAIT	51		/* IORING_OP_FUTEX_WAIT */
#define RX_FUTEX2_SIZE_U32	0x02		/* FUTEX2_SIZE_U32 */
#define RX_FUTEX_MATCH_ANY	0xffffffffull	/* FUTEX_BITSET_MATCH_ANY */
#define RX_FOREVER		UINT64_MAX

static int rx_probe_futex(struct rx *rx)
{
	struct io_uring_probe *p = io_uring_get_probe_ring(&rx->ring);
	int ok;

	if (!p)
		return 0;
	ok = io_uring_opcode_supported(p, RX_OP_FUTEX_WAIT);
	io_uring_free_probe(p);
	return ok;
}

int rx_init(struct rx *rx, unsigned entries)
{
	unsigned flags = IORING_SETUP_COOP_TASKRUN |
			 IORING_SETUP_TASKRUN_FLAG |
			 IORING_SETUP_SUBMIT_ALL;
	int ret;

	memset(rx, 0, sizeof(*rx));
	if (!entries)
		entries = 256;
	ret = io_uring_queue_init(entries, &rx->ring, flags);
	if (ret == -EINVAL)	/* an older kernel: no such setup flags */
		ret = io_uring_queue_init(entries, &rx->ring, 0);
	if (ret < 0)
		return ret;
	rx->has_futex = rx_probe_futex(rx);
	rx->can_skip_cqe = !!(rx->ring.features & IORING_FEAT_CQE_SKIP);
	return 0;
}

void rx_fini(struct rx *rx)
{
	io_uring_queue_exit(&rx->ring);
	memset(rx, 0, sizeof(*rx));
}

/* Dispatches what the CQ holds now, at most one ring's worth so that a
 * callback that completes at once (NOP) cannot keep us here forever. */
static int rx_dispatch(struct rx *rx)
{
	unsigned max = rx->ring.cq.ring_entries;
	struct io_uring_cqe *cqe;
	int n = 0;

	while ((unsigned)n < max) {
		struct rx_op *op;
		uint32_t flags;
		int res;

		if (io_uring_peek_cqe(&rx->ring, &cqe) != 0 || !cqe)
			break;
		op = (struct rx_op *)(uintptr_t)io_uring_cqe_get_data64(cqe);
		res = cqe->res;
		flags = cqe->flags;
		io_uring_cqe_seen(&rx->ring, cqe);
		n++;
		rx->completions++;
		if (op && op->fn)
			op->fn(op, res, flags);
	}
	return n;
}

int rx_submit(struct rx *rx)
{
	int ret;

	if (!rx->queued)
		return 0;
	ret = io_uring_submit(&rx->ring);
	if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
		return ret;
	if (ret > 0)
		rx->queued -= (unsigned)ret < rx->queued ? (unsigned)ret :
			      rx->queued;
	return 0;
}

struct io_uring_sqe *rx_sqe(struct rx *rx, struct rx_op *op)
{
	struct io_uring_sqe *sqe;

	while (!(sqe = io_uring_get_sqe(&rx->ring))) {
		/* SQ full: push it to the kernel; if the kernel cannot take
		 * more right now (CQ overflow backlog), reap completions */
		io_uring_submit(&rx->ring);
		rx->queued = 0;
		sqe = io_uring_get_sqe(&rx->ring);
		if (sqe)
			break;
		if (!rx_dispatch(rx)) {
			struct io_uring_cqe *cqe;

			io_uring_wait_cqe(&rx->ring, &cqe);
		}
	}
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)op);
	rx->queued++;
	return sqe;
}

int rx_reserve(struct rx *rx, unsigned n)
{
	if (io_uring_sq_space_left(&rx->ring) >= n)
		return 0;
	io_uring_submit(&rx->ring);
	rx->queued = 0;
	return io_uring_sq_space_left(&rx->ring) >= n ? 0 : -EBUSY;
}

int rx_run(struct rx *rx, uint64_t timeout_ns)
{
	struct io_uring_cqe *cqe;
	int ret;

	if (timeout_ns == 0) {
		ret = rx_submit(rx);
		if (ret < 0)
			return ret;
		return rx_dispatch(rx);
	}
	if (io_uring_cq_ready(&rx->ring) && rx_submit(rx) == 0)
		return rx_dispatch(rx);
	if (timeout_ns == RX_FOREVER) {
		ret = io_uring_submit_and_wait(&rx->ring, 1);
	} else {
		struct __kernel_timespec ts = {
			.tv_sec = (long long)(timeout_ns / 1000000000ull),
			.tv_nsec = (long long)(timeout_ns % 1000000000ull),
		};

		ret = io_uring_submit_and_wait_timeout(&rx->ring, &cqe, 1,
						       &ts, NULL);
	}
	rx->queued = 0;
	if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN &&
	    ret != -EBUSY)
		return ret;
	return rx_dispatch(rx);
}

static uint64_t rx_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int rx_run_until(struct rx *rx, const int *done, uint64_t timeout_ns)
{
	uint64_t end = rx_now_ns() + timeout_ns;

	if (end < timeout_ns)
		end = UINT64_MAX - 1;
	while (!*done) {
		uint64_t now = rx_now_ns();
		int ret;

		if (now >= end)
			return -ETIMEDOUT;
		ret = rx_run(rx, end - now);
		if (ret < 0)
			return ret;
	}
	return 0;
}

int rx_futex_wait(struct rx *rx, struct rx_op *op, uint32_t *uaddr,
		  uint32_t val)
{
	struct io_uring_sqe *sqe;

	if (!rx->has_futex)
		return -ENOSYS;
	sqe = rx_sqe(rx, op);
	io_uring_prep_rw(RX_OP_FUTEX_WAIT, sqe, RX_FUTEX2_SIZE_U32, uaddr, 0,
			 val);
	sqe->addr3 = RX_FUTEX_MATCH_ANY;
	sqe->rw_flags = 0;		/* futex_flags: reserved, must be 0 */
	return 0;
}
