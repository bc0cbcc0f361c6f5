/* policy.h - delivery policy: classification, one backoff / rate-limit
 * state machine per sink, per-batch retry budgets, persistence.
 *
 * A pure module: no sockets, no clocks, no randomness, no globals. The
 * caller passes `now` in ms of CLOCK_MONOTONIC: every window and budget is
 * a duration, and a step of the wall clock (NTP, an operator, a VM
 * resume) must neither stretch nor cut one. The wall clock enters in two
 * places only: pol_outcome.wall_ms, the wall time of an answer, against
 * which an HTTP-date Retry-After is read; and the wall-minus-monotonic
 * offset pol_save() / pol_load() use to persist times as wall-clock ms, so
 * a window means the same after a restart (a new boot, a new monotonic
 * origin). A random word is passed where jitter is needed. Only pol_save()
 * / pol_load() touch the file system.
 *
 * Sink state machine (PRODUCT.md section 7)
 * -----------------------------------------
 *
 *             retryable failure (live)            window over
 *   +----+  -------------------------->  +---------+ -------> one probe
 *   | ok |                               | backoff |          in flight
 *   +----+  <--------------------------  +---------+ <------- probe fails:
 *     ^  ^        probe answered                    level + 1, new window
 *     |   \
 *     |    \ probe answered        +--------------+
 *     |     +--------------------- | rate_limited | <- valid Retry-After on
 *     |                            +--------------+    a retryable status, or
 *     +--- (any state) -- rate-limit signal ----^      a global Sentry limit
 *
 * - ok: a request may start while in-flight < limit. limit is max_inflight,
 *   except while ramping after a recovery (below).
 * - backoff: entered by a retryable failure of a live request (see
 *   "epochs"); until = now + delay(level) where
 *     delay(l) = min(backoff_max, backoff_base * 2^l)
 *                + floor(delay * jitter_pct / 100 * rnd / 2^32)
 *   (additive jitter in [0, jitter% of delay)); when delay + jitter would
 *   pass backoff_max the jitter is subtracted instead, so no window is
 *   ever longer than backoff_max and windows at the cap still spread over
 *   the jitter% below it. Then level + 1. No request during the window.
 * - rate_limited: entered by a rate-limit signal; until = max(current
 *   until, now + wait) - an episode is extended, never shortened. The
 *   backoff level is not touched and the batch budget is not charged.
 * - When the window of backoff or rate_limited is over, exactly ONE probe
 *   request may start (half-open). A probe that gets any answer that is
 *   not a retryable failure or a rate limit (2xx, but also 4xx, 413,
 *   401...: the upstream is up) moves the sink to ok; a retryable failure
 *   moves it to backoff at the next level.
 * - Outages and hysteresis: the first failure from ok starts an outage
 *   (outage_start_ms, POL_LOG_OUTAGE: logged once). A recovery (the probe
 *   answered) makes the sink ok at once, but the outage is over only when
 *   the sink stays ok for POL_FLAP_MS: pol_tick() then says
 *   POL_LOG_RECOVERED (logged once, with the outage's length up to the
 *   last recovery) and the level goes back to 0. A failure within
 *   POL_FLAP_MS of a recovery (a flapping upstream) continues the same
 *   outage: no new outage line, the backoff level where it was (the window
 *   is the one its next failed probe would have had), counted in flaps.
 * - Ramp: after a probe succeeds the sink is ok with limit = 1. A round
 *   is `limit` consecutive healthy answers (any non-retryable outcome) of
 *   live requests; each completed round raises limit by 1 until it
 *   reaches max_inflight, where the ramp ends. A retryable failure halves
 *   the limit (at least 1). Since a live failure also puts the sink in
 *   backoff and the next probe restarts the ramp at 1, the halving is
 *   what happens on a STALE failure (below) during or after the ramp.
 * - Epochs: every entry into backoff or rate_limited bumps sink->epoch;
 *   pol_begin() stamps the batch with the epoch. A response of a request
 *   started in an earlier epoch is stale: the sink already reacted to the
 *   outage, so a stale failure does not raise the level again (N requests
 *   in flight failing together count as one failure, not N). Rate-limit
 *   signals are honoured whether stale or not: they are explicit server
 *   instructions, and can only lengthen a window.
 *
 * No head-of-line blocking (poison batches)
 * -----------------------------------------
 * A batch that keeps failing while the upstream serves others (one
 * malformed event answered 500) must not hold up its sink.
 * - strikes: each live failure of a batch that sets the sink's window (the
 *   one opening an outage, then each failed probe) counts; at POL_STRIKES
 *   (2) in a row the batch is a suspect (pol_probe_suspect): the caller
 *   takes another batch as the next probe - one already waiting, or a new
 *   one from the spool - and only a suspect when it has no other.
 * - isolated: a suspect that goes out while the sink is ok again (another
 *   batch's probe brought it back) is benched for good: pol_begin() holds
 *   it until its own next_ms (its own backoff: delay(failures - 1), set at
 *   each counted failure); an HTTP failure of it is "shielded" - charged to
 *   its own budgets (max_retries, max_backoff_duration), never moving the
 *   sink's state, window or concurrency. A network error or timeout still
 *   speaks for the upstream, and so does an isolated batch that is the
 *   probe (the caller had nothing else).
 * - bisect: a shielded failure of more than one event says r->bisect: the
 *   caller resends it as two halves at once (budgets carried over), so its
 *   good events are delivered and the poison event ends alone, retried on
 *   its schedule until its budgets drop it. The caller bounds how many
 *   bisections one batch may cost.
 *
 * Rate-limit signals, in order:
 * - X-Sentry-Rate-Limits with at least one valid entry, on ANY status
 *   (even 200): category entries are stored per sink (up to POL_MAX_CATS,
 *   each with its own until, never shortened; a category that finds the
 *   table full of live entries limits the whole sink instead, since
 *   ignoring a limit is not safe); an entry with no category limits the
 *   whole sink (rate_limited). The scope and what follows it are ignored
 *   (Sentry: "can be ignored by SDKs"): `60:error:organization` limits
 *   the error category, nothing else. On a retryable status the batch
 *   counts as rate limited. With on_rate_limit = hold a category-only
 *   answer holds only those categories (the caller holds their records,
 *   the sink stays ok and the others flow) when it explains the refusal
 *   - every category of the refused request (pol_outcome.req_cats) is
 *   limited; when it does not, or the request's categories are not known
 *   (the generic http sink), the whole sink waits for the longest
 *   category, since resending at once would ignore the answer.
 * - Otherwise a valid Retry-After on a status classified retry (not only
 *   429/503, as Segment PR #520) limits the whole sink. Ignored on any
 *   other class. A 429 without one is an ordinary counted failure.
 * - The refused batch: on_rate_limit = hold -> POL_V_RETRY, not charged,
 *   bounded by max_rate_limit_duration; drop-category -> POL_V_DROP with
 *   POL_R_RATE_LIMITED (Sentry's model: what a limit refused is gone).
 *   In drop-category mode the caller also drops, before batching, every
 *   event for which pol_cat_limited() is true (a whole-sink limit limits
 *   every category), counted dropped_rate_limited.
 *
 * Per batch (struct pol_batch): `attempts` = responses seen (drives
 * X-Retry-Count: absent, 1, 2, ...), `failures` = counted retryable
 * failures (drives max_retries; rate-limited answers and credential
 * refreshes are not counted), `first_failure_ms` (max_backoff_duration),
 * `rl_start_ms` (max_rate_limit_duration; cleared by a counted failure
 * or success, as in Segment's later design), `reauth_done`.
 *
 * Budgets, exact boundaries:
 * - max_retries = N: after the (N+1)th counted failure the batch is
 *   dropped (retries_exhausted): at most N retries after the first attempt.
 *   0 = a retryable failure drops at once.
 * - max_backoff_duration = D: expired when the time since first_failure_ms,
 *   less the time the SINK spent rate limited meanwhile, is > D (exactly
 *   D still retries); D = 0 means no retry at all (expired on the first
 *   counted failure). Rate limits count against no budget (PRODUCT.md
 *   section 7), whichever batch's answer set them; Kotlin counts them.
 * - max_rate_limit_duration = R (on_rate_limit = hold): a batch getting a
 *   rate-limit answer is dropped (rate_limited) when now - rl_start_ms > R;
 *   R = 0 drops on the first rate-limit answer.
 * - When max_retries and max_backoff_duration are both exhausted by the
 *   same failure, the reason is retries_exhausted (checked first).
 *
 * Driving it (caller = the broker's delivery loop, per sink):
 *   before sending   pol_batch_check() on a retried batch (budgets may run
 *                    out while it waits), then pol_begin(): 0 = send it
 *                    (b->probe says whether it is the probe), -EAGAIN =
 *                    gate closed. X-Retry-Count: pol_retry_count(b), 0 =
 *                    omit the header.
 *   after a response pol_on_response() -> struct pol_result: verdict for
 *                    the batch, the sink's new state, a log hint.
 *   request lost     pol_abort() when a started request ends without any
 *                    outcome (cancelled at shutdown).
 *   timers           pol_next_open(): when to try pol_begin() again;
 *                    pol_tick() when it says (the end of an outage);
 *                    pol_summary_due() every so often while not ok.
 *   drop-category    pol_cat_limited() before putting an event in a batch.
 *   restart          pol_save() / pol_load(), then pol_sink_clamp().
 */
