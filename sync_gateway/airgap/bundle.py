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
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Tuple

from sync_gateway.errors import BundleError

__all__ = ["BundleWriter", "Manifest", "Entry", "verify", "verify_file", "pieces", "check_path", "bundle_name",
           "FORMAT", "VERSION", "KINDS", "OVERHEAD_BYTES", "ENTRY_OVERHEAD_BYTES"]

FORMAT = "hpc-sync-bundle"
VERSION = "1.0"             # major.minor: a reader refuses another major version
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
_EXPORT_ID = re.compile(r"[0-9a-f]{8,64}")
_ROOT_ID = re.compile(r"r[0-9a-f]{4,64}")


def bundle_name(export_id: str, seq: int) -> str:
    return f"hpcsync-{export_id}-{seq:08d}.bundle"


def check_path(path: Any, roots: Optional[Dict[str, str]] = None) -> str:
    """``<root id>/<path below the root>``, or BundleError: no absolute path, no ``..``/``.``/empty part,
    no NUL or backslash, a root id the manifest names."""
    if not isinstance(path, str) or not path or len(path) > 4096:
        raise BundleError(f"entry path {path!r} is not a path")
    parts = path.split("/")
    if "\x00" in path or "\\" in path or path.startswith("/") or len(parts) < 2 \
            or any(p in ("", ".", "..") for p in parts):
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

    def add(self, path: str, kind: str, offset: int, mtime_ns: int, chunks: Iterator[bytes]) -> Tuple[int, bytes]:
        """One entry from ``chunks`` (its bytes, in order); returns its length and its last bytes (up to
        64 KiB, for the export cursor's fingerprint)."""
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
        self.entries.append({"path": path, "kind": kind, "offset": offset, "length": n, "sha256": h.hexdigest(),
                             "mtime_ns": mtime_ns})
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


def _manifest(name: str, f: BinaryIO) -> Manifest:
    """Check the frame and the whole-file digest; parse and check the manifest (not yet the entries' bytes)."""
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
    f.seek(len(HEAD) + payload_bytes)
    try:
        doc = json.loads(f.read(manifest_bytes))
    except ValueError as e:
        raise BundleError(f"{name}: its manifest is not JSON ({e}): refused") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{name}: not an hpc-sync bundle manifest: refused")
    version = str(doc.get("version", ""))
    if version.split(".")[0] != VERSION.split(".")[0]:
        raise BundleError(f"{name}: bundle format version {version} is not supported by this gateway (it reads "
                          f"{VERSION.split('.')[0]}.x): refused; install the hpc-sync version of the export side")
    export_id, roots, raw = doc.get("export_id"), doc.get("roots"), doc.get("entries")
    if not isinstance(export_id, str) or not _EXPORT_ID.fullmatch(export_id):
        raise BundleError(f"{name}: export id {export_id!r} is not valid: refused")
    if not isinstance(roots, dict) or not all(isinstance(k, str) and _ROOT_ID.fullmatch(k) and isinstance(v, str)
                                              for k, v in roots.items()):
        raise BundleError(f"{name}: its roots are not valid: refused")
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise BundleError(f"{name}: its entries are not a list: refused")
    entries = []
    for i, doc_e in enumerate(raw):
        where = f"{name}: entry {i}"
        kind, sha = doc_e.get("kind"), doc_e.get("sha256")
        if kind not in KINDS or not isinstance(sha, str) or len(sha) != 64:
            raise BundleError(f"{where}: kind {kind!r} or sha256 is not valid: refused")
        entry = Entry(check_path(doc_e.get("path"), roots), kind, _int(doc_e, "offset", where),
                      _int(doc_e, "length", where), sha, _int(doc_e, "mtime_ns", where))
        if kind == "replace" and entry.offset:
            raise BundleError(f"{where}: a replace entry starts at 0, not {entry.offset}: refused")
        entries.append(entry)
    if len({e.path for e in entries}) != len(entries):
        raise BundleError(f"{name}: a path appears twice: refused")
    seq = _int(doc, "seq", name)
    if seq < 1:
        raise BundleError(f"{name}: sequence number {seq} is not valid: refused")
    return Manifest(export_id, seq, _int(doc, "created_ms", name), str(doc.get("host", "")),
                    {str(k): str(v) for k, v in roots.items()}, tuple(entries), version, whole.hexdigest(), size,
                    len(HEAD), payload_bytes)


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


def verify_file(f: BinaryIO, name: str) -> Manifest:
    """Every check before anything is applied: frame, whole-file digest, manifest, paths, each entry's length
    and digest. Raises BundleError with one line that names the bundle."""
    m = _manifest(name, f)
    hashes = [hashlib.sha256() for _ in m.entries]
    for i, data in pieces(f, m, name):
        hashes[i].update(data)
    for e, h in zip(m.entries, hashes):
        if h.hexdigest() != e.sha256:
            raise BundleError(f"{name}: entry {e.path} does not match its checksum: refused, nothing applied")
    return m


def verify(path: str) -> Manifest:
    """:func:`verify_file` of the bundle at ``path``."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            return verify_file(f, name)
    except OSError as e:
        raise BundleError(f"{name}: cannot read it: {e.strerror or e}") from None
