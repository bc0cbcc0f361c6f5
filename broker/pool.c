/* pool.c - worker threads for encode + compress (see pool.h).
 *
 * Who writes what: the broker thread appends to `queue` (pool_submit) and
 * empties `fin` (the eventfd completion, pool_reclaim); pool threads take
 * from `queue` and append to `fin`. Both lists and every job's `state`
 * are under `mu`; the mutex is also what orders a job's data: work()'s
 * writes happen before its unlock that puts the job on `fin`, and the
 * broker thread reads them after its lock that takes it off (the same
 * for the broker's writes before pool_submit and the thread's reads).
 * The eventfd only says "look at fin"; a write to it may be merged with
 * others or arrive for a list already emptied by pool_reclaim - the
 * completion handles an empty list.
 */
#define _GNU_SOURCE
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"

struct pool {
	struct rx *rx;
	struct rx_op op;            /* the eventfd read */
	uint64_t ev;                /* its buffer */
	int efd;
	int read_out;               /* the read is queued on the reactor */
	int read_gone;              /* its last completion came (pool_free) */
	int stopping;               /* under mu */
	pthread_mutex_t mu;
	pthread_cond_t work_cv;     /* queue not empty, or stopping */
	pthread_cond_t fin_cv;      /* a job finished (pool_reclaim) */
	struct pool_job *queue, **queue_tail;
	struct pool_job *fin, **fin_tail;
	void (*ctx_free)(void *ctx);
	int n;
	pthread_t th[POOL_MAX];
};

static void pool_arm(struct pool *p);

/* The eventfd read completed: every finished job's done(), in order,
 * one at a time (a done() may reclaim or submit any job). */
static void pool_on_event(struct rx_op *op, int res, uint32_t flags)
{
	struct pool *p = (struct pool *)((char *)op -
					 offsetof(struct pool, op));

	(void)flags;
	p->read_out = 0;
	if (p->stopping) {
		p->read_gone = 1;   /* pool_free() waits for this */
		return;
	}
	(void)res;
	pool_arm(p);
	for (;;) {
		struct pool_job *j;

		pthread_mutex_lock(&p->mu);
		j = p->fin;
		if (j) {
			p->fin = j->next;
			if (!p->fin)
				p->fin_tail = &p->fin;
			j->next = NULL;
			j->state = POOL_J_IDLE;
		}
		pthread_mutex_unlock(&p->mu);
		if (!j)
			break;
		j->done(j);
	}
}

static void pool_arm(struct pool *p)
{
	struct io_uring_sqe *sqe;

	if (p->read_out)
		return;
	sqe = rx_sqe(p->rx, &p->op);
	io_uring_prep_read(sqe, p->efd, &p->ev, sizeof(p->ev), 0);
	p->read_out = 1;
}

static void *pool_thread(void *arg)
{
	struct pool *p = arg;
	static const uint64_t one = 1;
	void *ctx = NULL;           /* this thread's, for work() */

	pthread_mutex_lock(&p->mu);
	for (;;) {
		struct pool_job *j;
		int was_empty;

		while (!p->queue && !p->stopping)
			pthread_cond_wait(&p->work_cv, &p->mu);
		if (p->stopping)
			break;
		j = p->queue;
		p->queue = j->next;
		if (!p->queue)
			p->queue_tail = &p->queue;
		j->next = NULL;
		j->state = POOL_J_RUNNING;
		pthread_mutex_unlock(&p->mu);
		j->work(j, &ctx);
		pthread_mutex_lock(&p->mu);
		j->state = POOL_J_DONE;
		was_empty = !p->fin;
		*p->fin_tail = j;
		p->fin_tail = &j->next;
		pthread_cond_broadcast(&p->fin_cv);
		/* one wake-up per burst: the reader takes the whole list */
		if (was_empty && write(p->efd, &one, sizeof(one)) < 0)
			log_error("sink_threads: eventfd: %s", strerror(errno));
	}
	pthread_mutex_unlock(&p->mu);
	if (ctx && p->ctx_free)
		p->ctx_free(ctx);
	return NULL;
}

