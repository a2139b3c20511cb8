"""Image-folder datasets: ``DIR/train/<class>/...``, with optional validation and test folders.

Layout. ``train/`` is required; its class folders name the classes (sorted; a class folder may
be a symlink, followed). The validation folder is ``--val-dir``, else the first of ``val/``,
``valid/``, ``validation/`` present; the test folder is ``--test-dir``, else ``test/`` if present
(``--val-dir``/``--test-dir`` are absolute or relative to DIR). Their classes must be a subset of
train's. ``cifar_lit.data.split`` holds out from train whatever split has no folder.

Every image under a class folder counts, at any depth (like torchvision's ``ImageFolder``), in
a deterministic order: name by name, depth first. Folders are followed through symlinks; one
that leads back to a folder above it (a symlink loop) is skipped with a reason, not walked forever.

Every file is decoded once while scanning, exactly as training decodes it (``to_rgb8``: any PIL
mode as 8-bit RGB, EXIF orientation applied), and its size as decoded, (width, height), is
recorded (``Scan.sizes``; the split's ``median_side`` and ``default_image_size`` come from it).
Training, evaluation and prediction then see each image as a square of the run's image size
(``square``, ``load_rgb``).

A file that cannot be used (not an image PIL reads, a decompression bomb, a broken symlink or a
symlink loop, a FIFO, a name that is not UTF-8, a read error, a folder that cannot be listed) is
skipped with a warning and a reason (``bad_images="skip"``, the default: one corrupt file should
not cost a nightly retrain) or stops the scan with one line naming it and the reason
(``"error"``). Skipped files are counted in the run summary. Hidden files and folders are ignored.

Whatever would make a wrong model is an error instead: no class folders, a single class, a
class without one readable image, a class in a val/test folder that train lacks, a class folder
link whose target is missing, and a run's output dir inside a data folder (it would become a
class, or its files images).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import statistics
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)
SIZE = 32  # CIFAR's side, and the side of image-folder images while no image_size is set
CACHE_DIR = ".cifar_lit"  # derived files beside the data (cifar_lit.data.prepare.cache_dir)
CACHE_ENV = "CIFAR_LIT_CACHE"  # the user's cache (also the machine probe's): derived files of read-only data


def derived_dir(root: Path) -> Path:
    """Where the files derived from the data under ``root`` live (manifests, split files, tensor
    caches, the cache id): ``root/.cifar_lit``, beside the data; where ``root`` cannot be written
    (a read-only mount or share), a folder of its own in the user's cache (``CIFAR_LIT_CACHE``,
    else ``~/.cache/cifar_lit``), named by ``root``'s resolved path, so read-only data still
    trains. A ``root`` that does not exist yet (CIFAR before its download) is created beside."""
    root = Path(root)
    beside = root / CACHE_DIR
    if not root.is_dir() or os.access(beside if beside.is_dir() else root, os.W_OK):
        return beside
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifar_lit"
    return Path(base) / "data" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


# What a run's output dir holds (cifar_lit.rundir takes .lock before anything else is written).
RUN_FILES = frozenset({".lock", "summary.json", "split.json", "checkpoints"})
VAL_FOLDERS = ("val", "valid", "validation")  # the first present is the validation folder
# Part of every fingerprint: bump it when the same files would give other samples or pixels
# (the decoding, the walk, the layout), so caches keyed by the fingerprint (manifests, tensor
# caches, splits) are made again instead of serving what the old code derived.
# 2: recursive class folders, val/ folders, to_rgb8 (16-bit, float, alpha on white, EXIF).
# 3: the manifest records every image's size; images are resized keeping their aspect ratio and
#    centre-cropped (``square``) at any image_size, no longer squashed to 32x32.
SCAN_FORMAT = 3


class DataError(ValueError):
    """The dataset on disk cannot be used; the message names the file or folder."""


@dataclass
class Scan:
    classes: list[str]
    train: list[tuple[str, int]]  # (path relative to DIR, or absolute outside DIR, label)
    test: list[tuple[str, int]] | None  # None: no test folder
    skipped: list[str] = field(default_factory=list)
    fingerprint: str = ""
    skipped_reasons: list[tuple[str, str]] = field(default_factory=list)  # (path, why), as in skipped
    val: list[tuple[str, int]] | None = None  # None: no validation folder
    val_folder: str | None = None  # the folders used, as shown to people (absolute)
    test_folder: str | None = None
    # part ("train", "val", "test") -> (width, height) of each of its samples, in order, as
    # decoded (EXIF orientation applied); a part without a folder is absent.
    sizes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """The folders of an image-folder dataset; None where there is none."""

    train: Path
    val: Path | None
    test: Path | None


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


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies under it (both resolved)."""
    return a == b or b in a.parents


