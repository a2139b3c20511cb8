"""What code made a result: a hash of the source that ran, and the git commit when there is one.

The source hash, not the commit, is what caches and the registry compare: it is exact with
uncommitted edits, and it works where the package was pip-installed without its ``.git``.
"""

from __future__ import annotations

import hashlib
import inspect
import subprocess
from functools import cache
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent


def source_hash(*objects: ModuleType | type | object) -> str:
    """A short hash of the source of modules, classes or functions: a cache key that changes
    when the code of a stage changes.

    >>> import cifar_lit.run.provenance as p
    >>> source_hash(p) == source_hash(p) and len(source_hash(p))
    16
    """
    h = hashlib.sha256()
    for obj in objects:
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()[:16]


@cache
def code_version() -> str:
    """A hash of every ``.py`` file of the ``cifar_lit`` package (paths and bytes): equal code
    versions trained with equal code."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@cache
def git_commit(cwd: Path = PACKAGE) -> str | None:
    """The checkout's HEAD commit (with ``-dirty`` when files differ from it); None without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
