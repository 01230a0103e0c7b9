"""End-to-end evaluation on generated sets in the real layouts, and the inference modes.

The oracle is a 1x1 convolution that reads the generator's colour code back: on a generated set
it predicts the ground truth, so its mIoU is exactly 100 and a known corruption of it has an
exactly known score. Expected numbers are computed from the label files with the published
rules (written out here, not taken from bench.data).
"""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from archs import ArchSpec, Evaluation
from bench.data import synthetic
from bench.errors import BenchError
from bench.evaluate import evaluate
from bench.evaluate.inference import (
    EvalProtocol,
    Predictor,
    eval_protocol,
    rescale_size,
    resize_image,
    slide_logits,
    window_grid,
)


def _spec(name="test-oracle", family="Oracle", **kw) -> ArchSpec:
    return ArchSpec(
        name=name, family=family, encoder="-", scale="realtime", paper="tests", year=2026, output_stride=1, **kw
    )


SPEC = _spec()
# A model published with sliding windows on Cityscapes, as SegFormer's official config runs it.
SLIDE_SPEC = _spec(evaluation={"cityscapes": Evaluation("slide", crop=(1024, 1024), stride=(768, 768))})


class CodeOracle(nn.Module):
    """logit_k = -|rgb - code_k|^2 (+ a per-pixel constant), as a 1x1 conv on the normalised input."""

    def __init__(self, dataset: str, mean=SPEC.mean, std=SPEC.std) -> None:
        super().__init__()
        codes = torch.tensor(synthetic.code_colors(dataset), dtype=torch.float64)
        mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
        self.conv = nn.Conv2d(3, len(codes), 1)
        with torch.no_grad():
            self.conv.weight.copy_((2 * codes * std).view(len(codes), 3, 1, 1))
            self.conv.bias.copy_(2 * codes @ mean - (codes**2).sum(1))

    def forward(self, x):
        return self.conv(x)


class Merge(nn.Module):
    """The oracle, except that every pixel of class ``a`` is predicted as class ``b``."""

    def __init__(self, oracle: nn.Module, a: int, b: int) -> None:
        super().__init__()
        self.oracle, self.a, self.b = oracle, a, b

    def forward(self, x):
        logits = self.oracle(x).clone()
        logits[:, self.b] = torch.maximum(logits[:, self.a], logits[:, self.b])
        logits[:, self.a] = -1e9
        return logits


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("sets")
    return {
        # short side 512: the ADE20K test resize is the identity, predictions are exact
        "ade20k": synthetic.write_ade20k(base / "ade", 3, sizes=((512, 683), (512, 512)), seed=1),
        "cityscapes": synthetic.write_cityscapes(base / "city", 2, seed=2),
        "ade20k-small": synthetic.write_ade20k(base / "ade-small", 3, sizes=((64, 96), (80, 64)), seed=5),
    }


def _ground_truth(dataset: str, root) -> list[np.ndarray]:
    """Train ids from the label files by the published rules (independent of bench.data)."""
    if dataset == "ade20k":
        out = []
        for path in sorted((root / "annotations" / "validation").glob("*.png")):
            raw = np.array(Image.open(path)).astype(np.int64)
            out.append(np.where(raw == 0, 255, raw - 1))  # reduce_zero_label
        return out
    id2label = pytest.importorskip("cityscapesscripts.helpers.labels").id2label  # test extra

    lut = np.full(256, 255)
    for label_id, label in id2label.items():
        if label_id >= 0 and 0 <= label.trainId < 19:
            lut[label_id] = label.trainId
    return [lut[np.array(Image.open(p))] for p in sorted((root / "gtFine" / "val").glob("*/*_labelIds.png"))]


