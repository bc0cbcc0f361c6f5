/* outbox.c - the outbox command line tool.
 *
 *   outbox emit   [-s SHM] [--sink NAME] [--type TYPE] [JSON | -]
 *   outbox stat   [-s SHM] [--json | --prometheus]
 *   outbox status [-s SHM]
 *   outbox top    [-s SHM] [-d SECONDS]     (tools/top.c)
 *   outbox spool  ls|verify|dump [-d DIR] [--sink NAME]
 *
 * emit is an ordinary producer (liboutbox). stat and status only read the
 * segment: they attach with seg_attach() and never take a producer slot,
 * so looking at a busy host does not change what is being looked at.
 * Every shm page is read under its seqlock and every value that bounds a
 * loop (sink count, name lengths) is clamped: the segment is shared with
 * any process that can open it, and a broken one must not crash the tool
 * an operator uses to find out what is wrong.
 *
 * The counters, their names and the Prometheus text come from one table
 * (broker/metrics.c), shared with the broker's /metrics endpoint. JSON is
 * read and written with jansson only (see broker/json.c).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "outbox.h"
#include "buf.h"
#include "envelope.h"
#include "json.h"
#include "metrics.h"
#include "segment.h"
#include "slots.h"
#include "spool_format.h"
#include "tool.h"

#define EXIT_USAGE       TOOL_EXIT_USAGE
#define DEFAULT_SHM      "outbox"
#define DEFAULT_SPOOL    "./outbox-spool"
#define DEFAULT_TYPE     "event"
#define JSON_IN_FLAGS    (JSON_DECODE_ANY | JSON_ALLOW_NUL)
#define NS_PER_S         UINT64_C(1000000000)
#define NS_PER_MS        UINT64_C(1000000)
#define BEAT_STALE_NS    (5 * NS_PER_S) /* broker heartbeat: every 1 s */
#define EMIT_REPORT_MAX  10             /* drop messages before summing up */

/* ---- small helpers ----------------------------------------------------- */

uint64_t tool_now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

const char *tool_shm_name(const char *opt)
{
	const char *e;

	if (opt && *opt)
		return opt;
	e = getenv("OUTBOX_SHM");
	return e && *e ? e : DEFAULT_SHM;
}

/* RFC 3339: UTC with milliseconds ("...T10:00:03.250Z"), or local time
 * with its offset ("...T12:00:03+02:00"). */
void tool_fmt_time(char *out, size_t len, uint64_t ns, int local)
{
	time_t t = (time_t)(ns / NS_PER_S);
	struct tm tm;
	char tz[8];
	size_t n;

	if (!(local ? localtime_r(&t, &tm) : gmtime_r(&t, &tm))) {
		snprintf(out, len, "?");
		return;
	}
	n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!local) {
		snprintf(out + n, len - n, ".%03uZ",
			 (unsigned)(ns / NS_PER_MS % 1000));
		return;
	}
	/* strftime's %z is +0200; RFC 3339 wants +02:00 */
	if (strftime(tz, sizeof(tz), "%z", &tm) == 5)
		snprintf(out + n, len - n, "%.3s:%.2s", tz, tz + 3);
}

/* A duration for people: 850ms, 4.2s, 12s, 3m12s, 2h05m, 3d04h. */
void tool_fmt_dur(char *out, size_t len, uint64_t ns)
{
	uint64_t s = ns / NS_PER_S;

	if (ns < NS_PER_S)
		snprintf(out, len, "%" PRIu64 "ms", ns / NS_PER_MS);
	else if (s < 10)
		snprintf(out, len, "%" PRIu64 ".%" PRIu64 "s", s,
			 ns / (NS_PER_S / 10) % 10);
	else if (s < 60)
		snprintf(out, len, "%" PRIu64 "s", s);
	else if (s < 3600)
		snprintf(out, len, "%" PRIu64 "m%02" PRIu64 "s", s / 60,
			 s % 60);
	else if (s < 86400)
		snprintf(out, len, "%" PRIu64 "h%02" PRIu64 "m", s / 3600,
			 s / 60 % 60);
	else
		snprintf(out, len, "%" PRIu64 "d%02" PRIu64 "h", s / 86400,
			 s / 3600 % 24);
}

/* "in 12s" / "3s ago" relative to now (CLOCK_REALTIME ns) */
void tool_fmt_rel(char *out, size_t len, uint64_t when, uint64_t now)
{
	char d[32];

	if (when >= now) {
		tool_fmt_dur(d, sizeof(d), when - now);
		snprintf(out, len, "in %s", d);
	} else {
		tool_fmt_dur(d, sizeof(d), now - when);
		snprintf(out, len, "%s ago", d);
	}
}

void tool_fmt_bytes(char *out, size_t len, uint64_t b)
{
	static const char *unit[] = { "KiB", "MiB", "GiB", "TiB" };
	double v = (double)b;
	int u = -1;

	if (b < 1024) {
		snprintf(out, len, "%" PRIu64 " B", b);
		return;
	}
	while (v >= 1024 && u < 3) {
		v /= 1024;
		u++;
	}
	snprintf(out, len, "%.1f %s", v, unit[u]);
}

