/* http.c - libcurl's multi_socket interface on the broker's io_uring
 * reactor (see http.h).
 *
 * Sockets: curl's socket callback adds, modifies and deletes its sockets
 * in one epoll set (level-triggered). The epoll fd itself is watched by
 * one one-shot IORING_OP_POLL_ADD (h->poll_op); when it completes we ask
 * epoll which sockets are ready (epoll_wait, timeout 0), hand each to
 * curl_multi_socket_action() and re-arm. io_uring only ever holds a
 * pointer to struct http, never to per-socket state curl may free.
 *
 * Timer: curl's timer callback only records a deadline (curl forbids
 * calling it back from there); the loop waits at most until
 * http_next_deadline() and http_tick() runs the timeout action.
 *
 * Requests: struct http_req is a pooled slot owning one easy handle, its
 * error buffer and the space for the captured header values. Slots are
 * allocated when none is idle and kept until http_free(), so the pool
 * grows to the peak number of concurrent requests and a steady state
 * allocates nothing but the per-request curl_slist. Connections live in
 * the multi handle's connection cache, so keep-alive works across slots.
 *
 * Completion: done() is only ever called from our own code (the drain of
 * curl_multi_info_read, http_cancel, http_free), never from inside a
 * libcurl call, so it may call http_post/http_cancel/http_free. h->depth
 * counts our frames on the stack that may call done(); http_free from
 * inside one aborts everything at once but defers the teardown to the
 * outermost frame (http_leave).
 */
#define _GNU_SOURCE
#include "http.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#ifndef container_of
#define container_of(p, T, m) ((T *)((char *)(p) - offsetof(T, m)))
#endif

#define HTTP_EVENTS		64	/* epoll events taken per poll */
#define HTTP_EXCERPT		160	/* body bytes shown in a cause */
#define HTTP_FREE_WAIT_NS	2000000000ull

enum http_req_state {
	HTTP_REQ_IDLE,		/* in the pool */
	HTTP_REQ_BUSY,		/* in the multi handle, on h->busy */
	HTTP_REQ_DONE,		/* its done() is running */
};

struct http_req {
	struct http *h;
	CURL *easy;
	enum http_req_state state;
	struct http_req *prev, *next;	/* h->busy (both) or h->idle (next) */
	struct curl_slist *hdrs;	/* this request's headers */
	http_done_fn done;
	void *arg;
	struct buf *resp;		/* the caller's, or NULL: discarded */
	int resp_cut;			/* past resp's cap: left out */
	uint64_t start_ns;
	struct http_resp got;		/* what the current response said */
	char err[CURL_ERROR_SIZE];
};

struct http {
	struct rx *rx;
	CURLM *multi;
	int epfd;
	struct rx_op poll_op;		/* POLL_ADD on epfd */
	int poll_armed;			/* poll_op is queued or in the kernel */
	int poll_gone;			/* set when it came back at teardown */
	uint64_t deadline;		/* curl's timer, mono ns; UINT64_MAX */
	struct http_req *busy;		/* in flight */
	struct http_req *idle;		/* the pool */
	unsigned inflight;
	unsigned nreqs;			/* slots allocated */
	unsigned depth;			/* our frames that may call done() */
	int freeing;			/* http_free() has begun */
};

static uint64_t http_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- curl's sockets and timer ----------------------------------------- */

