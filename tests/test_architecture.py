"""The architecture's rules, checked: two halves that share only the run format, one public namespace."""
from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules(package):
    for folder, _, files in os.walk(os.path.join(REPO, package)):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def imported(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("package, forbidden", [("hpc", "sync_gateway"), ("sync_gateway", "hpc")])
def test_the_two_halves_do_not_import_each_other(package, forbidden):
    offenders = [p for p in modules(package) if forbidden in set(imported(p))]
    assert not offenders, f"{package} must read the other half only through docs/run-format.md: {offenders}"


def test_compute_side_imports_only_light_dependencies():
    allowed = {"psutil", "yaml", "pynvml", "submitit", "hpc"}  # submitit only in hpc.slurm ([slurm] extra)
    import sys

    stdlib = set(sys.stdlib_module_names)
    for path in modules("hpc"):
        extra = {m for m in imported(path) if m not in stdlib and m not in allowed}
        assert not extra, f"{path} imports {extra}: the compute side stays light"


def test_public_namespace_is_complete():
    import hpc

    public = {n for n in vars(hpc) if not n.startswith("_") and not isinstance(getattr(hpc, n), type(os))}
    public -= {"annotations", "Any", "Mapping", "Optional"}
    assert public <= set(hpc.__all__) | {"errors", "cli"}, public - set(hpc.__all__)
    for name in hpc.__all__:
        assert hasattr(hpc, name), name


@pytest.mark.parametrize("package", ["hpc", "sync_gateway"])
def test_modules_stay_small(package):
    sizes = {p: sum(1 for _ in open(p, encoding="utf-8")) for p in modules(package)}
    big = {os.path.relpath(p, REPO): n for p, n in sizes.items() if n > 600}
    assert not big, f"split these modules (the rule is about 500 lines): {big}"
