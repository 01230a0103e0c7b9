"""`bench peers`: our models against HF / torchvision / smp in one process, same mode."""

from __future__ import annotations

import argparse
import io
import warnings
from pathlib import Path

import pandas as pd

from bench import protocol as proto
from bench.commands.common import (
    add_common_options,
    csv_list,
    job_progress,
    parse_modes,
    parse_size,
    resolve_device,
)
from bench.errors import BenchError, check_interrupt, described, first_line
from bench.io import ensure_writable_folder, write_text_atomic
from bench.peers import SAME_WORK

# peers.csv: what identifies a row, and what it measured
KEY = ["ours", "peer", "input", "mode"]
MEASURED = ["ours_ms", "peer_ms", "ratio"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "peers",
        help="time our models against HF transformers / torchvision / smp equivalents (ratio > 1: ours faster)",
    )
    p.add_argument("--sizes", default="512x512,1024x2048", help="comma-separated HxW input sizes")
    modes = "eager,graph,graph-fused"
    add_common_options(p, archs="ours with peers", modes=modes, writes="peers.md|csv", device="compute", plugins=False)
    p.add_argument("--force", action="store_true", help="measure again the rows already in peers.csv")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench import peers
    from bench.provenance import device_slug, gpu_handle, provenance

    console = Console(stderr=True)
    device = resolve_device(args.device)
    modes = parse_modes(args.modes)  # an empty --modes is its error, not "CUDA modes only" below
    if device == "cpu":
        gpu_only = [m for m in modes if proto.needs_cuda(m)]
        modes = [m for m in modes if m not in gpu_only]
        if not modes:
            raise BenchError(f"--modes {','.join(gpu_only)}: CUDA modes only; on a CPU pass --modes eager,eager-fused")
    sizes = [parse_size(s, "--sizes") for s in csv_list([args.sizes])]
    if not sizes:
        raise BenchError("--sizes: pass at least one HxW, e.g. --sizes 512x512,1024x2048")
    pairs = peers.select(csv_list(args.arch))
    skipped = sorted({p.requires for p in pairs if not peers.available(p)})
    if skipped:
        console.print(f"[yellow]note:[/] not installed, their peers are skipped: {', '.join(skipped)}")
    pairs = [p for p in pairs if peers.available(p)]
    if not pairs:
        raise BenchError("no peer comparison can run; install the peers (pip install -e '.[peers]') or pick --arch")
    folder = args.results / device_slug(device)
    ensure_writable_folder(folder)  # before any measuring: a row measured must have somewhere to go
    table = PeersTable(folder)
    done = set() if args.force else table.keys()
    handle = gpu_handle(device) if device != "cpu" else None
    speed = proto.SPEED["cuda" if device != "cpu" else "cpu"]
    prov = provenance(device)
    commit = (prov.get("git_commit") or "?")[:10] + ("+changes" if prov.get("git_dirty") else "")
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    planned = [(pair, size, mode) for pair in pairs for size in sizes for mode in modes]
    gflops: dict[tuple, dict[str, float]] = {}  # counted once per pair and size, shared by its modes
    with job_progress(console) as progress:
        task = progress.add_task("comparing", total=len(planned))
        for pair, size, mode in planned:
            check_interrupt()
            size_text = "x".join(map(str, size))
            label = f"{pair.ours} vs {pair.peer} @{size_text} {mode}"
            if (pair.ours, pair.peer, size_text, mode) in done:
                counts["skipped"] += 1
                progress.advance(task)
                continue
            progress.update(task, description=label)
            try:
                row = peers.compare(
                    pair,
                    size,
                    mode,
                    device=device,
                    protocol=speed,
                    num_classes=150 if size[0] == size[1] else 19,
                    nvml_handle=handle,
                    gflops=gflops.setdefault((pair.ours, pair.peer, size), {}),
                )
            except Exception as exc:  # one peer failing (e.g. out of memory) must not end the comparison
                counts["failed"] += 1
                console.print(f"  [red]failed[/] {label}: {described(exc)}")
                progress.advance(task)
                continue
            row["commit"] = commit
            row["protocol"] = proto.PROTOCOL_VERSION
            # written at once: a run cut short keeps what it measured; outside the try, as a failed write
            # (a `BenchError`, the previous file intact) stops the command rather than the next pair's turn
            table.add(row, prov)
            counts["ok"] += 1
            console.print(
                f"  {label}: {row['ours_ms']:.2f} ms vs {row['peer_ms']:.2f} ms -> {row['ratio']:.2f}x"
                + ("" if row["same_work"] else f" (FLOPs {row['ours_gflops']:.1f} vs {row['peer_gflops']:.1f} G)")
            )
            progress.advance(task)
    console.print(
        f"done: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped (already in peers.csv)"
    )
    if counts["ok"] == 0 and counts["skipped"] == 0:
        raise BenchError("no peer comparison ran; see the failures above")
    if counts["ok"]:
        console.print(f"wrote {table.md} and {table.csv.name}")
    return 1 if counts["failed"] else 0  # as `bench run`: 1 when anything failed


