/* main.c - outboxd: command line, start-up, the event loop, reload and
 * shutdown. See broker.h for the shape of the loop and docs/DESIGN.md for
 * the lifecycle.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "broker.h"
#include "http.h"
#include "slots.h"

#define HOUSEKEEPING_NS   100000000ull   /* reap, stats: every 100 ms */
#define BEAT_NS           1000000000ull

static void usage(FILE *f)
{
	fprintf(f,
		"usage: outboxd [-c FILE]            run in the foreground\n"
		"       outboxd --check -c FILE      validate a config file\n"
		"       outboxd --print-config [-c FILE]\n"
		"Without -c the built-in default runs: ring /dev/shm/outbox, "
		"spool ./outbox-spool,\nsink 'default' = file "
		"./outbox-out.ndjson.\n");
}

/* ---- signals ------------------------------------------------------------ */

static void sig_arm(struct broker *b);

static void sig_done(struct rx_op *op, int res, uint32_t flags)
{
	struct broker *b = (struct broker *)((char *)op -
					     offsetof(struct broker, sig_op));

	(void)flags;
	if (res == (int)sizeof(b->si)) {
		switch (b->si.ssi_signo) {
		case SIGTERM:
		case SIGINT:
			if (!b->stopping) {
				log_info("signal %d: draining the ring into "
					 "the spool, delivering for up to "
					 "%llu ms", b->si.ssi_signo,
					 (unsigned long long)
					 b->cfg.shutdown_timeout_ms);
				b->stopping = 1;
				b->stop_deadline = log_mono_ns() +
					b->cfg.shutdown_timeout_ms * 1000000ull;
				ops_stopping(b);
			} else {
				log_warn("second signal: exiting now");
				b->stop_deadline = 0;
			}
			break;
		case SIGHUP:
			b->reload = 1;
			break;
		}
	}
	sig_arm(b);
}

static void sig_arm(struct broker *b)
{
	struct io_uring_sqe *sqe;

	b->sig_op.fn = sig_done;
	sqe = rx_sqe(&b->rx, &b->sig_op);
	io_uring_prep_read(sqe, b->sigfd, &b->si, sizeof(b->si), 0);
}

static int sig_setup(struct broker *b)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -errno;
	signal(SIGPIPE, SIG_IGN);
	b->sigfd = signalfd(-1, &set, SFD_CLOEXEC);
	if (b->sigfd < 0)
		return -errno;
	sig_arm(b);
	return 0;
}

/* ---- ring wake-up --------------------------------------------------------- */

static void futex_done(struct rx_op *op, int res, uint32_t flags)
{
	struct broker *b = (struct broker *)((char *)op -
					     offsetof(struct broker, futex_op));

	(void)flags;
	b->futex_armed = 0;
	if (res == -ECANCELED)
		return;
	/* a producer's FUTEX_WAKE, or (-EAGAIN) its exchange landed
	 * between our arming and the wait being queued */
	b->wakeups++;
	b->look_now = 1;
}

/* Before a sleep: arm the wake word for a claim past cursor + mark (C5);
 * one futex wait stays queued in the kernel until a producer wakes it,
 * however often we arm and disarm. 1: armed, 0: the ring already holds
 * that much (look now), -1: no io_uring futex (look on a timer only). */
static int futex_sleep_arm(struct broker *b, uint64_t mark)
{
	if (!b->rx.has_futex)
		return -1;
	if (!ring_cons_arm(&b->rc, mark))
		return 0;               /* data arrived meanwhile */
	if (!b->futex_armed) {
		b->futex_op.fn = futex_done;
		if (rx_futex_wait(&b->rx, &b->futex_op,
				  (uint32_t *)&b->seg.hdr->wake, 1) < 0) {
			ring_cons_disarm(&b->rc);
			return -1;
		}
		b->futex_armed = 1;
	}
	return 1;
}

/* ---- start-up ------------------------------------------------------------- */

