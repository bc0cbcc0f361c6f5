/* upstream.c - tests/fake_upstream.py driven from the C tests; see
 * upstream.h. */
#define _GNU_SOURCE
#include "upstream.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t g_pid = -1;
static int g_fd = -1;		/* its stdout */
static int g_port;
static char g_base[64];		/* http://127.0.0.1:PORT */

int up_port(void)
{
	return g_port;
}

const char *up_base(void)
{
	return g_base;
}

const char *up_script_path(char *buf, size_t len)
{
	char exe[PATH_MAX];
	ssize_t n;
	int i;

	if (access("tests/fake_upstream.py", R_OK) == 0)
		return "tests/fake_upstream.py";
	/* build/tests/test_x -> ../../tests/fake_upstream.py */
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return NULL;
	exe[n] = '\0';
	for (i = 0; i < 3; i++) {
		char *s = strrchr(exe, '/');

		if (!s)
			return NULL;
		*s = '\0';
	}
	snprintf(buf, len, "%s/tests/fake_upstream.py", exe);
	return access(buf, R_OK) == 0 ? buf : NULL;
}

int up_start(void)
{
	char pbuf[PATH_MAX + 32], line[64];
	const char *path = up_script_path(pbuf, sizeof(pbuf));
	size_t got = 0;
	int p[2];

	if (!path || pipe2(p, O_CLOEXEC) < 0)
		return -1;
	g_pid = fork();
	if (g_pid < 0)
		return -1;
	if (g_pid == 0) {
		/* dies with us even if we crash or are killed */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		dup2(p[1], 1);
		execlp("python3", "python3", path, "--port", "0", "--host",
		       "127.0.0.1", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	g_fd = p[0];
	/* "PORT <n>\n", within 10 s */
	while (got < sizeof(line) - 1 && !memchr(line, '\n', got)) {
		struct pollfd pf = { .fd = g_fd, .events = POLLIN };
		ssize_t n;

		if (poll(&pf, 1, 10000) <= 0)
			return -1;
		n = read(g_fd, line + got, sizeof(line) - 1 - got);
		if (n <= 0)
			return -1;
		got += (size_t)n;
		line[got] = '\0';
	}
	if (sscanf(line, "PORT %d", &g_port) != 1 || g_port <= 0)
		return -1;
	snprintf(g_base, sizeof(g_base), "http://127.0.0.1:%d", g_port);
	return 0;
}

void up_stop(void)
{
	int i, st;

	if (g_pid <= 0)
		return;
	kill(g_pid, SIGTERM);
	for (i = 0; i < 300; i++) {
		if (waitpid(g_pid, &st, WNOHANG) == g_pid)
			break;
		usleep(10000);
	}
	if (i == 300) {
		kill(g_pid, SIGKILL);
		waitpid(g_pid, &st, 0);
	}
	g_pid = -1;
	if (g_fd >= 0)
		close(g_fd);
	g_fd = -1;
}

size_t up_sbuf_write(char *d, size_t sz, size_t n, void *u)
{
	struct up_sbuf *b = u;
	char *np = realloc(b->p, b->len + sz * n + 1);

	if (!np)
		return 0;
	b->p = np;
	memcpy(b->p + b->len, d, sz * n);
	b->len += sz * n;
	b->p[b->len] = '\0';
	return sz * n;
}

long up_admin(const char *method, const char *path, const char *body,
	      json_t **out)
{
	struct up_sbuf b = { 0 };
	char url[256];
	long code = 0;
	CURL *e = curl_easy_init();

	if (out)
		*out = NULL;
	if (!e)
		return -1;
	snprintf(url, sizeof(url), "%s%s", g_base, path);
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	if (body)
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, up_sbuf_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	if (curl_easy_perform(e) == CURLE_OK)
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_cleanup(e);
	if (out)
		*out = b.p ? json_loads(b.p, 0, NULL) : NULL;
	free(b.p);
	return code;
}

int up_script(const char *js)
{
	return up_admin("POST", "/_admin/script", js, NULL) == 200 ? 0 : -1;
}

int up_reset(void)
{
	return up_admin("POST", "/_admin/reset", "", NULL) == 200 ? 0 : -1;
}

json_int_t up_stat(const char *key)
{
	json_t *s = NULL;
	json_int_t v = -1;

	if (up_admin("GET", "/_admin/stats", NULL, &s) == 200)
		v = json_integer_value(json_object_get(s, key));
	json_decref(s);
	return v;
}

json_t *up_requests(long since, int bodies)
{
	char path[96];
	json_t *r = NULL;

	snprintf(path, sizeof(path), "/_admin/requests?since=%ld%s", since,
		 bodies ? "&bodies=1" : "");
	if (up_admin("GET", path, NULL, &r) != 200 || !json_is_array(r)) {
		json_decref(r);
		return NULL;
	}
	return r;
}

int up_distinct_clients(json_t *reqs)
{
	const char *seen[256];
	int n = 0;
	size_t i;

	for (i = 0; i < json_array_size(reqs); i++) {
		const char *c = json_string_value(
			json_object_get(json_array_get(reqs, i), "client"));
		int j;

		if (!c)
			return -1;
		for (j = 0; j < n && strcmp(seen[j], c); j++)
			;
		if (j == n && n < 256)
			seen[n++] = c;
	}
	return n;
}
