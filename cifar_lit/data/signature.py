"""The cheap signature of an image folder: names, sizes and mtimes of every file a scan would read,
so the flow can tell an unchanged folder without decoding it again (``stat_signature``)."""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from pathlib import Path

from cifar_lit.data.common import derived_dir
from cifar_lit.data.imagefolder import SCAN_FORMAT, VAL_FOLDERS, walk_files


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
