/* fuzz_proto - libFuzzer target: the upstream protocol encoders
 * (broker/proto_segment.c, proto_sentry.c, proto_otlp.c) over arbitrary
 * records, driven the way the http engine drives them. Producers write
 * the records (type, body, a forwarded Sentry envelope): whatever they
 * hold, an encoder must
 *   - cover at least one record per call, never past the batch, and send
 *     no more than it covers;
 *   - account for every record exactly once: sent, or dropped through
 *     p->drop() with a valid reason - also when a request is encoded
 *     again (a retry), which must give the same bytes (segment, otlp);
 *   - write valid JSON (segment, otlp) within batch_max_bytes unless a
 *     single event is alone;
 *   - with on_rate_limit = hold, hold only with a time to wait.
 * The OTLP partial-success reader gets the raw input as an answer body.
 *
 * Input: byte 0 the protocol (0 segment, 1 sentry, 2 otlp); byte 1
 * flags (1 hold, 2 error limited, 4 transaction limited, 8 small
 * batch_max_bytes, 16 small event_max_bytes); then records, each a
 * 2-byte little-endian length and that many bytes: the first is a mode
 * (bit 7: the rest is the raw record; else bits 0-2 pick the type -
 * error, transaction, envelope, log, session, attachment, track, or the
 * type given by the next bytes - and bits 3-4 the body: JSON text,
 * bytes, raw msgpack), the rest the body.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "envelope.h"
#include "proto.h"

#define MAXREC 16
#define NOW_MS 1793534401000ll

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct eng {
	uint8_t flags;
	uint64_t dropped;
};

static int64_t eng_cat_until(void *arg, const char *cat, int64_t now)
{
	const struct eng *e = arg;

	if (((e->flags & 2) && !strcmp(cat, "error")) ||
	    ((e->flags & 4) && !strcmp(cat, "transaction")))
		return now + 60000;
	return 0;
}

static void eng_drop(void *arg, enum proto_drop why, const char *cat,
		     uint32_t n)
{
	struct eng *e = arg;

	if (why <= PROTO_KEEP || why >= PROTO_DROP_SENT || n == 0)
		abort();
	if (cat && strnlen(cat, PROTO_CAT_MAX) >= PROTO_CAT_MAX)
		abort();
	e->dropped += n;
}

/* One record from its spec into sb; 0, or -1 (nothing made). */
static int make_record(const uint8_t *p, size_t n, msgpack_sbuffer *sb)
{
	static const char *const types[] = { "error", "transaction",
		"envelope", "log", "session", "attachment", "track" };
	msgpack_packer pk;
	uint8_t id[ENV_ID_LEN];
	const char *type;
	size_t tlen;
	uint8_t mode;

	if (!n)
		return -1;
	mode = p[0];
	p++;
	n--;
	if (mode & 0x80) {
		if (n)
			msgpack_sbuffer_write(sb, (const char *)p, n);
		return 0;
	}
	if ((mode & 7) < 7) {
		type = types[mode & 7];
		tlen = strlen(type);
	} else {
		tlen = n ? p[0] % 24 : 0;
		p += n ? 1 : 0;
		n -= n ? 1 : 0;
		tlen = tlen < n ? tlen : n;
		type = (const char *)p;
		p += tlen;
		n -= tlen;
	}
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	env_make_id(id, 0x1111111111111111ull, (uint64_t)sb->size);
	env_pack_head(&pk, "api", 3, type, tlen, 1793534400123000000ull, id);
	switch ((mode >> 3) & 3) {
	case 0:
		msgpack_pack_str_with_body(&pk, p, n);
		break;
	case 1:
		msgpack_pack_bin_with_body(&pk, p, n);
		break;
	default:
		if (n)
			msgpack_sbuffer_write(sb, (const char *)p, n);
		else
			msgpack_pack_map(&pk, 0);
		break;
	}
	return 0;
}

/* A JSON object (jansson cannot hold a key with \u0000, valid JSON: a
 * body it refuses for that alone passes) */
