/* httpsink.c - the bench's loopback HTTP/1.1 sink (see httpsink.h).
 *
 * Per connection: one growing input buffer; the headers are found by
 * their blank line, the body is read to Content-Length (reserved at
 * once, so a body usually arrives with one recv) or de-chunked in place;
 * then the request is answered and its bytes dropped. Level-triggered
 * epoll, a short recv means the socket is drained. Responses are tiny and
 * go out with one send; what does not fit waits for EPOLLOUT, and no
 * further request of that connection is handled until it has gone.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "bench.h"
#include "httpsink.h"

#define HS_HDR_MAX   (64u * 1024)
#define HS_BODY_MAX  (256u << 20)
#define HS_BUF_INIT  (64u * 1024)
#define HS_BM_WORDS  (HS_MAXSEQ / 64)           /* per producer */
#define HS_BM_BYTES  ((size_t)HS_MAXP * HS_MAXSEQ / 8)

struct hs_conn {
	int fd;
	char *buf;
	size_t len, cap;
	/* the request being read */
	size_t scan;                 /* where the header end is looked for */
	size_t hdr_end;              /* 0 until the headers are complete */
	size_t clen;
	int chunked, close, post, expect;
	enum { HS_PLAIN, HS_GZIP, HS_ZSTD } enc;  /* Content-Encoding */
	char path[32];
	size_t cpos, dlen;           /* chunked: next chunk line; body so far */
	/* response bytes not sent yet */
	char out[1024];
	size_t olen;
};

struct hs_worker {
	struct hs_shared *sh;
	uint64_t *bm;                /* NULL without verify */
	int ep, lfd;
	z_stream z;
	int zinit;
	ZSTD_DStream *zd;
	unsigned char *zbuf;             /* decoded body (gzip or zstd) */
	size_t zcap;
};

struct hs_tally {
	uint64_t events, unique, dups, noid;
};

/* ---- counting -------------------------------------------------------- */

static const char *hs_digits(const char *p, const char *e, uint64_t *v)
{
	const char *s = p;

	*v = 0;
	while (p < e && *p >= '0' && *p <= '9' && p - s < 19)
		*v = *v * 10 + (uint64_t)(*p++ - '0');
	return p == s ? NULL : p;
}

/* one event: find "body":{"p":P,"s":S and mark (P, S) */
static void hs_mark(struct hs_worker *w, const char *b, const char *e,
		    struct hs_tally *k)
{
	static const char key[] = "\"body\":{\"p\":";
	const char *q = memmem(b, (size_t)(e - b), key, sizeof(key) - 1);
	uint64_t p, s, bit, old, *word;

	if (!q || !(q = hs_digits(q + sizeof(key) - 1, e, &p)) ||
	    e - q < 5 || memcmp(q, ",\"s\":", 5) ||
	    !hs_digits(q + 5, e, &s) || p >= HS_MAXP || s >= HS_MAXSEQ) {
		k->noid++;
		return;
	}
	word = &w->bm[p * HS_BM_WORDS + s / 64];
	bit = 1ull << (s % 64);
	old = __atomic_fetch_or(word, bit, __ATOMIC_RELAXED);
	if (old & bit)
		k->dups++;
	else
		k->unique++;
}

static void hs_event(struct hs_worker *w, const char *b, const char *e,
		     struct hs_tally *k)
{
	k->events++;
	if (w->bm)
		hs_mark(w, b, e, k);
}