@pytest.mark.parametrize("dataset", ["ade20k", "cityscapes"])
def test_oracle_scores_100_and_a_known_corruption_scores_exactly(roots, dataset):
    num_classes = {"ade20k": 150, "cityscapes": 19}[dataset]
    oracle = CodeOracle(dataset)
    result = evaluate(oracle, SPEC, dataset, roots[dataset], device="cpu", progress=False, workers=0)
    assert result.mIoU == 100.0 and result.aAcc == 100.0 and result.mAcc == 100.0
    assert result.fwIoU == pytest.approx(100.0, abs=1e-9)

    gts = _ground_truth(dataset, roots[dataset])
    counts = np.bincount(np.concatenate([g[g < 255] for g in gts]), minlength=num_classes)
    assert np.array_equal(np.diag(result.confusion), counts) and result.confusion.sum() == counts.sum()
    a, b = np.argsort(counts)[-2:]  # the two most frequent classes: a's pixels are predicted as b
    corrupted = evaluate(Merge(oracle, a, b), SPEC, dataset, roots[dataset], device="cpu", progress=False, workers=0)
    expected = np.diag(counts)
    expected[a, a], expected[a, b] = 0, counts[a]
    assert np.array_equal(corrupted.confusion, expected)
    present = counts > 0
    iou = np.where(present, 1.0, np.nan)
    iou[a], iou[b] = 0.0, counts[b] / (counts[a] + counts[b])
    assert corrupted.mIoU == pytest.approx(100 * np.nanmean(iou), abs=1e-9)
    assert corrupted.per_class_iou[a] == 0.0
    assert corrupted.per_class_iou[b] == pytest.approx(100 * counts[b] / (counts[a] + counts[b]), abs=1e-9)
    assert corrupted.aAcc == pytest.approx(100 * (1 - counts[a] / counts.sum()), abs=1e-9)
    absent = int(np.argmin(counts))
    assert counts[absent] == 0 and math.isnan(corrupted.per_class_iou[absent])  # excluded, not 0


def test_whole_and_slide_agree_for_a_per_pixel_model(roots):
    oracle = CodeOracle("cityscapes")
    seg_spec = SLIDE_SPEC
    assert eval_protocol(seg_spec, "cityscapes").mode == "slide"
    slide = evaluate(oracle, seg_spec, "cityscapes", roots["cityscapes"], device="cpu", progress=False, workers=0)
    whole = evaluate(
        oracle, seg_spec, "cityscapes", roots["cityscapes"], device="cpu", mode="whole", progress=False, workers=0
    )
    assert slide.protocol["mode"] == "slide" and slide.protocol["crop"] == (1024, 1024)
    assert whole.protocol["mode"] == "whole"
    assert np.array_equal(slide.confusion, whole.confusion) and slide.mIoU == 100.0


def test_window_grid_matches_the_published_window_counts():
    assert len(window_grid(1024, 2048, (1024, 1024), (768, 768))) == 3  # SegFormer Cityscapes
    assert len(window_grid(1024, 2048, (769, 769), (513, 513))) == 8  # mmseg 769x769 configs
    for h, w, crop, stride in ((1024, 2048, (1024, 1024), (768, 768)), (512, 683, (512, 512), (341, 341))):
        cover = np.zeros((h, w), int)
        for y1, y2, x1, x2 in window_grid(h, w, crop, stride):
            assert (y2 - y1, x2 - x1) == crop
            cover[y1:y2, x1:x2] += 1
        assert cover.min() >= 1
    assert window_grid(300, 400, (512, 512), (341, 341)) == [(0, 300, 0, 400)]  # smaller than a window


