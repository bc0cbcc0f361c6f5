/* test_ops.c - outboxd as an operated service.
 *
 *   - the counter tables cover every counter of the stats and sink pages
 *     (one table behind stat, top and /metrics);
 *   - systemd's notify protocol against a socket the test listens on:
 *     READY=1 only after the ring is open and the spools are recovered,
 *     WATCHDOG=1 within the period, RELOADING=1 then READY=1 on SIGHUP,
 *     STOPPING=1 on SIGTERM, from the broker's pid (SCM_CREDENTIALS); no
 *     READY when start-up fails;
 *   - metrics_listen: a scrape parsed by prometheus_client's parser and
 *     compared with `outbox stat --prometheus` (tests/prom_check.py),
 *     /health while stopping, a reload that moves the endpoint;
 *   - `outbox top` in tmux (send-keys, capture-pane);
 *   - `make install` installs outbox.pc and the man pages, and a program
 *     builds against the installed library with pkg-config.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <curl/curl.h>

#include "brokertest.h"
#include "config.h"
#include "metrics.h"
#include "testutil.h"

#define API_DOWN "\n[sink api]\ntype = http\nurl = http://127.0.0.1:1/ingest\n" \
		 "backoff_base = 20s\nbackoff_max = 20s\nbackoff_jitter = 0%\n" \
		 "connect_timeout = 1s\n"

/* ---- helpers ------------------------------------------------------------ */

/* Waits until the broker log holds needle (for up to ms); 1 when found. */
static int log_has(const struct bt *t, const char *needle, int ms)
{
	uint64_t end = tu_now_ns() + (uint64_t)ms * 1000000ull;
	size_t len;

	do {
		char *s = tu_read_file(t->log, &len);
		int found = s && strstr(s, needle);

		free(s);
		if (found)
			return 1;
		usleep(20000);
	} while (tu_now_ns() < end);
	return 0;
}

/* The port of the first "metrics on http://HOST:PORT" line of the log
 * (waiting for it up to 5 s), or -1. */
static int metrics_port_at(const struct bt *t, const char *host)
{
	char pfx[96];
	size_t len;
	char *s, *p;
	int port = -1;

	snprintf(pfx, sizeof(pfx), "metrics on http://%s:", host);
	if (!log_has(t, pfx, 5000))
		return -1;
	s = tu_read_file(t->log, &len);
	p = s ? strstr(s, pfx) : NULL;
	if (p)
		port = atoi(p + strlen(pfx));
	free(s);
	return port;
}

static int metrics_port(const struct bt *t)
{
	return metrics_port_at(t, "127.0.0.1");
}

static int emit_n(const char *shm, const char *sink, int n)
{
	obx_t *h = bt_open(shm);
	int s, i, ok = 0;
	char body[64];

	if (!h)
		return -1;
	s = obx_sink(h, sink);
	for (i = 0; s >= 0 && i < n; i++) {
		int len = snprintf(body, sizeof(body), "{\"i\":%d}", i);

		if (obx_emit(h, s, "event", body, (size_t)len,
			     OBX_BODY_JSON) == 0)
			ok++;
	}
	obx_close(h);
	return ok;
}

/* Waits until the sink has delivered `deliv` and queued `queued` events;
 * 1 when it did within ms. */
static int wait_sink(struct bt *t, const char *name, uint64_t deliv,
		     uint64_t queued, int ms)
{
	static struct obx_sink_page sp;
	struct obx_stats g;
	uint64_t end = tu_now_ns() + (uint64_t)ms * 1000000ull;

	do {
		const struct obx_sink_shm *k;

		if (bt_stats(t, &g, &sp) == 0 && (k = bt_sink(&sp, name)) &&
		    k->c.delivered_events == deliv &&
		    k->c.queued_events == queued)
			return 1;
		usleep(20000);
	} while (tu_now_ns() < end);
	return 0;
}

