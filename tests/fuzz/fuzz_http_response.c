/* fuzz_http_response - libFuzzer target: what the broker does with an
 * HTTP response, end to end without a socket - curl hands over header
 * lines and body bytes; http_resp_header()/http_resp_body() keep what the
 * policy reads (Retry-After, X-Sentry-Rate-Limits, the first body bytes);
 * http_cause() makes the log text; pol_on_response() classifies it and
 * moves the sink and the batch (split, bisect, drop, retry). The upstream
 * writes every byte of it: nothing may crash, overread, or leave a state,
 * verdict or log text out of bounds.
 *
 * Input: the raw response as it would come off the wire ("HTTP/1.1 503
 * ...\r\nName: value\r\n...\r\n\r\nbody"; several status lines model 1xx
 * interim answers), then after the body's first 0xff byte (if any) a few
 * control bytes: the chunking of the body, curl's error code and errno
 * for a response without a status, the batch's size and history.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* a log text: NUL-terminated within cap, printable, one line */
static void check_text(const char *t, size_t n, size_t cap)
{
	size_t i;

	if (n >= cap || strlen(t) != n)
		abort();
	for (i = 0; i < n; i++)
		if ((unsigned char)t[i] < ' ' || (unsigned char)t[i] > '~')
			abort();
}

