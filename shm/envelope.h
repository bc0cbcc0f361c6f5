/* envelope.h - the msgpack envelope carried by every ring record.
 *
 * A record payload is one msgpack map (keys in this order when a producer
 * writes it; a reader accepts any order and ignores unknown keys):
 *
 *   "sink"  str   sink name ("" = the default sink)
 *   "type"  str   event type (free text, e.g. "track", "event", "log")
 *   "ts"    uint  event time, ns since the Unix epoch (CLOCK_REALTIME_COARSE
 *                 unless the producer gave one)
 *   "id"    bin16 stable event id: segment id (8 bytes, big endian) then
 *                 the record's ring position (8 bytes, big endian); unique
 *                 for the life of the segment, and forwarded upstream as
 *                 Segment messageId / Sentry event_id (32 hex digits)
 *   "body"  str   JSON text, or
 *           bin   opaque bytes, or
 *           map   a msgpack map (converted to JSON by JSON sinks)
 *
 * Anything else - not a map, a missing sink/body, a wrong type, trailing
 * garbage inside the object - is invalid and counted dropped_invalid.
 */
#ifndef OBX_ENVELOPE_H
#define OBX_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>
#include <msgpack.h>

#define ENV_BODY_JSON     1   /* str */
#define ENV_BODY_BYTES    2   /* bin */
#define ENV_BODY_MSGPACK  3   /* map (or any msgpack object) */

#define ENV_ID_LEN        16
#define ENV_NAME_MAX      255

/* Upper bound of the bytes before the body object. */
#define ENV_HEAD_MAX(slen, tlen) (1 + 5 + 5 + (slen) + 5 + 5 + (tlen) + \
				  3 + 9 + 3 + 2 + ENV_ID_LEN + 5)

/* A bounded writer for msgpack_packer: writes in place, records overflow. */
struct env_buf {
	uint8_t *p;
	size_t len, cap;
	int overflow;
};

static inline int env_buf_write(void *data, const char *buf, size_t len)
{
	struct env_buf *b = (struct env_buf *)data;

	if (__builtin_expect(len > b->cap - b->len, 0)) {
		b->overflow = 1;
		return -1;
	}
	memcpy(b->p + b->len, buf, len);
	b->len += len;
	return 0;
}

static inline void env_make_id(uint8_t id[ENV_ID_LEN], uint64_t seg,
			       uint64_t pos)
{
	int i;

	for (i = 0; i < 8; i++) {
		id[i] = (uint8_t)(seg >> (56 - 8 * i));
		id[8 + i] = (uint8_t)(pos >> (56 - 8 * i));
	}
}

/* Packs the map header and every field up to and including the "body"
 * key; the caller then packs exactly one body object. */
static inline void env_pack_head(msgpack_packer *pk, const char *sink,
				 size_t slen, const char *type, size_t tlen,
				 uint64_t ts, const uint8_t id[ENV_ID_LEN])
{
	msgpack_pack_map(pk, 5);
	msgpack_pack_str_with_body(pk, "sink", 4);
	msgpack_pack_str_with_body(pk, sink, slen);
	msgpack_pack_str_with_body(pk, "type", 4);
	msgpack_pack_str_with_body(pk, type, tlen);
	msgpack_pack_str_with_body(pk, "ts", 2);
	msgpack_pack_uint64(pk, ts);
	msgpack_pack_str_with_body(pk, "id", 2);
	msgpack_pack_bin_with_body(pk, id, ENV_ID_LEN);
	msgpack_pack_str_with_body(pk, "body", 4);
}

/* ---- reader (broker, CLI) ---------------------------------------------- */

struct env_view {
	const char *sink;
	uint32_t sink_len;
	const char *type;
	uint32_t type_len;
	uint64_t ts;
	uint8_t id[ENV_ID_LEN];
	int has_id;
	int body_kind;             /* ENV_BODY_* */
	const char *body;          /* JSON text / bytes (JSON, BYTES) */
	uint32_t body_len;
	const msgpack_object *body_obj; /* the body object (every kind) */
};

struct env_reader {
	msgpack_unpacked up;
};

void env_reader_init(struct env_reader *r);
void env_reader_fini(struct env_reader *r);

/* Parses one envelope; 0 or -EINVAL. The view points into the record
 * and into the reader's zone, valid until the next env_parse(). */
int env_parse(struct env_reader *r, const void *p, size_t len,
	      struct env_view *v);

/* 32 lowercase hex digits + NUL */
void env_id_hex(const uint8_t id[ENV_ID_LEN], char out[33]);

#endif
