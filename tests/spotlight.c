/* spotlight.c - Sentry Spotlight as a child process; see spotlight.h. */
#define _GNU_SOURCE
#include "spotlight.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "upstream.h"

static pid_t g_pid = -1;
static int g_port;
static char g_url[64];

int sp_port(void)
{
	return g_port;
}

const char *sp_url(void)
{
	return g_url;
}

/* tests/node/node_modules/.bin/spotlight from the cwd or the binary */
static int sp_bin(char *out, size_t len)
{
	char exe[PATH_MAX];
	ssize_t n;
	int i;

	snprintf(out, len, "tests/node/node_modules/.bin/spotlight");
	if (access(out, X_OK) == 0)
		return 0;
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return -1;
	exe[n] = 0;
	for (i = 0; i < 3; i++) {
		char *s = strrchr(exe, '/');

		if (!s)
			return -1;
		*s = 0;
	}
	snprintf(out, len, "%.3000s/tests/node/node_modules/.bin/spotlight",
		 exe);
	return access(out, X_OK);
}

static int sp_free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &al) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

static long sp_get(const char *path, long timeout_ms, struct up_sbuf *b)
{
	char url[128];
	long code = 0;
	CURL *e = curl_easy_init();

	if (!e)
		return 0;
	snprintf(url, sizeof(url), "%s%s", g_url, path);
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, up_sbuf_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, b);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_perform(e);
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_cleanup(e);
	return code;
}

int sp_start(const char **why)
{
	char bin[PATH_MAX], port[16];
	int i;

	if (system("node --version >/dev/null 2>&1") != 0) {
		*why = "node is not installed";
		return -1;
	}
	if (sp_bin(bin, sizeof(bin)) < 0) {
		*why = "tests/node/node_modules has no spotlight "
		       "(tools/install-deps installs it with npm)";
		return -1;
	}
	g_port = sp_free_port();
	if (g_port <= 0) {
		*why = "no free port";
		return -1;
	}
	snprintf(port, sizeof(port), "%d", g_port);
	snprintf(g_url, sizeof(g_url), "http://127.0.0.1:%d", g_port);
	g_pid = fork();
	if (g_pid < 0) {
		*why = "fork failed";
		return -1;
	}
	if (g_pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		prctl(PR_SET_PDEATHSIG, SIGTERM);
		/* no NODE_ENV: Spotlight then sends no telemetry of its own */
		unsetenv("NODE_ENV");
		if (null >= 0) {
			dup2(null, 1);
			dup2(null, 2);
		}
		execlp(bin, bin, "-p", port, (char *)NULL);
		_exit(127);
	}
	for (i = 0; i < 200; i++) {
		struct up_sbuf b = { 0 };
		long code = sp_get("/health", 500, &b);

		free(b.p);
		if (code == 200)
			return 0;
		if (waitpid(g_pid, NULL, WNOHANG) == g_pid) {
			g_pid = -1;
			*why = "spotlight exited at start";
			return -1;
		}
		usleep(50000);
	}
	sp_stop();
	*why = "spotlight did not answer /health within 10 s";
	return -1;
}

void sp_stop(void)
{
	int i;

	if (g_pid <= 0)
		return;
	kill(g_pid, SIGTERM);
	for (i = 0; i < 300; i++) {
		if (waitpid(g_pid, NULL, WNOHANG) == g_pid)
			break;
		usleep(10000);
	}
	if (i == 300) {
		kill(g_pid, SIGKILL);
		waitpid(g_pid, NULL, 0);
	}
	g_pid = -1;
}

json_t *sp_envelopes(void)
{
	struct up_sbuf b = { 0 };
	json_t *arr = json_array();
	char *line, *save = NULL;

	/* an SSE stream never ends: read what it replays for 1.5 s */
	sp_get("/stream", 1500, &b);
	if (!b.p)
		return arr;
	for (line = strtok_r(b.p, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		json_t *j;

		if (strncmp(line, "data:", 5))
			continue;
		j = json_loads(line + 5, 0, NULL);
		if (json_is_array(j))
			json_array_append_new(arr, j);
		else
			json_decref(j);
	}
	free(b.p);
	return arr;
}
