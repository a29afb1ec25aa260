"""Discovery is the readers' (readers/hpc/discovery.py, readers/wandb/discovery.py), on the source's
transport calls only (list_dirs, stat_files): what is a run and what is not, on a local root."""
from __future__ import annotations

import os

import pytest

from sync_gateway.errors import SourceError
from sync_gateway.readers import discover_hpc, discover_runs
from sync_gateway.sources.local import LocalSource


def _run(root, project, run_id):
    d = os.path.join(root, project, run_id)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "run.json"), "w") as f:
        f.write("{}")
    return d


def test_what_is_an_hpc_run_and_what_is_not(tmp_path):
    root, outside = str(tmp_path / "root"), str(tmp_path / "outside")
    good = _run(root, "p", "r1")
    _run(root, "p", "bad name")                          # outside docs/run-format.md section 1's names
    _run(root, ".hidden", "r2")
    _run(root, "p", ".tmp-r3")
    os.makedirs(os.path.join(root, "p", "no-run-json"))
    linked_json = os.path.join(root, "p", "linked-json")
    os.makedirs(linked_json)
    os.symlink(os.path.join(good, "run.json"), os.path.join(linked_json, "run.json"))   # a link: not a run
    os.makedirs(os.path.join(root, "p", "dir-json", "run.json"))                       # not a regular file
    with open(os.path.join(root, "p", "notes.txt"), "w") as f:
        f.write("a file, not a run")
    away = _run(outside, "q", "secret")
    os.symlink(away, os.path.join(root, "p", "escape"))                  # a run directory leading out
    os.symlink(os.path.join(outside, "q"), os.path.join(root, "escproj"))   # a project leading out
    os.symlink(os.path.join(root, "p"), os.path.join(root, "alias"))        # a project link inside: followed
    src = LocalSource(root)
    found = sorted((r.project, r.run_id, r.location) for r in discover_hpc(src))
    assert found == [("alias", "r1", os.path.join(root, "alias", "r1")), ("p", "r1", good)]
    assert os.path.join(root, "p", "escape") in src.escapes and os.path.join(root, "escproj") in src.escapes


def test_a_missing_root_is_an_error_that_says_so(tmp_path):
    with pytest.raises(SourceError, match="cannot list the root"):
        discover_hpc(LocalSource(str(tmp_path / "absent")))


def test_discover_runs_composes_the_readers_discoveries(tmp_path):
    root = str(tmp_path / "root")
    _run(root, "p", "r1")
    frag = os.path.join(root, "alice", "wandb", "offline-run-20260101_000000-abc123")
    os.makedirs(frag)
    # a W&B-looking directory inside an hpc run is not searched (hpc run directories are left alone)
    os.makedirs(os.path.join(root, "p", "r1", "files", "offline-run-20260101_000000-zzz"))
    src = LocalSource(root)
    assert [(r.key, r.format) for r in discover_runs(src, 0)] == [("p/r1", "hpc")]
    refs = discover_runs(src, 4)
    assert [(r.run_id, r.format) for r in refs] == [("r1", "hpc"), ("abc123", "wandb")]
    assert refs[1].parts == ("offline-run-20260101_000000-abc123",)
    assert refs[1].location == os.path.join(root, "alice", "wandb")
