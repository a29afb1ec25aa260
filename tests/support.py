"""Shared test helpers. Outside CI a test whose service is missing skips with one line; in CI it fails."""
from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(ok: bool, reason: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}: .ci/run must install and start it", pytrace=False)
    pytest.skip(reason)


def soak_count(ci_count: int, soak: int) -> int:
    """Fault-injection loops run a reduced count normally and the full one under `make soak`."""
    return soak if os.environ.get("HPCSYNC_SOAK") == "1" else ci_count
