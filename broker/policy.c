/* policy.c - the delivery policy (see policy.h for the state machine).
 *
 * Everything here is a function of its arguments: the caller owns the
 * clock, the random words and the storage of every struct. Only
 * pol_save() and pol_load() do I/O.
 */
#define _GNU_SOURCE
#include "policy.h"
#include "mpcheck.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MS_PER_S 1000
#define POL_FILE_FORMAT "outbox-policy"
#define POL_FILE_VERSION 1
#define POL_FILE_MAX (64u << 20)	/* refuse to slurp anything bigger */
#define LIMITS_PER_RESPONSE 64

/* ---- small helpers ------------------------------------------------------- */

static int64_t max64(int64_t a, int64_t b)
{
	return a > b ? a : b;
}

/* a configured (unsigned) duration as a signed ms count */
static int64_t u2i(uint64_t v)
{
	return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

/* now + d without wrapping: windows are compared, never wrapped */
static int64_t add_ms(int64_t now, int64_t d)
{
	if (d > 0 && now > INT64_MAX - d)
		return INT64_MAX;
	return now + d;
}

static int is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* trims blanks on both sides of [*p, *e) */
static void trim(const char **p, const char **e)
{
	while (*p < *e && is_blank(**p))
		(*p)++;
	while (*e > *p && is_blank((*e)[-1]))
		(*e)--;
}

static void copy_name(char *dst, size_t cap, const char *src)
{
	size_t n = src ? strnlen(src, cap - 1) : 0;

	memcpy(dst, src ? src : "", n);
	dst[n] = '\0';
}

/* ---- classification ---------------------------------------------------- */

enum pol_class pol_class_default(int status)
{
	if (status <= 0)
		return POL_C_RETRY;	/* network error, timeout */
	if (status >= 200 && status <= 299)
		return POL_C_ACCEPTED;
	switch (status) {
	case 408: case 410: case 429: case 460:
		return POL_C_RETRY;
	case 413:
		return POL_C_SPLIT;
	case 501: case 505:
		return POL_C_DROP;
	}
	if (status >= 500 && status <= 599)
		return POL_C_RETRY;
	/* 1xx (a final 1xx is a broken server), 3xx, other 4xx, >= 600 */
	return POL_C_DROP;
}

static enum pol_class action_class(enum cfg_status_action a)
{
	switch (a) {
	case ST_RETRY: return POL_C_RETRY;
	case ST_SPLIT: return POL_C_SPLIT;
	case ST_REAUTH: return POL_C_REAUTH;
	case ST_DROP: break;
	}
	return POL_C_DROP;
}

static bool has_override(const struct cfg_sink *c, int status)
{
	int i;

	for (i = 0; i < c->nstatus && i < CFG_MAX_STATUS; i++)
		if (c->status[i].code == status)
			return true;
	return false;
}

enum pol_class pol_classify(const struct cfg_sink *c, int status,
			    bool reauth_done)
{
	/* a refresh needs somewhere to refresh from, and happens once */
	bool can_reauth = c->token_file != NULL && !reauth_done;
	int i;

	for (i = 0; i < c->nstatus && i < CFG_MAX_STATUS; i++) {
		enum pol_class k;

		if (c->status[i].code != status)
			continue;
		k = action_class(c->status[i].action);
		if (k == POL_C_REAUTH && !can_reauth)
			return pol_class_default(status);
		return k;
	}
	if ((status == 401 || status == 511) && can_reauth)
		return POL_C_REAUTH;
	return pol_class_default(status);
}

/* ---- Retry-After ------------------------------------------------------- */

/* digits only, saturating at UINT64_MAX; 0 or -EINVAL */
static int parse_uint(const char *p, const char *e, uint64_t *out)
{
	uint64_t v = 0;

	if (p == e)
		return -EINVAL;
	for (; p < e; p++) {
		unsigned d;

		if (!is_digit(*p))
			return -EINVAL;
		d = (unsigned)(*p - '0');
		v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
	}
	*out = v;
	return 0;
}

/* days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant) */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	int64_t era;
	unsigned yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned)(y - era * 400);
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
	static const unsigned char dm[12] = { 31, 28, 31, 30, 31, 30,
					      31, 31, 30, 31, 30, 31 };
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : dm[m - 1];
}

/* a cursor over the date text */
struct cur {
	const char *p, *e;
};

static bool cur_lit(struct cur *c, const char *lit)
{
	size_t n = strlen(lit);

	if ((size_t)(c->e - c->p) < n || strncmp(c->p, lit, n))
		return false;
	c->p += n;
	return true;
}

/* exactly `min`..`max` digits */
static bool cur_num(struct cur *c, int min, int max, unsigned *out)
{
	unsigned v = 0;
	int n = 0;

	while (c->p < c->e && is_digit(*c->p) && n < max) {
		v = v * 10 + (unsigned)(*c->p++ - '0');
		n++;
	}
	if (n < min || (c->p < c->e && is_digit(*c->p)))
		return false;
	*out = v;
	return true;
}

