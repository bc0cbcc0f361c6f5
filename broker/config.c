/* config.c - outboxd configuration: INI (inih), units, checks, printing.
 *
 * Parsing. Debian's inih is built without line numbers for the handler
 * (INI_HANDLER_LINENO=0), calls no handler for a section header,
 * truncates section names to 49 bytes and reports only the first syntax
 * error. So we drive ini_parse_stream() with our own reader: it reads a
 * whole line with getline(), counts it, and deals itself with everything
 * that is not a "key = value" line (section headers, overlong lines, NUL
 * bytes), feeding inih a blank line in their place. inih calls the
 * handler for a key line before it asks for the next line, so
 * x->lineno is always the line of the key being handled. A key line
 * that never reaches the handler had no '=' or ':'.
 *
 * Comments. ';' and '#' start a comment at the start of a line, and
 * inline when preceded by whitespace ("x = 1  # one"); "a#b" and "a;b"
 * are plain values (URLs with fragments, header values). This is inih's
 * rule with ";#" as prefixes, but the inline part is applied here, after
 * inih (which runs with inline comments off), so that a value can also
 * be double-quoted: "a ; b # c" keeps everything, with \" \\ \n \t \r
 * escapes. cfg_print() quotes exactly the values that would not read
 * back unchanged, so every value round-trips.
 *
 * Default strings. cfg_default() points spool_dir and the default sink's
 * path at static strings (cfg_free() knows them), so it allocates
 * nothing: calling it, or cfg_load(), on a struct that cfg_default()
 * filled leaks nothing. Replace string fields with cfg_set_str().
 *
 * inih's options are process globals: cfg_load() sets them for its parse
 * and restores them; it must not run concurrently with another inih user.
 */
#define _GNU_SOURCE
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <ini.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define CFG_LINE_MAX	65536		/* longest line, without CR LF */
#define KIB		1024ull
#define MIB		(1024 * KIB)
#define GIB		(1024 * MIB)
#define SEC_MS		1000ull
#define MIN_MS		(60 * SEC_MS)
#define HOUR_MS		(60 * MIN_MS)
#define U32_MAX		0xffffffffull
#define U64_MAX		UINT64_MAX
#define E_NOUNIT	(-ENOMSG)	/* internal: duration without unit */
#define SEG_SLACK	(4 * KIB)	/* spool segment overhead per record */

_Static_assert(sizeof(enum cfg_sink_type) == 4 &&
	       sizeof(enum cfg_durability) == 4 &&
	       sizeof(enum cfg_spool_full) == 4 &&
	       sizeof(enum cfg_encoding) == 4 &&
	       sizeof(enum cfg_compression) == 4 &&
	       sizeof(enum cfg_on_rate_limit) == 4 &&
	       sizeof(enum cfg_log_level) == 4 &&
	       sizeof(enum cfg_stall_action) == 4 && sizeof(mode_t) == 4,
	       "enum and mode_t fields are accessed as 32-bit numbers");

static const char cfg_def_spool_dir[] = "./outbox-spool";
static const char cfg_def_sink_path[] = "./outbox-out.ndjson";

/* value names, in enum order */
static const char *const cfg_type_names[] = {
	"file", "discard", "http", "segment", "sentry", "otlp", NULL };
static const char *const cfg_dur_names[] = {
	"none", "write", "fdatasync", NULL };
static const char *const cfg_full_names[] = {
	"drop-newest", "drop-oldest", NULL };
static const char *const cfg_enc_names[] = {
	"ndjson", "json", "msgpack", NULL };
static const char *const cfg_comp_names[] = { "gzip", "none", "zstd",
	NULL };
static const char *const cfg_rl_names[] = { "hold", "drop-category", NULL };
static const char *const cfg_action_names[] = {
	"retry", "drop", "split", "reauth", NULL };
static const char *const cfg_log_names[] = {
	"error", "warn", "info", "debug", NULL };
static const char *const cfg_stall_names[] = { "wait", "kill", NULL };

enum cfg_kind {
	K_STR,		/* non-empty string */
	K_URL,		/* http:// or https:// URL */
	K_LISTEN,	/* ADDR:PORT, a numeric IPv4 or [IPv6] address */
	K_DSN,		/* Sentry DSN: https://KEY@HOST/PROJECT */
	K_HEADER,	/* "Name: value", repeatable */
	K_SHM,		/* shm object name */
	K_MODE,		/* octal permission bits */
	K_SIZE,		/* bytes, K/M/G suffix */
	K_DUR,		/* milliseconds, unit required */
	K_COUNT,	/* plain integer */
	K_PCT,		/* percentage, optional '%' */
	K_ENUM,		/* one of names[] */
};

#define TY(t)	(1u << (t))
#define TY_NET	(TY(SINK_HTTP) | TY(SINK_SEGMENT) | TY(SINK_SENTRY) | \
		 TY(SINK_OTLP))

struct cfg_key {
	const char *name;
	enum cfg_kind kind;
	size_t off, size;		/* of the field */
	uint64_t min, max;		/* numbers */
	const char *const *names;	/* K_ENUM */
	unsigned types;			/* sink types it applies to, 0: all */
	bool pow2;			/* must be a power of two */
	bool secret;			/* a credential */
};

enum {
	BK_SHM, BK_SHM_MODE, BK_RING_SIZE, BK_MAX_RECORD, BK_PRODUCER_SLOTS,
	BK_SPOOL_DIR, BK_SPOOL_MAX, BK_SPOOL_FULL, BK_DURABILITY,
	BK_SYNC_INTERVAL, BK_SHUTDOWN_TIMEOUT, BK_LOG_LEVEL, BK_SEGMENT_SIZE,
	BK_STALL_TIMEOUT, BK_STALL_ACTION, BK_METRICS_LISTEN,
	BK_DRAIN_LATENCY,
	BK_SINK_THREADS,
	BK_N
};

#define BF(f)	.off = offsetof(struct cfg, f), \
		.size = sizeof(((struct cfg *)0)->f)

static const struct cfg_key cfg_bkeys[BK_N] = {
	[BK_SHM] = { .name = "shm", .kind = K_SHM, BF(shm) },
	[BK_SHM_MODE] = { .name = "shm_mode", .kind = K_MODE, BF(shm_mode) },
	[BK_RING_SIZE] = { .name = "ring_size", .kind = K_SIZE,
		BF(ring_size), .min = 64 * KIB, .max = GIB, .pow2 = true },
	[BK_MAX_RECORD] = { .name = "max_record", .kind = K_SIZE,
		BF(max_record), .min = 64, .max = GIB / 8 },
	[BK_PRODUCER_SLOTS] = { .name = "producer_slots", .kind = K_COUNT,
		BF(producer_slots), .min = 1, .max = 65535 },
	[BK_SPOOL_DIR] = { .name = "spool_dir", .kind = K_STR,
		BF(spool_dir) },
	[BK_SPOOL_MAX] = { .name = "spool_max", .kind = K_SIZE,
		BF(spool_max), .min = 64 * KIB, .max = U64_MAX },
	[BK_SPOOL_FULL] = { .name = "spool_full", .kind = K_ENUM,
		BF(spool_full), .names = cfg_full_names },
	[BK_DURABILITY] = { .name = "durability", .kind = K_ENUM,
		BF(durability), .names = cfg_dur_names },
	[BK_SYNC_INTERVAL] = { .name = "sync_interval", .kind = K_DUR,
		BF(sync_interval_ms), .min = 0, .max = HOUR_MS },
	[BK_SHUTDOWN_TIMEOUT] = { .name = "shutdown_timeout", .kind = K_DUR,
		BF(shutdown_timeout_ms), .min = 0, .max = 24 * HOUR_MS },
	[BK_LOG_LEVEL] = { .name = "log_level", .kind = K_ENUM,
		BF(log_level), .names = cfg_log_names },
	[BK_SEGMENT_SIZE] = { .name = "segment_size", .kind = K_SIZE,
		BF(segment_size), .min = 64 * KIB, .max = GIB },
	[BK_STALL_TIMEOUT] = { .name = "stall_timeout", .kind = K_DUR,
		BF(stall_timeout_ms), .min = 10, .max = 24 * HOUR_MS },
	[BK_STALL_ACTION] = { .name = "stall_action", .kind = K_ENUM,
		BF(stall_action), .names = cfg_stall_names },
	[BK_METRICS_LISTEN] = { .name = "metrics_listen", .kind = K_LISTEN,
		BF(metrics_listen) },
	/* how long a committed event may wait before the broker looks:
	 * 1 ms (a look per ms costs ~2 % of a core idle) to 1 s (the
	 * housekeeping tick looks every 100 ms anyway) */
	[BK_DRAIN_LATENCY] = { .name = "drain_latency", .kind = K_DUR,
		BF(drain_latency_ms), .min = 1, .max = SEC_MS },
	[BK_SINK_THREADS] = { .name = "sink_threads", .kind = K_COUNT,
		BF(sink_threads), .min = 0, .max = 64 },
};

