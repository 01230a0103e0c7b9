"""Accuracy-versus-speed plots (matplotlib): mIoU against speed (log), one figure per dataset and speed axis.

Two panels share the mIoU axis and never a speed axis: on the left the speed measured on this device
(a mode's FPS on a GPU, its latency in seconds on a CPU, or the batch sweep's best throughput,
``best-batch``), on the right the published FPS, measured on the sources' GPUs (the panel names the
GPU; a point measured on another one names its own). On the left a filled circle has its mIoU
measured, a filled diamond takes the published mIoU, and the dashed line is the Pareto front; on the
right the points are hollow. Marker area grows with the parameter count. No label overlaps another
label or a marker (`bench.report.labels`); a model with no mIoU to place it by is named under the plot.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "segbench"  # the same SVG for the same records: no churn in results/
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from bench import protocol as proto  # noqa: E402
from bench.io import ensure_writable_folder, write_bytes_atomic  # noqa: E402
from bench.report.labels import place_labels  # noqa: E402
from bench.report.markdown import device_name  # noqa: E402

SPEED_AXES = {**{mode: f"fps_{mode}" for mode in proto.MODES}, "best-batch": "images_s_best"}
MEASURED_COLOUR, PUBLISHED_COLOUR = "tab:blue", "0.4"
LABEL_SIZE = 7
DEFAULT_PARAMS_M = 10.0  # the marker size of a model whose parameter count is neither measured nor published


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


def marker_area(params_m: float) -> float:
    """Scatter marker area (points²) of a model with ``params_m`` million parameters."""
    return 12 + 3 * params_m


@dataclass(frozen=True)
class SpeedAxis:
    """How the measured panel reads one speed axis: the frame column, its scale to the plotted unit, and
    whether lower is faster (a latency)."""

    column: str
    scale: float
    latency: bool
    label: str
    what: str


def speed_axis(dataset: str, speed: str, device: str, where: str) -> SpeedAxis:
    """The measured panel's axis for ``speed`` on ``device`` (``where`` names the device): FPS on a GPU,
    latency in seconds on a CPU, images/s for the batch sweep."""
    if speed not in proto.MODES:
        what = "batch sweep, best batch size"
        return SpeedAxis(f"{dataset}_{SPEED_AXES[speed]}", 1.0, False, f"images/s on {where}, log scale", what)
    precision = proto.MODES[speed]["precision"]
    what = f"{speed}, batch 1" if precision in speed else f"{speed} ({precision}), batch 1"
    if device == "cpu":
        label = f"latency on {where}, s, log scale (faster to the left)"
        return SpeedAxis(f"{dataset}_latency_{speed}_ms", 1e-3, True, label, what)
    return SpeedAxis(f"{dataset}_fps_{speed}", 1.0, False, f"FPS on {where}, log scale", what)


def plain_log_ticks(ax) -> None:
    """Tick labels of a log speed axis as plain numbers ("0.4", "20", not "4×10⁻¹"), minor ticks labelled
    where the axis spans few decades."""
    low, high = ax.get_xlim()
    decades = math.log10(high / low)
    if decades < 0.6:
        mantissas = set(range(2, 10))
    else:
        mantissas = {2, 3, 5} if decades < 1.5 else {2, 5} if decades < 2.5 else set()

    def minor(value, _):
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return f"{value:g}" if mantissa in mantissas else ""

    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor) if mantissas else NullFormatter())


def _label(row) -> str:
    return f"{row['method']} {row['encoder']}"


def _published_label(row, dataset: str, panel_gpu: str | None) -> str:
    """The model's name, and the GPU its published FPS was measured on where that is not the panel's."""
    gpu = row.get(f"{dataset}_fps_published_gpu")
    gpu = gpu if _ok(gpu) else None
    return _label(row) if gpu == panel_gpu else f"{_label(row)} on {gpu or 'a GPU not named'}"


def _area(row) -> float:
    params = row["params_m"] if _ok(row["params_m"]) else row["params_m_published"]
    return marker_area(params if _ok(params) else DEFAULT_PARAMS_M)


def _published_gpu(frame: pd.DataFrame, dataset: str) -> str | None:
    """The GPU most of the plotted published FPS were measured on."""
    gpus = frame.get(f"{dataset}_fps_published_gpu", pd.Series(dtype=object)).dropna()
    return gpus.value_counts(sort=True).index[0] if len(gpus) else None


@dataclass
class _Points:
    """What one figure plots: measured points (row, speed, mIoU, marker), published points (row, FPS, mIoU),
    and the models measured with no mIoU to place them by."""

    measured: list[tuple[Any, float, float, str]] = field(default_factory=list)
    published: list[tuple[Any, float, float]] = field(default_factory=list)
    no_miou: list[str] = field(default_factory=list)


def _points(frame: pd.DataFrame, dataset: str, axis: SpeedAxis) -> _Points:
    """Each row's measured point (its mIoU measured: a circle, else published: a diamond) and published one."""
    points = _Points()
    for _, row in frame.iterrows():
        pub_fps, pub_miou = row.get(f"{dataset}_fps_published"), row.get(f"{dataset}_miou_published")
        if _ok(pub_fps) and _ok(pub_miou):
            points.published.append((row, pub_fps, pub_miou))
        value, miou = row.get(axis.column), row.get(f"{dataset}_miou")
        marker = "o" if _ok(miou) else "D"
        miou = miou if _ok(miou) else pub_miou
        if _ok(value) and _ok(miou):
            points.measured.append((row, value * axis.scale, miou, marker))
        elif _ok(value):
            points.no_miou.append(_label(row))
    return points


