"""A file-based model registry: versions ``v1, v2, ...`` per model name, each with its model
files and a card (``model.json``), and the aliases ``latest`` and ``production``.

::

    <registry>/<name>/v1/model.pt               the self-contained model (cifar_lit.lifecycle.model_file)
                        model.pt2, model.onnx   the same for plain torch and for ONNX runtimes
                                                (versions made before them: model.torchscript.pt)
                        split.json              the split it was tested on
                        model.json              the card: metrics, config, data, code, run
                     /aliases.json              {"latest": "v2", "production": "v1"}
                     /.lock

Files only, so it works offline, in tests and on a mounted volume. Every change takes the
model's ``.lock`` (``cifar_lit.files.locks``: waited for at most ``CIFAR_LIT_LOCK_TIMEOUT`` seconds):
a version directory appears by one rename and ``aliases.json`` is replaced by one rename, so
readers never see half a version and two flows registering at once get different version
numbers.

The same as a command: ``python -m cifar_lit.lifecycle.registry list|show|set-alias ...``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cifar_lit.errors import UserError
from cifar_lit.files.atomic import write_json_atomic
from cifar_lit.files.locks import LockTimeoutError, exclusive

CARD, ALIASES = "model.json", "aliases.json"
ALIAS_NAMES = ("latest", "production")
_VERSION = re.compile(r"v([1-9]\d*)")
_CANNOT_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


class RegistryError(UserError, ValueError):
    """The registry, a model, an alias or a card cannot be used; the message says which."""


class ProductionMoved(RuntimeError):
    """Another run changed ``production`` since this one compared itself with it."""


@dataclass(frozen=True)
class Version:
    name: str
    version: str  # "v3"
    path: Path
    card: dict[str, Any]

    def file(self, key: str = "model") -> Path:
        return self.path / self.card["files"][key]


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ---- reading --------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        found = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)] if folder.is_dir() else []
        return sorted(found, key=lambda v: int(v[1:]))

    def aliases(self, name: str) -> dict[str, str]:
        path = self.root / name / ALIASES
        if not path.is_file():
            return {}
        try:
            aliases = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"{path}: unreadable aliases file ({e})") from None
        if not isinstance(aliases, dict):
            raise RegistryError(f"{path}: unreadable aliases file (not an object)")
        return aliases

    def get(self, name: str, version: str | None = None, alias: str | None = None) -> Version:
        """One version, by number (``v2``) or alias; a missing one is a one-line RegistryError."""
        if not (self.root / name).is_dir():
            known = ", ".join(self.names()) or "none"
            raise RegistryError(f"registry {self.root}: no model named {name!r} (known: {known})")
        if version is None:
            alias = alias or "production"
            version = self.aliases(name).get(alias)
            if version is None:
                raise RegistryError(f"registry {self.root}: {name} has no {alias!r} alias")
        path = self.root / name / version
        if not _VERSION.fullmatch(version) or not path.is_dir():
            raise RegistryError(f"registry {self.root}: {name} has no version {version!r}")
        return Version(name, version, path, self._card(path))

    def find(self, name: str, alias: str) -> Version | None:
        """The version an alias points at, or None (also when that version's folder is gone: a
        deleted version must not block every later run; ``dangling`` names such aliases)."""
        version = self.aliases(name).get(alias) if (self.root / name).is_dir() else None
        if version is None or not (self.root / name / version).is_dir():
            return None
        return self.get(name, version=version)

    def dangling(self, name: str) -> dict[str, str]:
        """Aliases of ``name`` that point at a version whose folder is gone (deleted by hand)."""
        return {a: v for a, v in self.aliases(name).items() if not (self.root / name / v).is_dir()}

    def only_name(self) -> str:
        names = self.names()
        if len(names) != 1:
            raise RegistryError(f"registry {self.root}: holds {len(names)} models ({', '.join(names) or 'none'}); "
                                "name one with --name")
        return names[0]

    @staticmethod
    def _card(path: Path) -> dict[str, Any]:
        card_path = path / CARD
        try:
            card = json.loads(card_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"{card_path}: unreadable model card ({type(e).__name__})") from None
        if not isinstance(card, dict) or not isinstance(card.get("files"), dict):
            raise RegistryError(f"{card_path}: not a model card (no files)")
        return card

    # ---- writing --------------------------------------------------------------------------
    @contextmanager
    def locked(self, name: str) -> Iterator[Path]:
        """Hold the model's lock. A registry that cannot be written (read-only, a file, full) is a
        one-line ``RegistryError``, whether that shows at the lock or in the change made under it."""
        folder = self.root / name
        with ExitStack() as held:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                held.enter_context(exclusive(folder / ".lock", f"registry {folder}",
                                             waiting=f"registry {folder}: waiting for another run's change to finish"))
            except LockTimeoutError:
                raise
            except OSError as e:
                raise self._unwritable(e) from None
            # Staging folders are written only under this lock: any left now are a killed run's.
            for stale in folder.glob(".new-*"):
                shutil.rmtree(stale, ignore_errors=True)
            try:
                yield folder
            except OSError as e:
                if isinstance(e, LockTimeoutError) or e.errno not in _CANNOT_WRITE:
                    raise
                raise self._unwritable(e) from None

    def _unwritable(self, e: OSError) -> RegistryError:
        return RegistryError(f"registry {self.root}: cannot be written ({e.strerror or e})")

    def add(
        self,
        name: str,
        files: dict[str, Path],
        card: dict[str, Any],
        aliases: tuple[str, ...] = ("latest",),
        expect_production: str | None | object = ...,
    ) -> Version:
        """Copy ``files`` (key -> path) into a new version with ``card``; point ``aliases`` at it.

        With ``expect_production`` (a version or None), raise ``ProductionMoved`` instead when
        production is no longer that version: the check and the change happen under one lock."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise RegistryError(f"model name {name!r}: use letters, digits, '-', '_' and '.'")
        with self.locked(name) as folder:
            if expect_production is not ... and getattr(self.find(name, "production"), "version", None) != expect_production:
                raise ProductionMoved(name)
            # Not mkdtemp: its 0700 would keep a predict job or server of another user of the
            # shared volume out of every version. mkdir honours the umask, as the files do.
            staging = folder / f".new-{os.getpid()}-{secrets.token_hex(4)}"
            staging.mkdir()
            try:
                names = {}
                for key, src in files.items():
                    shutil.copy2(src, staging / Path(src).name)
                    names[key] = Path(src).name
                # After every version there is and every one an alias names (a deleted version's
                # number is never given to another model).
                taken = [int(v[1:]) for v in [*self.versions(name), *self.aliases(name).values()] if _VERSION.fullmatch(v)]
                version = f"v{max(taken, default=0) + 1}"
                full = {**card, "name": name, "version": version, "files": names,
                        "registered": datetime.now(UTC).isoformat(timespec="seconds")}
                write_json_atomic(staging / CARD, full, indent=2, sort_keys=True)
                os.rename(staging, folder / version)  # the version appears whole, or not at all
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._set_aliases(folder, {a: version for a in aliases})
            return Version(name, version, folder / version, full)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.get(name, version=version)  # it must exist
        with self.locked(name) as folder:
            self._set_aliases(folder, {alias: version})

    def _set_aliases(self, folder: Path, update: dict[str, str]) -> None:
        if not update:
            return
        current = self.aliases(folder.name)
        write_json_atomic(folder / ALIASES, {**current, **update}, indent=2, sort_keys=True)


