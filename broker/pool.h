/* pool.h - worker threads for the CPU-heavy part of a send (prefix pool_).
 *
 * The broker is one thread on one io_uring loop; encoding a batch and
 * compressing its body is the one piece of its work that is pure CPU on
 * memory nobody else touches meanwhile, so `sink_threads` threads take it
 * (PRODUCT.md section 9: compression must be able to use more than one
 * core). A job is submitted by the broker thread; a pool thread runs
 * job->work(); the broker thread learns of the end through an eventfd
 * read queued on its reactor and calls job->done() from that completion,
 * so everything but work() stays single-threaded.
 *
 * Who touches what: between pool_submit() and done() (or
 * pool_reclaim()), the job and whatever work() reads or writes belong to
 * the pool thread; the broker thread must leave them alone. The pool's
 * own lists are under its mutex.
 */
#ifndef OBX_POOL_H
#define OBX_POOL_H

#include "reactor.h"

struct pool;

struct pool_job {
	/* on a pool thread; *tctx is that thread's own context (NULL at
	 * first: work() makes it, pool_new's ctx_free frees it when the
	 * thread ends), for state worth keeping warm per thread */
	void (*work)(struct pool_job *j, void **tctx);
	void (*done)(struct pool_job *j);   /* on the broker thread */
	struct pool_job *next;              /* pool's lists, under its lock */
	int state;                          /* POOL_J_*, under the lock */
};

enum { POOL_J_IDLE, POOL_J_QUEUED, POOL_J_RUNNING, POOL_J_DONE };

/* n threads (1..POOL_MAX) completing through rx; ctx_free (may be NULL)
 * frees a thread's context when it ends. NULL + errno. */
#define POOL_MAX 64
struct pool *pool_new(struct rx *rx, int n, void (*ctx_free)(void *ctx));
/* Joins the threads. Jobs still queued are not run, done() is not called
 * for anything: reclaim them first. */
void pool_free(struct pool *p);

/* Queues j (idle) for a pool thread; done(j) follows on the broker
 * thread. 0, or -EBUSY when j is not idle. */
int pool_submit(struct pool *p, struct pool_job *j);

/* Takes j back without done(): waits while work() runs, removes it from
 * the queue or the finished list. 1: work() ran, 0: it did not (or j was
 * idle). For a sink that stops or closes. */
int pool_reclaim(struct pool *p, struct pool_job *j);

int pool_threads(const struct pool *p);

#endif
