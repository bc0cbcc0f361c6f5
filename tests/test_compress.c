/* test_compress.c - broker/compress.c: gzip (libdeflate) and zstd bodies
 * decoded by independent decoders (zlib's inflate for gzip, libzstd's
 * streaming decoder for zstd, which needs no size in the frame), over
 * the bodies the http sink really sends (an NDJSON batch of envelope
 * lines) and the edges (empty, one byte, incompressible, several MiB),
 * with one handle reused across bodies of every size.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "testutil.h"
#include "compress.h"

/* one NDJSON line as the http sink writes it: ~200 B, a random id */
static size_t t_line(char *p, size_t cap, unsigned n, uint64_t *rnd)
{
	char id[33];
	int i;

	for (i = 0; i < 32; i++) {
		*rnd = *rnd * 6364136223846793005ull + 1442695040888963407ull;
		id[i] = "0123456789abcdef"[(*rnd >> 59) & 15];
	}
	id[32] = 0;
	return (size_t)snprintf(p, cap, "{\"id\":\"%s\",\"sink\":\"api\","
		"\"type\":\"track\",\"ts\":17%017u,\"body\":{\"p\":3,\"s\":%u,"
		"\"user\":\"u-%u\",\"event\":\"page_view\",\"path\":\"/a/b\"}}\n",
		id, n, n, n % 97);
}

/* a batch of `events` lines */
static char *t_batch(unsigned events, size_t *len)
{
	char *p = malloc((size_t)events * 256 + 1);
	uint64_t rnd = 42;
	size_t n = 0;
	unsigned i;

	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	for (i = 0; i < events; i++)
		n += t_line(p + n, 256, i, &rnd);
	*len = n;
	return p;
}

static uint8_t *t_random(size_t n)
{
	uint8_t *p = malloc(n ? n : 1);
	uint64_t x = 0x9e3779b97f4a7c15ull;
	size_t i;

	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	for (i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)x;
	}
	return p;
}

/* zlib's inflate, gzip wrapper only (windowBits 15 + 16) */
static uint8_t *t_gunzip(const uint8_t *in, size_t n, size_t *outlen)
{
	size_t cap = 4096 + n * 16;
	uint8_t *out = malloc(cap);
	z_stream z;
	int rc;

	memset(&z, 0, sizeof(z));
	CU_ASSERT_FATAL(out && inflateInit2(&z, 15 + 16) == Z_OK);
	z.next_in = (Bytef *)in;
	z.avail_in = (uInt)n;
	for (;;) {
		if (z.total_out == cap) {
			cap *= 2;
			out = realloc(out, cap);
			CU_ASSERT_PTR_NOT_NULL_FATAL(out);
		}
		z.next_out = out + z.total_out;
		z.avail_out = (uInt)(cap - z.total_out);
		rc = inflate(&z, Z_FINISH);
		if (rc == Z_STREAM_END)
			break;
		if (rc != Z_BUF_ERROR || z.avail_out) {
			free(out);
			out = NULL;
			break;
		}
	}
	/* the member is the whole body: nothing after it */
	if (out && z.avail_in) {
		free(out);
		out = NULL;
	}
	*outlen = z.total_out;
	inflateEnd(&z);
	return out;
}

/* libzstd's streaming decoder: every frame, no size hint needed */
static uint8_t *t_unzstd(const uint8_t *in, size_t n, size_t *outlen)
{
	ZSTD_DStream *d = ZSTD_createDStream();
	ZSTD_inBuffer ib = { in, n, 0 };
	size_t cap = 4096 + n * 16, rc = 1;
	uint8_t *out = malloc(cap);
	ZSTD_outBuffer ob = { out, cap, 0 };

	CU_ASSERT_FATAL(d && out);
	while (ib.pos < ib.size || rc) {
		if (ob.pos == ob.size) {
			cap *= 2;
			out = realloc(out, cap);
			CU_ASSERT_PTR_NOT_NULL_FATAL(out);
			ob.dst = out;
			ob.size = cap;
		}
		rc = ZSTD_decompressStream(d, &ob, &ib);
		if (ZSTD_isError(rc) || (rc && ib.pos == ib.size &&
					 ob.pos < ob.size)) {
			free(out);
			out = NULL;
			break;
		}
	}
	*outlen = ob.pos;
	ZSTD_freeDStream(d);
	return out;
}

