"""Plot labels never overlap one another or a marker, even in a cluster as dense as the ResNet-101 models'."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.text import Text

from bench.report.plot import draw_dataset

METHODS = ("FCN", "PSPNet", "CCNet", "EncNet", "DeepLabV3+", "OCRNet")


def _row(arch, method, encoder, params_m, fps, miou, gpu="V100"):
    return {
        "group": "Non Real-Time",
        "arch": arch,
        "method": method,
        "encoder": encoder,
        "params_m": params_m,
        "params_m_published": None,
        "ade20k_fps_eager": fps,
        "ade20k_latency_eager_ms": 1000 / fps,
        "ade20k_miou": None,
        "ade20k_miou_published": miou,
        "ade20k_fps_published": fps,
        "ade20k_fps_published_gpu": gpu,
    }


def dense_frame(n: int = 36) -> pd.DataFrame:
    """``n`` models within 13.5-15.5 FPS and 41-45.5 mIoU (the published ResNet-101 cluster spans 14.1-15.3 FPS
    and 41.4-45.6 mIoU), and two far apart that stretch the axes as the real plots' do."""
    rng = np.random.default_rng(0)
    rows = [
        _row(f"m{i}", METHODS[i % 6], f"ResNet-101 v{i}", rng.uniform(40, 70), 10 ** rng.uniform(1.13, 1.19),
             rng.uniform(41, 45.5))
        for i in range(n)
    ]  # fmt: skip
    rows.append(_row("small", "FCN", "MobileNetV2", 9.6, 64.4, 19.7, gpu="Titan X Maxwell"))
    rows.append(_row("large", "SETR", "ViT-Large", 308.0, 5.4, 50.2))
    return pd.DataFrame(rows)


def point_labels(fig) -> list:
    return [text for ax in fig.axes for text in ax.texts if text.get_gid() == "point-label"]


def marker_circles(ax) -> list[tuple[float, float, float]]:
    """Each scatter marker as (x, y, radius) in display pixels, from its collection's offsets, sizes and path."""
    circles = []
    for collection in ax.collections:
        if isinstance(collection, PathCollection):
            extents = collection.get_paths()[0].get_extents()
            reach = max(abs(extents.x0), abs(extents.x1), abs(extents.y0), abs(extents.y1))
            centres = ax.transData.transform(collection.get_offsets())
            sizes = np.broadcast_to(collection.get_sizes(), (len(centres),))
            circles += [(x, y, np.sqrt(s) * reach * ax.figure.dpi / 72) for (x, y), s in zip(centres, sizes)]
    return circles


def overlaps(fig) -> list[str]:
    """Every label that overlaps another label, covers a marker or leaves its panel, as a sentence."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        labels = [t for t in ax.texts if t.get_gid() == "point-label"]
        boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text alone, not its leader line
        panel = ax.get_window_extent(renderer)
        markers = marker_circles(ax)
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                if boxes[a].overlaps(boxes[b]):
                    found.append(f"{labels[a].get_text()!r} overlaps {labels[b].get_text()!r}")
            box = boxes[a]
            if box.x0 < panel.x0 or box.x1 > panel.x1 or box.y0 < panel.y0 or box.y1 > panel.y1:
                found.append(f"{labels[a].get_text()!r} leaves its panel")
            for x, y, r in markers:
                dx = max(box.x0 - x, 0, x - box.x1)
                dy = max(box.y0 - y, 0, y - box.y1)
                if dx * dx + dy * dy < r * r:
                    found.append(f"{labels[a].get_text()!r} covers the marker at ({x:.0f}, {y:.0f})")
    return found


@pytest.fixture(scope="module")
def dense_figure():
    import matplotlib.pyplot as plt

    fig = draw_dataset(dense_frame(), "ade20k", "eager", "cuda", {"gpu_name": "Test GPU"})
    yield fig
    plt.close(fig)


def test_no_label_of_a_dense_cluster_overlaps_another_label_or_a_marker(dense_figure):
    labels = point_labels(dense_figure)
    assert len(labels) == 2 * 38  # every point of both panels is labelled
    assert overlaps(dense_figure) == []


def test_the_overlap_check_finds_the_overlaps_of_labels_at_one_fixed_offset(dense_figure):
    """The same labels each put at (4, 4) points from their point, as a naive placement does, overlap."""
    labels = point_labels(dense_figure)
    placed = [label.xyann for label in labels]
    try:
        for label in labels:
            label.xyann = (4, 4)
        found = overlaps(dense_figure)
    finally:
        for label, offset in zip(labels, placed):
            label.xyann = offset
    assert any(" overlaps " in line for line in found) and any(" covers the marker " in line for line in found)


def test_the_published_panel_names_a_gpu_other_than_its_own_and_measured_speed_has_its_own_axis(dense_figure):
    measured, published = dense_figure.axes
    assert "published FPS on V100" in published.get_xlabel() and "FPS on Test GPU" in measured.get_xlabel()
    texts = {t.get_text() for t in published.texts}
    assert "FCN MobileNetV2 on Titan X Maxwell" in texts and "SETR ViT-Large" in texts


def test_a_cpu_plot_says_cpu_in_its_title_and_plots_latency_in_seconds():
    import matplotlib.pyplot as plt

    frame = dense_frame(4)
    fig = draw_dataset(frame, "ade20k", "eager", "cpu", {"cpu": "Test CPU", "torch_threads": 2})
    try:
        measured = fig.axes[0]
        assert "CPU (Test CPU, 2 threads)" in fig._suptitle.get_text()
        assert measured.get_xlabel().startswith("latency on CPU (Test CPU, 2 threads), s")
        xs = sorted(x for c in measured.collections for x, _ in c.get_offsets())
        assert xs == pytest.approx(sorted(1 / frame["ade20k_fps_eager"]))  # seconds, not FPS
    finally:
        plt.close(fig)