static bool cur_month(struct cur *c, unsigned *m)
{
	static const char *const mon[12] = { "Jan", "Feb", "Mar", "Apr",
		"May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	unsigned i;

	for (i = 0; i < 12; i++)
		if (cur_lit(c, mon[i])) {
			*m = i + 1;
			return true;
		}
	return false;
}

/* "Sun" (short) or "Sunday" (long, RFC 850) */
static bool cur_wkday(struct cur *c, bool long_form)
{
	static const char *const lng[7] = { "Monday", "Tuesday", "Wednesday",
		"Thursday", "Friday", "Saturday", "Sunday" };
	unsigned i;

	for (i = 0; i < 7; i++) {
		char shrt[4];

		if (long_form) {
			if (cur_lit(c, lng[i]))
				return true;
			continue;
		}
		memcpy(shrt, lng[i], 3);
		shrt[3] = '\0';
		if (cur_lit(c, shrt))
			return true;
	}
	return false;
}

static bool cur_time(struct cur *c, unsigned *h, unsigned *mi, unsigned *s)
{
	return cur_num(c, 2, 2, h) && cur_lit(c, ":") &&
	       cur_num(c, 2, 2, mi) && cur_lit(c, ":") &&
	       cur_num(c, 2, 2, s);
}

/* The three HTTP-date forms of RFC 9110 5.6.7, all GMT:
 *   IMF-fixdate  Sun, 06 Nov 1994 08:49:37 GMT
 *   RFC 850      Sunday, 06-Nov-94 08:49:37 GMT
 *   asctime      Sun Nov  6 08:49:37 1994
 * Returns 0 and the instant in ms since the epoch, or -EINVAL. */
static int parse_http_date(const char *p, const char *e, int64_t *ms)
{
	struct cur c = { p, e }, save;
	unsigned d, m, y, h, mi, s;
	int64_t year;

	save = c;
	if (cur_wkday(&c, false) && cur_lit(&c, ", ")) {
		/* IMF-fixdate */
		if (!cur_num(&c, 2, 2, &d) || !cur_lit(&c, " ") ||
		    !cur_month(&c, &m) || !cur_lit(&c, " ") ||
		    !cur_num(&c, 4, 4, &y) || !cur_lit(&c, " ") ||
		    !cur_time(&c, &h, &mi, &s) || !cur_lit(&c, " GMT"))
			return -EINVAL;
		year = y;
	} else if ((c = save, cur_wkday(&c, true)) && cur_lit(&c, ", ")) {
		/* RFC 850: two-digit year, read as RFC 9110 says: a year
		 * more than 50 years ahead is in the past century. Pick the
		 * pivot from the digits alone (pure): 00..69 -> 20xx. */
		if (!cur_num(&c, 2, 2, &d) || !cur_lit(&c, "-") ||
		    !cur_month(&c, &m) || !cur_lit(&c, "-") ||
		    !cur_num(&c, 2, 2, &y) || !cur_lit(&c, " ") ||
		    !cur_time(&c, &h, &mi, &s) || !cur_lit(&c, " GMT"))
			return -EINVAL;
		year = y < 70 ? 2000 + y : 1900 + y;
	} else if ((c = save, cur_wkday(&c, false)) && cur_lit(&c, " ")) {
		/* asctime: the day is space padded ("Nov  6") */
		if (!cur_month(&c, &m) || !cur_lit(&c, " "))
			return -EINVAL;
		cur_lit(&c, " ");
		if (!cur_num(&c, 1, 2, &d) || !cur_lit(&c, " ") ||
		    !cur_time(&c, &h, &mi, &s) || !cur_lit(&c, " ") ||
		    !cur_num(&c, 4, 4, &y))
			return -EINVAL;
		year = y;
	} else {
		return -EINVAL;
	}
	if (c.p != c.e || year < 1970 || d < 1 || d > days_in_month(year, m) ||
	    h > 23 || mi > 59 || s > 60)
		return -EINVAL;
	if (s == 60)
		s = 59;		/* a leap second: close enough */
	*ms = ((days_from_civil(year, m, d) * 86400) +
	       (int64_t)h * 3600 + (int64_t)mi * 60 + s) * MS_PER_S;
	return 0;
}

static int64_t floor_cap(int64_t wait, uint64_t max_ms)
{
	if (wait < POL_RA_FLOOR_MS)
		wait = POL_RA_FLOOR_MS;
	/* the configured cap wins over the floor */
	if (wait > u2i(max_ms))
		wait = u2i(max_ms);
	return wait;
}

int pol_parse_retry_after(const char *v, int64_t now_ms, uint64_t max_ms,
			  int64_t *wait_ms)
{
	const char *p, *e;
	uint64_t secs;
	int64_t at;

	if (!v)
		return -EINVAL;
	p = v;
	e = v + strlen(v);
	trim(&p, &e);
	if (p == e)
		return -EINVAL;
	if (is_digit(*p)) {
		if (parse_uint(p, e, &secs))
			return -EINVAL;	/* "1.5", "5s", "-" inside ... */
		if (secs > (uint64_t)INT64_MAX / MS_PER_S)
			secs = (uint64_t)INT64_MAX / MS_PER_S;
		*wait_ms = floor_cap((int64_t)secs * MS_PER_S, max_ms);
		return 0;
	}
	if (parse_http_date(p, e, &at))
		return -EINVAL;
	if (at <= now_ms)
		return -EINVAL;		/* a past date is no limit at all */
	*wait_ms = floor_cap(at - now_ms, max_ms);
	return 0;
}

int pol_retry_after(const char *const *v, int n, int64_t now_ms,
		    uint64_t max_ms, int64_t *wait_ms)
{
	int64_t best = -1, w;
	int i;

	for (i = 0; v && i < n; i++)
		if (!pol_parse_retry_after(v[i], now_ms, max_ms, &w))
			best = max64(best, w);
	if (best < 0)
		return -EINVAL;
	*wait_ms = best;
	return 0;
}

/* ---- X-Sentry-Rate-Limits ---------------------------------------------- */

/* "12", "12.5", "0.25": seconds with an optional fraction, to ms */
static int parse_seconds_frac(const char *p, const char *e, int64_t *ms)
{
	const char *dot = memchr(p, '.', (size_t)(e - p));
	uint64_t whole, frac = 0;
	int ndig = 0;

	if (parse_uint(p, dot ? dot : e, &whole))
		return -EINVAL;
	if (dot) {
		const char *q;

		if (dot + 1 == e)
			return -EINVAL;
		for (q = dot + 1; q < e; q++) {
			if (!is_digit(*q))
				return -EINVAL;
			if (ndig < 3) {
				frac = frac * 10 + (uint64_t)(*q - '0');
				ndig++;
			}
		}
		while (ndig++ < 3)
			frac *= 10;
	}
	if (whole > (uint64_t)INT64_MAX / MS_PER_S - 1)
		whole = (uint64_t)INT64_MAX / MS_PER_S - 1;
	*ms = (int64_t)whole * MS_PER_S + (int64_t)frac;
	return 0;
}

/* A category name: printable ASCII, no separators or blanks. */
static bool cat_ok(const char *p, const char *e)
{
	if (p == e || e - p >= POL_CAT_MAX)
		return false;
	for (; p < e; p++)
		if (*p <= ' ' || *p > '~' || *p == ':' || *p == ';' ||
		    *p == ',')
			return false;
	return true;
}

/* Calls fn on each non-empty, blank-trimmed ';' item of [p, e); stops
 * and returns false as soon as fn does. */
static bool each_cat(const char *p, const char *e,
		     bool (*fn)(const char *a, const char *b, void *arg),
		     void *arg)
{
	for (;;) {
		const char *semi = memchr(p, ';', (size_t)(e - p));
		const char *a = p, *b = semi ? semi : e;

		trim(&a, &b);
		if (a != b && !fn(a, b, arg))
			return false;
		if (!semi)
			return true;
		p = semi + 1;
	}
}

struct cat_fill {
	struct pol_limit *out;
	int n, room;
	int64_t wait;
};

static bool cat_check(const char *a, const char *b, void *arg)
{
	(*(int *)arg)++;
	return cat_ok(a, b);
}

static bool cat_add(const char *a, const char *b, void *arg)
{
	struct cat_fill *f = arg;

	if (f->n >= f->room)
		return false;
	memcpy(f->out[f->n].cat, a, (size_t)(b - a));
	f->out[f->n].cat[b - a] = '\0';
	f->out[f->n].wait_ms = f->wait;
	f->n++;
	return true;
}

/* one `wait:cats[:scope...]` entry into out[]; how many it added */
static int parse_limit_entry(const char *p, const char *e, uint64_t max_ms,
			     struct pol_limit *out, int room)
{
	const char *colon, *cats, *cend, *wp, *we;
	struct cat_fill f = { out, 0, room, 0 };
	int named = 0;

	trim(&p, &e);
	colon = memchr(p, ':', (size_t)(e - p));
	if (!colon || room <= 0)
		return 0;	/* "60" alone names no categories: invalid */
	wp = p;
	we = colon;
	trim(&wp, &we);
	if (parse_seconds_frac(wp, we, &f.wait))
		return 0;
	f.wait = floor_cap(f.wait, max_ms);
	cats = colon + 1;
	cend = memchr(cats, ':', (size_t)(e - cats));
	if (!cend)
		cend = e;
	/* validate the whole list first: a bad entry is skipped whole */
	if (!each_cat(cats, cend, cat_check, &named))
		return 0;
	if (!named) {
		/* an empty category list: every category, the whole sink */
		out[0].cat[0] = '\0';
		out[0].wait_ms = f.wait;
		return 1;
	}
	each_cat(cats, cend, cat_add, &f);
	return f.n;
}

int pol_parse_sentry_limits(const char *v, uint64_t max_ms,
			    struct pol_limit *out, int max)
{
	const char *p, *end;
	int n = 0;

	if (!v || max <= 0)
		return 0;
	p = v;
	end = v + strlen(v);
	while (p <= end && n < max) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *e = comma ? comma : end;

		n += parse_limit_entry(p, e, max_ms, out + n, max - n);
		if (!comma)
			break;
		p = comma + 1;
	}
	return n;
}

