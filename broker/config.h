/* config.h - outboxd configuration: INI (inih), units, FILE:LINE errors.
 *
 * [broker] keys and [sink NAME] sections as in PRODUCT.md section 5.
 * Sizes take K/M/G (powers of 1024), durations ms/s/m/h (a bare number
 * is an error for durations: "unit missing"). Unknown sections and keys,
 * bad values, duplicate sinks and duplicate keys are errors, each
 * reported as "FILE:LINE: why". The built-in default (no -c) is
 * cfg_default().
 */
#ifndef OBX_CONFIG_H
#define OBX_CONFIG_H

#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

#define CFG_MAX_SINKS     64
#define CFG_MAX_HEADERS   16
#define CFG_MAX_STATUS    32
#define CFG_NAME_MAX      48      /* sink name incl. NUL (= OBX_NAME_MAX) */

enum cfg_sink_type { SINK_FILE, SINK_DISCARD, SINK_HTTP, SINK_SEGMENT,
		     SINK_SENTRY, SINK_OTLP };
enum cfg_durability { DUR_NONE, DUR_WRITE, DUR_FDATASYNC };
enum cfg_spool_full { SPOOL_DROP_NEWEST, SPOOL_DROP_OLDEST };
enum cfg_encoding { ENC_NDJSON, ENC_JSON_ARRAY, ENC_MSGPACK };
enum cfg_compression { COMP_GZIP, COMP_NONE, COMP_ZSTD };
enum cfg_on_rate_limit { RL_HOLD, RL_DROP_CATEGORY };
enum cfg_status_action { ST_RETRY, ST_DROP, ST_SPLIT, ST_REAUTH };
enum cfg_log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };
enum cfg_stall_action { STALL_WAIT, STALL_KILL };

struct cfg_status_override {
	int code;                        /* 100..599 */
	enum cfg_status_action action;
};

struct cfg_sink {
	char name[CFG_NAME_MAX];
	int line;                        /* line of the [sink NAME] header */
	enum cfg_sink_type type;
	char *path;                      /* file */
	char *url;                       /* http, segment, sentry, otlp */
	char *write_key;                 /* segment (credential) */
	char *dsn;                       /* sentry (credential) */
	char *token_file;                /* token source for 401/511 refresh */
	char *settings_url;              /* segment: CDN settings (optional) */
	uint64_t settings_interval_ms;   /* segment: refetch every 5m */
	char *service_name;              /* otlp: service.name ("outbox") */
	uint64_t client_report_interval_ms; /* sentry: 30s, 0 = never */
	char *headers[CFG_MAX_HEADERS];  /* "Name: value", key header = ... */
	int nheaders;
	enum cfg_encoding encoding;      /* http: ndjson | json | msgpack */
	uint32_t batch_max_events;       /* 500 */
	uint64_t batch_max_bytes;        /* 475000 */
	uint64_t event_max_bytes;        /* 32K segment, 1M others */
	uint64_t flush_interval_ms;      /* 500 */
	uint32_t max_inflight;           /* 4 */
	uint64_t connect_timeout_ms;     /* 2000 */
	uint64_t timeout_ms;             /* 15000 */
	enum cfg_compression compression;/* gzip | none | zstd */
	uint64_t backoff_base_ms;        /* 500 */
	uint64_t backoff_max_ms;         /* 60000 */
	uint32_t backoff_jitter_pct;     /* 10 ("10%") */
	uint32_t max_retries;            /* 1000 */
	uint64_t max_backoff_duration_ms;/* 12h */
	uint64_t retry_after_max_ms;     /* 300s */
	uint64_t max_rate_limit_duration_ms; /* 30m */
	enum cfg_on_rate_limit on_rate_limit; /* hold; drop-category sentry */
	struct cfg_status_override status[CFG_MAX_STATUS];
	int nstatus;
};

