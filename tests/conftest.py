import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run the `bench` command line in a subprocess with the test models importable."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture
def bench_cli():
    return run_bench


@pytest.fixture
def bench_here(capsys):
    """`bench.cli.main` in this process, for commands whose test needs no process of their own."""
    from bench.cli import main

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["bench", *args], code, out.out, out.err)

    return run


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped, with the reason, where no CUDA GPU is visible."""
    if not any("gpu" in item.keywords for item in items):
        return
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # asks NVML: CUDA stays uninitialised (fork-safe)
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# mypy takes half a minute of one core: where the run includes its test, it starts once collection is done and
# checks beside the other tests; the test then reads its verdict (tests/test_lint.py).
TYPE_CHECK_TEST = "test_the_package_type_checks"
TYPE_CHECK = pytest.StashKey[tuple[subprocess.Popen, str]]()


def _start_type_check() -> tuple[subprocess.Popen, str]:
    """mypy over what pyproject's [tool.mypy] names, its cache in a scratch folder (the checkout stays clean)."""
    cache = tempfile.mkdtemp(prefix="segbench-mypy-")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mypy", "--cache-dir", cache],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    return proc, cache


def pytest_collection_finish(session):
    if importlib.util.find_spec("mypy") and any(item.name == TYPE_CHECK_TEST for item in session.items):
        session.config.stash[TYPE_CHECK] = _start_type_check()


def pytest_sessionfinish(session):
    proc, cache = session.config.stash.get(TYPE_CHECK, (None, None))
    if proc is not None:
        if proc.poll() is None:  # the run stopped before the test read it
            proc.kill()
            proc.communicate()
        shutil.rmtree(cache, ignore_errors=True)