static int http_sock_cb(CURL *easy, curl_socket_t s, int what, void *userp,
			void *sockp)
{
	struct http *h = userp;
	struct epoll_event ev = { 0 };
	int op = sockp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;

	if (what == CURL_POLL_REMOVE) {
		/* ENOENT/EBADF: already closed, epoll dropped it itself */
		epoll_ctl(h->epfd, EPOLL_CTL_DEL, s, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		ev.events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev.events |= EPOLLOUT;
	ev.data.fd = s;
	if (epoll_ctl(h->epfd, op, s, &ev) < 0) {
		/* our "is it in the set" mark can be stale when curl reuses
		 * an fd number or epoll dropped a closed one: try the other */
		op = op == EPOLL_CTL_ADD ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
		if (epoll_ctl(h->epfd, op, s, &ev) < 0)
			/* not -1: that would fail every transfer on the
			 * multi handle; this one still ends at its timeout */
			return 0;
	}
	if (!sockp)
		curl_multi_assign(h->multi, s, h);
	return 0;
}

static int http_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct http *h = userp;

	if (timeout_ms < 0)
		h->deadline = UINT64_MAX;
	else
		h->deadline = http_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	return 0;
}

/* ---- the response ----------------------------------------------------- */

void http_resp_reset(struct http_resp *p)
{
	p->n_retry_after = 0;
	p->n_sentry_limits = 0;
	p->hdr_used = 0;
	p->body_len = 0;
	p->body[0] = '\0';
}

static int http_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Keeps the trimmed value of "name: value" when the name matches. */
static void http_hdr_take(struct http_resp *p, const char *line, size_t len,
			  const char *name, const char **vals, int *n)
{
	size_t nl = strlen(name);
	const char *v, *e;
	size_t vl;

	if (len <= nl || line[nl] != ':' || strncasecmp(line, name, nl))
		return;
	v = line + nl + 1;
	e = line + len;
	while (v < e && http_is_space(*v))
		v++;
	while (e > v && http_is_space(e[-1]))
		e--;
	vl = (size_t)(e - v);
	/* a value with a NUL inside would read as a shorter one */
	if (*n >= HTTP_MAX_HDR_VALUES || vl + 1 > HTTP_HDR_SPACE - p->hdr_used ||
	    memchr(v, '\0', vl))
		return;
	memcpy(p->hdr + p->hdr_used, v, vl);
	p->hdr[p->hdr_used + vl] = '\0';
	vals[(*n)++] = p->hdr + p->hdr_used;
	p->hdr_used += vl + 1;
}

void http_resp_header(struct http_resp *p, const char *line, size_t len)
{
	/* a status line starts a new response (after a 1xx, a redirect
	 * we do not follow, a proxy's CONNECT): only the last one counts */
	if (len >= 5 && !memcmp(line, "HTTP/", 5)) {
		http_resp_reset(p);
		return;
	}
	http_hdr_take(p, line, len, "retry-after", p->retry_after,
		      &p->n_retry_after);
	http_hdr_take(p, line, len, "x-sentry-rate-limits", p->sentry_limits,
		      &p->n_sentry_limits);
}

void http_resp_body(struct http_resp *p, const char *data, size_t len)
{
	size_t room = HTTP_BODY_KEEP - p->body_len;

	if (len > room)
		len = room;
	memcpy(p->body + p->body_len, data, len);
	p->body_len += len;
	p->body[p->body_len] = '\0';
}

/* One body byte as excerpt text into o (at most 4 chars): its length;
 * 0 for a blank that follows a blank (or starts the text). */
static size_t http_excerpt_byte(unsigned char c, char prev, char *o)
{
	static const char hex[] = "0123456789abcdef";

	if (c == '\r' || c == '\n' || c == '\t' || c == ' ') {
		if (!prev || prev == ' ')
			return 0;
		o[0] = ' ';
		return 1;
	}
	if (c > ' ' && c < 0x7f && c != '\\') {
		o[0] = (char)c;
		return 1;
	}
	o[0] = '\\';
	o[1] = 'x';
	o[2] = hex[c >> 4];
	o[3] = hex[c & 15];
	return 4;
}

size_t http_excerpt(const char *data, size_t len, char *out, size_t cap)
{
	size_t i, k, n = 0, total = 0, limit;
	char tmp[4], prev = 0;
	int cut;

	if (cap < 8) {
		if (cap)
			out[0] = '\0';
		return 0;
	}
	/* the whole text's length first: cut only what does not fit */
	for (i = 0; i < len; i++) {
		k = http_excerpt_byte((unsigned char)data[i], prev, tmp);
		total += k;
		if (k)
			prev = tmp[k - 1];
	}
	if (prev == ' ')
		total--;		/* a trailing blank goes */
	cut = total > cap - 1;
	limit = cut ? cap - 1 - 3 : cap - 1;
	prev = 0;
	for (i = 0; i < len; i++) {
		k = http_excerpt_byte((unsigned char)data[i], prev, tmp);
		if (n + k > limit)
			break;		/* an escape is never split */
		memcpy(out + n, tmp, k);
		n += k;
		if (k)
			prev = tmp[k - 1];
	}
	if (cut) {
		memcpy(out + n, "...", 3);
		n += 3;
	} else if (n && out[n - 1] == ' ') {
		n--;
	}
	out[n] = '\0';
	return n;
}

size_t http_cause(const struct http_result *r, char *out, size_t cap)
{
	char ex[HTTP_EXCERPT];
	int n;

	if (!cap)
		return 0;
	if (r->status > 0 && r->body_len &&
	    http_excerpt(r->body, r->body_len, ex, sizeof(ex)) > 0)
		n = snprintf(out, cap, "HTTP %d: %s", r->status, ex);
	else if (r->status > 0)
		n = snprintf(out, cap, "HTTP %d", r->status);
	else if (r->cancelled)
		n = snprintf(out, cap, "cancelled");
	else if (r->os_errno && r->error &&
		 !strstr(r->error, strerror(r->os_errno)))
		/* "Couldn't connect to server" says less than the errno */
		n = snprintf(out, cap, "%s (%s)", r->error,
			     strerror(r->os_errno));
	else
		n = snprintf(out, cap, "%s", r->error && *r->error ?
			     r->error : "no response");
	if (n < 0) {
		out[0] = '\0';
		return 0;
	}
	return (size_t)n < cap ? (size_t)n : cap - 1;
}

static size_t http_header_cb(char *buf, size_t size, size_t nitems,
			     void *userdata)
{
	struct http_req *r = userdata;
	size_t len = size * nitems;

	http_resp_header(&r->got, buf, len);
	return len;
}

static size_t http_body_cb(char *buf, size_t size, size_t nmemb,
			   void *userdata)
{
	struct http_req *r = userdata;

	size_t n = size * nmemb;

	http_resp_body(&r->got, buf, n);
	if (r->resp && r->resp_cut) {
		/* what fits; the rest is left out, the transfer goes on */
		size_t room = r->resp->max - r->resp->len;

		if (buf_add(r->resp, buf, n < room ? n : room) < 0)
			return 0;
		return n;
	}
	/* a short count fails the transfer: a body over the cap */
	if (r->resp && buf_add(r->resp, buf, n) < 0)
		return 0;
	return n;
}

/* ---- the pool ------------------------------------------------------------ */

/* Options that never change for a slot. */
static int http_easy_setup(struct http_req *r)
{
	CURL *e = r->easy;
	int rc = 0;

	rc |= curl_easy_setopt(e, CURLOPT_PRIVATE, r);
	rc |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	rc |= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	rc |= curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
			       (long)CURL_HTTP_VERSION_2TLS);
	/* a 3xx is the policy's to classify, never followed */
	rc |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	rc |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	rc |= curl_easy_setopt(e, CURLOPT_POST, 1L);
	rc |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, http_body_cb);
	rc |= curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	rc |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, http_header_cb);
	rc |= curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
	rc |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->err);
	return rc ? -ENOMEM : 0;
}