/* ---- sink ---------------------------------------------------------------- */

const char *pol_state_name(enum pol_state st)
{
	switch (st) {
	case POL_OK: return "ok";
	case POL_BACKOFF: return "backoff";
	case POL_RATE_LIMITED: return "rate_limited";
	}
	return "?";
}

const char *pol_reason_name(enum pol_reason r)
{
	switch (r) {
	case POL_R_NONE: return "none";
	case POL_R_REJECTED: return "rejected";
	case POL_R_RETRIES_EXHAUSTED: return "retries_exhausted";
	case POL_R_EXPIRED: return "expired";
	case POL_R_RATE_LIMITED: return "rate_limited";
	case POL_R_TOO_LARGE: return "too_large";
	case POL_R_COUNT: break;
	}
	return "?";
}

void pol_sink_init(struct pol_sink *s, const char *name)
{
	memset(s, 0, sizeof(*s));
	copy_name(s->name, sizeof(s->name), name);
	s->state = POL_OK;
}

static uint32_t max_inflight(const struct cfg_sink *c)
{
	return c->max_inflight ? c->max_inflight : 1;
}

unsigned pol_limit(const struct pol_sink *s, const struct cfg_sink *c)
{
	uint32_t m = max_inflight(c);

	return s->limit && s->limit < m ? s->limit : m;
}

int64_t pol_backoff_delay(const struct cfg_sink *c, uint32_t level,
			  uint32_t rnd)
{
	uint64_t base = c->backoff_base_ms, cap = c->backoff_max_ms, d, jmax;
	unsigned __int128 j;

	/* base * 2^level without overflow, then the cap */
	if (base == 0)
		d = 0;
	else if (level >= 64 || base > (UINT64_MAX >> level))
		d = cap;
	else
		d = base << level;
	if (d > cap)
		d = cap;
	if (d > (uint64_t)INT64_MAX / 2)
		d = (uint64_t)INT64_MAX / 2;
	/* jitter in [0, pct% of d): rnd / 2^32 is in [0, 1); pct <= 100,
	 * so j < d */
	jmax = (uint64_t)((unsigned __int128)d * c->backoff_jitter_pct / 100);
	j = ((unsigned __int128)jmax * rnd) >> 32;
	/* never past the cap: there the jitter goes below it instead */
	if (d + (uint64_t)j > cap)
		return (int64_t)(d - (uint64_t)j);
	return (int64_t)(d + (uint64_t)j);
}

void pol_sink_clamp(struct pol_sink *s, const struct cfg_sink *c,
		    int64_t now)
{
	/* the longest window this config can set: a capped backoff (jitter
	 * never passes the cap; rnd 0 is the cap itself), or a capped rate
	 * limit */
	int64_t bmax = pol_backoff_delay(c, 64, 0);
	int64_t rmax = u2i(c->retry_after_max_ms);
	int64_t lim = add_ms(now, max64(max64(bmax, rmax), POL_RA_FLOOR_MS));
	int i;

	if (s->state != POL_OK && s->until_ms > lim)
		s->until_ms = lim;
	lim = add_ms(now, max64(rmax, POL_RA_FLOOR_MS));
	for (i = 0; i < s->ncats; i++)
		if (s->cats[i].until_ms > lim)
			s->cats[i].until_ms = lim;
}

enum pol_gate pol_gate(const struct pol_sink *s, const struct cfg_sink *c,
		       unsigned inflight, int64_t now)
{
	if (s->state == POL_OK)
		return inflight < pol_limit(s, c) ? POL_GATE_SEND
						  : POL_GATE_WAIT;
	if (now < s->until_ms || s->probe_out)
		return POL_GATE_WAIT;
	/* half-open: requests still in flight from before the window are
	 * stale and do not hold the probe back */
	return POL_GATE_PROBE;
}

int64_t pol_next_open(const struct pol_sink *s, const struct cfg_sink *c,
		      unsigned inflight, int64_t now)
{
	if (s->state == POL_OK)
		return inflight < pol_limit(s, c) ? now : POL_NEVER;
	if (now < s->until_ms)
		return s->until_ms;
	return s->probe_out ? POL_NEVER : now;
}

int pol_begin(struct pol_sink *s, const struct cfg_sink *c,
	      struct pol_batch *b, unsigned inflight, int64_t now)
{
	enum pol_gate g = pol_gate(s, c, inflight, now);

	if (g == POL_GATE_WAIT)
		return -EAGAIN;
	/* A suspect going out while the sink is ok: another batch brought
	 * it back while this one kept failing. It is benched for good: its
	 * failures are its own, on its own schedule. */
	if (s->state == POL_OK && b->strikes >= POL_STRIKES)
		b->isolated = true;
	if (b->isolated && now < b->next_ms)
		return -EAGAIN;
	b->probe = g == POL_GATE_PROBE;
	b->epoch = s->epoch;
	if (b->probe)
		s->probe_out = true;
	return 0;
}

bool pol_probe_suspect(const struct pol_batch *b)
{
	return b->isolated || b->strikes >= POL_STRIKES;
}

int64_t pol_batch_ready_at(const struct pol_batch *b)
{
	return b->isolated ? b->next_ms : 0;
}

static bool is_live_probe(const struct pol_sink *s, const struct pol_batch *b)
{
	return b->probe && s->probe_out && b->epoch == s->epoch;
}

void pol_abort(struct pol_sink *s, struct pol_batch *b)
{
	if (is_live_probe(s, b))
		s->probe_out = false;	/* let another batch probe */
	b->probe = false;
	if (b->attempts < UINT32_MAX)
		b->attempts++;
}

bool pol_cat_limited(const struct pol_sink *s, const char *cat, int64_t now)
{
	int i;

	if (s->state == POL_RATE_LIMITED && now < s->until_ms)
		return true;
	for (i = 0; i < s->ncats && i < POL_MAX_CATS; i++)
		if (now < s->cats[i].until_ms && !strcmp(s->cats[i].name, cat))
			return true;
	return false;
}

/* The outage is over: the sink was ok for POL_FLAP_MS after its last
 * recovery (or the broker stops). The recovery line, then a clean slate. */
static void close_outage(struct pol_sink *s, struct pol_result *r)
{
	r->log = POL_LOG_RECOVERED;
	r->outage_ms = s->outage_start_ms ?
		       max64(s->recovered_ms - s->outage_start_ms, 0) : 0;
	r->flaps = s->flaps;
	s->level = 0;
	s->outage_start_ms = 0;
	s->recovered_ms = 0;
	s->flaps = 0;
	s->last_summary_ms = 0;
}

int64_t pol_tick(struct pol_sink *s, int64_t now, bool force,
		 struct pol_result *r)
{
	memset(r, 0, sizeof(*r));
	r->state = s->state;
	r->until_ms = s->until_ms;
	r->wait_ms = -1;
	if (s->state != POL_OK || !s->recovered_ms)
		return POL_NEVER;
	if (!force && now - s->recovered_ms < POL_FLAP_MS)
		return s->recovered_ms + POL_FLAP_MS;
	close_outage(s, r);
	return POL_NEVER;
}

