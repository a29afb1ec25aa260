"""The air-gap bundle file (docs/airgap.md, "The bundle format"): byte ranges of run-format files, one file.

Layout, in this order::

    b"HPCSYNCB"                      8 bytes, the head magic
    payload                          zlib stream of every entry's bytes, concatenated in manifest order
    manifest                         UTF-8 JSON (format, version, export_id, seq, created_ms, host, roots,
                                     entries: path, kind, offset, length, sha256, mtime_ns)
    payload length, manifest length  2 x 8 bytes, big-endian
    sha256                           32 bytes: the digest of everything before it
    b"HPCSYNCE"                      8 bytes, the tail magic

The manifest comes after the payload so a bundle is written in one streaming pass (an entry's digest is
known only once its bytes went through). A reader checks the whole-file digest, then every entry's digest
and every path, before anything is applied (:func:`verify`); only then does it read the entries again
(:func:`pieces`). Everything is the standard library: ``sha256sum`` and ``python -m zlib`` suffice to take
one apart by hand.

A reader bounds what a bundle may make it do (:class:`Limits`, from ``bundle_max_entries`` and
``bundle_max_bytes``): the manifest's size and number of JSON containers are checked on the raw bytes before
it is parsed (memory), the data its entries unpack to before a byte is written (disk), every offset by what
its kind can mean, every name and the capture time before anything prints or stores them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Tuple

from sync_gateway.errors import BundleError
from sync_gateway.records import name_problem, shown

__all__ = ["BundleWriter", "Manifest", "Entry", "Limits", "verify", "verify_file", "open_bundle", "trailer_digest",
           "pieces", "check_path", "bundle_name", "entry_manifest_cost", "FORMAT", "VERSION", "KINDS",
           "OVERHEAD_BYTES", "ENTRY_OVERHEAD_BYTES", "MIN_CREATED_MS", "MAX_CREATED_MS"]

FORMAT = "hpc-sync-bundle"
VERSION = "1.1"             # major.minor: a reader refuses another major version (1.1: append's "truncate")
HEAD = b"HPCSYNCB"
TAIL = b"HPCSYNCE"
_LENGTHS = struct.Struct(">QQ")
_TRAILER_BYTES = _LENGTHS.size + 32 + len(TAIL)
#: what a bundle holds besides its entries' compressed bytes and their manifest lines (head, trailer,
#: manifest header), and a bound on one entry's manifest line plus zlib's framing of its bytes
OVERHEAD_BYTES = 4096
ENTRY_OVERHEAD_BYTES = 1024
#: append: write ``length`` bytes at ``offset`` (the file grew). replace: the whole new file (offset 0),
#: put in place by rename. reset: the file's new content starts here (truncate, write at 0); later
#: bundles append the rest of a file too large for one bundle.
KINDS = ("append", "replace", "reset")
PIECE_BYTES = 1 << 20       # memory bound when reading and writing entries
#: a capture time outside these (2000-01-01 .. 9999-12-31) is no clock reading: refused
MIN_CREATED_MS = 946_684_800_000
MAX_CREATED_MS = 253_402_300_799_999
#: the manifest a reader accepts: this much for its head, and MANIFEST_ENTRY_BYTES per entry allowed
MANIFEST_BASE_BYTES = 64 << 10
MANIFEST_ENTRY_BYTES = 400
_EXPORT_ID = re.compile(r"[0-9a-f]{8,64}")
_ROOT_ID = re.compile(r"r[0-9a-f]{4,64}")


def bundle_name(export_id: str, seq: int) -> str:
    return f"hpcsync-{export_id}-{seq:08d}.bundle"


@dataclass(frozen=True)
class Limits:
    """What one bundle may hold, on either side: ``max_entries`` (``bundle_max_entries``; bounds the
    manifest's bytes and JSON containers, hence memory) and ``max_data_bytes`` (``bundle_max_bytes``: what
    its entries may unpack to; export never puts more data into a bundle than that)."""

    max_entries: int = 10_000
    max_data_bytes: int = 256 << 20

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(settings.bundle_max_entries, settings.bundle_max_bytes)

    @property
    def manifest_bytes(self) -> int:
        return MANIFEST_BASE_BYTES + MANIFEST_ENTRY_BYTES * self.max_entries

    @property
    def containers(self) -> int:
        """JSON objects and arrays: one per entry, 3 for the head (object, roots, entries), some slack."""
        return self.max_entries + 64


def entry_manifest_cost(path: str) -> Tuple[int, int]:
    """An upper bound of ``(bytes, JSON containers)`` an entry with ``path`` adds to a manifest (the
    fields besides the path: under 260 bytes with 20-digit numbers and ``truncate``)."""
    enc = json.dumps(path)
    return 260 + len(enc), 1 + enc.count("{") + enc.count("[")


def check_path(path: Any, roots: Optional[Dict[str, str]] = None) -> str:
    """``<root id>/<path below the root>``, or BundleError: no absolute path, no ``..``/``.``/empty part,
    no NUL or backslash, a root id the manifest names."""
    if not isinstance(path, str) or not path or len(path) > 4096:
        raise BundleError(f"entry path {ascii(path)[:200]} is not a path")
    problem = name_problem(path)
    if problem:   # printed by verify and status, stored in the mirror: ONE rule with the readers (records.py)
        raise BundleError(f"entry path {shown(path)} {problem}: refused")
    parts = path.split("/")
    if path.startswith("/") or len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        raise BundleError(f"entry path {path!r} is not a plain relative path below a root: refused")
    if not _ROOT_ID.fullmatch(parts[0]) or (roots is not None and parts[0] not in roots):
        raise BundleError(f"entry path {path!r} does not start with a root id the bundle names: refused")
    return path


@dataclass(frozen=True)
class Entry:
    path: str
    kind: str
    offset: int
    length: int
    sha256: str
    mtime_ns: int
    truncate: bool = False  # append only: the file ends here (cut what a mirror holds beyond it)


@dataclass(frozen=True)
class Manifest:
    export_id: str
    seq: int
    created_ms: int
    host: str
    roots: Dict[str, str]
    entries: Tuple[Entry, ...]
    version: str
    sha256: str            # the whole file's digest (as sha256sum prints it)
    size_bytes: int        # the bundle file's size
    payload_offset: int
    payload_bytes: int     # compressed
    digest: str = ""       # the trailer's digest (hex): names the content from 48 bytes at the file's end

    @property
    def name(self) -> str:
        return bundle_name(self.export_id, self.seq)

    @property
    def data_bytes(self) -> int:
        return sum(e.length for e in self.entries)


class BundleWriter:
    """Writes one bundle to ``f`` in one pass: ``add()`` each entry's bytes, then ``finish()``."""

    def __init__(self, f: BinaryIO, export_id: str, seq: int, created_ms: int, host: str, roots: Dict[str, str]):
        self.f = f
        self.hash = hashlib.sha256()
        self.z = zlib.compressobj(6)
        self.roots = dict(roots)
        self.head: Dict[str, Any] = {"format": FORMAT, "version": VERSION, "export_id": export_id, "seq": seq,
                     "created_ms": created_ms, "host": host, "roots": dict(roots)}
        self.entries: List[Dict[str, Any]] = []
        self.payload_bytes = 0
        self._put(HEAD)

    def _put(self, data: bytes) -> None:
        self.hash.update(data)
        self.f.write(data)

    def _payload(self, data: bytes) -> None:
        if data:
            self.payload_bytes += len(data)
            self._put(data)

    @property
    def size_bytes(self) -> int:
        """The bytes written so far (the compressor may still hold some)."""
        return len(HEAD) + self.payload_bytes

    def add(self, path: str, kind: str, offset: int, mtime_ns: int, chunks: Iterator[bytes],
            truncate: bool = False) -> Tuple[int, bytes]:
        """One entry from ``chunks`` (its bytes, in order); returns its length and its last bytes (up to
        64 KiB, for the export cursor's fingerprint). ``truncate`` (append only): the file ends after it."""
        check_path(path, self.roots)
        assert kind in KINDS
        h = hashlib.sha256()
        n = 0
        tail = b""
        for data in chunks:
            h.update(data)
            n += len(data)
            tail = (tail + data)[-(64 << 10):]
            self._payload(self.z.compress(data))
        doc = {"path": path, "kind": kind, "offset": offset, "length": n, "sha256": h.hexdigest(), "mtime_ns": mtime_ns}
        if truncate and kind == "append":
            doc["truncate"] = True
        self.entries.append(doc)
        return n, tail

    def finish(self) -> str:
        """Flush the payload, write manifest and trailer; returns the whole file's sha256 (hex), the one
        ``sha256sum`` prints (the trailer holds the digest of everything before the trailer's digest)."""
        self._payload(self.z.flush())
        manifest = json.dumps(dict(self.head, entries=self.entries), separators=(",", ":")).encode()
        self._put(manifest)
        self._put(_LENGTHS.pack(self.payload_bytes, len(manifest)))
        digest = self.hash.digest()
        self.f.write(digest + TAIL)
        whole = self.hash.copy()
        whole.update(digest + TAIL)
        return whole.hexdigest()