/* Attaches without registering a producer. 0, or -errno after saying why
 * on stderr. */
int tool_attach(const char *cmd, const char *name, struct seg *s)
{
	char why[256] = "";
	int rc = seg_attach(s, name, why, sizeof(why));

	if (rc == -ENOENT)
		fprintf(stderr, "outbox %s: no outbox segment /dev/shm/%s: "
			"no broker has run with this shm name (start outboxd, "
			"or pick the name with -s / OUTBOX_SHM)\n", cmd, name);
	else if (rc < 0)
		fprintf(stderr, "outbox %s: cannot attach to /dev/shm/%s: "
			"%s\n", cmd, name, why[0] ? why : strerror(-rc));
	return rc;
}

/* ---- snapshot of the segment (stat, status, top) ----------------------- */

/* Attaches to the segment and takes a snapshot of its pages (metrics.h):
 * 0, or -errno after a message. A torn snapshot (a page stayed locked)
 * is kept, with a warning, and sn->torn set. */
int tool_snap_take(const char *cmd, const char *name, struct seg *seg,
		   struct mx_snap *sn)
{
	int rc;

	memset(seg, 0, sizeof(*seg));
	seg->fd = -1;
	rc = tool_attach(cmd, name, seg);
	if (rc < 0)
		return rc;
	rc = mx_snap_take(sn, seg);
	if (rc == -ENOMEM) {
		fprintf(stderr, "outbox %s: out of memory\n", cmd);
		seg_detach(seg);
		return rc;
	}
	if (rc < 0)
		fprintf(stderr, "outbox %s: a counter page of /dev/shm/%s "
			"stayed locked for 1 s (broker stuck mid-update?): "
			"values may be inconsistent\n", cmd, name);
	return 0;
}

void tool_snap_free(struct seg *seg, struct mx_snap *sn)
{
	mx_snap_free(sn);
	seg_detach(seg);
}

static const struct obx_sink_shm *snap_sink(const struct mx_snap *sn,
					    uint32_t i)
{
	return &sn->kp->sink[i];
}

/* ---- stat: text -------------------------------------------------------- */

#define COL 28

static void text_row(const char *name, uint64_t v)
{
	printf("  %-*s %20" PRIu64 "\n", COL, name, v);
}

/* The sink's drops by data category (sentry): one row each. */
static void text_cat_drops(const struct mx_snap *sn, uint32_t i)
{
	char cat[OBX_CAT_MAX + 1];
	const char *reason;
	uint32_t j, k;
	uint64_t n;

	for (j = 0; j < mx_ncat_drops(sn); j++)
		if (!mx_cat_drop(sn, j, &k, cat, sizeof(cat), &reason, &n) &&
		    k == i)
			printf("  %-*s %20" PRIu64 "  category %s, %s\n", COL,
			       "dropped_by_category", n, cat, reason);
	if (sn->kp->cat_drops_more)
		printf("  %-*s %20s  (more categories than the page holds)\n",
		       COL, "dropped_by_category", "...");
}

static void stat_text(const struct mx_snap *sn)
{
	char name[OBX_NAME_MAX + 8], t[64];
	uint32_t i, ncat;
	size_t j;

	printf("outbox stat  /dev/shm/%s  broker %s\n\nglobal\n",
	       sn->seg->name, sn->alive ? "running" : "not running");
	for (j = 0; j < mx_nglobal; j++)
		text_row(mx_global[j].key, mx_get(&sn->g, &mx_global[j]));
	text_row("delivered", sn->delivered);
	text_row("dropped", sn->dropped);
	text_row("queued", sn->queued);
	printf("  %-*s %20s  (emitted %s delivered + dropped + queued)\n",
	       COL, "identity_ok", sn->identity_ok ? "yes" : "NO",
	       sn->identity_ok ? "=" : "!=");
	for (i = 0; i < sn->nsinks; i++) {
		const struct obx_sink_shm *k = snap_sink(sn, i);

		if (!k->in_use)
			continue;
		mx_sink_name(sn, i, name, sizeof(name));
		printf("\nsinks.%s%s\n", name, i == sn->kp->default_sink ?
		       "  (default)" : "");
		if (k->state == OBX_SINK_OK || !k->until_ns) {
			printf("  %-*s %20s\n", COL, "state",
			       mx_state_name(k->state));
		} else {
			tool_fmt_time(t, sizeof(t), k->until_ns, 0);
			printf("  %-*s %20s  until %s\n", COL, "state",
			       mx_state_name(k->state), t);
		}
		ncat = k->ncats > OBX_MAX_CATS ? OBX_MAX_CATS : k->ncats;
		for (j = 0; j < ncat; j++) {
			char cat[OBX_CAT_MAX + 1];

			mx_shm_str(cat, sizeof(cat), k->cats[j], OBX_CAT_MAX);
			tool_fmt_time(t, sizeof(t), k->cat_until_ns[j], 0);
			printf("  %-*s %20s  until %s\n", COL,
			       "rate_limited_category", cat, t);
		}
		for (j = 0; j < mx_nsink; j++)
			text_row(mx_sink[j].key, mx_get(&k->c, &mx_sink[j]));
		text_row("dropped", mx_sink_dropped(k));
		text_cat_drops(sn, i);
	}
	printf("\nproducers (%u live)\n", sn->nprods);
	if (sn->nprods)
		printf("  %6s %10s %20s %20s\n", "SLOT", "PID", "EMITTED",
		       "DROPPED");
	for (i = 0; i < sn->nprods; i++)
		printf("  %6u %10u %20" PRIu64 " %20" PRIu64 "\n",
		       sn->prods[i].slot, sn->prods[i].pid,
		       sn->prods[i].emitted, sn->prods[i].dropped);
}