static int broker_open_sinks(struct broker *b)
{
	int i;

	b->default_sink = -1;
	for (i = 0; i < b->cfg.nsinks; i++) {
		struct spool_stats ss;
		struct sink *s = sink_new(b, &b->cfg.sinks[i], i);

		if (!s)
			return -errno;
		b->sinks[b->nsinks++] = s;
		stats_restore_sink(b, s);
		if (strcmp(s->cfg.name, "default") == 0)
			b->default_sink = i;
		spool_get_stats(s->spool, &ss);
		if (ss.recovered || ss.corrupt || ss.truncated_bytes)
			log_info("sink %s: spool recovered %llu records "
				 "(%llu waiting), %llu damaged skipped, %llu "
				 "torn bytes cut", s->cfg.name,
				 (unsigned long long)ss.recovered,
				 (unsigned long long)ss.queued_events,
				 (unsigned long long)ss.corrupt,
				 (unsigned long long)ss.truncated_bytes);
	}
	if (b->default_sink < 0)
		b->default_sink = 0;
	return 0;
}

static void broker_publish_identity(struct broker *b)
{
	uint64_t start = 0;

	slot_proc_stat(getpid(), &start, NULL);
	atomic_store(&b->seg.cons->broker_start, start);
	atomic_store(&b->seg.cons->broker_pid, (uint32_t)getpid());
	atomic_store(&b->seg.cons->broker_boot_ns, log_real_ns());
	atomic_store(&b->seg.cons->broker_beat_ns, log_real_ns());
	atomic_fetch_add(&b->seg.cons->config_gen, 1);
}

/* A live producer held a ring claim past stall_timeout (ring.c counts
 * it): one line per minute at most, with the pid, whatever the count. */
static void broker_on_stall(void *arg, const struct ring_stall_info *si)
{
	struct broker *b = arg;
	char what[96];

	if (si->killed == 1)
		snprintf(what, sizeof(what), "killed it (stall_action = kill)");
	else if (si->killed < 0)
		snprintf(what, sizeof(what), "could not kill it: %s",
			 strerror(-si->killed));
	else
		snprintf(what, sizeof(what), "its space stays reserved; "
			 "records behind it are delivered");
	log_rl(&b->rl_stall, LOG_WARN, "ring: producer pid %u (slot %u) has "
	       "held a claim for %.1f s without committing; %s", si->pid,
	       si->slot, (double)si->held_ns / 1e9, what);
}

static void broker_ring_settings(struct broker *b)
{
	b->rc.stall_timeout = b->cfg.stall_timeout_ms * 1000000ull;
	b->rc.stall_kill = b->cfg.stall_action == STALL_KILL;
	b->rc.on_stall = broker_on_stall;
	b->rc.stall_arg = b;
}

/* Housekeeping: the object truncated or its header overwritten under
 * us (by anyone with the group's write access) is repaired in place,
 * counted and logged; producers keep their mappings. */
static void broker_check_segment(struct broker *b)
{
	char why[256];
	int rc = seg_check(&b->seg, why, sizeof(why));

	if (rc == 0)
		return;
	if (rc < 0) {
		log_rl(&b->rl_seg, LOG_ERROR, "segment /dev/shm/%s: check "
		       "failed: %s", b->seg.name, strerror(-rc));
		return;
	}
	b->seg_repairs++;
	ring_cons_repair(&b->rc);
	broker_publish_identity(b);
	stats_publish(b);
	log_rl(&b->rl_seg, LOG_WARN, "segment /dev/shm/%s damaged: %s",
	       b->seg.name, why);
}

static void spool_log(void *arg, int level, const char *msg)
{
	(void)arg;
	log_msg((enum cfg_log_level)level, "%s", msg);
}

