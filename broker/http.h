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
 */
#ifndef OBX_HTTP_H
#define OBX_HTTP_H

#include <stdint.h>
#include "reactor.h"

struct http;            /* the multi handle and its sockets */
struct http_req;

#define HTTP_MAX_HDR_VALUES 8

struct http_result {
	int status;                     /* HTTP status, 0 = no response */
	int timeout;                    /* no response: timed out */
	int curl_code;                  /* CURLcode, 0 = ok */
	const char *error;              /* curl's error text, "" if none */
	const char *retry_after[HTTP_MAX_HDR_VALUES];
	int n_retry_after;
	const char *sentry_limits[HTTP_MAX_HDR_VALUES];
	int n_sentry_limits;
	double total_s;                 /* transfer time */
};

/* Completion; the result's strings live until the callback returns. */
typedef void (*http_done_fn)(void *arg, const struct http_result *r);

struct http_post {
	const char *url;
	const void *body;               /* not copied: keep it until done */
	uint64_t len;
	const char *const *headers;     /* "Name: value", NULL-terminated */
	uint64_t connect_timeout_ms;
	uint64_t timeout_ms;
};

/* NULL + errno. */
struct http *http_new(struct rx *rx);
/* Aborts what is in flight (their callbacks run with status 0). */
void http_free(struct http *h);

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

#endif
