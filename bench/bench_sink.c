/* bench_sink.c - `outbox-bench sink`: the bench's HTTP sink on its own.
 *
 *   outbox-bench sink [--port P] [--threads N] [--verify]
 *       serves until SIGINT / SIGTERM, then prints its counters
 *       (GET /stats answers them too);
 *   outbox-bench sink --load [--conns C] [--events E] [--size B]
 *       [--seconds T] [--compression none|gzip|zstd] [--threads N]
 *       [--verify]
 *       [--json]
 *       C client processes POST one prebuilt body of E envelope lines
 *       (B-byte bodies, as the broker sends them) over keep-alive libcurl
 *       handles for T seconds: how many requests and events per second
 *       the sink takes, and its CPU, so that it is known not to be what
 *       limits `e2e --sink http`.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "compress.h"
#include "httpsink.h"

struct sink_opts {
	int port, threads, verify, load, conns, events, size, json;
	enum cfg_compression comp;     /* as the broker compresses */
	double seconds;
};

static size_t sink_discard(char *p, size_t s, size_t n, void *u)
{
	(void)p;
	(void)u;
	return s * n;
}

/* E lines shaped like the broker's ndjson envelope, B-byte bodies */
static char *sink_body(const struct sink_opts *o, int me, size_t *len)
{
	size_t cap = (size_t)o->events * ((size_t)o->size + 160), n = 0;
	char *b = malloc(cap);
	int i, k;

	if (!b)
		return NULL;
	for (i = 0; i < o->events; i++) {
		k = snprintf(b + n, cap - n, "{\"id\":\"%016x%016x\",\"sink\":"
			     "\"api\",\"type\":\"bench\",\"ts\":"
			     "1763900000000000000,\"body\":{\"p\":%d,\"s\":%d,"
			     "\"pad\":\"", me, i, me, i);
		n += (size_t)k;
		for (k = 30; k < o->size - 2; k++)
			b[n++] = 'x';
		memcpy(b + n, "\"}}\n", 4);
		n += 4;
	}
	*len = n;
	return b;
}

/* the body compressed as the broker's compress.c does it */
static char *sink_compress(enum cfg_compression kind, const char *in,
			   size_t n, size_t *len)
{
	struct comp *c = comp_new(kind, 0);
	struct buf out;

	buf_init(&out, 0);
	if (!c || comp_body(c, in, n, &out) < 0) {
		comp_free(c);
		buf_free(&out);
		return NULL;
	}
	comp_free(c);
	*len = out.len;
	return (char *)out.p;
}

static void sink_client(const struct sink_opts *o, int port, int me,
			uint64_t deadline, uint64_t *errs)
{
	struct curl_slist *hd = NULL;
	char url[64], *raw, *body;
	size_t rlen, blen;
	CURL *e;
	long code;

	raw = sink_body(o, me, &rlen);
	body = raw && o->comp != COMP_NONE ?
	       sink_compress(o->comp, raw, rlen, &blen) : raw;
	if (o->comp == COMP_NONE)
		blen = rlen;
	if (!body)
		_exit(2);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/load", port);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	e = curl_easy_init();
	hd = curl_slist_append(hd, "Expect:");
	hd = curl_slist_append(hd, "Content-Type: application/x-ndjson");
	if (o->comp != COMP_NONE)
		hd = curl_slist_append(hd, comp_header(o->comp));
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, hd);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink_discard);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	while (bench_now() < deadline) {
		if (curl_easy_perform(e) != CURLE_OK ||
		    (curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code),
		     code != 200))
			__atomic_fetch_add(errs, 1, __ATOMIC_RELAXED);
	}
	curl_easy_cleanup(e);
	_exit(0);
}

static int sink_serve(const struct sink_opts *o)
{
	struct hs_opts ho = { o->threads, o->verify, o->port };
	struct hs_sink s;
	char j[700];
	sigset_t set;
	int sig, rc;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);
	rc = hs_start(&s, &ho);
	if (rc < 0) {
		fprintf(stderr, "outbox-bench sink: %s\n", strerror(-rc));
		return 1;
	}
	fprintf(stderr, "outbox-bench sink: listening on 127.0.0.1:%d, "
		"%d thread(s); GET /stats; ^C to stop\n", s.sh->port,
		o->threads);
	sigwait(&set, &sig);
	hs_stats_json(s.sh, j, sizeof(j));
	printf("%.*s,\"sink_cpu_s\":%.2f}\n", (int)strlen(j) - 2, j,
	       hs_cpu_s(&s));
	hs_stop(&s);
	return 0;
}

