"""Helpers of tests/compat (a module of its own: every test directory has a `conftest`)."""
from __future__ import annotations

import importlib.util
import os

from support import need

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")


def need_packages(*names: str) -> None:
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    need(not missing, f"{', '.join(missing)} not installed (pip install -e '.[compat-test]')")


def environ(root: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCSYNC_", "SLURM_", "WANDB_"))}
    env.update({"PYTHONPATH": REPO, "HPCSYNC_DIR": root, "HPCSYNC_STATS": "off", "WANDB_MODE": "offline"})
    env.update(extra)
    return env