static struct http_req *http_req_get(struct http *h)
{
	struct http_req *r = h->idle;

	if (r) {
		h->idle = r->next;
		r->next = NULL;
		return r;
	}
	r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->h = h;
	r->easy = curl_easy_init();
	if (!r->easy)
		goto fail;
	if (http_easy_setup(r) < 0)
		goto fail_easy;
	h->nreqs++;
	return r;

fail_easy:
	curl_easy_cleanup(r->easy);
fail:
	free(r);
	return NULL;
}

/* Back to the pool: drops what pointed at the caller's memory. */
static void http_req_put(struct http *h, struct http_req *r)
{
	curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, NULL);
	curl_slist_free_all(r->hdrs);
	r->hdrs = NULL;
	r->done = NULL;
	r->arg = NULL;
	r->resp = NULL;
	r->state = HTTP_REQ_IDLE;
	r->prev = NULL;
	r->next = h->idle;
	h->idle = r;
}

static void http_busy_link(struct http *h, struct http_req *r)
{
	r->prev = NULL;
	r->next = h->busy;
	if (h->busy)
		h->busy->prev = r;
	h->busy = r;
	h->inflight++;
}

static void http_busy_unlink(struct http *h, struct http_req *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		h->busy = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
	h->inflight--;
}

/* ---- completion ---------------------------------------------------------- */

