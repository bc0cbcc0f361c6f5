/* http.h - libcurl's multi_socket interface on the broker's io_uring
 * reactor.
 *
 * Socket readiness: curl tells us (CURLMOPT_SOCKETFUNCTION) which
 * sockets to watch; they live in one epoll set, and that epoll fd is
 * watched by a single io_uring POLL_ADD that is re-armed after each
 * completion; on readiness we ask epoll which sockets are ready
 * (epoll_wait with timeout 0) and hand each to curl_multi_socket_action.
 * Timeouts: curl's timer (CURLMOPT_TIMERFUNCTION) is exposed as a
 * deadline the broker's loop includes in its wait, and http_tick() runs
 * curl_multi_socket_action(CURL_SOCKET_TIMEOUT) when it passes. So the
 * loop still has one place that sleeps (rx_run), and io_uring never holds
 * a pointer to per-socket state that curl may free.
 *
 * Requests: a POST of a body with headers; the completion callback gets
 * the status (0 = no response) with the curl error, and every value of
 * the response headers the delivery policy reads (Retry-After,
 * X-Sentry-Rate-Limits). Easy handles are pooled and reused, so
 * connections are kept alive (HTTP/1.1) and HTTP/2 is used where the
 * server offers it over TLS. connect_timeout and timeout are always set.
 *
 * Wiring into the loop (one thread, the reactor's):
 *
 *	for (;;) {
 *		uint64_t now = mono_ns(), d = http_next_deadline(h);
 *		... d = min(d, the loop's other deadlines) ...
 *		rx_run(rx, d == UINT64_MAX ? UINT64_MAX :
 *			   d > now ? d - now : 0);
 *		http_tick(h, mono_ns());
 *	}
 *
 * The deadline must be read right before rx_run(): http_post() moves it
 * to "now" (curl wants to be called at once to start the transfer).
 *
 * Re-entrancy: done() runs from http_tick(), from the reactor's
 * completion of the epoll poll, from http_cancel() and from http_free(),
 * never from inside a libcurl call. It may call http_post(),
 * http_cancel() (of any request, its own is a no-op) and http_free();
 * after http_free() has begun, http_post() fails with -ESHUTDOWN.
 * The struct http_req of a request is invalid once its done() returns.
 */
#ifndef OBX_HTTP_H
#define OBX_HTTP_H

#include <stdint.h>
#include "buf.h"
#include "reactor.h"

struct http;            /* the multi handle and its sockets */
struct http_req;

#define HTTP_MAX_HDR_VALUES 8
#define HTTP_HDR_SPACE      2048   /* captured header values, per request */
#define HTTP_BODY_KEEP      256    /* response body bytes kept: the cause
				    * of a failure, for the log */
/* Used when struct http_post leaves a timeout 0 (a transfer must never
 * run unbounded; PRODUCT.md section 5). */
#define HTTP_DEFAULT_CONNECT_TIMEOUT_MS	2000
#define HTTP_DEFAULT_TIMEOUT_MS		15000

struct http_result {
	int status;                     /* HTTP status, 0 = no response */
	int timeout;                    /* no response: timed out */
	int cancelled;                  /* no response: http_cancel() or
					 * http_free() ended it */
	int curl_code;                  /* CURLcode, 0 = ok */
	const char *error;              /* curl's error text, "" if none */
	long os_errno;                  /* the system's error behind it, 0 */
	const char *retry_after[HTTP_MAX_HDR_VALUES];
	int n_retry_after;
	const char *sentry_limits[HTTP_MAX_HDR_VALUES];
	int n_sentry_limits;
	const char *body;               /* the first body bytes (NUL after) */
	size_t body_len;                /* <= HTTP_BODY_KEEP */
	double total_s;                 /* transfer time */
	long num_connects;              /* new connections it opened (0 =
					 * an idle keep-alive one was reused) */
};

