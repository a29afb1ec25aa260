"""Every command shown in README.md and docs/ is executed by a test, so the docs cannot rot.

Every fenced block names its language. Each block in bash, sh or python is preceded by a directive comment:

    <!-- test: run -->                         this test runs the block (bash with `set -euo pipefail` in a
                                               scratch directory with HPCSYNC_DIR set; python in a fresh
                                               interpreter); it must exit 0.
    <!-- test: covered-by PATH[::TEST] -->     another test or script runs exactly this; the path (and test
                                               function) must exist.

A block without a directive fails this test. Other languages (json, yaml, text) are examples of data.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^```(\w+)?[^\n]*\n(.*?)^```", re.S | re.M)
DIRECTIVE = re.compile(r"<!--\s*test:\s*(run|covered-by)\s*([^>]*?)\s*-->\s*$")
COMMAND_LANGUAGES = {"bash", "sh", "shell", "python", "py"}


def doc_files():
    files = [os.path.join(REPO, "README.md")]
    files += sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
    files += sorted(glob.glob(os.path.join(REPO, "slurm_examples", "*.md")))
    return [f for f in files if os.path.isfile(f)]


def blocks():
    for path in doc_files():
        text = open(path, encoding="utf-8").read()
        for match in FENCE.finditer(text):
            language = (match.group(1) or "").lower()
            if language not in COMMAND_LANGUAGES and language:
                continue
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            line = text[: match.start()].count("\n") + 1
            directive = DIRECTIVE.search(before)
            yield pytest.param(path, line, language, match.group(2), directive,
                               id=f"{os.path.relpath(path, REPO)}:{line}")


ALL_BLOCKS = list(blocks())


def _env(tmp_path):
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "HPCSYNC_STATS": "off", "PATH": f"{bindir}:{os.environ['PATH']}",
           "PYTHONPATH": REPO, "REPO": REPO}
    env.pop("HPCSYNC_DIR", None)
    if not shutil.which("hpc", path=bindir):  # running outside the venv: the same module behind a shim
        shim = tmp_path / "bin"
        shim.mkdir()
        (shim / "hpc").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m hpc "$@"\n')
        (shim / "hpc").chmod(0o755)
        env["PATH"] = f"{shim}:{env['PATH']}"
    return env


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_doc_commands(path, tmp_path):
    """The file's `run` blocks, in order, in one scratch directory (a later block may use what an earlier
    one made, as a reader following the page would); `covered-by` targets must exist."""
    env = _env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for param in ALL_BLOCKS:
        block_path, line, language, code, directive = param.values
        if block_path != path:
            continue
        where = f"{os.path.relpath(path, REPO)}:{line}"
        assert language, f"{where}: a code block without a language: tag it (text, bash, python, yaml, ...)"
        assert directive, (f"{where}: a {language} block without a `<!-- test: run -->` or "
                           "`<!-- test: covered-by PATH -->` comment right above it")
        kind, argument = directive.group(1), directive.group(2)
        if kind == "covered-by":
            target, _, test_name = argument.partition("::")
            target_path = os.path.join(REPO, target)
            assert target and os.path.exists(target_path), f"{where}: covered-by {target!r} does not exist"
            if test_name:
                assert re.search(rf"def {re.escape(test_name)}\b", open(target_path).read()), \
                    f"{where}: {target} has no test {test_name}"
            continue
        if language in ("python", "py"):
            argv = [sys.executable, "-c", code]
        else:
            argv = ["bash", "-c", "set -euo pipefail\n" + code]
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{where} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


def test_docs_have_command_blocks():
    assert len(ALL_BLOCKS) >= 3  # the collector itself works