#ifndef OBX_POLICY_H
#define OBX_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define POL_MAX_CATS   8        /* = OBX_MAX_CATS */
#define POL_CAT_MAX    24       /* category name incl. NUL (= OBX_CAT_MAX) */
#define POL_SUMMARY_MS 60000    /* at most one summary line per 60 s */
#define POL_FLAP_MS    60000    /* a failure this soon after a recovery
                                 * continues the outage (hysteresis) */
#define POL_STRIKES    2        /* failures in a row that set the sink's
                                 * window before a batch is benched */
#define POL_RA_FLOOR_MS 250     /* shortest rate-limit wait ("Retry-After:
                                 * 0"): Segment's e2e suite wants the retry
                                 * in under a second */
#define POL_NEVER      INT64_MAX

/* values equal OBX_SINK_* of the shm sink page */
enum pol_state { POL_OK = 0, POL_BACKOFF = 1, POL_RATE_LIMITED = 2 };

enum pol_class {
	POL_C_ACCEPTED,
	POL_C_RETRY,
	POL_C_DROP,
	POL_C_SPLIT,
	POL_C_REAUTH,
};

/* a request that ended without an HTTP status */
enum pol_net {
	POL_NET_NONE = 0,       /* there is a status */
	POL_NET_ERROR,          /* connect, DNS, TLS, reset, ... */
	POL_NET_TIMEOUT,
};