enum pol_state pol_visible_state(const struct pol_sink *s, int64_t now,
				 bool waiting)
{
	/* a window that is over, with nothing to probe with: nothing is
	 * held back, so nothing is reported held back */
	if (s->state != POL_OK && now >= s->until_ms && !s->probe_out &&
	    !waiting)
		return POL_OK;
	return s->state;
}

int pol_summary_due(struct pol_sink *s, int64_t now, bool waiting)
{
	int64_t ref;

	if (pol_visible_state(s, now, waiting) == POL_OK)
		return 0;
	/* the first failure was logged when it happened: wait 60 s from it */
	ref = max64(s->last_summary_ms, s->outage_start_ms);
	if (now - ref < POL_SUMMARY_MS)
		return 0;
	s->last_summary_ms = now;
	return 1;
}

/* Records category limits, never shortening one. Returns the wait that
 * could not be stored per category (table full of live entries) and so
 * must apply to the whole sink, or -1. */
static int64_t store_cats(struct pol_sink *s, const struct pol_limit *l,
			  int n, int64_t now)
{
	int64_t overflow = -1;
	int i, j, k;

	/* forget what has expired, to make room */
	for (i = k = 0; i < s->ncats && i < POL_MAX_CATS; i++)
		if (now < s->cats[i].until_ms)
			s->cats[k++] = s->cats[i];
	s->ncats = k;
	for (i = 0; i < n; i++) {
		int64_t until = add_ms(now, l[i].wait_ms);

		if (!l[i].cat[0])
			continue;	/* global: the caller's business */
		for (j = 0; j < s->ncats; j++)
			if (!strcmp(s->cats[j].name, l[i].cat))
				break;
		if (j < s->ncats) {
			s->cats[j].until_ms = max64(s->cats[j].until_ms, until);
		} else if (s->ncats < POL_MAX_CATS) {
			copy_name(s->cats[j].name, POL_CAT_MAX, l[i].cat);
			s->cats[j].until_ms = until;
			s->ncats++;
		} else {
			/* no room: limiting everything is safe, ignoring a
			 * limit is not */
			overflow = max64(overflow, l[i].wait_ms);
		}
	}
	return overflow;
}

static void leave_ok(struct pol_sink *s, int64_t now, struct pol_result *r)
{
	if (s->state != POL_OK)
		return;
	if (s->recovered_ms && now - s->recovered_ms <= POL_FLAP_MS) {
		/* flapping: the same outage goes on, at its level, and
		 * nothing is logged */
		if (s->flaps < UINT32_MAX)
			s->flaps++;
		s->recovered_ms = 0;
		return;
	}
	if (s->recovered_ms) {
		/* a recovery nobody confirmed (pol_tick not called): the
		 * old outage is over, this is a new one */
		struct pol_result old;

		close_outage(s, &old);
	}
	s->outage_start_ms = now;
	s->last_summary_ms = 0;
	r->log = POL_LOG_OUTAGE;
}

/* a retryable failure, whatever the state: concurrency halves */
static void halve(struct pol_sink *s, const struct cfg_sink *c)
{
	uint32_t cur = pol_limit(s, c);

	s->limit = cur / 2 ? cur / 2 : 1;
	s->round_ok = 0;
}

/* The sink's rate-limit clock: how long it has been rate limited in all,
 * up to now (a window counts up to its end; after that the probe is out,
 * which is ordinary waiting). Batch budgets leave this time out. */
static int64_t rl_clock(const struct pol_sink *s, int64_t now)
{
	int64_t span = 0;

	if (s->state == POL_RATE_LIMITED && s->rl_start_ms) {
		span = (now < s->until_ms ? now : s->until_ms) - s->rl_start_ms;
		if (span < 0)
			span = 0;
	}
	return s->rl_acc_ms + span;
}

/* leaving rate_limited: its period goes into the clock */
static void rl_close(struct pol_sink *s, int64_t now)
{
	if (s->state != POL_RATE_LIMITED)
		return;
	s->rl_acc_ms = rl_clock(s, now);
	s->rl_start_ms = 0;
}

static void enter_backoff(struct pol_sink *s, const struct cfg_sink *c,
			  int64_t now, uint32_t rnd, struct pol_result *r)
{
	int64_t until = add_ms(now, pol_backoff_delay(c, s->level, rnd));

	leave_ok(s, now, r);
	/* a window is never shortened, whatever opened it */
	if (s->state != POL_OK)
		until = max64(until, s->until_ms);
	rl_close(s, now);
	s->state = POL_BACKOFF;
	s->until_ms = until;
	if (s->level < UINT32_MAX)
		s->level++;
	s->epoch++;
	s->probe_out = false;
}

static void enter_rate_limited(struct pol_sink *s, int64_t now, int64_t wait,
			       struct pol_result *r)
{
	int64_t until = add_ms(now, wait);

	leave_ok(s, now, r);
	if (s->state != POL_RATE_LIMITED)
		s->rl_start_ms = now;	/* a new episode */
	if (s->state != POL_OK)
		until = max64(until, s->until_ms);
	s->state = POL_RATE_LIMITED;
	s->until_ms = until;
	s->epoch++;		/* a probe out now answers for the old window */
	s->probe_out = false;
}

/* The probe was answered: ok again, but the outage is only over once it
 * stays so for POL_FLAP_MS (pol_tick); until then level, outage start and
 * the outage's counts stay, and a failure continues it. */
static void recover(struct pol_sink *s, const struct cfg_sink *c,
		    int64_t now, struct pol_result *r)
{
	(void)r;
	rl_close(s, now);
	s->state = POL_OK;
	s->until_ms = 0;
	s->rl_start_ms = 0;
	s->recovered_ms = now;
	s->last_summary_ms = 0;
	/* ramp: one request in flight first (none needed at max 1) */
	s->limit = max_inflight(c) > 1 ? 1 : 0;
	s->round_ok = 0;
}

/* a healthy answer to a live request in state ok: the ramp */
static void ramp(struct pol_sink *s, const struct cfg_sink *c)
{
	if (!s->limit)
		return;
	if (++s->round_ok < s->limit)
		return;
	s->round_ok = 0;
	s->limit++;
	if (s->limit >= max_inflight(c))
		s->limit = 0;	/* ramp done */
}

/* Does every category the refused request carried have a limit now? No
 * when they are not known. */
static bool req_cats_limited(const struct pol_sink *s,
			     const struct pol_outcome *o, int64_t now)
{
	int i;

	if (!o->req_cats || o->n_req_cats <= 0)
		return false;
	for (i = 0; i < o->n_req_cats; i++)
		if (!o->req_cats[i] || !pol_cat_limited(s, o->req_cats[i], now))
			return false;
	return true;
}

/* The rate-limit signal of an outcome. *sink_wait: how long the whole
 * sink must wait (-1: not at all); returns whether the batch itself was
 * refused for a rate limit. */
