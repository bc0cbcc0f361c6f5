/* proto.h - upstream protocols (segment, sentry, otlp) on the one HTTP
 * sink engine.
 *
 * A protocol is an encoder, its request headers and its response rules;
 * batching, the delivery policy, the spool and persistence stay in the
 * engine (sink.c, sink_http.c), so there is one delivery loop whatever
 * the upstream. The engine calls, per request:
 *
 *   encode(recs, gone, lo, hi)  one request body from records [lo, hi)
 *                               of a batch: as many as one request may
 *                               carry (Segment: up to batch_max_bytes;
 *                               Sentry: one envelope). Records it must
 *                               drop (invalid body, over event_max_bytes,
 *                               a rate-limited category in drop-category
 *                               mode) get gone[i] set and are counted
 *                               through p->drop() exactly once: `gone`
 *                               lives with the batch, so a retried
 *                               request never counts a record twice.
 *   p->hdrs                     static headers (Content-Type, auth)
 *   classify(status)            the protocol's own status rules, before
 *                               the sink's status.NNN overrides
 *   lost(...)                   records the engine dropped after a
 *                               response (rejected, expired...): Sentry
 *                               counts them for its client reports
 *   tick(now)                   periodic work (Segment's CDN settings)
 *   accepted(body)              records a 2xx answer still rejected
 *                               (OTLP partial success): dropped
 *                               `rejected` by the engine
 *   category(rec)               a record's data category (sentry), for
 *                               the drops by category
 *
 * Records are msgpack envelopes (shm/envelope.h) as spooled.
 */
#ifndef OBX_PROTO_H
#define OBX_PROTO_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"
#include "envelope.h"
#include "json.h"
#include "spool.h"

#define OBX_VERSION_STRING "0.1.0"
#define PROTO_MAX_HDRS     6
#define PROTO_CAT_MAX      24      /* = POL_CAT_MAX */

struct http;

/* why a record is gone (dropped by the protocol) */
enum proto_drop {
	PROTO_KEEP = 0,
	PROTO_DROP_INVALID,       /* dropped_invalid */
	PROTO_DROP_TOO_LARGE,     /* dropped_too_large */
	PROTO_DROP_RATE_LIMITED,  /* dropped_rate_limited */
	PROTO_DROP_SENT,          /* not a drop: in a delivered request */
};

#define PROTO_REQ_CATS     4

/* one request's encoding */
struct proto_req {
	uint32_t taken;           /* records [lo, lo + taken) it covers */
	uint32_t sent;            /* of those, in the body */
	int64_t held_until_ms;    /* -EAGAIN: when a held record may go */
	/* the data categories the body carries (sentry), so the policy can
	 * tell a refusal the category limits explain (pol_outcome.req_cats);
	 * ncats <= 0: not known (more than PROTO_REQ_CATS: -1) */
	int ncats;
	char cats[PROTO_REQ_CATS][PROTO_CAT_MAX];
};

/* Notes category cat in q (once); too many: q's categories not known. */
void proto_req_cat(struct proto_req *q, const char *cat);

struct proto;

struct proto_ops {
	const char *name;
	/* Reads the sink's settings (dsn, write_key, ...); fills p->url and
	 * p->hdrs. 0 or -errno, logged. */
	int (*open)(struct proto *p);
	void (*close)(struct proto *p);
	/* One request body from records [lo, hi) into out (reset first).
	 * 0: q->taken >= 1 records covered (q->sent of them in the body;
	 * 0 = nothing to send, they were all dropped). -EAGAIN: every
	 * record left is held by a rate limit (sentry, on_rate_limit =
	 * hold) until q->held_until_ms. Other -errno: nothing taken. The
	 * encoder may reorder r[lo, hi) (records not gone). */
	int (*encode)(struct proto *p, struct spool_rec *r, uint8_t *gone,
		      uint32_t lo, uint32_t hi, struct buf *out,
		      struct proto_req *q);
	/* Optional. -1: the engine's table; else an enum pol_class. */
	int (*classify)(const struct proto *p, int status);
	/* Optional. n records starting at r[lo] (those not gone) were dropped
	 * by the engine for reason (an enum pol_reason). */
	void (*lost)(struct proto *p, const struct spool_rec *r,
		     const uint8_t *gone, uint32_t lo, uint32_t n, int reason);
	/* Optional. Periodic work; the next mono ns it wants. */
	uint64_t (*tick)(struct proto *p, uint64_t now);
	/* Optional. The body of a 2xx answer to a request that carried
	 * `sent` records (at most PROTO_ANSWER_MAX bytes kept; cut past
	 * that): how many of them the upstream says it rejected all the
	 * same (OTLP partial success), 0 when none. why: its message, made
	 * log-safe ("" when none). */
	uint32_t (*accepted)(struct proto *p, const char *body, size_t len,
			     uint32_t sent, char *why, size_t whylen);
	/* Optional. The data category of a record (sentry: its item's; a
	 * forwarded envelope's first item's), for the drops by category on
	 * the sink page; NULL when it has none. Valid until the next call. */
	const char *(*category)(struct proto *p, const struct spool_rec *r);
};

