"""tests/compat: existing W&B code on hpc. Framework packages come from the [compat-test] extra."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from support import need

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")


def need_packages(*names: str) -> None:
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    need(not missing, f"{', '.join(missing)} not installed (pip install -e '.[compat-test]')")


@pytest.fixture
def wandb_restored():
    """as_wandb() changes sys.modules and sys.meta_path for the whole process: put both back."""
    saved = {k: v for k, v in sys.modules.items() if k == "wandb" or k.startswith("wandb.")}
    meta_path = list(sys.meta_path)
    yield
    for name in [k for k in sys.modules if k == "wandb" or k.startswith("wandb.")]:
        del sys.modules[name]
    sys.modules.update(saved)
    sys.meta_path[:] = meta_path


def environ(root: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCSYNC_", "SLURM_", "WANDB_"))}
    env.update({"PYTHONPATH": REPO, "HPCSYNC_DIR": root, "HPCSYNC_STATS": "off", "WANDB_MODE": "offline"})
    env.update(extra)
    return env
