"""The framing of W&B's ``.wandb`` files, and a cheap look at each record's kind (no wandb import here).

A ``.wandb`` file (docs/wandb.md, "The file format") is a 7-byte header (``:W&B``, magic 0xBEE1
little-endian, version 0) followed by LevelDB-log blocks of 32 KiB, counted from the start of the file
(the header sits in the first block). Each chunk is ``crc32 u32 LE | length u16 LE | type u8 | data``;
types FULL=1, FIRST=2, MIDDLE=3, LAST=4; a block tail shorter than a chunk header is zero padding. The CRC
is zlib's CRC-32 over the type byte then the data. A record is the data of one FULL chunk, or of a FIRST,
MIDDLEs and a LAST chunk joined; its payload is a protobuf ``wandb_internal_pb2.Record``.

:func:`parse_records` never consumes a partial record: a record whose LAST chunk has not arrived (the
writer is still writing, a torn tail, a file cut at a block boundary) is left for the next read, and the
offset it reports is always the start of a record (or a block boundary before one).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

__all__ = ["HEADER", "HEADER_LEN", "BLOCK", "ParsedRecords", "parse_records", "record_end", "first_chunk",
           "check_header", "record_kind", "KINDS"]

BLOCK = 32768
HEADER_LEN = 7
HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_CHUNK = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

#: Record field number -> kind, for the members of the ``record_type`` oneof this reader uses.
KINDS = {2: "history", 3: "summary", 5: "config", 6: "files", 7: "stats", 12: "metric", 17: "run", 18: "exit",
         21: "header", 26: "environment"}
#: Record fields outside the oneof (num, control, uuid, _info): skipped when looking for the kind.
_NOT_KIND = {1, 16, 19, 200}


def check_header(data: bytes) -> Optional[str]:
    """None when ``data`` (the file's first 7 bytes) is a .wandb header of version 0, else why not."""
    if len(data) < HEADER_LEN:
        return "shorter than its 7-byte header"
    if data[:4] != b":W&B" or data[4:6] != b"\xe1\xbe":
        return f"not a W&B .wandb file (header {data[:7]!r})"
    if data[6] != 0:
        return f"unknown .wandb version {data[6]} (known: 0)"
    return None


@dataclass
class ParsedRecords:
    records: List[Tuple[bytes, int]] = field(default_factory=list)   # (payload, file offset after it)
    consumed: int = 0            # file offset up to which everything was read (a record boundary)
    corrupt: List[Tuple[int, str]] = field(default_factory=list)     # (file offset, why): skipped


def parse_records(data: bytes, offset: int, final: bool = False) -> ParsedRecords:
    """The complete records in ``data``, which holds the file's bytes from ``offset`` (a record boundary,
    at or after the header). ``final``: the file will not grow (a later fragment exists), so a trailing
    partial record is reported as corrupt and consumed instead of waited for.

    A chunk with a wrong CRC, an impossible length or an unexpected type is reported and skipped (a
    record it was part of is dropped; reading resumes at the next block, as LevelDB's reader does)."""
    out = ParsedRecords(consumed=offset)
    pos = 0                      # index into data
    n = len(data)
    parts: List[bytes] = []
    rec_start = -1               # file offset where the record being assembled began
    while True:
        file_pos = offset + pos
        left_in_block = BLOCK - file_pos % BLOCK
        if left_in_block < HEADER_LEN:          # block tail: zero padding
            if pos + left_in_block > n:
                break
            pos += left_in_block
            if not parts:
                out.consumed = offset + pos
            continue
        if pos + HEADER_LEN > n:
            break
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0 and crc == 0:
            # Zeros where a chunk should start: padding to the end of the block, but only once data of a
            # later block shows it (a writer that extends the file before filling it would otherwise
            # have its next chunk skipped). Until then: wait.
            if pos + left_in_block >= n:
                break
            pos += left_in_block
            if not parts:
                out.consumed = offset + pos
            continue
        end = pos + HEADER_LEN + length
        bad = None
        if length > left_in_block - HEADER_LEN or kind not in (FULL, FIRST, MIDDLE, LAST):
            bad = f"bad chunk header (type {kind}, length {length})"
        elif end > n:
            break                               # the chunk is still being written
        else:
            chunk = data[pos + HEADER_LEN:end]
            if zlib.crc32(chunk, zlib.crc32(bytes((kind,)))) != crc:
                bad = "checksum mismatch"
        if bad is not None:
            # Skip the rest of the block (LevelDB's reader does the same), once the block is all there.
            if pos + left_in_block > n:
                break
            out.corrupt.append((file_pos, bad))
            parts, rec_start = [], -1
            pos += left_in_block
            out.consumed = offset + pos
            continue
        pos = end
        if kind == FULL:
            if parts:
                out.corrupt.append((rec_start, "a record without its last chunk"))
                parts = []
            out.records.append((chunk, offset + pos))
            out.consumed = offset + pos
        elif kind == FIRST:
            if parts:
                out.corrupt.append((rec_start, "a record without its last chunk"))
            parts, rec_start = [chunk], file_pos
        elif not parts:
            out.corrupt.append((file_pos, "a middle or last chunk without its first"))
            out.consumed = offset + pos
        elif kind == MIDDLE:
            parts.append(chunk)
        else:
            parts.append(chunk)
            out.records.append((b"".join(parts), offset + pos))
            parts, rec_start = [], -1
            out.consumed = offset + pos
    if final and out.consumed < offset + n:
        out.corrupt.append((out.consumed, f"{offset + n - out.consumed} bytes of an unfinished record at the "
                                          f"end of a fragment that will not grow"))
        out.consumed = offset + n
    return out


def record_end(data: bytes, offset: int) -> Tuple[Optional[int], int]:
    """Where the record starting at ``offset`` (a record boundary) ends, from its chunk headers alone (no
    checksum: this is for stepping over a record too long to read). ``data`` holds the file's bytes from
    ``offset``. Returns (the file offset after its last chunk, or None when ``data`` ends first; the offset
    up to which chunks were walked, a chunk boundary to call again from with the following bytes). A bad
    chunk header ends the record at the next block (the rest of the block is skipped, as parse_records does)."""
    pos, n = 0, len(data)
    while True:
        left_in_block = BLOCK - (offset + pos) % BLOCK
        if left_in_block < HEADER_LEN:          # block tail: zero padding
            if pos + left_in_block > n:
                return None, offset + pos
            pos += left_in_block
            continue
        if pos + HEADER_LEN > n:
            return None, offset + pos
        _, length, kind = _CHUNK.unpack_from(data, pos)
        if kind not in (FULL, FIRST, MIDDLE, LAST) or length > left_in_block - HEADER_LEN:
            if pos + left_in_block > n:
                return None, offset + pos
            return offset + pos + left_in_block, offset + pos + left_in_block
        if pos + HEADER_LEN + length > n:
            return None, offset + pos
        pos += HEADER_LEN + length
        if kind in (FULL, LAST):
            return offset + pos, offset + pos


def first_chunk(data: bytes, offset: int) -> bytes:
    """The data of the chunk at ``offset`` (a record boundary; a block tail of padding is passed over): the
    start of the record's payload, enough for :func:`record_kind`."""
    pos = BLOCK - offset % BLOCK if BLOCK - offset % BLOCK < HEADER_LEN else 0
    if pos + HEADER_LEN > len(data):
        return b""
    _, length, _ = _CHUNK.unpack_from(data, pos)
    return data[pos + HEADER_LEN:pos + HEADER_LEN + length]


def record_kind(payload: bytes) -> Optional[str]:
    """The kind of a serialized ``Record`` (``history``, ``stats``, ...) from its protobuf tags alone, or
    None for a kind this reader does not use. Writers put the oneof anywhere among the other fields
    (wandb-core writes ``_info`` first), so every field before it is skipped by its wire type."""
    # The common shapes first: ``num`` (a varint of 1-3 bytes) directly followed by the oneof's tag.
    if len(payload) > 4 and payload[0] == 0x08:
        for j in (2, 3, 4):
            if payload[j - 1] < 0x80:
                tag = payload[j]
                if tag < 0x80 and tag & 7 == 2 and (tag >> 3) not in _NOT_KIND:
                    return KINDS.get(tag >> 3)
                break
    i, n = 0, len(payload)
    try:
        while i < n:
            tag, i = _varint(payload, i)
            number, wire = tag >> 3, tag & 7
            if number not in _NOT_KIND:
                return KINDS.get(number)
            if wire == 0:
                _, i = _varint(payload, i)
            elif wire == 2:
                length, i = _varint(payload, i)
                i += length
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                return None
    except IndexError:
        return None
    return None


def _varint(b: bytes, i: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7

