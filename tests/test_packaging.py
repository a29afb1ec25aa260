"""Packaging: every package is a regular package (no namespace fallback), typed, with one version."""
from __future__ import annotations

import importlib.metadata
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("package", ["hpc", "sync_gateway"])
def test_every_directory_with_modules_is_a_regular_package(package):
    missing = []
    for folder, dirs, files in os.walk(os.path.join(REPO, package)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if any(f.endswith(".py") for f in files) and "__init__.py" not in files:
            missing.append(os.path.relpath(folder, REPO))
    assert not missing, f"add __init__.py (setuptools would ship them only as namespace packages): {missing}"
    assert os.path.exists(os.path.join(REPO, package, "py.typed"))


def test_the_version_is_written_once():
    import hpc

    text = open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8").read()
    assert 'dynamic = ["version"]' in text and 'version = {attr = "hpc.__version__"}' in text
    assert importlib.metadata.version("hpc-sync") == hpc.__version__


def test_the_license_file_is_the_declared_license():
    assert "Apache License" in open(os.path.join(REPO, "LICENSE"), encoding="utf-8").read(2000)
    assert 'license = "Apache-2.0"' in open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8").read()


def test_test_module_names_are_unique():
    """The test directories are not packages: two test files with one basename make pytest refuse both."""
    seen = {}
    for folder, _, files in os.walk(os.path.join(REPO, "tests")):
        for name in files:
            if name.startswith("test_") and name.endswith(".py"):
                assert name not in seen, f"{name} in both {seen[name]} and {folder}: rename one"
                seen[name] = folder


def test_conftest_helpers_are_imported_at_collection_time():
    """`from conftest import ...` inside a test function runs after every directory's conftest has been
    imported under that one name, and gets another directory's: import at module level instead."""
    import re

    for folder, _, files in os.walk(os.path.join(REPO, "tests")):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                assert not re.search(r"^[ \t]+(from conftest import|import conftest)", text, re.M), \
                    f"{os.path.join(folder, name)}: import conftest helpers at module level"
