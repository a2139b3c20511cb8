"""Decoding images as training sees them: any PIL mode as 8-bit RGB (``to_rgb8``), the square
the network takes (``square``, ``load_rgb``), and the default image size from the photos' sides."""

from __future__ import annotations

import io
import statistics
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar_lit.data.common import SIZE, one_line

ORIENTATION = 0x0112  # the EXIF tag
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")  # 2-D uint8: mode L


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB at its own size, its EXIF orientation applied.

    - 16-bit greyscale (``I;16``, ``I;16B``, ...; ``I`` is read as 16-bit, as PIL opens some
      16-bit files) scales by the bit depth, 65535 -> 255 (PIL's own convert clips at 255).
    - 32-bit float (``F``) is read as [0, 1] (the float-image convention of numpy, torchvision
      and scikit-image), clipped; NaN is black.
    - Transparency (an alpha channel, or a palette's or colour key's ``transparency``) is
      composited onto white: what a viewer shows on a white page, and the same colour for every
      transparent pixel whatever RGB it happens to store (dropping alpha would show that).
    - Everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...) by PIL's ``convert("RGB")``.
    """
    try:
        if im.getexif().get(ORIENTATION, 1) != 1:  # checked first: exif_transpose copies even upright images
            im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - unreadable EXIF: the pixels as stored are still an image
        pass
    if im.mode in SIXTEEN_BIT:
        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        return _grey((a * 255 + 32767) // 65535)
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return _grey(np.rint(np.clip(a, 0.0, 1.0) * 255))
    if im.mode in ALPHA_MODES or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def square(im: Image.Image, size: int) -> Image.Image:
    """``im`` resized (bilinear, antialiased) so that its shorter side is ``size``, aspect ratio
    kept, then its centre ``size`` x ``size`` cropped: the evaluation view of an image at any
    ``image_size`` (validation, test, predict, the tensor cache). A square image is only resized.

    >>> square(Image.new("RGB", (96, 48)), 32).size, square(Image.new("RGB", (40, 90)), 20).size
    ((32, 32), (20, 20))
    """
    w, h = im.size
    if (w, h) == (size, size):
        return im
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((rw, rh), Image.BILINEAR)  # PIL widens the filter when shrinking: no aliasing
    left, top = (rw - size) // 2, (rh - size) // 2
    return im if (rw, rh) == (size, size) else im.crop((left, top, left + size, top + size))


def read_image(path: str) -> tuple[bytes | None, tuple[int, int] | None, str | None]:
    """The file's bytes and decoded (width, height) if training can use it, else None, None and
    why (one line)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return None, None, f"cannot read it: {e.strerror or e}"
    try:
        # Decoded from the bytes just hashed, and converted as training converts it: what passes
        # here is exactly what the tensor cache and the DataLoader will decode (resizing a decoded
        # RGB image cannot fail, so it is left to them).
        with Image.open(io.BytesIO(data)) as im:
            size = to_rgb8(im).size
    except UnidentifiedImageError:
        return None, None, "not a readable image (not a format PIL recognises)"
    except Exception as e:  # noqa: BLE001 - a crafted file makes PIL raise far more than OSError
        # (DecompressionBombError, struct.error, MemoryError, ...): one such file must not stop a scan.
        return None, None, f"not a readable image ({type(e).__name__}: {one_line(e)})"
    return data, size, None


def median_side(sizes) -> int | None:
    """The median shorter side of images given as (width, height); None for none. The lower
    median, so it is always the side of one of the images.

    >>> median_side([(640, 480), (30, 40), (500, 800), (96, 96)]), median_side([])
    (96, None)
    """
    sides = [min(w, h) for w, h in sizes]
    return statistics.median_low(sides) if sides else None


# The default size, measured on clothing5 (5 classes of photos, shorter sides 400-888 px, median
# 400; its 723 train/ images trained, its 194 test/ images tested), recipe cpu-fast (airnet_s,
# tensor path) with batch 32 and 30 epochs, seeds 42 and 1, on a shared 2-core AMD EPYC (AVX2):
#
#   image_size   test acc (seed 42, 1)   fit s (seed 42, 1)   time per step vs 32 px (paired)
#   32           93.30%, 93.81%          183, 30              1.0x
#   48           92.27%, 92.78%          205, 55              -
#   64           92.27%, 92.78%          1532, 265            3.4x
#   96           92.78%, 92.78%          363, 775             9.5x
#
# Larger inputs scored no better (one test image is 0.52 points; the seeds differ by 0.5-1 point)
# and cost 3.4x-9.5x per step, so the default is 32 px whatever the photos' size. The fit times
# swung 6x with the other jobs on the machine (the 32 px fit took 183 s and 30 s); the paired step
# times (``airnet_s``, batch 32, sizes taking turns in one process) are the cost to go by. A
# dataset whose classes differ in small details may still gain from ``--image-size``; measure it.


def default_image_size(median_side: int | None) -> int:
    """The image size a run uses when none is given, from the median shorter side of the train
    images (``median_side`` in an image-folder split; None for CIFAR, or unknown): 32 px for
    every median side, as measured above (photos of 400 px and more gained nothing from 48, 64
    or 96 px at 2-10x the cost); smaller images are enlarged to it.

    >>> [default_image_size(s) for s in (None, 20, 32, 100, 400, 4000)]
    [32, 32, 32, 32, 32, 32]
    """
    return SIZE


def load_rgb(path: Path, size: int | None = None) -> Image.Image:
    """Any PIL-readable image as 8-bit RGB (``to_rgb8``: every mode, transparency on white, EXIF
    orientation); with ``size``, as the ``size`` x ``size`` square the network sees (``square``:
    the shorter side resized to ``size``, aspect ratio kept, the centre cropped)."""
    with Image.open(path) as im:
        im = to_rgb8(im)
        return im if size is None else square(im, size)


def load_rgb32(path: Path) -> Image.Image:
    """``load_rgb`` at CIFAR's 32x32."""
    return load_rgb(path, SIZE)
