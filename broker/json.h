/* json.h - JSON through jansson: msgpack objects to JSON, envelopes to
 * NDJSON lines and JSON values for the sink encoders. Never hand-rolled
 * escaping: every string goes through jansson.
 */
#ifndef OBX_JSON_H
#define OBX_JSON_H

#include <jansson.h>
#include <msgpack.h>
#include "buf.h"
#include "envelope.h"

/* ---- exact msgpack -> JSON text (what every sink sends) ----------------
 *
 * A jansson tree cannot carry every msgpack value exactly (json_int_t is
 * int64_t; reals are dumped with 17 digits), so the sinks write JSON text
 * straight from the msgpack object. jansson still does every string:
 * each one goes through json_dumpb() of a reused jansson string, so no
 * escaping is hand-written here. What the writer adds:
 *   - integers exact over the whole msgpack range, [-2^63, 2^64 - 1]
 *     (beyond 2^53 too: a reader that wants them exact can have them);
 *   - floats as the shortest text that reads back to the same value
 *     (float64: 15..17 digits; float32: 6..9 digits checked with
 *     strtof, so 0.1f is 0.1), always with a '.' or exponent; NaN and
 *     infinities, which JSON lacks, become null;
 *   - str: UTF-8 kept, invalid bytes replaced by U+FFFD (as
 *     json_string_lossy), every escape by jansson (\u0000, \", \\,
 *     control characters);
 *   - bin: a base64 string (RFC 4648, padded); ext:
 *     {"ext":type,"data":base64};
 *   - nil null, bool true/false; map keys that are not strings become
 *     their JSON text as a string ("7", "true", "[1,\"k\"]"), a bin key
 *     its base64 (a container key within a container key at most
 *     JSON_W_MAX_KEY_NEST deep); map entries are written in order,
 *     duplicates kept.
 */
struct json_w {
	json_t *s;              /* reused jansson string: the escaper */
	struct buf tmp;         /* UTF-8 repair and base64 scratch */
	int keys;               /* container keys being written around */
};

void json_w_init(struct json_w *w);
void json_w_fini(struct json_w *w);
/* Appends the JSON text of o to out. 0, -EINVAL (nested deeper than
 * JSON_W_MAX_DEPTH, or a map or array key inside a map or array key more
 * than JSON_W_MAX_KEY_NEST deep: each such key is the JSON text of the
 * one inside it, escaped again, so the text would double with every
 * level), -E2BIG / -ENOMEM. On error out is left as it was. */
#define JSON_W_MAX_DEPTH ENV_MAX_DEPTH
#define JSON_W_MAX_KEY_NEST ENV_MAX_KEY_NEST
int json_w_mp(struct json_w *w, const msgpack_object *o, struct buf *out);
/* A JSON string of n bytes (lossy UTF-8 as above). */
int json_w_str(struct json_w *w, const char *s, size_t n, struct buf *out);
/* A JSON string holding the base64 of n bytes. */
int json_w_b64(struct json_w *w, const void *p, size_t n, struct buf *out);
/* The shortest round-tripping text of a double (JSON number or null). */
int json_w_double(double d, struct buf *out);

/* msgpack object -> new JSON value (NULL on failure). A tree, for callers
 * that need one (tests, the CLI); integers above INT64_MAX become the
 * nearest double here - the sinks use json_w_mp(), which is exact. Map keys that are
 * not strings are converted to their JSON text; bin becomes a base64
 * string; ext becomes {"ext":type,"data":base64}; non-UTF-8 strings are
 * converted with invalid bytes replaced by U+FFFD (jansson refuses them). */
json_t *json_from_msgpack(const msgpack_object *o);

/* The body of an envelope as a JSON value: JSON text is parsed (NULL when
 * it is not valid JSON), a msgpack map converted, bytes base64. */
json_t *json_body(const struct env_view *v);

/* The envelope as a JSON object {"id","sink","type","ts","body"} (in
 * that order) with id in 32 hex digits (null when the envelope has none)
 * and ts in ns since the epoch. NULL when the body is
 * not valid JSON (the caller counts it dropped_invalid). */
json_t *json_envelope(const struct env_view *v);

/* Appends json_envelope() compactly plus '\n' to out. 0, -EINVAL (body
 * not valid JSON), -E2BIG/-ENOMEM. */
int json_envelope_line(const struct env_view *v, struct buf *out);

/* Appends the compact serialisation of j to out. */
int json_append(struct buf *out, const json_t *j);

/* A JSON string of n bytes that may not be UTF-8: invalid bytes are
 * replaced by U+FFFD (one per maximal invalid subpart). NUL bytes are
 * kept. NULL only when out of memory. */
json_t *json_string_lossy(const char *s, size_t n);

/* A JSON string holding the base64 (RFC 4648, padded) of n bytes. */
json_t *json_base64(const void *p, size_t n);

/* The NDJSON line of the file sink and the http sink, fast: the JSON of
 * each (sink, type) pair is made by jansson once and cached; per event
 * only the id (hex), ts (digits) and the body are added. A JSON-text body
 * is passed through as the producer wrote it (PRODUCT.md: "body JSON
 * passed through"), with raw CR/LF turned into spaces - in valid JSON
 * they can only be whitespace between tokens - so one event stays one
 * line; an empty body becomes null. msgpack bodies are converted by
 * jansson, bytes become a base64 string.
 *   {"id":"<32 hex>","sink":..,"type":..,"ts":<ns>,"body":..}
 */
#define JSON_LINE_CACHE 256

struct json_line_cache {
	struct json_w w;                /* msgpack bodies */
	struct json_frag {
		uint64_t hash;
		char *key;              /* sink NUL type */
		uint32_t klen;
		char *text;             /* ,"sink":..,"type":..,"ts": */
		uint32_t tlen;
	} e[JSON_LINE_CACHE];
};

void json_line_cache_init(struct json_line_cache *c);
void json_line_cache_free(struct json_line_cache *c);

/* Appends one envelope (no newline when nl == 0). 0, -E2BIG, -ENOMEM. */
int json_line_fast(struct json_line_cache *c, const struct env_view *v,
		   struct buf *out, int nl);

#endif
