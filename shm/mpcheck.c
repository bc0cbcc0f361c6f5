/* mpcheck.c - bounds and plausibility check of msgpack bytes (see
 * mpcheck.h). */
#include "mpcheck.h"

/* Big-endian length of n bytes at p. */
static uint64_t mp_be(const unsigned char *p, int n)
{
	uint64_t v = 0;

	while (n--)
		v = v << 8 | *p++;
	return v;
}

size_t mp_object_len(const unsigned char *buf, size_t len)
{
	uint64_t pending = 1;
	size_t pos = 0;

	while (pending) {
		unsigned char t;
		uint64_t skip = 0, items = 0;
		int hdr = 0;

		if (pos >= len)
			return 0;
		t = buf[pos++];
		pending--;
		if (t <= 0x7f || t >= 0xe0 || (t >= 0xc0 && t <= 0xc3)) {
			/* fixint, nil, false, true (0xc1 is never used) */
			if (t == 0xc1)
				return 0;
		} else if (t >= 0x80 && t <= 0x8f) {
			items = 2u * (t & 0x0f);
		} else if (t >= 0x90 && t <= 0x9f) {
			items = t & 0x0f;
		} else if (t >= 0xa0 && t <= 0xbf) {
			skip = t & 0x1f;
		} else {
			switch (t) {
			case 0xc4: case 0xd9: hdr = 1; break;	/* bin8 str8 */
			case 0xc5: case 0xda: hdr = 2; break;
			case 0xc6: case 0xdb: hdr = 4; break;
			case 0xc7: hdr = 1; skip = 1; break;	/* ext */
			case 0xc8: hdr = 2; skip = 1; break;
			case 0xc9: hdr = 4; skip = 1; break;
			case 0xca: skip = 4; break;
			case 0xcb: skip = 8; break;
			case 0xcc: case 0xd0: skip = 1; break;
			case 0xcd: case 0xd1: skip = 2; break;
			case 0xce: case 0xd2: skip = 4; break;
			case 0xcf: case 0xd3: skip = 8; break;
			case 0xd4: skip = 2; break;		/* fixext */
			case 0xd5: skip = 3; break;
			case 0xd6: skip = 5; break;
			case 0xd7: skip = 9; break;
			case 0xd8: skip = 17; break;
			case 0xdc: case 0xdd: case 0xde: case 0xdf: {
				int n = t & 1 ? 4 : 2;
				uint64_t c;

				if (len - pos < (size_t)n)
					return 0;
				c = mp_be(buf + pos, n);
				pos += (size_t)n;
				items = t >= 0xde ? 2 * c : c;
				break;
			}
			default:
				return 0;
			}
		}
		if (hdr) {
			if (len - pos < (size_t)hdr)
				return 0;
			skip += mp_be(buf + pos, hdr);
			pos += (size_t)hdr;
		}
		if (skip > len - pos)
			return 0;
		pos += (size_t)skip;
		/* every pending item needs at least one more byte */
		pending += items;
		if (pending > len - pos)
			return 0;
	}
	return pos;
}

int mp_check(const unsigned char *buf, size_t len)
{
	size_t n = mp_object_len(buf, len);

	return n && n == len ? 0 : -1;	/* trailing bytes: torn */
}
