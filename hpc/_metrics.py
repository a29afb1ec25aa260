"""``define_metric`` declarations: W&B's arguments checked and mapped to hpc's one summary policy per key."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ._values import MAX_KEY_CHARS, key_problem
from .errors import UsageError

__all__ = ["declaration", "SUMMARY_POLICIES"]

SUMMARY_POLICIES = ("min", "max", "mean", "last")


def declaration(name: str, step_metric: Optional[str], summary: Optional[str], step_sync: Optional[bool],
                hidden: Optional[bool], goal: Optional[str],
                warn_once: Callable[[str, str], Any]) -> Dict[str, Any]:
    """run.json's ``metrics`` entry for one ``define_metric`` call; UsageError for a bad argument."""
    if not isinstance(name, str) or not name or len(name) > MAX_KEY_CHARS:
        raise UsageError(f"define_metric needs a metric name or glob of 1 to {MAX_KEY_CHARS} characters")
    policy = summary_policy(name, summary, goal, warn_once)
    if step_metric is not None and key_problem(step_metric):
        raise UsageError(key_problem(step_metric))
    decl: Dict[str, Any] = {"name": name, "step_metric": step_metric, "summary": policy}
    for key, value in (("step_sync", step_sync), ("hidden", hidden), ("goal", goal)):
        if value is not None:
            decl[key] = value
    return decl


def summary_policy(name: str, summary: Optional[str], goal: Optional[str],
                   warn_once: Callable[[str, str], Any]) -> Optional[str]:
    """hpc's one policy for W&B's summary (which may list several: ``"min,max"``)."""
    if summary is None:
        return None
    wanted = [p.strip() for p in str(summary).split(",") if p.strip()]
    mapped = []
    for policy in wanted:
        if policy == "best":
            policy = {"minimize": "min", "maximize": "max"}.get(str(goal), "")
            if not policy:
                raise UsageError("summary='best' needs goal='minimize' or goal='maximize'")
        policy = {"copy": "last", "first": "last"}.get(policy, policy)
        if policy not in SUMMARY_POLICIES + ("none",):
            raise UsageError(f"summary={summary!r}: {policy!r} is not one of "
                             f"{', '.join(SUMMARY_POLICIES)}, best, copy or none")
        mapped.append(policy)
    if len(set(mapped)) > 1:
        warn_once(f"summary-{name}", f"define_metric({name!r}, summary={summary!r}): hpc keeps "
                  f"one summary per key, {mapped[0]!r}")
    return None if not mapped or mapped[0] == "none" else mapped[0]