def _int(doc: Dict[str, Any], key: str, where: str) -> int:
    v = doc.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise BundleError(f"{where}: {key} {v!r} is not a non-negative integer")
    return v


def _frame(name: str, f: BinaryIO, limits: Limits) -> Tuple[int, int, int, bytes, str]:
    """Check the frame, the manifest's size and the whole-file digest: ``(size, payload bytes, manifest
    bytes, trailer digest, whole-file sha256 hex)``."""
    size = os.fstat(f.fileno()).st_size
    if size < len(HEAD) + _TRAILER_BYTES:
        raise BundleError(f"{name}: {size} bytes is too short for a bundle (truncated in transfer?): refused; "
                          f"copy it again from the export side")
    if f.read(len(HEAD)) != HEAD:
        raise BundleError(f"{name}: not an hpc-sync bundle (no {HEAD.decode()} at its start): refused")
    f.seek(size - _TRAILER_BYTES)
    trailer = f.read(_TRAILER_BYTES)
    payload_bytes, manifest_bytes = _LENGTHS.unpack(trailer[:_LENGTHS.size])
    digest, tail = trailer[_LENGTHS.size:_LENGTHS.size + 32], trailer[-len(TAIL):]
    if tail != TAIL or len(HEAD) + payload_bytes + manifest_bytes + _TRAILER_BYTES != size:
        raise BundleError(f"{name}: truncated or damaged (its trailer does not match its size of {size} bytes): "
                          f"refused, nothing applied; copy it again from the export side")
    if manifest_bytes > limits.manifest_bytes:   # before a byte of it is read: memory stays bounded
        raise BundleError(f"{name}: its manifest is {manifest_bytes:,} bytes, more than the {limits.manifest_bytes:,} "
                          f"that bundle_max_entries {limits.max_entries:,} allows: refused; if the export side "
                          f"has a higher bundle_max_entries, set the same here (about 1 KiB of memory per entry)")
    h = hashlib.sha256()
    f.seek(0)
    left = size - 32 - len(TAIL)
    while left:
        data = f.read(min(PIECE_BYTES, left))
        if not data:
            break
        h.update(data)
        left -= len(data)
    whole = h.copy()
    whole.update(digest + TAIL)
    if h.digest() != digest:
        raise BundleError(f"{name}: checksum mismatch (the file was damaged in transfer): refused, nothing "
                          f"applied; copy it again from the export side")
    return size, payload_bytes, manifest_bytes, digest, whole.hexdigest()