/* ---- stat: JSON -------------------------------------------------------- */

static json_t *ju64(uint64_t v)
{
	/* json_int_t is signed: a wrapped counter must not print negative */
	return v > (uint64_t)INT64_MAX ? json_real((double)v) :
		json_integer((json_int_t)v);
}

/* json_object_set_new() steals the value even when it fails; a failed
 * constructor (NULL) makes it fail, which *err remembers. */
static void jset(json_t *o, const char *k, json_t *v, int *err)
{
	if (json_object_set_new(o, k, v) < 0)
		*err = 1;
}

/* A key from shm may not be UTF-8, which jansson refuses as a key:
 * repair it the way json_string_lossy() repairs values. */
static void jset_lossy(json_t *o, const char *k, json_t *v, int *err)
{
	json_t *kj = json_string_lossy(k, strlen(k));

	if (!kj) {
		json_decref(v);
		*err = 1;
		return;
	}
	jset(o, json_string_value(kj), v, err);
	json_decref(kj);
}

static json_t *stat_json_sink(const struct obx_sink_shm *k, int *err)
{
	json_t *o = json_object(), *cats = json_array();
	uint32_t j, ncat = k->ncats > OBX_MAX_CATS ? OBX_MAX_CATS : k->ncats;

	if (!o || !cats) {
		json_decref(o);
		json_decref(cats);
		*err = 1;
		return NULL;
	}
	jset(o, "state", json_string(mx_state_name(k->state)), err);
	/* ms since the epoch; 0 when ok (as on the sink page) */
	jset(o, "state_until", ju64(k->until_ns / NS_PER_MS), err);
	for (j = 0; j < mx_nsink; j++)
		jset(o, mx_sink[j].key, ju64(mx_get(&k->c, &mx_sink[j])), err);
	jset(o, "dropped", ju64(mx_sink_dropped(k)), err);
	for (j = 0; j < ncat; j++) {
		json_t *c = json_object();

		if (!c) {
			*err = 1;
			break;
		}
		jset(c, "name", json_string_lossy(k->cats[j],
			strnlen(k->cats[j], OBX_CAT_MAX)), err);
		jset(c, "until", ju64(k->cat_until_ns[j] / NS_PER_MS), err);
		if (json_array_append_new(cats, c) < 0)
			*err = 1;
	}
	jset(o, "rate_limited_categories", cats, err);
	return o;
}

/* {"error": {"rate_limited": 41}, ...}: the sink's drops by category */
static json_t *stat_json_cat_drops(const struct mx_snap *sn, uint32_t i,
				   int *err)
{
	json_t *o = json_object();
	char cat[OBX_CAT_MAX + 1];
	const char *reason;
	uint32_t j, k;
	uint64_t n;

	for (j = 0; o && j < mx_ncat_drops(sn); j++) {
		json_t *c, *key;

		if (mx_cat_drop(sn, j, &k, cat, sizeof(cat), &reason, &n) ||
		    k != i)
			continue;
		/* a name from shm may not be UTF-8: the repaired one */
		key = json_string_lossy(cat, strlen(cat));
		if (!key) {
			*err = 1;
			break;
		}
		c = json_object_get(o, json_string_value(key));
		if (!c) {
			c = json_object();
			jset(o, json_string_value(key), c, err);
		}
		if (c)
			jset(c, reason, ju64(n), err);
		json_decref(key);
	}
	if (!o)
		*err = 1;
	return o;
}