enum {
	SK_TYPE, SK_PATH, SK_URL, SK_WRITE_KEY, SK_DSN, SK_TOKEN_FILE,
	SK_HEADER, SK_ENCODING, SK_BATCH_MAX_EVENTS, SK_BATCH_MAX_BYTES,
	SK_EVENT_MAX_BYTES, SK_FLUSH_INTERVAL, SK_MAX_INFLIGHT,
	SK_CONNECT_TIMEOUT, SK_TIMEOUT, SK_COMPRESSION, SK_BACKOFF_BASE,
	SK_BACKOFF_MAX, SK_BACKOFF_JITTER, SK_MAX_RETRIES,
	SK_MAX_BACKOFF_DURATION, SK_RETRY_AFTER_MAX,
	SK_MAX_RATE_LIMIT_DURATION, SK_ON_RATE_LIMIT,
	SK_SETTINGS_URL, SK_SETTINGS_INTERVAL, SK_SERVICE_NAME,
	SK_CLIENT_REPORT_INTERVAL,
	SK_N
};

#define SF(f)	.off = offsetof(struct cfg_sink, f), \
		.size = sizeof(((struct cfg_sink *)0)->f)

static const struct cfg_key cfg_skeys[SK_N] = {
	[SK_TYPE] = { .name = "type", .kind = K_ENUM, SF(type),
		.names = cfg_type_names },
	[SK_PATH] = { .name = "path", .kind = K_STR, SF(path),
		.types = TY(SINK_FILE) },
	[SK_URL] = { .name = "url", .kind = K_URL, SF(url),
		.types = TY_NET },
	[SK_WRITE_KEY] = { .name = "write_key", .kind = K_STR,
		SF(write_key), .types = TY(SINK_SEGMENT), .secret = true },
	[SK_DSN] = { .name = "dsn", .kind = K_DSN, SF(dsn),
		.types = TY(SINK_SENTRY), .secret = true },
	[SK_TOKEN_FILE] = { .name = "token_file", .kind = K_STR,
		SF(token_file), .types = TY_NET },
	[SK_HEADER] = { .name = "header", .kind = K_HEADER, SF(headers),
		.types = TY_NET },
	[SK_ENCODING] = { .name = "encoding", .kind = K_ENUM, SF(encoding),
		.names = cfg_enc_names },
	[SK_BATCH_MAX_EVENTS] = { .name = "batch_max_events",
		.kind = K_COUNT, SF(batch_max_events), .min = 1,
		.max = U32_MAX },
	[SK_BATCH_MAX_BYTES] = { .name = "batch_max_bytes", .kind = K_SIZE,
		SF(batch_max_bytes), .min = 1, .max = U64_MAX },
	[SK_EVENT_MAX_BYTES] = { .name = "event_max_bytes", .kind = K_SIZE,
		SF(event_max_bytes), .min = 1, .max = U64_MAX },
	[SK_FLUSH_INTERVAL] = { .name = "flush_interval", .kind = K_DUR,
		SF(flush_interval_ms), .min = 0, .max = HOUR_MS },
	[SK_MAX_INFLIGHT] = { .name = "max_inflight", .kind = K_COUNT,
		SF(max_inflight), .min = 1, .max = 1024 },
	[SK_CONNECT_TIMEOUT] = { .name = "connect_timeout", .kind = K_DUR,
		SF(connect_timeout_ms), .min = 1, .max = HOUR_MS },
	[SK_TIMEOUT] = { .name = "timeout", .kind = K_DUR, SF(timeout_ms),
		.min = 1, .max = 24 * HOUR_MS },
	[SK_COMPRESSION] = { .name = "compression", .kind = K_ENUM,
		SF(compression), .names = cfg_comp_names },
	[SK_BACKOFF_BASE] = { .name = "backoff_base", .kind = K_DUR,
		SF(backoff_base_ms), .min = 1, .max = U64_MAX },
	[SK_BACKOFF_MAX] = { .name = "backoff_max", .kind = K_DUR,
		SF(backoff_max_ms), .min = 1, .max = U64_MAX },
	[SK_BACKOFF_JITTER] = { .name = "backoff_jitter", .kind = K_PCT,
		SF(backoff_jitter_pct), .min = 0, .max = 100 },
	[SK_MAX_RETRIES] = { .name = "max_retries", .kind = K_COUNT,
		SF(max_retries), .min = 0, .max = U32_MAX },
	[SK_MAX_BACKOFF_DURATION] = { .name = "max_backoff_duration",
		.kind = K_DUR, SF(max_backoff_duration_ms), .min = 0,
		.max = U64_MAX },
	[SK_RETRY_AFTER_MAX] = { .name = "retry_after_max", .kind = K_DUR,
		SF(retry_after_max_ms), .min = 0, .max = U64_MAX },
	[SK_MAX_RATE_LIMIT_DURATION] = { .name = "max_rate_limit_duration",
		.kind = K_DUR, SF(max_rate_limit_duration_ms), .min = 0,
		.max = U64_MAX },
	[SK_ON_RATE_LIMIT] = { .name = "on_rate_limit", .kind = K_ENUM,
		SF(on_rate_limit), .names = cfg_rl_names },
	/* protocol keys (broker/proto_*.c) */
	[SK_SETTINGS_URL] = { .name = "settings_url", .kind = K_URL,
		SF(settings_url), .types = TY(SINK_SEGMENT) },
	[SK_SETTINGS_INTERVAL] = { .name = "settings_interval", .kind = K_DUR,
		SF(settings_interval_ms), .min = 1000, .max = 24 * HOUR_MS,
		.types = TY(SINK_SEGMENT) },
	[SK_SERVICE_NAME] = { .name = "service_name", .kind = K_STR,
		SF(service_name), .types = TY(SINK_OTLP) },
	[SK_CLIENT_REPORT_INTERVAL] = { .name = "client_report_interval",
		.kind = K_DUR, SF(client_report_interval_ms), .min = 0,
		.max = HOUR_MS, .types = TY(SINK_SENTRY) },
};

enum cfg_sect { SECT_NONE, SECT_BROKER, SECT_SINK, SECT_BAD };

/* parse state; lines are 1-based, 0 = "not given" */
struct cfg_ctx {
	struct cfg *c;
	const char *file;
	FILE *in, *err;
	char *buf;			/* the current line */
	size_t cap, len, pos;
	int lineno;
	int errors;
	int sys_err;			/* -errno: read error, ENOMEM */
	enum cfg_sect sect;
	int sink;			/* index of the current sink */
	bool kv_pending;		/* key line not handled yet */
	bool secret;			/* the file holds a credential */
	int broker_line;
	int bline[BK_N];
	int sline[CFG_MAX_SINKS][SK_N];
	int stline[CFG_MAX_SINKS][CFG_MAX_STATUS];
	bool typed[CFG_MAX_SINKS];	/* type given and valid */
};

__attribute__((format(printf, 3, 4)))
static void cfg_err(struct cfg_ctx *x, int line, const char *fmt, ...)
{
	va_list ap;

	x->errors++;
	if (!x->err)
		return;
	fprintf(x->err, "%s:%d: ", x->file, line);
	va_start(ap, fmt);
	vfprintf(x->err, fmt, ap);
	va_end(ap);
	fputc('\n', x->err);
}

static void cfg_nomem(struct cfg_ctx *x)
{
	if (!x->sys_err)
		x->sys_err = -ENOMEM;
}

/* ---- strings --------------------------------------------------------- */

static bool cfg_is_static(const char *s)
{
	return s == cfg_def_spool_dir || s == cfg_def_sink_path;
}

static void cfg_str_free(char **p)
{
	if (*p && !cfg_is_static(*p))
		free(*p);
	*p = NULL;
}

int cfg_set_str(char **dst, const char *s)
{
	char *n = NULL;

	if (s) {
		n = strdup(s);
		if (!n)
			return -ENOMEM;
	}
	cfg_str_free(dst);
	*dst = n;
	return 0;
}

static bool cfg_streq(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return strcmp(a, b) == 0;
}

static int cfg_min(int a, int b)
{
	return a < b ? a : b;
}

/* ---- units ------------------------------------------------------------ */