def _parse(name: str, raw: bytes, limits: Limits) -> Dict[str, Any]:
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > limits.containers:   # counted on the bytes: 1 MB of "{}," would be 20 MB parsed
        raise BundleError(f"{name}: its manifest holds {containers:,} JSON objects or lists, more than "
                          f"bundle_max_entries {limits.max_entries:,} allows: refused; if the export side has "
                          f"a higher bundle_max_entries, set the same here")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:   # RecursionError: nested deeper than the parser's stack
        why = "nested too deep" if isinstance(e, RecursionError) else str(e)
        raise BundleError(f"{name}: its manifest is not JSON ({why}): refused") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{name}: not an hpc-sync bundle manifest: refused")
    version = str(doc.get("version", ""))
    if version.split(".")[0] != VERSION.split(".")[0]:
        raise BundleError(f"{name}: bundle format version {shown(version)[:40]} is not supported by this gateway "
                          f"(it reads {VERSION.split('.')[0]}.x): refused; install the hpc-sync version of the "
                          f"export side")
    return doc


def _text(doc: Dict[str, Any], key: str, name: str) -> str:
    v = doc.get(key, "")
    if not isinstance(v, str) or len(v) > 4096 or name_problem(v):
        raise BundleError(f"{name}: its {key} {ascii(v)[:200]} is not a printable name: refused")
    return v


