from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Dict

import pytest
from monitor_helpers import FAKE_DIR


@pytest.fixture
def fake_pynvml():
    """A fresh in-process fake module; call ``.configure({...})`` on it."""
    spec = importlib.util.spec_from_file_location("fake_pynvml", os.path.join(FAKE_DIR, "pynvml.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_nvml_env(tmp_path):
    """Environment for a real monitor process that imports the fake pynvml: call with the config."""

    def make(config: Dict[str, Any], **extra: str) -> Dict[str, str]:
        path = tmp_path / "fake-nvml.json"
        path.write_text(json.dumps(config))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (FAKE_DIR, env.get("PYTHONPATH")) if p)
        env["FAKE_NVML_CONFIG"] = str(path)
        env.update(extra)
        return env

    return make
