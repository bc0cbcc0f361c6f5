/* upstream.h - tests/fake_upstream.py as a child process, and blocking
 * calls to its admin API (libcurl easy, outside any code under test).
 *
 * One upstream per test process: up_start() forks python3 on a free
 * loopback port (it dies with the test process), up_stop() ends it by
 * PID. Scripts, captured requests and counters are described in the
 * docstring of tests/fake_upstream.py.
 */
#ifndef OBX_UPSTREAM_H
#define OBX_UPSTREAM_H

#include <jansson.h>
#include <stddef.h>

/* Path of tests/fake_upstream.py, from the cwd or from the binary's
 * location (build/tests/x -> ../../tests/); NULL when not found. */
const char *up_script_path(char *buf, size_t len);
/* Starts the upstream; 0, or -1 (no python3, no port within 10 s). */
int up_start(void);
/* SIGTERM (SIGKILL after 3 s) and reap; a no-op when not started. */
void up_stop(void);
/* Its port, and "http://127.0.0.1:PORT" (valid after up_start). */
int up_port(void);
const char *up_base(void);

/* A growable string: the body of an admin answer. */
struct up_sbuf {
	char *p;
	size_t len;
};
/* CURLOPT_WRITEFUNCTION appending to the up_sbuf in userdata. */
size_t up_sbuf_write(char *d, size_t sz, size_t n, void *u);

/* A blocking admin call (method, path like "/_admin/stats", body or
 * NULL): the HTTP status (0 when no answer), and the parsed JSON answer
 * (or NULL) in *out when out is not NULL. */
long up_admin(const char *method, const char *path, const char *body,
	      json_t **out);
/* POST /_admin/script; 0 or -1. */
int up_script(const char *js);
/* POST /_admin/reset; 0 or -1. */
int up_reset(void);
/* One integer of /_admin/stats, or -1. */
json_int_t up_stat(const char *key);
/* The captured requests with seq >= since (bodies too when bodies);
 * a new reference to a JSON array, or NULL. */
json_t *up_requests(long since, int bodies);
/* Distinct "ip:port" clients among captured requests; -1 on a request
 * without one. */
int up_distinct_clients(json_t *reqs);

#endif
