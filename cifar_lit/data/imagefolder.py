"""Image-folder datasets: ``DIR/train/<class>/*`` and an optional ``DIR/test/<class>/*``.

Class names are the folder names under ``train/``, sorted; a class folder may be a symlink
(followed). Every file is decoded once while scanning, exactly as training decodes it
(``to_rgb8``: any PIL mode as 8-bit RGB, EXIF orientation applied). A file
that cannot be used (not an image PIL reads, a decompression bomb, a broken symlink or a
symlink loop, a FIFO, a name that is not UTF-8, a read error) is skipped with a warning and a
reason (``bad_images="skip"``, the default: one corrupt file should not cost a nightly retrain)
or stops the scan with one line naming it and the reason (``"error"``). Skipped files are
counted in the run summary. Hidden files and folders are ignored.

Whatever would make a wrong model is an error instead: no class folders, a single class, a
class without one readable image, a class folder link whose target is missing, and a run's
output dir inside ``train/`` or ``test/`` (it would become a class).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)
SIZE = 32
CACHE_DIR = ".cifar_lit"  # derived files beside the data (cifar_lit.data.prepare.cache_dir)
# What a run's output dir holds (cifar_lit.rundir takes .lock before anything else is written).
RUN_FILES = frozenset({".lock", "summary.json", "split.json", "checkpoints"})
# Part of every fingerprint: bump it when the same files would give other samples or pixels
# (the decoding, the walk, the layout), so caches keyed by the fingerprint (manifests, tensor
# caches, splits) are made again instead of serving what the old code derived.
# 2: to_rgb8 (16-bit, float, alpha on white, EXIF orientation).
SCAN_FORMAT = 2


class DataError(ValueError):
    """The dataset on disk cannot be used; the message names the file or folder."""


@dataclass
class Scan:
    classes: list[str]
    train: list[tuple[str, int]]  # (path relative to DIR, label)
    test: list[tuple[str, int]] | None  # None: no test/ folder
    skipped: list[str] = field(default_factory=list)
    fingerprint: str = ""
    skipped_reasons: list[tuple[str, str]] = field(default_factory=list)  # (path, why), as in skipped


def shown(path) -> str:
    """A path as text that is always valid UTF-8 (for messages, JSON and W&B): the bytes of a
    name that is not UTF-8 appear as \\xNN escapes instead of lone surrogates."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _decodes(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # os.scandir gave lone surrogates for the bytes it could not decode
        return False


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _holds_run(folder: str) -> bool:
    try:
        return bool(RUN_FILES & set(os.listdir(folder)))
    except OSError:
        return False


