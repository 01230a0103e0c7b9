"""Point labels on a scatter plot that overlap neither one another nor any marker (matplotlib).

Greedy and deterministic: the points with the most neighbours are labelled first; each label takes
the free spot nearest its point, one of the eight spots touching its marker where one is free, else
the nearest free spot anywhere in the panel, joined to its point by a thin leader line. Lines already
drawn (a Pareto front) are kept clear too. Positions are worked out in display pixels, so call
`place_labels` once the figure's layout and the axes' limits are final; the labels are offsets in
points from their points and survive saving at any dpi.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection

if TYPE_CHECKING:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

GAP_PX = 2.0  # the clearance kept between a label and any other label, marker, line or the panel's edge
NEIGHBOURHOOD_PX = 60.0  # points closer than this count as crowding one another
LINE_STEP_PX = 3.0  # a line is kept clear as circles this far apart (GAP_PX around each covers the gaps)
DIAGONAL = math.sqrt(0.5)
PIXEL_REACH = math.sqrt(0.5)  # from a pixel's centre to its corners


def marker_circles(ax: Axes) -> np.ndarray:
    """Every scatter marker of ``ax`` as a circle in display pixels: rows of (x, y, radius)."""
    circles = []
    pixels_per_point = ax.figure.dpi / 72
    for collection in ax.collections:
        offsets = np.asarray(collection.get_offsets(), dtype=float)
        if not isinstance(collection, PathCollection) or not len(offsets):
            continue
        centres = ax.transData.transform(offsets)
        # a scatter path has unit size: its farthest vertex times sqrt(s) is the marker's reach in points
        reach = max(np.abs(path.vertices).max() for path in collection.get_paths())
        sizes = np.broadcast_to(collection.get_sizes(), (len(centres),))
        edge = np.broadcast_to(collection.get_linewidth(), (len(centres),)) / 2
        radii = (np.sqrt(sizes) * reach + edge) * pixels_per_point
        circles += [(x, y, r) for (x, y), r in zip(centres, radii)]
    return np.array(circles, dtype=float).reshape(-1, 3)


def line_circles(ax: Axes) -> np.ndarray:
    """The lines drawn in ``ax`` (a Pareto front) as chains of small circles in display pixels: rows of
    (x, y, radius)."""
    circles = []
    for line in ax.lines:
        vertices = ax.transData.transform(np.column_stack(line.get_data()).astype(float))
        radius = line.get_linewidth() * ax.figure.dpi / 72 / 2
        for start, end in zip(vertices[:-1], vertices[1:]):
            steps = max(int(np.hypot(*(end - start)) / LINE_STEP_PX), 1)
            circles += [(*(start + t * (end - start)), radius) for t in np.linspace(0, 1, steps + 1)]
    return np.array(circles, dtype=float).reshape(-1, 3)


class Occupancy:
    """What a panel has drawn or placed, to find free spots for a label: exact shapes (circles, boxes) for
    single candidates, and a pixel mask of the same shapes, each pixel that could touch one marked, to
    search the whole panel at once."""

    def __init__(self, panel) -> None:
        self.panel = panel
        self.left, self.bottom = math.floor(panel.x0), math.floor(panel.y0)
        self.mask = np.zeros((math.ceil(panel.y1) - self.bottom, math.ceil(panel.x1) - self.left), dtype=bool)
        self.circles = np.zeros((0, 3))
        self.boxes: list[tuple] = []
        edge = math.ceil(GAP_PX) + 1  # the panel's edge, kept GAP_PX clear
        self.mask[:edge] = self.mask[-edge:] = True
        self.mask[:, :edge] = self.mask[:, -edge:] = True

    def add_circles(self, circles: np.ndarray) -> None:
        self.circles = np.concatenate([self.circles, circles])
        rows, cols = self.mask.shape
        for x, y, r in circles:
            reach = r + GAP_PX + PIXEL_REACH
            i0, i1 = max(math.floor(x - reach) - self.left, 0), min(math.ceil(x + reach) - self.left, cols)
            j0, j1 = max(math.floor(y - reach) - self.bottom, 0), min(math.ceil(y + reach) - self.bottom, rows)
            if i0 >= i1 or j0 >= j1:
                continue
            xs = np.arange(i0, i1) + self.left + 0.5
            ys = np.arange(j0, j1) + self.bottom + 0.5
            self.mask[j0:j1, i0:i1] |= (xs[None, :] - x) ** 2 + (ys[:, None] - y) ** 2 < reach**2

    def add_box(self, box: tuple) -> None:
        self.boxes.append(box)
        x0, y0, x1, y1 = box
        i0, i1 = math.floor(x0 - GAP_PX) - self.left, math.ceil(x1 + GAP_PX) - self.left
        j0, j1 = math.floor(y0 - GAP_PX) - self.bottom, math.ceil(y1 + GAP_PX) - self.bottom
        self.mask[max(j0, 0) : max(j1, 0), max(i0, 0) : max(i1, 0)] = True

    def is_free(self, box: tuple) -> bool:
        """Whether ``box`` (x0, y0, x1, y1) lies inside the panel, GAP_PX clear of everything added."""
        x0, y0, x1, y1 = box
        panel = self.panel
        if x0 < panel.x0 + GAP_PX or x1 > panel.x1 - GAP_PX or y0 < panel.y0 + GAP_PX or y1 > panel.y1 - GAP_PX:
            return False
        if len(self.circles):
            cx, cy, r = self.circles.T
            dx = np.maximum(np.maximum(x0 - cx, cx - x1), 0)
            dy = np.maximum(np.maximum(y0 - cy, cy - y1), 0)
            if ((dx**2 + dy**2) < (r + GAP_PX) ** 2).any():
                return False
        return all(
            x1 + GAP_PX <= b0 or b1 + GAP_PX <= x0 or y1 + GAP_PX <= c0 or c1 + GAP_PX <= y0
            for b0, c0, b1, c1 in self.boxes
        )

    def nearest_free(self, x: float, y: float, width: float, height: float) -> tuple | None:
        """The free box of ``width`` x ``height`` nearest (x, y), at whole-pixel corners; None if none is.
        Looks near (x, y) first (a few label widths around), then over the whole panel."""
        near = 2 * (width + height)
        rows, cols = self.mask.shape
        i, j = x - self.left, y - self.bottom
        window = (max(int(j - near), 0), min(int(j + near), rows), max(int(i - near), 0), min(int(i + near), cols))
        return self._nearest_free_in(window, x, y, width, height) or self._nearest_free_in(
            (0, rows, 0, cols), x, y, width, height
        )

    def _nearest_free_in(self, window: tuple, x: float, y: float, width: float, height: float) -> tuple | None:
        j0, j1, i0, i1 = window
        mask = self.mask[j0:j1, i0:i1]
        w, h = math.ceil(width) + 1, math.ceil(height) + 1  # every pixel the box can touch
        rows, cols = mask.shape
        if w > cols or h > rows:
            return None
        summed = np.zeros((rows + 1, cols + 1), dtype=np.int32)
        summed[1:, 1:] = mask.cumsum(0).cumsum(1)
        taken = summed[h:, w:] - summed[:-h, w:] - summed[h:, :-w] + summed[:-h, :-w]
        js, is_ = np.nonzero(taken == 0)
        x0, y0 = is_ + i0 + self.left + 0.5, js + j0 + self.bottom + 0.5  # the box starts inside its first pixel
        dx = np.maximum(np.maximum(x0 - x, x - (x0 + width)), 0)
        dy = np.maximum(np.maximum(y0 - y, y - (y0 + height)), 0)
        distance = np.hypot(dx, dy)
        while len(distance) and np.isfinite(distance.min()):
            k = int(np.argmin(distance))
            box = (x0[k], y0[k], x0[k] + width, y0[k] + height)
            if self.is_free(box):  # the mask is conservative: the exact shapes have the last word
                return box
            distance[k] = np.inf
        return None


def _touching(x: float, y: float, reach: float, width: float, height: float) -> list[tuple]:
    """The eight boxes of ``width`` x ``height`` that touch a marker of radius ``reach`` at (x, y), in the
    order they are preferred: right, left, the four diagonals, above, below."""
    d = reach + GAP_PX + 0.5  # half a pixel more than the clearance: rounding never makes a touching box overlap
    c = d * DIAGONAL
    corners = [
        (x + d, y - height / 2),
        (x - d - width, y - height / 2),
        (x + c, y + c),
        (x + c, y - c - height),
        (x - c - width, y + c),
        (x - c - width, y - c - height),
        (x - width / 2, y + d),
        (x - width / 2, y - d - height),
    ]
    return [(x0, y0, x0 + width, y0 + height) for x0, y0 in corners]


def place_labels(ax: Axes, points: list[tuple[float, float]], labels: list[str], **text_style) -> list[str]:
    """Label each of ``points`` (data coordinates) in ``ax`` with its entry of ``labels``; returns the
    labels for which the panel had no free spot left (not drawn), in their given order.

    Args:
        points: where each label belongs, one per label; the markers there must already be drawn
            (`marker_circles` reads them from ``ax``).
        text_style: passed to `Axes.annotate` (fontsize, color, ...); ``color`` also colours the leader lines.
    """
    renderer = cast("FigureCanvasAgg", ax.figure.canvas).get_renderer()  # the plots draw with Agg
    occupancy = Occupancy(ax.get_window_extent(renderer))
    circles = marker_circles(ax)
    occupancy.add_circles(circles)
    occupancy.add_circles(line_circles(ax))
    centres = ax.transData.transform(np.asarray(points, dtype=float).reshape(-1, 2))
    points_per_pixel = 72 / ax.figure.dpi
    crowding = [int((np.hypot(*(centres - centre).T) < NEIGHBOURHOOD_PX).sum()) for centre in centres]
    unplaced: list[int] = []
    for i in sorted(range(len(labels)), key=lambda i: (-crowding[i], i)):
        x, y = centres[i]
        probe = ax.annotate(labels[i], points[i], ha="left", va="bottom", **text_style)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        own = circles[np.hypot(circles[:, 0] - x, circles[:, 1] - y) < 0.5] if len(circles) else circles
        reach = own[:, 2].max() if len(own) else 0.0
        box = next((b for b in _touching(x, y, reach, extent.width, extent.height) if occupancy.is_free(b)), None)
        touching = box is not None
        if not touching:
            box = occupancy.nearest_free(x, y, extent.width, extent.height)
        if box is None:
            unplaced.append(i)
            continue
        occupancy.add_box(box)
        # away from its marker, a leader line joins the label's centre to the marker's edge
        leader = None
        if not touching:
            leader = {
                "arrowstyle": "-",
                "color": text_style.get("color", "0.3"),
                "linewidth": 0.5,
                "shrinkA": 0,
                "shrinkB": reach * points_per_pixel,
            }
        ax.annotate(
            labels[i],
            points[i],
            xytext=((box[0] - x) * points_per_pixel, (box[1] - y) * points_per_pixel),
            textcoords="offset points",
            ha="left",
            va="bottom",
            arrowprops=leader,
            gid="point-label",
            **text_style,
        )
    return [labels[i] for i in sorted(unplaced)]