static bool rate_signal(struct pol_sink *s, const struct cfg_sink *c,
			const struct pol_outcome *o, enum pol_class cls,
			int64_t now, int64_t *sink_wait, int64_t *wait)
{
	struct pol_limit lim[LIMITS_PER_RESPONSE];
	int64_t global = -1, cat = -1, over;
	int n = 0, i;

	*sink_wait = -1;
	*wait = -1;
	for (i = 0; o->sentry_limits && i < o->n_sentry_limits; i++)
		if (o->sentry_limits[i])
			n += pol_parse_sentry_limits(o->sentry_limits[i],
						     c->retry_after_max_ms,
						     lim + n,
						     LIMITS_PER_RESPONSE - n);
	if (n > 0) {
		/* Sentry's header wins over Retry-After, on any status */
		for (i = 0; i < n; i++) {
			if (lim[i].cat[0])
				cat = max64(cat, lim[i].wait_ms);
			else
				global = max64(global, lim[i].wait_ms);
		}
		over = store_cats(s, lim, n, now);
		global = max64(global, over);
		/* hold: a refused request is sent again. When the category
		 * limits explain the refusal (every category it carried is
		 * limited now) its records wait per category (the protocol
		 * holds them) and the sink carries on; otherwise resending
		 * it at once would be ignoring the answer, so the whole sink
		 * waits. drop-category drops the refused request either
		 * way. */
		if (cls == POL_C_RETRY && c->on_rate_limit == RL_HOLD &&
		    global < 0 && !req_cats_limited(s, o, now))
			global = cat;
		*sink_wait = global;
		*wait = max64(global, cat);
		return cls == POL_C_RETRY;
	}
	if (cls != POL_C_RETRY || o->status <= 0)
		return false;
	/* an HTTP-date is read against the wall clock of the answer; the
	 * wait it yields is a duration on the monotonic clock */
	if (pol_retry_after(o->retry_after, o->n_retry_after, o->wall_ms,
			    c->retry_after_max_ms, wait))
		return false;	/* e.g. a 429 without one: counted backoff */
	*sink_wait = *wait;
	return true;
}

/* Time b has spent retrying since its first failure, the sink's rate
 * limits left out (PRODUCT.md section 7: they count against no budget). */
static int64_t backoff_elapsed(const struct pol_sink *s,
			       const struct pol_batch *b, int64_t now)
{
	int64_t all = now - b->first_failure_ms;
	int64_t limited = rl_clock(s, now) - b->rl_base_ms;

	if (limited < 0)
		limited = 0;	/* a clock from another run */
	return limited < all ? all - limited : 0;
}

static bool backoff_expired(const struct pol_sink *s,
			    const struct cfg_sink *c,
			    const struct pol_batch *b, int64_t now)
{
	return b->first_failure_ms &&
	       (!c->max_backoff_duration_ms ||
		backoff_elapsed(s, b, now) > u2i(c->max_backoff_duration_ms));
}

static void fail_batch(const struct pol_sink *s, struct pol_batch *b,
		       const struct cfg_sink *c, int64_t now,
		       struct pol_result *r)
{
	if (b->failures < UINT32_MAX)
		b->failures++;
	if (!b->first_failure_ms) {
		b->first_failure_ms = now;
		b->rl_base_ms = rl_clock(s, now);
	}
	b->rl_start_ms = 0;	/* a failure without a limit ends an episode */
	r->counted = true;
	if (b->failures > c->max_retries) {
		r->verdict = POL_V_DROP;
		r->reason = POL_R_RETRIES_EXHAUSTED;
	} else if (backoff_expired(s, c, b, now)) {
		r->verdict = POL_V_DROP;
		r->reason = POL_R_EXPIRED;
	} else {
		r->verdict = POL_V_RETRY;
	}
}

static void limit_batch(struct pol_batch *b, const struct cfg_sink *c,
			int64_t now, struct pol_result *r)
{
	r->rate_limited = true;
	if (c->on_rate_limit == RL_DROP_CATEGORY) {
		/* Sentry's model: what a limit refused is gone */
		r->verdict = POL_V_DROP;
		r->reason = POL_R_RATE_LIMITED;
		return;
	}
	if (!b->rl_start_ms)
		b->rl_start_ms = now;
	if (!c->max_rate_limit_duration_ms ||
	    now - b->rl_start_ms >
	    u2i(c->max_rate_limit_duration_ms)) {
		r->verdict = POL_V_DROP;
		r->reason = POL_R_RATE_LIMITED;
	} else {
		r->verdict = POL_V_RETRY;	/* not charged */
	}
}

static void set_why(const struct pol_outcome *o, bool limited, int64_t wait,
		    struct pol_result *r)
{
	const char *what = o->net == POL_NET_TIMEOUT ? "timeout"
						     : "network error";

	if (o->status > 0 && limited)
		snprintf(r->why, sizeof(r->why),
			 "HTTP %d, rate limited for %lld ms", o->status,
			 (long long)wait);
	else if (o->status > 0)
		snprintf(r->why, sizeof(r->why), "HTTP %d", o->status);
	else
		snprintf(r->why, sizeof(r->why), "%s", what);
}

void pol_on_response(struct pol_sink *s, const struct cfg_sink *c,
		     struct pol_batch *b, const struct pol_outcome *o,
		     int64_t now, uint32_t rnd, struct pol_result *r)
{
	bool probe = is_live_probe(s, b);
	bool live = b->epoch == s->epoch && (probe || s->state == POL_OK);
	/* An isolated batch's HTTP failures are its own (a poison body), not
	 * the upstream's; no answer at all, or its being the probe, still
	 * speaks for the upstream. */
	bool shield = b->isolated && !probe && o->status > 0;
	bool limited, healthy;
	int64_t sink_wait, wait;
	enum pol_class cls;

	memset(r, 0, sizeof(*r));
	if (probe)
		s->probe_out = false;
	b->probe = false;
	if (b->attempts < UINT32_MAX)
		b->attempts++;

	cls = o->status > 0 ? pol_classify(c, o->status, b->reauth_done)
			    : POL_C_RETRY;
	if (o->status > 0 && o->proto_cls && cls != POL_C_REAUTH &&
	    !has_override(c, o->status))
		cls = (enum pol_class)(o->proto_cls - 1);
	r->cls = cls;
	limited = rate_signal(s, c, o, cls, now, &sink_wait, &wait);
	r->wait_ms = wait;
	set_why(o, limited || sink_wait >= 0, wait, r);

	/* the batch */
	switch (cls) {
	case POL_C_ACCEPTED:
		r->verdict = POL_V_DELIVERED;
		b->rl_start_ms = 0;
		break;
	case POL_C_DROP:
		r->verdict = POL_V_DROP;
		r->reason = POL_R_REJECTED;
		break;
	case POL_C_SPLIT:
		if (b->nevents > 1) {
			r->verdict = POL_V_SPLIT;
		} else {
			/* one event: too large for a 413; otherwise (a
			 * status.NNN = split bisecting a rejection) the
			 * event itself was refused */
			r->verdict = POL_V_DROP;
			r->reason = o->status == 413 ? POL_R_TOO_LARGE
						     : POL_R_REJECTED;
		}
		break;
	case POL_C_REAUTH:
		r->verdict = POL_V_REAUTH;
		b->reauth_done = true;
		break;
	case POL_C_RETRY:
		if (limited) {
			limit_batch(b, c, now, r);
			break;
		}
		fail_batch(s, b, c, now, r);
		/* its own schedule, used once it is isolated */
		b->next_ms = add_ms(now, pol_backoff_delay(c, b->failures - 1,
							   rnd));
		/* a poison batch: halves, so its good events go */
		r->bisect = shield && r->verdict == POL_V_RETRY &&
			    b->nevents > 1;
		break;
	}

	/* the sink: an explicit limit first, then failure or health */
	healthy = cls != POL_C_RETRY || (limited && sink_wait < 0);
	if (sink_wait >= 0) {
		if (cls == POL_C_RETRY)
			halve(s, c);
		enter_rate_limited(s, now, sink_wait, r);
	} else if (!healthy && shield) {
		r->shielded = true;	/* the sink carries on */
	} else if (!healthy) {
		halve(s, c);
		if (live) {
			enter_backoff(s, c, now, rnd, r);
			/* this batch's failure set the sink's window */
			if (b->strikes < UINT32_MAX)
				b->strikes++;
		}
	} else if (probe) {
		recover(s, c, now, r);
	} else if (live) {
		ramp(s, c);
	}
	r->state = s->state;
	r->until_ms = s->until_ms;
}

