"""Kill times for the kill -9 loops: drawn within how long the command took the last time it was not killed,
so that kills land during the work on a fast machine and on a slow one alike (a fixed range of sleeps let
most passes finish first on a quiet machine: too few kills landed and the loop failed for no fault)."""
from __future__ import annotations

import random
import signal
import subprocess
import time
from typing import Sequence


class KillTimer:
    def __init__(self, rng: random.Random, first_s: float = 2.0, low: float = 0.2, high: float = 0.95):
        self.rng, self.took_s, self.low, self.high = rng, first_s, low, high

    def wait_or_kill(self, procs: Sequence[subprocess.Popen]) -> int:
        """Wait for ``procs`` until a kill time drawn for this attempt; SIGKILL those still running then.
        Returns how many were killed; when none was, what the attempt took becomes the next range."""
        t0 = time.monotonic()
        deadline = t0 + max(0.05, self.rng.uniform(self.low, self.high) * self.took_s)
        kills = 0
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                kills += 1
        if not kills:
            self.took_s = max(0.3, time.monotonic() - t0)
        for p in procs:
            p.wait()
        return kills