static json_t *stat_json(const struct mx_snap *sn)
{
	json_t *o = json_object(), *sinks = json_object(),
	       *prods = json_array(), *broker = json_object();
	char name[OBX_NAME_MAX + 8];
	uint32_t i;
	size_t j;
	int err = 0;

	if (!o || !sinks || !prods || !broker) {
		json_decref(o);
		json_decref(sinks);
		json_decref(prods);
		json_decref(broker);
		return NULL;
	}
	for (j = 0; j < mx_nglobal; j++)
		jset(o, mx_global[j].key, ju64(mx_get(&sn->g, &mx_global[j])),
		     &err);
	jset(o, "delivered", ju64(sn->delivered), &err);
	jset(o, "dropped", ju64(sn->dropped), &err);
	jset(o, "queued", ju64(sn->queued), &err);
	jset(o, "identity_ok", json_boolean(sn->identity_ok), &err);
	for (i = 0; i < sn->nsinks; i++) {
		const struct obx_sink_shm *k = snap_sink(sn, i);
		json_t *so;

		if (!k->in_use)
			continue;
		mx_sink_name(sn, i, name, sizeof(name));
		so = stat_json_sink(k, &err);
		if (so && i == sn->kp->default_sink)
			jset(so, "default", json_true(), &err);
		if (so)
			jset(so, "dropped_by_category",
			     stat_json_cat_drops(sn, i, &err), &err);
		jset_lossy(sinks, name, so, &err);
	}
	jset(o, "sinks", sinks, &err);
	for (i = 0; i < sn->nprods; i++) {
		json_t *p = json_object();

		if (!p) {
			err = 1;
			break;
		}
		jset(p, "slot", json_integer(sn->prods[i].slot), &err);
		jset(p, "pid", json_integer(sn->prods[i].pid), &err);
		jset(p, "emitted", ju64(sn->prods[i].emitted), &err);
		jset(p, "dropped", ju64(sn->prods[i].dropped), &err);
		if (json_array_append_new(prods, p) < 0)
			err = 1;
	}
	jset(o, "producers", prods, &err);
	jset(broker, "pid", json_integer(sn->broker_pid), &err);
	jset(broker, "alive", json_boolean(sn->alive), &err);
	jset(broker, "heartbeat", ju64(sn->beat_ns / NS_PER_MS), &err);
	jset(o, "broker", broker, &err);
	jset(o, "shm", json_string_lossy(sn->seg->name, strlen(sn->seg->name)),
	     &err);
	if (err) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* ---- usage ------------------------------------------------------------- */

static const char usage_main[] =
"usage: outbox COMMAND [OPTIONS]\n"
"\n"
"  emit   [-s SHM] [--sink NAME] [--type TYPE] [JSON | -]\n"
"         emit one JSON event, or one per line from stdin with '-'\n"
"  stat   [-s SHM] [--json | --prometheus]\n"
"         every counter: global, per sink, per producer\n"
"  status [-s SHM]\n"
"         broker liveness, sink states, spool usage (exit 1: no broker)\n"
"  top    [-s SHM] [-d SECONDS]\n"
"         live view: rates per sink and producer, ring, spool, drops\n"
"  spool  ls|verify|dump [-d DIR] [--sink NAME]\n"
"         inspect the spool offline (default dir " DEFAULT_SPOOL ")\n"
"\n"
"SHM: -s, else $OUTBOX_SHM, else \"" DEFAULT_SHM "\". The sink of emit:\n"
"--sink, else $OUTBOX_SINK, else the default sink.\n"
"'outbox COMMAND --help' for one command. Exit status: 0 ok, 1 failed,\n"
"2 usage error.\n";

static const char usage_emit[] =
"usage: outbox emit [-s SHM] [--sink NAME] [--type TYPE] [JSON | -]\n"
"  Emits JSON (any JSON value, sent compacted) as one event of type TYPE\n"
"  (default \"" DEFAULT_TYPE "\"). With '-' (or no argument and stdin not\n"
"  a terminal) emits one event per stdin line; empty lines are skipped,\n"
"  invalid ones reported with their number. Exit 1 when any event was\n"
"  invalid or dropped (ring full, too large, unknown sink, no broker).\n"
"  -s, --shm SHM     shm name (default $OUTBOX_SHM, else outbox)\n"
"      --sink NAME   sink (default $OUTBOX_SINK, else the default sink)\n"
"  -t, --type TYPE   event type\n";

static const char usage_stat[] =
"usage: outbox stat [-s SHM] [--json | --prometheus]\n"
"  Prints every counter: global, per sink (sinks.NAME), per producer,\n"
"  and the identity emitted = delivered + dropped + queued.\n"
"  -s, --shm SHM     shm name (default $OUTBOX_SHM, else outbox)\n"
"      --json        one JSON object\n"
"      --prometheus  Prometheus text exposition format\n";

static const char usage_status[] =
"usage: outbox status [-s SHM]\n"
"  Broker pid and liveness, each sink's state, spool usage.\n"
"  Exit 0 when the broker runs, 1 otherwise.\n"
"  -s, --shm SHM     shm name (default $OUTBOX_SHM, else outbox)\n";

static const char usage_spool[] =
"usage: outbox spool ls|verify|dump [-d DIR] [--sink NAME]\n"
"  ls       segments and checkpoint of every sink\n"
"  verify   check every frame; exit 1 when problems were found\n"
"  dump     one line per record: SINK SEQ LEN ENVELOPE-AS-JSON (hex when\n"
"           it is not a valid envelope); --sink limits it to one sink\n"
"  -d, --dir DIR     spool directory (default " DEFAULT_SPOOL ")\n";

static int usage_error(const char *usage, const char *fmt, const char *arg)
{
	fputs("outbox: ", stderr);
	fprintf(stderr, fmt, arg);
	fputs("\n", stderr);
	fputs(usage, stderr);
	return EXIT_USAGE;
}

/* getopt_long over argv[0..argc) where argv[0] is the command name;
 * quiet, the caller words the error. GNU permutation: options may follow
 * the arguments (a JSON argument starting with '-' needs "--"). */
static int next_opt(int argc, char **argv, const char *shortopts,
		    const struct option *longopts)
{
	opterr = 0;
	return getopt_long(argc, argv, shortopts, longopts, NULL);
}

/* c is ':' (missing argument; the option strings start with ':') or
 * '?' (unknown option) */
static int bad_opt(const char *usage, char **argv, int c)
{
	const char *arg = argv[optind - 1];

	if (c == ':')
		return usage_error(usage, "option '%s' needs an argument",
				   arg);
	return usage_error(usage, "unknown option '%s'", arg);
}

/* ---- emit -------------------------------------------------------------- */

struct emitter {
	obx_t *h;
	int sink;
	const char *sink_name;          /* for messages */
	const char *type;
	const char *shm;
	struct buf text;                /* the compacted JSON, reused */
	uint64_t sent, invalid, dropped, full, too_large, other;
};

/* The sinks the broker publishes, for the unknown-sink message. */
static void list_sinks(const char *shm, char *out, size_t len)
{
	struct obx_sink_page *kp = malloc(sizeof(*kp));
	struct seg s;
	char why[256], name[OBX_NAME_MAX];
	size_t o = 0;
	uint32_t i, n;

	out[0] = 0;
	if (!kp)
		return;
	if (seg_attach(&s, shm, why, sizeof(why)) < 0) {
		free(kp);
		return;
	}
	mx_seq_read(&s.sinks->seq, s.sinks, kp, sizeof(*kp));
	n = kp->nsinks > OBX_MAX_SINKS ? OBX_MAX_SINKS : kp->nsinks;
	for (i = 0; i < n && o + 4 < len; i++) {
		if (!kp->sink[i].in_use)
			continue;
		mx_shm_str(name, sizeof(name), kp->sink[i].name, OBX_NAME_MAX);
		o += (size_t)snprintf(out + o, len - o, "%s%s", o ? ", " : "",
				      name);
		if (o >= len)
			o = len - 1;
	}
	seg_detach(&s);
	free(kp);
}

static uint32_t max_record(const char *shm)
{
	struct seg s;
	char why[256];
	uint32_t m;

	if (seg_attach(&s, shm, why, sizeof(why)) < 0)
		return 0;
	m = s.g.max_record;
	seg_detach(&s);
	return m;
}

static int emit_open(struct emitter *e, const char *shm, const char *sink)
{
	char names[512];
	int id;

	e->shm = shm;
	e->h = obx_open(shm);
	if (!e->h) {
		fprintf(stderr, "outbox emit: %s\n", obx_open_error()[0] ?
			obx_open_error() : strerror(errno));
		return -1;
	}
	e->sink_name = sink && *sink ? sink : "default";
	id = obx_sink(e->h, sink);
	if (id == -ENOENT) {
		list_sinks(shm, names, sizeof(names));
		fprintf(stderr, "outbox emit: unknown sink '%s' (the broker on "
			"/dev/shm/%s publishes: %s)\n", e->sink_name, shm,
			names[0] ? names : "none");
		return -1;
	}
	if (id < 0) {
		fprintf(stderr, "outbox emit: sink '%s': %s\n", e->sink_name,
			id == -EINVAL ? "name longer than 255 bytes" :
			strerror(-id));
		return -1;
	}
	e->sink = id;
	return 0;
}

/* Sends one event already validated and compacted into e->text. */
static int emit_text(struct emitter *e, uint64_t lineno)
{
	char where[48] = "";
	int rc;

	rc = obx_emit(e->h, e->sink, e->type, e->text.p, e->text.len,
		      OBX_BODY_JSON);
	if (rc == 0) {
		e->sent++;
		return 0;
	}
	e->dropped++;
	if (rc == -EAGAIN)
		e->full++;
	else if (rc == -EMSGSIZE)
		e->too_large++;
	else
		e->other++;
	if (e->dropped > EMIT_REPORT_MAX)
		return -1;
	if (lineno)
		snprintf(where, sizeof(where), "stdin line %" PRIu64 ": ",
			 lineno);
	if (rc == -EAGAIN) {
		fprintf(stderr, "outbox emit: %sdropped: the ring is full "
			"(the broker is not draining it)\n", where);
	} else if (rc == -EMSGSIZE) {
		fprintf(stderr, "outbox emit: %sdropped: event too large "
			"(%zu bytes of JSON; max_record of /dev/shm/%s is %u "
			"bytes with the envelope)\n", where, e->text.len,
			e->shm, max_record(e->shm));
	} else if (rc == -ETIMEDOUT) {
		fprintf(stderr, "outbox emit: %sdropped: the broker gave the "
			"record up as stalled\n", where);
	} else {
		fprintf(stderr, "outbox emit: %sdropped: %s\n", where,
			strerror(-rc));
	}
	if (e->dropped == EMIT_REPORT_MAX)
		fprintf(stderr, "outbox emit: further drops are only "
			"counted\n");
	return -1;
}

/* Validates and compacts one JSON text into e->text. */
static int emit_parse(struct emitter *e, const char *s, size_t len,
		      json_error_t *err)
{
	json_t *j = json_loadb(s, len, JSON_IN_FLAGS, err);
	int rc;

	if (!j)
		return -EINVAL;
	buf_reset(&e->text);
	rc = json_append(&e->text, j);
	json_decref(j);
	if (rc < 0)
		snprintf(err->text, sizeof(err->text), "%s", strerror(-rc));
	return rc;
}

/* 1 when the line holds nothing but blanks */
static int blank(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return 0;
	return 1;
}

static int emit_stdin(struct emitter *e)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	uint64_t lineno = 0;
	json_error_t err;

	while ((n = getline(&line, &cap, stdin)) >= 0) {
		lineno++;
		if (n > 0 && line[n - 1] == '\n')
			n--;
		if (n > 0 && line[n - 1] == '\r')
			n--;
		if (blank(line, (size_t)n))
			continue;
		if (emit_parse(e, line, (size_t)n, &err) < 0) {
			e->invalid++;
			fprintf(stderr, "outbox emit: stdin line %" PRIu64
				": invalid JSON: %s (column %d)\n", lineno,
				err.text, err.column);
			continue;
		}
		emit_text(e, lineno);
	}
	if (ferror(stdin))
		fprintf(stderr, "outbox emit: reading stdin: %s\n",
			strerror(errno));
	free(line);
	if (e->invalid || e->dropped)
		fprintf(stderr, "outbox emit: %" PRIu64 " emitted, %" PRIu64
			" invalid line%s, %" PRIu64 " dropped (ring full %"
			PRIu64 ", too large %" PRIu64 ", other %" PRIu64 ")\n",
			e->sent, e->invalid, e->invalid == 1 ? "" : "s",
			e->dropped, e->full, e->too_large, e->other);
	return e->invalid || e->dropped || ferror(stdin) ? 1 : 0;
}

