import os
import subprocess
import sys
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