class PeersTable:
    """``peers.csv`` and ``peers.md`` of one device folder, rewritten (atomically) after every row.

    Rows already there are kept; a row measured again replaces the one with the same pair, input
    and mode that counts as the same protocol version (`bench.protocol.counts_as`; a row without a
    version is of version 1): a row of a mode a later version changed stays beside the new one.
    A row without its key or timings, or of an unknown mode (a row torn by a run cut short by an
    older writer), is dropped with a warning, and so measured again.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.csv = folder / "peers.csv"
        self.md = folder / "peers.md"
        self.frame = pd.DataFrame()
        if self.csv.exists():
            try:
                data = self.csv.read_bytes()
                self.frame = pd.read_csv(io.BytesIO(data))
            except (OSError, ValueError, pd.errors.ParserError) as exc:
                raise BenchError(
                    f"{self.csv}: unreadable ({first_line(exc)}); move it aside and rerun (a new one is started)"
                ) from None
            if not set(KEY + MEASURED) <= set(self.frame.columns):
                raise BenchError(
                    f"{self.csv}: not a peers table (no {', '.join(KEY + MEASURED)} columns); move it aside"
                )
            self._drop_incomplete(torn_tail=not data.endswith(b"\n"))
            if "protocol" not in self.frame:
                self.frame["protocol"] = "1"  # the rows written before versions were recorded
            self.frame["protocol"] = self.frame["protocol"].fillna("1").astype(str)

    def _drop_incomplete(self, torn_tail: bool) -> None:
        """Drop the rows without their key or timings, of an unknown mode, or (``torn_tail``: the file does not end
        its last line) the last one, whose last value read may be cut short (1.2345 read as 1.2)."""
        for column in MEASURED:
            self.frame[column] = pd.to_numeric(self.frame[column], errors="coerce")
        whole = self.frame[KEY + MEASURED].notna().all(axis=1) & self.frame["mode"].isin(list(proto.MODES))
        if torn_tail and len(whole):
            whole.iloc[-1] = False
        dropped = int((~whole).sum())
        if dropped:
            self.frame = self.frame[whole].reset_index(drop=True)
            warnings.warn(
                f"{self.csv}: dropping {dropped} incomplete row{'s' if dropped > 1 else ''} (torn by a run cut "
                "short, or of an unknown mode); `bench peers` measures them again",
                stacklevel=2,
            )

    def _versions(self) -> pd.Series:
        """The protocol version each row counts as."""
        return pd.Series(
            [proto.counts_as(str(p), m) for p, m in zip(self.frame["protocol"], self.frame["mode"])],
            index=self.frame.index,
            dtype=object,
        )

    def keys(self) -> set[tuple]:
        """The (ours, peer, input, mode) already measured under the current protocol."""
        if not len(self.frame):
            return set()
        current = self.frame[self._versions() == proto.PROTOCOL_VERSION]
        return {tuple(str(v) for v in row) for row in current[KEY].itertuples(index=False)}

    def add(self, row: dict, prov: dict) -> None:
        new = pd.DataFrame([row])
        if len(self.frame):
            same = (self.frame[KEY].astype(str) == new[KEY].astype(str).iloc[0]).all(axis=1)
            same &= self._versions() == proto.counts_as(str(row["protocol"]), row["mode"])
            self.frame = pd.concat([self.frame[~same], new], ignore_index=True)
        else:
            self.frame = new
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.csv, self.frame.to_csv(index=False, float_format="%.4f"))
        write_text_atomic(self.md, self.markdown(prov))

    def markdown(self, prov: dict) -> str:
        where = prov.get("gpu_name") or f"CPU ({prov['cpu']})"
        text = self.frame.to_markdown(index=False, floatfmt=".3f")
        return text + (
            f"\n\nMeasured in one process per run on {where}, torch {prov['torch']} (the last run; each row names "
            "its segbench commit); ratio = peer ms / our ms (> 1: ours faster). Random weights; a step is forward + "
            "resize + argmax, median latency (under the protocol version of its row; the current one is "
            f"v{proto.PROTOCOL_VERSION}). Classes: 150 at square sizes, 19 otherwise. GFLOPs: fvcore with segbench's "
            f"handles, one multiply-add = one FLOP, counted on the models as built; same_work: both sides within "
            f"{100 * SAME_WORK:.0f}%. A -fused mode times both sides in their inference form (BatchNorm folded into "
            "its convolution on both, and under autocast the weights stored in its precision; ours also with its own "
            "exact rewrites); *_executed_gflops: what that form computes. *_channels_last: the memory layout each "
            "side ran in (from v2 a graph mode times both layouts for each side and keeps that side's faster); "
            "ours_fused_kernels: whether ours ran segbench's fused Triton kernels (SegFormer on a GPU; empty in rows "
            "measured before they existed).\n"
        )