def test_slide_logits_equal_mmseg_slide_inference():
    from tests import mmseg_stub

    if not mmseg_stub.available():
        pytest.skip("mmsegmentation is not installed (test extra)")
    mmseg_stub.install()
    from mmseg.models.segmentors import EncoderDecoder

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 5, 3, 2, 1)).eval()  # stride 4
    x = torch.randn(1, 3, 70, 100)
    protocol = EvalProtocol(mode="slide", crop=(32, 48), stride=(20, 30), window_batch=3)

    def encode_decode(crop, metas):
        return nn.functional.interpolate(model(crop), size=crop.shape[2:], mode="bilinear", align_corners=False)

    fake = types.SimpleNamespace(
        test_cfg=types.SimpleNamespace(stride=(20, 30), crop_size=(32, 48)), out_channels=5, encode_decode=encode_decode
    )
    with torch.no_grad():
        theirs = EncoderDecoder.slide_inference(fake, x, [{}])
        ours = slide_logits(model, x, protocol, 5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_resize_follows_mmcv():
    import mmcv

    for (h, w), scale in [((384, 512), (2048, 512)), ((1024, 2048), (2048, 1024)), ((333, 1999), (2048, 512))]:
        assert rescale_size(h, w, scale) == mmcv.rescale_size((w, h), scale)[::-1]
        assert (
            rescale_size(h, w, (int(scale[0] * 0.75), int(scale[1] * 0.75)))
            == mmcv.rescale_size((w, h), (int(scale[0] * 0.75), int(scale[1] * 0.75)))[::-1]
        )
    image = np.random.default_rng(0).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    for size in ((128, 171), (40, 53)):
        theirs = mmcv.imresize(image, size[::-1], interpolation="bilinear")
        ours = resize_image(torch.from_numpy(image).permute(2, 0, 1)[None], size)[0].permute(1, 2, 0).numpy()
        assert np.abs(ours - theirs.astype(np.float32)).max() <= 1  # cv2's fixed-point rounding


def test_published_protocols():
    assert eval_protocol(_spec(), "ade20k") == EvalProtocol(mode="whole", scale=(2048, 512))
    assert eval_protocol(_spec(input_size={"ade20k": (640, 640)}), "ade20k").scale == (2048, 640)
    assert eval_protocol(_spec(), "cityscapes").scale == (2048, 1024)
    windows = _spec(evaluation={"ade20k": Evaluation("slide", crop=(512, 512), stride=(341, 341))})
    slide = eval_protocol(windows, "ade20k")
    assert (slide.mode, slide.crop, slide.stride, slide.scale) == ("slide", (512, 512), (341, 341), (2048, 512))
    assert eval_protocol(_spec(), "ade20k", "slide").stride == (341, 341)
    assert eval_protocol(SLIDE_SPEC, "cityscapes", "whole").crop is None
    with pytest.raises(BenchError):
        eval_protocol(_spec(), "ade20k", "tiles")


def test_aug_test_reduces_to_the_plain_prediction():
    torch.manual_seed(1)
    model = nn.Conv2d(3, 6, 1).eval()  # per-pixel: flip-equivariant
    image = torch.randint(0, 256, (1, 3, 40, 60), dtype=torch.uint8)
    base = EvalProtocol(scale=(2048, 40))
    plain = Predictor(model, base, num_classes=6, mean=SPEC.mean, std=SPEC.std)(image)
    single = EvalProtocol(scale=(2048, 40), ratios=(1.0,), flip=False)
    assert torch.equal(
        Predictor(model, single, num_classes=6, mean=SPEC.mean, std=SPEC.std, aug_test=True)(image), plain
    )
    flipped = EvalProtocol(scale=(2048, 40), ratios=(1.0,), flip=True)
    assert torch.equal(
        Predictor(model, flipped, num_classes=6, mean=SPEC.mean, std=SPEC.std, aug_test=True)(image), plain
    )
    multi = Predictor(model, base, num_classes=6, mean=SPEC.mean, std=SPEC.std, aug_test=True)(image)
    assert multi.shape == plain.shape == (1, 40, 60)


class Tiny(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, 2, 1))

    def forward(self, x):
        return self.body(x)


def _evaluate_in_daemon(conn, model, spec, root) -> None:
    result = evaluate(model, spec, "ade20k", root, device="cpu", progress=False, workers=2)
    conn.send(result.confusion)


