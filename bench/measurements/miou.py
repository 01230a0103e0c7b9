"""miou: the validation-set mIoU of the official (or a given) checkpoint under its published test protocol.

Measured only in a run given a dataset root (`bench run --data-root`); `bench.evaluate` does the work.
A job stopped at its time limit keeps its progress beside the records, and the next run continues it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.measurements.base import Cells, JobContext, Measurement, Modes, Value

if TYPE_CHECKING:
    from bench.jobs import RunOptions
    from bench.store.record import Record


@dataclass(frozen=True, kw_only=True)
class MiouValue(Value):
    """An evaluation's summary (percent), with its aAcc, mAcc, fwIoU, per-class IoU and the weights loaded.

    Args:
        mIoU: the mean IoU over the classes present (None where none is).
        identity: what the run measured it with (`miou_identity`); a rerun asking for other weights or
            data measures it again.
    """

    mIoU: float | None = None
    identity: dict[str, Any] | None = None


@functools.cache  # a run asks once per record it may reuse: the checkpoint is hashed once
def miou_identity(weights: str | None, data_root: str | None) -> dict[str, Any]:
    """What an mIoU record was measured with: the checkpoint asked for (a file by its sha256) and the data root.

    A rerun reuses an mIoU record only when this is the same.
    """
    request = weights or "official"
    if request not in ("official", "none") and Path(request).is_file():
        from bench.weights import sha256sum

        request = f"sha256:{sha256sum(Path(request))}"
    return {"weights": request, "data_root": None if data_root is None else str(Path(data_root).resolve())}


def evaluate(context: JobContext) -> MiouValue:
    from bench.evaluate import evaluate  # evaluation is optional per run: imported by its jobs alone
    from bench.evaluate.checkpoint import Resume
    from bench.evaluate.outputs import write_outputs
    from bench.weights import load_weights

    options, model, spec = context.options, context.model, context.spec
    if options.data_root is None:
        raise ValueError("an mIoU job needs the dataset: pass --data-root DIR")
    loaded = load_weights(model, spec, context.job.dataset, options.weights or "official")
    folder = None if options.eval_folder is None else Path(options.eval_folder)
    resume = None if folder is None else Resume(folder, {"weights": loaded.sha256 or loaded.source})
    result = evaluate(
        model, spec, context.job.dataset, options.data_root, device=options.device, progress=False, resume=resume
    )
    identity = miou_identity(options.weights, options.data_root)
    value = {**result.as_dict(), "weights": asdict(loaded), "identity": identity}
    if folder is not None:
        csv_path, json_path = write_outputs(result, folder, {"weights": value["weights"]})
        value["per_class_csv"], value["result_json"] = str(csv_path), str(json_path)
    return MiouValue.from_json(value)


def eager(modes: Modes) -> tuple[str | None, ...]:
    """One job: the evaluation runs the model as its paper did."""
    return ("eager",)


def same_weights_and_data(record: Record, options: RunOptions) -> bool:
    """A recorded mIoU answers a run that asks for the same checkpoint and data root."""
    identity = miou_identity(options.weights, options.data_root)
    return isinstance(record.value, MiouValue) and record.value.identity == identity


def summary(value: MiouValue, record: Record) -> str:
    return f"mIoU {value.mIoU if value.mIoU is not None else float('nan'):.2f}"


def columns(cells: Cells) -> dict[str, Any]:
    """The measured mIoU beside the published one."""
    value, published = cells.value(MIOU, "eager"), cells.published()
    return {
        f"{cells.dataset}_miou": value.mIoU if value else None,
        f"{cells.dataset}_miou_published": published.miou if published else None,
    }


# An evaluation over a whole validation set needs hours on a slow GPU.
MIOU = Measurement(
    name="miou", value_type=MiouValue, run=evaluate, timeout_s=6 * 3600, summary=summary, columns=columns,
    modes=eager, default_on=(), needs_data=True, reusable=same_weights_and_data,
)  # fmt: skip