static int broker_start(struct broker *b)
{
	struct seg_geom g = {
		.ring_size = b->cfg.ring_size,
		.max_record = (uint32_t)b->cfg.max_record,
		.nslots = b->cfg.producer_slots,
	};
	struct spool_set_opts so = {
		.dir = b->cfg.spool_dir,
		.max_bytes = b->cfg.spool_max,
		.segment_size = b->cfg.segment_size,
		.full = b->cfg.spool_full,
		.durability = b->cfg.durability,
		.sync_interval_ms = b->cfg.sync_interval_ms,
		.tail_buffer = 16u << 20,
		.log = spool_log,
		.log_arg = NULL,
	};
	uint64_t ring_pos;
	char why[512];
	int created, rc;

	b->rl_invalid = (struct log_rl)LOG_RL_INIT(60);
	b->rl_unknown = (struct log_rl)LOG_RL_INIT(60);
	b->rl_spool = (struct log_rl)LOG_RL_INIT(10);
	b->rl_ring = (struct log_rl)LOG_RL_INIT(60);
	b->rl_stall = (struct log_rl)LOG_RL_INIT(60);
	b->rl_seg = (struct log_rl)LOG_RL_INIT(1);   /* rare, each one matters */
	env_reader_init(&b->er);
	rc = rx_init(&b->rx, 512);
	if (rc < 0) {
		log_error("io_uring: %s", strerror(-rc));
		return rc;
	}
	rc = seg_open_broker(&b->seg, b->cfg.shm, &g, b->cfg.shm_mode,
			     &created, why, sizeof(why));
	if (rc < 0) {
		log_error("%s", why);
		return rc;
	}
	if (created == 2) {
		log_warn("%s", why);      /* foreign or damaged, moved aside */
		b->segs_replaced++;
	}
	rc = seg_guard(&b->seg);
	if (rc < 0)
		log_warn("SIGBUS guard: %s", strerror(-rc));
	rc = ring_cons_init(&b->rc, &b->seg);
	if (rc < 0)
		return rc;
	broker_ring_settings(b);
	if (!created) {
		stats_restore(b);
		log_info("re-attached to /dev/shm/%s: %llu bytes waiting in "
			 "the ring", b->seg.name, (unsigned long long)
			 (atomic_load(&b->seg.hdr->tail) - b->rc.head));
	}
	/* the spool acts on a drain journal of this very ring */
	so.ring_id = b->seg.segment_id;
	b->spool = spool_set_new(&b->rx, &so);
	if (!b->spool) {
		log_error("spool %s: %s", b->cfg.spool_dir, strerror(errno));
		return -errno;
	}
	rc = persist_open(&b->persist, b->cfg.spool_dir, &b->cfg);
	if (rc < 0) {
		log_error("delivery state: %s", strerror(-rc));
		return rc;
	}
	rc = broker_open_sinks(b);
	if (rc < 0)
		return rc;
	/* after a crash: the ring records the spool already has are passed
	 * over, the ring-tied counters continue from the journal */
	if (!created && stats_restore_mark(b, &ring_pos))
		drain_catch_up(b, ring_pos);
	rc = sig_setup(b);
	if (rc < 0) {
		log_error("signals: %s", strerror(-rc));
		return rc;
	}
	broker_publish_identity(b);
	stats_publish(b);
	log_info("started: ring /dev/shm/%s (%llu MiB, %s), spool %s "
		 "(durability %s), %d sink(s)%s", b->seg.name,
		 (unsigned long long)(b->cfg.ring_size >> 20),
		 created ? "new" : "existing", b->cfg.spool_dir,
		 b->cfg.durability == DUR_NONE ? "none" :
		 b->cfg.durability == DUR_WRITE ? "write" : "fdatasync",
		 b->nsinks, b->rx.has_futex ? "" :
		 " (no io_uring futex: the ring is looked at every "
		 "drain_latency, idle or not)");
	return 0;
}

/* ---- reload ---------------------------------------------------------------- */