/* compresses in with c, decodes it independently, compares */
static void t_round_trip(struct comp *c, enum cfg_compression kind,
			 const void *in, size_t n, struct buf *out)
{
	uint8_t *dec;
	size_t dn = 0;

	CU_ASSERT_EQUAL_FATAL(comp_body(c, in, n, out), 0);
	CU_ASSERT(out->len > 0);
	if (kind == COMP_GZIP) {
		/* gzip magic, deflate, and ISIZE = n mod 2^32 at the end */
		CU_ASSERT(out->len >= 18 && out->p[0] == 0x1f &&
			  out->p[1] == 0x8b && out->p[2] == 8);
		CU_ASSERT_EQUAL((uint32_t)out->p[out->len - 4] |
				(uint32_t)out->p[out->len - 3] << 8 |
				(uint32_t)out->p[out->len - 2] << 16 |
				(uint32_t)out->p[out->len - 1] << 24,
				(uint32_t)n);
		dec = t_gunzip(out->p, out->len, &dn);
	} else {
		/* one frame that states its content size */
		CU_ASSERT(out->len >= 4 && out->p[0] == 0x28 &&
			  out->p[1] == 0xb5 && out->p[2] == 0x2f &&
			  out->p[3] == 0xfd);
		CU_ASSERT_EQUAL(ZSTD_getFrameContentSize(out->p, out->len),
				(unsigned long long)n);
		CU_ASSERT_EQUAL(ZSTD_findFrameCompressedSize(out->p, out->len),
				out->len);
		dec = t_unzstd(out->p, out->len, &dn);
	}
	CU_ASSERT_PTR_NOT_NULL(dec);
	CU_ASSERT_EQUAL(dn, n);
	if (dec && dn == n)
		CU_ASSERT(n == 0 || memcmp(dec, in, n) == 0);
	free(dec);
}

static const enum cfg_compression kinds[] = { COMP_GZIP, COMP_ZSTD };

/* a fresh handle, one body: its compressed size */
static size_t t_once(enum cfg_compression kind, const void *in, size_t n)
{
	struct comp *c = comp_new(kind, 0);
	struct buf out;
	size_t len;

	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	buf_init(&out, 0);
	t_round_trip(c, kind, in, n, &out);
	len = out.len;
	buf_free(&out);
	comp_free(c);
	return len;
}

/* the body the sink sends: 500 envelope lines; it must also shrink */
static void test_batch(void)
{
	size_t n, k, len;
	char *b = t_batch(500, &n);

	for (k = 0; k < 2; k++) {
		len = t_once(kinds[k], b, n);
		printf("\n    %s: %zu -> %zu bytes (ratio %.1f)",
		       comp_name(kinds[k]), n, len, (double)n / (double)len);
		/* random ids keep it from collapsing, but JSON lines with
		 * repeated keys shrink well past 3x at level 1 */
		CU_ASSERT(len * 3 < n);
	}
	free(b);
}

/* one handle, bodies of every size in turn: no state leaks between
 * bodies (a stale window or dictionary would corrupt the next one) */
