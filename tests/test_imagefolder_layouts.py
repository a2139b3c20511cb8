"""Image folders as people make them: every PIL mode decoded as the 8-bit RGB it shows.

Names added with these features are imported inside the tests, so that against the old code
each test fails on its own assertion or call, not on an import of the whole module.
"""

from __future__ import annotations

from pathlib import Path

import fakes
import numpy as np
import pytest
from PIL import Image

from cifar_lit.data.imagefolder import load_rgb32
from cifar_lit.data.prepare import prepare_data
from cifar_lit.data.split import make_split, read_split
from cifar_lit.data.tensors import load_tensors


def _doc(root: Path, val_size=0.2, test_size=0.2, seed=0) -> dict:
    ref = prepare_data("imagefolder", root)
    return read_split(make_split(ref, val_size, test_size, seed, root))


# ---- every PIL mode as 8-bit RGB ------------------------------------------------------------------------

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
    # End to end, as the scan, the tensor cache and the DataLoader decode it: the reference, resized.
    resized = np.asarray(Image.fromarray(ref).resize((32, 32), Image.BILINEAR)).astype(int)
    assert np.abs(np.asarray(load_rgb32(path)).astype(int) - resized).max() <= 1, case
    # The conversion itself, at full size.
    with Image.open(path) as opened:
        assert case.startswith("exif") or opened.mode == im.mode  # the file kept the mode under test
        from cifar_lit.data.imagefolder import to_rgb8

        got = to_rgb8(opened)
    assert got.mode == "RGB" and got.size == (ref.shape[1], ref.shape[0])
    diff = np.abs(np.asarray(got).astype(int) - ref.astype(int))
    assert diff.max() <= 1, f"{case}: off by {diff.max()}\n{np.asarray(got)[..., 0]}\n{ref[..., 0]}"


def test_a_16_bit_png_in_a_dataset_is_not_white(tmp_path):
    """The report that started this: a 16-bit PNG scanned, split and decoded on the tensor path."""
    root = fakes.layout(tmp_path / "ds", {"train": {"cat": 4, "dog": 4}})
    Image.fromarray(np.full((16, 16), 16384, np.uint16)).save(root / "train" / "cat" / "deep.png")
    doc = _doc(root, val_size=0, test_size=0.25)
    i = next(i for i, (rel, _) in enumerate(doc["samples"]) if rel.endswith("deep.png"))
    pixels = load_tensors(doc, root)["train"][i]
    assert pixels.unique().tolist() == [64]  # 16384 / 257; the old code: 255 everywhere