static void broker_reload(struct broker *b)
{
	struct cfg n;
	char why[256];
	int errs, i;

	b->reload = 0;
	if (!b->cfg.file) {
		log_warn("SIGHUP: running the built-in default, nothing to "
			 "reload");
		return;
	}
	errs = cfg_load(&n, b->cfg.file, stderr);
	if (errs != 0) {
		log_error("reload of %s refused (%d error(s) above); the "
			  "running configuration stays", b->cfg.file, errs);
		cfg_free(&n);
		return;
	}
	if (cfg_needs_restart(&b->cfg, &n, why, sizeof(why))) {
		log_error("reload of %s refused: %s needs a restart; the "
			  "running configuration stays", b->cfg.file, why);
		cfg_free(&n);
		return;
	}
	/* read at every look: takes effect at once */
	b->cfg.drain_latency_ms = n.drain_latency_ms;
	/* known sinks take their new settings once idle; new ones open */
	for (i = 0; i < b->nsinks; i++) {
		int k = cfg_sink_find(&n, b->sinks[i]->cfg.name);

		if (k < 0) {
			b->sinks[i]->removed = 1;
			b->sinks[i]->reconfigure = 1;
			continue;
		}
		/* named again: one an earlier reload removed, still busy
		 * (it goes only once idle), stays */
		b->sinks[i]->removed = 0;
		b->sinks[i]->next_cfg = n.sinks[k];
		b->sinks[i]->reconfigure = 1;
	}
	for (i = 0; i < n.nsinks; i++) {
		int j, found = 0;

		for (j = 0; j < b->nsinks; j++)
			if (!strcmp(b->sinks[j]->cfg.name, n.sinks[i].name))
				found = 1;
		if (!found && b->nsinks < CFG_MAX_SINKS) {
			struct sink *s = sink_new(b, &n.sinks[i], b->nsinks);

			if (!s)
				continue;
			b->sinks[b->nsinks++] = s;
			/* one put back: its spool's checkpoint holds its
			 * counters, as at start-up */
			stats_restore_sink(b, s);
		}
	}
	cfg_free(&b->cfg);
	b->cfg = n;
	log_set_level(b->cfg.log_level);
	broker_ring_settings(b);
	for (i = 0; i < b->nsinks; i++)
		if (!strcmp(b->sinks[i]->cfg.name, "default"))
			b->default_sink = i;
	atomic_fetch_add(&b->seg.cons->config_gen, 1);
	log_info("reloaded %s: %d sink(s)", b->cfg.file, b->cfg.nsinks);
}

/* Applies pending reconfigurations of idle sinks; drops removed ones. */
static void broker_settle_sinks(struct broker *b)
{
	int i, j;

	for (i = 0; i < b->nsinks; i++) {
		struct sink *s = b->sinks[i];

		if (!s->reconfigure || s->inflight)
			continue;
		if (s->removed) {
			struct spool_stats ss;

			if (spool_pending(s->spool)) {
				/* records taken for it wait for their
				 * (deferred) flush, in memory only: the
				 * flush at once (drain_tick, just after),
				 * the sink goes once it is on its way */
				b->flush_defer_ns = 0;
				continue;
			}
			spool_get_stats(s->spool, &ss);
			log_warn("sink %s removed from the config; %llu "
				 "undelivered events stay in its spool",
				 s->cfg.name,
				 (unsigned long long)ss.queued_events);
			sink_free(s);
			for (j = i; j < b->nsinks - 1; j++) {
				b->sinks[j] = b->sinks[j + 1];
				b->sinks[j]->idx = j;
			}
			b->nsinks--;
			i--;
			continue;
		}
		sink_reconfigure(s, &s->next_cfg);
	}
	for (i = 0; i < b->nsinks; i++)
		if (!strcmp(b->sinks[i]->cfg.name, "default"))
			b->default_sink = i;
}

/* ---- the loop --------------------------------------------------------------- */

static int broker_all_idle(struct broker *b)
{
	int i;

	if (!drain_idle(b))
		return 0;
	for (i = 0; i < b->nsinks; i++) {
		struct sink *s = b->sinks[i];

		if (s->disabled || sink_idle(s))
			continue;
		if (s->ops->parked && s->ops->parked(s))
			continue;
		return 0;
	}
	return 1;
}