/* ---- batch --------------------------------------------------------------- */

void pol_batch_init(struct pol_batch *b, uint64_t id, uint32_t nevents)
{
	memset(b, 0, sizeof(*b));
	b->id = id;
	b->nevents = nevents;
}

void pol_batch_split(const struct pol_batch *parent, struct pol_batch *half,
		     uint64_t id, uint32_t nevents)
{
	*half = *parent;
	half->id = id;
	half->nevents = nevents;
	half->probe = false;
	half->next_ms = 0;	/* a half goes at once */
}

uint32_t pol_retry_count(const struct pol_batch *b)
{
	return b->attempts;
}

enum pol_reason pol_batch_check(const struct pol_sink *s,
				const struct cfg_sink *c,
				const struct pol_batch *b, int64_t now)
{
	if (backoff_expired(s, c, b, now))
		return POL_R_EXPIRED;
	if (c->on_rate_limit == RL_HOLD && b->rl_start_ms &&
	    (!c->max_rate_limit_duration_ms ||
	     now - b->rl_start_ms >
	     u2i(c->max_rate_limit_duration_ms)))
		return POL_R_RATE_LIMITED;
	return POL_R_NONE;
}

/* ---- persistence: writing ------------------------------------------------ *
 *
 * One msgpack map:
 *   {"format": "outbox-policy", "version": 1,
 *    "sinks": [{"name": str, "state": "ok"|"backoff"|"rate_limited",
 *               "until": ms, "level": n, "rl_start": ms,
 *               "outage_start": ms, "rl_acc": ms (a duration),
 *               "recovered": ms, "flaps": n,
 *               "cats": [{"name": str, "until": ms}, ...]}, ...],
 *    "batches": [{"sink": str, "id": u64, "events": n, "attempts": n,
 *                 "failures": n, "first_failure": ms, "rl_start": ms,
 *                 "rl_base": ms (on the sink's rate-limit clock),
 *                 "strikes": n, "isolated": bool, "next": ms,
 *                 "reauth": bool}, ...]}
 * Times are wall-clock ms (the caller's monotonic times plus its wall
 * offset, see pol_save). Names are raw bytes (msgpack str), so any
 * sink name round-trips. Readers ignore keys they do not know.
 */

static void pk_str(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);

	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

static void pk_kv_i64(msgpack_packer *pk, const char *k, int64_t v)
{
	pk_str(pk, k);
	msgpack_pack_int64(pk, v);
}

/* a monotonic time to wall-clock ms for the file; 0 (none) stays 0 and
 * nothing set ever becomes 0 or negative (the reader wants >= 0) */
static int64_t to_wall(int64_t t, int64_t off)
{
	int64_t w;

	if (!t)
		return 0;
	if (__builtin_add_overflow(t, off, &w))
		w = off > 0 ? INT64_MAX : 1;
	return w > 0 ? w : 1;
}

/* and back: a time before the monotonic origin is negative, never 0 */
static int64_t from_wall(int64_t w, int64_t off)
{
	int64_t t;

	if (!w)
		return 0;
	if (__builtin_sub_overflow(w, off, &t))
		t = off > 0 ? INT64_MIN : INT64_MAX;
	return t ? t : -1;
}

static void pack_sink(msgpack_packer *pk, const struct pol_sink *s,
		      int64_t off)
{
	int i, n = s->ncats < POL_MAX_CATS ? s->ncats : POL_MAX_CATS;

	msgpack_pack_map(pk, 10);
	pk_str(pk, "name");
	pk_str(pk, s->name);
	pk_str(pk, "state");
	pk_str(pk, pol_state_name(s->state));
	pk_kv_i64(pk, "until", to_wall(s->until_ms, off));
	pk_kv_i64(pk, "level", s->level);
	pk_kv_i64(pk, "rl_start", to_wall(s->rl_start_ms, off));
	pk_kv_i64(pk, "outage_start", to_wall(s->outage_start_ms, off));
	pk_kv_i64(pk, "rl_acc", s->rl_acc_ms);	/* a duration */
	pk_kv_i64(pk, "recovered", to_wall(s->recovered_ms, off));
	pk_kv_i64(pk, "flaps", s->flaps);
	pk_str(pk, "cats");
	msgpack_pack_array(pk, (size_t)(n > 0 ? n : 0));
	for (i = 0; i < n; i++) {
		msgpack_pack_map(pk, 2);
		pk_str(pk, "name");
		pk_str(pk, s->cats[i].name);
		pk_kv_i64(pk, "until", to_wall(s->cats[i].until_ms, off));
	}
}

static void pack_batch(msgpack_packer *pk, const struct pol_saved_batch *sb,
		       int64_t off)
{
	const struct pol_batch *b = &sb->b;

	msgpack_pack_map(pk, 12);
	pk_str(pk, "sink");
	pk_str(pk, sb->sink);
	pk_str(pk, "id");
	msgpack_pack_uint64(pk, b->id);
	pk_kv_i64(pk, "events", b->nevents);
	pk_kv_i64(pk, "attempts", b->attempts);
	pk_kv_i64(pk, "failures", b->failures);
	pk_kv_i64(pk, "first_failure", to_wall(b->first_failure_ms, off));
	pk_kv_i64(pk, "rl_start", to_wall(b->rl_start_ms, off));
	pk_kv_i64(pk, "rl_base", b->rl_base_ms);	/* on the rl clock */
	pk_kv_i64(pk, "strikes", b->strikes);
	pk_kv_i64(pk, "next", to_wall(b->next_ms, off));
	pk_str(pk, "isolated");
	if (b->isolated)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
	pk_str(pk, "reauth");
	if (b->reauth_done)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* fsync of the directory holding path, so the rename is durable */
static int sync_dir_of(const char *path)
{
	char *dir = strdup(path), *slash;
	int fd, rc = 0;

	if (!dir)
		return -ENOMEM;
	slash = strrchr(dir, '/');
	if (!slash)
		strcpy(dir, ".");
	else if (slash == dir)
		dir[1] = '\0';
	else
		*slash = '\0';
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		rc = -errno;
	else if (fsync(fd) < 0)
		rc = -errno;
	if (fd >= 0)
		close(fd);
	free(dir);
	return rc;
}

static int write_atomic(const char *path, const char *buf, size_t len)
{
	size_t plen = strlen(path);
	char *tmp = malloc(plen + sizeof(".tmp.XXXXXX"));
	int fd, rc;

	if (!tmp)
		return -ENOMEM;
	memcpy(tmp, path, plen);
	memcpy(tmp + plen, ".tmp.XXXXXX", sizeof(".tmp.XXXXXX"));
	fd = mkostemp(tmp, O_CLOEXEC);	/* mode 0600 */
	if (fd < 0) {
		rc = -errno;
		free(tmp);
		return rc;
	}
	rc = write_all(fd, buf, len);
	if (!rc && fsync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && !rc)
		rc = -errno;
	if (!rc && rename(tmp, path) < 0)
		rc = -errno;
	if (rc)
		unlink(tmp);
	else
		rc = sync_dir_of(path);
	free(tmp);
	return rc;
}

int pol_save(const char *path, const struct pol_sink *sinks, int nsinks,
	     const struct pol_saved_batch *batches, size_t nbatches,
	     int64_t wall_off)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	size_t i;
	int rc;

	if (!path || nsinks < 0 || (nsinks && !sinks) ||
	    (nbatches && !batches))
		return -EINVAL;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 4);
	pk_str(&pk, "format");
	pk_str(&pk, POL_FILE_FORMAT);
	pk_kv_i64(&pk, "version", POL_FILE_VERSION);
	pk_str(&pk, "sinks");
	msgpack_pack_array(&pk, (size_t)nsinks);
	for (i = 0; i < (size_t)nsinks; i++)
		pack_sink(&pk, &sinks[i], wall_off);
	pk_str(&pk, "batches");
	msgpack_pack_array(&pk, nbatches);
	for (i = 0; i < nbatches; i++)
		pack_batch(&pk, &batches[i], wall_off);
	/* sbuffer_write aborts the packer on ENOMEM by leaving data NULL */
	if (!sb.data) {
		msgpack_sbuffer_destroy(&sb);
		return -ENOMEM;
	}
	rc = write_atomic(path, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
	return rc;
}