def _entries(name: str, raw: List[Dict[str, Any]], roots: Dict[str, str], limits: Limits) -> List[Entry]:
    if len(raw) > limits.max_entries:
        raise BundleError(f"{name}: {len(raw):,} entries, more than bundle_max_entries {limits.max_entries:,}: "
                          f"refused; if the export side has a higher bundle_max_entries, set the same here")
    entries = []
    data_bytes = 0
    for i, doc_e in enumerate(raw):
        where = f"{name}: entry {i}"
        kind, sha, trunc = doc_e.get("kind"), doc_e.get("sha256"), doc_e.get("truncate", False)
        if kind not in KINDS or not isinstance(sha, str) or len(sha) != 64 or not isinstance(trunc, bool):
            raise BundleError(f"{where}: kind {ascii(kind)[:40]}, sha256 or truncate is not valid: refused")
        entry = Entry(check_path(doc_e.get("path"), roots), kind, _int(doc_e, "offset", where),
                      _int(doc_e, "length", where), sha, _int(doc_e, "mtime_ns", where), trunc and kind == "append")
        if kind != "append" and entry.offset:   # a reset truncates and writes from 0, as a replace does
            raise BundleError(f"{where}: a {kind} entry starts at 0, not {entry.offset}: refused")
        data_bytes += entry.length
        if data_bytes > limits.max_data_bytes:   # before a byte is written: a 2 MB bundle of zeros is no 2 GiB
            raise BundleError(f"{name}: its entries unpack to more than bundle_max_bytes {limits.max_data_bytes:,} "
                              f"bytes: refused; if the export side has a higher bundle_max_bytes, set the same here")
        entries.append(entry)
    if len({e.path for e in entries}) != len(entries):
        raise BundleError(f"{name}: a path appears twice: refused")
    return entries


def _manifest(name: str, f: BinaryIO, limits: Limits) -> Manifest:
    """Check the frame and the whole-file digest; parse and check the manifest (not yet the entries' bytes)."""
    size, payload_bytes, manifest_bytes, digest, whole = _frame(name, f, limits)
    f.seek(len(HEAD) + payload_bytes)
    doc = _parse(name, f.read(manifest_bytes), limits)
    export_id, roots, raw = doc.get("export_id"), doc.get("roots"), doc.get("entries")
    if not isinstance(export_id, str) or not _EXPORT_ID.fullmatch(export_id):
        raise BundleError(f"{name}: export id {ascii(export_id)[:80]} is not valid: refused")
    if not isinstance(roots, dict) or not all(isinstance(k, str) and _ROOT_ID.fullmatch(k) and isinstance(v, str)
                                              and len(v) <= 4096 and not name_problem(v) for k, v in roots.items()):
        raise BundleError(f"{name}: its roots are not valid (root ids and printable names): refused")
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise BundleError(f"{name}: its entries are not a list: refused")
    host = _text(doc, "host", name)
    entries = _entries(name, raw, roots, limits)
    seq = _int(doc, "seq", name)
    if seq < 1:
        raise BundleError(f"{name}: sequence number {seq} is not valid: refused")
    created_ms = doc.get("created_ms")
    if not isinstance(created_ms, int) or isinstance(created_ms, bool) \
            or not MIN_CREATED_MS <= created_ms <= MAX_CREATED_MS:
        raise BundleError(f"{name}: created_ms {ascii(created_ms)[:40]} is no time between 2000 and 9999: refused; "
                          f"check the export side's clock")
    return Manifest(export_id, seq, created_ms, host, dict(roots), tuple(entries), version=str(doc.get("version")),
                    sha256=whole, size_bytes=size, payload_offset=len(HEAD), payload_bytes=payload_bytes,
                    digest=digest.hex())


