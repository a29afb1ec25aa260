"""``python -m hpc.as_wandb script.py [args]``: run an unchanged W&B script with hpc standing in for wandb.

Also ``python -m hpc.as_wandb -m package.module [args]``. The script runs as ``__main__`` with ``sys.argv``
as it would see it without this wrapper; every ``import wandb`` in the process gives hpc
(:func:`hpc.as_wandb`).
"""
from __future__ import annotations

import os
import runpy
import sys
import types
from typing import Any, List, Optional

from ._run import active_run
from ._wandb import as_wandb

__all__ = ["as_wandb", "main"]

_USAGE = "usage: python -m hpc.as_wandb SCRIPT.py [ARGS...]  or  python -m hpc.as_wandb -m MODULE [ARGS...]"


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    as_wandb()
    if args[0] == "-m" and len(args) < 2:
        print(_USAGE, file=sys.stderr)
        return 2
    try:
        if args[0] == "-m":
            sys.argv = args[1:]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = args
            sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as exc:  # `raise SystemExit(3)` in the script: its run ends "failed" with that code
        run = active_run()
        if run is not None and run._hooks.exit_code is None:
            run._hooks.exit_code = exc.code
        raise
    return 0


class _CallableModule(types.ModuleType):
    """Importing ``hpc.as_wandb`` as a module binds the name ``hpc.as_wandb`` to it, hiding the function of
    the same name: the module stays callable, so ``hpc.as_wandb()`` works whichever the name holds."""

    def __call__(self) -> Any:
        return as_wandb()


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