/* Waits until the sink is in state st; 1 when it was within ms. */
static int wait_state(struct bt *t, const char *name, uint32_t st, int ms)
{
	static struct obx_sink_page sp;
	struct obx_stats g;
	uint64_t end = tu_now_ns() + (uint64_t)ms * 1000000ull;

	do {
		const struct obx_sink_shm *k;

		if (bt_stats(t, &g, &sp) == 0 && (k = bt_sink(&sp, name)) &&
		    k->state == st)
			return 1;
		usleep(20000);
	} while (tu_now_ns() < end);
	return 0;
}

/* GET (or another method) on 127.0.0.1:port: HTTP status, 0 when no
 * connection; the body into out. */
static long http_get_at(const char *host, int port, const char *path,
			const char *method, char *out, size_t outlen)
{
	CURL *c = curl_easy_init();
	char url[128];
	FILE *f = fmemopen(out, outlen, "w");
	long code = 0;

	memset(out, 0, outlen);
	snprintf(url, sizeof(url), "http://%s:%d%s", host, port, path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 5L);
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	fclose(f);
	out[outlen - 1] = 0;
	curl_easy_cleanup(c);
	return code;
}

static long http_get(int port, const char *path, const char *method,
		     char *out, size_t outlen)
{
	return http_get_at("127.0.0.1", port, path, method, out, outlen);
}

/* Exit status of a shell command line. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* ---- the tables ----------------------------------------------------------- */

struct span {
	size_t from, end;		/* [from, end) of a page's counters */
};

/* Every counter of a page has exactly one row: a counter added to
 * obx_abi.h without a row fails here, not silently in the output. The
 * counters are the words of the spans. */
static void check_table(const struct mx_ctr *tab, size_t n,
			const struct span *sp, size_t nsp)
{
	size_t off, i, j, k, rows;

	for (k = 0; k < nsp; k++)
		for (off = sp[k].from; off < sp[k].end;
		     off += sizeof(uint64_t)) {
			for (i = 0, rows = 0; i < n; i++)
				rows += tab[i].off == off;
			if (rows != 1)
				fprintf(stderr, "offset %zu: %zu rows\n", off,
					rows);
			CU_ASSERT_EQUAL(rows, 1);
		}
	for (i = 0; i < n; i++) {
		size_t fl = strlen(tab[i].family);
		int total = fl > 6 && !strcmp(tab[i].family + fl - 6, "_total");
		int in = 0;

		for (k = 0; k < nsp; k++)
			in |= tab[i].off >= sp[k].from && tab[i].off < sp[k].end;
		CU_ASSERT(in);
		/* counters end in _total, gauges do not */
		CU_ASSERT_EQUAL(total, !tab[i].gauge);
		for (j = 0; j < i; j++) {
			if (strcmp(tab[i].family, tab[j].family))
				continue;
			/* rows of one family: same type, told apart by a
			 * label value */
			CU_ASSERT_EQUAL(tab[i].gauge, tab[j].gauge);
			CU_ASSERT(tab[i].lkey && tab[j].lkey &&
				  strcmp(tab[i].lval, tab[j].lval));
			CU_ASSERT(strcmp(tab[i].key, tab[j].key));
		}
	}
}

static void test_ops_tables_cover_pages(void)
{
	/* the stats page but the broker's private restart state, which
	 * sits between the first counters and those appended after it */
	const struct span g[] = {
		{ 0, offsetof(struct obx_stats, retired_emitted) },
		{ offsetof(struct obx_stats, redelivered),
		  offsetof(struct obx_stats, reserved) },
	};
	/* the sink's counters but read_pos, a position kept for the next
	 * broker (the redelivered estimate), not a figure to export */
	const struct span k[] = {
		{ 0, offsetof(struct obx_sink_counters, read_pos) },
	};

	check_table(mx_global, mx_nglobal, g, 2);
	check_table(mx_sink, mx_nsink, k, 1);
}