static void check_json(const struct buf *out)
{
	json_error_t err;
	json_t *j = json_loadb((const char *)out->p, out->len,
			       JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &err);

	if (!j && json_error_code(&err) == json_error_null_byte_in_key)
		return;
	if (!json_is_object(j)) {
		fprintf(stderr, "not a JSON object: %.*s\n", (int)out->len,
			(const char *)out->p);
		abort();
	}
	json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct proto_ops *const ops[] = {
		&proto_segment_ops, &proto_sentry_ops, &proto_otlp_ops };
	msgpack_sbuffer sb[MAXREC];
	struct spool_rec r[MAXREC];
	uint8_t gone[MAXREC];
	struct cfg d;
	struct cfg_sink c;
	struct eng e = { 0 };
	struct buf out, again;
	struct proto *p;
	struct proto_req q;
	const struct proto_ops *po;
	uint32_t n = 0, lo = 0, guard = 0, i;
	uint64_t sent = 0;
	size_t off = 2;
	char why[256];

	if (size < 2)
		return 0;
	po = ops[data[0] % 3];
	e.flags = data[1];
	while (off + 2 <= size && n < MAXREC) {
		size_t len = (size_t)data[off] | (size_t)data[off + 1] << 8;

		off += 2;
		len = len < size - off ? len : size - off;
		msgpack_sbuffer_init(&sb[n]);
		if (make_record(data + off, len, &sb[n]) < 0 ||
		    !sb[n].size) {
			msgpack_sbuffer_destroy(&sb[n]);
			off += len;
			continue;
		}
		/* an exact-size copy: ASan sees a read past the record */
		r[n].data = malloc(sb[n].size);
		if (!r[n].data) {
			msgpack_sbuffer_destroy(&sb[n]);
			break;
		}
		memcpy((uint8_t *)r[n].data, sb[n].data, sb[n].size);
		r[n].len = (uint32_t)sb[n].size;
		r[n].seq = n + 1;
		gone[n] = 0;
		msgpack_sbuffer_destroy(&sb[n]);
		off += len;
		n++;
	}
	cfg_default(&d);
	c = d.sinks[0];
	c.type = po == &proto_segment_ops ? SINK_SEGMENT :
		 po == &proto_sentry_ops ? SINK_SENTRY : SINK_OTLP;
	c.path = NULL;
	c.url = "http://127.0.0.1:1/x";
	c.write_key = "k";
	c.dsn = "http://k@127.0.0.1:1/2";
	c.on_rate_limit = e.flags & 1 ? RL_HOLD : RL_DROP_CATEGORY;
	c.client_report_interval_ms = 1;
	c.batch_max_bytes = e.flags & 8 ? 600 : 475000;
	c.event_max_bytes = e.flags & 16 ? 200 : 32768;
	p = proto_new(po, &c, NULL);
	if (!p)
		abort();
	p->cat_until = eng_cat_until;
	p->drop = eng_drop;
	p->arg = &e;
	p->now_ms = NOW_MS;
	buf_init(&out, 1 << 24);
	buf_init(&again, 1 << 24);
	while (lo < n) {
		int rc = po->encode(p, r, gone, lo, n, &out, &q);

		if (++guard > 2 * MAXREC + 2)
			abort();        /* no progress */
		if (rc == -EAGAIN) {
			/* held: only in hold mode, with a time; the limits
			 * end, the next call sends them */
			if (!(e.flags & 1) || q.held_until_ms <= NOW_MS)
				abort();
			e.flags &= (uint8_t)~6;
			continue;
		}
		if (rc < 0)
			abort();        /* the caps are far above the input */
		if (!q.taken || q.taken > n - lo || q.sent > q.taken ||
		    q.ncats > PROTO_REQ_CATS)
			abort();
		if (q.sent && po != &proto_sentry_ops) {
			check_json(&out);
			if (q.sent > 1 && out.len > c.batch_max_bytes)
				abort();
			/* a retry: the same bytes, nothing counted again */
			{
				uint64_t dropped = e.dropped;
				struct proto_req q2;

				if (po->encode(p, r, gone, lo, n, &again,
					       &q2) != 0 ||
				    again.len != out.len ||
				    memcmp(again.p, out.p, out.len) ||
				    q2.taken != q.taken ||
				    e.dropped != dropped)
					abort();
			}
		}
		for (i = lo; i < lo + q.taken; i++)
			if (gone[i] >= PROTO_DROP_SENT)
				abort();
		sent += q.sent;
		lo += q.taken;
	}
	/* every record sent or dropped, once */
	if (sent + e.dropped != n)
		abort();
	if (po->accepted) {
		uint32_t k = po->accepted(p, (const char *)data, size, 5, why,
					  sizeof(why));

		if (k > 5 || strlen(why) >= sizeof(why))
			abort();
	}
	proto_free(p);
	buf_free(&out);
	buf_free(&again);
	for (i = 0; i < n; i++)
		free((void *)r[i].data);
	return 0;
}
