/* top.c - `outbox top`: a live view of one segment, like varnishstat or
 * htop. Every interval it takes a snapshot of the stats, sink and slot
 * pages (metrics.h, the same reader as `outbox stat` and /metrics) and
 * shows the rates per second since the previous one.
 *
 * The columns and the drop reasons come from the counter tables
 * (mx_global, mx_sink) by role, so a counter added there shows up here
 * without an edit. Like stat, top only reads the segment and never takes
 * a producer slot; everything it prints from shm (sink and category
 * names) is clamped and made printable.
 *
 * Keys: q quit, p pause, + / - change the interval.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <locale.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curses.h>

#include "tool.h"

#define NS_PER_S       UINT64_C(1000000000)
#define NS_PER_MS      UINT64_C(1000000)
#define DEFAULT_IVL_MS 1000
#define MIN_IVL_MS     100
#define MAX_IVL_MS     60000
#define NAME_W         14

static const char usage_top[] =
"usage: outbox top [-s SHM] [-d SECONDS]\n"
"  A live view of the broker: ring fill, event rates, spool backlog,\n"
"  each sink's rates and state (with the time left in a backoff or rate\n"
"  limit window), drops by reason, and each producer's rates.\n"
"  -s, --shm SHM         shm name (default $OUTBOX_SHM, else outbox)\n"
"  -d, --delay SECONDS   refresh interval (default 1, at least 0.1)\n"
"  Keys: q quit, p pause/resume, + / - double / halve the interval.\n";

struct top {
	const char *shm;
	struct seg seg;
	struct mx_snap cur, prev;
	int have_prev, paused;
	uint64_t ivl_ms;
	double dt;                  /* seconds between prev and cur */
	int row;                    /* next screen row */
};

/* ---- numbers ------------------------------------------------------------- */

/* 7, 12.5, 3.4k, 12.0M: fits 7 columns */
static void fmt_num(char *out, size_t len, double v, int decimals)
{
	static const char sfx[] = "kMGTP";
	int u = -1;

	if (v < 0)
		v = 0;
	if (v < 10000) {
		snprintf(out, len, "%.*f", decimals, v);
		return;
	}
	while (v >= 1000 && u < 4) {
		v /= 1000;
		u++;
	}
	snprintf(out, len, "%.1f%c", v, sfx[u]);
}

static double rate(const struct top *t, uint64_t now, uint64_t before)
{
	if (!t->have_prev || t->dt <= 0 || now < before)
		return 0;
	return (double)(now - before) / t->dt;
}

/* a rate column: "-" until there are two snapshots */
static void fmt_rate(const struct top *t, char *out, size_t len,
		     uint64_t now, uint64_t before)
{
	if (!t->have_prev)
		snprintf(out, len, "-");
	else
		fmt_num(out, len, rate(t, now, before), 1);
}

/* Printable ASCII copy of a name from shm. */
static void printable(char *s)
{
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e)
			*s = '?';
}

/* ---- sums over the tables, by role --------------------------------------- */

static uint64_t sum_role(const struct mx_ctr *tab, size_t n,
			 const void *base, unsigned roles)
{
	uint64_t v = 0;
	size_t i;

	for (i = 0; i < n; i++)
		if (roles & (1u << tab[i].role))
			v += mx_get(base, &tab[i]);
	return v;
}

static uint64_t sink_key(const struct obx_sink_shm *k, const char *key)
{
	size_t i;

	for (i = 0; i < mx_nsink; i++)
		if (!strcmp(mx_sink[i].key, key))
			return mx_get(&k->c, &mx_sink[i]);
	return 0;
}

#define R(x) (1u << (x))
/* events that reached a sink: now queued, delivered or dropped */
#define SINK_IN  (R(MX_QUEUE) | R(MX_DONE) | R(MX_DROP) | R(MX_PART))
#define SINK_DROPS (R(MX_DROP) | R(MX_PART))