static void http_destroy(struct http *h);

static void http_enter(struct http *h)
{
	h->depth++;
}

/* Returns 1 when h is gone: the caller must not touch it again. */
static int http_leave(struct http *h)
{
	if (--h->depth || !h->freeing)
		return 0;
	http_destroy(h);
	return 1;
}

/* Ends r: out of the multi handle, done() once, back to the pool.
 * aborted: cancelled by us, nothing from the response is reported. */
static void http_finish(struct http *h, struct http_req *r, CURLcode rc,
			int aborted)
{
	struct http_result res;
	long code = 0;

	memset(&res, 0, sizeof(res));
	if (!aborted) {
		curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
		curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME, &res.total_s);
		curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS,
				  &res.num_connects);
		if (rc != CURLE_OK)
			curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO,
					  &res.os_errno);
		/* an interim 1xx alone is no response */
		res.status = code >= 200 && code <= 999 ? (int)code : 0;
		memcpy(res.retry_after, r->got.retry_after,
		       sizeof(res.retry_after));
		res.n_retry_after = r->got.n_retry_after;
		memcpy(res.sentry_limits, r->got.sentry_limits,
		       sizeof(res.sentry_limits));
		res.n_sentry_limits = r->got.n_sentry_limits;
		res.body = r->got.body;
		res.body_len = r->got.body_len;
	} else {
		res.total_s = (double)(http_now_ns() - r->start_ns) / 1e9;
	}
	curl_multi_remove_handle(h->multi, r->easy);
	http_busy_unlink(h, r);
	r->state = HTTP_REQ_DONE;
	res.curl_code = (int)rc;
	res.timeout = rc == CURLE_OPERATION_TIMEDOUT;
	res.cancelled = aborted;
	if (aborted || !r->err[0])
		res.error = rc == CURLE_OK ? "" : curl_easy_strerror(rc);
	else
		res.error = r->err;

	http_enter(h);
	r->done(r->arg, &res);
	/* after done(): the result's strings live in r */
	http_req_put(h, r);
	http_leave(h);
}

/* Reports every finished transfer. Stops once http_free() began: it has
 * aborted (and reported) the rest itself. */
static void http_drain(struct http *h)
{
	CURLMsg *m;
	int left;

	while (!h->freeing && (m = curl_multi_info_read(h->multi, &left))) {
		struct http_req *r = NULL;
		CURLcode rc = m->data.result;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &r);
		if (!r || r->state != HTTP_REQ_BUSY)
			continue;
		http_finish(h, r, rc, 0);
	}
}

/* ---- the epoll fd on io_uring ------------------------------------------- */

static void http_arm(struct http *h)
{
	struct io_uring_sqe *sqe;

	if (h->poll_armed || h->freeing)
		return;
	h->poll_armed = 1;
	sqe = rx_sqe(h->rx, &h->poll_op);
	io_uring_prep_poll_add(sqe, h->epfd, POLLIN);
}

static int http_csel(uint32_t ev)
{
	int mask = 0;

	/* a hangup is read as such (EOF, ECONNRESET) so curl reports the
	 * socket's own error rather than a bare "select/poll error" */
	if (ev & (EPOLLIN | EPOLLHUP | EPOLLRDHUP))
		mask |= CURL_CSELECT_IN;
	if (ev & EPOLLOUT)
		mask |= CURL_CSELECT_OUT;
	if ((ev & EPOLLERR) && !mask)
		mask |= CURL_CSELECT_ERR;
	return mask;
}