enum pol_verdict {
	POL_V_DELIVERED,        /* remove from the spool */
	POL_V_RETRY,            /* keep, resend when the gate opens */
	POL_V_DROP,             /* remove, count under `reason` */
	POL_V_SPLIT,            /* resend as two halves (pol_batch_split) */
	POL_V_REAUTH,           /* refresh credentials, resend */
};

enum pol_reason {
	POL_R_NONE,
	POL_R_REJECTED,         /* dropped_rejected (4xx, 3xx, 501, 505) */
	POL_R_RETRIES_EXHAUSTED,
	POL_R_EXPIRED,
	POL_R_RATE_LIMITED,
	POL_R_TOO_LARGE,        /* dropped_too_large: one event, 413 */
	POL_R_COUNT
};

enum pol_log {
	POL_LOG_NONE,
	POL_LOG_OUTAGE,         /* first failure of an outage: log `why` */
	POL_LOG_RECOVERED,      /* the outage is over (pol_tick): log
	                         * outage_ms */
};

enum pol_gate {
	POL_GATE_WAIT = 0,
	POL_GATE_SEND,
	POL_GATE_PROBE,
};

struct pol_cat {
	char name[POL_CAT_MAX];
	int64_t until_ms;
};

struct pol_sink {
	char name[CFG_NAME_MAX];
	enum pol_state state;
	int64_t until_ms;         /* end of the backoff / rate-limit window */
	uint32_t level;           /* the next backoff uses delay(level) */
	uint32_t epoch;           /* bumped on entering backoff/rate_limited */
	bool probe_out;           /* the probe of this epoch is in flight */
	uint32_t limit;           /* ramp: allowed in flight; 0 = max_inflight */
	uint32_t round_ok;        /* healthy answers in the current round */
	int64_t rl_start_ms;      /* start of the current rate_limited period
	                           * (episode), 0 none */
	int64_t rl_acc_ms;        /* time spent rate limited before it, in
	                           * all: the sink's rate-limit clock */
	int64_t outage_start_ms;  /* when the outage began, 0 = none */
	int64_t recovered_ms;     /* last probe answered while that outage
	                           * is not over yet (POL_FLAP_MS), 0 none */
	uint32_t flaps;           /* failures within POL_FLAP_MS of a
	                           * recovery, this outage */
	int64_t last_summary_ms;  /* last pol_summary_due() that said yes */
	int ncats;
	struct pol_cat cats[POL_MAX_CATS];
};