static int hs_space(char c)
{
	return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

/* a JSON array: its top-level elements */
static void hs_count_array(struct hs_worker *w, const char *p, const char *end,
			   struct hs_tally *k)
{
	const char *start = ++p, *q;
	int depth = 0, instr = 0;

	for (; p < end; p++) {
		char c = *p;

		if (instr) {
			if (c == '\\')
				p++;
			else if (c == '"')
				instr = 0;
			continue;
		}
		if (c == '"') {
			instr = 1;
		} else if (c == '{' || c == '[') {
			depth++;
		} else if ((c == '}' || c == ']') && depth > 0) {
			depth--;
		} else if ((c == ',' || c == ']') && depth == 0) {
			for (q = start; q < p && hs_space(*q); q++)
				;
			if (q < p)
				hs_event(w, q, p, k);
			start = p + 1;
			if (c == ']')
				return;
		}
	}
}

static void hs_count(struct hs_worker *w, const char *b, size_t n,
		     struct hs_tally *k)
{
	const char *p = b, *end = b + n, *nl, *le;

	while (p < end && hs_space(*p))
		p++;
	if (p < end && *p == '[') {
		hs_count_array(w, p, end, k);
		return;
	}
	while (p < end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		le = nl ? nl : end;
		if (le > p && !(le == p + 1 && *p == '\r'))
			hs_event(w, p, le, k);
		p = le + 1;
	}
}

/* room for 64 KiB more in zbuf (bodies decode to at most 4x the cap
 * of a request body) */
static int hs_zroom(struct hs_worker *w, size_t have)
{
	size_t cap;
	unsigned char *nb;

	if (w->zcap - have >= 65536)
		return 0;
	cap = w->zcap ? w->zcap * 2 : 1u << 20;
	if (cap > HS_BODY_MAX * 4ull)
		return -1;
	nb = realloc(w->zbuf, cap);
	if (!nb)
		return -1;
	w->zbuf = nb;
	w->zcap = cap;
	return 0;
}

/* every zstd frame of the body, with or without its content size */
static int hs_unzstd(struct hs_worker *w, const char *in, size_t n,
		     const char **out, size_t *on)
{
	ZSTD_inBuffer ib = { in, n, 0 };
	ZSTD_outBuffer ob;
	size_t rc = 0;

	if (!w->zd && !(w->zd = ZSTD_createDStream()))
		return -1;
	ZSTD_DCtx_reset(w->zd, ZSTD_reset_session_only);
	ob.pos = 0;
	while (ib.pos < ib.size) {
		if (hs_zroom(w, ob.pos) < 0)
			return -1;
		ob.dst = w->zbuf;
		ob.size = w->zcap;
		rc = ZSTD_decompressStream(w->zd, &ob, &ib);
		if (ZSTD_isError(rc))
			return -1;
	}
	/* a frame cut short: the decoder still wants input */
	while (rc) {
		size_t before = ob.pos;

		if (hs_zroom(w, ob.pos) < 0)
			return -1;
		ob.dst = w->zbuf;
		ob.size = w->zcap;
		rc = ZSTD_decompressStream(w->zd, &ob, &ib);
		if (ZSTD_isError(rc) || (rc && ob.pos == before))
			return -1;
	}
	*out = (const char *)w->zbuf;
	*on = ob.pos;
	return 0;
}

static int hs_inflate(struct hs_worker *w, const char *in, size_t n,
		      const char **out, size_t *on)
{
	size_t have = 0;
	int rc;

	if (!w->zinit) {
		if (inflateInit2(&w->z, 15 + 32) != Z_OK)
			return -1;
		w->zinit = 1;
	} else {
		inflateReset(&w->z);
	}
	w->z.next_in = (unsigned char *)in;
	w->z.avail_in = (uInt)n;
	for (;;) {
		if (hs_zroom(w, have) < 0)
			return -1;
		w->z.next_out = w->zbuf + have;
		w->z.avail_out = (uInt)(w->zcap - have);
		rc = inflate(&w->z, Z_NO_FLUSH);
		have = w->zcap - w->z.avail_out;
		if (rc == Z_STREAM_END)
			break;
		/* anything else but "give me more room" is a bad body */
		if ((rc != Z_OK && rc != Z_BUF_ERROR) || w->z.avail_out)
			return -1;
	}
	*out = (const char *)w->zbuf;
	*on = have;
	return 0;
}

/* ---- responses ------------------------------------------------------- */

static void hs_want_out(struct hs_worker *w, struct hs_conn *c, int on)
{
	struct epoll_event ev = {
		.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c };

	epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static int hs_flush(struct hs_worker *w, struct hs_conn *c)
{
	ssize_t n;

	while (c->olen) {
		n = send(c->fd, c->out, c->olen, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				hs_want_out(w, c, 1);
				return 0;
			}
			return -1;
		}
		memmove(c->out, c->out + n, c->olen - (size_t)n);
		c->olen -= (size_t)n;
		if (!c->olen)
			hs_want_out(w, c, 0);
	}
	return 0;
}

static int hs_queue(struct hs_worker *w, struct hs_conn *c, const char *r,
		    size_t n)
{
	ssize_t sent = 0;

	if (!c->olen) {
		sent = send(c->fd, r, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (sent < 0 && errno != EAGAIN && errno != EINTR)
			return -1;
		if (sent < 0)
			sent = 0;
		if ((size_t)sent == n)
			return 0;
	}
	if (c->olen + n - (size_t)sent > sizeof(c->out))
		return -1;
	memcpy(c->out + c->olen, r + sent, n - (size_t)sent);
	c->olen += n - (size_t)sent;
	hs_want_out(w, c, 1);
	return 0;
}

static int hs_reply(struct hs_worker *w, struct hs_conn *c, int code,
		    int retry_after, const char *body)
{
	char r[900], ra[40] = "";
	const char *why = code == 200 ? "OK" : code == 503 ?
			  "Service Unavailable" : code == 400 ?
			  "Bad Request" : code == 404 ? "Not Found" : "Status";
	int n;

	if (retry_after >= 0)
		snprintf(ra, sizeof(ra), "Retry-After: %d\r\n", retry_after);
	n = snprintf(r, sizeof(r), "HTTP/1.1 %d %s\r\n%sContent-Length: %zu"
		     "\r\n%s\r\n%s", code, why, ra, strlen(body),
		     c->close ? "Connection: close\r\n" : "", body);
	if (n < 0 || (size_t)n >= sizeof(r))
		return -1;
	return hs_queue(w, c, r, (size_t)n);
}

int hs_stats_json(const struct hs_shared *sh, char *out, size_t n)
{
	return snprintf(out, n, "{\"requests\":%llu,\"requests_ok\":%llu,"
		"\"requests_rejected\":%llu,\"bad_requests\":%llu,"
		"\"events\":%llu,\"unique\":%llu,\"dups\":%llu,\"noid\":%llu,"
		"\"bytes\":%llu,\"bytes_raw\":%llu,\"conns\":%llu}\n",
		(unsigned long long)sh->requests,
		(unsigned long long)sh->requests_ok,
		(unsigned long long)sh->requests_rejected,
		(unsigned long long)sh->bad_requests,
		(unsigned long long)sh->events,
		(unsigned long long)sh->unique, (unsigned long long)sh->dups,
		(unsigned long long)sh->noid,
		(unsigned long long)sh->bytes_wire,
		(unsigned long long)sh->bytes_raw,
		(unsigned long long)sh->conns);
}

static int hs_stats(struct hs_worker *w, struct hs_conn *c)
{
	char j[700];

	hs_stats_json(w->sh, j, sizeof(j));
	return hs_reply(w, c, 200, -1, j);
}

/* ---- requests -------------------------------------------------------- */

static int hs_has(const char *v, const char *e, const char *word)
{
	size_t n = strlen(word);

	for (; v + n <= e; v++)
		if (!strncasecmp(v, word, n))
			return 1;
	return 0;
}

/* the request line and the headers we care about */
static int hs_headers(struct hs_conn *c)
{
	const char *p = c->buf, *end = c->buf + c->hdr_end - 2, *nl, *sp, *v;
	size_t n;

	nl = memmem(p, (size_t)(end - p), "\r\n", 2);
	sp = nl ? memchr(p, ' ', (size_t)(nl - p)) : NULL;
	if (!sp)
		return -1;
	c->post = (sp - p == 4 && !memcmp(p, "POST", 4)) ||
		  (sp - p == 3 && !memcmp(p, "PUT", 3));
	v = sp + 1;
	sp = memchr(v, ' ', (size_t)(nl - v));
	n = sp ? (size_t)(sp - v) : 0;
	if (n >= sizeof(c->path))
		n = sizeof(c->path) - 1;
	memcpy(c->path, v, n);
	c->path[n] = 0;
	c->clen = 0;
	c->chunked = c->close = c->expect = 0;
	c->enc = HS_PLAIN;
	for (p = nl + 2; p < end; p = nl + 2) {
		const char *colon;

		nl = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
		if (!nl)
			break;
		colon = memchr(p, ':', (size_t)(nl - p));
		if (!colon)
			return -1;
		n = (size_t)(colon - p);
		v = colon + 1;
#define HS_IS(name) (n == sizeof(name) - 1 && !strncasecmp(p, name, n))
		if (HS_IS("content-length")) {
			uint64_t cl;

			while (v < nl && *v == ' ')
				v++;
			if (!hs_digits(v, nl, &cl) || cl > HS_BODY_MAX)
				return -1;
			c->clen = cl;
		} else if (HS_IS("transfer-encoding")) {
			c->chunked = hs_has(v, nl, "chunked");
		} else if (HS_IS("content-encoding")) {
			c->enc = hs_has(v, nl, "gzip") ? HS_GZIP :
				 hs_has(v, nl, "zstd") ? HS_ZSTD : HS_PLAIN;
		} else if (HS_IS("connection")) {
			c->close = hs_has(v, nl, "close");
		} else if (HS_IS("expect")) {
			c->expect = hs_has(v, nl, "100-continue");
		}
#undef HS_IS
	}
	return 0;
}

static int hs_reserve(struct hs_conn *c, size_t need)
{
	size_t cap = c->cap;
	char *nb;

	if (need <= cap)
		return 0;
	while (cap < need)
		cap *= 2;
	nb = realloc(c->buf, cap);
	if (!nb)
		return -1;
	c->buf = nb;
	c->cap = cap;
	return 0;
}

/* de-chunk in place after the headers: 1 complete, 0 more, -1 bad */
static int hs_dechunk(struct hs_conn *c)
{
	for (;;) {
		char *p = c->buf + c->cpos, *end = c->buf + c->len, *nl, *t;
		uint64_t n = 0;
		size_t need;
		int d;

		nl = memmem(p, (size_t)(end - p), "\r\n", 2);
		if (!nl)
			return end - p > 1024 ? -1 : 0;
		for (t = p; t < nl; t++) {
			d = *t >= '0' && *t <= '9' ? *t - '0' :
			    (*t | 32) >= 'a' && (*t | 32) <= 'f' ?
			    (*t | 32) - 'a' + 10 : -1;
			if (d < 0)
				break;           /* chunk extensions: ignored */
			n = n * 16 + (uint64_t)d;
			if (n > HS_BODY_MAX)
				return -1;
		}
		if (t == p)
			return -1;
		if (n == 0) {                /* last chunk, then trailers */
			t = memmem(nl, (size_t)(end - nl), "\r\n\r\n", 4);
			if (!t)
				return 0;
			c->cpos = (size_t)(t + 4 - c->buf);
			return 1;
		}
		need = (size_t)(nl + 2 - p) + n + 2;
		if ((size_t)(end - p) < need)
			return hs_reserve(c, c->cpos + need) < 0 ? -1 : 0;
		memmove(c->buf + c->hdr_end + c->dlen, nl + 2, n);
		c->dlen += n;
		c->cpos += need;
	}
}

static int hs_request(struct hs_worker *w, struct hs_conn *c,
		      const char *body, size_t blen)
{
	struct hs_shared *sh = w->sh;
	struct hs_tally k = { 0 };
	uint64_t now = bench_now(), from, until, zero = 0, t, have;
	const char *data = body;
	size_t dlen = blen;

	if (!c->post) {
		if (!strcmp(c->path, "/stats"))
			return hs_stats(w, c);
		return hs_reply(w, c, 404, -1, "");
	}
	atomic_fetch_add(&sh->requests, 1);
	from = atomic_load(&sh->outage_from_ns);
	until = atomic_load(&sh->outage_until_ns);
	if (now >= from && now < until) {
		atomic_fetch_add(&sh->requests_rejected, 1);
		return hs_reply(w, c, atomic_load(&sh->outage_code),
				atomic_load(&sh->retry_after), "");
	}
	if ((c->enc == HS_GZIP && hs_inflate(w, body, blen, &data, &dlen) < 0) ||
	    (c->enc == HS_ZSTD && hs_unzstd(w, body, blen, &data, &dlen) < 0)) {
		atomic_fetch_add(&sh->bad_requests, 1);
		return hs_reply(w, c, 400, -1, "bad body encoding\n");
	}
	hs_count(w, data, dlen, &k);
	atomic_fetch_add(&sh->requests_ok, 1);
	atomic_fetch_add(&sh->bytes_wire, blen);
	atomic_fetch_add(&sh->bytes_raw, dlen);
	if (k.events) {
		atomic_fetch_add(&sh->events, k.events);
		atomic_fetch_add(&sh->unique, k.unique);
		atomic_fetch_add(&sh->dups, k.dups);
		atomic_fetch_add(&sh->noid, k.noid);
		atomic_compare_exchange_strong(&sh->first_ok_ns, &zero, now);
		atomic_store(&sh->last_ok_ns, now);
		t = atomic_load(&sh->drain_target);
		have = w->bm ? atomic_load(&sh->unique) :
		       atomic_load(&sh->events);
		zero = 0;
		if (t && have >= t)
			atomic_compare_exchange_strong(&sh->drain_done_ns,
						       &zero, now);
	}
	return hs_reply(w, c, 200, -1, "");
}

static void hs_next(struct hs_conn *c, size_t end)
{
	memmove(c->buf, c->buf + end, c->len - end);
	c->len -= end;
	c->scan = c->hdr_end = c->clen = c->cpos = c->dlen = 0;
}

/* handles every complete request in the buffer; -1: close */
static int hs_feed(struct hs_worker *w, struct hs_conn *c)
{
	static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

	for (;;) {
		const char *body;
		size_t blen, end;
		int r;

		if (c->olen)
			return 0;    /* the last answer has not gone yet */
		if (!c->hdr_end) {
			char *e = memmem(c->buf + c->scan, c->len - c->scan,
					 "\r\n\r\n", 4);

			if (!e) {
				c->scan = c->len > 3 ? c->len - 3 : 0;
				return c->len > HS_HDR_MAX ? -1 : 0;
			}
			c->hdr_end = (size_t)(e + 4 - c->buf);
			if (hs_headers(c) < 0) {
				atomic_fetch_add(&w->sh->bad_requests, 1);
				c->close = 1;
				hs_reply(w, c, 400, -1, "bad request\n");
				return -1;
			}
			if (c->expect && hs_queue(w, c, cont,
						  sizeof(cont) - 1) < 0)
				return -1;
			c->cpos = c->hdr_end;
			if (!c->chunked &&
			    hs_reserve(c, c->hdr_end + c->clen) < 0)
				return -1;
		}
		if (c->chunked) {
			r = hs_dechunk(c);
			if (r <= 0)
				return r;
			body = c->buf + c->hdr_end;
			blen = c->dlen;
			end = c->cpos;
		} else {
			if (c->len < c->hdr_end + c->clen)
				return 0;
			body = c->buf + c->hdr_end;
			blen = c->clen;
			end = c->hdr_end + c->clen;
		}
		if (hs_request(w, c, body, blen) < 0 || c->close)
			return -1;
		hs_next(c, end);
	}
}

/* ---- the event loop -------------------------------------------------- */

static void hs_drop(struct hs_worker *w, struct hs_conn *c)
{
	epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c->buf);
	free(c);
}

static int hs_readable(struct hs_worker *w, struct hs_conn *c)
{
	for (;;) {
		size_t room;
		ssize_t n;

		if (c->cap - c->len < 4096 && hs_reserve(c, c->cap * 2) < 0)
			return -1;
		room = c->cap - c->len;
		n = recv(c->fd, c->buf + c->len, room, 0);
		if (n == 0)
			return -1;
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		c->len += (size_t)n;
		if (hs_feed(w, c) < 0)
			return -1;
		if ((size_t)n < room)
			return 0;    /* drained: level-triggered epoll says more */
	}
}

static void hs_accept(struct hs_worker *w)
{
	for (;;) {
		int fd = accept4(w->lfd, NULL, NULL,
				 SOCK_NONBLOCK | SOCK_CLOEXEC), one = 1;
		struct epoll_event ev = { .events = EPOLLIN };
		struct hs_conn *c;

		if (fd < 0)
			return;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c = calloc(1, sizeof(*c));
		if (c)
			c->buf = malloc(HS_BUF_INIT);
		if (!c || !c->buf) {
			free(c);
			close(fd);
			continue;
		}
		c->fd = fd;
		c->cap = HS_BUF_INIT;
		ev.data.ptr = c;
		epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev);
		atomic_fetch_add(&w->sh->conns, 1);
	}
}