def test_worker_processes_and_threads_give_the_same_matrix(roots):
    import multiprocessing

    torch.manual_seed(2)
    model = Tiny(150).eval()
    spec = _spec(input_size={"ade20k": (48, 48)})  # test resize to short side 48
    kwargs = dict(device="cpu", progress=False)
    inline = evaluate(model, spec, "ade20k", roots["ade20k-small"], workers=0, **kwargs)
    workers = evaluate(model, spec, "ade20k", roots["ade20k-small"], workers=2, **kwargs)
    assert np.array_equal(inline.confusion, workers.confusion) and inline.confusion.sum() > 0
    # a `bench run` job is a daemonic process, which may not start DataLoader workers: threads decode
    ctx = multiprocessing.get_context("forkserver")  # as `bench run` starts its jobs
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_evaluate_in_daemon, args=(sender, model, spec, roots["ade20k-small"]), daemon=True)
    child.start()
    assert receiver.poll(120), "the daemonic evaluation did not finish"
    assert np.array_equal(receiver.recv(), inline.confusion)
    child.join()


def test_no_more_decoders_start_than_there_are_images(roots):
    from bench.data import open_dataset
    from bench.evaluate.loader import make_loader

    dataset = open_dataset("ade20k", roots["ade20k-small"])
    assert make_loader(dataset, [0, 1], workers=500, pin=False).num_workers == 2
    assert make_loader(dataset, [], workers=4, pin=False).num_workers == 0


def test_a_model_with_another_class_count_is_a_one_line_error(roots):
    with pytest.raises(BenchError, match=r"not \(N, 150, h, w\); build it with num_classes=150") as info:
        evaluate(Tiny(19), _spec(), "ade20k", roots["ade20k-small"], device="cpu", workers=0)
    assert "\n" not in str(info.value)


