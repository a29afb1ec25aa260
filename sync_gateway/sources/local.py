"""A root on a local or network-mounted file system (NFS, Lustre, GPFS).

Never follows a link out of the root: every directory and file is checked with ``lstat``, and a link is
accepted only when its ``realpath`` stays below the root's ``realpath``. A link pointing out is reported
once (logged) and skipped.
"""
from __future__ import annotations

import logging
import os
import stat as st
from typing import Dict, List, Optional, Sequence, Set

from sync_gateway.errors import SourceError
from sync_gateway.records import FileStat, RunRef
from sync_gateway.sources.base import DirEntry, DirListing, Source

__all__ = ["LocalSource"]

log = logging.getLogger(__name__)


class LocalSource(Source):
    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.display = self.root
        self._real_root = os.path.realpath(self.root)
        self._reported: Set[str] = set()
        #: Paths skipped because a link left the root (for ``status`` and tests).
        self.escapes: Set[str] = set()

    # -- containment -------------------------------------------------------------------------
    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self._real_root or real.startswith(self._real_root + os.sep)

    def _escape(self, path: str) -> None:
        self.escapes.add(path)
        if path not in self._reported:
            self._reported.add(path)
            log.warning("%s is a link pointing out of the root %s: skipped (links out of a root are "
                        "never followed)", path, self.root)

    def _checked(self, path: str, is_link: bool) -> bool:
        if is_link and not self._inside(path):
            self._escape(path)
            return False
        return True

    # -- Source ------------------------------------------------------------------------------
    def list_dirs(self, dirs: Sequence[str]) -> Dict[str, Optional[DirListing]]:
        out: Dict[str, Optional[DirListing]] = {}
        for rel in dirs:
            path = os.path.join(self.root, *[p for p in rel.split("/") if p]) if rel else self.root
            if ".." in rel.split("/"):
                out[rel] = None
                continue
            try:
                listing = list(os.scandir(path))
            except OSError:
                out[rel] = None
                continue
            entries: List[DirEntry] = []
            for e in listing:
                if e.name.startswith(".tmp-"):
                    continue
                try:
                    if not e.is_symlink():   # the listing's file type: no stat call
                        is_dir = e.is_dir()
                        if is_dir or e.is_file():
                            entries.append(DirEntry(e.name, is_dir, None))
                        continue
                except OSError:
                    continue
                s = self._stat(e.path, e.is_symlink())
                if s is not None and (st.S_ISDIR(s.st_mode) or st.S_ISREG(s.st_mode)):
                    entries.append(DirEntry(e.name, st.S_ISDIR(s.st_mode), FileStat(s.st_size, s.st_mtime_ns)))
            out[rel] = DirListing(path, entries)
        return out

    def stat_files(self, paths: Sequence[str]) -> Dict[str, Optional[FileStat]]:
        out: Dict[str, Optional[FileStat]] = {}
        base = self.root.rstrip(os.sep) + os.sep
        for rel in paths:
            if not rel or ".." in rel.split("/"):
                out[rel] = None
                continue
            try:
                s = os.lstat(base + rel.replace("/", os.sep))   # one system call; a link is not followed
            except OSError:
                out[rel] = None
                continue
            out[rel] = FileStat(s.st_size, s.st_mtime_ns) if st.S_ISREG(s.st_mode) else None
        return out

    def scan(self, run: RunRef) -> Dict[str, FileStat]:
        try:
            entries = list(os.scandir(run.location))
        except OSError as e:
            raise SourceError(self.display, run.key, f"cannot list the run: {e.strerror}") from e
        out: Dict[str, FileStat] = {}
        for entry in entries:
            if entry.name.startswith(".tmp-"):
                continue
            s = self._stat(entry.path, entry.is_symlink())
            if s is not None and st.S_ISREG(s.st_mode):
                out[entry.name] = FileStat(s.st_size, s.st_mtime_ns)
        return out

    def _stat(self, path: str, is_link: bool) -> Optional[os.stat_result]:
        if not self._checked(path, is_link):
            return None
        try:
            return os.stat(path)
        except OSError:
            return None

    def walk(self, run: RunRef, subdir: str) -> Dict[str, FileStat]:
        top = os.path.join(run.location, subdir)
        out: Dict[str, FileStat] = {}
        try:
            top_st = os.lstat(top)  # one system call for the common case: the directory does not exist
        except OSError:
            return out
        if not self._checked(top, st.S_ISLNK(top_st.st_mode)) or not os.path.isdir(top):
            return out
        # os.walk does not descend into linked directories (followlinks=False); linked files are checked.
        for d, dirs, files in os.walk(top):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                path = os.path.join(d, name)
                s = self._stat(path, os.path.islink(path))
                if s is not None and st.S_ISREG(s.st_mode):
                    rel = os.path.relpath(path, run.location).replace(os.sep, "/")
                    out[rel] = FileStat(s.st_size, s.st_mtime_ns)
            for name in list(dirs):
                if os.path.islink(os.path.join(d, name)):
                    dirs.remove(name)
        return out

    def relative(self, location: str) -> Optional[str]:
        rel = os.path.relpath(os.path.abspath(location), self.root)
        if rel == ".":
            return ""
        if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
            return None
        return rel.replace(os.sep, "/")

    def _open_path(self, run: RunRef, name: str) -> Optional[str]:
        path = os.path.join(run.location, *name.split("/"))
        if ".." in name.split("/") or not self._inside(path):
            self._escape(path)
            return None
        return path

    def read_range(self, run: RunRef, name: str, offset: int, length: int) -> bytes:
        path = self._open_path(run, name)
        if path is None:
            raise SourceError(self.display, f"{run.key}/{name}", "links out of the root; not read")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except OSError as e:
            raise SourceError(self.display, f"{run.key}/{name}", e.strerror or str(e)) from e

    def read_document(self, run: RunRef, name: str) -> Optional[bytes]:
        path = self._open_path(run, name)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SourceError(self.display, f"{run.key}/{name}", e.strerror or str(e)) from e