/* The same sink in the previous snapshot (by name), or NULL. */
static const struct obx_sink_shm *prev_sink(const struct top *t,
					    const struct obx_sink_shm *k)
{
	uint32_t i;

	if (!t->have_prev)
		return NULL;
	for (i = 0; i < t->prev.nsinks; i++) {
		const struct obx_sink_shm *o = &t->prev.kp->sink[i];

		if (o->in_use && !strncmp(o->name, k->name, OBX_NAME_MAX))
			return o;
	}
	return NULL;
}

/* ---- drawing --------------------------------------------------------------- */

static void line(struct top *t, int attr, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void line(struct top *t, int attr, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (t->row >= LINES)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (attr)
		attron(attr);
	mvaddnstr(t->row, 0, buf, COLS);
	if (attr)
		attroff(attr);
	t->row++;
}

static void draw_header(struct top *t)
{
	const struct mx_snap *s = &t->cur;
	uint64_t now = tool_now_ns(CLOCK_REALTIME);
	char up[32], beat[32], clock[32];
	time_t tt = (time_t)(now / NS_PER_S);
	struct tm tm;

	localtime_r(&tt, &tm);
	strftime(clock, sizeof(clock), "%H:%M:%S", &tm);
	if (!s->alive) {
		line(t, A_BOLD, "outbox top  /dev/shm/%s  broker NOT RUNNING "
		     "(%s)%*s", t->seg.name, s->why_dead, 4, clock);
		return;
	}
	tool_fmt_dur(up, sizeof(up), s->boot_ns && now > s->boot_ns ?
		     now - s->boot_ns : 0);
	tool_fmt_rel(beat, sizeof(beat), s->beat_ns, now);
	line(t, A_BOLD, "outbox top  /dev/shm/%s  broker pid %u, up %s, "
	     "heartbeat %s    %s%s", t->seg.name, s->broker_pid, up, beat,
	     clock, t->paused ? "  [paused]" : "");
}

static void draw_ring(struct top *t)
{
	const struct mx_snap *s = &t->cur, *p = &t->prev;
	uint64_t used = mx_ring_used(s), size = t->seg.g.ring_size;
	char bar[41], a[32], b[32], em[16], co[16], de[16], dr[16];
	double fill = size ? (double)used / (double)size : 0;
	int i, n = (int)(fill * 40 + 0.5);

	for (i = 0; i < 40; i++)
		bar[i] = i < n ? '#' : '.';
	bar[40] = 0;
	tool_fmt_bytes(a, sizeof(a), used);
	tool_fmt_bytes(b, sizeof(b), size);
	line(t, 0, "ring    [%s] %5.1f%%  %s of %s, %u producer%s", bar,
	     fill * 100, a, b, s->nprods, s->nprods == 1 ? "" : "s");
	fmt_rate(t, em, sizeof(em), s->g.emitted, p->g.emitted);
	fmt_rate(t, co, sizeof(co), s->g.consumed, p->g.consumed);
	fmt_rate(t, de, sizeof(de), s->delivered, p->delivered);
	fmt_rate(t, dr, sizeof(dr), s->dropped, p->dropped);
	line(t, 0, "events  emitted %s/s  consumed %s/s  delivered %s/s  "
	     "dropped %s/s", em, co, de, dr);
	tool_fmt_bytes(a, sizeof(a), s->g.spool_bytes);
	fmt_num(em, sizeof(em), (double)s->queued, 0);
	line(t, 0, "spool   %s in %" PRIu64 " segment%s, %s events queued    "
	     "identity %s", a, s->g.spool_segments,
	     s->g.spool_segments == 1 ? "" : "s", em,
	     s->identity_ok ? "ok" : "not settled (events in flight)");
}

/* "backoff 12.3s left", "rate_limited 4m02s left", "ok" */
static void sink_state(const struct obx_sink_shm *k, uint64_t now, char *out,
		       size_t len)
{
	char d[32];

	if (k->state == OBX_SINK_OK || !k->until_ns) {
		snprintf(out, len, "%s", mx_state_name(k->state));
		return;
	}
	tool_fmt_dur(d, sizeof(d), k->until_ns > now ? k->until_ns - now : 0);
	snprintf(out, len, "%s %s left", mx_state_name(k->state), d);
}

/* Sink i's drops by data category (sentry), totals. */
static void draw_cat_drops(struct top *t, uint32_t i)
{
	char cat[OBX_CAT_MAX + 1], tot[16];
	const char *reason;
	uint32_t j, k;
	uint64_t n;

	for (j = 0; j < mx_ncat_drops(&t->cur); j++) {
		if (mx_cat_drop(&t->cur, j, &k, cat, sizeof(cat), &reason,
				&n) || k != i)
			continue;
		printable(cat);
		fmt_num(tot, sizeof(tot), (double)n, 0);
		line(t, 0, "%-*s   category %s: %s dropped (%s)", NAME_W, "",
		     cat, tot, reason);
	}
}

static void draw_sinks(struct top *t)
{
	const struct mx_snap *s = &t->cur;
	uint64_t now = tool_now_ns(CLOCK_REALTIME);
	char name[OBX_NAME_MAX + 8], st[64], in[16], out[16], rq[16], dr[16],
	     q[16], cat[OBX_CAT_MAX + 1], d[32];
	uint32_t i, c;

	t->row++;
	line(t, A_REVERSE, "%-*s %-24s %8s %8s %7s %7s %8s %4s", NAME_W,
	     "SINK", "STATE", "IN/s", "OUT/s", "REQ/s", "DROP/s", "QUEUED",
	     "INFL");
	for (i = 0; i < s->nsinks; i++) {
		const struct obx_sink_shm *k = &s->kp->sink[i];
		const struct obx_sink_shm *o = prev_sink(t, k);
		struct obx_sink_shm zero;

		if (!k->in_use)
			continue;
		if (!o) {
			memset(&zero, 0, sizeof(zero));
			o = &zero;
		}
		mx_sink_name(s, i, name, sizeof(name));
		printable(name);
		sink_state(k, now, st, sizeof(st));
		fmt_rate(t, in, sizeof(in),
			 sum_role(mx_sink, mx_nsink, &k->c, SINK_IN),
			 sum_role(mx_sink, mx_nsink, &o->c, SINK_IN));
		fmt_rate(t, out, sizeof(out),
			 sum_role(mx_sink, mx_nsink, &k->c, R(MX_DONE)),
			 sum_role(mx_sink, mx_nsink, &o->c, R(MX_DONE)));
		fmt_rate(t, rq, sizeof(rq), sink_key(k, "requests"),
			 sink_key(o, "requests"));
		fmt_rate(t, dr, sizeof(dr),
			 sum_role(mx_sink, mx_nsink, &k->c, SINK_DROPS),
			 sum_role(mx_sink, mx_nsink, &o->c, SINK_DROPS));
		fmt_num(q, sizeof(q), (double)sum_role(mx_sink, mx_nsink,
			&k->c, R(MX_QUEUE)), 0);
		line(t, k->state != OBX_SINK_OK ? A_BOLD : 0,
		     "%-*.*s %-24s %8s %8s %7s %7s %8s %4" PRIu64, NAME_W,
		     NAME_W, name, st, in, out, rq, dr, q,
		     sink_key(k, "inflight"));
		for (c = 0; c < k->ncats && c < OBX_MAX_CATS; c++) {
			mx_shm_str(cat, sizeof(cat), k->cats[c], OBX_CAT_MAX);
			printable(cat);
			tool_fmt_dur(d, sizeof(d), k->cat_until_ns[c] > now ?
				     k->cat_until_ns[c] - now : 0);
			line(t, 0, "%-*s   category %s limited, %s left",
			     NAME_W, "", cat, d);
		}
		draw_cat_drops(t, i);
	}
}

/* Drops by reason: the global reasons, then each sink reason summed
 * over the sinks; only reasons that ever dropped something. */
static void draw_drops(struct top *t)
{
	const struct mx_snap *s = &t->cur, *p = &t->prev;
	char tot[16], r[16], label[64];
	int shown = 0;
	size_t i;

	t->row++;
	line(t, A_REVERSE, "%-32s %12s %10s", "DROPS BY REASON", "TOTAL",
	     "/s");
	for (i = 0; i < mx_nglobal; i++) {
		const struct mx_ctr *c = &mx_global[i];
		uint64_t v = mx_get(&s->g, c);

		if (c->role != MX_DROP || !v)
			continue;
		snprintf(label, sizeof(label), "%s", c->lval ? c->lval :
			 c->key);
		fmt_num(tot, sizeof(tot), (double)v, 0);
		fmt_rate(t, r, sizeof(r), v, t->have_prev ? mx_get(&p->g, c) :
			 0);
		line(t, 0, "%-32s %12s %10s", label, tot, r);
		shown++;
	}
	for (i = 0; i < mx_nsink; i++) {
		const struct mx_ctr *c = &mx_sink[i];
		uint64_t v = 0, o = 0;
		uint32_t k;

		if (c->role != MX_DROP)
			continue;
		for (k = 0; k < s->nsinks; k++)
			if (s->kp->sink[k].in_use)
				v += mx_get(&s->kp->sink[k].c, c);
		for (k = 0; t->have_prev && k < p->nsinks; k++)
			if (p->kp->sink[k].in_use)
				o += mx_get(&p->kp->sink[k].c, c);
		if (!v)
			continue;
		snprintf(label, sizeof(label), "sink %s", c->lval ? c->lval :
			 c->key);
		fmt_num(tot, sizeof(tot), (double)v, 0);
		fmt_rate(t, r, sizeof(r), v, o);
		line(t, 0, "%-32s %12s %10s", label, tot, r);
		shown++;
	}
	if (!shown)
		line(t, 0, "(none)");
}

static const struct mx_prod *prev_prod(const struct top *t,
				       const struct mx_prod *p)
{
	uint32_t i;

	for (i = 0; t->have_prev && i < t->prev.nprods; i++)
		if (t->prev.prods[i].slot == p->slot &&
		    t->prev.prods[i].pid == p->pid)
			return &t->prev.prods[i];
	return NULL;
}

static void draw_producers(struct top *t)
{
	const struct mx_snap *s = &t->cur;
	static const struct mx_prod none;
	char er[16], dr[16], e[16], d[16];
	uint32_t i;

	t->row++;
	line(t, A_REVERSE, "%-10s %6s %10s %10s %12s %12s", "PRODUCER",
	     "SLOT", "EMIT/s", "DROP/s", "EMITTED", "DROPPED");
	for (i = 0; i < s->nprods; i++) {
		const struct mx_prod *p = &s->prods[i];
		const struct mx_prod *o = prev_prod(t, p);

		if (t->row >= LINES - 2 && i + 1 < s->nprods) {
			line(t, 0, "... %u more", s->nprods - i);
			break;
		}
		if (!o)
			o = &none;
		fmt_rate(t, er, sizeof(er), p->emitted, o->emitted);
		fmt_rate(t, dr, sizeof(dr), p->dropped, o->dropped);
		fmt_num(e, sizeof(e), (double)p->emitted, 0);
		fmt_num(d, sizeof(d), (double)p->dropped, 0);
		line(t, 0, "%-10u %6u %10s %10s %12s %12s", p->pid, p->slot,
		     er, dr, e, d);
	}
	if (!s->nprods)
		line(t, 0, "(no live producer)");
}

static void draw(struct top *t)
{
	erase();
	t->row = 0;
	draw_header(t);
	draw_ring(t);
	draw_sinks(t);
	draw_drops(t);
	draw_producers(t);
	if (LINES > 0) {
		attron(A_REVERSE);
		mvprintw(LINES - 1, 0, "q quit  p pause  +/- interval "
			 "(%.1fs)", (double)t->ivl_ms / 1000);
		attroff(A_REVERSE);
	}
	refresh();
}

/* ---- the loop ---------------------------------------------------------------- */

/* A new snapshot; the old one becomes prev. 0 or -ENOMEM. */
static int sample(struct top *t)
{
	struct mx_snap n;
	int rc = mx_snap_take(&n, &t->seg);

	if (rc == -ENOMEM)
		return rc;
	if (t->cur.kp) {
		mx_snap_free(&t->prev);
		t->prev = t->cur;
		t->have_prev = 1;
	}
	t->cur = n;
	t->dt = t->have_prev ? (double)(t->cur.taken_ns -
					t->prev.taken_ns) / 1e9 : 0;
	return 0;
}

/* Waits for a key for up to ms; 1 when the user quit. */
static int keys(struct top *t, uint64_t ms)
{
	uint64_t end = tool_now_ns(CLOCK_MONOTONIC) + ms * NS_PER_MS, now;
	int ch;

	while ((now = tool_now_ns(CLOCK_MONOTONIC)) < end) {
		timeout((int)((end - now) / NS_PER_MS) + 1);
		ch = getch();
		switch (ch) {
		case 'q':
		case 'Q':
			return 1;
		case 'p':
		case ' ':
			t->paused = !t->paused;
			draw(t);
			break;
		case '+':
			if (t->ivl_ms * 2 <= MAX_IVL_MS)
				t->ivl_ms *= 2;
			draw(t);
			break;
		case '-':
			if (t->ivl_ms / 2 >= MIN_IVL_MS)
				t->ivl_ms /= 2;
			draw(t);
			break;
		case KEY_RESIZE:
			draw(t);
			break;
		default:
			break;
		}
	}
	return 0;
}

static int parse_delay(const char *s, uint64_t *ms)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || v * 1000 < MIN_IVL_MS ||
	    v * 1000 > MAX_IVL_MS)
		return -1;
	*ms = (uint64_t)(v * 1000 + 0.5);
	return 0;
}