static void test_ops_listen_parse(void)
{
	struct sockaddr_storage ss;
	socklen_t len;

	CU_ASSERT_EQUAL(cfg_parse_listen("127.0.0.1:9464", &ss, &len), 0);
	CU_ASSERT_EQUAL(ss.ss_family, AF_INET);
	CU_ASSERT_EQUAL(cfg_parse_listen("0.0.0.0:0", &ss, &len), 0);
	CU_ASSERT_EQUAL(cfg_parse_listen("[::1]:9464", &ss, &len), 0);
	CU_ASSERT_EQUAL(ss.ss_family, AF_INET6);
	CU_ASSERT_EQUAL(cfg_parse_listen("127.0.0.1:65536", NULL, NULL),
			-EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_listen("localhost:9464", NULL, NULL),
			-EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_listen("127.0.0.1", NULL, NULL), -EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_listen(":9464", NULL, NULL), -EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_listen("127.0.0.1:94a", NULL, NULL),
			-EINVAL);
	CU_ASSERT_EQUAL(cfg_parse_listen("::1:9464", NULL, NULL), -EINVAL);
}

/* ---- systemd notify protocol -------------------------------------------- */

struct notify {
	int fd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static int notify_open(struct notify *n, const struct bt *t)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int one = 1;

	if ((size_t)snprintf(n->path, sizeof(n->path), "%s/notify.sock",
			     t->dir) >= sizeof(n->path))
		return -1;
	memcpy(a.sun_path, n->path, sizeof(a.sun_path));
	n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (n->fd < 0 || bind(n->fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    setsockopt(n->fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0)
		return -1;
	return 0;
}

/* One datagram within ms: its text into buf (NUL-terminated) and the
 * sender's pid; 0, or -1 on timeout. */
static int notify_recv(struct notify *n, char *buf, size_t len, pid_t *pid,
		       int ms)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(struct ucred))];
	} cm;
	struct iovec iov = { buf, len - 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = &cm, .msg_controllen = sizeof(cm) };
	struct pollfd p = { n->fd, POLLIN, 0 };
	struct cmsghdr *c;
	ssize_t r;

	if (poll(&p, 1, ms) != 1)
		return -1;
	r = recvmsg(n->fd, &m, 0);
	if (r < 0)
		return -1;
	buf[r] = 0;
	*pid = 0;
	for (c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET &&
		    c->cmsg_type == SCM_CREDENTIALS) {
			struct ucred uc;

			memcpy(&uc, CMSG_DATA(c), sizeof(uc));
			*pid = uc.pid;
		}
	return 0;
}

/* Waits for a message holding `what` (other messages, such as
 * WATCHDOG=1, may come first); 0 or -1. */
static int notify_wait(struct notify *n, const char *what, char *buf,
		       size_t len, pid_t *pid, int ms)
{
	uint64_t end = tu_now_ns() + (uint64_t)ms * 1000000ull;

	while (tu_now_ns() < end) {
		if (notify_recv(n, buf, len, pid,
				(int)((end - tu_now_ns()) / 1000000) + 1) < 0)
			return -1;
		if (strstr(buf, what))
			return 0;
	}
	return -1;
}

static void start_notified(struct bt *t, struct notify *n)
{
	setenv("NOTIFY_SOCKET", n->path, 1);
	setenv("WATCHDOG_USEC", "1000000", 1);
	CU_ASSERT_EQUAL(bt_start(t), 0);
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
}