def test_bench_eval_writes_new_files_and_bad_input_loses_nothing(roots, tmp_path, capsys):
    from bench.cli import main
    from tests.toy_models import ToyNet

    results, ckpt, wrong_classes = tmp_path / "results", tmp_path / "toy.pth", tmp_path / "city.pth"
    torch.manual_seed(3)
    torch.save(ToyNet(150, 4).state_dict(), ckpt)
    torch.save(ToyNet(19, 4).state_dict(), wrong_classes)
    # toy-w4's ADE20K size is 64x64: the test pipeline resizes to short side 64
    args = ["eval", "toy-w4", "--plugin", "tests.toy_models", "--dataset", "ade20k", "--device", "cpu"]
    root = str(roots["ade20k-small"])
    code = main([*args, "--data-root", root, "--weights", str(ckpt), "--results", str(results), "--benchmark"])
    out = capsys.readouterr().out
    assert code == 0 and "mIoU" in out and "model alone" in out and "whole evaluation" in out
    # a set `bench data synth` wrote is called synthetic: in the report, both files' names and contents
    assert out.startswith("toy-w4 on ADE20K validation (synthetic, generated by bench data synth), 3 images")
    (csv_path,) = results.glob("*/eval/toy-w4_ade20k-synthetic_whole_*.per_class.csv")
    (json_path,) = results.glob("*/eval/toy-w4_ade20k-synthetic_whole_*.json")
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "class_id,class,iou,acc,gt_pixels,pred_pixels,synthetic" and len(rows) == 151
    assert rows[1].startswith("0,wall,") and all(row.endswith(",true") for row in rows[1:])
    saved = json.loads(json_path.read_text())
    assert saved["synthetic"]["dataset"] == "ade20k" and saved["synthetic"]["num"] == 3
    assert saved["data"] == "ADE20K validation (synthetic, generated by bench data synth)"
    gts = _ground_truth("ade20k", roots["ade20k-small"])
    assert np.array(saved["confusion"]).sum() == sum(int((g < 255).sum()) for g in gts)
    assert saved["weights"]["path"] == str(ckpt) and saved["benchmark"]["model_only"] > 0
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}

    for extra, message in (
        (["--data-root", str(tmp_path / "missing"), "--weights", "none"], "missing: no such folder"),
        (["--data-root", root, "--weights", str(wrong_classes)], f"{wrong_classes} predicts 19 classes"),
    ):
        assert main([*args, *extra, "--results", str(results)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before


@pytest.mark.gpu
def test_cuda_evaluation_equals_cpu_and_never_syncs(roots):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from bench.evaluate.metrics import ConfusionMatrix

    oracle = CodeOracle("cityscapes")
    seg_spec = SLIDE_SPEC  # slide inference
    kwargs = dict(progress=False, workers=2)
    cpu = evaluate(oracle, seg_spec, "cityscapes", roots["cityscapes"], device="cpu", **kwargs)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the oracle's logits are large: TF32 rounding could flip an argmax
    try:
        gpu = evaluate(oracle, seg_spec, "cityscapes", roots["cityscapes"], device="cuda", **kwargs)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert np.array_equal(cpu.confusion, gpu.confusion) and gpu.mIoU == 100.0
    # the per-image work (normalise, slide, resizes, argmax, confusion update) must not wait for the GPU
    image = torch.randint(0, 256, (1, 3, 1024, 2048), dtype=torch.uint8, device="cuda")
    target = torch.randint(0, 256, (1024, 2048), dtype=torch.uint8, device="cuda")
    predict = Predictor(
        oracle.cuda(), eval_protocol(seg_spec, "cityscapes"), num_classes=19, mean=SPEC.mean, std=SPEC.std
    )
    matrix = ConfusionMatrix(19, device="cuda")
    predict(image)  # warm-up (cuDNN and allocator set-up may synchronise once)
    torch.cuda.set_sync_debug_mode("error")
    try:
        matrix.update(predict(image)[0], target)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(matrix.matrix.sum()) == int((target < 19).sum())


EVAL_ARGS = [
    "eval",
    "toy-w4",
    "--plugin",
    "tests.toy_models",
    "--dataset",
    "ade20k",
    "--device",
    "cpu",
    "--no-progress",
]


def _main(capsys, *args: str) -> tuple[int, str, str]:
    from bench.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_path_in_the_home_of_no_user_is_a_one_line_error(roots, tmp_path, capsys):
    root, results = str(roots["ade20k-small"]), str(tmp_path / "results")
    for extra, option in (
        (["--data-root", "~segbench-no-such-user/ade", "--weights", "none"], "--data-root"),
        (["--data-root", root, "--weights", "~segbench-no-such-user/x.pth"], "--weights"),
    ):
        code, _, err = _main(capsys, *EVAL_ARGS, *extra, "--results", results)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"bench: error: {option} ~segbench-no-such-user/") and "give the full path" in err


def test_an_image_too_large_for_memory_names_it_and_its_size(roots, tmp_path, capsys, monkeypatch):
    from bench.evaluate import inference

    def refuse(logits, size, align_corners):  # what a 12000x12000 label asks of the host: 86 GB
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 86400000000 bytes. Error code 12 (Cannot allocate memory)"
        )

    monkeypatch.setattr(inference, "resize_logits", refuse)
    results = tmp_path / "results"
    root = roots["ade20k-small"]
    code, out, err = _main(capsys, *EVAL_ARGS, "--data-root", str(root), "--weights", "none", "--results", str(results))
    first = root / "images" / "validation" / "ADE_val_00000001.jpg"
    width, height = Image.open(first).size
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"image {first} ({width}x{height}) ran out of cpu memory" in err
    assert f"its 150-class logits at the label's size alone take {150 * width * height * 4 / 1e9:.3g} GB" in err
    assert "evaluate a downscaled copy of it and its label map" in err
    assert not list(results.rglob("*.json")) and "mIoU" not in out