static void *hs_loop(void *arg)
{
	struct hs_worker *w = arg;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE }, evs[64];
	int i, n;

	w->ep = epoll_create1(EPOLL_CLOEXEC);
	ev.data.ptr = NULL;
	if (w->ep < 0 || epoll_ctl(w->ep, EPOLL_CTL_ADD, w->lfd, &ev) < 0)
		_exit(3);
	for (;;) {
		n = epoll_wait(w->ep, evs, 64, -1);
		for (i = 0; i < n; i++) {
			struct hs_conn *c = evs[i].data.ptr;
			int rc = 0;

			if (!c) {
				hs_accept(w);
				continue;
			}
			if (evs[i].events & EPOLLOUT) {
				rc = hs_flush(w, c);
				/* requests held back behind the answer */
				if (rc == 0 && !c->olen)
					rc = hs_feed(w, c);
			}
			if (rc == 0 && (evs[i].events &
					(EPOLLIN | EPOLLERR | EPOLLHUP)))
				rc = hs_readable(w, c);
			if (rc < 0)
				hs_drop(w, c);
		}
	}
	return NULL;
}

static void hs_child(struct hs_sink *s, int lfd, int threads)
{
	struct hs_worker *w = calloc((size_t)threads, sizeof(*w));
	pthread_t th;
	int i;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	prctl(PR_SET_NAME, "outbox-bench-sink");
	signal(SIGPIPE, SIG_IGN);
	if (!w)
		_exit(3);
	for (i = 0; i < threads; i++) {
		w[i].sh = s->sh;
		w[i].bm = s->verify ? s->bm : NULL;
		w[i].lfd = lfd;
		if (i && pthread_create(&th, NULL, hs_loop, &w[i]) != 0)
			_exit(3);
	}
	hs_loop(&w[0]);
	_exit(0);
}