def main(argv: list[str] | None = None, prog: str = "python -m cifar_lit.lifecycle.registry") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Inspect the model registry.")
    parser.add_argument("--registry-dir", type=Path, default=Path("runs/registry"))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="models, versions and aliases")
    show = sub.add_parser("show", help="a version's card")
    show.add_argument("name")
    show.add_argument("version", nargs="?", help="vN or an alias (default: production)")
    setter = sub.add_parser("set-alias", help="point an alias at a version, e.g. roll production back")
    setter.add_argument("name")
    setter.add_argument("alias", choices=ALIAS_NAMES)
    setter.add_argument("version")
    syncer = sub.add_parser("sync-wandb", help="apply the alias changes queued for W&B (made offline)")
    syncer.add_argument("name", nargs="?", help="one model (default: every model with queued changes)")
    args = parser.parse_args(argv)
    from cifar_lit.lifecycle import wandb_aliases  # not at the top: it is only for the command

    reg = Registry(args.registry_dir)
    try:
        if args.command == "list":
            for name in reg.names():
                aliases = reg.aliases(name)
                for v in reg.versions(name):
                    tags = ", ".join(a for a, target in sorted(aliases.items()) if target == v)
                    acc = reg.get(name, version=v).card.get("metrics", {}).get("test_acc")
                    print(f"{name} {v}  test_acc={acc}  {tags}")
                for alias, v in sorted(reg.dangling(name).items()):
                    print(f"{name} {v}  MISSING: {alias} points at a version that is gone; "
                          f"set-alias {name} {alias} <version> to repair it")
                queued = wandb_aliases.read_pending(reg.root / name)
                if queued:
                    print(f"{name}: {len(queued)} alias change(s) queued for W&B; apply with sync-wandb")
        elif args.command == "show":
            ref = args.version or "production"
            v = reg.get(args.name, version=ref) if _VERSION.fullmatch(ref) else reg.get(args.name, alias=ref)
            print(json.dumps(v.card, indent=2))
        elif args.command == "set-alias":
            reg.set_alias(args.name, args.alias, args.version)
            print(f"{args.name}: {args.alias} -> {args.version}")
            line = wandb_aliases.describe(wandb_aliases.record(reg, args.name, args.alias, args.version))
            if line:
                print(line)
        else:
            return _sync_wandb(reg, [args.name] if args.name else reg.names())
    except (RegistryError, LockTimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _sync_wandb(reg: Registry, names: list[str]) -> int:
    """Apply every queued W&B alias change; exit 1 while any is still waiting (said why, one line each)."""
    from cifar_lit.lifecycle import wandb_aliases

    waiting = 0
    for name in names:
        result = wandb_aliases.sync(reg, name)
        for alias, path in result["applied"].items():
            print(f"{name}: W&B {alias} -> {path}")
        for alias, why in result["waiting"].items():
            print(f"error: {name}: W&B {alias} still queued: {why}", file=sys.stderr)
        waiting += len(result["waiting"])
    return 1 if waiting else 0


if __name__ == "__main__":
    sys.exit(main())
