"""Code capture (git commit, branch, remote, dirty flag, diff.patch) and ``hpc restore``.

Capture runs on the writer thread with bounded subprocess calls, so a slow or huge repository never
delays ``hpc.init`` or training.
"""
from __future__ import annotations

import fnmatch
import os
import subprocess
from typing import Dict, Optional, Sequence, Tuple

__all__ = ["capture_git", "restore", "ignored"]

_GIT_TIMEOUT_S = 20.0


def ignored(relpath: str, globs: Sequence[str]) -> bool:
    """True when a path (relative, '/'-separated) or its basename matches one of the ignore globs."""
    base = relpath.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(relpath, g) or fnmatch.fnmatch(base, g) for g in globs)


def _git(cwd: str, *args: str, timeout_s: float = _GIT_TIMEOUT_S) -> Optional[str]:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, timeout=timeout_s,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")


def capture_git(cwd: str, ignore_globs: Sequence[str]) -> Tuple[Optional[Dict[str, object]], str]:
    """(git metadata or None when cwd is not in a work tree, diff of the working tree against HEAD)."""
    top = _git(cwd, "rev-parse", "--show-toplevel")
    if top is None:
        return None, ""
    top = top.strip()
    commit = (_git(top, "rev-parse", "HEAD") or "").strip() or None
    branch = (_git(top, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    remote = (_git(top, "config", "--get", "remote.origin.url") or "").strip() or None
    status = _git(top, "status", "--porcelain", "--untracked-files=no") or ""
    pathspec = ["--", "."] + [f":(exclude,glob)**/{g}" for g in ignore_globs] if ignore_globs else []
    diff = (_git(top, "diff", "--binary", "HEAD", *pathspec) or "") if commit else ""
    meta: Dict[str, object] = {"commit": commit, "branch": branch, "remote": remote,
                               "dirty": bool(status.strip()), "root": top}
    return meta, diff


class RestoreError(RuntimeError):
    pass


def restore(repo: str, commit: str, patch_path: Optional[str]) -> str:
    """Check out ``commit`` in ``repo`` (detached) and apply the run's patch; refuse a dirty work tree."""
    if _git(repo, "rev-parse", "--show-toplevel") is None:
        raise RestoreError(f"{repo} is not a git work tree: clone the project there first")
    if (_git(repo, "status", "--porcelain", "--untracked-files=no") or "").strip():
        raise RestoreError(f"{repo} has uncommitted changes: commit or stash them first")
    if _git(repo, "cat-file", "-e", f"{commit}^{{commit}}") is None:
        raise RestoreError(f"commit {commit} is not in {repo}: run `git fetch` there first")
    if _git(repo, "checkout", "--detach", commit) is None:
        raise RestoreError(f"git checkout {commit} failed in {repo}")
    if patch_path and os.path.getsize(patch_path) > 0:
        done = subprocess.run(["git", "apply", "--binary", patch_path], cwd=repo, capture_output=True)
        if done.returncode != 0:
            raise RestoreError(f"git apply failed: {done.stderr.decode(errors='replace').strip()}")
        return f"checked out {commit[:12]} and applied {patch_path}"
    return f"checked out {commit[:12]} (the run had no uncommitted changes)"