static void test_ops_notify(void)
{
	struct bt t;
	struct notify n;
	char msg[512], want[64];
	pid_t from;
	uint64_t last = 0, gap_max = 0, t0;
	int dogs = 0;

	CU_ASSERT_FATAL(bt_init(&t, "notify", NULL, API_DOWN) == 0);
	/* a first run leaves 20 events for the unreachable sink in the
	 * spool: the second start has something to recover */
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	CU_ASSERT_EQUAL(emit_n(t.shm, "api", 20), 20);
	CU_ASSERT(wait_sink(&t, "api", 0, 20, 5000));
	CU_ASSERT_EQUAL(bt_stop(&t, 5000), 0);

	CU_ASSERT_FATAL(notify_open(&n, &t) == 0);
	start_notified(&t, &n);
	CU_ASSERT_FATAL(notify_wait(&n, "READY=1", msg, sizeof(msg), &from,
				    5000) == 0);
	/* from the broker itself, after the spool was recovered (that log
	 * line is written before READY is sent) */
	CU_ASSERT_EQUAL(from, t.pid);
	CU_ASSERT(log_has(&t, "sink api: spool recovered 20 records", 0));
	snprintf(want, sizeof(want), "MAINPID=%d", (int)t.pid);
	CU_ASSERT(strstr(msg, want) != NULL);
	CU_ASSERT(strstr(msg, "STATUS=running: ring /dev/shm/") != NULL);
	CU_ASSERT(log_has(&t, "systemd watchdog: 1000 ms", 0));

	/* the watchdog: WatchdogSec=1s, fed every 0.5 s by the loop */
	t0 = tu_now_ns();
	while (tu_now_ns() - t0 < 2600000000ull) {
		if (notify_recv(&n, msg, sizeof(msg), &from, 1500) < 0)
			break;
		if (strcmp(msg, "WATCHDOG=1"))
			continue;
		CU_ASSERT_EQUAL(from, t.pid);
		if (last && tu_now_ns() - last > gap_max)
			gap_max = tu_now_ns() - last;
		last = tu_now_ns();
		dogs++;
	}
	CU_ASSERT(dogs >= 4);
	CU_ASSERT(gap_max < 1000000000ull);     /* within WatchdogSec */

	/* SIGHUP: RELOADING=1, then READY=1 again */
	kill(t.pid, SIGHUP);
	CU_ASSERT(notify_wait(&n, "RELOADING=1", msg, sizeof(msg), &from,
			      3000) == 0);
	CU_ASSERT(strstr(msg, "MONOTONIC_USEC=") != NULL);
	CU_ASSERT(notify_wait(&n, "READY=1", msg, sizeof(msg), &from,
			      3000) == 0);

	/* SIGTERM: STOPPING=1, exit 0 */
	kill(t.pid, SIGTERM);
	CU_ASSERT(notify_wait(&n, "STOPPING=1", msg, sizeof(msg), &from,
			      3000) == 0);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	close(n.fd);
	bt_cleanup(&t);
}

/* A listening socket on 127.0.0.1 that never accepts: its port. */
static int hold_port(int *fd)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t alen = sizeof(a);

	*fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (*fd < 0 || bind(*fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(*fd, 16) < 0 ||
	    getsockname(*fd, (struct sockaddr *)&a, &alen) < 0)
		return -1;
	return ntohs(a.sin_port);
}

/* A broker that cannot start (its metrics port is taken) never says
 * READY=1 and exits 1 with the reason. */
