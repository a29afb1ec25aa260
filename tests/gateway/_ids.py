"""A run's key, as the engine and the sinks name it (``<root id>/<project>/<run_id>``, engine/identity.py),
for tests that look runs up in the state, the report or a sink."""
from __future__ import annotations

import os

from sync_gateway.records import root_id


def key(root: str, project: str, run_id: str) -> str:
    """The key of ``<root>/<project>/<run_id>`` for a local root without an id in the config."""
    shown = root if "://" in root else os.path.abspath(os.path.expanduser(root))
    return f"{root_id(shown)}/{project}/{run_id}"


def wandb_name(root: str, run_id: str) -> str:
    """The W&B run name (its id, unique per W&B project) the W&B sink gives a run of ``root``."""
    return f"{run_id}-{key(root, '_', '_').split('/')[0]}"
