"""The .wandb framing (docs/wandb.md, "The file format") without a server: a file cut anywhere never yields a
partial record; corrupt chunks are skipped and reported; the record kind is read from the protobuf tags."""
from __future__ import annotations

import random
import struct
import zlib

import pytest

from sync_gateway.readers.wandb._format import (
    BLOCK,
    HEADER,
    check_header,
    first_chunk,
    parse_records,
    record_end,
    record_kind,
)
from sync_gateway.readers.wandb._system import system_key


def write_log(payloads, block=BLOCK):
    """A LevelDB-log writer as W&B's (header in the first block, 7-byte chunk headers, zero padding)."""
    out = bytearray(HEADER)
    for p in payloads:
        first = True
        while True:
            left = block - len(out) % block
            if left < 7:
                out += b"\0" * left
                continue
            room = left - 7
            piece, p = p[:room], p[room:]
            kind = (1 if not p else 2) if first else (4 if not p else 3)
            out += struct.pack("<IHB", zlib.crc32(piece, zlib.crc32(bytes([kind]))), len(piece), kind) + piece
            first = False
            if not p:
                break
    return bytes(out)


def payloads(n, seed=1):
    rng = random.Random(seed)
    return [bytes([i % 251]) * rng.choice([1, 50, 300, 5000, 40000, 70000]) for i in range(n)]


def read_all(data, step):
    """Read a file that grows by ``step`` bytes at a time, as the engine does: from the consumed offset."""
    got, off, size = [], 7, 7
    while size < len(data):
        size = min(len(data), size + step)
        parsed = parse_records(data[off:size], off)
        assert not parsed.corrupt
        got += [p for p, _ in parsed.records]
        off = parsed.consumed
    return got


@pytest.mark.parametrize("step", [7, 100, 4093, BLOCK - 1, BLOCK, BLOCK + 1, 100_000])
def test_a_growing_file_read_at_every_size_gives_each_record_once(step):
    ps = payloads(40)
    data = write_log(ps)
    assert read_all(data, step) == ps


def test_cut_at_block_boundary_and_mid_chunk_then_grown():
    ps = payloads(30, seed=2)
    data = write_log(ps)
    for cut in (BLOCK, 2 * BLOCK, 2 * BLOCK + 3, BLOCK + 7 + 10):  # a boundary, a padding, mid-chunk
        first = parse_records(data[7:cut], 7)
        assert not first.corrupt
        rest = parse_records(data[first.consumed:], first.consumed)
        assert [p for p, _ in first.records] + [p for p, _ in rest.records] == ps
        ends = [e for _, e in first.records]
        assert ends == sorted(ends) and (not ends or ends[-1] == first.consumed)


def test_a_corrupt_chunk_skips_its_block_and_says_so():
    ps = [b"a" * 100, b"b" * 100, b"c" * 40000, b"d" * 100]
    data = bytearray(write_log(ps))
    data[7 + 7 + 50] ^= 0xFF    # inside the first record
    parsed = parse_records(bytes(data[7:]), 7)
    assert parsed.corrupt and "checksum" in parsed.corrupt[0][1]
    # the rest of the first block is skipped (LevelDB's rule): the record continuing into block 2 lost its
    # first chunk and is reported too; the next whole record is read
    assert [p for p, _ in parsed.records] == [b"d" * 100]
    assert parsed.consumed == len(data)


def test_final_fragment_tail_is_consumed_and_reported():
    data = write_log([b"x" * 100, b"y" * 50000])
    cut = data[:len(data) - 10]
    live = parse_records(cut[7:], 7)
    assert [p for p, _ in live.records] == [b"x" * 100] and not live.corrupt   # waits for the rest
    dead = parse_records(cut[7:], 7, final=True)
    assert dead.consumed == len(cut) and "unfinished record" in dead.corrupt[0][1]


def test_zero_bytes_at_the_end_are_waited_for_not_skipped():
    data = write_log([b"x" * 100]) + b"\0" * 200
    parsed = parse_records(data[7:], 7)
    assert parsed.consumed == 7 + 7 + 100 and not parsed.corrupt


def test_header_check():
    assert check_header(HEADER) is None
    assert "not a W&B" in check_header(b"PK\x03\x04abc")
    assert "version 1" in check_header(b":W&B\xe1\xbe\x01")


def test_record_kind_from_tags():
    # num=5 (field 1 varint), _info (200) before the oneof as wandb-core writes it, then history (2)
    info = bytes([0xC2, 0x0C, 3]) + b"\x0a\x01x"
    assert record_kind(b"\x08\x05" + info + b"\x12\x00") == "history"
    assert record_kind(b"\x08\x05\x3a\x00") == "stats"
    assert record_kind(b"\x08\x05\x92\x01\x00") == "exit"       # field 18
    assert record_kind(b"\x08\x05\x5a\x00") is None              # telemetry: not used
    assert record_kind(b"\x08") is None                          # truncated


@pytest.mark.parametrize("key, name, factor", [
    ("gpu.0.gpu", "gpu/0/utilization_percent", 1.0),
    ("gpu.3.memoryAllocatedBytes", "gpu/3/memory_used_bytes", 1.0),
    ("gpu.1.powerWatts", "gpu/1/power_w", 1.0),
    ("memory_percent", "memory/system_percent", 1.0),
    ("memory", "memory/system_percent", 1.0),
    ("proc.memory.rssMB", "memory/process_rss_bytes", 2.0 ** 20),
    ("disk./.usageGB", "disk/used_bytes", 2.0 ** 30),
    ("disk.\\.usagePercent", "disk/usage_percent", 1.0),
    ("disk./scratch.usagePercent", "disk/scratch/usage_percent", 1.0),
    ("disk.vda.in", "disk/vda/read_bytes", 2.0 ** 20),
    ("network.recv", "network/received_bytes", 1.0),
    ("cpu", "cpu/process_all_cores_percent", 1.0),
    ("something.new", "wandb/something.new", 1.0),
])
def test_system_keys_map_to_the_neutral_names_with_units(key, name, factor):
    assert system_key(key) == (name, factor)


def test_record_end_finds_where_each_record_ends_from_its_headers_alone_in_pieces():
    """How the reader steps over a record too long to read (over 64 MiB): the chunk headers, a piece at a
    time, give the same boundaries as parsing the records whole."""
    ps = payloads(30, seed=3) + [b"z" * 300_000, b"y"]
    data = write_log(ps)
    whole = parse_records(data[7:], 7)
    starts = [7] + [end for _, end in whole.records[:-1]]
    for start, (payload, end) in zip(starts, whole.records):
        assert record_end(data[start:], start) == (end, end)
        chunk = first_chunk(data[start:], start)
        assert chunk and payload.startswith(chunk)
        at, found = start, None
        while found is None:       # pieces over a block: every call stops at a chunk boundary and goes on
            found, reached = record_end(data[at:at + 40_000], at)
            assert found is not None or reached > at
            at = reached
        assert found == end