def _scatter(left: Axes, right: Axes, points: _Points, axis: SpeedAxis) -> bool:
    """The markers, and the measured Pareto front; whether there is a front to draw (two points or more)."""
    for row, x, y, marker in points.measured:
        left.scatter(
            x, y, s=_area(row), marker=marker, color=MEASURED_COLOUR, alpha=0.8, edgecolors="k", linewidths=0.6
        )
    sign = -1 if axis.latency else 1  # the front's "faster" is the lower latency
    front = pareto_front([(sign * x, y) for _, x, y, _ in points.measured])
    if len(front) > 1:
        xs, ys = zip(*[(sign * x, y) for x, y in front])
        left.plot(xs, ys, color=MEASURED_COLOUR, linestyle="--", linewidth=1)
    for row, x, y in points.published:
        right.scatter(x, y, s=_area(row), facecolors="none", edgecolors=PUBLISHED_COLOUR, linewidths=1.2)
    return len(front) > 1


def _frame_axes(left: Axes, right: Axes, points: _Points, axis: SpeedAxis) -> None:
    """Log speed axes where there are points (a note where there are none), their limits fixed for the labels."""
    for ax, drawn, empty in (
        (left, points.measured, f"no {axis.what} measurement with an mIoU"),
        (right, points.published, "no published FPS with an mIoU"),
    ):
        if drawn:
            ax.set_xscale("log")
            ax.margins(x=0.25, y=0.12)
        else:
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="0.4")
            ax.set_xticks([])
        ax.grid(True, which="both", alpha=0.3)
    for ax, drawn in ((left, points.measured), (right, points.published)):  # fixed before the labels are placed
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
        if drawn:
            plain_log_ticks(ax)


def _titles(left: Axes, right: Axes, dataset: str, axis: SpeedAxis, where: str, gpu: str | None, protocol: str) -> None:
    dsp = proto.DATASETS[dataset]
    fig = left.figure
    height, width = dsp.input_size
    fig.suptitle(f"{dsp.title} ({height}×{width}): mIoU vs speed on {where} and as published (protocol v{protocol})")
    left.set_title(f"measured on {where}: {axis.what}", fontsize=10)
    right.set_title(f"published: FPS on {gpu or 'the sources’ GPUs'}, mIoU", fontsize=10)
    left.set_xlabel(axis.label)
    right.set_xlabel(f"published FPS on {gpu}, log scale" if gpu else "published FPS, log scale")


def _y_label(left: Axes, dataset: str, points: _Points) -> None:
    title = proto.DATASETS[dataset].title
    if points.measured and not any(marker == "o" for *_, marker in points.measured):
        left.set_ylabel(f"{title} mIoU (%), published (none measured here)")
    else:
        left.set_ylabel(f"{title} mIoU (%)")


