"""Datasets: the real layouts, label mappings checked against the official tools, one-line errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from bench.data import CLASSES, PALETTES, DataError, open_dataset, synthetic
from bench.data import cityscapes as cs_data


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    return synthetic.write_ade20k(tmp_path_factory.mktemp("ade"), 3, sizes=((96, 128), (64, 64)))


@pytest.fixture(scope="module")
def city_root(tmp_path_factory):
    return synthetic.write_cityscapes(tmp_path_factory.mktemp("city"), 4, size=(32, 64), train_ids=True)


def test_ade20k_layout_and_reduce_zero_label_equal_mmseg(ade_root):
    from tests import mmseg_stub

    ds = open_dataset("ade20k", ade_root.parent)  # the folder holding ADEChallengeData2016 works too
    assert len(ds) == 3 and ds.root == ade_root and ds.split == "validation"
    assert [p[0].name for p in ds.pairs] == [f"ADE_val_{i:08d}.jpg" for i in (1, 2, 3)]
    if not mmseg_stub.available():
        pytest.skip("mmsegmentation is not installed (test extra)")
    mmseg_stub.install()
    from mmseg.datasets.transforms import LoadAnnotations

    load = LoadAnnotations()  # the flag comes with each sample, as mmseg's ADE20KDataset sets it
    for i, (_, label_path) in enumerate(ds.pairs):
        theirs = load({"seg_map_path": str(label_path), "reduce_zero_label": True, "seg_fields": []})["gt_seg_map"]
        sample = ds[i]
        assert sample.error is None
        assert np.array_equal(sample.label.numpy(), theirs)
        assert sample.image.shape[1:] == sample.label.shape and sample.image.dtype.is_floating_point is False


def test_class_names_and_palettes_equal_mmseg():
    from tests import mmseg_stub

    if not mmseg_stub.available():
        pytest.skip("mmsegmentation is not installed (test extra)")
    mmseg_stub.install()
    from mmseg.datasets import ADE20KDataset, CityscapesDataset

    for name, theirs in (("ade20k", ADE20KDataset.METAINFO), ("cityscapes", CityscapesDataset.METAINFO)):
        assert list(CLASSES[name]) == [c.strip() for c in theirs["classes"]]  # mmseg spells "bed "
        assert [list(p) for p in PALETTES[name]] == [list(p) for p in theirs["palette"]]


def test_cityscapes_train_ids_equal_cityscapes_scripts(city_root):
    labels = pytest.importorskip("cityscapesscripts.helpers.labels").labels  # test extra

    table = {label.id: label.trainId for label in labels if label.id >= 0}
    ids = np.arange(34, dtype=np.uint8)
    assert cs_data.label_ids_to_train_ids(ids).tolist() == [table[i] if table[i] != -1 else 255 for i in range(34)]
    assert [table[i] for i in cs_data.TRAIN_TO_LABEL_ID] == list(range(19))
    assert CLASSES["cityscapes"] == tuple(
        label.name for label in sorted(labels, key=lambda x: x.trainId) if 0 <= label.trainId < 19
    )
    ds = open_dataset("cityscapes", city_root)
    assert len(ds) == 4 and {p[0].parent.name for p in ds.pairs} == set(synthetic.CITIES)
    # labelTrainIds are preferred when present; they must say what the labelIds say
    for i, (_, label_path) in enumerate(ds.pairs):
        assert label_path.name.endswith("_gtFine_labelTrainIds.png")
        from_ids = cs_data.label_ids_to_train_ids(np.array(Image.open(str(label_path).replace("TrainIds", "Ids"))))
        assert np.array_equal(ds[i].label.numpy(), from_ids)


def _copy_tree(src, dst):

    shutil.copytree(src, dst)
    return dst


def _rename_split(root, kinds, new_name):
    for kind in kinds:
        (root / kind / "validation").rename(root / kind / new_name)
    return root


def _write_file(path, data):
    path.write_bytes(data)
    return path


def _replace_label(root, label, resize_image=True):
    image = root / "images" / "validation" / "ADE_val_00000002.jpg"
    Image.fromarray(label).save(root / "annotations" / "validation" / "ADE_val_00000002.png")
    if resize_image:
        Image.open(image).resize((64, 64)).save(image)
    return root


def _mkdir(path):
    path.mkdir()
    return path


def _rmtree(root, name):
    shutil.rmtree(root / name)
    return root


def _unlink(root, path):
    (root / path).unlink()
    return root


# each damage takes the copied root and a scratch folder, and returns the folder to open
_DAMAGES = {
    "missing_root": lambda root, tmp: tmp / "nowhere",
    "root_is_a_file": lambda root, tmp: _write_file(tmp / "ADE20K.txt", b"not a folder"),
    "root_is_an_archive": lambda root, tmp: _write_file(tmp / "ADEChallengeData2016.zip", b"PK"),
    "misnamed_split": lambda root, tmp: _rename_split(root, ("images", "annotations"), "val"),
    "misnamed_image_split": lambda root, tmp: _rename_split(root, ("images",), "val"),
    "other_split_only": lambda root, tmp: _rename_split(root, ("images", "annotations"), "training"),
    "misnamed_root": lambda root, tmp: _mkdir(tmp / "empty"),
    "no_annotations": lambda root, tmp: _rmtree(root, "annotations"),
    "image_without_label": lambda root, tmp: _unlink(root, "annotations/validation/ADE_val_00000002.png"),
    "label_without_image": lambda root, tmp: _unlink(root, "images/validation/ADE_val_00000003.jpg"),
    "unreadable_image": lambda root, tmp: _write_file(
        root / "images/validation/ADE_val_00000002.jpg", b"\xff\xd8 no"
    ).parents[2],
    "wrong_size_label": lambda root, tmp: _replace_label(root, np.ones((10, 10), np.uint8), resize_image=False),
    "out_of_range_label": lambda root, tmp: _replace_label(root, np.full((64, 64), 200, np.uint8)),
    "colour_label": lambda root, tmp: _replace_label(root, np.zeros((64, 64, 3), np.uint8)),
}


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("missing_root", "no such folder"),
        ("root_is_a_file", "ADE20K.txt: a file, not a folder; pass the ADEChallengeData2016 folder"),
        ("root_is_an_archive", "a file, not a folder (an archive: extract it first); pass the ADEChallengeData2016"),
        ("misnamed_root", "no ADE20K layout"),
        ("misnamed_split", "validation exists; found images/val, annotations/val: rename val to validation"),
        ("misnamed_image_split", "annotations/validation does (found images/val: rename val to validation); "),
        ("other_split_only", "exists (found images/training, annotations/training); pass the ADEChallengeData2016"),
        ("no_annotations", "annotations/validation does not exist but"),
        ("image_without_label", "have no label map (first: ADE_val_00000002.jpg"),
        ("label_without_image", "have no image (first: "),
        ("unreadable_image", "cannot read image"),
        ("wrong_size_label", "is 10x10 (WxH) but its image"),
        ("out_of_range_label", "holds value(s) 200 outside 0..150"),
        ("colour_label", "has mode RGB"),
    ],
)
def test_bad_ade20k_input_is_one_line_naming_the_file(ade_root, tmp_path, damage, expected):
    root = _copy_tree(ade_root, tmp_path / "ADEChallengeData2016")
    target = _DAMAGES[damage](root, tmp_path)
    with pytest.raises(DataError) as info:
        ds = open_dataset("ade20k", target)
        for i in range(len(ds)):
            if ds[i].error:
                raise DataError(ds[i].error)
    message = str(info.value)
    assert expected in message and "\n" not in message
    if damage in ("unreadable_image", "wrong_size_label", "out_of_range_label", "colour_label", "image_without_label"):
        assert "ADE_val_00000002" in message


def test_bad_cityscapes_input(city_root, tmp_path):
    root = _copy_tree(city_root, tmp_path / "cs")
    label = next((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    Image.fromarray(np.full((32, 64), 40, np.uint8)).save(label)
    for other in label.parent.glob(label.name.replace("labelIds", "labelTrainIds")):
        other.unlink()
    ds = open_dataset("cityscapes", root)
    errors = [ds[i].error for i in range(len(ds)) if ds[i].error]
    assert len(errors) == 1 and label.name in errors[0] and "outside 0..33" in errors[0]
    (root / "leftImg8bit").rename(root / "images")
    with pytest.raises(DataError, match="leftImg8bit/val does not exist but"):
        open_dataset("cityscapes", root)


@pytest.mark.parametrize(
    "dataset, alias, choices, example, restore",
    [
        (
            "ade20k",
            "val",
            "validation or training",
            "images/validation/*.jpg, annotations/validation/*.png",
            "re-extract ADEChallengeData2016.zip",
        ),
        (
            "cityscapes",
            "validation",
            "val or train",
            "leftImg8bit/val/*/*_leftImg8bit.png, gtFine/val/*/*_gtFine_labelIds.png",
            "extract leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into {root}",
        ),
    ],
)
def test_each_layout_finds_its_split_and_names_what_is_missing(
    request, tmp_path, dataset, alias, choices, example, restore
):
    import re
    import shutil

    root = _copy_tree(request.getfixturevalue("ade_root" if dataset == "ade20k" else "city_root"), tmp_path / "copy")
    found = open_dataset(dataset, root)
    assert [p for p, _ in open_dataset(dataset, root, alias).pairs] == [p for p, _ in found.pairs]
    title = found.layout.title
    with pytest.raises(DataError, match=re.escape(f"{title} split 'test': choose {choices}")):
        open_dataset(dataset, root, "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=re.escape(f"no {title} layout ({example}); {found.layout.pass_root}")):
        open_dataset(dataset, tmp_path / "empty")
    shutil.rmtree(found.root / found.layout.labels / found.split)
    with pytest.raises(DataError) as info:
        open_dataset(dataset, root)
    assert str(info.value).endswith(f"({restore.format(root=found.root)})") and "\n" not in str(info.value)


def _bench(capsys, *args: str) -> tuple[int, str, str]:
    from bench.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generator_cli_refuses_a_folder_with_files(tmp_path, capsys):
    out = tmp_path / "city"
    code, _, err = _bench(
        capsys, "data", "synth", "--dataset", "cityscapes", "--out", str(out), "--num", "2", "--size", "16x32"
    )
    assert code == 0, err
    ds = open_dataset("cityscapes", out)
    assert len(ds) == 2 and ds[0].image.shape == (3, 16, 32)
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*.png"))
    code, _, err = _bench(capsys, "data", "synth", "--dataset", "cityscapes", "--out", str(out), "--num", "2")
    assert code == 2 and "already holds files" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.png")) == before


NO_USER = "~segbench-no-such-user"


@pytest.mark.parametrize("dataset", ["ade20k", "cityscapes"])
def test_a_root_in_the_home_of_no_user_is_a_one_line_error(dataset):
    from bench.errors import BenchError

    with pytest.raises(
        BenchError, match=f"--data-root {NO_USER}/x: no such user's home .*; give the full path"
    ) as info:
        open_dataset(dataset, f"{NO_USER}/x")
    assert "\n" not in str(info.value)


def test_an_image_above_pils_bomb_limit_warns_in_one_line_and_twice_that_is_refused(ade_root, monkeypatch):
    ds = open_dataset("ade20k", ade_root)
    big = next(i for i, (image, _) in enumerate(ds.pairs) if Image.open(image).size == (128, 96))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 128 * 96 - 1)  # 12288 pixels: above the limit, below twice it
    with pytest.warns(UserWarning) as caught:
        sample = ds[big]
    assert sample.error is None and sample.image.shape == (3, 96, 128)
    (warning,) = caught  # one for the pair: the image's (PIL's own, two lines on stderr, is silenced)
    assert str(warning.message).startswith(f"image {ds.pairs[big][0]} is 128x96 (0 MP), above PIL's")
    assert warning.filename.endswith("bench/data/base.py")  # printed by the CLI as one `bench: warning:` line
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    error = ds[big].error
    assert f"image {ds.pairs[big][0]} is too large to decode" in error and "downscaled copy" in error
    assert "\n" not in error


def _files(root) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_refuses_an_oversized_image_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "ade"
    code, _, err = _bench(
        capsys, "data", "synth", "--dataset", "ade20k", "--out", str(out), "--num", "1", "--size", "99999x99999"
    )
    assert code == 2 and "--size 99999x99999: pass at most 89 megapixels" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "raised, exit_code, says",
    [
        (OSError(28, "No space left on device"), 2, "(No space left on device); free space"),
        (PermissionError(13, "Permission denied"), 2, "(Permission denied); free space or pass a writable --out"),
        (KeyboardInterrupt(), 130, "interrupted"),  # the CLI's message
    ],
)
def test_generator_leaves_no_partial_file_and_a_rerun_resumes(tmp_path, capsys, monkeypatch, raised, exit_code, says):
    args = ["data", "synth", "--dataset", "cityscapes", "--num", "3", "--size", "32x64", "--train-ids", "--seed", "4"]
    assert _bench(capsys, *args, "--out", str(tmp_path / "clean"))[0] == 0
    clean = _files(tmp_path / "clean")
    out = tmp_path / "city"
    save, calls = Image.Image.save, []

    def failing_save(self, fp, *a, **kw):
        calls.append(fp)
        if len(calls) == 5:  # the second pair's label map: half written, then the failure
            with open(fp, "wb") as f:
                f.write(b"\x89PNG half")
            raise raised
        return save(self, fp, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    code, _, err = _bench(capsys, *args, "--out", str(out))
    assert code == exit_code and len(err.splitlines()) == 1 and says in err, err
    if exit_code == 2:
        assert err.startswith("bench: error: cannot write ") and cs_data.LABEL_IDS in err.split(" (")[0]
    written = _files(out)
    assert not [p for p in written if p.name.endswith(".part")]  # no temporary file left
    assert all(clean[p] == data for p, data in written.items() if not p.name.startswith("."))  # none truncated
    assert 0 < len([p for p in written if not p.name.startswith(".")]) < len(clean)
    monkeypatch.setattr(Image.Image, "save", save)
    code, out_text, err = _bench(capsys, *args, "--out", str(out))  # the same command resumes
    assert code == 0 and "holds 3 generated cityscapes pairs" in out_text, err
    resumed = {p: d for p, d in _files(out).items() if not p.name.startswith(".")}
    assert resumed == {p: d for p, d in clean.items() if not p.name.startswith(".")}
    assert len(open_dataset("cityscapes", out)) == 3


def test_a_cut_short_or_mismatched_file_is_found_from_the_headers_and_named(ade_root, city_root, tmp_path):
    root = _copy_tree(ade_root, tmp_path / "ADEChallengeData2016")
    ds = open_dataset("ade20k", root)
    ds.check_files()  # an intact set passes
    image, label = ds.pairs[2]
    with open(image, "ab") as f:  # data after JPEG's end marker, as some encoders write: not a fault
        f.write(b"\x00" * 3000)
    seen = []
    ds.check_files(advance=lambda: seen.append(1))
    assert len(seen) == 3 and ds[2].error is None
    for path, what in ((image, "image"), (label, "label map")):
        intact = path.read_bytes()
        path.write_bytes(intact[: len(intact) // 2])  # a copy cut short
        with pytest.raises(DataError) as info:
            ds.check_files()
        message = str(info.value)
        assert message.startswith(f"cannot read {what} {path} (") and "replace the file with an intact copy" in message
        assert "truncated" in message and "\n" not in message
        assert ds[2].error is not None  # decoding would have found it too, part-way through an evaluation
        path.write_bytes(intact)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(label)
    with pytest.raises(DataError, match=f"label map {label} is 8x8 \\(WxH\\) but its image {image.name} is"):
        ds.check_files()
    Image.fromarray(np.zeros((*Image.open(image).size[::-1], 3), np.uint8)).save(label)
    with pytest.raises(DataError, match=f"label map {label} has mode RGB \\(3 channels\\)"):
        ds.check_files()
    open_dataset("cityscapes", city_root).check_files()  # PNG images, labelTrainIds preferred


def test_a_generated_set_is_marked_and_a_copy_of_it_without_the_marker_is_not(ade_root, city_root, tmp_path):
    ds = open_dataset("ade20k", ade_root)
    assert ds.synthetic["dataset"] == "ade20k" and ds.synthetic["num"] == 3
    assert open_dataset("cityscapes", city_root).synthetic["train_ids"] is True
    root = _copy_tree(ade_root, tmp_path / "ADEChallengeData2016")
    (root / "images" / "validation" / synthetic.MANIFEST).unlink()
    assert open_dataset("ade20k", root).synthetic is None
