"""`bench env`: what the harness sees — GPU, driver, versions, this machine's id, the results folder it would use."""

from __future__ import annotations

import argparse

from bench.commands.common import REFERENCES, RUNS
from bench.measure import nvml


def register(subparsers) -> None:
    p = subparsers.add_parser("env", help="show the GPU, driver and software versions the harness sees")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.provenance import device_slug, provenance

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    info = provenance(device)
    info["results_folder"] = f"{RUNS}/{device_slug(device)}"
    info["reference_folder"] = f"{REFERENCES}/{device_slug(device)}"
    info["cuda_available"] = torch.cuda.is_available()
    info["nvml"] = "available" if nvml.available() else "not available (no NVIDIA driver)"
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0
