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

/* msgpack object -> new JSON value (NULL on failure). Map keys that are
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