/* What a response is read for, filled from curl's header and body
 * callbacks: every value of the headers the policy reads, and the first
 * HTTP_BODY_KEEP body bytes. Public so the parsing can be fuzzed and
 * tested without a socket. */
struct http_resp {
	const char *retry_after[HTTP_MAX_HDR_VALUES];
	int n_retry_after;
	const char *sentry_limits[HTTP_MAX_HDR_VALUES];
	int n_sentry_limits;
	size_t hdr_used;
	char hdr[HTTP_HDR_SPACE];
	size_t body_len;
	char body[HTTP_BODY_KEEP + 1];
};

void http_resp_reset(struct http_resp *p);
/* One header line as curl hands it over ("Name: value\r\n"; a status
 * line "HTTP/..." starts a new response: after a 1xx only the last one
 * counts). A value that does not fit is left out whole rather than cut (a
 * cut Retry-After "120" would read "12"). */
void http_resp_header(struct http_resp *p, const char *line, size_t len);
/* Body bytes, as they come: the first HTTP_BODY_KEEP are kept. */
void http_resp_body(struct http_resp *p, const char *data, size_t len);

/* A log-safe, one-line excerpt of (part of) a body into out (cap >= 8):
 * printable ASCII kept, runs of CR/LF/tab/space as one space, any other
 * byte as \xNN, "..." when cut; NUL-terminated. Returns its length. */
size_t http_excerpt(const char *data, size_t len, char *out, size_t cap);

/* Why a request failed, for a log line: "HTTP 503: <excerpt of the
 * body>" (":" and the excerpt only when there is a body), curl's own
 * error text when there was no response ("Failed to connect to 127.0.0.1
 * port 1 after 0 ms: Connection refused", "Operation timed out after
 * ..."), or "cancelled". NUL-terminated; returns its length. */
size_t http_cause(const struct http_result *r, char *out, size_t cap);

/* Completion; the result's strings live until the callback returns. */
typedef void (*http_done_fn)(void *arg, const struct http_result *r);

struct http_post {
	const char *url;
	const void *body;               /* not copied: keep it until done */
	uint64_t len;
	const char *const *headers;     /* "Name: value", NULL-terminated */
	uint64_t connect_timeout_ms;    /* 0: HTTP_DEFAULT_CONNECT_TIMEOUT_MS */
	uint64_t timeout_ms;            /* 0: HTTP_DEFAULT_TIMEOUT_MS */
	int get;                        /* a GET (body and len unused) */
	struct buf *resp;               /* not NULL: the response body is
					 * appended here, up to its cap (the
					 * transfer fails past it) */
	int resp_cut;                   /* with resp: what passes its cap is
					 * left out, the transfer goes on */
};

/* NULL + errno. */
struct http *http_new(struct rx *rx);
/* Aborts what is in flight (their callbacks run with status 0). May run
 * the reactor (rx_run_until) briefly to take back its io_uring poll:
 * call it from the loop's thread, not with the reactor torn down. */
void http_free(struct http *h);

/* Caps connections per host (0 = no cap, the default); requests above
 * it wait for a free connection. 0 or -errno. */
int http_set_max_host_conns(struct http *h, long n);

/* Starts a POST; done() runs from the reactor. 0 or -errno. */
int http_post(struct http *h, const struct http_post *p, http_done_fn done,
	      void *arg, struct http_req **out);

/* Cancels one request: done() runs with status 0, curl_code
 * CURLE_ABORTED_BY_CALLBACK. */
void http_cancel(struct http *h, struct http_req *r);

/* Next mono ns curl wants a timeout call (UINT64_MAX: none). */
uint64_t http_next_deadline(const struct http *h);
/* Call every loop iteration: runs curl's timeout when due. */
void http_tick(struct http *h, uint64_t now_mono_ns);

/* Requests in flight. */
unsigned http_inflight(const struct http *h);
/* Request slots (each with its easy handle) allocated: in flight + idle. */
unsigned http_pool_size(const struct http *h);

#endif
