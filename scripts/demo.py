"""`make demo`: the main job end to end on the embedded default.

Records a run offline under .demo/runs (as a compute node would on shared storage), then shows it with
`hpc runs ls` and `hpc runs show`.
"""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(REPO, ".demo", "runs")


def sh(*argv: str, env: dict = None) -> None:
    print("$ " + " ".join(argv), flush=True)
    subprocess.run(argv, check=True, env={**os.environ, **(env or {})})


def main() -> int:
    env = {"HPCSYNC_DIR": ROOT}
    bindir = os.path.dirname(sys.executable)
    sh(sys.executable, os.path.join(REPO, "examples", "train_toy.py"), "--project", "demo", env=env)
    sh(os.path.join(bindir, "hpc"), "runs", "ls", "--root", ROOT)
    newest = max((os.path.join(ROOT, "demo", d) for d in os.listdir(os.path.join(ROOT, "demo"))),
                 key=os.path.getmtime)
    sh(os.path.join(bindir, "hpc"), "runs", "show", newest, "--metric", "train/loss")
    print(f"\nThe run is on disk in {newest} (format: docs/run-format.md).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
