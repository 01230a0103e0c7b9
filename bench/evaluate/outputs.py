"""An evaluation's files: the per-class IoU and accuracy (CSV) and the whole result with its confusion
matrix (JSON), in new files named after the run; an existing file is never replaced."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
from pathlib import Path


def _exclusive_path(folder: Path, stem: str, suffix: str) -> Path:
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to the new file ``path`` via a temporary file (an existing file is never replaced)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # fails instead of replacing a file that appeared meanwhile
    finally:
        tmp.unlink()


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
    _write_new(csv_path, text.getvalue())
    _write_new(json_path, json.dumps({**result.as_dict(confusion=True), **extra}, indent=1, default=str) + "\n")
    return csv_path, json_path