static int top_run(struct top *t)
{
	SCREEN *scr;

	if (!isatty(STDOUT_FILENO) || !isatty(STDIN_FILENO)) {
		fprintf(stderr, "outbox top: needs a terminal (use `outbox "
			"stat` or `outbox stat --json` in scripts)\n");
		return 1;
	}
	scr = newterm(NULL, stdout, stdin);
	if (!scr) {
		fprintf(stderr, "outbox top: cannot use the terminal '%s'\n",
			getenv("TERM") ? getenv("TERM") : "(TERM unset)");
		return 1;
	}
	cbreak();
	noecho();
	curs_set(0);
	keypad(stdscr, TRUE);
	for (;;) {
		if (!t->paused && sample(t) < 0)
			break;
		draw(t);
		if (keys(t, t->ivl_ms))
			break;
	}
	endwin();
	delscreen(scr);
	return 0;
}

int cmd_top(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "shm", required_argument, NULL, 's' },
		{ "delay", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct top t;
	const char *shm = NULL;
	int c, rc;

	memset(&t, 0, sizeof(t));
	t.ivl_ms = DEFAULT_IVL_MS;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":s:d:h", lo, NULL)) != -1) {
		switch (c) {
		case 's':
			shm = optarg;
			break;
		case 'd':
			if (parse_delay(optarg, &t.ivl_ms) < 0) {
				fprintf(stderr, "outbox: -d: bad interval "
					"'%s' (seconds, 0.1 to 60)\n%s",
					optarg, usage_top);
				return TOOL_EXIT_USAGE;
			}
			break;
		case 'h':
			fputs(usage_top, stdout);
			return 0;
		default:
			fprintf(stderr, "outbox: %s '%s'\n%s", c == ':' ?
				"option needs an argument:" :
				"unknown option", argv[optind - 1], usage_top);
			return TOOL_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "outbox: unexpected argument '%s'\n%s",
			argv[optind], usage_top);
		return TOOL_EXIT_USAGE;
	}
	setlocale(LC_ALL, "");
	t.shm = tool_shm_name(shm);
	if (tool_attach("top", t.shm, &t.seg) < 0)
		return 1;
	rc = top_run(&t);
	mx_snap_free(&t.cur);
	mx_snap_free(&t.prev);
	seg_detach(&t.seg);
	return rc;
}