static uint64_t min64(uint64_t a, uint64_t c)
{
	return a < c ? a : c;
}

/* The broker's own limiters (not the sinks', which flush theirs): what
 * one held back is told in a line once its period is over, and at stop
 * (force), so a suppressed line is never lost with its count. */
static void broker_flush_logs(struct broker *b, uint64_t now, int force)
{
	struct { struct log_rl *rl; const char *what; } l[] = {
		{ &b->rl_invalid, "invalid ring records dropped" },
		{ &b->rl_unknown, "events for unknown sinks routed to the "
				  "default sink" },
		{ &b->rl_spool, "spool errors" },
		{ &b->rl_ring, "ring warnings" },
		{ &b->rl_stall, "stalled producer claims" },
		{ &b->rl_seg, "segment checks" },
	};
	uint64_t lines, n, due;
	size_t i;

	for (i = 0; i < sizeof(l) / sizeof(l[0]); i++) {
		due = log_rl_due(l[i].rl);
		if (!due || (!force && now < due))
			continue;
		if (log_rl_take(l[i].rl, &lines, &n))
			log_warn("%llu more log lines about %s were held "
				 "back by the rate limit",
				 (unsigned long long)lines, l[i].what);
	}
}

/* How early housekeeping may run: at a trickle the loop wakes for a look
 * every drain_latency anyway, and a housekeeping tick of its own was 10
 * more wake-ups a second (a context switch each, for a scan of the slots
 * and the stats page). Due within this much, it rides on the wake-up at
 * hand; the sleep still ends at its due time when nothing else comes
 * sooner (idle, or drain_latency above the slack). */
static uint64_t broker_hk_slack(const struct broker *b)
{
	uint64_t lat = b->cfg.drain_latency_ms * 1000000ull;

	return lat < HOUSEKEEPING_NS / 2 ? lat : HOUSEKEEPING_NS / 2;
}

static void broker_housekeeping(struct broker *b, uint64_t now)
{
	uint64_t early = now + broker_hk_slack(b);

	broker_flush_logs(b, now, 0);
	if (early >= b->next_reap) {
		broker_check_segment(b);
		ring_reap(&b->rc);
		b->next_reap = now + HOUSEKEEPING_NS;
	}
	if (early >= b->next_stats) {
		stats_publish(b);
		b->next_stats = now + HOUSEKEEPING_NS;
	}
	if (now >= b->next_beat) {
		atomic_store(&b->seg.cons->broker_beat_ns, log_real_ns());
		b->next_beat = now + BEAT_NS;
	}
}

static int broker_loop(struct broker *b)
{
	int drained_at_stop = 0;

	for (;;) {
		uint64_t now = log_mono_ns(), next, t;
		uint64_t mark = DRAIN_NO_WAKE;
		int i, rc;

		if (b->reload) {
			ops_reloading(b);
			broker_reload(b);
			ops_reloaded(b);
		}
		broker_settle_sinks(b);
		next = UINT64_MAX;
		if (!b->stopping || !drained_at_stop) {
			next = drain_tick(b, now);
			mark = b->wake_mark;
			if (b->stopping && drain_idle(b))
				drained_at_stop = 1;
		}
		for (i = 0; i < b->nsinks; i++)
			next = min64(next, sink_tick(b->sinks[i], now));
		broker_housekeeping(b, now);
		next = min64(next, ops_tick(b, now));   /* watchdog, /health */
		if (b->stopping && ((drained_at_stop && broker_all_idle(b)) ||
				    now >= b->stop_deadline))
			break;
		persist_save(b, now, 0);
		next = min64(next, min64(b->next_reap, b->next_stats));
		if (b->persist.batches_dirty)
			next = min64(next, b->persist.last_save_ns +
				     PERSIST_MIN_NS);
		/* read right before sleeping: a send above moved it to now */
		if (b->http)
			next = min64(next, http_next_deadline(b->http));
		/* the drain's next look is on its own timer; producers wake
		 * us earlier only past the mark it asked for */
		if (mark != DRAIN_NO_WAKE) {
			rc = futex_sleep_arm(b, mark);
			if (rc == 0) {
				b->look_now = 1;
				next = now;
			} else if (rc < 0) {
				b->next_look = min64(b->next_look, now +
					b->cfg.drain_latency_ms * 1000000ull);
				next = min64(next, b->next_look);
			}
		}
		t = next > now ? next - now : 0;
		rc = rx_run(&b->rx, t);
		if (rc == 0 && t)
			b->timer_wakeups++;
		ring_cons_disarm(&b->rc);
		if (b->http)
			http_tick(b->http, log_mono_ns());
		if (rc < 0 && rc != -EINTR) {
			log_error("io_uring wait: %s", strerror(-rc));
			return 1;
		}
	}
	return 0;
}

