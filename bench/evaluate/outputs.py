"""An evaluation's files: the per-class IoU and accuracy (CSV) and the whole result with its confusion
matrix (JSON), in new files named after the run (an existing file is not replaced), each written in one rename.
A generated set (`bench data synth`) says so in both files' names (``ade20k-synthetic``), the JSON's
``synthetic`` and ``data`` and the CSV's ``synthetic`` column."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from pathlib import Path

from bench.io import write_text_atomic


def result_json(result, extra: dict, indent: int | None = 1) -> str:
    """The whole result with its confusion matrix and ``extra`` (weights, provenance), as JSON (one line when
    ``indent`` is None)."""
    return json.dumps({**result.as_dict(confusion=True), **extra}, indent=indent, default=str) + "\n"


def write_outputs(result, folder: Path, extra: dict) -> tuple[Path, Path]:
    """Per-class CSV and full JSON of ``result`` in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    mode = result.protocol["mode"] + ("+aug" if result.protocol["aug_test"] else "")
    synthetic = result.synthetic is not None
    data = result.dataset + ("-synthetic" if synthetic else "")
    stem = f"{result.arch}_{data}_{mode}_{stamp}"
    rows: list[list[object]] = [["class_id", "class", "iou", "acc", "gt_pixels", "pred_pixels", "synthetic"]]
    for i, name in enumerate(result.class_names):
        iou, acc = result.per_class_iou[i], result.per_class_acc[i]
        rows.append([i, name, "" if math.isnan(iou) else f"{iou:.6f}", "" if math.isnan(acc) else f"{acc:.6f}"])
        rows[-1] += [result.gt_pixels[i], result.pred_pixels[i], str(synthetic).lower()]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    n = 0
    while True:  # the first free name: another run may finish in the same second
        n += 1
        name = stem if n == 1 else f"{stem}-{n}"
        json_path, csv_path = folder / f"{name}.json", folder / f"{name}.per_class.csv"
        if csv_path.exists():
            continue
        try:  # a disk-full error is one line naming the file
            write_text_atomic(json_path, result_json(result, extra), exclusive=True)
        except FileExistsError:
            continue
        try:
            write_text_atomic(csv_path, text.getvalue(), exclusive=True)
        except FileExistsError:  # a stray CSV of that name appeared meanwhile: keep the pair together
            json_path.unlink()
            continue
        return csv_path, json_path