/* ---- persistence: reading ------------------------------------------------ */

static bool key_is(const msgpack_object *k, const char *name)
{
	size_t n = strlen(name);

	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
	       !memcmp(k->via.str.ptr, name, n);
}

/* a msgpack string into dst (cap incl. NUL): no NUL inside, not empty */
static int get_name(const msgpack_object *o, char *dst, size_t cap)
{
	if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 ||
	    o->via.str.size >= cap ||
	    memchr(o->via.str.ptr, '\0', o->via.str.size))
		return -EBADMSG;
	memcpy(dst, o->via.str.ptr, o->via.str.size);
	dst[o->via.str.size] = '\0';
	return 0;
}

static int get_i64(const msgpack_object *o, int64_t min, int64_t max,
		   int64_t *out)
{
	int64_t v;

	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		if (o->via.u64 > (uint64_t)INT64_MAX)
			return -EBADMSG;
		v = (int64_t)o->via.u64;
	} else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		v = o->via.i64;
	} else {
		return -EBADMSG;
	}
	if (v < min || v > max)
		return -EBADMSG;
	*out = v;
	return 0;
}

static int get_u32(const msgpack_object *o, uint32_t *out)
{
	int64_t v;

	if (get_i64(o, 0, UINT32_MAX, &v))
		return -EBADMSG;
	*out = (uint32_t)v;
	return 0;
}

static int get_state(const msgpack_object *o, enum pol_state *st)
{
	static const enum pol_state all[] = { POL_OK, POL_BACKOFF,
					      POL_RATE_LIMITED };
	unsigned i;

	for (i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		if (key_is(o, pol_state_name(all[i]))) {
			*st = all[i];
			return 0;
		}
	return -EBADMSG;
}

static int load_cats(const msgpack_object *o, struct pol_sink *s)
{
	uint32_t i, j;

	if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > POL_MAX_CATS)
		return -EBADMSG;
	for (i = 0; i < o->via.array.size; i++) {
		const msgpack_object *m = &o->via.array.ptr[i];
		struct pol_cat *cat = &s->cats[i];
		bool have_name = false;

		if (m->type != MSGPACK_OBJECT_MAP)
			return -EBADMSG;
		memset(cat, 0, sizeof(*cat));
		for (j = 0; j < m->via.map.size; j++) {
			const msgpack_object_kv *kv = &m->via.map.ptr[j];

			if (key_is(&kv->key, "name")) {
				if (get_name(&kv->val, cat->name,
					     sizeof(cat->name)))
					return -EBADMSG;
				have_name = true;
			} else if (key_is(&kv->key, "until")) {
				if (get_i64(&kv->val, 0, INT64_MAX,
					    &cat->until_ms))
					return -EBADMSG;
			}
		}
		if (!have_name)
			return -EBADMSG;
	}
	s->ncats = (int)o->via.array.size;
	return 0;
}

static int load_sink(const msgpack_object *m, struct pol_sink *s)
{
	bool have_name = false, have_state = false;
	int64_t level = 0;
	uint32_t i;
	int rc = 0;

	if (m->type != MSGPACK_OBJECT_MAP)
		return -EBADMSG;
	memset(s, 0, sizeof(*s));
	for (i = 0; i < m->via.map.size && !rc; i++) {
		const msgpack_object *k = &m->via.map.ptr[i].key;
		const msgpack_object *v = &m->via.map.ptr[i].val;

		if (key_is(k, "name")) {
			rc = get_name(v, s->name, sizeof(s->name));
			have_name = true;
		} else if (key_is(k, "state")) {
			rc = get_state(v, &s->state);
			have_state = true;
		} else if (key_is(k, "until")) {
			rc = get_i64(v, 0, INT64_MAX, &s->until_ms);
		} else if (key_is(k, "level")) {
			rc = get_i64(v, 0, UINT32_MAX, &level);
		} else if (key_is(k, "rl_start")) {
			rc = get_i64(v, 0, INT64_MAX, &s->rl_start_ms);
		} else if (key_is(k, "outage_start")) {
			rc = get_i64(v, 0, INT64_MAX, &s->outage_start_ms);
		} else if (key_is(k, "rl_acc")) {
			rc = get_i64(v, 0, INT64_MAX, &s->rl_acc_ms);
		} else if (key_is(k, "recovered")) {
			rc = get_i64(v, 0, INT64_MAX, &s->recovered_ms);
		} else if (key_is(k, "flaps")) {
			rc = get_u32(v, &s->flaps);
		} else if (key_is(k, "cats")) {
			rc = load_cats(v, s);
		}
	}
	if (rc || !have_name || !have_state)
		return -EBADMSG;
	s->level = (uint32_t)level;
	if (s->state == POL_OK)
		s->until_ms = 0;
	return 0;
}

static int load_batch(const msgpack_object *m, struct pol_saved_batch *sb)
{
	struct pol_batch *b = &sb->b;
	bool have_sink = false, have_id = false;
	uint32_t i;
	int rc = 0;

	if (m->type != MSGPACK_OBJECT_MAP)
		return -EBADMSG;
	memset(sb, 0, sizeof(*sb));
	for (i = 0; i < m->via.map.size && !rc; i++) {
		const msgpack_object *k = &m->via.map.ptr[i].key;
		const msgpack_object *v = &m->via.map.ptr[i].val;

		if (key_is(k, "sink")) {
			rc = get_name(v, sb->sink, sizeof(sb->sink));
			have_sink = true;
		} else if (key_is(k, "id")) {
			if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
				rc = -EBADMSG;
			else
				b->id = v->via.u64;
			have_id = true;
		} else if (key_is(k, "events")) {
			rc = get_u32(v, &b->nevents);
		} else if (key_is(k, "attempts")) {
			rc = get_u32(v, &b->attempts);
		} else if (key_is(k, "failures")) {
			rc = get_u32(v, &b->failures);
		} else if (key_is(k, "first_failure")) {
			rc = get_i64(v, 0, INT64_MAX, &b->first_failure_ms);
		} else if (key_is(k, "rl_start")) {
			rc = get_i64(v, 0, INT64_MAX, &b->rl_start_ms);
		} else if (key_is(k, "rl_base")) {
			rc = get_i64(v, 0, INT64_MAX, &b->rl_base_ms);
		} else if (key_is(k, "strikes")) {
			rc = get_u32(v, &b->strikes);
		} else if (key_is(k, "next")) {
			rc = get_i64(v, 0, INT64_MAX, &b->next_ms);
		} else if (key_is(k, "isolated")) {
			if (v->type != MSGPACK_OBJECT_BOOLEAN)
				rc = -EBADMSG;
			else
				b->isolated = v->via.boolean;
		} else if (key_is(k, "reauth")) {
			if (v->type != MSGPACK_OBJECT_BOOLEAN)
				rc = -EBADMSG;
			else
				b->reauth_done = v->via.boolean;
		}
	}
	if (rc || !have_sink || !have_id)
		return -EBADMSG;
	return 0;
}