static void test_ops_notify_no_ready_on_failure(void)
{
	struct bt t;
	struct notify n;
	char extra[96], msg[512];
	pid_t from, pid;
	int hold, port, st = -1, fd;

	port = hold_port(&hold);
	CU_ASSERT_FATAL(port > 0);
	snprintf(extra, sizeof(extra), "metrics_listen = 127.0.0.1:%d", port);
	CU_ASSERT_FATAL(bt_init(&t, "noready", extra, NULL) == 0);
	CU_ASSERT_FATAL(notify_open(&n, &t) == 0);
	pid = fork();
	if (pid == 0) {
		fd = open(t.log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		dup2(fd, 2);
		setenv("NOTIFY_SOCKET", n.path, 1);
		execl(bt_bin("outboxd"), "outboxd", "-c", t.conf, (char *)NULL);
		_exit(127);
	}
	CU_ASSERT_EQUAL(waitpid(pid, &st, 0), pid);
	CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	CU_ASSERT(log_has(&t, "Address already in use", 0));
	CU_ASSERT(notify_wait(&n, "READY=1", msg, sizeof(msg), &from, 200) < 0);
	close(n.fd);
	close(hold);
	bt_cleanup(&t);
}

/* ---- the metrics endpoint ------------------------------------------------- */

static void test_ops_metrics_scrape(void)
{
	struct bt t;
	int port;

	CU_ASSERT_FATAL(bt_init(&t, "scrape",
				"metrics_listen = 127.0.0.1:0", API_DOWN) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	port = metrics_port(&t);
	CU_ASSERT_FATAL(port > 0);
	CU_ASSERT_EQUAL(emit_n(t.shm, "default", 300), 300);
	CU_ASSERT_EQUAL(emit_n(t.shm, "api", 7), 7);
	CU_ASSERT(wait_sink(&t, "default", 300, 0, 5000));
	CU_ASSERT(wait_sink(&t, "api", 0, 7, 5000));
	/* its first attempt (connection refused) puts it in backoff */
	CU_ASSERT(wait_state(&t, "api", OBX_SINK_BACKOFF, 5000));
	/* the pages are published every 100 ms: let the last one land */
	usleep(300000);
	CU_ASSERT_EQUAL(sh("/usr/bin/python3 tests/prom_check.py "
			   "http://127.0.0.1:%d %s %s '{"
			   "\"outbox_events_emitted_total\": 307,"
			   "\"outbox_ring_records_consumed_total\": 307,"
			   "\"outbox_events_dropped_total{reason=ring_full}\": 0,"
			   "\"outbox_events_dropped_total{reason=spool_full}\": 0,"
			   "\"outbox_sink_events_delivered_total{sink=default}\""
			   ": 300,"
			   "\"outbox_sink_queued_events{sink=api}\": 7,"
			   "\"outbox_sink_events_dropped_total{reason=rejected,"
			   "sink=api}\": 0,"
			   "\"outbox_sink_state{sink=api,state=backoff}\": 1,"
			   "\"outbox_sink_state{sink=default,state=ok}\": 1,"
			   "\"outbox_identity_ok\": 1,"
			   "\"outbox_broker_up\": 1}' >&2", port,
			   bt_bin("outbox"), t.shm), 0);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

/* While a stopping broker still delivers, /health says so. */
static void test_ops_health_stopping(void)
{
	static struct obx_sink_page sp;
	struct obx_stats g;
	const struct obx_sink_shm *k = NULL;
	struct bt t;
	char body[256], extra[160];
	int port, hold, up, i;

	/* an upstream that takes the connection and never answers: a
	 * request stays in flight, so the stopping broker keeps waiting */
	up = hold_port(&hold);
	CU_ASSERT_FATAL(up > 0);
	snprintf(extra, sizeof(extra), "\n[sink slow]\ntype = http\nurl = "
		 "http://127.0.0.1:%d/ingest\ntimeout = 60s\n"
		 "flush_interval = 10ms\n", up);
	CU_ASSERT_FATAL(bt_init(&t, "health", "metrics_listen = 127.0.0.1:0",
				extra) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	port = metrics_port(&t);
	CU_ASSERT_FATAL(port > 0);
	CU_ASSERT_EQUAL(http_get(port, "/health", "GET", body, sizeof(body)),
			200);
	CU_ASSERT_STRING_EQUAL(body, "ok\n");
	CU_ASSERT_EQUAL(emit_n(t.shm, "slow", 3), 3);
	for (i = 0; i < 250; i++) {
		if (bt_stats(&t, &g, &sp) == 0 && (k = bt_sink(&sp, "slow")) &&
		    k->c.inflight > 0)
			break;
		usleep(20000);
	}
	CU_ASSERT_FATAL(k && k->c.inflight > 0);
	kill(t.pid, SIGTERM);
	CU_ASSERT(log_has(&t, "signal 15", 3000));
	CU_ASSERT_EQUAL(http_get(port, "/health", "GET", body, sizeof(body)),
			503);
	CU_ASSERT_STRING_EQUAL(body, "stopping\n");
	kill(t.pid, SIGTERM);           /* the second one: exit now */
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	close(hold);
	bt_cleanup(&t);
}

/* SIGHUP with another metrics_listen moves the endpoint. */
static void test_ops_metrics_reload(void)
{
	struct bt t;
	char body[256];
	int p1, p2;

	CU_ASSERT_FATAL(bt_init(&t, "mreload", "metrics_listen = 127.0.0.1:0",
				NULL) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	p1 = metrics_port(&t);
	CU_ASSERT_FATAL(p1 > 0);
	CU_ASSERT_EQUAL(http_get(p1, "/health", "GET", body, sizeof(body)),
			200);
	/* the same file, metrics_listen now on another loopback address */
	CU_ASSERT_EQUAL(sh("sed -i 's/^metrics_listen = .*/metrics_listen = "
			   "127.0.0.2:0/' %s", t.conf), 0);
	kill(t.pid, SIGHUP);
	p2 = metrics_port_at(&t, "127.0.0.2");
	CU_ASSERT_FATAL(p2 > 0);
	CU_ASSERT_EQUAL(http_get_at("127.0.0.2", p2, "/health", "GET", body,
				    sizeof(body)), 200);
	CU_ASSERT_STRING_EQUAL(body, "ok\n");
	/* the old endpoint is closed: no connection */
	CU_ASSERT_EQUAL(http_get(p1, "/health", "GET", body, sizeof(body)),
			0);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

/* ---- outbox top in tmux ----------------------------------------------------- */

static pid_t producer_start(const char *shm, int per_s)
{
	pid_t p = fork();

	if (p == 0) {
		obx_t *h = bt_open(shm);
		int s = h ? obx_sink(h, "default") : -1, i;

		for (i = 0; s >= 0 && i < per_s * 30; i++) {
			obx_emit(h, s, "tick", "{\"t\":1}", 7, OBX_BODY_JSON);
			usleep(1000000 / (useconds_t)per_s);
		}
		_exit(0);
	}
	return p;
}

/* the first line of the capture that starts with prefix, or NULL */
static const char *cap_line(const char *cap, const char *prefix)
{
	size_t n = strlen(prefix);
	const char *p = cap;

	while (p && *p) {
		if (!strncmp(p, prefix, n))
			return p;
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return NULL;
}

/* the k-th (0-based) whitespace-separated field of a line, as a double */
static double field(const char *line, int k)
{
	char buf[256], *save = NULL, *tok;
	size_t n = strcspn(line, "\n");

	if (n >= sizeof(buf))
		n = sizeof(buf) - 1;
	memcpy(buf, line, n);
	buf[n] = 0;
	for (tok = strtok_r(buf, " ", &save); tok && k--;
	     tok = strtok_r(NULL, " ", &save))
		;
	return tok ? strtod(tok, NULL) : -1;
}

static void test_ops_top_tmux(void)
{
	struct bt t;
	char sock[64], capfile[400], pidline[32], *cap;
	const char *l;
	size_t len;
	pid_t prod;
	int i, gone = 0;

	if (sh("command -v tmux >/dev/null") != 0) {
		fprintf(stderr, "SKIP test_ops_top_tmux: tmux is not installed "
			"(tools/install-deps installs it)\n");
		return;
	}
	CU_ASSERT_FATAL(bt_init(&t, "top", NULL, API_DOWN) == 0);
	CU_ASSERT_FATAL(bt_start(&t) == 0);
	CU_ASSERT_EQUAL(emit_n(t.shm, "api", 5), 5);
	prod = producer_start(t.shm, 200);
	snprintf(sock, sizeof(sock), "obxtest-top-%d", (int)getpid());
	CU_ASSERT_FATAL(sh("tmux -L %s -f /dev/null new-session -d -x 110 "
			   "-y 36 'TERM=xterm %s top -s %s -d 0.5'", sock,
			   bt_bin("outbox"), t.shm) == 0);
	/* a few refreshes: rates need two snapshots, the producer a slot */
	snprintf(capfile, sizeof(capfile), "%s/top.txt", t.dir);
	for (i = 0; i < 40; i++) {
		usleep(250000);
		CU_ASSERT_FATAL(sh("tmux -L %s capture-pane -p > %s", sock,
				   capfile) == 0);
		cap = tu_read_file(capfile, &len);
		snprintf(pidline, sizeof(pidline), "%d ", (int)prod);
		l = cap ? cap_line(cap, pidline) : NULL;
		/* the producer's EMIT/s (column 2) and default's OUT/s;
		 * its EMITTED (column 4) past 150: the rate shown is over a
		 * whole interval of its run, not its first partial one */
		if (l && field(l, 2) > 0 && field(l, 4) >= 150 &&
		    cap_line(cap, "default ") &&
		    field(cap_line(cap, "default "), 3) > 0 &&
		    strstr(cap, "backoff "))
			break;
		free(cap);
		cap = NULL;
	}
	CU_ASSERT_FATAL(cap != NULL);
	fprintf(stderr, "--- outbox top, captured from tmux ---\n%s---\n", cap);
	CU_ASSERT(strstr(cap, "/dev/shm/") != NULL);
	CU_ASSERT(strstr(cap, t.shm) != NULL);
	CU_ASSERT(strstr(cap, "broker pid") != NULL);
	/* the producer at ~200/s, the default sink delivering it */
	l = cap_line(cap, pidline);
	CU_ASSERT(l && field(l, 2) >= 50 && field(l, 2) <= 1000);
	l = cap_line(cap, "default ");
	CU_ASSERT(l && strstr(l, " ok ") && field(l, 3) > 0);
	/* the unreachable sink: backoff, with the time left, 5 queued */
	l = cap_line(cap, "api ");
	CU_ASSERT(l && strstr(l, "backoff ") && strstr(l, "s left"));
	CU_ASSERT(l && field(l, 8) == 5);       /* QUEUED, after "N left" */
	CU_ASSERT(cap_line(cap, "DROPS BY REASON") != NULL);
	CU_ASSERT(strstr(cap, "ring    [") != NULL);
	free(cap);
	/* q quits: the session (its only window) goes away */
	CU_ASSERT(sh("tmux -L %s send-keys q", sock) == 0);
	for (i = 0; i < 40 && !gone; i++) {
		usleep(100000);
		gone = sh("tmux -L %s has-session 2>/dev/null", sock) != 0;
	}
	CU_ASSERT(gone);
	sh("tmux -L %s kill-server 2>/dev/null", sock);
	kill(prod, SIGKILL);
	waitpid(prod, NULL, 0);
	CU_ASSERT_EQUAL(bt_stop(&t, 10000), 0);
	bt_cleanup(&t);
}

/* ---- make install ---------------------------------------------------------- */

static void test_ops_make_install(void)
{
	char dir[] = "/tmp/obxinst-XXXXXX";
	const char *build = getenv("OUTBOX_BUILD");
	static const char *files[] = {
		"bin/outboxd", "bin/outbox", "bin/outbox-bench",
		"include/outbox.h", "lib/liboutbox.a", "lib/liboutbox.so.1",
		"lib/liboutbox.so", "lib/pkgconfig/outbox.pc",
		"share/man/man8/outboxd.8", "share/man/man1/outbox.1",
		"share/man/man1/outbox-bench.1", "share/man/man5/outbox.ini.5",
		"share/man/man3/outbox.h.3",
	};
	char path[512];
	size_t i;

	CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
	/* a prefix outside pkg-config's system directories, so that what it
	 * prints really points into the staging tree */
	/* every directory on the command line: a make that runs this test
	 * (the Debian build's, with LIBDIR= and SBINDIR=) exports its own
	 * to the environment and through MAKEFLAGS */
	CU_ASSERT_FATAL(sh("env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL "
			   "make -s install NO_DEPS=1 BUILD=%s "
			   "PREFIX=/opt/outbox BINDIR=/opt/outbox/bin "
			   "SBINDIR=/opt/outbox/bin LIBDIR=/opt/outbox/lib "
			   "INCLUDEDIR=/opt/outbox/include "
			   "MANDIR=/opt/outbox/share/man DESTDIR=%s >&2",
			   build && *build ? build : "build", dir) == 0);
	for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		struct stat st;

		snprintf(path, sizeof(path), "%s/opt/outbox/%s", dir, files[i]);
		if (stat(path, &st) != 0)
			fprintf(stderr, "not installed: %s\n", files[i]);
		CU_ASSERT(stat(path, &st) == 0 && st.st_size > 0);
	}
	/* the man pages are roff that man(1) renders */
	CU_ASSERT_EQUAL(sh("MANWIDTH=80 man -l %s/opt/outbox/share/man/man8/"
			   "outboxd.8 2>/dev/null | grep -q 'WatchdogSec'",
			   dir), 0);
	/* a worker program builds and links with what pkg-config says
	 * (the sysroot maps the .pc's /opt/outbox into the staging dir),
	 * and runs against the installed shared library */
	CU_ASSERT_EQUAL(sh("cd %s && printf '#include <outbox.h>\\n"
			   "int main(void) { obx_t *h = obx_open(\"obx-none\");"
			   " return h != 0; }\\n' > w.c && cc w.c -o w "
			   /* a library built by `make check` needs the
			    * sanitizer runtimes linked in */
			   "$(nm -D opt/outbox/lib/liboutbox.so.1 | grep -q "
			   "__asan_init && echo -fsanitize=address,undefined) "
			   "$(PKG_CONFIG_SYSROOT_DIR=%s PKG_CONFIG_PATH=%s/opt/"
			   "outbox/lib/pkgconfig pkg-config --cflags --libs "
			   "outbox) >&2 && LD_LIBRARY_PATH=%s/opt/outbox/lib "
			   "./w", dir, dir, dir, dir), 0);
	sh("rm -rf %s", dir);
}

/* Every key outboxd knows is in outbox.ini(5): the keys come from
 * --print-config (the parser's own table), with a network sink so that
 * its keys print too. */
static void test_ops_man_ini_keys(void)
{
	char conf[] = "/tmp/obxman-XXXXXX", *man, *out, *p, key[80];
	size_t len, mlen;
	int fd, keys = 0;

	fd = mkstemp(conf);
	CU_ASSERT_FATAL(fd >= 0);
	dprintf(fd, "[broker]\nmetrics_listen = 127.0.0.1:0\n[sink api]\n"
		"type = http\nurl = http://127.0.0.1:1/\ntoken_file = /x\n"
		"header = X-A: b\n"
		"[sink seg]\ntype = segment\nwrite_key = k\n"
		"settings_url = http://127.0.0.1:1/s\n"
		"[sink sen]\ntype = sentry\n"
		"dsn = https://k@127.0.0.1/1\n"
		"[sink otl]\ntype = otlp\nurl = http://127.0.0.1:1/v1/logs\n"
		"service_name = x\n");
	close(fd);
	CU_ASSERT_EQUAL(sh("%s --print-config -c %s > %s.out",
			   bt_bin("outboxd"), conf, conf), 0);
	snprintf(key, sizeof(key), "%s.out", conf);
	out = tu_read_file(key, &len);
	man = tu_read_file("docs/man/outbox.ini.5.scd", &mlen);
	CU_ASSERT_FATAL(out && man);
	for (p = out; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		char want[96];
		int n = (int)strcspn(p, " =\n");

		if (*p == '#' || *p == '[' || *p == '\n' || !strstr(p, " = ") ||
		    n >= (int)sizeof(key))
			continue;
		snprintf(key, sizeof(key), "%.*s", n, p);
		if (!strncmp(key, "status.", 7))
			snprintf(key, sizeof(key), "status.");
		snprintf(want, sizeof(want), "*%s", key);
		if (!strstr(man, want))
			fprintf(stderr, "outbox.ini(5) lacks '%s'\n", key);
		CU_ASSERT(strstr(man, want) != NULL);
		keys++;
	}
	CU_ASSERT(keys >= 30);
	free(out);
	free(man);
	unlink(conf);
	snprintf(key, sizeof(key), "%s.out", conf);
	unlink(key);
}

static int add_suites(void)
{
	CU_pSuite s = CU_add_suite("ops", NULL, NULL);

	if (!s ||
	    !CU_add_test(s, "ops_tables_cover_pages",
			 test_ops_tables_cover_pages) ||
	    !CU_add_test(s, "ops_listen_parse", test_ops_listen_parse) ||
	    !CU_add_test(s, "ops_notify", test_ops_notify) ||
	    !CU_add_test(s, "ops_notify_no_ready_on_failure",
			 test_ops_notify_no_ready_on_failure) ||
	    !CU_add_test(s, "ops_metrics_scrape", test_ops_metrics_scrape) ||
	    !CU_add_test(s, "ops_health_stopping", test_ops_health_stopping) ||
	    !CU_add_test(s, "ops_metrics_reload", test_ops_metrics_reload) ||
	    !CU_add_test(s, "ops_top_tmux", test_ops_top_tmux) ||
	    !CU_add_test(s, "ops_make_install", test_ops_make_install) ||
	    !CU_add_test(s, "ops_man_ini_keys", test_ops_man_ini_keys))
		return -1;
	return 0;
}

TEST_MAIN(add_suites)
