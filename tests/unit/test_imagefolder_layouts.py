"""Image folders as people lay them out: val/ and test/ folders (or --val-dir/--test-dir),
images in sub-folders of a class, every PIL mode decoded as the 8-bit RGB it shows, stratified
hold-outs (and --min-per-class), old split files, and the counts for the run summary.

Names added with these features are imported inside the tests, so that against the old code
each test fails on its own assertion or call, not on an import of the whole module.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import fakes
import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lit.data.common import DataError
from cifar_lit.data.formats import on_disk
from cifar_lit.data.imagefolder import scan_imagefolder
from cifar_lit.data.images import load_rgb32
from cifar_lit.data.prepare import prepare_data
from cifar_lit.data.signature import stat_signature
from cifar_lit.data.split import Split, make_split, split_file_path, split_fingerprint
from cifar_lit.data.tensors import load_tensors, split_parts
from tasks import download as download_task


def _doc(root: Path, val_size=0.2, test_size=0.2, seed=0, **scan) -> Split:
    ref = prepare_data("imagefolder", root, **scan)
    return Split.read(make_split(ref, val_size, test_size, seed, root))


def _where(doc: Split, part: str) -> Counter:
    """Which top folder the images of ``part`` come from (absolute paths: the folder)."""
    return Counter(rel.split("/")[0] if not rel.startswith("/") else str(Path(rel).parent.parent)
                   for rel, _ in (doc.samples[i] for i in getattr(doc, part)))


def _per_class(doc: Split, part: str) -> dict[str, int]:
    return dict(Counter(doc.classes[doc.samples[i][1]] for i in getattr(doc, part)))


# ---- 1. folder layouts ------------------------------------------------------------------------------


def test_a_val_folder_validates_and_test_is_still_held_out_from_train(tmp_path, caplog):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 10, "dog": 10}, "val": {"cat": 2, "dog": 3}})
    with caplog.at_level(logging.INFO, logger="cifar_lit.data.formats.imagefolder"):
        doc = _doc(root, val_size=0.5, test_size=0.2)  # the old code: val/ ignored, 50% of train validated
    assert _where(doc, "val") == {"val": 5}
    assert _where(doc, "test") == {"train": 4} and _per_class(doc, "test") == {"cat": 2, "dog": 2}  # never val/
    assert _where(doc, "train") == {"train": 16}
    line = f"val: {root}/val (5 images); test: 20% of train held out, stratified (4 images)"
    assert line in caplog.text
    assert doc.val_from == f"{root}/val" and doc.test_from == "20% of train held out, stratified"


@pytest.mark.parametrize("name", ["valid", "validation"])
def test_other_val_folder_names(tmp_path, name):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 6, "dog": 6}, name: {"cat": 1, "dog": 1}})
    assert _where(_doc(root), "val") == {name: 2}


def test_the_first_val_folder_present_wins_and_the_others_are_named(tmp_path, caplog):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 6, "dog": 6}, "val": {"cat": 1}, "validation": {"dog": 2}})
    doc = _doc(root)
    assert _where(doc, "val") == {"val": 1}
    assert f"{root}/validation is not used" in caplog.text


def test_val_and_test_folders_leave_all_of_train_for_training(tmp_path, caplog):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 3, "dog": 3}, "val": {"cat": 1, "dog": 1},
                                          "test": {"cat": 2, "dog": 1}})
    with caplog.at_level(logging.INFO, logger="cifar_lit.data.formats.imagefolder"):
        doc = _doc(root)
    assert (_where(doc, "train"), _where(doc, "val"), _where(doc, "test")) == ({"train": 6}, {"val": 2}, {"test": 3})
    assert f"val: {root}/val (2 images); test: {root}/test (3 images)" in caplog.text


def test_no_val_folder_and_val_size_zero_validates_nothing(tmp_path, caplog):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 5, "dog": 5}})
    with caplog.at_level(logging.INFO, logger="cifar_lit.data.formats.imagefolder"):
        doc = _doc(root, val_size=0, test_size=0.2)
    assert doc.val == () and len(doc.test) == 2 and len(doc.train) == 8
    assert "val: none (val_size 0); test: 20% of train held out, stratified (2 images)" in caplog.text


def test_val_dir_and_test_dir_choose_other_folders(tmp_path, make_config):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 4, "dog": 4}, "val": {"cat": 5},  # val/: not chosen
                                          "holdout": {"cat": 1, "dog": 1}})
    elsewhere = fakes.layout(tmp_path / "elsewhere", {"exam": {"cat": 2, "dog": 1}}, seed=3) / "exam"
    doc = _doc(root, val_dir=Path("holdout"), test_dir=elsewhere)  # relative to DIR, and absolute
    assert _where(doc, "val") == {"holdout": 2} and _where(doc, "test") == {str(elsewhere): 3}
    assert _where(doc, "train") == {"train": 8}
    # Both data paths read the absolute paths: the tensor cache and the per-sample DataModule.
    images, labels = split_parts(doc, root, parts=("test",))["test"]
    expected = [np.asarray(load_rgb32(elsewhere / c / f"{i:03d}.png")) for c, n in (("cat", 2), ("dog", 1))
                for i in range(n)]
    assert torch.equal(images, torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2)) and labels.tolist() == [0, 0, 1]
    from cifar_lit.data.datamodule import ImageDataModule

    dm = ImageDataModule.from_config(make_config(dataset="imagefolder", data_dir=root, val_dir="holdout", test_dir=elsewhere))
    dm.prepare_data()
    dm.setup()
    assert (len(dm.serving.train_set), len(dm.serving.val_set), len(dm.serving.test_set)) == (8, 2, 3)
    assert dm.serving.test_set[2][0].shape == (3, 32, 32) and dm.serving.test_set[2][1] == 1


@pytest.mark.parametrize("folder", ["val", "test"])
def test_a_class_only_in_val_or_test_is_a_one_line_error_naming_it(tmp_path, folder):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 4, "dog": 4}, folder: {"cat": 1, "zebra": 1}})
    with pytest.raises(DataError) as caught:  # the old code: val/ ignored (test/ was checked already)
        prepare_data("imagefolder", root)
    msg = str(caught.value)
    assert "zebra" in msg and f"{root}/{folder}" in msg and "\n" not in msg


@pytest.mark.parametrize(("flag", "value", "words"), [("val_dir", "nowhere", "is not a folder"),
                                                      ("test_dir", "nowhere", "is not a folder"),
                                                      ("val_dir", "train", "overlap"),
                                                      ("test_dir", "train/cat", "overlap")])
def test_a_val_or_test_dir_that_is_missing_or_overlaps_train_is_an_error(tmp_path, flag, value, words):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 4, "dog": 4}})
    with pytest.raises(DataError) as caught:
        prepare_data("imagefolder", root, **{flag: Path(value)})
    msg = str(caught.value)
    assert msg.startswith(f"{flag}: ") and words in msg and "\n" not in msg


def test_an_output_dir_inside_a_val_folder_is_refused(tmp_path):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 4, "dog": 4}, "val": {"cat": 1}})
    with pytest.raises(DataError, match="output_dir: .*val/runs"):  # the old code: accepted
        prepare_data("imagefolder", root, exclude=[root / "val" / "runs"])


# ---- 2. images in sub-folders ---------------------------------------------------------------------------


def test_images_in_sub_folders_count_at_any_depth_in_a_fixed_order(tmp_path):
    # dog's images are all in sub-folders: the old code failed "class folder ... dog is empty".
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 2, "cat/2019": 2, "cat/2019/may": 1, "dog/a/b/c": 3,
                                                    "cat/.thumbnails": 1}})
    scan = scan_imagefolder(root)
    assert [rel for rel, label in scan.train if label == 0] == [
        "train/cat/000.png", "train/cat/001.png", "train/cat/2019/000.png", "train/cat/2019/001.png",
        "train/cat/2019/may/000.png"]  # hidden folders are still ignored
    assert [rel for rel, label in scan.train if label == 1] == [f"train/dog/a/b/c/{i:03d}.png" for i in range(3)]
    again = scan_imagefolder(root)
    assert (again.train, again.fingerprint) == (scan.train, scan.fingerprint)


def test_a_nested_image_changes_the_fingerprint_and_the_cache_keys(tmp_path):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 2, "cat/deep/er": 2, "dog": 3}})
    nested = root / "train" / "cat" / "deep" / "er" / "001.png"

    def state():
        params = dict(dataset="imagefolder", data_dir=root, download_url=None, download_md5=None, bad_images="skip")
        ref = prepare_data("imagefolder", root)
        return (ref.fingerprint, stat_signature(root), on_disk("imagefolder", root, None),
                download_task._cache_key(None, params))

    before = state()
    Image.open(nested).transpose(Image.FLIP_LEFT_RIGHT).save(nested)  # an edited image, same name
    edited = state()
    assert all(a != b for a, b in zip(before, edited)), (before, edited)
    Image.open(nested).save(nested.with_name("002.png"))  # a new image, deep down
    added = state()
    assert all(a != b for a, b in zip(edited, added))


def test_a_symlink_loop_between_folders_is_skipped_with_a_reason(tmp_path):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 3, "cat/sub": 1, "dog": 3}})
    (root / "train" / "cat" / "sub" / "back").symlink_to(root / "train" / "cat", target_is_directory=True)
    (root / "train" / "dog" / "up").symlink_to(root / "train", target_is_directory=True)  # to the split folder
    (root / "train" / "dog" / "self").symlink_to("self")  # a link to itself: a file that cannot be used
    scan = scan_imagefolder(root)  # the old code: sub-folders ignored (so neither loop was seen)
    reasons = dict(scan.skipped_reasons)
    assert "symlink loop" in reasons["train/cat/sub/back"] and "symlink loop" in reasons["train/dog/up"]
    assert "Too many levels of symbolic links" in reasons["train/dog/self"]
    assert len(scan.train) == 7
    assert stat_signature(root) == stat_signature(root)  # the cache signature walks it too, and ends
    with pytest.raises(DataError) as caught:
        scan_imagefolder(root, "error")
    assert "train/cat/sub/back: symlink loop" in str(caught.value) and "\n" not in str(caught.value)


def test_a_sub_folder_whose_name_is_not_utf8_is_skipped_with_a_reason(tmp_path):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 3, "dog": 3}})
    bad = os.fsencode(root / "train" / "cat") + b"/d\xe9j\xe0"
    os.mkdir(bad)
    with open(bad + b"/1.png", "wb") as f:
        Image.new("RGB", (8, 8), (1, 2, 3)).save(f, "PNG")
    ref = prepare_data("imagefolder", root)
    assert "not valid UTF-8" in dict(ref.skipped_reasons)["train/cat/d\\xe9j\\xe0"]
    json.loads(Path(ref.manifest).read_bytes().decode("utf-8"))  # still strict UTF-8 JSON


def test_a_run_dir_inside_a_class_folder_is_refused(tmp_path):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 3, "dog": 3}})
    run = root / "train" / "cat" / "runs" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".lock").touch()
    (run / "summary.json").write_text("{}")
    with pytest.raises(DataError) as caught:  # the old code: ignored; now it would be read as images
        prepare_data("imagefolder", root)
    assert f"{root}/train/cat/runs" in str(caught.value) and "output dir" in str(caught.value)


# ---- 3. every PIL mode as 8-bit RGB ----------------------------------------------------------------------

H, W = 6, 8  # not square: a wrong EXIF rotation shows


def _grey_ref(values) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.uint8)[..., None], 3, axis=2)


def _over_white(rgb, alpha) -> np.ndarray:
    rgb, a = np.asarray(rgb, dtype=np.float64), np.asarray(alpha, dtype=np.float64)[..., None] / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def _sixteen(mode: str, fmt: str):
    v = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
    v[0, :4] = (0, 257, 32768, 65535)
    if mode == "I;16B":
        im = Image.frombytes("I;16B", (W, H), v.astype(">u2").tobytes())
    elif mode == "I":
        im = Image.fromarray(v.astype(np.int32))
    else:
        im = Image.fromarray(v)
    return im, fmt, _grey_ref(np.rint(v / 257.0))  # 65535 -> 255, 32768 -> 128; PIL's convert clipped at 255


def _float():
    v = np.linspace(-0.2, 1.2, H * W, dtype=np.float32).reshape(H, W)
    v[0, :3] = (0.0, 0.5, 1.0)
    return Image.fromarray(v), "TIFF", _grey_ref(np.rint(np.clip(v, 0, 1) * 255))


def _cmyk(fmt: str):
    c = np.zeros((16, 16, 4), np.uint8)  # 8x8 blocks of one colour: JPEG keeps them exact
    c[:8, :8], c[:8, 8:], c[8:, :8], c[8:, 8:] = (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 128)
    ref = np.zeros((16, 16, 3), np.uint8)
    ref[:8, :8], ref[:8, 8:], ref[8:, :8], ref[8:, 8:] = (0, 255, 255), (255, 0, 255), (255, 255, 0), (127, 127, 127)
    return Image.frombytes("CMYK", (16, 16), c.tobytes()), fmt, ref


PALETTE = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (40, 80, 120)]
INDEX = np.arange(H * W, dtype=np.uint8).reshape(H, W) % 4


def _palette(transparency):
    im = Image.frombytes("P", (W, H), INDEX.tobytes())
    im.putpalette([v for rgb in PALETTE for v in rgb])
    rgb = np.asarray(PALETTE, dtype=np.uint8)[INDEX]
    if transparency is None:
        return im, "PNG", rgb
    im.info["transparency"] = transparency
    alphas = [255] * 4
    if isinstance(transparency, int):
        alphas[transparency] = 0
    else:
        alphas[: len(transparency)] = list(transparency)
    return im, "PNG", _over_white(rgb, np.asarray(alphas)[INDEX])


def _alpha(mode: str):
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    alpha[0, :3] = (0, 128, 255)
    colour[0, 0] = (255, 0, 0)  # fully transparent red: white, not red (the old code showed red)
    if mode == "LA":
        grey = colour[..., 0]
        im = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
        return im, "PNG", _over_white(_grey_ref(grey), alpha)
    return Image.fromarray(np.dstack([colour, alpha])), "PNG", _over_white(colour, alpha)


def _bilevel():
    bits = (np.indices((H, W)).sum(0) % 2).astype(bool)
    return Image.fromarray(bits), "PNG", _grey_ref(bits * 255)


def _exif(orientation: int):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, : W // 2] = (255, 0, 0)
    rgb[:, W // 2 :] = (0, 0, 255)
    rgb[0, 0] = (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    ref = {3: np.rot90(rgb, 2), 6: np.rot90(rgb, -1), 8: np.rot90(rgb, 1)}[orientation]  # 6: 90 degrees clockwise
    return Image.fromarray(rgb), "PNG", np.ascontiguousarray(ref), {"exif": exif.tobytes()}


MODES = {
    "I;16-png": lambda: _sixteen("I;16", "PNG"),
    "I;16-tiff": lambda: _sixteen("I;16", "TIFF"),
    "I;16B-tiff": lambda: _sixteen("I;16B", "TIFF"),
    "I-tiff": lambda: _sixteen("I", "TIFF"),
    "F-tiff": _float,
    "CMYK-jpeg": lambda: _cmyk("JPEG"),
    "CMYK-tiff": lambda: _cmyk("TIFF"),
    "P": lambda: _palette(None),
    "P-transparent-index": lambda: _palette(2),
    "P-alpha-per-entry": lambda: _palette(bytes([0, 100, 200])),
    "LA": lambda: _alpha("LA"),
    "RGBA": lambda: _alpha("RGBA"),
    "1": _bilevel,
    "exif-rotate-180": lambda: _exif(3),
    "exif-rotate-90-cw": lambda: _exif(6),
    "exif-rotate-90-ccw": lambda: _exif(8),
}


@pytest.mark.parametrize("case", MODES)
def test_every_mode_decodes_to_the_8bit_rgb_it_shows(tmp_path, case):
    im, fmt, ref, *options = MODES[case]()
    path = tmp_path / f"img.{fmt.lower()}"
    im.save(path, fmt, **(options[0] if options else {"quality": 95} if fmt == "JPEG" else {}))
    # End to end, as the scan, the tensor cache and the DataLoader decode it: the reference's
    # centre square at 32 px.
    from cifar_lit.data.images import square

    resized = np.asarray(square(Image.fromarray(ref), 32)).astype(int)
    assert np.abs(np.asarray(load_rgb32(path)).astype(int) - resized).max() <= 1, case
    # The conversion itself, at full size.
    with Image.open(path) as opened:
        assert case.startswith("exif") or opened.mode == im.mode  # the file kept the mode under test
        from cifar_lit.data.images import to_rgb8

        got = to_rgb8(opened)
    assert got.mode == "RGB" and got.size == (ref.shape[1], ref.shape[0])
    diff = np.abs(np.asarray(got).astype(int) - ref.astype(int))
    assert diff.max() <= 1, f"{case}: off by {diff.max()}\n{np.asarray(got)[..., 0]}\n{ref[..., 0]}"


def test_a_16_bit_png_in_a_dataset_is_not_white(tmp_path):
    """The report that started this: a 16-bit PNG scanned, split and decoded on the tensor path."""
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 4, "dog": 4}})
    Image.fromarray(np.full((16, 16), 16384, np.uint16)).save(root / "train" / "cat" / "deep.png")
    doc = _doc(root, val_size=0, test_size=0.25)
    i = next(i for i, (rel, _) in enumerate(doc.samples) if rel.endswith("deep.png"))
    pixels = load_tensors(doc, root)["train"][i]
    assert pixels.unique().tolist() == [64]  # 16384 / 257; the old code: 255 everywhere


# ---- 4. stratified, seeded splits ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hold_outs_take_the_same_fraction_from_every_class(tmp_path, seed):
    root = fakes.layout(tmp_path / "ds", {"train": {"a": 20, "b": 10, "c": 5}})
    doc = _doc(root, val_size=0.2, test_size=0.2, seed=seed)
    assert _per_class(doc, "test") == {"a": 4, "b": 2, "c": 1}  # 7 of 35, 20% of each class
    assert _per_class(doc, "val") == {"a": 3, "b": 2, "c": 1}  # 6 of the 28 left, shares rounded per class
    assert _per_class(doc, "train") == {"a": 13, "b": 6, "c": 3}
    assert not (set(doc.train) & set(doc.val) or set(doc.train) & set(doc.test) or
                set(doc.val) & set(doc.test))


def test_the_split_is_seeded_and_deterministic(tmp_path):
    root = fakes.layout(tmp_path / "ds", {"train": {"a": 8, "b": 8}})
    ref = prepare_data("imagefolder", root)
    first = make_split(ref, 0.25, 0.25, 3, root).read_bytes()
    assert make_split(prepare_data("imagefolder", root), 0.25, 0.25, 3, root).read_bytes() == first
    assert json.loads(make_split(ref, 0.25, 0.25, 4, root).read_bytes())["train"] != json.loads(first)["train"]


def test_every_class_is_in_train_and_in_every_held_out_split(tmp_path):
    root = fakes.layout(tmp_path / "ds", {"train": {"big": 40, "small": 3}})
    doc = _doc(root, val_size=0.05, test_size=0.05)  # 5% of 3 rounds to none: small gives one anyway
    for part in ("train", "val", "test"):
        assert _per_class(doc, part).get("small") == 1, part
    doc = _doc(root, val_size=0.6, test_size=0.5)  # big fractions: small still keeps one to train
    assert _per_class(doc, "train")["small"] == 1


@pytest.mark.parametrize(("layout", "short"), [
    ({"train": {"cat": 8, "dog": 8, "yak": 1}}, "yak (1 image)"),  # the old code: yak only in test, or only in train
    ({"train": {"cat": 8, "dog": 8, "yak": 2}}, "yak (2 images)"),  # one for train, val and test each: 3
    ({"train": {"cat": 8, "dog": 8, "yak": 1}, "val": {"yak": 1}}, "yak (1 image)"),  # test held out: 2
])
def test_a_class_too_small_for_every_split_is_a_one_line_error(tmp_path, layout, short):
    root = fakes.layout(tmp_path / "ds", layout)
    with pytest.raises(DataError) as caught:
        _doc(root)
    msg = str(caught.value)
    assert short in msg and "--min-per-class" in msg and "\n" not in msg


def test_a_class_with_one_image_is_fine_when_folders_hold_val_and_test(tmp_path):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 3, "dog": 1}, "val": {"dog": 1}, "test": {"dog": 1}})
    doc = _doc(root)
    assert _per_class(doc, "train") == {"cat": 3, "dog": 1}


def test_min_per_class_leaves_small_classes_out_with_one_warning(tmp_path, caplog):
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 8, "emu": 2, "frog": 8, "yak": 1},
                                          "test": {"cat": 1, "yak": 1, "frog": 1}})
    ref = prepare_data("imagefolder", root)
    caplog.clear()
    doc = Split.read(make_split(ref, 0.25, 0.2, 0, root, min_per_class=3))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["min_per_class 3: leaving out 2 class(es) with fewer images in train/: emu (2), yak (1)"]
    assert doc.classes == ("cat", "frog") and doc.left_out == {"emu": 2, "yak": 1}
    assert {label for _, label in doc.samples} == {0, 1}  # renumbered for the two classes left
    assert not [rel for rel, _ in doc.samples if "/yak/" in rel or "/emu/" in rel]  # test/yak too
    assert _per_class(doc, "test") == {"cat": 1, "frog": 1}
    # The samples differ from the full dataset's: the tensor cache is a different file, and right.
    assert doc.content_fingerprint != ref.fingerprint
    t = load_tensors(doc, root)
    assert t["train_labels"].tolist() == [label for _, label in doc.samples]
    other = split_file_path(ref, 0.25, 0.2, 0, root, min_per_class=2)
    assert other != split_file_path(ref, 0.25, 0.2, 0, root, min_per_class=3) and not other.exists()


def test_min_per_class_and_split_data_task_and_its_cache_key(tmp_path):
    from tasks.split import _cache_key, split_data

    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 4, "dog": 4, "yak": 1}})
    ref = prepare_data("imagefolder", root)
    params = {"ref": ref, "val_size": 0.25, "test_size": 0.25, "seed": 0, "data_dir": root}
    assert _cache_key(None, params | {"min_per_class": 2}) != _cache_key(None, params)
    doc = Split.read(split_data.fn(ref, 0.25, 0.25, 0, root, min_per_class=2))
    assert doc.classes == ("cat", "dog")


def test_an_old_split_file_is_rebuilt_under_a_new_name_and_refused_if_read(tmp_path):
    root = fakes.layout(tmp_path / "ds", {"train": {"a": 6, "b": 6}})
    ref = prepare_data("imagefolder", root)
    old_name = f"split-{split_fingerprint(ref.fingerprint, 0.25, 0.25, 0)}.json"  # how the old code named it
    new = make_split(ref, 0.25, 0.25, 0, root)
    assert new.name != old_name  # so a cached old file is never picked up as this split
    doc = json.loads(new.read_text())
    doc["version"] = 1  # what the old code wrote: same keys, not stratified
    old = tmp_path / "run" / "split.json"
    old.parent.mkdir()
    old.write_text(json.dumps(doc))
    with pytest.raises(DataError) as caught:
        Split.read(old)
    msg = str(caught.value)
    assert "older cifar_lit" in msg and str(old) in msg and "\n" not in msg


def test_cifar_splits_are_unchanged(tmp_path, server, archives):
    ref = prepare_data("cifar10", tmp_path, server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]))
    path = make_split(ref, 40, 0.1, 7, tmp_path)
    assert path.name == f"split-{split_fingerprint(ref.fingerprint, 40, None, 7)}.json"  # the old name
    doc = Split.read(path)
    assert doc.version == 1 and doc.test is None and doc.samples is None and len(doc.val) == 40


# ---- 5. counts for the summary ---------------------------------------------------------------------------


def test_data_counts_of_an_image_folder_split(tmp_path):
    from cifar_lit.data.split import data_counts

    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 10, "dog": 5}, "val": {"cat": 2}})
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    ref = prepare_data("imagefolder", root)
    doc = Split.read(make_split(ref, 0.2, 0.2, 0, root))
    counts = data_counts(doc, doc.classes, ref.skipped_reasons)
    assert counts == {
        "train": 12, "val": 2, "test": 3,
        "per_class": {"cat": {"train": 8, "val": 2, "test": 2}, "dog": {"train": 4, "val": 0, "test": 1}},
        "skipped": 1,
        "skipped_files": [["train/dog/broken.jpg", "not a readable image (not a format PIL recognises)"]],
    }
    json.dumps(counts)  # ready for summary.json and a table
    assert data_counts(doc, doc.classes, ["a.png"])["skipped_files"] == [["a.png", ""]]


def test_data_counts_of_a_cifar_split():
    from cifar_lit.data.split import Split, data_counts

    split = Split(version=1, dataset="cifar10", data_fingerprint="ab" * 8, content_fingerprint="cd" * 32, seed=0,
                  val_size=1, test_size=None, classes=("x", "y"), skipped=(), train=(0, 2, 3), val=(1,), test=None,
                  samples=None)
    assert data_counts(split, ["x", "y"]) == {"train": 3, "val": 1, "test": None, "per_class": {}, "skipped": 0,
                                              "skipped_files": []}
    counts = data_counts(split, ["x", "y"], labels=[0, 1, 1, 0], test_labels=[1, 1])
    assert counts["test"] == 2
    assert counts["per_class"] == {"x": {"train": 2, "val": 0, "test": 0}, "y": {"train": 1, "val": 1, "test": 2}}