static void http_poll_done(struct rx_op *op, int res, uint32_t cqe_flags)
{
	struct http *h = container_of(op, struct http, poll_op);
	struct epoll_event evs[HTTP_EVENTS];
	int i, n, running;

	h->poll_armed = 0;
	if (h->freeing) {
		h->poll_gone = 1;
		return;
	}
	/* res < 0 (an interrupted or failed poll): re-arm and look anyway;
	 * epoll_wait with timeout 0 costs nothing when nothing is ready */
	n = epoll_wait(h->epfd, evs, HTTP_EVENTS, 0);
	http_enter(h);
	for (i = 0; i < n; i++)
		curl_multi_socket_action(h->multi, evs[i].data.fd,
					 http_csel(evs[i].events), &running);
	/* re-armed before any done() runs, so a done() that runs the
	 * reactor itself still sees our sockets */
	http_arm(h);
	http_drain(h);
	http_leave(h);
}

/* ---- teardown ------------------------------------------------------------ */

/* Takes the poll back from io_uring: its completion points into h. */
static int http_unpoll(struct http *h)
{
	struct io_uring_sqe *sqe;

	if (!h->poll_armed)
		return 0;
	h->poll_gone = 0;
	sqe = rx_sqe(h->rx, NULL);
	io_uring_prep_poll_remove(sqe, (uint64_t)(uintptr_t)&h->poll_op);
	return rx_run_until(h->rx, &h->poll_gone, HTTP_FREE_WAIT_NS);
}

static void http_destroy(struct http *h)
{
	int leak = http_unpoll(h) < 0;
	struct http_req *r;

	while ((r = h->idle)) {
		h->idle = r->next;
		curl_easy_cleanup(r->easy);
		free(r);
	}
	/* closes the cached connections: calls http_sock_cb, so epfd
	 * must still be open */
	curl_multi_cleanup(h->multi);
	close(h->epfd);
	curl_global_cleanup();
	/* a poll io_uring never gave back would complete into freed
	 * memory: keep the struct rather than risk that */
	if (!leak)
		free(h);
}

/* ---- the interface ------------------------------------------------------- */

static int http_multi_setup(struct http *h)
{
	CURLM *m = h->multi;
	int rc = 0;

	rc |= curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, http_sock_cb);
	rc |= curl_multi_setopt(m, CURLMOPT_SOCKETDATA, h);
	rc |= curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, http_timer_cb);
	rc |= curl_multi_setopt(m, CURLMOPT_TIMERDATA, h);
	rc |= curl_multi_setopt(m, CURLMOPT_PIPELINING,
				(long)CURLPIPE_MULTIPLEX);
	return rc ? -EINVAL : 0;
}

struct http *http_new(struct rx *rx)
{
	struct http *h;
	int err = -ENOMEM;

	if (!rx) {
		errno = EINVAL;
		return NULL;
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->rx = rx;
	h->deadline = UINT64_MAX;
	h->poll_op.fn = http_poll_done;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		err = -EIO;
		goto fail;
	}
	h->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (h->epfd < 0) {
		err = -errno;
		goto fail_global;
	}
	h->multi = curl_multi_init();
	if (!h->multi)
		goto fail_epoll;
	if (http_multi_setup(h) < 0) {
		err = -EINVAL;
		goto fail_multi;
	}
	http_arm(h);
	return h;

fail_multi:
	curl_multi_cleanup(h->multi);
fail_epoll:
	close(h->epfd);
fail_global:
	curl_global_cleanup();
fail:
	free(h);
	errno = -err;
	return NULL;
}

void http_free(struct http *h)
{
	if (!h || h->freeing)
		return;
	h->freeing = 1;
	http_enter(h);
	while (h->busy)
		http_finish(h, h->busy, CURLE_ABORTED_BY_CALLBACK, 1);
	http_leave(h);
}

int http_set_max_host_conns(struct http *h, long n)
{
	if (!h || n < 0)
		return -EINVAL;
	if (curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, n))
		return -EINVAL;
	return 0;
}

/* "Expect:" first: curl would otherwise wait up to a second for a
 * 100 Continue before sending a body over 1 MB. */
static int http_build_headers(struct http_req *r, const char *const *hv)
{
	struct curl_slist *l = curl_slist_append(NULL, "Expect:"), *t;

	if (!l)
		return -ENOMEM;
	for (; hv && *hv; hv++) {
		t = curl_slist_append(l, *hv);
		if (!t) {
			curl_slist_free_all(l);
			return -ENOMEM;
		}
		l = t;
	}
	r->hdrs = l;
	return 0;
}

