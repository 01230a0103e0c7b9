"""ruff's lint and format checks and mypy run with the suite: code that fails them fails the tests."""

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CHECKED = ("archs", "bench", "tests")


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed (the test extra has it)")
@pytest.mark.parametrize("check", [("check",), ("format", "--check")], ids=["lint", "format"])
def test_the_code_passes_ruff(check):
    # --no-cache: the suite writes nothing into the checkout
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *check, "--no-cache", *CHECKED],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"ruff {' '.join(check)} {' '.join(CHECKED)}:\n{done.stdout}{done.stderr}"


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (the test extra has it)")
def test_the_package_type_checks(tmp_path):
    # pyproject's [tool.mypy] names the files; the cache goes to a scratch folder, not the checkout
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"mypy:\n{done.stdout}{done.stderr}"
