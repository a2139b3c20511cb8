"""Image-folder datasets: ``DIR/train/<class>/...``, with optional validation and test folders.

Layout. ``train/`` is required; its class folders name the classes (sorted; a class folder may
be a symlink, followed). The validation folder is ``--val-dir``, else the first of ``val/``,
``valid/``, ``validation/`` present; the test folder is ``--test-dir``, else ``test/`` if present
(``--val-dir``/``--test-dir`` are absolute or relative to DIR). Their classes must be a subset of
train's. ``cifar_lit.data.split`` holds out from train whatever split has no folder.

Every image under a class folder counts, at any depth (like torchvision's ``ImageFolder``), in
a deterministic order: name by name, depth first. Folders are followed through symlinks; one
that leads back to a folder above it (a symlink loop) is skipped with a reason, not walked forever.

Every file is decoded once while scanning, as training decodes it (``cifar_lit.data.images``),
and its decoded size is recorded (``Scan.sizes``).

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
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from cifar_lit.data.common import RUN_FILES, DataError, shown
from cifar_lit.data.images import read_image

log = logging.getLogger(__name__)


VAL_FOLDERS = ("val", "valid", "validation")  # the first present is the validation folder
# Part of every fingerprint: bump it when the same files would give other samples or pixels
# (the decoding, the walk, the layout), so caches keyed by the fingerprint (manifests, tensor
# caches, splits) are made again instead of serving what the old code derived.
# 2: recursive class folders, val/ folders, to_rgb8 (16-bit, float, alpha on white, EXIF).
# 3: the manifest records every image's size; images are resized keeping their aspect ratio and
#    centre-cropped (``square``) at any image_size, no longer squashed to 32x32.
SCAN_FORMAT = 3


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


def _decodes(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # os.scandir gave lone surrogates for the bytes it could not decode
        return False


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
                data, size, why = read_image(e.path)
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


