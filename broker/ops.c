/* ops.c - systemd notification, watchdog, and the metrics endpoint.
 * See ops.h; the choices are argued in docs/DESIGN.md ("Operating").
 *
 * Who writes what:
 *   struct ops, except the two atomics   the broker thread only
 *   ops.loop_beat, ops.stopping          the broker thread (relaxed
 *                                        stores); the metrics thread
 *                                        reads them (relaxed loads)
 *   the segment's pages                  the broker thread, under the
 *                                        seqlocks; the metrics thread
 *                                        reads them with mx_snap_take()
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>
#include <systemd/sd-daemon.h>

#include "broker.h"
#include "metrics.h"
#include "ops.h"

#define NS_PER_US          1000ull
#define HTTP_CONN_LIMIT    16u     /* scrapers are few; bounded memory */
#define HTTP_PER_IP_LIMIT  8u
#define HTTP_TIMEOUT_S     10u     /* an idle or slow client is cut */
#define HTTP_POOL_BYTES    (32u * 1024u)  /* per connection, headers */

/* ---- systemd ------------------------------------------------------------ */

/* sd_notify() with NOTIFY_SOCKET unset does nothing and returns 0; a
 * failure to send is not fatal to the broker (systemd then reports the
 * unit, which is where an operator looks). */
static void ops_notify(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

static void ops_notify(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	int rc;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	rc = sd_notify(0, msg);
	if (rc < 0)
		log_warn("systemd notify (%.40s...): %s", msg, strerror(-rc));
}

static void ops_notify_ready(struct broker *b)
{
	ops_notify("READY=1\nSTATUS=running: ring /dev/shm/%s, %d sink(s)%s"
		   "%s\nMAINPID=%d", b->seg.name, b->nsinks,
		   b->ops.listen ? ", metrics on " : "",
		   b->ops.listen ? b->ops.listen : "", (int)getpid());
}

/* ---- the metrics endpoint ------------------------------------------------ */

static void ops_stop_serving(struct ops *o);

static enum MHD_Result ops_reply(struct MHD_Connection *c, unsigned status,
				 const char *type, char *body, size_t len,
				 int owned)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = owned ? MHD_create_response_from_buffer_with_free_callback(len,
			body, free) :
		    MHD_create_response_from_buffer(len, body,
			MHD_RESPMEM_MUST_COPY);
	if (!r) {
		if (owned)
			free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result ops_text(struct MHD_Connection *c, unsigned status,
				const char *text)
{
	return ops_reply(c, status, "text/plain; charset=utf-8", (char *)text,
			 strlen(text), 0);
}

static enum MHD_Result ops_metrics(struct ops *o, struct MHD_Connection *c)
{
	struct mx_snap sn;
	char *body = NULL;
	size_t len = 0;
	FILE *f;
	int rc;

	rc = mx_snap_take(&sn, o->seg);
	if (rc == -ENOMEM)
		return ops_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
				"out of memory\n");
	f = open_memstream(&body, &len);
	if (!f) {
		mx_snap_free(&sn);
		return ops_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
				"out of memory\n");
	}
	mx_prom(f, &sn);
	mx_snap_free(&sn);
	if (fclose(f) != 0 || !body) {
		free(body);
		return ops_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
				"out of memory\n");
	}
	return ops_reply(c, MHD_HTTP_OK, MX_PROM_CONTENT_TYPE, body, len, 1);
}

/* 200 "ok" while the loop turns; 503 with the reason otherwise. */
static enum MHD_Result ops_health(struct ops *o, struct MHD_Connection *c)
{
	uint64_t beat = atomic_load_explicit(&o->loop_beat,
					     memory_order_relaxed);
	uint64_t now = log_mono_ns();
	char msg[128];

	if (atomic_load_explicit(&o->stopping, memory_order_relaxed))
		return ops_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
				"stopping\n");
	if (now > beat && now - beat > OPS_HEALTH_STALL_NS) {
		snprintf(msg, sizeof(msg), "stalled: the event loop has not "
			 "run for %.1f s\n", (double)(now - beat) / 1e9);
		return ops_reply(c, MHD_HTTP_SERVICE_UNAVAILABLE,
				 "text/plain; charset=utf-8", msg,
				 strlen(msg), 0);
	}
	return ops_text(c, MHD_HTTP_OK, "ok\n");
}

static enum MHD_Result ops_http(void *cls, struct MHD_Connection *c,
				const char *url, const char *method,
				const char *version, const char *upload,
				size_t *upload_size, void **req)
{
	struct ops *o = cls;

	(void)version;
	(void)upload;
	(void)req;
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
	    strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return ops_text(c, MHD_HTTP_METHOD_NOT_ALLOWED,
				"only GET and HEAD\n");
	if (*upload_size) {
		*upload_size = 0;       /* a GET body: ignored */
		return MHD_YES;
	}
	if (!strcmp(url, "/metrics"))
		return ops_metrics(o, c);
	if (!strcmp(url, "/health"))
		return ops_health(o, c);
	return ops_text(c, MHD_HTTP_NOT_FOUND,
			"not found: GET /metrics or /health\n");
}

static void ops_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[256];

	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = 0;
	log_warn("metrics endpoint: %s", msg);
}

/* A listening socket on addr: fd, or -errno after a log line (none for
 * EADDRINUSE unless loud: the caller may retry). */