# ---- layout -------------------------------------------------------------------------------------


def _chosen(root: Path, given, flag: str) -> Path:
    path = Path(given)
    path = Path(os.path.abspath(path if path.is_absolute() else root / path))
    if not path.is_dir():
        raise DataError(f"{flag}: {shown(path)} is not a folder")
    return path


def find_layout(root: Path, val_dir=None, test_dir=None) -> Layout:
    """Which folders hold train, validation and test images (see the module docstring)."""
    root = Path(os.path.abspath(root))
    train = root / "train"
    if val_dir is not None:
        val = _chosen(root, val_dir, "val_dir")
    else:
        present = [root / name for name in VAL_FOLDERS if (root / name).is_dir()]
        val = present[0] if present else None
        for other in present[1:]:
            log.warning("%s is not used: %s is the validation folder (--val-dir chooses another)", shown(other), shown(val))
    test = _chosen(root, test_dir, "test_dir") if test_dir is not None else (root / "test" if (root / "test").is_dir() else None)
    named = [("train", train)] + [(n, p) for n, p in (("val_dir", val), ("test_dir", test)) if p is not None]
    for i, (a_name, a) in enumerate(named):
        for b_name, b in named[i + 1 :]:
            ra, rb = a.resolve(), b.resolve()
            if _inside(ra, rb) or _inside(rb, ra):
                raise DataError(f"{b_name}: {shown(b)} and the {a_name.removesuffix('_dir')} folder {shown(a)} "
                                "overlap; give each split its own folder")
    return Layout(train, val, test)


def _prefix(root: Path, folder: Path) -> str:
    """How sample paths in ``folder`` begin: relative to DIR when inside it, else absolute (the
    split's users join them to DIR, which leaves an absolute path as it is)."""
    try:
        return Path(folder).relative_to(Path(os.path.abspath(root))).as_posix()
    except ValueError:
        return str(folder)


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


def _run_dir_error(path: str, root: Path) -> DataError:
    return DataError(f"data_dir: {shown(path)} is a run's output dir, not images (--output-dir or --runs-dir "
                     f"inside the data?); put run outputs outside {shown(root)}")


def _class_folders(top: Path, root: Path, exclude: tuple[Path, ...] = ()) -> list[str]:
    """The class folder names under ``top``: visible folders and folder symlinks. A link whose
    target is missing (an unmounted share) or that loops is an error, not a lost class."""
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
            if _inside(out, real):
                raise DataError(f"output_dir: {shown(out)} is inside {shown(top)}: a run's files there would become "
                                f"class '{e.name}'; put the output dir outside {shown(root)}")
        if _is_run_dir(e.path):
            raise _run_dir_error(e.path, root)
        names.append(e.name)
    return sorted(names)


def _check_exclude(root: Path, exclude: tuple[Path, ...], folders=()) -> None:
    # Refused even before the folder exists: the flow takes its output dir before scanning, and
    # a standalone run creates it after; either way its files would be read as data next time.
    for out in exclude:
        for folder in (root / "train", root / "test", *(root / n for n in VAL_FOLDERS), *folders):
            top = Path(folder).resolve()
            if _inside(out, top):
                raise DataError(f"output_dir: {shown(out)} is inside {shown(top)}: a run's files there would be "
                                f"read as images or classes; put the output dir outside {shown(root)}")


def list_classes(root: Path, exclude=()) -> list[str]:
    train = root / "train"
    exclude = tuple(Path(p).resolve() for p in exclude)
    classes = _class_folders(train, root, exclude) if train.is_dir() else []
    if not classes:
        raise DataError(f"data_dir: {train} holds no class folders (expected {train}/<class>/<image>)")
    return classes


# ---- walking a class folder ---------------------------------------------------------------------


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False  # a loop: reported as a file that cannot be used


def _dir_id(path: str) -> tuple[int, int]:
    st = os.stat(path)  # follows symlinks: a linked folder is the folder it links to
    return st.st_dev, st.st_ino