def _is_run_dir(folder: str) -> bool:
    """A run's output dir (or a --runs-dir of them) where a class folder was expected: it holds
    a run's files and no file that could be an image (summary.json and split.json aside)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    subdirs = []
    for e in entries:
        try:
            is_dir = e.is_dir()
        except OSError:
            return False  # something broken inside: let the scan report it
        if is_dir:
            subdirs.append(e.path)
        elif not e.name.startswith(".") and e.name not in RUN_FILES:
            return False  # a file a class folder could hold
    return _holds_run(folder) or any(_holds_run(d) for d in subdirs)


def _class_folders(root: Path, split: str, exclude: tuple[Path, ...] = ()) -> list[str]:
    """The class folder names under ``root/split``: visible folders and folder symlinks. A link
    whose target is missing (an unmounted share) or that loops is an error, not a lost class."""
    top = root / split
    names = []
    for e in os.scandir(top):
        if e.name.startswith("."):
            continue
        try:
            is_dir = e.is_dir()  # follows symlinks
        except OSError as err:
            raise DataError(f"data_dir: {shown(e.path)}: {err.strerror or err}") from None
        if not is_dir:
            if e.is_symlink():
                raise DataError(f"data_dir: {shown(e.path)} links to {shown(os.readlink(e.path))}, which does not "
                                "exist; mount or fix it, or remove the link (a class would be missing)")
            continue  # a plain file beside the class folders: not a class
        if not _decodes(e.name):
            raise DataError(f"data_dir: class folder {shown(e.path)}: the name is not valid UTF-8; rename it")
        real = Path(e.path).resolve()
        for out in exclude:
            if out == real or real in out.parents:
                raise DataError(f"output_dir: {shown(out)} is inside {shown(top)}: a run's files there would become "
                                f"class '{e.name}'; put the output dir outside {shown(root)}")
        if _is_run_dir(e.path):
            raise DataError(f"data_dir: {shown(e.path)} is a run's output dir, not a class folder (--output-dir or "
                            f"--runs-dir inside {split}/?); put run outputs outside {shown(root)}")
        names.append(e.name)
    return sorted(names)


def _check_exclude(root: Path, exclude: tuple[Path, ...]) -> None:
    # Refused even before the folder exists: the flow takes its output dir before scanning, and
    # a standalone run creates it after; either way its files would be read as data next time.
    for out in exclude:
        for split in ("train", "test"):
            top = (root / split).resolve()
            if out == top or top in out.parents:
                raise DataError(f"output_dir: {shown(out)} is inside {shown(top)}: a run's files there would be "
                                f"read as images or classes; put the output dir outside {shown(root)}")


def list_classes(root: Path, exclude=()) -> list[str]:
    train = root / "train"
    exclude = tuple(Path(p).resolve() for p in exclude)
    classes = _class_folders(root, "train", exclude) if train.is_dir() else []
    if not classes:
        raise DataError(f"data_dir: {train} holds no class folders (expected {train}/<class>/<image>)")
    return classes


def _cache_identity(root: Path) -> bytes:
    """A random id kept in ``DIR/.cifar_lit``. It is part of ``stat_signature``, so deleting the
    derived files (manifest, splits, tensor caches) changes the download stage's cache key and
    the next run scans again instead of serving a result that points at a deleted manifest."""
    folder = root / CACHE_DIR
    path = folder / "id"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    except OSError:
        return b""
    if not (root / "train").is_dir():
        return b""  # no dataset here (yet): create nothing
    tmp = folder / f".id.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        folder.mkdir(exist_ok=True)
        tmp.write_text(uuid.uuid4().hex)
        try:
            os.link(tmp, path)  # atomic and never replaces: two processes agree on the first id
        except FileExistsError:
            pass
        return path.read_bytes()
    except OSError:  # a read-only data dir: no id, as before (scanning will fail to write anyway)
        return b""
    finally:
        tmp.unlink(missing_ok=True)


def _stat_line(path: str) -> bytes:
    # ctime and inode too: chmod (a file becoming unreadable) and a retargeted link change them.
    # A folder counts by identity only: what the scan reads in it is hashed file by file, and
    # a sub-folder of a class (not read) must not invalidate the cache whenever it changes.
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return f"dir:{st.st_dev}:{st.st_ino}".encode()
        return f"{st.st_mode}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}".encode()
    except OSError as e:  # dangling link, loop, no permission: the state is part of the signature
        return f"error {e.errno}".encode()


def stat_signature(root: Path) -> str:
    """Cheap hash of names, sizes, mtimes (and ctimes, inodes) of what the scan reads: the class
    folders under train/ and test/ (symlinked ones followed) and the files directly in them. It
    changes whenever a file is added, removed or edited, also behind a symlinked class folder,
    and when DIR/.cifar_lit is deleted (see ``_cache_identity``)."""
    root = Path(root)
    h = hashlib.sha256(b"cache " + _cache_identity(root) + b"\n")
    for split in ("train", "test"):
        try:
            classes = sorted(e.name for e in os.scandir(root / split) if not e.name.startswith("."))
        except OSError as e:
            h.update(f"{split}: error {e.errno}\n".encode())
            continue
        for name in classes:
            folder = os.path.join(root, split, name)
            h.update(os.fsencode(f"{split}/{name}") + b":" + _stat_line(folder) + b"\n")
            try:
                files = sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
            except NotADirectoryError:
                continue
            except OSError as e:
                h.update(f"error {e.errno}\n".encode())
                continue
            for f in files:
                path = os.path.join(folder, f)
                h.update(os.fsencode(f"{split}/{name}/{f}") + b":" + _stat_line(path) + b"\n")
    return h.hexdigest()


# ---- decoding -----------------------------------------------------------------------------------

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


def _rgb32(im: Image.Image) -> Image.Image:
    im = to_rgb8(im)
    if im.size != (SIZE, SIZE):
        im = im.resize((SIZE, SIZE), Image.BILINEAR)
    return im


def _read_image(path: str) -> tuple[bytes | None, str | None]:
    """The file's bytes if training can use it, else None and why (one line)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return None, f"cannot read it: {e.strerror or e}"
    try:
        # Decoded from the bytes just hashed, and converted as training converts it: what passes
        # here is exactly what the tensor cache and the DataLoader will decode.
        with Image.open(io.BytesIO(data)) as im:
            _rgb32(im)
    except UnidentifiedImageError:
        return None, "not a readable image (not a format PIL recognises)"
    except Exception as e:  # noqa: BLE001 - a crafted file makes PIL raise far more than OSError
        # (DecompressionBombError, struct.error, MemoryError, ...): one such file must not stop a scan.
        return None, f"not a readable image ({type(e).__name__}: {_one_line(e)})"
    return data, None