struct pol_batch {
	uint64_t id;              /* the caller's identity (spool offset...) */
	uint32_t nevents;
	uint32_t attempts;        /* responses seen: X-Retry-Count */
	uint32_t failures;        /* counted retryable failures */
	int64_t first_failure_ms; /* 0 = none yet */
	int64_t rl_start_ms;      /* this batch's rate-limit episode, 0 none */
	int64_t rl_base_ms;       /* the sink's rate-limit clock at the first
	                           * failure: what it ran since is left out
	                           * of max_backoff_duration */
	bool reauth_done;
	uint32_t strikes;         /* its live failures in a row that set the
	                           * sink's window (the one opening an
	                           * outage, then failed probes) */
	bool isolated;            /* benched: retried alone, on next_ms */
	int64_t next_ms;          /* its own next try (isolated only) */
	/* set by pol_begin(), not persisted */
	bool probe;
	uint32_t epoch;
};

/* What came back. Header arrays hold every value of that header, in order
 * (the caller joins nothing); NULL / 0 when absent. */
struct pol_outcome {
	int status;                       /* HTTP status, 0 = none */
	int64_t wall_ms;                  /* wall clock when it came (ms since
	                                   * the epoch): HTTP-dates only */
	enum pol_net net;                 /* when status == 0 */
	const char *const *retry_after;
	int n_retry_after;
	const char *const *sentry_limits; /* X-Sentry-Rate-Limits */
	int n_sentry_limits;
	/* the upstream protocol's class for this status (proto.h), as
	 * enum pol_class + 1; 0 = none. A status.NNN override of the sink
	 * and a credential refresh come first; the built-in table after. */
	int proto_cls;
	/* the data categories of what the refused request carried (a
	 * protocol that knows them: sentry); 0 = not known */
	const char *const *req_cats;
	int n_req_cats;
};

struct pol_result {
	enum pol_verdict verdict;
	enum pol_reason reason;   /* POL_V_DROP only */
	enum pol_class cls;       /* classification of the status */
	bool rate_limited;        /* answer carried a rate-limit signal */
	bool counted;             /* charged to the retry budget */
	bool shielded;            /* an isolated batch's failure: the sink's
	                           * state did not move */
	bool bisect;              /* POL_V_RETRY of an isolated batch of
	                           * more than one event: resend it as two
	                           * halves at once (pol_batch_split) */
	int64_t wait_ms;          /* the server's wait (capped), -1 = none */
	enum pol_state state;     /* the sink after this response */
	int64_t until_ms;
	enum pol_log log;
	int64_t outage_ms;        /* POL_LOG_RECOVERED: how long it lasted */
	uint32_t flaps;           /* POL_LOG_RECOVERED: failures after a
	                           * recovery it went through */
	char why[64];             /* "HTTP 503", "timeout", "rate limited" */
};

/* one entry of an X-Sentry-Rate-Limits header */
struct pol_limit {
	char cat[POL_CAT_MAX];    /* "" = every category (the whole sink) */
	int64_t wait_ms;
};

/* a batch's metadata as persisted, with the sink it belongs to */
struct pol_saved_batch {
	char sink[CFG_NAME_MAX];
	struct pol_batch b;
};

/* ---- classification ---------------------------------------------------- */