#define PROTO_ANSWER_MAX   65536

struct proto {
	const struct proto_ops *ops;
	struct cfg_sink *cfg;        /* the sink's live settings */
	const char *sink_name;
	struct http *http;           /* for the protocol's own requests */
	char *url;                   /* the endpoint requests go to */
	const char *hdrs[PROTO_MAX_HDRS + 1];   /* NULL-terminated */
	int64_t now_ms;              /* wall clock, set before encode */
	/* from the engine: until when (wall ms) category cat is rate
	 * limited, 0 = it is not */
	int64_t (*cat_until)(void *arg, const char *cat, int64_t now_ms);
	/* from the engine: count n records dropped for why */
	void (*drop)(void *arg, enum proto_drop why, const char *cat,
		     uint32_t n);
	void *arg;
	/* scratch shared by the encoders */
	struct env_reader er;
	struct json_w w;
	struct buf ev;               /* one event's JSON */
	struct buf scratch;          /* proto_object() */
	void *priv;                  /* the protocol's own state */
};

extern const struct proto_ops proto_segment_ops;
extern const struct proto_ops proto_sentry_ops;
extern const struct proto_ops proto_otlp_ops;

/* The protocol of a sink type, or NULL (file, discard, http). */
const struct proto_ops *proto_for(enum cfg_sink_type t);

/* Creates the protocol state for cfg (kept by pointer: the sink's own
 * copy) and opens it. NULL + errno. */
struct proto *proto_new(const struct proto_ops *ops, struct cfg_sink *cfg,
			struct http *http);
void proto_free(struct proto *p);

/* ---- helpers shared by the encoders ------------------------------------- */

/* The envelope's id and ts as JSON string texts (with their quotes):
 * "<32 hex>" and "<RFC 3339>". */
void proto_id_ts(const struct env_view *v, char id[36], char ts[40]);

/* RFC 3339 UTC with milliseconds: 2026-11-01T12:00:00.123Z (24 chars). */
void proto_rfc3339(int64_t ms, char out[32]);

/* The body of an envelope as one JSON object into out (appended):
 * JSON text that is an object is copied as written (exact numbers),
 * a msgpack map converted exactly (json_w_mp). Before the first member
 * the `add` members are inserted, each only when the body has no key of
 * that name ("messageId", ...): add[i] is the key, val[i] the JSON text
 * of its value. 0, -EINVAL (not an object, not JSON), -E2BIG/-ENOMEM. */
int proto_object(struct proto *p, const struct env_view *v,
		 const char *const *add, const char *const *val, int nadd,
		 struct buf *out);

/* The loop of the batch encoders (segment, otlp): appends, comma
 * separated, the JSON that ev() leaves in p->ev for each record of
 * [lo, hi) not gone, while out stays within batch_max_bytes counting
 * `tail` bytes still to come (the first event always goes). Records ev()
 * (or the envelope reader) refuses are marked gone and counted. Fills q;
 * 0 or -errno. */
typedef enum proto_drop (*proto_event_fn)(struct proto *p,
					  const struct env_view *v);
int proto_encode_array(struct proto *p, const struct spool_rec *r,
		       uint8_t *gone, uint32_t lo, uint32_t hi,
		       struct buf *out, struct proto_req *q,
		       proto_event_fn ev, size_t tail);

/* Does the envelope's object body have key k? (JSON text: parsed by
 * jansson; msgpack: the map's keys.) -1 when the body is no object. */
int proto_body_has(const struct env_view *v, const char *k);

/* Parses a Sentry DSN scheme://KEY[:SECRET]@HOST[:PORT]/[PATH/]PROJECT
 * into the envelope endpoint scheme://HOST[:PORT]/[PATH/]api/PROJECT/
 * envelope/ and the public key. 0 or -EINVAL. url and key are malloc'd. */
int proto_sentry_dsn(const char *dsn, char **url, char **key);

/* Sentry data category of an item type (event -> error, log -> log_item,
 * ...; unknown -> "default"). */
const char *proto_sentry_category(const char *item_type, size_t len);

/* Segment CDN settings: applies integrations["Segment.io"].httpConfig of
 * the JSON in text to c, starting from base (the operator's settings),
 * with the research notes' clamping. 0 (applied; *what says what
 * changed), -EINVAL (not valid JSON or not an object: c untouched). */
int proto_segment_settings(const char *text, size_t len,
			   const struct cfg_sink *base, struct cfg_sink *c,
			   char *what, size_t whatlen);

#endif
