"""``define_metric`` declarations: W&B's arguments checked and mapped to hpc's one summary policy per key,
and kept in run.json's ``metrics`` in the order in which the first matching declaration is W&B's choice.

W&B (wandb-core's metric handler) looks a key up among the declared names first, and only then among the
globs; a second declaration of a name merges into the first (the fields it sets replace those before it),
unless ``overwrite=True`` replaces it whole. Among several matching globs W&B's pick is unspecified; hpc
takes the most specific (the most characters that are not wildcards), then the later declared. So the
list holds the names first, in declaration order, then the globs in that order, and the format's rule
(docs/run-format.md section 4: the first matching declaration wins) gives W&B's answer: HF's
``define_metric("*", step_metric="train/global_step")`` no longer shadows a user's ``define_metric("eval/loss",
summary="min")``, whichever came first.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._values import MAX_KEY_CHARS, key_problem
from .errors import UsageError

__all__ = ["declaration", "add_declaration", "SUMMARY_POLICIES"]

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


_WILDCARDS = re.compile(r"\[[^\]]*\]|[*?]")


def _precedence(name: str) -> Tuple[int, int]:
    """Sort key, lower first: every plain name before every glob, then globs by specificity."""
    literal = _WILDCARDS.sub("", name)
    return (0, 0) if literal == name else (1, -len(literal))


def add_declaration(declarations: List[Dict[str, Any]], decl: Dict[str, Any], overwrite: bool = False) -> None:
    """Put ``decl`` into ``declarations`` (run.json's ``metrics``, kept in precedence order): merged into an
    earlier declaration of the same name (the fields it sets win; ``overwrite``: replacing it), else placed
    after the names or globs that take precedence over it and before the globs of its own specificity."""
    for i, old in enumerate(declarations):
        if old["name"] == decl["name"]:
            declarations[i] = dict(decl) if overwrite else {**old, **{k: v for k, v in decl.items()
                                                                      if v is not None}}
            return
    key = _precedence(decl["name"])
    at = len(declarations)
    for i, old in enumerate(declarations):
        old_key = _precedence(old["name"])
        # a plain name goes after the other names; a glob before those as specific (later declared wins)
        if old_key > key or (key[0] == 1 and old_key == key):
            at = i
            break
    declarations.insert(at, dict(decl))