static int ops_bind(const char *addr, char *shown, size_t shownlen, int loud)
{
	struct sockaddr_storage ss;
	socklen_t len = 0;
	char host[INET6_ADDRSTRLEN];
	int fd, one = 1, rc;
	uint16_t port;

	if (cfg_parse_listen(addr, &ss, &len) < 0) {
		log_error("metrics_listen %s: not ADDR:PORT", addr);
		return -EINVAL;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
		    0);
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 64) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		goto fail;
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
		snprintf(shown, shownlen, "[%s]:%u", host, port);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
		snprintf(shown, shownlen, "%s:%u", host, port);
	}
	return fd;
fail:
	rc = -errno;
	if (loud || rc != -EADDRINUSE)
		log_error("metrics_listen %s: %s", addr, strerror(-rc));
	if (fd >= 0)
		close(fd);
	return rc;
}

static struct MHD_Daemon *ops_daemon(struct ops *o, int fd)
{
	return MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD |
				MHD_USE_ERROR_LOG, 0, NULL, NULL, ops_http, o,
				/* first, so that every message goes to it */
				MHD_OPTION_EXTERNAL_LOGGER, ops_mhd_log, NULL,
				MHD_OPTION_LISTEN_SOCKET, fd,
				MHD_OPTION_CONNECTION_LIMIT, HTTP_CONN_LIMIT,
				MHD_OPTION_PER_IP_CONNECTION_LIMIT,
				HTTP_PER_IP_LIMIT,
				MHD_OPTION_CONNECTION_TIMEOUT, HTTP_TIMEOUT_S,
				MHD_OPTION_CONNECTION_MEMORY_LIMIT,
				(size_t)HTTP_POOL_BYTES, MHD_OPTION_END);
}

/* Serves addr in a new libmicrohttpd thread, then closes the endpoint
 * it replaces (if the new address is taken by that very endpoint, the
 * old one is closed first). The broker's signal mask (SIGTERM, SIGINT,
 * SIGHUP blocked, read from the signalfd) is set before this runs, so the
 * thread inherits it and never takes those signals. 0 or -errno, logged;
 * on failure an endpoint already running stays. */
static int ops_serve(struct ops *o, const char *addr)
{
	char shown[INET6_ADDRSTRLEN + 16];
	struct MHD_Daemon *d;
	char *want, *show;
	int fd = ops_bind(addr, shown, sizeof(shown), !o->mhd);

	if (fd == -EADDRINUSE && o->mhd) {
		ops_stop_serving(o);
		fd = ops_bind(addr, shown, sizeof(shown), 1);
	}
	if (fd < 0)
		return fd;
	want = strdup(addr);
	show = strdup(shown);
	d = want && show ? ops_daemon(o, fd) : NULL;
	if (!d) {
		log_error("metrics_listen %s: cannot start the HTTP server",
			  addr);
		free(want);
		free(show);
		close(fd);
		return -EIO;
	}
	ops_stop_serving(o);
	o->mhd = d;
	o->fd = fd;
	o->want = want;
	o->listen = show;
	log_info("metrics on http://%s/metrics and /health", shown);
	return 0;
}

static void ops_stop_serving(struct ops *o)
{
	if (!o->mhd)
		return;
	MHD_stop_daemon(o->mhd);
	close(o->fd);
	free(o->want);
	free(o->listen);
	o->mhd = NULL;
	o->fd = -1;
	o->want = NULL;
	o->listen = NULL;
}

/* ---- hooks ------------------------------------------------------------------ */

int ops_start(struct broker *b)
{
	struct ops *o = &b->ops;
	uint64_t usec = 0;
	int rc;

	o->seg = &b->seg;
	atomic_store_explicit(&o->loop_beat, log_mono_ns(),
			      memory_order_relaxed);
	if (b->cfg.metrics_listen) {
		rc = ops_serve(o, b->cfg.metrics_listen);
		if (rc < 0)
			return rc;
	}
	if (sd_watchdog_enabled(0, &usec) > 0 && usec) {
		o->wd_ns = usec * NS_PER_US;
		o->next_wd = log_mono_ns();
		log_info("systemd watchdog: %llu ms, fed every %llu ms by the "
			 "event loop", (unsigned long long)(usec / 1000),
			 (unsigned long long)(usec / 2000));
	}
	ops_notify_ready(b);
	return 0;
}

uint64_t ops_tick(struct broker *b, uint64_t now)
{
	struct ops *o = &b->ops;

	atomic_store_explicit(&o->loop_beat, now, memory_order_relaxed);
	if (!o->wd_ns)
		return UINT64_MAX;
	if (now >= o->next_wd) {
		/* half the period: one late pass does not trip it */
		ops_notify("WATCHDOG=1");
		o->next_wd = now + o->wd_ns / 2;
	}
	return o->next_wd;
}

void ops_reloading(struct broker *b)
{
	(void)b;
	ops_notify("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
		   (unsigned long long)(log_mono_ns() / NS_PER_US));
}

void ops_reloaded(struct broker *b)
{
	struct ops *o = &b->ops;
	const char *want = b->cfg.metrics_listen;

	if (!want && o->mhd) {
		ops_stop_serving(o);
		log_info("metrics endpoint closed (metrics_listen removed)");
	} else if (want && (!o->mhd || strcmp(want, o->want) != 0)) {
		/* a failure keeps the old endpoint (logged by ops_serve) */
		ops_serve(o, want);
	}
	ops_notify_ready(b);
}

void ops_stopping(struct broker *b)
{
	atomic_store_explicit(&b->ops.stopping, 1, memory_order_relaxed);
	ops_notify("STOPPING=1\nSTATUS=stopping: moving the ring to the "
		   "spool, delivering for up to %llu ms",
		   (unsigned long long)b->cfg.shutdown_timeout_ms);
}

void ops_stop(struct broker *b)
{
	ops_stop_serving(&b->ops);
}
