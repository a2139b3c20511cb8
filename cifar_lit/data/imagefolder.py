"""Image-folder datasets: ``DIR/train/<class>/*`` and an optional ``DIR/test/<class>/*``.

Class names are the folder names under ``train/``, sorted; a class folder may be a symlink
(followed). Every file is decoded once while scanning, exactly as training decodes it. A file
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

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)
SIZE = 32
CACHE_DIR = ".cifar_lit"  # derived files beside the data (cifar_lit.data.prepare.cache_dir)
# What a run's output dir holds (cifar_lit.rundir takes .lock before anything else is written).
RUN_FILES = frozenset({".lock", "summary.json", "split.json", "checkpoints"})


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


def _rgb32(im: Image.Image) -> Image.Image:
    im = im.convert("RGB")
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
    h, skipped = hashlib.sha256(), []
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
    """Any PIL-readable image as 32x32 RGB: greyscale, palette and RGBA become RGB, and other
    sizes are resized (bilinear, aspect ratio not kept) to the 32x32 the models expect."""
    with Image.open(path) as im:
        return _rgb32(im)
