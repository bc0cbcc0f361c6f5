/* test_python.c - runs the Python test cases (tests/py/test_*.py: the
 * binding, the sentry_sdk transport, the Spotlight end to end) as CUnit
 * tests, one CUnit test per Python test case, so `make test` and its
 * "N passed, N failed" line count them one by one.
 *
 * The interpreter is Debian's /usr/bin/python3 (where python3-msgpack and
 * python3-sentry-sdk are installed; the python3 first on PATH may be
 * another one), or $OBX_PYTHON. tests/py/runner.py --list names the cases;
 * a case it names with a reason (e.g. a receiver that cannot run here) is
 * registered inactive and counted as skipped, never as passed. Each case
 * runs in its own interpreter with a time limit; its output goes to this
 * program's log.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>

#include "testutil.h"

#define PY_MAX_CASES  96
#define PY_TIMEOUT_S  600

static char g_ids[PY_MAX_CASES][256];
static int g_ncases;
static char g_list_out[8192];

static const char *python(void)
{
	const char *p = getenv("OBX_PYTHON");

	return p && *p ? p : "/usr/bin/python3";
}

/* Under `make check` liboutbox.so is built with ASan, which must be the
 * first library of the process that loads it: preload the runtime into
 * the interpreter (and what it starts), leak checks off (the interpreter
 * keeps its memory to the end by design). */
static void sanitizer_env(void)
{
#if defined(__SANITIZE_ADDRESS__)
	char path[512] = "";
	FILE *f = popen("${CC:-cc} -print-file-name=libasan.so", "r");

	if (f) {
		if (fgets(path, sizeof(path), f))
			path[strcspn(path, "\n")] = 0;
		pclose(f);
	}
	if (path[0] == '/')
		setenv("LD_PRELOAD", path, 1);
	setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
#endif
}

/* Runs runner.py with one argument; its stdout+stderr into out (when not
 * NULL) and to our stdout. Returns the exit status, 128+sig when killed,
 * -1 when it could not run. */
static int run_runner(const char *arg, char *out, size_t outlen, int secs)
{
	int pfd[2], st;
	size_t used = 0;
	pid_t pid;
	char buf[4096];
	ssize_t n;
	uint64_t deadline = tu_now_ns() + (uint64_t)secs * 1000000000ull;

	if (pipe(pfd) < 0)
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		setpgid(0, 0);
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		close(pfd[0]);
		close(pfd[1]);
		execl(python(), python(), "-u", "tests/py/runner.py", arg,
		      (char *)NULL);
		fprintf(stderr, "cannot run %s: %s\n", python(),
			strerror(errno));
		_exit(127);
	}
	close(pfd[1]);
	for (;;) {
		struct timeval tv = { .tv_sec = 1 };
		fd_set rf;

		FD_ZERO(&rf);
		FD_SET(pfd[0], &rf);
		if (select(pfd[0] + 1, &rf, NULL, NULL, &tv) > 0) {
			n = read(pfd[0], buf, sizeof(buf));
			if (n <= 0)
				break;
			fwrite(buf, 1, (size_t)n, stdout);
			if (out && used + 1 < outlen) {
				size_t c = (size_t)n < outlen - 1 - used ?
					   (size_t)n : outlen - 1 - used;

				memcpy(out + used, buf, c);
				used += c;
			}
		}
		if (tu_now_ns() > deadline) {
			printf("\n%s: killed after %d s\n", arg, secs);
			kill(-pid, SIGKILL);
			break;
		}
	}
	close(pfd[0]);
	if (out)
		out[used] = 0;
	fflush(stdout);
	if (waitpid(pid, &st, 0) < 0)
		return -1;
	/* whatever the case left behind in its process group goes too */
	kill(-pid, SIGKILL);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void run_case(int k)
{
	int rc;

	printf("\n--- %s\n", g_ids[k]);
	fflush(stdout);
	rc = run_runner(g_ids[k], NULL, 0, PY_TIMEOUT_S);
	if (rc == 3)
		printf("%s: skipped at run time; a skip must be declared by "
		       "skip_reasons() (--list), so this counts as a failure\n",
		       g_ids[k]);
	CU_ASSERT_EQUAL(rc, 0);
}

/* one CUnit entry point per case slot: case_B_I runs case 8 * B + I */
#define T(b, i) static void case_##b##_##i(void) { run_case(8 * (b) + (i)); }
#define T8(b) T(b, 0) T(b, 1) T(b, 2) T(b, 3) T(b, 4) T(b, 5) T(b, 6) T(b, 7)
T8(0) T8(1) T8(2) T8(3) T8(4) T8(5) T8(6) T8(7) T8(8) T8(9) T8(10) T8(11)
#define C8(b) case_##b##_0, case_##b##_1, case_##b##_2, case_##b##_3, \
	      case_##b##_4, case_##b##_5, case_##b##_6, case_##b##_7
static CU_TestFunc g_fns[PY_MAX_CASES] = {
	C8(0), C8(1), C8(2), C8(3), C8(4), C8(5), C8(6), C8(7), C8(8), C8(9),
	C8(10), C8(11)
};

static void test_list(void)
{
	printf("\n%s --list failed:\n%s\n", python(), g_list_out);
	CU_FAIL("tests/py/runner.py --list failed");
}

static int add_python(void)
{
	CU_pSuite s = CU_add_suite("python", NULL, NULL);
	char *line, *save = NULL;
	int rc;

	if (!s)
		return -1;
	/* an inactive test is a skip, not a failure */
	CU_set_fail_on_inactive(CU_FALSE);
	sanitizer_env();
	rc = run_runner("--list", g_list_out, sizeof(g_list_out), 120);
	if (rc != 0)
		return CU_add_test(s, "list", test_list) ? 0 : -1;
	for (line = strtok_r(g_list_out, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *why = strchr(line, '\t');
		CU_pTest t;

		if (strncmp(line, "test_", 5) != 0)
			continue;          /* anything a module printed */
		if (why)
			*why++ = 0;
		if (g_ncases == PY_MAX_CASES) {
			fprintf(stderr, "more than %d python cases: raise "
				"PY_MAX_CASES\n", PY_MAX_CASES);
			return -1;
		}
		snprintf(g_ids[g_ncases], sizeof(g_ids[0]), "%s", line);
		t = CU_add_test(s, g_ids[g_ncases], g_fns[g_ncases]);
		if (!t)
			return -1;
		if (why) {
			CU_set_test_active(t, CU_FALSE);
			printf("SKIPPED %s: %s\n", line, why);
		}
		g_ncases++;
	}
	return 0;
}

TEST_MAIN(add_python)
