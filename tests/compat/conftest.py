"""tests/compat: existing W&B code on hpc. Framework packages come from the [compat-test] extra; helpers
are in compat_support.py."""
from __future__ import annotations

import sys

import pytest


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