/* The built-in class of a status (0 = network error / timeout): 2xx
 * accepted, 3xx drop, 408 410 429 460 and 5xx but 501 505 retry, 413
 * split, other 4xx / 1xx / unknown drop. Never POL_C_REAUTH: that is a
 * layer on top (pol_classify). */
enum pol_class pol_class_default(int status);

/* The class for this sink: a status.NNN override first, else 401 and 511
 * are POL_C_REAUTH when the sink has a token source, else the default.
 * After one refresh (reauth_done), or without a token source, a reauth
 * (built-in or overridden) classifies as pol_class_default(): a second 401
 * is a drop, a second 511 a retry. */
enum pol_class pol_classify(const struct cfg_sink *c, int status,
			    bool reauth_done);

/* ---- header parsing ------------------------------------------------------ */

/* One Retry-After value: delta-seconds (digits only, surrounding blanks
 * allowed), or an HTTP-date in IMF-fixdate, RFC 850 or asctime form (GMT),
 * read against now_ms, the WALL clock of the answer. Every valid wait is at
 * least POL_RA_FLOOR_MS ("0" included) and at most max_ms (huge numbers
 * saturate, then cap). A date not after now, a negative number, a fraction
 * or garbage: -EINVAL (= absent). */
int pol_parse_retry_after(const char *v, int64_t now_ms, uint64_t max_ms,
			  int64_t *wait_ms);

/* All values of a repeated Retry-After: the largest valid wait, or
 * -EINVAL when none is valid. */
int pol_retry_after(const char *const *v, int n, int64_t now_ms,
		    uint64_t max_ms, int64_t *wait_ms);

/* One X-Sentry-Rate-Limits value: `wait:cats:scope:...` entries split by
 * ',', categories by ';' (empty = all). wait is seconds, fractions
 * accepted (ms resolution), at least POL_RA_FLOOR_MS, capped at max_ms; an entry
 * with a bad wait, a category longer than POL_CAT_MAX - 1 or stray bytes
 * is skipped whole. Fills up to max entries (one per category), returns
 * how many. */
int pol_parse_sentry_limits(const char *v, uint64_t max_ms,
			    struct pol_limit *out, int max);

/* ---- sink ---------------------------------------------------------------- */

/* ok, level 0, full concurrency. name is copied (truncated to fit). */
void pol_sink_init(struct pol_sink *s, const char *name);

/* After a load or a config reload: caps a window that lies further ahead
 * than this sink's configuration can produce (clock jump, foreign file),
 * so a bad file cannot block a sink for ever. Never shortens a window the
 * configuration allows. */
void pol_sink_clamp(struct pol_sink *s, const struct cfg_sink *c,
		    int64_t now);

/* May a new request start now, with `inflight` requests of this sink in
 * flight? POL_GATE_PROBE: yes, and it is the single probe. */
enum pol_gate pol_gate(const struct pol_sink *s, const struct cfg_sink *c,
		       unsigned inflight, int64_t now);

/* When pol_gate() may next say yes: now (open), the end of the window, or
 * POL_NEVER when only a response (a probe, a full window) can open it. */
int64_t pol_next_open(const struct pol_sink *s, const struct cfg_sink *c,
		      unsigned inflight, int64_t now);

/* The allowed in-flight count right now in state ok (ramp or max). */
unsigned pol_limit(const struct pol_sink *s, const struct cfg_sink *c);

/* Starts a request for b if the gate is open and, for an isolated batch,
 * its own next_ms has come: 0 (b->probe set), or -EAGAIN. A suspect that
 * goes out while the sink is ok becomes isolated here. */
int pol_begin(struct pol_sink *s, const struct cfg_sink *c,
	      struct pol_batch *b, unsigned inflight, int64_t now);

/* The request for b ended without an outcome (cancelled): frees the probe
 * slot. Counts as an attempt for X-Retry-Count (it may have arrived). */
void pol_abort(struct pol_sink *s, struct pol_batch *b);

/* Feeds one outcome. rnd: a uniformly random 32-bit word (jitter). */
void pol_on_response(struct pol_sink *s, const struct cfg_sink *c,
		     struct pol_batch *b, const struct pol_outcome *o,
		     int64_t now, uint32_t rnd, struct pol_result *r);