static int status_of(const char *line, size_t len)
{
	int v = 0, i;
	const char *sp = memchr(line, ' ', len);

	if (!sp || (size_t)(sp - line) + 4 > len)
		return 0;
	for (i = 1; i <= 3; i++) {
		if (sp[i] < '0' || sp[i] > '9')
			return 0;
		v = v * 10 + (sp[i] - '0');
	}
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct http_resp resp;
	const uint8_t *ctl = memchr(data, 0xff, size);
	size_t wire = ctl ? (size_t)(ctl - data) : size, nctl;
	size_t i = 0, chunk, caps[] = { 0, 7, 8, 9, 32, 300 };
	char *copy = malloc(wire ? wire : 1), cause[300];
	struct http_result r;
	struct cfg_sink c;
	struct pol_sink s;
	struct pol_batch b, half;
	struct pol_result res;
	struct pol_outcome o;
	int status = 0, k;

	if (!copy)
		return 0;
	memcpy(copy, data, wire);
	nctl = ctl ? size - wire - 1 : 0;
	ctl = ctl ? ctl + 1 : NULL;
	http_resp_reset(&resp);
	/* header lines, as curl's header callback gets them */
	while (i < wire) {
		const char *nl = memchr(copy + i, '\n', wire - i);
		size_t len = nl ? (size_t)(nl - (copy + i)) + 1 : wire - i;

		if (len >= 5 && !memcmp(copy + i, "HTTP/", 5))
			status = status_of(copy + i, len);
		http_resp_header(&resp, copy + i, len);
		i += len;
		if (len <= 2 && (copy[i - 1] == '\n'))
			break;		/* the blank line: the body follows */
	}
	/* the body, in chunks of a size the control bytes choose */
	chunk = nctl ? (size_t)ctl[0] + 1 : 64;
	while (i < wire) {
		size_t len = wire - i < chunk ? wire - i : chunk;

		http_resp_body(&resp, copy + i, len);
		i += len;
	}
	if (resp.body_len > HTTP_BODY_KEEP || resp.body[resp.body_len] ||
	    resp.n_retry_after > HTTP_MAX_HDR_VALUES ||
	    resp.n_sentry_limits > HTTP_MAX_HDR_VALUES ||
	    resp.hdr_used > HTTP_HDR_SPACE)
		abort();
	for (k = 0; k < resp.n_retry_after; k++)
		if (strlen(resp.retry_after[k]) >= HTTP_HDR_SPACE)
			abort();

	/* the result as http.c hands it to the sink */
	memset(&r, 0, sizeof(r));
	r.status = status >= 200 ? status : 0;
	memcpy(r.retry_after, resp.retry_after, sizeof(r.retry_after));
	r.n_retry_after = resp.n_retry_after;
	memcpy(r.sentry_limits, resp.sentry_limits, sizeof(r.sentry_limits));
	r.n_sentry_limits = resp.n_sentry_limits;
	r.body = resp.body;
	r.body_len = resp.body_len;
	r.error = nctl > 1 && ctl[1] & 1 ? "Failed to connect" : "";
	r.os_errno = nctl > 1 ? ctl[1] >> 1 : 0;
	r.cancelled = nctl > 1 && ctl[1] == 0xfe;
	r.timeout = nctl > 1 && ctl[1] == 0x80;
	for (k = 0; k < (int)(sizeof(caps) / sizeof(caps[0])); k++) {
		size_t n = http_cause(&r, cause, caps[k]);

		if (caps[k])
			check_text(cause, n, caps[k]);
		n = http_excerpt(resp.body, resp.body_len, cause, caps[k]);
		if (caps[k])
			check_text(cause, n, caps[k]);
	}

	/* the policy: a sink with a history, a batch of 1..256 events */
	memset(&c, 0, sizeof(c));
	c.max_inflight = 4;
	c.backoff_base_ms = 500;
	c.backoff_max_ms = 60000;
	c.backoff_jitter_pct = 10;
	c.max_retries = nctl > 2 ? ctl[2] % 8 : 1000;
	c.max_backoff_duration_ms = 43200000;
	c.retry_after_max_ms = 300000;
	c.max_rate_limit_duration_ms = 1800000;
	c.on_rate_limit = nctl > 2 && ctl[2] & 0x80 ? RL_DROP_CATEGORY
						     : RL_HOLD;
	c.token_file = nctl > 2 && ctl[2] & 0x40 ? "/t" : NULL;
	pol_sink_init(&s, "api");
	pol_batch_init(&b, 7, nctl > 3 ? (uint32_t)ctl[3] + 1 : 10);
	if (nctl > 4) {
		b.strikes = ctl[4] & 3;
		b.isolated = ctl[4] & 4;
		b.failures = ctl[4] >> 3;
	}
	memset(&o, 0, sizeof(o));
	o.status = r.status;
	o.net = r.status ? POL_NET_NONE :
		r.timeout ? POL_NET_TIMEOUT : POL_NET_ERROR;
	o.retry_after = r.retry_after;
	o.n_retry_after = r.n_retry_after;
	o.sentry_limits = r.sentry_limits;
	o.n_sentry_limits = r.n_sentry_limits;
	o.wall_ms = 1700000000000LL;
	for (k = 0; k < 3; k++) {
		int64_t now = 5000 + k * 70000;

		if (pol_begin(&s, &c, &b, 0, now) < 0)
			continue;
		pol_on_response(&s, &c, &b, &o, now, (uint32_t)k * 2654435761u,
				&res);
		if (s.state > POL_RATE_LIMITED || res.state != s.state)
			abort();
		if (s.state != POL_OK && s.until_ms < now)
			abort();
		if (s.state != POL_OK &&
		    s.until_ms > now + 300000 + 60000)
			abort();	/* never past the caps */
		if (res.verdict == POL_V_DROP &&
		    (res.reason <= POL_R_NONE || res.reason >= POL_R_COUNT))
			abort();
		if ((res.verdict == POL_V_SPLIT || res.bisect) &&
		    b.nevents < 2)
			abort();
		if (res.verdict == POL_V_SPLIT || res.bisect) {
			pol_batch_split(&b, &half, 8, b.nevents / 2);
			if (half.failures != b.failures || half.next_ms)
				abort();
			b.nevents -= b.nevents / 2;
		}
		if (res.verdict == POL_V_DELIVERED ||
		    res.verdict == POL_V_DROP)
			break;
		pol_tick(&s, now + 60000, k == 2, &res);
	}
	free(copy);
	return 0;
}