static int cmd_emit(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "shm", required_argument, NULL, 's' },
		{ "sink", required_argument, NULL, 'S' },
		{ "type", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct emitter e;
	const char *shm = NULL, *sink = NULL, *arg = NULL;
	json_error_t err;
	int c, rc;

	memset(&e, 0, sizeof(e));
	e.type = DEFAULT_TYPE;
	while ((c = next_opt(argc, argv, ":s:t:h", lo)) != -1) {
		switch (c) {
		case 's':
			shm = optarg;
			break;
		case 'S':
			sink = optarg;
			break;
		case 't':
			e.type = optarg;
			break;
		case 'h':
			fputs(usage_emit, stdout);
			return 0;
		default:
			return bad_opt(usage_emit, argv, c);
		}
	}
	if (optind + 1 < argc)
		return usage_error(usage_emit, "emit takes one JSON argument "
				   "(quote it), got also '%s'",
				   argv[optind + 1]);
	if (optind < argc)
		arg = argv[optind];
	else if (isatty(STDIN_FILENO))
		return usage_error(usage_emit, "%s", "no event: give JSON or "
				   "'-' for stdin");
	else
		arg = "-";
	if (strlen(e.type) > ENV_NAME_MAX)
		return usage_error(usage_emit, "%s", "--type is longer than "
				   "255 bytes");
	if (!sink)
		sink = getenv("OUTBOX_SINK");
	buf_init(&e.text, 0);
	if (strcmp(arg, "-") != 0 &&
	    emit_parse(&e, arg, strlen(arg), &err) < 0) {
		fprintf(stderr, "outbox emit: invalid JSON: %s (line %d, "
			"column %d)\n", err.text, err.line, err.column);
		buf_free(&e.text);
		return 1;
	}
	if (emit_open(&e, tool_shm_name(shm), sink) < 0) {
		rc = 1;
	} else if (strcmp(arg, "-") == 0) {
		rc = emit_stdin(&e);
	} else {
		rc = emit_text(&e, 0) < 0 ? 1 : 0;
	}
	obx_close(e.h);
	buf_free(&e.text);
	return rc;
}

