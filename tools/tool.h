/* tool.h - what the commands of the outbox CLI share (tools/outbox.c):
 * time and size formatting, attaching to a segment, snapshots. */
#ifndef OBX_TOOL_H
#define OBX_TOOL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include "metrics.h"
#include "segment.h"

#define TOOL_EXIT_USAGE 2

uint64_t tool_now_ns(clockid_t clk);
/* -s value, else $OUTBOX_SHM, else "outbox" */
const char *tool_shm_name(const char *opt);
/* RFC 3339, UTC with milliseconds or local time with its offset */
void tool_fmt_time(char *out, size_t len, uint64_t ns, int local);
/* 850ms, 4.2s, 12s, 3m12s, 2h05m, 3d04h */
void tool_fmt_dur(char *out, size_t len, uint64_t ns);
/* "in 12s" / "3s ago" relative to now (same clock) */
void tool_fmt_rel(char *out, size_t len, uint64_t when, uint64_t now);
/* 512 B, 1.5 KiB, 12.0 MiB */
void tool_fmt_bytes(char *out, size_t len, uint64_t b);

/* Attaches without registering a producer: 0, or -errno after saying
 * why on stderr. */
int tool_attach(const char *cmd, const char *name, struct seg *s);
/* tool_attach() and mx_snap_take(): 0, or -errno after a message. */
int tool_snap_take(const char *cmd, const char *name, struct seg *seg,
		   struct mx_snap *sn);
void tool_snap_free(struct seg *seg, struct mx_snap *sn);

/* outbox top [-s SHM] [-d SECONDS] (tools/top.c) */
int cmd_top(int argc, char **argv);

#endif
