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
 * Anything else - not a map, a key that is not a string, a missing
 * sink/body, a wrong type, trailing garbage inside the object - is invalid
 * and counted dropped_invalid.
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

/* Fast path used by liboutbox: the same bytes as env_pack_head(), built
 * from templates that msgpack-c packs once (the map header, "sink" and
 * its value, the "type" key; then "ts" as a fixed uint64, "id" as bin16,
 * the "body" key), so an emit only copies them and patches ts and id.
 * ENV_TAIL_TS / ENV_TAIL_ID are the offsets of those values in the tail
 * template (after the 0xcf / 0xc4 0x10 markers). */
#define ENV_TAIL_LEN  (3 + 9 + 3 + 2 + ENV_ID_LEN + 5)
#define ENV_TAIL_TS   (3 + 1)
#define ENV_TAIL_ID   (3 + 9 + 3 + 2)

/* map header + "sink": name + "type" key into out (cap >= slen + 16);
 * returns the length. */
size_t env_prefix_template(uint8_t *out, size_t cap, const char *sink,
			   size_t slen);
/* "ts": 0 (fixed uint64) "id": bin16 zeros "body" -> out[ENV_TAIL_LEN] */
void env_tail_template(uint8_t out[ENV_TAIL_LEN]);

/* msgpack str / bin header for n bytes; returns its length (1..5). */
static inline size_t env_str_header(uint8_t *p, size_t n)
{
	if (n < 32) {
		p[0] = (uint8_t)(0xa0 | n);
		return 1;
	}
	if (n < 256) {
		p[0] = 0xd9;
		p[1] = (uint8_t)n;
		return 2;
	}
	if (n < 65536) {
		p[0] = 0xda;
		p[1] = (uint8_t)(n >> 8);
		p[2] = (uint8_t)n;
		return 3;
	}
	p[0] = 0xdb;
	p[1] = (uint8_t)(n >> 24);
	p[2] = (uint8_t)(n >> 16);
	p[3] = (uint8_t)(n >> 8);
	p[4] = (uint8_t)n;
	return 5;
}

static inline size_t env_bin_header(uint8_t *p, size_t n)
{
	if (n < 256) {
		p[0] = 0xc4;
		p[1] = (uint8_t)n;
		return 2;
	}
	if (n < 65536) {
		p[0] = 0xc5;
		p[1] = (uint8_t)(n >> 8);
		p[2] = (uint8_t)n;
		return 3;
	}
	p[0] = 0xc6;
	p[1] = (uint8_t)(n >> 24);
	p[2] = (uint8_t)(n >> 16);
	p[3] = (uint8_t)(n >> 8);
	p[4] = (uint8_t)n;
	return 5;
}

static inline void env_put_be64(uint8_t *p, uint64_t v)
{
	v = __builtin_bswap64(v);
	memcpy(p, &v, 8);
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

/* The top level is scanned by hand (no allocation per record); only a
 * msgpack map/array body, or an unknown key's value, goes through
 * msgpack_unpack() into one zone that is cleared per record. */
struct env_reader {
	msgpack_zone zone;
	msgpack_object body;
	int zone_used;             /* the zone holds something: clear it */
};

void env_reader_init(struct env_reader *r);
void env_reader_fini(struct env_reader *r);

/* A msgpack body must be one JSON can hold (every sink writes JSON but
 * an http one with encoding = msgpack): nested at most ENV_MAX_DEPTH
 * deep, and a map or array used as a map key holds map or array keys of
 * its own at most ENV_MAX_KEY_NEST deep - each such key is the escaped
 * JSON text of the one inside it, so the text would double with every
 * level (broker/json.c writes it that way, with these limits). env_parse
 * refuses other bodies: the drain counts them dropped_invalid, instead
 * of a sink failing to encode the record at every attempt, for ever. */
#define ENV_MAX_DEPTH     64
#define ENV_MAX_KEY_NEST  2

/* Parses one envelope; 0 or -EINVAL. The view points into the record
 * and into the reader's zone, valid until the next env_parse(). A fast
 * path takes the layout producers write (env_pack_head's); every other
 * record goes to env_parse_general(), which accepts exactly the same
 * records and fills the same view. */
int env_parse(struct env_reader *r, const void *p, size_t len,
	      struct env_view *v);
/* The reference reader alone (any key order): for tests and fuzzers that
 * hold env_parse() to it. */
int env_parse_general(struct env_reader *r, const void *p, size_t len,
		      struct env_view *v);

/* 32 lowercase hex digits + NUL */
void env_id_hex(const uint8_t id[ENV_ID_LEN], char out[33]);

#endif
