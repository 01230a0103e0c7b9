"""Tiny models registered only in the tests (import this module: `--plugin tests.toy_models`).

toy-* are small real models; fault-* inject one failure each into their forward pass; `HoldJobs` holds
chosen jobs of a suite until they are killed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archs import ArchSpec, Published, register


class ToyNet(nn.Module):
    """conv s2 -> BN -> ReLU -> conv s2 -> 1x1 classifier: logits at stride 4."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.down = nn.Conv2d(width, width, 3, 2, 1)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.relu(self.down(self.stem(x))))


def _spec(name: str, scale: str = "realtime", **kw) -> ArchSpec:
    return ArchSpec(
        name=name, family="Toy", encoder=name, scale=scale, paper="segbench tests", year=2026, output_stride=4, **kw
    )


SMALL = {"ade20k": (64, 64), "cityscapes": (64, 128)}

for width in (4, 8, 12, 16, 20):
    register(
        _spec(
            f"toy-w{width}",
            input_size=SMALL,
            published={"ade20k": Published(params_m=0.001, gflops=0.001, fps=100.0, miou=10.0 + width, source="test")},
        )
    )(lambda *, num_classes, _w=width: ToyNet(num_classes, _w))


class Fault(ToyNet):
    def __init__(self, num_classes: int, fault: str) -> None:
        super().__init__(num_classes)
        self.fault = fault

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fault == "raise":
            raise RuntimeError("injected fault in forward")
        if self.fault == "oom":
            torch.empty(1 << 62, dtype=torch.uint8)  # asks for 4 EiB: the allocator refuses
        if self.fault == "hang":
            time.sleep(3600)
        if self.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


for fault in ("raise", "oom", "hang", "kill"):
    register(_spec(f"fault-{fault}", input_size=SMALL))(lambda *, num_classes, _f=fault: Fault(num_classes, _f))


def _broken_builder(*, num_classes: int):
    raise ValueError("injected fault in the builder")


register(_spec("fault-build", input_size=SMALL))(_broken_builder)


@dataclass(frozen=True)
class HoldJobs:
    """What a job's child runs in place of `bench.jobs._measure_job` (patch it in the run's process; it is pickled
    into each child, where the module's own is the real one): the measurement, except for the jobs of ``held``,
    which write their pid to their file and wait to be killed.

    Args:
        held: (job, pid file) pairs.
    """

    held: tuple[tuple[Any, str], ...]

    def __call__(self, job: Any, options: Any) -> dict:
        from bench import jobs

        path = dict(self.held).get(job)
        if path is None:
            return jobs._measure_job(job, options)
        Path(path + ".tmp").write_text(str(os.getpid()))
        os.replace(path + ".tmp", path)
        threading.Event().wait()
        return {}