struct pool *pool_new(struct rx *rx, int n, void (*ctx_free)(void *ctx))
{
	struct pool *p;
	sigset_t all, old;
	int i, err;

	if (n < 1 || n > POOL_MAX) {
		errno = EINVAL;
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->rx = rx;
	p->ctx_free = ctx_free;
	p->op.fn = pool_on_event;
	p->queue_tail = &p->queue;
	p->fin_tail = &p->fin;
	/* blocking: read through io_uring only, which waits by polling it.
	 * With O_NONBLOCK a kernel may complete the read at once with
	 * -EAGAIN (io_uring honours the flag on some versions), and the
	 * re-arm in pool_on_event() would spin. Pool threads only add 1:
	 * their write() never blocks (the counter cannot near 2^64 - 1). */
	p->efd = eventfd(0, EFD_CLOEXEC);
	if (p->efd < 0) {
		err = errno;
		free(p);
		errno = err;
		return NULL;
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->work_cv, NULL);
	pthread_cond_init(&p->fin_cv, NULL);
	/* the threads start with every signal blocked: signals are the
	 * broker thread's (its signalfd); a SIGTERM taken by a pool thread
	 * would kill the process with the default action */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (i = 0; i < n; i++) {
		err = pthread_create(&p->th[i], NULL, pool_thread, p);
		if (err) {
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			p->n = i;
			pool_free(p);
			errno = err;
			return NULL;
		}
		pthread_setname_np(p->th[i], "outboxd-sink");
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	p->n = n;
	pool_arm(p);
	return p;
}

void pool_free(struct pool *p)
{
	int i;

	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stopping = 1;
	pthread_cond_broadcast(&p->work_cv);
	pthread_mutex_unlock(&p->mu);
	for (i = 0; i < p->n; i++)
		pthread_join(p->th[i], NULL);
	if (p->read_out) {
		/* the reactor must not complete into freed memory: cancel
		 * the read and wait for its completion */
		io_uring_prep_cancel(rx_sqe(p->rx, NULL), &p->op, 0);
		if (rx_run_until(p->rx, &p->read_gone, 2000000000ull) < 0) {
			/* left allocated: the ring may still write p->ev */
			log_error("sink_threads: the eventfd read did not "
				  "end");
			return;
		}
	}
	close(p->efd);
	pthread_cond_destroy(&p->fin_cv);
	pthread_cond_destroy(&p->work_cv);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

int pool_submit(struct pool *p, struct pool_job *j)
{
	pthread_mutex_lock(&p->mu);
	if (j->state != POOL_J_IDLE) {
		pthread_mutex_unlock(&p->mu);
		return -EBUSY;
	}
	j->state = POOL_J_QUEUED;
	j->next = NULL;
	*p->queue_tail = j;
	p->queue_tail = &j->next;
	pthread_cond_signal(&p->work_cv);
	pthread_mutex_unlock(&p->mu);
	return 0;
}

/* unlinks j from the list at *head (tail pointer kept right) */
static void pool_unlink(struct pool_job **head, struct pool_job ***tail,
			struct pool_job *j)
{
	struct pool_job **pp, *prev = NULL;

	for (pp = head; *pp; prev = *pp, pp = &(*pp)->next)
		if (*pp == j) {
			*pp = j->next;
			if (!*pp)
				*tail = prev ? &prev->next : head;
			j->next = NULL;
			return;
		}
}

int pool_reclaim(struct pool *p, struct pool_job *j)
{
	int ran = 0;

	pthread_mutex_lock(&p->mu);
	while (j->state == POOL_J_RUNNING)
		pthread_cond_wait(&p->fin_cv, &p->mu);
	if (j->state == POOL_J_QUEUED) {
		pool_unlink(&p->queue, &p->queue_tail, j);
	} else if (j->state == POOL_J_DONE) {
		pool_unlink(&p->fin, &p->fin_tail, j);
		ran = 1;
	}
	j->state = POOL_J_IDLE;
	pthread_mutex_unlock(&p->mu);
	return ran;
}

int pool_threads(const struct pool *p)
{
	return p ? p->n : 0;
}
