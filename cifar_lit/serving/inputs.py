"""Request bodies to images, or a ``Rejected`` with its HTTP status and a one-line reason.

Nothing here raises on bad input: the server batches requests, and one bad image must be
answered with its own 4xx without failing the good requests batched with it.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, NamedTuple

from PIL import Image, UnidentifiedImageError

from cifar_lit.data.images import to_rgb8

FIELD = "file"  # the multipart field that carries the image
USAGE = f"send an image as the multipart field '{FIELD}', or JSON {{\"image\": base64}} or {{\"images\": [base64, ...]}}"


class Rejected(NamedTuple):
    status: int
    reason: str


class Images(NamedTuple):
    """A request's images, decoded; ``batch``: sent as ``images`` (answered as a list)."""

    images: list[Image.Image]
    batch: bool


def decode_image(data: bytes, max_pixels: int, what: str = FIELD) -> Image.Image | Rejected:
    """8-bit RGB, as training and the predict flow read files; the pixel count is checked from
    the header before anything is decoded, so a decompression bomb costs nothing."""
    if not data:
        return Rejected(400, f"{what}: empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                return Rejected(413, f"{what}: {w}x{h} pixels is more than the {max_pixels} this server takes")
            return to_rgb8(im)
    except Image.DecompressionBombError as e:
        return Rejected(413, f"{what}: {e}".splitlines()[0][:300])
    except UnidentifiedImageError:
        return Rejected(415, f"{what}: not an image (no image format recognises it)")
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data
        return Rejected(400, f"{what}: unreadable image ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})")


def decode_request(request: Any, max_pixels: int, max_images: int) -> Images | Rejected:
    """A parsed multipart form (``file``) or JSON object (``image`` or ``images``) to images."""
    if isinstance(request, dict):
        if "image" in request:
            items, batch = [("image", request["image"])], False
        elif isinstance(request.get("images"), list) and request["images"]:
            if len(request["images"]) > max_images:
                return Rejected(413, f"images: {len(request['images'])} images; this server takes at most {max_images} a request")
            items, batch = [(f"images[{i}]", v) for i, v in enumerate(request["images"])], True
        else:
            return Rejected(422, USAGE)
        images = []
        for what, value in items:
            if not isinstance(value, str):
                return Rejected(422, f"{what}: expected a base64 string, got {type(value).__name__}")
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return Rejected(400, f"{what}: not valid base64")
            image = decode_image(data, max_pixels, what)
            if isinstance(image, Rejected):
                return image
            images.append(image)
        return Images(images, batch)
    upload = request.get(FIELD) if hasattr(request, "get") else None
    if upload is None or not hasattr(upload, "file"):
        return Rejected(422, USAGE)
    upload.file.seek(0)
    image = decode_image(upload.file.read(), max_pixels)
    return image if isinstance(image, Rejected) else Images([image], False)
