/* test_reactor.c - the io_uring reactor (broker/reactor.c).
 *
 * Dispatch to rx_op callbacks, the wait timeout, and the futex wait on a
 * shared (non-private) word woken by ANOTHER process with the classic
 * futex(FUTEX_WAKE) syscall through its own mapping of a POSIX shm
 * object - the way producers wake the broker.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "reactor.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

struct cnt_op {
	struct rx_op op;
	int calls;
	int res;
};

static void cnt_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct cnt_op *c = (struct cnt_op *)op;

	c->calls++;
	c->res = res;
}

static void t_nop_dispatch(void)
{
	struct cnt_op a = { .op.fn = cnt_fn }, b = { .op.fn = cnt_fn };
	struct rx rx;
	int n;

	CU_ASSERT_EQUAL_FATAL(rx_init(&rx, 8), 0);
	io_uring_prep_nop(rx_sqe(&rx, &a.op));
	io_uring_prep_nop(rx_sqe(&rx, NULL));	/* user_data 0: ignored */
	io_uring_prep_nop(rx_sqe(&rx, &b.op));
	CU_ASSERT_EQUAL(rx.queued, 3);
	n = 0;
	while (n < 3) {
		int r = rx_run(&rx, 1000000000ull);

		CU_ASSERT_FATAL(r >= 0);
		n += r;
	}
	CU_ASSERT_EQUAL(n, 3);
	CU_ASSERT_EQUAL(a.calls, 1);
	CU_ASSERT_EQUAL(b.calls, 1);
	CU_ASSERT_EQUAL(a.res, 0);
	CU_ASSERT_EQUAL(rx.completions, 3);
	rx_fini(&rx);
}

/* more SQEs than the SQ holds: rx_sqe submits by itself */
static void t_sq_overflow(void)
{
	struct cnt_op ops[40];
	struct rx rx;
	int i, total = 0;

	CU_ASSERT_EQUAL_FATAL(rx_init(&rx, 4), 0);
	for (i = 0; i < 40; i++) {
		ops[i].op.fn = cnt_fn;
		ops[i].calls = 0;
		io_uring_prep_nop(rx_sqe(&rx, &ops[i].op));
	}
	while (total < 40) {
		int r = rx_run(&rx, 1000000000ull);

		CU_ASSERT_FATAL(r > 0);
		total += r;
	}
	for (i = 0; i < 40; i++)
		CU_ASSERT_EQUAL(ops[i].calls, 1);
	rx_fini(&rx);
}

static void t_timeout(void)
{
	struct rx rx;
	uint64_t t0, dt;
	int done = 0;

	CU_ASSERT_EQUAL_FATAL(rx_init(&rx, 8), 0);
	t0 = tu_now_ns();
	CU_ASSERT_EQUAL(rx_run(&rx, 30000000ull), 0);	/* 30 ms, nothing */
	dt = tu_now_ns() - t0;
	CU_ASSERT(dt >= 25000000ull);
	CU_ASSERT(dt < 1000000000ull);
	CU_ASSERT_EQUAL(rx_run(&rx, 0), 0);		/* poll */
	CU_ASSERT_EQUAL(rx_run_until(&rx, &done, 20000000ull), -ETIMEDOUT);
	rx_fini(&rx);
}

struct fx_op {
	struct rx_op op;
	int done;
	int res;
	uint64_t when;
};

static void fx_fn(struct rx_op *op, int res, uint32_t flags)
{
	struct fx_op *f = (struct fx_op *)op;

	f->done = 1;
	f->res = res;
	f->when = tu_now_ns();
}

static void t_futex_value_mismatch(void)
{
	struct fx_op f = { .op.fn = fx_fn };
	uint32_t word = 5;
	struct rx rx;

	CU_ASSERT_EQUAL_FATAL(rx_init(&rx, 8), 0);
	if (!rx.has_futex) {
		CU_ASSERT_EQUAL(rx_futex_wait(&rx, &f.op, &word, 4), -ENOSYS);
		printf("skipped: kernel without IORING_OP_FUTEX_WAIT\n");
		rx_fini(&rx);
		return;
	}
	CU_ASSERT_EQUAL(rx_futex_wait(&rx, &f.op, &word, 4), 0);
	CU_ASSERT_EQUAL(rx_run_until(&rx, &f.done, 2000000000ull), 0);
	CU_ASSERT_EQUAL(f.res, -EAGAIN);
	rx_fini(&rx);
}

/* The waker is another process with its own mapping (another virtual
 * address) of the same shm object: only a shared futex key matches. */
static void t_futex_cross_process(void)
{
	const char *name = tu_shm_name("rxfutex");
	struct fx_op f = { .op.fn = fx_fn };
	_Atomic uint32_t *word;
	struct rx rx;
	uint64_t t0;
	pid_t pid;
	int fd, st;

	CU_ASSERT_EQUAL_FATAL(rx_init(&rx, 8), 0);
	if (!rx.has_futex) {
		printf("skipped: kernel without IORING_OP_FUTEX_WAIT\n");
		CU_ASSERT_EQUAL(rx_futex_wait(&rx, &f.op, NULL, 0), -ENOSYS);
		rx_fini(&rx);
		return;
	}
	fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL_FATAL(ftruncate(fd, 4096), 0);
	word = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CU_ASSERT_FATAL(word != MAP_FAILED);
	close(fd);
	atomic_store(word, 0);

	CU_ASSERT_EQUAL_FATAL(rx_futex_wait(&rx, &f.op, (uint32_t *)word, 0),
			      0);
	CU_ASSERT_EQUAL(rx_submit(&rx), 0);
	t0 = tu_now_ns();
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		_Atomic uint32_t *w;
		int cfd = shm_open(name, O_RDWR, 0);
		long woken = 0;
		int i;

		if (cfd < 0)
			_exit(2);
		/* a second mapping first, so that w != word */
		w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0);
		if (w == MAP_FAILED)
			_exit(3);
		usleep(150000);
		atomic_store(w, 1);
		/* classic futex(2), NOT private: the broker's wakers */
		for (i = 0; i < 50 && woken == 0; i++) {
			woken = syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, 1,
					NULL, NULL, 0);
			if (!woken)
				usleep(10000);
		}
		_exit(woken == 1 ? 0 : 4);
	}
	CU_ASSERT_EQUAL(rx_run_until(&rx, &f.done, 5000000000ull), 0);
	CU_ASSERT_EQUAL(waitpid(pid, &st, 0), pid);
	CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CU_ASSERT_EQUAL(f.done, 1);
	CU_ASSERT_EQUAL(f.res, 0);		/* woken, not -EAGAIN */
	CU_ASSERT(f.when - t0 >= 100000000ull);	/* it really waited */
	CU_ASSERT_EQUAL(atomic_load(word), 1);
	munmap((void *)word, 4096);
	shm_unlink(name);
	rx_fini(&rx);
}

static int add_reactor(void)
{
	CU_pSuite s = CU_add_suite("reactor", NULL, NULL);

	if (!s ||
	    !CU_add_test(s, "nop_dispatch", t_nop_dispatch) ||
	    !CU_add_test(s, "sq_overflow", t_sq_overflow) ||
	    !CU_add_test(s, "timeout", t_timeout) ||
	    !CU_add_test(s, "futex_value_mismatch", t_futex_value_mismatch) ||
	    !CU_add_test(s, "futex_cross_process", t_futex_cross_process))
		return -1;
	return 0;
}

TEST_MAIN(add_reactor)