static long http_ms(uint64_t ms, uint64_t dflt)
{
	if (!ms)
		ms = dflt;
	return ms > LONG_MAX ? LONG_MAX : (long)ms;
}

static int http_req_setup(struct http_req *r, const struct http_post *p)
{
	CURL *e = r->easy;
	int rc = 0;

	rc |= curl_easy_setopt(e, CURLOPT_URL, p->url);
	if (p->get) {
		rc |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	} else {
		/* a slot that did a GET: back to POST */
		rc |= curl_easy_setopt(e, CURLOPT_POST, 1L);
		rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
				       (curl_off_t)p->len);
		/* never NULL: curl would then read the body from stdin */
		rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDS,
				       p->body ? p->body : (const void *)"");
	}
	rc |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
	/* Several requests to a new HTTPS host wait for the first
	 * connection's ALPN (known once TLS is up) to learn whether it
	 * multiplexes, rather than each opening a connection. Not over
	 * cleartext: there curl only learns "HTTP/1.1, no multiplexing"
	 * from the first response, so every other request to the host
	 * would wait for it - for the whole timeout if it hangs. */
	rc |= curl_easy_setopt(e, CURLOPT_PIPEWAIT,
			       strncasecmp(p->url, "https://", 8) ? 0L : 1L);
	rc |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
			       http_ms(p->connect_timeout_ms,
				       HTTP_DEFAULT_CONNECT_TIMEOUT_MS));
	rc |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
			       http_ms(p->timeout_ms, HTTP_DEFAULT_TIMEOUT_MS));
	return rc ? -ENOMEM : 0;
}

int http_post(struct http *h, const struct http_post *p, http_done_fn done,
	      void *arg, struct http_req **out)
{
	struct http_req *r;
	CURLMcode mc;
	int ret;

	if (!h || !p || !p->url || !done || (p->len && !p->body) ||
	    p->len > INT64_MAX)
		return -EINVAL;
	if (h->freeing)
		return -ESHUTDOWN;
	r = http_req_get(h);
	if (!r)
		return -ENOMEM;
	ret = http_build_headers(r, p->headers);
	if (ret < 0)
		goto fail;
	ret = http_req_setup(r, p);
	if (ret < 0)
		goto fail;
	r->err[0] = '\0';
	http_resp_reset(&r->got);
	r->done = done;
	r->arg = arg;
	r->resp = p->resp;
	r->resp_cut = p->resp_cut;
	r->start_ns = http_now_ns();
	/* sets curl's timer to 0: the loop's next http_tick() starts it */
	mc = curl_multi_add_handle(h->multi, r->easy);
	if (mc != CURLM_OK) {
		ret = mc == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EINVAL;
		goto fail;
	}
	r->state = HTTP_REQ_BUSY;
	http_busy_link(h, r);
	if (out)
		*out = r;
	return 0;

fail:
	http_req_put(h, r);
	return ret;
}

void http_cancel(struct http *h, struct http_req *r)
{
	/* finished, or its done() is running: nothing left to cancel */
	if (!h || !r || r->h != h || r->state != HTTP_REQ_BUSY)
		return;
	http_finish(h, r, CURLE_ABORTED_BY_CALLBACK, 1);
}

uint64_t http_next_deadline(const struct http *h)
{
	return h->deadline;
}

void http_tick(struct http *h, uint64_t now_mono_ns)
{
	int running;
	long ms = -1;

	if (h->freeing || now_mono_ns < h->deadline)
		return;
	/* one-shot, as curl wants it: it sets the next one itself */
	h->deadline = UINT64_MAX;
	http_enter(h);
	curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	/* belt and braces: never leave a transfer without a timer */
	if (h->deadline == UINT64_MAX && h->inflight &&
	    curl_multi_timeout(h->multi, &ms) == CURLM_OK && ms >= 0)
		h->deadline = http_now_ns() + (uint64_t)ms * 1000000ull;
	http_drain(h);
	http_leave(h);
}

unsigned http_inflight(const struct http *h)
{
	return h->inflight;
}

unsigned http_pool_size(const struct http *h)
{
	return h->nreqs;
}