static int sink_load(const struct sink_opts *o)
{
	struct hs_opts ho = { o->threads, o->verify, o->port };
	struct hs_sink s;
	struct rusage ru;
	uint64_t *errs, t0, t1, r0, e0, b0, req, ev, bytes;
	double cpu0, cpu1, secs, ccpu = 0;
	pid_t pids[256];
	int i, rc;

	errs = mmap(NULL, sizeof(*errs), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	rc = hs_start(&s, &ho);
	if (errs == MAP_FAILED || rc < 0) {
		fprintf(stderr, "outbox-bench sink: cannot start the sink\n");
		return 1;
	}
	t0 = bench_now();
	for (i = 0; i < o->conns; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			sink_client(o, s.sh->port, i,
				    t0 + (uint64_t)((o->seconds + 0.5) * 1e9),
				    errs);
		}
	}
	/* half a second to connect and warm up, then the window */
	usleep(500000);
	t0 = bench_now();
	r0 = s.sh->requests_ok;
	e0 = s.sh->events;
	b0 = s.sh->bytes_raw;
	cpu0 = hs_cpu_s(&s);
	usleep((useconds_t)(o->seconds * 1e6));
	t1 = bench_now();
	req = s.sh->requests_ok - r0;
	ev = s.sh->events - e0;
	bytes = s.sh->bytes_raw - b0;
	cpu1 = hs_cpu_s(&s);
	for (i = 0; i < o->conns; i++) {
		wait4(pids[i], NULL, 0, &ru);
		ccpu += bench_ru_s(&ru);
	}
	secs = (double)(t1 - t0) / 1e9;
	if (o->json)
		printf("{\"mode\":\"sink\",\"conns\":%d,\"events_per_request\":"
		       "%d,\"size\":%d,\"compression\":\"%s\",\"threads\":%d,"
		       "\"verify\":%s,\"seconds\":%.2f,\"requests_per_s\":%.0f,"
		       "\"events_per_s\":%.0f,\"raw_mb_per_s\":%.0f,"
		       "\"sink_cpu_pct\":%.0f,\"clients_cpu_s\":%.2f,"
		       "\"errors\":%llu,\"bad_requests\":%llu,\"dups\":%llu}\n",
		       o->conns, o->events, o->size, comp_name(o->comp),
		       o->threads, o->verify ? "true" : "false", secs,
		       (double)req / secs, (double)ev / secs,
		       (double)bytes / secs / 1e6,
		       100.0 * (cpu1 - cpu0) / secs, ccpu,
		       (unsigned long long)*errs,
		       (unsigned long long)s.sh->bad_requests,
		       (unsigned long long)s.sh->dups);
	else
		printf("sink: %d conns x %d events of %d B (%s%s), %d thread(s):"
		       " %.0f requests/s, %.2f M events/s, %.0f MB/s raw; sink "
		       "CPU %.0f%%; client errors %llu, bad requests %llu\n",
		       o->conns, o->events, o->size, comp_name(o->comp),
		       o->verify ? ", verify" : "", o->threads,
		       (double)req / secs, (double)ev / secs / 1e6,
		       (double)bytes / secs / 1e6, 100.0 * (cpu1 - cpu0) / secs,
		       (unsigned long long)*errs,
		       (unsigned long long)s.sh->bad_requests);
	rc = *errs ? 1 : 0;
	hs_stop(&s);
	munmap(errs, sizeof(*errs));
	return rc;
}

int bench_sink(int argc, char **argv)
{
	struct sink_opts o = { .threads = 1, .conns = 4, .events = 500,
		.size = 256, .comp = COMP_GZIP, .seconds = 5.0 };
	int i, bad = 0;

	for (i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc)
			o.port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			o.threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--conns") && i + 1 < argc)
			o.conns = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--events") && i + 1 < argc)
			o.events = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--size") && i + 1 < argc)
			o.size = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			o.seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--compression") && i + 1 < argc)
			bad |= bench_comp_parse(argv[++i], &o.comp) < 0;
		else if (!strcmp(argv[i], "--verify"))
			o.verify = 1;
		else if (!strcmp(argv[i], "--load"))
			o.load = 1;
		else if (!strcmp(argv[i], "--json"))
			o.json = 1;
		else {
			fprintf(stderr, "usage: outbox-bench sink [--port P] "
				"[--threads N] [--verify]\n"
				"       outbox-bench sink --load [--conns C] "
				"[--events E] [--size B] [--seconds T]\n"
				"                [--compression none|gzip|zstd] "
				"[--threads N] [--verify] [--json]\n");
			return 2;
		}
	}
	if (bad || o.threads < 1 || o.threads > 16 || o.conns < 1 ||
	    o.conns > 256 || o.events < 1 || o.size < 40 ||
	    o.size > 60000 || o.seconds <= 0) {
		fprintf(stderr, "outbox-bench sink: bad arguments\n");
		return 2;
	}
	return o.load ? sink_load(&o) : sink_serve(&o);
}
