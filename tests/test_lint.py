"""ruff's lint and format checks and mypy run with the suite: code that fails them fails the tests."""

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TYPE_CHECK

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
def test_the_package_type_checks(request):
    # started by tests/conftest.py when collection ends, so that it runs beside the other tests
    proc, _ = request.config.stash[TYPE_CHECK]
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"mypy:\n{output}"
