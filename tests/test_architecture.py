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
                 os.path.join("hpc", "mlflow", "_experiments.py"): {"mlflow"},  # composed by _store.py
                 os.path.join("hpc", "mlflow", "_lookup.py"): {"mlflow"},  # composed by _store.py
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


# What each layer may import inside the package besides the contracts at the bottom: records, settings,
# errors, _redact, and wandb_keys (W&B's system-metric names: one table for the W&B reader and the W&B sink).
# sources -> readers -> sinks -> engine -> airgap -> cli: a source knows no format, a reader no server, a sink
# no file format, and the engine no backend.
_BOTTOM = ("sync_gateway.records", "sync_gateway.settings", "sync_gateway.errors", "sync_gateway._redact",
           "sync_gateway.wandb_keys")
_LAYERS = {
    "sources": ("sync_gateway.sources",),
    "readers": ("sync_gateway.sources.base", "sync_gateway.readers"),
    "sinks": ("sync_gateway.sinks",),
    "engine": ("sync_gateway.sources", "sync_gateway.readers", "sync_gateway.sinks.base", "sync_gateway.sinks",
               "sync_gateway.engine"),
}


@pytest.mark.parametrize("layer", sorted(_LAYERS))
def test_gateway_layers_depend_one_way(layer):
    allowed = _BOTTOM + _LAYERS[layer]
    offenders = {}
    for path in modules(os.path.join("sync_gateway", layer)):
        bad = [m for m in _gateway_imports(path) if not m.startswith(allowed) and m != "sync_gateway"]
        if bad:
            offenders[os.path.relpath(path, REPO)] = bad
    assert not offenders, offenders


def test_the_engine_names_no_backend():
    """The engine reaches sinks and sources only through their base classes and registries."""
    backends = ("sync_gateway.sinks.mlflow", "sync_gateway.sinks.memory", "sync_gateway.sources.sftp",
                "sync_gateway.readers.hpc", "sync_gateway.readers.wandb")
    offenders = {os.path.relpath(p, REPO): [m for m in _gateway_imports(p) if m.startswith(backends)]
                 for p in modules(os.path.join("sync_gateway", "engine"))}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def _module_of(path):
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _all_imports(path, package_name):
    """Every import of the package's own modules in ``path``: top level, in functions and under TYPE_CHECKING
    (each is a dependency a reader of the code must follow). ``from pkg.mod import name`` counts as pkg.mod."""
    mod = _module_of(path)
    is_pkg = path.endswith("__init__.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == package_name:
                yield target
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == package_name)


def _cycles(package_name):
    paths = {_module_of(p): p for p in modules(package_name)}
    graph = {}
    for mod, path in paths.items():
        deps = set()
        for target in _all_imports(path, package_name):
            # the longest known module the import names (``from a.b import c``: a.b.c when it is a module)
            while target and target not in paths:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != mod and not mod.startswith(target + "."):  # a package's own __init__
                deps.add(target)
        graph[mod] = deps
    # Tarjan's strongly connected components: every component of more than one module is a circle
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("package", ["hpc", "sync_gateway"])
def test_no_import_circles(package):
    """Counting function-level and TYPE_CHECKING imports: a lazy import hides a circle, it does not remove it."""
    assert not _cycles(package), _cycles(package)


def _sizes(package):
    for path in modules(package):
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                yield os.path.relpath(path, REPO), node, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("package", ["hpc", "sync_gateway"])
def test_classes_and_functions_stay_small(package):
    big = [f"{p}:{n.lineno} {n.name} ({size} lines)" for p, n, size in _sizes(package)
           if size > (300 if isinstance(n, ast.ClassDef) else 90)]
    assert not big, "split these (a class over 300 lines, a function over 90): " + "; ".join(big)


def test_every_backend_is_one_module_or_one_package():
    """No ``_<backend>_*`` satellites beside a backend module: a backend with helpers is a package."""
    for layer in ("sources", "readers", "sinks"):
        folder = os.path.join(REPO, "sync_gateway", layer)
        names = [n[:-3] for n in os.listdir(folder) if n.endswith(".py")]
        packages = [n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)) and n != "__pycache__"]
        for name in names:
            for backend in names + packages:
                assert not name.startswith(f"_{backend}_"), f"{layer}/{name}.py belongs in {layer}/{backend}/"


def test_gateway_public_namespace_is_complete():
    """``sync_gateway.__all__`` names what a user or a new backend needs, each resolving, and nothing else is
    public at the top (httpx keeps such a test)."""
    import sync_gateway
    from sync_gateway import records

    for name in sync_gateway.__all__:
        assert getattr(sync_gateway, name) is not None, name
    public = {n for n in dir(sync_gateway) if not n.startswith("_")
              and not isinstance(getattr(sync_gateway, n), type(os))} - {"annotations", "Any", "Dict", "List"}
    assert public <= set(sync_gateway.__all__), public - set(sync_gateway.__all__)
    wanted = {"Settings", "Runner", "PassReport", "main", "Source", "Reader", "Sink", "SinkRun", "GatewayError"}
    wanted |= {n for n in records.__all__ if isinstance(getattr(records, n), type)}  # every record class
    assert wanted <= set(sync_gateway.__all__), wanted - set(sync_gateway.__all__)


def test_import_sync_gateway_stays_light():
    import subprocess
    import sys

    code = ("import sys, sync_gateway, sync_gateway.errors, sync_gateway.records; "
            "print(sorted(m for m in ('requests', 'urllib3', 'paramiko', 'rich', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