def _problem(entry: os.DirEntry) -> str | None:
    """Why a directory entry cannot be a sample before it is read, or None."""
    if not _decodes(entry.name):
        return "the file name is not valid UTF-8; rename it"
    try:
        if entry.is_file():  # follows symlinks
            return None
    except OSError as e:  # a symlink loop, or a link through a folder we may not enter
        return f"cannot stat it: {e.strerror or e}"
    if entry.is_symlink():
        return f"broken symlink: its target {shown(os.readlink(entry.path))} does not exist"
    return "not a regular file (a FIFO, socket or device)"


def _scan_split(root: Path, split: str, classes: list[str], bad: str, h, skipped: list[tuple[str, str]]):
    samples = []
    for label, name in enumerate(classes):
        folder = root / split / name
        entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name) \
            if folder.is_dir() else []
        # Sub-folders are not samples (as before); everything else is, or is skipped with a reason.
        entries = [e for e in entries if not _is_dir(e)]
        if split == "train" and not entries:
            raise DataError(f"data_dir: class folder {shown(folder)} is empty")
        for e in entries:
            rel = f"{split}/{name}/{e.name}"
            why = _problem(e)
            data = None
            if why is None:
                data, why = _read_image(e.path)
            if why is not None:
                if bad == "error":
                    raise DataError(f"{shown(root / rel)}: {why}")
                log.warning("skipping %s: %s", shown(root / rel), why)
                skipped.append((shown(rel), why))
                continue
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            samples.append((rel, label))
    return samples


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False  # a loop: reported as a file that cannot be used


def scan_imagefolder(root: Path, bad_images: str = "skip", exclude=()) -> Scan:
    """Decode every image once; return the usable samples and a content fingerprint.

    ``exclude``: paths that must not be read as data (the run's output dir): one inside
    ``train/`` or ``test/`` is an error, even before it exists."""
    root = Path(root)
    exclude = tuple(Path(p).resolve() for p in exclude)
    _check_exclude(root, exclude)
    classes = list_classes(root, exclude)
    if (root / "test").is_dir():
        extra = set(_class_folders(root, "test", exclude)) - set(classes)
        if extra:
            raise DataError(f"data_dir: {root / 'test'} has classes missing from train/: {', '.join(sorted(extra))}")
    h, skipped = hashlib.sha256(f"image folder, scan format {SCAN_FORMAT}\n".encode()), []
    train = _scan_split(root, "train", classes, bad_images, h, skipped)
    if not train:
        raise DataError(f"data_dir: {root / 'train'} holds no readable images")
    seen = {label for _, label in train}
    for label, name in enumerate(classes):
        if label not in seen:  # the model would have a class it never sees
            raise DataError(f"data_dir: class folder {shown(root / 'train' / name)} holds no readable images")
    if len(classes) < 2:
        raise DataError(f"data_dir: {root / 'train'} holds one class folder ({classes[0]}); "
                        "a classifier needs at least two classes")
    test = _scan_split(root, "test", classes, bad_images, h, skipped) if (root / "test").is_dir() else None
    if test is not None and not test:
        raise DataError(f"data_dir: {root / 'test'} holds no readable images")
    if skipped:
        log.warning("skipped %d unusable file(s) under %s", len(skipped), root)
    return Scan(classes, train, test, [p for p, _ in skipped], h.hexdigest(), skipped)


def load_rgb32(path: Path) -> Image.Image:
    """Any PIL-readable image as 32x32 8-bit RGB (``to_rgb8``: every mode, transparency on
    white, EXIF orientation), other sizes resized (bilinear, aspect ratio not kept) to the
    32x32 the models expect."""
    with Image.open(path) as im:
        return _rgb32(im)