/* ---- stat -------------------------------------------------------------- */

static int cmd_stat(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "shm", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "prometheus", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	const char *shm = NULL;
	struct mx_snap sn;
	struct seg seg;
	int c, fmt = 0, rc = 0;
	json_t *j;

	while ((c = next_opt(argc, argv, ":s:h", lo)) != -1) {
		switch (c) {
		case 's':
			shm = optarg;
			break;
		case 'j':
		case 'p':
			if (fmt && fmt != c)
				return usage_error(usage_stat, "%s", "--json "
						   "and --prometheus exclude "
						   "each other");
			fmt = c;
			break;
		case 'h':
			fputs(usage_stat, stdout);
			return 0;
		default:
			return bad_opt(usage_stat, argv, c);
		}
	}
	if (optind < argc)
		return usage_error(usage_stat, "unexpected argument '%s'",
				   argv[optind]);
	if (tool_snap_take("stat", tool_shm_name(shm), &seg, &sn) < 0)
		return 1;
	if (fmt == 'j') {
		j = stat_json(&sn);
		if (!j || json_dumpf(j, stdout, JSON_COMPACT) < 0) {
			fprintf(stderr, "outbox stat: cannot build the JSON "
				"output\n");
			rc = 1;
		}
		putchar('\n');
		json_decref(j);
	} else if (fmt == 'p') {
		mx_prom(stdout, &sn);
	} else {
		stat_text(&sn);
	}
	if (sn.torn)
		rc = 1;
	tool_snap_free(&seg, &sn);
	if (fflush(stdout) != 0)
		rc = 1;
	return rc;
}