/* Is category cat limited at now? True as well while a global limit holds
 * (state rate_limited before its until): every category is limited. */
bool pol_cat_limited(const struct pol_sink *s, const char *cat, int64_t now);

/* The backoff delay for a level, jitter included (see the top). */
int64_t pol_backoff_delay(const struct cfg_sink *c, uint32_t level,
			  uint32_t rnd);

/* Time passing: when the sink has been ok for POL_FLAP_MS since its last
 * recovery (or at once with force: the broker stops), the outage is over:
 * r->log = POL_LOG_RECOVERED with its length and flaps, level back to 0.
 * Returns when to call again (POL_NEVER: only after a response). */
int64_t pol_tick(struct pol_sink *s, int64_t now, bool force,
		 struct pol_result *r);

/* The state to show (sink page, obx_sink_state, `outbox status`): the
 * sink's, except that a window that is over, with no probe out and
 * nothing waiting to be sent (waiting: batches held or records in the
 * spool), reads ok - nothing is being held back. The policy state itself
 * stays: the next request is still the one probe. */
enum pol_state pol_visible_state(const struct pol_sink *s, int64_t now,
				 bool waiting);

/* 1 when a summary line is due (the visible state not ok, and 60 s since
 * the outage began or since the last yes); records now. 0 otherwise. */
int pol_summary_due(struct pol_sink *s, int64_t now, bool waiting);

const char *pol_state_name(enum pol_state st);   /* "ok", "backoff", ... */
const char *pol_reason_name(enum pol_reason r);  /* "rejected", ... */

/* ---- batch --------------------------------------------------------------- */

void pol_batch_init(struct pol_batch *b, uint64_t id, uint32_t nevents);

/* A half of a split batch: new id and size, the parent's budgets
 * (attempts, failures, first failure, rate-limit episode, reauth) and its
 * strikes and isolation carry over, so splitting never renews a budget;
 * it may go at once (next_ms 0). */
void pol_batch_split(const struct pol_batch *parent, struct pol_batch *half,
		     uint64_t id, uint32_t nevents);

/* A suspect (see "No head-of-line blocking"): not the probe while another
 * batch could be. */
bool pol_probe_suspect(const struct pol_batch *b);

/* When b may go at the earliest by its own schedule (isolated), or 0. */
int64_t pol_batch_ready_at(const struct pol_batch *b);

/* X-Retry-Count for the next send of b: 0 = omit the header. */
uint32_t pol_retry_count(const struct pol_batch *b);

/* Before resending b: POL_R_EXPIRED or POL_R_RATE_LIMITED when a budget
 * ran out while it waited (drop it), else POL_R_NONE. */
enum pol_reason pol_batch_check(const struct pol_sink *s,
				const struct cfg_sink *c,
				const struct pol_batch *b, int64_t now);

/* ---- persistence --------------------------------------------------------- */

/* Writes every sink's state and the batches' metadata as msgpack to path,
 * atomically (temp file in the same directory, fsync, rename, fsync of the
 * directory). Times are written as wall-clock ms: t + wall_off, where
 * wall_off = CLOCK_REALTIME - CLOCK_MONOTONIC in ms (0 stays 0, "none").
 * 0 or -errno. */
int pol_save(const char *path, const struct pol_sink *sinks, int nsinks,
	     const struct pol_saved_batch *batches, size_t nbatches,
	     int64_t wall_off);

/* Reads path back. sinks[] must be initialised (pol_sink_init) with their
 * names: each sink found in the file by name gets its persisted state;
 * sinks absent from the file, and file sinks absent from sinks[], are left
 * alone / ignored. *batches (malloc'd, caller frees; NULL when none) gets
 * every batch record. Nothing is changed unless the whole file is valid.
 * Wall-clock times are read back as t - wall_off (this process's offset),
 * onto the caller's monotonic clock; a time before its origin comes out
 * negative, which compares right (never 0: that means none).
 * 0, -ENOENT (missing), -EBADMSG (corrupt or unknown format), -EFBIG,
 * -ENOMEM or another -errno. */
int pol_load(const char *path, struct pol_sink *sinks, int nsinks,
	     struct pol_saved_batch **batches, size_t *nbatches,
	     int64_t wall_off);

#endif
