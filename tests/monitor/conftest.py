from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Dict, List

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_DIR = os.path.join(HERE, "fake_nvml")


def gpu(uuid: str, **over: Any) -> Dict[str, Any]:
    d = {"uuid": uuid, "name": "NVIDIA H100 80GB HBM3", "total": 80 * 2**30, "used": 20 * 2**30, "gpu": 90,
         "memory": 40, "temp": 61, "power_mw": 350_000, "limit_mw": 700_000, "sm_mhz": 1980, "ecc": [2, 0],
         "lost_after": None}
    d.update(over)
    return d


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


def read_records(path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        data = fh.read()
    assert data == "" or data.endswith("\n"), "torn last line"
    return [json.loads(line) for line in data.splitlines()]
