/* log.h - leveled logging to stderr, with rate limiting.
 *
 * Lines: "2026-11-23T10:00:00.123Z outboxd[pid] LEVEL: message". A
 * struct log_rl is a per-call-site limiter: at most one line per period;
 * lines suppressed meanwhile are counted and reported with the next one
 * ("(42 more like this)"), so a flood costs one line per period, not one
 * per event.
 */
#ifndef OBX_LOG_H
#define OBX_LOG_H

#include <stdint.h>
#include "config.h"

void log_set_level(enum cfg_log_level lvl);
enum cfg_log_level log_get_level(void);

void log_msg(enum cfg_log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

struct log_rl {
	uint64_t period_ns;     /* e.g. 60 s */
	uint64_t last_ns;       /* mono: the last line written */
	uint64_t suppressed;    /* lines not written since */
	uint64_t suppressed_n;  /* what they stood for (log_rl_n) */
};

#define LOG_RL_INIT(sec) { (uint64_t)(sec) * 1000000000ull, 0, 0, 0 }

/* Logs when the limiter allows; returns 1 when a line was written. */
int log_rl(struct log_rl *rl, enum cfg_log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* The same for a line that stands for n things (dropped events): the
 * suppressed lines' n are summed, and the suffix of the next line that
 * passes says both ("(4 more like this, 37 in all)"). */
int log_rl_n(struct log_rl *rl, uint64_t n, enum cfg_log_level lvl,
	     const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* What the limiter holds back: 1 and the suppressed lines (and their n)
 * when there are some, which then count as told (the caller logs them
 * itself: a summary line, at stop); 0 when none. */
int log_rl_take(struct log_rl *rl, uint64_t *lines, uint64_t *n);

/* Mono ns at which the limiter would let a line through again, or 0 when
 * it holds nothing back (the time to flush what it holds). */
uint64_t log_rl_due(const struct log_rl *rl);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

uint64_t log_mono_ns(void);   /* CLOCK_MONOTONIC */
uint64_t log_real_ns(void);   /* CLOCK_REALTIME */

/* CLOCK_REALTIME - CLOCK_MONOTONIC in ms, for turning monotonic deadlines
 * into wall-clock ones (the shm sink page, the persisted delivery state)
 * and back. Held steady so conversions round-trip exactly; taken again
 * when the measured offset moved by more than LOG_WALL_STEP_MS, i.e. the
 * wall clock was stepped. */
#define LOG_WALL_STEP_MS 1000
int64_t log_wall_offset_ms(void);

#endif
