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


# Optional packages, each allowed only in the module that integrates it (imported by the user, never by
# `import hpc`): Lightning's logger subclasses Lightning's Logger; the MLflow door's store and artifact
# repository subclass MLflow's (imported by MLflow itself, through its plugin entry points).
_INTEGRATIONS = {os.path.join("hpc", "integrations", "lightning.py"): {"lightning"},
                 os.path.join("hpc", "mlflow", "__init__.py"): {"mlflow"},  # inside a builder only
                 os.path.join("hpc", "mlflow", "_store.py"): {"mlflow"},
                 os.path.join("hpc", "mlflow", "_artifacts.py"): {"mlflow"}}


def test_compute_side_imports_only_light_dependencies():
    allowed = {"psutil", "yaml", "pynvml", "submitit", "hpc"}  # submitit only in hpc.slurm ([slurm] extra)
    import sys

    stdlib = set(sys.stdlib_module_names)
    for path in modules("hpc"):
        own = _INTEGRATIONS.get(os.path.relpath(path, REPO), set())
        extra = {m for m in imported(path) if m not in stdlib and m not in allowed | own}
        assert not extra, f"{path} imports {extra}: the compute side stays light"


def test_import_hpc_imports_no_framework():
    import subprocess
    import sys

    code = ("import sys, hpc; hpc.as_wandb(); import wandb; "
            "print(sorted(m for m in ('torch', 'transformers', 'lightning', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


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


def _gateway_imports(path):
    """The sync_gateway submodules a module imports (relative imports resolved)."""
    rel = os.path.relpath(path, os.path.join(REPO, "sync_gateway")).replace(os.sep, "/")
    package = ["sync_gateway"] + rel.split("/")[:-1]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("sync_gateway"):
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("sync_gateway"))


@pytest.mark.parametrize("layer, forbidden", [
    ("sources", ("sync_gateway.readers", "sync_gateway.sinks", "sync_gateway._engine")),
    ("readers", ("sync_gateway.sinks", "sync_gateway._engine", "sync_gateway.sources.local",
                 "sync_gateway.sources.sftp")),
    ("sinks", ("sync_gateway.sources", "sync_gateway._engine", "sync_gateway.readers.hpc",
               "sync_gateway.readers._hpc_format")),
])
def test_gateway_layers_depend_one_way(layer, forbidden):
    """sources -> readers -> sinks: a source knows no format, a reader no server, a sink no file."""
    offenders = {}
    for path in modules(os.path.join("sync_gateway", layer)):
        bad = [m for m in _gateway_imports(path) if m.startswith(forbidden)]
        if bad:
            offenders[os.path.relpath(path, REPO)] = bad
    assert not offenders, offenders