/* ---- the parent's side ---------------------------------------------- */

int hs_start(struct hs_sink *s, const struct hs_opts *o)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	int lfd, one = 1, err;

	memset(s, 0, sizeof(*s));
	s->verify = o->verify;
	s->sh = mmap(NULL, sizeof(*s->sh), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (s->sh == MAP_FAILED)
		return -errno;
	s->sh->retry_after = -1;
	s->sh->outage_code = 503;
	if (o->verify) {
		/* 2 GiB of address space; pages appear as sequences do */
		s->bm = mmap(NULL, HS_BM_BYTES, PROT_READ | PROT_WRITE,
			     MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1,
			     0);
		if (s->bm == MAP_FAILED) {
			err = -errno;
			munmap(s->sh, sizeof(*s->sh));
			return err;
		}
	}
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		goto fail;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	sa.sin_port = htons((uint16_t)o->port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(lfd, 1024) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0)
		goto fail;
	s->sh->port = ntohs(sa.sin_port);
	s->pid = fork();
	if (s->pid < 0)
		goto fail;
	if (s->pid == 0)
		hs_child(s, lfd, o->threads < 1 ? 1 : o->threads);
	close(lfd);
	s->sh->ready = 1;
	return 0;
fail:
	err = -errno;
	if (lfd >= 0)
		close(lfd);
	if (s->bm)
		munmap(s->bm, HS_BM_BYTES);
	munmap(s->sh, sizeof(*s->sh));
	s->sh = NULL;
	return err;
}