class _Inflater:
    """The payload's decompressed bytes, read in bounded pieces."""

    def __init__(self, f: BinaryIO, m: Manifest):
        f.seek(m.payload_offset)
        self.f, self.left, self.z, self.buf = f, m.payload_bytes, zlib.decompressobj(), b""

    def read(self, n: int) -> bytes:
        while not self.buf:
            if self.z.unconsumed_tail:
                self.buf = self.z.decompress(self.z.unconsumed_tail, PIECE_BYTES)
            elif self.left:
                data = self.f.read(min(PIECE_BYTES, self.left))
                if not data:
                    return b""
                self.left -= len(data)
                self.buf = self.z.decompress(data, PIECE_BYTES)
            else:
                return b""
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def pieces(f: BinaryIO, m: Manifest, name: str) -> Iterator[Tuple[int, bytes]]:
    """``(entry index, bytes)`` in order, at most PIECE_BYTES at a time (an empty entry once, with b"");
    BundleError if the payload does not hold exactly the entries' bytes."""
    src = _Inflater(f, m)
    try:
        for i, e in enumerate(m.entries):
            left = e.length
            if not left:
                yield i, b""
            while left:
                data = src.read(min(PIECE_BYTES, left))
                if not data:
                    raise BundleError(f"{name}: its payload holds fewer bytes than its entries: refused")
                left -= len(data)
                yield i, data
        if src.read(1) or not src.z.eof or src.z.unused_data:
            raise BundleError(f"{name}: its payload holds more bytes than its entries: refused")
    except zlib.error as e:
        raise BundleError(f"{name}: its payload does not decompress ({e}): refused") from None


def verify_file(f: BinaryIO, name: str, limits: Limits = Limits()) -> Manifest:
    """Every check before anything is applied: frame, whole-file digest, manifest, paths, bounds, each
    entry's length and digest. Raises BundleError with one line that names the bundle."""
    m = _manifest(name, f, limits)
    h, at = hashlib.sha256(), 0   # the pieces come in entry order: one running digest at a time
    for i, data in pieces(f, m, name):
        if i != at:
            _check_entry(m, at, h, name)
            h, at = hashlib.sha256(), i
        h.update(data)
    if m.entries:
        _check_entry(m, at, h, name)
    return m


def _check_entry(m: Manifest, i: int, h: Any, name: str) -> None:
    e = m.entries[i]
    if h.hexdigest() != e.sha256:
        raise BundleError(f"{name}: entry {e.path} does not match its checksum: refused, nothing applied")


def open_bundle(path: str) -> BinaryIO:
    """The bundle at ``path`` opened for reading, or BundleError when it is anything but a regular file.

    ``stat`` first, so nothing else is ever opened (opening a FIFO blocks until a writer comes; a tape
    device rewinds); then ``open(O_NONBLOCK)`` and ``fstat`` of the descriptor itself, so a file swapped
    for a FIFO between the two cannot block either (O_NONBLOCK makes the open of a FIFO return at once;
    on a regular file it changes nothing). A symbolic link to a regular file is followed, as any reader
    would."""
    name = os.path.basename(path)
    problem = name_problem(name)
    if problem:
        raise BundleError(f"{shown(name)}: its file name {problem}: refused; rename it "
                          f"to the hpcsync-<export id>-<sequence>.bundle it was written as")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise BundleError(f"{name}: not a regular file (a FIFO, a device or a directory): refused")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise BundleError(f"{name}: cannot read it: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{name}: not a regular file (a FIFO, a device or a directory): refused")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def trailer_digest(path: str) -> Optional[str]:
    """The digest in the bundle's trailer (hex): 48 bytes read, no checksum checked. It names the content:
    a bundle whose trailer digest equals that of a bundle imported before is that bundle (or a damaged copy
    of it: either way nothing of it is needed). None when it is not framed as a bundle."""
    try:
        with open_bundle(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size < len(HEAD) + _TRAILER_BYTES:
                return None
            f.seek(size - _TRAILER_BYTES + _LENGTHS.size)
            data = f.read(32 + len(TAIL))
    except (BundleError, OSError):
        return None
    return data[:32].hex() if data[32:] == TAIL else None


def verify(path: str, limits: Limits = Limits()) -> Manifest:
    """:func:`verify_file` of the bundle at ``path`` (only a regular file: :func:`open_bundle`)."""
    name = os.path.basename(path)
    with open_bundle(path) as f:
        try:
            return verify_file(f, name, limits)
        except OSError as e:
            raise BundleError(f"{name}: cannot read it: {e.strerror or e}") from None
