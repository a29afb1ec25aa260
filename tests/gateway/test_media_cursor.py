"""media.jsonl is read from where the last pass stopped (``Reader.files_since``, issue 24 item 5): a pass reads
only what the index gained, a rewritten index is read whole again, and the engine keeps the mark only once every
file it covers is stored (fast tier: the SDK writes the run, a memory sink stores it)."""
from __future__ import annotations

import json
import os
from typing import Any, List, Tuple

from _faultysink import FaultySink
from _ids import key as run_key

import hpc
from sync_gateway.engine.runner import Runner
from sync_gateway.engine.state import StateStore
from sync_gateway.errors import ServerUnavailable
from sync_gateway.readers import discover_runs, reader_for
from sync_gateway.records import FINGERPRINT_BYTES
from sync_gateway.settings import Settings
from sync_gateway.sources.local import LocalSource


class CountingSource(LocalSource):
    """A local root whose reads of media.jsonl are recorded: (offset, length)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.index_reads: List[Tuple[int, int]] = []

    def read_range(self, ref: Any, name: str, offset: int, length: int) -> bytes:
        if name == "media.jsonl":
            self.index_reads.append((offset, length))
        return super().read_range(ref, name, offset, length)


def _tables(root: str, project: str, n: int, first: int = 0, run_id: str = "m") -> str:
    run = hpc.init(project=project, id=run_id, resume="allow" if first else None,
                   settings={"root": root, "stats": False})
    for i in range(first, first + n):
        run.log({"preds": hpc.Table(columns=["i"], data=[[i]])})
    run.finish()
    return run.dir


def _reader(source: LocalSource):
    (ref,) = discover_runs(source)
    reader = reader_for(source, ref)
    return reader, reader.snapshot()


def _media(entries) -> List[str]:
    return [e.source_path for e in entries if e.source_path.startswith("media/")]


def test_a_pass_reads_only_what_media_jsonl_gained(tmp_path):
    root = str(tmp_path / "root")
    run_dir = _tables(root, "p", 40)
    source = CountingSource(root)
    reader, snap = _reader(source)
    entries, mark = reader.files_since(snap, None)
    assert len(_media(entries)) == 40 and mark["media"][0] == os.path.getsize(f"{run_dir}/media.jsonl")
    first_size = mark["media"][0]

    _tables(root, "p", 2, first=3)
    source.index_reads.clear()
    reader, snap = _reader(source)
    entries, mark2 = reader.files_since(snap, mark)
    assert len(_media(entries)) == 2  # only the two new tables
    assert mark2["media"][0] == os.path.getsize(f"{run_dir}/media.jsonl")
    # One read: the bytes before the mark (its check) and the new part; never the index from its start.
    assert source.index_reads == [(first_size - FINGERPRINT_BYTES, mark2["media"][0] - first_size + FINGERPRINT_BYTES)]
    # Nothing new: the mark stays, and every file is still listed without a mark.
    assert _media(reader.files_since(snap, mark2)[0]) == [] and reader.files_since(snap, mark2)[1] == mark2
    assert len(_media(reader.files(snap))) == 42


def test_a_rewritten_index_is_read_whole_again(tmp_path):
    root = str(tmp_path / "root")
    run_dir = _tables(root, "p", 3)
    source = LocalSource(root)
    reader, snap = _reader(source)
    _, mark = reader.files_since(snap, None)
    path = f"{run_dir}/media.jsonl"
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with open(path, "wb") as f:  # the same length, other bytes before the mark: lines swapped
        f.write(lines[1] + lines[0] + lines[2])
    reader, snap = _reader(source)
    assert len(_media(reader.files_since(snap, mark)[0])) == 3
    with open(path, "wb") as f:  # shorter than the mark
        f.write(lines[0])
    reader, snap = _reader(source)
    assert len(_media(reader.files_since(snap, mark)[0])) == 1
    assert len(_media(reader.files_since(snap, {"media": ["x", 1]})[0])) == 1  # a mark that makes no sense


def _settings(tmp_path, root: str) -> Settings:
    return Settings(roots=[root], server_url="http://unused.invalid", state_dir=str(tmp_path / "state"))


def test_the_mark_moves_only_once_every_file_it_covers_is_stored(tmp_path):
    root = str(tmp_path / "root")
    run_dir = _tables(root, "p", 3)
    with open(f"{run_dir}/media.jsonl", encoding="utf-8") as f:
        path2 = json.loads(f.read().splitlines()[1])["values"]["path"]
    sink = FaultySink().fail("upload", ServerUnavailable("HTTP 503 (test)", 503), run="m", detail=path2, times=None)
    settings = _settings(tmp_path, root)
    with Runner(settings, sink=sink) as runner:
        assert not runner.run_pass().ok
    key = run_key(root, "p", "m")
    assert StateStore(settings.state_dir).load(key).files_mark is None  # the second table is not stored
    sink.heal()
    with Runner(settings, sink=sink) as runner:
        assert runner.run_pass().ok
    stored = sink.stored(key)
    assert len([p for p in stored.files if p.startswith("media/")]) == 3
    assert StateStore(settings.state_dir).load(key).files_mark is not None

    _tables(root, "p", 2, first=3)
    uploads = sink.calls["upload"]
    with Runner(settings, sink=sink) as runner:
        assert runner.run_pass().ok
    assert len([p for p in sink.stored(key).files if p.startswith("media/")]) == 5
    new_media = sink.calls["upload"] - uploads
    assert new_media >= 2  # the two tables, and the documents that changed with them (run.json, output.log, ...)


def test_a_run_sent_anew_gets_every_media_file_again(tmp_path):
    root = str(tmp_path / "root")
    run_dir = _tables(root, "p", 3)
    sink = FaultySink()
    settings = _settings(tmp_path, root)
    with Runner(settings, sink=sink) as runner:
        assert runner.run_pass().ok
    key = run_key(root, "p", "m")
    old = sink.stored(key)
    with open(f"{run_dir}/history.jsonl", "rb") as f:
        history = f.read()
    with open(f"{run_dir}/history.jsonl", "wb") as f:  # rewritten from scratch: a new server run
        f.write(history[: history.index(b"\n") + 1])
    with Runner(settings, sink=sink) as runner:
        assert runner.run_pass().ok
    new = sink.stored(key)
    assert new is not old and old.retired
    assert len([p for p in new.files if p.startswith("media/")]) == 3