/* Decimal digits at *sp: 0, -EINVAL (none) or -ERANGE. */
static int cfg_digits(const char **sp, uint64_t *out)
{
	const char *s = *sp;
	uint64_t v = 0;
	unsigned d;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	for (; isdigit((unsigned char)*s); s++) {
		d = (unsigned)(*s - '0');
		if (v > (U64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	*sp = s;
	*out = v;
	return 0;
}

static const char *cfg_skip_blanks(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

static int cfg_scale(uint64_t v, uint64_t mult, uint64_t *out)
{
	if (v > U64_MAX / mult)
		return -ERANGE;
	*out = v * mult;
	return 0;
}

/* "512", "64K", "64KB", "64KiB", "1g", "100B": 0, -EINVAL or -ERANGE */
static int cfg_size(const char *s, uint64_t *out)
{
	uint64_t v, mult;
	int rc;

	rc = cfg_digits(&s, &v);
	if (rc)
		return rc;
	s = cfg_skip_blanks(s);
	switch (toupper((unsigned char)*s)) {
	case '\0':
		return cfg_scale(v, 1, out);
	case 'B':
		return s[1] ? -EINVAL : cfg_scale(v, 1, out);
	case 'K':
		mult = KIB;
		break;
	case 'M':
		mult = MIB;
		break;
	case 'G':
		mult = GIB;
		break;
	default:
		return -EINVAL;
	}
	s++;
	if (*s && strcasecmp(s, "b") && strcasecmp(s, "ib"))
		return -EINVAL;
	return cfg_scale(v, mult, out);
}

/* "500ms", "5s", "2m", "1h": 0, -EINVAL, -ERANGE or E_NOUNIT */
static int cfg_duration(const char *s, uint64_t *out)
{
	uint64_t v, mult;
	int rc;

	rc = cfg_digits(&s, &v);
	if (rc)
		return rc;
	s = cfg_skip_blanks(s);
	if (!*s)
		return E_NOUNIT;
	if (!strcasecmp(s, "ms"))
		mult = 1;
	else if (!strcasecmp(s, "s"))
		mult = SEC_MS;
	else if (!strcasecmp(s, "m"))
		mult = MIN_MS;
	else if (!strcasecmp(s, "h"))
		mult = HOUR_MS;
	else
		return -EINVAL;
	return cfg_scale(v, mult, out);
}

static int cfg_count(const char *s, uint64_t *out)
{
	int rc = cfg_digits(&s, out);

	if (rc)
		return rc;
	return *s ? -EINVAL : 0;
}

/* "10" or "10%" */
static int cfg_pct(const char *s, uint64_t *out)
{
	int rc = cfg_digits(&s, out);

	if (rc)
		return rc;
	s = cfg_skip_blanks(s);
	if (*s == '%')
		s++;
	return *s ? -EINVAL : 0;
}

int cfg_parse_size(const char *s, uint64_t *out)
{
	return s && out && cfg_size(s, out) == 0 ? 0 : -EINVAL;
}

int cfg_parse_duration_ms(const char *s, uint64_t *out)
{
	return s && out && cfg_duration(s, out) == 0 ? 0 : -EINVAL;
}

static const char *cfg_fmt_size(uint64_t v, char *buf, size_t len)
{
	static const struct { uint64_t mult; char unit; } u[] = {
		{ GIB, 'G' }, { MIB, 'M' }, { KIB, 'K' } };
	size_t i;

	for (i = 0; i < sizeof(u) / sizeof(u[0]); i++)
		if (v && v % u[i].mult == 0) {
			snprintf(buf, len, "%llu%c",
				 (unsigned long long)(v / u[i].mult), u[i].unit);
			return buf;
		}
	snprintf(buf, len, "%llu", (unsigned long long)v);
	return buf;
}

static const char *cfg_fmt_dur(uint64_t ms, char *buf, size_t len)
{
	static const struct { uint64_t mult; const char *unit; } u[] = {
		{ HOUR_MS, "h" }, { MIN_MS, "m" }, { SEC_MS, "s" } };
	size_t i;

	for (i = 0; i < sizeof(u) / sizeof(u[0]); i++)
		if (ms && ms % u[i].mult == 0) {
			snprintf(buf, len, "%llu%s",
				 (unsigned long long)(ms / u[i].mult), u[i].unit);
			return buf;
		}
	snprintf(buf, len, "%llums", (unsigned long long)ms);
	return buf;
}

/* a number of kind k in the syntax cfg_load() reads */
static const char *cfg_fmt_num(const struct cfg_key *k, uint64_t v, char *buf,
			       size_t len)
{
	if (k->kind == K_SIZE)
		return cfg_fmt_size(v, buf, len);
	if (k->kind == K_DUR)
		return cfg_fmt_dur(v, buf, len);
	snprintf(buf, len, "%llu%s", (unsigned long long)v,
		 k->kind == K_PCT ? "%" : "");
	return buf;
}

/* ---- field access ---------------------------------------------------- */

static uint64_t cfg_get_num(const void *base, const struct cfg_key *k)
{
	const char *p = (const char *)base + k->off;
	uint32_t v32;
	uint64_t v64;

	if (k->size == sizeof(v32)) {
		memcpy(&v32, p, sizeof(v32));
		return v32;
	}
	memcpy(&v64, p, sizeof(v64));
	return v64;
}

static void cfg_put_num(void *base, const struct cfg_key *k, uint64_t v)
{
	char *p = (char *)base + k->off;
	uint32_t v32 = (uint32_t)v;

	if (k->size == sizeof(v32))
		memcpy(p, &v32, sizeof(v32));
	else
		memcpy(p, &v, sizeof(v));
}

static char **cfg_str_field(void *base, const struct cfg_key *k)
{
	return (char **)((char *)base + k->off);
}

/* ---- defaults --------------------------------------------------------- */

static void cfg_sink_type_defaults(struct cfg_sink *s, bool event_max,
				   bool on_rate_limit)
{
	if (event_max)
		s->event_max_bytes = s->type == SINK_SEGMENT ? 32 * KIB : MIB;
	if (on_rate_limit)
		s->on_rate_limit = s->type == SINK_SENTRY ? RL_DROP_CATEGORY :
							      RL_HOLD;
}

static void cfg_sink_init(struct cfg_sink *s, const char *name,
			  enum cfg_sink_type type)
{
	memset(s, 0, sizeof(*s));
	snprintf(s->name, sizeof(s->name), "%s", name);
	s->type = type;
	s->encoding = ENC_NDJSON;
	s->batch_max_events = 500;
	s->batch_max_bytes = 475000;
	s->flush_interval_ms = 500;
	s->max_inflight = 4;
	s->connect_timeout_ms = 2 * SEC_MS;
	s->timeout_ms = 15 * SEC_MS;
	s->compression = COMP_GZIP;
	s->backoff_base_ms = 500;
	s->backoff_max_ms = 60 * SEC_MS;
	s->backoff_jitter_pct = 10;
	s->max_retries = 1000;
	s->max_backoff_duration_ms = 12 * HOUR_MS;
	s->retry_after_max_ms = 300 * SEC_MS;
	s->max_rate_limit_duration_ms = 30 * MIN_MS;
	s->client_report_interval_ms = 30 * SEC_MS;
	s->settings_interval_ms = 5 * MIN_MS;
	cfg_sink_type_defaults(s, true, true);
}

static void cfg_default_sink(struct cfg_sink *s)
{
	cfg_sink_init(s, "default", SINK_FILE);
	s->path = (char *)cfg_def_sink_path;
}

void cfg_default(struct cfg *c)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->shm, sizeof(c->shm), "outbox");
	c->shm_mode = 0660;
	c->ring_size = 64 * MIB;
	c->max_record = MIB;
	c->producer_slots = 1024;
	c->spool_dir = (char *)cfg_def_spool_dir;
	c->spool_max = 512 * MIB;
	c->spool_full = SPOOL_DROP_NEWEST;
	c->durability = DUR_WRITE;
	c->sync_interval_ms = 100;
	c->shutdown_timeout_ms = 5 * SEC_MS;
	c->log_level = LOG_INFO;
	c->segment_size = 16 * MIB;
	c->stall_timeout_ms = 10 * SEC_MS;
	c->stall_action = STALL_WAIT;
	c->drain_latency_ms = 20;
	c->sink_threads = 1;
	cfg_default_sink(&c->sinks[0]);
	c->nsinks = 1;
}

static void cfg_sink_free(struct cfg_sink *s)
{
	int i;

	cfg_str_free(&s->path);
	cfg_str_free(&s->url);
	cfg_str_free(&s->write_key);
	cfg_str_free(&s->dsn);
	cfg_str_free(&s->token_file);
	cfg_str_free(&s->settings_url);
	cfg_str_free(&s->service_name);
	for (i = 0; i < s->nheaders; i++)
		cfg_str_free(&s->headers[i]);
	s->nheaders = 0;
}

void cfg_free(struct cfg *c)
{
	int i;

	if (!c)
		return;
	free(c->file);
	c->file = NULL;
	cfg_str_free(&c->spool_dir);
	cfg_str_free(&c->metrics_listen);
	for (i = 0; i < c->nsinks; i++)
		cfg_sink_free(&c->sinks[i]);
	c->nsinks = 0;
}

int cfg_sink_find(const struct cfg *c, const char *name)
{
	int i;

	for (i = 0; i < c->nsinks; i++)
		if (strcmp(c->sinks[i].name, name) == 0)
			return i;
	return -1;
}

const char *cfg_sink_type_name(enum cfg_sink_type t)
{
	if ((unsigned)t >= sizeof(cfg_type_names) / sizeof(cfg_type_names[0]) - 1)
		return "?";
	return cfg_type_names[t];
}

/* ---- values ----------------------------------------------------------- */

static bool cfg_comment_at(const char *s, const char *p)
{
	return (*p == ';' || *p == '#') &&
	       (p == s || isspace((unsigned char)p[-1]));
}

static void cfg_rtrim(char *s)
{
	size_t n = strlen(s);

	while (n && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
}

static int cfg_unescape(char c)
{
	switch (c) {
	case '\\':
	case '"':
		return c;
	case 'n':
		return '\n';
	case 't':
		return '\t';
	case 'r':
		return '\r';
	}
	return -1;
}

/* A "quoted value", in place: 0, or -1 with *why. */
static int cfg_unquote_quoted(char *v, const char **why)
{
	char *r = v + 1, *w = v;
	int c;

	for (; *r != '"'; r++) {
		if (!*r) {
			*why = "unterminated quoted value";
			return -1;
		}
		if (*r == '\\') {
			c = cfg_unescape(*++r);
			if (c < 0) {
				*why = "bad escape in quoted value (use \\\" "
				       "\\\\ \\n \\t \\r)";
				return -1;
			}
			*w++ = (char)c;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
	r = (char *)cfg_skip_blanks(r + 1);
	if (*r && *r != ';' && *r != '#') {
		*why = "text after the closing quote";
		return -1;
	}
	return 0;
}

/* The value as inih hands it over (trimmed): strips an inline comment, or
 * unquotes. In place; 0, or -1 with *why. */
static int cfg_unquote(char *v, const char **why)
{
	char *p;

	if (*v == '"')
		return cfg_unquote_quoted(v, why);
	for (p = v; *p; p++)
		if (cfg_comment_at(v, p)) {
			*p = '\0';
			break;
		}
	cfg_rtrim(v);
	return 0;
}

static bool cfg_name_char(char c)
{
	return isalnum((unsigned char)c) || c == '_' || c == '.' || c == '-';
}

static bool cfg_tchar(char c)
{
	return isalnum((unsigned char)c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool cfg_has_ctl(const char *s, bool tab_ok)
{
	for (; *s; s++)
		if (iscntrl((unsigned char)*s) && !(tab_ok && *s == '\t'))
			return true;
	return false;
}

static bool cfg_url_ok(const char *v)
{
	if (strncasecmp(v, "http://", 7) && strncasecmp(v, "https://", 8))
		return false;
	for (; *v; v++)
		if (isspace((unsigned char)*v) || iscntrl((unsigned char)*v))
			return false;
	return true;
}

int cfg_parse_listen(const char *s, struct sockaddr_storage *ss,
		     socklen_t *len)
{
	const char *colon = strrchr(s, ':'), *p;
	char host[INET6_ADDRSTRLEN + 2];
	struct sockaddr_storage tmp;
	struct sockaddr_in *v4 = (struct sockaddr_in *)&tmp;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&tmp;
	size_t hl;
	unsigned long port = 0;

	if (!colon || colon == s || !colon[1] || strlen(colon + 1) > 5)
		return -EINVAL;
	for (p = colon + 1; *p; p++) {
		if (!isdigit((unsigned char)*p))
			return -EINVAL;
		port = port * 10 + (unsigned long)(*p - '0');
	}
	if (port > 65535)
		return -EINVAL;
	hl = (size_t)(colon - s);
	if (hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, hl);
	host[hl] = 0;
	memset(&tmp, 0, sizeof(tmp));
	if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
		host[hl - 1] = 0;
		if (inet_pton(AF_INET6, host + 1, &v6->sin6_addr) != 1)
			return -EINVAL;
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port);
		if (len)
			*len = sizeof(*v6);
	} else {
		if (inet_pton(AF_INET, host, &v4->sin_addr) != 1)
			return -EINVAL;
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)port);
		if (len)
			*len = sizeof(*v4);
	}
	if (ss)
		*ss = tmp;
	return 0;
}

/* https://KEY@HOST/PROJECT: a key before '@' and a host after it */
static bool cfg_dsn_ok(const char *v)
{
	const char *at;

	if (!cfg_url_ok(v))
		return false;
	v = strstr(v, "://") + 3;
	at = strchr(v, '@');
	return at && at > v && at[1] && at[1] != '/';
}

static int cfg_set_string(struct cfg_ctx *x, const struct cfg_key *k,
			  void *base, const char *v)
{
	if (k->kind == K_LISTEN && cfg_parse_listen(v, NULL, NULL) < 0) {
		cfg_err(x, x->lineno, "%s: '%.64s' is not ADDR:PORT (a numeric "
			"IPv4 address or [IPv6] address, port 0 to 65535), e.g. "
			"127.0.0.1:9464", k->name, v);
		return -1;
	}
	if (k->kind == K_URL && !cfg_url_ok(v)) {
		cfg_err(x, x->lineno, "%s: '%.64s' is not an http:// or "
			"https:// URL", k->name, v);
		return -1;
	}
	if (k->kind == K_DSN && !cfg_dsn_ok(v)) {
		/* a credential: not echoed */
		cfg_err(x, x->lineno, "%s: not a DSN "
			"(https://KEY@HOST/PROJECT)", k->name);
		return -1;
	}
	if (cfg_has_ctl(v, k->kind == K_STR)) {
		cfg_err(x, x->lineno, "%s: control character in value",
			k->name);
		return -1;
	}
	if (cfg_set_str(cfg_str_field(base, k), v) < 0) {
		cfg_nomem(x);
		return -1;
	}
	return 0;
}

static bool cfg_is_auth_header(const char *v)
{
	return !strncasecmp(v, "authorization", 13) ||
	       !strncasecmp(v, "proxy-authorization", 19);
}

static int cfg_add_header(struct cfg_ctx *x, struct cfg_sink *s,
			  const char *v)
{
	const char *colon = strchr(v, ':');
	const char *p;

	if (cfg_is_auth_header(v))
		x->secret = true;
	if (!colon || colon == v)
		goto bad;
	for (p = v; p < colon; p++)
		if (!cfg_tchar(*p))
			goto bad;
	if (cfg_has_ctl(colon, true)) {
		cfg_err(x, x->lineno, "header: control character in the value "
			"of '%.*s'", cfg_min((int)(colon - v), 64), v);
		return -1;
	}
	if (s->nheaders == CFG_MAX_HEADERS) {
		cfg_err(x, x->lineno, "header: too many headers (max %d)",
			CFG_MAX_HEADERS);
		return -1;
	}
	s->headers[s->nheaders] = strdup(v);
	if (!s->headers[s->nheaders]) {
		cfg_nomem(x);
		return -1;
	}
	s->nheaders++;
	return 0;
bad:
	/* the value may be a credential: not echoed */
	cfg_err(x, x->lineno, "header: expected 'Name: value' with a "
		"token name");
	return -1;
}

static int cfg_set_shm(struct cfg_ctx *x, const struct cfg_key *k,
		       void *base, const char *v)
{
	const char *n = v, *p;

	while (*n == '/')
		n++;
	for (p = n; *p && cfg_name_char(*p); p++)
		;
	if (*p || p == n || p - n > 60 || !strcmp(n, ".") ||
	    !strcmp(n, "..")) {
		cfg_err(x, x->lineno, "%s: bad shm name '%.64s' (1 to 60 of "
			"A-Z a-z 0-9 _ . -, after an optional '/')", k->name, v);
		return -1;
	}
	snprintf((char *)base + k->off, k->size, "%s", v);
	return 0;
}

static int cfg_set_mode(struct cfg_ctx *x, const struct cfg_key *k,
			void *base, const char *v)
{
	uint64_t m = 0;
	const char *p;

	for (p = v; *p >= '0' && *p <= '7'; p++)
		m = m * 8 + (uint64_t)(*p - '0');
	if (*p || p == v || p - v > 4 || m > 0777) {
		cfg_err(x, x->lineno, "%s: bad mode '%.64s' (octal, at most "
			"0777, e.g. 0660)", k->name, v);
		return -1;
	}
	if ((m & 0600) != 0600) {
		cfg_err(x, x->lineno, "%s: %04llo must let the owner read and "
			"write (0600)", k->name, (unsigned long long)m);
		return -1;
	}
	cfg_put_num(base, k, m);
	return 0;
}

static void cfg_enum_list(const char *const *names, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	for (; *names && n < len; names++)
		n += (size_t)snprintf(buf + n, len - n, "%s%s",
				      n ? ", " : "", *names);
}

static int cfg_enum(const char *const *names, const char *v)
{
	int i;

	for (i = 0; names[i]; i++)
		if (!strcasecmp(names[i], v))
			return i;
	return -1;
}

static int cfg_set_enum(struct cfg_ctx *x, const struct cfg_key *k,
			void *base, const char *v)
{
	int i = cfg_enum(k->names, v);
	char list[128];

	if (i < 0) {
		cfg_enum_list(k->names, list, sizeof(list));
		cfg_err(x, x->lineno, "%s: bad value '%.64s' (one of: %s)",
			k->name, v, list);
		return -1;
	}
	cfg_put_num(base, k, (uint64_t)i);
	return 0;
}

static const char *cfg_kind_syntax(enum cfg_kind kind)
{
	switch (kind) {
	case K_SIZE:
		return "a size such as 512, 64K, 16M or 1G";
	case K_DUR:
		return "a duration such as 500ms, 5s, 2m or 1h";
	case K_PCT:
		return "a percentage such as 10%";
	default:
		return "a non-negative integer";
	}
}

static int cfg_parse_num(const struct cfg_key *k, const char *v, uint64_t *n)
{
	switch (k->kind) {
	case K_SIZE:
		return cfg_size(v, n);
	case K_DUR:
		return cfg_duration(v, n);
	case K_PCT:
		return cfg_pct(v, n);
	default:
		return cfg_count(v, n);
	}
}

static int cfg_check_range(struct cfg_ctx *x, const struct cfg_key *k,
			   uint64_t n)
{
	char a[32], b[32], c[32];

	if (n >= k->min && n <= k->max)
		return 0;
	cfg_fmt_num(k, n, a, sizeof(a));
	cfg_fmt_num(k, k->min, b, sizeof(b));
	if (k->max == U64_MAX || (k->size == 4 && k->max == U32_MAX))
		cfg_err(x, x->lineno, "%s: %s is less than %s", k->name, a, b);
	else
		cfg_err(x, x->lineno, "%s: %s is out of range (%s to %s)",
			k->name, a, b, cfg_fmt_num(k, k->max, c, sizeof(c)));
	return -1;
}

static int cfg_set_number(struct cfg_ctx *x, const struct cfg_key *k,
			  void *base, const char *v)
{
	uint64_t n = 0;
	int rc = cfg_parse_num(k, v, &n);

	if (rc == E_NOUNIT) {
		cfg_err(x, x->lineno, "%s: unit missing in '%.64s' (ms, s, m "
			"or h)", k->name, v);
		return -1;
	}
	if (rc == -ERANGE || (rc == 0 && k->size == 4 && n > U32_MAX)) {
		cfg_err(x, x->lineno, "%s: '%.64s' is too large", k->name, v);
		return -1;
	}
	if (rc) {
		cfg_err(x, x->lineno, "%s: bad value '%.64s' (expected %s)",
			k->name, v, cfg_kind_syntax(k->kind));
		return -1;
	}
	if (cfg_check_range(x, k, n))
		return -1;
	if (k->pow2 && (n & (n - 1))) {
		cfg_err(x, x->lineno, "%s: %s is not a power of two", k->name,
			v);
		return -1;
	}
	cfg_put_num(base, k, n);
	return 0;
}

static int cfg_set_value(struct cfg_ctx *x, const struct cfg_key *k,
			 void *base, const char *v)
{
	if (!*v) {
		cfg_err(x, x->lineno, "%s: empty value", k->name);
		return -1;
	}
	switch (k->kind) {
	case K_STR:
	case K_URL:
	case K_DSN:
	case K_LISTEN:
		return cfg_set_string(x, k, base, v);
	case K_HEADER:
		return cfg_add_header(x, base, v);
	case K_SHM:
		return cfg_set_shm(x, k, base, v);
	case K_MODE:
		return cfg_set_mode(x, k, base, v);
	case K_ENUM:
		return cfg_set_enum(x, k, base, v);
	default:
		return cfg_set_number(x, k, base, v);
	}
}

/* Unquotes raw and stores it into base by key k: 0 or -1 (reported). */
static int cfg_apply(struct cfg_ctx *x, const struct cfg_key *k, void *base,
		     const char *raw)
{
	const char *why = NULL;
	char *v = strdup(raw);
	int rc;

	if (!v) {
		cfg_nomem(x);
		return -1;
	}
	rc = cfg_unquote(v, &why);
	if (rc)
		cfg_err(x, x->lineno, "%s: %s", k->name, why);
	else
		rc = cfg_set_value(x, k, base, v);
	free(v);
	return rc;
}

/* ---- keys ------------------------------------------------------------- */

static int cfg_key_find(const struct cfg_key *keys, int n, const char *name)
{
	int i;

	for (i = 0; i < n; i++)
		if (!strcasecmp(keys[i].name, name))
			return i;
	return -1;
}

/* Records the line of a key: true when it was given before. */
static bool cfg_dup(struct cfg_ctx *x, int *line, const char *name)
{
	if (*line) {
		cfg_err(x, x->lineno, "duplicate key '%s' (first at line %d)",
			name, *line);
		return true;
	}
	*line = x->lineno;
	return false;
}

static void cfg_broker_key(struct cfg_ctx *x, const char *name,
			   const char *raw)
{
	int k = cfg_key_find(cfg_bkeys, BK_N, name);

	if (k < 0) {
		cfg_err(x, x->lineno, "unknown key '%.64s' in [broker]", name);
		return;
	}
	if (cfg_dup(x, &x->bline[k], cfg_bkeys[k].name))
		return;
	cfg_apply(x, &cfg_bkeys[k], x->c, raw);
}

/* NNN of status.NNN: 100..599, or -1 */
static int cfg_status_code(const char *s)
{
	int i;

	for (i = 0; i < 3; i++)
		if (!isdigit((unsigned char)s[i]))
			return -1;
	if (s[3])
		return -1;
	i = atoi(s);
	return i >= 100 && i <= 599 ? i : -1;
}

static int cfg_status_find(const struct cfg_sink *s, int code)
{
	int i;

	for (i = 0; i < s->nstatus; i++)
		if (s->status[i].code == code)
			return i;
	return -1;
}

static void cfg_status_key(struct cfg_ctx *x, struct cfg_sink *s,
			   const char *name, const char *raw)
{
	int code = cfg_status_code(name + 7);
	const char *why = NULL;
	char list[64], *v;
	int i, act = -1;

	if (code < 0) {
		cfg_err(x, x->lineno, "unknown key '%.64s' (status.NNN takes "
			"an HTTP status 100 to 599)", name);
		return;
	}
	i = cfg_status_find(s, code);
	if (i >= 0) {
		cfg_err(x, x->lineno, "duplicate key 'status.%d' (first at "
			"line %d)", code, x->stline[x->sink][i]);
		return;
	}
	if (s->nstatus == CFG_MAX_STATUS) {
		cfg_err(x, x->lineno, "too many status overrides (max %d)",
			CFG_MAX_STATUS);
		return;
	}
	v = strdup(raw);
	if (!v) {
		cfg_nomem(x);
		return;
	}
	if (cfg_unquote(v, &why)) {
		cfg_err(x, x->lineno, "status.%d: %s", code, why);
	} else if ((act = cfg_enum(cfg_action_names, v)) < 0) {
		cfg_enum_list(cfg_action_names, list, sizeof(list));
		cfg_err(x, x->lineno, "status.%d: bad value '%.64s' (one of: "
			"%s)", code, v, list);
	} else {
		x->stline[x->sink][s->nstatus] = x->lineno;
		s->status[s->nstatus].code = code;
		s->status[s->nstatus].action = (enum cfg_status_action)act;
		s->nstatus++;
	}
	free(v);
}

static void cfg_sink_key(struct cfg_ctx *x, const char *name,
			 const char *raw)
{
	struct cfg_sink *s = &x->c->sinks[x->sink];
	int *line = x->sline[x->sink];
	int k;

	if (!strncasecmp(name, "status.", 7)) {
		cfg_status_key(x, s, name, raw);
		return;
	}
	k = cfg_key_find(cfg_skeys, SK_N, name);
	if (k < 0) {
		cfg_err(x, x->lineno, "unknown key '%.64s' in [sink %s]", name,
			s->name);
		return;
	}
	if (cfg_skeys[k].secret)
		x->secret = true;
	if (k == SK_HEADER) {
		if (!line[k])
			line[k] = x->lineno;
	} else if (cfg_dup(x, &line[k], cfg_skeys[k].name)) {
		return;
	}
	if (cfg_apply(x, &cfg_skeys[k], s, raw) == 0 && k == SK_TYPE)
		x->typed[x->sink] = true;
}

static int cfg_ini_handler(void *user, const char *section, const char *name,
			   const char *value)
{
	struct cfg_ctx *x = user;

	(void)section;		/* ours is x->sect: inih truncates names */
	x->kv_pending = false;
	switch (x->sect) {
	case SECT_NONE:
		cfg_err(x, x->lineno, "key '%.64s' outside of any section "
			"([broker] or [sink NAME])", name);
		break;
	case SECT_BROKER:
		cfg_broker_key(x, name, value);
		break;
	case SECT_SINK:
		cfg_sink_key(x, name, value);
		break;
	case SECT_BAD:
		break;		/* its header was reported */
	}
	return 1;
}

/* ---- sections and lines ---------------------------------------------- */

static void cfg_sink_section(struct cfg_ctx *x, const char *p, const char *e)
{
	struct cfg *c = x->c;
	char name[CFG_NAME_MAX];
	const char *q;
	int i;

	while (p < e && isspace((unsigned char)*p))
		p++;
	if (p == e) {
		cfg_err(x, x->lineno, "sink section without a name "
			"([sink NAME])");
		return;
	}
	if (e - p >= CFG_NAME_MAX) {
		cfg_err(x, x->lineno, "sink name '%.*s...' is too long (max %d "
			"characters)", 32, p, CFG_NAME_MAX - 1);
		return;
	}
	for (q = p; q < e; q++)
		if (!cfg_name_char(*q)) {
			cfg_err(x, x->lineno, "sink name '%.*s' has a character "
				"other than A-Z a-z 0-9 _ . -", (int)(e - p), p);
			return;
		}
	memcpy(name, p, (size_t)(e - p));
	name[e - p] = '\0';
	/* the spool keeps each sink in <spool_dir>/<name>/ */
	if (!strcmp(name, ".") || !strcmp(name, "..")) {
		cfg_err(x, x->lineno, "sink name '%s' is reserved (it names a "
			"directory of the spool)", name);
		return;
	}
	i = cfg_sink_find(c, name);
	if (i >= 0) {
		cfg_err(x, x->lineno, "duplicate sink '%s' (first at line %d)",
			name, c->sinks[i].line);
		return;
	}
	if (c->nsinks == CFG_MAX_SINKS) {
		cfg_err(x, x->lineno, "too many sinks (max %d)", CFG_MAX_SINKS);
		return;
	}
	x->sink = c->nsinks++;
	cfg_sink_init(&c->sinks[x->sink], name, SINK_FILE);
	c->sinks[x->sink].line = x->lineno;
	x->sect = SECT_SINK;
}

/* "[...]" from s to e (trimmed); sets x->sect */
static void cfg_section(struct cfg_ctx *x, const char *s, const char *e)
{
	const char *close = memchr(s, ']', (size_t)(e - s));
	const char *p, *n, *ne;

	x->sect = SECT_BAD;
	if (!close) {
		cfg_err(x, x->lineno, "missing ']' in section header");
		return;
	}
	p = cfg_skip_blanks(close + 1);
	if (p < e && *p != ';' && *p != '#') {
		cfg_err(x, x->lineno, "unexpected text after section header");
		return;
	}
	for (n = s + 1; n < close && isspace((unsigned char)*n); n++)
		;
	for (ne = close; ne > n && isspace((unsigned char)ne[-1]); ne--)
		;
	if (ne - n == 6 && !strncasecmp(n, "broker", 6)) {
		x->sect = SECT_BROKER;
		if (!x->broker_line)
			x->broker_line = x->lineno;
	} else if (ne - n >= 4 && !strncasecmp(n, "sink", 4) &&
		   (ne - n == 4 || isspace((unsigned char)n[4]))) {
		cfg_sink_section(x, n + 4, ne);
	} else {
		cfg_err(x, x->lineno, "unknown section [%.*s]",
			cfg_min((int)(ne - n), 64), n);
	}
}

/* a line inih must not see: replaced by an empty one */
static void cfg_blank_line(struct cfg_ctx *x)
{
	x->buf[0] = '\n';
	x->buf[1] = '\0';
	x->len = 1;
}

static void cfg_scan_line(struct cfg_ctx *x)
{
	char *s = x->buf, *e;
	size_t n;

	if (x->lineno == 1 && x->len >= 3 && !memcmp(s, "\xef\xbb\xbf", 3)) {
		memmove(s, s + 3, x->len - 2);	/* with the NUL */
		x->len -= 3;
	}
	if (memchr(s, '\0', x->len)) {
		cfg_err(x, x->lineno, "NUL byte in line");
		cfg_blank_line(x);
		return;
	}
	n = x->len;
	if (n && s[n - 1] == '\n')
		n--;
	if (n && s[n - 1] == '\r')
		n--;
	if (n > CFG_LINE_MAX) {
		cfg_err(x, x->lineno, "line too long (max %d bytes)",
			CFG_LINE_MAX);
		cfg_blank_line(x);
		return;
	}
	for (e = s + x->len; e > s && isspace((unsigned char)e[-1]); e--)
		;
	while (s < e && isspace((unsigned char)*s))
		s++;
	if (s == e || *s == ';' || *s == '#')
		return;			/* blank or comment: inih skips it */
	if (*s == '[') {
		cfg_section(x, s, e);
		cfg_blank_line(x);
		return;
	}
	x->kv_pending = true;
}

/* The previous line is done: a key line inih never handed over had no
 * '=' (or ':'). */
static void cfg_finish_line(struct cfg_ctx *x)
{
	if (!x->kv_pending)
		return;
	x->kv_pending = false;
	cfg_err(x, x->lineno, "expected 'key = value'");
}

static int cfg_next_line(struct cfg_ctx *x)
{
	ssize_t n;

	errno = 0;
	n = getline(&x->buf, &x->cap, x->in);
	if (n < 0) {
		if (errno || ferror(x->in))
			x->sys_err = errno ? -errno : -EIO;
		return -1;
	}
	cfg_finish_line(x);
	x->lineno++;
	x->len = (size_t)n;
	x->pos = 0;
	cfg_scan_line(x);
	return 0;
}

/* inih's fgets(): hands out the current line, reading the next one when
 * it is used up. */
static char *cfg_reader(char *str, int num, void *stream)
{
	struct cfg_ctx *x = stream;
	size_t n;

	if (num < 2 || x->sys_err)
		return NULL;
	if (x->pos >= x->len && cfg_next_line(x) < 0)
		return NULL;
	n = x->len - x->pos;
	if (n > (size_t)num - 1)
		n = (size_t)num - 1;
	memcpy(str, x->buf + x->pos, n);
	str[n] = '\0';
	x->pos += n;
	return str;
}

/* ---- inih options ------------------------------------------------------ */

struct cfg_ini_opts {
	bool multiline, bom, inline_comments, use_stack, allow_realloc;
	bool stop_on_first_error, no_value;
	int max_line, initial_alloc;
	char *start_prefixes, *inline_prefixes;
};

static void cfg_ini_save(struct cfg_ini_opts *o)
{
	o->multiline = ini_allow_multiline;
	o->bom = ini_allow_bom;
	o->inline_comments = ini_allow_inline_comments;
	o->use_stack = ini_use_stack;
	o->allow_realloc = ini_allow_realloc;
	o->stop_on_first_error = ini_stop_on_first_error;
	o->no_value = ini_allow_no_value;
	o->max_line = ini_max_line;
	o->initial_alloc = ini_initial_alloc;
	o->start_prefixes = ini_start_comment_prefixes;
	o->inline_prefixes = ini_inline_comment_prefixes;
}

static void cfg_ini_restore(const struct cfg_ini_opts *o)
{
	ini_allow_multiline = o->multiline;
	ini_allow_bom = o->bom;
	ini_allow_inline_comments = o->inline_comments;
	ini_use_stack = o->use_stack;
	ini_allow_realloc = o->allow_realloc;
	ini_stop_on_first_error = o->stop_on_first_error;
	ini_allow_no_value = o->no_value;
	ini_max_line = o->max_line;
	ini_initial_alloc = o->initial_alloc;
	ini_start_comment_prefixes = o->start_prefixes;
	ini_inline_comment_prefixes = o->inline_prefixes;
}

static void cfg_ini_setup(void)
{
	static char comment_chars[] = ";#";	/* inih wants char * */

	ini_allow_multiline = false;	/* indented lines are plain lines */
	ini_allow_bom = false;		/* stripped by cfg_scan_line() */
	ini_allow_inline_comments = false; /* done by cfg_unquote() */
	ini_use_stack = false;		/* heap buffer, grown by realloc */
	ini_allow_realloc = true;
	ini_stop_on_first_error = false;
	ini_allow_no_value = false;
	ini_max_line = CFG_LINE_MAX + 3;	/* CR LF NUL */
	ini_initial_alloc = 256;
	ini_start_comment_prefixes = comment_chars;
	ini_inline_comment_prefixes = comment_chars;
}

/* ---- checks after parsing --------------------------------------------- */

/* the line to blame for a rule between two keys: the later one given */
static int cfg_xline(int a, int b, int fallback)
{
	int l = a > b ? a : b;

	return l ? l : (fallback ? fallback : 1);
}

static void cfg_check_broker(struct cfg_ctx *x)
{
	const struct cfg *c = x->c;
	const int *l = x->bline;
	char a[32], b[32];

	if (c->max_record > c->ring_size / 8)
		cfg_err(x, cfg_xline(l[BK_MAX_RECORD], l[BK_RING_SIZE],
				     x->broker_line),
			"max_record %s is more than ring_size/8 (%s)",
			cfg_fmt_size(c->max_record, a, sizeof(a)),
			cfg_fmt_size(c->ring_size / 8, b, sizeof(b)));
	if (c->segment_size < c->max_record + SEG_SLACK)
		cfg_err(x, cfg_xline(l[BK_SEGMENT_SIZE], l[BK_MAX_RECORD],
				     x->broker_line),
			"segment_size %s cannot hold a max_record (%s) record: "
			"it must be at least max_record + 4K",
			cfg_fmt_size(c->segment_size, a, sizeof(a)),
			cfg_fmt_size(c->max_record, b, sizeof(b)));
	if (c->spool_max < c->segment_size)
		cfg_err(x, cfg_xline(l[BK_SPOOL_MAX], l[BK_SEGMENT_SIZE],
				     x->broker_line),
			"spool_max %s is less than segment_size %s",
			cfg_fmt_size(c->spool_max, a, sizeof(a)),
			cfg_fmt_size(c->segment_size, b, sizeof(b)));
}

static void cfg_need(struct cfg_ctx *x, const struct cfg_sink *s, bool ok,
		     const char *what)
{
	if (!ok)
		cfg_err(x, s->line, "sink '%s': type %s needs %s", s->name,
			cfg_sink_type_name(s->type), what);
}

static void cfg_check_sink(struct cfg_ctx *x, int i)
{
	struct cfg_sink *s = &x->c->sinks[i];
	const int *l = x->sline[i];
	char a[32], b[32];
	int k;

	if (!l[SK_TYPE]) {
		cfg_err(x, s->line, "sink '%s': missing type (file, discard, "
			"http, segment, sentry or otlp)", s->name);
		return;
	}
	if (!x->typed[i])
		return;			/* bad type: reported */
	for (k = 0; k < SK_N; k++)
		if (l[k] && cfg_skeys[k].types &&
		    !(cfg_skeys[k].types & TY(s->type)))
			cfg_err(x, l[k], "%s does not apply to a %s sink",
				cfg_skeys[k].name, cfg_sink_type_name(s->type));
	/* a key given with a bad value was reported already */
	cfg_need(x, s, s->type != SINK_FILE || l[SK_PATH], "path");
	/* segment has a default url (api.segment.io) */
	cfg_need(x, s, !(s->type == SINK_HTTP || s->type == SINK_OTLP) ||
		 l[SK_URL], "url");
	cfg_need(x, s, s->type != SINK_SEGMENT || l[SK_WRITE_KEY],
		 "write_key");
	cfg_need(x, s, s->type != SINK_SENTRY || l[SK_DSN] || l[SK_URL],
		 "dsn or url");
	if (s->backoff_max_ms < s->backoff_base_ms)
		cfg_err(x, cfg_xline(l[SK_BACKOFF_MAX], l[SK_BACKOFF_BASE],
				     s->line),
			"backoff_max %s is less than backoff_base %s",
			cfg_fmt_dur(s->backoff_max_ms, a, sizeof(a)),
			cfg_fmt_dur(s->backoff_base_ms, b, sizeof(b)));
	cfg_sink_type_defaults(s, !l[SK_EVENT_MAX_BYTES],
			       !l[SK_ON_RATE_LIMIT]);
}

static void cfg_add_default(struct cfg_ctx *x)
{
	struct cfg *c = x->c;

	if (cfg_sink_find(c, "default") >= 0)
		return;
	if (c->nsinks == CFG_MAX_SINKS) {
		cfg_err(x, c->sinks[c->nsinks - 1].line, "no room for the "
			"built-in sink 'default' (max %d sinks with it)",
			CFG_MAX_SINKS);
		return;
	}
	cfg_default_sink(&c->sinks[c->nsinks++]);
}

static void cfg_check(struct cfg_ctx *x)
{
	int i;

	cfg_check_broker(x);
	for (i = 0; i < x->c->nsinks; i++)
		cfg_check_sink(x, i);
	cfg_add_default(x);
}

/* Group root (gid 0) reading it is no exposure: the packaged file is
 * outbox:root 0640, readable by the broker and root, not by the
 * producers of the group `outbox`. */
static void cfg_warn_secret(struct cfg_ctx *x)
{
	struct stat st;

	if (!x->secret || !x->err || fstat(fileno(x->in), &st) < 0 ||
	    !(st.st_mode & (st.st_gid == 0 ? 004 : 044)))
		return;
	fprintf(x->err, "%s: warning: holds credentials (write_key, dsn or an "
		"Authorization header) but is readable by group or others "
		"(mode %04o); chmod 600 it\n", x->file,
		(unsigned)(st.st_mode & 07777));
}

/* ---- load -------------------------------------------------------------- */

static int cfg_parse(struct cfg_ctx *x)
{
	struct cfg_ini_opts saved;
	int rc;

	cfg_ini_save(&saved);
	cfg_ini_setup();
	rc = ini_parse_stream(cfg_reader, x, cfg_ini_handler, x);
	cfg_ini_restore(&saved);
	cfg_finish_line(x);
	if (rc == -2)
		cfg_nomem(x);
	if (!x->sys_err)
		cfg_check(x);
	if (x->sys_err) {
		if (x->err)
			fprintf(x->err, "%s: %s\n", x->file,
				strerror(-x->sys_err));
		return x->sys_err;
	}
	cfg_warn_secret(x);
	return x->errors;
}

static int cfg_open(struct cfg_ctx *x)
{
	struct stat st;
	int rc = 0;

	x->in = fopen(x->file, "re");
	if (!x->in)
		rc = -errno;
	else if (fstat(fileno(x->in), &st) < 0)
		rc = -errno;
	else if (S_ISDIR(st.st_mode))
		rc = -EISDIR;
	if (rc && x->err)
		fprintf(x->err, "%s: %s\n", x->file, strerror(-rc));
	return rc;
}

int cfg_load(struct cfg *c, const char *path, FILE *err)
{
	struct cfg_ctx *x;
	int rc;

	cfg_default(c);
	if (!path)
		return -EINVAL;
	c->nsinks = 0;		/* the file's, plus "default" if missing */
	x = calloc(1, sizeof(*x));
	c->file = strdup(path);
	if (!x || !c->file) {
		rc = -ENOMEM;
		if (err)
			fprintf(err, "%s: %s\n", path, strerror(ENOMEM));
		goto out;
	}
	x->c = c;
	x->file = path;
	x->err = err;
	rc = cfg_open(x);
	if (rc == 0)
		rc = cfg_parse(x);
out:
	if (x && x->in)
		fclose(x->in);
	if (x)
		free(x->buf);
	free(x);
	if (rc < 0) {
		cfg_free(c);
		cfg_default(c);
	}
	return rc;
}

/* ---- print ------------------------------------------------------------- */

/* Would v read back unchanged without quotes? */
static bool cfg_needs_quotes(const char *v)
{
	size_t n = strlen(v);
	const char *p;

	if (!n || *v == '"' || isspace((unsigned char)v[0]) ||
	    isspace((unsigned char)v[n - 1]))
		return true;
	for (p = v; *p; p++)
		if (cfg_comment_at(v, p) || *p == '\n' || *p == '\r' ||
		    *p == '\t')
			return true;
	return false;
}

static void cfg_print_kv(FILE *out, const char *name, const char *v)
{
	const char *p;

	if (!cfg_needs_quotes(v)) {
		fprintf(out, "%s = %s\n", name, v);
		return;
	}
	fprintf(out, "%s = \"", name);
	for (p = v; *p; p++) {
		switch (*p) {
		case '"':
		case '\\':
			fputc('\\', out);
			fputc(*p, out);
			break;
		case '\n':
			fputs("\\n", out);
			break;
		case '\t':
			fputs("\\t", out);
			break;
		case '\r':
			fputs("\\r", out);
			break;
		default:
			fputc(*p, out);
		}
	}
	fputs("\"\n", out);
}

/* ---- redaction (--print-config) ----------------------------------------
 *
 * What may be a credential is replaced by REDACTED: write_key and dsn
 * keys (the .secret keys), the password (or a lone token) in a URL's
 * user part, every query value, and every header value but a few that
 * describe the body. Names stay, so the output still shows which
 * settings exist. */

#define CFG_REDACTED	"REDACTED"

static void cfg_buf_add(char *buf, size_t cap, size_t *n, const char *p,
			size_t len)
{
	if (*n + len >= cap)
		len = *n < cap - 1 ? cap - 1 - *n : 0;
	memcpy(buf + *n, p, len);
	*n += len;
	buf[*n] = '\0';
}

/* scheme://[user[:pass]@]host/path[?k=v&...][#frag] */
static void cfg_redact_url(const char *v, char *buf, size_t cap)
{
	const char *p = strstr(v, "://"), *auth, *at, *colon, *q, *end;
	size_t n = 0;

	buf[0] = '\0';
	if (!p) {
		cfg_buf_add(buf, cap, &n, CFG_REDACTED, strlen(CFG_REDACTED));
		return;
	}
	auth = p + 3;
	end = auth + strcspn(auth, "/?#");
	at = memchr(auth, '@', (size_t)(end - auth));
	cfg_buf_add(buf, cap, &n, v, (size_t)(auth - v));
	if (at) {
		colon = memchr(auth, ':', (size_t)(at - auth));
		if (colon)	/* user:password@ - the user stays */
			cfg_buf_add(buf, cap, &n, auth,
				    (size_t)(colon + 1 - auth));
		cfg_buf_add(buf, cap, &n, CFG_REDACTED, strlen(CFG_REDACTED));
		auth = at;
	}
	q = strchr(auth, '?');
	if (!q) {
		cfg_buf_add(buf, cap, &n, auth, strlen(auth));
		return;
	}
	cfg_buf_add(buf, cap, &n, auth, (size_t)(q + 1 - auth));
	for (p = q + 1; *p && *p != '#';) {
		size_t klen = strcspn(p, "=&#"), vlen;

		cfg_buf_add(buf, cap, &n, p, klen);
		p += klen;
		if (*p == '=') {
			vlen = strcspn(p + 1, "&#");
			cfg_buf_add(buf, cap, &n, "=", 1);
			cfg_buf_add(buf, cap, &n, CFG_REDACTED,
				    strlen(CFG_REDACTED));
			p += 1 + vlen;
		}
		if (*p == '&')
			cfg_buf_add(buf, cap, &n, p++, 1);
	}
	cfg_buf_add(buf, cap, &n, p, strlen(p));
}

static void cfg_redact_header(const char *v, char *buf, size_t cap)
{
	static const char *const plain[] = {
		"content-type", "content-encoding", "accept", "user-agent",
		NULL };
	const char *colon = strchr(v, ':');
	size_t n = 0, nlen = colon ? (size_t)(colon - v) : strlen(v);
	int i;

	buf[0] = '\0';
	for (i = 0; plain[i]; i++)
		if (strlen(plain[i]) == nlen && !strncasecmp(v, plain[i], nlen)) {
			cfg_buf_add(buf, cap, &n, v, strlen(v));
			return;
		}
	cfg_buf_add(buf, cap, &n, v, nlen);
	cfg_buf_add(buf, cap, &n, ": " CFG_REDACTED, strlen(CFG_REDACTED) + 2);
}

/* The value of string key k as --print-config may show it. */
static const char *cfg_shown(const struct cfg_key *k, const char *v,
			     bool redact, char *buf, size_t cap)
{
	if (!redact)
		return v;
	if (k->kind == K_HEADER) {
		cfg_redact_header(v, buf, cap);
		return buf;
	}
	if (k->kind == K_URL || k->kind == K_DSN) {
		cfg_redact_url(v, buf, cap);
		return buf;
	}
	return k->secret ? CFG_REDACTED : v;
}

static void cfg_print_key(FILE *out, const struct cfg_key *k,
			  const void *base, bool redact)
{
	char shown[CFG_LINE_MAX + 64];
	const char *p = (const char *)base + k->off;
	const struct cfg_sink *s = base;
	uint64_t v;
	char buf[32];
	char *str;
	int i;

	switch (k->kind) {
	case K_STR:
	case K_URL:
	case K_DSN:
	case K_LISTEN:
		memcpy(&str, p, sizeof(str));
		if (str)
			cfg_print_kv(out, k->name, cfg_shown(k, str, redact,
				     shown, sizeof(shown)));
		break;
	case K_HEADER:
		for (i = 0; i < s->nheaders; i++)
			cfg_print_kv(out, k->name, cfg_shown(k, s->headers[i],
				     redact, shown, sizeof(shown)));
		break;
	case K_SHM:
		cfg_print_kv(out, k->name, p);
		break;
	case K_MODE:
		fprintf(out, "%s = %04llo\n", k->name,
			(unsigned long long)cfg_get_num(base, k));
		break;
	case K_ENUM:
		v = cfg_get_num(base, k);
		for (i = 0; k->names[i] && (uint64_t)i != v; i++)
			;
		fprintf(out, "%s = %s\n", k->name,
			k->names[i] ? k->names[i] : "?");
		break;
	default:
		fprintf(out, "%s = %s\n", k->name,
			cfg_fmt_num(k, cfg_get_num(base, k), buf,
				    sizeof(buf)));
	}
}

static void cfg_print_sink(FILE *out, const struct cfg_sink *s, bool redact)
{
	int k;

	fprintf(out, "\n[sink %s]\n", s->name);
	for (k = 0; k < SK_N; k++)
		if (!cfg_skeys[k].types || (cfg_skeys[k].types & TY(s->type)))
			cfg_print_key(out, &cfg_skeys[k], s, redact);
	for (k = 0; k < s->nstatus; k++)
		fprintf(out, "status.%d = %s\n", s->status[k].code,
			(unsigned)s->status[k].action < 4 ?
			cfg_action_names[s->status[k].action] : "?");
}

static void cfg_print_all(const struct cfg *c, FILE *out, bool redact)
{
	int k;

	fputs("# outboxd configuration\n[broker]\n", out);
	for (k = 0; k < BK_N; k++)
		cfg_print_key(out, &cfg_bkeys[k], c, redact);
	for (k = 0; k < c->nsinks; k++)
		cfg_print_sink(out, &c->sinks[k], redact);
}

void cfg_print(const struct cfg *c, FILE *out)
{
	cfg_print_all(c, out, false);
}

void cfg_print_redacted(const struct cfg *c, FILE *out)
{
	fputs("# credentials are shown as " CFG_REDACTED "\n", out);
	cfg_print_all(c, out, true);
}

/* ---- reload ------------------------------------------------------------ */

int cfg_needs_restart(const struct cfg *old, const struct cfg *neu,
		      char *why, size_t whylen)
{
	char a[32], b[32];
	int k;

	if (why && whylen)
		why[0] = '\0';
	if (strcmp(old->shm, neu->shm)) {
		if (why)
			snprintf(why, whylen, "shm changed (%s -> %s)",
				 old->shm, neu->shm);
		return 1;
	}
	if (!cfg_streq(old->spool_dir, neu->spool_dir)) {
		if (why)
			snprintf(why, whylen, "spool_dir changed (%s -> %s)",
				 old->spool_dir ? old->spool_dir : "",
				 neu->spool_dir ? neu->spool_dir : "");
		return 1;
	}
	for (k = 0; k < BK_N; k++) {
		const struct cfg_key *key = &cfg_bkeys[k];
		uint64_t u, v;

		if (k != BK_SHM_MODE && k != BK_RING_SIZE &&
		    k != BK_MAX_RECORD && k != BK_PRODUCER_SLOTS &&
		    k != BK_SEGMENT_SIZE && k != BK_SINK_THREADS)
			continue;
		u = cfg_get_num(old, key);
		v = cfg_get_num(neu, key);
		if (u == v)
			continue;
		if (why && key->kind == K_MODE)
			snprintf(why, whylen, "%s changed (%04llo -> %04llo)",
				 key->name, (unsigned long long)u,
				 (unsigned long long)v);
		else if (why)
			snprintf(why, whylen, "%s changed (%s -> %s)",
				 key->name, cfg_fmt_num(key, u, a, sizeof(a)),
				 cfg_fmt_num(key, v, b, sizeof(b)));
		return 1;
	}
	return 0;
}
