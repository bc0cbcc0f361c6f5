#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_ring (tests/fuzz/ring/).

The layout is what fuzz_ring.c reads, byte for byte: control (16), page 0
header (256, tail at 128), 8 slots of 384 bytes, the ring (64 KiB).
Trailing zeros are dropped (the target zero-fills short inputs).
Run from the repository root: python3 tests/fuzz/ring_seeds.py
"""
import os
import struct

RING = 64 << 10
SLOT = 384
CTL, HDR, NSLOTS = 16, 256, 8
COMMIT, BUSY, DISCARD, PAD = 2, 1, 3, 4
ENV = open("tests/fuzz/envelope/bin-body", "rb").read()


def word(size, slot, state):
    return size | slot << 32 | state << 48 | 0x0B << 56


class Seed:
    def __init__(self):
        self.ctl = bytearray(CTL)
        self.hdr = bytearray(HDR)
        self.slots = bytearray(SLOT * NSLOTS)
        self.ring = bytearray(RING)

    def put(self, pos, slot, state, payload, lane=1):
        size = (16 + len(payload) + 7) & ~7
        off = pos & (RING - 1)
        rec = struct.pack("<QII", word(size, slot, state), len(payload),
                          lane) + payload
        for i, b in enumerate(rec):
            self.ring[(off + i) & (RING - 1)] = b
        return pos + size

    def tail(self, t):
        struct.pack_into("<Q", self.hdr, 128, t & (2**64 - 1))

    def slot(self, i, state, pid):
        struct.pack_into("<II", self.slots, i * SLOT, state, pid)

    def lane(self, i, k, claim, pos, pos_n):
        struct.pack_into("<IIQQQ", self.slots, i * SLOT + 128 + 64 * k,
                         1, k + 1, claim, pos, pos_n)

    def write(self, name, start=0, alive=0, steps=40, jump=0x11,
              release=0xFF):
        struct.pack_into("<QBBBBB", self.ctl, 0, start, alive, steps, jump,
                         release, 10)
        data = bytes(self.ctl + self.hdr + self.slots + self.ring)
        with open(os.path.join("tests/fuzz/ring", name), "wb") as f:
            f.write(data.rstrip(b"\0"))


os.makedirs("tests/fuzz/ring", exist_ok=True)

s = Seed()                                   # committed records
pos = 0
for _ in range(20):
    pos = s.put(pos, 0, COMMIT, ENV)
s.tail(pos)
s.write("commits")

s = Seed()                                   # a live owner's BUSY record
s.slot(0, 1, 1)
pos = s.put(0, 0, BUSY, ENV + bytes(36))
for _ in range(10):
    pos = s.put(pos, 1, COMMIT, ENV)
s.tail(pos)
s.write("busy-live", alive=1, steps=90, jump=0x33, release=0x55)

s = Seed()                                   # a stalled gap, located
s.slot(0, 1, 1)
s.lane(0, 0, 3, 0, 3)
pos = 128
for _ in range(10):
    pos = s.put(pos, 1, COMMIT, ENV)
s.tail(pos)
s.write("gap-claimer", alive=1, steps=90, jump=0x33, release=0xF0)

s = Seed()                                   # a stalled gap, unlocated
s.slot(0, 1, 1)
struct.pack_into("<QQ", s.slots, 16, 5, 4)   # shared reserved 5, settled 4
pos = 64
for _ in range(10):
    pos = s.put(pos, 1, COMMIT, ENV)
s.tail(pos)
s.write("gap-shared", alive=1, steps=90, jump=0x33, release=0xF0)

s = Seed()                                   # a dead owner's open claim
s.slot(2, 1, 999999)
s.lane(2, 0, 3, 0, 3)
pos = s.put(0, 2, BUSY, bytes(64))
pos = s.put(pos, 2, DISCARD, bytes(64))
pos = s.put(pos, 0, PAD, b"", lane=0)
pos = s.put(pos, 3, COMMIT, ENV)
s.tail(pos)
s.write("dead-owner", steps=30, jump=0x55)

s = Seed()                                   # hostile tails
pos = s.put(0, 0, COMMIT, ENV)
s.tail(pos + (1 << 62))
s.write("tail-far", steps=60, jump=0)
s.tail(pos + 3)
s.write("tail-misaligned", steps=60, jump=0)

s = Seed()                                   # records across a lap
start = 5 * RING - 8 * ((16 + len(ENV) + 7) & ~7)
pos = start
for _ in range(12):
    pos = s.put(pos, 0, COMMIT, ENV)
s.tail(pos)
s.write("wrap", start=start)

s = Seed()                                   # positions across 2^64
start = 2**64 - 4096
pos = start
for _ in range(30):
    pos = s.put(pos, 0, COMMIT, ENV)
s.tail(pos)
s.write("wrap64", start=start)
