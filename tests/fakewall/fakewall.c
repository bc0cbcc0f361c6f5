/* fakewall.c - LD_PRELOAD shim for the tests: steps the wall clock of
 * one process (the broker under test) without touching the machine's.
 *
 * $OBX_FAKEWALL names a file of at least 8 bytes holding an int64 shift
 * in ns (host byte order) at offset 0; it is mapped shared, so the test
 * can step this process's CLOCK_REALTIME forward or back at any moment
 * by writing the file. clock_gettime(CLOCK_REALTIME[_COARSE]),
 * gettimeofday() and time() see the shift; CLOCK_MONOTONIC and the other
 * clocks do not. Without $OBX_FAKEWALL (or with a bad file) nothing is
 * shifted. Built as its own .so, never linked into anything we ship.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile const int64_t *g_shift;
static int (*g_real)(clockid_t, struct timespec *);

__attribute__((constructor)) static void fakewall_init(void)
{
	const char *path = getenv("OBX_FAKEWALL");
	void *p;
	int fd;

	g_real = (int (*)(clockid_t, struct timespec *))
		 dlsym(RTLD_NEXT, "clock_gettime");
	if (!path)
		return;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	p = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p != MAP_FAILED)
		g_shift = p;
}

static void shift(struct timespec *ts)
{
	int64_t ns;

	if (!g_shift)
		return;
	ns = (int64_t)ts->tv_sec * 1000000000ll + ts->tv_nsec +
	     __atomic_load_n(g_shift, __ATOMIC_RELAXED);
	ts->tv_sec = ns / 1000000000ll;
	ts->tv_nsec = ns % 1000000000ll;
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
	int rc;

	if (!g_real)
		fakewall_init();
	rc = g_real(id, ts);
	if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE))
		shift(ts);
	return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
	struct timespec ts;

	(void)tz;
	if (clock_gettime(CLOCK_REALTIME, &ts) < 0)
		return -1;
	tv->tv_sec = ts.tv_sec;
	tv->tv_usec = ts.tv_nsec / 1000;
	return 0;
}

time_t time(time_t *t)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (t)
		*t = ts.tv_sec;
	return ts.tv_sec;
}
