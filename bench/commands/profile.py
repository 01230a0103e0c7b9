"""`bench profile`: where one model's inference step spends its time, operator by operator."""

from __future__ import annotations

import argparse
import re

from bench import protocol as proto
from bench.commands.common import (
    add_common_options,
    build_model,
    load_plugins,
    parse_dataset,
    parse_size,
    resolve_device,
)
from bench.errors import BenchError, first_line, is_out_of_memory
from bench.io import ensure_writable_folder, write_text_atomic

LAYOUTS = {"mode": None, "channels_last": True, "contiguous": False}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="the inference step of one model (or its peer) under torch.profiler: time per operator",
    )
    p.add_argument("arch", help="registered model")
    p.add_argument("--dataset", default="ade20k", help="protocol dataset: input size and classes (default ade20k)")
    p.add_argument("--size", default=None, help="HxW input instead of the protocol's (classes stay the dataset's)")
    p.add_argument("--mode", default=None, help="speed mode (default: graph on a GPU, eager on a CPU)")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="mode",
        help="memory layout: the mode's (default; where it is auto, the faster of the two, timed), or held to one",
    )
    p.add_argument("--steps", type=int, default=5, help="steps profiled after the warm-up (default 5)")
    p.add_argument("--top", type=int, default=25, help="operators listed (default 25)")
    p.add_argument("--peer", action="store_true", help="profile the model's peer (`bench peers`) instead of ours")
    add_common_options(p, writes="profiles/", device="compute")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import archs
    from archs import kernels
    from bench import peers
    from bench.measure.profile import profile_step
    from bench.provenance import device_slug, provenance

    load_plugins(args)
    device = resolve_device(args.device)
    mode = args.mode if args.mode is not None else ("eager" if device == "cpu" else "graph")
    if mode not in proto.MODES:
        raise BenchError(f"--mode: unknown mode {mode!r}; choose from {', '.join(proto.MODES)}")
    if device == "cpu" and proto.needs_cuda(mode):
        raise BenchError(f"--mode {mode} needs a CUDA GPU; on a CPU use eager or eager-fused")
    for option, value in (("--steps", args.steps), ("--top", args.top)):
        if value < 1:
            raise BenchError(f"{option} {value}: give a positive number")
    spec = archs.get_spec(args.arch)  # an unknown name: the registry's error with the closest names
    ds = parse_dataset(args.dataset)
    size = parse_size(args.size, "--size") if args.size is not None else proto.input_size(spec, ds.name)
    if args.peer:
        pair = next((p for p in peers.select([spec.name]) if peers.available(p)), None)
        if pair is None:
            raise BenchError(f"the peers of {spec.name} are not installed (pip install -e '.[peers]')")
        subject, model = pair.peer, pair.build_peer(ds.num_classes)
    else:
        subject, model = spec.name, build_model(spec.name, ds.num_classes)
    folder = args.results / device_slug(device) / "profiles"
    ensure_writable_folder(folder)
    size_text = "x".join(map(str, size))
    print(f"profiling {subject} at {size_text}, {mode}, {args.steps} steps on {device}")
    try:
        result = profile_step(
            model, size, device=device, mode=mode, protocol=proto.SPEED["cpu" if device == "cpu" else "cuda"],
            steps=args.steps, channels_last=LAYOUTS[args.layout],
        )  # fmt: skip
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise BenchError(f"{subject} at {size_text}: out of memory on {device}; pass a smaller --size") from None
        if args.size is None:
            raise
        reason = first_line(exc)
        raise BenchError(
            f"{subject} cannot run at --size {args.size} ({reason}); pass a size it takes, e.g. the protocol's "
            f"{'x'.join(map(str, proto.input_size(spec, ds.name)))}"
        ) from None
    text = _markdown(result, subject, size_text, mode, args.top, provenance(device))
    held = "" if args.layout == "mode" else f"-{args.layout}"
    if kernels.switched_off():  # beside the profile with SegFormer's fused kernels, not over it
        held += "-kernels-off"
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{subject}-{size_text}-{mode}{held}").strip("-").lower()
    path = folder / f"{name}.md"
    write_text_atomic(path, text)
    print(text)
    print(f"wrote {path}")
    return 0


def _markdown(result, subject: str, size: str, mode: str, top: int, prov: dict) -> str:
    import pandas as pd

    where = prov.get("gpu_name") or f"CPU ({prov.get('cpu')})"
    column = "self device ms/step" if result.timed_on == "device" else "self CPU ms/step"
    frame = pd.DataFrame(
        [(o.name, o.calls, o.self_ms, 100.0 * o.share) for o in result.operators[:top]],
        columns=["operator", "calls/step", column, "share %"],
    )
    shown = sum(o.share for o in result.operators[:top])
    layout = "channels_last" if result.channels_last else "NCHW"
    if result.layout_ms:
        probed = ", ".join(f"{k} {v:.3f} ms" for k, v in result.layout_ms.items())
        layout += f" (the faster in the mode's probe of both layouts, captured: {probed})"
    lines = [
        f"# {subject} at {size}, mode {mode}",
        "",
        f"{result.total_ms:.3f} ms of {'device' if result.timed_on == 'device' else 'CPU'} time per step, summed "
        f"over operators' self times; the {len(frame)} largest of {len(result.operators)} operators below "
        f"({100 * shown:.1f}% of it).",
        "",
        frame.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"Profiled with torch.profiler on {where}, torch {prov.get('torch')}, segbench "
        f"{(prov.get('git_commit') or '?')[:10]}: {result.steps} step{'s' * (result.steps != 1)} after the "
        "protocol's warm-up, batch 1, random input; a step is forward + resize + argmax as `bench run` times "
        f"it, a graph mode uncaptured (its kernels launched one by one). Memory layout: {layout}."
        + (f" Inference form: {result.inference_form}." if result.inference_form else "")
        + f" segbench's fused kernels (`archs.kernels`): {prov.get('fused_kernels')}.",
        "",
    ]
    return "\n".join(lines)