static int read_file(const char *path, char **buf, size_t *len)
{
	struct stat st;
	size_t got = 0;
	int fd, rc = 0;
	char *p;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = -EBADMSG;
		goto out;
	}
	if ((uint64_t)st.st_size > POL_FILE_MAX) {
		rc = -EFBIG;
		goto out;
	}
	p = malloc((size_t)st.st_size + 1);
	if (!p) {
		rc = -ENOMEM;
		goto out;
	}
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, p + got, (size_t)st.st_size - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			rc = r < 0 ? -errno : -EBADMSG;	/* shrank under us */
			free(p);
			goto out;
		}
		got += (size_t)r;
	}
	*buf = p;
	*len = got;
out:
	close(fd);
	return rc;
}

/* the parsed file, before anything is applied */
struct loaded {
	struct pol_sink *sinks;
	size_t nsinks;
	struct pol_saved_batch *batches;
	size_t nbatches;
};

static int parse_top(const msgpack_object *top, struct loaded *l)
{
	const msgpack_object *sinks = NULL, *batches = NULL;
	bool fmt = false, ver = false;
	uint32_t i;

	if (top->type != MSGPACK_OBJECT_MAP)
		return -EBADMSG;
	for (i = 0; i < top->via.map.size; i++) {
		const msgpack_object *k = &top->via.map.ptr[i].key;
		const msgpack_object *v = &top->via.map.ptr[i].val;
		int64_t n;

		if (key_is(k, "format"))
			fmt = key_is(v, POL_FILE_FORMAT);
		else if (key_is(k, "version"))
			ver = !get_i64(v, 0, INT64_MAX, &n) &&
			      n == POL_FILE_VERSION;
		else if (key_is(k, "sinks"))
			sinks = v;
		else if (key_is(k, "batches"))
			batches = v;
	}
	if (!fmt || !ver || !sinks || sinks->type != MSGPACK_OBJECT_ARRAY ||
	    (batches && batches->type != MSGPACK_OBJECT_ARRAY))
		return -EBADMSG;
	if (sinks->via.array.size) {
		l->sinks = calloc(sinks->via.array.size, sizeof(*l->sinks));
		if (!l->sinks)
			return -ENOMEM;
	}
	for (i = 0; i < sinks->via.array.size; i++, l->nsinks++)
		if (load_sink(&sinks->via.array.ptr[i], &l->sinks[i]))
			return -EBADMSG;
	if (!batches || !batches->via.array.size)
		return 0;
	l->batches = calloc(batches->via.array.size, sizeof(*l->batches));
	if (!l->batches)
		return -ENOMEM;
	for (i = 0; i < batches->via.array.size; i++, l->nbatches++)
		if (load_batch(&batches->via.array.ptr[i], &l->batches[i]))
			return -EBADMSG;
	return 0;
}

/* copies the persistent part; the in-flight part starts afresh */
static void apply_sink(struct pol_sink *dst, const struct pol_sink *src)
{
	dst->state = src->state;
	dst->until_ms = src->until_ms;
	dst->level = src->level;
	dst->rl_start_ms = src->rl_start_ms;
	dst->outage_start_ms = src->outage_start_ms;
	dst->rl_acc_ms = src->rl_acc_ms;
	dst->recovered_ms = src->recovered_ms;
	dst->flaps = src->flaps;
	dst->last_summary_ms = 0;
	dst->ncats = src->ncats;
	memcpy(dst->cats, src->cats, sizeof(dst->cats));
	dst->epoch++;		/* nothing in flight survives a restart */
	dst->probe_out = false;
	dst->limit = 0;
	dst->round_ok = 0;
}

/* the file's wall-clock times onto this process's monotonic clock */
static void loaded_to_mono(struct loaded *l, int64_t off)
{
	size_t i;
	int k;

	for (i = 0; i < l->nsinks; i++) {
		struct pol_sink *s = &l->sinks[i];

		s->until_ms = from_wall(s->until_ms, off);
		s->rl_start_ms = from_wall(s->rl_start_ms, off);
		s->outage_start_ms = from_wall(s->outage_start_ms, off);
		s->recovered_ms = from_wall(s->recovered_ms, off);
		for (k = 0; k < s->ncats && k < POL_MAX_CATS; k++)
			s->cats[k].until_ms = from_wall(s->cats[k].until_ms,
							off);
	}
	for (i = 0; i < l->nbatches; i++) {
		struct pol_batch *b = &l->batches[i].b;

		b->first_failure_ms = from_wall(b->first_failure_ms, off);
		b->rl_start_ms = from_wall(b->rl_start_ms, off);
		b->next_ms = from_wall(b->next_ms, off);
	}
}

int pol_load(const char *path, struct pol_sink *sinks, int nsinks,
	     struct pol_saved_batch **batches, size_t *nbatches,
	     int64_t wall_off)
{
	struct loaded l = { 0 };
	msgpack_unpacked up;
	size_t len = 0, off = 0;
	char *buf = NULL;
	size_t i;
	int rc, j;

	if (batches)
		*batches = NULL;
	if (nbatches)
		*nbatches = 0;
	if (!path || nsinks < 0 || (nsinks && !sinks))
		return -EINVAL;
	rc = read_file(path, &buf, &len);
	if (rc)
		return rc;
	rc = mp_check((const unsigned char *)buf, len) == 0 ? 0 : -EBADMSG;
	if (rc) {
		free(buf);
		return rc;
	}
	msgpack_unpacked_init(&up);
	switch (msgpack_unpack_next(&up, buf, len, &off)) {
	case MSGPACK_UNPACK_SUCCESS:
		/* trailing bytes: a torn or foreign file */
		rc = off == len ? parse_top(&up.data, &l) : -EBADMSG;
		break;
	case MSGPACK_UNPACK_NOMEM_ERROR:
		rc = -ENOMEM;
		break;
	default:
		rc = -EBADMSG;
		break;
	}
	msgpack_unpacked_destroy(&up);
	free(buf);
	if (rc)
		goto out;
	loaded_to_mono(&l, wall_off);
	/* valid as a whole: apply, by name; later duplicates win */
	for (i = 0; i < l.nsinks; i++)
		for (j = 0; j < nsinks; j++)
			if (!strcmp(sinks[j].name, l.sinks[i].name))
				apply_sink(&sinks[j], &l.sinks[i]);
	if (batches && nbatches) {
		*batches = l.batches;
		*nbatches = l.nbatches;
		l.batches = NULL;
	}
out:
	free(l.sinks);
	free(l.batches);
	return rc;
}
