"""An evaluation's files: the per-class IoU and accuracy (CSV) and the whole result with its confusion
matrix (JSON), in new files named after the run (an existing file is not replaced), each written in one rename."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from pathlib import Path

from bench.records import write_text_atomic


def _exclusive_path(folder: Path, stem: str, suffix: str) -> Path:
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def result_json(result, extra: dict, indent: int | None = 1) -> str:
    """The whole result with its confusion matrix and ``extra`` (weights, provenance), as JSON (one line when
    ``indent`` is None)."""
    return json.dumps({**result.as_dict(confusion=True), **extra}, indent=indent, default=str) + "\n"


def write_outputs(result, folder: Path, extra: dict) -> tuple[Path, Path]:
    """Per-class CSV and full JSON of ``result`` in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    mode = result.protocol["mode"] + ("+aug" if result.protocol["aug_test"] else "")
    stem = f"{result.arch}_{result.dataset}_{mode}_{stamp}"
    csv_path, json_path = _exclusive_path(folder, stem, ".per_class.csv"), _exclusive_path(folder, stem, ".json")
    rows = [["class_id", "class", "iou", "acc", "gt_pixels", "pred_pixels"]]
    for i, name in enumerate(result.class_names):
        iou, acc = result.per_class_iou[i], result.per_class_acc[i]
        rows.append([i, name, "" if math.isnan(iou) else f"{iou:.6f}", "" if math.isnan(acc) else f"{acc:.6f}"])
        rows[-1] += [result.gt_pixels[i], result.pred_pixels[i]]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    write_text_atomic(csv_path, text.getvalue())  # a disk-full error is one line naming the file
    write_text_atomic(json_path, result_json(result, extra))
    return csv_path, json_path