def _listing(folder: str, rel: str, problems: list[tuple[str, str]]) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        problems.append((rel, f"cannot list the folder: {e.strerror or e}"))
        return []


def walk_files(folder: str, rel: str, problems: list[tuple[str, str]], root: Path | None = None, outer=()):
    """Every visible entry under ``folder`` that is not a folder, at any depth, as (``rel``/...
    path, entry): name by name, depth first, so always in the same order. A sub-folder that
    cannot be entered, is not UTF-8 or leads back to ``folder``, a folder between, or one of
    ``outer`` (the split folder, DIR: a symlink loop) goes to ``problems`` as (path, why). With
    ``root``, a run's output dir inside is an error."""
    out = []
    try:
        start = frozenset({_dir_id(folder)})
    except OSError as e:
        problems.append((rel, f"cannot enter the folder: {e.strerror or e}"))
        return out
    for above in outer:
        try:
            start |= {_dir_id(str(above))}
        except OSError:
            pass
    stack = [(iter(_listing(folder, rel, problems)), rel, start)]
    while stack:
        entries, base, above = stack[-1]
        e = next(entries, None)
        if e is None:
            stack.pop()
            continue
        sub = f"{base}/{e.name}"
        if not _is_dir(e):
            out.append((sub, e))
            continue
        if not _decodes(e.name):
            problems.append((sub, "the folder name is not valid UTF-8; rename it"))
            continue
        try:
            ident = _dir_id(e.path)
        except OSError as err:
            problems.append((sub, f"cannot enter the folder: {err.strerror or err}"))
            continue
        if ident in above:
            problems.append((sub, "symlink loop: the folder links back to a folder above it"))
            continue
        if root is not None and _is_run_dir(e.path):
            raise _run_dir_error(e.path, root)
        stack.append((iter(_listing(e.path, sub, problems)), sub, above | {ident}))
    return out


# ---- cache signature ----------------------------------------------------------------------------


def _cache_identity(root: Path) -> bytes:
    """A random id kept in ``DIR/.cifar_lit``. It is part of ``stat_signature``, so deleting the
    derived files (manifest, splits, tensor caches) changes the download stage's cache key and
    the next run scans again instead of serving a result that points at a deleted manifest."""
    folder = derived_dir(root)
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
        folder.mkdir(parents=True, exist_ok=True)
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
    # A folder counts by identity: what the scan reads in it is hashed file by file.
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return f"dir:{st.st_dev}:{st.st_ino}".encode()
        return f"{st.st_mode}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}".encode()
    except OSError as e:  # dangling link, loop, no permission: the state is part of the signature
        return f"error {e.errno}".encode()


def stat_signature(root: Path, folders=()) -> str:
    """Cheap hash of names, sizes, mtimes (and ctimes, inodes) of what the scan reads: every
    file at any depth under the class folders of train/, test/, val/, valid/, validation/ and
    ``folders`` (``--val-dir``/``--test-dir``; relative to DIR or absolute), symlinks followed.
    It changes whenever a file is added, removed or edited, also behind a symlinked folder, when
    one of these folders appears, and when DIR/.cifar_lit is deleted (see ``_cache_identity``)."""
    root = Path(root)
    h = hashlib.sha256(b"cache " + _cache_identity(root) + f" format {SCAN_FORMAT}\n".encode())
    tops = ["train", "test", *VAL_FOLDERS, *(str(f) for f in folders if f is not None)]
    for top in dict.fromkeys(tops):
        base = root / top
        try:
            classes = sorted(e.name for e in os.scandir(base) if not e.name.startswith("."))
        except OSError as e:
            h.update(os.fsencode(top) + f": error {e.errno}\n".encode())
            continue
        for name in classes:
            folder = os.path.join(base, name)
            h.update(os.fsencode(f"{top}/{name}") + b":" + _stat_line(folder) + b"\n")
            if not os.path.isdir(folder):
                continue
            problems: list[tuple[str, str]] = []
            for rel, e in walk_files(folder, f"{top}/{name}", problems, outer=(base, root)):
                h.update(os.fsencode(rel) + b":" + _stat_line(e.path) + b"\n")
            for rel, why in problems:
                h.update(os.fsencode(rel) + b": " + why.encode() + b"\n")
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


def _read_image(path: str) -> tuple[bytes | None, tuple[int, int] | None, str | None]:
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
        return None, None, f"not a readable image ({type(e).__name__}: {_one_line(e)})"
    return data, size, None


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


