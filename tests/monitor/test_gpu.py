"""The real-GPU check (benchmarks/gpu_check.py) as a test: the monitor reads what nvidia-smi reads.

Runs only where an NVIDIA GPU and driver are present (`pytest -m gpu`); `make test` and CI deselect it
(no GPU there). Everywhere else the NVML code is tested against the fake library in fake_nvml/."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.gpu
@pytest.mark.slow
def test_the_monitor_agrees_with_nvidia_smi_on_a_real_gpu():
    if not _gpu_present():
        pytest.skip("no NVIDIA GPU here (nvidia-smi -L failed): run on a GPU node with `pytest -m gpu`")
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py"), "--seconds", "20"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
