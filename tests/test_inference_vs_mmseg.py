"""Sliding-window and multi-scale + flip inference against mmsegmentation's own code on the same model.

The model is mmsegmentation 1.2.2's FCN-MobileNetV2 with random weights that keep activations at
scale, and segbench's ``fcn-mobilenetv2`` loaded from its weights. mmseg runs
``EncoderDecoder.slide_inference``, and its test-time augmentation: the ``TestTimeAug`` transform
(mmcv's keep-ratio ``Resize`` to the scales of mmseg 0.x's ``MultiScaleFlipAug``, which the papers'
multi-scale numbers used, and ``RandomFlip``), ``SegDataPreProcessor`` and ``SegTTAModel``, which
flips each prediction back, resizes it to the image and averages the softmax. segbench runs
`bench.evaluate.inference` (`slide_logits`, `Predictor`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import archs
from archs.convert.mmseg import convert_mmseg_state_dict
from bench.evaluate import inference
from bench.evaluate.inference import EvalProtocol, Predictor, slide_logits
from tests.equivalence import TOL, assert_equivalent, scale_preserving_init

pytest.importorskip("mmseg", reason="test extra: mmsegmentation==1.2.2 mmengine mmcv-lite==2.1.0 ftfy")

CONFIG = "mobilenet_v2/mobilenet-v2-d8_fcn_4xb2-80k_cityscapes-512x1024.py"
CLASSES = 19


@pytest.fixture(scope="module")
def models():
    """(mmseg's model, ours with its weights), in eval mode."""
    from tests.mmseg_stub import build_mmseg_model

    reference = scale_preserving_init(build_mmseg_model(CONFIG, num_classes=CLASSES))
    ours = archs.build("fcn-mobilenetv2", CLASSES)
    ours.load_state_dict(convert_mmseg_state_dict({"state_dict": reference.state_dict()}))
    return reference, ours


def test_slide_logits_equal_mmsegs_slide_inference(models):
    from mmengine.config import ConfigDict

    reference, ours = models
    x = torch.randn(1, 3, 70, 100)
    crop, stride = (48, 64), (32, 40)  # 2 x 2 windows, overlapping, the last ones clamped to the border
    reference.test_cfg = ConfigDict(mode="slide", crop_size=crop, stride=stride)
    protocol = EvalProtocol(mode="slide", crop=crop, stride=stride, window_batch=3)
    with torch.no_grad():
        theirs = reference.slide_inference(x, [{"img_shape": x.shape[-2:], "ori_shape": x.shape[-2:]}])
        whole = inference.forward_logits(ours, x, CLASSES, align_corners=False)
    assert_equivalent(theirs, ours, lambda m: slide_logits(m, x, protocol, CLASSES))
    assert (whole - theirs).abs().max().item() > 100 * TOL  # the windows change the result


def _cv2_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """segbench's resize replaced by mmcv's (cv2, uint8): the two differ by one grey level at most (test_evaluate),
    which would move the logits by far more than the tolerance; everything else is compared."""
    import mmcv

    if tuple(image.shape[-2:]) == tuple(size):
        return image
    array = image[0].permute(1, 2, 0).to(torch.uint8).numpy()
    resized = mmcv.imresize(array, size[::-1], interpolation="bilinear")
    return torch.from_numpy(resized).permute(2, 0, 1)[None].float()


# SegTTAModel.merge_preds stores its (H, W) prediction where PixelData expects (1, H, W) and says so
@pytest.mark.filterwarnings("ignore:The shape of value will convert:UserWarning")
def test_multi_scale_flip_inference_equals_mmsegs_test_time_augmentation(models, monkeypatch):
    from mmengine.config import ConfigDict
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.models import SegDataPreProcessor, SegTTAModel
    from mmseg.registry import TRANSFORMS

    reference, ours = models
    init_default_scope("mmseg")
    spec = archs.get_spec("fcn-mobilenetv2")
    ratios = (0.5, 1.0, 1.75)
    # the image is resized to fit (120, 64) x ratio, keeping its ratio: 60x90 -> 64x96 at ratio 1
    protocol = EvalProtocol(mode="slide", scale=(120, 64), crop=(48, 64), stride=(32, 40), ratios=ratios, flip=True)
    image = np.random.default_rng(0).integers(0, 256, size=(60, 90, 3), dtype=np.uint8)

    reference.test_cfg = ConfigDict(mode="slide", crop_size=protocol.crop, stride=protocol.stride)
    reference.data_preprocessor = SegDataPreProcessor(mean=list(spec.mean), std=list(spec.std), bgr_to_rgb=False)
    seen = []  # the per-augmentation predictions SegTTAModel averages

    class RecordingTTA(SegTTAModel):
        def merge_preds(self, data_samples_list):
            seen.extend(data_samples_list[0])
            return super().merge_preds(data_samples_list)

    scales = [dict(type="Resize", scale=(int(120 * r), int(64 * r)), keep_ratio=True) for r in ratios]
    flips = [dict(type="RandomFlip", prob=p, direction="horizontal") for p in (0.0, 1.0)]
    tta = TRANSFORMS.build(dict(type="TestTimeAug", transforms=[scales, flips, [dict(type="PackSegInputs")]]))
    load = TRANSFORMS.build(dict(type="LoadImageFromNDArray"))
    batch = pseudo_collate([tta(load({"img": image}))])
    with torch.no_grad():
        merged = RecordingTTA(module=reference).test_step(batch)[0].pred_sem_seg.data[0]

    monkeypatch.setattr(inference, "resize_image", _cv2_resize)
    predictor = Predictor(ours, protocol, num_classes=CLASSES, mean=spec.mean, std=spec.std, aug_test=True)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    probs = torch.zeros(1, CLASSES, 60, 90)
    augmentations = [(r, flip) for r in ratios for flip in (False, True)]  # TestTimeAug's order
    assert len(seen) == len(augmentations)
    with torch.no_grad():
        for (ratio, flip), sample in zip(augmentations, seen, strict=True):
            assert bool(sample.metainfo["flip"]) == flip
            logits = predictor.logits(tensor, (int(120 * ratio), int(64 * ratio)), flip)
            assert (logits[0] - sample.seg_logits.data).abs().max().item() <= TOL, (ratio, flip)
            probs += logits.softmax(1)
        got = predictor(tensor)[0]
        single = predictor.logits(tensor, protocol.scale).argmax(1)[0]
    top2 = (probs / len(augmentations)).topk(2, dim=1).values[0]
    clear = (top2[0] - top2[1]) > TOL  # pixels whose class no rounding can swap
    assert clear.float().mean() > 0.99
    assert torch.equal(got[clear], merged[clear])
    assert not torch.equal(single, got)  # the scales and flips change the prediction: the check has power