def _label_points(fig: Figure, left: Axes, right: Axes, points: _Points, dataset: str, gpu: str | None) -> None:
    """Each point's label where there is room; under the plot, the models left unlabelled or unplotted."""
    measured, published = points.measured, points.published
    unlabelled = place_labels(
        left, [(x, y) for _, x, y, _ in measured], [_label(r) for r, *_ in measured], fontsize=LABEL_SIZE, color="k"
    )
    unlabelled += place_labels(
        right,
        [(x, y) for _, x, y in published],
        [_published_label(row, dataset, gpu) for row, *_ in published],
        fontsize=LABEL_SIZE,
        color=PUBLISHED_COLOUR,
    )
    notes = []
    if points.no_miou:  # measured, but with neither a measured nor a published mIoU to place it by
        notes.append(f"not plotted, no {proto.DATASETS[dataset].title} mIoU: " + ", ".join(points.no_miou))
    if unlabelled:
        notes.append("no room to label: " + ", ".join(unlabelled))
    if notes:
        fig.text(0.01, 0.008, "; ".join(notes), fontsize=7, color="0.3")


def draw_dataset(
    frame: pd.DataFrame, dataset: str, speed: str, device: str, provenance: dict | None = None
) -> Figure | None:
    """The figure of one dataset and speed axis (the caller closes it); None when nothing can be plotted."""
    where = device_name(device, provenance) if provenance else ("CPU" if device == "cpu" else "GPU")
    axis = speed_axis(dataset, speed, device, where)
    points = _points(frame, dataset, axis)
    if not points.measured and not points.published:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.8), dpi=120, sharey=True)
    front = _scatter(left, right, points, axis)
    gpu = _published_gpu(frame, dataset)
    _titles(left, right, dataset, axis, where, gpu, frame.attrs.get("protocol", proto.PROTOCOL_VERSION))
    _y_label(left, dataset, points)
    _frame_axes(left, right, points, axis)
    legend = _legend(points.measured, points.published, front)
    fig.legend(
        handles=legend, loc="lower center", bbox_to_anchor=(0.5, 0.03), ncol=len(legend), fontsize=8, frameon=False
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _label_points(fig, left, right, points, dataset, gpu)
    return fig


def _legend(measured: list, published: list, front: bool) -> list[Line2D]:
    """Legend entries for what the figure draws, then two marker sizes as the parameter-count key."""
    handles = []
    markers = {marker for *_, marker in measured}
    if "o" in markers:
        handles.append(Line2D([], [], marker="o", ls="", color=MEASURED_COLOUR, label="measured speed and mIoU"))
    if "D" in markers:
        handles.append(Line2D([], [], marker="D", ls="", color=MEASURED_COLOUR, label="measured speed, published mIoU"))
    if front:
        handles.append(Line2D([], [], color=MEASURED_COLOUR, ls="--", label="Pareto front (measured)"))
    if published:
        handles.append(
            Line2D([], [], marker="o", ls="", mfc="none", mec=PUBLISHED_COLOUR, label="published FPS and mIoU")
        )
    for params in (10, 100):
        size = math.sqrt(marker_area(params))
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec="0.6", ms=size, label=f"{params} M params"))
    return handles


def plot_dataset(
    frame: pd.DataFrame, dataset: str, speed: str, device: str, out_stem: Path, provenance: dict | None = None
) -> list[Path]:
    """Write ``<out_stem>.png`` and ``.svg``; returns the paths (none when nothing can be plotted)."""
    fig = draw_dataset(frame, dataset, speed, device, provenance)
    if fig is None:
        return []
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


def write_plots(
    frame: pd.DataFrame,
    folder: Path,
    *,
    device: str,
    speeds: tuple[str, ...] | None = None,
    provenance: dict | None = None,
) -> list[Path]:
    """One plot per dataset and speed axis: the axes asked for, else every measured one (eager at least).

    An axis asked for that no record of the dataset measured gets no plot (rather than an empty one).
    Regenerating every axis also removes the plot files of an axis that now has no measurement (a
    protocol version changed the mode): the plots left are those of the records. File names carry
    the version when it is not the current one (`bench.protocol.file_suffix`). ``provenance`` (the
    newest record's) names the device in the titles.
    """
    suffix = proto.file_suffix(frame.attrs.get("protocol", proto.PROTOCOL_VERSION))
    paths = []
    for dataset in proto.DATASETS:
        for speed in speeds or tuple(SPEED_AXES):
            column = f"{dataset}_{SPEED_AXES[speed]}"
            measured = column in frame and frame[column].notna().any()
            stem = folder / "plots" / f"{dataset}_{speed}{suffix}"
            if measured or (speed == "eager" and not speeds):
                paths += plot_dataset(frame, dataset, speed, device, stem, provenance)
            elif not speeds:
                for stale in (stem.with_suffix(".png"), stem.with_suffix(".svg")):
                    stale.unlink(missing_ok=True)
    return paths