static void test_sizes_reused(void)
{
	static const size_t sizes[] = { 0, 1, 2, 100, 65536, 1, 4u << 20,
					0, 300000, 17 };
	size_t bn, k, i;
	char *batch = t_batch(20000, &bn);
	uint8_t *rnd = t_random(4u << 20);

	for (k = 0; k < 2; k++) {
		struct comp *c = comp_new(kinds[k], 1);
		struct buf out;

		CU_ASSERT_PTR_NOT_NULL_FATAL(c);
		buf_init(&out, 0);
		for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
			size_t n = sizes[i] < bn ? sizes[i] : bn;

			/* text, then incompressible bytes of the same size */
			t_round_trip(c, kinds[k], batch, n, &out);
			t_round_trip(c, kinds[k], rnd, sizes[i], &out);
			/* the worst case fits the bound: random data grows
			 * only by the container's few bytes */
			CU_ASSERT(out.len <= sizes[i] + sizes[i] / 64 + 64);
		}
		buf_free(&out);
		comp_free(c);
	}
	free(batch);
	free(rnd);
}

/* an output buffer whose cap cannot hold the worst case: -E2BIG, never
 * a write past the cap */
static void test_output_cap(void)
{
	size_t n, k;
	char *b = t_batch(500, &n);

	for (k = 0; k < 2; k++) {
		struct comp *c = comp_new(kinds[k], 0);
		struct buf out;

		CU_ASSERT_PTR_NOT_NULL_FATAL(c);
		buf_init(&out, n / 2);
		CU_ASSERT_EQUAL(comp_body(c, b, n, &out), -E2BIG);
		CU_ASSERT(out.cap <= n / 2);
		/* and the handle still works afterwards */
		out.max = 4 * n;
		t_round_trip(c, kinds[k], b, n, &out);
		buf_free(&out);
		comp_free(c);
	}
	free(b);
}

static void test_new_errors_and_names(void)
{
	struct comp *c;

	errno = 0;
	CU_ASSERT_PTR_NULL(comp_new(COMP_NONE, 0));
	CU_ASSERT_EQUAL(errno, EINVAL);
	errno = 0;
	CU_ASSERT_PTR_NULL(comp_new((enum cfg_compression)77, 0));
	CU_ASSERT_EQUAL(errno, EINVAL);
	errno = 0;
	CU_ASSERT_PTR_NULL(comp_new(COMP_GZIP, 13));
	CU_ASSERT_EQUAL(errno, EINVAL);
	errno = 0;
	CU_ASSERT_PTR_NULL(comp_new(COMP_ZSTD, ZSTD_maxCLevel() + 1));
	CU_ASSERT_EQUAL(errno, EINVAL);
	CU_ASSERT_PTR_NULL(comp_new(COMP_GZIP, -1));
	c = comp_new(COMP_GZIP, 12);
	CU_ASSERT_PTR_NOT_NULL(c);
	comp_free(c);
	c = comp_new(COMP_ZSTD, 19);
	CU_ASSERT_PTR_NOT_NULL(c);
	comp_free(c);
	comp_free(NULL);
	CU_ASSERT_STRING_EQUAL(comp_name(COMP_GZIP), "gzip");
	CU_ASSERT_STRING_EQUAL(comp_name(COMP_ZSTD), "zstd");
	CU_ASSERT_STRING_EQUAL(comp_name(COMP_NONE), "none");
	CU_ASSERT_STRING_EQUAL(comp_header(COMP_GZIP),
			       "Content-Encoding: gzip");
	CU_ASSERT_STRING_EQUAL(comp_header(COMP_ZSTD),
			       "Content-Encoding: zstd");
	CU_ASSERT_PTR_NULL(comp_header(COMP_NONE));
}

static int add_compress_suite(void)
{
	CU_pSuite s = CU_add_suite("compress", NULL, NULL);

	if (!s ||
	    !CU_add_test(s, "NDJSON batch, both codecs", test_batch) ||
	    !CU_add_test(s, "every size, one handle", test_sizes_reused) ||
	    !CU_add_test(s, "output cap", test_output_cap) ||
	    !CU_add_test(s, "constructor errors, names",
			 test_new_errors_and_names))
		return -1;
	return 0;
}

TEST_MAIN(add_compress_suite)
