"""A file-based model registry: versions ``v1, v2, ...`` per model name, each with its model
files and a card (``model.json``), and the aliases ``latest`` and ``production``.

::

    <registry>/<name>/v1/model.pt               the self-contained model (cifar_lit.model_file)
                        model.torchscript.pt    the same for plain torch
                        split.json              the split it was tested on
                        model.json              the card: metrics, config, data, code, run
                     /aliases.json              {"latest": "v2", "production": "v1"}
                     /.lock

Files only, so it works offline, in tests and on a mounted volume. Every change takes the
model's ``.lock`` (``cifar_lit.locks``: waited for at most ``CIFAR_LIT_LOCK_TIMEOUT`` seconds):
a version directory appears by one rename and ``aliases.json`` is replaced by one rename, so
readers never see half a version and two flows registering at once get different version
numbers.

The same as a command: ``python -m cifar_lit.registry list|show|set-alias ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cifar_lit.atomic import write_json_atomic
from cifar_lit.locks import LockTimeoutError, exclusive

CARD, ALIASES = "model.json", "aliases.json"
ALIAS_NAMES = ("latest", "production")
_VERSION = re.compile(r"v([1-9]\d*)")


class RegistryError(ValueError):
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
        """The version an alias points at, or None."""
        version = self.aliases(name).get(alias) if (self.root / name).is_dir() else None
        return self.get(name, version=version) if version else None

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
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        with exclusive(folder / ".lock", f"registry {folder}",
                       waiting=f"registry {folder}: waiting for another run's change to finish"):
            yield folder

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
            if expect_production is not ... and self.aliases(name).get("production") != expect_production:
                raise ProductionMoved(name)
            staging = Path(tempfile.mkdtemp(prefix=".new-", dir=folder))
            try:
                names = {}
                for key, src in files.items():
                    shutil.copy2(src, staging / Path(src).name)
                    names[key] = Path(src).name
                existing = self.versions(name)
                version = f"v{int(existing[-1][1:]) + 1 if existing else 1}"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar_lit.registry", description="Inspect the model registry.")
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
    args = parser.parse_args(argv)
    reg = Registry(args.registry_dir)
    try:
        if args.command == "list":
            for name in reg.names():
                aliases = reg.aliases(name)
                for v in reg.versions(name):
                    tags = ", ".join(a for a, target in sorted(aliases.items()) if target == v)
                    acc = reg.get(name, version=v).card.get("metrics", {}).get("test_acc")
                    print(f"{name} {v}  test_acc={acc}  {tags}")
        elif args.command == "show":
            ref = args.version or "production"
            v = reg.get(args.name, version=ref) if _VERSION.fullmatch(ref) else reg.get(args.name, alias=ref)
            print(json.dumps(v.card, indent=2))
        else:
            reg.set_alias(args.name, args.alias, args.version)
            print(f"{args.name}: {args.alias} -> {args.version}")
    except (RegistryError, LockTimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