def test_a_model_that_fails_on_an_image_is_a_one_line_error_naming_it(roots, tmp_path, capsys, monkeypatch):
    from bench.evaluate import inference

    def fail(logits, size, align_corners):
        raise RuntimeError("The size of tensor a (171) must match the size of tensor b (172)\nat dimension 3")

    monkeypatch.setattr(inference, "resize_logits", fail)
    root = roots["ade20k-small"]
    code, out, err = _main(
        capsys, *EVAL_ARGS, "--data-root", str(root), "--weights", "none", "--results", str(tmp_path)
    )
    first = root / "images" / "validation" / "ADE_val_00000001.jpg"
    width, height = Image.open(first).size
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"toy-w4 failed on image {first} ({width}x{height}): RuntimeError: The size of tensor a (171)" in err
    assert "mIoU" not in out


def test_a_builder_that_raises_is_a_one_line_error(roots, tmp_path, capsys, monkeypatch):
    import archs

    def broken_build(name, **kwargs):
        raise ValueError("the plugin's head needs 3 stages\nmore detail on a second line")

    monkeypatch.setattr(archs, "build", broken_build)
    root = str(roots["ade20k-small"])
    code, _, err = _main(capsys, *EVAL_ARGS, "--data-root", root, "--weights", "none", "--results", str(tmp_path))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("bench: error: building toy-w4 failed (ValueError: the plugin's head needs 3 stages); fix")


def test_a_full_disk_loses_no_evaluation(roots, tmp_path, capsys, monkeypatch):
    import errno
    from pathlib import Path

    results = tmp_path / "results"
    real = {name: getattr(Path, name) for name in ("write_text", "write_bytes")}

    def full(name):
        def write(self, *args, **kwargs):
            if results in self.parents and "toy-w4_ade20k" in self.name:  # the result files and their temporaries
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return real[name](self, *args, **kwargs)

        return write

    for name in real:
        monkeypatch.setattr(Path, name, full(name))
    root = str(roots["ade20k-small"])
    code, out, err = _main(capsys, *EVAL_ARGS, "--data-root", root, "--weights", "none", "--results", str(results))
    assert code == 2 and len(err.splitlines()) == 1 and "No space left on device" in err, err
    assert ".json (No space left" in err and "the whole result is on stdout, as one line of JSON" in err
    assert "mIoU" in out  # the summary, then every number of the result
    saved = json.loads(out.strip().splitlines()[-1])
    assert saved["num_images"] == 3 and len(saved["confusion"]) == 150 and saved["weights"]["source"] == "none"
    gts = _ground_truth("ade20k", roots["ade20k-small"])
    assert np.array(saved["confusion"]).sum() == sum(int((g < 255).sum()) for g in gts)
    assert not list(results.rglob("*toy-w4*"))  # no temporary file left either


class CountingOracle(nn.Module):
    """The oracle, counting its forward passes; on the pass numbered ``stop_at`` (1-based) it calls ``before_stop``
    (what a kill would leave on disk is read there) and raises ``stop``."""

    def __init__(self, dataset: str, stop_at: int | None = None, stop: BaseException | None = None) -> None:
        super().__init__()
        self.oracle, self.calls, self.stop_at, self.stop = CodeOracle(dataset), 0, stop_at, stop
        self.before_stop = lambda: None

    def forward(self, x):
        self.calls += 1
        if self.calls == self.stop_at:
            self.before_stop()
            raise self.stop
        return self.oracle(x)


