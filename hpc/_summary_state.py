"""The run's summary as the writer thread keeps it: last values, values set by hand, policy accumulators."""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["SummaryState"]


class SummaryState:
    """summary.json's content. ``declarations`` is run.json's ``metrics`` list (the writer's own, read live):
    a key's policy is that of the first declaration matching it."""

    def __init__(self, saved: Dict[str, Any], declarations: Sequence[Dict[str, Any]]):
        self.last: Dict[str, Any] = dict(saved.get("last", {}))
        self.manual: Dict[str, Any] = dict(saved.get("manual", {}))
        self._acc: Dict[str, List[float]] = {k: list(v) for k, v in saved.get("acc", {}).items()}
        self._declarations = declarations
        self._policy_cache: Dict[str, Optional[Tuple[str, Optional[str]]]] = {}

    def declarations_changed(self, declarations: Sequence[Dict[str, Any]]) -> None:
        self._declarations = declarations
        self._policy_cache.clear()

    def delete(self, key: str) -> None:
        self.manual.pop(key, None)
        self.last.pop(key, None)
        self._acc.pop(key, None)

    def _policy(self, key: str) -> Optional[Tuple[str, Optional[str]]]:
        try:
            return self._policy_cache[key]
        except KeyError:
            pass
        found = None
        for decl in self._declarations:
            if decl["name"] == key or fnmatch.fnmatchcase(key, decl["name"]):
                found = (decl.get("summary") or "last", decl.get("step_metric"))
                break
        self._policy_cache[key] = found
        return found

    def accumulate(self, values: Dict[str, Any]) -> None:
        for key, value in values.items():
            policy = self._policy(key)
            if policy is None or policy[0] == "last":
                continue
            if type(value) not in (int, float) or (type(value) is float and math.isnan(value)):
                continue
            acc = self._acc.get(key)
            if acc is None:
                self._acc[key] = [1, value, value, value]  # count, sum, min, max
            else:
                acc[0] += 1
                acc[1] += value
                acc[2] = min(acc[2], value)
                acc[3] = max(acc[3], value)

    def values(self) -> Dict[str, Any]:
        values = dict(self.last)
        for key, (count, total, low, high) in self._acc.items():
            policy = self._policy(key)
            if policy is None:
                continue
            values[key] = {"min": low, "max": high, "mean": total / count if count else None}.get(
                policy[0], values.get(key))
        values.update(self.manual)
        return values

    def document(self) -> Dict[str, Any]:
        policies = {}
        for key in self._acc:
            policy = self._policy(key)
            if policy and policy[0] != "last":
                policies[key] = policy[0]
        return {"values": self.values(), "set_by_hand": sorted(self.manual),
                "policies": policies, "last": self.last, "accumulators": self._acc}
