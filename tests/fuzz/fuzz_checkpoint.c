/* fuzz_checkpoint - libFuzzer target: the spool's checkpoint loader and
 * the drain journal loader over arbitrary files. Both files are written
 * by the broker but read back after crashes, bit rot and whatever else
 * happened to the disk: any byte pattern must be refused or read within
 * bounds, and what is accepted must survive an encode/parse round trip
 * unchanged.
 *
 * Input: byte 0 picks the loader (bit 0: journal, else checkpoint) and
 * whether the rest is a whole file image (bit 1) or a payload the target
 * packs into a valid slot (so the fuzzer reaches the parser past the
 * slot's CRC). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spool_format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void ck_round_trip(const struct spf_ckpt *ck)
{
	static uint8_t img[2 * SPF_CK_SLOT];
	struct spf_ckpt again;
	size_t n;

	memset(img, 0, sizeof(img));
	n = spf_ck_encode(img, "s", ck);
	if (!n)
		abort();	/* what parses must encode: it fits a slot */
	if (spf_ck_parse(img, sizeof(img), "s", &again) != 1)
		abort();
	again.version = ck->version;
	if (memcmp(&again, ck, sizeof(again)))
		abort();
}

static void jr_round_trip(const struct spf_journal *j)
{
	static uint8_t slot[SPF_JR_SLOT];
	static struct spf_journal again;
	const uint8_t *pl;
	uint64_t gen = 0;
	size_t n, len;

	memset(slot, 0, sizeof(slot));
	n = spf_jr_encode(slot, j);
	if (!n)
		return;		/* names + blob may exceed a slot: refused */
	if (spf_slot_pick(slot, sizeof(slot), SPF_JR_SLOT, 0x4a58424fu, &pl,
			  &len, &gen) != 0)
		abort();
	if (spf_jr_parse(pl, len, &again) != 1)
		abort();
	again.gen = j->gen;
	if (again.ring_id != j->ring_id || again.ring_pos != j->ring_pos ||
	    again.nsinks != j->nsinks || again.blob_len != j->blob_len ||
	    memcmp(again.blob, j->blob, j->blob_len) ||
	    memcmp(again.sinks, j->sinks, j->nsinks * sizeof(j->sinks[0])))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t img[2 * SPF_JR_SLOT];
	static struct spf_journal j;
	struct spf_ckpt ck;
	uint8_t mode;

	if (!size)
		return 0;
	mode = data[0];
	data++;
	size--;
	if (mode & 1) {
		if (mode & 2) {
			if (size > sizeof(img))
				return 0;
			if (size == sizeof(img)) {
				const uint8_t *pl;
				uint64_t gen = 0;
				size_t len;

				if (spf_slot_pick(data, size, SPF_JR_SLOT,
						  0x4a58424fu, &pl, &len,
						  &gen) >= 0 &&
				    spf_jr_parse(pl, len, &j) == 1)
					jr_round_trip(&j);
			}
			return 0;
		}
		if (spf_jr_parse(data, size, &j) == 1)
			jr_round_trip(&j);
		return 0;
	}
	if (mode & 2) {
		/* a whole file: the exact image size selects version 2 */
		uint8_t *copy = malloc(size ? size : 1);

		if (!copy)
			return 0;
		memcpy(copy, data, size);
		if (spf_ck_parse(copy, size, "s", &ck) == 1 &&
		    ck.version == 2)
			ck_round_trip(&ck);
		free(copy);
		return 0;
	}
	memset(img, 0, 2 * SPF_CK_SLOT);
	if (!spf_slot_pack(img + (mode & 4 ? SPF_CK_SLOT : 0), SPF_CK_SLOT,
			   0x4b58424fu, mode >> 3, data, size))
		return 0;
	if (spf_ck_parse(img, 2 * SPF_CK_SLOT, "s", &ck) == 1)
		ck_round_trip(&ck);
	return 0;
}
