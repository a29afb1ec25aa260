"""W&B offline runs under an ssh:// root: discovery and the reader see over SFTP what they see locally."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

from _runs import write_run
from support import need

from sync_gateway.readers import discover_runs, reader_for
from sync_gateway.records import Position
from sync_gateway.sources.local import LocalSource

JOB = """
import wandb
run = wandb.init(project="remote", id="sftp0001", config={"lr": 0.5})
for i in range(2500):
    run.log({"loss": 1.0 / (i + 1), "pad": "x" * 30})
run.summary["best"] = 3
run.finish()
"""


def _everything(source, depth=4):
    out = {}
    for ref in discover_runs(source, depth):
        r = reader_for(source, ref)
        r.attach_state({})
        snap = r.snapshot()
        got = {"files": sorted((n, s.size_bytes) for n, s in snap.files.items()), "parts": ref.parts,
               "format": ref.format}
        if ref.format == "wandb":
            assert r.ready(snap)
            got["info"] = r.info()
            got["config"] = r.config()
            for stream, size in r.streams(snap):
                pos, rows = Position(0, None), []
                while pos.offset < size:
                    ch = r.read(stream, pos, size, 64 * 1024)   # small reads: many records cut at the end
                    rows += [(row.step, row.ts_ms, row.values) for row in ch.rows]
                    pos = ch.end
                    if ch.at_end:
                        break
                got[stream] = rows
            got["summary"] = r.summary(snap)
            got["artifacts"] = sorted(e.dest for e in r.files(snap))
        out[ref.key] = got
    return out


def test_wandb_runs_over_sftp_equal_local(tmp_path, source_factory):
    need(importlib.util.find_spec("wandb") is not None, "wandb is not installed: pip install -e '.[wandb]'")
    root = tmp_path / "runs"
    work = root / "alice" / "exp"
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true", WANDB_CONSOLE="off",
               WANDB_DIR=str(work))
    subprocess.run([sys.executable, "-c", JOB], cwd=str(work), env=env, check=True, timeout=300)
    (frag,) = (work / "wandb").glob("offline-run-*")
    # a second fragment of the same run (a requeued job), and an hpc run beside the W&B ones
    shutil.copytree(frag, frag.parent / frag.name.replace(frag.name[12:27], "29991231_235959"), symlinks=True)
    write_run(str(root), "proj", "hpc1", finished=True)
    local = _everything(LocalSource(str(root)))
    remote = _everything(source_factory(str(root)))
    assert remote == local
    (wandb_key,) = [k for k, v in local.items() if v["format"] == "wandb"]
    assert len(local[wandb_key]["parts"]) == 2 and "proj/hpc1" in local
    assert len(local[wandb_key]["history"]) == 5000     # two fragments, each read once
    assert [s for s, _, _ in local[wandb_key]["history"]] == list(range(5000))   # steps continue
    assert local[wandb_key]["config"] == {"lr": 0.5}
