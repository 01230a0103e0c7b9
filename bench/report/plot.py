"""Accuracy-versus-speed plots (matplotlib): mIoU against a speed axis (log), one per dataset.

The speed axis is any measured speed mode's FPS (``eager``, ``graph``, ``compile``, ...) or the
batch sweep's best throughput (``best-batch``, images/s).

Published points are hollow; measured-speed points are filled (a circle when the mIoU was
measured too, a diamond when it is the published mIoU). Marker area is proportional to the
parameter count; the line is the Pareto front of the measured points. A model measured with no
mIoU to place it by (neither measured nor published) is named under the plot.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "segbench"  # the same SVG for the same records: no churn in results/
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench import protocol as proto  # noqa: E402
from bench.records import ensure_writable_folder, write_bytes_atomic  # noqa: E402

SPEED_AXES = {**{mode: f"fps_{mode}" for mode in proto.MODES}, "best-batch": "images_s_best"}


def _ok(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten on both speed and accuracy, sorted by speed (higher is better on both)."""
    front, best = [], -math.inf
    for fps, miou in sorted(points, key=lambda p: (-p[0], -p[1])):
        if miou > best:
            front.append((fps, miou))
            best = miou
    return sorted(front)


def plot_dataset(frame: pd.DataFrame, dataset: str, speed: str, device: str, out_stem: Path) -> list[Path]:
    """Write ``<out_stem>.png`` and ``.svg``; returns the paths (none when nothing can be plotted)."""
    title = proto.DATASETS[dataset].title
    fps_col = f"{dataset}_{SPEED_AXES[speed]}"
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=120)
    measured, kinds, no_miou = [], set(), []
    for _, row in frame.iterrows():
        size = 30 + 6 * (row["params_m"] if _ok(row["params_m"]) else row["params_m_published"] or 10)
        label = f"{row['method']} {row['encoder']}"
        pub_fps, pub_miou = row.get(f"{dataset}_fps_published"), row.get(f"{dataset}_miou_published")
        if _ok(pub_fps) and _ok(pub_miou):
            ax.scatter(pub_fps, pub_miou, s=size, facecolors="none", edgecolors="0.45", linewidths=1.2)
            ax.annotate(
                label, (pub_fps, pub_miou), fontsize=7, color="0.45", xytext=(4, -8), textcoords="offset points"
            )
            kinds.add("published")
        fps, miou = row.get(fps_col), row.get(f"{dataset}_miou")
        marker = "o"
        if not _ok(miou):
            miou, marker = pub_miou, "D"
        if _ok(fps) and _ok(miou):
            ax.scatter(fps, miou, s=size, marker=marker, color="tab:blue", alpha=0.8, edgecolors="k", linewidths=0.6)
            ax.annotate(label, (fps, miou), fontsize=7, xytext=(4, 4), textcoords="offset points")
            measured.append((fps, miou))
            kinds.add(marker)
        elif _ok(fps):
            no_miou.append(label)
    if not kinds:
        plt.close(fig)
        return []
    front = pareto_front(measured)
    if len(front) > 1:
        ax.plot(*zip(*front), color="tab:blue", linestyle="--", linewidth=1, label="Pareto front (measured)")
    ax.set_xscale("log")
    where = "CPU" if device == "cpu" else "GPU"
    if speed in proto.MODES:
        ax.set_xlabel(f"FPS, log scale (measured: {where}, {speed} {proto.MODES[speed]['precision']}, batch 1)")
    else:
        ax.set_xlabel(f"images/s at the best batch size, log scale (measured: {where}, batch sweep)")
    ax.set_ylabel(f"{title} mIoU (%)")
    ax.set_title(f"{title}: accuracy vs speed (protocol v{frame.attrs.get('protocol', proto.PROTOCOL_VERSION)})")
    markers = {
        "published": plt.Line2D(
            [], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.45",
            label="published FPS and mIoU",
        ),
        "o": plt.Line2D([], [], marker="o", linestyle="", color="tab:blue", label="measured FPS, measured mIoU"),
        "D": plt.Line2D([], [], marker="D", linestyle="", color="tab:blue", label="measured FPS, published mIoU"),
    }  # fmt: skip
    legend = [handle for kind, handle in markers.items() if kind in kinds]
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(
        handles=legend + handles,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="marker area ∝ params",
        title_fontsize=7,
    )
    ax.margins(x=0.12, y=0.06)
    ax.grid(True, which="both", alpha=0.3)
    if no_miou:  # measured, but with neither a measured nor a published mIoU to place it by
        fig.text(0.01, 0.01, f"not plotted, no {title} mIoU: " + ", ".join(no_miou), fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.03 if no_miou else 0, 1, 1))
    try:
        fix = "make it a writable folder (or move aside what is there) and rerun"
        ensure_writable_folder(out_stem.parent, what="plots folder", fix=fix)
        paths = []
        for ext in ("png", "svg"):
            path = out_stem.with_suffix(f".{ext}")
            image = io.BytesIO()
            fig.savefig(image, format=ext, metadata={"Date": None} if ext == "svg" else None)
            write_bytes_atomic(path, image.getvalue())
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


def write_plots(frame: pd.DataFrame, folder: Path, *, device: str, speeds: tuple[str, ...] | None = None) -> list[Path]:
    """One plot per dataset and speed axis: the axes asked for, else every measured one (eager at least).

    An axis asked for that no record of the dataset measured gets no plot (rather than an empty one).
    Regenerating every axis also removes the plot files of an axis that now has no measurement (a
    protocol version changed the mode): the plots left are those of the records. File names carry
    the version when it is not the current one (`bench.protocol.file_suffix`).
    """
    suffix = proto.file_suffix(frame.attrs.get("protocol", proto.PROTOCOL_VERSION))
    paths = []
    for dataset in proto.DATASETS:
        for speed in speeds or tuple(SPEED_AXES):
            column = f"{dataset}_{SPEED_AXES[speed]}"
            measured = column in frame and frame[column].notna().any()
            stem = folder / "plots" / f"{dataset}_{speed}{suffix}"
            if measured or (speed == "eager" and not speeds):
                paths += plot_dataset(frame, dataset, speed, device, stem)
            elif not speeds:
                for stale in (stem.with_suffix(".png"), stem.with_suffix(".svg")):
                    stale.unlink(missing_ok=True)
    return paths