def test_a_cut_short_image_fails_before_the_first_inference_naming_it(roots, tmp_path, capsys):
    import shutil

    from bench.data import DataError

    root = shutil.copytree(roots["ade20k-small"], tmp_path / "ADEChallengeData2016")
    last = root / "images" / "validation" / "ADE_val_00000003.jpg"
    intact = last.read_bytes()
    last.write_bytes(intact[: len(intact) // 2])  # the last image of the set, cut short: its header is whole
    model = CountingOracle("ade20k")
    with pytest.raises(DataError, match=f"cannot read image {last} \\(image file is truncated"):
        evaluate(model, SPEC, "ade20k", root, device="cpu", progress=False, workers=0)
    assert model.calls == 0  # found up front, not after the images before it
    results = tmp_path / "results"
    code, out, err = _main(capsys, *EVAL_ARGS, "--data-root", str(root), "--weights", "none", "--results", str(results))
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"bench: error: cannot read image {last} (")
    assert "mIoU" not in out and not results.exists()  # before the results folder and the weights


def test_a_stopped_evaluation_continues_to_the_uninterrupted_matrix(roots, tmp_path, capsys):
    from bench.data import DataError
    from bench.evaluate import Resume

    root, folder = roots["ade20k"], tmp_path / "eval"
    whole = evaluate(CodeOracle("ade20k"), SPEC, "ade20k", root, device="cpu", progress=False, workers=0)
    resume = Resume(folder, {"weights": "oracle"}, every_s=0)  # saved after every image
    stopped = CountingOracle("ade20k", stop_at=3, stop=KeyboardInterrupt())
    on_disk = []  # a kill at that moment would leave the saves made while it ran
    stopped.before_stop = lambda: on_disk.extend(json.loads(p.read_text())["done"] for p in folder.glob("*.partial.*"))
    with pytest.raises(KeyboardInterrupt):
        evaluate(stopped, SPEC, "ade20k", root, device="cpu", progress=False, workers=0, resume=resume)
    (kept,) = folder.glob("test-oracle_ade20k.*.partial.json")
    assert on_disk == [[0, 1]] and json.loads(kept.read_text())["done"] == [0, 1]
    assert f"2 of 3 images are kept in {kept}: rerun the same command to continue" in capsys.readouterr().err
    # other weights are another evaluation: it starts over, and leaves this one's progress alone
    other = Resume(folder, {"weights": "another"}, every_s=3600)
    crashed = CountingOracle("ade20k", stop_at=2, stop=DataError("a bad file"))
    with pytest.raises(DataError, match=r"a bad file \(1 of 3 images are kept in .*: rerun the same command"):
        evaluate(crashed, SPEC, "ade20k", root, device="cpu", progress=False, workers=0, resume=other)
    assert crashed.calls == 2 and len(list(folder.glob("*.partial.json"))) == 2
    again = CountingOracle("ade20k")
    result = evaluate(again, SPEC, "ade20k", root, device="cpu", progress=False, workers=0, resume=resume)
    assert again.calls == 1 and result.resumed_images == 2 and result.num_images == 3
    assert np.array_equal(result.confusion, whole.confusion) and result.mIoU == whole.mIoU == 100.0
    assert "continuing test-oracle on ade20k: 2 of 3 images were evaluated by a stopped run" in capsys.readouterr().err
    assert not kept.exists() and len(list(folder.glob("*.partial.json"))) == 1  # finished: its progress is gone


def test_bench_eval_writes_under_runs_by_default_and_names_a_real_set_plainly(roots, tmp_path, capsys, monkeypatch):
    import shutil

    root = shutil.copytree(roots["ade20k-small"], tmp_path / "data" / "ADEChallengeData2016")
    (root / "images" / "validation" / synthetic.MANIFEST).unlink()  # as a set from its publisher
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(capsys, *EVAL_ARGS, "--data-root", str(root), "--weights", "none")
    assert code == 0, err
    assert out.startswith("toy-w4 on ADE20K validation, 3 images") and "synthetic" not in out
    (json_path,) = (tmp_path / "runs").glob("*/eval/toy-w4_ade20k_whole_*.json")
    saved = json.loads(json_path.read_text())
    assert saved["synthetic"] is None and saved["data"] == "ADE20K validation" and saved["resumed_images"] == 0
    assert not list(tmp_path.glob("runs/*/eval/*.partial.json"))
