"""Helpers shared by the monitor tests (a unique module name: every test directory has a conftest)."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_DIR = os.path.join(HERE, "fake_nvml")


def wait_records(path, count: int, timeout_s: float = 30.0) -> List[Dict[str, Any]]:
    """Wait (bounded) until the stream at ``path`` holds at least ``count`` complete records."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with open(path, encoding="utf-8") as fh:
                data = fh.read()
        except FileNotFoundError:
            data = ""
        records = [json.loads(line) for line in data[: data.rfind("\n") + 1].splitlines()]
        if len(records) >= count:
            return records
        assert time.monotonic() < deadline, f"{path}: {len(records)} of {count} records after {timeout_s} s"
        time.sleep(0.05)


def gpu(uuid: str, **over: Any) -> Dict[str, Any]:
    """One device of the fake pynvml's config (see fake_nvml/pynvml.py)."""
    d = {"uuid": uuid, "name": "NVIDIA H100 80GB HBM3", "total": 80 * 2**30, "used": 20 * 2**30, "gpu": 90,
         "memory": 40, "temp": 61, "power_mw": 350_000, "limit_mw": 700_000, "sm_mhz": 1980, "ecc": [2, 0],
         "lost_after": None}
    d.update(over)
    return d


def read_records(path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        data = fh.read()
    assert data == "" or data.endswith("\n"), "torn last line"
    return [json.loads(line) for line in data.splitlines()]