/* ---- status ------------------------------------------------------------ */

static void status_broker(const struct mx_snap *sn, uint64_t now)
{
	char t[64], d[64];

	if (!sn->alive) {
		if (sn->broker_pid)
			printf("broker    not running: pid %u, %s\n",
			       sn->broker_pid, sn->why_dead);
		else
			printf("broker    not running: %s\n", sn->why_dead);
		if (sn->beat_ns) {
			tool_fmt_time(t, sizeof(t), sn->beat_ns, 1);
			tool_fmt_rel(d, sizeof(d), sn->beat_ns, now);
			printf("          last heartbeat %s (%s)\n", t, d);
		}
		return;
	}
	printf("broker    running, pid %u", sn->broker_pid);
	if (sn->boot_ns && sn->boot_ns <= now) {
		tool_fmt_dur(d, sizeof(d), now - sn->boot_ns);
		printf(", up %s", d);
	}
	if (!sn->beat_ns) {
		printf(", no heartbeat yet\n");
		return;
	}
	tool_fmt_rel(d, sizeof(d), sn->beat_ns, now);
	printf(", last heartbeat %s\n", d);
	if (now > sn->beat_ns && now - sn->beat_ns > BEAT_STALE_NS)
		printf("          warning: the heartbeat is late (every 1 s "
		       "normally): the broker may be stuck\n");
}

static void status_sink(const struct mx_snap *sn, uint32_t i, uint64_t now,
			int width)
{
	const struct obx_sink_shm *k = snap_sink(sn, i);
	char name[OBX_NAME_MAX + 8], t[64], d[64], cat[OBX_CAT_MAX + 1];
	uint32_t c, ncat = k->ncats > OBX_MAX_CATS ? OBX_MAX_CATS : k->ncats;

	mx_sink_name(sn, i, name, sizeof(name));
	printf("  %-*s ", width, name);
	if (k->state == OBX_SINK_OK || !k->until_ns) {
		printf("%s", mx_state_name(k->state));
	} else {
		tool_fmt_time(t, sizeof(t), k->until_ns, 1);
		tool_fmt_rel(d, sizeof(d), k->until_ns, now);
		printf("%s until %s (%s)", mx_state_name(k->state), t, d);
	}
	printf("  queued %" PRIu64 "%s\n", k->c.queued_events,
	       i == sn->kp->default_sink ? "  (default sink)" : "");
	for (c = 0; c < ncat; c++) {
		mx_shm_str(cat, sizeof(cat), k->cats[c], OBX_CAT_MAX);
		tool_fmt_time(t, sizeof(t), k->cat_until_ns[c], 1);
		tool_fmt_rel(d, sizeof(d), k->cat_until_ns[c], now);
		printf("  %-*s   limited category %s until %s (%s)\n", width,
		       "", cat, t, d);
	}
}