# ---- scanning -----------------------------------------------------------------------------------


def _skip(root: Path, rel: str, why: str, bad: str, skipped: list[tuple[str, str]]) -> None:
    if bad == "error":
        raise DataError(f"{shown(root / rel)}: {why}")
    log.warning("skipping %s: %s", shown(root / rel), why)
    skipped.append((shown(rel), why))


def _scan_split(root: Path, top: Path, classes: list[str], bad: str, h, skipped: list[tuple[str, str]],
                required: bool = False, sizes: list | None = None) -> list[tuple[str, int]]:
    """The usable samples of ``top/<class>/...``, each hashed into ``h``, their decoded (width,
    height) appended to ``sizes``. ``required`` (train): every class folder must hold at least one file."""
    prefix = _prefix(root, top)
    h.update(f"part {prefix}\n".encode("utf-8", "backslashreplace"))
    samples = []
    sizes = [] if sizes is None else sizes
    for label, name in enumerate(classes):
        folder = top / name
        if not folder.is_dir():
            continue  # a val/test folder without this class
        problems: list[tuple[str, str]] = []
        files = walk_files(str(folder), f"{prefix}/{name}", problems, root, outer=(top, root))
        if required and not files and not problems:
            raise DataError(f"data_dir: class folder {shown(folder)} is empty")
        for rel, why in problems:
            _skip(root, rel, why, bad, skipped)
        for rel, e in files:
            why = _problem(e)
            data = size = None
            if why is None:
                data, size, why = _read_image(e.path)
            if why is not None:
                _skip(root, rel, why, bad, skipped)
                continue
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            samples.append((rel, label))
            sizes.append(size)
    return samples


def _other_split(root: Path, top: Path, classes: list[str], bad: str, h, skipped, exclude,
                 sizes: list | None = None) -> list[tuple[str, int]]:
    extra = sorted(set(_class_folders(top, root, exclude)) - set(classes))
    if extra:  # the model could never predict it: its images would only lower the score
        raise DataError(f"data_dir: {shown(top)} has class folder(s) that {shown(root / 'train')} lacks: "
                        f"{', '.join(extra)}; add them to train/ or remove them")
    samples = _scan_split(root, top, classes, bad, h, skipped, sizes=sizes)
    if not samples:
        raise DataError(f"data_dir: {shown(top)} holds no readable images")
    return samples


def scan_imagefolder(root: Path, bad_images: str = "skip", exclude=(), val_dir=None, test_dir=None) -> Scan:
    """Decode every image once; return the usable samples and a content fingerprint.

    ``exclude``: paths that must not be read as data (the run's output dir): one inside a data
    folder is an error, even before it exists. ``val_dir``/``test_dir``: see ``find_layout``."""
    root = Path(root)
    exclude = tuple(Path(p).resolve() for p in exclude)
    layout = find_layout(root, val_dir, test_dir)
    _check_exclude(root, exclude, [p for p in (layout.val, layout.test) if p is not None])
    classes = list_classes(root, exclude)
    h, skipped = hashlib.sha256(f"image folder, scan format {SCAN_FORMAT}\n".encode()), []
    sizes: dict[str, list[tuple[int, int]]] = {"train": []}
    train = _scan_split(root, layout.train, classes, bad_images, h, skipped, required=True, sizes=sizes["train"])
    if not train:
        raise DataError(f"data_dir: {root / 'train'} holds no readable images")
    seen = {label for _, label in train}
    for label, name in enumerate(classes):
        if label not in seen:  # the model would have a class it never sees
            raise DataError(f"data_dir: class folder {shown(root / 'train' / name)} holds no readable images")
    if len(classes) < 2:
        raise DataError(f"data_dir: {root / 'train'} holds one class folder ({classes[0]}); "
                        "a classifier needs at least two classes")
    parts = [None if top is None else _other_split(root, top, classes, bad_images, h, skipped, exclude,
                                                   sizes.setdefault(part, []))
             for part, top in (("val", layout.val), ("test", layout.test))]
    if skipped:
        log.warning("skipped %d unusable file(s) under %s", len(skipped), root)
    return Scan(classes, train, parts[1], [p for p, _ in skipped], h.hexdigest(), skipped, parts[0],
                None if layout.val is None else shown(layout.val), None if layout.test is None else shown(layout.test),
                sizes)


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
