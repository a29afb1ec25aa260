"""The ``hpc`` command: list and inspect runs on shared storage, restore a run's code."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, List, Optional, Sequence

from . import _format as fmt
from . import _shell
from ._code import RestoreError, restore
from ._reader import DEFAULT_STALE_AFTER_S, RunInfo, find_run, iter_runs, load_run, read_history
from ._settings import Settings
from ._smooth import debiased_ema, sparkline
from .errors import HpcError, UsageError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpc", description="Inspect hpc-sync runs written offline.")
    sub = parser.add_subparsers(dest="command", required=True)

    runs = sub.add_parser("runs", help="list and show runs").add_subparsers(dest="runs_command", required=True)
    ls = runs.add_parser("ls", help="a table of runs")
    ls.add_argument("--root", help="the runs root (default: $HPCSYNC_DIR or ./hpc-runs)")
    ls.add_argument("--project", help="only this project")
    ls.add_argument("--stale-after-s", type=float, default=DEFAULT_STALE_AFTER_S,
                    help="a run without exit record whose files have not changed for this long is 'crashed'")

    show = runs.add_parser("show", help="metadata, config, summary and a metric sparkline")
    show.add_argument("run", help="run id, name, project/id or run directory")
    show.add_argument("--root")
    show.add_argument("--metric", help="metric to draw (default: the first logged one)")
    show.add_argument("--smooth", type=float, default=0.6, help="TensorBoard smoothing weight in [0, 1)")

    run = sub.add_parser("run", help="start or finish a run from a shell script (see docs/other-languages.md)")
    run_sub = run.add_subparsers(dest="run_command", required=True)
    start = run_sub.add_parser("start", help="create a run and print its directory")
    start.add_argument("--project")
    start.add_argument("--id", dest="run_id")
    start.add_argument("--name")
    start.add_argument("--group")
    start.add_argument("--job-type")
    start.add_argument("--root")
    start.add_argument("--resume", choices=["allow", "must", "never"])
    start.add_argument("--tag", action="append", default=[])
    start.add_argument("--notes")
    start.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE")
    fin = run_sub.add_parser("finish", help="write the run's exit record")
    fin.add_argument("--run", help="the run directory (default: $HPCSYNC_RUN_DIR)")
    fin.add_argument("--exit-code", type=int, default=0)

    log = sub.add_parser("log", help="append one row of metrics to a run started with `hpc run start`")
    log.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    log.add_argument("--run", help="the run directory (default: $HPCSYNC_RUN_DIR)")
    log.add_argument("--step", type=int, help="the row's step (default: one after the last row)")

    rest = sub.add_parser("restore", help="check out a run's commit and apply its diff.patch")
    rest.add_argument("run")
    rest.add_argument("--root")
    rest.add_argument("--repo", default=".", help="the git work tree to restore into (default: .)")
    return parser


def _root(arg: Optional[str]) -> str:
    return os.path.abspath(arg or Settings.resolve({}).root)


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _when(ms: Optional[int]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _runs_ls(args: argparse.Namespace) -> int:
    root = _root(args.root)
    rows, problems = [], []
    for path, info in iter_runs(root, args.project):
        if not isinstance(info, RunInfo):
            problems.append(f"{path}: {info}")
            continue
        exit_doc = info.exit if info.exit and info.exit.get("attempt") == info.meta.get("attempt") else None
        steps = exit_doc.get("history_records") if exit_doc else None
        if steps is None:
            steps = _count_lines(os.path.join(path, fmt.HISTORY))
        rows.append([info.id, info.meta.get("name", "-"), info.meta.get("project", "-"),
                     info.meta.get("group") or "-", info.state(stale_after_s=args.stale_after_s), str(steps),
                     _when(info.last_update_ms())])
    if not rows and not problems:
        print(f"no runs under {root}")
    if rows:
        print(_table(rows, ["ID", "NAME", "PROJECT", "GROUP", "STATE", "STEPS", "LAST UPDATE"]))
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    return 0


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _runs_show(args: argparse.Namespace) -> int:
    path = find_run(_root(args.root), args.run)
    info = load_run(path)
    meta = info.meta
    print(f"run      {meta.get('name')} ({meta.get('project')}/{meta.get('id')})")
    print(f"state    {info.state()}   attempt {meta.get('attempt')}   dir {path}")
    for key in ("group", "job_type", "tags", "notes", "user", "host", "program"):
        if meta.get(key):
            print(f"{key:<8} {meta[key]}")
    if meta.get("git"):
        git = meta["git"]
        print(f"git      {git.get('commit')} ({git.get('branch')}){' dirty' if git.get('dirty') else ''}")
    config = fmt.read_json(os.path.join(path, fmt.CONFIG)) or {}
    print("config   " + (json.dumps(config, sort_keys=True) if config else "-"))
    summary = (fmt.read_json(os.path.join(path, fmt.SUMMARY)) or {}).get("values", {})
    if summary:
        print("summary")
        for key in sorted(summary):
            print(f"  {key:<30} {fmt.decode_value(summary[key])}")
    history = [r for r in read_history(path)]
    keys = sorted({k for r in history for k, v in r["values"].items() if _number(v)})
    if not keys:
        print("history  (no numeric metrics)")
        return 0
    metric = args.metric or keys[0]
    points = [(r["step"], float(r["values"][metric])) for r in history
              if metric in r["values"] and _number(r["values"][metric])]
    if not points:
        print(f"no metric {metric!r}; logged metrics: {', '.join(keys)}")
        return 1
    values = [v for _, v in points]
    smoothed = debiased_ema(values, args.smooth)
    print(f"history  {metric}: {len(points)} points, steps {points[0][0]}..{points[-1][0]}, "
          f"smoothing {args.smooth}")
    print(f"  {sparkline(smoothed)}")
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        print(f"  min {min(finite):.6g}  max {max(finite):.6g}  last {values[-1]:.6g}  "
              f"smoothed last {smoothed[-1]:.6g}")
    print(f"  other metrics: {', '.join(k for k in keys if k != metric) or '-'}")
    return 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _restore(args: argparse.Namespace) -> int:
    path = find_run(_root(args.root), args.run)
    meta = load_run(path).meta
    commit = (meta.get("git") or {}).get("commit")
    if not commit:
        print(f"run {meta.get('id')} has no git commit recorded (code capture was off, or not in a git "
              "work tree)", file=sys.stderr)
        return 1
    patch = os.path.join(path, fmt.CODE_DIR, "diff.patch")
    print(restore(os.path.abspath(args.repo), commit, patch if os.path.isfile(patch) else None))
    return 0


def _run_dir(args: argparse.Namespace) -> str:
    run_dir = args.run or Settings.resolve({}).run_dir
    if not run_dir:
        raise UsageError("which run? pass --run DIR or set HPCSYNC_RUN_DIR to what `hpc run start` printed")
    return run_dir


def _run_start(args: argparse.Namespace) -> int:
    settings = Settings.resolve({"project": args.project, "run_id": args.run_id, "group": args.group,
                                 "root": args.root, "resume": args.resume})
    print(_shell.start(settings, args.name, args.job_type, _shell.parse_pairs(args.config), args.tag,
                       args.notes))
    return 0


def _run_finish(args: argparse.Namespace) -> int:
    outcome = _shell.finish(_run_dir(args), args.exit_code, Settings.resolve({}))
    print(f"{outcome.get('reason')} (exit code {outcome.get('exit_code')}, {outcome.get('history_records')} rows)")
    return 0


def _log(args: argparse.Namespace) -> int:
    _shell.log(_run_dir(args), _shell.parse_pairs(args.pairs), args.step, Settings.resolve({}))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "runs":
            return _runs_ls(args) if args.runs_command == "ls" else _runs_show(args)
        if args.command == "run":
            return _run_start(args) if args.run_command == "start" else _run_finish(args)
        if args.command == "log":
            return _log(args)
        return _restore(args)
    except (HpcError, LookupError, RestoreError, ValueError, OSError) as err:
        print(f"hpc: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
