"""Where a measurement was taken: software versions, git commit, device, host, time."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
from pathlib import Path

import torch

from archs import kernels
from bench import __version__
from bench.measure import nvml

# names the commit of a checkout copied without its .git folder
COMMIT_ENV = "SEGBENCH_GIT_COMMIT"
# names the measuring machine in place of the identity read from the system
MACHINE_ENV = "SEGBENCH_MACHINE_ID"
# where systemd and D-Bus keep the installation's random id
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def slugify(text: str) -> str:
    """``Intel(R) Xeon(R) Platinum 8481C CPU`` -> ``intel-xeon-platinum-8481c-cpu`` (marks dropped)."""
    text = re.sub(r"\((r|tm|c)\)", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cuda_index(device: str) -> int:
    return torch.device(device).index or 0


def gpu_handle(device: str):
    """NVML handle of the CUDA device ``device`` (matched by UUID), or None."""
    index = cuda_index(device)
    uuid = None
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except Exception:
        pass
    return nvml.handle(index, uuid)


def gpu_name(device: str) -> str:
    name = nvml.gpu_info(gpu_handle(device)).get("gpu_name")
    return name or torch.cuda.get_device_name(cuda_index(device))


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """This computer: a short hash of its installation's machine-id (where there is one) and its host name.

    The two together tell apart hosts cloned from one image (same machine-id) and hosts that share a
    name; neither is secret, and the hash keeps them out of the records.
    """
    installation = ""
    for name in MACHINE_ID_FILES:
        try:
            installation = Path(name).read_text().strip()
        except OSError:
            continue
        if installation:
            break
    return _short_hash("host", installation, socket.gethostname())


def gpu_uuid(device: str) -> str | None:
    """The UUID of the CUDA device ``device`` (without NVML's ``GPU-``/``MIG-`` prefix), or None."""
    try:
        uuid = str(torch.cuda.get_device_properties(cuda_index(device)).uuid)
    except Exception:
        return None
    return uuid.lower().removeprefix("gpu-").removeprefix("mig-") or None


def machine_id(device: str) -> str:
    """What measured on ``device``: the GPU board on a CUDA device (a hash of its UUID), else this computer
    (`host_id`); ``$SEGBENCH_MACHINE_ID`` names it instead when set.

    `bench run` reuses a record only when it names this machine: a CPU or GPU model's name is shared by
    every machine that has one.
    """
    named = os.environ.get(MACHINE_ENV, "").strip()
    if named:
        return named
    if torch.device(device).type == "cuda":
        uuid = gpu_uuid(device)
        if uuid:
            return _short_hash("gpu", uuid)
    return host_id()


def local_machine_ids() -> set[str]:
    """The `machine_id` of every device this process sees: this computer and each visible CUDA device."""
    named = os.environ.get(MACHINE_ENV, "").strip()
    if named:
        return {named}
    ids = {host_id()}
    if torch.cuda.is_available():
        ids.update(machine_id(f"cuda:{index}") for index in range(torch.cuda.device_count()))
    return ids


def device_slug(device: str) -> str:
    """Folder name under runs/ and results/: the GPU model, or ``cpu-<processor model>`` (a kind of device, which
    many machines share: `machine_id` tells them apart)."""
    if torch.device(device).type == "cuda":
        return slugify(gpu_name(device))
    return "cpu-" + slugify(cpu_model())


CHECKOUT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=2)
def git_commit(root: Path = CHECKOUT) -> dict:
    """Commit of the segbench checkout at ``root`` and whether it is dirty.

    A copy without ``.git`` (an exported tree, a wheel) names its commit through
    ``$SEGBENCH_GIT_COMMIT`` (dirty unknown), else None.
    """
    if not (root / ".git").exists():
        return {"commit": os.environ.get(COMMIT_ENV) or None, "dirty": None}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        commit = head.stdout.strip() if head.returncode == 0 else ""
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return {"commit": commit or None, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def software() -> dict:
    return {
        "segbench": __version__,
        **{f"git_{k}": v for k, v in git_commit().items()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "fvcore": _version("fvcore"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _version("triton"),
        # SegFormer's fused kernels in this process (`archs.kernels.report`): used, not used, off or failed
        "fused_kernels": kernels.report(),
    }


def provenance(device: str) -> dict:
    """Everything a record carries about where and how it was measured."""
    info = {
        **software(),
        "device": torch.device(device).type,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "machine_id": machine_id(device),
        "torch_threads": torch.get_num_threads(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if info["device"] == "cuda":
        info.update(nvml.gpu_info(gpu_handle(device)))
        info.setdefault("gpu_name", torch.cuda.get_device_name(cuda_index(device)))
        info["gpu_name"] = info["gpu_name"] or torch.cuda.get_device_name(cuda_index(device))
    return info