void hs_outage(struct hs_sink *s, uint64_t from_ns, uint64_t until_ns,
	       int code, int retry_after)
{
	atomic_store(&s->sh->outage_code, code);
	atomic_store(&s->sh->retry_after, retry_after);
	atomic_store(&s->sh->outage_until_ns, 0);
	atomic_store(&s->sh->outage_from_ns, from_ns);
	atomic_store(&s->sh->outage_until_ns, until_ns);
}

uint64_t hs_have(const struct hs_sink *s)
{
	return s->verify ? atomic_load(&s->sh->unique) :
	       atomic_load(&s->sh->events);
}

void hs_drain_target(struct hs_sink *s, uint64_t n)
{
	uint64_t zero = 0;

	atomic_store(&s->sh->drain_target, n);
	if (hs_have(s) >= n)
		atomic_compare_exchange_strong(&s->sh->drain_done_ns, &zero,
					       bench_now());
}

uint64_t hs_lost(const struct hs_sink *s, const uint64_t *emitted, int np)
{
	uint64_t lost = 0, i, n;
	int p;

	if (!s->bm)
		return 0;
	for (p = 0; p < np && p < HS_MAXP; p++) {
		const uint64_t *bm = s->bm + (uint64_t)p * HS_BM_WORDS;

		n = emitted[p] < HS_MAXSEQ ? emitted[p] : HS_MAXSEQ;
		for (i = 0; i < n / 64; i++)
			lost += 64 - (uint64_t)__builtin_popcountll(bm[i]);
		if (n % 64)
			lost += n % 64 - (uint64_t)__builtin_popcountll(
				bm[n / 64] & ((1ull << (n % 64)) - 1));
	}
	return lost;
}

double hs_cpu_s(const struct hs_sink *s)
{
	double cpu = 0;
	uint64_t hwm = 0;

	bench_proc(s->pid, &cpu, &hwm);
	return cpu;
}

void hs_stop(struct hs_sink *s)
{
	if (!s->sh)
		return;
	if (s->pid > 0) {
		kill(s->pid, SIGKILL);
		waitpid(s->pid, NULL, 0);
	}
	if (s->bm)
		munmap(s->bm, HS_BM_BYTES);
	munmap(s->sh, sizeof(*s->sh));
	s->sh = NULL;
	s->bm = NULL;
}
