"""`bench data synth`: write a generated dataset in the real on-disk layout (smoke tests, throughput)."""

from __future__ import annotations

import argparse
import re

from bench.commands.common import path_arg
from bench.errors import BenchError


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="generate datasets in the ADE20K / Cityscapes layouts")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    synth = actions.add_parser(
        "synth",
        help="write N generated image/label pairs in a dataset's on-disk layout",
        description="Random label maps and colour-coded images in the real layout (ADEChallengeData2016 or "
        "leftImg8bit + gtFine), to smoke-test `bench eval` on a box or benchmark its input pipeline.",
    )
    synth.add_argument("--dataset", required=True, choices=("ade20k", "cityscapes"))
    synth.add_argument(
        "--out",
        required=True,
        type=path_arg,
        help="output folder (its split folders must be empty or absent; rerun an interrupted command to resume)",
    )
    synth.add_argument("--num", type=int, required=True, help="number of image/label pairs")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--size", default=None, help="HxW of every image (default: ADE20K-like sizes; 1024x2048)")
    synth.add_argument("--train-ids", action="store_true", help="Cityscapes: also write *_labelTrainIds.png")
    synth.set_defaults(handler=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from bench.data import synthetic

    if args.num < 1:
        raise BenchError(f"--num {args.num}: pass a positive number of images")
    if args.seed < 0:
        raise BenchError(f"--seed {args.seed}: pass a seed of 0 or more")
    kwargs = {"seed": args.seed}
    if args.size:
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", args.size)
        if not match or min(int(match[1]), int(match[2])) < 1:
            raise BenchError(f"--size {args.size!r}: expected HxW, e.g. 512x683")
        size = (int(match[1]), int(match[2]))
        kwargs.update({"sizes": (size,)} if args.dataset == "ade20k" else {"size": size})
    if args.train_ids:
        if args.dataset != "cityscapes":
            raise BenchError("--train-ids applies to --dataset cityscapes only")
        kwargs["train_ids"] = True
    root = synthetic.write(args.dataset, args.out, args.num, **kwargs)
    print(f"{root} holds {args.num} generated {args.dataset} pairs")
    print(f"  marked as generated ({synthetic.MANIFEST} in its image folder): evaluations of it say synthetic")
    print(f"  try: bench eval ARCH --dataset {args.dataset} --data-root {root} --weights none")
    return 0