static void broker_stop(struct broker *b)
{
	uint64_t limit = log_mono_ns() + 2000000000ull;
	int i;

	ops_stop(b);    /* its thread reads the segment */
	/* a flush still in flight completes first: its records are then
	 * released from the ring, or stay there for the next broker */
	while (b->flush_inflight && log_mono_ns() < limit)
		rx_run(&b->rx, 100000000ull);
	/* requests still out are cancelled (counted), logs settled */
	for (i = 0; i < b->nsinks; i++)
		sink_stop(b->sinks[i]);
	broker_flush_logs(b, log_mono_ns(), 1);
	stats_publish(b);
	/* before the sinks go: their batches' retry metadata is saved */
	persist_save(b, log_mono_ns(), 1);
	for (i = 0; i < b->nsinks; i++) {
		sink_free(b->sinks[i]);
		b->sinks[i] = NULL;
	}
	b->nsinks = 0;
	if (b->http)
		http_free(b->http);
	b->http = NULL;
	pool_free(b->pool);         /* every sink reclaimed its jobs */
	b->pool = NULL;
	persist_close(&b->persist);
	spool_set_free(b->spool);
	atomic_store(&b->seg.cons->broker_pid, 0);
	ring_cons_fini(&b->rc);
	seg_detach(&b->seg);
	env_reader_fini(&b->er);
	rx_fini(&b->rx);
}

int main(int argc, char **argv)
{
	static struct broker br;
	struct broker *b = &br;
	const char *file = NULL;
	int check = 0, print = 0, i, errs;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-c") && i + 1 < argc) {
			file = argv[++i];
		} else if (!strcmp(argv[i], "--check")) {
			check = 1;
		} else if (!strcmp(argv[i], "--print-config")) {
			print = 1;
		} else if (!strcmp(argv[i], "-h") ||
			   !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "outboxd: unknown argument '%s'\n",
				argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (check && !file) {
		fprintf(stderr, "outboxd: --check needs -c FILE\n");
		return 2;
	}
	if (file) {
		errs = cfg_load(&b->cfg, file, stderr);
		if (errs != 0)
			return 1;
	} else {
		cfg_default(&b->cfg);
	}
	if (check) {
		printf("%s: ok\n", file);
		return 0;
	}
	if (print) {
		cfg_print_redacted(&b->cfg, stdout);
		return 0;
	}
	log_set_level(b->cfg.log_level);
	if (broker_start(b) < 0)
		return 1;
	/* READY=1 for systemd: the ring is open, every spool recovered */
	if (ops_start(b) < 0) {
		broker_stop(b);
		cfg_free(&b->cfg);
		return 1;
	}
	if (!file)
		log_info("built-in default: emit with `build/outbox emit "
			 "'{\"hello\":1}'`; events land in %s",
			 b->cfg.sinks[b->default_sink].path);
	b->exit_code = broker_loop(b);
	log_info("stopping: %llu events consumed, state persisted",
		 (unsigned long long)b->rc.st.consumed);
	broker_stop(b);
	cfg_free(&b->cfg);
	return b->exit_code;
}