struct cfg {
	char *file;                      /* NULL for the built-in default */
	char shm[64];                    /* "outbox" */
	mode_t shm_mode;                 /* 0660 */
	uint64_t ring_size;              /* 64M */
	uint64_t max_record;             /* 1M */
	uint32_t producer_slots;         /* 1024 */
	char *spool_dir;                 /* ./outbox-spool */
	uint64_t spool_max;              /* 512M */
	enum cfg_spool_full spool_full;  /* drop-newest */
	enum cfg_durability durability;  /* write */
	uint64_t sync_interval_ms;       /* 100 */
	uint64_t shutdown_timeout_ms;    /* 5000 */
	enum cfg_log_level log_level;    /* info */
	uint64_t segment_size;           /* spool segment file size, 16M */
	uint64_t stall_timeout_ms;       /* 10s: a live claim held this long
	                                  * is counted and logged */
	enum cfg_stall_action stall_action; /* wait (or kill) */
	char *metrics_listen;            /* ADDR:PORT of /metrics, NULL: off */
	uint64_t drain_latency_ms;       /* 20: longest wait of a committed
	                                  * event before the broker looks */
	uint32_t sink_threads;           /* 1: threads that encode and
	                                  * compress request bodies; 0: the
	                                  * broker thread does (restart) */
	struct cfg_sink sinks[CFG_MAX_SINKS];
	int nsinks;                      /* "default" always exists */
};

/* Fills the built-in default: [broker] defaults and one sink "default" of
 * type file writing ./outbox-out.ndjson. */
void cfg_default(struct cfg *c);

/* Loads FILE over the defaults (c need not be initialised: cfg_load()
 * starts with cfg_default(); release c with cfg_free() whatever it
 * returns). Returns 0, or the number of errors (> 0)
 * after printing each one as "FILE:LINE: why\n" to err; -errno when the
 * file cannot be read (message printed too). A config without a sink
 * named "default" gets the built-in default file sink. Warns on err
 * ("FILE: warning: ...") when the file holds a credential (write_key, dsn,
 * an Authorization header) and is world-readable, or group-readable by a
 * group other than root. */
int cfg_load(struct cfg *c, const char *path, FILE *err);

/* Writes the effective configuration as INI that cfg_load() reads back
 * to an equal struct (round trip). */
void cfg_print(const struct cfg *c, FILE *out);
/* The same for people (outboxd --print-config): write_key, DSN keys, URL
 * passwords, query values and header values (but Content-Type,
 * Content-Encoding, Accept, User-Agent) are printed as REDACTED. */
void cfg_print_redacted(const struct cfg *c, FILE *out);

/* 1 when two configs differ in something a reload cannot apply (shm,
 * shm_mode, ring_size, max_record, producer_slots, spool_dir, ...); the
 * reason goes into why. */
int cfg_needs_restart(const struct cfg *old, const struct cfg *neu,
		      char *why, size_t whylen);

/* Index of the sink, or -1. */
int cfg_sink_find(const struct cfg *c, const char *name);

void cfg_free(struct cfg *c);

/* Unit parsers, exported for tests: 0 or -EINVAL. */
int cfg_parse_size(const char *s, uint64_t *out);
int cfg_parse_duration_ms(const char *s, uint64_t *out);

const char *cfg_sink_type_name(enum cfg_sink_type t);

/* metrics_listen: "ADDR:PORT" with a numeric IPv4 address or a [IPv6]
 * one, port 0..65535 (0: the kernel picks). Fills *ss and *len when not
 * NULL. 0 or -EINVAL. */
int cfg_parse_listen(const char *s, struct sockaddr_storage *ss,
		     socklen_t *len);

/* Replaces a string field (spool_dir, a sink's path, url, ...) with a copy
 * of s (NULL clears it): 0 or -ENOMEM. cfg_default() points spool_dir and
 * the default sink's path at static strings, so that it allocates
 * nothing; cfg_free() and cfg_set_str() know them, plain free() does
 * not. */
int cfg_set_str(char **dst, const char *s);

#endif
