/* log.c - leveled, rate-limited logging to stderr. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "log.h"

static enum cfg_log_level g_level = LOG_INFO;
static const char *g_names[] = { "error", "warn", "info", "debug" };

void log_set_level(enum cfg_log_level lvl)
{
	g_level = lvl;
}

enum cfg_log_level log_get_level(void)
{
	return g_level;
}

uint64_t log_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t log_real_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t log_wall_offset_ms(void)
{
	static int64_t held;
	static int have;
	int64_t now = (int64_t)(log_real_ns() / 1000000ull) -
		      (int64_t)(log_mono_ns() / 1000000ull);

	if (!have || now - held > LOG_WALL_STEP_MS ||
	    held - now > LOG_WALL_STEP_MS) {
		held = now;
		have = 1;
	}
	return held;
}

static void log_vwrite(enum cfg_log_level lvl, const char *suffix,
		       const char *fmt, va_list ap)
{
	char line[2048], ts[32];
	struct timespec now;
	struct tm tm;
	int n;

	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	n = snprintf(line, sizeof(line), "%s.%03ldZ outboxd[%d] %s: ", ts,
		     now.tv_nsec / 1000000, (int)getpid(), g_names[lvl]);
	if (n < 0 || n >= (int)sizeof(line))
		return;
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	n = (int)strlen(line);
	if (suffix && *suffix && n < (int)sizeof(line) - 1)
		snprintf(line + n, sizeof(line) - (size_t)n, "%s", suffix);
	n = (int)strlen(line);
	if (n < (int)sizeof(line) - 1) {
		line[n++] = '\n';
		line[n] = 0;
	} else {
		line[sizeof(line) - 2] = '\n';
		n = (int)sizeof(line) - 1;
	}
	/* one write per line: lines from a crash-looping broker and its
	 * restarts never interleave mid-line */
	if (write(2, line, (size_t)n) < 0)
		return;
}

void log_msg(enum cfg_log_level lvl, const char *fmt, ...)
{
	va_list ap;

	if (lvl > g_level)
		return;
	va_start(ap, fmt);
	log_vwrite(lvl, NULL, fmt, ap);
	va_end(ap);
}

/* The limiter's decision for a line standing for n things: 1 = write it
 * (suffix filled with what was held back), 0 = counted as suppressed. */
static int log_rl_pass(struct log_rl *rl, uint64_t n, char *suffix,
		       size_t cap, int with_n)
{
	uint64_t now = log_mono_ns();

	suffix[0] = '\0';
	if (rl->last_ns && now - rl->last_ns < rl->period_ns) {
		rl->suppressed++;
		rl->suppressed_n += n;
		return 0;
	}
	if (rl->suppressed && with_n)
		snprintf(suffix, cap, " (%llu more like this, %llu in all)",
			 (unsigned long long)rl->suppressed,
			 (unsigned long long)rl->suppressed_n);
	else if (rl->suppressed)
		snprintf(suffix, cap, " (%llu more like this)",
			 (unsigned long long)rl->suppressed);
	rl->suppressed = 0;
	rl->suppressed_n = 0;
	rl->last_ns = now;
	return 1;
}

int log_rl(struct log_rl *rl, enum cfg_log_level lvl, const char *fmt, ...)
{
	char suffix[96];
	va_list ap;

	if (lvl > g_level || !log_rl_pass(rl, 0, suffix, sizeof(suffix), 0))
		return 0;
	va_start(ap, fmt);
	log_vwrite(lvl, suffix, fmt, ap);
	va_end(ap);
	return 1;
}

int log_rl_n(struct log_rl *rl, uint64_t n, enum cfg_log_level lvl,
	     const char *fmt, ...)
{
	char suffix[96];
	va_list ap;

	if (lvl > g_level || !log_rl_pass(rl, n, suffix, sizeof(suffix), 1))
		return 0;
	va_start(ap, fmt);
	log_vwrite(lvl, suffix, fmt, ap);
	va_end(ap);
	return 1;
}

int log_rl_take(struct log_rl *rl, uint64_t *lines, uint64_t *n)
{
	if (!rl->suppressed)
		return 0;
	*lines = rl->suppressed;
	*n = rl->suppressed_n;
	rl->suppressed = 0;
	rl->suppressed_n = 0;
	return 1;
}

uint64_t log_rl_due(const struct log_rl *rl)
{
	return rl->suppressed ? rl->last_ns + rl->period_ns : 0;
}
