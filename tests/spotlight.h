/* spotlight.h - Sentry Spotlight (@spotlightjs/spotlight, pinned in
 * tests/node, installed by tools/install-deps) as a real Sentry envelope
 * receiver for tests.
 *
 * sp_start() runs `spotlight -p PORT` on a free port (it dies with the
 * test process); envelopes go to http://k@127.0.0.1:PORT/1 as a DSN
 * (POST /api/1/envelope/) or to sp_url()/stream. sp_envelopes() reads
 * back what Spotlight parsed, through its SSE stream (GET /stream replays
 * its buffer of the last 500 envelopes): a JSON array with one
 * [envelope header, [[item header, item payload], ...]] per envelope.
 * From another language: the same GET /stream, `data:` lines.
 */
#ifndef OBX_SPOTLIGHT_H
#define OBX_SPOTLIGHT_H

#include <jansson.h>

/* 0 started; -1 not available (*why says why: no node, packages not
 * installed, did not come up). */
int sp_start(const char **why);
void sp_stop(void);
int sp_port(void);
/* "http://127.0.0.1:PORT" */
const char *sp_url(void);
/* The envelopes Spotlight holds (new reference), or NULL. */
json_t *sp_envelopes(void);

#endif