static int cmd_status(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "shm", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	const char *shm = NULL;
	struct mx_snap sn;
	struct seg seg;
	char a[32], b[32];
	uint64_t now, used;
	uint32_t i;
	int c, width = 8, n = 0;

	while ((c = next_opt(argc, argv, ":s:h", lo)) != -1) {
		switch (c) {
		case 's':
			shm = optarg;
			break;
		case 'h':
			fputs(usage_status, stdout);
			return 0;
		default:
			return bad_opt(usage_status, argv, c);
		}
	}
	if (optind < argc)
		return usage_error(usage_status, "unexpected argument '%s'",
				   argv[optind]);
	if (tool_snap_take("status", tool_shm_name(shm), &seg, &sn) < 0)
		return 1;
	now = tool_now_ns(CLOCK_REALTIME);
	printf("segment   /dev/shm/%s\n", sn.seg->name);
	status_broker(&sn, now);
	used = sn.tail - sn.head;
	if (used > sn.seg->g.ring_size)
		used = sn.seg->g.ring_size;
	tool_fmt_bytes(a, sizeof(a), used);
	tool_fmt_bytes(b, sizeof(b), sn.seg->g.ring_size);
	printf("ring      %s of %s in use, %u producer%s\n", a, b,
	       sn.nprods, sn.nprods == 1 ? "" : "s");
	tool_fmt_bytes(a, sizeof(a), sn.g.spool_bytes);
	printf("spool     %s in %" PRIu64 " segment%s\n", a,
	       sn.g.spool_segments, sn.g.spool_segments == 1 ? "" : "s");
	for (i = 0; i < sn.nsinks; i++) {
		size_t l = strnlen(snap_sink(&sn, i)->name, OBX_NAME_MAX);

		if (snap_sink(&sn, i)->in_use) {
			n++;
			if ((int)l > width)
				width = (int)l;
		}
	}
	printf("sinks%s\n", n ? "" : "     none published");
	for (i = 0; i < sn.nsinks; i++)
		if (snap_sink(&sn, i)->in_use)
			status_sink(&sn, i, now, width);
	c = sn.alive ? 0 : 1;
	tool_snap_free(&seg, &sn);
	fflush(stdout);
	return c;
}

/* ---- spool ------------------------------------------------------------- */

static struct env_reader g_er;
static struct buf g_line;

/* spool_dump's payload formatter: the envelope as compact JSON, or hex
 * when the record is not a valid envelope (or its body not valid JSON). */
static void dump_payload(FILE *out, const uint8_t *p, uint32_t n)
{
	struct env_view v;
	json_t *j = NULL;
	uint32_t i;

	if (env_parse(&g_er, p, n, &v) == 0 && (j = json_envelope(&v))) {
		buf_reset(&g_line);
		if (json_append(&g_line, j) == 0) {
			fwrite(g_line.p, 1, g_line.len, out);
			json_decref(j);
			return;
		}
		json_decref(j);
	}
	for (i = 0; i < n; i++)
		fprintf(out, "%02x", p[i]);
}

static int cmd_spool(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "dir", required_argument, NULL, 'd' },
		{ "sink", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	const char *dir = DEFAULT_SPOOL, *sink = NULL, *sub;
	int c, rc;

	while ((c = next_opt(argc, argv, ":d:h", lo)) != -1) {
		switch (c) {
		case 'd':
			dir = optarg;
			break;
		case 'S':
			sink = optarg;
			break;
		case 'h':
			fputs(usage_spool, stdout);
			return 0;
		default:
			return bad_opt(usage_spool, argv, c);
		}
	}
	if (optind >= argc)
		return usage_error(usage_spool, "%s", "spool needs ls, verify "
				   "or dump");
	sub = argv[optind];
	if (optind + 1 < argc)
		return usage_error(usage_spool, "unexpected argument '%s'",
				   argv[optind + 1]);
	if (sink && strcmp(sub, "dump") != 0)
		return usage_error(usage_spool, "%s", "--sink applies to dump "
				   "only");
	if (strcmp(sub, "ls") == 0) {
		rc = spool_ls(dir, stdout);
	} else if (strcmp(sub, "verify") == 0) {
		rc = spool_verify(dir, stdout);
		if (rc > 0) {
			fflush(stdout);
			fprintf(stderr, "outbox spool verify: %d problem%s "
				"found in %s\n", rc, rc == 1 ? "" : "s", dir);
			return 1;
		}
	} else if (strcmp(sub, "dump") == 0) {
		env_reader_init(&g_er);
		buf_init(&g_line, 0);
		rc = spool_dump(dir, sink, stdout, dump_payload);
		env_reader_fini(&g_er);
		buf_free(&g_line);
	} else {
		return usage_error(usage_spool, "unknown spool command '%s'",
				   sub);
	}
	fflush(stdout);
	if (rc < 0) {
		fprintf(stderr, "outbox spool %s: %s%s%s: %s\n", sub, dir,
			sink ? "/" : "", sink ? sink : "", strerror(-rc));
		return 1;
	}
	return 0;
}

/* ---- main -------------------------------------------------------------- */

int main(int argc, char **argv)
{
	const char *cmd;

	if (argc < 2) {
		fputs(usage_main, stderr);
		return EXIT_USAGE;
	}
	cmd = argv[1];
	if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") ||
	    !strcmp(cmd, "help")) {
		fputs(usage_main, stdout);
		return 0;
	}
	/* each command parses argv[1..]: argv[1] plays argv[0] */
	if (!strcmp(cmd, "emit"))
		return cmd_emit(argc - 1, argv + 1);
	if (!strcmp(cmd, "stat"))
		return cmd_stat(argc - 1, argv + 1);
	if (!strcmp(cmd, "status"))
		return cmd_status(argc - 1, argv + 1);
	if (!strcmp(cmd, "spool"))
		return cmd_spool(argc - 1, argv + 1);
	if (!strcmp(cmd, "top"))
		return cmd_top(argc - 1, argv + 1);
	return usage_error(usage_main, "unknown command '%s'", cmd);
}
